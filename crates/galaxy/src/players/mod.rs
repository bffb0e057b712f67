//! The cloud's side of sync: players, their devices and tokens, link codes,
//! and each player's synced galaxies: in one SQLite file (`players.db` in
//! galaxy-cloud's data directory, [`sqlite`]) or in PostgreSQL, shared by
//! several galaxy-cloud processes ([`postgres`]).
//!
//! - A device registers (a new player) or joins a player with a link code
//!   made on one of its devices; either way it gets its own token,
//!   `gf1.<device id>.<64 hex digits>`. Only the SHA-256 of a token is
//!   stored; a token is found by its device id and its hash compared in
//!   constant time. Revoking a device kills its token.
//! - Each player has a change counter; every applied mutation takes the
//!   next value as the entity's version, so a pull is "versions after my
//!   cursor" and pages are stable.
//! - Push applies each client's mutations exactly once (per client, the
//!   last settled mutation id); the rules are pure functions in [`plan`],
//!   shared by both stores.
//! - Deletes leave tombstones; [`Players::purge_tombstones`] drops the ones
//!   older than the retention and raises the player's floor, and a pull from
//!   below the floor answers `reset`.
//!
//! SQLite calls are serialized on one connection, on the blocking pool:
//! each is a short transaction, and one writer is what SQLite allows anyway.

mod outbox;
mod plan;
#[cfg(feature = "postgres")]
mod postgres;
mod sqlite;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use rand::Rng;
use rusqlite::Connection;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use sync::protocol::{
    Chain, DeviceCredentials, LinkCode, PlayerInfo, PullResponse, PushRequest, PushResponse,
    DEFAULT_PULL_LIMIT, MAX_PULL_LIMIT, MAX_PUSH_MUTATIONS,
};
use tokio::sync::broadcast;

use crate::body;
pub use outbox::OutboxEvent;

/// How long a link code works.
pub const LINK_CODE_TTL: Duration = Duration::from_secs(600);
/// Longest device name, in characters.
pub const MAX_DEVICE_NAME_CHARS: usize = 64;
const TOKEN_PREFIX: &str = "gf1";
/// Link code alphabet: no 0/O, 1/I/L, so a code read aloud survives.
const CODE_ALPHABET: &[u8] = b"23456789ABCDEFGHJKMNPQRSTUVWXYZ";

/// Why a players call failed.
#[derive(Debug, thiserror::Error)]
pub enum PlayersError {
    /// No token, a malformed one, an unknown one or a revoked one.
    #[error("the device token is missing, wrong or revoked")]
    Unauthorized,
    /// The link code is unknown, used or expired.
    #[error("the link code is unknown, already used or expired")]
    BadLinkCode,
    /// No such thing for this player (another player's answers the same).
    #[error("{0}")]
    NotFound(String),
    /// The server has no state for this client id.
    #[error("no state for client {0}: take a new client id and renumber from 1")]
    ClientStateNotFound(String),
    /// The push skipped mutation ids; nothing was applied.
    #[error("mutation ids must be contiguous from {expected}; got {got}")]
    MutationGap {
        /// The next id the server expects.
        expected: u64,
        /// The id that broke the sequence.
        got: u64,
    },
    /// A push resent mutation `0` for a galaxy the player never had: the
    /// id was settled for another change, so the device's data came back
    /// from an older copy. Nothing was applied.
    #[error("mutation {0} of this client was settled for another change (is this device's data an older copy?): take a new client id, renumber from 1 and pull from 0")]
    MutationIdReused(u64),
    /// A push with more mutations than allowed.
    #[error("a push carries at most {MAX_PUSH_MUTATIONS} mutations; this one has {0}")]
    TooMany(usize),
    /// A value the request may not carry.
    #[error("{0}")]
    Invalid(String),
    /// SQLite failed.
    #[error("players database error: {0}")]
    Database(#[from] rusqlite::Error),
    /// PostgreSQL failed.
    #[error("players database error: {0}")]
    Postgres(String),
    /// The blocking call did not finish (shutdown).
    #[error("players call interrupted: {0}")]
    Interrupted(String),
}

/// A device a token belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Device {
    /// Its player.
    pub player_id: String,
    /// Its id.
    pub device_id: String,
    /// Its name (the origin of the galaxies it creates).
    pub name: String,
}

