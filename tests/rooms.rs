//! Room and space memberships end to end: the real binary, a real slapd, a real Synapse.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
#[path = "rooms/site.rs"]
mod site;

use std::collections::BTreeSet;

use common::site::plan_joins;
use common::{Slapd, Synapse};
use serde_json::{json, Value};
use site::Site;

use common::synapse::url_path_part as enc;

/// The room id an alias points to, if any.
fn room_id(synapse: &Synapse, alias: &str) -> Option<String> {
    synapse.room_id(alias)
}

/// Joined members of the room an alias names.
fn members(site: &Site, alias: &str) -> BTreeSet<String> {
    site.synapse.room_members(alias)
}

fn set(site: &Site, uids: &[&str]) -> BTreeSet<String> {
    uids.iter().map(|u| site.mxid(u)).collect()
}

/// The room's full state event of a type (state key "").
fn state(site: &Site, alias: &str, kind: &str) -> Value {
    let id = room_id(site.synapse, alias).unwrap();
    let (s, v) = site.synapse.request(
        "GET",
        &format!("/_synapse/admin/v1/rooms/{}/state", enc(&id)),
        None,
    );
    assert_eq!(s, 200, "{v}");
    v["state"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == kind && e["state_key"] == "")
        .map(|e| e["content"].clone())
        .unwrap_or(Value::Null)
}

/// A room made by hand (by the admin, outside the daemon) with an alias.
fn hand_room(site: &Site, name: &str) -> String {
    let (s, v) = site.synapse.request(
        "POST",
        "/_matrix/client/v3/createRoom",
        Some(&json!({"room_alias_name": format!("{name}-{}", site.tag), "preset": "private_chat"})),
    );
    assert_eq!(s, 200, "{v}");
    site.alias(name)
}

/// Joins a user by hand (admin API), as an admin would.
fn hand_join(site: &Site, alias: &str, mxid: &str) {
    let (s, v) = site.synapse.request(
        "POST",
        &format!("/_synapse/admin/v1/join/{}", enc(alias)),
        Some(&json!({ "user_id": mxid })),
    );
    assert_eq!(s, 200, "{v}");
}

/// Writes since `mark` about the site's users or about these rooms (by alias).
fn writes_about(site: &Site, mark: u64, aliases: &[String]) -> Vec<(String, String)> {
    let ids: Vec<String> = aliases
        .iter()
        .filter_map(|a| room_id(site.synapse, a))
        .collect();
    site.synapse
        .writes_since(mark)
        .into_iter()
        .filter(|(_, p)| p.contains(&site.tag) || ids.iter().any(|id| p.contains(id.as_str())))
        .collect()
}

