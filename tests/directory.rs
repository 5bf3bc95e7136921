//! The directory reader against a real slapd (see `tests/common`, `scripts/install-testbed.sh`).
//!
//! Each test works in its own OU of the shared slapd, or in a slapd of its own when it stops
//! or pauses the server.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

// The harness re-exports `Synapse`, which these tests do not use.
#[allow(unused_imports)]
mod common;

use std::time::{Duration, Instant};

use common::pki::{base64, TestPki};
use common::Slapd;
use matrix_ldap_sync::config::DirectoryConfig;
use matrix_ldap_sync::directory::{
    read_snapshot, AgentQuery, Directory, DirectoryError, IdFormat, ServerKind, Snapshot,
};
use matrix_ldap_sync::secret::Secret;
use url::Url;

const TIMEOUT: Duration = Duration::from_secs(2);

/// Full reads only: these tests are about the read itself.
fn config(slapd: &Slapd, base: &str) -> DirectoryConfig {
    DirectoryConfig {
        incremental: false,
        ..slapd.directory_config(&[base], TIMEOUT)
    }
}

fn people() -> AgentQuery {
    AgentQuery {
        filter: "(objectClass=inetOrgPerson)".into(),
        attributes: vec![
            "uid".into(),
            "cn".into(),
            "sn".into(),
            "displayName".into(),
            "mail".into(),
            "jpegPhoto".into(),
            "employeeType".into(),
        ],
        id_attribute: "entryUUID".into(),
        id_format: IdFormat::Text,
    }
}

/// Adds `n` people `<prefix>0..` under `ou`; returns their DNs.
fn add_people(slapd: &Slapd, ou: &str, prefix: &str, n: usize, extra: &str) -> Vec<String> {
    let mut ldif = String::new();
    let mut dns = Vec::new();
    for i in 0..n {
        let dn = format!("uid={prefix}{i},{ou}");
        ldif.push_str(&format!(
            "dn: {dn}\nobjectClass: inetOrgPerson\nuid: {prefix}{i}\ncn: Person {i}\nsn: {i}\n{extra}\n"
        ));
        dns.push(dn);
    }
    slapd.add_ldif(&ldif);
    dns
}

fn sorted_dns(s: &Snapshot) -> Vec<String> {
    let mut dns: Vec<String> = s.entries.iter().map(|e| e.dn.clone()).collect();
    dns.sort();
    dns
}

#[tokio::test]
async fn paged_read_returns_every_entry_across_pages() {
    let slapd = Slapd::shared();
    let ou = slapd.new_ou("paged");
    let mut dns = add_people(slapd, &ou, "p", 7, "");
    dns.sort();

    let cfg = config(slapd, &ou);
    let mut dir = Directory::connect(&cfg).await.unwrap();
    let snap = dir
        .read_snapshot(&cfg.base_dns, &people(), 2, TIMEOUT)
        .await
        .unwrap();
    dir.close().await;

    assert_eq!(sorted_dns(&snap), dns);
    assert!(snap.skipped.is_empty(), "{:?}", snap.skipped);
    assert_eq!(snap.server, slapd.url);
    let mut ids: Vec<&str> = snap.entries.iter().map(|e| e.id.0.as_str()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 7, "stable ids are distinct");
    assert!(ids.iter().all(|id| id.len() == 36), "{ids:?}");
    // The id attribute is requested even when not in the query's list, under a lowercase name.
    let e = &snap.entries[0];
    assert_eq!(e.first("entryUUID"), Some(e.id.0.as_str()));

    // Page size 1 and a page size larger than the result give the same entries.
    for page_size in [1, 1000] {
        let mut cfg = config(slapd, &ou);
        cfg.page_size = page_size;
        let snap = read_snapshot(&cfg, &people()).await.unwrap();
        assert_eq!(sorted_dns(&snap), dns, "page size {page_size}");
    }
}

