//! `confirm = "api"` against LocalStack as a real SNS: it sends the gateway a signed
//! SubscriptionConfirmation, and the gateway confirms through LocalStack's SNS API
//! (SigV4-signed ConfirmSubscription). LocalStack runs in-process without Docker, from the
//! venv `tests/localstack/install.sh` makes (`.ci/run` installs it, pinned). Under CI
//! (`CI=true`) a missing LocalStack fails the test; elsewhere the test says loudly that it
//! was skipped.

mod support;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::*;
use webhook_relay::aws::Env;

fn venv() -> PathBuf {
    std::env::var_os("LOCALSTACK_VENV").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/webhook-relay/localstack-venv")
    })
}

/// The venv's python, or `None` (after saying so) when the test must be skipped.
fn python() -> Option<PathBuf> {
    let python = venv().join("bin/python");
    let ok = python.exists()
        && Command::new(&python).args(["-c", "import localstack, boto3"]).output().is_ok_and(|o| o.status.success());
    if ok {
        return Some(python);
    }
    let why = format!("LocalStack is not installed in {} (run tests/localstack/install.sh)", venv().display());
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{why}; CI must run the LocalStack tests");
    }
    eprintln!("\n!!!!!!!! SKIPPED: {why} !!!!!!!!\n");
    None
}

struct LocalStack {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl LocalStack {
    async fn start() -> LocalStack {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/localstack/run.sh");
        let log = std::fs::File::create(dir.path().join("localstack.log")).unwrap();
        let child = Command::new(script)
            .arg(port.to_string())
            .arg(dir.path())
            .env("LOCALSTACK_VENV", venv())
            .env("SERVICES", "sns")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let ls = LocalStack { child, port, _dir: dir };
        let client = webhook_relay::outbound::Outbound::new(&Default::default()).unwrap();
        let health = format!("http://127.0.0.1:{port}/_localstack/health");
        let deadline = Instant::now() + Duration::from_secs(120);
        while Instant::now() < deadline {
            if client.get(&health, 1 << 20, Duration::from_secs(2)).await.is_ok() {
                return ls;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let log = std::fs::read_to_string(ls._dir.path().join("localstack.log")).unwrap_or_default();
        panic!("LocalStack did not become ready in 120 s:\n{log}");
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Runs boto3 against it; the script prints one line of JSON.
    fn boto3(&self, python: &PathBuf, script: &str) -> serde_json::Value {
        let prelude = format!(
            "import boto3, json\nsns = boto3.client('sns', endpoint_url='{}', region_name='us-east-1', \
             aws_access_key_id='test', aws_secret_access_key='test')\n",
            self.url()
        );
        let out =
            Command::new(python).args(["-c", &format!("{prelude}{script}")]).stderr(Stdio::inherit()).output().unwrap();
        assert!(out.status.success(), "boto3 failed: {}", String::from_utf8_lossy(&out.stdout));
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
    }
}

impl Drop for LocalStack {
    fn drop(&mut self) {
        // By its PID, SIGTERM first (never by name: other LocalStacks may run).
        let _ = Command::new("kill").arg(self.child.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn localstack_subscription_is_confirmed_through_the_api_and_a_disallowed_one_never() {
    let Some(python) = python() else { return };
    let ls = LocalStack::start().await;
    let sink = SlackSink::start().await.unwrap();
    let cfg = format!(
        "[sns]\ntopics = [\"arn:aws:sns:*:000000000000:allowed-*\"]\nconfirm = \"api\"\n\
         [destinations.c]\nurl = \"{}\"\n[[route]]\nname = \"all\"\nto = [\"c\"]\n",
        sink.url("c")
    );
    let endpoint = ls.url();
    let gw = start_with(&cfg, |s| {
        s.sns_cert_dir = None;
        s.dev_url_prefixes = vec![format!("{endpoint}/")];
        s.aws_env = Env::from_pairs([
            ("AWS_ACCESS_KEY_ID", "test"),
            ("AWS_SECRET_ACCESS_KEY", "test"),
            ("AWS_ENDPOINT_URL", endpoint.as_str()),
        ]);
    })
    .await;
    let subs = ls.boto3(
        &python,
        &format!(
            "out = {{}}\nfor name in ['allowed-alarms', 'other-alarms']:\n    \
             arn = sns.create_topic(Name=name)['TopicArn']\n    \
             out[name] = sns.subscribe(TopicArn=arn, Protocol='http', Endpoint='http://{}/sns', \
             ReturnSubscriptionArn=True)['SubscriptionArn']\nprint(json.dumps(out))",
            gw.addr
        ),
    );
    let pending = |arn: &str| -> String {
        let v = ls.boto3(
            &python,
            &format!("print(json.dumps(sns.get_subscription_attributes(SubscriptionArn='{arn}')['Attributes']))"),
        );
        v["PendingConfirmation"].as_str().unwrap_or_default().to_string()
    };
    let allowed = subs["allowed-alarms"].as_str().unwrap().to_string();
    let other = subs["other-alarms"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    while pending(&allowed) != "false" && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(pending(&allowed), "false", "the allowed topic's subscription was not confirmed");
    assert_eq!(pending(&other), "true", "a disallowed topic's subscription was confirmed");
    let m = gw.metrics().await;
    assert!(m.contains("webhook_relay_subscription_confirmations_total{outcome=\"confirmed_api\"} 1"), "{m}");
    assert!(m.contains("webhook_relay_sns_rejected_total{reason=\"topic_not_allowed\"}"), "{m}");

    // And the confirmed subscription delivers: a CloudWatch alarm published to the topic
    // reaches the stand-in Slack.
    let alarm = alarm_message("prod-ls-critical", "ALARM", "OK", "Threshold Crossed", "us-east-1", "000000000000");
    ls.boto3(
        &python,
        &format!(
            "arn = sns.create_topic(Name='allowed-alarms')['TopicArn']\n\
             print(json.dumps(sns.publish(TopicArn=arn, Subject='ALARM', Message={alarm:?})))"
        ),
    );
    assert!(sink.wait_until(Duration::from_secs(20), |_| sink.delivered("c").len() == 1).await);
    gw.shutdown().await;
}