/// A player's data changed: its version is now `version`. Player `*`
/// means "any player, maybe": changes may have been missed (the PostgreSQL
/// listener reconnected), so every device should pull.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlayerChange {
    /// The player (or, for a revocation, [`revoked_key`] of the device:
    /// its live streams end).
    pub player_id: String,
    /// Its version after the change.
    pub version: u64,
}

/// Players, devices and synced galaxies. Cloning shares them.
#[derive(Clone)]
pub struct Players {
    backend: Backend,
    changes: broadcast::Sender<PlayerChange>,
}

#[derive(Clone)]
enum Backend {
    Sqlite(Arc<Mutex<Connection>>),
    #[cfg(feature = "postgres")]
    Postgres(Arc<postgres::PgPlayers>),
}

impl std::fmt::Debug for Players {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Players").finish_non_exhaustive()
    }
}

/// SHA-256 of a secret, hex.
fn digest(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

fn now() -> DateTime<Utc> {
    Utc::now()
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// A device name as given, checked (at most 64 characters, none a control
/// character), then trimmed; a default when absent or blank.
pub fn check_device_name(name: Option<&str>) -> Result<String, PlayersError> {
    let given = name.unwrap_or("");
    if given.chars().count() > MAX_DEVICE_NAME_CHARS || given.chars().any(char::is_control) {
        return Err(PlayersError::Invalid(format!(
            "a device name has 1 to {MAX_DEVICE_NAME_CHARS} printable characters"
        )));
    }
    let name = given.trim();
    if name.is_empty() {
        return Ok("device".into());
    }
    Ok(name.to_string())
}

/// A link code in its stored form: upper case, no dashes or spaces.
fn normalize_code(code: &str) -> String {
    code.chars()
        .filter(|c| !matches!(c, '-' | ' '))
        .map(|c| c.to_ascii_uppercase())
        .collect()
}

fn new_code() -> String {
    let mut rng = rand::thread_rng();
    let raw: String = (0..8)
        .map(|_| CODE_ALPHABET[rng.gen_range(0..CODE_ALPHABET.len())] as char)
        .collect();
    format!("{}-{}", &raw[..4], &raw[4..])
}

fn new_token(device_id: &str) -> String {
    let secret: [u8; 32] = rand::thread_rng().gen();
    format!("{TOKEN_PREFIX}.{device_id}.{}", hex::encode(secret))
}

/// The device id a token names, if it has the token's shape.
fn token_device(token: &str) -> Option<&str> {
    let mut parts = token.split('.');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(TOKEN_PREFIX), Some(device), Some(secret), None)
            if secret.len() == 64 && secret.bytes().all(|b| b.is_ascii_hexdigit()) =>
        {
            Some(device)
        }
        _ => None,
    }
}

impl Players {
    /// Opens (creating if needed) the players database at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, PlayersError> {
        let conn = sqlite::open(path.as_ref())?;
        Ok(Self {
            backend: Backend::Sqlite(Arc::new(Mutex::new(conn))),
            changes: broadcast::channel(4096).0,
        })
    }

    /// Connects to PostgreSQL at `url` (tables in `schema`, created if
    /// missing). Changes committed by any process sharing the database
    /// reach [`subscribe`](Self::subscribe). Feature `postgres`.
    #[cfg(feature = "postgres")]
    pub async fn connect(url: &str, schema: &str) -> Result<Self, PlayersError> {
        let changes = broadcast::channel(4096).0;
        let pg = postgres::PgPlayers::connect(url, schema, changes.clone()).await?;
        Ok(Self {
            backend: Backend::Postgres(Arc::new(pg)),
            changes,
        })
    }

    /// Every change to any player's data, as it commits (what pokes are
    /// made of).
    pub fn subscribe(&self) -> broadcast::Receiver<PlayerChange> {
        self.changes.subscribe()
    }
}

