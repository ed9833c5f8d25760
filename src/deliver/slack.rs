//! Slack incoming webhooks: the sink, which answers mean what, and what Slack receives.
//! A top-level `text` (what mobile notifications show: alarm name and
//! the state word as CloudWatch spells it) and one attachment coloured by state holding
//! Block Kit blocks. Every string is escaped for Slack (`&`, `<`, `>`) and cut to Block
//! Kit's limits on a character boundary: a long alarm is shortened, never refused.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use serde_json::Value;

pub use super::history::History;
use super::sink::{Answer, Item, Sink, Verdict};
use crate::config::Destination;
use crate::model::{truncate, Alarm, Notification, Prepared};
use crate::outbound::{Outbound, PostError, Response};

/// Block Kit limits we stay inside.
pub const MAX_SECTION: usize = 3000;
pub const MAX_FIELD: usize = 2000;
pub const MAX_HEADER: usize = 150;
pub const MAX_BLOCKS: usize = 50;
pub const MAX_FIELDS: usize = 10;
/// Top-level `text` is allowed far more, but it is a notification line: keep it short.
pub const MAX_TEXT: usize = 3000;

/// Per-destination choices that change the message.
#[derive(Debug, Clone, Default)]
pub struct Style {
    /// `<!here>` or `<!channel>` before the text, chosen by severity.
    pub mention: Option<&'static str>,
}

const LATE_TEXT: &str = ":hourglass: Late: ";
const LATE_NOTE: &str = " _(arrived late: a newer state change of this alarm was already posted)_";

/// A rendered Slack message (the JSON body) and notes on what had to be cut.
#[derive(Debug, Clone)]
pub struct Rendered {
    pub body: Vec<u8>,
    pub truncated: Vec<String>,
}

impl Rendered {
    /// The message as a JSON value (the Web API sink adds its channel and thread to it).
    pub fn payload(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

/// When Slack sends 429 without Retry-After.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);

/// The incoming-webhook sink: one JSON POST to the destination's URL.
pub struct Webhook {
    outbound: Outbound,
    /// Per post: a webhook that has not answered by then is retried.
    timeout: Duration,
}

impl Webhook {
    pub fn new(outbound: Outbound, timeout: Duration) -> Webhook {
        Webhook { outbound, timeout }
    }
}

#[async_trait]
impl Sink for Webhook {
    async fn send(&self, dest: &Destination, items: &[Item]) -> Answer {
        let rendered = match items {
            [one] => {
                let p = &one.prepared;
                render(&p.notification, &p.severity, &style(dest, &p.notification, &p.severity), one.history)
            }
            _ => {
                let digest: Vec<_> = items.iter().map(|i| (i.prepared.clone(), i.history)).collect();
                render_digest(&digest)
            }
        };
        let body = Bytes::from(rendered.body);
        judge(&self.outbound.post_json(dest.url.expose(), body, self.timeout).await)
    }
}

/// Slack answers that mean the webhook itself is gone, not this message.
fn webhook_gone(a: &Response) -> bool {
    let body = a.body.trim();
    matches!(
        (a.status, body),
        (404, "no_service" | "channel_not_found" | "no_team")
            | (410, "channel_is_archived")
            | (403, "action_prohibited" | "invalid_token" | "team_disabled")
    ) || (a.status == 410)
}

/// Slack's webhook failure table (README.md, "Delivery and failures").
pub fn judge(result: &Result<Response, PostError>) -> Answer {
    let (verdict, outcome) = match result {
        Ok(a) if (200..300).contains(&a.status) => (Verdict::Done, "ok"),
        Ok(a) if a.status == 429 => (
            Verdict::RetryAfter(a.retry_after.unwrap_or(DEFAULT_RETRY_AFTER).max(Duration::from_millis(1))),
            "rate_limited",
        ),
        Ok(a) if a.status >= 500 => (Verdict::Retry, "server_error"),
        Ok(a) if a.status == 408 => (Verdict::Retry, "rejected"),
        Ok(a) if webhook_gone(a) => (Verdict::Gone, "rejected"),
        Ok(_) => (Verdict::Refused, "rejected"),
        Err(PostError::BadUrl) => (Verdict::Refused, "connection_error"),
        Err(PostError::Timeout) => (Verdict::Retry, "timeout"),
        Err(_) => (Verdict::Retry, "connection_error"),
    };
    let detail = match result {
        Ok(a) => format!("HTTP {} {}", a.status, truncate(a.body.trim(), 100)),
        Err(e) => e.to_string(),
    };
    Answer { verdict, outcome, detail }
}

/// How a destination dresses one notification. Mentions page people, so they fire only on
/// the alarm states the destination names (`mention_states`, default ALARM): an OK or a
/// non-alarm notification of a critical severity must not wake the channel.
pub fn style(dest: &Destination, n: &Notification, severity: &str) -> Style {
    let state = n.alarm.as_ref().map(|a| a.new_state.as_str());
    if !state.is_some_and(|st| dest.mention_states.iter().any(|m| m == st)) {
        return Style { mention: None };
    }
    let mention = if dest.mention_channel.iter().any(|s| s == severity) {
        Some("<!channel>")
    } else if dest.mention_here.iter().any(|s| s == severity) {
        Some("<!here>")
    } else {
        None
    };
    Style { mention }
}

/// Appends `s` with the three characters Slack's mrkdwn treats as control characters
/// escaped.
fn push_escaped(out: &mut String, s: &str) {
    let mut rest = s;
    while let Some(i) = rest.find(['&', '<', '>']) {
        out.push_str(&rest[..i]);
        out.push_str(match rest.as_bytes()[i] {
            b'&' => "&amp;",
            b'<' => "&lt;",
            _ => "&gt;",
        });
        rest = &rest[i + 1..];
    }
    out.push_str(rest);
}

/// Cuts `s` in place to at most `max` characters, marking the cut with `…`.
fn cut_to(s: &mut String, max: usize, what: &str, notes: &mut Vec<String>) {
    let count = s.chars().count();
    if count <= max {
        return;
    }
    notes.push(format!("{what} cut from {count} to {max} characters"));
    let end = s.char_indices().nth(max.saturating_sub(1)).map_or(s.len(), |(i, _)| i);
    s.truncate(end);
    s.push('…');
}

/// Cuts `s` to at most `max` characters, marking the cut with `…`.
pub fn cut(s: &str, max: usize, what: &str, notes: &mut Vec<String>) -> String {
    let mut out = s.to_string();
    cut_to(&mut out, max, what, notes);
    out
}

pub fn color(state: Option<&str>) -> &'static str {
    match state {
        Some("ALARM") => "#d0021b",
        Some("OK") => "#2eb886",
        Some("INSUFFICIENT_DATA") => "#daa038",
        _ => "#439fe0",
    }
}

pub(super) fn emoji(state: &str) -> &'static str {
    match state {
        "ALARM" => ":red_circle:",
        "OK" => ":large_green_circle:",
        _ => ":large_orange_circle:",
    }
}

