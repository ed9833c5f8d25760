//! The front door over real sockets: every row of the status table in README.md ("HTTP answers on POST /sns").

mod support;

use std::time::Duration;

use serde_json::json;
use support::*;

#[tokio::test]
async fn accepted_duplicate_and_unrouted() {
    let sink = SlackSink::start().await.unwrap();
    let gw = start(&routes(&sink, "")).await;
    let s = signer();
    let m = alarm(s, "id-1", "prod-db-critical", "ALARM");
    assert_eq!(gw.post(m.to_string()).await, (200, "accepted\n".into()));
    assert_eq!(gw.post(m.to_string()).await, (200, "duplicate\n".into()));
    // Matches no route (not prod-*, not critical) and there is no default route.
    let other = alarm(s, "id-2", "dev-thing", "ALARM");
    assert_eq!(gw.post(other.to_string()).await, (200, "unrouted\n".into()));
    assert!(sink.wait_until(Duration::from_secs(5), |p| p.len() >= 2).await);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(sink.delivered("critical").len(), 1, "duplicate sent again?");
    assert_eq!(sink.delivered("general").len(), 1);
    let text = sink.delivered("critical")[0].body["text"].as_str().unwrap().to_string();
    assert!(text.contains("prod-db-critical") && text.contains("ALARM"), "{text}");
    let metrics = gw.metrics().await;
    assert!(metrics.contains("webhook_relay_sns_duplicates_total 1"), "{metrics}");
    assert!(metrics.contains("webhook_relay_sns_unrouted_total 1"));
    assert!(!metrics.contains(&sink.url("critical")), "webhook URL leaked into metrics");
    // Each matching route counted once per accepted notification (a duplicate is not).
    let warning = alarm(s, "id-3", "prod-api-warning", "ALARM");
    assert_eq!(gw.post(warning.to_string()).await, (200, "accepted\n".into()));
    let metrics = gw.metrics().await;
    assert!(metrics.contains("webhook_relay_route_matches_total{route=\"critical\"} 1"), "{metrics}");
    assert!(metrics.contains("webhook_relay_route_matches_total{route=\"all-prod\"} 2"), "{metrics}");
    gw.shutdown().await;
}

