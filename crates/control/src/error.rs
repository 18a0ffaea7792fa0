//! The control plane's error: one variant per answer the API gives (400, 404, 409, 500), so the
//! HTTP mapping lives in one place and internal details stay out of client messages.

use pgbay_cluster::admin::AdminError;
use tokio_postgres::error::SqlState;

use crate::input::InputError;

/// Why a control-plane call failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The input broke a limit of the document (400).
    #[error(transparent)]
    Invalid(#[from] InputError),
    /// A named object does not exist (404).
    #[error("{0}")]
    NotFound(String),
    /// The call conflicts with existing state (409).
    #[error("{0}")]
    Conflict(String),
    /// Something broke inside pgbay (500); the text is logged, never sent.
    #[error("internal: {0}")]
    Internal(String),
}

impl ControlError {
    /// Shorthand for an internal error from anything displayable.
    pub fn internal(e: impl std::fmt::Display) -> Self {
        ControlError::Internal(e.to_string())
    }

    /// Maps a failed administrative statement: the server's refusals that the user caused become
    /// 400/409, the rest is internal.
    pub fn from_admin(e: AdminError, what: &str) -> Self {
        let code = e.code().cloned();
        let msg = e.server_message().unwrap_or_default();
        match code {
            Some(c) if c == SqlState::DUPLICATE_OBJECT || c == SqlState::DUPLICATE_DATABASE => {
                ControlError::Conflict(format!("{what}: {msg}"))
            }
            Some(c)
                if c == SqlState::DEPENDENT_OBJECTS_STILL_EXIST || c == SqlState::OBJECT_IN_USE =>
            {
                ControlError::Conflict(format!("{what}: {msg}"))
            }
            Some(c)
                if c == SqlState::RESERVED_NAME
                    || c == SqlState::INVALID_NAME
                    || c == SqlState::WRONG_OBJECT_TYPE
                    || c == SqlState::INVALID_PARAMETER_VALUE =>
            {
                ControlError::Invalid(InputError::whole(format!("{what}: {msg}")))
            }
            _ => ControlError::Internal(format!("{what}: {e}")),
        }
    }
}

macro_rules! internal_from {
    ($($t:ty),*) => {$(
        impl From<$t> for ControlError {
            fn from(e: $t) -> Self {
                ControlError::Internal(e.to_string())
            }
        }
    )*};
}

internal_from!(
    crate::store::StoreError,
    crate::crypto::CryptoError,
    pgbay_cluster::ProvisionError,
    crate::ca::CaError,
    sqlx::Error,
    tokio::task::JoinError
);
