//! What one RFC 4533 refresh said, message by message, and what it means: which entries
//! changed, which went, and whether the server listed the deleted entries (a delete phase) or
//! those still there (a present phase). Pure: no connection here.
//!
//! RFC 4533, 3.3.2: a refresh is a present phase, a delete phase, or a present phase followed
//! by a delete phase. In a present phase the server names every unchanged entry still there
//! (state present, or a syncIdSet with refreshDeletes FALSE): an entry neither named nor
//! changed is gone. In a delete phase it names the entries gone (state delete, or a syncIdSet
//! with refreshDeletes TRUE): every other entry is unchanged. The Sync Done control's
//! refreshDeletes says which phase came last: TRUE a delete phase, FALSE a present phase.
//!
//! Servers differ from the letter of it:
//! - OpenLDAP (syncprov) follows it, and answers "nothing changed" with a bare Sync Done,
//!   refreshDeletes TRUE.
//! - 389-DS ends every refresh with refreshDeletes FALSE (hard-coded, as its source says),
//!   while what it sends is a delete phase: deleted entries in syncIdSets with refreshDeletes
//!   TRUE, and no entry named present. Read by the letter, every unchanged entry would be
//!   gone; [`phase`] reads it as the delete phase it is, for that server only.
//! - A Sync Done with refreshDeletes FALSE after no message of a present phase is, by the
//!   letter, "every unchanged entry is gone". From any other server than 389-DS that is not
//!   trusted: a complete read decides (it costs one read; believing it could cost everyone).

use std::collections::BTreeSet;
use std::panic::{catch_unwind, AssertUnwindSafe};

use ldap3::controls::{
    parse_syncinfo, Control, ControlType, EntryState, SyncDone, SyncInfo, SyncState,
};
use ldap3::ResultEntry;

use super::changes::{SyncDialect, SyncId};

/// What one base's refresh said, by the ids the server named entries with.
#[derive(Debug, Default)]
pub(super) struct BaseRefresh {
    pub(super) changed: BTreeSet<SyncId>,
    pub(super) deleted: BTreeSet<SyncId>,
    pub(super) present: BTreeSet<SyncId>,
    /// A message only a present phase sends was seen (an entry in state present, a syncIdSet
    /// with refreshDeletes FALSE, a refreshPresent Sync Info).
    pub(super) saw_present: bool,
    /// The Sync Done control's refreshDeletes (set once the refresh ended).
    pub(super) done_deletes: bool,
    /// The latest cookie the server sent (Sync Info, Sync State or Sync Done).
    pub(super) cookie: Option<Vec<u8>>,
}

/// How a refresh tells what went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// The entries gone were named: the others are as they were.
    Delete,
    /// The entries still there were named: the others (not changed either) are gone.
    Present,
}

impl BaseRefresh {
    /// Takes one message of the refresh in; returns it back, with the id the server named it
    /// by, if it is a changed entry to convert. Err: what could not be decoded.
    pub(super) fn take(
        &mut self,
        re: ResultEntry,
    ) -> Result<Option<(SyncId, ResultEntry)>, String> {
        if re.is_ref() {
            return Ok(None);
        }
        if re.is_intermediate() {
            let info = catch_unwind(AssertUnwindSafe(move || parse_syncinfo(re)))
                .map_err(|_| "an undecodable Sync Info message".to_string())?;
            return self.info(info).map(|()| None);
        }
        let state = sync_state(&re.1)?;
        let id = sync_id(&state.entry_uuid)?;
        self.newer_cookie(state.cookie);
        match state.state {
            // Present entries carry no attributes: not entries to convert.
            EntryState::Present => {
                self.saw_present = true;
                self.present.insert(id);
                Ok(None)
            }
            EntryState::Delete => {
                self.deleted.insert(id);
                Ok(None)
            }
            EntryState::Add | EntryState::Modify => {
                self.changed.insert(id.clone());
                Ok(Some((id, re)))
            }
        }
    }

