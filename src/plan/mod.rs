//! The plan: a pure diff of the [`Desired`] state against the ledger into ordered actions,
//! each with a reason an admin can read. Nothing here talks to the network.

mod localparts;
pub mod memberships;

use serde::Serialize;

use crate::directory::StableId;
use crate::ledger::LedgerView;
use crate::mapping::{Desired, DesiredAccount, SkippedAgent};

use localparts::LocalpartAllocator;

/// A value before and after.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change<T> {
    pub from: T,
    pub to: T,
}

/// One change to make on the homeserver.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Action {
    /// Create the account (or adopt an existing one with the same mxid) with this profile.
    CreateAccount {
        id: StableId,
        mxid: String,
        localpart: String,
        dn: String,
        display_name: String,
        emails: Vec<String>,
        reason: String,
    },
    /// Bring a managed account's profile in line with the directory.
    UpdateAccount {
        id: StableId,
        mxid: String,
        dn: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        display_name: Option<Change<String>>,
        #[serde(skip_serializing_if = "Option::is_none")]
        emails: Option<Change<Vec<String>>>,
        reason: String,
    },
}

impl Action {
    pub fn kind(&self) -> ActionKind {
        match self {
            Action::CreateAccount { .. } => ActionKind::CreateAccount,
            Action::UpdateAccount { .. } => ActionKind::UpdateAccount,
        }
    }

    pub fn mxid(&self) -> &str {
        match self {
            Action::CreateAccount { mxid, .. } | Action::UpdateAccount { mxid, .. } => mxid,
        }
    }

    pub fn id(&self) -> &StableId {
        match self {
            Action::CreateAccount { id, .. } | Action::UpdateAccount { id, .. } => id,
        }
    }

    pub fn reason(&self) -> &str {
        match self {
            Action::CreateAccount { reason, .. } | Action::UpdateAccount { reason, .. } => reason,
        }
    }
}

/// Action kinds, in the order a plan runs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionKind {
    CreateAccount,
    UpdateAccount,
}

impl ActionKind {
    pub const ALL: [ActionKind; 2] = [ActionKind::CreateAccount, ActionKind::UpdateAccount];

    /// The name used in the audit trail, logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            ActionKind::CreateAccount => "create_account",
            ActionKind::UpdateAccount => "update_account",
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            ActionKind::CreateAccount => "Create account",
            ActionKind::UpdateAccount => "Update account",
        }
    }
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

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Plan {
    /// In the order they run: creations, then updates; each kind sorted by localpart.
    pub actions: Vec<Action>,
    /// DN changes the ledger records; they need no homeserver write.
    pub moves: Vec<Move>,
    /// Agents in the directory whose account needs nothing.
    pub unchanged: usize,
    /// Managed accounts whose agent is not in this snapshot (departures are not acted on yet).
    pub not_in_directory: Vec<String>,
    pub skipped: Vec<SkippedAgent>,
    pub warnings: Vec<String>,
    /// Room and space memberships; they run after the account actions.
    pub rooms: memberships::RoomPlan,
}

impl Plan {
    /// True when applying would write nothing to the homeserver.
    pub fn has_changes(&self) -> bool {
        !self.actions.is_empty() || self.rooms.has_changes()
    }

    pub fn count(&self, kind: ActionKind) -> usize {
        self.actions.iter().filter(|a| a.kind() == kind).count()
    }
}

/// Diffs what the directory wants against what the ledger says was applied.
pub fn plan(desired: &Desired, ledger: &LedgerView, server_name: &str) -> Plan {
    plan_with_rooms(
        desired,
        ledger,
        server_name,
        &memberships::Observed::new(),
        None,
    )
}

