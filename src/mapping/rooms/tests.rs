use std::collections::BTreeSet;
use std::path::Path;

use super::*;
use crate::directory::Group;
use crate::mapping::Rules;

const HEAD: &str = r#"
[agent]
filter = "(objectClass=inetOrgPerson)"
id_attribute = "entryUUID"
id_format = "text"
[account]
localpart = "{uid}"
display_name = "{uid}"
"#;

fn rules(rooms: &str) -> Result<Rules, crate::config::ConfigError> {
    Rules::parse(Path::new("m.toml"), &format!("{HEAD}\n{rooms}"))
}

fn agent(uid: &str, attrs: &[(&str, &str)]) -> Entry {
    let mut e = Entry {
        dn: format!("uid={uid},ou=People,dc=x"),
        id: StableId(format!("id-{uid}")),
        ..Entry::default()
    };
    e.attrs.insert("uid".into(), vec![uid.into()]);
    for (k, v) in attrs {
        e.attrs
            .entry(k.to_ascii_lowercase())
            .or_default()
            .push(v.to_string());
    }
    e
}

fn map(rules: &Rules, agents: Vec<Entry>, groups: Vec<Group>) -> (DesiredRooms, Vec<String>) {
    let mut snapshot = Snapshot::complete(agents, vec![], "ldap://t");
    snapshot.groups = Groups::new(groups);
    let ids: BTreeSet<StableId> = snapshot.entries.iter().map(|e| e.id.clone()).collect();
    let mut warnings = vec![];
    let d = map_rooms(&snapshot, &rules.rooms, &ids, &mut warnings);
    (d, warnings)
}

fn members(d: &DesiredRooms, key: &str) -> Vec<String> {
    d.rooms[key].members.keys().map(|i| i.0.clone()).collect()
}

#[test]
fn groups_nested_attributes_and_everyone() {
    let r = rules(
        r##"
[[rooms]]
room = "#all:x"
everyone = true
mode = "additive"

[[rooms]]
room = "#dsi:x"
groups = ["cn=dsi,ou=groups,dc=x"]
power = [{ groups = ["cn=heads,ou=groups,dc=x"], level = 50 }]

[[rooms]]
room = "#managers:x"
attribute = "title"
values = ["Manager", "director"]
mode = "exact"
keep = ["@bot:x"]
"##,
    )
    .unwrap();
    let agents = vec![
        agent("alice", &[("title", "Director")]),
        agent("bob", &[]),
        agent("carol", &[("title", "Manager")]),
    ];
    let groups = vec![
        Group {
            dn: "cn=dsi,ou=groups,dc=x".into(),
            members: vec![
                "cn=dev,ou=groups,dc=x".into(),
                "UID=alice, ou=people,dc=x".into(),
            ],
            member_uids: vec![],
            ..Group::default()
        },
        Group {
            dn: "cn=dev,ou=groups,dc=x".into(),
            members: vec!["cn=dsi,ou=groups,dc=x".into()],
            member_uids: vec!["bob".into()],
            ..Group::default()
        },
        Group {
            dn: "cn=heads,ou=groups,dc=x".into(),
            members: vec![
                "uid=bob,ou=people,dc=x".into(),
                "uid=carol,ou=people,dc=x".into(),
            ],
            member_uids: vec![],
            ..Group::default()
        },
    ];
    let (d, warnings) = map(&r, agents, groups);
    assert_eq!(
        members(&d, "#all:x"),
        vec!["id-alice", "id-bob", "id-carol"]
    );
    assert_eq!(d.rooms["#all:x"].mode, Mode::Additive);
    assert_eq!(members(&d, "#dsi:x"), vec!["id-alice", "id-bob"]);
    let dsi = &d.rooms["#dsi:x"];
    assert_eq!(
        dsi.members[&StableId("id-alice".into())],
        "member of cn=dsi,ou=groups,dc=x"
    );
    assert_eq!(
        dsi.members[&StableId("id-bob".into())],
        "member of cn=dsi,ou=groups,dc=x via cn=dev,ou=groups,dc=x"
    );
    // carol heads but is not a member: no power for her here.
    assert_eq!(
        dsi.power
            .iter()
            .map(|(k, v)| (k.0.as_str(), v.0))
            .collect::<Vec<_>>(),
        vec![("id-bob", 50)]
    );
    assert_eq!(members(&d, "#managers:x"), vec!["id-alice", "id-carol"]);
    assert_eq!(
        d.rooms["#managers:x"].members[&StableId("id-alice".into())],
        "title is Director"
    );
    assert_eq!(d.rooms["#managers:x"].keep, vec!["@bot:x"]);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("cycle"), "{warnings:?}");
}

