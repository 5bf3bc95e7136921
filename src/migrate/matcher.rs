//! Which agent each managed account belongs to, once the agents' stable ids have changed: a
//! pure match of the ledger's accounts (keyed by the old ids) against the directory's agents
//! (with their new ids). Never a guess: a tie is listed, never settled.
//!
//! Ties, strongest first; each tier only sees the accounts and agents the tiers before left:
//! 1. the same id (the account is already keyed by the agent's new id: nothing to re-key);
//! 2. the old id: the agent's entry still has the old id attribute, with the account's key;
//! 3. the DN the ledger last saw for the account, for agents without the old attribute only;
//! 4. one of the account's e-mail addresses, likewise.
//!
//! An agent whose entry has the old id attribute is matched by it or not at all: its DN or
//! e-mail may be a former holder's (a reused login), the old id is the identity. Within a
//! tier, a group of accounts and agents tied to each other other than one to one is
//! ambiguous, and so is an account tied to an agent an earlier tier gave another account:
//! all of them are listed, none is matched.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::Serialize;

use crate::directory::{DnKey, StableId};
use crate::ledger::{AccountRecord, AccountStatus};

/// An agent as the directory has it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Agent {
    /// Its stable id under the current rules.
    pub id: StableId,
    pub dn: String,
    /// Its entry's value of the old id attribute, if the entry still has one.
    pub old_id: Option<StableId>,
    /// Its e-mail addresses, as the rules map them.
    pub emails: Vec<String>,
}

/// What tied an account to its agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum By {
    SameId,
    OldId,
    Dn,
    Email,
}

/// An account and the agent it belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Match {
    /// The account's key in the ledger.
    pub from: StableId,
    /// The agent's id: the account's key once re-keyed.
    pub to: StableId,
    pub mxid: String,
    /// The agent's DN.
    pub dn: String,
    pub by: By,
    /// The value they share: the old id, the DN or the e-mail address.
    pub via: String,
}

/// A managed account no agent is tied to: it keeps its old key (and the next complete run
/// takes its agent for gone).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Unmatched {
    pub id: StableId,
    pub mxid: String,
    /// The DN the ledger last saw.
    pub dn: String,
    /// Already deactivated: nothing more happens to it either way.
    pub deactivated: bool,
    pub reason: String,
}

/// Accounts and agents tied other than one to one: none of them is matched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Ambiguous {
    pub by: By,
    /// (key, mxid) of each account.
    pub accounts: Vec<(StableId, String)>,
    /// (new id, DN) of each agent.
    pub agents: Vec<(StableId, String)>,
    pub reason: String,
}

/// An agent no account is tied to: the next run creates its account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NewAgent {
    pub id: StableId,
    pub dn: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Matching {
    /// In account key order.
    pub matched: Vec<Match>,
    pub ambiguous: Vec<Ambiguous>,
    pub unmatched: Vec<Unmatched>,
    pub new_agents: Vec<NewAgent>,
}

impl Matching {
    /// The matches that change a key (not those [`By::SameId`]).
    pub fn rekeys(&self) -> impl Iterator<Item = &Match> {
        self.matched.iter().filter(|m| m.from != m.to)
    }
}

