//! The SNS message as it arrives on the wire, and the parse that turns untrusted JSON into
//! a typed [`SnsMessage`] (still unverified) with every required field present.

use std::time::SystemTime;

use serde::Deserialize;

use super::SnsError;
use crate::model::json_text::{Literal, Text};
use crate::model::{truncate, Str};

/// The three message types SNS delivers to an HTTP(S) subscriber.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageType {
    Notification,
    SubscriptionConfirmation,
    UnsubscribeConfirmation,
}

impl MessageType {
    pub fn as_str(self) -> &'static str {
        match self {
            MessageType::Notification => "Notification",
            MessageType::SubscriptionConfirmation => "SubscriptionConfirmation",
            MessageType::UnsubscribeConfirmation => "UnsubscribeConfirmation",
        }
    }

    /// Metric label value (snake case keeps Prometheus label values conventional).
    pub fn label(self) -> &'static str {
        match self {
            MessageType::Notification => "notification",
            MessageType::SubscriptionConfirmation => "subscription_confirmation",
            MessageType::UnsubscribeConfirmation => "unsubscribe_confirmation",
        }
    }
}

/// SHA1withRSA (1) or SHA256withRSA (2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureVersion {
    V1,
    V2,
}

/// The wire shape. Every field is optional here so that a missing one becomes a precise
/// error rather than a generic serde message; SNS key spellings are given one by one
/// because serde's PascalCase renaming would produce `SigningCertUrl` for `SigningCertURL`.
/// Lambda-record spellings are accepted as aliases, as AWS's own validators do.
/// Every string borrows from the body when it has no escapes and is unescaped in one
/// allocation when it has (`json_text::Text`): the type, version and signature are only
/// looked at, and serde_json's own unescaping of the Message (JSON inside JSON, all `\"`)
/// and the Subject cost about ten allocations a request.
#[derive(Deserialize)]
struct WireMessage<'a> {
    #[serde(rename = "Type", borrow)]
    kind: Option<Text<'a>>,
    #[serde(rename = "MessageId", borrow)]
    message_id: Option<Text<'a>>,
    #[serde(rename = "Token", borrow)]
    token: Option<Text<'a>>,
    #[serde(rename = "TopicArn", borrow)]
    topic_arn: Option<Text<'a>>,
    #[serde(rename = "Subject", borrow)]
    subject: Option<Text<'a>>,
    #[serde(rename = "Message", borrow)]
    message: Option<Literal<'a>>,
    #[serde(rename = "Timestamp", borrow)]
    timestamp: Option<Text<'a>>,
    #[serde(rename = "SignatureVersion", borrow)]
    signature_version: Option<Text<'a>>,
    #[serde(rename = "Signature", borrow)]
    signature: Option<Text<'a>>,
    #[serde(rename = "SigningCertURL", alias = "SigningCertUrl", borrow)]
    signing_cert_url: Option<Text<'a>>,
    #[serde(rename = "SubscribeURL", borrow)]
    subscribe_url: Option<Text<'a>>,
}

/// A structurally complete SNS message whose signature has not been checked yet.
#[derive(Debug, Clone)]
pub struct SnsMessage {
    pub kind: MessageType,
    pub message_id: String,
    pub topic_arn: String,
    pub subject: Option<String>,
    pub message: String,
    /// Where `Message` is in the body as written (a JSON string literal, quotes included):
    /// the store writes it as it came rather than escaping the text again.
    pub message_literal: Option<std::ops::Range<usize>>,
    /// The exact `Timestamp` text: it is part of the string to sign.
    pub timestamp_raw: Str,
    pub timestamp: SystemTime,
    pub signature_version: SignatureVersion,
    /// Decoded on the stack: 256 bytes for the 2048-bit keys SNS signs with, room for
    /// 4096-bit ones.
    pub signature: Signature,
    pub signing_cert_url: String,
    pub token: Option<String>,
    pub subscribe_url: Option<String>,
    // `UnsubscribeURL` is not kept: nothing here uses it, and it is a capability anyone
    // holding it can use to cancel the subscription (docs/operations.md).
}

