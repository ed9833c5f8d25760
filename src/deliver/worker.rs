//! One destination's worker: takes its deliveries in accept order (which keeps each
//! alarm's state changes in order), waits for the rate limiter, hands one notification or
//! a digest to the destination's sink, and acts on the sink's verdict: done; wait
//! Retry-After; back off and retry; reroute to the fallback when the destination is gone;
//! dead-letter what is refused or out of budget. When the destination falls behind (it
//! had to wait for the rate limit, Retry-After or a retry, or the backlog is deep), the
//! waiting notifications go out merged into one digest; otherwise each goes on its own.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;

use super::queue::DestinationQueue;
use super::sink::{Answer, Item, Verdict};
use super::{dead_letters, retry, slack, DelivererInner};
use crate::config::{Config, Destination};
use crate::metrics::Metrics;
use crate::model::{Envelope, Notification, Prepared, Str};
use crate::queue::{Accepted, Delivery, NewMessage};
use crate::shutdown::Shutdown;

/// Backlog at which a worker merges waiting notifications into one digest even when it did
/// not have to wait: the destination is answering slower than alarms arrive.
const DIGEST_BACKLOG: usize = 50;
/// Most notifications in one digest.
const DIGEST_MAX: usize = 20;

/// This destination's metric handles, looked up once rather than per delivery.
struct Handles {
    unhealthy: Gauge,
    retries: Counter,
    dead_letters: Counter,
    delivery_seconds: Histogram,
    queue_depth: Gauge,
    retry_after_clamped: Counter,
    /// `deliveries_total` by outcome label, filled as outcomes occur.
    outcomes: Vec<(&'static str, Counter)>,
}

impl Handles {
    fn new(m: &Metrics, name: &str) -> Handles {
        let label = Metrics::named("destination", name);
        Handles {
            unhealthy: m.destination_unhealthy.get_or_create(&label).clone(),
            retries: m.delivery_retries.get_or_create(&label).clone(),
            dead_letters: m.dead_letters.get_or_create(&label).clone(),
            delivery_seconds: m.delivery_seconds.get_or_create(&label).clone(),
            queue_depth: m.queue_depth.get_or_create(&label).clone(),
            retry_after_clamped: m.retry_after_clamped.get_or_create(&label).clone(),
            outcomes: Vec::new(),
        }
    }

    fn outcome(&mut self, m: &Metrics, name: &str, outcome: &'static str) {
        if let Some((_, c)) = self.outcomes.iter().find(|(o, _)| *o == outcome) {
            c.inc();
            return;
        }
        let c =
            m.deliveries.get_or_create(&[("destination", name.to_string()), ("outcome", outcome.to_string())]).clone();
        c.inc();
        self.outcomes.push((outcome, c));
    }
}

pub(super) struct Worker {
    d: Arc<DelivererInner>,
    name: String,
    queue: Arc<DestinationQueue>,
    /// Rebuilt when a reload changes the destination's rate or burst.
    limiter: Option<((Duration, u32), DefaultDirectRateLimiter)>,
    /// After the sink refused a digest, its notifications go one by one, so that only the
    /// one it objects to becomes a dead letter.
    singles_left: usize,
    handles: Handles,
    /// A clamped Retry-After is logged once per worker (then only counted).
    clamp_logged: bool,
}

impl Worker {
    pub(super) fn new(d: Arc<DelivererInner>, name: String, queue: Arc<DestinationQueue>) -> Worker {
        let handles = Handles::new(&d.metrics, &name);
        Worker { d, name, queue, limiter: None, singles_left: 0, handles, clamp_logged: false }
    }

    pub(super) async fn run(mut self) {
        let mut shutdown = self.d.shutdown.clone();
        let mut attempts: u32 = 0;
        loop {
            if shutdown.is_shutdown() {
                return;
            }
            let refill = {
                let st = self.queue.lock();
                st.spilled && st.items.len() <= self.queue.cap() / 2
            };
            if refill {
                self.refill().await;
            }
            let head = self.queue.lock().items.front().cloned();
            let Some(head) = head else {
                tokio::select! {
                    _ = self.queue.wake.notified() => continue,
                    _ = shutdown.recv() => return,
                }
            };
            if !self.queue.owned() {
                // Cluster mode: this replica's lease on the destination ended; the holder
                // reads these deliveries from JetStream and sends them.
                self.queue.clear();
                attempts = 0;
                continue;
            }
            let config = self.d.config.get();
            let Some(dest) = config.destinations.get(&self.name).cloned() else {
                // Removed from routes.toml while deliveries were pending: keep them replayable.
                self.dead_letter(&[head], "destination no longer in routes.toml", attempts).await;
                continue;
            };
            let waited = self.wait_rate_limit(&dest, &mut shutdown).await;
            if shutdown.is_shutdown() {
                return;
            }
            // Marked before the ownership check, and a lease is marked not owned before its
            // release waits for this to clear: no post starts after a lease is given up.
            self.queue.set_sending(true);
            if !self.queue.owned() {
                self.queue.set_sending(false);
                self.queue.clear();
                attempts = 0;
                continue;
            }
            let batch = self.take_batch(head, waited || attempts > 0);
            let items = self.items(&batch, &config).await;
            if items.is_empty() {
                // Finished elsewhere meanwhile: nothing left to send.
                self.queue.set_sending(false);
                self.queue.pop(&batch);
                continue;
            }
            let sink = self.d.sinks.for_destination(&dest);
            let answer = sink.send(&dest, &items).await;
            self.handles.outcome(&self.d.metrics, &self.name, answer.outcome);
            attempts = self.act(&dest, &batch, &items, answer, attempts, &mut shutdown).await;
            self.queue.set_sending(false);
            self.handles.queue_depth.set(self.queue.lock().depth() as i64);
        }
    }