    fn info(&mut self, info: SyncInfo) -> Result<(), String> {
        match info {
            SyncInfo::NewCookie(cookie) => self.newer_cookie(Some(cookie)),
            SyncInfo::RefreshDelete { cookie, .. } => self.newer_cookie(cookie),
            SyncInfo::RefreshPresent { cookie, .. } => {
                self.saw_present = true;
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
                    self.saw_present = true;
                    &mut self.present
                };
                for uuid in sync_uuids {
                    ids.insert(sync_id(&uuid)?);
                }
            }
        }
        Ok(())
    }

    /// The end of the refresh: its Sync Done control.
    pub(super) fn done(&mut self, done: SyncDone) {
        self.done_deletes = done.refresh_deletes;
        self.newer_cookie(done.cookie);
    }

    fn newer_cookie(&mut self, cookie: Option<Vec<u8>>) {
        if cookie.is_some() {
            self.cookie = cookie;
        }
    }
}

/// Which phase a finished refresh was, from what the server sent and how it speaks (see the
/// module doc); Err: why it cannot be trusted.
pub(super) fn phase(refresh: &BaseRefresh, dialect: SyncDialect) -> Result<Phase, String> {
    match (dialect, refresh.saw_present, refresh.done_deletes) {
        (SyncDialect::Ds389, true, _) => Err(
            "389-DS named entries still there (a present phase), which its content sync is not \
             known to do: the entries it left out cannot be told gone or unchanged"
                .into(),
        ),
        // A present phase, maybe followed by a delete phase.
        (SyncDialect::Standard, true, _) => Ok(Phase::Present),
        (_, false, true) => Ok(Phase::Delete),
        (SyncDialect::Ds389, false, false) => Ok(Phase::Delete),
        (SyncDialect::Standard, false, false) => Err(
            "the server ended the refresh with refreshDeletes FALSE (a present phase) without \
             naming any entry still there: read by the letter of RFC 4533 every unchanged \
             agent would be gone"
                .into(),
        ),
    }
}

