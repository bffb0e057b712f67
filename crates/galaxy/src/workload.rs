//! `Galaxy_Create`, as the seed has it: `Utility_Coords` and `Utility_Name`
//! in parallel, then `Galaxy_Create_Impl` writing the row; output
//! "Galaxy created!".

use durable::{ActivityContext, OrchestrationContext, Registry, RetryPolicy, TaskError};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::body::GalaxyBody;
use crate::coords::Coords;
use crate::galaxies::Galaxies;
use crate::names::random_name;
use crate::players::Players;
use crate::table::Galaxy;

/// The orchestration's name.
pub const GALAXY_CREATE: &str = "Galaxy_Create";
/// Activity: random coordinates.
pub const UTILITY_COORDS: &str = "Utility_Coords";
/// Activity: a procedural name.
pub const UTILITY_NAME: &str = "Utility_Name";
/// Activity: writes the galaxy row.
pub const GALAXY_CREATE_IMPL: &str = "Galaxy_Create_Impl";
/// The partition every galaxy goes to until players have realms.
pub const DEFAULT_PARTITION: &str = "galaxies";
/// What `Galaxy_Create` returns.
pub const OUTPUT: &str = "Galaxy created!";

/// Input of `Galaxy_Create_Impl` (the seed's `CreateGalaxyContext`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateGalaxyContext {
    /// Partition key of the row.
    pub partition_key: String,
    /// Row key, made replay-safe by the orchestration so a second run of
    /// the activity finds the row already there.
    pub row_key: String,
    /// Name from `Utility_Name`.
    pub name: String,
    /// Coordinates from `Utility_Coords`.
    pub coords: Coords,
    /// The player who started it in the cloud (the galaxy also goes into
    /// that player's synced galaxies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub player: Option<PlayerRef>,
}

/// A player who started `Galaxy_Create` in the cloud, and from which device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlayerRef {
    /// The player.
    pub player_id: String,
    /// The device that asked (shown as the galaxy's origin).
    pub device_name: String,
}

/// The input of `Galaxy_Create`: empty, or `{"player": PlayerRef}` when a
/// player's device started it in the cloud.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateInput {
    /// Who started it in the cloud.
    #[serde(default)]
    pub player: Option<PlayerRef>,
}

/// A row key that sorts by creation time: UUIDv7 layout built from the
/// orchestration's replay-safe clock and random numbers.
fn row_key(ctx: &OrchestrationContext) -> String {
    let ms = ctx.current_time().timestamp_millis().max(0) as u64;
    let mut random = [0u8; 10];
    random[..8].copy_from_slice(&ctx.random_u64().to_be_bytes());
    random[8..].copy_from_slice(&ctx.random_u64().to_be_bytes()[..2]);
    uuid::Builder::from_unix_timestamp_millis(ms, &random)
        .into_uuid()
        .to_string()
}

/// How `Galaxy_Create_Impl` is retried: a galaxies table that is briefly
/// unavailable (locked, a database restarting) must not fail the galaxy
/// for good. Six attempts, 1 s then doubling, within five minutes; the
/// waits are durable timers, so the history shows each retry.
pub fn impl_retry() -> RetryPolicy {
    RetryPolicy {
        max_interval: std::time::Duration::from_secs(30),
        total_timeout: Some(std::time::Duration::from_secs(300)),
        ..RetryPolicy::new(6, std::time::Duration::from_secs(1))
    }
}

async fn galaxy_create(ctx: OrchestrationContext, input: Value) -> Result<String, TaskError> {
    // Any other input (the seed's callers send none) is ignored.
    let player = serde_json::from_value::<CreateInput>(input)
        .ok()
        .and_then(|i| i.player);
    let coords = ctx.call_activity::<Coords>(UTILITY_COORDS, ());
    let name = ctx.call_activity::<String>(UTILITY_NAME, ());
    let (coords, name) = futures::join!(coords, name);
    let context = CreateGalaxyContext {
        partition_key: DEFAULT_PARTITION.to_string(),
        row_key: row_key(&ctx),
        name: name?,
        coords: coords?,
        player,
    };
    ctx.call_activity_with_retry::<bool>(GALAXY_CREATE_IMPL, context, &impl_retry())
        .await?;
    Ok(OUTPUT.to_string())
}