fn push_console_url(out: &mut String, partition: &str, region: &str, alarm_name: &str) {
    use std::fmt::Write;
    let host = match partition {
        "aws-cn" => ".console.amazonaws.cn",
        "aws-us-gov" => ".console.amazonaws-us-gov.com",
        _ => ".console.aws.amazon.com",
    };
    let _ = write!(out, "https://{region}{host}/cloudwatch/home?region={region}#alarmsV2:alarm/");
    for b in alarm_name.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
}

/// Link to the alarm in the CloudWatch console of the right partition and region.
pub fn console_url(partition: &str, region: &str, alarm_name: &str) -> String {
    let mut out = String::new();
    push_console_url(&mut out, partition, region, alarm_name);
    out
}

fn push_short(out: &mut String, d: Duration) {
    use std::fmt::Write;
    let s = d.as_secs();
    let _ = match s {
        0..=59 => write!(out, "{s}s"),
        60..=3599 => write!(out, "{}m {}s", s / 60, s % 60),
        _ => write!(out, "{}h {}m", s / 3600, (s % 3600) / 60),
    };
}

pub(super) fn short(d: Duration) -> String {
    let mut out = String::new();
    push_short(&mut out, d);
    out
}

fn push_headline(out: &mut String, n: &Notification) {
    match &n.alarm {
        Some(a) => {
            out.push_str(emoji(&a.new_state));
            out.push(' ');
            out.push_str(&a.new_state);
            out.push_str(": ");
            push_escaped(out, &a.name);
        }
        None => push_escaped(out, &untitled_headline(n)),
    }
}

/// The one-line summary, also used as digest lines.
pub fn headline(n: &Notification) -> String {
    let mut out = String::new();
    push_headline(&mut out, n);
    out
}

