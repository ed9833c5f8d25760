//! The notification model: what a verified SNS Notification says, and the CloudWatch alarm
//! inside it when there is one. Parsing is lenient on purpose: CloudWatch's JSON has grown
//! fields over the years and some are null or of odd types, and a surprising alarm must
//! still reach Slack rather than be refused.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::sns::TopicArn;

/// What the gateway keeps of an accepted SNS Notification (everything delivery needs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub message_id: String,
    pub topic_arn: String,
    pub subject: Option<String>,
    pub message: String,
    pub timestamp: String,
}

/// A notification as routing and formatting see it.
#[derive(Debug, Clone)]
pub struct Notification {
    pub envelope: Envelope,
    pub alarm: Option<Alarm>,
    /// Region code (`us-east-1`), from the alarm ARN or else the topic ARN.
    pub region: Option<String>,
    pub account: Option<String>,
    /// Partition of the topic (`aws`, `aws-cn`, ...), for console links.
    pub partition: String,
}

/// A CloudWatch alarm state change (metric, metric-math or composite alarm).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Alarm {
    pub name: String,
    pub description: Option<String>,
    pub account: Option<String>,
    pub new_state: String,
    pub old_state: Option<String>,
    pub reason: Option<String>,
    pub state_change_time: Option<String>,
    /// CloudWatch's human region name ("US East (N. Virginia)").
    pub region_name: Option<String>,
    pub arn: Option<String>,
    pub trigger: Option<Trigger>,
    /// Composite alarms: the rule and the children that fired it.
    pub alarm_rule: Option<String>,
    pub triggering_children: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Trigger {
    pub metric_name: Option<String>,
    pub namespace: Option<String>,
    pub statistic: Option<String>,
    pub comparison_operator: Option<String>,
    pub threshold: Option<String>,
    pub period: Option<u64>,
    pub evaluation_periods: Option<u64>,
    pub dimensions: Vec<(String, String)>,
    /// Metric math: one line per query (`m1: AWS/EC2 CPUUtilization`, `e1: m1*100`).
    pub metrics: Vec<String>,
}

impl Notification {
    pub fn from_envelope(envelope: Envelope) -> Notification {
        let alarm = parse_alarm(&envelope.message);
        let topic = TopicArn::parse(&envelope.topic_arn);
        let alarm_arn_region = alarm
            .as_ref()
            .and_then(|a| a.arn.as_deref())
            .and_then(|arn| arn.split(':').nth(3))
            .filter(|r| !r.is_empty())
            .map(str::to_string);
        let region = alarm_arn_region.or_else(|| topic.as_ref().map(|t| t.region.to_string()));
        let account = alarm
            .as_ref()
            .and_then(|a| a.account.clone())
            .or_else(|| topic.as_ref().map(|t| t.account.to_string()))
            .filter(|a| !a.is_empty());
        let partition = topic.as_ref().map(|t| t.partition.to_string()).unwrap_or_else(|| "aws".into());
        Notification { envelope, alarm, region, account, partition }
    }

    pub fn state(&self) -> Option<&str> {
        self.alarm.as_ref().map(|a| a.new_state.as_str())
    }
}

