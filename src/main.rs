//! Command line: parse, then hand off to the library. No logic lives here.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use webhook_relay::commands::{self, dead_letters::Action};

// Optional (feature `mimalloc`): faster than glibc malloc on the accept path, which allocates
// many small strings, at the cost of more resident memory; see BENCHMARKS.md.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "webhook-relay", version, about = "Verified Amazon SNS -> Slack gateway for CloudWatch alarms")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve(Box<Serve>),
    /// Validate a routes file; print every problem with its line; exit 1 if any. With
    /// --nats, also whether the NATS cluster is reachable with JetStream on.
    Check {
        #[arg(long, env = "WEBHOOK_RELAY_CONFIG", default_value = "routes.toml")]
        config: PathBuf,
        #[command(flatten)]
        nats: NatsArgs,
    },
    /// Print which routes and destinations a message would go to, sending nothing.
    RouteTest {
        #[arg(long, env = "WEBHOOK_RELAY_CONFIG", default_value = "routes.toml")]
        config: PathBuf,
        /// Also print the JSON each destination would receive.
        #[arg(long, env = "WEBHOOK_RELAY_PAYLOAD")]
        payload: bool,
        /// An SNS message or a bare CloudWatch alarm JSON file.
        message: PathBuf,
    },
    /// A self-contained end-to-end run on 127.0.0.1: real gateway, fresh signing key, stand-in Slack.
    Demo,
    /// Look inside the local log, read-only (running or not).
    Queue {
        #[arg(long, env = "WEBHOOK_RELAY_DATA_DIR", default_value = "./data", global = true)]
        data_dir: PathBuf,
        #[command(subcommand)]
        action: QueueCommand,
    },
    /// Inspect and re-send what could not be delivered (local files, or the cluster's with
    /// --nats).
    DeadLetters {
        #[arg(long, env = "WEBHOOK_RELAY_DATA_DIR", default_value = "./data", global = true)]
        data_dir: PathBuf,
        #[command(flatten)]
        nats: NatsArgs,
        #[command(subcommand)]
        action: DeadLetterCommand,
    },
}

/// Cluster mode: where NATS is and what to call things in it.
#[derive(clap::Args)]
struct NatsArgs {
    /// NATS URLs (nats://[user:password@]host:port), comma-separated. With it `serve` runs in
    /// cluster mode: the queue, dedup and dead letters live in NATS JetStream, shared by
    /// every replica, and --data-dir is not used.
    #[arg(long, env = "WEBHOOK_RELAY_NATS", value_delimiter = ',', global = true)]
    nats: Vec<String>,
    /// A NATS credentials file (never printed).
    #[arg(long, env = "WEBHOOK_RELAY_NATS_CREDS", global = true)]
    nats_creds: Option<PathBuf>,
    /// Names the streams and buckets (<prefix>-msgs, <prefix>-seen, ...).
    #[arg(long, env = "WEBHOOK_RELAY_NATS_PREFIX", default_value = "webhook-relay", global = true)]
    nats_prefix: String,
    /// Replicas of the streams and buckets `serve` creates (3 on a 3-node cluster: each
    /// accept is then held by a quorum before the 200). Existing ones keep theirs.
    #[arg(long, env = "WEBHOOK_RELAY_NATS_REPLICAS", default_value_t = 1, global = true)]
    nats_replicas: usize,
}

impl NatsArgs {
    fn settings(self) -> Option<webhook_relay::cluster::NatsSettings> {
        if self.nats.is_empty() {
            return None;
        }
        Some(webhook_relay::cluster::NatsSettings {
            urls: self.nats,
            creds: self.nats_creds,
            prefix: self.nats_prefix,
            replicas: self.nats_replicas,
        })
    }
}

