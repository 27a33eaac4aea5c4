//! The collector's Grafana dashboard queries every metric the collector exports, and nothing
//! else. The names come from what the registry encodes, not from a list kept by hand.

use ember_collector::metrics::Metrics;

#[test]
fn the_dashboard_uses_only_exported_metrics() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../dashboards/ember-collector.json");
    ember_testkit::check_dashboard(path, &Metrics::new().encode());
}
