//! `webhook-relay demo`: the whole path on 127.0.0.1 with nothing configured. It starts
//! the real gateway in-process with a freshly made signing key pinned, a stand-in Slack
//! with three channels (one answers 429 once), sends a burst of signed CloudWatch alarms
//! over real HTTP (a duplicate, a forged one and a flapping alarm among them), and prints
//! what each channel received and a metrics summary.

use std::time::Duration;

use crate::testkit::signer::alarm_message;
use crate::testkit::{Reply, SlackSink, TestSigner};

const TOPIC: &str = "arn:aws:sns:us-east-1:123456789012:alarms-prod";
const CHANNELS: [&str; 3] = ["ops-critical", "oncall", "ops-default"];

pub fn run(out: &mut dyn std::io::Write) -> i32 {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            let _ = writeln!(out, "cannot start runtime: {e}");
            return 1;
        }
    };
    match runtime.block_on(demo(out)) {
        Ok(()) => 0,
        Err(e) => {
            let _ = writeln!(out, "demo failed: {e:#}");
            1
        }
    }
}

fn routes(sink: &SlackSink) -> String {
    format!(
        r#"[sns]
topics = ["arn:aws:sns:*:123456789012:alarms-*"]
max_age = "1h"

[severity]
default = "warning"
rules = [{{ field = "alarm_name", regex = '-(critical|warning|info)$' }}]

[destinations.ops-critical]
url = "{}"
rate = "5/s"
mention_here = ["critical"]

[destinations.oncall]
url = "{}"
rate = "5/s"

[destinations.ops-default]
url = "{}"
rate = "5/s"

# A Slack app (bot token, the Web API): one thread per alarm.
[destinations.ops-app]
token = "xoxb-demo-token"
channel = "C0DEMO"
lifecycle = "thread+update"
rate = "50/s"
burst = 20

[[route]]
name = "prod-critical"
alarm_name = ["prod-*"]
severity = ["critical"]
to = ["ops-critical", "oncall", "ops-app"]
continue = true

[[route]]
name = "prod"
alarm_name = ["prod-*"]
to = ["ops-default"]

[default_route]
to = ["ops-default"]
"#,
        sink.url(CHANNELS[0]),
        sink.url(CHANNELS[1]),
        sink.url(CHANNELS[2])
    )
}

