//! The one outbound HTTP client of the gateway, built once at start: Slack posts, signing
//! certificates and SubscribeURL confirmations all go through it.
//!
//! It is reqwest over our own rustls configuration (ring, the roots chosen below), not
//! hand-assembled hyper: reqwest (through hyper-util's matcher) reads `HTTPS_PROXY`,
//! `HTTP_PROXY`, `ALL_PROXY` and `NO_PROXY` in both cases as curl does (hosts, `.suffix`
//! domains, CIDRs), tunnels https through `CONNECT` with the proxy URL's credentials, and
//! sends absolute-form requests for http. What stays ours: timeouts per request, body caps,
//! no redirects ever, TCP_NODELAY (without it a pooled TLS request waited ~40 ms on Nagle
//! plus delayed ACK), and errors that never carry a URL (webhook URLs are secrets).
//!
//! A proxy changes how we connect, never which URLs we trust: the SigningCertURL and
//! SubscribeURL rules run before any request is made.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

/// Which CA certificates outbound TLS trusts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TlsRoots {
    /// The Mozilla roots compiled into the binary.
    Webpki,
    /// The platform's store as rustls-native-certs reads it (`SSL_CERT_FILE`,
    /// `SSL_CERT_DIR`, the distribution's bundle): where an organisation adds its own CA.
    System,
    /// Both. The default: a pod whose image has no CA bundle still reaches Slack and SNS,
    /// and an organisation's CA added to the system store is honoured too.
    #[default]
    Both,
}

impl std::str::FromStr for TlsRoots {
    type Err = String;
    fn from_str(s: &str) -> Result<TlsRoots, String> {
        match s {
            "webpki" => Ok(TlsRoots::Webpki),
            "system" => Ok(TlsRoots::System),
            "both" => Ok(TlsRoots::Both),
            _ => Err(format!("{s:?}: expected webpki, system or both")),
        }
    }
}

/// How the client is built.
#[derive(Debug, Clone, Default)]
pub struct OutboundConfig {
    pub roots: TlsRoots,
    /// A PEM bundle trusted in addition (an inspecting proxy's CA).
    pub extra_ca: Option<PathBuf>,
    /// A proxy for every scheme, instead of the environment's. `no_proxy` (or else the
    /// environment's `NO_PROXY`) still exempts hosts from it.
    pub proxy: Option<String>,
    pub no_proxy: Option<String>,
    /// Test seams: these host names resolve to these addresses (TLS still checks the
    /// name), and these roots are trusted too.
    pub resolve: Vec<(String, SocketAddr)>,
    pub extra_roots: Vec<CertificateDer<'static>>,
}

#[derive(Debug, thiserror::Error)]
pub enum OutboundError {
    #[error("--extra-ca {path}: {why}")]
    ExtraCa { path: String, why: String },
    #[error("--tls-roots system: no usable certificate in the platform store")]
    NoSystemRoots,
    #[error("proxy URL is not valid (credentials not shown)")]
    BadProxy,
    #[error("cannot build the HTTP client: {0}")]
    Build(String),
}

/// What an HTTP server answered a POST.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    /// First bytes of the body: Slack's error word (`no_service`, `invalid_payload`).
    pub body: String,
    pub retry_after: Option<Duration>,
}

/// Why a POST got no answer. Deliberately without the URL: errors get logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PostError {
    #[error("timed out")]
    Timeout,
    /// Also a proxy that refused the CONNECT: retried, never taken as "webhook gone".
    #[error("connection failed")]
    Connect,
    #[error("request failed")]
    Request,
    #[error("invalid webhook URL")]
    BadUrl,
}

/// Why a GET (certificate, SubscribeURL) failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("bad url")]
    BadUrl,
    #[error("connect failed")]
    Connect,
    #[error("request failed: {0}")]
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

/// The client; cheap to clone (one connection pool).
#[derive(Clone)]
pub struct Outbound {
    client: reqwest::Client,
    /// The proxy's host (never its credentials), for the start log and /metrics.
    proxy_host: Option<String>,
}

const USER_AGENT: &str = concat!("webhook-relay/", env!("CARGO_PKG_VERSION"));
/// Slack's answer is a word or a short JSON; more is not read.
const MAX_ANSWER: usize = 4096;

