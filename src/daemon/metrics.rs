//! The daemon's Prometheus metrics (OpenMetrics text, through `prometheus-client`), all
//! prefixed `matrix_ldap_sync_`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Metric, Registry};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ShadowLabel {
    departed: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FoundLabel {
    found: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HeldLabel {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActionLabels {
    kind: String,
    result: String,
}

/// How one run ended, as the `outcome` label of `runs_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunOutcome {
    /// Every planned action applied.
    Ok,
    /// Applied, but some actions failed.
    Partial,
    /// Applying stopped early (bad token, shutdown).
    Aborted,
    /// The directory could not be read completely: nothing planned.
    DirectoryError,
    HomeserverError,
    /// The homeserver did not answer (the breaker opened, or no answer at all): stopped.
    HomeserverUnavailable,
    /// The run reached its deadline after applying some of the plan; the next run goes on.
    Deadline,
    LedgerError,
    /// The brake refused the plan.
    Braked,
}

impl RunOutcome {
    pub fn name(self) -> &'static str {
        match self {
            RunOutcome::Ok => "ok",
            RunOutcome::Partial => "partial",
            RunOutcome::Aborted => "aborted",
            RunOutcome::DirectoryError => "directory_error",
            RunOutcome::HomeserverError => "homeserver_error",
            RunOutcome::HomeserverUnavailable => "homeserver_unavailable",
            RunOutcome::Deadline => "deadline",
            RunOutcome::LedgerError => "ledger_error",
            RunOutcome::Braked => "braked",
        }
    }
}

