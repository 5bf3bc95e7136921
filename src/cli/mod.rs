//! The command line: `check`, `plan`, `sync`, `status`.

mod check;
mod progress;
mod render;
mod render_rooms;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use crate::clock::SystemClock;
use crate::config::{Config, DEFAULT_CONFIG_PATH};
use crate::homeserver::SynapseClient;
use crate::ledger::{Ledger, LedgerView};
use crate::mapping::Rules;
use crate::pipeline;

/// Exit code of `plan` when changes are pending.
pub const EXIT_CHANGES_PENDING: u8 = 2;

#[derive(Parser, Debug)]
#[command(
    name = "matrix-ldap-sync",
    version,
    about = "Keeps a Matrix homeserver's accounts in step with an LDAP / Active Directory directory.",
    long_about = "Keeps a Matrix homeserver's accounts in step with an LDAP / Active Directory directory.\n\n\
        Reads every agent from the directory, maps each one to an account with the rules in the mapping \
        file, compares with what it applied before (its ledger) and creates or updates accounts through \
        the Synapse admin API. `plan` shows what `sync` would do, without doing it.",
    after_help = "Examples:\n  \
        matrix-ldap-sync -c /etc/matrix-ldap-sync/config.toml check\n  \
        matrix-ldap-sync plan                 # dry run, readable; exit 2 if changes are pending\n  \
        matrix-ldap-sync plan --json | jq .   # dry run for scripts\n  \
        matrix-ldap-sync sync                 # apply once\n  \
        matrix-ldap-sync status"
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

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Check the config and mapping, bind to the directory and count agents, reach the homeserver
    /// with the admin token. Each step says OK or FAILED and why; exit 1 if any failed.
    Check,
    /// Dry run: read the directory and show what `sync` would change. Changes nothing.
    /// Exit 0: nothing to do; 2: changes pending; 1: error.
    Plan {
        /// Print the plan as JSON (for scripts) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Read the directory and apply the changes once, then print a summary.
    Sync {
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show the ledger: managed accounts and the last run.
    Status {
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum LogFormat {
    Human,
    Json,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
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
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<ExitCode, String> {
    let load = || Config::load(&cli.config).map_err(|e| e.to_string());
    match cli.command {
        Command::Check => Ok(check::run(&cli.config).await),
        Command::Plan { json } => plan(&load()?, json).await,
        Command::Sync { json } => sync(&load()?, json).await,
        Command::Status { json } => status(&load()?, json),
    }
}

async fn plan(config: &Config, json: bool) -> Result<ExitCode, String> {
    let rules = Rules::load(&config.mapping_file).map_err(|e| e.to_string())?;
    // A dry run must not create state: with no ledger yet, everything is new.
    let view = if Ledger::exists(&config.state_dir) {
        Ledger::open(&config.state_dir)
            .and_then(|l| l.view())
            .map_err(|e| e.to_string())?
    } else {
        LedgerView::default()
    };
    // Reads room state from the homeserver when the rules give rooms; writes nothing.
    let homeserver = SynapseClient::new(&config.homeserver).map_err(|e| e.to_string())?;
    let preview = pipeline::preview_with(config, &rules, &view, Some(&homeserver))
        .await
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

async fn sync(config: &Config, json: bool) -> Result<ExitCode, String> {
    let rules = Rules::load(&config.mapping_file).map_err(|e| e.to_string())?;
    let ledger = Ledger::open(&config.state_dir).map_err(|e| e.to_string())?;
    let homeserver = SynapseClient::new(&config.homeserver).map_err(|e| e.to_string())?;
    let bar = progress::ProgressBar::default();
    let result = pipeline::sync(config, &rules, &ledger, &homeserver, &SystemClock, &bar)
        .await
        .map_err(|e| e.to_string())?;
    bar.finish();
    if json {
        println!("{}", render::sync_json(&result));
    } else {
        print!("{}", render::sync_text(&result));
    }
    let clean = result.report.failed.is_empty()
        && result.report.rooms.failed.is_empty()
        && result.report.aborted.is_none();
    Ok(if clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn status(config: &Config, json: bool) -> Result<ExitCode, String> {
    if !Ledger::exists(&config.state_dir) {
        return Err(format!(
            "no ledger in {} yet: run `sync` first",
            config.state_dir.display()
        ));
    }
    let ledger = Ledger::open(&config.state_dir).map_err(|e| e.to_string())?;
    let view = ledger.view().map_err(|e| e.to_string())?;
    let last_run = ledger.last_run().map_err(|e| e.to_string())?;
    if json {
        println!("{}", render::status_json(&view, last_run.as_ref()));
    } else {
        print!(
            "{}",
            render::status_text(ledger.path(), &view, last_run.as_ref())
        );
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
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Human => builder.with_target(false).init(),
        LogFormat::Json => builder.json().init(),
    }
}
