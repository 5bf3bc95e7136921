//! 389-DS content sync, as seen against a real 389-DS 2.3 (Debian's `389-ds-base`, Retro
//! Changelog and Content Synchronization plugins on), and what makes it usable:
//!
//! - A cookie is `<host>:<port>#<bind DN>:<base>:<filter>#<change number>`: the server takes
//!   it back only from the same bind DN, for the same base and the same filter string
//!   (e-syncRefreshRequired "Invalid session cookie" otherwise). The scope is not part of it:
//!   the watermark is taken by a base-scope refresh (one entry read, not the directory) with
//!   the filter the changes are asked with later.
//! - Entries are named by their `nsUniqueId` (16 bytes), not their `entryUUID`, in every sync
//!   message: deletions too, whose `entryUUID` nothing tells any more. Each agent's
//!   `nsUniqueId` is read with it (complete reads and incremental ones), recorded with its
//!   stable id, and a deletion is taken for an agent's through that record
//!   ([`super::Changes::deleted_sync_ids`]).
//! - Changed entries come with their user attributes only, whatever is asked for: no
//!   `entryUUID`, no `nsAccountLock` (operational attributes). So the changes are asked with
//!   the filter `(objectClass=*)`, for their ids only, and the changed entries are then read
//!   again with a plain search by `nsUniqueId` and the agent filter, with the attributes the
//!   rules need.
//! - An entry changed so that it no longer matches the sync filter is not reported at all
//!   (neither changed nor deleted). With `(objectClass=*)` every change under the base is
//!   reported; an entry reported changed that the search by `nsUniqueId` and agent filter does
//!   not return has left the agents (or was deleted or moved meanwhile).
//! - Deleted entries, and entries moved out of the base, come in syncIdSets with refreshDeletes
//!   TRUE; the Sync Done says refreshDeletes FALSE nonetheless (see [`super::sync_messages`]).
//! - The server accepts any cookie whose change number is not ahead of it: it does not check
//!   that its retro changelog still holds the changes since (trimmed by
//!   `nsslapd-changelogmaxage`). So the root DSE's `firstchangenumber` is checked first: a
//!   changelog that starts after the cookie means a complete read.
//! - Its size limit (`nsslapd-sizelimit`, the bind entry's `nsSizeLimit`) applies to each page
//!   of a paged search, not to the whole search as OpenLDAP's does.

use std::collections::BTreeSet;
use std::time::Duration;

use super::changes::SyncId;
use super::error::DirectoryError;
use super::reader::{requested_attributes, Collector, Directory};
use super::AgentQuery;

/// The attribute 389-DS names entries by in content-sync messages.
pub(super) const NS_UNIQUE_ID: &str = "nsUniqueId";

/// The filter 389-DS content sync is asked with (watermark and changes alike): every entry,
/// so that an agent leaving the agent filter is reported too.
pub(super) const SYNC_FILTER: &str = "(objectClass=*)";

/// How many ids one search by `nsUniqueId` asks for.
const IDS_PER_SEARCH: usize = 200;

/// The change number a 389-DS cookie stands at (its last `#` field).
pub(super) fn cookie_change_number(cookie: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(cookie).ok()?;
    let (_, number) = text.rsplit_once('#')?;
    number.parse().ok()
}

/// Why the retro changelog (first and last change numbers) cannot give the changes since a
/// cookie at `since`, if it cannot.
pub(super) fn changelog_gap(first: u64, last: u64, since: u64) -> Option<String> {
    (last > since && first > since.saturating_add(1)).then(|| {
        format!(
            "389-DS's retro changelog starts at change {first}, but the sync cookie stands at \
             change {since}: the changes between were trimmed (nsslapd-changelogmaxage)"
        )
    })
}

impl Directory {
    /// Why the retro changelog no longer holds every change since `cookies`, if it does not.
    pub(super) async fn ds389_changelog_gap(
        &mut self,
        cookies: &[(&String, &Vec<u8>)],
        timeout: Duration,
    ) -> Result<Option<String>, DirectoryError> {
        let attrs = vec!["firstchangenumber".to_string(), "lastchangenumber".into()];
        let root = self.read_entry("", &attrs, timeout).await?;
        let number = |name: &str| -> Option<u64> {
            let root = root.as_ref()?;
            root.attrs
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .and_then(|(_, v)| v.first())
                .and_then(|v| v.trim().parse().ok())
        };
        let (Some(first), Some(last)) = (number("firstchangenumber"), number("lastchangenumber"))
        else {
            return Ok(Some(
                "389-DS does not publish its retro changelog's change numbers in the root DSE \
                 (is the Retro Changelog plugin on?)"
                    .into(),
            ));
        };
        for (base, cookie) in cookies {
            let Some(since) = cookie_change_number(cookie) else {
                return Ok(Some(format!(
                    "the sync cookie for `{base}` is not a 389-DS cookie"
                )));
            };
            if let Some(gap) = changelog_gap(first, last, since) {
                return Ok(Some(format!("{gap} (base `{base}`)")));
            }
        }
        Ok(None)
    }