pub struct Metrics {
    registry: Registry,
    runs: Family<OutcomeLabel, Counter>,
    run_duration: Histogram,
    agents: Gauge,
    planned: Gauge,
    managed_accounts: Gauge,
    actions: Family<ActionLabels, Counter>,
    last_success: Gauge,
    last_complete_read: Gauge,
    brake_engaged: Gauge,
    directory_up: Gauge,
    homeserver_up: Gauge,
    held_agents: Family<HeldLabel, Gauge>,
    intents_resolved: Family<FoundLabel, Counter>,
    shadow_accounts: Family<ShadowLabel, Gauge>,
    incremental_fallbacks: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut r = Registry::with_prefix("matrix_ldap_sync");
        let metrics = Metrics {
            runs: register(&mut r, "runs", "Sync runs by outcome", Family::default()),
            run_duration: register(
                &mut r,
                "run_duration_seconds",
                "Duration of sync runs",
                // 0.5 s … ~4.5 h
                Histogram::new(exponential_buckets(0.5, 2.0, 16)),
            ),
            agents: register(
                &mut r,
                "agents",
                "Agents read from the directory in the last complete read",
                Gauge::default(),
            ),
            planned: register(
                &mut r,
                "planned_actions",
                "Actions in the last run's plan",
                Gauge::default(),
            ),
            managed_accounts: register(
                &mut r,
                "managed_accounts",
                "Accounts in the ledger",
                Gauge::default(),
            ),
            actions: register(
                &mut r,
                "actions",
                "Applied actions by kind and result (done, adopted, failed, not_tried)",
                Family::default(),
            ),
            last_success: register(
                &mut r,
                "last_success_timestamp_seconds",
                "Unix time at which the last fully successful run ended (0: none yet)",
                Gauge::default(),
            ),
            last_complete_read: register(
                &mut r,
                "last_complete_read_timestamp_seconds",
                "Unix time at which the last run that read the whole directory (not only its changes) ended",
                Gauge::default(),
            ),
            brake_engaged: register(
                &mut r,
                "brake_engaged",
                "1 while the brake holds back a plan, waiting for an operator",
                Gauge::default(),
            ),
            directory_up: register(
                &mut r,
                "directory_up",
                "1 if the last run read the directory completely, 0 if it could not",
                Gauge::default(),
            ),
            homeserver_up: register(
                &mut r,
                "homeserver_up",
                "0 while the homeserver is not answering (live during a run, and after a run it stopped), 1 otherwise",
                Gauge::default(),
            ),
            held_agents: register(
                &mut r,
                "held_agents",
                "Agents the daemon does nothing for until something changes, by reason (conflict: their mxid is an account not theirs; refused: the homeserver refused their action)",
                Family::default(),
            ),
            intents_resolved: register(
                &mut r,
                "intents_resolved",
                "Writes an interrupted run left unfinished, resolved from the homeserver's real state, by what was found (applied, not_applied)",
                Family::default(),
            ),
            shadow_accounts: register(
                &mut r,
                "shadow_accounts",
                "Accounts the daemon does not manage that an agent can log in to, as of the last complete read; departed=\"true\" and not locked is a security finding (see `status`)",
                Family::default(),
            ),
            incremental_fallbacks: register(
                &mut r,
                "incremental_fallbacks",
                "Runs that read the whole directory because it could not give an incremental read that can be trusted (cookie refused, another server, a contradictory refresh)",
                Counter::default(),
            ),
            registry: r,
        };
        // Not known to be silent before a run has asked it anything.
        metrics.homeserver_up.set(1);
        metrics
    }

    /// The shadow accounts of the last complete read: of agents present, and of departed
    /// agents still open.
    pub fn shadows(&self, present: usize, departed_open: usize) {
        for (departed, n) in [("false", present), ("true", departed_open)] {
            self.shadow_accounts
                .get_or_create(&ShadowLabel {
                    departed: departed.into(),
                })
                .set(clamp(n));
        }
    }

    /// Counts the unfinished writes a run resolved before planning.
    pub fn intents_resolved(&self, applied: usize, not_applied: usize) {
        for (found, n) in [("applied", applied), ("not_applied", not_applied)] {
            self.intents_resolved
                .get_or_create(&FoundLabel {
                    found: found.into(),
                })
                .inc_by(u64::try_from(n).unwrap_or(u64::MAX));
        }
    }

    /// How many agents are held back by a conflict and by a refusal.
    pub fn held(&self, conflicts: usize, refused: usize) {
        for (reason, count) in [("conflict", conflicts), ("refused", refused)] {
            self.held_agents
                .get_or_create(&HeldLabel {
                    reason: reason.into(),
                })
                .set(clamp(count));
        }
    }

    pub fn run_finished(&self, outcome: RunOutcome, seconds: f64) {
        self.runs
            .get_or_create(&OutcomeLabel {
                outcome: outcome.name().into(),
            })
            .inc();
        self.run_duration.observe(seconds);
        self.directory_up
            .set(i64::from(outcome != RunOutcome::DirectoryError));
    }

    pub fn homeserver_up(&self, up: bool) {
        self.homeserver_up.set(i64::from(up));
    }

    pub fn read_directory(&self, agents: usize, planned: usize) {
        self.agents.set(clamp(agents));
        self.planned.set(clamp(planned));
    }

    pub fn managed_accounts(&self, count: usize) {
        self.managed_accounts.set(clamp(count));
    }

    pub fn action(&self, kind: &str, result: &str) {
        self.actions
            .get_or_create(&ActionLabels {
                kind: kind.into(),
                result: result.into(),
            })
            .inc();
    }

    pub fn succeeded_at(&self, unix: i64) {
        self.last_success.set(unix);
    }

    pub fn read_everything_at(&self, unix: i64) {
        self.last_complete_read.set(unix);
    }

    /// A run read everything because an incremental read could not be had or trusted.
    pub fn incremental_fallback(&self) {
        self.incremental_fallbacks.inc();
    }

    pub fn brake(&self, engaged: bool) {
        self.brake_engaged.set(i64::from(engaged));
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// Registers `metric` (a handle sharing its value) and returns it.
fn register<M: Metric + Clone>(registry: &mut Registry, name: &str, help: &str, metric: M) -> M {
    registry.register(name, help, metric.clone());
    metric
}

fn clamp(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_has_every_family_with_labels() {
        let m = Metrics::new();
        m.run_finished(RunOutcome::Ok, 1.5);
        m.run_finished(RunOutcome::HomeserverUnavailable, 30.0);
        m.run_finished(RunOutcome::DirectoryError, 0.1);
        m.action("create_account", "done");
        m.read_directory(36, 4);
        m.succeeded_at(1_700_000_000);
        m.incremental_fallback();
        let text = m.encode().unwrap();
        for line in [
            "matrix_ldap_sync_runs_total{outcome=\"ok\"} 1",
            "matrix_ldap_sync_runs_total{outcome=\"directory_error\"} 1",
            "matrix_ldap_sync_run_duration_seconds_count 3",
            "matrix_ldap_sync_actions_total{kind=\"create_account\",result=\"done\"} 1",
            "matrix_ldap_sync_agents 36",
            "matrix_ldap_sync_last_success_timestamp_seconds 1700000000",
            "matrix_ldap_sync_brake_engaged 0",
            "matrix_ldap_sync_directory_up 0",
            "matrix_ldap_sync_homeserver_up 1",
            "matrix_ldap_sync_runs_total{outcome=\"homeserver_unavailable\"} 1",
            "matrix_ldap_sync_incremental_fallbacks_total 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
    }
}
