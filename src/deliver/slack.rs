//! Slack incoming webhooks: the sink, which answers mean what, and what Slack receives.
//! A top-level `text` (what mobile notifications show: alarm name and
//! the state word as CloudWatch spells it) and one attachment coloured by state holding
//! Block Kit blocks. Every string is escaped for Slack (`&`, `<`, `>`) and cut to Block
//! Kit's limits on a character boundary: a long alarm is shortened, never refused.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use serde_json::{json, Value};

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

/// A rendered Slack message and notes on what had to be cut.
#[derive(Debug, Clone)]
pub struct Rendered {
    pub payload: Value,
    pub truncated: Vec<String>,
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
        let body = match serde_json::to_vec(&rendered.payload) {
            Ok(b) => Bytes::from(b),
            Err(e) => return Answer { verdict: Verdict::Refused, outcome: "rejected", detail: e.to_string() },
        };
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

/// Escapes the three characters Slack's mrkdwn treats as control characters.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c => out.push(c),
        }
    }
    out
}

/// Cuts `s` to at most `max` characters, marking the cut with `…`.
pub fn cut(s: &str, max: usize, what: &str, notes: &mut Vec<String>) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    notes.push(format!("{what} cut from {} to {max} characters", s.chars().count()));
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
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

/// Link to the alarm in the CloudWatch console of the right partition and region.
pub fn console_url(partition: &str, region: &str, alarm_name: &str) -> String {
    let host = match partition {
        "aws-cn" => format!("{region}.console.amazonaws.cn"),
        "aws-us-gov" => format!("{region}.console.amazonaws-us-gov.com"),
        _ => format!("{region}.console.aws.amazon.com"),
    };
    let mut name = String::new();
    for b in alarm_name.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            name.push(b as char);
        } else {
            name.push_str(&format!("%{b:02X}"));
        }
    }
    format!("https://{host}/cloudwatch/home?region={region}#alarmsV2:alarm/{name}")
}

pub(super) fn short(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m {}s", s / 60, s % 60),
        _ => format!("{}h {}m", s / 3600, (s % 3600) / 60),
    }
}

fn field(label: &str, value: &str, notes: &mut Vec<String>) -> Value {
    json!({"type": "mrkdwn", "text": cut(&format!("*{label}*\n{}", escape(value)), MAX_FIELD, label, notes)})
}

