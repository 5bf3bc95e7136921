//! `migrate-ids`: after the mapping's id attribute (or format) changed, every agent has a new
//! stable id and would look new to a plan — a second account each, and the real ones
//! suspended. The brake holds such a plan whole; this re-keys the ledger instead: it reads the
//! directory with the current rules, ties each managed account (keyed by its old id) to its
//! agent (see [`matcher`]) and, with `--apply`, gives each account its agent's new id in
//! every tree of the ledger at once ([`Ledger::rekey`]), recording the new scope as the last
//! good run. The next `sync` then plans against the new ids: nothing to create, nothing gone.

pub mod matcher;

use crate::clock::format_time;
use crate::config::Config;
use crate::directory::{
    self, guid_to_string, DirectoryError, Entry, IdFormat, SkippedEntry, StableId,
};
use crate::ledger::{
    AuditEntry, LastGood, Ledger, LedgerError, Rekey, RekeyError, Rekeyed, RunRecord, Scope,
};
use crate::mapping::{self, Rules};
pub use matcher::by_text;
use matcher::{Agent, By, Matching};

/// Where the ledger's keys come from: the old id attribute and its format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OldIds {
    pub attribute: String,
    pub format: IdFormat,
}

impl OldIds {
    /// `attribute` and `format` as given on the command line, else the last good run's (a
    /// format not given is the last good run's for the same attribute, else `guid` for an
    /// `objectGUID`, else `text`).
    pub fn choose(
        attribute: Option<&str>,
        format: Option<IdFormat>,
        last: Option<&LastGood>,
    ) -> Result<OldIds, String> {
        let spec = last.and_then(|l| l.spec.as_ref());
        let Some(attribute) = attribute.or(spec.map(|s| s.id_attribute.as_str())) else {
            return Err(match last {
                Some(_) => "the ledger does not say which id attribute its keys come from (its last good run \
                            predates this version): give it with --from-attribute, e.g. --from-attribute entryUUID"
                    .into(),
                None => "the ledger has no good run yet, so its keys come from no known id attribute: \
                         give it with --from-attribute, e.g. --from-attribute entryUUID"
                    .into(),
            });
        };
        let same = spec.filter(|s| s.id_attribute.eq_ignore_ascii_case(attribute));
        let format = format.or(same.map(|s| s.id_format)).unwrap_or(
            match attribute.eq_ignore_ascii_case("objectGUID") {
                true => IdFormat::Guid,
                false => IdFormat::Text,
            },
        );
        Ok(OldIds {
            attribute: attribute.to_string(),
            format,
        })
    }

    /// The id attribute in words, with its format.
    pub fn describe(&self) -> String {
        describe(&self.attribute, self.format)
    }

    /// `entry`'s value of the old id attribute, if it has exactly one.
    fn of(&self, entry: &Entry) -> Option<StableId> {
        match self.format {
            IdFormat::Text => match entry.values(&self.attribute) {
                [value] if !value.trim().is_empty() => Some(StableId(value.trim().to_string())),
                _ => None,
            },
            IdFormat::Guid => {
                let binary = entry
                    .binary
                    .get(&self.attribute.to_ascii_lowercase())
                    .and_then(|values| match values.as_slice() {
                        [value] => guid_to_string(value),
                        _ => None,
                    });
                binary
                    .or_else(|| match entry.values(&self.attribute) {
                        [value] => guid_to_string(value.as_bytes()),
                        _ => None,
                    })
                    .map(StableId)
            }
        }
    }
}

/// An id attribute with its format, e.g. `entryUUID (text)`.
pub fn describe(attribute: &str, format: IdFormat) -> String {
    let format = match format {
        IdFormat::Text => "text",
        IdFormat::Guid => "guid",
    };
    format!("{attribute} ({format})")
}

