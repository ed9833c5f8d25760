//! The CloudWatch alarm inside an SNS Message, when there is one. Parsing is lenient on
//! purpose: CloudWatch's JSON has grown fields over the years and some are null or of odd
//! types, and a surprising alarm must still reach Slack rather than be refused.

use compact_str::{CompactString, ToCompactString};
use serde::Deserialize;

/// Text of an alarm field: inline up to 24 bytes, which holds most of them (states,
/// account ids, namespaces, metric and dimension names, thresholds), so parsing an alarm
/// allocates for the long ones only (name, reason, description, ARN, time).
pub type Str = CompactString;

/// A CloudWatch alarm state change (metric, metric-math or composite alarm).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Alarm {
    pub name: Str,
    pub description: Option<Str>,
    pub account: Option<Str>,
    pub new_state: Str,
    pub old_state: Option<Str>,
    pub reason: Option<Str>,
    pub state_change_time: Option<Str>,
    /// CloudWatch's human region name ("US East (N. Virginia)").
    pub region_name: Option<Str>,
    pub arn: Option<Str>,
    pub trigger: Option<Trigger>,
    /// Composite alarms: the rule and the children that fired it.
    pub alarm_rule: Option<Str>,
    pub triggering_children: Vec<Str>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Trigger {
    pub metric_name: Option<Str>,
    pub namespace: Option<Str>,
    pub statistic: Option<Str>,
    pub comparison_operator: Option<Str>,
    pub threshold: Option<Str>,
    pub period: Option<u64>,
    pub evaluation_periods: Option<u64>,
    pub dimensions: Vec<(Str, Str)>,
    /// Metric math: one line per query (`m1: AWS/EC2 CPUUtilization`, `e1: m1*100`).
    pub metrics: Vec<String>,
}

/// The alarm inside an SNS Message, when the Message is CloudWatch alarm JSON.
///
/// A typed parse straight from the text: the alarm's strings are the only allocations
/// (a `serde_json::Value` tree cost ~100 allocations per alarm, the largest allocation
/// source under load). Every field is lenient exactly like the `Value` reading it
/// replaced (the tests hold both to the same answers): a scalar of any type is taken as
/// text, anything else is absent, an unknown field is ignored.
pub fn parse_alarm(message: &str) -> Option<Alarm> {
    let raw: RawAlarm = serde_json::from_str(message).ok()?;
    let trigger = raw.trigger.0.map(|t| Trigger {
        metric_name: t.metric_name.0,
        namespace: t.namespace.0,
        statistic: t.statistic.0.or(t.extended_statistic.0),
        comparison_operator: t.comparison_operator.0,
        threshold: t.threshold.0,
        period: t.period.0,
        evaluation_periods: t.evaluation_periods.0,
        dimensions: t
            .dimensions
            .0
            .into_iter()
            .filter_map(|d| Some((d.name.0.or(d.name_upper.0)?, d.value.0.or(d.value_upper.0).unwrap_or_default())))
            .collect(),
        metrics: t.metrics.0.into_iter().map(RawQuery::describe).collect(),
    });
    Some(Alarm {
        name: raw.name.0?,
        description: raw.description.0.filter(|d| !d.is_empty()),
        account: raw.account.0,
        new_state: raw.new_state.0?,
        old_state: raw.old_state.0,
        reason: raw.reason.0,
        state_change_time: raw.state_change_time.0,
        region_name: raw.region_name.0,
        arn: raw.arn.0,
        trigger,
        alarm_rule: raw.alarm_rule.0,
        triggering_children: raw.children.0.into_iter().filter_map(|c| c.arn.0).collect(),
    })
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawAlarm {
    #[serde(rename = "AlarmName")]
    name: Text,
    #[serde(rename = "AlarmDescription")]
    description: Text,
    #[serde(rename = "AWSAccountId")]
    account: Text,
    #[serde(rename = "NewStateValue")]
    new_state: Text,
    #[serde(rename = "OldStateValue")]
    old_state: Text,
    #[serde(rename = "NewStateReason")]
    reason: Text,
    #[serde(rename = "StateChangeTime")]
    state_change_time: Text,
    #[serde(rename = "Region")]
    region_name: Text,
    #[serde(rename = "AlarmArn")]
    arn: Text,
    #[serde(rename = "Trigger")]
    trigger: Object<RawTrigger>,
    #[serde(rename = "AlarmRule")]
    alarm_rule: Text,
    #[serde(rename = "TriggeringChildren")]
    children: List<RawChild>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "PascalCase")]
struct RawTrigger {
    metric_name: Text,
    namespace: Text,
    statistic: Text,
    extended_statistic: Text,
    comparison_operator: Text,
    threshold: Text,
    period: Count,
    evaluation_periods: Count,
    dimensions: List<RawDimension>,
    metrics: List<RawQuery>,
}

/// CloudWatch writes these keys in lower case; both spellings are accepted.
#[derive(Deserialize, Default)]
#[serde(default)]
struct RawDimension {
    name: Text,
    #[serde(rename = "Name")]
    name_upper: Text,
    value: Text,
    #[serde(rename = "Value")]
    value_upper: Text,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "PascalCase")]
