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

/// Damage found at open: never silent (an ERROR log line, a metric, a copy set aside).
#[derive(Debug, Clone)]
pub struct Damage {
    pub file: PathBuf,
    /// `damaged_frame`, `empty_segment`, `missing_segment`, `out_of_sequence`, `not_a_log`:
    /// the label of `webhook_relay_store_damage_total`.
    pub kind: &'static str,
    pub detail: String,
    /// Bytes passed over to reach the next valid frame (damaged frames).
    pub skipped_bytes: u64,
}

/// What the files on disk held.
pub(super) struct Recovery {
    pub(super) index: Index,
    pub(super) keys_files: Vec<KeysFile>,
    pub(super) dedup: Vec<(MessageKey, u64)>,
    pub(super) next_seq: u64,
    pub(super) corrupt: Vec<PathBuf>,
    pub(super) damage: Vec<Damage>,
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
        let mut damage = Vec::new();
        let mut dedup = Vec::new();

        let mut keys_files = Vec::new();
        for id in keys_ids {
            let path = qdir.join(keys_name(id));
            let mut until = 0;
            let read = read_log(data_dir, &path, &mut corrupt, &mut damage, false, |_, _, frame| {
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
        // Compaction deletes oldest first, so the segments on disk are consecutive: a gap
        // is a segment lost from the middle, with whatever it held.
        for pair in segment_ids.windows(2) {
            if pair[1] != pair[0] + 1 {
                let detail = format!("segments {} to {} are missing", pair[0] + 1, pair[1] - 1);
                tracing::error!(dir = %qdir.display(), %detail, "store segments missing: messages they held are lost");
                damage.push(Damage {
                    file: qdir.join(segment_name(pair[0] + 1)),
                    kind: "missing_segment",
                    detail,
                    skipped_bytes: 0,
                });
            }
        }
        let newest = segment_ids.last().copied();
        for id in segment_ids {
            let path = qdir.join(segment_name(id));
            let mut keys_until = 0;
            let live = &mut index.live;
            let highest_before = next_seq;
            let mut header_seq = None;
            let mut header_file = 0;
            let read =
                read_log(data_dir, &path, &mut corrupt, &mut damage, Some(id) != newest, |offset, size, frame| {
                    match frame {
                        Frame::Header { next_seq: n, file } => {
                            header_seq = Some(n);
                            header_file = file;
                            next_seq = next_seq.max(n)
                        }
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
                                tracing::error!(
                                    seq,
                                    segment = id,
                                    "message record damaged behind a valid checksum; skipped"
                                );
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
                        Frame::Pad => {}
                        Frame::Finish { seq, destination } => {
                            if let Some(l) = live.get_mut(&seq) {
                                l.finish(destination);
                                if l.pending == 0 {
                                    live.remove(&seq);
                                }
                            }
                        }
                    }
                })?;
            let mut out_of_sequence = Vec::new();
            if header_file != 0 && header_file != id {
                out_of_sequence
                    .push(format!("its header says segment {header_file}: a file renamed or copied over another"));
            }
            if let Some(n) = header_seq.filter(|n| *n + 1 < highest_before) {
                out_of_sequence
                    .push(format!("starts at seq {n}, but an earlier segment already reached {}", highest_before - 1));
            }
            if !out_of_sequence.is_empty() && read.is_some() {
                // Kept in place (what it holds is readable) and copied aside for a look.
                let to = aside_path(data_dir, &path);
                std::fs::copy(&path, &to).map_err(io_err(&to))?;
                corrupt.push(to);
            }
            for detail in out_of_sequence {
                tracing::error!(path = %path.display(), %detail, "store segment out of sequence (a copy is set aside)");
                damage.push(Damage { file: path.clone(), kind: "out_of_sequence", detail, skipped_bytes: 0 });
            }
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
        Ok(Recovery { index, keys_files, dedup, next_seq, corrupt, damage })
    }
}

/// Feeds every valid frame of a log file to `f` and returns the length of its valid part,
/// or `None` when the file holds nothing (it is then moved aside). Damage is never silent:
/// each finding is logged at ERROR, recorded in `damage`, and the file is copied aside
/// once. After a damaged frame the reader resynchronises on the next valid frame and
/// salvages what follows; only a damaged tail with nothing valid after it is cut off.
/// `sealed`: the file is not the newest segment, so being empty cannot be a crash while it
/// was created.
pub(super) fn read_log(
    data_dir: &Path,
    path: &Path,
    corrupt: &mut Vec<PathBuf>,
    damage: &mut Vec<Damage>,
    sealed: bool,
    mut f: impl FnMut(u64, u32, Frame<'_>),
) -> Result<Option<u64>, QueueError> {
    let aside = || aside_path(data_dir, path);
    // After a resync: which damage record to complete with the messages lost, once the
    // next accept says where the seqs resume.
    let mut resumed: Option<usize> = None;
    let mut reader = Reader::open(path).map_err(io_err(path))?;
    let mut first = true;
    let mut copied = false;
    let mut highest_seq = 0;
    loop {
        match reader.next().map_err(io_err(path))? {
            Step::Frame { offset, size, frame } => {
                if first && !matches!(frame, Frame::Header { .. }) {
                    break;
                }
                first = false;
                if let Frame::Accept { seq, .. } = frame {
                    if let Some(i) = resumed.take() {
                        let lost = seq.saturating_sub(highest_seq + 1);
                        if lost > 0 {
                            let note =
                                format!("; {lost} message(s) lost with it (seqs {}..={})", highest_seq + 1, seq - 1);
                            tracing::error!(path = %path.display(), lost, "messages lost in the damaged part of the store");
                            damage[i].detail.push_str(&note);
                        }
                    }
                    highest_seq = highest_seq.max(seq);
                }
                f(offset, size, frame);
            }
            Step::End if first => {
                let to = aside();
                std::fs::rename(path, &to).map_err(io_err(&to))?;
                if sealed {
                    // Truncated to nothing (a crash after O_TRUNC, a journal replay): what
                    // it held is gone, and that must be said.
                    let detail = "a sealed segment is empty: the messages it held are lost".to_string();
                    tracing::error!(path = %path.display(), moved_to = %to.display(), "{detail}");
                    damage.push(Damage { file: path.to_path_buf(), kind: "empty_segment", detail, skipped_bytes: 0 });
                } else {
                    // The newest file, created but never written: a crash inside
                    // `create_log_file`. Nothing was accepted into it.
                    tracing::warn!(path = %path.display(), moved_to = %to.display(), "newest store file is empty (a crash while creating it); set aside");
                }
                corrupt.push(to);
                return Ok(None);
            }
            Step::End => return Ok(Some(reader.offset())),
            Step::Damaged { .. } if first => break,
            Step::Damaged { offset, why } => {
                if !copied {
                    let to = aside();
                    std::fs::copy(path, &to).map_err(io_err(&to))?;
                    corrupt.push(to);
                    copied = true;
                }
                match reader.resync(offset, highest_seq).map_err(io_err(path))? {
                    Some(next) => {
                        // Cover the damage with a pad frame: the next open then reads the
                        // file cleanly instead of reporting (and copying) it again.
                        if let Some(pad) = super::log::pad((next - offset) as usize) {
                            use std::os::unix::fs::FileExt;
                            let file = OpenOptions::new().write(true).open(path).map_err(io_err(path))?;
                            file.write_all_at(&pad, offset).and_then(|_| file.sync_data()).map_err(io_err(path))?;
                        }
                        let detail =
                            format!("{why} at byte {offset}; skipped {} bytes to the next valid frame", next - offset);
                        tracing::error!(path = %path.display(), %detail, "damaged store file: salvaging what follows the damage (a copy is set aside)");
                        resumed = Some(damage.len());
                        damage.push(Damage {
                            file: path.to_path_buf(),
                            kind: "damaged_frame",
                            detail,
                            skipped_bytes: next - offset,
                        });
                    }
                    None => {
                        let file = OpenOptions::new().write(true).open(path).map_err(io_err(path))?;
                        file.set_len(offset).and_then(|_| file.sync_all()).map_err(io_err(path))?;
                        let detail = format!("{why} at byte {offset}, nothing valid after it: cut there");
                        tracing::error!(path = %path.display(), %detail, "damaged store file tail (a copy is set aside)");
                        damage.push(Damage {
                            file: path.to_path_buf(),
                            kind: "damaged_frame",
                            detail,
                            skipped_bytes: 0,
                        });
                        return Ok(Some(offset));
                    }
                }
            }
        }
    }
    let to = aside();
    std::fs::rename(path, &to).map_err(io_err(&to))?;
    tracing::error!(path = %path.display(), moved_to = %to.display(), "not a store file; set aside");
    damage.push(Damage {
        file: path.to_path_buf(),
        kind: "not_a_log",
        detail: "no header frame".into(),
        skipped_bytes: 0,
    });
    corrupt.push(to);
    Ok(None)
}

fn aside_path(data_dir: &Path, path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    data_dir.join(format!("{name}.corrupt-{}", crate::dedup::unix_now()))
}
