use std::collections::BTreeMap;

use super::*;
use crate::ledger::{AccountRecord, Origin};

fn want(id: &str, localpart: &str, name: &str) -> DesiredAccount {
    DesiredAccount {
        id: StableId(id.into()),
        dn: format!("uid={id},ou=people,dc=example,dc=org"),
        localpart: localpart.into(),
        display_name: name.into(),
        emails: vec![format!("{id}@example.org")],
    }
}

fn applied(a: &DesiredAccount, localpart: &str) -> AccountRecord {
    AccountRecord {
        id: a.id.clone(),
        mxid: format!("@{localpart}:example.org"),
        localpart: localpart.into(),
        dn: a.dn.clone(),
        display_name: a.display_name.clone(),
        emails: a.emails.clone(),
        origin: Origin::Created,
        created_at: 0,
        updated_at: 0,
    }
}

fn ledger(records: Vec<AccountRecord>) -> LedgerView {
    LedgerView {
        accounts: records
            .into_iter()
            .map(|r| (r.id.clone(), r))
            .collect::<BTreeMap<_, _>>(),
        ..LedgerView::default()
    }
}

fn desired(accounts: Vec<DesiredAccount>) -> Desired {
    let mut accounts = accounts;
    accounts.sort_by(|a, b| a.id.cmp(&b.id));
    Desired {
        accounts,
        ..Desired::default()
    }
}

fn created(plan: &Plan) -> Vec<(&str, &str)> {
    plan.actions
        .iter()
        .filter_map(|a| match a {
            Action::CreateAccount { id, mxid, .. } => Some((id.0.as_str(), mxid.as_str())),
            _ => None,
        })
        .collect()
}

#[test]
fn new_agents_are_created_with_their_profile_and_a_reason() {
    let p = plan(
        &desired(vec![want("u1", "elodie.dupre", "Élodie Dupré [DSI]")]),
        &ledger(vec![]),
        "example.org",
    );
    assert_eq!(
        p.actions,
        vec![Action::CreateAccount {
            id: StableId("u1".into()),
            mxid: "@elodie.dupre:example.org".into(),
            localpart: "elodie.dupre".into(),
            dn: "uid=u1,ou=people,dc=example,dc=org".into(),
            display_name: "Élodie Dupré [DSI]".into(),
            emails: vec!["u1@example.org".into()],
            reason: "new agent uid=u1,ou=people,dc=example,dc=org".into(),
        }]
    );
}

#[test]
fn collisions_are_resolved_in_stable_id_order_and_explained() {
    type Pairs = &'static [(&'static str, &'static str)];
    let cases: &[(Pairs, Pairs, Pairs)] = &[
        // (in ledger: id, localpart), (new: id, wanted localpart), expected (id, mxid)
        (
            &[],
            &[("b", "jean.martin"), ("a", "jean.martin")],
            &[
                ("a", "@jean.martin:example.org"),
                ("b", "@jean.martin2:example.org"),
            ],
        ),
        (
            &[("z", "jean.martin")],
            &[("a", "jean.martin")],
            &[("a", "@jean.martin2:example.org")],
        ),
        (
            &[("z", "jean.martin"), ("y", "jean.martin2")],
            &[("b", "jean.martin"), ("a", "jean.martin")],
            &[
                ("a", "@jean.martin3:example.org"),
                ("b", "@jean.martin4:example.org"),
            ],
        ),
        // A wanted localpart that looks like a suffixed one does not collide with its base.
        (
            &[("z", "jean.martin")],
            &[("a", "jean.martin2"), ("b", "jean.martin")],
            &[
                ("a", "@jean.martin2:example.org"),
                ("b", "@jean.martin3:example.org"),
            ],
        ),
    ];
    for (i, (held, new, expected)) in cases.iter().enumerate() {
        let records = held
            .iter()
            .map(|(id, lp)| applied(&want(id, lp, "X"), lp))
            .collect();
        let mut accounts: Vec<_> = held.iter().map(|(id, lp)| want(id, lp, "X")).collect();
        accounts.extend(new.iter().map(|(id, lp)| want(id, lp, "X")));
        let p = plan(&desired(accounts), &ledger(records), "example.org");
        let mut got = created(&p);
        got.sort();
        assert_eq!(got, expected.to_vec(), "case {i}");
    }
    let p = plan(
        &desired(vec![
            want("a", "jean.martin", "J"),
            want("b", "jean.martin", "J"),
        ]),
        &ledger(vec![]),
        "example.org",
    );
    let second = p
        .actions
        .iter()
        .find(|a| a.mxid() == "@jean.martin2:example.org")
        .unwrap();
    assert!(
        second.reason().contains(
            "`jean.martin` is already uid=a,ou=people,dc=example,dc=org's, so `jean.martin2`"
        ),
        "{}",
        second.reason()
    );
}

