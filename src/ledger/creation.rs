//! Creating a ledger so that a process ending meanwhile leaves no ledger, never a damaged one.
//!
//! sled creates its files at once, and the schema version is written after them: a process
//! killed in between (most kills in the first ~40 ms of a first `sync`, measured) left a store
//! that exists but reads as empty, which every later command must refuse as damaged (sled also
//! reads a damaged file as an empty store). So the store is made in `ledger.new/`, its schema
//! flushed, closed, and only then renamed `ledger/`: a `ledger/` folder is always a complete one.

use std::path::Path;
use std::time::Duration;

use super::{lock, LedgerError};

/// Where a ledger is made before it is complete.
const CREATING: &str = "ledger.new";

/// Creates the ledger `store` (`<dir>/ledger`), written by `init` (the schema), unless another
/// process did meanwhile. One creation at a time: the state directory is locked meanwhile.
pub(super) fn create(
    dir: &Path,
    store: &Path,
    init: impl FnOnce(&sled::Db) -> Result<(), LedgerError>,
) -> Result<(), LedgerError> {
    let io = |what: &str, e: std::io::Error| LedgerError::Create {
        path: store.to_path_buf(),
        reason: format!("{what}: {e}"),
    };
    std::fs::create_dir_all(dir).map_err(|e| io(&format!("cannot create {}", dir.display()), e))?;
    let Some(_lock) = lock::exclusive(dir, Duration::from_secs(10))
        .map_err(|e| io(&format!("cannot lock {}", dir.display()), e))?
    else {
        return Err(LedgerError::Locked {
            path: store.to_path_buf(),
        });
    };
    if store.join("db").exists() {
        return Ok(());
    }
    let fresh = dir.join(CREATING);
    if fresh.exists() {
        // A creation that died: it never held more than an empty store.
        std::fs::remove_dir_all(&fresh)
            .map_err(|e| io(&format!("cannot remove {}", fresh.display()), e))?;
    }
    {
        let db = sled::Config::new().path(&fresh).open()?;
        init(&db)?;
        db.flush()?;
    }
    // Replaces an empty `ledger/` folder; one with files in it is not a ledger to overwrite.
    std::fs::rename(&fresh, store).map_err(|e| {
        io(
            &format!(
                "cannot rename {} to {} (a folder with files but no sled `db` in it? move it away)",
                fresh.display(),
                store.display()
            ),
            e,
        )
    })?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io(&format!("cannot sync {}", dir.display()), e))?;
    Ok(())
}
