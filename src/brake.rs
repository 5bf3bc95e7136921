//! The brake: refuses the departures of a plan that looks like an accident — too many at
//! once, a directory that suddenly returns far fewer agents (or none) — until an operator
//! approves with `sync --allow-mass-changes` or changes the limits; everything else in the plan
//! still runs. A changed scope (agent filter, bases, id attribute) holds the whole plan, not
//! only its departures: under another id attribute every agent looks new, and its creations
//! would duplicate every account. A new filter or bases can be accepted with
//! `sync --allow-mass-changes`; a new id attribute only by re-keying the ledger (`migrate-ids`).

use sha2::{Digest, Sha256};

use crate::config::{BrakeConfig, Config};
use crate::directory::DnKey;
use crate::ledger::{LastGood, Scope};
use crate::mapping::Rules;
use crate::plan::Plan;

/// What the brake looks at besides the plan.
#[derive(Debug, Clone)]
pub struct Context {
    /// Accounts the ledger manages.
    pub managed: usize,
    /// Agent entries this run's directory read returned.
    pub agents: usize,
    /// The read returned every agent (not only the changes since the last read): only then do
    /// the number of agents and the scope say anything.
    pub complete: bool,
    /// This run's scope (see [`scope`]).
    pub scope: Scope,
    pub last_good: Option<LastGood>,
}

/// Why the brake holds a plan's departures (or, when the scope changed, the whole plan) back:
/// at least one [`Reason`]. Shown (and kept in the run journal) as its reasons' texts joined
/// by `; `.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub reasons: Vec<Reason>,
}

/// One reason to hold a plan's departures back.
#[derive(Debug, Clone, PartialEq)]
pub enum Reason {
    /// More of `what` than its absolute limit.
    OverMax {
        what: Counted,
        count: usize,
        max: usize,
    },
    /// More of `what` than its share of the managed accounts (only from
    /// `brake.percent_from` of them on).
    OverPercent {
        what: Counted,
        count: usize,
        percent: f64,
        managed: usize,
        max: f64,
    },
    /// A complete read found no agents at all.
    NoAgents,
    /// A complete read found far fewer agents than the last good run.
    Shrunk {
        agents: usize,
        percent: f64,
        last: usize,
        max: f64,
    },
    /// The agent filter, base DNs or id attribute changed since the last good run: the whole
    /// plan is held.
    ScopeChanged(ScopeChange),
}

/// What changed in the scope since the last good run: (then, now) of each part that did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScopeChange {
    pub filter: Option<(String, String)>,
    pub bases: Option<(Vec<String>, Vec<String>)>,
    /// The id attribute, with its format when that changed too.
    pub id: Option<(String, String)>,
}

impl ScopeChange {
    /// Which parts of `now` differ from `then`; with only the digest of the last good run's
    /// scope (an older ledger), an unknown change (no part named).
    fn between(last: &LastGood, now: &Scope) -> Option<ScopeChange> {
        let Some(then) = &last.spec else {
            return (last.scope != now.digest()).then(ScopeChange::default);
        };
        let differs = |a: &str, b: &str| (a != b).then(|| (a.to_string(), b.to_string()));
        let change = ScopeChange {
            filter: differs(&then.filter, &now.filter),
            bases: (then.bases != now.bases).then(|| (then.bases.clone(), now.bases.clone())),
            id: (!then.same_ids(now)).then(|| match then.id_format == now.id_format {
                true => (then.id_attribute.clone(), now.id_attribute.clone()),
                false => (id_text(then), id_text(now)),
            }),
        };
        (change != ScopeChange::default()).then_some(change)
    }

    /// Which part changed is not known (the last good run kept only a digest of its scope).
    pub fn is_unknown(&self) -> bool {
        *self == ScopeChange::default()
    }

    /// The agents' stable ids may have changed: every agent would look new, so only
    /// re-keying the ledger (`migrate-ids`) can accept it, never `--allow-mass-changes`.
    pub fn changes_ids(&self) -> bool {
        self.id.is_some() || self.is_unknown()
    }
}

fn id_text(scope: &Scope) -> String {
    let format = match scope.id_format {
        crate::directory::IdFormat::Text => "text",
        crate::directory::IdFormat::Guid => "guid",
    };
    format!("{} ({format})", scope.id_attribute)
}

