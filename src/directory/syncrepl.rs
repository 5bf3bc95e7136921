//! RFC 4533 content synchronization, refreshOnly: the changes since a cookie.
//!
//! What OpenLDAP's syncprov (2.5) answers, as seen against a real slapd:
//! - Without a cookie: every matching entry (state add), then a SyncDone cookie
//!   `rid=000,csn=<contextCSN>`. The cookie is the database's, whatever the filter, so the
//!   watermark asks with a filter that matches nothing and that the objectClass index answers
//!   at once: no entry is read (the agent filter ANDed with `(!(objectClass=*))` alone made
//!   slapd test every agent: 0.13 s for 100k).
//! - With a cookie and `syncprov-sessionlog`: a delete phase. Changed entries (state add, for a
//!   modify or a rename as well), syncIdSets (refreshDeletes TRUE) of the entryUUIDs deleted,
//!   moved out of the base or no longer matching the filter, SyncDone refreshDeletes TRUE.
//!   The log is replayed unscoped: every entry of the *database* deleted or modified since
//!   the cookie and not returned by this search is listed as deleted, wherever it is. So
//!   `deleted` also holds ids the caller never saw (to ignore), and an id one base calls
//!   deleted but another returned is not deleted ([`merge`]).
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
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Duration;

use ldap3::controls::{
    parse_syncinfo, Control, ControlType, EntryState, MakeCritical, RefreshMode, SyncDone,
    SyncInfo, SyncRequest, SyncState,
};
use ldap3::{ResultEntry, Scope, SearchEntry};
use tracing::{info, warn};

use super::changes::{Changes, Incremental, Watermark};
use super::error::DirectoryError;
use super::reader::{check_success, decode_entry, requested_attributes, Collector, Directory};
use super::snapshot::{Entry, StableId};
use super::{AgentQuery, IdFormat};

/// e-syncRefreshRequired (RFC 4533): the server cannot answer from this cookie.
const SYNC_REFRESH_REQUIRED: u32 = 4096;
/// unwillingToPerform: slapd's answer to a cookie newer than its database.
const UNWILLING_TO_PERFORM: u32 = 53;
/// unavailableCriticalExtension: no content sync on the database holding the base.
const UNAVAILABLE_CRITICAL_EXTENSION: u32 = 12;

/// ANDed to the agent filter for the watermark. No entry matches (every entry has an object
/// class, none has the OID 0.0.0), and the indexed `(objectClass=0.0.0)` has no candidates.
const MATCH_NOTHING: &str = "(objectClass=0.0.0)(!(objectClass=*))";