#[tokio::test]
async fn malformed_input_gets_400_and_never_panics() {
    let sink = SlackSink::start().await.unwrap();
    let gw = start(&routes(&sink, "")).await;
    let valid = alarm(signer(), "id-x", "prod-a", "ALARM");
    let mut cases: Vec<Vec<u8>> = vec![
        b"not json".to_vec(),
        b"".to_vec(),
        b"\xff\xfe\xfd".to_vec(),
        b"[]".to_vec(),
        b"{\"Type\": 5}".to_vec(),
        json!({"Type": "Bogus"}).to_string().into_bytes(),
    ];
    for field in ["Type", "MessageId", "Message", "Timestamp", "TopicArn", "SignatureVersion"] {
        let mut v = valid.clone();
        v.as_object_mut().unwrap().remove(field);
        cases.push(v.to_string().into_bytes());
    }
    let mut v = valid.clone();
    v["SignatureVersion"] = json!("3");
    cases.push(v.to_string().into_bytes());
    for body in cases {
        let (status, text) = gw.post(body.clone()).await;
        assert_eq!(status, 400, "{} -> {text}", String::from_utf8_lossy(&body));
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn forged_untrusted_disallowed_old_raw_get_403() {
    let sink = SlackSink::start().await.unwrap();
    let gw = start(&routes(&sink, "")).await;
    let s = signer();

    let mut forged = alarm(s, "f-1", "prod-a", "ALARM");
    forged["Message"] = json!("changed after signing");
    assert_eq!(gw.post(forged.to_string()).await, (403, "bad_signature\n".into()));

    for url in [
        "http://sns.us-east-1.amazonaws.com/SimpleNotificationService-0123456789abcdef0123456789abcdef.pem",
        "https://sns.us-east-1.amazonaws.com.evil.com/SimpleNotificationService-0123456789abcdef0123456789abcdef.pem",
        "https://evil.com/sns.us-east-1.amazonaws.com/x.pem",
    ] {
        let mut m = json!({"Type": "Notification", "MessageId": "u-1", "TopicArn": TOPIC, "Message": "m",
            "Timestamp": webhook_relay::testkit::signer::now_rfc3339(), "SigningCertURL": url});
        s.sign(&mut m, 2);
        assert_eq!(gw.post(m.to_string()).await, (403, "untrusted_cert_url\n".into()), "{url}");
    }

    let other_topic = s.notification("arn:aws:sns:us-east-1:999999999999:alarms-x", "t-1", None, "m");
    assert_eq!(gw.post(other_topic.to_string()).await, (403, "topic_not_allowed\n".into()));

    let mut old = json!({"Type": "Notification", "MessageId": "o-1", "TopicArn": TOPIC, "Message": "m",
        "Timestamp": "2020-01-01T00:00:00.000Z"});
    s.sign(&mut old, 2);
    assert_eq!(gw.post(old.to_string()).await, (403, "too_old\n".into()));

    let ok = alarm(s, "r-1", "prod-a", "ALARM");
    assert_eq!(gw.post_with(&[("x-amz-sns-rawdelivery", "true")], ok.to_string()).await.0, 403);

    let metrics = gw.metrics().await;
    for reason in ["bad_signature", "untrusted_cert_url", "topic_not_allowed", "too_old", "raw_delivery"] {
        assert!(metrics.contains(&format!("reason=\"{reason}\"")), "{reason} not counted");
    }
    assert!(sink.posts().is_empty(), "a refused message reached Slack");
    gw.shutdown().await;
}

#[tokio::test]
async fn oversized_body_gets_413() {
    let sink = SlackSink::start().await.unwrap();
    let gw = start(&routes(&sink, "")).await;
    let huge = format!("{{\"Message\": \"{}\"}}", "x".repeat(1024 * 1024 + 10));
    assert_eq!(gw.post(huge).await.0, 413);
    gw.shutdown().await;
}

#[tokio::test]
async fn certificate_fetched_over_https_once_for_a_burst() {
    let sink = SlackSink::start().await.unwrap();
    let host = FakeSnsHost::start(signer().cert_pem.clone(), Duration::from_millis(200)).await;
    let outbound = host.outbound();
    let gw = start_with(&routes(&sink, ""), |s| {
        s.sns_cert_dir = None;
        s.outbound = outbound;
    })
    .await;
    let mut handles = Vec::new();
    for i in 0..20 {
        let body = alarm(signer(), &format!("burst-{i}"), "prod-a", "ALARM").to_string();
        let addr = gw.addr;
        handles.push(tokio::spawn(async move { reqwest_like::Client.post(addr, "/sns", &[], body.into()).await.0 }));
    }
    for h in handles {
        assert_eq!(h.await.unwrap(), 200);
    }
    assert_eq!(
        host.cert_fetches.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "burst of misses fetched more than once"
    );
    let metrics = gw.metrics().await;
    assert!(metrics.contains("webhook_relay_cert_fetches_total{outcome=\"ok\"} 1"), "{metrics}");
    gw.shutdown().await;
}

#[tokio::test]
async fn unreachable_certificate_host_gets_503() {
    let sink = SlackSink::start().await.unwrap();
    // Nothing listens on port 9 of localhost: connection refused.
    let gw = start_with(&routes(&sink, ""), |s| {
        s.sns_cert_dir = None;
        s.outbound = unreachable();
    })
    .await;
    let (status, text) = gw.post(alarm(signer(), "n-1", "prod-a", "ALARM").to_string()).await;
    assert_eq!((status, text.as_str()), (503, "cert_unavailable\n"));
    // Not remembered as seen: SNS's retry must be accepted later.
    gw.shutdown().await;
}

#[tokio::test]
async fn subscriptions_confirmed_only_for_allowed_topics() {
    let sink = SlackSink::start().await.unwrap();
    let host = FakeSnsHost::start(signer().cert_pem.clone(), Duration::ZERO).await;
    let outbound = host.outbound();
    let gw = start_with(&routes(&sink, ""), |s| s.outbound = outbound).await;
    let url = format!("https://sns.us-east-1.amazonaws.com/?Action=ConfirmSubscription&TopicArn={TOPIC}&Token=t");
    let sub = signer().subscription(TOPIC, &url);
    assert_eq!(gw.post(sub.to_string()).await, (200, "subscription_confirmed\n".into()));
    assert_eq!(host.requests.lock().unwrap().len(), 1);
    assert!(host.requests.lock().unwrap()[0].starts_with("/?Action=ConfirmSubscription&"));

    let denied_topic = "arn:aws:sns:us-east-1:999999999999:other";
    let denied = signer().subscription(denied_topic, &url.replace(TOPIC, denied_topic));
    assert_eq!(gw.post(denied.to_string()).await.0, 403);
    let evil = signer().subscription(TOPIC, "https://evil.example/?Action=ConfirmSubscription&x=1");
    assert_eq!(gw.post(evil.to_string()).await, (403, "untrusted_subscribe_url\n".into()));
    assert_eq!(host.requests.lock().unwrap().len(), 1, "a refused subscription caused an outbound request");
    gw.shutdown().await;
}

#[tokio::test]
async fn admin_endpoints_and_unknown_paths() {
    let sink = SlackSink::start().await.unwrap();
    let gw = start(&routes(&sink, "")).await;
    assert_eq!(gw.client.get(gw.admin, "/healthz").await.0, 200);
    assert_eq!(gw.client.get(gw.admin, "/readyz").await.0, 200);
    assert_eq!(gw.client.get(gw.addr, "/sns").await.0, 405);
    assert_eq!(gw.client.get(gw.addr, "/metrics").await.0, 404, "admin paths must not be on the public listener");
    let m = gw.metrics().await;
    assert!(m.contains("webhook_relay_sns_request_seconds"), "{m}");
    assert!(m.contains(&format!("webhook_relay_build_info{{version=\"{}\"}} 1", env!("CARGO_PKG_VERSION"))), "{m}");
    assert!(m.contains("webhook_relay_dedup_entries"), "{m}");
    gw.shutdown().await;
}

#[tokio::test]
async fn serves_https_with_the_given_certificate() {
    let sink = SlackSink::start().await.unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap().self_signed(&key).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert_path, key_path) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    let gw = start_with(&routes(&sink, ""), |s| s.tls = Some((cert_path, key_path))).await;
    // A client that trusts exactly this certificate posts over TLS.
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der().clone()).unwrap();
    let config =
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(rustls::pki_types::ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("TLS handshake");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls)).await.unwrap();
    tokio::spawn(conn);
    let body = alarm(signer(), "tls-1", "prod-a", "ALARM").to_string();
    let req = hyper::Request::post("/sns")
        .header("host", "localhost")
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    // Plain HTTP to the TLS port is not served.
    let plain = tokio::time::timeout(Duration::from_secs(3), reqwest_like_try(gw.addr)).await;
    assert!(!matches!(plain, Ok(Some(200))));
    gw.shutdown().await;
}