#[test]
fn templated_rooms_one_per_value() {
    let r = rules(
        r##"
[[rooms]]
room = "#dept-{departmentNumber|localpart}:x"
everyone = true
parent = "#ministry:x"
create = { name = "Department {departmentNumber}", encrypted = true }
"##,
    )
    .unwrap();
    let agents = vec![
        agent("alice", &[("departmentNumber", "DSI")]),
        agent("bob", &[("departmentNumber", "RH")]),
        agent("carol", &[("departmentNumber", "dsi")]),
        agent("dan", &[]),
    ];
    let (d, _) = map(&r, agents, vec![]);
    assert_eq!(
        d.rooms.keys().collect::<Vec<_>>(),
        vec!["#dept-dsi:x", "#dept-rh:x"]
    );
    assert_eq!(members(&d, "#dept-dsi:x"), vec!["id-alice", "id-carol"]);
    let room = &d.rooms["#dept-dsi:x"];
    assert_eq!(room.rule, "#dept-{departmentNumber|localpart}:x");
    assert_eq!(room.parent.as_deref(), Some("#ministry:x"));
    let create = room.create.as_ref().unwrap();
    assert_eq!(create.name.as_deref(), Some("Department DSI"));
    assert!(create.encrypted);
    assert_eq!(
        d.templates,
        vec![(
            "#dept-{departmentNumber|localpart}:x".to_string(),
            Mode::Managed
        )]
    );
    assert!(r.attributes().contains(&"departmentNumber".to_string()));
}

#[test]
fn unmapped_agents_and_missing_groups() {
    let r = rules(
        r##"
[[rooms]]
room = "!abc:x"
groups = ["cn=nope,dc=x"]
"##,
    )
    .unwrap();
    let mut snapshot = Snapshot::complete(vec![agent("a", &[])], vec![], "ldap://t");
    snapshot.groups = Groups::default();
    let mut warnings = vec![];
    let d = map_rooms(&snapshot, &r.rooms, &BTreeSet::new(), &mut warnings);
    assert!(
        d.rooms["!abc:x"].members.is_empty(),
        "a fixed room is desired even when empty"
    );
    assert!(warnings[0].contains("cn=nope,dc=x"), "{warnings:?}");
    assert!(r.rooms.groups.is_some());
}

/// slapd names an entry `cn=Martin\2C Jean,…` whatever the group's `member` says.
#[test]
fn group_members_match_entries_whatever_the_dn_spelling() {
    let r = rules(
        r##"
[[rooms]]
room = "#team:x"
groups = ["CN=Team, OU=G,DC=x"]
"##,
    )
    .unwrap();
    let mut martin = agent("martin", &[]);
    martin.dn = "cn=Martin\\2C Jean,ou=People,dc=x".into();
    let mut durand = agent("durand", &[]);
    durand.dn = "cn=Durand\\, Paul+uid=durand,ou=People,dc=x".into();
    let groups = vec![Group {
        dn: "cn=team,ou=g,dc=x".into(),
        members: vec![
            "CN=Martin\\, Jean, OU=people,DC=x".into(),
            "uid=durand+cn=durand\\2c paul,ou=people,dc=x".into(),
        ],
        ..Group::default()
    }];
    let (d, warnings) = map(&r, vec![martin, durand], groups);
    assert_eq!(members(&d, "#team:x"), vec!["id-durand", "id-martin"]);
    assert!(warnings.is_empty(), "{warnings:?}");
}

