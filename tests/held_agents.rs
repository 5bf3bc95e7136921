//! Agents the daemon may not or cannot serve, against the real slapd and Synapse: an account
//! someone registered by hand with the agent's localpart is never taken over (a conflict),
//! unless it provably is the agent's or the admin opted in; an action the homeserver refuses
//! holds that one agent and never fails the run, its watermark or the rest.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::accounts::emails;

use common::site::{Settings, Site};
use common::{Slapd, Synapse};
use serde_json::{json, Value};

/// Registers `localpart` by hand, with a password and a personal e-mail, as a user would.
fn register_by_hand(synapse: &Synapse, localpart: &str, email: &str) -> String {
    let mxid = format!("@{localpart}:{}", synapse.server_name);
    let body = json!({
        "password": "squatter-password",
        "displayname": "Squatter",
        "threepids": [{"medium": "email", "address": email}],
        "admin": false,
    });
    let (code, reply) = synapse.request(
        "PUT",
        &format!("/_synapse/admin/v2/users/{mxid}"),
        Some(&body),
    );
    assert_eq!(code, 201, "{reply}");
    mxid
}

/// Logs in with the password `register_by_hand` set: the account's owner still can.
fn password_login(synapse: &Synapse, mxid: &str) -> u16 {
    let body = json!({
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": mxid},
        "password": "squatter-password",
    });
    synapse
        .request("POST", "/_matrix/client/v3/login", Some(&body))
        .0
}

fn status_json(site: &Site) -> Value {
    serde_json::from_str(&site.run(&["status", "--json"]).stdout).unwrap()
}

#[test]
fn a_hand_registered_account_with_the_agents_localpart_is_a_conflict_never_taken_over() {
    let site = Site::new("squat");
    site.add_agent(
        "edupre",
        "Élodie",
        "Dupré",
        "DSI",
        Some("elodie.dupre@example.org"),
    );
    site.add_agent(
        "pmorel",
        "Paul",
        "Morel",
        "DSI",
        Some("paul.morel@example.org"),
    );
    let squatted = register_by_hand(
        site.synapse,
        &format!("elodie.dupre-{}", site.tag),
        "squatter@gmail.com",
    );
    assert_eq!(squatted, site.mxid("elodie.dupre"));

    let (code, plan) = site.plan_json();
    assert_eq!(code, 2, "{plan}");
    assert_eq!(plan["counts"]["create_account"], 1, "only Paul: {plan}");
    assert_eq!(plan["counts"]["adopt_account"], 0, "{plan}");
    let conflict = &plan["conflicts"][0];
    assert_eq!(conflict["mxid"], squatted.as_str(), "{plan}");
    assert!(
        conflict["dn"].as_str().unwrap().starts_with("uid=edupre,"),
        "{plan}"
    );
    let text = site.run(&["plan"]).stdout;
    assert!(text.contains("Conflicts: an existing account"), "{text}");

    let run = site.sync_ok();
    assert!(run.stdout.contains("CONFLICT"), "{}", run.stdout);
    assert!(
        run.stderr.contains("uid=edupre,") && run.stderr.contains(&squatted),
        "a warning names the DN and the mxid:\n{}",
        run.stderr
    );
    // Untouched: name, e-mail and the owner's own password.
    let user = site.synapse.get_user(&squatted).unwrap();
    assert_eq!(user["displayname"], "Squatter");
    assert_eq!(emails(&user), vec!["squatter@gmail.com"]);
    assert_eq!(password_login(site.synapse, &squatted), 200);

    let status = status_json(&site);
    assert_eq!(status["managed_accounts"], 1, "{status}");
    assert_eq!(status["held"][0]["held"], "conflict", "{status}");
    assert_eq!(status["held"][0]["mxid"], squatted.as_str(), "{status}");
    let explain = site.run(&["explain", "edupre"]).stdout;
    assert!(explain.contains("conflict"), "{explain}");
    let history = site.run(&["history", "--json"]).stdout;
    assert!(
        !history.contains(&squatted),
        "never recorded as applied: {history}"
    );

    // A second sync: still nothing done to it, and nothing else to do.
    let again = site.sync_ok();
    assert!(again.stdout.contains("0 applied"), "{}", again.stdout);
    assert_eq!(
        site.synapse.get_user(&squatted).unwrap()["displayname"],
        "Squatter"
    );

    // The admin opts in: now it is taken over, and the ledger calls it adopted.
    site.configure(&Settings {
        account_extra: "adopt = \"all\"".into(),
        ..Settings::default()
    });
    let (_, plan) = site.plan_json();
    assert_eq!(plan["counts"]["adopt_account"], 1, "{plan}");
    assert!(plan["conflicts"].as_array().unwrap().is_empty(), "{plan}");
    site.sync_ok();
    let user = site.synapse.get_user(&squatted).unwrap();
    assert_eq!(
        user["displayname"],
        format!("Élodie Dupré {} [DSI]", site.tag)
    );
    assert_eq!(emails(&user), vec!["elodie.dupre@example.org"]);
    let status = status_json(&site);
    assert_eq!(status["adopted"], 1, "{status}");
    assert!(status["held"].as_array().unwrap().is_empty(), "{status}");
}

