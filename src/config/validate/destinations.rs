//! Destinations: where each one posts (an incoming webhook, or the Web API with a bot
//! token), its secrets (never echoed), rate, retry budget, mentions, and fallbacks
//! (no cycles).

use std::collections::{BTreeMap, HashSet};

use toml::Spanned;

use super::{loopback_url, RawDestination, Validator};
use crate::config::duration::{parse_duration, parse_rate};
use crate::config::secret::{self, Secret, SecretSource};
use crate::config::{
    AppTarget, Destination, Lifecycle, RetryBudget, Secrets, DEFAULT_BURST, DEFAULT_LIFECYCLE_TTL,
    DEFAULT_MAX_ATTEMPTS, DEFAULT_MAX_RETRY_AFTER, DEFAULT_MAX_RETRY_AGE, DEFAULT_RATE, STATES,
};

impl Validator<'_> {
    pub(super) fn destinations(
        &mut self,
        raw: BTreeMap<String, Spanned<RawDestination>>,
        names: &HashSet<String>,
    ) -> BTreeMap<String, Destination> {
        let mut out = BTreeMap::new();
        // Fallbacks as written, to find cycles once every destination is read.
        let mut fallbacks: BTreeMap<String, Spanned<String>> = BTreeMap::new();
        for (name, spanned) in raw {
            let spanned_at = Spanned::new(spanned.span(), ());
            let d = spanned.into_inner();
            if let Some(fb) = &d.fallback {
                fallbacks.insert(name.clone(), fb.clone());
            }
            let Some((url, source, app)) = self.target(&name, &d, &spanned_at) else { continue };
            let rate = match &d.rate {
                None => parse_rate(DEFAULT_RATE).ok(),
                Some(r) => parse_rate(r.get_ref()).map_err(|e| self.error(r, e)).ok(),
            };
            let burst = d.burst.as_ref().map(|b| *b.get_ref()).unwrap_or(DEFAULT_BURST);
            if let Some(b) = d.burst.as_ref().filter(|b| *b.get_ref() == 0) {
                self.error(b, "burst must be at least 1");
            }
            if let Some(fb) = &d.fallback {
                if !names.contains(fb.get_ref()) {
                    self.error(fb, format!("destination {name}: fallback {:?} is not a destination", fb.get_ref()));
                } else if fb.get_ref() == &name {
                    self.error(fb, format!("destination {name}: fallback is itself"));
                }
            }
            let max_attempts = d.max_attempts.as_ref().map(|m| *m.get_ref()).unwrap_or(DEFAULT_MAX_ATTEMPTS);
            if let Some(m) = d.max_attempts.as_ref().filter(|m| *m.get_ref() == 0) {
                self.error(m, "max_attempts must be at least 1");
            }
            let max_age = match &d.max_retry_age {
                None => DEFAULT_MAX_RETRY_AGE,
                Some(s) => parse_duration(s.get_ref()).map_err(|e| self.error(s, e)).unwrap_or(DEFAULT_MAX_RETRY_AGE),
            };
            let max_retry_after = match &d.max_retry_after {
                None => DEFAULT_MAX_RETRY_AFTER,
                Some(s) => match parse_duration(s.get_ref()) {
                    Ok(v) if !v.is_zero() => v,
                    Ok(_) => {
                        self.error(s, "max_retry_after must be more than zero");
                        DEFAULT_MAX_RETRY_AFTER
                    }
                    Err(e) => {
                        self.error(s, e);
                        DEFAULT_MAX_RETRY_AFTER
                    }
                },
            };
            let mention_states = match &d.mention_states {
                None => vec!["ALARM".to_string()],
                Some(states) => {
                    for st in states.get_ref().iter().filter(|st| !STATES.contains(&st.get_ref().as_str())) {
                        self.error(
                            st,
                            format!(
                                "destination {name}: mention_states {:?} is not a CloudWatch state ({})",
                                st.get_ref(),
                                STATES.join(", ")
                            ),
                        );
                    }
                    states.get_ref().iter().map(|st| st.get_ref().clone()).collect()
                }
            };
            let Some(rate) = rate else { continue };
            out.insert(
                name.clone(),
                Destination {
                    name,
                    url,
                    source,
                    app,
                    rate,
                    burst: burst.max(1),
                    fallback: d.fallback.map(|f| f.into_inner()),
                    mention_here: d.mention_here.iter().map(|s| s.to_lowercase()).collect(),
                    mention_channel: d.mention_channel.iter().map(|s| s.to_lowercase()).collect(),
                    mention_states,
                    retry: RetryBudget { max_attempts: max_attempts.max(1), max_age, max_retry_after },
                },
            );
        }
        self.fallback_cycles(&fallbacks);
        out
    }

    /// Where a destination posts: an incoming webhook (`url`), or the Web API (`token` and
    /// `channel`). Returns the URL (empty for the Web API), where its secret comes from,
    /// and the Web API settings. Never echoes a secret's value.
    fn target(
        &mut self,
        name: &str,
        d: &RawDestination,
        at: &Spanned<()>,
    ) -> Option<(Secret, SecretSource, Option<AppTarget>)> {
        match (&d.url, &d.token) {
            (Some(url), None) => {
                for extra in [&d.channel, &d.lifecycle, &d.lifecycle_ttl].into_iter().flatten() {
                    self.error(extra, format!("destination {name}: channel and lifecycle need token = ..., not url"));
                }
                let (source, secret) = self.secret(name, url, "webhook URL", "http://unresolved.invalid/")?;
                let u = secret.expose();
                if !(u.starts_with("https://") || u.starts_with("http://")) || u.parse::<http::Uri>().is_err() {
                    // Never echo the value: it may be a secret with a typo.
                    self.error(url, format!("destination {name}: url ({source}) is not an http(s) URL"));
                    return None;
                }
                if u.starts_with("http://") && !loopback_url(u) {
                    self.warn(
                        url,
                        format!("destination {name}: url ({source}) is plain http:// to a non-loopback host; the webhook secret and alarms cross the network unencrypted"),
                    );
                }
                Some((secret, source, None))
            }
            (None, Some(token)) => {
                let (source, secret) = self.secret(name, token, "bot token", "xoxb-unresolved")?;
                let Some(channel) = &d.channel else {
                    self.push(
                        at.span().start,
                        format!("destination {name}: token needs channel = \"C0123456789\" (or \"#name\")"),
                        false,
                    );
                    return None;
                };
                let lifecycle = match d.lifecycle.as_ref().map(|l| l.get_ref().as_str()) {
                    None | Some("thread+update") => Lifecycle::ThreadAndUpdate,
                    Some("thread") => Lifecycle::Thread,
                    Some("update") => Lifecycle::Update,
                    Some("off") => Lifecycle::Off,
                    Some(other) => {
                        if let Some(l) = &d.lifecycle {
                            self.error(l, format!("destination {name}: lifecycle {other:?}: expected \"thread+update\", \"thread\", \"update\" or \"off\""));
                        }
                        return None;
                    }
                };
                let ttl = match &d.lifecycle_ttl {
                    None => DEFAULT_LIFECYCLE_TTL,
                    Some(t) => parse_duration(t.get_ref()).map_err(|e| self.error(t, e)).ok()?,
                };
                let app =
                    AppTarget { token: secret, channel: channel.get_ref().clone(), lifecycle, lifecycle_ttl: ttl };
                Some((Secret::new(String::new()), source, Some(app)))
            }
            (Some(url), Some(_)) => {
                self.error(
                    url,
                    format!("destination {name}: either url (an incoming webhook) or token (the Web API), not both"),
                );
                None
            }
            (None, None) => {
                self.push(at.span().start, format!("destination {name}: needs url = ... (incoming webhook) or token = ... and channel = ... (Web API)"), false);
                None
            }
        }
    }

    /// Resolves an `env:`/`file:`/literal secret; a literal one is a warning.
    fn secret(
        &mut self,
        name: &str,
        spec: &Spanned<String>,
        what: &str,
        placeholder: &str,
    ) -> Option<(SecretSource, Secret)> {
        let (source, resolved) = secret::resolve(spec.get_ref());
        let secret = match resolved {
            Ok(s) => s,
            Err(e) if self.secrets == Secrets::Optional => {
                self.warn(spec, format!("destination {name}: {e} (ignored: nothing is sent)"));
                Secret::new(placeholder.into())
            }
            Err(e) => {
                self.error(spec, format!("destination {name}: {e}"));
                return None;
            }
        };
        if source == SecretSource::Literal {
            self.warn(
                spec,
                format!("destination {name}: {what} is written in the file; prefer \"env:NAME\" or \"file:/path\""),
            );
        }
        Some((source, secret))
    }

    /// A fallback is followed one hop at most at run time, so a cycle cannot loop there; it
    /// is still a mistake (each destination's alarms land on a webhook that falls back to
    /// the first), so it is reported once, at the first member's `fallback` line.
    fn fallback_cycles(&mut self, fallbacks: &BTreeMap<String, Spanned<String>>) {
        let mut reported: HashSet<&str> = HashSet::new();
        for start in fallbacks.keys() {
            let mut path = vec![start.as_str()];
            let mut at = start.as_str();
            while let Some(next) = fallbacks.get(at).map(|f| f.get_ref().as_str()) {
                if next == at {
                    break; // self-fallback, already reported
                }
                if let Some(i) = path.iter().position(|p| *p == next) {
                    let cycle = &path[i..];
                    if cycle.len() > 1 && !cycle.iter().any(|c| reported.contains(c)) {
                        reported.extend(cycle.iter().copied());
                        let first = cycle.iter().min().copied().unwrap_or(next);
                        let shown: Vec<&str> = cycle.iter().copied().chain(std::iter::once(cycle[0])).collect();
                        if let Some(at) = fallbacks.get(first) {
                            self.error(at, format!("fallback cycle: {}", shown.join(" -> ")));
                        }
                    }
                    break;
                }
                path.push(next);
                at = next;
            }
        }
    }
}
