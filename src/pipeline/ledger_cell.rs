//! The ledger a run works with: open already (the daemon keeps it open), or still being opened
//! on a blocking thread. A command opens it that way so that the directory read starts at once:
//! opening sled (recovery, loading its caches) takes tens of milliseconds, which the read hides.

use std::path::PathBuf;

use tokio::sync::Mutex;
use tokio::task::JoinHandle;

use crate::ledger::{Ledger, LedgerError};

pub struct LedgerCell {
    ledger: std::sync::OnceLock<Ledger>,
    /// The opening, until it has ended (then `ledger` is set, or it failed).
    opening: Mutex<Option<JoinHandle<Result<Ledger, LedgerError>>>>,
}

impl LedgerCell {
    /// A ledger that is open already.
    pub fn ready(ledger: Ledger) -> LedgerCell {
        LedgerCell {
            ledger: ledger.into(),
            opening: Mutex::new(None),
        }
    }

    /// Starts opening (or creating) the ledger in `dir` on a blocking thread. Call from within
    /// the runtime.
    pub fn opening(dir: PathBuf) -> LedgerCell {
        LedgerCell {
            ledger: std::sync::OnceLock::new(),
            opening: Mutex::new(Some(tokio::task::spawn_blocking(move || {
                Ledger::open(&dir)
            }))),
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
        let Some(handle) = opening.as_mut() else {
            return Err(LedgerError::Unfinished(
                "opening the ledger failed earlier in this run".into(),
            ));
        };
        let opened = handle.await;
        *opening = None;
        let ledger = opened.map_err(|e| LedgerError::Unfinished(e.to_string()))??;
        Ok(self.ledger.get_or_init(|| ledger))
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
