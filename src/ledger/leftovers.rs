//! sled's half-written leftovers: finding them, and moving them aside so the ledger opens again
//! with everything it held.
//!
//! sled 0.34 writes a snapshot of its page table each time it opens a store whose log grew
//! since the last one (`PageCache::start` → `advance_snapshot` → `write_snapshot`; never in
//! the background): into `snap.<lsn>.generating`, then the bytes, their length and a CRC-32,
//! an fsync, and a rename to `snap.<lsn>`; older snapshots are removed only after the rename.
//! A process that ends between the file's creation and its last write (an exit while the
//! store was opening on another thread, a SIGKILL, a power cut) leaves a `.generating` file
//! that its next opening reads as the newest snapshot, and rejects: "Read corrupted data".
//!
//! Such a file is provably a leftover — too short to hold sled's trailer, or its checksum does
//! not match, so sled itself never reads it back — and nothing depends on it: the previous
//! snapshot is still there and the log holds every write since, which sled replays at each
//! opening anyway. Moving it aside (into `quarantine/`, never deleting) brings the store back
//! as it was. A complete `.generating` (killed between the fsync and the rename) reads fine and
//! is left to sled, which removes it with its next snapshot.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use super::{lock, LedgerError};

/// sled's snapshot trailer: the uncompressed length (8 bytes) then a CRC-32 (4 bytes, LE).
const TRAILER: usize = 12;
/// The folder, inside the sled folder, where leftovers are kept.
pub const QUARANTINE: &str = "quarantine";

/// A file sled began writing and never finished.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leftover {
    pub path: PathBuf,
    pub len: u64,
    /// Why sled would never read it back.
    pub why: String,
}

impl Leftover {
    /// The file's name (`snap.<lsn>.generating`).
    pub fn name(&self) -> String {
        self.path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
}

/// A leftover moved aside, and where to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetAside {
    pub leftover: Leftover,
    pub to: PathBuf,
}

/// The half-written snapshots in the sled folder `store` (none if it does not exist).
pub fn find(store: &Path) -> io::Result<Vec<Leftover>> {
    let entries = match std::fs::read_dir(store) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry?;
        if !is_generating_snapshot(&entry.file_name().to_string_lossy()) {
            continue;
        }
        let path = entry.path();
        let bytes = std::fs::read(&path)?;
        if let Some(why) = incomplete(&bytes) {
            found.push(Leftover {
                path,
                len: bytes.len() as u64,
                why,
            });
        }
    }
    found.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(found)
}

/// Moves every half-written leftover of `store` into its `quarantine/` folder, holding the
/// store's lock meanwhile (so no other process is opening it, and so writing a snapshot).
/// `stamp` prefixes the new names (e.g. `20261201T090000Z`).
pub fn set_aside(store: &Path, stamp: &str) -> Result<Vec<SetAside>, LedgerError> {
    // A store this process failed to open a moment ago can still be held by sled's threads.
    set_aside_within(store, stamp, std::time::Duration::from_secs(2))
}

/// [`set_aside`], waiting up to `patience` for the store's lock.
fn set_aside_within(
    store: &Path,
    stamp: &str,
    patience: std::time::Duration,
) -> Result<Vec<SetAside>, LedgerError> {
    let io = |e: io::Error| LedgerError::Repair {
        path: store.to_path_buf(),
        reason: e.to_string(),
    };
    // sled's own lock: no other process is opening the store (and so writing a snapshot).
    let Some(_lock) = lock::exclusive(&store.join("db"), patience).map_err(io)? else {
        return Err(LedgerError::Locked {
            path: store.to_path_buf(),
        });
    };
    let found = find(store).map_err(io)?;
    if found.is_empty() {
        return Ok(Vec::new());
    }
    let quarantine = store.join(QUARANTINE);
    std::fs::create_dir_all(&quarantine).map_err(io)?;
    let mut moved = Vec::new();
    for leftover in found {
        let to = free_name(&quarantine, &format!("{stamp}.{}", leftover.name()));
        std::fs::rename(&leftover.path, &to).map_err(io)?;
        moved.push(SetAside { leftover, to });
    }
    // The renames themselves survive a crash.
    File::open(store).and_then(|d| d.sync_all()).map_err(io)?;
    Ok(moved)
}

/// The current time as a file-name stamp: `20261201T090000Z`.
pub fn stamp_now() -> String {
    let now = time::OffsetDateTime::now_utc();
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second()
    )
}

