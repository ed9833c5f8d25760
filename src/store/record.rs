//! The on-disk message record: which destinations still wait for it, then the message.
//! Keeping the pending set inside the record (rather than in a second table) makes an
//! accept one B-tree insert and the last finish one remove, which is most of what a
//! commit costs.
//!
//! Layout: `accepted_at_ms: u64 LE | n: u16 LE | n × (len: u16 LE, name, done: u8) | JSON`.

/// A decoded record header and its JSON body.
#[derive(Debug, PartialEq, Eq)]
pub struct Record<'a> {
    pub accepted_at_ms: u64,
    /// Destination names and whether each is done.
    pub destinations: Vec<(&'a str, bool)>,
    pub json: &'a [u8],
}

/// Writes the header; the JSON follows it to the end of the record.
pub fn encode_header(out: &mut Vec<u8>, accepted_at_ms: u64, destinations: &[String]) {
    out.extend_from_slice(&accepted_at_ms.to_le_bytes());
    out.extend_from_slice(&(destinations.len() as u16).to_le_bytes());
    for d in destinations {
        out.extend_from_slice(&(d.len() as u16).to_le_bytes());
        out.extend_from_slice(d.as_bytes());
        out.push(0);
    }
}

#[cfg(test)]
pub fn encode(accepted_at_ms: u64, destinations: &[String], json: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_header(&mut out, accepted_at_ms, destinations);
    out.extend_from_slice(json);
    out
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

/// Parses a record; `None` when it is damaged.
pub fn decode(b: &[u8]) -> Option<Record<'_>> {
    let accepted_at_ms = u64::from_le_bytes(b.get(..8)?.try_into().ok()?);
    let n = u16_at(b, 8)? as usize;
    let mut at = 10;
    let mut destinations = Vec::with_capacity(n);
    for _ in 0..n {
        let len = u16_at(b, at)? as usize;
        let name = std::str::from_utf8(b.get(at + 2..at + 2 + len)?).ok()?;
        let done = *b.get(at + 2 + len)? != 0;
        destinations.push((name, done));
        at += 3 + len;
    }
    Some(Record { accepted_at_ms, destinations, json: b.get(at..)? })
}

/// Marks `destination` done in place. Returns how many are still pending afterwards, or
/// `None` if it was not pending (unknown, or already done).
pub fn mark_done(b: &mut [u8], destination: &str) -> Option<usize> {
    let n = u16_at(b, 8)? as usize;
    let mut at = 10;
    let mut found = false;
    let mut left = 0;
    for _ in 0..n {
        let len = u16_at(b, at)? as usize;
        let flag = at + 2 + len;
        let pending = *b.get(flag)? == 0;
        if pending && !found && b.get(at + 2..flag)? == destination.as_bytes() {
            b[flag] = 1;
            found = true;
        } else if pending {
            left += 1;
        }
        at = flag + 1;
    }
    found.then_some(left)
}

/// Marks done every destination of the record that is not in `pending`: the state a
/// record is rewritten with when compaction carries it forward.
pub fn keep_only_pending(b: &mut [u8], pending: &[impl AsRef<str>]) {
    let open: Vec<String> = match decode(b) {
        Some(r) => r.destinations.iter().filter(|(_, done)| !done).map(|(n, _)| n.to_string()).collect(),
        None => return,
    };
    for name in open {
        if !pending.iter().any(|p| p.as_ref() == name) {
            mark_done(b, &name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_finish_each_destination_once() {
        let dests = vec!["ops".to_string(), "oncall".to_string()];
        let mut rec = encode(42, &dests, br#"{"x":1}"#);
        let r = decode(&rec).unwrap();
        assert_eq!(r.accepted_at_ms, 42);
        assert_eq!(r.destinations, vec![("ops", false), ("oncall", false)]);
        assert_eq!(r.json, br#"{"x":1}"#);
        assert_eq!(mark_done(&mut rec, "oncall"), Some(1));
        assert_eq!(mark_done(&mut rec, "oncall"), None, "finishing twice must not count twice");
        assert_eq!(mark_done(&mut rec, "nope"), None);
        assert_eq!(decode(&rec).unwrap().destinations, vec![("ops", false), ("oncall", true)]);
        assert_eq!(mark_done(&mut rec, "ops"), Some(0));

        let mut rec = encode(1, &["a".into(), "b".into(), "c".into()], b"{}");
        keep_only_pending(&mut rec, &["b"]);
        assert_eq!(decode(&rec).unwrap().destinations, vec![("a", true), ("b", false), ("c", true)]);
    }

    #[test]
    fn damaged_records_decode_to_none() {
        let rec = encode(1, &["a".to_string()], b"{}");
        for cut in 0..12 {
            assert!(decode(&rec[..cut]).is_none(), "cut at {cut}");
        }
        assert!(decode(&[0xff; 3]).is_none());
    }
}
