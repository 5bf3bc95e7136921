//! Unix signals as daemon events: SIGHUP reloads, SIGTERM/SIGINT stop gracefully, SIGUSR1
//! runs a sync now. signal-hook's handlers only set flags; a tokio task turns them into
//! [`Event`]s on a channel the main loop reads.

use futures::StreamExt;
use signal_hook::consts::signal::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};
use signal_hook_tokio::{Handle, Signals};
use tokio::sync::mpsc;

/// What a signal asks the daemon to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// SIGHUP: reload the config and the mapping.
    Reload,
    /// SIGTERM or SIGINT: finish the action in flight and exit.
    Stop(&'static str),
    /// SIGUSR1: start a sync now (or right after the one in flight).
    SyncNow,
}

/// The signals being listened to; dropping it stops listening.
pub struct Listener {
    pub events: mpsc::UnboundedReceiver<Event>,
    handle: Handle,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.handle.close();
    }
}

/// Installs the handlers (replacing the default actions, which would kill the process) and
/// starts forwarding. Call it first, before anything that takes time.
pub fn listen() -> std::io::Result<Listener> {
    let signals = Signals::new([SIGHUP, SIGTERM, SIGINT, SIGUSR1])?;
    let handle = signals.handle();
    let (tx, events) = mpsc::unbounded_channel();
    tokio::spawn(forward(signals, tx));
    Ok(Listener { events, handle })
}

async fn forward(mut signals: Signals, tx: mpsc::UnboundedSender<Event>) {
    while let Some(signal) = signals.next().await {
        let event = match signal {
            SIGHUP => Event::Reload,
            SIGUSR1 => Event::SyncNow,
            SIGINT => Event::Stop("SIGINT"),
            _ => Event::Stop("SIGTERM"),
        };
        if tx.send(event).is_err() {
            return;
        }
    }
}
