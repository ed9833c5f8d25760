//! NATS JetStream, the shared backend of cluster mode: connecting with the operator's
//! settings and telling whether the cluster can serve (reachable, JetStream on), for
//! `webhook-relay check --nats URL`. Uses the official client, `async-nats`, with the ring
//! provider. Credentials (a user:password in a URL, a creds file) are never printed: what is
//! shown of a URL is its host and port.

use std::path::PathBuf;
use std::time::Duration;

/// How to reach the cluster (`--nats`, `--nats-creds`).
#[derive(Debug, Clone, Default)]
pub struct NatsSettings {
    /// `nats://[user:password@]host:port`, one per seed server.
    pub urls: Vec<String>,
    pub creds: Option<PathBuf>,
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

/// Connects and asks JetStream for the account's state.
pub async fn check(settings: &NatsSettings) -> Result<Health, NatsError> {
    let where_ = shown(&settings.urls);
    let mut options = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(3))
        .name(concat!("webhook-relay/", env!("CARGO_PKG_VERSION")));
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
    let client = tokio::time::timeout(Duration::from_secs(5), options.connect(addrs))
        .await
        .map_err(|_| NatsError::Unreachable(where_.clone(), "timed out".into()))?
        .map_err(|e| NatsError::Unreachable(where_.clone(), e.kind().to_string()))?;
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
