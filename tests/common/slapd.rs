//! A real OpenLDAP slapd on a loopback port: `dc=example,dc=org` in back_mdb with syncprov
//! (with a session log of 1000 operations, so content sync reports deletions in a delete
//! phase; `start_without_sessionlog` for the present phase), an admin (rootdn), a sync service account with unlimited limits, and a `limited` account
//! whose searches stop at 3 entries (result code 4).

use super::process::{run, scratch_dir, Server};
use super::{free_port, require_installed, unique};
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

const SLAPD: &str = "/usr/sbin/slapd";
const START_TIMEOUT: Duration = Duration::from_secs(20);

pub struct Slapd {
    /// `ldap://127.0.0.1:<port>`
    pub url: String,
    pub port: u16,
    /// `dc=example,dc=org`
    pub base_dn: String,
    /// The rootdn, `cn=admin,dc=example,dc=org` (password `admin-secret`).
    pub admin_dn: String,
    pub admin_password: String,
    /// `cn=sync,dc=example,dc=org`: reads everything, no size or time limit.
    pub sync_dn: String,
    pub sync_password: String,
    /// `cn=limited,dc=example,dc=org`: reads everything, hard size limit 3.
    pub limited_dn: String,
    pub limited_password: String,
    server: Server,
    /// Holds the config and database; removed when an own instance is dropped.
    pub dir: tempfile::TempDir,
}

impl Slapd {
    /// The instance shared by all tests of this test binary (started on first use).
    /// Tests must not stop or pause it: use `Slapd::start()` for that.
    pub fn shared() -> &'static Slapd {
        static SHARED: OnceLock<Result<Slapd, String>> = OnceLock::new();
        match SHARED.get_or_init(|| Slapd::try_start(true)) {
            Ok(slapd) => slapd,
            Err(e) => panic!("shared slapd could not start: {e}"),
        }
    }

    /// An instance of its own (killed and removed on drop).
    pub fn start() -> Slapd {
        Slapd::try_start(true).unwrap_or_else(|e| panic!("{e}"))
    }

    /// An instance of its own whose syncprov keeps no session log: content sync then answers
    /// a cookie with the list of entries still there (present phase), not the deleted ones.
    pub fn start_without_sessionlog() -> Slapd {
        Slapd::try_start(false).unwrap_or_else(|e| panic!("{e}"))
    }

    fn try_start(sessionlog: bool) -> Result<Slapd, String> {
        require_installed(SLAPD.as_ref(), "slapd");
        require_installed("/usr/bin/ldapadd".as_ref(), "ldapadd (ldap-utils)");
        let began = std::time::Instant::now();
        let dir = scratch_dir("slapd");
        let base_dn = "dc=example,dc=org".to_string();
        let path = |p: &str| dir.path().join(p).to_string_lossy().into_owned();
        for sub in ["db", "slapd.d"] {
            std::fs::create_dir(path(sub)).map_err(|e| format!("mkdir {sub}: {e}"))?;
        }
        let conf = slapd_conf(&dir.path().to_string_lossy(), sessionlog);
        std::fs::write(path("slapd.conf"), conf).map_err(|e| format!("write slapd.conf: {e}"))?;
        // slapadd creates the database, then slaptest (which opens it read-only) converts
        // slapd.conf to a cn=config directory, so the config can also be changed at run time.
        run(
            &[
                "/usr/sbin/slapadd",
                "-q",
                "-w",
                "-f",
                &path("slapd.conf"),
                "-b",
                &base_dn,
            ],
            Some(BOOTSTRAP_LDIF),
        )?;
        run(
            &[
                "/usr/sbin/slaptest",
                "-Q",
                "-f",
                &path("slapd.conf"),
                "-F",
                &path("slapd.d"),
            ],
            None,
        )?;

        // A free port can be taken between the probe and slapd's bind: try a few.
        let mut last_error = String::new();
        for _ in 0..3 {
            let port = free_port();
            let url = format!("ldap://127.0.0.1:{port}");
            let argv = vec![
                SLAPD.to_string(),
                "-d".into(),
                "stats".into(),
                "-h".into(),
                format!("{url}/"),
                "-F".into(),
                path("slapd.d"),
            ];
            let ready = move || TcpStream::connect(("127.0.0.1", port)).is_ok();
            match Server::start(
                "slapd",
                argv,
                dir.path(),
                &dir.path().join("slapd.log"),
                START_TIMEOUT,
                ready,
            ) {
                Ok(server) => {
                    eprintln!(
                        "testbed: slapd on {url} ready in {:.2?} ({})",
                        began.elapsed(),
                        dir.path().display()
                    );
                    return Ok(Slapd {
                        url,
                        port,
                        admin_dn: format!("cn=admin,{base_dn}"),
                        admin_password: "admin-secret".into(),
                        sync_dn: format!("cn=sync,{base_dn}"),
                        sync_password: "sync-secret".into(),
                        limited_dn: format!("cn=limited,{base_dn}"),
                        limited_password: "limited-secret".into(),
                        base_dn,
                        server,
                        dir,
                    });
                }
                Err(e) => last_error = e,
            }
        }
        Err(last_error)
    }

    fn ldap_tool(&self, tool: &str, extra: &[&str], input: Option<&str>) -> String {
        let mut argv = vec![
            tool,
            "-x",
            "-H",
            &self.url,
            "-D",
            &self.admin_dn,
            "-w",
            &self.admin_password,
        ];
        argv.extend_from_slice(extra);
        run(&argv, input).unwrap_or_else(|e| panic!("{}", self.server.failure(&e)))
    }

    /// Adds entries (LDIF) as the admin. Panics with ldapadd's stderr on failure.
    pub fn add_ldif(&self, ldif: &str) {
        self.ldap_tool("ldapadd", &[], Some(ldif));
    }

    /// Applies an LDIF of changes (`changetype: modify` …) as the admin.
    pub fn modify_ldif(&self, ldif: &str) {
        self.ldap_tool("ldapmodify", &[], Some(ldif));
    }

    /// Deletes an entry and everything under it.
    pub fn delete(&self, dn: &str) {
        self.ldap_tool("ldapdelete", &["-r", dn], None);
    }

    /// Runs `ldapsearch` bound as `bind_dn` with extra arguments (base, filter, attributes,
    /// `-E pr=…`); returns (exit code, stdout + stderr). Exit code 4 = size limit exceeded.
    pub fn search_as(&self, bind_dn: &str, password: &str, args: &[&str]) -> (i32, String) {
        let out = std::process::Command::new("ldapsearch")
            .args(["-x", "-LLL", "-o", "ldif-wrap=no", "-H", &self.url])
            .args(["-D", bind_dn, "-w", password])
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run ldapsearch: {e}"));
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        (out.status.code().unwrap_or(-1), text)
    }

    /// Creates `ou=<name>-<n>-<pid>,dc=example,dc=org` (unique per call, see `unique`) and
    /// returns its DN.
    /// How the library reaches this slapd as the sync account: plain LDAP, `bases`, pages of 2
    /// (paging always exercised), each operation within `timeout`, incremental reads on.
    pub fn directory_config(
        &self,
        bases: &[&str],
        timeout: Duration,
    ) -> matrix_ldap_sync::config::DirectoryConfig {
        super::init_tracing();
        matrix_ldap_sync::config::DirectoryConfig {
            urls: vec![url::Url::parse(&self.url).unwrap()],
            starttls: false,
            ca_file: None,
            bind_dn: self.sync_dn.clone(),
            bind_password: matrix_ldap_sync::secret::Secret::new(self.sync_password.clone()),
            base_dns: bases.iter().map(|b| b.to_string()).collect(),
            page_size: 2,
            timeout,
            incremental: true,
            full_sync_every: Duration::from_secs(3600),
        }
    }

    pub fn new_ou(&self, name: &str) -> String {
        let ou = unique(name);
        let dn = format!("ou={ou},{}", self.base_dn);
        self.add_ldif(&format!(
            "dn: {dn}\nobjectClass: organizationalUnit\nou: {ou}\n"
        ));
        dn
    }

    /// Stops slapd (SIGTERM); the data stays. `start_again` brings it back on the same port.
    pub fn stop(&self) {
        self.server.stop();
    }

    /// Starts a stopped slapd again, same port and data.
    pub fn start_again(&self) {
        let port = self.port;
        self.server
            .restart(START_TIMEOUT, move || {
                TcpStream::connect(("127.0.0.1", port)).is_ok()
            })
            .unwrap_or_else(|e| panic!("{e}"));
    }

    /// Loads a large LDIF file offline with slapadd (much faster than ldapadd; overlays such
    /// as memberOf are not run): stops slapd, loads, starts it again. `-w` brings the
    /// database's contextCSN up to the loaded entries, as syncprov needs: without it, sync
    /// cookies taken afterwards would predate every loaded entry.
    pub fn bulk_load(&self, ldif: &std::path::Path) {
        self.stop();
        let config = self.dir.path().join("slapd.d");
        run(
            &[
                "/usr/sbin/slapadd",
                "-q",
                "-w",
                "-F",
                &config.to_string_lossy(),
                "-b",
                &self.base_dn,
                "-l",
                &ldif.to_string_lossy(),
            ],
            None,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        self.start_again();
    }

    /// Freezes slapd (SIGSTOP): connections are accepted and never answered.
    pub fn pause(&self) {
        self.server.pause();
    }

    /// Unfreezes a paused slapd (SIGCONT).
    pub fn resume(&self) {
        self.server.signal("CONT");
    }

    /// slapd's log (`-d stats`: one line per connection and operation).
    pub fn log_path(&self) -> PathBuf {
        self.server.log_path().to_path_buf()
    }
}

