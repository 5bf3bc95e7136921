use super::*;

fn record(id: &str, localpart: &str) -> AccountRecord {
    AccountRecord {
        id: StableId(id.into()),
        mxid: format!("@{localpart}:example.org"),
        localpart: localpart.into(),
        dn: format!("uid={localpart},dc=example,dc=org"),
        display_name: "Someone".into(),
        emails: vec![],
        origin: Origin::Created,
        created_at: 1,
        updated_at: 1,
        status: AccountStatus::Active,
    }
}

fn audit(mxid: &str, action: &str) -> AuditEntry {
    AuditEntry {
        at: 2,
        mxid: mxid.into(),
        id: StableId("x".into()),
        action: action.into(),
        reason: "test".into(),
        result: "ok".into(),
    }
}

#[test]
fn records_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    {
        let ledger = Ledger::open(dir.path()).unwrap();
        ledger
            .record_account(
                &record("a", "jean.martin"),
                &audit("@jean.martin:example.org", "create"),
            )
            .unwrap();
        ledger
            .record_audit(&audit("@other:example.org", "update"))
            .unwrap();
        ledger.flush().unwrap();
    }
    let ledger = Ledger::open(dir.path()).unwrap();
    let view = ledger.view().unwrap();
    assert_eq!(view.accounts.len(), 1);
    assert_eq!(
        view.accounts[&StableId("a".into())].localpart,
        "jean.martin"
    );
    assert_eq!(ledger.audit_trail(None).unwrap().len(), 2);
    assert_eq!(
        ledger.audit_trail(Some("@other:example.org")).unwrap()[0].action,
        "update"
    );
}

#[test]
fn a_localpart_is_never_given_to_two_ids() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(dir.path()).unwrap();
    ledger
        .record_account(
            &record("a", "jean.martin"),
            &audit("@jean.martin:example.org", "create"),
        )
        .unwrap();
    let err = ledger
        .record_account(
            &record("b", "jean.martin"),
            &audit("@jean.martin:example.org", "create"),
        )
        .unwrap_err();
    assert!(err.to_string().contains("already belongs to a"), "{err}");
    // The refused write left no audit entry behind.
    assert_eq!(ledger.audit_trail(None).unwrap().len(), 1);
    // Re-recording the same id with the same localpart is an update.
    let mut again = record("a", "jean.martin");
    again.display_name = "Jean Martin".into();
    ledger
        .record_account(&again, &audit("@jean.martin:example.org", "update"))
        .unwrap();
    assert_eq!(
        ledger
            .account(&StableId("a".into()))
            .unwrap()
            .unwrap()
            .display_name,
        "Jean Martin"
    );
}

#[test]
fn a_newer_schema_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = sled::open(dir.path().join("ledger")).unwrap();
        db.open_tree("meta")
            .unwrap()
            .insert(SCHEMA_KEY, &99u32.to_be_bytes())
            .unwrap();
        db.flush().unwrap();
    }
    let err = Ledger::open(dir.path()).err().unwrap();
    assert!(err.to_string().contains("schema version 99"), "{err}");
}

#[test]
fn last_run_is_the_newest() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(dir.path()).unwrap();
    assert_eq!(ledger.last_run().unwrap(), None);
    for n in 1..=3 {
        ledger
            .record_run(&RunRecord {
                started_at: n,
                finished_at: n,
                server: "s".into(),
                agents: 0,
                skipped: 0,
                planned: 0,
                applied: 0,
                failed: 0,
                outcome: "ok".into(),
                ..RunRecord::default()
            })
            .unwrap();
    }
    assert_eq!(ledger.last_run().unwrap().unwrap().started_at, 3);
}
