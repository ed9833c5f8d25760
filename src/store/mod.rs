//! The durable queue: the promise behind a 200. An accepted notification and one pending
//! delivery per destination are written to a redb file in `--data-dir` and fsync'd before
//! the answer goes out.
//!
//! Why redb: a maintained, pure-Rust, crash-safe B-tree with ACID transactions and
//! copy-on-write commits (no write-ahead log of our own to get right), and since 4.x it
//! reports a damaged file as an error rather than panicking. Its cost is an fsync per
//! commit (measured 0.5-0.6 ms here, BENCHMARKS.md), so every write goes through one
//! writer thread that gathers whatever requests are waiting into a single transaction
//! (group commit): at 512 accepts in flight, one costs 12 µs. The price of copy-on-write
//! is per-commit bookkeeping, about a quarter of the gateway's CPU at full load; an
//! append-only log would be cheaper and is the next step if throughput ever matters more
//! than a store we did not have to write.
//!
//! Dead letters are not in the database but one JSON file each under `dead-letters/`, so
//! the `dead-letters` commands can list, show and purge them while the gateway holds the
//! database lock; `replay` moves a file into `replay/`, which the running gateway (or the
//! next one to start) takes back into the queue.

pub mod dead_letters;
mod record;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redb::{Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::dedup::MessageKey;
use crate::metrics::Metrics;
use crate::route::{Envelope, Prepared};
pub use dead_letters::{DeadLetter, DeadLetters};

/// seq -> the message and which destinations still wait for it (see `record`).
const MESSAGES: TableDefinition<u64, &[u8]> = TableDefinition::new("messages_v3");
/// MessageKey (128-bit digest of the MessageId) -> unix seconds after which it may be forgotten.
const DEDUP: TableDefinition<u128, u64> = TableDefinition::new("dedup_keys");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// redb page cache: bounds the gateway's memory.
const CACHE_BYTES: usize = 16 * 1024 * 1024;
/// Most operations one commit takes; bounds the latency of the first in the batch.
const MAX_BATCH: usize = 4096;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredMessage {
    pub envelope: Envelope,
    pub accepted_at_ms: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store is full ({0} messages pending)")]
    Full(u64),
    #[error("store is shutting down")]
    Closed,
    #[error("storage error: {0}")]
    Io(String),
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn io<E: Into<redb::Error>>(e: E) -> StoreError {
    StoreError::Io(e.into().to_string())
}

/// One delivery to make: message `seq` to `destination`.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub destination: String,
    pub seq: u64,
    pub accepted_at_ms: u64,
    /// The notification as routing saw it, while it is cheap to keep: saves the worker a
    /// store read and a re-parse. Absent after a restart or when a queue is long; then the
    /// worker loads the message from disk.
    pub prepared: Option<Arc<Prepared>>,
}

enum Op {
    Accept {
        /// The StoredMessage as JSON, serialised by the caller so the single writer thread
        /// only writes; None when only the MessageId is recorded.
        record: Option<Vec<u8>>,
        accepted_at_ms: u64,
        destinations: Vec<String>,
        dedup: Option<(MessageKey, u64)>,
        reply: oneshot::Sender<Result<Vec<Delivery>, StoreError>>,
    },
    /// A delivery is done (sent, or dead-lettered and written to its file).
    Finish { destination: String, seq: u64 },
    /// Answered once everything queued before it is committed; with `close`, the writer
    /// then stops and releases the database.
    Flush { reply: oneshot::Sender<()>, close: bool },
}

/// Handle to the store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    db: Arc<Database>,
    ops: mpsc::Sender<Op>,
    /// Messages on disk; bounds memory and disk under a Slack outage.
    stored: Arc<AtomicU64>,
    max_messages: u64,
    dead: DeadLetters,
    writer: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// What the store held at open.
pub struct Recovered {
    pub pending: Vec<Delivery>,
    pub dedup: Vec<(MessageKey, u64)>,
    /// Set when the database file was unreadable and had to be set aside.
    pub corrupt: Option<PathBuf>,
}

pub const DB_FILE: &str = "webhook-relay.redb";

impl Store {
    /// Opens (or creates) the store in `dir`. A database file that cannot be opened is moved
    /// aside and reported, and a fresh one is started so the gateway still serves.
    pub fn open(dir: &Path, max_messages: u64, metrics: Metrics) -> Result<(Store, Recovered), StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Io(format!("{}: {e}", dir.display())))?;
        let path = dir.join(DB_FILE);
        match open_and_recover(&path) {
            Ok((db, contents)) => Store::start(db, dir, max_messages, metrics, contents, None),
            Err(OpenError::InUse) => Err(StoreError::Io(format!("{} is in use by another process", path.display()))),
            Err(OpenError::Unreadable(reason)) => {
                let aside = dir.join(format!("{DB_FILE}.corrupt-{}", crate::dedup::unix_now()));
                tracing::error!(path = %path.display(), error = %reason, moved_to = %aside.display(),
                    "store file unreadable; set aside, starting with an empty store (dead letters are kept)");
                std::fs::rename(&path, &aside).map_err(|e| StoreError::Io(e.to_string()))?;
                let (db, contents) = open_and_recover(&path).map_err(|e| StoreError::Io(e.to_string()))?;
                Store::start(db, dir, max_messages, metrics, contents, Some(aside))
            }
        }
    }

    fn start(
        db: Database,
        dir: &Path,
        max_messages: u64,
        metrics: Metrics,
        (pending, dedup, stored): Contents,
        corrupt: Option<PathBuf>,
    ) -> Result<(Store, Recovered), StoreError> {
        let db = Arc::new(db);
        let (tx, rx) = mpsc::channel(MAX_BATCH * 4);
        let stored = Arc::new(AtomicU64::new(stored));
        metrics.stored_messages.set(stored.load(Ordering::Relaxed) as i64);
        let writer = Writer { db: db.clone(), stored: stored.clone(), metrics };
        let writer = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| StoreError::Io(e.to_string()))?;
        let dead = DeadLetters::new(dir);
        let store = Store {
            inner: Arc::new(Inner {
                db,
                ops: tx,
                stored,
                max_messages,
                dead,
                writer: std::sync::Mutex::new(Some(writer)),
            }),
        };
        Ok((store, Recovered { pending, dedup, corrupt }))
    }

    /// Stores a notification with one pending delivery per destination (none for an unrouted
    /// one: then only its MessageId is recorded) and returns once it is on disk. `dedup` is
    /// the MessageId to remember and until when (none for replays and fallbacks).
    pub async fn accept(
        &self,
        envelope: &Envelope,
        destinations: Vec<String>,
        dedup: Option<(MessageKey, u64)>,
    ) -> Result<Vec<Delivery>, StoreError> {
        let stored = self.inner.stored.load(Ordering::Relaxed);
        if !destinations.is_empty() && stored >= self.inner.max_messages {
            return Err(StoreError::Full(stored));
        }
        let accepted_at_ms = now_ms();
        let record = if destinations.is_empty() {
            None
        } else {
            // Same JSON as StoredMessage, without cloning the envelope.
            #[derive(Serialize)]
            struct Record<'a> {
                envelope: &'a Envelope,
                accepted_at_ms: u64,
            }
            let json =
                serde_json::to_vec(&Record { envelope, accepted_at_ms }).map_err(|e| StoreError::Io(e.to_string()))?;
            Some(record::encode(accepted_at_ms, &destinations, &json))
        };
        let (reply, rx) = oneshot::channel();
        let op = Op::Accept { record, accepted_at_ms, destinations, dedup, reply };
        // Full queue means the disk cannot keep up: answer 503 rather than buffer.
        self.inner.ops.try_send(op).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => StoreError::Full(stored),
            mpsc::error::TrySendError::Closed(_) => StoreError::Closed,
        })?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Marks a delivery done. Durable soon after (next commit), not before return.
    pub async fn finish(&self, destination: &str, seq: u64) {
        let _ = self.inner.ops.send(Op::Finish { destination: destination.to_string(), seq }).await;
    }

    /// Writes a dead letter file, then finishes the delivery.
    pub async fn dead_letter(&self, delivery: &Delivery, reason: &str, attempts: u32) -> Result<(), StoreError> {
        let message = self.load(delivery.seq)?;
        let Some(message) = message else { return Ok(()) };
        let letter = DeadLetter {
            id: format!("{}-{}", delivery.seq, delivery.destination),
            destination: delivery.destination.clone(),
            reason: reason.to_string(),
            attempts,
            failed_at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            accepted_at_ms: message.accepted_at_ms,
            envelope: message.envelope,
        };
        let dead = self.inner.dead.clone();
        tokio::task::spawn_blocking(move || dead.write(&letter))
            .await
            .map_err(|e| StoreError::Io(e.to_string()))?
            .map_err(|e| StoreError::Io(e.to_string()))?;
        self.finish(&delivery.destination, delivery.seq).await;
        Ok(())
    }

    /// Waits until every operation sent so far is on disk.
    pub async fn flush(&self) {
        let (reply, rx) = oneshot::channel();
        if self.inner.ops.send(Op::Flush { reply, close: false }).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// Commits everything queued, stops the writer and waits for it; later writes fail
    /// with [`StoreError::Closed`]. The file lock goes with the last `Store` clone.
    pub async fn close(&self) {
        let (reply, rx) = oneshot::channel();
        if self.inner.ops.send(Op::Flush { reply, close: true }).await.is_ok() {
            let _ = rx.await;
        }
        let handle = self.inner.writer.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(h) = handle {
            let _ = tokio::task::spawn_blocking(move || h.join()).await;
        }
    }

    pub fn load(&self, seq: u64) -> Result<Option<StoredMessage>, StoreError> {
        let read = self.inner.db.begin_read().map_err(io)?;
        let table = read.open_table(MESSAGES).map_err(io)?;
        let Some(value) = table.get(seq).map_err(io)? else { return Ok(None) };
        let rec =
            record::decode(value.value()).ok_or_else(|| StoreError::Io(format!("message {seq}: damaged record")))?;
        serde_json::from_slice(rec.json).map(Some).map_err(|e| StoreError::Io(format!("message {seq}: {e}")))
    }

    /// Takes dead letters queued for replay back into the store; returns the new deliveries.
    pub async fn take_replays(&self) -> Vec<Delivery> {
        let mut out = Vec::new();
        for (path, letter) in self.inner.dead.replays() {
            // Replays bypass dedup (the MessageId is already known).
            let result = self.accept(&letter.envelope, vec![letter.destination.clone()], None).await;
            match result {
                Ok(deliveries) => {
                    let _ = std::fs::remove_file(&path);
                    tracing::info!(id = %letter.id, destination = %letter.destination, "dead letter replayed");
                    out.extend(deliveries);
                }
                Err(StoreError::Closed) => break,
                // Full or failing: the file stays in replay/ and is tried again later.
                Err(e) => tracing::error!(id = %letter.id, error = %e, "dead letter replay failed"),
            }
        }
        out
    }
}

