//! The engine's public error type.

use crate::store::StoreError;
use crate::types::{InstanceId, RuntimeStatus};

/// What can go wrong when calling the engine. Adapters map these to their
/// own vocabulary (HTTP status codes, UI messages).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An instance id that breaks the id rules.
    #[error("invalid instance id '{0}': use 1 to 256 characters, none of / \\ # ? or control characters, and not . or ..")]
    InvalidInstanceId(String),
    /// No orchestration with this name is registered.
    #[error("no orchestration named '{0}' is registered")]
    UnknownOrchestration(String),
    /// A live instance already has this id.
    #[error("instance '{0}' already exists and is not finished")]
    Conflict(InstanceId),
    /// No such instance.
    #[error("instance '{0}' not found")]
    NotFound(InstanceId),
    /// The instance is finished and takes no more requests of this kind.
    #[error("instance '{0}' is already finished")]
    Finished(InstanceId),
    /// The instance's status does not allow the request.
    #[error("instance '{instance_id}' is {status}: {what}")]
    Precondition {
        /// The instance.
        instance_id: InstanceId,
        /// Its status.
        status: RuntimeStatus,
        /// What the request needs.
        what: &'static str,
    },
    /// A value could not be serialized to JSON.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// A wait ran out of time.
    #[error("timed out waiting for instance '{0}'")]
    Timeout(InstanceId),
    /// The engine is shutting down.
    #[error("the engine is shutting down")]
    ShuttingDown,
    /// The store failed.
    #[error(transparent)]
    Store(StoreError),
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(id) => Error::Conflict(id),
            StoreError::NotFound(id) => Error::NotFound(id),
            StoreError::Finished(id) => Error::Finished(id),
            StoreError::Precondition(instance_id, status, what) => Error::Precondition {
                instance_id,
                status,
                what,
            },
            other => Error::Store(other),
        }
    }
}
