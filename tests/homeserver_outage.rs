//! A real Synapse that stops answering while work is pending: paused (SIGSTOP: connections are
//! accepted and never answered) or stopped (nothing listens on its port). Each test has a
//! Synapse of its own. A `sync` must end soon, with one error naming the homeserver and the
//! number of actions not tried; `check` must answer soon; and once the homeserver is back, the
//! next `sync` does the rest. Durations are printed; the bounds are the issue's, generous.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::site::{Run, Site};
use common::{Slapd, Synapse};

/// Agents with work pending when the homeserver stops answering (the 24 updates).
const AGENTS: usize = 24;

/// A site with `AGENTS` agents synced once to a Synapse of its own, whose `[homeserver]`
/// section has `settings` instead of the harness's `max_retries = 1` (so the defaults
/// otherwise: 5 retries, 30 s timeout, 8 in flight, a breaker after 3 failures).
fn synced_site(name: &str, settings: &str) -> (Site, &'static Synapse, BTreeSet<String>) {
    let synapse: &'static Synapse = Box::leak(Box::new(Synapse::start()));
    let site = Site::on_servers(Slapd::shared(), synapse, name);
    let config = std::fs::read_to_string(site.config()).unwrap();
    assert!(config.contains("max_retries = 1\n"));
    std::fs::write(
        site.config(),
        config.replace("max_retries = 1\n", &format!("{settings}\n")),
    )
    .unwrap();
    let mxids = site.add_agents(AGENTS);
    site.sync_ok();
    (site, synapse, mxids)
}

fn timed(site: &Site, args: &[&str]) -> (Run, Duration) {
    let start = Instant::now();
    let run = site.run(args);
    (run, start.elapsed())
}

/// A failed `sync`'s one error: at most `most_failed` FAILED lines (requests that failed
/// before the breaker opened), one "Stopped early" line naming the homeserver and the number
/// of actions not tried; few log warnings.
fn assert_one_error(run: &Run, synapse: &Synapse, says: &str, most_failed: usize) -> String {
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    let failed = run.stdout.matches("FAILED").count();
    assert!(failed <= most_failed, "{}", run.stdout);
    let stopped = run
        .stdout
        .lines()
        .find(|l| l.starts_with("Stopped early, "))
        .unwrap_or_else(|| panic!("no `Stopped early` line:\n{}", run.stdout))
        .to_string();
    assert!(
        stopped.contains(&format!("{} actions not tried", AGENTS - failed)),
        "{stopped}"
    );
    assert!(stopped.contains(says), "{stopped}");
    assert!(stopped.contains(&synapse.url), "{stopped}");
    // At most the retries of the two requests that failed, and their failures.
    let warnings = run.stderr.matches(" WARN ").count();
    assert!(warnings <= 14, "{warnings} warnings:\n{}", run.stderr);
    stopped
}

#[test]
fn a_paused_homeserver_stops_sync_at_once_with_one_error_and_the_next_sync_does_the_rest() {
    let (site, synapse, mxids) = synced_site("paused", "timeout_secs = 5\nrun_deadline = \"60s\"");
    site.move_agents(AGENTS, "RH");
    synapse.pause();
    let (run, took) = timed(&site, &["sync"]);
    synapse.resume();
    eprintln!(
        "sync with Synapse paused, {AGENTS} updates pending, 5 s timeout: exit {} in {took:.1?}\n{}",
        run.code, run.stdout
    );
    // The requests in flight time out together: the first two fail, the third different one
    // opens the breaker, and the rest are given up or not sent.
    let stopped = assert_one_error(&run, synapse, "homeserver not answering: ", 2);
    assert!(
        stopped.contains("3 different requests in a row"),
        "{stopped}"
    );
    // One request timeout (5 s), not its retries; far within the deadline.
    assert!(took < Duration::from_secs(15), "took {took:?}");
    let (code, plan) = site.plan_json();
    assert_eq!(code, 2, "the updates are still pending: {plan}");

    let run = site.sync_ok();
    eprintln!("after SIGCONT:\n{}", run.stdout);
    assert_eq!(site.in_department(&mxids, "RH"), AGENTS);
}

