//! Severity: ops' ordered rules that pull a severity word out of a named field. The first
//! rule whose regex matches wins and its first capture, lower-cased, is the severity.

use crate::model::{Notification, Str};

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

    /// Whether some rule or the default can classify a notification as `severity`
    /// (lower case). A rule can when its first capture group can match the word in some
    /// letter case (it is lower-cased after capture). Used by `check` to warn about routes
    /// that name a severity nothing produces.
    pub fn can_produce(&self, severity: &str) -> bool {
        self.default == severity || self.rules.iter().any(|r| capture_can_be(r.regex.as_str(), severity))
    }

    /// The severity word (inline, no allocation when 24 bytes or shorter: every word
    /// anyone uses).
    pub fn classify(&self, n: &Notification) -> Str {
        for rule in &self.rules {
            if let Some(caps) = rule.field.value(n).and_then(|v| rule.regex.captures(v)) {
                if let Some(m) = caps.get(1) {
                    return m.as_str().to_lowercase().into();
                }
            }
        }
        Str::from(self.default.as_str())
    }
}

/// Whether the first capture group of `pattern` can match exactly `word`, ignoring case.
/// Unparsable patterns answer yes: `check` reports them on their own.
fn capture_can_be(pattern: &str, word: &str) -> bool {
    fn first_capture(h: &regex_syntax::hir::Hir) -> Option<&regex_syntax::hir::Hir> {
        use regex_syntax::hir::HirKind;
        match h.kind() {
            HirKind::Capture(c) if c.index == 1 => Some(&c.sub),
            HirKind::Capture(c) => first_capture(&c.sub),
            HirKind::Repetition(r) => first_capture(&r.sub),
            HirKind::Concat(hs) | HirKind::Alternation(hs) => hs.iter().find_map(first_capture),
            _ => None,
        }
    }
    let Ok(hir) = regex_syntax::parse(pattern) else { return true };
    let Some(group) = first_capture(&hir) else { return true };
    match regex::Regex::new(&format!("(?i)^(?:{group})$")) {
        Ok(re) => re.is_match(word),
        Err(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn which_severities_a_rule_can_produce() {
        assert!(capture_can_be(r"(?i)severity\s*[:=]\s*(\w+)", "critical"));
        assert!(capture_can_be("-(critical|warning|info)$", "critical"));
        assert!(capture_can_be("-(CRITICAL|WARNING)$", "warning"));
        assert!(!capture_can_be("-(critical|warning|info)$", "page"));
        assert!(!capture_can_be(r"(?:x)(\d+)", "critical"));
        let rules = SeverityRules::new(
            "warning".into(),
            vec![SeverityRule { field: SeverityField::AlarmName, regex: regex::Regex::new("-(crit|info)$").unwrap() }],
        );
        assert!(rules.can_produce("warning") && rules.can_produce("crit") && !rules.can_produce("critical"));
    }
}
