//! Active Directory end to end: a real Samba AD DC (provisioned once, LDAPS with a test CA) and
//! a real Synapse, through the real binary with the `mappings/active-directory.toml` preset.
//! Time moves with the test clock (`site.sync_ok_at(t)`) and `plan --now`, never with sleeps.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
#[path = "active_directory/incremental.rs"]
mod incremental;

use common::accounts::{at, emails, flag, DAY, T0};
use common::ad_site::{AdSite, Agent};
use common::site::{plan_joins, Run, Settings};
use serde_json::Value;

/// A 7-day grace period and a brake that never stops these small sites.
const DEPARTURES: &str = "
[departures]
grace = \"7d\"

[brake]
max_departures_percent = 100.0
max_shrink_percent = 100.0
";

const ANNE: Agent<'static> = Agent {
    name: "anne",
    given: "Anne",
    sn: "Leroy",
    department: Some("DSI"),
    mail: Some("anne.leroy@example.org"),
};

const PAUL: Agent<'static> = Agent {
    name: "paul",
    given: "Paul",
    sn: "Girard",
    department: None,
    mail: None,
};

fn user(site: &AdSite, mxid: &str) -> Value {
    site.synapse
        .get_user(mxid)
        .unwrap_or_else(|| panic!("{mxid} does not exist"))
}

/// Whether the account has a flag (`suspended`, `deactivated`, …).
fn has(site: &AdSite, mxid: &str, name: &str) -> bool {
    flag(&user(site, mxid), name)
}

fn all_output(run: &Run) -> String {
    format!("{}\n{}", run.stdout, run.stderr)
}

/// Runs `check`; asserts it passed (or failed) and that its output has every one of `says`.
fn check_says(site: &AdSite, passes: bool, says: &[&str]) {
    let run = site.run(&["check"]);
    let out = all_output(&run);
    assert_eq!(run.code == 0, passes, "{out}");
    for text in says {
        assert!(out.contains(text), "`check` does not say {text:?}:\n{out}");
    }
}

/// Log text without its ANSI colours (`key=value` pairs are coloured apart).
fn plain(log: &str) -> String {
    let mut out = String::new();
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            chars.by_ref().find(|c| c.is_ascii_alphabetic());
        } else {
            out.push(c);
        }
    }
    out
}

/// A site with the preset's departure rules, a grace period, and Anne and Paul synced at T0.
fn departures_site(name: &str) -> AdSite {
    let site = AdSite::new(name);
    site.configure(&Settings {
        config_extra: DEPARTURES.into(),
        ..Settings::default()
    });
    site.add_agent(ANNE);
    site.add_agent(PAUL);
    let run = site.sync_ok_at(T0);
    assert!(run.stdout.contains("2 applied"), "{}", all_output(&run));
    site
}

/// `accountExpires` (FILETIME: 100 ns since 1601) of a Unix time.
fn filetime(unix: i64) -> String {
    ((unix + 11_644_473_600) * 10_000_000).to_string()
}

#[test]
fn agents_are_created_then_updated_from_ad_attributes_over_ldaps() {
    let site = AdSite::new("create");
    site.add_agent(ANNE);
    site.add_agent(PAUL);
    // A computer account is a `user` too, but not a person: not an agent.
    site.dc.add_ldif(&format!(
        "dn: CN=PC01,{ou}\nobjectClass: computer\nsAMAccountName: pc01-{tag}$\n\
         userAccountControl: 4096\n",
        ou = site.ou,
        tag = site.tag
    ));
    let run = site.sync_ok();
    assert!(run.stdout.contains("2 applied"), "{}", all_output(&run));
    assert!(
        run.stdout.contains("Sync from ldaps://localhost: 2 agents"),
        "{}",
        run.stdout
    );

    let anne = user(&site, &site.mxid("anne"));
    assert_eq!(anne["displayname"], "Anne Leroy [DSI]");
    assert_eq!(emails(&anne), vec![site.mail("anne.leroy@example.org")]);
    let paul = user(&site, &site.mxid("paul"));
    assert_eq!(paul["displayname"], "Paul Girard");
    assert_eq!(emails(&paul), Vec::<String>::new());

    site.set_attr("anne", "department", &["Cabinet"]);
    site.set_attr("anne", "mail", &[&site.mail("a.leroy@example.org")]);
    site.set_attr("paul", "displayName", &["Paul Girard-Roux"]);
    let mark = site.synapse.log_mark();
    let run = site.sync_ok();
    assert!(run.stdout.contains("2 applied"), "{}", all_output(&run));
    let anne = user(&site, &site.mxid("anne"));
    assert_eq!(anne["displayname"], "Anne Leroy [Cabinet]");
    assert_eq!(emails(&anne), vec![site.mail("a.leroy@example.org")]);
    assert_eq!(
        user(&site, &site.mxid("paul"))["displayname"],
        "Paul Girard-Roux"
    );
    assert!(!site.writes_since(mark).is_empty());

    // Nothing changed: nothing written.
    let mark = site.synapse.log_mark();
    let run = site.sync_ok();
    assert!(run.stdout.contains("0 planned"), "{}", all_output(&run));
    assert_eq!(site.writes_since(mark), vec![]);
}

