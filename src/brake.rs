//! The brake: refuses the departures of a plan that looks like an accident — too many at
//! once, a directory that suddenly returns far fewer agents (or none), or a changed scope
//! (agent filter, bases, id attribute) — until an operator approves with
//! `sync --allow-mass-changes` or changes the limits. Everything else in the plan still runs.

use sha2::{Digest, Sha256};

use crate::config::{BrakeConfig, Config};
use crate::ledger::LastGood;
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
    /// This run's scope fingerprint (see [`scope`]).
    pub scope: String,
    pub last_good: Option<LastGood>,
}

/// Why the brake holds a plan's departures back, or `None` to let them through.
pub fn check(plan: &Plan, context: &Context, limits: &BrakeConfig) -> Option<String> {
    let departures = plan.departures();
    if departures == 0 {
        return None;
    }
    let mut reasons = Vec::new();
    if departures > limits.max_departures {
        reasons.push(format!(
            "{departures} departures exceed brake.max_departures = {}",
            limits.max_departures
        ));
    }
    let percent = 100.0 * departures as f64 / context.managed.max(1) as f64;
    if percent > limits.max_departures_percent {
        reasons.push(format!(
            "{departures} departures are {percent:.1}% of {} managed accounts, over brake.max_departures_percent = {}",
            context.managed, limits.max_departures_percent
        ));
    }
    if !context.complete {
        return (!reasons.is_empty()).then(|| reasons.join("; "));
    }
    if context.agents == 0 {
        reasons.push("the directory returned no agents at all".to_string());
    }
    if let Some(last) = &context.last_good {
        let shrink =
            100.0 * (last.agents as f64 - context.agents as f64) / last.agents.max(1) as f64;
        if context.agents > 0 && shrink > limits.max_shrink_percent {
            reasons.push(format!(
                "the directory returned {} agents, {shrink:.1}% fewer than the {} of the last good run (brake.max_shrink_percent = {})",
                context.agents, last.agents, limits.max_shrink_percent
            ));
        }
        if last.scope != context.scope {
            reasons.push(
                "the agent filter, base DNs or id attribute changed since the last good run"
                    .to_string(),
            );
        }
    }
    (!reasons.is_empty()).then(|| reasons.join("; "))
}

/// Takes the departures (and room removals) out of `plan`; returns how many.
pub fn hold_back(plan: &mut Plan) -> usize {
    let before = plan.departures();
    plan.actions.retain(|a| !a.kind().is_departure());
    plan.rooms.actions.retain(|a| !a.is_destructive());
    before
}

/// A fingerprint of what defines who the agents are.
pub fn scope(config: &Config, rules: &Rules) -> String {
    let mut bases: Vec<String> = config
        .directory
        .base_dns
        .iter()
        .map(|b| b.to_lowercase())
        .collect();
    bases.sort();
    let text = format!(
        "filter={}\nbases={}\nid={}",
        rules.agent.filter,
        bases.join(";"),
        rules.agent.id_attribute.to_lowercase()
    );
    digest(&text)
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
    use crate::directory::StableId;
    use crate::plan::Action;

    fn plan_with(departures: usize, others: usize) -> Plan {
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
                external_ids: vec![],
                reason: "new".into(),
            });
        }
        plan
    }

    fn context(managed: usize, agents: usize, last: Option<usize>) -> Context {
        Context {
            managed,
            agents,
            complete: true,
            scope: "s1".into(),
            last_good: last.map(|agents| LastGood {
                agents,
                scope: "s1".into(),
                at: 0,
            }),
        }
    }

    #[test]
    fn limits_table() {
        let limits = BrakeConfig {
            max_departures: 50,
            max_departures_percent: 5.0,
            max_shrink_percent: 10.0,
            protected: vec![],
        };
        // (departures, managed, agents now, agents last time, engaged?, reason contains)
        let cases = [
            (0, 1000, 0, Some(1000), false, ""),
            (1, 1000, 999, Some(1000), false, ""),
            (50, 1000, 950, Some(1000), false, ""),
            (
                51,
                2000,
                1949,
                Some(2000),
                true,
                "exceed brake.max_departures = 50",
            ),
            (
                30,
                500,
                470,
                Some(500),
                true,
                "6.0% of 500 managed accounts",
            ),
            (3, 100, 0, Some(100), true, "no agents at all"),
            (3, 100, 85, Some(100), true, "15.0% fewer than the 100"),
            (3, 100, 97, None, false, ""),
        ];
        for (i, (departures, managed, agents, last, engaged, text)) in cases.into_iter().enumerate()
        {
            let verdict = check(
                &plan_with(departures, 2),
                &context(managed, agents, last),
                &limits,
            );
            assert_eq!(verdict.is_some(), engaged, "case {i}: {verdict:?}");
            assert!(verdict.unwrap_or_default().contains(text), "case {i}");
        }
    }

    #[test]
    fn a_changed_scope_engages_the_brake_when_anything_would_depart() {
        let limits = BrakeConfig::default();
        let mut ctx = context(100, 100, Some(100));
        ctx.scope = "s2".into();
        assert!(check(&plan_with(1, 0), &ctx, &limits)
            .unwrap()
            .contains("changed since the last good run"));
        assert_eq!(check(&plan_with(0, 5), &ctx, &limits), None);
    }

    #[test]
    fn a_read_of_changes_only_is_held_to_the_departure_limits() {
        let limits = BrakeConfig::default();
        // 3 changed agents out of 1,000 managed: not a shrunken directory.
        let mut ctx = context(1000, 3, Some(1000));
        ctx.complete = false;
        assert_eq!(check(&plan_with(3, 0), &ctx, &limits), None);
        // A deleted OU seen through an incremental read still engages it.
        let many = check(&plan_with(120, 0), &ctx, &limits).unwrap();
        assert!(many.contains("exceed brake.max_departures"), "{many}");
        assert!(!many.contains("fewer than"), "{many}");
    }

    #[test]
    fn hold_back_keeps_everything_but_departures() {
        let mut plan = plan_with(3, 2);
        let held = hold_back(&mut plan);
        assert_eq!((held, plan.actions.len()), (3, 2));
        assert_eq!(plan.departures(), 0);
    }
}
