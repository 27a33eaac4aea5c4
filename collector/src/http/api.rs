//! `/api/v1/*`, `/metrics`, `/healthz`, `/readyz`. Documented in `docs/API.md`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use ember_profile::export::{self, Format, Meta};
use ember_profile::view::{default_view_by, View};
use serde::Serialize;

use super::error::ApiError;
use crate::metrics::Metrics;
use crate::query::tasks::TaskFilter;
use crate::query::{self, parse_range, Selector, TimeRange};
use crate::store::{StackCounts, Store, StoreError};

#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub metrics: Arc<Metrics>,
    pub queries: Arc<super::QueryLimits>,
}

impl AppState {
    /// A query slot, or 503 with Retry-After (counted) when the query bounds are full.
    pub(super) fn enter(&self, endpoint: &'static str) -> Result<super::limits::QuerySlot, ApiError> {
        self.queries.enter(endpoint, &self.metrics)
    }
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState").field("disk_bytes", &self.store.disk_bytes()).finish()
    }
}

pub(super) type Params = Query<HashMap<String, String>>;

pub(super) fn param<'a>(params: &'a HashMap<String, String>, name: &str) -> Option<&'a str> {
    params.get(name).map(String::as_str).filter(|v| !v.is_empty())
}

pub(super) fn selector(params: &HashMap<String, String>, name: &'static str) -> Result<Selector, ApiError> {
    Selector::parse(param(params, name).unwrap_or(""))
        .map_err(|e| ApiError::bad(name, format!("invalid selector: {e}")))
}

pub(super) fn range(
    params: &HashMap<String, String>,
    from: &'static str,
    to: &'static str,
) -> Result<TimeRange, ApiError> {
    parse_range(param(params, from), param(params, to), query::now_ms())
        .map_err(|(which, message)| ApiError::bad(if which == "from" { from } else { to }, message))
}

fn flag(params: &HashMap<String, String>, name: &'static str) -> Result<bool, ApiError> {
    match param(params, name) {
        None | Some("false") | Some("0") => Ok(false),
        Some("true") | Some("1") => Ok(true),
        Some(other) => Err(ApiError::bad(name, format!("{other:?} is not true or false"))),
    }
}

pub(super) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, crate::store::StoreError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| {
            // A panic's text stays in the log.
            tracing::error!("a query task failed: {e}");
            ApiError::Unavailable(super::error::INTERNAL.into())
        })?
        .map_err(ApiError::from)
}

/// Stack counts for a selector that may hold `task`/`task_id` matchers, which select samples
/// by the task running when they were taken rather than series; by function unless `lines`.
pub fn stack_counts(
    store: &dyn Store,
    mut selector: Selector,
    range: TimeRange,
    lines: bool,
) -> Result<StackCounts, StoreError> {
    let counts = match TaskFilter::split(&mut selector) {
        Some(filter) => query::tasks::stack_counts(store, &selector, &filter, range),
        None => store.stack_counts(&selector, range),
    }?;
    Ok(if lines { counts } else { query::lines::without_lines(counts) })
}

/// The view the exports read: the default view unless `native` is set. The store's frames are
/// distinct already, so the view takes them and their indexes as they are.
pub fn build_view(counts: &StackCounts, native: bool) -> View {
    let stacks = counts.stacks.iter().map(|(ids, count)| {
        let kept = if native {
            ids.to_vec()
        } else {
            default_view_by(ids, |&i| &counts.frames[i as usize]).copied().collect()
        };
        (kept, *count)
    });
    View::from_indexed(counts.frames.to_vec(), stacks)
}

#[derive(Serialize)]
struct Target {
    labels: BTreeMap<String, String>,
    first_seen_ms: i64,
    last_seen_ms: i64,
    samples: u64,
}

