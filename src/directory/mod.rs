//! Reads a complete [`Snapshot`] of agents from LDAP / Active Directory.
//!
//! [`read_snapshot`] (or [`Directory::connect`] + [`Directory::read_snapshot`]) returns a
//! Snapshot only when every page of every base's search ended with result code success;
//! size/time limits, referrals, timeouts and lost connections are errors, never a short list.

// A DirectoryError ends a run (one per run, never in a hot loop); its fields are kept flat so
// callers and tests can match on them, at the cost of a large `Err` variant.
#![allow(clippy::result_large_err)]

mod changes;
mod decode;
mod dn;
mod ds389;
mod entry;
mod error;
mod filters;
mod groups;
mod guid;
mod reader;
mod server;
mod snapshot;
mod sync_messages;
mod syncrepl;
mod tls;
mod usn;

pub use changes::{read_changes_with, Changes, Incremental, SyncDialect, SyncId, Watermark};
pub use dn::{same_dn, Dn, DnError, DnKey};
pub use error::{result_code_name, DirectoryError};
pub use groups::{read_snapshot_with, Group, GroupQuery, Groups, Member, Resolved, RoomSources};
pub use guid::{guid_to_bytes, guid_to_string};
pub use reader::{read_snapshot, Directory};
pub use server::ServerKind;
pub use snapshot::{Entry, SkippedEntry, Snapshot, StableId};

/// How the stable id attribute is encoded (`id_format` in the mapping rules).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IdFormat {
    /// A text value, e.g. OpenLDAP / 389-ds `entryUUID`, FreeIPA `ipaUniqueID`.
    Text,
    /// AD binary `objectGUID` (16 bytes), turned into its canonical string form.
    Guid,
}

/// What to read: which entries are agents, which attributes, where the stable id is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentQuery {
    /// LDAP filter selecting agents, e.g. `(objectClass=inetOrgPerson)`.
    pub filter: String,
    /// Attributes to read (the id attribute is always added). Empty: all user attributes.
    pub attributes: Vec<String>,
    /// The stable id attribute (any case), e.g. `entryUUID` or `objectGUID`.
    pub id_attribute: String,
    pub id_format: IdFormat,
}