/// A notification that is not an alarm is named by its Subject, or else by the start of
/// its Message (first line, 80 characters): a digest line must say what it is.
fn untitled_headline(n: &Notification) -> String {
    if let Some(e) = &n.event {
        return match &e.title {
            Some(t) => format!("{}: {t}", e.detail_type),
            None => e.detail_type.clone(),
        };
    }
    if let Some(s) = n.envelope.subject.as_deref().filter(|s| !s.trim().is_empty()) {
        return s.to_string();
    }
    let first = n.envelope.message.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("(empty message)");
    let mut notes = Vec::new();
    cut(first, 80, "headline", &mut notes)
}

/// Slack's JSON written straight into the request body as it is composed: no `Value`
/// tree, no string per piece. The `json!` trees and `format!`s this replaced cost about
/// 30 allocations per notification in a digest, the largest source under load
/// (BENCHMARKS.md); a digest is now a handful per post. The output is the same JSON (a
/// test holds it to the tree-building version kept in `slack_reference.rs`), keys in the
/// order serde_json's map wrote them.
struct Writer {
    body: Vec<u8>,
    /// The mrkdwn text being composed; written (escaped for JSON) and cleared by the
    /// block methods.
    text: String,
    /// A second buffer for a field's value composed from parts.
    value: String,
    notes: Vec<String>,
    /// Whether the array being written already has an element (a comma goes first).
    more: bool,
}

impl Writer {
    fn new() -> Writer {
        Writer {
            body: Vec::with_capacity(4096),
            text: String::new(),
            value: String::new(),
            notes: Vec::new(),
            more: false,
        }
    }

    fn raw(&mut self, s: &str) {
        self.body.extend_from_slice(s.as_bytes());
    }

    /// `s` as a JSON string.
    fn string(&mut self, s: &str) {
        // Writing into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut self.body, s);
    }

    /// The separator before the next element of the array being written.
    fn next(&mut self) {
        if self.more {
            self.body.push(b',');
        }
        self.more = true;
    }

