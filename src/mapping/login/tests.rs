use std::path::Path;

use super::*;
use crate::directory::Snapshot;
use crate::mapping::{map_snapshot, Rules};

const AGENT: &str = r#"
[agent]
filter = "(&(objectClass=inetOrgPerson)(uid=*))"
id_attribute = "entryUUID"
id_format = "text"
"#;

fn rules(localpart: &str, extra: &str) -> Result<Rules, crate::config::ConfigError> {
    Rules::parse(
        Path::new("mappings/test.toml"),
        &format!(
            "{AGENT}\n[account]\nlocalpart = \"{localpart}\"\ndisplay_name = \"{{cn}}\"\n\
             emails = [\"{{mail?}}\"]\n{extra}"
        ),
    )
}

fn ok(localpart: &str, extra: &str) -> Rules {
    rules(localpart, extra).unwrap_or_else(|e| panic!("{e}"))
}

/// (uid, givenName, sn) agents, their id their uid.
fn agents(people: &[(&str, &str, &str)]) -> Snapshot {
    let entries = people
        .iter()
        .map(|(uid, given, sn)| {
            Entry::with_attrs(
                &format!("uid={uid},ou=people,dc=example,dc=org"),
                &format!("id-{uid}"),
                &[
                    ("uid", uid),
                    ("givenName", given),
                    ("sn", sn),
                    ("cn", &format!("{given} {sn}")),
                ],
            )
        })
        .collect();
    Snapshot::complete(entries, vec![], "ldap://test")
}

fn warnings_of(rules: &Rules, snapshot: &Snapshot) -> Vec<String> {
    let desired = map_snapshot(snapshot, rules, 0);
    rules
        .login
        .warnings(desired.accounts.iter().map(|a| (a, a.localpart.as_str())))
}

#[test]
fn login_sections_parse() {
    let r = ok(
        "{uid|lower}",
        "[login]\npath = \"ldap3\"\nattribute = \"uid\"",
    );
    assert_eq!(
        r.login.path,
        LoginPath::Ldap3 {
            attribute: "uid".into()
        }
    );
    // `[login] attribute` is the login attribute `explain` uses too.
    assert_eq!(r.agent.login_attribute.as_deref(), Some("uid"));
    assert!(r.attributes().contains(&"uid".to_string()));

    // `[agent] login_attribute` is its default.
    let text = AGENT.replace(
        "id_format",
        "login_attribute = \"sAMAccountName\"\nid_format",
    );
    let r = Rules::parse(
        Path::new("m.toml"),
        &format!("{text}[account]\nlocalpart = \"{{sAMAccountName|lower}}\"\ndisplay_name = \"{{cn}}\"\n[login]\npath = \"ldap3\"\n"),
    )
    .unwrap();
    assert_eq!(
        r.login.path,
        LoginPath::Ldap3 {
            attribute: "sAMAccountName".into()
        }
    );

    let r = ok(
        "{givenName|localpart}.{sn|localpart}",
        "[login]\npath = \"sso\"\nprovider = \"oidc-agentconnect\"\nexternal_id = \"{employeeNumber}\"",
    );
    assert!(
        matches!(&r.login.path, LoginPath::Sso { provider, external_id: ExternalIdSource::Template(_) } if provider == "oidc-agentconnect")
    );
    assert!(r.attributes().contains(&"employeeNumber".to_string()));
    // The stable id itself: no template, and its canonical text (a GUID on AD).
    let r = ok(
        "{uid}",
        "[login]\npath = \"sso\"\nprovider = \"oidc-x\"\nexternal_id = \"{entryUUID}\"",
    );
    assert!(matches!(
        &r.login.path,
        LoginPath::Sso {
            external_id: ExternalIdSource::StableId,
            ..
        }
    ));

    assert_eq!(
        ok("{uid}", "[login]\npath = \"none\"").login.path,
        LoginPath::None
    );
    assert_eq!(ok("{uid}", "").login.path, LoginPath::Undeclared);
}

