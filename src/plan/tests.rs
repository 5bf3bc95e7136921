use std::collections::BTreeMap;

use super::*;
use crate::config::ReversibleStep;
use crate::ledger::{AccountRecord, AccountStatus, Origin};

const DAY: i64 = 86_400;
const NOW: i64 = 1_795_000_000;

fn policy() -> Policy {
    Policy {
        server_name: "example.org".into(),
        now: NOW,
        grace: 7 * DAY,
        step: ReversibleStep::Suspend,
        protected: vec!["@boss:example.org".into(), "@*-bot:example.org".into()],
        adopt: Adopt::Matching,
        on_conflict: OnConflict::Skip,
        retry_refused_after: DAY,
    }
}

fn want(id: &str, localpart: &str, name: &str) -> DesiredAccount {
    DesiredAccount {
        id: StableId(id.into()),
        dn: format!("uid={id},ou=people,dc=example,dc=org"),
        localpart: localpart.into(),
        display_name: name.into(),
        emails: vec![format!("{id}@example.org")],
        state: AgentState::Active,
        login: None,
        external_ids: vec![],
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
        external_ids: a.external_ids.clone(),
        origin: Origin::Created,
        created_at: 0,
        updated_at: 0,
        status: AccountStatus::Active,
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
        &policy(),
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
            adopt: None,
            resumed: false,
            external_ids: vec![],
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
        let p = plan(&desired(accounts), &ledger(records), &policy());
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
        &policy(),
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
        plan(&d, &ledger(vec![]), &policy()),
        plan(&d, &ledger(vec![]), &policy())
    );
}

#[test]
fn nothing_changed_means_an_empty_plan() {
    let a = want("a", "alice", "Alice");
    let p = plan(
        &desired(vec![a.clone()]),
        &ledger(vec![applied(&a, "alice")]),
        &policy(),
    );
    assert!(!p.has_changes());
    assert_eq!((p.unchanged, p.moves.len()), (1, 0));
}

#[test]
fn external_ids_are_created_and_kept_in_step() {
    use crate::homeserver::ExternalId;
    let sso = |value: &str| ExternalId {
        auth_provider: "oidc-x".into(),
        external_id: value.into(),
    };
    let mut a = want("a", "alice", "Alice");
    a.external_ids = vec![sso("A-1")];
    let p = plan(&desired(vec![a.clone()]), &ledger(vec![]), &policy());
    assert!(
        matches!(&p.actions[..], [Action::CreateAccount { external_ids, .. }] if *external_ids == a.external_ids),
        "{:?}",
        p.actions
    );
    // Applied: nothing to do. A record from before external ids, or another id: an update.
    let same = plan(
        &desired(vec![a.clone()]),
        &ledger(vec![applied(&a, "alice")]),
        &policy(),
    );
    assert!(!same.has_changes(), "{:?}", same.actions);
    let mut older = applied(&a, "alice");
    older.external_ids = vec![];
    let mut other = applied(&a, "alice");
    other.external_ids = vec![sso("A-0")];
    for (record, from) in [(older, vec![]), (other, vec![sso("A-0")])] {
        let p = plan(&desired(vec![a.clone()]), &ledger(vec![record]), &policy());
        let [Action::UpdateAccount {
            display_name: None,
            emails: None,
            external_ids: Some(change),
            reason,
            ..
        }] = &p.actions[..]
        else {
            panic!("{:?}", p.actions)
        };
        assert_eq!((&change.from, &change.to), (&from, &a.external_ids));
        assert!(reason.contains("→ [oidc-x:A-1]"), "{reason}");
    }
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
        &policy(),
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
        &policy(),
    );
    assert!(!p.has_changes(), "{:?}", p.actions);
    assert_eq!(p.moves[0].to_dn, "uid=alice,ou=finances,dc=example,dc=org");
    assert_eq!(p.moves[0].mxid, "@alice:example.org");
}

