//! Against a real 389 Directory Server (Debian's `389-ds-base`, started by the harness in
//! `common::ds389`) and a real Synapse: the 389-DS preset end to end, content-sync reads of
//! only what changed (entries named by `nsUniqueId`), and the server's default limits. Each test
//! works in its own OU; the tests with 2,000 agents share an instance of their own, loaded
//! offline.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeSet;
use std::sync::OnceLock;
use std::time::Duration;

use common::accounts::{emails, flag, T0};
use common::ds389::{access_searches, entry_uuid, Ds389};
use common::ds389_site::Ds389Site;
use common::site::{Run, Settings};
use matrix_ldap_sync::directory::{
    read_changes_with, read_snapshot_with, AgentQuery, Directory, IdFormat, Incremental,
    RoomSources, ServerKind, StableId, SyncDialect, Watermark,
};
use serde_json::Value;

const TIMEOUT: Duration = Duration::from_secs(5);
/// Departures apply at once and nothing is held by the brake: these tests are about reading.
const NO_BRAKE: &str =
    "\n[departures]\ngrace = \"7d\"\n\n[brake]\nmax_departures_percent = 100.0\nmax_shrink_percent = 100.0\n";

fn settings() -> Settings {
    Settings {
        config_extra: NO_BRAKE.to_string(),
        ..Settings::default()
    }
}

fn site(name: &str) -> Ds389Site {
    let site = Ds389Site::new(name);
    site.configure(&settings());
    site
}

fn user(site: &Ds389Site, mxid: &str) -> Value {
    site.synapse
        .get_user(mxid)
        .unwrap_or_else(|| panic!("{mxid} does not exist"))
}

fn incremental_at(site: &Ds389Site, now: i64) -> Run {
    site.sync_ok_at_with(now, &["--incremental"])
}

/// The summary line says whether the run read everything or only the changes.
fn read_only_changes(run: &Run) -> bool {
    run.stdout.contains("changes only:")
}

/// The searches the sync account made under `ou` since `mark`: (filter, entries returned).
fn searches_under(ds: &Ds389, mark: u64, ou: &str) -> Vec<(String, usize)> {
    ds.searches_since(mark, &ds.sync_dn)
        .into_iter()
        .filter(|(base, _, _)| {
            base.to_ascii_lowercase()
                .ends_with(&ou.to_ascii_lowercase())
        })
        .map(|(_, filter, n)| (filter, n))
        .collect()
}

#[test]
fn first_sync_then_a_second_sync_writes_nothing() {
    let site = site("ds-first");
    site.add_agent_with(
        "edupre",
        "Élodie",
        "Dupré",
        Some("elodie.dupre@example.org"),
        "",
    );
    site.add_agent("jmartin", "Jean", "Martin");
    let check = site.run(&["check"]);
    assert_eq!(check.code, 0, "{}\n{}", check.stdout, check.stderr);
    assert!(
        check.stdout.contains("(389-DS) as cn=sync"),
        "{}",
        check.stdout
    );
    let first = site.sync_ok();
    assert!(first.stdout.contains("2 applied"), "{}", first.stdout);
    let elodie = user(&site, &site.mxid("elodie.dupre"));
    assert!(
        elodie["displayname"]
            .as_str()
            .unwrap()
            .starts_with("Élodie Dupré"),
        "{elodie}"
    );
    assert_eq!(emails(&elodie), vec![site.mail("elodie.dupre@example.org")]);
    assert!(site.synapse.get_user(&site.mxid("jean.martin")).is_some());

    let mark = site.synapse.log_mark();
    let again = site.sync_ok();
    assert!(again.stdout.contains("0 planned"), "{}", again.stdout);
    assert!(
        site.writes_since(mark).is_empty(),
        "{:?}",
        site.writes_since(mark)
    );
    let status = site.run(&["status"]);
    assert!(
        status
            .stdout
            .contains("Incremental reads: from 389-DS content sync cookies"),
        "{}",
        status.stdout
    );
}

