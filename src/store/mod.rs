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

pub mod dead_letters;
mod log;
mod record;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::dedup::MessageKey;
use crate::metrics::Metrics;
use crate::model::{Envelope, Prepared};
pub use dead_letters::{DeadLetter, DeadLetters};
use log::{Frame, Reader, Step};

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
/// How far ahead of the log's end the active segment is zero-filled.
const ZERO_AHEAD: u64 = 256 << 10;

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

fn io_err(context: &Path) -> impl Fn(std::io::Error) -> StoreError + '_ {
    move |e| StoreError::Io(format!("{}: {e}", context.display()))
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
        /// Set for a routed message; None when only the MessageId is recorded.
        seq: Option<u64>,
        /// The frame, built by the caller so the single writer thread only writes.
        frame: Vec<u8>,
        accepted_at_ms: u64,
        destinations: Vec<String>,
        key_expires: Option<u64>,
        reply: oneshot::Sender<Result<Vec<Delivery>, StoreError>>,
    },
    /// A delivery is done (sent, or dead-lettered and written to its file).
    Finish { destination: String, seq: u64 },
    /// From the compactor: append these records again (those still live), then delete the
    /// segment. Its MessageIds are already in a keys file.
    Compact { segment: u64, carry: Vec<(u64, Vec<u8>)>, done: std_mpsc::Sender<()>, last: bool },
    /// Answered once everything queued before it is committed; with `close`, the writer
    /// then stops.
    Flush { reply: oneshot::Sender<()>, close: bool },
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

/// A message's destinations, in record order. Lists are few (one per distinct routing
/// outcome), so live entries share them (a thin pointer: 8 bytes an entry).
type Dests = Arc<Vec<Arc<str>>>;

/// Most destinations one record holds (a bit each in `Live::pending`); a message routed
/// to more is stored as several records.
const MAX_DESTINATIONS: usize = 32;

/// Where a live message's record is, and who still waits for it: 40 bytes (measured with
/// the map around it: ~107 bytes a pending message at 160,000 pending).
struct Live {
    offset: u32,
    size: u32,
    /// Bit i set: `dests[i]` still waits.
    pending: u32,
    segment: u64,
    accepted_at_ms: u64,
    dests: Dests,
}

impl Live {
    /// Marks `destination` done; false if it was not waiting.
    fn finish(&mut self, destination: &str) -> bool {
        let hit = self.dests.iter().enumerate().find(|(i, d)| self.pending & (1 << i) != 0 && ***d == *destination);
        if let Some((i, _)) = hit {
            self.pending &= !(1 << i);
        }
        hit.is_some()
    }

    fn waiting(&self) -> impl Iterator<Item = &Arc<str>> {
        self.dests.iter().enumerate().filter(|(i, _)| self.pending & (1 << i) != 0).map(|(_, d)| d)
    }
}

/// Shares destination lists between live entries.
#[derive(Default)]
struct Lists(HashMap<Vec<String>, Dests>);

impl Lists {
    fn get(&mut self, names: &[String]) -> Dests {
        if let Some(d) = self.0.get(names) {
            return d.clone();
        }
        let d: Dests = Arc::new(names.iter().map(|n| Arc::from(n.as_str())).collect());
        self.0.insert(names.to_vec(), d.clone());
        d
    }
}

struct Segment {
    file: Arc<File>,
    path: PathBuf,
    /// End of the log in this file; the file itself is preallocated (`allocated`).
    bytes: u64,
    allocated: u64,
    /// Messages whose current record is in this segment, and their bytes.
    live: u64,
    live_bytes: u64,
    /// Latest expiry of a MessageId recorded here: until then the segment is needed.
    keys_until: u64,
}

/// Shared between the writer (the only one who changes it), the compactor and `load`.
#[derive(Default)]
struct Index {
    /// Ordered: recovery and read-back go oldest first, and unlike a hash table it never
    /// reallocates as a whole (a 190,000-entry table doubling under load cost ~20 MiB of
    /// peak memory) and gives memory back as a backlog drains.
    live: BTreeMap<u64, Live>,
    segments: BTreeMap<u64, Segment>,
    active: u64,
    keys_bytes: u64,
}

impl Index {
    fn place(&mut self, seq: u64, live: Live) {
        if let Some(s) = self.segments.get_mut(&live.segment) {
            s.live += 1;
            s.live_bytes += live.size as u64;
        }
        if let Some(old) = self.live.insert(seq, live) {
            self.unplace(&old);
        }
    }

    fn unplace(&mut self, old: &Live) {
        if let Some(s) = self.segments.get_mut(&old.segment) {
            s.live -= 1;
            s.live_bytes -= old.size as u64;
        }
    }

    fn disk_bytes(&self) -> u64 {
        self.segments.values().map(|s| s.allocated.max(s.bytes)).sum::<u64>() + self.keys_bytes
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
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
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
    stop: Arc<AtomicBool>,
    /// Holds the advisory lock on the queue directory for as long as the store lives.
    _lock: File,
}

/// What the store held at open.
pub struct Recovered {
    pub pending: Vec<Delivery>,
    pub dedup: Vec<(MessageKey, u64)>,
    /// Copies of files found damaged (the readable part of each was kept).
    pub corrupt: Vec<PathBuf>,
}

fn segment_name(id: u64) -> String {
    format!("{id:020}.seg")
}

fn keys_name(id: u64) -> String {
    format!("keys-{id:020}.log")
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_err(dir))
}

