//! How agents log in (`[login]` in the mapping), and whether their logins reach the accounts
//! the daemon syncs. The daemon does not log anyone in: the homeserver does, through a login
//! module or an SSO provider, and finds (or, failing that, *creates*) the account from what the
//! agent typed or what the provider sent. This module says where that lands, so that `check`
//! and `plan` can warn before agents end up on new, empty accounts:
//!
//! - `ldap3` (synapse-ldap3, search mode): the agent types the value of the login attribute;
//!   the module logs them in to the account whose localpart is that value lowercased, and
//!   registers one if there is none. The localpart rule must therefore give exactly that.
//! - `sso`: the provider sends a subject; Synapse logs the agent in to the account holding
//!   that external id. The daemon writes the external id on each account it syncs, so any
//!   localpart rule works (Tchap-style `given.sn` included).
//! - `none`: agents log in some other way the daemon cannot check.

mod filter;
mod warnings;

pub use filter::ldap3_filter;
use warnings::{ldap3_warnings, summary};

use serde::Deserialize;

use super::departure::DepartureRules;
use super::template::Template;
use super::{AgentState, DesiredAccount};
use crate::directory::Entry;
use crate::homeserver::ExternalId;

/// What synapse-ldap3 asks Synapse to register is the login lowercased, so a login that is
/// not a localpart Synapse takes cannot log in at all.
pub use super::limits::is_synapse_localpart;

/// The `[login]` section, validated.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LoginRules {
    pub path: LoginPath,
    /// What to do with accounts a login made beside an agent's synced one.
    pub shadow_accounts: ShadowPolicy,
}

/// `[login] shadow_accounts`: what the daemon does with a *shadow* — an account it does not
/// manage whose localpart is an agent's login, or which holds one of an agent's e-mails.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ShadowPolicy {
    /// Listed by `plan`, `status`, `explain` and a metric; a departed agent's shadow is a
    /// security finding.
    #[default]
    Report,
    /// Reported, and a departed agent's shadow is locked (through the brake and the audit
    /// trail, like any departure).
    Lock,
}

/// Which way agents log in.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum LoginPath {
    /// No `[login]` section: nothing can be checked, and `check` and `plan` say so.
    #[default]
    Undeclared,
    /// `path = "none"`: agents log in some way the daemon does not check (local passwords
    /// set by an admin, an application service…).
    None,
    /// `path = "ldap3"`: synapse-ldap3, whose `attributes.uid` is `attribute`.
    Ldap3 { attribute: String },
    /// `path = "sso"`: each account gets the external id `external_id` gives for `provider`.
    Sso {
        provider: String,
        external_id: ExternalIdSource,
    },
}

/// Where an agent's external id comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExternalIdSource {
    /// The stable id, in the daemon's own text form (`{objectGUID}` on AD is binary in the
    /// entry: its canonical GUID string is what providers such as Keycloak send).
    StableId,
    Template(Template),
}

/// `[login]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLogin {
    path: RawPath,
    attribute: Option<String>,
    provider: Option<String>,
    external_id: Option<String>,
    #[serde(default)]
    shadow_accounts: ShadowPolicy,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum RawPath {
    Ldap3,
    Sso,
    None,
}

/// A rules error: (key, message).
type KeyError = (String, String);

