//! What cluster mode calls things in NATS, all under one prefix (`--nats-prefix`, default
//! `webhook-relay`), so an operator can find them with `nats stream ls` and several
//! gateways can share one NATS:
//!
//! | name | kind | holds |
//! |---|---|---|
//! | `<p>-msgs` | stream, subjects `<p>.msgs.<dest>` | one message per pending delivery |
//! | `<p>-seen` | bucket, TTL = dedup horizon | MessageIds accepted (one dedup for all) |
//! | `<p>-leases` | bucket, TTL 15 s | which replica posts for each destination |
//! | `<p>-members` | bucket, TTL 10 s | live replicas (to share destinations fairly) |
//! | `<p>-threads` | bucket | alarm → Slack thread (Web API destinations) |
//! | `<p>-dead` | bucket | dead letters |
//! | `<p>-replay` | bucket | dead letters an operator asked to replay |
//!
//! Destination names and other keys are hex-encoded where they become subject tokens or
//! keys: routes.toml names may hold characters NATS gives meaning to (`.`, `*`, `>`).

pub const DEFAULT_PREFIX: &str = "webhook-relay";

#[derive(Debug, Clone)]
pub struct Names {
    prefix: String,
}

impl Names {
    /// The prefix must be a valid stream and bucket name part: letters, digits, `-`, `_`.
    pub fn new(prefix: &str) -> Result<Names, String> {
        if prefix.is_empty() || !prefix.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            return Err(format!("--nats-prefix {prefix:?}: use letters, digits, '-' and '_' only"));
        }
        Ok(Names { prefix: prefix.to_string() })
    }

    pub fn stream(&self) -> String {
        format!("{}-msgs", self.prefix)
    }

    /// Every delivery subject (the stream's filter).
    pub fn all_subjects(&self) -> String {
        format!("{}.msgs.>", self.prefix)
    }

    /// The subject a destination's deliveries are published on.
    pub fn subject(&self, destination: &str) -> String {
        format!("{}.msgs.{}", self.prefix, hex(destination.as_bytes()))
    }

    /// The destination a delivery subject belongs to.
    pub fn destination_of(&self, subject: &str) -> Option<String> {
        let token = subject.strip_prefix(&self.prefix)?.strip_prefix(".msgs.")?;
        String::from_utf8(unhex(token)?).ok()
    }

    pub fn bucket(&self, what: &str) -> String {
        format!("{}-{what}", self.prefix)
    }
}

/// A key or subject token made of characters NATS accepts everywhere.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_round_trip_through_subjects_whatever_their_characters() {
        let n = Names::new("webhook-relay").unwrap();
        for dest in ["ops", "a.b", "x*>y", "ünï"] {
            let subject = n.subject(dest);
            assert!(!subject["webhook-relay.msgs.".len()..].contains(['.', '*', '>']), "{subject}");
            assert_eq!(n.destination_of(&subject).as_deref(), Some(dest));
        }
        assert_eq!(n.destination_of("other.msgs.6f7073"), None);
    }

    #[test]
    fn prefixes_that_would_make_bad_names_are_refused() {
        assert!(Names::new("team_a-relay2").is_ok());
        for bad in ["", "a.b", "a b", "a*", "a>"] {
            assert!(Names::new(bad).is_err(), "{bad:?}");
        }
    }
}
