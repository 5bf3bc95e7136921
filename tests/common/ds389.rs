//! A real 389 Directory Server (Debian's `389-ds-base`) on a loopback port, without systemd and
//! without `dscreate`: the instance's `dse.ldif` is written from the package's own template
//! (what `dscreate` writes first too), with everything in a scratch folder, and `ns-slapd`
//! runs in the foreground (`-d 0`). Ready in about a second.
//!
//! `dc=example,dc=org` in back_ldbm, the entryUUID plugin on from the first start (the server
//! adds its entry itself, but loads it only at the next start), the Retro Changelog (with
//! `nsuniqueid:targetUniqueId`) and Content Synchronization plugins on; an admin (`cn=Directory
//! Manager`), a sync account with unlimited limits (`nsSizeLimit: -1`, …) and a `limited` one
//! with the server's defaults (`nsslapd-sizelimit` 2000, applied per page); both may read
//! `entryUUID`, `nsUniqueId` and `nsAccountLock` (operational attributes, which `*` leaves
//! out). The access log is written unbuffered, so tests can count what searches returned.

use super::process::{run, scratch_dir, Server};
use super::{free_port, require_installed, unique};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

const NS_SLAPD: &str = "/usr/sbin/ns-slapd";
const TEMPLATE: &str = "/usr/share/dirsrv/data/template-dse.ldif";
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// `admin-secret`, hashed (389-DS refuses a clear-text root password in dse.ldif).
const ROOT_PASSWORD_HASH: &str = "{SSHA512}QB0n8I/Fu2fc5yHBdqC9bFFtTBclkIAcstWpzTWT04LI/xJMy/8wH4AN7WYlsLFX9TgDDH2X5TZ8YKocHGh41KeMbrLwe/Et";

pub struct Ds389 {
    /// `ldap://127.0.0.1:<port>`
    pub url: String,
    pub port: u16,
    /// `dc=example,dc=org`
    pub base_dn: String,
    /// `cn=Directory Manager` (password `admin-secret`).
    pub admin_dn: String,
    pub admin_password: String,
    /// `cn=sync,dc=example,dc=org`: reads everything, no size or look-through limit.
    pub sync_dn: String,
    pub sync_password: String,
    /// `cn=limited,dc=example,dc=org`: reads everything, with the server's default limits.
    pub limited_dn: String,
    pub limited_password: String,
    server: Server,
    /// The instance's files (config, database, logs); removed on drop.
    pub dir: tempfile::TempDir,
}

