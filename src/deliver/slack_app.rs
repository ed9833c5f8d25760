//! Slack app destinations (a bot token and a channel, the Web API): one thread per alarm.
//! The first post of an alarm is `chat.postMessage`; where it went (channel and `ts`) is
//! kept in the queue backend's thread map, durably. Later state changes reply in its
//! thread and/or `chat.update` it to show the current state, per the destination's
//! `lifecycle`; after the alarm has been OK for `lifecycle_ttl`, its next ALARM starts a
//! new thread. A digest or a notification that is not an alarm is a plain new message.
//!
//! Slack's Web API answers HTTP 200 with `{"ok": false, "error": ...}` for most failures;
//! which codes mean "wait", "gone" or "refused" is in [`classify`].
//!
//! Why not `slack-morphism`: it would bring its own HTTP client stack (hyper-rustls with
//! its own provider choices) and a typed model of the whole Web API for the two methods
//! used here, and its retry handling would sit under ours (rate limits and Retry-After are
//! the worker's, cluster-wide later). Two JSON POSTs over the gateway's one client keep
//! proxies, trust, timeouts and secrets handling in one place.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use serde_json::{json, Value};

use super::sink::{Answer, Item, Sink, Verdict};
use super::slack::{emoji, render, render_digest, short, style};
use crate::config::{AppTarget, Destination, Lifecycle};
use crate::model::{Alarm, Notification};
use crate::outbound::{Outbound, PostError};
use crate::queue::{Queue, ThreadRef};

/// When Slack sends 429 without Retry-After.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);

pub struct SlackApp {
    outbound: Outbound,
    /// `--slack-api-url`, ending in `/`.
    api: String,
    timeout: Duration,
    /// Where each alarm's thread is.
    queue: Arc<dyn Queue>,
}

/// A successful call: where the message is.
struct Posted {
    channel: String,
    ts: String,
}

enum CallError {
    /// `chat.update` of a message that no longer exists.
    NotFound,
    Failed(Answer),
}

impl SlackApp {
    pub fn new(outbound: Outbound, api: &str, timeout: Duration, queue: Arc<dyn Queue>) -> SlackApp {
        let api = if api.ends_with('/') { api.to_string() } else { format!("{api}/") };
        SlackApp { outbound, api, timeout, queue }
    }

    async fn call(&self, app: &AppTarget, method: &str, body: Value) -> Result<Posted, CallError> {
        let url = format!("{}{method}", self.api);
        let request = http::Request::post(url)
            .header(http::header::CONTENT_TYPE, "application/json; charset=utf-8")
            .header(http::header::AUTHORIZATION, format!("Bearer {}", app.token.expose()))
            .body(Bytes::from(body.to_string()));
        let request = match request {
            Ok(r) => r,
            // The token is not in the message: a bad header value says nothing about it.
            Err(_) => {
                return Err(CallError::Failed(answer(Verdict::Refused, "rejected", "bad token or API URL".into())))
            }
        };
        let (status, body, retry_after) =
            match self.outbound.send_with_retry_after(request, 64 * 1024, self.timeout).await {
                Ok(r) => r,
                Err(PostError::Timeout) => {
                    return Err(CallError::Failed(answer(Verdict::Retry, "timeout", "timed out".into())))
                }
                Err(e) => return Err(CallError::Failed(answer(Verdict::Retry, "connection_error", e.to_string()))),
            };
        let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        if status == 200 && v["ok"] == Value::Bool(true) {
            let channel = v["channel"].as_str().unwrap_or(&app.channel).to_string();
            let ts = v["ts"].as_str().unwrap_or_default().to_string();
            return Ok(Posted { channel, ts });
        }
        let error = v["error"].as_str().unwrap_or_default();
        if error == "message_not_found" {
            return Err(CallError::NotFound);
        }
        Err(CallError::Failed(classify(status, error, retry_after)))
    }

    /// The first post of an alarm, or a plain message: `chat.postMessage` to the channel.
    async fn post(&self, app: &AppTarget, payload: &Value, thread_ts: Option<&str>) -> Result<Posted, Answer> {
        let mut body = json!({"channel": app.channel, "text": payload["text"], "attachments": payload["attachments"], "unfurl_links": false});
        if let Some(ts) = thread_ts {
            body["thread_ts"] = json!(ts);
        }
        self.call(app, "chat.postMessage", body).await.map_err(|e| match e {
            CallError::Failed(a) => a,
            CallError::NotFound => answer(Verdict::Refused, "rejected", "message_not_found".into()),
        })
    }

