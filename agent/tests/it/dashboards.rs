//! The agent's Grafana dashboard queries every metric the agent exports, and nothing else. The
//! names come from what the registry encodes, not from a list kept by hand.

use ember_agent::stream::metrics::AgentMetrics;

#[test]
fn the_dashboard_uses_only_exported_metrics() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../dashboards/ember-agent.json");
    ember_testkit::check_dashboard(path, &AgentMetrics::new().encode());
}
