//! Frames of the queue's append-only files.
//!
//! Every frame is `len: u32 LE | crc32: u32 LE | payload`, the CRC covering the length and
//! the payload, so a torn or damaged frame is recognised rather than misread. A payload
//! starts with its kind:
//!
//! | kind | payload after the kind byte |
//! |---|---|
//! | header | `MAGIC` (the format and its version), next seq when the file was created (u64), the file's number (u64; 0 for keys files, absent in files from before it was written) — always the first frame |
//! | accept | seq (u64), has-key (u8), [key (u128), expires (u64)], the message record |
//! | key | key (u128), expires (u64): a remembered MessageId |
//! | finish | seq (u64), destination name: that delivery is done |
//! | pad | anything: written over a damaged region once what follows it was salvaged |

use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use crate::dedup::MessageKey;

pub const MAGIC: &[u8; 8] = b"WRQUEUE1";
pub const HEAD: usize = 8;
/// Larger than any message SNS can send (256 KiB) wrapped in its record.
pub const MAX_PAYLOAD: u32 = 4 << 20;

const HEADER: u8 = 0;
const ACCEPT: u8 = 1;
const KEY: u8 = 2;
const FINISH: u8 = 3;
const PAD: u8 = 4;

#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// `file`: the segment's number, checked against its name (0: not recorded).
    Header {
        next_seq: u64,
        file: u64,
    },
    Accept {
        seq: u64,
        key: Option<(MessageKey, u64)>,
        record: &'a [u8],
    },
    Key {
        key: MessageKey,
        expires_at: u64,
    },
    Finish {
        seq: u64,
        destination: &'a str,
    },
    /// Covers a damaged region that recovery passed over, so the next open reads cleanly.
    Pad,
}

/// Appends one frame whose payload `body` writes after the kind byte; returns its size.
pub fn append_with(out: &mut Vec<u8>, kind: u8, body: impl FnOnce(&mut Vec<u8>)) -> u32 {
    let start = out.len();
    out.extend_from_slice(&[0; HEAD]);
    out.push(kind);
    body(out);
    let len = (out.len() - start - HEAD) as u32;
    let mut crc = crc32fast::Hasher::new();
    crc.update(&len.to_le_bytes());
    crc.update(&out[start + HEAD..]);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + HEAD].copy_from_slice(&crc.finalize().to_le_bytes());
    len + HEAD as u32
}

fn put_key(out: &mut Vec<u8>, key: MessageKey, expires_at: u64) {
    out.extend_from_slice(&key.0.to_le_bytes());
    out.extend_from_slice(&expires_at.to_le_bytes());
}

/// Appends `frame`; returns its size on disk.
pub fn append(out: &mut Vec<u8>, frame: &Frame<'_>) -> u32 {
    match *frame {
        Frame::Header { next_seq, file } => append_with(out, HEADER, |o| {
            o.extend_from_slice(MAGIC);
            o.extend_from_slice(&next_seq.to_le_bytes());
            o.extend_from_slice(&file.to_le_bytes());
        }),
        Frame::Accept { seq, key, record } => append_accept(out, seq, key, |o| o.extend_from_slice(record)),
        Frame::Key { key, expires_at } => append_with(out, KEY, |o| put_key(o, key, expires_at)),
        Frame::Finish { seq, destination } => append_with(out, FINISH, |o| {
            o.extend_from_slice(&seq.to_le_bytes());
            o.extend_from_slice(destination.as_bytes());
        }),
        Frame::Pad => append_with(out, PAD, |_| {}),
    }
}

/// An accept frame whose record `record` writes in place (no intermediate copy).
pub fn append_accept(
    out: &mut Vec<u8>,
    seq: u64,
    key: Option<(MessageKey, u64)>,
    record: impl FnOnce(&mut Vec<u8>),
) -> u32 {
    append_with(out, ACCEPT, |o| {
        o.extend_from_slice(&seq.to_le_bytes());
        match key {
            Some((k, e)) => {
                o.push(1);
                put_key(o, k, e);
            }
            None => o.push(0),
        }
        record(o);
    })
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

fn key_at(b: &[u8], at: usize) -> Option<(MessageKey, u64)> {
    let k = u128::from_le_bytes(b.get(at..at + 16)?.try_into().ok()?);
    Some((MessageKey(k), u64_at(b, at + 16)?))
}

/// Parses a payload whose CRC already matched; `None` for an unknown or malformed one.
pub fn decode(p: &[u8]) -> Option<Frame<'_>> {
    match *p.first()? {
        HEADER => (p.get(1..9)? == MAGIC)
            .then_some(Frame::Header { next_seq: u64_at(p, 9)?, file: u64_at(p, 17).unwrap_or(0) }),
        ACCEPT => {
            let seq = u64_at(p, 1)?;
            let (key, rest) = match *p.get(9)? {
                0 => (None, 10),
                1 => (Some(key_at(p, 10)?), 34),
                _ => return None,
            };
            Some(Frame::Accept { seq, key, record: p.get(rest..)? })
        }
        KEY => key_at(p, 1).map(|(key, expires_at)| Frame::Key { key, expires_at }),
        FINISH => Some(Frame::Finish { seq: u64_at(p, 1)?, destination: std::str::from_utf8(p.get(9..)?).ok()? }),
        PAD => Some(Frame::Pad),
        _ => None,
    }
}

