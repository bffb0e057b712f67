//! The cloud's side of sync: players, their devices and tokens, link codes,
//! and each player's synced galaxies, in one SQLite file (`players.db` in
//! galaxy-cloud's data directory).
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
//!   last settled mutation id); see [`Players::push`].
//! - Deletes leave tombstones; [`Players::purge_tombstones`] drops the ones
//!   older than the retention and raises the player's floor, and a pull from
//!   below the floor answers `reset`.
//!
//! Calls are serialized on one connection, on the blocking pool: each is a
//! short transaction, and one writer is what SQLite allows anyway.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use rand::Rng;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use serde_json::Value;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use sync::protocol::{
    Change, DeviceCredentials, DeviceInfo, LinkCode, Mutation, MutationResult, MutationStatus, Op,
    PlayerInfo, PullResponse, PushRequest, PushResponse, DEFAULT_PULL_LIMIT, MAX_PULL_LIMIT,
    MAX_PUSH_MUTATIONS,
};
use tokio::sync::broadcast;

use crate::body;

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
    /// A push with more mutations than allowed.
    #[error("a push carries at most {MAX_PUSH_MUTATIONS} mutations; this one has {0}")]
    TooMany(usize),
    /// A value the request may not carry.
    #[error("{0}")]
    Invalid(String),
    /// SQLite failed.
    #[error("players database error: {0}")]
    Database(#[from] rusqlite::Error),
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

/// A player's data changed: its version is now `version`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlayerChange {
    /// The player.
    pub player_id: String,
    /// Its version after the change.
    pub version: u64,
}