#[derive(Subcommand)]
enum QueueCommand {
    /// Segments, bytes, pending messages per destination and the oldest's age.
    Stats,
    /// Pending messages, oldest first.
    List {
        /// Only those waiting for this destination.
        #[arg(long)]
        destination: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// One pending message's record.
    Show { seq: u64 },
}

#[derive(Subcommand)]
enum DeadLetterCommand {
    /// One line per dead letter.
    List,
    /// One dead letter, whole.
    Show { id: String },
    /// Queue dead letters for redelivery.
    Replay {
        /// Dead letter ids (from `list`).
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        ids: Vec<String>,
        /// Every dead letter. Never read from the environment: a stray variable must not
        /// turn a one-id command into an all-ids one.
        #[arg(long)]
        all: bool,
    },
    /// Delete dead letters.
    Purge {
        /// Dead letter ids (from `list`).
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        ids: Vec<String>,
        /// Every dead letter (needs --yes). Never read from the environment.
        #[arg(long, requires = "yes")]
        all: bool,
        /// Confirm `--all`: the deletion cannot be undone.
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Parser)]
struct Serve {
    /// Routes file; re-read on change and on SIGHUP.
    #[arg(long, env = "WEBHOOK_RELAY_CONFIG", default_value = "routes.toml")]
    config: PathBuf,
    /// Public listener: POST /sns, and GET /healthz for load balancers.
    #[arg(long, env = "WEBHOOK_RELAY_LISTEN", default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    /// /healthz, /readyz, /metrics.
    #[arg(long, env = "WEBHOOK_RELAY_ADMIN_LISTEN", default_value = "127.0.0.1:9090")]
    admin_listen: SocketAddr,
    /// Serve HTTPS with this certificate chain (PEM); re-read within 10 s of a change.
    #[arg(long, env = "WEBHOOK_RELAY_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key for --tls-cert (PEM).
    #[arg(long, env = "WEBHOOK_RELAY_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// The durable queue, remembered MessageIds and dead letters.
    #[arg(long, env = "WEBHOOK_RELAY_DATA_DIR", default_value = "./data")]
    data_dir: PathBuf,
    #[command(flatten)]
    nats: NatsArgs,
    /// Pinned signing certificates, by file name.
    #[arg(long, env = "WEBHOOK_RELAY_SNS_CERT_DIR")]
    sns_cert_dir: Option<PathBuf>,
    /// Trust and fetch URLs under this prefix (SNS emulators only). Repeatable.
    #[arg(long, env = "WEBHOOK_RELAY_SNS_DEV_URL_PREFIX", value_delimiter = ',')]
    sns_dev_url_prefix: Vec<String>,
    /// Log lines on stderr as text or JSON; the level comes from WEBHOOK_RELAY_LOG (e.g. debug).
    #[arg(long, env = "WEBHOOK_RELAY_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
    /// On SIGTERM/SIGINT: how long in-flight requests and posts may take to finish.
    #[arg(long, env = "WEBHOOK_RELAY_SHUTDOWN_TIMEOUT", default_value = "20s", value_parser = humantime::parse_duration)]
    shutdown_timeout: Duration,
    /// Largest accepted request body, in bytes.
    #[arg(long, env = "WEBHOOK_RELAY_MAX_BODY", default_value_t = 1024 * 1024)]
    max_body: usize,
    /// Most open connections on the public listener.
    #[arg(long, env = "WEBHOOK_RELAY_MAX_CONNECTIONS", default_value_t = 4096)]
    max_connections: usize,
    /// Most open connections from one client address (0: no limit; behind a load
    /// balancer all connections share its address).
    #[arg(long, env = "WEBHOOK_RELAY_MAX_CONNECTIONS_PER_IP", default_value_t = 64)]
    max_connections_per_ip: usize,
    /// Most undelivered messages kept before /sns answers 503.
    #[arg(long, env = "WEBHOOK_RELAY_MAX_STORED", default_value_t = 200_000)]
    max_stored: u64,
    /// CA roots trusted for outbound TLS (Slack, SNS certificates): webpki (built in),
    /// system (the platform store, SSL_CERT_FILE included) or both.
    #[arg(long, env = "WEBHOOK_RELAY_TLS_ROOTS", default_value = "both")]
    tls_roots: webhook_relay::outbound::TlsRoots,
    /// A PEM bundle trusted in addition for outbound TLS (an inspecting proxy's CA).
    #[arg(long, env = "WEBHOOK_RELAY_EXTRA_CA")]
    extra_ca: Option<PathBuf>,
    /// The Slack Web API's base URL, for app destinations (token + channel).
    #[arg(long, env = "WEBHOOK_RELAY_SLACK_API_URL", default_value = "https://slack.com/api/")]
    slack_api_url: String,
    /// A proxy for every outbound request, instead of HTTPS_PROXY/HTTP_PROXY from the
    /// environment; NO_PROXY still exempts hosts. Credentials in the URL are never logged.
    #[arg(long, env = "WEBHOOK_RELAY_PROXY")]
    proxy: Option<String>,
}

fn init_logging(format: LogFormat) {
    let spec = std::env::var("WEBHOOK_RELAY_LOG").unwrap_or_else(|_| "info".into());
    // The file watcher's own trace lines describe every event in the config's directory;
    // with the log written into that directory each line is another event: a feedback loop
    // (measured: 57 MB in 3 s). Its crates stay at info unless named explicitly.
    let quiet: String =
        ["notify", "inotify", "mio"].iter().filter(|t| !spec.contains(*t)).map(|t| format!(",{t}=info")).collect();
    let filter = tracing_subscriber::EnvFilter::try_new(format!("{spec}{quiet}"))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only on a terminal: a pod's log or a file must not carry escape codes.
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut out = std::io::stdout();
    let code = match cli.command {
        Command::Serve(s) => {
            init_logging(s.log_format);
            serve(*s)
        }
        Command::Demo => commands::demo::run(&mut out),
        Command::Check { config, nats } => {
            let code = commands::check::run(&config, &mut out);
            match nats.settings() {
                None => code,
                Some(settings) => code.max(commands::check::nats(&settings, &mut out)),
            }
        }
        Command::RouteTest { config, payload, message } => {
            commands::route_test::run(&config, &message, payload, &mut out)
        }
        Command::Queue { data_dir, action } => {
            let action = match action {
                QueueCommand::Stats => commands::queue::Action::Stats,
                QueueCommand::List { destination, limit } => commands::queue::Action::List { destination, limit },
                QueueCommand::Show { seq } => commands::queue::Action::Show(seq),
            };
            commands::queue::run(&data_dir, action, &mut out)
        }
        Command::DeadLetters { data_dir, nats, action } => {
            let (action, all) = match action {
                DeadLetterCommand::List => (Action::List, false),
                DeadLetterCommand::Show { id } => (Action::Show(id), false),
                DeadLetterCommand::Replay { ids, all } => (Action::Replay(ids), all),
                DeadLetterCommand::Purge { ids, all, yes: _ } => (Action::Purge(ids), all),
            };
            match nats.settings() {
                None => commands::dead_letters::run(&data_dir, action, all, &mut out),
                Some(settings) => match webhook_relay::cluster::dead_letters::NatsLetters::open(&settings) {
                    Ok(letters) => commands::dead_letters::run_on(&letters, action, all, &mut out),
                    Err(e) => {
                        let _ = writeln!(out, "{e}");
                        1
                    }
                },
            }
        }
    };
    ExitCode::from(code as u8)
}

fn serve(s: Serve) -> i32 {
    let mut settings = webhook_relay::Settings::new(s.config, s.data_dir);
    settings.listen = s.listen;
    settings.admin_listen = s.admin_listen;
    settings.tls = s.tls_cert.zip(s.tls_key);
    settings.sns_cert_dir = s.sns_cert_dir;
    settings.dev_url_prefixes = s.sns_dev_url_prefix;
    settings.shutdown_timeout = s.shutdown_timeout;
    settings.limits.max_body = s.max_body;
    settings.limits.max_connections = s.max_connections.max(1);
    settings.limits.max_per_ip = s.max_connections_per_ip;
    settings.max_stored = s.max_stored;
    settings.outbound.roots = s.tls_roots;
    settings.outbound.extra_ca = s.extra_ca;
    settings.outbound.proxy = s.proxy;
    settings.slack_api_url = s.slack_api_url;
    settings.aws_env = webhook_relay::aws::Env::from_process();
    settings.nats = s.nats.settings();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start runtime: {e}");
            return 1;
        }
    };
    runtime.block_on(async {
        match webhook_relay::start(settings).await {
            Ok(running) => {
                running.until_signal().await;
                0
            }
            Err(e) => {
                tracing::error!("{e:#}");
                eprintln!("webhook-relay: {e:#}");
                1
            }
        }
    })
}
