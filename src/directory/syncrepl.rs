//! RFC 4533 content synchronization, refreshOnly: the changes since a cookie, on OpenLDAP
//! (syncprov) and 389-DS (content sync, see [`super::ds389`]). What a refresh's messages mean
//! is in [`super::sync_messages`].
//!
//! One cookie per base, taken and used by the same bind account with the same filter: 389-DS
//! ties its cookies to both (OpenLDAP's are the database's, whatever the filter). The
//! watermark is a base-scope refresh: the server reads the base entry, not the directory.
//!
//! What OpenLDAP's syncprov (2.5) answers, as seen against a real slapd:
//! - Without a cookie: every matching entry (state add), then a SyncDone cookie
//!   `rid=000,csn=<contextCSN>`.
//! - With a cookie and `syncprov-sessionlog`: a delete phase. Changed entries (state add, for a
//!   modify or a rename as well), syncIdSets (refreshDeletes TRUE) of the entryUUIDs deleted,
//!   moved out of the base or no longer matching the filter, SyncDone refreshDeletes TRUE.
//!   The log is replayed unscoped: every entry of the *database* deleted or modified since
//!   the cookie and not returned by this search is listed as deleted, wherever it is. So
//!   `deleted` also holds ids the caller never saw (to ignore), and an id one base calls
//!   deleted but another returned is not deleted.
//! - With a cookie, without a session log (or one older than the log): a present phase.
//!   Changed entries, syncIdSets (refreshDeletes FALSE) of every entryUUID still matching,
//!   SyncDone refreshDeletes FALSE.
//! - Nothing changed since the cookie: only a SyncDone, without a cookie (the old one stays).
//! - A cookie newer than the database (a restored server): result 53, "consumer state is
//!   newer than provider!".
//! - A cookie without a usable CSN is taken for no cookie at all and answered like a first
//!   refresh (every entry added, nothing deleted), which would hide deletions: see
//!   [`cookie_problem`] and the empty-cookie check of [`Directory::syncrepl_changes`].
//! - Paged results with the sync control: slapd ends after the first page with success and a
//!   SyncDone, silently short. So sync searches are never paged: a large change set comes in
//!   one search (every message under the timeout), which the sync account's unlimited size
//!   limit allows; a size limit ends it with result 4, an error like any other.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use ldap3::controls::{MakeCritical, RefreshMode, SyncRequest};
use ldap3::{Scope, SearchEntry};
use tracing::{info, warn};

use super::changes::{Changes, Incremental, SyncDialect, SyncId, Watermark};
use super::ds389::{NS_UNIQUE_ID, SYNC_FILTER};
use super::error::DirectoryError;
use super::reader::{decode_entry, requested_attributes, Collector, Directory};
use super::server::ServerKind;
use super::snapshot::{Entry, StableId};
use super::sync_messages::{cookie_problem, merge, phase, sync_done, BaseRefresh};
use super::{AgentQuery, IdFormat};

/// e-syncRefreshRequired (RFC 4533): the server cannot answer from this cookie.
const SYNC_REFRESH_REQUIRED: u32 = 4096;
/// unwillingToPerform: slapd's answer to a cookie newer than its database.
const UNWILLING_TO_PERFORM: u32 = 53;
/// unavailableCriticalExtension: no content sync on the database holding the base.
const UNAVAILABLE_CRITICAL_EXTENSION: u32 = 12;

/// The filter content sync is asked with, for the watermark and the changes alike.
fn sync_filter(dialect: SyncDialect, query: &AgentQuery) -> &str {
    match dialect {
        SyncDialect::Standard => &query.filter,
        SyncDialect::Ds389 => SYNC_FILTER,
    }
}

