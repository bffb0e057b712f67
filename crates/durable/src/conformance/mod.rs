//! The store conformance suite: the behaviour every [`Store`] must show,
//! written once and run against each implementation.
//!
//! # Why it exists
//! The engine relies on the invariants listed in [`crate::store`] (atomic
//! turns, exclusive leases, lease loss detected, delayed delivery, terminal
//! instances refusing messages...) and on nothing else a particular database
//! happens to do. Testing those invariants per store would let the stores
//! drift apart; this module states them once, as executable cases, so that
//! the SQLite store and any later one (PostgreSQL) are held to the same
//! contract.
//!
//! # How a store uses it
//! 1. Implement [`Harness`] for a small type that owns whatever the store
//!    needs (a temp dir, a scratch schema). [`Harness::open`] must give an
//!    **empty** store the first time and the **same data** when called again
//!    after [`Harness::close`], as a restarted process would see it.
//! 2. In an integration test of the store's crate (which needs `tokio` with
//!    the `macros` and `rt-multi-thread` features as a dev-dependency), invoke
//!    [`conformance_tests!`](crate::conformance_tests) with an async fn or
//!    closure that returns a fresh harness:
//!
//! ```text
//! async fn harness() -> MyHarness { MyHarness::new().await }
//! durable::conformance_tests!(harness);
//! ```
//!
//! That expands to one `#[tokio::test]` per case, each on its own fresh
//! store, named after the `case_*` function it runs. The cases are also
//! public functions, so a store can run one by hand while debugging.
//!
//! Every case asserts observable behaviour through the [`Store`] trait only.
//! Waiting for time to pass (lease expiry, delayed messages) is done by
//! polling the condition with a deadline, never by sleeping a fixed time and
//! hoping; "not before" checks are only asserted when the clock proves the
//! due time had not yet come.
//!
//! # Layout
//! The cases by area: `creation` (instances, fetches, turns), `leases`
//! (lost, expired, abandoned; completing activities), `messages` (send
//! rules, delays, histories), `listing`, `purge`, `signals` (wake-ups,
//! counts, reopening, the lifecycle outbox), `together` (turns of several
//! instances committed at once); `helpers` is what they share.

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::history::{EventKind, HistoryEvent, Message, ParentLink};
use crate::store::{
    NewActivity, NewInstance, OrchestrationWorkItem, OutgoingMessage, PurgeOutcome, StatusUpdate,
    Store, StoreError, TurnCommit, WorkKind, WorkLock,
};
use crate::types::{
    self, FailureDetails, InstanceFilter, InstanceId, InstanceQuery, RuntimeStatus, Timestamp,
};

/// Opens and closes the store under test. One harness serves one test.
pub trait Harness: Send {
    /// Opens the store, with its lifecycle outbox on. The first call gives
    /// an empty store; a call after [`Harness::close`] reopens the same
    /// data, as a restarted process would.
    fn open(&mut self) -> impl Future<Output = Arc<dyn Store>> + Send;

    /// Shuts down a store returned by [`Harness::open`] so that everything it
    /// acknowledged, and the delivery counts of the work it handed out, are
    /// durable before the next [`Harness::open`].
    fn close(&mut self, store: Arc<dyn Store>) -> impl Future<Output = ()> + Send;
}

/// Expands to one `#[tokio::test]` per conformance case. The argument is an
/// async fn or closure taking no arguments and returning a fresh value that
/// implements [`conformance::Harness`](crate::conformance::Harness).
#[macro_export]
macro_rules! conformance_tests {
    ($harness:expr) => {
        $crate::conformance_tests!(@cases $harness;
            case_create_and_fetch,
            case_create_conflict_and_replace,
            case_create_only_if_absent,
            case_create_with_first_turn,
            case_replace_failed_instance_with_pending_rewind,
            case_single_holder,
            case_concurrent_fetchers_never_share,
            case_commit_turn_effects,
            case_sub_orchestration_conflict,
            case_commit_with_lost_lease,
            case_commit_racing_lease_expiry,
            case_orchestration_lease_expiry,
            case_activity_lease_expiry,
            case_abandon_orchestration_work,
            case_abandon_activity_work,
            case_complete_activity_work,
            case_concurrent_double_completion,
            case_send_message_rules,
            case_delayed_messages,
            case_terminal_commit_drops_inbox,
            case_replace_history,
            case_history_order,
            case_read_status_reads_only_what_is_asked,
            case_list_instances_filters,
            case_list_instances_paging,
            case_list_instances_byte_budget,
            case_list_instances_after_replace_and_purge,
            case_purge_instance,
            case_purge_instances,
            case_purge_with_queued_activity,
            case_completion_racing_purge,
            case_complete_activities_together,
            case_counts,
            case_work_signal,
            case_next_wake_reports_work_already_due,
            case_lifecycle_outbox,
            case_turns_committed_together,
            case_creations_committed_together,
            case_idempotent_creations_committed_together,
            case_same_instance_created_twice_at_once,
        );
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn case_results_outstanding_when_an_instance_finishes() {
            let mut harness = ($harness)().await;
            $crate::conformance::case_results_outstanding_when_an_instance_finishes(&mut harness)
                .await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn case_survives_reopen() {
            let mut harness = ($harness)().await;
            $crate::conformance::case_survives_reopen(&mut harness).await;
        }
    };
    (@cases $harness:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let mut harness = ($harness)().await;
                let store = $crate::conformance::Harness::open(&mut harness).await;
                $crate::conformance::$case(&*store).await;
                $crate::conformance::Harness::close(&mut harness, store).await;
            }
        )*
    };
}

mod creation;
mod helpers;
mod leases;
mod listing;
mod messages;
mod purge;
mod signals;
mod together;

pub use creation::*;
pub use leases::*;
pub use listing::*;
pub use messages::*;
pub use purge::*;
pub use signals::*;
pub use together::*;
