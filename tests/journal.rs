//! The write-ahead journal against the real slapd and Synapse: a `sync` killed between "the
//! homeserver did it" and "the ledger recorded it" never leaves the two apart in a way a later
//! run does not repair. The homeserver is read through its admin API, never through the ledger.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::accounts::{emails, flag};
use common::site::{Settings, Site};
use serde_json::Value;

const CRASH_AFTER: &str = "MATRIX_LDAP_SYNC_TEST_CRASH_AFTER";

fn given(i: usize, round: &str) -> String {
    format!("{round}{i}")
}

#[test]
fn names_changed_back_after_a_kill_mid_apply_reach_the_homeserver() {
    // The reproduction of issue 26: ten first names changed, the sync killed while applying
    // them, the names changed back; every later sync used to plan nothing while Synapse kept
    // the names of the killed run.
    let site = Site::new("wal");
    for i in 0..10 {
        site.add_agent(
            &format!("w{i}"),
            &given(i, "First"),
            "Walker",
            "DSI",
            Some(&format!("w{i}@example.org")),
        );
    }
    site.sync_ok();
    for i in 0..10 {
        site.set_attr(&format!("w{i}"), "givenName", &[&given(i, "Changed")]);
    }
    let killed = site.run_env(&[(CRASH_AFTER, "5")], &["sync"]);
    assert_ne!(
        killed.code, 0,
        "the hook must abort the run:\n{}",
        killed.stderr
    );
    for i in 0..10 {
        site.set_attr(&format!("w{i}"), "givenName", &[&given(i, "First")]);
    }

    let run = site.run(&["sync", "--json"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let summary: Value = serde_json::from_str(&run.stdout).unwrap();
    // Up to `concurrency` updates were in flight when the run died: at least the five the hook
    // counted reached Synapse without being recorded, or were recorded in the meantime.
    let found = summary["journal"]["applied"].as_u64().unwrap()
        + summary["journal"]["not_applied"].as_u64().unwrap();
    assert!(
        summary["journal"]["applied"].as_u64().unwrap() >= 1 && found <= 10,
        "{summary}"
    );
    for i in 0..10 {
        let mxid = site.mxid(&format!("{}.walker", given(i, "first")));
        let user = site.synapse.get_user(&mxid).unwrap();
        assert_eq!(
            user["displayname"],
            format!("{} Walker {} [DSI]", given(i, "First"), site.tag),
            "{mxid}"
        );
    }
    let history = site.run(&["history", "--limit", "500"]).stdout;
    assert!(
        history.contains("found applied after an interrupted run"),
        "{history}"
    );
    // And nothing left to do.
    let (code, plan) = site.plan_json();
    assert_eq!(code, 0, "{plan}");
}

/// One agent's wanted state in a round of the torture test.
#[derive(Clone, Copy)]
struct Wanted {
    name: u32,
    mail: u32,
    departed: bool,
    dsi: bool,
}

#[test]
fn syncs_killed_at_random_points_always_converge_to_the_directory() {
    const AGENTS: usize = 8;
    let rounds: usize = std::env::var("JOURNAL_TORTURE_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40);
    let seed: u64 = std::env::var("JOURNAL_TORTURE_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    eprintln!("journal torture: {rounds} rounds, seed {seed}");
    let mut rng = fastrand::Rng::with_seed(seed);

    let site = Site::new("torture");
    let room = format!("#dsi-{}:{}", site.tag, site.synapse.server_name);
    site.configure(&Settings {
        config_extra: "[brake]\nmax_departures = 1000\nmax_departures_percent = 100.0\nmax_room_removals = 1000\nmax_room_removals_percent = 100.0\n[departures]\ngrace = \"3650d\"\n".into(),
        mapping_extra: format!(
            "\n[[rooms]]\nroom = \"{room}\"\nattribute = \"ou\"\nvalues = [\"DSI\"]\ncreate = {{ name = \"DSI\" }}\n"
        ),
        ..Settings::default()
    });
    let mut wanted = [Wanted {
        name: 0,
        mail: 0,
        departed: false,
        dsi: true,
    }; AGENTS];
    for i in 0..AGENTS {
        site.add_agent(
            &format!("k{i}"),
            &format!("Kay{i}"),
            "Torture",
            "DSI",
            Some(&format!("k{i}.m0@example.org")),
        );
    }
    site.sync_ok();

    let set = |i: usize, w: &Wanted| {
        let uid = format!("k{i}");
        site.set_attr(&uid, "givenName", &[&format!("Kay{i}n{}", w.name)]);
        site.set_attr(&uid, "mail", &[&format!("k{i}.m{}@example.org", w.mail)]);
        site.set_attr(&uid, "ou", &[if w.dsi { "DSI" } else { "RH" }]);
        let departed: &[&str] = if w.departed { &["departed"] } else { &[] };
        site.set_attr(&uid, "employeeType", departed);
    };
    let (mut kills, mut aborts, mut finished, mut resolved) = (0, 0, 0, 0u64);
    let started = Instant::now();
    for round in 0..rounds {
        for (i, w) in wanted.iter_mut().enumerate() {
            if rng.u8(..4) == 0 {
                continue;
            }
            w.name += u32::from(rng.bool());
            w.mail += u32::from(rng.u8(..3) == 0);
            w.departed = rng.u8(..4) == 0;
            w.dsi = rng.bool();
            set(i, w);
        }
        // Half the rounds abort right after a homeserver write (the exact window), half are
        // SIGKILLed after a random delay.
        let mut command = site.command(&["sync", "--json"]);
        if round % 2 == 0 {
            command.env(CRASH_AFTER, (1 + rng.usize(..12)).to_string());
        }
        let mut child = command
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        if round % 2 == 1 {
            std::thread::sleep(Duration::from_millis(rng.u64(..400)));
            if child.try_wait().unwrap().is_none() {
                child.kill().unwrap();
                kills += 1;
            }
        }
        let out = child.wait_with_output().unwrap();
        match out.status.code() {
            Some(_) => {
                finished += 1;
                if let Ok(summary) = serde_json::from_slice::<Value>(&out.stdout) {
                    resolved += summary["journal"]["applied"].as_u64().unwrap_or(0)
                        + summary["journal"]["not_applied"].as_u64().unwrap_or(0);
                }
            }
            None if round % 2 == 0 => aborts += 1,
            None => {}
        }
    }

    // A known final state, and one sync.
    let last: Vec<Wanted> = (0..AGENTS)
        .map(|i| Wanted {
            name: 1000,
            mail: 1000,
            departed: i % 3 == 0,
            dsi: i % 2 == 0,
        })
        .collect();
    for (i, w) in last.iter().enumerate() {
        set(i, w);
    }
    let run = site.run(&["sync", "--json"]);
    assert_eq!(run.code, 0, "seed {seed}:\n{}", run.stdout);
    let summary: Value = serde_json::from_str(&run.stdout).unwrap();
    eprintln!("final sync: {summary}");
    resolved += summary["journal"]["applied"].as_u64().unwrap_or(0)
        + summary["journal"]["not_applied"].as_u64().unwrap_or(0);
    eprintln!(
        "journal torture: {rounds} rounds in {:?}: {kills} SIGKILLs, {aborts} aborts after a homeserver write, {finished} runs finished; {resolved} intents resolved",
        started.elapsed()
    );

    // The homeserver, read through its admin API, is what the directory says.
    let mut in_room = BTreeSet::new();
    for (i, w) in last.iter().enumerate() {
        let mxid = site.mxid(&format!("kay{i}.torture"));
        let user = site.synapse.get_user(&mxid).unwrap();
        assert_eq!(flag(&user, "suspended"), w.departed, "seed {seed}: {mxid}");
        assert!(!flag(&user, "deactivated"), "seed {seed}: {mxid}");
        if w.departed {
            // A departed agent's profile is left as it was; it leaves the rooms.
            continue;
        }
        let dept = if w.dsi { "DSI" } else { "RH" };
        assert_eq!(
            user["displayname"],
            format!("Kay{i}n1000 Torture {} [{dept}]", site.tag),
            "seed {seed}: {mxid}"
        );
        assert_eq!(
            emails(&user),
            vec![format!("k{i}.m1000@example.org")],
            "seed {seed}: {mxid}"
        );
        if w.dsi {
            in_room.insert(mxid);
        }
    }
    assert_eq!(
        site.synapse.room_members(&room),
        in_room,
        "seed {seed}: the DSI room"
    );
    let (code, plan) = site.plan_json();
    assert_eq!(code, 0, "seed {seed}: nothing left to do: {plan}");
}
