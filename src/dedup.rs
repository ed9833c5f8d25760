//! MessageId memory: SNS delivers at least once, so the same message can arrive twice.
//! Each id is remembered until the moment its message would be refused as too old anyway
//! (Timestamp + max_age + clock skew), so the memory always covers `max_age`, also after
//! a reload changes it. The durable copy lives in the store; this is the fast path, and a
//! later shared backend for several replicas goes behind the same three calls.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use moka::sync::Cache;
use moka::Expiry;

/// Unix seconds at which the entry may be forgotten.
type ExpiresAt = u64;

struct UntilExpiry;

impl Expiry<String, ExpiresAt> for UntilExpiry {
    fn expire_after_create(&self, _key: &String, value: &ExpiresAt, _now: std::time::Instant) -> Option<Duration> {
        Some(Duration::from_secs(value.saturating_sub(unix_now())))
    }
}

pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// How long past a message's Timestamp its id must be remembered.
pub fn expires_at(timestamp: SystemTime, max_age: Duration) -> u64 {
    let t = timestamp.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    // Clock skew on both sides, and never less than max_age from now (an old-but-allowed
    // message replayed later must still be caught).
    (t + max_age.as_secs() + 600).max(unix_now() + max_age.as_secs())
}

pub struct Dedup {
    seen: Cache<String, ExpiresAt>,
}

/// Result of [`Dedup::claim`].
#[derive(Debug, PartialEq, Eq)]
pub enum Claim {
    /// First time: the caller owns this id until it commits or [`Dedup::release`]s it.
    New,
    Duplicate,
}

impl Dedup {
    pub fn new(capacity: u64) -> Dedup {
        Dedup { seen: Cache::builder().max_capacity(capacity).expire_after(UntilExpiry).build() }
    }

    /// Atomically records `id` unless it is already known; concurrent claims of one id
    /// get exactly one `New`.
    pub fn claim(&self, id: &str, expires_at: u64) -> Claim {
        let entry = self.seen.entry_by_ref(id).or_insert(expires_at);
        if entry.is_fresh() {
            Claim::New
        } else {
            Claim::Duplicate
        }
    }

    /// Forgets a claim whose message could not be stored, so SNS's retry is accepted.
    pub fn release(&self, id: &str) {
        self.seen.invalidate(id);
    }

    /// Restores ids from the durable store at start.
    pub fn remember(&self, id: String, expires_at: u64) {
        if expires_at > unix_now() {
            self.seen.insert(id, expires_at);
        }
    }

    pub fn len(&self) -> u64 {
        self.seen.run_pending_tasks();
        self.seen.entry_count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claim_then_duplicate_then_release() {
        let d = Dedup::new(100);
        let exp = unix_now() + 3600;
        assert_eq!(d.claim("a", exp), Claim::New);
        assert_eq!(d.claim("a", exp), Claim::Duplicate);
        assert_eq!(d.claim("b", exp), Claim::New);
        d.release("a");
        assert_eq!(d.claim("a", exp), Claim::New);
    }

    #[test]
    fn concurrent_claims_yield_one_owner() {
        let d = std::sync::Arc::new(Dedup::new(100));
        let exp = unix_now() + 3600;
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let d = d.clone();
                std::thread::spawn(move || d.claim("same", exp) == Claim::New)
            })
            .collect();
        let owners = handles.into_iter().map(|h| h.join().unwrap()).filter(|x| *x).count();
        assert_eq!(owners, 1);
    }

    #[test]
    fn expired_entries_are_not_restored() {
        let d = Dedup::new(100);
        d.remember("old".into(), unix_now().saturating_sub(1));
        assert_eq!(d.claim("old", unix_now() + 60), Claim::New);
    }

    #[test]
    fn expiry_covers_max_age_from_now() {
        let max_age = Duration::from_secs(3600);
        let long_ago = UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert!(expires_at(long_ago, max_age) >= unix_now() + 3600);
    }
}
