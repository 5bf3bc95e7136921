//! An operator's approval of departures the brake held back, for a running daemon (which holds
//! the ledger, so `sync --allow-mass-changes` cannot run beside it). The approval names how
//! many actions it covers: if the next plan has the brake hold more, it is not used. After a
//! changed agent filter or bases it covers the whole plan under the new scope; a changed id
//! attribute cannot be approved (`migrate-ids`, with the daemon stopped).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

const FILE_NAME: &str = "approve-mass-changes.json";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    /// Unix seconds.
    pub approved_at: i64,
    /// The most actions the approval lets past the brake: departures, or the whole plan of a
    /// changed scope (the name is kept for approvals already written).
    pub max_departures: usize,
}

pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(FILE_NAME)
}

pub fn write(state_dir: &Path, approval: &Approval) -> std::io::Result<()> {
    let tmp = state_dir.join(format!("{FILE_NAME}.tmp"));
    std::fs::write(
        &tmp,
        serde_json::to_vec(approval).map_err(std::io::Error::other)?,
    )?;
    std::fs::rename(tmp, path(state_dir))
}

/// Takes (reads and removes) a pending approval.
pub fn take(state_dir: &Path) -> Option<Approval> {
    let file = path(state_dir);
    let text = std::fs::read(&file).ok()?;
    let _ = std::fs::remove_file(&file);
    match serde_json::from_slice(&text) {
        Ok(approval) => Some(approval),
        Err(e) => {
            tracing::warn!(file = %file.display(), error = %e, "unreadable approval ignored");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_approval_is_taken_once() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(take(dir.path()), None);
        let approval = Approval {
            approved_at: 5,
            max_departures: 3,
        };
        write(dir.path(), &approval).unwrap();
        assert_eq!(take(dir.path()), Some(approval));
        assert_eq!(take(dir.path()), None);
    }
}
