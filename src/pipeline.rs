//! One sync run, shared by `plan` (stops before applying) and `sync`: directory → snapshot →
//! mapping → plan (against the ledger, and the rooms as the homeserver has them) → brake →
//! apply.

mod observe;

pub use observe::observe_rooms;

use crate::apply::{self, ApplyReport, Observer};
use crate::brake;
use crate::clock::Clock;
use crate::config::Config;
use crate::directory::{self, AgentQuery, DirectoryError};
use crate::homeserver::{Homeserver, HomeserverError, Rooms, SynapseClient};
use crate::ledger::{LastGood, Ledger, LedgerError, LedgerView, RunRecord};
use crate::mapping::{self, Desired, Rules};
use crate::plan::{self, Plan, Policy};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("directory: {0}")]
    Directory(#[from] DirectoryError),
    #[error("ledger: {0}")]
    Ledger(#[from] LedgerError),
    #[error("homeserver: {0}")]
    Homeserver(#[from] HomeserverError),
}

/// What the ledger holds that a preview needs.
#[derive(Debug, Clone, Default)]
pub struct State {
    pub view: LedgerView,
    pub last_good: Option<LastGood>,
}

impl State {
    pub fn read(ledger: &Ledger) -> Result<State, LedgerError> {
        Ok(State {
            view: ledger.view()?,
            last_good: ledger.last_good()?,
        })
    }

    /// [`State::read`] on a blocking thread, so that it runs while the directory is read.
    pub fn read_beside(ledger: &Ledger) -> tokio::task::JoinHandle<Result<State, LedgerError>> {
        let ledger = ledger.clone();
        tokio::task::spawn_blocking(move || State::read(&ledger))
    }

    /// What [`State::read_beside`] read.
    pub async fn finished(
        reading: tokio::task::JoinHandle<Result<State, LedgerError>>,
    ) -> Result<State, LedgerError> {
        reading
            .await
            .map_err(|e| LedgerError::Unfinished(e.to_string()))?
    }
}

/// What a dry run found.
#[derive(Debug, Clone)]
pub struct Preview {
    /// The directory URL that answered.
    pub server: String,
    /// Agent entries in the snapshot (mapped or skipped).
    pub agents: usize,
    pub plan: Plan,
    /// What the directory asked for (for `explain`).
    pub desired: Desired,
    /// Why the brake would hold the plan's departures back, if it would.
    pub brake: Option<String>,
    scope: String,
}

/// A finished `sync`.
#[derive(Debug, Clone)]
pub struct SyncResult {
    pub preview: Preview,
    pub report: ApplyReport,
    /// Departures the brake held back (not applied).
    pub held_back: usize,
}

/// The search the rules ask for.
pub fn agent_query(rules: &Rules) -> AgentQuery {
    AgentQuery {
        filter: rules.agent.filter.clone(),
        attributes: rules.attributes(),
        id_attribute: rules.agent.id_attribute.clone(),
        id_format: rules.agent.id_format,
    }
}

/// The plan's policy from the config, at `now`.
pub fn policy(config: &Config, now: i64) -> Policy {
    Policy {
        server_name: config.homeserver.server_name.clone(),
        now,
        grace: i64::try_from(config.departures.grace.as_secs()).unwrap_or(i64::MAX),
        step: config.departures.reversible_step,
        protected: config.brake.protected.clone(),
    }
}

/// Reads the directory and plans against the ledger's state; changes nothing. Rooms are
/// planned from the ledger alone: use [`preview_with`] to read their state from the homeserver.
pub async fn preview(
    config: &Config,
    rules: &Rules,
    state: &State,
    now: i64,
) -> Result<Preview, RunError> {
    preview_with::<SynapseClient>(config, rules, state, now, None).await
}

/// [`preview`], reading the rooms' state from `homeserver` when given (reads only).
pub async fn preview_with<H: Homeserver + Rooms>(
    config: &Config,
    rules: &Rules,
    state: &State,
    now: i64,
    homeserver: Option<&H>,
) -> Result<Preview, RunError> {
    let mapped = read_and_map(config, rules, now).await?;
    plan_mapped(config, rules, state, mapped, now, homeserver).await
}

/// [`preview_with`], reading the ledger's state from `ledger` while the directory is read.
pub async fn preview_reading<H: Homeserver + Rooms>(
    config: &Config,
    rules: &Rules,
    ledger: &Ledger,
    now: i64,
    homeserver: Option<&H>,
) -> Result<Preview, RunError> {
    let reading = State::read_beside(ledger);
    let mapped = read_and_map(config, rules, now).await;
    let state = State::finished(reading).await?;
    plan_mapped(config, rules, &state, mapped?, now, homeserver).await
}

/// The directory's agents, mapped as they are read (the entries are not kept unless room
/// rules need them).
struct Mapped {
    server: String,
    agents: usize,
    desired: Desired,
}

async fn read_and_map(config: &Config, rules: &Rules, now: i64) -> Result<Mapped, RunError> {
    let mut mapper = mapping::Mapper::new(rules, now);
    let snapshot = directory::read_snapshot_with(
        &config.directory,
        &agent_query(rules),
        &rules.rooms.sources(),
        &mut |entry| mapper.add(entry),
    )
    .await?;
    let desired = mapper.finish(&snapshot);
    Ok(Mapped {
        agents: snapshot.agents(),
        server: snapshot.server,
        desired,
    })
}

async fn plan_mapped<H: Homeserver + Rooms>(
    config: &Config,
    rules: &Rules,
    state: &State,
    mapped: Mapped,
    now: i64,
    homeserver: Option<&H>,
) -> Result<Preview, RunError> {
    let Mapped {
        server,
        agents,
        desired,
    } = mapped;
    let (observed, daemon) = match homeserver {
        Some(hs) => {
            observe_rooms(
                hs,
                &desired.rooms,
                &state.view.rooms,
                config.homeserver.concurrency,
            )
            .await?
        }
        None => Default::default(),
    };
    let plan = plan::plan_with_rooms(
        &desired,
        &state.view,
        &policy(config, now),
        &observed,
        daemon.as_deref(),
    );
    let scope = brake::scope(config, rules);
    let context = brake::Context {
        managed: state.view.accounts.len(),
        agents,
        scope: scope.clone(),
        last_good: state.last_good.clone(),
    };
    let brake = brake::check(&plan, &context, &config.brake);
    Ok(Preview {
        server,
        agents,
        plan,
        desired,
        brake,
        scope,
    })
}

/// Plans and applies, then records the run in the ledger (a failed run too, with its reason).
/// With the brake engaged, departures are held back unless an operator allowed up to
/// `allowed_departures` of them past it (`usize::MAX`: any number).
pub async fn sync<H: Homeserver + Rooms>(
    config: &Config,
    rules: &Rules,
    ledger: &Ledger,
    homeserver: &H,
    clock: &dyn Clock,
    allowed_departures: Option<usize>,
    observer: &dyn Observer,
) -> Result<SyncResult, RunError> {
    let started_at = clock.now();
    let preview = match preview_reading(config, rules, ledger, started_at, Some(homeserver)).await {
        Ok(p) => p,
        // The ledger could not be read: no run to record in it.
        Err(e @ RunError::Ledger(_)) => return Err(e),
        Err(e) => {
            let run = RunRecord {
                started_at,
                finished_at: clock.now(),
                outcome: format!("failed: {e}"),
                ..RunRecord::default()
            };
            ledger.record_run(&run)?;
            return Err(e);
        }
    };
    let mut plan = preview.plan.clone();
    let allowed = allowed_departures.is_some_and(|max| preview.plan.departures() <= max);
    let held_back = match (&preview.brake, allowed) {
        (Some(why), false) => {
            let held = brake::hold_back(&mut plan);
            tracing::warn!(
                held_back = held,
                "brake engaged: {why}; departures held back until `sync --allow-mass-changes`"
            );
            held
        }
        (Some(why), true) => {
            tracing::warn!("brake overridden by an operator: {why}");
            0
        }
        (None, _) => 0,
    };
    let options = apply::Options {
        concurrency: config.homeserver.concurrency,
        departures: config.departures.clone(),
    };
    let report = apply::apply(&plan, homeserver, ledger, clock, &options, observer).await?;
    if held_back == 0 {
        ledger.set_last_good(&LastGood {
            agents: preview.agents,
            scope: preview.scope.clone(),
            at: started_at,
        })?;
    }
    let failed = report.failed.len() + report.rooms.failed.len();
    let outcome = match (&report.aborted, failed) {
        (Some(why), _) => format!("aborted: {why}"),
        (None, 0) if held_back > 0 => "brake engaged".to_string(),
        (None, 0) => "ok".to_string(),
        (None, n) => format!("{n} action(s) failed"),
    };
    let run = RunRecord {
        started_at,
        finished_at: clock.now(),
        server: preview.server.clone(),
        agents: preview.agents,
        skipped: preview.plan.skipped.len(),
        planned: preview.plan.actions.len() + preview.plan.rooms.actions.len(),
        applied: report.applied + report.rooms.applied,
        failed,
        outcome,
        brake: preview.brake.clone().filter(|_| held_back > 0),
        held_back,
    };
    tracing::info!(
        agents = run.agents,
        planned = run.planned,
        applied = run.applied,
        failed = run.failed,
        held_back,
        outcome = %run.outcome,
        "sync run finished"
    );
    ledger.record_run(&run)?;
    ledger.flush()?;
    Ok(SyncResult {
        preview,
        report,
        held_back,
    })
}
