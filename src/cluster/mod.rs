//! Cluster mode: NATS JetStream as the shared backend, so several replicas act as one
//! gateway. Uses the official client, `async-nats`, with the ring provider. By file:
//!
//! - here: connecting with the operator's settings, and `check --nats` (reachable,
//!   JetStream on);
//! - `names`: what the streams, buckets and subjects are called under `--nats-prefix`;
//! - `queue`: [`NatsQueue`], the [`crate::queue::Queue`] on JetStream (accept, dedup,
//!   finish, dead letters, threads), and creating what it needs, idempotently;
//! - `leases`: one replica at a time posts for each destination; it holds the
//!   destination's lease and feeds its worker from the stream, in accept order;
//! - `dead_letters`: `dead-letters ... --nats` from any machine.
//!
//! Credentials (a user:password in a URL, a creds file) are never printed: what is shown of
//! a URL is its host and port.

pub mod dead_letters;
pub mod leases;
pub mod names;
pub mod queue;

pub use names::Names;
pub use queue::NatsQueue;

use std::path::PathBuf;
use std::time::Duration;

/// How to reach the cluster (`--nats`, `--nats-creds`) and what to call things in it
/// (`--nats-prefix`, `--nats-replicas`).
#[derive(Debug, Clone)]
pub struct NatsSettings {
    /// `nats://[user:password@]host:port`, one per seed server.
    pub urls: Vec<String>,
    pub creds: Option<PathBuf>,
    /// Names the streams and buckets, so several gateways can share one NATS.
    pub prefix: String,
    /// Replicas of each stream and bucket created (3: a quorum of servers holds each write).
    pub replicas: usize,
}

impl Default for NatsSettings {
    fn default() -> NatsSettings {
        NatsSettings { urls: Vec::new(), creds: None, prefix: names::DEFAULT_PREFIX.into(), replicas: 1 }
    }
}

/// What `check --nats` reports.
#[derive(Debug, Clone)]
pub struct Health {
    pub server: String,
    pub version: String,
    /// Other servers of the cluster this one advertises.
    pub peers: usize,
    pub streams: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    #[error("cannot read the NATS credentials file: {0}")]
    Creds(String),
    #[error("NATS at {0} is unreachable or refused the connection: {1}")]
    Unreachable(String, String),
    #[error("NATS at {0} answers, but JetStream is not enabled (or not ready): {1}")]
    NoJetStream(String, String),
}

/// The servers of `settings` as they may be shown.
pub fn names_shown(settings: &NatsSettings) -> String {
    shown(&settings.urls)
}

/// `host:port` of each URL, without scheme or credentials.
pub fn shown(urls: &[String]) -> String {
    urls.iter()
        .map(|u| {
            let rest = u.split_once("://").map(|(_, r)| r).unwrap_or(u);
            rest.rsplit_once('@').map(|(_, host)| host).unwrap_or(rest).trim_end_matches('/').to_string()
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Connects for a short command (`check`, `dead-letters`): fails at once when no server
/// answers.
pub async fn connect_once(settings: &NatsSettings) -> Result<async_nats::Client, NatsError> {
    let options = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(3))
        .name(concat!("webhook-relay/", env!("CARGO_PKG_VERSION")));
    connect(settings, options).await
}

/// Connects for `serve`: returns at once even when NATS is down, and reconnects forever
/// (quickly: a gateway waiting for NATS answers 503), so the gateway starts and recovers
/// by itself.
/// `disconnected` is set on every disconnection (and left for the caller to clear once it
/// has seen JetStream answer again).
pub async fn connect_forever(
    settings: &NatsSettings,
    disconnected: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Result<async_nats::Client, NatsError> {
    let options = async_nats::ConnectOptions::new()
        .event_callback(move |event| {
            if matches!(event, async_nats::Event::Disconnected) {
                disconnected.store(true, std::sync::atomic::Ordering::SeqCst);
            }
            std::future::ready(())
        })
        .connection_timeout(Duration::from_secs(3))
        .retry_on_initial_connect()
        .max_reconnects(None)
        .reconnect_delay_callback(|attempts| Duration::from_millis((attempts as u64 * 250).min(2_000)))
        .name(concat!("webhook-relay/", env!("CARGO_PKG_VERSION")));
    connect(settings, options).await
}

async fn connect(
    settings: &NatsSettings,
    mut options: async_nats::ConnectOptions,
) -> Result<async_nats::Client, NatsError> {
    let where_ = shown(&settings.urls);
    if let Some(file) = &settings.creds {
        options = options.credentials_file(file).await.map_err(|e| NatsError::Creds(e.kind().to_string()))?;
    }
    let bad = || NatsError::Unreachable(where_.clone(), "not a NATS URL".into());
    let mut addrs: Vec<async_nats::ServerAddr> = Vec::new();
    for u in &settings.urls {
        let with_scheme = if u.contains("://") { u.clone() } else { format!("nats://{u}") };
        let mut url = reqwest::Url::parse(&with_scheme).map_err(|_| bad())?;
        if !url.username().is_empty() {
            let decode = |s: &str| percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned();
            let (user, pass) = (decode(url.username()), decode(url.password().unwrap_or_default()));
            options = options.user_and_password(user, pass);
            let _ = url.set_username("");
            let _ = url.set_password(None);
        }
        addrs.push(url.as_str().parse().map_err(|_| bad())?);
    }
    tokio::time::timeout(Duration::from_secs(5), options.connect(addrs))
        .await
        .map_err(|_| NatsError::Unreachable(where_.clone(), "timed out".into()))?
        .map_err(|e| NatsError::Unreachable(where_.clone(), e.kind().to_string()))
}

/// Connects and asks JetStream for the account's state.
pub async fn check(settings: &NatsSettings) -> Result<Health, NatsError> {
    let where_ = shown(&settings.urls);
    let client = connect_once(settings).await?;
    let info = client.server_info();
    let js = async_nats::jetstream::new(client);
    let account = tokio::time::timeout(Duration::from_secs(5), js.query_account())
        .await
        .map_err(|_| NatsError::NoJetStream(where_.clone(), "no answer".into()))?
        .map_err(|e| NatsError::NoJetStream(where_.clone(), e.to_string()))?;
    Ok(Health {
        server: info.server_name,
        version: info.version,
        peers: info.connect_urls.len(),
        streams: account.streams,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn urls_are_shown_without_credentials() {
        let urls = vec!["nats://relay:s3cret@10.0.0.1:4222".to_string(), "nats-2.svc:4222".to_string()];
        assert_eq!(super::shown(&urls), "10.0.0.1:4222,nats-2.svc:4222");
    }
}
