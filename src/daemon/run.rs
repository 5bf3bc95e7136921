//! One supervised run: drives `pipeline::sync` while still answering signals, then reports how
//! it went to the metrics, `/health`, `status.json`, systemd and the log.

use std::time::{Duration, Instant};

use tokio::sync::mpsc::UnboundedReceiver;
use tokio::time::Interval;

use super::health::Health;
use super::metrics::RunOutcome;
use super::observer::RunObserver;
use super::signals::Event;
use super::status_file::{self, DaemonStatus};
use super::{approval, notify, Loaded, Shared};
use crate::clock::{format_time, Clock, SystemClock};
use crate::homeserver::{Halt, Homeserver, HomeserverError, Liveness};
use crate::ledger::{Held, Ledger, Origin};
use crate::pipeline::{self, RunError, SyncResult};

/// How often a run looks at whether the homeserver answers, for `/health` and systemd.
const LIVENESS_EVERY: Duration = Duration::from_secs(1);

/// Signals that arrived during a run, handled once it is over.
#[derive(Debug, Default)]
pub struct Pending {
    pub reload: bool,
    pub sync_now: bool,
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Ran to its end (`true`: fully successful).
    Finished(bool),
    /// A stop signal came: cancelled before applying anything, or after the actions in
    /// flight finished (or the shutdown timeout passed).
    Stopped,
}

/// Waits for the next watchdog tick, or forever when there is no watchdog.
pub async fn tick(watchdog: &mut Option<Interval>) {
    match watchdog {
        Some(interval) => {
            interval.tick().await;
        }
        None => std::future::pending::<()>().await,
    }
}

pub async fn supervised(
    loaded: &Loaded,
    ledger: &Ledger,
    shared: &Shared,
    events: &mut UnboundedReceiver<Event>,
    watchdog: &mut Option<Interval>,
    pending: &mut Pending,
) -> Ended {
    let began = Instant::now();
    let observer = RunObserver::new(&shared.metrics);
    let approval = approval::take(&loaded.config.state_dir);
    if let Some(a) = &approval {
        tracing::info!(
            max_departures = a.max_departures,
            "an operator approved departures past the brake for this run"
        );
    }
    let ledger_cell = pipeline::LedgerCell::ready(ledger.clone());
    let sync = pipeline::sync(
        &loaded.config,
        &loaded.rules,
        &ledger_cell,
        &loaded.homeserver,
        &SystemClock,
        pipeline::SyncOptions {
            allowed_departures: approval.map(|a| a.max_departures),
            incremental: true,
        },
        &observer,
    );
    tokio::pin!(sync);
    let mut deadline: Option<tokio::time::Instant> = None;
    let mut liveness = tokio::time::interval(LIVENESS_EVERY);
    liveness.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let result = loop {
        tokio::select! {
            result = &mut sync => break result,
            _ = liveness.tick() => observe_homeserver(loaded, ledger, shared),
            Some(event) = events.recv() => match event {
                Event::Reload => pending.reload = true,
                Event::SyncNow => pending.sync_now = true,
                Event::Stop(signal) => {
                    if deadline.is_some() {
                        tracing::warn!(signal, "second stop signal: exiting now, the actions in flight are redone at the next start");
                        return Ended::Stopped;
                    }
                    if !observer.applying() {
                        tracing::info!(signal, "stopping: the run had not applied anything yet, cancelled");
                        return Ended::Stopped;
                    }
                    let timeout = loaded.config.daemon.shutdown_timeout;
                    tracing::info!(signal, ?timeout, "stopping: no new action starts, waiting for those in flight");
                    observer.request_stop();
                    deadline.get_or_insert(tokio::time::Instant::now() + timeout);
                }
            },
            _ = sleep_until(deadline), if deadline.is_some() => {
                tracing::warn!("stopping: actions still in flight after the shutdown timeout, left for the next start to redo");
                return Ended::Stopped;
            }
            _ = tick(watchdog) => notify::watchdog(),
        }
    };
    let outcome = report(&result, began.elapsed(), loaded, ledger, shared);
    if outcome == RunOutcome::Deadline {
        // Cut short while making progress: the rest is for the next run, at once.
        pending.sync_now = true;
    }
    if deadline.is_some() {
        Ended::Stopped
    } else {
        Ended::Finished(matches!(outcome, RunOutcome::Ok | RunOutcome::Deadline))
    }
}

