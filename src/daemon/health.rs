//! What `/health` answers: ok, or degraded with the reasons an operator should act on.

use serde::Serialize;

use super::metrics::RunOutcome;
use crate::homeserver::Liveness;

/// The daemon's health as of its last run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Health {
    /// The last run could not read the directory completely.
    pub directory_unreachable: Option<String>,
    /// The homeserver is not answering: as the last run ended, or live while a run goes on
    /// (and cleared live as soon as it answers again). Begins with "homeserver not answering".
    pub homeserver_not_answering: Option<String>,
    /// The last run failed or stopped early for another reason.
    pub last_run_failed: Option<String>,
    /// The brake holds back a plan until an operator decides.
    pub brake_engaged: Option<String>,
    /// Unix time of the end of the last fully successful run.
    pub last_success: Option<i64>,
    /// Runs finished since the daemon started.
    pub runs: u64,
    /// What an admin should look at that does not make the daemon unhealthy: agents held
    /// back by a conflict or a refusal (each one agent's problem, not the service's).
    pub warnings: Vec<String>,
    /// The last run reached its deadline after applying part of the plan: not a failure, the
    /// next run goes on at once (a warning).
    pub cut_short: Option<String>,
}

impl Health {
    /// Takes in a finished run: `message` says what went wrong, if anything.
    pub fn record(&mut self, outcome: RunOutcome, message: Option<&str>, now: i64) {
        let message = message.unwrap_or(outcome.name()).to_string();
        self.runs += 1;
        self.directory_unreachable = None;
        self.homeserver_not_answering = None;
        self.last_run_failed = None;
        self.brake_engaged = None;
        self.cut_short = None;
        match outcome {
            RunOutcome::Ok => self.last_success = Some(now),
            RunOutcome::DirectoryError => self.directory_unreachable = Some(message),
            RunOutcome::HomeserverUnavailable => self.homeserver_not_answering = Some(message),
            RunOutcome::Deadline => self.cut_short = Some(message),
            RunOutcome::Braked => self.brake_engaged = Some(message),
            RunOutcome::Partial
            | RunOutcome::Aborted
            | RunOutcome::HomeserverError
            | RunOutcome::LedgerError => self.last_run_failed = Some(message),
        }
    }

    /// Why the daemon is degraded; empty when it is ok.
    pub fn reasons(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(e) = &self.directory_unreachable {
            out.push(format!("directory unreachable: {e}"));
        }
        if let Some(e) = &self.homeserver_not_answering {
            out.push(e.clone());
        }
        if let Some(e) = &self.last_run_failed {
            out.push(format!("last run failed: {e}"));
        }
        if let Some(e) = &self.brake_engaged {
            out.push(format!("brake engaged: {e}"));
        }
        out
    }

    /// The warnings for `conflicts` and `refused` held agents.
    pub fn held(&mut self, conflicts: usize, refused: usize) {
        self.warnings.clear();
        if conflicts > 0 {
            self.warnings.push(format!("{conflicts} agent(s) left alone: their mxid is held by an account the daemon may not take over (see `status`, `plan`)"));
        }
        if refused > 0 {
            self.warnings.push(format!(
                "{refused} agent(s) refused by the homeserver (see `status`, `explain`)"
            ));
        }
    }

    /// Takes in what the homeserver client sees now; returns whether the homeserver went from
    /// answering to not answering or back (a new detail of the same silence is kept, but is
    /// not a change to announce). Nothing seen yet (a run that has asked nothing) changes
    /// nothing.
    pub fn homeserver(&mut self, live: &Liveness) -> bool {
        let now = match live {
            Liveness::NotAnswering(why) => Some(why.clone()),
            Liveness::Answering => None,
            Liveness::Unknown => return false,
        };
        let changed = self.homeserver_not_answering.is_some() != now.is_some();
        self.homeserver_not_answering = now;
        changed
    }

    /// Every warning: held agents, and a run cut short by its deadline.
    pub fn all_warnings(&self) -> Vec<String> {
        let mut out = self.warnings.clone();
        out.extend(self.cut_short.iter().cloned());
        out
    }

    pub fn is_ok(&self) -> bool {
        self.reasons().is_empty()
    }

    /// The `/health` body.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "status": if self.is_ok() { "ok" } else { "degraded" },
            "reasons": self.reasons(),
            "warnings": self.all_warnings(),
            "runs": self.runs,
            "last_success": self.last_success,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn each_failure_kind_has_its_reason_and_a_good_run_clears_them() {
        let mut h = Health::default();
        assert!(h.is_ok(), "no run yet is not a failure");
        h.record(RunOutcome::DirectoryError, Some("ldap://x: refused"), 10);
        assert_eq!(
            h.reasons(),
            vec!["directory unreachable: ldap://x: refused"]
        );
        h.record(RunOutcome::Partial, Some("2 action(s) failed"), 11);
        assert_eq!(h.reasons(), vec!["last run failed: 2 action(s) failed"]);
        h.record(RunOutcome::Braked, Some("12 deactivations > 10"), 12);
        assert_eq!(h.reasons(), vec!["brake engaged: 12 deactivations > 10"]);
        assert_eq!(h.to_json()["status"], "degraded");
        h.record(RunOutcome::Ok, None, 13);
        assert!(h.is_ok());
        assert_eq!(h.last_success, Some(13));
        assert_eq!(h.runs, 4);
        assert_eq!(h.to_json()["status"], "ok");
    }

    #[test]
    fn a_homeserver_not_answering_degrades_live_and_recovers_live() {
        let mut h = Health::default();
        let why = "homeserver not answering: https://hs/: 3 requests in a row got no answer";
        h.record(RunOutcome::HomeserverUnavailable, Some(why), 10);
        assert_eq!(h.reasons(), vec![why.to_string()]);
        assert_eq!(h.to_json()["status"], "degraded");
        // The next run has asked nothing yet: still not answering.
        assert!(!h.homeserver(&Liveness::Unknown));
        assert!(!h.is_ok());
        // It answers: healthy at once, before the run ends.
        assert!(h.homeserver(&Liveness::Answering));
        assert!(h.is_ok());
        assert!(!h.homeserver(&Liveness::Answering));
        // Silent again, live; a new detail of the same silence is shown, not announced.
        assert!(h.homeserver(&Liveness::NotAnswering(why.into())));
        assert_eq!(h.reasons(), vec![why.to_string()]);
        assert!(!h.homeserver(&Liveness::NotAnswering(
            "homeserver not answering: x".into()
        )));
        assert_eq!(h.reasons(), vec!["homeserver not answering: x".to_string()]);
        h.record(RunOutcome::Ok, None, 20);
        assert!(h.is_ok());
    }

    #[test]
    fn a_run_cut_by_its_deadline_after_progress_is_a_warning() {
        let mut h = Health::default();
        h.held(0, 1);
        h.record(RunOutcome::Deadline, Some("run deadline reached"), 10);
        assert!(h.is_ok());
        let json = h.to_json();
        assert_eq!(json["status"], "ok");
        assert_eq!(json["warnings"].as_array().unwrap().len(), 2, "{json}");
        assert_eq!(json["warnings"][1], "run deadline reached");
        h.record(RunOutcome::Ok, None, 11);
        assert!(h.all_warnings().len() == 1);
    }
}
