//! [`CommandError`]: what a command tells the UI when it fails.

use serde::ser::SerializeStruct;
use serde::{Serialize, Serializer};

/// A failed command. Serialized as `{ "kind": "...", "message": "..." }`;
/// the UI shows `message` as it is (in a toast and on the row concerned),
/// so every message is a sentence a player can act on.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The local store is not open: still opening, or it failed to open
    /// (the message says why, e.g. another window has it).
    #[error("{0}")]
    Unavailable(String),
    /// No such instance.
    #[error("instance '{0}' no longer exists (purged?)")]
    NotFound(String),
    /// The instance's state does not allow this (e.g. purge a running one).
    #[error("{0}")]
    Rejected(String),
    /// The UI sent something invalid (an unknown status, a bad URL...).
    #[error("{0}")]
    Invalid(String),
    /// Anything else; the message comes from the failing layer.
    #[error("{0}")]
    Internal(String),
}

impl CommandError {
    /// A stable name of the variant, for the UI to branch on.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Unavailable(_) => "unavailable",
            Self::NotFound(_) => "notFound",
            Self::Rejected(_) => "rejected",
            Self::Invalid(_) => "invalid",
            Self::Internal(_) => "internal",
        }
    }
}

impl Serialize for CommandError {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut s = serializer.serialize_struct("CommandError", 2)?;
        s.serialize_field("kind", self.kind())?;
        s.serialize_field("message", &self.to_string())?;
        s.end()
    }
}

impl From<durable::Error> for CommandError {
    fn from(e: durable::Error) -> Self {
        use durable::Error as E;
        match e {
            E::NotFound(id) => Self::NotFound(id.to_string()),
            E::Finished(id) => Self::Rejected(format!(
                "instance '{id}' has already finished; only purge applies to it"
            )),
            E::Conflict(_) | E::Precondition { .. } => Self::Rejected(e.to_string()),
            E::InvalidInstanceId(_) | E::InvalidInput(_) | E::UnknownOrchestration(_) => {
                Self::Invalid(e.to_string())
            }
            E::ShuttingDown => Self::Unavailable("the app is shutting down".to_string()),
            other => Self::Internal(other.to_string()),
        }
    }
}

impl From<galaxy::TableError> for CommandError {
    fn from(e: galaxy::TableError) -> Self {
        Self::Internal(e.to_string())
    }
}

impl From<sync::SettingsError> for CommandError {
    fn from(e: sync::SettingsError) -> Self {
        match e {
            sync::SettingsError::Invalid(m) => Self::Invalid(m),
            other => Self::Internal(other.to_string()),
        }
    }
}

impl From<galaxy::DeviceError> for CommandError {
    fn from(e: galaxy::DeviceError) -> Self {
        use galaxy::{DeviceError as D, EditError as E};
        match e {
            D::Edit(E::NotFound(id)) => Self::Invalid(format!("no galaxy with id {id} here (deleted?)")),
            D::Edit(E::Invalid(m)) => Self::Invalid(m),
            D::Settings(s) => s.into(),
            D::NotRegistered => Self::Rejected(
                "this device is not linked to a cloud account yet: register it or join with a code in Settings".into(),
            ),
            D::AlreadyRegistered(_) | D::Linked { .. } => Self::Rejected(e.to_string()),
            D::Cloud(sync::TransportError::Unavailable(m)) => {
                Self::Unavailable(format!("the cloud cannot be reached: {m}"))
            }
            D::Cloud(sync::TransportError::Refused { message, .. }) => Self::Rejected(message),
            D::Cloud(c) => Self::Rejected(c.to_string()),
            other => Self::Internal(other.to_string()),
        }
    }
}
