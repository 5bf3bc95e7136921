use super::*;

fn record(id: &str, localpart: &str) -> AccountRecord {
    AccountRecord {
        id: StableId(id.into()),
        mxid: format!("@{localpart}:example.org"),
        localpart: localpart.into(),
        dn: format!("uid={localpart},dc=example,dc=org"),
        display_name: "Someone".into(),
        emails: vec![],
        external_ids: vec![],
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
    let ledger = Ledger::reopen(dir.path()).unwrap();
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
    let err = Ledger::reopen(dir.path()).err().unwrap();
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

fn departing(id: &str, localpart: &str) -> AccountRecord {
    AccountRecord {
        status: AccountStatus::Departing {
            since: 5,
            reason: "left".into(),
            step: crate::config::ReversibleStep::Suspend,
        },
        ..record(id, localpart)
    }
}

#[test]
fn a_partial_view_holds_the_asked_ids_the_departing_and_the_localpart_holders() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(dir.path()).unwrap();
    for r in [
        record("a", "anne"),
        record("b", "jean.martin"),
        record("c", "jean.martin2"),
        record("d", "zoe"),
        departing("e", "eve"),
    ] {
        ledger
            .record_account(&r, &audit(&r.mxid, "create"))
            .unwrap();
    }
    let ids = |view: &LedgerView| -> Vec<String> {
        view.accounts.keys().map(|id| id.0.clone()).collect()
    };
    let mut view = ledger.partial_view(&[StableId("a".into())]).unwrap();
    assert_eq!(ids(&view), ["a", "e"]);
    // Two new agents wanting `jean.martin` may be offered it, `jean.martin2`, then `…3`, `…4`.
    ledger
        .add_localpart_holders(&mut view, "jean.martin", 2)
        .unwrap();
    assert_eq!(ids(&view), ["a", "b", "c", "e"]);
    // Back from departure: out of the index.
    ledger
        .record_account(&record("e", "eve"), &audit("@eve:example.org", "reinstate"))
        .unwrap();
    assert_eq!(ids(&ledger.partial_view(&[]).unwrap()), [] as [&str; 0]);
    assert_eq!(ledger.account_ids().unwrap().len(), 5);
    // Counted as written: a record written again is not a new account.
    assert_eq!(ledger.account_count().unwrap(), 5);
}

/// A ledger holding `records` as a build of schema `version` left it (`undo` takes away what
/// that schema did not have), opened again by this build; checks it is at this schema now.
fn reopened_from_schema(
    dir: &tempfile::TempDir,
    version: u32,
    records: &[AccountRecord],
    undo: impl FnOnce(&Ledger),
) -> Ledger {
    {
        let ledger = Ledger::open(dir.path()).unwrap();
        for r in records {
            ledger.record_account(r, &audit(&r.mxid, "create")).unwrap();
        }
        undo(&ledger);
        ledger
            .meta
            .insert(SCHEMA_KEY, &version.to_be_bytes())
            .unwrap();
        ledger.flush().unwrap();
    }
    let ledger = Ledger::reopen(dir.path()).unwrap();
    assert_eq!(
        ledger.meta.get(SCHEMA_KEY).unwrap().unwrap().as_ref(),
        SCHEMA_VERSION.to_be_bytes()
    );
    ledger
}

#[test]
fn a_schema_1_ledger_gets_its_departing_index_when_opened() {
    let dir = tempfile::tempdir().unwrap();
    // Schema 1 had no index and no count.
    let ledger = reopened_from_schema(&dir, 1, &[departing("e", "eve")], |ledger| {
        ledger.departing.clear().unwrap();
        ledger.meta.remove(ACCOUNT_COUNT_KEY).unwrap();
    });
    let view = ledger.partial_view(&[]).unwrap();
    assert_eq!(view.accounts.len(), 1);
    assert_eq!(ledger.account_count().unwrap(), 1);
}

#[test]
fn the_end_of_a_run_writes_journal_sync_point_and_scheduled_together() {
    use crate::directory::Watermark;
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(dir.path()).unwrap();
    let point = SyncPoint {
        watermark: Watermark::Usn {
            server: "ldaps://dc1".into(),
            invocation_id: "x".into(),
            usn: 42,
        },
        fingerprint: "f".into(),
        full_at: 7,
    };
    let soon = |at| Scheduled {
        at,
        reason: "expires: soon".into(),
    };
    let run = RunRecord {
        outcome: "ok".into(),
        ..RunRecord::default()
    };
    ledger
        .finish_run(FinishedRun {
            run: &run,
            last_good: None,
            sync_point: Some(Some(&point)),
            scheduled: Some(&ScheduledUpdate::Replace(
                [
                    (StableId("a".into()), soon(10)),
                    (StableId("b".into()), soon(20)),
                ]
                .into(),
            )),
        })
        .unwrap();
    assert_eq!(ledger.sync_point().unwrap(), Some(point.clone()));
    assert_eq!(ledger.scheduled().unwrap().len(), 2);
    // A failed run keeps both as they were.
    ledger
        .finish_run(FinishedRun {
            run: &run,
            last_good: None,
            sync_point: None,
            scheduled: None,
        })
        .unwrap();
    assert_eq!(ledger.sync_point().unwrap(), Some(point));
    // An incremental run patches; a complete one replaces.
    ledger
        .finish_run(FinishedRun {
            run: &run,
            last_good: None,
            sync_point: Some(None),
            scheduled: Some(&ScheduledUpdate::Patch {
                set: [(StableId("c".into()), soon(30))].into(),
                clear: [StableId("a".into())].into(),
            }),
        })
        .unwrap();
    assert_eq!(ledger.sync_point().unwrap(), None);
    let ids: Vec<String> = ledger
        .scheduled()
        .unwrap()
        .into_keys()
        .map(|i| i.0)
        .collect();
    assert_eq!(ids, ["b", "c"]);
    ledger
        .finish_run(FinishedRun {
            run: &run,
            last_good: None,
            sync_point: None,
            scheduled: Some(&ScheduledUpdate::Replace(
                [(StableId("d".into()), soon(40))].into(),
            )),
        })
        .unwrap();
    let ids: Vec<String> = ledger
        .scheduled()
        .unwrap()
        .into_keys()
        .map(|i| i.0)
        .collect();
    assert_eq!(ids, ["d"]);
    assert_eq!(ledger.runs.len(), 4);
}

#[test]
fn profiles_follow_every_record_written() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(dir.path()).unwrap();
    let anne = record("a", "anne");
    ledger
        .record_account(&anne, &audit(&anne.mxid, "create"))
        .unwrap();
    let profile = |ledger: &Ledger| ledger.profiles().unwrap()[0].1.clone();
    assert_eq!(
        profile(&ledger),
        Profile {
            stage: Stage::Active,
            origin: Origin::Created,
            mxid: "@anne:example.org".into(),
            digest: ProfileFields::of(&anne).digest(),
        }
    );
    let renamed = AccountRecord {
        display_name: "Anne Autre".into(),
        ..departing("a", "anne")
    };
    ledger
        .record_account(&renamed, &audit(&anne.mxid, "suspend"))
        .unwrap();
    let now = profile(&ledger);
    assert_eq!(now.stage, Stage::Departing);
    assert_eq!(now.digest, ProfileFields::of(&renamed).digest());
    let gone = AccountRecord {
        status: AccountStatus::Deactivated {
            at: 9,
            reason: "left".into(),
        },
        ..renamed
    };
    ledger
        .record_account(&gone, &audit(&anne.mxid, "deactivate"))
        .unwrap();
    assert_eq!(profile(&ledger).stage, Stage::Deactivated);
    assert_eq!(ledger.profiles().unwrap().len(), 1);
}