#[test]
fn ns_account_lock_departs_and_its_removal_returns_read_incrementally() {
    let site = site("ds-lock");
    site.add_agent("anne", "Anne", "Lock");
    site.add_agent("paul", "Paul", "Lock");
    site.sync_ok_at(T0);
    let anne = site.mxid("anne.lock");

    site.set_attr("anne", "nsAccountLock", &["TRUE"]);
    let locked = incremental_at(&site, T0 + 60);
    assert!(
        read_only_changes(&locked),
        "{}\n{}",
        locked.stdout,
        locked.stderr
    );
    assert!(
        locked.stdout.contains("1 changed agents, 0 gone"),
        "{}",
        locked.stdout
    );
    assert!(flag(&user(&site, &anne), "suspended"));
    let history = site.run(&["history", "--user", &anne]);
    assert!(
        history.stdout.contains("nsAccountLock"),
        "{}",
        history.stdout
    );

    site.set_attr("anne", "nsAccountLock", &[]);
    let back = incremental_at(&site, T0 + 120);
    assert!(read_only_changes(&back), "{}", back.stdout);
    assert!(!flag(&user(&site, &anne), "suspended"));
    assert!(!flag(&user(&site, &site.mxid("paul.lock")), "suspended"));
}

#[test]
fn a_rename_into_another_ou_keeps_the_account() {
    let site = site("ds-move");
    let dsi = site.add_sub_ou("dsi");
    let drh = site.add_sub_ou("drh");
    site.ds.add_ldif(&format!(
        "dn: uid=mroux,{dsi}\nobjectClass: inetOrgPerson\nuid: mroux\ncn: Marc Roux\n\
         givenName: Marc\nsn: Roux {tag}\nou: DSI\n",
        tag = site.tag
    ));
    site.sync_ok_at(T0);
    let marc = site.mxid("marc.roux");
    let before = user(&site, &marc);

    site.move_entry(&format!("uid=mroux,{dsi}"), "uid=marc.roux", &drh);
    site.set_attr_of(&format!("uid=marc.roux,{drh}"), "ou", &["DRH"]);
    let mark = site.synapse.log_mark();
    let run = incremental_at(&site, T0 + 60);
    assert!(read_only_changes(&run), "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stdout.contains("1 changed agents, 0 gone"),
        "{}",
        run.stdout
    );
    let after = user(&site, &marc);
    assert_eq!(after["creation_ts"], before["creation_ts"]);
    assert!(
        after["displayname"].as_str().unwrap().ends_with("[DRH]"),
        "{after}"
    );
    let writes = site.writes_since(mark);
    assert!(
        writes.iter().all(|(_, path)| path.contains("marc.roux")),
        "{writes:?}"
    );
    let explain = site.run(&["explain", "marc.roux"]);
    assert!(explain.stdout.contains(&drh), "{}", explain.stdout);
    // A complete read agrees: nothing to do.
    let complete = site.sync_ok_at(T0 + 120);
    assert!(complete.stdout.contains("0 planned"), "{}", complete.stdout);
}

#[test]
fn an_incremental_run_reads_only_one_change_and_one_delete() {
    let site = site("ds-incr");
    for (uid, given) in [
        ("anne", "Anne"),
        ("bruno", "Bruno"),
        ("chloe", "Chloe"),
        ("david", "David"),
        ("eve", "Eve"),
    ] {
        site.add_agent(uid, given, "Blanc");
    }
    let first = incremental_at(&site, T0);
    assert!(!read_only_changes(&first), "{}", first.stdout);

    site.set_attr("bruno", "givenName", &["Brunehaut"]);
    site.ds.delete(&site.dn("chloe"));
    let hs = site.synapse.log_mark();
    let ds = site.ds.access_mark();
    let run = incremental_at(&site, T0 + 60);
    assert!(read_only_changes(&run), "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stdout.contains("1 changed agents, 1 gone"),
        "{}",
        run.stdout
    );
    assert_only_changes_were_read(&site, ds, 2);
    assert_eq!(
        user(&site, &site.mxid("bruno.blanc"))["displayname"]
            .as_str()
            .unwrap()
            .split(' ')
            .next(),
        Some("Brunehaut")
    );
    assert!(flag(&user(&site, &site.mxid("chloe.blanc")), "suspended"));
    let writes = site.writes_since(hs);
    assert!(
        writes
            .iter()
            .all(|(_, path)| path.contains("bruno.blanc") || path.contains("chloe.blanc")),
        "{writes:?}"
    );
    for other in ["anne", "david", "eve"] {
        let mxid = site.mxid(&format!("{other}.blanc"));
        assert!(!flag(&user(&site, &mxid), "suspended"), "{mxid}");
    }

    let again = incremental_at(&site, T0 + 120);
    assert!(
        again.stdout.contains("0 changed agents, 0 gone") && again.stdout.contains("0 planned"),
        "{}",
        again.stdout
    );
}