#[test]
fn the_stable_id_is_the_object_guid_in_its_canonical_form() {
    let site = AdSite::new("guid");
    site.add_agent(ANNE);
    let (code, plan) = site.plan_json();
    assert_eq!(code, 2, "{plan}");
    let id = plan["actions"][0]["id"].as_str().unwrap().to_string();
    // Samba's own tool prints objectGUID in the canonical (mixed-endian) string form.
    assert_eq!(id, site.guid("anne"), "{plan}");
    assert_eq!(id.len(), 36);
    assert_eq!(id, id.to_ascii_lowercase());
}

#[test]
fn ldaps_without_the_test_ca_is_an_untrusted_certificate_error() {
    let site = AdSite::new("untrusted");
    site.configure(&Settings {
        no_ca_file: true,
        ..Settings::default()
    });
    check_says(
        &site,
        false,
        &[
            "FAILED  directory bind: TLS with ldaps://localhost",
            "the server certificate is not trusted",
            "directory.ca_file",
        ],
    );
}

#[test]
fn a_certificate_without_the_url_host_in_its_sans_is_a_wrong_name_error() {
    // A DC certificate naming only the DC's FQDN, and a config that connects by another name.
    let site = AdSite::exclusive("wrongname");
    let _cert = site.dc_certificate_for("DNS:dc1.samdom.test");
    check_says(
        &site,
        false,
        &[
            "FAILED  directory bind: TLS with ldaps://localhost",
            "not valid for the name `localhost`",
            "subjectAltName",
        ],
    );
}

#[test]
fn starttls_with_a_bind_by_dn_reads_the_domain() {
    let site = AdSite::new("starttls");
    site.configure(&Settings {
        urls: Some(vec![site.dc.ldap_url.clone()]),
        starttls: true,
        bind: Some((site.dc.sync_dn.clone(), site.dc.sync_password.clone())),
        ..Settings::default()
    });
    site.add_agent(ANNE);
    let bound = format!(
        "OK      directory bind: ldap://localhost (Active Directory) as {}",
        site.dc.sync_dn
    );
    check_says(&site, true, &[&bound]);
    let run = site.sync_ok();
    assert!(run.stdout.contains("1 applied"), "{}", all_output(&run));
    assert!(site.synapse.get_user(&site.mxid("anne")).is_some());
}

#[test]
fn binds_as_upn_or_down_level_name_work_and_a_bare_account_name_is_explained() {
    let site = AdSite::new("upn");
    let bound = format!(
        "OK      directory bind: ldaps://localhost (Active Directory) as {}",
        site.dc.sync_upn
    );
    check_says(&site, true, &[&bound]);
    // The down-level logon name works too (a TOML string: the backslash is escaped).
    site.configure(&Settings {
        bind: Some(("SAMDOM\\\\svc-matrix".into(), site.dc.sync_password.clone())),
        ..Settings::default()
    });
    check_says(
        &site,
        true,
        &["OK      directory bind: ldaps://localhost (Active Directory) as SAMDOM\\svc-matrix"],
    );
    // The sAMAccountName alone is not a bind name in AD; the error says why (data 52e).
    site.configure(&Settings {
        bind: Some(("svc-matrix".into(), site.dc.sync_password.clone())),
        ..Settings::default()
    });
    check_says(&site, false, &["FAILED  directory bind", "wrong password"]);
}

