//! The one outbound GET the ingest side makes: signing certificates and subscription
//! confirmations. Every request is a fresh connection with short timeouts, a body cap and
//! no redirects, so a hostile URL that somehow passed the trust rules still cannot make us
//! wander or buffer without bound. Requests are rare (certificates are cached), so pooling
//! would buy nothing.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::Request;
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("bad url")]
    BadUrl,
    #[error("connect: {0}")]
    Connect(std::io::Error),
    #[error("tls: {0}")]
    Tls(std::io::Error),
    #[error("http: {0}")]
    Http(String),
    #[error("timed out")]
    Timeout,
    #[error("answered HTTP {0}")]
    Status(u16),
    #[error("body larger than {0} bytes")]
    TooLarge(usize),
}

impl FetchError {
    /// True when the remote answered definitively (4xx, redirect): retrying won't help.
    pub fn is_final(&self) -> bool {
        matches!(self, FetchError::Status(s) if *s < 500) || matches!(self, FetchError::BadUrl)
    }
}

/// Outbound HTTP(S) GET client for the ingest side.
#[derive(Clone)]
pub struct Fetcher {
    tls: tokio_rustls::TlsConnector,
    /// Test-only: connect here instead of resolving the URL's host. TLS still verifies the
    /// URL's host name against `tls`'s roots, so this cannot weaken a production setup
    /// (it is not reachable from the command line).
    connect_override: Option<SocketAddr>,
    timeout: Duration,
}

impl Fetcher {
    /// The production client: webpki roots only.
    pub fn new(timeout: Duration) -> Fetcher {
        Fetcher::with_roots(timeout, &[], None)
    }

    /// A client that also trusts `extra_roots` and connects to `connect_override`; used by
    /// tests that serve a certificate from a local HTTPS server.
    pub fn with_roots(
        timeout: Duration,
        extra_roots: &[CertificateDer<'static>],
        connect_override: Option<SocketAddr>,
    ) -> Fetcher {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        for root in extra_roots {
            // A malformed test root is a bug in the test, surfaced by its failing fetch.
            let _ = roots.add(root.clone());
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        Fetcher { tls: tokio_rustls::TlsConnector::from(Arc::new(config)), connect_override, timeout }
    }

    /// GETs `url` (http or https) and returns a body of at most `max_body` bytes; only 200 counts.
    pub async fn get(&self, url: &str, max_body: usize) -> Result<Bytes, FetchError> {
        tokio::time::timeout(self.timeout, self.get_inner(url, max_body)).await.map_err(|_| FetchError::Timeout)?
    }

    async fn get_inner(&self, url: &str, max_body: usize) -> Result<Bytes, FetchError> {
        let uri: http::Uri = url.parse().map_err(|_| FetchError::BadUrl)?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(FetchError::BadUrl),
        };
        let host = uri.host().ok_or(FetchError::BadUrl)?.to_string();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let tcp = match self.connect_override {
            Some(addr) => TcpStream::connect(addr).await,
            None => TcpStream::connect((host.as_str(), port)).await,
        }
        .map_err(FetchError::Connect)?;
        let _ = tcp.set_nodelay(true);
        let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let request = Request::get(path)
            .header(http::header::HOST, uri.authority().map(|a| a.as_str()).unwrap_or(&host))
            .header(http::header::USER_AGENT, concat!("webhook-relay/", env!("CARGO_PKG_VERSION")))
            .body(Empty::<Bytes>::new())
            .map_err(|e| FetchError::Http(e.to_string()))?;
        if https {
            let name = ServerName::try_from(host).map_err(|_| FetchError::BadUrl)?;
            let tls = self.tls.connect(name, tcp).await.map_err(FetchError::Tls)?;
            send(TokioIo::new(tls), request, max_body).await
        } else {
            send(TokioIo::new(tcp), request, max_body).await
        }
    }
}

async fn send<T>(io: T, request: Request<Empty<Bytes>>, max_body: usize) -> Result<Bytes, FetchError>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(io).await.map_err(|e| FetchError::Http(e.to_string()))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let response = sender.send_request(request).await.map_err(|e| FetchError::Http(e.to_string()))?;
    if response.status() != http::StatusCode::OK {
        return Err(FetchError::Status(response.status().as_u16()));
    }
    let body =
        Limited::new(response.into_body(), max_body).collect().await.map_err(|_| FetchError::TooLarge(max_body))?;
    Ok(body.to_bytes())
}