/// Players, devices and synced galaxies. Cloning shares them.
#[derive(Clone)]
pub struct Players {
    conn: Arc<Mutex<Connection>>,
    changes: broadcast::Sender<PlayerChange>,
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

/// A device name as given, trimmed and checked; a default when absent.
pub fn check_device_name(name: Option<&str>) -> Result<String, PlayersError> {
    let name = name.map(str::trim).unwrap_or("");
    if name.is_empty() {
        return Ok("device".into());
    }
    if name.chars().count() > MAX_DEVICE_NAME_CHARS || name.chars().any(char::is_control) {
        return Err(PlayersError::Invalid(format!(
            "a device name has 1 to {MAX_DEVICE_NAME_CHARS} printable characters"
        )));
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
        let conn = Connection::open(path)?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = FULL;
             PRAGMA busy_timeout = 5000;
             CREATE TABLE IF NOT EXISTS players (
                 player_id TEXT PRIMARY KEY,
                 counter INTEGER NOT NULL,
                 tombstone_floor INTEGER NOT NULL,
                 created_at TEXT NOT NULL
             );
             CREATE TABLE IF NOT EXISTS devices (
                 device_id TEXT PRIMARY KEY,
                 player_id TEXT NOT NULL REFERENCES players (player_id),
                 name TEXT NOT NULL,
                 token_hash TEXT NOT NULL,
                 created_at TEXT NOT NULL,
                 revoked INTEGER NOT NULL DEFAULT 0
             );
             CREATE INDEX IF NOT EXISTS devices_by_player ON devices (player_id);
             CREATE TABLE IF NOT EXISTS link_codes (
                 code_hash TEXT PRIMARY KEY,
                 player_id TEXT NOT NULL,
                 expires_at INTEGER NOT NULL
             );
             CREATE TABLE IF NOT EXISTS clients (
                 client_id TEXT PRIMARY KEY,
                 player_id TEXT NOT NULL,
                 last_mutation_id INTEGER NOT NULL
             );
             CREATE TABLE IF NOT EXISTS sync_galaxies (
                 player_id TEXT NOT NULL,
                 entity_id TEXT NOT NULL,
                 version INTEGER NOT NULL,
                 deleted INTEGER NOT NULL,
                 body TEXT,
                 updated_at INTEGER NOT NULL,
                 writer TEXT,
                 PRIMARY KEY (player_id, entity_id)
             );
             CREATE INDEX IF NOT EXISTS sync_galaxies_by_version
                 ON sync_galaxies (player_id, version);",
        )?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
            changes: broadcast::channel(4096).0,
        })
    }

    /// Every change to any player's data, as it commits (what pokes are
    /// made of).
    pub fn subscribe(&self) -> broadcast::Receiver<PlayerChange> {
        self.changes.subscribe()
    }

    async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, PlayersError> + Send + 'static,
    ) -> Result<T, PlayersError> {
        let conn = self.conn.clone();
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
        self.call(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let player_id = uuid::Uuid::now_v7().to_string();
            tx.execute(
                "INSERT INTO players (player_id, counter, tombstone_floor, created_at)
                 VALUES (?1, 0, 0, ?2)",
                params![player_id, rfc3339(now())],
            )?;
            let creds = add_device(&tx, &player_id, &name)?;
            tx.commit()?;
            Ok(creds)
        })
        .await
    }

    /// The device a bearer token belongs to.
    pub async fn authenticate(&self, token: &str) -> Result<Device, PlayersError> {
        let Some(device_id) = token_device(token) else {
            return Err(PlayersError::Unauthorized);
        };
        let device_id = device_id.to_string();
        let hash = digest(token);
        self.call(move |conn| {
            let row: Option<(String, String, String, bool)> = conn
                .prepare_cached(
                    "SELECT player_id, name, token_hash, revoked FROM devices WHERE device_id = ?1",
                )?
                .query_row([&device_id], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                })
                .optional()?;
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
        })
        .await
    }

    /// A single-use code another device can join this player with.
    pub async fn create_link_code(&self, device: &Device) -> Result<LinkCode, PlayersError> {
        let player_id = device.player_id.clone();
        self.call(move |conn| {
            let code = new_code();
            let expires = now() + chrono::Duration::from_std(LINK_CODE_TTL).expect("small");
            conn.execute(
                "DELETE FROM link_codes WHERE expires_at < ?1",
                [now().timestamp()],
            )?;
            conn.execute(
                "INSERT INTO link_codes (code_hash, player_id, expires_at) VALUES (?1, ?2, ?3)",
                params![
                    digest(&normalize_code(&code)),
                    player_id,
                    expires.timestamp()
                ],
            )?;
            Ok(LinkCode {
                code,
                expires_at: rfc3339(expires),
            })
        })
        .await
    }

    /// Joins the player of a link code (using the code up).
    pub async fn join(
        &self,
        code: &str,
        device_name: Option<&str>,
    ) -> Result<DeviceCredentials, PlayersError> {
        let name = check_device_name(device_name)?;
        let hash = digest(&normalize_code(code));
        self.call(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let player: Option<String> = tx
                .query_row(
                    "DELETE FROM link_codes WHERE code_hash = ?1 AND expires_at >= ?2
                     RETURNING player_id",
                    params![hash, now().timestamp()],
                    |r| r.get(0),
                )
                .optional()?;
            let Some(player_id) = player else {
                return Err(PlayersError::BadLinkCode);
            };
            let creds = add_device(&tx, &player_id, &name)?;
            tx.commit()?;
            Ok(creds)
        })
        .await
    }

    /// The player of a device and all its devices.
    pub async fn me(&self, device: &Device) -> Result<PlayerInfo, PlayersError> {
        let device = device.clone();
        self.call(move |conn| {
            let devices = conn
                .prepare_cached(
                    "SELECT device_id, name, created_at, revoked FROM devices
                     WHERE player_id = ?1 ORDER BY created_at, device_id",
                )?
                .query_map([&device.player_id], |r| {
                    Ok(DeviceInfo {
                        device_id: r.get(0)?,
                        name: r.get(1)?,
                        created_at: r.get(2)?,
                        revoked: r.get(3)?,
                    })
                })?
                .collect::<Result<_, _>>()?;
            Ok(PlayerInfo {
                player_id: device.player_id,
                device_id: device.device_id,
                devices,
            })
        })
        .await
    }

    /// Revokes a device of the same player (another player's device is not
    /// found).
    pub async fn revoke(&self, by: &Device, device_id: &str) -> Result<(), PlayersError> {
        let player_id = by.player_id.clone();
        let device_id = device_id.to_string();
        self.call(move |conn| {
            let n = conn.execute(
                "UPDATE devices SET revoked = 1 WHERE device_id = ?1 AND player_id = ?2",
                params![device_id, player_id],
            )?;
            if n == 0 {
                return Err(PlayersError::NotFound(format!("no device {device_id}")));
            }
            Ok(())
        })
        .await
    }

    /// Applies a push. See the module docs and the protocol reference:
    /// mutations up to the client's last settled id are skipped, the rest
    /// must follow it without a gap (else nothing is applied), invalid ones
    /// are rejected (and settled, so the client moves on), and each applied
    /// one takes the player's next version.
    pub async fn push(
        &self,
        device: &Device,
        request: PushRequest,
    ) -> Result<PushResponse, PlayersError> {
        if request.mutations.len() > MAX_PUSH_MUTATIONS {
            return Err(PlayersError::TooMany(request.mutations.len()));
        }
        let device = device.clone();
        let changes = self.changes.clone();
        self.call(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let (response, version) = push_in(&tx, &device, &request)?;
            tx.commit()?;
            if let Some(version) = version {
                let _ = changes.send(PlayerChange {
                    player_id: device.player_id.clone(),
                    version,
                });
            }
            Ok(response)
        })
        .await
    }

    /// The changes after `cursor`, at most `limit` (default
    /// [`DEFAULT_PULL_LIMIT`], at most [`MAX_PULL_LIMIT`]). A cursor below
    /// the tombstone floor answers `reset`, unless `fresh` (the client's
    /// chain of pages began at 0: it never held a purged entity).
    pub async fn pull(
        &self,
        device: &Device,
        client_id: &str,
        cursor: u64,
        fresh: bool,
        limit: Option<usize>,
    ) -> Result<PullResponse, PlayersError> {
        let limit = limit.unwrap_or(DEFAULT_PULL_LIMIT).clamp(1, MAX_PULL_LIMIT);
        let player_id = device.player_id.clone();
        let client_id = client_id.to_string();
        self.call(move |conn| {
            let tx = conn.transaction()?;
            let (latest, floor) = player_versions(&tx, &player_id)?;
            let last_mutation_id = client_last(&tx, &client_id, &player_id)?.unwrap_or(0);
            if cursor > latest || (cursor > 0 && cursor < floor && !fresh) {
                return Ok(PullResponse {
                    reset: true,
                    last_mutation_id,
                    latest,
                    ..PullResponse::default()
                });
            }
            let mut changes = tx
                .prepare_cached(
                    "SELECT entity_id, version, deleted, body, writer IS ?4 FROM sync_galaxies
                     WHERE player_id = ?1 AND version > ?2 ORDER BY version LIMIT ?3",
                )?
                .query_map(
                    params![player_id, cursor as i64, limit as i64 + 1, client_id],
                    |r| {
                        let body: Option<String> = r.get(3)?;
                        let own: bool = r.get(4)?;
                        Ok((
                            own,
                            Change {
                                entity_id: r.get(0)?,
                                version: r.get::<_, i64>(1)? as u64,
                                deleted: r.get(2)?,
                                body: body
                                    .and_then(|b| serde_json::from_str(&b).ok())
                                    .unwrap_or(Value::Null),
                            },
                        ))
                    },
                )?
                .collect::<Result<Vec<_>, _>>()?;
            let has_more = changes.len() > limit;
            changes.truncate(limit);
            let cursor = if has_more {
                changes.last().map_or(cursor, |(_, c)| c.version)
            } else {
                latest
            };
            // The client's own latest writes: it has them already (its
            // push's answer gave it their versions), so they are not sent
            // back; the cursor still moves past them.
            let changes = changes
                .into_iter()
                .filter_map(|(own, c)| (!own).then_some(c))
                .collect();
            Ok(PullResponse {
                changes,
                cursor,
                has_more,
                last_mutation_id,
                reset: false,
                latest,
            })
        })
        .await
    }

    /// Drops tombstones older than `retention` and raises each affected
    /// player's floor to the newest dropped version. Returns how many it
    /// dropped.
    pub async fn purge_tombstones(&self, retention: Duration) -> Result<usize, PlayersError> {
        let horizon =
            now().timestamp_millis() - i64::try_from(retention.as_millis()).unwrap_or(i64::MAX / 2);
        self.call(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.execute(
                "UPDATE players SET tombstone_floor = max(tombstone_floor, (
                     SELECT max(version) FROM sync_galaxies g
                     WHERE g.player_id = players.player_id AND deleted = 1 AND updated_at < ?1))
                 WHERE player_id IN (
                     SELECT player_id FROM sync_galaxies WHERE deleted = 1 AND updated_at < ?1)",
                [horizon],
            )?;
            let n = tx.execute(
                "DELETE FROM sync_galaxies WHERE deleted = 1 AND updated_at < ?1",
                [horizon],
            )?;
            tx.commit()?;
            Ok(n)
        })
        .await
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
        let (player_id, entity_id) = (player_id.to_string(), entity_id.to_string());
        let changes = self.changes.clone();
        self.call(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let (counter, _) = player_versions(&tx, &player_id)?;
            let exists = current(&tx, &player_id, &entity_id)?.is_some();
            let known: bool = tx
                .query_row("SELECT 1 FROM players WHERE player_id = ?1", [&player_id], |_| Ok(()))
                .optional()?
                .is_some();
            if exists || !known {
                return Ok(None);
            }
            let version = counter + 1;
            tx.execute(
                "INSERT INTO sync_galaxies (player_id, entity_id, version, deleted, body, updated_at, writer)
                 VALUES (?1, ?2, ?3, 0, ?4, ?5, NULL)",
                params![player_id, entity_id, version as i64, body.to_value().to_string(), now().timestamp_millis()],
            )?;
            tx.execute(
                "UPDATE players SET counter = ?2 WHERE player_id = ?1",
                params![player_id, version as i64],
            )?;
            tx.commit()?;
            let _ = changes.send(PlayerChange {
                player_id,
                version,
            });
            Ok(Some(version))
        })
        .await
    }

    /// A player's synced galaxy count (live ones), for status and tests.
    pub async fn galaxy_count(&self, player_id: &str) -> Result<u64, PlayersError> {
        let player_id = player_id.to_string();
        self.call(move |conn| {
            Ok(conn.query_row(
                "SELECT count(*) FROM sync_galaxies WHERE player_id = ?1 AND deleted = 0",
                [player_id],
                |r| r.get::<_, i64>(0),
            )? as u64)
        })
        .await
    }
}