#[test]
fn a_paused_homeserver_that_the_breaker_cannot_see_is_stopped_by_the_run_deadline() {
    // One request at a time and a breaker that never opens: only the deadline ends the run.
    let (site, synapse, mxids) = synced_site(
        "deadline",
        "concurrency = 1\ntimeout_secs = 2\nbreaker_failures = 1000\nrun_deadline = \"7s\"",
    );
    site.move_agents(AGENTS, "DAF");
    synapse.pause();
    let (run, took) = timed(&site, &["sync"]);
    synapse.resume();
    eprintln!(
        "sync with Synapse paused, one request at a time, 2 s timeout, 7 s deadline: exit {} in {took:.1?}\n{}",
        run.code, run.stdout
    );
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    let stopped = run
        .stdout
        .lines()
        .find(|l| l.starts_with("Stopped early, "))
        .unwrap_or_else(|| panic!("{}", run.stdout));
    assert!(
        stopped.contains("run deadline reached") && stopped.contains("7s"),
        "{stopped}"
    );
    // The requests that timed out before the deadline failed; the rest were not tried.
    let failed = run.stdout.matches("FAILED").count();
    assert!((1..=4).contains(&failed), "{}", run.stdout);
    assert!(
        stopped.contains(&format!("{} actions not tried", AGENTS - failed)),
        "{stopped}"
    );
    assert!(
        took >= Duration::from_secs(7) && took < Duration::from_secs(12),
        "took {took:?}"
    );
    site.sync_ok();
    assert_eq!(site.in_department(&mxids, "DAF"), AGENTS);
}

#[test]
fn a_stopped_homeserver_fails_sync_in_seconds_and_check_answers_at_once() {
    // The defaults: 5 retries, 30 s timeout, 8 requests in flight.
    let (site, synapse, mxids) = synced_site("stopped", "");
    site.move_agents(AGENTS, "SG");
    synapse.stop();

    let (run, took) = timed(&site, &["sync"]);
    eprintln!(
        "sync with nothing listening, defaults: exit {} in {took:.1?}\n{}",
        run.code, run.stdout
    );
    assert_one_error(&run, synapse, "homeserver not answering: ", 0);
    assert!(took < Duration::from_secs(30), "took {took:?}");

    // One request at a time: each of the first failures rides out its retries (seconds).
    let config = std::fs::read_to_string(site.config()).unwrap();
    let one_at_a_time = config.replace(
        "access_token_file = \"token\"\n",
        "access_token_file = \"token\"\nconcurrency = 1\n",
    );
    std::fs::write(site.config(), &one_at_a_time).unwrap();
    let (run, took) = timed(&site, &["sync"]);
    eprintln!(
        "sync with nothing listening, one request at a time: exit {} in {took:.1?}",
        run.code
    );
    // The first two, each through its retries, fail; the third different one opens it.
    assert_one_error(&run, synapse, "homeserver not answering: ", 2);
    assert!(took < Duration::from_secs(30), "took {took:?}");

    let (run, took) = timed(&site, &["check"]);
    eprintln!(
        "check with nothing listening: exit {} in {took:.1?}\n{}",
        run.code, run.stdout
    );
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    assert!(took < Duration::from_secs(15), "took {took:?}");
    assert!(
        run.stdout.contains("OK      directory search"),
        "{}",
        run.stdout
    );
    for step in ["homeserver token", "homeserver admin API"] {
        let line = run
            .stdout
            .lines()
            .find(|l| l.contains(step))
            .unwrap_or_else(|| panic!("no {step} line:\n{}", run.stdout));
        assert!(line.starts_with("FAILED  "), "{line}");
        assert!(line.contains(&synapse.url), "{line}");
    }
    // The first request that got no answer says so; the next is not sent.
    assert!(
        run.stdout
            .contains("FAILED  homeserver token: homeserver not answering: "),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout
            .contains("FAILED  homeserver admin API: not asked: homeserver not answering: "),
        "{}",
        run.stdout
    );

    std::fs::write(site.config(), config).unwrap();
    synapse.start_again();
    site.sync_ok();
    assert_eq!(site.in_department(&mxids, "SG"), AGENTS);
}