#[test]
fn a_plain_ldap_simple_bind_is_refused_with_advice_to_use_ldaps_or_starttls() {
    let site = AdSite::new("plain");
    site.configure(&Settings {
        urls: Some(vec![site.dc.ldap_url.clone()]),
        ..Settings::default()
    });
    site.add_agent(ANNE);
    let mark = site.synapse.log_mark();
    let run = site.run(&["sync"]);
    let out = all_output(&run);
    assert_ne!(run.code, 0, "{out}");
    assert!(
        out.contains("strongerAuthRequired")
            && out.contains("use an ldaps:// URL or set `directory.starttls = true`"),
        "{out}"
    );
    assert_eq!(site.writes_since(mark), vec![]);
}

#[test]
fn failover_skips_a_dead_dc_url_and_says_which_one_answered() {
    let site = AdSite::new("failover");
    let dead = format!("ldaps://localhost:{}", common::free_port());
    site.configure(&Settings {
        urls: Some(vec![dead.clone(), site.dc.ldaps_url.clone()]),
        ..Settings::default()
    });
    site.add_agent(ANNE);
    check_says(
        &site,
        true,
        &["OK      directory bind: ldaps://localhost (Active Directory) as"],
    );
    let run = site.sync_ok();
    assert!(
        run.stdout.contains("Sync from ldaps://localhost: 1 agents"),
        "{}",
        all_output(&run)
    );
    // The log names the dead server and the one that answered (second of the list).
    let log = plain(&run.stderr);
    assert!(
        log.contains(&format!("directory server unusable server={dead}"))
            && log.contains("directory: connected and bound server=ldaps://localhost kind=\"Active Directory\" tried=2"),
        "{log}"
    );
}

#[test]
fn a_stopped_dc_stops_the_run_without_departures_and_its_return_resumes() {
    let site = AdSite::exclusive("stopped");
    let dead = format!("ldaps://localhost:{}", common::free_port());
    site.configure(&Settings {
        urls: Some(vec![site.dc.ldaps_url.clone(), dead.clone()]),
        config_extra: DEPARTURES.into(),
        ..Settings::default()
    });
    site.add_agent(ANNE);
    site.sync_ok_at(T0);
    let anne = site.mxid("anne");

    let stopped = site.stop_dc();
    let mark = site.synapse.log_mark();
    let run = site.run_at(T0 + DAY, &["sync"]);
    let out = all_output(&run);
    assert_ne!(run.code, 0, "{out}");
    assert!(
        out.contains("no directory server could be used")
            && out.contains("ldaps://localhost")
            && out.contains(&dead),
        "{out}"
    );
    assert_eq!(site.writes_since(mark), vec![]);
    drop(stopped);

    let run = site.sync_ok_at(T0 + 2 * DAY);
    assert!(
        run.stdout.contains("Sync from ldaps://localhost: 1 agents"),
        "{}",
        run.stdout
    );
    assert!(!has(&site, &anne, "suspended"));
}

#[test]
fn a_hung_dc_times_out_instead_of_hanging_the_run() {
    let site = AdSite::exclusive("hung");
    site.add_agent(ANNE);
    site.sync_ok();
    let paused = site.pause_dc();
    let began = std::time::Instant::now();
    let run = site.run(&["sync"]);
    let took = began.elapsed();
    drop(paused);
    let out = all_output(&run);
    assert_ne!(run.code, 0, "{out}");
    // timeout_secs = 3 in the site's config: one step, not minutes.
    assert!(took < std::time::Duration::from_secs(15), "{took:?}: {out}");
    assert!(
        out.contains("ldaps://localhost did not answer within 3s"),
        "{out}"
    );
}

#[test]
fn a_renamed_or_moved_agent_keeps_its_account() {
    let site = AdSite::new("rename");
    site.add_agent(ANNE);
    site.sync_ok();
    let (guid, old_dn) = (site.guid("anne"), site.dn("anne"));

    site.dc.samba_tool(&[
        "user",
        "rename",
        &site.sam("anne"),
        "--surname=Martin",
        "--display-name=Anne Martin",
    ]);
    let new_dn = site.dn("anne");
    assert_ne!(new_dn, old_dn);
    assert!(new_dn.starts_with("CN=Anne Martin,"), "{new_dn}");
    assert_eq!(site.guid("anne"), guid);

    let run = site.sync_ok();
    assert!(
        run.stdout.contains("1 applied") && !run.stdout.contains("create"),
        "{}",
        all_output(&run)
    );
    let anne = user(&site, &site.mxid("anne"));
    assert_eq!(anne["displayname"], "Anne Martin [DSI]");

    // Moved into another OU: still the same account, nothing to change.
    let sub = format!("OU=moved,{}", site.ou);
    site.dc
        .add_ldif(&format!("dn: {sub}\nobjectClass: organizationalUnit\n"));
    site.dc.modify_ldif(&format!(
        "dn: {new_dn}\nchangetype: modrdn\nnewrdn: CN=Anne Martin\ndeleteoldrdn: 1\nnewsuperior: {sub}\n"
    ));
    assert!(site.dn("anne").ends_with(&sub));
    let (code, plan) = site.plan_json();
    assert_eq!(
        (code, plan["actions"].as_array().unwrap().len()),
        (0, 0),
        "{plan}"
    );
}