impl Directory {
    /// A cookie per base, taken before a full read. A base the server gives no cookie for is
    /// left out (logged): the next incremental read then asks for a full one.
    pub(super) async fn syncrepl_watermark(
        &mut self,
        bases: &[String],
        query: &AgentQuery,
        timeout: Duration,
    ) -> Result<Watermark, DirectoryError> {
        let filter = format!("(&{}{MATCH_NOTHING})", query.filter);
        let no_attributes = ["1.1".to_string()];
        let mut cookies = BTreeMap::new();
        for base in bases {
            let outcome = self
                .refresh(base, &filter, &no_attributes, None, timeout, &mut |_| {})
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
        })
    }

    /// The changes since `cookies`: one refreshOnly search per base, with the agent filter and
    /// attributes, entries converted and handed to `pass` as in a full read.
    pub(super) async fn syncrepl_changes(
        &mut self,
        bases: &[String],
        query: &AgentQuery,
        cookies: &BTreeMap<String, Vec<u8>>,
        timeout: Duration,
        pass: &mut (dyn FnMut(Entry) -> Option<Entry> + Send),
    ) -> Result<Incremental, DirectoryError> {
        if bases.is_empty() {
            return Err(DirectoryError::Config("no search base given".into()));
        }
        if let Some(reason) = ids_unlike_sync_uuids(query) {
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
        let attrs = requested_attributes(query);
        let mut collector = Collector::passing(query, pass);
        let mut refreshes = Vec::new();
        let mut next_cookies = BTreeMap::new();
        for (base, cookie) in base_cookies {
            let outcome = self
                .refresh(
                    base,
                    &query.filter,
                    &attrs,
                    Some(cookie),
                    timeout,
                    &mut |se| collector.add(se),
                )
                .await?;
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
            refreshes.push(refresh);
        }
        let Some((deleted, present)) = merge(refreshes) else {
            return Ok(Incremental::FullReadNeeded(
                "some bases answered with a present phase, others with a delete phase: the \
                 agents still there cannot be told for all of them"
                    .into(),
            ));
        };
        let snapshot = collector.into_snapshot(self.server().to_string());
        info!(
            changed = snapshot.entries.len() + snapshot.passed_on,
            skipped = snapshot.skipped.len(),
            deleted = deleted.len(),
            present = present.as_ref().map(BTreeSet::len),
            bases = bases.len(),
            server = %self.server(),
            "directory: changes since the sync cookies read"
        );
        Ok(Incremental::Changes(Changes {
            snapshot,
            deleted,
            present,
            watermark: Watermark::Syncrepl {
                server: self.server().to_string(),
                cookies: next_cookies,
            },
        }))
    }

    /// One refreshOnly search of `base` from `cookie` (none: from scratch), each changed
    /// entry handed to `entry`. The sync control is critical: a database without content sync
    /// must refuse it, not answer a plain search that would look like a list of changes.
    async fn refresh(
        &mut self,
        base: &str,
        filter: &str,
        attrs: &[String],
        cookie: Option<&Vec<u8>>,
        timeout: Duration,
        entry: &mut (dyn FnMut(SearchEntry) + Send),
    ) -> Result<Outcome, DirectoryError> {
        let url = self.server().to_string();
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
                Scope::Subtree,
                filter,
                attrs,
                vec![control.into()],
                timeout,
                &what,
                &mut |re| {
                    if let Some(re) = refresh.take(re).map_err(protocol)? {
                        entry(decode_entry(&url, &what("reading"), re)?);
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
                    "the server asks for a full refresh of `{base}` (e-syncRefreshRequired{})",
                    said(&result.text)
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
                     unavailableCriticalExtension{}): is syncprov on its database?",
                    said(&result.text)
                )))
            }
            _ => check_success(&url, base, filter, &result)?,
        }
        let done = sync_done(&result.ctrls)
            .map_err(protocol)?
            .ok_or_else(|| protocol("the search ended without a Sync Done control".into()))?;
        if !done.refresh_deletes {
            refresh.present_phase = true;
        }
        refresh.newer_cookie(done.cookie);
        Ok(Outcome::Done(refresh))
    }
}

/// How one base's refresh ended.
enum Outcome {
    Done(BaseRefresh),
    /// The server cannot go on from the cookie (or has no content sync there): why.
    Refused(String),
}

/// What one base's refresh said, by entryUUID.
#[derive(Default)]
struct BaseRefresh {
    changed: BTreeSet<StableId>,
    deleted: BTreeSet<StableId>,
    present: BTreeSet<StableId>,
    /// The server listed what is still there (refreshDeletes FALSE), not what went.
    present_phase: bool,
    /// The latest cookie the server sent (Sync Info, Sync State or Sync Done).
    cookie: Option<Vec<u8>>,
}

impl BaseRefresh {
    /// Takes one message of the refresh in; returns it back if it is a changed entry to
    /// convert. Err: what could not be decoded.
    fn take(&mut self, re: ResultEntry) -> Result<Option<ResultEntry>, String> {
        if re.is_ref() {
            return Ok(None);
        }
        if re.is_intermediate() {
            let info = catch_unwind(AssertUnwindSafe(move || parse_syncinfo(re)))
                .map_err(|_| "an undecodable Sync Info message".to_string())?;
            return self.info(info).map(|()| None);
        }
        let state = sync_state(&re.1)?;
        let id = uuid_text(&state.entry_uuid)?;
        self.newer_cookie(state.cookie);
        match state.state {
            // Present entries carry no attributes: not entries to convert.
            EntryState::Present => {
                self.present_phase = true;
                self.present.insert(id);
                Ok(None)
            }
            EntryState::Delete => {
                self.deleted.insert(id);
                Ok(None)
            }
            EntryState::Add | EntryState::Modify => {
                self.changed.insert(id);
                Ok(Some(re))
            }
        }
    }

    fn info(&mut self, info: SyncInfo) -> Result<(), String> {
        match info {
            SyncInfo::NewCookie(cookie) => self.newer_cookie(Some(cookie)),
            SyncInfo::RefreshDelete { cookie, .. } => self.newer_cookie(cookie),
            SyncInfo::RefreshPresent { cookie, .. } => {
                self.present_phase = true;
                self.newer_cookie(cookie);
            }
            SyncInfo::SyncIdSet {
                cookie,
                refresh_deletes,
                sync_uuids,
            } => {
                self.newer_cookie(cookie);
                let ids = if refresh_deletes {
                    &mut self.deleted
                } else {
                    self.present_phase = true;
                    &mut self.present
                };
                for uuid in sync_uuids {
                    ids.insert(uuid_text(&uuid)?);
                }
            }
        }
        Ok(())
    }

