//! [`PlayerDevice`]: one player's device, as the desktop app and the
//! `galaxy` command line both use it: a tracked local node (engine and
//! galaxies with their outbox), its settings file (cloud URL and account),
//! and the sync loop over them.
//!
//! Everything a device does is here, once: register or join a player, make
//! link codes, create galaxies through the embedded engine (offline), rename
//! and delete them, sync. The app's commands and the CLI's subcommands only
//! parse, call these and print.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use durable::{InstanceId, RuntimeStatus};
use serde::Serialize;
use sync::protocol::LinkCode;
use sync::{
    Account, CloudApi, RoundError, RoundReport, Settings, SettingsError, SettingsFile, Syncer,
    SyncerConfig, SyncerStatus, TransportError,
};

use crate::local::{LocalConfig, LocalNode, OpenError};
use crate::replica::{EditError, GalaxyReplica};
use crate::table::{Galaxy, TableError};
use crate::workload::GALAXY_CREATE;

/// Longest pause between status reads when a cloud instance's stream is
/// unavailable.
pub const STATUS_POLL_MAX: Duration = Duration::from_secs(5);
/// How long `create` waits for one galaxy.
const CREATE_WAIT: Duration = Duration::from_secs(60);

/// Why a device operation failed. Messages are for players.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The local data could not be opened.
    #[error("cannot open the galaxies in this data directory: {0}")]
    Open(#[from] OpenError),
    /// The settings file failed.
    #[error(transparent)]
    Settings(#[from] SettingsError),
    /// The device has no cloud account yet.
    #[error("this device is not linked to a cloud account yet: run `register --cloud URL` or `link CODE --cloud URL`")]
    NotRegistered,
    /// The device already has an account with this cloud.
    #[error("this device already belongs to player {0} on this cloud")]
    AlreadyRegistered(String),
    /// What was asked would forget the device's account (its token may be
    /// the only copy, and would stay valid at the cloud).
    #[error("this device belongs to player {player_id} at {cloud_url}: sign out first (that revokes its token there), then {action}")]
    Linked {
        /// The account's player.
        player_id: String,
        /// The cloud it belongs to.
        cloud_url: String,
        /// What the player wanted to do.
        action: &'static str,
    },
    /// The cloud refused or could not be reached.
    #[error(transparent)]
    Cloud(#[from] TransportError),
    /// A rename or delete was refused.
    #[error(transparent)]
    Edit(#[from] EditError),
    /// The galaxies table failed.
    #[error(transparent)]
    Table(#[from] TableError),
    /// The engine refused or failed.
    #[error("the local engine: {0}")]
    Engine(#[from] durable::Error),
    /// A sync round failed.
    #[error("sync: {0}")]
    Sync(String),
}

/// The first wait before a cloud start is sent again.
const CLOUD_START_RETRY: Duration = Duration::from_millis(250);

/// [`DeviceError::Linked`] for the account in `settings`.
fn linked(settings: &Settings, action: &'static str) -> DeviceError {
    DeviceError::Linked {
        player_id: settings
            .account
            .as_ref()
            .map(|a| a.player_id.clone())
            .unwrap_or_default(),
        cloud_url: settings.cloud_url.clone(),
        action,
    }
}

impl From<RoundError<TableError>> for DeviceError {
    fn from(e: RoundError<TableError>) -> Self {
        match e {
            RoundError::Transport(t) => Self::Cloud(t),
            other => Self::Sync(other.to_string()),
        }
    }
}

/// What `status` shows.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceStatus {
    /// The cloud URL.
    pub cloud_url: String,
    /// The player, once registered.
    pub player_id: Option<String>,
    /// This device, once registered.
    pub device_id: Option<String>,
    /// Galaxies on this device.
    pub galaxies: u64,
    /// The sync loop's status (pending changes, last sync, phase).
    pub sync: SyncerStatus,
}

/// What opening a device found that its user should know.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OpenNotes {
    /// The settings held a function key from an older version; it was
    /// removed from the file (register to sync again).
    pub legacy_key_dropped: bool,
    /// Problems that did not stop the opening (a damaged settings file:
    /// defaults are used until the next save).
    pub warnings: Vec<String>,
}

/// One player's device. See the module docs.
pub struct PlayerDevice {
    node: LocalNode,
    replica: GalaxyReplica,
    syncer: Arc<Syncer<GalaxyReplica>>,
    settings_file: SettingsFile,
    settings: std::sync::Mutex<Settings>,
}

impl PlayerDevice {
    /// Opens the device's data in `data_dir` (creating it) with its
    /// settings in `settings_path` (default `<data_dir>/settings.json`).
    ///
    /// A settings file holding a function key from an older version is
    /// rewritten without it at once: a player's device never holds the
    /// server-wide key ([`OpenNotes::legacy_key_dropped`] tells the app to
    /// register instead). A damaged settings file does not stop the
    /// opening: defaults are used, and a warning says so.
    pub fn open(
        data_dir: &Path,
        settings_path: Option<PathBuf>,
        config: SyncerConfig,
    ) -> Result<(Self, OpenNotes), DeviceError> {
        let settings_file =
            SettingsFile::new(settings_path.unwrap_or_else(|| data_dir.join("settings.json")));
        let mut notes = OpenNotes::default();
        let mut settings = match settings_file.load() {
            Ok(s) => s,
            Err(e @ SettingsError::Corrupt { .. }) => {
                notes.warnings.push(e.to_string());
                Settings::default()
            }
            Err(e) => return Err(e.into()),
        };
        if settings.legacy_cloud_key.take().is_some() {
            settings = settings_file.save(settings)?;
            notes.legacy_key_dropped = true;
        }
        let node = LocalNode::open(
            data_dir,
            LocalConfig {
                tracked: true,
                ..LocalConfig::default()
            },
        )?;
        let replica = node.replica.clone().expect("a tracked node has a replica");
        let api = api_of(&settings);
        let syncer = Syncer::new(Arc::new(replica.clone()), api, config);
        Ok((
            Self {
                node,
                replica,
                syncer,
                settings_file,
                settings: std::sync::Mutex::new(settings),
            },
            notes,
        ))
    }

    /// The local node (engine and table).
    pub fn node(&self) -> &LocalNode {
        &self.node
    }

    /// The sync side of the table.
    pub fn replica(&self) -> &GalaxyReplica {
        &self.replica
    }

    /// The sync loop (run it with [`Syncer::run`] to keep in sync live).
    pub fn syncer(&self) -> &Arc<Syncer<GalaxyReplica>> {
        &self.syncer
    }

    /// The current settings.
    pub fn settings(&self) -> Settings {
        self.settings
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Saves new settings (validated) and points the sync loop at them.
    pub fn save_settings(&self, settings: Settings) -> Result<Settings, DeviceError> {
        let saved = self.settings_file.save(settings)?;
        *self.settings.lock().unwrap_or_else(|p| p.into_inner()) = saved.clone();
        self.syncer.set_api(api_of(&saved));
        Ok(saved)
    }

    fn account(&self) -> Result<Account, DeviceError> {
        self.settings().account.ok_or(DeviceError::NotRegistered)
    }

    /// Registers a new player at `cloud_url` with this device. Everything
    /// on the device goes to the new player ([`GalaxyReplica::rebase`]).
    pub async fn register(
        &self,
        cloud_url: &str,
        device_name: &str,
    ) -> Result<Account, DeviceError> {
        let current = self.settings();
        let settings = current.clone().with_cloud_url(cloud_url).normalized()?;
        if let Some(a) = &current.account {
            return Err(match settings.account {
                Some(_) => DeviceError::AlreadyRegistered(a.player_id.clone()),
                None => linked(&current, "register at another cloud"),
            });
        }
        let creds = CloudApi::new(&settings.cloud_url, None)
            .register(device_name)
            .await?;
        let account = Account::from(creds);
        self.switch_account(&account.player_id).await?;
        self.save_settings(Settings {
            account: Some(account.clone()),
            ..settings
        })?;
        Ok(account)
    }

    /// Joins the player of a link code at `cloud_url` (leaving any other
    /// account this device had): the device's galaxies join the player's,
    /// and the player's arrive here ([`GalaxyReplica::rebase`]).
    pub async fn join(
        &self,
        cloud_url: &str,
        code: &str,
        device_name: &str,
    ) -> Result<Account, DeviceError> {
        let settings = self.settings().with_cloud_url(cloud_url).normalized()?;
        let creds = CloudApi::new(&settings.cloud_url, None)
            .join(code, device_name)
            .await?;
        let account = Account::from(creds);
        self.switch_account(&account.player_id).await?;
        self.save_settings(Settings {
            account: Some(account.clone()),
            ..settings
        })?;
        Ok(account)
    }

    /// Switches to another cloud URL. An account belongs to one cloud, so a
    /// device that has one must sign out first: another URL is refused
    /// ([`DeviceError::Linked`]) rather than the token silently forgotten.
    pub fn set_cloud_url(&self, cloud_url: &str) -> Result<Settings, DeviceError> {
        let current = self.settings();
        let settings = current.clone().with_cloud_url(cloud_url);
        if current.account.is_some() && settings.account.is_none() {
            return Err(linked(&current, "change the cloud URL"));
        }
        self.save_settings(settings)
    }

    /// Revokes this device's token at the cloud and forgets the account.
    /// The galaxies stay. A token the cloud already refuses is forgotten
    /// too; an unreachable cloud is an error (the token would stay valid).
    pub async fn sign_out(&self) -> Result<(), DeviceError> {
        let account = self.account()?;
        let api = CloudApi::new(&self.settings().cloud_url, Some(account.token.clone()));
        match api.revoke(&account.device_id).await {
            Ok(()) | Err(TransportError::Unauthorized(_)) => {}
            Err(e) => return Err(e.into()),
        }
        // The sync state stays the player's: linking to it again goes on
        // from there (pending changes included).
        self.replica.adopt_player(&account.player_id).await?;
        self.save_settings(Settings {
            account: None,
            ..self.settings()
        })?;
        Ok(())
    }

    /// Detaches the sync loop from the old account and makes the replica
    /// `player_id`'s, with no round in between: rebased for another player,
    /// unchanged for the same one ([`GalaxyReplica::rebase`]).
    async fn switch_account(&self, player_id: &str) -> Result<(), DeviceError> {
        if let Some(current) = self.settings().account {
            self.replica.adopt_player(&current.player_id).await?;
        }
        self.syncer.set_api(None);
        self.syncer
            .with_rounds_paused(self.replica.rebase(player_id))
            .await?;
        Ok(())
    }

    /// A link code for another device to join this player.
    pub async fn link_code(&self) -> Result<LinkCode, DeviceError> {
        let account = self.account()?;
        Ok(
            CloudApi::new(&self.settings().cloud_url, Some(account.token))
                .link_code()
                .await?,
        )
    }

    /// Runs `Galaxy_Create` `count` times on the embedded engine (no network
    /// needed) and waits for them. Returns the instance ids.
    pub async fn create(&self, count: usize) -> Result<Vec<InstanceId>, DeviceError> {
        let engine = &self.node.engine;
        let mut ids = Vec::with_capacity(count);
        for _ in 0..count {
            ids.push(engine.start_orchestration(GALAXY_CREATE, None, ()).await?);
        }
        for id in &ids {
            let status = engine.wait_for_completion(id, CREATE_WAIT).await?;
            if status.runtime_status != RuntimeStatus::Completed {
                return Err(DeviceError::Sync(format!(
                    "Galaxy_Create {id} ended {}",
                    status.runtime_status
                )));
            }
        }
        Ok(ids)
    }

    /// Starts `Galaxy_Create` in the cloud for this player and follows it
    /// live until it finishes, calling `on_state` for each state; the
    /// galaxy then arrives through pull (a running sync loop gets a poke).
    pub async fn create_in_cloud(
        &self,
        on_state: impl FnMut(&sync::InstanceState) + Send,
    ) -> Result<sync::InstanceState, DeviceError> {
        let started = self.start_in_cloud().await?;
        self.follow_in_cloud(&started.id, on_state).await
    }

    fn cloud_api(&self) -> Result<CloudApi, DeviceError> {
        let account = self.account()?;
        Ok(CloudApi::new(
            &self.settings().cloud_url,
            Some(account.token),
        ))
    }

    /// Starts `Galaxy_Create` in the cloud for this player (see
    /// [`create_in_cloud`](Self::create_in_cloud)), under an instance id
    /// chosen here: a start whose answer was lost is sent again (twice at
    /// most) with the same id, which the cloud starts once.
    pub async fn start_in_cloud(&self) -> Result<sync::Started, DeviceError> {
        let api = self.cloud_api()?;
        let id = format!(
            "{}.{}",
            self.account()?.player_id,
            uuid::Uuid::now_v7().simple()
        );
        let mut wait = CLOUD_START_RETRY;
        let mut tries = 1;
        loop {
            match api.start_galaxy_create(&id).await {
                Err(e) if e.is_transient() && tries < 3 => {
                    tracing::info!(instance = %id, "starting in the cloud: {e}; sending it again");
                    tokio::time::sleep(wait).await;
                    wait *= 2;
                    tries += 1;
                }
                done => return Ok(done?),
            }
        }
    }

    /// Follows one of the player's cloud instances until it finishes.
    pub async fn follow_in_cloud(
        &self,
        instance_id: &str,
        on_state: impl FnMut(&sync::InstanceState) + Send,
    ) -> Result<sync::InstanceState, DeviceError> {
        Ok(self
            .cloud_api()?
            .follow_instance(instance_id, on_state)
            .await?)
    }

    /// Renames a galaxy (synced on the next round).
    pub async fn rename(&self, row_key: &str, name: &str) -> Result<Galaxy, DeviceError> {
        Ok(self.replica.rename(row_key, name).await?)
    }

    /// Deletes a galaxy (synced on the next round).
    pub async fn delete(&self, row_key: &str) -> Result<(), DeviceError> {
        Ok(self.replica.delete(row_key).await?)
    }

    /// One sync round now.
    pub async fn sync_once(&self) -> Result<RoundReport, DeviceError> {
        self.account()?;
        Ok(self.syncer.sync_once().await?)
    }

    /// Every galaxy on this device, in key order.
    pub fn list(&self) -> Result<Vec<Galaxy>, DeviceError> {
        let mut all = Vec::new();
        let mut token = None;
        loop {
            let page = self.node.table.list(None, 1000, token.as_deref())?;
            all.extend(page.galaxies);
            match page.continuation {
                Some(t) => token = Some(t),
                None => return Ok(all),
            }
        }
    }

    /// Where the device stands.
    pub fn status(&self) -> Result<DeviceStatus, DeviceError> {
        let settings = self.settings();
        Ok(DeviceStatus {
            cloud_url: settings.cloud_url,
            player_id: settings.account.as_ref().map(|a| a.player_id.clone()),
            device_id: settings.account.as_ref().map(|a| a.device_id.clone()),
            galaxies: self.node.table.count()?,
            sync: self.syncer.status(),
        })
    }

    /// Stops the engine and closes the databases.
    pub async fn shutdown(self, grace: Duration) {
        self.close(grace).await;
    }

    /// [`shutdown`](Self::shutdown) for a device shared by reference (stop
    /// its sync loop first).
    pub async fn close(&self, grace: Duration) {
        self.node.close(grace).await;
    }
}

fn api_of(settings: &Settings) -> Option<CloudApi> {
    settings
        .account
        .as_ref()
        .map(|a| CloudApi::new(&settings.cloud_url, Some(a.token.clone())))
}