/// Checks one whole frame (head and payload) read back from disk; returns its payload.
pub fn check(frame: &[u8]) -> Option<&[u8]> {
    let len = u32::from_le_bytes(frame.get(..4)?.try_into().ok()?);
    let crc = u32::from_le_bytes(frame.get(4..HEAD)?.try_into().ok()?);
    let payload = frame.get(HEAD..)?;
    (payload.len() == len as usize && crc_of(len, payload) == crc).then_some(payload)
}

fn crc_of(len: u32, payload: &[u8]) -> u32 {
    let mut crc = crc32fast::Hasher::new();
    crc.update(&len.to_le_bytes());
    crc.update(payload);
    crc.finalize()
}

/// What reading the next frame found.
pub enum Step<'a> {
    Frame {
        offset: u64,
        size: u32,
        frame: Frame<'a>,
    },
    /// Clean end of file.
    End,
    /// Nothing from `offset` on can be trusted: a torn write or damage.
    Damaged {
        offset: u64,
        why: &'static str,
    },
}

/// Reads a file's frames in order, streaming (segments are larger than we want in memory).
pub struct Reader {
    file: BufReader<File>,
    offset: u64,
    payload: Vec<u8>,
}

impl Reader {
    pub fn open(path: &Path) -> io::Result<Reader> {
        Ok(Reader { file: BufReader::with_capacity(256 << 10, File::open(path)?), offset: 0, payload: Vec::new() })
    }

    /// Where the next frame starts: after a clean end, the length of the valid log.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    fn rest_is_zero(&mut self) -> io::Result<bool> {
        let mut chunk = vec![0u8; 64 << 10];
        loop {
            let n = read_full(&mut self.file, &mut chunk)?;
            if chunk[..n].iter().any(|b| *b != 0) {
                return Ok(false);
            }
            if n < chunk.len() {
                return Ok(true);
            }
        }
    }

    pub fn next(&mut self) -> io::Result<Step<'_>> {
        let offset = self.offset;
        let mut head = [0u8; HEAD];
        let got = read_full(&mut self.file, &mut head)?;
        if got == 0 {
            return Ok(Step::End);
        }
        if got < HEAD {
            return Ok(Step::Damaged { offset, why: "torn frame header" });
        }
        let len = u32::from_le_bytes(head[..4].try_into().expect("4 bytes"));
        let crc = u32::from_le_bytes(head[4..].try_into().expect("4 bytes"));
        if head == [0; HEAD] {
            // Segments are zero-filled ahead: zeros to the end of the file are the clean end.
            return Ok(if self.rest_is_zero()? {
                Step::End
            } else {
                Step::Damaged { offset, why: "zeroed frame followed by data" }
            });
        }
        if len == 0 || len > MAX_PAYLOAD {
            return Ok(Step::Damaged { offset, why: "impossible frame length" });
        }
        self.payload.resize(len as usize, 0);
        if read_full(&mut self.file, &mut self.payload)? < len as usize {
            return Ok(Step::Damaged { offset, why: "torn frame" });
        }
        if crc_of(len, &self.payload) != crc {
            return Ok(Step::Damaged { offset, why: "checksum mismatch" });
        }
        let Some(frame) = decode(&self.payload) else {
            return Ok(Step::Damaged { offset, why: "unknown frame" });
        };
        self.offset += HEAD as u64 + len as u64;
        Ok(Step::Frame { offset, size: HEAD as u32 + len, frame })
    }
}

