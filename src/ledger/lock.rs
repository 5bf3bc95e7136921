//! The advisory lock (flock) sled takes on its store's `db` file, taken by this crate too: on
//! that file while moving leftovers aside, and on the state directory while creating a ledger.

use std::fs::File;
use std::io;
use std::path::Path;
use std::time::{Duration, Instant};

use fs2::FileExt;

/// An exclusive lock, released when dropped (the file is closed).
pub(super) struct Exclusive(#[allow(dead_code)] File);

/// Takes the exclusive lock on `path` (a file or a directory), waiting up to `patience`;
/// `Ok(None)`: still held by someone else then.
pub(super) fn exclusive(path: &Path, patience: Duration) -> io::Result<Option<Exclusive>> {
    let file = File::open(path)?;
    let deadline = Instant::now() + patience;
    loop {
        match file.try_lock_exclusive() {
            Ok(()) => return Ok(Some(Exclusive(file))),
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Err(_) => return Ok(None),
        }
    }
}
