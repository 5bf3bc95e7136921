//! RFC 4533 content synchronization, refreshOnly: the changes since a cookie.

use std::collections::BTreeMap;
use std::time::Duration;

use super::changes::{Incremental, Watermark};
use super::error::DirectoryError;
use super::reader::Directory;
use super::snapshot::Entry;
use super::AgentQuery;

impl Directory {
    /// A cookie per base, taken before a full read.
    pub(super) async fn syncrepl_watermark(
        &mut self,
        _bases: &[String],
        _query: &AgentQuery,
        _timeout: Duration,
    ) -> Result<Watermark, DirectoryError> {
        Err(DirectoryError::Config("syncrepl: not built yet".into()))
    }

    /// The changes since `cookies`.
    pub(super) async fn syncrepl_changes(
        &mut self,
        _bases: &[String],
        _query: &AgentQuery,
        _cookies: &BTreeMap<String, Vec<u8>>,
        _timeout: Duration,
        _pass: &mut (dyn FnMut(&Entry) -> bool + Send),
    ) -> Result<Incremental, DirectoryError> {
        Err(DirectoryError::Config("syncrepl: not built yet".into()))
    }
}
