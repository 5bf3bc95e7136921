//! A progress bar for long `sync` runs, shown only on a terminal.

use std::io::IsTerminal;

use crate::apply::{Observer, Outcome};
use crate::plan::Action;

/// Runs below this size finish too fast for a bar to help.
const MIN_ACTIONS_FOR_A_BAR: usize = 20;

pub struct ProgressBar {
    bar: indicatif::ProgressBar,
}

impl Default for ProgressBar {
    fn default() -> Self {
        ProgressBar {
            bar: indicatif::ProgressBar::hidden(),
        }
    }
}

impl Observer for ProgressBar {
    fn started(&self, total: usize) {
        if total < MIN_ACTIONS_FOR_A_BAR || !std::io::stderr().is_terminal() {
            return;
        }
        self.bar
            .set_draw_target(indicatif::ProgressDrawTarget::stderr());
        self.bar.set_length(total as u64);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} actions ({per_sec}, about {eta} left) {msg}",
        ) {
            self.bar.set_style(style);
        }
    }

    fn done(&self, action: &Action, outcome: &Outcome) {
        if let Outcome::Failed(_) = outcome {
            self.bar
                .set_message(format!("last failure: {}", action.mxid()));
        }
        self.bar.inc(1);
    }
}

impl ProgressBar {
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