#[derive(Debug, thiserror::Error)]
enum OpenError {
    #[error("in use by another process")]
    InUse,
    #[error("{0}")]
    Unreadable(String),
}

/// Opens the file and reads what it holds. redb reports a damaged file as an error; the few
/// damages that still reach an assertion inside redb are caught here and treated the same
/// way (the handle is dropped and never used again), so a bad file cannot stop the gateway.
fn open_and_recover(path: &Path) -> Result<(Database, Contents), OpenError> {
    // redb's page cache defaults to 1 GiB; recent messages are what deliveries read back.
    let builder = || {
        let mut b = Database::builder();
        b.set_cache_size(CACHE_BYTES);
        b
    };
    let attempt = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match builder().create(path) {
        Ok(db) => recover(&db).map(|c| (db, c)).map_err(|e| OpenError::Unreadable(e.to_string())),
        Err(redb::DatabaseError::DatabaseAlreadyOpen) => Err(OpenError::InUse),
        Err(e) => Err(OpenError::Unreadable(e.to_string())),
    }));
    attempt.unwrap_or_else(|panic| {
        let why = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "panic while opening".into());
        Err(OpenError::Unreadable(why))
    })
}

/// Pending deliveries, remembered MessageIds with their expiry, and the message count.
type Contents = (Vec<Delivery>, Vec<(MessageKey, u64)>, u64);