#[tokio::test]
async fn accents_multi_valued_and_binary_attributes() {
    let slapd = Slapd::shared();
    let ou = slapd.new_ou("accents");
    // "Zoë Ñúñez-Ørsted 日本" base64-encoded as LDIF requires for non-ASCII values,
    // and a JPEG header (not UTF-8).
    let display = "Zoë Ñúñez-Ørsted 日本";
    slapd.add_ldif(&format!(
        "dn: uid=zoe,{ou}\nobjectClass: inetOrgPerson\nuid: zoe\ncn:: {}\nsn:: {}\n\
         displayName:: {}\nmail: zoe@example.org\nmail: z.nunez@example.org\n\
         jpegPhoto:: /9j/4AAQSkZJRgABAQ==\n",
        base64(display),
        base64("Ñúñez-Ørsted"),
        base64(display),
    ));

    let snap = read_snapshot(&config(slapd, &ou), &people()).await.unwrap();
    assert_eq!(snap.entries.len(), 1);
    let e = &snap.entries[0];
    assert_eq!(e.dn, format!("uid=zoe,{ou}"));
    assert_eq!(e.first("displayname"), Some(display));
    assert_eq!(e.first("SN"), Some("Ñúñez-Ørsted"));
    assert_eq!(
        e.values("mail"),
        [
            "zoe@example.org".to_string(),
            "z.nunez@example.org".to_string()
        ]
    );
    assert!(
        e.attrs.keys().all(|k| k == &k.to_lowercase()),
        "{:?}",
        e.attrs.keys()
    );
    assert_eq!(
        e.binary.get("jpegphoto").map(|v| v[0][..4].to_vec()),
        Some(vec![0xff, 0xd8, 0xff, 0xe0])
    );
}

