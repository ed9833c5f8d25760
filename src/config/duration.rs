//! The one place durations (`"1h"`, `"90s"`) and rates (`"1/s"`, `"20/m"`) are parsed.

use std::num::NonZeroU32;
use std::time::Duration;

/// `humantime` syntax: `"1h"`, `"15m"`, `"1h 30m"`, `"250ms"`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| format!("bad duration {s:?}: {e}"))
}

/// A rate of `count` events per `per`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub count: NonZeroU32,
    pub per: Duration,
}

impl Rate {
    /// Time between two events at this rate.
    pub fn interval(&self) -> Duration {
        self.per / self.count.get()
    }
}

/// `N/s`, `N/m` or `N/h` with N a positive integer.
pub fn parse_rate(s: &str) -> Result<Rate, String> {
    let bad = || format!("bad rate {s:?}: expected N/s, N/m or N/h");
    let (n, unit) = s.trim().split_once('/').ok_or_else(bad)?;
    let count: u32 = n.trim().parse().map_err(|_| bad())?;
    let count = NonZeroU32::new(count).ok_or_else(bad)?;
    let per = match unit.trim() {
        "s" => Duration::from_secs(1),
        "m" => Duration::from_secs(60),
        "h" => Duration::from_secs(3600),
        _ => return Err(bad()),
    };
    Ok(Rate { count, per })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration(" 90s ").unwrap(), Duration::from_secs(90));
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn rates() {
        let r = parse_rate("1/s").unwrap();
        assert_eq!(r.interval(), Duration::from_secs(1));
        assert_eq!(parse_rate("20/m").unwrap().interval(), Duration::from_secs(3));
        assert_eq!(parse_rate("2/h").unwrap().interval(), Duration::from_secs(1800));
        for bad in ["0/s", "1/d", "x/s", "1s", "-1/s"] {
            assert!(parse_rate(bad).is_err(), "{bad}");
        }
    }
}
