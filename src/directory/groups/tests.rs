use std::collections::HashMap;

use super::*;

fn group(dn: &str, members: &[&str]) -> Group {
    Group {
        dn: dn.into(),
        members: members.iter().map(|s| s.to_string()).collect(),
        member_uids: vec![],
        rid: None,
    }
}

fn key(s: &str) -> DnKey {
    DnKey::parse(s).unwrap()
}

fn dn(s: &str) -> Member {
    Member::Dn(key(s))
}

#[test]
fn members_written_with_escapes_resolve_to_the_entry_dn() {
    // slapd sends the entry as `cn=Martin\2C Jean,…`; groups may say `cn=Martin\, Jean,…`.
    let groups = Groups::new([group(
        "cn=team,ou=g",
        &[
            "cn=Martin\\, Jean,OU=P",
            "cn=Durand\\2c Paul, ou=p",
            "not a dn",
        ],
    )]);
    let r = groups.resolve(&key("CN=Team, OU=G")).unwrap();
    assert_eq!(
        r.members.keys().cloned().collect::<Vec<_>>(),
        vec![dn("cn=Durand\\, Paul,ou=p"), dn("cn=Martin\\2C Jean,ou=p")]
    );
    assert_eq!(
        r.malformed,
        vec!["group `cn=team,ou=g`: member `not a dn` is not a DN (no `=` after `not`), ignored"]
    );
}

#[test]
fn nested_groups_two_levels_with_a_cycle() {
    // all → dsi → dev → all (cycle); dsi also lists alice directly and through dev.
    let groups = Groups::new([
        group("cn=all,ou=g", &["cn=DSI,ou=g", "uid=zoe,ou=p"]),
        group("cn=dsi,ou=g", &["cn=dev,ou=g", "uid=alice,ou=p"]),
        group(
            "cn=dev,ou=g",
            &["uid=bob,ou=p", "uid=alice,ou=p", "cn=all,ou=g"],
        ),
    ]);
    let r = groups.resolve(&key("CN=All, OU=g")).unwrap();
    assert_eq!(
        r.members.keys().cloned().collect::<Vec<_>>(),
        vec![dn("uid=alice,ou=p"), dn("uid=bob,ou=p"), dn("uid=zoe,ou=p")]
    );
    assert_eq!(r.members[&dn("uid=zoe,ou=p")], vec!["cn=all,ou=g"]);
    assert_eq!(
        r.members[&dn("uid=alice,ou=p")],
        vec!["cn=all,ou=g", "cn=dsi,ou=g"],
        "shortest chain"
    );
    assert_eq!(
        r.members[&dn("uid=bob,ou=p")],
        vec!["cn=all,ou=g", "cn=dsi,ou=g", "cn=dev,ou=g"]
    );
    assert_eq!(
        r.cycles,
        vec!["cn=all,ou=g → cn=dsi,ou=g → cn=dev,ou=g → cn=all,ou=g"]
    );

    // From the middle of the cycle: everyone, no endless loop.
    let r = groups.resolve(&key("cn=dev,ou=g")).unwrap();
    assert_eq!(r.members.len(), 3);
    assert_eq!(r.cycles.len(), 1);
    assert!(groups.resolve(&key("cn=nope,ou=g")).is_none());
}

#[test]
fn a_group_that_lists_itself_and_diamonds_are_fine() {
    let groups = Groups::new([
        group("cn=a", &["cn=a", "cn=b", "cn=c"]),
        group("cn=b", &["cn=d"]),
        group("cn=c", &["cn=d"]),
        group("cn=d", &["uid=x"]),
    ]);
    let r = groups.resolve(&key("cn=a")).unwrap();
    assert_eq!(r.members.len(), 1);
    assert_eq!(r.cycles, vec!["cn=a → cn=a"], "a diamond is not a cycle");
}

