//! The event router of Galaxy Forge, modeled on Azure Event Grid
//! (`../shared/reference/event-grid.md`): publishers post events to a
//! topic, the router pushes each event to every matching subscription.
//!
//! # Layout
//! - [`filter`]: a subscription's filter (event types, subject prefix and
//!   suffix, the advanced filters on `data.*` and event attributes) and the
//!   matching rules, as pure functions over JSON events.
//! - [`event`]: what a publisher sends, in either schema (Event Grid,
//!   CloudEvents 1.0 structured, batch or binary), checked against the
//!   reference's rules and limits into [`Event`]s.
//! - [`sas`]: topic keys, `aeg-sas-key` and `aeg-sas-token` checks.
//!
//! Still to come (issue 10): topics, persistence in the engine's store, push delivery
//! with the validation handshake, retries and dead letters, and the routes
//! in galaxy-cloud.
//!
//! Invariant: no HTTP routes here (galaxy-cloud serves them), no Tauri.

pub mod event;
pub mod filter;
pub mod sas;

pub use event::{Event, PublishError, Schema};
pub use filter::{AdvancedFilter, Filter, FilterError, Operator};
