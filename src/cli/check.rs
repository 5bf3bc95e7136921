//! `check`: every step from the config file to the homeserver, each with OK or FAILED and why.

use std::path::Path;
use std::process::ExitCode;

use crate::config::Config;
use crate::directory::Directory;
use crate::homeserver::{Homeserver, SynapseClient};
use crate::ledger::{Ledger, LedgerError};
use crate::mapping::Rules;
use crate::pipeline::agent_query;

struct Report {
    failures: usize,
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
}

pub async fn run(config_path: &Path) -> ExitCode {
    let mut report = Report { failures: 0 };
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
        report.step("directory search", read, |s| {
            format!(
                "{} agents under {}, {} without a usable id",
                s.entries.len(),
                config.directory.base_dns.join("; "),
                s.skipped.len()
            )
        });
        directory.close().await;
    }

    if let Some(client) = report.step(
        "homeserver client",
        SynapseClient::new(&config.homeserver),
        |_| config.homeserver.url.to_string(),
    ) {
        report.step("homeserver token", client.whoami().await, |mxid| {
            format!("token belongs to {mxid}")
        });
        report.step("homeserver admin API", client.check_admin().await, |v| {
            format!("reachable, version {v}")
        });
    }

    if report.failures == 0 {
        println!("All checks passed.");
        ExitCode::SUCCESS
    } else {
        println!("{} check(s) failed.", report.failures);
        ExitCode::FAILURE
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
