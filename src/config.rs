//! The daemon config (`config.toml`): where the directory and homeserver are, where secrets
//! live, where state is kept, which mapping file to use. Every error names the file, the key
//! and what is wrong.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use url::Url;

use crate::secret::Secret;

/// Where the config is read from when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/matrix-ldap-sync/config.toml";

#[derive(Debug, Clone)]
pub struct Config {
    /// The file this config was read from.
    pub source: PathBuf,
    pub directory: DirectoryConfig,
    pub homeserver: HomeserverConfig,
    /// Where the ledger (sled) lives.
    pub state_dir: PathBuf,
    /// The mapping rules file.
    pub mapping_file: PathBuf,
    pub departures: DeparturesConfig,
    pub brake: BrakeConfig,
    /// How `run` schedules syncs and where it serves health and metrics.
    pub daemon: DaemonConfig,
}

/// The `[daemon]` section: only `run` reads it; every key has a default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonConfig {
    /// Time between the end of one run and the start of the next.
    pub interval: Duration,
    /// Up to this much random time is added to each interval, so that many daemons started
    /// together do not hit the directory at the same moment.
    pub jitter: Duration,
    /// Wait before the first retry after a failed run; doubles on each failure, up to `interval`.
    pub retry_min: Duration,
    /// On SIGTERM, how long the action in flight may take before the daemon exits anyway.
    pub shutdown_timeout: Duration,
    /// Loopback address of the `/health` and `/metrics` endpoint; `None`: not served.
    pub listen: Option<SocketAddr>,
}

/// What happens to the account of an agent who left.
#[derive(Debug, Clone, PartialEq)]
pub struct DeparturesConfig {
    /// How long an account stays in the reversible step before it is deactivated (0: at once).
    pub grace: Duration,
    pub reversible_step: ReversibleStep,
    /// Log out every device when the reversible step is taken.
    pub logout_devices: bool,
    /// Deactivate with `erase` (messages hidden from future room members). Off by default.
    pub erase: bool,
}

/// The first, reversible step of a departure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ReversibleStep {
    /// Synapse suspension: can log in and read, cannot send.
    Suspend,
    /// Synapse lock: cannot use the account at all.
    Lock,
}

impl ReversibleStep {
    /// "suspended" or "locked".
    pub fn done(self) -> &'static str {
        match self {
            ReversibleStep::Suspend => "suspended",
            ReversibleStep::Lock => "locked",
        }
    }
}

/// Limits that stop a plan which looks like an accident.
#[derive(Debug, Clone, PartialEq)]
pub struct BrakeConfig {
    /// Most account departures (suspend, lock, deactivate) one run may apply.
    pub max_departures: usize,
    /// Most account departures one run may apply, in percent of the managed accounts.
    pub max_departures_percent: f64,
    /// Most room removals (and power levels lowered) one run may apply: counted apart from
    /// the departures, as one person's routine move takes several.
    pub max_room_removals: usize,
    /// Most room removals one run may apply, in percent of the managed accounts.
    pub max_room_removals_percent: f64,
    /// The percentages apply from this many departures (or room removals) on: below it, a
    /// percentage of a small directory measures its size more than an accident.
    pub percent_from: usize,
    /// The brake engages when the directory returns this many percent fewer agents than the
    /// last good run saw.
    pub max_shrink_percent: f64,
    /// mxid patterns (`*` wildcards) never suspended, locked or deactivated.
    pub protected: Vec<String>,
}

impl Default for DeparturesConfig {
    fn default() -> Self {
        DeparturesConfig {
            grace: Duration::from_secs(30 * 24 * 3600),
            reversible_step: ReversibleStep::Suspend,
            logout_devices: false,
            erase: false,
        }
    }
}

