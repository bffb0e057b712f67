//! The player's side of cloud sync.
//!
//! # Layout
//! - [`settings`]: [`Settings`] (cloud URL and account) and [`SettingsFile`],
//!   the JSON file in the app's config directory.
//! - [`link`]: [`CloudLink`], which knows whether the cloud is reachable
//!   (`GET {cloudUrl}/healthz`) and publishes a [`SyncStatus`].
//!
//! - [`protocol`]: the wire types of push, pull, players and pokes.
//! - [`replica`]: [`Replica`], the local store as sync sees it (the game
//!   domain implements it over its tables).
//! - [`transport`]: [`Transport`], push and pull; [`client`]:
//!   [`CloudApi`], the cloud's player and sync routes over HTTP.
//! - [`round`]: one round (push until empty, pull until current).
//! - [`syncer`]: [`Syncer`], the background loop: triggers, back-off,
//!   status.
//! - [`sse`]: the live stream's event parser.
//!
//! Invariant: no Tauri and no engine here; this crate only speaks HTTP to
//! the cloud, reads and writes its settings file, and drives a [`Replica`].

pub mod client;
pub mod link;
pub mod protocol;
pub mod replica;
pub mod round;
pub mod settings;
pub mod sse;
pub mod syncer;
pub mod transport;

pub use client::{CloudApi, InstanceState, Started};
pub use link::{CloudLink, Connection, NothingToSync, Outbox, Reachability, SyncStatus};
pub use replica::{Replica, ReplicaState};
pub use round::{run_round, PullProgress, RoundError, RoundReport};
pub use settings::{Account, Settings, SettingsError, SettingsFile, DEFAULT_CLOUD_URL};
pub use syncer::{Phase, Syncer, SyncerConfig, SyncerStatus};
pub use transport::{Transport, TransportError};
