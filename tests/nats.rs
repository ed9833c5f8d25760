//! Against real NATS servers on 127.0.0.1 (see support/nats.rs): `check --nats` says
//! whether the cluster is reachable with JetStream on, through any of its nodes and after
//! one of them dies, and never prints credentials.

mod support;

use std::process::Command;

use support::nats::{binary, Nats};

const BIN: &str = env!("CARGO_BIN_EXE_webhook-relay");

fn check(routes: &std::path::Path, nats: &str) -> (i32, String) {
    let out = Command::new(BIN).args(["check", "--config"]).arg(routes).args(["--nats", nats]).output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned())
}

fn routes(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("routes.toml");
    std::fs::write(
        &path,
        "[sns]\ntopics = [\"arn:aws:sns:*:123456789012:*\"]\n[destinations.a]\nurl = \"http://127.0.0.1:9/a\"\n",
    )
    .unwrap();
    path
}

#[tokio::test(flavor = "multi_thread")]
async fn check_reaches_a_three_node_jetstream_cluster_even_with_a_node_down() {
    let Some(bin) = binary() else { return };
    let dir = tempfile::tempdir().unwrap();
    let routes = routes(dir.path());
    let mut cluster = Nats::cluster(&bin, 3).await;
    let urls = cluster.urls().join(",");
    let (code, text) = check(&routes, &urls);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("reachable") && text.contains("JetStream enabled"), "{text}");
    // kill -9 of one node: the other two still hold a quorum and answer, once they have
    // elected a new meta leader if the dead node was it (a few seconds).
    cluster.nodes[0].kill();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let (mut code, mut text) = check(&routes, &urls);
    while code != 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        (code, text) = check(&routes, &urls);
    }
    assert_eq!(code, 0, "with a node down: {text}");
    // All down: unreachable, exit 1.
    cluster.nodes[1].kill();
    cluster.nodes[2].kill();
    let (code, text) = check(&routes, &urls);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("unreachable"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn check_refuses_a_server_without_jetstream_and_never_prints_credentials() {
    let Some(bin) = binary() else { return };
    let dir = tempfile::tempdir().unwrap();
    let routes = routes(dir.path());
    let plain = Nats::single(&bin, &[]);
    let (code, text) = check(&routes, &plain.urls()[0]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("JetStream is not enabled"), "{text}");

    let secured = Nats::single(
        &bin,
        &["-js", "-sd", dir.path().join("js").to_str().unwrap(), "--user", "relay", "--pass", "s3cret"],
    );
    let port = secured.nodes[0].port;
    secured.wait_jetstream_with(&format!("nats://relay:s3cret@127.0.0.1:{port}")).await;
    let (code, text) = check(&routes, &format!("nats://relay:s3cret@127.0.0.1:{port}"));
    assert_eq!(code, 0, "{text}");
    assert!(!text.contains("s3cret") && text.contains(&format!("127.0.0.1:{port}")), "{text}");
    let (code, text) = check(&routes, &format!("nats://relay:wrong-s3cret@127.0.0.1:{port}"));
    assert_eq!(code, 1, "{text}");
    assert!(!text.contains("s3cret"), "a password in the output: {text}");
}