#[test]
fn posix_groups_give_logins_and_unique_members_lose_their_uid() {
    let se = SearchEntry {
        dn: "cn=ops,ou=g".into(),
        attrs: HashMap::from([
            ("memberUid".to_string(), vec!["alice".to_string()]),
            (
                "uniqueMember".to_string(),
                vec![
                    "uid=bob,ou=p#'0101'B".to_string(),
                    "uid=c#d,ou=p".to_string(),
                ],
            ),
            ("cn".to_string(), vec!["ops".to_string()]),
        ]),
        bin_attrs: HashMap::new(),
    };
    let p = partial_group(se, &GroupQuery::default_member_attributes());
    assert_eq!(p.group.member_uids, vec!["alice"]);
    assert_eq!(p.group.members, vec!["uid=bob,ou=p", "uid=c#d,ou=p"]);
    assert!(p.pending.is_empty());
    let groups = Groups::new([p.group]);
    let r = groups.resolve(&key("cn=ops,ou=g")).unwrap();
    assert!(r.members.contains_key(&Member::Uid("alice".into())));
}

#[test]
fn range_names_parse() {
    assert_eq!(
        parse_range("member;range=0-1499"),
        Some(Range {
            attr: "member".into(),
            start: 0,
            end: Some(1499)
        })
    );
    assert_eq!(
        parse_range("member;Range=1500-*").map(|r| (r.start, r.end)),
        Some((1500, None))
    );
    assert_eq!(parse_range("member"), None);
    assert_eq!(parse_range("member;binary"), None);
    assert_eq!(parse_range("member;range=x-1"), None);
}

/// A fake AD: `total` values of `member`, `max` per slice; optionally misbehaving.
struct FakeAd {
    total: u64,
    max: u64,
    asked: Vec<String>,
    /// Stop answering (no attribute) from this start on.
    vanish_from: Option<u64>,
    /// Answer slices starting one value later than asked.
    skew: bool,
}

impl SliceReader for FakeAd {
    async fn read_slice(
        &mut self,
        _dn: &str,
        request: &str,
    ) -> Result<Vec<(String, Vec<String>)>, DirectoryError> {
        self.asked.push(request.to_string());
        let r = parse_range(request).unwrap();
        let start = r.start + u64::from(self.skew);
        if self.vanish_from.is_some_and(|v| start >= v) || start >= self.total {
            return Ok(vec![]);
        }
        // An explicit upper bound is honoured (as Samba does), within `max`.
        let asked = r.end.map_or(u64::MAX, |e| e + 1);
        let end = (start + self.max).min(asked).min(self.total) - 1;
        let last = end + 1 == self.total;
        let name = if last {
            format!("member;range={start}-*")
        } else {
            format!("member;range={start}-{end}")
        };
        let values = (start..=end).map(|i| format!("uid=u{i},ou=p")).collect();
        Ok(vec![(name, values)])
    }

    fn server(&self) -> String {
        "ldap://fake".into()
    }
}

fn fake(total: u64, max: u64) -> FakeAd {
    FakeAd {
        total,
        max,
        asked: vec![],
        vanish_from: None,
        skew: false,
    }
}

fn first(max: u64) -> Range {
    Range {
        attr: "member".into(),
        start: 0,
        end: Some(max - 1),
    }
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(f)
}

#[test]
fn ranged_members_are_followed_to_the_end() {
    let mut ad = fake(5000, 1500);
    let rest = block_on(follow_ranges(&mut ad, "cn=big", &first(1500), None)).unwrap();
    assert_eq!(rest.len(), 3500);
    assert_eq!(rest[0], "uid=u1500,ou=p");
    assert_eq!(rest[3499], "uid=u4999,ou=p");
    assert_eq!(
        ad.asked,
        vec![
            "member;range=1500-*",
            "member;range=3000-*",
            "member;range=4500-*"
        ]
    );
    // A first slice that is already the last asks nothing.
    let mut ad = fake(10, 1500);
    let whole = Range {
        attr: "member".into(),
        start: 0,
        end: None,
    };
    assert!(block_on(follow_ranges(&mut ad, "cn=small", &whole, None))
        .unwrap()
        .is_empty());
    assert!(ad.asked.is_empty());
}