/// What a migration would do (or did).
#[derive(Debug, Clone)]
pub struct Migration {
    pub from: OldIds,
    /// The scope the agents were read with now: recorded as the last good run's.
    pub to: Scope,
    /// The directory URL that answered.
    pub server: String,
    /// Agent entries the directory returned (those without the new id attribute too).
    pub agents: usize,
    /// Entries without a usable new id: no account can be re-keyed to them.
    pub without_id: Vec<SkippedEntry>,
    pub managed: usize,
    pub matching: Matching,
}

impl Migration {
    /// Why `--apply` is refused, if it is: an ambiguous tie, or an account not deactivated
    /// that no agent is tied to, unless `allow_unmatched` (those keep their old ids).
    pub fn refusal(&self, allow_unmatched: bool) -> Option<String> {
        let ambiguous = self.matching.ambiguous.len();
        let unmatched = self.unmatched_active();
        if allow_unmatched || ambiguous + unmatched == 0 {
            return None;
        }
        Some(format!(
            "{unmatched} account(s) not deactivated match no agent and {ambiguous} tie(s) are ambiguous: \
             fix the directory or the rules and run `migrate-ids` again, or add --allow-unmatched to re-key \
             the accounts that match (the others keep their old ids: the next complete `sync` takes them for \
             gone, within the brake's limits, and creates accounts for the agents left without one)"
        ))
    }

    /// Unmatched accounts that are not deactivated (those matter: their agents may be there).
    pub fn unmatched_active(&self) -> usize {
        self.matching
            .unmatched
            .iter()
            .filter(|u| !u.deactivated)
            .count()
    }

    /// How many accounts were matched by `by`.
    pub fn count(&self, by: By) -> usize {
        self.matching.matched.iter().filter(|m| m.by == by).count()
    }
}

/// Reads the directory with `rules` (and the old id attribute) and ties each account of
/// `ledger` to its agent. Writes nothing.
pub async fn prepare(
    config: &Config,
    rules: &Rules,
    ledger: &Ledger,
    from: OldIds,
    now: i64,
) -> Result<Migration, MigrateError> {
    let mut query = crate::pipeline::agent_query(rules);
    if !query
        .attributes
        .iter()
        .any(|a| a.eq_ignore_ascii_case(&from.attribute))
    {
        query.attributes.push(from.attribute.clone());
    }
    let snapshot = directory::read_snapshot(&config.directory, &query).await?;
    // The e-mails as the rules map them (an agent the rules skip is still matched).
    let mut mapper = mapping::Mapper::new(rules, now);
    for entry in &snapshot.entries {
        mapper.add(entry);
    }
    let desired = mapper.finish_accounts(&snapshot);
    let emails: std::collections::HashMap<&StableId, &Vec<String>> = desired
        .accounts
        .iter()
        .map(|a| (&a.id, &a.emails))
        .collect();
    let agents: Vec<Agent> = snapshot
        .entries
        .iter()
        .map(|entry| Agent {
            id: entry.id.clone(),
            dn: entry.dn.clone(),
            old_id: from.of(entry),
            emails: emails
                .get(&entry.id)
                .map(|e| e.to_vec())
                .unwrap_or_default(),
        })
        .collect();
    let view = ledger.view()?;
    let matching = matcher::match_accounts(&view.accounts, &agents, &from.attribute);
    Ok(Migration {
        to: crate::brake::scope(config, rules),
        from,
        server: snapshot.server.clone(),
        agents: snapshot.agents(),
        without_id: snapshot.skipped,
        managed: view.accounts.len(),
        matching,
    })
}

