//! `confirm = "api"`: the SigV4-signed ConfirmSubscription call and where its credentials
//! come from, over real sockets. A stand-in AWS (SNS and STS Query APIs) records each
//! request and answers as AWS documents: success, or an `ErrorResponse` with a code. The
//! same flow against LocalStack as a real SNS is in `localstack.rs`.

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use support::*;
use webhook_relay::aws::sns_api::SnsApi;
use webhook_relay::aws::Env;

#[derive(Debug, Clone)]
struct Seen {
    headers: http::HeaderMap,
    body: String,
}

/// A stand-in for the SNS and STS Query APIs. `sns_error`: answer ConfirmSubscription
/// with this error code (403) instead of success.
struct FakeAws {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

const STS_KEY: &str = "ASIASTSEXAMPLE";
const STS_SESSION: &str = "session-token-from-sts";

impl FakeAws {
    async fn start(sns_error: Option<&'static str>) -> FakeAws {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { continue };
                let s = s.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let s = s.clone();
                        async move {
                            let headers = req.headers().clone();
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            let body = String::from_utf8_lossy(&body).into_owned();
                            s.lock().unwrap().push(Seen { headers, body: body.clone() });
                            let (status, xml) = if body.contains("Action=AssumeRoleWithWebIdentity") {
                                (200, format!("<AssumeRoleWithWebIdentityResponse><AssumeRoleWithWebIdentityResult><Credentials>\
                                     <AccessKeyId>{STS_KEY}</AccessKeyId><SecretAccessKey>sts-secret</SecretAccessKey>\
                                     <SessionToken>{STS_SESSION}</SessionToken><Expiration>2099-01-01T00:00:00Z</Expiration>\
                                     </Credentials></AssumeRoleWithWebIdentityResult></AssumeRoleWithWebIdentityResponse>"))
                            } else if let Some(code) = sns_error {
                                (403, format!("<ErrorResponse><Error><Type>Sender</Type><Code>{code}</Code>\
                                     <Message>The security token included in the request is invalid.</Message></Error></ErrorResponse>"))
                            } else {
                                (
                                    200,
                                    "<ConfirmSubscriptionResponse><ConfirmSubscriptionResult><SubscriptionArn>\
                                     arn:aws:sns:us-east-1:123456789012:alarms-prod:1234</SubscriptionArn>\
                                     </ConfirmSubscriptionResult></ConfirmSubscriptionResponse>"
                                        .to_string(),
                                )
                            };
                            let mut r = hyper::Response::new(Full::new(Bytes::from(xml)));
                            *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                            Ok::<_, std::convert::Infallible>(r)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), svc).await;
                });
            }
        });
        FakeAws { addr, seen }
    }

    fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

fn api_routes(sink: &SlackSink) -> String {
    routes(sink, "").replace("max_age = \"1h\"", "max_age = \"1h\"\nconfirm = \"api\"")
}

async fn confirm_through(env: Env) -> (u16, String, String) {
    let sink = SlackSink::start().await.unwrap();
    let gw = start_with(&api_routes(&sink), |s| s.aws_env = env).await;
    // The SubscribeURL is never fetched with confirm = "api": it points nowhere reachable.
    let sub =
        signer().subscription(TOPIC, "https://sns.us-east-1.amazonaws.com/?Action=ConfirmSubscription&Token=token");
    let (status, text) = gw.post(sub.to_string()).await;
    let metrics = gw.metrics().await;
    gw.shutdown().await;
    (status, text, metrics)
}

#[tokio::test]
async fn api_confirmation_is_signed_and_asks_for_authenticated_unsubscribe() {
    let aws = FakeAws::start(None).await;
    let env = Env::from_pairs([
        ("AWS_ACCESS_KEY_ID", "AKIATESTKEY"),
        ("AWS_SECRET_ACCESS_KEY", "secret"),
        ("AWS_ENDPOINT_URL", aws.url().as_str()),
    ]);
    let (status, text, metrics) = confirm_through(env).await;
    assert_eq!((status, text.as_str()), (200, "subscription_confirmed\n"));
    assert!(
        metrics.contains("webhook_relay_subscription_confirmations_total{outcome=\"confirmed_api\"} 1"),
        "{metrics}"
    );
    let seen = aws.seen();
    assert_eq!(seen.len(), 1);
    let body = &seen[0].body;
    for part in ["Action=ConfirmSubscription", "Token=token", "AuthenticateOnUnsubscribe=true", "Version=2010-03-31"] {
        assert!(body.contains(part), "{part} missing from {body}");
    }
    assert!(body.contains("TopicArn=arn%3Aaws%3Asns%3Aus-east-1%3A123456789012%3Aalarms-prod"), "{body}");
    let auth = seen[0].headers["authorization"].to_str().unwrap();
    assert!(auth.starts_with("AWS4-HMAC-SHA256 Credential=AKIATESTKEY/"), "{auth}");
    assert!(auth.contains("/us-east-1/sns/aws4_request"), "the region comes from the TopicArn: {auth}");
    assert!(!seen[0].headers.contains_key("x-amz-security-token"));
}

