//! Reading groups, complete or not at all, and resolving nested groups.
//!
//! Members come from groupOfNames `member`, groupOfUniqueNames `uniqueMember` (an optional
//! `#'…'B` uid suffix is dropped), AD `group` `member` (DNs) and posixGroup `memberUid`
//! (logins). Active Directory sends at most `MaxValRange` values of a large attribute at once,
//! named `member;range=0-1499`; the rest is asked for slice by slice (`member;range=1500-*`)
//! until a slice ends with `*`. A group whose slices stop short is an
//! [`DirectoryError::IncompleteGroup`], never a smaller group: a group read in part would look
//! like people leaving.
//!
//! Nested groups are resolved here, transitively, from the groups read (a member DN that is a
//! group's DN is that group's members); cycles are cut and reported.
//!
//! Active Directory specifics:
//! - a user's primary group (`primaryGroupID`, e.g. 513 Domain Users) does not list the user
//!   in its `member`: each group's RID (the last part of its `objectSid`) is kept, and
//!   resolving the group yields [`Member::PrimaryGroup`] for the agents to match;
//! - with [`GroupQuery::in_chain`] the DC itself resolves nesting: one agent search per rule
//!   group with the in-chain matching rule (`memberOf:1.2.840.113556.1.4.1941:=<group DN>`),
//!   instead of reading every group's members;
//! - with [`GroupQuery::range_size`] member attributes are asked for in explicit slices
//!   (`member;range=0-999`, then `1000-1999`, …), for DCs (or tests) where the server's own
//!   `MaxValRange` is not the limit wanted.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use ldap3::SearchEntry;
use tracing::{debug, info};

use super::dn::{Dn, DnKey};
use super::error::DirectoryError;
use super::reader::Directory;

/// Which entries are groups and which of their attributes list members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupQuery {
    /// LDAP filter selecting groups.
    pub filter: String,
    /// Where groups are searched (subtree). Empty: the directory's base DNs.
    pub bases: Vec<String>,
    /// Member attributes; `memberUid` values are logins, every other one holds DNs.
    pub member_attributes: Vec<String>,
    /// AD: the rule groups whose transitive members the DC is asked for with the in-chain
    /// matching rule. Empty: groups are read and resolved here.
    pub in_chain: Vec<Dn>,
    /// Ask for member attributes in slices of this many values (`member;range=0-N`).
    /// `None`: the server decides (AD slices at `MaxValRange`, others send everything).
    pub range_size: Option<u32>,
}

impl GroupQuery {
    /// groupOfNames, groupOfUniqueNames, posixGroup and AD groups.
    pub const DEFAULT_FILTER: &'static str = "(|(objectClass=groupOfNames)(objectClass=groupOfUniqueNames)(objectClass=posixGroup)(objectClass=group))";

    pub fn default_member_attributes() -> Vec<String> {
        ["member", "uniqueMember", "memberUid"]
            .map(String::from)
            .to_vec()
    }
}

/// One group as read: its direct members, in the order the directory gave them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Group {
    pub dn: String,
    /// Member DNs (`member`, `uniqueMember`): agents or other groups.
    pub members: Vec<String>,
    /// posixGroup `memberUid` values: logins, matched against the agents' uid attribute.
    pub member_uids: Vec<String>,
    /// AD: the group's RID (from its `objectSid`), which its primary members carry as
    /// `primaryGroupID` (they are not in `member`).
    pub rid: Option<u32>,
}

/// A resolved member: an entry DN (its key, see [`DnKey`]) or a login.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Member {
    Dn(DnKey),
    Uid(String),
    /// Every agent whose `primaryGroupID` is this RID.
    PrimaryGroup(u32),
}

/// The transitive members of one group.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resolved {
    /// Each member with the groups it was found through, from the asked group down to the
    /// one that lists it directly (one group for a direct member).
    pub members: BTreeMap<Member, Vec<String>>,
    /// Cycles met and cut, e.g. "cn=a → cn=b → cn=a".
    pub cycles: Vec<String>,
    /// Member values that are not DNs (no server should send one), each with its group.
    pub malformed: Vec<String>,
}

/// Every group read, by DN.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Groups {
    by_dn: BTreeMap<DnKey, Indexed>,
}

/// A group with the keys of its member DNs, made once when the groups are read.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Indexed {
    group: Group,
    /// The key of each of `group.members`, in order.
    members: Vec<DnKey>,
}

