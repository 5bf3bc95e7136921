//! The daemon's apply observer: counts actions in the metrics, tells whether applying has
//! begun, and asks apply to stop starting actions once a shutdown is requested.

use std::sync::atomic::{AtomicBool, Ordering};

use super::metrics::Metrics;
use crate::apply::{Observer, Outcome};
use crate::plan::Action;

pub struct RunObserver<'a> {
    metrics: &'a Metrics,
    started: AtomicBool,
    stop: AtomicBool,
}

impl<'a> RunObserver<'a> {
    pub fn new(metrics: &'a Metrics) -> Self {
        RunObserver {
            metrics,
            started: AtomicBool::new(false),
            stop: AtomicBool::new(false),
        }
    }

    /// True once apply has begun: before that, the run has written nothing and can be dropped.
    pub fn applying(&self) -> bool {
        self.started.load(Ordering::SeqCst)
    }

    /// No further action starts; those in flight finish and are recorded.
    pub fn request_stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

impl Observer for RunObserver<'_> {
    fn started(&self, total: usize) {
        self.started.store(true, Ordering::SeqCst);
        if total > 0 {
            tracing::info!(actions = total, "applying the plan");
        }
    }

    fn done(&self, action: &Action, outcome: &Outcome) {
        let result = match outcome {
            Outcome::Done => "done",
            Outcome::Adopted => "adopted",
            Outcome::Failed(_) => "failed",
            Outcome::Refused(_) => "refused",
            Outcome::Conflict(_) => "conflict",
            Outcome::NotTried => "not_tried",
        };
        self.metrics.action(action.kind().name(), result);
    }

    fn should_stop(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
}
