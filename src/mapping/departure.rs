//! Departure signals: what in an agent's entry says they left (disabled, expired, moved into a
//! "departed" OU). A value that cannot be read is an error for that agent — it is skipped,
//! never treated as a departure.

use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::{Date, OffsetDateTime, PrimitiveDateTime};

use crate::directory::{Dn, DnKey, Entry};

/// The `[departure]` section of the mapping rules.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DepartureRules {
    /// Entries at or under these DNs have left (e.g. `ou=departed,ou=people,dc=example,dc=org`),
    /// compared as RFC 4514 says (see [`Dn`]).
    #[serde(default, deserialize_with = "departed_ous")]
    pub departed_ous: Vec<Dn>,
    /// Attributes that mark an account disabled.
    #[serde(default)]
    pub disabled: Vec<DisabledSignal>,
    /// Attributes holding an expiry date; past it, the agent has left. A date in the future is
    /// a scheduled departure: nothing happens before it.
    #[serde(default)]
    pub expires: Vec<ExpirySignal>,
}

/// Disabled when the attribute has any of `bits` set (an integer, e.g. AD
/// `userAccountControl` bit 2), or equals one of `values` (case-insensitive, e.g.
/// `nsAccountLock = TRUE`, `employeeType = departed`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DisabledSignal {
    pub attribute: String,
    pub bits: Option<u64>,
    pub values: Option<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpirySignal {
    pub attribute: String,
    pub format: ExpiryFormat,
}

/// How an expiry attribute is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExpiryFormat {
    /// AD `accountExpires`: 100 ns ticks since 1601; 0 and 0x7FFFFFFFFFFFFFFF mean never.
    Filetime,
    /// `shadowExpire`: days since 1970-01-01; negative means never.
    Days,
    /// LDAP GeneralizedTime, e.g. `20261130120000Z`.
    Generalized,
    /// An ISO date (`2026-11-30`, midnight UTC) or an RFC 3339 date-time.
    Date,
}

/// Where an agent stands, as the directory says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum AgentState {
    Active,
    /// Still active, but an expiry date is set in the future.
    Scheduled {
        at: i64,
        reason: String,
    },
    /// Left; `since` when the directory says when (an expiry date).
    Departed {
        reason: String,
        since: Option<i64>,
    },
}

impl AgentState {
    /// What a departure scheduled at `at` (with the reason of [`AgentState::Scheduled`]) is
    /// as of `now`: still scheduled, or departed since `at`.
    pub fn scheduled_as_of(at: i64, reason: &str, now: i64) -> AgentState {
        if at > now {
            return AgentState::Scheduled {
                at,
                reason: reason.to_string(),
            };
        }
        let detail = reason.strip_prefix(SCHEDULED_PREFIX).unwrap_or(reason);
        AgentState::Departed {
            reason: format!("{DEPARTED_PREFIX}{detail}"),
            since: Some(at),
        }
    }
}

const SCHEDULED_PREFIX: &str = "expires: ";
const DEPARTED_PREFIX: &str = "expired: ";

const FILETIME_NEVER: i64 = 0x7FFF_FFFF_FFFF_FFFF;
/// Seconds between 1601-01-01 and 1970-01-01.
const FILETIME_EPOCH_OFFSET: i64 = 11_644_473_600;

impl DepartureRules {
    /// Checks the rules themselves; errors name the key.
    pub fn validate(&self) -> Result<(), (String, String)> {
        for (i, s) in self.disabled.iter().enumerate() {
            let key = format!("departure.disabled[{i}]");
            match (&s.bits, &s.values) {
                (Some(0), _) => return Err((key, "`bits = 0` matches nothing".into())),
                (Some(_), None) | (None, Some(_)) => {}
                _ => return Err((key, "give exactly one of `bits` or `values`".into())),
            }
        }
        Ok(())
    }

    /// Every attribute the signals read.
    pub fn attributes(&self) -> impl Iterator<Item = &str> {
        self.disabled
            .iter()
            .map(|s| s.attribute.as_str())
            .chain(self.expires.iter().map(|s| s.attribute.as_str()))
    }

    /// The agent's state at `now` (Unix seconds). Err: a signal attribute holds a value that
    /// cannot be read (the agent must then be left alone).
    pub fn evaluate(&self, entry: &Entry, now: i64) -> Result<AgentState, String> {
        // The entry's DN is parsed only when there are OUs to compare it with.
        let dn = (!self.departed_ous.is_empty()).then(|| DnKey::lenient(&entry.dn));
        if let Some(ou) =
            dn.and_then(|dn| self.departed_ous.iter().find(|ou| dn.is_under(ou.key())))
        {
            return Ok(AgentState::Departed {
                reason: format!("moved into {ou}"),
                since: None,
            });
        }
        for signal in &self.disabled {
            if let Some(reason) = signal.matches(entry)? {
                return Ok(AgentState::Departed {
                    reason,
                    since: None,
                });
            }
        }
        let mut scheduled: Option<(i64, String)> = None;
        for signal in &self.expires {
            let Some(at) = signal.expiry(entry)? else {
                continue;
            };
            let reason = format!("{} {}", signal.attribute, crate::clock::format_time(at));
            if at <= now {
                return Ok(AgentState::Departed {
                    reason: format!("{DEPARTED_PREFIX}{reason}"),
                    since: Some(at),
                });
            }
            if scheduled.as_ref().is_none_or(|(t, _)| at < *t) {
                scheduled = Some((at, format!("{SCHEDULED_PREFIX}{reason}")));
            }
        }
        Ok(match scheduled {
            Some((at, reason)) => AgentState::Scheduled { at, reason },
            None => AgentState::Active,
        })
    }
}

