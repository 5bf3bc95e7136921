//! Which directory server answered, from its root DSE: what to advise when it refuses
//! something (limits, content sync), and how its content sync names entries.

use ldap3::SearchEntry;

/// The kind of directory server, as its root DSE tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ServerKind {
    OpenLdap,
    /// 389 Directory Server (also Red Hat Directory Server and FreeIPA's directory).
    Ds389,
    /// Active Directory or Samba AD.
    ActiveDirectory,
    /// Anything else, or a root DSE the bind account may not read.
    #[default]
    Other,
}

/// LDAP_CAP_ACTIVE_DIRECTORY_OID, in `supportedCapabilities` of every AD (and Samba AD) DC.
const AD_CAPABILITY: &str = "1.2.840.113556.1.4.800";

/// The root DSE attributes [`ServerKind::of_root_dse`] looks at.
pub(super) const ROOT_DSE_ATTRIBUTES: [&str; 5] = [
    "objectClass",
    "vendorName",
    "vendorVersion",
    "supportedCapabilities",
    "lastChangeNumber",
];

impl ServerKind {
    /// Reads the kind from a root DSE entry (attribute names in any case).
    pub(super) fn of_root_dse(root: &SearchEntry) -> ServerKind {
        let values = |name: &str| -> Vec<&str> {
            root.attrs
                .iter()
                .filter(|(k, _)| k.eq_ignore_ascii_case(name))
                .flat_map(|(_, v)| v.iter().map(String::as_str))
                .collect()
        };
        if values("supportedCapabilities").contains(&AD_CAPABILITY) {
            return ServerKind::ActiveDirectory;
        }
        let vendor = values("vendorName")
            .into_iter()
            .chain(values("vendorVersion"))
            .any(|v| {
                let v = v.to_ascii_lowercase();
                v.contains("389") || v.contains("red hat-directory")
            });
        // The retro changelog 389-DS content sync needs publishes its change numbers here.
        if vendor || !values("lastChangeNumber").is_empty() {
            return ServerKind::Ds389;
        }
        if values("objectClass")
            .iter()
            .any(|c| c.eq_ignore_ascii_case("OpenLDAProotDSE"))
        {
            return ServerKind::OpenLdap;
        }
        ServerKind::Other
    }

