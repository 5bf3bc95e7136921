//! End to end: the real `matrix-ldap-sync` binary against a real slapd and a real Synapse.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;

use common::accounts::emails;
use common::site::{Settings, Site};
use common::{write_secret, Slapd, Synapse};
use serde_json::Value;

fn display_name(synapse: &Synapse, mxid: &str) -> String {
    let user = synapse
        .get_user(mxid)
        .unwrap_or_else(|| panic!("{mxid} does not exist"));
    user["displayname"].as_str().unwrap_or_default().to_string()
}

#[test]
fn first_sync_creates_accounts_with_names_emails_and_distinct_localparts() {
    let site = Site::new("first");
    site.add_agent(
        "edupre",
        "Élodie",
        "Dupré",
        "DSI",
        Some("elodie.dupre@example.org"),
    );
    site.add_agent(
        "jmartin1",
        "Jean",
        "Martin",
        "RH",
        Some("jean.martin@example.org"),
    );
    site.add_agent(
        "jmartin2",
        "Jean",
        "Martin",
        "Finances",
        Some("jean.martin2@example.org"),
    );
    site.add_agent("pyves", "Pierre-Yves", "L'Hôte", "Juridique", None);

    let (code, plan) = site.plan_json();
    assert_eq!(code, 2, "plan must say changes are pending: {plan}");
    assert_eq!(plan["counts"]["create_account"], 4, "{plan}");
    assert!(
        !Path::new(&site.dir.path().join("state")).exists(),
        "a dry run must not create the ledger"
    );

    let run = site.sync_ok();
    assert!(run.stdout.contains("4 applied"), "{}", run.stdout);

    let elodie = site
        .synapse
        .get_user(&site.mxid("elodie.dupre"))
        .expect("Élodie's account");
    assert_eq!(
        elodie["displayname"],
        format!("Élodie Dupré {} [DSI]", site.tag)
    );
    assert_eq!(emails(&elodie), vec!["elodie.dupre@example.org"]);
    assert_eq!(elodie["deactivated"], false);

    // Two Jean Martins: two accounts, and which is which is recorded, not guessed again.
    let jean1 = display_name(site.synapse, &site.mxid("jean.martin"));
    let jean2 = display_name(
        site.synapse,
        &format!("@jean.martin-{}2:{}", site.tag, site.synapse.server_name),
    );
    let mut depts = vec![jean1, jean2];
    depts.sort();
    assert_eq!(
        depts,
        vec![
            format!("Jean Martin {} [Finances]", site.tag),
            format!("Jean Martin {} [RH]", site.tag)
        ]
    );

    let pierre = site
        .synapse
        .get_user(&site.mxid("pierre-yves.lhote"))
        .expect("Pierre-Yves's account");
    assert!(emails(&pierre).is_empty());

    let status = site.run(&["status"]);
    assert!(
        status
            .stdout
            .contains("Managed accounts: 4 (4 created, 0 adopted)"),
        "{}",
        status.stdout
    );
}

#[test]
fn second_sync_writes_nothing() {
    let site = Site::new("noop");
    site.add_agent("alice", "Alice", "Durand", "DSI", Some("alice@example.org"));
    site.add_agent("bob", "Bob", "Petit", "RH", None);
    site.sync_ok();

    let mark = site.synapse.log_mark();
    let (code, plan) = site.plan_json();
    assert_eq!(
        (code, plan["changes_pending"].as_bool()),
        (0, Some(false)),
        "{plan}"
    );
    let run = site.sync_ok();
    assert!(
        run.stdout.contains("0 planned, 0 applied"),
        "{}",
        run.stdout
    );
    assert_eq!(
        site.writes_since(mark),
        vec![],
        "a sync with nothing changed wrote to the homeserver"
    );
}

