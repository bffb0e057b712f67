//! The players store in one SQLite file (`players.db`): each call is one
//! short transaction on the caller's connection (the caller serializes
//! calls and runs them on the blocking pool).

use std::collections::HashMap;

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use serde_json::Value;
use sync::protocol::{
    Chain, Change, DeviceCredentials, DeviceInfo, PlayerInfo, PullResponse, PushRequest,
};

use super::outbox::{self, OutboxEvent};
use super::plan::{self, ClientState, Current, EntityWrite, PushPlan};
use super::{digest, new_token, now, rfc3339, Device, PlayersError};
use crate::body::GalaxyBody;

/// Opens (creating) the database and its tables.
pub(super) fn open(path: &std::path::Path) -> Result<Connection, PlayersError> {
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
             ON sync_galaxies (player_id, version);
         CREATE TABLE IF NOT EXISTS galaxy_outbox (
             seq INTEGER PRIMARY KEY AUTOINCREMENT,
             event_id TEXT NOT NULL,
             event_type TEXT NOT NULL,
             subject TEXT NOT NULL,
             data TEXT NOT NULL,
             at_ms INTEGER NOT NULL
         );",
    )?;
    // Added later: each client's last push ([`plan::Recent`]).
    let has_recent: i64 = conn.query_row(
        "SELECT count(*) FROM pragma_table_info('clients') WHERE name = 'recent'",
        [],
        |r| r.get(0),
    )?;
    if has_recent == 0 {
        conn.execute_batch("ALTER TABLE clients ADD COLUMN recent TEXT")?;
    }
    Ok(conn)
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

pub(super) fn register(
    conn: &mut Connection,
    name: &str,
) -> Result<DeviceCredentials, PlayersError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let player_id = uuid::Uuid::now_v7().to_string();
    tx.execute(
        "INSERT INTO players (player_id, counter, tombstone_floor, created_at) VALUES (?1, 0, 0, ?2)",
        params![player_id, rfc3339(now())],
    )?;
    let creds = add_device(&tx, &player_id, name)?;
    tx.commit()?;
    Ok(creds)
}

/// The device row of an id: (player, name, token hash, revoked).
pub(super) fn device_row(
    conn: &mut Connection,
    device_id: &str,
) -> Result<Option<(String, String, String, bool)>, PlayersError> {
    Ok(conn
        .prepare_cached(
            "SELECT player_id, name, token_hash, revoked FROM devices WHERE device_id = ?1",
        )?
        .query_row([device_id], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })
        .optional()?)
}

pub(super) fn add_link_code(
    conn: &mut Connection,
    player_id: &str,
    code_hash: &str,
    expires_at: i64,
) -> Result<(), PlayersError> {
    conn.execute(
        "DELETE FROM link_codes WHERE expires_at < ?1",
        [now().timestamp()],
    )?;
    conn.execute(
        "INSERT INTO link_codes (code_hash, player_id, expires_at) VALUES (?1, ?2, ?3)",
        params![code_hash, player_id, expires_at],
    )?;
    Ok(())
}

pub(super) fn join(
    conn: &mut Connection,
    code_hash: &str,
    name: &str,
) -> Result<DeviceCredentials, PlayersError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let player: Option<String> = tx
        .query_row(
            "DELETE FROM link_codes WHERE code_hash = ?1 AND expires_at >= ?2 RETURNING player_id",
            params![code_hash, now().timestamp()],
            |r| r.get(0),
        )
        .optional()?;
    let Some(player_id) = player else {
        return Err(PlayersError::BadLinkCode);
    };
    let creds = add_device(&tx, &player_id, name)?;
    tx.commit()?;
    Ok(creds)
}

pub(super) fn me(conn: &mut Connection, device: &Device) -> Result<PlayerInfo, PlayersError> {
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
        player_id: device.player_id.clone(),
        device_id: device.device_id.clone(),
        devices,
    })
}

