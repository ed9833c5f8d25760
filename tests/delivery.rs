//! Delivery against the stand-in Slack over real HTTP: every row of the failure table,
//! ordering, isolation, rate-limit spacing and Retry-After timing.

mod support;

use std::time::{Duration, Instant};

use support::*;

fn one_channel(sink: &SlackSink, channel: &str, opts: &str, extra: &str) -> String {
    format!(
        r#"
[sns]
topics = ["arn:aws:sns:*:123456789012:alarms-*"]

[destinations.{channel}]
url = "{url}"
{opts}

[[route]]
name = "all"
to = ["{channel}"]
{extra}
"#,
        url = sink.url(channel)
    )
}

#[tokio::test]
async fn server_errors_are_retried_until_success() {
    let sink = SlackSink::start().await.unwrap();
    sink.script("c", vec![Reply::Status(500, "oops"), Reply::Status(503, "busy")]);
    let gw = start(&one_channel(&sink, "c", "rate = \"100/s\"\nburst = 10", "")).await;
    assert_eq!(gw.post(alarm(signer(), "r1", "prod-a", "ALARM").to_string()).await.0, 200);
    assert!(sink.wait_until(Duration::from_secs(10), |p| p.iter().any(|p| p.status == 200)).await);
    let statuses: Vec<u16> = sink.posts().iter().map(|p| p.status).collect();
    assert_eq!(statuses, vec![500, 503, 200]);
    assert!(gw.metrics().await.contains("webhook_relay_delivery_retries_total{destination=\"c\"} 2"));
    gw.shutdown().await;
}

#[tokio::test]
async fn too_many_requests_waits_retry_after() {
    let sink = SlackSink::start().await.unwrap();
    sink.script("c", vec![Reply::TooMany(2)]);
    let gw = start(&one_channel(&sink, "c", "rate = \"100/s\"\nburst = 10", "")).await;
    assert_eq!(gw.post(alarm(signer(), "t1", "prod-a", "ALARM").to_string()).await.0, 200);
    assert!(sink.wait_until(Duration::from_secs(10), |p| p.iter().any(|p| p.status == 200)).await);
    let posts = sink.posts();
    assert_eq!(posts[0].status, 429);
    let gap = posts[1].at - posts[0].at;
    assert!(gap >= Duration::from_millis(1950), "retried after {gap:?}, Retry-After was 2 s");
    gw.shutdown().await;
}

#[tokio::test]
async fn other_client_errors_are_dead_letters_without_retry() {
    let sink = SlackSink::start().await.unwrap();
    sink.script("c", vec![Reply::Status(400, "invalid_payload")]);
    let gw = start(&one_channel(&sink, "c", "", "")).await;
    assert_eq!(gw.post(alarm(signer(), "d1", "prod-a", "ALARM").to_string()).await.0, 200);
    let dl = gw.wait_dead_letters(Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sink.posts().len(), 1, "a 400 must not be retried");
    let letters = dl.list();
    assert_eq!(letters.len(), 1);
    let letter = letters[0].as_ref().unwrap();
    assert!(letter.reason.contains("400") && letter.reason.contains("invalid_payload"), "{}", letter.reason);
    assert!(!letter.reason.contains(&sink.url("c")));
    gw.shutdown().await;
}

#[tokio::test]
async fn gone_webhook_marks_unhealthy_and_uses_fallback() {
    let sink = SlackSink::start().await.unwrap();
    sink.script("main", vec![Reply::Status(404, "no_service")]);
    let cfg = format!(
        r#"
[sns]
topics = ["arn:aws:sns:*:123456789012:alarms-*"]
[destinations.main]
url = "{}"
fallback = "backup"
[destinations.backup]
url = "{}"
[[route]]
name = "all"
to = ["main"]
"#,
        sink.url("main"),
        sink.url("backup")
    );
    let gw = start(&cfg).await;
    assert_eq!(gw.post(alarm(signer(), "g1", "prod-a", "ALARM").to_string()).await.0, 200);
    assert!(sink.wait_until(Duration::from_secs(5), |_| !sink.delivered("backup").is_empty()).await);
    let m = gw.metrics().await;
    assert!(m.contains("webhook_relay_destination_unhealthy{destination=\"main\"} 1"), "{m}");
    gw.shutdown().await;
}