#[test]
fn a_schema_2_ledger_gets_its_profiles_when_opened() {
    let dir = tempfile::tempdir().unwrap();
    let adopted = AccountRecord {
        origin: Origin::Adopted,
        ..record("b", "bob")
    };
    // Schema 2 had no profiles.
    let records = [record("a", "anne"), adopted.clone()];
    let ledger = reopened_from_schema(&dir, 2, &records, |ledger| {
        ledger.profiles.clear().unwrap();
    });
    let profiles = ledger.profiles().unwrap();
    assert_eq!(profiles.len(), 2);
    assert_eq!(profiles[1], (StableId("b".into()), Profile::of(&adopted)));
}

#[test]
fn a_record_written_before_external_ids_existed_still_reads() {
    // An account record as schema 3 wrote it: no `external_ids` field.
    let old = r#"{"id":"a","mxid":"@anne:example.org","localpart":"anne",
        "dn":"uid=anne,dc=example,dc=org","display_name":"Anne","emails":["anne@example.org"],
        "origin":"created","created_at":1,"updated_at":2,"status":{"state":"active"}}"#;
    let record: AccountRecord = serde_json::from_str(old).unwrap();
    assert_eq!(record.external_ids, vec![]);
    assert_eq!(record.emails, vec!["anne@example.org".to_string()]);
    // And one without external ids is written as before (no empty field).
    let written = serde_json::to_string(&record).unwrap();
    assert!(!written.contains("external_ids"), "{written}");
    let sso = AccountRecord {
        external_ids: vec![crate::homeserver::ExternalId {
            auth_provider: "oidc-x".into(),
            external_id: "a".into(),
        }],
        ..record
    };
    let back: AccountRecord = serde_json::from_str(&serde_json::to_string(&sso).unwrap()).unwrap();
    assert_eq!(back, sso);
}

/// The newest snapshot sled wrote in the ledger folder, by its LSN.
fn newest_snapshot_lsn(store: &std::path::Path) -> u64 {
    std::fs::read_dir(store)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            let lsn = name.strip_prefix("snap.")?;
            u64::from_str_radix(lsn, 16).ok()
        })
        .max()
        .expect("sled wrote a snapshot when it opened the store")
}

