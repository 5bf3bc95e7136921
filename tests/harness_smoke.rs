//! The test harness itself works: real slapd, real Synapse.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{unique, Slapd, Synapse};

fn person(ou: &str, uid: &str, cn: &str, sn: &str) -> String {
    format!(
        "dn: uid={uid},{ou}\nobjectClass: inetOrgPerson\nuid: {uid}\ncn: {cn}\nsn: {sn}\nmail: {uid}@example.org\n\n"
    )
}

#[test]
fn slapd_adds_and_pages_an_agent() {
    let ldap = Slapd::shared();
    let ou = ldap.new_ou("people");
    ldap.add_ldif(&person(&ou, "edupre", "Élodie Dupré", "Dupré"));

    let (code, out) = ldap.search_as(
        &ldap.sync_dn,
        &ldap.sync_password,
        &[
            "-E",
            "pr=2/noprompt",
            "-b",
            &ou,
            "(uid=edupre)",
            "cn",
            "mail",
        ],
    );
    assert_eq!(code, 0, "{out}");
    // Non-ASCII values come back base64-encoded: "Élodie Dupré"
    assert!(out.contains("cn:: w4lsb2RpZSBEdXByw6k="), "{out}");
    assert!(out.contains("mail: edupre@example.org"), "{out}");
}

#[test]
fn limited_account_paged_search_ends_with_size_limit() {
    let ldap = Slapd::shared();
    let ou = ldap.new_ou("limited");
    let ldif: String = (0..5)
        .map(|i| person(&ou, &format!("agent{i}"), &format!("Agent {i}"), "Agent"))
        .collect();
    ldap.add_ldif(&ldif);

    let args = [
        "-E",
        "pr=2/noprompt",
        "-b",
        &ou,
        "(objectClass=inetOrgPerson)",
        "uid",
    ];
    let (code, out) = ldap.search_as(&ldap.limited_dn, &ldap.limited_password, &args);
    assert_eq!(code, 4, "limited account should hit size limit (4):\n{out}");

    let (code, out) = ldap.search_as(&ldap.sync_dn, &ldap.sync_password, &args);
    assert_eq!(code, 0, "{out}");
    assert_eq!(out.matches("uid: agent").count(), 5, "{out}");
}

#[test]
fn own_slapd_stops_restarts_and_pauses() {
    let ldap = Slapd::start();
    let ou = ldap.new_ou("kept");
    let args = ["-o", "nettimeout=2", "-b", ou.as_str(), "-s", "base", "ou"];
    ldap.stop();
    let (code, _) = ldap.search_as(&ldap.sync_dn, &ldap.sync_password, &args);
    assert_ne!(code, 0, "search should fail while slapd is stopped");
    ldap.start_again();
    let (code, out) = ldap.search_as(&ldap.sync_dn, &ldap.sync_password, &args);
    assert_eq!(code, 0, "data should survive a restart: {out}");

    ldap.pause();
    let started = std::time::Instant::now();
    let child = std::process::Command::new("ldapsearch")
        .args([
            "-x",
            "-H",
            &ldap.url,
            "-D",
            &ldap.sync_dn,
            "-w",
            &ldap.sync_password,
        ])
        .args(["-b", &ou, "-s", "base"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut child = child;
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(
        child.try_wait().unwrap().is_none(),
        "a paused slapd must not answer"
    );
    ldap.resume();
    let status = child.wait().unwrap();
    assert!(status.success(), "answers after resume");
    assert!(started.elapsed().as_millis() >= 500);
}

#[test]
fn synapse_admin_token_is_admin() {
    let hs = Synapse::shared();
    let (status, body) = hs.request("GET", "/_matrix/client/v3/account/whoami", None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["user_id"], hs.admin_mxid.as_str());
    let admin = hs.get_user(&hs.admin_mxid).expect("admin exists");
    assert_eq!(admin["admin"], true, "{admin}");
}

#[test]
fn synapse_log_shows_the_writes() {
    let hs = Synapse::shared();
    let localpart = unique("smoke");
    let mark = hs.log_mark();
    let mxid = hs.create_user(&localpart, Some("Anaïs Côté"));
    let user = hs.get_user(&mxid).expect("created user exists");
    assert_eq!(user["displayname"], "Anaïs Côté");
    assert!(hs
        .get_user(&format!("@{}:example.org", unique("nobody")))
        .is_none());

    let mine: Vec<_> = hs
        .requests_since(mark)
        .into_iter()
        .filter(|(_, path)| path.contains(&localpart))
        .collect();
    let path = format!("/_synapse/admin/v2/users/{mxid}");
    assert_eq!(
        mine,
        vec![("PUT".to_string(), path.clone()), ("GET".to_string(), path)]
    );
    let writes: Vec<_> = hs
        .writes_since(mark)
        .into_iter()
        .filter(|(_, p)| p.contains(&localpart))
        .collect();
    assert_eq!(writes.len(), 1, "{writes:?}");
}

#[test]
fn sample_directory_loads() {
    let ldap = Slapd::start();
    let path = common::repo_root().join("scripts/sample-directory.ldif");
    ldap.add_ldif(&std::fs::read_to_string(path).unwrap());
    let people = format!("ou=people,{}", ldap.base_dn);
    let search = |filter: &str| {
        let (code, out) = ldap.search_as(
            &ldap.sync_dn,
            &ldap.sync_password,
            &["-E", "pr=10/noprompt", "-b", &people, filter, "uid"],
        );
        assert_eq!(code, 0, "{out}");
        out.matches("\nuid: ").count() + usize::from(out.starts_with("uid: "))
    };
    assert_eq!(search("(objectClass=inetOrgPerson)"), 36);
    assert_eq!(search("(cn=Jean Martin)"), 2);
    assert_eq!(search("(&(objectClass=inetOrgPerson)(!(mail=*)))"), 1);
    let (code, out) = ldap.search_as(
        &ldap.sync_dn,
        &ldap.sync_password,
        &[
            "-b",
            &format!("ou=groups,{}", ldap.base_dn),
            "(cn=encadrement)",
            "member",
        ],
    );
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("member: cn=comite-de-direction,ou=groups,dc=example,dc=org"),
        "{out}"
    );
}

#[test]
fn a_server_that_dies_while_starting_is_reported_not_waited_for() {
    let dir = tempfile::tempdir().unwrap();
    let argv = vec!["sh".into(), "-c".into(), "echo boom >&2; exit 3".into()];
    let log = dir.path().join("log");
    let started = std::time::Instant::now();
    let result = common::process::Server::start(
        "dying",
        argv,
        dir.path(),
        &log,
        std::time::Duration::from_secs(30),
        || false,
    );
    let Err(message) = result else {
        panic!("a server that exits cannot be ready")
    };
    assert!(message.contains("exited with exit status: 3"), "{message}");
    assert!(
        message.contains("boom"),
        "the log tail is in the message: {message}"
    );
    assert!(started.elapsed().as_secs() < 10);
}
