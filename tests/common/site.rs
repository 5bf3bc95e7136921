//! One test's corner of the shared servers, driving the real `matrix-ldap-sync` binary:
//! used by the end-to-end tests (`tests/sync.rs`) and the daemon tests (`tests/daemon.rs`).

use std::path::PathBuf;
use std::process::Command;

use super::{unique, write_secret, Slapd, Synapse};
use serde_json::Value;

/// One test's corner of the shared servers: its own OU, its own name tag (so its localparts
/// are its own), its own config and ledger.
pub struct Site {
    pub slapd: &'static Slapd,
    pub synapse: &'static Synapse,
    pub ou: String,
    pub tag: String,
    pub dir: tempfile::TempDir,
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Site {
    pub fn new(name: &str) -> Site {
        Site::on(Slapd::shared(), name)
    }

    pub fn on(slapd: &'static Slapd, name: &str) -> Site {
        let synapse = Synapse::shared();
        let ou = slapd.new_ou(name);
        let tag = unique("t");
        let site = Site {
            slapd,
            synapse,
            ou,
            tag,
            dir: tempfile::tempdir().unwrap(),
        };
        site.write_config(&slapd.sync_dn, &slapd.sync_password, "");
        site
    }

    pub fn write_config(&self, bind_dn: &str, password: &str, extra_directory: &str) {
        let dir = self.dir.path();
        write_secret(dir, "ldap.pw", password);
        write_secret(dir, "token", &self.synapse.admin_token);
        let mapping = super::repo_root().join("mappings/openldap.toml");
        let config = format!(
            r#"
[directory]
urls = ["{url}"]
bind_dn = "{bind_dn}"
bind_password_file = "ldap.pw"
base_dns = ["{ou}"]
page_size = 2
timeout_secs = 3
{extra_directory}

[homeserver]
url = "{hs}"
server_name = "{server_name}"
access_token_file = "token"
max_retries = 1

[state]
directory = "state"

[mapping]
file = "{mapping}"
"#,
            url = self.slapd.url,
            ou = self.ou,
            hs = self.synapse.url,
            server_name = self.synapse.server_name,
            mapping = mapping.display(),
        );
        std::fs::write(self.config(), config).unwrap();
    }

    pub fn config(&self) -> PathBuf {
        self.dir.path().join("config.toml")
    }

    /// Adds an inetOrgPerson agent; its surname carries the test's tag.
    pub fn add_agent(&self, uid: &str, given: &str, sn: &str, dept: &str, mail: Option<&str>) {
        let mut ldif = format!(
            "dn: uid={uid},{ou}\nobjectClass: inetOrgPerson\nuid: {uid}\ncn: {given} {sn}\ngivenName: {given}\nsn: {sn} {tag}\nou: {dept}\n",
            ou = self.ou,
            tag = self.tag
        );
        if let Some(mail) = mail {
            ldif.push_str(&format!("mail: {mail}\n"));
        }
        self.slapd.add_ldif(&ldif);
    }

    /// The mxid an agent gets from the preset's `{givenName}.{sn}` localpart.
    pub fn mxid(&self, localpart_prefix: &str) -> String {
        format!(
            "@{localpart_prefix}-{}:{}",
            self.tag, self.synapse.server_name
        )
    }

    pub fn run(&self, args: &[&str]) -> Run {
        let out = Command::new(binary())
            .arg("--config")
            .arg(self.config())
            .args(args)
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    pub fn sync_ok(&self) -> Run {
        let run = self.run(&["sync"]);
        assert_eq!(run.code, 0, "sync failed:\n{}\n{}", run.stdout, run.stderr);
        run
    }

    /// Homeserver writes since `mark` that concern this test's accounts.
    pub fn writes_since(&self, mark: u64) -> Vec<(String, String)> {
        self.synapse
            .writes_since(mark)
            .into_iter()
            .filter(|(_, path)| path.contains(&self.tag))
            .collect()
    }

    pub fn plan_json(&self) -> (i32, Value) {
        let run = self.run(&["plan", "--json"]);
        let json = serde_json::from_str(&run.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}\n{}", run.stdout, run.stderr));
        (run.code, json)
    }
}

/// The binary under test (integration tests get its path from Cargo; the demo example,
/// which also compiles this harness, does not use it).
pub fn binary() -> PathBuf {
    option_env!("CARGO_BIN_EXE_matrix-ldap-sync")
        .map(PathBuf::from)
        .unwrap_or_else(|| super::repo_root().join("target/debug/matrix-ldap-sync"))
}
