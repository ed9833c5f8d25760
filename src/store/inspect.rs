//! A read-only look inside the local log for `webhook-relay queue stats|list|show`: it
//! takes no lock and changes no file, so it works while the gateway runs (a frame being
//! written at that moment reads as the end of the log) and on a stopped one's directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::log::{Frame, Reader, Step};
use super::{record, QUEUE_DIR};
use crate::queue::{QueueError, StoredMessage};

/// A message still waiting for at least one destination.
#[derive(Debug, Clone)]
pub struct Pending {
    pub seq: u64,
    pub accepted_at_ms: u64,
    /// Destinations and whether each is done.
    pub destinations: Vec<(String, bool)>,
    pub segment: PathBuf,
    pub offset: u64,
    pub size: u32,
}

/// What the log holds now.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub segments: usize,
    pub bytes_on_disk: u64,
    pub pending: Vec<Pending>,
    /// Files that stopped reading early: path, offset and why.
    pub damage: Vec<(PathBuf, u64, String)>,
}

/// Reads every segment in order and replays accepts and finishes in memory.
pub fn snapshot(data_dir: &Path) -> Result<Snapshot, QueueError> {
    let qdir = data_dir.join(QUEUE_DIR);
    let mut ids: Vec<u64> = std::fs::read_dir(&qdir)
        .map_err(|e| QueueError::io(qdir.display().to_string(), e))?
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().strip_suffix(".seg").and_then(|n| n.parse().ok()))
        .collect();
    ids.sort_unstable();
    let mut snap = Snapshot { segments: ids.len(), ..Snapshot::default() };
    let mut live: BTreeMap<u64, Pending> = BTreeMap::new();
    for entry in std::fs::read_dir(&qdir).into_iter().flatten().flatten() {
        snap.bytes_on_disk += entry.metadata().map(|m| m.len()).unwrap_or(0);
    }
    for id in ids {
        let path = qdir.join(format!("{id:020}.seg"));
        let mut reader = Reader::open(&path).map_err(|e| QueueError::io(path.display().to_string(), e))?;
        loop {
            match reader.next().map_err(|e| QueueError::io(path.display().to_string(), e))? {
                Step::Frame { offset, size, frame } => match frame {
                    Frame::Accept { seq, record, .. } => {
                        let Some(rec) = record::decode(record) else { continue };
                        let destinations: Vec<(String, bool)> =
                            rec.destinations.iter().map(|(d, done)| (d.to_string(), *done)).collect();
                        if destinations.iter().all(|(_, done)| *done) {
                            live.remove(&seq);
                        } else {
                            let p = Pending {
                                seq,
                                accepted_at_ms: rec.accepted_at_ms,
                                destinations,
                                segment: path.clone(),
                                offset,
                                size,
                            };
                            live.insert(seq, p);
                        }
                    }
                    Frame::Finish { seq, destination } => {
                        if let Some(p) = live.get_mut(&seq) {
                            if let Some(d) = p.destinations.iter_mut().find(|(n, done)| n == destination && !done) {
                                d.1 = true;
                            }
                            if p.destinations.iter().all(|(_, done)| *done) {
                                live.remove(&seq);
                            }
                        }
                    }
                    _ => {}
                },
                Step::End => break,
                Step::Damaged { offset, why } => {
                    snap.damage.push((path.clone(), offset, why.to_string()));
                    let highest = live.keys().next_back().copied().unwrap_or(0);
                    // Read-only: pass over the damage to what follows, as recovery would.
                    if reader
                        .resync(offset, highest)
                        .map_err(|e| QueueError::io(path.display().to_string(), e))?
                        .is_none()
                    {
                        break;
                    }
                }
            }
        }
    }
    snap.pending = live.into_values().collect();
    Ok(snap)
}

/// One pending message, whole.
pub fn load(p: &Pending) -> Result<StoredMessage, QueueError> {
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::open(&p.segment).map_err(|e| QueueError::io(p.segment.display().to_string(), e))?;
    let mut buf = vec![0; p.size as usize];
    file.read_exact_at(&mut buf, p.offset).map_err(|e| QueueError::io(p.segment.display().to_string(), e))?;
    let Some(Frame::Accept { record, .. }) = super::log::check(&buf).and_then(super::log::decode) else {
        return Err(QueueError::Damaged(p.seq));
    };
    let rec = record::decode(record).ok_or(QueueError::Damaged(p.seq))?;
    Ok(serde_json::from_slice(rec.json)?)
}
