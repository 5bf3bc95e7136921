//! Incremental reads of the Samba AD DC through the library: a full read leaves a USN
//! watermark; the changes since it are read back exactly (created, changed, renamed, disabled,
//! moved out, deleted), and a watermark of another DC database needs a full read.

use std::collections::BTreeSet;
use std::time::Duration;

use matrix_ldap_sync::config::DirectoryConfig;
use matrix_ldap_sync::directory::{
    read_changes_with, read_snapshot_with, AgentQuery, Changes, Directory, Incremental,
    RoomSources, StableId, Watermark,
};
use matrix_ldap_sync::mapping::Rules;
use matrix_ldap_sync::pipeline::agent_query;
use matrix_ldap_sync::secret::Secret;
use url::Url;

use super::{ANNE, PAUL};
use crate::common::ad_site::{AdSite, Agent, AGENT_PASSWORD};
use crate::common::repo_root;
use crate::common::samba::unicode_pwd;

const CARL: Agent<'static> = Agent {
    name: "carl",
    given: "Carl",
    sn: "Petit",
    department: Some("RH"),
    mail: None,
};

const DORA: Agent<'static> = Agent {
    name: "dora",
    given: "Dora",
    sn: "Morel",
    department: None,
    mail: None,
};

const FRED: Agent<'static> = Agent {
    name: "fred",
    given: "Fred",
    sn: "Roux",
    department: None,
    mail: None,
};

const EVE: Agent<'static> = Agent {
    name: "eve",
    given: "Eve",
    sn: "Blanc",
    department: Some("DSI"),
    mail: None,
};

/// The preset's agent filter, leaving disabled accounts out.
const ENABLED_ONLY: &str = "(&(objectClass=user)(objectCategory=person)\
                            (!(userAccountControl:1.2.840.113556.1.4.803:=2)))";

/// The AD preset's search.
fn preset_query() -> AgentQuery {
    let rules = Rules::load(&repo_root().join("mappings/active-directory.toml")).unwrap();
    agent_query(&rules)
}

/// The library's view of the site: LDAPS as the sync account (who may read Deleted Objects),
/// incremental reads on, pages of 2.
fn config(site: &AdSite) -> DirectoryConfig {
    site.dc.grant_deleted_objects_read(&site.dc.sync_dn);
    DirectoryConfig {
        urls: vec![Url::parse(&site.dc.ldaps_url).unwrap()],
        starttls: false,
        ca_file: Some(site.dc.ca_file.clone()),
        bind_dn: site.dc.sync_upn.clone(),
        bind_password: Secret::new(site.dc.sync_password.clone()),
        base_dns: vec![site.ou.clone()],
        page_size: 2,
        timeout: Duration::from_secs(10),
        incremental: true,
        full_sync_every: Duration::from_secs(86_400),
    }
}

async fn full_read(cfg: &DirectoryConfig, query: &AgentQuery) -> Watermark {
    let snapshot = read_snapshot_with(cfg, query, &RoomSources::default(), &mut Some)
        .await
        .unwrap();
    snapshot
        .watermark
        .expect("a full read with incremental on leaves a watermark")
}

async fn changes(cfg: &DirectoryConfig, query: &AgentQuery, since: &Watermark) -> Changes {
    match read_changes_with(cfg, query, since, &mut Some)
        .await
        .unwrap()
    {
        Incremental::Changes(c) => c,
        Incremental::FullReadNeeded(why) => panic!("a full read was asked for: {why}"),
    }
}

async fn full_read_needed(cfg: &DirectoryConfig, query: &AgentQuery, since: &Watermark) -> String {
    match read_changes_with(cfg, query, since, &mut Some)
        .await
        .unwrap()
    {
        Incremental::FullReadNeeded(why) => why,
        Incremental::Changes(c) => panic!("changes instead of a full read: {c:?}"),
    }
}

fn id(site: &AdSite, name: &str) -> StableId {
    StableId(site.guid(name))
}

/// The changed entries' ids.
fn changed(c: &Changes) -> BTreeSet<StableId> {
    c.snapshot.entries.iter().map(|e| e.id.clone()).collect()
}

/// The deleted ids among `ids` (the DC is shared: other tests' users change too).
fn deleted_of(c: &Changes, ids: &[&StableId]) -> BTreeSet<StableId> {
    ids.iter()
        .filter(|i| c.deleted.contains(i))
        .map(|i| (*i).clone())
        .collect()
}

/// The invocationId of the (only) DC, as Samba shows it.
fn dc_invocation_id(site: &AdSite) -> String {
    let out = site.dc.ldbsearch(
        &format!("CN=Configuration,{}", site.dc.base_dn),
        "(objectClass=nTDSDSA)",
        &["invocationId"],
    );
    out.lines()
        .find_map(|l| l.strip_prefix("invocationId: "))
        .unwrap_or_else(|| panic!("no invocationId: {out}"))
        .trim()
        .to_string()
}

