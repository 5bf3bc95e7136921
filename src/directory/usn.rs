//! Active Directory incremental reads: `uSNChanged` above the watermark of the same DC
//! (`invocationId`), deletions through the Show Deleted control.
//!
//! USNs count the changes of one DC's database. A watermark is only meaningful on the DC
//! (`invocationId`) that gave it: another DC, or the same one restored from a backup (which
//! gets a new `invocationId`), means a full read, never a silent gap.
//!
//! An incremental read, with `N` the watermark's USN:
//! 1. the DC's `highestCommittedUSN` now (the next watermark) and its `invocationId`;
//! 2. the ids of every user object of the domain changed above `N`, deleted ones (tombstones,
//!    under `CN=Deleted Objects`, which keep `objectGUID` and `objectClass`) included;
//! 3. the agents changed above `N` under the bases, read as a full read reads them.
//!
//! An id of (2) not read in (3) left the agents: deleted, moved out of the bases (a move
//! changes `uSNChanged`), or no longer matching the filter. They all go to
//! [`Changes::deleted`]; ids that never were agents (computers, other users) come along and are
//! harmless, as the planner acts only on the ids it manages. (2) is read before (3) so that an
//! object changing between them is judged by its state in (3): read after, an object that came
//! into the filter meanwhile would be taken for gone. Whatever changes after (1) has a USN
//! above the next watermark and is read again next time.
//!
//! Why `(objectClass=user)` for (2) and not the agent filter: a tombstone loses
//! `objectCategory` (the preset's `(objectCategory=person)` no longer matches it) but keeps its
//! `objectClass`, and an agent that left the filter no longer matches it by definition. Every
//! object the preset's filter `(&(objectClass=user)(objectCategory=person))` matches is a
//! `user`, so none escapes (2); both its terms are the user's own attributes, so a change to
//! either changes its `uSNChanged`. An agent filter must keep agents to user objects (people
//! are), and must not test group membership (see [`unsuited_query`]).
//!
//! Tombstones live for the forest's tombstone lifetime (180 days by default); the periodic
//! full read (`directory.full_sync_every`, far shorter) catches what an older watermark would
//! have missed.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::Duration;

use ldap3::controls::RawControl;
use ldap3::SearchEntry;
use tracing::{debug, info};

use super::changes::{Changes, Incremental, Watermark};
use super::dn::DnKey;
use super::error::DirectoryError;
use super::guid::guid_to_string;
use super::reader::Directory;
use super::snapshot::{Entry, SkippedEntry, Snapshot, StableId};
use super::{AgentQuery, IdFormat};

/// LDAP_SERVER_SHOW_DELETED_OID: searches also return deleted objects (tombstones).
const SHOW_DELETED_OID: &str = "1.2.840.113556.1.4.417";
/// The well-known GUID of a naming context's Deleted Objects container (`<WKGUID=…,nc>`).
const DELETED_OBJECTS_WKGUID: &str = "18e2ea80684f11d2b9aa00c04f79f805";
/// The in-chain (transitive) matching rule, used on `memberOf`.
const IN_CHAIN_RULE: &str = "1.2.840.113556.1.4.1941";

fn show_deleted() -> RawControl {
    RawControl {
        ctype: SHOW_DELETED_OID.to_string(),
        crit: true,
        val: None,
    }
}

/// The DC as an incremental read begins.
struct DcState {
    highest: u64,
    invocation_id: String,
    /// The domain naming context (`defaultNamingContext`).
    naming_context: String,
}

impl Directory {
    /// The DC's watermark: `highest` (its `highestCommittedUSN`, read first) and the
    /// `invocationId` of its NTDS Settings object `ds_service_name`.
    pub(super) async fn usn_watermark(
        &mut self,
        highest: u64,
        ds_service_name: &str,
        timeout: Duration,
    ) -> Result<Watermark, DirectoryError> {
        let invocation_id = self.invocation_id(ds_service_name, timeout).await?;
        Ok(Watermark::Usn {
            server: self.server().to_string(),
            invocation_id,
            usn: highest,
        })
    }