/// Re-keys `ledger` as `migration` says, at `now`: every matched account gets its agent's id,
/// with an audit entry saying how they were tied; the new scope becomes the last good run's.
pub fn apply(ledger: &Ledger, migration: &Migration, now: i64) -> Result<Rekeyed, RekeyError> {
    let to = describe(&migration.to.id_attribute, migration.to.id_format);
    let rekeys: Vec<Rekey> = migration
        .matching
        .rekeys()
        .map(|m| Rekey {
            from: m.from.clone(),
            to: m.to.clone(),
            audit: AuditEntry {
                at: now,
                mxid: m.mxid.clone(),
                id: m.to.clone(),
                action: "migrate_id".into(),
                reason: format!(
                    "stable id {} → {} ({} → {to}), matched by {}: {}",
                    m.from,
                    m.to,
                    migration.from.describe(),
                    by_text(m.by, &migration.from.attribute),
                    m.via
                ),
                result: "ok".into(),
            },
        })
        .collect();
    let last_good = LastGood {
        agents: migration.agents,
        scope: migration.to.digest(),
        at: now,
        spec: Some(migration.to.clone()),
    };
    let run = RunRecord {
        started_at: now,
        finished_at: now,
        server: migration.server.clone(),
        agents: migration.agents,
        skipped: migration.without_id.len(),
        outcome: format!(
            "ids migrated ({} → {to}) at {}: {} account(s) re-keyed",
            migration.from.describe(),
            format_time(now),
            rekeys.len()
        ),
        ..RunRecord::default()
    };
    ledger.rekey(&rekeys, &last_good, &run)
}

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("directory: {0}")]
    Directory(#[from] DirectoryError),
    #[error("ledger: {0}")]
    Ledger(#[from] LedgerError),
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn last(attribute: &str, format: IdFormat) -> LastGood {
        let spec = Scope {
            filter: "(uid=*)".into(),
            bases: vec![],
            id_attribute: attribute.into(),
            id_format: format,
        };
        LastGood {
            agents: 1,
            scope: spec.digest(),
            at: 0,
            spec: Some(spec),
        }
    }

    #[test]
    fn the_old_ids_come_from_the_option_or_the_last_good_run() {
        let guid = last("objectGUID", IdFormat::Guid);
        let cases = [
            (None, None, Some(&guid), Ok(("objectGUID", IdFormat::Guid))),
            (
                Some("entryUUID"),
                None,
                Some(&guid),
                Ok(("entryUUID", IdFormat::Text)),
            ),
            (
                Some("objectguid"),
                None,
                None,
                Ok(("objectguid", IdFormat::Guid)),
            ),
            (
                Some("x"),
                Some(IdFormat::Guid),
                None,
                Ok(("x", IdFormat::Guid)),
            ),
        ];
        for (attribute, format, last, expected) in cases {
            let got = OldIds::choose(attribute, format, last);
            assert_eq!(
                got.as_ref().map(|o| (o.attribute.as_str(), o.format)),
                expected.as_ref().map(|(a, f)| (*a, *f)),
                "{attribute:?}"
            );
        }
        let mut legacy = guid.clone();
        legacy.spec = None;
        let err = OldIds::choose(None, None, Some(&legacy)).unwrap_err();
        assert!(err.contains("--from-attribute"), "{err}");
        assert!(OldIds::choose(None, None, None).is_err());
    }

    #[test]
    fn an_entry_gives_its_one_old_id_as_text_or_guid() {
        let text = OldIds {
            attribute: "entryUUID".into(),
            format: IdFormat::Text,
        };
        let entry = Entry::with_attrs("uid=a", "a", &[("entryUUID", " 1234 ")]);
        assert_eq!(text.of(&entry), Some(StableId("1234".into())));
        let two = Entry::with_attrs("uid=a", "a", &[("entryUUID", "1"), ("entryUUID", "2")]);
        assert_eq!(text.of(&two), None);
        assert_eq!(text.of(&Entry::with_attrs("uid=a", "a", &[])), None);
        let guid = OldIds {
            attribute: "objectGUID".into(),
            format: IdFormat::Guid,
        };
        let mut entry = Entry::with_attrs("uid=a", "a", &[]);
        entry.binary.insert(
            "objectguid".into(),
            vec![vec![
                0x90, 0x39, 0x5f, 0x19, 0x1a, 0xb5, 0x1b, 0x4a, 0x9e, 0x9c, 0xf4, 0xbe, 0x59, 0x16,
                0xd8, 0x94,
            ]],
        );
        assert_eq!(
            guid.of(&entry),
            Some(StableId("195f3990-b51a-4a1b-9e9c-f4be5916d894".into()))
        );
    }
}
