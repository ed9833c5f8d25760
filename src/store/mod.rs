//! The durable queue: the promise behind a 200. An accepted notification and its pending
//! destinations are appended to a log in `--data-dir/queue/` and fsync'd before the answer
//! goes out.
//!
//! The log is a series of segment files of CRC'd frames (`log`): an accept frame holds the
//! message record (destinations with done flags, then the JSON) and the MessageId to
//! remember; a finish frame marks one delivery done. One writer thread gathers whatever is
//! waiting into one write and one `fdatasync` (group commit); the request tasks build
//! their frames themselves, so the single thread only copies and syncs. Memory holds an
//! index of the live messages (seq -> where its record is, which destinations still wait),
//! so a worker without the parsed message reads exactly one record back.
//!
//! Space comes back oldest segment first: a compactor thread takes the oldest sealed
//! segment once at most a quarter of it is still live (or three quarters of the whole log
//! is garbage), copies the unexpired MessageIds into a
//! `keys-*.log` file (deleted once all its ids expire), hands the still-pending records to
//! the writer to append again (with their current done flags), and the writer then deletes
//! the segment. Deleting strictly oldest first means a finish frame is never lost while
//! the accept it cancels is still on disk.
//!
//! Why our own log and not redb (used before, BENCHMARKS.md): redb's copy-on-write B-tree
//! paid per-commit page bookkeeping for data that lives a few milliseconds, about a quarter
//! of the gateway's CPU at full load. An LSM store (fjall) writes each message twice
//! (journal, then table) and compacts in the background; the write-ahead-log crates seen
//! (walogs, wal-db, okaywal) are young single-author crates without the carry-forward
//! compaction a queue needs. What we own is small: framing, replay, and the compactor.
//!
//! Dead letters are not in the log but one JSON file each under `dead-letters/`, so the
//! `dead-letters` commands can list, show and purge them while the gateway runs;
//! `replay` moves a file into `replay/`, which the running gateway (or the next one to
//! start) takes back into the queue.

mod compactor;
pub mod dead_letters;
mod files;
mod index;
pub mod inspect;
mod log;
mod record;
pub mod recovery;
mod threads;
mod writer;

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::oneshot;

use crate::dedup::{Claim, Dedup, MessageKey};
use crate::metrics::Metrics;
use crate::model::Envelope;
use crate::queue::{Accepted, DeadLetter, Delivery, NewMessage, Queue, QueueError, SeqSet, StoredMessage, ThreadRef};
use compactor::Compactor;
pub use dead_letters::{DeadLetterError, DeadLetters};
use files::new_segment;
use index::{lock, Index, Lists, MAX_DESTINATIONS};
use log::Frame;
use recovery::Recovery;
use threads::Threads;
use writer::{Op, Writer};

use async_trait::async_trait;

/// Directory under `--data-dir` holding the log.
pub const QUEUE_DIR: &str = "queue";
const LOCK_FILE: &str = "LOCK";
/// A segment is sealed once it grows past this; the compactor works in these units.
const SEGMENT_BYTES: u64 = 32 << 20;
const KEYS_FILE_BYTES: u64 = 16 << 20;
/// Most operations one commit takes; bounds the latency of the first in the batch.
const MAX_BATCH: usize = 4096;
/// Accepts waiting for the writer beyond this are refused (503): the disk cannot keep up.
const MAX_QUEUED: usize = MAX_BATCH * 4;
const COMPACT_EVERY: Duration = Duration::from_secs(1);
/// Room kept (as `queue/reserve`) so that reclaiming space never needs space: about eight
/// segments' worth of MessageIds.
const RESERVE_BYTES: u64 = 4 << 20;
/// How far ahead of the log's end the active segment is zero-filled.
const ZERO_AHEAD: u64 = 256 << 10;

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn io_err(context: &Path) -> impl Fn(std::io::Error) -> QueueError + '_ {
    move |e| QueueError::io(context.display().to_string(), e)
}

