//! The write-ahead journal's storage: what each homeserver write about to be sent aims at,
//! written and flushed before it is sent and cleared with its result, so that a run that dies
//! between "the homeserver did it" and "the ledger recorded it" leaves a note of it. The
//! entries' meaning (and how an unfinished one is resolved) belongs to `apply::journal`; here
//! they are keys and JSON.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{decode, encode, Ledger, LedgerError};
use crate::config::ReversibleStep;
use crate::directory::StableId;

/// One write about to be sent to the homeserver.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "on", rename_all = "snake_case")]
pub enum Intent {
    /// An account action (the plan's `ActionKind` name in `kind`).
    Account {
        id: StableId,
        mxid: String,
        kind: String,
        /// For a creation: the agent's DN and the localpart given.
        #[serde(default)]
        dn: String,
        #[serde(default)]
        localpart: String,
        /// For a departure or a return: the reversible step.
        #[serde(default)]
        step: Option<ReversibleStep>,
        reason: String,
        /// When it was written (Unix seconds).
        at: i64,
    },
    /// A room membership or power level.
    Room {
        /// The managed room's key (alias or id, as the ledger knows it).
        room: String,
        id: Option<StableId>,
        mxid: String,
        /// `join_room`, `remove_from_room`, `grant_power` or `revoke_power`.
        kind: String,
        /// For a power level: the level aimed at (`None`: taken back).
        #[serde(default)]
        level: Option<i64>,
        reason: String,
        at: i64,
    },
}

impl Intent {
    /// Its key in the journal: one entry per (target, kind), so a retried action replaces its
    /// own entry.
    pub fn key(&self) -> Vec<u8> {
        match self {
            Intent::Account { mxid, kind, .. } => format!("a\0{mxid}\0{kind}").into_bytes(),
            Intent::Room {
                room, mxid, kind, ..
            } => format!("r\0{room}\0{mxid}\0{kind}").into_bytes(),
        }
    }
}

impl Ledger {
    /// Writes `intents` and makes them durable before anything is sent.
    pub fn intend(&self, intents: &[Intent]) -> Result<(), LedgerError> {
        if intents.is_empty() {
            return Ok(());
        }
        let mut batch = sled::Batch::default();
        for intent in intents {
            batch.insert(intent.key(), encode(intent)?);
        }
        self.intents.apply_batch(batch)?;
        self.intents.flush()?;
        Ok(())
    }

    /// Every unfinished intent, with its key.
    pub fn intents(&self) -> Result<Vec<(Vec<u8>, Intent)>, LedgerError> {
        self.intents
            .iter()
            .map(|item| {
                let (key, value) = item?;
                Ok((key.to_vec(), decode(&value)?))
            })
            .collect()
    }

    /// True when nothing is unfinished (cheap: no decoding).
    pub fn journal_is_empty(&self) -> bool {
        self.intents.is_empty()
    }

    /// Ends the intent `key` (its result is recorded, or nothing was sent).
    pub fn clear_intent(&self, key: &[u8]) -> Result<(), LedgerError> {
        self.intents.remove(key)?;
        Ok(())
    }

    /// Creations begun and never recorded: mxid → agent (the plan finishes those as the
    /// daemon's own, never as someone else's account).
    pub fn creation_intents(&self) -> Result<BTreeMap<String, StableId>, LedgerError> {
        Ok(self
            .intents()?
            .into_iter()
            .filter_map(|(_, intent)| match intent {
                Intent::Account { id, mxid, kind, .. } if kind == "create_account" => {
                    Some((mxid, id))
                }
                _ => None,
            })
            .collect())
    }
}
