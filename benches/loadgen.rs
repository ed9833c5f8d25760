//! Load generator for the whole gateway (127.0.0.1 only; every phase bounded in count and
//! time). Run: `cargo bench --bench loadgen` (env knobs below). It
//! 1. pre-signs N unique CloudWatch alarm notifications with a fresh pinned test key (cached
//!    under target/tmp so reruns skip the signing),
//! 2. measures the HTTP floor: a trivial hyper server answering 200, driven the same way,
//! 3. starts the release `webhook-relay serve` as a separate process (so its CPU and memory
//!    come from /proc) with a fast counting Slack sink, drives it flat out over keep-alive
//!    connections, then waits until every accepted notification reached the sink,
//! 4. drives a fresh gateway at a fixed rate for latency percentiles,
//! 5. times start-up with an empty data dir and with 100,000 pending deliveries,
//! 6. measures the memory of one million remembered MessageIds and the signature check
//!    against `openssl speed rsa2048`.
//!
//! Knobs: LOADGEN_N (600000), LOADGEN_SECS (15), LOADGEN_RATE (20000), LOADGEN_CONNS (32),
//! LOADGEN_PHASES (all; comma list of floor,flat,rate,startup,memory,verify),
//! LOADGEN_WRAP (a profiler to run the gateway under, e.g. `heaptrack` or `perf record -g --`).

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use webhook_relay::testkit::signer::alarm_message;
use webhook_relay::testkit::TestSigner;

const BIN: &str = env!("CARGO_BIN_EXE_webhook-relay");
const TOPIC: &str = "arn:aws:sns:us-east-1:123456789012:alarms-load";