    async fn remember(&self, key: &str, thread: ThreadRef) {
        if let Err(e) = self.queue.set_thread(key, thread).await {
            // The post stands; the alarm's next state change then opens a new thread.
            tracing::error!(error = %e, "cannot remember an alarm's Slack thread");
        }
    }

    async fn alarm(&self, dest: &Destination, app: &AppTarget, item: &Item, alarm: &Alarm) -> Answer {
        let n = &item.prepared.notification;
        let payload =
            render(n, &item.prepared.severity, &style(dest, n, &item.prepared.severity), item.history).payload();
        let key = alarm_key(dest, n, alarm);
        let now = super::now_ms();
        let at = alarm.state_change_time.as_deref().and_then(cloudwatch_ms).unwrap_or(now);
        let existing = match self.queue.thread(&key).await {
            Ok(t) => t,
            Err(e) => return answer(Verdict::Retry, "server_error", format!("thread map: {e}")),
        };
        let ttl = app.lifecycle_ttl.as_millis() as u64;
        let reopen = |t: &ThreadRef| {
            alarm.new_state == "ALARM" && t.state == "OK" && now.saturating_sub(t.state_since_ms) >= ttl
        };
        let Some(mut thread) = existing.filter(|t| !reopen(t)) else {
            return match self.post(app, &payload, None).await {
                Ok(p) => {
                    let thread = ThreadRef {
                        channel: p.channel,
                        ts: p.ts,
                        updated_at_ms: now,
                        state: alarm.new_state.to_string(),
                        state_since_ms: at,
                        last_seq: item.seq,
                    };
                    self.remember(&key, thread).await;
                    done()
                }
                Err(a) => a,
            };
        };
        if item.history.late {
            // An older state change arriving late: a note in the thread, the head untouched.
            let text = format!(":hourglass: Late: {} {}: {}", emoji(&alarm.new_state), alarm.new_state, alarm.name);
            let body = json!({"channel": thread.channel, "thread_ts": thread.ts, "text": text});
            return match self.call(app, "chat.postMessage", body).await {
                Ok(_) => done(),
                Err(CallError::Failed(a)) => a,
                Err(CallError::NotFound) => done(),
            };
        }
        let changed = thread.state != alarm.new_state;
        let reply = matches!(app.lifecycle, Lifecycle::Thread | Lifecycle::ThreadAndUpdate);
        let update = matches!(app.lifecycle, Lifecycle::Update | Lifecycle::ThreadAndUpdate);
        // A retry of this same item after its reply went out only redoes the update.
        if reply && thread.last_seq != item.seq {
            let mention = style(dest, n, &item.prepared.severity).mention.map(|m| format!("{m} ")).unwrap_or_default();
            let lasted = if changed && !thread.state.is_empty() {
                let d = Duration::from_millis(at.saturating_sub(thread.state_since_ms));
                format!(" (was {} for {})", thread.state, short(d))
            } else {
                String::new()
            };
            let text = format!("{mention}{} {}: {}{lasted}", emoji(&alarm.new_state), alarm.new_state, alarm.name);
            let body = json!({"channel": thread.channel, "thread_ts": thread.ts, "text": text, "unfurl_links": false});
            match self.call(app, "chat.postMessage", body).await {
                Ok(_) => {}
                Err(CallError::Failed(a)) => return a,
                Err(CallError::NotFound) => {}
            }
            thread.last_seq = item.seq;
            if changed {
                thread.state = alarm.new_state.to_string();
                thread.state_since_ms = at;
            }
            thread.updated_at_ms = now;
            self.remember(&key, thread.clone()).await;
        }
        if update {
            let body = json!({"channel": thread.channel, "ts": thread.ts, "text": payload["text"], "attachments": payload["attachments"]});
            match self.call(app, "chat.update", body).await {
                Ok(_) => {}
                Err(CallError::NotFound) => {
                    // Someone deleted the first post: post anew and key the alarm to it.
                    match self.post(app, &payload, None).await {
                        Ok(p) => {
                            thread.channel = p.channel;
                            thread.ts = p.ts;
                        }
                        Err(a) => return a,
                    }
                }
                Err(CallError::Failed(a)) => return a,
            }
            thread.last_seq = item.seq;
            if changed && thread.state != alarm.new_state {
                thread.state = alarm.new_state.to_string();
                thread.state_since_ms = at;
            }
            thread.updated_at_ms = now;
            self.remember(&key, thread).await;
        }
        done()
    }
}

