//! `SynapseClient` against a real Synapse (the shared testbed instance). Each test uses its
//! own users (`unique()` localparts) and reads results back through the harness, not through
//! the client under test, where it can.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

// The harness re-exports Slapd, which this binary does not use.
#[allow(unused_imports)]
mod common;

use std::time::Duration;

use common::{unique, Synapse};
use matrix_ldap_sync::config::HomeserverConfig;
use matrix_ldap_sync::homeserver::{ExternalId, Homeserver, SynapseClient, Upserted, UserChanges};
use matrix_ldap_sync::secret::Secret;
use serde_json::{json, Value};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn client(synapse: &Synapse, token: &str) -> SynapseClient {
    let cfg = HomeserverConfig {
        url: url::Url::parse(&synapse.url).unwrap(),
        server_name: synapse.server_name.clone(),
        access_token: Secret::new(token),
        concurrency: 4,
        timeout: Duration::from_secs(30),
        max_retries: 2,
        retry_refused_after: std::time::Duration::from_secs(86_400),
        breaker_failures: 3,
        run_deadline: std::time::Duration::from_secs(3600),
    };
    SynapseClient::new(&cfg).unwrap()
}

fn admin_client(synapse: &Synapse) -> SynapseClient {
    client(synapse, &synapse.admin_token)
}

fn mxid(synapse: &Synapse, prefix: &str) -> String {
    format!("@{}:{}", unique(prefix), synapse.server_name)
}

/// An access token for a (non-admin) user, through the admin "login as user" API.
fn user_token(synapse: &Synapse, mxid: &str) -> String {
    let (status, body) = synapse.request(
        "POST",
        &format!("/_synapse/admin/v1/users/{mxid}/login"),
        Some(&json!({})),
    );
    assert_eq!(status, 200, "{body}");
    body["access_token"].as_str().unwrap().to_string()
}

fn emails_of(user: &Value) -> Vec<String> {
    let mut emails: Vec<String> = user["threepids"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["medium"] == "email")
        .map(|t| t["address"].as_str().unwrap().to_string())
        .collect();
    emails.sort();
    emails
}

fn changes(displayname: Option<&str>, emails: Option<&[&str]>) -> UserChanges {
    UserChanges {
        displayname: displayname.map(str::to_string),
        emails: emails.map(|e| e.iter().map(|s| s.to_string()).collect()),
        ..UserChanges::default()
    }
}

#[test]
fn external_ids_are_set_read_back_and_looked_up() {
    let synapse = Synapse::shared();
    let hs = admin_client(synapse);
    let rt = rt();
    let id = mxid(synapse, "hs-sso");
    let local = id.trim_start_matches('@').split(':').next().unwrap();
    // An id with characters a path must escape.
    let sso = ExternalId {
        auth_provider: "oidc-agentconnect".into(),
        external_id: format!("{local}/é?#1"),
    };
    let with_id = UserChanges {
        displayname: Some("SSO".into()),
        external_ids: Some(vec![sso.clone()]),
        ..UserChanges::default()
    };
    assert_eq!(
        rt.block_on(hs.upsert_user(&id, &with_id)).unwrap(),
        Upserted::Created
    );
    assert_eq!(
        rt.block_on(hs.user_by_external_id(&sso)).unwrap(),
        Some(id.clone())
    );
    let remote = rt.block_on(hs.get_user(&id)).unwrap().unwrap();
    assert_eq!(remote.external_ids, vec![sso.clone()]);
    // Nobody holds an unknown id, nor a known id under another provider.
    for nobody in [
        ExternalId {
            external_id: format!("{local}-other"),
            ..sso.clone()
        },
        ExternalId {
            auth_provider: "saml".into(),
            ..sso.clone()
        },
    ] {
        assert_eq!(rt.block_on(hs.user_by_external_id(&nobody)).unwrap(), None);
    }
    // Another account cannot take it: 409.
    let other = mxid(synapse, "hs-sso-other");
    let err = rt.block_on(hs.upsert_user(&other, &with_id)).unwrap_err();
    assert!(err.to_string().contains("409"), "{err}");
    // Replaced by an empty list: gone, and free for another account. (Synapse 1.163 keeps
    // answering the lookup of a removed id from its cache until someone takes the id or it
    // restarts: what it stores is what counts.)
    let none = UserChanges {
        external_ids: Some(vec![]),
        ..UserChanges::default()
    };
    rt.block_on(hs.upsert_user(&id, &none)).unwrap();
    let remote = rt.block_on(hs.get_user(&id)).unwrap().unwrap();
    assert_eq!(remote.external_ids, vec![]);
    assert_eq!(
        rt.block_on(hs.upsert_user(&other, &with_id)).unwrap(),
        Upserted::Updated
    );
    assert_eq!(
        rt.block_on(hs.user_by_external_id(&sso)).unwrap(),
        Some(other)
    );
}

