//! The single writer thread: gathers whatever operations are waiting into one write and
//! one `fdatasync` (group commit), applies them to the index, and answers the callers.

use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::files::{new_segment, sync_dir, LogIo};
use super::index::{lock, Index, Lists, Live};
use super::log::{self, Frame};
use super::{record, MAX_BATCH, ZERO_AHEAD};
use crate::metrics::Metrics;
use crate::queue::{Delivery, QueueError};

/// What the writer is asked to do.
pub(super) enum Op {
    Accept {
        /// Set for a routed message; None when only the MessageId is recorded.
        seq: Option<u64>,
        /// The frame, built by the caller so the single writer thread only writes.
        frame: Vec<u8>,
        accepted_at_ms: u64,
        destinations: Vec<String>,
        key_expires: Option<u64>,
        reply: oneshot::Sender<Result<Vec<Delivery>, QueueError>>,
    },
    /// A delivery is done (sent, or dead-lettered and written to its file).
    Finish { destination: Arc<str>, seq: u64 },
    /// From the compactor: append these records again (those still live), then delete the
    /// segment. Its MessageIds are already in a keys file.
    Compact { segment: u64, carry: Vec<(u64, Vec<u8>)>, done: std_mpsc::Sender<()>, last: bool },
    /// Answered once everything queued before it is committed; with `close`, the writer
    /// then stops.
    Flush { reply: oneshot::Sender<()>, close: bool },
}

/// The single writer: gathers queued operations into one write and one fsync.
pub(super) struct Writer {
    pub(super) dir: PathBuf,
    pub(super) index: Arc<Mutex<Index>>,
    pub(super) stored: Arc<AtomicU64>,
    pub(super) queued: Arc<AtomicUsize>,
    pub(super) next_seq: Arc<AtomicU64>,
    pub(super) metrics: Metrics,
    pub(super) active: u64,
    pub(super) active_file: Arc<File>,
    /// Where appends and syncs go (the seam tests inject faults at).
    pub(super) io: Arc<dyn LogIo>,
    pub(super) active_len: u64,
    pub(super) segment_bytes: u64,
    /// Length of the active file: zeros from `active_len` to here (see `zero_ahead`).
    pub(super) allocated: u64,
    pub(super) lists: Lists,
    pub(super) buf: Vec<u8>,
    pub(super) zeros: Vec<u8>,
    pub(super) wake: std_mpsc::Sender<()>,
    /// Written but not yet fsync'd (finish frames only; see `commit`).
    pub(super) dirty: bool,
    /// Set when a failed write could not be undone: the log's end is then unknown, so
    /// nothing more is appended (accepts answer 503) until a later commit's retry of the
    /// undo succeeds.
    pub(super) broken: Option<Broken>,
    /// False while the log cannot be written (readiness follows it).
    pub(super) writable: Arc<AtomicBool>,
    /// Failed commits not yet logged (errors are logged at most once a second).
    pub(super) unlogged_errors: u64,
    /// Bytes of the last batch that failed: what a probe must be able to write.
    pub(super) failed_len: usize,
    pub(super) last_error_log: Option<Instant>,
    /// The vectors a commit fills, kept from one commit to the next (a commit is made
    /// thousands of times a second under load).
    pub(super) spare: Spare,
}

#[derive(Default)]
pub(super) struct Spare {
    accepted: Vec<Accepted>,
    replies: Vec<(Reply, Vec<Delivery>)>,
}

/// Batches stop gathering past this many bytes (keeps offsets and memory bounded).
pub(super) const MAX_BATCH_BYTES: usize = 8 << 20;
/// Finish frames written without an fsync get one at the latest after this.
pub(super) const LAZY_SYNC: Duration = Duration::from_millis(200);
/// How often a writer that cannot write checks whether it can again.
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// Bytes of a failed batch that may have reached the file and could not be zeroed: the
/// log's end is uncertain until they are. Each commit tries again first; nothing is
/// appended before that succeeds.
pub(super) struct Broken {
    base: u64,
    len: usize,
    error: QueueError,
}