#[tokio::test]
async fn an_aws_error_or_no_credentials_is_a_503_with_the_code() {
    let aws = FakeAws::start(Some("InvalidClientTokenId")).await;
    let env = Env::from_pairs([
        ("AWS_ACCESS_KEY_ID", "AKIAWRONG"),
        ("AWS_SECRET_ACCESS_KEY", "wrong"),
        ("AWS_ENDPOINT_URL_SNS", aws.url().as_str()),
    ]);
    let (status, text, metrics) = confirm_through(env).await;
    assert_eq!((status, text.as_str()), (503, "confirm_failed\n"));
    assert!(metrics.contains("webhook_relay_sns_api_errors_total{code=\"InvalidClientTokenId\"} 1"), "{metrics}");
    assert!(!metrics.contains("wrong"), "a secret in /metrics");

    // No credentials anywhere (and no instance metadata service to ask).
    let env = Env::from_pairs([("AWS_EC2_METADATA_DISABLED", "true"), ("AWS_ENDPOINT_URL_SNS", aws.url().as_str())]);
    let (status, _, metrics) = confirm_through(env).await;
    assert_eq!(status, 503);
    assert!(metrics.contains("webhook_relay_sns_api_errors_total{code=\"NoCredentials\"} 1"), "{metrics}");
    assert_eq!(aws.seen().len(), 1, "a request went out without credentials");
}

#[tokio::test]
async fn web_identity_credentials_come_from_sts_and_sign_with_the_session_token() {
    let aws = FakeAws::start(None).await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "eyJ-projected-service-account-token\n").unwrap();
    let env = Env::from_pairs([
        ("AWS_WEB_IDENTITY_TOKEN_FILE", token_file.to_str().unwrap()),
        ("AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/webhook-relay"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_ENDPOINT_URL", aws.url().as_str()),
    ]);
    let (status, text, _) = confirm_through(env).await;
    assert_eq!((status, text.as_str()), (200, "subscription_confirmed\n"));
    let seen = aws.seen();
    assert_eq!(seen.len(), 2, "{seen:?}");
    let sts = &seen[0].body;
    assert!(
        sts.contains("Action=AssumeRoleWithWebIdentity")
            && sts.contains("WebIdentityToken=eyJ-projected-service-account-token"),
        "{sts}"
    );
    assert!(sts.contains("RoleArn=arn%3Aaws%3Aiam%3A%3A123456789012%3Arole%2Fwebhook-relay"), "{sts}");
    assert!(!seen[0].headers.contains_key("authorization"), "AssumeRoleWithWebIdentity is not signed");
    let sns = &seen[1];
    assert!(sns.headers["authorization"]
        .to_str()
        .unwrap()
        .starts_with(&format!("AWS4-HMAC-SHA256 Credential={STS_KEY}/")));
    assert_eq!(sns.headers["x-amz-security-token"], STS_SESSION);
}

