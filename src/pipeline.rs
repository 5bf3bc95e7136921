//! One sync run, shared by `plan` (stops before applying) and `sync`: directory → snapshot →
//! mapping → plan (against the ledger, and the rooms as the homeserver has them) → brake →
//! apply.

mod complete_read;
mod incremental;
mod ledger_cell;
mod ledger_view;
mod login;
mod observe;

pub use incremental::{fingerprint, usable_point, Read, WhyComplete};
pub use ledger_cell::LedgerCell;
pub use login::undeclared as undeclared_login;
pub use observe::{observe_accounts, observe_rooms};

use crate::apply::journal::{Resolution, ResolveError};
use crate::apply::{self, ApplyReport, Observer};
use crate::brake;
use crate::clock::Clock;
use crate::config::Config;
use crate::directory::{AgentQuery, DirectoryError};
use crate::homeserver::{Halt, Homeserver, HomeserverError, Rooms, SynapseClient};
use crate::ledger::{
    FinishedRun, Held, HeldAgent, LastGood, Ledger, LedgerError, LedgerView, RunRecord, Scope,
    SyncPoint,
};
use crate::mapping::{Desired, Rules};
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

impl From<ResolveError> for RunError {
    fn from(e: ResolveError) -> Self {
        match e {
            ResolveError::Ledger(e) => RunError::Ledger(e),
            ResolveError::Homeserver(e) => RunError::Homeserver(e),
        }
    }
}

/// What the ledger holds that a preview needs.
#[derive(Debug, Clone, Default)]
pub struct State {
    /// The accounts (all, or those the plan needs, see [`LedgerView::in_step`]) and rooms.
    pub view: LedgerView,
    /// How many accounts the ledger manages.
    pub managed: usize,
    pub last_good: Option<LastGood>,
}

