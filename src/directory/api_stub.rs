//! Placeholder for the directory reader (being written on another branch).
#![allow(clippy::unused_async)]

use std::time::Duration;

use super::Snapshot;
use crate::config::DirectoryConfig;

pub enum IdFormat {
    Text,
    Guid,
}

pub struct AgentQuery {
    pub filter: String,
    pub attributes: Vec<String>,
    pub id_attribute: String,
    pub id_format: IdFormat,
}

#[derive(Debug, thiserror::Error)]
#[error("directory not implemented")]
pub struct DirectoryError;

pub struct Directory;

impl Directory {
    pub async fn connect(_cfg: &DirectoryConfig) -> Result<Directory, DirectoryError> {
        Err(DirectoryError)
    }
    pub fn server(&self) -> &str {
        ""
    }
    pub async fn read_snapshot(
        &mut self,
        _bases: &[String],
        _query: &AgentQuery,
        _page_size: i32,
        _timeout: Duration,
    ) -> Result<Snapshot, DirectoryError> {
        Err(DirectoryError)
    }
    pub async fn close(self) {}
}

pub async fn read_snapshot(
    _cfg: &DirectoryConfig,
    _query: &AgentQuery,
) -> Result<Snapshot, DirectoryError> {
    Err(DirectoryError)
}
