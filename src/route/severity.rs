//! Severity: ops' ordered rules that pull a severity word out of a named field. The first
//! rule whose regex matches wins and its first capture, lower-cased, is the severity.

use super::alarm::Notification;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeverityField {
    AlarmName,
    AlarmDescription,
    NewStateReason,
    Subject,
    Message,
    Topic,
}

impl SeverityField {
    pub const NAMES: [&'static str; 6] =
        ["alarm_name", "alarm_description", "new_state_reason", "subject", "message", "topic"];

    pub fn parse(s: &str) -> Option<SeverityField> {
        Some(match s {
            "alarm_name" => SeverityField::AlarmName,
            "alarm_description" => SeverityField::AlarmDescription,
            "new_state_reason" => SeverityField::NewStateReason,
            "subject" => SeverityField::Subject,
            "message" => SeverityField::Message,
            "topic" => SeverityField::Topic,
            _ => return None,
        })
    }

    fn value<'n>(&self, n: &'n Notification) -> Option<&'n str> {
        let alarm = n.alarm.as_ref();
        match self {
            SeverityField::AlarmName => alarm.map(|a| a.name.as_str()),
            SeverityField::AlarmDescription => alarm.and_then(|a| a.description.as_deref()),
            SeverityField::NewStateReason => alarm.and_then(|a| a.reason.as_deref()),
            SeverityField::Subject => n.envelope.subject.as_deref(),
            SeverityField::Message => Some(&n.envelope.message),
            SeverityField::Topic => Some(&n.envelope.topic_arn),
        }
    }
}

#[derive(Debug, Clone)]
pub struct SeverityRule {
    pub field: SeverityField,
    pub regex: regex::Regex,
}

#[derive(Debug, Clone)]
pub struct SeverityRules {
    default: String,
    rules: Vec<SeverityRule>,
}

impl SeverityRules {
    pub fn new(default: String, rules: Vec<SeverityRule>) -> SeverityRules {
        SeverityRules { default, rules }
    }

    pub fn classify(&self, n: &Notification) -> String {
        for rule in &self.rules {
            if let Some(caps) = rule.field.value(n).and_then(|v| rule.regex.captures(v)) {
                if let Some(m) = caps.get(1) {
                    return m.as_str().to_lowercase();
                }
            }
        }
        self.default.clone()
    }
}
