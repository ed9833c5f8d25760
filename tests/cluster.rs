//! Cluster mode for real: a 3-node NATS JetStream cluster on 127.0.0.1 (support/nats.rs),
//! several gateway processes (the binary, `serve --nats`), one stand-in Slack. They show
//! that the replicas act as one gateway: one dedup, nothing lost and nothing posted twice,
//! each alarm's states in order whichever replica took them, one rate for the cluster,
//! takeover after `kill -9` of a replica, a NATS node killed mid-stream, all of NATS down
//! and back, and the shared dead letters from the command line.

mod support;

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::nats::{binary, Nats};
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_webhook-relay");

/// Each test runs a 3-node NATS cluster and up to three gateways: two tests at a time keep
/// a 2-core machine from timing them out.
async fn slot() -> tokio::sync::SemaphorePermit<'static> {
    static SLOTS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);
    SLOTS.acquire().await.unwrap()
}

/// One gateway process in cluster mode, killed (-9) when dropped.
struct Replica {
    child: std::sync::Mutex<Option<Child>>,
    /// Public and admin address, bound on port 0 by the gateway and read from its log on
    /// first use (so replicas started together start together).
    addrs: std::sync::OnceLock<(std::net::SocketAddr, std::net::SocketAddr)>,
    dir: tempfile::TempDir,
}

impl Replica {
    fn start(nats: &Nats, routes: &str) -> Replica {
        Replica::start_with(nats, routes, &[])
    }

    fn start_with(nats: &Nats, routes: &str, extra: &[&str]) -> Replica {
        let replicas = nats.nodes.len().min(3).to_string();
        let mut args = vec!["--nats-replicas", &replicas];
        args.extend_from_slice(extra);
        Replica::launch(routes, &args, &[("WEBHOOK_RELAY_NATS", &nats.urls().join(","))])
    }