/// Ties each of `accounts` (keyed by the old ids) to one of `agents`, or says why not.
/// `old_attribute` names the old id attribute in the reasons.
pub fn match_accounts(
    accounts: &BTreeMap<StableId, AccountRecord>,
    agents: &[Agent],
    old_attribute: &str,
) -> Matching {
    let mut m = Matcher {
        accounts,
        agents,
        old_attribute,
        account_done: HashMap::new(),
        agent_done: HashMap::new(),
        matching: Matching::default(),
    };
    let by_id: HashMap<&StableId, usize> =
        agents.iter().enumerate().map(|(i, a)| (&a.id, i)).collect();
    m.tier(By::SameId, |account| {
        by_id
            .get(&account.id)
            .map(|&i| (i, account.id.0.clone()))
            .into_iter()
            .collect()
    });
    let mut by_old: HashMap<&StableId, Vec<usize>> = HashMap::new();
    for (i, agent) in agents.iter().enumerate() {
        if let Some(old) = &agent.old_id {
            by_old.entry(old).or_default().push(i);
        }
    }
    m.tier(By::OldId, |account| {
        by_old
            .get(&account.id)
            .into_iter()
            .flatten()
            .map(|&i| (i, account.id.0.clone()))
            .collect()
    });
    // Only agents without the old attribute can be tied by what a former holder may share.
    let mut by_dn: HashMap<DnKey, Vec<usize>> = HashMap::new();
    let mut by_email: HashMap<String, Vec<usize>> = HashMap::new();
    for (i, agent) in agents
        .iter()
        .enumerate()
        .filter(|(_, a)| a.old_id.is_none())
    {
        by_dn.entry(DnKey::lenient(&agent.dn)).or_default().push(i);
        for email in &agent.emails {
            by_email.entry(email.to_lowercase()).or_default().push(i);
        }
    }
    m.tier(By::Dn, |account| {
        by_dn
            .get(&DnKey::lenient(&account.dn))
            .into_iter()
            .flatten()
            .map(|&i| (i, account.dn.clone()))
            .collect()
    });
    m.tier(By::Email, |account| {
        let mut ties: Vec<(usize, String)> = account
            .emails
            .iter()
            .flat_map(|e| {
                let email = e.to_lowercase();
                by_email
                    .get(&email)
                    .into_iter()
                    .flatten()
                    .map(move |&i| (i, email.clone()))
            })
            .collect();
        ties.sort();
        ties.dedup_by_key(|(i, _)| *i);
        ties
    });
    m.finish()
}

/// How an account or agent was settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Done {
    /// Matched, by this tie.
    Matched(By),
    Ambiguous,
}

struct Matcher<'a> {
    accounts: &'a BTreeMap<StableId, AccountRecord>,
    agents: &'a [Agent],
    old_attribute: &'a str,
    account_done: HashMap<&'a StableId, Done>,
    agent_done: HashMap<usize, (Done, Option<&'a StableId>)>,
    matching: Matching,
}

impl<'a> Matcher<'a> {
    /// Ties the accounts still open to agents by `ties` (agent index, shared value), and
    /// settles what the ties say: one to one is a match, anything else ambiguous.
    fn tier(&mut self, by: By, ties: impl Fn(&AccountRecord) -> Vec<(usize, String)>) {
        // Account → its ties to open agents; agent → the open accounts tied to it.
        let mut links: BTreeMap<&'a StableId, Vec<(usize, String)>> = BTreeMap::new();
        let mut claimed: BTreeMap<usize, Vec<&'a StableId>> = BTreeMap::new();
        for (key, account) in self.accounts {
            if self.account_done.contains_key(key) {
                continue;
            }
            let (open, taken): (Vec<_>, Vec<_>) = ties(account)
                .into_iter()
                .partition(|(i, _)| !self.agent_done.contains_key(i));
            if let Some((agent, _)) = taken.first() {
                // Tied to an agent an earlier tier settled: a second account for it.
                self.taken(key, *agent, by);
                continue;
            }
            for (i, _) in &open {
                claimed.entry(*i).or_default().push(key);
            }
            if !open.is_empty() {
                links.insert(key, open);
            }
        }
        for (key, ties) in &links {
            if self.account_done.contains_key(key) {
                continue;
            }
            match ties.as_slice() {
                [(agent, via)] if claimed.get(agent).is_some_and(|c| c.len() == 1) => {
                    self.matched(key, *agent, by, via);
                }
                _ => self.tied_up(key, by, &links, &claimed),
            }
        }
    }

    fn matched(&mut self, key: &'a StableId, agent: usize, by: By, via: &str) {
        let (Some(account), Some(a)) = (self.accounts.get(key), self.agents.get(agent)) else {
            return;
        };
        self.account_done.insert(key, Done::Matched(by));
        self.agent_done
            .insert(agent, (Done::Matched(by), Some(key)));
        self.matching.matched.push(Match {
            from: key.clone(),
            to: a.id.clone(),
            mxid: account.mxid.clone(),
            dn: a.dn.clone(),
            by,
            via: via.to_string(),
        });
    }

