//! Room rules (`[[rooms]]` in the mapping file) and the memberships they give.
//!
//! A rule names a room or space (an alias, a room id, or an alias template such as
//! `#dept-{departmentNumber|localpart}:example.org` giving one room per value), who belongs in
//! it (everyone, members of groups — nested ones followed —, agents whose attribute has one of
//! some values, agents matching an LDAP filter; several sources add up), its mode, power levels
//! granted by groups, and how to create it when it does not exist. See `docs/rooms.md`.
//! Pure: the groups and filter matches come in the Snapshot.

mod rules;

pub use rules::{CreateRule, JoinRule, Mode, Pattern, PowerRule, RoomRule, RoomRules};
pub(super) use rules::{RawGroups, RawRoom};

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::Serialize;

use crate::directory::{Dn, DnKey, Entry, Groups, Member, Snapshot, StableId};

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

impl DesiredRooms {
    /// True when the rules give no room (nor template) at all.
    pub fn is_empty(&self) -> bool {
        self.rooms.is_empty() && self.templates.is_empty()
    }
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
    let in_chain = rules
        .groups
        .as_ref()
        .is_some_and(|q| !q.in_chain.is_empty())
        .then_some(&snapshot.in_chain);
    let mut groups = GroupIndex::new(
        &snapshot.groups,
        in_chain,
        &agents,
        &rules.member_uid_attribute,
    );
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
    /// AD in-chain mode: the DC's transitive members of each rule group.
    in_chain: Option<&'a BTreeMap<DnKey, BTreeSet<StableId>>>,
    agents: &'a [&'a Entry],
    /// Agents by DN, made when a group first lists a member by DN.
    by_dn: Option<HashMap<DnKey, StableId>>,
    by_uid: HashMap<String, StableId>,
    /// Agents by `primaryGroupID` (AD).
    by_primary: HashMap<u32, Vec<StableId>>,
    cache: HashMap<DnKey, HashMap<StableId, String>>,
}

impl<'a> GroupIndex<'a> {
    fn new(
        groups: &'a Groups,
        in_chain: Option<&'a BTreeMap<DnKey, BTreeSet<StableId>>>,
        agents: &'a [&'a Entry],
        uid_attribute: &str,
    ) -> GroupIndex<'a> {
        let mut by_primary: HashMap<u32, Vec<StableId>> = HashMap::new();
        for e in agents {
            for rid in e.values("primaryGroupID") {
                if let Ok(rid) = rid.trim().parse() {
                    by_primary.entry(rid).or_default().push(e.id.clone());
                }
            }
        }
        GroupIndex {
            groups,
            in_chain,
            agents,
            by_primary,
            by_dn: None,
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
    fn members_of(&mut self, dns: &[Dn], warnings: &mut Vec<String>) -> HashMap<StableId, String> {
        let mut out = HashMap::new();
        for dn in dns {
            for (id, why) in self.one(dn, warnings) {
                out.entry(id.clone()).or_insert_with(|| why.clone());
            }
        }
        out
    }

    fn one(&mut self, dn: &Dn, warnings: &mut Vec<String>) -> &HashMap<StableId, String> {
        let key = dn.key();
        if !self.cache.contains_key(key) {
            let mut members = HashMap::new();
            let resolved = match self.in_chain {
                Some(_) => self.groups.primary_only(key),
                None => self.groups.resolve(key),
            };
            if let (Some(found), Some(_)) = (self.in_chain, &resolved) {
                for id in found.get(key).into_iter().flatten() {
                    members.insert(id.clone(), format!("member of {dn} (in chain)"));
                }
            }
            match resolved {
                None => warnings.push(format!(
                    "room rules: group `{dn}` was not found in the directory (no members from it)"
                )),
                Some(resolved) => {
                    for cycle in &resolved.cycles {
                        warnings.push(format!("nested groups form a cycle, cut: {cycle}"));
                    }
                    warnings.extend(resolved.malformed.iter().cloned());
                    let agents = self.agents;
                    for (member, path) in resolved.members {
                        let ids: Vec<&StableId> = match &member {
                            Member::Dn(d) => {
                                // Each agent's DN is parsed once, and only if a group lists
                                // members by DN.
                                let by_dn = self.by_dn.get_or_insert_with(|| {
                                    agents
                                        .iter()
                                        .map(|e| (DnKey::lenient(&e.dn), e.id.clone()))
                                        .collect()
                                });
                                by_dn.get(d).into_iter().collect()
                            }
                            Member::Uid(u) => self.by_uid.get(u).into_iter().collect(),
                            Member::PrimaryGroup(rid) => {
                                self.by_primary.get(rid).into_iter().flatten().collect()
                            }
                        };
                        let primary = match member {
                            Member::PrimaryGroup(_) => " (primary group)",
                            _ => "",
                        };
                        let why = match path.as_slice() {
                            [] | [_] => format!("member of {dn}{primary}"),
                            [_, via @ ..] => {
                                format!("member of {dn} via {}{primary}", via.join(" → "))
                            }
                        };
                        for id in ids {
                            members.entry(id.clone()).or_insert_with(|| why.clone());
                        }
                    }
                }
            }
            self.cache.insert(key.clone(), members);
        }
        static EMPTY: std::sync::OnceLock<HashMap<StableId, String>> = std::sync::OnceLock::new();
        self.cache
            .get(key)
            .unwrap_or_else(|| EMPTY.get_or_init(HashMap::new))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;
