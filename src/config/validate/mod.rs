//! routes.toml as written, and its validation: every problem with its line and column,
//! errors and warnings, never a secret's value.

use std::collections::{BTreeMap, HashSet};

use serde::Deserialize;

use toml::Spanned;

use super::duration::parse_duration;
use super::{Config, ConfigError, ConfirmMode, Destination, Problem, Secrets, SnsConfig, DEFAULT_MAX_AGE, STATES};

mod destinations;
use crate::route::matcher::{FieldPatterns, Literals, Pattern};
use crate::route::severity::{SeverityField, SeverityRule, SeverityRules};
use crate::route::{Field, RouteSpec, Router};

// ---------------------------------------------------------------------------------------
// The file as written.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    sns: Spanned<RawSns>,
    #[serde(default)]
    severity: Option<RawSeverity>,
    #[serde(default)]
    destinations: BTreeMap<String, Spanned<RawDestination>>,
    #[serde(default)]
    route: Vec<Spanned<RawRoute>>,
    #[serde(default)]
    default_route: Option<Spanned<RawDefaultRoute>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSns {
    topics: Spanned<Vec<Spanned<String>>>,
    max_age: Option<Spanned<String>>,
    auto_confirm: Option<bool>,
    confirm: Option<Spanned<String>>,
    /// Accept that a topic pattern admits any AWS account while `auto_confirm` is on.
    #[serde(default)]
    allow_any_account: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSeverity {
    default: Option<Spanned<String>>,
    #[serde(default)]
    rules: Vec<Spanned<RawSeverityRule>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSeverityRule {
    field: Spanned<String>,
    regex: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDestination {
    /// An incoming webhook...
    url: Option<Spanned<String>>,
    /// ...or the Web API: a bot token and a channel.
    token: Option<Spanned<String>>,
    channel: Option<Spanned<String>>,
    lifecycle: Option<Spanned<String>>,
    lifecycle_ttl: Option<Spanned<String>>,
    rate: Option<Spanned<String>>,
    burst: Option<Spanned<u32>>,
    fallback: Option<Spanned<String>>,
    /// Severities that get `<!here>` prepended.
    #[serde(default)]
    mention_here: Vec<String>,
    /// Severities that get `<!channel>` prepended.
    #[serde(default)]
    mention_channel: Vec<String>,
    /// Alarm states whose notifications may mention (default: ALARM only).
    mention_states: Option<Spanned<Vec<Spanned<String>>>>,
    max_attempts: Option<Spanned<u32>>,
    max_retry_age: Option<Spanned<String>>,
    /// Longest `Retry-After` honoured; a longer one is clamped (default 10m).
    max_retry_after: Option<Spanned<String>>,
}

type Values = Option<Spanned<Vec<Spanned<String>>>>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    name: Spanned<String>,
    alarm_name: Values,
    not_alarm_name: Values,
    severity: Values,
    not_severity: Values,
    state: Values,
    not_state: Values,
    topic: Values,
    not_topic: Values,
    account: Values,
    not_account: Values,
    region: Values,
    not_region: Values,
    source: Values,
    not_source: Values,
    detail_type: Values,
    not_detail_type: Values,
    to: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default, rename = "continue")]
    continue_: bool,
    #[serde(default = "yes")]
    enabled: bool,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDefaultRoute {
    to: Spanned<Vec<Spanned<String>>>,
}

pub(super) fn parse(text: &str, secrets: Secrets) -> Result<(Config, Vec<Problem>), ConfigError> {
    let mut v = Validator { text, problems: Vec::new(), secrets };
    let raw: RawConfig = match toml::from_str(text) {
        Ok(raw) => raw,
        Err(e) => {
            let (line, column) = e.span().map(|s| v.line_col(s.start)).unwrap_or((1, 1));
            return Err(ConfigError::Invalid(vec![Problem {
                line,
                column,
                message: e.message().to_string(),
                warning: false,
            }]));
        }
    };
    let config = v.build(raw);
    v.problems.sort_by_key(|p| (p.line, p.column));
    let errors = v.problems.iter().any(|p| !p.warning);
    match config {
        Some(config) if !errors => Ok((config, v.problems)),
        _ => Err(ConfigError::Invalid(v.problems)),
    }
}

struct Validator<'t> {
    text: &'t str,
    problems: Vec<Problem>,
    secrets: Secrets,
}

