//! Reads the rooms a plan is about from the homeserver (never writes): for each room the rules
//! give or the ledger manages from a current template, its id, joined members and power
//! levels, so `plan` can tell who is already there and who was added by hand.

use futures::stream::{self, StreamExt};

use crate::homeserver::{Homeserver, HomeserverError, Rooms};
use crate::ledger::RoomsView;
use crate::mapping::rooms::DesiredRooms;
use crate::plan::memberships::Observed;

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
