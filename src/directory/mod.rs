//! Reads a complete [`Snapshot`] of agents from LDAP / Active Directory.

mod snapshot;

pub use snapshot::{Entry, SkippedEntry, Snapshot, StableId};

mod api_stub;
pub use api_stub::{read_snapshot, AgentQuery, Directory, DirectoryError, IdFormat};
