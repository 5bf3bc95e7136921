//! The room part of a plan: a pure diff of the desired memberships against what the ledger
//! says the daemon added and, when it was read, what the homeserver has now.
//!
//! Per room: create it (templated rooms on first need), link it under its space, join who
//! should be in it, grant and revoke the power levels the rules give, and remove people as
//! the room's mode allows: `additive` never, `managed` only those the daemon added, `exact`
//! anyone not given by the rules (except the daemon's user, the room's creators and the rule's
//! `keep` list).

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::directory::StableId;
use crate::homeserver::RoomState;
use crate::ledger::RoomsView;
use crate::mapping::rooms::{DesiredRoom, DesiredRooms, Mode, RoomCreation};

/// What the homeserver has, per room key: `Some` state, `None` when the room does not exist
/// (or the alias points nowhere). A key that is absent was not looked at.
pub type Observed = BTreeMap<String, Option<RoomState>>;

/// One room change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RoomAction {
    CreateRoom {
        room: String,
        rule: String,
        space: bool,
        mode: Mode,
        creation: RoomCreation,
        reason: String,
    },
    LinkSpace {
        room: String,
        parent: String,
        reason: String,
    },
    Join {
        room: String,
        id: StableId,
        mxid: String,
        reason: String,
    },
    /// `to: None` revokes a level the daemon granted.
    SetPower {
        room: String,
        id: StableId,
        mxid: String,
        from: Option<i64>,
        to: Option<i64>,
        reason: String,
    },
    /// `id: None` for someone the daemon did not add (only in `exact` rooms).
    Kick {
        room: String,
        id: Option<StableId>,
        mxid: String,
        reason: String,
    },
}

impl RoomAction {
    pub fn room(&self) -> &str {
        match self {
            RoomAction::CreateRoom { room, .. }
            | RoomAction::LinkSpace { room, .. }
            | RoomAction::Join { room, .. }
            | RoomAction::SetPower { room, .. }
            | RoomAction::Kick { room, .. } => room,
        }
    }

    pub fn reason(&self) -> &str {
        match self {
            RoomAction::CreateRoom { reason, .. }
            | RoomAction::LinkSpace { reason, .. }
            | RoomAction::Join { reason, .. }
            | RoomAction::SetPower { reason, .. }
            | RoomAction::Kick { reason, .. } => reason,
        }
    }

    /// The user concerned, if any.
    pub fn mxid(&self) -> Option<&str> {
        match self {
            RoomAction::Join { mxid, .. }
            | RoomAction::SetPower { mxid, .. }
            | RoomAction::Kick { mxid, .. } => Some(mxid),
            _ => None,
        }
    }

    /// Takes something away from someone (a removal, or a power level revoked or lowered):
    /// what the brake counts.
    pub fn is_destructive(&self) -> bool {
        match self {
            RoomAction::Kick { .. } => true,
            RoomAction::SetPower { from, to, .. } => to.unwrap_or(0) < from.unwrap_or(0),
            _ => false,
        }
    }

    /// The name used in the audit trail, logs and the plan's counts.
    pub fn name(&self) -> &'static str {
        match self {
            RoomAction::CreateRoom { space: true, .. } => "create_space",
            RoomAction::CreateRoom { .. } => "create_room",
            RoomAction::LinkSpace { .. } => "link_space",
            RoomAction::Join { .. } => "join_room",
            RoomAction::SetPower { to: Some(_), .. } => "grant_power",
            RoomAction::SetPower { to: None, .. } => "revoke_power",
            RoomAction::Kick { .. } => "remove_from_room",
        }
    }

    fn phase(&self) -> u8 {
        match self {
            RoomAction::CreateRoom { .. } => 0,
            RoomAction::LinkSpace { .. } => 1,
            RoomAction::Join { .. } => 2,
            RoomAction::SetPower { .. } => 3,
            RoomAction::Kick { .. } => 4,
        }
    }
}

/// A membership the ledger drops without touching the homeserver (e.g. someone who left an
/// `additive` room's rule: they stay, but are no longer the daemon's to remove).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Forget {
    pub room: String,
    pub id: StableId,
    pub mxid: String,
    pub reason: String,
}

/// A room that exists on the homeserver but not yet in the ledger: recorded as managed
/// (not created by the daemon) before its memberships are applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Adopt {
    pub room: String,
    pub room_id: String,
    pub rule: String,
    pub mode: Mode,
    pub space: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RoomPlan {
    /// In the order they run: creations (spaces before their children), links, joins, power
    /// levels, removals; then by room and user.
    pub actions: Vec<RoomAction>,
    pub forget: Vec<Forget>,
    pub adopt: Vec<Adopt>,
    /// Rooms whose memberships need nothing.
    pub unchanged_rooms: usize,
    pub warnings: Vec<String>,
}

impl RoomPlan {
    pub fn has_changes(&self) -> bool {
        !self.actions.is_empty()
    }

