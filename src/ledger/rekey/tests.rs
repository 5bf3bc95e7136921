use super::*;
use crate::config::ReversibleStep;
use crate::directory::{IdFormat, Watermark};
use crate::ledger::{
    AccountRecord, AccountStatus, FinishedRun, Held, MembershipRecord, Origin, PowerRecord,
    Scheduled, ScheduledUpdate, Scope, SyncPoint,
};

fn id(text: &str) -> StableId {
    StableId(text.into())
}

fn record(key: &str, localpart: &str, status: AccountStatus) -> AccountRecord {
    AccountRecord {
        id: id(key),
        mxid: format!("@{localpart}:x"),
        localpart: localpart.into(),
        dn: format!("uid={localpart},ou=people,dc=x"),
        display_name: localpart.into(),
        emails: vec![format!("{localpart}@x.org")],
        external_ids: vec![],
        origin: Origin::Created,
        created_at: 1,
        updated_at: 1,
        status,
    }
}

fn audit(mxid: &str, key: &str, action: &str) -> AuditEntry {
    AuditEntry {
        at: 2,
        mxid: mxid.into(),
        id: id(key),
        action: action.into(),
        reason: "test".into(),
        result: "ok".into(),
    }
}

fn new_scope() -> LastGood {
    let spec = Scope {
        filter: "(uid=*)".into(),
        bases: vec!["dc=x".into()],
        id_attribute: "uid".into(),
        id_format: IdFormat::Text,
    };
    LastGood {
        agents: 3,
        scope: spec.digest(),
        at: 9,
        spec: Some(spec),
    }
}

fn migration_run() -> RunRecord {
    RunRecord {
        outcome: "ids migrated".into(),
        ..RunRecord::default()
    }
}

fn rekey(from: &str, to: &str) -> Rekey {
    Rekey {
        from: id(from),
        to: id(to),
        audit: audit("@m:x", to, "migrate_id"),
    }
}

/// A ledger with an active account `u-a` (in two rooms, held, a creation intent), a
/// departing one `u-b` (a power level, a room intent), `u-c` with a scheduled departure, and
/// `keep` that no re-key touches; a sync point and a last good run.
fn populated(dir: &std::path::Path) -> Ledger {
    let ledger = Ledger::open(dir).unwrap();
    let departing = AccountStatus::Departing {
        since: 5,
        reason: "left".into(),
        step: ReversibleStep::Suspend,
    };
    for r in [
        record("u-a", "ann", AccountStatus::Active),
        record("u-b", "bob", departing),
        record("u-c", "cid", AccountStatus::Active),
        record("keep", "kim", AccountStatus::Active),
    ] {
        ledger
            .record_account(&r, &audit(&r.mxid, &r.id.0, "create"))
            .unwrap();
    }
    for (room, key) in [("#a:x", "u-a"), ("#b:x", "u-a"), ("#a:x", "keep")] {
        let m = MembershipRecord {
            room: room.into(),
            id: id(key),
            mxid: format!("@{key}:x"),
            reason: "member".into(),
            at: 1,
        };
        ledger
            .record_membership(&m, &audit("@m:x", key, "join"))
            .unwrap();
    }
    let p = PowerRecord {
        room: "#a:x".into(),
        id: id("u-b"),
        mxid: "@bob:x".into(),
        level: 50,
        reason: "head".into(),
        at: 1,
    };
    ledger
        .record_power(&p, &audit("@bob:x", "u-b", "grant_power"))
        .unwrap();
    ledger
        .hold(&HeldAgent {
            id: id("u-a"),
            mxid: "@ann:x".into(),
            dn: "uid=ann".into(),
            since: 1,
            at: 1,
            why: Held::Refused {
                action: "update_account".into(),
                wanted: "w".into(),
                error: "400".into(),
            },
        })
        .unwrap();
    ledger
        .intend(&[
            Intent::Account {
                id: id("u-a"),
                mxid: "@ann:x".into(),
                kind: "update_account".into(),
                dn: String::new(),
                localpart: String::new(),
                step: None,
                reason: "r".into(),
                at: 3,
            },
            Intent::Room {
                room: "#a:x".into(),
                id: Some(id("u-b")),
                mxid: "@bob:x".into(),
                kind: "revoke_power".into(),
                level: None,
                reason: "r".into(),
                at: 3,
            },
        ])
        .unwrap();
    let point = SyncPoint {
        watermark: Watermark::Usn {
            server: "ldap://dc".into(),
            invocation_id: "i".into(),
            usn: 42,
        },
        fingerprint: "f".into(),
        full_at: 7,
    };
    ledger
        .finish_run(FinishedRun {
            run: &RunRecord::default(),
            last_good: Some(&LastGood {
                agents: 4,
                scope: "old".into(),
                at: 1,
                spec: None,
            }),
            sync_point: Some(Some(&point)),
            scheduled: Some(&ScheduledUpdate::Replace(
                [(
                    id("u-c"),
                    Scheduled {
                        at: 100,
                        reason: "expires".into(),
                    },
                )]
                .into(),
            )),
        })
        .unwrap();
    ledger
}

