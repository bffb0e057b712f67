//! The players store in PostgreSQL, shared by several galaxy-cloud
//! processes (tables in the `galaxy` schema, beside the galaxies table).
//!
//! A push locks its player's row (`SELECT ... FOR UPDATE`) for the whole
//! transaction: two processes pushing for one player take turns, so the
//! player's counter hands out each version once, and versions commit in
//! their order (a pull never sees version N+1 before N). Every committed
//! change is announced with `NOTIFY galaxy_forge_players`; each process
//! listens and pokes its own connected devices.

use std::collections::HashMap;

use deadpool_postgres::Pool;
use futures::StreamExt;
use serde_json::Value;
use sync::protocol::{
    Chain, Change, DeviceCredentials, DeviceInfo, PlayerInfo, PullResponse, PushRequest,
};
use tokio::sync::broadcast;
use tokio_postgres::AsyncMessage;

use super::outbox::{self, OutboxEvent};
use super::plan::{self, ClientState, Current, EntityWrite, PushPlan};
use super::{digest, new_token, now, rfc3339, Device, PlayerChange, PlayersError};
use crate::body::GalaxyBody;

/// The channel of change announcements.
const CHANNEL: &str = "galaxy_forge_players";

fn pg(e: tokio_postgres::Error) -> PlayersError {
    PlayersError::Postgres(match e.as_db_error() {
        Some(d) => format!("{}: {}", d.code().code(), d.message()),
        None => e.to_string(),
    })
}

fn pool_err(e: deadpool_postgres::PoolError) -> PlayersError {
    match e {
        deadpool_postgres::PoolError::Backend(e) => pg(e),
        e => PlayersError::Postgres(format!("connection pool: {e}")),
    }
}

/// The PostgreSQL store: a pool (and, in its own task, the connection that
/// listens for every process's changes).
pub(super) struct PgPlayers {
    pool: Pool,
}

impl PgPlayers {
    /// Connects, creates the tables in `schema` if missing (under an
    /// advisory lock, so processes starting together do not race), and
    /// starts listening: every change any process commits goes to
    /// `changes`.
    pub(super) async fn connect(
        url: &str,
        schema: &str,
        changes: broadcast::Sender<PlayerChange>,
    ) -> Result<Self, PlayersError> {
        let (pool, config) =
            durable::store::postgres::schema_pool(url, schema, 8).map_err(|e| match e {
                durable::store::postgres::SchemaPoolError::Schema(_) => {
                    PlayersError::Invalid(e.to_string())
                }
                e => PlayersError::Postgres(e.to_string()),
            })?;
        let mut client = pool.get().await.map_err(pool_err)?;
        let tx = client.transaction().await.map_err(pg)?;
        tx.execute(
            "SELECT pg_advisory_xact_lock(hashtext('galaxy-forge players ' || $1::text))",
            &[&schema],
        )
        .await
        .map_err(pg)?;
        let ddl = format!(
            "CREATE SCHEMA IF NOT EXISTS \"{schema}\";
             CREATE TABLE IF NOT EXISTS players (
                 player_id text PRIMARY KEY,
                 counter int8 NOT NULL,
                 tombstone_floor int8 NOT NULL,
                 created_at text NOT NULL
             );
             CREATE TABLE IF NOT EXISTS devices (
                 device_id text PRIMARY KEY,
                 player_id text NOT NULL REFERENCES players (player_id),
                 name text NOT NULL,
                 token_hash text NOT NULL,
                 created_at text NOT NULL,
                 revoked bool NOT NULL DEFAULT false
             );
             CREATE INDEX IF NOT EXISTS devices_by_player ON devices (player_id);
             CREATE TABLE IF NOT EXISTS link_codes (
                 code_hash text PRIMARY KEY,
                 player_id text NOT NULL,
                 expires_at int8 NOT NULL
             );
             CREATE TABLE IF NOT EXISTS sync_clients (
                 client_id text PRIMARY KEY,
                 player_id text NOT NULL,
                 last_mutation_id int8 NOT NULL
             );
             ALTER TABLE sync_clients ADD COLUMN IF NOT EXISTS recent text;
             CREATE TABLE IF NOT EXISTS sync_galaxies (
                 player_id text NOT NULL,
                 entity_id text NOT NULL,
                 version int8 NOT NULL,
                 deleted bool NOT NULL,
                 body text,
                 updated_at int8 NOT NULL,
                 writer text,
                 PRIMARY KEY (player_id, entity_id)
             );
             CREATE INDEX IF NOT EXISTS sync_galaxies_by_version ON sync_galaxies (player_id, version);
             CREATE TABLE IF NOT EXISTS galaxy_outbox (
                 seq int8 GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                 event_id text NOT NULL,
                 event_type text NOT NULL,
                 subject text NOT NULL,
                 data text NOT NULL,
                 at_ms int8 NOT NULL
             );"
        );
        durable::store::postgres::apply_ddl_once(&tx, schema, "players", &ddl)
            .await
            .map_err(pg)?;
        tx.commit().await.map_err(pg)?;
        drop(client);

        let (ready_tx, ready) = tokio::sync::oneshot::channel();
        tokio::spawn(listen(config, changes, ready_tx));
        ready
            .await
            .map_err(|_| PlayersError::Postgres("the change listener did not start".into()))??;
        Ok(Self { pool })
    }