/// Longest value we accept for the identifiers that end up in logs, metrics and keys.
const MAX_ID_LEN: usize = 256;

impl SnsMessage {
    /// Parses a request body. Never panics on any input.
    pub fn parse(body: &[u8]) -> Result<SnsMessage, SnsError> {
        let wire: WireMessage = serde_json::from_slice(body).map_err(|e| SnsError::Malformed(e.to_string()))?;
        let kind = match wire.kind.as_ref().map(|t| &*t.0) {
            None => return Err(SnsError::MissingField("Type")),
            Some("Notification") => MessageType::Notification,
            Some("SubscriptionConfirmation") => MessageType::SubscriptionConfirmation,
            Some("UnsubscribeConfirmation") => MessageType::UnsubscribeConfirmation,
            Some(other) => return Err(SnsError::UnknownType(truncate(other, 64))),
        };
        let message_id = required(wire.message_id, "MessageId")?;
        let topic_arn = required(wire.topic_arn, "TopicArn")?;
        let Some(literal) = wire.message else { return Err(SnsError::MissingField("Message")) };
        let message_literal = offset_in(body, literal.raw);
        let message = literal.text.into_owned();
        // 24 bytes as SNS writes it: inline, no allocation.
        let timestamp_raw = wire.timestamp.map(|t| Str::from(&*t.0)).ok_or(SnsError::MissingField("Timestamp"))?;
        if message_id.len() > MAX_ID_LEN || topic_arn.len() > MAX_ID_LEN {
            return Err(SnsError::Malformed("MessageId or TopicArn too long".into()));
        }
        let timestamp = humantime::parse_rfc3339(&timestamp_raw)
            .map_err(|_| SnsError::BadTimestamp(truncate(&timestamp_raw, 64)))?;
        let signature_version = match wire.signature_version.as_ref().map(|t| &*t.0) {
            None => return Err(SnsError::MissingField("SignatureVersion")),
            Some("1") => SignatureVersion::V1,
            Some("2") => SignatureVersion::V2,
            Some(other) => return Err(SnsError::UnsupportedSignatureVersion(truncate(other, 16))),
        };
        let signature = wire.signature.ok_or(SnsError::MissingField("Signature"))?;
        let signature = Signature::decode(signature.0.as_bytes())?;
        let signing_cert_url = required(wire.signing_cert_url, "SigningCertURL")?;
        let (token, subscribe_url) = match kind {
            MessageType::Notification => (wire.token.map(Text::into_owned), wire.subscribe_url.map(Text::into_owned)),
            _ => (Some(required(wire.token, "Token")?), Some(required(wire.subscribe_url, "SubscribeURL")?)),
        };
        Ok(SnsMessage {
            kind,
            message_id,
            topic_arn,
            subject: wire.subject.map(Text::into_owned),
            message,
            message_literal,
            timestamp_raw,
            timestamp,
            signature_version,
            signature,
            signing_cert_url,
            token,
            subscribe_url,
        })
    }

    /// The exact bytes AWS signs: `Key\nValue\n` pairs in a fixed order, from the decoded
    /// JSON values. Subject is only part of it for a Notification that has one.
    pub fn string_to_sign(&self) -> String {
        let mut out = String::with_capacity(self.message.len() + 512);
        self.signed_pieces(|piece| out.push_str(piece));
        out
    }

    /// The string to sign, piece by piece, for a digest fed as it goes (no copy of the
    /// Message per request).
    pub fn signed_pieces(&self, mut piece: impl FnMut(&str)) {
        let mut push = |k: &str, v: &str| {
            piece(k);
            piece("\n");
            piece(v);
            piece("\n");
        };
        match self.kind {
            MessageType::Notification => {
                push("Message", &self.message);
                push("MessageId", &self.message_id);
                if let Some(subject) = &self.subject {
                    push("Subject", subject);
                }
                push("Timestamp", &self.timestamp_raw);
                push("TopicArn", &self.topic_arn);
                push("Type", self.kind.as_str());
            }
            MessageType::SubscriptionConfirmation | MessageType::UnsubscribeConfirmation => {
                push("Message", &self.message);
                push("MessageId", &self.message_id);
                push("SubscribeURL", self.subscribe_url.as_deref().unwrap_or_default());
                push("Timestamp", &self.timestamp_raw);
                push("Token", self.token.as_deref().unwrap_or_default());
                push("TopicArn", &self.topic_arn);
                push("Type", self.kind.as_str());
            }
        }
    }
}