async fn demo(out: &mut dyn std::io::Write) -> anyhow::Result<()> {
    let dir = tempfile_dir()?;
    let sink = SlackSink::start().await?;
    sink.script("oncall", vec![Reply::TooMany(1)]);
    writeln!(out, "generating a 2048-bit RSA signing key and certificate ...")?;
    let signer = tokio::task::spawn_blocking(|| TestSigner::generate("us-east-1")).await??;
    signer.pin_into(&dir.join("certs"))?;
    std::fs::write(dir.join("routes.toml"), routes(&sink))?;
    let mut settings = crate::Settings::new(dir.join("routes.toml"), dir.join("data"));
    settings.listen = ([127, 0, 0, 1], 0).into();
    settings.admin_listen = ([127, 0, 0, 1], 0).into();
    settings.sns_cert_dir = Some(dir.join("certs"));
    settings.slack_api_url = sink.api_url();
    let running = crate::start(settings).await?;
    writeln!(
        out,
        "gateway on http://{}/sns, admin on http://{}, stand-in Slack on {}\n",
        running.addr, running.admin_addr, sink.addr
    )?;

    let alarm = |id: &str, name: &str, state: &str, old: &str, reason: &str| {
        let msg = alarm_message(name, state, old, reason, "us-east-1", "123456789012");
        signer.notification(TOPIC, id, Some(&format!("{state}: \"{name}\" in US East (N. Virginia)")), &msg)
    };
    let first = alarm("m-1", "prod-api-5xx-critical", "ALARM", "OK", "Threshold Crossed: 1 datapoint [42.0] > 5.0");
    let mut forged = alarm("m-3", "prod-api-5xx-critical", "OK", "ALARM", "looks legit");
    forged["Message"] = serde_json::Value::String(forged["Message"].as_str().unwrap_or("").replace("OK", "ALARM"));
    let mut sends = vec![
        ("critical alarm", first.clone()),
        ("duplicate delivery", first),
        ("forged (edited after signing)", forged),
        ("warning alarm", alarm("m-4", "prod-db-cpu-warning", "ALARM", "OK", "CPU 91% > 90%")),
    ];
    for (i, (state, old)) in [("ALARM", "OK"), ("OK", "ALARM"), ("ALARM", "OK"), ("OK", "ALARM")].iter().enumerate() {
        let reason = if *state == "ALARM" { "Evictions 1200 > 1000" } else { "Evictions 12 < 1000" };
        sends
            .push(("flapping alarm", alarm(&format!("flap-{i}"), "prod-cache-evictions-critical", state, old, reason)));
    }
    sends.push(("info alarm (default route)", alarm("m-9", "dev-batch-info", "INSUFFICIENT_DATA", "OK", "no data")));
    sends.push((
        "non-alarm notification",
        signer.notification(TOPIC, "m-10", Some("Deployment finished"), r#"{"service":"api","version":"1.42.0"}"#),
    ));

    writeln!(out, "sending {} SNS requests:", sends.len())?;
    for (what, body) in &sends {
        let (status, answer) = crate::testkit::slack_sink::post_sns(running.addr, body.to_string()).await?;
        writeln!(out, "  {status} {:<28} {what}", answer.trim())?;
    }

    // Let the workers drain: done when nothing new has arrived for 2 s (the 429 waits 1 s).
    let mut last = usize::MAX;
    let mut quiet = 0;
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let n = sink.posts().len();
        quiet = if n == last { quiet + 1 } else { 0 };
        last = n;
        if quiet >= 4 {
            break;
        }
    }

    writeln!(out, "\nwhat Slack received:")?;
    for channel in CHANNELS {
        writeln!(out, "  #{channel}")?;
        for p in sink.posts().iter().filter(|p| p.channel == channel) {
            let text = p.body["text"].as_str().unwrap_or("");
            let note = if p.status == 200 { String::new() } else { format!("   [answered {}; retried]", p.status) };
            writeln!(out, "    {text}{note}")?;
        }
    }
    writeln!(out, "  #C0DEMO (Slack app: one thread per alarm, the first post updated to the current state)")?;
    for p in sink.delivered("C0DEMO") {
        let text = p.body["text"].as_str().unwrap_or("");
        match (p.method.as_str(), p.body.get("thread_ts")) {
            ("chat.update", _) => writeln!(out, "      (first post updated: {text})")?,
            (_, Some(_)) => writeln!(out, "      ↳ {text}")?,
            _ => writeln!(out, "    {text}")?,
        }
    }
    if let Some(p) = sink.posts().iter().find(|p| p.channel == CHANNELS[0] && p.status == 200) {
        writeln!(out, "\none message as #{} shows it:", CHANNELS[0])?;
        for line in as_slack_shows_it(&p.body) {
            writeln!(out, "  | {line}")?;
        }
    }
    writeln!(
        out,
        "\nthe routes that sent them there (routes.toml; destination URLs come from the environment in production):"
    )?;
    let text = routes(&sink);
    let from = text.find("[[route]]").unwrap_or(0);
    for line in text[from..].lines().filter(|l| !l.trim().is_empty()) {
        writeln!(out, "  {line}")?;
    }
    let metrics = running.metrics.render();
    writeln!(out, "\nmetrics:")?;
    for line in metrics.lines().filter(|l| {
        !l.starts_with('#')
            && (l.contains("sns_accepted_total")
                || l.contains("sns_duplicates_total")
                || l.contains("sns_rejected_total")
                || l.contains("deliveries_total")
                || l.contains("delivery_retries_total"))
    }) {
        writeln!(out, "  {line}")?;
    }
    running.shutdown().await;
    sink.stop();
    let _ = std::fs::remove_dir_all(&dir);
    writeln!(
        out,
        "\nnext:\n  \
         webhook-relay check --config routes.toml          # is my routes file valid? (line:column for each problem)\n  \
         webhook-relay route-test --payload --config routes.toml examples/cloudwatch-alarm.json\n  \
         \x20                                                 # where would this alarm go, and what would Slack get?\n  \
         webhook-relay serve --config routes.toml --data-dir ./data   # run it (README.md: flags and deployment)"
    )?;
    Ok(())
}

/// A Slack message payload as the channel shows it, line by line: the text, then each
/// block's text and fields, with `<url|label>` links shown as `label (url)`.
fn as_slack_shows_it(payload: &serde_json::Value) -> Vec<String> {
    fn links(s: &str) -> String {
        let re = regex::Regex::new(r"<([^|>]+)\|([^>]+)>").expect("static regex");
        re.replace_all(s, "$2 ($1)").into_owned()
    }
    let mut lines = vec![payload["text"].as_str().unwrap_or_default().to_string(), String::new()];
    let blocks = payload["attachments"][0]["blocks"].as_array().cloned().unwrap_or_default();
    for b in &blocks {
        if let Some(t) = b["text"]["text"].as_str() {
            lines.extend(links(t).lines().map(str::to_string));
        }
        for f in b["fields"].as_array().into_iter().flatten() {
            let t = f["text"].as_str().unwrap_or_default();
            let (label, value) = t.split_once('\n').unwrap_or((t, ""));
            lines.push(format!("{}: {}", label.trim_matches('*'), links(value)));
        }
        for e in b["elements"].as_array().into_iter().flatten() {
            lines.push(links(e["text"].as_str().unwrap_or_default()));
        }
    }
    lines
}

fn tempfile_dir() -> std::io::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("webhook-relay-demo-{}-{}", std::process::id(), rand::random::<u32>()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
