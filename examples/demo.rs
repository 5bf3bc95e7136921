//! The demo behind `scripts/demo.sh`: a local slapd with a sample ministry directory and a
//! local Synapse, then `check`, `plan`, `sync`, a change in the directory, and `plan` / `sync`
//! again, with the real `matrix-ldap-sync` binary. Servers are started by the same harness as
//! the integration tests and stop when the demo ends.
//!
//! `--keep`: leave both servers running (until Ctrl-C) to try commands by hand.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{write_secret, Slapd, Synapse};

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
    let synapse = Synapse::start();
    println!(
        "directory:  {}  (base dc=example,dc=org, 36 sample agents)",
        slapd.url
    );
    println!(
        "homeserver: {}  (server name {})",
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
    let preset = std::fs::read_to_string(root.join("mappings/openldap.toml")).unwrap();
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
