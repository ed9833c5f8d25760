//! webhook-relay: Amazon SNS in, Slack out, nothing lost in between.
//!
//! The path of one message, stage by stage, is wired in [`Gateway::handle_sns`]:
//!
//! ```text
//! POST /sns ─▶ sns::SnsMessage::parse ─▶ sns::Verifier::verify ─▶ dedup::Dedup::claim
//!           ─▶ route (severity + Router) ─▶ store::Store::accept (fsync) ─▶ 200
//!           ─▶ deliver::Deliverer (one worker per destination: rate limit, retry, Slack)
//! ```
//!
//! [`start`] assembles the stages and the listeners; `main.rs` only parses the command line.

#![forbid(unsafe_code)]

pub mod commands;
pub mod config;
pub mod dedup;
pub mod deliver;
pub mod metrics;
pub mod route;
pub mod server;
pub mod sns;
pub mod store;
pub mod testkit;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use config::reload::ConfigHandle;
use config::Config;
use dedup::{Claim, Dedup, MessageKey};
use deliver::{Deliverer, HttpClient};
use metrics::Metrics;
use route::{Envelope, Facts, Notification};
use server::shutdown::{self, ShutdownTrigger};
use sns::{
    CertStore, Clock, ConfirmError, DevPrefixes, Fetcher, MessageType, Policy, SnsError, VerifiedMessage, Verifier,
};
use store::{Store, StoreError};

/// What happened to an accepted request (all answered 200).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Accepted,
    Duplicate,
    Unrouted,
    SubscriptionConfirmed,
    SubscriptionNotConfirmed,
    UnsubscribeSeen,
}

impl Outcome {
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Accepted => "accepted",
            Outcome::Duplicate => "duplicate",
            Outcome::Unrouted => "unrouted",
            Outcome::SubscriptionConfirmed => "subscription_confirmed",
            Outcome::SubscriptionNotConfirmed => "subscription_not_confirmed",
            Outcome::UnsubscribeSeen => "unsubscribe_confirmation",
        }
    }
}

/// Why a request was refused; [`IngestError::status`] and [`IngestError::label`] are the
/// single mapping to HTTP status and metric label.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error(transparent)]
    Sns(#[from] SnsError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("subscription confirmation failed: {0}")]
    Confirm(String),
    #[error("shutting down")]
    ShuttingDown,
}

impl IngestError {
    pub fn status(&self) -> u16 {
        match self {
            IngestError::Sns(e) => e.status(),
            IngestError::Store(_) | IngestError::Confirm(_) | IngestError::ShuttingDown => 503,
        }
    }

    pub fn label(&self) -> &'static str {
        match self {
            IngestError::Sns(e) => e.label(),
            IngestError::Store(StoreError::Full(_)) => "store_full",
            IngestError::Store(_) => "store_unavailable",
            IngestError::Confirm(_) => "confirm_failed",
            IngestError::ShuttingDown => "shutting_down",
        }
    }
}

/// The assembled pipeline.
pub struct Gateway {
    verifier: Verifier,
    dedup: Dedup,
    config: Arc<ConfigHandle>,
    store: Store,
    deliver: Deliverer,
    metrics: Metrics,
    /// False once shutdown starts: new messages get 503 so SNS retries elsewhere or later.
    accepting: AtomicBool,
}

impl Gateway {
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// One SNS request, from raw body to answer.
    pub async fn handle_sns(&self, raw_delivery: bool, body: &[u8]) -> Result<Outcome, IngestError> {
        if !self.accepting.load(Ordering::SeqCst) {
            return Err(IngestError::ShuttingDown);
        }
        if raw_delivery {
            return Err(SnsError::RawDelivery.into());
        }
        let message = sns::SnsMessage::parse(body)?;
        self.metrics.received.get_or_create(&[("type", message.kind.label())]).inc();
        let config = self.config.get();
        let allowed = |topic: &str| config.sns.topic_allowed(topic);
        let policy = Policy { topic_allowed: &allowed, max_age: config.sns.max_age };
        let verified = self.verifier.verify(message, &policy).await?;
        match verified.get().kind {
            MessageType::Notification => self.accept(verified, &config).await,
            MessageType::SubscriptionConfirmation => self.confirm(verified, &config).await,
            MessageType::UnsubscribeConfirmation => {
                self.metrics.unsubscribe_confirmations.inc();
                tracing::warn!(topic = %verified.get().topic_arn, "UnsubscribeConfirmation: this endpoint was unsubscribed from the topic");
                Ok(Outcome::UnsubscribeSeen)
            }
        }
    }

