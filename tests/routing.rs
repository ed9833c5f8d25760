//! routes.toml features, validation and hot reload.

mod support;

use std::time::Duration;

use support::*;
use webhook_relay::config::{Config, ConfigError};
use webhook_relay::model::{Envelope, Notification};
use webhook_relay::route::Facts;

const HEAD: &str = "[sns]\ntopics = [\"arn:aws:sns:*:123456789012:*\"]\n[destinations.a]\nurl = \"http://127.0.0.1:1/a\"\n[destinations.b]\nurl = \"http://127.0.0.1:1/b\"\n[destinations.c]\nurl = \"http://127.0.0.1:1/c\"\n";

fn config(routes: &str) -> Config {
    match Config::parse(&format!("{HEAD}{routes}")) {
        Ok((c, _)) => c,
        Err(ConfigError::Invalid(p)) => panic!("{p:?}"),
        Err(e) => panic!("{e}"),
    }
}

fn note(name: &str, state: &str, topic: &str, description: &str) -> Notification {
    let msg = serde_json::json!({"AlarmName": name, "NewStateValue": state, "AlarmDescription": description,
        "AWSAccountId": "123456789012", "AlarmArn": format!("arn:aws:cloudwatch:eu-west-1:123456789012:alarm:{name}")});
    Notification::from_envelope(Envelope {
        message_id: "m".into(),
        topic_arn: topic.into(),
        subject: None,
        message: msg.to_string(),
        timestamp: Default::default(),
        fallback_from: None,
    })
}

fn route(c: &Config, n: &Notification) -> (String, Vec<String>, Vec<String>) {
    let sev = c.severity.classify(n);
    let d = c.router.route(&Facts::of(n, &sev));
    (sev.to_string(), d.routes.iter().map(|r| r.to_string()).collect(), d.destinations)
}

const T: &str = "arn:aws:sns:eu-west-1:123456789012:alarms";

#[test]
fn first_match_stops_unless_continue_and_destinations_dedup() {
    let c = config(
        "[[route]]\nname = \"one\"\nalarm_name = [\"prod-*\"]\nto = [\"a\", \"b\"]\ncontinue = true\n\
         [[route]]\nname = \"two\"\nstate = [\"ALARM\"]\nto = [\"b\", \"c\"]\n\
         [[route]]\nname = \"three\"\nto = [\"a\"]\n",
    );
    let (_, routes, dests) = route(&c, &note("prod-x", "ALARM", T, ""));
    assert_eq!(routes, ["one", "two"]);
    assert_eq!(dests, ["a", "b", "c"]);
    let (_, routes, _) = route(&c, &note("dev-x", "OK", T, ""));
    assert_eq!(routes, ["three"]);
}

#[test]
fn every_field_negation_regex_mute_and_default() {
    let c = config(
        "[severity]\ndefault = \"info\"\nrules = [{ field = \"alarm_description\", regex = '(?i)severity\\s*=\\s*(\\w+)' }]\n\
         [[route]]\nname = \"muted\"\nalarm_name = [\"noisy-*\"]\nenabled = false\n\
         [[route]]\nname = \"crit\"\nseverity = [\"critical\"]\nnot_alarm_name = [\"~^canary-\"]\nto = [\"a\"]\n\
         [[route]]\nname = \"acct\"\naccount = [\"123456789012\"]\nregion = [\"eu-*\"]\ntopic = [\"*:alarms\"]\nstate = [\"OK\"]\nto = [\"b\"]\n\
         [default_route]\nto = [\"c\"]\n",
    );
    let (sev, routes, dests) = route(&c, &note("db", "ALARM", T, "Severity = CRITICAL"));
    assert_eq!(
        (sev.as_str(), routes.as_slice(), dests.as_slice()),
        ("critical", &["crit".to_string()][..], &["a".to_string()][..])
    );
    let (_, routes, _) = route(&c, &note("canary-db", "ALARM", T, "severity=critical"));
    assert_eq!(routes, ["default_route"], "negative regex did not exclude");
    let (sev, routes, _) = route(&c, &note("x", "OK", T, ""));
    assert_eq!((sev.as_str(), routes.as_slice()), ("info", &["acct".to_string()][..]));
    let (_, routes, _) = route(&c, &note("x", "OK", "arn:aws:sns:eu-west-1:123456789012:other", ""));
    assert_eq!(routes, ["default_route"]);
    let (_, routes, dests) = route(&c, &note("noisy-1", "ALARM", T, "severity=critical"));
    assert!(routes.is_empty() && dests.is_empty(), "muted route let it through: {routes:?}");
}