/// Creates a file that starts with a header frame, durably (file and directory entry).
/// With `preallocate`, the file is filled with zeros to that size first. Overwriting
/// written blocks changes no file metadata, so each commit's `fdatasync` is a single data
/// write: measured here, 3x faster and 2.7x less CPU than appending (BENCHMARKS.md).
fn create_log_file(dir: &Path, name: &str, next_seq: u64, preallocate: u64) -> Result<(File, u64), StoreError> {
    let path = dir.join(name);
    let file = OpenOptions::new().create_new(true).write(true).read(true).open(&path).map_err(io_err(&path))?;
    let mut buf = Vec::new();
    let size = log::append(&mut buf, &Frame::Header { next_seq }) as u64;
    let zeros = vec![0u8; 1 << 20];
    let mut at = size;
    let written = file.write_all_at(&buf, 0).and_then(|_| {
        while at < preallocate {
            let n = (preallocate - at).min(zeros.len() as u64);
            file.write_all_at(&zeros[..n as usize], at)?;
            at += n;
        }
        file.sync_data()
    });
    if let Err(e) = written {
        let _ = std::fs::remove_file(&path);
        return Err(io_err(&path)(e));
    }
    sync_dir(dir)?;
    Ok((file, size))
}

impl Store {
    /// Opens (or creates) the store in `dir` and replays the log. Damage (a torn last write
    /// after a power loss, a bad disk block) is cut off where it starts, after a copy of
    /// the file is set aside and reported, so the gateway still serves.
    pub fn open(dir: &Path, max_messages: u64, metrics: Metrics) -> Result<(Store, Recovered), StoreError> {
        Store::open_with(dir, max_messages, metrics, SEGMENT_BYTES)
    }