fn string(v: &Value, key: &str) -> Option<String> {
    match v.get(key)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn number(v: &Value, key: &str) -> Option<u64> {
    match v.get(key)? {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

fn dimensions(v: Option<&Value>) -> Vec<(String, String)> {
    let Some(Value::Array(items)) = v else { return Vec::new() };
    items
        .iter()
        .filter_map(|d| {
            // CloudWatch writes these keys in lower case; accept both spellings.
            let name = string(d, "name").or_else(|| string(d, "Name"))?;
            let value = string(d, "value").or_else(|| string(d, "Value")).unwrap_or_default();
            Some((name, value))
        })
        .collect()
}

fn metric_queries(v: Option<&Value>) -> Vec<String> {
    let Some(Value::Array(items)) = v else { return Vec::new() };
    items
        .iter()
        .map(|q| {
            let id = string(q, "Id").unwrap_or_else(|| "?".into());
            if let Some(expr) = string(q, "Expression") {
                match string(q, "Label") {
                    Some(label) => format!("{id}: {expr} ({label})"),
                    None => format!("{id}: {expr}"),
                }
            } else {
                let stat = q.get("MetricStat");
                let metric = stat.and_then(|s| s.get("Metric"));
                let ns = metric.and_then(|m| string(m, "Namespace")).unwrap_or_default();
                let name = metric.and_then(|m| string(m, "MetricName")).unwrap_or_default();
                let st = stat.and_then(|s| string(s, "Stat")).unwrap_or_default();
                format!("{id}: {ns} {name} {st}").trim_end().to_string()
            }
        })
        .collect()
}

/// The alarm inside an SNS Message, when the Message is CloudWatch alarm JSON.
pub fn parse_alarm(message: &str) -> Option<Alarm> {
    let v: Value = serde_json::from_str(message).ok()?;
    parse_alarm_value(&v)
}

pub fn parse_alarm_value(v: &Value) -> Option<Alarm> {
    let name = string(v, "AlarmName")?;
    let new_state = string(v, "NewStateValue")?;
    let trigger = v.get("Trigger").filter(|t| t.is_object()).map(|t| Trigger {
        metric_name: string(t, "MetricName"),
        namespace: string(t, "Namespace"),
        statistic: string(t, "Statistic").or_else(|| string(t, "ExtendedStatistic")),
        comparison_operator: string(t, "ComparisonOperator"),
        threshold: string(t, "Threshold"),
        period: number(t, "Period"),
        evaluation_periods: number(t, "EvaluationPeriods"),
        dimensions: dimensions(t.get("Dimensions")),
        metrics: metric_queries(t.get("Metrics")),
    });
    let triggering_children = match v.get("TriggeringChildren") {
        Some(Value::Array(items)) => items.iter().filter_map(|c| string(c, "Arn")).collect(),
        _ => Vec::new(),
    };
    Some(Alarm {
        name,
        description: string(v, "AlarmDescription").filter(|d| !d.is_empty()),
        account: string(v, "AWSAccountId"),
        new_state,
        old_state: string(v, "OldStateValue"),
        reason: string(v, "NewStateReason"),
        state_change_time: string(v, "StateChangeTime"),
        region_name: string(v, "Region"),
        arn: string(v, "AlarmArn"),
        trigger,
        alarm_rule: string(v, "AlarmRule"),
        triggering_children,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(message: &str) -> Envelope {
        Envelope {
            message_id: "m".into(),
            topic_arn: "arn:aws:sns:eu-west-1:111122223333:alarms".into(),
            subject: None,
            message: message.into(),
            timestamp: "2024-01-01T00:00:00Z".into(),
        }
    }

    #[test]
    fn metric_alarm() {
        let msg = serde_json::json!({
            "AlarmName": "prod-api-5xx-critical", "AlarmDescription": null, "AWSAccountId": "123456789012",
            "NewStateValue": "ALARM", "OldStateValue": "OK", "NewStateReason": "Threshold Crossed",
            "StateChangeTime": "2024-01-01T00:00:00.000+0000", "Region": "US East (N. Virginia)",
            "AlarmArn": "arn:aws:cloudwatch:us-east-1:123456789012:alarm:prod-api-5xx-critical",
            "Trigger": {"MetricName": "5XXError", "Namespace": "AWS/ApiGateway", "Statistic": "SUM",
                "Dimensions": [{"value": "api", "name": "ApiName"}], "Period": 60, "EvaluationPeriods": 1,
                "ComparisonOperator": "GreaterThanThreshold", "Threshold": 5.0, "Unit": null},
            "SomethingNew": {"x": 1}
        });
        let n = Notification::from_envelope(envelope(&msg.to_string()));
        let a = n.alarm.as_ref().unwrap();
        assert_eq!(a.name, "prod-api-5xx-critical");
        assert_eq!(a.description, None);
        assert_eq!(n.state(), Some("ALARM"));
        assert_eq!(n.region.as_deref(), Some("us-east-1"), "alarm ARN region wins over topic");
        assert_eq!(n.account.as_deref(), Some("123456789012"));
        let t = a.trigger.as_ref().unwrap();
        assert_eq!(t.threshold.as_deref(), Some("5.0"));
        assert_eq!(t.dimensions, vec![("ApiName".to_string(), "api".to_string())]);
    }

    #[test]
    fn metric_math_and_composite() {
        let math = serde_json::json!({"AlarmName": "m", "NewStateValue": "INSUFFICIENT_DATA",
            "Trigger": {"Metrics": [
                {"Id": "m1", "MetricStat": {"Metric": {"Namespace": "AWS/EC2", "MetricName": "CPUUtilization"}, "Stat": "Average"}},
                {"Id": "e1", "Expression": "m1*100", "Label": "pct"}]}});
        let a = parse_alarm(&math.to_string()).unwrap();
        assert_eq!(a.trigger.unwrap().metrics, vec!["m1: AWS/EC2 CPUUtilization Average", "e1: m1*100 (pct)"]);
        let composite = serde_json::json!({"AlarmName": "c", "NewStateValue": "OK", "AlarmRule": "ALARM(a) OR ALARM(b)",
            "TriggeringChildren": [{"Arn": "arn:aws:cloudwatch:us-east-1:1:alarm:a", "State": {"Value": "ALARM"}}]});
        let a = parse_alarm(&composite.to_string()).unwrap();
        assert_eq!(a.alarm_rule.as_deref(), Some("ALARM(a) OR ALARM(b)"));
        assert_eq!(a.triggering_children.len(), 1);
    }

    #[test]
    fn non_alarm_messages() {
        let n = Notification::from_envelope(envelope("plain text"));
        assert!(n.alarm.is_none());
        assert_eq!(n.region.as_deref(), Some("eu-west-1"));
        assert_eq!(n.account.as_deref(), Some("111122223333"));
        assert!(parse_alarm(r#"{"AlarmName": 5}"#).is_none());
        assert!(parse_alarm(r#"{"notificationType": "Bounce"}"#).is_none());
    }
}
