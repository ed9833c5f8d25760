//! The real AWS-signed messages in tests/fixtures/sns-real verify through the same
//! code path the gateway uses (pinned certificate, clock set to the message Timestamp);
//! the 1024-bit one, the tampered ones and a one-byte change to any signed field fail.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use webhook_relay::metrics::Metrics;
use webhook_relay::sns::{self, CertStore, DevPrefixes, Policy, SigningCert, SnsError, SnsMessage, Verifier};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sns-real")
}

/// A fetcher whose every connection fails (through a proxy nobody runs). One client for
/// the whole binary: building one reads the trust store.
fn unreachable_fetcher() -> sns::Fetcher {
    static CLIENT: std::sync::OnceLock<webhook_relay::outbound::Outbound> = std::sync::OnceLock::new();
    let outbound = CLIENT.get_or_init(|| {
        let cfg = webhook_relay::outbound::OutboundConfig {
            proxy: Some("http://127.0.0.1:9".into()),
            no_proxy: Some(String::new()),
            ..Default::default()
        };
        webhook_relay::outbound::Outbound::new(&cfg).unwrap()
    });
    sns::Fetcher::new(outbound.clone(), Duration::from_millis(200))
}

fn manifest() -> Vec<Value> {
    let text = std::fs::read_to_string(fixtures().join("manifest.json")).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    v["fixtures"].as_array().unwrap().clone()
}

fn verifier_at(msg: &SnsMessage, pinned: &std::path::Path) -> Verifier {
    let at = msg.timestamp;
    // A fetcher that can reach nothing: the pinned file must be what answers.
    let fetcher = unreachable_fetcher();
    let metrics = Metrics::new();
    Verifier::new(
        CertStore::new(Some(pinned.to_path_buf()), fetcher.clone(), metrics.clone()),
        fetcher,
        DevPrefixes::default(),
        Arc::new(move || at),
        metrics,
    )
}

async fn verify_pinned(body: &[u8], pem: &[u8]) -> Result<(), SnsError> {
    let msg = SnsMessage::parse(body)?;
    let dir = tempfile::tempdir().unwrap();
    let name = msg.signing_cert_url.rsplit('/').next().unwrap().to_string();
    // A mutated URL can name no valid file (too long, a separator): then nothing is pinned
    // and the URL rule or the unreachable fetcher refuses it.
    let _ = std::fs::write(dir.path().join(name), pem);
    let v = verifier_at(&msg, dir.path());
    let allow = |_: &str| true;
    v.verify(msg, &Policy { topic_allowed: &allow, max_age: Duration::from_secs(3600) }).await.map(|_| ())
}

#[tokio::test]
async fn every_real_message_verifies_except_the_1024_bit_one() {
    let entries = manifest();
    assert!(entries.len() >= 26, "manifest lists {} fixtures", entries.len());
    let mut verified = 0;
    for e in &entries {
        let file = e["file"].as_str().unwrap();
        let body = std::fs::read(fixtures().join(file)).unwrap();
        let pem = std::fs::read(fixtures().join(e["pem"].as_str().unwrap())).unwrap();
        let result = verify_pinned(&body, &pem).await;
        if e["cert_key_bits"].as_u64() == Some(1024) {
            assert!(matches!(result, Err(SnsError::Cert(sns::CertError::Invalid(_)))), "{file}: {result:?}");
        } else if e["expected_to_verify"] == Value::Bool(false) {
            assert!(matches!(result, Err(SnsError::BadSignature(_))), "{file}: {result:?}");
        } else {
            assert!(result.is_ok(), "{file}: {result:?}");
            verified += 1;
        }
    }
    // 26 valid pairs, one of which has the refused 1024-bit key.
    assert_eq!(verified, 25);
}

#[tokio::test]
async fn tampered_messages_fail() {
    let dir = fixtures().join("invalid");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|x| x == "json") {
            let pem = std::fs::read(path.with_extension("pem")).unwrap();
            let result = verify_pinned(&std::fs::read(&path).unwrap(), &pem).await;
            assert!(matches!(result, Err(SnsError::BadSignature(_))), "{}: {result:?}", path.display());
            n += 1;
        }
    }
    assert_eq!(n, 2);
}

/// Changes one byte of `s` (an ASCII letter or digit, keeping a Timestamp parseable).
fn flip_one_byte(s: &str) -> String {
    let mut b = s.as_bytes().to_vec();
    let i =
        b.iter().rposition(|c| c.is_ascii_digit()).or_else(|| b.iter().rposition(|c| c.is_ascii_alphabetic())).unwrap();
    b[i] = match b[i] {
        b'0'..=b'8' | b'a'..=b'y' | b'A'..=b'Y' => b[i] + 1,
        b'9' => b'0',
        _ => b'a',
    };
    String::from_utf8(b).unwrap()
}

