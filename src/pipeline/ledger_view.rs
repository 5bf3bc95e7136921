//! The ledger records a plan needs. A complete plan reads every account's profile (a few bytes
//! each, see [`crate::ledger::Profile`]) beside the directory read, and decodes only the
//! records of agents whose profile is not what the directory says now, of accounts the
//! directory no longer returns, and of the holders of the localparts new agents may get.

use std::collections::{BTreeMap, HashSet};

use crate::directory::StableId;
use crate::ledger::{Ledger, LedgerError, LedgerView, Profile, ProfileFields, Profiles, Stage};
use crate::mapping::{AgentState, Desired, DesiredAccount};
use crate::plan::localpart_base;

/// The view a plan of `desired` (a complete read) needs, from every account's `profiles`.
/// One merge of the two id-ordered lists. `server_name`: where new agents get accounts (it
/// bounds the length of their localparts).
pub(super) fn complete_view(
    ledger: &Ledger,
    profiles: Profiles,
    desired: &Desired,
    server_name: &str,
) -> Result<LedgerView, LedgerError> {
    let wants = desired.accounts_by_id();
    let skipped = desired.skipped_ids();
    let (Sorted { in_step, to_read }, new_agents) =
        merge_on_two_threads(&wants, profiles, &skipped);
    let mut view = LedgerView {
        in_step,
        rooms: ledger.rooms_view()?,
        held: ledger.held_agents()?,
        intents: ledger.creation_intents()?,
        ..LedgerView::default()
    };
    for id in to_read {
        ledger.add_record(&mut view, id.0.as_bytes())?;
    }
    add_localpart_holders(ledger, &mut view, new_agents, server_name)?;
    Ok(view)
}

/// [`merge`], each half of the ids on its own thread: the directory has finished answering,
/// so its core is free, and digesting every profile is most of a complete plan's own time.
fn merge_on_two_threads<'w>(
    wants: &[&'w DesiredAccount],
    mut profiles: Profiles,
    skipped: &HashSet<&StableId>,
) -> (Sorted, Vec<&'w str>) {
    let half = wants.len() / 2;
    let profiles_after = match wants.get(half) {
        Some(first) => profiles.split_off(profiles.partition_point(|(id, _)| *id < first.id)),
        None => Vec::new(),
    };
    let (wants_before, wants_after) = wants.split_at(half);
    std::thread::scope(|scope| {
        let after = scope.spawn(|| merge(wants_after, profiles_after, skipped));
        let (mut sorted, mut new_agents) = merge(wants_before, profiles, skipped);
        let (sorted_after, new_after) = after
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e));
        sorted.in_step.extend(sorted_after.in_step);
        sorted.to_read.extend(sorted_after.to_read);
        new_agents.extend(new_after);
        (sorted, new_agents)
    })
}

/// Sorts the accounts of id-ordered `wants` and `profiles` (the accounts to plan, and the
/// localparts of the agents who have none yet).
fn merge<'w>(
    wants: &[&'w DesiredAccount],
    profiles: Profiles,
    skipped: &HashSet<&StableId>,
) -> (Sorted, Vec<&'w str>) {
    let mut sorted = Sorted::default();
    let mut new_agents = Vec::new();
    let mut profiles = profiles.into_iter().peekable();
    for want in wants {
        while let Some(gone) = profiles.next_if(|(id, _)| *id < want.id) {
            sorted.unreturned(gone, skipped);
        }
        match profiles.next_if(|(id, _)| *id == want.id) {
            None => new_agents.push(want.localpart.as_str()),
            Some((id, profile)) if is_in_step(&profile, want) => {
                sorted.in_step.push((id, profile.mxid))
            }
            Some((id, _)) => sorted.to_read.push(id),
        }
    }
    for gone in profiles {
        sorted.unreturned(gone, skipped);
    }
    (sorted, new_agents)
}

/// The accounts of a complete view, in id order: those needing nothing, and those whose
/// record the plan needs.
#[derive(Default)]
struct Sorted {
    in_step: Vec<(StableId, String)>,
    to_read: Vec<StableId>,
}