fn recover(db: &Database) -> Result<Contents, StoreError> {
    let w = db.begin_write().map_err(io)?;
    {
        // Creates the tables on first start so readers can open them.
        w.open_table(MESSAGES).map_err(io)?;
        w.open_table(DEDUP).map_err(io)?;
        w.open_table(META).map_err(io)?;
    }
    w.commit().map_err(io)?;
    let r = db.begin_read().map_err(io)?;
    // Records come in seq order, so each destination's deliveries keep accept order.
    let mut pending = Vec::new();
    for item in r.open_table(MESSAGES).map_err(io)?.iter().map_err(io)? {
        let (k, v) = item.map_err(io)?;
        let seq = k.value();
        let bytes = v.value();
        let rec = record::decode(bytes).ok_or_else(|| StoreError::Io(format!("message {seq}: damaged record")))?;
        for (destination, done) in rec.destinations {
            if !done {
                pending.push(Delivery {
                    destination: destination.to_string(),
                    seq,
                    accepted_at_ms: rec.accepted_at_ms,
                    prepared: None,
                });
            }
        }
    }
    let now = crate::dedup::unix_now();
    let mut dedup = Vec::new();
    for item in r.open_table(DEDUP).map_err(io)?.iter().map_err(io)? {
        let (k, v) = item.map_err(io)?;
        if v.value() > now {
            dedup.push((MessageKey(k.value()), v.value()));
        }
    }
    let stored = r.open_table(MESSAGES).map_err(io)?.len().map_err(io)?;
    Ok((pending, dedup, stored))
}