/// Handle to the store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    index: Arc<Mutex<Index>>,
    ops: std_mpsc::Sender<Op>,
    next_seq: Arc<AtomicU64>,
    queued: Arc<AtomicUsize>,
    /// Messages in the log; bounds memory and disk under a Slack outage.
    stored: Arc<AtomicU64>,
    max_messages: u64,
    dead: DeadLetters,
    /// False while the writer cannot write (disk full, I/O errors): not ready.
    writable: Arc<AtomicBool>,
    /// MessageIds accepted within their lifetime (`max_age`), refilled from the log at open.
    dedup: Dedup,
    /// Where each alarm's first Slack post is.
    alarm_threads: Threads,
    /// The writer and compactor threads, joined on close.
    workers: Mutex<Vec<std::thread::JoinHandle<()>>>,
    stop: Arc<AtomicBool>,
    /// Holds the advisory lock on the queue directory for as long as the store lives.
    _lock: File,
}

/// What the store held at open.
pub struct Recovered {
    /// Damage found and reported (each also logged at ERROR and counted).
    pub damage: Vec<recovery::Damage>,
    pub pending: Vec<Delivery>,
    /// MessageIds remembered again (those still within their lifetime).
    pub remembered: usize,
    /// Copies of files found damaged (the readable part of each was kept).
    pub corrupt: Vec<PathBuf>,
}

impl Store {
    /// Opens (or creates) the store in `dir` and replays the log. Damage (a torn last write
    /// after a power loss, a bad disk block) is cut off where it starts, after a copy of
    /// the file is set aside and reported, so the gateway still serves.
    pub fn open(dir: &Path, max_messages: u64, metrics: Metrics) -> Result<(Store, Recovered), QueueError> {
        Store::open_with(dir, max_messages, metrics, SEGMENT_BYTES)
    }

    fn open_with(
        dir: &Path,
        max_messages: u64,
        metrics: Metrics,
        segment_bytes: u64,
    ) -> Result<(Store, Recovered), QueueError> {
        Store::open_with_io(dir, max_messages, metrics, segment_bytes, Arc::new(files::RealIo))
    }