#[test]
fn login_errors_name_the_key_and_the_file() {
    let cases = [
        ("[login]\npath = \"ldap3\"", "login.attribute", "needs the attribute"),
        (
            "[login]\npath = \"ldap3\"\nattribute = \"u id\"",
            "login.attribute",
            "not an attribute name",
        ),
        (
            "[login]\npath = \"ldap3\"\nattribute = \"uid\"\nprovider = \"oidc-x\"",
            "login.provider",
            "only for path = \"sso\"",
        ),
        (
            "[login]\npath = \"sso\"\nexternal_id = \"{uid}\"",
            "login.provider",
            "auth provider id",
        ),
        (
            "[login]\npath = \"sso\"\nprovider = \"oidc-x\"",
            "login.external_id",
            "template of the id",
        ),
        (
            "[login]\npath = \"sso\"\nprovider = \"oidc-x\"\nexternal_id = \"{uid|shout}\"",
            "login.external_id",
            "unknown filter",
        ),
        (
            "[login]\npath = \"sso\"\nprovider = \"oidc-x\"\nexternal_id = \"{uid}\"\nattribute = \"uid\"",
            "login.attribute",
            "only for path = \"ldap3\"",
        ),
        (
            "[login]\npath = \"none\"\nattribute = \"uid\"",
            "login.attribute",
            "only for path = \"ldap3\"",
        ),
    ];
    for (section, key, words) in cases {
        let err = rules("{uid}", section).unwrap_err();
        assert_eq!(err.key.as_deref(), Some(key), "{section}: {err}");
        assert!(err.message.contains(words), "{section}: {err}");
        assert!(err.to_string().starts_with("mappings/test.toml: "), "{err}");
    }
    // Two login attributes that disagree.
    let text = AGENT.replace("id_format", "login_attribute = \"mail\"\nid_format");
    let err = Rules::parse(
        Path::new("m.toml"),
        &format!("{text}[account]\nlocalpart = \"{{uid}}\"\ndisplay_name = \"{{cn}}\"\n[login]\npath = \"ldap3\"\nattribute = \"uid\"\n"),
    )
    .unwrap_err();
    assert_eq!(err.key.as_deref(), Some("login.attribute"), "{err}");
    assert!(
        err.message.contains("agent.login_attribute `mail`"),
        "{err}"
    );
    // Not a path, not a key.
    for bad in [
        "[login]\npath = \"ldap\"",
        "[login]\npath = \"none\"\nmodule = \"x\"",
    ] {
        let err = rules("{uid}", bad).unwrap_err();
        assert!(
            err.message.contains("ldap") || err.message.contains("module"),
            "{err}"
        );
    }
}

#[test]
fn where_an_ldap3_login_lands() {
    let r = ok(
        "{uid|lower}",
        "[login]\npath = \"ldap3\"\nattribute = \"uid\"",
    );
    let desired = map_snapshot(
        &agents(&[
            ("CDurand", "Catherine", "Durand"),
            ("zoë.ørsted", "Zoë", "Ørsted"),
            ("a+b/c", "A", "B"),
        ]),
        &r,
        0,
    );
    let lands: Vec<(String, Option<String>)> = desired
        .accounts
        .iter()
        .map(|a| (a.login.clone().unwrap(), r.login.login_localpart(a)))
        .collect();
    assert_eq!(
        lands,
        [
            ("CDurand".to_string(), Some("cdurand".to_string())),
            ("a+b/c".to_string(), Some("a+b/c".to_string())),
            ("zoë.ørsted".to_string(), None),
        ]
    );
    // No login attribute value: nowhere. Under SSO and none: the provider decides.
    let mut nobody = desired.accounts[1].clone();
    nobody.login = None;
    assert_eq!(r.login.login_localpart(&nobody), None);
    for other in [
        "[login]\npath = \"sso\"\nprovider = \"oidc-x\"\nexternal_id = \"{uid}\"",
        "[login]\npath = \"none\"",
        "",
    ] {
        let r = ok("{uid|lower}", other);
        assert_eq!(
            r.login.login_localpart(&desired.accounts[1]),
            None,
            "{other}"
        );
    }
}

