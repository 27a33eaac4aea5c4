//! The agent's Grafana dashboard only queries metrics the agent exports.

use ember_agent::stream::metrics::METRIC_NAMES;

#[test]
fn the_dashboard_uses_only_exported_metrics() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../dashboards/ember-agent.json");
    let text = std::fs::read_to_string(path).expect("dashboard present");
    let json: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    let mut seen = std::collections::HashSet::new();
    for panel in json["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            for word in
                expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).filter(|w| w.starts_with("ember_"))
            {
                assert!(METRIC_NAMES.contains(&word), "{word} in {path} is not an exported metric");
                seen.insert(word);
            }
        }
    }
    assert_eq!(seen.len(), METRIC_NAMES.len(), "every metric appears on the dashboard");
}
