//! What `plan` and `sync` print: readable text for people, JSON for scripts.

use std::fmt::Write;

use serde_json::json;

use crate::clock::format_time;
use crate::pipeline::{Preview, Read, SyncResult};
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
    match &preview.brake {
        Some(why) if why.holds_everything() => {
            let _ = writeln!(
                out,
                "BRAKE: `sync` will apply nothing of this plan ({} action(s)): {why}.\n       {}.\n",
                why.held(plan),
                capitalized(why.remedy())
            );
        }
        Some(why) => {
            let _ = writeln!(
                out,
                "BRAKE: `sync` will hold back the {} departure(s) below: {why}.\n       {}.\n",
                plan.departures(),
                capitalized(why.remedy())
            );
        }
        None => {}
    }
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
    section(
        &mut out,
        "Conflicts: an existing account the daemon may not take over (nothing is done for these agents)",
        &plan.conflicts,
        |c| format!("{}  {}
      why: {}", c.mxid, c.dn, c.reason),
    );
    section(
        &mut out,
        "Refused by the homeserver (not asked again until the agent changes)",
        &plan.refused,
        |r| {
            format!(
                "{}  {}: {} refused since {}: {}; tried again from {}",
                r.mxid,
                r.dn,
                r.action,
                format_time(r.since),
                r.error,
                format_time(r.retry_at)
            )
        },
    );
    section(
        &mut out,
        "Shadow accounts: accounts the daemon does not manage that agents can log in to",
        &plan.shadows,
        |s| {
            format!(
                "{}  shadows {} ({}; matched by {}){}{}",
                s.mxid,
                s.agent_mxid.as_deref().unwrap_or("(no synced account)"),
                s.dn,
                s.matched,
                if s.departed { "; the agent LEFT" } else { "" },
                if s.locked { "; locked" } else { "" }
            )
        },
    );
    section(
        &mut out,
        "Waiting (nothing to do yet)",
        &plan.pending,
        |p| format!("{}  {} on {}", p.mxid, p.what, format_time(p.at)),
    );
    section(
        &mut out,
        "Protected (left as they are)",
        &plan.protected,
        |p| format!("{}: would act on: {}", p.mxid, p.reason),
    );
    section(
        &mut out,
        "Moved in the directory, same account (recorded in the ledger only)",
        &plan.moves,
        |m| format!("{}  {} → {}", m.mxid, m.from_dn, m.to_dn),
    );
    section(
        &mut out,
        "Already gone, no account created",
        &plan.not_created,
        |s| format!("{}: {}", s.dn, s.reason),
    );
    section(
        &mut out,
        "Skipped agents (nothing is done for them)",
        &plan.skipped,
        |s| format!("{}: {}", s.dn, s.reason),
    );
    for w in &plan.warnings {
        let _ = writeln!(out, "warning: {w}");
    }
    out
}

fn capitalized(text: &str) -> String {
    let mut chars = text.chars();
    chars
        .next()
        .map(|c| c.to_uppercase().chain(chars).collect())
        .unwrap_or_default()
}

/// What the brake holds of a plan, for scripts: `everything` (a changed scope), `departures`,
/// or null.
fn brake_holds(brake: Option<&crate::brake::Verdict>) -> serde_json::Value {
    match brake {
        Some(why) if why.holds_everything() => json!("everything"),
        Some(_) => json!("departures"),
        None => serde_json::Value::Null,
    }
}

fn section<T>(out: &mut String, title: &str, items: &[T], line: impl Fn(&T) -> String) {
    if items.is_empty() {
        return;
    }
    let _ = writeln!(out, "{title} ({})", items.len());
    for item in items {
        let _ = writeln!(out, "  {}", line(item));
    }
    out.push('\n');
}

fn summary_line(plan: &Plan) -> String {
    if !plan.has_changes() {
        return format!("No changes: {} accounts up to date.", plan.unchanged);
    }
    let counts: Vec<String> = ActionKind::ALL
        .iter()
        .map(|k| (k, plan.count(*k)))
        .filter(|(_, n)| *n > 0)
        .map(|(k, n)| format!("{n} {}", k.name().replace('_', " ")))
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
            external_ids,
            ..
        }
        | Action::ReactivateAccount {
            mxid,
            display_name,
            emails,
            external_ids,
            ..
        } => {
            let mut s = format!("{mxid}  \"{display_name}\"");
            if !emails.is_empty() {
                let _ = write!(s, "  <{}>", emails.join(">, <"));
            }
            for id in external_ids {
                let _ = write!(s, "  [SSO {id}]");
            }
            s
        }
        // The reason says what changes.
        other => other.mxid().to_string(),
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
        "brake": preview.brake.as_ref().map(ToString::to_string),
        "brake_holds": brake_holds(preview.brake.as_ref()),
        "held_by_brake": preview.brake.as_ref().map_or(0, |why| why.held(plan)),
        "needs_migration": preview.brake.as_ref().is_some_and(crate::brake::Verdict::needs_migration),
        "counts": counts,
        "unchanged": plan.unchanged,
        "actions": plan.actions,
        "pending": plan.pending,
        "protected": plan.protected,
        "moves": plan.moves,
        "not_created": plan.not_created,
        "skipped": plan.skipped,
        "conflicts": plan.conflicts,
        "refused": plan.refused,
        "shadows": plan.shadows,
        "warnings": plan.warnings,
        "rooms": plan.rooms,
        "removals": plan.rooms.removals(),
    })
    .to_string()
}

