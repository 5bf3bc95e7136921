//! Login paths against a real Synapse with synapse-ldap3 (`matrix-synapse-ldap3` from PyPI)
//! configured on the test slapd as docs/login.md says: agents log in through the client API
//! with their LDAP password, by login or by e-mail, and must land on the accounts the daemon
//! synced, never on new ones; an agent who left cannot use Matrix at all; what cannot work is
//! said by `check` beforehand. And SSO external ids, set and kept in step, as Synapse's admin
//! API looks them up.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::OnceLock;

use serde_json::{json, Value};

use common::site::{Settings, Site};
use common::synapse::ldap3_module;
use common::{Slapd, Synapse};

const PASSWORD: &str = "agent-password";

/// The module's `filter`: the ldap3 preset's agents, without those it marks as departed. It is
/// what `check` prints for that preset (asserted below), so the tested recipe is the printed one.
const MODULE_FILTER: &str = "(&(&(objectClass=inetOrgPerson)(uid=*))(!(employeeType=departed)))";

/// This binary's Synapse: the harness's, plus synapse-ldap3 searching the whole test tree.
fn synapse() -> &'static Synapse {
    static SYNAPSE: OnceLock<Synapse> = OnceLock::new();
    SYNAPSE.get_or_init(|| {
        let slapd = Slapd::shared();
        Synapse::start_with(&ldap3_module(slapd, &slapd.base_dn, MODULE_FILTER))
    })
}

/// A site whose mapping is `preset` plus `mapping_extra`.
fn site(name: &str, preset: &'static str, mapping_extra: &str) -> Site {
    let site = Site::on_servers(Slapd::shared(), synapse(), name);
    site.configure(&Settings {
        preset: Some(preset),
        mapping_extra: mapping_extra.into(),
        ..Settings::default()
    });
    site
}

/// Adds an agent with an LDAP password; returns their uid (`<login>-<tag>`: unique in the
/// tree the module searches).
fn agent(site: &Site, login: &str, given: &str, sn: &str, mail: bool, extra: &str) -> String {
    let uid = format!("{login}-{}", site.tag);
    let mail = mail.then(|| format!("{uid}@example.org"));
    site.add_agent_with(
        &uid,
        given,
        sn,
        "DSI",
        mail.as_deref(),
        &format!("userPassword: {PASSWORD}\n{extra}"),
    );
    uid
}

fn by_login(user: &str) -> Value {
    json!({"type": "m.id.user", "user": user})
}

fn by_email(address: &str) -> Value {
    json!({"type": "m.id.thirdparty", "medium": "email", "address": address})
}

/// Logs in; returns (user_id, access token), or panics with Synapse's answer.
fn logs_in(identifier: Value) -> (String, String) {
    let (status, body) = synapse().login(identifier.clone(), PASSWORD);
    assert_eq!(status, 200, "login {identifier}: {body}");
    (
        body["user_id"].as_str().unwrap().to_string(),
        body["access_token"].as_str().unwrap().to_string(),
    )
}

