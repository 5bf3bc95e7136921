//! Accounts that exist on the homeserver without the ledger managing them, as far as the
//! plan was told, and whether one of them may become an agent's (adoption) or is someone
//! else's (a conflict). Nothing is taken over by default: only an account that provably is
//! the agent's, or every account when the admin opted in.

use std::collections::HashMap;

use serde::Serialize;

use crate::directory::StableId;
use crate::mapping::{Adopt, DesiredAccount};

/// An account the homeserver has, as the plan needs to judge it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ExistingAccount {
    /// Its e-mail threepids, lowercased.
    pub emails: Vec<String>,
    pub deactivated: bool,
    pub admin: bool,
}

/// What the pipeline found out about the mxids new agents would get.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HomeserverAccounts {
    /// mxid → the account, or `None` when the homeserver has no such account.
    looked_up: HashMap<String, Option<ExistingAccount>>,
}

/// What the plan knows of one mxid on the homeserver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup<'a> {
    /// Nobody asked (e.g. a preview without a homeserver): planned as a creation.
    Unknown,
    Absent,
    Present(&'a ExistingAccount),
}

impl HomeserverAccounts {
    pub fn get(&self, mxid: &str) -> Lookup<'_> {
        match self.looked_up.get(mxid) {
            None => Lookup::Unknown,
            Some(None) => Lookup::Absent,
            Some(Some(account)) => Lookup::Present(account),
        }
    }

    /// Records what the homeserver said of `mxid`.
    pub fn insert(&mut self, mxid: String, account: Option<ExistingAccount>) {
        self.looked_up.insert(mxid, account);
    }

    pub fn knows(&self, mxid: &str) -> bool {
        self.looked_up.contains_key(mxid)
    }
}

/// An agent whose account would take over an existing account that is not provably theirs:
/// nothing is done for them until an admin settles it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Conflict {
    pub id: StableId,
    pub dn: String,
    pub mxid: String,
    pub reason: String,
}

/// Why `account` becomes `want`'s (`Ok`, the evidence) or must be left alone (`Err`).
pub(super) fn adoption(
    adopt: Adopt,
    account: &ExistingAccount,
    want: &DesiredAccount,
) -> Result<String, String> {
    if account.deactivated {
        return Err("an account with this mxid exists on the homeserver, deactivated: it is never reused (free the localpart, or map the agent to another one)".into());
    }
    if account.admin {
        return Err(
            "an account with this mxid exists on the homeserver and is a server admin: never taken over"
                .into(),
        );
    }
    let shared = want
        .emails
        .iter()
        .find(|mine| account.emails.iter().any(|e| e.eq_ignore_ascii_case(mine)));
    match (adopt, shared) {
        (Adopt::Never, _) => Err(
            "an account with this mxid exists on the homeserver and the daemon did not create it ([account] adopt = \"never\")".into(),
        ),
        (_, Some(email)) => Ok(format!("its e-mail {email} is the agent's")),
        (Adopt::All, None) => Ok("[account] adopt = \"all\"".into()),
        (Adopt::Matching, None) => Err(format!(
            "an account with this mxid exists on the homeserver, was not created by the daemon and holds none of the agent's e-mail addresses ({}); it may be someone else's: not taken over ([account] adopt = \"all\" takes such accounts, on_conflict = \"next_free\" gives the agent another localpart)",
            account_emails(account)
        )),
    }
}

fn account_emails(account: &ExistingAccount) -> String {
    match account.emails.is_empty() {
        true => "it has no e-mail".into(),
        false => format!("it has {}", account.emails.join(", ")),
    }
}