/// One managed agent `a` (@alice) through the departure lifecycle: (directory state, or None
/// when gone; ledger status) → (action kind, or None; reason contains; pending?).
#[test]
fn departure_lifecycle_table() {
    let departing = |days_ago: i64| AccountStatus::Departing {
        since: NOW - days_ago * DAY,
        reason: "departed: disabled: nsAccountLock=TRUE".into(),
        step: ReversibleStep::Suspend,
    };
    let deactivated = AccountStatus::Deactivated {
        at: NOW - 100 * DAY,
        reason: "grace ended".into(),
    };
    let disabled = AgentState::Departed {
        reason: "disabled: nsAccountLock=TRUE".into(),
        since: None,
    };
    let scheduled = AgentState::Scheduled {
        at: NOW + 3 * DAY,
        reason: "expires: departureDate".into(),
    };
    type Case = (
        Option<AgentState>,
        AccountStatus,
        Option<ActionKind>,
        &'static str,
        bool,
    );
    let cases: Vec<Case> = vec![
        (
            None,
            AccountStatus::Active,
            Some(ActionKind::SuspendAccount),
            "departed: no longer in the directory (last seen as uid=a,",
            false,
        ),
        (
            Some(disabled.clone()),
            AccountStatus::Active,
            Some(ActionKind::SuspendAccount),
            "departed: disabled: nsAccountLock=TRUE",
            false,
        ),
        (Some(disabled.clone()), departing(3), None, "", true),
        (None, departing(3), None, "", true),
        (
            Some(disabled.clone()),
            departing(8),
            Some(ActionKind::DeactivateAccount),
            "grace 7days ended",
            false,
        ),
        (
            None,
            departing(7),
            Some(ActionKind::DeactivateAccount),
            "since 2026-11-11",
            false,
        ),
        (Some(disabled.clone()), deactivated.clone(), None, "", false),
        (None, deactivated.clone(), None, "", false),
        (
            Some(AgentState::Active),
            departing(3),
            Some(ActionKind::ReinstateAccount),
            "back in the directory",
            false,
        ),
        (
            Some(AgentState::Active),
            deactivated.clone(),
            Some(ActionKind::ReactivateAccount),
            "was deactivated: grace ended",
            false,
        ),
        (
            Some(scheduled.clone()),
            AccountStatus::Active,
            None,
            "",
            true,
        ),
        (
            Some(AgentState::Active),
            AccountStatus::Active,
            None,
            "",
            false,
        ),
    ];
    for (i, (state, status, kind, reason, pending)) in cases.into_iter().enumerate() {
        let mut a = want("a", "alice", "Alice");
        let mut record = applied(&a, "alice");
        record.status = status;
        let wanted = match state {
            Some(s) => {
                a.state = s;
                vec![a]
            }
            None => vec![],
        };
        let p = plan(&desired(wanted), &ledger(vec![record]), &policy());
        assert_eq!(
            p.actions.first().map(|a| a.kind()),
            kind,
            "case {i}: {:?}",
            p.actions
        );
        assert!(p.actions.len() <= 1, "case {i}: {:?}", p.actions);
        if let Some(action) = p.actions.first() {
            assert!(
                action.reason().contains(reason),
                "case {i}: {}",
                action.reason()
            );
        }
        assert_eq!(!p.pending.is_empty(), pending, "case {i}: {:?}", p.pending);
    }
}

#[test]
fn a_departure_in_grace_says_when_deactivation_is_due() {
    let a = want("a", "alice", "Alice");
    let mut record = applied(&a, "alice");
    record.status = AccountStatus::Departing {
        since: NOW - DAY,
        reason: "left".into(),
        step: ReversibleStep::Lock,
    };
    let p = plan(&desired(vec![]), &ledger(vec![record]), &policy());
    assert_eq!(p.pending[0].at, NOW + 6 * DAY);
    assert!(
        p.pending[0]
            .what
            .starts_with("deactivation (left; grace 7days)"),
        "{:?}",
        p.pending
    );
}

#[test]
fn a_return_after_suspension_also_brings_the_profile_up_to_date() {
    let before = want("a", "alice", "Alice [DSI]");
    let mut record = applied(&before, "alice");
    record.status = AccountStatus::Departing {
        since: NOW,
        reason: "left".into(),
        step: ReversibleStep::Lock,
    };
    let mut back = before.clone();
    back.display_name = "Alice [RH]".into();
    let p = plan(&desired(vec![back]), &ledger(vec![record]), &policy());
    let kinds: Vec<_> = p.actions.iter().map(|a| a.kind()).collect();
    assert_eq!(
        kinds,
        vec![ActionKind::ReinstateAccount, ActionKind::UpdateAccount]
    );
    assert!(matches!(
        p.actions[0],
        Action::ReinstateAccount {
            step: ReversibleStep::Lock,
            ..
        }
    ));
}