/// The deleted ids of all bases and, after present phases, the ids still there (present or
/// changed). An id gone from one base but changed or present in another (moved between
/// bases, overlapping bases) is not deleted; a changed entry is there whatever else was
/// said of it. None when some bases ran a present phase and others a delete phase.
#[allow(clippy::type_complexity)]
pub(super) fn merge(
    refreshes: Vec<(BaseRefresh, Phase)>,
) -> Option<(BTreeSet<SyncId>, Option<BTreeSet<SyncId>>)> {
    let present_phase = refreshes.first().is_some_and(|(_, p)| *p == Phase::Present);
    if refreshes
        .iter()
        .any(|(_, p)| (*p == Phase::Present) != present_phase)
    {
        return None;
    }
    let mut there = BTreeSet::new();
    let mut deleted = BTreeSet::new();
    for (r, _) in refreshes {
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
pub(super) fn sync_done(ctrls: &[Control]) -> Result<Option<SyncDone>, String> {
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

/// A syncUUID (16 raw bytes).
fn sync_id(bytes: &[u8]) -> Result<SyncId, String> {
    SyncId::from_bytes(bytes)
        .ok_or_else(|| format!("a syncUUID of {} bytes, 16 expected", bytes.len()))
}

/// Why a stored cookie cannot be sent. slapd takes a cookie without a valid CSN for no cookie
/// at all and answers with every entry as added and none deleted, which would hide
/// deletions. Only cookies in OpenLDAP's syntax (`rid=000,csn=…`) are checked; other servers'
/// are theirs to judge.
pub(super) fn cookie_problem(cookie: &[u8]) -> Option<&'static str> {
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

    fn id(n: u8) -> SyncId {
        SyncId::from_bytes(&[n; 16]).unwrap()
    }

    fn ids(list: &[u8]) -> BTreeSet<SyncId> {
        list.iter().map(|n| id(*n)).collect()
    }

    #[test]
    fn sync_uuids_in_either_text_form() {
        let bytes = [
            0xbd, 0x51, 0x6b, 0x60, 0x7b, 0xcc, 0x10, 0x41, 0x98, 0x25, 0xe1, 0x53, 0x0d, 0xe4,
            0x9d, 0xab,
        ];
        let id = sync_id(&bytes).unwrap();
        assert_eq!(id.entry_uuid(), "bd516b60-7bcc-1041-9825-e1530de49dab");
        assert_eq!(id.ns_unique_id(), "bd516b60-7bcc1041-9825e153-0de49dab");
        assert_eq!(
            SyncId::from_text("BD516B60-7BCC1041-9825E153-0DE49DAB"),
            Some(id.clone())
        );
        assert_eq!(
            SyncId::from_text("bd516b60-7bcc-1041-9825-e1530de49dab"),
            Some(id)
        );
        assert!(sync_id(&bytes[..15]).is_err());
        assert_eq!(SyncId::from_text("not-an-id"), None);
        assert_eq!(SyncId::from_text(""), None);
    }

    #[test]
    fn the_phase_is_what_the_server_did() {
        let delete_phase = BaseRefresh {
            deleted: ids(&[1]),
            done_deletes: true,
            ..Default::default()
        };
        assert_eq!(
            phase(&delete_phase, SyncDialect::Standard),
            Ok(Phase::Delete)
        );
        let present_phase = BaseRefresh {
            present: ids(&[1]),
            saw_present: true,
            ..Default::default()
        };
        assert_eq!(
            phase(&present_phase, SyncDialect::Standard),
            Ok(Phase::Present)
        );
        // Present then delete phase: the present phase decides who is there.
        let both = BaseRefresh {
            saw_present: true,
            done_deletes: true,
            ..Default::default()
        };
        assert_eq!(phase(&both, SyncDialect::Standard), Ok(Phase::Present));
    }

    #[test]
    fn refresh_deletes_false_with_nothing_present_is_trusted_from_389_ds_only() {
        // What 389-DS sends: deletions in a syncIdSet (refreshDeletes TRUE), Sync Done FALSE.
        let ds389 = BaseRefresh {
            deleted: ids(&[1]),
            changed: ids(&[2]),
            done_deletes: false,
            ..Default::default()
        };
        assert_eq!(phase(&ds389, SyncDialect::Ds389), Ok(Phase::Delete));
        let why = phase(&ds389, SyncDialect::Standard).unwrap_err();
        assert!(why.contains("refreshDeletes FALSE"), "{why}");
        // 389-DS naming entries present is not what it does: not trusted either.
        let odd = BaseRefresh {
            saw_present: true,
            ..Default::default()
        };
        assert!(phase(&odd, SyncDialect::Ds389).is_err());
    }

    #[test]
    fn moved_between_bases_is_not_deleted() {
        let a = BaseRefresh {
            deleted: ids(&[1, 9]),
            ..Default::default()
        };
        let b = BaseRefresh {
            changed: ids(&[1]),
            ..Default::default()
        };
        let (deleted, present) = merge(vec![(a, Phase::Delete), (b, Phase::Delete)]).unwrap();
        assert_eq!(deleted, ids(&[9]));
        assert_eq!(present, None);
    }

    #[test]
    fn present_phase_lists_present_and_changed() {
        let a = BaseRefresh {
            present: ids(&[1, 2, 7]),
            changed: ids(&[3]),
            deleted: ids(&[7]),
            saw_present: true,
            ..Default::default()
        };
        let (deleted, present) = merge(vec![(a, Phase::Present)]).unwrap();
        assert_eq!(deleted, ids(&[7]));
        assert_eq!(present, Some(ids(&[1, 2, 3])));
    }

    #[test]
    fn mixed_phases_cannot_be_merged() {
        let a = (BaseRefresh::default(), Phase::Present);
        let b = (BaseRefresh::default(), Phase::Delete);
        assert!(merge(vec![a, b]).is_none());
        assert_eq!(merge(Vec::new()), Some((BTreeSet::new(), None)));
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
}
