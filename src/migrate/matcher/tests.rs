use super::*;
use crate::ledger::Origin;

fn account(key: &str, localpart: &str, dn: &str, emails: &[&str]) -> (StableId, AccountRecord) {
    let record = AccountRecord {
        id: StableId(key.into()),
        mxid: format!("@{localpart}:x"),
        localpart: localpart.into(),
        dn: dn.into(),
        display_name: localpart.into(),
        emails: emails.iter().map(|e| e.to_string()).collect(),
        external_ids: vec![],
        origin: Origin::Created,
        created_at: 1,
        updated_at: 1,
        status: AccountStatus::Active,
    };
    (record.id.clone(), record)
}

fn agent(id: &str, dn: &str, old: Option<&str>, emails: &[&str]) -> Agent {
    Agent {
        id: StableId(id.into()),
        dn: dn.into(),
        old_id: old.map(|o| StableId(o.into())),
        emails: emails.iter().map(|e| e.to_string()).collect(),
    }
}

/// (from, to, by) of each match.
fn pairs(m: &Matching) -> Vec<(&str, &str, By)> {
    m.matched
        .iter()
        .map(|x| (x.from.0.as_str(), x.to.0.as_str(), x.by))
        .collect()
}

fn new_ids(m: &Matching) -> Vec<&str> {
    m.new_agents.iter().map(|a| a.id.0.as_str()).collect()
}

#[test]
fn each_account_finds_its_agent_by_the_old_id_then_dn_then_email() {
    let accounts: BTreeMap<_, _> = [
        account("uuid-1", "ann", "uid=ann,ou=people,dc=x", &["ann@x.org"]),
        account("uuid-2", "bob", "uid=bob,ou=people,dc=x", &["bob@x.org"]),
        account("uuid-3", "cid", "uid=cid,ou=old,dc=x", &["Cid@X.org"]),
        account("same", "dan", "uid=dan,ou=people,dc=x", &[]),
    ]
    .into();
    let agents = [
        // Its entry still has the old attribute.
        agent("ann", "uid=ann,ou=moved,dc=x", Some("uuid-1"), &[]),
        // No old attribute: the same DN, spelled otherwise.
        agent("bob", "UID=Bob, OU=People,DC=x", None, &["other@x.org"]),
        // No old attribute, another DN: the e-mail, in any case.
        agent("cid", "uid=cid,ou=new,dc=x", None, &["cid@x.org"]),
        // Already keyed by its id.
        agent("same", "uid=dan,ou=people,dc=x", Some("whatever"), &[]),
        agent("eve", "uid=eve,ou=people,dc=x", None, &["eve@x.org"]),
    ];
    let m = match_accounts(&accounts, &agents, "entryUUID");
    assert_eq!(
        pairs(&m),
        [
            ("same", "same", By::SameId),
            ("uuid-1", "ann", By::OldId),
            ("uuid-2", "bob", By::Dn),
            ("uuid-3", "cid", By::Email),
        ]
    );
    assert_eq!(m.matched[3].via, "cid@x.org");
    assert_eq!(m.matched[1].via, "uuid-1");
    assert_eq!(m.rekeys().count(), 3);
    assert!(m.ambiguous.is_empty() && m.unmatched.is_empty());
    assert_eq!(new_ids(&m), ["eve"]);
}

#[test]
fn an_agent_with_the_old_attribute_is_never_matched_by_what_a_former_holder_shared() {
    // `uid=ann` was reused: the new Ann's entry has its own entryUUID.
    let accounts: BTreeMap<_, _> = [account(
        "uuid-old",
        "ann",
        "uid=ann,ou=people,dc=x",
        &["ann@x.org"],
    )]
    .into();
    let agents = [agent(
        "ann",
        "uid=ann,ou=people,dc=x",
        Some("uuid-new"),
        &["ann@x.org"],
    )];
    let m = match_accounts(&accounts, &agents, "entryUUID");
    assert!(m.matched.is_empty(), "{m:?}");
    assert_eq!(m.unmatched.len(), 1);
    assert_eq!(
        m.unmatched[0].reason,
        "no agent has entryUUID uuid-old, and none without entryUUID has DN uid=ann,ou=people,dc=x or e-mail ann@x.org"
    );
    assert!(!m.unmatched[0].deactivated);
    assert_eq!(new_ids(&m), ["ann"]);
}

