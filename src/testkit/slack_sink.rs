//! A local stand-in for Slack: incoming webhooks (`POST /hook/<channel>`) and the Web API
//! (`POST /api/chat.postMessage`, `/api/chat.update` with `Authorization: Bearer`), as
//! Slack documents them. Every request is recorded and answered as scripted for its
//! channel (success once the script runs out). Web API answers are HTTP 200 with
//! `{"ok": true, "channel", "ts"}`, or `{"ok": false, "error"}`; a 429 carries
//! `Retry-After`; `chat.update` of a `ts` it never issued (or one `forget`-ed) answers
//! `message_not_found`.

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
    /// Web API: HTTP 200 with `{"ok": false, "error": <code>}`.
    ApiError(&'static str),
}

#[derive(Debug, Clone)]
pub struct Post {
    /// The webhook's channel, or the Web API request's `channel`.
    pub channel: String,
    pub body: serde_json::Value,
    pub at: Instant,
    /// Status we answered.
    pub status: u16,
    /// The Web API method (`chat.postMessage`, `chat.update`); empty for a webhook.
    pub method: String,
    /// The `Authorization` header as sent (Web API).
    pub auth: Option<String>,
    /// The `ts` we answered (Web API, when `ok`).
    pub ts: Option<String>,
}

impl Post {
    /// Answered as a success (a 2xx webhook answer, or a Web API `ok: true`).
    pub fn ok(&self) -> bool {
        self.status == 200 && (self.method.is_empty() || self.ts.is_some())
    }
}

#[derive(Default)]
struct State {
    posts: Vec<Post>,
    scripts: HashMap<String, VecDeque<Reply>>,
    /// Messages the Web API holds, by ts.
    messages: std::collections::HashSet<String>,
    next_ts: u64,
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

    /// Posts answered as a success for `channel`, in arrival order.
    pub fn delivered(&self, channel: &str) -> Vec<Post> {
        self.posts().into_iter().filter(|p| p.channel == channel && p.ok()).collect()
    }

    /// The Web API's base URL (what `--slack-api-url` takes).
    pub fn api_url(&self) -> String {
        format!("http://{}/api/", self.addr)
    }

    /// Deletes a message, as a user could: a later `chat.update` of it is `message_not_found`.
    pub fn forget(&self, ts: &str) {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).messages.remove(ts);
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
        let path = req.uri().path().to_string();
        let auth = req.headers().get(hyper::header::AUTHORIZATION).and_then(|v| v.to_str().ok()).map(str::to_string);
        let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        let parsed: serde_json::Value = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
        let method = path.strip_prefix("/api/").unwrap_or("").to_string();
        let channel = if method.is_empty() {
            path.strip_prefix("/hook/").unwrap_or("").to_string()
        } else {
            parsed["channel"].as_str().unwrap_or("").to_string()
        };
        let reply = {
            let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            st.scripts.get_mut(&channel).and_then(|q| q.pop_front()).unwrap_or(Reply::Ok)
        };
        if let Reply::Slow(d) = reply {
            tokio::time::sleep(d).await;
        }
        let (status, text, retry_after, ts) = if method.is_empty() {
            match reply {
                Reply::Ok | Reply::Slow(_) => (200, "ok".to_string(), None, None),
                Reply::TooMany(s) => (429, "rate_limited".to_string(), Some(s), None),
                Reply::Status(code, text) => (code, text.to_string(), None, None),
                Reply::ApiError(e) => (400, e.to_string(), None, None),
            }
        } else {
            self.api(&method, &parsed, auth.as_deref(), reply)
        };
        {
            let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            st.posts.push(Post { channel, body: parsed, at: Instant::now(), status, method, auth, ts });
        }
        self.posted.notify_waiters();
        let mut r = hyper::Response::new(Full::new(Bytes::from(text)));
        *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::OK);
        if let Some(s) = retry_after {
            r.headers_mut().insert(hyper::header::RETRY_AFTER, hyper::header::HeaderValue::from(s));
        }
        r
    }

    /// A Web API answer: (status, body, Retry-After, ts issued).
    fn api(
        &self,
        method: &str,
        body: &serde_json::Value,
        auth: Option<&str>,
        reply: Reply,
    ) -> (u16, String, Option<u64>, Option<String>) {
        let error = |e: &str| (200, serde_json::json!({"ok": false, "error": e}).to_string(), None, None);
        if !auth.is_some_and(|a| a.starts_with("Bearer xox")) {
            return error("not_authed");
        }
        match reply {
            Reply::TooMany(s) => {
                return (429, serde_json::json!({"ok": false, "error": "ratelimited"}).to_string(), Some(s), None)
            }
            Reply::Status(code, text) => return (code, text.to_string(), None, None),
            Reply::ApiError(e) => return error(e),
            Reply::Ok | Reply::Slow(_) => {}
        }
        let channel = body["channel"].as_str().unwrap_or("").to_string();
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let ts = match method {
            "chat.postMessage" => {
                st.next_ts += 1;
                let ts = format!("1700000000.{:06}", st.next_ts);
                st.messages.insert(ts.clone());
                ts
            }
            "chat.update" => {
                let ts = body["ts"].as_str().unwrap_or("").to_string();
                if !st.messages.contains(&ts) {
                    return error("message_not_found");
                }
                ts
            }
            _ => return error("unknown_method"),
        };
        (200, serde_json::json!({"ok": true, "channel": channel, "ts": ts}).to_string(), None, Some(ts))
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