impl State {
    pub fn read(ledger: &Ledger) -> Result<State, LedgerError> {
        let view = ledger.view()?;
        Ok(State {
            managed: view.accounts.len(),
            view,
            last_good: ledger.last_good()?,
        })
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
    pub brake: Option<brake::Verdict>,
    /// Everything, or only the changes since the last read.
    pub read: Read,
    /// The unfinished writes of an interrupted run, resolved before planning (`sync` only).
    pub journal: Resolution,
    scope: Scope,
}

/// A finished `sync`.
#[derive(Debug, Clone)]
pub struct SyncResult {
    pub preview: Preview,
    pub report: ApplyReport,
    /// Actions the brake held back (not applied): departures, or the whole plan when the
    /// scope changed.
    pub held_back: usize,
    /// An operator allowed mass changes, but the brake's verdict cannot be overridden (the
    /// agents' ids changed: see [`brake::Verdict::needs_migration`]).
    pub override_refused: bool,
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

/// The plan's policy from the config and the rules, at `now`.
pub fn policy(config: &Config, rules: &Rules, now: i64) -> Policy {
    let secs = |d: std::time::Duration| i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
    Policy {
        server_name: config.homeserver.server_name.clone(),
        now,
        grace: secs(config.departures.grace),
        step: config.departures.reversible_step,
        protected: config.brake.protected.clone(),
        adopt: rules.account.adopt,
        on_conflict: rules.account.on_conflict,
        retry_refused_after: secs(config.homeserver.retry_refused_after),
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
    let mapped = complete_read::read_and_map(config, rules, now).await?;
    plan_mapped(config, rules, state, mapped, now, homeserver).await
}

/// [`preview_with`], with the ledger's state from `ledger`: every account's profile, read
/// while the directory is read (once the ledger is open, if it is still opening), and the
/// records the plan needs. With `resolve` (a `sync`), the unfinished writes of an interrupted
/// run are resolved against `homeserver` first.
pub async fn preview_reading<H: Homeserver + Rooms>(
    config: &Config,
    rules: &Rules,
    ledger: &LedgerCell,
    now: i64,
    homeserver: Option<&H>,
    resolve: bool,
) -> Result<Preview, RunError> {
    let reading = async {
        let ledger = ledger.get().await?.clone();
        let journal = match (resolve, homeserver) {
            (true, Some(hs)) => apply::journal::resolve(&ledger, hs, now).await?,
            _ => Resolution::default(),
        };
        let profiles = tokio::task::spawn_blocking(move || ledger.profiles())
            .await
            .map_err(|e| LedgerError::Unfinished(e.to_string()))?
            .map_err(RunError::from)?;
        Ok::<_, RunError>((profiles, journal))
    };
    // Either failing stops the other: a ledger that cannot be opened ends the read.
    let (mapped, (profiles, journal)) =
        tokio::try_join!(complete_read::read_and_map(config, rules, now), reading)?;
    let ledger = ledger.get().await?;
    let state = State {
        view: ledger_view::complete_view(
            ledger,
            profiles,
            &mapped.desired,
            &config.homeserver.server_name,
        )?,
        managed: ledger.account_count()?,
        last_good: ledger.last_good()?,
    };
    let preview = plan_mapped(config, rules, &state, mapped, now, homeserver)
        .await
        .map(|preview| Preview { journal, ..preview });
    // An entry per account in step: the run need not wait for them to be freed.
    tokio::task::spawn_blocking(move || drop(state));
    preview
}

/// How many times a plan is made again with the answers about new agents' mxids.
const MAX_ACCOUNT_ROUNDS: usize = 5;

/// The directory's agents, mapped as they are read (the entries are not kept unless room
/// rules need them).
struct Mapped {
    server: String,
    agents: usize,
    desired: Desired,
    read: Read,
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
        read,
    } = mapped;
    let (rooms, daemon) = match homeserver {
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
    let mut known = plan::Homeserver {
        rooms,
        daemon: daemon.as_deref(),
        accounts: plan::HomeserverAccounts::default(),
    };
    let policy = policy(config, rules, now);
    let mut plan = plan::plan_with_rooms(&desired, &state.view, &policy, &known);
    if let Some(hs) = homeserver {
        // New agents' mxids may be held by accounts the daemon did not create: ask, and plan
        // again with the answers until every mxid the plan would create has been asked about
        // (an agent offered the next free localpart needs a second question).
        for _ in 0..MAX_ACCOUNT_ROUNDS {
            let unasked: Vec<String> = plan
                .actions
                .iter()
                .filter(|a| matches!(a, plan::Action::CreateAccount { .. }))
                .map(|a| a.mxid().to_string())
                .filter(|mxid| !known.accounts.knows(mxid))
                .collect();
            if unasked.is_empty() {
                break;
            }
            tracing::info!(
                mxids = unasked.len(),
                "asking the homeserver whether new agents' mxids are taken"
            );
            let found = observe_accounts(hs, unasked, config.homeserver.concurrency).await?;
            let taken = found.iter().any(|(_, account)| account.is_some());
            for (mxid, account) in found {
                known.accounts.insert(mxid, account);
            }
            if !taken {
                break;
            }
            plan = plan::plan_with_rooms(&desired, &state.view, &policy, &known);
        }
    }
    if let (Some(hs), true) = (homeserver, read.is_complete()) {
        // A report: a homeserver that cannot list its accounts now does not stop the run
        // (applying will find out whether it answers).
        if let Err(e) = find_shadows(config, rules, hs, &desired, &state.view, &mut plan).await {
            tracing::warn!(error = %e, "shadow accounts not checked this run");
            plan.warnings
                .push(format!("shadow accounts not checked this run: {e}"));
        }
    }
    plan.warnings
        .extend(login::warnings(rules, &desired, &state.view, &plan));
    let scope = brake::scope(config, rules);
    let context = brake::Context {
        managed: state.managed,
        agents,
        complete: read.is_complete(),
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
        read,
        journal: Resolution::default(),
        scope,
    })
}

/// Adds to `plan` the shadow accounts of its agents (see [`plan::shadows`]), their security
/// findings, and the locks `[login] shadow_accounts = "lock"` asks for. A complete read only:
/// every managed account must be known to tell the others.
async fn find_shadows<H: Homeserver>(
    config: &Config,
    rules: &Rules,
    homeserver: &H,
    desired: &Desired,
    view: &LedgerView,
    plan: &mut Plan,
) -> Result<(), RunError> {
    let own: std::collections::HashMap<&str, &str> = view
        .accounts
        .values()
        .map(|r| (r.id.0.as_str(), r.mxid.as_str()))
        .chain(
            view.in_step
                .iter()
                .map(|(id, m)| (id.0.as_str(), m.as_str())),
        )
        .collect();
    // Accounts the daemon manages, or is about to make or take over, are nobody's shadow.
    let managed: std::collections::HashSet<&str> = own
        .values()
        .copied()
        .chain(
            plan.actions
                .iter()
                .filter(|a| matches!(a, plan::Action::CreateAccount { .. }))
                .map(plan::Action::mxid),
        )
        .collect();
    let (unmanaged, emails_read) =
        observe::unmanaged_accounts(homeserver, &managed, config.homeserver.concurrency).await?;
    if !emails_read {
        plan.warnings.push(format!(
            "{} accounts on the homeserver are not managed by the daemon: more than {} to read one by one, so shadow accounts are matched by login only, not by e-mail",
            unmanaged.len(),
            observe::MAX_UNMANAGED_EMAIL_READS
        ));
    }
    let shadows = plan::shadows::find(desired, &own, &unmanaged, &plan.conflicts);
    for finding in plan::shadows::security_findings(&shadows) {
        tracing::warn!("{finding}");
        plan.warnings.push(finding);
    }
    plan.actions
        .extend(plan::shadows::locks(&shadows, rules.login.shadow_accounts));
    plan.shadows = shadows;
    Ok(())
}

/// How a `sync` run goes.
#[derive(Debug, Clone, Copy, Default)]
pub struct SyncOptions {
    /// An operator allowed up to this many actions past the brake (`usize::MAX`: any
    /// number): departures, or a changed scope's whole plan (but never new ids, see
    /// [`brake::Verdict::needs_migration`]).
    pub allowed_departures: Option<usize>,
    /// Read only what changed since the last complete read when possible (see
    /// [`usable_point`]); otherwise read everything.
    pub incremental: bool,
}

/// Plans and applies, then records the run in the ledger (a failed run too, with its reason).
/// With the brake engaged, what it holds (departures, or with a changed scope everything) is
/// held back unless the operator allowed it.
///
/// The homeserver client starts the run with a closed breaker (whatever an earlier run saw),
/// and is halted at `homeserver.run_deadline`: no request is sent after it, those in flight
/// are given up, and the run ends, recording what it did; the next run does the rest.
pub async fn sync<H: Homeserver + Rooms>(
    config: &Config,
    rules: &Rules,
    cell: &LedgerCell,
    homeserver: &H,
    clock: &dyn Clock,
    options: SyncOptions,
    observer: &dyn Observer,
) -> Result<SyncResult, RunError> {
    homeserver.breaker().reset();
    let deadline = config.homeserver.run_deadline;
    let run = sync_run(config, rules, cell, homeserver, clock, options, observer);
    tokio::pin!(run);
    tokio::select! {
        result = &mut run => result,
        () = tokio::time::sleep(deadline) => {
            tracing::warn!(deadline = %humantime::format_duration(deadline), "run deadline reached: no more homeserver requests this run (homeserver.run_deadline)");
            homeserver.breaker().halt(Halt::Deadline { after: deadline });
            run.await
        }
    }
}

async fn sync_run<H: Homeserver + Rooms>(
    config: &Config,
    rules: &Rules,
    cell: &LedgerCell,
    homeserver: &H,
    clock: &dyn Clock,
    options: SyncOptions,
    observer: &dyn Observer,
) -> Result<SyncResult, RunError> {
    let started_at = clock.now();
    let preview = match preview_for_sync(config, rules, cell, homeserver, started_at, options).await
    {
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
            cell.get().await?.record_run(&run)?;
            return Err(e);
        }
    };
    let ledger = cell.get().await?;
    let mut plan = preview.plan.clone();
    let verdict = preview.brake.as_ref();
    let override_refused = options.allowed_departures.is_some()
        && verdict.is_some_and(brake::Verdict::needs_migration);
    let allowed = !override_refused
        && options
            .allowed_departures
            .zip(verdict)
            .is_some_and(|(max, why)| why.held(&preview.plan) <= max);
    let held_back = match (verdict, allowed) {
        (Some(why), false) => {
            let held = brake::hold_back(&mut plan, why);
            tracing::warn!(held_back = held, "brake engaged: {why}; {}", why.remedy());
            held
        }
        (Some(why), true) => {
            tracing::warn!("brake overridden by an operator: {why}");
            0
        }
        (None, _) => 0,
    };
    let held_everything = held_back > 0 && verdict.is_some_and(brake::Verdict::holds_everything);
    let apply_options = apply::Options {
        concurrency: config.homeserver.concurrency,
        departures: config.departures.clone(),
    };
    // Before applying: an account that appears meanwhile is held as a conflict by the apply.
    // A plan held whole was made under another scope: its conflicts are not recorded either.
    if !held_everything {
        record_conflicts(ledger, &preview, clock.now())?;
    }
    let report = apply::apply(&plan, homeserver, ledger, clock, &apply_options, observer).await?;
    if preview.read.is_complete() {
        record_shadows(ledger, &preview.plan, &report)?;
    }
    // Refusals and conflicts are each one agent's problem: held and shown, they fail neither
    // the run nor its watermark.
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
        refused: report.refused.len(),
        conflicts: preview.plan.conflicts.len() + report.conflicts.len(),
        resolved_applied: preview.journal.applied,
        resolved_not_applied: preview.journal.not_applied,
        outcome,
        brake: preview
            .brake
            .as_ref()
            .filter(|_| held_back > 0)
            .map(ToString::to_string),
        held_back,
        held_everything,
        needs_migration: held_everything && verdict.is_some_and(brake::Verdict::needs_migration),
        incremental: !preview.read.is_complete(),
        incremental_fallback: preview.read.fallback().map(str::to_string),
    };
    tracing::info!(
        agents = run.agents,
        incremental = run.incremental,
        planned = run.planned,
        applied = run.applied,
        failed = run.failed,
        held_back,
        outcome = %run.outcome,
        "sync run finished"
    );
    let last_good = (held_back == 0 && preview.read.is_complete()).then(|| LastGood {
        agents: preview.agents,
        scope: preview.scope.digest(),
        at: started_at,
        spec: Some(preview.scope.clone()),
    });
    // The next incremental read starts where this one ended only if every change it read is
    // applied; otherwise the same changes are read again.
    let succeeded = report.aborted.is_none() && failed == 0 && held_back == 0;
    let point = succeeded.then(|| next_point(config, rules, &preview.read, started_at));
    let scheduled =
        succeeded.then(|| incremental::scheduled_update(&preview.desired, &preview.read));
    // Before the sync point that relies on them (facts about the directory, true whatever the
    // rest of the run does).
    if let Some(update) = preview.read.sync_id_update().filter(|_| succeeded) {
        ledger.record_sync_ids(&update)?;
    }
    ledger.finish_run(FinishedRun {
        run: &run,
        last_good: last_good.as_ref(),
        sync_point: point.as_ref().map(Option::as_ref),
        scheduled: scheduled.as_ref(),
    })?;
    ledger.flush()?;
    Ok(SyncResult {
        preview,
        report,
        held_back,
        override_refused,
    })
}