impl Ds389 {
    /// The instance shared by all tests of this test binary (started on first use).
    pub fn shared() -> &'static Ds389 {
        static SHARED: OnceLock<Result<Ds389, String>> = OnceLock::new();
        match SHARED.get_or_init(|| Ds389::try_start(None)) {
            Ok(ds) => ds,
            Err(e) => panic!("shared 389-DS could not start: {e}"),
        }
    }

    /// An instance of its own whose database is first loaded (offline, `ldif2db`) with the
    /// bootstrap entries and `ldif` (entries under `dc=example,dc=org`; give each one an
    /// `entryUUID` line, as an import does not run the entryUUID plugin: [`entry_uuid`]).
    pub fn start_with_import(ldif: &str) -> Ds389 {
        Ds389::try_start(Some(ldif)).unwrap_or_else(|e| panic!("{e}"))
    }

    fn try_start(import: Option<&str>) -> Result<Ds389, String> {
        require_installed(NS_SLAPD.as_ref(), "ns-slapd (389-ds-base)");
        require_installed("/usr/bin/ldapadd".as_ref(), "ldapadd (ldap-utils)");
        let began = std::time::Instant::now();
        let dir = scratch_dir("ds389");
        let root = dir.path();
        for sub in [
            "etc/schema",
            "db",
            "log",
            "run",
            "lock",
            "bak",
            "ldif",
            "tmp",
        ] {
            std::fs::create_dir_all(root.join(sub)).map_err(|e| format!("mkdir {sub}: {e}"))?;
        }
        for (from, to) in [
            ("/etc/dirsrv/schema/99user.ldif", "etc/schema/99user.ldif"),
            (
                "/etc/dirsrv/config/slapd-collations.conf",
                "etc/slapd-collations.conf",
            ),
            ("/etc/dirsrv/config/certmap.conf", "etc/certmap.conf"),
        ] {
            std::fs::copy(from, root.join(to)).map_err(|e| format!("copy {from}: {e}"))?;
        }
        let user = run(&["id", "-un"], None)?.trim().to_string();
        let template =
            std::fs::read_to_string(TEMPLATE).map_err(|e| format!("read {TEMPLATE}: {e}"))?;
        let base_dn = "dc=example,dc=org".to_string();
        let config = root.join("etc").to_string_lossy().into_owned();

        // A free port can be taken between the probe and the server's bind: try a few.
        let mut last_error = String::new();
        for _ in 0..3 {
            let port = free_port();
            let url = format!("ldap://127.0.0.1:{port}");
            let dse = dse_ldif(&template, root, port, &user);
            std::fs::write(root.join("etc/dse.ldif"), dse)
                .map_err(|e| format!("write dse.ldif: {e}"))?;
            let argv = vec![
                NS_SLAPD.to_string(),
                "-D".into(),
                config.clone(),
                "-i".into(),
                root.join("run/ns-slapd.pid").to_string_lossy().into_owned(),
                "-d".into(),
                "0".into(),
            ];
            let ready = move || TcpStream::connect(("127.0.0.1", port)).is_ok();
            match Server::start(
                "ns-slapd",
                argv,
                root,
                &root.join("log/console"),
                START_TIMEOUT,
                ready,
            ) {
                Ok(server) => {
                    let ds = Ds389 {
                        url,
                        port,
                        admin_dn: "cn=Directory Manager".into(),
                        admin_password: "admin-secret".into(),
                        sync_dn: format!("cn=sync,{base_dn}"),
                        sync_password: "sync-secret".into(),
                        limited_dn: format!("cn=limited,{base_dn}"),
                        limited_password: "limited-secret".into(),
                        base_dn,
                        server,
                        dir,
                    };
                    match import {
                        None => ds.add_ldif(&bootstrap_ldif(false)),
                        Some(extra) => ds.import(&format!("{}\n{extra}", bootstrap_ldif(true)))?,
                    }
                    eprintln!(
                        "testbed: 389-DS on {} ready in {:.2?} ({})",
                        ds.url,
                        began.elapsed(),
                        ds.dir.path().display()
                    );
                    return Ok(ds);
                }
                Err(e) => {
                    last_error = format!(
                        "{e}\n--- errors log ---\n{}",
                        super::process::tail(&root.join("log/errors"), 30)
                    )
                }
            }
        }
        Err(last_error)
    }

    /// Replaces the database's content with `ldif`, offline (`ldif2db`, the fast way in):
    /// stops the server, imports, starts it again. (An import needs the database's files,
    /// which the server makes at its first start.)
    fn import(&self, ldif: &str) -> Result<(), String> {
        let root = self.dir.path();
        let file = root.join("ldif/import.ldif");
        std::fs::write(&file, ldif).map_err(|e| format!("write import.ldif: {e}"))?;
        self.server.stop();
        run(
            &[
                NS_SLAPD,
                "ldif2db",
                "-D",
                &root.join("etc").to_string_lossy(),
                "-n",
                "userRoot",
                "-i",
                &file.to_string_lossy(),
            ],
            None,
        )
        .map_err(|e| {
            format!(
                "{e}\n--- errors log ---\n{}",
                super::process::tail(&root.join("log/errors"), 30)
            )
        })?;
        let port = self.port;
        self.server.restart(START_TIMEOUT, move || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        })
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

    /// `ldapsearch` as the admin (LDIF, unwrapped): base, scope (`base`, `one`, `sub`),
    /// filter, attributes.
    pub fn search(&self, base: &str, scope: &str, filter: &str, attrs: &[&str]) -> String {
        let mut args = vec![
            "-LLL",
            "-o",
            "ldif-wrap=no",
            "-s",
            scope,
            "-b",
            base,
            filter,
        ];
        args.extend_from_slice(attrs);
        self.ldap_tool("ldapsearch", &args, None)
    }

    /// Creates `ou=<name>-<n>-<pid>,dc=example,dc=org` (unique per call) and returns its DN.
    pub fn new_ou(&self, name: &str) -> String {
        let ou = unique(name);
        let dn = format!("ou={ou},{}", self.base_dn);
        self.add_ldif(&format!(
            "dn: {dn}\nobjectClass: top\nobjectClass: organizationalUnit\nou: {ou}\n"
        ));
        dn
    }

    /// How the library reaches this server as the sync account: plain LDAP, `bases`, pages of
    /// 2 (paging always exercised), each operation within `timeout`, incremental reads on.
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

    /// The access log (one `SRCH` line and one `RESULT … nentries=N` line per search).
    pub fn access_log(&self) -> PathBuf {
        self.dir.path().join("log/access")
    }

    /// The access log's length now: what was logged after it is [`Ds389::searches_since`].
    pub fn access_mark(&self) -> u64 {
        std::fs::metadata(self.access_log()).map_or(0, |m| m.len())
    }

    /// The searches logged since `mark`, bound as `bind_dn`: (base, filter, entries returned).
    pub fn searches_since(&self, mark: u64, bind_dn: &str) -> Vec<(String, String, usize)> {
        let text = std::fs::read(self.access_log()).unwrap_or_default();
        let text = String::from_utf8_lossy(&text[usize::try_from(mark).unwrap().min(text.len())..])
            .into_owned();
        access_searches(&text, bind_dn)
    }
}

