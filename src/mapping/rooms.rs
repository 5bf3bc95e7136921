//! Room rules (`[[rooms]]` in the mapping file) and the memberships they give.
//!
//! A rule names a room or space (an alias, a room id, or an alias template such as
//! `#dept-{departmentNumber|localpart}:example.org` giving one room per value), who belongs in
//! it (everyone, members of groups — nested ones followed —, agents whose attribute has one of
//! some values; several sources add up), its mode, power levels granted by groups, and how to
//! create it when it does not exist. See `docs/rooms.md`. Pure: the groups come in the Snapshot.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use super::template::Template;
use crate::directory::{
    normalize_dn, Entry, GroupQuery, Groups, Member, RoomSources, Snapshot, StableId,
};

/// What the daemon may remove in a room.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Only adds; never removes anyone.
    Additive,
    /// Removes the members it added once the rule no longer includes them; people added by
    /// hand stay.
    #[default]
    Managed,
    /// The room has exactly the rule's members: anyone else is removed too (except the
    /// daemon's own user, the room's creators and the rule's `keep` list).
    Exact,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JoinRule {
    #[default]
    Invite,
    Public,
    Knock,
}

/// A room name that is either fixed or rendered from each agent's attributes.
#[derive(Debug, Clone)]
pub enum Pattern {
    Fixed(String),
    Templated(Template),
}

impl Pattern {
    fn parse(source: &str) -> Result<Pattern, String> {
        if source.contains('{') || source.contains('}') {
            Template::parse(source)
                .map(Pattern::Templated)
                .map_err(|e| format!("template `{source}`: {e}"))
        } else {
            Ok(Pattern::Fixed(source.to_string()))
        }
    }

    /// Every value for this agent (none when a templated field is missing).
    fn render_all(&self, entry: &Entry) -> Vec<String> {
        match self {
            Pattern::Fixed(s) => vec![s.clone()],
            Pattern::Templated(t) => t.render_all(entry).unwrap_or_default(),
        }
    }

    fn render(&self, entry: &Entry) -> Option<String> {
        match self {
            Pattern::Fixed(s) => Some(s.clone()),
            Pattern::Templated(t) => t.render(entry).ok(),
        }
    }

    fn attributes(&self) -> Vec<&str> {
        match self {
            Pattern::Fixed(_) => vec![],
            Pattern::Templated(t) => t.attributes().collect(),
        }
    }

    pub fn source(&self) -> String {
        match self {
            Pattern::Fixed(s) => s.clone(),
            Pattern::Templated(t) => t.to_string(),
        }
    }
}

/// How to create a room the homeserver does not have yet.
#[derive(Debug, Clone)]
pub struct CreateRule {
    pub name: Option<Pattern>,
    pub topic: Option<Pattern>,
    pub join_rule: JoinRule,
    pub encrypted: bool,
}

/// A group granting a power level to the room's members who are in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PowerRule {
    pub groups: Vec<String>,
    pub level: i64,
}

/// One `[[rooms]]` rule.
#[derive(Debug, Clone)]
pub struct RoomRule {
    pub room: Pattern,
    pub mode: Mode,
    pub space: bool,
    pub everyone: bool,
    pub groups: Vec<String>,
    /// (attribute, values): agents whose attribute has one of these values (any case).
    pub attribute: Option<(String, Vec<String>)>,
    /// Agents matching this LDAP filter (searched together with the agent filter).
    pub filter: Option<String>,
    pub power: Vec<PowerRule>,
    pub create: Option<CreateRule>,
    pub parent: Option<Pattern>,
    pub keep: Vec<String>,
}

