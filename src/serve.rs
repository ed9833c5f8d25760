//! `serve`: assembles the stages into a running gateway (store, dedup memory, delivery
//! workers, verifier, listeners, reload and shutdown), in the order they must start.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use crate::config::reload::ConfigHandle;
use crate::config::{self, Config};
use crate::deliver::{self, slack, slack_app, Deliverer, Sinks};
use crate::ingest::Gateway;
use crate::metrics::Metrics;
use crate::outbound::{Outbound, OutboundConfig};
use crate::queue::Queue;
use crate::server;
use crate::shutdown::{self, ShutdownTrigger};
use crate::sns::{self, CertStore, Clock, DevPrefixes, Fetcher, Verifier};
use crate::store::Store;

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
    /// The outbound client: trusted roots, extra CA, proxy.
    pub outbound: OutboundConfig,
    /// The `AWS_*` environment (credentials, endpoints) for `confirm = "api"`. Empty unless
    /// the caller captures the process's.
    pub aws_env: crate::aws::Env,
    /// Test seam: an injected clock.
    pub clock: Option<Clock>,
    /// The Slack Web API's base URL (`--slack-api-url`).
    pub slack_api_url: String,
    /// Test seam: the sinks destinations deliver through (default: Slack webhooks).
    pub sinks: Option<Sinks>,
    pub webhook_timeout: Duration,
    /// Cluster mode (`--nats`): NATS JetStream instead of the local store in `data_dir`.
    pub nats: Option<crate::cluster::NatsSettings>,
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
            outbound: OutboundConfig::default(),
            aws_env: crate::aws::Env::default(),
            clock: None,
            sinks: None,
            slack_api_url: "https://slack.com/api/".into(),
            webhook_timeout: Duration::from_secs(10),
            nats: None,
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
    let mut nats_queue: Option<Arc<crate::cluster::NatsQueue>> = None;
    let watcher = config::reload::spawn_reloader(config.clone(), shutdown_rx.clone())
        .map_err(|e| tracing::warn!(error = %e, "cannot watch routes file; reload on SIGHUP only"))
        .ok();

    let mut recovered_pending = Vec::new();
    let queue: Arc<dyn Queue> = match &settings.nats {
        None => {
            let (store, recovered) = Store::open(&settings.data_dir, settings.max_stored, metrics.clone())
                .with_context(|| format!("opening store in {}", settings.data_dir.display()))?;
            for aside in &recovered.corrupt {
                tracing::error!(copy = %aside.display(), "store damage found at start; a copy of the file was set aside");
            }
            recovered_pending = recovered.pending;
            Arc::new(store)
        }
        Some(nats) => {
            // MessageIds are remembered as long as SNS may still deliver them (max_age from
            // the Timestamp, plus clock skew), and at least an hour. Fixed when the bucket is
            // created; see docs/operations.md to change it later.
            let horizon = config.get().sns.max_age.max(Duration::from_secs(3600)) + Duration::from_secs(600);
            tracing::info!(nats = %crate::cluster::names_shown(nats), "cluster mode: the queue is NATS JetStream");
            let queue = crate::cluster::NatsQueue::start(nats, horizon, metrics.clone(), shutdown_rx.clone())
                .await
                .context("connecting to NATS")?;
            nats_queue = Some(queue.clone());
            queue
        }
    };
    let outbound = Outbound::new(&settings.outbound)?;
    if let Some(host) = outbound.proxy_host() {
        tracing::info!(proxy = %host, "outbound requests go through a proxy (NO_PROXY exempts hosts)");
        metrics.outbound_proxy.get_or_create(&Metrics::named("proxy_host", host)).set(1);
    }
    let sinks = settings.sinks.clone().unwrap_or_else(|| Sinks {
        webhook: Arc::new(slack::Webhook::new(outbound.clone(), settings.webhook_timeout)),
        app: Some(Arc::new(slack_app::SlackApp::new(
            outbound.clone(),
            &settings.slack_api_url,
            settings.webhook_timeout,
            queue.clone(),
        ))),
    });
    let deliver = Deliverer::new(
        queue.clone(),
        config.clone(),
        sinks,
        metrics.clone(),
        shutdown_rx.clone(),
        settings.queue_cap.max(1),
        if nats_queue.is_some() { deliver::Feed::Leased } else { deliver::Feed::Local },
    );
    let leases = nats_queue.as_ref().map(|nats| {
        crate::cluster::leases::Leases::spawn(
            nats.clone(),
            deliver.clone(),
            config.clone(),
            metrics.clone(),
            shutdown_rx.clone(),
        )
    });
    if nats_queue.is_none() {
        tracing::info!(pending = recovered_pending.len(), "resuming pending deliveries");
        deliver.enqueue(recovered_pending);
    }

    let dev = DevPrefixes::new(&settings.dev_url_prefixes);
    if !dev.is_empty() {
        tracing::warn!(prefixes = ?settings.dev_url_prefixes, "--sns-dev-url-prefix set: URLs under these prefixes are trusted without the SNS host check; never use this in production");
    }
    let sns_api = crate::aws::sns_api::SnsApi::new(settings.aws_env.clone(), outbound.clone());
    let fetcher = Fetcher::new(outbound, Duration::from_secs(5));
    let certs = CertStore::new(settings.sns_cert_dir.clone(), fetcher.clone(), metrics.clone());
    let clock = settings.clock.clone().unwrap_or_else(sns::system_clock);
    let verifier = Verifier::new(certs, fetcher, dev, clock, metrics.clone());
    let gateway = Arc::new(Gateway {
        verifier,
        sns_api,
        config: config.clone(),
        queue: queue.clone(),
        deliver: deliver.clone(),
        metrics: metrics.clone(),
        accepting: AtomicBool::new(true),
        route_counters: Default::default(),
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
    let readiness: Arc<dyn Fn() -> bool + Send + Sync> = {
        let (ready, queue) = (ready.clone(), queue.clone());
        Arc::new(move || ready.load(Ordering::SeqCst) && queue.ready())
    };
    tokio::spawn(server::serve_admin(admin, metrics.clone(), readiness, admin_stopped));

    // Dead letters queued for replay by the command line: taken in now and every second.
    deliver.spawn_replay_intake();

    // Gauges that are cheaper to sample on each scrape than to keep exact on every request.
    {
        let gateway = Arc::downgrade(&gateway);
        metrics.sample_on_scrape(move |m| {
            let Some(gateway) = gateway.upgrade() else { return };
            m.dedup_entries.set(gateway.queue.remembered_ids() as i64);
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
        if let Some(leases) = leases {
            // Gives the leases back so other replicas take over at once.
            let _ = tokio::time::timeout(Duration::from_secs(5), leases).await;
        }
        queue.close().await;
        drop(watcher);
        admin_stop.trigger();
        tracing::info!(pending = deliver.pending(), "shut down; pending deliveries stay in the queue");
    });
    tracing::info!(%addr, %admin_addr, tls = settings.tls.is_some(), "webhook-relay serving");
    Ok(Running { addr, admin_addr, metrics, trigger, done })
}
