//! Shared helpers for the integration tests: start the real gateway on 127.0.0.1:0 with a
//! routes file written for the test, a signer whose certificate is pinned or served by a
//! local HTTPS "SNS host", and the stand-in Slack from the library's testkit.
#![allow(dead_code, unused_imports)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
pub use webhook_relay::testkit::{signer::alarm_message, Reply, SlackSink, TestSigner};
use webhook_relay::{Running, Settings};

pub mod nats;
pub mod proxy;

pub const TOPIC: &str = "arn:aws:sns:us-east-1:123456789012:alarms-prod";

/// One RSA key per test binary: generating 2048-bit keys is the slow part of a test.
pub fn signer() -> &'static TestSigner {
    static SIGNER: std::sync::OnceLock<TestSigner> = std::sync::OnceLock::new();
    SIGNER.get_or_init(|| TestSigner::generate("us-east-1").expect("key generation"))
}

/// routes.toml with two channels on `sink` and a catch-all.
pub fn routes(sink: &SlackSink, extra: &str) -> String {
    format!(
        r#"
[sns]
topics = ["arn:aws:sns:*:123456789012:alarms-*"]
max_age = "1h"

[severity]
default = "warning"
rules = [{{ field = "alarm_name", regex = '-(critical|warning|info)$' }}]

[destinations.critical]
url = "{critical}"
rate = "50/s"
burst = 50
max_attempts = 4

[destinations.general]
url = "{general}"
rate = "50/s"
burst = 50
max_attempts = 4

[[route]]
name = "critical"
severity = ["critical"]
to = ["critical"]
continue = true

[[route]]
name = "all-prod"
alarm_name = ["prod-*"]
to = ["general"]
{extra}
"#,
        critical = sink.url("critical"),
        general = sink.url("general"),
    )
}

pub struct Gateway {
    pub running: Option<Running>,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub dir: tempfile::TempDir,
    pub client: reqwest_like::Client,
}

impl Gateway {
    pub fn config_path(&self) -> std::path::PathBuf {
        self.dir.path().join("routes.toml")
    }

    pub async fn post(&self, body: impl Into<Bytes>) -> (u16, String) {
        self.client.post(self.addr, "/sns", &[], body.into()).await
    }

    pub async fn post_with(&self, headers: &[(&str, &str)], body: impl Into<Bytes>) -> (u16, String) {
        self.client.post(self.addr, "/sns", headers, body.into()).await
    }

    pub async fn metrics(&self) -> String {
        self.client.get(self.admin, "/metrics").await.1
    }

    /// The data dir's dead letters, once there is at least one (or the timeout passed).
    pub async fn wait_dead_letters(&self, timeout: Duration) -> webhook_relay::store::DeadLetters {
        let dl = webhook_relay::store::DeadLetters::new(&self.dir.path().join("data"));
        let deadline = std::time::Instant::now() + timeout;
        while dl.list().is_empty() && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        dl
    }

    pub async fn shutdown(mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
    }
}

/// Starts a gateway with `routes` and the signer's certificate pinned.
pub async fn start(routes: &str) -> Gateway {
    start_with(routes, |_| {}).await
}

pub async fn start_with(routes: &str, tweak: impl FnOnce(&mut Settings)) -> Gateway {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("routes.toml"), routes).unwrap();
    let pinned = dir.path().join("certs");
    signer().pin_into(&pinned).unwrap();
    let mut s = Settings::new(dir.path().join("routes.toml"), dir.path().join("data"));
    s.listen = "127.0.0.1:0".parse().unwrap();
    s.admin_listen = "127.0.0.1:0".parse().unwrap();
    s.sns_cert_dir = Some(pinned);
    s.shutdown_timeout = Duration::from_secs(5);
    s.webhook_timeout = Duration::from_secs(2);
    tweak(&mut s);
    let running = webhook_relay::start(s).await.expect("gateway starts");
    Gateway { addr: running.addr, admin: running.admin_addr, running: Some(running), dir, client: reqwest_like::Client }
}

pub fn alarm(signer: &TestSigner, id: &str, name: &str, state: &str) -> serde_json::Value {
    let msg = alarm_message(
        name,
        state,
        if state == "OK" { "ALARM" } else { "OK" },
        "Threshold Crossed",
        "us-east-1",
        "123456789012",
    );
    signer.notification(TOPIC, id, Some(&format!("{state}: \"{name}\"")), &msg)
}