/// The searches of an access log text made by connections bound as `bind_dn`: (base, filter,
/// entries returned).
pub fn access_searches(log: &str, bind_dn: &str) -> Vec<(String, String, usize)> {
    use std::collections::{HashMap, HashSet};
    let field = |line: &str, key: &str| -> Option<String> {
        let start = line.find(key)? + key.len();
        let rest = &line[start..];
        Some(match rest.strip_prefix('"') {
            Some(quoted) => quoted[..quoted.find('"').unwrap_or(quoted.len())].to_string(),
            None => rest.split_whitespace().next().unwrap_or("").to_string(),
        })
    };
    let mut bound: HashSet<String> = HashSet::new();
    let mut pending: HashMap<(String, String), (String, String)> = HashMap::new();
    let mut searches = Vec::new();
    for line in log.lines() {
        let (Some(conn), Some(op)) = (field(line, "conn="), field(line, " op=")) else {
            continue;
        };
        if line.contains(" BIND ") {
            if field(line, "dn=").is_some_and(|dn| dn.eq_ignore_ascii_case(bind_dn)) {
                bound.insert(conn.clone());
            }
        } else if line.contains(" SRCH ") && bound.contains(&conn) {
            let base = field(line, "base=").unwrap_or_default();
            let filter = field(line, "filter=").unwrap_or_default();
            pending.insert((conn, op), (base, filter));
        } else if line.contains(" RESULT ") {
            if let Some((base, filter)) = pending.remove(&(conn, op)) {
                let n = field(line, "nentries=").and_then(|n| n.parse().ok());
                searches.push((base, filter, n.unwrap_or(0)));
            }
        }
    }
    searches
}

/// An `entryUUID` for the `n`th entry of an import (`ldif2db` runs no plugin, so it makes
/// none): unique per process and call.
pub fn entry_uuid(n: usize) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static CALL: AtomicU32 = AtomicU32::new(0);
    let call = CALL.fetch_add(1, Ordering::Relaxed);
    format!(
        "{:08x}-{:04x}-4000-8000-{:012x}",
        std::process::id(),
        call & 0xffff,
        n
    )
}