/// Where `part` (borrowed from `body` by the parser) lies in `body`.
fn offset_in(body: &[u8], part: &str) -> Option<std::ops::Range<usize>> {
    let start = (part.as_ptr() as usize).checked_sub(body.as_ptr() as usize)?;
    let end = start + part.len();
    (end <= body.len() && body.get(start..end) == Some(part.as_bytes())).then_some(start..end)
}

/// An SNS signature, decoded.
#[derive(Clone)]
pub struct Signature {
    bytes: [u8; 512],
    len: usize,
}

impl Signature {
    fn decode(base64_text: &[u8]) -> Result<Signature, SnsError> {
        let mut bytes = [0u8; 512];
        // Too long for a 4096-bit key is refused like bad base64: it cannot verify.
        let len = base64::Engine::decode_slice(&base64::engine::general_purpose::STANDARD, base64_text, &mut bytes)
            .map_err(|_| SnsError::BadSignature("Signature is not base64 of at most 512 bytes"))?;
        Ok(Signature { bytes, len })
    }
}

impl std::ops::Deref for Signature {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

impl std::fmt::Debug for Signature {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signature({} bytes)", self.len)
    }
}

fn required(v: Option<Text<'_>>, name: &'static str) -> Result<String, SnsError> {
    v.map(Text::into_owned).ok_or(SnsError::MissingField(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> serde_json::Value {
        serde_json::json!({
            "Type": "Notification",
            "MessageId": "id-1",
            "TopicArn": "arn:aws:sns:us-east-1:123456789012:alarms",
            "Subject": "subj",
            "Message": "hello",
            "Timestamp": "2024-01-01T00:00:00.000Z",
            "SignatureVersion": "2",
            "Signature": "AAAA",
            "SigningCertURL": "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-0123456789abcdef0123456789abcdef.pem",
        })
    }

    #[test]
    fn the_message_literal_is_where_the_body_has_it_and_reads_back_as_the_message() {
        let mut v = base();
        v["Message"] = serde_json::json!("{\"AlarmName\":\"é \\ /\\u2028\"}\n\ttab");
        let body = serde_json::to_vec(&v).unwrap();
        let m = SnsMessage::parse(&body).unwrap();
        let literal = std::str::from_utf8(&body[m.message_literal.clone().unwrap()]).unwrap();
        assert!(literal.starts_with('"') && literal.ends_with('"'), "{literal}");
        assert_eq!(serde_json::from_str::<String>(literal).unwrap(), m.message);
        // Escaped differently by hand (as another writer might): still where it is.
        let mut v = base();
        v["Message"] = serde_json::json!("hello");
        let body = serde_json::to_vec(&v).unwrap();
        let body = String::from_utf8(body).unwrap().replace("\"hello\"", "\"h\\u0065llo\"");
        let m = SnsMessage::parse(body.as_bytes()).unwrap();
        assert_eq!(m.message, "hello");
        assert_eq!(&body[m.message_literal.unwrap()], "\"h\\u0065llo\"");
    }

    fn parse(v: &serde_json::Value) -> Result<SnsMessage, SnsError> {
        SnsMessage::parse(v.to_string().as_bytes())
    }

    #[test]
    fn string_to_sign_notification_with_subject() {
        let m = parse(&base()).unwrap();
        assert_eq!(
            m.string_to_sign(),
            "Message\nhello\nMessageId\nid-1\nSubject\nsubj\nTimestamp\n2024-01-01T00:00:00.000Z\n\
             TopicArn\narn:aws:sns:us-east-1:123456789012:alarms\nType\nNotification\n"
        );
    }

    #[test]
    fn string_to_sign_notification_without_subject_and_null_subject() {
        let mut v = base();
        v.as_object_mut().unwrap().remove("Subject");
        let expected = "Message\nhello\nMessageId\nid-1\nTimestamp\n2024-01-01T00:00:00.000Z\n\
             TopicArn\narn:aws:sns:us-east-1:123456789012:alarms\nType\nNotification\n";
        assert_eq!(parse(&v).unwrap().string_to_sign(), expected);
        v["Subject"] = serde_json::Value::Null;
        assert_eq!(parse(&v).unwrap().string_to_sign(), expected);
    }

    #[test]
    fn string_to_sign_confirmations() {
        for kind in ["SubscriptionConfirmation", "UnsubscribeConfirmation"] {
            let mut v = base();
            v["Type"] = kind.into();
            v["Token"] = "tok".into();
            v["SubscribeURL"] = "https://sns.us-east-1.amazonaws.com/?Action=ConfirmSubscription".into();
            let m = parse(&v).unwrap();
            assert_eq!(
                m.string_to_sign(),
                format!(
                    "Message\nhello\nMessageId\nid-1\nSubscribeURL\n\
                     https://sns.us-east-1.amazonaws.com/?Action=ConfirmSubscription\n\
                     Timestamp\n2024-01-01T00:00:00.000Z\nToken\ntok\n\
                     TopicArn\narn:aws:sns:us-east-1:123456789012:alarms\nType\n{kind}\n"
                )
            );
        }
    }

    #[test]
    fn missing_fields_are_named() {
        for field in
            ["Type", "MessageId", "TopicArn", "Message", "Timestamp", "SignatureVersion", "Signature", "SigningCertURL"]
        {
            let mut v = base();
            v.as_object_mut().unwrap().remove(field);
            match parse(&v) {
                Err(SnsError::MissingField(f)) => assert_eq!(f, field),
                other => panic!("{field}: {other:?}"),
            }
        }
        let mut v = base();
        v["Type"] = "SubscriptionConfirmation".into();
        v["Token"] = "t".into();
        assert!(matches!(parse(&v), Err(SnsError::MissingField("SubscribeURL"))));
    }

    #[test]
    fn bad_shapes_are_rejected() {
        let mut v = base();
        v["Type"] = "Bogus".into();
        assert!(matches!(parse(&v), Err(SnsError::UnknownType(_))));
        for version in ["3", "0", "", "1.0"] {
            let mut v = base();
            v["SignatureVersion"] = version.into();
            assert!(matches!(parse(&v), Err(SnsError::UnsupportedSignatureVersion(_))), "{version}");
        }
        let mut v = base();
        v["SignatureVersion"] = 2.into();
        assert!(matches!(parse(&v), Err(SnsError::Malformed(_))));
        let mut v = base();
        v["Timestamp"] = "yesterday".into();
        assert!(matches!(parse(&v), Err(SnsError::BadTimestamp(_))));
        let mut v = base();
        v["Signature"] = "!!!not base64".into();
        assert!(matches!(parse(&v), Err(SnsError::BadSignature(_))));
        assert!(matches!(SnsMessage::parse(b"not json"), Err(SnsError::Malformed(_))));
        assert!(matches!(SnsMessage::parse(b"\xff\xfe{}"), Err(SnsError::Malformed(_))));
        assert!(matches!(SnsMessage::parse(b"[1,2]"), Err(SnsError::Malformed(_))));
        // A duplicated key is a smuggling attempt (which value was signed?): refuse it.
        let dup = br#"{"Type":"Notification","Type":"Notification"}"#;
        assert!(matches!(SnsMessage::parse(dup), Err(SnsError::Malformed(_))));
    }

    #[test]
    fn lambda_spellings_are_accepted() {
        let mut v = base();
        let url = v.as_object_mut().unwrap().remove("SigningCertURL").unwrap();
        v["SigningCertUrl"] = url.clone();
        assert_eq!(parse(&v).unwrap().signing_cert_url, url.as_str().unwrap());
    }
}
