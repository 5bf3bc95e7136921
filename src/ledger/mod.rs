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

mod creation;
mod incremental;
pub mod journal;
pub mod leftovers;
mod lock;
pub mod memberships;
mod profiles;
mod records;
mod rekey;
mod sync_ids;

pub use incremental::{FinishedRun, Scheduled, ScheduledUpdate, SyncPoint};
pub use memberships::{MembershipRecord, PowerRecord, RoomRecord, RoomsView};
pub use profiles::{Profile, ProfileFields, Profiles, Stage};
pub use records::{
    AccountRecord, AccountStatus, AuditEntry, Held, HeldAgent, Origin, RunRecord, Shadow,
};
pub use rekey::{Rekey, RekeyError, Rekeyed};
pub use sync_ids::SyncIdUpdate;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;

use crate::directory::{IdFormat, StableId};

/// The schema this build reads and writes.
pub const SCHEMA_VERSION: u32 = 3;
const SCHEMA_KEY: &[u8] = b"schema_version";
const LAST_GOOD_KEY: &[u8] = b"last_good_run";
/// The shadow accounts the last complete read found (see [`Shadow`]).
const SHADOWS_KEY: &[u8] = b"shadows";
/// How many records `accounts` holds (sled counts a tree by walking it).
const ACCOUNT_COUNT_KEY: &[u8] = b"account_count";

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("cannot open the ledger at {path}: {source}")]
    Open { path: PathBuf, source: sled::Error },
    /// Another process (normally the running daemon) holds the ledger's lock.
    #[error("the ledger at {path} is in use by another matrix-ldap-sync (the daemon?)")]
    Locked { path: PathBuf },
    #[error("the ledger at {path} is damaged ({reason}): stop the daemon and run `matrix-ldap-sync repair --dry-run`, then `repair`: it moves aside only what sled left half-written and keeps the accounts, the audit trail and the grace clocks; only if that does not bring it back, rebuild it as docs/systemd.md, \"Crashes and recovering the ledger\", explains")]
    Damaged { path: PathBuf, reason: String },
    #[error("cannot create the ledger at {path}: {reason}")]
    Create { path: PathBuf, reason: String },
    /// Moving a half-written leftover aside failed.
    #[error("cannot repair the ledger at {path}: {reason}")]
    Repair { path: PathBuf, reason: String },
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
    /// The write-ahead journal: one entry per homeserver write about to be sent, written and
    /// flushed before it is sent, cleared with its result (see [`journal`]).
    intents: sled::Tree,
    /// Sync id (hex) → stable id: see [`sync_ids`]. Empty unless the directory is 389-DS.
    sync_ids: sled::Tree,
}

/// The last run that was not held back by the brake.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LastGood {
    /// Agent entries the directory returned.
    pub agents: usize,
    /// Fingerprint of what defines the agents (filter, bases, id attribute): [`Scope::digest`].
    pub scope: String,
    pub at: i64,
    /// The scope itself, so that a change can be named and `migrate-ids` knows the id
    /// attribute the ledger's keys come from. Ledgers written before it was kept have only the
    /// digest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<Scope>,
}

/// What defines who the agents are and what identifies them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Scope {
    /// The rules' agent filter, as written.
    pub filter: String,
    /// The search bases by DN (normalised, see `DnKey`), sorted.
    pub bases: Vec<String>,
    /// The stable id attribute, as the rules spell it.
    pub id_attribute: String,
    pub id_format: IdFormat,
}

impl Scope {
    /// A short fingerprint of the filter, bases and id attribute (any case), the one ledgers
    /// have always stored: the id format is not in it, but is compared with [`Scope::same_ids`].
    pub fn digest(&self) -> String {
        crate::brake::digest(&format!(
            "filter={}\nbases={}\nid={}",
            self.filter,
            self.bases.join(";"),
            self.id_attribute.to_lowercase()
        ))
    }

