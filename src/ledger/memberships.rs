//! The ledger's room trees: which rooms the daemon manages (and whether it created them), the
//! memberships it added and the power levels it granted. A departure can remove exactly these,
//! a return restore them, and `managed` rooms never lose people the daemon did not add.
//!
//! Trees: `rooms` (room key → [`RoomRecord`]), `room_members` and `room_powers`
//! (room key, NUL, stable id → [`MembershipRecord`] / [`PowerRecord`]). Each write goes with
//! its audit entry in one transaction.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sled::transaction::TransactionError;
use sled::Transactional;

use super::rekey::{Moves, Part, Write};
use super::{decode, encode, AuditEntry, Ledger, LedgerError};
use crate::directory::StableId;
use crate::mapping::rooms::Mode;

const ROOMS: &str = "rooms";
const MEMBERS: &str = "room_members";
const POWERS: &str = "room_powers";

/// A room the rules name and the daemon has resolved or created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomRecord {
    /// The alias or room id the rules give.
    pub key: String,
    pub room_id: String,
    /// The daemon created it (as opposed to finding it).
    pub created: bool,
    pub space: bool,
    /// The rule (template) that gave it, so a templated room nobody renders to any more is
    /// still known as managed.
    pub rule: String,
    pub mode: Mode,
    /// The space it has been linked under (`m.space.child` + `m.space.parent`).
    pub parent: Option<String>,
    /// Unix seconds.
    pub at: i64,
}

/// A membership the daemon added.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembershipRecord {
    pub room: String,
    pub id: StableId,
    pub mxid: String,
    pub reason: String,
    pub at: i64,
}

/// A power level the daemon granted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PowerRecord {
    pub room: String,
    pub id: StableId,
    pub mxid: String,
    pub level: i64,
    pub reason: String,
    pub at: i64,
}

/// The room trees, read once at the start of a run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoomsView {
    pub rooms: BTreeMap<String, RoomRecord>,
    pub members: BTreeMap<(String, StableId), MembershipRecord>,
    pub powers: BTreeMap<(String, StableId), PowerRecord>,
}

impl RoomsView {
    /// The memberships the daemon added in `room`.
    pub fn members_of<'a>(
        &'a self,
        room: &'a str,
    ) -> impl Iterator<Item = &'a MembershipRecord> + 'a {
        self.members
            .range((room.to_string(), StableId::default())..)
            .take_while(move |((r, _), _)| r == room)
            .map(|(_, m)| m)
    }

    /// The power levels the daemon granted in `room`.
    pub fn powers_in<'a>(&'a self, room: &'a str) -> impl Iterator<Item = &'a PowerRecord> + 'a {
        self.powers
            .range((room.to_string(), StableId::default())..)
            .take_while(move |((r, _), _)| r == room)
            .map(|(_, p)| p)
    }
}

fn pair_key(room: &str, id: &StableId) -> Vec<u8> {
    let mut key = Vec::with_capacity(room.len() + 1 + id.0.len());
    key.extend_from_slice(room.as_bytes());
    key.push(0);
    key.extend_from_slice(id.0.as_bytes());
    key
}

impl Ledger {
    fn room_tree(&self, name: &str) -> Result<sled::Tree, LedgerError> {
        Ok(self.db.open_tree(name)?)
    }

    /// Every managed room, membership and power level.
    pub fn rooms_view(&self) -> Result<RoomsView, LedgerError> {
        let mut view = RoomsView::default();
        for item in self.room_tree(ROOMS)?.iter() {
            let record: RoomRecord = decode(&item?.1)?;
            view.rooms.insert(record.key.clone(), record);
        }
        for item in self.room_tree(MEMBERS)?.iter() {
            let record: MembershipRecord = decode(&item?.1)?;
            view.members
                .insert((record.room.clone(), record.id.clone()), record);
        }
        for item in self.room_tree(POWERS)?.iter() {
            let record: PowerRecord = decode(&item?.1)?;
            view.powers
                .insert((record.room.clone(), record.id.clone()), record);
        }
        Ok(view)
    }

    pub fn room(&self, key: &str) -> Result<Option<RoomRecord>, LedgerError> {
        self.room_tree(ROOMS)?
            .get(key.as_bytes())?
            .map(|v| decode(&v))
            .transpose()
    }

    /// Records a room as resolved, created or linked.
    pub fn record_room(&self, record: &RoomRecord, audit: &AuditEntry) -> Result<(), LedgerError> {
        self.write_with_audit(ROOMS, record.key.as_bytes(), Some(encode(record)?), audit)
    }

