//! A test site for room rules: the shared [`common::site::Site`] (its own OU, tag, config and
//! ledger, the real binary) with the test's extra mapping rules and helpers for groups and
//! room aliases.

use crate::common::site::{self, Settings};
use crate::common::Slapd;

pub struct Site {
    inner: site::Site,
}

impl std::ops::Deref for Site {
    type Target = site::Site;
    fn deref(&self) -> &site::Site {
        &self.inner
    }
}

/// Small test sites: one room removal is a large share of them, so the brake's percentages
/// are opened up (the brake has tests of its own).
const OPEN_BRAKE: &str = "\n[brake]\nmax_departures_percent = 100.0\nmax_room_removals_percent = 100.0\nmax_shrink_percent = 100.0\n";

impl Site {
    /// A site whose mapping is the OpenLDAP preset followed by `extra_rules`, where `{tag}`
    /// and `{ou}` stand for the site's tag and OU DN.
    pub fn with_rules(name: &str, extra_rules: &str) -> Site {
        Site::with_rules_on(Slapd::shared(), name, extra_rules)
    }

    /// [`Site::with_rules`] on a slapd of the test's own.
    pub fn with_rules_on(slapd: &'static Slapd, name: &str, extra_rules: &str) -> Site {
        let site = Site {
            inner: site::Site::on(slapd, name),
        };
        site.set_rules(extra_rules);
        site
    }

    /// Replaces the extra rules (same placeholders as [`Site::with_rules`]).
    pub fn set_rules(&self, extra_rules: &str) {
        let rules = extra_rules
            .replace("{tag}", &self.tag)
            .replace("{ou}", &self.ou);
        self.inner.configure(&Settings {
            mapping_extra: format!("\n{rules}"),
            config_extra: OPEN_BRAKE.to_string(),
            page_size: Some(50),
            ..Settings::default()
        });
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

    /// The mxid of an agent added with [`Site::add_agent`] (localpart `<uid>.<tag>`).
    pub fn mxid(&self, uid: &str) -> String {
        format!("@{uid}.{}:{}", self.tag, self.synapse.server_name)
    }

    pub fn alias(&self, name: &str) -> String {
        format!("#{name}-{}:{}", self.tag, self.synapse.server_name)
    }
}
