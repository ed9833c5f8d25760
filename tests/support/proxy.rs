//! Real network pieces for the outbound-proxy tests, all on 127.0.0.1: a test CA, a TLS
//! front that serves a name with a certificate from it and pipes to a plain HTTP server,
//! and a forward proxy (CONNECT only, as corporate proxies for https are) that records
//! what passed, can demand Basic credentials, can refuse, or can inspect (terminate TLS
//! with a certificate for the requested host from its own CA).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use base64::Engine;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub struct TestCa {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        let cert = params.self_signed(&key).unwrap();
        TestCa { cert, key }
    }

    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    /// Writes the CA certificate as a PEM file (what `--extra-ca` reads).
    pub fn write_pem(&self, dir: &std::path::Path) -> std::path::PathBuf {
        let path = dir.join("ca.pem");
        std::fs::write(&path, self.pem()).unwrap();
        path
    }

    /// A TLS server configuration for `names` (DNS names or IP addresses).
    pub fn server_config(&self, names: &[&str]) -> Arc<rustls::ServerConfig> {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .unwrap();
        Arc::new(config)
    }
}

/// Terminates TLS for `names` with a certificate from `ca` and pipes each connection to
/// `upstream` (a plain HTTP server such as the stand-in Slack). Returns its address.
pub async fn tls_front(ca: &TestCa, names: &[&str], upstream: SocketAddr) -> SocketAddr {
    let acceptor = tokio_rustls::TlsAcceptor::from(ca.server_config(names));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { continue };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                let Ok(mut up) = TcpStream::connect(upstream).await else { return };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut up).await;
            });
        }
    });
    addr
}

#[derive(Clone)]
pub enum Mode {
    /// Tunnel to `to`, whatever host was asked for (the test's names do not resolve).
    Tunnel { to: SocketAddr },
    /// Terminate the client's TLS with a certificate for the asked host from this CA, and
    /// pass the plaintext to `to` (a plain HTTP server).
    Inspect { ca: Arc<TestCa>, to: SocketAddr },
    /// Answer every CONNECT with 403.
    Refuse,
}

#[derive(Clone)]
pub struct Proxy {
    pub addr: SocketAddr,
    /// `host:port` of every CONNECT, accepted or not.
    pub connects: Arc<Mutex<Vec<String>>>,
}

impl Proxy {
    /// `auth`: the `user:password` it demands (407 otherwise).
    pub async fn start(mode: Mode, auth: Option<&str>) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connects = Arc::new(Mutex::new(Vec::new()));
        let expected = auth.map(|a| format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(a)));
        let seen = connects.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { continue };
                let (mode, expected, seen) = (mode.clone(), expected.clone(), seen.clone());
                tokio::spawn(async move { serve(tcp, mode, expected, seen).await });
            }
        });
        Proxy { addr, connects }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn url_with(&self, userinfo: &str) -> String {
        format!("http://{userinfo}@{}", self.addr)
    }

    pub fn connects(&self) -> Vec<String> {
        self.connects.lock().unwrap().clone()
    }
}

async fn serve(mut tcp: TcpStream, mode: Mode, expected: Option<String>, seen: Arc<Mutex<Vec<String>>>) {
    // The request head, byte by byte up to the blank line: nothing after it is ours.
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 16 * 1024 || tcp.read_exact(&mut byte).await.is_err() {
            return;
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let mut lines = head.lines();
    let request = lines.next().unwrap_or_default().to_string();
    let mut parts = request.split_whitespace();
    let (method, target) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default().to_string());
    if method != "CONNECT" {
        let _ = tcp.write_all(b"HTTP/1.1 405 Method Not Allowed\r\ncontent-length: 0\r\n\r\n").await;
        return;
    }
    seen.lock().unwrap().push(target.clone());
    let auth = lines.find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("proxy-authorization").then(|| v.trim().to_string())
    });
    if let Some(expected) = expected {
        if auth.as_deref() != Some(expected.as_str()) {
            let _ = tcp
                .write_all(b"HTTP/1.1 407 Proxy Authentication Required\r\nproxy-authenticate: Basic realm=\"test\"\r\ncontent-length: 0\r\n\r\n")
                .await;
            return;
        }
    }
    match mode {
        Mode::Refuse => {
            let _ = tcp.write_all(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n").await;
        }
        Mode::Tunnel { to } => {
            let Ok(mut up) = TcpStream::connect(to).await else { return };
            if tcp.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n").await.is_err() {
                return;
            }
            let _ = tokio::io::copy_bidirectional(&mut tcp, &mut up).await;
        }
        Mode::Inspect { ca, to } => {
            let host = target.rsplit_once(':').map(|(h, _)| h.to_string()).unwrap_or(target);
            if tcp.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n").await.is_err() {
                return;
            }
            let acceptor = tokio_rustls::TlsAcceptor::from(ca.server_config(&[host.as_str()]));
            let Ok(mut tls) = acceptor.accept(tcp).await else { return };
            let Ok(mut up) = TcpStream::connect(to).await else { return };
            let _ = tokio::io::copy_bidirectional(&mut tls, &mut up).await;
        }
    }
}
