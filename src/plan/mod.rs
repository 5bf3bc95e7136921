//! The plan: a pure diff of the [`Desired`] state against the ledger into ordered actions,
//! each with a reason an admin can read. Nothing here talks to the network.

mod actions;
mod existing;
mod lifecycle;
mod localparts;
pub mod memberships;
pub mod shadows;

pub use actions::{Action, ActionKind, Change};
pub use existing::{Conflict, ExistingAccount, HomeserverAccounts, Lookup};
pub use localparts::{localpart_base, Base};

use std::collections::BTreeMap;

use serde::Serialize;

use crate::config::ReversibleStep;
use crate::directory::StableId;
use crate::ledger::{AccountRecord, AccountStatus, Held, LedgerView, ProfileFields};
use crate::mapping::{Adopt, AgentState, Desired, DesiredAccount, OnConflict, SkippedAgent};

use lifecycle::Lifecycle;
use localparts::LocalpartAllocator;

/// What the plan needs besides the desired state and the ledger.
#[derive(Debug, Clone)]
pub struct Policy {
    pub server_name: String,
    /// Unix seconds.
    pub now: i64,
    /// Seconds between the reversible step of a departure and the deactivation; 0: at once.
    pub grace: i64,
    pub step: ReversibleStep,
    /// mxid patterns (`*` wildcards) never suspended, locked or deactivated.
    pub protected: Vec<String>,
    /// Which existing, unmanaged accounts may become an agent's.
    pub adopt: Adopt,
    pub on_conflict: OnConflict,
    /// Seconds after which an action the homeserver refused is tried again although the
    /// agent did not change.
    pub retry_refused_after: i64,
}

#[cfg(test)]
impl Policy {
    /// A policy for tests: `server_name`, `now`, `grace` seconds, the defaults otherwise
    /// (suspend first, nothing protected, adopt only matching accounts, retry refusals daily).
    pub fn for_tests(server_name: &str, now: i64, grace: i64) -> Policy {
        Policy {
            server_name: server_name.into(),
            now,
            grace,
            step: ReversibleStep::Suspend,
            protected: vec![],
            adopt: Adopt::Matching,
            on_conflict: OnConflict::Skip,
            retry_refused_after: 86_400,
        }
    }
}

/// An action the homeserver refused for good, not planned again yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Refused {
    pub id: StableId,
    pub mxid: String,
    pub dn: String,
    /// The action kind, e.g. `create_account`.
    pub action: String,
    pub error: String,
    /// First refused (Unix seconds).
    pub since: i64,
    /// Tried again from then on, unless the agent changes before.
    pub retry_at: i64,
}

/// A managed agent whose DN changed (renamed or moved) while its id stayed: the ledger notes
/// the new DN; the account stays the same one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Move {
    pub id: StableId,
    pub mxid: String,
    pub from_dn: String,
    pub to_dn: String,
}

/// Something the plan is waiting for: a departure in its grace period, or a departure date
/// set in advance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Pending {
    pub mxid: String,
    /// When something will happen (Unix seconds).
    pub at: i64,
    pub what: String,
}

/// A departure the plan would act on but may not: the account is protected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Protected {
    pub mxid: String,
    pub reason: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Plan {
    /// In the order they run (see [`ActionKind`]); each kind sorted by localpart.
    pub actions: Vec<Action>,
    /// DN changes the ledger records; they need no homeserver write.
    pub moves: Vec<Move>,
    /// Managed agents whose account needs nothing.
    pub unchanged: usize,
    /// Departures in their grace period (deactivation due at `at`) and departures scheduled
    /// by the directory (the reversible step due at `at`).
    pub pending: Vec<Pending>,
    pub protected: Vec<Protected>,
    /// Agents that already left and never had an account: none is created.
    pub not_created: Vec<SkippedAgent>,
    /// Agents the mapping could not map, and new agents whose localpart Synapse would refuse
    /// (see [`localpart_base`]): nothing is done for them.
    pub skipped: Vec<SkippedAgent>,
    /// Agents whose mxid is held by an account the daemon may not take over: nothing is done
    /// for them.
    pub conflicts: Vec<Conflict>,
    /// Actions the homeserver refused before, left out until the agent changes or the retry
    /// delay passes.
    pub refused: Vec<Refused>,
    /// Accounts the daemon does not manage that agents can log in to (complete reads with a
    /// homeserver at hand only; see [`shadows`]).
    pub shadows: Vec<crate::ledger::Shadow>,
    pub warnings: Vec<String>,
    /// Room and space memberships; they run after the account actions.
    pub rooms: memberships::RoomPlan,
}

