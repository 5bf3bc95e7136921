//! What the commands print: readable text for people, JSON for scripts.

use std::fmt::Write;
use std::path::Path;

use serde_json::json;

use crate::clock::format_time;
use crate::ledger::{LedgerView, Origin, RunRecord};
use crate::pipeline::{Preview, SyncResult};
use crate::plan::{Action, ActionKind, Plan};

pub fn plan_text(preview: &Preview) -> String {
    let plan = &preview.plan;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Directory {}: {} agents, {} skipped",
        preview.server,
        preview.agents,
        plan.skipped.len()
    );
    let _ = writeln!(out, "{}\n", summary_line(plan));
    for kind in ActionKind::ALL {
        let actions: Vec<_> = plan.actions.iter().filter(|a| a.kind() == kind).collect();
        if actions.is_empty() {
            continue;
        }
        let _ = writeln!(out, "{} ({})", kind.title(), actions.len());
        for action in actions {
            let _ = writeln!(out, "  {}", describe(action));
            let _ = writeln!(out, "      why: {}", action.reason());
        }
        out.push('\n');
    }
    out.push_str(&super::render_rooms::plan_text(&plan.rooms));
    if !plan.moves.is_empty() {
        let _ = writeln!(
            out,
            "Moved in the directory, same account ({}; recorded in the ledger only)",
            plan.moves.len()
        );
        for m in &plan.moves {
            let _ = writeln!(out, "  {}  {} → {}", m.mxid, m.from_dn, m.to_dn);
        }
        out.push('\n');
    }
    if !plan.not_in_directory.is_empty() {
        let _ = writeln!(
            out,
            "Managed accounts not in the directory ({}; left as they are)",
            plan.not_in_directory.len()
        );
        for mxid in &plan.not_in_directory {
            let _ = writeln!(out, "  {mxid}");
        }
        out.push('\n');
    }
    if !plan.skipped.is_empty() {
        let _ = writeln!(
            out,
            "Skipped agents ({}; nothing is done for them)",
            plan.skipped.len()
        );
        for s in &plan.skipped {
            let _ = writeln!(out, "  {}: {}", s.dn, s.reason);
        }
        out.push('\n');
    }
    for w in &plan.warnings {
        let _ = writeln!(out, "warning: {w}");
    }
    out
}

fn summary_line(plan: &Plan) -> String {
    if !plan.has_changes() {
        return format!("No changes: {} accounts up to date.", plan.unchanged);
    }
    let counts: Vec<String> = ActionKind::ALL
        .iter()
        .map(|k| (k, plan.count(*k)))
        .filter(|(_, n)| *n > 0)
        .map(|(k, n)| format!("{n} {}", k.title().to_lowercase()))
        .chain(super::render_rooms::summary(&plan.rooms))
        .collect();
    format!(
        "Plan: {} ({} accounts unchanged).",
        counts.join(", "),
        plan.unchanged
    )
}

fn describe(action: &Action) -> String {
    match action {
        Action::CreateAccount {
            mxid,
            display_name,
            emails,
            ..
        } => {
            let mut s = format!("{mxid}  \"{display_name}\"");
            if !emails.is_empty() {
                let _ = write!(s, "  <{}>", emails.join(">, <"));
            }
            s
        }
        // The reason says what changes.
        Action::UpdateAccount { mxid, .. } => mxid.clone(),
    }
}

pub fn plan_json(preview: &Preview) -> String {
    let plan = &preview.plan;
    let counts: serde_json::Map<String, serde_json::Value> = ActionKind::ALL
        .iter()
        .map(|k| (k.name().to_string(), json!(plan.count(*k))))
        .collect();
    json!({
        "server": preview.server,
        "agents": preview.agents,
        "changes_pending": plan.has_changes(),
        "counts": counts,
        "unchanged": plan.unchanged,
        "actions": plan.actions,
        "moves": plan.moves,
        "not_in_directory": plan.not_in_directory,
        "skipped": plan.skipped,
        "warnings": plan.warnings,
        "rooms": plan.rooms,
        "removals": plan.rooms.removals(),
    })
    .to_string()
}

pub fn sync_text(result: &SyncResult) -> String {
    let r = &result.report;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Sync from {}: {} agents, {} skipped; {} planned, {} applied ({} adopted), {} failed, {} moved.",
        result.preview.server,
        result.preview.agents,
        result.preview.plan.skipped.len(),
        result.preview.plan.actions.len(),
        r.applied,
        r.adopted,
        r.failed.len(),
        r.moved
    );
    for (mxid, kind, error) in &r.failed {
        let _ = writeln!(out, "  FAILED {} {mxid}: {error}", kind.name());
    }
    out.push_str(&super::render_rooms::sync_text(&r.rooms));
    if let Some(why) = &r.aborted {
        let _ = writeln!(
            out,
            "Stopped early, {} actions not tried: {why}",
            r.not_tried
        );
    }
    out
}

pub fn sync_json(result: &SyncResult) -> String {
    let r = &result.report;
    json!({
        "server": result.preview.server,
        "agents": result.preview.agents,
        "skipped": result.preview.plan.skipped.len(),
        "planned": result.preview.plan.actions.len(),
        "applied": r.applied,
        "adopted": r.adopted,
        "moved": r.moved,
        "failed": r.failed.iter().map(|(mxid, kind, error)| json!({"mxid": mxid, "kind": kind, "error": error})).collect::<Vec<_>>(),
        "not_tried": r.not_tried,
        "aborted": r.aborted,
        "rooms": super::render_rooms::sync_json(&r.rooms),
    })
    .to_string()
}

pub fn status_text(path: &Path, view: &LedgerView, last_run: Option<&RunRecord>) -> String {
    let adopted = view
        .accounts
        .values()
        .filter(|a| a.origin == Origin::Adopted)
        .count();
    let mut out = String::new();
    let _ = writeln!(out, "Ledger: {}", path.display());
    let _ = writeln!(
        out,
        "Managed accounts: {} ({} created, {} adopted)",
        view.accounts.len(),
        view.accounts.len() - adopted,
        adopted
    );
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
                "  {} agents, {} skipped, {} planned, {} applied, {} failed",
                run.agents, run.skipped, run.planned, run.applied, run.failed
            );
        }
    }
    out
}

pub fn status_json(view: &LedgerView, last_run: Option<&RunRecord>) -> String {
    let adopted = view
        .accounts
        .values()
        .filter(|a| a.origin == Origin::Adopted)
        .count();
    json!({
        "managed_accounts": view.accounts.len(),
        "managed_rooms": view.rooms.rooms.len(),
        "room_memberships": view.rooms.members.len(),
        "adopted": adopted,
        "last_run": last_run,
    })
    .to_string()
}
