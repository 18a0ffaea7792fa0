//! The API's one error type: every failure becomes `{"message": "..."}` with its status here, and
//! internal errors are logged with their detail but answered with a generic message.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use pgbay_control::ControlError;

/// An API failure and its HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: invalid input (the message names the field).
    #[error("{0}")]
    BadRequest(String),
    /// 403: missing, wrong or expired signature.
    #[error("{0}")]
    Forbidden(String),
    /// 404: missing object or endpoint.
    #[error("{0}")]
    NotFound(String),
    /// 405: endpoint exists, method does not.
    #[error("{0}")]
    MethodNotAllowed(String),
    /// 409: conflict with existing state.
    #[error("{0}")]
    Conflict(String),
    /// 501: an endpoint of the document that pgbay does not serve.
    #[error("{0}")]
    NotImplemented(String),
    /// 500: internal; the detail is logged only.
    #[error("{0}")]
    Internal(String),
}

impl From<ControlError> for ApiError {
    fn from(e: ControlError) -> Self {
        match e {
            ControlError::Invalid(i) => ApiError::BadRequest(crate::requests::message(&i)),
            ControlError::NotFound(m) => ApiError::NotFound(m),
            ControlError::Conflict(m) => ApiError::Conflict(m),
            ControlError::Internal(m) => ApiError::Internal(m),
        }
    }
}

impl From<pgbay_control::InputError> for ApiError {
    fn from(e: pgbay_control::InputError) -> Self {
        ApiError::BadRequest(crate::requests::message(&e))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, message) = match self {
            ApiError::BadRequest(m) => (StatusCode::BAD_REQUEST, m),
            ApiError::Forbidden(m) => (StatusCode::FORBIDDEN, m),
            ApiError::NotFound(m) => (StatusCode::NOT_FOUND, m),
            ApiError::MethodNotAllowed(m) => (StatusCode::METHOD_NOT_ALLOWED, m),
            ApiError::Conflict(m) => (StatusCode::CONFLICT, m),
            ApiError::NotImplemented(m) => (StatusCode::NOT_IMPLEMENTED, m),
            ApiError::Internal(detail) => {
                tracing::error!(error = %detail, "internal error");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal error, see the pgbay log".to_string(),
                )
            }
        };
        (status, Json(serde_json::json!({ "message": message }))).into_response()
    }
}