impl Plan {
    /// True when applying would write to the homeserver.
    pub fn has_changes(&self) -> bool {
        !self.actions.is_empty() || self.rooms.has_changes()
    }

    pub fn count(&self, kind: ActionKind) -> usize {
        self.actions.iter().filter(|a| a.kind() == kind).count()
    }

    /// Actions that take something away (suspend, lock, deactivate; room removals and power
    /// levels lowered): what the brake holds back.
    pub fn departures(&self) -> usize {
        self.account_departures() + self.rooms.removals()
    }

    /// Accounts suspended, locked or deactivated: the brake counts them apart from the room
    /// removals.
    pub fn account_departures(&self) -> usize {
        self.actions
            .iter()
            .filter(|a| a.kind().is_departure())
            .count()
    }
}

/// Diffs what the directory wants against what the ledger says was applied. Rooms are planned
/// from the ledger alone: see [`plan_with_rooms`].
pub fn plan(desired: &Desired, ledger: &LedgerView, policy: &Policy) -> Plan {
    let homeserver = Homeserver::default();
    plan_with_rooms(desired, ledger, policy, &homeserver)
}

/// What the plan knows of the homeserver's own state.
#[derive(Debug, Clone, Default)]
pub struct Homeserver<'a> {
    /// The rooms as the homeserver has them.
    pub rooms: memberships::Observed,
    /// The daemon's own user (never removed from a room).
    pub daemon: Option<&'a str>,
    /// The unmanaged accounts new agents' mxids may collide with.
    pub accounts: HomeserverAccounts,
}

/// [`plan`], with what the homeserver has.
pub fn plan_with_rooms(
    desired: &Desired,
    ledger: &LedgerView,
    policy: &Policy,
    homeserver: &Homeserver,
) -> Plan {
    let mut result = plan_accounts(desired, ledger, policy, &homeserver.accounts);
    if desired.rooms.is_empty() {
        // Nothing to diff (a room the ledger knows is only emptied through its rule).
        return result;
    }
    let mut mxids: BTreeMap<StableId, String> = ledger
        .accounts
        .values()
        .map(|r| (r.id.clone(), r.mxid.clone()))
        .chain(
            ledger
                .in_step
                .iter()
                .map(|(id, mxid)| (id.clone(), mxid.clone())),
        )
        .collect();
    for action in &result.actions {
        if let Action::CreateAccount { id, mxid, .. } = action {
            mxids.insert(id.clone(), mxid.clone());
        }
    }
    let present = desired.accounts.iter().map(|a| a.id.clone()).collect();
    let departed = desired
        .accounts
        .iter()
        .filter(|a| matches!(a.state, AgentState::Departed { .. }))
        .map(|a| a.id.clone())
        .collect();
    let skipped = desired
        .skipped
        .iter()
        .filter_map(|s| s.id.clone())
        .collect();
    let ctx = memberships::Context {
        mxids: &mxids,
        present: &present,
        departed: &departed,
        skipped: &skipped,
        observed: &homeserver.rooms,
        daemon: homeserver.daemon,
    };
    result.rooms = memberships::plan_rooms(&desired.rooms, &ledger.rooms, ctx);
    result
}

