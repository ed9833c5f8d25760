//! [`NatsQueue`]: the [`Queue`] on JetStream. One stream message per pending delivery, on
//! the destination's subject, so a destination's lease holder reads exactly its own work
//! in accept order, and purges what is done (see [`NatsQueue::flush_finished`]).
//!
//! Accept, and why in this order:
//! 1. the MessageId in the `seen` bucket: a duplicate, answered at once;
//! 2. one publish per destination, pipelined, each with `Nats-Msg-Id` = message key and
//!    destination: two replicas accepting the same MessageId at once (SNS retried on the
//!    other pod) store it once, because JetStream drops the second within its
//!    `duplicate_window`, and the one that saw `duplicate` answers "duplicate";
//! 3. the MessageId into `seen`, where it stays for the dedup horizon (the window of step
//!    2 is short; a deleted stream message would not be remembered after a restart).
//!
//! The 200 goes out after step 3, so every acknowledgement came from JetStream: with
//! `--nats-replicas 3`, from a quorum. A failure anywhere answers 503 and SNS retries;
//! the retry finds what step 2 stored through its `Nats-Msg-Id` and stores nothing twice.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv, stream};
use async_trait::async_trait;
use futures_util::StreamExt;

use super::names::{hex, Names};
use super::{NatsError, NatsSettings};
use crate::deliver::now_ms;
use crate::metrics::Metrics;
use crate::model::Envelope;
use crate::queue::{Accepted, DeadLetter, Delivery, NewMessage, Queue, QueueError, SeqSet, StoredMessage, ThreadRef};
use crate::shutdown::Shutdown;

/// How long JetStream remembers a `Nats-Msg-Id` in the stream: covers SNS retrying a
/// message whose first accept stored it but failed before step 3.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(600);
/// A lease lives this long unless renewed.
pub const LEASE_TTL: Duration = Duration::from_secs(15);
/// A replica is live while its heartbeat is younger than this.
pub const MEMBER_TTL: Duration = Duration::from_secs(10);
/// Slack threads are remembered this long after their last change.
const THREAD_TTL: Duration = Duration::from_secs(90 * 24 * 3600);
/// Each JetStream request waits this long for its answer: an accept that cannot be stored
/// answers 503 in seconds, well inside SNS's 15 s request timeout.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

/// What accept needs to know, created on start if missing.
pub struct Parts {
    pub msgs: stream::Stream,
    pub seen: kv::Store,
    pub leases: kv::Store,
    pub members: kv::Store,
    pub threads: kv::Store,
    pub dead: kv::Store,
    pub replay: kv::Store,
}

pub struct NatsQueue {
    client: async_nats::Client,
    js: jetstream::Context,
    pub(crate) names: Names,
    replicas: usize,
    seen_ttl: Duration,
    parts: OnceLock<Parts>,
    /// JetStream answered the last probe (a stream leader exists: quorum).
    healthy: AtomicBool,
    /// Set on each disconnection: not ready until a probe after it has succeeded (the
    /// streams may need new leaders after NATS restarts).
    disconnected: Arc<AtomicBool>,
    remembered: AtomicUsize,
    closed: AtomicBool,
    metrics: Metrics,
    /// Per destination, the highest seq finished and not yet purged from the stream.
    finished: std::sync::Mutex<std::collections::HashMap<String, u64>>,
    finish_wake: tokio::sync::Notify,
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> QueueError {
    QueueError::Unavailable(format!("NATS: {what}: {e}"))
}

impl NatsQueue {
    /// Connects (in the background when NATS is down), and keeps creating what is missing
    /// and probing the cluster every second until shutdown. Never fails for NATS being
    /// down: the gateway starts not ready and becomes ready when NATS is there.
    pub async fn start(
        settings: &NatsSettings,
        seen_ttl: Duration,
        metrics: Metrics,
        shutdown: Shutdown,
    ) -> Result<Arc<NatsQueue>, NatsError> {
        let names = Names::new(&settings.prefix).map_err(NatsError::Creds)?;
        let disconnected = Arc::new(AtomicBool::new(false));
        let client = super::connect_forever(settings, disconnected.clone()).await?;
        let mut js = jetstream::new(client.clone());
        js.set_timeout(REQUEST_TIMEOUT);
        let queue = Arc::new(NatsQueue {
            client,
            js,
            names,
            replicas: settings.replicas.max(1),
            seen_ttl,
            parts: OnceLock::new(),
            healthy: AtomicBool::new(false),
            disconnected,
            remembered: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
            metrics,
            finished: Default::default(),
            finish_wake: tokio::sync::Notify::new(),
        });
        tokio::spawn(queue.clone().purge_finished(shutdown.clone()));
        tokio::spawn(queue.clone().watch(shutdown, super::shown(&settings.urls)));
        Ok(queue)
    }

    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// The streams and buckets, once created or found.
    pub fn parts(&self) -> Option<&Parts> {
        self.parts.get()
    }

