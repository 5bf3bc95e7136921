//! The write-ahead journal: before a homeserver write is sent, what it aims at is written to
//! the ledger and flushed; its result clears it. A run that dies in between leaves the entry,
//! and the next run resolves it before planning by reading what the homeserver really holds
//! for that account or room and recording *that* — so the plan is made from the truth, not
//! from the daemon's memory of what it meant to do.

use serde::Serialize;

use crate::config::ReversibleStep;
use crate::homeserver::{Homeserver, HomeserverError, RemoteUser, Rooms};
use crate::ledger::journal::Intent;
use crate::ledger::{
    AccountRecord, AccountStatus, AuditEntry, Ledger, LedgerError, MembershipRecord, Origin,
    PowerRecord,
};
use crate::plan::memberships::RoomAction;
use crate::plan::Action;

/// What resolving the unfinished intents of an interrupted run found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Resolution {
    /// The homeserver holds what the intent aimed at: recorded as done.
    pub applied: usize,
    /// It does not: the ledger keeps (or takes) what the homeserver really holds, and the
    /// plan does the rest.
    pub not_applied: usize,
}

impl Resolution {
    pub fn total(&self) -> usize {
        self.applied + self.not_applied
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("{0}")]
    Ledger(#[from] LedgerError),
    #[error("{0}")]
    Homeserver(#[from] HomeserverError),
}

const FOUND_APPLIED: &str = "found applied after an interrupted run";
const FOUND_NOT_APPLIED: &str = "found not applied after an interrupted run";

/// The journal entry of an account action, to write before it is sent.
pub(super) fn account_intent(action: &Action, now: i64) -> Intent {
    let (dn, localpart) = match action {
        Action::CreateAccount { dn, localpart, .. } => (dn.clone(), localpart.clone()),
        _ => (String::new(), String::new()),
    };
    let step = match action {
        Action::DepartAccount { step, .. } | Action::ReinstateAccount { step, .. } => Some(*step),
        _ => None,
    };
    Intent::Account {
        id: action.id().clone(),
        mxid: action.mxid().to_string(),
        kind: action.kind().name().to_string(),
        dn,
        localpart,
        step,
        reason: action.reason().to_string(),
        at: now,
    }
}

/// The journal entry of a membership or power action (`None` for room creations and space
/// links, which the next plan finds and records by itself).
pub(super) fn room_intent(action: &RoomAction, now: i64) -> Option<Intent> {
    let (id, level) = match action {
        RoomAction::Join { id, .. } => (Some(id.clone()), None),
        RoomAction::Kick { id, .. } => (id.clone(), None),
        RoomAction::SetPower { id, to, .. } => (Some(id.clone()), *to),
        _ => return None,
    };
    Some(Intent::Room {
        room: action.room().to_string(),
        id,
        mxid: action.mxid()?.to_string(),
        kind: action.name().to_string(),
        level,
        reason: action.reason().to_string(),
        at: now,
    })
}

/// Resolves every unfinished intent against the homeserver's real state (see the module
/// documentation). A homeserver that cannot be read stops it: the intents stay for the next
/// run.
pub async fn resolve<H: Homeserver + Rooms>(
    ledger: &Ledger,
    homeserver: &H,
    now: i64,
) -> Result<Resolution, ResolveError> {
    let mut found = Resolution::default();
    if ledger.journal_is_empty() {
        return Ok(found);
    }
    let intents = ledger.intents()?;
    tracing::info!(
        intents = intents.len(),
        "an earlier run stopped with writes in flight: reading what the homeserver holds for them"
    );
    for (key, intent) in intents {
        let applied = match &intent {
            Intent::Account { .. } => {
                resolve_account(ledger, homeserver, &key, &intent, now).await?
            }
            Intent::Room { .. } => resolve_room(ledger, homeserver, &key, &intent, now).await?,
        };
        match applied {
            true => found.applied += 1,
            false => found.not_applied += 1,
        }
    }
    tracing::info!(
        applied = found.applied,
        not_applied = found.not_applied,
        "unfinished writes resolved"
    );
    Ok(found)
}

async fn resolve_account<H: Homeserver>(
    ledger: &Ledger,
    homeserver: &H,
    key: &[u8],
    intent: &Intent,
    now: i64,
) -> Result<bool, ResolveError> {
    let Intent::Account {
        id,
        mxid,
        kind,
        dn,
        localpart,
        step,
        reason,
        at,
    } = intent
    else {
        return Ok(false);
    };
    let audit = |result: &str| AuditEntry {
        at: now,
        mxid: mxid.clone(),
        id: id.clone(),
        action: kind.clone(),
        reason: reason.clone(),
        result: result.to_string(),
    };
    let user = homeserver.get_user(mxid).await?;
    if kind == "lock_shadow" {
        // Not a managed account: only the audit trail says what happened to it.
        let applied = user.is_some_and(|u| u.locked);
        let result = if applied {
            FOUND_APPLIED
        } else {
            FOUND_NOT_APPLIED
        };
        ledger.record_audit(&audit(result))?;
        ledger.clear_intent(key)?;
        return Ok(applied);
    }
    let record = ledger.account(id)?;
    let (record, applied) = match (record, user) {
        (None, Some(user)) if kind == "create_account" && !user.deactivated => {
            let record = AccountRecord {
                id: id.clone(),
                mxid: mxid.clone(),
                localpart: localpart.clone(),
                dn: dn.clone(),
                display_name: user.displayname.clone().unwrap_or_default(),
                emails: sorted(&user.emails),
                external_ids: user.external_ids.clone(),
                origin: Origin::Created,
                created_at: *at,
                updated_at: now,
                status: AccountStatus::Active,
            };
            (record, true)
        }
        (Some(old), Some(user)) => {
            let mut record = old.clone();
            record.display_name = user.displayname.clone().unwrap_or_default();
            record.emails = sorted(&user.emails);
            record.status = status_of(&user, &old.status, *at, reason, *step);
            record.updated_at = now;
            let applied = record != old;
            (record, applied)
        }
        // Nothing was made, or the account is gone: nothing to record.
        _ => {
            ledger.record_audit(&audit(FOUND_NOT_APPLIED))?;
            ledger.clear_intent(key)?;
            return Ok(false);
        }
    };
    let result = if applied {
        FOUND_APPLIED
    } else {
        FOUND_NOT_APPLIED
    };
    ledger.record_account_clearing(&record, &audit(result), Some(key))?;
    Ok(applied)
}

/// The account's life stage as the homeserver shows it, keeping the ledger's own dates when
/// the stage is the one it already records.
fn status_of(
    user: &RemoteUser,
    old: &AccountStatus,
    at: i64,
    reason: &str,
    step: Option<ReversibleStep>,
) -> AccountStatus {
    if user.deactivated {
        return match old {
            AccountStatus::Deactivated { .. } => old.clone(),
            _ => AccountStatus::Deactivated {
                at,
                reason: reason.to_string(),
            },
        };
    }
    if user.suspended || user.locked {
        return match old {
            AccountStatus::Departing { .. } => old.clone(),
            _ => AccountStatus::Departing {
                since: at,
                reason: reason.to_string(),
                step: step.unwrap_or(if user.locked {
                    ReversibleStep::Lock
                } else {
                    ReversibleStep::Suspend
                }),
            },
        };
    }
    AccountStatus::Active
}

fn sorted(emails: &[String]) -> Vec<String> {
    let mut emails = emails.to_vec();
    emails.sort();
    emails.dedup();
    emails
}

async fn resolve_room<H: Rooms>(
    ledger: &Ledger,
    homeserver: &H,
    key: &[u8],
    intent: &Intent,
    now: i64,
) -> Result<bool, ResolveError> {
    let Intent::Room {
        room,
        id,
        mxid,
        kind,
        level,
        reason,
        ..
    } = intent
    else {
        return Ok(false);
    };
    let audit = |result: &str| AuditEntry {
        at: now,
        mxid: mxid.clone(),
        id: id.clone().unwrap_or_default(),
        action: kind.clone(),
        reason: reason.clone(),
        result: result.to_string(),
    };
    let state = match ledger.room(room)? {
        Some(record) => homeserver.room_state(&record.room_id).await?,
        None => None,
    };
    let Some(state) = state else {
        ledger.record_audit(&audit(FOUND_NOT_APPLIED))?;
        ledger.clear_intent(key)?;
        return Ok(false);
    };
    let member = state.members.contains(mxid);
    let applied = match kind.as_str() {
        "join_room" => member,
        "remove_from_room" => !member,
        _ => state.power.get(mxid).copied() == *level,
    };
    let entry = audit(if applied {
        FOUND_APPLIED
    } else {
        FOUND_NOT_APPLIED
    });
    match (applied, kind.as_str(), id) {
        (true, "join_room", Some(id)) => ledger.record_membership(
            &MembershipRecord {
                room: room.clone(),
                id: id.clone(),
                mxid: mxid.clone(),
                reason: reason.clone(),
                at: now,
            },
            &entry,
        )?,
        (true, "remove_from_room", Some(id)) => ledger.remove_membership(room, id, &entry)?,
        (true, "grant_power" | "revoke_power", Some(id)) => match level {
            Some(level) => ledger.record_power(
                &PowerRecord {
                    room: room.clone(),
                    id: id.clone(),
                    mxid: mxid.clone(),
                    level: *level,
                    reason: reason.clone(),
                    at: now,
                },
                &entry,
            )?,
            None => ledger.remove_power(room, id, &entry)?,
        },
        _ => ledger.record_audit(&entry)?,
    }
    ledger.clear_intent(key)?;
    Ok(applied)
}
