//! A test hook for the crash window the journal closes: in a debug build, with
//! `MATRIX_LDAP_SYNC_TEST_CRASH_AFTER=N` set, the process aborts (no destructor, no flush, as
//! a SIGKILL would) right after the homeserver accepted its Nth write of the run and before
//! the ledger recorded it. Release builds ignore the variable.

/// The environment variable read (debug builds only).
pub const CRASH_AFTER_VAR: &str = "MATRIX_LDAP_SYNC_TEST_CRASH_AFTER";

/// Called between a homeserver write's success and its ledger record.
pub(super) fn after_homeserver_write() {
    #[cfg(debug_assertions)]
    {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::OnceLock;
        static LIMIT: OnceLock<Option<usize>> = OnceLock::new();
        static WRITES: AtomicUsize = AtomicUsize::new(0);
        let limit = LIMIT.get_or_init(|| {
            std::env::var(CRASH_AFTER_VAR)
                .ok()
                .and_then(|v| v.parse().ok())
        });
        if let Some(limit) = limit {
            if WRITES.fetch_add(1, Ordering::SeqCst) + 1 >= *limit {
                eprintln!("{CRASH_AFTER_VAR}: aborting after homeserver write #{limit}");
                std::process::abort();
            }
        }
    }
}