fn add_device(
    conn: &Connection,
    player_id: &str,
    name: &str,
) -> Result<DeviceCredentials, PlayersError> {
    let device_id = uuid::Uuid::now_v7().to_string();
    let token = new_token(&device_id);
    conn.execute(
        "INSERT INTO devices (device_id, player_id, name, token_hash, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![device_id, player_id, name, digest(&token), rfc3339(now())],
    )?;
    Ok(DeviceCredentials {
        player_id: player_id.to_string(),
        device_id,
        token,
    })
}

fn player_versions(conn: &Connection, player_id: &str) -> Result<(u64, u64), PlayersError> {
    Ok(conn
        .prepare_cached("SELECT counter, tombstone_floor FROM players WHERE player_id = ?1")?
        .query_row([player_id], |r| {
            Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64))
        })
        .optional()?
        .unwrap_or((0, 0)))
}

/// The client's last settled mutation id, if it is this player's client.
fn client_last(
    conn: &Connection,
    client_id: &str,
    player_id: &str,
) -> Result<Option<u64>, PlayersError> {
    let row: Option<(String, i64)> = conn
        .prepare_cached("SELECT player_id, last_mutation_id FROM clients WHERE client_id = ?1")?
        .query_row([client_id], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    Ok(row.and_then(|(p, last)| (p == player_id).then_some(last as u64)))
}

/// The current state of one entity of a player.
struct Current {
    version: u64,
    deleted: bool,
    origin: String,
}

fn current(
    conn: &Connection,
    player_id: &str,
    entity_id: &str,
) -> Result<Option<Current>, PlayersError> {
    Ok(conn
        .prepare_cached(
            "SELECT version, deleted, json_extract(body, '$.origin') FROM sync_galaxies
             WHERE player_id = ?1 AND entity_id = ?2",
        )?
        .query_row(params![player_id, entity_id], |r| {
            Ok(Current {
                version: r.get::<_, i64>(0)? as u64,
                deleted: r.get(1)?,
                origin: r.get::<_, Option<String>>(2)?.unwrap_or_default(),
            })
        })
        .optional()?)
}

/// What one mutation does, before any write: its parsed op and body, or
/// why it is refused.
fn check(m: &Mutation) -> Result<(Op, Option<body::GalaxyBody>), String> {
    let op = Op::parse(&m.op)
        .ok_or_else(|| format!("unknown op '{}'", m.op.chars().take(32).collect::<String>()))?;
    body::check_entity_id(&m.entity_id)?;
    match op {
        Op::Put => Ok((op, Some(body::parse(&m.body)?))),
        Op::Delete => Ok((op, None)),
    }
}

/// The body of one push, inside its transaction. Returns the answer and
/// the player's new version if anything changed.
fn push_in(
    tx: &Connection,
    device: &Device,
    request: &PushRequest,
) -> Result<(PushResponse, Option<u64>), PlayersError> {
    let player_id = device.player_id.as_str();
    let first = request.mutations.first().map(|m| m.mutation_id);
    let known: Option<(String, i64)> = tx
        .prepare_cached("SELECT player_id, last_mutation_id FROM clients WHERE client_id = ?1")?
        .query_row([&request.client_id], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let last = match known {
        Some((p, last)) if p == player_id => last as u64,
        // Another player's client id is as unknown as one never seen.
        Some(_) => return Err(PlayersError::ClientStateNotFound(request.client_id.clone())),
        None => {
            if first.is_some_and(|f| f != 1) {
                return Err(PlayersError::ClientStateNotFound(request.client_id.clone()));
            }
            if request.client_id.is_empty() || request.client_id.len() > 64 {
                return Err(PlayersError::Invalid(
                    "client_id has 1 to 64 characters".into(),
                ));
            }
            tx.prepare_cached(
                "INSERT INTO clients (client_id, player_id, last_mutation_id) VALUES (?1, ?2, 0)",
            )?
            .execute(params![request.client_id, player_id])?;
            0
        }
    };
    // The batch must be contiguous and must not leave a hole after `last`.
    if let Some(first) = first {
        if first > last + 1 {
            return Err(PlayersError::MutationGap {
                expected: last + 1,
                got: first,
            });
        }
        for (i, m) in request.mutations.iter().enumerate() {
            if m.mutation_id != first + i as u64 {
                return Err(PlayersError::MutationGap {
                    expected: first + i as u64,
                    got: m.mutation_id,
                });
            }
        }
    }
    let (mut counter, _) = player_versions(tx, player_id)?;
    let start = counter;
    let now_ms = now().timestamp_millis();
    let mut results = Vec::with_capacity(request.mutations.len());
    for m in &request.mutations {
        if m.mutation_id <= last {
            results.push(MutationResult {
                mutation_id: m.mutation_id,
                status: MutationStatus::Skipped,
                version: None,
                conflict: false,
                reason: None,
            });
            continue;
        }
        let existing = current(tx, player_id, &m.entity_id)?;
        let conflict = existing
            .as_ref()
            .is_some_and(|c| c.version != m.base_version);
        let outcome = match check(m) {
            Err(reason) => Err((reason, false)),
            Ok((Op::Put, _)) if existing.as_ref().is_some_and(|c| c.deleted) => Err((
                "the galaxy was deleted on another device; deletes win".to_string(),
                true,
            )),
            Ok((Op::Put, Some(mut b))) => {
                counter += 1;
                b.origin = match &existing {
                    Some(c) if !c.origin.is_empty() => c.origin.clone(),
                    _ => device.name.clone(),
                };
                tx.prepare_cached(
                    "INSERT INTO sync_galaxies (player_id, entity_id, version, deleted, body, updated_at, writer)
                     VALUES (?1, ?2, ?3, 0, ?4, ?5, ?6)
                     ON CONFLICT (player_id, entity_id) DO UPDATE SET
                         version = excluded.version, deleted = 0, body = excluded.body,
                         updated_at = excluded.updated_at, writer = excluded.writer",
                )?
                .execute(params![player_id, m.entity_id, counter as i64, b.to_value().to_string(), now_ms, request.client_id])?;
                Ok(Some(counter))
            }
            Ok((Op::Delete, _)) => match &existing {
                Some(c) if !c.deleted => {
                    counter += 1;
                    tx.prepare_cached(
                        "UPDATE sync_galaxies SET version = ?3, deleted = 1, body = NULL, updated_at = ?4,
                             writer = ?5
                         WHERE player_id = ?1 AND entity_id = ?2",
                    )?
                    .execute(params![player_id, m.entity_id, counter as i64, now_ms, request.client_id])?;
                    Ok(Some(counter))
                }
                // Already gone (or never here): nothing to change.
                _ => Ok(None),
            },
            Ok((Op::Put, None)) => unreachable!("check gives puts a body"),
        };
        results.push(match outcome {
            Ok(version) => MutationResult {
                mutation_id: m.mutation_id,
                status: MutationStatus::Applied,
                version,
                conflict,
                reason: None,
            },
            Err((reason, conflict)) => {
                // The client's copy is wrong: touch the entity so its next
                // pull brings the server's truth back.
                if existing.is_some() {
                    counter += 1;
                    tx.prepare_cached(
                        "UPDATE sync_galaxies SET version = ?3, writer = NULL
                         WHERE player_id = ?1 AND entity_id = ?2",
                    )?
                    .execute(params![
                        player_id,
                        m.entity_id,
                        counter as i64
                    ])?;
                }
                MutationResult {
                    mutation_id: m.mutation_id,
                    status: MutationStatus::Rejected,
                    version: None,
                    conflict,
                    reason: Some(reason),
                }
            }
        });
    }
    let new_last = request
        .mutations
        .last()
        .map_or(last, |m| m.mutation_id.max(last));
    tx.prepare_cached("UPDATE clients SET last_mutation_id = ?2 WHERE client_id = ?1")?
        .execute(params![request.client_id, new_last as i64])?;
    let changed = counter != start;
    if changed {
        tx.prepare_cached("UPDATE players SET counter = ?2 WHERE player_id = ?1")?
            .execute(params![player_id, counter as i64])?;
    }
    Ok((
        PushResponse {
            last_mutation_id: new_last,
            results,
        },
        changed.then_some(counter),
    ))
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
    }
}
