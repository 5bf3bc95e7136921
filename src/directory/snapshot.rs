//! The Snapshot: every agent entry read from the directory, complete or not at all.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// The stable identity of an agent: `entryUUID` text, or an AD `objectGUID` in its canonical
/// string form (see [`super::guid_to_string`]). Never the DN, never the login.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct StableId(pub String);

impl fmt::Display for StableId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One directory entry. Attribute names are lowercased (LDAP names are case-insensitive);
/// values keep their order. Values that are not UTF-8 are in `binary`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Entry {
    pub dn: String,
    pub id: StableId,
    pub attrs: BTreeMap<String, Vec<String>>,
    pub binary: BTreeMap<String, Vec<Vec<u8>>>,
}

impl Entry {
    /// All text values of an attribute (any case of its name), empty if absent.
    pub fn values(&self, attr: &str) -> &[String] {
        // Lowercased on the stack: this runs for every attribute of every entry mapped.
        let mut buf = [0u8; 64];
        let found = match buf.get_mut(..attr.len()) {
            Some(lower) => {
                lower.copy_from_slice(attr.as_bytes());
                lower.make_ascii_lowercase();
                // ASCII lowercasing keeps UTF-8 valid: this never fails.
                std::str::from_utf8(lower)
                    .ok()
                    .and_then(|name| self.attrs.get(name))
            }
            None => self.attrs.get(&attr.to_ascii_lowercase()),
        };
        found.map(Vec::as_slice).unwrap_or(&[])
    }

    /// An entry with these text attributes (a name given twice gets two values); for tests
    /// and benchmarks.
    pub fn with_attrs(dn: &str, id: &str, attrs: &[(&str, &str)]) -> Entry {
        let mut entry = Entry {
            dn: dn.to_string(),
            id: StableId(id.to_string()),
            ..Entry::default()
        };
        for (name, value) in attrs {
            entry
                .attrs
                .entry(name.to_ascii_lowercase())
                .or_default()
                .push(value.to_string());
        }
        entry
    }

    /// The first text value of an attribute.
    pub fn first(&self, attr: &str) -> Option<&str> {
        self.values(attr).first().map(String::as_str)
    }
}

/// An entry the directory returned but that cannot be an agent (e.g. no stable id).
/// It is reported and skipped; it never causes an action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedEntry {
    pub dn: String,
    pub reason: String,
}

/// Every agent entry under the configured bases that matched the agent filter.
///
/// Completeness is the type's promise: the directory module builds one only after every page
/// of every search ended with result code success. Code that builds one by hand (tests,
/// benchmarks) takes on that promise.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// The agent entries, but those handed on as they were read and not kept (see
    /// [`Directory::read_snapshot_passing`](super::Directory::read_snapshot_passing)).
    pub entries: Vec<Entry>,
    /// Agent entries handed on as they were read and not kept in `entries`.
    pub passed_on: usize,
    pub skipped: Vec<SkippedEntry>,
    /// The directory URL that answered.
    pub server: String,
    /// Groups read for room rules (empty when the rules name none).
    pub groups: super::Groups,
    /// For each extra filter of the room rules, the agents matching it.
    pub filter_matches: BTreeMap<String, std::collections::BTreeSet<StableId>>,
    /// AD in-chain mode: for each rule group (by DN), the agents the DC says are in it
    /// or in a group nested in it.
    pub in_chain: BTreeMap<super::DnKey, std::collections::BTreeSet<StableId>>,
    /// Where this read leaves off for the next incremental read, taken before it began (`None`:
    /// incremental reads are off, or the server offers none).
    pub watermark: Option<super::Watermark>,
    /// The id each agent read is named by in the server's content-sync messages, when that is
    /// not its stable id (389-DS: `nsUniqueId`; empty otherwise): what turns the deletions of
    /// later incremental reads ([`super::Changes::deleted_sync_ids`]) into agents.
    pub sync_ids: Vec<(super::SyncId, StableId)>,
}

impl Snapshot {
    pub fn complete(
        entries: Vec<Entry>,
        skipped: Vec<SkippedEntry>,
        server: impl Into<String>,
    ) -> Self {
        Snapshot {
            entries,
            passed_on: 0,
            skipped,
            server: server.into(),
            groups: super::Groups::default(),
            filter_matches: BTreeMap::new(),
            in_chain: BTreeMap::new(),
            watermark: None,
            sync_ids: Vec::new(),
        }
    }

    /// Agent entries the directory returned: usable, handed on, or skipped.
    pub fn agents(&self) -> usize {
        self.entries.len() + self.passed_on + self.skipped.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_by_any_case_of_any_length_of_name() {
        let long = "x".repeat(100);
        let entry = Entry::with_attrs("uid=a", "a", &[("givenName", "Ann"), (&long, "v")]);
        assert_eq!(entry.first("GIVENNAME"), Some("Ann"));
        assert_eq!(entry.first("givenname"), Some("Ann"));
        assert_eq!(entry.first(&long.to_uppercase()), Some("v"));
        assert_eq!(entry.values("sn"), &[] as &[String]);
    }
}