    /// `serve` with `routes`, these flags and environment; its log in `<dir>/log`.
    fn launch(routes: &str, args: &[&str], env: &[(&str, &str)]) -> Replica {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("routes.toml"), routes).unwrap();
        signer().pin_into(&dir.path().join("certs")).unwrap();
        let mut cmd = Command::new(BIN);
        webhook_relay::testkit::serve_args(&mut cmd, dir.path(), 0, 0);
        let log = std::fs::File::create(dir.path().join("log")).unwrap();
        cmd.args(["--shutdown-timeout", "5s"])
            .args(args)
            .envs(env.iter().copied())
            .env("RUST_LOG", "info,webhook_relay=debug")
            .stderr(log);
        let child = cmd.spawn().unwrap();
        Replica { child: std::sync::Mutex::new(Some(child)), addrs: std::sync::OnceLock::new(), dir }
    }

    fn addrs(&self) -> (std::net::SocketAddr, std::net::SocketAddr) {
        *self.addrs.get_or_init(|| {
            let mut child = self.child.lock().unwrap();
            let child = child.as_mut().expect("replica is running");
            let log = self.dir.path().join("log");
            webhook_relay::testkit::bound_addrs(&log, child, Duration::from_secs(60)).unwrap_or_else(|e| panic!("{e}"))
        })
    }

    fn addr(&self) -> std::net::SocketAddr {
        self.addrs().0
    }

    fn admin(&self) -> std::net::SocketAddr {
        self.addrs().1
    }

    async fn ready(&self) -> bool {
        reqwest_like::Client.get(self.admin(), "/readyz").await.0 == 200
    }

    async fn wait_ready(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if tokio::net::TcpStream::connect(self.admin()).await.is_ok() && self.ready().await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("replica not ready; log:\n{}", self.log());
    }

    async fn post(&self, body: &serde_json::Value) -> u16 {
        match reqwest_like::try_post(self.addr(), body.to_string().into()).await {
            Ok((status, _)) => status,
            Err(_) => 0,
        }
    }

    /// Posts as SNS does: a 503 (or no answer) is retried, for up to 20 s. A 503 promises
    /// nothing and SNS retries it, so where a test is about what happens to accepted
    /// alarms, a replica that is ready but briefly cannot reach a JetStream leader (two
    /// 3-node clusters share these 2 cores) must not fail it. Returns the last status.
    async fn post_as_sns(&self, body: &serde_json::Value) -> u16 {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let status = self.post(body).await;
            if !matches!(status, 0 | 503) || Instant::now() > deadline {
                return status;
            }
            let log = self.log();
            let why = log.lines().rev().find(|l| l.contains("refused")).unwrap_or("(no refusal logged)");
            eprintln!("answered {status}; retried as SNS would. {why}");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    async fn metric(&self, name: &str) -> Option<f64> {
        let text = reqwest_like::Client.get(self.admin(), "/metrics").await.1;
        text.lines().find(|l| l.starts_with(name)).and_then(|l| l.rsplit(' ').next()?.parse().ok())
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.get_mut().unwrap().take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn terminate(&mut self) {
        if let Some(mut c) = self.child.get_mut().unwrap().take() {
            let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
            let _ = c.wait();
        }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Each state change of alarms named `<prefix><n>`, in the order Slack received them on
/// `channel` (a digest lists its notifications in order).
fn states_by_alarm(sink: &SlackSink, channel: &str, prefix: &str) -> HashMap<String, Vec<String>> {
    let re = regex::Regex::new(&format!(r"(ALARM|OK): \W*({}\d+)\b", regex::escape(prefix))).unwrap();
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    for p in sink.delivered(channel) {
        for c in re.captures_iter(p.body["text"].as_str().unwrap_or("")) {
            out.entry(c[2].to_string()).or_default().push(c[1].to_string());
        }
    }
    out
}

fn one_destination(sink: &SlackSink, rate: &str, burst: u32) -> String {
    format!(
        r#"
[sns]
topics = ["arn:aws:sns:*:123456789012:alarms-*"]
max_age = "1h"

[destinations.ops]
url = "{url}"
rate = "{rate}"
burst = {burst}
max_attempts = 1000
max_retry_age = "10m"

[[route]]
name = "all"
to = ["ops"]
"#,
        url = sink.url("ops"),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn replicas_share_one_dedup_lose_nothing_post_nothing_twice_and_keep_each_alarms_order() {
    let Some(bin) = binary() else { return };
    let _slot = slot().await;
    let nats = Nats::cluster(&bin, 3).await;
    let sink = SlackSink::start().await.unwrap();
    let routes = routes(&sink, "");
    let replicas = [Replica::start(&nats, &routes), Replica::start(&nats, &routes), Replica::start(&nats, &routes)];
    for r in &replicas {
        r.wait_ready(Duration::from_secs(30)).await;
    }
    let s = signer();
    // 60 alarms, each sent to one replica and then (as an SNS retry would be) to another:
    // both answer 200, one of them stores it.
    for i in 0..60 {
        let sev = if i % 3 == 0 { "critical" } else { "info" };
        let body = alarm(s, &format!("id-{i}"), &format!("prod-dup{i}-{sev}"), "ALARM");
        assert_eq!(replicas[i % 3].post_as_sns(&body).await, 200);
        assert_eq!(replicas[(i + 1) % 3].post_as_sns(&body).await, 200, "the retry on another replica");
    }
    // Each alarm's state changes land on different replicas, one after another.
    for k in 0..5 {
        for (j, state) in ["ALARM", "OK", "ALARM", "OK"].iter().enumerate() {
            let body = alarm(s, &format!("flap-{k}-{j}"), &format!("prod-flap{k}"), state);
            assert_eq!(replicas[j % 3].post_as_sns(&body).await, 200);
        }
    }
    let complete = |_: &[webhook_relay::testkit::Post]| {
        let general = name_counts(&sink, "general", "prod-dup");
        let critical = name_counts(&sink, "critical", "prod-dup");
        let flaps = states_by_alarm(&sink, "general", "prod-flap");
        general.len() == 60 && critical.len() == 20 && flaps.values().map(Vec::len).sum::<usize>() == 20
    };
    let done = sink.wait_until(Duration::from_secs(30), complete).await;
    // A little longer, so a second copy would have time to show up.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let general = name_counts(&sink, "general", "prod-dup");
    let critical = name_counts(&sink, "critical", "prod-dup");
    assert!(
        done,
        "not all delivered: general {} critical {}; log:\n{}",
        general.len(),
        critical.len(),
        replicas[0].log()
    );
    assert!(general.values().all(|&n| n == 1), "posted twice: {general:?}");
    assert!(critical.values().all(|&n| n == 1), "posted twice: {critical:?}");
    for (name, states) in states_by_alarm(&sink, "general", "prod-flap") {
        assert_eq!(states, ["ALARM", "OK", "ALARM", "OK"], "{name} out of order");
    }
    // The duplicates were counted as such, across the cluster.
    let mut duplicates = 0.0;
    for r in &replicas {
        duplicates += r.metric("webhook_relay_sns_duplicates_total").await.unwrap_or(0.0);
    }
    assert_eq!(duplicates, 60.0);
    // Each destination is posted for by one replica: the leases add up to the destinations.
    let mut held = 0.0;
    for r in &replicas {
        held += r.metric("webhook_relay_cluster_leases_held").await.unwrap_or(0.0);
    }
    assert_eq!(held, 2.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_destinations_rate_holds_for_the_whole_cluster() {
    let Some(bin) = binary() else { return };
    let _slot = slot().await;
    let nats = Nats::cluster(&bin, 3).await;
    let sink = SlackSink::start().await.unwrap();
    let routes = one_destination(&sink, "2/s", 1);
    let replicas = [Replica::start(&nats, &routes), Replica::start(&nats, &routes), Replica::start(&nats, &routes)];
    for r in &replicas {
        r.wait_ready(Duration::from_secs(30)).await;
    }
    // Posting starts once one of them posts for `ops`: alarms accepted before any replica
    // held the lease would wait and go out merged into a few digests, and this test would
    // measure nothing (it failed so once: 40 alarms in 5 posts).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut held = 0.0;
        for r in &replicas {
            held += r.metric("webhook_relay_cluster_leases_held").await.unwrap_or(0.0);
        }
        if held == 1.0 {
            break;
        }
        assert!(Instant::now() < deadline, "no replica took the lease in 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // 40 alarms over 4 s, spread over the three replicas.
    let s = signer();
    for i in 0..40 {
        let body = alarm(s, &format!("rate-{i}"), &format!("prod-rate{i}"), "ALARM");
        assert_eq!(replicas[i % 3].post_as_sns(&body).await, 200);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let all = sink.wait_until(Duration::from_secs(20), |_| name_counts(&sink, "ops", "prod-rate").len() == 40).await;
    assert!(all, "not all delivered: {}", name_counts(&sink, "ops", "prod-rate").len());
    let counts = name_counts(&sink, "ops", "prod-rate");
    assert!(counts.values().all(|&n| n == 1), "{counts:?}");
    // 2/s with a burst of 1: at most 5 posts in any 2 s, measured at Slack. Three posters
    // each at 2/s would make about 12.
    let times: Vec<Instant> = sink.delivered("ops").iter().map(|p| p.at).collect();
    let busiest =
        times.iter().map(|t| times.iter().filter(|u| **u >= *t && **u < *t + Duration::from_secs(2)).count()).max();
    assert!(busiest.unwrap_or(0) <= 5, "{busiest:?} posts in 2 s; {} posts in all", times.len());
    assert!(times.len() >= 6, "the rate limit merged more than expected: {} posts", times.len());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_replicas_destination_is_taken_over_within_30s_and_nothing_is_lost() {
    let Some(bin) = binary() else { return };
    let _slot = slot().await;
    let nats = Nats::cluster(&bin, 3).await;
    let sink = SlackSink::start().await.unwrap();
    let routes = one_destination(&sink, "50/s", 50);
    let mut first = Replica::start(&nats, &routes);
    first.wait_ready(Duration::from_secs(30)).await;
    // The first replica takes the one lease; the second finds it held.
    let deadline = Instant::now() + Duration::from_secs(10);
    while first.metric("webhook_relay_cluster_leases_held").await != Some(1.0) {
        assert!(Instant::now() < deadline, "no lease taken; log:\n{}", first.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let second = Replica::start(&nats, &routes);
    second.wait_ready(Duration::from_secs(30)).await;
    // Slack fails, so everything stays pending with the holder.
    sink.script("ops", vec![Reply::Status(500, "down"); 100_000]);
    let s = signer();
    for i in 0..10 {
        let body = alarm(s, &format!("takeover-{i}"), &format!("prod-takeover{i}"), "ALARM");
        assert_eq!(second.post_as_sns(&body).await, 200);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(second.metric("webhook_relay_cluster_leases_held").await, Some(0.0));
    first.kill();
    sink.script("ops", vec![]);
    let killed = Instant::now();
    let all =
        sink.wait_until(Duration::from_secs(30), |_| name_counts(&sink, "ops", "prod-takeover").len() == 10).await;
    assert!(all, "not taken over within 30 s; log:\n{}", second.log());
    eprintln!("taken over and delivered {:?} after the kill", killed.elapsed());
    assert_eq!(second.metric("webhook_relay_cluster_leases_held").await, Some(1.0));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let counts = name_counts(&sink, "ops", "prod-takeover");
    assert!(counts.values().all(|&n| n == 1), "{counts:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn killing_a_nats_node_mid_stream_loses_no_accepted_alarm() {
    let Some(bin) = binary() else { return };
    let _slot = slot().await;
    let mut nats = Nats::cluster(&bin, 3).await;
    let sink = SlackSink::start().await.unwrap();
    let routes = one_destination(&sink, "100/s", 100);
    let replicas = [Replica::start(&nats, &routes), Replica::start(&nats, &routes)];
    for r in &replicas {
        r.wait_ready(Duration::from_secs(30)).await;
    }
    let s = signer();
    let mut accepted = Vec::new();
    let (mut refused, mut after_kill) = (0, 0);
    let mut killed: Option<Instant> = None;
    let mut back: Option<Duration> = None;
    // A steady stream, 20 ms apart; one node is killed after 50, and the stream goes on
    // until 50 more were accepted (or 30 s passed).
    for i in 0.. {
        if i == 50 {
            nats.nodes[0].kill();
            killed = Some(Instant::now());
        }
        if after_kill >= 50 || killed.is_some_and(|k| k.elapsed() > Duration::from_secs(30)) {
            break;
        }
        let name = format!("prod-node{i}");
        let status = replicas[i % 2].post(&alarm(s, &format!("node-{i}"), &name, "ALARM")).await;
        match status {
            200 => {
                accepted.push(name);
                after_kill += killed.is_some() as usize;
                if back.is_none() && refused > 0 {
                    back = killed.map(|k| k.elapsed());
                }
            }
            503 | 0 => refused += 1,
            other => panic!("unexpected status {other}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "{} accepted ({after_kill} after the kill), {refused} refused (503); accepting again {back:?} after the kill",
        accepted.len()
    );
    // Two nodes of three are a quorum: the cluster goes on accepting.
    assert!(
        after_kill >= 50,
        "{after_kill} accepted in 30 s with two of three nodes up, {refused} refused; log:\n{}",
        replicas[0].log()
    );
    let waiting = Instant::now();
    let done = sink
        .wait_until(Duration::from_secs(90), |_| {
            let counts = name_counts(&sink, "ops", "prod-node");
            accepted.iter().all(|n| counts.contains_key(n))
        })
        .await;
    let counts = name_counts(&sink, "ops", "prod-node");
    let missing: Vec<&String> = accepted.iter().filter(|n| !counts.contains_key(*n)).collect();
    let logs: String = replicas
        .iter()
        .map(|r| {
            // Without the per-message lines (a 503 each while NATS elects leaders): what is
            // left is leases, consumers and connections, what a loss would be found in.
            let quiet = |l: &&str| !l.contains("notification accepted") && !l.contains("sns message refused");
            r.log().lines().filter(quiet).collect::<Vec<_>>().join("\n")
        })
        .collect::<Vec<_>>()
        .join("\n-----\n");
    eprintln!("all delivered {:?} after the stream ended", waiting.elapsed());
    assert!(done, "accepted but never delivered: {missing:?}; logs:\n{logs}\nNATS:\n{}", nats.logs());
}

/// The alarm names with `prefix` in the order Slack received them on `channel`.
fn names_in_order(sink: &SlackSink, channel: &str, prefix: &str) -> Vec<String> {
    let re = regex::Regex::new(&format!(r"{}\d+\b", regex::escape(prefix))).unwrap();
    let texts: Vec<String> =
        sink.delivered(channel).iter().map(|p| p.body["text"].as_str().unwrap_or("").to_string()).collect();
    texts.iter().flat_map(|t| re.find_iter(t).map(|m| m.as_str().to_string()).collect::<Vec<_>>()).collect()
}

/// One NATS server and one replica, which holds the `ops` lease.
struct OneNode {
    nats: Nats,
    sink: SlackSink,
    replica: Replica,
    _store: tempfile::TempDir,
}

impl OneNode {
    async fn with_lease_held(bin: &std::path::PathBuf) -> OneNode {
        let store = tempfile::tempdir().unwrap();
        let nats = Nats::single(bin, &["-js", "-sd", store.path().to_str().unwrap()]);
        nats.wait_jetstream(Duration::from_secs(15)).await;
        let sink = SlackSink::start().await.unwrap();
        let replica = Replica::start(&nats, &one_destination(&sink, "100/s", 100));
        replica.wait_ready(Duration::from_secs(30)).await;
        let deadline = Instant::now() + Duration::from_secs(20);
        while replica.metric("webhook_relay_cluster_leases_held").await != Some(1.0) {
            assert!(Instant::now() < deadline, "no lease taken; log:\n{}", replica.log());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        OneNode { nats, sink, replica, _store: store }
    }
}

/// The consumer the lease holder reads through (there is one), and a client of our own.
async fn replica_consumer(nats: &Nats) -> (async_nats::Client, async_nats::jetstream::consumer::PullConsumer) {
    let client = async_nats::connect(nats.urls()[0].as_str()).await.unwrap();
    let stream = async_nats::jetstream::new(client.clone()).get_stream("webhook-relay-msgs").await.unwrap();
    let names: Vec<String> = futures_util::StreamExt::collect::<Vec<_>>(stream.consumer_names())
        .await
        .into_iter()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(names.len(), 1, "the lease holder reads through one consumer: {names:?}");
    (client, stream.get_consumer(&names[0]).await.unwrap())
}

/// Pulls one message from the replica's own consumer, as a reply lost on its way would:
/// the server counts it as sent, the replica never sees it. Posts alarms named
/// `<prefix><n>` until the pull gets one; returns what was accepted and the one taken.
async fn steal_one(
    replica: &Replica,
    consumer: &async_nats::jetstream::consumer::PullConsumer,
    prefix: &str,
) -> (Vec<String>, String) {
    let mut pull = consumer.batch().max_messages(1).expires(Duration::from_secs(30)).messages().await.unwrap();
    let taken = tokio::spawn(async move {
        let m = futures_util::StreamExt::next(&mut pull).await.expect("pull ended").expect("pull failed");
        String::from_utf8_lossy(&m.payload).to_string()
    });
    let s = signer();
    let re = regex::Regex::new(&format!(r"{}\d+\b", regex::escape(prefix))).unwrap();
    let mut accepted = Vec::new();
    for i in 0..300 {
        let name = format!("{prefix}{i}");
        assert_eq!(replica.post_as_sns(&alarm(s, &format!("{prefix}-{i}"), &name, "ALARM")).await, 200);
        accepted.push(name);
        tokio::time::sleep(Duration::from_millis(30)).await;
        if taken.is_finished() {
            let payload = taken.await.unwrap();
            let name = re.find(&payload).expect("a stolen alarm of ours").as_str().to_string();
            return (accepted, name);
        }
    }
    panic!("300 alarms, and the replica's consumer never gave the other pull one");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_delivery_lost_on_its_way_from_nats_is_read_again_and_posted_in_order() {
    let Some(bin) = binary() else { return };
    let _slot = slot().await;
    let OneNode { nats, sink, replica, _store } = OneNode::with_lease_held(&bin).await;
    let consumer = replica_consumer(&nats).await.1;

    // The last message of a burst: nothing after it shows the gap, the idle check must.
    let (accepted, stolen) = steal_one(&replica, &consumer, "prod-idle").await;
    let all = sink
        .wait_until(Duration::from_secs(20), |_| {
            let counts = name_counts(&sink, "ops", "prod-idle");
            accepted.iter().all(|n| counts.contains_key(n))
        })
        .await;
    assert!(all, "{stolen} was taken on its way and never posted; log:\n{}", replica.log());
    assert!(replica.log().contains("idle, yet NATS says it sent delivery"), "{}", replica.log());

    // One in the middle: the next delivery's consumer sequence shows the gap, and the
    // taken one goes out before the ones after it.
    // A new consumer: the replica made one after the loss.
    let consumer = replica_consumer(&nats).await.1;
    let (mut accepted, stolen) = steal_one(&replica, &consumer, "prod-gap").await;
    let s = signer();
    for i in 1000..1003 {
        let name = format!("prod-gap{i}");
        assert_eq!(replica.post_as_sns(&alarm(s, &format!("prod-gap-{i}"), &name, "ALARM")).await, 200);
        accepted.push(name);
    }
    let all = sink
        .wait_until(Duration::from_secs(20), |_| {
            let counts = name_counts(&sink, "ops", "prod-gap");
            accepted.iter().all(|n| counts.contains_key(n))
        })
        .await;
    assert!(all, "{stolen} was taken on its way and never posted; log:\n{}", replica.log());
    assert!(replica.log().contains("one between was lost on its way"), "{}", replica.log());
    let order = names_in_order(&sink, "ops", "prod-gap");
    let at = |n: &str| order.iter().position(|o| o == n).unwrap();
    assert!(at(&stolen) < at("prod-gap1000"), "{stolen} posted after the ones accepted after it: {order:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_consumer_that_stops_seeing_the_stream_is_replaced_and_nothing_waits_for_the_lease_to_move() {
    let Some(bin) = binary() else { return };
    let _slot = slot().await;
    let OneNode { nats, sink, replica, _store } = OneNode::with_lease_held(&bin).await;
    let s = signer();
    assert_eq!(replica.post_as_sns(&alarm(s, "stall-0", "prod-stall0", "ALARM")).await, 200);
    assert!(sink.wait_until(Duration::from_secs(10), |_| name_counts(&sink, "ops", "prod-stall").len() == 1).await);

    // Paused (NATS 2.11), the replica's consumer does what the stalled one did: answers
    // every pull empty, its numbers agree, and sends nothing new.
    let (client, consumer) = replica_consumer(&nats).await;
    let answer = client
        .request(
            format!("$JS.API.CONSUMER.PAUSE.webhook-relay-msgs.{}", consumer.cached_info().name),
            serde_json::json!({"pause_until": "2099-01-01T00:00:00Z"}).to_string().into(),
        )
        .await
        .unwrap();
    let answer: serde_json::Value = serde_json::from_slice(&answer.payload).unwrap();
    assert_eq!(answer["paused"], true, "{answer}");

    let posted = Instant::now();
    assert_eq!(replica.post_as_sns(&alarm(s, "stall-1", "prod-stall1", "ALARM")).await, 200);
    let delivered =
        sink.wait_until(Duration::from_secs(20), |_| name_counts(&sink, "ops", "prod-stall").len() == 2).await;
    assert!(delivered, "an alarm waited behind a consumer that stopped; log:\n{}", replica.log());
    eprintln!("delivered {:?} after the post, through a new consumer", posted.elapsed());
    assert!(replica.log().contains("this consumer stopped seeing the stream"), "{}", replica.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn with_all_of_nats_down_the_door_says_503_and_everything_resumes_when_it_is_back() {
    let Some(bin) = binary() else { return };
    let _slot = slot().await;
    let mut nats = Nats::cluster(&bin, 3).await;
    let sink = SlackSink::start().await.unwrap();
    let routes = one_destination(&sink, "100/s", 100);
    let replica = Replica::start(&nats, &routes);
    replica.wait_ready(Duration::from_secs(30)).await;
    let s = signer();
    // Slack is down too, so these wait in NATS through the outage.
    sink.script("ops", vec![Reply::Status(503, "down"); 100_000]);
    for i in 0..5 {
        assert_eq!(
            replica.post_as_sns(&alarm(s, &format!("outage-{i}"), &format!("prod-outage{i}"), "ALARM")).await,
            200
        );
    }
    for node in &mut nats.nodes {
        node.kill();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while replica.ready().await {
        assert!(Instant::now() < deadline, "/readyz still 200 with NATS down");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let refused = replica.post(&alarm(s, "outage-x", "prod-outage9", "ALARM")).await;
    assert_eq!(refused, 503, "accepted with all of NATS down");
    sink.script("ops", vec![]);
    for node in &mut nats.nodes {
        node.restart();
    }
    replica.wait_ready(Duration::from_secs(60)).await;
    // Ready means accepting: no 503 once /readyz says 200.
    for i in 5..8 {
        let status = replica.post(&alarm(s, &format!("outage-{i}"), &format!("prod-outage{i}"), "ALARM")).await;
        assert_eq!(status, 200, "log:\n{}", replica.log());
    }
    // SNS retries the one refused.
    assert_eq!(replica.post(&alarm(s, "outage-x", "prod-outage9", "ALARM")).await, 200);
    let all = sink.wait_until(Duration::from_secs(30), |_| name_counts(&sink, "ops", "prod-outage").len() == 9).await;
    assert!(all, "delivered: {:?}; log:\n{}", name_counts(&sink, "ops", "prod-outage"), replica.log());
}

fn dead_letters(nats: &Nats, args: &[&str]) -> (i32, String) {
    let out = Command::new(BIN)
        .arg("dead-letters")
        .args(args)
        .args(["--nats", &nats.urls().join(",")])
        .stderr(Stdio::null())
        .output()
        .unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn dead_letters_are_shared_and_replayed_from_any_machine() {
    let Some(bin) = binary() else { return };
    let _slot = slot().await;
    let nats = Nats::cluster(&bin, 3).await;
    let sink = SlackSink::start().await.unwrap();
    let routes = one_destination(&sink, "50/s", 50);
    let mut replicas = [Replica::start(&nats, &routes), Replica::start(&nats, &routes)];
    for r in &replicas {
        r.wait_ready(Duration::from_secs(30)).await;
    }
    sink.script("ops", vec![Reply::Status(400, "invalid_payload")]);
    assert_eq!(replicas[1].post_as_sns(&alarm(signer(), "dl-1", "prod-dead1", "ALARM")).await, 200);
    let deadline = Instant::now() + Duration::from_secs(15);
    let id = loop {
        let (code, text) = dead_letters(&nats, &["list"]);
        assert_eq!(code, 0, "{text}");
        if let Some(line) = text.lines().find(|l| l.contains("\tops\t")) {
            break line.split('\t').next().unwrap().to_string();
        }
        assert!(Instant::now() < deadline, "no dead letter listed: {text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let (code, text) = dead_letters(&nats, &["show", &id]);
    assert!(code == 0 && text.contains("prod-dead1"), "{text}");
    // Whoever posts for `ops` takes the replay, even after the replica that wrote the dead
    // letter is gone.
    for r in &mut replicas {
        r.terminate();
    }
    let third = Replica::start(&nats, &routes);
    third.wait_ready(Duration::from_secs(30)).await;
    let (code, text) = dead_letters(&nats, &["replay", &id]);
    assert!(code == 0 && text.contains("queued for replay"), "{text}");
    let delivered =
        sink.wait_until(Duration::from_secs(20), |_| name_counts(&sink, "ops", "prod-dead").len() == 1).await;
    assert!(delivered, "replay not delivered; log:\n{}", third.log());
    let (_, text) = dead_letters(&nats, &["list"]);
    assert!(text.contains("no dead letters"), "a replayed dead letter stays listed: {text}");
    let (code, text) = dead_letters(&nats, &["replay", "no-such-id"]);
    assert_eq!(code, 1, "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn replicas_starting_together_create_the_streams_once_and_a_graceful_stop_hands_over_at_once() {
    let Some(bin) = binary() else { return };
    let _slot = slot().await;
    let nats = Nats::cluster(&bin, 3).await;
    let sink = SlackSink::start().await.unwrap();
    let routes = one_destination(&sink, "50/s", 50);
    let mut replicas: Vec<Replica> = (0..3).map(|_| Replica::start(&nats, &routes)).collect();
    for r in &replicas {
        r.wait_ready(Duration::from_secs(30)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let holder = loop {
        let mut holder = None;
        for (i, r) in replicas.iter().enumerate() {
            if r.metric("webhook_relay_cluster_leases_held").await == Some(1.0) {
                holder = Some(i);
            }
        }
        if let Some(h) = holder {
            break h;
        }
        assert!(Instant::now() < deadline, "nobody took the lease");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // SIGTERM gives the lease back: another replica posts well before the 15 s TTL.
    replicas[holder].terminate();
    let stopped = Instant::now();
    let other = &replicas[(holder + 1) % 3];
    assert_eq!(other.post_as_sns(&alarm(signer(), "handover-1", "prod-handover1", "ALARM")).await, 200);
    let delivered =
        sink.wait_until(Duration::from_secs(10), |_| name_counts(&sink, "ops", "prod-handover").len() == 1).await;
    // Well before the 15 s a lease takes to expire: it was given back.
    assert!(
        delivered && stopped.elapsed() < Duration::from_secs(12),
        "handover took {:?}; log:\n{}",
        stopped.elapsed(),
        other.log()
    );
    let starts = replicas.iter().filter(|r| r.log().contains("JetStream streams and buckets ready")).count();
    assert!(starts >= 2, "every replica sets up (idempotently)");
    for r in &replicas {
        let log = r.log();
        let errors: Vec<&str> = log.lines().filter(|l| l.contains("ERROR")).collect();
        assert!(errors.is_empty(), "{errors:#?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_alarms_slack_thread_is_shared_so_a_replica_taking_over_replies_in_it() {
    let Some(bin) = binary() else { return };
    let _slot = slot().await;
    let nats = Nats::cluster(&bin, 3).await;
    let sink = SlackSink::start().await.unwrap();
    let routes = r#"
[sns]
topics = ["arn:aws:sns:*:123456789012:alarms-*"]
[destinations.app]
token = "xoxb-cluster-test"
channel = "C0APP"
lifecycle = "thread"
[[route]]
name = "all"
to = ["app"]
"#;
    let api = sink.api_url();
    let mut first = Replica::start_with(&nats, routes, &["--slack-api-url", &api]);
    first.wait_ready(Duration::from_secs(30)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while first.metric("webhook_relay_cluster_leases_held").await != Some(1.0) {
        assert!(Instant::now() < deadline, "no lease taken; log:\n{}", first.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let second = Replica::start_with(&nats, routes, &["--slack-api-url", &api]);
    second.wait_ready(Duration::from_secs(30)).await;
    assert_eq!(first.post_as_sns(&alarm(signer(), "thread-1", "prod-db-cpu", "ALARM")).await, 200);
    assert!(sink.wait_until(Duration::from_secs(10), |_| sink.delivered("C0APP").len() == 1).await);
    let first_ts = sink.delivered("C0APP")[0].ts.clone().unwrap();
    // Past the post's finish (a kill before it may repeat the post: at least once).
    tokio::time::sleep(Duration::from_secs(1)).await;
    first.kill();
    // The OK lands on the other replica, which takes the destination over and finds the
    // thread in NATS.
    assert_eq!(second.post_as_sns(&alarm(signer(), "thread-2", "prod-db-cpu", "OK")).await, 200);
    let replied = sink.wait_until(Duration::from_secs(30), |_| sink.delivered("C0APP").len() == 2).await;
    assert!(replied, "no reply after the takeover; log:\n{}", second.log());
    let reply = &sink.delivered("C0APP")[1];
    assert_eq!(reply.method, "chat.postMessage");
    assert_eq!(reply.body["thread_ts"].as_str(), Some(first_ts.as_str()), "{:?}", reply.body);
    assert!(!second.log().contains("xoxb-cluster-test"), "the token in a log");
}

#[tokio::test(flavor = "multi_thread")]
async fn nats_credentials_in_the_url_are_used_and_never_printed() {
    let Some(bin) = binary() else { return };
    let _slot = slot().await;
    let store = tempfile::tempdir().unwrap();
    let nats =
        Nats::single(&bin, &["-js", "-sd", store.path().to_str().unwrap(), "--user", "relay", "--pass", "s3cret-pw"]);
    let port = nats.nodes[0].port;
    nats.wait_jetstream_with(&format!("nats://relay:s3cret-pw@127.0.0.1:{port}")).await;
    let sink = SlackSink::start().await.unwrap();
    let url = format!("nats://relay:s3cret-pw@127.0.0.1:{port}");
    let replica = Replica::launch(&one_destination(&sink, "50/s", 50), &[], &[("WEBHOOK_RELAY_NATS", &url)]);
    replica.wait_ready(Duration::from_secs(30)).await;
    assert_eq!(replica.post_as_sns(&alarm(signer(), "creds-1", "prod-creds1", "ALARM")).await, 200);
    assert!(sink.wait_until(Duration::from_secs(10), |_| sink.delivered("ops").len() == 1).await);
    let metrics = reqwest_like::Client.get(replica.admin(), "/metrics").await.1;
    assert!(metrics.contains("webhook_relay_cluster_connected 1"), "{metrics}");
    let log = replica.log();
    assert!(log.contains(&format!("127.0.0.1:{port}")), "the server is named");
    assert!(!log.contains("s3cret-pw") && !metrics.contains("s3cret-pw"), "a NATS password in the output");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gone_destinations_alarms_reach_its_fallback_through_whichever_replica_posts_for_it() {
    let Some(bin) = binary() else { return };
    let _slot = slot().await;
    let nats = Nats::cluster(&bin, 3).await;
    let sink = SlackSink::start().await.unwrap();
    let routes = format!(
        r#"
[sns]
topics = ["arn:aws:sns:*:123456789012:alarms-*"]
[destinations.main]
url = "{main}"
fallback = "backup"
[destinations.backup]
url = "{backup}"
[[route]]
name = "all"
to = ["main"]
"#,
        main = sink.url("main"),
        backup = sink.url("backup")
    );
    let replicas = [Replica::start(&nats, &routes), Replica::start(&nats, &routes)];
    for r in &replicas {
        r.wait_ready(Duration::from_secs(30)).await;
    }
    sink.script("main", vec![Reply::Status(404, "no_service"); 100]);
    for i in 0..4 {
        assert_eq!(
            replicas[i % 2].post_as_sns(&alarm(signer(), &format!("fb-{i}"), &format!("prod-fb{i}"), "ALARM")).await,
            200
        );
    }
    let all = sink.wait_until(Duration::from_secs(20), |_| name_counts(&sink, "backup", "prod-fb").len() == 4).await;
    assert!(
        all,
        "fallback got {:?}; logs:\n{}\n{}",
        name_counts(&sink, "backup", "prod-fb"),
        replicas[0].log(),
        replicas[1].log()
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let counts = name_counts(&sink, "backup", "prod-fb");
    assert!(counts.values().all(|&n| n == 1), "{counts:?}");
    assert!(sink.delivered("main").is_empty());
}

#[test]
fn serve_help_documents_the_cluster_flags() {
    let out = Command::new(BIN).args(["serve", "--help"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for flag in ["--nats ", "--nats-creds", "--nats-prefix", "--nats-replicas"] {
        assert!(text.contains(flag), "{flag} missing from serve --help");
    }
}