/// `snap.` + sled's 16 hexadecimal digits + `.generating`.
fn is_generating_snapshot(name: &str) -> bool {
    name.strip_prefix("snap.")
        .and_then(|rest| rest.strip_suffix(".generating"))
        .is_some_and(|lsn| lsn.len() == 16 && lsn.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Why sled would reject these snapshot bytes (the checks of sled 0.34's `read_snapshot`,
/// built without compression), or `None` if they are complete.
pub fn incomplete(bytes: &[u8]) -> Option<String> {
    let len = bytes.len();
    if len <= TRAILER {
        return Some(match len {
            0 => "empty: sled created it and stopped before writing".to_string(),
            _ => format!("{len} bytes: too short for sled's length and checksum"),
        });
    }
    let (body, crc) = bytes.split_at(len - 4);
    let body = &body[..len - TRAILER];
    let expected = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
    (crc32fast::hash(body) != expected).then(|| {
        format!("{len} bytes whose checksum does not match: sled stopped writing it partway")
    })
}

/// `dir/name`, or `dir/name.1`, `.2` … if taken: a quarantined file is never overwritten.
fn free_name(dir: &Path, name: &str) -> PathBuf {
    let first = dir.join(name);
    if !first.exists() {
        return first;
    }
    (1u32..)
        .map(|n| dir.join(format!("{name}.{n}")))
        .find(|p| !p.exists())
        .unwrap_or(first)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Snapshot bytes as sled 0.34 writes them: body, length, CRC-32 (LE).
    fn complete(body: &[u8]) -> Vec<u8> {
        let mut bytes = body.to_vec();
        bytes.extend_from_slice(&(body.len() as u64).to_le_bytes());
        bytes.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
        bytes
    }

    #[test]
    fn only_sleds_generating_snapshots_are_candidates() {
        assert!(is_generating_snapshot("snap.00000000000E9CC7.generating"));
        for name in [
            "snap.00000000000E9CC7",
            "snap.E9CC7.generating",
            "snap.00000000000E9CZ7.generating",
            "db",
            "conf",
            "snap.00000000000E9CC7.generating.1",
        ] {
            assert!(!is_generating_snapshot(name), "{name}");
        }
    }

    #[test]
    fn a_snapshot_is_incomplete_when_short_or_its_checksum_fails() {
        assert!(incomplete(&[]).unwrap().starts_with("empty"));
        assert!(incomplete(&[0; 12]).unwrap().contains("too short"));
        let good = complete(b"page table");
        assert_eq!(incomplete(&good), None);
        // Cut anywhere (a write interrupted), or with a flipped bit: never complete.
        for cut in 0..good.len() {
            assert!(incomplete(&good[..cut]).is_some(), "cut at {cut}");
        }
        let mut flipped = good.clone();
        flipped[3] ^= 1;
        assert!(incomplete(&flipped).unwrap().contains("checksum"));
    }

    #[test]
    fn only_incomplete_leftovers_are_moved_and_nothing_is_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path();
        std::fs::write(store.join("db"), b"").unwrap();
        std::fs::write(store.join("snap.0000000000000010"), complete(b"old")).unwrap();
        std::fs::write(store.join("snap.0000000000000020.generating"), b"").unwrap();
        std::fs::write(
            store.join("snap.0000000000000030.generating"),
            complete(b"whole"),
        )
        .unwrap();
        let found = find(store).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].name(), "snap.0000000000000020.generating");

        let moved = set_aside(store, "20261201T090000Z").unwrap();
        assert_eq!(moved.len(), 1);
        assert_eq!(
            moved[0].to,
            store
                .join(QUARANTINE)
                .join("20261201T090000Z.snap.0000000000000020.generating")
        );
        assert!(moved[0].to.exists());
        assert!(store.join("snap.0000000000000010").exists());
        assert!(store.join("snap.0000000000000030.generating").exists());
        assert_eq!(find(store).unwrap(), vec![]);

        // The same name again, same second: kept beside the first.
        std::fs::write(store.join("snap.0000000000000020.generating"), b"x").unwrap();
        let again = set_aside(store, "20261201T090000Z").unwrap();
        assert!(again[0].to.to_string_lossy().ends_with(".generating.1"));
        assert_eq!(std::fs::read(&moved[0].to).unwrap(), b"");
    }

    #[test]
    fn nothing_is_moved_while_another_holds_the_store() {
        use fs2::FileExt;
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path();
        std::fs::write(store.join("db"), b"").unwrap();
        std::fs::write(store.join("snap.0000000000000020.generating"), b"").unwrap();
        let holder = File::open(store.join("db")).unwrap();
        holder.lock_exclusive().unwrap();
        assert!(matches!(
            set_aside_within(store, "s", std::time::Duration::ZERO),
            Err(LedgerError::Locked { .. })
        ));
        assert!(store.join("snap.0000000000000020.generating").exists());
    }
}