    /// Removals and power levels taken away: for the brake.
    pub fn removals(&self) -> usize {
        self.actions.iter().filter(|a| a.is_destructive()).count()
    }

    pub fn count(&self, name: &str) -> usize {
        self.actions.iter().filter(|a| a.name() == name).count()
    }
}

/// What the room diff needs besides the desired rooms and the ledger.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// Every agent's mxid: managed accounts and those this plan creates.
    pub mxids: &'a BTreeMap<StableId, String>,
    /// Agents in this snapshot (others are gone from the directory).
    pub present: &'a BTreeSet<StableId>,
    /// Agents in the snapshot who left (disabled, expired, departed OU): in no room.
    pub departed: &'a BTreeSet<StableId>,
    /// Agents whose entry could not be mapped this run: their memberships stay as they are.
    pub skipped: &'a BTreeSet<StableId>,
    pub observed: &'a Observed,
    /// The daemon's own user: never removed.
    pub daemon: Option<&'a str>,
}

/// Diffs every room the rules give (and templated rooms the ledger knows) into actions.
pub fn plan_rooms(desired: &DesiredRooms, ledger: &RoomsView, ctx: Context<'_>) -> RoomPlan {
    let mut out = RoomPlan::default();
    let templates: BTreeMap<&str, Mode> = desired
        .templates
        .iter()
        .map(|(t, m)| (t.as_str(), *m))
        .collect();
    // Templated rooms nobody renders to any more: emptied as their mode allows.
    let emptied: Vec<DesiredRoom> = ledger
        .rooms
        .values()
        .filter(|r| !desired.rooms.contains_key(&r.key))
        .filter_map(|r| {
            templates.get(r.rule.as_str()).map(|mode| DesiredRoom {
                key: r.key.clone(),
                rule: r.rule.clone(),
                mode: *mode,
                space: r.space,
                create: None,
                parent: r.parent.clone(),
                keep: vec![],
                members: BTreeMap::new(),
                power: BTreeMap::new(),
            })
        })
        .collect();
    for room in desired.rooms.values().chain(&emptied) {
        let before = out.actions.len();
        plan_room(room, ledger, ctx, &mut out);
        if out.actions.len() == before {
            out.unchanged_rooms += 1;
        }
    }
    let depth = creation_depths(&out.actions);
    out.actions.sort_by(|a, b| {
        let key = |x: &RoomAction| {
            (
                x.phase(),
                depth.get(x.room()).copied().unwrap_or(0),
                x.room().to_string(),
                x.mxid().unwrap_or_default().to_string(),
            )
        };
        key(a).cmp(&key(b))
    });
    out
}

/// For rooms created in this plan: how many created ancestors each has (parents first).
fn creation_depths(actions: &[RoomAction]) -> BTreeMap<String, usize> {
    let parents: BTreeMap<&str, &str> = actions
        .iter()
        .filter_map(|a| match a {
            RoomAction::LinkSpace { room, parent, .. } => Some((room.as_str(), parent.as_str())),
            _ => None,
        })
        .collect();
    let mut out = BTreeMap::new();
    for a in actions {
        if let RoomAction::CreateRoom { room, .. } = a {
            let mut depth = 0;
            let mut at = room.as_str();
            while let Some(p) = parents.get(at) {
                depth += 1;
                at = p;
                if depth > parents.len() {
                    break;
                }
            }
            out.insert(room.clone(), depth);
        }
    }
    out
}