impl LoginRules {
    /// Validates `[login]` against `[agent]`: returns the rules and the login attribute (the
    /// one `[agent] login_attribute` names, `[login] attribute` by default, for `explain` and
    /// the ldap3 checks). `[agent] login_attribute` stays valid on its own, and is the default
    /// of `[login] attribute`; the two may not disagree.
    pub(super) fn parse(
        raw: Option<RawLogin>,
        agent_login_attribute: Option<String>,
        id_attribute: &str,
    ) -> Result<(LoginRules, Option<String>), KeyError> {
        let Some(raw) = raw else {
            return Ok((LoginRules::default(), agent_login_attribute));
        };
        let only_for = |key: &str, value: &Option<String>, path: &str| match value {
            Some(_) => Err((
                format!("login.{key}"),
                format!("only for path = \"{path}\""),
            )),
            None => Ok(()),
        };
        let (path, login_attribute) = match raw.path {
            RawPath::None => {
                only_for("provider", &raw.provider, "sso")?;
                only_for("external_id", &raw.external_id, "sso")?;
                only_for("attribute", &raw.attribute, "ldap3")?;
                (LoginPath::None, agent_login_attribute)
            }
            RawPath::Ldap3 => {
                only_for("provider", &raw.provider, "sso")?;
                only_for("external_id", &raw.external_id, "sso")?;
                let attribute = match (raw.attribute, agent_login_attribute) {
                    (Some(a), Some(b)) if !a.trim().eq_ignore_ascii_case(b.trim()) => {
                        return Err((
                            "login.attribute".into(),
                            format!(
                                "`{a}` differs from agent.login_attribute `{b}`: there is one \
                                 login attribute (set one of the two)"
                            ),
                        ))
                    }
                    (Some(a), _) | (None, Some(a)) => a.trim().to_string(),
                    (None, None) => {
                        return Err((
                            "login.attribute".into(),
                            "path = \"ldap3\" needs the attribute people log in with (the \
                             module's `attributes.uid`), here or as agent.login_attribute"
                                .into(),
                        ))
                    }
                };
                if !is_attribute_name(&attribute) {
                    return Err((
                        "login.attribute".into(),
                        format!("`{attribute}` is not an attribute name"),
                    ));
                }
                (
                    LoginPath::Ldap3 {
                        attribute: attribute.clone(),
                    },
                    Some(attribute),
                )
            }
            RawPath::Sso => {
                only_for("attribute", &raw.attribute, "ldap3")?;
                let provider =
                    match raw.provider.as_deref().map(str::trim) {
                        Some(p) if !p.is_empty() && !p.contains('/') => p.to_string(),
                        Some(p) => {
                            return Err((
                                "login.provider".into(),
                                format!("`{p}` is not an auth provider id (e.g. `oidc-keycloak`)"),
                            ))
                        }
                        None => return Err((
                            "login.provider".into(),
                            "path = \"sso\" needs the auth provider id Synapse stores external \
                             ids under (`oidc-<idp_id>` for an OIDC provider)"
                                .into(),
                        )),
                    };
                let Some(source) = raw.external_id else {
                    return Err((
                        "login.external_id".into(),
                        "path = \"sso\" needs the template of the id the provider sends, e.g. \
                         `{entryUUID}`"
                            .into(),
                    ));
                };
                let external_id = if source
                    .trim()
                    .eq_ignore_ascii_case(&format!("{{{id_attribute}}}"))
                {
                    ExternalIdSource::StableId
                } else {
                    ExternalIdSource::Template(Template::parse(&source).map_err(|e| {
                        (
                            "login.external_id".to_string(),
                            format!("template `{source}`: {e}"),
                        )
                    })?)
                };
                (
                    LoginPath::Sso {
                        provider,
                        external_id,
                    },
                    agent_login_attribute,
                )
            }
        };
        Ok((
            LoginRules {
                path,
                shadow_accounts: raw.shadow_accounts,
            },
            login_attribute,
        ))
    }

    /// The attributes the external id template reads (the login attribute is listed by
    /// `[agent]`).
    pub fn attributes(&self) -> impl Iterator<Item = &str> {
        let template = match &self.path {
            LoginPath::Sso {
                external_id: ExternalIdSource::Template(t),
                ..
            } => Some(t),
            _ => None,
        };
        template.into_iter().flat_map(Template::attributes)
    }

