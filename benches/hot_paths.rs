//! Criterion benches for the hot paths: route evaluation at 10/100/1,000 routes, signature
//! verification (v1, v2), and Slack formatting. Run: `cargo bench --bench hot_paths`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use webhook_relay::config::Config;
use webhook_relay::deliver::slack;
use webhook_relay::route::{Envelope, Facts, Notification};
use webhook_relay::sns::{verify_signature, SigningCert, SnsMessage};

fn config_with_routes(n: usize) -> Config {
    let mut text = String::from("[sns]\ntopics = [\"*\"]\n[destinations.a]\nurl = \"http://127.0.0.1:1/a\"\n");
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
        timestamp: String::new(),
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
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/sns-real");
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

fn formatting(c: &mut Criterion) {
    let n = notification();
    c.bench_function("slack/render_alarm", |b| {
        b.iter(|| black_box(slack::render(black_box(&n), "critical", &slack::Style::default(), None)))
    });
}

criterion_group!(benches, routing, signatures, formatting);
criterion_main!(benches);
