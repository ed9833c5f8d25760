//! The door's pipeline for one request: parse, verify, dedup, route, store, hand to
//! delivery. [`Gateway::handle_sns`] reads top to bottom as the path of one message; every
//! refusal is an [`IngestError`] whose variant maps to one HTTP status and one metric label.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use http::StatusCode;
use prometheus_client::metrics::counter::Counter;

use crate::aws::sns_api::SnsApi;
use crate::config::reload::ConfigHandle;
use crate::config::{Config, ConfirmMode};
use crate::dedup::{self, MessageKey};
use crate::deliver::Deliverer;
use crate::metrics::Metrics;
use crate::model::Envelope;
use crate::queue::{Accepted, NewMessage, Queue, QueueError};
use crate::route;
use crate::sns::{self, ConfirmError, MessageType, Policy, SnsError, VerifiedMessage, Verifier};

/// What happened to an accepted request (all answered 200).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Accepted,
    Duplicate,
    Unrouted,
    SubscriptionConfirmed,
    SubscriptionNotConfirmed,
    UnsubscribeSeen,
}

impl Outcome {
    /// The answer's body: the label and a newline, without a `format!` per request.
    pub fn line(self) -> &'static str {
        match self {
            Outcome::Accepted => "accepted\n",
            Outcome::Duplicate => "duplicate\n",
            Outcome::Unrouted => "unrouted\n",
            Outcome::SubscriptionConfirmed => "subscription_confirmed\n",
            Outcome::SubscriptionNotConfirmed => "subscription_not_confirmed\n",
            Outcome::UnsubscribeSeen => "unsubscribe_confirmation\n",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Outcome::Accepted => "accepted",
            Outcome::Duplicate => "duplicate",
            Outcome::Unrouted => "unrouted",
            Outcome::SubscriptionConfirmed => "subscription_confirmed",
            Outcome::SubscriptionNotConfirmed => "subscription_not_confirmed",
            Outcome::UnsubscribeSeen => "unsubscribe_confirmation",
        }
    }
}

/// Why a request was refused; [`IngestError::status`] and [`IngestError::label`] are the
/// single mapping to HTTP status and metric label.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error(transparent)]
    Sns(#[from] SnsError),
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error("subscription confirmation failed: {0}")]
    Confirm(String),
    #[error("shutting down")]
    ShuttingDown,
}

impl IngestError {
    pub fn status(&self) -> StatusCode {
        match self {
            IngestError::Sns(e) => e.status(),
            IngestError::Queue(_) | IngestError::Confirm(_) | IngestError::ShuttingDown => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        }
    }

    pub fn label(&self) -> &'static str {
        match self {
            IngestError::Sns(e) => e.label(),
            IngestError::Queue(QueueError::Full(_)) => "store_full",
            IngestError::Queue(_) => "store_unavailable",
            IngestError::Confirm(_) => "confirm_failed",
            IngestError::ShuttingDown => "shutting_down",
        }
    }
}

/// The assembled pipeline.
pub struct Gateway {
    pub(crate) verifier: Verifier,
    /// For `confirm = "api"`.
    pub(crate) sns_api: SnsApi,
    pub(crate) config: Arc<ConfigHandle>,
    pub(crate) queue: Arc<dyn Queue>,
    pub(crate) deliver: Deliverer,
    pub(crate) metrics: Metrics,
    /// False once shutdown starts: new messages get 503 so SNS retries elsewhere or later.
    pub(crate) accepting: AtomicBool,
    /// `route_matches` per route name, looked up without building a label per request.
    pub(crate) route_counters: Mutex<HashMap<String, Counter>>,
}

impl Gateway {
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// One SNS request, from raw body to answer.
    pub async fn handle_sns(&self, raw_delivery: bool, body: &[u8]) -> Result<Outcome, IngestError> {
        if !self.accepting.load(Ordering::SeqCst) {
            return Err(IngestError::ShuttingDown);
        }
        if raw_delivery {
            return Err(SnsError::RawDelivery.into());
        }
        let message = sns::SnsMessage::parse(body)?;
        self.metrics.received.get_or_create(&[("type", message.kind.label())]).inc();
        let config = self.config.get();
        let allowed = |topic: &str| config.sns.topic_allowed(topic);
        let policy = Policy { topic_allowed: &allowed, max_age: config.sns.max_age };
        let verified = self.verifier.verify(message, &policy).await?;
        match verified.get().kind {
            MessageType::Notification => self.accept(verified, &config, body).await,
            MessageType::SubscriptionConfirmation => self.confirm(verified, &config).await,
            MessageType::UnsubscribeConfirmation => {
                self.metrics.unsubscribe_confirmations.inc();
                tracing::warn!(topic = %verified.get().topic_arn, "UnsubscribeConfirmation: this endpoint was unsubscribed from the topic");
                Ok(Outcome::UnsubscribeSeen)
            }
        }
    }