#[test]
fn validation_errors_have_lines() {
    let bad = |text: &str| match Config::parse(text) {
        Err(ConfigError::Invalid(p)) => p,
        other => panic!("accepted: {:?}", other.map(|_| ())),
    };
    let p = bad("[sns]\ntopics = [\"*\"]\nbogus = 1\n");
    assert_eq!((p[0].line, p[0].message.contains("bogus")), (3, true), "{p:?}");
    let p = bad(&format!("{HEAD}[[route]]\nname = \"r\"\nalarm_name = [\"a[\"]\nto = [\"a\"]\n"));
    assert!(p.iter().any(|p| p.line == 11 && p.message.contains("bad glob")), "{p:?}");
    let p = bad(&format!("{HEAD}[[route]]\nname = \"r\"\nalarm_name = [\"~(\"]\nto = [\"a\"]\n"));
    assert!(p.iter().any(|p| p.line == 11 && p.message.contains("regex")), "{p:?}");
    let p =
        bad(&format!("{HEAD}[[route]]\nname = \"r\"\nalarm_name = [\"x\"]\nnot_alarm_name = [\"x\"]\nto = [\"a\"]\n"));
    assert!(p.iter().any(|p| p.message.contains("never match")), "{p:?}");
    let p = bad(&format!("{HEAD}[[route]]\nname = \"r\"\nalarm_name = []\nto = [\"a\"]\n"));
    assert!(p.iter().any(|p| p.line == 11 && p.message.contains("empty")), "{p:?}");
    let p = bad(&format!("{HEAD}[destinations.d]\nurl = \"http://x/\"\nrate = \"fast\"\n"));
    assert!(p.iter().any(|p| p.line == 11 && p.message.contains("bad rate")), "{p:?}");
    let p = bad("[sns]\ntopics = []\n");
    assert!(p.iter().any(|p| p.line == 2), "{p:?}");
    let p = bad(&format!("{HEAD}[severity]\nrules = [{{ field = \"nope\", regex = '(x)' }}]\n"));
    assert!(p.iter().any(|p| p.line == 10 && p.message.contains("unknown severity field")), "{p:?}");
}

#[test]
fn topic_patterns_that_cannot_be_arns_get_a_warning() {
    let (_, warnings) = Config::parse("[sns]\ntopics = [\"alarms-prod\", \"arn:aws:sns:*:1:x\"]\n").unwrap();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert_eq!((warnings[0].line, warnings[0].warning), (2, true));
    assert!(warnings[0].message.contains("alarms-prod"));
}

