//! The ledger: what the daemon manages and what it did, in an embedded sled store.
//!
//! One sled tree per concern: `meta` (schema version), `accounts` (stable id → record),
//! `localparts` (localpart → stable id, so a localpart is never handed out twice), `audit`
//! (every applied action), `runs` (the run journal); `rooms`, `room_members`, `room_powers`
//! (see [`memberships`]); `departing` and `scheduled`, the indexes incremental runs plan from
//! (see [`incremental`]); `profiles`, a digest of each account that complete plans read instead
//! of the records (see [`profiles`]); `sync_ids`, the ids 389-DS names agents by in content sync
//! (see [`sync_ids`]). An applied action's account record, its profile and its
//! audit entry are written in one transaction, so a crash leaves either all or none.

mod incremental;
pub mod memberships;
mod profiles;
mod records;
mod sync_ids;

pub use incremental::{FinishedRun, Scheduled, ScheduledUpdate, SyncPoint};
pub use memberships::{MembershipRecord, PowerRecord, RoomRecord, RoomsView};
pub use profiles::{profile_digest, Profile, Profiles, Stage};
pub use records::{AccountRecord, AccountStatus, AuditEntry, Held, HeldAgent, Origin, RunRecord};
pub use sync_ids::SyncIdUpdate;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;

use crate::directory::StableId;

/// The schema this build reads and writes.
pub const SCHEMA_VERSION: u32 = 3;
const SCHEMA_KEY: &[u8] = b"schema_version";
const LAST_GOOD_KEY: &[u8] = b"last_good_run";
/// How many records `accounts` holds (sled counts a tree by walking it).
const ACCOUNT_COUNT_KEY: &[u8] = b"account_count";

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("cannot open the ledger at {path}: {source}")]
    Open { path: PathBuf, source: sled::Error },
    /// Another process (normally the running daemon) holds the ledger's lock.
    #[error("the ledger at {path} is in use by another matrix-ldap-sync (the daemon?)")]
    Locked { path: PathBuf },
    #[error("the ledger at {path} is damaged ({reason}): stop the daemon, move the folder away (keep it for a post-mortem) and run `sync` to rebuild it: existing accounts are adopted (see docs/systemd.md, \"Crashes and recovering the ledger\")")]
    Damaged { path: PathBuf, reason: String },
    #[error("the ledger at {path} has schema version {found}, this build knows only up to {SCHEMA_VERSION}: use a newer matrix-ldap-sync, or move the folder away and rebuild it")]
    NewerSchema { path: PathBuf, found: u32 },
    #[error("the ledger is damaged: {0}")]
    Corrupt(String),
    #[error("ledger storage error: {0}")]
    Storage(#[from] sled::Error),
    /// The thread reading the ledger beside the directory read stopped before the end.
    #[error("reading the ledger did not finish: {0}")]
    Unfinished(String),
}

/// A handle on the store: clones share it (e.g. to read it on another thread).
#[derive(Clone)]
pub struct Ledger {
    path: PathBuf,
    db: sled::Db,
    meta: sled::Tree,
    accounts: sled::Tree,
    localparts: sled::Tree,
    audit: sled::Tree,
    runs: sled::Tree,
    /// Stable id → nothing, for every account in its grace period (status `Departing`).
    departing: sled::Tree,
    /// Stable id → [`Scheduled`]: agents whose departure date is set in the directory.
    scheduled: sled::Tree,
    /// Stable id → [`Profile`].
    profiles: sled::Tree,
    /// Stable id → [`HeldAgent`]: agents held back by a conflict or a refusal.
    held: sled::Tree,
    /// mxid → stable id: accounts about to be created, written (and flushed) before the
    /// requests go out, so that an account made by a run that died before recording it is
    /// known as the daemon's own, not someone else's.
    intents: sled::Tree,
    /// Sync id (hex) → stable id: see [`sync_ids`]. Empty unless the directory is 389-DS.
    sync_ids: sled::Tree,
}

/// The last run that was not held back by the brake.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LastGood {
    /// Agent entries the directory returned.
    pub agents: usize,
    /// Fingerprint of what defines the agents (filter, bases, id attribute).
    pub scope: String,
    pub at: i64,
}

/// The managed accounts, read once at the start of a run (what `plan` diffs against).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LedgerView {
    pub accounts: BTreeMap<StableId, AccountRecord>,
    /// Managed accounts whose records were not read because they need nothing (their profile
    /// is as the directory wants it, or they are deactivated and gone), with their mxid; in
    /// stable-id order, none of them in `accounts`.
    pub in_step: Vec<(StableId, String)>,
    pub rooms: RoomsView,
    /// Agents held back by a conflict or a refusal (few: read whole).
    pub held: BTreeMap<StableId, HeldAgent>,
    /// Creations begun and not recorded (a run died between the two): mxid → agent.
    pub intents: BTreeMap<String, StableId>,
}

