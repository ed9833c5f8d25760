//! The sink seam (after Alertmanager's `Notifier`): a sink renders one notification or a
//! digest of several for a destination, sends it, and classifies the answer. Everything
//! else (rate limit, backoff, ordering, digests, fallback, dead letters) is the worker's,
//! so a second sink (the Slack Web API) adds no branch to the worker loop.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::history::History;
use crate::config::Destination;
use crate::model::Prepared;

/// One notification as the worker hands it to a sink.
#[derive(Debug, Clone)]
pub struct Item {
    pub prepared: Arc<Prepared>,
    /// Its place in the alarm's history (how long the ALARM lasted, whether it is late).
    pub history: History,
    /// Its seq in the queue: a sink that remembers per-alarm state (threads) may key on it.
    pub seq: u64,
}

/// What an answer means for the delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Delivered.
    Done,
    /// The destination asked us to wait this long before the next post (429).
    RetryAfter(Duration),
    /// A transient failure (5xx, timeout, connection): back off and try again.
    Retry,
    /// The destination itself is gone (webhook deleted, channel archived, token revoked):
    /// use its fallback, else dead-letter.
    Gone,
    /// This message is refused (bad payload, too long): dead-letter it, do not retry.
    Refused,
}

/// A classified answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub verdict: Verdict,
    /// The `outcome` label of `webhook_relay_deliveries_total` (`ok`, `rate_limited`,
    /// `server_error`, `rejected`, `timeout`, `connection_error`).
    pub outcome: &'static str,
    /// What was answered, for logs and dead letters (`HTTP 400 invalid_payload`). Never a
    /// URL or a token.
    pub detail: String,
}

#[async_trait]
pub trait Sink: Send + Sync + 'static {
    /// Renders `items` (one, or a digest of several, oldest first) for `dest`, sends it,
    /// and classifies the answer.
    async fn send(&self, dest: &Destination, items: &[Item]) -> Answer;
}