pub fn sync_text(result: &SyncResult) -> String {
    let r = &result.report;
    let mut out = String::new();
    let agents = match &result.preview.read {
        Read::Complete {
            fallback: Some(_), ..
        } => format!(
            "{} agents (read whole: the incremental read was not possible)",
            result.preview.agents
        ),
        Read::Complete { .. } => format!("{} agents", result.preview.agents),
        Read::Changes { gone, .. } => format!(
            "changes only: {} changed agents, {gone} gone",
            result.preview.agents
        ),
    };
    let _ = writeln!(
        out,
        "Sync from {}: {agents}, {} skipped; {} planned, {} applied ({} adopted), {} failed, {} moved.",
        result.preview.server,
        result.preview.plan.skipped.len(),
        result.preview.plan.actions.len(),
        r.applied,
        r.adopted,
        r.failed.len(),
        r.moved
    );
    let journal = &result.preview.journal;
    if journal.total() > 0 {
        let _ = writeln!(
            out,
            "  Resolved {} write(s) an interrupted run left unfinished, from the homeserver's real state: {} found applied, {} found not applied.",
            journal.total(),
            journal.applied,
            journal.not_applied
        );
    }
    for (mxid, kind, error) in &r.failed {
        let _ = writeln!(out, "  FAILED {} {mxid}: {error}", kind.name());
    }
    for (mxid, kind, error) in &r.refused {
        let _ = writeln!(
            out,
            "  REFUSED {} {mxid}: {error} (held until the agent changes)",
            kind.name()
        );
    }
    for conflict in &result.preview.plan.conflicts {
        let _ = writeln!(
            out,
            "  CONFLICT {} ({}): {}",
            conflict.mxid, conflict.dn, conflict.reason
        );
    }
    for (mxid, why) in &r.conflicts {
        let _ = writeln!(out, "  CONFLICT {mxid}: {why}");
    }
    out.push_str(&super::render_rooms::sync_text(&r.rooms));
    if let Some(why) = &r.aborted {
        let _ = writeln!(
            out,
            "Stopped early, {} actions not tried: {why}",
            r.not_tried_total()
        );
    }
    if result.held_back > 0 {
        let brake = result.preview.brake.as_ref();
        let what = match brake.is_some_and(crate::brake::Verdict::holds_everything) {
            true => "action(s) held back, the whole plan",
            false => "departure(s) held back",
        };
        let _ = writeln!(
            out,
            "BRAKE: {} {what}: {}.\n{}.",
            result.held_back,
            brake.map_or("limits exceeded".to_string(), ToString::to_string),
            capitalized(brake.map_or("review them with `plan`", crate::brake::Verdict::remedy))
        );
        if result.override_refused {
            let _ = writeln!(
                out,
                "`--allow-mass-changes` was not used: it cannot accept new ids for the agents."
            );
        }
    }
    out
}

pub fn sync_json(result: &SyncResult) -> String {
    let r = &result.report;
    let failed: Vec<_> = r
        .failed
        .iter()
        .map(|(mxid, kind, error)| json!({"mxid": mxid, "kind": kind, "error": error}))
        .collect();
    let refused: Vec<_> = r
        .refused
        .iter()
        .map(|(mxid, kind, error)| json!({"mxid": mxid, "kind": kind, "error": error}))
        .collect();
    let conflicts: Vec<_> = result
        .preview
        .plan
        .conflicts
        .iter()
        .map(|c| json!({"mxid": c.mxid, "dn": c.dn, "reason": c.reason}))
        .chain(
            r.conflicts
                .iter()
                .map(|(mxid, why)| json!({"mxid": mxid, "reason": why})),
        )
        .collect();
    json!({
        "server": result.preview.server,
        "agents": result.preview.agents,
        "read": match &result.preview.read {
            Read::Complete { fallback, .. } => json!({"kind": "complete", "fallback": fallback}),
            Read::Changes { gone, .. } => json!({"kind": "changes", "gone": gone}),
        },
        "skipped": result.preview.plan.skipped.len(),
        "planned": result.preview.plan.actions.len(),
        "applied": r.applied,
        "adopted": r.adopted,
        "moved": r.moved,
        "failed": failed,
        "refused": refused,
        "conflicts": conflicts,
        "journal": result.preview.journal,
        "not_tried": r.not_tried,
        "aborted": r.aborted,
        "brake": result.preview.brake.as_ref().map(ToString::to_string),
        "brake_holds": brake_holds(result.preview.brake.as_ref().filter(|_| result.held_back > 0)),
        "held_back": result.held_back,
        "needs_migration": result.held_back > 0 && result.preview.brake.as_ref().is_some_and(crate::brake::Verdict::needs_migration),
        "override_refused": result.override_refused,
        "rooms": super::render_rooms::sync_json(&r.rooms),
    })
    .to_string()
}
