//! Executes a plan against the homeserver, recording each success in the ledger together with
//! its audit entry. A crash between the homeserver write and the ledger write is safe: the
//! next plan proposes the same action again, and each action is harmless to repeat (creating
//! an account that exists adopts it; suspending a suspended account changes nothing).
//!
//! Actions run kind by kind in plan order (access restored before access taken away), with
//! bounded concurrency within a kind. One account has at most one action of each kind, so no
//! two actions in flight touch the same ledger record.

mod accounts;
pub mod crash;
mod existing;
pub mod journal;
pub mod rooms;

pub use accounts::new_account_record;

use std::sync::atomic::{AtomicBool, Ordering};

use futures::stream::{self, StreamExt};

use crate::clock::Clock;
use crate::config::DeparturesConfig;
use crate::homeserver::{Halt, Homeserver, HomeserverError, Rooms};
use crate::ledger::{AuditEntry, Ledger, LedgerError};
use crate::plan::{Action, ActionKind, Plan};

/// What happened to one action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Done,
    /// A create that found the account already there and took it over.
    Adopted,
    Failed(String),
    /// The homeserver refused it for good (a 4xx other than 401/403/408/429): the agent is
    /// held, the run goes on and is not failed by it.
    Refused(String),
    /// The account appeared on the homeserver after the plan was made: left alone.
    Conflict(String),
    /// Not tried: an earlier failure showed every request would fail (e.g. a bad token), the
    /// homeserver stopped answering, or the run reached its deadline. The next run does it.
    NotTried,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyReport {
    pub applied: usize,
    pub adopted: usize,
    pub moved: usize,
    /// (mxid, action kind, error) of every action that failed.
    pub failed: Vec<(String, ActionKind, String)>,
    /// (mxid, action kind, error) of every action the homeserver refused for good.
    pub refused: Vec<(String, ActionKind, String)>,
    /// (mxid, why) of every creation left alone because the account appeared meanwhile.
    pub conflicts: Vec<(String, String)>,
    pub not_tried: usize,
    /// Why the rest of the plan was not tried, if it was cut short.
    pub aborted: Option<String>,
    /// Set when it was cut short because the homeserver client stopped sending: the breaker
    /// opened (the homeserver is not answering) or the run reached its deadline.
    pub halted: Option<Halt>,
    /// The room part of the plan (run after the accounts).
    pub rooms: rooms::RoomReport,
}

/// Told how applying goes, e.g. to show progress.
pub trait Observer: Sync {
    fn started(&self, _total: usize) {}
    fn done(&self, _action: &Action, _outcome: &Outcome) {}
    /// Asked before each action starts: `true` leaves the rest of the plan not tried (actions
    /// in flight finish and are recorded). The daemon's graceful shutdown uses it.
    fn should_stop(&self) -> bool {
        false
    }
}

/// Observes nothing.
pub struct Silent;

impl Observer for Silent {}

/// How to apply.
#[derive(Debug, Clone)]
pub struct Options {
    /// Most actions in flight at once.
    pub concurrency: usize,
    pub departures: DeparturesConfig,
}

/// Applies `plan`, telling `observer` of each action. Only a ledger failure is an `Err`: the
/// homeserver's are counted in the report, and one failed action never stops the others.
pub async fn apply<H: Homeserver + Rooms>(
    plan: &Plan,
    homeserver: &H,
    ledger: &Ledger,
    clock: &dyn Clock,
    options: &Options,
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
                &audit(clock, &record.mxid, &record.id, "move", reason, "ok"),
            )?;
            report.moved += 1;
        }
    }

    let stop = AtomicBool::new(false);
    let existing = existing::Existing::read(plan, homeserver).await;
    let runner = &accounts::Runner {
        homeserver,
        ledger,
        clock,
        options,
        stop: &stop,
        existing: &existing,
    };
    for kind in ActionKind::ALL {
        // Journaled before any of them is sent: a run that dies with writes in flight leaves
        // a note of each, resolved by the next run (see `journal`).
        let intents: Vec<_> = plan
            .actions
            .iter()
            .filter(|a| a.kind() == kind)
            .map(|a| journal::account_intent(a, clock.now()))
            .collect();
        ledger.intend(&intents)?;
        let mut results = stream::iter(plan.actions.iter().filter(|a| a.kind() == kind))
            .map(|action| async move {
                if observer.should_stop() {
                    return (action, runner.not_sent(action));
                }
                (action, runner.run(action).await)
            })
            .buffer_unordered(options.concurrency.max(1));
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
                Outcome::Refused(error) => {
                    report
                        .refused
                        .push((action.mxid().to_string(), action.kind(), error.clone()));
                }
                Outcome::Conflict(why) => {
                    report
                        .conflicts
                        .push((action.mxid().to_string(), why.clone()));
                }
                Outcome::NotTried => {
                    report.not_tried += 1;
                    if report.aborted.is_none() {
                        report.note_halt(homeserver);
                    }
                    if report.aborted.is_none() && observer.should_stop() {
                        report.aborted = Some("stopped: the daemon is shutting down".into());
                    }
                }
            }
            observer.done(action, &outcome);
        }
    }
    if report.aborted.is_none() {
        // Accounts that were to be made and were not: nobody to put in rooms.
        let absent: std::collections::HashSet<&str> = plan
            .actions
            .iter()
            .filter(|a| matches!(a, Action::CreateAccount { .. }))
            .map(Action::mxid)
            .filter(|mxid| {
                report.failed.iter().any(|(m, ..)| m == mxid)
                    || report.refused.iter().any(|(m, ..)| m == mxid)
                    || report.conflicts.iter().any(|(m, _)| m == mxid)
            })
            .collect();
        report.rooms = rooms::apply_rooms(
            &plan.rooms,
            homeserver,
            ledger,
            clock,
            options.concurrency,
            &absent,
        )
        .await?;
        report.note_halt(homeserver);
    } else {
        report.rooms.not_tried = plan.rooms.actions.len();
    }
    ledger.flush()?;
    Ok(report)
}

impl ApplyReport {
    /// Every action left for the next run, accounts and rooms.
    pub fn not_tried_total(&self) -> usize {
        self.not_tried + self.rooms.not_tried
    }

    /// Takes in that the homeserver client stopped sending, if it did.
    fn note_halt<H: Homeserver>(&mut self, homeserver: &H) {
        if let Some(halt) = homeserver.breaker().halted() {
            self.aborted.get_or_insert_with(|| halt.to_string());
            self.halted.get_or_insert(halt);
        }
    }
}

/// Why one action stopped: the homeserver refused (the action fails, the run goes on) or the
/// ledger could not record (the run stops).
enum StepError {
    Homeserver(HomeserverError),
    Ledger(LedgerError),
    /// The account is not the daemon's to write (why).
    Conflict(String),
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
    id: &crate::directory::StableId,
    action: &str,
    reason: String,
    result: &str,
) -> AuditEntry {
    AuditEntry {
        at: clock.now(),
        mxid: mxid.to_string(),
        id: id.clone(),
        action: action.to_string(),
        reason,
        result: result.to_string(),
    }
}