/// The instance's dse.ldif: the package's template with the instance's paths and port, and
/// the plugins, backend and settings the tests need.
fn dse_ldif(template: &str, root: &Path, port: u16, user: &str) -> String {
    let path = |sub: &str| root.join(sub).to_string_lossy().into_owned();
    let values = [
        ("schema_dir", path("etc/schema")),
        ("lock_dir", path("lock")),
        ("tmp_dir", path("tmp")),
        ("cert_dir", path("etc")),
        ("ldif_dir", path("ldif")),
        ("bak_dir", path("bak")),
        ("run_dir", path("run")),
        ("inst_dir", path("inst")),
        ("log_dir", path("log")),
        ("fqdn", "localhost".into()),
        ("ds_port", port.to_string()),
        ("ds_user", user.into()),
        ("rootdn", "cn=Directory Manager".into()),
        ("instance_name", "test".into()),
        ("ds_passwd", ROOT_PASSWORD_HASH.into()),
        ("ds_suffix", "dc=example,dc=org".into()),
        ("config_dir", path("etc")),
        ("db_dir", path("db")),
        ("db_home_dir", path("db")),
        ("db_lib", "bdb".into()),
        ("ldapi_enabled", "off".into()),
        ("ldapi", path("run/ldapi")),
        ("ldapi_autobind", "off".into()),
    ];
    let mut dse = template.to_string();
    for (key, value) in values {
        dse = dse.replace(&format!("%{key}%"), &value);
    }
    // Unbuffered access log: tests read it right after a run.
    add_to_entry(
        &mut dse,
        "cn=config",
        "nsslapd-accesslog-logbuffering: off\n",
    );
    // Small caches (the defaults take a share of the machine's memory) and no fsync per write.
    add_to_entry(
        &mut dse,
        "cn=config,cn=ldbm database,cn=plugins,cn=config",
        "nsslapd-cache-autosize: 0\nnsslapd-dbcachesize: 16777216\n\
         nsslapd-import-cache-autosize: 0\nnsslapd-import-cachesize: 16777216\n\
         nsslapd-db-durable-transaction: off\n",
    );
    for plugin in ["Retro Changelog Plugin", "Content Synchronization"] {
        let dn = format!("cn={plugin},cn=plugins,cn=config");
        replace_in_entry(
            &mut dse,
            &dn,
            "nsslapd-pluginenabled: off",
            "nsslapd-pluginenabled: on",
        );
    }
    add_to_entry(
        &mut dse,
        "cn=Retro Changelog Plugin,cn=plugins,cn=config",
        "nsslapd-attribute: nsuniqueid:targetUniqueId\nnsslapd-changelogmaxage: 2d\n",
    );
    let mut dse = dse.trim_end().to_string();
    dse.push_str("\n\n");
    dse.push_str(EXTRA_DSE);
    dse
}

/// Appends attribute lines to the entry `dn` of a dse.ldif text.
fn add_to_entry(dse: &mut String, dn: &str, lines: &str) {
    let end = entry_end(dse, dn);
    dse.insert_str(end, &format!("\n{}", lines.trim_end()));
}

/// Replaces `old` by `new` within the entry `dn` of a dse.ldif text.
fn replace_in_entry(dse: &mut String, dn: &str, old: &str, new: &str) {
    let start = entry_start(dse, dn);
    let end = entry_end(dse, dn);
    let block = dse[start..end].replacen(old, new, 1);
    assert_ne!(block, dse[start..end], "`{old}` not in the entry {dn}");
    dse.replace_range(start..end, &block);
}

fn entry_start(dse: &str, dn: &str) -> usize {
    let head = format!("dn: {dn}\n");
    if dse.starts_with(&head) {
        return 0;
    }
    dse.find(&format!("\n{head}"))
        .map(|at| at + 1)
        .unwrap_or_else(|| panic!("no entry {dn} in the dse.ldif template"))
}

