//! Test harness: a real slapd, a real 389-DS, a real Samba AD DC and a real Synapse on loopback
//! ports, for integration tests.
//!
//! Use it from a test binary with `mod common;`. Needs `scripts/install-testbed.sh` to have run.
//! Servers are started by one dedicated thread under `setpriv --pdeathsig KILL`, so none of them
//! outlives the test binary, whatever way it ends.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code)]

pub mod accounts;
pub mod ad_site;
pub mod ds389;
pub mod ds389_site;
pub mod pki;
pub mod process;
pub mod samba;
pub mod site;
pub mod slapd;
pub mod synapse;

pub use slapd::Slapd;
pub use synapse::Synapse;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

/// Shows the library's `debug!` lines (pages, counts) for a failing test, or with --nocapture.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter("matrix_ldap_sync=debug")
        .try_init();
}

/// A free TCP port on 127.0.0.1 (from the kernel's ephemeral range, so high).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("no free loopback port")
        .port()
}

/// A name unique to this call in this process and across runs: `<prefix>-<n>-<pid>`.
/// Lowercase prefixes give valid Matrix localparts and LDAP RDN values.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{n}-{}", std::process::id())
}

/// Writes a secret file (mode 0600, no trailing newline) and returns its path.
pub fn write_secret(dir: &Path, name: &str, value: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, value).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// The `matrix-ldap-sync` binary: Cargo names it for integration tests; an example or a bench
/// finds it next to its own folder (`target/<profile>/`).
pub fn binary() -> PathBuf {
    if let Some(path) = option_env!("CARGO_BIN_EXE_matrix-ldap-sync") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().unwrap();
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .join("matrix-ldap-sync");
    require_installed(&bin, "the matrix-ldap-sync binary (cargo build)");
    bin
}

/// The repository root (where Cargo.toml is).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Panics with the install hint unless `path` exists.
pub(crate) fn require_installed(path: &Path, what: &str) {
    if !path.exists() {
        panic!(
            "{what} not found at {}: run scripts/install-testbed.sh first",
            path.display()
        );
    }
}
