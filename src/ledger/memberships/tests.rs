use super::*;

fn audit(action: &str) -> AuditEntry {
    AuditEntry {
        at: 1,
        mxid: "@a:x".into(),
        id: StableId("a".into()),
        action: action.into(),
        reason: "test".into(),
        result: "ok".into(),
    }
}

fn member(room: &str, id: &str) -> MembershipRecord {
    MembershipRecord {
        room: room.into(),
        id: StableId(id.into()),
        mxid: format!("@{id}:x"),
        reason: "member of cn=g".into(),
        at: 1,
    }
}

#[test]
fn rooms_members_and_powers_round_trip_with_audit() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(dir.path()).unwrap();
    let room = RoomRecord {
        key: "#dsi:x".into(),
        room_id: "!r".into(),
        created: true,
        space: false,
        rule: "#dsi:x".into(),
        mode: Mode::Managed,
        parent: None,
        at: 1,
    };
    ledger.record_room(&room, &audit("create_room")).unwrap();
    for (r, id) in [
        ("#dsi:x", "a"),
        ("#dsi:x", "b"),
        ("#dsi:xy", "a"),
        ("#ds:x", "c"),
    ] {
        ledger
            .record_membership(&member(r, id), &audit("join"))
            .unwrap();
    }
    ledger
        .record_power(
            &PowerRecord {
                room: "#dsi:x".into(),
                id: StableId("a".into()),
                mxid: "@a:x".into(),
                level: 50,
                reason: "head".into(),
                at: 1,
            },
            &audit("grant_power"),
        )
        .unwrap();
    ledger
        .remove_membership("#dsi:x", &StableId("b".into()), &audit("kick"))
        .unwrap();
    let view = ledger.rooms_view().unwrap();
    assert_eq!(view.rooms["#dsi:x"], room);
    assert_eq!(
        view.members_of("#dsi:x")
            .map(|m| m.id.0.as_str())
            .collect::<Vec<_>>(),
        vec!["a"]
    );
    assert_eq!(view.members_of("#dsi:xy").count(), 1);
    assert_eq!(view.powers_in("#dsi:x").next().unwrap().level, 50);
    assert_eq!(ledger.audit_trail(None).unwrap().len(), 7);
    drop(ledger);
    let again = Ledger::reopen(dir.path()).unwrap();
    assert_eq!(again.rooms_view().unwrap(), view);
    assert_eq!(again.view().unwrap().rooms, view);
}
