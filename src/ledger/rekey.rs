//! Re-keying the ledger from one stable id to another (`migrate-ids`): after the mapping's id
//! attribute changed, each managed account is given its agent's new id, in every tree that
//! holds stable ids.
//!
//! Trees with stable ids as keys: `accounts` (and the id inside the record), `profiles`,
//! `departing`, `scheduled`, `held` (and the id inside); as values: `localparts`; inside keys
//! and records: `room_members`, `room_powers` (room, NUL, id); inside records: the journal's
//! `intents`. With them go one audit entry per account; the last write records the new scope
//! as the last good run, with a run entry.
//!
//! Crash-safe in steps: each account moves whole (every tree) in one transaction, a few
//! thousand accounts at a time (one transaction for 100,000 accounts took 1.5 GB). A process
//! that dies between two steps leaves some accounts under their new ids and the others under
//! their old ones, and the last good run's scope still the old one: the brake holds every run
//! (the scope changed), and `migrate-ids` run again matches the moved accounts by their (new)
//! id and moves the rest. The sync point is forgotten in the first step, so that no run builds
//! on a read made under the old ids. Ids that trade places or follow each other (a new id that
//! is another account's old one) move in one transaction.

use std::collections::{BTreeMap, BTreeSet};

use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;

use super::incremental::SYNC_POINT_KEY;
use super::journal::Intent;
use super::{
    decode, encode, AuditEntry, HeldAgent, LastGood, Ledger, LedgerError, RunRecord, LAST_GOOD_KEY,
};
use crate::directory::StableId;

/// Accounts moved per transaction.
const STEP: usize = 2_000;

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

impl From<sled::Error> for RekeyError {
    fn from(e: sled::Error) -> Self {
        RekeyError::Ledger(LedgerError::Storage(e))
    }
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

/// The trees a re-key writes (their order in [`Ledger::rekey_trees`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Part {
    Accounts,
    Localparts,
    Profiles,
    Departing,
    Scheduled,
    Held,
    Members,
    Powers,
    Intents,
    Meta,
}

/// One write of a re-key: `value` `None` removes `key`.
#[derive(Debug)]
pub(super) struct Write {
    pub(super) part: Part,
    pub(super) key: Vec<u8>,
    pub(super) value: Option<Vec<u8>>,
}

/// The writes that move each account (by its old id): removals and insertions.
pub(super) type Moves = BTreeMap<StableId, Vec<Write>>;

/// Records `value` moved from `from`'s key to `to`'s in `part`, for the account `from`.
fn moved(moves: &mut Moves, part: Part, from: &StableId, to: &StableId, value: Vec<u8>) {
    let writes = moves.entry(from.clone()).or_default();
    writes.push(Write {
        part,
        key: from.0.as_bytes().to_vec(),
        value: None,
    });
    writes.push(Write {
        part,
        key: to.0.as_bytes().to_vec(),
        value: Some(value),
    });
}

impl Ledger {
    /// Gives each account of `rekeys` its new key everywhere, appends the audit entries, and
    /// last records `last_good` (the scope the new ids come from) and `run` (see the module
    /// doc for the steps). Refuses (writing nothing) an id that is not a managed account's, an
    /// id given twice, or a new id that is another account's which keeps it.
    pub fn rekey(
        &self,
        rekeys: &[Rekey],
        last_good: &LastGood,
        run: &RunRecord,
    ) -> Result<Rekeyed, RekeyError> {
        self.rekey_in_steps(rekeys, last_good, run, STEP)
    }

    fn rekey_in_steps(
        &self,
        rekeys: &[Rekey],
        last_good: &LastGood,
        run: &RunRecord,
        step: usize,
    ) -> Result<Rekeyed, RekeyError> {
        let map = self.checked(rekeys)?;
        let (moves, done) = self.moves(&map)?;
        let audit: BTreeMap<&StableId, Vec<u8>> = rekeys
            .iter()
            .map(|r| Ok((&r.from, encode(&r.audit)?)))
            .collect::<Result<_, LedgerError>>()?;
        // A new id that is another account's old one: both in the same transaction.
        let chained = map.values().any(|to| map.contains_key(to));
        let froms: Vec<&StableId> = map.keys().collect();
        let steps: Vec<&[&StableId]> = match (froms.is_empty(), chained) {
            (true, _) => vec![&[]],
            (false, true) => vec![froms.as_slice()],
            (false, false) => froms.chunks(step.max(1)).collect(),
        };
        let trees = self.rekey_trees()?;
        let (last_good, run) = (encode(last_good)?, encode(run)?);
        for (i, accounts) in steps.iter().enumerate() {
            let mut writes: Vec<&Write> = accounts
                .iter()
                .flat_map(|from| moves.get(*from).into_iter().flatten())
                .collect();
            let forget_point = Write {
                part: Part::Meta,
                key: SYNC_POINT_KEY.to_vec(),
                value: None,
            };
            let record_scope = Write {
                part: Part::Meta,
                key: LAST_GOOD_KEY.to_vec(),
                value: Some(last_good.clone()),
            };
            let last = i + 1 == steps.len();
            if i == 0 {
                writes.push(&forget_point);
            }
            if last {
                writes.push(&record_scope);
            }
            let entries: Vec<&[u8]> = accounts
                .iter()
                .filter_map(|from| audit.get(*from).map(Vec::as_slice))
                .collect();
            self.write_step(&trees, &writes, &entries, last.then_some(run.as_slice()))?;
            self.flush()?;
        }
        Ok(done)
    }

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

