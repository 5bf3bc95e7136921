//! What the homeserver would refuse is made acceptable when mapping and planning, against a
//! real slapd and a real Synapse: a surname so long that the mxid would pass 255 bytes, a
//! department so long that the display name would pass 256 characters, an e-mail value that
//! is not an address, a name written in decomposed Unicode. Synapse takes every account, a
//! second run has nothing to write, and the incremental reads that follow build on it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::site::{Settings, Site};
use serde_json::Value;

/// The mxids the plan creates, by DN.
fn created(plan: &Value) -> Vec<(String, String)> {
    let mut created: Vec<(String, String)> = plan["actions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["kind"] == "create_account")
        .map(|a| {
            (
                a["dn"].as_str().unwrap().to_string(),
                a["mxid"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    created.sort();
    created
}

fn sync_json(site: &Site, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let run = site.sync_ok_with(&all);
    serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{e}: {}", run.stdout))
}

#[test]
fn overlong_names_become_accounts_synapse_takes_and_a_second_run_writes_nothing() {
    let site = Site::new("limits");
    site.configure(&Settings {
        // The incremental run at the end must not be due for a complete read.
        directory_extra: "full_sync_every = \"1d\"\n".into(),
        ..Settings::default()
    });
    let tag = site.tag.clone();
    let dn = |uid: &str| format!("uid={uid},{}", site.ou);

    // Two agents with one 341-character surname: the localpart `lena-<tag>.<surname>-<tag>`
    // is cut (the tag at its beginning keeps it this test's), the second gets the suffix.
    let surname = format!("{}abc", "Vandenbroucke".repeat(26));
    assert_eq!(surname.chars().count(), 341);
    let given = format!("Lena {tag}");
    site.add_agent_with("long1", &given, &surname, "DSI", None, "");
    site.add_agent_with("long2", &given, &surname, "DRH", None, "");
    // A 313-character department: the display name `{givenName} {sn} [{ou?}]` is cut; one of
    // its two mails is not an address.
    let department = format!("{}DSI", "Sous-direction de l'Évaluation ".repeat(10));
    assert_eq!(department.chars().count(), 313);
    let dept_mail = format!("dora-{tag}@example.org");
    site.add_agent_with(
        "dept",
        "Dora",
        "Dept",
        &department,
        Some(&dept_mail),
        &format!("mail: dora {tag}@example.org\n"),
    );
    // An ordinary agent, her given name in decomposed Unicode (`e` + U+0301).
    site.add_agent("plain", "Ele\u{301}onore", "Petit", "DSI", None);

    let (code, plan) = site.plan_json();
    assert_eq!(code, 2, "changes pending: {plan}");
    assert_eq!(plan["skipped"], serde_json::json!([]), "{plan}");
    let warnings: Vec<&str> = plan["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let warned = |who: &str, what: &str| {
        assert!(
            warnings
                .iter()
                .any(|w| w.starts_with(&format!("{}: ", dn(who))) && w.contains(what)),
            "no warning `{what}` for {who}: {warnings:#?}"
        );
    };
    warned(
        "long1",
        "is too long for a user id on example.org (255 bytes): cut to 239 characters",
    );
    warned("long2", "cut to 239 characters");
    warned("long1", "cut to 256 (the homeserver refuses longer ones)");
    // `Dora Dept <tag> [<department>]`
    let dept_name = 4 + 1 + 4 + 1 + tag.len() + 2 + 313 + 1;
    warned(
        "dept",
        &format!("display name of {dept_name} characters cut to 256"),
    );
    warned(
        "dept",
        &format!("`dora {tag}@example.org` is not an e-mail address"),
    );
    let text = site.run(&["plan"]);
    assert!(
        text.stdout.contains(&format!(
            "warning: {}: display name of {dept_name}",
            dn("dept")
        )),
        "{}",
        text.stdout
    );

    let created = created(&plan);
    let mxid_of = |uid: &str| {
        created
            .iter()
            .find(|(d, _)| *d == dn(uid))
            .map(|(_, m)| m.clone())
            .unwrap_or_else(|| panic!("no account for {uid}: {created:?}"))
    };
    let base =
        format!("lena-{tag}.{}", format!("{surname}-{tag}").to_lowercase())[..239].to_string();
    assert_eq!(mxid_of("long1"), format!("@{base}:example.org"));
    assert_eq!(mxid_of("long2"), format!("@{base}2:example.org"));

    let first = sync_json(&site, &[]);
    assert_eq!(first["applied"], 4, "{first}");
    assert_eq!(first["failed"], serde_json::json!([]), "{first}");
    assert_eq!(first["refused"], serde_json::json!([]), "{first}");

    // Read back through the admin API: Synapse took them as they were sent.
    for uid in ["long1", "long2", "dept", "plain"] {
        let mxid = mxid_of(uid);
        assert!(mxid.len() <= 255, "{mxid}");
        let user = site
            .synapse
            .get_user(&mxid)
            .unwrap_or_else(|| panic!("{uid}: {mxid} does not exist"));
        let name = user["displayname"].as_str().unwrap();
        assert!(name.chars().count() <= 256, "{uid}: {name}");
    }
    let dora = site.synapse.get_user(&mxid_of("dept")).unwrap();
    let name = dora["displayname"].as_str().unwrap();
    // 256 characters, `…` included, less a space the cut fell after.
    assert!((255..=256).contains(&name.chars().count()), "{name}");
    assert!(
        name.starts_with(&format!("Dora Dept {tag} [Sous-direction de l'Évaluation")),
        "{name}"
    );
    assert!(name.ends_with('…'), "{name}");
    let threepids: Vec<&str> = dora["threepids"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["address"].as_str())
        .collect();
    assert_eq!(threepids, [dept_mail.as_str()]);
    let plain = site.synapse.get_user(&mxid_of("plain")).unwrap();
    assert_eq!(
        plain["displayname"].as_str().unwrap(),
        format!("Eléonore Petit {tag} [DSI]"),
        "composed (NFC)"
    );
    assert!(mxid_of("plain").starts_with(&format!("@eleonore.petit-{tag}:")));

    // The ledger holds what was sent: the next run finds nothing to write.
    let mark = site.synapse.log_mark();
    let second = sync_json(&site, &[]);
    assert_eq!(
        (&second["planned"], &second["applied"]),
        (&0.into(), &0.into()),
        "{second}"
    );
    assert_eq!(site.writes_since(mark), vec![], "the second sync wrote");
    let (code, again) = site.plan_json();
    assert_eq!(code, 0, "no changes pending: {again}");

    // That run left its watermark: an incremental run reads the changes only. The agent's
    // department is renamed (another name too long: Synapse refuses a display name over 256
    // characters on every update) and her e-mail changes: both arrive.
    let renamed = format!("{}RH", "Sous-direction des Ressources humaines ".repeat(8));
    let new_mail = format!("dora.dept-{tag}@example.org");
    site.set_attr("dept", "ou", &[&renamed]);
    site.set_attr("dept", "mail", &[&new_mail]);
    let incremental = sync_json(&site, &["--incremental"]);
    assert_eq!(incremental["read"]["kind"], "changes", "{incremental}");
    assert_eq!(incremental["agents"], 1, "{incremental}");
    assert_eq!(incremental["applied"], 1, "{incremental}");
    assert_eq!(
        incremental["refused"],
        serde_json::json!([]),
        "{incremental}"
    );
    let dora = site.synapse.get_user(&mxid_of("dept")).unwrap();
    let name = dora["displayname"].as_str().unwrap();
    assert!(
        name.starts_with(&format!(
            "Dora Dept {tag} [Sous-direction des Ressources humaines"
        )),
        "{name}"
    );
    assert!((255..=256).contains(&name.chars().count()), "{name}");
    assert_eq!(dora["threepids"][0]["address"], new_mail.as_str(), "{dora}");
    let quiet = sync_json(&site, &["--incremental"]);
    assert_eq!(quiet["read"]["kind"], "changes", "{quiet}");
    assert_eq!(quiet["planned"], 0, "{quiet}");
}
