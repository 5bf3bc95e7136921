//! Incremental runs end to end: the real binary reads only what changed in a real slapd
//! (RFC 4533 content sync) since its last complete read, and applies it to a real Synapse.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::accounts::{flag, DAY, T0};
use common::site::{Run, Settings, Site};
use serde_json::Value;

/// Departures by `employeeType=departed` or a `shadowExpire` date, 7 days of grace; complete
/// reads at least every `full_every`; `brake` lines for `[brake]`.
fn settings(full_every: &str, brake: &str) -> Settings {
    Settings {
        mapping_extra: r#"
[departure]
disabled = [{ attribute = "employeeType", values = ["departed"] }]
expires = [{ attribute = "shadowExpire", format = "days" }]
"#
        .to_string(),
        config_extra: format!("\n[departures]\ngrace = \"7d\"\n\n[brake]\n{brake}\n",),
        directory_extra: format!("full_sync_every = \"{full_every}\"\n"),
        ..Settings::default()
    }
}

const NO_BRAKE: &str = "max_departures_percent = 100.0\nmax_shrink_percent = 100.0";

fn site(name: &str, settings: &Settings) -> Site {
    let site = Site::new(name);
    site.configure(settings);
    site
}

fn user(site: &Site, mxid: &str) -> Value {
    site.synapse
        .get_user(mxid)
        .unwrap_or_else(|| panic!("{mxid} does not exist"))
}

fn sync_incremental(site: &Site, now: i64) -> Run {
    site.sync_ok_at_with(now, &["--incremental"])
}

/// The summary line says whether the run read everything or only the changes.
fn read_only_changes(run: &Run) -> bool {
    run.stdout.contains("changes only:")
}

#[test]
fn changes_since_the_last_complete_read_are_read_and_applied_alone() {
    let site = site("incr", &settings("1h", NO_BRAKE));
    for (uid, given) in [
        ("anne", "Anne"),
        ("bruno", "Bruno"),
        ("chloe", "Chloe"),
        ("david", "David"),
    ] {
        site.add_agent(uid, given, "Martin", "DSI", None);
    }
    let first = site.sync_ok_at_with(T0, &["--incremental"]);
    assert!(!read_only_changes(&first), "{}", first.stdout);

    site.add_agent("eve", "Eve", "Martin", "DRH", None);
    site.set_attr("anne", "givenName", &["Annie"]);
    site.slapd.delete(&format!("uid=bruno,{}", site.ou));
    site.set_attr("chloe", "employeeType", &["departed"]);
    let mark = site.synapse.log_mark();
    let run = sync_incremental(&site, T0 + 60);
    assert!(read_only_changes(&run), "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stdout.contains("3 changed agents, 1 gone"),
        "{}",
        run.stdout
    );
    assert!(site.synapse.get_user(&site.mxid("eve.martin")).is_some());
    let anne = user(&site, &site.mxid("anne.martin"));
    assert!(
        anne["displayname"]
            .as_str()
            .unwrap()
            .starts_with("Annie Martin"),
        "{anne}"
    );
    assert!(flag(&user(&site, &site.mxid("bruno.martin")), "suspended"));
    assert!(flag(&user(&site, &site.mxid("chloe.martin")), "suspended"));
    // David did not change: nothing was sent about him.
    let david = site.mxid("david.martin");
    let writes = site.writes_since(mark);
    assert!(
        writes.iter().all(|(_, path)| !path.contains("david")),
        "{writes:?}"
    );
    assert!(!flag(&user(&site, &david), "suspended"));

    let again = sync_incremental(&site, T0 + 120);
    assert!(
        again.stdout.contains("0 changed agents, 0 gone") && again.stdout.contains("0 planned"),
        "{}",
        again.stdout
    );
}

#[test]
fn a_failed_run_leaves_the_watermark_so_its_changes_are_read_again() {
    let site = site("incr-fail", &settings("1h", NO_BRAKE));
    site.add_agent("anne", "Anne", "Petit", "DSI", None);
    site.sync_ok_at(T0);
    site.add_agent("paul", "Paul", "Petit", "DSI", None);

    // The homeserver is unreachable for one run.
    let config = std::fs::read_to_string(site.config()).unwrap();
    let broken = config.replace(&site.synapse.url, "http://127.0.0.1:9");
    std::fs::write(site.config(), broken).unwrap();
    let failed = site.run_at(T0 + 60, &["sync", "--incremental"]);
    assert_ne!(failed.code, 0, "{}\n{}", failed.stdout, failed.stderr);
    std::fs::write(site.config(), config).unwrap();

    let run = sync_incremental(&site, T0 + 120);
    assert!(read_only_changes(&run), "{}", run.stdout);
    assert!(run.stdout.contains("1 changed agents"), "{}", run.stdout);
    assert!(site.synapse.get_user(&site.mxid("paul.petit")).is_some());
}

