//! Hands out localparts to new agents: the wanted one if free, else the first free of
//! `name2`, `name3`, … A localpart is taken if the ledger holds it or this plan gave it out.
//! Agents are allocated in stable-id order, so the same directory always gives the same
//! answer, and an agent never loses a localpart it was given.
//!
//! Nothing Synapse would refuse is handed out (see [`localpart_base`]): a localpart outside
//! its grammar leaves the new agent without an account (a skip, shown in the plan), and one
//! too long for a user id of 255 bytes on this server is cut. The cut is made here, where the
//! server name is known, and only for new agents: an account keeps the localpart it has.

use std::collections::HashMap;

use crate::directory::StableId;
use crate::ledger::LedgerView;
use crate::mapping::limits::{localpart_budget, localpart_problem};
use crate::mapping::DesiredAccount;

/// Room a cut localpart leaves for a collision suffix: `name2` … `name999` all fit.
const SUFFIX_ROOM: usize = 3;

/// The localpart new agents wanting `wanted` are offered first (then `{text}2`, `{text}3`, …).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Base<'w> {
    pub text: &'w str,
    /// True when `wanted` was too long and `text` is its beginning.
    pub cut: bool,
}

/// The base localpart for an agent wanting `wanted` on `server_name`, or why Synapse would
/// refuse it (the agent then gets no account). A localpart too long for a user id of 255 bytes
/// is cut — deterministically, leaving room for a suffix of three digits (`name2` …
/// `name999`), without a separator at its end — rather than skipped: the agent still gets an
/// account, and the plan says so.
pub fn localpart_base<'w>(wanted: &'w str, server_name: &str) -> Result<Base<'w>, String> {
    if let Some(why) = localpart_problem(wanted) {
        return Err(format!(
            "no account: the localpart {} is not one Synapse takes for a new user ({why})",
            shown(wanted)
        ));
    }
    let budget = localpart_budget(server_name);
    if wanted.len() <= budget {
        return Ok(Base {
            text: wanted,
            cut: false,
        });
    }
    // The grammar is ASCII: any byte is a character boundary.
    let text = wanted
        .get(..budget.saturating_sub(SUFFIX_ROOM))
        .unwrap_or_default()
        .trim_end_matches(['.', '_', '=', '-']);
    match localpart_problem(text) {
        None => Ok(Base { text, cut: true }),
        Some(why) => Err(format!(
            "no account: the localpart {} is too long for a user id on {server_name} (at most \
             {budget} characters), and cut it is not one Synapse takes ({why})",
            shown(wanted)
        )),
    }
}

/// `text` in backquotes for a message, abbreviated when long: its first 60 characters and
/// its length.
pub(super) fn shown(text: &str) -> String {
    const HEAD: usize = 60;
    match text.char_indices().nth(HEAD) {
        None => format!("`{text}`"),
        Some((at, _)) => format!(
            "`{}…` ({} characters)",
            text.get(..at).unwrap_or_default(),
            text.chars().count()
        ),
    }
}

pub(super) struct LocalpartAllocator<'a> {
    ledger: &'a LedgerView,
    /// The longest localpart a user id on the server can hold.
    budget: usize,
    /// localpart → the DN of whoever has it (for the reason text); built on first need, so a
    /// plan with no new agent never builds it.
    taken: Option<HashMap<String, String>>,
}

impl<'a> LocalpartAllocator<'a> {
    pub(super) fn new(ledger: &'a LedgerView, server_name: &str) -> Self {
        LocalpartAllocator {
            ledger,
            budget: localpart_budget(server_name),
            taken: None,
        }
    }

    /// The localpart for a new agent whose base is `base` (from [`localpart_base`]), and a
    /// note when it is not the base.
    pub(super) fn allocate(
        &mut self,
        want: &DesiredAccount,
        base: &str,
    ) -> (String, Option<String>) {
        let ledger = self.ledger;
        let taken = self.taken.get_or_insert_with(|| {
            ledger
                .accounts
                .values()
                .map(|r| (r.localpart.clone(), r.dn.clone()))
                .collect()
        });
        let Some(holder) = taken.get(base).cloned() else {
            taken.insert(base.to_string(), want.dn.clone());
            return (base.to_string(), None);
        };
        let budget = self.budget;
        let localpart = (2u32..)
            .map(|n| format!("{base}{n}"))
            .take_while(|candidate| candidate.len() <= budget)
            .find(|candidate| !taken.contains_key(candidate))
            .unwrap_or_else(|| {
                let short = short_id(&want.id);
                let keep = budget.saturating_sub(short.len() + 1).min(base.len());
                format!("{}-{short}", base.get(..keep).unwrap_or_default())
            });
        taken.insert(localpart.clone(), want.dn.clone());
        let note = format!(
            "{} is already {holder}'s, so {}",
            shown(base),
            shown(&localpart)
        );
        (localpart, Some(note))
    }
}

