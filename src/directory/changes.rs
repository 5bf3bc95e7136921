//! Incremental reads: what changed in the directory since the last complete read, in the
//! server's own terms (an RFC 4533 sync cookie, an AD update sequence number), never the
//! client's clock.
//!
//! A full read takes a [`Watermark`] *before* it starts, so that a change made during the read
//! is read again next time (reading a change twice is harmless; missing one is not). The caller
//! stores the watermark only once the run it fed has fully succeeded.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tracing::info;

use super::error::DirectoryError;
use super::reader::Directory;
use super::server::ServerKind;
use super::snapshot::{Entry, Snapshot, StableId};
use super::AgentQuery;

/// The content synchronization (RFC 4533) request control.
pub(super) const SYNC_REQUEST_OID: &str = "1.3.6.1.4.1.4203.1.9.1.1";

/// Where a complete read left off.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Watermark {
    /// RFC 4533 content synchronization (OpenLDAP syncprov, 389-DS content sync): the cookie
    /// each search base's refresh ended with.
    Syncrepl {
        /// The directory URL that gave the cookies.
        server: String,
        /// Search base → cookie.
        cookies: BTreeMap<String, Vec<u8>>,
        /// How the server that gave them speaks content sync (watermarks of older versions
        /// have none: they were only ever usable on OpenLDAP).
        #[serde(default)]
        dialect: SyncDialect,
    },
    /// Active Directory: the DC's `highestCommittedUSN` when the read began. USNs are local to
    /// one DC's database (`invocationId`): on another DC, or a restored one, they mean nothing.
    Usn {
        server: String,
        invocation_id: String,
        usn: u64,
    },
}

impl Watermark {
    /// The directory URL that gave it.
    pub fn server(&self) -> &str {
        match self {
            Watermark::Syncrepl { server, .. } | Watermark::Usn { server, .. } => server,
        }
    }

    /// How it reads, for logs and `status`.
    pub fn describe(&self) -> String {
        match self {
            Watermark::Syncrepl {
                server,
                cookies,
                dialect,
            } => format!(
                "{} cookies for {} base(s) from {server}",
                dialect.name(),
                cookies.len()
            ),
            Watermark::Usn {
                server,
                invocation_id,
                usn,
            } => format!("USN {usn} of DC {invocation_id} ({server})"),
        }
    }
}

/// How a server speaks RFC 4533 content synchronization: what it names entries by in its
/// sync messages, and what its refreshes leave out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncDialect {
    /// As OpenLDAP's syncprov: entries named by their `entryUUID`, sent with the attributes
    /// asked for, the filter applied to deletions too (an entry that leaves it is deleted).
    #[default]
    Standard,
    /// 389-DS content sync (not in its OpenLDAP-compatible mode): entries named by their
    /// `nsUniqueId`; changed entries sent with their user attributes only (no `entryUUID`, no
    /// `nsAccountLock`); an entry that no longer matches the filter is not reported at all;
    /// every refresh ends with refreshDeletes FALSE although deletions come as a delete phase;
    /// the cookie holds the bind DN, base and filter it was taken with. See [`super::ds389`].
    Ds389,
}

impl SyncDialect {
    /// The dialect of a server of this kind.
    pub(super) fn of(kind: ServerKind) -> SyncDialect {
        match kind {
            ServerKind::Ds389 => SyncDialect::Ds389,
            _ => SyncDialect::Standard,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            SyncDialect::Standard => "RFC 4533 content sync",
            SyncDialect::Ds389 => "389-DS content sync",
        }
    }
}

/// The 16 bytes a server names an entry by in content-sync messages (a syncUUID), as 32
/// lowercase hex digits: what both an `entryUUID` and a 389-DS `nsUniqueId` are, written
/// without their dashes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SyncId(String);

impl SyncId {
    pub fn from_bytes(bytes: &[u8]) -> Option<SyncId> {
        (bytes.len() == 16).then(|| SyncId(bytes.iter().map(|b| format!("{b:02x}")).collect()))
    }

    /// From an `entryUUID` (`8-4-4-4-12`) or `nsUniqueId` (`8-8-8-8`) text, any case.
    pub fn from_text(text: &str) -> Option<SyncId> {
        let hex: String = text
            .trim()
            .chars()
            .filter(|c| *c != '-')
            .map(|c| c.to_ascii_lowercase())
            .collect();
        (hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then_some(SyncId(hex))
    }

    pub fn hex(&self) -> &str {
        &self.0
    }

    /// In `entryUUID`'s text form, `8-4-4-4-12`.
    pub fn entry_uuid(&self) -> String {
        let h = &self.0;
        format!(
            "{}-{}-{}-{}-{}",
            &h[0..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..32]
        )
    }

    /// In 389-DS `nsUniqueId`'s text form, `8-8-8-8`.
    pub fn ns_unique_id(&self) -> String {
        let h = &self.0;
        format!("{}-{}-{}-{}", &h[0..8], &h[8..16], &h[16..24], &h[24..32])
    }
}

impl std::fmt::Display for SyncId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What changed since a watermark. Like a Snapshot, it exists only if every search it took
/// ended with result code success.
#[derive(Debug, Clone)]
pub struct Changes {
    /// Agent entries added or changed since the watermark (as a full read would return them),
    /// and entries that could not be agents. No groups: room memberships follow on full reads.
    pub snapshot: Snapshot,
    /// Agents the directory says were deleted, or that left the agent filter or bases. May also
    /// hold ids that were never agents (OpenLDAP lists every deletion and modification in the
    /// database outside the search): ignore ids you do not know.
    pub deleted: BTreeSet<StableId>,
    /// When the server listed the agents still there instead of the deleted ones (RFC 4533
    /// present phase): every agent id still there, changed or not. A managed agent neither
    /// here nor in `snapshot` is gone.
    pub present: Option<BTreeSet<StableId>>,
    /// Entries deleted or gone from the agents, by the id the server named them with when
    /// that is not the stable id (389-DS: `nsUniqueId`): only the ids recorded from earlier
    /// reads ([`Snapshot::sync_ids`]) turn them into agents. Ids never recorded were never read
    /// as agents (groups, other entries): ignore them.
    pub deleted_sync_ids: BTreeSet<SyncId>,
    /// Where this read leaves off.
    pub watermark: Watermark,
}

/// The answer to an incremental read.
// One per run, moved once: boxing the large variant would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Incremental {
    Changes(Changes),
    /// The watermark cannot be used (another DC answered, the server forgot the cookie, …): a
    /// full read is needed. Says why.
    FullReadNeeded(String),
}

