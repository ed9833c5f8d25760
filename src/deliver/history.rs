//! Alarm history per destination: when each alarm entered ALARM, so an OK can say how long
//! it lasted, and the newest state change posted, so one that SNS delivers after a newer
//! one (SNS does not guarantee order) is marked late instead of passed off as current.

use std::time::{Duration, SystemTime};

use crate::model::Notification;

/// What the worker knows of a notification's place in its alarm's history.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct History {
    /// How long the alarm was in ALARM, for an OK.
    pub lasted: Option<Duration>,
    /// SNS delivered it after a newer state change of the same alarm was already posted.
    pub late: bool,
}

/// Per (destination, alarm): the newest state change posted, and since when it is in
/// ALARM.
#[derive(Clone, Copy)]
struct Track {
    last_change: SystemTime,
    alarm_since: Option<SystemTime>,
}

/// Keyed by a hash, so an entry costs a few dozen bytes; bounded because a fleet has far
/// fewer alarms than this, while a load test has one per message.
#[derive(Clone)]
pub struct AlarmHistory {
    tracks: moka::sync::Cache<u64, Track>,
}

const CAPACITY: u64 = 10_000;

impl Default for AlarmHistory {
    fn default() -> Self {
        AlarmHistory {
            tracks: moka::sync::Cache::builder()
                .max_capacity(CAPACITY)
                .time_to_idle(Duration::from_secs(7 * 86400))
                .build(),
        }
    }
}

impl AlarmHistory {
    /// Places a notification for `destination` in its alarm's history. A re-render of the
    /// same notification (a retry) is not late.
    pub fn track(&self, destination: &str, n: &Notification) -> History {
        let Some(a) = n.alarm.as_ref() else { return History::default() };
        let key = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            (destination, a.arn.as_deref().unwrap_or(&a.name)).hash(&mut h);
            h.finish()
        };
        let at = a.state_change_time.as_deref().and_then(parse_cloudwatch_time).unwrap_or_else(SystemTime::now);
        let prev = self.tracks.get(&key);
        if prev.is_some_and(|t| at < t.last_change) {
            return History { lasted: None, late: true };
        }
        let since = prev.and_then(|t| t.alarm_since);
        let (alarm_since, lasted) = match a.new_state.as_str() {
            "ALARM" => (since.or(Some(at)), None),
            "OK" => (None, since.and_then(|s| at.duration_since(s).ok())),
            _ => (since, None),
        };
        self.tracks.insert(key, Track { last_change: at, alarm_since });
        History { lasted, late: false }
    }
}

/// CloudWatch writes `2021-11-10T02:45:55.640+0000`.
fn parse_cloudwatch_time(s: &str) -> Option<SystemTime> {
    let fixed = match s.strip_suffix("+0000") {
        Some(prefix) => format!("{prefix}Z"),
        None => s.to_string(),
    };
    humantime::parse_rfc3339_weak(&fixed).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cloudwatch_times() {
        assert!(parse_cloudwatch_time("2021-11-10T02:45:55.640+0000").is_some());
        assert!(parse_cloudwatch_time("garbage").is_none());
    }
}
