use super::*;

fn key(text: &str) -> String {
    DnKey::parse(text)
        .unwrap_or_else(|e| panic!("{e}"))
        .as_str()
        .to_string()
}

#[test]
fn the_same_dn_written_many_ways_has_one_key() {
    // (written, written another way)
    let same = [
        // case of types and values
        (
            "CN=Jean,OU=People,DC=Example,DC=org",
            "cn=jean,ou=people,dc=example,dc=org",
        ),
        // spaces around `=`, `,` and `+`, leading and trailing, repeated inside a value
        (
            " cn = Jean  Martin , ou=people ",
            "cn=Jean Martin,ou=people",
        ),
        ("cn=a + uid=b,dc=x", "cn=a+uid=b,dc=x"),
        // `\,` and the hex pair `\2C` / `\2c`
        (
            "cn=Martin\\, Jean,ou=people",
            "cn=Martin\\2C Jean,ou=people",
        ),
        (
            "cn=Martin\\2c Jean,ou=people",
            "cn=Martin\\2C Jean,ou=people",
        ),
        ("cn=a\\+b,dc=x", "cn=a\\2Bb,dc=x"),
        ("cn=a\\\\b,dc=x", "cn=a\\5Cb,dc=x"),
        ("cn=\\\"q\\\",dc=x", "cn=\"q\",dc=x"),
        ("cn=a\\=b\\;c,dc=x", "cn=a=b;c,dc=x"),
        // escaped spaces are not significant either (caseIgnoreMatch)
        ("cn=\\ a\\ ,dc=x", "cn=a,dc=x"),
        // multi-valued RDNs in any order
        ("cn=a+uid=b,dc=x", "UID=B+CN=A,dc=x"),
        ("cn=a+uid=b+sn=c,dc=x", "sn=c+cn=a+uid=b,dc=x"),
        // UTF-8, as text or hex-escaped
        ("cn=Élodie Hervé,dc=x", "cn=\\C3\\89lodie herv\\c3\\a9,dc=x"),
        ("cn=ÉLODIE,dc=x", "cn=élodie,dc=x"),
        // a BER value as hex, any case
        ("cn=#04024869,dc=x", "CN=#04024869 ,dc=x"),
        ("cn=#0402ABCD,dc=x", "cn=#0402abcd,dc=x"),
        // OIDs kept, but their spacing is not
        ("2.5.4.3=a,dc=x", "2.5.4.3 = A,dc=x"),
    ];
    for (a, b) in same {
        assert_eq!(key(a), key(b), "`{a}` and `{b}`");
        assert_eq!(Dn::parse(a).unwrap(), Dn::parse(b).unwrap());
        assert!(same_dn(a, b), "`{a}` and `{b}`");
    }
}

#[test]
fn different_dns_have_different_keys() {
    let different = [
        ("cn=a,dc=x", "cn=b,dc=x"),
        ("cn=a,dc=x", "uid=a,dc=x"),
        // the comma is in the value, not a separator
        ("cn=Martin\\, Jean,dc=x", "cn=Martin,cn=Jean,dc=x"),
        ("cn=a\\+uid=b,dc=x", "cn=a+uid=b,dc=x"),
        ("cn=ab,dc=x", "cn=a b,dc=x"),
        // an escaped `#` is text, not a BER value
        ("cn=\\#0402,dc=x", "cn=#0402,dc=x"),
        // OIDs are not mapped to names
        ("2.5.4.3=a,dc=x", "cn=a,dc=x"),
        ("cn=a,dc=x", "cn=a,dc=x,dc=y"),
    ];
    for (a, b) in different {
        assert_ne!(key(a), key(b), "`{a}` and `{b}`");
        assert!(!same_dn(a, b), "`{a}` and `{b}`");
    }
}

#[test]
fn keys_are_plain_lowercase_text_with_separators_unambiguous() {
    let cases = [
        (
            "CN=Jean,OU=People,DC=example,DC=org",
            "cn=jean,ou=people,dc=example,dc=org",
        ),
        ("cn=Martin\\, Jean,dc=x", "cn=martin\\2c jean,dc=x"),
        ("uid=b+cn=a,dc=x", "cn=a+uid=b,dc=x"),
        ("cn=a\\+b\\\\c,dc=x", "cn=a\\2bb\\5cc,dc=x"),
        ("cn=\\#1,dc=x", "cn=\\231,dc=x"),
        ("cn=a\\00,dc=x", "cn=a\\00,dc=x"),
        ("cn=#0A0B,dc=x", "cn=#0a0b,dc=x"),
    ];
    for (text, want) in cases {
        assert_eq!(key(text), want, "`{text}`");
    }
}