fn knob(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn phase(name: &str) -> bool {
    std::env::var("LOADGEN_PHASES").map(|p| p.split(',').any(|x| x == name)).unwrap_or(true)
}

fn main() {
    if std::env::var("LOADGEN_ROLE").as_deref() == Ok("floor") {
        return floor_server();
    }
    // `cargo bench` passes --bench. `cargo test --all-targets` runs bench targets too: a
    // load run there would take minutes, so without --bench this only says how to run it.
    if !std::env::args().any(|a| a == "--bench") {
        println!("loadgen: run with `cargo bench --bench loadgen`");
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    rt.block_on(run());
}

struct Corpus {
    dir: PathBuf,
    cert_name: String,
    cert_pem: String,
    bodies: Arc<Vec<Bytes>>,
}

/// Signed notifications `load-0..N`, cached: signing is the slow part (ring, ~0.5 ms each).
fn corpus(n: usize) -> Corpus {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("loadgen-corpus");
    let read = || -> Option<Corpus> {
        let cert_name = std::fs::read_to_string(dir.join("cert.name")).ok()?;
        let cert_pem = std::fs::read_to_string(dir.join("cert.pem")).ok()?;
        let text = std::fs::read_to_string(dir.join("messages.jsonl")).ok()?;
        let bodies: Vec<Bytes> = text.lines().take(n).map(|l| Bytes::from(l.to_string())).collect();
        (bodies.len() == n).then(|| Corpus { dir: dir.clone(), cert_name, cert_pem, bodies: Arc::new(bodies) })
    };
    if let Some(c) = read() {
        return c;
    }
    let started = Instant::now();
    let signer = TestSigner::generate("us-east-1").expect("key");
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
    let chunks: Vec<Vec<String>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let signer = &signer;
                s.spawn(move || {
                    (t..n)
                        .step_by(threads)
                        .map(|i| {
                            let msg = alarm_message(
                                &format!("load-{i}"),
                                "ALARM",
                                "OK",
                                "Threshold Crossed: 1 datapoint [93.1] was greater than the threshold (80.0).",
                                "us-east-1",
                                "123456789012",
                            );
                            signer
                                .notification(
                                    TOPIC,
                                    &format!("load-msg-{i}"),
                                    Some(&format!("ALARM: \"load-{i}\" in US East (N. Virginia)")),
                                    &msg,
                                )
                                .to_string()
                        })
                        .collect()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("signer thread")).collect()
    });
    let mut lines = vec![String::new(); n];
    for (t, chunk) in chunks.into_iter().enumerate() {
        for (k, line) in chunk.into_iter().enumerate() {
            lines[t + k * threads] = line;
        }
    }
    std::fs::create_dir_all(&dir).expect("cache dir");
    std::fs::write(dir.join("messages.jsonl"), lines.join("\n")).expect("write corpus");
    std::fs::write(dir.join("cert.pem"), &signer.cert_pem).expect("write cert");
    std::fs::write(dir.join("cert.name"), &signer.cert_file_name).expect("write cert name");
    eprintln!("signed {n} notifications in {:.1} s (cached in {})", started.elapsed().as_secs_f64(), dir.display());
    read().expect("corpus just written")
}

async fn run() {
    let n = knob("LOADGEN_N", 600_000) as usize;
    let secs = knob("LOADGEN_SECS", 15);
    let rate = knob("LOADGEN_RATE", 20_000);
    let conns = knob("LOADGEN_CONNS", 32) as usize;
    let corpus = tokio::task::spawn_blocking(move || corpus(n)).await.expect("corpus");
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    println!("# webhook-relay load run: {n} signed notifications, {conns} keep-alive connections, {cpus} CPUs\n");
    println!("| measurement | result |\n|---|---|");

    let mut floor_rps = None;
    if phase("floor") {
        let port = free_port();
        let mut child = Command::new(std::env::current_exe().expect("self"))
            .env("LOADGEN_ROLE", "floor")
            .env("LOADGEN_PORT", port.to_string())
            .stdout(Stdio::null())
            .spawn()
            .expect("floor server");
        wait_port(port).await;
        let r = drive(addr(port), corpus.bodies.clone(), conns, Duration::from_secs(secs.min(5)), None).await;
        println!(
            "| HTTP floor (trivial hyper 200 server, same generator), flat out | {:.0} req/s, p50 {} p99 {} p99.9 {} |",
            r.rps(),
            us(&r.hist, 0.5),
            us(&r.hist, 0.99),
            us(&r.hist, 0.999)
        );
        floor_rps = Some(r.rps());
        let _ = child.kill();
        let _ = child.wait();
    }

    if phase("flat") {
        let sink = Sink::start(n).await;
        let gw = Gateway::start(&corpus, &sink.url(), "flat");
        gw.ready().await;
        let cpu0 = gw.cpu();
        let r = drive(gw.addr, corpus.bodies.clone(), conns, Duration::from_secs(secs), None).await;
        let cpu = gw.cpu() - cpu0;
        let commits = gw.metric("webhook_relay_store_commit_seconds_count").await;
        let batched = gw.metric("webhook_relay_store_commit_batch_size_sum").await;
        let pending_at_end = gw.metric("webhook_relay_store_messages").await;
        let accepted = r.ok;
        let drain_start = Instant::now();
        let posts0 = sink.posts.load(Ordering::Relaxed);
        let drained = sink.wait_unique(accepted, Duration::from_secs(120)).await;
        let drain = drain_start.elapsed();
        let posts = sink.posts.load(Ordering::Relaxed);
        println!("| gateway flat out for {secs} s: verified + durably accepted | {:.0} notifications/s ({} ok, {} other){} |", r.rps(), r.ok, r.other, floor_rps.map(|f| format!(", {:.2} of the HTTP floor", r.rps() / f)).unwrap_or_default());
        println!(
            "| latency flat out | p50 {} p99 {} p99.9 {} |",
            us(&r.hist, 0.5),
            us(&r.hist, 0.99),
            us(&r.hist, 0.999)
        );
        println!(
            "| gateway CPU (user+sys, /proc) per accepted notification | {:.1} µs |",
            cpu.as_secs_f64() * 1e6 / accepted.max(1) as f64
        );
        println!("| gateway memory | peak RSS {} MiB, RSS after {} MiB |", gw.mem("VmHWM"), gw.mem("VmRSS"));
        println!(
            "| store commits during the burst | {commits:.0} ({:.0}/s), {:.1} operations each; {pending_at_end:.0} messages pending when it ended |",
            commits / secs as f64,
            batched / commits.max(1.0)
        );
        println!("| delivery after the burst | {} of {} accepted reached the sink once ({} duplicates), {} posts; drain {:.1} s after the burst ended, {:.0} posts/s while draining |", sink.unique(), accepted, sink.duplicates(), posts, drain.as_secs_f64(), (posts - posts0) as f64 / drain.as_secs_f64().max(0.001));
        if !drained {
            println!("| WARNING | not every accepted notification was delivered within 120 s |");
        }
        gw.stop();
    }

    if phase("rate") {
        let sink = Sink::start(n).await;
        let gw = Gateway::start(&corpus, &sink.url(), "rate");
        gw.ready().await;
        let dur = Duration::from_secs(secs.min(10));
        let r = drive(gw.addr, corpus.bodies.clone(), conns.max(64), dur, Some(rate)).await;
        println!("| fixed {rate}/s for {} s (latency from scheduled send) | {:.0}/s achieved, p50 {} p99 {} p99.9 {}, {} non-200 |", dur.as_secs(), r.rps(), us(&r.hist, 0.5), us(&r.hist, 0.99), us(&r.hist, 0.999), r.other);
        println!(
            "| same run, from actual send (excludes the generator's timer lateness) | p50 {} p99 {} p99.9 {} |",
            us(&r.service, 0.5),
            us(&r.service, 0.99),
            us(&r.service, 0.999)
        );
        println!("| same run, gateway memory | peak RSS {} MiB |", gw.mem("VmHWM"));
        let metrics = gw.metrics_text().await;
        let q = |q| bucket_quantile(&metrics, "webhook_relay_store_commit_seconds", q);
        println!(
            "| same run, store commit (write + fdatasync, gateway histogram) | p50 ≤ {} p99 ≤ {} |",
            q(0.5),
            q(0.99)
        );
        gw.stop();
    }

    if phase("startup") {
        let gw = Gateway::start(&corpus, "http://127.0.0.1:9/closed", "startup");
        let t = gw.ready().await;
        println!("| ready after start, empty data dir | {:.0} ms |", t.as_secs_f64() * 1e3);
        let pending = 100_000.min(n);
        let r = drive(gw.addr, Arc::new(corpus.bodies[..pending].to_vec()), conns, Duration::from_secs(60), None).await;
        gw.kill9();
        let gw2 = Gateway::restart(&gw);
        let t = gw2.ready().await;
        println!(
            "| ready after start with {} pending deliveries (Slack down, after kill -9) | {:.0} ms |",
            r.ok,
            t.as_secs_f64() * 1e3
        );
        gw2.stop();
    }

    if phase("memory") {
        let before = self_mem("VmRSS");
        let dedup = webhook_relay::dedup::Dedup::new(2_000_000);
        let exp = webhook_relay::dedup::unix_now() + 3600;
        for i in 0..1_000_000u32 {
            // Real MessageIds are UUIDs: 36 characters.
            dedup.claim(webhook_relay::dedup::MessageKey::of(&format!("{i:08x}-7c8b-5300-b8da-61fc0db82368")), exp);
        }
        let after = self_mem("VmRSS");
        println!("| 1,000,000 remembered MessageIds ({} held) | {} MiB |", dedup.len(), after.saturating_sub(before));
    }

    if phase("verify") {
        let msg = webhook_relay::sns::SnsMessage::parse(&corpus.bodies[0]).expect("corpus message");
        let cert = webhook_relay::sns::SigningCert::from_pem(corpus.cert_pem.as_bytes()).expect("cert");
        let iters = 20_000;
        let t = Instant::now();
        for _ in 0..iters {
            webhook_relay::sns::verify_signature(std::hint::black_box(&msg), &cert).expect("verifies");
        }
        let ours = t.elapsed().as_secs_f64() * 1e6 / iters as f64;
        let openssl = openssl_verify_us();
        match openssl {
            Some(o) => println!("| signature check (v2, incl. string to sign) vs `openssl speed rsa2048` verify | {ours:.1} µs vs {o:.1} µs = {:.2}x |", ours / o),
            None => println!("| signature check (v2, incl. string to sign) | {ours:.1} µs (openssl not found) |"),
        }
    }
    let _ = std::io::stdout().flush();
    let _ = corpus.dir;
}

fn us(h: &Histogram<u64>, q: f64) -> String {
    let v = h.value_at_quantile(q);
    if v >= 10_000 {
        format!("{:.1} ms", v as f64 / 1000.0)
    } else {
        format!("{v} µs")
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

async fn wait_port(port: u16) {
    for _ in 0..500 {
        if tokio::net::TcpStream::connect(addr(port)).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("port {port} never opened");
}

struct RunResult {
    ok: u64,
    other: u64,
    elapsed: Duration,
    /// From the scheduled send time (includes any lateness of the generator's timer).
    hist: Histogram<u64>,
    /// From the moment the request was actually handed to the connection.
    service: Histogram<u64>,
}

impl RunResult {
    fn rps(&self) -> f64 {
        (self.ok + self.other) as f64 / self.elapsed.as_secs_f64()
    }
}

/// Drives `addr` with each body once at most, over `conns` keep-alive connections, until
/// the bodies or `limit` run out. With `rate`, request i is scheduled at i/rate and its
/// latency counts from that moment (no coordinated omission).
async fn drive(
    addr: SocketAddr,
    bodies: Arc<Vec<Bytes>>,
    conns: usize,
    limit: Duration,
    rate: Option<u64>,
) -> RunResult {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let deadline = started + limit;
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let (bodies, next) = (bodies.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
            let mut service = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
            let (mut ok, mut other) = (0u64, 0u64);
            let mut sender: Option<hyper::client::conn::http1::SendRequest<Full<Bytes>>> = None;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= bodies.len() {
                    break;
                }
                let scheduled = match rate {
                    Some(r) => {
                        let at = started + Duration::from_secs_f64(i as f64 / r as f64);
                        if at > deadline {
                            break;
                        }
                        tokio::time::sleep_until(at.into()).await;
                        at
                    }
                    None => {
                        if Instant::now() > deadline {
                            break;
                        }
                        Instant::now()
                    }
                };
                if sender.as_ref().is_none_or(|s| s.is_closed()) {
                    let Ok(tcp) = tokio::net::TcpStream::connect(addr).await else {
                        other += 1;
                        continue;
                    };
                    let _ = tcp.set_nodelay(true);
                    let Ok((s, conn)) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await else {
                        other += 1;
                        continue;
                    };
                    tokio::spawn(conn);
                    sender = Some(s);
                }
                let Some(s) = sender.as_mut() else { continue };
                if s.ready().await.is_err() {
                    sender = None;
                    other += 1;
                    continue;
                }
                let sent = Instant::now();
                let req = hyper::Request::post("/sns")
                    .header("host", "relay")
                    .header("content-type", "text/plain; charset=UTF-8")
                    .body(Full::new(bodies[i].clone()))
                    .expect("request");
                match s.send_request(req).await {
                    Ok(resp) => {
                        let status = resp.status();
                        let _ = resp.into_body().collect().await;
                        if status == 200 {
                            ok += 1;
                        } else {
                            other += 1;
                        }
                    }
                    Err(_) => {
                        sender = None;
                        other += 1;
                    }
                }
                let _ = hist.record(scheduled.elapsed().as_micros().max(1) as u64);
                let _ = service.record(sent.elapsed().as_micros().max(1) as u64);
            }
            (ok, other, hist, service)
        }));
    }
    let new = || Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram");
    let mut total = RunResult { ok: 0, other: 0, elapsed: Duration::ZERO, hist: new(), service: new() };
    for t in tasks {
        let (ok, other, hist, service) = t.await.expect("driver task");
        total.ok += ok;
        total.other += other;
        let _ = total.hist.add(hist);
        let _ = total.service.add(service);
    }
    total.elapsed = started.elapsed();
    total
}

