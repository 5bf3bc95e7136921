//! The room part of what `plan` and `sync` print.

use std::fmt::Write;

use crate::apply::rooms::RoomReport;
use crate::plan::memberships::{RoomAction, RoomPlan};

/// Titles of room action names, in the order they run.
const SECTIONS: [(&str, &str); 7] = [
    ("create_space", "Create space"),
    ("create_room", "Create room"),
    ("link_space", "Link room under its space"),
    ("join_room", "Join room"),
    ("grant_power", "Grant power level"),
    ("revoke_power", "Revoke power level"),
    ("remove_from_room", "Remove from room"),
];

/// E.g. "12 join room, 1 remove from room", or `None` without room changes.
pub fn summary(plan: &RoomPlan) -> Option<String> {
    let parts: Vec<String> = SECTIONS
        .iter()
        .map(|(name, title)| (plan.count(name), title))
        .filter(|(n, _)| *n > 0)
        .map(|(n, title)| format!("{n} {}", title.to_lowercase()))
        .collect();
    (!parts.is_empty()).then(|| parts.join(", "))
}

fn describe(action: &RoomAction) -> String {
    match action {
        RoomAction::CreateRoom { room, creation, .. } => match &creation.name {
            Some(name) => format!("{room}  \"{name}\""),
            None => room.clone(),
        },
        RoomAction::LinkSpace { room, parent, .. } => format!("{parent} ⊃ {room}"),
        RoomAction::Join { room, mxid, .. } | RoomAction::Kick { room, mxid, .. } => {
            format!("{mxid} → {room}")
        }
        RoomAction::SetPower {
            room,
            mxid,
            from,
            to,
            ..
        } => {
            let level = |l: &Option<i64>| l.map_or("-".to_string(), |l| l.to_string());
            format!("{mxid} in {room}: {} → {}", level(from), level(to))
        }
    }
}

/// The room sections of `plan`'s text.
pub fn plan_text(plan: &RoomPlan) -> String {
    let mut out = String::new();
    for (name, title) in SECTIONS {
        let actions: Vec<_> = plan.actions.iter().filter(|a| a.name() == name).collect();
        if actions.is_empty() {
            continue;
        }
        let _ = writeln!(out, "{title} ({})", actions.len());
        for a in actions {
            let _ = writeln!(out, "  {}", describe(a));
            let _ = writeln!(out, "      why: {}", a.reason());
        }
        out.push('\n');
    }
    if !plan.forget.is_empty() {
        let _ = writeln!(
            out,
            "Memberships no longer the daemon's ({}; ledger only)",
            plan.forget.len()
        );
        for f in &plan.forget {
            let _ = writeln!(out, "  {} → {}: {}", f.mxid, f.room, f.reason);
        }
        out.push('\n');
    }
    for w in &plan.warnings {
        let _ = writeln!(out, "warning: {w}");
    }
    out
}

/// One line about the rooms after a sync, plus one per failure; empty if nothing happened.
pub fn sync_text(r: &RoomReport) -> String {
    let mut out = String::new();
    if r.applied + r.failed.len() + r.adopted + r.forgotten == 0 {
        return out;
    }
    let _ = writeln!(
        out,
        "Rooms: {} applied ({} created, {} joins at {:.1}/s, {} removals), {} failed, {} found, {} forgotten.",
        r.applied,
        r.created,
        r.joined,
        r.joins_per_sec(),
        r.removed,
        r.failed.len(),
        r.adopted,
        r.forgotten
    );
    for (room, mxid, kind, error) in &r.failed {
        let _ = writeln!(out, "  FAILED {kind} {mxid} {room}: {error}");
    }
    out
}

pub fn sync_json(r: &RoomReport) -> serde_json::Value {
    serde_json::json!({
        "applied": r.applied,
        "created": r.created,
        "joined": r.joined,
        "removed": r.removed,
        "adopted": r.adopted,
        "forgotten": r.forgotten,
        "join_ms": r.join_ms,
        "not_tried": r.not_tried,
        "failed": r.failed.iter().map(|(room, mxid, kind, error)| serde_json::json!({"room": room, "mxid": mxid, "kind": kind, "error": error})).collect::<Vec<_>>(),
    })
}
