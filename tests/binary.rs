//! The real binary: durability across `kill -9`, SIGTERM, and the command-line tools.

mod support;

use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_webhook-relay");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `serve` on the layout in `dir`, on ports it picks; returns it with its port and admin port.
fn serve(dir: &Path) -> (Child, u16, u16) {
    let mut cmd = Command::new(BIN);
    webhook_relay::testkit::serve_args(&mut cmd, dir, 0, 0);
    let log = dir.join("serve.log");
    let mut child =
        cmd.args(["--shutdown-timeout", "5s"]).stderr(std::fs::File::create(&log).unwrap()).spawn().unwrap();
    let (port, admin) = bound(&mut child, &log);
    (child, port, admin)
}

/// The ports a gateway started on port 0 bound, from its log.
fn bound(child: &mut Child, log: &Path) -> (u16, u16) {
    let (addr, admin) =
        webhook_relay::testkit::bound_addrs(log, child, Duration::from_secs(20)).unwrap_or_else(|e| panic!("{e}"));
    (addr.port(), admin.port())
}

/// `serve` on `routes`, its stderr to `<dir>/log`; the caller adds flags and env, spawns,
/// and reads the ports with `bound`.
fn logged_serve(dir: &Path, routes: &str) -> Command {
    std::fs::write(dir.join("routes.toml"), routes).unwrap();
    signer().pin_into(&dir.join("certs")).unwrap();
    let log = std::fs::File::create(dir.join("log")).unwrap();
    let mut cmd = Command::new(BIN);
    webhook_relay::testkit::serve_args(&mut cmd, dir, 0, 0);
    cmd.stderr(log);
    cmd
}