impl DisabledSignal {
    fn matches(&self, entry: &Entry) -> Result<Option<String>, String> {
        for value in entry.values(&self.attribute) {
            let hit = match (&self.bits, &self.values) {
                (Some(bits), _) => {
                    let n: i64 = value.trim().parse().map_err(|_| {
                        format!("`{}` is `{value}`, not an integer", self.attribute)
                    })?;
                    (n as u64) & bits != 0
                }
                (None, Some(values)) => values.iter().any(|v| v.eq_ignore_ascii_case(value.trim())),
                (None, None) => false,
            };
            if hit {
                return Ok(Some(format!("disabled: {}={value}", self.attribute)));
            }
        }
        Ok(None)
    }
}

impl ExpirySignal {
    /// The expiry time in Unix seconds, `None` if the attribute is absent or says "never".
    fn expiry(&self, entry: &Entry) -> Result<Option<i64>, String> {
        let Some(raw) = entry.first(&self.attribute) else {
            return Ok(None);
        };
        let value = raw.trim();
        let bad = |why: &str| format!("`{}` is `{value}`: {why}", self.attribute);
        match self.format {
            ExpiryFormat::Filetime => {
                let ticks: i64 = value.parse().map_err(|_| bad("not a FILETIME integer"))?;
                if ticks <= 0 || ticks == FILETIME_NEVER {
                    return Ok(None);
                }
                Ok(Some(ticks / 10_000_000 - FILETIME_EPOCH_OFFSET))
            }
            ExpiryFormat::Days => {
                let days: i64 = value.parse().map_err(|_| bad("not a number of days"))?;
                Ok((days >= 0).then_some(days * 86_400))
            }
            ExpiryFormat::Generalized => parse_generalized(value)
                .map(Some)
                .ok_or_else(|| bad("not a GeneralizedTime")),
            ExpiryFormat::Date => parse_date(value)
                .map(Some)
                .ok_or_else(|| bad("not a date (YYYY-MM-DD)")),
        }
    }
}

/// `20261130120000Z`, `20261130120000.0Z`; UTC only (what directories store).
fn parse_generalized(value: &str) -> Option<i64> {
    let digits: String = value.chars().take_while(char::is_ascii_digit).collect();
    if digits.len() < 14 || !value.ends_with('Z') {
        return None;
    }
    let format = format_description!("[year][month][day][hour][minute][second]");
    PrimitiveDateTime::parse(&digits[..14], &format)
        .ok()
        .map(|t| t.assume_utc().unix_timestamp())
}

fn parse_date(value: &str) -> Option<i64> {
    if let Ok(t) = OffsetDateTime::parse(value, &Rfc3339) {
        return Some(t.unix_timestamp());
    }
    let format = format_description!("[year]-[month]-[day]");
    Date::parse(value, &format)
        .ok()
        .map(|d| d.midnight().assume_utc().unix_timestamp())
}

