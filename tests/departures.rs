//! Departures end to end: HR marks an agent in the directory, the real binary suspends then
//! deactivates the account on a real Synapse, and brings it back on return. Time moves with
//! the test clock of the debug build (`site.sync_ok_at(t)`), never with sleeps; `--now` is for
//! previews (`plan`, `explain`, `status`) and refused by `sync`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::accounts::{at, emails, flag, DAY, T0};
use common::site::{Settings, Site};
use serde_json::Value;

/// A site whose mapping reads `employeeType=departed` as disabled, `shadowExpire` as an expiry
/// date and `ou=departed` as the departed OU, with a 7-day grace period.
fn hr_site(name: &str, brake: &str) -> Site {
    let site = Site::new(name);
    site.slapd.add_ldif(&format!(
        "dn: ou=departed,{}\nobjectClass: organizationalUnit\nou: departed\n",
        site.ou
    ));
    site.configure(&hr_settings(&site, brake));
    site
}

fn hr_settings(site: &Site, brake: &str) -> Settings {
    Settings {
        mapping_extra: format!(
            r#"
[departure]
departed_ous = ["ou=departed,{ou}"]
disabled = [{{ attribute = "employeeType", values = ["departed"] }}]
expires = [{{ attribute = "shadowExpire", format = "days" }}]
"#,
            ou = site.ou
        ),
        config_extra: format!("\n[departures]\ngrace = \"7d\"\n\n[brake]\n{brake}\n"),
        ..Settings::default()
    }
}

/// Generous limits so a test that is not about the brake is never stopped by it.
const NO_BRAKE: &str = "max_departures_percent = 100.0\nmax_shrink_percent = 100.0";

fn user(site: &Site, mxid: &str) -> Value {
    site.synapse
        .get_user(mxid)
        .unwrap_or_else(|| panic!("{mxid} does not exist"))
}

#[test]
fn a_disabled_agent_is_suspended_then_deactivated_after_the_grace_period() {
    let site = hr_site("disabled", NO_BRAKE);
    site.add_agent(
        "anne",
        "Anne",
        "Leroy",
        "DSI",
        Some("anne.leroy@example.org"),
    );
    site.add_agent("paul", "Paul", "Girard", "DSI", None);
    site.sync_ok_at(T0);
    let anne = site.mxid("anne.leroy");

    site.set_attr("anne", "employeeType", &["departed"]);
    let (code, plan) = site.plan_json_with(&["--now", &at(T0 + DAY)]);
    assert_eq!(
        (code, plan["counts"]["suspend_account"].as_u64()),
        (2, Some(1)),
        "{plan}"
    );
    assert_eq!(
        plan["actions"][0]["reason"],
        "departed: disabled: employeeType=departed"
    );
    site.sync_ok_at(T0 + DAY);
    let u = user(&site, &anne);
    assert!(flag(&u, "suspended") && !flag(&u, "deactivated"), "{u}");
    assert!(!flag(&user(&site, &site.mxid("paul.girard")), "suspended"));

    let status = site.run(&["status"]);
    assert!(
        status
            .stdout
            .contains(&format!("{anne}: deactivation due 2026-12-09T00:00:00Z")),
        "{}",
        status.stdout
    );

    // Six days into the grace period: nothing to do, nothing written.
    let mark = site.synapse.log_mark();
    let run = site.sync_ok_at(T0 + 7 * DAY);
    assert!(run.stdout.contains("0 planned"), "{}", run.stdout);
    assert_eq!(site.writes_since(mark), vec![]);

    site.sync_ok_at(T0 + 8 * DAY);
    assert!(flag(&user(&site, &anne), "deactivated"));

    let history = site.run(&["history", "--user", &anne]);
    let kinds: Vec<&str> = history
        .stdout
        .lines()
        .filter(|l| !l.starts_with(' '))
        .filter_map(|l| l.split_whitespace().nth(1))
        .collect();
    assert_eq!(
        kinds,
        vec!["create_account", "suspend_account", "deactivate_account"],
        "{}",
        history.stdout
    );
    assert!(
        history.stdout.contains("why: departed: disabled: employeeType=departed, since 2026-12-02T00:00:00Z; grace 7days ended"),
        "{}",
        history.stdout
    );
}