#[test]
fn joins_by_group_nested_group_with_a_cycle_attribute_and_filter() {
    let site = Site::with_rules(
        "rooms-basic",
        r##"
[[rooms]]
room = "#staff-{tag}:example.org"
groups = ["cn=top,{ou}"]
create = { name = "Staff" }

[[rooms]]
room = "#bosses-{tag}:example.org"
attribute = "title"
values = ["Boss"]
create = { name = "Bosses" }

[[rooms]]
room = "#clerks-{tag}:example.org"
filter = "(title=Clerk)"
create = { name = "Clerks" }
"##,
    );
    for uid in ["ann", "ben", "cat", "dan", "eve"] {
        let title = if uid == "eve" || uid == "ann" {
            "title: Boss"
        } else {
            "title: Clerk"
        };
        site.add_agent(uid, &[title]);
    }
    // top → mid → low → top (a cycle); eve is in no group.
    let top = format!("cn=top,{}", site.ou);
    let mid = format!("cn=mid,{}", site.ou);
    let low = format!("cn=low,{}", site.ou);
    site.add_group("top", &[site.agent_dn("ann"), mid.clone()]);
    site.add_group("mid", &[site.agent_dn("ben"), low.clone()]);
    site.add_group("low", &[site.agent_dn("cat"), top.clone()]);

    let plan = site.run(&["plan"]);
    assert_eq!(plan.code, 2, "{}\n{}", plan.stdout, plan.stderr);
    assert!(
        plan.stdout.contains(&format!(
            "why: joins {}: member of {top} via {mid} → {low}",
            site.alias("staff")
        )),
        "{}",
        plan.stdout
    );
    assert!(plan.stdout.contains("cycle"), "{}", plan.stdout);

    let run = site.sync_ok();
    assert!(run.stdout.contains("Rooms: "), "{}", run.stdout);
    assert_eq!(
        members(&site, &site.alias("staff")),
        set(&site, &["ann", "ben", "cat"])
    );
    assert_eq!(
        members(&site, &site.alias("bosses")),
        set(&site, &["ann", "eve"])
    );
    assert_eq!(
        members(&site, &site.alias("clerks")),
        set(&site, &["ben", "cat", "dan"])
    );
    assert_eq!(
        state(&site, &site.alias("staff"), "m.room.name")["name"],
        "Staff"
    );

    // Nothing to do the second time, and nothing written.
    let mark = site.synapse.log_mark();
    let (code, json) = site.plan_json();
    assert_eq!(code, 0, "{json}");
    site.sync_ok();
    let rooms = [
        site.alias("staff"),
        site.alias("bosses"),
        site.alias("clerks"),
    ];
    assert_eq!(writes_about(&site, mark, &rooms), vec![]);
    let status = site.run(&["status"]);
    assert!(
        status
            .stdout
            .contains("Managed rooms: 3 (3 created), 8 memberships and 0 power levels added"),
        "{}",
        status.stdout
    );
}

#[test]
fn templated_rooms_are_created_once_and_a_department_move_moves_rooms() {
    let site = Site::with_rules(
        "rooms-dept",
        r##"
[[rooms]]
room = "#ministry-{tag}:example.org"
space = true
everyone = true
mode = "additive"
create = { name = "Ministry" }

[[rooms]]
room = "#dept-{departmentNumber|localpart}:example.org"
everyone = true
parent = "#ministry-{tag}:example.org"
create = { name = "Department {departmentNumber}", topic = "Everyone in {departmentNumber}", encrypted = true }
"##,
    );
    let dsi = format!("dsi-{}", site.tag);
    let rh = format!("rh-{}", site.tag);
    site.add_agent("ann", &[&format!("departmentNumber: {dsi}")]);
    site.add_agent("ben", &[&format!("departmentNumber: {dsi}")]);
    site.add_agent("cat", &[&format!("departmentNumber: {rh}")]);
    // Rooms created by a sync, as it reports them (the shared Synapse serves other tests too).
    let creates = || {
        let run = site.run(&["sync", "--json"]);
        assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
        let json: Value = serde_json::from_str(&run.stdout).unwrap();
        json["rooms"]["created"].as_u64().unwrap()
    };
    assert_eq!(creates(), 3, "the space and two department rooms");
    let dsi_room = format!("#dept-{dsi}:example.org");
    let rh_room = format!("#dept-{rh}:example.org");
    let space = site.alias("ministry");
    assert_eq!(members(&site, &dsi_room), set(&site, &["ann", "ben"]));
    assert_eq!(members(&site, &rh_room), set(&site, &["cat"]));
    assert_eq!(members(&site, &space), set(&site, &["ann", "ben", "cat"]));
    assert_eq!(
        state(&site, &dsi_room, "m.room.encryption")["algorithm"],
        "m.megolm.v1.aes-sha2"
    );
    assert_eq!(
        state(&site, &dsi_room, "m.room.topic")["topic"],
        format!("Everyone in {dsi}")
    );
    // Space hierarchy: child in the space, parent in the room.
    let space_id = room_id(site.synapse, &space).unwrap();
    let dsi_id = room_id(site.synapse, &dsi_room).unwrap();
    let (_, v) = site.synapse.request(
        "GET",
        &format!("/_synapse/admin/v1/rooms/{}/state", enc(&space_id)),
        None,
    );
    assert!(
        v["state"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "m.space.child" && e["state_key"] == dsi_id),
        "{v}"
    );
    assert_eq!(state(&site, &space, "m.room.create")["type"], "m.space");

    // A new agent in an existing department: no new room.
    site.add_agent("dan", &[&format!("departmentNumber: {rh}")]);
    assert_eq!(creates(), 0, "templated rooms are created once");
    assert_eq!(members(&site, &rh_room), set(&site, &["cat", "dan"]));

    // Ben moves from DSI to RH: leaves the DSI room, joins the RH one, stays in the space.
    site.replace(
        &site.agent_dn("ben"),
        "departmentNumber",
        std::slice::from_ref(&rh),
    );
    let plan = site.run(&["plan"]);
    assert!(
        plan.stdout
            .contains(&format!("why: leaves {dsi_room}: no longer in the rule")),
        "{}",
        plan.stdout
    );
    site.sync_ok();
    assert_eq!(members(&site, &dsi_room), set(&site, &["ann"]));
    assert_eq!(members(&site, &rh_room), set(&site, &["ben", "cat", "dan"]));
    assert_eq!(members(&site, &space).len(), 4);
}

