//! Delivery: one worker per destination, so one slow or failing destination never delays
//! another. The pieces, by file:
//!
//! - `queue`: a destination's deliveries in memory, in accept order (the rest wait in the
//!   durable queue and are read back as the worker catches up);
//! - `worker`: the loop (rate limit, digests, ordering, and what each verdict means);
//! - `retry`: backoff with full jitter and the retry budget;
//! - `history`: each alarm's history, for "lasted 5m" and late state changes;
//! - `sink`: the seam a destination kind implements (render, send, classify the answer);
//!   `slack` is the incoming-webhook sink (over the one [`crate::outbound`] client),
//!   `slack_app` the Web API sink (bot token: one thread per alarm);
//! - `dead_letters`: writing a dead letter and taking replays back in.

pub mod dead_letters;
pub mod history;
pub mod queue;
pub mod retry;
pub mod sink;
pub mod slack;
pub mod slack_app;
mod worker;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use queue::DEFAULT_QUEUE_CAP;
pub use sink::{Answer, Item, Sink, Verdict};

use crate::config::reload::ConfigHandle;
use crate::config::Destination;
use crate::metrics::Metrics;
use crate::queue::{Delivery, Queue};
use crate::shutdown::Shutdown;
use history::AlarmHistory;
use queue::DestinationQueue;
use worker::Worker;

/// Which sink serves a destination.
#[derive(Clone)]
pub struct Sinks {
    /// Slack incoming webhooks (`url = ...`).
    pub webhook: Arc<dyn Sink>,
    /// Slack apps (`token` and `channel`: the Web API); when unset, the webhook sink.
    pub app: Option<Arc<dyn Sink>>,
}

impl Sinks {
    pub fn for_destination(&self, dest: &Destination) -> Arc<dyn Sink> {
        match (&dest.app, &self.app) {
            (Some(_), Some(app)) => app.clone(),
            _ => self.webhook.clone(),
        }
    }
}

/// Where workers get their deliveries from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Feed {
    /// From [`Deliverer::enqueue`] at accept, and read back from the local store.
    Local,
    /// Cluster mode: only destinations this replica holds the lease of, fed by the lease
    /// holder from JetStream ([`crate::cluster`]).
    Leased,
}

/// Starts and feeds the per-destination workers.
#[derive(Clone)]
pub struct Deliverer {
    inner: Arc<DelivererInner>,
}

struct DelivererInner {
    queue: Arc<dyn Queue>,
    config: Arc<ConfigHandle>,
    sinks: Sinks,
    metrics: Metrics,
    queues: Mutex<HashMap<String, Arc<DestinationQueue>>>,
    history: AlarmHistory,
    shutdown: Shutdown,
    queue_cap: usize,
    feed: Feed,
    /// Workers in flight, so shutdown can wait for the current posts to finish.
    tasks: tokio_util::task::TaskTracker,
}

impl Deliverer {
    pub fn new(
        queue: Arc<dyn Queue>,
        config: Arc<ConfigHandle>,
        sinks: Sinks,
        metrics: Metrics,
        shutdown: Shutdown,
        queue_cap: usize,
        feed: Feed,
    ) -> Deliverer {
        Deliverer {
            inner: Arc::new(DelivererInner {
                queue,
                config,
                sinks,
                metrics,
                queues: Mutex::new(HashMap::new()),
                history: AlarmHistory::default(),
                shutdown,
                queue_cap,
                feed,
                tasks: tokio_util::task::TaskTracker::new(),
            }),
        }
    }

    /// Hands stored deliveries to their destinations' workers. In cluster mode this does
    /// nothing: each destination's lease holder reads its deliveries from JetStream (see
    /// [`Deliverer::queue_for`]), whichever replica accepted them.
    pub fn enqueue(&self, deliveries: Vec<Delivery>) {
        if self.inner.feed == Feed::Leased {
            return;
        }
        for d in deliveries {
            self.queue_for(&d.destination).push(d);
        }
    }

    /// A destination's in-memory queue, with its worker started on first use. In cluster
    /// mode the queue starts not owned: nothing is posted until the lease says so.
    pub fn queue_for(&self, destination: &str) -> Arc<DestinationQueue> {
        let mut queues = self.inner.queues.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(q) = queues.get(destination) {
            return q.clone();
        }
        let depth = self.inner.metrics.queue_depth.get_or_create(&Metrics::named("destination", destination));
        let q = Arc::new(DestinationQueue::new(self.inner.queue_cap, depth.clone()));
        if self.inner.feed == Feed::Leased {
            q.own_until(0);
        }
        let worker = Worker::new(self.inner.clone(), destination.to_string(), q.clone());
        self.inner.tasks.spawn(worker.run());
        queues.insert(destination.to_string(), q.clone());
        q
    }

    /// Deliveries each destination holds in memory at most.
    pub fn queue_cap(&self) -> usize {
        self.inner.queue_cap
    }

    /// When the oldest delivery still waiting for each destination was accepted (ms since
    /// the epoch), `None` when none waits. Queues are in accept order and what is spilled
    /// to the durable queue is newer than what is held, so the head is the oldest.
    pub fn oldest_pending(&self) -> Vec<(String, Option<u64>)> {
        let queues = self.inner.queues.lock().unwrap_or_else(|p| p.into_inner());
        queues.iter().map(|(name, q)| (name.clone(), q.lock().items.front().map(|d| d.accepted_at_ms))).collect()
    }

    /// Total deliveries waiting.
    pub fn pending(&self) -> usize {
        let queues = self.inner.queues.lock().unwrap_or_else(|p| p.into_inner());
        queues.values().map(|q| q.lock().depth()).sum()
    }

    /// Takes in the dead letters queued for replay now and every second, until shutdown.
    pub fn spawn_replay_intake(&self) {
        let this = self.clone();
        let mut shutdown = self.inner.shutdown.clone();
        tokio::spawn(async move {
            loop {
                let config = this.inner.config.get();
                if !this.inner.queue.ready() {
                    // NATS away or the disk full: said elsewhere; tried again in a second.
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                        _ = shutdown.recv() => return,
                    }
                }
                // In cluster mode only a destination's lease holder takes its replays, so two
                // replicas never take the same one.
                let owns = |destination: &str| match this.inner.feed {
                    Feed::Local => true,
                    Feed::Leased => this.owns(destination),
                };
                let replayed = dead_letters::take_replays(this.inner.queue.as_ref(), &config, &owns).await;
                this.enqueue(replayed);
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = shutdown.recv() => return,
                }
            }
        });
    }

    /// Whether this replica may post for `destination` now.
    pub fn owns(&self, destination: &str) -> bool {
        let queues = self.inner.queues.lock().unwrap_or_else(|p| p.into_inner());
        queues.get(destination).is_some_and(|q| q.owned())
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

pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}