impl Outbound {
    pub fn new(cfg: &OutboundConfig) -> Result<Outbound, OutboundError> {
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| OutboundError::Build(e.to_string()))?
            .with_root_certificates(roots(cfg)?)
            .with_no_client_auth();
        let mut builder = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .http1_only()
            .redirect(reqwest::redirect::Policy::none())
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(5))
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(4)
            .user_agent(USER_AGENT);
        let proxy_host = match &cfg.proxy {
            Some(url) => {
                let no_proxy =
                    cfg.no_proxy.as_deref().and_then(reqwest::NoProxy::from_string).or_else(reqwest::NoProxy::from_env);
                let proxy = reqwest::Proxy::all(url.as_str()).map_err(|_| OutboundError::BadProxy)?.no_proxy(no_proxy);
                builder = builder.proxy(proxy);
                Some(host_of(url).ok_or(OutboundError::BadProxy)?)
            }
            // reqwest reads the environment itself; this is only for reporting.
            None => env_proxy().and_then(|url| host_of(&url)),
        };
        for (host, addr) in &cfg.resolve {
            builder = builder.resolve(host, *addr);
        }
        let client = builder.build().map_err(|e| OutboundError::Build(e.without_url().to_string()))?;
        Ok(Outbound { client, proxy_host })
    }

    /// The proxy in use, by host name only.
    pub fn proxy_host(&self) -> Option<&str> {
        self.proxy_host.as_deref()
    }

    /// POSTs JSON; reads at most the first 4 KiB of the answer.
    pub async fn post_json(&self, url: &str, body: Bytes, timeout: Duration) -> Result<Response, PostError> {
        let url = reqwest::Url::parse(url).map_err(|_| PostError::BadUrl)?;
        let request = self
            .client
            .post(url)
            .header(http::header::CONTENT_TYPE, "application/json; charset=utf-8")
            .body(body)
            .build()
            .map_err(|_| PostError::BadUrl)?;
        let x = self.exchange(request, MAX_ANSWER, timeout).await.map_err(Failure::post)?;
        Ok(Response {
            status: x.status,
            body: String::from_utf8_lossy(&x.body).into_owned(),
            retry_after: x.retry_after,
        })
    }

    /// GETs `url` (http or https); only a 200 with at most `max_body` bytes counts.
    pub async fn get(&self, url: &str, max_body: usize, timeout: Duration) -> Result<Bytes, FetchError> {
        let url = reqwest::Url::parse(url).map_err(|_| FetchError::BadUrl)?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(FetchError::BadUrl);
        }
        let request = self.client.get(url).build().map_err(|_| FetchError::BadUrl)?;
        let x = self.exchange(request, max_body, timeout).await.map_err(Failure::fetch)?;
        match (x.status, x.truncated) {
            (200, false) => Ok(x.body),
            (200, true) => Err(FetchError::TooLarge(max_body)),
            (status, _) => Err(FetchError::Status(status)),
        }
    }

    /// Sends a prepared request (AWS API calls: signed headers are kept as they are) and
    /// returns the status and at most `max_body` bytes of the answer.
    pub async fn send(
        &self,
        request: http::Request<Bytes>,
        max_body: usize,
        timeout: Duration,
    ) -> Result<(u16, Bytes), FetchError> {
        let request = reqwest::Request::try_from(request).map_err(|_| FetchError::BadUrl)?;
        let x = self.exchange(request, max_body, timeout).await.map_err(Failure::fetch)?;
        if x.truncated {
            return Err(FetchError::TooLarge(max_body));
        }
        Ok((x.status, x.body))
    }

    /// Like [`Outbound::send`], for APIs that rate-limit: also returns `Retry-After`, and
    /// fails as a post does (a refused or failed connection is retried, not a verdict).
    pub async fn send_with_retry_after(
        &self,
        request: http::Request<Bytes>,
        max_body: usize,
        timeout: Duration,
    ) -> Result<(u16, Bytes, Option<Duration>), PostError> {
        let request = reqwest::Request::try_from(request).map_err(|_| PostError::BadUrl)?;
        let x = self.exchange(request, max_body, timeout).await.map_err(Failure::post)?;
        Ok((x.status, x.body, x.retry_after))
    }

    /// One request and at most `max_body` bytes of its answer, within `timeout`.
    async fn exchange(
        &self,
        request: reqwest::Request,
        max_body: usize,
        timeout: Duration,
    ) -> Result<Exchange, Failure> {
        let fut = async {
            let response = self.client.execute(request).await.map_err(Failure::from)?;
            let status = response.status().as_u16();
            let retry_after = response
                .headers()
                .get(http::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_retry_after);
            let (body, truncated) = read_capped(response, max_body).await.map_err(Failure::from)?;
            Ok(Exchange { status, body, truncated, retry_after })
        };
        tokio::time::timeout(timeout, fut).await.map_err(|_| Failure::Timeout)?
    }
}

/// An answer as read.
struct Exchange {
    status: u16,
    body: Bytes,
    /// More than `max_body` was sent; `body` holds the first part.
    truncated: bool,
    retry_after: Option<Duration>,
}

/// Why there was no answer; the message never holds the URL.
enum Failure {
    Timeout,
    Connect,
    Other(String),
}

impl From<reqwest::Error> for Failure {
    fn from(e: reqwest::Error) -> Failure {
        if e.is_timeout() {
            Failure::Timeout
        } else if e.is_connect() {
            Failure::Connect
        } else {
            Failure::Other(e.without_url().to_string())
        }
    }
}

