//! Turns a [`Snapshot`] and the mapping [`Rules`] into the [`Desired`] state: which accounts
//! should exist and what their profiles should say. Pure: no LDAP, no homeserver, no ledger.

mod departure;
pub mod limits;
pub mod login;
mod normalize;
pub mod rooms;
mod rules;
mod template;

pub use departure::{AgentState, DepartureRules, DisabledSignal, ExpiryFormat, ExpirySignal};
pub use login::{LoginPath, LoginRules, ShadowPolicy};
pub use normalize::{strip_accents, to_localpart};
pub use rules::{AccountRules, Adopt, AgentRules, OnConflict, Rules};
pub use template::{MissingAttribute, Template, TemplateError};

use serde::Serialize;

use crate::directory::{Entry, Snapshot, StableId};
use crate::homeserver::ExternalId;

/// An account as the directory says it should be.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DesiredAccount {
    pub id: StableId,
    pub dn: String,
    /// The localpart this agent would get if new; an existing account keeps its own. As the
    /// rule gives it: the plan checks it against what Synapse takes and cuts it to the length
    /// a user id on the server can hold (see [`crate::plan::localpart_base`]).
    pub localpart: String,
    pub display_name: String,
    /// Sorted, without duplicates.
    pub emails: Vec<String>,
    /// Active, leaving on a set date, or gone.
    pub state: AgentState,
    /// The value of the rules' login attribute, if any.
    pub login: Option<String>,
    /// The SSO ids the account should hold (`[login] path = "sso"`), sorted; empty otherwise.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub external_ids: Vec<ExternalId>,
}

/// An agent entry that cannot become an account this run; it is left alone, never acted on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SkippedAgent {
    /// Known when the entry had a stable id: such an agent is left exactly as it is (never
    /// taken for gone).
    pub id: Option<StableId>,
    pub dn: String,
    pub reason: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Desired {
    /// Sorted by stable id.
    pub accounts: Vec<DesiredAccount>,
    pub skipped: Vec<SkippedAgent>,
    /// Notes that do not stop an agent (e.g. an e-mail value that is not an address).
    pub warnings: Vec<String>,
    /// Room and space memberships (`[[rooms]]` rules).
    pub rooms: rooms::DesiredRooms,
    /// Whom `accounts` speaks for.
    #[serde(skip)]
    pub coverage: Coverage,
}

/// Whom a [`Desired`] state speaks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Coverage {
    /// Every agent: a managed account missing from it is gone.
    #[default]
    Complete,
    /// Only the agents that changed since the last read: a managed account missing from it is
    /// gone only if the directory said so (`gone`). Accounts in their grace period still move
    /// on to deactivation.
    Changes {
        gone: std::collections::BTreeSet<StableId>,
    },
}

impl Desired {
    /// The accounts in stable-id order (sorted here only if they are not already), for a
    /// merge with the ledger's id-ordered records.
    pub fn accounts_by_id(&self) -> Vec<&DesiredAccount> {
        let mut wants: Vec<&DesiredAccount> = self.accounts.iter().collect();
        if !wants.is_sorted_by(|a, b| a.id <= b.id) {
            wants.sort_unstable_by(|a, b| a.id.cmp(&b.id));
        }
        wants
    }

    /// The ids of agents the directory returned but that could not be mapped: neither wanted
    /// nor gone.
    pub fn skipped_ids(&self) -> std::collections::HashSet<&StableId> {
        self.skipped.iter().filter_map(|s| s.id.as_ref()).collect()
    }
}

impl Coverage {
    /// True when a managed account that `accounts` does not mention has left.
    pub fn is_gone(&self, id: &StableId) -> bool {
        match self {
            Coverage::Complete => true,
            Coverage::Changes { gone } => gone.contains(id),
        }
    }
}

/// Maps every entry of the snapshot as of `now` (Unix seconds, for expiry dates); a bad entry
/// is skipped with its reason, the rest goes on.
pub fn map_snapshot(snapshot: &Snapshot, rules: &Rules, now: i64) -> Desired {
    let mut mapper = Mapper::new(rules, now);
    for entry in &snapshot.entries {
        mapper.add(entry);
    }
    mapper.finish(snapshot)
}