    fn usable(&self) -> Result<&Parts, QueueError> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(QueueError::Closed);
        }
        if self.client.connection_state() != async_nats::connection::State::Connected {
            return Err(QueueError::Unavailable("NATS: not connected".into()));
        }
        self.parts.get().ok_or_else(|| QueueError::Unavailable("NATS: streams not set up yet".into()))
    }

    async fn watch(self: Arc<NatsQueue>, mut shutdown: Shutdown, shown: String) {
        let mut last_error_log: Option<Instant> = None;
        let mut tick: u64 = 0;
        let started = Instant::now();
        let mut ever_healthy = false;
        loop {
            let connected = self.client.connection_state() == async_nats::connection::State::Connected;
            self.metrics.cluster_connected.set(connected as i64);
            let reconnected = self.disconnected.swap(false, Ordering::SeqCst);
            if reconnected {
                self.healthy.store(false, Ordering::SeqCst);
                tracing::warn!(nats = %shown, "NATS connection lost: not ready until JetStream answers again");
            }
            let result = match self.parts.get() {
                None => match self.setup().await {
                    Ok(parts) => {
                        let _ = self.parts.set(parts);
                        tracing::info!(nats = %shown, prefix = %self.names.stream(), replicas = self.replicas, "JetStream streams and buckets ready");
                        Ok(())
                    }
                    Err(e) => Err(e),
                },
                Some(parts) => self.probe(parts, tick % 5 == 0).await,
            };
            // A disconnection during the probe makes its success stale.
            let ok = result.is_ok() && !self.disconnected.load(Ordering::SeqCst);
            let was = self.healthy.swap(ok, Ordering::SeqCst);
            ever_healthy |= ok;
            match result {
                Ok(()) if !was && ok => {
                    tracing::info!(nats = %shown, "NATS JetStream is available; accepting and delivering")
                }
                // Streams being created or electing leaders at start: a warning, for a while.
                Err(e)
                    if !ever_healthy
                        && started.elapsed() < Duration::from_secs(30)
                        && last_error_log.is_none_or(|t| t.elapsed() > Duration::from_secs(5)) =>
                {
                    last_error_log = Some(Instant::now());
                    tracing::warn!(nats = %shown, error = %e, "waiting for NATS JetStream; not ready until it answers");
                }
                Err(_) if !ever_healthy && started.elapsed() < Duration::from_secs(30) => {}
                Err(e) if was || last_error_log.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) => {
                    last_error_log = Some(Instant::now());
                    tracing::error!(nats = %shown, error = %e, "NATS JetStream unavailable: /sns and /readyz answer 503 and delivery pauses until it is back");
                }
                _ => {}
            }
            tick += 1;
            // Probed more often while unavailable, to be ready soon after NATS is back.
            let pause = if ok { Duration::from_secs(1) } else { Duration::from_millis(250) };
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = shutdown.recv() => return,
            }
        }
    }

    /// Asks the stream's leader for its state (no leader, no quorum: an error), and now
    /// and then samples the gauges.
    async fn probe(&self, parts: &Parts, sample: bool) -> Result<(), String> {
        // Both streams an accept writes to must have a leader.
        parts.msgs.get_info().await.map_err(|e| format!("stream {}: {e}", self.names.stream()))?;
        let seen = parts.seen.stream.get_info().await.map_err(|e| format!("bucket {}: {e}", parts.seen.name))?;
        if sample {
            self.remembered.store(seen.state.messages as usize, Ordering::Relaxed);
            if let Ok(mut subjects) = parts.msgs.info_with_subjects(self.names.all_subjects()).await {
                let mut counts: Vec<(String, u64)> = Vec::new();
                while let Some(Ok((subject, n))) = subjects.next().await {
                    if let Some(dest) = self.names.destination_of(&subject) {
                        counts.push((dest, n as u64));
                    }
                }
                // Destinations with nothing pending are absent from the answer: zero them.
                self.metrics.cluster_pending.clear();
                for (dest, n) in counts {
                    self.metrics.cluster_pending.get_or_create(&Metrics::named("destination", &dest)).set(n as i64);
                }
            }
        }
        Ok(())
    }

    /// Creates the stream and buckets, or finds them. Idempotent, and safe when several
    /// replicas start at once: JetStream answers a create of an identical stream with the
    /// existing one; a bucket that exists with other settings (an operator changed them)
    /// is used as it is.
    async fn setup(&self) -> Result<Parts, String> {
        let msgs = self
            .js
            .get_or_create_stream(stream::Config {
                name: self.names.stream(),
                description: Some("webhook-relay: one message per pending delivery".into()),
                subjects: vec![self.names.all_subjects()],
                storage: stream::StorageType::File,
                num_replicas: self.replicas,
                retention: stream::RetentionPolicy::Limits,
                duplicate_window: DUPLICATE_WINDOW,
                ..Default::default()
            })
            .await
            .map_err(|e| format!("stream {}: {e}", self.names.stream()))?;
        let seen = self.bucket("seen", self.seen_ttl, "MessageIds accepted").await?;
        let leases = self.bucket("leases", LEASE_TTL, "which replica posts for each destination").await?;
        let members = self.bucket("members", MEMBER_TTL, "live replicas").await?;
        let threads = self.bucket("threads", THREAD_TTL, "alarm to Slack thread").await?;
        let dead = self.bucket("dead", Duration::ZERO, "dead letters").await?;
        let replay = self.bucket("replay", Duration::ZERO, "dead letters to replay").await?;
        Ok(Parts { msgs, seen, leases, members, threads, dead, replay })
    }

    /// Removes finished deliveries from the stream: one purge per destination of everything
    /// up to its highest finished seq. A destination's deliveries finish in stream order
    /// (its one poster sends them in order), so "up to" is exact, and a burst of finishes
    /// costs one request, not one each. A purge that fails is retried on the next round;
    /// until it lands, a new lease holder may post those again (at least once, never lost).
    pub async fn flush_finished(&self) {
        let Some(parts) = self.parts.get() else { return };
        let pending: Vec<(String, u64)> =
            self.finished.lock().unwrap_or_else(|p| p.into_inner()).iter().map(|(d, s)| (d.clone(), *s)).collect();
        for (dest, seq) in pending {
            match parts.msgs.purge().filter(self.names.subject(&dest)).sequence(seq + 1).await {
                Ok(_) => {
                    let mut finished = self.finished.lock().unwrap_or_else(|p| p.into_inner());
                    if finished.get(&dest) == Some(&seq) {
                        finished.remove(&dest);
                    }
                }
                Err(e) => {
                    tracing::warn!(destination = %dest, seq, error = %e, "cannot remove delivered messages from the stream yet; retrying");
                }
            }
        }
    }

    async fn purge_finished(self: Arc<NatsQueue>, mut shutdown: Shutdown) {
        loop {
            tokio::select! {
                _ = self.finish_wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = shutdown.recv() => return,
            }
            // Lets a digest's finishes gather into one purge.
            tokio::time::sleep(Duration::from_millis(20)).await;
            self.flush_finished().await;
        }
    }

    async fn bucket(&self, what: &str, max_age: Duration, description: &str) -> Result<kv::Store, String> {
        let name = self.names.bucket(what);
        if let Ok(store) = self.js.get_key_value(&name).await {
            return Ok(store);
        }
        let config = kv::Config {
            bucket: name.clone(),
            description: format!("webhook-relay: {description}"),
            history: 1,
            max_age,
            storage: stream::StorageType::File,
            num_replicas: self.replicas,
            ..Default::default()
        };
        match self.js.create_key_value(config).await {
            Ok(store) => Ok(store),
            // Another replica created it between our look and our create.
            Err(e) => self.js.get_key_value(&name).await.map_err(|_| format!("bucket {name}: {e}")),
        }
    }
}