/// What the sync account's searches under the site's OU returned during the last run: the
/// changed entries read again by nsUniqueId, at most `at_most` entries in all, and no search
/// with the agent filter alone (what a complete read makes). 389-DS logs the refresh itself
/// with `nentries=0` (its content sync plugin sends the entries), so the daemon's own count
/// ("N changed agents") is checked beside this.
fn assert_only_changes_were_read(site: &Ds389Site, mark: u64, at_most: usize) {
    let searches = searches_under(site.ds, mark, &site.ou);
    assert!(
        searches.iter().any(|(f, _)| f == "(objectClass=*)"),
        "a content sync refresh is logged in {}: {searches:?}",
        site.ds.access_log().display()
    );
    assert!(
        searches.iter().any(|(f, _)| f.contains("nsUniqueId")),
        "changed entries are read again by nsUniqueId: {searches:?}"
    );
    assert!(
        !searches
            .iter()
            .any(|(f, _)| f == "(&(objectClass=inetOrgPerson)(uid=*))"),
        "no complete read: {searches:?}"
    );
    let total: usize = searches.iter().map(|(_, n)| n).sum();
    assert!(total <= at_most, "{total} entries read: {searches:?}");
}

#[test]
fn an_agent_leaving_the_filter_is_seen_by_an_incremental_run() {
    let site = Ds389Site::new("ds-filter");
    site.configure(&Settings {
        filter: Some("(&(objectClass=inetOrgPerson)(uid=*)(!(employeeType=external)))".into()),
        ..settings()
    });
    site.add_agent("anne", "Anne", "Filtre");
    site.add_agent("paul", "Paul", "Filtre");
    site.sync_ok_at(T0);
    // A modification only: 389-DS does not report an entry that stops matching the filter it
    // was asked with, so changes are asked with (objectClass=*) and read again.
    site.set_attr("paul", "employeeType", &["external"]);
    let run = incremental_at(&site, T0 + 60);
    assert!(read_only_changes(&run), "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stdout.contains("0 changed agents, 1 gone"),
        "{}",
        run.stdout
    );
    assert!(flag(&user(&site, &site.mxid("paul.filtre")), "suspended"));
    assert!(!flag(&user(&site, &site.mxid("anne.filtre")), "suspended"));
}