pub async fn targets(State(state): State<AppState>, Query(params): Params) -> Result<Response, ApiError> {
    let started = Instant::now();
    let selector = selector(&params, "query")?;
    let range = range(&params, "from", "to")?;
    let store = state.store.clone();
    let slot = state.enter("targets")?;
    let mut series = slot.run(move || store.series(&selector, range)).await?;
    series.sort_by_key(|s| std::cmp::Reverse(s.last_seen_ms));
    let targets: Vec<Target> = series
        .into_iter()
        .map(|s| Target {
            labels: s.labels,
            first_seen_ms: s.first_seen_ms,
            last_seen_ms: s.last_seen_ms,
            samples: s.samples,
        })
        .collect();
    state.metrics.observe_query("targets", started.elapsed().as_secs_f64());
    Ok(Json(serde_json::json!({ "targets": targets })).into_response())
}

fn format_param(params: &HashMap<String, String>, allowed: &[&str]) -> Result<String, ApiError> {
    let format = param(params, "format").unwrap_or("json");
    if allowed.contains(&format) {
        Ok(format.to_string())
    } else {
        Err(ApiError::bad("format", format!("unknown format {format:?}; choose one of {}", allowed.join(", "))))
    }
}

fn rate_param(params: &HashMap<String, String>) -> Result<u64, ApiError> {
    match param(params, "rate_hz") {
        None => Ok(99),
        Some(v) => {
            v.parse().ok().filter(|&r| r > 0).ok_or_else(|| ApiError::bad("rate_hz", "must be a positive integer"))
        }
    }
}

fn export_response(format: Format, view: &View, meta: &Meta) -> Result<Response, ApiError> {
    let mut body = Vec::new();
    export::write(format, view, meta, &mut body)
        .map_err(|e| ApiError::Unavailable(format!("rendering failed: {e}")))?;
    let mut response = ([(header::CONTENT_TYPE, format.content_type())], body).into_response();
    if let Some(name) = format.download_name() {
        if let Ok(value) = format!("attachment; filename=\"{name}\"").parse() {
            response.headers_mut().insert(header::CONTENT_DISPOSITION, value);
        }
    }
    Ok(response)
}