#[test]
fn every_tree_follows_the_new_ids_in_one_write() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = populated(dir.path());
    let audit_before = ledger.audit_trail(None).unwrap().len();
    let done = ledger
        .rekey(
            &[
                rekey("u-a", "ann"),
                rekey("u-b", "bob"),
                rekey("u-c", "cid"),
            ],
            &new_scope(),
            &migration_run(),
        )
        .unwrap();
    assert_eq!(
        done,
        Rekeyed {
            accounts: 3,
            memberships: 2,
            powers: 1,
            held: 1,
            scheduled: 1,
            intents: 2,
        }
    );
    drop(ledger);
    let ledger = Ledger::reopen(dir.path()).unwrap();
    let view = ledger.view().unwrap();
    let keys: Vec<&str> = view.accounts.keys().map(|k| k.0.as_str()).collect();
    assert_eq!(keys, ["ann", "bob", "cid", "keep"]);
    for (key, record) in &view.accounts {
        assert_eq!(&record.id, key);
    }
    assert_eq!(ledger.account_count().unwrap(), 4);
    let profiles: Vec<String> = ledger
        .profiles()
        .unwrap()
        .into_iter()
        .map(|(k, p)| format!("{k}={}", p.mxid))
        .collect();
    assert_eq!(
        profiles,
        ["ann=@ann:x", "bob=@bob:x", "cid=@cid:x", "keep=@kim:x"]
    );
    // The localparts stay the accounts' own, now under the new ids.
    for (localpart, owner) in [
        ("ann", "ann"),
        ("bob", "bob"),
        ("cid", "cid"),
        ("kim", "keep"),
    ] {
        assert_eq!(
            ledger.localparts.get(localpart).unwrap().as_deref(),
            Some(owner.as_bytes()),
            "{localpart}"
        );
    }
    let departing: Vec<_> = ledger.departing.iter().keys().map(|k| k.unwrap()).collect();
    assert_eq!(departing, [sled::IVec::from("bob")]);
    assert_eq!(
        ledger.scheduled().unwrap().into_keys().collect::<Vec<_>>(),
        [id("cid")]
    );
    let members: Vec<(String, String)> = view
        .rooms
        .members
        .values()
        .map(|m| (m.room.clone(), m.id.0.clone()))
        .collect();
    assert_eq!(
        members,
        [
            ("#a:x".to_string(), "ann".to_string()),
            ("#a:x".to_string(), "keep".to_string()),
            ("#b:x".to_string(), "ann".to_string()),
        ]
    );
    assert_eq!(
        view.rooms.powers.keys().collect::<Vec<_>>(),
        [&("#a:x".to_string(), id("bob"))]
    );
    assert_eq!(view.held.keys().collect::<Vec<_>>(), [&id("ann")]);
    assert_eq!(view.held[&id("ann")].id, id("ann"));
    let intents: Vec<Option<StableId>> = ledger
        .intents()
        .unwrap()
        .into_iter()
        .map(|(_, i)| match i {
            Intent::Account { id, .. } => Some(id),
            Intent::Room { id, .. } => id,
        })
        .collect();
    assert_eq!(intents, [Some(id("ann")), Some(id("bob"))]);
    // The next run reads everything, under the new scope.
    assert_eq!(ledger.sync_point().unwrap(), None);
    assert_eq!(ledger.last_good().unwrap(), Some(new_scope()));
    assert_eq!(ledger.last_run().unwrap(), Some(migration_run()));
    let trail = ledger.audit_trail(None).unwrap();
    assert_eq!(trail.len(), audit_before + 3);
    assert!(trail[audit_before..]
        .iter()
        .all(|e| e.action == "migrate_id"));
}