    fn open_with(
        dir: &Path,
        max_messages: u64,
        metrics: Metrics,
        segment_bytes: u64,
    ) -> Result<(Store, Recovered), StoreError> {
        let qdir = dir.join(QUEUE_DIR);
        std::fs::create_dir_all(&qdir).map_err(io_err(&qdir))?;
        let lock_path = qdir.join(LOCK_FILE);
        let lock_file =
            OpenOptions::new().create(true).truncate(false).write(true).open(&lock_path).map_err(io_err(&lock_path))?;
        rustix::fs::flock(&lock_file, rustix::fs::FlockOperation::NonBlockingLockExclusive)
            .map_err(|_| StoreError::Io(format!("{} is in use by another process", qdir.display())))?;

        let replay = Replay::run(dir, &qdir)?;
        let Replay { mut index, keys_files, dedup, next_seq, corrupt } = replay;
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
                    destination: d.to_string(),
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
        let writer = Writer {
            dir: qdir.clone(),
            index: index.clone(),
            stored: stored.clone(),
            queued: queued.clone(),
            next_seq: next_seq.clone(),
            metrics: metrics.clone(),
            active: index_active,
            active_file,
            active_len,
            segment_bytes,
            allocated: active_allocated,
            lists: Lists::default(),
            buf: Vec::new(),
            zeros: vec![0; ZERO_AHEAD as usize],
            wake: wake_tx,
            dirty: false,
            broken: None,
        };
        let compactor = Compactor {
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
            std::thread::Builder::new().name(name.into()).spawn(f).map_err(|e| StoreError::Io(e.to_string()))
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
                threads: Mutex::new(threads),
                stop,
                _lock: lock_file,
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
        mut destinations: Vec<String>,
        dedup: Option<(MessageKey, u64)>,
    ) -> Result<Vec<Delivery>, StoreError> {
        if destinations.len() <= MAX_DESTINATIONS {
            return self.accept_record(envelope, destinations, dedup).await;
        }
        // One record per 64 destinations; the MessageId goes with the first.
        let mut out = Vec::new();
        let mut key = dedup;
        while !destinations.is_empty() {
            let rest = destinations.split_off(destinations.len().min(MAX_DESTINATIONS));
            out.extend(self.accept_record(envelope, destinations, key.take()).await?);
            destinations = rest;
        }
        Ok(out)
    }

    async fn accept_record(
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
        let mut frame = Vec::new();
        let seq = if destinations.is_empty() {
            if let Some((key, expires_at)) = dedup {
                log::append(&mut frame, &Frame::Key { key, expires_at });
            }
            None
        } else {
            // Same JSON as StoredMessage, without cloning the envelope.
            #[derive(Serialize)]
            struct Record<'a> {
                envelope: &'a Envelope,
                accepted_at_ms: u64,
            }
            let seq = self.inner.next_seq.fetch_add(1, Ordering::Relaxed);
            let mut json = Ok(());
            frame.reserve(512 + envelope.message.len());
            log::append_accept(&mut frame, seq, dedup, |out| {
                record::encode_header(out, accepted_at_ms, &destinations);
                json = serde_json::to_writer(out, &Record { envelope, accepted_at_ms });
            });
            json.map_err(|e| StoreError::Io(e.to_string()))?;
            Some(seq)
        };
        if frame.is_empty() {
            return Ok(Vec::new());
        }
        if self.inner.queued.fetch_add(1, Ordering::Relaxed) >= MAX_QUEUED {
            self.inner.queued.fetch_sub(1, Ordering::Relaxed);
            return Err(StoreError::Full(stored));
        }
        let (reply, rx) = oneshot::channel();
        let key_expires = dedup.map(|(_, e)| e);
        let op = Op::Accept { seq, frame, accepted_at_ms, destinations, key_expires, reply };
        self.inner.ops.send(op).map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Marks a delivery done. Durable soon after (next commit), not before return.
    pub async fn finish(&self, destination: &str, seq: u64) {
        let _ = self.inner.ops.send(Op::Finish { destination: destination.to_string(), seq });
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
        if self.inner.ops.send(Op::Flush { reply, close: false }).is_ok() {
            let _ = rx.await;
        }
    }

    /// Commits everything queued, stops the writer and the compactor and waits for them;
    /// later writes fail with [`StoreError::Closed`]. The directory lock goes with the last
    /// `Store` clone.
    pub async fn close(&self) {
        self.inner.stop.store(true, Ordering::Relaxed);
        let (reply, rx) = oneshot::channel();
        if self.inner.ops.send(Op::Flush { reply, close: true }).is_ok() {
            let _ = rx.await;
        }
        let threads = std::mem::take(&mut *self.inner.threads.lock().unwrap_or_else(|p| p.into_inner()));
        let _ = tokio::task::spawn_blocking(move || threads.into_iter().for_each(|t| drop(t.join()))).await;
    }

    /// Reads a live message back; `None` once every destination is done.
    pub fn load(&self, seq: u64) -> Result<Option<StoredMessage>, StoreError> {
        let (file, offset, size) = {
            let index = lock(&self.inner.index);
            let Some(l) = index.live.get(&seq) else { return Ok(None) };
            let Some(s) = index.segments.get(&l.segment) else { return Ok(None) };
            // The Arc keeps the file readable even if compaction deletes it meanwhile.
            (s.file.clone(), l.offset, l.size)
        };
        let mut buf = vec![0; size as usize];
        file.read_exact_at(&mut buf, offset as u64).map_err(|e| StoreError::Io(format!("message {seq}: {e}")))?;
        let damaged = || StoreError::Io(format!("message {seq}: damaged record"));
        let Some(Frame::Accept { record, .. }) = log::check(&buf).and_then(log::decode) else { return Err(damaged()) };
        let rec = record::decode(record).ok_or_else(damaged)?;
        serde_json::from_slice(rec.json).map(Some).map_err(|e| StoreError::Io(format!("message {seq}: {e}")))
    }

    /// Up to `want` deliveries still pending for `destination`, oldest first, leaving out
    /// the seqs in `held` (those the caller already has).
    pub fn waiting_for(&self, destination: &str, held: &SeqSet, want: usize) -> Vec<Delivery> {
        let index = lock(&self.inner.index);
        let found: Vec<(u64, u64)> = index
            .live
            .iter()
            .filter(|(seq, l)| !held.contains(seq) && l.waiting().any(|d| **d == *destination))
            .take(want)
            .map(|(seq, l)| (*seq, l.accepted_at_ms))
            .collect();
        drop(index);
        found
            .into_iter()
            .map(|(seq, accepted_at_ms)| Delivery {
                destination: destination.to_string(),
                seq,
                accepted_at_ms,
                prepared: None,
            })
            .collect()
    }

    /// Takes dead letters queued for replay back into the store; returns the new deliveries.
    pub async fn take_replays(&self) -> Vec<Delivery> {
        let mut out = Vec::new();
        for (path, letter) in self.inner.dead.replays() {
            // Replays bypass dedup (the MessageId is already known). An operator replays
            // after fixing something, so the one-hop fallback rule starts afresh.
            let envelope = Envelope { fallback_from: None, ..letter.envelope.clone() };
            let result = self.accept(&envelope, vec![letter.destination.clone()], None).await;
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

fn new_segment(dir: &Path, id: u64, next_seq: u64, preallocate: u64) -> Result<Segment, StoreError> {
    let name = segment_name(id);
    let (file, bytes) = create_log_file(dir, &name, next_seq, preallocate)?;
    let allocated = preallocate.max(bytes);
    Ok(Segment { file: Arc::new(file), path: dir.join(name), bytes, allocated, live: 0, live_bytes: 0, keys_until: 0 })
}

/// A keys file: MessageIds carried out of compacted segments.
struct KeysFile {
    id: u64,
    path: PathBuf,
    bytes: u64,
    until: u64,
}

/// What the files on disk held.
struct Replay {
    index: Index,
    keys_files: Vec<KeysFile>,
    dedup: Vec<(MessageKey, u64)>,
    next_seq: u64,
    corrupt: Vec<PathBuf>,
}

impl Replay {
    fn run(data_dir: &Path, qdir: &Path) -> Result<Replay, StoreError> {
        let mut segment_ids = Vec::new();
        let mut keys_ids = Vec::new();
        for entry in std::fs::read_dir(qdir).map_err(io_err(qdir))?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(id) = name.strip_suffix(".seg").and_then(|n| n.parse::<u64>().ok()) {
                segment_ids.push(id);
            } else if let Some(id) = name.strip_prefix("keys-").and_then(|n| n.strip_suffix(".log")) {
                keys_ids.extend(id.parse::<u64>().ok());
            }
        }
        segment_ids.sort_unstable();
        keys_ids.sort_unstable();
        let now = crate::dedup::unix_now();
        let mut corrupt = Vec::new();
        let mut dedup = Vec::new();

        let mut keys_files = Vec::new();
        for id in keys_ids {
            let path = qdir.join(keys_name(id));
            let mut until = 0;
            let read = read_log(data_dir, &path, &mut corrupt, |_, _, frame| {
                if let Frame::Key { key, expires_at } = frame {
                    until = until.max(expires_at);
                    if expires_at > now {
                        dedup.push((key, expires_at));
                    }
                }
            })?;
            if let Some(bytes) = read {
                keys_files.push(KeysFile { id, path, bytes, until });
            }
        }

        let mut index = Index::default();
        let mut next_seq = 1;
        let mut lists = Lists::default();
        for id in segment_ids {
            let path = qdir.join(segment_name(id));
            let mut keys_until = 0;
            let live = &mut index.live;
            let read = read_log(data_dir, &path, &mut corrupt, |offset, size, frame| match frame {
                Frame::Header { next_seq: n } => next_seq = next_seq.max(n),
                Frame::Key { key, expires_at } => {
                    keys_until = keys_until.max(expires_at);
                    if expires_at > now {
                        dedup.push((key, expires_at));
                    }
                }
                Frame::Accept { seq, key, record } => {
                    next_seq = next_seq.max(seq + 1);
                    if let Some((key, expires_at)) = key {
                        keys_until = keys_until.max(expires_at);
                        if expires_at > now {
                            dedup.push((key, expires_at));
                        }
                    }
                    let Some(rec) = record::decode(record) else {
                        tracing::error!(seq, segment = id, "message record damaged behind a valid checksum; skipped");
                        return;
                    };
                    let names: Vec<String> = rec.destinations.iter().map(|(d, _)| d.to_string()).collect();
                    let pending = rec
                        .destinations
                        .iter()
                        .enumerate()
                        .take(MAX_DESTINATIONS)
                        .filter(|(_, (_, done))| !done)
                        .fold(0u32, |m, (i, _)| m | 1 << i);
                    if pending == 0 {
                        live.remove(&seq);
                    } else {
                        let (dests, accepted_at_ms) = (lists.get(&names), rec.accepted_at_ms);
                        live.insert(
                            seq,
                            Live { segment: id, offset: offset as u32, size, accepted_at_ms, dests, pending },
                        );
                    }
                }
                Frame::Finish { seq, destination } => {
                    if let Some(l) = live.get_mut(&seq) {
                        l.finish(destination);
                        if l.pending == 0 {
                            live.remove(&seq);
                        }
                    }
                }
            })?;
            let Some(bytes) = read else { continue };
            let file = OpenOptions::new().read(true).write(true).open(&path).map_err(io_err(&path))?;
            let allocated = file.metadata().map_err(io_err(&path))?.len();
            let segment = Segment { file: Arc::new(file), path, bytes, allocated, live: 0, live_bytes: 0, keys_until };
            index.segments.insert(id, segment);
        }
        for l in index.live.values() {
            if let Some(s) = index.segments.get_mut(&l.segment) {
                s.live += 1;
                s.live_bytes += l.size as u64;
            }
        }
        Ok(Replay { index, keys_files, dedup, next_seq, corrupt })
    }
}

/// Feeds every valid frame of a log file to `f` and returns the length of its valid part,
/// or `None` when the file was not a log file at all (it is then moved aside whole). At
/// the first damaged frame the file is copied aside and cut there: what follows a damaged
/// frame cannot be framed reliably.
fn read_log(
    data_dir: &Path,
    path: &Path,
    corrupt: &mut Vec<PathBuf>,
    mut f: impl FnMut(u64, u32, Frame<'_>),
) -> Result<Option<u64>, StoreError> {
    let aside = || {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        data_dir.join(format!("{name}.corrupt-{}", crate::dedup::unix_now()))
    };
    let mut reader = Reader::open(path).map_err(io_err(path))?;
    let mut first = true;
    loop {
        match reader.next().map_err(io_err(path))? {
            Step::Frame { offset, size, frame } => {
                if first && !matches!(frame, Frame::Header { .. }) {
                    break;
                }
                first = false;
                f(offset, size, frame);
            }
            Step::End if first => {
                // Created but never written (a crash inside `create_log_file`).
                std::fs::remove_file(path).map_err(io_err(path))?;
                return Ok(None);
            }
            Step::End => return Ok(Some(reader.offset())),
            Step::Damaged { .. } if first => break,
            Step::Damaged { offset, why } => {
                let to = aside();
                std::fs::copy(path, &to).map_err(io_err(&to))?;
                let file = OpenOptions::new().write(true).open(path).map_err(io_err(path))?;
                file.set_len(offset).and_then(|_| file.sync_all()).map_err(io_err(path))?;
                tracing::error!(path = %path.display(), offset, why, copy = %to.display(),
                    "damaged store file: kept what precedes the damage, set a copy aside");
                corrupt.push(to);
                return Ok(Some(offset));
            }
        }
    }
    let to = aside();
    std::fs::rename(path, &to).map_err(io_err(&to))?;
    tracing::error!(path = %path.display(), moved_to = %to.display(), "not a store file; set aside");
    corrupt.push(to);
    Ok(None)
}

/// The single writer: gathers queued operations into one write and one fsync.
struct Writer {
    dir: PathBuf,
    index: Arc<Mutex<Index>>,
    stored: Arc<AtomicU64>,
    queued: Arc<AtomicUsize>,
    next_seq: Arc<AtomicU64>,
    metrics: Metrics,
    active: u64,
    active_file: Arc<File>,
    active_len: u64,
    segment_bytes: u64,
    /// Length of the active file: zeros from `active_len` to here (see `zero_ahead`).
    allocated: u64,
    lists: Lists,
    buf: Vec<u8>,
    zeros: Vec<u8>,
    wake: std_mpsc::Sender<()>,
    /// Written but not yet fsync'd (finish frames only; see `commit`).
    dirty: bool,
    /// Set when a failed write could not be undone: the log's end is then unknown, so
    /// nothing more is appended (accepts answer 503) until a restart replays it.
    broken: Option<String>,
}

/// Batches stop gathering past this many bytes (keeps offsets and memory bounded).
const MAX_BATCH_BYTES: usize = 8 << 20;
/// Finish frames written without an fsync get one at the latest after this.
const LAZY_SYNC: Duration = Duration::from_millis(200);

type Accepted = (u64, u64, u32, u64, Vec<String>, oneshot::Sender<Result<Vec<Delivery>, StoreError>>);

impl Writer {
    fn run(mut self, rx: std_mpsc::Receiver<Op>) {
        loop {
            let wait = if self.dirty { LAZY_SYNC } else { Duration::from_secs(3600) };
            let first = match rx.recv_timeout(wait) {
                Ok(op) => op,
                Err(std_mpsc::RecvTimeoutError::Timeout) => {
                    self.sync_lazy();
                    continue;
                }
                Err(std_mpsc::RecvTimeoutError::Disconnected) => {
                    self.sync_lazy();
                    return;
                }
            };
            // Whatever arrived while the previous commit was syncing goes into this one.
            // (Waiting a moment for more was measured: 8x fewer commits under full load
            // but no CPU gained, and +1.4 ms p50 at 4,000/s; BENCHMARKS.md.)
            let mut bytes = 0;
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH && bytes < MAX_BATCH_BYTES {
                let Ok(next) = rx.try_recv() else { break };
                if let Op::Accept { frame, .. } = &next {
                    bytes += frame.len();
                }
                batch.push(next);
            }
            if self.commit(batch) {
                return;
            }
        }
    }

    fn sync_lazy(&mut self) {
        if self.dirty {
            match self.active_file.sync_data() {
                Ok(()) => self.dirty = false,
                Err(e) => tracing::warn!(error = %e, "store sync failed; retried"),
            }
        }
    }

    /// Returns true when a close was requested.
    fn commit(&mut self, batch: Vec<Op>) -> bool {
        let started = Instant::now();
        let size = batch.len();
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        let base = self.active_len;
        let mut accepted: Vec<Accepted> = Vec::new();
        let mut keys_only = Vec::new();
        let mut carried = Vec::new();
        let mut compacted = Vec::new();
        let mut flushes = Vec::new();
        let mut closing = false;
        let mut keys_until = 0;
        let index_lock = self.index.clone();
        {
            let mut index = lock(&index_lock);
            for op in batch {
                match op {
                    Op::Accept { seq, frame, accepted_at_ms, destinations, key_expires, reply } => {
                        self.queued.fetch_sub(1, Ordering::Relaxed);
                        keys_until = keys_until.max(key_expires.unwrap_or(0));
                        let offset = base + buf.len() as u64;
                        buf.extend_from_slice(&frame);
                        match seq {
                            Some(seq) => {
                                accepted.push((seq, offset, frame.len() as u32, accepted_at_ms, destinations, reply))
                            }
                            None => keys_only.push(reply),
                        }
                    }
                    Op::Finish { destination, seq } => {
                        // Applied now, durable with this write. Should the write fail, the
                        // delivery may be repeated after a restart, never lost.
                        let Some(l) = index.live.get_mut(&seq) else { continue };
                        if !l.finish(&destination) {
                            continue;
                        }
                        let last = l.pending == 0;
                        log::append(&mut buf, &Frame::Finish { seq, destination: &destination });
                        if last {
                            if let Some(old) = index.live.remove(&seq) {
                                index.unplace(&old);
                            }
                        }
                    }
                    Op::Compact { segment, carry, done, last } => {
                        for (seq, mut record) in carry {
                            let Some(l) = index.live.get(&seq).filter(|l| l.segment == segment) else { continue };
                            let waiting: Vec<&Arc<str>> = l.waiting().collect();
                            record::keep_only_pending(&mut record, &waiting);
                            let offset = base + buf.len() as u64;
                            let size = log::append(&mut buf, &Frame::Accept { seq, key: None, record: &record });
                            carried.push((seq, offset, size));
                        }
                        compacted.push((last.then_some(segment), done));
                    }
                    Op::Flush { reply, close } => {
                        closing |= close;
                        flushes.push(reply);
                    }
                }
            }
        }

        // Only an answer waits on this write: accepts, flushes and compaction (which
        // deletes a segment after it). Finish frames alone are written but not synced:
        // a kill -9 keeps them (the kernel has them), and on a power loss the worst case
        // is a repeated post, never a lost one. They reach the disk with the next sync.
        let sync = !accepted.is_empty() || !keys_only.is_empty() || !compacted.is_empty() || !flushes.is_empty();
        match self.write(&buf, base, sync) {
            Ok(()) => {
                self.active_len += buf.len() as u64;
                let active = self.active;
                let mut removed = Vec::new();
                let mut replies = Vec::with_capacity(accepted.len());
                {
                    let mut index = lock(&index_lock);
                    if let Some(s) = index.segments.get_mut(&active) {
                        s.bytes = self.active_len;
                        s.keys_until = s.keys_until.max(keys_until);
                    }
                    for (seq, offset, size) in carried {
                        let Some(old) = index.live.get(&seq) else { continue };
                        let moved = Live {
                            segment: active,
                            offset: offset as u32,
                            size,
                            accepted_at_ms: old.accepted_at_ms,
                            dests: old.dests.clone(),
                            pending: old.pending,
                        };
                        index.place(seq, moved);
                    }
                    for (seq, offset, size, accepted_at_ms, destinations, reply) in accepted {
                        let dests = self.lists.get(&destinations);
                        let pending = u32::MAX >> (32 - destinations.len());
                        let offset = offset as u32;
                        index.place(seq, Live { segment: active, offset, size, accepted_at_ms, dests, pending });
                        let deliveries = destinations
                            .into_iter()
                            .map(|destination| Delivery { destination, seq, accepted_at_ms, prepared: None })
                            .collect();
                        replies.push((reply, deliveries));
                    }
                    for (segment, done) in compacted {
                        if let Some(s) = segment.and_then(|segment| index.segments.remove(&segment)) {
                            removed.push(s.path);
                        }
                        let _ = done.send(());
                    }
                    let stored = index.live.len() as u64;
                    self.stored.store(stored, Ordering::Relaxed);
                    self.metrics.stored_messages.set(stored as i64);
                    self.metrics.store_disk_bytes.set(index.disk_bytes() as i64);
                }
                for (reply, deliveries) in replies {
                    let _ = reply.send(Ok(deliveries));
                }
                for reply in keys_only {
                    let _ = reply.send(Ok(Vec::new()));
                }
                self.remove(&removed);
                if self.active_len >= self.segment_bytes {
                    self.rotate();
                } else {
                    self.zero_ahead();
                }
            }
            Err(e) => {
                self.metrics.store_errors.inc();
                tracing::error!(error = %e, "store write failed; accepts in this batch answered 503");
                for (.., reply) in accepted {
                    let _ = reply.send(Err(StoreError::Io(e.clone())));
                }
                for reply in keys_only {
                    let _ = reply.send(Err(StoreError::Io(e.clone())));
                }
                // Dropping `compacted` tells the compactor; it tries again later.
            }
        }
        for f in flushes {
            let _ = f.send(());
        }
        self.metrics.store_batch_size.observe(size as f64);
        self.metrics.store_commit_seconds.observe(started.elapsed().as_secs_f64());
        // Keep the buffer for the next batch unless one huge batch inflated it.
        if buf.capacity() <= 1 << 20 {
            self.buf = buf;
        }
        closing
    }

    fn write(&mut self, buf: &[u8], base: u64, sync: bool) -> Result<(), String> {
        if let Some(why) = &self.broken {
            return Err(why.clone());
        }
        if !buf.is_empty() {
            if let Err(e) = self.active_file.write_all_at(buf, base) {
                // Zero whatever part of the batch reached the file, so the log still ends
                // at `base`; if even that fails, stop writing.
                let zeros = vec![0u8; buf.len()];
                if let Err(cut) = self.active_file.write_all_at(&zeros, base).and_then(|_| self.active_file.sync_data())
                {
                    self.broken =
                        Some(format!("log end unknown after a failed write ({e}) and a failed repair ({cut})"));
                }
                return Err(e.to_string());
            }
            self.dirty = true;
        }
        if sync && self.dirty {
            self.active_file.sync_data().map_err(|e| e.to_string())?;
            self.dirty = false;
        }
        Ok(())
    }

    /// Keeps zeros written ahead of the log's end, so that commits overwrite blocks the
    /// file already has: their `fdatasync` then writes data only, no file metadata (see
    /// `create_log_file`). The zeros reach the disk with the next commit's sync.
    fn zero_ahead(&mut self) {
        let from = self.allocated.max(self.active_len);
        if from - self.active_len >= ZERO_AHEAD / 2 {
            return;
        }
        match self.active_file.write_all_at(&self.zeros, from) {
            Ok(()) => {
                self.allocated = from + ZERO_AHEAD;
                if let Some(s) = lock(&self.index).segments.get_mut(&self.active) {
                    s.allocated = self.allocated;
                }
            }
            // Appending still works, only each sync is slower.
            Err(e) => tracing::warn!(error = %e, "could not extend the log segment"),
        }
    }

    fn remove(&self, paths: &[PathBuf]) {
        for path in paths {
            if let Err(e) = std::fs::remove_file(path) {
                tracing::warn!(path = %path.display(), error = %e, "could not delete a compacted segment");
            }
        }
        // Durable deletion keeps the oldest-first order across a crash (see the module doc).
        if !paths.is_empty() {
            if let Err(e) = sync_dir(&self.dir) {
                tracing::warn!(error = %e, "could not sync the queue directory");
            }
        }
    }

    fn rotate(&mut self) {
        // Everything in the old segment is on disk before anything goes to the new one.
        self.sync_lazy();
        if self.dirty {
            return;
        }
        let id = self.active + 1;
        match new_segment(&self.dir, id, self.next_seq.load(Ordering::Relaxed), ZERO_AHEAD) {
            Ok(segment) => {
                self.active_file = segment.file.clone();
                self.active_len = segment.bytes;
                self.allocated = segment.allocated;
                self.active = id;
                let mut index = lock(&self.index);
                index.segments.insert(id, segment);
                index.active = id;
                drop(index);
                let _ = self.wake.send(());
            }
            // The current segment keeps growing; tried again after the next commit.
            Err(e) => tracing::error!(error = %e, "could not start a new log segment"),
        }
    }
}

/// Reclaims space, oldest segment first (see the module doc).
struct Compactor {
    dir: PathBuf,
    index: Arc<Mutex<Index>>,
    ops: std_mpsc::Sender<Op>,
    keys_files: Vec<KeysFile>,
    stop: Arc<AtomicBool>,
    metrics: Metrics,
    carry_chunk: usize,
}

impl Compactor {
    fn run(mut self, wake: std_mpsc::Receiver<()>) {
        loop {
            if let Err(std_mpsc::RecvTimeoutError::Disconnected) = wake.recv_timeout(COMPACT_EVERY) {
                return;
            }
            if self.stop.load(Ordering::Relaxed) {
                return;
            }
            while !self.stop.load(Ordering::Relaxed) {
                match self.step() {
                    Ok(true) => {}
                    Ok(false) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "compaction failed; tried again later");
                        break;
                    }
                }
            }
            if self.stop.load(Ordering::Relaxed) {
                return;
            }
            self.expire_keys_files();
        }
    }

    /// Reclaims the oldest sealed segment when at most a quarter of it is still pending
    /// (deliveries go in order, so the oldest soon empties: copying its live half forward
    /// would be wasted work), or when three quarters of the whole log is garbage (a
    /// long-pending oldest segment must not pin everything after it). True if it did.
    fn step(&mut self) -> Result<bool, StoreError> {
        let now = crate::dedup::unix_now();
        let (id, path, scan) = {
            let index = lock(&self.index);
            let Some((&id, s)) = index.segments.iter().next() else { return Ok(false) };
            let (live, total) = index.segments.values().fold((0, 0), |(l, t), s| (l + s.live_bytes, t + s.bytes));
            let cheap = s.live_bytes * 4 <= s.bytes;
            let pinned = (total - live) > 3 * live + 4 * s.bytes.max(1);
            if id == index.active || !(cheap || pinned) {
                return Ok(false);
            }
            (id, s.path.clone(), s.live > 0 || s.keys_until > now)
        };
        let mut carried = 0;
        if scan {
            let mut keys = Vec::new();
            let mut carry = Vec::new();
            let mut carry_bytes = 0;
            let mut reader = Reader::open(&path).map_err(io_err(&path))?;
            while let Step::Frame { offset, frame, .. } = reader.next().map_err(io_err(&path))? {
                match frame {
                    Frame::Accept { seq, key, record } => {
                        keys.extend(key.filter(|(_, e)| *e > now));
                        let live = lock(&self.index)
                            .live
                            .get(&seq)
                            .is_some_and(|l| l.segment == id && l.offset as u64 == offset);
                        if live {
                            carry_bytes += record.len();
                            carry.push((seq, record.to_vec()));
                        }
                    }
                    Frame::Key { key, expires_at } if expires_at > now => keys.push((key, expires_at)),
                    _ => {}
                }
                // Carried in pieces, so neither this thread nor the writer holds much of a
                // segment in memory at once.
                if carry_bytes >= self.carry_chunk {
                    carried += carry.len();
                    self.carry(id, std::mem::take(&mut carry), false)?;
                    carry_bytes = 0;
                }
            }
            self.append_keys(&keys)?;
            carried += carry.len();
            self.carry(id, carry, true)?;
        } else {
            self.carry(id, Vec::new(), true)?;
        }
        tracing::debug!(segment = id, carried, "segment compacted");
        self.metrics.store_compactions.inc();
        Ok(true)
    }

    /// Has the writer append these records again (those still pending); with `last`, it
    /// then deletes the segment. Returns once that is on disk.
    fn carry(&self, segment: u64, carry: Vec<(u64, Vec<u8>)>, last: bool) -> Result<(), StoreError> {
        let (done, finished) = std_mpsc::channel();
        self.ops.send(Op::Compact { segment, carry, done, last }).map_err(|_| StoreError::Closed)?;
        finished.recv().map_err(|_| StoreError::Io("the commit carrying live messages failed".into()))
    }

    fn append_keys(&mut self, keys: &[(MessageKey, u64)]) -> Result<(), StoreError> {
        if keys.is_empty() {
            return Ok(());
        }
        if self.keys_files.last().is_none_or(|k| k.bytes >= KEYS_FILE_BYTES) {
            let id = self.keys_files.last().map_or(1, |k| k.id + 1);
            let (_, bytes) = create_log_file(&self.dir, &keys_name(id), 0, 0)?;
            self.keys_files.push(KeysFile { id, path: self.dir.join(keys_name(id)), bytes, until: 0 });
        }
        let kf = self.keys_files.last_mut().expect("just ensured");
        let mut buf = Vec::with_capacity(keys.len() * 33);
        for &(key, expires_at) in keys {
            log::append(&mut buf, &Frame::Key { key, expires_at });
            kf.until = kf.until.max(expires_at);
        }
        let mut file = OpenOptions::new().append(true).open(&kf.path).map_err(io_err(&kf.path))?;
        if let Err(e) = file.write_all(&buf).and_then(|_| file.sync_data()) {
            let _ = file.set_len(kf.bytes);
            return Err(io_err(&kf.path)(e));
        }
        kf.bytes += buf.len() as u64;
        lock(&self.index).keys_bytes += buf.len() as u64;
        Ok(())
    }

    fn expire_keys_files(&mut self) {
        let now = crate::dedup::unix_now();
        let mut freed = 0;
        self.keys_files.retain(|k| {
            if k.until > now {
                return true;
            }
            match std::fs::remove_file(&k.path) {
                Ok(()) => {
                    freed += k.bytes;
                    false
                }
                Err(e) => {
                    tracing::warn!(path = %k.path.display(), error = %e, "could not delete an expired keys file");
                    true
                }
            }
        });
        if freed > 0 {
            lock(&self.index).keys_bytes -= freed;
        }
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
            fallback_from: None,
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

    fn files(dir: &Path, suffix: &str) -> usize {
        std::fs::read_dir(dir.join(QUEUE_DIR))
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(suffix))
            .count()
    }

    #[tokio::test]
    async fn compaction_carries_pending_messages_and_remembered_ids_forward() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Metrics::new();
        let (store, _) = Store::open_with(dir.path(), 1000, metrics.clone(), 1024).unwrap();
        let mut seqs = Vec::new();
        for i in 0..60 {
            let id = format!("c{i}");
            let key = (MessageKey::of(&id), u64::MAX);
            let d = store.accept(&envelope(&id), vec!["a".into(), "b".into()], Some(key)).await.unwrap();
            seqs.push(d[0].seq);
        }
        // Unrouted: only the id is recorded.
        store.accept(&envelope("unrouted"), vec![], Some((MessageKey::of("unrouted"), u64::MAX))).await.unwrap();
        // Everything done except: seqs[3] waits for both, seqs[10] for "b" only.
        for (i, seq) in seqs.iter().enumerate() {
            if i != 3 {
                store.finish("a", *seq).await;
            }
            if i != 3 && i != 10 {
                store.finish("b", *seq).await;
            }
        }
        store.flush().await;
        let created = lock(&store.inner.index).active;
        assert!(created > 10, "test needs many segments, got {created}");
        let deadline = Instant::now() + Duration::from_secs(10);
        while files(dir.path(), ".seg") > 2 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(files(dir.path(), ".seg") <= 2, "segments not reclaimed: {} left", files(dir.path(), ".seg"));
        assert!(metrics.store_compactions.get() >= 10);
        assert_eq!(files(dir.path(), ".log"), 1, "remembered ids were not carried into a keys file");
        // Carried records are readable where they now are.
        assert_eq!(store.load(seqs[3]).unwrap().unwrap().envelope.message_id, "c3");
        assert_eq!(store.load(seqs[10]).unwrap().unwrap().envelope.message_id, "c10");
        assert!(store.load(seqs[4]).unwrap().is_none());
        store.close().await;
        drop(store);

        let (store, rec) = Store::open_with(dir.path(), 1000, Metrics::new(), 1024).unwrap();
        let mut pending: Vec<(u64, String)> = rec.pending.iter().map(|p| (p.seq, p.destination.clone())).collect();
        pending.sort();
        let mut want = vec![(seqs[3], "a".to_string()), (seqs[3], "b".to_string()), (seqs[10], "b".to_string())];
        want.sort();
        assert_eq!(pending, want);
        let keys: std::collections::HashSet<MessageKey> = rec.dedup.iter().map(|(k, _)| *k).collect();
        for i in 0..60 {
            assert!(keys.contains(&MessageKey::of(&format!("c{i}"))), "id c{i} forgotten");
        }
        assert!(keys.contains(&MessageKey::of("unrouted")));
        // New seqs never reuse old ones (dead letter ids are built from them).
        let d = store.accept(&envelope("new"), vec!["a".into()], None).await.unwrap();
        assert!(d[0].seq > *seqs.last().unwrap());
        store.close().await;
    }

    #[tokio::test]
    async fn expired_ids_are_not_kept_and_a_second_opener_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open_with(dir.path(), 1000, Metrics::new(), 1024).unwrap();
        assert!(
            matches!(Store::open(dir.path(), 1000, Metrics::new()), Err(StoreError::Io(e)) if e.contains("in use"))
        );
        for i in 0..30 {
            let id = format!("e{i}");
            let d = store.accept(&envelope(&id), vec!["a".into()], Some((MessageKey::of(&id), 1))).await.unwrap();
            store.finish("a", d[0].seq).await;
        }
        store.flush().await;
        let deadline = Instant::now() + Duration::from_secs(10);
        while files(dir.path(), ".seg") > 2 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(files(dir.path(), ".seg") <= 2);
        assert_eq!(files(dir.path(), ".log"), 0, "expired ids need no keys file");
        store.close().await;
        drop(store);
        let (store, rec) = Store::open(dir.path(), 1000, Metrics::new()).unwrap();
        assert!(rec.pending.is_empty() && rec.dedup.is_empty());
        store.close().await;
    }

