//! What `check` and `plan` say about logins that would not reach their accounts: one
//! summarised line per kind of problem.

use std::collections::BTreeMap;
use std::fmt::Write;

use super::is_synapse_localpart;
use crate::mapping::DesiredAccount;

/// The warnings of an `ldap3` deployment (see [`LoginRules::warnings`]).
pub(super) fn ldap3_warnings<'a>(
    attribute: &str,
    accounts: impl Iterator<Item = (&'a DesiredAccount, &'a str)>,
) -> Vec<String> {
    let head = format!("login (synapse-ldap3, `{attribute}`)");
    let mut no_login = Vec::new();
    let mut illegal = Vec::new();
    let mut elsewhere = Vec::new();
    let mut capitals = Vec::new();
    let mut by_login: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    for (account, localpart) in accounts {
        let Some(login) = account.login.as_deref() else {
            no_login.push(account.dn.clone());
            continue;
        };
        let lowered = login.to_lowercase();
        by_login
            .entry(lowered.clone())
            .or_default()
            .push(&account.dn);
        if !is_synapse_localpart(&lowered) {
            illegal.push(format!("{}: `{login}`", account.dn));
        } else if lowered != localpart {
            elsewhere.push(format!(
                "{}: `{login}` → @{lowered}, not @{localpart}",
                account.dn
            ));
        } else if lowered != login && !account.emails.is_empty() {
            capitals.push(format!("{}: `{login}`", account.dn));
        }
    }
    let homonyms: Vec<String> = by_login
        .iter()
        .filter(|(_, dns)| dns.len() > 1)
        .map(|(login, dns)| format!("`{login}`: {}", dns.join(", ")))
        .collect();
    [
        summary(
            &format!(
                "{head}: {} agent(s) would log in to another account than theirs, a new and \
                 empty one, since their localpart is not their login lowercased",
                elsewhere.len()
            ),
            &elsewhere,
            &format!(
                ". Use localpart = \"{{{attribute}|lower}}\" (the *-ldap3.toml presets), or SSO \
                 for other localparts: see docs/login.md"
            ),
        ),
        summary(
            &format!(
                "{head}: {} agent(s) cannot log in: their login lowercased is not a legal \
                 Matrix localpart (Synapse refuses it)",
                illegal.len()
            ),
            &illegal,
            ". Give them a login of a-z, 0-9 and `._=-/+`, or use SSO",
        ),
        summary(
            &format!(
                "{head}: {} login(s) belong to several agents: synapse-ldap3 finds several \
                 entries for the login and logs none of them in, but by e-mail it logs each of \
                 them in to the account of the login, which is one agent's only",
                homonyms.len()
            ),
            &homonyms,
            ". Make logins unique (OpenLDAP's `unique` overlay, or one module `base` per \
             population)",
        ),
        summary(
            &format!(
                "{head}: {} agent(s) with capitals in their login cannot log in by e-mail \
                 (synapse-ldap3 0.4.0 hands Synapse the login as the directory writes it, and \
                 Synapse finds no such user); by login they can",
                capitals.len()
            ),
            &capitals,
            "",
        ),
        summary(
            &format!(
                "{head}: {} agent(s) have no `{attribute}` and cannot log in",
                no_login.len()
            ),
            &no_login,
            "",
        ),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// How many examples a summarised warning shows.
const EXAMPLES: usize = 3;

/// `<head>: a; b; c; and N more<tail>`, or nothing when there are no items.
pub(super) fn summary(head: &str, items: &[String], tail: &str) -> Option<String> {
    if items.is_empty() {
        return None;
    }
    let mut line = format!("{head}: {}", items[..items.len().min(EXAMPLES)].join("; "));
    if items.len() > EXAMPLES {
        let _ = write!(line, "; and {} more", items.len() - EXAMPLES);
    }
    line.push_str(tail);
    Some(line)
}