#[test]
fn upsert_creates_then_updates_a_user_with_one_put_each() {
    let synapse = Synapse::shared();
    let hs = admin_client(synapse);
    let rt = rt();
    let id = mxid(synapse, "hs-upsert");
    let local = id.trim_start_matches('@').split(':').next().unwrap();
    let mail1 = format!("{local}@example.org");
    let mail2 = format!("{local}.new@example.org");

    let mark = synapse.log_mark();
    let created = rt
        .block_on(hs.upsert_user(&id, &changes(Some("Élodie Dupré"), Some(&[&mail1]))))
        .unwrap();
    assert_eq!(created, Upserted::Created);
    let seen = synapse.get_user(&id).expect("created user is visible");
    assert_eq!(seen["displayname"], "Élodie Dupré");
    assert_eq!(emails_of(&seen), vec![mail1.clone()]);
    assert_eq!(seen["deactivated"], false);

    let updated = rt
        .block_on(hs.upsert_user(&id, &changes(Some("Élodie Martin"), Some(&[&mail2]))))
        .unwrap();
    assert_eq!(updated, Upserted::Updated);
    let seen = synapse.get_user(&id).unwrap();
    assert_eq!(seen["displayname"], "Élodie Martin");
    assert_eq!(emails_of(&seen), vec![mail2.clone()], "emails are replaced");

    // Exactly two writes reached Synapse for this user (no stray retries or extra calls).
    let path = format!("/_synapse/admin/v2/users/{id}");
    let writes: Vec<_> = synapse
        .writes_since(mark)
        .into_iter()
        .filter(|(_, p)| *p == path)
        .collect();
    assert_eq!(writes.len(), 2, "{writes:?}");
    assert!(writes.iter().all(|(m, _)| m == "PUT"));

    // The client reads back what the harness sees.
    let remote = rt.block_on(hs.get_user(&id)).unwrap().unwrap();
    assert_eq!(remote.mxid, id);
    assert_eq!(remote.displayname.as_deref(), Some("Élodie Martin"));
    assert_eq!(remote.emails, vec![mail2]);
    assert!(!remote.admin && !remote.deactivated && !remote.locked);
    assert_eq!(hs.retries(), 0);
}

#[test]
fn upsert_leaves_unset_fields_alone() {
    let synapse = Synapse::shared();
    let hs = admin_client(synapse);
    let rt = rt();
    let id = mxid(synapse, "hs-partial");
    let mail = format!("{}@example.org", &id[1..id.find(':').unwrap()]);
    rt.block_on(hs.upsert_user(&id, &changes(Some("First"), Some(&[&mail]))))
        .unwrap();

    // Only the display name: the e-mail stays.
    rt.block_on(hs.upsert_user(&id, &changes(Some("Second"), None)))
        .unwrap();
    let seen = synapse.get_user(&id).unwrap();
    assert_eq!(seen["displayname"], "Second");
    assert_eq!(emails_of(&seen), vec![mail]);

    // Only the e-mails (none): the display name stays, the e-mail goes.
    rt.block_on(hs.upsert_user(&id, &changes(None, Some(&[]))))
        .unwrap();
    let seen = synapse.get_user(&id).unwrap();
    assert_eq!(seen["displayname"], "Second");
    assert!(emails_of(&seen).is_empty());
}