    fn open_with_io(
        dir: &Path,
        max_messages: u64,
        metrics: Metrics,
        segment_bytes: u64,
        io: Arc<dyn files::LogIo>,
    ) -> Result<(Store, Recovered), QueueError> {
        let qdir = dir.join(QUEUE_DIR);
        std::fs::create_dir_all(&qdir).map_err(io_err(&qdir))?;
        let lock_path = qdir.join(LOCK_FILE);
        let lock_file =
            OpenOptions::new().create(true).truncate(false).write(true).open(&lock_path).map_err(io_err(&lock_path))?;
        rustix::fs::flock(&lock_file, rustix::fs::FlockOperation::NonBlockingLockExclusive).map_err(|_| {
            QueueError::io(qdir.display().to_string(), std::io::Error::other("in use by another process"))
        })?;

        let recovered = Recovery::run(dir, &qdir)?;
        let Recovery { mut index, keys_files, dedup, next_seq, corrupt, damage } = recovered;
        for d in &damage {
            metrics.store_damage.get_or_create(&[("kind", d.kind)]).inc();
            metrics.store_salvage_skipped_bytes.inc_by(d.skipped_bytes);
        }
        // Enough for a million MessageIds within max_age; entries expire on their own.
        let remembered = Dedup::new(2_000_000);
        for (key, expires_at) in dedup {
            remembered.remember(key, expires_at);
        }
        index.keys_bytes = keys_files.iter().map(|k| k.bytes).sum();
        let next_seq = Arc::new(AtomicU64::new(next_seq));
        if index.segments.is_empty() {
            let segment = new_segment(&qdir, 1, next_seq.load(Ordering::Relaxed), ZERO_AHEAD)?;
            index.segments.insert(1, segment);
        }
        index.active = *index.segments.keys().next_back().expect("a segment exists");

        // Seq order is accept order, so each destination's deliveries keep it.
        let pending: Vec<Delivery> = index
            .live
            .iter()
            .map(|(s, l)| (*s, l))
            .flat_map(|(seq, l)| {
                l.waiting().map(move |d| Delivery {
                    destination: d.clone(),
                    seq,
                    accepted_at_ms: l.accepted_at_ms,
                    prepared: None,
                })
            })
            .collect();

        let stored = Arc::new(AtomicU64::new(index.live.len() as u64));
        metrics.stored_messages.set(index.live.len() as i64);
        metrics.store_disk_bytes.set(index.disk_bytes() as i64);
        let active_file = index.segments[&index.active].file.clone();
        let active_len = index.segments[&index.active].bytes;
        let active_allocated = index.segments[&index.active].allocated;
        let index_active = index.active;
        let index = Arc::new(Mutex::new(index));
        let (tx, rx) = std_mpsc::channel();
        let (wake_tx, wake_rx) = std_mpsc::channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let writable = Arc::new(AtomicBool::new(true));
        let writer = Writer {
            dir: qdir.clone(),
            index: index.clone(),
            stored: stored.clone(),
            queued: queued.clone(),
            next_seq: next_seq.clone(),
            metrics: metrics.clone(),
            active: index_active,
            active_file,
            io,
            active_len,
            segment_bytes,
            allocated: active_allocated,
            lists: Lists::default(),
            buf: Vec::new(),
            zeros: vec![0; ZERO_AHEAD as usize],
            wake: wake_tx,
            dirty: false,
            broken: None,
            writable: writable.clone(),
            unlogged_errors: 0,
            failed_len: 0,
            last_error_log: None,
            spare: Default::default(),
        };
        let compactor = Compactor {
            reserve: qdir.join("reserve"),
            dir: qdir,
            index: index.clone(),
            ops: tx.clone(),
            keys_files,
            stop: stop.clone(),
            metrics,
            // Largest piece of a segment's pending records handed to the writer at
            // once (1 MiB for 32 MiB segments).
            carry_chunk: (segment_bytes / 32).max(1) as usize,
        };
        let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name.into())
                .spawn(f)
                .map_err(|e| QueueError::io("starting a store thread", e))
        };
        let threads = vec![
            spawn("store-writer", Box::new(move || writer.run(rx)))?,
            spawn("store-compactor", Box::new(move || compactor.run(wake_rx)))?,
        ];
        let store = Store {
            inner: Arc::new(Inner {
                index,
                ops: tx,
                next_seq,
                queued,
                stored,
                max_messages,
                dead: DeadLetters::new(dir),
                writable,
                dedup: remembered,
                alarm_threads: Threads::open(dir),
                workers: Mutex::new(threads),
                stop,
                _lock: lock_file,
            }),
        };
        let remembered = store.inner.dedup.len();
        Ok((store, Recovered { pending, remembered, corrupt, damage }))
    }

    /// Stores a notification with one pending delivery per destination (none for an unrouted
    /// one: then only its MessageId is recorded) and returns once it is on disk.
    async fn store(
        &self,
        envelope: &Envelope,
        message_json: Option<&str>,
        severity: &str,
        mut destinations: Vec<String>,
        dedup: Option<(MessageKey, u64)>,
    ) -> Result<Vec<Delivery>, QueueError> {
        if destinations.len() <= MAX_DESTINATIONS {
            return self.accept_record(envelope, message_json, severity, destinations, dedup).await;
        }
        // One record per 32 destinations; the MessageId goes with the first.
        let mut out = Vec::new();
        let mut key = dedup;
        while !destinations.is_empty() {
            let rest = destinations.split_off(destinations.len().min(MAX_DESTINATIONS));
            out.extend(self.accept_record(envelope, message_json, severity, destinations, key.take()).await?);
            destinations = rest;
        }
        Ok(out)
    }

    async fn accept_record(
        &self,
        envelope: &Envelope,
        message_json: Option<&str>,
        severity: &str,
        destinations: Vec<String>,
        dedup: Option<(MessageKey, u64)>,
    ) -> Result<Vec<Delivery>, QueueError> {
        let stored = self.inner.stored.load(Ordering::Relaxed);
        if !destinations.is_empty() && stored >= self.inner.max_messages {
            return Err(QueueError::Full(stored));
        }
        let accepted_at_ms = now_ms();
        let mut frame = Vec::new();
        let seq = if destinations.is_empty() {
            if let Some((key, expires_at)) = dedup {
                log::append(&mut frame, &Frame::Key { key, expires_at });
            }
            None
        } else {
            let seq = self.inner.next_seq.fetch_add(1, Ordering::Relaxed);
            let mut json = Ok(());
            frame.reserve(512 + message_json.map_or(envelope.message.len(), str::len));
            log::append_accept(&mut frame, seq, dedup, |out| {
                record::encode_header(out, accepted_at_ms, &destinations);
                json = record::write_json(out, envelope, message_json, accepted_at_ms, severity);
            });
            json?;
            Some(seq)
        };
        if frame.is_empty() {
            return Ok(Vec::new());
        }
        if self.inner.queued.fetch_add(1, Ordering::Relaxed) >= MAX_QUEUED {
            self.inner.queued.fetch_sub(1, Ordering::Relaxed);
            return Err(QueueError::Full(stored));
        }
        let (reply, rx) = oneshot::channel();
        let key_expires = dedup.map(|(_, e)| e);
        let op = Op::Accept { seq, frame, accepted_at_ms, destinations, key_expires, reply };
        self.inner.ops.send(op).map_err(|_| QueueError::Closed)?;
        rx.await.map_err(|_| QueueError::Closed)?
    }

    /// Marks a delivery done. Durable soon after (next commit), not before return.
    fn finish_now(&self, destination: &str, seq: u64) -> Result<(), QueueError> {
        self.finish_shared(destination.into(), seq)
    }

    fn finish_shared(&self, destination: Arc<str>, seq: u64) -> Result<(), QueueError> {
        self.inner.ops.send(Op::Finish { destination, seq }).map_err(|_| QueueError::Closed)
    }

    /// Waits until every operation sent so far is on disk.
    async fn flush_now(&self) {
        let (reply, rx) = oneshot::channel();
        if self.inner.ops.send(Op::Flush { reply, close: false }).is_ok() {
            let _ = rx.await;
        }
    }

    /// Commits everything queued, stops the writer and the compactor and waits for them;
    /// later writes fail with [`QueueError::Closed`]. The directory lock goes with the last
    /// `Store` clone.
    async fn close_now(&self) {
        self.inner.stop.store(true, Ordering::Relaxed);
        let (reply, rx) = oneshot::channel();
        if self.inner.ops.send(Op::Flush { reply, close: true }).is_ok() {
            let _ = rx.await;
        }
        let threads = std::mem::take(&mut *self.inner.workers.lock().unwrap_or_else(|p| p.into_inner()));
        let _ = tokio::task::spawn_blocking(move || threads.into_iter().for_each(|t| drop(t.join()))).await;
    }

    /// Reads a live message back; `None` once every destination is done.
    pub fn read(&self, seq: u64) -> Result<Option<StoredMessage>, QueueError> {
        let (file, offset, size) = {
            let index = lock(&self.inner.index);
            let Some(l) = index.live.get(&seq) else { return Ok(None) };
            let Some(s) = index.segments.get(&l.segment) else { return Ok(None) };
            // The Arc keeps the file readable even if compaction deletes it meanwhile.
            (s.file.clone(), l.offset, l.size)
        };
        let mut buf = vec![0; size as usize];
        file.read_exact_at(&mut buf, offset as u64).map_err(|e| QueueError::io(format!("message {seq}"), e))?;
        let Some(Frame::Accept { record, .. }) = log::check(&buf).and_then(log::decode) else {
            return Err(QueueError::Damaged(seq));
        };
        let rec = record::decode(record).ok_or(QueueError::Damaged(seq))?;
        Ok(Some(serde_json::from_slice(rec.json)?))
    }

    /// Up to `want` deliveries still pending for `destination`, oldest first, leaving out
    /// the seqs in `held` (those the caller already has).
    fn waiting_now(&self, destination: &str, held: &SeqSet, want: usize) -> Vec<Delivery> {
        let index = lock(&self.inner.index);
        // The index's own name for the destination (shared, not copied per delivery).
        index
            .live
            .iter()
            .filter(|(seq, _)| !held.contains(seq))
            .filter_map(|(seq, l)| {
                let name = l.waiting().find(|d| ***d == *destination)?;
                Some(Delivery {
                    destination: name.clone(),
                    seq: *seq,
                    accepted_at_ms: l.accepted_at_ms,
                    prepared: None,
                })
            })
            .take(want)
            .collect()
    }
}

