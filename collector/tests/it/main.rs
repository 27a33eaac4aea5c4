//! The collector's integration tests, one binary so they link once: a real collector on
//! loopback, the real agent, real Python targets, a real browser.

// Each test module uses its own share of the helpers.
#[allow(dead_code)]
mod common;

mod api;
mod clickhouse;
mod clickhouse_cluster;
mod dashboards;
mod hostile_ingest;
mod hostile_net;
mod hostile_query;
mod hostile_store;
mod kubernetes_e2e;
mod prop_input;
mod prop_tree;
mod stream_e2e;
mod tasks_e2e;
mod web;
