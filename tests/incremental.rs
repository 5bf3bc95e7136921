//! Incremental reads (RFC 4533 refreshOnly) against a real slapd with syncprov: the shared
//! one keeps a session log (deletions come in a delete phase); one test runs its own slapd
//! without (the present phase). Each test works in its own OU.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

// The harness re-exports `Synapse`, which these tests do not use.
#[allow(unused_imports)]
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::Slapd;
use matrix_ldap_sync::config::DirectoryConfig;
use matrix_ldap_sync::directory::{
    read_changes_with, read_snapshot, read_snapshot_with, AgentQuery, Changes, Directory, IdFormat,
    Incremental, RoomSources, StableId, SyncDialect, Watermark,
};

const TIMEOUT: Duration = Duration::from_secs(5);

fn config(slapd: &Slapd, bases: &[&str]) -> DirectoryConfig {
    slapd.directory_config(bases, TIMEOUT)
}

/// Agents are inetOrgPersons with `employeeType: agent`.
fn agents() -> AgentQuery {
    AgentQuery {
        filter: "(&(objectClass=inetOrgPerson)(employeeType=agent))".into(),
        attributes: vec!["uid".into(), "cn".into(), "mail".into()],
        id_attribute: "entryUUID".into(),
        id_format: IdFormat::Text,
    }
}

/// Adds agents `<prefix>0..n` under `ou`.
fn add_agents(slapd: &Slapd, ou: &str, prefix: &str, n: usize) {
    let ldif: String = (0..n)
        .map(|i| {
            format!(
                "dn: uid={prefix}{i},{ou}\nobjectClass: inetOrgPerson\nuid: {prefix}{i}\n\
                 cn: Agent {i}\nsn: {i}\nemployeeType: agent\n\n"
            )
        })
        .collect();
    slapd.add_ldif(&ldif);
}

/// DN → stable id of every agent under `bases`, by a full read.
async fn ids_by_dn(cfg: &DirectoryConfig) -> BTreeMap<String, String> {
    let snap = read_snapshot(cfg, &agents()).await.unwrap();
    snap.entries.into_iter().map(|e| (e.dn, e.id.0)).collect()
}

async fn watermark(cfg: &DirectoryConfig) -> Watermark {
    let mut dir = Directory::connect(cfg).await.unwrap();
    let w = dir
        .watermark(&cfg.base_dns, &agents(), TIMEOUT)
        .await
        .unwrap();
    dir.close().await;
    w.expect("slapd with syncprov offers incremental reads")
}

async fn changes(cfg: &DirectoryConfig, since: &Watermark) -> Changes {
    match read_changes_with(cfg, &agents(), since, &mut Some)
        .await
        .unwrap()
    {
        Incremental::Changes(c) => c,
        Incremental::FullReadNeeded(why) => panic!("full read needed: {why}"),
    }
}

async fn full_read_needed(cfg: &DirectoryConfig, since: &Watermark) -> String {
    match read_changes_with(cfg, &agents(), since, &mut Some)
        .await
        .unwrap()
    {
        Incremental::FullReadNeeded(why) => why,
        Incremental::Changes(c) => panic!("changes where a full read was needed: {c:?}"),
    }
}

/// DN → (id, cn) of the changed entries.
fn changed(c: &Changes) -> BTreeMap<String, (String, String)> {
    c.snapshot
        .entries
        .iter()
        .map(|e| {
            let cn = e.first("cn").unwrap_or_default().to_string();
            (e.dn.clone(), (e.id.0.clone(), cn))
        })
        .collect()
}

fn ids<'a>(list: impl IntoIterator<Item = &'a String>) -> BTreeSet<StableId> {
    list.into_iter().map(|s| StableId(s.clone())).collect()
}

/// The deleted ids among `known`: slapd's session log also names entries deleted or modified
/// elsewhere in the database (other tests' OUs), which a caller ignores as unknown.
fn deleted_of(c: &Changes, known: &BTreeMap<String, String>) -> BTreeSet<StableId> {
    c.deleted
        .intersection(&ids(known.values()))
        .cloned()
        .collect()
}

fn cookies(w: &Watermark) -> &BTreeMap<String, Vec<u8>> {
    match w {
        Watermark::Syncrepl { cookies, .. } => cookies,
        other => panic!("not a syncrepl watermark: {other:?}"),
    }
}

