//! One sync run, shared by `plan` (stops before applying) and `sync`: directory → snapshot →
//! mapping → plan (against the ledger) → apply.

mod observe;

pub use observe::observe_rooms;

use crate::apply::{self, ApplyReport, Observer};
use crate::clock::Clock;
use crate::config::Config;
use crate::directory::{self, AgentQuery, DirectoryError};
use crate::homeserver::{Homeserver, HomeserverError, Rooms, SynapseClient};
use crate::ledger::{Ledger, LedgerError, LedgerView, RunRecord};
use crate::mapping::{self, Rules};
use crate::plan::{self, Plan};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("directory: {0}")]
    Directory(#[from] DirectoryError),
    #[error("ledger: {0}")]
    Ledger(#[from] LedgerError),
    #[error("homeserver: {0}")]
    Homeserver(#[from] HomeserverError),
}

/// What a dry run found.
#[derive(Debug, Clone)]
pub struct Preview {
    /// The directory URL that answered.
    pub server: String,
    /// Agent entries in the snapshot (mapped or skipped).
    pub agents: usize,
    pub plan: Plan,
}

/// A finished `sync`.
#[derive(Debug, Clone)]
pub struct SyncResult {
    pub preview: Preview,
    pub report: ApplyReport,
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

/// Reads the directory and plans against the ledger; changes nothing. Rooms are planned from
/// the ledger alone: use [`preview_with`] to read their state from the homeserver.
pub async fn preview(
    config: &Config,
    rules: &Rules,
    ledger: &LedgerView,
) -> Result<Preview, RunError> {
    preview_with::<SynapseClient>(config, rules, ledger, None).await
}

/// [`preview`], reading the rooms' state from `homeserver` when given (reads only).
pub async fn preview_with<H: Homeserver + Rooms>(
    config: &Config,
    rules: &Rules,
    ledger: &LedgerView,
    homeserver: Option<&H>,
) -> Result<Preview, RunError> {
    let snapshot = directory::read_snapshot_with(
        &config.directory,
        &agent_query(rules),
        &rules.rooms.sources(),
    )
    .await?;
    let desired = mapping::map_snapshot(&snapshot, rules);
    let (observed, daemon) = match homeserver {
        Some(hs) => {
            observe_rooms(
                hs,
                &desired.rooms,
                &ledger.rooms,
                config.homeserver.concurrency,
            )
            .await?
        }
        None => Default::default(),
    };
    let plan = plan::plan_with_rooms(
        &desired,
        ledger,
        &config.homeserver.server_name,
        &observed,
        daemon.as_deref(),
    );
    Ok(Preview {
        server: snapshot.server,
        agents: snapshot.entries.len() + snapshot.skipped.len(),
        plan,
    })
}

/// Plans and applies, then records the run in the ledger (a failed run too, with its reason).
pub async fn sync<H: Homeserver + Rooms>(
    config: &Config,
    rules: &Rules,
    ledger: &Ledger,
    homeserver: &H,
    clock: &dyn Clock,
    observer: &dyn Observer,
) -> Result<SyncResult, RunError> {
    let started_at = clock.now();
    let preview = match preview_with(config, rules, &ledger.view()?, Some(homeserver)).await {
        Ok(p) => p,
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
    let report = apply::apply(
        &preview.plan,
        homeserver,
        ledger,
        clock,
        config.homeserver.concurrency,
        observer,
    )
    .await?;
    let failed = report.failed.len() + report.rooms.failed.len();
    let outcome = match (&report.aborted, failed) {
        (Some(why), _) => format!("aborted: {why}"),
        (None, 0) => "ok".to_string(),
        (None, n) => format!("{n} action(s) failed"),
    };
    ledger.record_run(&RunRecord {
        started_at,
        finished_at: clock.now(),
        server: preview.server.clone(),
        agents: preview.agents,
        skipped: preview.plan.skipped.len(),
        planned: preview.plan.actions.len() + preview.plan.rooms.actions.len(),
        applied: report.applied + report.rooms.applied,
        failed,
        outcome,
    })?;
    ledger.flush()?;
    Ok(SyncResult { preview, report })
}
