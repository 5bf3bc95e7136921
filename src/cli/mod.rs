//! The command line: `check`, `plan`, `sync`, `run`, `status`, `history`, `explain`,
//! `migrate-ids`.

mod check;
mod explain;
mod interrupt;
mod migrate;
mod now;
mod progress;
mod render;
mod render_rooms;
mod repair;
mod status;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};

use crate::clock::{Clock, SystemClock};
use crate::config::{Config, DEFAULT_CONFIG_PATH};
use crate::homeserver::SynapseClient;
use crate::ledger::{Ledger, LedgerError};
use crate::mapping::Rules;
use crate::pipeline::{self, LedgerCell, RunError, State};

pub use interrupt::{EXIT_SIGINT, EXIT_SIGTERM};
pub use now::TEST_NOW_VAR;

/// Exit code of `plan` when changes are pending.
pub const EXIT_CHANGES_PENDING: u8 = 2;
/// Exit code of `sync` when the brake held departures (or, the scope having changed, the whole
/// plan) back.
pub const EXIT_BRAKE_ENGAGED: u8 = 3;

#[derive(Parser, Debug)]
#[command(
    name = "matrix-ldap-sync",
    version,
    about = "Keeps a Matrix homeserver's accounts in step with an LDAP / Active Directory directory.",
    long_about = "Keeps a Matrix homeserver's accounts in step with an LDAP / Active Directory directory.\n\n\
        Reads every agent from the directory, maps each one to an account with the rules in the mapping \
        file, compares with what it applied before (its ledger) and creates, updates, suspends and \
        deactivates accounts through the Synapse admin API. Agents who leave are suspended (or locked) \
        first and deactivated after a grace period; a brake holds back departures when a plan looks \
        like an accident. `plan` shows what `sync` would do, without doing it.",
    after_help = "Examples:\n  \
        matrix-ldap-sync -c /etc/matrix-ldap-sync/config.toml check\n  \
        matrix-ldap-sync plan                         # dry run; exit 2 if changes are pending\n  \
        matrix-ldap-sync plan --json | jq .counts     # dry run for scripts\n  \
        matrix-ldap-sync sync                         # apply once\n  \
        matrix-ldap-sync sync --allow-mass-changes    # apply departures the brake held back, once\n  \
        matrix-ldap-sync run                          # daemon: sync every daemon.interval_secs\n  \
        matrix-ldap-sync explain jean.martin          # what the daemon knows and would do about one person\n  \
        matrix-ldap-sync migrate-ids                  # after changing the id attribute: how accounts match agents\n  \
        matrix-ldap-sync history --user @jean.martin:example.org\n  \
        matrix-ldap-sync repair --dry-run             # a ledger that does not open: what sled left half-written"
)]
pub struct Cli {
    /// The config file.
    #[arg(short, long, global = true, env = "MATRIX_LDAP_SYNC_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
    config: PathBuf,

    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,

    /// More log detail (-v: debug, -vv: trace). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,

    /// Only warnings and errors in the log.
    #[arg(short, long, global = true)]
    quiet: bool,