fn plan_accounts(
    desired: &Desired,
    ledger: &LedgerView,
    policy: &Policy,
    existing: &HomeserverAccounts,
) -> Plan {
    let mut plan = Plan {
        skipped: desired.skipped.clone(),
        warnings: desired.warnings.clone(),
        ..Plan::default()
    };
    let mut allocator = LocalpartAllocator::new(ledger, &policy.server_name);
    let lifecycle = Lifecycle::new(policy);
    let Paired { wanted, gone } = pair_up(desired, ledger);
    for (want, known) in wanted {
        match known {
            Known::Record(record) => plan_managed(&mut plan, &lifecycle, want, record),
            Known::InStep => {}
            Known::New => {
                let new = New {
                    policy,
                    existing,
                    intents: &ledger.intents,
                };
                plan_new(&mut plan, &mut allocator, &new, want)
            }
        }
    }
    plan.unchanged += ledger.in_step.len();
    for record in gone {
        let reason = format!("no longer in the directory (last seen as {})", record.dn);
        if lifecycle.departed(&mut plan, record, &reason) {
            plan.unchanged += 1;
        }
    }
    plan.actions.sort_by(|a, b| {
        (a.kind(), localpart_of(a.mxid())).cmp(&(b.kind(), localpart_of(b.mxid())))
    });
    plan.moves.sort_by(|a, b| a.mxid.cmp(&b.mxid));
    plan.pending
        .sort_by(|a, b| (a.at, &a.mxid).cmp(&(b.at, &b.mxid)));
    leave_out_refused(&mut plan, ledger, policy);
    plan
}

/// Takes out of `plan` the actions the homeserver refused before, asking the same, whose
/// retry delay has not passed: they are listed in `plan.refused` instead.
fn leave_out_refused(plan: &mut Plan, ledger: &LedgerView, policy: &Policy) {
    if ledger.held.is_empty() {
        return;
    }
    let mut refused = Vec::new();
    plan.actions.retain(|action| {
        let Some(held) = ledger.held.get(action.id()) else {
            return true;
        };
        let Held::Refused {
            action: kind,
            wanted,
            error,
        } = &held.why
        else {
            return true;
        };
        let retry_at = held.at.saturating_add(policy.retry_refused_after);
        let same = kind == action.kind().name() && *wanted == wanted_digest(action);
        if !same || policy.now >= retry_at {
            return true;
        }
        refused.push(Refused {
            id: held.id.clone(),
            mxid: held.mxid.clone(),
            dn: held.dn.clone(),
            action: kind.clone(),
            error: error.clone(),
            since: held.since,
            retry_at,
        });
        false
    });
    plan.refused = refused;
}

/// A digest of what `action` asks of the homeserver (its reason left out), to tell whether a
/// refused action would now ask the same again.
pub fn wanted_digest(action: &Action) -> String {
    use sha2::{Digest, Sha256};
    let mut value = serde_json::to_value(action).unwrap_or_default();
    if let Some(fields) = value.as_object_mut() {
        fields.remove("reason");
    }
    Sha256::digest(value.to_string().as_bytes())
        .iter()
        .take(12)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The desired accounts with their ledger records, and the records nobody in the directory
/// has any more.
struct Paired<'a> {
    /// In stable-id order.
    wanted: Vec<(&'a DesiredAccount, Known<'a>)>,
    /// In stable-id order.
    gone: Vec<&'a AccountRecord>,
}

/// What the ledger view has of a desired account.
enum Known<'a> {
    Record(&'a AccountRecord),
    /// Managed, and needs nothing (see [`LedgerView::in_step`]).
    InStep,
    /// Not managed yet.
    New,
}

/// One merge of the id-ordered lists (the desired accounts are sorted by id; sorted here
/// if they are not), instead of a map lookup per agent.
fn pair_up<'a>(desired: &'a Desired, ledger: &'a LedgerView) -> Paired<'a> {
    let wants = desired.accounts_by_id();
    // Agents the directory returned but that could not be mapped are not gone either.
    let skipped = desired.skipped_ids();
    let mut records = ledger.accounts.values().peekable();
    let mut gone = Vec::new();
    // The id of the last record matched: passed over afterwards, it is not gone.
    let mut matched: Option<&StableId> = None;
    let mut left = |record: &'a AccountRecord, matched: Option<&StableId>| {
        let departing = matches!(record.status, AccountStatus::Departing { .. });
        if matched != Some(&record.id)
            && !skipped.contains(&record.id)
            && (departing || desired.coverage.is_gone(&record.id))
        {
            gone.push(record);
        }
    };
    let mut in_step = ledger.in_step.iter().map(|(id, _)| id).peekable();
    let mut wanted = Vec::with_capacity(wants.len());
    for want in wants {
        while let Some(record) = records.next_if(|r| r.id < want.id) {
            left(record, matched);
        }
        while in_step.next_if(|id| **id < want.id).is_some() {}
        let known = if let Some(record) = records.peek().copied().filter(|r| r.id == want.id) {
            matched = Some(&want.id);
            Known::Record(record)
        } else if in_step.next_if(|id| **id == want.id).is_some() {
            Known::InStep
        } else {
            Known::New
        };
        wanted.push((want, known));
    }
    for record in records {
        left(record, matched);
    }
    Paired { wanted, gone }
}