impl Sorted {
    /// An account the directory did not return: gone and deactivated, nothing more can happen
    /// to it. Otherwise a departure to plan (or a skipped agent, left as it is).
    fn unreturned(&mut self, (id, profile): (StableId, Profile), skipped: &HashSet<&StableId>) {
        if profile.stage == Stage::Deactivated && !skipped.contains(&id) {
            self.in_step.push((id, profile.mxid));
        } else {
            self.to_read.push(id);
        }
    }
}

/// True when the account needs nothing: active, and the directory wants it as it is.
fn is_in_step(profile: &Profile, want: &DesiredAccount) -> bool {
    profile.stage == Stage::Active
        && want.state == AgentState::Active
        && profile.digest == ProfileFields::wanted(want).digest()
}

/// Adds to `view` the holders of the localparts agents without an account (wanting
/// `new_agents`) may be offered on `server_name`, so that localparts are allocated as from a
/// view of every record. An agent whose localpart is too long is offered its cut form
/// ([`localpart_base`]); one whose localpart Synapse refuses is offered none.
pub(super) fn add_localpart_holders<'a>(
    ledger: &Ledger,
    view: &mut LedgerView,
    new_agents: impl IntoIterator<Item = &'a str>,
    server_name: &str,
) -> Result<(), LedgerError> {
    let mut new_by_localpart: BTreeMap<&str, usize> = BTreeMap::new();
    for wanted in new_agents {
        if let Ok(base) = localpart_base(wanted, server_name) {
            *new_by_localpart.entry(base.text).or_default() += 1;
        }
    }
    let read_before = view.accounts.len();
    for (base, new_agents) in new_by_localpart {
        ledger.add_localpart_holders(view, base, new_agents)?;
    }
    if view.accounts.len() > read_before {
        // A holder read now was in step: its record takes the place of that entry.
        let LedgerView {
            accounts, in_step, ..
        } = view;
        in_step.retain(|(id, _)| !accounts.contains_key(id));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::ReversibleStep;
    use crate::ledger::{AccountRecord, AccountStatus, AuditEntry, Origin};
    use crate::mapping::SkippedAgent;
    use crate::plan::{self, Policy};

    fn record(id: &str, localpart: &str, status: AccountStatus) -> AccountRecord {
        AccountRecord {
            id: StableId(id.into()),
            mxid: format!("@{localpart}:example.org"),
            localpart: localpart.into(),
            dn: format!("uid={id},ou=people,dc=example,dc=org"),
            display_name: format!("Agent {id}"),
            emails: vec![format!("{id}@example.org")],
            external_ids: vec![],
            origin: Origin::Created,
            created_at: 1,
            updated_at: 1,
            status,
        }
    }

    fn want(id: &str, localpart: &str) -> DesiredAccount {
        DesiredAccount {
            id: StableId(id.into()),
            dn: format!("uid={id},ou=people,dc=example,dc=org"),
            localpart: localpart.into(),
            display_name: format!("Agent {id}"),
            emails: vec![format!("{id}@example.org")],
            state: AgentState::Active,
            login: None,
            external_ids: vec![],
        }
    }

    fn departing(since: i64) -> AccountStatus {
        AccountStatus::Departing {
            since,
            reason: "left".into(),
            step: ReversibleStep::Suspend,
        }
    }

    fn deactivated() -> AccountStatus {
        AccountStatus::Deactivated {
            at: 5,
            reason: "left".into(),
        }
    }

    /// A ledger and a directory with one of everything a complete plan tells apart.
    fn world() -> (tempfile::TempDir, Ledger, Desired) {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(dir.path()).unwrap();
        let records = [
            record("in-step", "jean.martin", AccountStatus::Active),
            record("in-step-2", "jean.martin2", AccountStatus::Active),
            record("renamed", "renamed", AccountStatus::Active),
            record("moved", "moved", AccountStatus::Active),
            record("scheduled", "scheduled", AccountStatus::Active),
            record("leaving", "leaving", AccountStatus::Active),
            record("gone", "gone", AccountStatus::Active),
            record("in-grace", "in-grace", departing(1_000)),
            record("grace-over", "grace-over", departing(10)),
            record("back", "back", departing(1_000)),
            record("returned", "returned", deactivated()),
            record("long-gone", "long-gone", deactivated()),
            record("skipped", "skipped", AccountStatus::Active),
            record("skipped-deactivated", "skipped-x", deactivated()),
        ];
        for r in &records {
            let audit = AuditEntry {
                at: 1,
                mxid: r.mxid.clone(),
                id: r.id.clone(),
                action: "create".into(),
                reason: "test".into(),
                result: "ok".into(),
            };
            ledger.record_account(r, &audit).unwrap();
        }
        let mut accounts = vec![
            want("in-step", "jean.martin"),
            want("in-step-2", "jean.martin2"),
            DesiredAccount {
                display_name: "Agent Renamed".into(),
                ..want("renamed", "renamed")
            },
            DesiredAccount {
                dn: "uid=moved,ou=elsewhere,dc=example,dc=org".into(),
                ..want("moved", "moved")
            },
            DesiredAccount {
                state: AgentState::Scheduled {
                    at: 2_000,
                    reason: "contract ends".into(),
                },
                ..want("scheduled", "scheduled")
            },
            DesiredAccount {
                state: AgentState::Departed {
                    reason: "disabled".into(),
                    since: None,
                },
                ..want("leaving", "leaving")
            },
            want("back", "back"),
            want("returned", "returned"),
            // Two new agents wanting a localpart two in-step accounts hold.
            want("new-1", "jean.martin"),
            want("new-2", "jean.martin"),
            want("new-3", "fresh"),
        ];
        accounts.sort_by(|a, b| a.id.cmp(&b.id));
        let skipped = ["skipped", "skipped-deactivated"]
            .map(|id| SkippedAgent {
                id: Some(StableId(id.into())),
                dn: format!("uid={id},ou=people,dc=example,dc=org"),
                reason: "no given name".into(),
            })
            .to_vec();
        let desired = Desired {
            accounts,
            skipped,
            ..Desired::default()
        };
        (dir, ledger, desired)
    }

    #[test]
    fn a_complete_plan_from_profiles_is_the_plan_from_every_record() {
        let (_dir, ledger, desired) = world();
        let policy = Policy::for_tests("example.org", 1_500, 1_000);
        let everything = plan::plan(&desired, &ledger.view().unwrap(), &policy);
        let view =
            complete_view(&ledger, ledger.profiles().unwrap(), &desired, "example.org").unwrap();
        assert_eq!(plan::plan(&desired, &view, &policy), everything);
        assert!(everything.has_changes());
        assert_eq!(everything.unchanged, 6, "{everything:#?}");

        // Not decoded: the one in-step account no new agent's localpart needs, and the
        // deactivated account that is gone.
        let read: Vec<&str> = view.accounts.keys().map(|id| id.0.as_str()).collect();
        assert!(
            !read.contains(&"long-gone") && read.contains(&"in-step"),
            "{read:?}"
        );
        let in_step: Vec<&str> = view.in_step.iter().map(|(id, _)| id.0.as_str()).collect();
        assert_eq!(in_step, ["long-gone"]);
    }

    #[test]
    fn a_new_agent_whose_localpart_is_cut_is_offered_past_the_holder_of_the_cut_one() {
        // On example.org a localpart holds 242 bytes; a longer one is cut to 239.
        let cut = "l".repeat(239);
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(dir.path()).unwrap();
        let held = record("held", &cut, AccountStatus::Active);
        let audit = AuditEntry {
            at: 1,
            mxid: held.mxid.clone(),
            id: held.id.clone(),
            action: "create".into(),
            reason: "test".into(),
            result: "ok".into(),
        };
        ledger.record_account(&held, &audit).unwrap();
        let desired = Desired {
            accounts: vec![
                want("held", &cut),
                want("new", &"l".repeat(300)),
                want("refused", "12345"),
            ],
            ..Desired::default()
        };
        let policy = Policy::for_tests("example.org", 1_500, 1_000);
        let view =
            complete_view(&ledger, ledger.profiles().unwrap(), &desired, "example.org").unwrap();
        let p = plan::plan(&desired, &view, &policy);
        assert_eq!(p, plan::plan(&desired, &ledger.view().unwrap(), &policy));
        let created: Vec<&str> = p.actions.iter().map(|a| a.mxid()).collect();
        assert_eq!(created, [format!("@{cut}2:example.org")]);
        assert_eq!(p.skipped.len(), 1, "{:?}", p.skipped);
    }

    #[test]
    fn the_two_halves_merge_as_one() {
        let profile = |id: &str, stage| {
            let r = record(id, id, AccountStatus::Active);
            let p = Profile {
                stage,
                ..Profile::of(&r)
            };
            (StableId(id.into()), p)
        };
        let ids = ["a", "b", "c", "d", "e", "f", "g", "h"];
        // Every split: wants from every other id, profiles for some wants and some others.
        for wanted in 0..=ids.len() {
            let wants: Vec<DesiredAccount> = ids
                .iter()
                .step_by(2)
                .take(wanted)
                .map(|id| want(id, id))
                .collect();
            let wants: Vec<&DesiredAccount> = wants.iter().collect();
            let profiles = || -> Profiles {
                ["a", "b", "e", "f", "g", "h"]
                    .iter()
                    .enumerate()
                    .map(|(i, id)| profile(id, [Stage::Active, Stage::Deactivated][i % 2]))
                    .collect()
            };
            let skipped = HashSet::new();
            let (one, new_one) = merge(&wants, profiles(), &skipped);
            let (two, new_two) = merge_on_two_threads(&wants, profiles(), &skipped);
            assert_eq!(one.in_step, two.in_step, "{wanted} wanted");
            assert_eq!(one.to_read, two.to_read, "{wanted} wanted");
            assert_eq!(new_one, new_two, "{wanted} wanted");
            // Every profile is sorted once.
            assert_eq!(one.in_step.len() + one.to_read.len(), 6, "{wanted} wanted");
        }
    }

    #[test]
    fn an_account_whose_external_id_changed_is_not_in_step() {
        use crate::homeserver::ExternalId;
        let sso = |value: &str| {
            vec![ExternalId {
                auth_provider: "oidc-x".into(),
                external_id: value.into(),
            }]
        };
        let with_id = AccountRecord {
            external_ids: sso("1"),
            ..record("a", "anne", AccountStatus::Active)
        };
        let profile = Profile::of(&with_id);
        let wants = |ids: Vec<ExternalId>| DesiredAccount {
            external_ids: ids,
            ..want("a", "anne")
        };
        assert!(is_in_step(&profile, &wants(sso("1"))));
        assert!(!is_in_step(&profile, &wants(sso("2"))));
        assert!(!is_in_step(&profile, &wants(vec![])));
        // A record from before external ids, and an agent the mapping now gives one.
        let plain = Profile::of(&record("a", "anne", AccountStatus::Active));
        assert!(is_in_step(&plain, &wants(vec![])));
        assert!(!is_in_step(&plain, &wants(sso("1"))));
    }

    #[test]
    fn in_step_accounts_are_not_decoded() {
        let (_dir, ledger, mut desired) = world();
        desired.accounts.retain(|a| !a.id.0.starts_with("new-"));
        let view =
            complete_view(&ledger, ledger.profiles().unwrap(), &desired, "example.org").unwrap();
        let in_step: Vec<(&str, &str)> = view
            .in_step
            .iter()
            .map(|(id, mxid)| (id.0.as_str(), mxid.as_str()))
            .collect();
        assert_eq!(
            in_step,
            [
                ("in-step", "@jean.martin:example.org"),
                ("in-step-2", "@jean.martin2:example.org"),
                ("long-gone", "@long-gone:example.org")
            ]
        );
        assert_eq!(view.accounts.len(), 14 - 3);
    }
}