fn slapd_conf(dir: &str, sessionlog: bool) -> String {
    let sessionlog = if sessionlog {
        "syncprov-sessionlog 1000"
    } else {
        ""
    };
    format!(
        r#"include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/inetorgperson.schema
include /etc/ldap/schema/nis.schema
pidfile {dir}/slapd.pid
argsfile {dir}/slapd.args
modulepath /usr/lib/ldap
moduleload back_mdb
moduleload syncprov

database config
rootdn "cn=admin,cn=config"
rootpw admin-secret

database mdb
suffix "dc=example,dc=org"
rootdn "cn=admin,dc=example,dc=org"
rootpw admin-secret
directory {dir}/db
maxsize 4294967296
dbnosync
index objectClass eq
index entryUUID,entryCSN eq
index uid,mail,cn eq
limits dn.exact="cn=sync,dc=example,dc=org" size=unlimited time=unlimited
limits dn.exact="cn=limited,dc=example,dc=org" size=3
access to attrs=userPassword by anonymous auth by * none
access to * by users read by * none
overlay syncprov
syncprov-checkpoint 100 10
{sessionlog}
"#
    )
}

const BOOTSTRAP_LDIF: &str = "\
dn: dc=example,dc=org
objectClass: dcObject
objectClass: organization
dc: example
o: Example

dn: cn=sync,dc=example,dc=org
objectClass: organizationalRole
objectClass: simpleSecurityObject
cn: sync
description: matrix-ldap-sync service account (no limits)
userPassword: sync-secret

dn: cn=limited,dc=example,dc=org
objectClass: organizationalRole
objectClass: simpleSecurityObject
cn: limited
description: account with a hard size limit of 3
userPassword: limited-secret
";