impl std::fmt::Display for ScopeChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_unknown() {
            return f.write_str(
                "the agent filter, base DNs or id attribute changed since the last good run",
            );
        }
        let mut parts = Vec::new();
        if let Some((then, now)) = &self.filter {
            parts.push(format!("the agent filter (`{then}` → `{now}`)"));
        }
        if let Some((then, now)) = &self.bases {
            parts.push(format!(
                "the base DNs ({} → {})",
                then.join("; "),
                now.join("; ")
            ));
        }
        if let Some((then, now)) = &self.id {
            parts.push(format!("the id attribute (`{then}` → `{now}`)"));
        }
        match parts.split_last() {
            Some((last, [])) => write!(f, "{last} changed since the last good run"),
            Some((last, rest)) => write!(
                f,
                "{} and {last} changed since the last good run",
                rest.join(", ")
            ),
            None => Ok(()),
        }
    }
}

/// What the brake counts, each against limits of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counted {
    /// Accounts suspended, locked or deactivated.
    Departures,
    /// Room and space removals, and power levels lowered.
    RoomRemovals,
}

impl Counted {
    fn name(self) -> &'static str {
        match self {
            Counted::Departures => "departures",
            Counted::RoomRemovals => "room removals",
        }
    }

    /// The config keys of its limits: (absolute, percent).
    fn keys(self) -> (&'static str, &'static str) {
        match self {
            Counted::Departures => ("brake.max_departures", "brake.max_departures_percent"),
            Counted::RoomRemovals => ("brake.max_room_removals", "brake.max_room_removals_percent"),
        }
    }

    fn limits(self, limits: &BrakeConfig) -> (usize, f64) {
        match self {
            Counted::Departures => (limits.max_departures, limits.max_departures_percent),
            Counted::RoomRemovals => (limits.max_room_removals, limits.max_room_removals_percent),
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reason::OverMax { what, count, max } => {
                write!(f, "{count} {} exceed {} = {max}", what.name(), what.keys().0)
            }
            Reason::OverPercent {
                what,
                count,
                percent,
                managed,
                max,
            } => write!(
                f,
                "{count} {} are {percent:.1}% of {managed} managed accounts, over {} = {max}",
                what.name(),
                what.keys().1
            ),
            Reason::NoAgents => f.write_str("the directory returned no agents at all"),
            Reason::Shrunk {
                agents,
                percent,
                last,
                max,
            } => write!(
                f,
                "the directory returned {agents} agents, {percent:.1}% fewer than the {last} of the last good run (brake.max_shrink_percent = {max})"
            ),
            Reason::ScopeChanged(change) => write!(f, "{change}"),
        }
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, reason) in self.reasons.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{reason}")?;
        }
        Ok(())
    }
}

impl Verdict {
    /// The scope changed: the whole plan is held, not only its departures.
    pub fn scope_change(&self) -> Option<&ScopeChange> {
        self.reasons.iter().find_map(|r| match r {
            Reason::ScopeChanged(change) => Some(change),
            _ => None,
        })
    }

    pub fn holds_everything(&self) -> bool {
        self.scope_change().is_some()
    }

    /// Only `migrate-ids` can release the plan: the agents' ids may have changed.
    pub fn needs_migration(&self) -> bool {
        self.scope_change().is_some_and(ScopeChange::changes_ids)
    }

    /// How many of `plan`'s actions it holds back (what an operator's approval must cover).
    pub fn held(&self, plan: &Plan) -> usize {
        match self.holds_everything() {
            true => plan.actions.len() + plan.rooms.actions.len(),
            false => plan.departures(),
        }
    }

    /// What an operator can do about it, in a sentence.
    pub fn remedy(&self) -> &'static str {
        match (self.holds_everything(), self.needs_migration()) {
            (true, true) => "nothing is applied until `migrate-ids` re-keys the ledger from the old ids to the new ones \
                 (run it for a dry run, then with `--apply`); `sync --allow-mass-changes` cannot accept new ids: \
                 every agent would look new and get a second account",
            (true, false) => "nothing is applied until `sync --allow-mass-changes` accepts the new scope (after reviewing `plan`), \
                 or `migrate-ids --apply` re-keys the ledger",
            (false, _) => "review them with `plan`, then run `sync --allow-mass-changes` to apply them once, or change the limits",
        }
    }
}

