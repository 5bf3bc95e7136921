//! Re-keying the ledger from one stable id to another (`migrate-ids`): after the mapping's id
//! attribute changed, each managed account is given its agent's new id, in every tree that
//! holds stable ids, in one transaction — all of it or nothing, whatever the moment the
//! process dies.
//!
//! Trees with stable ids as keys: `accounts` (and the id inside the record), `profiles`,
//! `departing`, `scheduled`, `held` (and the id inside); as values: `localparts`; inside keys
//! and records: `room_members`, `room_powers` (room, NUL, id); inside records: the journal's
//! `intents`. With them the same transaction records the new scope as the last good run,
//! forgets the sync point (the next run reads everything, under the new ids), appends one audit
//! entry per account and a run entry.

use std::collections::{BTreeMap, BTreeSet};

use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;

use super::incremental::SYNC_POINT_KEY;
use super::journal::Intent;
use super::{
    decode, encode, AuditEntry, HeldAgent, LastGood, Ledger, LedgerError, RunRecord, LAST_GOOD_KEY,
};
use crate::directory::StableId;

/// One account's new key, with the audit entry that says why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rekey {
    pub from: StableId,
    pub to: StableId,
    pub audit: AuditEntry,
}

#[derive(Debug, thiserror::Error)]
pub enum RekeyError {
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// The re-keys asked for would leave the ledger inconsistent: nothing was written.
    #[error("cannot re-key the ledger from {from} to {to}: {why}")]
    Refused {
        from: StableId,
        to: StableId,
        why: String,
    },
}

/// What a re-key changed, by tree.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Rekeyed {
    pub accounts: usize,
    pub memberships: usize,
    pub powers: usize,
    pub held: usize,
    pub scheduled: usize,
    pub intents: usize,
}

/// The writes to one tree: removals first, then insertions (a key one account leaves may be
/// the one another takes).
#[derive(Debug, Default)]
pub(super) struct Writes {
    pub(super) remove: Vec<Vec<u8>>,
    pub(super) insert: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Writes {
    fn moved(&mut self, from: &StableId, to: &StableId, value: Vec<u8>) {
        self.remove.push(from.0.as_bytes().to_vec());
        self.insert.push((to.0.as_bytes().to_vec(), value));
    }

    fn len(&self) -> usize {
        self.insert.len()
    }
}

impl Ledger {
    /// Gives each account of `rekeys` its new key everywhere, records `last_good` (the scope
    /// the new ids come from), forgets the sync point and appends the audit entries and `run`,
    /// in one transaction. Refuses (writing nothing) an id that is not a managed account's, an
    /// id given twice, or a new id that is another account's which keeps it.
    pub fn rekey(
        &self,
        rekeys: &[Rekey],
        last_good: &LastGood,
        run: &RunRecord,
    ) -> Result<Rekeyed, RekeyError> {
        let map = self.checked(rekeys)?;
        let mut trees: Vec<(sled::Tree, Writes)> = Vec::new();
        let mut done = Rekeyed::default();

        let mut accounts = Writes::default();
        let mut localparts = Writes::default();
        let mut profiles = Writes::default();
        for (from, to) in &map {
            let Some(raw) = self.accounts.get(from.0.as_bytes())? else {
                continue;
            };
            let mut record: super::AccountRecord = decode(&raw)?;
            record.id = to.clone();
            accounts.moved(from, to, encode(&record)?);
            localparts.insert.push((
                record.localpart.as_bytes().to_vec(),
                to.0.as_bytes().to_vec(),
            ));
            if let Some(profile) = self.profiles.get(from.0.as_bytes())? {
                profiles.moved(from, to, profile.to_vec());
            }
        }
        done.accounts = accounts.len();
        trees.push((self.accounts.clone(), accounts));
        trees.push((self.localparts.clone(), localparts));
        trees.push((self.profiles.clone(), profiles));
        trees.push((self.departing.clone(), moved_keys(&self.departing, &map)?));
        let scheduled = moved_keys(&self.scheduled, &map)?;
        done.scheduled = scheduled.len();
        trees.push((self.scheduled.clone(), scheduled));

        let mut held = Writes::default();
        for (from, to) in &map {
            if let Some(raw) = self.held.get(from.0.as_bytes())? {
                let mut agent: HeldAgent = decode(&raw)?;
                agent.id = to.clone();
                held.moved(from, to, encode(&agent)?);
            }
        }
        done.held = held.len();
        trees.push((self.held.clone(), held));

        let [members, powers] = self.rekeyed_memberships(&map)?;
        done.memberships = members.1.len();
        done.powers = powers.1.len();
        trees.extend([members, powers]);

        let intents = self.rekeyed_intents(&map)?;
        done.intents = intents.len();
        trees.push((self.intents.clone(), intents));

        let mut meta = Writes::default();
        meta.remove.push(SYNC_POINT_KEY.to_vec());
        meta.insert
            .push((LAST_GOOD_KEY.to_vec(), encode(last_good)?));
        trees.push((self.meta.clone(), meta));

        let audit = rekeys
            .iter()
            .map(|r| encode(&r.audit))
            .collect::<Result<Vec<_>, _>>()?;
        let run = encode(run)?;
        self.write_rekeyed(trees, &audit, &run)?;
        self.flush()?;
        Ok(done)
    }
}

impl From<sled::Error> for RekeyError {
    fn from(e: sled::Error) -> Self {
        RekeyError::Ledger(LedgerError::Storage(e))
    }
}

impl Ledger {
    /// `rekeys` as a map, once checked against the ledger (see [`Ledger::rekey`]).
    fn checked(&self, rekeys: &[Rekey]) -> Result<BTreeMap<StableId, StableId>, RekeyError> {
        let refuse = |r: &Rekey, why: String| RekeyError::Refused {
            from: r.from.clone(),
            to: r.to.clone(),
            why,
        };
        let mut map = BTreeMap::new();
        let mut targets = BTreeSet::new();
        for r in rekeys {
            if r.from == r.to {
                return Err(refuse(r, "it is the same id".into()));
            }
            if !self.accounts.contains_key(r.from.0.as_bytes())? {
                return Err(refuse(
                    r,
                    format!("no managed account has the id {}", r.from),
                ));
            }
            if map.insert(r.from.clone(), r.to.clone()).is_some() {
                return Err(refuse(r, format!("{} is given a new id twice", r.from)));
            }
            if !targets.insert(r.to.clone()) {
                return Err(refuse(r, format!("{} is given to two accounts", r.to)));
            }
        }
        for r in rekeys {
            if !map.contains_key(&r.to) {
                if let Some(raw) = self.accounts.get(r.to.0.as_bytes())? {
                    let holder: super::AccountRecord = decode(&raw)?;
                    return Err(refuse(
                        r,
                        format!(
                            "{} is already the id of {}, which keeps it",
                            r.to, holder.mxid
                        ),
                    ));
                }
            }
        }
        Ok(map)
    }