#[async_trait]
impl Queue for Store {
    async fn accept(&self, m: NewMessage<'_>) -> Result<Accepted, QueueError> {
        if let Some((key, expires_at)) = m.dedup {
            if self.inner.dedup.claim(key, expires_at) == Claim::Duplicate {
                return Ok(Accepted::Duplicate);
            }
        }
        match self.store(m.envelope, m.message_json, m.severity, m.destinations, m.dedup).await {
            Ok(deliveries) => Ok(Accepted::Stored(deliveries)),
            Err(e) => {
                // Not stored, so not promised: SNS's retry must be accepted.
                if let Some((key, _)) = m.dedup {
                    self.inner.dedup.release(key);
                }
                Err(e)
            }
        }
    }

    async fn finish(&self, destination: &str, seq: u64) -> Result<(), QueueError> {
        self.finish_now(destination, seq)
    }

    fn finish_at_once(&self, destination: &Arc<str>, seq: u64) -> Option<Result<(), QueueError>> {
        Some(self.finish_shared(destination.clone(), seq))
    }

    async fn load(&self, seq: u64) -> Result<Option<StoredMessage>, QueueError> {
        self.read(seq)
    }

    async fn waiting_for(&self, destination: &str, held: &SeqSet, want: usize) -> Result<Vec<Delivery>, QueueError> {
        Ok(self.waiting_now(destination, held, want))
    }