/// The brake's verdict on `plan`: `None` lets it through.
pub fn check(plan: &Plan, context: &Context, limits: &BrakeConfig) -> Option<Verdict> {
    let departures = plan.account_departures();
    let removals = plan.rooms.removals();
    let scope_changed = context.complete
        && context
            .last_good
            .as_ref()
            .is_some_and(|last| ScopeChange::between(last, &context.scope).is_some());
    if departures + removals == 0 && !(scope_changed && plan.has_changes()) {
        return None;
    }
    let mut reasons = Vec::new();
    for (what, count) in [
        (Counted::Departures, departures),
        (Counted::RoomRemovals, removals),
    ] {
        reasons.extend(over_limits(what, count, context.managed, limits));
    }
    if context.complete {
        reasons.extend(directory_reasons(context, limits));
    }
    (!reasons.is_empty()).then_some(Verdict { reasons })
}

/// `count` of `what` against its limits. The percentage applies only from
/// `limits.percent_from` on: in a directory of 36, one person's move out of a department is
/// already 11%.
fn over_limits(what: Counted, count: usize, managed: usize, limits: &BrakeConfig) -> Vec<Reason> {
    let (max, max_percent) = what.limits(limits);
    let mut reasons = Vec::new();
    if count > max {
        reasons.push(Reason::OverMax { what, count, max });
    }
    let percent = 100.0 * count as f64 / managed.max(1) as f64;
    if count >= limits.percent_from && percent > max_percent {
        reasons.push(Reason::OverPercent {
            what,
            count,
            percent,
            managed,
            max: max_percent,
        });
    }
    reasons
}

/// What a complete read says about the directory itself: empty, shrunk, or another scope.
fn directory_reasons(context: &Context, limits: &BrakeConfig) -> Vec<Reason> {
    let mut reasons = Vec::new();
    if context.agents == 0 {
        reasons.push(Reason::NoAgents);
    }
    if let Some(last) = &context.last_good {
        let shrink =
            100.0 * (last.agents as f64 - context.agents as f64) / last.agents.max(1) as f64;
        if context.agents > 0 && shrink > limits.max_shrink_percent {
            reasons.push(Reason::Shrunk {
                agents: context.agents,
                percent: shrink,
                last: last.agents,
                max: limits.max_shrink_percent,
            });
        }
        if let Some(change) = ScopeChange::between(last, &context.scope) {
            reasons.push(Reason::ScopeChanged(change));
        }
    }
    reasons
}

/// Takes what `verdict` holds out of `plan`: the departures and room removals, or with a
/// changed scope everything (the ledger-only parts too: DN moves, memberships forgotten, rooms
/// adopted); returns how many actions.
pub fn hold_back(plan: &mut Plan, verdict: &Verdict) -> usize {
    let held = verdict.held(plan);
    if verdict.holds_everything() {
        plan.actions.clear();
        plan.moves.clear();
        plan.rooms.actions.clear();
        plan.rooms.forget.clear();
        plan.rooms.adopt.clear();
    } else {
        plan.actions.retain(|a| !a.kind().is_departure());
        plan.rooms.actions.retain(|a| !a.is_destructive());
    }
    held
}

/// What defines who the agents are. Bases count by DN, not by spelling (`OU=People, DC=x` is
/// `ou=people,dc=x`).
pub fn scope(config: &Config, rules: &Rules) -> Scope {
    let mut bases: Vec<String> = config
        .directory
        .base_dns
        .iter()
        .map(|b| DnKey::lenient(b).as_str().to_string())
        .collect();
    bases.sort();
    Scope {
        filter: rules.agent.filter.clone(),
        bases,
        id_attribute: rules.agent.id_attribute.clone(),
        id_format: rules.agent.id_format,
    }
}