/// How often each alarm name starting with `prefix` (followed by digits) appears in the
/// texts Slack received on `channel`; digests name several alarms in one text.
pub fn name_counts(sink: &SlackSink, channel: &str, prefix: &str) -> std::collections::HashMap<String, usize> {
    let re = regex::Regex::new(&format!(r"{}\d+\b", regex::escape(prefix))).unwrap();
    let mut counts = std::collections::HashMap::new();
    for p in sink.delivered(channel) {
        for m in re.find_iter(p.body["text"].as_str().unwrap_or("")) {
            *counts.entry(m.as_str().to_string()).or_insert(0) += 1;
        }
    }
    counts
}

/// A tiny HTTP/1.1 client over hyper for the tests (no pooling, one request per call).
pub mod reqwest_like {
    use super::*;

    pub struct Client;

    impl Client {
        pub async fn post(&self, addr: SocketAddr, path: &str, headers: &[(&str, &str)], body: Bytes) -> (u16, String) {
            let mut req = hyper::Request::post(path)
                .header("host", addr.to_string())
                .header("content-type", "text/plain; charset=UTF-8");
            for (k, v) in headers {
                req = req.header(*k, *v);
            }
            send(addr, req.body(Full::new(body)).unwrap()).await
        }

        pub async fn get(&self, addr: SocketAddr, path: &str) -> (u16, String) {
            send(
                addr,
                hyper::Request::get(path).header("host", addr.to_string()).body(Full::new(Bytes::new())).unwrap(),
            )
            .await
        }
    }

    async fn send(addr: SocketAddr, req: hyper::Request<Full<Bytes>>) -> (u16, String) {
        try_send(addr, req).await.expect("request to the gateway")
    }

    /// For tests where the server may go away mid-request (shutdown).
    pub async fn try_post(addr: SocketAddr, body: Bytes) -> anyhow::Result<(u16, String)> {
        let req = hyper::Request::post("/sns").header("host", addr.to_string()).body(Full::new(body))?;
        try_send(addr, req).await
    }

    async fn try_send(addr: SocketAddr, req: hyper::Request<Full<Bytes>>) -> anyhow::Result<(u16, String)> {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
        tokio::spawn(conn);
        let resp = sender.send_request(req).await?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }
}

/// A local HTTPS server posing as `sns.us-east-1.amazonaws.com`, with a certificate from a
/// test CA that only the test's fetcher trusts. Serves the signer's certificate and
/// records every request.
pub struct FakeSnsHost {
    pub addr: SocketAddr,
    pub ca_der: rustls::pki_types::CertificateDer<'static>,
    pub requests: Arc<Mutex<Vec<String>>>,
    pub cert_fetches: Arc<AtomicUsize>,
}

impl FakeSnsHost {
    pub async fn start(cert_pem: String, delay: Duration) -> FakeSnsHost {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(rcgen::DnType::CommonName, "webhook-relay test CA");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let host_key = rcgen::KeyPair::generate().unwrap();
        let host = rcgen::CertificateParams::new(vec!["sns.us-east-1.amazonaws.com".to_string()])
            .unwrap()
            .signed_by(&host_key, &ca, &ca_key)
            .unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![host.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(host_key.serialize_der().into()),
            )
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let cert_fetches = Arc::new(AtomicUsize::new(0));
        let (reqs, fetches) = (requests.clone(), cert_fetches.clone());
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { continue };
                let acceptor = acceptor.clone();
                let (reqs, fetches, pem) = (reqs.clone(), fetches.clone(), cert_pem.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else { return };
                    let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let (reqs, fetches, pem) = (reqs.clone(), fetches.clone(), pem.clone());
                        async move {
                            let pq = req.uri().path_and_query().map(|p| p.to_string()).unwrap_or_default();
                            reqs.lock().unwrap().push(pq.clone());
                            tokio::time::sleep(delay).await;
                            let body = if pq.ends_with(".pem") {
                                fetches.fetch_add(1, Ordering::SeqCst);
                                pem
                            } else {
                                "<ConfirmSubscriptionResponse/>".to_string()
                            };
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(Bytes::from(body))))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tls), svc).await;
                });
            }
        });
        FakeSnsHost { addr, ca_der: ca.der().clone(), requests, cert_fetches }
    }

    /// An outbound client setting that trusts this host's CA and resolves the SNS host
    /// name to it.
    pub fn outbound(&self) -> webhook_relay::outbound::OutboundConfig {
        webhook_relay::outbound::OutboundConfig {
            extra_roots: vec![self.ca_der.clone()],
            resolve: vec![("sns.us-east-1.amazonaws.com".to_string(), self.addr)],
            ..Default::default()
        }
    }
}

/// An outbound client whose every connection fails (through a proxy nobody runs).
pub fn unreachable() -> webhook_relay::outbound::OutboundConfig {
    webhook_relay::outbound::OutboundConfig {
        proxy: Some("http://127.0.0.1:9".into()),
        no_proxy: Some("".into()),
        ..Default::default()
    }
}
