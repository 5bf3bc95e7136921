//! What an incremental run plans from without reading every account: where the last read left
//! off ([`SyncPoint`]), the accounts in their grace period (`departing` index) and the agents
//! with a departure date set in advance (`scheduled`), whose time comes without any change in
//! the directory.
//!
//! A run ends with one transaction ([`Ledger::finish_run`]) that writes its journal entry, the
//! new sync point and the scheduled departures together: the watermark never moves ahead of
//! the state it describes.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;

use super::LAST_GOOD_KEY;
use super::{decode, encode, AccountStatus, LastGood, Ledger, LedgerError, LedgerView, RunRecord};
use crate::directory::{StableId, Watermark};

pub(super) const SYNC_POINT_KEY: &[u8] = b"sync_point";

/// A departure the directory has set for a future date.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scheduled {
    /// Unix seconds.
    pub at: i64,
    pub reason: String,
}

/// Where the next incremental read starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncPoint {
    pub watermark: Watermark,
    /// What the agents were read and mapped with (scope, rules): when it changes, the next run
    /// reads everything.
    pub fingerprint: String,
    /// When the last complete read began (Unix seconds).
    pub full_at: i64,
}

/// How a run changes the scheduled departures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScheduledUpdate {
    /// A complete read: these are all of them.
    Replace(BTreeMap<StableId, Scheduled>),
    /// An incremental read: `set` these; the agents in `clear` have none any more.
    Patch {
        set: BTreeMap<StableId, Scheduled>,
        clear: BTreeSet<StableId>,
    },
}

/// What the end of a run writes, in one transaction.
#[derive(Debug, Clone, Copy)]
pub struct FinishedRun<'a> {
    pub run: &'a RunRecord,
    /// `None`: keep the stored one (the brake held something back).
    pub last_good: Option<&'a LastGood>,
    /// `None`: keep the stored one (the run did not fully succeed); `Some(None)`: forget it
    /// (a complete read from a server offering no incremental reads).
    pub sync_point: Option<Option<&'a SyncPoint>>,
    pub scheduled: Option<&'a ScheduledUpdate>,
}

impl Ledger {
    pub fn sync_point(&self) -> Result<Option<SyncPoint>, LedgerError> {
        self.meta
            .get(SYNC_POINT_KEY)?
            .map(|v| decode(&v))
            .transpose()
    }

    /// Every scheduled departure.
    pub fn scheduled(&self) -> Result<BTreeMap<StableId, Scheduled>, LedgerError> {
        self.scheduled
            .iter()
            .map(|item| {
                let (key, value) = item?;
                Ok((id_of(&key), decode(&value)?))
            })
            .collect()
    }

    /// The stable ids of every managed account (keys only, no record decoded).
    pub fn account_ids(&self) -> Result<BTreeSet<StableId>, LedgerError> {
        self.accounts
            .iter()
            .keys()
            .map(|key| Ok(id_of(&key?)))
            .collect()
    }

