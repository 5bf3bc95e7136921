//! One test's corner of the shared slapd (or, with `ad_site`, Samba DC) and Synapse, driven
//! through the real `matrix-ldap-sync` binary: its own OU, its own name tag (so its localparts
//! are its own), its own config, mapping and ledger.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

use matrix_ldap_sync::cli::TEST_NOW_VAR;

use super::accounts::at;
use super::{binary, repo_root, unique, write_secret, Slapd, Synapse};

/// What every test site shares, whatever the directory: its own name tag (so its localparts
/// are its own), its own config, mapping and ledger, and the real binary to run on them.
pub struct Daemon {
    pub synapse: &'static Synapse,
    pub tag: String,
    pub dir: tempfile::TempDir,
}

/// One test's corner of the shared slapd: its own OU. Derefs to its [`Daemon`].
pub struct Site {
    pub slapd: &'static Slapd,
    pub ou: String,
    daemon: Daemon,
}

impl std::ops::Deref for Site {
    type Target = Daemon;
    fn deref(&self) -> &Daemon {
        &self.daemon
    }
}

/// How a site's config and mapping differ from the defaults.
#[derive(Clone, Default)]
pub struct Settings {
    /// Bind as this (DN, password) instead of the sync account.
    pub bind: Option<(String, String)>,
    /// Appended to config.toml (e.g. `[departures]`, `[brake]` sections).
    pub config_extra: String,
    /// Added to the `[directory]` section (e.g. `full_sync_every = "1h"`).
    pub directory_extra: String,
    /// Appended to the mapping (the preset), e.g. a `[departure]` section.
    pub mapping_extra: String,
    /// Replaces the preset's agent filter.
    pub filter: Option<String>,
    /// Replaces the preset's `[account] localpart` template.
    pub localpart: Option<String>,
    /// Lines added to the preset's `[account]` section (e.g. `adopt = "all"`).
    pub account_extra: String,
    /// Replaces the directory URLs.
    pub urls: Option<Vec<String>>,
    /// `directory.starttls`.
    pub starttls: bool,
    /// Leaves out `directory.ca_file` (system roots only).
    pub no_ca_file: bool,
    /// Replaces the page size (default 2, so that paging is always exercised).
    pub page_size: Option<u32>,
    /// Another preset of the same directory kind (e.g. `openldap-ldap3.toml`).
    pub preset: Option<&'static str>,
}

/// What a directory harness gives a site's config: where it is and how to read it.
pub struct DirectoryDefaults {
    pub url: String,
    /// (bind DN or UPN, password) of the sync account.
    pub bind: (String, String),
    pub base: String,
    /// The CA of the directory's certificate, if it uses TLS.
    pub ca_file: Option<PathBuf>,
    /// The mapping preset under `mappings/`, and its agent filter line (replaced by
    /// `Settings::filter`).
    pub preset: &'static str,
    pub preset_filter: &'static str,
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
        Site::on_servers(slapd, Synapse::shared(), name)
    }

    /// A site on `slapd` and `synapse`: a Synapse of the test binary's own (one with a login
    /// module, one to pause or stop).
    pub fn on_servers(slapd: &'static Slapd, synapse: &'static Synapse, name: &str) -> Site {
        let site = Site {
            slapd,
            ou: slapd.new_ou(name),
            daemon: Daemon::on(synapse),
        };
        site.configure(&Settings::default());
        site
    }

    /// Adds agents `a0` … `a<n-1>` (given name `Agent`, surname `N<i>`, in `DSI`) in one
    /// ldapadd; returns their mxids.
    pub fn add_agents(&self, n: usize) -> std::collections::BTreeSet<String> {
        let mut ldif = String::new();
        let mut mxids = std::collections::BTreeSet::new();
        for i in 0..n {
            ldif.push_str(&format!(
                "dn: uid=a{i},{ou}\nobjectClass: inetOrgPerson\nuid: a{i}\ncn: Agent {i}\ngivenName: Agent\nsn: N{i} {tag}\nou: DSI\n\n",
                ou = self.ou,
                tag = self.tag
            ));
            mxids.insert(self.mxid(&format!("agent.n{i}")));
        }
        self.slapd.add_ldif(&ldif);
        mxids
    }

    /// (Re)writes config.toml, the mapping and the secret files.
    pub fn configure(&self, settings: &Settings) {
        let defaults = DirectoryDefaults {
            url: self.slapd.url.clone(),
            bind: (self.slapd.sync_dn.clone(), self.slapd.sync_password.clone()),
            base: self.ou.clone(),
            ca_file: None,
            preset: "openldap.toml",
            preset_filter: "(&(objectClass=inetOrgPerson)(uid=*))",
        };
        self.daemon.configure(&defaults, settings);
    }

    /// Adds an inetOrgPerson agent; its surname carries the test's tag. `extra`: more LDIF
    /// attribute lines.
    pub fn add_agent_with(
        &self,
        uid: &str,
        given: &str,
        sn: &str,
        dept: &str,
        mail: Option<&str>,
        extra: &str,
    ) {
        let mut ldif = format!(
            "dn: uid={uid},{ou}\nobjectClass: inetOrgPerson\nuid: {uid}\ncn: {given} {sn}\ngivenName: {given}\nsn: {sn} {tag}\nou: {dept}\n",
            ou = self.ou,
            tag = self.tag
        );
        if let Some(mail) = mail {
            ldif.push_str(&format!("mail: {mail}\n"));
        }
        ldif.push_str(extra);
        self.slapd.add_ldif(&ldif);
    }

    pub fn add_agent(&self, uid: &str, given: &str, sn: &str, dept: &str, mail: Option<&str>) {
        self.add_agent_with(uid, given, sn, dept, mail, "");
    }

    /// Moves agents `a0` … `a<n-1>` (see [`Site::add_agents`]) to department `ou`, in one
    /// ldapmodify: one display-name update each.
    pub fn move_agents(&self, n: usize, ou: &str) {
        let ldif: String = (0..n)
            .map(|i| {
                format!(
                    "dn: uid=a{i},{}\nchangetype: modify\nreplace: ou\nou: {ou}\n\n",
                    self.ou
                )
            })
            .collect();
        self.slapd.modify_ldif(&ldif);
    }

    /// Replaces (or with no values, deletes) an attribute of agent `uid`.
    pub fn set_attr(&self, uid: &str, attr: &str, values: &[&str]) {
        let mut ldif = format!(
            "dn: uid={uid},{}\nchangetype: modify\nreplace: {attr}\n",
            self.ou
        );
        for v in values {
            ldif.push_str(&format!("{attr}: {v}\n"));
        }
        self.slapd.modify_ldif(&ldif);
    }
}