impl Groups {
    pub fn new(groups: impl IntoIterator<Item = Group>) -> Groups {
        Groups {
            by_dn: groups
                .into_iter()
                .map(|group| {
                    let members = group.members.iter().map(|m| DnKey::lenient(m)).collect();
                    (DnKey::lenient(&group.dn), Indexed { group, members })
                })
                .collect(),
        }
    }

    pub fn len(&self) -> usize {
        self.by_dn.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_dn.is_empty()
    }

    /// The group at `dn`.
    pub fn get(&self, dn: &DnKey) -> Option<&Group> {
        self.by_dn.get(dn).map(|g| &g.group)
    }

    /// The group at `dn` with only its own primary members as members (for groups whose
    /// nested members the DC resolved, see [`GroupQuery::in_chain`]).
    pub fn primary_only(&self, dn: &DnKey) -> Option<Resolved> {
        let group = self.get(dn)?;
        Some(Resolved {
            members: group
                .rid
                .map(|rid| (Member::PrimaryGroup(rid), vec![group.dn.clone()]))
                .into_iter()
                .collect(),
            ..Resolved::default()
        })
    }

    /// Every member of `dn`, nested groups followed (breadth first, so each member comes with
    /// its shortest chain of groups). `None` if no such group was read.
    pub fn resolve(&self, dn: &DnKey) -> Option<Resolved> {
        let (root, _) = self.by_dn.get_key_value(dn)?;
        let mut out = Resolved::default();
        let mut seen: BTreeSet<&DnKey> = BTreeSet::from([root]);
        // Each group to read, with the keys of the groups it was reached through.
        let mut queue: VecDeque<(&DnKey, Vec<&DnKey>)> = VecDeque::from([(root, Vec::new())]);
        while let Some((key, mut path)) = queue.pop_front() {
            let Some(indexed) = self.by_dn.get(key) else {
                continue;
            };
            path.push(key);
            let texts: Vec<String> = path
                .iter()
                .filter_map(|k| self.get(k))
                .map(|g| g.dn.clone())
                .collect();
            let group = &indexed.group;
            for (text, member) in group.members.iter().zip(&indexed.members) {
                if let Some((member, _)) = self.by_dn.get_key_value(member) {
                    if seen.insert(member) {
                        queue.push_back((member, path.clone()));
                    } else if path.contains(&member) {
                        let mut chain = texts.clone();
                        chain.push(text.clone());
                        out.cycles.push(chain.join(" → "));
                    }
                } else if member.is_malformed() {
                    out.malformed.push(format!(
                        "group `{}`: member `{text}` is not a DN ({}), ignored",
                        group.dn,
                        DnKey::parse(text)
                            .err()
                            .map(|e| e.reason)
                            .unwrap_or_default()
                    ));
                } else {
                    out.members
                        .entry(Member::Dn(member.clone()))
                        .or_insert_with(|| texts.clone());
                }
            }
            let primary = group.rid.map(Member::PrimaryGroup);
            for member in group
                .member_uids
                .iter()
                .cloned()
                .map(Member::Uid)
                .chain(primary)
            {
                out.members.entry(member).or_insert_with(|| texts.clone());
            }
        }
        Some(out)
    }
}

/// `member;range=0-1499` → the attribute `member`, values 0 to 1499 (`end: None` for `*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Range {
    pub attr: String,
    pub start: u64,
    pub end: Option<u64>,
}

/// `range=<start>-*`, or `range=<start>-<start + size - 1>` for explicit slices.
fn range_option(start: u64, size: Option<u32>) -> String {
    match size {
        Some(n) => format!("range={start}-{}", start + u64::from(n.max(1)) - 1),
        None => format!("range={start}-*"),
    }
}

/// The RID of a binary SID (its last sub-authority), e.g. 513 for Domain Users.
pub(crate) fn sid_rid(sid: &[u8]) -> Option<u32> {
    let count = usize::from(*sid.get(1)?);
    if count == 0 || sid.len() != 8 + 4 * count {
        return None;
    }
    let last: [u8; 4] = sid.get(sid.len() - 4..)?.try_into().ok()?;
    Some(u32::from_le_bytes(last))
}