async fn wait_ready(admin: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(tcp) = tokio::net::TcpStream::connect(("127.0.0.1", admin)).await {
            drop(tcp);
            if reqwest_like::Client.get(([127, 0, 0, 1], admin).into(), "/readyz").await.0 == 200 {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("gateway not ready");
}

#[tokio::test]
async fn accepted_alarms_survive_kill_9_and_are_delivered_once() {
    let dir = tempfile::tempdir().unwrap();
    let slack_port = free_port();
    one_route_config(dir.path(), slack_port);
    let (mut child, port, admin) = serve(dir.path());
    wait_ready(admin).await;
    let addr = ([127, 0, 0, 1], port).into();
    const N: usize = 40;
    for i in 0..N {
        let body = alarm(signer(), &format!("k{i}"), &format!("prod-k{i}"), "ALARM").to_string();
        assert_eq!(reqwest_like::Client.post(addr, "/sns", &[], body.into()).await.0, 200);
    }
    // Slack is down (connection refused) the whole time: nothing was delivered yet.
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    let sink = SlackSink::start_on(([127, 0, 0, 1], slack_port).into()).await.unwrap();
    let (mut child, port, admin) = serve(dir.path());
    wait_ready(admin).await;
    let all_arrived = sink.wait_until(Duration::from_secs(20), |_| name_counts(&sink, "c", "prod-k").len() == N).await;
    assert!(all_arrived, "not every accepted alarm arrived after restart");
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Each alarm exactly once (digests name several alarms per post).
    let counts = name_counts(&sink, "c", "prod-k");
    let duplicates: usize = counts.values().map(|n| n - 1).sum();
    assert_eq!(counts.len(), N);
    assert_eq!(duplicates, 0, "deliveries repeated after restart: {counts:?}");

    // The MessageId memory survived the kill too.
    let addr = ([127, 0, 0, 1], port).into();
    let again = alarm(signer(), "k0", "prod-k0", "ALARM").to_string();
    assert_eq!(reqwest_like::Client.post(addr, "/sns", &[], again.into()).await, (200, "duplicate\n".to_string()));

    // Deliveries that succeeded are not repeated after another kill -9: once the store
    // says it holds nothing (every completion committed), a restart posts nothing again.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = reqwest_like::Client.get(([127, 0, 0, 1], admin).into(), "/metrics").await.1;
        if m.lines().any(|l| l == "webhook_relay_store_messages 0") {
            break;
        }
        assert!(Instant::now() < deadline, "store never emptied: {m}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let posts_before = sink.posts().len();
    let (mut child, _, admin) = serve(dir.path());
    wait_ready(admin).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(sink.posts().len(), posts_before, "completed deliveries were repeated after restart");

    // SIGTERM: exits cleanly within the shutdown timeout.
    let started = Instant::now();
    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(6));
}

fn one_route_config(dir: &Path, slack_port: u16) {
    let url = format!("http://127.0.0.1:{slack_port}/hook/c");
    let cfg = format!(
        "[sns]\ntopics = [\"arn:aws:sns:*:123456789012:alarms-*\"]\n[destinations.c]\nurl = \"{url}\"\nrate = \"200/s\"\nburst = 50\nmax_attempts = 1000\n[[route]]\nname = \"all\"\nto = [\"c\"]\n"
    );
    std::fs::write(dir.join("routes.toml"), cfg).unwrap();
    signer().pin_into(&dir.join("certs")).unwrap();
}

#[tokio::test]
async fn sigterm_during_a_burst_loses_nothing_it_accepted() {
    let dir = tempfile::tempdir().unwrap();
    // Slack answers slowly, so deliveries are still in flight when SIGTERM lands.
    let sink = SlackSink::start().await.unwrap();
    sink.script("c", vec![Reply::Slow(Duration::from_millis(300)); 5]);
    one_route_config(dir.path(), sink.addr.port());
    let (mut child, port, admin) = serve(dir.path());
    wait_ready(admin).await;
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    const N: usize = 150;
    let bodies: Vec<String> =
        (0..N).map(|i| alarm(signer(), &format!("b{i}"), &format!("prod-b{i}"), "ALARM").to_string()).collect();
    let mut tasks = Vec::new();
    for (i, body) in bodies.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            // Spread the burst over ~300 ms so SIGTERM lands in the middle of it.
            tokio::time::sleep(Duration::from_millis(2 * i as u64)).await;
            (i, reqwest_like::try_post(addr, body.into()).await)
        }));
    }
    tokio::time::sleep(Duration::from_millis(120)).await;
    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    let mut accepted = Vec::new();
    let mut refused = 0;
    for t in tasks {
        match t.await.unwrap() {
            (i, Ok((200, _))) => accepted.push(i),
            (_, Ok((503, _))) | (_, Err(_)) => refused += 1,
            (i, other) => panic!("request {i}: {other:?}"),
        }
    }
    assert!(child.wait().unwrap().success());
    assert!(!accepted.is_empty() && refused > 0, "SIGTERM did not land mid-burst: {} accepted", accepted.len());

    // Everything answered 200 arrives, after a restart if it was still pending.
    let (mut child, _, admin) = serve(dir.path());
    wait_ready(admin).await;
    let all = sink
        .wait_until(Duration::from_secs(20), |_| {
            let counts = name_counts(&sink, "c", "prod-b");
            accepted.iter().all(|i| counts.contains_key(&format!("prod-b{i}")))
        })
        .await;
    let counts = name_counts(&sink, "c", "prod-b");
    assert!(all, "{} accepted, {} delivered", accepted.len(), counts.len());
    // A request refused with 503 or cut off was never promised; it may not be delivered.
    assert!(counts.keys().all(|k| accepted.contains(&k["prod-b".len()..].parse::<usize>().unwrap())));
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn dead_letter_commands_on_a_real_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let dl = webhook_relay::store::DeadLetters::new(dir.path());
    for i in 0..2 {
        dl.write(&webhook_relay::queue::DeadLetter {
            id: format!("{i}-ops"),
            destination: "ops".into(),
            reason: "HTTP 400 invalid_payload".into(),
            attempts: 1,
            failed_at: "2026-01-01T00:00:00Z".into(),
            accepted_at_ms: i,
            envelope: webhook_relay::model::Envelope {
                message_id: format!("m{i}"),
                topic_arn: TOPIC.into(),
                subject: Some(format!("subject {i}")),
                message: "{}".into(),
                timestamp: "2026-01-01T00:00:00Z".into(),
                fallback_from: None,
            },
            severity: None,
        })
        .unwrap();
    }
    let run = |args: &[&str]| {
        let out = Command::new(BIN).arg("dead-letters").arg("--data-dir").arg(dir.path()).args(args).output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let (code, list) = run(&["list"]);
    assert_eq!(code, Some(0));
    assert!(list.contains("0-ops") && list.contains("1-ops") && list.contains("invalid_payload"), "{list}");
    // A stray WEBHOOK_RELAY_ALL must not widen a one-id purge to every dead letter.
    let out = Command::new(BIN)
        .arg("dead-letters")
        .arg("--data-dir")
        .arg(dir.path())
        .args(["purge", "no-such-id"])
        .env("WEBHOOK_RELAY_ALL", "true")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(run(&["list"]).1.contains("0-ops"), "the environment turned a one-id purge into --all");
    // purge --all needs --yes; without it nothing is deleted.
    assert_eq!(run(&["purge", "--all"]).0, Some(2));
    assert!(run(&["list"]).1.contains("1-ops"));
    let (code, show) = run(&["show", "1-ops"]);
    assert_eq!(code, Some(0));
    assert!(show.contains("subject 1"));
    assert_eq!(run(&["show", "../etc/passwd"]).0, Some(1));
    assert_eq!(run(&["replay", "0-ops"]).0, Some(0));
    assert!(dir.path().join("replay/0-ops.json").exists());
    assert_eq!(run(&["purge", "1-ops"]).0, Some(0));
    assert_eq!(run(&["purge", "1-ops"]).0, Some(1));
    assert!(run(&["list"]).1.contains("no dead letters"));
    // The README spells the flag after the action too.
    let after = Command::new(BIN).args(["dead-letters", "list", "--data-dir"]).arg(dir.path()).output().unwrap();
    assert!(String::from_utf8_lossy(&after.stdout).contains("no dead letters"));
}

