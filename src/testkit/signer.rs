//! Signs SNS-shaped messages the way AWS does: RSA PKCS#1 v1.5 over the string to sign,
//! SHA1 for SignatureVersion 1 and SHA256 for 2, with a certificate made on the spot.

use rsa::pkcs1v15::SigningKey;
use rsa::pkcs8::EncodePrivateKey;
use rsa::signature::{SignatureEncoding, Signer};
use rsa::RsaPrivateKey;
use serde_json::{json, Value};

use crate::sns::SnsMessage;

pub struct TestSigner {
    /// SHA1 signing (v1) needs the RustCrypto key: ring signs only SHA-2.
    key: RsaPrivateKey,
    /// SHA256 signing (v2) with ring, several times faster; the load generator signs
    /// hundreds of thousands of messages.
    ring_key: ring::signature::RsaKeyPair,
    pub cert_pem: String,
    pub cert_der: Vec<u8>,
    /// The SigningCertURL put in every message.
    pub cert_url: String,
    /// The file name under which `--sns-cert-dir` must hold `cert_pem`.
    pub cert_file_name: String,
}

impl TestSigner {
    /// A new 2048-bit key and a certificate for it valid from 1975 to 4096.
    pub fn generate(region: &str) -> anyhow::Result<TestSigner> {
        TestSigner::generate_with(region, 2048, None)
    }

    /// `bits` other than 2048 and a custom validity window exist to test refusals.
    pub fn generate_with(region: &str, bits: usize, not_after_year: Option<i32>) -> anyhow::Result<TestSigner> {
        let key = RsaPrivateKey::new(&mut rand::thread_rng(), bits)?;
        let pkcs8 = key.to_pkcs8_der()?;
        let key_pair = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(
            &rustls::pki_types::PrivatePkcs8KeyDer::from(pkcs8.as_bytes().to_vec()),
            &rcgen::PKCS_RSA_SHA256,
        )?;
        let mut params = rcgen::CertificateParams::new(vec!["sns.amazonaws.com".to_string()])?;
        params.distinguished_name.push(rcgen::DnType::CommonName, "sns.amazonaws.com");
        if let Some(year) = not_after_year {
            params.not_after = rcgen::date_time_ymd(year, 1, 1);
        }
        let cert = params.self_signed(&key_pair)?;
        let digest = ring::digest::digest(&ring::digest::SHA256, cert.der());
        let hex: String = digest.as_ref()[..16].iter().map(|b| format!("{b:02x}")).collect();
        let cert_file_name = format!("SimpleNotificationService-{hex}.pem");
        let ring_key = ring::signature::RsaKeyPair::from_pkcs8(pkcs8.as_bytes())
            .map_err(|e| anyhow::anyhow!("ring rejects the generated key: {e}"))?;
        Ok(TestSigner {
            key,
            ring_key,
            cert_pem: cert.pem(),
            cert_der: cert.der().to_vec(),
            cert_url: format!("https://sns.{region}.amazonaws.com/{cert_file_name}"),
            cert_file_name,
        })
    }

    /// Writes the certificate where `--sns-cert-dir dir` will find it.
    pub fn pin_into(&self, dir: &std::path::Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join(&self.cert_file_name), &self.cert_pem)
    }

    /// Adds `SignatureVersion`, `SigningCertURL` (unless present) and `Signature`.
    pub fn sign(&self, msg: &mut Value, version: u8) {
        msg["SignatureVersion"] = json!(version.to_string());
        if msg.get("SigningCertURL").is_none() {
            msg["SigningCertURL"] = json!(self.cert_url);
        }
        msg["Signature"] = json!("");
        let parsed = SnsMessage::parse(msg.to_string().as_bytes()).expect("test message has every field");
        let data = parsed.string_to_sign();
        let sig = match version {
            1 => SigningKey::<sha1::Sha1>::new(self.key.clone()).sign(data.as_bytes()).to_vec(),
            _ => {
                let mut sig = vec![0; self.ring_key.public().modulus_len()];
                self.ring_key
                    .sign(
                        &ring::signature::RSA_PKCS1_SHA256,
                        &ring::rand::SystemRandom::new(),
                        data.as_bytes(),
                        &mut sig,
                    )
                    .expect("signing with a valid key");
                sig
            }
        };
        msg["Signature"] = json!(base64::Engine::encode(&base64::engine::general_purpose::STANDARD, sig));
    }

    /// A signed Notification.
    pub fn notification(&self, topic_arn: &str, message_id: &str, subject: Option<&str>, message: &str) -> Value {
        let mut m = json!({
            "Type": "Notification",
            "MessageId": message_id,
            "TopicArn": topic_arn,
            "Message": message,
            "Timestamp": now_rfc3339(),
            "UnsubscribeURL": "https://sns.us-east-1.amazonaws.com/?Action=Unsubscribe&SubscriptionArn=x",
        });
        if let Some(s) = subject {
            m["Subject"] = json!(s);
        }
        self.sign(&mut m, 2);
        m
    }

    /// A signed SubscriptionConfirmation whose SubscribeURL is `subscribe_url`.
    pub fn subscription(&self, topic_arn: &str, subscribe_url: &str) -> Value {
        let mut m = json!({
            "Type": "SubscriptionConfirmation",
            "MessageId": format!("sub-{}", rand::random::<u64>()),
            "Token": "token",
            "TopicArn": topic_arn,
            "Message": "You have chosen to subscribe to the topic.",
            "SubscribeURL": subscribe_url,
            "Timestamp": now_rfc3339(),
        });
        self.sign(&mut m, 1);
        m
    }
}

/// CloudWatch alarm JSON as SNS carries it in `Message`.
pub fn alarm_message(
    name: &str,
    new_state: &str,
    old_state: &str,
    reason: &str,
    region: &str,
    account: &str,
) -> String {
    json!({
        "AlarmName": name,
        "AlarmDescription": null,
        "AWSAccountId": account,
        "NewStateValue": new_state,
        "OldStateValue": old_state,
        "NewStateReason": reason,
        "StateChangeTime": humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string().replace('Z', "+0000"),
        "Region": region,
        "AlarmArn": format!("arn:aws:cloudwatch:{region}:{account}:alarm:{name}"),
        "Trigger": {
            "MetricName": "CPUUtilization", "Namespace": "AWS/EC2", "StatisticType": "Statistic",
            "Statistic": "AVERAGE", "Unit": null, "Dimensions": [{"value": "i-0abc", "name": "InstanceId"}],
            "Period": 60, "EvaluationPeriods": 1, "ComparisonOperator": "GreaterThanThreshold",
            "Threshold": 80.0, "TreatMissingData": "missing"
        }
    })
    .to_string()
}

pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}
