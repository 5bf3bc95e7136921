//! The ledger survives the process's own exits: failed runs, half-written leftovers, kills.
//! The real binary against a real slapd and a real Synapse, on one ledger per test.
//!
//! `LEDGER_TORTURE_RUNS` (default 250, about two minutes) sets how many commands the torture
//! test kills or lets fail; `LEDGER_TORTURE_SEED` replays one run; `LEDGER_FAILED_RUNS` (default
//! 40) the rounds of `sync; plan` against a directory that refuses the read.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::accounts::{DAY, T0};
use common::binary;
use common::site::{Settings, Site};
use serde_json::Value;

/// A site with `n` agents and a mapping whose `employeeType=departed` is a departure, with a
/// 7-day grace period.
fn site_with_agents(name: &str, n: usize) -> Site {
    let site = Site::new(name);
    site.configure(&settings(&site));
    let ldif: String = (0..n)
        .map(|i| {
            format!(
                "dn: uid=a{i},{ou}\nobjectClass: inetOrgPerson\nuid: a{i}\ncn: Agent {i}\ngivenName: Agent\nsn: Nombre{i} {tag}\n\n",
                ou = site.ou,
                tag = site.tag
            )
        })
        .collect();
    site.slapd.add_ldif(&ldif);
    site
}

fn settings(_site: &Site) -> Settings {
    Settings {
        mapping_extra: "\n[departure]\ndisabled = [{ attribute = \"employeeType\", values = [\"departed\"] }]\n"
            .into(),
        page_size: Some(500),
        config_extra: "\n[departures]\ngrace = \"7d\"\n\n[brake]\nmax_departures_percent = 100.0\nmax_shrink_percent = 100.0\n\n[daemon]\ninterval_secs = 1\njitter_secs = 0\nretry_min_secs = 1\nshutdown_timeout_secs = 2\n".into(),
        ..Settings::default()
    }
}

/// The site's settings with the `limited` bind: slapd stops its read after 3 entries.
fn limited(site: &Site) -> Settings {
    Settings {
        bind: Some((
            site.slapd.limited_dn.clone(),
            site.slapd.limited_password.clone(),
        )),
        ..settings(site)
    }
}

/// The audit trail, as `history --json` prints it.
fn trail(site: &Site) -> Vec<Value> {
    let run = site.run(&["history", "--limit", "1000000", "--json"]);
    assert_eq!(run.code, 0, "history: {}\n{}", run.stdout, run.stderr);
    serde_json::from_str(&run.stdout).unwrap()
}

/// The grace clocks, as `status` shows them: one line per departing account with the time
/// its deactivation is due.
fn grace_clocks(site: &Site) -> Vec<String> {
    let run = site.run(&["status"]);
    assert_eq!(run.code, 0, "status: {}\n{}", run.stdout, run.stderr);
    run.stdout
        .lines()
        .filter(|l| l.contains("deactivation due"))
        .map(str::to_string)
        .collect()
}

/// One good sync, then a departure that starts its grace period: the trail and the clocks.
fn good_ledger(site: &Site) -> (Vec<Value>, Vec<String>) {
    site.sync_ok_at(T0);
    site.set_attr("a0", "employeeType", &["departed"]);
    site.sync_ok_at(T0 + DAY);
    let clocks = grace_clocks(site);
    assert_eq!(clocks.len(), 1, "{clocks:?}");
    (trail(site), clocks)
}

#[test]
fn failed_reads_beside_the_opening_ledger_never_damage_it() {
    // The failure as reported: after a good sync, `sync; plan` with a size-limited bind, again
    // and again. Each `plan` opened the ledger (sled writes a snapshot while opening) beside a
    // directory read that failed in milliseconds, and the process exited mid-snapshot.
    let site = site_with_agents("failexit", env_or("LEDGER_AGENTS", 300));
    let (before, clocks) = good_ledger(&site);
    site.configure(&limited(&site));
    let rounds = env_or("LEDGER_FAILED_RUNS", 40);
    for round in 0..rounds {
        for args in [&["sync"][..], &["plan"][..]] {
            let run = site.run(args);
            assert_eq!(
                run.code, 1,
                "round {round}, {args:?}: {}\n{}",
                run.stdout, run.stderr
            );
            assert!(
                run.stderr.to_lowercase().contains("size limit"),
                "round {round}, {args:?}: {}",
                run.stderr
            );
        }
    }
    site.configure(&settings(&site));
    assert_eq!(trail(&site), before);
    assert_eq!(grace_clocks(&site), clocks);
    site.sync_ok_at(T0 + 2 * DAY);
}

