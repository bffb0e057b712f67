//! The wire format of sync, shared by the device ([`crate::client`]) and
//! galaxy-cloud. It follows `../shared/reference/sync-protocol.md`.
//!
//! Entities are opaque JSON bodies here: what a galaxy body holds is the
//! game domain's business (`galaxy::body`), so this crate stays free of it.
//!
//! Field names are snake_case as in the reference; every request type
//! refuses unknown fields, so a typo is a 400 and not a silent default.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Most mutations one push may carry; a longer batch is refused (413).
pub const MAX_PUSH_MUTATIONS: usize = 1000;
/// Page size of a pull without `limit`.
pub const DEFAULT_PULL_LIMIT: usize = 500;
/// Largest page a pull returns, whatever `limit` asks.
pub const MAX_PULL_LIMIT: usize = 1000;

/// Error code: the server has no state for this client id (or never had);
/// the client takes a new id and renumbers its outbox from 1.
pub const CLIENT_STATE_NOT_FOUND: &str = "ClientStateNotFound";
/// Error code: a push skipped mutation ids; the message names the next one
/// expected. Nothing of that push was applied.
pub const MUTATION_GAP: &str = "MutationGap";
/// Error code: a push resent a mutation id the cloud had settled for
/// another change (the device's data came back from an older copy).
/// Nothing of that push was applied; the client takes a new id,
/// renumbers its outbox from 1 and pulls from 0.
pub const MUTATION_ID_REUSED: &str = "MutationIdReused";

/// What a mutation does to its entity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    /// Create or replace the entity with `body`.
    Put,
    /// Delete the entity (the server keeps a tombstone).
    Delete,
}

impl Op {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Put => "put",
            Op::Delete => "delete",
        }
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "put" => Some(Op::Put),
            "delete" => Some(Op::Delete),
            _ => None,
        }
    }
}

/// One local change, as pushed.
///
/// `op` and `entity_id` are kept as the client sent them: a value the server
/// cannot use makes the mutation `rejected` (recorded, never retried), while
/// a push whose shape is wrong (no `mutation_id`, not JSON) is a 400.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mutation {
    /// Grows by one per client, from 1.
    pub mutation_id: u64,
    /// `put` or `delete`.
    pub op: String,
    /// The entity's id (a UUID made on the client).
    pub entity_id: String,
    /// The entity's version the client had when it made the change (0 for
    /// a create); a different current version on the server is a conflict.
    #[serde(default)]
    pub base_version: u64,
    /// The new body (`put`); ignored for `delete`.
    #[serde(default)]
    pub body: Value,
}

/// `POST /api/sync/push`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushRequest {
    /// The pushing client (one per device database).
    pub client_id: String,
    /// In mutation id order, contiguous.
    pub mutations: Vec<Mutation>,
}

/// What became of one mutation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MutationStatus {
    /// Applied now.
    Applied,
    /// Applied by an earlier push (a resend).
    Skipped,
    /// Permanently refused (see `reason`); the client must not resend it.
    Rejected,
}

/// The answer for one mutation of a push.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MutationResult {
    /// The mutation.
    pub mutation_id: u64,
    /// What became of it.
    pub status: MutationStatus,
    /// The entity's version after it (applied), if known (`null` if not).
    #[serde(default)]
    pub version: Option<u64>,
    /// The entity had changed on the server since `base_version`: the
    /// server's order decided the outcome.
    #[serde(default)]
    pub conflict: bool,
    /// Why it was rejected, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The answer to a push.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PushResponse {
    /// Every mutation up to this id is settled (applied, skipped or
    /// rejected): the client deletes those outbox rows.
    pub last_mutation_id: u64,
    /// One per pushed mutation, in order.
    pub results: Vec<MutationResult>,
}

/// One entity's latest state in a pull.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Change {
    /// The entity.
    pub entity_id: String,
    /// Its version (the player's change counter when it last changed).
    pub version: u64,
    /// A tombstone: the entity was deleted.
    #[serde(default)]
    pub deleted: bool,
    /// The body (null for a tombstone).
    #[serde(default)]
    pub body: Value,
}