/// [`plan`], with the rooms as the homeserver has them (`observed`) and the daemon's own
/// user (never removed from a room).
pub fn plan_with_rooms(
    desired: &Desired,
    ledger: &LedgerView,
    server_name: &str,
    observed: &memberships::Observed,
    daemon: Option<&str>,
) -> Plan {
    let mut result = plan_accounts(desired, ledger, server_name);
    let mut mxids: std::collections::BTreeMap<StableId, String> = ledger
        .accounts
        .values()
        .map(|r| (r.id.clone(), r.mxid.clone()))
        .collect();
    for action in &result.actions {
        if let Action::CreateAccount { id, mxid, .. } = action {
            mxids.insert(id.clone(), mxid.clone());
        }
    }
    let present = desired.accounts.iter().map(|a| a.id.clone()).collect();
    let ctx = memberships::Context {
        mxids: &mxids,
        present: &present,
        observed,
        daemon,
    };
    result.rooms = memberships::plan_rooms(&desired.rooms, &ledger.rooms, ctx);
    result
}

fn plan_accounts(desired: &Desired, ledger: &LedgerView, server_name: &str) -> Plan {
    let mut result = Plan {
        skipped: desired.skipped.clone(),
        warnings: desired.warnings.clone(),
        ..Plan::default()
    };
    let mut allocator = LocalpartAllocator::new(ledger);
    let mut seen = std::collections::HashSet::with_capacity(desired.accounts.len());
    for want in &desired.accounts {
        seen.insert(&want.id);
        match ledger.accounts.get(&want.id) {
            Some(record) => {
                if record.dn != want.dn {
                    result.moves.push(Move {
                        id: want.id.clone(),
                        mxid: record.mxid.clone(),
                        from_dn: record.dn.clone(),
                        to_dn: want.dn.clone(),
                    });
                }
                match update_for(want, &record.mxid, &record.display_name, &record.emails) {
                    Some(action) => result.actions.push(action),
                    None => result.unchanged += 1,
                }
            }
            None => {
                let (localpart, note) = allocator.allocate(want);
                let mxid = format!("@{localpart}:{server_name}");
                let mut reason = format!("new agent {}", want.dn);
                if let Some(note) = note {
                    reason.push_str("; ");
                    reason.push_str(&note);
                }
                result.actions.push(Action::CreateAccount {
                    id: want.id.clone(),
                    mxid,
                    localpart,
                    dn: want.dn.clone(),
                    display_name: want.display_name.clone(),
                    emails: want.emails.clone(),
                    reason,
                });
            }
        }
    }
    result.not_in_directory = ledger
        .accounts
        .values()
        .filter(|r| !seen.contains(&r.id))
        .map(|r| r.mxid.clone())
        .collect();
    result.actions.sort_by(|a, b| {
        (a.kind(), localpart_of(a.mxid())).cmp(&(b.kind(), localpart_of(b.mxid())))
    });
    result.moves.sort_by(|a, b| a.mxid.cmp(&b.mxid));
    result.not_in_directory.sort();
    result
}

/// `alice` of `@alice:example.org`, so `jean.martin` sorts before `jean.martin2`.
fn localpart_of(mxid: &str) -> &str {
    mxid.trim_start_matches('@')
        .split(':')
        .next()
        .unwrap_or(mxid)
}

fn update_for(
    want: &DesiredAccount,
    mxid: &str,
    display_name: &str,
    emails: &[String],
) -> Option<Action> {
    let name_change = (want.display_name != display_name).then(|| Change {
        from: display_name.to_string(),
        to: want.display_name.clone(),
    });
    let email_change = (want.emails != emails).then(|| Change {
        from: emails.to_vec(),
        to: want.emails.clone(),
    });
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
    if what.is_empty() {
        return None;
    }
    Some(Action::UpdateAccount {
        id: want.id.clone(),
        mxid: mxid.to_string(),
        dn: want.dn.clone(),
        display_name: name_change,
        emails: email_change,
        reason: format!("{} changed in the directory ({})", what.join(", "), want.dn),
    })
}

#[cfg(test)]
mod tests;