#[test]
fn a_refused_cookie_makes_a_complete_read_with_a_warning_that_status_keeps() {
    let site = site("ds-refused");
    site.add_agent("anne", "Anne", "Refus");
    site.sync_ok_at(T0);
    // 389-DS takes a cookie back only from the bind DN it was given to.
    site.configure(&Settings {
        bind: Some((site.ds.limited_dn.clone(), site.ds.limited_password.clone())),
        ..settings()
    });
    let run = incremental_at(&site, T0 + 60);
    assert!(!read_only_changes(&run), "{}", run.stdout);
    assert!(run.stdout.contains("read whole"), "{}", run.stdout);
    assert!(
        run.stderr.contains("WARN") && run.stderr.contains("Invalid session cookie"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("bind DN"),
        "the advice fits 389-DS: {}",
        run.stderr
    );
    let status = site.run(&["status"]);
    assert!(
        status
            .stdout
            .contains("Read: the whole directory, because an incremental read was not possible")
            && status.stdout.contains("Invalid session cookie"),
        "{}",
        status.stdout
    );
    let json = site.run(&["status", "--json"]);
    let json: Value = serde_json::from_str(&json.stdout).unwrap();
    assert!(
        json["last_run"]["incremental_fallback"]
            .as_str()
            .unwrap()
            .contains("e-syncRefreshRequired"),
        "{json}"
    );
    // The complete read left a cookie of the new account's: back to changes only.
    let next = incremental_at(&site, T0 + 120);
    assert!(read_only_changes(&next), "{}", next.stdout);
    let status = site.run(&["status"]);
    assert!(
        status.stdout.contains("Read: only the changes"),
        "{}",
        status.stdout
    );
}

// --- The directory layer against 389-DS --------------------------------------------------

fn people() -> AgentQuery {
    AgentQuery {
        filter: "(&(objectClass=inetOrgPerson)(uid=*))".into(),
        attributes: vec!["uid".into(), "cn".into(), "nsAccountLock".into()],
        id_attribute: "entryUUID".into(),
        id_format: IdFormat::Text,
    }
}

#[tokio::test]
async fn entries_are_named_by_ns_unique_id_and_resolved_to_their_entry_uuid() {
    let ds = Ds389::shared();
    let ou = ds.new_ou("ds-lib");
    for uid in ["a0", "a1", "a2"] {
        ds.add_ldif(&format!(
            "dn: uid={uid},{ou}\nobjectClass: inetOrgPerson\nuid: {uid}\ncn: {uid}\nsn: {uid}\n"
        ));
    }
    let cfg = ds.directory_config(&[&ou], TIMEOUT);
    let dir = Directory::connect(&cfg).await.unwrap();
    assert_eq!(dir.kind(), ServerKind::Ds389);
    dir.close().await;

    let snap = read_snapshot_with(&cfg, &people(), &RoomSources::default(), &mut Some)
        .await
        .unwrap();
    assert_eq!(snap.entries.len(), 3);
    let w = snap.watermark.clone().expect("a watermark");
    assert!(
        matches!(&w, Watermark::Syncrepl { dialect: SyncDialect::Ds389, cookies, .. } if cookies.contains_key(&ou)),
        "{w:?}"
    );
    // Each agent's nsUniqueId was read and recorded with its entryUUID.
    let by_id: std::collections::BTreeMap<String, StableId> = snap
        .sync_ids
        .iter()
        .map(|(sync, id)| (sync.ns_unique_id(), id.clone()))
        .collect();
    assert_eq!(by_id.len(), 3);
    let a2 = snap
        .entries
        .iter()
        .find(|e| e.first("uid") == Some("a2"))
        .unwrap();
    let a2_sync = ds.search(&a2.dn, "base", "(objectClass=*)", &["nsUniqueId"]);
    let a2_sync = a2_sync
        .lines()
        .find_map(|l| l.strip_prefix("nsUniqueId: "))
        .unwrap()
        .to_string();
    assert_eq!(by_id[&a2_sync], a2.id);

    ds.modify_ldif(&format!(
        "dn: uid=a1,{ou}\nchangetype: modify\nreplace: nsAccountLock\nnsAccountLock: TRUE\n"
    ));
    ds.delete(&format!("uid=a2,{ou}"));
    let changes = match read_changes_with(&cfg, &people(), &w, &mut Some)
        .await
        .unwrap()
    {
        Incremental::Changes(c) => c,
        Incremental::FullReadNeeded(why) => panic!("full read needed: {why}"),
    };
    // The changed entry, read again: with its entryUUID and nsAccountLock (389-DS sends
    // neither in the refresh itself).
    assert_eq!(changes.snapshot.entries.len(), 1, "{changes:?}");
    let a1 = &changes.snapshot.entries[0];
    assert_eq!(a1.first("uid"), Some("a1"));
    assert_eq!(a1.first("nsaccountlock"), Some("TRUE"));
    assert!(a1.id.0.len() == 36, "{a1:?}");
    // The deletion, by nsUniqueId only: the recorded ids say whose it is.
    assert!(changes.deleted.is_empty(), "{changes:?}");
    let deleted: BTreeSet<String> = changes
        .deleted_sync_ids
        .iter()
        .map(|s| s.ns_unique_id())
        .collect();
    assert_eq!(deleted, [a2_sync].into());
    assert_eq!(changes.present, None);
}

#[tokio::test]
async fn a_cookie_is_taken_back_only_for_the_same_filter() {
    let ds = Ds389::shared();
    let ou = ds.new_ou("ds-cookie");
    let cfg = ds.directory_config(&[&ou], TIMEOUT);
    let mut dir = Directory::connect(&cfg).await.unwrap();
    let w = dir
        .watermark(&cfg.base_dns, &people(), TIMEOUT)
        .await
        .unwrap()
        .unwrap();
    dir.close().await;
    let Watermark::Syncrepl { cookies, .. } = &w else {
        panic!("{w:?}")
    };
    let cookie = String::from_utf8(cookies[&ou].clone()).unwrap();
    assert!(
        cookie.contains(&ou) && cookie.contains("(objectClass=*)"),
        "{cookie}"
    );
    // The same cookie with another filter in it: refused, and said why.
    let other = Watermark::Syncrepl {
        server: ds.url.clone(),
        cookies: [(
            ou.clone(),
            cookie.replace("(objectClass=*)", "(uid=*)").into_bytes(),
        )]
        .into(),
        dialect: SyncDialect::Ds389,
    };
    match read_changes_with(&cfg, &people(), &other, &mut Some)
        .await
        .unwrap()
    {
        Incremental::FullReadNeeded(why) => {
            assert!(why.contains("e-syncRefreshRequired"), "{why}");
            assert!(why.contains("filter"), "{why}");
        }
        Incremental::Changes(c) => panic!("a cookie of another filter was taken: {c:?}"),
    }
    // A watermark of an OpenLDAP-like server is not sent to 389-DS.
    let standard = Watermark::Syncrepl {
        server: ds.url.clone(),
        cookies: cookies.clone(),
        dialect: SyncDialect::Standard,
    };
    match read_changes_with(&cfg, &people(), &standard, &mut Some)
        .await
        .unwrap()
    {
        Incremental::FullReadNeeded(why) => assert!(why.contains("389-DS content sync"), "{why}"),
        Incremental::Changes(c) => panic!("{c:?}"),
    }
}

// --- 2,000 agents, loaded offline into an instance of their own ---------------------------

/// An instance loaded with `ou=crowd` (2,000 agents, for a run of changes among them) and
/// `ou=limits` (2,100 agents, more than the server's default size limit of 2,000).
fn crowded() -> &'static Ds389 {
    static DS: OnceLock<Ds389> = OnceLock::new();
    DS.get_or_init(|| {
        let mut ldif = String::new();
        for (ou, given, n) in [("crowd", "Crowd", 2000), ("limits", "Limit", 2100)] {
            ldif.push_str(&format!(
                "dn: ou={ou},dc=example,dc=org\nobjectClass: top\nobjectClass: organizationalUnit\n\
                 ou: {ou}\nentryUUID: {}\n\n",
                entry_uuid(0)
            ));
            for i in 0..n {
                ldif.push_str(&format!(
                    "dn: uid={ou}{i},ou={ou},dc=example,dc=org\nobjectClass: top\n\
                     objectClass: inetOrgPerson\nuid: {ou}{i}\ncn: {given} N{i}\n\
                     givenName: {given}\nsn: N{i}\nentryUUID: {}\n\n",
                    entry_uuid(i + 1)
                ));
            }
        }
        Ds389::start_with_import(&ldif)
    })
}