    /// A pooled connection (the schema is on its search path).
    async fn client(&self) -> Result<deadpool_postgres::Object, PlayersError> {
        self.pool.get().await.map_err(pool_err)
    }

    async fn add_device(
        tx: &tokio_postgres::Transaction<'_>,
        player_id: &str,
        name: &str,
    ) -> Result<DeviceCredentials, PlayersError> {
        let device_id = uuid::Uuid::now_v7().to_string();
        let token = new_token(&device_id);
        tx.execute(
            "INSERT INTO devices (device_id, player_id, name, token_hash, created_at) VALUES ($1, $2, $3, $4, $5)",
            &[&device_id, &player_id, &name, &digest(&token), &rfc3339(now())],
        )
        .await
        .map_err(pg)?;
        Ok(DeviceCredentials {
            player_id: player_id.to_string(),
            device_id,
            token,
        })
    }

    pub(super) async fn register(&self, name: &str) -> Result<DeviceCredentials, PlayersError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg)?;
        let player_id = uuid::Uuid::now_v7().to_string();
        tx.execute(
            "INSERT INTO players (player_id, counter, tombstone_floor, created_at) VALUES ($1, 0, 0, $2)",
            &[&player_id, &rfc3339(now())],
        )
        .await
        .map_err(pg)?;
        let creds = Self::add_device(&tx, &player_id, name).await?;
        tx.commit().await.map_err(pg)?;
        Ok(creds)
    }

    pub(super) async fn device_row(
        &self,
        device_id: &str,
    ) -> Result<Option<(String, String, String, bool)>, PlayersError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT player_id, name, token_hash, revoked FROM devices WHERE device_id = $1",
                &[&device_id],
            )
            .await
            .map_err(pg)?;
        Ok(row.map(|r| (r.get(0), r.get(1), r.get(2), r.get(3))))
    }

    pub(super) async fn add_link_code(
        &self,
        player_id: &str,
        code_hash: &str,
        expires_at: i64,
    ) -> Result<(), PlayersError> {
        let client = self.client().await?;
        client
            .execute(
                "DELETE FROM link_codes WHERE expires_at < $1",
                &[&now().timestamp()],
            )
            .await
            .map_err(pg)?;
        client
            .execute(
                "INSERT INTO link_codes (code_hash, player_id, expires_at) VALUES ($1, $2, $3)",
                &[&code_hash, &player_id, &expires_at],
            )
            .await
            .map_err(pg)?;
        Ok(())
    }

    pub(super) async fn join(
        &self,
        code_hash: &str,
        name: &str,
    ) -> Result<DeviceCredentials, PlayersError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg)?;
        let row = tx
            .query_opt(
                "DELETE FROM link_codes WHERE code_hash = $1 AND expires_at >= $2 RETURNING player_id",
                &[&code_hash, &now().timestamp()],
            )
            .await
            .map_err(pg)?;
        let Some(row) = row else {
            return Err(PlayersError::BadLinkCode);
        };
        let player_id: String = row.get(0);
        let creds = Self::add_device(&tx, &player_id, name).await?;
        tx.commit().await.map_err(pg)?;
        Ok(creds)
    }

    pub(super) async fn me(&self, device: &Device) -> Result<PlayerInfo, PlayersError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT device_id, name, created_at, revoked FROM devices WHERE player_id = $1 ORDER BY created_at, device_id",
                &[&device.player_id],
            )
            .await
            .map_err(pg)?;
        Ok(PlayerInfo {
            player_id: device.player_id.clone(),
            device_id: device.device_id.clone(),
            devices: rows
                .iter()
                .map(|r| DeviceInfo {
                    device_id: r.get(0),
                    name: r.get(1),
                    created_at: r.get(2),
                    revoked: r.get(3),
                })
                .collect(),
        })
    }

    pub(super) async fn revoke(
        &self,
        player_id: &str,
        device_id: &str,
    ) -> Result<bool, PlayersError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg)?;
        let revoked = tx
            .execute(
                "UPDATE devices SET revoked = true WHERE device_id = $1 AND player_id = $2",
                &[&device_id, &player_id],
            )
            .await
            .map_err(pg)?
            > 0;
        if revoked {
            // Every process ends the device's live streams.
            notify(&tx, &super::revoked_key(device_id), 0).await?;
        }
        tx.commit().await.map_err(pg)?;
        Ok(revoked)
    }

    async fn client_state(
        tx: &tokio_postgres::Transaction<'_>,
        client_id: &str,
        player_id: &str,
    ) -> Result<(ClientState, Option<plan::Recent>), PlayersError> {
        let row = tx
            .query_opt(
                "SELECT player_id, last_mutation_id, recent FROM sync_clients WHERE client_id = $1 FOR UPDATE",
                &[&client_id],
            )
            .await
            .map_err(pg)?;
        Ok(match row {
            Some(r) if r.get::<_, String>(0) == player_id => (
                ClientState::Known(r.get::<_, i64>(1) as u64),
                r.get::<_, Option<&str>>(2).and_then(plan::Recent::parse),
            ),
            Some(_) => (ClientState::Foreign, None),
            None => (ClientState::Unknown, None),
        })
    }

    pub(super) async fn push(
        &self,
        device: &Device,
        request: &PushRequest,
    ) -> Result<PushPlan, PlayersError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg)?;
        let player_id = device.player_id.as_str();
        // The player's row first: pushes for one player take turns here.
        let (counter, floor): (i64, i64) = tx
            .query_opt(
                "SELECT counter, tombstone_floor FROM players WHERE player_id = $1 FOR UPDATE",
                &[&player_id],
            )
            .await
            .map_err(pg)?
            .map_or((0, 0), |r| (r.get(0), r.get(1)));
        let (client_state, recent) = Self::client_state(&tx, &request.client_id, player_id).await?;
        plan::check_sequence(request, client_state)?;
        plan::check_resends(request, client_state, recent.as_ref())?;
        // Only well-formed ids are looked up (a NUL in one would fail the
        // whole statement); the plan rejects the others one by one.
        let ids: Vec<&str> = request
            .mutations
            .iter()
            .map(|m| m.entity_id.as_str())
            .filter(|id| crate::body::check_entity_id(id).is_ok())
            .collect();
        let rows = tx
            .query(
                "SELECT entity_id, version, deleted, (body::jsonb)->>'origin', writer FROM sync_galaxies
                 WHERE player_id = $1 AND entity_id = ANY($2)",
                &[&player_id, &ids],
            )
            .await
            .map_err(pg)?;
        let entities: HashMap<String, Current> = rows
            .iter()
            .map(|r| {
                (
                    r.get(0),
                    Current {
                        version: r.get::<_, i64>(1) as u64,
                        deleted: r.get(2),
                        origin: r.get::<_, Option<String>>(3).unwrap_or_default(),
                        writer: r.get(4),
                    },
                )
            })
            .collect();
        let plan = plan::plan_push(
            device,
            request,
            client_state,
            counter as u64,
            floor as u64,
            entities,
        )?;
        let now_ms = now().timestamp_millis();
        for w in &plan.writes {
            match w {
                EntityWrite::Put { entity_id, version, body, .. } => tx
                    .execute(
                        "INSERT INTO sync_galaxies (player_id, entity_id, version, deleted, body, updated_at, writer)
                         VALUES ($1, $2, $3, false, $4, $5, $6)
                         ON CONFLICT (player_id, entity_id) DO UPDATE SET
                             version = excluded.version, deleted = false, body = excluded.body,
                             updated_at = excluded.updated_at, writer = excluded.writer",
                        &[&player_id, entity_id, &(*version as i64), body, &now_ms, &request.client_id],
                    )
                    .await
                    .map_err(pg)?,
                EntityWrite::Delete { entity_id, version } => tx
                    .execute(
                        "UPDATE sync_galaxies SET version = $3, deleted = true, body = NULL, updated_at = $4, writer = $5
                         WHERE player_id = $1 AND entity_id = $2",
                        &[&player_id, entity_id, &(*version as i64), &now_ms, &request.client_id],
                    )
                    .await
                    .map_err(pg)?,
                // A touched tombstone is kept from now on, as a fresh one (its
                // purge would raise the floor past what devices have pulled).
                EntityWrite::Touch { entity_id, version } => tx
                    .execute(
                        "INSERT INTO sync_galaxies (player_id, entity_id, version, deleted, body, updated_at, writer)
                         VALUES ($1, $2, $3, true, NULL, $4, NULL)
                         ON CONFLICT (player_id, entity_id) DO UPDATE SET
                             version = excluded.version, updated_at = excluded.updated_at, writer = NULL",
                        &[&player_id, entity_id, &(*version as i64), &now_ms],
                    )
                    .await
                    .map_err(pg)?,
            };
        }
        let last = plan.last as i64;
        if plan.new_client {
            // Another player's first push under the same client id may
            // have committed since this one looked (pushes lock their own
            // player only): that client is foreign here, as if seen first.
            let inserted = tx
                .execute(
                    "INSERT INTO sync_clients (client_id, player_id, last_mutation_id, recent) \
                     VALUES ($1, $2, $3, $4) ON CONFLICT (client_id) DO NOTHING",
                    &[&request.client_id, &player_id, &last, &plan.recent],
                )
                .await
                .map_err(pg)?;
            if inserted == 0 {
                return Err(PlayersError::ClientStateNotFound(request.client_id.clone()));
            }
        } else {
            tx.execute(
                "UPDATE sync_clients SET last_mutation_id = $2, recent = COALESCE($3, recent) \
                 WHERE client_id = $1",
                &[&request.client_id, &last, &plan.recent],
            )
            .await
            .map_err(pg)?;
        }
        if plan.changed {
            tx.execute(
                "UPDATE players SET counter = $2 WHERE player_id = $1",
                &[&player_id, &(plan.counter as i64)],
            )
            .await
            .map_err(pg)?;
            notify(&tx, player_id, plan.counter).await?;
        }
        insert_events(&tx, &outbox::of_writes(player_id, &plan.writes)).await?;
        tx.commit().await.map_err(pg)?;
        Ok(plan)
    }

    pub(super) async fn outbox(&self, limit: usize) -> Result<Vec<OutboxEvent>, PlayersError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT seq, event_id, event_type, subject, data, at_ms FROM galaxy_outbox ORDER BY seq LIMIT $1",
                &[&(limit as i64)],
            )
            .await
            .map_err(pg)?;
        Ok(rows
            .iter()
            .map(|r| OutboxEvent {
                seq: r.get(0),
                id: r.get(1),
                event_type: r.get(2),
                subject: r.get(3),
                data: serde_json::from_str(r.get::<_, &str>(4)).unwrap_or_default(),
                at_ms: r.get(5),
            })
            .collect())
    }

    pub(super) async fn ack_outbox(&self, seqs: &[i64]) -> Result<(), PlayersError> {
        let client = self.client().await?;
        client
            .execute("DELETE FROM galaxy_outbox WHERE seq = ANY($1)", &[&seqs])
            .await
            .map_err(pg)?;
        Ok(())
    }

    pub(super) async fn pull(
        &self,
        player_id: &str,
        client_id: &str,
        cursor: u64,
        chain: Chain,
        limit: usize,
    ) -> Result<PullResponse, PlayersError> {
        let mut client = self.client().await?;
        // One snapshot for the counter and the rows.
        let tx = durable::store::postgres::read_snapshot(&mut client)
            .await
            .map_err(pg)?;
        let (latest, floor) = tx
            .query_opt(
                "SELECT counter, tombstone_floor FROM players WHERE player_id = $1",
                &[&player_id],
            )
            .await
            .map_err(pg)?
            .map_or((0, 0), |r| {
                (r.get::<_, i64>(0) as u64, r.get::<_, i64>(1) as u64)
            });
        let last_mutation_id = tx
            .query_opt(
                "SELECT player_id, last_mutation_id FROM sync_clients WHERE client_id = $1",
                &[&client_id],
            )
            .await
            .map_err(pg)?
            .filter(|r| r.get::<_, String>(0) == player_id)
            .map_or(0, |r| r.get::<_, i64>(1) as u64);
        if plan::needs_reset(cursor, latest, floor, chain) {
            return Ok(PullResponse {
                reset: true,
                last_mutation_id,
                latest,
                ..PullResponse::default()
            });
        }
        let rows = tx
            .query(
                "SELECT entity_id, version, deleted, body, writer IS NOT DISTINCT FROM $4 FROM sync_galaxies
                 WHERE player_id = $1 AND version > $2 ORDER BY version LIMIT $3",
                &[&player_id, &(cursor as i64), &(limit as i64 + 1), &client_id],
            )
            .await
            .map_err(pg)?;
        let rows = rows
            .iter()
            .map(|r| {
                let body: Option<String> = r.get(3);
                (
                    r.get::<_, bool>(4),
                    Change {
                        entity_id: r.get(0),
                        version: r.get::<_, i64>(1) as u64,
                        deleted: r.get(2),
                        body: body
                            .and_then(|b| serde_json::from_str(&b).ok())
                            .unwrap_or(Value::Null),
                    },
                )
            })
            .collect();
        Ok(plan::pull_page(
            rows,
            cursor,
            latest,
            limit,
            last_mutation_id,
        ))
    }

    pub(super) async fn purge_tombstones(&self, horizon_ms: i64) -> Result<usize, PlayersError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg)?;
        tx.execute(
            "UPDATE players p SET tombstone_floor = greatest(p.tombstone_floor, g.top)
             FROM (SELECT player_id, max(version) AS top FROM sync_galaxies
                   WHERE deleted AND updated_at < $1 GROUP BY player_id) g
             WHERE p.player_id = g.player_id",
            &[&horizon_ms],
        )
        .await
        .map_err(pg)?;
        // Only tombstones at or below the floor just raised: this statement
        // reads a later snapshot than the one above, and a deletion
        // committed in between (newer than the floor) must wait for the
        // next purge, or a device behind it would never be told to reset.
        let n = tx
            .execute(
                "DELETE FROM sync_galaxies s USING players p
                 WHERE s.player_id = p.player_id AND s.deleted AND s.updated_at < $1
                   AND s.version <= p.tombstone_floor",
                &[&horizon_ms],
            )
            .await
            .map_err(pg)?;
        tx.commit().await.map_err(pg)?;
        Ok(n as usize)
    }

    pub(super) async fn put_cloud_galaxy(
        &self,
        player_id: &str,
        entity_id: &str,
        body: &GalaxyBody,
    ) -> Result<Option<u64>, PlayersError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg)?;
        let Some(row) = tx
            .query_opt(
                "SELECT counter FROM players WHERE player_id = $1 FOR UPDATE",
                &[&player_id],
            )
            .await
            .map_err(pg)?
        else {
            return Ok(None);
        };
        let version = row.get::<_, i64>(0) + 1;
        let inserted = tx
            .execute(
                "INSERT INTO sync_galaxies (player_id, entity_id, version, deleted, body, updated_at, writer)
                 VALUES ($1, $2, $3, false, $4, $5, NULL) ON CONFLICT DO NOTHING",
                &[&player_id, &entity_id, &version, &body.to_value().to_string(), &now().timestamp_millis()],
            )
            .await
            .map_err(pg)?;
        if inserted == 0 {
            return Ok(None);
        }
        tx.execute(
            "UPDATE players SET counter = $2 WHERE player_id = $1",
            &[&player_id, &version],
        )
        .await
        .map_err(pg)?;
        let event = outbox::created(player_id, entity_id, version as u64, &body.to_value());
        insert_events(&tx, &[event]).await?;
        notify(&tx, player_id, version as u64).await?;
        tx.commit().await.map_err(pg)?;
        Ok(Some(version as u64))
    }

    pub(super) async fn galaxy_count(&self, player_id: &str) -> Result<u64, PlayersError> {
        let client = self.client().await?;
        let row = client
            .query_one(
                "SELECT count(*) FROM sync_galaxies WHERE player_id = $1 AND NOT deleted",
                &[&player_id],
            )
            .await
            .map_err(pg)?;
        Ok(row.get::<_, i64>(0) as u64)
    }
}