/// The `player_id` of the change that announces `device_id`'s revocation
/// (ids are UUIDs, so it names no player).
pub fn revoked_key(device_id: &str) -> String {
    format!("revoked:{device_id}")
}

impl Players {
    /// Announces a change committed by this process. PostgreSQL announces
    /// its own to every process (NOTIFY), so only SQLite needs this.
    fn announce(&self, player_id: &str, version: u64) {
        if matches!(self.backend, Backend::Sqlite(_)) {
            let _ = self.changes.send(PlayerChange {
                player_id: player_id.to_string(),
                version,
            });
        }
    }

    async fn sqlite<T: Send + 'static>(
        conn: &Arc<Mutex<Connection>>,
        f: impl FnOnce(&mut Connection) -> Result<T, PlayersError> + Send + 'static,
    ) -> Result<T, PlayersError> {
        let conn = conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut conn)
        })
        .await
        .map_err(|e| PlayersError::Interrupted(e.to_string()))?
    }

    /// A new player with this device as its first.
    pub async fn register(
        &self,
        device_name: Option<&str>,
    ) -> Result<DeviceCredentials, PlayersError> {
        let name = check_device_name(device_name)?;
        match &self.backend {
            Backend::Sqlite(c) => Self::sqlite(c, move |conn| sqlite::register(conn, &name)).await,
            #[cfg(feature = "postgres")]
            Backend::Postgres(pg) => pg.register(&name).await,
        }
    }

    /// The device a bearer token belongs to.
    pub async fn authenticate(&self, token: &str) -> Result<Device, PlayersError> {
        let Some(device_id) = token_device(token) else {
            return Err(PlayersError::Unauthorized);
        };
        let device_id = device_id.to_string();
        let hash = digest(token);
        let row = match &self.backend {
            Backend::Sqlite(c) => {
                let id = device_id.clone();
                Self::sqlite(c, move |conn| sqlite::device_row(conn, &id)).await?
            }
            #[cfg(feature = "postgres")]
            Backend::Postgres(pg) => pg.device_row(&device_id).await?,
        };
        match row {
            Some((player_id, name, stored, false))
                if bool::from(stored.as_bytes().ct_eq(hash.as_bytes())) =>
            {
                Ok(Device {
                    player_id,
                    device_id,
                    name,
                })
            }
            _ => Err(PlayersError::Unauthorized),
        }
    }

    /// A single-use code another device can join this player with.
    pub async fn create_link_code(&self, device: &Device) -> Result<LinkCode, PlayersError> {
        let code = new_code();
        let expires = now() + chrono::Duration::from_std(LINK_CODE_TTL).expect("small");
        let hash = digest(&normalize_code(&code));
        let player_id = device.player_id.clone();
        match &self.backend {
            Backend::Sqlite(c) => {
                let h = hash.clone();
                Self::sqlite(c, move |conn| {
                    sqlite::add_link_code(conn, &player_id, &h, expires.timestamp())
                })
                .await?
            }
            #[cfg(feature = "postgres")]
            Backend::Postgres(pg) => {
                pg.add_link_code(&player_id, &hash, expires.timestamp())
                    .await?
            }
        }
        Ok(LinkCode {
            code,
            expires_at: rfc3339(expires),
        })
    }

    /// Joins the player of a link code (using the code up).
    pub async fn join(
        &self,
        code: &str,
        device_name: Option<&str>,
    ) -> Result<DeviceCredentials, PlayersError> {
        let name = check_device_name(device_name)?;
        let hash = digest(&normalize_code(code));
        match &self.backend {
            Backend::Sqlite(c) => {
                Self::sqlite(c, move |conn| sqlite::join(conn, &hash, &name)).await
            }
            #[cfg(feature = "postgres")]
            Backend::Postgres(pg) => pg.join(&hash, &name).await,
        }
    }

    /// The player of a device and all its devices.
    pub async fn me(&self, device: &Device) -> Result<PlayerInfo, PlayersError> {
        match &self.backend {
            Backend::Sqlite(c) => {
                let device = device.clone();
                Self::sqlite(c, move |conn| sqlite::me(conn, &device)).await
            }
            #[cfg(feature = "postgres")]
            Backend::Postgres(pg) => pg.me(device).await,
        }
    }

    /// Revokes a device of the same player (another player's device is not
    /// found).
    pub async fn revoke(&self, by: &Device, device_id: &str) -> Result<(), PlayersError> {
        if uuid::Uuid::parse_str(device_id).is_err() {
            // Device ids are UUIDs; nothing else names one (and a NUL
            // could not even be looked up in PostgreSQL).
            return Err(PlayersError::NotFound(format!(
                "no device {}",
                device_id.escape_debug()
            )));
        }
        let (player_id, id) = (by.player_id.clone(), device_id.to_string());
        let revoked = match &self.backend {
            Backend::Sqlite(c) => {
                Self::sqlite(c, move |conn| sqlite::revoke(conn, &player_id, &id)).await?
            }
            #[cfg(feature = "postgres")]
            Backend::Postgres(pg) => pg.revoke(&player_id, &id).await?,
        };
        if !revoked {
            return Err(PlayersError::NotFound(format!("no device {device_id}")));
        }
        // Its live streams end (PostgreSQL announced it to every process).
        self.announce(&revoked_key(device_id), 0);
        Ok(())
    }

    /// Applies a push: mutations up to the client's last settled id are
    /// skipped, the rest must follow it without a gap (else nothing is
    /// applied), invalid ones are rejected (and settled, so the client
    /// moves on), and each applied one takes the player's next version.
    pub async fn push(
        &self,
        device: &Device,
        request: PushRequest,
    ) -> Result<PushResponse, PlayersError> {
        if request.mutations.len() > MAX_PUSH_MUTATIONS {
            return Err(PlayersError::TooMany(request.mutations.len()));
        }
        plan::check_client_id(&request.client_id)?;
        let plan = match &self.backend {
            Backend::Sqlite(c) => {
                let device = device.clone();
                Self::sqlite(c, move |conn| sqlite::push(conn, &device, &request)).await?
            }
            #[cfg(feature = "postgres")]
            Backend::Postgres(pg) => pg.push(device, &request).await?,
        };
        if plan.changed {
            self.announce(&device.player_id, plan.counter);
        }
        Ok(plan.response)
    }

    /// The changes after `cursor`, at most `limit` (default
    /// [`DEFAULT_PULL_LIMIT`], at most [`MAX_PULL_LIMIT`]). A cursor below
    /// the tombstone floor answers `reset`, unless the client's chain of
    /// pages began at 0 and no tombstone newer than its start was purged
    /// since ([`Chain`]).
    pub async fn pull(
        &self,
        device: &Device,
        client_id: &str,
        cursor: u64,
        chain: Chain,
        limit: Option<usize>,
    ) -> Result<PullResponse, PlayersError> {
        let limit = limit.unwrap_or(DEFAULT_PULL_LIMIT).clamp(1, MAX_PULL_LIMIT);
        plan::check_client_id(client_id)?;
        let (player_id, client_id) = (device.player_id.clone(), client_id.to_string());
        match &self.backend {
            Backend::Sqlite(c) => {
                Self::sqlite(c, move |conn| {
                    sqlite::pull(conn, &player_id, &client_id, cursor, chain, limit)
                })
                .await
            }
            #[cfg(feature = "postgres")]
            Backend::Postgres(pg) => pg.pull(&player_id, &client_id, cursor, chain, limit).await,
        }
    }

    /// Drops tombstones older than `retention` and raises each affected
    /// player's floor to the newest dropped version. Returns how many it
    /// dropped.
    pub async fn purge_tombstones(&self, retention: Duration) -> Result<usize, PlayersError> {
        let horizon =
            now().timestamp_millis() - i64::try_from(retention.as_millis()).unwrap_or(i64::MAX / 2);
        match &self.backend {
            Backend::Sqlite(c) => {
                Self::sqlite(c, move |conn| sqlite::purge_tombstones(conn, horizon)).await
            }
            #[cfg(feature = "postgres")]
            Backend::Postgres(pg) => pg.purge_tombstones(horizon).await,
        }
    }

    /// Adds a galaxy made in the cloud for a player (a `Galaxy_Create`
    /// the player started through the starter route): it takes the next
    /// version like a pushed one, and devices pull it. Idempotent: an
    /// activity that runs twice adds it once. Returns its version when
    /// this call added it.
    pub async fn put_cloud_galaxy(
        &self,
        player_id: &str,
        entity_id: &str,
        body: body::GalaxyBody,
    ) -> Result<Option<u64>, PlayersError> {
        body::check_entity_id(entity_id).map_err(PlayersError::Invalid)?;
        let (p, e) = (player_id.to_string(), entity_id.to_string());
        let added = match &self.backend {
            Backend::Sqlite(c) => {
                Self::sqlite(c, move |conn| sqlite::put_cloud_galaxy(conn, &p, &e, &body)).await?
            }
            #[cfg(feature = "postgres")]
            Backend::Postgres(pg) => pg.put_cloud_galaxy(&p, &e, &body).await?,
        };
        if let Some(v) = added {
            self.announce(player_id, v);
        }
        Ok(added)
    }

    /// The oldest `limit` events of the galaxy outbox (see [`outbox`]), in
    /// commit order. Every change that writes events is also announced on
    /// [`subscribe`](Self::subscribe), which is what a relay waits on.
    pub async fn outbox(&self, limit: usize) -> Result<Vec<OutboxEvent>, PlayersError> {
        match &self.backend {
            Backend::Sqlite(c) => Self::sqlite(c, move |conn| sqlite::outbox(conn, limit)).await,
            #[cfg(feature = "postgres")]
            Backend::Postgres(pg) => pg.outbox(limit).await,
        }
    }

    /// Deletes outbox rows once their events are published.
    pub async fn ack_outbox(&self, seqs: Vec<i64>) -> Result<(), PlayersError> {
        if seqs.is_empty() {
            return Ok(());
        }
        match &self.backend {
            Backend::Sqlite(c) => {
                Self::sqlite(c, move |conn| sqlite::ack_outbox(conn, &seqs)).await
            }
            #[cfg(feature = "postgres")]
            Backend::Postgres(pg) => pg.ack_outbox(&seqs).await,
        }
    }

    /// A player's synced galaxy count (live ones), for status and tests.
    pub async fn galaxy_count(&self, player_id: &str) -> Result<u64, PlayersError> {
        let p = player_id.to_string();
        match &self.backend {
            Backend::Sqlite(c) => Self::sqlite(c, move |conn| sqlite::galaxy_count(conn, &p)).await,
            #[cfg(feature = "postgres")]
            Backend::Postgres(pg) => pg.galaxy_count(&p).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_have_one_shape() {
        let t = new_token("dev-1");
        assert_eq!(token_device(&t), Some("dev-1"));
        assert_eq!(token_device("gf1.dev.abc"), None);
        assert_eq!(token_device(&format!("gf2.dev.{}", "a".repeat(64))), None);
        assert_eq!(token_device(&format!("{t}.x")), None);
    }

    #[test]
    fn link_codes_read_the_same_in_any_case_and_with_any_dashes() {
        let c = new_code();
        assert_eq!(c.len(), 9);
        assert_eq!(
            normalize_code(&c.to_lowercase()),
            normalize_code(&c.replace('-', " "))
        );
    }

    #[test]
    fn device_names_are_checked() {
        assert_eq!(check_device_name(None).unwrap(), "device");
        assert_eq!(check_device_name(Some("  laptop ")).unwrap(), "laptop");
        assert!(check_device_name(Some(&"x".repeat(65))).is_err());
        assert!(check_device_name(Some("a\nb")).is_err());
        // Checked as given (what the OpenAPI document declares), then
        // trimmed: a control character or an overlong name is refused
        // even where trimming would have removed it.
        assert!(check_device_name(Some("laptop\n")).is_err());
        assert!(check_device_name(Some(&format!("{} ", "x".repeat(64)))).is_err());
        assert_eq!(check_device_name(Some("   ")).unwrap(), "device");
    }
}
