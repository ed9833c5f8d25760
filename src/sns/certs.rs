//! Signing certificates: parse and vet one PEM, then keep it. The cache is keyed by URL and
//! coalesces concurrent misses, so a burst of messages naming a new certificate causes one
//! fetch, not one per request. Pinned certificates (`--sns-cert-dir`) are read from disk in
//! place of the network.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use moka::future::Cache;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use x509_parser::prelude::*;

use super::fetch::{FetchError, Fetcher};
use crate::metrics::Metrics;

/// Largest certificate body we read. Real ones are under 2 KiB.
const MAX_CERT_BYTES: usize = 16 * 1024;
/// RSA keys below this are refused (AWS has used 2048 since 2013).
const MIN_RSA_BITS: usize = 2048;

#[derive(Debug, Clone, thiserror::Error)]
pub enum CertError {
    /// Network trouble: SNS will retry, so it is a 503.
    #[error("could not fetch signing certificate: {0}")]
    Unavailable(String),
    /// The content is not an acceptable certificate: 403.
    #[error("signing certificate refused: {0}")]
    Invalid(&'static str),
}

/// A vetted signing certificate: an RSA key of at least 2048 bits and its validity window.
pub struct SigningCert {
    /// The key parsed once, for each signature version's algorithm (SHA-1 for
    /// SignatureVersion 1, SHA-256 for 2): a cached certificate verifies without re-parsing.
    pub sha1: aws_lc_rs::signature::ParsedPublicKey,
    pub sha256: aws_lc_rs::signature::ParsedPublicKey,
    pub key_bits: usize,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl SigningCert {
    /// Accepts exactly one PEM certificate and nothing else: a presigned SNS API response
    /// wraps attacker-chosen PEM inside XML, and that must not pass.
    pub fn from_pem(body: &[u8]) -> Result<SigningCert, CertError> {
        let text = std::str::from_utf8(body).map_err(|_| CertError::Invalid("not text"))?;
        let trimmed = text.trim();
        if !trimmed.starts_with("-----BEGIN CERTIFICATE-----")
            || !trimmed.ends_with("-----END CERTIFICATE-----")
            || trimmed.matches("-----BEGIN").count() != 1
        {
            return Err(CertError::Invalid("body is not exactly one PEM certificate"));
        }
        let der = CertificateDer::from_pem_slice(trimmed.as_bytes()).map_err(|_| CertError::Invalid("bad PEM"))?;
        SigningCert::from_der(&der)
    }

    pub fn from_der(der: &[u8]) -> Result<SigningCert, CertError> {
        let (rest, cert) = parse_x509_certificate(der).map_err(|_| CertError::Invalid("not an X.509 certificate"))?;
        if !rest.is_empty() {
            return Err(CertError::Invalid("trailing data after certificate"));
        }
        let spki = cert.public_key();
        let key_bits = match spki.parsed() {
            Ok(x509_parser::public_key::PublicKey::RSA(rsa)) => rsa.key_size(),
            _ => return Err(CertError::Invalid("key is not RSA")),
        };
        if key_bits < MIN_RSA_BITS {
            return Err(CertError::Invalid("RSA key shorter than 2048 bits"));
        }
        let validity = cert.validity();
        let key = spki.subject_public_key.data.as_ref();
        let parse = |alg| {
            aws_lc_rs::signature::ParsedPublicKey::new(alg, key).map_err(|_| CertError::Invalid("unusable RSA key"))
        };
        Ok(SigningCert {
            sha1: parse(&aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA1_FOR_LEGACY_USE_ONLY)?,
            sha256: parse(&aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256)?,
            key_bits,
            not_before: to_system_time(validity.not_before.timestamp()),
            not_after: to_system_time(validity.not_after.timestamp()),
        })
    }

    pub fn valid_at(&self, t: SystemTime) -> bool {
        self.not_before <= t && t <= self.not_after
    }
}

impl std::fmt::Debug for SigningCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningCert")
            .field("key_bits", &self.key_bits)
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

fn to_system_time(unix: i64) -> SystemTime {
    if unix >= 0 {
        UNIX_EPOCH + Duration::from_secs(unix as u64)
    } else {
        UNIX_EPOCH - Duration::from_secs(unix.unsigned_abs())
    }
}

/// Where certificates come from, and the cache in front of them.
pub struct CertStore {
    cache: Cache<String, Arc<SigningCert>>,
    /// `--sns-cert-dir`: consulted by file name before the network.
    pinned_dir: Option<PathBuf>,
    fetcher: Fetcher,
    metrics: Metrics,
}

impl CertStore {
    pub fn new(pinned_dir: Option<PathBuf>, fetcher: Fetcher, metrics: Metrics) -> CertStore {
        CertStore {
            // AWS rotates yearly; a day's TTL picks up a re-issued file without a restart.
            cache: Cache::builder().max_capacity(1024).time_to_live(Duration::from_secs(24 * 3600)).build(),
            pinned_dir,
            fetcher,
            metrics,
        }
    }

    /// The certificate for an already-trusted URL.
    pub async fn get(&self, url: &str) -> Result<Arc<SigningCert>, CertError> {
        if let Some(cert) = self.cache.get(url).await {
            self.metrics.cert_cache_hits.inc();
            return Ok(cert);
        }
        self.cache.try_get_with(url.to_string(), self.load(url)).await.map_err(|e: Arc<CertError>| (*e).clone())
    }

    async fn load(&self, url: &str) -> Result<Arc<SigningCert>, CertError> {
        if let Some(path) = self.pinned_path(url) {
            match tokio::fs::read(&path).await {
                Ok(body) => {
                    self.metrics.cert_pinned_loads.inc();
                    return SigningCert::from_pem(&body).map(Arc::new);
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(CertError::Unavailable(format!("pinned file: {e}"))),
            }
        }
        let result = self.fetcher.get(url, MAX_CERT_BYTES).await;
        let outcome = match &result {
            Ok(_) => "ok",
            Err(FetchError::Timeout) => "timeout",
            Err(e) if e.is_final() => "refused",
            Err(_) => "error",
        };
        self.metrics.cert_fetches.get_or_create(&[("outcome", outcome)]).inc();
        match result {
            Ok(body) => SigningCert::from_pem(&body).map(Arc::new),
            Err(e) if e.is_final() => {
                tracing::warn!(error = %e, "signing certificate URL answered with a refusal");
                Err(CertError::Invalid("certificate URL did not serve a certificate"))
            }
            Err(e) => Err(CertError::Unavailable(e.to_string())),
        }
    }

    /// `D/<last path segment>`, only for a plain file name (the URL passed the trust rules,
    /// but this keeps `..` out by construction).
    fn pinned_path(&self, url: &str) -> Option<PathBuf> {
        let dir = self.pinned_dir.as_ref()?;
        let name = url.rsplit('/').next()?;
        if name.is_empty() || name.starts_with('.') || !name.ends_with(".pem") || name.contains('\\') {
            return None;
        }
        Some(dir.join(name))
    }
}