/// The `Nats-Msg-Id` of one delivery: the same for a retried accept, different for the
/// same message sent on by a fallback or replayed by an operator.
fn delivery_id(envelope: &Envelope, destination: &str, replay_of: Option<&str>) -> String {
    let key = crate::dedup::MessageKey::of(&envelope.message_id);
    let mut id = format!("{}|{}", hex(&key.0.to_le_bytes()), hex(destination.as_bytes()));
    if let Some(from) = &envelope.fallback_from {
        id.push_str("|fallback:");
        id.push_str(&hex(from.as_bytes()));
    }
    if let Some(replay) = replay_of {
        id.push_str("|replay:");
        id.push_str(&hex(replay.as_bytes()));
    }
    id
}

#[async_trait]
impl Queue for NatsQueue {
    async fn accept(&self, message: NewMessage<'_>) -> Result<Accepted, QueueError> {
        let parts = self.usable()?;
        let seen_key = message.dedup.map(|(key, _)| hex(&key.0.to_le_bytes()));
        if let Some(key) = &seen_key {
            if parts.seen.get(key).await.map_err(|e| unavailable("dedup lookup", e))?.is_some() {
                return Ok(Accepted::Duplicate);
            }
        }
        let accepted_at_ms = now_ms();
        let stored = StoredMessage {
            envelope: message.envelope.clone(),
            accepted_at_ms,
            severity: Some(message.severity.into()),
        };
        let payload: bytes::Bytes = serde_json::to_vec(&stored)?.into();
        // Sent back to back, then the acknowledgements awaited: one round trip, not N.
        let mut acks = Vec::with_capacity(message.destinations.len());
        for dest in &message.destinations {
            let publish = jetstream::context::Publish::build().payload(payload.clone()).message_id(delivery_id(
                message.envelope,
                dest,
                message.replay_of,
            ));
            let ack =
                self.js.send_publish(self.names.subject(dest), publish).await.map_err(|e| unavailable("publish", e))?;
            acks.push((dest, ack));
        }
        let mut deliveries = Vec::with_capacity(acks.len());
        let mut all_duplicates = !acks.is_empty();
        for (dest, ack) in acks {
            let ack = ack.await.map_err(|e| unavailable("publish not acknowledged", e))?;
            all_duplicates &= ack.duplicate;
            deliveries.push(Delivery {
                destination: dest.as_str().into(),
                seq: ack.sequence,
                accepted_at_ms,
                prepared: None,
            });
        }
        if let Some(key) = seen_key {
            parts.seen.put(key, bytes::Bytes::new()).await.map_err(|e| unavailable("dedup record", e))?;
        }
        if all_duplicates {
            // Stored by another replica's (or an earlier) accept of the same MessageId.
            return Ok(Accepted::Duplicate);
        }
        Ok(Accepted::Stored(deliveries))
    }