#[test]
fn a_range_that_stops_short_is_an_incomplete_group() {
    let mut ad = fake(5000, 1500);
    ad.vanish_from = Some(3000);
    let err = block_on(follow_ranges(&mut ad, "cn=big", &first(1500), None)).unwrap_err();
    match &err {
        DirectoryError::IncompleteGroup { group, reason, .. } => {
            assert_eq!(group, "cn=big");
            assert!(reason.contains("member;range=3000-*"), "{reason}");
        }
        other => panic!("{other}"),
    }
    assert!(err.to_string().contains("could not all be read"), "{err}");

    let mut ad = fake(5000, 1500);
    ad.skew = true;
    let err = block_on(follow_ranges(&mut ad, "cn=big", &first(1500), None)).unwrap_err();
    assert!(err.to_string().contains("values from 1501"), "{err}");
}

#[test]
fn a_ranged_first_page_is_pending() {
    let se = SearchEntry {
        dn: "cn=big,ou=g".into(),
        attrs: HashMap::from([(
            "member;range=0-1".to_string(),
            vec!["uid=a".to_string(), "uid=b".to_string()],
        )]),
        bin_attrs: HashMap::new(),
    };
    let p = partial_group(se, &GroupQuery::default_member_attributes());
    assert_eq!(p.group.members.len(), 2);
    assert_eq!(p.pending.len(), 1);
    assert_eq!(p.pending[0].0.end, Some(1));
}

#[test]
fn explicit_slices_ask_for_each_range_and_end_at_the_star() {
    let mut ad = fake(1600, 1500);
    let rest = block_on(follow_ranges(&mut ad, "cn=big", &first(500), Some(500))).unwrap();
    assert_eq!(rest.len(), 1100);
    assert_eq!(rest[1099], "uid=u1599,ou=p");
    assert_eq!(
        ad.asked,
        vec![
            "member;range=500-999",
            "member;range=1000-1499",
            "member;range=1500-1999"
        ]
    );
}

#[test]
fn the_rid_is_the_last_part_of_a_sid_and_primary_members_resolve_through_nesting() {
    // S-1-5-21-1-2-3-513 (Domain Users).
    let mut sid = vec![1u8, 5, 0, 0, 0, 0, 0, 5];
    for sub in [21u32, 1, 2, 3, 513] {
        sid.extend(sub.to_le_bytes());
    }
    assert_eq!(sid_rid(&sid), Some(513));
    assert_eq!(sid_rid(&sid[..sid.len() - 1]), None, "truncated");
    assert_eq!(sid_rid(&[1, 0, 0, 0, 0, 0, 0, 5]), None, "no sub-authority");
    assert_eq!(sid_rid(&[]), None);

    let se = SearchEntry {
        dn: "cn=users,ou=g".into(),
        attrs: HashMap::new(),
        bin_attrs: HashMap::from([("objectSid".to_string(), vec![sid])]),
    };
    let p = partial_group(se, &GroupQuery::default_member_attributes());
    assert_eq!(p.group.rid, Some(513));

    let mut top = group("cn=top,ou=g", &["cn=users,ou=g"]);
    top.rid = Some(1200);
    let groups = Groups::new([top, p.group]);
    let r = groups.resolve(&key("cn=top,ou=g")).unwrap();
    assert_eq!(
        r.members.keys().cloned().collect::<Vec<_>>(),
        vec![Member::PrimaryGroup(513), Member::PrimaryGroup(1200)]
    );
    assert_eq!(
        r.members[&Member::PrimaryGroup(513)],
        vec!["cn=top,ou=g", "cn=users,ou=g"]
    );
    let only = groups.primary_only(&key("CN=Top,OU=g")).unwrap();
    assert_eq!(
        only.members.keys().cloned().collect::<Vec<_>>(),
        vec![Member::PrimaryGroup(1200)]
    );
}
