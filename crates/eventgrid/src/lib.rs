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
//! - [`model`]: topics and event subscriptions with Azure's property
//!   names, and the checks a write passes (URLs, batching, headers).
//! - [`egress`]: where the router may send requests (no link-local or
//!   metadata addresses, written any way, resolved or redirected to) and
//!   the HTTP client that holds to it.
//! - [`retry`]: after a delivery attempt: delivered, retried when, or
//!   dead-lettered why (schedule, non-retried codes, `Retry-After`, limits).
//! - [`store`]: [`RouterStore`], topics, subscriptions, accepted events and
//!   their deliveries (made in the publish's transaction), attempts, dead
//!   letters, in SQLite or PostgreSQL (delivery leases between processes).
//! - [`notices`]: what a webhook is told about its subscription: the
//!   validation handshake before any event, the deletion notice after.
//! - [`deliver`]: the delivery loop (batches, headers, orchestration
//!   subscriptions through a [`deliver::Starter`]).
//!
//! Invariant: no HTTP routes here (galaxy-cloud serves them), no Tauri.

pub mod deliver;
pub mod egress;
pub mod event;
pub mod filter;
pub mod model;
pub mod notices;
pub mod retry;
pub mod sas;
pub mod store;
pub mod subscription_schema;

pub use event::{Event, PublishError, Schema};
pub use filter::{AdvancedFilter, Filter, FilterError, Operator};
pub use model::Destination;
pub use store::RouterStore;
