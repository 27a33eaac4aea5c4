//! The collector's HTTP side: the query API and the web view.

pub mod api;
mod auth;
pub(crate) mod error;
mod limits;
mod serve;
pub(crate) mod timeline;
pub(crate) mod web;

use axum::routing::get;
use axum::Router;

pub use api::AppState;
pub use auth::HttpToken;
pub use limits::QueryLimits;
pub use serve::{serve, HttpLimits};

/// The API and web view, behind the token when there is one.
pub fn router(state: AppState, token: HttpToken) -> Router {
    Router::new()
        .route("/", get(web::index))
        .route("/favicon.svg", get(web::favicon))
        .route("/favicon.ico", get(web::favicon))
        .route("/assets/app.js", get(web::app_js))
        .route("/assets/flame.js", get(web::flame_js))
        .route("/assets/timeline.js", get(web::timeline_js))
        .route("/assets/style.css", get(web::style_css))
        .route("/assets/vendor/uPlot.iife.min.js", get(web::uplot_js))
        .route("/assets/vendor/uPlot.min.css", get(web::uplot_css))
        .route("/api/v1/targets", get(api::targets))
        .route("/api/v1/profile", get(api::profile))
        .route("/api/v1/series", get(api::series))
        .route("/api/v1/diff", get(api::diff))
        .route("/api/v1/timeline", get(timeline::timeline))
        .route("/metrics", get(api::metrics))
        .route("/healthz", get(api::healthz))
        .route("/readyz", get(api::readyz))
        .fallback(api::not_found)
        .with_state(state)
        .layer(axum::middleware::from_fn_with_state(token, auth::require))
}