    /// Reads the agents among the entries of `base` named `ids` (their `nsUniqueId`), with the
    /// agent filter and the rules' attributes, into `collector` (which records their ids).
    /// Returns the ids of the entries the search returned — agents still, even those the
    /// collector skipped (a skipped agent is never taken for gone) — or, when an entry came
    /// back without a readable `nsUniqueId`, why the read cannot be trusted.
    pub(super) async fn ds389_read_by_ids(
        &mut self,
        base: &str,
        ids: &BTreeSet<SyncId>,
        query: &AgentQuery,
        page_size: i32,
        timeout: Duration,
        collector: &mut Collector<'_, '_>,
    ) -> Result<Result<BTreeSet<SyncId>, String>, DirectoryError> {
        let mut attrs = requested_attributes(query);
        attrs.push(NS_UNIQUE_ID.to_string());
        let ids: Vec<&SyncId> = ids.iter().collect();
        let mut returned = BTreeSet::new();
        let mut unnamed: Option<String> = None;
        for chunk in ids.chunks(IDS_PER_SEARCH) {
            let filter = by_ids_filter(&query.filter, chunk);
            self.read_base(
                base,
                &filter,
                &attrs,
                page_size.max(1),
                timeout,
                &mut |se| {
                    let id = se
                        .attrs
                        .iter()
                        .find(|(k, _)| k.eq_ignore_ascii_case(NS_UNIQUE_ID))
                        .and_then(|(_, v)| v.first())
                        .and_then(|v| SyncId::from_text(v));
                    match id {
                        Some(id) => {
                            returned.insert(id);
                        }
                        None => {
                            unnamed.get_or_insert_with(|| se.dn.clone());
                        }
                    }
                    collector.add(se);
                },
            )
            .await?;
        }
        Ok(match unnamed {
            None => Ok(returned),
            Some(dn) => Err(format!(
                "`{dn}` was read without a readable `{NS_UNIQUE_ID}`, by which 389-DS names \
                 entries in content sync (let the bind account read it)"
            )),
        })
    }
}

/// `(&<agent filter>(|(nsUniqueId=…)…))`.
fn by_ids_filter(agent_filter: &str, ids: &[&SyncId]) -> String {
    let any: String = ids
        .iter()
        .map(|id| format!("({NS_UNIQUE_ID}={})", id.ns_unique_id()))
        .collect();
    format!("(&{agent_filter}(|{any}))")
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn change_numbers_of_389_cookies() {
        let cookie = b"localhost:38999#cn=sync,dc=example,dc=org:ou=people,dc=example,dc=org:(objectClass=*)#4016";
        assert_eq!(cookie_change_number(cookie), Some(4016));
        // A `#` in the base DN does not confuse it.
        assert_eq!(
            cookie_change_number(b"h:389#cn=s:ou=a\\#b,dc=x:(objectClass=*)#7"),
            Some(7)
        );
        assert_eq!(cookie_change_number(b"rid=000,csn=x"), None);
        assert_eq!(cookie_change_number(b"h:389#x#"), None);
    }

    #[test]
    fn a_trimmed_changelog_is_a_gap() {
        // Changes 1..=50 kept, cookie at 40: nothing lost.
        assert_eq!(changelog_gap(1, 50, 40), None);
        // Changelog starts right after the cookie: nothing lost.
        assert_eq!(changelog_gap(41, 50, 40), None);
        // Changes 41..=44 trimmed.
        let gap = changelog_gap(45, 50, 40).unwrap();
        assert!(
            gap.contains("change 45") && gap.contains("change 40"),
            "{gap}"
        );
        // Nothing new since the cookie, whatever was trimmed before.
        assert_eq!(changelog_gap(45, 40, 40), None);
    }

    #[test]
    fn search_by_ids() {
        let a = SyncId::from_text("a9434909-f01311f1-bc0ad3af-a5436761").unwrap();
        let b = SyncId::from_text("bc5619c0-f01311f1-bc0ad3af-a5436761").unwrap();
        assert_eq!(
            by_ids_filter("(uid=*)", &[&a, &b]),
            "(&(uid=*)(|(nsUniqueId=a9434909-f01311f1-bc0ad3af-a5436761)\
             (nsUniqueId=bc5619c0-f01311f1-bc0ad3af-a5436761)))"
        );
    }
}