#[test]
fn the_default_preset_under_ldap3_is_summarised() {
    let r = ok(
        "{givenName|localpart}.{sn|localpart}",
        "[login]\npath = \"ldap3\"\nattribute = \"uid\"",
    );
    let people = [
        ("cdurand", "Catherine", "Durand"),
        ("jmartin", "Jean", "Martin"),
        ("jmartin2", "Jean", "Martin"),
        ("apoulain", "Amélie", "Poulain"),
        ("glebihan", "Gwen", "Le Bihan"),
    ];
    let w = warnings_of(&r, &agents(&people));
    assert_eq!(w.len(), 1, "{w:#?}");
    assert!(
        w[0].starts_with(
            "login (synapse-ldap3, `uid`): 5 agent(s) would log in to another account than theirs"
        ),
        "{}",
        w[0]
    );
    // Three examples, in stable-id order, naming the DN, the login and both accounts.
    assert!(
        w[0].contains(
            "uid=apoulain,ou=people,dc=example,dc=org: `apoulain` → @apoulain, not @amelie.poulain; \
             uid=cdurand,ou=people,dc=example,dc=org: `cdurand` → @cdurand, not @catherine.durand; "
        ),
        "{}",
        w[0]
    );
    assert!(
        w[0].contains("; and 2 more. Use localpart = \"{uid|lower}\""),
        "{}",
        w[0]
    );
}

#[test]
fn illegal_logins_homonyms_and_missing_logins_are_warned_about() {
    let r = ok(
        "{uid|lower}",
        "[login]\npath = \"ldap3\"\nattribute = \"uid\"",
    );
    let mut snapshot = agents(&[
        ("zoë.ørsted", "Zoë", "Ørsted"),
        ("jmartin", "Jean", "Martin"),
        ("ablanc", "Anne", "Blanc"),
    ]);
    // A homonym in another OU, its uid in capitals.
    snapshot.entries.push(Entry::with_attrs(
        "uid=JMartin,ou=finances,dc=example,dc=org",
        "id-jmartin-finances",
        &[("uid", "JMartin"), ("cn", "Jean Martin")],
    ));
    // No uid at all (a localpart from elsewhere).
    let r_cn = ok(
        "{cn|localpart}",
        "[login]\npath = \"ldap3\"\nattribute = \"uid\"",
    );
    snapshot.entries.push(Entry::with_attrs(
        "cn=Sans Login,ou=people,dc=example,dc=org",
        "id-sans",
        &[("cn", "Sans Login")],
    ));
    let w = warnings_of(&r, &snapshot);
    let find = |words: &str| {
        w.iter()
            .find(|l| l.contains(words))
            .unwrap_or_else(|| panic!("no `{words}` in {w:#?}"))
    };
    let illegal = find("cannot log in: their login lowercased is not a legal Matrix localpart");
    assert!(
        illegal.contains("uid=zoë.ørsted,ou=people,dc=example,dc=org: `zoë.ørsted`"),
        "{illegal}"
    );
    let homonyms = find("1 login(s) belong to several agents");
    assert!(
        homonyms.contains("by e-mail it logs each of them in to the account of the login"),
        "{homonyms}"
    );
    assert!(
        homonyms.contains(
            "`jmartin`: uid=jmartin,ou=people,dc=example,dc=org, uid=JMartin,ou=finances,dc=example,dc=org"
        ),
        "{homonyms}"
    );
    // `{uid|lower}` cannot render without a uid: that agent is skipped by the mapping; with a
    // localpart from `cn`, it is mapped and has no login.
    let w = warnings_of(&r_cn, &snapshot);
    let missing = w
        .iter()
        .find(|l| l.contains("have no `uid` and cannot log in"))
        .unwrap_or_else(|| panic!("{w:#?}"));
    assert!(
        missing.contains("cn=Sans Login,ou=people,dc=example,dc=org"),
        "{missing}"
    );
}

#[test]
fn capitals_in_a_login_are_warned_about_for_e_mail_logins() {
    let r = ok(
        "{uid|lower}",
        "[login]\npath = \"ldap3\"\nattribute = \"uid\"",
    );
    let mut snapshot = agents(&[("CDurand", "Catherine", "Durand")]);
    let with_mail = Entry::with_attrs(
        "uid=JMartin,ou=people,dc=example,dc=org",
        "id-jmartin",
        &[
            ("uid", "JMartin"),
            ("cn", "Jean Martin"),
            ("mail", "jean.martin@example.org"),
        ],
    );
    snapshot.entries.push(with_mail);
    let w = warnings_of(&r, &snapshot);
    assert_eq!(w.len(), 1, "{w:#?}");
    // Only the agent who has an e-mail to log in with.
    assert!(
        w[0].contains("1 agent(s) with capitals in their login cannot log in by e-mail")
            && w[0].ends_with(": uid=JMartin,ou=people,dc=example,dc=org: `JMartin`"),
        "{}",
        w[0]
    );
}