/// A Slack stand-in that only counts: which `load-<i>` names each post's `text` carries.
struct Sink {
    addr: SocketAddr,
    seen: Arc<Vec<AtomicU8>>,
    posts: Arc<AtomicU64>,
}

impl Sink {
    async fn start(n: usize) -> Sink {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("sink bind");
        let addr = listener.local_addr().expect("sink addr");
        let seen: Arc<Vec<AtomicU8>> = Arc::new((0..n).map(|_| AtomicU8::new(0)).collect());
        let posts = Arc::new(AtomicU64::new(0));
        let (s2, p2) = (seen.clone(), posts.clone());
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (seen, posts) = (s2.clone(), p2.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let (seen, posts) = (seen.clone(), posts.clone());
                        async move {
                            let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                            posts.fetch_add(1, Ordering::Relaxed);
                            #[derive(serde::Deserialize)]
                            struct Post {
                                text: String,
                            }
                            if let Ok(p) = serde_json::from_slice::<Post>(&body) {
                                for part in p.text.split("load-").skip(1) {
                                    let digits: String = part.chars().take_while(|c| c.is_ascii_digit()).collect();
                                    if let Some(slot) = digits.parse::<usize>().ok().and_then(|i| seen.get(i)) {
                                        slot.fetch_add(1, Ordering::Relaxed);
                                    }
                                }
                            }
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(Bytes::from_static(
                                b"ok",
                            ))))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), svc).await;
                });
            }
        });
        Sink { addr, seen, posts }
    }

    fn url(&self) -> String {
        format!("http://{}/hook/load", self.addr)
    }

    fn unique(&self) -> u64 {
        self.seen.iter().filter(|s| s.load(Ordering::Relaxed) > 0).count() as u64
    }

    fn duplicates(&self) -> u64 {
        self.seen.iter().map(|s| s.load(Ordering::Relaxed).saturating_sub(1) as u64).sum()
    }

    async fn wait_unique(&self, want: u64, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if self.unique() >= want {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }
}