    /// The journal's unfinished intents about the agents of `map`, with their new ids (keys by
    /// mxid or room: unchanged).
    fn rekeyed_intents(&self, map: &BTreeMap<StableId, StableId>) -> Result<Writes, LedgerError> {
        let mut writes = Writes::default();
        for (key, mut intent) in self.intents()? {
            let id = match &mut intent {
                Intent::Account { id, .. } => Some(id),
                Intent::Room { id, .. } => id.as_mut(),
            };
            if let Some(id) = id {
                if let Some(to) = map.get(id) {
                    *id = to.clone();
                    writes.insert.push((key, encode(&intent)?));
                }
            }
        }
        Ok(writes)
    }

    /// Applies `trees`' writes, appends `audit` and `run`, in one transaction.
    fn write_rekeyed(
        &self,
        trees: Vec<(sled::Tree, Writes)>,
        audit: &[Vec<u8>],
        run: &[u8],
    ) -> Result<(), LedgerError> {
        let (mut all, writes): (Vec<sled::Tree>, Vec<Writes>) = trees.into_iter().unzip();
        all.push(self.audit.clone());
        all.push(self.runs.clone());
        let result: Result<(), TransactionError<()>> = all.as_slice().transaction(|views| {
            let [views @ .., trail, runs] = views.as_slice() else {
                return Err(ConflictableTransactionError::Abort(()));
            };
            for (view, writes) in views.iter().zip(&writes) {
                for key in &writes.remove {
                    view.remove(key.as_slice())?;
                }
                for (key, value) in &writes.insert {
                    view.insert(key.as_slice(), value.as_slice())?;
                }
            }
            for entry in audit {
                let seq = trail.generate_id()?;
                trail.insert(&seq.to_be_bytes(), entry.as_slice())?;
            }
            let seq = runs.generate_id()?;
            runs.insert(&seq.to_be_bytes(), run)?;
            Ok(())
        });
        match result {
            Ok(()) => Ok(()),
            Err(TransactionError::Abort(())) => Err(LedgerError::Corrupt(
                "re-keying the ledger was aborted".into(),
            )),
            Err(TransactionError::Storage(e)) => Err(LedgerError::Storage(e)),
        }
    }
}

/// The entries of `tree` (keyed by stable id) of the accounts in `map`, under their new ids.
fn moved_keys(
    tree: &sled::Tree,
    map: &BTreeMap<StableId, StableId>,
) -> Result<Writes, LedgerError> {
    let mut writes = Writes::default();
    for (from, to) in map {
        if let Some(value) = tree.get(from.0.as_bytes())? {
            writes.moved(from, to, value.to_vec());
        }
    }
    Ok(writes)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;
