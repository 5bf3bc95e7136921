//! Which of the accounts about to be created already exist on the homeserver (to adopt them,
//! or to refuse a deactivated one): from one listing of every account when the batch is large
//! enough for that to cost less, else asked account by account.

use std::collections::HashMap;

use crate::homeserver::{Homeserver, HomeserverError};
use crate::plan::{Action, ActionKind, Plan};

pub(super) struct Existing {
    /// mxid → deactivated, for every account the homeserver listed; `None`: not listed.
    listed: Option<HashMap<String, bool>>,
}

impl Existing {
    /// Lists the homeserver's accounts if the plan's creations make that the cheaper way.
    /// A listing that fails only means asking account by account.
    pub(super) async fn read<H: Homeserver>(plan: &Plan, homeserver: &H) -> Existing {
        let creates = plan
            .actions
            .iter()
            .filter(|a| a.kind() == ActionKind::CreateAccount)
            .count();
        if creates == 0 {
            return Existing { listed: None };
        }
        let listed = match homeserver.list_users_if_cheaper(creates).await {
            Ok(users) => users.map(|users| {
                users
                    .into_iter()
                    .map(|u| (u.mxid, u.deactivated))
                    .collect::<HashMap<_, _>>()
            }),
            Err(e) => {
                tracing::warn!(error = %e, "cannot list the homeserver's accounts; checking each account before creating it");
                None
            }
        };
        if let Some(users) = &listed {
            tracing::info!(
                accounts = users.len(),
                creations = creates,
                "listed the homeserver's accounts before creating"
            );
        }
        Existing { listed }
    }

    /// Whether the account of `action` exists: `Some(deactivated)` if it does.
    pub(super) async fn of<H: Homeserver>(
        &self,
        homeserver: &H,
        action: &Action,
    ) -> Result<Option<bool>, HomeserverError> {
        let mxid = action.mxid();
        match &self.listed {
            Some(users) => Ok(users.get(mxid).copied()),
            None => Ok(homeserver.get_user(mxid).await?.map(|u| u.deactivated)),
        }
    }
}