#[test]
fn mxids_needing_percent_encoding_reach_the_right_user() {
    let synapse = Synapse::shared();
    let hs = admin_client(synapse);
    let rt = rt();
    // '/', '+', '=' and '.' are allowed in localparts; '/' breaks an unencoded path.
    let id = format!("@{}/x+y=z.w:{}", unique("hs-enc"), synapse.server_name);
    let created = rt
        .block_on(hs.upsert_user(&id, &changes(Some("Slash"), None)))
        .unwrap();
    assert_eq!(created, Upserted::Created);
    let remote = rt.block_on(hs.get_user(&id)).unwrap().expect("found");
    assert_eq!(remote.mxid, id);
    assert_eq!(remote.displayname.as_deref(), Some("Slash"));
    let listed = rt.block_on(hs.list_users()).unwrap();
    assert!(listed.iter().any(|u| u.mxid == id));
}

#[test]
fn get_user_of_an_unknown_mxid_is_none() {
    let synapse = Synapse::shared();
    let hs = admin_client(synapse);
    let id = mxid(synapse, "hs-nobody");
    assert_eq!(rt().block_on(hs.get_user(&id)).unwrap(), None);
    assert!(synapse.get_user(&id).is_none());
}

#[test]
fn a_listing_replaces_lookups_only_when_it_costs_the_homeserver_less() {
    let synapse = Synapse::shared();
    let rt = rt();
    let gone = synapse.create_user(&unique("hs-cheaper-gone"), Some("Gone"));
    let (s, b) = synapse.request(
        "POST",
        &format!("/_synapse/admin/v1/deactivate/{gone}"),
        Some(&json!({"erase": false})),
    );
    assert_eq!(s, 200, "{b}");
    let hs = admin_client(synapse);

    // A handful of lookups: never worth a listing.
    assert_eq!(rt.block_on(hs.list_users_if_cheaper(3)).unwrap(), None);
    // Far more lookups than the homeserver has users: one listing, deactivated included.
    let users = rt
        .block_on(hs.list_users_if_cheaper(usize::MAX))
        .unwrap()
        .expect("listed");
    assert!(users.iter().any(|u| u.mxid == gone && u.deactivated));
    // One user per page: a listing costs more than looking each of them up.
    let one_per_page = admin_client(synapse).with_page_size(1);
    assert_eq!(
        rt.block_on(one_per_page.list_users_if_cheaper(users.len()))
            .unwrap(),
        None
    );
}

#[test]
fn list_users_pages_through_everyone_including_deactivated_and_locked() {
    let synapse = Synapse::shared();
    let rt = rt();
    let plain = synapse.create_user(&unique("hs-list-plain"), Some("Plain"));
    let gone = synapse.create_user(&unique("hs-list-gone"), Some("Gone"));
    let locked = synapse.create_user(&unique("hs-list-locked"), Some("Locked"));
    let (s, b) = synapse.request(
        "POST",
        &format!("/_synapse/admin/v1/deactivate/{gone}"),
        Some(&json!({"erase": false})),
    );
    assert_eq!(s, 200, "{b}");
    let (s, b) = synapse.request(
        "PUT",
        &format!("/_synapse/admin/v2/users/{locked}"),
        Some(&json!({"locked": true})),
    );
    assert_eq!(s, 200, "{b}");

    // A small page size so that paging is exercised on the real server.
    let hs = admin_client(synapse).with_page_size(2);
    let mark = synapse.log_mark();
    let users = rt.block_on(hs.list_users()).unwrap();

    let find = |id: &str| {
        let found: Vec<_> = users.iter().filter(|u| u.mxid == id).collect();
        assert_eq!(found.len(), 1, "{id} listed {} times", found.len());
        found[0].clone()
    };
    let p = find(&plain);
    assert!(!p.deactivated && !p.locked);
    assert_eq!(p.displayname.as_deref(), Some("Plain"));
    assert!(find(&gone).deactivated);
    assert!(find(&locked).locked);
    assert!(find(&synapse.admin_mxid).admin);

    let pages = synapse
        .requests_since(mark)
        .into_iter()
        .filter(|(m, p)| m == "GET" && p.starts_with("/_synapse/admin/v2/users?"))
        .count();
    assert!(
        pages >= users.len().div_ceil(2),
        "{pages} pages for {} users",
        users.len()
    );
}