impl Failure {
    fn post(self) -> PostError {
        match self {
            Failure::Timeout => PostError::Timeout,
            Failure::Connect => PostError::Connect,
            Failure::Other(_) => PostError::Request,
        }
    }

    fn fetch(self) -> FetchError {
        match self {
            Failure::Timeout => FetchError::Timeout,
            Failure::Connect => FetchError::Connect,
            Failure::Other(why) => FetchError::Http(why),
        }
    }
}

/// Reads at most `cap` bytes; the flag says whether there was more.
async fn read_capped(mut response: reqwest::Response, cap: usize) -> Result<(Bytes, bool), reqwest::Error> {
    let mut out = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if out.len() + chunk.len() > cap {
            out.extend_from_slice(&chunk[..cap - out.len()]);
            return Ok((Bytes::from(out), true));
        }
        out.extend_from_slice(&chunk);
    }
    Ok((Bytes::from(out), false))
}

fn roots(cfg: &OutboundConfig) -> Result<rustls::RootCertStore, OutboundError> {
    let mut roots = rustls::RootCertStore::empty();
    if matches!(cfg.roots, TlsRoots::Webpki | TlsRoots::Both) {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    if matches!(cfg.roots, TlsRoots::System | TlsRoots::Both) {
        let native = rustls_native_certs::load_native_certs();
        for e in &native.errors {
            tracing::warn!(error = %e, "part of the system CA store could not be read");
        }
        let (added, _) = roots.add_parsable_certificates(native.certs);
        if added == 0 && cfg.roots == TlsRoots::System {
            return Err(OutboundError::NoSystemRoots);
        }
    }
    for cert in &cfg.extra_roots {
        roots
            .add(cert.clone())
            .map_err(|e| OutboundError::ExtraCa { path: "(test root)".into(), why: e.to_string() })?;
    }
    if let Some(path) = &cfg.extra_ca {
        for cert in extra_ca(path)? {
            roots
                .add(cert)
                .map_err(|e| OutboundError::ExtraCa { path: path.display().to_string(), why: e.to_string() })?;
        }
    }
    Ok(roots)
}

fn extra_ca(path: &Path) -> Result<Vec<CertificateDer<'static>>, OutboundError> {
    let shown = || path.display().to_string();
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| OutboundError::ExtraCa { path: shown(), why: e.to_string() })?
        .collect::<Result<_, _>>()
        .map_err(|e| OutboundError::ExtraCa { path: shown(), why: e.to_string() })?;
    if certs.is_empty() {
        return Err(OutboundError::ExtraCa { path: shown(), why: "no PEM certificate in it".into() });
    }
    Ok(certs)
}

/// The proxy the environment names for https (what Slack and SNS use), as curl reads it.
fn env_proxy() -> Option<String> {
    ["HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "HTTP_PROXY", "http_proxy"]
        .iter()
        .find_map(|k| std::env::var(k).ok().filter(|v| !v.trim().is_empty()))
}

/// The host of a proxy URL, without scheme, credentials or port. A bare `host:port` (as
/// curl accepts) counts as http.
fn host_of(url: &str) -> Option<String> {
    let with_scheme = if url.contains("://") { url.to_string() } else { format!("http://{url}") };
    reqwest::Url::parse(&with_scheme).ok()?.host_str().map(str::to_string)
}

/// `Retry-After` as seconds or an HTTP date.
pub fn parse_retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(v).ok()?;
    Some(when.duration_since(std::time::SystemTime::now()).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_forms() {
        assert_eq!(parse_retry_after("7"), Some(Duration::from_secs(7)));
        let future = std::time::SystemTime::now() + Duration::from_secs(30);
        let d = parse_retry_after(&httpdate::fmt_http_date(future)).unwrap();
        assert!(d > Duration::from_secs(27) && d <= Duration::from_secs(30), "{d:?}");
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn proxy_hosts_are_shown_without_credentials() {
        assert_eq!(host_of("http://user:s3cret@proxy.corp:3128").as_deref(), Some("proxy.corp"));
        assert_eq!(host_of("proxy.corp:8080").as_deref(), Some("proxy.corp"));
        assert_eq!(host_of("::::").as_deref(), None);
    }

    #[test]
    fn roots_choices() {
        assert_eq!("both".parse::<TlsRoots>(), Ok(TlsRoots::Both));
        assert!("all".parse::<TlsRoots>().is_err());
        let webpki = roots(&OutboundConfig { roots: TlsRoots::Webpki, ..Default::default() }).unwrap();
        assert!(webpki.len() > 100);
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("ca.pem");
        std::fs::write(&bad, "not a certificate").unwrap();
        let cfg = OutboundConfig { roots: TlsRoots::Webpki, extra_ca: Some(bad), ..Default::default() };
        assert!(matches!(roots(&cfg), Err(OutboundError::ExtraCa { .. })));
    }
}
