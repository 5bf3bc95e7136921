//! When and how long to wait before retrying a homeserver request.
//!
//! Pure decisions, kept apart from the HTTP client so that every endpoint shares one retry
//! rule and the rule can be tested without a network.

use std::time::Duration;

/// How retries are spaced. The number of retries comes from the config (`max_retries`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The wait before the first retry (before jitter).
    pub base: Duration,
    /// No computed wait is longer than this.
    pub max: Duration,
    /// The longest `retry_after_ms` / `Retry-After` the client honours as given; longer waits
    /// asked by the server are cut to this.
    pub max_retry_after: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: Duration::from_millis(250),
            max: Duration::from_secs(30),
            max_retry_after: Duration::from_secs(300),
        }
    }
}

impl Backoff {
    /// The wait before retry number `retry` (0 for the first retry): exponential, with
    /// "equal jitter" (a random point in the upper half), so that parallel requests that
    /// failed together do not come back together.
    pub fn delay(&self, retry: u32) -> Duration {
        let exp = self
            .base
            .saturating_mul(1u32.checked_shl(retry.min(20)).unwrap_or(u32::MAX))
            .min(self.max);
        let half = exp / 2;
        let jitter_ms = u64::try_from(half.as_millis()).unwrap_or(u64::MAX);
        half + Duration::from_millis(fastrand::u64(0..=jitter_ms))
    }

    /// The wait a 429 asks for, capped at `max_retry_after`; a backoff if it names none.
    pub fn rate_limited_delay(&self, asked: Option<Duration>, retry: u32) -> Duration {
        match asked {
            Some(d) => d.min(self.max_retry_after),
            None => self.delay(retry),
        }
    }
}

/// What to do with the outcome of one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Done: hand the answer (success or a definite error) to the caller.
    Final,
    /// Try again after this wait, because of `reason` (for the log).
    Retry { wait: Duration, reason: String },
}

/// The retry rule for an HTTP status (used for 429 and 5xx; other statuses are final).
/// `retry` is the number of retries already made; `retry_after` is what the server asked.
pub fn for_status(
    backoff: &Backoff,
    status: u16,
    retry_after: Option<Duration>,
    retry: u32,
    max_retries: u32,
) -> Verdict {
    if retry >= max_retries {
        return Verdict::Final;
    }
    match status {
        429 => Verdict::Retry {
            wait: backoff.rate_limited_delay(retry_after, retry),
            reason: match retry_after {
                Some(d) => format!("rate limited (HTTP 429, retry after {} ms)", d.as_millis()),
                None => "rate limited (HTTP 429)".to_string(),
            },
        },
        500..=599 => Verdict::Retry {
            wait: backoff.delay(retry),
            reason: format!("server error (HTTP {status})"),
        },
        _ => Verdict::Final,
    }
}

/// The retry rule for a request that got no usable answer (refused, reset, cut, timed out).
pub fn for_transport(backoff: &Backoff, what: &str, retry: u32, max_retries: u32) -> Verdict {
    if retry >= max_retries {
        return Verdict::Final;
    }
    Verdict::Retry {
        wait: backoff.delay(retry),
        reason: what.to_string(),
    }
}

/// The wait a 429 names: `retry_after_ms` in the JSON body first, then a `Retry-After`
/// header in seconds (the HTTP-date form is not used by Synapse and is ignored).
pub fn retry_after(body: &[u8], header: Option<&str>) -> Option<Duration> {
    let from_body = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("retry_after_ms").and_then(serde_json::Value::as_u64))
        .map(Duration::from_millis);
    from_body.or_else(|| {
        header
            .and_then(|h| h.trim().parse::<u64>().ok())
            .map(Duration::from_secs)
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;

    fn backoff() -> Backoff {
        Backoff {
            base: Duration::from_millis(100),
            max: Duration::from_secs(1),
            max_retry_after: Duration::from_secs(5),
        }
    }

    #[test]
    fn delays_grow_exponentially_within_jitter_and_cap() {
        let b = backoff();
        for _ in 0..200 {
            let d0 = b.delay(0);
            assert!(d0 >= Duration::from_millis(50) && d0 <= Duration::from_millis(100));
            let d2 = b.delay(2);
            assert!(d2 >= Duration::from_millis(200) && d2 <= Duration::from_millis(400));
            let d9 = b.delay(9);
            assert!(d9 >= Duration::from_millis(500) && d9 <= Duration::from_secs(1));
            assert!(b.delay(u32::MAX) <= Duration::from_secs(1));
        }
    }

    #[test]
    fn retry_after_prefers_the_body_then_the_header() {
        let body =
            br#"{"errcode":"M_LIMIT_EXCEEDED","error":"Too Many Requests","retry_after_ms":1234}"#;
        assert_eq!(
            retry_after(body, Some("9")),
            Some(Duration::from_millis(1234))
        );
        assert_eq!(
            retry_after(br#"{"errcode":"M_LIMIT_EXCEEDED"}"#, Some(" 2 ")),
            Some(Duration::from_secs(2))
        );
        assert_eq!(retry_after(b"not json", None), None);
        assert_eq!(
            retry_after(b"", Some("Wed, 21 Oct 2015 07:28:00 GMT")),
            None
        );
    }

    #[test]
    fn statuses_that_are_retried_and_those_that_are_not() {
        let b = backoff();
        for s in [429, 500, 502, 503, 504] {
            assert!(matches!(
                for_status(&b, s, None, 0, 3),
                Verdict::Retry { .. }
            ));
        }
        for s in [400, 401, 403, 404, 409] {
            assert_eq!(for_status(&b, s, None, 0, 3), Verdict::Final);
        }
        // Out of retries.
        assert_eq!(for_status(&b, 500, None, 3, 3), Verdict::Final);
        assert_eq!(for_status(&b, 429, None, 0, 0), Verdict::Final);
        assert_eq!(for_transport(&b, "timed out", 2, 2), Verdict::Final);
    }

    #[test]
    fn a_429_waits_what_it_asks_but_no_longer_than_the_cap() {
        let b = backoff();
        match for_status(&b, 429, Some(Duration::from_millis(700)), 0, 3) {
            Verdict::Retry { wait, reason } => {
                assert_eq!(wait, Duration::from_millis(700));
                assert!(reason.contains("700 ms"), "{reason}");
            }
            Verdict::Final => panic!("429 not retried"),
        }
        match for_status(&b, 429, Some(Duration::from_secs(3600)), 0, 3) {
            Verdict::Retry { wait, .. } => assert_eq!(wait, Duration::from_secs(5)),
            Verdict::Final => panic!("429 not retried"),
        }
    }
}