    /// Noted at once; the stream forgets the message (and every earlier one of the same
    /// destination) within a moment: see [`NatsQueue::flush_finished`].
    async fn finish(&self, destination: &str, seq: u64) -> Result<(), QueueError> {
        {
            let mut finished = self.finished.lock().unwrap_or_else(|p| p.into_inner());
            let high = finished.entry(destination.to_string()).or_insert(0);
            *high = (*high).max(seq);
        }
        self.finish_wake.notify_one();
        Ok(())
    }

    async fn load(&self, seq: u64) -> Result<Option<StoredMessage>, QueueError> {
        let parts = self.usable()?;
        match parts.msgs.get_raw_message(seq).await {
            Ok(m) => Ok(Some(serde_json::from_slice(&m.payload)?)),
            Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(unavailable("reading a message", e)),
        }
    }

    /// Lease holders read the stream themselves; nothing spills to be read back.
    async fn waiting_for(&self, _: &str, _: &SeqSet, _: usize) -> Result<Vec<Delivery>, QueueError> {
        Ok(Vec::new())
    }

    async fn flush(&self) {
        self.flush_finished().await;
    }

    async fn put_dead_letter(&self, letter: DeadLetter) -> Result<(), QueueError> {
        let parts = self.usable()?;
        let value = serde_json::to_vec(&letter)?;
        parts.dead.put(hex(letter.id.as_bytes()), value.into()).await.map_err(|e| unavailable("dead letter", e))?;
        Ok(())
    }