    /// Records a membership the daemon added.
    pub fn record_membership(
        &self,
        record: &MembershipRecord,
        audit: &AuditEntry,
    ) -> Result<(), LedgerError> {
        let key = pair_key(&record.room, &record.id);
        self.write_with_audit(MEMBERS, &key, Some(encode(record)?), audit)
    }

    /// Forgets a membership (removed, or no longer the daemon's to remove).
    pub fn remove_membership(
        &self,
        room: &str,
        id: &StableId,
        audit: &AuditEntry,
    ) -> Result<(), LedgerError> {
        self.write_with_audit(MEMBERS, &pair_key(room, id), None, audit)
    }

    /// Records a power level granted.
    pub fn record_power(
        &self,
        record: &PowerRecord,
        audit: &AuditEntry,
    ) -> Result<(), LedgerError> {
        let key = pair_key(&record.room, &record.id);
        self.write_with_audit(POWERS, &key, Some(encode(record)?), audit)
    }

    /// Forgets a power level (revoked).
    pub fn remove_power(
        &self,
        room: &str,
        id: &StableId,
        audit: &AuditEntry,
    ) -> Result<(), LedgerError> {
        self.write_with_audit(POWERS, &pair_key(room, id), None, audit)
    }

    /// `room_members` and `room_powers`, for [`Ledger::rekey`].
    pub(super) fn membership_trees(&self) -> Result<[sled::Tree; 2], LedgerError> {
        Ok([self.room_tree(MEMBERS)?, self.room_tree(POWERS)?])
    }

    /// Adds to `moves` the memberships and power levels of the agents in `map` (old id → new
    /// id) moved to their new ids; returns how many of each.
    pub(super) fn rekeyed_memberships(
        &self,
        map: &BTreeMap<StableId, StableId>,
        moves: &mut Moves,
    ) -> Result<(usize, usize), LedgerError> {
        fn member(r: &mut MembershipRecord) -> (&String, &mut StableId) {
            (&r.room, &mut r.id)
        }
        fn power(r: &mut PowerRecord) -> (&String, &mut StableId) {
            (&r.room, &mut r.id)
        }
        Ok((
            self.rekeyed_pairs(MEMBERS, Part::Members, map, moves, member)?,
            self.rekeyed_pairs(POWERS, Part::Powers, map, moves, power)?,
        ))
    }

    /// Adds to `moves` the records of the tree `name` (keyed by room and id) of the agents in
    /// `map`, moved to their new ids; `parts` gives a record's room and id. Returns how many.
    fn rekeyed_pairs<R: Serialize + serde::de::DeserializeOwned>(
        &self,
        name: &str,
        part: Part,
        map: &BTreeMap<StableId, StableId>,
        moves: &mut Moves,
        parts: fn(&mut R) -> (&String, &mut StableId),
    ) -> Result<usize, LedgerError> {
        let mut count = 0;
        for item in self.room_tree(name)?.iter() {
            let (key, value) = item?;
            let mut record: R = decode(&value)?;
            let (room, id) = parts(&mut record);
            let Some(to) = map.get(id) else { continue };
            let new_key = pair_key(room, to);
            let from = std::mem::replace(id, to.clone());
            let writes = moves.entry(from).or_default();
            writes.push(Write {
                part,
                key: key.to_vec(),
                value: None,
            });
            writes.push(Write {
                part,
                key: new_key,
                value: Some(encode(&record)?),
            });
            count += 1;
        }
        Ok(count)
    }

    /// Sets (or with `None` removes) `key` in the tree `name` and appends `audit`, atomically.
    fn write_with_audit(
        &self,
        name: &str,
        key: &[u8],
        value: Option<Vec<u8>>,
        audit: &AuditEntry,
    ) -> Result<(), LedgerError> {
        let tree = self.room_tree(name)?;
        let audit_value = encode(audit)?;
        let result: Result<(), TransactionError<()>> =
            (&tree, &self.audit).transaction(|(tree, trail)| {
                match &value {
                    Some(v) => {
                        tree.insert(key, v.as_slice())?;
                    }
                    None => {
                        tree.remove(key)?;
                    }
                }
                let seq = trail.generate_id()?;
                trail.insert(&seq.to_be_bytes(), audit_value.as_slice())?;
                Ok(())
            });
        match result {
            Ok(()) => Ok(()),
            Err(TransactionError::Abort(())) => {
                Err(LedgerError::Corrupt(format!("writing {name} was aborted")))
            }
            Err(TransactionError::Storage(e)) => Err(LedgerError::Storage(e)),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;