    async fn accept(&self, verified: VerifiedMessage, config: &Config, body: &[u8]) -> Result<Outcome, IngestError> {
        let m = verified.into_inner();
        let message_json = m.message_literal.clone().and_then(|r| std::str::from_utf8(body.get(r)?).ok());
        let expires = dedup::expires_at(m.timestamp, config.sns.max_age);
        let key = MessageKey::of(&m.message_id);
        let envelope = Envelope {
            message_id: m.message_id,
            topic_arn: m.topic_arn,
            subject: m.subject,
            message: m.message,
            timestamp: m.timestamp_raw,
            fallback_from: None,
        };
        let (prepared, decision) = route::decide(&config.severity, &config.router, envelope);
        let new = NewMessage {
            envelope: &prepared.notification.envelope,
            severity: &prepared.severity,
            destinations: decision.destinations,
            dedup: Some((key, expires)),
            replay_of: None,
            message_json,
        };
        let deliveries = match self.queue.accept(new).await? {
            Accepted::Duplicate => {
                self.metrics.duplicates.inc();
                tracing::debug!(message_id = %prepared.notification.envelope.message_id, "duplicate MessageId dropped");
                return Ok(Outcome::Duplicate);
            }
            Accepted::Stored(deliveries) => deliveries,
        };
        for r in &decision.routes {
            self.count_route(r);
        }
        let n = &prepared.notification;
        let alarm = n.alarm.as_ref().map_or("", |a| a.name.as_str());
        let message_id = &n.envelope.message_id;
        if deliveries.is_empty() {
            self.metrics.unrouted.inc();
            match &decision.muted {
                Some(route) => {
                    tracing::info!(message_id = %message_id, alarm = %alarm, route = %route, "notification muted by route")
                }
                None => tracing::info!(message_id = %message_id, alarm = %alarm, "notification matched no route"),
            }
            return Ok(Outcome::Unrouted);
        }
        self.metrics.accepted.inc();
        // Fields are evaluated only when the line is enabled: no join under load at `warn`.
        tracing::info!(message_id = %message_id, alarm = %alarm, severity = %prepared.severity, routes = %decision.routes.join(","), "notification accepted");
        let prepared = Arc::new(prepared);
        let mut deliveries = deliveries;
        for d in &mut deliveries {
            d.prepared = Some(prepared.clone());
        }
        self.deliver.enqueue(deliveries);
        Ok(Outcome::Accepted)
    }

    fn count_route(&self, route: &str) {
        let mut counters = self.route_counters.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = counters.get(route) {
            c.inc();
            return;
        }
        // Route names come from routes.toml: a handful, growing only with reloads.
        let c = self.metrics.route_matches.get_or_create(&Metrics::named("route", route)).clone();
        c.inc();
        counters.insert(route.to_string(), c);
    }

    async fn confirm(&self, verified: VerifiedMessage, config: &Config) -> Result<Outcome, IngestError> {
        let topic = &verified.get().topic_arn;
        if !config.sns.auto_confirm {
            self.metrics.subscriptions.get_or_create(&[("outcome", "auto_confirm_off")]).inc();
            tracing::warn!(topic = %topic, "SubscriptionConfirmation received; auto_confirm is off, confirm it by hand");
            return Ok(Outcome::SubscriptionNotConfirmed);
        }
        if config.sns.confirm == ConfirmMode::Api {
            let token = verified.get().token.as_deref().unwrap_or_default();
            return match self.sns_api.confirm_subscription(topic, token).await {
                Ok(arn) => {
                    self.metrics.subscriptions.get_or_create(&[("outcome", "confirmed_api")]).inc();
                    tracing::info!(topic = %topic, subscription = %arn, "subscription confirmed through the SNS API (unsubscribing needs AWS credentials)");
                    Ok(Outcome::SubscriptionConfirmed)
                }
                Err(e) => {
                    self.metrics.subscriptions.get_or_create(&[("outcome", "failed")]).inc();
                    self.metrics.sns_api_errors.get_or_create(&Metrics::named("code", e.code())).inc();
                    tracing::error!(topic = %topic, code = e.code(), error = %e, "ConfirmSubscription failed; SNS will resend the confirmation");
                    Err(IngestError::Confirm(e.to_string()))
                }
            };
        }
        match self.verifier.confirm_subscription(&verified).await {
            Ok(()) => {
                self.metrics.subscriptions.get_or_create(&[("outcome", "confirmed")]).inc();
                tracing::info!(topic = %topic, "subscription confirmed");
                Ok(Outcome::SubscriptionConfirmed)
            }
            Err(ConfirmError::Refused(e)) => Err(e.into()),
            Err(ConfirmError::Fetch(e)) => {
                self.metrics.subscriptions.get_or_create(&[("outcome", "failed")]).inc();
                tracing::error!(topic = %topic, error = %e, "subscription confirmation failed; SNS will resend");
                Err(IngestError::Confirm(e.to_string()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Outcome;

    #[test]
    fn each_answer_line_is_its_label() {
        for o in [
            Outcome::Accepted,
            Outcome::Duplicate,
            Outcome::Unrouted,
            Outcome::SubscriptionConfirmed,
            Outcome::SubscriptionNotConfirmed,
            Outcome::UnsubscribeSeen,
        ] {
            assert_eq!(o.line(), format!("{}\n", o.label()));
        }
    }
}
