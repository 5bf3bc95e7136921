//! One test's corner of the shared Samba AD DC and Synapse, with the Active Directory preset:
//! its own OU and its own tag, carried by every `sAMAccountName` it creates (`<name>-<tag>`),
//! so its localparts (`{sAMAccountName|localpart}`) are its own. Derefs to its [`Daemon`].

use std::sync::{RwLockReadGuard, RwLockWriteGuard};

use super::samba::{unicode_pwd, SambaDc, DC_SANS};
use super::site::{Daemon, DirectoryDefaults, Settings};

/// The password every agent gets (strong enough for the default password policy).
pub const AGENT_PASSWORD: &str = "Agent-Passw0rd!";

pub struct AdSite {
    pub dc: &'static SambaDc,
    /// `OU=<name>-<n>-<pid>,DC=samdom,DC=test`
    pub ou: String,
    daemon: Daemon,
    _guard: Guard,
}

/// How a site holds the shared DC: running for everyone, or all to itself.
enum Guard {
    Shared(RwLockReadGuard<'static, ()>),
    Exclusive(RwLockWriteGuard<'static, ()>),
}

impl std::ops::Deref for AdSite {
    type Target = Daemon;
    fn deref(&self) -> &Daemon {
        &self.daemon
    }
}

/// An AD agent as the tests create it.
#[derive(Clone, Copy, Default)]
pub struct Agent<'a> {
    /// The sAMAccountName before the tag (keep it short: AD allows 20 characters in all).
    pub name: &'a str,
    pub given: &'a str,
    pub sn: &'a str,
    pub department: Option<&'a str>,
    pub mail: Option<&'a str>,
}

impl AdSite {
    /// A new OU on the shared DC; the site holds the DC running for its lifetime.
    pub fn new(name: &str) -> AdSite {
        let dc = SambaDc::shared();
        AdSite::with_guard(dc, name, Guard::Shared(dc.shared_use()))
    }

    /// A site that has the DC to itself (no other AD test runs meanwhile): it may stop it.
    pub fn exclusive(name: &str) -> AdSite {
        let dc = SambaDc::shared();
        AdSite::with_guard(dc, name, Guard::Exclusive(dc.exclusive()))
    }

    fn with_guard(dc: &'static SambaDc, name: &str, guard: Guard) -> AdSite {
        let site = AdSite {
            dc,
            ou: dc.new_ou(name),
            daemon: Daemon::fresh(),
            _guard: guard,
        };
        site.configure(&Settings::default());
        site
    }

    /// What the config gets unless `Settings` says otherwise: LDAPS to `localhost` with the
    /// test CA, bound as the service account's UPN, the site's OU, the AD preset.
    pub fn defaults(&self) -> DirectoryDefaults {
        DirectoryDefaults {
            url: self.dc.ldaps_url.clone(),
            bind: (self.dc.sync_upn.clone(), self.dc.sync_password.clone()),
            base: self.ou.clone(),
            ca_file: Some(self.dc.ca_file.clone()),
            preset: "active-directory.toml",
            preset_filter: "(&(objectClass=user)(objectCategory=person))",
        }
    }

    /// (Re)writes config.toml, the mapping and the secret files.
    pub fn configure(&self, settings: &Settings) {
        self.daemon.configure(&self.defaults(), settings);
    }

    /// The sAMAccountName of `name` in this site: `<name>-<tag>`; its mxid is `self.mxid(name)`.
    pub fn sam(&self, name: &str) -> String {
        format!("{name}-{}", self.tag)
    }

    /// Adds an enabled user (`userAccountControl` 512, with a password) in the site's OU, as
    /// `CN=<given> <sn>`; `extra`: more LDIF attribute lines.
    pub fn add_agent_with(&self, agent: Agent<'_>, extra: &str) {
        let sam = self.sam(agent.name);
        let mut ldif = format!(
            "dn: CN={given} {sn},{ou}\nobjectClass: user\nsAMAccountName: {sam}\n\
             userPrincipalName: {sam}@{domain}\ngivenName: {given}\nsn: {sn}\n\
             displayName: {given} {sn}\nunicodePwd:: {pwd}\nuserAccountControl: 512\n",
            given = agent.given,
            sn = agent.sn,
            ou = self.ou,
            domain = self.dc.dns_domain,
            pwd = unicode_pwd(AGENT_PASSWORD),
        );
        if let Some(dept) = agent.department {
            ldif.push_str(&format!("department: {dept}\n"));
        }
        if let Some(mail) = agent.mail {
            ldif.push_str(&format!("mail: {}\n", self.mail(mail)));
        }
        ldif.push_str(extra);
        self.dc.add_ldif(&ldif);
    }

    /// This site's version of an address: `anne@example.org` → `anne@<tag>.example.org`. The
    /// shared homeserver gives an e-mail to one account only (the last written), so tests
    /// running side by side must not share addresses.
    pub fn mail(&self, address: &str) -> String {
        address.replace("@example.org", &format!("@{}.example.org", self.tag))
    }

    pub fn add_agent(&self, agent: Agent<'_>) {
        self.add_agent_with(agent, "");
    }