    /// Does what the sink's verdict asks; returns the attempt count for what is next.
    async fn act(
        &mut self,
        dest: &Destination,
        batch: &[Delivery],
        items: &[Item],
        answer: Answer,
        attempts: u32,
        shutdown: &mut Shutdown,
    ) -> u32 {
        let oldest = batch.iter().map(|d| d.accepted_at_ms).min().unwrap_or(0);
        match answer.verdict {
            Verdict::Done => {
                self.handles.unhealthy.set(0);
                if tracing::enabled!(tracing::Level::DEBUG) {
                    let what: Vec<String> = items.iter().map(|i| slack::headline(&i.prepared.notification)).collect();
                    tracing::debug!(destination = %self.name, notifications = items.len(), what = %what.join(", "), "delivered");
                }
                let now = super::now_ms();
                for del in batch {
                    self.handles.delivery_seconds.observe(now.saturating_sub(del.accepted_at_ms) as f64 / 1000.0);
                    self.finish(del).await;
                }
                self.queue.pop(batch);
                0
            }
            Verdict::Refused if batch.len() > 1 => {
                self.singles_left = batch.len();
                tracing::warn!(destination = %self.name, "the destination refused a digest; sending its notifications one by one");
                attempts
            }
            Verdict::Refused => {
                self.dead_letter(batch, &answer.detail, attempts + 1).await;
                0
            }
            Verdict::Gone => {
                self.handles.unhealthy.set(1);
                tracing::error!(destination = %self.name, answer = %answer.detail, "the destination is gone (it says so); fix or replace it");
                match &dest.fallback {
                    Some(fallback) => self.reroute(batch, fallback, &answer.detail).await,
                    None => self.dead_letter(batch, &answer.detail, attempts + 1).await,
                }
                0
            }
            Verdict::RetryAfter(_) | Verdict::Retry
                if retry::budget_spent(dest, attempts + 1, oldest, super::now_ms()) =>
            {
                let reason = format!("retry budget spent ({})", answer.outcome);
                self.dead_letter(batch, &reason, attempts + 1).await;
                0
            }
            Verdict::RetryAfter(asked) => {
                self.handles.retries.inc();
                let wait = asked.min(dest.retry.max_retry_after);
                if wait < asked {
                    self.handles.retry_after_clamped.inc();
                    if !self.clamp_logged {
                        self.clamp_logged = true;
                        tracing::warn!(destination = %self.name, asked_s = asked.as_secs(), waiting_s = wait.as_secs(), "Retry-After longer than max_retry_after; clamped (logged once, counted in webhook_relay_retry_after_clamped_total)");
                    }
                }
                tracing::warn!(destination = %self.name, wait_ms = wait.as_millis() as u64, "rate limited; waiting Retry-After");
                self.sleep(wait, shutdown).await;
                attempts + 1
            }
            Verdict::Retry => {
                self.handles.retries.inc();
                let attempts = attempts + 1;
                let wait = retry::backoff(attempts);
                tracing::warn!(destination = %self.name, outcome = answer.outcome, attempt = attempts, wait_ms = wait.as_millis() as u64, "delivery failed; retrying");
                self.sleep(wait, shutdown).await;
                attempts
            }
        }
    }

    async fn finish(&self, del: &Delivery) {
        let at_once = (*del.destination == *self.name).then(|| self.d.queue.finish_at_once(&del.destination, del.seq));
        let done = match at_once.flatten() {
            Some(done) => done,
            None => self.d.queue.finish(&self.name, del.seq).await,
        };
        if let Err(e) = done {
            // Not recorded: after a restart the post may repeat, never go missing.
            tracing::error!(destination = %self.name, seq = del.seq, error = %e, "cannot record a delivery as done");
        }
    }

