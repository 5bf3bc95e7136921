//! One test's corner of the shared slapd and Synapse, for end-to-end runs of the real binary:
//! its own OU, a tag in every name it makes (so localparts and aliases are its own), its own
//! config, mapping file (the OpenLDAP preset plus the test's extra rules) and ledger.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

use crate::common::{repo_root, unique, write_secret, Slapd, Synapse};

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
    /// A site whose mapping is the OpenLDAP preset followed by `extra_rules`, where `{tag}`
    /// and `{ou}` stand for the site's tag and OU DN.
    pub fn with_rules(name: &str, extra_rules: &str) -> Site {
        let slapd = Slapd::shared();
        let site = Site {
            slapd,
            synapse: Synapse::shared(),
            ou: slapd.new_ou(name),
            tag: unique("t"),
            dir: tempfile::tempdir().unwrap(),
        };
        site.set_rules(extra_rules);
        let dir = site.dir.path();
        write_secret(dir, "ldap.pw", &slapd.sync_password);
        write_secret(dir, "token", &site.synapse.admin_token);
        let config = format!(
            "[directory]\nurls = [\"{}\"]\nbind_dn = \"{}\"\nbind_password_file = \"ldap.pw\"\n\
             base_dns = [\"{}\"]\npage_size = 50\ntimeout_secs = 5\n\n\
             [homeserver]\nurl = \"{}\"\nserver_name = \"{}\"\naccess_token_file = \"token\"\n\
             concurrency = 8\nmax_retries = 2\n\n\
             [state]\ndirectory = \"state\"\n\n[mapping]\nfile = \"mapping.toml\"\n\n\
             # Small test sites: a room removal is a large share of them.\n\
             [brake]\nmax_departures_percent = 100.0\nmax_shrink_percent = 100.0\n",
            slapd.url, slapd.sync_dn, site.ou, site.synapse.url, site.synapse.server_name
        );
        std::fs::write(dir.join("config.toml"), config).unwrap();
        site
    }

    /// Replaces the extra rules (same placeholders as [`Site::with_rules`]).
    pub fn set_rules(&self, extra_rules: &str) {
        let preset = std::fs::read_to_string(repo_root().join("mappings/openldap.toml")).unwrap();
        let rules = extra_rules
            .replace("{tag}", &self.tag)
            .replace("{ou}", &self.ou);
        std::fs::write(
            self.dir.path().join("mapping.toml"),
            format!("{preset}\n{rules}"),
        )
        .unwrap();
    }

    pub fn config(&self) -> PathBuf {
        self.dir.path().join("config.toml")
    }

    /// An inetOrgPerson `uid=<uid>` with given name = uid, the tag as surname, and extra
    /// attribute lines (`title: Boss`). Its mxid is [`Site::mxid`]`(uid)`.
    pub fn add_agent(&self, uid: &str, extra: &[&str]) {
        let mut ldif = format!(
            "dn: uid={uid},{ou}\nobjectClass: inetOrgPerson\nuid: {uid}\ncn: {uid}\ngivenName: {uid}\nsn: {tag}\n",
            ou = self.ou,
            tag = self.tag
        );
        for line in extra {
            ldif.push_str(line);
            ldif.push('\n');
        }
        self.slapd.add_ldif(&ldif);
    }

    pub fn agent_dn(&self, uid: &str) -> String {
        format!("uid={uid},{}", self.ou)
    }

    /// A groupOfNames `cn=<cn>` in the site's OU; `members` are DNs.
    pub fn add_group(&self, cn: &str, members: &[String]) -> String {
        let dn = format!("cn={cn},{}", self.ou);
        let mut ldif = format!("dn: {dn}\nobjectClass: groupOfNames\ncn: {cn}\n");
        for m in members {
            ldif.push_str(&format!("member: {m}\n"));
        }
        self.slapd.add_ldif(&ldif);
        dn
    }

    /// Replaces one attribute's values of an entry.
    pub fn replace(&self, dn: &str, attr: &str, values: &[String]) {
        let mut ldif = format!("dn: {dn}\nchangetype: modify\nreplace: {attr}\n");
        for v in values {
            ldif.push_str(&format!("{attr}: {v}\n"));
        }
        self.slapd.modify_ldif(&ldif);
    }

    pub fn mxid(&self, uid: &str) -> String {
        format!("@{uid}.{}:{}", self.tag, self.synapse.server_name)
    }

    pub fn alias(&self, name: &str) -> String {
        format!("#{name}-{}:{}", self.tag, self.synapse.server_name)
    }

    pub fn run(&self, args: &[&str]) -> Run {
        let out = Command::new(env!("CARGO_BIN_EXE_matrix-ldap-sync"))
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

    pub fn plan_json(&self) -> (i32, Value) {
        let run = self.run(&["plan", "--json"]);
        let json = serde_json::from_str(&run.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}\n{}", run.stdout, run.stderr));
        (run.code, json)
    }
}