/// A count from the environment (to run a test larger than in CI), or the default.
fn env_or(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The ledger's sled folder.
fn store(site: &Site) -> PathBuf {
    site.dir.path().join("state").join("ledger")
}

/// What a process that ends while sled opens the store leaves: the next snapshot, created and
/// never written (named after the newest one, one LSN further). Returns its path.
fn plant_half_written_snapshot(site: &Site) -> PathBuf {
    let store = store(site);
    let newest = std::fs::read_dir(&store)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            u64::from_str_radix(name.strip_prefix("snap.")?, 16).ok()
        })
        .max()
        .expect("sled wrote a snapshot");
    let leftover = store.join(format!("snap.{:016X}.generating", newest + 1));
    std::fs::write(&leftover, b"").unwrap();
    leftover
}

/// The files kept in the ledger's `quarantine/` folder.
fn quarantined(site: &Site) -> Vec<String> {
    match std::fs::read_dir(store(site).join("quarantine")) {
        Ok(entries) => entries
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    }
}

#[test]
fn a_half_written_snapshot_is_set_aside_with_the_trail_and_grace_clocks_intact() {
    let site = site_with_agents("leftover", 5);
    let (before, clocks) = good_ledger(&site);

    // `repair --dry-run` names it and moves nothing.
    let leftover = plant_half_written_snapshot(&site);
    let name = leftover.file_name().unwrap().to_string_lossy().into_owned();
    let dry = site.run(&["repair", "--dry-run"]);
    assert_eq!(dry.code, 0, "{}\n{}", dry.stdout, dry.stderr);
    assert!(
        dry.stdout.contains(&format!("{name} (0 bytes): empty")),
        "{}",
        dry.stdout
    );
    assert!(dry.stdout.contains("nothing moved"), "{}", dry.stdout);
    assert!(leftover.exists());

    // Any command opens the ledger again: the leftover moved aside with a warning naming it.
    let history = site.run(&["history", "--limit", "1000000", "--json"]);
    assert_eq!(history.code, 0, "{}", history.stderr);
    assert!(
        history.stderr.contains("WARN") && history.stderr.contains(&name),
        "{}",
        history.stderr
    );
    assert!(!leftover.exists());
    let kept = quarantined(&site);
    assert!(kept.len() == 1 && kept[0].ends_with(&name), "{kept:?}");
    assert_eq!(
        serde_json::from_str::<Vec<Value>>(&history.stdout).unwrap(),
        before
    );
    assert_eq!(grace_clocks(&site), clocks);

    // `repair` does it explicitly and says what the ledger holds.
    let leftover = plant_half_written_snapshot(&site);
    let name = leftover.file_name().unwrap().to_string_lossy().into_owned();
    let repair = site.run(&["repair"]);
    assert_eq!(repair.code, 0, "{}\n{}", repair.stdout, repair.stderr);
    assert!(
        repair.stdout.contains(&format!("Moved {name} to ")),
        "{}",
        repair.stdout
    );
    assert!(
        repair.stdout.contains(&format!(
            "The ledger opens: 5 managed accounts (1 in their grace period), 0 scheduled departure(s), {} audit entries",
            before.len()
        )),
        "{}",
        repair.stdout
    );
    assert_eq!(quarantined(&site).len(), 2);
    let again = site.run(&["repair"]);
    assert!(
        again.stdout.contains("No half-written leftover found."),
        "{}",
        again.stdout
    );
    assert_eq!(trail(&site), before);
    assert_eq!(grace_clocks(&site), clocks);
    // And the ledger goes on: the departure still counts from its first day.
    site.sync_ok_at(T0 + 2 * DAY);
    assert_eq!(grace_clocks(&site), clocks);
}

