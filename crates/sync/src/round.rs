//! One sync round: push the outbox until it is empty, then pull pages until
//! the cursor is current. The loop ([`crate::syncer`]) decides when rounds
//! run; this decides what one does.
//!
//! - A push answered `ClientStateNotFound` (the cloud lost or never had
//!   this client) or `MutationGap` (the cloud's record of this client is
//!   behind what the outbox assumes) renumbers the outbox under a new
//!   client id and pushes again: puts are whole-body upserts and deletes
//!   are idempotent, so resending settled changes is harmless.
//! - A push answered `MutationIdReused` (the outbox's ids went to other
//!   changes: the device's data is an older copy) renumbers too, and pulls
//!   from 0, since the newer copy's writes were this client's own and so
//!   never pulled.
//! - A pull page is applied in one local transaction; `reset` wipes synced
//!   rows (keeping the outbox) and pulls from 0.
//! - A chain of pages that began at cursor 0 says so (`fresh`, with the
//!   player's latest version its first page saw): its cursor passes below
//!   the tombstone floor legitimately (it never held the purged entities),
//!   where a device that stopped there long ago must reset, unless
//!   tombstones newer than that version were purged meanwhile (their
//!   entities may have come in the chain's earlier pages). The replica
//!   keeps the chain until it completes, so a first sync cut off half-way
//!   resumes instead of starting over. Writes of its own settled before
//!   the chain read a page lower that version to theirs: pulls skip them,
//!   so their deletion's tombstone is the only news of it.

use crate::protocol::{PushRequest, MAX_PUSH_MUTATIONS};
use crate::replica::Replica;
use crate::transport::{Transport, TransportError};

/// Why a round stopped early.
#[derive(Debug, thiserror::Error)]
pub enum RoundError<E: std::error::Error + 'static> {
    /// The cloud could not be used.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The local database failed.
    #[error("local database: {0}")]
    Local(#[source] E),
    /// Renumbering did not satisfy the cloud.
    #[error("the cloud keeps refusing this device's changes: {0}")]
    Wedged(String),
}

/// Progress of a round's pull, for UIs: `cursor` of `latest`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PullProgress {
    /// Changes applied so far in this round.
    pub applied: u64,
    /// Where the pull is.
    pub cursor: u64,
    /// Where it is going.
    pub latest: u64,
}

/// What a round did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RoundReport {
    /// Mutations the cloud settled.
    pub pushed: u64,
    /// Pulled changes applied locally.
    pub pulled: u64,
    /// What the player should be told (conflicts, rejections, resets).
    pub notices: Vec<String>,
}

/// Pushes until the outbox is empty (or `batch` rows at a time), then pulls
/// until current, calling `progress` after each page.
pub async fn run_round<R: Replica, T: Transport>(
    replica: &R,
    transport: &T,
    batch: usize,
    mut progress: impl FnMut(PullProgress) + Send,
) -> Result<RoundReport, RoundError<R::Error>> {
    let batch = batch.clamp(1, MAX_PUSH_MUTATIONS);
    let mut report = RoundReport::default();
    let mut renumbered = false;
    loop {
        let state = replica.state().await.map_err(RoundError::Local)?;
        let mutations = replica.pending(batch).await.map_err(RoundError::Local)?;
        if mutations.is_empty() {
            break;
        }
        let request = PushRequest {
            client_id: state.client_id,
            mutations,
        };
        match transport.push(&request).await {
            Ok(response) => {
                let settled = request
                    .mutations
                    .iter()
                    .filter(|m| m.mutation_id <= response.last_mutation_id)
                    .count();
                if settled == 0 {
                    return Err(RoundError::Wedged(format!(
                        "the cloud settled nothing of a push starting at mutation {}",
                        request.mutations[0].mutation_id
                    )));
                }
                report.pushed += settled as u64;
                let notices = replica
                    .acknowledge(response)
                    .await
                    .map_err(RoundError::Local)?;
                report.notices.extend(notices);
            }
            Err(e @ (TransportError::ClientStateNotFound(_) | TransportError::MutationGap(_))) => {
                if renumbered {
                    return Err(RoundError::Wedged(e.to_string()));
                }
                tracing::info!("sync: {e}; renumbering the outbox under a new client id");
                replica.renumber().await.map_err(RoundError::Local)?;
                renumbered = true;
            }
            Err(e @ TransportError::MutationIdReused(_)) => {
                if renumbered {
                    return Err(RoundError::Wedged(e.to_string()));
                }
                tracing::info!("sync: {e}; a new client id, and everything pulled again");
                replica
                    .renumber_and_pull_all()
                    .await
                    .map_err(RoundError::Local)?;
                report.notices.push(
                    "This device's data is an older copy of itself; what it made since is sent under a new name and what the newer copy made comes back".into(),
                );
                renumbered = true;
            }
            Err(e) => return Err(e.into()),
        }
    }
    let mut resets = 0;
    loop {
        let state = replica.state().await.map_err(RoundError::Local)?;
        let page = transport
            .pull(&state.client_id, state.cursor, state.chain, None)
            .await?;
        if page.reset {
            resets += 1;
            if resets > 1 {
                return Err(RoundError::Wedged(
                    "the cloud asked for a reset twice in a row".into(),
                ));
            }
            if state.cursor > page.latest {
                // Not a device that was away: the cloud went back in time
                // and lost galaxies only this device may still hold. Wiping
                // them, as a reset does, would lose them everywhere.
                replica.resend_all().await.map_err(RoundError::Local)?;
                report.notices.push(
                    "The cloud lost changes it had confirmed (restored from a backup?); this device sends its galaxies again".into(),
                );
                continue;
            }
            replica.reset().await.map_err(RoundError::Local)?;
            report.notices.push(
                "This device was away longer than the cloud keeps deletions; its galaxies were reloaded from the cloud".into(),
            );
            continue;
        }
        let (cursor, latest, more) = (page.cursor, page.latest, page.has_more);
        let applied = replica.apply_pull(page).await.map_err(RoundError::Local)?;
        report.pulled += applied as u64;
        progress(PullProgress {
            applied: report.pulled,
            cursor,
            latest,
        });
        if !more {
            return Ok(report);
        }
    }
}