#[test]
fn rule_errors_name_the_key() {
    let cases = [
        ("[[rooms]]\nroom = \"dsi\"\neveryone = true", "rooms[0].room"),
        ("[[rooms]]\nroom = \"#a:x\"", "rooms[0].room"),
        ("[[rooms]]\nroom = \"#a:x\"\nattribute = \"ou\"", "rooms[0].values"),
        ("[[rooms]]\nroom = \"#a-{ou|bad}:x\"\neveryone = true", "rooms[0].room"),
        (
            "[[rooms]]\nroom = \"#a:x\"\neveryone = true\npower = [{ groups = [\"cn=h\"], level = 150 }]",
            "rooms[0].power",
        ),
        ("[groups]\nfilter = \"(cn=\"\n[[rooms]]\nroom = \"#a:x\"\neveryone = true", "groups.filter"),
        ("[[rooms]]\nroom = \"#a:x\"\neveryone = true\nparent = \"space\"", "rooms[0].parent"),
        ("[[rooms]]\nroom = \"#a:x\"\nfilter = \"(l=Paris\"", "rooms[0].filter"),
        ("[[rooms]]\nroom = \"!a:x\"\neveryone = true\ncreate = {}", "rooms[0].create"),
        ("[groups]\nrange_size = 0\n[[rooms]]\nroom = \"#a:x\"\ngroups = [\"cn=g\"]", "groups.range_size"),
        ("[[rooms]]\nroom = \"#a:x\"\ngroups = [\"cn=g\", \"dsi\"]", "rooms[0].groups[1]"),
        (
            "[[rooms]]\nroom = \"#a:x\"\neveryone = true\npower = [{ groups = [\"cn=h,,dc=x\"], level = 50 }]",
            "rooms[0].power[0].groups[0]",
        ),
        ("[groups]\nbases = [\"ou=groups,\"]\n[[rooms]]\nroom = \"#a:x\"\neveryone = true", "groups.bases[0]"),
    ];
    for (text, key) in cases {
        let err = rules(text).unwrap_err();
        assert_eq!(err.key.as_deref(), Some(key), "{text}: {err}");
    }
    let err = rules("[[rooms]]\nroom = \"#a:x\"\neveryone = true\nmode = \"strict\"").unwrap_err();
    assert!(err.message.contains("strict"), "{err}");
}

#[test]
fn the_commented_example_in_the_openldap_preset_parses() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("mappings/openldap.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let (head, example) = text.split_once("# Rooms and spaces").unwrap();
    let uncommented: String = example
        .lines()
        .filter_map(|l| l.strip_prefix("# "))
        .filter(|l| {
            l.starts_with('[') || l.split_once(" = ").is_some_and(|(k, _)| !k.contains(' '))
        })
        .map(|l| format!("{l}\n"))
        .collect();
    let r = Rules::parse(&path, &format!("{head}\n{uncommented}")).unwrap();
    assert_eq!(r.rooms.rooms.len(), 4, "{uncommented}");
    assert!(r.rooms.groups.is_some());
    assert_eq!(r.rooms.rooms[3].mode, Mode::Exact);
}

#[test]
fn filter_rules_use_what_the_directory_matched() {
    let r = rules(
        r##"
[[rooms]]
room = "#paris:x"
filter = "(l=Paris)"

[[rooms]]
room = "#paris2:x"
filter = "(l=Paris)"
"##,
    )
    .unwrap();
    assert_eq!(r.rooms.sources().filters, vec!["(l=Paris)"]);
    assert!(r.rooms.sources().groups.is_none());
    let mut snapshot = Snapshot::complete(vec![agent("a", &[]), agent("b", &[])], vec![], "t");
    snapshot.filter_matches.insert(
        "(l=Paris)".into(),
        BTreeSet::from([StableId("id-b".into())]),
    );
    let ids = snapshot.entries.iter().map(|e| e.id.clone()).collect();
    let d = map_rooms(&snapshot, &r.rooms, &ids, &mut vec![]);
    assert_eq!(members(&d, "#paris:x"), vec!["id-b"]);
    assert_eq!(
        d.rooms["#paris:x"].members[&StableId("id-b".into())],
        "matches (l=Paris)"
    );
}