/// An accept written in this batch, waiting for the sync before it is answered.
struct Accepted {
    seq: u64,
    /// Where its frame starts in the active segment, and its length.
    offset: u64,
    size: u32,
    accepted_at_ms: u64,
    destinations: Vec<String>,
    reply: Reply,
}

/// Where an accept's answer goes.
type Reply = oneshot::Sender<Result<Vec<Delivery>, QueueError>>;

impl Writer {
    pub(super) fn run(mut self, rx: std_mpsc::Receiver<Op>) {
        let mut batch = Vec::new();
        loop {
            let wait = if !self.writable.load(Ordering::Relaxed) {
                PROBE_EVERY
            } else if self.dirty {
                LAZY_SYNC
            } else {
                Duration::from_secs(3600)
            };
            let first = match rx.recv_timeout(wait) {
                Ok(op) => op,
                Err(std_mpsc::RecvTimeoutError::Timeout) => {
                    self.sync_lazy();
                    if !self.writable.load(Ordering::Relaxed) {
                        self.probe();
                    }
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
            batch.push(first);
            while batch.len() < MAX_BATCH && bytes < MAX_BATCH_BYTES {
                let Ok(next) = rx.try_recv() else { break };
                if let Op::Accept { frame, .. } = &next {
                    bytes += frame.len();
                }
                batch.push(next);
            }
            if self.commit(&mut batch) {
                return;
            }
        }
    }

    /// While writes fail, checks now and then whether they would work again, without
    /// waiting for traffic: a pod that is not ready gets none, so readiness must come back
    /// by itself. Writes zeros (the log's end marker) where the next append would go, as
    /// much as the failed batch needed, and syncs.
    fn probe(&mut self) {
        let len = self.failed_len.max(4096);
        let zeros = vec![0u8; len];
        let ok = self.write(&[], self.active_len, false).is_ok()
            && self
                .io
                .write_at(&self.active_file, &zeros, self.active_len)
                .and_then(|_| self.io.sync(&self.active_file))
                .is_ok();
        if ok {
            self.writable.store(true, Ordering::Relaxed);
            tracing::info!("store writes work again");
        }
    }

    pub(super) fn sync_lazy(&mut self) {
        if self.dirty {
            match self.io.sync(&self.active_file) {
                Ok(()) => self.dirty = false,
                Err(e) => tracing::warn!(error = %e, "store sync failed; retried"),
            }
        }
    }

    /// Returns true when a close was requested.
    /// Writes (and syncs) one batch, which it leaves empty.
    pub(super) fn commit(&mut self, batch: &mut Vec<Op>) -> bool {
        let started = Instant::now();
        let size = batch.len();
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        let base = self.active_len;
        let mut accepted = std::mem::take(&mut self.spare.accepted);
        let mut keys_only = Vec::new();
        let mut carried = Vec::new();
        let mut compacted = Vec::new();
        let mut flushes = Vec::new();
        let mut closing = false;
        let mut keys_until = 0;
        let index_lock = self.index.clone();
        {
            let mut index = lock(&index_lock);
            for op in batch.drain(..) {
                match op {
                    Op::Accept { seq, frame, accepted_at_ms, destinations, key_expires, reply } => {
                        self.queued.fetch_sub(1, Ordering::Relaxed);
                        keys_until = keys_until.max(key_expires.unwrap_or(0));
                        let offset = base + buf.len() as u64;
                        buf.extend_from_slice(&frame);
                        match seq {
                            Some(seq) => accepted.push(Accepted {
                                seq,
                                offset,
                                size: frame.len() as u32,
                                accepted_at_ms,
                                destinations,
                                reply,
                            }),
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
                if !self.writable.swap(true, Ordering::Relaxed) {
                    tracing::info!("store writes work again");
                }
                self.active_len += buf.len() as u64;
                let active = self.active;
                let mut removed = Vec::new();
                let mut replies = std::mem::take(&mut self.spare.replies);
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
                    for Accepted { seq, offset, size, accepted_at_ms, destinations, reply } in accepted.drain(..) {
                        let dests = self.lists.get(&destinations);
                        let pending = u32::MAX >> (32 - destinations.len());
                        let offset = offset as u32;
                        // The names are the shared list's: no copy per delivery.
                        let deliveries: Vec<Delivery> = dests
                            .iter()
                            .map(|destination| Delivery {
                                destination: destination.clone(),
                                seq,
                                accepted_at_ms,
                                prepared: None,
                            })
                            .collect();
                        index.place(seq, Live { segment: active, offset, size, accepted_at_ms, dests, pending });
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
                for (reply, deliveries) in replies.drain(..) {
                    let _ = reply.send(Ok(deliveries));
                }
                self.spare.replies = replies;
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
                self.writable.store(false, Ordering::Relaxed);
                self.failed_len = buf.len();
                self.unlogged_errors += 1;
                if self.last_error_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                    tracing::error!(error = %e, failed_commits = self.unlogged_errors, "store write failed; accepts answered 503 until it works again (logged at most once a second)");
                    self.unlogged_errors = 0;
                    self.last_error_log = Some(Instant::now());
                }
                for Accepted { reply, .. } in accepted.drain(..) {
                    let _ = reply.send(Err(e.clone()));
                }
                for reply in keys_only {
                    let _ = reply.send(Err(e.clone()));
                }
                // Dropping `compacted` tells the compactor; it tries again later.
            }
        }
        for f in flushes {
            let _ = f.send(());
        }
        self.spare.accepted = accepted;
        self.metrics.store_batch_size.observe(size as f64);
        self.metrics.store_commit_seconds.observe(started.elapsed().as_secs_f64());
        // Keep the buffer for the next batch unless one huge batch inflated it.
        if buf.capacity() <= 1 << 20 {
            self.buf = buf;
        }
        closing
    }

    /// Writes `buf` at `base` and, with `sync`, makes it durable. On any failure what the
    /// batch may have put in the file is zeroed again, so the log still ends at `base`: after
    /// a failed fsync the data must be taken as not written (the kernel may have dropped the
    /// dirty pages and cleared the error: PostgreSQL's "fsyncgate"). If even the zeroing
    /// fails, the next commits retry it before appending anything.
    pub(super) fn write(&mut self, buf: &[u8], base: u64, sync: bool) -> Result<(), QueueError> {
        if let Some(b) = &self.broken {
            let zeros = vec![0u8; b.len];
            match self.io.write_at(&self.active_file, &zeros, b.base).and_then(|_| self.io.sync(&self.active_file)) {
                Ok(()) => {
                    tracing::info!(offset = b.base, bytes = b.len, "log end re-established after a failed write");
                    self.broken = None;
                }
                Err(_) => return Err(b.error.clone()),
            }
        }
        let written = if buf.is_empty() {
            Ok(())
        } else {
            self.dirty = true;
            self.io.write_at(&self.active_file, buf, base).map_err(|e| QueueError::io("writing the log", e))
        };
        let synced = written.and_then(|()| {
            if sync && self.dirty {
                self.io.sync(&self.active_file).map_err(|e| QueueError::io("syncing the log", e))?;
                self.dirty = false;
            }
            Ok(())
        });
        let Err(e) = synced else { return Ok(()) };
        if !buf.is_empty() {
            let zeros = vec![0u8; buf.len()];
            if self.io.write_at(&self.active_file, &zeros, base).and_then(|_| self.io.sync(&self.active_file)).is_err()
            {
                self.broken = Some(Broken { base, len: buf.len(), error: e.clone() });
            }
        }
        Err(e)
    }

    /// Keeps zeros written ahead of the log's end, so that commits overwrite blocks the
    /// file already has: their `fdatasync` then writes data only, no file metadata (see
    /// `create_log_file`). The zeros reach the disk with the next commit's sync.
    pub(super) fn zero_ahead(&mut self) {
        let from = self.allocated.max(self.active_len);
        if from - self.active_len >= ZERO_AHEAD / 2 {
            return;
        }
        match self.io.write_at(&self.active_file, &self.zeros, from) {
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

    pub(super) fn remove(&self, paths: &[PathBuf]) {
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

    pub(super) fn rotate(&mut self) {
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