#[test]
fn skipped_agents_with_an_id_are_never_taken_for_gone() {
    let a = want("a", "alice", "Alice");
    let mut d = desired(vec![]);
    d.skipped.push(SkippedAgent {
        id: Some(a.id.clone()),
        dn: a.dn.clone(),
        reason: "departure: bad value".into(),
    });
    let p = plan(&d, &ledger(vec![applied(&a, "alice")]), &policy());
    assert!(!p.has_changes(), "{:?}", p.actions);
}

#[test]
fn protected_accounts_are_listed_instead_of_acted_on() {
    let boss = want("b", "boss", "Boss");
    let bot = want("c", "deploy-bot", "Bot");
    let p = plan(
        &desired(vec![]),
        &ledger(vec![applied(&boss, "boss"), applied(&bot, "deploy-bot")]),
        &policy(),
    );
    assert!(!p.has_changes(), "{:?}", p.actions);
    let protected: Vec<_> = p.protected.iter().map(|p| p.mxid.as_str()).collect();
    assert_eq!(
        protected,
        vec!["@boss:example.org", "@deploy-bot:example.org"]
    );
}

#[test]
fn no_grace_deactivates_at_once_and_the_lock_step_is_a_lock() {
    let a = want("a", "alice", "Alice");
    let mut no_grace = policy();
    no_grace.grace = 0;
    let p = plan(
        &desired(vec![]),
        &ledger(vec![applied(&a, "alice")]),
        &no_grace,
    );
    assert_eq!(p.actions[0].kind(), ActionKind::DeactivateAccount);
    let mut lock = policy();
    lock.step = ReversibleStep::Lock;
    let p = plan(&desired(vec![]), &ledger(vec![applied(&a, "alice")]), &lock);
    assert_eq!(p.actions[0].kind(), ActionKind::LockAccount);
}

