//! A real Samba AD domain controller (Debian's Samba 4.17): domain `SAMDOM.TEST`
//! (`DC=samdom,DC=test`), LDAP only (`server services = ldap`), LDAPS and StartTLS with a
//! certificate from a test CA (SANs `localhost` and `127.0.0.1`), simple binds refused on plain
//! `ldap://` as on a hardened AD.
//!
//! Provisioning takes seconds, so it is done once and cached under
//! `target/tmp/samba-provision/<key>` (the key names the harness version and Samba's); each
//! test binary copies it. The domain has a lockout policy (3 wrong passwords) and a plain
//! domain user `svc-matrix` as the sync service account. AD ports are fixed (389, 636, 3268):
//! one DC per machine, one per test binary, shared by its tests. Tests that stop the DC take [`SambaDc::exclusive`]; the others
//! hold [`SambaDc::shared_use`] (an `AdSite` does) so they never see it stopped.

use super::pki::{base64, TestPki};
use super::process::{run_env, scratch_dir, Server};
use super::{require_installed, unique};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::{OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

const SAMBA: &str = "/usr/sbin/samba";
/// Change when the provisioned content changes, so cached copies are not reused.
const PROVISION_VERSION: &str = "v4";
const START_TIMEOUT: Duration = Duration::from_secs(60);
const REALM: &str = "SAMDOM.TEST";
const DOMAIN: &str = "SAMDOM";
const ADMIN_PASSWORD: &str = "Admin-Passw0rd!";
const SYNC_USER: &str = "svc-matrix";
const SYNC_PASSWORD: &str = "Sync-Passw0rd!";
/// The names the DC's certificate carries.
pub const DC_SANS: &str = "DNS:localhost,IP:127.0.0.1";
/// The ports a DC always takes.
pub const AD_PORTS: [u16; 3] = [389, 636, 3268];

pub struct SambaDc {
    /// `DC=samdom,DC=test`
    pub base_dn: String,
    /// `samdom.test`
    pub dns_domain: String,
    /// `ldaps://localhost` (a name in the certificate's SANs)
    pub ldaps_url: String,
    /// `ldap://localhost` (simple binds need StartTLS here)
    pub ldap_url: String,
    /// `Administrator@samdom.test`
    pub admin_upn: String,
    pub admin_password: String,
    /// The sync service account, a plain domain user: `svc-matrix@samdom.test` …
    pub sync_upn: String,
    /// … and its DN, `CN=svc-matrix,CN=Users,DC=samdom,DC=test`.
    pub sync_dn: String,
    pub sync_password: String,
    /// The test CA (PEM) that signed the DC's certificate.
    pub ca_file: PathBuf,
    /// How long provisioning took, when this binary had to do it (not cached).
    pub provisioned_in: Option<Duration>,
    /// From `samba` started to LDAPS answering a search.
    pub started_in: Duration,
    server: Server,
    lock: RwLock<()>,
    /// The copy of the provisioned domain: `etc/smb.conf`, `private/sam.ldb`, `tls/`.
    pub dir: tempfile::TempDir,
}

impl SambaDc {
    /// The DC of this test binary (provisioned or copied and started on first use).
    pub fn shared() -> &'static SambaDc {
        static SHARED: OnceLock<Result<SambaDc, String>> = OnceLock::new();
        match SHARED.get_or_init(SambaDc::try_start) {
            Ok(dc) => dc,
            Err(e) => panic!("the Samba AD DC could not start: {e}"),
        }
    }

    /// Held by tests that need the DC running: `exclusive` waits for all of them.
    pub fn shared_use(&'static self) -> RwLockReadGuard<'static, ()> {
        self.lock.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Held by a test that stops or pauses the DC: no other AD test runs meanwhile.
    pub fn exclusive(&'static self) -> RwLockWriteGuard<'static, ()> {
        self.lock.write().unwrap_or_else(|e| e.into_inner())
    }

    fn try_start() -> Result<SambaDc, String> {
        require_installed(SAMBA.as_ref(), "samba (Samba AD DC)");
        require_installed("/usr/bin/samba-tool".as_ref(), "samba-tool");
        require_installed("/usr/bin/ldbsearch".as_ref(), "ldbsearch (ldb-tools)");
        require_installed("/usr/bin/openssl".as_ref(), "openssl");
        ports_free()?;
        let (cache, provisioned_in) = provisioned()?;
        let dir = scratch_dir("samba");
        let root = dir.path().join("dc");
        run_env(
            &[
                "cp",
                "-a",
                &cache.to_string_lossy(),
                &root.to_string_lossy(),
            ],
            None,
            &[],
        )?;
        // A fresh certificate per run (test certificates are short-lived).
        let tls = root.join("tls");
        std::fs::create_dir_all(&tls).map_err(|e| format!("mkdir {}: {e}", tls.display()))?;
        TestPki::new(&tls, DC_SANS);
        let smb_conf = root.join("etc/smb.conf");
        write_smb_conf(&root, &smb_conf)?;
        let argv = vec![
            SAMBA.to_string(),
            "-s".into(),
            smb_conf.to_string_lossy().into_owned(),
            // Interactive: foreground, logs on stdout (it does not stop at EOF on stdin).
            "--interactive".into(),
            // One process: killed with the test binary (prefork leaves orphan workers).
            "--model=single".into(),
            "--no-process-group".into(),
        ];
        let base_dn = "DC=samdom,DC=test".to_string();
        let dns_domain = REALM.to_ascii_lowercase();
        let ca_file = root.join("tls/ca.pem");
        let began = Instant::now();
        let probe = {
            let ca_file = ca_file.clone();
            move || ldaps_answers(&ca_file, true)
        };
        let server = Server::start(
            "samba",
            argv,
            &root,
            &dir.path().join("samba.log"),
            START_TIMEOUT,
            probe,
        )?;
        let started_in = began.elapsed();
        eprintln!(
            "testbed: Samba AD DC on ldaps://localhost ready in {started_in:.2?} (provisioning: {}; {})",
            provisioned_in.map_or("cached".into(), |d| format!("{d:.2?}")),
            root.display()
        );
        Ok(SambaDc {
            admin_upn: format!("Administrator@{dns_domain}"),
            admin_password: ADMIN_PASSWORD.into(),
            sync_upn: format!("{SYNC_USER}@{dns_domain}"),
            sync_dn: format!("CN={SYNC_USER},CN=Users,{base_dn}"),
            sync_password: SYNC_PASSWORD.into(),
            ldaps_url: "ldaps://localhost".into(),
            ldap_url: "ldap://localhost".into(),
            base_dn,
            dns_domain,
            ca_file,
            provisioned_in,
            started_in,
            server,
            lock: RwLock::new(()),
            dir,
        })
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("dc")
    }

    fn sam_ldb(&self) -> String {
        self.root()
            .join("private/sam.ldb")
            .to_string_lossy()
            .into_owned()
    }

    /// Runs an OpenLDAP client tool over LDAPS as the domain Administrator.
    fn ldap_tool(&self, tool: &str, extra: &[&str], input: Option<&str>) -> String {
        let mut argv = vec![
            tool,
            "-x",
            "-H",
            "ldaps://127.0.0.1",
            "-D",
            &self.admin_upn,
            "-w",
            ADMIN_PASSWORD,
        ];
        argv.extend_from_slice(extra);
        let ca = self.ca_file.to_string_lossy();
        run_env(&argv, input, &[("LDAPTLS_CACERT", &ca)])
            .unwrap_or_else(|e| panic!("{}", self.server.failure(&e)))
    }

    /// Adds entries (LDIF) over LDAPS as Administrator (`unicodePwd` needs the encryption).
    pub fn add_ldif(&self, ldif: &str) {
        self.ldap_tool("ldapadd", &[], Some(ldif));
    }

    /// Applies an LDIF of changes (`changetype: modify` …) as Administrator.
    pub fn modify_ldif(&self, ldif: &str) {
        self.ldap_tool("ldapmodify", &[], Some(ldif));
    }

    /// Deletes an entry.
    pub fn delete(&self, dn: &str) {
        self.ldap_tool("ldapdelete", &[dn], None);
    }

    /// `ldapsearch` as Administrator (subtree under `base`): LDIF, unwrapped, no comments.
    pub fn search(&self, base: &str, filter: &str, attrs: &[&str]) -> String {
        let mut args = vec!["-LLL", "-o", "ldif-wrap=no", "-b", base, filter];
        args.extend_from_slice(attrs);
        self.ldap_tool("ldapsearch", &args, None)
    }

    /// A simple bind over LDAPS as `who` (UPN or DN): (ldapwhoami-style exit code: 0 ok,
    /// 49 invalid credentials, …; output).
    pub fn bind_as(&self, who: &str, password: &str) -> (i32, String) {
        let out = std::process::Command::new("ldapsearch")
            .args(["-x", "-H", "ldaps://127.0.0.1", "-D", who, "-w", password])
            .args(["-s", "base", "-b", "", "(objectClass=*)", "1.1"])
            .env("LDAPTLS_CACERT", &self.ca_file)
            .output()
            .unwrap_or_else(|e| panic!("cannot run ldapsearch: {e}"));
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        (out.status.code().unwrap_or(-1), text)
    }

    /// Restores a deleted object (tombstone reanimation, as AD admins do without a Recycle Bin):
    /// with the Show Deleted control, remove `isDeleted` and give it back `dn`.
    pub fn restore_deleted(&self, guid: &str, dn: &str) {
        let sam = self.sam_ldb();
        let deleted_objects = format!("CN=Deleted Objects,{}", self.base_dn);
        let out = run_env(
            &[
                "ldbsearch",
                "-H",
                &sam,
                "--show-deleted",
                "-b",
                &deleted_objects,
                "(isDeleted=TRUE)",
                "objectGUID",
            ],
            None,
            &[],
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let mut tombstone = None;
        let mut current = None;
        for line in out.lines() {
            if let Some(d) = line.strip_prefix("dn: ") {
                current = Some(d.to_string());
            } else if line.strip_prefix("objectGUID: ") == Some(guid) {
                tombstone = current.clone();
            }
        }
        let tombstone =
            tombstone.unwrap_or_else(|| panic!("no deleted object with objectGUID {guid}: {out}"));
        self.ldap_tool(
            "ldapmodify",
            &["-e", "!1.2.840.113556.1.4.417"],
            Some(&format!(
                "dn: {tombstone}\nchangetype: modify\ndelete: isDeleted\n-\n\
                 replace: distinguishedName\ndistinguishedName: {dn}\n-\n"
            )),
        );
    }

    /// Lets `account_dn` list and read the domain's Deleted Objects container, as incremental
    /// reads need (on Windows: `dsacls "CN=Deleted Objects,…" /G DOMAIN\\account:LCRP`).
    /// Without it AD returns no tombstones at all, and no error.
    pub fn grant_deleted_objects_read(&self, account_dn: &str) {
        static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let sam = self.sam_ldb();
        let sid_out = self.ldbsearch(account_dn, "(objectClass=*)", &["objectSid"]);
        let sid = sid_out
            .lines()
            .find_map(|l| l.strip_prefix("objectSid: "))
            .unwrap_or_else(|| panic!("no objectSid for {account_dn}: {sid_out}"))
            .trim()
            .to_string();
        let container = format!("CN=Deleted Objects,{}", self.base_dn);
        let out = run_env(
            &[
                "ldbsearch",
                "-H",
                &sam,
                "--show-deleted",
                "-s",
                "base",
                "-b",
                &container,
                "nTSecurityDescriptor",
            ],
            None,
            &[],
        )
        .unwrap_or_else(|e| panic!("{e}"));
        // LDIF folds long lines: a line starting with a space continues the one before.
        let unfolded = out.replace("\n ", "");
        let sd = unfolded
            .lines()
            .find_map(|l| l.strip_prefix("nTSecurityDescriptor: "))
            .unwrap_or_else(|| panic!("no nTSecurityDescriptor on {container}: {out}"))
            .trim()
            .to_string();
        if sd.contains(&sid) {
            return;
        }
        let ace = format!("(A;;RPLC;;;{sid})");
        let sd = match sd.find("S:") {
            Some(sacl) => format!("{}{ace}{}", &sd[..sacl], &sd[sacl..]),
            None => format!("{sd}{ace}"),
        };
        run_env(
            &["ldbmodify", "-H", &sam, "--controls=show_deleted:1"],
            Some(&format!(
                "dn: {container}\nchangetype: modify\nreplace: nTSecurityDescriptor\n\
                 nTSecurityDescriptor: {sd}\n"
            )),
            &[],
        )
        .unwrap_or_else(|e| panic!("{e}"));
    }

    /// `ldbsearch` straight on the DC's `sam.ldb`: Samba's own view, which shows `objectGUID`
    /// in its string form.
    pub fn ldbsearch(&self, base: &str, filter: &str, attrs: &[&str]) -> String {
        let sam = self.sam_ldb();
        let mut argv = vec!["ldbsearch", "-H", &sam, "-b", base, "-s", "sub", filter];
        argv.extend_from_slice(attrs);
        run_env(&argv, None, &[]).unwrap_or_else(|e| panic!("{e}"))
    }

    /// `ldbadd` straight into `sam.ldb` (through Samba's modules, while the DC runs): the fast
    /// way to create many entries.
    pub fn ldbadd(&self, ldif: &str) {
        let sam = self.sam_ldb();
        run_env(&["ldbadd", "-H", &sam], Some(ldif), &[]).unwrap_or_else(|e| panic!("{e}"));
    }

    /// `samba-tool <args>` on this DC's database (as its administrator would on the DC).
    pub fn samba_tool(&self, args: &[&str]) -> String {
        samba_tool_on(&self.root(), args).unwrap_or_else(|e| panic!("{}", self.server.failure(&e)))
    }

    /// Creates `OU=<name>-<n>-<pid>,DC=samdom,DC=test` and returns its DN.
    pub fn new_ou(&self, name: &str) -> String {
        let dn = format!("OU={},{}", unique(name), self.base_dn);
        self.add_ldif(&format!("dn: {dn}\nobjectClass: organizationalUnit\n"));
        dn
    }

    /// Stops the DC (hold `exclusive`). `start_again` brings it back with the same data.
    pub fn stop(&self) {
        self.server.stop();
    }

    pub fn start_again(&self) {
        let ca = self.ca_file.clone();
        self.server
            .restart(START_TIMEOUT, move || ldaps_answers(&ca, true))
            .unwrap_or_else(|e| panic!("{e}"));
    }

    /// Freezes the DC (SIGSTOP): it accepts connections and never answers (hold `exclusive`).
    pub fn pause(&self) {
        self.server.pause();
    }

    pub fn resume(&self) {
        self.server.signal("CONT");
    }

    /// Restarts the DC with a new test CA (same `ca_file` path) and a certificate for `sans`
    /// (hold `exclusive`). The harness's own tools trust it only if it names 127.0.0.1.
    pub fn reissue_certificate(&self, sans: &str) {
        self.server.stop();
        TestPki::new(&self.root().join("tls"), sans);
        let ca = self.ca_file.clone();
        let verify = sans.contains("IP:127.0.0.1");
        self.server
            .restart(START_TIMEOUT, move || ldaps_answers(&ca, verify))
            .unwrap_or_else(|e| panic!("{e}"));
    }

    /// The DC's log (stdout and stderr of `samba`).
    pub fn log_path(&self) -> PathBuf {
        self.server.log_path().to_path_buf()
    }
}

/// The AD `unicodePwd` value of a password: the quoted password in UTF-16LE, base64 (for `::`).
pub fn unicode_pwd(password: &str) -> String {
    let quoted = format!("\"{password}\"");
    let bytes: Vec<u8> = quoted.encode_utf16().flat_map(u16::to_le_bytes).collect();
    base64(bytes)
}

/// Fails with a clear message when something still listens on an AD port after a few seconds
/// (the DC of the previous test process, under nextest, may take a moment to go).
fn ports_free() -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let busy = || {
        AD_PORTS
            .into_iter()
            .find(|&port| TcpStream::connect(("127.0.0.1", port)).is_ok())
    };
    while busy().is_some() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    match busy() {
        Some(port) => Err(format!(
            "port {port} on 127.0.0.1 is already in use (`ss -ltnp 'sport = :{port}'` \
             says by what). A Samba AD DC needs 389, 636 and 3268 and only one can run per \
             machine: stop the other DC (or test binary) first; under nextest run the AD \
             tests one at a time (`-j 1`)"
        )),
        None => Ok(()),
    }
}

/// Whether an LDAPS search of the rootDSE works (the DC is ready to serve); `verify`: check
/// the certificate's name too.
fn ldaps_answers(ca_file: &Path, verify: bool) -> bool {
    if TcpStream::connect(("127.0.0.1", 636)).is_err() {
        return false;
    }
    let ca = ca_file.to_string_lossy();
    run_env(
        &[
            "ldapsearch",
            "-x",
            "-H",
            "ldaps://127.0.0.1",
            "-D",
            &format!("Administrator@{}", REALM.to_ascii_lowercase()),
            "-w",
            ADMIN_PASSWORD,
            "-s",
            "base",
            "-b",
            "",
            "(objectClass=*)",
            "highestCommittedUSN",
        ],
        None,
        &[
            ("LDAPTLS_CACERT", &ca),
            ("LDAPTLS_REQCERT", if verify { "demand" } else { "allow" }),
        ],
    )
    .is_ok()
}

/// The cached provisioned domain (`…/<key>/dc`), made now if missing; and how long that took.
fn provisioned() -> Result<(PathBuf, Option<Duration>), String> {
    let version = run_env(&[SAMBA, "-V"], None, &[])?;
    let key = format!(
        "{PROVISION_VERSION}-{}",
        version
            .trim()
            .trim_start_matches("Version ")
            .replace(|c: char| !c.is_ascii_alphanumeric() && c != '.', "_")
    );
    let tmp = option_env!("CARGO_TARGET_TMPDIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| super::repo_root().join("target/tmp"));
    let cache = tmp.join("samba-provision").join(&key);
    let dc = cache.join("dc");
    if dc.join("ready").exists() {
        return Ok((dc, None));
    }
    let began = Instant::now();
    let work = cache.with_extension(format!("tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    let target = work.join("dc");
    std::fs::create_dir_all(&target).map_err(|e| format!("mkdir {}: {e}", target.display()))?;
    let empty = work.join("empty.conf");
    std::fs::write(&empty, "").map_err(|e| format!("write {}: {e}", empty.display()))?;
    let targetdir = target.to_string_lossy().into_owned();
    run_env(
        &[
            "/usr/bin/python3",
            "/usr/bin/samba-tool",
            "domain",
            "provision",
            "-s",
            &empty.to_string_lossy(),
            "--targetdir",
            &targetdir,
            "--realm",
            REALM,
            "--domain",
            DOMAIN,
            "--host-name",
            "dc1",
            "--adminpass",
            ADMIN_PASSWORD,
            "--server-role=dc",
            "--dns-backend=NONE",
            "--use-rfc2307",
            "--option=interfaces=lo",
            "--option=bind interfaces only=yes",
        ],
        None,
        &[],
    )?;
    samba_tool_on(
        &target,
        &[
            "user",
            "create",
            SYNC_USER,
            SYNC_PASSWORD,
            "--description=matrix-ldap-sync service account",
        ],
    )?;
    // A lockout policy, so a test can lock an account out with wrong passwords.
    samba_tool_on(
        &target,
        &[
            "domain",
            "passwordsettings",
            "set",
            "--account-lockout-threshold=3",
        ],
    )?;
    // The provisioned smb.conf names the work directory: remember it for `write_smb_conf`.
    std::fs::write(target.join("provisioned-at"), &targetdir)
        .map_err(|e| format!("write provisioned-at: {e}"))?;
    std::fs::write(target.join("ready"), "").map_err(|e| format!("write ready: {e}"))?;
    // Another test binary may have finished first: then keep its copy.
    if std::fs::rename(&work, &cache).is_err() {
        let _ = std::fs::remove_dir_all(&work);
        if !dc.join("ready").exists() {
            return Err(format!(
                "cannot move the provisioned domain to {}",
                cache.display()
            ));
        }
    }
    Ok((dc, Some(began.elapsed())))
}

/// `samba-tool <args>` on the domain database under `root` (`private/sam.ldb`, `etc/smb.conf`).
fn samba_tool_on(root: &Path, args: &[&str]) -> Result<String, String> {
    let sam = root.join("private/sam.ldb").to_string_lossy().into_owned();
    let conf = root.join("etc/smb.conf").to_string_lossy().into_owned();
    let mut argv = vec!["samba-tool"];
    argv.extend_from_slice(args);
    argv.extend_from_slice(&["-H", &sam, "-s", &conf]);
    run_env(&argv, None, &[])
}

/// The provisioned smb.conf moved to `root`, LDAP only, with the test CA's certificate.
fn write_smb_conf(root: &Path, smb_conf: &Path) -> Result<(), String> {
    let old_root = std::fs::read_to_string(root.join("provisioned-at"))
        .map_err(|e| format!("read provisioned-at: {e}"))?;
    let text = std::fs::read_to_string(smb_conf)
        .map_err(|e| format!("read {}: {e}", smb_conf.display()))?;
    let root_s = root.to_string_lossy();
    let tls = root.join("tls");
    let mut out = String::new();
    for line in text.replace(old_root.trim(), &root_s).lines() {
        if line.trim_start().starts_with("server services") {
            out.push_str("\tserver services = ldap\n");
            continue;
        }
        out.push_str(line);
        out.push('\n');
        if line.trim() == "[global]" {
            out.push_str(&format!(
                "\ttls enabled = yes\n\ttls keyfile = {k}\n\ttls certfile = {c}\n\ttls cafile = {ca}\n",
                k = tls.join("server.key").display(),
                c = tls.join("server.pem").display(),
                ca = tls.join("ca.pem").display(),
            ));
        }
    }
    std::fs::write(smb_conf, out).map_err(|e| format!("write {}: {e}", smb_conf.display()))
}