fn short_id(id: &StableId) -> String {
    id.0.chars()
        .filter(char::is_ascii_alphanumeric)
        .take(8)
        .collect::<String>()
        .to_lowercase()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::ledger::{AccountRecord, AccountStatus, Origin};
    use crate::mapping::{AgentState, Desired};
    use crate::plan::{plan, Action, Plan, Policy};

    /// 230 bytes: a localpart holds 255 - 232 = 23, a cut one 20.
    fn long_server() -> String {
        format!("{}.example.org", "s".repeat(218))
    }

    fn policy(server_name: &str) -> Policy {
        Policy::for_tests(server_name, 1_000, 0)
    }

    fn want(id: &str, localpart: &str) -> DesiredAccount {
        DesiredAccount {
            id: StableId(id.into()),
            dn: format!("uid={id},ou=people,dc=example,dc=org"),
            localpart: localpart.into(),
            display_name: id.into(),
            emails: vec![],
            state: AgentState::Active,
            login: None,
            external_ids: vec![],
        }
    }

    fn record(id: &str, localpart: &str, server_name: &str) -> AccountRecord {
        AccountRecord {
            id: StableId(id.into()),
            mxid: format!("@{localpart}:{server_name}"),
            localpart: localpart.into(),
            dn: format!("uid={id},ou=people,dc=example,dc=org"),
            display_name: id.into(),
            emails: vec![],
            external_ids: vec![],
            origin: Origin::Created,
            created_at: 0,
            updated_at: 0,
            status: AccountStatus::Active,
        }
    }

    /// Plans `new` agents (id, wanted localpart) against a ledger holding `held` (id,
    /// localpart), on `server_name`.
    fn plan_on(server_name: &str, held: &[(&str, &str)], new: &[(&str, &str)]) -> Plan {
        let view = LedgerView {
            accounts: held
                .iter()
                .map(|(id, lp)| (StableId((*id).into()), record(id, lp, server_name)))
                .collect::<BTreeMap<_, _>>(),
            ..LedgerView::default()
        };
        let mut accounts: Vec<DesiredAccount> = held
            .iter()
            .chain(new)
            .map(|(id, lp)| want(id, lp))
            .collect();
        accounts.sort_by(|a, b| a.id.cmp(&b.id));
        let desired = Desired {
            accounts,
            ..Desired::default()
        };
        plan(&desired, &view, &policy(server_name))
    }

    fn localparts(plan: &Plan) -> Vec<(String, String)> {
        let mut created: Vec<(String, String)> = plan
            .actions
            .iter()
            .filter_map(|a| match a {
                Action::CreateAccount { id, localpart, .. } => {
                    Some((id.0.clone(), localpart.clone()))
                }
                _ => None,
            })
            .collect();
        created.sort();
        created
    }

    #[test]
    fn long_localparts_are_cut_to_fit_the_user_id_and_collisions_still_resolved() {
        let server = long_server();
        let a = |n: usize| "a".repeat(n);
        let b22 = "b".repeat(22);
        let held_b: Vec<(String, String)> = std::iter::once(b22.clone())
            .chain((2..=9).map(|n| format!("{b22}{n}")))
            .enumerate()
            .map(|(i, lp)| (format!("h{i}"), lp))
            .collect();
        type Case = (
            Vec<(String, String)>,
            Vec<(&'static str, String)>,
            Vec<(&'static str, String)>,
        );
        let cases: Vec<Case> = vec![
            // Fits: as it is.
            (
                vec![],
                vec![("x", "jean.martin".into())],
                vec![("x", "jean.martin".into())],
            ),
            // 23 fits exactly; 24 is cut to 20.
            (vec![], vec![("x", a(23))], vec![("x", a(23))]),
            (vec![], vec![("x", a(24))], vec![("x", a(20))]),
            // Two agents wanting one long localpart: the cut one and its suffix, in id order.
            (
                vec![],
                vec![("y", a(30)), ("x", a(40))],
                vec![("x", a(20)), ("y", format!("{}2", a(20)))],
            ),
            // No separator left at the end of a cut.
            (
                vec![],
                vec![("x", "abcdefghijklmnopqrs.tuvwxyz".into())],
                vec![("x", "abcdefghijklmnopqrs".into())],
            ),
            // The cut localpart is someone's already: the next suffix.
            (
                vec![("z".into(), a(20)), ("w".into(), format!("{}2", a(20)))],
                vec![("x", a(50))],
                vec![("x", format!("{}3", a(20)))],
            ),
            // An uncut localpart near the limit: `…9` fits, `…10` would not; the last resort
            // (a piece of the stable id) is cut to fit too.
            (
                held_b,
                vec![("new", b22.clone())],
                vec![("new", format!("{}-new", "b".repeat(19)))],
            ),
        ];
        for (i, (held, new, expected)) in cases.into_iter().enumerate() {
            let held: Vec<(&str, &str)> =
                held.iter().map(|(i, l)| (i.as_str(), l.as_str())).collect();
            let new: Vec<(&str, &str)> = new.iter().map(|(i, l)| (*i, l.as_str())).collect();
            let p = plan_on(&server, &held, &new);
            let expected: Vec<(String, String)> = expected
                .into_iter()
                .map(|(i, l)| (i.to_string(), l))
                .collect();
            assert_eq!(localparts(&p), expected, "case {i}: {:?}", p.warnings);
            assert_eq!(p, plan_on(&server, &held, &new), "case {i}: deterministic");
            for action in &p.actions {
                assert!(action.mxid().len() <= 255, "case {i}: {}", action.mxid());
            }
        }
    }

    #[test]
    fn a_cut_is_a_warning_naming_the_dn_and_part_of_the_reason() {
        let server = long_server();
        let p = plan_on(&server, &[], &[("x", &"a".repeat(30)), ("y", "short")]);
        assert_eq!(p.warnings.len(), 1, "{:?}", p.warnings);
        assert!(
            p.warnings[0].starts_with("uid=x,ou=people,dc=example,dc=org: the localpart `aaaa")
                && p.warnings[0].contains("cut to 20 characters"),
            "{}",
            p.warnings[0]
        );
        let reason = p.actions.iter().find(|a| a.id().0 == "x").unwrap().reason();
        assert!(reason.contains("cut to 20 characters"), "{reason}");
    }

    #[test]
    fn an_account_keeps_its_localpart_whatever_the_limit_says_now() {
        // Made when the rule gave a long localpart (or on another server name).
        let server = long_server();
        let long = "a".repeat(40);
        let p = plan_on(&server, &[("x", &long)], &[]);
        assert!(!p.has_changes(), "{p:?}");
        assert_eq!(p.unchanged, 1);
    }

    #[test]
    fn localparts_synapse_refuses_leave_new_agents_without_an_account_and_say_why() {
        let cases = [
            ("", "it is empty"),
            ("12345", "guests"),
            ("_svc", "leading `_`"),
            ("zoë.ørsted", "a-z"),
            ("JMartin", "a-z"),
        ];
        for (wanted, why) in cases {
            let p = plan_on(
                "example.org",
                &[("old", wanted)],
                &[("new", wanted), ("ok", "ok")],
            );
            assert_eq!(
                localparts(&p),
                [("ok".to_string(), "ok".to_string())],
                "{wanted}"
            );
            let [skipped] = &p.skipped[..] else {
                panic!("{wanted}: {:?}", p.skipped)
            };
            assert_eq!(skipped.id, Some(StableId("new".into())));
            assert_eq!(skipped.dn, "uid=new,ou=people,dc=example,dc=org");
            assert!(
                skipped.reason.contains("not one Synapse takes") && skipped.reason.contains(why),
                "{wanted}: {}",
                skipped.reason
            );
            // The agent who has an account under it keeps it (and would get its updates).
            assert_eq!(p.unchanged, 1, "{wanted}");
        }
        // A server name so long that a cut leaves nothing.
        let server = format!("{}.org", "s".repeat(248));
        let p = plan_on(&server, &[], &[("x", "jean.martin")]);
        assert!(p.actions.is_empty());
        assert!(p.skipped[0].reason.contains("too long"), "{:?}", p.skipped);
    }

    #[test]
    fn long_texts_are_shown_abbreviated() {
        assert_eq!(shown("jean.martin"), "`jean.martin`");
        let long = "a".repeat(300);
        assert_eq!(
            shown(&long),
            format!("`{}…` (300 characters)", "a".repeat(60))
        );
    }
}
