//! The Galaxy Forge game domain, on top of the `durable` engine.
//!
//! # Layout
//! - [`names`] and [`coords`]: the random data of `Utility_Name` and
//!   `Utility_Coords`.
//! - [`table`]: the `galaxies` table (its own SQLite file), written exactly
//!   once per galaxy however often the writing activity runs.
//! - [`workload`]: `Galaxy_Create` and its activities, registered on a
//!   [`durable::Registry`].
//!
//! Invariant: this crate knows nothing of HTTP or Tauri; it is used the same
//! way by the desktop app and the cloud backend.

pub mod coords;
pub mod local;
pub mod names;
pub mod table;
pub mod workload;

pub use coords::Coords;
pub use local::{LocalConfig, LocalNode, OpenError};
pub use table::{Galaxy, GalaxyPage, GalaxyTable, TableError};
pub use workload::{register, CreateGalaxyContext, GALAXY_CREATE};