/// A ledger with accounts (one departing), audit entries and runs, opened twice (so sled wrote
/// a snapshot) and written again after it; closed.
fn lived_in_ledger(dir: &std::path::Path) {
    for round in 0..2 {
        let ledger = Ledger::reopen(dir).unwrap();
        let id = format!("a{round}");
        ledger
            .record_account(
                &departing(&id, &format!("anne{round}")),
                &audit(&format!("@anne{round}:example.org"), "suspend"),
            )
            .unwrap();
        ledger
            .record_run(&RunRecord {
                outcome: "ok".into(),
                ..RunRecord::default()
            })
            .unwrap();
        ledger.flush().unwrap();
    }
}

#[test]
fn a_half_written_snapshot_left_by_an_exit_is_set_aside_and_everything_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    lived_in_ledger(dir.path());
    let before = {
        let ledger = Ledger::reopen(dir.path()).unwrap();
        (ledger.view().unwrap(), ledger.audit_trail(None).unwrap())
    };
    assert_eq!(before.1.len(), 2);

    // What an exit while sled opened the store leaves: the next snapshot created, never
    // written. sled alone reads it as the newest snapshot and refuses the store.
    let store = dir.path().join("ledger");
    let newest = newest_snapshot_lsn(&store);
    let leftover = store.join(format!("snap.{:016X}.generating", newest + 1));
    std::fs::write(&leftover, b"").unwrap();
    let refused = loop {
        match Ledger::open_store(&store) {
            Err(LedgerError::Locked { .. }) => {
                std::thread::sleep(std::time::Duration::from_millis(20))
            }
            other => break other,
        }
    };
    match refused {
        Err(LedgerError::Damaged { reason, .. }) => {
            assert!(reason.contains("Read corrupted data"), "{reason}")
        }
        other => panic!(
            "sled opened a store with a half-written snapshot: {:?}",
            other.err()
        ),
    }

    // The ledger opens: the leftover kept in quarantine/, every record as it was.
    let ledger = Ledger::reopen(dir.path()).unwrap();
    assert!(!leftover.exists());
    let kept: Vec<_> = std::fs::read_dir(store.join(leftovers::QUARANTINE))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(kept.len(), 1);
    assert!(kept[0].ends_with(&format!("snap.{:016X}.generating", newest + 1)));
    assert_eq!(ledger.view().unwrap(), before.0);
    assert_eq!(ledger.audit_trail(None).unwrap(), before.1);
    assert_eq!(ledger.view().unwrap().accounts.len(), 2);
}

#[test]
fn a_store_damaged_otherwise_is_reported_with_the_repair_advice_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    lived_in_ledger(dir.path());
    let store = dir.path().join("ledger");
    // A complete-looking snapshot name whose bytes are garbage: not a leftover of sled's.
    let newest = newest_snapshot_lsn(&store);
    let bad = store.join(format!("snap.{:016X}", newest + 1));
    std::fs::write(&bad, b"not a snapshot at all").unwrap();
    let err = loop {
        match Ledger::open(dir.path()) {
            Err(LedgerError::Locked { .. }) => {
                std::thread::sleep(std::time::Duration::from_millis(20))
            }
            other => break other.err().unwrap(),
        }
    };
    let text = err.to_string();
    assert!(matches!(err, LedgerError::Damaged { .. }), "{text}");
    assert!(text.contains("repair --dry-run"), "{text}");
    assert!(bad.exists());
    assert!(!store.join(leftovers::QUARANTINE).exists());
}

#[test]
fn a_creation_that_died_leaves_no_ledger_and_the_next_one_completes() {
    let dir = tempfile::tempdir().unwrap();
    // What a process killed while creating leaves: sled's files, no schema, not yet renamed.
    {
        let db = sled::open(dir.path().join("ledger.new")).unwrap();
        db.open_tree("meta").unwrap();
        db.flush().unwrap();
    }
    assert!(!Ledger::exists(dir.path()));
    let ledger = Ledger::reopen(dir.path()).unwrap();
    assert_eq!(ledger.account_count().unwrap(), 0);
    assert!(!dir.path().join("ledger.new").exists());
    assert_eq!(
        ledger.meta.get(SCHEMA_KEY).unwrap().unwrap().as_ref(),
        SCHEMA_VERSION.to_be_bytes()
    );
}

#[test]
fn an_empty_ledger_folder_is_created_into_and_one_with_other_files_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("ledger")).unwrap();
    assert!(Ledger::open(dir.path()).is_ok());

    let other = tempfile::tempdir().unwrap();
    std::fs::create_dir(other.path().join("ledger")).unwrap();
    std::fs::write(other.path().join("ledger/notes.txt"), b"mine").unwrap();
    let err = Ledger::open(other.path()).err().unwrap().to_string();
    assert!(
        err.contains("cannot create the ledger") && err.contains("move it away"),
        "{err}"
    );
    assert!(other.path().join("ledger/notes.txt").exists());
}