/// Modifies a0, adds a5, renames a1, deletes a2, turns a3 into a non-agent (a4 untouched).
fn make_changes(slapd: &Slapd, ou: &str) {
    slapd.modify_ldif(&format!(
        "dn: uid=a0,{ou}\nchangetype: modify\nreplace: cn\ncn: Agent zero, renamed\n\n\
         dn: uid=a5,{ou}\nchangetype: add\nobjectClass: inetOrgPerson\nuid: a5\ncn: Agent 5\n\
         sn: 5\nemployeeType: agent\n\n\
         dn: uid=a1,{ou}\nchangetype: modrdn\nnewrdn: uid=a1b\ndeleteoldrdn: 1\n\n\
         dn: uid=a3,{ou}\nchangetype: modify\nreplace: employeeType\nemployeeType: former\n\n"
    ));
    slapd.delete(&format!("uid=a2,{ou}"));
}

/// The changed entries after `make_changes`: a0 (new cn), a1 at its new DN (same id), a5.
fn assert_changed_entries(c: &Changes, ou: &str, before: &BTreeMap<String, String>) {
    let got = changed(c);
    let dns: Vec<&String> = got.keys().collect();
    let mut want = [
        format!("uid=a0,{ou}"),
        format!("uid=a1b,{ou}"),
        format!("uid=a5,{ou}"),
    ];
    want.sort();
    assert_eq!(dns, want.iter().collect::<Vec<_>>(), "{got:?}");
    assert_eq!(
        got[&format!("uid=a0,{ou}")],
        (
            before[&format!("uid=a0,{ou}")].clone(),
            "Agent zero, renamed".into()
        )
    );
    assert_eq!(
        got[&format!("uid=a1b,{ou}")].0,
        before[&format!("uid=a1,{ou}")],
        "a rename keeps the entryUUID"
    );
    assert!(!before
        .values()
        .any(|id| *id == got[&format!("uid=a5,{ou}")].0));
    assert!(c.snapshot.skipped.is_empty(), "{:?}", c.snapshot.skipped);
}

#[tokio::test]
async fn changes_since_the_watermark_come_as_a_delete_phase() {
    let slapd = Slapd::shared();
    let ou = slapd.new_ou("incr-delete");
    add_agents(slapd, &ou, "a", 5);
    let cfg = config(slapd, &[&ou]);
    let before = ids_by_dn(&cfg).await;
    assert_eq!(before.len(), 5);

    let w = watermark(&cfg).await;
    assert_eq!(w.server(), slapd.url);
    let cookie = String::from_utf8(cookies(&w)[&ou].clone()).unwrap();
    assert!(cookie.contains("csn="), "{cookie}");
    make_changes(slapd, &ou);

    let c = changes(&cfg, &w).await;
    assert_changed_entries(&c, &ou, &before);
    // The deleted agent and the one that left the filter; the untouched a4 is nowhere.
    let gone = [
        &before[&format!("uid=a2,{ou}")],
        &before[&format!("uid=a3,{ou}")],
    ];
    assert_eq!(deleted_of(&c, &before), ids(gone));
    let got = changed(&c);
    assert!(
        got.values()
            .all(|(id, _)| !c.deleted.contains(&StableId(id.clone()))),
        "a changed agent is never deleted: {:?}",
        c.deleted
    );
    assert_eq!(c.present, None, "with a session log, slapd lists deletions");
    assert_ne!(cookies(&c.watermark)[&ou], cookies(&w)[&ou]);

    // From the new watermark: nothing changed here (other tests may change other OUs).
    let again = changes(&cfg, &c.watermark).await;
    assert!(again.snapshot.entries.is_empty(), "{:?}", again.snapshot);
    assert!(
        deleted_of(&again, &before).is_empty(),
        "{:?}",
        again.deleted
    );
    assert_eq!(again.present, None);
}