fn joined_rooms(token: &str) -> Vec<String> {
    let (status, body) =
        synapse().request_as(token, "GET", "/_matrix/client/v3/joined_rooms", None);
    assert_eq!(status, 200, "{body}");
    body["joined_rooms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_string())
        .collect()
}

fn mxid(localpart: &str) -> String {
    format!("@{}:{}", localpart.to_lowercase(), synapse().server_name)
}

fn emails_of(mxid: &str) -> Vec<String> {
    let user = synapse().get_user(mxid).unwrap();
    user["threepids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["address"].as_str().unwrap().to_string())
        .collect()
}

const EVERYONE_ROOM: &str = r##"
[[rooms]]
room = "#login-{tag}:example.org"
everyone = true
create = { name = "Login test" }
"##;

#[test]
fn with_the_recipe_password_and_email_logins_land_on_the_synced_accounts() {
    let site = site("login-recipe", "openldap-ldap3.toml", "");
    let room = format!("#login-{}:example.org", site.tag);
    site.configure(&Settings {
        preset: Some("openldap-ldap3.toml"),
        mapping_extra: EVERYONE_ROOM.replace("{tag}", &site.tag),
        ..Settings::default()
    });
    let cdurand = agent(&site, "cdurand", "Catherine", "Durand", true, "");
    let apoulain = agent(&site, "apoulain", "Amélie", "Poulain", true, "");
    // An accented name, an ASCII login.
    let zorsted = agent(&site, "zorsted", "Zoë", "Ørsted", true, "");

    let check = site.run(&["check"]);
    assert_eq!(check.code, 0, "{}\n{}", check.stdout, check.stderr);
    assert!(
        check.stdout.contains(&format!("OK      login: synapse-ldap3 with attributes.uid `uid`; its `filter` must leave departed agents out: {MODULE_FILTER}")),
        "{}",
        check.stdout
    );
    assert!(!check.stdout.contains("WARN"), "{}", check.stdout);
    site.sync_ok();
    let synced = synapse().users_named(&site.tag);
    assert_eq!(synced, {
        let mut want: Vec<String> = [&apoulain, &cdurand, &zorsted]
            .iter()
            .map(|u| mxid(u))
            .collect();
        want.sort();
        want
    });

    for uid in [&cdurand, &apoulain, &zorsted] {
        // By login, as typed in any case, and by e-mail.
        for identifier in [
            by_login(uid),
            by_login(&uid.to_uppercase()),
            by_email(&format!("{uid}@example.org")),
        ] {
            let (user_id, token) = logs_in(identifier.clone());
            assert_eq!(user_id, mxid(uid), "{identifier}");
            let room_id = synapse().room_id(&room).unwrap();
            assert!(
                joined_rooms(&token).contains(&room_id),
                "{identifier}: not in {room}"
            );
        }
        // The e-mail stays on the synced account.
        assert_eq!(emails_of(&mxid(uid)), [format!("{uid}@example.org")]);
    }
    assert_eq!(synapse().users_named(&site.tag), synced, "no new account");
    let explain = site.run(&["explain", &cdurand]);
    assert!(
        explain.stdout.contains(&format!(
            "login: `{cdurand}` (synapse-ldap3) lands on {}: this account",
            mxid(&cdurand)
        )),
        "{}",
        explain.stdout
    );
    // And the daemon has nothing to say or do.
    let (code, plan) = site.plan_json();
    assert_eq!(code, 0, "{plan}");
    assert_eq!(plan["warnings"], json!([]), "{plan}");
}

#[test]
fn a_departed_agent_cannot_use_matrix_through_any_account() {
    let site = site("login-departed", "openldap-ldap3.toml", "");
    let glebihan = agent(&site, "glebihan", "Gwenaël", "Le Bihan", true, "");
    site.sync_ok();
    let (user_id, _) = logs_in(by_login(&glebihan));
    assert_eq!(user_id, mxid(&glebihan));

    // HR marks the departure; the LDAP password still works (as it usually does for days).
    site.set_attr(&glebihan, "employeeType", &["departed"]);
    let bind = Slapd::shared().search_as(
        &format!("uid={glebihan},{}", site.ou),
        PASSWORD,
        &["-b", &site.ou, "-s", "base", "(objectClass=*)", "dn"],
    );
    assert_eq!(bind.0, 0, "the password still binds: {}", bind.1);
    // Before the daemon has even run: the module's filter leaves the agent out.
    let users = synapse().users_named(&site.tag);
    for identifier in [
        by_login(&glebihan),
        by_login(&mxid(&glebihan)),
        by_email(&format!("{glebihan}@example.org")),
    ] {
        let (status, body) = synapse().login(identifier.clone(), PASSWORD);
        assert_eq!(status, 403, "{identifier}: {body}");
        assert_eq!(body["errcode"], "M_FORBIDDEN", "{body}");
    }
    // After it: suspended, and still no way in. (One agent leaving is all of this small
    // directory: past the brake.)
    site.sync_ok_with(&["--allow-mass-changes"]);
    assert_eq!(
        synapse().get_user(&mxid(&glebihan)).unwrap()["suspended"],
        true
    );
    for identifier in [
        by_login(&glebihan),
        by_login(&mxid(&glebihan)),
        by_email(&format!("{glebihan}@example.org")),
    ] {
        let (status, body) = synapse().login(identifier.clone(), PASSWORD);
        assert_eq!(status, 403, "{identifier}: {body}");
    }
    assert_eq!(synapse().users_named(&site.tag), users, "no new account");
}

#[test]
fn illegal_logins_and_homonyms_are_warned_about_and_create_nothing() {
    let site = site("login-warned", "openldap-ldap3.toml", "");
    // mail is IA5 (ASCII) in the schema: the address is not the login.
    let zoe = agent(&site, "zoë.ørsted", "Zoë", "Ørsted", false, "");
    let zoe_mail = format!("zoe.orsted-{}@example.org", site.tag);
    site.set_attr(&zoe, "mail", &[&zoe_mail]);
    let ablanc = agent(&site, "ablanc", "Anne", "Blanc", true, "");
    // Capitals in the login: typed in any case it works, by e-mail it does not.
    let pleroy = agent(&site, "PLeroy", "Paul", "Leroy", true, "");
    // Two agents with one login, in two OUs the daemon reads (and the module searches).
    let jmartin = agent(&site, "jmartin", "Jean", "Martin", true, "");
    let finances = format!("ou=finances,{}", site.ou);
    Slapd::shared().add_ldif(&format!(
        "dn: {finances}\nobjectClass: organizationalUnit\nou: finances\n\n\
         dn: uid={jmartin},{finances}\nobjectClass: inetOrgPerson\nuid: {jmartin}\ncn: Jean Martin\n\
         givenName: Jean\nsn: Martin {tag}\nmail: {jmartin}@finances.example.org\nuserPassword: {PASSWORD}\n",
        tag = site.tag
    ));

    let check = site.run(&["check"]);
    assert_eq!(
        check.code, 0,
        "warnings do not fail the check: {}",
        check.stdout
    );
    let line = |words: &str| {
        check
            .stdout
            .lines()
            .find(|l| l.starts_with("WARN    login: ") && l.contains(words))
            .unwrap_or_else(|| panic!("no `{words}`:\n{}", check.stdout))
            .to_string()
    };
    let illegal = line("not a legal Matrix localpart");
    assert!(
        illegal.contains(&format!("uid={zoe},{}: `{zoe}`", site.ou)),
        "{illegal}"
    );
    let homonyms = line("belong to several agents");
    assert!(
        homonyms.contains(&format!("uid={jmartin},{}", site.ou)),
        "{homonyms}"
    );
    assert!(
        homonyms.contains(&format!("uid={jmartin},{finances}")),
        "{homonyms}"
    );
    let capitals = line("capitals in their login cannot log in by e-mail");
    assert!(
        capitals.contains(&format!("uid={pleroy},{}: `{pleroy}`", site.ou)),
        "{capitals}"
    );
    assert!(
        check.stdout.contains("with 3 warning(s)"),
        "{}",
        check.stdout
    );

    site.sync_ok();
    // The plan sees what the sync gave: the second Jean Martin got `jmartin…2`, where no
    // login of theirs lands.
    let (_, plan) = site.plan_json();
    let warnings = plan["warnings"].to_string();
    assert!(warnings.contains("belong to several agents"), "{warnings}");
    // `zoë.ørsted-…` is not made `zoe.orsted-…`, where no login of hers lands: she is skipped.
    let skipped = plan["skipped"].to_string();
    assert!(
        skipped.contains(&format!("uid={zoe},{}", site.ou))
            && skipped.contains("is not one Synapse takes for a new user"),
        "{skipped}"
    );
    assert!(synapse()
        .users_named(&format!("zoe.orsted-{}", site.tag))
        .is_empty());
    assert!(
        warnings.contains(&format!("→ @{jmartin}, not @{jmartin}2")),
        "{warnings}"
    );

    let users = synapse().users_named(&site.tag);
    // The module asks Synapse to register `zoë.ørsted-…`, which it refuses; it finds two
    // entries for `jmartin-…` and logs neither in; with capitals, the e-mail login fails.
    for identifier in [
        by_login(&zoe),
        by_email(&zoe_mail),
        by_login(&jmartin),
        by_email(&format!("{pleroy}@example.org")),
    ] {
        let (status, body) = synapse().login(identifier.clone(), PASSWORD);
        assert_ne!(status, 200, "{identifier}: {body}");
    }
    // What the homonym warning is about: by e-mail the module finds one entry each, and logs
    // both Jean Martins in to `jmartin-…`, the first one's account.
    for address in [
        format!("{jmartin}@example.org"),
        format!("{jmartin}@finances.example.org"),
    ] {
        assert_eq!(logs_in(by_email(&address)).0, mxid(&jmartin), "{address}");
    }
    assert_eq!(synapse().users_named(&site.tag), users, "no new account");
    // The others are not disturbed; a login with capitals works typed in any case.
    assert_eq!(logs_in(by_login(&ablanc)).0, mxid(&ablanc));
    for typed in [pleroy.clone(), pleroy.to_lowercase()] {
        assert_eq!(logs_in(by_login(&typed)).0, mxid(&pleroy), "{typed}");
    }
}

#[test]
fn with_the_default_preset_check_says_logins_will_not_reach_the_accounts() {
    // The Tchap-style preset (given.sn), declared as used with synapse-ldap3.
    let site = site(
        "login-default",
        "openldap.toml",
        "\n[login]\npath = \"ldap3\"\nattribute = \"uid\"\n",
    );
    let cdurand = agent(&site, "cdurand", "Catherine", "Durand", true, "");
    agent(&site, "jmartin2", "Jean", "Martin", true, "");
    let check = site.run(&["check"]);
    let warning = check
        .stdout
        .lines()
        .find(|l| l.contains("would log in to another account than theirs"))
        .unwrap_or_else(|| panic!("{}", check.stdout));
    assert!(
        warning.starts_with("WARN    login: login (synapse-ldap3, `uid`): 2 agent(s)"),
        "{warning}"
    );
    let synced = site.mxid("catherine.durand");
    assert!(
        warning.contains(&format!(
            "`{cdurand}` → @{cdurand}, not @{}",
            &synced[1..synced.find(':').unwrap()]
        )),
        "{warning}"
    );

    // And it is true: the login lands on a new, empty account.
    site.sync_ok();
    let explain = site.run(&["explain", &cdurand]);
    assert!(
        explain.stdout.contains(&format!(
            "login: `{cdurand}` (synapse-ldap3) lands on {}: NOT this account",
            mxid(&cdurand)
        )),
        "{}",
        explain.stdout
    );
    let before = synapse().users_named(&site.tag);
    let (user_id, token) = logs_in(by_login(&cdurand));
    assert_eq!(user_id, mxid(&cdurand));
    assert_ne!(user_id, synced);
    assert_eq!(joined_rooms(&token), Vec::<String>::new());
    assert_eq!(synapse().users_named(&site.tag).len(), before.len() + 1);
}

#[test]
fn sso_external_ids_are_set_looked_up_and_kept_in_step() {
    let provider = "oidc-agentconnect";
    let site = site(
        "login-sso",
        "openldap.toml",
        &format!(
            "\n[login]\npath = \"sso\"\nprovider = \"{provider}\"\nexternal_id = \"{{employeeNumber}}\"\n"
        ),
    );
    let tag = site.tag.clone();
    let number = |n: u32| format!("E{n}-{tag}");
    let edupre = agent(
        &site,
        "edupre",
        "Élodie",
        "Dupré",
        true,
        &format!("employeeNumber: {}\n", number(1)),
    );
    // No employeeNumber: no external id, and a warning.
    agent(&site, "xmoreau", "Xavier", "Moreau", false, "");
    let lookup = |id: &str| {
        synapse().request(
            "GET",
            &format!("/_synapse/admin/v1/auth_providers/{provider}/users/{id}"),
            None,
        )
    };

    let check = site.run(&["check"]);
    assert!(
        check.stdout.contains(&format!(
            "OK      login: SSO through `{provider}`, external ids from `{{employeeNumber}}`"
        )),
        "{}",
        check.stdout
    );
    assert!(
        check.stdout.contains("1 agent(s) have no external id"),
        "{}",
        check.stdout
    );

    let plan = site.run(&["plan"]);
    assert!(
        plan.stdout
            .contains(&format!("[SSO {provider}:{}]", number(1))),
        "{}",
        plan.stdout
    );
    site.sync_ok();
    let elodie = site.mxid("elodie.dupre");
    let (status, body) = lookup(&number(1));
    assert_eq!(
        (status, body["user_id"].as_str()),
        (200, Some(elodie.as_str())),
        "{body}"
    );

    // An id of another provider, set by someone else, must survive the daemon's updates.
    let cas = json!({"auth_provider": "cas", "external_id": format!("cas-{tag}")});
    let (status, body) = synapse().request(
        "PUT",
        &format!("/_synapse/admin/v2/users/{elodie}"),
        Some(&json!({"external_ids": [
            {"auth_provider": provider, "external_id": number(1)},
            cas
        ]})),
    );
    assert_eq!(status, 200, "{body}");

    // The directory gives her another number: the binding follows.
    site.set_attr(&edupre, "employeeNumber", &[&number(2)]);
    let (code, plan) = site.plan_json();
    assert_eq!(code, 2, "{plan}");
    let update = plan["actions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["kind"] == "update_account")
        .unwrap_or_else(|| panic!("{plan}"));
    assert_eq!(update["mxid"], elodie.as_str());
    assert_eq!(
        update["external_ids"]["to"][0]["external_id"],
        number(2),
        "{update}"
    );
    let mark = synapse().log_mark();
    site.sync_ok();
    assert_eq!(lookup(&number(2)).1["user_id"], elodie.as_str());
    // What Synapse stores (its lookup cache may still answer for the old id: see
    // docs/login.md): the new id, and the other provider's kept.
    let mut ids = synapse().get_user(&elodie).unwrap()["external_ids"].clone();
    ids.as_array_mut()
        .unwrap()
        .sort_by_key(|i| i["auth_provider"].to_string());
    assert_eq!(
        ids,
        json!([cas, {"auth_provider": provider, "external_id": number(2)}])
    );
    // One GET (to keep the other provider's id) and one PUT.
    let writes = site.writes_since(mark);
    assert_eq!(writes.len(), 1, "{writes:?}");

    // In step: nothing more to do.
    let mark = synapse().log_mark();
    let (code, plan) = site.plan_json();
    assert_eq!(code, 0, "{plan}");
    site.sync_ok();
    assert_eq!(site.writes_since(mark), vec![]);
}

#[test]
fn a_shadow_made_by_a_login_is_listed_and_a_departed_agents_shadow_is_locked() {
    // The Tchap-style preset with synapse-ldap3: a login makes a second account, a shadow.
    let site = site(
        "shadow",
        "openldap.toml",
        "\n[login]\npath = \"ldap3\"\nattribute = \"uid\"\nshadow_accounts = \"lock\"\n",
    );
    let uid = agent(&site, "cdurand", "Catherine", "Durand", true, "");
    site.sync_ok();
    let synced = site.mxid("catherine.durand");
    let (shadow, token) = logs_in(by_login(&uid));
    assert_eq!(shadow, mxid(&uid));

    let (_, plan) = site.plan_json();
    let listed = &plan["shadows"][0];
    assert_eq!(listed["mxid"], shadow.as_str(), "{plan}");
    assert_eq!(listed["agent_mxid"], synced.as_str(), "{plan}");
    assert_eq!(listed["matched"], format!("login {uid}"), "{plan}");
    assert_eq!(listed["departed"], false, "{plan}");
    assert_eq!(
        plan["counts"]["lock_shadow"], 0,
        "an agent present: only reported"
    );
    site.sync_ok();
    let status: Value = serde_json::from_str(&site.run(&["status", "--json"]).stdout).unwrap();
    assert_eq!(status["shadows"][0]["mxid"], shadow.as_str(), "{status}");
    let text = site.run(&["status"]).stdout;
    assert!(text.contains("Shadow accounts"), "{text}");

    // The agent leaves: their own account is suspended and, with `lock`, the shadow locked —
    // the token the login gave stops working.
    site.set_attr(&uid, "employeeType", &["departed"]);
    let (_, plan) = site.plan_json();
    assert_eq!(plan["counts"]["lock_shadow"], 1, "{plan}");
    assert!(
        plan["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w.as_str().unwrap().starts_with("SECURITY: departed agent")),
        "{plan}"
    );
    site.sync_ok();
    let (code, body) =
        synapse().request_as(&token, "GET", "/_matrix/client/v3/account/whoami", None);
    assert_eq!(code, 401, "{body}");
    assert_eq!(body["errcode"], "M_USER_LOCKED", "{body}");
    let status: Value = serde_json::from_str(&site.run(&["status", "--json"]).stdout).unwrap();
    assert_eq!(status["shadows"][0]["locked"], true, "{status}");
    let history = site.run(&["history", "--user", &shadow]).stdout;
    assert!(history.contains("lock_shadow"), "{history}");
    // Locked: not locked again.
    let (code, plan) = site.plan_json();
    assert_eq!(plan["counts"]["lock_shadow"], 0, "{plan}");
    assert_eq!(code, 0, "{plan}");
}