#[test]
fn additive_managed_and_exact_rooms_and_hand_added_members() {
    let site = Site::with_rules("rooms-modes", "");
    for uid in ["ann", "ben"] {
        site.add_agent(uid, &[]);
    }
    let team = site.add_group("team", &[site.agent_dn("ann"), site.agent_dn("ben")]);
    // Existing rooms made by hand, with someone added by hand in each.
    let outsider = site
        .synapse
        .create_user(&format!("outsider-{}", site.tag), None);
    let rooms: Vec<String> = ["additive", "managed", "exact"]
        .iter()
        .map(|m| hand_room(&site, m))
        .collect();
    for r in &rooms {
        hand_join(&site, r, &outsider);
    }
    site.set_rules(&format!(
        r##"
[[rooms]]
room = "{}"
groups = ["{team}"]
mode = "additive"

[[rooms]]
room = "{}"
groups = ["{team}"]
mode = "managed"

[[rooms]]
room = "{}"
groups = ["{team}"]
mode = "exact"
"##,
        rooms[0], rooms[1], rooms[2]
    ));
    let (_, plan) = site.plan_json();
    assert_eq!(plan["removals"], 1, "{plan}");
    site.sync_ok();
    let both = set(&site, &["ann", "ben"]);
    let with_outsider = |s: &BTreeSet<String>| {
        let mut s = s.clone();
        s.insert(outsider.clone());
        s
    };
    assert_eq!(members(&site, &rooms[0]), with_outsider(&both));
    assert_eq!(
        members(&site, &rooms[1]),
        with_outsider(&both),
        "a hand-added member stays"
    );
    assert_eq!(
        members(&site, &rooms[2]),
        both,
        "exact: the outsider is removed"
    );

    // Ben leaves the group.
    site.replace(&team, "member", &[site.agent_dn("ann")]);
    let (_, plan) = site.plan_json();
    assert_eq!(plan["removals"], 2, "managed + exact: {plan}");
    site.sync_ok();
    let ann = set(&site, &["ann"]);
    assert_eq!(
        members(&site, &rooms[0]),
        with_outsider(&both),
        "additive never removes"
    );
    assert_eq!(members(&site, &rooms[1]), with_outsider(&ann));
    assert_eq!(members(&site, &rooms[2]), ann);
    let (code, plan) = site.plan_json();
    assert_eq!(code, 0, "{plan}");
}

