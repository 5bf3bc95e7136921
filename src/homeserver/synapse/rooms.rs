//! [`Rooms`] for Synapse: the client API as the daemon's admin user (create rooms, kick, read
//! and write state) and the admin API (join a user, make the daemon room admin, read a room's
//! state without being in it).
//!
//! Every operation that needs power in the room and is refused (403) makes the daemon's user
//! room admin (`POST /_synapse/admin/v1/rooms/<room>/make_room_admin`) and tries once more:
//! rooms created by hand, or by someone else, need no preparation.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;

use percent_encoding::utf8_percent_encode;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{Method, SynapseClient, SEGMENT};
use crate::homeserver::rooms::{NewRoom, RoomState, Rooms};
use crate::homeserver::{Homeserver, HomeserverError};

fn enc(s: &str) -> String {
    utf8_percent_encode(s, SEGMENT).to_string()
}

/// `M_NOT_FOUND` with a 404: the thing does not exist (as opposed to a wrong URL).
fn not_found(e: &HomeserverError) -> bool {
    matches!(e, HomeserverError::Status { status: 404, .. })
}

fn forbidden(e: &HomeserverError) -> bool {
    matches!(e, HomeserverError::Status { status: 403, .. })
}

#[derive(Deserialize)]
struct RoomId {
    room_id: String,
}

#[derive(Deserialize)]
struct StateEvent {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    state_key: String,
    #[serde(default)]
    sender: String,
    #[serde(default)]
    content: Value,
}

#[derive(Deserialize)]
struct RoomStateReply {
    state: Vec<StateEvent>,
}

impl SynapseClient {
    /// Sends a JSON body and returns the JSON answer.
    async fn send_json(
        &self,
        method: Method,
        endpoint: String,
        path: String,
        body: &Value,
    ) -> Result<Value, HomeserverError> {
        let req = self.request(method, endpoint, &path, &[], Some(body));
        let reply = self.send(&req).await?;
        if reply.body.is_empty() {
            return Ok(Value::Null);
        }
        Self::decode(&req, &reply)
    }

    /// Makes the token's user admin of `room_id` (Synapse gives it the power of the room's
    /// most powerful local user and, in a private room, invites it) and joins it.
    async fn make_room_admin(&self, room_id: &str) -> Result<(), HomeserverError> {
        let me = self.whoami().await?;
        tracing::info!(room = room_id, user = %me, "making the daemon's user room admin");
        self.send_json(
            Method::Post,
            format!("/_synapse/admin/v1/rooms/{room_id}/make_room_admin"),
            format!("/_synapse/admin/v1/rooms/{}/make_room_admin", enc(room_id)),
            &json!({ "user_id": me }),
        )
        .await?;
        self.send_json(
            Method::Post,
            format!("/_matrix/client/v3/join/{room_id}"),
            format!("/_matrix/client/v3/join/{}", enc(room_id)),
            &json!({}),
        )
        .await
        .map(|_| ())
    }

    /// Runs `op`; if the homeserver refuses it (403), makes the daemon room admin and runs it
    /// once more.
    async fn as_room_admin<T, F, Fut>(&self, room_id: &str, op: F) -> Result<T, HomeserverError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, HomeserverError>>,
    {
        match op().await {
            Err(e) if forbidden(&e) => {
                self.make_room_admin(room_id).await?;
                op().await
            }
            other => other,
        }
    }

