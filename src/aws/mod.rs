//! Calling AWS APIs: credentials from the standard chain ([`credentials`]), SigV4 signing
//! with `aws-sigv4` (the AWS SDK for Rust's own signer), and the one call the gateway
//! makes: SNS `ConfirmSubscription` with `AuthenticateOnUnsubscribe=true`, so that only
//! holders of AWS credentials can unsubscribe the endpoint ([`sns_api`]).

pub mod credentials;
pub mod sns_api;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use bytes::Bytes;

pub use credentials::{Credentials, CredentialsChain, CredentialsError};

/// The environment the AWS pieces read (`AWS_*`), captured once. Tests hand in their own
/// instead of changing the process's environment, which parallel tests share.
#[derive(Debug, Clone, Default)]
pub struct Env(Arc<HashMap<String, String>>);

impl Env {
    pub fn from_process() -> Env {
        Env(Arc::new(std::env::vars().filter(|(k, _)| k.starts_with("AWS_")).collect()))
    }

    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Env {
        Env(Arc::new(pairs.into_iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()))
    }

    pub fn get(&self, key: &str) -> Option<String> {
        self.0.get(key).filter(|v| !v.trim().is_empty()).cloned()
    }

    /// The standard endpoint overrides: `AWS_ENDPOINT_URL_<SERVICE>`, then
    /// `AWS_ENDPOINT_URL` (what LocalStack setups use).
    pub fn endpoint(&self, service: &str) -> Option<String> {
        self.get(&format!("AWS_ENDPOINT_URL_{}", service.to_ascii_uppercase())).or_else(|| self.get("AWS_ENDPOINT_URL"))
    }
}

/// The text of the first `<tag>...</tag>` in an AWS XML answer. The answers read here
/// are small and flat (an error's `Code`, STS's credentials); a full XML parser would add
/// a dependency for no difference on them.
pub fn xml_text(xml: &str, tag: &str) -> Option<String> {
    let open = format!("<{tag}>");
    let start = xml.find(&open)? + open.len();
    let end = xml[start..].find(&format!("</{tag}>"))? + start;
    let raw = &xml[start..end];
    Some(
        raw.replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&apos;", "'")
            .replace("&amp;", "&"),
    )
}

#[derive(Debug, thiserror::Error)]
#[error("cannot sign the request: {0}")]
pub struct SignError(String);

/// Signs `request` in place with SigV4 for `service` in `region` at `time`: adds
/// `x-amz-date`, `authorization` and, with session credentials, `x-amz-security-token`.
pub fn sign_request(
    request: &mut http::Request<Bytes>,
    credentials: &Credentials,
    service: &str,
    region: &str,
    time: SystemTime,
) -> Result<(), SignError> {
    let identity = aws_credential_types::Credentials::new(
        &credentials.access_key_id,
        &credentials.secret_access_key,
        credentials.session_token.clone(),
        credentials.expires,
        "webhook-relay",
    )
    .into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(service)
        .time(time)
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| SignError(e.to_string()))?
        .into();
    let headers: Vec<(&str, &str)> = request
        .headers()
        .iter()
        .map(|(k, v)| Ok((k.as_str(), v.to_str().map_err(|e| SignError(e.to_string()))?)))
        .collect::<Result<_, SignError>>()?;
    let uri = request.uri().to_string();
    let signable =
        SignableRequest::new(request.method().as_str(), &uri, headers.into_iter(), SignableBody::Bytes(request.body()))
            .map_err(|e| SignError(e.to_string()))?;
    let (instructions, _) = sign(signable, &params).map_err(|e| SignError(e.to_string()))?.into_parts();
    instructions.apply_to_request_http1x(request);
    Ok(())
}