async fn reqwest_like_try(addr: std::net::SocketAddr) -> Option<u16> {
    use http_body_util::Full;
    let tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await.ok()?;
    tokio::spawn(conn);
    let req = hyper::Request::post("/sns").header("host", "x").body(Full::new(bytes::Bytes::from("{}"))).ok()?;
    sender.send_request(req).await.ok().map(|r| r.status().as_u16())
}

#[tokio::test]
async fn slow_clients_are_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let sink = SlackSink::start().await.unwrap();
    let gw = start_with(&routes(&sink, ""), |s| {
        s.limits.header_timeout = Duration::from_millis(300);
        s.limits.body_timeout = Duration::from_millis(300);
    })
    .await;
    // Headers never finish: the connection is closed.
    let mut tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    tcp.write_all(b"POST /sns HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(3), tcp.read_to_end(&mut buf)).await;
    assert!(closed.is_ok(), "slow headers held the connection open");
    // Body promised but never sent: 408.
    let mut tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    tcp.write_all(b"POST /sns HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{").await.unwrap();
    let mut buf = vec![0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(3), tcp.read(&mut buf)).await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 408"), "{}", String::from_utf8_lossy(&buf[..n]));
    gw.shutdown().await;
}

#[tokio::test]
async fn shutdown_turns_unready_first_and_answers_requests_in_flight() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let sink = SlackSink::start().await.unwrap();
    let gw = start(&routes(&sink, "")).await;
    let body = alarm(signer(), "sd-1", "prod-a", "ALARM").to_string();
    // A request in flight: headers and half the body sent.
    let mut tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let head = format!("POST /sns HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n", body.len());
    tcp.write_all(head.as_bytes()).await.unwrap();
    tcp.write_all(&body.as_bytes()[..body.len() / 2]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;

    gw.running.as_ref().unwrap().begin_shutdown();
    let mut unready = false;
    for _ in 0..50 {
        if gw.client.get(gw.admin, "/readyz").await.0 == 503 {
            unready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(unready, "readiness did not go false on shutdown");
    // The in-flight request still gets an answer: 503 (not accepted, so SNS retries it).
    tcp.write_all(&body.as_bytes()[body.len() / 2..]).await.unwrap();
    let mut buf = vec![0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf)).await.unwrap().unwrap();
    let answer = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(answer.starts_with("HTTP/1.1 503") && answer.contains("shutting_down"), "{answer}");
    gw.shutdown().await;
}
