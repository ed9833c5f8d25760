//! The compactor thread: reclaims space oldest segment first (see the module doc of
//! `store`), carrying still-pending records forward through the writer and unexpired
//! MessageIds into keys files.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};

use super::files::{create_log_file, keys_name, KeysFile};
use super::index::{lock, Index};
use super::log::{self, Frame, Reader, Step};
use super::writer::Op;
use super::{io_err, COMPACT_EVERY, KEYS_FILE_BYTES, RESERVE_BYTES};
use crate::dedup::MessageKey;
use crate::metrics::Metrics;
use crate::queue::QueueError;

/// Reclaims space, oldest segment first (see the module doc).
pub(super) struct Compactor {
    pub(super) dir: PathBuf,
    pub(super) index: Arc<Mutex<Index>>,
    pub(super) ops: std_mpsc::Sender<Op>,
    pub(super) keys_files: Vec<KeysFile>,
    pub(super) stop: Arc<AtomicBool>,
    pub(super) metrics: Metrics,
    pub(super) carry_chunk: usize,
    /// Spent when a full disk would keep a segment from being reclaimed.
    pub(super) reserve: PathBuf,
}

impl Compactor {
    pub(super) fn run(mut self, wake: std_mpsc::Receiver<()>) {
        // Off the start-up path: the writer is already serving.
        self.ensure_reserve();
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
            self.ensure_reserve();
        }
    }

    /// Reclaims the oldest sealed segment when at most a quarter of it is still pending
    /// (deliveries go in order, so the oldest soon empties: copying its live half forward
    /// would be wasted work), or when three quarters of the whole log is garbage (a
    /// long-pending oldest segment must not pin everything after it). True if it did.
    pub(super) fn step(&mut self) -> Result<bool, QueueError> {
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
    pub(super) fn carry(&self, segment: u64, carry: Vec<(u64, Vec<u8>)>, last: bool) -> Result<(), QueueError> {
        let (done, finished) = std_mpsc::channel();
        self.ops.send(Op::Compact { segment, carry, done, last }).map_err(|_| QueueError::Closed)?;
        finished.recv().map_err(|_| {
            QueueError::io("compaction", std::io::Error::other("the commit carrying live messages failed"))
        })
    }

    /// Writes unexpired MessageIds to a keys file. On a full disk it spends the reserve
    /// file: reclaiming a segment must never need space the full disk does not have, or
    /// a disk filled by the log during a Slack outage would stay full after the drain.
    pub(super) fn append_keys(&mut self, keys: &[(MessageKey, u64)]) -> Result<(), QueueError> {
        match self.append_keys_once(keys) {
            Err(QueueError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::StorageFull && self.reserve.exists() =>
            {
                tracing::warn!("disk full while compacting: spending the reserve file to reclaim space");
                std::fs::remove_file(&self.reserve).map_err(io_err(&self.reserve))?;
                self.append_keys_once(keys)
            }
            other => other,
        }
    }

    /// Keeps `queue/reserve` (zeros) in place, recreated once there is room again.
    pub(super) fn ensure_reserve(&self) {
        if self.reserve.exists() {
            return;
        }
        let made = std::fs::File::create(&self.reserve).and_then(|f| {
            use std::os::unix::fs::FileExt;
            let zeros = vec![0u8; 1 << 20];
            for i in 0..(RESERVE_BYTES >> 20) {
                f.write_all_at(&zeros, i << 20)?;
            }
            f.sync_all()
        });
        if made.is_err() {
            // No room yet: tried again on the next round.
            let _ = std::fs::remove_file(&self.reserve);
        }
    }

    fn append_keys_once(&mut self, keys: &[(MessageKey, u64)]) -> Result<(), QueueError> {
        if keys.is_empty() {
            return Ok(());
        }
        if self.keys_files.last().is_none_or(|k| k.bytes >= KEYS_FILE_BYTES) {
            let id = self.keys_files.last().map_or(1, |k| k.id + 1);
            let (_, bytes) = create_log_file(&self.dir, &keys_name(id), 0, 0, 0)?;
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

    pub(super) fn expire_keys_files(&mut self) {
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
