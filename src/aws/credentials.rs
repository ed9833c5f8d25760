//! AWS credentials from the standard chain, in the SDKs' order: environment variables; a
//! web identity token file (EKS IRSA); the container credentials endpoint (ECS, EKS Pod
//! Identity); the instance metadata service (IMDSv2). Credentials that expire are cached
//! until five minutes before they do.
//!
//! Why not `aws-config` (the SDK's own chain): with its defaults it brings about 120 more
//! crates and turns on rustls's aws-lc-rs provider next to our ring one (rustls then panics
//! at start unless every client names its provider), and without its default HTTP client
//! it needs one written for it. The four sources the gateway needs are each one small HTTP
//! exchange over our outbound client (so they go through the same proxy rules and trust),
//! and each is tested against a stand-in over a real socket.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use tokio::sync::Mutex;

use super::{xml_text, Env};
use crate::outbound::Outbound;

/// A set of credentials. `Debug` does not show the secret or the token.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
    pub expires: Option<SystemTime>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials").field("access_key_id", &self.access_key_id).finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum CredentialsError {
    #[error(
        "no AWS credentials: none in the environment, no web identity token file, no container or instance credentials"
    )]
    NotFound,
    /// A source is configured but failed; `code` is AWS's error code when it sent one.
    #[error("{source_name}: {code}: {message}")]
    Failed { source_name: &'static str, code: String, message: String },
}

impl CredentialsError {
    /// AWS's error code, or a short word for the failure (the metric label).
    pub fn code(&self) -> &str {
        match self {
            CredentialsError::NotFound => "NoCredentials",
            CredentialsError::Failed { code, .. } => code,
        }
    }

    fn failed(source_name: &'static str, code: impl Into<String>, message: impl Into<String>) -> CredentialsError {
        CredentialsError::Failed { source_name, code: code.into(), message: message.into() }
    }
}

/// Renews five minutes before expiry, as the SDKs do.
const REFRESH_BEFORE: Duration = Duration::from_secs(300);
const TIMEOUT: Duration = Duration::from_secs(5);

/// The chain, with a cache.
pub struct CredentialsChain {
    env: Env,
    outbound: Outbound,
    cached: Mutex<Option<Credentials>>,
}

impl CredentialsChain {
    pub fn new(env: Env, outbound: Outbound) -> CredentialsChain {
        CredentialsChain { env, outbound, cached: Mutex::new(None) }
    }

    /// Current credentials: cached ones while they are fresh, else the first source that
    /// is configured (a configured source that fails is an error, not a fall-through: the
    /// SDKs do the same, and it keeps a broken IRSA setup from silently using the node's
    /// role).
    pub async fn get(&self) -> Result<Credentials, CredentialsError> {
        let mut cached = self.cached.lock().await;
        if let Some(c) = cached.as_ref() {
            let fresh = c.expires.is_none_or(|e| e > SystemTime::now() + REFRESH_BEFORE);
            if fresh {
                return Ok(c.clone());
            }
        }
        let creds = self.load().await?;
        *cached = Some(creds.clone());
        Ok(creds)
    }

    async fn load(&self) -> Result<Credentials, CredentialsError> {
        let env = &self.env;
        if let (Some(id), Some(secret)) = (env.get("AWS_ACCESS_KEY_ID"), env.get("AWS_SECRET_ACCESS_KEY")) {
            return Ok(Credentials {
                access_key_id: id,
                secret_access_key: secret,
                session_token: env.get("AWS_SESSION_TOKEN"),
                expires: None,
            });
        }
        if let (Some(file), Some(role)) = (env.get("AWS_WEB_IDENTITY_TOKEN_FILE"), env.get("AWS_ROLE_ARN")) {
            return self.web_identity(&file, &role).await;
        }
        if env.get("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI").is_some()
            || env.get("AWS_CONTAINER_CREDENTIALS_FULL_URI").is_some()
        {
            return self.container().await;
        }
        if env.get("AWS_EC2_METADATA_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            return Err(CredentialsError::NotFound);
        }
        self.instance().await
    }