fn crowd_mxid(site: &Ds389Site, i: usize) -> String {
    format!("@crowd.n{i}:{}", site.synapse.server_name)
}

#[test]
fn with_2000_unchanged_agents_an_incremental_run_reads_only_what_changed() {
    let ds = crowded();
    let site = Ds389Site::in_ou(ds, format!("ou=crowd,{}", ds.base_dn));
    site.configure(&Settings {
        page_size: Some(500),
        ..settings()
    });
    let first = incremental_at(&site, T0);
    assert!(first.stdout.contains("2000 agents"), "{}", first.stdout);
    assert!(first.stdout.contains("2000 applied"), "{}", first.stdout);

    site.set_attr_of(&format!("uid=crowd7,{}", site.ou), "givenName", &["Seven"]);
    site.ds.delete(&format!("uid=crowd8,{}", site.ou));
    let hs = site.synapse.log_mark();
    let mark = ds.access_mark();
    let run = incremental_at(&site, T0 + 60);
    assert!(read_only_changes(&run), "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stdout.contains("1 changed agents, 1 gone"),
        "{}",
        run.stdout
    );
    assert_only_changes_were_read(&site, mark, 2);
    assert!(flag(&user(&site, &crowd_mxid(&site, 8)), "suspended"));
    let seven = user(&site, &format!("@crowd.n7:{}", site.synapse.server_name));
    assert!(
        seven["displayname"].as_str().unwrap().starts_with("Seven"),
        "{seven}"
    );
    let writes = site.synapse.writes_since(hs);
    assert!(
        writes
            .iter()
            .all(|(_, path)| path.contains("crowd.n7") || path.contains("crowd.n8")),
        "{writes:?}"
    );
    assert!(!writes.is_empty());
    assert!(!flag(&user(&site, &crowd_mxid(&site, 9)), "suspended"));
}