#[test]
fn check_accepts_the_example_and_reports_problems_with_lines() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("routes.toml");
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&example)
        .env("SLACK_OPS_CRITICAL", "https://hooks.slack.invalid/a")
        .env("SLACK_ONCALL", "https://hooks.slack.invalid/b")
        .env("SLACK_OPS_DEFAULT", "https://hooks.slack.invalid/c")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("routes.toml");
    std::fs::write(
        &bad,
        "[sns]\ntopics = [\"arn:aws:sns:*:1:a\"]\n[destinations.a]\nurl = \"https://hooks.slack.invalid/SECRETVALUE\"\n\
         [destinations.b]\nurl = \"env:WEBHOOK_RELAY_TEST_UNSET\"\n[[route]]\nname = \"x\"\nto = [\"nope\"]\n\
         [[route]]\nname = \"x\"\nstate = [\"ALRM\"]\nto = [\"a\"]\n",
    )
    .unwrap();
    let out = Command::new(BIN).args(["check", "--config"]).arg(&bad).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains(":4:7: warning") && text.contains("written in the file"), "{text}");
    assert!(text.contains(":6:7: error") && text.contains("WEBHOOK_RELAY_TEST_UNSET"), "{text}");
    assert!(text.contains(":9:7: error") && text.contains("unknown destination \"nope\""), "{text}");
    assert!(text.contains(":11:8: error") && text.contains("duplicate route name"), "{text}");
    assert!(text.contains(":12:10: error") && text.contains("ALRM"), "{text}");
    assert!(!text.contains("SECRETVALUE"), "check printed a secret: {text}");
}