/// The one-line summary, also used as digest lines.
pub fn headline(n: &Notification) -> String {
    match &n.alarm {
        Some(a) => format!("{} {}: {}", emoji(&a.new_state), a.new_state, escape(&a.name)),
        None => escape(&untitled_headline(n)),
    }
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

/// Renders one notification.
pub fn render(n: &Notification, severity: &str, style: &Style, history: History) -> Rendered {
    let mut notes = Vec::new();
    let mention = style.mention.map(|m| format!("{m} ")).unwrap_or_default();
    let (text, blocks) = match &n.alarm {
        Some(alarm) => alarm_blocks(n, alarm, severity, history, &mut notes),
        None => other_blocks(n, &mut notes),
    };
    let late = if history.late { LATE_TEXT } else { "" };
    let text = cut(&format!("{mention}{late}{text}"), MAX_TEXT, "text", &mut notes);
    let payload = json!({
        "text": text,
        "attachments": [{"color": color(n.state()), "fallback": text, "blocks": blocks}],
    });
    Rendered { payload, truncated: notes }
}

fn alarm_blocks(
    n: &Notification,
    a: &Alarm,
    severity: &str,
    history: History,
    notes: &mut Vec<String>,
) -> (String, Vec<Value>) {
    let lasted = history.lasted;
    let mut text = format!("{} {}: {}", emoji(&a.new_state), a.new_state, escape(&a.name));
    if let (Some(d), "OK") = (lasted, a.new_state.as_str()) {
        text.push_str(&format!(" (was in ALARM for {})", short(d)));
    }
    let region = n.region.as_deref().unwrap_or("us-east-1");
    let link = console_url(&n.partition, region, &a.name);
    let mut title = format!("*<{link}|{}>* is now *{}*", escape(&a.name), a.new_state);
    if let Some(old) = &a.old_state {
        title.push_str(&format!(" (was {old})"));
    }
    if let (Some(d), "OK") = (lasted, a.new_state.as_str()) {
        title.push_str(&format!(" after {}", short(d)));
    }
    if history.late {
        title.push_str(LATE_NOTE);
    }
    let mut blocks =
        vec![json!({"type": "section", "text": {"type": "mrkdwn", "text": cut(&title, MAX_SECTION, "title", notes)}})];
    if let Some(reason) = &a.reason {
        blocks.push(json!({"type": "section", "text": {"type": "mrkdwn", "text": cut(&escape(reason), MAX_SECTION, "reason", notes)}}));
    }
    if let Some(desc) = &a.description {
        blocks.push(json!({"type": "section", "text": {"type": "mrkdwn", "text": cut(&format!("_{}_", escape(desc)), MAX_SECTION, "description", notes)}}));
    }
    let mut fields = vec![field("Severity", severity, notes)];
    if let Some(t) = &a.trigger {
        if let Some(metric) = &t.metric_name {
            let ns = t.namespace.as_deref().unwrap_or("");
            fields.push(field("Metric", format!("{ns} {metric}").trim(), notes));
        }
        if !t.metrics.is_empty() {
            fields.push(field("Metrics", &t.metrics.join("\n"), notes));
        }
        let op = t.comparison_operator.as_deref().map(comparison).unwrap_or("");
        if let Some(th) = &t.threshold {
            let stat = t.statistic.as_deref().unwrap_or("");
            let period = t.period.map(|p| format!(" over {p}s")).unwrap_or_default();
            let evals = t.evaluation_periods.map(|e| format!(" × {e}")).unwrap_or_default();
            fields.push(field("Threshold", format!("{stat} {op} {th}{period}{evals}").trim(), notes));
        }
        if !t.dimensions.is_empty() {
            let dims: Vec<String> = t.dimensions.iter().map(|(k, v)| format!("{k}={v}")).collect();
            fields.push(field("Dimensions", &dims.join(", "), notes));
        }
    }
    if let Some(rule) = &a.alarm_rule {
        fields.push(field("Rule", rule, notes));
    }
    let account = n.account.as_deref().unwrap_or("?");
    fields.push(field("Account / region", &format!("{account} / {region}"), notes));
    if let Some(t) = &a.state_change_time {
        fields.push(field("Changed", t, notes));
    }
    fields.truncate(MAX_FIELDS);
    blocks.push(json!({"type": "section", "fields": fields}));
    (text, blocks)
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
fn event_blocks(n: &Notification, e: &crate::model::AwsEvent, notes: &mut Vec<String>) -> (String, Vec<Value>) {
    let text = escape(&untitled_headline(n));
    let mut blocks = vec![json!({"type": "section", "text": {"type": "mrkdwn",
        "text": cut(&format!("*{text}*\n`{}`", escape(&e.source)), MAX_SECTION, "title", notes)}})];
    let mut fields = Vec::new();
    let account = n.account.as_deref().unwrap_or("?");
    let region = n.region.as_deref().unwrap_or("?");
    fields.push(field("Account / region", &format!("{account} / {region}"), notes));
    for (label, value) in e.fields.iter().filter(|(l, _)| l != "Description") {
        fields.push(field(label, value, notes));
    }
    if !e.resources.is_empty() {
        fields.push(field("Resources", &e.resources.join("\n"), notes));
    }
    if let Some(t) = &e.time {
        fields.push(field("Time", t, notes));
    }
    fields.truncate(MAX_FIELDS);
    blocks.push(json!({"type": "section", "fields": fields}));
    if let Some((_, d)) = e.fields.iter().find(|(l, _)| l == "Description") {
        blocks.push(json!({"type": "section", "text": {"type": "mrkdwn", "text": cut(&escape(d), MAX_SECTION, "description", notes)}}));
    }
    (text, blocks)
}

fn other_blocks(n: &Notification, notes: &mut Vec<String>) -> (String, Vec<Value>) {
    if let Some(e) = &n.event {
        return event_blocks(n, e, notes);
    }
    let text = escape(&untitled_headline(n));
    // JSON messages are pretty-printed so a human can read them in the channel.
    let body = match serde_json::from_str::<Value>(&n.envelope.message) {
        Ok(v) if v.is_object() || v.is_array() => serde_json::to_string_pretty(&v).unwrap_or_default(),
        _ => n.envelope.message.clone(),
    };
    // ``` fences take 8 characters of the section.
    let body = cut(&escape(&body), MAX_SECTION - 8, "message", notes);
    let blocks = vec![
        json!({"type": "section", "text": {"type": "mrkdwn", "text": cut(&format!("*{text}*"), MAX_SECTION, "subject", notes)}}),
        json!({"type": "section", "text": {"type": "mrkdwn", "text": format!("```{body}```")}}),
        json!({"type": "context", "elements": [{"type": "mrkdwn", "text": cut(&escape(&n.envelope.topic_arn), MAX_FIELD, "topic", notes)}]}),
    ];
    (text, blocks)
}

/// Several pending notifications as one post, when a destination is behind its rate
/// limit. The `text` names every alarm; one section per notification, within 50 blocks.
pub fn render_digest(items: &[(std::sync::Arc<Prepared>, History)]) -> Rendered {
    let mut notes = Vec::new();
    let late = |h: &History| if h.late { " (late)" } else { "" };
    let names: Vec<String> = items.iter().map(|(p, h)| format!("{}{}", headline(&p.notification), late(h))).collect();
    let text =
        cut(&format!("{} notifications: {}", items.len(), names.join(", ")), MAX_TEXT, "digest text", &mut notes);
    let mut blocks = Vec::new();
    for (p, h) in items.iter().take(MAX_BLOCKS - 1) {
        let (n, severity) = (&p.notification, &p.severity);
        let mut line = format!("{}{}", headline(n), late(h));
        if let Some(a) = &n.alarm {
            let region = n.region.as_deref().unwrap_or("us-east-1");
            line = format!("{line} (<{}|console>, {severity})", console_url(&n.partition, region, &a.name));
            if let Some(r) = &a.reason {
                line.push('\n');
                line.push_str(&escape(r));
            }
        }
        blocks.push(json!({"type": "section", "text": {"type": "mrkdwn", "text": cut(&line, MAX_SECTION, "digest line", &mut notes)}}));
    }
    if items.len() > MAX_BLOCKS - 1 {
        blocks.push(json!({"type": "context", "elements": [{"type": "mrkdwn", "text": format!("and {} more (named in the text above)", items.len() - (MAX_BLOCKS - 1))}]}));
    }
    let worst = items
        .iter()
        .filter_map(|(p, _)| p.notification.state())
        .find(|s| *s == "ALARM")
        .or_else(|| items.first().and_then(|(p, _)| p.notification.state()));
    Rendered {
        payload: json!({"text": text, "attachments": [{"color": color(worst), "fallback": text, "blocks": blocks}]}),
        truncated: notes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Envelope;

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
        let text = r.payload["text"].as_str().unwrap();
        assert!(text.contains("prod-db-cpu") && text.contains("ALARM"), "{text}");
        assert_eq!(r.payload["attachments"][0]["color"], "#d0021b");
        let mut s = Vec::new();
        all_strings(&r.payload, &mut s);
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
        let text = r.payload["text"].as_str().unwrap();
        assert!(text.starts_with("<!here> "), "{text}");
        assert!(text.contains("was in ALARM for 12m 34s"), "{text}");
        assert_eq!(r.payload["attachments"][0]["color"], "#2eb886");
    }

    #[test]
    fn late_state_changes_say_so() {
        let r = render(&alarm("a", "ALARM", "x"), "warning", &Style::default(), History { lasted: None, late: true });
        let text = r.payload["text"].as_str().unwrap();
        assert!(text.starts_with(":hourglass: Late: "), "{text}");
        let title = r.payload["attachments"][0]["blocks"][0]["text"]["text"].as_str().unwrap();
        assert!(title.contains("arrived late"), "{title}");
    }

    #[test]
    fn escapes_and_cuts_within_limits() {
        let reason = "<script>&".repeat(2000);
        let r = render(&alarm("<b>&", "ALARM", &reason), "warning", &Style::default(), History::default());
        let text = r.payload["text"].as_str().unwrap();
        assert!(text.contains("&lt;b&gt;&amp;"), "{text}");
        for block in r.payload["attachments"][0]["blocks"].as_array().unwrap() {
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
        assert_eq!(r.payload["text"], "Hello");
        let body = r.payload["attachments"][0]["blocks"][1]["text"]["text"].as_str().unwrap();
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
        assert!(r.payload["text"].as_str().unwrap().contains("alarm-3 (late)"));
        let text = r.payload["text"].as_str().unwrap();
        assert!(text.starts_with("60 notifications"));
        for i in 0..60 {
            assert!(
                text.contains(&format!("alarm-{i},"))
                    || text.contains(&format!("alarm-{i} (late),"))
                    || text.ends_with(&format!("alarm-{i}")),
                "alarm-{i} missing"
            );
        }
        assert!(r.payload["attachments"][0]["blocks"].as_array().unwrap().len() <= MAX_BLOCKS);
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
        let text = render_digest(&items).payload["text"].as_str().unwrap().to_string();
        assert_eq!(text, "3 notifications: Deployment 1.42 finished, Backup done, (empty message)");
        let long = "x".repeat(200);
        let r = render(&notification(&long, None), "info", &Style::default(), History::default());
        assert_eq!(r.payload["text"].as_str().unwrap().chars().count(), 80);
    }

    #[test]
    fn console_links_per_partition() {
        assert!(console_url("aws-cn", "cn-north-1", "a b").starts_with("https://cn-north-1.console.amazonaws.cn/"));
        assert!(console_url("aws-cn", "cn-north-1", "a b").ends_with("alarm/a%20b"));
        assert!(console_url("aws-us-gov", "us-gov-west-1", "a").contains("console.amazonaws-us-gov.com"));
    }
}
