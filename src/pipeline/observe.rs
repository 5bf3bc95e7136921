//! Reads the rooms a plan is about from the homeserver (never writes): for each room the rules
//! give or the ledger manages from a current template, its id, joined members and power
//! levels, so `plan` can tell who is already there and who was added by hand.

use std::collections::HashSet;

use futures::stream::{self, StreamExt};

use crate::homeserver::{Homeserver, HomeserverError, Rooms};
use crate::ledger::RoomsView;
use crate::mapping::rooms::DesiredRooms;
use crate::plan::memberships::Observed;
use crate::plan::shadows::UnmanagedAccount;
use crate::plan::ExistingAccount;

/// The rooms as the homeserver has them, and the daemon's own mxid (`None` when the rules
/// give no room: nothing is asked then).
pub async fn observe_rooms<H: Homeserver + Rooms>(
    homeserver: &H,
    desired: &DesiredRooms,
    ledger: &RoomsView,
    concurrency: usize,
) -> Result<(Observed, Option<String>), HomeserverError> {
    let mut keys: Vec<&str> = desired.rooms.keys().map(String::as_str).collect();
    keys.extend(
        ledger
            .rooms
            .values()
            .filter(|r| !desired.rooms.contains_key(&r.key))
            .filter(|r| desired.templates.iter().any(|(t, _)| *t == r.rule))
            .map(|r| r.key.as_str()),
    );
    if keys.is_empty() {
        return Ok((Observed::new(), None));
    }
    let daemon = homeserver.whoami().await?;
    let results: Vec<_> = stream::iter(keys)
        .map(|key| async move {
            let room_id = match ledger.rooms.get(key) {
                Some(r) => Some(r.room_id.clone()),
                None if key.starts_with('!') => Some(key.to_string()),
                None => homeserver.resolve_alias(key).await?,
            };
            let state = match room_id {
                Some(id) => homeserver.room_state(&id).await?,
                None => None,
            };
            Ok::<_, HomeserverError>((key.to_string(), state))
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    let mut observed = Observed::new();
    for r in results {
        let (key, state) = r?;
        observed.insert(key, state);
    }
    Ok((observed, Some(daemon)))
}

/// What the homeserver has at each of `mxids` (the accounts a plan would create): `None`
/// where it has no account. One listing of every account answers for a large batch; the
/// e-mails of the accounts that exist are then read one by one (the listing lacks them).
pub async fn observe_accounts<H: Homeserver>(
    homeserver: &H,
    mxids: Vec<String>,
    concurrency: usize,
) -> Result<Vec<(String, Option<ExistingAccount>)>, HomeserverError> {
    if mxids.is_empty() {
        return Ok(Vec::new());
    }
    let listed: Option<HashSet<String>> = homeserver
        .list_users_if_cheaper(mxids.len())
        .await?
        .map(|users| users.into_iter().map(|u| u.mxid).collect());
    if let Some(listed) = &listed {
        tracing::info!(
            accounts = listed.len(),
            creations = mxids.len(),
            "listed the homeserver's accounts to see which new agents' mxids are taken"
        );
    }
    stream::iter(mxids)
        .map(|mxid| {
            let listed = &listed;
            async move {
                if listed.as_ref().is_some_and(|l| !l.contains(&mxid)) {
                    return Ok((mxid, None));
                }
                let account = homeserver.get_user(&mxid).await?.map(|u| ExistingAccount {
                    emails: u.emails,
                    deactivated: u.deactivated,
                    admin: u.admin,
                });
                Ok((mxid, account))
            }
        })
        .buffer_unordered(concurrency.max(1))
        .collect::<Vec<Result<_, HomeserverError>>>()
        .await
        .into_iter()
        .collect()
}

/// Most unmanaged accounts whose e-mails are read one by one to find shadows by e-mail;
/// past it, shadows are matched by login only (and a warning says so).
pub const MAX_UNMANAGED_EMAIL_READS: usize = 2_000;

/// Every account the homeserver has that is not in `managed`, for shadow detection: one
/// listing, then each one's e-mails (if there are at most [`MAX_UNMANAGED_EMAIL_READS`]).
/// Returns the accounts and whether their e-mails were read.
pub async fn unmanaged_accounts<H: Homeserver>(
    homeserver: &H,
    managed: &HashSet<&str>,
    concurrency: usize,
) -> Result<(Vec<UnmanagedAccount>, bool), HomeserverError> {
    let unmanaged: Vec<UnmanagedAccount> = homeserver
        .list_users()
        .await?
        .into_iter()
        .filter(|u| !managed.contains(u.mxid.as_str()) && !u.admin && !u.deactivated)
        .map(|u| UnmanagedAccount {
            mxid: u.mxid,
            emails: Vec::new(),
            locked: u.locked,
            deactivated: u.deactivated,
            admin: u.admin,
        })
        .collect();
    if unmanaged.len() > MAX_UNMANAGED_EMAIL_READS {
        return Ok((unmanaged, false));
    }
    let read: Vec<Result<UnmanagedAccount, HomeserverError>> = stream::iter(unmanaged)
        .map(|mut account| async move {
            if let Some(user) = homeserver.get_user(&account.mxid).await? {
                account.emails = user.emails;
                account.locked = user.locked;
            }
            Ok(account)
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    Ok((read.into_iter().collect::<Result<_, _>>()?, true))
}