#[tokio::test]
async fn reload_on_write_rename_symlink_swap_and_broken_file() {
    let sink = SlackSink::start().await.unwrap();
    let gw = start(&routes(&sink, "")).await;
    let path = gw.config_path();
    let dir = gw.dir.path();
    let reloads = |m: &str, outcome: &str| {
        m.lines()
            .find(|l| l.starts_with(&format!("webhook_relay_config_reloads_total{{outcome=\"{outcome}\"}}")))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    async fn wait(gw: &Gateway, pred: impl Fn(&str) -> bool) -> String {
        for _ in 0..100 {
            let m = gw.metrics().await;
            if pred(&m) {
                return m;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        gw.metrics().await
    }
    // 1. Plain write: a new route sends dev-* alarms to "general".
    let v2 = routes(&sink, "[[route]]\nname = \"dev\"\nalarm_name = [\"dev-*\"]\nto = [\"general\"]\n");
    std::fs::write(&path, &v2).unwrap();
    let m = wait(&gw, |m| reloads(m, "applied") >= 1).await;
    assert_eq!(reloads(&m, "applied"), 1, "{m}");
    assert_eq!(gw.post(alarm(signer(), "rl-1", "dev-a", "ALARM").to_string()).await, (200, "accepted\n".into()));

    // 2. A broken file is refused; the running rules stay.
    std::fs::write(&path, "[sns]\ntopics = [\n").unwrap();
    let m = wait(&gw, |m| reloads(m, "refused") >= 1).await;
    assert!(m.contains("webhook_relay_config_last_reload_success 0"), "{m}");
    assert_eq!(gw.post(alarm(signer(), "rl-2", "dev-b", "ALARM").to_string()).await, (200, "accepted\n".into()));

    // 3. Rename-over (how editors and config tools write).
    let tmp = dir.join("routes.toml.tmp");
    std::fs::write(&tmp, routes(&sink, "")).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    let m = wait(&gw, |m| reloads(m, "applied") >= 2).await;
    assert!(m.contains("webhook_relay_config_last_reload_success 1"), "{m}");
    assert_eq!(gw.post(alarm(signer(), "rl-3", "dev-c", "ALARM").to_string()).await, (200, "unrouted\n".into()));

    // 4. Kubernetes ConfigMap: routes.toml -> ..data/routes.toml, ..data -> ..v1; swap ..data.
    for (version, extra) in
        [("..v1", ""), ("..v2", "[[route]]\nname = \"dev\"\nalarm_name = [\"dev-*\"]\nto = [\"general\"]\n")]
    {
        std::fs::create_dir_all(dir.join(version)).unwrap();
        std::fs::write(dir.join(version).join("routes.toml"), routes(&sink, extra)).unwrap();
    }
    std::os::unix::fs::symlink("..v1", dir.join("..data")).unwrap();
    std::fs::remove_file(&path).unwrap();
    std::os::unix::fs::symlink("..data/routes.toml", &path).unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let before = reloads(&gw.metrics().await, "applied");
    std::os::unix::fs::symlink("..v2", dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    let m = wait(&gw, |m| reloads(m, "applied") > before).await;
    assert!(reloads(&m, "applied") > before, "symlink swap not picked up: {m}");
    assert_eq!(gw.post(alarm(signer(), "rl-4", "dev-d", "ALARM").to_string()).await, (200, "accepted\n".into()));
    gw.shutdown().await;
}

#[tokio::test]
async fn requests_during_reloads_always_see_a_whole_config() {
    let sink = SlackSink::start().await.unwrap();
    let gw = start(&routes(&sink, "")).await;
    let path = gw.config_path();
    let a = routes(&sink, "");
    let b = routes(&sink, "[[route]]\nname = \"dev\"\nalarm_name = [\"dev-*\"]\nto = [\"general\"]\n");
    let writer = tokio::spawn(async move {
        for i in 0..20 {
            std::fs::write(&path, if i % 2 == 0 { &b } else { &a }).unwrap();
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
    });
    for i in 0..60 {
        let (status, text) = gw.post(alarm(signer(), &format!("cc-{i}"), "dev-z", "ALARM").to_string()).await;
        assert_eq!(status, 200);
        assert!(text == "accepted\n" || text == "unrouted\n", "{text}");
    }
    writer.await.unwrap();
    gw.shutdown().await;
}

#[tokio::test]
async fn full_store_answers_503_and_corrupt_store_is_set_aside() {
    let sink = SlackSink::start().await.unwrap();
    sink.stop();
    let gw = start_with(&routes(&sink, ""), |s| s.max_stored = 2).await;
    for i in 0..2 {
        assert_eq!(gw.post(alarm(signer(), &format!("f{i}"), "prod-a", "ALARM").to_string()).await.0, 200);
    }
    assert_eq!(gw.post(alarm(signer(), "f2", "prod-a", "ALARM").to_string()).await, (503, "store_full\n".into()));
    gw.shutdown().await;

    let dir = tempfile::tempdir().unwrap();
    let queue = dir.path().join("data").join(webhook_relay::store::QUEUE_DIR);
    std::fs::create_dir_all(&queue).unwrap();
    std::fs::write(queue.join("00000000000000000001.seg"), b"this is not a log segment at all").unwrap();
    std::fs::write(dir.path().join("routes.toml"), routes(&sink, "")).unwrap();
    let mut s = webhook_relay::Settings::new(dir.path().join("routes.toml"), dir.path().join("data"));
    s.listen = "127.0.0.1:0".parse().unwrap();
    s.admin_listen = "127.0.0.1:0".parse().unwrap();
    let running = webhook_relay::start(s).await.expect("starts despite a corrupt store");
    let aside = std::fs::read_dir(dir.path().join("data"))
        .unwrap()
        .flatten()
        .any(|e| e.file_name().to_string_lossy().contains(".corrupt-"));
    assert!(aside, "corrupt file not set aside");
    running.shutdown().await;
}

#[tokio::test]
async fn truncated_store_file_does_not_stop_the_gateway() {
    let sink = SlackSink::start().await.unwrap();
    sink.stop(); // keep deliveries pending, so the file holds data
    let gw = start(&routes(&sink, "")).await;
    for i in 0..20 {
        assert_eq!(gw.post(alarm(signer(), &format!("tr{i}"), "prod-a", "ALARM").to_string()).await.0, 200);
    }
    let dir = gw.dir.path().to_path_buf();
    let running = {
        let mut gw = gw;
        let r = gw.running.take().unwrap();
        r.shutdown().await;
        gw
    };
    // Cut into the last message's frame, as a power loss during its write would.
    let queue = dir.join("data").join(webhook_relay::store::QUEUE_DIR);
    let seg = std::fs::read_dir(&queue)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .max()
        .unwrap();
    // The segment is zero-filled ahead; the log ends at its last non-zero byte.
    let end = std::fs::read(&seg).unwrap().iter().rposition(|b| *b != 0).unwrap() as u64 + 1;
    let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
    f.set_len(end - 5).unwrap();
    drop(f);
    let mut s = webhook_relay::Settings::new(dir.join("routes.toml"), dir.join("data"));
    s.listen = "127.0.0.1:0".parse().unwrap();
    s.admin_listen = "127.0.0.1:0".parse().unwrap();
    s.sns_cert_dir = Some(dir.join("certs"));
    let restarted = webhook_relay::start(s).await.expect("starts with a truncated store");
    let aside = std::fs::read_dir(dir.join("data"))
        .unwrap()
        .flatten()
        .any(|e| e.file_name().to_string_lossy().contains(".corrupt-"));
    assert!(aside, "truncated file was neither repaired nor reported and set aside");
    assert_eq!(restarted.metrics.stored_messages.get(), 19, "the 19 whole messages before the cut are kept");
    // It serves: a new alarm is accepted and stored.
    let body = alarm(signer(), "tr-new", "prod-a", "ALARM").to_string();
    assert_eq!(reqwest_like::Client.post(restarted.addr, "/sns", &[], body.into()).await.0, 200);
    restarted.shutdown().await;
    drop(running);
}

fn problems(text: &str) -> Vec<webhook_relay::config::Problem> {
    match Config::parse(text) {
        Ok((_, warnings)) => warnings,
        Err(ConfigError::Invalid(p)) => p,
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn check_rejects_fallback_cycles_and_self_fallback_with_the_line() {
    let p = problems(
        "[sns]\ntopics = [\"arn:aws:sns:*:123456789012:*\"]\n\
         [destinations.a]\nurl = \"http://127.0.0.1:1/a\"\nfallback = \"b\"\n\
         [destinations.b]\nurl = \"http://127.0.0.1:1/b\"\nfallback = \"c\"\n\
         [destinations.c]\nurl = \"http://127.0.0.1:1/c\"\nfallback = \"a\"\n\
         [destinations.d]\nurl = \"http://127.0.0.1:1/d\"\nfallback = \"a\"\n",
    );
    let cycles: Vec<_> = p.iter().filter(|p| p.message.contains("fallback cycle")).collect();
    assert_eq!(cycles.len(), 1, "one error per cycle: {p:?}");
    assert_eq!((cycles[0].line, cycles[0].warning), (5, false), "{p:?}");
    assert!(cycles[0].message.contains("a -> b -> c -> a"), "{p:?}");
    let p = problems(
        "[sns]\ntopics = [\"arn:aws:sns:*:123456789012:*\"]\n[destinations.a]\nurl = \"http://127.0.0.1:1/a\"\nfallback = \"a\"\n",
    );
    assert!(p.iter().any(|p| p.line == 5 && !p.warning && p.message.contains("fallback is itself")), "{p:?}");
    // A chain without a cycle is fine.
    let p = problems(
        "[sns]\ntopics = [\"arn:aws:sns:*:123456789012:*\"]\n[destinations.a]\nurl = \"http://127.0.0.1:1/a\"\nfallback = \"b\"\n\
         [destinations.b]\nurl = \"http://127.0.0.1:1/b\"\n",
    );
    assert!(p.iter().all(|p| p.warning), "{p:?}");
}

#[test]
fn check_refuses_any_account_topics_while_auto_confirm_is_on() {
    for topics in ["\"*\"", "\"arn:aws:sns:*:*:alarms\"", "\"arn:aws:sns:us-east-1:*\""] {
        let p = problems(&format!("[sns]\ntopics = [{topics}]\n"));
        assert!(
            p.iter().any(|p| p.line == 2 && !p.warning && p.message.contains("any AWS account")),
            "{topics}: {p:?}"
        );
        let p = problems(&format!("[sns]\ntopics = [{topics}]\nallow_any_account = true\n"));
        assert!(p.iter().all(|p| p.warning), "allow_any_account did not allow {topics}: {p:?}");
        let p = problems(&format!("[sns]\ntopics = [{topics}]\nauto_confirm = false\n"));
        assert!(p.iter().all(|p| p.warning), "without auto_confirm nobody can subscribe us: {topics}: {p:?}");
    }
    assert!(problems("[sns]\ntopics = [\"arn:aws:sns:*:123456789012:alarms-*\"]\n").is_empty());
}

#[test]
fn check_warns_about_unproducible_severities_and_plain_http() {
    let p = problems(&format!(
        "{HEAD}[destinations.remote]\nurl = \"http://hooks.example.com/x\"\n\
         [severity]\nrules = [{{ field = \"alarm_name\", regex = '-(critical|info)$' }}]\n\
         [[route]]\nname = \"r\"\nseverity = [\"critical\", \"page\", \"~p.*\"]\nto = [\"a\"]\n"
    ));
    assert!(p.iter().all(|p| p.warning), "{p:?}");
    let sev: Vec<_> = p.iter().filter(|p| p.message.contains("produced by no")).collect();
    assert_eq!(sev.len(), 1, "only the literal \"page\" is unproducible: {p:?}");
    assert!(sev[0].line == 15 && sev[0].message.contains("\"page\""), "{p:?}");
    let http: Vec<_> = p.iter().filter(|p| p.message.contains("plain http://")).collect();
    assert_eq!(http.len(), 1, "loopback http must not warn: {p:?}");
    assert_eq!(http[0].line, 10);
    assert!(!http[0].message.contains("hooks.example.com"), "the URL is a secret: {p:?}");
}

#[test]
fn one_broken_route_is_one_error() {
    let p = problems(&format!(
        "{HEAD}[[route]]\nname = \"broken\"\nalarm_name = [\"a[\"]\nto = [\"a\"]\n\
         [[route]]\nname = \"x\"\nalarm_name = [\"x\"]\nto = [\"b\"]\n\
         [[route]]\nname = \"y\"\nalarm_name = [\"y\"]\nto = [\"b\"]\n\
         [default_route]\nto = [\"c\"]\n"
    ));
    let p: Vec<_> = p.into_iter().filter(|p| !p.warning).collect();
    assert_eq!(p.len(), 1, "a cascade of false errors: {p:?}");
    assert!(p[0].line == 11 && p[0].message.contains("bad glob"), "{p:?}");
}
