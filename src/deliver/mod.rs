//! Delivery: one worker per destination, so one slow or failing webhook never delays
//! another. A worker takes its destination's pending deliveries in accept order (which
//! keeps each alarm's state changes in order), waits for the rate limiter, posts, and
//! applies the failure table (README.md, "Delivery"): 2xx done; 429 waits Retry-After; 5xx, timeouts
//! and connection errors back off exponentially with full jitter; other 4xx and an
//! exhausted retry budget become dead letters. When a destination falls behind (the worker
//! had to wait for the rate limit, Retry-After or a retry, or the backlog is deep), the
//! waiting notifications are merged into one digest post; otherwise each goes on its own.

pub mod client;
pub mod slack;

use std::collections::{HashMap, VecDeque};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::Notify;

use crate::config::reload::ConfigHandle;
use crate::config::{Config, Destination};
use crate::metrics::Metrics;
use crate::model::{Envelope, Notification, Prepared};
use crate::shutdown::Shutdown;
use crate::store::{Delivery, SeqSet, Store};
pub use client::{Answer, HttpClient, PostError};

/// Backlog at which a worker merges waiting notifications into one digest even when it did
/// not have to wait: the webhook is answering slower than alarms arrive.
const DIGEST_BACKLOG: usize = 50;
/// Queue depth up to which a delivery keeps its parsed notification in memory.
const KEEP_PREPARED_UP_TO: usize = 2048;
/// Most notifications in one digest.
const DIGEST_MAX: usize = 20;
/// Exponential backoff: base and cap of the full-jitter window.
const BACKOFF_BASE: Duration = Duration::from_millis(500);
const BACKOFF_CAP: Duration = Duration::from_secs(300);
/// When Slack sends 429 without Retry-After.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);

/// Slack answers that mean the webhook itself is gone, not this message.
fn webhook_gone(a: &Answer) -> bool {
    let body = a.body.trim();
    matches!(
        (a.status, body),
        (404, "no_service" | "channel_not_found" | "no_team")
            | (410, "channel_is_archived")
            | (403, "action_prohibited" | "invalid_token" | "team_disabled")
    ) || (a.status == 410)
}

/// What to do after one post.
#[derive(Debug, PartialEq)]
pub enum Verdict {
    Done,
    RetryAfter(Duration),
    Backoff,
    /// Not retried; `gone` when the webhook itself no longer exists.
    Fail {
        gone: bool,
    },
}

pub fn judge(result: &Result<Answer, PostError>) -> Verdict {
    match result {
        Ok(a) if (200..300).contains(&a.status) => Verdict::Done,
        Ok(a) if a.status == 429 => {
            Verdict::RetryAfter(a.retry_after.unwrap_or(DEFAULT_RETRY_AFTER).max(Duration::from_millis(1)))
        }
        Ok(a) if a.status >= 500 || a.status == 408 => Verdict::Backoff,
        Ok(a) => Verdict::Fail { gone: webhook_gone(a) },
        Err(PostError::BadUrl) => Verdict::Fail { gone: false },
        Err(_) => Verdict::Backoff,
    }
}

/// Full jitter (AWS Architecture Blog, "Exponential Backoff and Jitter"): a uniform
/// pick in [0, min(cap, base·2^attempt)]. Hand-written because the delay must interleave
/// with Retry-After and the per-destination budget that a retry crate's loop does not know.
pub fn backoff(attempt: u32) -> Duration {
    let window = BACKOFF_BASE.saturating_mul(1u32 << attempt.min(20)).min(BACKOFF_CAP);
    window.mul_f64(rand::random::<f64>())
}

/// Deliveries one destination holds in memory; past this the rest wait only in the store
/// and the worker reads them back in accept order as it catches up. Memory under a long
/// Slack outage or a burst is then the store's index (~50 bytes a message), not a queue.
pub const DEFAULT_QUEUE_CAP: usize = 4096;

struct Queue {
    items: Mutex<QueueState>,
    wake: Notify,
}

#[derive(Default)]
struct QueueState {
    items: VecDeque<Delivery>,
    /// Seqs in `items`, so a delivery is never held twice.
    held: SeqSet,
    /// The store holds deliveries for this destination that `items` does not.
    spilled: bool,
    /// About how many those are (for the depth gauge).
    spilled_count: usize,
}

impl QueueState {
    fn depth(&self) -> usize {
        self.items.len() + self.spilled_count
    }