impl Reader {
    /// After a damaged frame at `from`: the offset of the next frame that checks out (its
    /// length is possible, its CRC matches and it decodes), and the reader moved there; or
    /// `None` when nothing valid follows (a torn tail). A CRC32 can match random bytes by
    /// chance (one in four billion per position), so a salvaged accept must also carry a
    /// seq above `min_seq`, the highest seen before the damage.
    pub fn resync(&mut self, from: u64, min_seq: u64) -> io::Result<Option<u64>> {
        let file = self.file.get_mut();
        let mut rest = Vec::new();
        file.seek(SeekFrom::Start(from + 1))?;
        file.read_to_end(&mut rest)?;
        let mut found = None;
        for at in 0..rest.len().saturating_sub(HEAD) {
            let len = u32::from_le_bytes(rest[at..at + 4].try_into().expect("4 bytes"));
            if len == 0 || len > MAX_PAYLOAD || at + HEAD + len as usize > rest.len() {
                continue;
            }
            let Some(payload) = check(&rest[at..at + HEAD + len as usize]) else { continue };
            match decode(payload) {
                Some(Frame::Accept { seq, .. }) if seq <= min_seq => continue,
                Some(_) => {
                    found = Some(from + 1 + at as u64);
                    break;
                }
                None => continue,
            }
        }
        let Some(at) = found else { return Ok(None) };
        self.file.seek(SeekFrom::Start(at))?;
        self.offset = at;
        Ok(Some(at))
    }
}

/// A pad frame exactly `size` bytes long (at least a frame head and its kind byte).
pub fn pad(size: usize) -> Option<Vec<u8>> {
    if size < HEAD + 1 {
        return None;
    }
    let mut out = Vec::with_capacity(size);
    append_with(&mut out, PAD, |o| o.resize(size, 0));
    Some(out)
}

/// Like `read_exact`, but reports how much it got instead of failing at end of file.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames() -> Vec<Frame<'static>> {
        vec![
            Frame::Header { next_seq: 7, file: 3 },
            Frame::Accept { seq: 7, key: Some((MessageKey(u128::MAX - 3), 99)), record: b"rec" },
            Frame::Accept { seq: 8, key: None, record: b"" },
            Frame::Key { key: MessageKey(5), expires_at: 1 },
            Frame::Finish { seq: 7, destination: "ops" },
        ]
    }

    #[test]
    fn frames_round_trip_through_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut buf = Vec::new();
        let sizes: Vec<u32> = frames().iter().map(|f| append(&mut buf, f)).collect();
        assert_eq!(sizes.iter().sum::<u32>() as usize, buf.len());
        std::fs::write(&path, &buf).unwrap();
        let mut r = Reader::open(&path).unwrap();
        let mut offset = 0;
        for (want, size) in frames().iter().zip(&sizes) {
            match r.next().unwrap() {
                Step::Frame { offset: o, size: s, frame } => {
                    assert_eq!((&frame, o, s), (want, offset, *size));
                    assert!(check(&buf[o as usize..(o + s as u64) as usize]).is_some());
                }
                _ => panic!("expected {want:?}"),
            }
            offset += *size as u64;
        }
        assert!(matches!(r.next().unwrap(), Step::End));
    }

    #[test]
    fn every_truncation_and_every_flipped_byte_is_caught() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut buf = Vec::new();
        let first = append(&mut buf, &Frame::Header { next_seq: 1, file: 1 }) as usize;
        append(&mut buf, &Frame::Accept { seq: 1, key: None, record: b"{\"a\":1}" });
        let read_second = |bytes: &[u8]| {
            std::fs::write(&path, bytes).unwrap();
            let mut r = Reader::open(&path).unwrap();
            assert!(matches!(r.next().unwrap(), Step::Frame { .. }));
            match r.next().unwrap() {
                Step::Frame { .. } => "frame",
                Step::End => "end",
                Step::Damaged { offset, .. } => {
                    assert_eq!(offset, first as u64);
                    "damaged"
                }
            }
        };
        assert_eq!(read_second(&buf), "frame");
        assert_eq!(read_second(&buf[..first]), "end");
        // Preallocated zeros after the log are its end; data after zeros is damage.
        let mut zeroed = buf[..first].to_vec();
        zeroed.extend_from_slice(&[0; 4096]);
        assert_eq!(read_second(&zeroed), "end");
        zeroed.push(1);
        assert_eq!(read_second(&zeroed), "damaged");
        for cut in first + 1..buf.len() {
            assert_eq!(read_second(&buf[..cut]), "damaged", "cut at {cut}");
        }
        for at in first..buf.len() {
            let mut bad = buf.clone();
            bad[at] ^= 0x20;
            assert_eq!(read_second(&bad), "damaged", "flipped byte {at}");
        }
    }
}
