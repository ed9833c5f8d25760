//! The deployment and the docs agree with the binary: every alert expression in the
//! PrometheusRule parses as PromQL, and every `webhook_relay_*` metric that the alerts,
//! README.md or docs/operations.md name is one the gateway exports.

use std::path::Path;

fn read(rel: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)).unwrap()
}

fn metric_names(text: &str) -> Vec<String> {
    let re = regex::Regex::new(r"webhook_relay_[a-z_]+").unwrap();
    let mut names: Vec<String> = re.find_iter(text).map(|m| m.as_str().trim_end_matches('_').to_string()).collect();
    names.sort();
    names.dedup();
    names
}

/// Family names as /metrics declares them (`# TYPE name kind`); counters' samples add `_total`.
fn exported() -> Vec<String> {
    let rendered = webhook_relay::metrics::Metrics::new().render();
    rendered
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .map(str::to_string)
        .collect()
}

fn is_exported(name: &str, exported: &[String]) -> bool {
    let base = name.strip_suffix("_total").unwrap_or(name);
    let base = ["_bucket", "_sum", "_count"].iter().fold(base, |b, s| b.strip_suffix(s).unwrap_or(b));
    exported.iter().any(|e| e == base)
}

#[test]
fn alert_expressions_parse_and_name_real_metrics() {
    let rules = read("deploy/kubernetes/components/monitoring/prometheusrule.yaml");
    let exprs: Vec<&str> = rules.lines().filter_map(|l| l.trim().strip_prefix("expr:")).map(str::trim).collect();
    assert!(exprs.len() >= 5, "found {} alert expressions", exprs.len());
    let exported = exported();
    for expr in exprs {
        promql_parser::parser::parse(expr).unwrap_or_else(|e| panic!("alert expression does not parse: {expr}\n{e}"));
        for name in metric_names(expr) {
            assert!(is_exported(&name, &exported), "alert uses {name}, which /metrics does not export");
        }
    }
}

#[test]
fn docs_name_only_real_metrics() {
    let exported = exported();
    assert!(exported.len() > 20, "{exported:?}");
    for doc in ["README.md", "docs/operations.md"] {
        let names = metric_names(&read(doc));
        assert!(names.len() >= 3, "{doc}: {names:?}");
        for name in names {
            assert!(is_exported(&name, &exported), "{doc} mentions {name}, which /metrics does not export");
        }
    }
}

#[test]
fn a_broken_expression_is_caught() {
    // The check above can fail: an unbalanced expression is refused by the parser.
    assert!(promql_parser::parser::parse("sum(rate(webhook_relay_dead_letters_total[5m])").is_err());
    assert!(!is_exported("webhook_relay_no_such_metric", &exported()));
}
