//! The SNS front door: parse the message, decide which URLs may be trusted, fetch and cache
//! signing certificates, check the signature, and confirm subscriptions. Only
//! [`Verifier::verify`] builds a [`VerifiedMessage`], so anything holding one was signed by SNS.

pub mod certs;
pub mod fetch;
pub mod message;
pub mod trust;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

pub use certs::{CertError, CertStore, SigningCert};
pub use fetch::Fetcher;
pub use message::{MessageType, SignatureVersion, SnsMessage};
pub use trust::{DevPrefixes, UntrustedUrl};

use crate::metrics::Metrics;

/// Why a message was refused. [`SnsError::status`] and [`SnsError::label`] are the one
/// place that maps each to an HTTP status and a metric label.
#[derive(Debug, thiserror::Error)]
pub enum SnsError {
    #[error("body is not a valid SNS message: {0}")]
    Malformed(String),
    #[error("missing field {0}")]
    MissingField(&'static str),
    #[error("unknown Type {0:?}")]
    UnknownType(String),
    #[error("Timestamp is not RFC 3339: {0}")]
    BadTimestamp(String),
    #[error("unsupported SignatureVersion {0:?}")]
    UnsupportedSignatureVersion(String),
    #[error("raw message delivery carries no signature")]
    RawDelivery,
    #[error("SigningCertURL not trusted: {0}")]
    UntrustedCertUrl(UntrustedUrl),
    #[error("SubscribeURL not trusted: {0}")]
    UntrustedSubscribeUrl(UntrustedUrl),
    #[error(transparent)]
    Cert(#[from] CertError),
    #[error("signing certificate was not valid at the message Timestamp")]
    CertNotValidAtTimestamp,
    #[error("bad signature: {0}")]
    BadSignature(&'static str),
    #[error("topic not allowed")]
    TopicNotAllowed,
    #[error("message older than max_age")]
    TooOld,
    #[error("message Timestamp is in the future")]
    FromFuture,
}

impl SnsError {
    pub fn status(&self) -> http::StatusCode {
        match self {
            SnsError::Malformed(_)
            | SnsError::MissingField(_)
            | SnsError::UnknownType(_)
            | SnsError::BadTimestamp(_)
            | SnsError::UnsupportedSignatureVersion(_) => http::StatusCode::BAD_REQUEST,
            SnsError::Cert(CertError::Unavailable(_)) => http::StatusCode::SERVICE_UNAVAILABLE,
            SnsError::RawDelivery
            | SnsError::UntrustedCertUrl(_)
            | SnsError::UntrustedSubscribeUrl(_)
            | SnsError::Cert(CertError::Invalid(_))
            | SnsError::CertNotValidAtTimestamp
            | SnsError::BadSignature(_)
            | SnsError::TopicNotAllowed
            | SnsError::TooOld
            | SnsError::FromFuture => http::StatusCode::FORBIDDEN,
        }
    }

    pub fn label(&self) -> &'static str {
        match self {
            SnsError::Malformed(_) => "malformed",
            SnsError::MissingField(_) => "missing_field",
            SnsError::UnknownType(_) => "unknown_type",
            SnsError::BadTimestamp(_) => "bad_timestamp",
            SnsError::UnsupportedSignatureVersion(_) => "bad_signature_version",
            SnsError::RawDelivery => "raw_delivery",
            SnsError::UntrustedCertUrl(_) => "untrusted_cert_url",
            SnsError::UntrustedSubscribeUrl(_) => "untrusted_subscribe_url",
            SnsError::Cert(CertError::Unavailable(_)) => "cert_unavailable",
            SnsError::Cert(CertError::Invalid(_)) => "bad_certificate",
            SnsError::CertNotValidAtTimestamp => "cert_expired",
            SnsError::BadSignature(_) => "bad_signature",
            SnsError::TopicNotAllowed => "topic_not_allowed",
            SnsError::TooOld => "too_old",
            SnsError::FromFuture => "from_future",
        }
    }
}

/// Why a subscription could not be confirmed.
#[derive(Debug, thiserror::Error)]
pub enum ConfirmError {
    #[error(transparent)]
    Refused(#[from] SnsError),
    #[error("SubscribeURL fetch failed: {0}")]
    Fetch(fetch::FetchError),
}

/// Clock source; injected so tests can verify real, long-expired AWS messages at their
/// own Timestamp.
pub type Clock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

pub fn system_clock() -> Clock {
    Arc::new(SystemTime::now)
}

/// How far ahead of our clock a Timestamp may be (SNS hosts and ours drift a little).
const MAX_CLOCK_SKEW: Duration = Duration::from_secs(300);

/// An SNS message whose signature, certificate, topic and age all checked out.
/// The only constructor is [`Verifier::verify`].
#[derive(Debug, Clone)]
pub struct VerifiedMessage(SnsMessage);

impl VerifiedMessage {
    pub fn get(&self) -> &SnsMessage {
        &self.0
    }

    pub fn into_inner(self) -> SnsMessage {
        self.0
    }
}

/// The per-request policy from routes.toml `[sns]`: it can change on reload.
pub struct Policy<'a> {
    pub topic_allowed: &'a (dyn Fn(&str) -> bool + Sync),
    pub max_age: Duration,
}

/// Checks messages against the trust rules and their signing certificates.
pub struct Verifier {
    certs: CertStore,
    /// Also used for SubscribeURL confirmations: same no-redirect, short-timeout client.
    fetcher: Fetcher,
    dev_prefixes: DevPrefixes,
    clock: Clock,
    metrics: Metrics,
}

impl Verifier {
    pub fn new(
        certs: CertStore,
        fetcher: Fetcher,
        dev_prefixes: DevPrefixes,
        clock: Clock,
        metrics: Metrics,
    ) -> Verifier {
        Verifier { certs, fetcher, dev_prefixes, clock, metrics }
    }

    fn now(&self) -> SystemTime {
        (self.clock)()
    }

    /// Trusted by `--sns-dev-url-prefix` (and counted), or else by the SNS host rule.
    fn trust(&self, url: &str, rule: impl FnOnce() -> Result<(), SnsError>) -> Result<(), SnsError> {
        if self.dev_prefixes.matches(url) {
            self.metrics.dev_prefix_fetches.inc();
            Ok(())
        } else {
            rule()
        }
    }

    /// Confirms a verified SubscriptionConfirmation by GET of its SubscribeURL, after the
    /// same host rule as certificates (no redirects followed).
    pub async fn confirm_subscription(&self, msg: &VerifiedMessage) -> Result<(), ConfirmError> {
        let m = msg.get();
        let url = m.subscribe_url.as_deref().unwrap_or_default();
        self.trust(url, || trust::check_subscribe_url(url, &m.topic_arn).map_err(SnsError::UntrustedSubscribeUrl))?;
        self.fetcher.get(url, 64 * 1024).await.map(|_| ()).map_err(ConfirmError::Fetch)
    }

    /// Cheap checks first (topic, age, URL shape) so that a message we would refuse anyway
    /// never causes an outbound request.
    pub async fn verify(&self, msg: SnsMessage, policy: &Policy<'_>) -> Result<VerifiedMessage, SnsError> {
        door_check(&msg.topic_arn, msg.timestamp, policy, self.now())?;
        if self.dev_prefixes.matches(&msg.signing_cert_url) {
            self.metrics.dev_prefix_fetches.inc();
        } else {
            trust::check_signing_cert_url(&msg.signing_cert_url, &msg.topic_arn).map_err(SnsError::UntrustedCertUrl)?;
        }
        let cert = self.certs.get(&msg.signing_cert_url).await?;
        verify_signature(&msg, &cert)?;
        Ok(VerifiedMessage(msg))
    }
}

/// The checks that need no network: is the topic allowed, and is the message neither
/// too old nor from the future. Also what `route-test` uses to say a message would be
/// refused at the door.
pub fn door_check(
    topic_arn: &str,
    timestamp: SystemTime,
    policy: &Policy<'_>,
    now: SystemTime,
) -> Result<(), SnsError> {
    if !(policy.topic_allowed)(topic_arn) {
        return Err(SnsError::TopicNotAllowed);
    }
    if timestamp > now + MAX_CLOCK_SKEW {
        return Err(SnsError::FromFuture);
    }
    if now.duration_since(timestamp).unwrap_or_default() > policy.max_age {
        return Err(SnsError::TooOld);
    }
    Ok(())
}

/// The signature check alone: certificate validity at the message Timestamp, then RSA
/// PKCS#1 v1.5 over the string to sign.
pub fn verify_signature(msg: &SnsMessage, cert: &SigningCert) -> Result<(), SnsError> {
    if !cert.valid_at(msg.timestamp) {
        return Err(SnsError::CertNotValidAtTimestamp);
    }
    use aws_lc_rs::digest;
    let (key, algorithm) = match msg.signature_version {
        SignatureVersion::V1 => (&cert.sha1, &digest::SHA1_FOR_LEGACY_USE_ONLY),
        SignatureVersion::V2 => (&cert.sha256, &digest::SHA256),
    };
    // The digest is fed the string to sign piece by piece (no copy of the Message), and the
    // key checks the digest: this skips the copy of the digest context that verifying the
    // whole message makes inside AWS-LC.
    let mut digest = digest::Context::new(algorithm);
    msg.signed_pieces(|piece| digest.update(piece.as_bytes()));
    key.verify_digest_sig(&digest.finish(), &msg.signature)
        .map_err(|_| SnsError::BadSignature("signature does not match"))
}