#[test]
fn route_test_explains_where_a_real_alarm_goes() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("routes.toml");
    std::fs::write(
        &cfg,
        "[sns]\ntopics = [\"*\"]\nallow_any_account = true\n[severity]\nrules = [{ field = \"alarm_name\", regex = '(?i)(critical)' }]\n\
         [destinations.a]\nurl = \"http://127.0.0.1:1/a\"\n[destinations.b]\nurl = \"http://127.0.0.1:1/b\"\n\
         [[route]]\nname = \"west\"\nregion = [\"us-west-2\"]\nstate = [\"ALARM\"]\nto = [\"a\"]\n\
         [default_route]\nto = [\"b\"]\n",
    )
    .unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/sns-real/cloudwatch-alarm-v1-us-west-2-2020-asg.json");
    let out = Command::new(BIN).args(["route-test", "--payload", "--config"]).arg(&cfg).arg(&fixture).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("routes: west") && text.contains("destinations: a"), "{text}");
    assert!(text.contains("\"attachments\""), "--payload printed no JSON: {text}");
    assert!(!text.contains("127.0.0.1:1/a"), "route-test printed a webhook URL");
    // The real message is from 2020: the door would refuse it as too old, and says so.
    assert!(text.contains("refused at the door: too old"), "{text}");

    // The shipped example works without the production secrets in the environment.
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("routes.toml");
    let out = Command::new(BIN)
        .args(["route-test", "--config"])
        .arg(&example)
        .arg(&fixture)
        .env_remove("SLACK_OPS_CRITICAL")
        .env_remove("SLACK_ONCALL")
        .env_remove("SLACK_OPS_DEFAULT")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    // Its topics pin other accounts: this message's topic is not allowed.
    assert!(
        text.contains("refused at the door: topic arn:aws:sns:us-west-2:") && text.contains("not in [sns].topics"),
        "{text}"
    );

    // The example alarm in the repository goes where the example routes say.
    let alarm = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/cloudwatch-alarm.json");
    let out = Command::new(BIN).args(["route-test", "--config"]).arg(&example).arg(&alarm).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("severity: critical"), "{text}");
    assert!(
        text.contains("routes: prod-critical, prod")
            && text.contains("destinations: ops-critical, oncall, ops-default"),
        "{text}"
    );
}

#[test]
fn demo_runs_end_to_end() {
    let out = Command::new(BIN).arg("demo").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("403 bad_signature"), "{text}");
    assert!(text.contains("200 duplicate"), "{text}");
    assert!(text.contains("#oncall") && text.contains("answered 429"), "{text}");
    assert!(
        text.contains("prod-cache-evictions-critical") && text.contains("webhook_relay_sns_accepted_total 8"),
        "{text}"
    );
    // The Slack app destination keeps the flapping alarm in one thread.
    let app = text.split("#C0DEMO").nth(1).unwrap_or_else(|| panic!("{text}"));
    let app = app.split("one message as").next().unwrap_or("");
    assert!(app.matches("prod-cache-evictions-critical").count() >= 4, "{app}");
    assert!(app.contains("↳ :large_green_circle: OK: prod-cache-evictions-critical (was ALARM for"), "{app}");
    assert!(app.contains("(first post updated:"), "{app}");
    // One whole message as the channel shows it: header, fields and the console link.
    let shown = text.split("one message as #ops-critical shows it:").nth(1).unwrap_or_else(|| panic!("{text}"));
    assert!(shown.contains("| Severity: critical"), "{text}");
    assert!(shown.contains("(https://us-east-1.console.aws.amazon.com/cloudwatch/home?region=us-east-1#alarmsV2:alarm/prod-api-5xx-critical)"), "{text}");
    assert!(text.contains("name = \"prod-critical\""), "the routes it used: {text}");
    assert!(
        text.contains("next:") && text.contains("webhook-relay check") && text.contains("webhook-relay route-test"),
        "{text}"
    );
}