#[test]
fn a_display_name_change_in_ldap_reaches_the_homeserver() {
    let site = Site::new("rename");
    site.add_agent(
        "anais",
        "Anaïs",
        "Côté",
        "Communication",
        Some("anais@example.org"),
    );
    site.sync_ok();
    let mxid = site.mxid("anais.cote");

    site.slapd.modify_ldif(&format!(
        "dn: uid=anais,{}\nchangetype: modify\nreplace: ou\nou: DSI\n-\nreplace: mail\nmail: anais.cote@example.org\n",
        site.ou
    ));
    let plan = site.run(&["plan"]);
    assert_eq!(plan.code, 2, "{}", plan.stdout);
    assert!(
        plan.stdout.contains("Update account (1)"),
        "{}",
        plan.stdout
    );
    assert!(
        plan.stdout.contains("[Communication]\" → \""),
        "{}",
        plan.stdout
    );

    let mark = site.synapse.log_mark();
    site.sync_ok();
    let user = site.synapse.get_user(&mxid).unwrap();
    assert_eq!(
        user["displayname"],
        format!("Anaïs Côté {} [DSI]", site.tag)
    );
    assert_eq!(emails(&user), vec!["anais.cote@example.org"]);
    assert_eq!(
        site.writes_since(mark).len(),
        1,
        "one PUT for one changed account"
    );
}

#[test]
fn a_renamed_or_moved_entry_keeps_its_account() {
    let site = Site::new("moves");
    site.add_agent("zoe", "Zoë", "Faure", "RH", None);
    site.sync_ok();
    let mxid = site.mxid("zoe.faure");
    assert!(site.synapse.get_user(&mxid).is_some());

    // New RDN (uid changes) and a move into a sub-OU of the same base: same entryUUID.
    site.slapd.add_ldif(&format!(
        "dn: ou=archive,{}\nobjectClass: organizationalUnit\nou: archive\n",
        site.ou
    ));
    site.slapd.modify_ldif(&format!(
        "dn: uid=zoe,{ou}\nchangetype: modrdn\nnewrdn: uid=zfaure\ndeleteoldrdn: 1\nnewsuperior: ou=archive,{ou}\n",
        ou = site.ou
    ));
    let mark = site.synapse.log_mark();
    let (code, plan) = site.plan_json();
    assert_eq!(
        code, 0,
        "a move alone changes nothing on the homeserver: {plan}"
    );
    assert_eq!(
        plan["moves"][0]["to_dn"],
        format!("uid=zfaure,ou=archive,{}", site.ou),
        "{plan}"
    );
    site.sync_ok();
    assert_eq!(site.writes_since(mark), vec![]);
    let status = site.run(&["status"]);
    assert!(
        status.stdout.contains("Managed accounts: 1 "),
        "{}",
        status.stdout
    );
    assert!(site
        .synapse
        .get_user(&format!(
            "@zoe.faure-{}2:{}",
            site.tag, site.synapse.server_name
        ))
        .is_none());
}

