//! Rooms and spaces on the homeserver: the [`Rooms`] trait the membership sync needs, and the
//! plain data it exchanges. The Synapse implementation is in `synapse/rooms.rs`.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;

use serde::Serialize;

use super::HomeserverError;

/// A room as the homeserver has it now.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RoomState {
    pub room_id: String,
    /// Joined members.
    pub members: BTreeSet<String>,
    /// The `users` map of `m.room.power_levels` (not the whole truth about power: in v12
    /// rooms the creators have unlimited power without being listed).
    pub power: BTreeMap<String, i64>,
    /// The room's creators (v12: unlimited power, cannot be removed).
    pub creators: BTreeSet<String>,
}

/// What a new room looks like.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NewRoom {
    /// The alias's localpart (`dsi` for `#dsi:example.org`).
    pub alias_localpart: String,
    pub name: Option<String>,
    pub topic: Option<String>,
    /// `invite`, `public` or `knock`.
    pub join_rule: String,
    pub encrypted: bool,
    pub space: bool,
}

/// The room operations the membership sync needs. All act as the token's user (the daemon's
/// admin user) and are safe to repeat.
pub trait Rooms: Send + Sync {
    /// The room id an alias points to, `None` if the alias is unknown.
    fn resolve_alias(
        &self,
        alias: &str,
    ) -> impl Future<Output = Result<Option<String>, HomeserverError>> + Send;

    /// Joined members and the power levels' `users` map; `None` if the room is unknown.
    fn room_state(
        &self,
        room_id: &str,
    ) -> impl Future<Output = Result<Option<RoomState>, HomeserverError>> + Send;

    /// Creates a room (the daemon's user is its creator); returns its id. An alias already
    /// taken is an error naming it.
    fn create_room(
        &self,
        room: &NewRoom,
    ) -> impl Future<Output = Result<String, HomeserverError>> + Send;

    /// Joins a local user to a room (`POST /_synapse/admin/v1/join/<room>`). The daemon's user
    /// is first made room admin if the homeserver refuses for lack of power.
    fn join(
        &self,
        room_id: &str,
        mxid: &str,
    ) -> impl Future<Output = Result<(), HomeserverError>> + Send;

    /// Kicks a user with a reason; a user who is no longer in the room is not an error.
    fn kick(
        &self,
        room_id: &str,
        mxid: &str,
        reason: &str,
    ) -> impl Future<Output = Result<(), HomeserverError>> + Send;

    /// Sets (`Some`) or removes (`None`) users in the power levels' `users` map, keeping
    /// every other entry as it is (read, merge, write).
    fn set_power(
        &self,
        room_id: &str,
        changes: &BTreeMap<String, Option<i64>>,
    ) -> impl Future<Output = Result<(), HomeserverError>> + Send;

    /// Links `child` under the space `parent` (`m.space.child` in the parent, `m.space.parent`
    /// in the child).
    fn link_space(
        &self,
        parent_id: &str,
        child_id: &str,
        server_name: &str,
    ) -> impl Future<Output = Result<(), HomeserverError>> + Send;
}
