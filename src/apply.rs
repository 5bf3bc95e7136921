//! Executes a plan against the homeserver, action by action, recording each success in the
//! ledger together with its audit entry. A crash between the homeserver write and the ledger
//! write is safe: the next plan proposes the same action, and creating an account that
//! already exists adopts it.

pub mod rooms;

use std::sync::atomic::{AtomicBool, Ordering};

use futures::stream::{self, StreamExt};

use crate::clock::Clock;
use crate::homeserver::{Homeserver, HomeserverError, Rooms, UserChanges};
use crate::ledger::{AccountRecord, AuditEntry, Ledger, LedgerError, Origin};
use crate::plan::{Action, ActionKind, Plan};

/// What happened to one action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Done,
    /// A create that found the account already there and took it over.
    Adopted,
    Failed(String),
    /// Not tried: an earlier failure showed every request would fail (e.g. a bad token).
    NotTried,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyReport {
    pub applied: usize,
    pub adopted: usize,
    pub moved: usize,
    /// (mxid, action kind, error) of every action that failed.
    pub failed: Vec<(String, ActionKind, String)>,
    pub not_tried: usize,
    /// Why the rest of the plan was not tried, if it was cut short.
    pub aborted: Option<String>,
    /// The room part of the plan (run after the accounts).
    pub rooms: rooms::RoomReport,
}

/// Told how applying goes, e.g. to show progress.
pub trait Observer: Sync {
    fn started(&self, _total: usize) {}
    fn done(&self, _action: &Action, _outcome: &Outcome) {}
}

/// Observes nothing.
pub struct Silent;

impl Observer for Silent {}

/// Applies `plan` with at most `concurrency` actions in flight, telling `observer` of each. Only a ledger failure is an `Err`: the homeserver's
/// are counted in the report, and one failed action never stops the others.
pub async fn apply<H: Homeserver + Rooms>(
    plan: &Plan,
    homeserver: &H,
    ledger: &Ledger,
    clock: &dyn Clock,
    concurrency: usize,
    observer: &dyn Observer,
) -> Result<ApplyReport, LedgerError> {
    let mut report = ApplyReport::default();
    observer.started(plan.actions.len());
    for m in &plan.moves {
        if let Some(mut record) = ledger.account(&m.id)? {
            record.dn = m.to_dn.clone();
            record.updated_at = clock.now();
            let reason = format!("DN changed from {} to {}", m.from_dn, m.to_dn);
            ledger.record_account(
                &record,
                &audit(clock, &record.mxid, record.id.clone(), "move", reason, "ok"),
            )?;
            report.moved += 1;
        }
    }

    let stop = AtomicBool::new(false);
    let runner = &Runner {
        homeserver,
        ledger,
        clock,
        stop: &stop,
    };
    let mut results = stream::iter(&plan.actions)
        .map(|action| async move { (action, runner.run(action).await) })
        .buffer_unordered(concurrency.max(1));
    while let Some((action, outcome)) = results.next().await {
        let outcome = outcome?;
        match &outcome {
            Outcome::Done => report.applied += 1,
            Outcome::Adopted => {
                report.applied += 1;
                report.adopted += 1;
            }
            Outcome::Failed(error) => {
                report
                    .failed
                    .push((action.mxid().to_string(), action.kind(), error.clone()));
                if stop.load(Ordering::SeqCst) && report.aborted.is_none() {
                    report.aborted = Some(error.clone());
                }
            }
            Outcome::NotTried => report.not_tried += 1,
        }
        observer.done(action, &outcome);
    }
    if report.aborted.is_none() {
        report.rooms =
            rooms::apply_rooms(&plan.rooms, homeserver, ledger, clock, concurrency).await?;
    }
    ledger.flush()?;
    Ok(report)
}

struct Runner<'a, H> {
    homeserver: &'a H,
    ledger: &'a Ledger,
    clock: &'a dyn Clock,
    stop: &'a AtomicBool,
}

