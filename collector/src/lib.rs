//! ember-collector: receives batches from agents over gRPC, stores them durably, and serves
//! flame graphs, time series and diffs over HTTP.
//!
//! Stages (see ARCHITECTURE.md): [`ingest`] (gRPC, validation, auth) → [`store`] (the
//! [`store::Store`] trait and its embedded redb backend) → [`query`] (selectors, time ranges,
//! trees) → [`http`] (the API). [`server`] wires them together.

pub mod cli;
pub mod http;
pub mod ingest;
pub mod metrics;
mod net;
pub mod query;
pub mod server;
pub mod store;