impl Daemon {
    pub fn fresh() -> Daemon {
        Daemon::on(Synapse::shared())
    }

    /// A daemon corner on `synapse`.
    pub fn on(synapse: &'static Synapse) -> Daemon {
        Daemon {
            synapse,
            tag: unique("t"),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// (Re)writes config.toml, the mapping (the preset with the settings' changes) and the
    /// secret files.
    pub fn configure(&self, defaults: &DirectoryDefaults, settings: &Settings) {
        let dir = self.dir.path();
        let (bind_dn, password) = settings.bind.clone().unwrap_or(defaults.bind.clone());
        write_secret(dir, "ldap.pw", &password);
        write_secret(dir, "token", &self.synapse.admin_token);
        let preset = settings.preset.unwrap_or(defaults.preset);
        let mut mapping =
            std::fs::read_to_string(repo_root().join("mappings").join(preset)).unwrap();
        if let Some(filter) = &settings.filter {
            let line = format!("filter = \"{}\"", defaults.preset_filter);
            assert!(mapping.contains(&line), "{preset} has no `{line}`");
            mapping = mapping.replace(&line, &format!("filter = \"{filter}\""));
        }
        if let Some(localpart) = &settings.localpart {
            let start = mapping
                .find("\nlocalpart = ")
                .expect("the preset has a localpart")
                + 1;
            let end = start + mapping[start..].find('\n').unwrap();
            mapping.replace_range(start..end, &format!("localpart = \"{localpart}\""));
        }
        // Each `key = value` line replaces the preset's line of that key, or is added to
        // its `[account]` section.
        for line in settings.account_extra.lines().filter(|l| l.contains('=')) {
            let key = format!("\n{} = ", line.split('=').next().unwrap().trim());
            match mapping.find(&key) {
                Some(at) => {
                    let end = at + 1 + mapping[at + 1..].find('\n').unwrap();
                    mapping.replace_range(at + 1..end, line);
                }
                None => {
                    mapping =
                        mapping.replacen("\n[account]\n", &format!("\n[account]\n{line}\n"), 1)
                }
            }
        }
        // A `[departure]` section of the test's replaces the preset's.
        if settings.mapping_extra.contains("[departure]") {
            if let Some(at) = mapping.find("\n[departure]") {
                mapping.truncate(at + 1);
            }
        }
        mapping.push_str(&settings.mapping_extra);
        std::fs::write(dir.join("mapping.toml"), mapping).unwrap();
        let urls = settings
            .urls
            .clone()
            .unwrap_or_else(|| vec![defaults.url.clone()]);
        let urls: Vec<String> = urls.iter().map(|u| format!("\"{u}\"")).collect();
        let ca_file = match &defaults.ca_file {
            Some(ca) if !settings.no_ca_file => format!("ca_file = \"{}\"\n", ca.display()),
            _ => String::new(),
        };
        let config = format!(
            r#"
[directory]
urls = [{urls}]
starttls = {starttls}
{ca_file}bind_dn = "{bind_dn}"
bind_password_file = "ldap.pw"
base_dns = ["{base}"]
page_size = {page_size}
timeout_secs = 3
{directory_extra}
[homeserver]
url = "{hs}"
server_name = "{server_name}"
access_token_file = "token"
max_retries = 1

[state]
directory = "state"

[mapping]
file = "mapping.toml"
{extra}
"#,
            urls = urls.join(", "),
            starttls = settings.starttls,
            base = defaults.base,
            page_size = settings.page_size.unwrap_or(2),
            hs = self.synapse.url,
            server_name = self.synapse.server_name,
            extra = settings.config_extra,
            directory_extra = settings.directory_extra,
        );
        std::fs::write(self.config(), config).unwrap();
    }

    /// How many of `mxids` have ` [<ou>]` at the end of their display name on the homeserver.
    pub fn in_department<'a>(
        &self,
        mxids: impl IntoIterator<Item = &'a String>,
        ou: &str,
    ) -> usize {
        mxids
            .into_iter()
            .filter(|m| {
                self.synapse
                    .get_user(m)
                    .and_then(|u| u["displayname"].as_str().map(str::to_string))
                    .is_some_and(|name| name.ends_with(&format!(" [{ou}]")))
            })
            .count()
    }

    pub fn config(&self) -> PathBuf {
        self.dir.path().join("config.toml")
    }

    /// The mxid an agent gets from the preset's `{givenName}.{sn}` localpart.
    pub fn mxid(&self, localpart_prefix: &str) -> String {
        format!(
            "@{localpart_prefix}-{}:{}",
            self.tag, self.synapse.server_name
        )
    }

    pub fn run(&self, args: &[&str]) -> Run {
        self.run_when(None, args)
    }

    /// [`Daemon::run`] with the binary's clock at `now` (Unix seconds), through the test clock
    /// its debug build honours: `sync` moves in time without sleeping (`--now` is for previews
    /// only).
    /// The binary with `args` and these environment variables (e.g. a debug build's crash hook).
    pub fn run_env(&self, env: &[(&str, &str)], args: &[&str]) -> Run {
        let out = self
            .command(args)
            .envs(env.iter().copied())
            .output()
            .unwrap();
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// The binary with `args`, not started yet.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(binary());
        command
            .arg("--config")
            .arg(self.config())
            .args(args)
            .env_remove("RUST_LOG")
            .env_remove(TEST_NOW_VAR);
        command
    }

    pub fn run_at(&self, now: i64, args: &[&str]) -> Run {
        self.run_when(Some(now), args)
    }

    fn run_when(&self, now: Option<i64>, args: &[&str]) -> Run {
        let mut command = Command::new(binary());
        command
            .arg("--config")
            .arg(self.config())
            .args(args)
            .env_remove("RUST_LOG")
            .env_remove(TEST_NOW_VAR);
        if let Some(now) = now {
            if !cfg!(debug_assertions) {
                panic!("only a debug build of the binary honours {TEST_NOW_VAR}: run the tests without --release");
            }
            command.env(TEST_NOW_VAR, at(now));
        }
        let out = command.output().unwrap();
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// `sync` (with more arguments), asserting it exits 0.
    pub fn sync_ok_with(&self, args: &[&str]) -> Run {
        self.sync_ok_when(None, args)
    }

    pub fn sync_ok(&self) -> Run {
        self.sync_ok_with(&[])
    }

    /// `sync` at `now` (see [`Daemon::run_at`]), asserting it exits 0.
    pub fn sync_ok_at(&self, now: i64) -> Run {
        self.sync_ok_when(Some(now), &[])
    }

    /// [`Daemon::sync_ok_at`] with more arguments.
    pub fn sync_ok_at_with(&self, now: i64, args: &[&str]) -> Run {
        self.sync_ok_when(Some(now), args)
    }

    fn sync_ok_when(&self, now: Option<i64>, args: &[&str]) -> Run {
        let mut all = vec!["sync"];
        all.extend_from_slice(args);
        let run = self.run_when(now, &all);
        assert_eq!(
            run.code, 0,
            "{all:?} at {now:?} failed:\n{}\n{}",
            run.stdout, run.stderr
        );
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

    /// `plan --json` (with more arguments): (exit code, the plan).
    pub fn plan_json_with(&self, args: &[&str]) -> (i32, Value) {
        let mut all = vec!["plan", "--json"];
        all.extend_from_slice(args);
        let run = self.run(&all);
        let json = serde_json::from_str(&run.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}\n{}", run.stdout, run.stderr));
        (run.code, json)
    }

    pub fn plan_json(&self) -> (i32, Value) {
        self.plan_json_with(&[])
    }
}

/// The mxids a `plan --json` joins to rooms (any room).
pub fn plan_joins(plan: &Value) -> std::collections::BTreeSet<String> {
    plan["rooms"]["actions"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter(|a| a["kind"] == "join")
        .filter_map(|a| a["mxid"].as_str().map(str::to_string))
        .collect()
}
