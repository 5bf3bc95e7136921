use super::*;
use crate::ledger::{MembershipRecord, PowerRecord, RoomRecord};
use crate::mapping::rooms::JoinRule;

fn id(s: &str) -> StableId {
    StableId(s.into())
}

fn mx(s: &str) -> String {
    format!("@{s}:x")
}

fn room(key: &str, mode: Mode, members: &[&str]) -> DesiredRoom {
    DesiredRoom {
        key: key.into(),
        rule: key.into(),
        mode,
        space: false,
        create: None,
        parent: None,
        keep: vec![],
        members: members
            .iter()
            .map(|m| (id(m), format!("member of cn={m}-group")))
            .collect(),
        power: BTreeMap::new(),
    }
}

fn record(key: &str, mode: Mode) -> RoomRecord {
    RoomRecord {
        key: key.into(),
        room_id: format!("!{key}"),
        created: false,
        space: false,
        rule: key.into(),
        mode,
        parent: None,
        at: 0,
    }
}

fn added(view: &mut RoomsView, key: &str, who: &[&str]) {
    for w in who {
        view.members.insert(
            (key.into(), id(w)),
            MembershipRecord {
                room: key.into(),
                id: id(w),
                mxid: mx(w),
                reason: "member of cn=old".into(),
                at: 0,
            },
        );
    }
}

fn state(members: &[&str], power: &[(&str, i64)]) -> Option<RoomState> {
    Some(RoomState {
        room_id: "!r".into(),
        members: members.iter().map(|m| mx(m)).collect(),
        power: power.iter().map(|(m, l)| (mx(m), *l)).collect(),
        creators: BTreeSet::from([mx("creator")]),
    })
}

struct World {
    desired: DesiredRooms,
    view: RoomsView,
    observed: Observed,
    mxids: BTreeMap<StableId, String>,
    present: BTreeSet<StableId>,
}

impl World {
    fn new(agents: &[&str]) -> World {
        World {
            desired: DesiredRooms::default(),
            view: RoomsView::default(),
            observed: Observed::new(),
            mxids: agents.iter().map(|a| (id(a), mx(a))).collect(),
            present: agents.iter().map(|a| id(a)).collect(),
        }
    }

    fn plan(&self) -> RoomPlan {
        plan_rooms(
            &self.desired,
            &self.view,
            Context {
                mxids: &self.mxids,
                present: &self.present,
                departed: &BTreeSet::new(),
                skipped: &BTreeSet::new(),
                observed: &self.observed,
                daemon: Some("@daemon:x"),
            },
        )
    }
}

/// `kind room mxid` per action.
fn lines(plan: &RoomPlan) -> Vec<String> {
    plan.actions
        .iter()
        .map(|a| format!("{} {} {}", a.name(), a.room(), a.mxid().unwrap_or("-")))
        .collect()
}

#[test]
fn modes_table() {
    // In the room now: a (ours, still in rule), b (ours, left the rule), h (by hand),
    // daemon, k (keep). Wanted: a, c.
    struct Case {
        mode: Mode,
        expect: &'static [&'static str],
        forgets: usize,
    }
    let cases = [
        Case {
            mode: Mode::Additive,
            expect: &["join_room #r:x @c:x"],
            forgets: 1,
        },
        Case {
            mode: Mode::Managed,
            expect: &["join_room #r:x @c:x", "remove_from_room #r:x @b:x"],
            forgets: 0,
        },
        Case {
            mode: Mode::Exact,
            expect: &[
                "join_room #r:x @c:x",
                "remove_from_room #r:x @b:x",
                "remove_from_room #r:x @h:x",
            ],
            forgets: 0,
        },
    ];
    for case in cases {
        let mut w = World::new(&["a", "b", "c"]);
        let mut r = room("#r:x", case.mode, &["a", "c"]);
        r.keep = vec![mx("k")];
        w.desired.rooms.insert("#r:x".into(), r);
        w.view
            .rooms
            .insert("#r:x".into(), record("#r:x", case.mode));
        added(&mut w.view, "#r:x", &["a", "b"]);
        w.observed.insert(
            "#r:x".into(),
            state(&["a", "b", "h", "daemon", "k", "creator"], &[]),
        );
        let plan = w.plan();
        assert_eq!(lines(&plan), case.expect, "{:?}", case.mode);
        assert_eq!(plan.forget.len(), case.forgets, "{:?}", case.mode);
        assert_eq!(
            plan.removals(),
            case.expect
                .iter()
                .filter(|l| l.starts_with("remove"))
                .count()
        );
    }
}