/// [`map_snapshot`] one entry at a time, as the directory hands them on, so the entries need
/// not all be held: only room rules read them again once all are in.
pub struct Mapper<'r> {
    rules: &'r Rules,
    now: i64,
    desired: Desired,
    emails: EmailHolders,
}

impl<'r> Mapper<'r> {
    pub fn new(rules: &'r Rules, now: i64) -> Self {
        Mapper {
            rules,
            now,
            desired: Desired::default(),
            emails: EmailHolders::default(),
        }
    }

    /// Maps one entry. Returns true when [`Mapper::finish`] needs it again (in its snapshot's
    /// `entries`): when the rules give rooms.
    pub fn add(&mut self, entry: &Entry) -> bool {
        let desired = &mut self.desired;
        match map_entry(entry, self.rules, self.now, &mut desired.warnings) {
            Ok(account) => {
                self.emails.add(desired.accounts.len(), &account.emails);
                desired.accounts.push(account);
            }
            Err(reason) => {
                tracing::warn!(dn = %entry.dn, %reason, "agent skipped");
                desired.skipped.push(SkippedAgent {
                    id: Some(entry.id.clone()),
                    dn: entry.dn.clone(),
                    reason,
                });
            }
        }
        !self.rules.rooms.rooms.is_empty()
    }

    /// The Desired state of every entry added, with the snapshot's own skipped entries and,
    /// from its kept entries, groups and filter matches, the rooms.
    pub fn finish(self, snapshot: &Snapshot) -> Desired {
        let rules = self.rules;
        let mut desired = self.finish_accounts(snapshot);
        if rules.rooms.rooms.is_empty() {
            return desired;
        }
        // Agents who left are in no room: a departure leaves the managed rooms, a return
        // rejoins.
        let mapped = desired
            .accounts
            .iter()
            .filter(|a| !matches!(a.state, AgentState::Departed { .. }))
            .map(|a| a.id.clone())
            .collect();
        desired.rooms = rooms::map_rooms(snapshot, &rules.rooms, &mapped, &mut desired.warnings);
        desired
    }

    /// [`Mapper::finish`] without the rooms: for a read of only some agents (the changes since
    /// the last read), from which no room's members can be known.
    pub fn finish_accounts(self, snapshot: &Snapshot) -> Desired {
        let Mapper {
            desired, emails, ..
        } = self;
        let mut desired = Desired {
            skipped: snapshot
                .skipped
                .iter()
                .map(|s| SkippedAgent {
                    id: None,
                    dn: s.dn.clone(),
                    reason: s.reason.clone(),
                })
                .chain(desired.skipped)
                .collect(),
            ..desired
        };
        let sharing = emails.sharing(&desired.accounts);
        // Ids are unique (the read keeps one entry per id): no order to keep among equals.
        desired.accounts.sort_unstable_by(|a, b| a.id.cmp(&b.id));
        keep_emails_unique(&mut desired, sharing);
        desired
    }
}

/// Which accounts may share an e-mail address with another, noted as each is mapped (by a
/// hash of the address) so that the check once all are in looks at those few only.
#[derive(Default)]
struct EmailHolders {
    /// Address hash → the first account (by index) with it.
    first: rustc_hash::FxHashMap<u64, usize>,
    /// Accounts with an address hash an earlier account has (and those earlier accounts).
    sharing: Vec<usize>,
}

impl EmailHolders {
    fn add(&mut self, account: usize, emails: &[String]) {
        use std::collections::hash_map::Entry as Slot;
        for address in emails {
            let hash = std::hash::BuildHasher::hash_one(&rustc_hash::FxBuildHasher, address);
            match self.first.entry(hash) {
                Slot::Vacant(slot) => {
                    slot.insert(account);
                }
                Slot::Occupied(first) => self.sharing.extend([*first.get(), account]),
            }
        }
    }

