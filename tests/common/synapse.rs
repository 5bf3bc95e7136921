//! A real Synapse (from PyPI, in `.testbed/venv`) on a loopback port: server name
//! `example.org`, SQLite, a client listener only, rate limits out of the way, an admin user
//! with an access token, and its access log at INFO so tests can count the requests a client
//! sent.

use super::process::{run, scratch_dir, Server};
use super::{free_port, repo_root, require_installed, unique};
use serde_json::{json, Value};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const START_TIMEOUT: Duration = Duration::from_secs(90);
const SHARED_SECRET: &str = "testbed-registration-secret";

/// One HTTP agent with timeouts, so a hung Synapse fails a test instead of hanging it.
fn http() -> &'static ureq::Agent {
    static AGENT: OnceLock<ureq::Agent> = OnceLock::new();
    AGENT.get_or_init(|| {
        ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(5))
            .timeout(Duration::from_secs(60))
            .build()
    })
}

pub struct Synapse {
    /// `http://127.0.0.1:<port>`
    pub url: String,
    pub port: u16,
    /// `example.org`
    pub server_name: String,
    /// `@admin:example.org`
    pub admin_mxid: String,
    pub admin_password: String,
    pub admin_token: String,
    /// The `registration_shared_secret`.
    pub registration_shared_secret: String,
    /// `homeserver.log`: the whole Synapse log, access lines included, written line by line.
    pub log: PathBuf,
    server: Server,
    pub dir: tempfile::TempDir,
}

