//! `matrix-ldap-sync run`: the long-running daemon.
//!
//! A loop that syncs every `daemon.interval_secs` (plus jitter), retries failed runs with a
//! backoff and never exits on a directory or homeserver failure; answers signals (SIGHUP
//! reload, SIGTERM/SIGINT graceful stop, SIGUSR1 sync now); tells systemd how it is
//! (`Type=notify`: READY, STATUS, WATCHDOG); serves `/health` and `/metrics` when
//! `daemon.listen` is set; writes `status.json` for `status` after each run.
//!
//! Runs never overlap: a run is awaited by the loop itself, and a SIGUSR1 during a run starts
//! the next one right after it.

pub mod approval;
pub mod health;
pub mod http;
pub mod metrics;
pub mod notify;
mod observer;
mod run;
pub mod scheduler;
pub mod signals;
pub mod status_file;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::clock::{Clock, SystemClock};
use crate::config::Config;
use crate::homeserver::SynapseClient;
use crate::ledger::Ledger;
use crate::mapping::Rules;

use health::Health;
use metrics::Metrics;
use run::{Ended, Pending};
use scheduler::Schedule;
use signals::Event;

/// State the loop shares with the HTTP endpoint.
#[derive(Default)]
pub struct Shared {
    pub metrics: Metrics,
    health: Mutex<Health>,
}

impl Shared {
    pub fn health(&self) -> Health {
        self.health
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Changes the health and returns the new one.
    pub fn update_health(&self, change: impl FnOnce(&mut Health)) -> Health {
        let mut health = self.health.lock().unwrap_or_else(|e| e.into_inner());
        change(&mut health);
        health.clone()
    }
}

/// A validated config with what is built from it: the mapping rules and the homeserver client.
pub struct Loaded {
    pub config: Config,
    pub rules: Rules,
    pub homeserver: SynapseClient,
}

impl Loaded {
    /// Reads and checks everything; any error names the file (and key).
    pub fn load(path: &Path) -> Result<Loaded, String> {
        let config = Config::load(path).map_err(|e| e.to_string())?;
        let rules = Rules::load(&config.mapping_file).map_err(|e| e.to_string())?;
        let homeserver = SynapseClient::new(&config.homeserver).map_err(|e| e.to_string())?;
        Ok(Loaded {
            config,
            rules,
            homeserver,
        })
    }
}

/// Runs the daemon until SIGTERM or SIGINT. `Err` only for startup problems.
pub async fn run(config_path: &Path) -> Result<(), String> {
    // Before anything slow: a SIGHUP's default action would kill us.
    let mut listener = signals::listen().map_err(|e| format!("cannot handle signals: {e}"))?;
    let mut loaded = Loaded::load(config_path)?;
    let state_dir = loaded.config.state_dir.clone();
    std::fs::create_dir_all(&state_dir)
        .map_err(|e| format!("cannot create {}: {e}", state_dir.display()))?;
    let ledger = Ledger::open(&state_dir).map_err(|e| e.to_string())?;
    let shared = Arc::new(Shared::default());
    // Across restarts, the last success is the ledger's, so alerts on its age do not fire
    // just because the daemon restarted.
    if let Ok(Some(last)) = ledger.last_run() {
        if last.outcome == "ok" {
            shared.metrics.succeeded_at(last.finished_at);
            shared.update_health(|h| h.last_success = Some(last.finished_at));
        }
    }
    run::write_status(&ledger, &shared, &shared.health(), SystemClock.now(), true);
    let listen = loaded.config.daemon.listen;
    if let Some(addr) = listen {
        http::spawn(http::bind(addr).await?, shared.clone());
        tracing::info!(%addr, "serving /health and /metrics");
    }
    let mut watchdog = notify::watchdog_interval().map(tokio::time::interval);
    let mut schedule = Schedule::new(&loaded.config.daemon);
    tracing::info!(
        config = %config_path.display(),
        ledger = %ledger.path().display(),
        interval = ?loaded.config.daemon.interval,
        "daemon started"
    );
    notify::ready("started, first sync now");

    let mut next = tokio::time::Instant::now();
    let mut pending = Pending::default();
    loop {
        if pending.reload {
            pending.reload = false;
            reload(config_path, &mut loaded, &mut schedule);
        }
        if !pending.sync_now {
            tokio::select! {
                _ = tokio::time::sleep_until(next) => {}
                event = listener.events.recv() => match event {
                    Some(Event::Reload) => { pending.reload = true; continue }
                    Some(Event::SyncNow) => tracing::info!("SIGUSR1: sync now"),
                    Some(Event::Stop(signal)) => { tracing::info!(signal, "stopping"); break }
                    None => {
                        tracing::error!("signal handling ended unexpectedly: stopping");
                        break
                    }
                },
                _ = run::tick(&mut watchdog) => { notify::watchdog(); continue }
            }
        }
        pending.sync_now = false;
        let ended = run::supervised(
            &loaded,
            &ledger,
            &shared,
            &mut listener.events,
            &mut watchdog,
            &mut pending,
        )
        .await;
        let succeeded = match ended {
            Ended::Stopped => break,
            Ended::Finished(succeeded) => succeeded,
        };
        let wait = schedule.after_run(succeeded, fastrand::f64());
        if !succeeded {
            tracing::info!(
                failures = schedule.failures(),
                retry_in = ?Duration::from_secs(wait.as_secs()),
                "will retry"
            );
        }
        next = tokio::time::Instant::now() + wait;
    }
    notify::stopping();
    ledger.flush().map_err(|e| e.to_string())?;
    tracing::info!("stopped, ledger flushed");
    Ok(())
}

/// SIGHUP: load and check the config and mapping again; on any error keep the running ones.
fn reload(config_path: &Path, loaded: &mut Loaded, schedule: &mut Schedule) {
    notify::reloading();
    match Loaded::load(config_path) {
        Ok(new) => {
            if new.config.state_dir != loaded.config.state_dir {
                tracing::warn!(
                    "reload: `state.directory` changed; the ledger in use stays until a restart"
                );
            }
            if new.config.daemon.listen != loaded.config.daemon.listen {
                tracing::warn!(
                    "reload: `daemon.listen` changed; it takes effect at the next restart"
                );
            }
            schedule.reconfigure(&new.config.daemon);
            *loaded = new;
            tracing::info!(config = %config_path.display(), mapping = %loaded.config.mapping_file.display(), "reloaded the config and the mapping");
            notify::ready("reloaded");
        }
        Err(e) => {
            tracing::error!(error = %e, "reload refused, keeping the running config and mapping");
            notify::ready(&format!("reload refused: {e}"));
        }
    }
}
