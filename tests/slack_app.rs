//! Slack app destinations (bot token, the Web API) against the stand-in Slack over real
//! sockets: one thread per alarm in each lifecycle mode, a restart in the middle of an
//! alarm's life, a deleted first post, each class of Web API error, webhook and app
//! destinations side by side, and the token never in any output.

mod support;

use std::time::Duration;

use support::*;
use webhook_relay::testkit::Post;

const TOKEN: &str = "xoxb-test-token-for-the-stand-in";

fn app_routes(sink: &SlackSink, lifecycle: &str, extra: &str) -> String {
    format!(
        r#"
[sns]
topics = ["arn:aws:sns:*:123456789012:alarms-*"]
[destinations.app]
token = "{TOKEN}"
channel = "C0APP"
lifecycle = "{lifecycle}"
rate = "100/s"
burst = 20
{extra}
[destinations.hook]
url = "{hook}"
rate = "100/s"
burst = 20
[[route]]
name = "all"
to = ["app", "hook"]
"#,
        hook = sink.url("hook")
    )
}

async fn start_app(sink: &SlackSink, lifecycle: &str, extra: &str) -> Gateway {
    let api = sink.api_url();
    start_with(&app_routes(sink, lifecycle, extra), |s| s.slack_api_url = api).await
}

/// Sends one state change and waits until both destinations have handled it.
async fn change(gw: &Gateway, sink: &SlackSink, id: &str, name: &str, state: &str, app_calls: usize) {
    let hooks = sink.delivered("hook").len() + 1;
    assert_eq!(gw.post(alarm(signer(), id, name, state).to_string()).await.0, 200);
    let ok = sink
        .wait_until(Duration::from_secs(10), |_| {
            sink.delivered("C0APP").len() >= app_calls && sink.delivered("hook").len() >= hooks
        })
        .await;
    assert!(ok, "after {id}: {:#?}", calls(sink));
    // Let a trailing update land before the next change.
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// (method, thread_ts or ts, text) of every Web API call that succeeded.
fn calls(sink: &SlackSink) -> Vec<(String, String, String)> {
    sink.delivered("C0APP")
        .iter()
        .map(|p: &Post| {
            let at = p.body["thread_ts"].as_str().or(p.body["ts"].as_str()).unwrap_or("").to_string();
            (p.method.clone(), at, p.body["text"].as_str().unwrap_or("").to_string())
        })
        .collect()
}

fn top_level(sink: &SlackSink) -> Vec<String> {
    sink.delivered("C0APP")
        .iter()
        .filter(|p| p.method == "chat.postMessage" && p.body.get("thread_ts").is_none())
        .filter_map(|p| p.ts.clone())
        .collect()
}

#[tokio::test]
async fn thread_and_update_keeps_one_thread_per_alarm() {
    let sink = SlackSink::start().await.unwrap();
    let gw = start_app(&sink, "thread+update", "").await;
    change(&gw, &sink, "t1", "prod-db", "ALARM", 1).await;
    change(&gw, &sink, "t2", "prod-db", "OK", 3).await;
    change(&gw, &sink, "t3", "prod-db", "ALARM", 5).await;
    let first = top_level(&sink);
    assert_eq!(first.len(), 1, "{:#?}", calls(&sink));
    let c = calls(&sink);
    assert_eq!(c[1].0, "chat.postMessage");
    assert_eq!(c[1].1, first[0], "the OK is not in the ALARM's thread");
    assert!(c[1].2.contains("OK: prod-db (was ALARM for"), "{}", c[1].2);
    assert_eq!((c[2].0.as_str(), c[2].1.as_str()), ("chat.update", first[0].as_str()));
    assert!(c[2].2.contains("OK"), "the first post does not show the current state: {}", c[2].2);
    assert!(c[3].2.contains("ALARM: prod-db (was OK for"), "{}", c[3].2);
    // Every call carried the bot token; the webhook destination got three plain posts.
    assert!(sink.delivered("C0APP").iter().all(|p| p.auth.as_deref() == Some(&format!("Bearer {TOKEN}") as &str)));
    assert_eq!(sink.delivered("hook").len(), 3);
    // A second alarm gets its own thread.
    change(&gw, &sink, "t4", "prod-api", "ALARM", 6).await;
    assert_eq!(top_level(&sink).len(), 2);
    gw.shutdown().await;
}

#[tokio::test]
async fn thread_only_update_only_and_off() {
    let sink = SlackSink::start().await.unwrap();
    let gw = start_app(&sink, "thread", "").await;
    change(&gw, &sink, "a1", "prod-t", "ALARM", 1).await;
    change(&gw, &sink, "a2", "prod-t", "OK", 2).await;
    assert!(calls(&sink).iter().all(|c| c.0 == "chat.postMessage"), "thread mode updated: {:#?}", calls(&sink));
    assert_eq!(top_level(&sink).len(), 1);
    gw.shutdown().await;

    let sink = SlackSink::start().await.unwrap();
    let gw = start_app(&sink, "update", "").await;
    change(&gw, &sink, "b1", "prod-u", "ALARM", 1).await;
    change(&gw, &sink, "b2", "prod-u", "OK", 2).await;
    let c = calls(&sink);
    assert_eq!(c.iter().map(|c| c.0.as_str()).collect::<Vec<_>>(), ["chat.postMessage", "chat.update"], "{c:#?}");
    gw.shutdown().await;

    let sink = SlackSink::start().await.unwrap();
    let gw = start_app(&sink, "off", "").await;
    change(&gw, &sink, "c1", "prod-o", "ALARM", 1).await;
    change(&gw, &sink, "c2", "prod-o", "OK", 2).await;
    assert_eq!(top_level(&sink).len(), 2, "off posts every change anew: {:#?}", calls(&sink));
    gw.shutdown().await;
}

#[tokio::test]
async fn an_alarm_ok_for_longer_than_the_ttl_opens_a_new_thread() {
    let sink = SlackSink::start().await.unwrap();
    let gw = start_app(&sink, "thread", "lifecycle_ttl = \"1s\"").await;
    change(&gw, &sink, "l1", "prod-ttl", "ALARM", 1).await;
    change(&gw, &sink, "l2", "prod-ttl", "OK", 2).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    change(&gw, &sink, "l3", "prod-ttl", "ALARM", 3).await;
    assert_eq!(top_level(&sink).len(), 2, "{:#?}", calls(&sink));
    gw.shutdown().await;
}

#[tokio::test]
async fn the_thread_survives_a_restart_and_a_deleted_first_post_is_replaced() {
    let sink = SlackSink::start().await.unwrap();
    let data = tempfile::tempdir().unwrap();
    let api = sink.api_url();
    let routes = app_routes(&sink, "thread+update", "");
    let start = || {
        let (api, routes, data) = (api.clone(), routes.clone(), data.path().to_path_buf());
        async move {
            start_with(&routes, |s| {
                s.slack_api_url = api;
                s.data_dir = data;
            })
            .await
        }
    };
    let gw = start().await;
    change(&gw, &sink, "r1", "prod-restart", "ALARM", 1).await;
    gw.shutdown().await;
    let gw = start().await;
    change(&gw, &sink, "r2", "prod-restart", "OK", 3).await;
    let first = top_level(&sink);
    assert_eq!(first.len(), 1, "the restart lost the thread: {:#?}", calls(&sink));
    assert_eq!(calls(&sink)[1].1, first[0]);

    // Someone deletes the first post: the update finds no message, so the state is posted
    // anew and the alarm is keyed to the new message.
    sink.forget(&first[0]);
    change(&gw, &sink, "r3", "prod-restart", "ALARM", 5).await;
    let tops = top_level(&sink);
    assert_eq!(tops.len(), 2, "{:#?}", calls(&sink));
    change(&gw, &sink, "r4", "prod-restart", "OK", 7).await;
    let last_reply = calls(&sink).into_iter().rev().find(|c| c.0 == "chat.postMessage" && !c.1.is_empty()).unwrap();
    assert_eq!(last_reply.1, tops[1], "not re-keyed to the new message: {:#?}", calls(&sink));
    gw.shutdown().await;
}

#[tokio::test]
async fn web_api_errors_wait_retry_fall_back_or_dead_letter_and_the_token_stays_secret() {
    let sink = SlackSink::start().await.unwrap();
    sink.script("C0APP", vec![Reply::TooMany(1), Reply::Status(503, "busy"), Reply::ApiError("internal_error")]);
    let gw = start_app(&sink, "off", "").await;
    assert_eq!(gw.post(alarm(signer(), "e1", "prod-e", "ALARM").to_string()).await.0, 200);
    assert!(
        sink.wait_until(Duration::from_secs(15), |_| sink.delivered("C0APP").len() == 1).await,
        "{:?}",
        sink.posts()
    );
    let attempts: Vec<_> = sink.posts().into_iter().filter(|p| p.channel == "C0APP").collect();
    assert_eq!(attempts.len(), 4);
    assert!(attempts[1].at - attempts[0].at >= Duration::from_millis(950), "Retry-After not waited");
    gw.shutdown().await;

    // msg_too_long: a dead letter, not retried.
    let sink = SlackSink::start().await.unwrap();
    sink.script("C0APP", vec![Reply::ApiError("msg_too_long")]);
    let gw = start_app(&sink, "off", "").await;
    assert_eq!(gw.post(alarm(signer(), "e2", "prod-f", "ALARM").to_string()).await.0, 200);
    let dl = gw.wait_dead_letters(Duration::from_secs(5)).await;
    let letters = dl.list();
    let letter = letters[0].as_ref().unwrap();
    assert!(letter.reason.contains("msg_too_long"), "{}", letter.reason);
    let file = std::fs::read_dir(gw.dir.path().join("data/dead-letters")).unwrap().next().unwrap().unwrap().path();
    assert!(!std::fs::read_to_string(file).unwrap().contains(TOKEN), "the token is in a dead letter");
    let m = gw.metrics().await;
    assert!(!m.contains(TOKEN));
    gw.shutdown().await;

    // channel_not_found: the destination is gone; without a fallback, a dead letter.
    let sink = SlackSink::start().await.unwrap();
    sink.script("C0APP", vec![Reply::ApiError("channel_not_found")]);
    let gw = start_app(&sink, "thread+update", "").await;
    assert_eq!(gw.post(alarm(signer(), "e3", "prod-g", "ALARM").to_string()).await.0, 200);
    let dl = gw.wait_dead_letters(Duration::from_secs(5)).await;
    assert!(dl.list()[0].as_ref().unwrap().reason.contains("channel_not_found"));
    let m = gw.metrics().await;
    assert!(m.contains("webhook_relay_destination_unhealthy{destination=\"app\"} 1"), "{m}");
    gw.shutdown().await;
}

#[test]
fn check_never_prints_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("routes.toml");
    std::fs::write(
        &cfg,
        format!("[sns]\ntopics = [\"arn:aws:sns:*:123456789012:*\"]\n[destinations.app]\ntoken = \"{TOKEN}\"\nlifecycle = \"sideways\"\n"),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_webhook-relay"))
        .args(["check", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("bot token is written in the file") && text.contains("needs channel"), "{text}");
    assert!(!text.contains(TOKEN), "check printed the token: {text}");
}