impl Synapse {
    /// The instance shared by all tests of this test binary (started on first use). Tests
    /// sharing it run in parallel: use `unique()` names and filter requests by them.
    pub fn shared() -> &'static Synapse {
        static SHARED: OnceLock<Result<Synapse, String>> = OnceLock::new();
        match SHARED.get_or_init(|| Synapse::try_start("")) {
            Ok(synapse) => synapse,
            Err(e) => panic!("shared Synapse could not start: {e}"),
        }
    }

    /// An instance of its own (killed and removed on drop). Costs a few seconds.
    pub fn start() -> Synapse {
        Synapse::start_with("")
    }

    /// An instance of its own with more homeserver config (YAML, loaded after the harness's
    /// own, e.g. a `modules:` section from [`ldap3_module`]).
    pub fn start_with(extra_config: &str) -> Synapse {
        Synapse::try_start(extra_config).unwrap_or_else(|e| panic!("{e}"))
    }

    fn try_start(extra_config: &str) -> Result<Synapse, String> {
        let venv = repo_root().join(".testbed/venv/bin");
        let python = venv.join("python");
        require_installed(&python, "Synapse venv (.testbed/venv)");
        let python = python.to_string_lossy().into_owned();
        let began = Instant::now();
        let dir = scratch_dir("synapse");
        let d = dir.path();
        let server_name = "example.org";
        let config = d.join("homeserver.yaml");
        let overrides = d.join("testbed.yaml");
        let log = d.join("homeserver.log");
        copy_generated_config(&python, &venv, server_name, d)?;
        let generated = began.elapsed();
        let log_config = d.join("testbed.log.config");
        std::fs::write(&log_config, log_config_yaml(&log))
            .map_err(|e| format!("write log config: {e}"))?;
        let extra = d.join("extra.yaml");
        std::fs::write(&extra, extra_config).map_err(|e| format!("write extra.yaml: {e}"))?;

        let mut last_error = String::new();
        for _ in 0..3 {
            let port = free_port();
            std::fs::write(&overrides, overrides_yaml(port, &log_config))
                .map_err(|e| format!("write {}: {e}", overrides.display()))?;
            let url = format!("http://127.0.0.1:{port}");
            // The venv lives inside this checkout: Synapse would append git's branch and
            // commit to its version (`1.163.2 (b=main,…)`), which synapse-ldap3 0.4.0 cannot
            // parse when it registers a user. Without a git directory, it is the plain version.
            let argv = vec![
                "env".into(),
                "GIT_DIR=/nonexistent".into(),
                python.clone(),
                "-m".into(),
                "synapse.app.homeserver".into(),
                "-c".into(),
                config.to_string_lossy().into_owned(),
                "-c".into(),
                overrides.to_string_lossy().into_owned(),
                "-c".into(),
                extra.to_string_lossy().into_owned(),
            ];
            let health = format!("{url}/health");
            let ready = move || http().get(&health).call().is_ok();
            let server = match Server::start(
                "synapse",
                argv,
                d,
                &d.join("stdio.log"),
                START_TIMEOUT,
                ready,
            ) {
                Ok(server) => server,
                Err(e) => {
                    last_error = format!(
                        "{e}\n--- homeserver.log ---\n{}",
                        super::process::tail(&log, 30)
                    );
                    continue;
                }
            };
            let serving = began.elapsed();
            let admin_password = "admin-password".to_string();
            run(
                &[
                    &venv.join("register_new_matrix_user").to_string_lossy(),
                    "-k",
                    SHARED_SECRET,
                    "-u",
                    "admin",
                    "-p",
                    &admin_password,
                    "-a",
                    &url,
                ],
                None,
            )
            .map_err(|e| server.failure(&format!("admin registration: {e}")))?;
            let login = http()
                .post(&format!("{url}/_matrix/client/v3/login"))
                .send_json(json!({
                    "type": "m.login.password",
                    "identifier": {"type": "m.id.user", "user": "admin"},
                    "password": admin_password,
                }))
                .map_err(|e| server.failure(&format!("admin login: {e}")))?
                .into_json::<Value>()
                .map_err(|e| format!("admin login: {e}"))?;
            let admin_token = login["access_token"]
                .as_str()
                .ok_or_else(|| format!("admin login: no access_token in {login}"))?
                .to_string();
            eprintln!(
                "testbed: Synapse on {url} ready in {:.2?} (config ready {generated:.2?}, \
                 serving {serving:.2?}, admin logged in) ({})",
                began.elapsed(),
                d.display()
            );
            return Ok(Synapse {
                url,
                port,
                server_name: server_name.into(),
                admin_mxid: format!("@admin:{server_name}"),
                admin_password,
                admin_token,
                registration_shared_secret: SHARED_SECRET.into(),
                log,
                server,
                dir,
            });
        }
        Err(last_error)
    }

    /// Freezes Synapse (SIGSTOP): connections are accepted and never answered. Only on an
    /// instance of a test's own ([`Synapse::start`]), never the shared one.
    pub fn pause(&self) {
        self.server.pause();
    }

    /// Unfreezes a paused Synapse (SIGCONT).
    pub fn resume(&self) {
        self.server.signal("CONT");
    }

    /// Stops Synapse: nothing listens on its port until [`Synapse::start_again`]. Only on an
    /// instance of a test's own.
    pub fn stop(&self) {
        self.server.stop();
    }

    /// Starts a stopped Synapse again, on the same port with the same data.
    pub fn start_again(&self) {
        let health = format!("{}/health", self.url);
        self.server
            .restart(START_TIMEOUT, move || http().get(&health).call().is_ok())
            .unwrap_or_else(|e| panic!("{e}"));
    }

    /// A request with the admin token: returns (status, JSON body or Null). Never panics on
    /// an HTTP status; panics on a transport error.
    pub fn request(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let req = http()
            .request(method, &format!("{}{path}", self.url))
            .set("Authorization", &format!("Bearer {}", self.admin_token));
        let result = match body {
            Some(b) => req.send_json(b.clone()),
            None => req.call(),
        };
        let resp = match result {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("{}", self.server.failure(&format!("{method} {path}: {e}"))),
        };
        let status = resp.status();
        (status, resp.into_json().unwrap_or(Value::Null))
    }

    /// The room id an alias points to, if any.
    pub fn room_id(&self, alias: &str) -> Option<String> {
        let path = format!("/_matrix/client/v3/directory/room/{}", url_path_part(alias));
        match self.request("GET", &path, None) {
            (200, v) => Some(v["room_id"].as_str().unwrap().to_string()),
            (404, _) => None,
            (s, v) => panic!("resolve {alias}: {s} {v}"),
        }
    }

    /// Joined members of the room an alias names, without the admin (the daemon's user).
    pub fn room_members(&self, alias: &str) -> std::collections::BTreeSet<String> {
        let id = self
            .room_id(alias)
            .unwrap_or_else(|| panic!("no room {alias}"));
        let path = format!("/_synapse/admin/v1/rooms/{}/members", url_path_part(&id));
        let (s, v) = self.request("GET", &path, None);
        assert_eq!(s, 200, "{v}");
        v["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m.as_str().unwrap().to_string())
            .filter(|m| m != &self.admin_mxid)
            .collect()
    }

    /// The admin API's view of a user, or None if it does not exist (404).
    pub fn get_user(&self, mxid: &str) -> Option<Value> {
        match self.request("GET", &format!("/_synapse/admin/v2/users/{mxid}"), None) {
            (200, v) => Some(v),
            (404, _) => None,
            (s, v) => panic!("GET user {mxid}: {s} {v}"),
        }
    }

    /// Creates (or updates) a user through the admin API, outside any daemon (an unmanaged
    /// or to-be-adopted account). Returns its mxid.
    pub fn create_user(&self, localpart: &str, displayname: Option<&str>) -> String {
        let mxid = format!("@{localpart}:{}", self.server_name);
        let mut body = json!({ "admin": false });
        if let Some(name) = displayname {
            body["displayname"] = json!(name);
        }
        match self.request(
            "PUT",
            &format!("/_synapse/admin/v2/users/{mxid}"),
            Some(&body),
        ) {
            (200 | 201, _) => mxid,
            (s, v) => panic!("PUT user {mxid}: {s} {v}"),
        }
    }

    /// A client login (`POST /_matrix/client/v3/login`, `m.login.password`) as a user would
    /// do it: `identifier` is an `m.id.user` or `m.id.thirdparty` identifier. Returns (status,
    /// body): the body has `user_id` and `access_token` on 200, `errcode` otherwise.
    pub fn login(&self, identifier: Value, password: &str) -> (u16, Value) {
        let result = http()
            .post(&format!("{}/_matrix/client/v3/login", self.url))
            .send_json(json!({
                "type": "m.login.password",
                "identifier": identifier,
                "password": password,
            }));
        let resp = match result {
            Ok(r) | Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("{}", self.server.failure(&format!("login: {e}"))),
        };
        (resp.status(), resp.into_json().unwrap_or(Value::Null))
    }

    /// A client request with a user's own access token: (status, body).
    pub fn request_as(
        &self,
        token: &str,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> (u16, Value) {
        let req = http()
            .request(method, &format!("{}{path}", self.url))
            .set("Authorization", &format!("Bearer {token}"));
        let result = match body {
            Some(b) => req.send_json(b.clone()),
            None => req.call(),
        };
        let resp = match result {
            Ok(r) | Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("{}", self.server.failure(&format!("{method} {path}: {e}"))),
        };
        (resp.status(), resp.into_json().unwrap_or(Value::Null))
    }

    /// Every account (deactivated and locked ones too) whose id or display name contains
    /// `part`, sorted.
    pub fn users_named(&self, part: &str) -> Vec<String> {
        let path =
            format!("/_synapse/admin/v2/users?name={part}&deactivated=true&locked=true&limit=1000");
        let (s, v) = self.request("GET", &path, None);
        assert_eq!(s, 200, "{v}");
        let mut users: Vec<String> = v["users"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u["name"].as_str().unwrap().to_string())
            .collect();
        users.sort();
        users
    }

    /// A position in the log; pass it to `requests_since`.
    pub fn log_mark(&self) -> u64 {
        std::fs::metadata(&self.log).map(|m| m.len()).unwrap_or(0)
    }

    /// Every request Synapse finished since `mark`, as (method, path with query), the path
    /// percent-decoded (`/_synapse/admin/v2/users/@a-1-2:example.org`). On the shared instance
    /// this includes other tests' requests: filter by your unique names. Waits for a sentinel
    /// request of its own to reach the log, so requests answered before the call are in.
    pub fn requests_since(&self, mark: u64) -> Vec<(String, String)> {
        let sentinel = unique("testbed-sentinel");
        let _ = http()
            .get(&format!("{}/_matrix/client/versions?{sentinel}", self.url))
            .call();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let text = read_from(&self.log, mark);
            if text.contains(&sentinel) {
                return text
                    .lines()
                    .filter_map(parse_access_line)
                    .filter(|(_, path)| !path.contains(&sentinel))
                    .collect();
            }
            if Instant::now() > deadline {
                panic!(
                    "{}",
                    self.server
                        .failure("sentinel request never reached the log")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Only the writes (PUT, POST, DELETE) among `requests_since(mark)`.
    pub fn writes_since(&self, mark: u64) -> Vec<(String, String)> {
        self.requests_since(mark)
            .into_iter()
            .filter(|(m, _)| m != "GET" && m != "HEAD" && m != "OPTIONS")
            .collect()
    }
}

/// `--generate-config` output (homeserver.yaml with fresh secrets, signing key) is made once
/// per venv, in `.testbed/venv/synapse-template`, and copied with its paths rewritten: it
/// costs ~2 s of Python start-up that each test binary would otherwise pay.
fn copy_generated_config(
    python: &str,
    venv: &Path,
    server_name: &str,
    dir: &Path,
) -> Result<(), String> {
    let venv = venv.parent().unwrap_or(venv); // from .testbed/venv/bin
    let template = venv.join("synapse-template");
    if !template.join("homeserver.yaml").exists() {
        // Generate beside it and rename, so concurrent test binaries never see half a template.
        let tmp = tempfile::tempdir_in(venv)
            .map_err(|e| format!("temp dir in {}: {e}", venv.display()))?;
        // Synapse writes absolute, normalised paths: give it one, to find and replace later.
        let t = std::fs::canonicalize(tmp.path())
            .map_err(|e| format!("{}: {e}", tmp.path().display()))?
            .to_string_lossy()
            .into_owned();
        run(
            &[
                python,
                "-m",
                "synapse.app.homeserver",
                "--generate-config",
                "--server-name",
                server_name,
                "--config-path",
                &format!("{t}/homeserver.yaml"),
                "--data-directory",
                &t,
                "--report-stats=no",
            ],
            None,
        )?;
        let _ = std::fs::write(tmp.path().join("template-dir"), &t);
        let kept = tmp.keep();
        if std::fs::rename(&kept, &template).is_err() {
            let _ = std::fs::remove_dir_all(&kept); // another test binary made it first
        }
    }
    let read = |name: &str| {
        std::fs::read_to_string(template.join(name))
            .map_err(|e| format!("read {}: {e}", template.join(name).display()))
    };
    let generated_in = read("template-dir")?;
    let yaml = read("homeserver.yaml")?.replace(&generated_in, &dir.to_string_lossy());
    let key = format!("{server_name}.signing.key");
    let write = |name: &str, text: &str| {
        std::fs::write(dir.join(name), text).map_err(|e| format!("write {name}: {e}"))
    };
    write("homeserver.yaml", &yaml)?;
    write(&key, &read(&key)?)
}

fn read_from(path: &Path, mark: u64) -> String {
    let mut bytes = Vec::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        let _ = f.seek(SeekFrom::Start(mark));
        let _ = f.read_to_end(&mut bytes);
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// `... Processed request: ... 200 "PUT /_synapse/admin/v2/users/@x:example.org HTTP/1.1" ...`
fn parse_access_line(line: &str) -> Option<(String, String)> {
    let rest = &line[line.find("Processed request:")?..];
    let quoted = rest.split('"').nth(1)?;
    let mut parts = quoted.split(' ');
    let method = parts.next()?.to_string();
    let path = parts.next()?;
    Some((method, percent_decode(path)))
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Plain file handler at INFO, no buffering (the generated config buffers up to 5 s).
fn log_config_yaml(log: &Path) -> String {
    format!(
        r#"version: 1
formatters:
  precise:
    format: '%(asctime)s - %(name)s - %(lineno)d - %(levelname)s - %(request)s - %(message)s'
handlers:
  file:
    class: logging.FileHandler
    formatter: precise
    filename: {log}
    encoding: utf8
root:
  level: INFO
  handlers: [file]
loggers:
  synapse.storage.SQL:
    level: WARNING
  synapse.access:
    level: INFO
disable_existing_loggers: false
"#,
        log = log.display()
    )
}

fn overrides_yaml(port: u16, log_config: &Path) -> String {
    let unlimited = "{per_second: 100000, burst_count: 1000000}";
    format!(
        r#"listeners:
  - port: {port}
    bind_addresses: ['127.0.0.1']
    type: http
    tls: false
    x_forwarded: false
    resources:
      - names: [client]
        compress: false
log_config: {log_config}
trusted_key_servers: []
suppress_key_server_warning: true
report_stats: false
bcrypt_rounds: 4
enable_registration: false
registration_shared_secret: {SHARED_SECRET}
presence:
  enabled: false
url_preview_enabled: false
background_updates:
  sleep_enabled: false
  min_batch_size: 1000
  default_batch_size: 1000
rc_message: {unlimited}
rc_registration: {unlimited}
rc_registration_token_validity: {unlimited}
rc_login:
  address: {unlimited}
  account: {unlimited}
  failed_attempts: {unlimited}
rc_admin_redaction: {unlimited}
rc_joins:
  local: {unlimited}
  remote: {unlimited}
rc_joins_per_room: {unlimited}
rc_3pid_validation: {unlimited}
rc_invites:
  per_room: {unlimited}
  per_user: {unlimited}
  per_issuer: {unlimited}
rc_third_party_invite: {unlimited}
rc_media_create: {unlimited}
rc_presence:
  per_user: {unlimited}
rc_delayed_event_mgmt: {unlimited}
rc_room_creation: {unlimited}
rc_reports: {unlimited}
rc_user_directory: {unlimited}
rc_profile: {unlimited}
rc_key_requests: {unlimited}
"#,
        log_config = log_config.display()
    )
}

/// The `modules:` entry of synapse-ldap3 (`ldap_auth_provider.LdapAuthProviderModule`) in
/// search mode against `slapd`: agents log in with their `uid` (or e-mail) and LDAP password,
/// the service account finds their entry under `base`, and `filter` leaves out who may not
/// log in. The recipe of docs/login.md, as tested.
pub fn ldap3_module(slapd: &super::Slapd, base: &str, filter: &str) -> String {
    format!(
        r#"modules:
  - module: ldap_auth_provider.LdapAuthProviderModule
    config:
      enabled: true
      uri: "{uri}"
      start_tls: false
      mode: search
      base: "{base}"
      bind_dn: "{bind_dn}"
      bind_password: "{bind_password}"
      filter: "{filter}"
      attributes:
        uid: uid
        mail: mail
        name: cn
"#,
        uri = slapd.url,
        bind_dn = slapd.sync_dn,
        bind_password = slapd.sync_password,
    )
}

/// A room alias or id made safe for a URL path (`#` and `!` escaped).
pub fn url_path_part(s: &str) -> String {
    s.replace('#', "%23").replace('!', "%21")
}

/// A Synapse of the test binary's own where an application service holds the localparts
/// `reserved-…` exclusively: Synapse refuses to register them (400 `M_EXCLUSIVE`), which the
/// daemon cannot know before it asks (what it can know, it checks while planning).
pub fn with_a_bridge() -> &'static Synapse {
    static SYNAPSE: std::sync::OnceLock<(Synapse, tempfile::TempDir)> = std::sync::OnceLock::new();
    let (synapse, _) = SYNAPSE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let registration = dir.path().join("bridge.yaml");
        std::fs::write(
            &registration,
            "id: bridge\nurl: null\nas_token: held-agents-as\nhs_token: held-agents-hs\n\
             sender_localpart: bridge-bot\nnamespaces:\n  users:\n    - exclusive: true\n      \
             regex: \"@reserved-.*\"\n  aliases: []\n  rooms: []\n",
        )
        .unwrap();
        let config = format!(
            "app_service_config_files: [\"{}\"]\n",
            registration.display()
        );
        (Synapse::start_with(&config), dir)
    });
    synapse
}
