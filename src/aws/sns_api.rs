//! SNS `ConfirmSubscription` through the API (Query protocol, SigV4-signed), with
//! `AuthenticateOnUnsubscribe=true`: a subscription confirmed this way can only be
//! cancelled by someone with AWS credentials, not by anyone holding a message's
//! `UnsubscribeURL` (which is printed in every notification and in many logs).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;

use super::credentials::{form, CredentialsChain, CredentialsError};
use super::{sign_request, xml_text, Env};
use crate::model::TopicArn;
use crate::outbound::Outbound;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
    #[error("TopicArn is not an SNS topic ARN")]
    BadTopic,
    #[error("SNS answered {code}: {message}")]
    Aws { code: String, message: String },
    #[error("SNS unreachable: {0}")]
    Unreachable(String),
}

impl ApiError {
    /// AWS's error code (`InvalidClientTokenId`, `AuthorizationError`, ...) or a word for
    /// what failed before AWS could answer: the log field and the metric label.
    pub fn code(&self) -> &str {
        match self {
            ApiError::Credentials(e) => e.code(),
            ApiError::BadTopic => "BadTopicArn",
            ApiError::Aws { code, .. } => code,
            ApiError::Unreachable(_) => "Unreachable",
        }
    }
}

/// The SNS API client.
pub struct SnsApi {
    env: Env,
    outbound: Outbound,
    credentials: Arc<CredentialsChain>,
}

const TIMEOUT: Duration = Duration::from_secs(10);

impl SnsApi {
    pub fn new(env: Env, outbound: Outbound) -> SnsApi {
        let credentials = Arc::new(CredentialsChain::new(env.clone(), outbound.clone()));
        SnsApi { env, outbound, credentials }
    }

    /// Where the API of `region` is: the override, else the partition's SNS host.
    pub fn endpoint(&self, topic: &TopicArn<'_>) -> String {
        self.env.endpoint("sns").unwrap_or_else(|| {
            let domain = match topic.partition {
                "aws-cn" => "amazonaws.com.cn",
                _ => "amazonaws.com",
            };
            format!("https://sns.{}.{domain}/", topic.region)
        })
    }

    /// The signed request, as sent (exposed for tests of its construction).
    pub async fn confirm_request(
        &self,
        topic_arn: &str,
        token: &str,
        time: SystemTime,
    ) -> Result<http::Request<Bytes>, ApiError> {
        let topic = TopicArn::parse(topic_arn).ok_or(ApiError::BadTopic)?;
        let body = form(&[
            ("Action", "ConfirmSubscription"),
            ("Version", "2010-03-31"),
            ("TopicArn", topic_arn),
            ("Token", token),
            ("AuthenticateOnUnsubscribe", "true"),
        ]);
        let mut request = http::Request::post(self.endpoint(&topic))
            .header(http::header::CONTENT_TYPE, "application/x-www-form-urlencoded; charset=utf-8")
            .body(Bytes::from(body))
            .map_err(|e| ApiError::Unreachable(format!("bad endpoint: {e}")))?;
        let host = request.uri().authority().map(|a| a.to_string()).unwrap_or_default();
        request.headers_mut().insert(
            http::header::HOST,
            http::HeaderValue::from_str(&host).map_err(|_| ApiError::Unreachable("bad endpoint host".into()))?,
        );
        let credentials = self.credentials.get().await?;
        sign_request(&mut request, &credentials, "sns", topic.region, time)
            .map_err(|e| ApiError::Unreachable(e.to_string()))?;
        Ok(request)
    }

    /// Confirms the subscription; returns its ARN.
    pub async fn confirm_subscription(&self, topic_arn: &str, token: &str) -> Result<String, ApiError> {
        let request = self.confirm_request(topic_arn, token, SystemTime::now()).await?;
        let (status, body) =
            self.outbound.send(request, 64 * 1024, TIMEOUT).await.map_err(|e| ApiError::Unreachable(e.to_string()))?;
        let text = String::from_utf8_lossy(&body);
        if status != 200 {
            return Err(ApiError::Aws {
                code: xml_text(&text, "Code").unwrap_or_else(|| format!("HTTP{status}")),
                message: xml_text(&text, "Message").unwrap_or_default(),
            });
        }
        Ok(xml_text(&text, "SubscriptionArn").unwrap_or_default())
    }
}
