//! AD ranged retrieval (`member;range=0-999`, then `member;range=1000-*`, …) against a stub
//! LDAP server: slapd never splits attributes, and Samba only when asked. The stub speaks just
//! enough LDAP (bind, search, unbind) and sends at most 1,000 values of `member` at once.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use ldap3::asn1::{parse_tag, write, ASNTag, Enumerated, Integer, StructureTag, TagClass, PL};
use matrix_ldap_sync::config::DirectoryConfig;
use matrix_ldap_sync::directory::{Directory, DirectoryError, DnKey, GroupQuery};
use matrix_ldap_sync::secret::Secret;

const MAX_VALUES: usize = 1000;
const MEMBERS: usize = 3500;

fn prim(class: TagClass, id: u64, bytes: &[u8]) -> StructureTag {
    StructureTag {
        class,
        id,
        payload: PL::P(bytes.to_vec()),
    }
}

fn cons(class: TagClass, id: u64, inner: Vec<StructureTag>) -> StructureTag {
    StructureTag {
        class,
        id,
        payload: PL::C(inner),
    }
}

fn text(s: &str) -> StructureTag {
    prim(TagClass::Universal, 4, s.as_bytes())
}

fn seq(inner: Vec<StructureTag>) -> StructureTag {
    cons(TagClass::Universal, 16, inner)
}

/// `resultCode 0, matchedDN "", diagnosticMessage ""` under an application tag.
fn done(app: u64) -> StructureTag {
    let code = Enumerated {
        id: 10,
        class: TagClass::Universal,
        inner: 0,
    }
    .into_structure();
    cons(TagClass::Application, app, vec![code, text(""), text("")])
}

fn entry(dn: &str, attrs: Vec<(String, Vec<String>)>) -> StructureTag {
    let attrs = attrs
        .into_iter()
        .map(|(name, values)| {
            let values = values.iter().map(|v| text(v)).collect();
            seq(vec![text(&name), cons(TagClass::Universal, 17, values)])
        })
        .collect();
    cons(TagClass::Application, 4, vec![text(dn), seq(attrs)])
}

fn primitive(tag: &StructureTag) -> Vec<u8> {
    match &tag.payload {
        PL::P(b) => b.clone(),
        PL::C(_) => vec![],
    }
}

fn children(tag: StructureTag) -> Vec<StructureTag> {
    match tag.payload {
        PL::C(c) => c,
        PL::P(_) => vec![],
    }
}

/// The group's members from `start`: (attribute name as AD sends it, values).
fn slice(dn: &str, start: usize) -> Vec<(String, Vec<String>)> {
    // The broken group stops answering after two slices.
    if dn.starts_with("cn=broken") && start >= 2 * MAX_VALUES {
        return vec![];
    }
    let end = (start + MAX_VALUES).min(MEMBERS);
    let name = if end == MEMBERS {
        format!("member;range={start}-*")
    } else {
        format!("member;range={start}-{}", end - 1)
    };
    let values = (start..end)
        .map(|i| format!("CN=user{i},OU=people,DC=ad"))
        .collect();
    vec![(name, values)]
}

/// What one search request asks: (base, scope, attributes).
fn answer(base: &str, scope: u8, attrs: &[String]) -> Vec<StructureTag> {
    let cn = if base.starts_with("ou=broken") {
        "broken"
    } else {
        "big"
    };
    match scope {
        // Subtree: the group with its first slice.
        2 => {
            let dn = format!("cn={cn},{base}");
            let mut a = slice(&dn, 0);
            a.push(("cn".into(), vec![cn.into()]));
            vec![entry(&dn, a)]
        }
        // Base: the slice asked for.
        _ => {
            let start = attrs
                .iter()
                .find_map(|a| a.split_once(";range=")?.1.split_once('-')?.0.parse().ok())
                .unwrap_or(0);
            vec![entry(base, slice(base, start))]
        }
    }
}

