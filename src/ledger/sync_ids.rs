//! The `sync_ids` tree: the id each agent is named by in the directory's content-sync
//! messages, when that is not its stable id (389-DS names entries by `nsUniqueId`), → its
//! stable id. An incremental read's deletions come by those ids only (the entry is gone, its
//! `entryUUID` with it): this is what tells which agents they were.
//!
//! Every entry is a fact about the directory, true whatever the run did: a stale one (an entry
//! since deleted) names an id the server will not send again, and an id of an agent that left
//! only leads to an account the plan no longer manages or already departed. Complete reads
//! replace the whole tree, so it holds the agents of the last one and those read since.

use std::collections::{BTreeMap, BTreeSet};

use super::{Ledger, LedgerError};
use crate::directory::{StableId, SyncId};

/// How a read changes the `sync_ids` tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncIdUpdate {
    /// A complete read: these are every agent's.
    Replace(Vec<(SyncId, StableId)>),
    /// An incremental read: `set` these (agents read), `forget` these (entries gone).
    Patch {
        set: Vec<(SyncId, StableId)>,
        forget: BTreeSet<SyncId>,
    },
}

impl Ledger {
    /// The stable ids recorded for those of `ids` the tree knows.
    pub fn stable_ids_of<'a>(
        &self,
        ids: impl IntoIterator<Item = &'a SyncId>,
    ) -> Result<BTreeSet<StableId>, LedgerError> {
        let mut found = BTreeSet::new();
        for id in ids {
            if let Some(raw) = self.sync_ids.get(id.hex().as_bytes())? {
                found.insert(StableId(String::from_utf8_lossy(&raw).into_owned()));
            }
        }
        Ok(found)
    }

    /// Writes what a read saw, in one batch. A complete read's replacement writes only what
    /// differs from the tree (a run with nothing changed writes nothing).
    pub fn record_sync_ids(&self, update: &SyncIdUpdate) -> Result<(), LedgerError> {
        let mut batch = sled::Batch::default();
        match update {
            SyncIdUpdate::Replace(all) => {
                let mut wanted: BTreeMap<&str, &StableId> =
                    all.iter().map(|(sync, id)| (sync.hex(), id)).collect();
                for item in self.sync_ids.iter() {
                    let (key, value) = item?;
                    let key_text = String::from_utf8_lossy(&key);
                    match wanted.remove(key_text.as_ref()) {
                        Some(id) if id.0.as_bytes() == value.as_ref() => {}
                        Some(id) => batch.insert(key.as_ref(), id.0.as_bytes()),
                        None => batch.remove(key),
                    }
                }
                for (sync, id) in wanted {
                    batch.insert(sync.as_bytes(), id.0.as_bytes());
                }
            }
            SyncIdUpdate::Patch { set, forget } => {
                for sync in forget {
                    batch.remove(sync.hex().as_bytes());
                }
                for (sync, id) in set {
                    batch.insert(sync.hex().as_bytes(), id.0.as_bytes());
                }
            }
        }
        self.sync_ids.apply_batch(batch)?;
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn sync(n: u8) -> SyncId {
        SyncId::from_bytes(&[n; 16]).unwrap()
    }

    fn id(s: &str) -> StableId {
        StableId(s.into())
    }

    #[test]
    fn replace_patch_and_resolve() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(dir.path()).unwrap();
        assert!(ledger.stable_ids_of(&[sync(1)]).unwrap().is_empty());

        ledger
            .record_sync_ids(&SyncIdUpdate::Replace(vec![
                (sync(1), id("anne")),
                (sync(2), id("bruno")),
            ]))
            .unwrap();
        assert_eq!(
            ledger.stable_ids_of(&[sync(1), sync(2), sync(3)]).unwrap(),
            [id("anne"), id("bruno")].into()
        );

        ledger
            .record_sync_ids(&SyncIdUpdate::Patch {
                set: vec![(sync(3), id("chloe"))],
                forget: [sync(2)].into(),
            })
            .unwrap();
        assert_eq!(
            ledger.stable_ids_of(&[sync(1), sync(2), sync(3)]).unwrap(),
            [id("anne"), id("chloe")].into()
        );

        // A complete read: exactly what it saw (bruno's id back under another stable id).
        ledger
            .record_sync_ids(&SyncIdUpdate::Replace(vec![(sync(2), id("bruno2"))]))
            .unwrap();
        assert_eq!(
            ledger.stable_ids_of(&[sync(1), sync(2), sync(3)]).unwrap(),
            [id("bruno2")].into()
        );
    }
}