    /// A GET whose 404 means "no such thing".
    async fn get_optional<T: for<'de> Deserialize<'de>>(
        &self,
        endpoint: String,
        path: String,
    ) -> Result<Option<T>, HomeserverError> {
        let req = self.request(Method::Get, endpoint, &path, &[], None);
        match self.get_json::<T>(&req).await {
            Ok(v) => Ok(Some(v)),
            Err(e) if not_found(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn power_levels(&self, room_id: &str) -> Result<Value, HomeserverError> {
        let endpoint = format!("/_matrix/client/v3/rooms/{room_id}/state/m.room.power_levels");
        let path = format!(
            "/_matrix/client/v3/rooms/{}/state/m.room.power_levels",
            enc(room_id)
        );
        let req = self.request(Method::Get, endpoint, &path, &[], None);
        self.get_json(&req).await
    }

    async fn put_state(
        &self,
        room_id: &str,
        kind: &str,
        state_key: &str,
        content: &Value,
    ) -> Result<(), HomeserverError> {
        self.send_json(
            Method::Put,
            format!("/_matrix/client/v3/rooms/{room_id}/state/{kind}/{state_key}"),
            format!(
                "/_matrix/client/v3/rooms/{}/state/{kind}/{}",
                enc(room_id),
                enc(state_key)
            ),
            content,
        )
        .await
        .map(|_| ())
    }
}

/// The createRoom body for `room`.
fn create_body(room: &NewRoom) -> Value {
    let mut body = json!({
        "room_alias_name": room.alias_localpart,
        "preset": if room.join_rule == "public" { "public_chat" } else { "private_chat" },
        "visibility": "private",
    });
    let mut initial_state = Vec::new();
    if room.encrypted {
        initial_state.push(json!({
            "type": "m.room.encryption", "state_key": "",
            "content": {"algorithm": "m.megolm.v1.aes-sha2"}
        }));
    }
    if room.join_rule == "knock" {
        initial_state.push(json!({
            "type": "m.room.join_rules", "state_key": "", "content": {"join_rule": "knock"}
        }));
    }
    body["initial_state"] = Value::Array(initial_state);
    if let Some(name) = &room.name {
        body["name"] = json!(name);
    }
    if let Some(topic) = &room.topic {
        body["topic"] = json!(topic);
    }
    if room.space {
        body["creation_content"] = json!({"type": "m.space"});
        // Only admins post in a space (what clients do too).
        body["power_level_content_override"] = json!({"events_default": 100});
    }
    body
}

/// Sets or removes users in a power levels event's `users`, keeping everything else.
fn merge_power(mut levels: Value, changes: &BTreeMap<String, Option<i64>>) -> Value {
    if !levels.is_object() {
        levels = json!({});
    }
    if !levels["users"].is_object() {
        levels["users"] = json!({});
    }
    if let Some(users) = levels["users"].as_object_mut() {
        for (mxid, level) in changes {
            match level {
                Some(l) => {
                    users.insert(mxid.clone(), json!(l));
                }
                None => {
                    users.remove(mxid);
                }
            }
        }
    }
    levels
}

fn parse_state(room_id: &str, events: Vec<StateEvent>) -> RoomState {
    let mut members = BTreeSet::new();
    let mut power = BTreeMap::new();
    let mut creators = BTreeSet::new();
    for e in events {
        match e.kind.as_str() {
            "m.room.create" => {
                let more = e.content["additional_creators"].as_array().cloned();
                creators.extend(
                    more.unwrap_or_default()
                        .iter()
                        .filter_map(|c| c.as_str().map(str::to_string)),
                );
                creators.insert(e.sender);
            }
            "m.room.member" if e.content["membership"] == "join" => {
                members.insert(e.state_key);
            }
            "m.room.power_levels" => {
                if let Some(users) = e.content["users"].as_object() {
                    for (mxid, level) in users {
                        if let Some(l) = level.as_i64() {
                            power.insert(mxid.clone(), l);
                        }
                    }
                }
            }
            _ => {}
        }
    }
    RoomState {
        room_id: room_id.to_string(),
        members,
        power,
        creators,
    }
}

impl Rooms for SynapseClient {
    async fn resolve_alias(&self, alias: &str) -> Result<Option<String>, HomeserverError> {
        let found: Option<RoomId> = self
            .get_optional(
                format!("/_matrix/client/v3/directory/room/{alias}"),
                format!("/_matrix/client/v3/directory/room/{}", enc(alias)),
            )
            .await?;
        Ok(found.map(|r| r.room_id))
    }

    async fn room_state(&self, room_id: &str) -> Result<Option<RoomState>, HomeserverError> {
        let found: Option<RoomStateReply> = self
            .get_optional(
                format!("/_synapse/admin/v1/rooms/{room_id}/state"),
                format!("/_synapse/admin/v1/rooms/{}/state", enc(room_id)),
            )
            .await?;
        Ok(found.map(|r| parse_state(room_id, r.state)))
    }

    async fn create_room(&self, room: &NewRoom) -> Result<String, HomeserverError> {
        let path = "/_matrix/client/v3/createRoom";
        let reply = self
            .send_json(Method::Post, path.into(), path.into(), &create_body(room))
            .await?;
        reply["room_id"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| HomeserverError::BadReply {
                method: "POST".into(),
                endpoint: path.into(),
                message: "no room_id in the answer".into(),
            })
    }

    async fn join(&self, room_id: &str, mxid: &str) -> Result<(), HomeserverError> {
        let body = json!({ "user_id": mxid });
        self.as_room_admin(room_id, || {
            self.send_json(
                Method::Post,
                format!("/_synapse/admin/v1/join/{room_id}"),
                format!("/_synapse/admin/v1/join/{}", enc(room_id)),
                &body,
            )
        })
        .await
        .map(|_| ())
    }

    async fn kick(&self, room_id: &str, mxid: &str, reason: &str) -> Result<(), HomeserverError> {
        let body = json!({ "user_id": mxid, "reason": reason });
        let kick = || {
            self.send_json(
                Method::Post,
                format!("/_matrix/client/v3/rooms/{room_id}/kick"),
                format!("/_matrix/client/v3/rooms/{}/kick", enc(room_id)),
                &body,
            )
        };
        match kick().await {
            Ok(_) => Ok(()),
            Err(e) if forbidden(&e) => {
                // Either the target is gone already (done), or the daemon lacks power.
                let gone = self
                    .room_state(room_id)
                    .await?
                    .is_some_and(|s| !s.members.contains(mxid));
                if gone {
                    return Ok(());
                }
                self.make_room_admin(room_id).await?;
                kick().await.map(|_| ())
            }
            Err(e) => Err(e),
        }
    }

    async fn set_power(
        &self,
        room_id: &str,
        changes: &BTreeMap<String, Option<i64>>,
    ) -> Result<(), HomeserverError> {
        self.as_room_admin(room_id, || async {
            let levels = merge_power(self.power_levels(room_id).await?, changes);
            self.put_state(room_id, "m.room.power_levels", "", &levels)
                .await
        })
        .await
    }

    async fn link_space(
        &self,
        parent_id: &str,
        child_id: &str,
        server_name: &str,
    ) -> Result<(), HomeserverError> {
        let via = json!({ "via": [server_name] });
        self.as_room_admin(parent_id, || {
            self.put_state(parent_id, "m.space.child", child_id, &via)
        })
        .await?;
        let parent = json!({ "via": [server_name], "canonical": true });
        self.as_room_admin(child_id, || {
            self.put_state(child_id, "m.space.parent", parent_id, &parent)
        })
        .await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn power_changes_merge_and_keep_the_rest() {
        let levels = json!({
            "users": {"@admin:x": 100, "@keep:x": 20, "@old:x": 50},
            "users_default": 0, "events": {"m.room.name": 50}, "kick": 50
        });
        let changes = BTreeMap::from([
            ("@new:x".to_string(), Some(50)),
            ("@old:x".to_string(), None),
        ]);
        let merged = merge_power(levels, &changes);
        assert_eq!(
            merged,
            json!({
                "users": {"@admin:x": 100, "@keep:x": 20, "@new:x": 50},
                "users_default": 0, "events": {"m.room.name": 50}, "kick": 50
            })
        );
        assert_eq!(merge_power(Value::Null, &changes)["users"]["@new:x"], 50);
    }

    #[test]
    fn spaces_and_encrypted_rooms_are_created_as_asked() {
        let mut room = NewRoom {
            alias_localpart: "dept-rh".into(),
            name: Some("RH".into()),
            topic: None,
            join_rule: "invite".into(),
            encrypted: true,
            space: false,
        };
        let body = create_body(&room);
        assert_eq!(body["room_alias_name"], "dept-rh");
        assert_eq!(body["preset"], "private_chat");
        assert_eq!(body["initial_state"][0]["type"], "m.room.encryption");
        assert!(body.get("creation_content").is_none());
        room.space = true;
        room.encrypted = false;
        room.join_rule = "knock".into();
        let body = create_body(&room);
        assert_eq!(body["creation_content"]["type"], "m.space");
        assert_eq!(body["initial_state"][0]["content"]["join_rule"], "knock");
    }

    #[test]
    fn joined_members_and_power_from_state() {
        let events = vec![
            StateEvent {
                kind: "m.room.member".into(),
                state_key: "@a:x".into(),
                sender: "@a:x".into(),
                content: json!({"membership": "join"}),
            },
            StateEvent {
                kind: "m.room.member".into(),
                state_key: "@b:x".into(),
                sender: "@b:x".into(),
                content: json!({"membership": "leave"}),
            },
            StateEvent {
                kind: "m.room.power_levels".into(),
                state_key: String::new(),
                sender: "@a:x".into(),
                content: json!({"users": {"@a:x": 50}}),
            },
        ];
        let s = parse_state("!r", events);
        assert_eq!(s.members, BTreeSet::from(["@a:x".to_string()]));
        assert_eq!(s.power["@a:x"], 50);
    }
}
