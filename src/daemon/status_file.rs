//! `status.json` in the state directory: the daemon's summary after each run, written
//! atomically (temporary file, fsync, rename). sled locks the ledger for the daemon's whole
//! life, so `status` reads this file instead when the ledger is in use.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::ledger::{HeldAgent, RunRecord, Shadow};

const FILE_NAME: &str = "status.json";

/// What `status` shows while the daemon holds the ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaemonStatus {
    /// The daemon's process id.
    pub pid: u32,
    /// Unix time this file was written.
    pub written_at: i64,
    pub managed_accounts: usize,
    pub adopted: usize,
    /// Runs finished since the daemon started.
    pub runs: u64,
    /// `ok` or `degraded`, with the reasons (as `/health` says).
    pub health: String,
    pub reasons: Vec<String>,
    /// What to look at that does not make the daemon unhealthy (see `Health::warnings`).
    #[serde(default)]
    pub warnings: Vec<String>,
    /// Agents held back by a conflict or a refusal.
    #[serde(default)]
    pub held: Vec<HeldAgent>,
    /// The shadow accounts the last complete read found.
    #[serde(default)]
    pub shadows: Vec<Shadow>,
    pub last_run: Option<RunRecord>,
}

pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(FILE_NAME)
}

/// Replaces the file atomically: a reader sees the old or the new content, never a mix.
pub fn write(state_dir: &Path, status: &DaemonStatus) -> std::io::Result<()> {
    let final_path = path(state_dir);
    let tmp = state_dir.join(format!(".{FILE_NAME}.tmp"));
    let json = serde_json::to_vec_pretty(status).map_err(std::io::Error::other)?;
    {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(&json)?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, &final_path)
}

pub fn read(state_dir: &Path) -> Result<DaemonStatus, String> {
    let path = path(state_dir);
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{} is unreadable: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_then_read_back_and_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let mut status = DaemonStatus {
            pid: 42,
            written_at: 1,
            managed_accounts: 3,
            adopted: 1,
            runs: 1,
            health: "ok".into(),
            reasons: vec![],
            warnings: vec![],
            held: vec![],
            shadows: vec![],
            last_run: None,
        };
        write(dir.path(), &status).unwrap();
        assert_eq!(read(dir.path()).unwrap(), status);
        status.runs = 2;
        write(dir.path(), &status).unwrap();
        assert_eq!(read(dir.path()).unwrap().runs, 2);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec!["status.json"], "no temporary file left");
    }
}