    /// The changes since `usn` on the DC `invocation_id`.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn usn_changes(
        &mut self,
        bases: &[String],
        query: &AgentQuery,
        invocation_id: &str,
        usn: u64,
        page_size: i32,
        timeout: Duration,
        pass: &mut (dyn FnMut(Entry) -> Option<Entry> + Send),
    ) -> Result<Incremental, DirectoryError> {
        if bases.is_empty() {
            return Err(DirectoryError::Config("no search base given".into()));
        }
        let dc = match self.usable_dc(query, invocation_id, usn, timeout).await? {
            Ok(dc) => dc,
            Err(why) => return Ok(Incremental::FullReadNeeded(why)),
        };
        let since = usn + 1;
        // Ids first, agents second: see the module doc.
        let scopes = id_scopes(bases, &dc.naming_context);
        let changed = self
            .changed_user_ids(&scopes, since, page_size, timeout)
            .await?;
        let (snapshot, read) = self
            .changed_agents(bases, query, since, page_size, timeout, pass)
            .await?;
        let deleted = left_agents(changed, &read, &snapshot.skipped);
        info!(
            since = usn,
            changed = snapshot.entries.len() + snapshot.passed_on,
            gone_or_not_agents = deleted.len(),
            next = dc.highest,
            server = %self.server(),
            "directory: AD changes read"
        );
        Ok(Incremental::Changes(Changes {
            snapshot,
            deleted,
            present: None,
            deleted_sync_ids: Default::default(),
            watermark: Watermark::Usn {
                server: self.server().to_string(),
                invocation_id: dc.invocation_id,
                usn: dc.highest,
            },
        }))
    }

    /// The DC's state if the watermark can be used with this query on it; else why not.
    async fn usable_dc(
        &mut self,
        query: &AgentQuery,
        invocation_id: &str,
        usn: u64,
        timeout: Duration,
    ) -> Result<Result<DcState, String>, DirectoryError> {
        if let Some(why) = unsuited_query(query) {
            return Ok(Err(why));
        }
        let dc = self.dc_state(timeout).await?;
        if let Some(why) = self.watermark_unusable(&dc, invocation_id, usn) {
            return Ok(Err(why));
        }
        if !self
            .sees_deleted_objects(&dc.naming_context, timeout)
            .await?
        {
            return Ok(Err(format!(
                "the bind account cannot read `CN=Deleted Objects,{nc}` on {url}, so deleted \
                 agents would go unseen: grant it List Contents and Read Property there \
                 (`dsacls \"CN=Deleted Objects,{nc}\" /takeownership`, then \
                 `dsacls \"CN=Deleted Objects,{nc}\" /G <DOMAIN\\account>:LCRP`)",
                nc = dc.naming_context,
                url = self.server(),
            )));
        }
        Ok(Ok(dc))
    }

    /// The agents changed at or above `since` under `bases`, read as a full read reads them
    /// (each handed to `pass`), and the ids of all of them, kept or passed on.
    async fn changed_agents(
        &mut self,
        bases: &[String],
        query: &AgentQuery,
        since: u64,
        page_size: i32,
        timeout: Duration,
        pass: &mut (dyn FnMut(Entry) -> Option<Entry> + Send),
    ) -> Result<(Snapshot, HashSet<StableId>), DirectoryError> {
        let agents = AgentQuery {
            filter: format!("(&{}(uSNChanged>={since}))", query.filter),
            ..query.clone()
        };
        let mut read: HashSet<StableId> = HashSet::new();
        let mut recording = |e: Entry| {
            read.insert(e.id.clone());
            pass(e)
        };
        let snapshot = self
            .read_snapshot_passing(bases, &agents, page_size, timeout, &mut recording)
            .await?;
        Ok((snapshot, read))
    }

    /// `highestCommittedUSN`, `invocationId` and the domain naming context, from the root DSE
    /// and the DC's NTDS Settings object.
    async fn dc_state(&mut self, timeout: Duration) -> Result<DcState, DirectoryError> {
        let names = [
            "highestCommittedUSN",
            "dsServiceName",
            "defaultNamingContext",
        ];
        let attrs: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let root = self.read_entry("", &attrs, timeout).await?;
        let value = |name: &str| {
            root.as_ref()
                .and_then(|r| text_value(r, name))
                .ok_or_else(|| self.protocol_error("reading the root DSE", name))
        };
        let highest = value(names[0])?;
        let ds_service_name = value(names[1])?;
        let naming_context = value(names[2])?;
        let highest = highest
            .parse()
            .map_err(|_| self.protocol_error("reading the root DSE", names[0]))?;
        let invocation_id = self.invocation_id(&ds_service_name, timeout).await?;
        Ok(DcState {
            highest,
            invocation_id,
            naming_context,
        })
    }

    /// The canonical form of the `invocationId` of the NTDS Settings object `ds_service_name`.
    async fn invocation_id(
        &mut self,
        ds_service_name: &str,
        timeout: Duration,
    ) -> Result<String, DirectoryError> {
        let attrs = ["invocationId".to_string()];
        let entry = self.read_entry(ds_service_name, &attrs, timeout).await?;
        entry
            .as_ref()
            .and_then(|e| binary_value(e, "invocationId"))
            .and_then(|bytes| guid_to_string(&bytes))
            .ok_or_else(|| {
                self.protocol_error(
                    &format!("reading the DC's NTDS Settings `{ds_service_name}`"),
                    "invocationId",
                )
            })
    }

    /// Why the stored watermark cannot be used on this DC, if it cannot.
    fn watermark_unusable(&self, dc: &DcState, invocation_id: &str, usn: u64) -> Option<String> {
        if !dc.invocation_id.eq_ignore_ascii_case(invocation_id) {
            return Some(format!(
                "the DC at {} has invocationId {}, the last complete read was from the DC \
                 (database) {invocation_id}: update sequence numbers of another DC, or of a \
                 restored one, mean nothing here",
                self.server(),
                dc.invocation_id
            ));
        }
        if dc.highest < usn {
            return Some(format!(
                "the DC at {} (invocationId {invocation_id}) is at USN {}, below the {usn} of \
                 the last complete read: its database went back in time",
                self.server(),
                dc.highest
            ));
        }
        None
    }

    /// Whether the bind account can read the domain's Deleted Objects container. Without that
    /// right AD does not refuse a Show Deleted search: it returns no tombstones at all.
    async fn sees_deleted_objects(
        &mut self,
        naming_context: &str,
        timeout: Duration,
    ) -> Result<bool, DirectoryError> {
        let dn = format!("<WKGUID={DELETED_OBJECTS_WKGUID},{naming_context}>");
        let attrs = ["isDeleted".to_string()];
        match self
            .read_entry_with(&dn, &attrs, &[show_deleted()], timeout)
            .await
        {
            Ok(entry) => Ok(entry
                .and_then(|e| text_value(&e, "isDeleted"))
                .is_some_and(|v| v.eq_ignore_ascii_case("TRUE"))),
            // noSuchObject, insufficientAccessRights: hidden from the account.
            Err(e) if matches!(e.result_code(), Some(32 | 50)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// (objectGUID, DN) of every user object changed at or above `since` under
    /// `scopes`, deleted ones included.
    async fn changed_user_ids(
        &mut self,
        scopes: &[String],
        since: u64,
        page_size: i32,
        timeout: Duration,
    ) -> Result<BTreeMap<StableId, DnKey>, DirectoryError> {
        let filter = format!("(&(objectClass=user)(uSNChanged>={since}))");
        let attrs = ["objectGUID".to_string()];
        let mut ids = BTreeMap::new();
        let mut sink = |se: SearchEntry| match binary_value(&se, "objectGUID")
            .and_then(|bytes| guid_to_string(&bytes))
        {
            Some(id) => {
                ids.insert(StableId(id), DnKey::lenient(&se.dn));
            }
            None => debug!(dn = %se.dn, "changed object without a readable objectGUID"),
        };
        for scope in scopes {
            self.read_base_with(
                scope,
                &filter,
                &attrs,
                &[show_deleted()],
                page_size.max(1),
                timeout,
                &mut sink,
            )
            .await?;
        }
        Ok(ids)
    }

    fn protocol_error(&self, operation: &str, attribute: &str) -> DirectoryError {
        DirectoryError::Protocol {
            url: self.server().to_string(),
            operation: operation.to_string(),
            cause: format!("no usable `{attribute}` (is this an Active Directory DC?)"),
        }
    }
}

/// The changed ids (id → DN) not read as agents: gone, or never agents. An agent
/// read but skipped (e.g. no usable id) is still there: not a departure.
fn left_agents(
    changed: BTreeMap<StableId, DnKey>,
    read: &HashSet<StableId>,
    skipped: &[SkippedEntry],
) -> BTreeSet<StableId> {
    let skipped: HashSet<DnKey> = skipped.iter().map(|s| DnKey::lenient(&s.dn)).collect();
    changed
        .into_iter()
        .filter(|(id, dn)| !read.contains(id) && !skipped.contains(dn))
        .map(|(id, _)| id)
        .collect()
}

/// Why USNs cannot tell this query's changes, if they cannot.
fn unsuited_query(query: &AgentQuery) -> Option<String> {
    if !query.id_attribute.eq_ignore_ascii_case("objectGUID")
        || !matches!(query.id_format, IdFormat::Guid)
    {
        return Some(format!(
            "the stable id is `{}`, not the objectGUID: a deleted AD object keeps only its \
             objectGUID, so deletions could not be told from USNs",
            query.id_attribute
        ));
    }
    // Only the user's own attributes change its uSNChanged. `memberOf` is a back link: adding
    // or removing a member changes the group's uSNChanged, not the user's (seen on Samba, as on
    // Windows), so an agent entering or leaving such a filter would go unseen. The preset's
    // filter, `(&(objectClass=user)(objectCategory=person))`, tests only the user's own
    // attributes.
    let filter = query.filter.to_ascii_lowercase();
    if filter.contains("memberof") || filter.contains(IN_CHAIN_RULE) {
        return Some(format!(
            "the agent filter `{}` tests group membership: a membership change changes the \
             group's uSNChanged, not the user's, so incremental reads could miss agents \
             joining or leaving it",
            query.filter
        ));
    }
    None
}

/// Where to look for changed ids: the whole domain (so that agents moved out of the bases are
/// seen leaving), and any base outside it.
fn id_scopes(bases: &[String], naming_context: &str) -> Vec<String> {
    let nc = DnKey::lenient(naming_context);
    let mut scopes = vec![naming_context.to_string()];
    for base in bases {
        if !DnKey::lenient(base).is_under(&nc) {
            scopes.push(base.clone());
        }
    }
    scopes
}

/// The first value of `name` (any case) as text.
fn text_value(se: &SearchEntry, name: &str) -> Option<String> {
    se.attrs
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .and_then(|(_, v)| v.first().cloned())
}

/// The first value of `name` (any case) as bytes: ldap3 gives values that happen to be valid
/// UTF-8 as text.
fn binary_value(se: &SearchEntry, name: &str) -> Option<Vec<u8>> {
    se.bin_attrs
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .and_then(|(_, v)| v.first().cloned())
        .or_else(|| text_value(se, name).map(String::into_bytes))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn query(filter: &str, id: &str, format: IdFormat) -> AgentQuery {
        AgentQuery {
            filter: filter.into(),
            attributes: vec![],
            id_attribute: id.into(),
            id_format: format,
        }
    }

    #[test]
    fn the_preset_query_suits_usn_reads() {
        let q = query(
            "(&(objectClass=user)(objectCategory=person))",
            "objectGUID",
            IdFormat::Guid,
        );
        assert_eq!(unsuited_query(&q), None);
    }

    #[test]
    fn membership_filters_and_other_ids_do_not() {
        let q = query(
            "(&(objectClass=user)(memberOf:1.2.840.113556.1.4.1941:=CN=Staff,DC=x))",
            "objectGUID",
            IdFormat::Guid,
        );
        assert!(unsuited_query(&q).unwrap().contains("group membership"));
        let q = query("(objectClass=user)", "employeeID", IdFormat::Text);
        assert!(unsuited_query(&q).unwrap().contains("employeeID"));
    }

    #[test]
    fn id_scopes_are_the_domain_and_bases_outside_it() {
        let bases = vec![
            "OU=People, DC=Samdom,DC=test".to_string(),
            "OU=Other,DC=elsewhere,DC=test".to_string(),
        ];
        assert_eq!(
            id_scopes(&bases, "DC=samdom,DC=test"),
            vec!["DC=samdom,DC=test", "OU=Other,DC=elsewhere,DC=test"]
        );
    }

    #[test]
    fn changed_ids_not_read_as_agents_left_unless_skipped() {
        let id = |s: &str| StableId(s.into());
        let changed: BTreeMap<StableId, DnKey> = [
            (id("read"), DnKey::lenient("cn=a,ou=p,dc=x")),
            (id("gone"), DnKey::lenient("cn=b,cn=deleted objects,dc=x")),
            (id("skipped"), DnKey::lenient("cn=c\\2C d,ou=p,dc=x")),
        ]
        .into();
        let read = HashSet::from([id("read"), id("new")]);
        let skipped = [SkippedEntry {
            dn: "CN=c\\, d, OU=p,DC=x".into(),
            reason: "no id".into(),
        }];
        assert_eq!(
            left_agents(changed, &read, &skipped),
            BTreeSet::from([id("gone")])
        );
    }

    #[test]
    fn binary_values_are_found_in_either_map() {
        let mut se = SearchEntry {
            dn: "CN=x".into(),
            attrs: Default::default(),
            bin_attrs: Default::default(),
        };
        se.attrs.insert("invocationid".into(), vec!["abc".into()]);
        assert_eq!(binary_value(&se, "invocationId"), Some(b"abc".to_vec()));
        se.bin_attrs.insert("invocationId".into(), vec![vec![1, 2]]);
        assert_eq!(binary_value(&se, "INVOCATIONID"), Some(vec![1, 2]));
    }
}
