//! Listeners: the public one (`POST /sns`, and a bare `GET /healthz`; HTTP or HTTPS) and the admin one
//! (`/healthz`, `/readyz`, `/metrics`). Each connection is served by hyper with a header
//! read timeout; each body read has its own timeout and size cap, so a slow or huge client
//! cannot hold a connection or memory. A semaphore bounds open connections.

pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::ingest::Gateway;
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;

/// Limits applied to every public connection.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_body: usize,
    /// Time for the request head (and for a TLS handshake) on a quiet listener...
    pub header_timeout: Duration,
    /// ...and once more than half of `max_connections` are open: a client holding
    /// connections with unfinished headers then gets little time to do it.
    pub pressure_header_timeout: Duration,
    pub body_timeout: Duration,
    pub max_connections: usize,
    /// Open connections one client address may hold (0: no limit). SNS spreads its
    /// deliveries over many addresses; behind a load balancer every connection comes from
    /// its address: raise this, or turn it off. Measured: 5,000 half-sent connections from
    /// one address leave the resident memory ~3 MiB up with 64, ~11 MiB and growing with
    /// each flood with 512.
    pub max_per_ip: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body: 1024 * 1024,
            header_timeout: Duration::from_secs(10),
            pressure_header_timeout: Duration::from_secs(1),
            body_timeout: Duration::from_secs(15),
            max_connections: 4096,
            max_per_ip: 64,
        }
    }
}

/// Open connections per client address; a slot is given back when its guard drops.
#[derive(Clone, Default)]
struct PerIp(Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>>);

struct IpSlot(PerIp, std::net::IpAddr);

impl PerIp {
    fn take(&self, ip: std::net::IpAddr, max: usize) -> Option<IpSlot> {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(ip).or_insert(0);
        if max > 0 && *n >= max {
            return None;
        }
        *n += 1;
        Some(IpSlot(self.clone(), ip))
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut m = (self.0).0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&self.1) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.1);
            }
        }
    }
}

type Body = Full<Bytes>;

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

/// Serves the public listener until `shutdown`, then lets in-flight requests finish
/// for at most `grace`.
pub async fn serve_public(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    gateway: Arc<Gateway>,
    limits: Limits,
    mut shutdown: Shutdown,
    grace: Duration,
) {
    let graceful = GracefulShutdown::new();
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let per_ip = PerIp::default();
    let metrics = gateway.metrics().clone();
    // Refusals are counted always and logged at most once a second.
    let mut last_refusal_log: Option<Instant> = None;
    loop {
        let permit = tokio::select! {
            _ = shutdown.recv() => break,
            p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
        };
        let (tcp, peer) = tokio::select! {
            _ = shutdown.recv() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Some(slot) = per_ip.take(peer.ip(), limits.max_per_ip) else {
            // One client holding many connections must not shut out SNS: refuse at once.
            drop(tcp);
            metrics.connections_refused.get_or_create(&[("reason", "per_ip_limit")]).inc();
            if last_refusal_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                last_refusal_log = Some(Instant::now());
                tracing::warn!(peer = %peer.ip(), limit = limits.max_per_ip, "connection refused: this client holds the per-address maximum (logged at most once a second, counted)");
            }
            continue;
        };
        let open = limits.max_connections - permits.available_permits();
        let header_timeout =
            if open * 2 > limits.max_connections { limits.pressure_header_timeout } else { limits.header_timeout };
        metrics.connections_open.set(open as i64);
        let _ = tcp.set_nodelay(true);
        let gateway = gateway.clone();
        let svc = service_fn(move |req| {
            let gateway = gateway.clone();
            async move { Ok::<_, std::convert::Infallible>(public(req, &gateway, limits, peer).await) }
        });
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder.timer(TokioTimer::new()).header_read_timeout(header_timeout);
        match &tls {
            None => {
                let conn = builder.serve_connection(TokioIo::new(tcp), svc);
                let fut = graceful.watch(conn);
                tokio::spawn(async move {
                    let _ = fut.await;
                    drop((permit, slot));
                });
            }
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                let watcher = graceful.watcher();
                tokio::spawn(async move {
                    let handshake = tokio::time::timeout(header_timeout, acceptor.accept(tcp)).await;
                    let Ok(Ok(stream)) = handshake else {
                        tracing::debug!(%peer, "TLS handshake failed or timed out");
                        return;
                    };
                    let _ = watcher.watch(builder.serve_connection(TokioIo::new(stream), svc)).await;
                    drop((permit, slot));
                });
            }
        }
    }
    drop(listener);
    if tokio::time::timeout(grace, graceful.shutdown()).await.is_err() {
        tracing::warn!("in-flight requests did not finish within the shutdown timeout");
    }
}