#[tokio::test]
async fn retry_budget_ends_in_a_dead_letter() {
    let sink = SlackSink::start().await.unwrap();
    sink.script("c", vec![Reply::Status(500, "x"); 10]);
    let gw = start(&one_channel(&sink, "c", "max_attempts = 3", "")).await;
    assert_eq!(gw.post(alarm(signer(), "b1", "prod-a", "ALARM").to_string()).await.0, 200);
    let dl = gw.wait_dead_letters(Duration::from_secs(10)).await;
    assert_eq!(dl.list().len(), 1);
    assert_eq!(sink.posts().len(), 3);
    gw.shutdown().await;
}

#[tokio::test]
async fn slow_destination_does_not_delay_another_and_order_is_kept() {
    let sink = SlackSink::start().await.unwrap();
    sink.script("slow", vec![Reply::Slow(Duration::from_secs(3))]);
    let cfg = format!(
        r#"
[sns]
topics = ["arn:aws:sns:*:123456789012:alarms-*"]
[destinations.slow]
url = "{}"
[destinations.fast]
url = "{}"
rate = "100/s"
burst = 100
[[route]]
name = "all"
to = ["slow", "fast"]
"#,
        sink.url("slow"),
        sink.url("fast")
    );
    let gw = start(&cfg).await;
    let started = Instant::now();
    let states = ["ALARM", "OK", "ALARM", "OK"];
    for (i, s) in states.iter().enumerate() {
        assert_eq!(gw.post(alarm(signer(), &format!("o{i}"), "prod-flap", s).to_string()).await.0, 200);
    }
    assert!(sink.wait_until(Duration::from_secs(2), |_| sink.delivered("fast").len() == 4).await);
    assert!(started.elapsed() < Duration::from_secs(2), "fast channel waited for the slow one");
    let order: Vec<String> =
        sink.delivered("fast").iter().map(|p| p.body["text"].as_str().unwrap().to_string()).collect();
    for (text, state) in order.iter().zip(states) {
        assert!(text.contains(&format!("{state}: prod-flap")), "{order:?}");
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn rate_limit_spaces_posts() {
    let sink = SlackSink::start().await.unwrap();
    let gw = start(&one_channel(&sink, "c", "rate = \"4/s\"\nburst = 1", "")).await;
    // Two posts (below the digest threshold): the second must wait ~250 ms.
    for i in 0..2 {
        assert_eq!(gw.post(alarm(signer(), &format!("s{i}"), "prod-a", "ALARM").to_string()).await.0, 200);
    }
    assert!(sink.wait_until(Duration::from_secs(5), |p| p.len() == 2).await);
    let p = sink.posts();
    let gap = p[1].at - p[0].at;
    assert!(gap >= Duration::from_millis(200), "posts {gap:?} apart at 4/s");
    gw.shutdown().await;
}

#[tokio::test]
async fn backlog_becomes_a_digest_naming_every_alarm() {
    let sink = SlackSink::start().await.unwrap();
    sink.script("c", vec![Reply::TooMany(1)]);
    let gw = start(&one_channel(&sink, "c", "rate = \"100/s\"", "")).await;
    for i in 0..8 {
        assert_eq!(
            gw.post(alarm(signer(), &format!("dg{i}"), &format!("prod-n{i}"), "ALARM").to_string()).await.0,
            200
        );
    }
    assert!(
        sink.wait_until(Duration::from_secs(10), |_| {
            let all: String =
                sink.delivered("c").iter().map(|p| p.body["text"].as_str().unwrap_or("").to_string()).collect();
            (0..8).all(|i| all.contains(&format!("prod-n{i}")))
        })
        .await,
        "not every alarm reached Slack"
    );
    assert!(sink.delivered("c").len() < 8, "backlog was not merged into a digest");
    gw.shutdown().await;
}

#[tokio::test]
async fn a_burst_within_the_limit_goes_one_by_one_and_the_rest_as_a_digest() {
    let sink = SlackSink::start().await.unwrap();
    let gw = start(&one_channel(&sink, "c", "rate = \"1/s\"\nburst = 3", "")).await;
    for i in 0..5 {
        assert_eq!(
            gw.post(alarm(signer(), &format!("bu{i}"), &format!("prod-bu{i}"), "ALARM").to_string()).await.0,
            200
        );
    }
    assert!(sink.wait_until(Duration::from_secs(5), |_| name_counts(&sink, "c", "prod-bu").len() == 5).await);
    let texts: Vec<String> = sink.delivered("c").iter().map(|p| p.body["text"].as_str().unwrap().to_string()).collect();
    assert_eq!(texts.len(), 4, "{texts:?}");
    assert!(texts[..3].iter().all(|t| !t.contains("notifications:")), "the burst allowance was digested: {texts:?}");
    assert!(texts[3].starts_with("2 notifications:"), "{texts:?}");
    gw.shutdown().await;
}

#[tokio::test]
async fn a_refused_digest_is_retried_one_by_one_so_only_the_bad_alarm_is_dead_lettered() {
    let sink = SlackSink::start().await.unwrap();
    // 429 first, so the waiting alarms form a digest; Slack then refuses the digest, accepts
    // the next two singles and refuses the third.
    sink.script(
        "c",
        vec![
            Reply::TooMany(1),
            Reply::Status(400, "invalid_payload"),
            Reply::Ok,
            Reply::Ok,
            Reply::Status(400, "invalid_blocks"),
        ],
    );
    let gw = start(&one_channel(&sink, "c", "rate = \"100/s\"", "")).await;
    for i in 0..3 {
        assert_eq!(
            gw.post(alarm(signer(), &format!("rd{i}"), &format!("prod-rd{i}"), "ALARM").to_string()).await.0,
            200
        );
    }
    let dl = gw.wait_dead_letters(Duration::from_secs(10)).await;
    let letters: Vec<_> = dl.list().into_iter().map(|l| l.unwrap()).collect();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert!(letters[0].reason.contains("invalid_blocks"));
    let delivered = name_counts(&sink, "c", "prod-rd");
    assert_eq!(delivered.len(), 2, "{delivered:?}");
    assert!(!delivered.contains_key(&letters[0].envelope.message_id.replace("rd", "prod-rd")));
    gw.shutdown().await;
}

#[tokio::test]
async fn a_state_change_that_arrives_after_a_newer_one_is_marked_late() {
    let sink = SlackSink::start().await.unwrap();
    let gw = start(&one_channel(&sink, "c", "rate = \"100/s\"\nburst = 10", "")).await;
    let at = |state: &str, old: &str, time: &str| {
        let mut m: serde_json::Value =
            serde_json::from_str(&alarm_message("prod-late", state, old, "r", "us-east-1", "123456789012")).unwrap();
        m["StateChangeTime"] = time.into();
        m.to_string()
    };
    // SNS delivers the OK (10:05) before the ALARM (10:00) it resolves.
    let ok = signer().notification(TOPIC, "late-ok", None, &at("OK", "ALARM", "2026-11-24T10:05:00.000+0000"));
    let alarm = signer().notification(TOPIC, "late-alarm", None, &at("ALARM", "OK", "2026-11-24T10:00:00.000+0000"));
    assert_eq!(gw.post(ok.to_string()).await.0, 200);
    assert!(sink.wait_until(Duration::from_secs(5), |p| p.len() == 1).await);
    assert_eq!(gw.post(alarm.to_string()).await.0, 200);
    assert!(sink.wait_until(Duration::from_secs(5), |p| p.len() == 2).await);
    let texts: Vec<String> = sink.delivered("c").iter().map(|p| p.body["text"].as_str().unwrap().to_string()).collect();
    assert!(!texts[0].contains("Late"), "{texts:?}");
    assert!(texts[1].starts_with(":hourglass: Late: ") && texts[1].contains("ALARM: prod-late"), "{texts:?}");
    gw.shutdown().await;
}

#[tokio::test]
async fn a_backlog_beyond_the_memory_queue_is_read_back_from_the_store_in_order_and_once() {
    let sink = SlackSink::start().await.unwrap();
    // The first post hangs, so everything after it piles up behind a 3-deep memory queue.
    sink.script("c", vec![Reply::Slow(Duration::from_millis(1500))]);
    let gw = start_with(&one_channel(&sink, "c", "rate = \"1000/s\"\nburst = 1000", ""), |s| s.queue_cap = 3).await;
    let n = 30;
    for i in 0..n {
        assert_eq!(
            gw.post(alarm(signer(), &format!("sp{i}"), &format!("prod-sp{i}"), "ALARM").to_string()).await.0,
            200
        );
    }
    assert!(
        sink.wait_until(Duration::from_secs(15), |_| name_counts(&sink, "c", "prod-sp").len() == n).await,
        "not every alarm was delivered: {:?}",
        name_counts(&sink, "c", "prod-sp")
    );
    let counts = name_counts(&sink, "c", "prod-sp");
    assert!(counts.values().all(|c| *c == 1), "an alarm was posted twice: {counts:?}");
    // Accept order is kept across the spill: names appear in the order they were sent.
    let re = regex::Regex::new(r"prod-sp(\d+)\b").unwrap();
    let seen: Vec<usize> = sink
        .delivered("c")
        .iter()
        .flat_map(|p| {
            let text = p.body["text"].as_str().unwrap_or("").to_string();
            re.captures_iter(&text).map(|c| c[1].parse().unwrap()).collect::<Vec<usize>>()
        })
        .collect();
    assert_eq!(seen, (0..n).collect::<Vec<_>>());
    assert!(gw.metrics().await.contains("webhook_relay_queue_depth{destination=\"c\"} 0"));
    gw.shutdown().await;
}

#[tokio::test]
async fn a_fallback_is_followed_one_hop_at_most() {
    let sink = SlackSink::start().await.unwrap();
    sink.script("main", vec![Reply::Status(404, "no_service"); 5]);
    sink.script("backup", vec![Reply::Status(410, "channel_is_archived"); 5]);
    let cfg = format!(
        r#"
[sns]
topics = ["arn:aws:sns:*:123456789012:alarms-*"]
[destinations.main]
url = "{}"
fallback = "backup"
[destinations.backup]
url = "{}"
fallback = "third"
[destinations.third]
url = "{}"
[[route]]
name = "all"
to = ["main"]
"#,
        sink.url("main"),
        sink.url("backup"),
        sink.url("third")
    );
    let gw = start(&cfg).await;
    assert_eq!(gw.post(alarm(signer(), "h1", "prod-a", "ALARM").to_string()).await.0, 200);
    let dl = gw.wait_dead_letters(Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let per = |c: &str| sink.posts().iter().filter(|p| p.channel == c).count();
    assert_eq!((per("main"), per("backup"), per("third")), (1, 1, 0), "{:?}", sink.posts());
    let letters = dl.list();
    assert_eq!(letters.len(), 1);
    let letter = letters[0].as_ref().unwrap();
    assert_eq!(letter.destination, "backup");
    assert!(letter.reason.contains("already a fallback from main"), "{}", letter.reason);
    // A replay starts the one-hop rule afresh: the letter is not marked as a fallback copy.
    assert_eq!(letter.envelope.fallback_from, Some("main".into()));
    gw.shutdown().await;
}

#[tokio::test]
async fn mentions_fire_on_alarm_only_unless_mention_states_says_otherwise() {
    let sink = SlackSink::start().await.unwrap();
    let cfg = |sink: &SlackSink, states: &str| {
        format!(
            r#"
[sns]
topics = ["arn:aws:sns:*:123456789012:alarms-*"]
[severity]
default = "critical"
[destinations.c]
url = "{}"
rate = "100/s"
burst = 10
mention_here = ["critical"]
{states}
[[route]]
name = "all"
to = ["c"]
"#,
            sink.url("c")
        )
    };
    let texts = |sink: &SlackSink| -> Vec<String> {
        sink.delivered("c").iter().map(|p| p.body["text"].as_str().unwrap_or_default().to_string()).collect()
    };
    let gw = start(&cfg(&sink, "")).await;
    assert_eq!(gw.post(alarm(signer(), "m1", "prod-m", "ALARM").to_string()).await.0, 200);
    assert!(sink.wait_until(Duration::from_secs(5), |_| sink.delivered("c").len() == 1).await);
    assert_eq!(gw.post(alarm(signer(), "m2", "prod-m", "OK").to_string()).await.0, 200);
    assert!(sink.wait_until(Duration::from_secs(5), |_| sink.delivered("c").len() == 2).await);
    let t = texts(&sink);
    assert!(t[0].starts_with("<!here>"), "{t:?}");
    assert!(!t[1].contains("<!here>"), "an OK paged the channel: {t:?}");
    gw.shutdown().await;

    let sink = SlackSink::start().await.unwrap();
    let gw = start(&cfg(&sink, "mention_states = [\"ALARM\", \"OK\"]")).await;
    assert_eq!(gw.post(alarm(signer(), "m3", "prod-n", "OK").to_string()).await.0, 200);
    assert!(sink.wait_until(Duration::from_secs(5), |_| sink.delivered("c").len() == 1).await);
    assert!(texts(&sink)[0].starts_with("<!here>"), "{:?}", texts(&sink));
    gw.shutdown().await;
}

#[tokio::test]
async fn metrics_show_the_process_and_how_long_the_oldest_delivery_waits() {
    let sink = SlackSink::start().await.unwrap();
    sink.script("c", vec![Reply::Status(503, "down"); 50]);
    let gw = start(&one_channel(&sink, "c", "max_attempts = 100", "")).await;
    // The public port answers a load balancer's probe without details.
    assert_eq!(reqwest_like::Client.get(gw.addr, "/healthz").await, (200, "ok\n".to_string()));
    assert_eq!(gw.post(alarm(signer(), "p1", "prod-a", "ALARM").to_string()).await.0, 200);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let m = gw.metrics().await;
    let value = |name: &str| -> f64 {
        m.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing:\n{m}"))
    };
    assert!(value("process_cpu_seconds_total") > 0.0);
    assert!(value("process_resident_memory_bytes") > 1e6);
    assert!(value("process_open_fds") >= 3.0);
    let start = value("process_start_time_seconds");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    assert!(start <= now && start > now - 3600.0, "{start}");
    let age = value("webhook_relay_oldest_pending_seconds{destination=\"c\"}");
    assert!((1.0..30.0).contains(&age), "the undelivered alarm waits for {age} s");
    assert!(m.trim_end().ends_with("# EOF") && m.matches("# EOF").count() == 1, "{m}");
    gw.shutdown().await;
}

/// A second sink, written outside the crate against the public seam: the worker loop
/// drives it (order, retry, refusal to dead letter) without knowing what it is.
struct RecordingSink {
    seen: std::sync::Mutex<Vec<Vec<String>>>,
    script: std::sync::Mutex<std::collections::VecDeque<webhook_relay::deliver::Verdict>>,
}

#[async_trait::async_trait]
impl webhook_relay::deliver::Sink for RecordingSink {
    async fn send(
        &self,
        dest: &webhook_relay::config::Destination,
        items: &[webhook_relay::deliver::Item],
    ) -> webhook_relay::deliver::Answer {
        use webhook_relay::deliver::Verdict;
        let names =
            items.iter().map(|i| format!("{}:{}", dest.name, i.prepared.notification.envelope.message_id)).collect();
        self.seen.lock().unwrap().push(names);
        let verdict = self.script.lock().unwrap().pop_front().unwrap_or(Verdict::Done);
        let outcome = match verdict {
            Verdict::Done => "ok",
            Verdict::Refused => "rejected",
            _ => "server_error",
        };
        webhook_relay::deliver::Answer { verdict, outcome, detail: format!("test sink said {verdict:?}") }
    }
}

#[tokio::test]
async fn a_sink_outside_the_crate_plugs_into_the_worker() {
    use webhook_relay::deliver::Verdict;
    let sink = std::sync::Arc::new(RecordingSink {
        seen: Default::default(),
        script: std::sync::Mutex::new([Verdict::Retry, Verdict::Done, Verdict::Refused].into_iter().collect()),
    });
    let cfg = "[sns]\ntopics = [\"arn:aws:sns:*:123456789012:alarms-*\"]\n\
               [destinations.t]\nurl = \"http://127.0.0.1:9/unused\"\nrate = \"100/s\"\nburst = 10\n\
               [[route]]\nname = \"all\"\nto = [\"t\"]\n";
    let as_sink: std::sync::Arc<dyn webhook_relay::deliver::Sink> = sink.clone();
    let gw = start_with(cfg, |s| s.sinks = Some(webhook_relay::deliver::Sinks { webhook: as_sink, app: None })).await;
    assert_eq!(gw.post(alarm(signer(), "s1", "prod-a", "ALARM").to_string()).await.0, 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    while sink.seen.lock().unwrap().len() < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(gw.post(alarm(signer(), "s2", "prod-b", "ALARM").to_string()).await.0, 200);
    let dl = gw.wait_dead_letters(Duration::from_secs(10)).await;
    let seen = sink.seen.lock().unwrap().clone();
    assert_eq!(seen, vec![vec!["t:s1".to_string()], vec!["t:s1".to_string()], vec!["t:s2".to_string()]]);
    let letters = dl.list();
    assert_eq!(letters.len(), 1);
    let letter = letters[0].as_ref().unwrap();
    assert_eq!((letter.reason.as_str(), letter.envelope.message_id.as_str()), ("test sink said Refused", "s2"));
    let m = gw.metrics().await;
    assert!(m.contains("webhook_relay_deliveries_total{destination=\"t\",outcome=\"server_error\"} 1"), "{m}");
    assert!(m.contains("webhook_relay_delivery_retries_total{destination=\"t\"} 1"), "{m}");
    gw.shutdown().await;
}

#[tokio::test]
async fn eventbridge_events_route_by_source_and_detail_type_and_render_readably() {
    let sink = SlackSink::start().await.unwrap();
    let cfg = format!(
        r#"
[sns]
topics = ["arn:aws:sns:*:123456789012:alarms-*"]
[severity]
rules = [{{ field = "alarm_name", regex = '-(critical)$' }}]
[destinations.sec]
url = "{sec}"
rate = "100/s"
burst = 10
[destinations.health]
url = "{health}"
rate = "100/s"
burst = 10
[destinations.alarms]
url = "{alarms}"
rate = "100/s"
burst = 10
[[route]]
name = "security"
source = ["aws.guardduty"]
to = ["sec"]
[[route]]
name = "health"
detail_type = ["AWS Health Event", "Backup Job State Change"]
to = ["health"]
[[route]]
name = "eu-critical"
account = ["210987654321"]
region = ["eu-west-1"]
severity = ["critical"]
state = ["ALARM"]
to = ["alarms"]
[[route]]
name = "composite"
alarm_name = ["prod-checkout-*"]
to = ["alarms"]
"#,
        sec = sink.url("sec"),
        health = sink.url("health"),
        alarms = sink.url("alarms")
    );
    let gw = start(&cfg).await;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/eventbridge");
    let samples = [
        "guardduty-finding",
        "health-event",
        "backup-job-failed",
        "cloudwatch-metric-alarm",
        "cloudwatch-composite-alarm",
    ];
    for (i, name) in samples.iter().enumerate() {
        let message = std::fs::read_to_string(dir.join(format!("{name}.json"))).unwrap();
        let body = signer().notification(TOPIC, &format!("eb{i}"), None, &message).to_string();
        assert_eq!(gw.post(body).await, (200, "accepted\n".to_string()), "{name}");
    }
    let done = |_: &[webhook_relay::testkit::Post]| {
        sink.delivered("sec").len() == 1 && sink.delivered("health").len() == 2 && sink.delivered("alarms").len() == 2
    };
    assert!(
        sink.wait_until(Duration::from_secs(10), done).await,
        "{:?}",
        sink.posts().iter().map(|p| (&p.channel, p.body["text"].to_string())).collect::<Vec<_>>()
    );
    let sec = serde_json::to_string(&sink.delivered("sec")[0].body).unwrap();
    assert!(sec.contains("GuardDuty Finding") && sec.contains("UnauthorizedAccess:EC2/SSHBruteForce"), "{sec}");
    assert!(!sec.contains("schemaVersion"), "a raw JSON dump: {sec}");
    let alarm = &sink.delivered("alarms")[0].body;
    let text = alarm["text"].as_str().unwrap();
    assert!(text.contains("ALARM") && text.contains("prod-api-cpu-critical"), "{text}");
    let composite = serde_json::to_string(&sink.delivered("alarms")[1].body).unwrap();
    assert!(
        composite.contains("prod-checkout-degraded-critical") && composite.contains("ALARM(prod-checkout-5xx)"),
        "{composite}"
    );
    let rendered = serde_json::to_string(alarm).unwrap();
    assert!(
        rendered.contains("eu-west-1.console.aws.amazon.com") && rendered.contains("210987654321 / eu-west-1"),
        "{rendered}"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn an_enormous_retry_after_is_clamped_to_max_retry_after() {
    let sink = SlackSink::start().await.unwrap();
    // 999999 s is 11.5 days: clamped to the destination's 1 s.
    sink.script("c", vec![Reply::TooMany(999_999), Reply::TooMany(999_999)]);
    let gw = start(&one_channel(&sink, "c", "rate = \"100/s\"\nburst = 10\nmax_retry_after = \"1s\"", "")).await;
    assert_eq!(gw.post(alarm(signer(), "ra1", "prod-a", "ALARM").to_string()).await.0, 200);
    assert!(sink.wait_until(Duration::from_secs(10), |_| sink.delivered("c").len() == 1).await, "never delivered");
    let posts = sink.posts();
    assert_eq!(posts.len(), 3);
    assert!(posts[1].at - posts[0].at >= Duration::from_millis(950), "did not wait the clamped Retry-After");
    let m = gw.metrics().await;
    assert!(m.contains("webhook_relay_retry_after_clamped_total{destination=\"c\"} 2"), "{m}");
    gw.shutdown().await;
}
