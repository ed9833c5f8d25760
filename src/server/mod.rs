//! Listeners: the public one (`POST /sns`, and a bare `GET /healthz`; HTTP or HTTPS) and the admin one
//! (`/healthz`, `/readyz`, `/metrics`). Each connection is served by hyper with a header
//! read timeout; each body read has its own timeout and size cap, so a slow or huge client
//! cannot hold a connection or memory. A semaphore bounds open connections.

pub mod tls;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
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
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body: 1024 * 1024,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(15),
            max_connections: 4096,
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
        let _ = tcp.set_nodelay(true);
        let gateway = gateway.clone();
        let svc = service_fn(move |req| {
            let gateway = gateway.clone();
            async move { Ok::<_, std::convert::Infallible>(public(req, &gateway, limits, peer).await) }
        });
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder.timer(TokioTimer::new()).header_read_timeout(limits.header_timeout);
        match &tls {
            None => {
                let conn = builder.serve_connection(TokioIo::new(tcp), svc);
                let fut = graceful.watch(conn);
                tokio::spawn(async move {
                    let _ = fut.await;
                    drop(permit);
                });
            }
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                let watcher = graceful.watcher();
                tokio::spawn(async move {
                    let handshake = tokio::time::timeout(limits.header_timeout, acceptor.accept(tcp)).await;
                    let Ok(Ok(stream)) = handshake else {
                        tracing::debug!(%peer, "TLS handshake failed or timed out");
                        return;
                    };
                    let _ = watcher.watch(builder.serve_connection(TokioIo::new(stream), svc)).await;
                    drop(permit);
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
    let body = match tokio::time::timeout(limits.body_timeout, Limited::new(req.into_body(), limits.max_body).collect())
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
        Ok(Ok(b)) => b.to_bytes(),
    };
    let answer = gateway.handle_sns(raw, &body).await;
    metrics.request_seconds.observe(started.elapsed().as_secs_f64());
    match answer {
        Ok(outcome) => {
            tracing::debug!(%peer, outcome = outcome.label(), "sns message handled");
            text(StatusCode::OK, format!("{}\n", outcome.label()))
        }
        Err(e) => {
            metrics.reject(e.label());
            tracing::warn!(%peer, status = e.status().as_u16(), reason = e.label(), error = %e, "sns message refused");
            text(e.status(), format!("{}\n", e.label()))
        }
    }
}

fn reject_too_large(metrics: &Metrics, peer: SocketAddr) -> Response<Body> {
    metrics.reject("too_large");
    tracing::warn!(%peer, "request body over the limit");
    text(StatusCode::PAYLOAD_TOO_LARGE, "body too large\n")
}

/// Serves `/healthz`, `/readyz` and `/metrics` until `shutdown`.
pub async fn serve_admin(listener: TcpListener, metrics: Metrics, ready: Arc<AtomicBool>, mut shutdown: Shutdown) {
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
                (&Method::GET, "/readyz") if ready.load(Ordering::SeqCst) => text(StatusCode::OK, "ready\n"),
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