impl Directory {
    /// A cookie per base, taken before a full read. A base the server gives no cookie for is
    /// left out (logged): the next incremental read then asks for a full one.
    pub(super) async fn syncrepl_watermark(
        &mut self,
        bases: &[String],
        query: &AgentQuery,
        dialect: SyncDialect,
        timeout: Duration,
    ) -> Result<Watermark, DirectoryError> {
        let filter = sync_filter(dialect, query);
        let no_attributes = ["1.1".to_string()];
        let mut cookies = BTreeMap::new();
        for base in bases {
            let outcome = self
                .refresh(
                    base,
                    Scope::Base,
                    filter,
                    &no_attributes,
                    None,
                    timeout,
                    &mut |_, _| Ok(()),
                )
                .await?;
            match outcome {
                Outcome::Done(BaseRefresh {
                    cookie: Some(cookie),
                    ..
                }) if !cookie.is_empty() => {
                    cookies.insert(base.clone(), cookie);
                }
                Outcome::Done(_) => warn!(
                    base = %base, server = %self.server(),
                    "directory: the server gave no sync cookie for this base (an empty database?); the next run will read everything"
                ),
                Outcome::Refused(reason) => warn!(
                    base = %base, server = %self.server(), %reason,
                    "directory: no sync cookie for this base; the next run will read everything"
                ),
            }
        }
        Ok(Watermark::Syncrepl {
            server: self.server().to_string(),
            cookies,
            dialect,
        })
    }

