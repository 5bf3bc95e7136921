//! Shadow accounts: accounts the daemon does not manage that an agent can log in to beside
//! their synced one — a password login through synapse-ldap3 that made `@cdurand` next to
//! `@catherine.durand`, an e-mail login that moved the agent's address onto a new account. A
//! departed agent's shadow that still works is a security finding: the departure the daemon
//! applied protects nothing while it stays open.

use std::collections::HashMap;

use crate::ledger::Shadow;
use crate::mapping::{AgentState, Desired, DesiredAccount, ShadowPolicy};

use super::{Action, Conflict};

/// An account the homeserver has and the ledger does not manage.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UnmanagedAccount {
    pub mxid: String,
    /// Its e-mail threepids.
    pub emails: Vec<String>,
    pub locked: bool,
    pub deactivated: bool,
    pub admin: bool,
}

/// The shadows among `unmanaged` of the agents of `desired` (`mxids`: each agent's own
/// account, when it has one), leaving out the accounts that are conflicts (an agent's own
/// mxid held by someone else), homeserver admins and deactivated accounts.
pub fn find(
    desired: &Desired,
    mxids: &HashMap<&str, &str>,
    unmanaged: &[UnmanagedAccount],
    conflicts: &[Conflict],
) -> Vec<Shadow> {
    let mut by_login: HashMap<String, &DesiredAccount> = HashMap::new();
    let mut by_email: HashMap<String, &DesiredAccount> = HashMap::new();
    for want in &desired.accounts {
        if let Some(login) = &want.login {
            by_login.insert(login.to_lowercase(), want);
        }
        for email in &want.emails {
            by_email.insert(email.to_lowercase(), want);
        }
    }
    let mut shadows = Vec::new();
    for account in unmanaged {
        if account.admin || account.deactivated || conflicts.iter().any(|c| c.mxid == account.mxid)
        {
            continue;
        }
        let localpart = localpart_of(&account.mxid);
        let found = by_login
            .get(localpart)
            .map(|want| (*want, format!("login {localpart}")))
            .or_else(|| {
                account.emails.iter().find_map(|email| {
                    by_email
                        .get(&email.to_lowercase())
                        .map(|want| (*want, format!("e-mail {email}")))
                })
            });
        let Some((want, matched)) = found else {
            continue;
        };
        let agent_mxid = mxids.get(want.id.0.as_str()).map(|m| m.to_string());
        if agent_mxid.as_deref() == Some(account.mxid.as_str()) {
            continue;
        }
        shadows.push(Shadow {
            mxid: account.mxid.clone(),
            id: want.id.clone(),
            dn: want.dn.clone(),
            agent_mxid,
            matched,
            departed: matches!(want.state, AgentState::Departed { .. }),
            locked: account.locked,
        });
    }
    shadows.sort_by(|a, b| a.mxid.cmp(&b.mxid));
    shadows
}

/// The locks `policy` asks for: a departed agent's shadow that is still open.
pub fn locks(shadows: &[Shadow], policy: ShadowPolicy) -> Vec<Action> {
    if policy != ShadowPolicy::Lock {
        return Vec::new();
    }
    shadows
        .iter()
        .filter(|s| s.departed && !s.locked)
        .map(|s| Action::LockShadow {
            id: s.id.clone(),
            mxid: s.mxid.clone(),
            reason: format!(
                "shadow account of departed agent {} (matched by {}); [login] shadow_accounts = \"lock\"",
                s.dn, s.matched
            ),
        })
        .collect()
}

/// One line per finding for the log and the plan's warnings: a departed agent's open shadow.
pub fn security_findings(shadows: &[Shadow]) -> Vec<String> {
    shadows
        .iter()
        .filter(|s| s.departed && !s.locked)
        .map(|s| {
            format!(
                "SECURITY: departed agent {} can still use {} (an account the daemon does not manage, matched by {}); lock it, or set [login] shadow_accounts = \"lock\"",
                s.dn, s.mxid, s.matched
            )
        })
        .collect()
}

