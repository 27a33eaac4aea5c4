//! The collector's HTTP side: the query API (and the web view in a later stage).

pub mod api;
pub mod error;

use axum::routing::get;
use axum::Router;

pub use api::AppState;

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/api/v1/targets", get(api::targets))
        .route("/api/v1/profile", get(api::profile))
        .route("/api/v1/series", get(api::series))
        .route("/api/v1/diff", get(api::diff))
        .route("/metrics", get(api::metrics))
        .route("/healthz", get(api::healthz))
        .route("/readyz", get(api::readyz))
        .fallback(api::not_found)
        .with_state(state)
}
