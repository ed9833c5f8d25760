//! The queue seam: everything the door ([`crate::ingest`]) and the delivery workers
//! ([`crate::deliver`]) need from durable storage, as one trait. The local log in
//! [`crate::store`] is one implementation; NATS JetStream ([`crate::cluster::NatsQueue`],
//! cluster mode) is the other, so every method is asynchronous and fallible, and nothing
//! here assumes a local file or a single process:
//!
//! - [`Queue::accept`] is the promise behind a 200: it returns only once the message is
//!   durable, and it is also where a MessageId seen before is reported as a duplicate (the
//!   backend owns the MessageId memory, so a shared backend can share it).
//! - Deliveries are `(seq, destination)` pairs; `seq` grows in accept order, which is the
//!   order each destination's deliveries go out in.
//! - A delivery ends with [`Queue::finish`] (sent, rerouted or dead-lettered).
//! - Dead letters live in the backend too, so a shared backend shares them; writing one
//!   and taking replays back in is delivery's business ([`crate::deliver::dead_letters`]).
//! - [`Queue::thread`] remembers where an alarm's first Slack post went (Web API sinks
//!   thread later state changes under it), durably and, in a shared backend, for everyone.

use std::collections::HashSet;
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::dedup::MessageKey;
use crate::model::{Envelope, Prepared};

/// One delivery to make: message `seq` to `destination`.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// Shared: a delivery is cloned into the worker's batch, and its queue's name is one.
    pub destination: Arc<str>,
    pub seq: u64,
    pub accepted_at_ms: u64,
    /// The notification as routing saw it, while it is cheap to keep: saves the worker a
    /// read and a re-parse. Absent after a restart or when a queue is long; then the
    /// worker loads the message from the queue.
    pub prepared: Option<Arc<Prepared>>,
}

/// A stored message as read back.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredMessage {
    pub envelope: Envelope,
    pub accepted_at_ms: u64,
    /// The severity classified at accept time: the decision made then is the record, so a
    /// message read back after a restart or a routes.toml change keeps it. Absent in
    /// records written before it was kept; then the current rules classify again.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::model::json_text::opt_compact"
    )]
    pub severity: Option<crate::model::Str>,
}

/// A message to store, with the decision routing made for it.
pub struct NewMessage<'a> {
    pub envelope: &'a Envelope,
    pub severity: &'a str,
    /// One pending delivery each; none for an unrouted message (then only its MessageId
    /// is remembered).
    pub destinations: Vec<String>,
    /// The MessageId to remember and until when (unix seconds); none for fallbacks and
    /// replays, which reuse a MessageId already known.
    pub dedup: Option<(MessageKey, u64)>,
    /// The dead letter this replays, if it is one: a shared backend uses it to store a
    /// replay once even when the taking is repeated.
    pub replay_of: Option<&'a str>,
    /// The envelope's `message` as a JSON string literal, as SNS wrote it (checked by the
    /// parser: it reads back as `message`). A backend may store it instead of escaping the
    /// text again.
    pub message_json: Option<&'a str>,
}

/// What [`Queue::accept`] did.
#[derive(Debug)]
pub enum Accepted {
    /// Durable; these deliveries are now pending.
    Stored(Vec<Delivery>),
    /// The MessageId was accepted before and is still remembered: nothing was stored.
    Duplicate,
}

/// A delivery given up on, kept for an operator to read, replay or purge.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DeadLetter {
    /// `<seq>-<destination>`: unique, and the file name in the local backend.
    pub id: String,
    pub destination: String,
    pub reason: String,
    pub attempts: u32,
    pub failed_at: String,
    pub accepted_at_ms: u64,
    pub envelope: Envelope,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::model::json_text::opt_compact"
    )]
    pub severity: Option<crate::model::Str>,
}

/// Where an alarm's first Slack post is, so later state changes can reply in its thread
/// or update it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ThreadRef {
    pub channel: String,
    pub ts: String,
    /// When this was recorded or last touched (ms since the epoch).
    pub updated_at_ms: u64,
    /// The alarm's state as last posted, and since when (ms since the epoch): how long the
    /// previous state lasted, and whether an OK has outlived `lifecycle_ttl`.
    #[serde(default)]
    pub state: String,
    #[serde(default)]
    pub state_since_ms: u64,
    /// The queue seq of the last state change handled, so a retry does not reply twice.
    #[serde(default)]
    pub last_seq: u64,
}