    /// The ids of the accounts that may share an address, sorted.
    fn sharing(&self, accounts: &[DesiredAccount]) -> Vec<StableId> {
        let mut ids: Vec<StableId> = self
            .sharing
            .iter()
            .filter_map(|&i| accounts.get(i))
            .map(|a| a.id.clone())
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }
}

/// An e-mail address can belong to one account only: the homeserver moves it to whichever
/// account was written last, so two agents sharing one would take it from each other on every
/// run. The agent first in stable-id order keeps it; the others go without, with a warning.
/// `sharing`: the sorted ids of every account that may share an address (the others have
/// addresses of their own).
fn keep_emails_unique(desired: &mut Desired, sharing: Vec<StableId>) {
    // Accounts are sorted by id, as `sharing` is: the indices come in account order.
    let candidates: Vec<usize> = sharing
        .iter()
        .filter_map(|id| desired.accounts.binary_search_by(|a| a.id.cmp(id)).ok())
        .collect();
    for (i, address, first) in shared_emails(&desired.accounts, &candidates) {
        if let Some(account) = desired.accounts.get_mut(i) {
            let note = format!(
                "{}: e-mail `{address}` is also {first}'s, left to them",
                account.dn
            );
            tracing::warn!("{note}");
            desired.warnings.push(note);
            account.emails.retain(|a| *a != address);
        }
    }
}

/// (account index, address, DN of the first account with it) of each address an earlier
/// account already has, among the `candidates` (indices in increasing order).
fn shared_emails(
    accounts: &[DesiredAccount],
    candidates: &[usize],
) -> Vec<(usize, String, String)> {
    use std::collections::hash_map::Entry as Slot;
    let mut owner: rustc_hash::FxHashMap<&str, &str> = Default::default();
    let mut shared = Vec::new();
    for (i, account) in candidates
        .iter()
        .filter_map(|&i| Some((i, accounts.get(i)?)))
    {
        for address in &account.emails {
            match owner.entry(address) {
                Slot::Vacant(slot) => {
                    slot.insert(&account.dn);
                }
                Slot::Occupied(first) => {
                    shared.push((i, address.clone(), first.get().to_string()));
                }
            }
        }
    }
    shared
}

fn map_entry(
    entry: &Entry,
    all: &Rules,
    now: i64,
    warnings: &mut Vec<String>,
) -> Result<DesiredAccount, String> {
    let rules = &all.account;
    let state = all
        .departure
        .evaluate(entry, now)
        .map_err(|e| format!("departure: {e}"))?;
    let missing = |what: &str, MissingAttribute(attr): MissingAttribute| {
        format!("{what}: attribute `{attr}` is missing")
    };
    let localpart_text = limits::nfc(
        rules
            .localpart
            .render(entry)
            .map_err(|m| missing("localpart", m))?,
    );
    // Under synapse-ldap3 a login lands on the localpart that is the login lowercased: the
    // rule's text is taken as it is, never made legal by rewriting it (a localpart Synapse
    // refuses is a skip in the plan, where an agent who already has an account keeps it).
    let localpart = match all.login.path {
        LoginPath::Ldap3 { .. } => localpart_text,
        _ => to_localpart(&localpart_text),
    };
    let display_name = display_name(
        entry,
        rules
            .display_name
            .render(entry)
            .map_err(|m| missing("display name", m))?,
        warnings,
    );
    let mut emails = Vec::new();
    for template in &rules.emails {
        for address in template
            .render_all(entry)
            .map_err(|m| missing("e-mail", m))?
        {
            let sent = limits::nfc(address.to_lowercase());
            match limits::email_problem(&sent) {
                None => emails.push(sent),
                Some(why) => {
                    let note = format!(
                        "{}: `{address}` is not an e-mail address ({why}), left out",
                        entry.dn
                    );
                    tracing::warn!("{note}");
                    warnings.push(note);
                }
            }
        }
    }
    emails.sort();
    emails.dedup();
    Ok(DesiredAccount {
        id: entry.id.clone(),
        dn: entry.dn.clone(),
        localpart,
        display_name,
        emails,
        state,
        login: all
            .agent
            .login_attribute
            .as_deref()
            .and_then(|a| entry.first(a))
            .map(str::to_string),
        external_ids: all.login.external_ids(entry),
    })
}

