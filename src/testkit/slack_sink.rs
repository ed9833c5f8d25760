//! A local stand-in for Slack incoming webhooks: `POST /hook/<channel>` is recorded and
//! answered as scripted for that channel (200 `ok` once the script runs out).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::Notify;

/// One scripted answer.
#[derive(Debug, Clone)]
pub enum Reply {
    Ok,
    /// 429 with `Retry-After: secs`.
    TooMany(u64),
    Status(u16, &'static str),
    /// Answer 200 after this long.
    Slow(Duration),
}

#[derive(Debug, Clone)]
pub struct Post {
    pub channel: String,
    pub body: serde_json::Value,
    pub at: Instant,
    /// Status we answered.
    pub status: u16,
}

#[derive(Default)]
struct State {
    posts: Vec<Post>,
    scripts: HashMap<String, VecDeque<Reply>>,
}

#[derive(Clone)]
pub struct SlackSink {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    posted: Arc<Notify>,
    stop: Arc<Notify>,
}

impl SlackSink {
    pub async fn start() -> std::io::Result<SlackSink> {
        SlackSink::start_on("127.0.0.1:0".parse().expect("literal address")).await
    }

    /// Binds `addr` (to come back on a known port after a "Slack outage").
    pub async fn start_on(addr: SocketAddr) -> std::io::Result<SlackSink> {
        let listener = TcpListener::bind(addr).await?;
        let sink = SlackSink {
            addr: listener.local_addr()?,
            state: Arc::default(),
            posted: Arc::new(Notify::new()),
            stop: Arc::new(Notify::new()),
        };
        let s = sink.clone();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = tokio::select! {
                    _ = s.stop.notified() => return,
                    a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
                };
                let s2 = s.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let s = s2.clone();
                        async move { Ok::<_, std::convert::Infallible>(s.handle(req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), svc).await;
                });
            }
        });
        Ok(sink)
    }

    /// Stops accepting new connections (the port then refuses them).
    pub fn stop(&self) {
        self.stop.notify_one();
    }

    pub fn url(&self, channel: &str) -> String {
        format!("http://{}/hook/{channel}", self.addr)
    }

    pub fn script(&self, channel: &str, replies: Vec<Reply>) {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).scripts.insert(channel.to_string(), replies.into());
    }

    pub fn posts(&self) -> Vec<Post> {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).posts.clone()
    }

    /// Posts answered 2xx for `channel`, in arrival order.
    pub fn delivered(&self, channel: &str) -> Vec<Post> {
        self.posts().into_iter().filter(|p| p.channel == channel && p.status == 200).collect()
    }

    /// Waits until `pred(posts)` holds or `timeout` passes; returns whether it held.
    pub async fn wait_until(&self, timeout: Duration, pred: impl Fn(&[Post]) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.posted.notified();
            if pred(&self.posts()) {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return pred(&self.posts());
            }
        }
    }

    async fn handle(&self, req: hyper::Request<hyper::body::Incoming>) -> hyper::Response<Full<Bytes>> {
        let channel = req.uri().path().strip_prefix("/hook/").unwrap_or("").to_string();
        let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        let reply = {
            let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            st.scripts.get_mut(&channel).and_then(|q| q.pop_front()).unwrap_or(Reply::Ok)
        };
        let (status, text, retry_after) = match reply {
            Reply::Ok => (200, "ok", None),
            Reply::TooMany(s) => (429, "rate_limited", Some(s)),
            Reply::Status(code, text) => (code, text, None),
            Reply::Slow(d) => {
                tokio::time::sleep(d).await;
                (200, "ok", None)
            }
        };
        let parsed = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
        {
            let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            st.posts.push(Post { channel, body: parsed, at: Instant::now(), status });
        }
        self.posted.notify_waiters();
        let mut r = hyper::Response::new(Full::new(Bytes::from_static(text.as_bytes())));
        *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::OK);
        if let Some(s) = retry_after {
            r.headers_mut().insert(hyper::header::RETRY_AFTER, hyper::header::HeaderValue::from(s));
        }
        r
    }
}

/// A one-request HTTP/1.1 POST to `/sns`, for the demo and the load generator.
pub async fn post_sns(addr: SocketAddr, body: String) -> anyhow::Result<(u16, String)> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    let req = hyper::Request::post("/sns")
        .header(hyper::header::HOST, addr.to_string())
        .header(hyper::header::CONTENT_TYPE, "text/plain; charset=UTF-8")
        .body(Full::new(Bytes::from(body)))?;
    let resp = sender.send_request(req).await?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}