    fn len(&self) -> usize {
        self.items.len()
    }
}

/// Remembers when alarms entered ALARM, so an OK can say how long it lasted.
/// Per (destination, alarm): the newest state change posted, and since when it is in ALARM.
/// Keyed by a hash, so an entry costs a few dozen bytes; bounded because a fleet has far
/// fewer alarms than this, while a load test has one per message.
#[derive(Clone, Copy)]
struct Track {
    last_change: SystemTime,
    alarm_since: Option<SystemTime>,
}
type AlarmHistory = moka::sync::Cache<u64, Track>;
const ALARM_HISTORY_CAPACITY: u64 = 10_000;

/// Starts and feeds the per-destination workers.
#[derive(Clone)]
pub struct Deliverer {
    inner: Arc<DelivererInner>,
}

struct DelivererInner {
    store: Store,
    config: Arc<ConfigHandle>,
    client: HttpClient,
    metrics: Metrics,
    queues: Mutex<HashMap<String, Arc<Queue>>>,
    alarm_history: AlarmHistory,
    shutdown: Shutdown,
    queue_cap: usize,
    /// Workers in flight, so shutdown can wait for the current posts to finish.
    tasks: tokio_util::task::TaskTracker,
}

impl Deliverer {
    pub fn new(
        store: Store,
        config: Arc<ConfigHandle>,
        client: HttpClient,
        metrics: Metrics,
        shutdown: Shutdown,
        queue_cap: usize,
    ) -> Deliverer {
        Deliverer {
            inner: Arc::new(DelivererInner {
                store,
                config,
                client,
                metrics,
                queues: Mutex::new(HashMap::new()),
                alarm_history: moka::sync::Cache::builder()
                    .max_capacity(ALARM_HISTORY_CAPACITY)
                    .time_to_idle(Duration::from_secs(7 * 86400))
                    .build(),
                shutdown,
                queue_cap,
                tasks: tokio_util::task::TaskTracker::new(),
            }),
        }
    }

    /// Hands stored deliveries to their destinations' workers.
    pub fn enqueue(&self, deliveries: Vec<Delivery>) {
        let mut queues = self.inner.queues.lock().unwrap_or_else(|p| p.into_inner());
        for d in deliveries {
            let d_name = d.destination.clone();
            let queue = queues.entry(d.destination.clone()).or_insert_with(|| {
                let q = Arc::new(Queue { items: Mutex::new(QueueState::default()), wake: Notify::new() });
                let worker = Worker {
                    d: self.inner.clone(),
                    name: d.destination.clone(),
                    queue: q.clone(),
                    limiter: None,
                    singles_left: 0,
                };
                self.inner.tasks.spawn(worker.run());
                q
            });
            let depth = {
                let mut st = queue.items.lock().unwrap_or_else(|p| p.into_inner());
                let mut d = d;
                if st.held.contains(&d.seq) {
                    // Already read back from the store by the worker.
                } else if st.spilled || st.items.len() >= self.inner.queue_cap {
                    // The worker reads it back from the store, in order, when it gets there.
                    st.spilled = true;
                    st.spilled_count += 1;
                } else {
                    if st.items.len() >= KEEP_PREPARED_UP_TO {
                        // A long backlog (Slack down) must not hold every message in memory:
                        // past this depth the worker reads them back from disk.
                        d.prepared = None;
                    }
                    st.held.insert(d.seq);
                    st.items.push_back(d);
                }
                st.depth()
            };
            self.inner.metrics.queue_depth.get_or_create(&Metrics::named("destination", &d_name)).set(depth as i64);
            queue.wake.notify_one();
        }
    }

    /// When the oldest delivery still waiting for each destination was accepted (ms since
    /// the epoch), `None` when none waits. Queues are in accept order and what is spilled
    /// to the store is newer than what is held, so the head is the oldest.
    pub fn oldest_pending(&self) -> Vec<(String, Option<u64>)> {
        let queues = self.inner.queues.lock().unwrap_or_else(|p| p.into_inner());
        queues
            .iter()
            .map(|(name, q)| {
                let st = q.items.lock().unwrap_or_else(|p| p.into_inner());
                (name.clone(), st.items.front().map(|d| d.accepted_at_ms))
            })
            .collect()
    }

    /// Total deliveries waiting in memory.
    pub fn pending(&self) -> usize {
        let queues = self.inner.queues.lock().unwrap_or_else(|p| p.into_inner());
        queues.values().map(|q| q.items.lock().map(|i| i.depth()).unwrap_or(0)).sum()
    }