#[test]
fn reasons_say_why() {
    let mut w = World::new(&["a", "c"]);
    w.desired
        .rooms
        .insert("#dsi:x".into(), room("#dsi:x", Mode::Managed, &["a"]));
    w.view
        .rooms
        .insert("#dsi:x".into(), record("#dsi:x", Mode::Managed));
    added(&mut w.view, "#dsi:x", &["b", "c"]);
    let plan = w.plan();
    let reasons: Vec<&str> = plan.actions.iter().map(|a| a.reason()).collect();
    assert_eq!(
        reasons,
        vec![
            "joins #dsi:x: member of cn=a-group",
            "leaves #dsi:x: not in the directory any more",
            "leaves #dsi:x: no longer in the rule (joined as: member of cn=old)",
        ]
    );
}

#[test]
fn nothing_to_do_twice() {
    let mut w = World::new(&["a"]);
    w.desired
        .rooms
        .insert("#r:x".into(), room("#r:x", Mode::Managed, &["a"]));
    w.view
        .rooms
        .insert("#r:x".into(), record("#r:x", Mode::Managed));
    added(&mut w.view, "#r:x", &["a"]);
    w.observed.insert("#r:x".into(), state(&["a"], &[]));
    let plan = w.plan();
    assert!(!plan.has_changes(), "{:?}", plan.actions);
    assert_eq!(plan.unchanged_rooms, 1);
    // Someone who left by themselves is forgotten, not kicked.
    w.desired.rooms.get_mut("#r:x").unwrap().members.clear();
    w.observed.insert("#r:x".into(), state(&[], &[]));
    let plan = w.plan();
    assert!(!plan.has_changes());
    assert_eq!(plan.forget.len(), 1);
}

#[test]
fn templated_rooms_are_created_once_parents_first_and_emptied_when_unused() {
    let mut w = World::new(&["a"]);
    let mut dept = room("#dept-rh:x", Mode::Managed, &["a"]);
    dept.rule = "#dept-{ou}:x".into();
    dept.parent = Some("#ministry:x".into());
    dept.create = Some(RoomCreation {
        name: Some("RH".into()),
        topic: None,
        join_rule: JoinRule::Invite,
        encrypted: false,
    });
    let mut space = room("#ministry:x", Mode::Additive, &["a"]);
    space.space = true;
    space.create = dept.create.clone();
    w.desired.rooms.insert("#dept-rh:x".into(), dept);
    w.desired.rooms.insert("#ministry:x".into(), space);
    w.desired
        .templates
        .push(("#dept-{ou}:x".into(), Mode::Managed));
    w.observed.insert("#dept-rh:x".into(), None);
    w.observed.insert("#ministry:x".into(), None);
    assert_eq!(
        lines(&w.plan()),
        vec![
            "create_space #ministry:x -",
            "create_room #dept-rh:x -",
            "link_space #dept-rh:x -",
            "join_room #ministry:x @a:x",
            "join_room #dept-rh:x @a:x",
        ]
    );
    // Once recorded, it is not created again.
    let mut rec = record("#dept-rh:x", Mode::Managed);
    rec.rule = "#dept-{ou}:x".into();
    rec.parent = Some("#ministry:x".into());
    w.view.rooms.insert("#dept-rh:x".into(), rec);
    w.observed.insert("#dept-rh:x".into(), state(&[], &[]));
    assert_eq!(
        lines(&w.plan())[1..],
        ["join_room #dept-rh:x @a:x", "join_room #ministry:x @a:x"]
    );

    // Nobody renders to #dept-old any more: its members the daemon added leave.
    let mut old = record("#dept-old:x", Mode::Managed);
    old.rule = "#dept-{ou}:x".into();
    w.view.rooms.insert("#dept-old:x".into(), old);
    added(&mut w.view, "#dept-old:x", &["a"]);
    assert!(lines(&w.plan()).contains(&"remove_from_room #dept-old:x @a:x".to_string()));
    // A room whose rule is gone from the file is left alone.
    w.desired.templates.clear();
    assert!(!lines(&w.plan()).iter().any(|l| l.contains("#dept-old")));
}

