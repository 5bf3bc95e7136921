//! `repair`: finds what sled left half-written in the ledger folder (a process that ended while
//! it opened the store), moves it aside into `quarantine/` (kept, never deleted), and checks
//! that the ledger opens, with what it holds. Opening does the same on its own; this says what
//! it found, and `--dry-run` only looks.

use std::fmt::Write as _;
use std::process::ExitCode;

use crate::clock::format_time;
use crate::config::Config;
use crate::ledger::leftovers::{self, Leftover, QUARANTINE};
use crate::ledger::{AccountStatus, Ledger, LedgerError};

pub fn run(config: &Config, dry_run: bool) -> Result<ExitCode, String> {
    let dir = &config.state_dir;
    let store = Ledger::store_path(dir);
    if !Ledger::exists(dir) {
        return Err(format!("no ledger in {}: nothing to repair", dir.display()));
    }
    let mut out = format!("Ledger: {}\n", store.display());
    if dry_run {
        let found =
            leftovers::find(&store).map_err(|e| format!("cannot read {}: {e}", store.display()))?;
        describe(&mut out, &found);
        if !found.is_empty() {
            let _ = writeln!(
                out,
                "Dry run: nothing moved. `matrix-ldap-sync repair` moves {} into {}/ (kept, never deleted) and opens the ledger.",
                if found.len() == 1 { "it" } else { "them" },
                store.join(QUARANTINE).display()
            );
        }
        print!("{out}");
        return Ok(ExitCode::SUCCESS);
    }
    let moved = match leftovers::set_aside(&store, &leftovers::stamp_now()) {
        Ok(moved) => moved,
        Err(LedgerError::Locked { path }) => {
            return Err(format!(
                "the ledger at {} is in use by another matrix-ldap-sync (the daemon?): stop it, then run `repair` again",
                path.display()
            ))
        }
        Err(e) => return Err(e.to_string()),
    };
    let found: Vec<Leftover> = moved.iter().map(|m| m.leftover.clone()).collect();
    describe(&mut out, &found);
    for m in &moved {
        let _ = writeln!(
            out,
            "Moved {} to {} (kept, never deleted).",
            m.leftover.name(),
            m.to.display()
        );
    }
    let opened = Ledger::open(dir).and_then(|ledger| summary(&ledger));
    let code = match opened {
        Ok(summary) => {
            out.push_str(&summary);
            ExitCode::SUCCESS
        }
        Err(LedgerError::Damaged { reason, .. }) => {
            let _ = writeln!(
                out,
                "The ledger still does not open ({reason}), and holds nothing `repair` can move aside. \
                 Keep this folder for a post-mortem and rebuild the ledger as docs/systemd.md, \
                 \"Crashes and recovering the ledger\", explains."
            );
            ExitCode::FAILURE
        }
        Err(e) => {
            let _ = writeln!(out, "The ledger does not open: {e}");
            ExitCode::FAILURE
        }
    };
    print!("{out}");
    Ok(code)
}

/// What was found: each leftover with its size and why sled would never read it back.
fn describe(out: &mut String, found: &[Leftover]) {
    if found.is_empty() {
        out.push_str("No half-written leftover found.\n");
        return;
    }
    let _ = writeln!(
        out,
        "Found {} snapshot(s) sled left half-written (a process ended while it opened the ledger):",
        found.len()
    );
    for leftover in found {
        let _ = writeln!(
            out,
            "  {} ({} bytes): {}",
            leftover.name(),
            leftover.len,
            leftover.why
        );
    }
}

/// What the ledger holds, read through: accounts, grace clocks, scheduled departures, the
/// audit trail and the last run.
fn summary(ledger: &Ledger) -> Result<String, LedgerError> {
    let view = ledger.view()?;
    let departing = view
        .accounts
        .values()
        .filter(|r| matches!(r.status, AccountStatus::Departing { .. }))
        .count();
    let scheduled = ledger.scheduled()?.len();
    let audit = ledger.audit_trail(None)?.len();
    let last = match ledger.last_run()? {
        Some(run) => format!("{} ({})", format_time(run.finished_at), run.outcome),
        None => "none".to_string(),
    };
    Ok(format!(
        "The ledger opens: {} managed accounts ({departing} in their grace period), {scheduled} \
         scheduled departure(s), {audit} audit entries; last run {last}.\n",
        view.accounts.len()
    ))
}
