//! Agents matching extra LDAP filters (room rules such as `filter = "(l=Paris)"`): one paged,
//! complete-or-error search per filter, combined with the agent filter, reading only the id.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::error::DirectoryError;
use super::reader::{Collector, Directory};
use super::{AgentQuery, StableId};

impl Directory {
    /// For each of `filters`, the stable ids of the agents under `bases` that match both the
    /// agent filter and it.
    pub async fn read_filter_matches(
        &mut self,
        bases: &[String],
        agents: &AgentQuery,
        filters: &[String],
        page_size: i32,
        timeout: Duration,
    ) -> Result<BTreeMap<String, BTreeSet<StableId>>, DirectoryError> {
        let mut out = BTreeMap::new();
        for filter in filters {
            let query = AgentQuery {
                filter: format!("(&{}{filter})", agents.filter),
                attributes: vec![agents.id_attribute.clone()],
                ..agents.clone()
            };
            let mut collector = Collector::new(&query);
            self.read_bases(
                bases,
                &query.filter,
                &query.attributes,
                page_size,
                timeout,
                &mut |se| collector.add(se),
            )
            .await?;
            let ids = collector.entries.into_iter().map(|e| e.id).collect();
            out.insert(filter.clone(), ids);
        }
        Ok(out)
    }
}