/// During a run: tells `/health`, the metrics, `status.json` and systemd as soon as the
/// homeserver stops answering, and as soon as it answers again.
fn observe_homeserver(loaded: &Loaded, ledger: &Ledger, shared: &Shared) {
    let live = loaded.homeserver.breaker().liveness();
    let mut changed = false;
    let health = shared.update_health(|h| changed = h.homeserver(&live));
    if !changed {
        return;
    }
    shared
        .metrics
        .homeserver_up(health.homeserver_not_answering.is_none());
    match &health.homeserver_not_answering {
        Some(why) => {
            tracing::warn!("{why}");
            notify::status(&format!("{why} (run in progress)"));
        }
        None => {
            tracing::info!("the homeserver answers again");
            notify::status("homeserver answering again (run in progress)");
        }
    }
    write_status(ledger, shared, &health, SystemClock.now(), false);
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending::<()>().await,
    }
}

/// How the run ended, and what went wrong in words.
pub fn classify(result: &Result<SyncResult, RunError>) -> (RunOutcome, Option<String>) {
    match result {
        Ok(r) => match (&r.report.aborted, r.report.failed.len()) {
            (Some(why), _) => {
                let left = r.report.not_tried_total();
                let applied = r.report.applied + r.report.rooms.applied;
                let outcome = match &r.report.halted {
                    Some(Halt::NotAnswering { .. }) => RunOutcome::HomeserverUnavailable,
                    Some(Halt::Deadline { .. }) if applied > 0 => RunOutcome::Deadline,
                    _ => RunOutcome::Aborted,
                };
                let message = if r.report.halted.is_some() {
                    format!("{why}; {left} action(s) not tried, left for the next run")
                } else {
                    why.clone()
                };
                (outcome, Some(message))
            }
            (None, 0) if r.held_back > 0 => (
                RunOutcome::Braked,
                Some(match &r.preview.brake {
                    Some(why) if why.holds_everything() => format!(
                        "brake engaged, the whole plan ({} action(s)) held back: {why}; {}",
                        r.held_back,
                        why.remedy()
                    ),
                    why => format!(
                        "brake engaged, {} departure(s) held back: {}",
                        r.held_back,
                        why.as_ref()
                            .map_or("limits exceeded".to_string(), ToString::to_string)
                    ),
                }),
            ),
            (None, 0) => (RunOutcome::Ok, None),
            (None, n) => (RunOutcome::Partial, Some(format!("{n} action(s) failed"))),
        },
        Err(e @ RunError::Directory(_)) => (RunOutcome::DirectoryError, Some(e.to_string())),
        Err(RunError::Homeserver(HomeserverError::Halted {
            halt: halt @ Halt::NotAnswering { .. },
            ..
        })) => (RunOutcome::HomeserverUnavailable, Some(halt.to_string())),
        Err(RunError::Homeserver(e @ HomeserverError::Transport { .. })) => (
            RunOutcome::HomeserverUnavailable,
            Some(format!("homeserver not answering: {e}")),
        ),
        Err(e @ RunError::Homeserver(_)) => (RunOutcome::HomeserverError, Some(e.to_string())),
        Err(e @ RunError::Ledger(_)) => (RunOutcome::LedgerError, Some(e.to_string())),
    }
}

