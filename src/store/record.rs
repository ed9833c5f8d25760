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

/// Writes the record's JSON: the same as `serde_json` writes a
/// [`StoredMessage`](crate::queue::StoredMessage) (a test holds it to that), except that the
/// message is `message_json` when given, the literal as SNS wrote it. Escaping the text again
/// was the largest part of an accept after the signature check and the SNS parse: a
/// CloudWatch alarm is JSON inside JSON, full of quotes (callgrind: 9,750 instructions per
/// notification saved of 432,850; BENCHMARKS.md).
pub fn write_json(
    out: &mut Vec<u8>,
    envelope: &crate::model::Envelope,
    message_json: Option<&str>,
    accepted_at_ms: u64,
    severity: &str,
) -> serde_json::Result<()> {
    fn field<T: serde::Serialize + ?Sized>(out: &mut Vec<u8>, name: &str, value: &T) -> serde_json::Result<()> {
        out.extend_from_slice(name.as_bytes());
        serde_json::to_writer(out, value)
    }
    let e = envelope;
    field(out, "{\"envelope\":{\"message_id\":", &e.message_id)?;
    field(out, ",\"topic_arn\":", &e.topic_arn)?;
    field(out, ",\"subject\":", &e.subject)?;
    match message_json {
        Some(raw) => {
            out.extend_from_slice(b",\"message\":");
            out.extend_from_slice(raw.as_bytes());
        }
        None => field(out, ",\"message\":", &e.message)?,
    }
    field(out, ",\"timestamp\":", &e.timestamp)?;
    if let Some(from) = &e.fallback_from {
        field(out, ",\"fallback_from\":", from)?;
    }
    field(out, "},\"accepted_at_ms\":", &accepted_at_ms)?;
    field(out, ",\"severity\":", severity)?;
    out.push(b'}');
    Ok(())
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
    use crate::model::Envelope;
    use crate::queue::StoredMessage;
    use proptest::prelude::*;

    fn envelope(subject: Option<String>, message: String, fallback_from: Option<String>) -> Envelope {
        Envelope {
            message_id: "id-\"1\"".into(),
            topic_arn: "arn:aws:sns:us-east-1:123456789012:alarms".into(),
            subject,
            message,
            timestamp: "2026-11-27T10:00:00.000Z".into(),
            fallback_from,
        }
    }

    proptest! {
        /// Without a literal, the JSON is byte for byte what serde writes for a
        /// StoredMessage; with one, it reads back as the same StoredMessage.
        #[test]
        fn record_json_is_a_stored_message(
            subject in proptest::option::of(any::<String>()),
            message in any::<String>(),
            fallback_from in proptest::option::of("[a-z-]{1,12}"),
            severity in "[a-z]{1,10}",
            at in any::<u64>(),
        ) {
            let e = envelope(subject, message, fallback_from);
            let want = StoredMessage { envelope: e.clone(), accepted_at_ms: at, severity: Some(severity.as_str().into()) };
            let mut out = Vec::new();
            write_json(&mut out, &e, None, at, &severity).unwrap();
            prop_assert_eq!(&out, &serde_json::to_vec(&want).unwrap());

            // The literal as another writer would have escaped it: every char as \uXXXX.
            let literal: String = std::iter::once("\"".to_string())
                .chain(e.message.encode_utf16().map(|u| format!("\\u{u:04x}")))
                .chain(std::iter::once("\"".to_string()))
                .collect();
            let mut out = Vec::new();
            write_json(&mut out, &e, Some(&literal), at, &severity).unwrap();
            let back: StoredMessage = serde_json::from_slice(&out).unwrap();
            prop_assert_eq!(back.envelope, e);
            prop_assert_eq!(back.accepted_at_ms, at);
        }
    }

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