#[test]
fn default_limits_read_completely_in_pages_or_fail_cleanly() {
    let ds = crowded();
    let site = Ds389Site::in_ou(ds, format!("ou=limits,{}", ds.base_dn));
    let limited = Some((ds.limited_dn.clone(), ds.limited_password.clone()));
    // 389-DS applies its limit (2,000) to each page: pages of 500 read all 2,100.
    site.configure(&Settings {
        bind: limited.clone(),
        page_size: Some(500),
        ..settings()
    });
    let (code, plan) = site.plan_json();
    assert_eq!(code, 2, "{plan}");
    assert_eq!(plan["counts"]["create_account"], 2100, "{}", plan["counts"]);

    // Pages larger than the limit: the read stops at the limit, and nothing is written.
    site.configure(&Settings {
        bind: limited,
        page_size: Some(2500),
        ..settings()
    });
    let mark = site.synapse.log_mark();
    let run = site.run(&["sync"]);
    assert_ne!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert!(run.stderr.contains("sizeLimitExceeded"), "{}", run.stderr);
    assert!(
        run.stderr.contains("nsSizeLimit") && run.stderr.contains("directory.page_size"),
        "the advice fits 389-DS: {}",
        run.stderr
    );
    assert!(!run.stderr.contains("MaxPageSize"), "{}", run.stderr);
    assert!(
        site.synapse
            .writes_since(mark)
            .iter()
            .all(|(_, path)| !path.contains("limit.n")),
        "nothing written"
    );
}

#[test]
fn the_access_log_is_read_per_bind_dn() {
    let log = r#"[04/Dec/2026:18:51:05.1 +0000] conn=3 op=0 BIND dn="cn=sync,dc=example,dc=org" method=128 version=3
[04/Dec/2026:18:51:05.1 +0000] conn=4 op=0 BIND dn="cn=Directory Manager" method=128 version=3
[04/Dec/2026:18:51:05.2 +0000] conn=3 op=1 SRCH base="ou=a,dc=example,dc=org" scope=2 filter="(objectClass=*)" attrs="1.1"
[04/Dec/2026:18:51:05.2 +0000] conn=4 op=1 SRCH base="dc=example,dc=org" scope=2 filter="(uid=x)" attrs=ALL
[04/Dec/2026:18:51:05.3 +0000] conn=3 op=1 RESULT err=0 tag=101 nentries=2 wtime=0.0 optime=0.0 etime=0.0
[04/Dec/2026:18:51:05.3 +0000] conn=4 op=1 RESULT err=0 tag=101 nentries=9 wtime=0.0 optime=0.0 etime=0.0
"#;
    assert_eq!(
        access_searches(log, "cn=sync,dc=example,dc=org"),
        vec![(
            "ou=a,dc=example,dc=org".to_string(),
            "(objectClass=*)".to_string(),
            2
        )]
    );
}