#[test]
fn power_levels_are_granted_and_taken_back_keeping_other_entries() {
    let site = Site::with_rules("rooms-power", "");
    for uid in ["ann", "ben", "cat"] {
        site.add_agent(uid, &[]);
    }
    let all = site.add_group(
        "all",
        &[
            site.agent_dn("ann"),
            site.agent_dn("ben"),
            site.agent_dn("cat"),
        ],
    );
    let heads = site.add_group("heads", &[site.agent_dn("ann"), site.agent_dn("ben")]);
    site.set_rules(&format!(
        r##"
[[rooms]]
room = "#{{tag}}-power:example.org"
groups = ["{all}"]
power = [{{ groups = ["{heads}"], level = 50 }}]
create = {{ name = "Power" }}
"##
    ));
    site.sync_ok();
    let room = format!("#{}-power:example.org", site.tag);
    let users = |site: &Site| state(site, &room, "m.room.power_levels")["users"].clone();
    let u = users(&site);
    assert_eq!(u[site.mxid("ann")], 50, "{u}");
    assert_eq!(u[site.mxid("ben")], 50, "{u}");
    assert!(u.get(site.mxid("cat")).is_none(), "{u}");

    // An entry set by hand survives the daemon's writes.
    let id = room_id(site.synapse, &room).unwrap();
    let mut levels = state(&site, &room, "m.room.power_levels");
    levels["users"]["@someone:example.org"] = json!(20);
    let (s, v) = site.synapse.request(
        "PUT",
        &format!(
            "/_matrix/client/v3/rooms/{}/state/m.room.power_levels/",
            enc(&id)
        ),
        Some(&levels),
    );
    assert_eq!(s, 200, "{v}");

    site.replace(&heads, "member", &[site.agent_dn("ann")]);
    let plan = site.run(&["plan"]);
    assert!(
        plan.stdout.contains("Revoke power level (1)"),
        "{}",
        plan.stdout
    );
    site.sync_ok();
    let u = users(&site);
    assert_eq!(u[site.mxid("ann")], 50, "{u}");
    assert!(u.get(site.mxid("ben")).is_none(), "{u}");
    assert_eq!(u["@someone:example.org"], 20, "{u}");
    assert_eq!(
        members(&site, &room).len(),
        3,
        "losing power is not leaving"
    );
}

#[test]
fn a_group_of_1600_members_is_read_completely_among_many_groups() {
    let site = Site::with_rules("rooms-big", "");
    for uid in ["ann", "ben", "cat"] {
        site.add_agent(uid, &[]);
    }
    // 1,600 member values, the three agents first, in the middle and last; 60 more groups so
    // the group search takes two pages of 50.
    let mut members: Vec<String> = (0..1600)
        .map(|i| format!("uid=ghost{i},{}", site.ou))
        .collect();
    members[0] = site.agent_dn("ann");
    members[799] = site.agent_dn("ben");
    members[1599] = site.agent_dn("cat");
    let big = site.add_group("big", &members);
    let mut ldif = String::new();
    for i in 0..60 {
        ldif.push_str(&format!(
            "dn: cn=small{i},{ou}\nobjectClass: groupOfNames\ncn: small{i}\nmember: {big}\n\n",
            ou = site.ou
        ));
    }
    site.slapd.add_ldif(&ldif);
    site.set_rules(
        r##"
[[rooms]]
room = "#big-{tag}:example.org"
groups = ["cn=small59,{ou}"]
create = { name = "Big" }
"##,
    );
    let (code, plan) = site.plan_json();
    assert_eq!(code, 2, "{plan}");
    assert_eq!(
        plan_joins(&plan),
        set(&site, &["ann", "ben", "cat"]),
        "{plan}"
    );
}

