//! `config/grafana-dashboard.json`: valid JSON Grafana imports (its datasource an input, every
//! panel with a query), and every series its queries name is one the node registers (a family
//! appears on `/metrics` once it has a series: the tunnel ones are checked on a live pair).

mod common;

use serde_json::Value;

use common::*;

#[test]
fn the_grafana_dashboard_queries_only_series_the_node_serves() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/grafana-dashboard.json"
    ))
    .expect("read");
    let dash: Value = serde_json::from_str(&text).expect("valid JSON");
    assert_eq!(dash["__inputs"][0]["pluginId"], "prometheus");
    assert!(dash["uid"].is_string() && dash["title"].is_string());
    let panels = dash["panels"].as_array().expect("panels");
    assert!(panels.len() >= 10);
    // The families are registered in these two files (`build` in the first).
    let registered = [
        concat!(env!("CARGO_MANIFEST_DIR"), "/actors/src/metrics/mod.rs"),
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/actors/src/metrics/register.rs"
        ),
    ]
    .map(|path| std::fs::read_to_string(path).expect("metrics source"))
    .concat();
    let (a, b) = (Node::start(), Node::start());
    let echo = Backend::echo();
    let web = wire(&a, &b, echo.addr, None);
    let data = pattern(1000, 1);
    assert_eq!(roundtrip(web, &data), data);
    let (status, _, metrics) = http_text(a.admin, "GET", "/metrics", "", "");
    assert_eq!(status, 200);
    let mut named = 0;
    for p in panels {
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "panel {} has no query", p["title"]);
        for t in targets {
            let expr = t["expr"].as_str().expect("expr");
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if !word.starts_with("menet_") {
                    continue;
                }
                named += 1;
                let family = word.strip_suffix("_total").unwrap_or(word);
                let family = family.strip_suffix("_info").unwrap_or(family);
                let name = family.trim_start_matches("menet_");
                assert!(
                    registered.contains(&format!("\"{name}\"")),
                    "{word} (panel {}) is not a series menet registers",
                    p["title"]
                );
                if name.starts_with("tunnel_") || name.starts_with("service_sent") {
                    assert!(
                        metrics.contains(&format!("# TYPE {family} ")),
                        "{word} (panel {}) is not on a live node's /metrics",
                        p["title"]
                    );
                }
            }
        }
    }
    assert!(named >= 20);
}