#[test]
fn a_deleted_entry_and_a_move_into_the_departed_ou_are_departures() {
    let site = hr_site("gone", NO_BRAKE);
    site.add_agent("gone", "Gaston", "Perrin", "RH", None);
    site.add_agent("moved", "Maud", "Fabre", "RH", None);
    site.add_agent("stays", "Sacha", "Roy", "RH", None);
    site.sync_ok_at(T0);

    site.slapd.delete(&format!("uid=gone,{}", site.ou));
    site.slapd.modify_ldif(&format!(
        "dn: uid=moved,{ou}\nchangetype: modrdn\nnewrdn: uid=moved\ndeleteoldrdn: 1\nnewsuperior: ou=departed,{ou}\n",
        ou = site.ou
    ));
    let run = site.sync_ok_at(T0 + DAY);
    assert!(run.stdout.contains("2 applied"), "{}", run.stdout);
    assert!(flag(&user(&site, &site.mxid("gaston.perrin")), "suspended"));
    assert!(flag(&user(&site, &site.mxid("maud.fabre")), "suspended"));
    assert!(!flag(&user(&site, &site.mxid("sacha.roy")), "suspended"));
    let explain = site.run(&["explain", "moved", "--now", &at(T0 + 2 * DAY)]);
    assert!(
        explain
            .stdout
            .contains(&format!("departed: moved into ou=departed,{}", site.ou)),
        "{}",
        explain.stdout
    );
    assert!(
        explain.stdout.contains("deactivation"),
        "{}",
        explain.stdout
    );
}

/// The departed OU as the rules write it (other case, spacing, `\,` for a comma) and as slapd
/// names it (`ou=Departed\2C 2026,…`) are one DN.
#[test]
fn a_departed_ou_written_another_way_still_matches() {
    let site = Site::new("gone-dn");
    let ou = &site.ou;
    site.slapd.add_ldif(&format!(
        "dn: ou=Departed\\, 2026,{ou}\nobjectClass: organizationalUnit\nou: Departed, 2026\n"
    ));
    let written = format!(
        "OU=departed\\, 2026 , {}",
        ou.to_uppercase().replace(',', ", ")
    );
    site.configure(&Settings {
        mapping_extra: format!("\n[departure]\ndeparted_ous = ['{written}']\n"),
        config_extra: format!("\n[departures]\ngrace = \"7d\"\n\n[brake]\n{NO_BRAKE}\n"),
        ..Settings::default()
    });
    site.add_agent("moved", "Maud", "Fabre", "RH", None);
    site.add_agent("stays", "Sacha", "Roy", "RH", None);
    site.sync_ok_at(T0);

    site.slapd.modify_ldif(&format!(
        "dn: uid=moved,{ou}\nchangetype: modrdn\nnewrdn: uid=moved\ndeleteoldrdn: 1\nnewsuperior: ou=Departed\\, 2026,{ou}\n"
    ));
    let run = site.sync_ok_at(T0 + DAY);
    assert!(run.stdout.contains("1 applied"), "{}", run.stdout);
    assert!(flag(&user(&site, &site.mxid("maud.fabre")), "suspended"));
    assert!(!flag(&user(&site, &site.mxid("sacha.roy")), "suspended"));
    // `explain` finds the agent by its DN spelled yet another way.
    let dn = format!("UID=Moved, ou=departed\\2c 2026,{ou}");
    let explain = site.run(&["explain", &dn, "--now", &at(T0 + DAY)]);
    assert!(
        explain
            .stdout
            .contains(&format!("departed: moved into {written}")),
        "{}\n{}",
        explain.stdout,
        explain.stderr
    );
}