fn plan_room(room: &DesiredRoom, ledger: &RoomsView, ctx: Context<'_>, out: &mut RoomPlan) {
    let key = room.key.as_str();
    let record = ledger.rooms.get(key);
    let state = match ctx.observed.get(key) {
        Some(Some(state)) => Some(state),
        Some(None) => None,
        None => None,
    };
    let missing = matches!(ctx.observed.get(key), Some(None));
    let exists = record.is_some() && !missing || state.is_some();
    if let (None, Some(s)) = (record, state) {
        out.adopt.push(Adopt {
            room: key.to_string(),
            room_id: s.room_id.clone(),
            rule: room.rule.clone(),
            mode: room.mode,
            space: room.space,
        });
    }
    if !exists {
        match &room.create {
            Some(creation) if missing || record.is_none() => {
                let reason = if room.rule == room.key {
                    format!("{key} is named in the rules and does not exist yet")
                } else {
                    format!("first agent for {key} (from {})", room.rule)
                };
                out.actions.push(RoomAction::CreateRoom {
                    room: key.to_string(),
                    rule: room.rule.clone(),
                    space: room.space,
                    mode: room.mode,
                    creation: creation.clone(),
                    reason,
                });
            }
            _ if missing => {
                out.warnings.push(format!(
                    "room {key} does not exist and its rule has no `create`: nothing done for it"
                ));
                return;
            }
            // Not looked at (no homeserver at hand): planned as if it existed.
            _ => {}
        }
    }
    if let Some(parent) = &room.parent {
        if record.and_then(|r| r.parent.as_deref()) != Some(parent.as_str()) {
            out.actions.push(RoomAction::LinkSpace {
                room: key.to_string(),
                parent: parent.clone(),
                reason: format!("{key} belongs under the space {parent}"),
            });
        }
    }
    let added: BTreeMap<&StableId, _> = ledger.members_of(key).map(|m| (&m.id, m)).collect();
    let joined = |id: &StableId, mxid: &str| match state {
        Some(s) => s.members.contains(mxid),
        None => added.contains_key(id),
    };
    let mut wanted_mxids = BTreeSet::new();
    for (id, why) in &room.members {
        let Some(mxid) = ctx.mxids.get(id) else {
            continue;
        };
        wanted_mxids.insert(mxid.as_str());
        if !joined(id, mxid) {
            out.actions.push(RoomAction::Join {
                room: key.to_string(),
                id: id.clone(),
                mxid: mxid.clone(),
                reason: format!("joins {key}: {why}"),
            });
        }
    }
    for (id, m) in &added {
        if room.members.contains_key(*id) || ctx.skipped.contains(*id) {
            continue;
        }
        let why = if ctx.departed.contains(*id) {
            "departed".to_string()
        } else if ctx.present.contains(*id) {
            format!("no longer in the rule (joined as: {})", m.reason)
        } else {
            "not in the directory any more".to_string()
        };
        let still_there = state.is_none_or(|s| s.members.contains(&m.mxid));
        if room.mode == Mode::Additive || !still_there {
            let note = if still_there {
                "additive room: stays, no longer the daemon's to remove"
            } else {
                "already gone from the room"
            };
            out.forget.push(Forget {
                room: key.to_string(),
                id: (*id).clone(),
                mxid: m.mxid.clone(),
                reason: format!("{key}: {why}; {note}"),
            });
        } else {
            out.actions.push(RoomAction::Kick {
                room: key.to_string(),
                id: Some((*id).clone()),
                mxid: m.mxid.clone(),
                reason: format!("leaves {key}: {why}"),
            });
        }
    }
    if room.mode == Mode::Exact {
        if let Some(s) = state {
            let ours: BTreeSet<&str> = added.values().map(|m| m.mxid.as_str()).collect();
            for mxid in &s.members {
                let skipped = ctx.skipped.iter().any(|id| ctx.mxids.get(id) == Some(mxid));
                let kept = wanted_mxids.contains(mxid.as_str())
                    || skipped
                    || ours.contains(mxid.as_str())
                    || ctx.daemon == Some(mxid.as_str())
                    || s.creators.contains(mxid)
                    || room.keep.iter().any(|k| k == mxid);
                if !kept {
                    out.actions.push(RoomAction::Kick {
                        room: key.to_string(),
                        id: None,
                        mxid: mxid.clone(),
                        reason: format!("leaves {key}: not given by the rules of this exact room"),
                    });
                }
            }
        }
    }
    plan_power(room, ledger, ctx, state, out);
}

fn plan_power(
    room: &DesiredRoom,
    ledger: &RoomsView,
    ctx: Context<'_>,
    state: Option<&RoomState>,
    out: &mut RoomPlan,
) {
    let key = room.key.as_str();
    let granted: BTreeMap<&StableId, _> = ledger.powers_in(key).map(|p| (&p.id, p)).collect();
    for (id, (level, why)) in &room.power {
        let Some(mxid) = ctx.mxids.get(id) else {
            continue;
        };
        if state.is_some_and(|s| s.creators.contains(mxid)) {
            continue; // v12 creators have unlimited power and must not be listed
        }
        let ours = granted.get(id).map(|p| p.level);
        let current = match state {
            Some(s) => s.power.get(mxid).copied(),
            None => ours,
        };
        // A higher level given by hand is never lowered; one the daemon gave may be.
        let raised_by_hand = current.is_some_and(|c| c > *level) && current != ours;
        if current != Some(*level) && !raised_by_hand {
            out.actions.push(RoomAction::SetPower {
                room: key.to_string(),
                id: id.clone(),
                mxid: mxid.clone(),
                from: current,
                to: Some(*level),
                reason: format!("power {level} in {key}: {why}"),
            });
        }
    }
    for (id, p) in &granted {
        if room.power.contains_key(*id) {
            continue;
        }
        let current = match state {
            Some(s) => s.power.get(&p.mxid).copied(),
            None => Some(p.level),
        };
        // Changed by hand since: no longer the daemon's to take back.
        let ours = current == Some(p.level);
        if ours {
            out.actions.push(RoomAction::SetPower {
                room: key.to_string(),
                id: (*id).clone(),
                mxid: p.mxid.clone(),
                from: current,
                to: None,
                reason: format!(
                    "loses power {} in {key}: no longer given (was: {})",
                    p.level, p.reason
                ),
            });
        } else {
            out.warnings.push(format!(
                "{} in {key}: power level changed by hand since the daemon granted {}; left as is",
                p.mxid, p.level
            ));
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;