/// Adds `Galaxy_Create` and its three activities to `registry`, writing to
/// `table` (an `Arc<GalaxyTable>`, or any [`Galaxies`]).
pub fn register(registry: Registry, table: impl Into<Galaxies>) -> Registry {
    register_with_players(registry, table, None)
}

/// Told about every galaxy `Galaxy_Create_Impl` wrote (galaxy-cloud
/// publishes `Galaxy.Created` to its system topic). Called each time the
/// activity runs, so at least once per galaxy: implementations make it
/// idempotent (the galaxy's row key is a natural event id).
pub trait GalaxyObserver: Send + Sync + 'static {
    /// A galaxy was written (or found written by an earlier run).
    fn created(
        &self,
        galaxy: &Galaxy,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send + '_>>;
}

/// What the cloud adds to the workload.
#[derive(Clone, Default)]
pub struct CloudHooks {
    /// A galaxy a player started in the cloud also goes into that
    /// player's synced galaxies.
    pub players: Option<Players>,
    /// Told about every galaxy written.
    pub observer: Option<std::sync::Arc<dyn GalaxyObserver>>,
}

/// [`register`] for the cloud (see [`CloudHooks`]).
pub fn register_with_players(
    registry: Registry,
    table: impl Into<Galaxies>,
    players: Option<Players>,
) -> Registry {
    register_for_cloud(
        registry,
        table,
        CloudHooks {
            players,
            observer: None,
        },
    )
}

/// [`register`] with the cloud's hooks.
pub fn register_for_cloud(
    registry: Registry,
    table: impl Into<Galaxies>,
    hooks: CloudHooks,
) -> Registry {
    let CloudHooks { players, observer } = hooks;
    let table: Galaxies = table.into();
    registry
        .orchestration(GALAXY_CREATE, galaxy_create)
        .activity(UTILITY_COORDS, |_: ActivityContext, (): ()| async {
            Ok::<_, String>(Coords::random(&mut rand::thread_rng()))
        })
        .activity(UTILITY_NAME, |_: ActivityContext, (): ()| async {
            Ok::<_, String>(random_name(&mut rand::thread_rng()))
        })
        .activity(
            GALAXY_CREATE_IMPL,
            move |actx: ActivityContext, c: CreateGalaxyContext| {
                let table = table.clone();
                let players = players.clone();
                let observer = observer.clone();
                async move {
                    let galaxy = Galaxy {
                        partition_key: c.partition_key,
                        row_key: c.row_key,
                        timestamp: chrono::Utc::now(),
                        name: c.name,
                        coords: c.coords,
                        instance_id: actx.instance_id.to_string(),
                        version: 0,
                        origin: String::new(),
                    };
                    let inserted = table
                        .insert(galaxy.clone())
                        .await
                        .map_err(|e| e.to_string())?;
                    if let (Some(players), Some(p)) = (players, c.player) {
                        let mut body = GalaxyBody::of(&galaxy);
                        body.origin = crate::body::cloud_origin(&p.device_name);
                        players
                            .put_cloud_galaxy(&p.player_id, &galaxy.row_key, body)
                            .await
                            .map_err(|e| e.to_string())?;
                    }
                    if let Some(o) = observer {
                        // The row as stored: this one, or an earlier run's.
                        let stored = if inserted {
                            galaxy
                        } else {
                            table
                                .get(&galaxy.partition_key, &galaxy.row_key)
                                .await
                                .map_err(|e| e.to_string())?
                                .unwrap_or(galaxy)
                        };
                        o.created(&stored).await?;
                    }
                    Ok::<_, String>(inserted)
                }
            },
        )
}