    /// The external ids an agent's account should hold: one under `sso` (none if the
    /// template gives nothing for this entry: [`LoginRules::warnings`] reports it), none
    /// otherwise.
    pub fn external_ids(&self, entry: &Entry) -> Vec<ExternalId> {
        let LoginPath::Sso {
            provider,
            external_id,
        } = &self.path
        else {
            return Vec::new();
        };
        let value = match external_id {
            ExternalIdSource::StableId => entry.id.0.clone(),
            ExternalIdSource::Template(t) => t.render(entry).unwrap_or_default(),
        };
        if value.trim().is_empty() {
            return Vec::new();
        }
        vec![ExternalId {
            auth_provider: provider.clone(),
            external_id: value,
        }]
    }

    /// The localpart a login of this agent lands on: under `ldap3`, the login lowercased,
    /// as synapse-ldap3 makes it; `None` under `sso` and `none` (the provider finds the
    /// account), for an agent without a login, and for a login that is not a legal localpart
    /// (Synapse refuses it: the login fails, nothing is created).
    pub fn login_localpart(&self, account: &DesiredAccount) -> Option<String> {
        match &self.path {
            LoginPath::Ldap3 { .. } => {
                let lowered = account.login.as_deref()?.to_lowercase();
                is_synapse_localpart(&lowered).then_some(lowered)
            }
            LoginPath::Undeclared | LoginPath::None | LoginPath::Sso { .. } => None,
        }
    }

    /// One line for `check`: which path, and under `ldap3` the filter the module needs so
    /// that agents who left cannot log in with a password that still works.
    pub fn describe(&self, agent_filter: &str, departure: &DepartureRules) -> String {
        match &self.path {
            LoginPath::Undeclared => "not declared (no [login] in the mapping)".into(),
            LoginPath::None => "none (agents do not log in through a checked path)".into(),
            LoginPath::Ldap3 { attribute } => {
                let mut s = format!(
                    "synapse-ldap3 with attributes.uid `{attribute}`; its `filter` must leave \
                     departed agents out: {}",
                    ldap3_filter(agent_filter, departure)
                );
                if !departure.expires.is_empty() || !departure.departed_ous.is_empty() {
                    s.push_str(
                        " (expiry dates and departed OUs cannot be part of it: see \
                         docs/login.md)",
                    );
                }
                s
            }
            LoginPath::Sso {
                provider,
                external_id,
            } => {
                let source = match external_id {
                    ExternalIdSource::StableId => "the stable id".to_string(),
                    ExternalIdSource::Template(t) => format!("`{t}`"),
                };
                format!("SSO through `{provider}`, external ids from {source}")
            }
        }
    }

    /// What keeps agents' logins from reaching their accounts, summarised (a count and a few
    /// examples per kind of problem). `accounts`: each agent with the localpart of the
    /// account it has or would get. Agents who left are left out: they are not meant to log
    /// in.
    pub fn warnings<'a>(
        &self,
        accounts: impl IntoIterator<Item = (&'a DesiredAccount, &'a str)>,
    ) -> Vec<String> {
        let present = accounts
            .into_iter()
            .filter(|(a, _)| !matches!(a.state, AgentState::Departed { .. }));
        match &self.path {
            LoginPath::Undeclared | LoginPath::None => Vec::new(),
            LoginPath::Ldap3 { attribute } => ldap3_warnings(attribute, present),
            LoginPath::Sso {
                provider,
                external_id,
            } => {
                let missing: Vec<String> = present
                    .filter(|(a, _)| a.external_ids.is_empty())
                    .map(|(a, _)| a.dn.clone())
                    .collect();
                let source = match external_id {
                    ExternalIdSource::StableId => "the stable id".to_string(),
                    ExternalIdSource::Template(t) => format!("`{t}`"),
                };
                summary(
                    &format!(
                        "login (SSO `{provider}`): {} agent(s) have no external id ({source} \
                         gives nothing for them): their first SSO login will not find their \
                         account",
                        missing.len()
                    ),
                    &missing,
                    "",
                )
                .into_iter()
                .collect()
            }
        }
    }
}

fn is_attribute_name(name: &str) -> bool {
    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

#[cfg(test)]
mod tests;
