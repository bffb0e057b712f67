//! An embeddable, durable orchestration engine in the style of the Durable
//! Task Framework.
//!
//! # Layout
//! - [`types`]: ids, timestamps, runtime status, instance status.
//! - [`history`]: history events and messages (what is stored).
//! - [`context`]: [`OrchestrationContext`], the replay-safe API orchestrator
//!   code uses, and its durable futures.
//! - `run`: replay of a history and execution of one turn (pure, no I/O).
//! - [`registry`]: orchestrations and activities by name.
//! - [`engine`]: dispatchers, client API, live updates.
//! - [`coalesce`]: operations arriving at the same moment, taken together.
//! - [`remote`]: live updates of the changes other processes sharing the
//!   store commit.
//! - [`store`]: the [`Store`] trait and its SQLite and PostgreSQL
//!   implementations.
//! - `conformance` (feature `testing`): the test suite every store must
//!   pass.
//! - `testing` (feature `testing`): a throwaway PostgreSQL cluster for
//!   tests and benchmarks.
//!
//! # Glossary
//! - **instance**: one run of an orchestration, named by an [`InstanceId`].
//! - **history event**: an entry of an instance's append-only history.
//! - **action**: what a turn decides to do (schedule an activity, create a
//!   timer, start a sub-orchestration); recorded as history events.
//! - **turn**: one execution of the orchestrator against its history plus
//!   newly arrived messages, committed in one transaction.
//! - **work item**: a leased unit of queued work: an instance with messages
//!   (orchestration work item) or an activity to run (activity work item).

pub mod coalesce;
#[cfg(feature = "testing")]
pub mod conformance;
pub mod context;
mod dispatch;
pub mod elide;
pub mod engine;
pub mod error;
pub mod history;
pub mod registry;
pub mod remote;
pub mod retry;
mod run;
pub mod store;
#[cfg(feature = "testing")]
pub mod testing;
mod turn;
pub mod types;

pub use context::{DurableFuture, OrchestrationContext, TaskError};
pub use engine::{Engine, EngineConfig, InstanceUpdate, RetentionPolicy, Update};
pub use error::Error;
pub use history::{EventKind, HistoryEvent};
pub use registry::{ActivityContext, Registry};
pub use retry::RetryPolicy;
pub use run::HistoryLimits;
#[cfg(feature = "postgres")]
pub use store::postgres::{PostgresConfig, PostgresStore};
pub use store::sqlite::{SqliteConfig, SqliteStore};
pub use store::{Store, StoreError};
pub use types::{
    FailureDetails, InstanceFilter, InstanceId, InstancePage, InstanceQuery, InstanceStatus,
    RuntimeStatus, Timestamp,
};

/// Reads fault injection points from the `FAILPOINTS` environment variable
/// (`name=action;...`, e.g. `durable-sqlite-writer-batch=3*off->panic`; each
/// `GroupCommit` writer has `<its thread name>-batch`) when built
/// with the `failpoints` feature (test builds); does nothing otherwise.
/// Call once at the start of a binary.
pub fn failpoints_from_env() {
    #[cfg(feature = "failpoints")]
    std::mem::forget(fail::FailScenario::setup());
}
