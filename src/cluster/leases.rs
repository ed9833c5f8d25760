//! One replica at a time posts for each destination: the one holding the destination's
//! lease, a key in the `leases` bucket (TTL [`super::queue::LEASE_TTL`]) created only if absent and
//! renewed with compare-and-set every [`TICK`]. The holder reads the destination's subject
//! from the start, in stream order (so each alarm's state changes go out in accept order,
//! and a new holder starts with what the last one left) and feeds its worker; finished
//! deliveries are purged from the stream. Because one process posts, that
//! process's rate limiter and Retry-After waits hold for the whole cluster.
//!
//! Sharing: every replica heartbeats into `members`; each aims to hold its fair share,
//! ceil(destinations / live replicas), taking free leases in an order of its own (a hash
//! of its id and the destination, so replicas do not all race for the same one) and giving
//! up its least-preferred ones when it holds more. A replica that dies stops renewing: its
//! leases expire after the TTL and are taken within one more [`TICK`], well inside the
//! 30 s the contract allows. A replica that comes back takes its share again as the others
//! give theirs up.
//!
//! Safety: a replica may post only while it knows its lease is alive: until [`OWN_FOR`]
//! after its last successful renewal, which is the lease's TTL minus a margin, so its right to
//! post ends well before anyone else can take the lease. Giving a lease up waits for the
//! post in flight to finish first.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use super::names::hex;
use super::queue::NatsQueue;
use crate::config::reload::ConfigHandle;
use crate::deliver::queue::DestinationQueue;
use crate::deliver::{now_ms, Deliverer};
use crate::metrics::Metrics;
use crate::model::{Notification, Prepared, Str};
use crate::queue::{Delivery, StoredMessage};
use crate::shutdown::Shutdown;

/// How often leases are renewed, heartbeats sent and shares recomputed.
pub const TICK: Duration = Duration::from_secs(2);
/// How long after a renewal this replica still posts: the lease TTL (15 s) less a margin for a
/// post in flight and clock rates.
pub const OWN_FOR: Duration = Duration::from_secs(8);

struct Held {
    revision: u64,
    renewed: Instant,
    stop: CancellationToken,
    queue: Arc<DestinationQueue>,
}

pub struct Leases {
    nats: Arc<NatsQueue>,
    deliver: Deliverer,
    config: Arc<ConfigHandle>,
    metrics: Metrics,
    /// This replica's id in `members` and in lease values.
    me: String,
    held: HashMap<String, Held>,
}