    /// The changes since `cookies`: one refreshOnly search per base, entries converted and
    /// handed to `pass` as in a full read.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn syncrepl_changes(
        &mut self,
        bases: &[String],
        query: &AgentQuery,
        cookies: &BTreeMap<String, Vec<u8>>,
        dialect: SyncDialect,
        page_size: i32,
        timeout: Duration,
        pass: &mut (dyn FnMut(Entry) -> Option<Entry> + Send),
    ) -> Result<Incremental, DirectoryError> {
        if bases.is_empty() {
            return Err(DirectoryError::Config("no search base given".into()));
        }
        let speaks = SyncDialect::of(self.kind());
        if speaks != dialect {
            return Ok(Incremental::FullReadNeeded(format!(
                "the sync cookies are {}'s, but {} now speaks {}",
                dialect.name(),
                self.server(),
                speaks.name()
            )));
        }
        if let Some(reason) = ids_unlike_sync_ids(query, dialect) {
            return Ok(Incremental::FullReadNeeded(reason));
        }
        // Every cookie checked before any search, so `pass` sees no entry of a read that a
        // bad cookie of a later base would void.
        let mut base_cookies = Vec::with_capacity(bases.len());
        for base in bases {
            match usable_cookie(base, cookies) {
                Ok(cookie) => base_cookies.push((base, cookie)),
                Err(reason) => return Ok(Incremental::FullReadNeeded(reason)),
            }
        }
        if dialect == SyncDialect::Ds389 {
            if let Some(gap) = self.ds389_changelog_gap(&base_cookies, timeout).await? {
                return Ok(Incremental::FullReadNeeded(gap));
            }
        }
        let mut collector = Collector::passing(query, pass);
        if dialect == SyncDialect::Ds389 {
            collector = collector.recording_sync_ids(NS_UNIQUE_ID);
        }
        let (filter, attrs) = match dialect {
            SyncDialect::Standard => (query.filter.as_str(), requested_attributes(query)),
            // The changed entries' ids only: they are read again below, whole.
            SyncDialect::Ds389 => (SYNC_FILTER, vec!["1.1".to_string()]),
        };
        let mut refreshes = Vec::new();
        let mut next_cookies = BTreeMap::new();
        for (base, cookie) in base_cookies {
            let mut unlike = None;
            let outcome = self
                .refresh(
                    base,
                    Scope::Subtree,
                    filter,
                    &attrs,
                    Some(cookie),
                    timeout,
                    &mut |id, se| {
                        if dialect == SyncDialect::Standard {
                            match named_unlike(&id, &se) {
                                Some(why) => {
                                    unlike.get_or_insert(why);
                                }
                                None => collector.add(se),
                            }
                        }
                        Ok(())
                    },
                )
                .await?;
            if let Some(why) = unlike {
                return Ok(Incremental::FullReadNeeded(why));
            }
            let refresh = match outcome {
                Outcome::Done(refresh) => refresh,
                Outcome::Refused(reason) => return Ok(Incremental::FullReadNeeded(reason)),
            };
            let next = match &refresh.cookie {
                // What slapd answers a cookie it could not parse, after sending everything as
                // if there had been no cookie.
                Some(c) if c.is_empty() => {
                    return Ok(Incremental::FullReadNeeded(format!(
                        "the server did not recognise the sync cookie for `{base}` (it answered with an empty one)"
                    )))
                }
                Some(c) => c.clone(),
                None => cookie.clone(),
            };
            next_cookies.insert(base.clone(), next);
            match phase(&refresh, dialect) {
                Ok(phase) => refreshes.push((base, refresh, phase)),
                Err(why) => {
                    return Ok(Incremental::FullReadNeeded(format!(
                        "the content sync refresh of `{base}` cannot be trusted: {why}"
                    )))
                }
            }
        }
        // 389-DS: the changed entries, read again with what the rules need.
        let mut changed_ids = BTreeSet::new();
        let mut still_agents = BTreeSet::new();
        if dialect == SyncDialect::Ds389 {
            for (base, refresh, _) in &refreshes {
                let read = self
                    .ds389_read_by_ids(
                        base,
                        &refresh.changed,
                        query,
                        page_size,
                        timeout,
                        &mut collector,
                    )
                    .await?;
                match read {
                    Ok(ids) => still_agents.extend(ids),
                    Err(why) => return Ok(Incremental::FullReadNeeded(why)),
                }
                changed_ids.extend(refresh.changed.iter().cloned());
            }
        }
        let Some((deleted, present)) = merge(
            refreshes
                .into_iter()
                .map(|(_, refresh, phase)| (refresh, phase))
                .collect(),
        ) else {
            return Ok(Incremental::FullReadNeeded(
                "some bases answered with a present phase, others with a delete phase: the \
                 agents still there cannot be told for all of them"
                    .into(),
            ));
        };
        let snapshot = collector.into_snapshot(self.server().to_string());
        let (deleted, deleted_sync_ids, present) = match dialect {
            SyncDialect::Standard => (
                deleted.iter().map(entry_uuid).collect(),
                BTreeSet::new(),
                present.map(|p| p.iter().map(entry_uuid).collect()),
            ),
            SyncDialect::Ds389 => {
                // Changed entries the search by id did not return left the agents (or went
                // meanwhile); those it returned are there, whatever a base said.
                let gone = deleted
                    .into_iter()
                    .chain(changed_ids)
                    .filter(|id| !still_agents.contains(id))
                    .collect();
                (BTreeSet::new(), gone, None)
            }
        };
        info!(
            changed = snapshot.entries.len() + snapshot.passed_on,
            skipped = snapshot.skipped.len(),
            deleted = deleted.len() + deleted_sync_ids.len(),
            present = present.as_ref().map(BTreeSet::len),
            bases = bases.len(),
            server = %self.server(),
            dialect = dialect.name(),
            "directory: changes since the sync cookies read"
        );
        Ok(Incremental::Changes(Changes {
            snapshot,
            deleted,
            present,
            deleted_sync_ids,
            watermark: Watermark::Syncrepl {
                server: self.server().to_string(),
                cookies: next_cookies,
                dialect,
            },
        }))
    }

    /// One refreshOnly search of `base` from `cookie` (none: from scratch), each changed
    /// entry handed to `entry` with the id the server named it by. The sync control is
    /// critical: a database without content sync must refuse it, not answer a plain search
    /// that would look like a list of changes.
    #[allow(clippy::too_many_arguments)]
    async fn refresh(
        &mut self,
        base: &str,
        scope: Scope,
        filter: &str,
        attrs: &[String],
        cookie: Option<&Vec<u8>>,
        timeout: Duration,
        entry: &mut (dyn FnMut(SyncId, SearchEntry) -> Result<(), DirectoryError> + Send),
    ) -> Result<Outcome, DirectoryError> {
        let url = self.server().to_string();
        let kind = self.kind();
        let what = |verb: &str| format!("{verb} the content sync refresh of `{base}`");
        let protocol = |cause: String| DirectoryError::Protocol {
            url: url.clone(),
            operation: what("reading"),
            cause,
        };
        let control = SyncRequest {
            mode: RefreshMode::RefreshOnly,
            cookie: cookie.cloned(),
            reload_hint: false,
        }
        .critical();
        let mut refresh = BaseRefresh::default();
        let result = self
            .search_messages(
                base,
                scope,
                filter,
                attrs,
                vec![control.into()],
                timeout,
                &what,
                &mut |re| {
                    if let Some((id, re)) = refresh.take(re).map_err(protocol)? {
                        entry(id, decode_entry(&url, &what("reading"), re)?)?;
                    }
                    Ok(())
                },
            )
            .await?;
        let said = |text: &str| match text.trim() {
            "" => String::new(),
            text => format!(": {text}"),
        };
        match result.rc {
            SYNC_REFRESH_REQUIRED => {
                return Ok(Outcome::Refused(format!(
                    "the server asks for a full refresh of `{base}` (e-syncRefreshRequired{}){}",
                    said(&result.text),
                    refresh_required_advice(kind)
                )))
            }
            UNWILLING_TO_PERFORM if cookie.is_some() => {
                return Ok(Outcome::Refused(format!(
                    "the server refused the sync cookie for `{base}` (LDAP result 53 unwillingToPerform{})",
                    said(&result.text)
                )))
            }
            UNAVAILABLE_CRITICAL_EXTENSION => {
                return Ok(Outcome::Refused(format!(
                    "the server offers no content sync for `{base}` (LDAP result 12 \
                     unavailableCriticalExtension{}): {}",
                    said(&result.text),
                    kind.content_sync_advice()
                )))
            }
            _ => self.check_success(base, filter, &result)?,
        }
        let done = sync_done(&result.ctrls)
            .map_err(protocol)?
            .ok_or_else(|| protocol("the search ended without a Sync Done control".into()))?;
        refresh.done(done);
        Ok(Outcome::Done(refresh))
    }
}