/// The release binary, run as its own process.
struct Gateway {
    child: std::sync::Mutex<Child>,
    dir: PathBuf,
    addr: SocketAddr,
    admin: u16,
    started: Instant,
    _tmp: Option<Arc<tempdir::Dir>>,
}

mod tempdir {
    /// A directory under target/tmp removed on drop (no shared paths between runs).
    pub struct Dir(pub std::path::PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

impl Gateway {
    fn start(corpus: &Corpus, sink_url: &str, label: &str) -> Gateway {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("loadgen-{label}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("certs")).expect("gateway dir");
        std::fs::write(dir.join("certs").join(&corpus.cert_name), &corpus.cert_pem).expect("pin cert");
        let routes = format!(
            "[sns]\ntopics = [\"arn:aws:sns:*:123456789012:alarms-*\"]\n# the corpus is reused across runs\nmax_age = \"3650d\"\n\
             [destinations.load]\nurl = \"{sink_url}\"\nrate = \"1000000/s\"\nburst = 100000\nmax_attempts = 1000\n\
             [[route]]\nname = \"all\"\nto = [\"load\"]\n"
        );
        std::fs::write(dir.join("routes.toml"), routes).expect("routes");
        let tmp = Arc::new(tempdir::Dir(dir.clone()));
        Gateway::spawn(dir, Some(tmp))
    }

    fn spawn(dir: PathBuf, tmp: Option<Arc<tempdir::Dir>>) -> Gateway {
        let (port, admin) = (free_port(), free_port());
        let started = Instant::now();
        let wrap: Vec<String> = std::env::var("LOADGEN_WRAP")
            .map(|w| w.split_whitespace().map(str::to_string).collect())
            .unwrap_or_default();
        let mut cmd = match wrap.split_first() {
            Some((tool, args)) => {
                let mut c = Command::new(tool);
                c.args(args).arg(BIN);
                c
            }
            None => Command::new(BIN),
        };
        webhook_relay::testkit::serve_args(&mut cmd, &dir, port, admin);
        // Every generator connection comes from 127.0.0.1.
        cmd.args(["--max-connections-per-ip", "0"]);
        // Its own process group, so stopping it also stops a gateway behind a wrapper
        // (heaptrack does not pass signals on).
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = cmd.env("WEBHOOK_RELAY_LOG", "error").spawn().expect("webhook-relay serve");
        Gateway { child: std::sync::Mutex::new(child), dir, addr: addr(port), admin, started, _tmp: tmp }
    }

    fn restart(old: &Gateway) -> Gateway {
        Gateway::spawn(old.dir.clone(), old._tmp.clone())
    }

    /// GET on the admin listener: status and body, or None if it does not answer.
    async fn admin_get(&self, path: &str) -> Option<(u16, Bytes)> {
        let tcp = tokio::net::TcpStream::connect(addr(self.admin)).await.ok()?;
        let (mut s, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.ok()?;
        tokio::spawn(conn);
        let req = hyper::Request::get(path).header("host", "a").body(Full::new(Bytes::new())).expect("req");
        let r = s.send_request(req).await.ok()?;
        let status = r.status().as_u16();
        Some((status, r.into_body().collect().await.ok()?.to_bytes()))
    }

    /// Time from spawn until /readyz answers 200.
    async fn ready(&self) -> Duration {
        for _ in 0..5000 {
            if self.admin_get("/readyz").await.is_some_and(|(s, _)| s == 200) {
                return self.started.elapsed();
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        panic!("gateway never became ready");
    }

    async fn metrics_text(&self) -> String {
        let body = self.admin_get("/metrics").await.map(|(_, b)| b).unwrap_or_default();
        String::from_utf8_lossy(&body).into_owned()
    }

    /// One sample's value from /metrics (0 if absent).
    async fn metric(&self, name: &str) -> f64 {
        let text = self.metrics_text().await;
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    }

    fn pid(&self) -> u32 {
        self.child.lock().map(|c| c.id()).unwrap_or(0)
    }

    fn cpu(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap_or_default();
        // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let f: Vec<u64> = rest.split_whitespace().map(|x| x.parse().unwrap_or(0)).collect();
        let ticks = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
        Duration::from_secs_f64(ticks as f64 / clock_ticks() as f64)
    }

    fn mem(&self, field: &str) -> u64 {
        proc_mem(&format!("/proc/{}/status", self.pid()), field)
    }

    fn kill9(&self) {
        let _ = Command::new("kill").args(["-KILL", "--", &format!("-{}", self.pid())]).status();
        if let Ok(mut c) = self.child.lock() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn stop(&self) {
        // Under a profiler (LOADGEN_WRAP) only the gateway is told to stop: signalling the
        // whole group also stopped heaptrack's interpreter before it had read everything,
        // and a third of the allocations went uncounted.
        let wrapped = std::env::var("LOADGEN_WRAP").is_ok_and(|w| !w.trim().is_empty());
        let gateway = Command::new("pgrep")
            .args(["-g", &self.pid().to_string(), "-x", "webhook-relay"])
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).split_whitespace().next().map(str::to_string));
        match (wrapped, gateway) {
            (true, Some(pid)) => {
                let _ = Command::new("kill").args(["-TERM", &pid]).status();
            }
            _ => {
                let _ = Command::new("kill").args(["-TERM", "--", &format!("-{}", self.pid())]).status();
            }
        }
        if let Ok(mut c) = self.child.lock() {
            let _ = c.wait();
        }
    }
}

fn clock_ticks() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100)
}

fn proc_mem(path: &str, field: &str) -> u64 {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<u64>().ok())
        .map(|kb| kb / 1024)
        .unwrap_or(0)
}

fn self_mem(field: &str) -> u64 {
    proc_mem("/proc/self/status", field)
}

/// One RSA-2048 verify in µs as `openssl speed` reports it.
fn openssl_verify_us() -> Option<f64> {
    let out =
        Command::new("openssl").args(["speed", "-seconds", "2", "rsa2048"]).stderr(Stdio::null()).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find(|l| l.starts_with("rsa 2048 bits") || l.starts_with("rsa  2048 bits"))?;
    let verify_s: f64 = line.split_whitespace().nth(4)?.trim_end_matches('s').parse().ok()?;
    Some(verify_s * 1e6)
}

/// The HTTP floor: answers 200 to any request after reading its body.
fn floor_server() {
    let port: u16 = std::env::var("LOADGEN_PORT").ok().and_then(|p| p.parse().ok()).expect("LOADGEN_PORT");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr(port)).await.expect("floor bind");
        // Bounded: the parent kills it, and it also stops on its own after 10 minutes.
        let stop = tokio::time::sleep(Duration::from_secs(600));
        tokio::pin!(stop);
        loop {
            let (tcp, _) = tokio::select! {
                _ = &mut stop => return,
                a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
            };
            let _ = tcp.set_nodelay(true);
            tokio::spawn(async move {
                let svc = service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
                    let _ = req.into_body().collect().await;
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(Bytes::from_static(b"ok\n"))))
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), svc).await;
            });
        }
    });
}

/// The upper bound of the histogram bucket holding quantile `q` (Prometheus text format).
fn bucket_quantile(text: &str, name: &str, q: f64) -> String {
    let prefix = format!("{name}_bucket{{le=\"");
    let buckets: Vec<(String, f64)> = text
        .lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .filter_map(|l| {
            let (le, rest) = l.split_once("\"}")?;
            Some((le.to_string(), rest.trim().parse().ok()?))
        })
        .collect();
    let total = buckets.last().map(|b| b.1).unwrap_or(0.0);
    buckets
        .iter()
        .find(|(_, c)| *c >= q * total)
        .map(|(le, _)| match le.parse::<f64>() {
            Ok(s) => format!("{:.1} ms", s * 1e3),
            Err(_) => le.clone(),
        })
        .unwrap_or_else(|| "?".into())
}