impl<H: Homeserver> Runner<'_, H> {
    async fn run(&self, action: &Action) -> Result<Outcome, LedgerError> {
        if self.stop.load(Ordering::SeqCst) {
            return Ok(Outcome::NotTried);
        }
        let result = match action {
            Action::CreateAccount { .. } => self.create(action).await,
            Action::UpdateAccount { .. } => self.update(action).await,
        };
        match result {
            Ok(outcome) => Ok(outcome),
            Err(StepError::Homeserver(e)) => {
                if e.is_auth() {
                    // Every further request would be refused the same way.
                    self.stop.store(true, Ordering::SeqCst);
                }
                tracing::warn!(mxid = action.mxid(), action = action.kind().name(), error = %e, "action failed");
                let entry = audit(
                    self.clock,
                    action.mxid(),
                    action.id().clone(),
                    action.kind().name(),
                    action.reason().into(),
                    &format!("error: {e}"),
                );
                self.ledger.record_audit(&entry)?;
                Ok(Outcome::Failed(e.to_string()))
            }
            Err(StepError::Ledger(e)) => Err(e),
        }
    }

    async fn create(&self, action: &Action) -> Result<Outcome, StepError> {
        let Action::CreateAccount {
            id,
            mxid,
            localpart,
            dn,
            display_name,
            emails,
            reason,
        } = action
        else {
            return Ok(Outcome::NotTried);
        };
        let existing = self.homeserver.get_user(mxid).await?;
        if existing.as_ref().is_some_and(|u| u.deactivated) {
            let e = HomeserverError::BadReply {
                method: "GET".into(),
                endpoint: format!("/_synapse/admin/v2/users/{mxid}"),
                message: "the account exists but is deactivated: not adopted; reactivate it or free the localpart".into(),
            };
            return Err(e.into());
        }
        let changes = UserChanges {
            displayname: Some(display_name.clone()),
            emails: Some(emails.clone()),
        };
        self.homeserver.upsert_user(mxid, &changes).await?;
        let (origin, outcome, kind) = match existing {
            Some(_) => (Origin::Adopted, Outcome::Adopted, "adopt_account"),
            None => (
                Origin::Created,
                Outcome::Done,
                ActionKind::CreateAccount.name(),
            ),
        };
        let now = self.clock.now();
        let record = AccountRecord {
            id: id.clone(),
            mxid: mxid.clone(),
            localpart: localpart.clone(),
            dn: dn.clone(),
            display_name: display_name.clone(),
            emails: emails.clone(),
            origin,
            created_at: now,
            updated_at: now,
        };
        self.ledger.record_account(
            &record,
            &audit(self.clock, mxid, id.clone(), kind, reason.clone(), "ok"),
        )?;
        tracing::info!(%mxid, action = kind, %reason, "applied");
        Ok(outcome)
    }

    async fn update(&self, action: &Action) -> Result<Outcome, StepError> {
        let Action::UpdateAccount {
            id,
            mxid,
            display_name,
            emails,
            reason,
            ..
        } = action
        else {
            return Ok(Outcome::NotTried);
        };
        let Some(mut record) = self.ledger.account(id)? else {
            return Err(LedgerError::Corrupt(format!(
                "{mxid} is planned for an update but is not in the ledger"
            ))
            .into());
        };
        let changes = UserChanges {
            displayname: display_name.as_ref().map(|c| c.to.clone()),
            emails: emails.as_ref().map(|c| c.to.clone()),
        };
        self.homeserver.upsert_user(mxid, &changes).await?;
        if let Some(c) = display_name {
            record.display_name = c.to.clone();
        }
        if let Some(c) = emails {
            record.emails = c.to.clone();
        }
        record.updated_at = self.clock.now();
        let kind = ActionKind::UpdateAccount.name();
        self.ledger.record_account(
            &record,
            &audit(self.clock, mxid, id.clone(), kind, reason.clone(), "ok"),
        )?;
        tracing::info!(%mxid, action = kind, %reason, "applied");
        Ok(Outcome::Done)
    }
}

/// Why one action stopped: the homeserver refused (the action fails, the run goes on) or the
/// ledger could not record (the run stops).
enum StepError {
    Homeserver(HomeserverError),
    Ledger(LedgerError),
}

impl From<HomeserverError> for StepError {
    fn from(e: HomeserverError) -> Self {
        StepError::Homeserver(e)
    }
}

impl From<LedgerError> for StepError {
    fn from(e: LedgerError) -> Self {
        StepError::Ledger(e)
    }
}

fn audit(
    clock: &dyn Clock,
    mxid: &str,
    id: crate::directory::StableId,
    action: &str,
    reason: String,
    result: &str,
) -> AuditEntry {
    AuditEntry {
        at: clock.now(),
        mxid: mxid.to_string(),
        id,
        action: action.to_string(),
        reason,
        result: result.to_string(),
    }
}
