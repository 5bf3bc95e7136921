//! `check`: every step from the config file to the homeserver, each with OK or FAILED and why.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use crate::clock::{Clock, SystemClock};
use crate::config::{Config, HomeserverConfig};
use crate::directory::{Directory, Snapshot};
use crate::homeserver::{Homeserver, HomeserverError, SynapseClient};
use crate::ledger::{Ledger, LedgerError};
use crate::mapping::{map_snapshot, LoginPath, Rules};
use crate::pipeline::{agent_query, undeclared_login};

struct Report {
    failures: usize,
    warnings: usize,
}

impl Report {
    fn step<T, E: std::fmt::Display>(
        &mut self,
        what: &str,
        result: Result<T, E>,
        ok: impl FnOnce(&T) -> String,
    ) -> Option<T> {
        match result {
            Ok(value) => {
                println!("OK      {what}: {}", ok(&value));
                Some(value)
            }
            Err(e) => {
                println!("FAILED  {what}: {e}");
                self.failures += 1;
                None
            }
        }
    }

    /// A finding that does not fail the check.
    fn warn(&mut self, what: &str, warning: &str) {
        println!("WARN    {what}: {warning}");
        self.warnings += 1;
    }
}

pub async fn run(config_path: &Path) -> ExitCode {
    let mut report = Report {
        failures: 0,
        warnings: 0,
    };
    let Some(config) = report.step("config", Config::load(config_path), |c| {
        c.source.display().to_string()
    }) else {
        return ExitCode::FAILURE;
    };
    let rules = report.step("mapping", Rules::load(&config.mapping_file), |r| {
        format!("{} (agents: {})", r.source.display(), r.agent.filter)
    });
    report.step("state directory", state_dir_usable(&config), |p| p.clone());

    let connected = report.step(
        "directory bind",
        Directory::connect(&config.directory).await,
        |d| {
            format!(
                "{} ({}) as {}",
                d.server(),
                d.kind().name(),
                config.directory.bind_dn
            )
        },
    );
    if let (Some(mut directory), Some(rules)) = (connected, rules.as_ref()) {
        let read = directory
            .read_snapshot(
                &config.directory.base_dns,
                &agent_query(rules),
                config.directory.page_size,
                config.directory.timeout,
            )
            .await;
        let snapshot = report.step("directory search", read, |s| {
            format!(
                "{} agents under {}, {} without a usable id",
                s.entries.len(),
                config.directory.base_dns.join("; "),
                s.skipped.len()
            )
        });
        directory.close().await;
        if let Some(snapshot) = snapshot {
            check_logins(&mut report, rules, &snapshot);
        }
    }

    if let Some(client) = report.step(
        "homeserver client",
        SynapseClient::new(&for_check(&config.homeserver)),
        |_| config.homeserver.url.to_string(),
    ) {
        report.step(
            "homeserver token",
            client.whoami().await.map_err(said),
            |mxid| format!("token belongs to {mxid}"),
        );
        report.step(
            "homeserver admin API",
            client.check_admin().await.map_err(said),
            |v| format!("reachable, version {v}"),
        );
    }

    if report.failures == 0 {
        match report.warnings {
            0 => println!("All checks passed."),
            n => println!("All checks passed, with {n} warning(s)."),
        }
        ExitCode::SUCCESS
    } else {
        println!("{} check(s) failed.", report.failures);
        ExitCode::FAILURE
    }
}

/// Whether agents' logins will reach the accounts a sync gives them (a first sync: `plan`
/// also checks the accounts the ledger already has). Warnings only: a login problem does not
/// stop the daemon from syncing.
fn check_logins(report: &mut Report, rules: &Rules, snapshot: &Snapshot) {
    let login = &rules.login;
    if login.path == LoginPath::Undeclared {
        report.warn("login", &undeclared_login(rules));
        return;
    }
    println!(
        "OK      login: {}",
        login.describe(&rules.agent.filter, &rules.departure)
    );
    let desired = map_snapshot(snapshot, rules, SystemClock.now());
    for warning in login.warnings(desired.accounts.iter().map(|a| (a, a.localpart.as_str()))) {
        report.warn("login", &warning);
    }
}

/// The longest `check` waits for one answer from the homeserver (less if `timeout_secs` is).
const CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// The homeserver settings for a diagnosis, which must answer soon: the first request that
/// gets no answer opens the breaker, so the next steps say "not answering" at once instead of
/// each going through its retries; and no answer is awaited longer than [`CHECK_TIMEOUT`].
fn for_check(homeserver: &HomeserverConfig) -> HomeserverConfig {
    HomeserverConfig {
        timeout: homeserver.timeout.min(CHECK_TIMEOUT),
        breaker_failures: 1,
        ..homeserver.clone()
    }
}

/// A homeserver error as a step reports it: a request the open breaker kept back says so.
fn said(e: HomeserverError) -> String {
    match e {
        HomeserverError::Halted {
            halt,
            unanswered: None,
        } => format!("not asked: {halt}"),
        e => e.to_string(),
    }
}

/// The state directory exists (or can be made) and holds a ledger this build can open.
fn state_dir_usable(config: &Config) -> Result<String, String> {
    let dir = &config.state_dir;
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let ledger = match Ledger::open(dir) {
        Ok(ledger) => ledger,
        // The running daemon holds it: usable (it is being used).
        Err(LedgerError::Locked { path }) => {
            return Ok(format!("{} (in use by the running daemon)", path.display()))
        }
        Err(e) => return Err(e.to_string()),
    };
    Ok(format!(
        "{} ({} managed accounts)",
        ledger.path().display(),
        ledger.account_count().map_err(|e| e.to_string())?
    ))
}