#[test]
fn a_disabled_agent_is_suspended_then_deactivated_after_the_grace_period() {
    let site = departures_site("disabled");
    let (anne, paul) = (site.mxid("anne"), site.mxid("paul"));

    site.dc.samba_tool(&["user", "disable", &site.sam("anne")]);
    let out = site.attrs("anne", &["userAccountControl"]);
    assert!(out.contains("userAccountControl: 514"), "{out}");

    let (code, plan) = site.plan_json_with(&["--now", &at(T0 + DAY)]);
    assert_eq!(code, 2, "{plan}");
    assert_eq!(plan["counts"]["suspend_account"], 1, "{plan}");
    let reason = plan["actions"][0]["reason"].as_str().unwrap();
    assert!(reason.contains("userAccountControl"), "{plan}");
    site.sync_ok_at(T0 + DAY);
    let u = user(&site, &anne);
    assert!(flag(&u, "suspended") && !flag(&u, "deactivated"), "{u}");
    assert!(!has(&site, &paul, "suspended"));

    site.sync_ok_at(T0 + 9 * DAY);
    assert!(has(&site, &anne, "deactivated"));
    assert!(!has(&site, &paul, "deactivated"));
}

#[test]
fn a_move_into_the_departed_ou_is_a_departure_and_a_move_back_a_return() {
    let site = AdSite::new("departed");
    let departed = format!("OU=Departed,{}", site.ou);
    site.dc.add_ldif(&format!(
        "dn: {departed}\nobjectClass: organizationalUnit\n"
    ));
    // The preset's signals, plus the departed OU.
    let preset =
        std::fs::read_to_string(common::repo_root().join("mappings/active-directory.toml"))
            .unwrap();
    let departure = &preset[preset.find("[departure]").unwrap()..];
    site.configure(&Settings {
        config_extra: DEPARTURES.into(),
        mapping_extra: format!("\n{departure}\ndeparted_ous = [\"{departed}\"]\n"),
        ..Settings::default()
    });
    site.add_agent(ANNE);
    site.sync_ok_at(T0);
    let anne = site.mxid("anne");
    let move_to = |parent: &str| {
        site.dc.modify_ldif(&format!(
            "dn: {}\nchangetype: modrdn\nnewrdn: CN=Anne Leroy\ndeleteoldrdn: 1\nnewsuperior: {parent}\n",
            site.dn("anne")
        ))
    };

    move_to(&departed);
    let (_, plan) = site.plan_json_with(&["--now", &at(T0 + DAY)]);
    let reason = plan["actions"][0]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("moved into"), "{plan}");
    site.sync_ok_at(T0 + DAY);
    assert!(has(&site, &anne, "suspended"));

    move_to(&site.ou);
    site.sync_ok_at(T0 + 2 * DAY);
    let u = user(&site, &anne);
    assert!(!flag(&u, "suspended") && !flag(&u, "deactivated"), "{u}");
}

#[test]
fn a_locked_out_agent_is_not_a_departure() {
    let site = departures_site("lockout");
    site.bad_binds("anne", 3);
    let out = site.attrs(
        "anne",
        &["userAccountControl", "msDS-User-Account-Control-Computed"],
    );
    assert!(
        out.contains("userAccountControl: 512")
            && out.contains("msDS-User-Account-Control-Computed: 16"),
        "the DC must show the lockout: {out}"
    );
    let mark = site.synapse.log_mark();
    let run = site.sync_ok_at(T0 + DAY);
    assert!(run.stdout.contains("0 planned"), "{}", all_output(&run));
    assert_eq!(site.writes_since(mark), vec![]);
    assert!(!has(&site, &site.mxid("anne"), "suspended"));
}

