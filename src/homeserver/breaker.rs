//! When a homeserver client stops sending: its circuit breaker, and the run's deadline.
//!
//! Retries ride out a blip on one request. When several *different* requests fail in a row
//! (no answer, a timeout, a 5xx) with no answer in between, the homeserver is not answering:
//! the breaker opens ("halts" the client), requests waiting for an answer or a retry give up,
//! and new ones fail at once without being sent. A run then stops in about one request
//! timeout, with one error, instead of taking every action through all its retries.
//!
//! A request retried five times counts once (one bad request is that request's problem);
//! any answer below 500 — a refusal, a 429 — proves the homeserver answers and starts the
//! count again. The run's deadline halts the client the same way. A halted client stays
//! halted until [`Breaker::reset`], which the next run calls: it asks the homeserver again.

use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::watch;

/// A failure followed by an answer within this long is a blip, not worth reporting as "not
/// answering" (the first three retries of a refused connection fit in it).
const BLIP: Duration = Duration::from_secs(2);

/// Why a client stopped sending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Halt {
    /// `failures` different requests in a row got no answer (or a 5xx).
    NotAnswering {
        /// The homeserver's URL.
        homeserver: String,
        failures: u32,
        /// The last failure: method, endpoint and what happened.
        last: String,
    },
    /// The run reached its deadline (`homeserver.run_deadline`).
    Deadline { after: Duration },
}

impl fmt::Display for Halt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Halt::NotAnswering {
                homeserver,
                failures: 1,
                last,
            } => write!(
                f,
                "homeserver not answering: {homeserver}: a request got no answer or a server error ({last})"
            ),
            Halt::NotAnswering {
                homeserver,
                failures,
                last,
            } => write!(
                f,
                "homeserver not answering: {homeserver}: {failures} different requests in a row got no answer or a server error (last: {last})"
            ),
            Halt::Deadline { after } => write!(
                f,
                "run deadline reached: the run had {} (homeserver.run_deadline); what is left is for the next run",
                humantime::format_duration(*after)
            ),
        }
    }
}

/// What the client last saw of the homeserver, for a live `/health`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Liveness {
    /// Nothing answered nor failed since the last reset.
    Unknown,
    Answering,
    /// Requests fail and nothing answered for longer than a blip (or the breaker is open):
    /// why, beginning with "homeserver not answering".
    NotAnswering(String),
}

/// One request's place in the count: it counts once until the next answer, however many
/// times it is retried.
#[derive(Debug, Default)]
pub struct Ticket {
    counted_in: Option<u64>,
}

#[derive(Debug, Default)]
struct State {
    /// Different requests that failed since the last answer.
    failing: u32,
    /// Moves on at each answer: a ticket counted in an older epoch counts again.
    epoch: u64,
    /// When the first of those failures was seen.
    failing_since: Option<Instant>,
    last_failure: Option<String>,
    answered: bool,
    halt: Option<Halt>,
}

/// The breaker of one homeserver client (see the module documentation).
#[derive(Debug)]
pub struct Breaker {
    homeserver: String,
    threshold: u32,
    state: Mutex<State>,
    /// `true` while halted: wakes the requests waiting for an answer or a retry.
    halted: watch::Sender<bool>,
}

