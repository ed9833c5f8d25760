//! Outbound through a corporate proxy, over real sockets: a CONNECT proxy that records what
//! passed (and one that demands credentials, one that refuses, one that inspects TLS), a
//! stand-in Slack reachable only through it (its name does not resolve), NO_PROXY
//! exemptions by name and by CIDR, the organisation's CA given with --extra-ca, and the
//! signing-certificate fetch through the proxy.

mod support;

use std::sync::Arc;
use std::time::Duration;

use support::proxy::{tls_front, Mode, Proxy, TestCa};
use support::*;
use webhook_relay::outbound::{OutboundConfig, TlsRoots};

/// routes.toml with one destination at `url`.
fn one_destination(url: &str) -> String {
    format!(
        "[sns]\ntopics = [\"arn:aws:sns:*:123456789012:alarms-*\"]\n\
         [destinations.c]\nurl = \"{url}\"\nrate = \"100/s\"\nburst = 10\nmax_attempts = 50\n\
         [[route]]\nname = \"all\"\nto = [\"c\"]\n"
    )
}

/// The stand-in Slack behind TLS for `names`, certificate from `ca`.
async fn slack_behind_tls(ca: &TestCa, names: &[&str]) -> (SlackSink, std::net::SocketAddr) {
    let sink = SlackSink::start().await.unwrap();
    let front = tls_front(ca, names, sink.addr).await;
    (sink, front)
}

fn through(proxy: String, no_proxy: &str, ca_file: Option<std::path::PathBuf>) -> OutboundConfig {
    OutboundConfig {
        roots: TlsRoots::Webpki,
        extra_ca: ca_file,
        proxy: Some(proxy),
        no_proxy: Some(no_proxy.to_string()),
        ..Default::default()
    }
}

#[tokio::test]
async fn slack_is_reached_through_a_connect_proxy_with_the_organisations_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("corp root");
    let (sink, front) = slack_behind_tls(&ca, &["hooks.slack.test"]).await;
    let proxy = Proxy::start(Mode::Tunnel { to: front }, None).await;
    let cfg = through(proxy.url(), "", Some(ca.write_pem(dir.path())));
    let gw = start_with(&one_destination("https://hooks.slack.test/hook/c"), |s| s.outbound = cfg).await;
    assert_eq!(gw.post(alarm(signer(), "p1", "prod-a", "ALARM").to_string()).await.0, 200);
    assert!(
        sink.wait_until(Duration::from_secs(10), |_| sink.delivered("c").len() == 1).await,
        "{:?}",
        proxy.connects()
    );
    assert_eq!(proxy.connects(), vec!["hooks.slack.test:443".to_string()]);
    let m = gw.metrics().await;
    assert!(m.contains("webhook_relay_outbound_proxy{proxy_host=\"127.0.0.1\"} 1"), "{m}");
    gw.shutdown().await;
}

#[tokio::test]
async fn proxy_credentials_work_and_a_refusal_is_retried_not_gone() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("corp root");
    let (sink, front) = slack_behind_tls(&ca, &["hooks.slack.test"]).await;
    let proxy = Proxy::start(Mode::Tunnel { to: front }, Some("relay:s3cret")).await;
    let ca_file = ca.write_pem(dir.path());

    let good = through(proxy.url_with("relay:s3cret"), "", Some(ca_file.clone()));
    let gw = start_with(&one_destination("https://hooks.slack.test/hook/c"), |s| s.outbound = good).await;
    assert_eq!(gw.post(alarm(signer(), "a1", "prod-a", "ALARM").to_string()).await.0, 200);
    assert!(sink.wait_until(Duration::from_secs(10), |_| sink.delivered("c").len() == 1).await);
    let m = gw.metrics().await;
    assert!(!m.contains("s3cret") && !m.contains("relay:"), "credentials in /metrics: {m}");
    gw.shutdown().await;

    // Wrong password: 407 on every CONNECT. A retry with backoff, never "webhook gone".
    let bad = through(proxy.url_with("relay:wrong"), "", Some(ca_file));
    let gw = start_with(&one_destination("https://hooks.slack.test/hook/c"), |s| s.outbound = bad).await;
    assert_eq!(gw.post(alarm(signer(), "a2", "prod-b", "ALARM").to_string()).await.0, 200);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(sink.delivered("c").len(), 1, "delivered despite the proxy's 407");
    let m = gw.metrics().await;
    assert!(m.contains("webhook_relay_deliveries_total{destination=\"c\",outcome=\"connection_error\"}"), "{m}");
    assert!(!m.contains("webhook_relay_destination_unhealthy{destination=\"c\"} 1"), "{m}");
    assert!(gw.wait_dead_letters(Duration::from_millis(100)).await.list().is_empty());
    gw.shutdown().await;

    let refusing = Proxy::start(Mode::Refuse, None).await;
    let cfg = through(refusing.url(), "", None);
    let gw = start_with(&one_destination("https://hooks.slack.test/hook/c"), |s| s.outbound = cfg).await;
    assert_eq!(gw.post(alarm(signer(), "a3", "prod-c", "ALARM").to_string()).await.0, 200);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(!refusing.connects().is_empty());
    let m = gw.metrics().await;
    assert!(
        m.contains("outcome=\"connection_error\"")
            && m.contains("webhook_relay_delivery_retries_total{destination=\"c\"}"),
        "{m}"
    );
    assert!(!m.contains("webhook_relay_destination_unhealthy{destination=\"c\"} 1"), "{m}");
    gw.shutdown().await;
}

