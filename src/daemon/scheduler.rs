//! When the next run starts: every interval (plus jitter) after a good run; after a failed one,
//! a retry that starts soon and backs off (doubling) up to the interval.

use std::time::Duration;

use crate::config::DaemonConfig;

#[derive(Debug, Clone)]
pub struct Schedule {
    interval: Duration,
    jitter: Duration,
    retry_min: Duration,
    /// Failed runs in a row.
    failures: u32,
}

impl Schedule {
    pub fn new(config: &DaemonConfig) -> Schedule {
        Schedule {
            interval: config.interval,
            jitter: config.jitter,
            retry_min: config.retry_min,
            failures: 0,
        }
    }

    /// Takes the new settings after a reload, keeping the failure count.
    pub fn reconfigure(&mut self, config: &DaemonConfig) {
        self.interval = config.interval;
        self.jitter = config.jitter;
        self.retry_min = config.retry_min;
    }

    /// The wait before the next run, given how the last one went; `random` is in `[0, 1)`.
    pub fn after_run(&mut self, succeeded: bool, random: f64) -> Duration {
        if succeeded {
            self.failures = 0;
            return self.interval + self.jitter.mul_f64(random.clamp(0.0, 1.0));
        }
        self.failures = self.failures.saturating_add(1);
        let doublings = (self.failures - 1).min(20);
        self.retry_min
            .saturating_mul(1 << doublings)
            .min(self.interval.max(self.retry_min))
    }

    /// Failed runs in a row so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(interval: u64, jitter: u64, retry: u64) -> Schedule {
        Schedule::new(&DaemonConfig {
            interval: Duration::from_secs(interval),
            jitter: Duration::from_secs(jitter),
            retry_min: Duration::from_secs(retry),
            shutdown_timeout: Duration::from_secs(1),
            listen: None,
        })
    }

    #[test]
    fn success_waits_the_interval_plus_jitter() {
        let mut s = schedule(300, 30, 10);
        assert_eq!(s.after_run(true, 0.0), Duration::from_secs(300));
        assert_eq!(s.after_run(true, 0.5), Duration::from_secs(315));
        assert!(s.after_run(true, 0.999_999) < Duration::from_secs(330));
    }

    #[test]
    fn failures_back_off_doubling_up_to_the_interval_then_reset() {
        let mut s = schedule(300, 30, 10);
        let waits: Vec<u64> = (0..7).map(|_| s.after_run(false, 0.5).as_secs()).collect();
        assert_eq!(waits, vec![10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(s.failures(), 7);
        assert_eq!(s.after_run(true, 0.0), Duration::from_secs(300));
        assert_eq!(s.after_run(false, 0.0), Duration::from_secs(10));
    }

    #[test]
    fn many_failures_do_not_overflow() {
        let mut s = schedule(300, 0, 10);
        for _ in 0..1000 {
            assert!(s.after_run(false, 0.0) <= Duration::from_secs(300));
        }
    }

    #[test]
    fn a_retry_longer_than_the_interval_is_kept() {
        let mut s = schedule(5, 0, 10);
        assert_eq!(s.after_run(false, 0.0), Duration::from_secs(10));
    }
}