/// What the server offers for incremental reads, from its root DSE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Support {
    Syncrepl(SyncDialect),
    /// AD: `highestCommittedUSN` now, and the `dsServiceName` of the DC (its NTDS Settings
    /// object, which holds its `invocationId`).
    Usn {
        highest: u64,
        ds_service_name: String,
    },
    None,
}

impl Directory {
    /// What this server offers for incremental reads.
    pub(super) async fn incremental_support(
        &mut self,
        timeout: Duration,
    ) -> Result<Support, DirectoryError> {
        let attrs = vec![
            "supportedControl".to_string(),
            "highestCommittedUSN".to_string(),
            "dsServiceName".to_string(),
        ];
        let Some(root) = self.read_entry("", &attrs, timeout).await? else {
            return Ok(Support::None);
        };
        let first = |name: &str| {
            root.attrs
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .and_then(|(_, v)| v.first().cloned())
        };
        if let (Some(usn), Some(ds_service_name)) =
            (first("highestCommittedUSN"), first("dsServiceName"))
        {
            if let Ok(highest) = usn.parse() {
                return Ok(Support::Usn {
                    highest,
                    ds_service_name,
                });
            }
        }
        let controls = root
            .attrs
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("supportedControl"))
            .map(|(_, v)| v.as_slice())
            .unwrap_or_default();
        if controls.iter().any(|c| c == SYNC_REQUEST_OID) {
            return Ok(Support::Syncrepl(SyncDialect::of(self.kind())));
        }
        Ok(Support::None)
    }

    /// Where a complete read starting now will leave off; `None` if the server offers no
    /// incremental reads (then every run is a full one).
    pub async fn watermark(
        &mut self,
        bases: &[String],
        query: &AgentQuery,
        timeout: Duration,
    ) -> Result<Option<Watermark>, DirectoryError> {
        let watermark = match self.incremental_support(timeout).await? {
            Support::Syncrepl(dialect) => Some(
                self.syncrepl_watermark(bases, query, dialect, timeout)
                    .await?,
            ),
            Support::Usn {
                highest,
                ds_service_name,
            } => Some(
                self.usn_watermark(highest, &ds_service_name, timeout)
                    .await?,
            ),
            Support::None => None,
        };
        match &watermark {
            Some(w) => info!(watermark = %w.describe(), "directory: incremental reads possible"),
            None => info!(
                server = %self.server(),
                kind = self.kind().name(),
                advice = self.kind().content_sync_advice(),
                "directory: the server offers no incremental reads (neither RFC 4533 content sync nor AD USNs); every run reads everything"
            ),
        }
        Ok(watermark)
    }

    /// What changed since `since`, each agent entry handed to `pass` as it is read (kept in
    /// the Snapshot only if it gives it back).
    pub async fn read_changes(
        &mut self,
        bases: &[String],
        query: &AgentQuery,
        since: &Watermark,
        page_size: i32,
        timeout: Duration,
        pass: &mut (dyn FnMut(Entry) -> Option<Entry> + Send),
    ) -> Result<Incremental, DirectoryError> {
        if since.server() != self.server() {
            return Ok(Incremental::FullReadNeeded(format!(
                "the last complete read was from {}, this one is from {}",
                since.server(),
                self.server()
            )));
        }
        match since {
            Watermark::Syncrepl {
                cookies, dialect, ..
            } => {
                self.syncrepl_changes(bases, query, cookies, *dialect, page_size, timeout, pass)
                    .await
            }
            Watermark::Usn {
                invocation_id, usn, ..
            } => {
                self.usn_changes(bases, query, invocation_id, *usn, page_size, timeout, pass)
                    .await
            }
        }
    }
}

/// Connects to `cfg.urls` (failover) and reads what changed since `since`, then closes.
pub async fn read_changes_with(
    cfg: &crate::config::DirectoryConfig,
    query: &AgentQuery,
    since: &Watermark,
    pass: &mut (dyn FnMut(Entry) -> Option<Entry> + Send),
) -> Result<Incremental, DirectoryError> {
    let mut dir = Directory::connect(cfg).await?;
    let result = dir
        .read_changes(
            &cfg.base_dns,
            query,
            since,
            cfg.page_size,
            cfg.timeout,
            pass,
        )
        .await;
    dir.close().await;
    result
}
