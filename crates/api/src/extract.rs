//! Request extractors whose rejections are `{"message"}` errors naming what was wrong, instead of
//! axum's plain-text defaults.

use std::collections::HashMap;

use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::request::Parts;
use bytes::Bytes;
use serde_json::{Map, Value};

use crate::error::ApiError;

/// A JSON object body; an empty body reads as `{}` (the official client sends no body when a
/// call has no arguments, e.g. a password reset).
#[derive(Debug, Default)]
pub struct JsonObject(pub Map<String, Value>);

impl<S: Send + Sync> FromRequest<S> for JsonObject {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|e| ApiError::BadRequest(format!("cannot read request body: {e}")))?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(JsonObject(Map::new()));
        }
        let v: Value = serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::BadRequest(format!("malformed JSON body: {e}")))?;
        match v {
            Value::Object(m) => Ok(JsonObject(m)),
            _ => Err(ApiError::BadRequest(
                "request body must be a JSON object".to_string(),
            )),
        }
    }
}

/// The path parameters by name (already percent-decoded).
#[derive(Debug)]
pub struct Params(pub HashMap<String, String>);

impl Params {
    /// A parameter the route guarantees.
    pub fn get(&self, name: &str) -> Result<&str, ApiError> {
        self.0
            .get(name)
            .map(String::as_str)
            .ok_or_else(|| ApiError::Internal(format!("route lacks parameter {name}")))
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Params {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Path::<HashMap<String, String>>::from_request_parts(parts, state)
            .await
            .map(|Path(m)| Params(m))
            .map_err(|e| ApiError::BadRequest(format!("invalid path parameter: {e}")))
    }
}
