//! [`Transport`]: how a sync round reaches the cloud's push and pull.
//!
//! [`crate::client::CloudApi`] is the transport over HTTP; the cloud's own
//! store can serve as one in-process (tests of the protocol), which is why
//! the round ([`crate::round`]) is written against this trait.

use std::future::Future;

use crate::protocol::{Chain, PullResponse, PushRequest, PushResponse};

/// Why a push or pull failed, as far as the round needs to tell.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    /// The cloud has no state for this client id: renumber and push again.
    #[error("the cloud does not know this client: {0}")]
    ClientStateNotFound(String),
    /// The cloud expects an earlier mutation id than the outbox holds.
    #[error("mutation gap: {0}")]
    MutationGap(String),
    /// The cloud settled the outbox's mutation ids for other changes (this
    /// device's data is an older copy): renumber under a new client id and
    /// pull from 0.
    #[error("mutation ids reused: {0}")]
    MutationIdReused(String),
    /// The token is missing, wrong or revoked.
    #[error("the cloud refused this device's token (revoked, or the cloud's data was reset): {0}")]
    Unauthorized(String),
    /// The cloud refused the request for another reason (a bug, or a
    /// server older or newer than this client).
    #[error("the cloud answered HTTP {status} {code}: {message}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// The error code.
        code: String,
        /// Its message.
        message: String,
    },
    /// The cloud could not be reached, or failed inside (5xx): try later.
    #[error("{0}")]
    Unavailable(String),
}

impl TransportError {
    /// Worth retrying later as is (the network, a 5xx).
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
}

/// Push and pull, for one device.
pub trait Transport: Send + Sync {
    /// `POST /api/sync/push`.
    fn push(
        &self,
        request: &PushRequest,
    ) -> impl Future<Output = Result<PushResponse, TransportError>> + Send;

    /// `GET /api/sync/pull`, in `chain` (see [`Chain`]).
    fn pull(
        &self,
        client_id: &str,
        cursor: u64,
        chain: Chain,
        limit: Option<usize>,
    ) -> impl Future<Output = Result<PullResponse, TransportError>> + Send;
}