#[test]
fn agents_who_left_and_good_logins_give_no_warning() {
    let r = ok(
        "{uid|lower}",
        "[login]\npath = \"ldap3\"\nattribute = \"uid\"\n[departure]\ndisabled = [{ attribute = \"employeeType\", values = [\"departed\"] }]",
    );
    let mut snapshot = agents(&[
        ("CDurand", "Catherine", "Durand"),
        ("ablanc", "Anne", "Blanc"),
    ]);
    snapshot.entries.push(Entry::with_attrs(
        "uid=zoë,ou=people,dc=example,dc=org",
        "id-gone",
        &[("uid", "zoë"), ("cn", "Zoë"), ("employeeType", "departed")],
    ));
    assert_eq!(warnings_of(&r, &snapshot), Vec::<String>::new());
}

#[test]
fn sso_accounts_get_their_external_ids_or_a_warning() {
    let r = ok(
        "{givenName|localpart}.{sn|localpart}",
        "[login]\npath = \"sso\"\nprovider = \"oidc-agentconnect\"\nexternal_id = \"{employeeNumber}\"",
    );
    let mut snapshot = agents(&[("cdurand", "Catherine", "Durand")]);
    snapshot.entries.push(Entry::with_attrs(
        "uid=jmartin,ou=people,dc=example,dc=org",
        "id-jmartin",
        &[
            ("uid", "jmartin"),
            ("givenName", "Jean"),
            ("sn", "Martin"),
            ("cn", "Jean Martin"),
            ("employeeNumber", "E-42"),
        ],
    ));
    let desired = map_snapshot(&snapshot, &r, 0);
    let ids: Vec<&[ExternalId]> = desired
        .accounts
        .iter()
        .map(|a| a.external_ids.as_slice())
        .collect();
    assert_eq!(
        ids,
        [
            &[][..],
            &[ExternalId {
                auth_provider: "oidc-agentconnect".into(),
                external_id: "E-42".into()
            }]
        ]
    );
    let w = warnings_of(&r, &snapshot);
    assert_eq!(w.len(), 1, "{w:#?}");
    assert!(
        w[0].starts_with("login (SSO `oidc-agentconnect`): 1 agent(s) have no external id (`{employeeNumber}` gives nothing for them)"),
        "{}",
        w[0]
    );
    assert!(
        w[0].contains("uid=cdurand,ou=people,dc=example,dc=org"),
        "{}",
        w[0]
    );

    // The stable id as the external id: every agent has one.
    let r = ok(
        "{givenName|localpart}.{sn|localpart}",
        "[login]\npath = \"sso\"\nprovider = \"oidc-x\"\nexternal_id = \"{entryUUID}\"",
    );
    let desired = map_snapshot(&snapshot, &r, 0);
    assert_eq!(
        desired.accounts[0].external_ids[0].external_id,
        "id-cdurand"
    );
    assert_eq!(warnings_of(&r, &snapshot), Vec::<String>::new());
}

#[test]
fn the_module_filter_leaves_departed_agents_out() {
    let departure = DepartureRules {
        disabled: vec![
            crate::mapping::DisabledSignal {
                attribute: "employeeType".into(),
                bits: None,
                values: Some(vec!["departed".into(), "parti(e)*".into()]),
            },
            crate::mapping::DisabledSignal {
                attribute: "userAccountControl".into(),
                bits: Some(2),
                values: None,
            },
        ],
        ..DepartureRules::default()
    };
    assert_eq!(
        ldap3_filter("(objectClass=inetOrgPerson)", &departure),
        "(&(objectClass=inetOrgPerson)(!(employeeType=departed))(!(employeeType=parti\\28e\\29\\2a))\
         (!(userAccountControl:1.2.840.113556.1.4.804:=2)))"
    );
    assert!(ldap3::parse_filter(ldap3_filter("(uid=*)", &departure)).is_ok());
}

#[test]
fn synapse_localparts() {
    for good in ["cdurand", "jean.martin2", "a_b=c-d/e+f", "0x"] {
        assert!(is_synapse_localpart(good), "{good}");
    }
    // All digits are kept for guests, a leading `_` is refused: synapse-ldap3's registration
    // of such a login fails like that of `zoë`.
    for bad in [
        "", "CDurand", "zoë", "a b", "a@b", "a:b", "ørsted", "0", "_svc",
    ] {
        assert!(!is_synapse_localpart(bad), "{bad}");
    }
}
