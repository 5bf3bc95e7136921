//! What the ledger stores. Records are JSON, so `sled` dumps stay readable.

use serde::{Deserialize, Serialize};

use crate::config::ReversibleStep;
use crate::directory::StableId;
use crate::homeserver::ExternalId;

/// How the daemon came to manage an account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// The daemon created it.
    Created,
    /// It existed on the homeserver with the mxid the daemon would have created.
    Adopted,
}

/// A managed account and the profile last applied to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountRecord {
    pub id: StableId,
    pub mxid: String,
    /// Fixed when the account is created; never changes afterwards.
    pub localpart: String,
    /// The DN the agent had when last seen (informative: identity is `id`).
    pub dn: String,
    pub display_name: String,
    pub emails: Vec<String>,
    /// The SSO ids last applied (`[login] path = "sso"`), sorted. Records from before they
    /// existed have none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub external_ids: Vec<ExternalId>,
    pub origin: Origin,
    /// Unix seconds.
    pub created_at: i64,
    pub updated_at: i64,
    #[serde(default)]
    pub status: AccountStatus,
}

/// Where a managed account is in its life.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum AccountStatus {
    #[default]
    Active,
    /// The agent left: the reversible step (suspend or lock) was taken at `since`; the grace
    /// period runs from then.
    Departing {
        since: i64,
        reason: String,
        step: ReversibleStep,
    },
    Deactivated {
        at: i64,
        reason: String,
    },
}

/// One applied (or failed) action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Unix seconds.
    pub at: i64,
    pub mxid: String,
    pub id: StableId,
    /// The action kind, e.g. `create`, `update`.
    pub action: String,
    pub reason: String,
    /// `ok`, or the error.
    pub result: String,
}

/// One run of `sync`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRecord {
    pub started_at: i64,
    pub finished_at: i64,
    pub server: String,
    pub agents: usize,
    pub skipped: usize,
    pub planned: usize,
    pub applied: usize,
    pub failed: usize,
    /// Actions the homeserver refused for good (their agents are held; not failures).
    #[serde(default)]
    pub refused: usize,
    /// Agents left alone because their mxid is held by an account not theirs.
    #[serde(default)]
    pub conflicts: usize,
    /// Writes an interrupted run left unfinished, resolved before this run planned: found
    /// done on the homeserver, and found not done.
    #[serde(default)]
    pub resolved_applied: usize,
    #[serde(default)]
    pub resolved_not_applied: usize,
    /// `ok`, or why the run stopped.
    pub outcome: String,
    /// Why the brake held departures back, if it did.
    #[serde(default)]
    pub brake: Option<String>,
    /// How many actions the brake held back.
    #[serde(default)]
    pub held_back: usize,
    /// The brake held the whole plan back, not only its departures: the scope (agent filter,
    /// bases or id attribute) changed since the last good run.
    #[serde(default)]
    pub held_everything: bool,
    /// … and only `migrate-ids` can release it: the agents' ids changed.
    #[serde(default)]
    pub needs_migration: bool,
    /// The run read only what changed since the last read (`agents`: the changed ones).
    #[serde(default)]
    pub incremental: bool,
    /// The run read everything because the directory could not give an incremental read that
    /// can be trusted: why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incremental_fallback: Option<String>,
}

/// An agent the daemon does nothing for until something changes, and why: shown by `plan`,
/// `status` and `explain`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldAgent {
    pub id: StableId,
    pub mxid: String,
    pub dn: String,
    /// When it was first held for this reason (Unix seconds).
    pub since: i64,
    /// When it was last seen held.
    pub at: i64,
    #[serde(flatten)]
    pub why: Held,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "held", rename_all = "snake_case")]
pub enum Held {
    /// The agent's mxid belongs to an account the daemon did not create and may not adopt.
    Conflict { reason: String },
    /// The homeserver refused one of the agent's actions for good (a 4xx other than
    /// 401/403/408/429): not tried again until the agent's wanted state changes or the retry
    /// delay has passed.
    Refused {
        /// The action kind, e.g. `create_account`.
        action: String,
        /// A digest of what the action asked (see `plan::wanted_digest`).
        wanted: String,
        error: String,
    },
}

/// An account the daemon does not manage that an agent can log in to beside (or instead of)
/// their synced one: its localpart is the agent's login, or it holds one of the agent's
/// e-mails. Typically made by a password or SSO login that did not find the synced account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shadow {
    /// The shadow account.
    pub mxid: String,
    /// The agent it shadows.
    pub id: StableId,
    pub dn: String,
    /// The agent's own (synced) account, if they have one.
    pub agent_mxid: Option<String>,
    /// How it was matched: `login jmartin`, `e-mail jean.martin@example.org`.
    pub matched: String,
    /// The agent left: a shadow that still works is a security finding.
    pub departed: bool,
    /// The shadow is locked (or deactivated): it cannot be used.
    pub locked: bool,
}