/// Listens for changes on a connection of its own, forever: every
/// notification becomes a [`PlayerChange`]. A lost connection is
/// reconnected with a growing pause; after a reconnect a wildcard change
/// (player `*`) pokes every device, since notifications in between were
/// missed. `ready` learns how the first `LISTEN` went.
async fn listen(
    target: durable::store::postgres::PgTarget,
    changes: broadcast::Sender<PlayerChange>,
    ready: tokio::sync::oneshot::Sender<Result<(), PlayersError>>,
) {
    let mut ready = Some(ready);
    let mut pause = std::time::Duration::from_millis(200);
    loop {
        let started = async {
            let (client, mut connection) = target.connect().await.map_err(pg)?;
            let (msg_tx, msg_rx) = tokio::sync::mpsc::unbounded_channel();
            let pump = tokio::spawn(async move {
                let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
                while let Some(m) = messages.next().await {
                    if msg_tx.send(m).is_err() {
                        return;
                    }
                }
            });
            client
                .batch_execute(&format!("LISTEN {CHANNEL}"))
                .await
                .map_err(pg)?;
            Ok::<_, PlayersError>((client, msg_rx, pump))
        }
        .await;
        let (client, mut messages, pump) = match started {
            Ok(s) => s,
            Err(e) => {
                if let Some(r) = ready.take() {
                    let _ = r.send(Err(e));
                    return;
                }
                tracing::warn!("players: reconnecting the change listener failed ({e})");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(std::time::Duration::from_secs(30));
                continue;
            }
        };
        match ready.take() {
            Some(r) => {
                let _ = r.send(Ok(()));
            }
            None => {
                let _ = changes.send(PlayerChange {
                    player_id: "*".into(),
                    version: 0,
                });
            }
        }
        pause = std::time::Duration::from_millis(200);
        while let Some(message) = messages.recv().await {
            match message {
                Ok(AsyncMessage::Notification(n)) => {
                    if let Some((player_id, version)) = n.payload().rsplit_once(' ') {
                        if let Ok(version) = version.parse() {
                            let _ = changes.send(PlayerChange {
                                player_id: player_id.to_string(),
                                version,
                            });
                        }
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(
                        "players: the change listener's connection failed ({e}); reconnecting"
                    );
                    break;
                }
            }
        }
        drop(client);
        pump.abort();
    }
}

/// Announces a change; PostgreSQL delivers it when the transaction commits.
/// Inserts the outbox rows of a change in its transaction.
async fn insert_events(
    tx: &tokio_postgres::Transaction<'_>,
    events: &[outbox::NewEvent],
) -> Result<(), PlayersError> {
    let at = now().timestamp_millis();
    for e in events {
        tx.execute(
            "INSERT INTO galaxy_outbox (event_id, event_type, subject, data, at_ms) VALUES ($1, $2, $3, $4, $5)",
            &[&e.id, &e.event_type, &e.subject, &e.data, &at],
        )
        .await
        .map_err(pg)?;
    }
    Ok(())
}

async fn notify(
    tx: &tokio_postgres::Transaction<'_>,
    player_id: &str,
    version: u64,
) -> Result<(), PlayersError> {
    tx.execute(
        "SELECT pg_notify($1, $2)",
        &[&CHANNEL, &format!("{player_id} {version}")],
    )
    .await
    .map_err(pg)?;
    Ok(())
}
