//! The collector's Grafana dashboard queries every metric the collector exports, and nothing else.

use ember_collector::metrics::METRIC_NAMES;

#[test]
fn the_dashboard_uses_only_exported_metrics() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../dashboards/ember-collector.json");
    let used = ember_testkit::dashboard_metrics(path);
    for name in &used {
        assert!(METRIC_NAMES.contains(&name.as_str()), "{name} in {path} is not an exported metric");
    }
    assert_eq!(used.len(), METRIC_NAMES.len(), "every metric appears on the dashboard");
}