/// Where the entry `dn` ends (before the blank line that follows it).
fn entry_end(dse: &str, dn: &str) -> usize {
    let start = entry_start(dse, dn);
    dse[start..]
        .find("\n\n")
        .map_or(dse.trim_end().len(), |at| start + at)
}

/// Entries the server would otherwise add only at its first start, and load at the second
/// (the entryUUID plugin), and the database for `dc=example,dc=org`.
const EXTRA_DSE: &str = "\
dn: cn=entryuuid,cn=plugins,cn=config
objectClass: top
objectClass: nsSlapdPlugin
cn: entryuuid
nsslapd-pluginPath: libentryuuid-plugin
nsslapd-pluginInitfunc: entryuuid_plugin_init
nsslapd-pluginType: betxnpreoperation
nsslapd-pluginEnabled: on
nsslapd-pluginId: entryuuid
nsslapd-pluginVersion: none
nsslapd-pluginVendor: 389 Project
nsslapd-pluginDescription: entryuuid

dn: cn=entryuuid_syntax,cn=plugins,cn=config
objectClass: top
objectClass: nsSlapdPlugin
cn: entryuuid_syntax
nsslapd-pluginPath: libentryuuid-syntax-plugin
nsslapd-pluginInitfunc: entryuuid_syntax_plugin_init
nsslapd-pluginType: syntax
nsslapd-pluginEnabled: on
nsslapd-pluginId: entryuuid_syntax
nsslapd-pluginVersion: none
nsslapd-pluginVendor: 389 Project
nsslapd-pluginDescription: entryuuid_syntax

dn: cn=userRoot,cn=ldbm database,cn=plugins,cn=config
objectClass: top
objectClass: extensibleObject
objectClass: nsBackendInstance
cn: userRoot
nsslapd-suffix: dc=example,dc=org
nsslapd-cachememsize: 16777216
nsslapd-dncachememsize: 8388608

dn: cn=\"dc=example,dc=org\",cn=mapping tree,cn=config
objectClass: top
objectClass: extensibleObject
objectClass: nsMappingTree
cn: \"dc=example,dc=org\"
cn: dc=example,dc=org
nsslapd-state: backend
nsslapd-backend: userRoot

";

/// The suffix, its ACI and the two service accounts, as docs/389ds.md sets them up.
/// `with_uuids`: for an import (no plugin runs then).
fn bootstrap_ldif(with_uuids: bool) -> String {
    let entries = [
        "dn: dc=example,dc=org
objectClass: top
objectClass: domain
dc: example
aci: (targetattr=\"* || entryUUID || nsUniqueId || nsAccountLock\")(version 3.0; acl \"matrix-ldap-sync reads agents\"; allow (read, search, compare) userdn=\"ldap:///cn=sync,dc=example,dc=org || ldap:///cn=limited,dc=example,dc=org\";)",
        "dn: cn=sync,dc=example,dc=org
objectClass: top
objectClass: applicationProcess
objectClass: simpleSecurityObject
cn: sync
description: matrix-ldap-sync service account (no limits)
userPassword: sync-secret
nsSizeLimit: -1
nsLookThroughLimit: -1
nsPagedSizeLimit: -1
nsPagedLookThroughLimit: -1
nsTimeLimit: -1",
        "dn: cn=limited,dc=example,dc=org
objectClass: top
objectClass: applicationProcess
objectClass: simpleSecurityObject
cn: limited
description: account with the server's default limits
userPassword: limited-secret",
    ];
    entries
        .iter()
        .enumerate()
        .map(|(n, e)| match with_uuids {
            true => format!("{e}\nentryUUID: {}\n\n", entry_uuid(1_000_000 + n)),
            false => format!("{e}\n\n"),
        })
        .collect()
}
