//! The commands the UI invokes. Each parses its arguments, delegates to the
//! engine, the galaxies table or the cloud link, and maps errors to
//! [`CommandError`]. No logic lives here.

use durable::{InstanceId, RuntimeStatus};
use galaxy::monitor;
use galaxy::{Galaxy, InstanceView, GALAXY_CREATE};
use serde::Serialize;
use sync::{Settings, SyncStatus};
use tauri::State;

use crate::error::CommandError;
use crate::state::Desktop;

/// Most instances a listing returns.
const MAX_INSTANCES: usize = 500;
/// Instances in the first snapshot.
const SNAPSHOT_INSTANCES: usize = 100;
/// Most galaxies sent to the map.
const MAX_GALAXIES: usize = 100_000;

/// Everything the UI shows, read in one call when the page loads.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AppSnapshot {
    /// Every galaxy (up to 100,000), oldest first.
    pub galaxies: Vec<Galaxy>,
    /// The newest instances, newest first.
    pub instances: Vec<InstanceView>,
    /// Cloud reachability and changes waiting to sync.
    pub sync: SyncStatus,
    /// The cloud settings.
    pub settings: Settings,
    /// Where the data lives.
    pub data_dir: String,
    /// Problems at start that the player should know about.
    pub warnings: Vec<String>,
    /// The app's process id (benchmarks measure its memory).
    pub pid: u32,
    /// Milliseconds since the app started.
    pub uptime_ms: u64,
}

fn instance_id(raw: &str) -> Result<InstanceId, CommandError> {
    InstanceId::new(raw).map_err(CommandError::from)
}

fn statuses(raw: Option<Vec<String>>) -> Result<Vec<RuntimeStatus>, CommandError> {
    raw.unwrap_or_default()
        .iter()
        .map(|s| {
            RuntimeStatus::parse(s).ok_or_else(|| {
                CommandError::Invalid(format!(
                    "unknown status '{s}': use one of {}",
                    RuntimeStatus::ALL.map(|s| s.as_str()).join(", ")
                ))
            })
        })
        .collect()
}

fn reason(raw: Option<String>, default: &str) -> Option<String> {
    Some(
        raw.filter(|r| !r.trim().is_empty())
            .unwrap_or_else(|| default.to_string()),
    )
}

/// The whole state for a first paint.
#[tauri::command]
pub async fn load_state(desktop: State<'_, Desktop>) -> Result<AppSnapshot, CommandError> {
    let node = desktop.node().await?;
    let instances = monitor::recent_instances(&node.engine, Vec::new(), SNAPSHOT_INSTANCES).await?;
    let galaxies = monitor::all_galaxies(&node.table, MAX_GALAXIES)?;
    let link = desktop.link()?;
    Ok(AppSnapshot {
        galaxies,
        instances,
        sync: link.status(),
        settings: link.settings(),
        data_dir: desktop.paths()?.data_dir.display().to_string(),
        warnings: desktop.warnings(),
        pid: std::process::id(),
        uptime_ms: desktop.uptime().as_millis() as u64,
    })
}

/// Starts `Galaxy_Create`; returns the new instance's id at once. Its
/// progress arrives as `instance-updated` events.
#[tauri::command]
pub async fn create_galaxy(desktop: State<'_, Desktop>) -> Result<String, CommandError> {
    let node = desktop.node().await?;
    let id = node
        .engine
        .start_orchestration(GALAXY_CREATE, None, serde_json::Value::Null)
        .await?;
    Ok(id.to_string())
}

/// The newest instances with any of `statuses` (all when empty).
#[tauri::command]
pub async fn list_instances(
    desktop: State<'_, Desktop>,
    statuses: Option<Vec<String>>,
    limit: Option<usize>,
) -> Result<Vec<InstanceView>, CommandError> {
    let statuses = self::statuses(statuses)?;
    let node = desktop.node().await?;
    let limit = limit.unwrap_or(SNAPSHOT_INSTANCES).clamp(1, MAX_INSTANCES);
    Ok(monitor::recent_instances(&node.engine, statuses, limit).await?)
}