/// How one base's refresh ended.
enum Outcome {
    Done(BaseRefresh),
    /// The server cannot go on from the cookie (or has no content sync there): why.
    Refused(String),
}

/// Why a server may ask for a full refresh, as it applies to this kind of server.
fn refresh_required_advice(kind: ServerKind) -> &'static str {
    match kind {
        ServerKind::Ds389 => {
            " — 389-DS takes a cookie back only from the bind DN, for the base and filter, and \
             on the host name and port (nsslapd-localhost, nsslapd-port) it was given with, and \
             only while its retro changelog goes back that far"
        }
        ServerKind::OpenLdap => " — the cookie is older than what syncprov remembers",
        _ => "",
    }
}

/// A syncUUID as `entryUUID` text (how OpenLDAP names entries).
fn entry_uuid(id: &SyncId) -> StableId {
    StableId(id.entry_uuid())
}

/// Why a changed entry's `entryUUID` is not the id the server named it by, if it is not:
/// the server names entries by something else, and its deletions cannot be trusted to be
/// `entryUUID`s either.
fn named_unlike(id: &SyncId, se: &SearchEntry) -> Option<String> {
    let uuid = se
        .attrs
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("entryUUID"))
        .and_then(|(_, v)| v.first());
    match uuid.and_then(|u| SyncId::from_text(u)) {
        Some(own) if own == *id => None,
        Some(_) => Some(format!(
            "the server named `{}` by {} in a sync message, not by its entryUUID",
            se.dn,
            id.entry_uuid()
        )),
        None => Some(format!(
            "`{}` came in a sync message without a readable entryUUID",
            se.dn
        )),
    }
}