#[tokio::test]
async fn no_proxy_exempts_hosts_by_name_and_by_cidr() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("corp root");
    let (sink, front) = slack_behind_tls(&ca, &["localhost", "127.0.0.1"]).await;
    // A proxy that would send everything to a dead end: only exempt hosts get through.
    let proxy = Proxy::start(Mode::Refuse, None).await;
    let ca_file = ca.write_pem(dir.path());
    for (url, no_proxy) in [
        (format!("https://localhost:{}/hook/c", front.port()), "example.org, localhost"),
        (format!("https://127.0.0.1:{}/hook/c", front.port()), "10.0.0.0/8,127.0.0.0/8"),
    ] {
        let before = sink.delivered("c").len();
        let cfg = through(proxy.url(), no_proxy, Some(ca_file.clone()));
        let gw = start_with(&one_destination(&url), |s| s.outbound = cfg).await;
        let id = format!("n{before}");
        assert_eq!(gw.post(alarm(signer(), &id, "prod-a", "ALARM").to_string()).await.0, 200);
        assert!(
            sink.wait_until(Duration::from_secs(10), |_| sink.delivered("c").len() == before + 1).await,
            "{url} with NO_PROXY={no_proxy} was not delivered directly"
        );
        gw.shutdown().await;
    }
    assert!(proxy.connects().is_empty(), "exempt hosts went through the proxy: {:?}", proxy.connects());
}

#[tokio::test]
async fn an_inspecting_proxy_is_trusted_only_with_its_ca() {
    let dir = tempfile::tempdir().unwrap();
    let inspector_ca = Arc::new(TestCa::new("inspecting proxy"));
    let sink = SlackSink::start().await.unwrap();
    let proxy = Proxy::start(Mode::Inspect { ca: inspector_ca.clone(), to: sink.addr }, None).await;

    // Without its CA the re-signed certificate is refused: nothing reaches Slack.
    let gw = start_with(&one_destination("https://hooks.slack.test/hook/c"), |s| {
        s.outbound = through(proxy.url(), "", None)
    })
    .await;
    assert_eq!(gw.post(alarm(signer(), "i1", "prod-a", "ALARM").to_string()).await.0, 200);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(sink.delivered("c").is_empty(), "a certificate from an untrusted CA was accepted");
    gw.shutdown().await;

    let cfg = through(proxy.url(), "", Some(inspector_ca.write_pem(dir.path())));
    let gw = start_with(&one_destination("https://hooks.slack.test/hook/c"), |s| s.outbound = cfg).await;
    assert_eq!(gw.post(alarm(signer(), "i2", "prod-b", "ALARM").to_string()).await.0, 200);
    assert!(sink.wait_until(Duration::from_secs(10), |_| sink.delivered("c").len() == 1).await);
    gw.shutdown().await;
}

#[tokio::test]
async fn the_signing_certificate_is_fetched_through_the_proxy_and_the_host_rule_holds() {
    let sink = SlackSink::start().await.unwrap();
    let host = FakeSnsHost::start(signer().cert_pem.clone(), Duration::ZERO).await;
    let proxy = Proxy::start(Mode::Tunnel { to: host.addr }, None).await;
    let cfg = OutboundConfig {
        roots: TlsRoots::Webpki,
        extra_roots: vec![host.ca_der.clone()],
        proxy: Some(proxy.url()),
        no_proxy: Some(String::new()),
        ..Default::default()
    };
    let gw = start_with(&routes(&sink, ""), |s| {
        s.sns_cert_dir = None;
        s.outbound = cfg;
    })
    .await;
    assert_eq!(gw.post(alarm(signer(), "c1", "prod-a", "ALARM").to_string()).await.0, 200);
    assert_eq!(proxy.connects(), vec!["sns.us-east-1.amazonaws.com:443".to_string()]);
    assert_eq!(host.cert_fetches.load(std::sync::atomic::Ordering::SeqCst), 1);
    // A proxy changes how we connect, never what we trust: a SigningCertURL on another
    // host is refused before any request.
    let mut evil = alarm(signer(), "c2", "prod-a", "ALARM");
    evil["SigningCertURL"] =
        "https://evil.example/SimpleNotificationService-0123456789abcdef0123456789abcdef.pem".into();
    assert_eq!(gw.post(evil.to_string()).await.0, 403);
    assert_eq!(proxy.connects().len(), 1, "an untrusted URL was fetched through the proxy");
    gw.shutdown().await;
}