#[test]
fn a_room_made_by_someone_else_is_joined_after_making_the_daemon_room_admin() {
    let site = Site::with_rules("rooms-foreign", "");
    site.add_agent("ann", &[]);
    let owner = site
        .synapse
        .create_user(&format!("owner-{}", site.tag), None);
    let (s, v) = site.synapse.request(
        "POST",
        &format!("/_synapse/admin/v1/users/{owner}/login"),
        Some(&json!({})),
    );
    assert_eq!(s, 200, "{v}");
    let token = v["access_token"].as_str().unwrap().to_string();
    let alias = site.alias("foreign");
    let resp = ureq::post(&format!(
        "{}/_matrix/client/v3/createRoom",
        site.synapse.url
    ))
    .set("Authorization", &format!("Bearer {token}"))
    .send_json(
        json!({"room_alias_name": format!("foreign-{}", site.tag), "preset": "private_chat"}),
    )
    .unwrap();
    assert_eq!(resp.status(), 200);
    site.set_rules(&format!("[[rooms]]\nroom = \"{alias}\"\neveryone = true\n"));
    let run = site.sync_ok();
    assert!(!run.stdout.contains("FAILED"), "{}", run.stdout);
    let m = members(&site, &alias);
    assert!(m.contains(&site.mxid("ann")), "{m:?}");
    assert!(m.contains(&owner), "{m:?}");
    let (code, plan) = site.plan_json();
    assert_eq!(code, 0, "{plan}");
}

/// Moves an entry under another parent (its entryUUID, so its identity, stays).
fn move_entry(site: &Site, uid: &str, from: &str, to: &str) {
    site.slapd.modify_ldif(&format!(
        "dn: uid={uid},{from}\nchangetype: modrdn\nnewrdn: uid={uid}\ndeleteoldrdn: 1\nnewsuperior: {to}\n"
    ));
}

#[test]
fn an_agent_gone_from_the_directory_leaves_managed_rooms_and_is_back_on_return() {
    let site = Site::with_rules(
        "rooms-return",
        r##"
[[rooms]]
room = "#return-{tag}:example.org"
everyone = true
create = { name = "Return" }

[[rooms]]
room = "#return-additive-{tag}:example.org"
everyone = true
mode = "additive"
create = { name = "Return additive" }
"##,
    );
    site.add_agent("ann", &[]);
    site.add_agent("ben", &[]);
    site.sync_ok();
    let (managed, additive) = (site.alias("return"), site.alias("return-additive"));
    assert_eq!(members(&site, &managed), set(&site, &["ann", "ben"]));

    // Ben moves out of the synced OU: gone from the directory as the daemon sees it.
    let elsewhere = site.slapd.new_ou("elsewhere");
    move_entry(&site, "ben", &site.ou, &elsewhere);
    let plan = site.run(&["plan"]);
    assert!(
        plan.stdout.contains(&format!(
            "why: leaves {managed}: not in the directory any more"
        )),
        "{}",
        plan.stdout
    );
    site.sync_ok();
    assert_eq!(members(&site, &managed), set(&site, &["ann"]));
    assert_eq!(members(&site, &additive), set(&site, &["ann", "ben"]));

    // Back: same entryUUID, same account, back in the managed room.
    move_entry(&site, "ben", &elsewhere, &site.ou);
    site.sync_ok();
    assert_eq!(members(&site, &managed), set(&site, &["ann", "ben"]));
    let (code, plan) = site.plan_json();
    assert_eq!(code, 0, "{plan}");
}

/// `[groups] range_size` is for Active Directory; a directory without range options (slapd
/// ignores `member;range=0-1`) still gives whole groups, never empty ones.
#[test]
fn explicit_ranges_on_a_directory_without_them_still_read_whole_groups() {
    let site = Site::with_rules(
        "rooms-range",
        r##"
[groups]
range_size = 2

[[rooms]]
room = "#team-{tag}:example.org"
groups = ["cn=team,{ou}"]
create = { name = "Team" }
"##,
    );
    for uid in ["ann", "ben", "cat"] {
        site.add_agent(uid, &[]);
    }
    let members: Vec<String> = ["ann", "ben", "cat"]
        .iter()
        .map(|u| site.agent_dn(u))
        .collect();
    site.add_group("team", &members);
    let (code, plan) = site.plan_json();
    assert_eq!(code, 2, "{plan}");
    assert_eq!(plan_joins(&plan), set(&site, &["ann", "ben", "cat"]));
}