#[tokio::test]
async fn without_a_session_log_the_agents_still_there_are_listed() {
    let slapd = Slapd::start_without_sessionlog();
    let ou = slapd.new_ou("incr-present");
    add_agents(&slapd, &ou, "a", 5);
    let cfg = config(&slapd, &[&ou]);
    let before = ids_by_dn(&cfg).await;

    let w = watermark(&cfg).await;
    make_changes(&slapd, &ou);

    let c = changes(&cfg, &w).await;
    assert_changed_entries(&c, &ou, &before);
    // Present: the changed agents and the untouched a4, not a2 (deleted) nor a3 (left).
    let got = changed(&c);
    let mut present: Vec<&String> = got.values().map(|(id, _)| id).collect();
    present.push(&before[&format!("uid=a4,{ou}")]);
    assert_eq!(c.present, Some(ids(present)));
    assert!(c.deleted.is_empty(), "{:?}", c.deleted);

    // An instance of its own: nothing else changes it, so the next read is empty and keeps
    // the cookie (slapd sends a SyncDone without one).
    let again = changes(&cfg, &c.watermark).await;
    assert!(again.snapshot.entries.is_empty(), "{:?}", again.snapshot);
    assert!(again.deleted.is_empty(), "{:?}", again.deleted);
    assert_eq!(again.watermark, c.watermark);
}

#[tokio::test]
async fn a_change_during_the_full_read_is_read_again() {
    let slapd = Slapd::shared();
    let ou = slapd.new_ou("incr-during");
    add_agents(slapd, &ou, "a", 3);
    let cfg = config(slapd, &[&ou]);

    let w = watermark(&cfg).await;
    // Made after the watermark, before (so: seen by) the full read.
    slapd.modify_ldif(&format!(
        "dn: uid=a1,{ou}\nchangetype: modify\nreplace: mail\nmail: a1@example.org\n"
    ));
    let full = read_snapshot(&cfg, &agents()).await.unwrap();
    assert_eq!(full.entries.len(), 3);

    // Read again from the watermark; `pass` sees it and may take it (not kept then).
    let mut seen = Vec::new();
    let answer = read_changes_with(&cfg, &agents(), &w, &mut |e| {
        seen.push((e.dn.clone(), e.first("mail").map(str::to_string)));
        None
    })
    .await
    .unwrap();
    let Incremental::Changes(c) = answer else {
        panic!("{answer:?}")
    };
    assert_eq!(
        seen,
        vec![(format!("uid=a1,{ou}"), Some("a1@example.org".to_string()))]
    );
    assert!(c.snapshot.entries.is_empty());
    assert_eq!(c.snapshot.passed_on, 1);
    let known: BTreeMap<String, String> = full
        .entries
        .iter()
        .map(|e| (e.dn.clone(), e.id.0.clone()))
        .collect();
    assert!(deleted_of(&c, &known).is_empty(), "{:?}", c.deleted);
}

#[tokio::test]
async fn cookies_per_base_and_a_move_between_bases() {
    let slapd = Slapd::shared();
    let (ou_a, ou_b) = (slapd.new_ou("incr-a"), slapd.new_ou("incr-b"));
    add_agents(slapd, &ou_a, "a", 2);
    add_agents(slapd, &ou_b, "b", 2);
    let cfg = config(slapd, &[&ou_a, &ou_b]);
    let before = ids_by_dn(&cfg).await;

    let w = watermark(&cfg).await;
    let bases: BTreeSet<&String> = cookies(&w).keys().collect();
    assert_eq!(bases, [&ou_a, &ou_b].into());
    // a0 moves from base A to base B; b1 is deleted.
    slapd.modify_ldif(&format!(
        "dn: uid=a0,{ou_a}\nchangetype: modrdn\nnewrdn: uid=a0\ndeleteoldrdn: 1\n\
         newsuperior: {ou_b}\n"
    ));
    slapd.delete(&format!("uid=b1,{ou_b}"));

    let c = changes(&cfg, &w).await;
    let got = changed(&c);
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        vec![&format!("uid=a0,{ou_b}")]
    );
    assert_eq!(
        got[&format!("uid=a0,{ou_b}")].0,
        before[&format!("uid=a0,{ou_a}")]
    );
    // Gone from base A, but there in base B: not deleted.
    assert_eq!(
        deleted_of(&c, &before),
        ids([&before[&format!("uid=b1,{ou_b}")]])
    );
    assert_eq!(cookies(&c.watermark).len(), 2);
}