    /// The writes that move each account of `map`, and what they change.
    fn moves(&self, map: &BTreeMap<StableId, StableId>) -> Result<(Moves, Rekeyed), LedgerError> {
        let mut moves = Moves::new();
        let mut done = Rekeyed::default();
        for (from, to) in map {
            let key = from.0.as_bytes();
            let Some(raw) = self.accounts.get(key)? else {
                continue;
            };
            let mut record: super::AccountRecord = decode(&raw)?;
            record.id = to.clone();
            moved(&mut moves, Part::Accounts, from, to, encode(&record)?);
            moves.entry(from.clone()).or_default().push(Write {
                part: Part::Localparts,
                key: record.localpart.as_bytes().to_vec(),
                value: Some(to.0.as_bytes().to_vec()),
            });
            done.accounts += 1;
            if let Some(profile) = self.profiles.get(key)? {
                moved(&mut moves, Part::Profiles, from, to, profile.to_vec());
            }
            if let Some(value) = self.departing.get(key)? {
                moved(&mut moves, Part::Departing, from, to, value.to_vec());
            }
            if let Some(value) = self.scheduled.get(key)? {
                moved(&mut moves, Part::Scheduled, from, to, value.to_vec());
                done.scheduled += 1;
            }
            if let Some(raw) = self.held.get(key)? {
                let mut agent: HeldAgent = decode(&raw)?;
                agent.id = to.clone();
                moved(&mut moves, Part::Held, from, to, encode(&agent)?);
                done.held += 1;
            }
        }
        (done.memberships, done.powers) = self.rekeyed_memberships(map, &mut moves)?;
        done.intents = self.rekeyed_intents(map, &mut moves)?;
        Ok((moves, done))
    }

    /// The journal's unfinished intents about the agents of `map`, rewritten with their new
    /// ids (keyed by mxid or room: the keys stay); returns how many.
    fn rekeyed_intents(
        &self,
        map: &BTreeMap<StableId, StableId>,
        moves: &mut Moves,
    ) -> Result<usize, LedgerError> {
        let mut count = 0;
        for (key, mut intent) in self.intents()? {
            let id = match &mut intent {
                Intent::Account { id, .. } => Some(id),
                Intent::Room { id, .. } => id.as_mut(),
            };
            let Some(id) = id else { continue };
            let Some(to) = map.get(id) else { continue };
            let from = std::mem::replace(id, to.clone());
            moves.entry(from).or_default().push(Write {
                part: Part::Intents,
                key,
                value: Some(encode(&intent)?),
            });
            count += 1;
        }
        Ok(count)
    }

    /// The trees of [`Part`], in its order, then `audit` and `runs`.
    fn rekey_trees(&self) -> Result<Vec<sled::Tree>, LedgerError> {
        let [members, powers] = self.membership_trees()?;
        Ok(vec![
            self.accounts.clone(),
            self.localparts.clone(),
            self.profiles.clone(),
            self.departing.clone(),
            self.scheduled.clone(),
            self.held.clone(),
            members,
            powers,
            self.intents.clone(),
            self.meta.clone(),
            self.audit.clone(),
            self.runs.clone(),
        ])
    }

    /// Applies `writes` (removals first: a key one account leaves may be the one another
    /// takes), appends `audit` and `run`, in one transaction over `trees`.
    fn write_step(
        &self,
        trees: &[sled::Tree],
        writes: &[&Write],
        audit: &[&[u8]],
        run: Option<&[u8]>,
    ) -> Result<(), LedgerError> {
        let result: Result<(), TransactionError<()>> = trees.transaction(|views| {
            let [parts @ .., trail, runs] = views.as_slice() else {
                return Err(ConflictableTransactionError::Abort(()));
            };
            let view = |part: Part| parts.get(part as usize);
            for write in writes.iter().filter(|w| w.value.is_none()) {
                let tree = view(write.part).ok_or(ConflictableTransactionError::Abort(()))?;
                tree.remove(write.key.as_slice())?;
            }
            for write in writes {
                if let (Some(tree), Some(value)) = (view(write.part), &write.value) {
                    tree.insert(write.key.as_slice(), value.as_slice())?;
                }
            }
            for entry in audit {
                let seq = trail.generate_id()?;
                trail.insert(&seq.to_be_bytes(), *entry)?;
            }
            if let Some(run) = run {
                let seq = runs.generate_id()?;
                runs.insert(&seq.to_be_bytes(), run)?;
            }
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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;
