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

#[test]
fn the_image_is_stripped_and_builds_for_any_architecture() {
    let dockerfile = read("deploy/Dockerfile");
    let code: Vec<&str> = dockerfile.lines().filter(|l| !l.trim_start().starts_with('#')).collect();
    for arch in ["x86_64", "amd64", "aarch64", "arm64"] {
        assert!(!code.iter().any(|l| l.contains(arch)), "the Dockerfile hard-codes {arch}:\n{dockerfile}");
    }
    assert!(code.iter().any(|l| l.contains("$(uname -m)-unknown-linux-musl")), "{dockerfile}");
    assert!(
        code.iter().any(|l| l.contains("CARGO_PROFILE_RELEASE_STRIP=symbols")),
        "binary not stripped:\n{dockerfile}"
    );
}

#[test]
fn the_base_runs_one_replica_until_cluster_mode() {
    let sts = read("deploy/kubernetes/base/statefulset.yaml");
    assert!(sts.lines().any(|l| l == "  replicas: 1"), "{sts}");
    assert!(read("docs/operations.md").contains("### Why one replica"));
}

#[test]
fn the_localstack_example_passes_check_as_the_guide_runs_it() {
    let bin = env!("CARGO_BIN_EXE_webhook-relay");
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/localstack/routes.toml");
    let guide = read("docs/operations.md");
    assert!(guide.contains("export SLACK_LOCAL=") && guide.contains("--config examples/localstack/routes.toml"));
    let out = std::process::Command::new(bin)
        .args(["check", "--config"])
        .arg(&config)
        .env("SLACK_LOCAL", "https://hooks.slack.invalid/x")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    // A LocalStack message (account 000000000000) is not refused at the door.
    let dir = tempfile::tempdir().unwrap();
    let msg = dir.path().join("m.json");
    let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let alarm = read("examples/cloudwatch-alarm.json");
    let sns = serde_json::json!({"Type": "Notification", "MessageId": "x", "Timestamp": now, "Message": alarm,
        "TopicArn": "arn:aws:sns:us-east-1:000000000000:alarms"});
    std::fs::write(&msg, sns.to_string()).unwrap();
    let out = std::process::Command::new(bin).args(["route-test", "--config"]).arg(&config).arg(&msg).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && !text.contains("refused") && text.contains("destinations: local"), "{text}");
}

#[test]
fn the_cluster_overlay_runs_three_replicas_without_volumes_on_nats_from_a_secret() {
    let deployment = read("deploy/kubernetes/overlays/cluster/deployment.yaml");
    assert!(deployment.contains("kind: Deployment") && deployment.lines().any(|l| l == "  replicas: 3"));
    assert!(!deployment.contains("volumeClaimTemplates") && !deployment.contains("--data-dir"), "{deployment}");
    assert!(deployment.contains("name: WEBHOOK_RELAY_NATS") && deployment.contains("secretKeyRef"), "{deployment}");
    assert!(deployment.contains("--nats-replicas=3"));
    let kustomization = read("deploy/kubernetes/overlays/cluster/kustomization.yaml");
    assert!(kustomization.contains("name: webhook-relay-nats") && kustomization.contains("PodDisruptionBudget"));
    assert!(read("deploy/kubernetes/validate.sh").contains("overlays/cluster"), "validate.sh must cover the overlay");
    let ops = read("docs/operations.md");
    assert!(ops.contains("## Cluster mode") && ops.contains("helm install nats nats/nats"));
}