#[tokio::test]
async fn entry_filter_is_respected() {
    let slapd = Slapd::shared();
    let ou = slapd.new_ou("filter");
    let mut agents = add_people(slapd, &ou, "agent", 3, "employeeType: agent\n");
    add_people(slapd, &ou, "contractor", 2, "employeeType: contractor\n");
    agents.sort();

    let mut query = people();
    query.filter = "(&(objectClass=inetOrgPerson)(employeeType=agent))".into();
    let snap = read_snapshot(&config(slapd, &ou), &query).await.unwrap();
    assert_eq!(sorted_dns(&snap), agents);

    query.filter = "(&(objectClass=inetOrgPerson)(employeeType=agent)".into();
    let err = read_snapshot(&config(slapd, &ou), &query)
        .await
        .unwrap_err();
    assert!(
        matches!(err, DirectoryError::InvalidFilter { .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn entries_without_an_id_are_skipped_not_fatal() {
    let slapd = Slapd::shared();
    let ou = slapd.new_ou("noid");
    add_people(slapd, &ou, "numbered", 3, "employeeNumber: 42\n");
    add_people(slapd, &ou, "unnumbered", 1, "");

    let mut query = people();
    query.id_attribute = "EmployeeNumber".into();
    let err_or_snap = read_snapshot(&config(slapd, &ou), &query).await.unwrap();
    // Three entries share the same id 42: one kept, two skipped; one has no id at all.
    assert_eq!(err_or_snap.entries.len(), 1);
    assert_eq!(err_or_snap.entries[0].id.0, "42");
    assert_eq!(err_or_snap.skipped.len(), 3, "{:?}", err_or_snap.skipped);
    let no_id = err_or_snap
        .skipped
        .iter()
        .find(|s| s.dn.starts_with("uid=unnumbered0,"))
        .expect("the entry without id is reported");
    assert!(no_id.reason.contains("EmployeeNumber"), "{}", no_id.reason);
    assert!(err_or_snap
        .skipped
        .iter()
        .filter(|s| s.dn.starts_with("uid=numbered"))
        .all(|s| s.reason.contains("same stable id 42")));
}

#[tokio::test]
async fn overlapping_bases_give_each_entry_once() {
    let slapd = Slapd::shared();
    let ou = slapd.new_ou("overlap");
    add_people(slapd, &ou, "o", 3, "");
    let mut cfg = config(slapd, &ou);
    cfg.base_dns = vec![ou.clone(), format!("uid=o1,{ou}"), ou.to_uppercase()];
    let snap = read_snapshot(&cfg, &people()).await.unwrap();
    assert_eq!(snap.entries.len(), 3);
    assert!(snap.skipped.is_empty(), "{:?}", snap.skipped);
}

#[tokio::test]
async fn size_limit_is_an_error_not_a_short_snapshot() {
    let slapd = Slapd::shared();
    let ou = slapd.new_ou("limited");
    add_people(slapd, &ou, "l", 5, "");
    for page_size in [2, 100] {
        let mut cfg = config(slapd, &ou);
        cfg.bind_dn = slapd.limited_dn.clone();
        cfg.bind_password = Secret::new(slapd.limited_password.clone());
        cfg.page_size = page_size;
        let err = read_snapshot(&cfg, &people()).await.unwrap_err();
        match &err {
            DirectoryError::Search {
                code, base, kind, ..
            } => {
                assert_eq!(*code, 4, "{err}");
                assert_eq!(base, &ou);
                assert_eq!(*kind, ServerKind::OpenLdap, "read from slapd's root DSE");
            }
            other => panic!("page size {page_size}: expected a search error, got {other:?}"),
        }
        let msg = err.to_string();
        eprintln!("error shown: {msg}");
        assert!(msg.contains("sizeLimitExceeded"), "{msg}");
        // OpenLDAP's advice only: it limits the whole paged search.
        assert!(msg.contains("size=unlimited"), "{msg}");
        assert!(!msg.contains("nsSizeLimit"), "{msg}");
    }
}

#[tokio::test]
async fn wrong_password_is_invalid_credentials() {
    let slapd = Slapd::shared();
    let mut cfg = config(slapd, &slapd.base_dn);
    cfg.bind_password = Secret::new("not-the-password");
    let err = Directory::connect(&cfg).await.unwrap_err();
    assert!(
        matches!(err, DirectoryError::Bind { code: 49, .. }),
        "{err:?}"
    );
    let msg = err.to_string();
    eprintln!("error shown: {msg}");
    assert!(
        msg.contains(&format!("invalid credentials for {}", slapd.sync_dn)),
        "{msg}"
    );
    assert!(msg.contains(&slapd.url), "{msg}");
    for shown in [msg, format!("{err:?}")] {
        assert!(!shown.contains("not-the-password"), "{shown}");
    }
}

#[tokio::test]
async fn wrong_base_dn_names_the_base() {
    let slapd = Slapd::shared();
    let ou = slapd.new_ou("wrongbase");
    add_people(slapd, &ou, "w", 1, "");
    let missing = format!("ou=does-not-exist,{}", slapd.base_dn);
    let mut cfg = config(slapd, &ou);
    // The good base first: the error after it must still win, no partial snapshot.
    cfg.base_dns = vec![ou.clone(), missing.clone()];
    let err = read_snapshot(&cfg, &people()).await.unwrap_err();
    assert!(
        matches!(&err, DirectoryError::Search { code: 32, base, .. } if base == &missing),
        "{err:?}"
    );
    let msg = err.to_string();
    eprintln!("error shown: {msg}");
    assert!(
        msg.contains(&format!("`{missing}` does not exist")),
        "{msg}"
    );
}

#[tokio::test]
async fn failover_to_the_next_url() {
    let slapd = Slapd::shared();
    let ou = slapd.new_ou("failover");
    add_people(slapd, &ou, "f", 2, "");
    let dead = format!("ldap://127.0.0.1:{}", common::free_port());
    let mut cfg = config(slapd, &ou);
    cfg.urls = vec![Url::parse(&dead).unwrap(), Url::parse(&slapd.url).unwrap()];

    let mut dir = Directory::connect(&cfg).await.unwrap();
    assert_eq!(dir.server(), slapd.url);
    let snap = dir
        .read_snapshot(&cfg.base_dns, &people(), 2, TIMEOUT)
        .await
        .unwrap();
    assert_eq!(snap.entries.len(), 2);
    assert_eq!(snap.server, slapd.url);
    dir.close().await;

    // All dead: one error naming each URL.
    let dead2 = format!("ldap://127.0.0.1:{}", common::free_port());
    cfg.urls = vec![Url::parse(&dead).unwrap(), Url::parse(&dead2).unwrap()];
    let err = Directory::connect(&cfg).await.unwrap_err();
    let msg = err.to_string();
    eprintln!("error shown: {msg}");
    assert!(
        matches!(err, DirectoryError::AllServersFailed { ref failures } if failures.len() == 2),
        "{err:?}"
    );
    assert!(msg.contains(&dead) && msg.contains(&dead2), "{msg}");
}

#[tokio::test]
async fn a_wrong_password_does_not_fail_over() {
    let slapd = Slapd::shared();
    let mut cfg = config(slapd, &slapd.base_dn);
    cfg.urls = vec![
        Url::parse(&slapd.url).unwrap(),
        Url::parse(&format!("ldap://127.0.0.1:{}", common::free_port())).unwrap(),
    ];
    cfg.bind_password = Secret::new("wrong");
    let err = Directory::connect(&cfg).await.unwrap_err();
    assert!(
        matches!(err, DirectoryError::Bind { code: 49, .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_paused_server_times_out() {
    let slapd = Slapd::start();
    let ou = slapd.new_ou("paused");
    add_people(&slapd, &ou, "z", 5, "");
    let cfg = config(&slapd, &ou);

    // Paused between pages of an open connection: the read times out.
    let mut dir = Directory::connect(&cfg).await.unwrap();
    slapd.pause();
    let started = Instant::now();
    let err = dir
        .read_snapshot(&cfg.base_dns, &people(), 2, TIMEOUT)
        .await
        .unwrap_err();
    let took = started.elapsed();
    assert!(matches!(err, DirectoryError::Timeout { .. }), "{err:?}");
    assert!(took >= TIMEOUT && took < TIMEOUT * 2, "took {took:?}");
    assert!(
        err.to_string().contains("did not answer within 2s"),
        "{err}"
    );
    drop(dir);

    // Paused before connecting: TCP connects (the kernel accepts), the bind never answers.
    let started = Instant::now();
    let err = read_snapshot(&cfg, &people()).await.unwrap_err();
    let took = started.elapsed();
    assert!(
        matches!(&err, DirectoryError::Timeout { operation, .. } if operation.contains("binding")),
        "{err:?}"
    );
    assert!(took < TIMEOUT * 2, "took {took:?}");

    slapd.resume();
    // Back to normal once resumed.
    let snap = read_snapshot(&cfg, &people()).await.unwrap();
    assert_eq!(snap.entries.len(), 5);
}

#[tokio::test]
async fn a_stopped_server_is_a_connect_error() {
    let slapd = Slapd::start();
    let ou = slapd.new_ou("stopped");
    add_people(&slapd, &ou, "s", 3, "");
    let cfg = config(&slapd, &ou);

    // Stopped after the bind: the read fails, it does not return an empty list.
    let mut dir = Directory::connect(&cfg).await.unwrap();
    slapd.stop();
    let err = dir
        .read_snapshot(&cfg.base_dns, &people(), 2, TIMEOUT)
        .await
        .unwrap_err();
    assert!(
        matches!(err, DirectoryError::ConnectionLost { .. }),
        "{err:?}"
    );
    drop(dir);

    let err = read_snapshot(&cfg, &people()).await.unwrap_err();
    assert!(matches!(err, DirectoryError::Connect { .. }), "{err:?}");
    let msg = err.to_string();
    eprintln!("error shown: {msg}");
    assert!(msg.contains(&slapd.url), "{msg}");
    assert!(msg.to_lowercase().contains("refused"), "{msg}");
}

/// Gives a running slapd a certificate (cn=config at run time), so StartTLS works.
fn enable_tls(slapd: &Slapd, pki: &TestPki) {
    let ldif = format!(
        "dn: cn=config\nchangetype: modify\nreplace: olcTLSCACertificateFile\nolcTLSCACertificateFile: {}\n-\n\
         replace: olcTLSCertificateFile\nolcTLSCertificateFile: {}\n-\n\
         replace: olcTLSCertificateKeyFile\nolcTLSCertificateKeyFile: {}\n",
        pki.ca.display(),
        pki.cert.display(),
        pki.key.display()
    );
    common::process::run(
        &[
            "ldapmodify",
            "-x",
            "-H",
            &slapd.url,
            "-D",
            "cn=admin,cn=config",
            "-w",
            "admin-secret",
        ],
        Some(&ldif),
    )
    .unwrap();
}

#[tokio::test]
async fn starttls_with_a_ca_file_and_plain_tls_errors() {
    let slapd = Slapd::start();
    let pki = TestPki::new(slapd.dir.path(), "IP:127.0.0.1");
    enable_tls(&slapd, &pki);
    let ou = slapd.new_ou("tls");
    add_people(&slapd, &ou, "t", 3, "");
    let mut cfg = config(&slapd, &ou);
    cfg.starttls = true;
    cfg.ca_file = Some(pki.ca.clone());

    // Trusted CA, certificate names 127.0.0.1: works.
    let snap = read_snapshot(&cfg, &people()).await.unwrap();
    assert_eq!(snap.entries.len(), 3);

    // Same server by a name the certificate does not carry.
    let mut by_name = cfg.clone();
    by_name.urls = vec![Url::parse(&format!("ldap://localhost:{}", slapd.port)).unwrap()];
    let err = Directory::connect(&by_name).await.unwrap_err();
    assert!(matches!(err, DirectoryError::Tls { .. }), "{err:?}");
    let msg = err.to_string();
    eprintln!("error shown: {msg}");
    assert!(msg.contains("not valid for the name `localhost`"), "{msg}");

    // A CA file that did not issue the certificate, and the system roots: untrusted.
    let mut other = cfg.clone();
    other.ca_file = Some(pki.other_ca.clone());
    let mut system = cfg.clone();
    system.ca_file = None;
    for cfg in [other, system] {
        let err = Directory::connect(&cfg).await.unwrap_err();
        assert!(matches!(err, DirectoryError::Tls { .. }), "{err:?}");
        let msg = err.to_string();
        eprintln!("error shown: {msg}");
        assert!(msg.contains("is not trusted"), "{msg}");
        assert!(msg.contains("directory.ca_file"), "{msg}");
    }

    // A server that refuses simple binds without TLS: the admin is told what to change.
    common::process::run(
        &["ldapmodify", "-x", "-H", &slapd.url, "-D", "cn=admin,cn=config", "-w", "admin-secret"],
        Some("dn: cn=config\nchangetype: modify\nreplace: olcSecurity\nolcSecurity: simple_bind=128\n"),
    )
    .unwrap();
    let mut plain = cfg.clone();
    plain.starttls = false;
    let err = Directory::connect(&plain).await.unwrap_err();
    assert!(
        matches!(err, DirectoryError::Bind { code: 8 | 13, .. }),
        "{err:?}"
    );
    let msg = err.to_string();
    eprintln!("error shown: {msg}");
    assert!(
        msg.contains("use an ldaps:// URL or set `directory.starttls = true`"),
        "{msg}"
    );
    let snap = read_snapshot(&cfg, &people()).await.unwrap();
    assert_eq!(snap.entries.len(), 3);
}

#[tokio::test]
async fn continuation_references_are_ignored_but_a_referral_result_is_an_error() {
    let slapd = Slapd::shared();
    let ou = slapd.new_ou("refs");
    add_people(slapd, &ou, "r", 2, "");
    let elsewhere = format!("ou=elsewhere,{ou}");
    slapd.add_ldif(&format!(
        "dn: {elsewhere}\nobjectClass: referral\nobjectClass: extensibleObject\nou: elsewhere\n\
         ref: ldap://other.example.org/ou=elsewhere,dc=example,dc=org\n"
    ));

    // A subtree search over the referral object gets a search result *reference*: ignored.
    let snap = read_snapshot(&config(slapd, &ou), &people()).await.unwrap();
    assert_eq!(snap.entries.len(), 2);
    assert!(snap.skipped.is_empty(), "{:?}", snap.skipped);

    // Searching *at* the referral object: result code referral (10), never followed.
    let err = read_snapshot(&config(slapd, &elsewhere), &people())
        .await
        .unwrap_err();
    assert!(
        matches!(err, DirectoryError::Search { code: 10, .. }),
        "{err:?}"
    );
    let msg = err.to_string();
    eprintln!("error shown: {msg}");
    assert!(msg.contains("ldap://other.example.org/"), "{msg}");
    assert!(msg.contains("not followed"), "{msg}");
}