#[test]
fn an_existing_account_holding_the_agents_email_is_adopted_by_default() {
    let site = Site::new("mine");
    site.add_agent(
        "jmoreau",
        "Julie",
        "Moreau",
        "RH",
        Some("julie.moreau@example.org"),
    );
    let hers = register_by_hand(
        site.synapse,
        &format!("julie.moreau-{}", site.tag),
        "Julie.Moreau@example.org",
    );
    let (_, plan) = site.plan_json();
    assert_eq!(plan["counts"]["adopt_account"], 1, "{plan}");
    let reason = plan["actions"][0]["reason"].as_str().unwrap();
    assert!(reason.contains("julie.moreau@example.org"), "{reason}");
    let run = site.sync_ok();
    assert!(run.stdout.contains("(1 adopted)"), "{}", run.stdout);
    assert_eq!(
        site.synapse.get_user(&hers).unwrap()["displayname"],
        format!("Julie Moreau {} [RH]", site.tag)
    );
}

#[test]
fn next_free_gives_the_agent_another_localpart_and_leaves_the_other_account_alone() {
    let site = Site::new("nextfree");
    site.configure(&Settings {
        account_extra: "on_conflict = \"next_free\"".into(),
        ..Settings::default()
    });
    site.add_agent("lroux", "Luc", "Roux", "DSI", Some("luc.roux@example.org"));
    let other = register_by_hand(
        site.synapse,
        &format!("luc.roux-{}", site.tag),
        "luc@perso.fr",
    );
    let run = site.sync_ok();
    assert!(run.stdout.contains("1 applied"), "{}", run.stdout);
    let his = format!("@luc.roux-{}2:{}", site.tag, site.synapse.server_name);
    assert_eq!(
        site.synapse.get_user(&his).unwrap()["displayname"],
        format!("Luc Roux {} [DSI]", site.tag)
    );
    assert_eq!(
        site.synapse.get_user(&other).unwrap()["displayname"],
        "Squatter"
    );
}

#[test]
fn an_agent_the_homeserver_refuses_is_held_and_the_run_and_its_watermark_go_on() {
    let site = Site::on_servers(Slapd::shared(), common::synapse::with_a_bridge(), "refused");
    // A bridge holds `reserved-…`: such an agent is refused on creation.
    let reserved = format!("reserved-{}", site.tag);
    site.configure(&Settings {
        localpart: Some("{employeeNumber|localpart}".into()),
        mapping_extra: "\n[[rooms]]\nroom = \"#everyone-TAG:SERVER\"\neveryone = true\ncreate = { name = \"Everyone\" }\n"
            .replace("TAG", &site.tag)
            .replace("SERVER", &site.synapse.server_name),
        ..Settings::default()
    });
    let ok = format!("ok-{}", site.tag);
    site.add_agent_with(
        "good",
        "Anne",
        "Bon",
        "DSI",
        Some("anne.bon@example.org"),
        &format!("employeeNumber: {ok}\n"),
    );
    site.add_agent_with(
        "digits",
        "Bruno",
        "Chiffre",
        "DSI",
        Some("bruno.chiffre@example.org"),
        &format!("employeeNumber: {reserved}\n"),
    );
    let refused_mxid = format!("@{reserved}:{}", site.synapse.server_name);

    let run = site.run(&["sync", "--json"]);
    assert_eq!(
        run.code, 0,
        "one refused agent does not fail the run:\n{}\n{}",
        run.stdout, run.stderr
    );
    let summary: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(
        summary["refused"][0]["mxid"],
        refused_mxid.as_str(),
        "{summary}"
    );
    assert!(
        summary["failed"].as_array().unwrap().is_empty(),
        "{summary}"
    );
    let good = format!("@{ok}:{}", site.synapse.server_name);
    assert!(site.synapse.get_user(&good).is_some());
    assert!(site.synapse.get_user(&refused_mxid).is_none());
    // No room action for the account that does not exist.
    let members = site.synapse.room_members(&format!(
        "#everyone-{}:{}",
        site.tag, site.synapse.server_name
    ));
    assert!(members.contains(&good), "{members:?}");
    assert!(
        summary["rooms"]["failed"]
            .as_array()
            .is_none_or(Vec::is_empty),
        "{summary}"
    );

    let status = status_json(&site);
    assert_eq!(status["held"][0]["held"], "refused", "{status}");
    assert!(
        status["held"][0]["error"]
            .as_str()
            .unwrap()
            .contains("M_EXCLUSIVE"),
        "{status}"
    );
    assert_eq!(status["last_run"]["outcome"], "ok", "{status}");

    // Not asked again while the agent is as it was: nothing planned, nothing written.
    let (code, plan) = site.plan_json();
    assert_eq!(code, 0, "{plan}");
    assert_eq!(plan["refused"][0]["mxid"], refused_mxid.as_str(), "{plan}");
    let explain = site.run(&["explain", "digits"]).stdout;
    assert!(explain.contains("refused by the homeserver"), "{explain}");
    let mark = site.synapse.log_mark();
    let again = site.run(&["sync", "--json"]);
    assert_eq!(again.code, 0, "{}\n{}", again.stdout, again.stderr);
    assert!(
        site.writes_since(mark).is_empty(),
        "{:?}",
        site.writes_since(mark)
    );

    // The watermark moved on: the next run reads only the changes.
    let incremental = site.run(&["sync", "--incremental", "--json"]);
    assert_eq!(
        incremental.code, 0,
        "{}\n{}",
        incremental.stdout, incremental.stderr
    );
    let summary: Value = serde_json::from_str(&incremental.stdout).unwrap();
    assert_eq!(summary["read"]["kind"], "changes", "{summary}");

    // Fixed in the directory: tried again at once, and no longer held.
    site.set_attr("digits", "employeeNumber", &[&format!("b{reserved}")]);
    site.sync_ok();
    let fixed = format!("@b{reserved}:{}", site.synapse.server_name);
    assert!(site.synapse.get_user(&fixed).is_some());
    let status = status_json(&site);
    assert!(status["held"].as_array().unwrap().is_empty(), "{status}");
}