struct RawQuery {
    id: Text,
    expression: Text,
    label: Text,
    metric_stat: Object<RawMetricStat>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "PascalCase")]
struct RawMetricStat {
    metric: Object<RawMetric>,
    stat: Text,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "PascalCase")]
struct RawMetric {
    namespace: Text,
    metric_name: Text,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "PascalCase")]
struct RawChild {
    arn: Text,
}

impl RawQuery {
    /// Metric math: one line per query (`m1: AWS/EC2 CPUUtilization`, `e1: m1*100`).
    fn describe(self) -> String {
        let id = self.id.0.unwrap_or_else(|| "?".into());
        if let Some(expr) = self.expression.0 {
            return match self.label.0 {
                Some(label) => format!("{id}: {expr} ({label})"),
                None => format!("{id}: {expr}"),
            };
        }
        let stat = self.metric_stat.0.unwrap_or_default();
        let metric = stat.metric.0.unwrap_or_default();
        let (ns, name) = (metric.namespace.0.unwrap_or_default(), metric.metric_name.0.unwrap_or_default());
        format!("{id}: {ns} {name} {}", stat.stat.0.unwrap_or_default()).trim_end().to_string()
    }
}

/// A JSON scalar as text (numbers as serde_json prints them); null, objects and arrays are
/// absent.
#[derive(Default)]
struct Text(Option<Str>);

/// A whole number, also when sent as a string; anything else is absent.
#[derive(Default)]
struct Count(Option<u64>);

/// An object read as `T`; any other JSON type is absent.
struct Object<T>(Option<T>);

/// The objects of an array, each read as `T` (other elements skipped); a non-array is empty.
struct List<T>(Vec<T>);

impl<T> Default for Object<T> {
    fn default() -> Self {
        Object(None)
    }
}

impl<T> Default for List<T> {
    fn default() -> Self {
        List(Vec::new())
    }
}

/// Visits any JSON value: scalars go to `scalar`, objects to `object`, the rest is skipped.
/// `Out::default()` stands for "absent".
macro_rules! lenient_visitor {
    ($name:ident <$($g:ident),*>, $out:ty, expecting: $exp:literal,
     scalar: |$sv:ident| $scalar:expr, object: |$map:ident| $object:expr, seq: |$seq:ident| $seqexpr:expr) => {
        struct $name<$($g),*>(std::marker::PhantomData<($($g,)*)>);
        impl<'de, $($g: serde::Deserialize<'de> + Default),*> serde::de::Visitor<'de> for $name<$($g),*> {
            type Value = $out;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str($exp)
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<$out, E> {
                let $sv = Scalar::Str(v);
                Ok($scalar)
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<$out, E> {
                let $sv = Scalar::Bool(v);
                Ok($scalar)
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<$out, E> {
                let $sv = Scalar::U64(v);
                Ok($scalar)
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<$out, E> {
                let $sv = Scalar::I64(v);
                Ok($scalar)
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<$out, E> {
                let $sv = Scalar::F64(v);
                Ok($scalar)
            }
            fn visit_unit<E: serde::de::Error>(self) -> Result<$out, E> {
                Ok(Default::default())
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, $map: A) -> Result<$out, A::Error> {
                $object
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, $seq: A) -> Result<$out, A::Error> {
                $seqexpr
            }
        }
    };
}

enum Scalar<'a> {
    Str(&'a str),
    Bool(bool),
    U64(u64),
    I64(i64),
    F64(f64),
}

fn skip_map<'de, A: serde::de::MapAccess<'de>>(mut map: A) -> Result<(), A::Error> {
    while map.next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?.is_some() {}
    Ok(())
}

fn skip_seq<'de, A: serde::de::SeqAccess<'de>>(mut seq: A) -> Result<(), A::Error> {
    while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
    Ok(())
}

lenient_visitor!(TextVisitor<>, Text, expecting: "any JSON value",
    scalar: |v| Text(Some(match v {
        Scalar::Str(s) => Str::new(s),
        Scalar::Bool(b) => Str::const_new(if b { "true" } else { "false" }),
        Scalar::U64(n) => n.to_compact_string(),
        Scalar::I64(n) => n.to_compact_string(),
        // serde_json's own formatting (90.0 stays "90.0").
        Scalar::F64(f) => serde_json::Number::from_f64(f).map(|n| n.to_compact_string()).unwrap_or_default(),
    })),
    object: |map| skip_map(map).map(|_| Text(None)),
    seq: |seq| skip_seq(seq).map(|_| Text(None)));

lenient_visitor!(CountVisitor<>, Count, expecting: "any JSON value",
    scalar: |v| Count(match v {
        Scalar::Str(s) => s.parse().ok(),
        Scalar::U64(n) => Some(n),
        Scalar::I64(n) => u64::try_from(n).ok(),
        _ => None,
    }),
    object: |map| skip_map(map).map(|_| Count(None)),
    seq: |seq| skip_seq(seq).map(|_| Count(None)));

lenient_visitor!(ObjectVisitor<T>, Object<T>, expecting: "any JSON value",
    scalar: |_v| Object(None),
    object: |map| T::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(|t| Object(Some(t))),
    seq: |seq| skip_seq(seq).map(|_| Object(None)));

lenient_visitor!(ListVisitor<T>, List<T>, expecting: "any JSON value",
scalar: |_v| List(Vec::new()),
object: |map| skip_map(map).map(|_| List(Vec::new())),
seq: |seq| {
    let mut seq = seq;
    let mut out = Vec::new();
    while let Some(item) = seq.next_element::<Object<T>>()? {
        out.extend(item.0);
    }
    Ok(List(out))
});

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(TextVisitor(std::marker::PhantomData))
    }
}

