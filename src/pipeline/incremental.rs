//! Incremental runs: read only what changed since the last complete read, and plan against
//! the ledger records those changes (and the clock) concern.
//!
//! What such a run covers: agents added, changed, renamed, leaving (by a departure signal, a
//! deletion, or leaving the filter where the server says so), departures whose grace period or
//! scheduled date came, returns. What it leaves to the next complete read (at least every
//! `directory.full_sync_every`): room memberships, and agents moved out of the search bases
//! where the server cannot tell.

use std::collections::{BTreeMap, BTreeSet};

use super::{agent_query, Mapped, RunError};
use crate::clock::format_time;
use crate::config::Config;
use crate::directory::{self, Incremental, StableId, SyncId, Watermark};
use crate::ledger::{Ledger, LedgerView, Scheduled, ScheduledUpdate, SyncIdUpdate, SyncPoint};
use crate::mapping::{self, AgentState, Coverage, Desired, DesiredAccount, Rules};

/// How much of the directory a run read.
#[derive(Debug, Clone)]
pub enum Read {
    /// Every agent. `watermark`: where the next incremental read can start (`None`: the
    /// server offers none, or incremental reads are off).
    Complete {
        watermark: Option<Watermark>,
        /// Each agent's content-sync id, when the server names agents by another id than
        /// their stable one (389-DS; empty otherwise).
        sync_ids: Vec<(SyncId, StableId)>,
        /// Why an incremental read was tried and could not be used, if it was: the directory
        /// could not build on the watermark, or its answer could not be trusted.
        fallback: Option<String>,
    },
    /// What changed since `since`; `watermark` is where this read left off.
    Changes {
        since: SyncPoint,
        watermark: Watermark,
        /// Managed agents the directory says left (deleted, or out of the filter).
        gone: usize,
        /// The changed agents' content-sync ids, and the ids of the entries that went (389-DS).
        sync_ids: Vec<(SyncId, StableId)>,
        forget: BTreeSet<SyncId>,
    },
}

impl Read {
    pub fn is_complete(&self) -> bool {
        matches!(self, Read::Complete { .. })
    }

    /// Why this complete read was not an incremental one, when one was tried and failed.
    pub fn fallback(&self) -> Option<&str> {
        match self {
            Read::Complete { fallback, .. } => fallback.as_deref(),
            Read::Changes { .. } => None,
        }
    }

    /// How this read changes the ledger's content-sync ids, if it does.
    pub fn sync_id_update(&self) -> Option<SyncIdUpdate> {
        match self {
            Read::Complete { sync_ids, .. } if !sync_ids.is_empty() => {
                Some(SyncIdUpdate::Replace(sync_ids.clone()))
            }
            Read::Changes {
                sync_ids, forget, ..
            } if !sync_ids.is_empty() || !forget.is_empty() => Some(SyncIdUpdate::Patch {
                set: sync_ids.clone(),
                forget: forget.clone(),
            }),
            _ => None,
        }
    }
}

/// Why a run reads the whole directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WhyComplete {
    /// As intended: no watermark yet, a complete read due, changed rules, incremental reads
    /// off or not asked for.
    Planned(String),
    /// An incremental read was tried and the directory could not give one that can be
    /// trusted (cookie refused, another server, a refresh that contradicts itself, …).
    Fallback(String),
}

/// What the agents are read and mapped with: a sync point taken under another fingerprint
/// cannot be built on.
pub fn fingerprint(config: &Config, rules: &Rules) -> String {
    crate::brake::digest(&format!(
        "scope={}\nrules={}\nserver_name={}",
        crate::brake::scope(config, rules).digest(),
        rules.fingerprint,
        config.homeserver.server_name
    ))
}

/// The sync point an incremental read can start from at `now`, or why this run must read
/// everything.
pub fn usable_point(
    config: &Config,
    rules: &Rules,
    point: Option<SyncPoint>,
    now: i64,
) -> Result<SyncPoint, String> {
    if !config.directory.incremental {
        return Err("directory.incremental = false".into());
    }
    let Some(point) = point else {
        return Err("no complete read has left a watermark yet".into());
    };
    if point.fingerprint != fingerprint(config, rules) {
        return Err("the mapping rules, the search scope or the server name changed".into());
    }
    let every = i64::try_from(config.directory.full_sync_every.as_secs()).unwrap_or(i64::MAX);
    if now.saturating_sub(point.full_at) >= every {
        return Err(format!(
            "the last complete read began at {} (directory.full_sync_every = {})",
            format_time(point.full_at),
            humantime::format_duration(config.directory.full_sync_every)
        ));
    }
    Ok(point)
}