#[test]
fn same_directory_same_plan() {
    let d = desired(vec![
        want("a", "x", "A"),
        want("b", "x", "B"),
        want("c", "y", "C"),
    ]);
    assert_eq!(
        plan(&d, &ledger(vec![]), "s"),
        plan(&d, &ledger(vec![]), "s")
    );
}

#[test]
fn nothing_changed_means_an_empty_plan() {
    let a = want("a", "alice", "Alice");
    let p = plan(
        &desired(vec![a.clone()]),
        &ledger(vec![applied(&a, "alice")]),
        "example.org",
    );
    assert!(!p.has_changes());
    assert_eq!((p.unchanged, p.moves.len()), (1, 0));
}

#[test]
fn profile_changes_become_one_update_with_both_changes() {
    let before = want("a", "alice", "Alice [DSI]");
    let mut after = before.clone();
    after.display_name = "Alice [RH]".into();
    after.emails = vec!["alice@rh.example.org".into()];
    // A name change does not change the localpart an account was given.
    after.localpart = "alice.smith".into();
    let p = plan(
        &desired(vec![after]),
        &ledger(vec![applied(&before, "alice")]),
        "example.org",
    );
    assert_eq!(p.actions.len(), 1);
    let Action::UpdateAccount {
        mxid,
        display_name,
        emails,
        reason,
        ..
    } = &p.actions[0]
    else {
        panic!("{:?}", p.actions)
    };
    assert_eq!(mxid, "@alice:example.org");
    assert_eq!(
        display_name.as_ref().map(|c| c.to.as_str()),
        Some("Alice [RH]")
    );
    assert_eq!(
        emails.as_ref().map(|c| c.from.clone()),
        Some(vec!["a@example.org".to_string()])
    );
    assert!(
        reason.contains("display name \"Alice [DSI]\" → \"Alice [RH]\""),
        "{reason}"
    );
}

#[test]
fn a_renamed_dn_with_the_same_id_is_a_move_not_a_new_account() {
    let before = want("a", "alice", "Alice");
    let mut after = before.clone();
    after.dn = "uid=alice,ou=finances,dc=example,dc=org".into();
    let p = plan(
        &desired(vec![after]),
        &ledger(vec![applied(&before, "alice")]),
        "example.org",
    );
    assert!(!p.has_changes(), "{:?}", p.actions);
    assert_eq!(p.moves[0].to_dn, "uid=alice,ou=finances,dc=example,dc=org");
    assert_eq!(p.moves[0].mxid, "@alice:example.org");
}

#[test]
fn managed_accounts_missing_from_the_directory_are_listed_not_acted_on() {
    let a = want("a", "alice", "Alice");
    let b = want("b", "bob", "Bob");
    let p = plan(
        &desired(vec![a.clone()]),
        &ledger(vec![applied(&a, "alice"), applied(&b, "bob")]),
        "example.org",
    );
    assert!(!p.has_changes());
    assert_eq!(p.not_in_directory, vec!["@bob:example.org"]);
}

#[test]
fn creations_run_before_updates_each_sorted_by_localpart() {
    let old = want("o", "zed", "Zed");
    let mut renamed = old.clone();
    renamed.display_name = "Zed Z".into();
    let p = plan(
        &desired(vec![
            want("n2", "bea", "B"),
            renamed,
            want("n1", "anna", "A"),
            want("n3", "anna2", "A"),
        ]),
        &ledger(vec![applied(&old, "zed")]),
        "example.org",
    );
    let order: Vec<_> = p.actions.iter().map(|a| (a.kind(), a.mxid())).collect();
    assert_eq!(
        order,
        vec![
            (ActionKind::CreateAccount, "@anna:example.org"),
            (ActionKind::CreateAccount, "@anna2:example.org"),
            (ActionKind::CreateAccount, "@bea:example.org"),
            (ActionKind::UpdateAccount, "@zed:example.org")
        ]
    );
}