    /// Waits until every worker has stopped (after shutdown) or `timeout` passes.
    pub async fn wait_stopped(&self, timeout: Duration) -> bool {
        for q in self.inner.queues.lock().unwrap_or_else(|p| p.into_inner()).values() {
            q.wake.notify_one();
        }
        self.inner.tasks.close();
        tokio::time::timeout(timeout, self.inner.tasks.wait()).await.is_ok()
    }
}

struct Worker {
    d: Arc<DelivererInner>,
    name: String,
    queue: Arc<Queue>,
    /// Rebuilt when a reload changes the destination's rate or burst.
    limiter: Option<((Duration, u32), DefaultDirectRateLimiter)>,
    /// After Slack refused a digest, its notifications go one by one, so that only the one
    /// Slack objects to becomes a dead letter.
    singles_left: usize,
}

enum Batch {
    One(Delivery),
    Digest(Vec<Delivery>),
}

impl Worker {
    async fn run(mut self) {
        let mut shutdown = self.d.shutdown.clone();
        let mut attempts: u32 = 0;
        loop {
            if shutdown.is_shutdown() {
                return;
            }
            let refill =
                self.queue.items.lock().map(|st| st.spilled && st.len() <= self.d.queue_cap / 2).unwrap_or(false);
            if refill {
                self.refill().await;
            }
            let head = self.queue.items.lock().unwrap_or_else(|p| p.into_inner()).items.front().cloned();
            let Some(head) = head else {
                tokio::select! {
                    _ = self.queue.wake.notified() => continue,
                    _ = shutdown.recv() => return,
                }
            };
            let config = self.d.config.get();
            let Some(dest) = config.destinations.get(&self.name).cloned() else {
                // Removed from routes.toml while deliveries were pending: keep them replayable.
                self.dead_letter_batch(&Batch::One(head), "destination no longer in routes.toml", attempts).await;
                continue;
            };
            let waited = self.wait_rate_limit(&dest, &mut shutdown).await;
            if shutdown.is_shutdown() {
                return;
            }
            let batch = self.take_batch(head, waited || attempts > 0);
            let Some((body, what)) = self.render(&batch, &config, &dest) else {
                // Message vanished from the store (finished elsewhere): drop from the queue.
                self.pop(&batch);
                continue;
            };
            let result = self.d.client.post_json(&dest.url, body).await;
            let verdict = judge(&result);
            let outcome = match (&result, &verdict) {
                (_, Verdict::Done) => "ok",
                (Ok(a), _) if a.status == 429 => "rate_limited",
                (Ok(a), _) if a.status >= 500 => "server_error",
                (Ok(_), _) => "rejected",
                (Err(PostError::Timeout), _) => "timeout",
                (Err(_), _) => "connection_error",
            };
            self.d.metrics.delivery(&self.name, outcome);
            match verdict {
                Verdict::Done => {
                    attempts = 0;
                    tracing::debug!(destination = %self.name, notifications = batch_items(&batch).len(), what = %what, "delivered");
                    self.d
                        .metrics
                        .destination_unhealthy
                        .get_or_create(&Metrics::named("destination", &self.name))
                        .set(0);
                    let now = now_ms();
                    for del in batch_items(&batch) {
                        self.d
                            .metrics
                            .delivery_seconds
                            .get_or_create(&Metrics::named("destination", &self.name))
                            .observe(now.saturating_sub(del.accepted_at_ms) as f64 / 1000.0);
                        self.d.store.finish(&self.name, del.seq).await;
                    }
                    self.pop(&batch);
                }
                Verdict::Fail { gone: false } if matches!(batch, Batch::Digest(_)) => {
                    self.singles_left = batch_items(&batch).len();
                    tracing::warn!(destination = %self.name, "Slack refused a digest; sending its notifications one by one");
                }
                Verdict::Fail { gone } => {
                    let answer = match &result {
                        Ok(a) => format!("HTTP {} {}", a.status, crate::model::truncate(a.body.trim(), 100)),
                        Err(e) => e.to_string(),
                    };
                    if gone {
                        self.d
                            .metrics
                            .destination_unhealthy
                            .get_or_create(&Metrics::named("destination", &self.name))
                            .set(1);
                        tracing::error!(destination = %self.name, answer = %answer, "webhook is gone (Slack says so); fix or replace this destination");
                    }
                    match (&dest.fallback, gone) {
                        (Some(fallback), true) => self.reroute(&batch, fallback, &answer).await,
                        _ => self.dead_letter_batch(&batch, &answer, attempts + 1).await,
                    }
                    attempts = 0;
                }
                Verdict::RetryAfter(_) | Verdict::Backoff if self.budget_spent(&dest, &batch, attempts + 1) => {
                    self.dead_letter_batch(&batch, &format!("retry budget spent ({outcome})"), attempts + 1).await;
                    attempts = 0;
                }
                Verdict::RetryAfter(wait) => {
                    attempts += 1;
                    self.d.metrics.delivery_retries.get_or_create(&Metrics::named("destination", &self.name)).inc();
                    tracing::warn!(destination = %self.name, wait_ms = wait.as_millis() as u64, "Slack answered 429; waiting Retry-After");
                    self.sleep(wait, &mut shutdown).await;
                }
                Verdict::Backoff => {
                    attempts += 1;
                    self.d.metrics.delivery_retries.get_or_create(&Metrics::named("destination", &self.name)).inc();
                    let wait = backoff(attempts);
                    tracing::warn!(destination = %self.name, outcome, attempt = attempts, wait_ms = wait.as_millis() as u64, "delivery failed; retrying");
                    self.sleep(wait, &mut shutdown).await;
                }
            }
            let depth = self.queue.items.lock().map(|i| i.depth()).unwrap_or(0);
            self.d.metrics.queue_depth.get_or_create(&Metrics::named("destination", &self.name)).set(depth as i64);
        }
    }

