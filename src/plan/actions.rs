//! The actions a plan is made of.

use serde::Serialize;

use crate::config::ReversibleStep;
use crate::directory::StableId;
use crate::homeserver::ExternalId;

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
    /// Create the account with this profile; or, with `adopt`, take over the existing account
    /// of that mxid, which provably is the agent's (or the admin opted in), and set it.
    CreateAccount {
        id: StableId,
        mxid: String,
        localpart: String,
        dn: String,
        display_name: String,
        emails: Vec<String>,
        /// Why the existing account is the agent's; `None`: the account is to be made.
        #[serde(skip_serializing_if = "Option::is_none")]
        adopt: Option<String>,
        /// The account exists because the daemon began creating it in a run that died
        /// before recording it (its creation intent is in the ledger): finish the creation.
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        resumed: bool,
        /// SSO ids, so that the agent's first SSO login finds this account.
        #[serde(skip_serializing_if = "Vec::is_empty")]
        external_ids: Vec<ExternalId>,
        reason: String,
    },
    /// Deactivated, and back in the directory: reactivate the same account and restore its
    /// profile (the homeserver dropped its e-mails).
    ReactivateAccount {
        id: StableId,
        mxid: String,
        display_name: String,
        emails: Vec<String>,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        external_ids: Vec<ExternalId>,
        reason: String,
    },
    /// Suspended or locked, and back in the directory: undo that step.
    ReinstateAccount {
        id: StableId,
        mxid: String,
        step: ReversibleStep,
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
        #[serde(skip_serializing_if = "Option::is_none")]
        external_ids: Option<Change<Vec<ExternalId>>>,
        reason: String,
    },
    /// The agent left: the reversible step (suspend or lock); the grace period starts.
    DepartAccount {
        id: StableId,
        mxid: String,
        step: ReversibleStep,
        reason: String,
    },
    /// The grace period is over (or there is none): deactivate.
    DeactivateAccount {
        id: StableId,
        mxid: String,
        reason: String,
    },
    /// An account the daemon does not manage that the departed agent `id` can still log in
    /// to (`[login] shadow_accounts = "lock"`): lock it. No ledger record is made for it.
    LockShadow {
        id: StableId,
        mxid: String,
        reason: String,
    },
}

/// Action kinds, in the order a plan runs them: what restores access first, what takes it
/// away last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionKind {
    CreateAccount,
    AdoptAccount,
    ReactivateAccount,
    ReinstateAccount,
    UpdateAccount,
    SuspendAccount,
    LockAccount,
    DeactivateAccount,
    LockShadow,
}

impl ActionKind {
    pub const ALL: [ActionKind; 9] = [
        ActionKind::CreateAccount,
        ActionKind::AdoptAccount,
        ActionKind::ReactivateAccount,
        ActionKind::ReinstateAccount,
        ActionKind::UpdateAccount,
        ActionKind::SuspendAccount,
        ActionKind::LockAccount,
        ActionKind::DeactivateAccount,
        ActionKind::LockShadow,
    ];

    /// The name used in the audit trail, logs, JSON and metrics.
    pub fn name(self) -> &'static str {
        match self {
            ActionKind::CreateAccount => "create_account",
            ActionKind::AdoptAccount => "adopt_account",
            ActionKind::ReactivateAccount => "reactivate_account",
            ActionKind::ReinstateAccount => "reinstate_account",
            ActionKind::UpdateAccount => "update_account",
            ActionKind::SuspendAccount => "suspend_account",
            ActionKind::LockAccount => "lock_account",
            ActionKind::DeactivateAccount => "deactivate_account",
            ActionKind::LockShadow => "lock_shadow",
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            ActionKind::CreateAccount => "Create account",
            ActionKind::AdoptAccount => "Adopt existing account",
            ActionKind::ReactivateAccount => "Reactivate account",
            ActionKind::ReinstateAccount => "Reinstate account (undo suspend/lock)",
            ActionKind::UpdateAccount => "Update account",
            ActionKind::SuspendAccount => "Suspend account",
            ActionKind::LockAccount => "Lock account",
            ActionKind::DeactivateAccount => "Deactivate account",
            ActionKind::LockShadow => "Lock a departed agent's shadow account",
        }
    }

    /// Takes access away: counted by the brake.
    pub fn is_departure(self) -> bool {
        matches!(
            self,
            ActionKind::SuspendAccount
                | ActionKind::LockAccount
                | ActionKind::DeactivateAccount
                | ActionKind::LockShadow
        )
    }
}

impl Action {
    pub fn kind(&self) -> ActionKind {
        match self {
            Action::CreateAccount { adopt: None, .. } => ActionKind::CreateAccount,
            Action::CreateAccount { adopt: Some(_), .. } => ActionKind::AdoptAccount,
            Action::ReactivateAccount { .. } => ActionKind::ReactivateAccount,
            Action::ReinstateAccount { .. } => ActionKind::ReinstateAccount,
            Action::UpdateAccount { .. } => ActionKind::UpdateAccount,
            Action::DepartAccount {
                step: ReversibleStep::Suspend,
                ..
            } => ActionKind::SuspendAccount,
            Action::DepartAccount {
                step: ReversibleStep::Lock,
                ..
            } => ActionKind::LockAccount,
            Action::DeactivateAccount { .. } => ActionKind::DeactivateAccount,
            Action::LockShadow { .. } => ActionKind::LockShadow,
        }
    }

    pub fn mxid(&self) -> &str {
        match self {
            Action::CreateAccount { mxid, .. }
            | Action::ReactivateAccount { mxid, .. }
            | Action::ReinstateAccount { mxid, .. }
            | Action::UpdateAccount { mxid, .. }
            | Action::DepartAccount { mxid, .. }
            | Action::DeactivateAccount { mxid, .. }
            | Action::LockShadow { mxid, .. } => mxid,
        }
    }

    pub fn id(&self) -> &StableId {
        match self {
            Action::CreateAccount { id, .. }
            | Action::ReactivateAccount { id, .. }
            | Action::ReinstateAccount { id, .. }
            | Action::UpdateAccount { id, .. }
            | Action::DepartAccount { id, .. }
            | Action::DeactivateAccount { id, .. }
            | Action::LockShadow { id, .. } => id,
        }
    }

    pub fn reason(&self) -> &str {
        match self {
            Action::CreateAccount { reason, .. }
            | Action::ReactivateAccount { reason, .. }
            | Action::ReinstateAccount { reason, .. }
            | Action::UpdateAccount { reason, .. }
            | Action::DepartAccount { reason, .. }
            | Action::DeactivateAccount { reason, .. }
            | Action::LockShadow { reason, .. } => reason,
        }
    }
}