async fn public(req: Request<Incoming>, gateway: &Gateway, limits: Limits, peer: SocketAddr) -> Response<Body> {
    // For load balancers that can only probe the traffic port (an ALB target group): says
    // the process answers, nothing more. Readiness stays on the admin port.
    if req.uri().path() == "/healthz" && req.method() == Method::GET {
        return text(StatusCode::OK, "ok\n");
    }
    if req.uri().path() != "/sns" {
        return text(StatusCode::NOT_FOUND, "not found\n");
    }
    if req.method() != Method::POST {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "POST only\n");
        r.headers_mut().insert(http::header::ALLOW, http::HeaderValue::from_static("POST"));
        return r;
    }
    let started = Instant::now();
    let raw = req
        .headers()
        .get("x-amz-sns-rawdelivery")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let declared_too_big = req
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|n| n > limits.max_body as u64);
    let metrics = gateway.metrics();
    if declared_too_big {
        return reject_too_large(metrics, peer);
    }
    let body = match tokio::time::timeout(
        limits.body_timeout,
        read_body(Limited::new(req.into_body(), limits.max_body)),
    )
    .await
    {
        Err(_) => {
            metrics.reject("body_timeout");
            tracing::warn!(%peer, "request body not received within the timeout");
            return text(StatusCode::REQUEST_TIMEOUT, "body read timed out\n");
        }
        Ok(Err(e)) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => {
            return reject_too_large(metrics, peer);
        }
        Ok(Err(_)) => {
            metrics.reject("body_error");
            return text(StatusCode::BAD_REQUEST, "could not read body\n");
        }
        Ok(Ok(b)) => b,
    };
    let answer = gateway.handle_sns(raw, &body).await;
    metrics.request_seconds.observe(started.elapsed().as_secs_f64());
    match answer {
        Ok(outcome) => {
            tracing::debug!(%peer, outcome = outcome.label(), "sns message handled");
            // Without a Content-Type: SNS reads only the status, and the header costs
            // two allocations (the header map) on the path taken for every notification.
            let mut r = Response::new(Full::new(Bytes::from_static(outcome.line().as_bytes())));
            *r.status_mut() = StatusCode::OK;
            r
        }
        Err(e) => {
            metrics.reject(e.label());
            tracing::warn!(%peer, status = e.status().as_u16(), reason = e.label(), error = %e, "sns message refused");
            text(e.status(), format!("{}\n", e.label()))
        }
    }
}

/// The whole body. A body that arrives in one frame (an SNS message usually does) is that
/// frame's bytes, not a copy; `Collected` would put it in a `VecDeque` first.
async fn read_body<B>(mut body: B) -> Result<Bytes, B::Error>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
{
    let mut first: Option<Bytes> = None;
    let mut joined: Vec<u8> = Vec::new();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else { continue };
        match &first {
            None if joined.is_empty() => first = Some(data),
            _ => {
                if let Some(f) = first.take() {
                    joined.extend_from_slice(&f);
                }
                joined.extend_from_slice(&data);
            }
        }
    }
    Ok(first.unwrap_or_else(|| joined.into()))
}

fn reject_too_large(metrics: &Metrics, peer: SocketAddr) -> Response<Body> {
    metrics.reject("too_large");
    tracing::warn!(%peer, "request body over the limit");
    text(StatusCode::PAYLOAD_TOO_LARGE, "body too large\n")
}

/// Serves `/healthz`, `/readyz` and `/metrics` until `shutdown`.
/// `ready` says whether to answer `/readyz` 200: not shutting down, and the queue can
/// store what is accepted.
pub async fn serve_admin(
    listener: TcpListener,
    metrics: Metrics,
    ready: Arc<dyn Fn() -> bool + Send + Sync>,
    mut shutdown: Shutdown,
) {
    loop {
        let (tcp, _) = tokio::select! {
            _ = shutdown.recv() => return,
            a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
        };
        let metrics = metrics.clone();
        let ready = ready.clone();
        let svc = service_fn(move |req: Request<Incoming>| {
            let r = match (req.method(), req.uri().path()) {
                (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
                (&Method::GET, "/readyz") if ready() => text(StatusCode::OK, "ready\n"),
                (&Method::GET, "/readyz") => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
                (&Method::GET, "/metrics") => {
                    let mut r = text(StatusCode::OK, metrics.render());
                    r.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        http::HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
                    );
                    r
                }
                _ => text(StatusCode::NOT_FOUND, "not found\n"),
            };
            async move { Ok::<_, std::convert::Infallible>(r) }
        });
        tokio::spawn(async move {
            let mut b = hyper::server::conn::http1::Builder::new();
            b.timer(TokioTimer::new()).header_read_timeout(Duration::from_secs(10));
            let _ = b.serve_connection(TokioIo::new(tcp), svc).await;
        });
    }
}
