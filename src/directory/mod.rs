//! Reads a complete [`Snapshot`] of agents from LDAP / Active Directory.

mod snapshot;

pub use snapshot::{Entry, SkippedEntry, Snapshot, StableId};