#[async_trait]
impl Sink for SlackApp {
    async fn send(&self, dest: &Destination, items: &[Item]) -> Answer {
        let Some(app) = &dest.app else {
            return answer(Verdict::Refused, "rejected", "not a Slack app destination".into());
        };
        if let [one] = items {
            if let (Some(alarm), false) = (&one.prepared.notification.alarm, app.lifecycle == Lifecycle::Off) {
                return self.alarm(dest, app, one, alarm).await;
            }
        }
        let payload = match items {
            [one] => {
                let p = &one.prepared;
                render(&p.notification, &p.severity, &style(dest, &p.notification, &p.severity), one.history).payload()
            }
            _ => render_digest(&items.iter().map(|i| (i.prepared.clone(), i.history)).collect::<Vec<_>>()).payload(),
        };
        match self.post(app, &payload, None).await {
            Ok(_) => done(),
            Err(a) => a,
        }
    }
}

/// Slack's Web API error model: which answers wait, which mean the destination is gone,
/// which refuse this message, which are worth a retry.
pub fn classify(status: u16, error: &str, retry_after: Option<Duration>) -> Answer {
    let wait = || Verdict::RetryAfter(retry_after.unwrap_or(DEFAULT_RETRY_AFTER).max(Duration::from_millis(1)));
    let (verdict, outcome) = match (status, error) {
        (429, _) | (_, "ratelimited") => (wait(), "rate_limited"),
        (500..=599, _) => (Verdict::Retry, "server_error"),
        (
            _,
            "invalid_auth" | "account_inactive" | "token_revoked" | "channel_not_found" | "not_in_channel"
            | "is_archived",
        ) => (Verdict::Gone, "rejected"),
        (_, "msg_too_long" | "invalid_blocks") => (Verdict::Refused, "rejected"),
        (_, "internal_error" | "fatal_error" | "service_unavailable" | "request_timeout") => {
            (Verdict::Retry, "server_error")
        }
        _ => (Verdict::Refused, "rejected"),
    };
    let detail = if error.is_empty() { format!("HTTP {status}") } else { format!("HTTP {status} {error}") };
    answer(verdict, outcome, detail)
}

/// Per destination: alarm ARN, else account, region and name.
fn alarm_key(dest: &Destination, n: &Notification, a: &Alarm) -> String {
    let id = match &a.arn {
        Some(arn) => arn.to_string(),
        None => format!(
            "{}:{}:{}",
            n.account.as_deref().unwrap_or_default(),
            n.region.as_deref().unwrap_or_default(),
            a.name
        ),
    };
    format!("{}|{id}", dest.name)
}

/// CloudWatch's `2021-11-10T02:45:55.640+0000`, in ms since the epoch.
fn cloudwatch_ms(s: &str) -> Option<u64> {
    let fixed = s.strip_suffix("+0000").map(|p| format!("{p}Z")).unwrap_or_else(|| s.to_string());
    let t = humantime::parse_rfc3339_weak(&fixed).ok()?;
    t.duration_since(std::time::UNIX_EPOCH).ok().map(|d| d.as_millis() as u64)
}

fn answer(verdict: Verdict, outcome: &'static str, detail: String) -> Answer {
    Answer { verdict, outcome, detail }
}

fn done() -> Answer {
    answer(Verdict::Done, "ok", String::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn web_api_error_classes() {
        let v = |s, e| classify(s, e, None).verdict;
        assert_eq!(
            classify(429, "ratelimited", Some(Duration::from_secs(7))).verdict,
            Verdict::RetryAfter(Duration::from_secs(7))
        );
        assert_eq!(v(200, "ratelimited"), Verdict::RetryAfter(DEFAULT_RETRY_AFTER));
        for gone in
            ["invalid_auth", "account_inactive", "token_revoked", "channel_not_found", "not_in_channel", "is_archived"]
        {
            assert_eq!(v(200, gone), Verdict::Gone, "{gone}");
        }
        assert_eq!(v(200, "msg_too_long"), Verdict::Refused);
        assert_eq!(v(200, "invalid_blocks"), Verdict::Refused);
        assert_eq!(v(503, ""), Verdict::Retry);
        assert_eq!(v(200, "internal_error"), Verdict::Retry);
        assert_eq!(classify(200, "channel_not_found", None).detail, "HTTP 200 channel_not_found");
    }
}
