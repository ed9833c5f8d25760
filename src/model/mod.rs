//! The notification model, shared by every stage: what a verified SNS Notification says
//! ([`Envelope`]), how routing and formatting see it ([`Notification`], with the CloudWatch
//! [`Alarm`] inside when there is one), the decision routing made ([`Prepared`]), and the
//! few helpers all stages use. It imports no stage: stages import it.

pub mod alarm;
pub mod event;
pub mod json_text;

use serde::{Deserialize, Serialize};

pub use alarm::{parse_alarm, Alarm, Str, Trigger};
pub use event::{parse_event, AwsEvent};

/// What the gateway keeps of an accepted SNS Notification (everything delivery needs).
///
/// Read back from stored JSON (`from_slice`) with `json_text`: one allocation per field
/// (serde_json's unescaping of the message, JSON inside JSON, cost about ten).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    #[serde(deserialize_with = "json_text::string")]
    pub message_id: String,
    #[serde(deserialize_with = "json_text::string")]
    pub topic_arn: String,
    #[serde(default, deserialize_with = "json_text::opt_string")]
    pub subject: Option<String>,
    #[serde(deserialize_with = "json_text::string")]
    pub message: String,
    /// SNS's `Timestamp` text (24 bytes: inline).
    #[serde(deserialize_with = "json_text::compact")]
    pub timestamp: Str,
    /// Set on a copy sent to a destination's `fallback` because Slack said the original
    /// destination is gone: the destination it came from. A fallback is followed one hop
    /// at most, so two gone webhooks that fall back to each other end as a dead letter
    /// instead of passing the alarm back and forth. Stored with the message, so the rule
    /// holds across restarts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback_from: Option<String>,
}

/// A notification as routing and formatting see it.
#[derive(Debug, Clone)]
pub struct Notification {
    pub envelope: Envelope,
    /// A CloudWatch alarm state change: a classic alarm notification, or the alarm in an
    /// EventBridge "CloudWatch Alarm State Change" event.
    pub alarm: Option<Alarm>,
    /// The EventBridge event the Message is, when it is one.
    pub event: Option<AwsEvent>,
    /// Region code (`us-east-1`): the alarm ARN's, else the event's, else the topic's.
    pub region: Option<Str>,
    pub account: Option<Str>,
    /// Partition of the topic (`aws`, `aws-cn`, ...), for console links.
    pub partition: Str,
}

/// A notification with the severity routing gave it, shared by its deliveries.
#[derive(Debug)]
pub struct Prepared {
    pub notification: Notification,
    pub severity: Str,
}

impl Notification {
    pub fn from_envelope(envelope: Envelope) -> Notification {
        let (alarm, event) = match parse_alarm(&envelope.message) {
            Some(alarm) => (Some(alarm), None),
            None => match parse_event(&envelope.message) {
                Some((event, alarm)) => (alarm, Some(event)),
                None => (None, None),
            },
        };
        let topic = TopicArn::parse(&envelope.topic_arn);
        let alarm_arn_region = alarm
            .as_ref()
            .and_then(|a| a.arn.as_deref())
            .and_then(|arn| arn.split(':').nth(3))
            .filter(|r| !r.is_empty())
            .map(Str::from);
        let region = alarm_arn_region
            .or_else(|| event.as_ref().and_then(|e| e.region.as_deref()).map(Str::from))
            .or_else(|| topic.as_ref().map(|t| Str::from(t.region)));
        let account = alarm
            .as_ref()
            .and_then(|a| a.account.clone())
            .or_else(|| event.as_ref().and_then(|e| e.account.as_deref()).map(Str::from))
            .or_else(|| topic.as_ref().map(|t| Str::from(t.account)))
            .filter(|a| !a.is_empty());
        let partition = topic.as_ref().map_or(Str::const_new("aws"), |t| Str::from(t.partition));
        Notification { envelope, alarm, event, region, account, partition }
    }

    pub fn state(&self) -> Option<&str> {
        self.alarm.as_ref().map(|a| a.new_state.as_str())
    }
}

/// A parsed `arn:<partition>:sns:<region>:<account>:<name>` topic ARN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicArn<'a> {
    pub partition: &'a str,
    pub region: &'a str,
    pub account: &'a str,
    pub name: &'a str,
}

impl<'a> TopicArn<'a> {
    pub fn parse(arn: &'a str) -> Option<TopicArn<'a>> {
        let mut parts = arn.splitn(6, ':');
        let (Some("arn"), Some(partition), Some("sns"), Some(region), Some(account), Some(name)) =
            (parts.next(), parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return None;
        };
        if partition.is_empty() || region.is_empty() || name.is_empty() {
            return None;
        }
        Some(TopicArn { partition, region, account, name })
    }
}

/// Cuts attacker-controlled text before it reaches a log line.
pub fn truncate(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].escape_debug().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncate_respects_char_boundaries() {
        assert_eq!(truncate("ééé", 3), "é");
        assert_eq!(truncate("a\nb", 10), "a\\nb");
    }

    #[test]
    fn topic_arns() {
        let t = TopicArn::parse("arn:aws-cn:sns:cn-north-1:123:a:b").unwrap();
        assert_eq!((t.partition, t.region, t.account, t.name), ("aws-cn", "cn-north-1", "123", "a:b"));
        assert!(TopicArn::parse("arn:aws:sqs:us-east-1:1:q").is_none());
        assert!(TopicArn::parse("arn:aws:sns:us-east-1:1").is_none());
        assert!(TopicArn::parse("").is_none());
    }
}