pub(super) fn revoke(
    conn: &mut Connection,
    player_id: &str,
    device_id: &str,
) -> Result<bool, PlayersError> {
    Ok(conn.execute(
        "UPDATE devices SET revoked = 1 WHERE device_id = ?1 AND player_id = ?2",
        params![device_id, player_id],
    )? > 0)
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

/// The client's state and the record of its last push.
fn client_state(
    conn: &Connection,
    client_id: &str,
    player_id: &str,
) -> Result<(ClientState, Option<plan::Recent>), PlayersError> {
    let row: Option<(String, i64, Option<String>)> = conn
        .prepare_cached(
            "SELECT player_id, last_mutation_id, recent FROM clients WHERE client_id = ?1",
        )?
        .query_row([client_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .optional()?;
    Ok(match row {
        Some((p, last, recent)) if p == player_id => (
            ClientState::Known(last as u64),
            recent.as_deref().and_then(plan::Recent::parse),
        ),
        Some(_) => (ClientState::Foreign, None),
        None => (ClientState::Unknown, None),
    })
}

fn current(
    conn: &Connection,
    player_id: &str,
    entity_id: &str,
) -> Result<Option<Current>, PlayersError> {
    Ok(conn
        .prepare_cached(
            "SELECT version, deleted, json_extract(body, '$.origin'), writer FROM sync_galaxies
             WHERE player_id = ?1 AND entity_id = ?2",
        )?
        .query_row(params![player_id, entity_id], |r| {
            Ok(Current {
                version: r.get::<_, i64>(0)? as u64,
                deleted: r.get(1)?,
                origin: r.get::<_, Option<String>>(2)?.unwrap_or_default(),
                writer: r.get(3)?,
            })
        })
        .optional()?)
}

pub(super) fn push(
    conn: &mut Connection,
    device: &Device,
    request: &PushRequest,
) -> Result<PushPlan, PlayersError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let player_id = device.player_id.as_str();
    let (client, recent) = client_state(&tx, &request.client_id, player_id)?;
    // Refused pushes read nothing more.
    plan::check_sequence(request, client)?;
    plan::check_resends(request, client, recent.as_ref())?;
    let (counter, floor) = player_versions(&tx, player_id)?;
    let mut entities = HashMap::new();
    for m in &request.mutations {
        if !entities.contains_key(&m.entity_id) {
            if let Some(c) = current(&tx, player_id, &m.entity_id)? {
                entities.insert(m.entity_id.clone(), c);
            }
        }
    }
    let plan = plan::plan_push(device, request, client, counter, floor, entities)?;
    let now_ms = now().timestamp_millis();
    for w in &plan.writes {
        match w {
            EntityWrite::Put { entity_id, version, body, .. } => tx
                .prepare_cached(
                    "INSERT INTO sync_galaxies (player_id, entity_id, version, deleted, body, updated_at, writer)
                     VALUES (?1, ?2, ?3, 0, ?4, ?5, ?6)
                     ON CONFLICT (player_id, entity_id) DO UPDATE SET
                         version = excluded.version, deleted = 0, body = excluded.body,
                         updated_at = excluded.updated_at, writer = excluded.writer",
                )?
                .execute(params![player_id, entity_id, *version as i64, body, now_ms, request.client_id])?,
            EntityWrite::Delete { entity_id, version } => tx
                .prepare_cached(
                    "UPDATE sync_galaxies SET version = ?3, deleted = 1, body = NULL, updated_at = ?4, writer = ?5
                     WHERE player_id = ?1 AND entity_id = ?2",
                )?
                .execute(params![player_id, entity_id, *version as i64, now_ms, request.client_id])?,
            // A touched tombstone is kept from now on, as a fresh one (its
            // purge would raise the floor past what devices have pulled).
            EntityWrite::Touch { entity_id, version } => tx
                .prepare_cached(
                    "INSERT INTO sync_galaxies (player_id, entity_id, version, deleted, body, updated_at, writer)
                     VALUES (?1, ?2, ?3, 1, NULL, ?4, NULL)
                     ON CONFLICT (player_id, entity_id) DO UPDATE SET
                         version = excluded.version, updated_at = excluded.updated_at, writer = NULL",
                )?
                .execute(params![player_id, entity_id, *version as i64, now_ms])?,
        };
    }
    if plan.new_client {
        tx.execute(
            "INSERT INTO clients (client_id, player_id, last_mutation_id, recent) VALUES (?1, ?2, ?3, ?4)",
            params![request.client_id, player_id, plan.last as i64, plan.recent],
        )?;
    } else {
        tx.prepare_cached(
            "UPDATE clients SET last_mutation_id = ?2, recent = COALESCE(?3, recent) WHERE client_id = ?1",
        )?
        .execute(params![request.client_id, plan.last as i64, plan.recent])?;
    }
    if plan.changed {
        tx.prepare_cached("UPDATE players SET counter = ?2 WHERE player_id = ?1")?
            .execute(params![player_id, plan.counter as i64])?;
    }
    insert_events(&tx, &outbox::of_writes(player_id, &plan.writes), now_ms)?;
    tx.commit()?;
    Ok(plan)
}

pub(super) fn pull(
    conn: &mut Connection,
    player_id: &str,
    client_id: &str,
    cursor: u64,
    chain: Chain,
    limit: usize,
) -> Result<PullResponse, PlayersError> {
    let tx = conn.transaction()?;
    let (latest, floor) = player_versions(&tx, player_id)?;
    let last_mutation_id = match client_state(&tx, client_id, player_id)?.0 {
        ClientState::Known(last) => last,
        _ => 0,
    };
    if plan::needs_reset(cursor, latest, floor, chain) {
        return Ok(PullResponse {
            reset: true,
            last_mutation_id,
            latest,
            ..PullResponse::default()
        });
    }
    let rows = tx
        .prepare_cached(
            "SELECT entity_id, version, deleted, body, writer IS ?4 FROM sync_galaxies
             WHERE player_id = ?1 AND version > ?2 ORDER BY version LIMIT ?3",
        )?
        .query_map(
            params![player_id, cursor as i64, limit as i64 + 1, client_id],
            |r| {
                let body: Option<String> = r.get(3)?;
                Ok((
                    r.get::<_, bool>(4)?,
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
    Ok(plan::pull_page(
        rows,
        cursor,
        latest,
        limit,
        last_mutation_id,
    ))
}

pub(super) fn purge_tombstones(
    conn: &mut Connection,
    horizon_ms: i64,
) -> Result<usize, PlayersError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute(
        "UPDATE players SET tombstone_floor = max(tombstone_floor, (
             SELECT max(version) FROM sync_galaxies g
             WHERE g.player_id = players.player_id AND deleted = 1 AND updated_at < ?1))
         WHERE player_id IN (SELECT player_id FROM sync_galaxies WHERE deleted = 1 AND updated_at < ?1)",
        [horizon_ms],
    )?;
    let n = tx.execute(
        "DELETE FROM sync_galaxies WHERE deleted = 1 AND updated_at < ?1",
        [horizon_ms],
    )?;
    tx.commit()?;
    Ok(n)
}

pub(super) fn put_cloud_galaxy(
    conn: &mut Connection,
    player_id: &str,
    entity_id: &str,
    body: &GalaxyBody,
) -> Result<Option<u64>, PlayersError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let known = tx
        .query_row(
            "SELECT counter FROM players WHERE player_id = ?1",
            [player_id],
            |r| r.get::<_, i64>(0),
        )
        .optional()?;
    let Some(counter) = known else {
        return Ok(None);
    };
    if current(&tx, player_id, entity_id)?.is_some() {
        return Ok(None);
    }
    let version = counter as u64 + 1;
    tx.execute(
        "INSERT INTO sync_galaxies (player_id, entity_id, version, deleted, body, updated_at, writer)
         VALUES (?1, ?2, ?3, 0, ?4, ?5, NULL)",
        params![player_id, entity_id, version as i64, body.to_value().to_string(), now().timestamp_millis()],
    )?;
    tx.execute(
        "UPDATE players SET counter = ?2 WHERE player_id = ?1",
        params![player_id, version as i64],
    )?;
    let event = outbox::created(player_id, entity_id, version, &body.to_value());
    insert_events(&tx, &[event], now().timestamp_millis())?;
    tx.commit()?;
    Ok(Some(version))
}

fn insert_events(
    tx: &Connection,
    events: &[outbox::NewEvent],
    now_ms: i64,
) -> Result<(), PlayersError> {
    let mut ins = tx.prepare_cached(
        "INSERT INTO galaxy_outbox (event_id, event_type, subject, data, at_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    for e in events {
        ins.execute(params![e.id, e.event_type, e.subject, e.data, now_ms])?;
    }
    Ok(())
}

pub(super) fn outbox(
    conn: &mut Connection,
    limit: usize,
) -> Result<Vec<OutboxEvent>, PlayersError> {
    let mut stmt = conn.prepare_cached(
        "SELECT seq, event_id, event_type, subject, data, at_ms FROM galaxy_outbox ORDER BY seq LIMIT ?1",
    )?;
    let rows = stmt.query_map([limit as i64], |r| {
        Ok(OutboxEvent {
            seq: r.get(0)?,
            id: r.get(1)?,
            event_type: r.get(2)?,
            subject: r.get(3)?,
            data: serde_json::from_str(&r.get::<_, String>(4)?).unwrap_or_default(),
            at_ms: r.get(5)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub(super) fn ack_outbox(conn: &mut Connection, seqs: &[i64]) -> Result<(), PlayersError> {
    let tx = conn.transaction()?;
    {
        let mut del = tx.prepare_cached("DELETE FROM galaxy_outbox WHERE seq = ?1")?;
        for seq in seqs {
            del.execute([seq])?;
        }
    }
    tx.commit()?;
    Ok(())
}

pub(super) fn galaxy_count(conn: &mut Connection, player_id: &str) -> Result<u64, PlayersError> {
    Ok(conn.query_row(
        "SELECT count(*) FROM sync_galaxies WHERE player_id = ?1 AND deleted = 0",
        [player_id],
        |r| r.get::<_, i64>(0),
    )? as u64)
}