#[tokio::test]
async fn overlapping_bases_count_an_entry_once() {
    let slapd = Slapd::shared();
    let outer = slapd.new_ou("incr-outer");
    let inner = format!("ou=inner,{outer}");
    slapd.add_ldif(&format!(
        "dn: {inner}\nobjectClass: organizationalUnit\nou: inner\n"
    ));
    add_agents(slapd, &inner, "i", 3);
    let cfg = config(slapd, &[&outer, &inner]);
    let before = ids_by_dn(&cfg).await;
    assert_eq!(before.len(), 3);

    let w = watermark(&cfg).await;
    slapd.modify_ldif(&format!(
        "dn: uid=i0,{inner}\nchangetype: modify\nreplace: cn\ncn: Inner zero\n"
    ));
    slapd.delete(&format!("uid=i1,{inner}"));

    let c = changes(&cfg, &w).await;
    assert_eq!(c.snapshot.entries.len(), 1, "{:?}", c.snapshot.entries);
    assert!(c.snapshot.skipped.is_empty(), "{:?}", c.snapshot.skipped);
    assert_eq!(c.snapshot.entries[0].first("cn"), Some("Inner zero"));
    assert_eq!(
        deleted_of(&c, &before),
        ids([&before[&format!("uid=i1,{inner}")]])
    );
}

#[tokio::test]
async fn unusable_cookies_need_a_full_read() {
    let slapd = Slapd::shared();
    let ou = slapd.new_ou("incr-bogus");
    add_agents(slapd, &ou, "a", 2);
    let cfg = config(slapd, &[&ou]);
    let with_cookie = |cookie: &[u8]| Watermark::Syncrepl {
        server: slapd.url.clone(),
        cookies: [(ou.clone(), cookie.to_vec())].into(),
        dialect: SyncDialect::Standard,
    };

    // In slapd's syntax without a CSN: slapd would take it for no cookie, so it is not sent.
    let why = full_read_needed(&cfg, &with_cookie(b"rid=000,csn=garbage")).await;
    assert!(why.contains("CSN"), "{why}");
    // Opaque garbage: slapd answers everything and an empty cookie.
    let why = full_read_needed(&cfg, &with_cookie(b"not a cookie")).await;
    assert!(why.contains("did not recognise"), "{why}");
    // From the future (a restored server): slapd refuses it.
    let future = b"rid=000,csn=20991231235959.000000Z#000000#000#000000";
    let why = full_read_needed(&cfg, &with_cookie(future)).await;
    assert!(why.contains("53"), "{why}");
    assert!(why.contains("newer than provider"), "{why}");
    // A base without a cookie (added since), another server.
    let why = full_read_needed(&config(slapd, &[&ou, &slapd.base_dn]), &with_cookie(future)).await;
    assert!(why.contains(&slapd.base_dn), "{why}");
    let elsewhere = Watermark::Syncrepl {
        server: "ldap://other.example.org".into(),
        cookies: BTreeMap::new(),
        dialect: SyncDialect::Standard,
    };
    let why = full_read_needed(&cfg, &elsewhere).await;
    assert!(why.contains("ldap://other.example.org"), "{why}");
}

#[tokio::test]
async fn an_id_other_than_entry_uuid_needs_a_full_read() {
    let slapd = Slapd::shared();
    let ou = slapd.new_ou("incr-id");
    add_agents(slapd, &ou, "a", 1);
    let cfg = config(slapd, &[&ou]);
    let w = watermark(&cfg).await;
    let mut query = agents();
    query.id_attribute = "uid".into();
    let answer = read_changes_with(&cfg, &query, &w, &mut Some)
        .await
        .unwrap();
    assert!(
        matches!(&answer, Incremental::FullReadNeeded(why) if why.contains("`uid`")),
        "{answer:?}"
    );
}

#[tokio::test]
async fn a_full_read_with_incremental_on_carries_its_watermark() {
    let slapd = Slapd::shared();
    let ou = slapd.new_ou("incr-full");
    add_agents(slapd, &ou, "a", 2);
    let mut cfg = config(slapd, &[&ou]);
    let before = ids_by_dn(&cfg).await;

    let snap = read_snapshot_with(&cfg, &agents(), &RoomSources::default(), &mut Some)
        .await
        .unwrap();
    assert_eq!(snap.entries.len(), 2);
    let w = snap.watermark.expect("a watermark with incremental = true");
    assert_eq!(w.server(), slapd.url);
    assert_eq!(cookies(&w).keys().collect::<Vec<_>>(), vec![&ou]);
    // Nothing changed since.
    let c = changes(&cfg, &w).await;
    assert!(c.snapshot.entries.is_empty(), "{c:?}");
    assert!(deleted_of(&c, &before).is_empty(), "{c:?}");

    cfg.incremental = false;
    let snap = read_snapshot_with(&cfg, &agents(), &RoomSources::default(), &mut Some)
        .await
        .unwrap();
    assert_eq!(snap.watermark, None);
}