pub(crate) fn parse_range(name: &str) -> Option<Range> {
    let mut parts = name.split(';');
    let attr = parts.next()?.to_string();
    for option in parts {
        let Some(bounds) = option
            .to_ascii_lowercase()
            .strip_prefix("range=")
            .map(str::to_string)
        else {
            continue;
        };
        let (start, end) = bounds.split_once('-')?;
        let start = start.parse().ok()?;
        let end = match end {
            "*" => None,
            n => Some(n.parse().ok()?),
        };
        return Some(Range { attr, start, end });
    }
    None
}

/// Reads one slice of a ranged attribute of one entry.
pub(crate) trait SliceReader {
    /// The entry's attributes (names as the server sent them) when asking `dn` for `request`,
    /// e.g. `member;range=1500-*`.
    async fn read_slice(
        &mut self,
        dn: &str,
        request: &str,
    ) -> Result<Vec<(String, Vec<String>)>, DirectoryError>;

    fn server(&self) -> String;
}

/// Asks for the slices after `first` (of `size` values each, or as many as the server sends)
/// until one ends with `*`; returns those values, in order. A slice missing, starting elsewhere
/// than asked, or empty without being the last one is an incomplete group.
pub(crate) async fn follow_ranges<R: SliceReader>(
    reader: &mut R,
    dn: &str,
    first: &Range,
    size: Option<u32>,
) -> Result<Vec<String>, DirectoryError> {
    let mut values = Vec::new();
    let mut end = first.end;
    let incomplete = |reason: String, reader: &R| DirectoryError::IncompleteGroup {
        url: reader.server(),
        group: dn.to_string(),
        reason,
    };
    while let Some(last) = end {
        let next = last + 1;
        let request = format!("{};{}", first.attr, range_option(next, size));
        let attrs = reader.read_slice(dn, &request).await?;
        let slice = attrs.into_iter().find_map(|(name, vals)| {
            parse_range(&name)
                .filter(|r| r.attr.eq_ignore_ascii_case(&first.attr))
                .map(|r| (r, vals))
        });
        match slice {
            None => {
                return Err(incomplete(
                    format!(
                        "asked for `{request}`, the server sent no such slice (after {next} values)"
                    ),
                    reader,
                ))
            }
            Some((r, _)) if r.start != next => {
                return Err(incomplete(
                    format!(
                        "asked for `{request}`, the server sent values from {}",
                        r.start
                    ),
                    reader,
                ))
            }
            Some((r, vals)) => {
                if r.end.is_some() && vals.is_empty() {
                    return Err(incomplete(
                        format!("`{request}` came back empty but not as the last slice"),
                        reader,
                    ));
                }
                debug!(group = dn, request = %request, values = vals.len(), "ranged slice read");
                values.extend(vals);
                end = r.end;
            }
        }
    }
    Ok(values)
}

/// A group as found in a search page, before its ranged attributes are followed.
struct Partial {
    group: Group,
    /// Ranged attributes still to follow, and whether they hold logins.
    pending: Vec<(Range, bool)>,
}

fn is_uid_attribute(attr: &str) -> bool {
    attr.eq_ignore_ascii_case("memberUid")
}

/// `cn=x,dc=y#'0101'B` (uniqueMember with its optional uid) → `cn=x,dc=y`.
fn strip_unique_uid(value: &str) -> &str {
    match value.rfind("#'") {
        Some(i) if value.ends_with("'B") => &value[..i],
        _ => value,
    }
}

fn partial_group(se: SearchEntry, member_attributes: &[String]) -> Partial {
    // objectSid is binary; ldap3 hands it over as text when its bytes happen to be UTF-8.
    let is_sid = |name: &&String| name.eq_ignore_ascii_case("objectSid");
    let sid = se
        .bin_attrs
        .iter()
        .find(|(name, _)| is_sid(name))
        .and_then(|(_, v)| v.first().cloned())
        .or_else(|| {
            let (_, v) = se.attrs.iter().find(|(name, _)| is_sid(name))?;
            v.first().map(|s| s.as_bytes().to_vec())
        })
        .and_then(|bytes| sid_rid(&bytes));
    let mut partial = Partial {
        group: Group {
            dn: se.dn,
            rid: sid,
            ..Group::default()
        },
        pending: Vec::new(),
    };
    let mut attrs: Vec<(String, Vec<String>)> = se.attrs.into_iter().collect();
    attrs.sort();
    for (name, values) in attrs {
        let base = name.split(';').next().unwrap_or_default();
        if !member_attributes
            .iter()
            .any(|a| a.eq_ignore_ascii_case(base))
        {
            continue;
        }
        let uid = is_uid_attribute(base);
        add_values(&mut partial.group, uid, values);
        if let Some(range) = parse_range(&name).filter(|r| r.end.is_some()) {
            partial.pending.push((range, uid));
        }
    }
    partial
}