impl Validator<'_> {
    fn line_col(&self, offset: usize) -> (usize, usize) {
        let before = &self.text[..offset.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map(|l| l.chars().count()).unwrap_or(0) + 1;
        (line, column)
    }

    fn error<T>(&mut self, at: &Spanned<T>, message: impl Into<String>) {
        self.push(at.span().start, message.into(), false);
    }

    fn warn<T>(&mut self, at: &Spanned<T>, message: impl Into<String>) {
        self.push(at.span().start, message.into(), true);
    }

    fn push(&mut self, offset: usize, message: String, warning: bool) {
        let (line, column) = self.line_col(offset);
        self.problems.push(Problem { line, column, message, warning });
    }

    fn build(&mut self, raw: RawConfig) -> Option<Config> {
        let sns = self.sns(raw.sns);
        let severity = self.severity(raw.severity);
        // Names declared in the file, valid or not: a route naming one that failed its own
        // validation must not get a second "unknown destination" error.
        let declared: HashSet<String> = raw.destinations.keys().cloned().collect();
        let destinations = self.destinations(raw.destinations, &declared);
        let no_rules = SeverityRules::new("warning".into(), Vec::new());
        let router =
            self.routes(raw.route, raw.default_route, &destinations, &declared, severity.as_ref().unwrap_or(&no_rules));
        Some(Config { sns: sns?, severity: severity?, destinations, router: router? })
    }

    fn sns(&mut self, raw: Spanned<RawSns>) -> Option<SnsConfig> {
        let raw = raw.into_inner();
        if raw.topics.get_ref().is_empty() {
            self.error(&raw.topics, "[sns].topics is empty: no topic could ever deliver");
        }
        let mut set = globset::GlobSetBuilder::new();
        for topic in raw.topics.get_ref() {
            let t = topic.get_ref();
            let arn_like = t.starts_with("arn:") || t.starts_with('*');
            let complete = t.matches(':').count() >= 5 || t.contains('*');
            if !arn_like || !complete {
                self.warn(topic, format!("topic {t:?} does not look like an SNS topic ARN (arn:aws:sns:REGION:ACCOUNT:NAME); it may never match"));
            }
            if raw.auto_confirm.unwrap_or(true) && !raw.allow_any_account && admits_any_account(t) {
                self.error(
                    topic,
                    format!("topic {t:?} admits any AWS account while auto_confirm is on: anyone's topic could subscribe this endpoint; pin the account (arn:aws:sns:REGION:ACCOUNT:NAME), or set [sns] allow_any_account = true"),
                );
            }
            match globset::Glob::new(t) {
                Ok(g) => {
                    set.add(g);
                }
                Err(e) => self.error(topic, format!("bad topic glob: {}", e.kind())),
            }
        }
        let max_age = match &raw.max_age {
            None => DEFAULT_MAX_AGE,
            Some(s) => match parse_duration(s.get_ref()) {
                Ok(d) if !d.is_zero() => d,
                Ok(_) => {
                    self.error(s, "max_age must be more than zero");
                    DEFAULT_MAX_AGE
                }
                Err(e) => {
                    self.error(s, e);
                    DEFAULT_MAX_AGE
                }
            },
        };
        let confirm = match raw.confirm.as_ref().map(|c| c.get_ref().as_str()) {
            None | Some("url") => ConfirmMode::Url,
            Some("api") => ConfirmMode::Api,
            Some(other) => {
                if let Some(c) = &raw.confirm {
                    self.error(c, format!("confirm = {other:?}: expected \"url\" or \"api\""));
                }
                ConfirmMode::Url
            }
        };
        let topics = set.build().ok()?;
        Some(SnsConfig { topics, max_age, auto_confirm: raw.auto_confirm.unwrap_or(true), confirm })
    }

    fn severity(&mut self, raw: Option<RawSeverity>) -> Option<SeverityRules> {
        let Some(raw) = raw else { return Some(SeverityRules::new("warning".into(), Vec::new())) };
        let default = raw.default.map(|d| d.into_inner().to_lowercase()).unwrap_or_else(|| "warning".into());
        let mut rules = Vec::new();
        for rule in raw.rules {
            let rule = rule.into_inner();
            let field = match SeverityField::parse(rule.field.get_ref()) {
                Some(f) => f,
                None => {
                    self.error(
                        &rule.field,
                        format!(
                            "unknown severity field {:?}; known: {}",
                            rule.field.get_ref(),
                            SeverityField::NAMES.join(", ")
                        ),
                    );
                    continue;
                }
            };
            match regex::Regex::new(rule.regex.get_ref()) {
                Ok(re) if re.captures_len() >= 2 => rules.push(SeverityRule { field, regex: re }),
                Ok(_) => {
                    self.error(&rule.regex, "severity regex needs a capture group: its first capture is the severity")
                }
                Err(e) => self.error(&rule.regex, format!("bad regex: {e}")),
            }
        }
        Some(SeverityRules::new(default, rules))
    }

    fn routes(
        &mut self,
        raw: Vec<Spanned<RawRoute>>,
        default_route: Option<Spanned<RawDefaultRoute>>,
        destinations: &BTreeMap<String, Destination>,
        declared: &HashSet<String>,
        severity: &SeverityRules,
    ) -> Option<Router> {
        let mut specs = Vec::new();
        let mut seen = HashSet::new();
        let mut catch_all: Option<String> = None;
        for spanned in raw {
            let route_start = spanned.span().start;
            let r = spanned.into_inner();
            let name = r.name.get_ref().clone();
            if !seen.insert(name.clone()) {
                self.error(&r.name, format!("duplicate route name {name:?}"));
            }
            if let Some(shadow) = &catch_all {
                self.push(
                    route_start,
                    format!("route {name:?} can never match: route {shadow:?} before it matches everything and does not continue"),
                    false,
                );
            }
            let to = match &r.to {
                Some(to) => self.destination_list(to, destinations, declared, &format!("route {name:?}")),
                None if r.enabled => {
                    self.push(route_start, format!("route {name:?} has no `to`"), false);
                    Vec::new()
                }
                None => Vec::new(),
            };
            let mut fields = Vec::new();
            // A route with an invalid value is already one error; it must not also look
            // like a catch-all and make every later route "never match".
            let mut broken = false;
            if let Some(sev) = &r.severity {
                for v in sev.get_ref() {
                    let text = v.get_ref();
                    let literal = !text.starts_with('~') && !text.contains(['*', '?', '[', '{']);
                    if literal && !severity.can_produce(&text.to_lowercase()) {
                        self.warn(
                            v,
                            format!("route {name:?}: severity {text:?} is produced by no [severity] rule or default; this value never matches"),
                        );
                    }
                }
            }
            let pairs = [
                (Field::AlarmName, r.alarm_name, r.not_alarm_name),
                (Field::Severity, r.severity, r.not_severity),
                (Field::State, r.state, r.not_state),
                (Field::Topic, r.topic, r.not_topic),
                (Field::Account, r.account, r.not_account),
                (Field::Region, r.region, r.not_region),
                (Field::Source, r.source, r.not_source),
                (Field::DetailType, r.detail_type, r.not_detail_type),
            ];
            for (field, any, none) in pairs {
                let any = any.map(|v| self.patterns(&name, field, false, v));
                let none = none.map(|v| self.patterns(&name, field, true, v));
                if let (Some(Some(a)), Some(Some(n))) = (&any, &none) {
                    if a.literals().iter().any(|l| n.literals().contains(l)) {
                        self.push(
                            route_start,
                            format!(
                                "route {name:?} can never match: a {} value is both required and excluded",
                                field.key()
                            ),
                            false,
                        );
                    }
                }
                let (Some(any), Some(none)) = (any.unwrap_or(Some(Vec::new())), none.unwrap_or(Some(Vec::new())))
                else {
                    broken = true;
                    continue;
                };
                if !any.is_empty() || !none.is_empty() {
                    fields.push(FieldPatterns { field, any, none });
                }
            }
            if fields.is_empty() && !broken && !r.continue_ && catch_all.is_none() {
                catch_all = Some(name.clone());
            }
            specs.push(RouteSpec { name, fields, to, continue_: r.continue_, enabled: r.enabled });
        }
        let default_to = match &default_route {
            Some(d) => self.destination_list(&d.get_ref().to, destinations, declared, "default_route"),
            None => Vec::new(),
        };
        if let (Some(d), Some(shadow)) = (&default_route, &catch_all) {
            self.push(
                d.span().start,
                format!("default_route is never used: route {shadow:?} matches everything and does not continue"),
                true,
            );
        }
        Router::new(specs, default_to).map_err(|e| self.push(0, e.to_string(), false)).ok()
    }

    fn destination_list(
        &mut self,
        to: &Spanned<Vec<Spanned<String>>>,
        destinations: &BTreeMap<String, Destination>,
        declared: &HashSet<String>,
        what: &str,
    ) -> Vec<String> {
        if to.get_ref().is_empty() {
            self.error(to, format!("{what}: `to` is empty"));
        }
        let mut out = Vec::new();
        for d in to.get_ref() {
            if destinations.contains_key(d.get_ref()) {
                if !out.contains(d.get_ref()) {
                    out.push(d.get_ref().clone());
                }
            } else if !declared.contains(d.get_ref()) {
                self.error(d, format!("{what}: unknown destination {:?}", d.get_ref()));
            }
        }
        out
    }

    /// Compiles one list of values; `None` when any of them is invalid (already reported).
    fn patterns(
        &mut self,
        route: &str,
        field: Field,
        negated: bool,
        values: Spanned<Vec<Spanned<String>>>,
    ) -> Option<Vec<Pattern>> {
        let key = if negated { format!("not_{}", field.key()) } else { field.key().to_string() };
        if values.get_ref().is_empty() {
            if !negated {
                self.error(&values, format!("route {route:?} can never match: {key} is an empty list"));
            }
            return None;
        }
        let mut out = Vec::new();
        let mut ok = true;
        for v in values.get_ref() {
            let text = v.get_ref();
            if field == Field::State
                && !text.starts_with('~')
                && !text.contains(['*', '?', '['])
                && !STATES.contains(&text.as_str())
            {
                self.error(
                    v,
                    format!("route {route:?}: {key} {text:?} is not a CloudWatch state ({})", STATES.join(", ")),
                );
                ok = false;
                continue;
            }
            let value = if field == Field::Severity { text.to_lowercase() } else { text.clone() };
            match Pattern::compile(&value) {
                Ok(p) => out.push(p),
                Err(e) => {
                    self.error(v, format!("route {route:?}: {key}: {e}"));
                    ok = false;
                }
            }
        }
        ok.then_some(out)
    }
}