fn plan_managed(
    plan: &mut Plan,
    lifecycle: &Lifecycle,
    want: &DesiredAccount,
    record: &AccountRecord,
) {
    if record.dn != want.dn {
        plan.moves.push(Move {
            id: want.id.clone(),
            mxid: record.mxid.clone(),
            from_dn: record.dn.clone(),
            to_dn: want.dn.clone(),
        });
    }
    let scheduled = match &want.state {
        AgentState::Departed { reason, .. } => {
            if lifecycle.departed(plan, record, reason) {
                plan.unchanged += 1;
            }
            return;
        }
        AgentState::Scheduled { at, reason } => Some(Pending {
            mxid: record.mxid.clone(),
            at: *at,
            what: reason.clone(),
        }),
        AgentState::Active => None,
    };
    plan.pending.extend(scheduled);
    match &record.status {
        AccountStatus::Deactivated { reason, .. } => plan.actions.push(Action::ReactivateAccount {
            id: want.id.clone(),
            mxid: record.mxid.clone(),
            display_name: want.display_name.clone(),
            emails: want.emails.clone(),
            external_ids: want.external_ids.clone(),
            reason: format!(
                "back in the directory ({}); was deactivated: {reason}",
                want.dn
            ),
        }),
        AccountStatus::Departing { step, reason, .. } => {
            plan.actions.push(Action::ReinstateAccount {
                id: want.id.clone(),
                mxid: record.mxid.clone(),
                step: *step,
                reason: format!("back in the directory ({}); had left: {reason}", want.dn),
            });
            plan.actions
                .extend(update_for(want, &record.mxid, ProfileFields::of(record)));
        }
        AccountStatus::Active => match update_for(want, &record.mxid, ProfileFields::of(record)) {
            Some(action) => plan.actions.push(action),
            None => plan.unchanged += 1,
        },
    }
}

/// How many localparts an agent is offered past accounts that are not theirs
/// (`on_conflict = "next_free"`).
const MAX_NEXT_FREE: usize = 20;

/// What deciding a new agent's account needs besides the agent.
struct New<'a> {
    policy: &'a Policy,
    existing: &'a HomeserverAccounts,
    /// Creations begun by a run that died before recording them: mxid → agent.
    intents: &'a BTreeMap<String, StableId>,
}