fn add_values(group: &mut Group, uid: bool, values: Vec<String>) {
    if uid {
        group.member_uids.extend(values);
    } else {
        group.members.extend(
            values
                .into_iter()
                .map(|v| strip_unique_uid(&v).trim().to_string()),
        );
    }
}

impl SliceReader for (&mut Directory, Duration) {
    async fn read_slice(
        &mut self,
        dn: &str,
        request: &str,
    ) -> Result<Vec<(String, Vec<String>)>, DirectoryError> {
        let timeout = self.1;
        let entry = self
            .0
            .read_entry(dn, &[request.to_string()], timeout)
            .await?;
        Ok(entry
            .map(|e| e.attrs.into_iter().collect())
            .unwrap_or_default())
    }

    fn server(&self) -> String {
        self.0.server().to_string()
    }
}

impl Partial {
    fn is_empty(&self) -> bool {
        self.group.members.is_empty()
            && self.group.member_uids.is_empty()
            && self.pending.is_empty()
    }
}

impl Directory {
    /// A server without range options (e.g. OpenLDAP) ignores `member;range=0-N` and sends
    /// nothing: a group that came back empty from an explicit range request is asked again for
    /// its plain member attributes, so it is never taken for an empty group by mistake.
    async fn reread_plain(
        &mut self,
        partial: Partial,
        member_attributes: &[String],
        timeout: Duration,
    ) -> Result<Partial, DirectoryError> {
        if member_attributes.is_empty() {
            return Ok(partial);
        }
        let dn = partial.group.dn.clone();
        let Some(se) = self.read_entry(&dn, member_attributes, timeout).await? else {
            return Ok(partial);
        };
        let mut again = partial_group(se, member_attributes);
        again.group.dn = dn;
        again.group.rid = partial.group.rid;
        Ok(again)
    }