/// The display name as the homeserver takes it: NFC, and cut to its limit with a warning
/// naming the DN (the cut name is what the ledger records, so the next run sees no change).
fn display_name(entry: &Entry, rendered: String, warnings: &mut Vec<String>) -> String {
    let name = limits::nfc(rendered);
    let Some(cut) = limits::cut_display_name(&name) else {
        return name;
    };
    let note = format!(
        "{}: display name of {} characters cut to {} (the homeserver refuses longer ones)",
        entry.dn,
        name.chars().count(),
        limits::DISPLAY_NAME_MAX_CHARS
    );
    tracing::warn!("{note}");
    warnings.push(note);
    cut
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn rules() -> Rules {
        Rules::parse(
            Path::new("t.toml"),
            r#"
[agent]
filter = "(objectClass=inetOrgPerson)"
id_attribute = "entryUUID"
id_format = "text"
[account]
localpart = "{givenName|ascii}.{sn|ascii}"
display_name = "{givenName} {sn} [{ou?}]"
emails = ["{mail?}"]
"#,
        )
        .unwrap()
    }

    fn entry(id: &str, attrs: &[(&str, &str)]) -> Entry {
        Entry::with_attrs(&format!("uid={id},ou=people,dc=example,dc=org"), id, attrs)
    }

    fn snapshot(entries: Vec<Entry>) -> Snapshot {
        Snapshot::complete(entries, vec![], "ldap://test")
    }

    #[test]
    fn table_of_agents() {
        struct Case {
            attrs: &'static [(&'static str, &'static str)],
            localpart: &'static str,
            display: &'static str,
            emails: &'static [&'static str],
        }
        let cases = [
            Case {
                attrs: &[
                    ("givenName", "Élodie"),
                    ("sn", "Dupré"),
                    ("ou", "DSI"),
                    ("mail", "Elodie.Dupre@Example.org"),
                ],
                localpart: "elodie.dupre",
                display: "Élodie Dupré [DSI]",
                emails: &["elodie.dupre@example.org"],
            },
            Case {
                attrs: &[("givenName", "Pierre-Yves"), ("sn", "L'Hôte")],
                localpart: "pierre-yves.lhote",
                display: "Pierre-Yves L'Hôte",
                emails: &[],
            },
            Case {
                attrs: &[
                    ("givenName", "Anne Marie"),
                    ("sn", "Le Goff"),
                    ("mail", "a@x.org"),
                    ("mail", "b@x.org"),
                    ("mail", "not-mail"),
                ],
                localpart: "anne-marie.le-goff",
                display: "Anne Marie Le Goff",
                emails: &["a@x.org", "b@x.org"],
            },
        ];
        for (i, case) in cases.iter().enumerate() {
            let d = map_snapshot(
                &snapshot(vec![entry(&format!("id{i}"), case.attrs)]),
                &rules(),
                0,
            );
            assert_eq!(d.skipped, vec![], "case {i}");
            let a = &d.accounts[0];
            assert_eq!(
                (a.localpart.as_str(), a.display_name.as_str()),
                (case.localpart, case.display),
                "case {i}"
            );
            assert_eq!(a.emails, case.emails, "case {i}");
        }
    }

    #[test]
    fn a_bad_entry_is_skipped_with_its_dn_and_the_rest_goes_on() {
        let d = map_snapshot(
            &snapshot(vec![
                entry("a", &[("givenName", "Jean"), ("sn", "Martin")]),
                entry("b", &[("givenName", "Sans")]),
                entry("c", &[("givenName", "李"), ("sn", "王")]),
                entry("d", &[("givenName", "Zoë"), ("sn", "Faure")]),
            ]),
            &rules(),
            0,
        );
        // A localpart Synapse refuses (here empty) is the plan's to skip, for a new agent
        // only: an agent who has an account keeps it, and its updates.
        assert_eq!(
            d.accounts
                .iter()
                .map(|a| a.localpart.as_str())
                .collect::<Vec<_>>(),
            vec!["jean.martin", "", "zoe.faure"]
        );
        assert_eq!(d.skipped.len(), 1);
        assert_eq!(d.skipped[0].dn, "uid=b,ou=people,dc=example,dc=org");
        assert!(
            d.skipped[0].reason.contains("`sn` is missing"),
            "{}",
            d.skipped[0].reason
        );
    }

    #[test]
    fn what_the_homeserver_would_refuse_is_made_acceptable_with_a_warning_naming_the_dn() {
        let long_ou = "Direction ".repeat(32); // 320 characters
        let d = map_snapshot(
            &snapshot(vec![
                entry(
                    "a",
                    &[
                        ("givenName", "Ele\u{301}onore"),
                        ("sn", "Dupre\u{301}"),
                        ("ou", &long_ou),
                        ("mail", "Ele\u{301}onore@Example.org"),
                        ("mail", "eleonore dupre@example.org"),
                        ("mail", "a@b@example.org"),
                    ],
                ),
                entry(
                    "b",
                    &[("givenName", "Jean"), ("sn", "Martin"), ("ou", "DSI")],
                ),
            ]),
            &rules(),
            0,
        );
        let [a, b] = &d.accounts[..] else {
            panic!("{:?}", d.accounts)
        };
        assert_eq!(b.display_name, "Jean Martin [DSI]");
        assert_eq!(a.display_name.chars().count(), 256, "{}", a.display_name);
        assert!(
            a.display_name
                .starts_with("Eléonore Dupré [Direction Direction"),
            "NFC: {}",
            a.display_name
        );
        assert!(a.display_name.ends_with("Direction…"), "{}", a.display_name);
        // Lowercased and composed: `e\u{301}` was sent as one `é`.
        assert_eq!(a.emails, ["eléonore@example.org"]);
        assert!(a.emails[0].contains('\u{e9}'));
        let dn = "uid=a,ou=people,dc=example,dc=org";
        assert_eq!(
            d.warnings,
            [
                format!("{dn}: display name of 337 characters cut to 256 (the homeserver refuses longer ones)"),
                format!("{dn}: `eleonore dupre@example.org` is not an e-mail address (it holds spaces or control characters), left out"),
                format!("{dn}: `a@b@example.org` is not an e-mail address (more than one `@`), left out"),
            ]
        );
    }

    #[test]
    fn under_synapse_ldap3_the_localpart_is_the_rule_s_text_never_rewritten() {
        let text = |login: &str| {
            format!(
                r#"
[agent]
filter = "(objectClass=inetOrgPerson)"
id_attribute = "entryUUID"
id_format = "text"
{login}
[account]
localpart = "{{uid|lower}}"
display_name = "{{cn}}"
"#
            )
        };
        let agents = vec![
            entry("a", &[("uid", "Zoe\u{308}.Orsted"), ("cn", "Zoë")]),
            entry("b", &[("uid", "j+martin"), ("cn", "Jean")]),
            entry("c", &[("uid", "cdurand"), ("cn", "Catherine")]),
        ];
        let localparts = |login: &str| {
            let rules = Rules::parse(Path::new("m.toml"), &text(login)).unwrap();
            let d = map_snapshot(&snapshot(agents.clone()), &rules, 0);
            d.accounts
                .iter()
                .map(|a| a.localpart.clone())
                .collect::<Vec<_>>()
        };
        // The login lowercased, as synapse-ldap3 asks for it (NFC); the plan skips `zoë…`.
        assert_eq!(
            localparts("[login]\npath = \"ldap3\"\nattribute = \"uid\"\n"),
            ["zoë.orsted", "j+martin", "cdurand"]
        );
        // Elsewhere the text is made a localpart.
        assert_eq!(
            localparts("[login]\npath = \"none\"\n"),
            ["zoe.orsted", "jmartin", "cdurand"]
        );
    }

    #[test]
    fn a_shared_email_stays_with_the_first_agent_only() {
        let d = map_snapshot(
            &snapshot(vec![
                entry(
                    "b",
                    &[
                        ("givenName", "Bea"),
                        ("sn", "X"),
                        ("mail", "team@x.org"),
                        ("mail", "bea@x.org"),
                    ],
                ),
                entry(
                    "a",
                    &[("givenName", "Ann"), ("sn", "X"), ("mail", "Team@x.org")],
                ),
            ]),
            &rules(),
            0,
        );
        assert_eq!(d.accounts[0].emails, vec!["team@x.org"]);
        assert_eq!(d.accounts[1].emails, vec!["bea@x.org"]);
        assert_eq!(d.warnings.len(), 1);
        assert!(
            d.warnings[0]
                .contains("uid=b,ou=people,dc=example,dc=org: e-mail `team@x.org` is also uid=a"),
            "{:?}",
            d.warnings
        );
    }

    #[test]
    fn shared_emails_go_to_the_first_in_id_order_whatever_the_read_order() {
        let agent = |id: &str, mails: &[&str]| {
            let mut attrs = vec![("givenName", id), ("sn", "X")];
            attrs.extend(mails.iter().map(|m| ("mail", *m)));
            entry(id, &attrs)
        };
        let d = map_snapshot(
            &snapshot(vec![
                agent("d", &["d@x.org", "own@x.org"]),
                agent("c", &["team@x.org"]),
                agent("a", &["team@x.org"]),
                agent("e", &["e@x.org"]),
                agent("b", &["team@x.org", "d@x.org"]),
            ]),
            &rules(),
            0,
        );
        let emails: Vec<&[String]> = d.accounts.iter().map(|a| a.emails.as_slice()).collect();
        assert_eq!(
            emails,
            [
                &["team@x.org"][..],
                &["d@x.org"],
                &[],
                &["own@x.org"],
                &["e@x.org"]
            ]
        );
        let dn = |id: &str| format!("uid={id},ou=people,dc=example,dc=org");
        let note = |who: &str, address: &str, first: &str| {
            format!(
                "{}: e-mail `{address}` is also {}'s, left to them",
                dn(who),
                dn(first)
            )
        };
        assert_eq!(
            d.warnings,
            [
                note("b", "team@x.org", "a"),
                note("c", "team@x.org", "a"),
                note("d", "d@x.org", "b")
            ]
        );
    }

    #[test]
    fn entries_mapped_as_they_come_give_the_same_desired_state() {
        let entries = vec![
            entry(
                "b",
                &[("givenName", "Bea"), ("sn", "X"), ("mail", "x@x.org")],
            ),
            entry("c", &[("givenName", "Sans")]),
            entry(
                "a",
                &[("givenName", "Ann"), ("sn", "X"), ("mail", "X@x.org")],
            ),
        ];
        let mut whole = snapshot(entries.clone());
        whole.skipped.push(crate::directory::SkippedEntry {
            dn: "cn=x".into(),
            reason: "no entryUUID".into(),
        });
        let rules = rules();
        let mut mapper = Mapper::new(&rules, 0);
        for e in &entries {
            assert!(!mapper.add(e), "no room rule: entries are not needed again");
        }
        let streamed = Snapshot {
            entries: vec![],
            passed_on: entries.len(),
            ..whole.clone()
        };
        assert_eq!(mapper.finish(&streamed), map_snapshot(&whole, &rules, 0));
        assert_eq!(streamed.agents(), whole.agents());
    }

    #[test]
    fn directory_skips_are_carried_over() {
        let mut s = snapshot(vec![]);
        s.skipped.push(crate::directory::SkippedEntry {
            dn: "cn=x".into(),
            reason: "no entryUUID".into(),
        });
        assert_eq!(
            map_snapshot(&s, &rules(), 0).skipped,
            vec![SkippedAgent {
                id: None,
                dn: "cn=x".into(),
                reason: "no entryUUID".into()
            }]
        );
    }
}