#[tokio::test]
async fn a_one_byte_change_to_any_signed_field_fails() {
    let mut checked = 0;
    for e in manifest() {
        if e["cert_key_bits"].as_u64() == Some(1024) || e["expected_to_verify"] == Value::Bool(false) {
            continue;
        }
        let file = e["file"].as_str().unwrap();
        let pem = std::fs::read(fixtures().join(e["pem"].as_str().unwrap())).unwrap();
        let original: Value = serde_json::from_slice(&std::fs::read(fixtures().join(file)).unwrap()).unwrap();
        let fields: &[&str] = match original["Type"].as_str().unwrap() {
            "Notification" => &["Message", "MessageId", "Subject", "Timestamp", "TopicArn"],
            _ => &["Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn"],
        };
        for field in fields {
            let Some(value) = original.get(*field).and_then(|v| v.as_str()) else { continue };
            let mut changed = original.clone();
            changed[*field] = Value::String(flip_one_byte(value));
            let result = verify_pinned(changed.to_string().as_bytes(), &pem).await;
            // The signature check fails; a changed TopicArn may already fail the URL rule.
            assert!(
                matches!(
                    result,
                    Err(SnsError::BadSignature(_))
                        | Err(SnsError::UntrustedCertUrl(_))
                        | Err(SnsError::CertNotValidAtTimestamp)
                ),
                "{file} {field}: {result:?}"
            );
            checked += 1;
        }
    }
    assert!(checked > 100, "only {checked} field changes checked");
}

#[test]
fn real_signing_cert_urls_pass_the_trust_rule_and_name_their_cert() {
    for e in manifest() {
        let body = std::fs::read(fixtures().join(e["file"].as_str().unwrap())).unwrap();
        let msg = SnsMessage::parse(&body).unwrap();
        assert_eq!(sns::trust::check_signing_cert_url(&msg.signing_cert_url, &msg.topic_arn), Ok(()), "{}", e["file"]);
        if let Some(url) = &msg.subscribe_url {
            if msg.kind == sns::MessageType::SubscriptionConfirmation {
                assert_eq!(sns::trust::check_subscribe_url(url, &msg.topic_arn), Ok(()), "{}", e["file"]);
            }
        }
        let pem = std::fs::read(fixtures().join(e["pem"].as_str().unwrap())).unwrap();
        let cert = SigningCert::from_pem(&pem);
        assert_eq!(cert.is_ok(), e["cert_key_bits"].as_u64() != Some(1024));
    }
}

#[tokio::test]
async fn real_messages_are_refused_at_todays_clock() {
    // Their certificates expired long ago and their Timestamps are old: with the real
    // clock, max_age refuses them before anything is fetched.
    let e = &manifest()[0];
    let body = std::fs::read(fixtures().join(e["file"].as_str().unwrap())).unwrap();
    let msg = SnsMessage::parse(&body).unwrap();
    let metrics = Metrics::new();
    let fetcher = unreachable_fetcher();
    let v = Verifier::new(
        CertStore::new(None, fetcher.clone(), metrics.clone()),
        fetcher,
        DevPrefixes::default(),
        sns::system_clock(),
        metrics,
    );
    let allow = |_: &str| true;
    let r = v.verify(msg, &Policy { topic_allowed: &allow, max_age: Duration::from_secs(3600) }).await;
    assert!(matches!(r, Err(SnsError::TooOld)), "{r:?}");
}

#[test]
fn pem_bodies_other_than_one_certificate_are_refused() {
    let e = &manifest()[1];
    let pem = std::fs::read_to_string(fixtures().join(e["pem"].as_str().unwrap())).unwrap();
    assert!(SigningCert::from_pem(pem.as_bytes()).is_ok());
    let wrapped = format!("<GetEndpointAttributesResponse><Value>{pem}</Value></GetEndpointAttributesResponse>");
    assert!(SigningCert::from_pem(wrapped.as_bytes()).is_err());
    let two = format!("{pem}\n{pem}");
    assert!(SigningCert::from_pem(two.as_bytes()).is_err());
    assert!(SigningCert::from_pem(b"").is_err());
    assert!(SigningCert::from_pem(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----").is_err());
}

/// Byte flips, truncations, insertions and splices of real messages: parsing, the URL rules
/// and verification must refuse them cleanly, never panic, and never accept a changed
/// signed field. A fixed seed keeps it repeatable.
#[tokio::test]
async fn mutated_real_messages_never_panic() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
    let mut mutated = 0;
    for e in manifest().iter().filter(|e| e["cert_key_bits"].as_u64() == Some(2048)).take(8) {
        let body = std::fs::read(fixtures().join(e["file"].as_str().unwrap())).unwrap();
        let pem = std::fs::read(fixtures().join(e["pem"].as_str().unwrap())).unwrap();
        for _ in 0..300 {
            let mut b = body.clone();
            match rng.gen_range(0..4) {
                0 => {
                    let i = rng.gen_range(0..b.len());
                    b[i] = rng.gen();
                }
                1 => b.truncate(rng.gen_range(0..b.len())),
                2 => {
                    let i = rng.gen_range(0..b.len());
                    b.insert(i, *[b'"', b'\\', b'{', b'}', b',', 0xff, b'u'].get(rng.gen_range(0..7)).unwrap());
                }
                _ => {
                    let (a, c) = (rng.gen_range(0..b.len()), rng.gen_range(0..b.len()));
                    let chunk = b[a.min(c)..a.max(c)].to_vec();
                    let at = rng.gen_range(0..b.len());
                    b.splice(at..at, chunk);
                }
            }
            if b == body {
                continue;
            }
            mutated += 1;
            let result = verify_pinned(&b, &pem).await;
            if result.is_ok() {
                // Only whitespace or unsigned fields may change and still verify.
                let (orig, now) = (SnsMessage::parse(&body).unwrap(), SnsMessage::parse(&b).unwrap());
                assert_eq!(orig.string_to_sign(), now.string_to_sign(), "a changed signed field verified");
            }
        }
    }
    assert!(mutated > 2000, "{mutated}");
}