    async fn accept(&self, verified: VerifiedMessage, config: &Config) -> Result<Outcome, IngestError> {
        let m = verified.into_inner();
        let expires = dedup::expires_at(m.timestamp, config.sns.max_age);
        let key = MessageKey::of(&m.message_id);
        if self.dedup.claim(key, expires) == Claim::Duplicate {
            self.metrics.duplicates.inc();
            tracing::debug!(message_id = %m.message_id, "duplicate MessageId dropped");
            return Ok(Outcome::Duplicate);
        }
        let message_id = m.message_id.clone();
        let notification = Notification::from_envelope(Envelope {
            message_id: m.message_id,
            topic_arn: m.topic_arn,
            subject: m.subject,
            message: m.message,
            timestamp: m.timestamp_raw,
            fallback_from: None,
        });
        let severity = config.severity.classify(&notification);
        let decision = config.router.route(&Facts::of(&notification, &severity));
        for r in &decision.routes {
            self.metrics.route_matches.get_or_create(&Metrics::named("route", r)).inc();
        }
        match self.store.accept(&notification.envelope, decision.destinations, Some((key, expires))).await {
            Ok(deliveries) if deliveries.is_empty() => {
                self.metrics.unrouted.inc();
                let alarm = notification.alarm.as_ref().map_or("", |a| a.name.as_str());
                match &decision.muted {
                    Some(route) => {
                        tracing::info!(message_id = %message_id, alarm = %alarm, route = %route, "notification muted by route")
                    }
                    None => tracing::info!(message_id = %message_id, alarm = %alarm, "notification matched no route"),
                }
                Ok(Outcome::Unrouted)
            }
            Ok(mut deliveries) => {
                self.metrics.accepted.inc();
                let alarm = notification.alarm.as_ref().map_or("", |a| a.name.as_str());
                let routes = decision.routes.join(",");
                tracing::info!(message_id = %message_id, alarm = %alarm, severity = %severity, routes = %routes, "notification accepted");
                let prepared = Arc::new(route::Prepared { notification, severity });
                for d in &mut deliveries {
                    d.prepared = Some(prepared.clone());
                }
                self.deliver.enqueue(deliveries);
                Ok(Outcome::Accepted)
            }
            Err(e) => {
                // Not stored, so not promised: let SNS's retry be accepted.
                self.dedup.release(key);
                Err(e.into())
            }
        }
    }

    async fn confirm(&self, verified: VerifiedMessage, config: &Config) -> Result<Outcome, IngestError> {
        let topic = &verified.get().topic_arn;
        if !config.sns.auto_confirm {
            self.metrics.subscriptions.get_or_create(&[("outcome", "auto_confirm_off")]).inc();
            tracing::warn!(topic = %topic, "SubscriptionConfirmation received; auto_confirm is off, confirm it by hand");
            return Ok(Outcome::SubscriptionNotConfirmed);
        }
        match self.verifier.confirm_subscription(&verified).await {
            Ok(()) => {
                self.metrics.subscriptions.get_or_create(&[("outcome", "confirmed")]).inc();
                tracing::info!(topic = %topic, "subscription confirmed");
                Ok(Outcome::SubscriptionConfirmed)
            }
            Err(ConfirmError::Refused(e)) => Err(e.into()),
            Err(ConfirmError::Fetch(e)) => {
                self.metrics.subscriptions.get_or_create(&[("outcome", "failed")]).inc();
                tracing::error!(topic = %topic, error = %e, "subscription confirmation failed; SNS will resend");
                Err(IngestError::Confirm(e.to_string()))
            }
        }
    }
}