impl Breaker {
    /// A breaker for the homeserver at `homeserver` (its URL, for messages) that opens when
    /// `threshold` different requests fail in a row (at least 1).
    pub fn new(homeserver: &str, threshold: u32) -> Breaker {
        Breaker {
            homeserver: homeserver.to_string(),
            threshold: threshold.max(1),
            state: Mutex::default(),
            halted: watch::Sender::new(false),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The homeserver answered (any status below 500).
    pub fn answered(&self) {
        let mut s = self.state();
        s.failing = 0;
        s.epoch += 1;
        s.failing_since = None;
        s.answered = true;
    }

    /// A request failed (no answer, a timeout, a 5xx): `what` says which and how. Returns why
    /// the client is halted if it is now, this failure having opened the breaker or not.
    pub fn failed(&self, ticket: &mut Ticket, what: &str) -> Option<Halt> {
        self.failed_at(ticket, what, Instant::now())
    }

    fn failed_at(&self, ticket: &mut Ticket, what: &str, now: Instant) -> Option<Halt> {
        let mut s = self.state();
        if ticket.counted_in != Some(s.epoch) {
            ticket.counted_in = Some(s.epoch);
            s.failing += 1;
        }
        s.failing_since.get_or_insert(now);
        s.last_failure = Some(what.to_string());
        if s.halt.is_none() && s.failing >= self.threshold {
            let halt = Halt::NotAnswering {
                homeserver: self.homeserver.clone(),
                failures: s.failing,
                last: what.to_string(),
            };
            tracing::error!(
                homeserver = %self.homeserver,
                failures = s.failing,
                last = what,
                "homeserver not answering: no more requests this run"
            );
            s.halt = Some(halt);
            self.halted.send_replace(true);
        }
        s.halt.clone()
    }

    /// Halts the client (unless it is already: the first reason stays).
    pub fn halt(&self, why: Halt) {
        let mut s = self.state();
        if s.halt.is_none() {
            s.halt = Some(why);
            self.halted.send_replace(true);
        }
    }

    /// Why the client is halted, if it is.
    pub fn halted(&self) -> Option<Halt> {
        self.state().halt.clone()
    }

    /// Resolves once the client is halted, with why.
    pub async fn until_halted(&self) -> Halt {
        let mut rx = self.halted.subscribe();
        loop {
            if rx.wait_for(|halted| *halted).await.is_err() {
                // The sender lives as long as `self`: never reached, but never resolve early.
                return std::future::pending::<Halt>().await;
            }
            if let Some(halt) = self.halted() {
                return halt;
            }
            // Reset in between: wait for the next halt.
        }
    }

    /// Forgets everything: the next request is sent whatever happened before (a new run).
    pub fn reset(&self) {
        *self.state() = State::default();
        self.halted.send_replace(false);
    }

    /// What the client last saw of the homeserver.
    pub fn liveness(&self) -> Liveness {
        self.liveness_at(Instant::now())
    }

    fn liveness_at(&self, now: Instant) -> Liveness {
        let s = self.state();
        if let Some(halt @ Halt::NotAnswering { .. }) = &s.halt {
            return Liveness::NotAnswering(halt.to_string());
        }
        match s.failing_since {
            Some(since) if now.saturating_duration_since(since) >= BLIP => {
                Liveness::NotAnswering(format!(
                    "homeserver not answering: {}: {} request(s) got no answer or a server error since the last answer (last: {})",
                    self.homeserver,
                    s.failing,
                    s.last_failure.as_deref().unwrap_or("-")
                ))
            }
            _ if s.answered => Liveness::Answering,
            _ => Liveness::Unknown,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;

    const HS: &str = "https://matrix.example.org/";

    #[test]
    fn different_requests_failing_in_a_row_open_it_and_name_the_homeserver() {
        let b = Breaker::new(HS, 3);
        let (mut a, mut c, mut d) = (Ticket::default(), Ticket::default(), Ticket::default());
        assert_eq!(b.failed(&mut a, "PUT /a: timed out"), None);
        assert_eq!(b.failed(&mut c, "PUT /c: timed out"), None);
        let halt = b.failed(&mut d, "PUT /d: timed out").unwrap();
        assert_eq!(
            halt,
            Halt::NotAnswering {
                homeserver: HS.into(),
                failures: 3,
                last: "PUT /d: timed out".into()
            }
        );
        let text = halt.to_string();
        assert!(text.starts_with("homeserver not answering: "), "{text}");
        assert!(text.contains(HS) && text.contains("PUT /d"), "{text}");
        // Open: every later request is told at once, and it stays open after an answer
        // (the run is stopping) until a new run resets it.
        assert_eq!(b.halted(), Some(halt.clone()));
        b.answered();
        assert_eq!(b.halted(), Some(halt));
        b.reset();
        assert_eq!(b.halted(), None);
        assert_eq!(b.liveness(), Liveness::Unknown);
    }

    #[test]
    fn one_request_retried_many_times_counts_once() {
        let b = Breaker::new(HS, 2);
        let mut a = Ticket::default();
        for _ in 0..10 {
            assert_eq!(b.failed(&mut a, "GET /a: HTTP 500"), None);
        }
        let mut other = Ticket::default();
        assert!(b.failed(&mut other, "GET /b: HTTP 502").is_some());
    }

    #[test]
    fn an_answer_in_between_starts_the_count_again() {
        let b = Breaker::new(HS, 2);
        let (mut a, mut c) = (Ticket::default(), Ticket::default());
        assert_eq!(b.failed(&mut a, "a"), None);
        b.answered();
        // The same request failing again after an answer is a new failure in the new count.
        assert_eq!(b.failed(&mut a, "a"), None);
        b.answered();
        assert_eq!(b.failed(&mut c, "c"), None);
        assert!(b.failed(&mut a, "a").is_some());
    }

    #[test]
    fn a_threshold_of_one_opens_on_the_first_failure() {
        let b = Breaker::new(HS, 0);
        assert!(b.failed(&mut Ticket::default(), "x").is_some());
    }

    #[test]
    fn the_first_halt_reason_stays() {
        let b = Breaker::new(HS, 5);
        let deadline = Halt::Deadline {
            after: Duration::from_secs(3600),
        };
        b.halt(deadline.clone());
        assert!(deadline.to_string().contains("1h"), "{deadline}");
        for _ in 0..5 {
            let _ = b.failed(&mut Ticket::default(), "x");
        }
        assert_eq!(b.halted(), Some(deadline));
    }

    #[test]
    fn liveness_ignores_a_blip_and_reports_a_lasting_silence() {
        let b = Breaker::new(HS, 3);
        let t0 = Instant::now();
        assert_eq!(b.liveness_at(t0), Liveness::Unknown);
        b.answered();
        assert_eq!(b.liveness_at(t0), Liveness::Answering);
        b.failed_at(&mut Ticket::default(), "GET /x: cannot connect", t0);
        assert_eq!(
            b.liveness_at(t0 + Duration::from_millis(500)),
            Liveness::Answering
        );
        match b.liveness_at(t0 + BLIP) {
            Liveness::NotAnswering(why) => {
                assert!(why.starts_with("homeserver not answering: "), "{why}");
                assert!(why.contains("cannot connect") && why.contains(HS), "{why}");
            }
            other => panic!("{other:?}"),
        }
        b.answered();
        assert_eq!(b.liveness_at(t0 + BLIP), Liveness::Answering);
        // A deadline is not a silence.
        b.halt(Halt::Deadline {
            after: Duration::from_secs(1),
        });
        assert_eq!(b.liveness_at(t0 + BLIP), Liveness::Answering);
    }

    #[tokio::test]
    async fn waiters_wake_when_halted_and_not_before() {
        let b = std::sync::Arc::new(Breaker::new(HS, 1));
        let waiter = {
            let b = b.clone();
            tokio::spawn(async move { b.until_halted().await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished());
        b.halt(Halt::Deadline {
            after: Duration::from_secs(1),
        });
        let halt = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap();
        assert!(matches!(halt, Halt::Deadline { .. }), "{halt:?}");
        // Already halted: resolves at once.
        tokio::time::timeout(Duration::from_secs(1), b.until_halted())
            .await
            .unwrap();
    }
}