/// Tells everyone how the run went; returns how it ended.
fn report(
    result: &Result<SyncResult, RunError>,
    took: Duration,
    loaded: &Loaded,
    ledger: &Ledger,
    shared: &Shared,
) -> RunOutcome {
    let (outcome, problem) = classify(result);
    let now = SystemClock.now();
    shared.metrics.run_finished(outcome, took.as_secs_f64());
    shared.metrics.brake(matches!(outcome, RunOutcome::Braked));
    if outcome == RunOutcome::Ok {
        shared.metrics.succeeded_at(now);
    }
    let (conflicts, refused) = held_counts(ledger);
    shared.metrics.held(conflicts, refused);
    let shadows = ledger.shadows().unwrap_or_default();
    let open = shadows.iter().filter(|s| s.departed && !s.locked).count();
    shared
        .metrics
        .shadows(shadows.iter().filter(|s| !s.departed).count(), open);
    let live = loaded.homeserver.breaker().liveness();
    let health = shared.update_health(|h| {
        h.record(outcome, problem.as_deref(), now);
        h.held(conflicts, refused);
        if open > 0 {
            h.warnings.push(format!("SECURITY: {open} shadow account(s) of departed agents can still be used (see `status`)"));
        }
        // A run that failed otherwise (a deadline, failed actions) may still have ended with
        // the homeserver silent.
        if h.homeserver_not_answering.is_none() && matches!(live, Liveness::NotAnswering(_)) {
            h.homeserver(&live);
        }
    });
    shared
        .metrics
        .homeserver_up(health.homeserver_not_answering.is_none());
    let summary = match result {
        Ok(r) => {
            let rep = &r.report;
            shared
                .metrics
                .read_directory(r.preview.agents, r.preview.plan.actions.len());
            shared
                .metrics
                .intents_resolved(r.preview.journal.applied, r.preview.journal.not_applied);
            tracing::info!(
                outcome = outcome.name(),
                agents = r.preview.agents,
                skipped = r.preview.plan.skipped.len(),
                planned = r.preview.plan.actions.len(),
                applied = rep.applied,
                adopted = rep.adopted,
                failed = rep.failed.len(),
                not_tried = rep.not_tried,
                seconds = took.as_secs_f64(),
                "sync run finished"
            );
            let summary = format!(
                "{}: {} agents, {} planned, {} applied, {} failed",
                outcome.name(),
                r.preview.agents,
                r.preview.plan.actions.len(),
                rep.applied,
                rep.failed.len()
            );
            match (&problem, &r.report.halted) {
                (Some(why), Some(_)) => format!("{summary}; {why}"),
                _ => summary,
            }
        }
        Err(e) => {
            tracing::warn!(outcome = outcome.name(), error = %e, seconds = took.as_secs_f64(), "sync run failed");
            format!("{}: {e}", outcome.name())
        }
    };
    notify::status(&format!("last run {}: {summary}", format_time(now)));

    let complete = result.as_ref().is_ok_and(|r| r.preview.read.is_complete());
    if complete {
        shared.metrics.read_everything_at(now);
    }
    if result
        .as_ref()
        .is_ok_and(|r| r.preview.read.fallback().is_some())
    {
        shared.metrics.incremental_fallback();
    }
    write_status(ledger, shared, &health, now, complete);
    outcome
}

/// How many agents the ledger holds back by a conflict and by a refusal.
fn held_counts(ledger: &Ledger) -> (usize, usize) {
    let held = ledger.held_agents().unwrap_or_default();
    let conflicts = held
        .values()
        .filter(|h| matches!(h.why, Held::Conflict { .. }))
        .count();
    (conflicts, held.len() - conflicts)
}

/// Writes `status.json` next to the ledger, for `status` while the daemon holds the ledger.
/// `recount`: count the adopted accounts again (reads every account's profile: after complete
/// reads only; otherwise the count last written stands).
pub fn write_status(ledger: &Ledger, shared: &Shared, health: &Health, now: i64, recount: bool) {
    let managed = ledger.account_count().unwrap_or_default();
    let state_dir = ledger.path().parent().unwrap_or(ledger.path());
    let recounted = recount
        .then(|| ledger.profiles().ok())
        .flatten()
        .map(|profiles| {
            profiles
                .iter()
                .filter(|(_, p)| p.origin == Origin::Adopted)
                .count()
        });
    let adopted =
        recounted.unwrap_or_else(|| status_file::read(state_dir).map_or(0, |s| s.adopted));
    shared.metrics.managed_accounts(managed);
    let status = DaemonStatus {
        pid: std::process::id(),
        written_at: now,
        managed_accounts: managed,
        adopted,
        runs: health.runs,
        health: if health.is_ok() { "ok" } else { "degraded" }.into(),
        reasons: health.reasons(),
        warnings: health.all_warnings(),
        held: ledger
            .held_agents()
            .unwrap_or_default()
            .into_values()
            .collect(),
        shadows: ledger.shadows().unwrap_or_default(),
        last_run: ledger.last_run().ok().flatten(),
    };
    if let Err(e) = status_file::write(state_dir, &status) {
        tracing::warn!(error = %e, "cannot write {}", status_file::path(state_dir).display());
    }
}