/// Everything `serve` can be told.
#[derive(Clone)]
pub struct Settings {
    pub config: PathBuf,
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub tls: Option<(PathBuf, PathBuf)>,
    pub data_dir: PathBuf,
    pub sns_cert_dir: Option<PathBuf>,
    pub dev_url_prefixes: Vec<String>,
    pub shutdown_timeout: Duration,
    pub limits: server::Limits,
    /// Most messages held undelivered before /sns answers 503.
    pub max_stored: u64,
    /// Deliveries each destination keeps in memory; the rest wait in the store only.
    pub queue_cap: usize,
    /// Test seams: a fetcher trusting a local CA, and an injected clock.
    pub fetcher: Option<Fetcher>,
    pub clock: Option<Clock>,
    pub webhook_timeout: Duration,
}

impl Settings {
    pub fn new(config: PathBuf, data_dir: PathBuf) -> Settings {
        Settings {
            config,
            listen: ([0, 0, 0, 0], 8080).into(),
            admin_listen: ([127, 0, 0, 1], 9090).into(),
            tls: None,
            data_dir,
            sns_cert_dir: None,
            dev_url_prefixes: Vec::new(),
            shutdown_timeout: Duration::from_secs(20),
            limits: server::Limits::default(),
            max_stored: 200_000,
            queue_cap: deliver::DEFAULT_QUEUE_CAP,
            fetcher: None,
            clock: None,
            webhook_timeout: Duration::from_secs(10),
        }
    }
}

/// A started gateway.
pub struct Running {
    pub addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub metrics: Metrics,
    trigger: ShutdownTrigger,
    done: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Starts graceful shutdown without waiting (readiness goes false at once).
    pub fn begin_shutdown(&self) {
        self.trigger.trigger();
    }

    /// Starts graceful shutdown and waits for it to complete.
    pub async fn shutdown(self) {
        self.trigger.trigger();
        let _ = self.done.await;
    }

    /// Waits for SIGTERM/SIGINT, then shuts down.
    pub async fn until_signal(self) {
        shutdown::signal().await;
        tracing::info!("shutdown signal received");
        self.shutdown().await;
    }
}