    /// The current DN of agent `name` (looked up by sAMAccountName).
    pub fn dn(&self, name: &str) -> String {
        first_value(&self.attrs(name, &["1.1"]), "dn", &self.sam(name))
    }

    /// Agent `name`'s entry (LDIF, as Administrator sees it) with the attributes asked for.
    pub fn attrs(&self, name: &str, attrs: &[&str]) -> String {
        let filter = format!("(sAMAccountName={})", self.sam(name));
        self.dc.search(&self.dc.base_dn, &filter, attrs)
    }

    /// Replaces (or with no values, deletes) an attribute of agent `name`.
    pub fn set_attr(&self, name: &str, attr: &str, values: &[&str]) {
        let mut ldif = format!(
            "dn: {}\nchangetype: modify\nreplace: {attr}\n",
            self.dn(name)
        );
        for v in values {
            ldif.push_str(&format!("{attr}: {v}\n"));
        }
        self.dc.modify_ldif(&ldif);
    }

    /// Adds an AD security group `CN=<cn>` in the site's OU (sAMAccountName `<cn>-<tag>`)
    /// listing `members` (DNs, which must exist); returns its DN.
    pub fn add_group(&self, cn: &str, members: &[String]) -> String {
        let dn = format!("CN={cn},{}", self.ou);
        let mut ldif = format!(
            "dn: {dn}\nobjectClass: group\nsAMAccountName: {}\n",
            self.sam(cn)
        );
        for m in members {
            ldif.push_str(&format!("member: {m}\n"));
        }
        self.dc.add_ldif(&ldif);
        dn
    }

    /// Adds (`add`) or deletes (`delete`) one `member` value of a group.
    pub fn change_member(&self, group: &str, op: &str, member: &str) {
        self.dc.modify_ldif(&format!(
            "dn: {group}\nchangetype: modify\n{op}: member\nmember: {member}\n"
        ));
    }

    /// The RID of an entry (the last part of its objectSid, as `ldbsearch` shows it).
    pub fn rid(&self, dn: &str) -> String {
        let out = self.dc.ldbsearch(dn, "(objectClass=*)", &["objectSid"]);
        let sid = first_value(&out, "objectSid", dn);
        sid.rsplit('-').next().unwrap_or_default().to_string()
    }

    /// Stops the DC until the returned guard is dropped (only on an `exclusive` site).
    pub fn stop_dc(&self) -> StoppedDc {
        self.assert_exclusive();
        self.dc.stop();
        StoppedDc { dc: self.dc }
    }

    /// Pauses the DC until the returned guard is dropped (only on an `exclusive` site).
    pub fn pause_dc(&self) -> PausedDc {
        self.assert_exclusive();
        self.dc.pause();
        PausedDc { dc: self.dc }
    }

    /// Gives the DC a certificate for `sans` until the returned guard is dropped (only on an
    /// `exclusive` site); then the usual one again.
    pub fn dc_certificate_for(&self, sans: &str) -> ReissuedCertificate {
        self.assert_exclusive();
        self.dc.reissue_certificate(sans);
        ReissuedCertificate { dc: self.dc }
    }

    fn assert_exclusive(&self) {
        assert!(
            matches!(self._guard, Guard::Exclusive(_)),
            "only an AdSite::exclusive site may stop the DC"
        );
    }

    /// Binds `times` as agent `name` with a wrong password (LDAPS), as a user mistyping it.
    pub fn bad_binds(&self, name: &str, times: usize) {
        for _ in 0..times {
            let (code, _) = self.dc.bind_as(
                &format!("{}@{}", self.sam(name), self.dc.dns_domain),
                "Wrong-Passw0rd!",
            );
            assert_eq!(
                code, 49,
                "a wrong password must fail with invalidCredentials"
            );
        }
    }

    /// The objectGUID of agent `name` as `ldbsearch` shows it (Samba's string form).
    pub fn guid(&self, name: &str) -> String {
        let filter = format!("(sAMAccountName={})", self.sam(name));
        let out = self.dc.ldbsearch(&self.ou, &filter, &["objectGUID"]);
        first_value(&out, "objectGUID", &self.sam(name))
    }
}

/// The value of the first `<attr>: ` line of an LDIF text, or a panic naming whose it is.
fn first_value(ldif: &str, attr: &str, whose: &str) -> String {
    let prefix = format!("{attr}: ");
    ldif.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {attr} for {whose}: {ldif}"))
        .trim()
        .to_string()
}

/// The DC is stopped while this lives; dropping it starts the DC again (also when a test fails).
pub struct StoppedDc {
    dc: &'static SambaDc,
}

impl Drop for StoppedDc {
    fn drop(&mut self) {
        self.dc.start_again();
    }
}

/// The DC has another certificate while this lives; dropping it reissues the usual one.
pub struct ReissuedCertificate {
    dc: &'static SambaDc,
}

impl Drop for ReissuedCertificate {
    fn drop(&mut self) {
        self.dc.reissue_certificate(DC_SANS);
    }
}

/// The DC is paused while this lives; dropping it resumes it.
pub struct PausedDc {
    dc: &'static SambaDc,
}

impl Drop for PausedDc {
    fn drop(&mut self) {
        self.dc.resume();
    }
}