#[test]
fn a_ledger_damaged_beyond_a_leftover_is_left_as_it_is_and_the_rebuild_named() {
    let site = site_with_agents("noise", 2);
    site.sync_ok();
    let db = store(&site).join("db");
    let noise: Vec<u8> = (0..3000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&db, &noise).unwrap();
    let repair = site.run(&["repair"]);
    assert_eq!(repair.code, 1, "{}\n{}", repair.stdout, repair.stderr);
    assert!(
        repair.stdout.contains("No half-written leftover found."),
        "{}",
        repair.stdout
    );
    assert!(
        repair.stdout.contains("still does not open")
            && repair.stdout.contains("Crashes and recovering the ledger"),
        "{}",
        repair.stdout
    );
    assert_eq!(
        std::fs::read(&db).unwrap(),
        noise,
        "repair changed the damaged store"
    );
    assert!(quarantined(&site).is_empty());
}

#[test]
fn a_first_sync_killed_while_it_creates_the_ledger_leaves_none_or_a_whole_one() {
    // The directory refuses the read: the sync creates the ledger, records the failed run and
    // touches nothing else. Killed anywhere in that, it leaves no ledger or one that opens
    // (earlier builds left one that "exists but reads as empty" after one kill in four).
    let site = site_with_agents("creation", 5);
    site.configure(&limited(&site));
    let state = site.dir.path().join("state");
    let mut rng = fastrand::Rng::with_seed(env_or("LEDGER_TORTURE_SEED", 7) as u64);
    let (mut none, mut whole) = (0, 0);
    for round in 0..env_or("LEDGER_CREATION_RUNS", 30) {
        let _ = std::fs::remove_dir_all(&state);
        let delay = Duration::from_millis(rng.u64(..300));
        let (status, _) = run_and_signal(&site, &["sync"], delay, "KILL");
        let check = site.run(&["status"]);
        let context = format!("round {round}: sync killed after {delay:?} ({status})");
        if check.stderr.contains("no ledger") {
            none += 1;
        } else {
            assert_eq!(
                check.code,
                0,
                "{context}: {}\n{}",
                check.stderr,
                ls(&store(&site))
            );
            whole += 1;
        }
    }
    println!(
        "first syncs killed while creating: {none} left no ledger, {whole} a whole one, 0 damaged"
    );
    assert!(
        whole > 0,
        "no kill came after the creation: the test proves nothing"
    );
}

/// How a tortured command ended.
#[derive(Debug, Default)]
struct Tally {
    /// Ended by SIGKILL at a random point.
    killed: usize,
    /// Stopped by SIGTERM or SIGINT at a random point (the graceful path).
    stopped: usize,
    /// Ended on their own with an error (a directory that refuses the read, mostly).
    failed: usize,
    /// Ended on their own without error.
    finished: usize,
    /// Times the ledger was opened and its whole trail read after a command.
    opens_verified: usize,
    /// Half-written snapshots the openings moved aside.
    set_aside: usize,
}