    async fn flush(&self) {
        self.flush_now().await
    }

    async fn put_dead_letter(&self, letter: DeadLetter) -> Result<(), QueueError> {
        let dead = self.inner.dead.clone();
        tokio::task::spawn_blocking(move || dead.write(&letter))
            .await
            .map_err(|e| QueueError::io("writing a dead letter", std::io::Error::other(e)))?
            .map_err(|e| QueueError::io("writing a dead letter", e))
    }

    async fn replay_requests(&self) -> Result<Vec<DeadLetter>, QueueError> {
        let dead = self.inner.dead.clone();
        tokio::task::spawn_blocking(move || dead.replays())
            .await
            .map_err(|e| QueueError::io("reading replays", std::io::Error::other(e)))
    }

    async fn replay_taken(&self, id: &str) -> Result<(), QueueError> {
        self.inner.dead.replay_taken(id).map_err(|e| QueueError::io(format!("replay {id}"), e))
    }

    async fn thread(&self, alarm_key: &str) -> Result<Option<ThreadRef>, QueueError> {
        Ok(self.inner.alarm_threads.get(alarm_key))
    }

    async fn set_thread(&self, alarm_key: &str, thread: ThreadRef) -> Result<(), QueueError> {
        let store = self.clone();
        let key = alarm_key.to_string();
        tokio::task::spawn_blocking(move || store.inner.alarm_threads.set(&key, thread, now_ms()))
            .await
            .map_err(|e| QueueError::io("writing the thread map", std::io::Error::other(e)))?
    }

    fn remembered_ids(&self) -> usize {
        self.inner.dedup.len()
    }

    fn ready(&self) -> bool {
        self.inner.writable.load(Ordering::Relaxed)
    }

    async fn close(&self) {
        self.close_now().await
    }
}

#[cfg(test)]
mod tests;
