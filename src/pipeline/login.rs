//! A plan's login warnings: each agent's login checked against the account it really has (in
//! the ledger: it may have been created under another localpart rule, or have got `name2`
//! because someone else held `name`) or gets in this plan.

use std::collections::HashMap;

use crate::directory::StableId;
use crate::ledger::LedgerView;
use crate::mapping::{Desired, LoginPath, Rules};
use crate::plan::{Action, Plan};

/// The warnings `[login]` gives for `desired` planned as `plan` against `view`.
pub(super) fn warnings(
    rules: &Rules,
    desired: &Desired,
    view: &LedgerView,
    plan: &Plan,
) -> Vec<String> {
    match &rules.login.path {
        LoginPath::Undeclared => vec![undeclared(rules)],
        LoginPath::None => Vec::new(),
        // Only the ldap3 checks look at localparts.
        LoginPath::Sso { .. } => rules
            .login
            .warnings(desired.accounts.iter().map(|a| (a, a.localpart.as_str()))),
        LoginPath::Ldap3 { .. } => {
            let created: HashMap<&StableId, &str> = plan
                .actions
                .iter()
                .filter_map(|a| match a {
                    Action::CreateAccount { id, localpart, .. } => Some((id, localpart.as_str())),
                    _ => None,
                })
                .collect();
            let localpart_of = |id: &StableId| -> Option<&str> {
                if let Some(record) = view.accounts.get(id) {
                    return Some(&record.localpart);
                }
                if let Ok(i) = view.in_step.binary_search_by(|(other, _)| other.cmp(id)) {
                    return view.in_step.get(i).map(|(_, mxid)| mxid_localpart(mxid));
                }
                created.get(id).copied()
            };
            rules.login.warnings(
                desired
                    .accounts
                    .iter()
                    .map(|a| (a, localpart_of(&a.id).unwrap_or(&a.localpart))),
            )
        }
    }
}

/// The one warning of a mapping without `[login]`.
pub fn undeclared(rules: &Rules) -> String {
    format!(
        "{}: no [login] section: nothing checks that agents' logins reach their synced accounts \
         (with synapse-ldap3 and a localpart other than the login, every agent lands on a new, \
         empty account); declare path = \"ldap3\", \"sso\" or \"none\" (docs/login.md)",
        rules.source.display()
    )
}

/// `alice` of `@alice:example.org`.
fn mxid_localpart(mxid: &str) -> &str {
    let bare = mxid.strip_prefix('@').unwrap_or(mxid);
    bare.split_once(':')
        .map_or(bare, |(localpart, _)| localpart)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::directory::Entry;
    use crate::ledger::{AccountRecord, AccountStatus, Origin};
    use crate::mapping::map_snapshot;
    use crate::plan::{self, Policy};

    fn rules(login: &str) -> Rules {
        let text = format!(
            r#"
[agent]
filter = "(objectClass=inetOrgPerson)"
id_attribute = "entryUUID"
id_format = "text"
login_attribute = "uid"
[account]
localpart = "{{uid|lower}}"
display_name = "{{cn}}"
{login}
"#
        );
        Rules::parse(Path::new("m.toml"), &text).unwrap()
    }

    fn entry(id: &str, uid: &str) -> Entry {
        Entry::with_attrs(
            &format!("uid={uid},dc=example,dc=org"),
            id,
            &[("uid", uid), ("cn", uid)],
        )
    }

    fn record(id: &str, localpart: &str, uid: &str) -> AccountRecord {
        AccountRecord {
            id: StableId(id.into()),
            mxid: format!("@{localpart}:example.org"),
            localpart: localpart.into(),
            dn: format!("uid={uid},dc=example,dc=org"),
            display_name: uid.into(),
            emails: vec![],
            external_ids: vec![],
            origin: Origin::Created,
            created_at: 0,
            updated_at: 0,
            status: AccountStatus::Active,
        }
    }

    #[test]
    fn the_ledger_s_localparts_are_what_logins_are_checked_against() {
        let rules = rules("[login]\npath = \"ldap3\"");
        let snapshot = crate::directory::Snapshot::complete(
            vec![
                // Created under a former given.sn rule: the login lands elsewhere.
                entry("a", "cdurand"),
                // In step, created under this rule.
                entry("b", "ablanc"),
                // New: `jmartin` is held by an agent who left long ago, so `jmartin2`.
                entry("c", "jmartin"),
                // New, and free.
                entry("d", "zfaure"),
            ],
            vec![],
            "ldap://test",
        );
        let desired = map_snapshot(&snapshot, &rules, 0);
        let mut old_jmartin = record("z", "jmartin", "jmartin-old");
        old_jmartin.status = AccountStatus::Deactivated {
            at: 0,
            reason: "left".into(),
        };
        let view = LedgerView {
            accounts: [record("a", "catherine.durand", "cdurand"), old_jmartin]
                .into_iter()
                .map(|r| (r.id.clone(), r))
                .collect(),
            in_step: vec![(StableId("b".into()), "@ablanc:example.org".into())],
            ..LedgerView::default()
        };
        let policy = Policy::for_tests("example.org", 0, 0);
        let plan = plan::plan(&desired, &view, &policy);
        let warnings = warnings(&rules, &desired, &view, &plan);
        assert_eq!(warnings.len(), 1, "{warnings:#?}");
        assert!(
            warnings[0].contains("2 agent(s) would log in to another account"),
            "{}",
            warnings[0]
        );
        assert!(
            warnings[0].contains(
                "uid=cdurand,dc=example,dc=org: `cdurand` → @cdurand, not @catherine.durand"
            ),
            "{}",
            warnings[0]
        );
        assert!(
            warnings[0]
                .contains("uid=jmartin,dc=example,dc=org: `jmartin` → @jmartin, not @jmartin2"),
            "{}",
            warnings[0]
        );
    }

    #[test]
    fn a_mapping_without_login_says_so_once() {
        let undeclared = rules("");
        let w = warnings(
            &undeclared,
            &Desired::default(),
            &LedgerView::default(),
            &Plan::default(),
        );
        assert_eq!(w.len(), 1);
        assert!(w[0].starts_with("m.toml: no [login] section"), "{}", w[0]);
        let none = rules("[login]\npath = \"none\"");
        assert_eq!(
            warnings(
                &none,
                &Desired::default(),
                &LedgerView::default(),
                &Plan::default()
            ),
            Vec::<String>::new()
        );
    }
}