#[test]
fn every_serve_flag_has_help_and_version_works() {
    let out = Command::new(BIN).args(["serve", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{help}");
    // clap prints the help after the flag, or (long help) on the next line.
    let lines: Vec<&str> = help.lines().map(str::trim).collect();
    let mut flags = 0;
    for (i, line) in lines.iter().enumerate().filter(|(_, l)| l.starts_with("--")) {
        flags += 1;
        let (flag, rest) = line.split_once("  ").unwrap_or((line, ""));
        let next = lines.get(i + 1).copied().unwrap_or("");
        let described = !rest.trim().is_empty() || !(next.is_empty() || next.starts_with(['-', '[']));
        assert!(described, "serve flag without help text: {flag}\n{help}");
    }
    assert!(flags >= 12, "{help}");
    let out = Command::new(BIN).arg("--version").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with(&format!("webhook-relay {}", env!("CARGO_PKG_VERSION"))));
}

#[tokio::test]
async fn logs_name_the_alarm_and_print_muted_routes_plainly() {
    let dir = tempfile::tempdir().unwrap();
    let sink = SlackSink::start().await.unwrap();
    let url = sink.url("c");
    let routes = format!(
        "[sns]\ntopics = [\"arn:aws:sns:*:123456789012:alarms-*\"]\n[destinations.c]\nurl = \"{url}\"\n\
         [[route]]\nname = \"hush\"\nalarm_name = [\"noisy-*\"]\nenabled = false\n[[route]]\nname = \"all\"\nto = [\"c\"]\n"
    );
    let mut cmd = logged_serve(dir.path(), &routes);
    let mut child = cmd.env("WEBHOOK_RELAY_LOG", "webhook_relay=debug").spawn().unwrap();
    let (port, admin) = bound(&mut child, &dir.path().join("log"));
    wait_ready(admin).await;
    let addr = ([127, 0, 0, 1], port).into();
    let body = alarm(signer(), "l1", "prod-db-latency", "ALARM").to_string();
    assert_eq!(reqwest_like::Client.post(addr, "/sns", &[], body.into()).await.0, 200);
    let body = alarm(signer(), "l2", "noisy-disk", "ALARM").to_string();
    assert_eq!(reqwest_like::Client.post(addr, "/sns", &[], body.into()).await.0, 200);
    assert!(sink.wait_until(Duration::from_secs(5), |_| sink.delivered("c").len() == 1).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    child.kill().unwrap();
    child.wait().unwrap();
    let text = std::fs::read_to_string(dir.path().join("log")).unwrap();
    let line =
        |needle: &str| text.lines().find(|l| l.contains(needle)).unwrap_or_else(|| panic!("no {needle:?}:\n{text}"));
    assert!(line("notification accepted").contains("alarm=prod-db-latency"), "{text}");
    let delivered = line("delivered");
    assert!(delivered.contains("DEBUG") && delivered.contains("prod-db-latency"), "{text}");
    let muted = line("muted by route");
    assert!(muted.contains("route=hush") && muted.contains("alarm=noisy-disk") && !muted.contains("Some("), "{text}");
    assert!(!text.contains(&url), "a webhook URL in the log:\n{text}");
    assert!(!text.contains('\x1b'), "terminal colour codes in a log file:\n{text}");
}

#[tokio::test]
async fn https_proxy_from_the_environment_with_credentials_never_logged() {
    use support::proxy::{tls_front, Mode, Proxy, TestCa};
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("corp root");
    let sink = SlackSink::start().await.unwrap();
    let front = tls_front(&ca, &["hooks.slack.test"], sink.addr).await;
    let proxy = Proxy::start(Mode::Tunnel { to: front }, Some("relay:s3cret")).await;
    let ca_file = ca.write_pem(dir.path());
    let mut cmd = logged_serve(
        dir.path(),
        "[sns]\ntopics = [\"arn:aws:sns:*:123456789012:alarms-*\"]\n[destinations.c]\nurl = \"env:SLACK_C\"\n\
         [[route]]\nname = \"all\"\nto = [\"c\"]\n",
    );
    let mut child = cmd
        .args(["--tls-roots", "webpki", "--extra-ca"])
        .arg(&ca_file)
        .env("SLACK_C", "https://hooks.slack.test/hook/c")
        .env("HTTPS_PROXY", proxy.url_with("relay:s3cret"))
        .env("no_proxy", "example.org")
        .env("WEBHOOK_RELAY_LOG", "webhook_relay=debug")
        .spawn()
        .unwrap();
    let (port, admin) = bound(&mut child, &dir.path().join("log"));
    wait_ready(admin).await;
    let addr = ([127, 0, 0, 1], port).into();
    let body = alarm(signer(), "e1", "prod-env", "ALARM").to_string();
    assert_eq!(reqwest_like::Client.post(addr, "/sns", &[], body.into()).await.0, 200);
    let delivered = sink.wait_until(Duration::from_secs(10), |_| sink.delivered("c").len() == 1).await;
    let metrics = reqwest_like::Client.get(([127, 0, 0, 1], admin).into(), "/metrics").await.1;
    child.kill().unwrap();
    child.wait().unwrap();
    let text = std::fs::read_to_string(dir.path().join("log")).unwrap();
    assert!(delivered, "not delivered through HTTPS_PROXY: {:?}\n{text}", proxy.connects());
    assert_eq!(proxy.connects(), vec!["hooks.slack.test:443".to_string()]);
    assert!(text.contains("outbound requests go through a proxy") && text.contains("proxy=127.0.0.1"), "{text}");
    assert!(metrics.contains("webhook_relay_outbound_proxy{proxy_host=\"127.0.0.1\"} 1"), "{metrics}");
    assert!(!text.contains("s3cret") && !metrics.contains("s3cret"), "proxy credentials printed:\n{text}");
}

#[test]
fn route_test_reads_every_eventbridge_sample() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = root.join("routes.toml");
    let cases = [
        ("cloudwatch-metric-alarm", "alarm: prod-api-cpu-critical -> ALARM"),
        ("cloudwatch-composite-alarm", "alarm: prod-checkout-degraded-critical -> ALARM"),
        ("guardduty-finding", "EventBridge event: GuardDuty Finding from aws.guardduty"),
        ("health-event", "EventBridge event: AWS Health Event from aws.health"),
        ("backup-job-failed", "EventBridge event: Backup Job State Change from aws.backup"),
    ];
    for (name, says) in cases {
        let sample = root.join(format!("examples/eventbridge/{name}.json"));
        let out =
            Command::new(BIN).args(["route-test", "--payload", "--config"]).arg(&config).arg(&sample).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{name}: {text}");
        assert!(text.contains(says), "{name}: {text}");
        assert!(text.contains("\"attachments\"") && !text.contains("\\\"detail\\\""), "{name}: {text}");
    }
}

#[tokio::test]
async fn trace_logging_into_the_config_folder_is_not_a_feedback_loop() {
    let dir = tempfile::tempdir().unwrap();
    one_route_config(dir.path(), free_port());
    let log = std::fs::File::create(dir.path().join("relay.log")).unwrap();
    let mut cmd = Command::new(BIN);
    webhook_relay::testkit::serve_args(&mut cmd, dir.path(), 0, 0);
    let mut child = cmd.env("WEBHOOK_RELAY_LOG", "trace").stderr(log).spawn().unwrap();
    let (_, admin) = bound(&mut child, &dir.path().join("relay.log"));
    wait_ready(admin).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let metrics = reqwest_like::Client.get(([127, 0, 0, 1], admin).into(), "/metrics").await.1;
    child.kill().unwrap();
    child.wait().unwrap();
    let size = std::fs::metadata(dir.path().join("relay.log")).unwrap().len();
    // Before the fix: tens of MB in two seconds.
    assert!(size < 1 << 20, "the log grew to {size} bytes in 2 s");
    assert!(
        !metrics.contains("webhook_relay_config_reloads_total{outcome="),
        "the log's writes triggered reloads: {metrics}"
    );
}

#[tokio::test]
async fn queue_commands_look_inside_the_log_while_the_gateway_runs_and_after() {
    let dir = tempfile::tempdir().unwrap();
    one_route_config(dir.path(), free_port()); // Slack down: everything stays pending
    let (mut child, port, admin) = serve(dir.path());
    wait_ready(admin).await;
    let addr = ([127, 0, 0, 1], port).into();
    for i in 0..3 {
        let body = alarm(signer(), &format!("q{i}"), &format!("prod-queued{i}"), "ALARM").to_string();
        assert_eq!(reqwest_like::Client.post(addr, "/sns", &[], body.into()).await.0, 200);
    }
    let run = |args: &[&str]| {
        let out =
            Command::new(BIN).arg("queue").args(args).arg("--data-dir").arg(dir.path().join("data")).output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let check = |round: &str| {
        let (code, stats) = run(&["stats"]);
        assert_eq!(code, Some(0), "{round}: {stats}");
        assert!(stats.contains("messages pending: 3") && stats.contains("c: 3 pending, oldest"), "{round}: {stats}");
        let (_, list) = run(&["list", "--destination", "c"]);
        assert_eq!(list.lines().count(), 3, "{round}: {list}");
        assert!(list.contains("prod-queued0") && list.contains("prod-queued2"), "{round}: {list}");
        let seq = list.lines().next().unwrap().split('\t').next().unwrap().to_string();
        let (code, show) = run(&["show", &seq]);
        assert_eq!(code, Some(0), "{show}");
        assert!(show.contains("\"message_id\": \"q0\"") && show.contains("\"done\": false"), "{round}: {show}");
        assert_eq!(run(&["show", "999999"]).0, Some(1));
    };
    check("running");
    child.kill().unwrap();
    child.wait().unwrap();
    check("killed");
}
