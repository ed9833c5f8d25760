//! Alarm history per destination: when each alarm entered ALARM, so an OK can say how long
//! it lasted, and the newest state change posted, so one that SNS delivers after a newer
//! one (SNS does not guarantee order) is marked late instead of passed off as current.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use crate::model::Notification;
use crate::queue::SeqHasher;

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
    /// Last read or written: an entry idle for `IDLE` is forgotten.
    touched: Instant,
}

/// Keyed by a hash, so an entry costs a few dozen bytes; bounded because a fleet has far
/// fewer alarms than this, while a load test has one per message.
///
/// Two generations of plain hash maps rather than moka: this runs for every delivery, and
/// a moka insert cost about five allocations (heaptrack, BENCHMARKS.md) where a map that
/// keeps its capacity costs none. When the current generation holds half the capacity it
/// becomes the previous one (the old previous is dropped, keeping its allocation for
/// reuse); an entry read from the previous generation moves back to the current. So the
/// alarms seen in the last `CAPACITY / 2` to `CAPACITY` deliveries are remembered: the
/// least recently used are forgotten first, as moka's bound did.
#[derive(Clone, Default)]
pub struct AlarmHistory {
    tracks: Arc<Mutex<Generations>>,
}

type Map = HashMap<u64, Track, BuildHasherDefault<SeqHasher>>;

#[derive(Default)]
struct Generations {
    current: Map,
    previous: Map,
}

const CAPACITY: usize = 10_000;
const IDLE: Duration = Duration::from_secs(7 * 86400);

impl Generations {
    fn get(&mut self, key: u64, now: Instant) -> Option<Track> {
        let t = match self.current.get(&key) {
            Some(t) => *t,
            None => self.previous.remove(&key)?,
        };
        (now.duration_since(t.touched) < IDLE).then_some(t)
    }

    fn insert(&mut self, key: u64, track: Track) {
        if self.current.len() >= CAPACITY / 2 && !self.current.contains_key(&key) {
            std::mem::swap(&mut self.current, &mut self.previous);
            self.current.clear();
        }
        self.current.insert(key, track);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.current.len() + self.previous.len()
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
        let now = Instant::now();
        let mut tracks = self.tracks.lock().unwrap_or_else(|p| p.into_inner());
        let prev = tracks.get(key, now);
        if let Some(t) = prev.filter(|t| at < t.last_change) {
            // Still remembered (and moved back to the current generation).
            tracks.insert(key, Track { touched: now, ..t });
            return History { lasted: None, late: true };
        }
        let since = prev.and_then(|t| t.alarm_since);
        let (alarm_since, lasted) = match a.new_state.as_str() {
            "ALARM" => (since.or(Some(at)), None),
            "OK" => (None, since.and_then(|s| at.duration_since(s).ok())),
            _ => (since, None),
        };
        tracks.insert(key, Track { last_change: at, alarm_since, touched: now });
        History { lasted, late: false }
    }
}

/// CloudWatch writes `2021-11-10T02:45:55.640+0000`. Rewritten to `…Z` on the stack: this
/// runs for every delivery.
fn parse_cloudwatch_time(s: &str) -> Option<SystemTime> {
    let Some(prefix) = s.strip_suffix("+0000") else { return humantime::parse_rfc3339_weak(s).ok() };
    let mut buf = [0u8; 40];
    let fixed = buf.get_mut(..prefix.len() + 1)?;
    fixed[..prefix.len()].copy_from_slice(prefix.as_bytes());
    fixed[prefix.len()] = b'Z';
    humantime::parse_rfc3339_weak(std::str::from_utf8(fixed).ok()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alarm(name: &str, state: &str, at: &str) -> Notification {
        let message = serde_json::json!({"AlarmName": name, "NewStateValue": state, "StateChangeTime": at});
        Notification::from_envelope(crate::model::Envelope {
            message_id: "m".into(),
            topic_arn: "arn:aws:sns:us-east-1:123456789012:t".into(),
            subject: None,
            message: message.to_string(),
            timestamp: "2024-01-01T00:00:00Z".into(),
            fallback_from: None,
        })
    }

    #[test]
    fn lasted_late_and_bounded() {
        let h = AlarmHistory::default();
        assert_eq!(h.track("d", &alarm("a", "ALARM", "2024-01-01T00:00:00.000+0000")), History::default());
        let ok = h.track("d", &alarm("a", "OK", "2024-01-01T00:05:00.000+0000"));
        assert_eq!(ok, History { lasted: Some(Duration::from_secs(300)), late: false });
        // SNS delivered an older state change after the newer one: late.
        assert!(h.track("d", &alarm("a", "ALARM", "2024-01-01T00:01:00.000+0000")).late);
        // Another destination has its own history.
        assert!(!h.track("e", &alarm("a", "ALARM", "2024-01-01T00:01:00.000+0000")).late);
        // A load test's worth of other alarms: the map stays bounded, and the alarm seen
        // within the last CAPACITY / 2 deliveries is still known (moved back when read).
        for i in 0..3 * CAPACITY {
            h.track("d", &alarm(&format!("x{i}"), "ALARM", "2024-01-01T00:00:00.000+0000"));
            if i % (CAPACITY / 4) == 0 {
                assert!(h.track("d", &alarm("a", "ALARM", "2024-01-01T00:01:00.000+0000")).late, "forgotten at {i}");
            }
        }
        assert!(h.tracks.lock().unwrap().len() <= CAPACITY);
        // Not read for 3 × CAPACITY deliveries: forgotten.
        let fresh = AlarmHistory::default();
        fresh.track("d", &alarm("b", "ALARM", "2024-01-01T00:00:00.000+0000"));
        for i in 0..CAPACITY {
            fresh.track("d", &alarm(&format!("y{i}"), "ALARM", "2024-01-01T00:00:00.000+0000"));
        }
        assert!(!fresh.track("d", &alarm("b", "ALARM", "2023-01-01T00:00:00.000+0000")).late);
    }

    #[test]
    fn cloudwatch_times() {
        assert!(parse_cloudwatch_time("2021-11-10T02:45:55.640+0000").is_some());
        assert!(parse_cloudwatch_time("garbage").is_none());
        assert!(parse_cloudwatch_time(&format!("{}+0000", "9".repeat(60))).is_none());
        assert_eq!(
            parse_cloudwatch_time("2021-11-10T02:45:55.640+0000"),
            humantime::parse_rfc3339_weak("2021-11-10T02:45:55.640Z").ok()
        );
    }
}
