//! HTTPS on the public listener: rustls with the ring provider, certificate and key read
//! from files and re-read when they change (cert-manager and Kubernetes Secret updates
//! swap the files under us). Rotation is not latency-sensitive, so a cheap poll of the
//! files' modification times is enough and also survives Secret symlink swaps.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

#[derive(Debug)]
pub struct ReloadingCert {
    current: RwLock<Arc<CertifiedKey>>,
    cert_path: PathBuf,
    key_path: PathBuf,
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().unwrap_or_else(|p| p.into_inner()).clone())
    }
}

fn load(cert_path: &Path, key_path: &Path) -> anyhow::Result<Arc<CertifiedKey>> {
    let certs = CertificateDer::pem_file_iter(cert_path)
        .map_err(|e| anyhow::anyhow!("{}: {e}", cert_path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("{}: {e}", cert_path.display()))?;
    anyhow::ensure!(!certs.is_empty(), "{}: no certificate", cert_path.display());
    let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| anyhow::anyhow!("{}: {e}", key_path.display()))?;
    let provider = rustls::crypto::ring::default_provider();
    let signing_key =
        provider.key_provider.load_private_key(key).map_err(|e| anyhow::anyhow!("{}: {e}", key_path.display()))?;
    Ok(Arc::new(CertifiedKey::new(certs, signing_key)))
}

fn mtime(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

/// Builds the acceptor and starts the reload poll.
pub fn acceptor(cert_path: &Path, key_path: &Path) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    let resolver = Arc::new(ReloadingCert {
        current: RwLock::new(load(cert_path, key_path)?),
        cert_path: cert_path.to_path_buf(),
        key_path: key_path.to_path_buf(),
    });
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(resolver.clone());
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let weak = Arc::downgrade(&resolver);
    let mut seen = (mtime(cert_path), mtime(key_path));
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(10)).await;
            let Some(r) = weak.upgrade() else { return };
            let now = (mtime(&r.cert_path), mtime(&r.key_path));
            if now == seen {
                continue;
            }
            seen = now;
            match load(&r.cert_path, &r.key_path) {
                Ok(k) => {
                    *r.current.write().unwrap_or_else(|p| p.into_inner()) = k;
                    tracing::info!("TLS certificate reloaded");
                }
                Err(e) => tracing::error!(error = %e, "TLS certificate reload failed; keeping the current one"),
            }
        }
    });
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}