impl Ledger {
    /// True if `dir` holds a ledger.
    pub fn exists(dir: &Path) -> bool {
        dir.join("ledger").exists()
    }

    /// [`Ledger::open`] for a ledger this process has just closed (tests, the bench). sled's
    /// background threads let go of the store's file lock a moment after the last handle is
    /// dropped, so a reopen at once can find the lock still held, by this process; this waits
    /// that out (up to 10 s). The binaries open once per process and use `open`, which reports
    /// a lock held by another process at once.
    pub fn reopen(dir: &Path) -> Result<Ledger, LedgerError> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match Ledger::open(dir) {
                Err(LedgerError::Locked { .. }) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                opened => return opened,
            }
        }
    }

    /// Opens (or creates) the ledger in `dir`.
    pub fn open(dir: &Path) -> Result<Ledger, LedgerError> {
        let path = dir.join("ledger");
        let existed = path.join("db").exists();
        let db = sled::Config::new()
            .path(&path)
            .open()
            .map_err(|source| open_error(&path, source))?;
        let meta = db.open_tree("meta")?;
        match meta.get(SCHEMA_KEY)? {
            // sled can read a damaged file as an empty store: a ledger that existed has a
            // schema version (flushed at creation), so its absence means damage.
            None if existed => {
                return Err(LedgerError::Damaged {
                    path,
                    reason: "it exists but reads as empty (no schema version)".into(),
                })
            }
            None => {
                meta.insert(SCHEMA_KEY, &SCHEMA_VERSION.to_be_bytes())?;
                meta.insert(ACCOUNT_COUNT_KEY, &0u64.to_be_bytes())?;
                db.flush()?;
            }
            Some(raw) => {
                let bytes: [u8; 4] = raw
                    .as_ref()
                    .try_into()
                    .map_err(|_| LedgerError::Corrupt("schema version is not 4 bytes".into()))?;
                let found = u32::from_be_bytes(bytes);
                if found > SCHEMA_VERSION {
                    return Err(LedgerError::NewerSchema { path, found });
                }
            }
        }
        let ledger = Ledger {
            meta,
            accounts: db.open_tree("accounts")?,
            localparts: db.open_tree("localparts")?,
            audit: db.open_tree("audit")?,
            runs: db.open_tree("runs")?,
            departing: db.open_tree("departing")?,
            scheduled: db.open_tree("scheduled")?,
            profiles: db.open_tree("profiles")?,
            held: db.open_tree("held")?,
            intents: db.open_tree("intents")?,
            sync_ids: db.open_tree("sync_ids")?,
            path,
            db,
        };
        ledger.upgrade()?;
        Ok(ledger)
    }

    /// Brings a ledger of an older schema up to this one. Version 1 had no `departing` index
    /// and no account count, version 2 no `profiles`.
    fn upgrade(&self) -> Result<(), LedgerError> {
        let found = self
            .meta
            .get(SCHEMA_KEY)?
            .and_then(|raw| <[u8; 4]>::try_from(raw.as_ref()).ok())
            .map(u32::from_be_bytes);
        if found == Some(SCHEMA_VERSION) {
            return Ok(());
        }
        self.rebuild_departing_index()?;
        self.rebuild_profiles()?;
        self.meta.insert(
            ACCOUNT_COUNT_KEY,
            &(self.accounts.len() as u64).to_be_bytes(),
        )?;
        self.meta
            .insert(SCHEMA_KEY, &SCHEMA_VERSION.to_be_bytes())?;
        self.db.flush()?;
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every managed account.
    pub fn view(&self) -> Result<LedgerView, LedgerError> {
        // Collected (not inserted one by one), the map is built in bulk with full nodes.
        let accounts = self
            .accounts
            .iter()
            .map(|item| {
                let record: AccountRecord = decode(&item?.1)?;
                Ok((record.id.clone(), record))
            })
            .collect::<Result<BTreeMap<_, _>, LedgerError>>()?;
        Ok(LedgerView {
            accounts,
            in_step: Vec::new(),
            rooms: self.rooms_view()?,
            held: self.held_agents()?,
            intents: self.creation_intents()?,
        })
    }

    /// Notes, durably, that the accounts `creations` (mxid, agent) are about to be created.
    pub fn intend_creations<'a>(
        &self,
        creations: impl IntoIterator<Item = (&'a str, &'a StableId)>,
    ) -> Result<(), LedgerError> {
        let mut batch = sled::Batch::default();
        let mut any = false;
        for (mxid, id) in creations {
            batch.insert(mxid.as_bytes(), id.0.as_bytes());
            any = true;
        }
        if any {
            self.intents.apply_batch(batch)?;
            self.intents.flush()?;
        }
        Ok(())
    }

    /// Creations begun and never recorded: mxid → agent.
    pub fn creation_intents(&self) -> Result<BTreeMap<String, StableId>, LedgerError> {
        self.intents
            .iter()
            .map(|item| {
                let (mxid, id) = item?;
                Ok((
                    String::from_utf8_lossy(&mxid).into_owned(),
                    StableId(String::from_utf8_lossy(&id).into_owned()),
                ))
            })
            .collect()
    }

    /// True when this ledger began creating `mxid` for `id` and did not record it.
    pub fn intended(&self, mxid: &str, id: &StableId) -> Result<bool, LedgerError> {
        Ok(self
            .intents
            .get(mxid.as_bytes())?
            .is_some_and(|v| v.as_ref() == id.0.as_bytes()))
    }

    /// Forgets the creation intent of `mxid` (recorded, or not to be made after all).
    pub fn forget_intent(&self, mxid: &str) -> Result<(), LedgerError> {
        self.intents.remove(mxid.as_bytes())?;
        Ok(())
    }

    /// Every agent held back by a conflict or a refusal.
    pub fn held_agents(&self) -> Result<BTreeMap<StableId, HeldAgent>, LedgerError> {
        self.held
            .iter()
            .map(|item| {
                let held: HeldAgent = decode(&item?.1)?;
                Ok((held.id.clone(), held))
            })
            .collect()
    }

    /// Records an agent as held back, keeping when it was first held for the same reason kind.
    pub fn hold(&self, held: &HeldAgent) -> Result<(), LedgerError> {
        let key = held.id.0.as_bytes();
        let mut record = held.clone();
        if let Some(old) = self.held.get(key)? {
            let old: HeldAgent = decode(&old)?;
            if std::mem::discriminant(&old.why) == std::mem::discriminant(&held.why) {
                record.since = old.since;
            }
        }
        self.held.insert(key, encode(&record)?)?;
        Ok(())
    }

    /// Forgets that an agent was held back (the action went through, or the conflict is gone).
    pub fn release(&self, id: &StableId) -> Result<(), LedgerError> {
        self.held.remove(id.0.as_bytes())?;
        Ok(())
    }

    /// After a plan that looked at every agent `covered` says true of: their conflicts are
    /// now exactly `conflicts` (refusals are kept: they end when an action goes through).
    pub fn replace_conflicts(
        &self,
        covered: impl Fn(&StableId) -> bool,
        conflicts: &[HeldAgent],
    ) -> Result<(), LedgerError> {
        let still: std::collections::HashSet<&StableId> = conflicts.iter().map(|c| &c.id).collect();
        for (id, held) in self.held_agents()? {
            if matches!(held.why, Held::Conflict { .. }) && covered(&id) && !still.contains(&id) {
                self.release(&id)?;
            }
        }
        for conflict in conflicts {
            self.hold(conflict)?;
        }
        Ok(())
    }

    pub fn account(&self, id: &StableId) -> Result<Option<AccountRecord>, LedgerError> {
        self.accounts
            .get(id.0.as_bytes())?
            .map(|v| decode(&v))
            .transpose()
    }

    /// Records an account as the homeserver now has it, with the audit entry of the action
    /// that made it so, atomically. Refuses a localpart already owned by another id.
    pub fn record_account(
        &self,
        record: &AccountRecord,
        audit: &AuditEntry,
    ) -> Result<(), LedgerError> {
        let key = record.id.0.as_bytes();
        let value = encode(record)?;
        let profile = Profile::of(record).encode();
        let audit_value = encode(audit)?;
        let departing = matches!(record.status, AccountStatus::Departing { .. });
        let result = (
            &self.accounts,
            &self.localparts,
            &self.audit,
            &self.departing,
            &self.meta,
            &self.profiles,
        )
            .transaction(
                |(accounts, localparts, trail, departing_index, meta, profiles)| {
                    if let Some(owner) = localparts.get(record.localpart.as_bytes())? {
                        if owner.as_ref() != key {
                            return Err(ConflictableTransactionError::Abort(format!(
                                "localpart `{}` already belongs to {}",
                                record.localpart,
                                String::from_utf8_lossy(&owner)
                            )));
                        }
                    }
                    if accounts.insert(key, value.as_slice())?.is_none() {
                        let count = meta.get(ACCOUNT_COUNT_KEY)?.map_or(0, |raw| count_of(&raw));
                        meta.insert(ACCOUNT_COUNT_KEY, &(count + 1).to_be_bytes())?;
                    }
                    localparts.insert(record.localpart.as_bytes(), key)?;
                    profiles.insert(key, profile.as_slice())?;
                    if departing {
                        departing_index.insert(key, &[])?;
                    } else {
                        departing_index.remove(key)?;
                    }
                    let seq = trail.generate_id()?;
                    trail.insert(&seq.to_be_bytes(), audit_value.as_slice())?;
                    Ok(())
                },
            );
        match result {
            Ok(()) => Ok(()),
            Err(TransactionError::Abort(message)) => Err(LedgerError::Corrupt(message)),
            Err(TransactionError::Storage(e)) => Err(LedgerError::Storage(e)),
        }
    }

    /// Records an action that changed nothing in the ledger's accounts (e.g. a failure).
    pub fn record_audit(&self, audit: &AuditEntry) -> Result<(), LedgerError> {
        let seq = self.db.generate_id()?;
        self.audit.insert(seq.to_be_bytes(), encode(audit)?)?;
        Ok(())
    }

    /// The audit trail, oldest first, optionally only about one mxid.
    pub fn audit_trail(&self, mxid: Option<&str>) -> Result<Vec<AuditEntry>, LedgerError> {
        let mut out = Vec::new();
        for item in self.audit.iter() {
            let (_, value) = item?;
            let entry: AuditEntry = decode(&value)?;
            if mxid.is_none_or(|m| entry.mxid == m) {
                out.push(entry);
            }
        }
        Ok(out)
    }

    pub fn record_run(&self, run: &RunRecord) -> Result<(), LedgerError> {
        let seq = self.db.generate_id()?;
        self.runs.insert(seq.to_be_bytes(), encode(run)?)?;
        Ok(())
    }

    pub fn last_run(&self) -> Result<Option<RunRecord>, LedgerError> {
        self.runs.last()?.map(|(_, v)| decode(&v)).transpose()
    }

    /// What the last run that was not held back by the brake saw (for the shrink check and
    /// to notice a changed scope).
    pub fn last_good(&self) -> Result<Option<LastGood>, LedgerError> {
        self.meta
            .get(LAST_GOOD_KEY)?
            .map(|v| decode(&v))
            .transpose()
    }

    pub fn set_last_good(&self, last: &LastGood) -> Result<(), LedgerError> {
        self.meta.insert(LAST_GOOD_KEY, encode(last)?)?;
        Ok(())
    }

    /// How many accounts the ledger manages (kept with every record written: no walk).
    pub fn account_count(&self) -> Result<usize, LedgerError> {
        let count = match self.meta.get(ACCOUNT_COUNT_KEY)? {
            Some(raw) => count_of(&raw),
            None => self.accounts.len() as u64,
        };
        Ok(usize::try_from(count).unwrap_or(usize::MAX))
    }

    /// Makes every write so far durable.
    pub fn flush(&self) -> Result<(), LedgerError> {
        self.db.flush()?;
        Ok(())
    }
}

/// A big-endian u64 as stored; anything else reads as 0 (a count is rebuilt on upgrade).
fn count_of(raw: &[u8]) -> u64 {
    <[u8; 8]>::try_from(raw).map_or(0, u64::from_be_bytes)
}

/// Tells a lock held by another process and a damaged store from other open failures.
fn open_error(path: &Path, source: sled::Error) -> LedgerError {
    let path = path.to_path_buf();
    match source {
        sled::Error::Io(ref e) if e.to_string().contains("could not acquire lock") => {
            LedgerError::Locked { path }
        }
        sled::Error::Corruption { .. } => LedgerError::Damaged {
            path,
            reason: source.to_string(),
        },
        source => LedgerError::Open { path, source },
    }
}

fn encode<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, LedgerError> {
    serde_json::to_vec(value)
        .map_err(|e| LedgerError::Corrupt(format!("cannot encode a record: {e}")))
}

fn decode<T: serde::de::DeserializeOwned>(raw: &[u8]) -> Result<T, LedgerError> {
    serde_json::from_slice(raw).map_err(|e| LedgerError::Corrupt(format!("unreadable record: {e}")))
}

#[cfg(test)]
mod tests;
