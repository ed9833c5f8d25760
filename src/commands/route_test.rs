//! `webhook-relay route-test`: where would this message go? (like `amtool config routes
//! test`). Takes an SNS message or a bare CloudWatch alarm JSON; sends nothing.

use std::path::Path;

use crate::config::{Config, Secrets};
use crate::deliver::slack;
use crate::model::Envelope;

pub fn run(config_path: &Path, message_path: &Path, payload: bool, out: &mut dyn std::io::Write) -> i32 {
    // Secrets may be absent: route-test sends nothing.
    let config = match Config::load_with(config_path, Secrets::Optional) {
        Ok((c, _)) => c,
        Err(e) => {
            let _ = writeln!(out, "{e}; run `webhook-relay check` for details");
            return 1;
        }
    };
    let text = match std::fs::read_to_string(message_path) {
        Ok(t) => t,
        Err(e) => {
            let _ = writeln!(out, "cannot read {}: {e}", message_path.display());
            return 1;
        }
    };
    let envelope = match envelope_from(&text) {
        Some(e) => e,
        None => {
            let _ = writeln!(out, "{}: neither an SNS message nor CloudWatch alarm JSON", message_path.display());
            return 1;
        }
    };
    if let Some(refusal) = door_refusal(&config, &envelope, &text) {
        let _ = writeln!(out, "refused at the door: {refusal} (SNS would get 403; nothing below would happen)");
    }
    let (prepared, decision) = crate::route::decide(&config.severity, &config.router, envelope);
    let (n, severity) = (&prepared.notification, &prepared.severity);
    let _ = writeln!(out, "severity: {severity}");
    match &n.alarm {
        Some(a) => {
            let _ = writeln!(out, "alarm: {} -> {}", a.name, a.new_state);
        }
        None => match &n.event {
            Some(e) => {
                let _ = writeln!(out, "EventBridge event: {} from {}", e.detail_type, e.source);
            }
            None => {
                let _ = writeln!(out, "not a CloudWatch alarm (sent as Subject and Message)");
            }
        },
    }
    if let Some(m) = &decision.muted {
        let _ = writeln!(out, "muted by route: {m}");
    }
    let _ = writeln!(
        out,
        "routes: {}",
        if decision.routes.is_empty() { "(none)".to_string() } else { decision.routes.join(", ") }
    );
    let _ = writeln!(
        out,
        "destinations: {}",
        if decision.destinations.is_empty() {
            "(none: would be answered 200 and counted as unrouted)".to_string()
        } else {
            decision.destinations.join(", ")
        }
    );
    if payload {
        for name in &decision.destinations {
            let Some(dest) = config.destinations.get(name) else { continue };
            let style = slack::style(dest, n, severity);
            let r = slack::render(n, severity, &style, slack::History::default());
            let _ = writeln!(out, "\n--- {name} ---");
            let _ = writeln!(out, "{}", serde_json::to_string_pretty(&r.payload()).unwrap_or_default());
            for note in &r.truncated {
                let _ = writeln!(out, "note: {note} to fit Slack's limits");
            }
        }
    }
    0
}

/// Why `serve` would refuse this SNS message before routing (topic not allowed, too old,
/// from the future). A bare alarm JSON has no topic or Timestamp of its own: not checked.
fn door_refusal(config: &Config, envelope: &Envelope, text: &str) -> Option<String> {
    let is_sns = serde_json::from_str::<serde_json::Value>(text).ok()?.get("TopicArn").is_some();
    if !is_sns {
        return None;
    }
    let allowed = |t: &str| config.sns.topic_allowed(t);
    let policy = crate::sns::Policy { topic_allowed: &allowed, max_age: config.sns.max_age };
    if !allowed(&envelope.topic_arn) {
        return Some(format!("topic {} is not in [sns].topics", envelope.topic_arn));
    }
    let Ok(at) = humantime::parse_rfc3339(&envelope.timestamp) else {
        return Some(format!("Timestamp {:?} is not an RFC 3339 time", envelope.timestamp));
    };
    match crate::sns::door_check(&envelope.topic_arn, at, &policy, std::time::SystemTime::now()) {
        Ok(()) => None,
        Err(crate::sns::SnsError::TooOld) => Some(format!(
            "too old: Timestamp {} is more than max_age ({}) ago",
            envelope.timestamp,
            humantime::format_duration(config.sns.max_age)
        )),
        Err(e) => Some(e.to_string()),
    }
}

/// An SNS message (HTTP or Lambda shape), or alarm or EventBridge event JSON wrapped as if
/// SNS had sent it.
fn envelope_from(text: &str) -> Option<Envelope> {
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    let get = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string);
    if let (Some(message), Some(topic)) = (get("Message"), get("TopicArn")) {
        return Some(Envelope {
            message_id: get("MessageId").unwrap_or_default(),
            topic_arn: topic,
            subject: get("Subject"),
            message,
            timestamp: get("Timestamp").unwrap_or_default().into(),
            fallback_from: None,
        });
    }
    // A bare EventBridge event or alarm has no topic: as if it had been sent to a topic in
    // its own account and region.
    let wrapped = |region: &str, account: &str| Envelope {
        message_id: "route-test".into(),
        topic_arn: format!("arn:aws:sns:{region}:{account}:route-test"),
        subject: None,
        message: text.to_string(),
        timestamp: Default::default(),
        fallback_from: None,
    };
    if let Some((event, _)) = crate::model::parse_event(text) {
        let region = event.region.unwrap_or_else(|| "us-east-1".into());
        let account = event.account.unwrap_or_else(|| "000000000000".into());
        return Some(wrapped(&region, &account));
    }
    let alarm = crate::model::parse_alarm(&v.to_string())?;
    let region = alarm.arn.as_deref().and_then(|a| a.split(':').nth(3)).unwrap_or("us-east-1");
    Some(wrapped(region, alarm.account.as_deref().unwrap_or("000000000000")))
}