    /// STS AssumeRoleWithWebIdentity: an unsigned call, authenticated by the token.
    async fn web_identity(&self, token_file: &str, role_arn: &str) -> Result<Credentials, CredentialsError> {
        const SOURCE: &str = "web identity";
        let token = std::fs::read_to_string(token_file)
            .map_err(|e| CredentialsError::failed(SOURCE, "TokenFileUnreadable", format!("{token_file}: {e}")))?;
        let session = self.env.get("AWS_ROLE_SESSION_NAME").unwrap_or_else(|| "webhook-relay".to_string());
        let region = self.env.get("AWS_REGION").or_else(|| self.env.get("AWS_DEFAULT_REGION"));
        let endpoint = self.env.endpoint("sts").unwrap_or_else(|| match &region {
            Some(r) => format!("https://sts.{r}.amazonaws.com/"),
            None => "https://sts.amazonaws.com/".to_string(),
        });
        let body = form(&[
            ("Action", "AssumeRoleWithWebIdentity"),
            ("Version", "2011-06-15"),
            ("RoleArn", role_arn),
            ("RoleSessionName", &session),
            ("WebIdentityToken", token.trim()),
        ]);
        let request = http::Request::post(endpoint)
            .header(http::header::CONTENT_TYPE, "application/x-www-form-urlencoded; charset=utf-8")
            .body(Bytes::from(body))
            .map_err(|e| CredentialsError::failed(SOURCE, "BadEndpoint", e.to_string()))?;
        let (status, body) = self
            .outbound
            .send(request, 64 * 1024, TIMEOUT)
            .await
            .map_err(|e| CredentialsError::failed(SOURCE, "Unreachable", e.to_string()))?;
        let text = String::from_utf8_lossy(&body);
        if status != 200 {
            let code = xml_text(&text, "Code").unwrap_or_else(|| format!("HTTP{status}"));
            let message = xml_text(&text, "Message").unwrap_or_default();
            return Err(CredentialsError::failed(SOURCE, code, message));
        }
        let field = |name: &str| {
            xml_text(&text, name).ok_or_else(|| CredentialsError::failed(SOURCE, "BadResponse", format!("no {name}")))
        };
        Ok(Credentials {
            access_key_id: field("AccessKeyId")?,
            secret_access_key: field("SecretAccessKey")?,
            session_token: Some(field("SessionToken")?),
            expires: xml_text(&text, "Expiration").and_then(|e| humantime::parse_rfc3339_weak(&e).ok()),
        })
    }

    /// The container endpoint (ECS task roles, EKS Pod Identity): JSON, with an
    /// authorization token when one is given.
    async fn container(&self) -> Result<Credentials, CredentialsError> {
        const SOURCE: &str = "container credentials";
        let url = match (
            self.env.get("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"),
            self.env.get("AWS_CONTAINER_CREDENTIALS_FULL_URI"),
        ) {
            (Some(rel), _) => format!("http://169.254.170.2{rel}"),
            (None, Some(full)) => full,
            (None, None) => return Err(CredentialsError::NotFound),
        };
        let token = match (
            self.env.get("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"),
            self.env.get("AWS_CONTAINER_AUTHORIZATION_TOKEN"),
        ) {
            (Some(file), _) => Some(
                std::fs::read_to_string(&file)
                    .map_err(|e| CredentialsError::failed(SOURCE, "TokenFileUnreadable", format!("{file}: {e}")))?
                    .trim()
                    .to_string(),
            ),
            (None, token) => token,
        };
        let mut request = http::Request::get(url);
        if let Some(t) = token {
            request = request.header(http::header::AUTHORIZATION, t);
        }
        let request =
            request.body(Bytes::new()).map_err(|e| CredentialsError::failed(SOURCE, "BadEndpoint", e.to_string()))?;
        let (status, body) = self
            .outbound
            .send(request, 64 * 1024, TIMEOUT)
            .await
            .map_err(|e| CredentialsError::failed(SOURCE, "Unreachable", e.to_string()))?;
        if status != 200 {
            return Err(CredentialsError::failed(SOURCE, format!("HTTP{status}"), String::from_utf8_lossy(&body)));
        }
        json_credentials(SOURCE, &body)
    }

