//! Active Directory incremental reads: `uSNChanged` above the watermark of the same DC
//! (`invocationId`), deletions through the Show Deleted control.

use std::time::Duration;

use super::changes::{Incremental, Watermark};
use super::error::DirectoryError;
use super::reader::Directory;
use super::snapshot::Entry;
use super::AgentQuery;

impl Directory {
    /// The DC's watermark: `highest` (its `highestCommittedUSN`, read first) and the
    /// `invocationId` of its NTDS Settings object `ds_service_name`.
    pub(super) async fn usn_watermark(
        &mut self,
        _highest: u64,
        _ds_service_name: &str,
        _timeout: Duration,
    ) -> Result<Watermark, DirectoryError> {
        Err(DirectoryError::Config("usn: not built yet".into()))
    }

    /// The changes since `usn` on the DC `invocation_id`.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn usn_changes(
        &mut self,
        _bases: &[String],
        _query: &AgentQuery,
        _invocation_id: &str,
        _usn: u64,
        _page_size: i32,
        _timeout: Duration,
        _pass: &mut (dyn FnMut(&Entry) -> bool + Send),
    ) -> Result<Incremental, DirectoryError> {
        Err(DirectoryError::Config("usn: not built yet".into()))
    }
}
