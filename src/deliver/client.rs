//! The HTTP client for webhooks: hyper-util's pooled client over rustls (ring, webpki
//! roots), http:// allowed for local sinks. TCP_NODELAY matters: without it each pooled
//! TLS request waited on Nagle + delayed ACK (~40 ms instead of ~0.1 ms).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::config::Secret;

/// What a webhook answered.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    /// First bytes of the body: Slack's error word (`no_service`, `invalid_payload`).
    pub body: String,
    pub retry_after: Option<Duration>,
}

/// Why there was no answer. Deliberately without the URL: errors get logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PostError {
    #[error("timed out")]
    Timeout,
    #[error("connection failed")]
    Connect,
    #[error("request failed")]
    Request,
    #[error("invalid webhook URL")]
    BadUrl,
}

#[derive(Clone)]
pub struct HttpClient {
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
    timeout: Duration,
}

impl HttpClient {
    pub fn new(timeout: Duration) -> HttpClient {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.enforce_http(false);
        http.set_connect_timeout(Some(Duration::from_secs(5)));
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(4)
            .build(https);
        HttpClient { client, timeout }
    }

    pub async fn post_json(&self, url: &Secret, body: Bytes) -> Result<Response, PostError> {
        let uri: http::Uri = url.expose().parse().map_err(|_| PostError::BadUrl)?;
        let request = http::Request::post(uri)
            .header(http::header::CONTENT_TYPE, "application/json; charset=utf-8")
            .header(http::header::USER_AGENT, concat!("webhook-relay/", env!("CARGO_PKG_VERSION")))
            .body(Full::new(body))
            .map_err(|_| PostError::BadUrl)?;
        let fut = async {
            let response = self.client.request(request).await.map_err(|e| {
                if e.is_connect() {
                    PostError::Connect
                } else {
                    PostError::Request
                }
            })?;
            let status = response.status().as_u16();
            let retry_after = response
                .headers()
                .get(http::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_retry_after);
            let body = Limited::new(response.into_body(), 4096)
                .collect()
                .await
                .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
                .unwrap_or_default();
            Ok(Response { status, body, retry_after })
        };
        tokio::time::timeout(self.timeout, fut).await.map_err(|_| PostError::Timeout)?
    }
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
}