#[test]
fn a_large_first_sync_lists_accounts_once_and_still_adopts_and_refuses() {
    const AGENTS: usize = 120;
    // A homeserver of its own: whether one listing costs less than a lookup per account
    // depends on how many accounts the shared one holds by then.
    let synapse: &'static Synapse = Box::leak(Box::new(Synapse::start()));
    let site = Site::on_servers(Slapd::shared(), synapse, "bulk");
    // A server whose users were made by LDAP logins: the admin opts in to adopting them.
    site.configure(&Settings {
        account_extra: "adopt = \"all\"".into(),
        ..Settings::default()
    });
    let ldif: String = (0..AGENTS)
        .map(|i| {
            format!(
                "dn: uid=b{i},{ou}\nobjectClass: inetOrgPerson\nuid: b{i}\ncn: Bulk {i}\ngivenName: Bulk\nsn: N{i} {tag}\nou: DSI\n\n",
                ou = site.ou,
                tag = site.tag
            )
        })
        .collect();
    site.slapd.add_ldif(&ldif);
    let adopted = site
        .synapse
        .create_user(&format!("bulk.n0-{}", site.tag), Some("Old name"));
    let gone = site
        .synapse
        .create_user(&format!("bulk.n1-{}", site.tag), Some("Gone"));
    let (code, body) = site.synapse.request(
        "POST",
        &format!("/_synapse/admin/v1/deactivate/{gone}"),
        Some(&serde_json::json!({"erase": false})),
    );
    assert_eq!(code, 200, "{body}");

    let mark = site.synapse.log_mark();
    let run = site.run(&["sync"]);
    // One listing instead of a lookup per account: a GET only for the two accounts that
    // exist (their e-mails), and one PUT per account created or adopted.
    let ours: Vec<(String, String)> = site
        .synapse
        .requests_since(mark)
        .into_iter()
        .filter(|(_, path)| path.contains(&site.tag))
        .collect();
    let gets: Vec<_> = ours.iter().filter(|(m, _)| m == "GET").collect();
    let puts = ours.iter().filter(|(m, _)| m == "PUT").count();
    assert_eq!(gets.len(), 2, "{gets:?}");
    assert_eq!(puts, AGENTS - 1, "{ours:?}");
    assert_eq!(gets.len() + puts, ours.len(), "{ours:?}");
    assert!(run.stdout.contains("(1 adopted)"), "{}", run.stdout);
    assert!(
        run.stdout.contains("deactivated: it is never reused"),
        "{}\n{}",
        run.stdout,
        run.stderr
    );
    assert_eq!(
        display_name(site.synapse, &adopted),
        format!("Bulk N0 {} [DSI]", site.tag)
    );
    let untouched = site.synapse.get_user(&gone).unwrap();
    assert_eq!(untouched["deactivated"], true);
    assert_eq!(untouched["displayname"], "Gone");

    let status: Value = serde_json::from_str(&site.run(&["status", "--json"]).stdout).unwrap();
    assert_eq!(status["managed_accounts"], AGENTS - 1, "{status}");
    assert_eq!(status["adopted"], 1, "{status}");
}

#[test]
fn an_agent_missing_an_attribute_is_skipped_and_the_rest_synced() {
    let site = Site::new("skip");
    site.add_agent("good", "Gaëlle", "Morel", "DSI", None);
    // cn but no givenName: the preset's localpart needs givenName.
    site.slapd.add_ldif(&format!(
        "dn: uid=nogiven,{ou}\nobjectClass: inetOrgPerson\nuid: nogiven\ncn: Nobody\nsn: Nobody {tag}\n",
        ou = site.ou,
        tag = site.tag
    ));
    let plan = site.run(&["plan"]);
    assert!(
        plan.stdout.contains(&format!(
            "uid=nogiven,{}: localpart: attribute `givenName` is missing",
            site.ou
        )),
        "{}",
        plan.stdout
    );
    site.sync_ok();
    assert!(site.synapse.get_user(&site.mxid("gaelle.morel")).is_some());
}

#[test]
fn a_bad_bind_password_is_a_clear_error_and_changes_nothing() {
    let site = Site::new("badpw");
    site.add_agent("x", "Xavier", "Blanc", "DSI", None);
    site.configure(&Settings {
        bind: Some((site.slapd.sync_dn.clone(), "wrong-password-123".into())),
        ..Settings::default()
    });
    let mark = site.synapse.log_mark();
    for args in [&["sync"][..], &["plan"][..], &["check"][..]] {
        let run = site.run(args);
        assert_eq!(run.code, 1, "{args:?}: {}\n{}", run.stdout, run.stderr);
        let text = format!("{}{}", run.stdout, run.stderr);
        assert!(
            text.to_lowercase().contains("invalid credentials"),
            "{args:?}: {text}"
        );
        assert!(text.contains(&site.slapd.sync_dn), "{args:?}: {text}");
        assert!(
            !text.contains("wrong-password-123"),
            "the password leaked: {text}"
        );
    }
    assert_eq!(site.writes_since(mark), vec![]);
}

