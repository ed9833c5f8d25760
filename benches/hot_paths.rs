//! Criterion benches for the hot paths: route evaluation at 10/100/1,000 routes, signature
//! verification (v1, v2), and Slack formatting. Run: `cargo bench --bench hot_paths`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use webhook_relay::config::Config;
use webhook_relay::deliver::slack;
use webhook_relay::model::{Envelope, Notification};
use webhook_relay::route::Facts;
use webhook_relay::sns::{verify_signature, SigningCert, SnsMessage};

fn config_with_routes(n: usize) -> Config {
    let mut text = String::from(
        "[sns]\ntopics = [\"*\"]\nallow_any_account = true\n[destinations.a]\nurl = \"http://127.0.0.1:1/a\"\n",
    );
    for i in 0..n {
        text.push_str(&format!(
            "[[route]]\nname = \"r{i}\"\nalarm_name = [\"svc{i}-*\", \"~^team{i}-(db|api)$\"]\nnot_alarm_name = [\"*-canary\"]\n\
             state = [\"ALARM\", \"OK\"]\nregion = [\"eu-*\"]\nto = [\"a\"]\n"
        ));
    }
    text.push_str("[default_route]\nto = [\"a\"]\n");
    Config::parse(&text).map(|(c, _)| c).unwrap_or_else(|e| panic!("{e}"))
}

fn notification() -> Notification {
    let msg = webhook_relay::testkit::signer::alarm_message(
        "team999-db",
        "ALARM",
        "OK",
        "Threshold Crossed",
        "eu-west-1",
        "123456789012",
    );
    Notification::from_envelope(Envelope {
        message_id: "m".into(),
        topic_arn: "arn:aws:sns:eu-west-1:123456789012:alarms".into(),
        subject: Some("ALARM".into()),
        message: msg,
        timestamp: Default::default(),
        fallback_from: None,
    })
}

fn routing(c: &mut Criterion) {
    let n = notification();
    for routes in [10, 100, 1000] {
        let config = config_with_routes(routes);
        c.bench_function(&format!("route/{routes}_routes"), |b| {
            b.iter(|| {
                let sev = config.severity.classify(black_box(&n));
                black_box(config.router.route(&Facts::of(&n, &sev)))
            })
        });
    }
}

fn fixture(name: &str) -> (SnsMessage, SigningCert) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sns-real");
    let msg = SnsMessage::parse(&std::fs::read(dir.join(format!("{name}.json"))).unwrap()).unwrap();
    let cert = SigningCert::from_pem(&std::fs::read(dir.join(format!("{name}.pem"))).unwrap()).unwrap();
    (msg, cert)
}

fn signatures(c: &mut Criterion) {
    for (label, name) in
        [("v1", "notification-v1-us-west-2-2026-javav2-subject"), ("v2", "notification-v2-us-west-2-2026-javav2")]
    {
        let (msg, cert) = fixture(name);
        c.bench_function(&format!("verify/{label}"), |b| {
            b.iter(|| verify_signature(black_box(&msg), black_box(&cert)).unwrap())
        });
    }
}

fn parsing(c: &mut Criterion) {
    let n = notification();
    let body = {
        let signer = webhook_relay::testkit::TestSigner::generate("us-east-1").unwrap();
        signer
            .notification("arn:aws:sns:us-east-1:123456789012:alarms", "m", Some("ALARM"), &n.envelope.message)
            .to_string()
    };
    c.bench_function("parse/sns_body", |b| b.iter(|| SnsMessage::parse(black_box(body.as_bytes())).unwrap()));
    c.bench_function("parse/alarm", |b| b.iter(|| Notification::from_envelope(black_box(n.envelope.clone()))));
}

fn formatting(c: &mut Criterion) {
    let n = notification();
    c.bench_function("slack/render_alarm", |b| {
        b.iter(|| {
            black_box(slack::render(black_box(&n), "critical", &slack::Style::default(), slack::History::default()))
        })
    });
}

fn cert_cache(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sns-real");
    let name = "SimpleNotificationService-7506a1e35b36ef5a444dd1a8e7cc3ed8.pem";
    std::fs::copy(fixtures.join("notification-v2-us-west-2-2026-javav2.pem"), dir.path().join(name)).unwrap();
    let metrics = webhook_relay::metrics::Metrics::new();
    let store = webhook_relay::sns::CertStore::new(
        Some(dir.path().to_path_buf()),
        webhook_relay::sns::Fetcher::new(
            webhook_relay::outbound::Outbound::new(&Default::default()).unwrap(),
            std::time::Duration::from_secs(1),
        ),
        metrics,
    );
    let url = format!("https://sns.us-west-2.amazonaws.com/{name}");
    rt.block_on(store.get(&url)).unwrap();
    c.bench_function("cert/cache_hit", |b| b.iter(|| rt.block_on(store.get(black_box(&url))).unwrap()));
}

/// Accept path to disk: `concurrency` accepts in flight at once, as under a burst, so the
/// writer's group commit shares each fsync among them. Reports time per accepted message.
fn durable_accept(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let n = notification();
    let mut group = c.benchmark_group("store");
    group.sample_size(10);
    for concurrency in [1usize, 64, 512] {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = rt
            .block_on(async {
                webhook_relay::store::Store::open(dir.path(), u64::MAX, webhook_relay::metrics::Metrics::new())
            })
            .unwrap();
        let envelope = std::sync::Arc::new(n.envelope.clone());
        group.bench_function(format!("accept_fsync/concurrency_{concurrency}"), |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let started = std::time::Instant::now();
                    let next = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
                    let tasks: Vec<_> = (0..concurrency)
                        .map(|_| {
                            let (store, envelope, next) = (store.clone(), envelope.clone(), next.clone());
                            tokio::spawn(async move {
                                while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < iters {
                                    let new = webhook_relay::queue::NewMessage {
                                        envelope: &envelope,
                                        severity: "warning",
                                        destinations: vec!["a".into()],
                                        dedup: None,
                                        replay_of: None,
                                        message_json: None,
                                    };
                                    webhook_relay::queue::Queue::accept(&store, new).await.unwrap();
                                }
                            })
                        })
                        .collect();
                    for t in tasks {
                        t.await.unwrap();
                    }
                    started.elapsed()
                })
            })
        });
        rt.block_on(webhook_relay::queue::Queue::close(&store));
    }
    group.finish();
}

criterion_group!(benches, routing, signatures, parsing, formatting, cert_cache, durable_accept);
criterion_main!(benches);
