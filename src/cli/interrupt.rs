//! SIGINT and SIGTERM during a command (not the daemon, which handles its own): the command
//! stops where it waits and is dropped, which waits for a ledger still opening and flushes the
//! ledger, and the process ends with 128 + the signal's number. The signals' default action
//! would end the process at once, possibly while sled writes the snapshot it makes when it
//! opens the store, leaving that file half-written.

use std::future::Future;
use std::process::ExitCode;

use tokio::signal::unix::{signal, SignalKind};

/// Exit code of a command stopped by SIGINT (128 + 2).
pub const EXIT_SIGINT: u8 = 130;
/// Exit code of a command stopped by SIGTERM (128 + 15).
pub const EXIT_SIGTERM: u8 = 143;

/// Runs `command` until it ends or SIGINT / SIGTERM comes. Call before the command starts: from
/// then on these signals no longer end the process by themselves.
pub async fn or_interrupted<F>(command: F) -> Result<ExitCode, String>
where
    F: Future<Output = Result<ExitCode, String>>,
{
    let (mut interrupt, mut terminate) = match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(i), Ok(t)) => (i, t),
        (Err(e), _) | (_, Err(e)) => {
            tracing::warn!(error = %e, "cannot handle SIGINT/SIGTERM: they end the command at once");
            return command.await;
        }
    };
    let (name, code) = tokio::select! {
        outcome = command => return outcome,
        _ = interrupt.recv() => ("SIGINT", EXIT_SIGINT),
        _ = terminate.recv() => ("SIGTERM", EXIT_SIGTERM),
    };
    // The command is dropped by now: its ledger closed.
    eprintln!("interrupted by {name}: stopped, the ledger is closed");
    Ok(ExitCode::from(code))
}