#[test]
fn a_returning_agent_gets_the_same_account_back_with_its_profile() {
    let site = hr_site("return", NO_BRAKE);
    site.add_agent(
        "rose",
        "Rose",
        "Marchand",
        "Cabinet",
        Some("rose.marchand@example.org"),
    );
    site.add_agent(
        "remi",
        "Rémi",
        "Blanc",
        "Cabinet",
        Some("remi.blanc@example.org"),
    );
    site.sync_ok_at(T0);
    let (rose, remi) = (site.mxid("rose.marchand"), site.mxid("remi.blanc"));

    site.set_attr("rose", "employeeType", &["departed"]);
    site.set_attr("remi", "employeeType", &["departed"]);
    site.sync_ok_at(T0 + DAY);
    site.sync_ok_at(T0 + 9 * DAY); // both deactivated
    assert!(flag(&user(&site, &remi), "deactivated"));
    assert!(
        emails(&user(&site, &remi)).is_empty(),
        "Synapse drops e-mails on deactivation"
    );

    // Rémi is rehired after deactivation, Rose before her grace period ended… in a new run.
    site.set_attr("remi", "employeeType", &[]);
    let run = site.sync_ok_at(T0 + 10 * DAY);
    assert!(run.stdout.contains("1 applied"), "{}", run.stdout);
    let u = user(&site, &remi);
    assert!(
        !flag(&u, "deactivated") && !flag(&u, "suspended") && !flag(&u, "locked"),
        "{u}"
    );
    assert_eq!(emails(&u), vec!["remi.blanc@example.org"]);
    assert_eq!(
        u["displayname"],
        format!("Rémi Blanc {} [Cabinet]", site.tag)
    );

    // A second agent, suspended only: unsuspended, same mxid, no new account.
    site.add_agent("sam", "Sam", "Noel", "Cabinet", None);
    site.sync_ok_at(T0 + 10 * DAY);
    site.set_attr("sam", "employeeType", &["departed"]);
    site.sync_ok_at(T0 + 11 * DAY);
    assert!(flag(&user(&site, &site.mxid("sam.noel")), "suspended"));
    site.set_attr("sam", "employeeType", &["rehired"]);
    site.sync_ok_at(T0 + 12 * DAY);
    assert!(!flag(&user(&site, &site.mxid("sam.noel")), "suspended"));
    assert!(site
        .synapse
        .get_user(&format!(
            "@sam.noel-{}2:{}",
            site.tag, site.synapse.server_name
        ))
        .is_none());
    assert!(
        flag(&user(&site, &rose), "deactivated"),
        "Rose is still gone"
    );
}

#[test]
fn a_departure_date_in_the_future_does_nothing_until_it_passes() {
    let site = hr_site("expiry", NO_BRAKE);
    // shadowExpire in days since 1970: leaves on 2026-12-11.
    let leaves = (T0 + 10 * DAY) / DAY;
    site.add_agent_with(
        "eve",
        "Ève",
        "Caron",
        "RH",
        None,
        &format!("objectClass: shadowAccount\nshadowExpire: {leaves}\n"),
    );
    let run = site.sync_ok_at(T0);
    assert!(run.stdout.contains("1 applied"), "{}", run.stdout);
    let eve = site.mxid("eve.caron");

    let (code, plan) = site.plan_json_with(&["--now", &at(T0 + 5 * DAY)]);
    assert_eq!(code, 0, "{plan}");
    assert_eq!(plan["pending"][0]["mxid"], eve.as_str());
    assert!(!flag(&user(&site, &eve), "suspended"));

    site.sync_ok_at(T0 + 11 * DAY);
    assert!(flag(&user(&site, &eve), "suspended"));
}