/// Keeps the shadow accounts this complete read found, for `status` and the metrics; those
/// this run locked are recorded as locked.
fn record_shadows(ledger: &Ledger, plan: &Plan, report: &ApplyReport) -> Result<(), LedgerError> {
    let locked_now = |mxid: &str| {
        plan.actions
            .iter()
            .any(|a| matches!(a, plan::Action::LockShadow { .. }) && a.mxid() == mxid)
            && !report.failed.iter().any(|(m, ..)| m == mxid)
            && !report.refused.iter().any(|(m, ..)| m == mxid)
            && report.aborted.is_none()
    };
    let shadows: Vec<_> = plan
        .shadows
        .iter()
        .cloned()
        .map(|mut s| {
            s.locked |= locked_now(&s.mxid);
            s
        })
        .collect();
    ledger.set_shadows(&shadows)
}

/// Keeps the ledger's conflicts as the plan found them: for the agents the read covered, the
/// plan's conflicts replace those recorded before.
fn record_conflicts(ledger: &Ledger, preview: &Preview, now: i64) -> Result<(), LedgerError> {
    let desired = &preview.desired;
    let complete = preview.read.is_complete();
    let read: std::collections::HashSet<&crate::directory::StableId> =
        desired.accounts.iter().map(|a| &a.id).collect();
    let conflicts: Vec<HeldAgent> = preview
        .plan
        .conflicts
        .iter()
        .map(|c| HeldAgent {
            id: c.id.clone(),
            mxid: c.mxid.clone(),
            dn: c.dn.clone(),
            since: now,
            at: now,
            why: Held::Conflict {
                reason: c.reason.clone(),
            },
        })
        .collect();
    ledger.replace_conflicts(|id| complete || read.contains(id), &conflicts)
}