#[test]
fn ties_other_than_one_to_one_are_listed_never_settled() {
    let accounts: BTreeMap<_, _> = [
        // Two accounts last seen with the same DN.
        account("u1", "ann", "uid=ann,dc=x", &[]),
        account("u2", "ann2", "uid=ann,dc=x", &[]),
        // One account whose two addresses are two agents'.
        account(
            "u3",
            "bob",
            "uid=bob,ou=gone,dc=x",
            &["b1@x.org", "b2@x.org"],
        ),
        // Two agents with its old id.
        account("u4", "cid", "uid=cid,dc=x", &[]),
        account("u5", "dan", "uid=dan,dc=x", &[]),
    ]
    .into();
    let agents = [
        agent("ann", "uid=ann,dc=x", None, &[]),
        agent("bob1", "uid=bob1,dc=x", None, &["b1@x.org"]),
        agent("bob2", "uid=bob2,dc=x", None, &["B2@x.org"]),
        agent("cid-a", "uid=cid,ou=a,dc=x", Some("u4"), &[]),
        agent("cid-b", "uid=cid,ou=b,dc=x", Some("u4"), &[]),
        agent("dan", "uid=dan,dc=x", Some("u5"), &[]),
    ];
    let m = match_accounts(&accounts, &agents, "entryUUID");
    assert_eq!(pairs(&m), [("u5", "dan", By::OldId)]);
    let groups: Vec<(By, Vec<&str>, Vec<&str>)> = m
        .ambiguous
        .iter()
        .map(|a| {
            (
                a.by,
                a.accounts.iter().map(|(k, _)| k.0.as_str()).collect(),
                a.agents.iter().map(|(k, _)| k.0.as_str()).collect(),
            )
        })
        .collect();
    assert_eq!(
        groups,
        [
            (By::OldId, vec!["u4"], vec!["cid-a", "cid-b"]),
            (By::Dn, vec!["u1", "u2"], vec!["ann"]),
            (By::Email, vec!["u3"], vec!["bob1", "bob2"]),
        ]
    );
    assert_eq!(
        m.ambiguous[1].reason,
        "2 account(s) (@ann:x, @ann2:x) and 1 agent(s) (uid=ann,dc=x) are tied by DN, not one to one"
    );
    assert_eq!(
        m.ambiguous[0].reason,
        "1 account(s) (@cid:x) and 2 agent(s) (uid=cid,ou=a,dc=x, uid=cid,ou=b,dc=x) are tied by entryUUID, not one to one"
    );
    assert!(m.unmatched.is_empty() && m.new_agents.is_empty(), "{m:?}");
}

#[test]
fn a_second_account_already_made_for_an_agent_is_listed_as_such() {
    // A run before the brake held changed scopes created @ann2 under the new id.
    let accounts: BTreeMap<_, _> = [
        account("uuid-1", "ann", "uid=a1,dc=x", &[]),
        account("a1", "ann2", "uid=a1,dc=x", &[]),
    ]
    .into();
    let agents = [agent("a1", "uid=a1,dc=x", Some("uuid-1"), &[])];
    let m = match_accounts(&accounts, &agents, "entryUUID");
    assert_eq!(pairs(&m), [("a1", "a1", By::SameId)]);
    assert_eq!(m.rekeys().count(), 0);
    assert_eq!(m.ambiguous.len(), 1);
    assert_eq!(
        m.ambiguous[0].reason,
        "@ann:x matches uid=a1,dc=x by entryUUID, but that agent is already @ann2:x's (by the same id): \
         two accounts for one agent, settle it by hand"
    );
}

#[test]
fn a_deactivated_account_without_its_agent_is_said_so() {
    let (key, mut record) = account("u1", "ann", "uid=ann,dc=x", &[]);
    record.status = AccountStatus::Deactivated {
        at: 1,
        reason: "left".into(),
    };
    let m = match_accounts(&[(key, record)].into(), &[], "objectGUID");
    assert!(m.unmatched[0].deactivated);
    assert_eq!(
        m.unmatched[0].reason,
        "no agent has objectGUID u1, and none without objectGUID has DN uid=ann,dc=x"
    );
}
