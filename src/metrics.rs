//! Every metric the gateway exports, in one place, so an operator reading this file knows
//! the whole of /metrics. Label values are fixed vocabularies or destination/route names
//! from routes.toml: never webhook URLs, never message content.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

type Static1 = [(&'static str, &'static str); 1];
type Named = [(&'static str, String); 1];
type Named2 = [(&'static str, String); 2];

fn latency_histogram() -> Histogram {
    // 50 µs .. ~1.6 s: covers a cache-hit accept and a slow certificate fetch.
    Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
}

fn delivery_histogram() -> Histogram {
    // 1 ms .. ~9 h: accept-to-Slack includes retries and rate-limit waits.
    Histogram::new(exponential_buckets(0.001, 2.0, 25))
}

/// Handles to every metric; cheap to clone (all `Arc` inside).
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    /// SNS messages that parsed, by `type`.
    pub received: Family<Static1, Counter>,
    /// Requests refused, by `reason` (one label per rejection variant).
    pub rejected: Family<Static1, Counter>,
    /// Notifications accepted and handed to the store.
    pub accepted: Counter,
    pub duplicates: Counter,
    /// Verified notifications no route matched (answered 200).
    pub unrouted: Counter,
    pub cert_fetches: Family<Static1, Counter>,
    pub cert_cache_hits: Counter,
    pub cert_pinned_loads: Counter,
    /// Fetches trusted only because of --sns-dev-url-prefix.
    pub dev_prefix_fetches: Counter,
    pub subscriptions: Family<Static1, Counter>,
    pub unsubscribe_confirmations: Counter,
    /// Wall time of POST /sns from first body byte to answer.
    pub request_seconds: Histogram,
    pub config_reloads: Family<Static1, Counter>,
    pub config_last_reload_success: Gauge,
    pub config_last_reload_timestamp: Gauge,
    pub config_errors: Gauge,
    /// Route matches, by route name.
    pub route_matches: Family<Named, Counter>,
    pub deliveries: Family<Named2, Counter>,
    pub delivery_retries: Family<Named, Counter>,
    pub delivery_seconds: Family<Named, Histogram, fn() -> Histogram>,
    pub queue_depth: Family<Named, Gauge>,
    pub dead_letters: Family<Named, Counter>,
    pub destination_unhealthy: Family<Named, Gauge>,
    pub stored_messages: Gauge,
    pub store_batch_size: Histogram,
    pub store_commit_seconds: Histogram,
    pub store_errors: Counter,
    pub store_disk_bytes: Gauge,
    pub store_compactions: Counter,
    /// Damage found in the log at open, by kind (never silent).
    pub store_damage: Family<Static1, Counter>,
    /// Bytes passed over to salvage the frames after damaged ones.
    pub store_salvage_skipped_bytes: Counter,
    /// MessageIds currently remembered (sampled when /metrics is scraped).
    pub dedup_entries: Gauge,
    /// Age of the oldest delivery still waiting, by destination (sampled on scrape): the
    /// queue depth says how much is waiting, this says for how long.
    pub oldest_pending_seconds: Family<Named, Gauge<f64, AtomicU64>>,
    /// Public connections open (sampled at each accept).
    pub connections_open: Gauge,
    /// Connections closed at accept, by reason (`per_ip_limit`).
    pub connections_refused: Family<Static1, Counter>,
    /// `Retry-After` answers longer than the destination's `max_retry_after`, clamped.
    pub retry_after_clamped: Family<Named, Counter>,
    /// SNS API calls that failed, by AWS's error code (or NoCredentials, Unreachable).
    pub sns_api_errors: Family<Named, Counter>,
    /// 1, labelled with the proxy's host, when outbound requests go through a proxy.
    pub outbound_proxy: Family<Named, Gauge>,
    /// Cluster mode: 1 while connected to NATS.
    pub cluster_connected: Gauge,
    /// Cluster mode: deliveries pending in JetStream, by destination (the whole cluster's).
    pub cluster_pending: Family<Named, Gauge>,
    /// Cluster mode: destination leases this replica holds (it posts for those).
    pub cluster_leases_held: Gauge,
    /// The standard `process_*` metrics, unprefixed as every Prometheus client names them.
    process: Arc<Process>,
    /// Called before each render, to sample gauges that are cheaper to read than to keep.
    samplers: Arc<Mutex<Vec<Sampler>>>,
}

type Sampler = Box<dyn Fn(&Metrics) + Send + Sync>;

/// `process_*` from /proc/self. prometheus-client has no process collector (the
/// `prometheus` crate's needs its own registry type), and four numbers are a few reads.
struct Process {
    registry: Registry,
    cpu_seconds: Counter<f64, AtomicU64>,
    resident_memory_bytes: Gauge,
    open_fds: Gauge,
}

impl Process {
    fn new() -> Process {
        let mut registry = Registry::default();
        let cpu_seconds = Counter::<f64, AtomicU64>::default();
        let resident_memory_bytes = Gauge::default();
        let open_fds = Gauge::default();
        let start_time: Gauge = Gauge::default();
        start_time.set(
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0),
        );
        registry.register("process_cpu_seconds", "User and system CPU time spent, in seconds", cpu_seconds.clone());
        registry.register(
            "process_resident_memory_bytes",
            "Resident memory size, in bytes",
            resident_memory_bytes.clone(),
        );
        registry.register("process_open_fds", "Open file descriptors", open_fds.clone());
        registry.register(
            "process_start_time_seconds",
            "Start time of the process since the Unix epoch, in seconds",
            start_time,
        );
        Process { registry, cpu_seconds, resident_memory_bytes, open_fds }
    }

    /// Linux only; elsewhere the values stay 0.
    fn sample(&self) {
        if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
            // Fields after the command name (which may hold spaces) start at the state, field 3.
            let fields: Vec<&str> =
                stat.rsplit_once(')').map(|(_, r)| r.split_whitespace().collect()).unwrap_or_default();
            let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
            let per_second = rustix::param::clock_ticks_per_second() as f64;
            let total = (ticks(11) + ticks(12)) / per_second.max(1.0);
            let delta = total - self.cpu_seconds.get();
            if delta > 0.0 {
                self.cpu_seconds.inc_by(delta);
            }
        }
        if let Ok(statm) = std::fs::read_to_string("/proc/self/statm") {
            let pages = statm.split_whitespace().nth(1).and_then(|v| v.parse::<i64>().ok()).unwrap_or(0);
            self.resident_memory_bytes.set(pages * rustix::param::page_size() as i64);
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            self.open_fds.set(fds.count() as i64);
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut r = Registry::with_prefix("webhook_relay");
        macro_rules! reg {
            ($name:literal, $help:literal, $metric:expr) => {{
                let m = $metric;
                r.register($name, $help, m.clone());
                m
            }};
        }
        let received = reg!("sns_received", "SNS messages parsed, by type", Family::default());
        let rejected = reg!("sns_rejected", "Requests refused, by reason", Family::default());
        let accepted = reg!("sns_accepted", "Notifications accepted (stored for delivery)", Counter::default());
        let duplicates = reg!("sns_duplicates", "Notifications dropped as duplicate MessageId", Counter::default());
        let unrouted = reg!("sns_unrouted", "Verified notifications that matched no route", Counter::default());
        let cert_fetches = reg!("cert_fetches", "Signing certificate loads by outcome", Family::default());
        let cert_cache_hits = reg!("cert_cache_hits", "Signing certificate cache hits", Counter::default());
        let cert_pinned_loads =
            reg!("cert_pinned_loads", "Signing certificates answered from --sns-cert-dir", Counter::default());
        let dev_prefix_fetches =
            reg!("dev_prefix_fetches", "URLs fetched only because they match --sns-dev-url-prefix", Counter::default());
        let subscriptions =
            reg!("subscription_confirmations", "SubscriptionConfirmation handling by outcome", Family::default());
        let unsubscribe_confirmations =
            reg!("unsubscribe_confirmations", "UnsubscribeConfirmation messages seen", Counter::default());
        let request_seconds = reg!("sns_request_seconds", "POST /sns handling time", latency_histogram());
        let config_reloads = reg!("config_reloads", "routes.toml reloads by outcome", Family::default());
        let config_last_reload_success = reg!(
            "config_last_reload_success",
            "1 if the last routes.toml reload was applied, 0 if it was refused",
            Gauge::default()
        );
        let config_last_reload_timestamp = reg!(
            "config_last_reload_timestamp_seconds",
            "Unix time of the last routes.toml reload attempt",
            Gauge::default()
        );
        let config_errors = reg!(
            "config_errors",
            "Problems found in the routes.toml that was last refused (0 when applied)",
            Gauge::default()
        );
        let route_matches = reg!("route_matches", "Notifications matched, by route", Family::default());
        let deliveries = reg!("deliveries", "Delivery attempts by destination and outcome", Family::default());
        let delivery_retries = reg!("delivery_retries", "Delivery retries by destination", Family::default());
        let delivery_seconds = reg!(
            "delivery_seconds",
            "Time from accept to Slack 2xx, by destination",
            Family::<Named, Histogram, fn() -> Histogram>::new_with_constructor(delivery_histogram)
        );
        let queue_depth = reg!("queue_depth", "Pending deliveries, by destination", Family::default());
        let dead_letters =
            reg!("dead_letters", "Deliveries given up and dead-lettered, by destination", Family::default());
        let destination_unhealthy = reg!(
            "destination_unhealthy",
            "1 when Slack said the webhook itself is gone (no_service, channel_is_archived, ...)",
            Family::default()
        );
        let stored_messages = reg!("store_messages", "Messages held in the durable store", Gauge::default());
        let store_batch_size = reg!(
            "store_commit_batch_size",
            "Messages per durable commit (group commit)",
            Histogram::new(exponential_buckets(1.0, 2.0, 12))
        );
        let store_commit_seconds = reg!("store_commit_seconds", "Durable commit (fsync) latency", latency_histogram());
        let store_errors = reg!("store_errors", "Durable store write failures", Counter::default());
        let store_disk_bytes =
            reg!("store_disk_bytes", "Bytes of log segments and keys files on disk", Gauge::default());
        let store_compactions =
            reg!("store_compactions", "Log segments reclaimed (live messages carried forward)", Counter::default());
        let store_damage = reg!(
            "store_damage",
            "Damage found in the log at open (damaged frame, empty, missing or out-of-sequence segment), by kind",
            Family::default()
        );
        let store_salvage_skipped_bytes = reg!(
            "store_salvage_skipped_bytes",
            "Bytes of damaged log passed over to salvage the frames after them",
            Counter::default()
        );
        let dedup_entries = reg!("dedup_entries", "MessageIds remembered for duplicate detection", Gauge::default());
        let oldest_pending_seconds = reg!(
            "oldest_pending_seconds",
            "Age of the oldest delivery waiting, by destination (0 when none waits)",
            Family::default()
        );
        let connections_open = reg!("connections_open", "Public connections open", Gauge::default());
        let connections_refused =
            reg!("connections_refused", "Connections closed at accept, by reason", Family::default());
        let retry_after_clamped = reg!(
            "retry_after_clamped",
            "Retry-After answers longer than max_retry_after, clamped to it, by destination",
            Family::default()
        );
        let sns_api_errors = reg!("sns_api_errors", "SNS API calls that failed, by AWS error code", Family::default());
        let outbound_proxy = reg!(
            "outbound_proxy",
            "1 when outbound requests go through a proxy; the label is its host (never credentials)",
            Family::default()
        );
        let cluster_connected = reg!("cluster_connected", "Cluster mode: 1 while connected to NATS", Gauge::default());
        let cluster_pending = reg!(
            "cluster_pending",
            "Cluster mode: deliveries pending in JetStream for the whole cluster, by destination",
            Family::default()
        );
        let cluster_leases_held = reg!(
            "cluster_leases_held",
            "Cluster mode: destination leases this replica holds (it posts for those)",
            Gauge::default()
        );
        let build_info: Family<[(&'static str, &'static str); 1], Gauge> =
            reg!("build_info", "Always 1; the version label says which build runs", Family::default());
        build_info.get_or_create(&[("version", env!("CARGO_PKG_VERSION"))]).set(1);
        Metrics {
            registry: Arc::new(r),
            received,
            rejected,
            accepted,
            duplicates,
            unrouted,
            cert_fetches,
            cert_cache_hits,
            cert_pinned_loads,
            dev_prefix_fetches,
            subscriptions,
            unsubscribe_confirmations,
            request_seconds,
            config_reloads,
            config_last_reload_success,
            config_last_reload_timestamp,
            config_errors,
            route_matches,
            deliveries,
            delivery_retries,
            delivery_seconds,
            queue_depth,
            dead_letters,
            destination_unhealthy,
            stored_messages,
            store_batch_size,
            store_commit_seconds,
            store_errors,
            store_disk_bytes,
            store_compactions,
            store_damage,
            store_salvage_skipped_bytes,
            dedup_entries,
            oldest_pending_seconds,
            outbound_proxy,
            sns_api_errors,
            retry_after_clamped,
            connections_open,
            connections_refused,
            cluster_connected,
            cluster_pending,
            cluster_leases_held,
            process: Arc::new(Process::new()),
            samplers: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        for sample in self.samplers.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            sample(self);
        }
        self.process.sample();
        let mut out = String::new();
        // Writing into a String cannot fail. Each encode ends with "# EOF": keep the last.
        let _ = encode(&mut out, &self.process.registry);
        if out.ends_with("# EOF\n") {
            out.truncate(out.len() - "# EOF\n".len());
        }
        let _ = encode(&mut out, &self.registry);
        out
    }

    /// Registers a gauge sampler run on every scrape. It must not hold what owns these
    /// metrics strongly (take a `Weak`), or neither is ever dropped.
    pub fn sample_on_scrape(&self, sampler: impl Fn(&Metrics) + Send + Sync + 'static) {
        self.samplers.lock().unwrap_or_else(|p| p.into_inner()).push(Box::new(sampler));
    }

    pub fn reject(&self, reason: &'static str) {
        self.rejected.get_or_create(&[("reason", reason)]).inc();
    }

    pub fn delivery(&self, destination: &str, outcome: &'static str) {
        self.deliveries
            .get_or_create(&[("destination", destination.to_string()), ("outcome", outcome.to_string())])
            .inc();
    }

    pub fn named(label: &'static str, value: &str) -> Named {
        [(label, value.to_string())]
    }
}