/// The preview a `sync` applies: of the changes since the last read when `options` and the
/// ledger allow it, else of everything.
async fn preview_for_sync<H: Homeserver + Rooms>(
    config: &Config,
    rules: &Rules,
    cell: &LedgerCell,
    homeserver: &H,
    now: i64,
    options: SyncOptions,
) -> Result<Preview, RunError> {
    if !options.incremental {
        // Without waiting for the ledger: it opens while the directory is read (and the
        // journal is resolved then).
        tracing::info!(
            reason = "a complete read was asked for",
            "reading the whole directory"
        );
        return preview_reading(config, rules, cell, now, Some(homeserver), true).await;
    }
    // The watermark and the records an incremental plan reads must be the truth first.
    let journal = apply::journal::resolve(cell.get().await?, homeserver, now).await?;
    let why_complete = match incremental_preview(config, rules, cell, homeserver, now).await? {
        Ok(preview) => return Ok(Preview { journal, ..preview }),
        Err(why) => why,
    };
    let fallback = match why_complete {
        WhyComplete::Planned(why) => {
            tracing::info!(reason = %why, "reading the whole directory");
            None
        }
        WhyComplete::Fallback(why) => {
            tracing::warn!(
                reason = %why,
                "the directory could not give an incremental read that can be trusted: reading the whole directory"
            );
            Some(why)
        }
    };
    let mut preview = preview_reading(config, rules, cell, now, Some(homeserver), false).await?;
    if let Read::Complete { fallback: f, .. } = &mut preview.read {
        *f = fallback;
    }
    Ok(Preview { journal, ..preview })
}

