//! The web view, compiled into the binary: `cargo build` alone gives a collector that serves
//! the whole UI, with no npm step. Every response carries a Content-Security-Policy that
//! forbids inline script, so a function named `<script>…` in a profile can never run.

use axum::http::header;
use axum::response::{IntoResponse, Response};

const INDEX: &str = include_str!("../../web/index.html");
const APP: &str = include_str!("../../web/app.js");
const FLAME: &str = include_str!("../../web/flame.js");
const TIMELINE: &str = include_str!("../../web/timeline.js");
const STYLE: &str = include_str!("../../web/style.css");
const UPLOT_JS: &str = include_str!("../../web/vendor/uPlot.iife.min.js");
const UPLOT_CSS: &str = include_str!("../../web/vendor/uPlot.min.css");

pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                       connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

const FAVICON: &str = r##"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 16 16"><path d="M8 1c1 3 5 5 5 9a5 5 0 0 1-10 0c0-2 1-3 2-4 0 2 1 3 2 3-1-3 0-6 1-8z" fill="#ff7a1a"/></svg>"##;

pub async fn favicon() -> Response {
    asset("image/svg+xml", FAVICON)
}

pub async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX)
}

pub async fn app_js() -> Response {
    asset("text/javascript; charset=utf-8", APP)
}

pub async fn flame_js() -> Response {
    asset("text/javascript; charset=utf-8", FLAME)
}

pub async fn timeline_js() -> Response {
    asset("text/javascript; charset=utf-8", TIMELINE)
}

pub async fn style_css() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}

pub async fn uplot_js() -> Response {
    asset("text/javascript; charset=utf-8", UPLOT_JS)
}

pub async fn uplot_css() -> Response {
    asset("text/css; charset=utf-8", UPLOT_CSS)
}
