//! The player's side of cloud sync.
//!
//! # Layout
//! - [`settings`]: [`Settings`] (cloud URL and key) and [`SettingsFile`],
//!   the JSON file in the app's config directory.
//! - [`link`]: [`CloudLink`], which knows whether the cloud is reachable
//!   (`GET {cloudUrl}/healthz`) and publishes a [`SyncStatus`].
//!
//! # The seam for sync
//! Sync itself (pushing local galaxies, pulling remote ones) is not built
//! yet. [`SyncStatus::pending_changes`] comes from an [`Outbox`]; today's
//! [`NothingToSync`] says 0. The sync work plugs in a real outbox and adds
//! its push/pull to [`CloudLink::run`]; UIs already show both numbers.
//!
//! Invariant: no Tauri and no engine here; this crate only speaks HTTP to
//! the cloud and reads and writes its settings file.

pub mod link;
pub mod protocol;
pub mod replica;
pub mod settings;

pub use link::{CloudLink, Connection, NothingToSync, Outbox, Reachability, SyncStatus};
pub use replica::{Replica, ReplicaState};
pub use settings::{Settings, SettingsError, SettingsFile, DEFAULT_CLOUD_URL};