#[test]
fn malformed_dns_are_errors_naming_the_text() {
    // (text, part of the reason)
    let bad = [
        ("", "empty"),
        ("   ", "empty"),
        ("departed", "no `=` after `departed`"),
        ("cn=a,,dc=x", "an RDN is empty"),
        ("cn=a,", "an RDN is empty"),
        (",cn=a", "an RDN is empty"),
        ("cn=a+,dc=x", "an RDN is empty"),
        ("=a,dc=x", "attribute type is missing"),
        ("c n=a", "no `=` after `c`"),
        ("1cn=a", "`1cn` is not an attribute type"),
        ("2.5..4=a", "`2.5..4` is not an attribute type"),
        ("cn=,dc=x", "a value is empty"),
        ("cn=  ,dc=x", "a value is empty"),
        ("cn=a\\", "lone `\\`"),
        ("cn=a\\zz,dc=x", "`\\zz` is neither"),
        ("cn=a\\+1\\é", "`\\é` is neither"),
        ("cn=\\C3,dc=x", "not UTF-8"),
        ("cn=#abc,dc=x", "hex digits"),
        ("cn=#,dc=x", "hex digits"),
        ("cn=#04 x,dc=x", "hex digits"),
    ];
    for (text, reason) in bad {
        let err = DnKey::parse(text).expect_err(text);
        assert_eq!(err.text, text);
        let shown = err.to_string();
        assert!(
            shown.starts_with(&format!("`{text}` is not a valid DN: ")) && shown.contains(reason),
            "`{text}`: {shown}"
        );
        assert!(Dn::parse(text).is_err(), "{text}");
    }
}

#[test]
fn under_a_base_at_rdn_boundaries_only() {
    // (dn, base, under)
    let cases = [
        ("uid=a,ou=People,dc=x", "OU=people, DC=X", true),
        ("ou=people,dc=x", "ou=people,dc=x", true),
        ("uid=a,ou=people,dc=x", "dc=x", true),
        ("uid=a,ou=notpeople,dc=x", "ou=people,dc=x", false),
        ("uid=a,ou=people,dc=x", "uid=a,ou=people,dc=x,dc=y", false),
        ("dc=x", "ou=people,dc=x", false),
        // the `,` escaped in a value is no boundary
        ("cn=a\\,ou=people,dc=x", "ou=people,dc=x", false),
        ("cn=a\\2Cou=people,dc=x", "ou=people,dc=x", false),
        ("cn=a,ou=b\\, c,dc=x", "ou=b\\2C c,dc=x", true),
        // a multi-valued RDN in the base, in another order
        ("cn=a,ou=p+l=x,dc=x", "l=X+ou=P,dc=x", true),
    ];
    for (dn, base, under) in cases {
        let (d, b) = (Dn::parse(dn).unwrap(), Dn::parse(base).unwrap());
        assert_eq!(d.is_under(&b), under, "`{dn}` under `{base}`");
    }
}

#[test]
fn text_a_server_would_never_send_is_equal_only_to_itself() {
    let odd = DnKey::lenient("not a dn");
    assert!(odd.is_malformed());
    assert_eq!(odd, DnKey::lenient("not a dn"));
    assert_ne!(odd, DnKey::lenient("Not a DN"));
    assert!(!odd.is_under(&DnKey::lenient("dc=x")));
    assert!(!DnKey::lenient("cn=a,dc=x").is_malformed());
    assert!(!DnKey::lenient("cn=a,dc=x").is_under(&odd));
}

#[test]
fn a_dn_shows_as_written_and_finds_its_key_in_maps() {
    let dn = Dn::parse("CN=Martin\\, Jean, OU=People").unwrap();
    assert_eq!(dn.to_string(), "CN=Martin\\, Jean, OU=People");
    assert_eq!(dn.as_str(), "CN=Martin\\, Jean, OU=People");
    let set: std::collections::HashSet<Dn> = [dn].into();
    assert!(set.contains(&DnKey::parse("cn=martin\\2c jean,ou=people").unwrap()));
    let mut sorted = [
        Dn::parse("cn=b,dc=x").unwrap(),
        Dn::parse("CN=A,dc=x").unwrap(),
        Dn::parse("cn=a,DC=x").unwrap(),
    ];
    sorted.sort();
    assert_eq!(sorted[0].as_str(), "CN=A,dc=x");
    assert_eq!(sorted[0], sorted[1]);
}
