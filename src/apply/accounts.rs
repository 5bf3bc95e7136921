//! One account action: the homeserver calls, then the ledger record with its audit entry.

use std::sync::atomic::{AtomicBool, Ordering};

use super::existing::Existing;
use super::journal;
use super::{audit, Options, Outcome, StepError};
use crate::clock::Clock;
use crate::config::ReversibleStep;
use crate::homeserver::{ExternalId, Halt, Homeserver, HomeserverError, Upserted, UserChanges};
use crate::ledger::{AccountRecord, AccountStatus, Held, HeldAgent, Ledger, LedgerError, Origin};
use crate::plan::{wanted_digest, Action, ActionKind};

pub(super) struct Runner<'a, H> {
    pub(super) homeserver: &'a H,
    pub(super) ledger: &'a Ledger,
    pub(super) clock: &'a dyn Clock,
    pub(super) options: &'a Options,
    pub(super) stop: &'a AtomicBool,
    pub(super) existing: &'a Existing,
}

impl<H: Homeserver> Runner<'_, H> {
    pub(super) async fn run(&self, action: &Action) -> Result<Outcome, LedgerError> {
        if self.stop.load(Ordering::SeqCst) {
            return self.not_sent(action);
        }
        let result = match action {
            Action::CreateAccount { .. } => self.create(action).await,
            Action::ReactivateAccount { .. } => self.reactivate(action).await,
            Action::ReinstateAccount { step, .. } => self.reinstate(action, *step).await,
            Action::UpdateAccount { .. } => self.update(action).await,
            Action::DepartAccount { step, .. } => self.depart(action, *step).await,
            Action::DeactivateAccount { .. } => self.deactivate(action).await,
            Action::LockShadow { .. } => self.lock_shadow(action).await,
        };
        match result {
            Ok(outcome) => Ok(outcome),
            Err(StepError::Homeserver(e)) if e.is_refusal() => self.refused(action, &e),
            Err(StepError::Homeserver(HomeserverError::Halted { halt, unanswered })) => {
                self.halted(action, &halt, unanswered)
            }
            Err(StepError::Conflict(reason)) => self.conflict(action, reason),
            Err(StepError::Homeserver(e)) => {
                if e.is_auth() {
                    // Every further request would be refused the same way.
                    self.stop.store(true, Ordering::SeqCst);
                }
                tracing::warn!(mxid = action.mxid(), action = action.kind().name(), error = %e, "action failed");
                self.audit_action(action, &format!("error: {e}"))?;
                Ok(Outcome::Failed(e.to_string()))
            }
            Err(StepError::Ledger(e)) => Err(e),
        }
    }

    /// The action is not sent: its journal entry ends here.
    pub(super) fn not_sent(&self, action: &Action) -> Result<Outcome, LedgerError> {
        self.end_intent(action)?;
        Ok(Outcome::NotTried)
    }

    /// Ends the journal entry of `action` (nothing was written, or its result is recorded).
    fn end_intent(&self, action: &Action) -> Result<(), LedgerError> {
        self.ledger
            .clear_intent(&journal::account_intent(action, 0).key())
    }

    /// An audit entry for `action` with `result`, that changes no account record.
    fn audit_action(&self, action: &Action, result: &str) -> Result<(), LedgerError> {
        let entry = audit(
            self.clock,
            action.mxid(),
            action.id(),
            action.kind().name(),
            action.reason().into(),
            result,
        );
        self.ledger.record_audit(&entry)
    }

    /// The client stopped sending (the homeserver is not answering, or the deadline passed):
    /// the action is left for the next run, and so are those after it. One sent without an
    /// answer is in the audit trail (the homeserver may have done it; the next plan sees).
    fn halted(
        &self,
        action: &Action,
        halt: &Halt,
        unanswered: Option<String>,
    ) -> Result<Outcome, LedgerError> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(request) = unanswered {
            self.audit_action(action, &format!("interrupted: {request}; {halt}"))?;
            // Sent without an answer: the journal keeps it, for the next run to resolve.
            return Ok(Outcome::NotTried);
        }
        self.not_sent(action)
    }

    /// The homeserver refused this action for good: the agent is held (not asked again until
    /// it changes or the retry delay passes); the run goes on.
    fn refused(&self, action: &Action, error: &HomeserverError) -> Result<Outcome, LedgerError> {
        tracing::warn!(mxid = action.mxid(), action = action.kind().name(), %error, "refused by the homeserver; not tried again until the agent changes or homeserver.retry_refused_after has passed");
        let now = self.clock.now();
        self.ledger.hold(&HeldAgent {
            id: action.id().clone(),
            mxid: action.mxid().to_string(),
            dn: self.dn_of(action)?,
            since: now,
            at: now,
            why: Held::Refused {
                action: action.kind().name().to_string(),
                wanted: wanted_digest(action),
                error: error.to_string(),
            },
        })?;
        self.audit_action(action, &format!("refused: {error}"))?;
        self.end_intent(action)?;
        Ok(Outcome::Refused(error.to_string()))
    }

    /// An account appeared on the homeserver with the agent's mxid after the plan was made:
    /// left alone, and the agent held as a conflict.
    fn conflict(&self, action: &Action, reason: String) -> Result<Outcome, LedgerError> {
        tracing::warn!(dn = %self.dn_of(action)?, mxid = action.mxid(), %reason, "conflict: not taken over");
        let now = self.clock.now();
        self.ledger.hold(&HeldAgent {
            id: action.id().clone(),
            mxid: action.mxid().to_string(),
            dn: self.dn_of(action)?,
            since: now,
            at: now,
            why: Held::Conflict {
                reason: reason.clone(),
            },
        })?;
        self.end_intent(action)?;
        Ok(Outcome::Conflict(reason))
    }

    /// The DN of the agent `action` is about (from the action, or else the ledger).
    fn dn_of(&self, action: &Action) -> Result<String, LedgerError> {
        if let Action::CreateAccount { dn, .. } | Action::UpdateAccount { dn, .. } = action {
            return Ok(dn.clone());
        }
        Ok(self
            .ledger
            .account(action.id())?
            .map(|r| r.dn)
            .unwrap_or_default())
    }

    /// Records the account as it now is, with the action's audit entry.
    /// Its journal entry is cleared in the same write.
    fn record(
        &self,
        record: &mut AccountRecord,
        action: &Action,
        kind: &str,
        reason: &str,
    ) -> Result<(), StepError> {
        super::crash::after_homeserver_write();
        record.updated_at = self.clock.now();
        let entry = audit(
            self.clock,
            &record.mxid,
            &record.id,
            kind,
            reason.to_string(),
            "ok",
        );
        let intent = journal::account_intent(action, 0).key();
        self.ledger
            .record_account_clearing(record, &entry, Some(&intent))?;
        self.ledger.release(&record.id)?;
        tracing::info!(mxid = %record.mxid, action = kind, %reason, "applied");
        Ok(())
    }

    fn managed(&self, action: &Action) -> Result<AccountRecord, StepError> {
        self.ledger.account(action.id())?.ok_or_else(|| {
            StepError::Ledger(LedgerError::Corrupt(format!(
                "{} is planned for {} but is not in the ledger",
                action.mxid(),
                action.kind().name()
            )))
        })
    }

    async fn create(&self, action: &Action) -> Result<Outcome, StepError> {
        let Action::CreateAccount {
            mxid,
            display_name,
            emails,
            adopt,
            resumed,
            external_ids,
            reason,
            ..
        } = action
        else {
            return Ok(Outcome::NotTried);
        };
        if adopt.is_none() && !resumed {
            // The plan saw no account there; one made since (by hand, by a login) is not the
            // daemon's to take.
            if let Some(deactivated) = self.existing.of(self.homeserver, action).await? {
                return Err(StepError::Conflict(format!(
                    "an account with this mxid appeared on the homeserver after the plan was made{}: not taken over",
                    if deactivated { " (deactivated)" } else { "" }
                )));
            }
        }
        // Without external ids to set, an adopted account keeps whatever it has.
        let exists = adopt.is_some() || *resumed;
        let external_ids = match (external_ids.is_empty(), exists) {
            (true, _) => None,
            (false, false) => Some(external_ids.clone()),
            (false, true) => Some(self.external_ids_for(mxid, external_ids, &[]).await?),
        };
        let changes = UserChanges {
            displayname: Some(display_name.clone()),
            emails: Some(emails.clone()),
            external_ids,
        };
        let upserted = self.upsert(mxid, &changes).await?;
        if adopt.is_none() && upserted == Upserted::Updated {
            // Made in the moment between the check and the write: too late not to set it.
            tracing::warn!(%mxid, "the account was made on the homeserver while the daemon created it; recorded as adopted");
        }
        let adopted = adopt.is_some() || (upserted == Upserted::Updated && !resumed);
        let (origin, outcome, kind) = if adopted {
            (
                Origin::Adopted,
                Outcome::Adopted,
                ActionKind::AdoptAccount.name(),
            )
        } else {
            (
                Origin::Created,
                Outcome::Done,
                ActionKind::CreateAccount.name(),
            )
        };
        let Some(mut record) = new_account_record(action, origin, self.clock.now()) else {
            return Ok(Outcome::NotTried);
        };
        self.record(&mut record, action, kind, reason)?;
        Ok(outcome)
    }

    async fn update(&self, action: &Action) -> Result<Outcome, StepError> {
        let Action::UpdateAccount {
            mxid,
            display_name,
            emails,
            external_ids,
            reason,
            ..
        } = action
        else {
            return Ok(Outcome::NotTried);
        };
        let mut record = self.managed(action)?;
        let ids = match external_ids {
            Some(c) => Some(self.external_ids_for(mxid, &c.to, &c.from).await?),
            None => None,
        };
        let changes = UserChanges {
            displayname: display_name.as_ref().map(|c| c.to.clone()),
            emails: emails.as_ref().map(|c| c.to.clone()),
            external_ids: ids,
        };
        self.upsert(mxid, &changes).await?;
        if let Some(c) = display_name {
            record.display_name = c.to.clone();
        }
        if let Some(c) = emails {
            record.emails = c.to.clone();
        }
        if let Some(c) = external_ids {
            record.external_ids = c.to.clone();
        }
        self.record(
            &mut record,
            action,
            ActionKind::UpdateAccount.name(),
            reason,
        )?;
        Ok(Outcome::Done)
    }

    async fn reactivate(&self, action: &Action) -> Result<Outcome, StepError> {
        let Action::ReactivateAccount {
            mxid,
            display_name,
            emails,
            external_ids,
            reason,
            ..
        } = action
        else {
            return Ok(Outcome::NotTried);
        };
        let mut record = self.managed(action)?;
        self.homeserver.reactivate(mxid).await?;
        // A lock or a suspension outlives deactivation on Synapse: lift both.
        self.homeserver.set_locked(mxid, false).await?;
        self.homeserver.set_suspended(mxid, false).await?;
        // Deactivation dropped the e-mails: restore the whole profile. (Synapse keeps external
        // ids through it; they are set again only if the directory changed them meanwhile.)
        let ids = if *external_ids == record.external_ids {
            None
        } else {
            Some(
                self.external_ids_for(mxid, external_ids, &record.external_ids)
                    .await?,
            )
        };
        let changes = UserChanges {
            displayname: Some(display_name.clone()),
            emails: Some(emails.clone()),
            external_ids: ids,
        };
        self.upsert(mxid, &changes).await?;
        record.display_name = display_name.clone();
        record.emails = emails.clone();
        record.external_ids = external_ids.clone();
        record.status = AccountStatus::Active;
        self.record(
            &mut record,
            action,
            ActionKind::ReactivateAccount.name(),
            reason,
        )?;
        Ok(Outcome::Done)
    }

    async fn reinstate(&self, action: &Action, step: ReversibleStep) -> Result<Outcome, StepError> {
        let mut record = self.managed(action)?;
        match step {
            ReversibleStep::Suspend => self.homeserver.set_suspended(action.mxid(), false).await?,
            ReversibleStep::Lock => self.homeserver.set_locked(action.mxid(), false).await?,
        }
        record.status = AccountStatus::Active;
        self.record(
            &mut record,
            action,
            ActionKind::ReinstateAccount.name(),
            action.reason(),
        )?;
        Ok(Outcome::Done)
    }

    async fn depart(&self, action: &Action, step: ReversibleStep) -> Result<Outcome, StepError> {
        let mut record = self.managed(action)?;
        let mxid = action.mxid();
        self.refuse_server_admin(mxid).await?;
        match step {
            ReversibleStep::Suspend => self.homeserver.set_suspended(mxid, true).await?,
            ReversibleStep::Lock => self.homeserver.set_locked(mxid, true).await?,
        }
        if self.options.departures.logout_devices {
            let n = self.homeserver.logout_devices(mxid).await?;
            tracing::info!(%mxid, devices = n, "logged out");
        }
        record.status = AccountStatus::Departing {
            since: self.clock.now(),
            reason: action.reason().to_string(),
            step,
        };
        self.record(&mut record, action, action.kind().name(), action.reason())?;
        Ok(Outcome::Done)
    }

    async fn deactivate(&self, action: &Action) -> Result<Outcome, StepError> {
        let mut record = self.managed(action)?;
        let mxid = action.mxid();
        self.refuse_server_admin(mxid).await?;
        self.homeserver
            .deactivate(mxid, self.options.departures.erase)
            .await?;
        record.status = AccountStatus::Deactivated {
            at: self.clock.now(),
            reason: action.reason().to_string(),
        };
        self.record(
            &mut record,
            action,
            ActionKind::DeactivateAccount.name(),
            action.reason(),
        )?;
        Ok(Outcome::Done)
    }

    /// [`Homeserver::upsert_user`], with a refused external id explained: Synapse says only
    /// that it is in use, not by whom.
    async fn upsert(&self, mxid: &str, changes: &UserChanges) -> Result<Upserted, StepError> {
        let error = match self.homeserver.upsert_user(mxid, changes).await {
            Ok(upserted) => return Ok(upserted),
            Err(e) => e,
        };
        let conflict = matches!(error, HomeserverError::Status { status: 409, .. });
        let Some(ids) = changes.external_ids.as_ref().filter(|_| conflict) else {
            return Err(error.into());
        };
        for id in ids {
            if let Ok(Some(holder)) = self.homeserver.user_by_external_id(id).await {
                if holder != mxid {
                    return Err(refused(
                        mxid,
                        &format!(
                            "external id {id} is already {holder}'s (an account an SSO login \
                             made before the sync?): it cannot be {mxid}'s too ({error})"
                        ),
                    )
                    .into());
                }
            }
        }
        Err(error.into())
    }

    /// Every external id the account should hold after a write that sets `ours`: Synapse
    /// replaces the whole list, so the account's ids from other providers (neither in `ours`
    /// nor in `before`, what the daemon set last time) are read and kept.
    async fn external_ids_for(
        &self,
        mxid: &str,
        ours: &[ExternalId],
        before: &[ExternalId],
    ) -> Result<Vec<ExternalId>, StepError> {
        let current = match self.homeserver.get_user(mxid).await? {
            Some(user) => user.external_ids,
            None => Vec::new(),
        };
        Ok(merge_external_ids(current, ours, before))
    }

    /// Locks an account the daemon does not manage (a departed agent's shadow): the audit
    /// trail records it; no account record is made.
    async fn lock_shadow(&self, action: &Action) -> Result<Outcome, StepError> {
        let mxid = action.mxid();
        self.refuse_server_admin(mxid).await?;
        self.homeserver.set_locked(mxid, true).await?;
        super::crash::after_homeserver_write();
        self.audit_action(action, "ok")?;
        self.end_intent(action)?;
        tracing::warn!(%mxid, reason = action.reason(), "locked a departed agent's shadow account");
        Ok(Outcome::Done)
    }

    /// A server admin is never taken away by a sync, whatever the directory says.
    async fn refuse_server_admin(&self, mxid: &str) -> Result<(), StepError> {
        match self.homeserver.get_user(mxid).await? {
            Some(user) if user.admin => Err(refused(
                mxid,
                "a homeserver admin: never suspended, locked or deactivated by a sync",
            )
            .into()),
            _ => Ok(()),
        }
    }
}