/// Loads config, opens the store, binds listeners, starts workers; returns once serving.
pub async fn start(settings: Settings) -> anyhow::Result<Running> {
    let metrics = Metrics::new();
    let (config, warnings) = Config::load(&settings.config).map_err(|e| match e {
        config::ConfigError::Invalid(problems) => {
            let lines: Vec<String> = problems.iter().map(|p| format!("{}:{p}", settings.config.display())).collect();
            anyhow::anyhow!("invalid routes file:\n{}", lines.join("\n"))
        }
        e => anyhow::anyhow!(e),
    })?;
    for w in warnings {
        tracing::warn!(path = %settings.config.display(), "{w}");
    }
    let config = Arc::new(ConfigHandle::new(config, settings.config.clone(), metrics.clone()));
    let (trigger, shutdown_rx) = shutdown::channel();
    let watcher = config::reload::spawn_reloader(config.clone(), shutdown_rx.clone())
        .map_err(|e| tracing::warn!(error = %e, "cannot watch routes file; reload on SIGHUP only"))
        .ok();

    let (store, recovered) = Store::open(&settings.data_dir, settings.max_stored, metrics.clone())
        .with_context(|| format!("opening store in {}", settings.data_dir.display()))?;
    for aside in &recovered.corrupt {
        tracing::error!(copy = %aside.display(), "store damage found at start; a copy of the file was set aside");
    }
    // Enough for the million-ids target; entries expire on their own schedule.
    let dedup = Dedup::new(2_000_000);
    for (key, exp) in recovered.dedup {
        dedup.remember(key, exp);
    }
    let deliver = Deliverer::new(
        store.clone(),
        config.clone(),
        HttpClient::new(settings.webhook_timeout),
        metrics.clone(),
        shutdown_rx.clone(),
        settings.queue_cap.max(1),
    );
    tracing::info!(pending = recovered.pending.len(), "resuming pending deliveries");
    deliver.enqueue(recovered.pending);

    let dev = DevPrefixes::new(&settings.dev_url_prefixes);
    if !dev.is_empty() {
        tracing::warn!(prefixes = ?settings.dev_url_prefixes, "--sns-dev-url-prefix set: URLs under these prefixes are trusted without the SNS host check; never use this in production");
    }
    let fetcher = settings.fetcher.clone().unwrap_or_else(|| Fetcher::new(Duration::from_secs(5)));
    let certs = CertStore::new(settings.sns_cert_dir.clone(), fetcher.clone(), metrics.clone());
    let clock = settings.clock.clone().unwrap_or_else(sns::system_clock);
    let verifier = Verifier::new(certs, fetcher, dev, clock, metrics.clone());
    let gateway = Arc::new(Gateway {
        verifier,
        dedup,
        config: config.clone(),
        store: store.clone(),
        deliver: deliver.clone(),
        metrics: metrics.clone(),
        accepting: AtomicBool::new(true),
    });

    let tls = match &settings.tls {
        Some((cert, key)) => Some(server::tls::acceptor(cert, key)?),
        None => None,
    };
    let public =
        tokio::net::TcpListener::bind(settings.listen).await.with_context(|| format!("binding {}", settings.listen))?;
    let admin = tokio::net::TcpListener::bind(settings.admin_listen)
        .await
        .with_context(|| format!("binding admin {}", settings.admin_listen))?;
    let addr = public.local_addr()?;
    let admin_addr = admin.local_addr()?;
    let ready = Arc::new(AtomicBool::new(true));
    // The admin listener outlives the drain: probes should see "not ready" (not a refused
    // connection) and the last metrics stay scrapeable until the process is done.
    let (admin_stop, admin_stopped) = shutdown::channel();
    tokio::spawn(server::serve_admin(admin, metrics.clone(), ready.clone(), admin_stopped));

    // Dead letters queued for replay by the command line: taken in now and every second.
    {
        let store = store.clone();
        let deliver = deliver.clone();
        let mut shutdown = shutdown_rx.clone();
        tokio::spawn(async move {
            loop {
                let replayed = store.take_replays().await;
                deliver.enqueue(replayed);
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = shutdown.recv() => return,
                }
            }
        });
    }

    // Gauges that are cheaper to sample on each scrape than to keep exact on every request.
    {
        let gateway = Arc::downgrade(&gateway);
        metrics.sample_on_scrape(move |m| {
            let Some(gateway) = gateway.upgrade() else { return };
            m.dedup_entries.set(gateway.dedup.len() as i64);
            let now = deliver::now_ms();
            for (destination, oldest) in gateway.deliver.oldest_pending() {
                let age = oldest.map(|t| now.saturating_sub(t) as f64 / 1000.0).unwrap_or(0.0);
                m.oldest_pending_seconds.get_or_create(&Metrics::named("destination", &destination)).set(age);
            }
        });
    }

    let limits = settings.limits;
    let grace = settings.shutdown_timeout;
    let public_task =
        tokio::spawn(server::serve_public(public, tls, gateway.clone(), limits, shutdown_rx.clone(), grace));
    let mut on_shutdown = shutdown_rx;
    let done = tokio::spawn(async move {
        on_shutdown.recv().await;
        let started = std::time::Instant::now();
        ready.store(false, Ordering::SeqCst);
        gateway.accepting.store(false, Ordering::SeqCst);
        let _ = public_task.await;
        let left = grace.saturating_sub(started.elapsed());
        if !deliver.wait_stopped(left).await {
            tracing::warn!("delivery workers did not stop within the shutdown timeout");
        }
        store.close().await;
        drop(watcher);
        admin_stop.trigger();
        tracing::info!(pending = deliver.pending(), "shut down; pending deliveries stay on disk");
    });
    tracing::info!(%addr, %admin_addr, tls = settings.tls.is_some(), "webhook-relay serving");
    Ok(Running { addr, admin_addr, metrics, trigger, done })
}