    async fn replay_requests(&self) -> Result<Vec<DeadLetter>, QueueError> {
        let parts = self.usable()?;
        read_all(&parts.replay).await
    }

    async fn replay_taken(&self, id: &str) -> Result<(), QueueError> {
        let parts = self.usable()?;
        parts.replay.purge(hex(id.as_bytes())).await.map_err(|e| unavailable("clearing a replay", e))
    }

    async fn thread(&self, alarm_key: &str) -> Result<Option<ThreadRef>, QueueError> {
        let parts = self.usable()?;
        match parts.threads.get(hex(alarm_key.as_bytes())).await.map_err(|e| unavailable("thread lookup", e))? {
            Some(v) => Ok(Some(serde_json::from_slice(&v)?)),
            None => Ok(None),
        }
    }

    async fn set_thread(&self, alarm_key: &str, thread: ThreadRef) -> Result<(), QueueError> {
        let parts = self.usable()?;
        let value = serde_json::to_vec(&thread)?;
        parts
            .threads
            .put(hex(alarm_key.as_bytes()), value.into())
            .await
            .map_err(|e| unavailable("thread record", e))?;
        Ok(())
    }

    fn remembered_ids(&self) -> usize {
        self.remembered.load(Ordering::Relaxed)
    }

    fn ready(&self) -> bool {
        self.usable().is_ok() && self.healthy.load(Ordering::SeqCst) && !self.disconnected.load(Ordering::SeqCst)
    }

    async fn close(&self) {
        let _ = tokio::time::timeout(Duration::from_secs(3), self.flush_finished()).await;
        self.closed.store(true, Ordering::SeqCst);
        let _ = self.client.flush().await;
    }
}

/// Every value in a bucket of dead letters, oldest key first.
pub async fn read_all(bucket: &kv::Store) -> Result<Vec<DeadLetter>, QueueError> {
    let mut keys = bucket.keys().await.map_err(|e| unavailable("listing keys", e))?;
    let mut out = Vec::new();
    while let Some(key) = keys.next().await {
        let key = key.map_err(|e| unavailable("listing keys", e))?;
        if let Some(v) = bucket.get(&key).await.map_err(|e| unavailable("reading a key", e))? {
            match serde_json::from_slice::<DeadLetter>(&v) {
                Ok(l) => out.push(l),
                Err(e) => tracing::error!(key = %key, error = %e, "unreadable dead letter in NATS; left as it is"),
            }
        }
    }
    Ok(out)
}