/// The ledger record of the account a `CreateAccount` action made (or adopted) at `now`;
/// `None` for any other action.
pub fn new_account_record(action: &Action, origin: Origin, now: i64) -> Option<AccountRecord> {
    let Action::CreateAccount {
        id,
        mxid,
        localpart,
        dn,
        display_name,
        emails,
        external_ids,
        ..
    } = action
    else {
        return None;
    };
    Some(AccountRecord {
        id: id.clone(),
        mxid: mxid.clone(),
        localpart: localpart.clone(),
        dn: dn.clone(),
        display_name: display_name.clone(),
        emails: emails.clone(),
        external_ids: external_ids.clone(),
        origin,
        created_at: now,
        updated_at: now,
        status: AccountStatus::Active,
    })
}

/// `ours`, and the ids of `current` from providers that neither `ours` nor `before` name;
/// sorted, without duplicates.
fn merge_external_ids(
    current: Vec<ExternalId>,
    ours: &[ExternalId],
    before: &[ExternalId],
) -> Vec<ExternalId> {
    let managed = |id: &ExternalId| {
        ours.iter()
            .chain(before)
            .any(|m| m.auth_provider == id.auth_provider)
    };
    let mut all: Vec<ExternalId> = current
        .into_iter()
        .filter(|id| !managed(id))
        .chain(ours.iter().cloned())
        .collect();
    all.sort();
    all.dedup();
    all
}