    /// The records an incremental plan needs first: those of `ids` and of every account in its
    /// grace period. No rooms.
    pub fn partial_view<'a>(
        &self,
        ids: impl IntoIterator<Item = &'a StableId>,
    ) -> Result<LedgerView, LedgerError> {
        let mut view = LedgerView {
            held: self.held_agents()?,
            intents: self.creation_intents()?,
            ..LedgerView::default()
        };
        for id in ids {
            self.add_record(&mut view, id.0.as_bytes())?;
        }
        for key in self.departing.iter().keys() {
            self.add_record(&mut view, &key?)?;
        }
        Ok(view)
    }

    /// Adds to `view` the holders of the localparts `new_agents` new agents wanting `base` may
    /// be offered (`base`, `base2`, `base3`, … up to as many free ones as there are agents), so
    /// that a plan of changes allocates localparts as a complete plan would.
    pub fn add_localpart_holders(
        &self,
        view: &mut LedgerView,
        base: &str,
        new_agents: usize,
    ) -> Result<(), LedgerError> {
        let mut free = 0;
        let candidates =
            std::iter::once(base.to_string()).chain((2u64..).map(|n| format!("{base}{n}")));
        for candidate in candidates {
            if free >= new_agents {
                break;
            }
            match self.localparts.get(candidate.as_bytes())? {
                Some(holder) => self.add_record(view, &holder)?,
                None => free += 1,
            }
        }
        Ok(())
    }

    /// Adds the record of `key` (a stable id) to `view`, if there is one.
    pub fn add_record(&self, view: &mut LedgerView, key: &[u8]) -> Result<(), LedgerError> {
        if let Some(raw) = self.accounts.get(key)? {
            let record: super::AccountRecord = decode(&raw)?;
            view.accounts.insert(record.id.clone(), record);
        }
        Ok(())
    }

    /// Writes the end of a run: journal entry, last good run, sync point and scheduled
    /// departures, all or nothing.
    pub fn finish_run(&self, finished: FinishedRun) -> Result<(), LedgerError> {
        let run = encode(finished.run)?;
        let last_good = finished.last_good.map(encode).transpose()?;
        let sync_point = finished
            .sync_point
            .map(|point| point.map(encode).transpose())
            .transpose()?;
        let (set, clear) = match finished.scheduled {
            None => (Vec::new(), BTreeSet::new()),
            Some(ScheduledUpdate::Replace(all)) => {
                let stale = self
                    .scheduled
                    .iter()
                    .keys()
                    .map(|key| Ok(id_of(&key?)))
                    .collect::<Result<BTreeSet<_>, LedgerError>>()?
                    .into_iter()
                    .filter(|id| !all.contains_key(id))
                    .collect();
                (encode_all(all)?, stale)
            }
            Some(ScheduledUpdate::Patch { set, clear }) => (encode_all(set)?, clear.clone()),
        };
        let result: Result<(), TransactionError<()>> = (&self.meta, &self.runs, &self.scheduled)
            .transaction(|(meta, runs, scheduled)| {
                let seq = runs.generate_id()?;
                runs.insert(&seq.to_be_bytes(), run.as_slice())?;
                if let Some(value) = &last_good {
                    meta.insert(LAST_GOOD_KEY, value.as_slice())?;
                }
                match &sync_point {
                    Some(Some(value)) => {
                        meta.insert(SYNC_POINT_KEY, value.as_slice())?;
                    }
                    Some(None) => {
                        meta.remove(SYNC_POINT_KEY)?;
                    }
                    None => {}
                }
                for id in &clear {
                    scheduled.remove(id.0.as_bytes())?;
                }
                for (id, value) in &set {
                    scheduled.insert(id.0.as_bytes(), value.as_slice())?;
                }
                Ok::<(), ConflictableTransactionError<()>>(())
            });
        match result {
            Ok(()) => Ok(()),
            Err(TransactionError::Abort(())) => Err(LedgerError::Corrupt(
                "writing the end of a run was aborted".into(),
            )),
            Err(TransactionError::Storage(e)) => Err(LedgerError::Storage(e)),
        }
    }

    /// Rebuilds the `departing` index from the account records (ledgers of schema 1 had none).
    pub(super) fn rebuild_departing_index(&self) -> Result<(), LedgerError> {
        self.departing.clear()?;
        for item in self.accounts.iter() {
            let (key, value) = item?;
            let record: super::AccountRecord = decode(&value)?;
            if matches!(record.status, AccountStatus::Departing { .. }) {
                self.departing.insert(key, &[])?;
            }
        }
        Ok(())
    }
}

fn encode_all(
    scheduled: &BTreeMap<StableId, Scheduled>,
) -> Result<Vec<(StableId, Vec<u8>)>, LedgerError> {
    scheduled
        .iter()
        .map(|(id, s)| Ok((id.clone(), encode(s)?)))
        .collect()
}

fn id_of(key: &[u8]) -> StableId {
    StableId(String::from_utf8_lossy(key).into_owned())
}