/// `{<fields>, "tree": …}`, the tree as flat arrays.
fn tree_response(fields: &[(&str, String)], tree: &query::tree::FlameTree) -> Response {
    let mut body = Vec::with_capacity(tree.len() * 24 + 128);
    body.push(b'{');
    for (name, value) in fields {
        body.extend_from_slice(format!("\"{name}\":{value},").as_bytes());
    }
    body.extend_from_slice(b"\"tree\":");
    tree.write_json(&mut body);
    body.push(b'}');
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

pub async fn profile(State(state): State<AppState>, Query(params): Params) -> Result<Response, ApiError> {
    let started = Instant::now();
    let selector = selector(&params, "query")?;
    let range = range(&params, "from", "to")?;
    let format = format_param(&params, &["json", "collapsed", "svg", "pprof", "speedscope"])?;
    let native = flag(&params, "native")?;
    let lines = flag(&params, "lines")?;
    let rate_hz = rate_param(&params)?;
    let store = state.store.clone();
    let slot = state.enter("profile")?;
    let counts = slot.run(move || stack_counts(store.as_ref(), selector, range, lines)).await?;
    let response = if format == "json" {
        let fields = [
            ("from", range.from_ms.to_string()),
            ("to", range.to_ms.to_string()),
            ("total", counts.total().to_string()),
        ];
        tree_response(&fields, &query::tree::tree(&counts, native))
    } else {
        let view = build_view(&counts, native);
        let format: Format = format.parse().map_err(|e: String| ApiError::bad("format", e))?;
        let meta = Meta {
            target: param(&params, "query").unwrap_or("{}").to_string(),
            duration_secs: range.duration_ms() as f64 / 1000.0,
            rate_hz,
            start_unix_nanos: range.from_ms.saturating_mul(1_000_000),
        };
        export_response(format, &view, &meta)?
    };
    state.metrics.observe_query("profile", started.elapsed().as_secs_f64());
    Ok(response)
}

pub async fn series(State(state): State<AppState>, Query(params): Params) -> Result<Response, ApiError> {
    let started = Instant::now();
    let selector = selector(&params, "query")?;
    let range = range(&params, "from", "to")?;
    let step_ms = query::parse_step(param(&params, "step"), range).map_err(|e| ApiError::bad("step", e))?;
    let store = state.store.clone();
    let mut selector = selector;
    let slot = state.enter("series")?;
    let points = slot
        .run(move || match TaskFilter::split(&mut selector) {
            Some(filter) => query::tasks::timeseries(store.as_ref(), &selector, &filter, range, step_ms),
            None => store.timeseries(&selector, range, step_ms),
        })
        .await?;
    state.metrics.observe_query("series", started.elapsed().as_secs_f64());
    Ok(Json(serde_json::json!({ "step_ms": step_ms, "points": points })).into_response())
}

pub async fn diff(State(state): State<AppState>, Query(params): Params) -> Result<Response, ApiError> {
    let started = Instant::now();
    let selector_now = selector(&params, "query")?;
    let range_now = range(&params, "from", "to")?;
    let selector_base = match param(&params, "base_query") {
        Some(_) => selector(&params, "base_query")?,
        None => selector_now.clone(),
    };
    // Without a base range, compare with the same length of time just before.
    let range_base = if param(&params, "base_from").is_some() || param(&params, "base_to").is_some() {
        range(&params, "base_from", "base_to")?
    } else {
        TimeRange { from_ms: range_now.from_ms.saturating_sub(range_now.duration_ms()), to_ms: range_now.from_ms }
    };
    let format = format_param(&params, &["json", "svg"])?;
    let native = flag(&params, "native")?;
    let lines = flag(&params, "lines")?;
    let store = state.store.clone();
    let slot = state.enter("diff")?;
    let (now, base) = slot
        .run(move || {
            Ok((
                stack_counts(store.as_ref(), selector_now, range_now, lines)?,
                stack_counts(store.as_ref(), selector_base, range_base, lines)?,
            ))
        })
        .await?;
    let response = if format == "json" {
        let fields = [("total", now.total().to_string()), ("base_total", base.total().to_string())];
        tree_response(&fields, &query::tree::diff_tree(&now, &base, native))
    } else {
        let (now, base) = (build_view(&now, native), build_view(&base, native));
        let title = format!("ember diff: {} vs base", param(&params, "query").unwrap_or("{}"));
        let mut body = Vec::new();
        export::svg::write_diff(&base, &now, &title, &mut body)
            .map_err(|e| ApiError::Unavailable(format!("rendering failed: {e}")))?;
        ([(header::CONTENT_TYPE, "image/svg+xml")], body).into_response()
    };
    state.metrics.observe_query("diff", started.elapsed().as_secs_f64());
    Ok(response)
}

pub async fn metrics(State(state): State<AppState>) -> Response {
    state.metrics.storage_bytes.set(i64::try_from(state.store.disk_bytes()).unwrap_or(i64::MAX));
    let health = state.store.health();
    state.metrics.store_corrupt_records.set(i64::try_from(health.corrupt_records).unwrap_or(i64::MAX));
    state.metrics.store_failed.set(i64::from(health.failed));
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], state.metrics.encode()).into_response()
}

pub async fn healthz() -> &'static str {
    "ok\n"
}

pub async fn readyz(State(state): State<AppState>) -> Result<&'static str, ApiError> {
    let store = state.store.clone();
    let probe = Selector::default();
    blocking(move || store.series(&probe, TimeRange { from_ms: 0, to_ms: 1 })).await?;
    let health = state.store.health();
    if health.failed {
        return Err(ApiError::Unavailable(
            "degraded: the storage engine failed; restart the collector (see its log)".into(),
        ));
    }
    if health.corrupt_records > 0 {
        return Err(ApiError::Unavailable(format!(
            "degraded: {} damaged records in the store are left out of answers (see the collector's log)",
            health.corrupt_records
        )));
    }
    Ok("ready\n")
}

pub async fn not_found() -> ApiError {
    ApiError::NotFound("no such endpoint; see docs/API.md".into())
}
