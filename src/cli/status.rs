//! What `status` and `history` print.

use std::fmt::Write;
use std::path::Path;

use serde_json::json;

use crate::clock::format_time;
use crate::daemon::status_file::DaemonStatus;
use crate::ledger::{
    AccountStatus, AuditEntry, Held, HeldAgent, LedgerView, Origin, RunRecord, Shadow, SyncPoint,
};

/// Counts of managed accounts by origin and state.
struct Counts {
    total: usize,
    adopted: usize,
    active: usize,
    departing: usize,
    deactivated: usize,
}

fn counts(view: &LedgerView) -> Counts {
    let mut c = Counts {
        total: view.accounts.len(),
        adopted: 0,
        active: 0,
        departing: 0,
        deactivated: 0,
    };
    for record in view.accounts.values() {
        if record.origin == Origin::Adopted {
            c.adopted += 1;
        }
        match record.status {
            AccountStatus::Active => c.active += 1,
            AccountStatus::Departing { .. } => c.departing += 1,
            AccountStatus::Deactivated { .. } => c.deactivated += 1,
        }
    }
    c
}

pub fn status_text(
    path: &Path,
    view: &LedgerView,
    shadows: &[Shadow],
    last_run: Option<&RunRecord>,
    grace: i64,
) -> String {
    let c = counts(view);
    let mut out = String::new();
    let _ = writeln!(out, "Ledger: {}", path.display());
    managed_line(&mut out, c.total, c.adopted);
    if !view.rooms.rooms.is_empty() {
        let _ = writeln!(
            out,
            "Managed rooms: {} ({} created), {} memberships and {} power levels added",
            view.rooms.rooms.len(),
            view.rooms.rooms.values().filter(|r| r.created).count(),
            view.rooms.members.len(),
            view.rooms.powers.len()
        );
    }
    let _ = writeln!(
        out,
        "  {} active, {} departing (suspended or locked), {} deactivated",
        c.active, c.departing, c.deactivated
    );
    let mut departing: Vec<_> = view
        .accounts
        .values()
        .filter_map(|r| match &r.status {
            AccountStatus::Departing { since, reason, .. } => {
                Some((since.saturating_add(grace), &r.mxid, reason))
            }
            _ => None,
        })
        .collect();
    departing.sort();
    for (due, mxid, reason) in departing {
        let _ = writeln!(
            out,
            "  {mxid}: deactivation due {} ({reason})",
            format_time(due)
        );
    }
    held_text(&mut out, view.held.values());
    shadows_text(&mut out, shadows);
    last_run_text(&mut out, last_run);
    out
}

/// The shadow accounts the last complete read found; a departed agent's open one first.
fn shadows_text(out: &mut String, shadows: &[Shadow]) {
    if shadows.is_empty() {
        return;
    }
    let open = shadows.iter().filter(|s| s.departed && !s.locked).count();
    let _ = writeln!(
        out,
        "Shadow accounts (not managed, an agent can log in to them): {}{}",
        shadows.len(),
        if open > 0 {
            format!(", {open} of departed agents still open (SECURITY)")
        } else {
            String::new()
        }
    );
    for s in shadows {
        let _ = writeln!(
            out,
            "  {}: {} ({}), matched by {}{}{}",
            s.mxid,
            s.agent_mxid.as_deref().unwrap_or("no synced account"),
            s.dn,
            s.matched,
            if s.departed { ", agent departed" } else { "" },
            if s.locked { ", locked" } else { "" }
        );
    }
}

/// The agents held back by a conflict or a refusal, each with why.
fn held_text<'a>(out: &mut String, held: impl ExactSizeIterator<Item = &'a HeldAgent>) {
    if held.len() == 0 {
        return;
    }
    let _ = writeln!(
        out,
        "Held agents (nothing is done for them until an admin or the directory settles it): {}",
        held.len()
    );
    for h in held {
        let what = match &h.why {
            Held::Conflict { reason } => format!("conflict: {reason}"),
            Held::Refused { action, error, .. } => {
                format!("refused by the homeserver ({action}): {error}")
            }
        };
        let _ = writeln!(
            out,
            "  {} ({}) since {}: {what}",
            h.mxid,
            h.dn,
            format_time(h.since)
        );
    }
}

fn managed_line(out: &mut String, total: usize, adopted: usize) {
    let _ = writeln!(
        out,
        "Managed accounts: {total} ({} created, {adopted} adopted)",
        total - adopted
    );
}

fn last_run_text(out: &mut String, last_run: Option<&RunRecord>) {
    match last_run {
        None => {
            let _ = writeln!(out, "Last run: none yet");
        }
        Some(run) => {
            let _ = writeln!(
                out,
                "Last run: {} ({}s) from {}: {}",
                format_time(run.started_at),
                run.finished_at - run.started_at,
                if run.server.is_empty() {
                    "-"
                } else {
                    &run.server
                },
                run.outcome
            );
            let _ = writeln!(
                out,
                "  {} {}, {} skipped, {} planned, {} applied, {} failed",
                run.agents,
                if run.incremental {
                    "changed agents (changes only)"
                } else {
                    "agents"
                },
                run.skipped,
                run.planned,
                run.applied,
                run.failed
            );
            let read = match (&run.incremental, &run.incremental_fallback) {
                (true, _) => "only the changes since the last read".to_string(),
                (false, Some(why)) => format!(
                    "the whole directory, because an incremental read was not possible: {why}"
                ),
                (false, None) => "the whole directory".to_string(),
            };
            let _ = writeln!(out, "  Read: {read}");
            if run.resolved_applied + run.resolved_not_applied > 0 {
                let _ = writeln!(
                    out,
                    "  resolved first: {} write(s) an interrupted run left unfinished ({} found applied, {} found not applied)",
                    run.resolved_applied + run.resolved_not_applied,
                    run.resolved_applied,
                    run.resolved_not_applied
                );
            }
            if let Some(why) = &run.brake {
                let _ = writeln!(out, "{}", brake_text(run, why));
            }
        }
    }
}