/// A short hex digest of `text`, to notice that something changed.
pub fn digest(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .take(12)
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ReversibleStep;
    use crate::directory::{IdFormat, StableId};
    use crate::plan::memberships::RoomAction;
    use crate::plan::Action;

    /// A plan with this many account departures, room removals (half of them power levels
    /// lowered) and creations.
    fn plan_of(departures: usize, removals: usize, others: usize) -> Plan {
        let mut plan = Plan::default();
        for i in 0..departures {
            plan.actions.push(Action::DepartAccount {
                id: StableId(format!("d{i}")),
                mxid: format!("@d{i}:x"),
                step: ReversibleStep::Suspend,
                reason: "left".into(),
            });
        }
        for i in 0..others {
            plan.actions.push(Action::CreateAccount {
                id: StableId(format!("n{i}")),
                mxid: format!("@n{i}:x"),
                localpart: format!("n{i}"),
                dn: String::new(),
                display_name: String::new(),
                emails: vec![],
                adopt: None,
                resumed: false,
                external_ids: vec![],
                reason: "new".into(),
            });
        }
        for i in 0..removals {
            let (room, id, mxid) = (
                "#dept-a:x".to_string(),
                StableId(format!("r{i}")),
                format!("@r{i}:x"),
            );
            plan.rooms.actions.push(match i % 2 {
                0 => RoomAction::Kick {
                    room,
                    id: Some(id),
                    mxid,
                    reason: "moved".into(),
                },
                _ => RoomAction::SetPower {
                    room,
                    id,
                    mxid,
                    from: Some(50),
                    to: None,
                    reason: "moved".into(),
                },
            });
        }
        plan
    }

    fn plan_with(departures: usize, others: usize) -> Plan {
        plan_of(departures, 0, others)
    }

    fn scope_of(filter: &str, bases: &[&str], id: &str, format: IdFormat) -> Scope {
        Scope {
            filter: filter.into(),
            bases: bases.iter().map(|b| b.to_string()).collect(),
            id_attribute: id.into(),
            id_format: format,
        }
    }

    fn usual() -> Scope {
        scope_of(
            "(objectClass=inetOrgPerson)",
            &["ou=people,dc=x"],
            "entryUUID",
            IdFormat::Text,
        )
    }

    fn context(managed: usize, agents: usize, last: Option<usize>) -> Context {
        Context {
            managed,
            agents,
            complete: true,
            scope: usual(),
            last_good: last.map(|agents| LastGood {
                agents,
                scope: usual().digest(),
                at: 0,
                spec: Some(usual()),
            }),
        }
    }

    /// [`context`] whose last good run kept only the digest of its scope (an older ledger),
    /// not this run's.
    fn legacy_context(managed: usize, agents: usize, last: usize) -> Context {
        let mut ctx = context(managed, agents, Some(last));
        ctx.last_good = ctx.last_good.map(|l| LastGood {
            scope: "0123456789abcdef01234567".into(),
            spec: None,
            ..l
        });
        ctx
    }

    /// [`context`] now under `scope`.
    fn changed(managed: usize, agents: usize, last: usize, scope: Scope) -> Context {
        Context {
            scope,
            ..context(managed, agents, Some(last))
        }
    }

    fn text(verdict: &Option<Verdict>) -> String {
        verdict.as_ref().map(Verdict::to_string).unwrap_or_default()
    }

    #[test]
    fn limits_table() {
        let limits = BrakeConfig {
            max_departures: 50,
            max_departures_percent: 5.0,
            max_room_removals: 100,
            max_room_removals_percent: 10.0,
            percent_from: 10,
            max_shrink_percent: 10.0,
            protected: vec![],
        };
        // (departures, room removals, managed, agents now, agents last time, engaged?,
        // reason contains)
        let cases = [
            (0, 0, 1000, 0, Some(1000), false, ""),
            (1, 0, 1000, 999, Some(1000), false, ""),
            (50, 0, 1000, 950, Some(1000), false, ""),
            (51, 0, 2000, 1949, Some(2000), true, "51 departures exceed brake.max_departures = 50"),
            (30, 0, 500, 470, Some(500), true, "30 departures are 6.0% of 500 managed accounts, over brake.max_departures_percent = 5"),
            (3, 0, 100, 0, Some(100), true, "no agents at all"),
            (3, 0, 100, 85, Some(100), true, "15.0% fewer than the 100"),
            (3, 0, 100, 97, None, false, ""),
            // A department move in a directory of 36: 4 of 36 is 11%, but below percent_from.
            (0, 4, 36, 36, Some(36), false, ""),
            // One person leaves a directory of 36 (2.8%) and their rooms with them.
            (1, 3, 36, 35, Some(36), false, ""),
            // Percentages below percent_from are ignored: 9 of 36 departing is 25%.
            (9, 0, 36, 36, Some(36), false, ""),
            // 30% of the accounts depart (11 of 36: HR marked them), at or past percent_from.
            (11, 0, 36, 36, Some(36), true, "11 departures are 30.6% of 36 managed accounts"),
            // 30% of the entries deleted: the read shrank, whatever the count.
            (3, 0, 10, 7, Some(10), true, "30.0% fewer than the 10"),
            // Room removals alone: over their own absolute limit…
            (0, 101, 5000, 5000, Some(5000), true, "101 room removals exceed brake.max_room_removals = 100"),
            // …or their own percentage.
            (0, 40, 300, 300, Some(300), true, "40 room removals are 13.3% of 300 managed accounts, over brake.max_room_removals_percent = 10"),
            // Counted apart: 45 departures and 60 removals are each within their limits.
            (45, 60, 1000, 1000, Some(1000), false, ""),
        ];
        for (i, (departures, removals, managed, agents, last, engaged, contains)) in
            cases.into_iter().enumerate()
        {
            let verdict = check(
                &plan_of(departures, removals, 2),
                &context(managed, agents, last),
                &limits,
            );
            assert_eq!(verdict.is_some(), engaged, "case {i}: {verdict:?}");
            assert!(
                text(&verdict).contains(contains),
                "case {i}: {}",
                text(&verdict)
            );
        }
    }

    #[test]
    fn the_verdict_lists_typed_reasons_shown_as_one_line() {
        let limits = BrakeConfig::default();
        let ctx = legacy_context(20, 0, 20);
        let verdict = check(&plan_of(20, 30, 0), &ctx, &limits).unwrap();
        assert_eq!(
            verdict.reasons,
            vec![
                Reason::OverPercent {
                    what: Counted::Departures,
                    count: 20,
                    percent: 100.0,
                    managed: 20,
                    max: 5.0
                },
                Reason::OverPercent {
                    what: Counted::RoomRemovals,
                    count: 30,
                    percent: 150.0,
                    managed: 20,
                    max: 10.0
                },
                Reason::NoAgents,
                Reason::ScopeChanged(ScopeChange::default()),
            ]
        );
        assert_eq!(
            verdict.to_string(),
            "20 departures are 100.0% of 20 managed accounts, over brake.max_departures_percent = 5; \
             30 room removals are 150.0% of 20 managed accounts, over brake.max_room_removals_percent = 10; \
             the directory returned no agents at all; \
             the agent filter, base DNs or id attribute changed since the last good run"
        );
    }

    #[test]
    fn percent_from_zero_applies_the_percentages_to_any_count() {
        let limits = BrakeConfig {
            percent_from: 0,
            ..BrakeConfig::default()
        };
        let verdict = check(&plan_of(0, 4, 0), &context(36, 36, Some(36)), &limits);
        assert!(
            text(&verdict).contains("4 room removals are 11.1%"),
            "{verdict:?}"
        );
    }

    #[test]
    fn a_filter_that_matches_nothing_engages_the_brake_whatever_the_size() {
        let limits = BrakeConfig::default();
        let ctx = legacy_context(4, 0, 4);
        let verdict = text(&check(&plan_with(4, 0), &ctx, &limits));
        assert!(verdict.contains("no agents at all"), "{verdict}");
        assert!(
            verdict.contains("changed since the last good run"),
            "{verdict}"
        );
    }

    #[test]
    fn a_changed_scope_holds_the_whole_plan_even_without_departures() {
        let limits = BrakeConfig::default();
        let mut wider = usual();
        wider.filter = "(|(objectClass=inetOrgPerson)(objectClass=person))".into();
        let ctx = changed(100, 100, 100, wider);
        for plan in [plan_with(1, 0), plan_of(0, 1, 0), plan_with(0, 5)] {
            let verdict = check(&plan, &ctx, &limits).unwrap();
            assert!(verdict.holds_everything(), "{verdict}");
            assert!(!verdict.needs_migration(), "{verdict}");
            assert_eq!(
                verdict.held(&plan),
                plan.actions.len() + plan.rooms.actions.len()
            );
            assert_eq!(
                verdict.to_string(),
                "the agent filter (`(objectClass=inetOrgPerson)` → \
                 `(|(objectClass=inetOrgPerson)(objectClass=person))`) changed since the last good run"
            );
        }
        // A plan with nothing to do under the new scope is let through (and the scope with it).
        assert_eq!(check(&Plan::default(), &ctx, &limits), None);
        // Within the same scope, creations alone never engage it.
        assert_eq!(
            check(&plan_with(0, 5), &context(100, 100, Some(100)), &limits),
            None
        );
    }

    #[test]
    fn new_ids_can_be_released_only_by_a_migration() {
        let limits = BrakeConfig::default();
        let cases = [
            (
                scope_of("(objectClass=inetOrgPerson)", &["ou=people,dc=x"], "uid", IdFormat::Text),
                "the id attribute (`entryUUID` → `uid`) changed since the last good run",
            ),
            (
                scope_of("(objectClass=inetOrgPerson)", &["ou=people,dc=x"], "entryUUID", IdFormat::Guid),
                "the id attribute (`entryUUID (text)` → `entryUUID (guid)`) changed since the last good run",
            ),
            (
                scope_of("(uid=*)", &["ou=people,dc=x", "ou=staff,dc=x"], "uid", IdFormat::Text),
                "the agent filter (`(objectClass=inetOrgPerson)` → `(uid=*)`), \
                 the base DNs (ou=people,dc=x → ou=people,dc=x; ou=staff,dc=x) and \
                 the id attribute (`entryUUID` → `uid`) changed since the last good run",
            ),
        ];
        for (scope, expected) in cases {
            let verdict =
                check(&plan_with(0, 300), &changed(300, 300, 300, scope), &limits).unwrap();
            assert!(
                verdict.holds_everything() && verdict.needs_migration(),
                "{verdict}"
            );
            assert_eq!(verdict.to_string(), expected);
            assert!(
                verdict.remedy().contains("`migrate-ids`"),
                "{}",
                verdict.remedy()
            );
        }
        // The same attribute in another case is the same ids.
        let mut same = usual();
        same.id_attribute = "ENTRYUUID".into();
        assert_eq!(
            check(&plan_with(0, 3), &changed(300, 300, 300, same), &limits),
            None
        );
        // A ledger that kept only a digest cannot tell which part changed: it may be the ids.
        let legacy = check(&plan_with(0, 3), &legacy_context(300, 300, 300), &limits).unwrap();
        assert!(legacy.needs_migration(), "{legacy}");
        // Bases only: an operator may accept it.
        let mut more = usual();
        more.bases.push("ou=staff,dc=x".into());
        let verdict = check(&plan_with(0, 3), &changed(300, 300, 300, more), &limits).unwrap();
        assert!(verdict.holds_everything() && !verdict.needs_migration());
        assert!(verdict
            .remedy()
            .contains("`sync --allow-mass-changes` accepts the new scope"));
    }

    #[test]
    fn a_legacy_digest_of_the_same_scope_is_no_change() {
        // The digest ledgers have always stored for this scope.
        let digest =
            super::digest("filter=(objectClass=inetOrgPerson)\nbases=ou=people,dc=x\nid=entryuuid");
        assert_eq!(usual().digest(), digest);
        let mut ctx = context(300, 300, Some(300));
        ctx.last_good = ctx.last_good.map(|l| LastGood {
            spec: None,
            scope: digest,
            ..l
        });
        assert_eq!(check(&plan_with(0, 3), &ctx, &BrakeConfig::default()), None);
    }

    #[test]
    fn a_read_of_changes_only_is_held_to_the_departure_limits() {
        let limits = BrakeConfig::default();
        // 3 changed agents out of 1,000 managed: not a shrunken directory.
        let mut ctx = context(1000, 3, Some(1000));
        ctx.complete = false;
        assert_eq!(check(&plan_with(3, 0), &ctx, &limits), None);
        // A deleted OU seen through an incremental read still engages it.
        let many = text(&check(&plan_with(120, 0), &ctx, &limits));
        assert!(many.contains("exceed brake.max_departures"), "{many}");
        assert!(!many.contains("fewer than"), "{many}");
    }

    #[test]
    fn hold_back_keeps_everything_but_departures_and_removals() {
        let mut plan = plan_of(3, 4, 2);
        let verdict = Verdict {
            reasons: vec![Reason::NoAgents],
        };
        let held = hold_back(&mut plan, &verdict);
        assert_eq!((held, plan.actions.len()), (7, 2));
        assert_eq!(plan.departures(), 0);
        assert!(plan.rooms.actions.is_empty());
    }

    #[test]
    fn hold_back_of_a_changed_scope_keeps_nothing() {
        let mut plan = plan_of(3, 4, 2);
        plan.moves.push(crate::plan::Move {
            id: StableId("m".into()),
            mxid: "@m:x".into(),
            from_dn: "uid=m,ou=a".into(),
            to_dn: "uid=m,ou=b".into(),
        });
        let verdict = Verdict {
            reasons: vec![Reason::ScopeChanged(ScopeChange::default())],
        };
        let held = hold_back(&mut plan, &verdict);
        assert_eq!(held, 9);
        assert_eq!(plan, Plan::default());
    }
}