/// The answer to `GET /api/sync/pull`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PullResponse {
    /// Entities changed after the cursor, in version order.
    #[serde(default)]
    pub changes: Vec<Change>,
    /// The cursor of the next pull.
    #[serde(default)]
    pub cursor: u64,
    /// More changes wait: pull again at once with `cursor`.
    #[serde(default)]
    pub has_more: bool,
    /// The last mutation of this client the server has settled.
    #[serde(default)]
    pub last_mutation_id: u64,
    /// The cursor is older than the tombstone horizon, or newer than
    /// anything the server has: wipe synced rows (keep the outbox) and
    /// pull from 0. Not an error.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reset: bool,
    /// The player's current version (for progress: `cursor` of `latest`).
    #[serde(default)]
    pub latest: u64,
}

/// Which chain of pull pages a pull belongs to, as the cloud must know to
/// decide a reset (query `fresh=true`, `chain_latest=N`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Chain {
    /// Resumed from a cursor the device kept: below the tombstone floor it
    /// may hold entities whose deletion the cloud forgot, so it resets.
    #[default]
    Resumed,
    /// Began at cursor 0, when the player's latest version was `latest`.
    /// Such a device holds only what this chain brought, so a cursor below
    /// the floor needs no reset, unless tombstones newer than `latest`
    /// were purged meanwhile: their entities may be among those the
    /// chain's earlier pages brought, or the device's own writes (pulls
    /// skip them), so a device whose writes were settled first says the
    /// oldest of their versions, before any page too. (`None`: a client
    /// that does not say; no reset.)
    Fresh {
        /// The player's latest version when the chain's first page was
        /// read, or the device's oldest settled write's if older.
        latest: Option<u64>,
    },
}

/// `POST /api/players` and `POST /api/players/devices`: a device's name.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    /// Shown to the player's other devices ("marked by device").
    #[serde(default)]
    pub device_name: Option<String>,
    /// A link code from a device of the player to join (join only).
    #[serde(default)]
    pub code: Option<String>,
}

/// What a registered device keeps: its player, its id and its token.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceCredentials {
    /// The player.
    pub player_id: String,
    /// This device.
    pub device_id: String,
    /// The bearer token (shown once; the server keeps only its hash).
    pub token: String,
}

impl std::fmt::Debug for DeviceCredentials {
    // A token must never reach a log through `{:?}`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceCredentials")
            .field("player_id", &self.player_id)
            .field("device_id", &self.device_id)
            .finish_non_exhaustive()
    }
}

/// A link code for another device to join the player.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkCode {
    /// The code, e.g. `K7QF-9M2D` (case and dashes do not matter).
    pub code: String,
    /// When it stops working (RFC 3339); it works once.
    pub expires_at: String,
}

/// One device of a player.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceInfo {
    /// Its id.
    pub device_id: String,
    /// Its name.
    pub name: String,
    /// When it registered (RFC 3339).
    pub created_at: String,
    /// Its token no longer works.
    pub revoked: bool,
}

/// `GET /api/players/me`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlayerInfo {
    /// The player.
    pub player_id: String,
    /// The device whose token asked.
    pub device_id: String,
    /// Every device of the player.
    pub devices: Vec<DeviceInfo>,
}

/// The data of a `poke` event on `GET /api/sync/events`: the player's data
/// changed up to `version`; pull.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Poke {
    /// The player's version after the change.
    pub version: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_requests_refuse_unknown_fields_and_default_the_optional_ones() {
        let ok: PushRequest = serde_json::from_str(
            r#"{"client_id":"c","mutations":[{"mutation_id":1,"op":"delete","entity_id":"e"}]}"#,
        )
        .unwrap();
        assert_eq!(ok.mutations[0].base_version, 0);
        assert_eq!(ok.mutations[0].body, Value::Null);
        assert!(serde_json::from_str::<PushRequest>(
            r#"{"client_id":"c","mutations":[],"extra":1}"#
        )
        .is_err());
        assert!(serde_json::from_str::<PushRequest>(
            r#"{"client_id":"c","mutations":[{"op":"put","entity_id":"e"}]}"#
        )
        .is_err());
    }

    #[test]
    fn a_pull_without_reset_does_not_say_so() {
        let text = serde_json::to_string(&PullResponse::default()).unwrap();
        assert!(!text.contains("reset"), "{text}");
        let reset: PullResponse = serde_json::from_str(r#"{"reset":true}"#).unwrap();
        assert!(reset.reset && reset.changes.is_empty());
    }

    #[test]
    fn credentials_never_print_their_token() {
        let c = DeviceCredentials {
            player_id: "p".into(),
            device_id: "d".into(),
            token: "secret-token".into(),
        };
        assert!(!format!("{c:?}").contains("secret"));
    }
}
