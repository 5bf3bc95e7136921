//! The demo behind `scripts/demo.sh`: a local slapd with a sample ministry directory and a
//! local Synapse with synapse-ldap3 (agents log in with their LDAP password, as docs/login.md
//! says), then `check`, `plan`, `sync`, an agent logging in, a change in the directory, and
//! `plan` / `sync` again, with the real `matrix-ldap-sync` binary. Servers are started by the
//! same harness as the integration tests and stop when the demo ends.
//!
//! `--keep`: leave both servers running (until Ctrl-C) to try commands by hand.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::synapse::ldap3_module;
use common::{write_secret, Slapd, Synapse};
use serde_json::json;

/// synapse-ldap3's `filter`: what `check` prints for the demo's mapping (agents, without those
/// marked as departed).
const MODULE_FILTER: &str = "(&(&(objectClass=inetOrgPerson)(uid=*))(!(employeeType=departed)))";

/// The sample agents with an LDAP password (scripts/sample-directory.ldif).
const PASSWORD: &str = "demo-password";

fn main() {
    let keep = std::env::args().any(|a| a == "--keep");
    let root = common::repo_root();
    let bin = common::binary();
    let demo = root.join(".demo");
    let _ = std::fs::remove_dir_all(&demo);
    std::fs::create_dir_all(&demo).unwrap();

    banner("Starting a local directory (slapd) and homeserver (Synapse)");
    let slapd = Slapd::start();
    slapd.add_ldif(&std::fs::read_to_string(root.join("scripts/sample-directory.ldif")).unwrap());
    let synapse = Synapse::start_with(&ldap3_module(
        &slapd,
        "ou=people,dc=example,dc=org",
        MODULE_FILTER,
    ));
    println!(
        "directory:  {}  (base dc=example,dc=org, 36 sample agents)",
        slapd.url
    );
    println!(
        "homeserver: {}  (server name {}, synapse-ldap3 login module)",
        synapse.url, synapse.server_name
    );
    let config = write_config(&demo, &root, &slapd, &synapse);
    println!("config:     {}", config.display());

    let cli = |args: &[&str]| run(&bin, &config, args);
    banner("matrix-ldap-sync check");
    cli(&["check"]);
    banner("matrix-ldap-sync plan   (dry run: nothing is changed)");
    cli(&["plan"]);
    banner("matrix-ldap-sync sync");
    cli(&["sync"]);
    banner("The homeserver now has these accounts and rooms (Synapse admin API)");
    list_users(&synapse);
    list_rooms(&synapse);
    banner("Élodie Dupré logs in to Matrix with her LDAP login and password (synapse-ldap3)");
    let accounts = account_count(&synapse);
    let elodie = "@edupre:example.org";
    log_in(
        &synapse,
        json!({"type": "m.id.user", "user": "edupre"}),
        elodie,
    );
    log_in(
        &synapse,
        json!({"type": "m.id.thirdparty", "medium": "email", "address": "elodie.dupre@example.org"}),
        elodie,
    );
    println!(
        "  accounts on the homeserver: {accounts} before the logins, {} after",
        account_count(&synapse)
    );
    banner("matrix-ldap-sync plan   (again: the directory has not changed)");
    cli(&["plan"]);

    banner("HR moves Élodie Dupré to RH, Jean Martin (DSI) gets a new e-mail, Marc Roux leaves");
    slapd.modify_ldif(
        "dn: uid=edupre,ou=people,dc=example,dc=org\nchangetype: modify\nreplace: ou\nou: RH\n\n\
         dn: uid=jmartin,ou=people,dc=example,dc=org\nchangetype: modify\nreplace: mail\nmail: jean.martin@dsi.example.org\n\n\
         dn: uid=mroux,ou=people,dc=example,dc=org\nchangetype: modify\nreplace: employeeType\nemployeeType: departed\n",
    );
    banner("matrix-ldap-sync plan");
    cli(&["plan"]);
    banner("matrix-ldap-sync sync");
    cli(&["sync"]);
    banner(
        "matrix-ldap-sync status   (Marc Roux is suspended; deactivation after the grace period)",
    );
    cli(&["status"]);
    list_rooms(&synapse);
    banner("matrix-ldap-sync explain mroux");
    cli(&["explain", "mroux"]);
    banner("Marc Roux tries to log in: his LDAP password still works, Matrix says no");
    log_in(
        &synapse,
        json!({"type": "m.id.user", "user": "mroux"}),
        "@mroux:example.org",
    );

    if keep {
        banner("Servers keep running; press Ctrl-C to stop them");
        println!(
            "Try: {} --config {} plan --json",
            bin.display(),
            config.display()
        );
        loop {
            std::thread::park();
        }
    }
}

fn write_config(demo: &Path, root: &Path, slapd: &Slapd, synapse: &Synapse) -> PathBuf {
    write_secret(demo, "ldap-password", &slapd.sync_password);
    write_secret(demo, "homeserver-token", &synapse.admin_token);
    let config = demo.join("config.toml");
    let text = format!(
        r#"# Written by the demo. See config.example.toml for every key.
[directory]
urls = ["{ldap}"]
bind_dn = "{bind_dn}"
bind_password_file = "ldap-password"
base_dns = ["ou=people,dc=example,dc=org"]

[homeserver]
url = "{hs}"
server_name = "{server_name}"
access_token_file = "homeserver-token"

[state]
directory = "state"

[mapping]
file = "mapping.toml"

[departures]
grace = "30d"
"#,
        ldap = slapd.url,
        bind_dn = slapd.sync_dn,
        hs = synapse.url,
        server_name = synapse.server_name,
    );
    std::fs::write(&config, text).unwrap();
    let preset = std::fs::read_to_string(root.join("mappings/openldap-ldap3.toml")).unwrap();
    std::fs::write(demo.join("mapping.toml"), format!("{preset}\n{ROOM_RULES}")).unwrap();
    config
}

