//! Departures: an agent who left gets the reversible step (suspend or lock), then, once the
//! grace period is over, deactivation. Protected accounts get neither.

use wildmatch::WildMatch;

use super::{Action, Pending, Plan, Policy, Protected};
use crate::clock::format_time;
use crate::ledger::{AccountRecord, AccountStatus};

pub(super) struct Lifecycle<'a> {
    policy: &'a Policy,
    protected: Vec<WildMatch>,
}

impl<'a> Lifecycle<'a> {
    pub(super) fn new(policy: &'a Policy) -> Self {
        let protected = policy.protected.iter().map(|p| WildMatch::new(p)).collect();
        Lifecycle { policy, protected }
    }

    fn is_protected(&self, mxid: &str) -> bool {
        self.protected.iter().any(|p| p.matches(mxid))
    }

    /// Plans what a departure means for `record` now; the grace period runs from the reversible
    /// step. Returns true when nothing needs doing.
    pub(super) fn departed(&self, plan: &mut Plan, record: &AccountRecord, reason: &str) -> bool {
        let mxid = record.mxid.clone();
        let id = record.id.clone();
        let action = match &record.status {
            AccountStatus::Deactivated { .. } => return true,
            AccountStatus::Active if self.policy.grace <= 0 => Action::DeactivateAccount {
                id,
                mxid,
                reason: format!("departed: {reason}; no grace period"),
            },
            AccountStatus::Active => Action::DepartAccount {
                id,
                mxid,
                step: self.policy.step,
                reason: format!("departed: {reason}"),
            },
            AccountStatus::Departing {
                since: stepped_at,
                reason: first_reason,
                ..
            } => {
                let due = stepped_at.saturating_add(self.policy.grace);
                let grace = humantime::format_duration(std::time::Duration::from_secs(
                    self.policy.grace.max(0) as u64,
                ));
                if self.policy.now < due {
                    plan.pending.push(Pending {
                        mxid,
                        at: due,
                        what: format!("deactivation ({first_reason}; grace {grace})"),
                    });
                    return true;
                }
                Action::DeactivateAccount {
                    id,
                    mxid,
                    reason: format!(
                        "{first_reason}, since {}; grace {grace} ended",
                        format_time(*stepped_at)
                    ),
                }
            }
        };
        if self.is_protected(action.mxid()) {
            plan.protected.push(Protected {
                mxid: action.mxid().to_string(),
                reason: action.reason().to_string(),
            });
            return false;
        }
        plan.actions.push(action);
        false
    }
}