impl<'de> Deserialize<'de> for Count {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(CountVisitor(std::marker::PhantomData))
    }
}

impl<'de, T: Deserialize<'de> + Default> Deserialize<'de> for Object<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ObjectVisitor(std::marker::PhantomData))
    }
}

impl<'de, T: Deserialize<'de> + Default> Deserialize<'de> for List<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ListVisitor(std::marker::PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Envelope, Notification};
    use serde_json::Value;

    /// The `Value`-based reading the typed parser replaced, kept as the oracle it must match.
    mod oracle {
        use super::super::*;
        use serde_json::Value;

        fn string(v: &Value, key: &str) -> Option<Str> {
            match v.get(key)? {
                Value::String(s) => Some(Str::from(s.as_str())),
                Value::Number(n) => Some(n.to_string().into()),
                Value::Bool(b) => Some(b.to_string().into()),
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

        fn dimensions(v: Option<&Value>) -> Vec<(Str, Str)> {
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
    }

    fn envelope(message: &str) -> Envelope {
        Envelope {
            message_id: "m".into(),
            topic_arn: "arn:aws:sns:eu-west-1:111122223333:alarms".into(),
            subject: None,
            message: message.into(),
            timestamp: "2024-01-01T00:00:00Z".into(),
            fallback_from: None,
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
        assert_eq!(t.dimensions, vec![("ApiName".into(), "api".into())]);
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

    /// Every alarm message we have, and every field of it (nested too) replaced by every
    /// JSON type: the typed parser must read each exactly as the `Value` oracle does.
    #[test]
    fn typed_parse_matches_the_value_reading_on_every_type_of_every_field() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut messages = vec![std::fs::read_to_string(root.join("examples/cloudwatch-alarm.json")).unwrap()];
        let dir = std::fs::read_dir(root.join("tests/fixtures/sns-real")).unwrap();
        for e in dir.flatten().filter(|e| e.file_name().to_string_lossy().starts_with("cloudwatch")) {
            let Ok(text) = std::fs::read_to_string(e.path()) else { continue };
            let Ok(v) = serde_json::from_str::<Value>(&text) else { continue };
            messages.extend(v.get("Message").and_then(|m| m.as_str()).map(str::to_string));
        }
        assert!(messages.len() >= 5, "the real CloudWatch fixtures were not read");
        let replacements = [
            serde_json::json!(null),
            serde_json::json!(7),
            serde_json::json!(-7),
            serde_json::json!(90.0),
            serde_json::json!(0.25),
            serde_json::json!(true),
            serde_json::json!("text"),
            serde_json::json!("12"),
            serde_json::json!({"name": "n", "Value": 3, "Arn": "a", "Id": "i", "Expression": "e"}),
            serde_json::json!([1, "x", {"name": "n", "value": "v", "Arn": "arn", "Id": "q"}]),
        ];
        let mut checked = 0;
        for message in &messages {
            let v: Value = serde_json::from_str(message).unwrap();
            if oracle::parse_alarm_value(&v).is_none() {
                continue;
            }
            let mut variants = vec![v.clone()];
            mutate(&v, &mut Vec::new(), &replacements, &mut variants);
            for doc in variants {
                let text = doc.to_string();
                assert_eq!(parse_alarm(&text), oracle::parse_alarm_value(&doc), "differs on {text}");
                checked += 1;
            }
        }
        assert!(checked > 500, "only {checked} variants checked");
    }

    /// Adds one variant per (object key or array element, replacement) anywhere in `v`.
    fn mutate(v: &Value, path: &mut Vec<Value>, with: &[Value], out: &mut Vec<Value>) {
        fn set(doc: &mut Value, path: &[Value], new: Value) {
            let mut at = doc;
            for step in path {
                at = match step {
                    Value::String(k) => &mut at[k.as_str()],
                    Value::Number(i) => &mut at[i.as_u64().unwrap() as usize],
                    _ => unreachable!(),
                };
            }
            *at = new;
        }
        let children: Vec<(Value, &Value)> = match v {
            Value::Object(m) => m.iter().map(|(k, c)| (Value::from(k.as_str()), c)).collect(),
            Value::Array(a) => a.iter().enumerate().map(|(i, c)| (Value::from(i), c)).collect(),
            _ => return,
        };
        for (step, child) in children {
            path.push(step);
            for r in with {
                let mut doc = out[0].clone();
                set(&mut doc, path, r.clone());
                out.push(doc);
            }
            mutate(child, path, with, out);
            path.pop();
        }
    }
}