/// Why the queue could not do what was asked. Each variant is one answer at the door:
/// `Full` is "store_full", the rest "store_unavailable" (both 503, so SNS retries).
#[derive(Debug, Clone, thiserror::Error)]
pub enum QueueError {
    #[error("queue is full ({0} messages pending)")]
    Full(u64),
    #[error("queue is shutting down")]
    Closed,
    #[error("{context}: {source}")]
    Io {
        context: String,
        /// Shared: one failed write answers every accept of its batch.
        #[source]
        source: Arc<std::io::Error>,
    },
    #[error("message {0}: damaged record")]
    Damaged(u64),
    #[error("cannot encode or decode a record: {0}")]
    Encoding(Arc<serde_json::Error>),
    /// The shared backend (NATS JetStream) is unreachable, has no quorum or failed.
    #[error("{0}")]
    Unavailable(String),
}

impl QueueError {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> QueueError {
        QueueError::Io { context: context.into(), source: Arc::new(source) }
    }
}

impl From<serde_json::Error> for QueueError {
    fn from(e: serde_json::Error) -> QueueError {
        QueueError::Encoding(Arc::new(e))
    }
}

/// Seqs are consecutive integers chosen by us, not by a client: one multiply spreads them
/// over a hash table at a fraction of SipHash's cost (SipHash showed in the profile).
#[derive(Default)]
pub struct SeqHasher(u64);

impl std::hash::Hasher for SeqHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(8) ^ *b as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// A set of seqs (see [`SeqHasher`]).
pub type SeqSet = HashSet<u64, std::hash::BuildHasherDefault<SeqHasher>>;

/// Durable storage as the pipeline sees it. See the module doc for the contract.
#[async_trait]
pub trait Queue: Send + Sync + 'static {
    /// Stores a message with one pending delivery per destination, durably, or reports
    /// its MessageId as a duplicate. An error means nothing was promised.
    async fn accept(&self, message: NewMessage<'_>) -> Result<Accepted, QueueError>;

    /// A delivery is done. Durable soon after, not necessarily before this returns: a
    /// crash in between may repeat a post, never lose one.
    async fn finish(&self, destination: &str, seq: u64) -> Result<(), QueueError>;

    /// [`Queue::finish`] without a future, for a backend that never waits to finish (the
    /// local store hands a frame to its writer); `None` when it would wait. Taken once per
    /// delivery, and a trait object's future is a heap allocation.
    fn finish_at_once(&self, _destination: &Arc<str>, _seq: u64) -> Option<Result<(), QueueError>> {
        None
    }

    /// Reads a message back; `None` once every destination is done with it.
    async fn load(&self, seq: u64) -> Result<Option<StoredMessage>, QueueError>;

    /// Up to `want` deliveries still pending for `destination`, oldest first, leaving out
    /// the seqs in `held` (those the caller already has).
    async fn waiting_for(&self, destination: &str, held: &SeqSet, want: usize) -> Result<Vec<Delivery>, QueueError>;

    /// Waits until every operation sent so far is applied.
    async fn flush(&self);

    /// Keeps a dead letter (the delivery itself is finished separately).
    async fn put_dead_letter(&self, letter: DeadLetter) -> Result<(), QueueError>;

    /// Dead letters an operator asked to replay.
    async fn replay_requests(&self) -> Result<Vec<DeadLetter>, QueueError>;

    /// A replay request was taken back into the queue: forget it.
    async fn replay_taken(&self, id: &str) -> Result<(), QueueError>;

    /// Where the first post of an alarm went, if it is remembered.
    async fn thread(&self, alarm_key: &str) -> Result<Option<ThreadRef>, QueueError>;

    /// Remembers (or replaces) where an alarm's thread is.
    async fn set_thread(&self, alarm_key: &str, thread: ThreadRef) -> Result<(), QueueError>;

    /// MessageIds currently remembered (for /metrics).
    fn remembered_ids(&self) -> usize;

    /// Whether accepts can be stored now (the disk writes, the cluster has quorum):
    /// `/readyz` answers 503 while not.
    fn ready(&self) -> bool;

    /// Applies everything queued and stops; later writes fail with [`QueueError::Closed`].
    async fn close(&self);
}
