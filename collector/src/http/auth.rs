//! The optional bearer token of the HTTP API (`--http-token`), for a collector reachable
//! without a proxy. API clients send `Authorization: Bearer <token>`. A browser opens
//! `/?token=<token>` once: the collector answers with an `HttpOnly`, `SameSite=Strict` cookie
//! and a redirect to `/` (so the token leaves the address bar), and the web view's requests
//! carry the cookie. `/healthz`, `/readyz`, `/metrics` and the web view's static files stay
//! open: they hold no profile data.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;

const COOKIE: &str = "ember_token";

/// The token, if the API has one.
#[derive(Debug, Clone, Default)]
pub struct HttpToken(pub Option<Arc<str>>);

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn presented(headers: &HeaderMap) -> Option<String> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string);
    bearer.or_else(|| {
        headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(';')).find_map(
            |pair| {
                let (k, v) = pair.trim().split_once('=')?;
                (k == COOKIE).then(|| v.to_string())
            },
        )
    })
}

/// A token from `?token=` in the query string.
fn query_token(request: &Request) -> Option<String> {
    request.uri().query()?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == "token").then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn open_path(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz" | "/metrics" | "/favicon.svg" | "/favicon.ico")
        || path.starts_with("/assets/")
}

fn unauthorized(message: &str) -> Response {
    let mut response = (StatusCode::UNAUTHORIZED, Json(serde_json::json!({ "error": message }))).into_response();
    response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

pub async fn require(State(token): State<HttpToken>, request: Request, next: Next) -> Response {
    let Some(expected) = token.0.as_deref() else { return next.run(request).await };
    let path = request.uri().path().to_string();
    if open_path(&path) {
        return next.run(request).await;
    }
    if path == "/" {
        if let Some(given) = query_token(&request) {
            if !constant_time_eq(given.as_bytes(), expected.as_bytes()) {
                return unauthorized("wrong token");
            }
            // Only characters a cookie value may hold; anything else stays a header-only token.
            let cookie = format!("{COOKIE}={given}; Path=/; HttpOnly; SameSite=Strict");
            let Ok(cookie) = HeaderValue::from_str(&cookie) else {
                return unauthorized("this token cannot be a cookie; use a proxy or the Authorization header");
            };
            return (
                StatusCode::SEE_OTHER,
                [(header::SET_COOKIE, cookie), (header::LOCATION, HeaderValue::from_static("/"))],
            )
                .into_response();
        }
    }
    match presented(request.headers()) {
        Some(given) if constant_time_eq(given.as_bytes(), expected.as_bytes()) => next.run(request).await,
        Some(_) => unauthorized("wrong token"),
        None => unauthorized(
            "this collector needs a token: send `Authorization: Bearer <token>`, or open /?token=<token> once in a browser",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_found_in_the_header_or_the_cookie() {
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_static("a=b; ember_token=t0k; c=d"));
        assert_eq!(presented(&h).as_deref(), Some("t0k"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer other"));
        assert_eq!(presented(&h).as_deref(), Some("other"));
        assert_eq!(percent_decode("a%2Fb+c%"), "a/b c%");
        assert!(!constant_time_eq(b"abc", b"abd"));
    }
}