#[test]
fn primary_group_members_count_and_in_chain_mode_uses_what_the_dc_resolved() {
    let text = r##"
[[rooms]]
room = "#all:x"
groups = ["CN=All,OU=g,DC=x"]
power = [{ groups = ["cn=heads,ou=g,dc=x"], level = 50 }]
"##;
    let recursive = rules(text).unwrap();
    assert!(recursive
        .rooms
        .attributes()
        .contains(&"primaryGroupID".to_string()));
    // alice: in `member` of all; bob: all is his primary group (RID 1105); carol: her primary
    // group is sub (RID 1106), nested in all; dan: another primary group.
    let agents = vec![
        agent("alice", &[("primaryGroupID", "513")]),
        agent("bob", &[("primaryGroupID", "1105")]),
        agent("carol", &[("primaryGroupID", "1106")]),
        agent("dan", &[("primaryGroupID", "1107")]),
    ];
    let groups = vec![
        Group {
            dn: "cn=all,ou=g,dc=x".into(),
            members: vec!["uid=alice,ou=People,dc=x".into(), "cn=sub,ou=g,dc=x".into()],
            rid: Some(1105),
            ..Group::default()
        },
        Group {
            dn: "cn=sub,ou=g,dc=x".into(),
            rid: Some(1106),
            ..Group::default()
        },
        Group {
            dn: "cn=heads,ou=g,dc=x".into(),
            rid: Some(1105),
            ..Group::default()
        },
    ];
    let (d, warnings) = map(&recursive, agents.clone(), groups.clone());
    assert_eq!(
        members(&d, "#all:x"),
        vec!["id-alice", "id-bob", "id-carol"]
    );
    let all = &d.rooms["#all:x"];
    assert_eq!(
        all.members[&StableId("id-bob".into())],
        "member of CN=All,OU=g,DC=x (primary group)"
    );
    assert_eq!(
        all.members[&StableId("id-carol".into())],
        "member of CN=All,OU=g,DC=x via cn=sub,ou=g,dc=x (primary group)"
    );
    assert_eq!(all.power[&StableId("id-bob".into())].0, 50);
    assert!(warnings.is_empty(), "{warnings:?}");

    // In-chain: the DC's answer for each rule group, plus the rule group's own primary members.
    let chained = rules(&format!("[groups]\nin_chain = true\n{text}")).unwrap();
    let query = chained.rooms.sources().groups.unwrap();
    assert_eq!(
        query.in_chain.iter().map(Dn::as_str).collect::<Vec<_>>(),
        vec!["CN=All,OU=g,DC=x", "cn=heads,ou=g,dc=x"]
    );
    let mut snapshot = Snapshot::complete(agents, vec![], "ldap://t");
    snapshot.groups = Groups::new(groups);
    snapshot.in_chain.insert(
        DnKey::parse("cn=all, ou=g,dc=x").unwrap(),
        BTreeSet::from([StableId("id-alice".into()), StableId("id-dan".into())]),
    );
    let ids: BTreeSet<StableId> = snapshot.entries.iter().map(|e| e.id.clone()).collect();
    let mut warnings = vec![];
    let d = map_rooms(&snapshot, &chained.rooms, &ids, &mut warnings);
    assert_eq!(members(&d, "#all:x"), vec!["id-alice", "id-bob", "id-dan"]);
    assert_eq!(
        d.rooms["#all:x"].members[&StableId("id-dan".into())],
        "member of CN=All,OU=g,DC=x (in chain)"
    );
    assert!(warnings.is_empty(), "{warnings:?}");
}