#[test]
fn the_lock_step_locks_and_protected_or_unmanaged_accounts_are_untouched() {
    let site = hr_site("lock", NO_BRAKE);
    let mut settings = hr_settings(&site, &format!("{NO_BRAKE}\nprotected = [\"@vip-*\"]"));
    settings.config_extra = settings.config_extra.replace(
        "grace = \"7d\"",
        "grace = \"7d\"\nreversible_step = \"lock\"",
    );
    // The protected pattern names this test's VIP.
    settings.config_extra = settings
        .config_extra
        .replace("@vip-*", &format!("@vip.boss-{}:*", site.tag));
    site.configure(&settings);
    site.add_agent("lucie", "Lucie", "Vidal", "DSI", None);
    site.add_agent("boss", "VIP", "Boss", "Cabinet", None);
    site.add_agent("stays", "Simon", "Reste", "DSI", None);
    let unmanaged = site.synapse.create_user(
        &format!("outsider-{}", site.tag),
        Some("Not from the directory"),
    );
    site.sync_ok_at(T0);

    site.slapd.delete(&format!("uid=lucie,{}", site.ou));
    site.slapd.delete(&format!("uid=boss,{}", site.ou));
    let (_, plan) = site.plan_json_with(&["--now", &at(T0 + DAY)]);
    assert_eq!(
        plan["protected"][0]["mxid"],
        site.mxid("vip.boss"),
        "{plan}"
    );
    site.sync_ok_at(T0 + DAY);
    site.sync_ok_at(T0 + 30 * DAY);

    let lucie = user(&site, &site.mxid("lucie.vidal"));
    assert!(
        flag(&lucie, "locked") && flag(&lucie, "deactivated"),
        "{lucie}"
    );
    let boss = user(&site, &site.mxid("vip.boss"));
    assert!(
        !flag(&boss, "locked") && !flag(&boss, "suspended") && !flag(&boss, "deactivated"),
        "{boss}"
    );
    let outsider = user(&site, &unmanaged);
    assert!(
        !flag(&outsider, "locked")
            && !flag(&outsider, "suspended")
            && !flag(&outsider, "deactivated")
    );
}

#[test]
fn mass_removal_engages_the_brake_until_an_operator_allows_it() {
    let site = hr_site(
        "brake",
        "max_departures = 50\nmax_departures_percent = 20.0\npercent_from = 3\nmax_shrink_percent = 20.0",
    );
    for i in 0..10 {
        site.add_agent(&format!("a{i}"), "Agent", &format!("Num{i}"), "DSI", None);
    }
    site.sync_ok_at(T0);
    for i in 0..3 {
        site.slapd.delete(&format!("uid=a{i},{}", site.ou));
    }
    site.add_agent("new", "Nadia", "Nouvelle", "DSI", None);

    let plan = site.run(&["plan", "--now", &at(T0 + DAY)]);
    assert!(
        plan.stdout
            .contains("BRAKE: `sync` will hold back the 3 departure(s)"),
        "{}",
        plan.stdout
    );
    let mark = site.synapse.log_mark();
    let run = site.run_at(T0 + DAY, &["sync"]);
    assert_eq!(run.code, 3, "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stdout.contains("3 departure(s) held back"),
        "{}",
        run.stdout
    );
    // The new agent was still created; nobody was suspended.
    let writes = site.writes_since(mark);
    assert!(
        writes.iter().all(|(_, path)| !path.contains("suspend")),
        "{writes:?}"
    );
    assert!(site
        .synapse
        .get_user(&site.mxid("nadia.nouvelle"))
        .is_some());
    assert!(!flag(&user(&site, &site.mxid("agent.num0")), "suspended"));
    let status = site.run(&["status"]);
    assert!(
        status
            .stdout
            .contains("BRAKE ENGAGED: 3 departure(s) held back"),
        "{}",
        status.stdout
    );

    site.sync_ok_at_with(T0 + DAY, &["--allow-mass-changes"]);
    for i in 0..3 {
        assert!(flag(
            &user(&site, &site.mxid(&format!("agent.num{i}"))),
            "suspended"
        ));
    }
    assert!(!flag(&user(&site, &site.mxid("agent.num3")), "suspended"));
}