#[test]
fn account_expiry_in_the_past_departs_in_the_future_is_scheduled_and_zero_is_never() {
    let site = departures_site("expiry");
    site.add_agent(Agent {
        name: "rose",
        given: "Rose",
        sn: "Marchand",
        ..Agent::default()
    });
    site.sync_ok_at(T0);
    site.set_attr("anne", "accountExpires", &[&filetime(T0 - DAY)]);
    site.set_attr("paul", "accountExpires", &[&filetime(T0 + 10 * DAY)]);
    site.set_attr("rose", "accountExpires", &["0"]);
    let (anne, paul, rose) = (site.mxid("anne"), site.mxid("paul"), site.mxid("rose"));

    let (code, plan) = site.plan_json_with(&["--now", &at(T0 + DAY)]);
    assert_eq!(code, 2, "{plan}");
    assert_eq!(plan["counts"]["suspend_account"], 1, "{plan}");
    assert_eq!(plan["actions"][0]["mxid"], anne.as_str(), "{plan}");
    assert_eq!(plan["pending"][0]["mxid"], paul.as_str(), "{plan}");
    site.sync_ok_at(T0 + DAY);
    assert!(has(&site, &anne, "suspended"));
    assert!(!has(&site, &paul, "suspended"));

    site.sync_ok_at(T0 + 11 * DAY);
    assert!(has(&site, &paul, "suspended"));
    assert!(!has(&site, &rose, "suspended"));
}