/// Every room rule, and how groups are read for them.
#[derive(Debug, Clone, Default)]
pub struct RoomRules {
    pub rooms: Vec<RoomRule>,
    /// How groups are read (used only when a rule names a group).
    pub groups: Option<GroupQuery>,
    /// The agent attribute posixGroup `memberUid` values are matched against.
    pub member_uid_attribute: String,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGroups {
    filter: Option<String>,
    #[serde(default)]
    bases: Vec<String>,
    member_attributes: Option<Vec<String>>,
    member_uid_attribute: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRoom {
    room: String,
    #[serde(default)]
    mode: Mode,
    #[serde(default)]
    space: bool,
    #[serde(default)]
    everyone: bool,
    #[serde(default)]
    groups: Vec<String>,
    attribute: Option<String>,
    #[serde(default)]
    values: Vec<String>,
    filter: Option<String>,
    #[serde(default)]
    power: Vec<RawPower>,
    create: Option<RawCreate>,
    parent: Option<String>,
    #[serde(default)]
    keep: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPower {
    groups: Vec<String>,
    level: i64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCreate {
    name: Option<String>,
    topic: Option<String>,
    #[serde(default)]
    join_rule: JoinRule,
    #[serde(default)]
    encrypted: bool,
}

/// A problem in the room rules: (key, message).
pub(super) type RuleError = (String, String);

impl RoomRules {
    pub(super) fn parse(
        groups: Option<RawGroups>,
        rooms: Vec<RawRoom>,
    ) -> Result<RoomRules, RuleError> {
        let raw_groups = groups.unwrap_or_default();
        let filter = raw_groups
            .filter
            .unwrap_or_else(|| GroupQuery::DEFAULT_FILTER.to_string());
        if ldap3::parse_filter(&filter).is_err() {
            return Err((
                "groups.filter".into(),
                format!("`{filter}` is not a valid LDAP filter"),
            ));
        }
        let mut out = RoomRules {
            member_uid_attribute: raw_groups
                .member_uid_attribute
                .unwrap_or_else(|| "uid".into()),
            ..RoomRules::default()
        };
        for (i, raw) in rooms.into_iter().enumerate() {
            out.rooms.push(parse_room(i, raw)?);
        }
        let uses_groups = out
            .rooms
            .iter()
            .any(|r| !r.groups.is_empty() || !r.power.is_empty());
        if uses_groups {
            out.groups = Some(GroupQuery {
                filter,
                bases: raw_groups.bases,
                member_attributes: raw_groups
                    .member_attributes
                    .unwrap_or_else(GroupQuery::default_member_attributes),
            });
        }
        Ok(out)
    }

    /// What the directory must read for these rules besides the agents.
    pub fn sources(&self) -> RoomSources {
        let mut filters: Vec<String> = self.rooms.iter().filter_map(|r| r.filter.clone()).collect();
        filters.sort();
        filters.dedup();
        RoomSources {
            groups: self.groups.clone(),
            filters,
        }
    }

    /// The agent attributes the rules read.
    pub fn attributes(&self) -> Vec<String> {
        let mut out = Vec::new();
        for r in &self.rooms {
            let patterns = [Some(&r.room), r.parent.as_ref()]
                .into_iter()
                .flatten()
                .chain(r.create.iter().flat_map(|c| c.name.iter().chain(&c.topic)));
            for p in patterns {
                out.extend(p.attributes().into_iter().map(str::to_string));
            }
            if let Some((attr, _)) = &r.attribute {
                out.push(attr.clone());
            }
        }
        if self.groups.is_some() {
            out.push(self.member_uid_attribute.clone());
        }
        out
    }
}

fn parse_room(i: usize, raw: RawRoom) -> Result<RoomRule, RuleError> {
    let key = |k: &str| format!("rooms[{i}].{k}");
    let pattern = |k: &str, s: &str| Pattern::parse(s).map_err(|e| (key(k), e));
    let room = pattern("room", raw.room.trim())?;
    let check_ref = |k: &str, s: &str| -> Result<(), RuleError> {
        let ok = (s.starts_with('#') && s.contains(':')) || s.starts_with('!');
        if ok {
            Ok(())
        } else {
            Err((
                key(k),
                format!("`{s}` is neither a room alias (`#name:server`) nor a room id (`!id`)"),
            ))
        }
    };
    check_ref("room", raw.room.trim())?;
    if let Some(p) = &raw.parent {
        check_ref("parent", p)?;
    }
    if matches!(room, Pattern::Templated(_)) && !raw.room.trim().starts_with('#') {
        return Err((key("room"), "only an alias can be a template".into()));
    }
    let attribute = match (raw.attribute, raw.values.is_empty()) {
        (Some(a), false) => Some((a, raw.values)),
        (None, true) => None,
        (Some(a), true) => {
            return Err((
                key("values"),
                format!("`attribute = \"{a}\"` needs the values that give the room"),
            ))
        }
        (None, false) => return Err((key("attribute"), "`values` without an attribute".into())),
    };
    if let Some(f) = &raw.filter {
        if ldap3::parse_filter(f).is_err() {
            return Err((key("filter"), format!("`{f}` is not a valid LDAP filter")));
        }
    }
    if !raw.everyone && raw.groups.is_empty() && attribute.is_none() && raw.filter.is_none() {
        return Err((
            key("room"),
            "says nobody belongs in it: give `everyone = true`, `groups`, `attribute` + \
             `values` or `filter`"
                .into(),
        ));
    }
    if let Some(bad) = raw.power.iter().find(|p| !(0..=100).contains(&p.level)) {
        return Err((
            key("power"),
            format!("level {} is outside 0..=100", bad.level),
        ));
    }
    if raw.create.is_some() && raw.room.trim().starts_with('!') {
        return Err((
            key("create"),
            "a room named by its id already exists; to have it created, name it by an alias".into(),
        ));
    }
    let create = match raw.create {
        None => None,
        Some(c) => Some(CreateRule {
            name: c.name.map(|s| pattern("create.name", &s)).transpose()?,
            topic: c.topic.map(|s| pattern("create.topic", &s)).transpose()?,
            join_rule: c.join_rule,
            encrypted: c.encrypted,
        }),
    };
    Ok(RoomRule {
        room,
        mode: raw.mode,
        space: raw.space,
        everyone: raw.everyone,
        groups: raw.groups,
        attribute,
        filter: raw.filter,
        power: raw
            .power
            .into_iter()
            .map(|p| PowerRule {
                groups: p.groups,
                level: p.level,
            })
            .collect(),
        create,
        parent: raw.parent.map(|s| pattern("parent", &s)).transpose()?,
        keep: raw.keep,
    })
}

/// How to create a room, rendered for one room.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RoomCreation {
    pub name: Option<String>,
    pub topic: Option<String>,
    pub join_rule: JoinRule,
    pub encrypted: bool,
}

/// One room as the rules want it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DesiredRoom {
    /// The alias or room id, as the rules (rendered) say.
    pub key: String,
    /// The rule's `room` as written (a template for templated rooms).
    pub rule: String,
    pub mode: Mode,
    pub space: bool,
    /// `None`: the room must exist already.
    pub create: Option<RoomCreation>,
    pub parent: Option<String>,
    /// Never removed in `exact` mode.
    pub keep: Vec<String>,
    /// Who belongs, and why (e.g. "member of cn=dsi,ou=groups").
    pub members: BTreeMap<StableId, String>,
    /// Power levels granted, and why.
    pub power: BTreeMap<StableId, (i64, String)>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DesiredRooms {
    /// By key.
    pub rooms: BTreeMap<String, DesiredRoom>,
    /// Templates of templated rules: a room once made from one of them that no agent renders
    /// to any more is emptied (as its mode allows), not forgotten.
    pub templates: Vec<(String, Mode)>,
}

/// Who is in which rooms: every rule over every mapped agent (`accounts`: the stable ids
/// that became accounts; others are never members).
pub fn map_rooms(
    snapshot: &Snapshot,
    rules: &RoomRules,
    accounts: &std::collections::BTreeSet<StableId>,
    warnings: &mut Vec<String>,
) -> DesiredRooms {
    let agents: Vec<&Entry> = snapshot
        .entries
        .iter()
        .filter(|e| accounts.contains(&e.id))
        .collect();
    let mut groups = GroupIndex::new(&snapshot.groups, &agents, &rules.member_uid_attribute);
    let mut out = DesiredRooms::default();
    for rule in &rules.rooms {
        let source = rule.room.source();
        if let Pattern::Templated(_) = rule.room {
            out.templates.push((source.clone(), rule.mode));
        } else {
            room_for(
                &mut out,
                rule,
                &source,
                rule.room.render_all(&Entry::default()),
                None,
            );
        }
        let power: Vec<(i64, HashMap<StableId, String>)> = rule
            .power
            .iter()
            .map(|p| (p.level, groups.members_of(&p.groups, warnings)))
            .collect();
        let by_group = groups.members_of(&rule.groups, warnings);
        for entry in &agents {
            let Some(why) = why_member(rule, entry, &by_group, snapshot) else {
                continue;
            };
            let keys = rule.room.render_all(entry);
            for key in room_for(&mut out, rule, &source, keys, Some(entry)) {
                let Some(room) = out.rooms.get_mut(&key) else {
                    continue;
                };
                room.members.entry(entry.id.clone()).or_insert(why.clone());
                for (level, holders) in &power {
                    if let Some(reason) = holders.get(&entry.id) {
                        let current = room.power.get(&entry.id).map_or(-1, |(l, _)| *l);
                        if *level > current {
                            room.power
                                .insert(entry.id.clone(), (*level, reason.clone()));
                        }
                    }
                }
            }
        }
    }
    out
}

/// Makes sure each of `keys` has a [`DesiredRoom`] (settings from the first rule naming it);
/// returns the keys.
fn room_for(
    out: &mut DesiredRooms,
    rule: &RoomRule,
    source: &str,
    keys: Vec<String>,
    entry: Option<&Entry>,
) -> Vec<String> {
    let empty = Entry::default();
    let entry = entry.unwrap_or(&empty);
    for key in &keys {
        out.rooms.entry(key.clone()).or_insert_with(|| DesiredRoom {
            key: key.clone(),
            rule: source.to_string(),
            mode: rule.mode,
            space: rule.space,
            create: rule.create.as_ref().map(|c| RoomCreation {
                name: c.name.as_ref().and_then(|p| p.render(entry)),
                topic: c.topic.as_ref().and_then(|p| p.render(entry)),
                join_rule: c.join_rule,
                encrypted: c.encrypted,
            }),
            parent: rule.parent.as_ref().and_then(|p| p.render(entry)),
            keep: rule.keep.clone(),
            members: BTreeMap::new(),
            power: BTreeMap::new(),
        });
    }
    keys
}

/// Why `entry` belongs in the rule's room, or `None`.
fn why_member(
    rule: &RoomRule,
    entry: &Entry,
    by_group: &HashMap<StableId, String>,
    snapshot: &Snapshot,
) -> Option<String> {
    if rule.everyone {
        return Some("every agent".into());
    }
    if let Some(why) = by_group.get(&entry.id) {
        return Some(why.clone());
    }
    if let Some(filter) = &rule.filter {
        if snapshot
            .filter_matches
            .get(filter)
            .is_some_and(|ids| ids.contains(&entry.id))
        {
            return Some(format!("matches {filter}"));
        }
    }
    let (attr, values) = rule.attribute.as_ref()?;
    entry
        .values(attr)
        .iter()
        .find(|v| values.iter().any(|w| w.eq_ignore_ascii_case(v.trim())))
        .map(|v| format!("{attr} is {v}"))
}

/// Resolves groups to agents once per run.
struct GroupIndex<'a> {
    groups: &'a Groups,
    by_dn: HashMap<String, StableId>,
    by_uid: HashMap<String, StableId>,
    cache: HashMap<String, HashMap<StableId, String>>,
}

impl<'a> GroupIndex<'a> {
    fn new(groups: &'a Groups, agents: &[&Entry], uid_attribute: &str) -> GroupIndex<'a> {
        GroupIndex {
            groups,
            by_dn: agents
                .iter()
                .map(|e| (normalize_dn(&e.dn), e.id.clone()))
                .collect(),
            by_uid: agents
                .iter()
                .flat_map(|e| {
                    e.values(uid_attribute)
                        .iter()
                        .map(|u| (u.clone(), e.id.clone()))
                })
                .collect(),
            cache: HashMap::new(),
        }
    }

    /// Agents in any of `dns` (nested groups followed), each with a reason.
    fn members_of(
        &mut self,
        dns: &[String],
        warnings: &mut Vec<String>,
    ) -> HashMap<StableId, String> {
        let mut out = HashMap::new();
        for dn in dns {
            for (id, why) in self.one(dn, warnings) {
                out.entry(id.clone()).or_insert_with(|| why.clone());
            }
        }
        out
    }

    fn one(&mut self, dn: &str, warnings: &mut Vec<String>) -> &HashMap<StableId, String> {
        let key = normalize_dn(dn);
        if !self.cache.contains_key(&key) {
            let mut members = HashMap::new();
            match self.groups.resolve(dn) {
                None => warnings.push(format!(
                    "room rules: group `{dn}` was not found in the directory (no members from it)"
                )),
                Some(resolved) => {
                    for cycle in &resolved.cycles {
                        warnings.push(format!("nested groups form a cycle, cut: {cycle}"));
                    }
                    for (member, path) in resolved.members {
                        let id = match &member {
                            Member::Dn(d) => self.by_dn.get(d),
                            Member::Uid(u) => self.by_uid.get(u),
                        };
                        if let Some(id) = id {
                            let why = match path.as_slice() {
                                [] | [_] => format!("member of {dn}"),
                                [_, via @ ..] => {
                                    format!("member of {dn} via {}", via.join(" → "))
                                }
                            };
                            members.insert(id.clone(), why);
                        }
                    }
                }
            }
            self.cache.insert(key.clone(), members);
        }
        static EMPTY: std::sync::OnceLock<HashMap<StableId, String>> = std::sync::OnceLock::new();
        self.cache
            .get(&key)
            .unwrap_or_else(|| EMPTY.get_or_init(HashMap::new))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;