    /// The account `key` is tied by `by` to `agent`, which an earlier tier settled.
    fn taken(&mut self, key: &'a StableId, agent: usize, by: By) {
        let (Some(account), Some(a)) = (self.accounts.get(key), self.agents.get(agent)) else {
            return;
        };
        let holder = match self.agent_done.get(&agent) {
            Some((Done::Matched(first), Some(other))) => self.accounts.get(*other).map(|o| {
                format!(
                    "is already {}'s (by {})",
                    o.mxid,
                    by_text(*first, self.old_attribute)
                )
            }),
            _ => None,
        }
        .unwrap_or_else(|| "is itself ambiguous".into());
        self.account_done.insert(key, Done::Ambiguous);
        self.matching.ambiguous.push(Ambiguous {
            by,
            accounts: vec![(key.clone(), account.mxid.clone())],
            agents: vec![(a.id.clone(), a.dn.clone())],
            reason: format!(
                "{} matches {} by {}, but that agent {holder}: two accounts for one agent, settle it by hand",
                account.mxid,
                a.dn,
                by_text(by, self.old_attribute)
            ),
        });
    }

    /// Settles as ambiguous every account and agent tied, directly or not, to `key` in this
    /// tier.
    fn tied_up(
        &mut self,
        key: &'a StableId,
        by: By,
        links: &BTreeMap<&'a StableId, Vec<(usize, String)>>,
        claimed: &BTreeMap<usize, Vec<&'a StableId>>,
    ) {
        let mut accounts: BTreeSet<&'a StableId> = BTreeSet::new();
        let mut agents: BTreeSet<usize> = BTreeSet::new();
        let mut todo = vec![key];
        while let Some(k) = todo.pop() {
            if !accounts.insert(k) {
                continue;
            }
            for (i, _) in links.get(k).into_iter().flatten() {
                if agents.insert(*i) {
                    todo.extend(claimed.get(i).into_iter().flatten().copied());
                }
            }
        }
        for k in &accounts {
            self.account_done.insert(k, Done::Ambiguous);
        }
        for i in &agents {
            self.agent_done.insert(*i, (Done::Ambiguous, None));
        }
        let accounts: Vec<(StableId, String)> = accounts
            .iter()
            .filter_map(|k| {
                self.accounts
                    .get(*k)
                    .map(|a| ((*k).clone(), a.mxid.clone()))
            })
            .collect();
        let agents: Vec<(StableId, String)> = agents
            .iter()
            .filter_map(|i| self.agents.get(*i).map(|a| (a.id.clone(), a.dn.clone())))
            .collect();
        let names = |list: &[(StableId, String)]| {
            list.iter()
                .map(|(_, name)| name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let reason = format!(
            "{} account(s) ({}) and {} agent(s) ({}) are tied by {}, not one to one",
            accounts.len(),
            names(&accounts),
            agents.len(),
            names(&agents),
            by_text(by, self.old_attribute)
        );
        self.matching.ambiguous.push(Ambiguous {
            by,
            accounts,
            agents,
            reason,
        });
    }

    fn finish(mut self) -> Matching {
        let old_attribute = self.old_attribute;
        for (key, account) in self.accounts {
            if self.account_done.contains_key(key) {
                continue;
            }
            let emails = match account.emails.as_slice() {
                [] => String::new(),
                list => format!(" or e-mail {}", list.join(", ")),
            };
            self.matching.unmatched.push(Unmatched {
                id: key.clone(),
                mxid: account.mxid.clone(),
                dn: account.dn.clone(),
                deactivated: matches!(account.status, AccountStatus::Deactivated { .. }),
                reason: format!(
                    "no agent has {old_attribute} {key}, and none without {old_attribute} has DN {}{emails}",
                    account.dn
                ),
            });
        }
        for (i, agent) in self.agents.iter().enumerate() {
            if !self.agent_done.contains_key(&i) {
                self.matching.new_agents.push(NewAgent {
                    id: agent.id.clone(),
                    dn: agent.dn.clone(),
                });
            }
        }
        self.matching.matched.sort_by(|a, b| a.from.cmp(&b.from));
        self.matching
    }
}

/// The tie in words, the old id attribute named.
pub fn by_text(by: By, old_attribute: &str) -> String {
    match by {
        By::SameId => "the same id".into(),
        By::OldId => old_attribute.into(),
        By::Dn => "DN".into(),
        By::Email => "e-mail".into(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
