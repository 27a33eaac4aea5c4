//! API errors as JSON: `{"error": "...", "param": "from"}`. Bad input is a 400 that names the
//! parameter; storage trouble is a 503. User input never produces a 500.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use crate::store::StoreError;

#[derive(Debug)]
pub enum ApiError {
    BadParam {
        param: &'static str,
        message: String,
    },
    NotFound(String),
    Unavailable(String),
    /// A query bound is full: 503 with `Retry-After`.
    Busy(String),
}

impl ApiError {
    pub fn bad(param: &'static str, message: impl Into<String>) -> Self {
        ApiError::BadParam { param, message: message.into() }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Busy(m) => {
                tracing::debug!("query refused: {m}");
                ApiError::Busy(m)
            }
            e @ (StoreError::Full { .. } | StoreError::DiskFull(_)) => ApiError::Unavailable(e.to_string()),
            // Engine and file details stay in the log.
            e => {
                tracing::error!("query failed: {}", e.detail());
                ApiError::Unavailable(INTERNAL.into())
            }
        }
    }
}

/// What a client learns of a failure inside the collector.
pub const INTERNAL: &str = "the store could not answer; the collector's log says why";

#[derive(Serialize)]
struct Body<'a> {
    error: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    param: Option<&'a str>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, message, param) = match &self {
            ApiError::BadParam { param, message } => (StatusCode::BAD_REQUEST, message.as_str(), Some(*param)),
            ApiError::NotFound(m) => (StatusCode::NOT_FOUND, m.as_str(), None),
            ApiError::Unavailable(m) => (StatusCode::SERVICE_UNAVAILABLE, m.as_str(), None),
            ApiError::Busy(m) => {
                let message = format!("{m}; retry in {} s", super::limits::RETRY_AFTER_SECS);
                let mut response =
                    (StatusCode::SERVICE_UNAVAILABLE, Json(Body { error: &message, param: None })).into_response();
                response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(super::limits::RETRY_AFTER_SECS));
                return response;
            }
        };
        (status, Json(Body { error: message, param })).into_response()
    }
}
