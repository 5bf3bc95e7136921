//! The ledger: what the daemon manages and what it did, in an embedded sled store.
//!
//! One sled tree per concern: `meta` (schema version), `accounts` (stable id → record),
//! `localparts` (localpart → stable id, so a localpart is never handed out twice), `audit`
//! (every applied action), `runs` (the run journal); `rooms`, `room_members`, `room_powers`
//! (see [`memberships`]). An applied action's account record and its audit entry are written
//! in one transaction, so a crash leaves either both or neither.

pub mod memberships;
mod records;

pub use memberships::{MembershipRecord, PowerRecord, RoomRecord, RoomsView};
pub use records::{AccountRecord, AuditEntry, Origin, RunRecord};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;

use crate::directory::StableId;

/// The schema this build reads and writes.
pub const SCHEMA_VERSION: u32 = 1;
const SCHEMA_KEY: &[u8] = b"schema_version";

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("cannot open the ledger at {path}: {source} (is another matrix-ldap-sync using it?)")]
    Open { path: PathBuf, source: sled::Error },
    #[error("the ledger at {path} has schema version {found}, this build knows only up to {SCHEMA_VERSION}: use a newer matrix-ldap-sync, or move the folder away and rebuild it")]
    NewerSchema { path: PathBuf, found: u32 },
    #[error("the ledger is damaged: {0}")]
    Corrupt(String),
    #[error("ledger storage error: {0}")]
    Storage(#[from] sled::Error),
}

pub struct Ledger {
    path: PathBuf,
    db: sled::Db,
    accounts: sled::Tree,
    localparts: sled::Tree,
    audit: sled::Tree,
    runs: sled::Tree,
}

/// The managed accounts, read once at the start of a run (what `plan` diffs against).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LedgerView {
    pub accounts: BTreeMap<StableId, AccountRecord>,
    pub rooms: RoomsView,
}

impl Ledger {
    /// True if `dir` holds a ledger.
    pub fn exists(dir: &Path) -> bool {
        dir.join("ledger").exists()
    }

    /// Opens (or creates) the ledger in `dir`.
    pub fn open(dir: &Path) -> Result<Ledger, LedgerError> {
        let path = dir.join("ledger");
        let db = sled::Config::new()
            .path(&path)
            .open()
            .map_err(|source| LedgerError::Open {
                path: path.clone(),
                source,
            })?;
        let meta = db.open_tree("meta")?;
        match meta.get(SCHEMA_KEY)? {
            None => {
                meta.insert(SCHEMA_KEY, &SCHEMA_VERSION.to_be_bytes())?;
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
        Ok(Ledger {
            accounts: db.open_tree("accounts")?,
            localparts: db.open_tree("localparts")?,
            audit: db.open_tree("audit")?,
            runs: db.open_tree("runs")?,
            path,
            db,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every managed account.
    pub fn view(&self) -> Result<LedgerView, LedgerError> {
        let mut accounts = BTreeMap::new();
        for item in self.accounts.iter() {
            let (_, value) = item?;
            let record: AccountRecord = decode(&value)?;
            accounts.insert(record.id.clone(), record);
        }
        Ok(LedgerView {
            accounts,
            rooms: self.rooms_view()?,
        })
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
        let audit_value = encode(audit)?;
        let result = (&self.accounts, &self.localparts, &self.audit).transaction(
            |(accounts, localparts, trail)| {
                if let Some(owner) = localparts.get(record.localpart.as_bytes())? {
                    if owner.as_ref() != key {
                        return Err(ConflictableTransactionError::Abort(format!(
                            "localpart `{}` already belongs to {}",
                            record.localpart,
                            String::from_utf8_lossy(&owner)
                        )));
                    }
                }
                accounts.insert(key, value.as_slice())?;
                localparts.insert(record.localpart.as_bytes(), key)?;
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

    pub fn account_count(&self) -> usize {
        self.accounts.len()
    }

    /// Makes every write so far durable.
    pub fn flush(&self) -> Result<(), LedgerError> {
        self.db.flush()?;
        Ok(())
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
