//! Synapse admin API client (placeholder until implemented).

use super::{Homeserver, HomeserverError, RemoteUser, Upserted, UserChanges};
use crate::config::HomeserverConfig;

/// Synapse admin API client.
pub struct SynapseClient;

fn todo_err() -> HomeserverError {
    HomeserverError::Transport {
        method: "-".into(),
        endpoint: "-".into(),
        message: "not implemented".into(),
    }
}

impl SynapseClient {
    pub fn new(_cfg: &HomeserverConfig) -> Result<SynapseClient, HomeserverError> {
        Err(todo_err())
    }
}

impl Homeserver for SynapseClient {
    async fn whoami(&self) -> Result<String, HomeserverError> {
        Err(todo_err())
    }
    async fn check_admin(&self) -> Result<String, HomeserverError> {
        Err(todo_err())
    }
    async fn get_user(&self, _mxid: &str) -> Result<Option<RemoteUser>, HomeserverError> {
        Err(todo_err())
    }
    async fn upsert_user(
        &self,
        _mxid: &str,
        _changes: &UserChanges,
    ) -> Result<Upserted, HomeserverError> {
        Err(todo_err())
    }
    async fn list_users(&self) -> Result<Vec<RemoteUser>, HomeserverError> {
        Err(todo_err())
    }
}