/// An incremental read mapped, with the ledger records it concerns; `Err(why)` when the
/// directory cannot build on `point` and everything must be read.
pub(super) async fn read_changes_and_map(
    config: &Config,
    rules: &Rules,
    ledger: &Ledger,
    point: SyncPoint,
    now: i64,
) -> Result<Result<(Mapped, LedgerView), String>, RunError> {
    let mut mapper = mapping::Mapper::new(rules, now);
    let answer = directory::read_changes_with(
        &config.directory,
        &agent_query(rules),
        &point.watermark,
        &mut |entry| {
            mapper.add(&entry);
            None
        },
    )
    .await?;
    let mut changes = match answer {
        Incremental::Changes(changes) => changes,
        Incremental::FullReadNeeded(why) => return Ok(Err(why)),
    };
    let sync_ids = std::mem::take(&mut changes.snapshot.sync_ids);
    let mut desired = mapper.finish_accounts(&changes.snapshot);
    let read_ids: BTreeSet<StableId> = desired
        .accounts
        .iter()
        .map(|a| a.id.clone())
        .chain(desired.skipped.iter().filter_map(|s| s.id.clone()))
        .collect();
    let mut gone = changes.deleted;
    // 389-DS names the entries that went by their nsUniqueId: the agents among them are those
    // earlier reads recorded.
    gone.extend(ledger.stable_ids_of(&changes.deleted_sync_ids)?);
    if let Some(present) = &changes.present {
        gone.extend(
            ledger
                .account_ids()?
                .into_iter()
                .filter(|id| !present.contains(id)),
        );
    }
    gone.retain(|id| !read_ids.contains(id));
    let scheduled = ledger.scheduled()?;
    let mut view = ledger.partial_view(read_ids.iter().chain(&gone).chain(scheduled.keys()))?;
    let new_agents = desired
        .accounts
        .iter()
        .filter(|want| !view.accounts.contains_key(&want.id))
        .map(|want| want.localpart.as_str())
        .collect::<Vec<_>>();
    super::ledger_view::add_localpart_holders(
        ledger,
        &mut view,
        new_agents,
        &config.homeserver.server_name,
    )?;
    // The directory may name ids that were never agents (AD lists every user changed in the
    // domain, OpenLDAP every entry its session log holds): only managed ones are gone.
    gone.retain(|id| view.accounts.contains_key(id));
    add_scheduled(&mut desired, &scheduled, &view, &read_ids, &gone, now);
    let agents = changes.snapshot.agents();
    tracing::info!(
        changed = agents,
        gone = gone.len(),
        records = view.accounts.len(),
        "incremental read"
    );
    let read = Read::Changes {
        since: point,
        watermark: changes.watermark,
        gone: gone.len(),
        sync_ids,
        forget: changes.deleted_sync_ids,
    };
    desired.coverage = Coverage::Changes { gone };
    Ok(Ok((
        Mapped {
            server: changes.snapshot.server,
            agents,
            desired,
            read,
        },
        view,
    )))
}

/// Agents the read did not return whose departure date was set earlier: as the ledger last saw
/// them, still scheduled or now gone.
fn add_scheduled(
    desired: &mut Desired,
    scheduled: &BTreeMap<StableId, Scheduled>,
    view: &LedgerView,
    read: &BTreeSet<StableId>,
    gone: &BTreeSet<StableId>,
    now: i64,
) {
    let unread = scheduled
        .iter()
        .filter(|(id, _)| !read.contains(*id) && !gone.contains(*id));
    for (id, s) in unread {
        let Some(record) = view.accounts.get(id) else {
            continue;
        };
        desired.accounts.push(DesiredAccount {
            id: id.clone(),
            dn: record.dn.clone(),
            localpart: record.localpart.clone(),
            display_name: record.display_name.clone(),
            emails: record.emails.clone(),
            state: AgentState::scheduled_as_of(s.at, &s.reason, now),
            login: None,
            external_ids: record.external_ids.clone(),
        });
    }
    desired.accounts.sort_by(|a, b| a.id.cmp(&b.id));
}

/// How a run's desired state changes the ledger's scheduled departures.
pub(super) fn scheduled_update(desired: &Desired, read: &Read) -> ScheduledUpdate {
    let set: BTreeMap<StableId, Scheduled> = desired
        .accounts
        .iter()
        .filter_map(|a| match &a.state {
            AgentState::Scheduled { at, reason } => Some((
                a.id.clone(),
                Scheduled {
                    at: *at,
                    reason: reason.clone(),
                },
            )),
            _ => None,
        })
        .collect();
    match (read, &desired.coverage) {
        (Read::Changes { .. }, Coverage::Changes { gone }) => {
            let clear = desired
                .accounts
                .iter()
                .map(|a| &a.id)
                .chain(gone)
                .filter(|id| !set.contains_key(*id))
                .cloned()
                .collect();
            ScheduledUpdate::Patch { set, clear }
        }
        _ => ScheduledUpdate::Replace(set),
    }
}