#[tokio::test]
async fn usn_changes_since_a_full_read_are_exactly_what_changed() {
    let site = AdSite::new("usn");
    for agent in [ANNE, PAUL, CARL, DORA, FRED] {
        site.add_agent(agent);
    }
    let (cfg, query) = (config(&site), preset_query());
    let watermark = full_read(&cfg, &query).await;
    let Watermark::Usn {
        invocation_id, usn, ..
    } = &watermark
    else {
        panic!("an AD DC gives a USN watermark: {watermark:?}");
    };
    assert_eq!(*invocation_id, dc_invocation_id(&site));
    assert!(*usn > 0);

    let [anne, paul, carl, dora, fred] =
        ["anne", "paul", "carl", "dora", "fred"].map(|n| id(&site, n));
    site.add_agent(EVE);
    let eve = id(&site, "eve");
    site.set_attr("anne", "department", &["Cabinet"]);
    // Renamed and moved within the base: a new DN, the same objectGUID.
    let sub = format!("OU=Sub,{}", site.ou);
    site.dc
        .add_ldif(&format!("dn: {sub}\nobjectClass: organizationalUnit\n"));
    site.dc.modify_ldif(&format!(
        "dn: {}\nchangetype: modrdn\nnewrdn: CN=Paul Girard-Roux\ndeleteoldrdn: 1\n\
         newsuperior: {sub}\n",
        site.dn("paul")
    ));
    site.set_attr("carl", "userAccountControl", &["514"]);
    site.dc.delete(&site.dn("dora"));
    // Moved out of the base: gone from this site's point of view.
    let elsewhere = site.dc.new_ou("usn-out");
    site.dc.modify_ldif(&format!(
        "dn: {}\nchangetype: modrdn\nnewrdn: CN=Fred Roux\ndeleteoldrdn: 1\n\
         newsuperior: {elsewhere}\n",
        site.dn("fred")
    ));

    let c = changes(&cfg, &query, &watermark).await;
    let all = [&anne, &paul, &carl, &dora, &fred, &eve];
    assert_eq!(
        changed(&c),
        BTreeSet::from([anne.clone(), paul.clone(), carl.clone(), eve.clone()])
    );
    assert_eq!(
        deleted_of(&c, &all),
        BTreeSet::from([dora.clone(), fred.clone()])
    );
    assert_eq!(c.present, None);
    assert!(c.snapshot.skipped.is_empty(), "{:?}", c.snapshot.skipped);
    let entry = |i: &StableId| c.snapshot.entries.iter().find(|e| e.id == *i).unwrap();
    assert_eq!(entry(&anne).first("department"), Some("Cabinet"));
    assert!(
        entry(&paul).dn.starts_with("CN=Paul Girard-Roux,OU=Sub,"),
        "{}",
        entry(&paul).dn
    );
    assert_eq!(entry(&carl).first("userAccountControl"), Some("514"));
    assert_eq!(entry(&eve).first("department"), Some("DSI"));
    let Watermark::Usn { usn: next, .. } = &c.watermark else {
        panic!("{:?}", c.watermark)
    };
    assert!(next > usn, "{next} > {usn}");

    // With a filter that leaves disabled accounts out, Carl left it while staying in the base.
    let enabled = AgentQuery {
        filter: ENABLED_ONLY.into(),
        ..query.clone()
    };
    let c2 = changes(&cfg, &enabled, &watermark).await;
    assert_eq!(
        changed(&c2),
        BTreeSet::from([anne.clone(), paul.clone(), eve.clone()])
    );
    assert_eq!(
        deleted_of(&c2, &all),
        BTreeSet::from([carl.clone(), dora.clone(), fred.clone()])
    );

    // From the new watermark: nothing.
    let again = changes(&cfg, &query, &c.watermark).await;
    assert!(changed(&again).is_empty(), "{:?}", again.snapshot.entries);
    assert!(deleted_of(&again, &all).is_empty(), "{:?}", again.deleted);
}

#[tokio::test]
async fn a_change_between_the_watermark_and_the_full_read_is_read_again() {
    let site = AdSite::new("usn-race");
    site.add_agent(ANNE);
    site.add_agent(PAUL);
    let (cfg, query) = (config(&site), preset_query());
    let mut dir = Directory::connect(&cfg).await.unwrap();
    let watermark = dir
        .watermark(&cfg.base_dns, &query, cfg.timeout)
        .await
        .unwrap()
        .unwrap();
    site.set_attr("anne", "department", &["Cabinet"]);
    let snapshot = dir
        .read_snapshot(&cfg.base_dns, &query, cfg.page_size, cfg.timeout)
        .await
        .unwrap();
    dir.close().await;
    assert_eq!(snapshot.entries.len(), 2);

    let c = changes(&cfg, &query, &watermark).await;
    assert_eq!(changed(&c), BTreeSet::from([id(&site, "anne")]));
    assert_eq!(c.snapshot.entries[0].first("department"), Some("Cabinet"));
}