/// Deletions come as the server's sync ids: OpenLDAP's are entryUUIDs, which name agents only
/// when entryUUID (text) is the stable id. 389-DS's (`nsUniqueId`) are turned into stable ids
/// through what earlier reads recorded, whatever the stable id.
fn ids_unlike_sync_ids(query: &AgentQuery, dialect: SyncDialect) -> Option<String> {
    let entry_uuid = query.id_attribute.eq_ignore_ascii_case("entryUUID")
        && matches!(query.id_format, IdFormat::Text);
    (dialect == SyncDialect::Standard && !entry_uuid).then(|| {
        format!(
            "content sync names deleted entries by entryUUID, but the stable id is `{}`",
            query.id_attribute
        )
    })
}

/// The stored cookie of `base`, or why there is none to send.
fn usable_cookie<'c>(
    base: &str,
    cookies: &'c BTreeMap<String, Vec<u8>>,
) -> Result<&'c Vec<u8>, String> {
    let cookie = cookies.get(base).ok_or_else(|| {
        format!("no sync cookie for the base `{base}` (a base added since the last complete read?)")
    })?;
    match cookie_problem(cookie) {
        Some(problem) => Err(format!("the sync cookie for `{base}` {problem}")),
        None => Ok(cookie),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn entry(dn: &str, uuid: Option<&str>) -> SearchEntry {
        let mut attrs = HashMap::new();
        if let Some(uuid) = uuid {
            attrs.insert("entryUUID".to_string(), vec![uuid.to_string()]);
        }
        SearchEntry {
            dn: dn.into(),
            attrs,
            bin_attrs: HashMap::new(),
        }
    }

    #[test]
    fn entries_must_be_named_by_their_entry_uuid() {
        let uuid = "bd516b60-7bcc-1041-9825-e1530de49dab";
        let id = SyncId::from_text(uuid).unwrap();
        assert_eq!(named_unlike(&id, &entry("uid=a", Some(uuid))), None);
        let other = SyncId::from_text("a9434909-f01311f1-bc0ad3af-a5436761").unwrap();
        let why = named_unlike(&other, &entry("uid=a", Some(uuid))).unwrap();
        assert!(
            why.contains("uid=a") && why.contains("not by its entryUUID"),
            "{why}"
        );
        let why = named_unlike(&id, &entry("uid=b", None)).unwrap();
        assert!(why.contains("without a readable entryUUID"), "{why}");
    }

    #[test]
    fn only_entry_uuid_ids_match_standard_sync_ids() {
        let mut q = AgentQuery {
            filter: "(objectClass=inetOrgPerson)".into(),
            attributes: vec![],
            id_attribute: "entryuuid".into(),
            id_format: IdFormat::Text,
        };
        assert_eq!(ids_unlike_sync_ids(&q, SyncDialect::Standard), None);
        q.id_attribute = "employeeNumber".into();
        assert!(ids_unlike_sync_ids(&q, SyncDialect::Standard)
            .unwrap()
            .contains("employeeNumber"));
        // 389-DS ids are resolved through the recorded nsUniqueIds, whatever the stable id.
        q.id_attribute = "ipaUniqueID".into();
        assert_eq!(ids_unlike_sync_ids(&q, SyncDialect::Ds389), None);
    }

    #[test]
    fn the_sync_filter_is_the_same_for_watermark_and_changes() {
        let q = AgentQuery {
            filter: "(&(objectClass=inetOrgPerson)(uid=*))".into(),
            attributes: vec![],
            id_attribute: "entryUUID".into(),
            id_format: IdFormat::Text,
        };
        assert_eq!(sync_filter(SyncDialect::Standard, &q), q.filter);
        assert_eq!(sync_filter(SyncDialect::Ds389, &q), "(objectClass=*)");
    }
}