#[test]
fn whoami_and_check_admin_accept_the_admin_and_refuse_a_plain_user() {
    let synapse = Synapse::shared();
    let rt = rt();
    let admin = admin_client(synapse);
    assert_eq!(rt.block_on(admin.whoami()).unwrap(), synapse.admin_mxid);
    let version = rt.block_on(admin.check_admin()).unwrap();
    assert!(version.starts_with("1."), "{version}");

    let plain_id = synapse.create_user(&unique("hs-plain"), None);
    let plain = client(synapse, &user_token(synapse, &plain_id));
    assert_eq!(rt.block_on(plain.whoami()).unwrap(), plain_id);
    let err = rt.block_on(plain.check_admin()).unwrap_err();
    assert!(err.is_auth(), "{err:?}");
    assert!(err.to_string().contains("not a server admin"), "{err}");
    let err = rt.block_on(plain.get_user(&plain_id)).unwrap_err();
    assert!(err.is_auth(), "{err:?}");

    let bogus = client(synapse, "syt_not_a_real_token");
    let err = rt.block_on(bogus.whoami()).unwrap_err();
    assert!(err.is_auth(), "{err:?}");
    assert!(err.to_string().contains("M_UNKNOWN_TOKEN"), "{err}");
    let err = rt.block_on(bogus.check_admin()).unwrap_err();
    assert!(err.is_auth(), "{err:?}");
}

/// Synapse facts the plan module must live with, pinned so an upgrade that changes them
/// is noticed: e-mails are stored lowercased, and giving a second account an e-mail that
/// another account has silently moves it.
#[test]
fn synapse_lowercases_emails_and_moves_a_shared_email() {
    let synapse = Synapse::shared();
    let hs = admin_client(synapse);
    let rt = rt();
    let first = mxid(synapse, "hs-mail-a");
    let second = mxid(synapse, "hs-mail-b");
    let mail = format!("{}@Example.ORG", unique("Shared"));

    rt.block_on(hs.upsert_user(&first, &changes(None, Some(&[&mail]))))
        .unwrap();
    let a = rt.block_on(hs.get_user(&first)).unwrap().unwrap();
    assert_eq!(a.emails, vec![mail.to_lowercase()]);

    rt.block_on(hs.upsert_user(&second, &changes(None, Some(&[&mail]))))
        .unwrap();
    let a = rt.block_on(hs.get_user(&first)).unwrap().unwrap();
    let b = rt.block_on(hs.get_user(&second)).unwrap().unwrap();
    assert_eq!(b.emails, vec![mail.to_lowercase()]);
    assert!(a.emails.is_empty(), "moved away from the first: {a:?}");
}

#[test]
fn non_local_mxids_are_refused_with_400() {
    let synapse = Synapse::shared();
    let hs = admin_client(synapse);
    let err = rt()
        .block_on(hs.get_user("@someone:elsewhere.example"))
        .unwrap_err();
    match err {
        matrix_ldap_sync::homeserver::HomeserverError::Status { status, .. } => {
            assert_eq!(status, 400)
        }
        other => panic!("{other:?}"),
    }
}