#[tokio::test]
async fn a_watermark_of_another_dc_database_or_server_needs_a_full_read() {
    let site = AdSite::new("usn-dc");
    site.add_agent(ANNE);
    let (cfg, query) = (config(&site), preset_query());
    let Watermark::Usn {
        server,
        invocation_id,
        usn,
    } = full_read(&cfg, &query).await
    else {
        panic!("not a USN watermark")
    };

    // The same URL, another database: a replaced DC, or this one restored from a backup.
    let forged = Watermark::Usn {
        server: server.clone(),
        invocation_id: "0b8f1e4c-1111-4a2b-9c3d-000000000001".into(),
        usn,
    };
    let why = full_read_needed(&cfg, &query, &forged).await;
    assert!(why.contains("invocationId"), "{why}");
    assert!(why.contains(&invocation_id), "{why}");

    // The same database, but a USN it never reached: it went back in time.
    let ahead = Watermark::Usn {
        server: server.clone(),
        invocation_id: invocation_id.clone(),
        usn: usn + 1_000_000,
    };
    let why = full_read_needed(&cfg, &query, &ahead).await;
    assert!(why.contains("back in time"), "{why}");

    // Another DC URL (failover) answered.
    let other = Watermark::Usn {
        server: "ldaps://dc2.samdom.test".into(),
        invocation_id,
        usn,
    };
    let why = full_read_needed(&cfg, &query, &other).await;
    assert!(why.contains("dc2.samdom.test"), "{why}");
}

#[tokio::test]
async fn a_filter_on_group_membership_needs_full_reads() {
    let site = AdSite::new("usn-memberof");
    site.add_agent(ANNE);
    let (cfg, query) = (config(&site), preset_query());
    let watermark = full_read(&cfg, &query).await;
    let in_group = AgentQuery {
        filter: format!(
            "(&{}(memberOf:1.2.840.113556.1.4.1941:=CN=Staff,{}))",
            query.filter, site.ou
        ),
        ..query
    };
    let why = full_read_needed(&cfg, &in_group, &watermark).await;
    assert!(why.contains("group membership"), "{why}");
}

#[tokio::test]
async fn an_account_that_cannot_read_deleted_objects_gets_full_reads_not_a_gap() {
    let site = AdSite::new("usn-rights");
    site.add_agent(ANNE);
    // A plain domain user, as a service account is before it is granted Deleted Objects.
    let sam = site.sam("svc");
    site.dc.add_ldif(&format!(
        "dn: CN={sam},{ou}\nobjectClass: user\nsAMAccountName: {sam}\n\
         unicodePwd:: {pwd}\nuserAccountControl: 512\n",
        ou = site.ou,
        pwd = unicode_pwd(AGENT_PASSWORD),
    ));
    let cfg = DirectoryConfig {
        bind_dn: format!("{sam}@{}", site.dc.dns_domain),
        bind_password: Secret::new(AGENT_PASSWORD.to_string()),
        ..config(&site)
    };
    let query = preset_query();
    let watermark = full_read(&cfg, &query).await;
    let why = full_read_needed(&cfg, &query, &watermark).await;
    assert!(why.contains("CN=Deleted Objects"), "{why}");
    assert!(why.contains("LCRP"), "{why}");
}

/// The binary between complete reads: `sync --incremental` applies a change and a deletion it
/// read by USN, then finds nothing more.
#[test]
fn an_incremental_sync_applies_a_change_and_a_deletion_read_by_usn() {
    let site = super::departures_site("usn-sync");
    site.dc.grant_deleted_objects_read(&site.dc.sync_dn);
    site.set_attr("paul", "displayName", &["Paul Girard-Roux"]);
    site.dc.delete(&site.dn("anne"));
    let run = site.sync_ok_at_with(super::T0 + 60, &["--incremental"]);
    assert!(
        run.stdout
            .contains("changes only: 1 changed agents, 1 gone"),
        "{}",
        super::all_output(&run)
    );
    assert!(super::has(&site, &site.mxid("anne"), "suspended"));
    let paul = super::user(&site, &site.mxid("paul"));
    assert_eq!(paul["displayname"], "Paul Girard-Roux", "{paul}");
    assert!(!super::flag(&paul, "suspended"));

    let again = site.sync_ok_at_with(super::T0 + 120, &["--incremental"]);
    assert!(
        again.stdout.contains("0 changed agents, 0 gone") && again.stdout.contains("0 planned"),
        "{}",
        super::all_output(&again)
    );
    let status = site.run(&["status"]);
    assert!(
        status.stdout.contains("Incremental reads: from USN"),
        "{}",
        status.stdout
    );
}