fn plan_new(plan: &mut Plan, allocator: &mut LocalpartAllocator, new: &New, want: &DesiredAccount) {
    let New {
        policy,
        existing,
        intents,
    } = *new;
    if let AgentState::Departed { reason, .. } = &want.state {
        plan.not_created.push(SkippedAgent {
            id: Some(want.id.clone()),
            dn: want.dn.clone(),
            reason: reason.clone(),
        });
        return;
    }
    let base = match localpart_base(&want.localpart, &policy.server_name) {
        Ok(base) => base,
        Err(reason) => {
            tracing::warn!(dn = %want.dn, %reason, "agent skipped");
            plan.skipped.push(SkippedAgent {
                id: Some(want.id.clone()),
                dn: want.dn.clone(),
                reason,
            });
            return;
        }
    };
    let mut held_by_others: Vec<String> = Vec::new();
    let (localpart, mut note, adopt, resumed) = loop {
        let (localpart, note) = allocator.allocate(want, base.text);
        let mxid = format!("@{localpart}:{}", policy.server_name);
        let Lookup::Present(account) = existing.get(&mxid) else {
            break (localpart, note, None, false);
        };
        if intents.get(&mxid) == Some(&want.id) && !account.deactivated {
            break (localpart, note, None, true);
        }
        match existing::adoption(policy.adopt, account, want) {
            Ok(evidence) => break (localpart, note, Some(evidence), false),
            Err(why) => {
                let next_free = policy.on_conflict == OnConflict::NextFree
                    && held_by_others.len() < MAX_NEXT_FREE;
                if !next_free {
                    tracing::warn!(dn = %want.dn, %mxid, reason = %why, "conflict: an existing account the daemon may not take over");
                    plan.conflicts.push(Conflict {
                        id: want.id.clone(),
                        dn: want.dn.clone(),
                        mxid,
                        reason: why,
                    });
                    return;
                }
                held_by_others.push(localpart);
            }
        }
    };
    if !held_by_others.is_empty() {
        note = Some(format!(
            "`{}` held on the homeserver by accounts that are not the agent's (on_conflict = \"next_free\"), so `{localpart}`",
            held_by_others.join("`, `")
        ));
    }
    let mxid = format!("@{localpart}:{}", policy.server_name);
    if let AgentState::Scheduled { at, reason } = &want.state {
        plan.pending.push(Pending {
            mxid: mxid.clone(),
            at: *at,
            what: reason.clone(),
        });
    }
    let mut reason = format!("new agent {}", want.dn);
    if base.cut {
        let cut = format!(
            "the localpart {} is too long for a user id on {} (255 bytes): cut to {} characters",
            localparts::shown(&want.localpart),
            policy.server_name,
            base.text.len()
        );
        plan.warnings.push(format!("{}: {cut}", want.dn));
        reason.push_str("; ");
        reason.push_str(&cut);
    }
    if let Some(note) = note {
        reason.push_str("; ");
        reason.push_str(&note);
    }
    if resumed {
        reason.push_str(&format!(
            "; {mxid} was made by a run of the daemon that stopped before recording it"
        ));
    }
    if let Some(evidence) = &adopt {
        reason.push_str(&format!(
            "; {mxid} exists on the homeserver and is taken over: {evidence}"
        ));
    }
    plan.actions.push(Action::CreateAccount {
        id: want.id.clone(),
        mxid,
        localpart,
        dn: want.dn.clone(),
        display_name: want.display_name.clone(),
        emails: want.emails.clone(),
        adopt,
        resumed,
        external_ids: want.external_ids.clone(),
        reason,
    });
}

/// `alice` of `@alice:example.org`, so `jean.martin` sorts before `jean.martin2`.
fn localpart_of(mxid: &str) -> &str {
    mxid.trim_start_matches('@')
        .split(':')
        .next()
        .unwrap_or(mxid)
}

/// The update that brings the profile last applied (`applied`) in line with what the
/// directory wants, if anything differs. Every field of [`ProfileFields`] is looked at here
/// (the DN is recorded as a move, not written to the homeserver).
fn update_for(want: &DesiredAccount, mxid: &str, applied: ProfileFields) -> Option<Action> {
    let ProfileFields {
        dn: _,
        display_name,
        emails,
        external_ids,
    } = applied;
    let wanted = ProfileFields::wanted(want);
    fn change<T: ?Sized + ToOwned + PartialEq>(from: &T, to: &T) -> Option<Change<T::Owned>> {
        (from != to).then(|| Change {
            from: from.to_owned(),
            to: to.to_owned(),
        })
    }
    let name_change = change(display_name, wanted.display_name);
    let email_change = change(emails, wanted.emails);
    let id_change = change(external_ids, wanted.external_ids);
    let mut what = Vec::new();
    if let Some(c) = &name_change {
        what.push(format!("display name \"{}\" → \"{}\"", c.from, c.to));
    }
    if let Some(c) = &email_change {
        what.push(format!(
            "e-mails [{}] → [{}]",
            c.from.join(", "),
            c.to.join(", ")
        ));
    }
    if let Some(c) = &id_change {
        let list = |ids: &[crate::homeserver::ExternalId]| {
            ids.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        what.push(format!(
            "external ids [{}] → [{}]",
            list(&c.from),
            list(&c.to)
        ));
    }
    if what.is_empty() {
        return None;
    }
    Some(Action::UpdateAccount {
        id: want.id.clone(),
        mxid: mxid.to_string(),
        dn: want.dn.clone(),
        display_name: name_change,
        emails: email_change,
        external_ids: id_change,
        reason: format!("{} changed in the directory ({})", what.join(", "), want.dn),
    })
}

#[cfg(test)]
mod tests;