#[test]
fn a_missing_room_without_create_is_a_warning() {
    let mut w = World::new(&["a"]);
    w.desired
        .rooms
        .insert("#nope:x".into(), room("#nope:x", Mode::Managed, &["a"]));
    w.observed.insert("#nope:x".into(), None);
    let plan = w.plan();
    assert!(plan.actions.is_empty());
    assert!(plan.warnings[0].contains("#nope:x"), "{:?}", plan.warnings);
}

#[test]
fn power_granted_revoked_and_left_alone_when_changed_by_hand() {
    let mut w = World::new(&["a", "b", "c"]);
    let mut r = room("#r:x", Mode::Managed, &["a", "b", "c"]);
    r.power.insert(id("a"), (50, "member of cn=heads".into()));
    w.desired.rooms.insert("#r:x".into(), r);
    w.view
        .rooms
        .insert("#r:x".into(), record("#r:x", Mode::Managed));
    added(&mut w.view, "#r:x", &["a", "b", "c"]);
    for (who, level) in [("b", 50), ("c", 50)] {
        w.view.powers.insert(
            ("#r:x".into(), id(who)),
            PowerRecord {
                room: "#r:x".into(),
                id: id(who),
                mxid: mx(who),
                level,
                reason: "member of cn=heads".into(),
                at: 0,
            },
        );
    }
    // c was raised to 100 by hand.
    w.observed.insert(
        "#r:x".into(),
        state(&["a", "b", "c"], &[("b", 50), ("c", 100)]),
    );
    let plan = w.plan();
    assert_eq!(
        lines(&plan),
        vec!["grant_power #r:x @a:x", "revoke_power #r:x @b:x"]
    );
    assert_eq!(plan.removals(), 1);
    assert!(plan.warnings[0].contains("@c:x"), "{:?}", plan.warnings);
    assert_eq!(
        plan.actions[0].reason(),
        "power 50 in #r:x: member of cn=heads"
    );
}

#[test]
fn agents_without_an_mxid_are_not_joined() {
    let mut w = World::new(&[]);
    w.desired
        .rooms
        .insert("#r:x".into(), room("#r:x", Mode::Managed, &["ghost"]));
    w.observed.insert("#r:x".into(), state(&[], &[]));
    assert!(w.plan().actions.is_empty());
}

#[test]
fn a_higher_level_given_by_hand_and_creators_are_left_alone() {
    let mut w = World::new(&["a", "b", "creator"]);
    let mut r = room("#r:x", Mode::Managed, &["a", "b", "creator"]);
    for who in ["a", "b", "creator"] {
        r.power.insert(id(who), (50, "member of cn=heads".into()));
    }
    w.desired.rooms.insert("#r:x".into(), r);
    w.view
        .rooms
        .insert("#r:x".into(), record("#r:x", Mode::Managed));
    // a is 100 by hand; b was given 75 by an older rule: back to 50.
    w.view.powers.insert(
        ("#r:x".into(), id("b")),
        PowerRecord {
            room: "#r:x".into(),
            id: id("b"),
            mxid: mx("b"),
            level: 75,
            reason: "older rule".into(),
            at: 0,
        },
    );
    w.observed.insert(
        "#r:x".into(),
        state(&["a", "b", "creator"], &[("a", 100), ("b", 75)]),
    );
    let plan = w.plan();
    assert_eq!(lines(&plan), vec!["grant_power #r:x @b:x"]);
    assert!(plan.actions[0].is_destructive(), "75 → 50 takes power away");
}