#[test]
fn changed_rules_or_a_due_complete_read_make_the_run_read_everything() {
    let settings = settings("1h", NO_BRAKE);
    let site = site("incr-full", &settings);
    site.add_agent("anne", "Anne", "Roux", "DSI", None);
    site.sync_ok_at(T0);
    assert!(read_only_changes(&sync_incremental(&site, T0 + 60)));

    // A complete read is due an hour after the last one.
    let due = sync_incremental(&site, T0 + 3600);
    assert!(!read_only_changes(&due), "{}", due.stdout);
    assert!(read_only_changes(&sync_incremental(&site, T0 + 3700)));

    // New rules: every agent is mapped again, not only the changed ones.
    let mut changed = settings.clone();
    changed
        .mapping_extra
        .push_str("\n# a comment is a change of the rules' text too\n");
    site.configure(&changed);
    let run = sync_incremental(&site, T0 + 3800);
    assert!(!read_only_changes(&run), "{}", run.stdout);
    // Changed rules are a planned complete read: said at INFO, not a fallback.
    assert!(!run.stderr.contains("WARN"), "{}", run.stderr);
    let status = site.run(&["status"]);
    assert!(
        status
            .stdout
            .contains("Incremental reads: from RFC 4533 content sync cookies")
            && status.stdout.contains("Read: the whole directory\n"),
        "{}",
        status.stdout
    );
}

#[test]
fn a_mass_deletion_read_incrementally_engages_the_brake_until_approved() {
    let site = site(
        "incr-brake",
        &settings("1h", "max_departures = 3\nmax_departures_percent = 100.0"),
    );
    let uids: Vec<String> = (1..=6).map(|n| format!("agent{n}")).collect();
    for uid in &uids {
        site.add_agent(uid, uid, "Blanc", "DSI", None);
    }
    site.sync_ok_at(T0);
    for uid in &uids[..5] {
        site.slapd.delete(&format!("uid={uid},{}", site.ou));
    }
    for attempt in 1..=2 {
        let run = site.run_at(T0 + 60 * attempt, &["sync", "--incremental"]);
        assert_eq!(
            run.code, 3,
            "attempt {attempt}: {}\n{}",
            run.stdout, run.stderr
        );
        assert!(read_only_changes(&run), "{}", run.stdout);
        assert!(
            run.stdout.contains("5 departure(s) held back"),
            "{}",
            run.stdout
        );
    }
    let approved = site.sync_ok_at_with(T0 + 300, &["--incremental", "--allow-mass-changes"]);
    assert!(read_only_changes(&approved), "{}", approved.stdout);
    let suspended: Vec<bool> = uids
        .iter()
        .map(|uid| {
            flag(
                &user(&site, &site.mxid(&format!("{uid}.blanc"))),
                "suspended",
            )
        })
        .collect();
    assert_eq!(suspended, [true, true, true, true, true, false]);
}

#[test]
fn a_departure_date_comes_due_without_any_change_in_the_directory() {
    let site = site("incr-due", &settings("30d", NO_BRAKE));
    let expires_in_two_days = (T0 + 2 * DAY) / DAY;
    site.add_agent_with(
        "anne",
        "Anne",
        "Noel",
        "DSI",
        None,
        &format!("objectClass: shadowAccount\nshadowExpire: {expires_in_two_days}\n"),
    );
    site.sync_ok_at(T0);
    let anne = site.mxid("anne.noel");
    assert!(!flag(&user(&site, &anne), "suspended"));

    let before = sync_incremental(&site, T0 + DAY);
    assert!(read_only_changes(&before), "{}", before.stdout);
    assert!(!flag(&user(&site, &anne), "suspended"));

    let due = sync_incremental(&site, T0 + 3 * DAY);
    assert!(read_only_changes(&due), "{}", due.stdout);
    assert!(flag(&user(&site, &anne), "suspended"));
    let history = site.run(&["history", "--user", &anne]);
    assert!(
        history.stdout.contains("expired: shadowExpire"),
        "{}",
        history.stdout
    );
}

#[test]
fn a_watermark_another_server_gave_falls_back_to_a_complete_read_with_a_warning() {
    let site = site("incr-other", &settings("1h", NO_BRAKE));
    site.add_agent("anne", "Anne", "Autre", "DSI", None);
    site.sync_ok_at(T0);
    // The same slapd by another name: the watermark is not the answering server's.
    let other = site.slapd.url.replace("127.0.0.1", "localhost");
    site.configure(&Settings {
        urls: Some(vec![other]),
        ..settings("1h", NO_BRAKE)
    });
    let run = sync_incremental(&site, T0 + 60);
    assert!(!read_only_changes(&run), "{}", run.stdout);
    assert!(
        run.stderr.contains("WARN") && run.stderr.contains("the last complete read was from"),
        "{}",
        run.stderr
    );
    let status = site.run(&["status"]);
    assert!(
        status
            .stdout
            .contains("Read: the whole directory, because an incremental read was not possible"),
        "{}",
        status.stdout
    );
    assert!(read_only_changes(&sync_incremental(&site, T0 + 120)));
}
