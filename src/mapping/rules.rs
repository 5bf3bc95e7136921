//! Mapping rules (`mappings/*.toml`): what an agent is and how its entry becomes an account.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::departure::DepartureRules;
use super::login::{LoginRules, RawLogin};
use super::rooms::{RawGroups, RawRoom, RoomRules};
use super::template::Template;
use crate::config::ConfigError;
use crate::directory::IdFormat;

#[derive(Debug, Clone)]
pub struct Rules {
    /// The file these rules were read from.
    pub source: PathBuf,
    pub agent: AgentRules,
    pub account: AccountRules,
    pub departure: DepartureRules,
    /// `[groups]` and `[[rooms]]`: room and space memberships (see `mapping::rooms`).
    pub rooms: RoomRules,
    /// `[login]`: how agents log in (see `mapping::login`).
    pub login: LoginRules,
    /// A digest of the rules' text: when it changes, every agent is mapped again.
    pub fingerprint: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentRules {
    /// LDAP filter selecting agents under the configured bases.
    pub filter: String,
    pub id_attribute: String,
    pub id_format: IdFormat,
    /// What people call their login (`uid`, `sAMAccountName`): `explain` finds agents by it,
    /// and under `[login] path = "ldap3"` it is what they type. `[agent] login_attribute`,
    /// or `[login] attribute`.
    pub login_attribute: Option<String>,
}

#[derive(Debug, Clone)]
pub struct AccountRules {
    pub localpart: Template,
    pub display_name: Template,
    /// Each template gives e-mail addresses (a lone `{mail}` gives every value of `mail`).
    pub emails: Vec<Template>,
    /// What to do with an account that exists on the homeserver, unmanaged, with the mxid an
    /// agent would get.
    pub adopt: Adopt,
    /// What an agent whose localpart is held by such an account gets instead.
    pub on_conflict: OnConflict,
}

/// `[account] adopt`: when an existing account the ledger does not manage becomes the agent's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Adopt {
    /// Only when it provably belongs to the agent: one of its e-mail addresses is one of the
    /// agent's.
    #[default]
    Matching,
    /// Every such account (migrating a server whose users were made by LDAP or SSO logins).
    All,
    /// None: every such account is a conflict.
    Never,
}