/// The preview of the changes since the last read, or why the whole directory must be read.
async fn incremental_preview<H: Homeserver + Rooms>(
    config: &Config,
    rules: &Rules,
    cell: &LedgerCell,
    homeserver: &H,
    now: i64,
) -> Result<Result<Preview, WhyComplete>, RunError> {
    let ledger = cell.get().await?;
    let point = match usable_point(config, rules, ledger.sync_point()?, now) {
        Ok(point) => point,
        Err(why) => return Ok(Err(WhyComplete::Planned(why))),
    };
    let (mapped, view) =
        match incremental::read_changes_and_map(config, rules, ledger, point, now).await? {
            Ok(read) => read,
            Err(why) => return Ok(Err(WhyComplete::Fallback(why))),
        };
    let state = State {
        view,
        managed: ledger.account_count()?,
        last_good: ledger.last_good()?,
    };
    plan_mapped(config, rules, &state, mapped, now, Some(homeserver))
        .await
        .map(Ok)
}

/// Where the next incremental read starts after `read` fully succeeded (`None`: nowhere).
fn next_point(config: &Config, rules: &Rules, read: &Read, started_at: i64) -> Option<SyncPoint> {
    let (watermark, full_at) = match read {
        Read::Complete { watermark, .. } => (watermark.clone()?, started_at),
        Read::Changes {
            since, watermark, ..
        } => (watermark.clone(), since.full_at),
    };
    Some(SyncPoint {
        watermark,
        fingerprint: fingerprint(config, rules),
        full_at,
    })
}