    /// True when both read the same stable ids (same attribute in any case, same format).
    pub fn same_ids(&self, other: &Scope) -> bool {
        self.id_attribute.eq_ignore_ascii_case(&other.id_attribute)
            && self.id_format == other.id_format
    }
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
        Ledger::store_path(dir).exists()
    }

    /// The sled folder of the ledger in the state directory `dir`.
    pub fn store_path(dir: &Path) -> PathBuf {
        dir.join("ledger")
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

    /// Opens (or creates) the ledger in `dir`. A store sled finds damaged is opened again once
    /// after its half-written leftovers, if any, are moved aside (see [`leftovers`]), with a
    /// warning naming each.
    pub fn open(dir: &Path) -> Result<Ledger, LedgerError> {
        let path = Ledger::store_path(dir);
        let opened = match path.join("db").exists() {
            true => Ledger::open_store(&path),
            false => {
                creation::create(dir, &path, |db| {
                    let meta = db.open_tree("meta")?;
                    meta.insert(SCHEMA_KEY, &SCHEMA_VERSION.to_be_bytes())?;
                    meta.insert(ACCOUNT_COUNT_KEY, &0u64.to_be_bytes())?;
                    Ok(())
                })?;
                // The creation's sled threads let go of the store's lock a moment after it
                // closed (see `reopen`).
                Ledger::open_store_within(&path, std::time::Duration::from_secs(2))
            }
        };
        match opened {
            Err(LedgerError::Damaged { path, reason }) => {
                let moved = leftovers::set_aside(&path, &leftovers::stamp_now())?;
                if moved.is_empty() {
                    return Err(LedgerError::Damaged { path, reason });
                }
                for m in &moved {
                    tracing::warn!(
                        file = %m.leftover.path.display(),
                        moved_to = %m.to.display(),
                        "the ledger at {} did not open ({reason}): moved aside {}, a snapshot sled left half-written ({}); opening it again",
                        path.display(),
                        m.leftover.name(),
                        m.leftover.why
                    );
                }
                Ledger::open_store(&path)
            }
            opened => opened,
        }
    }

    /// [`Ledger::open_store`], waiting up to `patience` for a lock this process let go of.
    fn open_store_within(
        path: &Path,
        patience: std::time::Duration,
    ) -> Result<Ledger, LedgerError> {
        let deadline = std::time::Instant::now() + patience;
        loop {
            match Ledger::open_store(path) {
                Err(LedgerError::Locked { .. }) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                opened => return opened,
            }
        }
    }

    /// Opens the sled store at `path`, made by [`creation::create`].
    fn open_store(path: &Path) -> Result<Ledger, LedgerError> {
        let path = path.to_path_buf();
        let db = sled::Config::new()
            .path(&path)
            .open()
            .map_err(|source| open_error(&path, source))?;
        let meta = db.open_tree("meta")?;
        match meta.get(SCHEMA_KEY)? {
            // sled can read a damaged file as an empty store: a ledger has a schema version
            // (flushed before its folder got its name), so its absence means damage.
            None => {
                return Err(LedgerError::Damaged {
                    path,
                    reason: "it exists but reads as empty (no schema version)".into(),
                })
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
        self.record_account_clearing(record, audit, None)
    }

    /// [`Ledger::record_account`], clearing the journal entry `intent` in the same
    /// transaction: the record and the end of the intent are one write.
    pub fn record_account_clearing(
        &self,
        record: &AccountRecord,
        audit: &AuditEntry,
        intent: Option<&[u8]>,
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
            &self.intents,
        )
            .transaction(
                |(accounts, localparts, trail, departing_index, meta, profiles, intents)| {
                    if let Some(intent) = intent {
                        intents.remove(intent)?;
                    }
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

    /// The shadow accounts the last complete read found.
    pub fn shadows(&self) -> Result<Vec<Shadow>, LedgerError> {
        Ok(self
            .meta
            .get(SHADOWS_KEY)?
            .map(|v| decode(&v))
            .transpose()?
            .unwrap_or_default())
    }

    pub fn set_shadows(&self, shadows: &[Shadow]) -> Result<(), LedgerError> {
        self.meta.insert(SHADOWS_KEY, encode(&shadows)?)?;
        Ok(())
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
