//! [`Replica`]: the device's local store as the sync loop sees it.
//!
//! The loop ([`crate::client::Syncer`]) knows the protocol and nothing of
//! galaxies; the game domain implements this trait over its own tables
//! (`galaxy::replica`), where every local change wrote its outbox row in
//! the same transaction as the change itself.

use std::future::Future;

use tokio::sync::watch;

use crate::protocol::{Chain, Mutation, PullResponse, PushResponse};

/// What the loop needs to know before a round.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaState {
    /// This database's client id (made on first use, renewed by
    /// [`Replica::renumber`]).
    pub client_id: String,
    /// Where the next pull starts.
    pub cursor: u64,
    /// The chain of pull pages under way: [`Chain::Fresh`] when it began
    /// at cursor 0 (a first sync, or one after a reset, perhaps cut off
    /// and resumed since), with the player's latest version its first page
    /// saw.
    pub chain: Chain,
}

/// The local side of sync. Every method commits durably before it returns.
pub trait Replica: Send + Sync + 'static {
    /// Why a local operation failed.
    type Error: std::error::Error + Send + Sync + 'static;

    /// The client id and pull cursor.
    fn state(&self) -> impl Future<Output = Result<ReplicaState, Self::Error>> + Send;

    /// The oldest `limit` outbox rows, in mutation id order.
    fn pending(
        &self,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Mutation>, Self::Error>> + Send;

    /// Settles a push's answer: drops outbox rows up to
    /// `last_mutation_id`, records the versions the server gave, and
    /// returns what the player should be told (conflicts, rejections).
    fn acknowledge(
        &self,
        response: PushResponse,
    ) -> impl Future<Output = Result<Vec<String>, Self::Error>> + Send;

    /// The server has no state for this client: take a new client id and
    /// renumber the outbox from 1 (puts are upserts, so resending is safe).
    fn renumber(&self) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Applies one pull page in one transaction (except to entities that
    /// still have outbox rows) and saves its cursor. Returns how many
    /// changes it applied.
    fn apply_pull(
        &self,
        page: PullResponse,
    ) -> impl Future<Output = Result<usize, Self::Error>> + Send;

    /// The server asked for a reset: drop every synced row that has no
    /// pending change, keep the outbox, and start pulling from 0.
    fn reset(&self) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// The cloud settled this client's mutation ids for other changes (the
    /// device's data is an older copy of itself): take a new client id,
    /// renumber the outbox from 1, and pull from 0, which brings back what
    /// the newer copy wrote under the old id (a client's own writes are
    /// left out of its pulls).
    fn renumber_and_pull_all(&self) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// The cloud lost what it had acknowledged (restored from a backup: the
    /// device's cursor is beyond its latest version). Keep every row, queue
    /// each synced one without a pending change as a put on top of the
    /// version this device knew, take a new client id, renumber the outbox
    /// and start pulling from 0, so the cloud gets back what it lost.
    fn resend_all(&self) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Outbox rows waiting (from memory, instant).
    fn pending_count(&self) -> u64;

    /// Ticks whenever the outbox changes (a local write: sync now).
    fn watch_pending(&self) -> watch::Receiver<u64>;
}
