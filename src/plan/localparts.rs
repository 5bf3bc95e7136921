//! Hands out localparts to new agents: the wanted one if free, else the first free of
//! `name2`, `name3`, … A localpart is taken if the ledger holds it or this plan gave it out.
//! Agents are allocated in stable-id order, so the same directory always gives the same
//! answer, and an agent never loses a localpart it was given.

use std::collections::HashMap;

use crate::directory::StableId;
use crate::ledger::LedgerView;
use crate::mapping::DesiredAccount;

pub(super) struct LocalpartAllocator<'a> {
    ledger: &'a LedgerView,
    /// localpart → the DN of whoever has it (for the reason text); built on first need, so a
    /// plan with no new agent never builds it.
    taken: Option<HashMap<String, String>>,
}

impl<'a> LocalpartAllocator<'a> {
    pub(super) fn new(ledger: &'a LedgerView) -> Self {
        LocalpartAllocator {
            ledger,
            taken: None,
        }
    }

    /// The localpart for a new agent, and a note when it is not the one wanted.
    pub(super) fn allocate(&mut self, want: &DesiredAccount) -> (String, Option<String>) {
        let ledger = self.ledger;
        let taken = self.taken.get_or_insert_with(|| {
            ledger
                .accounts
                .values()
                .map(|r| (r.localpart.clone(), r.dn.clone()))
                .collect()
        });
        let base = &want.localpart;
        let Some(holder) = taken.get(base).cloned() else {
            taken.insert(base.clone(), want.dn.clone());
            return (base.clone(), None);
        };
        let localpart = (2u32..)
            .map(|n| format!("{base}{n}"))
            .find(|candidate| !taken.contains_key(candidate))
            .unwrap_or_else(|| format!("{base}-{}", short_id(&want.id)));
        taken.insert(localpart.clone(), want.dn.clone());
        let note = format!("`{base}` is already {holder}'s, so `{localpart}`");
        (localpart, Some(note))
    }
}

fn short_id(id: &StableId) -> String {
    id.0.chars()
        .filter(char::is_ascii_alphanumeric)
        .take(8)
        .collect::<String>()
        .to_lowercase()
}
