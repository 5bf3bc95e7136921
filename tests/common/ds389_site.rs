//! One test's corner of a 389-DS (the shared one, or one of its own) and the shared Synapse,
//! with the 389-DS preset (`mappings/389ds.toml`): its own OU and its own tag, carried by every
//! agent's surname, so its localparts (`{givenName}.{sn}`) are its own. Derefs to its
//! [`Daemon`].

use super::ds389::Ds389;
use super::site::{Daemon, DirectoryDefaults, Settings};

pub struct Ds389Site {
    pub ds: &'static Ds389,
    /// `ou=<name>-<n>-<pid>,dc=example,dc=org`
    pub ou: String,
    daemon: Daemon,
}

impl std::ops::Deref for Ds389Site {
    type Target = Daemon;
    fn deref(&self) -> &Daemon {
        &self.daemon
    }
}

impl Ds389Site {
    /// A new OU on the shared 389-DS.
    pub fn new(name: &str) -> Ds389Site {
        let ds = Ds389::shared();
        Ds389Site::in_ou(ds, ds.new_ou(name))
    }

    /// A site reading `ou` (which exists) of `ds`.
    pub fn in_ou(ds: &'static Ds389, ou: String) -> Ds389Site {
        let site = Ds389Site {
            ds,
            ou,
            daemon: Daemon::fresh(),
        };
        site.configure(&Settings::default());
        site
    }

    /// What the config gets unless `Settings` says otherwise: plain LDAP, the unlimited sync
    /// account, the site's OU, the 389-DS preset.
    pub fn defaults(&self) -> DirectoryDefaults {
        DirectoryDefaults {
            url: self.ds.url.clone(),
            bind: (self.ds.sync_dn.clone(), self.ds.sync_password.clone()),
            base: self.ou.clone(),
            ca_file: None,
            preset: "389ds.toml",
            preset_filter: "(&(objectClass=inetOrgPerson)(uid=*))",
        }
    }

    /// (Re)writes config.toml, the mapping and the secret files.
    pub fn configure(&self, settings: &Settings) {
        self.daemon.configure(&self.defaults(), settings);
    }

    /// The DN of agent `uid` directly under the site's OU.
    pub fn dn(&self, uid: &str) -> String {
        format!("uid={uid},{}", self.ou)
    }

    /// Adds an inetOrgPerson agent under the site's OU; its surname carries the test's tag.
    /// `extra`: more LDIF attribute lines.
    pub fn add_agent_with(
        &self,
        uid: &str,
        given: &str,
        sn: &str,
        mail: Option<&str>,
        extra: &str,
    ) {
        let mut ldif = format!(
            "dn: {dn}\nobjectClass: top\nobjectClass: inetOrgPerson\nuid: {uid}\n\
             cn: {given} {sn}\ngivenName: {given}\nsn: {sn} {tag}\n",
            dn = self.dn(uid),
            tag = self.tag
        );
        if let Some(mail) = mail {
            ldif.push_str(&format!("mail: {}\n", self.mail(mail)));
        }
        ldif.push_str(extra);
        self.ds.add_ldif(&ldif);
    }

    pub fn add_agent(&self, uid: &str, given: &str, sn: &str) {
        self.add_agent_with(uid, given, sn, None, "");
    }

    /// This site's version of an address: `anne@example.org` → `anne@<tag>.example.org` (the
    /// shared homeserver gives an e-mail to one account only).
    pub fn mail(&self, address: &str) -> String {
        address.replace("@example.org", &format!("@{}.example.org", self.tag))
    }

    /// Replaces (or with no values, deletes) an attribute of the entry at `dn`.
    pub fn set_attr_of(&self, dn: &str, attr: &str, values: &[&str]) {
        let mut ldif = format!("dn: {dn}\nchangetype: modify\nreplace: {attr}\n");
        for v in values {
            ldif.push_str(&format!("{attr}: {v}\n"));
        }
        self.ds.modify_ldif(&ldif);
    }

    /// Replaces (or with no values, deletes) an attribute of agent `uid`.
    pub fn set_attr(&self, uid: &str, attr: &str, values: &[&str]) {
        self.set_attr_of(&self.dn(uid), attr, values);
    }

    /// Renames and moves the entry at `dn` to `new_rdn` under `new_parent`.
    pub fn move_entry(&self, dn: &str, new_rdn: &str, new_parent: &str) {
        self.ds.modify_ldif(&format!(
            "dn: {dn}\nchangetype: modrdn\nnewrdn: {new_rdn}\ndeleteoldrdn: 1\nnewsuperior: {new_parent}\n"
        ));
    }

    /// Adds `ou=<name>` under the site's OU and returns its DN.
    pub fn add_sub_ou(&self, name: &str) -> String {
        let dn = format!("ou={name},{}", self.ou);
        self.ds.add_ldif(&format!(
            "dn: {dn}\nobjectClass: top\nobjectClass: organizationalUnit\nou: {name}\n"
        ));
        dn
    }

    /// The `entryUUID` of the entry at `dn`, as the admin reads it.
    pub fn entry_uuid(&self, dn: &str) -> String {
        let out = self
            .ds
            .search(dn, "base", "(objectClass=*)", &["entryUUID"]);
        out.lines()
            .find_map(|l| l.strip_prefix("entryUUID: "))
            .unwrap_or_else(|| panic!("no entryUUID for {dn}: {out}"))
            .trim()
            .to_string()
    }
}