impl Leases {
    pub fn spawn(
        nats: Arc<NatsQueue>,
        deliver: Deliverer,
        config: Arc<ConfigHandle>,
        metrics: Metrics,
        shutdown: Shutdown,
    ) -> tokio::task::JoinHandle<()> {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "replica".into());
        let me = format!("{}-{:08x}", hex(host.as_bytes()), rand::random::<u32>());
        let leases = Leases { nats, deliver, config, metrics, me, held: HashMap::new() };
        tokio::spawn(leases.run(shutdown))
    }

    async fn run(mut self, mut shutdown: Shutdown) {
        tracing::info!(replica = %self.me, "cluster mode: sharing destinations through NATS leases");
        loop {
            self.tick().await;
            self.metrics.cluster_leases_held.set(self.held.len() as i64);
            tokio::select! {
                _ = tokio::time::sleep(TICK) => {}
                _ = shutdown.recv() => break,
            }
        }
        // Handing over at once rather than after the TTL: the others take these on their
        // next tick.
        let names: Vec<String> = self.held.keys().cloned().collect();
        for dest in names {
            self.release(&dest, "shutting down").await;
        }
        self.metrics.cluster_leases_held.set(0);
    }

    async fn tick(&mut self) {
        let nats = self.nats.clone();
        let Some(parts) = nats.parts() else { return };
        let _ = parts.members.put(&self.me, bytes::Bytes::new()).await;
        let live = match parts.members.keys().await {
            Ok(keys) => keys.filter(|k| std::future::ready(k.is_ok())).count().await.max(1),
            Err(_) => 1,
        };
        let mut wanted: Vec<String> = self.config.get().destinations.keys().cloned().collect();
        wanted.sort_by_key(|d| self.preference(d));
        let fair = wanted.len().div_ceil(live);

        // Renew what is held; a lease that cannot be renewed is lost.
        let names: Vec<String> = self.held.keys().cloned().collect();
        for dest in names {
            let Some(h) = self.held.get_mut(&dest) else { continue };
            match parts.leases.update(lease_key(&dest), self.me.clone().into(), h.revision).await {
                Ok(revision) => {
                    h.revision = revision;
                    h.renewed = Instant::now();
                    h.queue.own_until(now_ms() + OWN_FOR.as_millis() as u64);
                }
                Err(e) if e.kind() == async_nats::jetstream::kv::UpdateErrorKind::WrongLastRevision => {
                    self.lost(&dest, "another replica holds it (ours expired)");
                }
                Err(e) if h.renewed.elapsed() > OWN_FOR => {
                    let why = format!("not renewed for {}s: {e}", OWN_FOR.as_secs());
                    self.lost(&dest, &why);
                }
                Err(_) => {}
            }
        }
        for dest in self.held.keys().filter(|d| !wanted.contains(d)).cloned().collect::<Vec<_>>() {
            self.release(&dest, "no longer in routes.toml").await;
        }
        // Too many: give up the least preferred.
        while self.held.len() > fair {
            let Some(worst) = wanted.iter().rev().find(|d| self.held.contains_key(*d)).cloned() else { break };
            self.release(&worst, "sharing with another replica").await;
        }
        // Too few: take free ones, most preferred first.
        for dest in &wanted {
            if self.held.len() >= fair {
                break;
            }
            if self.held.contains_key(dest) {
                continue;
            }
            if let Ok(revision) = parts.leases.create(lease_key(dest), self.me.clone().into()).await {
                self.acquire(dest, revision);
            }
        }
    }

    /// This replica's order of preference among destinations.
    fn preference(&self, destination: &str) -> u64 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (&self.me, destination).hash(&mut h);
        h.finish()
    }

    fn acquire(&mut self, dest: &str, revision: u64) {
        let queue = self.deliver.queue_for(dest);
        // Whatever was held from an earlier lease may have been sent by another holder since.
        queue.clear();
        queue.own_until(now_ms() + OWN_FOR.as_millis() as u64);
        let stop = CancellationToken::new();
        tracing::info!(destination = %dest, replica = %self.me, "lease taken: this replica posts for the destination");
        tokio::spawn(feed(
            self.nats.clone(),
            self.config.clone(),
            dest.to_string(),
            queue.clone(),
            self.deliver.queue_cap(),
            stop.clone(),
        ));
        self.held.insert(dest.to_string(), Held { revision, renewed: Instant::now(), stop, queue });
    }

    /// The lease ended without us: stop feeding and posting at once.
    fn lost(&mut self, dest: &str, why: &str) {
        if let Some(h) = self.held.remove(dest) {
            h.queue.own_until(0);
            h.stop.cancel();
            tracing::warn!(destination = %dest, why, "lease lost: this replica stops posting for the destination");
        }
    }

    /// Gives a lease up: no new post starts, the one in flight finishes, then the key is
    /// deleted so another replica can take it on its next tick.
    async fn release(&mut self, dest: &str, why: &str) {
        let Some(h) = self.held.remove(dest) else { return };
        h.queue.own_until(0);
        h.stop.cancel();
        let deadline = Instant::now() + OWN_FOR;
        while h.queue.sending() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        h.queue.clear();
        // What was sent must be gone from the stream before the next holder reads it.
        self.nats.flush_finished().await;
        if let Some(parts) = self.nats.parts() {
            // Only our own: if it expired and was taken meanwhile, it is not ours to delete.
            let _ = parts.leases.delete_expect_revision(lease_key(dest), Some(h.revision)).await;
        }
        tracing::info!(destination = %dest, why, "lease given up");
    }
}

/// How long a destination's consumer is idle before it is asked whether it sent more than
/// arrived: bounds how late a last message lost on its way from NATS is read again.
const IDLE_CHECK: Duration = Duration::from_secs(3);
/// An unread delivery this old, while the consumer is idle, means the consumer stalled.
const STALL_AFTER: Duration = Duration::from_secs(2);

/// How long ago a time in Unix nanoseconds was (zero if in the future: the clocks of NATS
/// servers and of this pod differ).
fn waited_since(unix_nanos: i128) -> Duration {
    let now = now_ms() as i128 * 1_000_000;
    Duration::from_nanos((now - unix_nanos).clamp(0, u64::MAX as i128) as u64)
}

fn lease_key(destination: &str) -> String {
    hex(destination.as_bytes())
}