    /// Preview as if it were this time (RFC 3339, e.g. 2026-12-31T09:00:00Z): `plan --now …`
    /// shows when departures and expiry dates fall due. Previews only (`plan`, `explain`,
    /// `status`): commands that write refuse it (exit 2), as they record what they do at the
    /// real time.
    #[arg(long, global = true, value_parser = parse_time)]
    now: Option<i64>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Check the config and mapping, bind to the directory and count agents, reach the homeserver
    /// with the admin token. Each step says OK or FAILED and why; exit 1 if any failed.
    Check,
    /// Dry run: read the directory and show what `sync` would change, and whether the brake
    /// would hold anything back. Changes nothing. Exit 0: nothing to do; 2: changes pending; 1: error.
    Plan {
        /// Print the plan as JSON (for scripts) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Read the directory and apply the changes once, then print a summary.
    /// Exit 0: done; 1: an error or a failed action; 3: the brake held departures (or, the
    /// scope having changed, everything) back.
    Sync {
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
        /// Apply departures even though the brake would hold them back (after reviewing `plan`),
        /// or the whole plan of a changed agent filter or base DNs (accepting the new scope).
        /// Applies to this run only. A changed id attribute needs `migrate-ids` instead.
        #[arg(long)]
        allow_mass_changes: bool,
        /// Read only what changed in the directory since the last complete read (as the daemon
        /// does between complete reads), when the server offers it and the last complete read
        /// is recent enough (`directory.full_sync_every`); otherwise read everything.
        #[arg(long)]
        incremental: bool,
    },
    /// Run as a daemon: sync every `daemon.interval_secs`, retry failures with a backoff.
    /// SIGHUP reloads the config and mapping, SIGUSR1 syncs now, SIGTERM/SIGINT stop after the
    /// actions in flight. Tells systemd (Type=notify) when ready; serves /health and /metrics
    /// on `daemon.listen` if set.
    Run,
    /// Show the ledger: managed accounts, departures in their grace period, the last run and
    /// whether the brake is engaged. While the daemon runs (it holds the ledger), shows the
    /// summary it wrote after its last run (`status.json`).
    Status {
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show the audit trail: every action applied (or failed), when and why.
    History {
        /// Only this account (mxid or localpart).
        #[arg(long)]
        user: Option<String>,
        /// Only the newest N entries.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
    /// What the daemon knows and would do about one person, and why: their directory entry,
    /// their account, the planned actions and the recent history. Reads the directory.
    Explain {
        /// A login (localpart or the rules' login attribute), an mxid, a DN or an e-mail.
        who: String,
    },
    /// A ledger that does not open ("damaged"): move aside what sled left half-written when a
    /// process ended while it opened the store (into the ledger's `quarantine/` folder, never
    /// deleted), then open it and show what it holds. Stop the daemon first. Exit 0: the
    /// ledger opens; 1: it still does not.
    Repair {
        /// Only say what would be moved.
        #[arg(long)]
        dry_run: bool,
    },
    /// After the mapping's id attribute changed: match each managed account (keyed by its old
    /// id) to its agent — by the old id attribute's value when the entry still has it, else by
    /// DN, else by e-mail — and list what matches and what does not. Writes nothing unless
    /// `--apply`: then every account gets its agent's new id in the ledger (crash-safe: run it
    /// again if it was killed), and the next `sync` plans against the new ids. Stop the daemon
    /// first.
    /// Exit 0: done (dry run or applied); 1: an error, or `--apply` refused.
    MigrateIds {
        /// The id attribute the ledger's keys come from (default: the last good run's).
        #[arg(long, value_name = "ATTRIBUTE")]
        from_attribute: Option<String>,
        /// Its format (default: the last good run's, `guid` for objectGUID, else `text`).
        #[arg(long, value_enum, value_name = "FORMAT")]
        from_format: Option<IdFormatArg>,
        /// Re-key the ledger (without it: a dry run).
        #[arg(long)]
        apply: bool,
        /// With `--apply`: re-key the accounts that match even though some match no agent or
        /// ambiguously (those keep their old ids).
        #[arg(long)]
        allow_unmatched: bool,
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// How an id attribute is encoded (the mapping's `id_format`).
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum IdFormatArg {
    Text,
    Guid,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum LogFormat {
    Human,
    Json,
}

fn parse_time(text: &str) -> Result<i64, String> {
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map(|t| t.unix_timestamp())
        .map_err(|e| format!("not an RFC 3339 time like 2026-12-31T09:00:00Z: {e}"))
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(why) = cli.now.and(now::refusal(&cli.command)) {
        // A usage error, reported as clap reports any other (exit 2), before anything runs.
        Cli::command()
            .error(clap::error::ErrorKind::ArgumentConflict, why)
            .exit();
    }
    init_logging(&cli);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // The daemon answers signals itself; any other command is stopped and its ledger closed.
    let daemon = matches!(cli.command, Command::Run);
    let outcome = runtime.block_on(async {
        match daemon {
            true => run(cli).await,
            false => interrupt::or_interrupted(run(cli)).await,
        }
    });
    // The command is done: idle worker threads are not worth waiting for.
    runtime.shutdown_background();
    match outcome {
        Ok(code) => code,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<ExitCode, String> {
    let load = || Config::load(&cli.config).map_err(|e| e.to_string());
    let clock = now::clock(cli.now)?;
    match cli.command {
        Command::Check => Ok(check::run(&cli.config).await),
        Command::Plan { json } => plan(&load()?, clock.as_ref(), json).await,
        Command::Sync {
            json,
            allow_mass_changes,
            incremental,
        } => {
            let options = pipeline::SyncOptions {
                allowed_departures: allow_mass_changes.then_some(usize::MAX),
                incremental,
            };
            sync(&load()?, clock.as_ref(), json, options).await
        }
        Command::Run => crate::daemon::run(&cli.config)
            .await
            .map(|()| ExitCode::SUCCESS),
        Command::Status { json } => status(&load()?, json),
        Command::History { user, limit, json } => history(&load()?, user.as_deref(), limit, json),
        Command::Explain { who } => explain::run(&load()?, &who, clock.now()).await,
        Command::Repair { dry_run } => repair::run(&load()?, dry_run),
        Command::MigrateIds {
            from_attribute,
            from_format,
            apply,
            allow_unmatched,
            json,
        } => {
            let options = migrate::Options {
                from_attribute,
                from_format: from_format.map(|f| match f {
                    IdFormatArg::Text => crate::directory::IdFormat::Text,
                    IdFormatArg::Guid => crate::directory::IdFormat::Guid,
                }),
                apply,
                allow_unmatched,
                json,
            };
            migrate::run(&load()?, clock.as_ref(), options).await
        }
    }
}

/// The ledger's state for a dry run, which must not create state: no ledger yet means
/// everything is new.
fn read_state(config: &Config) -> Result<State, String> {
    if !Ledger::exists(&config.state_dir) {
        return Ok(State::default());
    }
    let ledger = Ledger::open(&config.state_dir).map_err(|e| e.to_string())?;
    State::read(&ledger).map_err(|e| e.to_string())
}

fn open_existing(config: &Config) -> Result<Ledger, String> {
    if !Ledger::exists(&config.state_dir) {
        return Err(format!(
            "no ledger in {} yet: run `sync` first",
            config.state_dir.display()
        ));
    }
    Ledger::open(&config.state_dir).map_err(|e| e.to_string())
}

async fn plan(config: &Config, clock: &dyn Clock, json: bool) -> Result<ExitCode, String> {
    let rules = Rules::load(&config.mapping_file).map_err(|e| e.to_string())?;
    // Reads room state from the homeserver when the rules give rooms; writes nothing.
    let homeserver = SynapseClient::new(&config.homeserver).map_err(|e| e.to_string())?;
    let now = clock.now();
    // A dry run must not create state: no ledger yet means everything is new.
    let preview = if Ledger::exists(&config.state_dir) {
        let ledger = LedgerCell::opening(config.state_dir.clone());
        pipeline::preview_reading(config, &rules, &ledger, now, Some(&homeserver), false).await
    } else {
        pipeline::preview_with(config, &rules, &State::default(), now, Some(&homeserver)).await
    }
    .map_err(|e| e.to_string())?;
    if json {
        println!("{}", render::plan_json(&preview));
    } else {
        print!("{}", render::plan_text(&preview));
    }
    Ok(if preview.plan.has_changes() {
        ExitCode::from(EXIT_CHANGES_PENDING)
    } else {
        ExitCode::SUCCESS
    })
}

async fn sync(
    config: &Config,
    clock: &dyn Clock,
    json: bool,
    options: pipeline::SyncOptions,
) -> Result<ExitCode, String> {
    let allow_mass_changes = options.allowed_departures.is_some();
    let rules = Rules::load(&config.mapping_file).map_err(|e| e.to_string())?;
    let homeserver = SynapseClient::new(&config.homeserver).map_err(|e| e.to_string())?;
    // Opened while the directory is read; a lock held by the daemon stops the run before any
    // change.
    let ledger = LedgerCell::opening(config.state_dir.clone());
    let bar = progress::ProgressBar::default();
    let result =
        match pipeline::sync(config, &rules, &ledger, &homeserver, clock, options, &bar).await {
            Ok(result) => result,
            Err(RunError::Ledger(LedgerError::Locked { .. })) if allow_mass_changes => {
                return approve_for_daemon(config)
            }
            Err(e) => return Err(e.to_string()),
        };
    bar.finish();
    if json {
        println!("{}", render::sync_json(&result));
    } else {
        print!("{}", render::sync_text(&result));
    }
    let failed = !result.report.failed.is_empty() || !result.report.rooms.failed.is_empty();
    let code = if failed || result.report.aborted.is_some() {
        ExitCode::FAILURE
    } else if result.held_back > 0 {
        ExitCode::from(EXIT_BRAKE_ENGAGED)
    } else {
        ExitCode::SUCCESS
    };
    // The process ends here and the system takes its memory back at once: freeing a large
    // directory's accounts one by one would only delay the exit (~40 ms per 100,000), and so
    // would closing the ledger (sled's drop walks every page it has cached). Safe: the run
    // waited for the ledger's opening (the only time sled writes a snapshot) and flushed
    // every write; an exit now is one between writes, which sled's log is made for.
    std::mem::forget(result);
    std::mem::forget(ledger);
    Ok(code)
}

fn status(config: &Config, json: bool) -> Result<ExitCode, String> {
    if !Ledger::exists(&config.state_dir) {
        return Err(format!(
            "no ledger in {} yet: run `sync` first",
            config.state_dir.display()
        ));
    }
    let ledger = match Ledger::open(&config.state_dir) {
        Ok(ledger) => ledger,
        Err(e @ LedgerError::Locked { .. }) => return daemon_status(config, json, &e),
        Err(e) => return Err(e.to_string()),
    };
    let view = ledger.view().map_err(|e| e.to_string())?;
    let last_run = ledger.last_run().map_err(|e| e.to_string())?;
    let point = ledger.sync_point().map_err(|e| e.to_string())?;
    let shadows = ledger.shadows().map_err(|e| e.to_string())?;
    if json {
        println!(
            "{}",
            status::status_json(&view, &shadows, last_run.as_ref(), point.as_ref())
        );
    } else {
        let grace = i64::try_from(config.departures.grace.as_secs()).unwrap_or(i64::MAX);
        print!(
            "{}",
            status::status_text(ledger.path(), &view, &shadows, last_run.as_ref(), grace)
        );
        print!(
            "{}",
            status::sync_point_text(point.as_ref(), config.directory.full_sync_every)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `sync --allow-mass-changes` while the daemon holds the ledger: leaves it an approval for
/// the departures its last run held back, used by its next run (SIGUSR1 runs it now).
fn approve_for_daemon(config: &Config) -> Result<ExitCode, String> {
    use crate::daemon::{approval, status_file};
    let status = status_file::read(&config.state_dir)
        .map_err(|e| format!("the daemon holds the ledger and its status is unreadable: {e}"))?;
    let held = status.last_run.as_ref().map(|r| r.held_back).unwrap_or(0);
    if held == 0 {
        return Err("the daemon holds the ledger and its last run held nothing back: there is nothing to approve".into());
    }
    if status.last_run.as_ref().is_some_and(|r| r.needs_migration) {
        return Err(format!(
            "the daemon's last run was held because the agents' ids changed ({}): no approval can accept that, \
             every agent would get a second account. Stop the daemon, run `migrate-ids` (a dry run), then \
             `migrate-ids --apply`, and start it again",
            status.last_run.as_ref().and_then(|r| r.brake.as_deref()).unwrap_or("the id attribute changed")
        ));
    }
    let approval = approval::Approval {
        approved_at: SystemClock.now(),
        max_departures: held,
    };
    approval::write(&config.state_dir, &approval)
        .map_err(|e| format!("cannot write the approval: {e}"))?;
    let what = match status.last_run.as_ref().is_some_and(|r| r.held_everything) {
        true => "action(s) of a plan under the new scope",
        false => "departure(s)",
    };
    println!(
        "The daemon (pid {}) holds the ledger. Approved: its next run may apply up to {held} {what} past the brake \
         (more than that and the brake holds again). Run it now with: kill -USR1 {}",
        status.pid, status.pid
    );
    Ok(ExitCode::SUCCESS)
}

/// `status` while the daemon holds the ledger: what it wrote after its last run.
fn daemon_status(
    config: &Config,
    json: bool,
    open_error: &LedgerError,
) -> Result<ExitCode, String> {
    let status = crate::daemon::status_file::read(&config.state_dir)
        .map_err(|e| format!("{open_error}; and no daemon status to show instead: {e}"))?;
    if json {
        println!("{}", status::daemon_status_json(&status));
    } else {
        let path = crate::daemon::status_file::path(&config.state_dir);
        print!("{}", status::daemon_status_text(&path, &status));
    }
    Ok(ExitCode::SUCCESS)
}

fn history(
    config: &Config,
    user: Option<&str>,
    limit: usize,
    json: bool,
) -> Result<ExitCode, String> {
    let ledger = open_existing(config)?;
    let mxid = user.map(|u| match u.starts_with('@') {
        true => u.to_string(),
        false => format!("@{u}:{}", config.homeserver.server_name),
    });
    let mut entries = ledger
        .audit_trail(mxid.as_deref())
        .map_err(|e| e.to_string())?;
    let skip = entries.len().saturating_sub(limit);
    entries.drain(..skip);
    if json {
        println!(
            "{}",
            serde_json::to_string(&entries).map_err(|e| e.to_string())?
        );
    } else {
        print!("{}", status::history_text(&entries));
    }
    Ok(ExitCode::SUCCESS)
}

fn init_logging(cli: &Cli) {
    use tracing_subscriber::EnvFilter;
    let default = match (cli.quiet, cli.verbose) {
        (true, _) => "warn",
        (false, 0) => "matrix_ldap_sync=info,warn",
        (false, 1) => "matrix_ldap_sync=debug,info",
        (false, _) => "matrix_ldap_sync=trace,debug",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Human => builder.with_target(false).init(),
        LogFormat::Json => builder.json().init(),
    }
}