    fn budget_spent(&self, dest: &Destination, batch: &Batch, attempts: u32) -> bool {
        let oldest = batch_items(batch).iter().map(|d| d.accepted_at_ms).min().unwrap_or(0);
        attempts >= dest.retry.max_attempts || now_ms().saturating_sub(oldest) > dest.retry.max_age.as_millis() as u64
    }

    async fn sleep(&self, d: Duration, shutdown: &mut Shutdown) {
        tokio::select! {
            _ = tokio::time::sleep(d) => {}
            _ = shutdown.recv() => {}
        }
    }

    /// Takes a token from the destination's limiter; returns whether it had to wait for it.
    async fn wait_rate_limit(&mut self, dest: &Destination, shutdown: &mut Shutdown) -> bool {
        let key = (dest.rate.interval(), dest.burst);
        if self.limiter.as_ref().map(|(k, _)| *k) != Some(key) {
            let burst = NonZeroU32::new(dest.burst).unwrap_or(NonZeroU32::MIN);
            let quota = Quota::with_period(key.0.max(Duration::from_nanos(1)))
                .map(|q| q.allow_burst(burst))
                .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN));
            self.limiter = Some((key, RateLimiter::direct(quota)));
        }
        let Some((_, limiter)) = &self.limiter else { return false };
        if limiter.check().is_ok() {
            return false;
        }
        tokio::select! {
            _ = limiter.until_ready() => {}
            _ = shutdown.recv() => {}
        }
        true
    }

    /// One delivery, or a digest of the head and those waiting behind it when the
    /// destination is behind.
    fn take_batch(&mut self, head: Delivery, behind: bool) -> Batch {
        if self.singles_left > 0 {
            self.singles_left -= 1;
            return Batch::One(head);
        }
        let st = self.queue.items.lock().unwrap_or_else(|p| p.into_inner());
        if (behind && st.depth() > 1) || st.depth() > DIGEST_BACKLOG {
            Batch::Digest(st.items.iter().take(DIGEST_MAX).cloned().collect())
        } else {
            Batch::One(head)
        }
    }

    fn pop(&self, batch: &Batch) {
        let n = batch_items(batch).len();
        let mut st = self.queue.items.lock().unwrap_or_else(|p| p.into_inner());
        for _ in 0..n {
            if let Some(d) = st.items.pop_front() {
                st.held.remove(&d.seq);
            }
        }
    }

    /// Reads the next deliveries for this destination back from the store, oldest first.
    async fn refill(&self) {
        // Finishes sent so far must be in the store's index first, or a delivery just
        // made would look pending again.
        self.d.store.flush().await;
        let mut st = self.queue.items.lock().unwrap_or_else(|p| p.into_inner());
        let want = self.d.queue_cap - st.items.len().min(self.d.queue_cap);
        let more = self.d.store.waiting_for(&self.name, &st.held, want);
        // Under the queue lock, so no enqueue can slip between the scan and this.
        if more.len() < want {
            st.spilled = false;
            st.spilled_count = 0;
        } else {
            st.spilled_count = st.spilled_count.saturating_sub(more.len());
        }
        for d in more {
            st.held.insert(d.seq);
            st.items.push_back(d);
        }
    }

    /// The body to post, and (only when debug logging is on) what it names, for the log.
    fn render(&self, batch: &Batch, config: &Config, dest: &Destination) -> Option<(Bytes, String)> {
        let mut loaded: Vec<Arc<Prepared>> = Vec::new();
        for del in batch_items(batch) {
            if let Some(p) = &del.prepared {
                loaded.push(p.clone());
                continue;
            }
            match self.d.store.load(del.seq) {
                Ok(Some(m)) => {
                    let notification = Notification::from_envelope(m.envelope);
                    let severity = config.severity.classify(&notification);
                    loaded.push(Arc::new(Prepared { notification, severity }));
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::error!(destination = %self.name, seq = del.seq, error = %e, "cannot read stored message")
                }
            }
        }
        if loaded.is_empty() {
            return None;
        }
        let what = if tracing::enabled!(tracing::Level::DEBUG) {
            loaded.iter().map(|p| slack::headline(&p.notification)).collect::<Vec<_>>().join(", ")
        } else {
            String::new()
        };
        let rendered = if let [p] = loaded.as_slice() {
            let history = self.track_alarm(&p.notification);
            slack::render(&p.notification, &p.severity, &style(dest, &p.notification, &p.severity), history)
        } else {
            let items: Vec<_> = loaded
                .into_iter()
                .map(|p| {
                    let h = self.track_alarm(&p.notification);
                    (p, h)
                })
                .collect();
            slack::render_digest(&items)
        };
        let body = serde_json::to_vec(&rendered.payload).ok()?;
        Some((Bytes::from(body), what))
    }

    /// Places a notification in its alarm's history: how long an ALARM lasted (for an OK),
    /// and whether SNS delivered it after a newer state change was already posted (SNS does
    /// not guarantee order). A re-render of the same notification (a retry) is not late.
    fn track_alarm(&self, n: &Notification) -> slack::History {
        let Some(a) = n.alarm.as_ref() else { return slack::History::default() };
        let key = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            (&self.name, a.arn.as_deref().unwrap_or(&a.name)).hash(&mut h);
            h.finish()
        };
        let at = a.state_change_time.as_deref().and_then(parse_cloudwatch_time).unwrap_or_else(SystemTime::now);
        let prev = self.d.alarm_history.get(&key);
        if prev.is_some_and(|t| at < t.last_change) {
            return slack::History { lasted: None, late: true };
        }
        let since = prev.and_then(|t| t.alarm_since);
        let (alarm_since, lasted) = match a.new_state.as_str() {
            "ALARM" => (since.or(Some(at)), None),
            "OK" => (None, since.and_then(|s| at.duration_since(s).ok())),
            _ => (since, None),
        };
        self.d.alarm_history.insert(key, Track { last_change: at, alarm_since });
        slack::History { lasted, late: false }
    }

    async fn dead_letter_batch(&self, batch: &Batch, reason: &str, attempts: u32) {
        for del in batch_items(batch) {
            self.d.metrics.dead_letters.get_or_create(&Metrics::named("destination", &self.name)).inc();
            tracing::error!(destination = %self.name, seq = del.seq, reason, "delivery dead-lettered");
            if let Err(e) = self.d.store.dead_letter(del, reason, attempts).await {
                tracing::error!(destination = %self.name, seq = del.seq, error = %e, "cannot write dead letter; delivery stays pending");
            }
        }
        self.pop(batch);
    }

    /// Sends a gone destination's deliveries to its fallback, one hop at most: a delivery
    /// that is itself a fallback copy becomes a dead letter instead.
    async fn reroute(&self, batch: &Batch, fallback: &str, answer: &str) {
        for del in batch_items(batch) {
            let Ok(Some(m)) = self.d.store.load(del.seq) else { continue };
            if let Some(from) = &m.envelope.fallback_from {
                let reason = format!("{answer}; already a fallback from {from}, not followed further");
                tracing::error!(destination = %self.name, seq = del.seq, from = %from, "fallback destination is gone too; dead-lettering");
                self.d.metrics.dead_letters.get_or_create(&Metrics::named("destination", &self.name)).inc();
                if let Err(e) = self.d.store.dead_letter(del, &reason, 1).await {
                    tracing::error!(destination = %self.name, seq = del.seq, error = %e, "cannot write dead letter; delivery stays pending");
                }
                continue;
            }
            let envelope = Envelope { fallback_from: Some(self.name.clone()), ..m.envelope };
            match self.d.store.accept(&envelope, vec![fallback.to_string()], None).await {
                Ok(deliveries) => {
                    tracing::warn!(destination = %self.name, fallback, answer, "sent to fallback destination");
                    Deliverer { inner: self.d.clone() }.enqueue(deliveries);
                    self.d.store.finish(&self.name, del.seq).await;
                }
                Err(e) => {
                    tracing::error!(destination = %self.name, error = %e, "fallback failed; dead-lettering");
                    let _ = self.d.store.dead_letter(del, answer, 1).await;
                }
            }
        }
        self.pop(batch);
    }
}

