//! The ledger a run works with: open already (the daemon keeps it open), or still being opened
//! on a thread of its own. A command opens it that way so that the directory read starts at once:
//! opening sled (recovery, loading its caches) takes tens of milliseconds, which the read hides.
//!
//! Opening is also when sled writes: it replays its log and writes a new snapshot file. A
//! process that ended meanwhile (a directory read that failed first, then `main` returning)
//! left that file half-written, and the store unreadable. So the opening thread is joined
//! whenever the cell is dropped, on every path, and the ledger is flushed then: the process
//! never ends while the store is being opened.

use std::path::PathBuf;
use std::thread::JoinHandle;

use tokio::sync::{oneshot, Mutex};

use crate::ledger::{Ledger, LedgerError};

type Opened = Result<Ledger, LedgerError>;

pub struct LedgerCell {
    ledger: std::sync::OnceLock<Ledger>,
    /// The opening's answer, until it has been taken (then `ledger` is set, or it failed).
    opening: Mutex<Option<oneshot::Receiver<Opened>>>,
    /// The thread opening the ledger, joined when the cell is dropped.
    thread: std::sync::Mutex<Option<JoinHandle<()>>>,
}

impl LedgerCell {
    /// A ledger that is open already.
    pub fn ready(ledger: Ledger) -> LedgerCell {
        LedgerCell {
            ledger: ledger.into(),
            opening: Mutex::new(None),
            thread: std::sync::Mutex::new(None),
        }
    }

    /// Starts opening (or creating) the ledger in `dir` on a thread of its own.
    pub fn opening(dir: PathBuf) -> LedgerCell {
        let (answer, receiver) = oneshot::channel();
        let spawned = std::thread::Builder::new()
            .name("ledger-open".into())
            .spawn(move || {
                // Nobody waiting any more: the ledger is dropped here, which flushes it.
                let _ = answer.send(Ledger::open(&dir));
            });
        let (receiver, thread) = match spawned {
            Ok(thread) => (receiver, Some(thread)),
            Err(e) => {
                let (answer, receiver) = oneshot::channel();
                let _ = answer.send(Err(LedgerError::Unfinished(format!(
                    "cannot start a thread to open it: {e}"
                ))));
                (receiver, None)
            }
        };
        LedgerCell {
            ledger: std::sync::OnceLock::new(),
            opening: Mutex::new(Some(receiver)),
            thread: std::sync::Mutex::new(thread),
        }
    }

    /// The ledger, once open. The opening's error is returned to the first caller only (a run
    /// stops at it); later callers get an error that says so. Cancel-safe: a caller dropped
    /// while waiting leaves the opening to the next.
    pub async fn get(&self) -> Result<&Ledger, LedgerError> {
        if let Some(ledger) = self.ledger.get() {
            return Ok(ledger);
        }
        let mut opening = self.opening.lock().await;
        if let Some(ledger) = self.ledger.get() {
            return Ok(ledger);
        }
        let Some(receiver) = opening.as_mut() else {
            return Err(LedgerError::Unfinished(
                "opening the ledger failed earlier in this run".into(),
            ));
        };
        let opened = receiver.await;
        *opening = None;
        let ledger = opened.map_err(|_| {
            LedgerError::Unfinished("the thread opening the ledger ended without an answer".into())
        })??;
        Ok(self.ledger.get_or_init(|| ledger))
    }
}

impl Drop for LedgerCell {
    /// Waits for an opening still under way (tens of milliseconds), then flushes the ledger:
    /// whatever way a command ends, the store is never left mid-write by this process.
    fn drop(&mut self) {
        let thread = self
            .thread
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(thread) = thread {
            if thread.join().is_err() {
                tracing::error!("the thread opening the ledger panicked");
            }
        }
        // Opened and never asked for (the run ended first): it waits in the channel.
        let unclaimed = self
            .opening
            .get_mut()
            .take()
            .and_then(|mut receiver| receiver.try_recv().ok())
            .and_then(Result::ok);
        for ledger in self.ledger.get().into_iter().chain(unclaimed.as_ref()) {
            if let Err(e) = ledger.flush() {
                tracing::error!(ledger = %ledger.path().display(), error = %e, "cannot flush the ledger");
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_opening_ledger_is_open_once_and_shared() {
        let dir = tempfile::tempdir().unwrap();
        let cell = LedgerCell::opening(dir.path().to_path_buf());
        let (a, b) = tokio::join!(cell.get(), cell.get());
        let (a, b) = (a.unwrap(), b.unwrap());
        assert!(std::ptr::eq(a, b));
        assert_eq!(a.account_count().unwrap(), 0);
    }

    #[tokio::test]
    async fn a_failed_opening_is_reported_then_remembered() {
        let dir = tempfile::tempdir().unwrap();
        let held = Ledger::open(dir.path()).unwrap();
        let cell = LedgerCell::opening(dir.path().to_path_buf());
        assert!(matches!(cell.get().await, Err(LedgerError::Locked { .. })));
        let again = cell.get().await.err().unwrap().to_string();
        assert!(again.contains("failed earlier"), "{again}");
        drop(held);
    }

    #[tokio::test]
    async fn a_caller_dropped_while_waiting_leaves_the_opening_to_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let cell = LedgerCell::opening(dir.path().to_path_buf());
        // Polled once, then dropped: the opening is still under way.
        let waited = tokio::time::timeout(std::time::Duration::ZERO, cell.get()).await;
        assert!(waited.is_err() || waited.unwrap().is_ok());
        assert!(cell.get().await.is_ok());
    }
}