/// Reads a destination's deliveries from the stream in order and hands them to its worker,
/// never holding more than the worker's queue takes; starts again after an error.
///
/// Why not an ordered consumer: it is an R1 ephemeral on one server, and when that server
/// was killed it stalled here (no error) for longer than the takeover bound. A durable
/// consumer with acks would redeliver an unacknowledged message after `ack_wait`, after
/// newer ones, which breaks per-alarm order on takeover. Why not one get per message: it
/// is a request per delivery, and it slowed the server (measured: 140 deliveries/s).
///
/// Without acks, the server counts a message as delivered once it has sent it: one lost on
/// the way (the pull request's reply inbox briefly without interest, as when the client
/// reconnects to another node) would be skipped and then purged with the ones after it. So
/// every delivery's consumer sequence must follow the last one's; a gap, or an idle consumer
/// that says it sent more than arrived, starts reading again from the first seq not seen.
async fn feed(
    nats: Arc<NatsQueue>,
    config: Arc<ConfigHandle>,
    dest: String,
    queue: Arc<DestinationQueue>,
    cap: usize,
    stop: CancellationToken,
) {
    let subject = nats.names.subject(&dest);
    // Within one lease, an error resumes where reading stopped; a new lease starts from the
    // beginning of what is left.
    let mut next_seq = 1;
    while !stop.is_cancelled() {
        if let Err(e) = feed_once(&nats, &config, &dest, &subject, &queue, cap, &stop, &mut next_seq).await {
            tracing::warn!(destination = %dest, error = %e, "reading pending deliveries from NATS failed; starting over in 1s");
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.cancelled() => return,
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn feed_once(
    nats: &NatsQueue,
    config: &ConfigHandle,
    dest: &str,
    subject: &str,
    queue: &DestinationQueue,
    cap: usize,
    stop: &CancellationToken,
    next_seq: &mut u64,
) -> Result<(), String> {
    let Some(parts) = nats.parts() else { return Err("streams not set up".into()) };
    // An ephemeral pull consumer without acks, from where we are: the server only remembers
    // how far it has sent, and each fetch is a request with a deadline, so a consumer lost
    // with its server shows as an error here and is made again from `next_seq`.
    let mut consumer = parts
        .msgs
        .create_consumer(pull::Config {
            filter_subject: subject.to_string(),
            deliver_policy: DeliverPolicy::ByStartSequence { start_sequence: *next_seq },
            ack_policy: AckPolicy::None,
            inactive_threshold: Duration::from_secs(30),
            memory_storage: true,
            num_replicas: 1,
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    // The consumer numbers what it sends 1, 2, 3…: the last number that arrived here.
    let mut arrived: u64 = 0;
    let mut idle_since: Option<Instant> = None;
    let result = async {
        loop {
            while queue.lock().depth() >= cap {
                tokio::select! {
                    _ = queue.room.notified() => {}
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                    _ = stop.cancelled() => return Ok(()),
                }
            }
            let want = (cap - queue.lock().depth()).clamp(1, 512);
            let mut batch = consumer
                .batch()
                .max_messages(want)
                .expires(Duration::from_secs(1))
                .messages()
                .await
                .map_err(|e| e.to_string())?;
            let mut got = 0usize;
            loop {
                let next = tokio::select! {
                    next = batch.next() => next,
                    _ = stop.cancelled() => return Ok(()),
                };
                let Some(message) = next else { break };
                let message = message.map_err(|e| e.to_string())?;
                let info = message.info().map_err(|e| e.to_string())?;
                let (seq, sent) = (info.stream_sequence, info.consumer_sequence);
                got += 1;
                if sent != arrived + 1 {
                    return Err(format!(
                        "NATS sent delivery {sent} of this consumer after {arrived}: one between was \
                         lost on its way; reading again from stream seq {}",
                        *next_seq
                    ));
                }
                arrived = sent;
                if seq < *next_seq {
                    continue;
                }
                *next_seq = seq + 1;
                let stored: StoredMessage = match serde_json::from_slice(&message.payload) {
                    Ok(s) => s,
                    Err(e) => {
                        // Not ours (someone published by hand?): left in the stream, said loudly.
                        tracing::error!(destination = %dest, seq, error = %e, "unreadable message in the NATS stream; skipped");
                        continue;
                    }
                };
                let notification = Notification::from_envelope(stored.envelope);
                let severity = stored.severity.map_or_else(|| config.get().severity.classify(&notification), Str::from);
                queue.push(Delivery {
                    destination: dest.into(),
                    seq,
                    accepted_at_ms: stored.accepted_at_ms,
                    prepared: Some(Arc::new(Prepared { notification, severity })),
                });
            }
            // The last message of a burst has no successor to reveal its loss: an idle
            // consumer is asked now and then how far it has sent.
            if got > 0 {
                idle_since = None;
                continue;
            }
            let since = *idle_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= IDLE_CHECK {
                idle_since = Some(Instant::now());
                let sent = consumer.info().await.map_err(|e| e.to_string())?.delivered.consumer_sequence;
                if sent > arrived {
                    return Err(format!(
                        "idle, yet NATS says it sent delivery {sent} of this consumer and the last \
                         that arrived was {arrived}: lost on its way; reading again from stream seq {}",
                        *next_seq
                    ));
                }
                // A consumer that stopped seeing the stream: it answers every pull (empty)
                // and its numbers agree, while the stream, asked through its leader, holds a
                // delivery for us it never sent. Seen once in the tests after a NATS node was
                // killed: 18 accepted alarms waited until the lease moved. The first unread
                // one counts only once it is older than this check's own window, so one
                // published a moment ago is not taken for a stall.
                match parts.msgs.get_first_raw_message_by_subject(subject, *next_seq).await {
                    Ok(first) if waited_since(first.time.unix_timestamp_nanos()) > STALL_AFTER => {
                        return Err(format!(
                            "idle, yet the stream holds seq {} for this destination (unread, {}s old): \
                             this consumer stopped seeing the stream; reading again from stream seq {}",
                            first.sequence,
                            waited_since(first.time.unix_timestamp_nanos()).as_secs(),
                            *next_seq
                        ));
                    }
                    Ok(_) => {}
                    Err(e) if e.kind() == async_nats::jetstream::stream::LastRawMessageErrorKind::NoMessageFound => {}
                    Err(e) => return Err(e.to_string()),
                }
            }
        }
    }
    .await;
    let name = consumer.cached_info().name.clone();
    let _ = parts.msgs.delete_consumer(&name).await;
    result
}