/// The single writer: gathers queued operations into one transaction per fsync.
struct Writer {
    db: Arc<Database>,
    stored: Arc<AtomicU64>,
    metrics: Metrics,
}

impl Writer {
    fn run(self, mut rx: mpsc::Receiver<Op>) {
        let mut last_prune = Instant::now();
        while let Some(first) = rx.blocking_recv() {
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(op) => batch.push(op),
                    Err(_) => break,
                }
            }
            let prune = last_prune.elapsed() > Duration::from_secs(60);
            if prune {
                last_prune = Instant::now();
            }
            if self.commit(batch, prune) {
                return;
            }
        }
    }

    /// Returns true when a close was requested.
    fn commit(&self, batch: Vec<Op>, prune: bool) -> bool {
        let started = Instant::now();
        let size = batch.len();
        let mut replies = Vec::new();
        let mut flushes = Vec::new();
        let mut closing = false;
        let result = (|| -> Result<i64, StoreError> {
            let mut txn = self.db.begin_write().map_err(io)?;
            txn.set_durability(Durability::Immediate).map_err(io)?;
            let mut delta: i64 = 0;
            {
                let mut messages = txn.open_table(MESSAGES).map_err(io)?;
                let mut dedup = txn.open_table(DEDUP).map_err(io)?;
                let mut meta = txn.open_table(META).map_err(io)?;
                let mut next_seq = meta.get("next_seq").map_err(io)?.map(|v| v.value()).unwrap_or(1);
                for op in batch {
                    match op {
                        Op::Accept { record, accepted_at_ms, destinations, dedup: remember, reply } => {
                            if let Some((key, expires_at)) = remember {
                                dedup.insert(key.0, expires_at).map_err(io)?;
                            }
                            let mut deliveries = Vec::new();
                            if let Some(record) = record {
                                let seq = next_seq;
                                next_seq += 1;
                                messages.insert(seq, record.as_slice()).map_err(io)?;
                                for d in destinations {
                                    deliveries.push(Delivery { destination: d, seq, accepted_at_ms, prepared: None });
                                }
                                delta += 1;
                            }
                            replies.push((reply, deliveries));
                        }
                        Op::Flush { reply, close } => {
                            closing |= close;
                            flushes.push(reply);
                        }
                        Op::Finish { destination, seq } => {
                            // Remove, then put back only if other destinations still wait:
                            // the common single-destination case is one B-tree operation.
                            let Some(old) = messages.remove(seq).map_err(io)? else { continue };
                            let mut rec = old.value().to_vec();
                            drop(old);
                            match record::mark_done(&mut rec, &destination) {
                                Some(0) => delta -= 1,
                                // Others pending, or this one was not (a repeated finish).
                                _ => {
                                    messages.insert(seq, rec.as_slice()).map_err(io)?;
                                }
                            }
                        }
                    }
                }
                meta.insert("next_seq", next_seq).map_err(io)?;
                if prune {
                    let now = crate::dedup::unix_now();
                    dedup.retain(|_, expires| expires > now).map_err(io)?;
                }
            }
            txn.commit().map_err(io)?;
            Ok(delta)
        })();
        for f in flushes {
            let _ = f.send(());
        }
        self.metrics.store_batch_size.observe(size as f64);
        self.metrics.store_commit_seconds.observe(started.elapsed().as_secs_f64());
        match result {
            Ok(delta) => {
                let now = (self.stored.load(Ordering::Relaxed) as i64 + delta).max(0) as u64;
                self.stored.store(now, Ordering::Relaxed);
                self.metrics.stored_messages.set(now as i64);
                for (reply, deliveries) in replies {
                    let _ = reply.send(Ok(deliveries));
                }
            }
            Err(e) => {
                self.metrics.store_errors.inc();
                tracing::error!(error = %e, "store commit failed; accepts in this batch answered 503");
                for (reply, _) in replies {
                    let _ = reply.send(Err(StoreError::Io(e.to_string())));
                }
            }
        }
        closing
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(id: &str) -> Envelope {
        Envelope {
            message_id: id.into(),
            topic_arn: "arn:aws:sns:us-east-1:1:t".into(),
            subject: None,
            message: "m".into(),
            timestamp: "2026-01-01T00:00:00Z".into(),
        }
    }

    #[tokio::test]
    async fn partial_finish_survives_reopen_and_last_finish_removes() {
        let dir = tempfile::tempdir().unwrap();
        let (store, rec) = Store::open(dir.path(), 100, Metrics::new()).unwrap();
        assert!(rec.pending.is_empty());
        let key = MessageKey::of("m1");
        let d = store.accept(&envelope("m1"), vec!["a".into(), "b".into()], Some((key, u64::MAX))).await.unwrap();
        assert_eq!(d.len(), 2);
        store.accept(&envelope("m2"), vec!["a".into()], None).await.unwrap();
        store.finish("a", d[0].seq).await;
        store.finish("a", d[0].seq).await; // repeated: must not finish "b" too
        store.close().await;
        drop(store);

        let (store, rec) = Store::open(dir.path(), 100, Metrics::new()).unwrap();
        let pending: Vec<(String, u64)> = rec.pending.iter().map(|p| (p.destination.clone(), p.seq)).collect();
        assert_eq!(pending, vec![("b".to_string(), d[0].seq), ("a".to_string(), d[0].seq + 1)]);
        assert_eq!(rec.dedup, vec![(key, u64::MAX)]);
        assert_eq!(store.load(d[0].seq).unwrap().unwrap().envelope.message_id, "m1");
        store.finish("b", d[0].seq).await;
        store.flush().await;
        assert!(store.load(d[0].seq).unwrap().is_none(), "fully delivered message still stored");
        store.close().await;
    }
}