/// Whether a topic pattern can match a topic of any AWS account. SNS topic ARNs have six
/// colon-separated parts and a topic name cannot contain a colon, so a six-part pattern
/// whose account part has no wildcard pins the account; anything else does not.
/// A pattern without wildcards, or one that cannot match an ARN at all, admits nothing
/// foreign (the second gets its own warning).
fn admits_any_account(pattern: &str) -> bool {
    let wild = |s: &str| s.contains(['*', '?', '[', '{']);
    if !wild(pattern) || !(pattern.starts_with("arn:") || pattern.starts_with(['*', '?', '[', '{'])) {
        return false;
    }
    let parts: Vec<&str> = pattern.split(':').collect();
    parts.len() != 6 || wild(parts[4])
}

/// `http://` to 127.0.0.0/8, ::1 or localhost: a sidecar or a test, not the network.
fn loopback_url(url: &str) -> bool {
    let Ok(uri) = url.parse::<http::Uri>() else { return false };
    let Some(host) = uri.host() else { return false };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn which_topic_patterns_admit_any_account() {
        assert!(admits_any_account("*"));
        assert!(admits_any_account("arn:aws:sns:*"));
        assert!(admits_any_account("arn:aws:sns:*:*:alarms"));
        assert!(admits_any_account("arn:aws:sns:us-east-1:1234*:alarms"));
        assert!(!admits_any_account("arn:aws:sns:*:123456789012:alarms-*"));
        assert!(!admits_any_account("arn:aws:sns:eu-west-1:210987654321:prod-alarms"));
        assert!(!admits_any_account("alarms-prod"));
    }

    #[test]
    fn loopback_urls() {
        assert!(
            loopback_url("http://127.0.0.1:9/x")
                && loopback_url("http://localhost/x")
                && loopback_url("http://[::1]:8/")
        );
        assert!(!loopback_url("http://hooks.example.com/x") && !loopback_url("http://10.0.0.1/x"));
    }
}