fn batch_items(b: &Batch) -> &[Delivery] {
    match b {
        Batch::One(d) => std::slice::from_ref(d),
        Batch::Digest(v) => v,
    }
}

/// How a destination dresses one notification. Mentions page people, so they fire only on
/// the alarm states the destination names (`mention_states`, default ALARM): an OK or a
/// non-alarm notification of a critical severity must not wake the channel.
pub fn style(dest: &Destination, n: &Notification, severity: &str) -> slack::Style {
    let state = n.alarm.as_ref().map(|a| a.new_state.as_str());
    if !state.is_some_and(|st| dest.mention_states.iter().any(|m| m == st)) {
        return slack::Style { mention: None };
    }
    let mention = if dest.mention_channel.iter().any(|s| s == severity) {
        Some("<!channel>")
    } else if dest.mention_here.iter().any(|s| s == severity) {
        Some("<!here>")
    } else {
        None
    };
    slack::Style { mention }
}

pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// CloudWatch writes `2021-11-10T02:45:55.640+0000`.
fn parse_cloudwatch_time(s: &str) -> Option<SystemTime> {
    let fixed = match s.strip_suffix("+0000") {
        Some(prefix) => format!("{prefix}Z"),
        None => s.to_string(),
    };
    humantime::parse_rfc3339_weak(&fixed).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, body: &str) -> Result<Answer, PostError> {
        Ok(Answer { status, body: body.into(), retry_after: None })
    }

    #[test]
    fn failure_table() {
        assert_eq!(judge(&answer(200, "ok")), Verdict::Done);
        assert_eq!(judge(&answer(204, "")), Verdict::Done);
        assert_eq!(judge(&answer(429, "")), Verdict::RetryAfter(DEFAULT_RETRY_AFTER));
        let with = Ok(Answer { status: 429, body: String::new(), retry_after: Some(Duration::from_secs(9)) });
        assert_eq!(judge(&with), Verdict::RetryAfter(Duration::from_secs(9)));
        assert_eq!(judge(&answer(500, "")), Verdict::Backoff);
        assert_eq!(judge(&answer(503, "")), Verdict::Backoff);
        assert_eq!(judge(&Err(PostError::Timeout)), Verdict::Backoff);
        assert_eq!(judge(&Err(PostError::Connect)), Verdict::Backoff);
        assert_eq!(judge(&answer(400, "invalid_payload")), Verdict::Fail { gone: false });
        assert_eq!(judge(&answer(404, "no_service")), Verdict::Fail { gone: true });
        assert_eq!(judge(&answer(410, "channel_is_archived")), Verdict::Fail { gone: true });
        assert_eq!(judge(&answer(403, "invalid_token")), Verdict::Fail { gone: true });
        assert_eq!(judge(&answer(403, "something_else")), Verdict::Fail { gone: false });
    }

    #[test]
    fn backoff_is_full_jitter_within_capped_window() {
        for attempt in 0..30 {
            let window = BACKOFF_BASE.saturating_mul(1u32 << attempt.min(20)).min(BACKOFF_CAP);
            for _ in 0..50 {
                assert!(backoff(attempt) <= window);
            }
        }
        // Full jitter spreads: some picks land in the lower half of the window.
        assert!((0..200).any(|_| backoff(10) < BACKOFF_CAP / 2));
    }

    #[test]
    fn cloudwatch_times() {
        assert!(parse_cloudwatch_time("2021-11-10T02:45:55.640+0000").is_some());
        assert!(parse_cloudwatch_time("garbage").is_none());
    }
}
