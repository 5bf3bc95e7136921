//! Turns a [`Snapshot`] and the mapping [`Rules`] into the [`Desired`] state: which accounts
//! should exist and what their profiles should say. Pure: no LDAP, no homeserver, no ledger.

mod normalize;
pub mod rooms;
mod rules;
mod template;

pub use normalize::{strip_accents, to_localpart};
pub use rules::{AccountRules, AgentRules, Rules};
pub use template::{MissingAttribute, Template, TemplateError};

use serde::Serialize;

use crate::directory::{Entry, Snapshot, StableId};

/// An account as the directory says it should be.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DesiredAccount {
    pub id: StableId,
    pub dn: String,
    /// The localpart this agent would get if new; an existing account keeps its own.
    pub localpart: String,
    pub display_name: String,
    /// Sorted, without duplicates.
    pub emails: Vec<String>,
}

/// An agent entry that cannot become an account this run; it is left alone, never acted on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SkippedAgent {
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
}

/// Maps every entry of the snapshot; a bad entry is skipped with its reason, the rest goes on.
pub fn map_snapshot(snapshot: &Snapshot, rules: &Rules) -> Desired {
    let mut desired = Desired {
        skipped: snapshot
            .skipped
            .iter()
            .map(|s| SkippedAgent {
                dn: s.dn.clone(),
                reason: s.reason.clone(),
            })
            .collect(),
        ..Desired::default()
    };
    for entry in &snapshot.entries {
        match map_entry(entry, &rules.account, &mut desired.warnings) {
            Ok(account) => desired.accounts.push(account),
            Err(reason) => {
                tracing::warn!(dn = %entry.dn, %reason, "agent skipped");
                desired.skipped.push(SkippedAgent {
                    dn: entry.dn.clone(),
                    reason,
                });
            }
        }
    }
    desired.accounts.sort_by(|a, b| a.id.cmp(&b.id));
    let mapped = desired.accounts.iter().map(|a| a.id.clone()).collect();
    desired.rooms = rooms::map_rooms(snapshot, &rules.rooms, &mapped, &mut desired.warnings);
    desired
}

fn map_entry(
    entry: &Entry,
    rules: &AccountRules,
    warnings: &mut Vec<String>,
) -> Result<DesiredAccount, String> {
    let missing = |what: &str, MissingAttribute(attr): MissingAttribute| {
        format!("{what}: attribute `{attr}` is missing")
    };
    let localpart_text = rules
        .localpart
        .render(entry)
        .map_err(|m| missing("localpart", m))?;
    let localpart = to_localpart(&localpart_text);
    if localpart.is_empty() {
        return Err(format!(
            "localpart: `{localpart_text}` (from `{}`) has no character allowed in a Matrix user id",
            rules.localpart
        ));
    }
    let display_name = rules
        .display_name
        .render(entry)
        .map_err(|m| missing("display name", m))?;
    let mut emails = Vec::new();
    for template in &rules.emails {
        for address in template
            .render_all(entry)
            .map_err(|m| missing("e-mail", m))?
        {
            if normalize::looks_like_email(&address) {
                emails.push(address.to_lowercase());
            } else {
                let note = format!(
                    "{}: `{address}` is not an e-mail address, left out",
                    entry.dn
                );
                tracing::warn!("{note}");
                warnings.push(note);
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
    })
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
        let mut e = Entry {
            dn: format!("uid={id},ou=people,dc=example,dc=org"),
            id: StableId(id.into()),
            ..Entry::default()
        };
        for (k, v) in attrs {
            e.attrs
                .entry(k.to_ascii_lowercase())
                .or_default()
                .push(v.to_string());
        }
        e
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
        );
        assert_eq!(
            d.accounts
                .iter()
                .map(|a| a.localpart.as_str())
                .collect::<Vec<_>>(),
            vec!["jean.martin", "zoe.faure"]
        );
        assert_eq!(d.skipped.len(), 2);
        assert_eq!(d.skipped[0].dn, "uid=b,ou=people,dc=example,dc=org");
        assert!(
            d.skipped[0].reason.contains("`sn` is missing"),
            "{}",
            d.skipped[0].reason
        );
        assert!(
            d.skipped[1].reason.contains("no character allowed"),
            "{}",
            d.skipped[1].reason
        );
    }

    #[test]
    fn directory_skips_are_carried_over() {
        let mut s = snapshot(vec![]);
        s.skipped.push(crate::directory::SkippedEntry {
            dn: "cn=x".into(),
            reason: "no entryUUID".into(),
        });
        assert_eq!(
            map_snapshot(&s, &rules()).skipped,
            vec![SkippedAgent {
                dn: "cn=x".into(),
                reason: "no entryUUID".into()
            }]
        );
    }
}