#[test]
fn a_filter_that_matches_nobody_never_suspends_anyone() {
    let site = hr_site("filter", "");
    for i in 0..4 {
        site.add_agent(&format!("f{i}"), "Fabien", &format!("Num{i}"), "RH", None);
    }
    site.sync_ok_at(T0);
    let mut broken = hr_settings(&site, "");
    broken.filter = Some("(&(objectClass=inetOrgPerson)(employeeType=nobody-has-this))".into());
    site.configure(&broken);
    let mark = site.synapse.log_mark();
    let run = site.run_at(T0 + DAY, &["sync"]);
    assert_eq!(run.code, 3, "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stdout
            .contains("the directory returned no agents at all"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("the agent filter (`")
            && run.stdout.contains("changed since the last good run")
            && run.stdout.contains("4 action(s) held back, the whole plan"),
        "{}",
        run.stdout
    );
    assert_eq!(site.writes_since(mark), vec![]);
}

#[test]
fn logout_devices_at_the_reversible_step_when_configured() {
    let site = hr_site("logout", NO_BRAKE);
    let mut settings = hr_settings(&site, NO_BRAKE);
    settings.config_extra = settings
        .config_extra
        .replace("grace = \"7d\"", "grace = \"7d\"\nlogout_devices = true");
    site.configure(&settings);
    site.add_agent("dev", "Denis", "Appareil", "DSI", None);
    site.add_agent("other", "Odile", "Reste", "DSI", None);
    site.sync_ok_at(T0);
    let mxid = site.mxid("denis.appareil");

    // Give the agent a device: a password (test only) and a real login.
    let (status, _) = site.synapse.request(
        "PUT",
        &format!("/_synapse/admin/v2/users/{mxid}"),
        Some(&serde_json::json!({ "password": "device-test-pw", "logout_devices": false })),
    );
    assert_eq!(status, 200);
    let (status, body) = site.synapse.request(
        "POST",
        "/_matrix/client/v3/login",
        Some(&serde_json::json!({
            "type": "m.login.password",
            "identifier": { "type": "m.id.user", "user": mxid },
            "password": "device-test-pw",
        })),
    );
    assert_eq!(status, 200, "{body}");
    let devices = |site: &Site| {
        let (_, list) = site.synapse.request(
            "GET",
            &format!("/_synapse/admin/v2/users/{mxid}/devices"),
            None,
        );
        list["devices"].as_array().map(Vec::len).unwrap_or(0)
    };
    assert_eq!(devices(&site), 1);

    site.set_attr("dev", "employeeType", &["departed"]);
    site.sync_ok_at(T0 + DAY);
    assert!(flag(&user(&site, &mxid), "suspended"));
    assert_eq!(
        devices(&site),
        0,
        "the departing agent's devices were logged out"
    );
}

#[test]
fn commands_that_write_refuse_now_and_write_nothing() {
    let site = hr_site("now", NO_BRAKE);
    site.add_agent("nina", "Nina", "Avance", "DSI", None);
    let mark = site.synapse.log_mark();
    for command in ["sync", "run", "check", "history"] {
        let run = site.run(&[command, "--now", &at(T0 + 30 * DAY)]);
        assert_eq!(run.code, 2, "{command}: {}\n{}", run.stdout, run.stderr);
        assert!(
            run.stderr
                .contains("--now is for previews only (plan, explain, status)"),
            "{command}: {}",
            run.stderr
        );
    }
    // Before the subcommand too (a global option).
    let run = site.run(&["--now", &at(T0), "sync"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("`sync` writes"), "{}", run.stderr);
    assert!(
        !site.dir.path().join("state").exists(),
        "no state directory, no ledger"
    );
    assert_eq!(site.writes_since(mark), vec![]);
    assert!(site.synapse.get_user(&site.mxid("nina.avance")).is_none());

    // Previews still take it, and write nothing either.
    let (code, plan) = site.plan_json_with(&["--now", &at(T0 + 30 * DAY)]);
    assert_eq!(
        (code, plan["counts"]["create_account"].as_u64()),
        (2, Some(1)),
        "{plan}"
    );
    assert!(!site.dir.path().join("state").exists());
    site.sync_ok_at(T0);
    let status = site.run(&["status", "--now", &at(T0 + DAY)]);
    assert_eq!(status.code, 0, "{}\n{}", status.stdout, status.stderr);
}

/// 36 agents in six departments (as in `scripts/sample-directory.ldif`), one room per
/// department and the heads as its moderators.
fn department_site(name: &str) -> (Site, Settings, Vec<String>) {
    let site = Site::new(name);
    let short = ["dsi", "fin", "rh", "com", "jur", "cab"];
    let departments: Vec<String> = short.iter().map(|d| format!("{d}-{}", site.tag)).collect();
    let sizes = [10, 7, 6, 5, 5, 3];
    let mut ldif = String::new();
    let mut heads = Vec::new();
    for ((d, dept), size) in short.iter().zip(&departments).zip(sizes) {
        // uid `dsi0`, mxid `site.mxid("agent.dsi0")`.
        for i in 0..size {
            let uid = format!("{d}{i}");
            ldif.push_str(&format!(
                "dn: uid={uid},{ou}\nobjectClass: inetOrgPerson\nuid: {uid}\ncn: Agent {uid}\ngivenName: Agent\nsn: {uid} {tag}\nou: {dept}\n\n",
                ou = site.ou,
                tag = site.tag
            ));
            if i == 0 {
                heads.push(format!("member: uid={uid},{}\n", site.ou));
            }
        }
    }
    ldif.push_str(&format!(
        "dn: cn=heads,{ou}\nobjectClass: groupOfNames\ncn: heads\n{}",
        heads.concat(),
        ou = site.ou
    ));
    site.slapd.add_ldif(&ldif);
    let settings = Settings {
        mapping_extra: format!(
            r##"
[[rooms]]
room = "#dept-{{ou|localpart}}:{server}"
everyone = true
power = [{{ groups = ["cn=heads,{ou}"], level = 50 }}]
create = {{ name = "Department {{ou}}" }}
"##,
            server = site.synapse.server_name,
            ou = site.ou
        ),
        page_size: Some(50),
        ..Settings::default()
    };
    site.configure(&settings);
    (site, settings, departments)
}

#[test]
fn a_department_move_in_a_small_directory_passes_the_default_brake_a_filter_matching_nobody_does_not(
) {
    let (site, settings, departments) = department_site("dept36");
    let room = |dept: &str| format!("#dept-{dept}:{}", site.synapse.server_name);
    site.sync_ok();
    let (dsi, rh) = (&departments[0], &departments[2]);
    let head = site.mxid("agent.dsi0");
    assert_eq!(site.synapse.room_members(&room(dsi)).len(), 10);
    assert!(site.synapse.room_members(&room(dsi)).contains(&head));

    // The head of DSI moves to RH: out of the DSI room and its moderators. 2 of 36 managed
    // accounts is 5.6%, over the default 5% that once counted every removal together.
    site.set_attr("dsi0", "ou", &[rh]);
    let (code, plan) = site.plan_json();
    assert_eq!(code, 2, "{plan}");
    assert_eq!(plan["removals"], 2, "{plan}");
    assert_eq!(plan["brake"], Value::Null, "{plan}");
    let run = site.sync_ok();
    assert!(!run.stdout.contains("BRAKE"), "{}", run.stdout);
    assert!(!site.synapse.room_members(&room(dsi)).contains(&head));
    assert!(site.synapse.room_members(&room(rh)).contains(&head));

    // A filter that matches nobody: every account and membership would go. Nothing does.
    let members: Vec<usize> = departments
        .iter()
        .map(|d| site.synapse.room_members(&room(d)).len())
        .collect();
    let mut broken = settings.clone();
    broken.filter = Some("(&(objectClass=inetOrgPerson)(employeeType=nobody-has-this))".into());
    site.configure(&broken);
    let (_, plan) = site.plan_json();
    assert_eq!(plan["counts"]["suspend_account"], 36, "{plan}");
    let mark = site.synapse.log_mark();
    let run = site.run(&["sync"]);
    assert_eq!(run.code, 3, "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stdout
            .contains("the directory returned no agents at all"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout
            .contains("36 departures are 100.0% of 36 managed accounts"),
        "{}",
        run.stdout
    );
    let rooms: Vec<String> = departments
        .iter()
        .filter_map(|d| site.synapse.room_id(&room(d)))
        .collect();
    let writes: Vec<_> = site
        .synapse
        .writes_since(mark)
        .into_iter()
        .filter(|(_, p)| p.contains(&site.tag) || rooms.iter().any(|r| p.contains(r.as_str())))
        .collect();
    assert_eq!(writes, vec![], "nothing departed, nobody left a room");
    let after: Vec<usize> = departments
        .iter()
        .map(|d| site.synapse.room_members(&room(d)).len())
        .collect();
    assert_eq!(after, members);
    assert!(!flag(&user(&site, &head), "suspended"));
}