impl Default for BrakeConfig {
    fn default() -> Self {
        BrakeConfig {
            max_departures: 50,
            max_departures_percent: 5.0,
            max_room_removals: 100,
            max_room_removals_percent: 10.0,
            percent_from: 10,
            max_shrink_percent: 10.0,
            protected: Vec::new(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct DirectoryConfig {
    /// `ldap://` or `ldaps://` URLs, tried in order.
    pub urls: Vec<Url>,
    /// Upgrade `ldap://` connections with StartTLS.
    pub starttls: bool,
    /// A PEM file of CA certificates to trust instead of the system roots.
    pub ca_file: Option<PathBuf>,
    pub bind_dn: String,
    pub bind_password: Secret,
    /// Search bases; agents are read from each in turn.
    pub base_dns: Vec<String>,
    /// LDAP paged results page size.
    pub page_size: i32,
    /// Limit for connecting and for each LDAP operation (bind, each page).
    pub timeout: Duration,
    /// Read only what changed since the last complete read, where the server offers it
    /// (RFC 4533 content sync, AD USNs); `false`: every run reads everything.
    pub incremental: bool,
    /// The longest time between two complete reads (they catch what an incremental read
    /// cannot: agents moved out of the bases, and room memberships).
    pub full_sync_every: Duration,
}

#[derive(Debug, Clone)]
pub struct HomeserverConfig {
    /// Base URL of the homeserver's client/admin API, e.g. `https://matrix.example.org`.
    pub url: Url,
    /// The server name in user ids (`@alice:<server_name>`).
    pub server_name: String,
    /// Access token of an admin user.
    pub access_token: Secret,
    /// Most requests in flight at once.
    pub concurrency: usize,
    /// Limit for each HTTP request.
    pub timeout: Duration,
    /// How often a request is retried after a 429, a 5xx or a transport error.
    pub max_retries: u32,
    /// An action the homeserver refused for good is tried again after this long, even if the
    /// agent did not change (`retry_refused_after`, default 1 day).
    pub retry_refused_after: Duration,
    /// The circuit breaker opens (the run stops) when this many different requests in a row
    /// got no answer, timed out or got a 5xx (`breaker_failures`, default 3).
    pub breaker_failures: u32,
    /// A run sends nothing more to the homeserver after this long; what is left is done by
    /// the next run (`run_deadline`, default 1 hour).
    pub run_deadline: Duration,
}

/// A config problem, naming the file, the key (when there is one) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub key: Option<String>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.key {
            Some(key) => write!(
                f,
                "{}: key `{}`: {}",
                self.file.display(),
                key,
                self.message
            ),
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    directory: RawDirectory,
    homeserver: RawHomeserver,
    state: RawState,
    mapping: RawMapping,
    #[serde(default)]
    departures: RawDepartures,
    #[serde(default)]
    brake: RawBrake,
    #[serde(default)]
    daemon: RawDaemon,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawDaemon {
    interval_secs: u64,
    jitter_secs: u64,
    retry_min_secs: u64,
    shutdown_timeout_secs: u64,
    listen: Option<String>,
}

impl Default for RawDaemon {
    fn default() -> Self {
        RawDaemon {
            interval_secs: 300,
            jitter_secs: 30,
            retry_min_secs: 10,
            shutdown_timeout_secs: 20,
            listen: None,
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDepartures {
    grace: Option<String>,
    reversible_step: Option<ReversibleStep>,
    logout_devices: Option<bool>,
    erase: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawBrake {
    max_departures: Option<usize>,
    max_departures_percent: Option<f64>,
    max_room_removals: Option<usize>,
    max_room_removals_percent: Option<f64>,
    percent_from: Option<usize>,
    max_shrink_percent: Option<f64>,
    protected: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDirectory {
    urls: Vec<String>,
    #[serde(default)]
    starttls: bool,
    ca_file: Option<PathBuf>,
    bind_dn: String,
    bind_password_file: Option<PathBuf>,
    bind_password_env: Option<String>,
    base_dns: Vec<String>,
    #[serde(default = "default_page_size")]
    page_size: i64,
    #[serde(default = "default_directory_timeout")]
    timeout_secs: u64,
    #[serde(default = "default_incremental")]
    incremental: bool,
    full_sync_every: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHomeserver {
    url: String,
    server_name: String,
    access_token_file: Option<PathBuf>,
    access_token_env: Option<String>,
    #[serde(default = "default_concurrency")]
    concurrency: usize,
    #[serde(default = "default_homeserver_timeout")]
    timeout_secs: u64,
    #[serde(default = "default_max_retries")]
    max_retries: u32,
    #[serde(default = "default_retry_refused_after")]
    retry_refused_after: String,
    #[serde(default = "default_breaker_failures")]
    breaker_failures: u32,
    #[serde(default = "default_run_deadline")]
    run_deadline: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawState {
    directory: PathBuf,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMapping {
    file: PathBuf,
}

fn default_page_size() -> i64 {
    500
}
fn default_directory_timeout() -> u64 {
    30
}
fn default_incremental() -> bool {
    true
}
/// Complete reads at least hourly: room memberships follow on them.
const DEFAULT_FULL_SYNC_EVERY: Duration = Duration::from_secs(3600);
fn default_concurrency() -> usize {
    8
}
fn default_homeserver_timeout() -> u64 {
    30
}
fn default_max_retries() -> u32 {
    5
}
fn default_retry_refused_after() -> String {
    "1d".into()
}
/// "A few": with the default concurrency (8), a homeserver that stops answering opens the
/// breaker within one request timeout; one request retried many times counts once.
fn default_breaker_failures() -> u32 {
    3
}
/// Long enough for hours of a first sync to go on in hourly runs (each resumes where the
/// last stopped, after a directory read of seconds), short enough that a stuck run ends,
/// and that a reload or `status.json` waits at most that long.
fn default_run_deadline() -> String {
    "1h".into()
}

impl Config {
    /// Reads, parses and validates a config file, and reads the secrets it points to.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_path_buf(),
            key: None,
            message: format!("cannot read the config file: {e}"),
        })?;
        Config::parse(path, &text)
    }

    /// Parses and validates config text; `path` names the file in errors and anchors
    /// relative paths (they are relative to the config file's folder).
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError {
            file: path.to_path_buf(),
            key: None,
            message: e.to_string().trim_end().to_string(),
        })?;
        let v = Validator { file: path };
        let base = path.parent().unwrap_or_else(|| Path::new("."));
        Ok(Config {
            source: path.to_path_buf(),
            directory: v.directory(raw.directory, base)?,
            homeserver: v.homeserver(raw.homeserver, base)?,
            state_dir: resolve(base, &raw.state.directory),
            mapping_file: resolve(base, &raw.mapping.file),
            departures: v.departures(raw.departures)?,
            brake: v.brake(raw.brake)?,
            daemon: v.daemon(raw.daemon)?,
        })
    }
}

/// Turns raw config sections into checked ones; every error carries the file and key.
struct Validator<'a> {
    file: &'a Path,
}

impl Validator<'_> {
    fn err(&self, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.file.to_path_buf(),
            key: Some(key.to_string()),
            message: message.into(),
        }
    }

    fn directory(&self, raw: RawDirectory, base: &Path) -> Result<DirectoryConfig, ConfigError> {
        if raw.urls.is_empty() {
            return Err(self.err(
                "directory.urls",
                "give at least one ldap:// or ldaps:// URL",
            ));
        }
        let mut urls = Vec::new();
        for (i, text) in raw.urls.iter().enumerate() {
            let key = format!("directory.urls[{i}]");
            let url = Url::parse(text)
                .map_err(|e| self.err(&key, format!("`{text}` is not a URL: {e}")))?;
            match url.scheme() {
                "ldap" | "ldaps" => {}
                other => {
                    return Err(self.err(
                        &key,
                        format!("scheme `{other}` is not supported: use ldap:// or ldaps://"),
                    ))
                }
            }
            if raw.starttls && url.scheme() == "ldaps" {
                return Err(self.err(
                    "directory.starttls",
                    format!("StartTLS applies to ldap:// URLs, but `{text}` is already ldaps://"),
                ));
            }
            urls.push(url);
        }
        if raw.bind_dn.trim().is_empty() {
            return Err(self.err(
                "directory.bind_dn",
                "must not be empty (anonymous binds are not supported)",
            ));
        }
        let bind_password = self.secret(
            "directory.bind_password_file",
            raw.bind_password_file.as_deref(),
            "directory.bind_password_env",
            raw.bind_password_env.as_deref(),
            base,
        )?;
        if raw.base_dns.is_empty() || raw.base_dns.iter().any(|b| b.trim().is_empty()) {
            return Err(self.err("directory.base_dns", "give at least one non-empty base DN"));
        }
        for (i, base) in raw.base_dns.iter().enumerate() {
            crate::directory::Dn::parse(base)
                .map_err(|e| self.err(&format!("directory.base_dns[{i}]"), e.to_string()))?;
        }
        if !(1..=100_000).contains(&raw.page_size) {
            return Err(self.err(
                "directory.page_size",
                format!("{} is out of range 1..=100000", raw.page_size),
            ));
        }
        let ca_file = raw.ca_file.map(|p| resolve(base, &p));
        if let Some(ca) = &ca_file {
            if !ca.is_file() {
                return Err(self.err(
                    "directory.ca_file",
                    format!("{} is not a readable file", ca.display()),
                ));
            }
        }
        Ok(DirectoryConfig {
            urls,
            starttls: raw.starttls,
            ca_file,
            bind_dn: raw.bind_dn,
            bind_password,
            base_dns: raw.base_dns,
            page_size: raw.page_size as i32,
            timeout: self.duration("directory.timeout_secs", raw.timeout_secs)?,
            incremental: raw.incremental,
            full_sync_every: match raw.full_sync_every {
                None => DEFAULT_FULL_SYNC_EVERY,
                Some(text) => self.human_duration("directory.full_sync_every", &text)?,
            },
        })
    }

    fn homeserver(&self, raw: RawHomeserver, base: &Path) -> Result<HomeserverConfig, ConfigError> {
        let url = Url::parse(&raw.url)
            .map_err(|e| self.err("homeserver.url", format!("`{}` is not a URL: {e}", raw.url)))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(self.err(
                "homeserver.url",
                format!(
                    "scheme `{}` is not supported: use https:// (or http:// on loopback)",
                    url.scheme()
                ),
            ));
        }
        if raw.server_name.trim().is_empty() || raw.server_name.contains(['@', '/', ' ']) {
            return Err(self.err(
                "homeserver.server_name",
                format!(
                    "`{}` is not a Matrix server name (e.g. `example.org`)",
                    raw.server_name
                ),
            ));
        }
        let access_token = self.secret(
            "homeserver.access_token_file",
            raw.access_token_file.as_deref(),
            "homeserver.access_token_env",
            raw.access_token_env.as_deref(),
            base,
        )?;
        if !(1..=256).contains(&raw.concurrency) {
            return Err(self.err(
                "homeserver.concurrency",
                format!("{} is out of range 1..=256", raw.concurrency),
            ));
        }
        if !(1..=1000).contains(&raw.breaker_failures) {
            return Err(self.err(
                "homeserver.breaker_failures",
                format!("{} is out of range 1..=1000", raw.breaker_failures),
            ));
        }
        let timeout = self.duration("homeserver.timeout_secs", raw.timeout_secs)?;
        let run_deadline = self.human_duration("homeserver.run_deadline", &raw.run_deadline)?;
        if run_deadline <= timeout {
            return Err(self.err(
                "homeserver.run_deadline",
                format!(
                    "`{}` must be longer than homeserver.timeout_secs ({} s): no request could finish",
                    raw.run_deadline,
                    timeout.as_secs()
                ),
            ));
        }
        Ok(HomeserverConfig {
            url,
            server_name: raw.server_name,
            access_token,
            concurrency: raw.concurrency,
            timeout,
            max_retries: raw.max_retries,
            retry_refused_after: self
                .human_duration("homeserver.retry_refused_after", &raw.retry_refused_after)?,
            breaker_failures: raw.breaker_failures,
            run_deadline,
        })
    }

    /// A duration written as `30d`, `12h`, `90min`, `0s`.
    fn human_duration(&self, key: &str, text: &str) -> Result<Duration, ConfigError> {
        humantime::parse_duration(text).map_err(|e| {
            self.err(
                key,
                format!("`{text}` is not a duration ({e}); write e.g. \"30d\", \"12h\" or \"0s\""),
            )
        })
    }

    fn departures(&self, raw: RawDepartures) -> Result<DeparturesConfig, ConfigError> {
        let default = DeparturesConfig::default();
        let grace = match raw.grace {
            None => default.grace,
            Some(text) => self.human_duration("departures.grace", &text)?,
        };
        Ok(DeparturesConfig {
            grace,
            reversible_step: raw.reversible_step.unwrap_or(default.reversible_step),
            logout_devices: raw.logout_devices.unwrap_or(default.logout_devices),
            erase: raw.erase.unwrap_or(default.erase),
        })
    }

    fn brake(&self, raw: RawBrake) -> Result<BrakeConfig, ConfigError> {
        let default = BrakeConfig::default();
        let percent = |key: &str, value: Option<f64>, default: f64| match value {
            Some(p) if !(0.0..=100.0).contains(&p) => {
                Err(self.err(key, format!("{p} is not a percentage (0 to 100)")))
            }
            Some(p) => Ok(p),
            None => Ok(default),
        };
        let protected = raw.protected.unwrap_or_default();
        if let Some(bad) = protected
            .iter()
            .find(|p| !p.starts_with('@') || !p.contains(':'))
        {
            return Err(self.err("brake.protected", format!("`{bad}` is not an mxid pattern like `@admin:example.org` or `@*-bot:example.org`")));
        }
        Ok(BrakeConfig {
            max_departures: raw.max_departures.unwrap_or(default.max_departures),
            max_departures_percent: percent(
                "brake.max_departures_percent",
                raw.max_departures_percent,
                default.max_departures_percent,
            )?,
            max_room_removals: raw.max_room_removals.unwrap_or(default.max_room_removals),
            max_room_removals_percent: percent(
                "brake.max_room_removals_percent",
                raw.max_room_removals_percent,
                default.max_room_removals_percent,
            )?,
            percent_from: raw.percent_from.unwrap_or(default.percent_from),
            max_shrink_percent: percent(
                "brake.max_shrink_percent",
                raw.max_shrink_percent,
                default.max_shrink_percent,
            )?,
            protected,
        })
    }

    fn daemon(&self, raw: RawDaemon) -> Result<DaemonConfig, ConfigError> {
        let listen = match raw.listen.as_deref() {
            None | Some("") => None,
            Some(text) => {
                let addr: SocketAddr = text.parse().map_err(|e| {
                    self.err(
                        "daemon.listen",
                        format!("`{text}` is not an address:port (e.g. 127.0.0.1:9187): {e}"),
                    )
                })?;
                if !addr.ip().is_loopback() {
                    return Err(self.err(
                        "daemon.listen",
                        format!("{addr} is not a loopback address: health and metrics have no authentication; listen on 127.0.0.1 or [::1] and put a proxy in front"),
                    ));
                }
                Some(addr)
            }
        };
        Ok(DaemonConfig {
            interval: self.duration("daemon.interval_secs", raw.interval_secs)?,
            jitter: Duration::from_secs(raw.jitter_secs),
            retry_min: self.duration("daemon.retry_min_secs", raw.retry_min_secs)?,
            shutdown_timeout: self
                .duration("daemon.shutdown_timeout_secs", raw.shutdown_timeout_secs)?,
            listen,
        })
    }

    fn duration(&self, key: &str, secs: u64) -> Result<Duration, ConfigError> {
        if secs == 0 {
            return Err(self.err(key, "must be at least 1 second"));
        }
        Ok(Duration::from_secs(secs))
    }

    /// A secret comes from exactly one of a file (preferred: systemd credentials) or an
    /// environment variable. `$CREDENTIALS_DIRECTORY/` at the start of a path is expanded.
    fn secret(
        &self,
        file_key: &str,
        file: Option<&Path>,
        env_key: &str,
        env: Option<&str>,
        base: &Path,
    ) -> Result<Secret, ConfigError> {
        let secret = match (file, env) {
            (Some(_), Some(_)) => {
                return Err(self.err(
                    file_key,
                    format!("give either `{file_key}` or `{env_key}`, not both"),
                ))
            }
            (None, None) => {
                return Err(self.err(
                    file_key,
                    format!("missing: give `{file_key}` or `{env_key}`"),
                ))
            }
            (Some(path), None) => {
                let path = expand_credentials_dir(path).map_err(|m| self.err(file_key, m))?;
                let path = resolve(base, &path);
                Secret::from_file(&path).map_err(|e| {
                    self.err(file_key, format!("cannot read {}: {e}", path.display()))
                })?
            }
            (None, Some(var)) => match std::env::var(var) {
                Ok(value) => Secret::new(value),
                Err(_) => {
                    return Err(
                        self.err(env_key, format!("environment variable `{var}` is not set"))
                    )
                }
            },
        };
        if secret.is_empty() {
            let key = if file.is_some() { file_key } else { env_key };
            return Err(self.err(key, "the secret is empty"));
        }
        Ok(secret)
    }
}

fn expand_credentials_dir(path: &Path) -> Result<PathBuf, String> {
    let Ok(rest) = path.strip_prefix("$CREDENTIALS_DIRECTORY") else {
        return Ok(path.to_path_buf());
    };
    match std::env::var_os("CREDENTIALS_DIRECTORY") {
        Some(dir) => Ok(PathBuf::from(dir).join(rest)),
        None => Err("the path uses $CREDENTIALS_DIRECTORY but it is not set (is LoadCredential= in the unit?)".into()),
    }
}

fn resolve(base: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        base.join(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixture {
        dir: tempfile::TempDir,
    }

    impl Fixture {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("ldap.pw"), "secret\n").unwrap();
            std::fs::write(dir.path().join("token"), "syt_abc\n").unwrap();
            Fixture { dir }
        }

        fn parse(&self, text: &str) -> Result<Config, ConfigError> {
            Config::parse(&self.dir.path().join("config.toml"), text)
        }
    }

    const GOOD: &str = r#"
[directory]
urls = ["ldap://127.0.0.1:3890"]
bind_dn = "cn=sync,dc=example,dc=org"
bind_password_file = "ldap.pw"
base_dns = ["ou=people,dc=example,dc=org"]

[homeserver]
url = "http://127.0.0.1:8008"
server_name = "example.org"
access_token_file = "token"

[state]
directory = "state"

[mapping]
file = "mappings/openldap.toml"
"#;

    #[test]
    fn good_config_loads_with_defaults_and_relative_paths() {
        let f = Fixture::new();
        let c = f.parse(GOOD).unwrap();
        assert_eq!(c.directory.page_size, 500);
        assert_eq!(c.directory.bind_password.expose(), "secret");
        assert_eq!(c.homeserver.access_token.expose(), "syt_abc");
        assert_eq!(c.homeserver.concurrency, 8);
        assert_eq!(c.state_dir, f.dir.path().join("state"));
        assert_eq!(c.mapping_file, f.dir.path().join("mappings/openldap.toml"));
    }

    #[test]
    fn errors_name_the_file_and_the_key() {
        let f = Fixture::new();
        let cases: &[(&str, &str, &str)] = &[
            (
                "urls = [\"ldap://127.0.0.1:3890\"]",
                "urls = [\"http://x\"]",
                "directory.urls[0]",
            ),
            (
                "page_size",
                "page_size = 0\nx_page_size",
                "directory.page_size",
            ),
            (
                "bind_password_file = \"ldap.pw\"",
                "bind_password_file = \"nope.pw\"",
                "directory.bind_password_file",
            ),
            (
                "access_token_file = \"token\"",
                "",
                "homeserver.access_token_file",
            ),
            (
                "server_name = \"example.org\"",
                "server_name = \"@bad\"",
                "homeserver.server_name",
            ),
            (
                "base_dns = [\"ou=people,dc=example,dc=org\"]",
                "base_dns = [\"dc=org\", \"ou=people,,dc=org\"]",
                "directory.base_dns[1]",
            ),
            (
                "access_token_file = \"token\"",
                "access_token_file = \"token\"\nconcurrency = 0",
                "homeserver.concurrency",
            ),
        ];
        for (from, to, key) in cases {
            let text = if from == &"page_size" {
                GOOD.replace("base_dns", "page_size = 0\nbase_dns")
            } else {
                GOOD.replace(from, to)
            };
            let err = f.parse(&text).unwrap_err();
            assert_eq!(err.key.as_deref(), Some(*key), "case {to}: {err}");
            assert!(err.to_string().contains("config.toml"), "{err}");
        }
    }

    #[test]
    fn breaker_and_run_deadline_have_defaults_and_keyed_errors() {
        let f = Fixture::new();
        let c = f.parse(GOOD).unwrap();
        assert_eq!(c.homeserver.breaker_failures, 3);
        assert_eq!(c.homeserver.run_deadline, Duration::from_secs(3600));
        let token = "access_token_file = \"token\"";
        let with = |extra: &str| GOOD.replace(token, &format!("{token}\n{extra}"));
        let c = f
            .parse(&with("breaker_failures = 5\nrun_deadline = \"90s\""))
            .unwrap();
        assert_eq!(c.homeserver.breaker_failures, 5);
        assert_eq!(c.homeserver.run_deadline, Duration::from_secs(90));
        for (extra, key, says) in [
            (
                "breaker_failures = 0",
                "homeserver.breaker_failures",
                "1..=1000",
            ),
            (
                "run_deadline = \"soon\"",
                "homeserver.run_deadline",
                "not a duration",
            ),
            (
                "timeout_secs = 60\nrun_deadline = \"1min\"",
                "homeserver.run_deadline",
                "longer than homeserver.timeout_secs (60 s)",
            ),
        ] {
            let err = f.parse(&with(extra)).unwrap_err();
            assert_eq!(err.key.as_deref(), Some(key), "{extra}: {err}");
            assert!(err.message.contains(says), "{extra}: {err}");
        }
    }

    #[test]
    fn unknown_and_missing_keys_are_reported_with_their_names() {
        let f = Fixture::new();
        let err = f
            .parse(&GOOD.replace("starttls", "x").replace("bind_dn", "bind_dm"))
            .unwrap_err();
        assert!(err.message.contains("bind_dm"), "{err}");
        let err = f
            .parse(&GOOD.replace("[state]\ndirectory = \"state\"", ""))
            .unwrap_err();
        assert!(err.message.contains("state"), "{err}");
    }

    #[test]
    fn secret_from_env_and_both_sources_refused() {
        let f = Fixture::new();
        std::env::set_var("MLS_TEST_TOKEN_1", "tok");
        let c = f
            .parse(&GOOD.replace(
                "access_token_file = \"token\"",
                "access_token_env = \"MLS_TEST_TOKEN_1\"",
            ))
            .unwrap();
        assert_eq!(c.homeserver.access_token.expose(), "tok");
        let err = f
            .parse(&GOOD.replace(
                "access_token_file = \"token\"",
                "access_token_file = \"token\"\naccess_token_env = \"X\"",
            ))
            .unwrap_err();
        assert!(err.message.contains("not both"), "{err}");
    }

    #[test]
    fn departures_and_brake_have_defaults_and_checked_values() {
        let f = Fixture::new();
        let c = f.parse(GOOD).unwrap();
        assert_eq!(c.departures.grace, Duration::from_secs(30 * 86400));
        assert_eq!(c.brake.max_departures, 50);
        assert_eq!(
            (
                c.brake.max_room_removals,
                c.brake.max_room_removals_percent,
                c.brake.percent_from
            ),
            (100, 10.0, 10)
        );
        let text = format!("{GOOD}\n[departures]\ngrace = \"7d\"\nreversible_step = \"lock\"\n[brake]\nprotected = [\"@admin:example.org\"]\n");
        let c = f.parse(&text).unwrap();
        assert_eq!(c.departures.grace, Duration::from_secs(7 * 86400));
        assert_eq!(c.departures.reversible_step, ReversibleStep::Lock);
        assert_eq!(c.brake.protected, vec!["@admin:example.org"]);
        let cases = [
            ("[departures]\ngrace = \"soon\"", "departures.grace"),
            (
                "[brake]\nmax_departures_percent = 120.0",
                "brake.max_departures_percent",
            ),
            (
                "[brake]\nmax_room_removals_percent = -1.0",
                "brake.max_room_removals_percent",
            ),
            ("[brake]\nprotected = [\"admin\"]", "brake.protected"),
        ];
        for (extra, key) in cases {
            let err = f.parse(&format!("{GOOD}\n{extra}\n")).unwrap_err();
            assert_eq!(err.key.as_deref(), Some(key), "{err}");
        }
    }

    #[test]
    fn daemon_section_has_defaults_and_keyed_errors() {
        let f = Fixture::new();
        let c = f.parse(GOOD).unwrap();
        assert_eq!(c.daemon.interval, Duration::from_secs(300));
        assert_eq!(c.daemon.listen, None);
        let c = f
            .parse(&format!(
                "{GOOD}\n[daemon]\ninterval_secs = 60\nlisten = \"127.0.0.1:9187\"\n"
            ))
            .unwrap();
        assert_eq!(c.daemon.interval, Duration::from_secs(60));
        assert_eq!(c.daemon.listen, Some("127.0.0.1:9187".parse().unwrap()));
        for (text, key) in [
            ("listen = \"0.0.0.0:9187\"", "daemon.listen"),
            ("listen = \"localhost\"", "daemon.listen"),
            ("interval_secs = 0", "daemon.interval_secs"),
        ] {
            let err = f.parse(&format!("{GOOD}\n[daemon]\n{text}\n")).unwrap_err();
            assert_eq!(err.key.as_deref(), Some(key), "{text}: {err}");
        }
    }

    #[test]
    fn the_documented_example_config_loads() {
        let f = Fixture::new();
        let creds = f.dir.path().join("creds");
        std::fs::create_dir(&creds).unwrap();
        std::fs::write(creds.join("ldap-password"), "pw").unwrap();
        std::fs::write(creds.join("homeserver-token"), "tok").unwrap();
        std::env::set_var("CREDENTIALS_DIRECTORY", &creds);
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.example.toml");
        let c = Config::parse(&example, &std::fs::read_to_string(&example).unwrap()).unwrap();
        assert_eq!(c.directory.urls.len(), 2);
        assert_eq!(c.homeserver.access_token.expose(), "tok");
        assert_eq!(c.brake.protected.len(), 2);
    }

    #[test]
    fn starttls_with_ldaps_is_refused() {
        let f = Fixture::new();
        let text = GOOD
            .replace("ldap://127.0.0.1:3890", "ldaps://127.0.0.1:6360")
            .replace("bind_dn", "starttls = true\nbind_dn");
        assert_eq!(
            f.parse(&text).unwrap_err().key.as_deref(),
            Some("directory.starttls")
        );
    }
}