/// One instance with its timeline, input, output and custom status.
#[tauri::command]
pub async fn get_instance(
    desktop: State<'_, Desktop>,
    instance_id: String,
) -> Result<InstanceView, CommandError> {
    let id = self::instance_id(&instance_id)?;
    let node = desktop.node().await?;
    monitor::instance(&node.engine, &id)
        .await?
        .ok_or(CommandError::NotFound(instance_id))
}

/// Terminates a live instance.
#[tauri::command]
pub async fn terminate_instance(
    desktop: State<'_, Desktop>,
    instance_id: String,
    reason: Option<String>,
) -> Result<(), CommandError> {
    let id = self::instance_id(&instance_id)?;
    let node = desktop.node().await?;
    Ok(node
        .engine
        .terminate(&id, self::reason(reason, "terminated by the player"))
        .await?)
}

/// Suspends a live instance.
#[tauri::command]
pub async fn suspend_instance(
    desktop: State<'_, Desktop>,
    instance_id: String,
    reason: Option<String>,
) -> Result<(), CommandError> {
    let id = self::instance_id(&instance_id)?;
    let node = desktop.node().await?;
    Ok(node
        .engine
        .suspend(&id, self::reason(reason, "suspended by the player"))
        .await?)
}

/// Resumes a suspended instance.
#[tauri::command]
pub async fn resume_instance(
    desktop: State<'_, Desktop>,
    instance_id: String,
    reason: Option<String>,
) -> Result<(), CommandError> {
    let id = self::instance_id(&instance_id)?;
    let node = desktop.node().await?;
    Ok(node
        .engine
        .resume(&id, self::reason(reason, "resumed by the player"))
        .await?)
}

/// Deletes a finished instance and its history (its galaxy stays).
#[tauri::command]
pub async fn purge_instance(
    desktop: State<'_, Desktop>,
    instance_id: String,
) -> Result<(), CommandError> {
    let id = self::instance_id(&instance_id)?;
    let node = desktop.node().await?;
    Ok(node.engine.purge(&id).await?)
}

/// Every galaxy, oldest first.
#[tauri::command]
pub async fn list_galaxies(desktop: State<'_, Desktop>) -> Result<Vec<Galaxy>, CommandError> {
    let node = desktop.node().await?;
    Ok(monitor::all_galaxies(&node.table, MAX_GALAXIES)?)
}

/// The latest sync status (it also arrives as `sync-status` events).
#[tauri::command]
pub fn sync_status(desktop: State<'_, Desktop>) -> Result<SyncStatus, CommandError> {
    Ok(desktop.link()?.status())
}

/// Checks the cloud now.
#[tauri::command]
pub async fn check_connection(desktop: State<'_, Desktop>) -> Result<SyncStatus, CommandError> {
    Ok(desktop.link()?.check_now().await)
}

/// The cloud settings.
#[tauri::command]
pub fn get_settings(desktop: State<'_, Desktop>) -> Result<Settings, CommandError> {
    Ok(desktop.link()?.settings())
}

/// Validates and saves the cloud settings, then rechecks the connection.
/// Returns the settings as saved (trimmed).
#[tauri::command]
pub fn save_settings(
    desktop: State<'_, Desktop>,
    settings: Settings,
) -> Result<Settings, CommandError> {
    let saved = desktop.settings_file()?.save(settings)?;
    desktop.link()?.set_settings(saved.clone());
    Ok(saved)
}

/// The page reports its first paint with data; logged on stdout (the
/// `make screenshot` script waits for this line).
#[tauri::command]
pub fn ui_ready(desktop: State<'_, Desktop>, galaxies: usize, instances: usize) {
    println!(
        "galaxy-desktop: ui ready after {} ms ({galaxies} galaxies, {instances} instances)",
        desktop.uptime().as_millis()
    );
}