/// Spawns the binary on the site's config (dying with the test), waits `delay`, then sends
/// `signal` unless it ended; returns how it ended, and whether the signal was sent.
fn run_and_signal(site: &Site, args: &[&str], delay: Duration, signal: &str) -> (ExitStatus, bool) {
    let mut child = Command::new("setpriv")
        .args(["--pdeathsig", "KILL", "--"])
        .arg(binary())
        .arg("--config")
        .arg(site.config())
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(delay);
    let sent = child.try_wait().unwrap().is_none();
    if sent {
        match signal {
            "KILL" => child.kill().unwrap(),
            _ => {
                let _ = Command::new("kill")
                    .args([&format!("-{signal}"), &child.id().to_string()])
                    .status();
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return (status, sent);
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("`{args:?}` did not end within 20 s of SIG{signal}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn kills_and_failures_at_random_points_never_damage_the_ledger() {
    let runs = env_or("LEDGER_TORTURE_RUNS", 250);
    let seed = std::env::var("LEDGER_TORTURE_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    let mut rng = fastrand::Rng::with_seed(seed);
    let agents = 8;
    let site = site_with_agents("torture", agents);
    let good = settings(&site);
    let refusing = limited(&site);
    site.sync_ok();
    let mut trail_seen = trail(&site);
    let mut tally = Tally::default();
    let started = Instant::now();
    for i in 0..runs {
        // Work for the next sync: a new display name, or a departure begun or ended.
        let agent = format!("a{}", rng.usize(..agents));
        match rng.u8(..3) {
            0 => site.set_attr(&agent, "employeeType", &["departed"]),
            1 => site.set_attr(&agent, "employeeType", &[]),
            _ => site.set_attr(&agent, "cn", &[&format!("Agent {i}")]),
        }
        // One command in four reads a directory that refuses the read: it fails on its own.
        site.configure(if rng.u8(..4) == 0 { &refusing } else { &good });
        // Killed anywhere in their life: the delays span about how long each takes here.
        let (command, max_delay_ms): (&[&str], u64) = match rng.u8(..8) {
            0..=2 => (&["sync"], 400),
            3..=4 => (&["plan"], 150),
            5..=6 => (&["status"], 70),
            _ => (&["run"], 2500),
        };
        let delay = Duration::from_millis(rng.u64(..=max_delay_ms));
        let signal = match rng.u8(..10) {
            0 => "TERM",
            1 => "INT",
            _ => "KILL",
        };
        let (status, signalled) = run_and_signal(&site, command, delay, signal);
        match (signalled, signal, status.code()) {
            (true, "KILL", _) => tally.killed += 1,
            (true, _, _) => tally.stopped += 1,
            (false, _, Some(0 | 2 | 3)) => tally.finished += 1,
            (false, _, _) => tally.failed += 1,
        }

        // The ledger opens, and its trail only grew.
        let history = site.run(&["history", "--limit", "1000000000", "--json"]);
        let context = format!(
            "run {i} (seed {seed}): `{command:?}` with SIG{signal} after {delay:?} ended {status}"
        );
        assert_eq!(
            history.code,
            0,
            "{context}; the ledger does not open:\n{}\n{}",
            history.stderr,
            ls(&store(&site))
        );
        tally.opens_verified += 1;
        tally.set_aside += history.stderr.matches("moved aside").count();
        let trail_now: Vec<Value> = serde_json::from_str(&history.stdout).unwrap();
        assert!(
            trail_now.starts_with(&trail_seen),
            "{context}; the audit trail lost entries: had {}, now {}",
            trail_seen.len(),
            trail_now.len()
        );
        trail_seen = trail_now;
    }
    site.configure(&good);
    site.sync_ok();
    let quarantined = quarantined(&site).len();
    println!(
        "ledger torture (seed {seed}): {runs} commands in {:?}: {} killed, {} stopped by SIGTERM/SIGINT, \
         {} failed, {} finished; {} openings verified, 0 damaged; {} half-written snapshots set \
         aside ({quarantined} in quarantine/); audit trail {} entries",
        started.elapsed(),
        tally.killed,
        tally.stopped,
        tally.failed,
        tally.finished,
        tally.opens_verified,
        tally.set_aside,
        trail_seen.len()
    );
    assert!(
        tally.killed >= runs / 4 && tally.stopped > 0,
        "too few commands were interrupted to prove anything: {tally:?}"
    );
    assert!(tally.failed > 0, "no command failed on its own: {tally:?}");
}

/// The files of a folder with their sizes (for a failure message).
fn ls(dir: &Path) -> String {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .map(|e| {
                    let e = e.unwrap();
                    format!(
                        "{} {}",
                        e.file_name().to_string_lossy(),
                        e.metadata().map(|m| m.len()).unwrap_or(0)
                    )
                })
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default()
}
