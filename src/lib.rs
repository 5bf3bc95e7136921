//! matrix-ldap-sync: keeps a Matrix homeserver's accounts in step with an LDAP / Active
//! Directory directory.
//!
//! A sync run is a pipeline of plain data (see `ARCHITECTURE.md`):
//! `directory` → [`directory::Snapshot`] → `mapping` → [`mapping::Desired`] → `plan`
//! (against the `ledger`) → [`plan::Plan`] → `apply` → `homeserver`.
//! Only the two ends talk to the network; the middle is pure.

pub mod apply;
pub mod brake;
pub mod cli;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod directory;
pub mod homeserver;
pub mod ledger;
pub mod mapping;
pub mod migrate;
pub mod pipeline;
pub mod plan;
pub mod secret;