fn refused(mxid: &str, why: &str) -> HomeserverError {
    HomeserverError::BadReply {
        method: "GET".into(),
        endpoint: format!("/_synapse/admin/v2/users/{mxid}"),
        message: why.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(provider: &str, value: &str) -> ExternalId {
        ExternalId {
            auth_provider: provider.into(),
            external_id: value.into(),
        }
    }

    #[test]
    fn external_ids_of_other_providers_are_kept() {
        let cases = [
            // A new id for the provider: the old one goes, the CAS one stays.
            (
                vec![id("cas", "jm"), id("oidc-a", "old")],
                vec![id("oidc-a", "new")],
                vec![id("oidc-a", "old")],
                vec![id("cas", "jm"), id("oidc-a", "new")],
            ),
            // The provider renamed in the mapping: both names are the daemon's.
            (
                vec![id("oidc-a", "x"), id("saml", "y")],
                vec![id("oidc-b", "x")],
                vec![id("oidc-a", "x")],
                vec![id("oidc-b", "x"), id("saml", "y")],
            ),
            // No id any more: the daemon's goes, nothing else.
            (
                vec![id("oidc-a", "x"), id("saml", "y")],
                vec![],
                vec![id("oidc-a", "x")],
                vec![id("saml", "y")],
            ),
            // Already there.
            (
                vec![id("oidc-a", "x")],
                vec![id("oidc-a", "x")],
                vec![],
                vec![id("oidc-a", "x")],
            ),
        ];
        for (i, (current, ours, before, want)) in cases.into_iter().enumerate() {
            assert_eq!(
                merge_external_ids(current, &ours, &before),
                want,
                "case {i}"
            );
        }
    }
}
