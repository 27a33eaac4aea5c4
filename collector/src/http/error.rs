//! API errors as JSON: `{"error": "...", "param": "from"}`. Bad input is a 400 that names the
//! parameter; storage trouble is a 503. User input never produces a 500.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use crate::store::StoreError;

#[derive(Debug)]
pub enum ApiError {
    BadParam { param: &'static str, message: String },
    NotFound(String),
    Unavailable(String),
}

impl ApiError {
    pub fn bad(param: &'static str, message: impl Into<String>) -> Self {
        ApiError::BadParam { param, message: message.into() }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        tracing::error!("query failed: {e}");
        ApiError::Unavailable(format!("the store could not answer: {e}"))
    }
}

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
        };
        (status, Json(Body { error: message, param })).into_response()
    }
}
