//! The time a command runs at. `--now` is for previews only: a command that writes records
//! what it did at the real time, or the audit trail would lie (a `sync --now` a month ahead
//! deactivated an account 30 days early and dated it a month late). Tests still move time
//! without sleeping, through a clock only debug builds honour.

use super::Command;
use crate::clock::{Clock, FixedClock, SystemClock};

/// Debug builds only: the time (RFC 3339) `plan`, `sync` and `explain` run at, so that
/// integration tests move time without sleeping. Release builds ignore it and say so.
pub const TEST_NOW_VAR: &str = "MATRIX_LDAP_SYNC_TEST_NOW";

/// Why `command` refuses `--now`, if it does: everything but the previews (`plan`,
/// `explain`, `status`, `migrate-ids` without `--apply`).
pub(super) fn refusal(command: &Command) -> Option<String> {
    let name = match command {
        Command::Plan { .. }
        | Command::Explain { .. }
        | Command::Status { .. }
        | Command::MigrateIds { apply: false, .. } => return None,
        Command::Sync { .. } => "sync",
        Command::MigrateIds { apply: true, .. } => "migrate-ids --apply",
        Command::Run => "run",
        Command::Check => "check",
        Command::History { .. } => "history",
        Command::Repair { .. } => "repair",
    };
    let what = match command {
        Command::History { .. } => "`history` shows what happened, when it happened".to_string(),
        _ => format!("`{name}` writes, and records what it does at the real time"),
    };
    Some(format!(
        "--now is for previews only (plan, explain, status): {what}"
    ))
}

/// `--now` (already allowed for the command), else the test clock in a debug build, else the
/// system's.
pub(super) fn clock(now: Option<i64>) -> Result<Box<dyn Clock>, String> {
    if let Some(t) = now {
        return Ok(Box::new(FixedClock(t)));
    }
    let Ok(text) = std::env::var(TEST_NOW_VAR) else {
        return Ok(Box::new(SystemClock));
    };
    if cfg!(debug_assertions) {
        let t = super::parse_time(&text).map_err(|e| format!("{TEST_NOW_VAR}: {e}"))?;
        Ok(Box::new(FixedClock(t)))
    } else {
        tracing::warn!("{TEST_NOW_VAR} is ignored: only debug builds (tests) honour it");
        Ok(Box::new(SystemClock))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn refused(args: &[&str]) -> Option<String> {
        let cli = super::super::Cli::try_parse_from(args).unwrap();
        refusal(&cli.command)
    }

    #[test]
    fn only_previews_accept_now() {
        let at = "2027-02-01T00:00:00Z";
        for ok in [
            vec!["x", "plan", "--now", at],
            vec!["x", "--now", at, "explain", "jean"],
            vec!["x", "status", "--now", at],
            vec!["x", "migrate-ids", "--now", at],
        ] {
            assert_eq!(refused(&ok), None, "{ok:?}");
        }
        for (args, name) in [
            (vec!["x", "sync", "--now", at], "`sync` writes"),
            (vec!["x", "--now", at, "run"], "`run` writes"),
            (vec!["x", "check", "--now", at], "`check` writes"),
            (vec!["x", "history", "--now", at], "`history` shows"),
            (
                vec!["x", "migrate-ids", "--apply", "--now", at],
                "`migrate-ids --apply` writes",
            ),
        ] {
            let why = refused(&args).unwrap_or_default();
            assert!(
                why.starts_with("--now is for previews only (plan, explain, status): ")
                    && why.contains(name),
                "{args:?}: {why}"
            );
        }
    }

    #[test]
    fn now_wins_over_the_system_clock() {
        assert_eq!(clock(Some(42)).unwrap().now(), 42);
    }
}