    fn newer_cookie(&mut self, cookie: Option<Vec<u8>>) {
        if cookie.is_some() {
            self.cookie = cookie;
        }
    }
}

/// The deleted ids of all bases and, after present phases, the ids still there (present or
/// changed). An id gone from one base but changed or present in another (moved between
/// bases, overlapping bases) is not deleted; a changed entry is there whatever else was
/// said of it. None when some bases ran a present phase and others a delete phase.
fn merge(refreshes: Vec<BaseRefresh>) -> Option<(BTreeSet<StableId>, Option<BTreeSet<StableId>>)> {
    let present_phase = refreshes.first().is_some_and(|r| r.present_phase);
    if refreshes.iter().any(|r| r.present_phase != present_phase) {
        return None;
    }
    let mut there = BTreeSet::new();
    let mut deleted = BTreeSet::new();
    for r in refreshes {
        // RFC 4533 order: a present phase may be followed by a delete phase.
        there.extend(r.present.into_iter().filter(|id| !r.deleted.contains(id)));
        there.extend(r.changed);
        deleted.extend(r.deleted);
    }
    deleted.retain(|id| !there.contains(id));
    Some((deleted, present_phase.then_some(there)))
}

/// The Sync State control of an entry.
fn sync_state(ctrls: &[Control]) -> Result<SyncState, String> {
    let raw = ctrls
        .iter()
        .find_map(|Control(kind, raw)| matches!(kind, Some(ControlType::SyncState)).then_some(raw))
        .ok_or("an entry without a Sync State control")?;
    if raw.val.is_none() {
        return Err("an empty Sync State control".into());
    }
    catch_unwind(AssertUnwindSafe(|| raw.parse::<SyncState>()))
        .map_err(|_| "an undecodable Sync State control".into())
}

/// The Sync Done control of a search result, if any.
fn sync_done(ctrls: &[Control]) -> Result<Option<SyncDone>, String> {
    let Some(raw) = ctrls
        .iter()
        .find_map(|Control(kind, raw)| matches!(kind, Some(ControlType::SyncDone)).then_some(raw))
    else {
        return Ok(None);
    };
    if raw.val.is_none() {
        return Err("an empty Sync Done control".into());
    }
    catch_unwind(AssertUnwindSafe(|| raw.parse::<SyncDone>()))
        .map(Some)
        .map_err(|_| "an undecodable Sync Done control".into())
}

/// A syncUUID (16 raw bytes) in entryUUID's text form, `8-4-4-4-12` lowercase hex.
fn uuid_text(bytes: &[u8]) -> Result<StableId, String> {
    if bytes.len() != 16 {
        return Err(format!("a syncUUID of {} bytes, 16 expected", bytes.len()));
    }
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    Ok(StableId(format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )))
}