/// The demo's rooms: a ministry space for everyone, a room for the management (a nested
/// group), and one room per department, with the executive committee as moderators.
const ROOM_RULES: &str = r##"
[groups]
bases = ["ou=groups,dc=example,dc=org"]

[[rooms]]
room = "#ministere:example.org"
space = true
everyone = true
mode = "additive"
create = { name = "Ministère" }

[[rooms]]
room = "#encadrement:example.org"
groups = ["cn=encadrement,ou=groups,dc=example,dc=org"]
parent = "#ministere:example.org"
create = { name = "Encadrement" }

[[rooms]]
room = "#dept-{ou|localpart}:example.org"
everyone = true
parent = "#ministere:example.org"
power = [{ groups = ["cn=comite-de-direction,ou=groups,dc=example,dc=org"], level = 50 }]
create = { name = "Département {ou}" }
"##;

fn run(bin: &Path, config: &Path, args: &[&str]) {
    let status = Command::new(bin)
        .arg("--config")
        .arg(config)
        .args(args)
        .arg("--quiet")
        .status()
        .unwrap();
    // `plan` exits 2 when changes are pending: that is an answer, not a failure.
    let code = status.code().unwrap_or(-1);
    if code != 0 && !(args == ["plan"] && code == 2) {
        panic!(
            "matrix-ldap-sync {} failed with exit code {code}",
            args.join(" ")
        );
    }
}

/// Logs in through the client API as an agent would, and says where it landed (`synced`: the
/// account the sync made) with its rooms, or that it was refused.
fn log_in(synapse: &Synapse, identifier: serde_json::Value, synced: &str) {
    let who = identifier["user"]
        .as_str()
        .or(identifier["address"].as_str())
        .unwrap_or_default()
        .to_string();
    let (status, body) = synapse.login(identifier, PASSWORD);
    if status != 200 {
        println!(
            "  login `{who}`: refused, HTTP {status} {}",
            body["errcode"].as_str().unwrap_or_default()
        );
        return;
    }
    let user_id = body["user_id"].as_str().unwrap_or_default();
    let token = body["access_token"].as_str().unwrap_or_default();
    let (_, rooms) = synapse.request_as(token, "GET", "/_matrix/client/v3/joined_rooms", None);
    let mut names: Vec<String> = rooms["joined_rooms"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter_map(|id| id.as_str())
        .map(|id| room_alias(synapse, token, id))
        .collect();
    names.sort();
    let which = if user_id == synced {
        "the account the sync made"
    } else {
        "NOT the account the sync made"
    };
    println!(
        "  login `{who}` → {user_id} ({which}), in {} rooms: {}",
        names.len(),
        names.join(", ")
    );
}

/// Every account on the homeserver, the daemon's own and deactivated ones included.
fn account_count(synapse: &Synapse) -> u64 {
    let (_, body) = synapse.request(
        "GET",
        "/_synapse/admin/v2/users?limit=1&deactivated=true&locked=true",
        None,
    );
    body["total"].as_u64().unwrap_or_default()
}

/// A room's canonical alias (its id if it has none), as its member sees it.
fn room_alias(synapse: &Synapse, token: &str, room_id: &str) -> String {
    let path = format!(
        "/_matrix/client/v3/rooms/{}/state/m.room.canonical_alias/",
        common::synapse::url_path_part(room_id)
    );
    let (status, body) = synapse.request_as(token, "GET", &path, None);
    match body["alias"].as_str() {
        Some(alias) if status == 200 => alias.to_string(),
        _ => room_id.to_string(),
    }
}

fn list_users(synapse: &Synapse) {
    let (_, body) = synapse.request(
        "GET",
        "/_synapse/admin/v2/users?limit=100&guests=false",
        None,
    );
    let mut users: Vec<_> = body["users"].as_array().cloned().unwrap_or_default();
    users.sort_by_key(|u| u["name"].as_str().unwrap_or_default().to_string());
    for u in users {
        println!(
            "  {:<40} {}",
            u["name"].as_str().unwrap_or_default(),
            u["displayname"].as_str().unwrap_or_default()
        );
    }
}

fn list_rooms(synapse: &Synapse) {
    let (_, body) = synapse.request(
        "GET",
        "/_synapse/admin/v1/rooms?limit=100&order_by=name",
        None,
    );
    for room in body["rooms"].as_array().cloned().unwrap_or_default() {
        println!(
            "  room {:<32} {:>3} members",
            room["canonical_alias"]
                .as_str()
                .or(room["name"].as_str())
                .unwrap_or_default(),
            room["joined_members"].as_u64().unwrap_or_default()
        );
    }
}

fn banner(title: &str) {
    println!("\n\x1b[1m== {title}\x1b[0m");
}