/// `departed_ous`, each a DN: a bad one is an error naming its key and the text.
fn departed_ous<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Dn>, D::Error> {
    let texts: Vec<String> = Deserialize::deserialize(d)?;
    texts
        .iter()
        .enumerate()
        .map(|(i, text)| {
            Dn::parse(text).map_err(|e| {
                serde::de::Error::custom(format!("key `departure.departed_ous[{i}]`: {e}"))
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_795_000_000; // 2026-11-18

    fn entry(dn: &str, attrs: &[(&str, &str)]) -> Entry {
        Entry::with_attrs(dn, "x", attrs)
    }

    fn ad_rules() -> DepartureRules {
        toml::from_str(
            r#"
departed_ous = ["OU=Departed, DC=example,DC=org"]
disabled = [
  { attribute = "userAccountControl", bits = 2 },
  { attribute = "employeeType", values = ["departed", "retired"] },
]
expires = [
  { attribute = "accountExpires", format = "filetime" },
  { attribute = "shadowExpire", format = "days" },
  { attribute = "departureDate", format = "date" },
  { attribute = "hrEnd", format = "generalized" },
]
"#,
        )
        .unwrap()
    }

    fn state(attrs: &[(&str, &str)]) -> Result<AgentState, String> {
        ad_rules().evaluate(&entry("CN=A,OU=Staff,DC=example,DC=org", attrs), NOW)
    }

    fn departed(reason: &str) -> impl Fn(&Result<AgentState, String>) -> bool + '_ {
        move |s| matches!(s, Ok(AgentState::Departed { reason: r, .. }) if r.contains(reason))
    }

    #[test]
    fn signals_table() {
        // (attributes, what the state must be)
        let active = |s: &Result<AgentState, String>| matches!(s, Ok(AgentState::Active));
        let scheduled =
            |s: &Result<AgentState, String>| matches!(s, Ok(AgentState::Scheduled { .. }));
        let error = |s: &Result<AgentState, String>| s.is_err();
        type Check = Box<dyn Fn(&Result<AgentState, String>) -> bool>;
        let cases: Vec<(&[(&str, &str)], Check)> = vec![
            (&[], Box::new(active)),
            (&[("userAccountControl", "512")], Box::new(active)),
            // Lockout (0x10) is temporary: not a departure.
            (&[("userAccountControl", "528")], Box::new(active)),
            (
                &[("userAccountControl", "514")],
                Box::new(departed("userAccountControl=514")),
            ),
            (&[("userAccountControl", "many")], Box::new(error)),
            (
                &[("employeeType", "Departed")],
                Box::new(departed("employeeType=Departed")),
            ),
            (&[("employeeType", "permanent")], Box::new(active)),
            (&[("accountExpires", "0")], Box::new(active)),
            (
                &[("accountExpires", "9223372036854775807")],
                Box::new(active),
            ),
            // 2026-11-01 and 2027-01-01 as FILETIME.
            (
                &[("accountExpires", "134379648000000000")],
                Box::new(departed("expired: accountExpires 2026-11-01")),
            ),
            (
                &[("accountExpires", "134432352000000000")],
                Box::new(scheduled),
            ),
            (&[("shadowExpire", "-1")], Box::new(active)),
            (
                &[("shadowExpire", "20000")],
                Box::new(departed("shadowExpire")),
            ),
            (
                &[("departureDate", "2026-11-17")],
                Box::new(departed("departureDate 2026-11-17")),
            ),
            (&[("departureDate", "2026-12-24")], Box::new(scheduled)),
            (&[("departureDate", "next week")], Box::new(error)),
            (&[("hrEnd", "20261101000000Z")], Box::new(departed("hrEnd"))),
            (&[("hrEnd", "20991101000000.0Z")], Box::new(scheduled)),
        ];
        for (i, (attrs, check)) in cases.iter().enumerate() {
            let got = state(attrs);
            assert!(check(&got), "case {i} {attrs:?}: {got:?}");
        }
    }

    #[test]
    fn a_departed_ou_matches_at_rdn_boundaries_only() {
        let rules = ad_rules();
        let s = rules.evaluate(&entry("cn=A,ou=departed,dc=example,dc=org", &[]), NOW);
        assert!(
            departed("moved into OU=Departed, DC=example,DC=org")(&s),
            "{s:?}"
        );
        let s = rules.evaluate(&entry("cn=A,ou=notdeparted,dc=example,dc=org", &[]), NOW);
        assert_eq!(s, Ok(AgentState::Active));
        // (entry DN, departed): the OU as RFC 4514 compares it (case, spaces, escapes).
        let cases = [
            ("CN=A, OU=DEPARTED , DC=Example,DC=org", true),
            ("cn=A\\2C B,ou=dep\\61rted,dc=example,dc=org", true),
            ("ou=departed,dc=example,dc=org", true),
            ("cn=A\\,ou=departed,dc=example,dc=org", false),
            ("cn=A,ou=departed,dc=example,dc=org,dc=fr", false),
        ];
        for (dn, want) in cases {
            let s = rules.evaluate(&entry(dn, &[]), NOW);
            assert_eq!(departed("moved into")(&s), want, "{dn}: {s:?}");
        }
    }

    #[test]
    fn expired_agents_carry_the_expiry_time() {
        let s = state(&[("departureDate", "2026-11-17")]);
        assert_eq!(
            s,
            Ok(AgentState::Departed {
                reason: "expired: departureDate 2026-11-17T00:00:00Z".into(),
                since: Some(1_794_873_600)
            })
        );
    }

    #[test]
    fn rules_are_validated() {
        let bad: DepartureRules = toml::from_str("disabled = [{ attribute = \"x\" }]").unwrap();
        assert_eq!(bad.validate().unwrap_err().0, "departure.disabled[0]");
        let bad = toml::from_str::<DepartureRules>("departed_ous = [\"ou=a,dc=x\", \"departed\"]")
            .unwrap_err()
            .to_string();
        assert!(
            bad.contains("key `departure.departed_ous[1]`: `departed` is not a valid DN"),
            "{bad}"
        );
    }
}
