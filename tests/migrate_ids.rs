//! A changed scope against the real slapd and Synapse: a new id attribute holds the whole plan
//! (nothing created, nothing suspended, whatever the operator allows) until `migrate-ids`
//! re-keys the ledger; a new filter is held until `sync --allow-mass-changes` accepts it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::accounts::{emails, flag};
use common::site::{Settings, Site};
use serde_json::Value;

/// Replaces the mapping's `id_attribute` line.
fn set_id_attribute(site: &Site, attribute: &str) {
    let path = site.dir.path().join("mapping.toml");
    let mapping = std::fs::read_to_string(&path).unwrap();
    let line = "id_attribute = \"entryUUID\"";
    assert!(mapping.contains(line), "{mapping}");
    std::fs::write(
        &path,
        mapping.replace(line, &format!("id_attribute = \"{attribute}\"")),
    )
    .unwrap();
}

/// `count` agents `a0000`, `a0001`, … (given name Agent, surname N0, N1, …), each with an
/// e-mail address, in one LDIF.
fn add_agents(site: &Site, count: usize) {
    let ldif: String = (0..count)
        .map(|i| {
            format!(
                "dn: uid=a{i:04},{ou}\nobjectClass: inetOrgPerson\nuid: a{i:04}\ncn: Agent {i}\n\
                 givenName: Agent\nsn: N{i} {tag}\nou: DSI\nmail: a{i:04}.{tag}@example.org\n\n",
                ou = site.ou,
                tag = site.tag
            )
        })
        .collect();
    site.slapd.add_ldif(&ldif);
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

#[test]
fn a_new_id_attribute_creates_nothing_and_migrate_ids_rekeys_every_account() {
    const AGENTS: usize = 300;
    let site = Site::new("rekey");
    add_agents(&site, AGENTS);
    site.sync_ok();
    let accounts = site.synapse.users_named(&site.tag);
    assert_eq!(accounts.len(), AGENTS);
    let first = site.mxid("agent.n7");
    let first_emails = emails(&site.synapse.get_user(&first).unwrap());
    assert_eq!(first_emails, [format!("a0007.{}@example.org", site.tag)]);

    set_id_attribute(&site, "uid");

    // `plan` shows what the new ids would do, and that none of it will be applied.
    let (code, plan) = site.plan_json();
    assert_eq!(code, 2, "{plan}");
    assert_eq!(plan["brake_holds"], "everything", "{}", plan["brake"]);
    assert_eq!(plan["needs_migration"], true);
    assert_eq!(plan["counts"]["create_account"], AGENTS);
    assert_eq!(
        plan["held_by_brake"],
        plan["actions"].as_array().unwrap().len()
    );
    // The departures' limits are named too: 300 of the old ids are gone.
    let brake = plan["brake"].as_str().unwrap();
    assert!(
        brake.ends_with("; the id attribute (`entryUUID` → `uid`) changed since the last good run"),
        "{brake}"
    );
    let text = site.run(&["plan"]).stdout;
    assert!(
        text.contains("BRAKE: `sync` will apply nothing of this plan")
            && text.contains("`migrate-ids` re-keys the ledger"),
        "{text}"
    );

    // `sync` writes nothing to the homeserver, with or without the operator's override.
    let mark = site.synapse.log_mark();
    for args in [&["sync"][..], &["sync", "--allow-mass-changes"]] {
        let run = site.run(args);
        assert_eq!(run.code, 3, "{args:?}\n{}\n{}", run.stdout, run.stderr);
        assert!(
            run.stdout.contains("action(s) held back, the whole plan"),
            "{}",
            run.stdout
        );
    }
    assert_eq!(site.writes_since(mark), vec![]);
    assert_eq!(site.synapse.users_named(&site.tag), accounts);
    assert_eq!(
        emails(&site.synapse.get_user(&first).unwrap()),
        first_emails
    );
    let status = site.run(&["status"]).stdout;
    assert!(
        status.contains("BRAKE ENGAGED: the whole plan") && status.contains("migrate-ids"),
        "{status}"
    );
    assert_eq!(
        json(&site.run(&["status", "--json"]).stdout)["needs_migration"],
        true
    );

    // The dry run: every account matched by its old entryUUID, nothing written.
    let dry = site.run(&["migrate-ids", "--json"]);
    assert_eq!(dry.code, 0, "{}\n{}", dry.stdout, dry.stderr);
    let dry = json(&dry.stdout);
    let counts = &dry["counts"];
    for (key, expected) in [
        ("matched", AGENTS),
        ("rekeyed", AGENTS),
        ("by_old_id", AGENTS),
        ("ambiguous", 0),
        ("unmatched", 0),
        ("new_agents", 0),
    ] {
        assert_eq!(counts[key], expected, "{key}: {counts}");
    }
    assert_eq!(dry["from"]["attribute"], "entryUUID");
    assert_eq!(dry["to"]["attribute"], "uid");
    assert_eq!(dry["applied"], Value::Null);
    let text = site.run(&["migrate-ids"]).stdout;
    assert!(
        text.starts_with("Dry run: nothing is written")
            && text.contains("Matched (300): 300 by entryUUID, 0 by DN, 0 by e-mail")
            && text.contains("`--apply` would re-key 300 account(s)"),
        "{text}"
    );
    assert_eq!(site.plan_json().1["brake_holds"], "everything");

    let applied = site.run(&["migrate-ids", "--apply"]);
    assert_eq!(applied.code, 0, "{}\n{}", applied.stdout, applied.stderr);
    assert!(
        applied.stdout.contains("Re-keyed 300 account(s)"),
        "{}",
        applied.stdout
    );

    // Run again (as after a crash between its steps), it finds every account keyed already.
    let again = json(&site.run(&["migrate-ids", "--json"]).stdout);
    assert_eq!(
        (&again["counts"]["same_id"], &again["counts"]["rekeyed"]),
        (&Value::from(AGENTS), &Value::from(0)),
        "{}",
        again["counts"]
    );

    // Under the new ids: nothing to create, nothing gone, nothing written.
    let (code, plan) = site.plan_json();
    assert_eq!(code, 0, "{plan}");
    assert_eq!(plan["brake"], Value::Null);
    let mark = site.synapse.log_mark();
    let run = site.sync_ok_with(&["--json"]);
    let summary = json(&run.stdout);
    assert_eq!(summary["planned"], 0, "{summary}");
    assert_eq!(site.writes_since(mark), vec![]);
    assert_eq!(site.synapse.users_named(&site.tag), accounts);
    assert_eq!(
        emails(&site.synapse.get_user(&first).unwrap()),
        first_emails
    );
    let history = site.run(&["history", "--user", &first]).stdout;
    assert!(
        history.contains("migrate_id")
            && history.contains("→ a0007 (entryUUID (text) → uid (text)), matched by entryUUID"),
        "{history}"
    );

    // The ledger works on under the new ids: an agent who leaves is their own account's
    // departure.
    site.set_attr("a0007", "employeeType", &["departed"]);
    let run = site.sync_ok_with(&["--json"]);
    assert_eq!(json(&run.stdout)["held_back"], 0);
    assert!(flag(&site.synapse.get_user(&first).unwrap(), "suspended"));
    assert_eq!(site.synapse.users_named(&site.tag), accounts);
}

#[test]
fn an_account_without_its_agent_stops_the_migration_unless_allowed() {
    let site = Site::new("rekeygone");
    add_agents(&site, 4);
    site.sync_ok();
    site.slapd.delete(&format!("uid=a0003,{}", site.ou));
    set_id_attribute(&site, "uid");

    let refused = site.run(&["migrate-ids", "--apply"]);
    assert_eq!(refused.code, 1, "{}\n{}", refused.stdout, refused.stderr);
    assert!(
        refused.stdout.starts_with("Refused: nothing is written")
            && refused
                .stdout
                .contains("Unmatched accounts (1): they keep their old ids")
            && refused
                .stderr
                .contains("1 account(s) not deactivated match no agent"),
        "{}\n{}",
        refused.stdout,
        refused.stderr
    );
    assert_eq!(site.plan_json().1["brake_holds"], "everything");

    let applied = site.run(&["migrate-ids", "--apply", "--allow-unmatched"]);
    assert_eq!(applied.code, 0, "{}\n{}", applied.stdout, applied.stderr);
    // The next run sees the gone agent leave (within the brake's limits: one of four is over
    // nothing but the percentage, which starts at 10 departures), and creates nobody.
    let (_, plan) = site.plan_json();
    assert_eq!(plan["counts"]["create_account"], 0, "{plan}");
    assert_eq!(plan["counts"]["suspend_account"], 1, "{plan}");
    site.sync_ok();
    assert!(flag(
        &site.synapse.get_user(&site.mxid("agent.n3")).unwrap(),
        "suspended"
    ));
    assert_eq!(site.synapse.users_named(&site.tag).len(), 4);
}

#[test]
fn a_new_filter_is_held_whole_until_an_operator_accepts_it() {
    let site = Site::new("rescope");
    let narrow = "(&(objectClass=inetOrgPerson)(uid=*)(!(employeeType=contractor)))";
    site.configure(&Settings {
        filter: Some(narrow.into()),
        ..Settings::default()
    });
    site.add_agent("staff", "Sabine", "Interne", "DSI", None);
    site.add_agent_with(
        "contractor",
        "Carl",
        "Externe",
        "DSI",
        None,
        "employeeType: contractor\n",
    );
    site.sync_ok();
    assert_eq!(site.synapse.users_named(&site.tag).len(), 1);

    // An OU of contractors joins the scope: a creation only, held all the same.
    site.configure(&Settings::default());
    let mark = site.synapse.log_mark();
    let run = site.run(&["sync"]);
    assert_eq!(run.code, 3, "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stdout.contains("the agent filter (`")
            && run
                .stdout
                .contains("`sync --allow-mass-changes` accepts the new scope"),
        "{}",
        run.stdout
    );
    assert_eq!(site.writes_since(mark), vec![]);
    let (_, plan) = site.plan_json();
    assert_eq!(
        (
            plan["brake_holds"].as_str(),
            plan["needs_migration"].as_bool()
        ),
        (Some("everything"), Some(false))
    );

    site.sync_ok_with(&["--allow-mass-changes"]);
    assert!(site.synapse.get_user(&site.mxid("carl.externe")).is_some());
    // The new scope is the last good run's: the next run is not held.
    let (code, plan) = site.plan_json();
    assert_eq!((code, &plan["brake"]), (0, &Value::Null), "{plan}");
}