/// `[account] on_conflict`: what an agent whose localpart is held by an account that is not
/// theirs gets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnConflict {
    /// No account: the conflict is shown until an admin settles it.
    #[default]
    Skip,
    /// The next free localpart (`name2`, `name3`, …).
    NextFree,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRules {
    agent: RawAgent,
    account: RawAccount,
    #[serde(default)]
    departure: DepartureRules,
    groups: Option<RawGroups>,
    #[serde(default)]
    rooms: Vec<RawRoom>,
    login: Option<RawLogin>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAgent {
    filter: String,
    id_attribute: String,
    id_format: IdFormat,
    login_attribute: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAccount {
    localpart: String,
    display_name: String,
    #[serde(default)]
    emails: Vec<String>,
    #[serde(default)]
    adopt: Adopt,
    #[serde(default)]
    on_conflict: OnConflict,
}

impl Rules {
    pub fn load(path: &Path) -> Result<Rules, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_path_buf(),
            key: None,
            message: format!("cannot read the mapping file: {e}"),
        })?;
        Rules::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Rules, ConfigError> {
        let err = |key: &str, message: String| ConfigError {
            file: path.to_path_buf(),
            key: Some(key.to_string()),
            message,
        };
        let raw: RawRules = toml::from_str(text).map_err(|e| ConfigError {
            file: path.to_path_buf(),
            key: None,
            message: e.to_string().trim_end().to_string(),
        })?;
        if ldap3::parse_filter(&raw.agent.filter).is_err() {
            return Err(err(
                "agent.filter",
                format!("`{}` is not a valid LDAP filter", raw.agent.filter),
            ));
        }
        let id_attribute = raw.agent.id_attribute.trim();
        if id_attribute.is_empty()
            || !id_attribute
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            return Err(err(
                "agent.id_attribute",
                format!("`{id_attribute}` is not an attribute name"),
            ));
        }
        let template = |key: &str, source: &str| {
            Template::parse(source).map_err(|e| err(key, format!("template `{source}`: {e}")))
        };
        let emails = raw
            .account
            .emails
            .iter()
            .enumerate()
            .map(|(i, s)| template(&format!("account.emails[{i}]"), s))
            .collect::<Result<Vec<_>, _>>()?;
        raw.departure
            .validate()
            .map_err(|(key, message)| err(&key, message))?;
        let rooms = RoomRules::parse(raw.groups, raw.rooms).map_err(|(k, m)| err(&k, m))?;
        let (login, login_attribute) =
            LoginRules::parse(raw.login, raw.agent.login_attribute, id_attribute)
                .map_err(|(k, m)| err(&k, m))?;
        Ok(Rules {
            source: path.to_path_buf(),
            agent: AgentRules {
                filter: raw.agent.filter,
                id_attribute: id_attribute.to_string(),
                id_format: raw.agent.id_format,
                login_attribute,
            },
            account: AccountRules {
                localpart: template("account.localpart", &raw.account.localpart)?,
                display_name: template("account.display_name", &raw.account.display_name)?,
                emails,
                adopt: raw.account.adopt,
                on_conflict: raw.account.on_conflict,
            },
            departure: raw.departure,
            rooms,
            login,
            fingerprint: crate::brake::digest(text),
        })
    }

    /// Every attribute the rules read, for the directory search (the id attribute included).
    pub fn attributes(&self) -> Vec<String> {
        let mut attrs: Vec<String> = std::iter::once(self.agent.id_attribute.as_str())
            .chain(self.account.localpart.attributes())
            .chain(self.account.display_name.attributes())
            .chain(self.account.emails.iter().flat_map(Template::attributes))
            .chain(self.departure.attributes())
            .chain(self.agent.login_attribute.as_deref())
            .chain(self.login.attributes())
            .map(str::to_string)
            .chain(self.rooms.attributes())
            .collect();
        attrs.sort_by_key(|a| a.to_ascii_lowercase());
        attrs.dedup_by(|a, b| a.eq_ignore_ascii_case(b));
        attrs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[agent]
filter = "(&(objectClass=inetOrgPerson)(uid=*))"
id_attribute = "entryUUID"
id_format = "text"

[account]
localpart = "{givenName|localpart}.{sn|localpart}"
display_name = "{givenName} {sn} [{ou?}]"
emails = ["{mail?}"]
"#;

    fn parse(text: &str) -> Result<Rules, ConfigError> {
        Rules::parse(Path::new("mappings/test.toml"), text)
    }

    #[test]
    fn good_rules_load_and_list_their_attributes() {
        let r = parse(GOOD).unwrap();
        assert_eq!(r.agent.id_format, IdFormat::Text);
        assert_eq!(
            r.attributes(),
            vec!["entryUUID", "givenName", "mail", "ou", "sn"]
        );
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            (
                "(&(objectClass=inetOrgPerson)(uid=*))",
                "(&(objectClass=inetOrgPerson)(uid=*)",
                "agent.filter",
            ),
            (
                "{givenName|localpart}.{sn|localpart}",
                "{givenName|shout}",
                "account.localpart",
            ),
            (
                "{givenName} {sn} [{ou?}]",
                "{givenName",
                "account.display_name",
            ),
            (
                "[\"{mail?}\"]",
                "[\"{mail?}\", \"{x|bad}\"]",
                "account.emails[1]",
            ),
            ("\"entryUUID\"", "\"entry UUID\"", "agent.id_attribute"),
        ];
        for (from, to, key) in cases {
            let err = parse(&GOOD.replace(from, to)).unwrap_err();
            assert_eq!(err.key.as_deref(), Some(key), "{to}: {err}");
            assert!(err.to_string().starts_with("mappings/test.toml: "), "{err}");
        }
    }

    #[test]
    fn bad_id_format_and_unknown_keys_are_reported() {
        let err = parse(&GOOD.replace("\"text\"", "\"uuid\"")).unwrap_err();
        assert!(err.message.contains("uuid"), "{err}");
        assert!(err.message.contains("line"), "{err}");
        let err = parse(&GOOD.replace("display_name", "displayname")).unwrap_err();
        assert!(err.message.contains("displayname"), "{err}");
    }

    #[test]
    fn shipped_presets_load() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("mappings");
        let mut count = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                Rules::load(&path).unwrap_or_else(|e| panic!("{e}"));
                count += 1;
            }
        }
        assert!(count >= 3, "presets found: {count}");
    }
}