#[test]
fn a_deleted_agent_is_suspended_and_a_restored_one_gets_its_account_back() {
    let site = departures_site("deleted");
    let anne = site.mxid("anne");
    let (guid, dn) = (site.guid("anne"), site.dn("anne"));
    site.dc.delete(&dn);
    let run = site.sync_ok_at(T0 + DAY);
    assert!(run.stdout.contains("1 applied"), "{}", all_output(&run));
    assert!(has(&site, &anne, "suspended"));
    assert!(!has(&site, &site.mxid("paul"), "suspended"));

    // Restored from the Deleted Objects container (no Recycle Bin: the object keeps its
    // objectGUID and sAMAccountName but loses its names and mail, which the admin sets again).
    site.dc.restore_deleted(&guid, &dn);
    assert_eq!(site.guid("anne"), guid);
    // Until then it is skipped as incomplete (no displayName), and stays suspended.
    let (_, plan) = site.plan_json_with(&["--now", &at(T0 + 2 * DAY)]);
    assert_eq!(plan["actions"].as_array().unwrap().len(), 0, "{plan}");
    assert_eq!(plan["skipped"][0]["id"], guid.as_str(), "{plan}");
    assert!(
        plan["skipped"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("displayName"),
        "{plan}"
    );
    site.set_attr("anne", "displayName", &["Anne Leroy"]);
    site.set_attr("anne", "mail", &[&site.mail("anne.leroy@example.org")]);
    let mark = site.synapse.log_mark();
    let run = site.sync_ok_at(T0 + 2 * DAY);
    assert!(run.stdout.contains("0 failed"), "{}", all_output(&run));
    assert!(
        !site
            .writes_since(mark)
            .iter()
            .any(|(m, p)| m == "PUT" && p.contains("/v2/users/") && !p.contains(&anne)),
        "no second account"
    );
    let u = user(&site, &anne);
    assert!(!flag(&u, "suspended") && !flag(&u, "deactivated"), "{u}");
}

/// Adds `n` enabled users `CN=Bulk <i>` with `ldbadd` (fast); returns their DNs.
fn bulk_agents(site: &AdSite, n: usize) -> Vec<String> {
    let mut ldif = String::new();
    let mut dns = Vec::with_capacity(n);
    for i in 0..n {
        let sam = site.sam(&format!("b{i:04}"));
        let dn = format!("CN=Bulk {i:04},{}", site.ou);
        ldif.push_str(&format!(
            "dn: {dn}\nobjectClass: user\nsAMAccountName: {sam}\n\
             givenName: Bulk\nsn: {i:04}\ndisplayName: Bulk {i:04}\n\
             userAccountControl: 544\n\n"
        ));
        dns.push(dn);
    }
    let began = std::time::Instant::now();
    site.dc.ldbadd(&ldif);
    eprintln!("{n} AD users added with ldbadd in {:.2?}", began.elapsed());
    dns
}

#[test]
fn a_page_size_above_max_page_size_reads_all_of_many_agents() {
    let site = AdSite::new("paging");
    bulk_agents(&site, 1200);

    // Samba does not enforce MaxPageSize (1,000): 2,000 is one page here. 300 is four full
    // pages and an empty last one (the DC sends a cookie after the fourth).
    for (page_size, pages) in [(2000, 1), (1000, 2), (300, 5)] {
        site.configure(&Settings {
            page_size: Some(page_size),
            ..Settings::default()
        });
        let run = site.run(&["plan", "--json"]);
        assert_eq!(run.code, 2, "page size {page_size}: {}", run.stderr);
        let plan: Value = serde_json::from_str(&run.stdout).unwrap();
        assert_eq!(
            plan["counts"]["create_account"], 1200,
            "page size {page_size}: {}",
            plan["counts"]
        );
        let log = plain(&run.stderr);
        assert!(
            log.contains(&format!("entries=1200 skipped=0 pages={pages} ")),
            "page size {page_size}: {log}"
        );
    }
}

/// The `[directory]` section of docs/active-directory.md, pointed at the test DC, in the site's
/// config: `check` and `sync` work with it as documented.
#[test]
fn the_documented_example_config_works() {
    let site = AdSite::new("doc");
    site.add_agent(ANNE);
    let doc =
        std::fs::read_to_string(common::repo_root().join("docs/active-directory.md")).unwrap();
    let block = doc
        .split("```toml\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("a toml block in docs/active-directory.md");
    let section = block.split("\n[mapping]").next().unwrap().to_string();
    let dead = format!("localhost:{}", common::free_port());
    let documented = section
        .replace("dc1.ad.example.org", &dead)
        .replace("dc2.ad.example.org", "localhost")
        .replace(
            "/etc/matrix-ldap-sync/ad-ca.pem",
            &site.dc.ca_file.to_string_lossy(),
        )
        .replace("svc-matrix@ad.example.org", &site.dc.sync_upn)
        .replace("$CREDENTIALS_DIRECTORY/ldap-password", "ldap.pw")
        .replace("OU=Staff,DC=ad,DC=example,DC=org", &site.ou);
    for placeholder in ["example.org", "/etc/"] {
        assert!(
            !documented.contains(placeholder),
            "not replaced: {documented}"
        );
    }
    let config = std::fs::read_to_string(site.config()).unwrap();
    let start = config.find("[directory]").unwrap();
    let end = config.find("[homeserver]").unwrap();
    let config = format!("{}{documented}\n{}", &config[..start], &config[end..]);
    std::fs::write(site.config(), config).unwrap();

    check_says(&site, true, &[]);
    let run = site.sync_ok();
    assert!(
        run.stdout.contains("Sync from ldaps://localhost: 1 agents")
            && run.stdout.contains("1 applied"),
        "{}",
        all_output(&run)
    );
}

/// Sets the site's room rules: the preset, then `groups` (a `[groups]` table or nothing) and
/// `rooms`, with `{tag}`, `{ou}`, `{base}` (the domain) and `{server}` replaced; departures
/// and an open brake as in [`DEPARTURES`]; pages of 1,000.
fn configure_rooms(site: &AdSite, groups: &str, rooms: &str) {
    let rules = format!("\n{groups}\n{rooms}")
        .replace("{tag}", &site.tag)
        .replace("{ou}", &site.ou)
        .replace("{base}", &site.dc.base_dn)
        .replace("{server}", &site.synapse.server_name);
    site.configure(&Settings {
        mapping_extra: rules,
        config_extra: DEPARTURES.into(),
        page_size: Some(1000),
        ..Settings::default()
    });
}

fn alias(site: &AdSite, name: &str) -> String {
    format!("#{name}-{}:{}", site.tag, site.synapse.server_name)
}

fn mxids(site: &AdSite, names: &[&str]) -> std::collections::BTreeSet<String> {
    names.iter().map(|n| site.mxid(n)).collect()
}

fn agent(name: &str) -> Agent<'_> {
    Agent {
        name,
        given: name,
        sn: "Test",
        ..Agent::default()
    }
}

/// `plan` finds nothing to do (exit code 0); returns its log.
fn nothing_to_do(site: &AdSite) -> String {
    let run = site.run(&["plan"]);
    assert_eq!(run.code, 0, "{}", all_output(&run));
    plain(&run.stderr)
}

const STAFF_ROOM: &str = r##"
[[rooms]]
room = "#staff-{tag}:{server}"
groups = ["CN=Top,{ou}"]
create = { name = "Staff" }
"##;

const IN_CHAIN: &str = "[groups]\nin_chain = true\n";

#[test]
fn nested_ad_groups_with_a_cycle_fill_a_room_read_recursively_or_in_chain() {
    let site = AdSite::new("nested");
    for name in ["ann", "ben", "cat", "dan"] {
        site.add_agent(agent(name));
    }
    // Top → Mid → Low → Top (a cycle); dan is in no group.
    let low = site.add_group("Low", &[site.dn("cat")]);
    let mid = site.add_group("Mid", &[site.dn("ben"), low.clone()]);
    let top = site.add_group("Top", &[site.dn("ann"), mid.clone()]);
    site.change_member(&low, "add", &top);
    configure_rooms(&site, "", STAFF_ROOM);
    let staff = alias(&site, "staff");

    let plan = site.run(&["plan"]);
    assert_eq!(plan.code, 2, "{}", all_output(&plan));
    assert!(
        plan.stdout.contains(&format!(
            "why: joins {staff}: member of {top} via {mid} → {low}"
        )),
        "{}",
        plan.stdout
    );
    assert!(plan.stdout.contains("cycle"), "{}", plan.stdout);
    assert_eq!(
        plan.stdout.matches(&format!("joins {staff}:")).count(),
        3,
        "each member joins once: {}",
        plan.stdout
    );
    let run = site.sync_ok();
    assert!(run.stdout.contains("Rooms: "), "{}", run.stdout);
    assert_eq!(
        site.synapse.room_members(&staff),
        mxids(&site, &["ann", "ben", "cat"])
    );
    let log = nothing_to_do(&site);
    assert!(log.contains("directory groups complete groups=3 "), "{log}");

    // The DC resolves the nesting (and the cycle) itself: the same members, nothing to do;
    // only the rule's group is read, not its members.
    configure_rooms(&site, IN_CHAIN, STAFF_ROOM);
    let log = nothing_to_do(&site);
    assert!(log.contains("directory groups complete groups=1 "), "{log}");

    // Cat leaves the innermost group: she leaves the (managed) room on the next run.
    site.change_member(&low, "delete", &site.dn("cat"));
    let plan = site.run(&["plan"]);
    assert_eq!(plan.code, 2, "{}", all_output(&plan));
    assert!(plan.stdout.contains(&site.mxid("cat")), "{}", plan.stdout);
    site.sync_ok();
    assert_eq!(
        site.synapse.room_members(&staff),
        mxids(&site, &["ann", "ben"])
    );
    // And the recursive reader agrees.
    configure_rooms(&site, "", STAFF_ROOM);
    nothing_to_do(&site);
}

#[test]
fn agents_whose_primary_group_a_rule_names_are_its_members() {
    let site = AdSite::new("primary");
    site.add_agent(agent("ann"));
    site.add_agent(agent("eve"));
    // Eve's primary group becomes Prim (she must be a member first, as in AD).
    let prim = site.add_group("Prim", &[site.dn("eve")]);
    site.set_attr("eve", "primaryGroupID", &[&site.rid(&prim)]);
    let listed = site.dc.search(&prim, "(objectClass=*)", &["member"]);
    assert!(
        !listed.contains("member: "),
        "the DC no longer lists a primary member in `member`: {listed}"
    );
    let users = format!("CN=Domain Users,CN=Users,{}", site.dc.base_dn);
    let listed = site.dc.search(&users, "(objectClass=*)", &["member"]);
    assert!(!listed.contains(&site.sam("ann")), "{listed}");
    let rooms = r##"
[[rooms]]
room = "#users-{tag}:{server}"
groups = ["CN=Domain Users,CN=Users,{base}"]
create = { name = "Domain Users" }

[[rooms]]
room = "#prim-{tag}:{server}"
groups = ["CN=Prim,{ou}"]
create = { name = "Prim" }
"##;
    // Domain Users is outside the site's OU: groups are searched from the domain root.
    let groups = "[groups]\nbases = [\"{base}\"]\n";
    configure_rooms(&site, groups, rooms);
    let plan = site.run(&["plan"]);
    assert_eq!(plan.code, 2, "{}", all_output(&plan));
    assert!(
        plan.stdout.contains(&format!(
            "joins {}: member of {users} (primary group)",
            alias(&site, "users")
        )),
        "{}",
        plan.stdout
    );
    site.sync_ok();
    assert_eq!(
        site.synapse.room_members(&alias(&site, "prim")),
        mxids(&site, &["eve"])
    );
    // Ann through her primary group (513); Eve whichever way the DC lists her now.
    let users_room = site.synapse.room_members(&alias(&site, "users"));
    assert!(users_room.contains(&site.mxid("ann")), "{users_room:?}");
    nothing_to_do(&site);
    // In-chain mode counts primary members the same way.
    configure_rooms(&site, &format!("{groups}in_chain = true\n"), rooms);
    nothing_to_do(&site);
}

#[test]
fn a_group_of_1600_members_is_read_completely_in_explicit_range_slices() {
    let site = AdSite::new("ranged");
    let dns = bulk_agents(&site, 1600);
    let mut ldif = format!(
        "dn: CN=Big,{ou}\nobjectClass: group\nsAMAccountName: {sam}\n",
        ou = site.ou,
        sam = site.sam("big")
    );
    for dn in &dns {
        ldif.push_str(&format!("member: {dn}\n"));
    }
    site.dc.ldbadd(&ldif);
    let rooms = r##"
[[rooms]]
room = "#big-{tag}:{server}"
groups = ["CN=Big,{ou}"]
create = { name = "Big" }
"##;
    // Samba sends all 1,600 at once unless asked for slices (it does not enforce MaxValRange);
    // asked for 500 at a time it answers 0-499, 500-999, 1000-1499, then 1500-*.
    for (groups, ranged) in [
        ("", "ranged=0 "),
        ("[groups]\nrange_size = 500\n", "ranged=1 "),
    ] {
        configure_rooms(&site, groups, rooms);
        let run = site.run(&["-v", "plan", "--json"]);
        assert_eq!(run.code, 2, "{groups}: {}", run.stderr);
        let plan: Value = serde_json::from_str(&run.stdout).unwrap();
        let joins = plan_joins(&plan);
        assert_eq!(joins.len(), 1600, "{groups}: {}", plan["rooms"]["warnings"]);
        assert!(joins.contains(&site.mxid("b1599")), "{groups}");
        let log = plain(&run.stderr);
        assert!(log.contains(ranged), "{groups}: {log}");
        if ranged == "ranged=1 " {
            assert!(log.contains("more=1100"), "{log}");
            for (slice, values) in [("500-999", 500), ("1000-1499", 500), ("1500-1999", 100)] {
                let line = format!("request=member;range={slice} values={values}\n");
                assert!(log.contains(&line), "{line}: {log}");
            }
        }
    }
}

/// The room rules of docs/active-directory.md ("Rooms from AD groups"), with the test's names:
/// nested Staff (in chain), a power level from Heads, and Domain Users by primary group.
#[test]
fn the_documented_room_rules_work() {
    let site = AdSite::new("docrooms");
    for name in ["ann", "ben", "cat"] {
        site.add_agent(agent(name));
    }
    let dev = site.add_group("Dev", &[site.dn("ben")]);
    site.add_group("Staff", &[site.dn("ann"), dev]);
    site.add_group("Heads", &[site.dn("ann")]);
    let doc =
        std::fs::read_to_string(common::repo_root().join("docs/active-directory.md")).unwrap();
    let rules = doc
        .split("```toml\n")
        .find(|block| block.starts_with("[groups]"))
        .and_then(|rest| rest.split("```").next())
        .expect("a toml block with [groups] in docs/active-directory.md");
    let rules = rules
        .replace("OU=Groups,DC=ad,DC=example,DC=org", "{ou}")
        .replace("DC=ad,DC=example,DC=org", "{base}")
        .replace("#staff:example.org", "#staff-{tag}:{server}")
        .replace("#everyone:example.org", "#everyone-{tag}:{server}");
    assert!(!rules.contains("example"), "not replaced: {rules}");
    configure_rooms(&site, "", &rules);
    let (code, plan) = site.plan_json();
    assert_eq!(code, 2, "{plan}");
    let power: Vec<(&str, i64)> = plan["rooms"]["actions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["kind"] == "set_power")
        .map(|a| (a["mxid"].as_str().unwrap(), a["to"].as_i64().unwrap()))
        .collect();
    let ann = site.mxid("ann");
    assert_eq!(power, vec![(ann.as_str(), 50)], "{}", plan["rooms"]);
    site.sync_ok();
    assert_eq!(
        site.synapse.room_members(&alias(&site, "staff")),
        mxids(&site, &["ann", "ben"])
    );
    assert_eq!(
        site.synapse.room_members(&alias(&site, "everyone")),
        mxids(&site, &["ann", "ben", "cat"])
    );
    nothing_to_do(&site);
}
