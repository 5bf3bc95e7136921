//! The `[groups]` table and `[[rooms]]` rules as written in the mapping file, checked: every
//! error names its key (`rooms[2].power`).

use serde::{Deserialize, Serialize};

use super::super::template::Template;
use crate::directory::{Dn, Entry, GroupQuery, RoomSources};

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
    pub(super) fn render_all(&self, entry: &Entry) -> Vec<String> {
        match self {
            Pattern::Fixed(s) => vec![s.clone()],
            Pattern::Templated(t) => t.render_all(entry).unwrap_or_default(),
        }
    }

    pub(super) fn render(&self, entry: &Entry) -> Option<String> {
        match self {
            Pattern::Fixed(s) => Some(s.clone()),
            Pattern::Templated(t) => t.render(entry).ok(),
        }
    }

    pub(super) fn attributes(&self) -> Vec<&str> {
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
    pub groups: Vec<Dn>,
    pub level: i64,
}

/// One `[[rooms]]` rule.
#[derive(Debug, Clone)]
pub struct RoomRule {
    pub room: Pattern,
    pub mode: Mode,
    pub space: bool,
    pub everyone: bool,
    pub groups: Vec<Dn>,
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
pub(in crate::mapping) struct RawGroups {
    filter: Option<String>,
    #[serde(default)]
    bases: Vec<String>,
    member_attributes: Option<Vec<String>>,
    member_uid_attribute: Option<String>,
    /// AD: ask the DC for each rule group's transitive members (in-chain matching rule).
    #[serde(default)]
    in_chain: bool,
    /// Ask for member attributes in explicit slices of this many values.
    range_size: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(in crate::mapping) struct RawRoom {
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
pub(in crate::mapping) type RuleError = (String, String);

impl RoomRules {
    pub(in crate::mapping) fn parse(
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
        if raw_groups.range_size == Some(0) {
            return Err((
                "groups.range_size".into(),
                "0 values per slice reads nothing: give at least 1".into(),
            ));
        }
        for (i, base) in raw_groups.bases.iter().enumerate() {
            Dn::parse(base).map_err(|e| (format!("groups.bases[{i}]"), e.to_string()))?;
        }
        if uses_groups {
            let mut in_chain = Vec::new();
            if raw_groups.in_chain {
                for r in &out.rooms {
                    in_chain.extend(
                        r.groups
                            .iter()
                            .chain(r.power.iter().flat_map(|p| &p.groups)),
                    );
                }
                in_chain.sort();
                in_chain.dedup();
            }
            out.groups = Some(GroupQuery {
                filter,
                bases: raw_groups.bases,
                member_attributes: raw_groups
                    .member_attributes
                    .unwrap_or_else(GroupQuery::default_member_attributes),
                in_chain: in_chain.into_iter().cloned().collect(),
                range_size: raw_groups.range_size,
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
            // AD: members of a group that is their primary group are not in its `member`.
            out.push("primaryGroupID".into());
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
    let dns = |k: &str, texts: &[String]| -> Result<Vec<Dn>, RuleError> {
        texts
            .iter()
            .enumerate()
            .map(|(j, t)| Dn::parse(t).map_err(|e| (key(&format!("{k}[{j}]")), e.to_string())))
            .collect()
    };
    let power = raw
        .power
        .iter()
        .enumerate()
        .map(|(j, p)| {
            Ok(PowerRule {
                groups: dns(&format!("power[{j}].groups"), &p.groups)?,
                level: p.level,
            })
        })
        .collect::<Result<Vec<_>, RuleError>>()?;
    Ok(RoomRule {
        room,
        mode: raw.mode,
        space: raw.space,
        everyone: raw.everyone,
        groups: dns("groups", &raw.groups)?,
        attribute,
        filter: raw.filter,
        power,
        create,
        parent: raw.parent.map(|s| pattern("parent", &s)).transpose()?,
        keep: raw.keep,
    })
}