    #[tokio::test]
    async fn damage_is_cut_off_and_the_part_before_it_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path(), 1000, Metrics::new()).unwrap();
        let mut seqs = Vec::new();
        for i in 0..10 {
            seqs.push(store.accept(&envelope(&format!("d{i}")), vec!["a".into()], None).await.unwrap()[0].seq);
        }
        store.close().await;
        drop(store);
        let seg = dir.path().join(QUEUE_DIR).join(segment_name(1));
        let mut bytes = std::fs::read(&seg).unwrap();
        // Flip a byte in the 8th message's record: messages 0..7 survive.
        let (at, _) = {
            let (store, _) = Store::open(dir.path(), 1000, Metrics::new()).unwrap();
            let index = lock(&store.inner.index);
            let l = &index.live[&seqs[7]];
            (l.offset as usize + 20, store.inner.stop.load(Ordering::Relaxed))
        };
        bytes[at] ^= 1;
        std::fs::write(&seg, &bytes).unwrap();
        let (store, rec) = Store::open(dir.path(), 1000, Metrics::new()).unwrap();
        let got: Vec<u64> = rec.pending.iter().map(|p| p.seq).collect();
        assert_eq!(got, seqs[..7].to_vec());
        assert_eq!(rec.corrupt.len(), 1);
        assert!(std::fs::metadata(&rec.corrupt[0]).unwrap().len() == bytes.len() as u64, "copy is the whole file");
        // Appends continue after the cut.
        let d = store.accept(&envelope("after"), vec!["a".into()], None).await.unwrap();
        store.close().await;
        drop(store);
        let (store, rec) = Store::open(dir.path(), 1000, Metrics::new()).unwrap();
        assert_eq!(rec.pending.last().unwrap().seq, d[0].seq);
        assert!(rec.corrupt.is_empty());
        assert_eq!(store.load(d[0].seq).unwrap().unwrap().envelope.message_id, "after");
        store.close().await;
    }

    #[tokio::test]
    async fn a_message_for_more_destinations_than_a_record_holds_is_split_and_each_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path(), 1000, Metrics::new()).unwrap();
        let names: Vec<String> = (0..70).map(|i| format!("d{i}")).collect();
        let d = store.accept(&envelope("wide"), names.clone(), Some((MessageKey::of("wide"), u64::MAX))).await.unwrap();
        assert_eq!(d.iter().map(|d| d.destination.clone()).collect::<Vec<_>>(), names);
        let seqs: std::collections::BTreeSet<u64> = d.iter().map(|d| d.seq).collect();
        assert_eq!(seqs.len(), 3, "70 destinations need three records of at most 32");
        store.finish("d40", d[40].seq).await;
        store.close().await;
        drop(store);
        let (store, rec) = Store::open(dir.path(), 1000, Metrics::new()).unwrap();
        let mut pending: Vec<String> = rec.pending.iter().map(|p| p.destination.clone()).collect();
        pending.sort();
        let mut want: Vec<String> = names.into_iter().filter(|n| n != "d40").collect();
        want.sort();
        assert_eq!(pending, want);
        assert_eq!(rec.dedup.len(), 1, "the MessageId is recorded once");
        store.close().await;
    }

    #[tokio::test]
    async fn a_long_pending_oldest_segment_does_not_pin_the_garbage_behind_it() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open_with(dir.path(), 1000, Metrics::new(), 1024).unwrap();
        let mut stuck = Vec::new();
        for i in 0..8 {
            stuck.push(store.accept(&envelope(&format!("s{i}")), vec!["down".into()], None).await.unwrap()[0].seq);
        }
        for i in 0..200 {
            let d = store.accept(&envelope(&format!("g{i}")), vec!["up".into()], None).await.unwrap();
            store.finish("up", d[0].seq).await;
        }
        store.flush().await;
        // The bound: garbage at most three times what is pending, plus four segments.
        let deadline = Instant::now() + Duration::from_secs(10);
        while files(dir.path(), ".seg") > 12 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(files(dir.path(), ".seg") <= 12, "{} segments left", files(dir.path(), ".seg"));
        store.close().await;
        drop(store);
        let (store, rec) = Store::open(dir.path(), 1000, Metrics::new()).unwrap();
        assert_eq!(rec.pending.iter().map(|p| p.seq).collect::<Vec<_>>(), stuck);
        assert_eq!(store.load(stuck[7]).unwrap().unwrap().envelope.message_id, "s7");
        store.close().await;
    }
}