#[test]
fn ids_may_trade_places() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = populated(dir.path());
    ledger
        .rekey(
            &[rekey("u-a", "u-b"), rekey("u-b", "u-a")],
            &new_scope(),
            &migration_run(),
        )
        .unwrap();
    let view = ledger.view().unwrap();
    assert_eq!(view.accounts[&id("u-a")].mxid, "@bob:x");
    assert_eq!(view.accounts[&id("u-b")].mxid, "@ann:x");
    assert_eq!(
        ledger.localparts.get("ann").unwrap().as_deref(),
        Some(&b"u-b"[..])
    );
    assert_eq!(ledger.departing.iter().keys().count(), 1);
    assert!(ledger.departing.contains_key("u-a").unwrap());
}

#[test]
fn an_inconsistent_rekey_is_refused_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = populated(dir.path());
    let before = ledger.view().unwrap();
    let trail = ledger.audit_trail(None).unwrap().len();
    let cases: [(&[Rekey], &str); 5] = [
        (
            &[rekey("u-a", "keep")],
            "keep is already the id of @kim:x, which keeps it",
        ),
        (
            &[rekey("nobody", "n")],
            "no managed account has the id nobody",
        ),
        (
            &[rekey("u-a", "n"), rekey("u-b", "n")],
            "n is given to two accounts",
        ),
        (
            &[rekey("u-a", "n"), rekey("u-a", "m")],
            "u-a is given a new id twice",
        ),
        (&[rekey("u-a", "u-a")], "it is the same id"),
    ];
    for (rekeys, why) in cases {
        let err = ledger
            .rekey(rekeys, &new_scope(), &migration_run())
            .unwrap_err();
        assert!(
            matches!(err, RekeyError::Refused { .. }) && err.to_string().contains(why),
            "{err}"
        );
    }
    assert_eq!(ledger.view().unwrap(), before);
    assert_eq!(ledger.audit_trail(None).unwrap().len(), trail);
    assert!(ledger.sync_point().unwrap().is_some());
}

#[test]
fn small_steps_end_in_the_same_ledger_as_one() {
    let (one, steps) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let rekeys = [
        rekey("u-a", "ann"),
        rekey("u-b", "bob"),
        rekey("u-c", "cid"),
    ];
    let whole = populated(one.path());
    whole
        .rekey(&rekeys, &new_scope(), &migration_run())
        .unwrap();
    let stepped = populated(steps.path());
    let runs_before = stepped.runs.len();
    let done = stepped
        .rekey_in_steps(&rekeys, &new_scope(), &migration_run(), 1)
        .unwrap();
    assert_eq!(done.accounts, 3);
    assert_eq!(stepped.view().unwrap(), whole.view().unwrap());
    assert_eq!(stepped.profiles().unwrap(), whole.profiles().unwrap());
    assert_eq!(stepped.scheduled().unwrap(), whole.scheduled().unwrap());
    assert_eq!(stepped.intents().unwrap(), whole.intents().unwrap());
    assert_eq!(stepped.last_good().unwrap(), Some(new_scope()));
    assert_eq!(stepped.sync_point().unwrap(), None);
    // One run entry, written with the last step.
    assert_eq!(stepped.runs.len(), runs_before + 1);
    let actions = |l: &Ledger| -> Vec<(String, String)> {
        l.audit_trail(None)
            .unwrap()
            .into_iter()
            .map(|e| (e.action, e.id.0))
            .collect()
    };
    assert_eq!(actions(&stepped), actions(&whole));
}

#[test]
fn chained_ids_move_together_whatever_the_step() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = populated(dir.path());
    // u-a takes u-b's id, which takes a new one: one transaction, or u-b's record is lost.
    ledger
        .rekey_in_steps(
            &[rekey("u-a", "u-b"), rekey("u-b", "bob")],
            &new_scope(),
            &migration_run(),
            1,
        )
        .unwrap();
    let view = ledger.view().unwrap();
    assert_eq!(view.accounts[&id("u-b")].mxid, "@ann:x");
    assert_eq!(view.accounts[&id("bob")].mxid, "@bob:x");
    assert!(!view.accounts.contains_key(&id("u-a")));
}
