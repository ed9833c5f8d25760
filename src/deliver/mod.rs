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
                tasks: tokio_util::task::TaskTracker::new(),
            }),
        }
    }

    /// Hands stored deliveries to their destinations' workers.
    pub fn enqueue(&self, deliveries: Vec<Delivery>) {
        let mut queues = self.inner.queues.lock().unwrap_or_else(|p| p.into_inner());
        for d in deliveries {
            let queue = match queues.get(&d.destination) {
                Some(q) => q.clone(),
                None => {
                    let depth =
                        self.inner.metrics.queue_depth.get_or_create(&Metrics::named("destination", &d.destination));
                    let q = Arc::new(DestinationQueue::new(self.inner.queue_cap, depth.clone()));
                    let worker = Worker::new(self.inner.clone(), d.destination.clone(), q.clone());
                    self.inner.tasks.spawn(worker.run());
                    queues.insert(d.destination.clone(), q.clone());
                    q
                }
            };
            queue.push(d);
        }
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
                let replayed = dead_letters::take_replays(this.inner.queue.as_ref(), &config).await;
                this.enqueue(replayed);
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = shutdown.recv() => return,
                }
            }
        });
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