/// Independent SigV4 (ring's HMAC and SHA-256), checked against AWS's published test
/// suite, then used to check the request the gateway builds.
mod sigv4 {
    use ring::{digest, hmac};

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    fn hmac(key: &[u8], data: &str) -> Vec<u8> {
        hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data.as_bytes()).as_ref().to_vec()
    }

    /// A request's already-canonical parts and its signing scope.
    pub struct Req<'a> {
        pub secret: &'a str,
        pub date: &'a str,
        pub region: &'a str,
        pub service: &'a str,
        pub method: &'a str,
        pub canonical_headers: &'a str,
        pub signed_headers: &'a str,
        pub body: &'a [u8],
    }

    /// The signature of a request to `/` with no query.
    pub fn signature(r: &Req<'_>) -> String {
        let creq = format!(
            "{}\n/\n\n{}\n{}\n{}",
            r.method,
            r.canonical_headers,
            r.signed_headers,
            hex(digest::digest(&digest::SHA256, r.body).as_ref())
        );
        let day = &r.date[..8];
        let scope = format!("{day}/{}/{}/aws4_request", r.region, r.service);
        let sts = format!(
            "AWS4-HMAC-SHA256\n{}\n{scope}\n{}",
            r.date,
            hex(digest::digest(&digest::SHA256, creq.as_bytes()).as_ref())
        );
        let k = hmac(format!("AWS4{}", r.secret).as_bytes(), day);
        let k = hmac(&k, r.region);
        let k = hmac(&k, r.service);
        let k = hmac(&k, "aws4_request");
        hex(&hmac(&k, &sts))
    }

    pub const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";

    #[test]
    fn the_independent_signer_reproduces_aws_get_and_post_vanilla() {
        let headers = "host:example.amazonaws.com\nx-amz-date:20150830T123600Z\n";
        let sig = |method| {
            signature(&Req {
                secret: SECRET,
                date: "20150830T123600Z",
                region: "us-east-1",
                service: "service",
                method,
                canonical_headers: headers,
                signed_headers: "host;x-amz-date",
                body: b"",
            })
        };
        assert_eq!(sig("GET"), "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31");
        assert_eq!(sig("POST"), "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b");
    }
}

#[test]
fn the_signing_wrapper_reproduces_aws_post_vanilla() {
    let mut request = http::Request::post("https://example.amazonaws.com/").body(Bytes::new()).unwrap();
    request.headers_mut().insert("host", "example.amazonaws.com".parse().unwrap());
    let creds = webhook_relay::aws::Credentials {
        access_key_id: "AKIDEXAMPLE".into(),
        secret_access_key: sigv4::SECRET.into(),
        session_token: None,
        expires: None,
    };
    let at = humantime::parse_rfc3339("2015-08-30T12:36:00Z").unwrap();
    webhook_relay::aws::sign_request(&mut request, &creds, "service", "us-east-1", at).unwrap();
    assert_eq!(
        request.headers()["authorization"],
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, \
         Signature=5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b"
    );
}

#[tokio::test]
async fn the_confirm_request_is_canonical_with_a_session_token() {
    let env = Env::from_pairs([
        ("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE"),
        ("AWS_SECRET_ACCESS_KEY", sigv4::SECRET),
        ("AWS_SESSION_TOKEN", "the-session-token"),
    ]);
    let outbound = webhook_relay::outbound::Outbound::new(&Default::default()).unwrap();
    let api = SnsApi::new(env, outbound);
    let at = humantime::parse_rfc3339("2026-11-27T12:00:00Z").unwrap();
    let topic = "arn:aws:sns:eu-west-1:123456789012:alarms prod";
    let request = api.confirm_request(topic, "tok/en+1", at).await.unwrap();
    assert_eq!(request.uri(), "https://sns.eu-west-1.amazonaws.com/");
    let body = std::str::from_utf8(request.body()).unwrap();
    assert_eq!(
        body,
        "Action=ConfirmSubscription&Version=2010-03-31&TopicArn=arn%3Aaws%3Asns%3Aeu-west-1%3A123456789012%3Aalarms+prod\
         &Token=tok%2Fen%2B1&AuthenticateOnUnsubscribe=true"
    );
    let h = request.headers();
    assert_eq!(h["x-amz-date"], "20261127T120000Z");
    assert_eq!(h["x-amz-security-token"], "the-session-token");
    let auth = h["authorization"].to_str().unwrap();
    let signed = "content-type;host;x-amz-date;x-amz-security-token";
    assert!(auth.contains(&format!("SignedHeaders={signed},")), "{auth}");
    let canonical = "content-type:application/x-www-form-urlencoded; charset=utf-8\nhost:sns.eu-west-1.amazonaws.com\n\
                     x-amz-date:20261127T120000Z\nx-amz-security-token:the-session-token\n";
    let want = sigv4::signature(&sigv4::Req {
        secret: sigv4::SECRET,
        date: "20261127T120000Z",
        region: "eu-west-1",
        service: "sns",
        method: "POST",
        canonical_headers: canonical,
        signed_headers: signed,
        body: body.as_bytes(),
    });
    assert!(auth.ends_with(&format!("Signature={want}")), "{auth}\nwant {want}");
}
