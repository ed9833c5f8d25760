//! The Slack rendering as it was written before the writer in `slack.rs`: `json!` trees
//! and `format!`s. Test-only: the tests hold the writer to exactly this output for every
//! fixture and for hostile strings, so the allocation diet changed nothing Slack sees.

use serde_json::{json, Value};

use super::{
    color, comparison, emoji, short, untitled_headline, History, Style, LATE_NOTE, LATE_TEXT, MAX_BLOCKS, MAX_FIELD,
    MAX_FIELDS, MAX_SECTION, MAX_TEXT,
};
use crate::model::{Alarm, Notification, Prepared};

pub struct Rendered {
    pub payload: Value,
    pub truncated: Vec<String>,
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