/// Deletions come as syncUUIDs, which are entryUUIDs: they only name agents when entryUUID
/// (text) is the stable id.
fn ids_unlike_sync_uuids(query: &AgentQuery) -> Option<String> {
    let entry_uuid = query.id_attribute.eq_ignore_ascii_case("entryUUID")
        && matches!(query.id_format, IdFormat::Text);
    (!entry_uuid).then(|| {
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

/// Why a stored cookie cannot be sent. slapd takes a cookie without a valid CSN for no cookie
/// at all and answers with every entry as added and none deleted, which would hide
/// deletions. Only cookies in OpenLDAP's syntax (`rid=000,csn=…`) are checked; other servers'
/// are theirs to judge.
fn cookie_problem(cookie: &[u8]) -> Option<&'static str> {
    if cookie.is_empty() {
        return Some("is empty");
    }
    let text = std::str::from_utf8(cookie).ok()?;
    let fields: Vec<(&str, &str)> = text.split(',').filter_map(|f| f.split_once('=')).collect();
    let openldap = fields
        .iter()
        .any(|(k, _)| matches!(*k, "rid" | "sid" | "csn" | "delcsn"));
    if !openldap {
        return None;
    }
    let csns: Vec<&str> = fields
        .iter()
        .filter(|(k, _)| *k == "csn")
        .flat_map(|(_, v)| v.split(';'))
        .filter(|c| !c.is_empty())
        .collect();
    if csns.is_empty() || !csns.iter().all(|c| is_csn(c)) {
        return Some("holds no valid OpenLDAP CSN (slapd would take it for no cookie)");
    }
    None
}

/// `20261123210145.374641Z#000000#000#000000`: time, count, server id, modification number.
fn is_csn(csn: &str) -> bool {
    let parts: Vec<&str> = csn.split('#').collect();
    let [time, count, sid, number] = parts.as_slice() else {
        return false;
    };
    let hex = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
    let time = time.as_bytes();
    time.len() == 22
        && time[..14].iter().all(u8::is_ascii_digit)
        && time[14] == b'.'
        && time[15..21].iter().all(u8::is_ascii_digit)
        && time[21] == b'Z'
        && hex(count, 6)
        && hex(sid, 3)
        && hex(number, 6)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn ids(list: &[&str]) -> BTreeSet<StableId> {
        list.iter().map(|s| StableId(s.to_string())).collect()
    }

    #[test]
    fn sync_uuids_read_as_entry_uuids() {
        let bytes = [
            0xbd, 0x51, 0x6b, 0x60, 0x7b, 0xcc, 0x10, 0x41, 0x98, 0x25, 0xe1, 0x53, 0x0d, 0xe4,
            0x9d, 0xab,
        ];
        assert_eq!(
            uuid_text(&bytes).unwrap().0,
            "bd516b60-7bcc-1041-9825-e1530de49dab"
        );
        assert!(uuid_text(&bytes[..15]).is_err());
    }

    #[test]
    fn openldap_cookies_need_a_valid_csn() {
        let good = b"rid=000,csn=20261123210145.374641Z#000000#000#000000";
        assert_eq!(cookie_problem(good), None);
        let two = b"rid=000,csn=20261123210145.374641Z#000000#000#000000;20261123210145.374641Z#000000#001#000000";
        assert_eq!(cookie_problem(two), None);
        assert!(cookie_problem(b"").is_some());
        assert!(cookie_problem(b"rid=000").is_some());
        assert!(cookie_problem(b"rid=000,csn=garbage").is_some());
        assert!(cookie_problem(b"rid=000,csn=20261123210145.374641Z#000000#000").is_some());
        // Not OpenLDAP's syntax: the server judges.
        assert_eq!(cookie_problem(b"host:389#cn=dm:dc=x#42"), None);
        assert_eq!(cookie_problem(&[0xff, 0x00, 0x01]), None);
    }

    #[test]
    fn moved_between_bases_is_not_deleted() {
        let a = BaseRefresh {
            deleted: ids(&["x", "gone"]),
            ..Default::default()
        };
        let b = BaseRefresh {
            changed: ids(&["x"]),
            ..Default::default()
        };
        let (deleted, present) = merge(vec![a, b]).unwrap();
        assert_eq!(deleted, ids(&["gone"]));
        assert_eq!(present, None);
    }

    #[test]
    fn present_phase_lists_present_and_changed() {
        let a = BaseRefresh {
            present: ids(&["p", "q", "later-deleted"]),
            changed: ids(&["c"]),
            deleted: ids(&["later-deleted"]),
            present_phase: true,
            ..Default::default()
        };
        let (deleted, present) = merge(vec![a]).unwrap();
        assert_eq!(deleted, ids(&["later-deleted"]));
        assert_eq!(present, Some(ids(&["c", "p", "q"])));
    }

    #[test]
    fn mixed_phases_cannot_be_merged() {
        let a = BaseRefresh {
            present_phase: true,
            ..Default::default()
        };
        assert!(merge(vec![a, BaseRefresh::default()]).is_none());
        assert_eq!(merge(Vec::new()), Some((BTreeSet::new(), None)));
    }

    #[test]
    fn only_entry_uuid_ids_match_sync_uuids() {
        let mut q = AgentQuery {
            filter: "(objectClass=inetOrgPerson)".into(),
            attributes: vec![],
            id_attribute: "entryuuid".into(),
            id_format: IdFormat::Text,
        };
        assert_eq!(ids_unlike_sync_uuids(&q), None);
        q.id_attribute = "employeeNumber".into();
        assert!(ids_unlike_sync_uuids(&q)
            .unwrap()
            .contains("employeeNumber"));
    }
}