#[test]
fn agents_already_gone_get_no_account_and_scheduled_ones_get_one() {
    let mut gone = want("g", "gone", "Gone");
    gone.state = AgentState::Departed {
        reason: "disabled".into(),
        since: None,
    };
    let mut leaving = want("l", "leaving", "Leaving");
    leaving.state = AgentState::Scheduled {
        at: NOW + DAY,
        reason: "expires".into(),
    };
    let p = plan(&desired(vec![gone, leaving]), &ledger(vec![]), &policy());
    assert_eq!(created(&p), vec![("l", "@leaving:example.org")]);
    assert_eq!(p.not_created[0].dn, "uid=g,ou=people,dc=example,dc=org");
    assert_eq!(p.pending[0].mxid, "@leaving:example.org");
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
        &policy(),
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

#[test]
fn managed_new_and_gone_agents_interleaved_by_id_are_each_found() {
    let all: Vec<DesiredAccount> = ["a", "b", "c", "d", "e", "f"]
        .iter()
        .map(|id| want(id, id, "X"))
        .collect();
    // Managed: a, c, d, f; in the directory: b (new), c, d (twice), e (new); a and f are gone.
    let managed = ledger(
        [0, 2, 3, 5]
            .iter()
            .map(|&i| applied(&all[i], &all[i].localpart))
            .collect(),
    );
    let mut wants = vec![
        all[4].clone(),
        all[3].clone(),
        all[1].clone(),
        all[2].clone(),
        all[3].clone(),
    ];
    let sorted = plan(&desired(wants.clone()), &managed, &policy());
    assert_eq!(
        created(&sorted),
        vec![("b", "@b:example.org"), ("e", "@e:example.org")]
    );
    assert_eq!(sorted.count(ActionKind::SuspendAccount), 2);
    assert_eq!(sorted.unchanged, 3);
    // Not sorted by id (never so from the mapping): the same plan.
    wants.swap(0, 4);
    let unsorted = Desired {
        accounts: wants,
        ..Desired::default()
    };
    assert_eq!(plan(&unsorted, &managed, &policy()), sorted);
}

#[test]
fn a_plan_of_changes_only_departs_whom_the_directory_says_left() {
    use crate::mapping::Coverage;
    let stays = want("u1", "anne", "Anne");
    let deleted = want("u2", "bruno", "Bruno");
    let in_grace = want("u3", "chloe", "Chloé");
    let grace_over = want("u4", "david", "David");
    let changed = want("u5", "eve", "Ève (DRH)");
    let departing = |a: &DesiredAccount, lp: &str, since: i64| AccountRecord {
        status: AccountStatus::Departing {
            since,
            reason: "userAccountControl disabled".into(),
            step: ReversibleStep::Suspend,
        },
        ..applied(a, lp)
    };
    let mut eve = applied(&changed, "eve");
    eve.display_name = "Ève".into();
    let view = ledger(vec![
        applied(&stays, "anne"),
        applied(&deleted, "bruno"),
        departing(&in_grace, "chloe", NOW - DAY),
        departing(&grace_over, "david", NOW - 8 * DAY),
        eve,
    ]);
    let mut changes = desired(vec![changed]);
    changes.coverage = Coverage::Changes {
        gone: [StableId("u2".into())].into(),
    };
    let p = plan(&changes, &view, &policy());
    let acted: Vec<(ActionKind, &str)> = p.actions.iter().map(|a| (a.kind(), a.mxid())).collect();
    assert_eq!(
        acted,
        vec![
            (ActionKind::UpdateAccount, "@eve:example.org"),
            (ActionKind::SuspendAccount, "@bruno:example.org"),
            (ActionKind::DeactivateAccount, "@david:example.org"),
        ]
    );
    assert_eq!(p.pending.len(), 1, "{:?}", p.pending);
    assert_eq!(p.pending[0].mxid, "@chloe:example.org");

    // The same ledger with every agent read: Anne stays, Ève changes, the unread leave.
    let complete = desired(vec![stays.clone(), want("u5", "eve", "Ève (DRH)")]);
    let p = plan(&complete, &view, &policy());
    assert_eq!(p.count(ActionKind::SuspendAccount), 1);
    assert_eq!(p.count(ActionKind::DeactivateAccount), 1);
}

/// A plan of `agents` against an empty ledger, with the homeserver holding `existing`.
fn plan_against(
    agents: Vec<DesiredAccount>,
    existing: &[(&str, ExistingAccount)],
    policy: &Policy,
    view: &LedgerView,
) -> Plan {
    let mut accounts = HomeserverAccounts::default();
    for (mxid, account) in existing {
        accounts.insert(mxid.to_string(), Some(account.clone()));
    }
    let homeserver = Homeserver {
        accounts,
        ..Homeserver::default()
    };
    plan_with_rooms(&desired(agents), view, policy, &homeserver)
}

fn account(emails: &[&str]) -> ExistingAccount {
    ExistingAccount {
        emails: emails.iter().map(|e| e.to_string()).collect(),
        ..ExistingAccount::default()
    }
}

#[test]
fn an_existing_account_is_adopted_only_when_it_provably_is_the_agents() {
    let elodie = || want("u1", "elodie.dupre", "Élodie Dupré");
    let mxid = "@elodie.dupre:example.org";
    // (adopt, the account's e-mails, deactivated, admin, adopted?, conflict?)
    let cases = [
        (
            Adopt::Matching,
            vec!["U1@example.org"],
            false,
            false,
            true,
            false,
        ),
        (
            Adopt::Matching,
            vec!["perso@gmail.com"],
            false,
            false,
            false,
            true,
        ),
        (Adopt::Matching, vec![], false, false, false, true),
        (Adopt::All, vec![], false, false, true, false),
        (
            Adopt::Never,
            vec!["u1@example.org"],
            false,
            false,
            false,
            true,
        ),
        (Adopt::All, vec!["u1@example.org"], true, false, false, true),
        (Adopt::All, vec![], false, true, false, true),
    ];
    for (i, (adopt, emails, deactivated, admin, adopted, conflict)) in cases.into_iter().enumerate()
    {
        let mut existing = account(&emails);
        existing.deactivated = deactivated;
        existing.admin = admin;
        let policy = Policy { adopt, ..policy() };
        let p = plan_against(
            vec![elodie()],
            &[(mxid, existing)],
            &policy,
            &ledger(vec![]),
        );
        assert_eq!(
            p.count(ActionKind::AdoptAccount) == 1,
            adopted,
            "case {i}: {p:#?}"
        );
        assert_eq!(p.conflicts.len() == 1, conflict, "case {i}: {p:#?}");
        assert_eq!(
            p.count(ActionKind::CreateAccount),
            0,
            "case {i}: never a plain create"
        );
        if conflict {
            assert_eq!(p.conflicts[0].mxid, mxid);
            assert!(p.conflicts[0].dn.starts_with("uid=u1,"), "case {i}");
        }
    }
}

#[test]
fn next_free_gives_the_agent_the_first_localpart_nobody_holds() {
    let policy = Policy {
        on_conflict: OnConflict::NextFree,
        ..policy()
    };
    let existing = [
        ("@elodie.dupre:example.org", account(&["someone@else.org"])),
        ("@elodie.dupre2:example.org", account(&[])),
    ];
    let p = plan_against(
        vec![want("u1", "elodie.dupre", "Élodie Dupré")],
        &existing,
        &policy,
        &ledger(vec![]),
    );
    assert_eq!(created(&p), vec![("u1", "@elodie.dupre3:example.org")]);
    assert!(p.conflicts.is_empty());
    assert!(
        p.actions[0]
            .reason()
            .contains("`elodie.dupre`, `elodie.dupre2` held"),
        "{}",
        p.actions[0].reason()
    );
}

#[test]
fn an_account_an_interrupted_run_made_for_the_agent_is_finished_not_adopted() {
    let mut view = ledger(vec![]);
    view.intents
        .insert("@elodie.dupre:example.org".into(), StableId("u1".into()));
    let existing = [("@elodie.dupre:example.org", account(&[]))];
    let policy = Policy {
        adopt: Adopt::Never,
        ..policy()
    };
    let p = plan_against(
        vec![want("u1", "elodie.dupre", "Élodie Dupré")],
        &existing,
        &policy,
        &view,
    );
    assert_eq!(p.count(ActionKind::CreateAccount), 1, "{p:#?}");
    assert!(matches!(
        p.actions[0],
        Action::CreateAccount { resumed: true, .. }
    ));
    // Another agent's intent vouches for nothing.
    view.intents
        .insert("@elodie.dupre:example.org".into(), StableId("u9".into()));
    let p = plan_against(
        vec![want("u1", "elodie.dupre", "Élodie Dupré")],
        &existing,
        &policy,
        &view,
    );
    assert_eq!(p.conflicts.len(), 1, "{p:#?}");
}

#[test]
fn a_refused_action_is_left_out_until_the_agent_changes_or_the_delay_passes() {
    let agent = want("u1", "elodie.dupre", "Élodie Dupré");
    let first = plan(&desired(vec![agent.clone()]), &ledger(vec![]), &policy());
    let refused_at = NOW - 3600;
    let mut view = ledger(vec![]);
    view.held.insert(
        agent.id.clone(),
        crate::ledger::HeldAgent {
            id: agent.id.clone(),
            mxid: first.actions[0].mxid().into(),
            dn: agent.dn.clone(),
            since: refused_at,
            at: refused_at,
            why: Held::Refused {
                action: "create_account".into(),
                wanted: wanted_digest(&first.actions[0]),
                error: "HTTP 400 M_INVALID_USERNAME".into(),
            },
        },
    );
    let held = plan(&desired(vec![agent.clone()]), &view, &policy());
    assert!(held.actions.is_empty(), "{held:#?}");
    assert_eq!(held.refused.len(), 1);
    assert_eq!(held.refused[0].retry_at, refused_at + DAY);

    let mut changed = agent.clone();
    changed.display_name = "Élodie Dupré-Martin".into();
    let replanned = plan(&desired(vec![changed]), &view, &policy());
    assert_eq!(
        replanned.count(ActionKind::CreateAccount),
        1,
        "a changed agent is tried again"
    );

    let later = Policy {
        now: refused_at + DAY,
        ..policy()
    };
    let retried = plan(&desired(vec![agent]), &view, &later);
    assert_eq!(
        retried.count(ActionKind::CreateAccount),
        1,
        "tried again after the delay"
    );
    assert!(retried.refused.is_empty());
}
