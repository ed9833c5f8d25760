//! EventBridge events that arrive through SNS (the usual cross-account and
//! organisation-wide setup: an EventBridge rule targets the topic). A "CloudWatch Alarm
//! State Change" event is an alarm like a classic CloudWatch notification; other events
//! (AWS Health, GuardDuty, Backup, anything) keep their envelope (source, detail-type,
//! account, region, resources) and the few fields of their detail that say what happened,
//! so they render readably and routes can match `source` and `detail_type`.
//!
//! Shapes follow AWS's documented examples; every field is optional here, and a field of an
//! unexpected type is left out rather than refusing the event.

use serde_json::Value;

use super::alarm::{Alarm, Str, Trigger};

/// The envelope of an EventBridge event and its key fields.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AwsEvent {
    pub source: String,
    pub detail_type: String,
    pub account: Option<String>,
    pub region: Option<String>,
    pub time: Option<String>,
    pub resources: Vec<String>,
    /// One line saying what happened (a finding's title, a Health event's type code).
    pub title: Option<String>,
    /// Labelled fields worth a glance, in display order.
    pub fields: Vec<(String, String)>,
}

/// The EventBridge event in an SNS Message, if it is one, and the alarm inside it when it
/// is a CloudWatch alarm state change.
pub fn parse_event(message: &str) -> Option<(AwsEvent, Option<Alarm>)> {
    // Cheap test first: most Messages are classic alarms or plain text.
    if !message.contains("\"detail-type\"") {
        return None;
    }
    let v: Value = serde_json::from_str(message).ok()?;
    let text = |v: &Value, k: &str| -> Option<String> {
        match v.get(k)? {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    };
    let detail = v.get("detail").filter(|d| d.is_object())?;
    let mut event = AwsEvent {
        source: text(&v, "source")?,
        detail_type: text(&v, "detail-type")?,
        account: text(&v, "account"),
        region: text(&v, "region"),
        time: text(&v, "time"),
        resources: v
            .get("resources")
            .and_then(Value::as_array)
            .map(|r| r.iter().filter_map(|x| x.as_str().map(str::to_string)).collect())
            .unwrap_or_default(),
        title: None,
        fields: Vec::new(),
    };
    let mut field = |label: &str, value: Option<String>| {
        if let Some(value) = value.filter(|s| !s.is_empty()) {
            event.fields.push((label.to_string(), value));
        }
    };
    let alarm = match (event.source.as_str(), event.detail_type.as_str()) {
        ("aws.cloudwatch", "CloudWatch Alarm State Change") => {
            let alarm = alarm_from(&event, detail);
            return Some((event, alarm));
        }
        ("aws.guardduty", _) => {
            field("Finding type", text(detail, "type"));
            field("Severity", text(detail, "severity"));
            field("Resource", detail.get("resource").and_then(|r| text(r, "resourceType")));
            field("Description", text(detail, "description"));
            event.title = text(detail, "title");
            None
        }
        ("aws.health", _) => {
            field("Service", text(detail, "service"));
            field("Category", text(detail, "eventTypeCategory"));
            field("Status", text(detail, "statusCode"));
            field("Start", text(detail, "startTime"));
            let description = detail
                .get("eventDescription")
                .and_then(Value::as_array)
                .and_then(|d| d.first())
                .and_then(|d| text(d, "latestDescription"));
            field("Description", description);
            let affected: Vec<String> = detail
                .get("affectedEntities")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(|e| text(e, "entityValue")).collect())
                .unwrap_or_default();
            field("Affected", (!affected.is_empty()).then(|| affected.join(", ")));
            event.title = text(detail, "eventTypeCode");
            None
        }
        ("aws.backup", _) => {
            field("State", text(detail, "state"));
            field("Resource type", text(detail, "resourceType"));
            field("Resource", text(detail, "resourceArn"));
            field("Vault", text(detail, "backupVaultName"));
            field("Status message", text(detail, "statusMessage"));
            event.title = text(detail, "state").map(|s| format!("{} {s}", event.detail_type));
            None
        }
        _ => {
            // Unknown sources: the scalar fields of the detail, a few, never a raw dump.
            if let Some(obj) = detail.as_object() {
                for (k, _) in obj.iter().filter(|(_, v)| !v.is_object() && !v.is_array()).take(8) {
                    field(k, text(detail, k));
                }
            }
            None
        }
    };
    Some((event, alarm))
}