    /// How logs and messages name it.
    pub fn name(self) -> &'static str {
        match self {
            ServerKind::OpenLdap => "OpenLDAP",
            ServerKind::Ds389 => "389-DS",
            ServerKind::ActiveDirectory => "Active Directory",
            ServerKind::Other => "an LDAP server",
        }
    }

    /// What to change when a search stopped at the server's size limit (result 4).
    pub(super) fn size_limit_advice(self) -> &'static str {
        match self {
            ServerKind::OpenLdap => {
                "OpenLDAP applies the limit to the whole paged search: give the bind account \
                 `limits dn.exact=\"<bind DN>\" size=unlimited` on the database"
            }
            ServerKind::Ds389 => {
                "389-DS applies the limit to each page: set `directory.page_size` under the \
                 server's limit (`nsslapd-sizelimit`, 2000 by default), or lift the bind \
                 account's own limit (`nsSizeLimit: -1` on its entry, and `nsPagedSizeLimit` \
                 if set) or the server's `nsslapd-sizelimit`"
            }
            ServerKind::ActiveDirectory => {
                "on Active Directory keep `directory.page_size` at or under MaxPageSize (1000 \
                 by default) and check MaxResultSetSize"
            }
            ServerKind::Other => {
                "raise the bind account's size limit (OpenLDAP `limits ... size=unlimited`; \
                 389-DS `nsSizeLimit: -1` on the bind entry, or a page size under \
                 `nsslapd-sizelimit`; AD MaxPageSize) or check that paging is allowed"
            }
        }
    }

    /// What to change when a search stopped at an administrative limit (result 11).
    pub(super) fn admin_limit_advice(self) -> &'static str {
        match self {
            ServerKind::Ds389 => {
                "389-DS stopped looking through entries: set `nsLookThroughLimit: -1` (and \
                 `nsPagedLookThroughLimit` if set) on the bind account's entry, or index the \
                 agent filter's attributes"
            }
            ServerKind::OpenLdap => {
                "raise the bind account's `limits` (e.g. `size.unchecked=unlimited`) or \
                 index the agent filter's attributes"
            }
            _ => "raise the bind account's limits or index the agent filter's attributes",
        }
    }

    /// How to turn content sync (RFC 4533) on, when the server refuses it.
    pub(super) fn content_sync_advice(self) -> &'static str {
        match self {
            ServerKind::Ds389 => {
                "enable the Retro Changelog (with `nsslapd-attribute: nsuniqueid:targetUniqueId`) \
                 and Content Synchronization plugins and restart 389-DS (docs/389ds.md)"
            }
            ServerKind::OpenLdap | ServerKind::Other => {
                "load the syncprov overlay on the database holding the base (with \
                 `syncprov-sessionlog` so deletions come as a short list)"
            }
            ServerKind::ActiveDirectory => "Active Directory is read through its USNs instead",
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn root(attrs: &[(&str, &[&str])]) -> SearchEntry {
        SearchEntry {
            dn: String::new(),
            attrs: attrs
                .iter()
                .map(|(k, v)| (k.to_string(), v.iter().map(|s| s.to_string()).collect()))
                .collect::<HashMap<_, _>>(),
            bin_attrs: HashMap::new(),
        }
    }

    #[test]
    fn kinds_from_their_root_dse() {
        let ds389 = root(&[
            ("objectClass", &["top"]),
            ("vendorName", &["389 Project"]),
            ("vendorVersion", &["389-Directory/2.3.1 B2025.016.1616"]),
        ]);
        assert_eq!(ServerKind::of_root_dse(&ds389), ServerKind::Ds389);
        let rhds = root(&[("vendorVersion", &["Red Hat-Directory/11.7"])]);
        assert_eq!(ServerKind::of_root_dse(&rhds), ServerKind::Ds389);
        let retro = root(&[("lastchangenumber", &["42"])]);
        assert_eq!(ServerKind::of_root_dse(&retro), ServerKind::Ds389);
        let openldap = root(&[("objectClass", &["top", "OpenLDAProotDSE"])]);
        assert_eq!(ServerKind::of_root_dse(&openldap), ServerKind::OpenLdap);
        let samba = root(&[
            ("vendorName", &["Samba Team (https://www.samba.org)"]),
            (
                "supportedCapabilities",
                &["1.2.840.113556.1.4.800", "1.2.840.113556.1.4.1670"],
            ),
        ]);
        assert_eq!(ServerKind::of_root_dse(&samba), ServerKind::ActiveDirectory);
        assert_eq!(ServerKind::of_root_dse(&root(&[])), ServerKind::Other);
    }

    #[test]
    fn advice_fits_the_server() {
        assert!(ServerKind::Ds389
            .size_limit_advice()
            .contains("nsSizeLimit"));
        assert!(ServerKind::Ds389.size_limit_advice().contains("each page"));
        assert!(!ServerKind::Ds389
            .size_limit_advice()
            .contains("MaxPageSize"));
        assert!(ServerKind::OpenLdap.size_limit_advice().contains("limits"));
        assert!(!ServerKind::OpenLdap
            .size_limit_advice()
            .contains("nsSizeLimit"));
        assert!(ServerKind::ActiveDirectory
            .size_limit_advice()
            .contains("MaxPageSize"));
        assert!(ServerKind::Ds389
            .content_sync_advice()
            .contains("Retro Changelog"));
        assert!(ServerKind::OpenLdap
            .content_sync_advice()
            .contains("syncprov"));
    }
}
