//! Recovery at open: reads every segment and keys file back into the index, remembers the
//! MessageIds still within their lifetime, and sets damaged files aside (what precedes the
//! damage is kept). Not to be confused with a dead letter replay.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::files::{keys_name, segment_name, KeysFile};
use super::index::{Index, Lists, Live, Segment, MAX_DESTINATIONS};
use super::log::{Frame, Reader, Step};
use super::{io_err, record};
use crate::dedup::MessageKey;
use crate::queue::QueueError;

/// What the files on disk held.
pub(super) struct Recovery {
    pub(super) index: Index,
    pub(super) keys_files: Vec<KeysFile>,
    pub(super) dedup: Vec<(MessageKey, u64)>,
    pub(super) next_seq: u64,
    pub(super) corrupt: Vec<PathBuf>,
}

impl Recovery {
    pub(super) fn run(data_dir: &Path, qdir: &Path) -> Result<Recovery, QueueError> {
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
        Ok(Recovery { index, keys_files, dedup, next_seq, corrupt })
    }
}

/// Feeds every valid frame of a log file to `f` and returns the length of its valid part,
/// or `None` when the file was not a log file at all (it is then moved aside whole). At
/// the first damaged frame the file is copied aside and cut there: what follows a damaged
/// frame cannot be framed reliably.
pub(super) fn read_log(
    data_dir: &Path,
    path: &Path,
    corrupt: &mut Vec<PathBuf>,
    mut f: impl FnMut(u64, u32, Frame<'_>),
) -> Result<Option<u64>, QueueError> {
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
