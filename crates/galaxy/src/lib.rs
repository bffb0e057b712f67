//! The Galaxy Forge game domain, on top of the `durable` engine.
//!
//! # Layout
//! - [`names`] and [`coords`]: the random data of `Utility_Name` and
//!   `Utility_Coords`.
//! - [`table`]: the `galaxies` table (its own SQLite file), written exactly
//!   once per galaxy however often the writing activity runs.
//! - [`pg_table`]: the same table in PostgreSQL, shared by several
//!   processes.
//! - [`galaxies`]: [`Galaxies`], either table behind one type.
//! - [`body`]: a galaxy as a sync entity body, and the rules it follows.
//! - [`replica`]: the device's side of sync over its table (outbox, sync
//!   state, renames and deletes), [`GalaxyReplica`].
//! - [`players`]: the cloud's side of sync: players, devices, tokens, link
//!   codes and each player's synced galaxies, in SQLite or PostgreSQL.
//! - [`workload`]: `Galaxy_Create` and its activities, registered on a
//!   [`durable::Registry`].
//! - [`local`]: [`LocalNode`], engine + table in one data directory.
//! - [`device`]: [`PlayerDevice`], a player's device (tracked node,
//!   settings, sync loop), shared by the desktop app and the `galaxy` CLI.
//! - [`view`]: view models of instances (tasks, timeline) for monitors.
//! - [`monitor`]: queries returning those views, and [`monitor::forward`],
//!   the update stream turned into views for a UI.
//!
//! Invariant: this crate knows nothing of HTTP or Tauri; it is used the same
//! way by the desktop app and the cloud backend.

pub mod body;
pub mod coords;
pub mod device;
pub mod galaxies;
pub mod local;
pub mod monitor;
pub mod names;
#[cfg(feature = "postgres")]
pub mod pg_table;
pub mod players;
pub mod replica;
pub mod table;
pub mod view;
pub mod workload;

pub use coords::Coords;
pub use device::{DeviceError, DeviceStatus, OpenNotes, PlayerDevice};
pub use galaxies::Galaxies;
pub use local::{LocalConfig, LocalNode, OpenError};
#[cfg(feature = "postgres")]
pub use pg_table::PgGalaxyTable;
pub use replica::{EditError, GalaxyEvent, GalaxyReplica};
pub use table::{Galaxy, GalaxyPage, GalaxyTable, TableError};
pub use view::{InstanceView, TaskState, TaskView, TimelineEntry};
pub use workload::{
    register, register_for_cloud, register_with_players, CloudHooks, CreateGalaxyContext,
    CreateInput, GalaxyObserver, PlayerRef, GALAXY_CREATE,
};