    async fn sleep(&self, d: Duration, shutdown: &mut Shutdown) {
        // Waiting is not sending: a lease may be given up meanwhile.
        self.queue.set_sending(false);
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

    /// The head alone, or the head and those waiting behind it when the destination is
    /// behind.
    fn take_batch(&mut self, head: Delivery, behind: bool) -> Vec<Delivery> {
        if self.singles_left > 0 {
            self.singles_left -= 1;
            return vec![head];
        }
        let st = self.queue.lock();
        if (behind && st.depth() > 1) || st.depth() > DIGEST_BACKLOG {
            st.items.iter().take(DIGEST_MAX).cloned().collect()
        } else {
            vec![head]
        }
    }

    /// Reads the next deliveries for this destination back from the durable queue, oldest
    /// first.
    async fn refill(&self) {
        // Finishes sent so far must be applied first, or a delivery just made would look
        // pending again.
        self.d.queue.flush().await;
        let (held, want, spills) = {
            let st = self.queue.lock();
            (st.held.clone(), self.queue.cap() - st.items.len().min(self.queue.cap()), st.spills)
        };
        let more = match self.d.queue.waiting_for(&self.name, &held, want).await {
            Ok(more) => more,
            Err(e) => {
                tracing::error!(destination = %self.name, error = %e, "cannot read pending deliveries back; tried again later");
                return;
            }
        };
        let mut st = self.queue.lock();
        // Everything pending was read unless a delivery was spilled during the read: it may
        // have missed that one, which the next refill then finds.
        if more.len() < want && st.spills == spills {
            st.spilled = false;
            st.spilled_count = 0;
        } else {
            st.spilled_count = st.spilled_count.saturating_sub(more.len());
        }
        for d in more {
            if st.held.insert(d.seq) {
                st.items.push_back(d);
            }
        }
    }

    /// The notifications of a batch, read back from the queue when not held in memory,
    /// each placed in its alarm's history.
    async fn items(&self, batch: &[Delivery], config: &Config) -> Vec<Item> {
        let mut items = Vec::with_capacity(batch.len());
        for del in batch {
            let prepared = match &del.prepared {
                Some(p) => p.clone(),
                None => match self.d.queue.load(del.seq).await {
                    Ok(Some(m)) => {
                        let notification = Notification::from_envelope(m.envelope);
                        // Kept since accept; records from before that are classified now.
                        let severity = m.severity.map_or_else(|| config.severity.classify(&notification), Str::from);
                        Arc::new(Prepared { notification, severity })
                    }
                    Ok(None) => continue,
                    Err(e) => {
                        tracing::error!(destination = %self.name, seq = del.seq, error = %e, "cannot read stored message");
                        continue;
                    }
                },
            };
            let history = self.d.history.track(&self.name, &prepared.notification);
            items.push(Item { prepared, history, seq: del.seq });
        }
        items
    }

    async fn dead_letter(&self, batch: &[Delivery], reason: &str, attempts: u32) {
        for del in batch {
            self.handles.dead_letters.inc();
            tracing::error!(destination = %self.name, seq = del.seq, reason, "delivery dead-lettered");
            if let Err(e) = dead_letters::write(self.d.queue.as_ref(), del, reason, attempts).await {
                tracing::error!(destination = %self.name, seq = del.seq, error = %e, "cannot write dead letter; delivery stays pending");
            }
        }
        self.queue.pop(batch);
    }

    /// Sends a gone destination's deliveries to its fallback, one hop at most: a delivery
    /// that is itself a fallback copy becomes a dead letter instead.
    async fn reroute(&self, batch: &[Delivery], fallback: &str, answer: &str) {
        for del in batch {
            let Ok(Some(m)) = self.d.queue.load(del.seq).await else { continue };
            if let Some(from) = &m.envelope.fallback_from {
                let reason = format!("{answer}; already a fallback from {from}, not followed further");
                tracing::error!(destination = %self.name, seq = del.seq, from = %from, "fallback destination is gone too; dead-lettering");
                self.handles.dead_letters.inc();
                if let Err(e) = dead_letters::write(self.d.queue.as_ref(), del, &reason, 1).await {
                    tracing::error!(destination = %self.name, seq = del.seq, error = %e, "cannot write dead letter; delivery stays pending");
                }
                continue;
            }
            let envelope = Envelope { fallback_from: Some(self.name.clone()), ..m.envelope };
            let severity = m.severity.unwrap_or_else(|| {
                self.d.config.get().severity.classify(&Notification::from_envelope(envelope.clone()))
            });
            let new = NewMessage {
                envelope: &envelope,
                severity: &severity,
                destinations: vec![fallback.to_string()],
                dedup: None,
                replay_of: None,
                message_json: None,
            };
            match self.d.queue.accept(new).await {
                Ok(Accepted::Stored(deliveries)) => {
                    tracing::warn!(destination = %self.name, fallback, answer, "sent to fallback destination");
                    super::Deliverer { inner: self.d.clone() }.enqueue(deliveries);
                    self.finish(del).await;
                }
                Ok(Accepted::Duplicate) => self.finish(del).await,
                Err(e) => {
                    tracing::error!(destination = %self.name, error = %e, "fallback failed; dead-lettering");
                    if let Err(e) = dead_letters::write(self.d.queue.as_ref(), del, answer, 1).await {
                        tracing::error!(destination = %self.name, seq = del.seq, error = %e, "cannot write dead letter; delivery stays pending");
                    }
                }
            }
        }
        self.queue.pop(batch);
    }
}