/// What the brake held back in `run`, why, and what releases it.
fn brake_text(run: &RunRecord, why: &str) -> String {
    match (run.held_everything, run.needs_migration) {
        (true, true) => format!(
            "BRAKE ENGAGED: the whole plan ({} action(s)) held back: {why}.\n  Nothing is applied until `migrate-ids` \
             re-keys the ledger from the old ids to the new ones (a dry run; then `migrate-ids --apply`).",
            run.held_back
        ),
        (true, false) => format!(
            "BRAKE ENGAGED: the whole plan ({} action(s)) held back: {why}.\n  Review with `plan`, then accept the new \
             scope with `sync --allow-mass-changes` (or re-key the ledger with `migrate-ids --apply`).",
            run.held_back
        ),
        (false, _) => format!(
            "BRAKE ENGAGED: {} departure(s) held back: {why}.\n  Review with `plan`, then `sync --allow-mass-changes`.",
            run.held_back
        ),
    }
}

/// `status` while the daemon holds the ledger, from the `status.json` it wrote.
pub fn daemon_status_text(path: &Path, status: &DaemonStatus) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Ledger: in use by another process; the daemon's summary (pid {}) as of {} ({})",
        status.pid,
        format_time(status.written_at),
        path.display()
    );
    let _ = writeln!(
        out,
        "Daemon: {} run(s) since start, {}",
        status.runs, status.health
    );
    for reason in &status.reasons {
        let _ = writeln!(out, "  {reason}");
    }
    for warning in &status.warnings {
        let _ = writeln!(out, "  warning: {warning}");
    }
    managed_line(&mut out, status.managed_accounts, status.adopted);
    held_text(&mut out, status.held.iter());
    shadows_text(&mut out, &status.shadows);
    last_run_text(&mut out, status.last_run.as_ref());
    out
}

/// Same keys as `status_json`, plus `daemon`.
pub fn daemon_status_json(status: &DaemonStatus) -> String {
    json!({
        "managed_accounts": status.managed_accounts,
        "adopted": status.adopted,
        "last_run": status.last_run,
        "brake": status.last_run.as_ref().and_then(|r| r.brake.clone()),
        "needs_migration": status.last_run.as_ref().is_some_and(|r| r.needs_migration),
        "held": status.held,
        "shadows": status.shadows,
        "daemon": {
            "pid": status.pid,
            "written_at": status.written_at,
            "runs": status.runs,
            "health": status.health,
            "reasons": status.reasons,
            "warnings": status.warnings,
        },
    })
    .to_string()
}

/// Where the next incremental read starts, and when the next complete read is due.
pub fn sync_point_text(point: Option<&SyncPoint>, full_every: std::time::Duration) -> String {
    match point {
        None => "Incremental reads: none yet (the next run reads everything)\n".to_string(),
        Some(p) => format!(
            "Incremental reads: from {}\n  last complete read {}, next due by {}\n",
            p.watermark.describe(),
            format_time(p.full_at),
            format_time(
                p.full_at
                    .saturating_add(i64::try_from(full_every.as_secs()).unwrap_or(i64::MAX))
            )
        ),
    }
}

pub fn status_json(
    view: &LedgerView,
    shadows: &[Shadow],
    last_run: Option<&RunRecord>,
    point: Option<&SyncPoint>,
) -> String {
    let c = counts(view);
    json!({
        "managed_accounts": c.total,
        "managed_rooms": view.rooms.rooms.len(),
        "room_memberships": view.rooms.members.len(),
        "adopted": c.adopted,
        "active": c.active,
        "departing": c.departing,
        "deactivated": c.deactivated,
        "last_run": last_run,
        "incremental_from": point.map(|p| p.watermark.describe()),
        "last_complete_read": point.map(|p| p.full_at),
        "brake": last_run.and_then(|r| r.brake.clone()),
        "needs_migration": last_run.is_some_and(|r| r.needs_migration),
        "held": view.held.values().collect::<Vec<_>>(),
        "shadows": shadows,
    })
    .to_string()
}

pub fn history_text(entries: &[AuditEntry]) -> String {
    let mut out = String::new();
    if entries.is_empty() {
        out.push_str("No recorded actions.\n");
    }
    for e in entries {
        let _ = writeln!(
            out,
            "{}  {:<20} {}  {}",
            format_time(e.at),
            e.action,
            e.mxid,
            e.result
        );
        let _ = writeln!(out, "      why: {}", e.reason);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_brake_line_says_what_was_held_and_what_releases_it() {
        let run = |held_everything, needs_migration| RunRecord {
            held_back: 600,
            held_everything,
            needs_migration,
            ..RunRecord::default()
        };
        let cases = [
            (
                run(false, false),
                "600 departure(s) held back",
                "`sync --allow-mass-changes`",
            ),
            (
                run(true, false),
                "the whole plan (600 action(s))",
                "accept the new scope",
            ),
            (
                run(true, true),
                "the whole plan (600 action(s))",
                "`migrate-ids`",
            ),
        ];
        for (record, held, remedy) in cases {
            let text = brake_text(&record, "why");
            assert!(text.contains(held) && text.contains(remedy), "{text}");
        }
        assert!(!brake_text(&run(true, true), "why").contains("--allow-mass-changes"));
    }
}