    /// `{"text":…,"type":"mrkdwn"}` from the composed text, cut to `max`.
    fn mrkdwn(&mut self, max: usize, what: &str) {
        cut_to(&mut self.text, max, what, &mut self.notes);
        self.raw(r#"{"text":"#);
        let _ = serde_json::to_writer(&mut self.body, self.text.as_str());
        self.raw(r#","type":"mrkdwn"}"#);
        self.text.clear();
    }

    /// A section block holding the composed text.
    fn section(&mut self, max: usize, what: &str) {
        self.next();
        self.raw(r#"{"text":"#);
        self.mrkdwn(max, what);
        self.raw(r#","type":"section"}"#);
    }

    /// A context block holding the composed text.
    fn context(&mut self, max: usize, what: &str) {
        self.next();
        self.raw(r#"{"elements":["#);
        self.mrkdwn(max, what);
        self.raw(r#"],"type":"context"}"#);
    }

    /// Starts a section of fields; `field` adds them, `end_fields` closes it.
    fn start_fields(&mut self) -> Fields {
        self.next();
        self.raw(r#"{"fields":["#);
        Fields(0)
    }

    /// One `*label*\nvalue` field, value escaped; past `MAX_FIELDS` it is left out.
    fn field(&mut self, fields: &mut Fields, label: &str, value: &str) {
        if fields.0 >= MAX_FIELDS {
            return;
        }
        if fields.0 > 0 {
            self.body.push(b',');
        }
        fields.0 += 1;
        self.text.push('*');
        self.text.push_str(label);
        self.text.push_str("*\n");
        push_escaped(&mut self.text, value);
        self.mrkdwn(MAX_FIELD, label);
    }

    /// A field whose value was composed in `self.value`, trimmed or not.
    fn value_field(&mut self, fields: &mut Fields, label: &str, trim: bool) {
        let value = std::mem::take(&mut self.value);
        self.field(fields, label, if trim { value.trim() } else { &value });
        self.value = value;
        self.value.clear();
    }

    fn end_fields(&mut self) {
        self.raw(r#"],"type":"section"}"#);
    }

    /// Closes the blocks and writes the rest of the payload around `text`.
    fn finish(mut self, color: &str, text: &str) -> Rendered {
        self.raw(r#"],"color":"#);
        self.string(color);
        self.raw(r#","fallback":"#);
        self.string(text);
        self.raw(r#"}],"text":"#);
        self.string(text);
        self.raw("}");
        Rendered { body: self.body, truncated: self.notes }
    }
}

/// Fields written so far in a section.
struct Fields(usize);

/// Renders one notification.
pub fn render(n: &Notification, severity: &str, style: &Style, history: History) -> Rendered {
    let mut w = Writer::new();
    w.raw(r#"{"attachments":[{"blocks":["#);
    let mut text = String::new();
    if let Some(m) = style.mention {
        text.push_str(m);
        text.push(' ');
    }
    if history.late {
        text.push_str(LATE_TEXT);
    }
    match &n.alarm {
        Some(alarm) => {
            push_headline(&mut text, n);
            if let (Some(d), "OK") = (history.lasted, alarm.new_state.as_str()) {
                text.push_str(" (was in ALARM for ");
                push_short(&mut text, d);
                text.push(')');
            }
            alarm_blocks(&mut w, n, alarm, severity, history);
        }
        None => {
            push_escaped(&mut text, &untitled_headline(n));
            match &n.event {
                Some(e) => event_blocks(&mut w, n, e),
                None => other_blocks(&mut w, n),
            }
        }
    }
    cut_to(&mut text, MAX_TEXT, "text", &mut w.notes);
    w.finish(color(n.state()), &text)
}

fn alarm_blocks(w: &mut Writer, n: &Notification, a: &Alarm, severity: &str, history: History) {
    use std::fmt::Write;
    let lasted = match (history.lasted, a.new_state.as_str()) {
        (Some(d), "OK") => Some(d),
        _ => None,
    };
    let region = n.region.as_deref().unwrap_or("us-east-1");
    let t = &mut w.text;
    t.push_str("*<");
    push_console_url(t, &n.partition, region, &a.name);
    t.push('|');
    push_escaped(t, &a.name);
    t.push_str(">* is now *");
    t.push_str(&a.new_state);
    t.push('*');
    if let Some(old) = &a.old_state {
        let _ = write!(t, " (was {old})");
    }
    if let Some(d) = lasted {
        t.push_str(" after ");
        push_short(t, d);
    }
    if history.late {
        t.push_str(LATE_NOTE);
    }
    w.section(MAX_SECTION, "title");
    if let Some(reason) = &a.reason {
        push_escaped(&mut w.text, reason);
        w.section(MAX_SECTION, "reason");
    }
    if let Some(desc) = &a.description {
        w.text.push('_');
        push_escaped(&mut w.text, desc);
        w.text.push('_');
        w.section(MAX_SECTION, "description");
    }
    let mut fields = w.start_fields();
    w.field(&mut fields, "Severity", severity);
    if let Some(t) = &a.trigger {
        if let Some(metric) = &t.metric_name {
            let _ = write!(w.value, "{} {metric}", t.namespace.as_deref().unwrap_or(""));
            w.value_field(&mut fields, "Metric", true);
        }
        if !t.metrics.is_empty() {
            for (i, m) in t.metrics.iter().enumerate() {
                if i > 0 {
                    w.value.push('\n');
                }
                w.value.push_str(m);
            }
            w.value_field(&mut fields, "Metrics", false);
        }
        let op = t.comparison_operator.as_deref().map(comparison).unwrap_or("");
        if let Some(th) = &t.threshold {
            let _ = write!(w.value, "{} {op} {th}", t.statistic.as_deref().unwrap_or(""));
            if let Some(p) = t.period {
                let _ = write!(w.value, " over {p}s");
            }
            if let Some(e) = t.evaluation_periods {
                let _ = write!(w.value, " × {e}");
            }
            w.value_field(&mut fields, "Threshold", true);
        }
        if !t.dimensions.is_empty() {
            for (i, (k, v)) in t.dimensions.iter().enumerate() {
                let _ = write!(w.value, "{}{k}={v}", if i > 0 { ", " } else { "" });
            }
            w.value_field(&mut fields, "Dimensions", false);
        }
    }
    if let Some(rule) = &a.alarm_rule {
        w.field(&mut fields, "Rule", rule);
    }
    let _ = write!(w.value, "{} / {region}", n.account.as_deref().unwrap_or("?"));
    w.value_field(&mut fields, "Account / region", false);
    if let Some(t) = &a.state_change_time {
        w.field(&mut fields, "Changed", t);
    }
    w.end_fields();
}

fn comparison(op: &str) -> &'static str {
    match op {
        "GreaterThanOrEqualToThreshold" => ">=",
        "GreaterThanThreshold" => ">",
        "LessThanThreshold" => "<",
        "LessThanOrEqualToThreshold" => "<=",
        "LessThanLowerOrGreaterThanUpperThreshold" => "outside",
        "LessThanLowerThreshold" => "< lower",
        "GreaterThanUpperThreshold" => "> upper",
        _ => "vs",
    }
}

/// An EventBridge event that is not an alarm: what happened, where, to what; never the
/// raw JSON.
fn event_blocks(w: &mut Writer, n: &Notification, e: &crate::model::AwsEvent) {
    use std::fmt::Write;
    w.text.push('*');
    push_escaped(&mut w.text, &untitled_headline(n));
    w.text.push_str("*\n`");
    push_escaped(&mut w.text, &e.source);
    w.text.push('`');
    w.section(MAX_SECTION, "title");
    let mut fields = w.start_fields();
    let _ = write!(w.value, "{} / {}", n.account.as_deref().unwrap_or("?"), n.region.as_deref().unwrap_or("?"));
    w.value_field(&mut fields, "Account / region", false);
    for (label, value) in e.fields.iter().filter(|(l, _)| l != "Description") {
        w.field(&mut fields, label, value);
    }
    if !e.resources.is_empty() {
        w.value.push_str(&e.resources.join("\n"));
        w.value_field(&mut fields, "Resources", false);
    }
    if let Some(t) = &e.time {
        w.field(&mut fields, "Time", t);
    }
    w.end_fields();
    if let Some((_, d)) = e.fields.iter().find(|(l, _)| l == "Description") {
        push_escaped(&mut w.text, d);
        w.section(MAX_SECTION, "description");
    }
}

fn other_blocks(w: &mut Writer, n: &Notification) {
    // JSON messages are pretty-printed so a human can read them in the channel.
    let raw = match serde_json::from_str::<Value>(&n.envelope.message) {
        Ok(v) if v.is_object() || v.is_array() => serde_json::to_string_pretty(&v).unwrap_or_default(),
        _ => n.envelope.message.clone(),
    };
    // ``` fences take 8 characters of the section.
    let mut body = String::with_capacity(raw.len() + 8);
    push_escaped(&mut body, &raw);
    cut_to(&mut body, MAX_SECTION - 8, "message", &mut w.notes);
    w.text.push('*');
    push_escaped(&mut w.text, &untitled_headline(n));
    w.text.push('*');
    w.section(MAX_SECTION, "subject");
    w.text.push_str("```");
    w.text.push_str(&body);
    w.text.push_str("```");
    w.section(usize::MAX, "message");
    push_escaped(&mut w.text, &n.envelope.topic_arn);
    w.context(MAX_FIELD, "topic");
}

/// Several pending notifications as one post, when a destination is behind its rate
/// limit. The `text` names every alarm; one section per notification, within 50 blocks.
pub fn render_digest(items: &[(std::sync::Arc<Prepared>, History)]) -> Rendered {
    use std::fmt::Write;
    let late = |h: &History| if h.late { " (late)" } else { "" };
    let mut text = String::with_capacity(64 * items.len());
    let _ = write!(text, "{} notifications: ", items.len());
    for (i, (p, h)) in items.iter().enumerate() {
        if i > 0 {
            text.push_str(", ");
        }
        push_headline(&mut text, &p.notification);
        text.push_str(late(h));
    }
    let mut w = Writer::new();
    cut_to(&mut text, MAX_TEXT, "digest text", &mut w.notes);
    w.raw(r#"{"attachments":[{"blocks":["#);
    for (p, h) in items.iter().take(MAX_BLOCKS - 1) {
        let (n, severity) = (&p.notification, &p.severity);
        push_headline(&mut w.text, n);
        w.text.push_str(late(h));
        if let Some(a) = &n.alarm {
            let region = n.region.as_deref().unwrap_or("us-east-1");
            w.text.push_str(" (<");
            push_console_url(&mut w.text, &n.partition, region, &a.name);
            w.text.push_str("|console>, ");
            w.text.push_str(severity);
            w.text.push(')');
            if let Some(r) = &a.reason {
                w.text.push('\n');
                push_escaped(&mut w.text, r);
            }
        }
        w.section(MAX_SECTION, "digest line");
    }
    if items.len() > MAX_BLOCKS - 1 {
        let _ = write!(w.text, "and {} more (named in the text above)", items.len() - (MAX_BLOCKS - 1));
        w.context(usize::MAX, "more");
    }
    let worst = items
        .iter()
        .filter_map(|(p, _)| p.notification.state())
        .find(|s| *s == "ALARM")
        .or_else(|| items.first().and_then(|(p, _)| p.notification.state()));
    w.finish(color(worst), &text)
}

#[cfg(test)]
#[path = "slack_reference.rs"]
mod reference;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Envelope;
    use serde_json::json;

    fn answer(status: u16, body: &str) -> Result<Response, PostError> {
        Ok(Response { status, body: body.into(), retry_after: None })
    }

    #[test]
    fn failure_table() {
        let v = |r: &Result<Response, PostError>| judge(r).verdict;
        assert_eq!(v(&answer(200, "ok")), Verdict::Done);
        assert_eq!(v(&answer(204, "")), Verdict::Done);
        assert_eq!(v(&answer(429, "")), Verdict::RetryAfter(DEFAULT_RETRY_AFTER));
        let with = Ok(Response { status: 429, body: String::new(), retry_after: Some(Duration::from_secs(9)) });
        assert_eq!(v(&with), Verdict::RetryAfter(Duration::from_secs(9)));
        assert_eq!(v(&answer(500, "")), Verdict::Retry);
        assert_eq!(v(&answer(503, "")), Verdict::Retry);
        assert_eq!(v(&Err(PostError::Timeout)), Verdict::Retry);
        assert_eq!(v(&Err(PostError::Connect)), Verdict::Retry);
        assert_eq!(v(&answer(400, "invalid_payload")), Verdict::Refused);
        assert_eq!(v(&answer(404, "no_service")), Verdict::Gone);
        assert_eq!(v(&answer(410, "channel_is_archived")), Verdict::Gone);
        assert_eq!(v(&answer(403, "invalid_token")), Verdict::Gone);
        assert_eq!(v(&answer(403, "something_else")), Verdict::Refused);
        assert_eq!(judge(&answer(400, "invalid_payload")).detail, "HTTP 400 invalid_payload");
    }

    fn notification(message: &str, subject: Option<&str>) -> Notification {
        Notification::from_envelope(Envelope {
            message_id: "m".into(),
            topic_arn: "arn:aws:sns:us-east-1:123456789012:alarms".into(),
            subject: subject.map(str::to_string),
            message: message.into(),
            timestamp: "2024-01-01T00:00:00Z".into(),
            fallback_from: None,
        })
    }

    fn alarm(name: &str, state: &str, reason: &str) -> Notification {
        let msg = json!({"AlarmName": name, "NewStateValue": state, "OldStateValue": "OK", "NewStateReason": reason,
            "AWSAccountId": "123456789012", "AlarmArn": format!("arn:aws:cloudwatch:eu-west-1:123456789012:alarm:{name}"),
            "Trigger": {"MetricName": "CPUUtilization", "Namespace": "AWS/EC2", "Statistic": "AVERAGE",
                "ComparisonOperator": "GreaterThanThreshold", "Threshold": 90, "Period": 300, "EvaluationPeriods": 2,
                "Dimensions": [{"name": "InstanceId", "value": "i-1"}]}});
        notification(&msg.to_string(), Some("ALARM: x"))
    }

    fn all_strings(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::String(s) => out.push(s.clone()),
            Value::Array(a) => a.iter().for_each(|x| all_strings(x, out)),
            Value::Object(o) => o.values().for_each(|x| all_strings(x, out)),
            _ => {}
        }
    }

    #[test]
    fn alarm_message_has_everything_ops_need() {
        let r = render(
            &alarm("prod-db-cpu", "ALARM", "Threshold Crossed: 1 datapoint [95.0]"),
            "critical",
            &Style::default(),
            History::default(),
        );
        let p = r.payload();
        let text = p["text"].as_str().unwrap();
        assert!(text.contains("prod-db-cpu") && text.contains("ALARM"), "{text}");
        assert_eq!(p["attachments"][0]["color"], "#d0021b");
        let mut s = Vec::new();
        all_strings(&p, &mut s);
        let all = s.join("\n");
        for needle in [
            "Threshold Crossed",
            "AWS/EC2 CPUUtilization",
            "AVERAGE &gt; 90 over 300s × 2",
            "InstanceId=i-1",
            "123456789012 / eu-west-1",
            "https://eu-west-1.console.aws.amazon.com/cloudwatch/home?region=eu-west-1#alarmsV2:alarm/prod-db-cpu",
            "critical",
        ] {
            assert!(all.contains(needle), "missing {needle} in {all}");
        }
        assert!(r.truncated.is_empty());
    }

    #[test]
    fn ok_says_how_long_it_lasted_and_mentions_apply() {
        let style = Style { mention: Some("<!here>") };
        let r = render(
            &alarm("a", "OK", "back"),
            "warning",
            &style,
            History { lasted: Some(Duration::from_secs(754)), late: false },
        );
        let p = r.payload();
        let text = p["text"].as_str().unwrap();
        assert!(text.starts_with("<!here> "), "{text}");
        assert!(text.contains("was in ALARM for 12m 34s"), "{text}");
        assert_eq!(p["attachments"][0]["color"], "#2eb886");
    }

    #[test]
    fn late_state_changes_say_so() {
        let r = render(&alarm("a", "ALARM", "x"), "warning", &Style::default(), History { lasted: None, late: true });
        let p = r.payload();
        let text = p["text"].as_str().unwrap();
        assert!(text.starts_with(":hourglass: Late: "), "{text}");
        let title = p["attachments"][0]["blocks"][0]["text"]["text"].as_str().unwrap();
        assert!(title.contains("arrived late"), "{title}");
    }

    #[test]
    fn escapes_and_cuts_within_limits() {
        let reason = "<script>&".repeat(2000);
        let r = render(&alarm("<b>&", "ALARM", &reason), "warning", &Style::default(), History::default());
        let p = r.payload();
        let text = p["text"].as_str().unwrap();
        assert!(text.contains("&lt;b&gt;&amp;"), "{text}");
        for block in p["attachments"][0]["blocks"].as_array().unwrap() {
            if let Some(t) = block["text"]["text"].as_str() {
                assert!(t.chars().count() <= MAX_SECTION, "section of {} chars", t.chars().count());
                assert!(!t.contains("<script>"));
            }
        }
        assert!(r.truncated.iter().any(|n| n.contains("reason")), "{:?}", r.truncated);
    }

    #[test]
    fn cut_respects_character_boundaries() {
        let mut notes = Vec::new();
        let s = "é".repeat(10);
        let c = cut(&s, 5, "x", &mut notes);
        assert_eq!(c.chars().count(), 5);
        assert!(c.ends_with('…'));
        assert_eq!(notes.len(), 1);
    }

    #[test]
    fn non_alarm_uses_subject_and_pretty_json() {
        let r = render(&notification(r#"{"a":{"b":1}}"#, Some("Hello")), "info", &Style::default(), History::default());
        let p = r.payload();
        assert_eq!(p["text"], "Hello");
        let body = p["attachments"][0]["blocks"][1]["text"]["text"].as_str().unwrap();
        assert!(body.contains("{\n  \"a\": {\n    \"b\": 1"), "{body}");
    }

    #[test]
    fn digest_names_every_alarm_and_stays_under_50_blocks() {
        let items: Vec<_> = (0..60)
            .map(|i| {
                let p =
                    Prepared { notification: alarm(&format!("alarm-{i}"), "ALARM", "r"), severity: "warning".into() };
                (std::sync::Arc::new(p), History { lasted: None, late: i == 3 })
            })
            .collect();
        let r = render_digest(&items);
        let p = r.payload();
        assert!(p["text"].as_str().unwrap().contains("alarm-3 (late)"));
        let text = p["text"].as_str().unwrap();
        assert!(text.starts_with("60 notifications"));
        for i in 0..60 {
            assert!(
                text.contains(&format!("alarm-{i},"))
                    || text.contains(&format!("alarm-{i} (late),"))
                    || text.ends_with(&format!("alarm-{i}")),
                "alarm-{i} missing"
            );
        }
        assert!(p["attachments"][0]["blocks"].as_array().unwrap().len() <= MAX_BLOCKS);
    }

    #[test]
    fn digest_names_non_alarms_by_subject_or_message_start() {
        let items: Vec<_> = [
            notification("Deployment 1.42 finished\nsecond line", None),
            notification("{}", Some("Backup done")),
            notification("   ", None),
        ]
        .into_iter()
        .map(|n| (std::sync::Arc::new(Prepared { notification: n, severity: "info".into() }), History::default()))
        .collect();
        let text = render_digest(&items).payload()["text"].as_str().unwrap().to_string();
        assert_eq!(text, "3 notifications: Deployment 1.42 finished, Backup done, (empty message)");
        let long = "x".repeat(200);
        let r = render(&notification(&long, None), "info", &Style::default(), History::default());
        let p = r.payload();
        assert_eq!(p["text"].as_str().unwrap().chars().count(), 80);
    }

    #[test]
    fn console_links_per_partition() {
        assert!(console_url("aws-cn", "cn-north-1", "a b").starts_with("https://cn-north-1.console.amazonaws.cn/"));
        assert!(console_url("aws-cn", "cn-north-1", "a b").ends_with("alarm/a%20b"));
        assert!(console_url("aws-us-gov", "us-gov-west-1", "a").contains("console.amazonaws-us-gov.com"));
    }

    /// Every message we have (real CloudWatch and SNS fixtures, the EventBridge examples)
    /// and hostile variants, alone and as digests, with every style and history: the
    /// writer must produce the same JSON and the same notes as the `json!` version it
    /// replaced (`slack_reference.rs`).
    #[test]
    fn the_writer_renders_exactly_what_the_json_trees_did() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut messages: Vec<(String, Option<String>)> = Vec::new();
        let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(root.join("tests/fixtures/sns-real"))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        files.extend(std::fs::read_dir(root.join("examples/eventbridge")).unwrap().flatten().map(|e| e.path()));
        for path in files {
            let Ok(text) = std::fs::read_to_string(&path) else { continue };
            let Ok(v) = serde_json::from_str::<Value>(&text) else { continue };
            match v.get("Message").and_then(Value::as_str) {
                Some(m) => messages.push((m.to_string(), v.get("Subject").and_then(Value::as_str).map(str::to_string))),
                None => messages.push((text.clone(), None)),
            }
        }
        let cloudwatch = std::fs::read_to_string(root.join("examples/cloudwatch-alarm.json")).unwrap();
        messages.push((cloudwatch.clone(), None));
        assert!(messages.len() >= 25, "the fixtures were not read: {}", messages.len());
        // Hostile variants: markup, quotes, control characters, multi-byte text, and
        // lengths past every Block Kit limit.
        let nasty = ["<b>&\"quoted\"\\</b>\n\t\u{1}", "é🚨".repeat(1600).as_str(), "x".repeat(3500).as_str()]
            .map(str::to_string);
        let base: Value = serde_json::from_str(&cloudwatch).unwrap();
        for text in &nasty {
            for field in ["AlarmName", "NewStateReason", "AlarmDescription", "OldStateValue", "StateChangeTime"] {
                let mut v = base.clone();
                v[field] = json!(text);
                messages.push((v.to_string(), Some(text.clone())));
            }
            let mut v = base.clone();
            v["Trigger"]["Dimensions"] =
                json!((0..30).map(|i| json!({"name": format!("{text}{i}"), "value": text})).collect::<Vec<_>>());
            v["Trigger"]["Threshold"] = json!(text);
            v["Trigger"]["Metrics"] = json!([{"Id": "m1", "Expression": text, "Label": "L"}, {"Id": "m2"}]);
            v["AlarmRule"] = json!(text);
            messages.push((v.to_string(), None));
            messages.push((text.clone(), None));
            messages.push((json!({"a": text}).to_string(), Some(text.clone())));
        }
        let topics = ["arn:aws:sns:eu-west-1:123456789012:alarms", "arn:aws-cn:sns:cn-north-1:1:t", "not an arn <&>"];
        let notifications: Vec<Notification> = messages
            .iter()
            .enumerate()
            .map(|(i, (m, subject))| {
                Notification::from_envelope(Envelope {
                    message_id: format!("m{i}"),
                    topic_arn: topics[i % topics.len()].into(),
                    subject: subject.clone(),
                    message: m.clone(),
                    timestamp: "2024-01-01T00:00:00Z".into(),
                    fallback_from: None,
                })
            })
            .collect();
        let histories = [
            History::default(),
            History { lasted: Some(Duration::from_secs(4000)), late: false },
            History { lasted: Some(Duration::from_secs(42)), late: true },
        ];
        let styles = [Style::default(), Style { mention: Some("<!channel>") }];
        let mut compared = 0;
        for (i, n) in notifications.iter().enumerate() {
            let (history, style) = (histories[i % 3], &styles[i % 2]);
            let (new, old) = (render(n, "critical", style, history), reference::render(n, "critical", style, history));
            assert_eq!(new.payload(), old.payload, "message {i}: {}", n.envelope.message);
            assert_eq!(new.truncated, old.truncated, "message {i}");
            compared += 1;
        }
        let prepared: Vec<(std::sync::Arc<Prepared>, History)> = notifications
            .iter()
            .enumerate()
            .map(|(i, n)| {
                (
                    std::sync::Arc::new(Prepared { notification: n.clone(), severity: "warning".into() }),
                    histories[i % 3],
                )
            })
            .collect();
        for size in [2, 3, 20, 49, 50, prepared.len()] {
            for chunk in prepared.chunks(size) {
                let (new, old) = (render_digest(chunk), reference::render_digest(chunk));
                assert_eq!(new.payload(), old.payload, "digest of {size}");
                assert_eq!(new.truncated, old.truncated, "digest of {size}");
                compared += 1;
            }
        }
        assert!(compared > 60, "{compared}");
    }
}