#[test]
fn a_directory_that_fails_mid_read_aborts_the_run_with_no_action() {
    // The limited account may read 3 entries: the paged read fails on the second page.
    let site = Site::new("partial");
    for i in 0..5 {
        site.add_agent(&format!("p{i}"), "Paul", &format!("Nombre{i}"), "DSI", None);
    }
    site.configure(&Settings {
        bind: Some((
            site.slapd.limited_dn.clone(),
            site.slapd.limited_password.clone(),
        )),
        ..Settings::default()
    });
    let mark = site.synapse.log_mark();
    let run = site.run(&["sync"]);
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stderr.to_lowercase().contains("size limit"),
        "{}",
        run.stderr
    );
    assert_eq!(
        site.writes_since(mark),
        vec![],
        "a partial directory read must not lead to any write"
    );
    let status = site.run(&["status"]);
    assert!(
        status.stdout.contains("failed: directory"),
        "{}",
        status.stdout
    );
}

#[test]
fn a_directory_that_stops_answering_aborts_the_run_with_no_action() {
    let slapd: &'static Slapd = Box::leak(Box::new(Slapd::start()));
    let site = Site::on(slapd, "outage");
    site.add_agent("h", "Hélène", "Garnier", "DSI", None);
    site.sync_ok();
    site.add_agent("i", "Inès", "Garnier", "DSI", None);

    // Frozen: accepts connections, never answers (a hung server).
    slapd.pause();
    let mark = site.synapse.log_mark();
    let run = site.run(&["sync"]);
    slapd.resume();
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stderr.contains("did not answer within 3s"),
        "{}",
        run.stderr
    );

    // Gone: connection refused.
    slapd.stop();
    let run2 = site.run(&["sync"]);
    assert_eq!(run2.code, 1, "{}\n{}", run2.stdout, run2.stderr);
    assert!(
        run2.stderr.contains(&slapd.url),
        "the error names the directory: {}",
        run2.stderr
    );
    assert_eq!(site.writes_since(mark), vec![]);

    // Back: the pending agent is created, the existing one untouched.
    slapd.start_again();
    let mark = site.synapse.log_mark();
    site.sync_ok();
    assert_eq!(site.writes_since(mark).len(), 1);
}

#[test]
fn check_reports_each_step() {
    let site = Site::new("check");
    site.add_agent("c", "Chloé", "Henry", "DSI", None);
    let run = site.run(&["check"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    for step in [
        "config",
        "mapping",
        "directory bind",
        "directory search",
        "homeserver token",
        "homeserver admin API",
    ] {
        assert!(
            run.stdout.contains(&format!("OK      {step}")),
            "{step}: {}",
            run.stdout
        );
    }
    assert!(
        run.stdout.contains("(OpenLDAP) as cn=sync"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("1 agents"), "{}", run.stdout);

    std::fs::write(
        site.config(),
        std::fs::read_to_string(site.config()).unwrap().replace(
            "access_token_file = \"token\"",
            "access_token_file = \"token2\"",
        ),
    )
    .unwrap();
    write_secret(site.dir.path(), "token2", "syt_not_a_real_token");
    let run = site.run(&["check"]);
    assert_eq!(run.code, 1);
    assert!(
        run.stdout.contains("FAILED  homeserver token"),
        "{}",
        run.stdout
    );
    assert!(
        !run.stdout.contains("syt_not_a_real_token"),
        "{}",
        run.stdout
    );
}

#[test]
fn a_config_error_names_the_file_and_key() {
    let site = Site::new("badcfg");
    let text = std::fs::read_to_string(site.config())
        .unwrap()
        .replace("page_size = 2", "page_size = 0");
    std::fs::write(site.config(), text).unwrap();
    let run = site.run(&["plan"]);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr
            .contains("config.toml: key `directory.page_size`"),
        "{}",
        run.stderr
    );
}