/// The alarm in a "CloudWatch Alarm State Change" event (metric or composite alarm). Its
/// account and region are the event's own, not the topic's.
fn alarm_from(event: &AwsEvent, detail: &Value) -> Option<Alarm> {
    let s = |v: Option<&Value>, k: &str| v.and_then(|v| v.get(k)).and_then(|x| x.as_str()).map(Str::from);
    let state = detail.get("state");
    let previous = detail.get("previousState");
    let configuration = detail.get("configuration");
    let metrics: Vec<&Value> = configuration
        .and_then(|c| c.get("metrics"))
        .and_then(Value::as_array)
        .map(|m| m.iter().collect())
        .unwrap_or_default();
    let trigger = match metrics.as_slice() {
        [] => None,
        [one] if one.get("metricStat").is_some() => {
            let stat = one.get("metricStat");
            let metric = stat.and_then(|m| m.get("metric"));
            Some(Trigger {
                metric_name: s(metric, "name"),
                namespace: s(metric, "namespace"),
                statistic: s(stat, "stat"),
                period: stat.and_then(|m| m.get("period")).and_then(Value::as_u64),
                dimensions: metric
                    .and_then(|m| m.get("dimensions"))
                    .and_then(Value::as_object)
                    .map(|d| {
                        d.iter()
                            .map(|(k, v)| (Str::from(k.as_str()), Str::from(v.as_str().unwrap_or_default())))
                            .collect()
                    })
                    .unwrap_or_default(),
                ..Trigger::default()
            })
        }
        many => Some(Trigger {
            metrics: many
                .iter()
                .map(|m| {
                    let id = s(Some(m), "id").unwrap_or_else(|| "?".into());
                    match s(Some(m), "expression") {
                        Some(e) => format!("{id}: {e}"),
                        None => {
                            let stat = m.get("metricStat");
                            let metric = stat.and_then(|x| x.get("metric"));
                            let ns = s(metric, "namespace").unwrap_or_default();
                            let name = s(metric, "name").unwrap_or_default();
                            format!("{id}: {ns} {name} {}", s(stat, "stat").unwrap_or_default()).trim_end().to_string()
                        }
                    }
                })
                .collect(),
            ..Trigger::default()
        }),
    };
    Some(Alarm {
        name: s(Some(detail), "alarmName")?,
        description: s(configuration, "description").filter(|d| !d.is_empty()),
        account: event.account.as_deref().map(Str::from),
        new_state: s(state, "value")?,
        old_state: s(previous, "value"),
        reason: s(state, "reason"),
        state_change_time: s(state, "timestamp").or_else(|| event.time.as_deref().map(Str::from)),
        region_name: None,
        arn: event.resources.iter().find(|r| r.contains(":alarm:")).map(|r| Str::from(r.as_str())),
        trigger,
        alarm_rule: s(configuration, "alarmRule"),
        triggering_children: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Envelope, Notification};

    fn sample(name: &str) -> Notification {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/eventbridge").join(name);
        Notification::from_envelope(Envelope {
            message_id: "m".into(),
            // A topic in another account and region: the event's own must win.
            topic_arn: "arn:aws:sns:us-east-1:111111111111:org-events".into(),
            subject: None,
            message: std::fs::read_to_string(path).unwrap(),
            timestamp: Default::default(),
            fallback_from: None,
        })
    }

    #[test]
    fn a_metric_alarm_state_change_is_an_alarm_of_its_own_account_and_region() {
        let n = sample("cloudwatch-metric-alarm.json");
        let a = n.alarm.as_ref().expect("an alarm");
        assert_eq!(
            (a.name.as_str(), a.new_state.as_str(), a.old_state.as_deref()),
            ("prod-api-cpu-critical", "ALARM", Some("OK"))
        );
        assert_eq!((n.account.as_deref(), n.region.as_deref()), (Some("210987654321"), Some("eu-west-1")));
        assert!(a.reason.as_deref().unwrap().starts_with("Threshold Crossed: 2 out of the last 2"));
        assert_eq!(a.description.as_deref(), Some("API fleet CPU above 90% for 10 minutes"));
        let t = a.trigger.as_ref().unwrap();
        assert_eq!(
            (t.metric_name.as_deref(), t.namespace.as_deref(), t.period),
            (Some("CPUUtilization"), Some("AWS/EC2"), Some(300))
        );
        assert_eq!(t.dimensions, vec![("AutoScalingGroupName".into(), "prod-api".into())]);
        assert_eq!(a.arn.as_deref(), Some("arn:aws:cloudwatch:eu-west-1:210987654321:alarm:prod-api-cpu-critical"));
        assert_eq!(n.event.as_ref().unwrap().source, "aws.cloudwatch");
    }

    #[test]
    fn a_composite_alarm_keeps_its_rule() {
        let n = sample("cloudwatch-composite-alarm.json");
        let a = n.alarm.as_ref().unwrap();
        assert_eq!(a.alarm_rule.as_deref(), Some("ALARM(prod-checkout-5xx) OR ALARM(prod-checkout-latency)"));
        assert_eq!(n.region.as_deref(), Some("us-east-1"));
    }

    #[test]
    fn guardduty_health_and_backup_events_keep_their_key_fields() {
        let g = sample("guardduty-finding.json");
        assert!(g.alarm.is_none());
        let e = g.event.as_ref().unwrap();
        assert_eq!((e.source.as_str(), e.detail_type.as_str()), ("aws.guardduty", "GuardDuty Finding"));
        assert!(e.title.as_deref().unwrap().contains("SSH brute force"));
        assert!(e.fields.contains(&("Finding type".into(), "UnauthorizedAccess:EC2/SSHBruteForce".into())));
        assert!(e.fields.contains(&("Severity".into(), "5".into())));
        assert_eq!(g.account.as_deref(), Some("210987654321"));

        let h = sample("health-event.json");
        let e = h.event.as_ref().unwrap();
        assert_eq!(e.title.as_deref(), Some("AWS_EC2_OPERATIONAL_ISSUE"));
        assert!(e.fields.contains(&("Status".into(), "open".into())));
        assert!(e.fields.iter().any(|(l, v)| l == "Description" && v.contains("increased API error rates")));
        assert_eq!(h.region.as_deref(), Some("us-west-2"));

        let b = sample("backup-job-failed.json");
        let e = b.event.as_ref().unwrap();
        assert_eq!(e.title.as_deref(), Some("Backup Job State Change FAILED"));
        assert!(e.fields.contains(&("Vault".into(), "Default".into())));
        assert_eq!(e.resources, vec!["arn:aws:ec2:eu-west-1::volume/vol-0123456789abcdef0".to_string()]);
    }

    #[test]
    fn plain_text_and_classic_alarms_are_not_events() {
        assert!(parse_event("hello").is_none());
        assert!(parse_event(r#"{"detail-type": "x"}"#).is_none(), "no source and no detail");
        assert!(parse_event(r#"{"AlarmName": "a", "NewStateValue": "OK"}"#).is_none());
    }
}