fn localpart_of(mxid: &str) -> &str {
    let rest = mxid.strip_prefix('@').unwrap_or(mxid);
    rest.split_once(':').map_or(rest, |(l, _)| l)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::directory::StableId;

    fn agent(id: &str, login: &str, email: &str, departed: bool) -> DesiredAccount {
        DesiredAccount {
            id: StableId(id.into()),
            dn: format!("uid={login},ou=people,dc=example,dc=org"),
            localpart: format!("{login}.x"),
            display_name: login.into(),
            emails: vec![email.into()],
            state: if departed {
                AgentState::Departed {
                    reason: "employeeType = departed".into(),
                    since: None,
                }
            } else {
                AgentState::Active
            },
            login: Some(login.to_uppercase()),
            external_ids: vec![],
        }
    }

    fn account(mxid: &str, emails: &[&str]) -> UnmanagedAccount {
        UnmanagedAccount {
            mxid: mxid.into(),
            emails: emails.iter().map(|e| e.to_string()).collect(),
            ..UnmanagedAccount::default()
        }
    }

    #[test]
    fn shadows_are_found_by_login_or_email_and_departed_ones_are_findings() {
        let desired = Desired {
            accounts: vec![
                agent("1", "cdurand", "catherine.durand@example.org", false),
                agent("2", "glebihan", "g.lebihan@example.org", true),
            ],
            ..Desired::default()
        };
        let mxids = HashMap::from([("1", "@catherine.durand:example.org")]);
        let unmanaged = [
            account("@cdurand:example.org", &[]),
            account("@gilles:example.org", &["G.Lebihan@example.org"]),
            account("@stranger:example.org", &["x@example.org"]),
            UnmanagedAccount {
                admin: true,
                ..account("@glebihan:example.org", &[])
            },
        ];
        let shadows = find(&desired, &mxids, &unmanaged, &[]);
        let found: Vec<_> = shadows
            .iter()
            .map(|s| (s.mxid.as_str(), s.id.0.as_str(), s.matched.as_str()))
            .collect();
        assert_eq!(
            found,
            vec![
                ("@cdurand:example.org", "1", "login cdurand"),
                ("@gilles:example.org", "2", "e-mail G.Lebihan@example.org"),
            ]
        );
        assert_eq!(
            shadows[0].agent_mxid.as_deref(),
            Some("@catherine.durand:example.org")
        );
        let findings = security_findings(&shadows);
        assert_eq!(findings.len(), 1, "{findings:?}");
        assert!(findings[0].contains("@gilles:example.org"));
        assert!(locks(&shadows, ShadowPolicy::Report).is_empty());
        let locks = locks(&shadows, ShadowPolicy::Lock);
        assert_eq!(locks.len(), 1);
        assert_eq!(locks[0].mxid(), "@gilles:example.org");
        assert_eq!(locks[0].id().0, "2", "the departure it belongs to");
    }

    #[test]
    fn a_locked_shadow_or_a_conflict_is_not_acted_on_again() {
        let desired = Desired {
            accounts: vec![agent("2", "glebihan", "g@example.org", true)],
            ..Desired::default()
        };
        let mut locked = account("@glebihan:example.org", &[]);
        locked.locked = true;
        let shadows = find(&desired, &HashMap::new(), &[locked], &[]);
        assert_eq!(shadows.len(), 1);
        assert!(locks(&shadows, ShadowPolicy::Lock).is_empty());
        assert!(security_findings(&shadows).is_empty());
        let conflict = Conflict {
            id: StableId("9".into()),
            dn: String::new(),
            mxid: "@glebihan:example.org".into(),
            reason: String::new(),
        };
        let open = account("@glebihan:example.org", &[]);
        assert!(find(&desired, &HashMap::new(), &[open], &[conflict]).is_empty());
    }
}