/// slapd names an entry whose cn holds a comma `cn=Martin\2C Jean,…`, while a group loaded with
/// slapadd keeps its values as written: `cn=Martin\, Jean,…`, in another case or spacing.
/// DNs are compared per RFC 4514, so every spelling, in `member` and `uniqueMember` and in the
/// rules, joins the room.
#[test]
fn members_named_with_escaped_commas_either_way_join() {
    // Its own slapd: a bulk load stops and restarts it.
    let slapd: &'static Slapd = Box::leak(Box::new(Slapd::start()));
    let site = Site::with_rules_on(
        slapd,
        "rooms-dn",
        r##"
[[rooms]]
room = "#names-{tag}:example.org"
groups = ["CN=Names, {ou}"]
create = { name = "Names" }

[[rooms]]
room = "#unique-{tag}:example.org"
groups = ["cn=unique,{ou}"]
create = { name = "Unique" }

[[rooms]]
room = "#paris-{tag}:example.org"
groups = ['CN=team\, paris , {ou}']
create = { name = "Paris" }
"##,
    );
    let (ou, tag) = (&site.ou, &site.tag);
    let upper = ou.to_uppercase().replace(',', " , ");
    // Two agents named by a cn holding a comma; their mxids are `<givenName>.<tag>`.
    let mut ldif = String::new();
    for (uid, cn) in [("martin", "Martin\\, Jean"), ("durand", "Durand\\, Paul")] {
        ldif += &format!(
            "dn: cn={cn},{ou}\nobjectClass: inetOrgPerson\nuid: {uid}\ngivenName: {uid}\nsn: {tag}\n\n"
        );
    }
    ldif += &format!(
        "dn: cn=names,{ou}\nobjectClass: groupOfNames\ncn: names\n\
         member: cn=Martin\\, Jean,{ou}\nmember: CN=durand\\2c paul , {upper}\n\n\
         dn: cn=unique,{ou}\nobjectClass: groupOfUniqueNames\ncn: unique\n\
         uniqueMember: cn=Martin\\2C Jean,{ou}\nuniqueMember: cn=Durand\\, Paul,{ou}\n\n\
         dn: cn=Team\\, Paris,{ou}\nobjectClass: groupOfNames\ncn: Team, Paris\n\
         member: cn=Martin\\, Jean,{ou}\nmember: cn=Durand\\2C Paul,{ou}\n\n"
    );
    let path = slapd.log_path().with_file_name("rooms-dn.ldif");
    std::fs::write(&path, ldif).unwrap();
    slapd.bulk_load(&path);

    // What slapd sends: the entries' DNs with `\2C`, the groups' values as loaded.
    let (code, out) = slapd.search_as(
        &slapd.sync_dn,
        &slapd.sync_password,
        &[
            "-b",
            ou,
            "(|(uid=martin)(cn=names)(cn=unique))",
            "member",
            "uniqueMember",
        ],
    );
    assert_eq!(code, 0, "{out}");
    for seen in [
        "dn: cn=Martin\\2C Jean,",
        "member: cn=Martin\\, Jean,",
        "member: CN=durand\\2c paul , ",
        "uniqueMember: cn=Durand\\, Paul,",
    ] {
        assert!(out.contains(seen), "`{seen}` in\n{out}");
    }

    // Every rule group found, every member matched: no warning (but the login one: this
    // mapping declares no login path).
    let (code, plan) = site.plan_json();
    assert_eq!(code, 2, "{plan}");
    let warnings: Vec<&Value> = plan["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|w| !w.as_str().unwrap().contains("no [login] section"))
        .collect();
    assert!(warnings.is_empty(), "{plan}");
    site.sync_ok();
    for room in ["names", "unique", "paris"] {
        assert_eq!(
            members(&site, &site.alias(room)),
            set(&site, &["martin", "durand"]),
            "{room}"
        );
    }
}