    /// Reads every group matching `query.filter` under each of `bases` (paged, complete or
    /// error), following ranged member attributes to their end.
    pub async fn read_groups(
        &mut self,
        bases: &[String],
        query: &GroupQuery,
        page_size: i32,
        timeout: Duration,
    ) -> Result<Groups, DirectoryError> {
        let mut attrs: Vec<String> = query
            .member_attributes
            .iter()
            .map(|a| match query.range_size {
                Some(_) => format!("{a};{}", range_option(0, query.range_size)),
                None => a.clone(),
            })
            .collect();
        attrs.extend(["cn".into(), "objectSid".into()]);
        let mut partials: Vec<Partial> = Vec::new();
        let pages = self
            .read_bases(
                bases,
                &query.filter,
                &attrs,
                page_size,
                timeout,
                &mut |se| partials.push(partial_group(se, &query.member_attributes)),
            )
            .await?;
        let mut groups = Vec::with_capacity(partials.len());
        let mut ranged = 0;
        for partial in partials {
            let Partial { mut group, pending } = match query.range_size {
                Some(_) if partial.is_empty() => {
                    self.reread_plain(partial, &query.member_attributes, timeout)
                        .await?
                }
                _ => partial,
            };
            for (range, uid) in pending {
                ranged += 1;
                let rest = follow_ranges(
                    &mut (&mut *self, timeout),
                    &group.dn,
                    &range,
                    query.range_size,
                )
                .await?;
                debug!(group = %group.dn, attr = %range.attr, more = rest.len(), "ranged attribute followed");
                add_values(&mut group, uid, rest);
            }
            groups.push(group);
        }
        info!(
            groups = groups.len(),
            ranged,
            pages,
            server = %self.server(),
            "directory groups complete"
        );
        Ok(Groups::new(groups))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;

/// What room rules need read besides the agents.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoomSources {
    /// Groups, if any rule names one.
    pub groups: Option<GroupQuery>,
    /// Extra LDAP filters whose matching agents the rules want.
    pub filters: Vec<String>,
}

/// `(memberOf:1.2.840.113556.1.4.1941:=<dn>)`: the agents in `dn` or in a group nested in it
/// (LDAP_MATCHING_RULE_IN_CHAIN; the DC follows nesting and cuts cycles).
fn in_chain_filter(dn: &str) -> String {
    format!(
        "(memberOf:1.2.840.113556.1.4.1941:={})",
        ldap3::ldap_escape(dn)
    )
}

/// `(|(distinguishedName=<dn>)…)`: the entries at these DNs (AD).
fn dn_filter(dns: &[Dn]) -> String {
    let parts: String = dns
        .iter()
        .map(|dn| format!("(distinguishedName={})", ldap3::ldap_escape(dn.as_str())))
        .collect();
    format!("(|{parts})")
}

/// Connects to `cfg.urls` (failover), reads the agents of every base of `cfg.base_dns`, then
/// what `extra` asks for (groups under their bases or the same ones; agents matching each
/// filter), then closes. Every search is complete or the whole read is an error. Each agent
/// entry is handed to `pass` as it is read, and kept in the Snapshot only if it gives it back.
pub async fn read_snapshot_with(
    cfg: &crate::config::DirectoryConfig,
    agents: &super::AgentQuery,
    extra: &RoomSources,
    pass: &mut (dyn FnMut(super::Entry) -> Option<super::Entry> + Send),
) -> Result<super::Snapshot, DirectoryError> {
    let mut dir = Directory::connect(cfg).await?;
    let result = async {
        let mut watermark = if cfg.incremental {
            dir.watermark(&cfg.base_dns, agents, cfg.timeout).await?
        } else {
            None
        };
        // 389-DS names agents by their nsUniqueId in content sync: read it with them.
        let sync_id_attribute = match &watermark {
            Some(super::Watermark::Syncrepl {
                dialect: super::SyncDialect::Ds389,
                ..
            }) => Some(super::ds389::NS_UNIQUE_ID),
            _ => None,
        };
        let mut snapshot = dir
            .read_snapshot_recording(
                &cfg.base_dns,
                agents,
                sync_id_attribute,
                cfg.page_size,
                cfg.timeout,
                pass,
            )
            .await?;
        if let Some(attr) = sync_id_attribute {
            let usable = snapshot.entries.len() + snapshot.passed_on;
            if usable > 0 && snapshot.sync_ids.is_empty() {
                tracing::warn!(
                    server = %dir.server(),
                    "directory: the bind account cannot read `{attr}` of the agents, by which \
                     389-DS names them in content sync: incremental reads are off until it can"
                );
                watermark = None;
            }
        }
        if let Some(query) = &extra.groups {
            let bases = if query.bases.is_empty() {
                &cfg.base_dns
            } else {
                &query.bases
            };
            if query.in_chain.is_empty() {
                snapshot.groups = dir
                    .read_groups(bases, query, cfg.page_size, cfg.timeout)
                    .await?;
            } else {
                // The rule groups themselves (that they exist, their RID), not their members.
                let named = GroupQuery {
                    filter: format!("(&{}{})", query.filter, dn_filter(&query.in_chain)),
                    member_attributes: Vec::new(),
                    ..query.clone()
                };
                snapshot.groups = dir
                    .read_groups(bases, &named, cfg.page_size, cfg.timeout)
                    .await?;
                let filters: Vec<String> = query
                    .in_chain
                    .iter()
                    .map(|dn| in_chain_filter(dn.as_str()))
                    .collect();
                let mut matches = dir
                    .read_filter_matches(
                        &cfg.base_dns,
                        agents,
                        &filters,
                        cfg.page_size,
                        cfg.timeout,
                    )
                    .await?;
                snapshot.in_chain = query
                    .in_chain
                    .iter()
                    .zip(filters)
                    .map(|(dn, f)| (dn.key().clone(), matches.remove(&f).unwrap_or_default()))
                    .collect();
            }
        }
        if !extra.filters.is_empty() {
            snapshot.filter_matches = dir
                .read_filter_matches(
                    &cfg.base_dns,
                    agents,
                    &extra.filters,
                    cfg.page_size,
                    cfg.timeout,
                )
                .await?;
        }
        snapshot.watermark = watermark;
        Ok(snapshot)
    }
    .await;
    dir.close().await;
    result
}