fn serve(mut stream: TcpStream, log: Arc<Mutex<Vec<String>>>) {
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let (used, msg) = match parse_tag(&buf) {
            Ok((rest, tag)) => (buf.len() - rest.len(), tag),
            Err(_) => match stream.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    continue;
                }
            },
        };
        buf.drain(..used);
        let mut parts = children(msg).into_iter();
        let id = primitive(&parts.next().unwrap())
            .iter()
            .fold(0i64, |n, b| (n << 8) | i64::from(*b));
        let op = parts.next().unwrap();
        let replies = match op.id {
            0 => vec![done(1)],
            3 => {
                let fields = children(op);
                let base = String::from_utf8(primitive(&fields[0])).unwrap();
                let scope = primitive(&fields[1])[0];
                let attrs: Vec<String> = children(fields[7].clone())
                    .iter()
                    .map(|a| String::from_utf8(primitive(a)).unwrap())
                    .collect();
                log.lock()
                    .unwrap()
                    .push(format!("{base} {scope} {}", attrs.join(",")));
                let mut r = answer(&base, scope, &attrs);
                r.push(done(5));
                r
            }
            _ => return,
        };
        for reply in replies {
            let msgid = Integer {
                id: 2,
                class: TagClass::Universal,
                inner: id,
            }
            .into_structure();
            let mut out = BytesMut::new();
            write::encode_into(&mut out, seq(vec![msgid, reply])).unwrap();
            if stream.write_all(&out).is_err() {
                return;
            }
        }
    }
}

/// Starts the stub; returns its URL and the log of searches (`base scope attrs`).
fn stub() -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("ldap://{}", listener.local_addr().unwrap());
    let log = Arc::new(Mutex::new(Vec::new()));
    let shared = log.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let log = shared.clone();
            std::thread::spawn(move || serve(stream, log));
        }
    });
    (url, log)
}

async fn read(
    url: &str,
    base: &str,
) -> Result<matrix_ldap_sync::directory::Groups, DirectoryError> {
    let cfg = DirectoryConfig {
        urls: vec![url.parse().unwrap()],
        starttls: false,
        ca_file: None,
        bind_dn: "CN=sync,DC=ad".into(),
        bind_password: Secret::new("secret".to_string()),
        base_dns: vec![base.into()],
        page_size: 100,
        timeout: Duration::from_secs(5),
        incremental: false,
        full_sync_every: Duration::from_secs(3600),
    };
    let query = GroupQuery {
        filter: GroupQuery::DEFAULT_FILTER.into(),
        bases: vec![],
        member_attributes: GroupQuery::default_member_attributes(),
        in_chain: vec![],
        range_size: None,
    };
    let mut dir = Directory::connect(&cfg).await?;
    let groups = dir
        .read_groups(&cfg.base_dns, &query, 100, cfg.timeout)
        .await;
    dir.close().await;
    groups
}

#[tokio::test]
async fn a_large_ad_group_is_read_slice_by_slice_to_the_end() {
    let (url, log) = stub();
    let groups = read(&url, "ou=ok,dc=ad").await.unwrap();
    let big = groups
        .get(&DnKey::parse("CN=big,OU=ok,DC=ad").unwrap())
        .unwrap();
    assert_eq!(big.members.len(), MEMBERS);
    assert_eq!(big.members[0], "CN=user0,OU=people,DC=ad");
    assert_eq!(
        big.members[MEMBERS - 1],
        format!("CN=user{},OU=people,DC=ad", MEMBERS - 1)
    );
    // The root DSE read once connected (what kind of server it is) aside.
    let searches: Vec<String> = log
        .lock()
        .unwrap()
        .iter()
        .filter(|s| !s.starts_with(' '))
        .cloned()
        .collect();
    assert_eq!(
        searches[1..],
        [
            "cn=big,ou=ok,dc=ad 0 member;range=1000-*",
            "cn=big,ou=ok,dc=ad 0 member;range=2000-*",
            "cn=big,ou=ok,dc=ad 0 member;range=3000-*",
        ],
        "{searches:?}"
    );
}

#[tokio::test]
async fn a_large_ad_group_cut_short_is_an_incomplete_snapshot() {
    let (url, _) = stub();
    let err = read(&url, "ou=broken,dc=ad").await.unwrap_err();
    assert!(
        matches!(&err, DirectoryError::IncompleteGroup { group, .. } if group == "cn=broken,ou=broken,dc=ad"),
        "{err}"
    );
    let text = err.to_string();
    assert!(text.contains("member;range=2000-*"), "{text}");
    assert!(text.contains(&url), "{text}");
}
