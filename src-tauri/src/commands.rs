//! The commands the UI invokes. Each parses its arguments, delegates to the
//! engine, the galaxies table, the player's device (account, sync, edits)
//! or the cloud link, and maps errors to [`CommandError`]. No logic lives
//! here.

use durable::{InstanceId, RuntimeStatus};
use galaxy::monitor;
use galaxy::{Galaxy, InstanceView, GALAXY_CREATE};
use serde::{Deserialize, Serialize};
use sync::{Settings, SyncStatus, SyncerStatus};
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
    /// Cloud reachability.
    pub sync: SyncStatus,
    /// The sync loop: phase, pending changes, last sync, notices.
    pub sync_loop: SyncerStatus,
    /// The cloud settings (without the token).
    pub settings: SettingsView,
    /// Where the data lives.
    pub data_dir: String,
    /// Problems at start that the player should know about.
    pub warnings: Vec<String>,
    /// The app's process id (benchmarks measure its memory).
    pub pid: u32,
    /// Milliseconds since the app started.
    pub uptime_ms: u64,
}

/// The settings as the UI sees them: never the device token.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SettingsView {
    /// The cloud's base URL.
    pub cloud_url: String,
    /// The player, once this device is registered or linked.
    pub player_id: Option<String>,
    /// This device's id at the cloud.
    pub device_id: Option<String>,
}

impl From<Settings> for SettingsView {
    fn from(s: Settings) -> Self {
        Self {
            cloud_url: s.cloud_url,
            player_id: s.account.as_ref().map(|a| a.player_id.clone()),
            device_id: s.account.map(|a| a.device_id),
        }
    }
}

/// What the settings form sends.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SettingsInput {
    /// The cloud's base URL.
    pub cloud_url: String,
}

/// A link code, as the UI shows it.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LinkCodeView {
    /// The code, e.g. `K7QF-9M2D`.
    pub code: String,
    /// When it stops working (RFC 3339).
    pub expires_at: String,
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
        sync_loop: node.device.syncer().status(),
        settings: node.device.settings().into(),
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
pub async fn get_settings(desktop: State<'_, Desktop>) -> Result<SettingsView, CommandError> {
    Ok(desktop.node().await?.device.settings().into())
}

/// Validates and saves the cloud URL (another URL leaves the account),
/// then rechecks the connection. Returns the settings as saved.
#[tauri::command]
pub async fn save_settings(
    desktop: State<'_, Desktop>,
    settings: SettingsInput,
) -> Result<SettingsView, CommandError> {
    let saved = desktop
        .node()
        .await?
        .device
        .set_cloud_url(&settings.cloud_url)?;
    desktop.link()?.set_settings(saved.clone());
    Ok(saved.into())
}

/// Registers a new player with this device at `cloud_url` (default: the
/// saved one; the URL is saved with the account).
#[tauri::command]
pub async fn register_device(
    desktop: State<'_, Desktop>,
    cloud_url: Option<String>,
    device_name: Option<String>,
) -> Result<SettingsView, CommandError> {
    let device = &desktop.node().await?.device;
    let name = device_name.unwrap_or_else(crate::state::device_name);
    let url = cloud_url.unwrap_or_else(|| device.settings().cloud_url);
    device.register(&url, &name).await?;
    desktop.link()?.set_settings(device.settings());
    Ok(device.settings().into())
}

/// Makes a link code for another device of this player.
#[tauri::command]
pub async fn create_link_code(desktop: State<'_, Desktop>) -> Result<LinkCodeView, CommandError> {
    let code = desktop.node().await?.device.link_code().await?;
    Ok(LinkCodeView {
        code: code.code,
        expires_at: code.expires_at,
    })
}

/// Joins the player of a link code with this device, at `cloud_url`
/// (default: the saved one; the URL is saved with the account).
#[tauri::command]
pub async fn join_player(
    desktop: State<'_, Desktop>,
    code: String,
    cloud_url: Option<String>,
    device_name: Option<String>,
) -> Result<SettingsView, CommandError> {
    let device = &desktop.node().await?.device;
    let name = device_name.unwrap_or_else(crate::state::device_name);
    let url = cloud_url.unwrap_or_else(|| device.settings().cloud_url);
    device.join(&url, &code, &name).await?;
    desktop.link()?.set_settings(device.settings());
    Ok(device.settings().into())
}

/// Revokes this device's token and forgets the account (galaxies stay).
#[tauri::command]
pub async fn sign_out(desktop: State<'_, Desktop>) -> Result<SettingsView, CommandError> {
    let device = &desktop.node().await?.device;
    device.sign_out().await?;
    Ok(device.settings().into())
}

/// Renames a galaxy; it syncs on its own.
#[tauri::command]
pub async fn rename_galaxy(
    desktop: State<'_, Desktop>,
    row_key: String,
    name: String,
) -> Result<Galaxy, CommandError> {
    Ok(desktop.node().await?.device.rename(&row_key, &name).await?)
}

/// Deletes a galaxy; the delete syncs on its own.
#[tauri::command]
pub async fn delete_galaxy(
    desktop: State<'_, Desktop>,
    row_key: String,
) -> Result<(), CommandError> {
    Ok(desktop.node().await?.device.delete(&row_key).await?)
}

/// Starts `Galaxy_Create` in the cloud for this player; returns the
/// instance id at once. Its states arrive as `cloud-instance` events, its
/// galaxy through sync.
#[tauri::command]
pub async fn create_in_cloud(desktop: State<'_, Desktop>) -> Result<String, CommandError> {
    let started = desktop.node().await?.device.start_in_cloud().await?;
    desktop.follow_cloud_instance(started.id.clone());
    Ok(started.id)
}

/// Syncs now (the retry button); the outcome arrives as `sync-loop`.
#[tauri::command]
pub async fn sync_now(desktop: State<'_, Desktop>) -> Result<(), CommandError> {
    let node = desktop.node().await?;
    if node.device.settings().account.is_none() {
        return Err(galaxy::DeviceError::NotRegistered.into());
    }
    node.device.syncer().kick();
    Ok(())
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