    /// IMDSv2: a session token first, then the role's credentials.
    async fn instance(&self) -> Result<Credentials, CredentialsError> {
        const SOURCE: &str = "instance metadata";
        let base = self.env.get("AWS_EC2_METADATA_SERVICE_ENDPOINT").unwrap_or_else(|| "http://169.254.169.254".into());
        let base = base.trim_end_matches('/');
        let unreachable = |e: crate::outbound::FetchError| {
            // No metadata service at all is the usual "no credentials anywhere".
            if matches!(e, crate::outbound::FetchError::Connect | crate::outbound::FetchError::Timeout) {
                CredentialsError::NotFound
            } else {
                CredentialsError::failed(SOURCE, "Unreachable", e.to_string())
            }
        };
        let request = http::Request::put(format!("{base}/latest/api/token"))
            .header("x-aws-ec2-metadata-token-ttl-seconds", "21600")
            .body(Bytes::new())
            .map_err(|e| CredentialsError::failed(SOURCE, "BadEndpoint", e.to_string()))?;
        let (status, token) = self.outbound.send(request, 4096, Duration::from_secs(1)).await.map_err(unreachable)?;
        if status != 200 {
            return Err(CredentialsError::failed(SOURCE, format!("HTTP{status}"), "token request refused"));
        }
        let token = String::from_utf8_lossy(&token).trim().to_string();
        let get = |path: String| {
            http::Request::get(format!("{base}{path}"))
                .header("x-aws-ec2-metadata-token", token.as_str())
                .body(Bytes::new())
                .map_err(|e| CredentialsError::failed(SOURCE, "BadEndpoint", e.to_string()))
        };
        let (status, role) = self
            .outbound
            .send(get("/latest/meta-data/iam/security-credentials/".into())?, 4096, TIMEOUT)
            .await
            .map_err(unreachable)?;
        if status != 200 {
            return Err(CredentialsError::NotFound);
        }
        let role = String::from_utf8_lossy(&role).lines().next().unwrap_or_default().trim().to_string();
        let (status, body) = self
            .outbound
            .send(get(format!("/latest/meta-data/iam/security-credentials/{role}"))?, 64 * 1024, TIMEOUT)
            .await
            .map_err(unreachable)?;
        if status != 200 {
            return Err(CredentialsError::failed(SOURCE, format!("HTTP{status}"), "role credentials refused"));
        }
        json_credentials(SOURCE, &body)
    }
}

fn json_credentials(source: &'static str, body: &[u8]) -> Result<Credentials, CredentialsError> {
    let v: HashMap<String, serde_json::Value> =
        serde_json::from_slice(body).map_err(|e| CredentialsError::failed(source, "BadResponse", e.to_string()))?;
    let text = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string);
    let need = |k: &str| text(k).ok_or_else(|| CredentialsError::failed(source, "BadResponse", format!("no {k}")));
    Ok(Credentials {
        access_key_id: need("AccessKeyId")?,
        secret_access_key: need("SecretAccessKey")?,
        session_token: text("Token"),
        expires: text("Expiration").and_then(|e| humantime::parse_rfc3339_weak(&e).ok()),
    })
}

/// `application/x-www-form-urlencoded`, in the order given.
pub fn form(pairs: &[(&str, &str)]) -> String {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        s.append_pair(k, v);
    }
    s.finish()
}

/// Shared so the SNS client and tests hold one chain.
pub type SharedChain = Arc<CredentialsChain>;
