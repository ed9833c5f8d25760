//! MessageId memory: SNS delivers at least once, so the same message can arrive twice.
//! Each id is remembered until the moment its message would be refused as too old anyway
//! (Timestamp + max_age + clock skew), so the memory always covers `max_age`, also after
//! a reload changes it. The durable copy lives in the store; this is the fast path, and a
//! later shared backend for several replicas goes behind the same calls.
//!
//! Why not moka (used for certificates): measured at ~400 bytes per id, one million ids
//! took 398 MiB. Here an id is a 128-bit digest and a 32-bit expiry in a sharded hash map,
//! about 40 bytes each, and expiry is a periodic sweep rather than per-entry timers.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A MessageId, as the first 128 bits of its SHA-256. Stable across restarts (it keys the
/// durable copy) and collision-free in practice; ids are AWS-generated, not attacker-chosen
/// (only signed messages reach dedup).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MessageKey(pub u128);

impl MessageKey {
    pub fn of(message_id: &str) -> MessageKey {
        let d = ring::digest::digest(&ring::digest::SHA256, message_id.as_bytes());
        let mut b = [0u8; 16];
        b.copy_from_slice(&d.as_ref()[..16]);
        MessageKey(u128::from_le_bytes(b))
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

/// The keys are already uniform digests: hashing them again would only cost time.
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes.iter().take(8) {
            self.0 = (self.0 << 8) | b as u64;
        }
    }
    fn write_u128(&mut self, v: u128) {
        self.0 = v as u64;
    }
}

type Map = HashMap<u128, u32, BuildHasherDefault<KeyHasher>>;

const SHARDS: usize = 16;
const SWEEP_EVERY_SECS: u32 = 60;

struct Shard {
    map: Map,
    next_sweep: u32,
}

pub struct Dedup {
    shards: Vec<Mutex<Shard>>,
    /// Per shard; beyond it the entries closest to expiry are dropped (and a warning logged),
    /// so memory stays bounded even if more unique messages arrive within max_age.
    shard_capacity: usize,
}

/// Result of [`Dedup::claim`].
#[derive(Debug, PartialEq, Eq)]
pub enum Claim {
    /// First time: the caller owns this id until it commits or [`Dedup::release`]s it.
    New,
    Duplicate,
}

fn secs32(unix: u64) -> u32 {
    unix.min(u32::MAX as u64) as u32
}

impl Dedup {
    pub fn new(capacity: u64) -> Dedup {
        Dedup {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard { map: Map::default(), next_sweep: 0 })).collect(),
            shard_capacity: (capacity as usize / SHARDS).max(1),
        }
    }

    fn shard(&self, key: MessageKey) -> std::sync::MutexGuard<'_, Shard> {
        let i = (key.0 >> 120) as usize % SHARDS;
        self.shards[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Atomically records `key` unless it is already known and unexpired; concurrent
    /// claims of one key get exactly one `New`.
    pub fn claim(&self, key: MessageKey, expires_at: u64) -> Claim {
        let now = secs32(unix_now());
        let cap = self.shard_capacity;
        let mut shard = self.shard(key);
        if now >= shard.next_sweep || shard.map.len() >= cap {
            shard.sweep(now, cap);
        }
        match shard.map.get(&key.0) {
            Some(&exp) if exp > now => Claim::Duplicate,
            _ => {
                shard.map.insert(key.0, secs32(expires_at));
                Claim::New
            }
        }
    }

    /// Forgets a claim whose message could not be stored, so SNS's retry is accepted.
    pub fn release(&self, key: MessageKey) {
        self.shard(key).map.remove(&key.0);
    }

    /// Restores ids from the durable store at start.
    pub fn remember(&self, key: MessageKey, expires_at: u64) {
        if expires_at > unix_now() {
            self.shard(key).map.insert(key.0, secs32(expires_at));
        }
    }

    /// Whether `key` is remembered and unexpired.
    pub fn contains(&self, key: MessageKey) -> bool {
        let now = secs32(unix_now());
        self.shard(key).map.get(&key.0).is_some_and(|&exp| exp > now)
    }

    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().map(|s| s.map.len()).unwrap_or(0)).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Shard {
    fn sweep(&mut self, now: u32, cap: usize) {
        self.map.retain(|_, exp| *exp > now);
        self.next_sweep = now + SWEEP_EVERY_SECS;
        if self.map.len() >= cap {
            // Over capacity with live entries: keep the later-expiring half.
            let mut exps: Vec<u32> = self.map.values().copied().collect();
            let mid = exps.len() / 2;
            let (_, median, _) = exps.select_nth_unstable(mid);
            let median = *median;
            let before = self.map.len();
            self.map.retain(|_, exp| *exp > median);
            tracing::warn!(
                dropped = before - self.map.len(),
                "MessageId memory full; forgot the ids closest to expiry"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(s: &str) -> MessageKey {
        MessageKey::of(s)
    }

    #[test]
    fn claim_then_duplicate_then_release() {
        let d = Dedup::new(100);
        let exp = unix_now() + 3600;
        assert_eq!(d.claim(k("a"), exp), Claim::New);
        assert_eq!(d.claim(k("a"), exp), Claim::Duplicate);
        assert_eq!(d.claim(k("b"), exp), Claim::New);
        d.release(k("a"));
        assert_eq!(d.claim(k("a"), exp), Claim::New);
    }

    #[test]
    fn concurrent_claims_yield_one_owner() {
        let d = std::sync::Arc::new(Dedup::new(100));
        let exp = unix_now() + 3600;
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let d = d.clone();
                std::thread::spawn(move || d.claim(k("same"), exp) == Claim::New)
            })
            .collect();
        let owners = handles.into_iter().map(|h| h.join().unwrap()).filter(|x| *x).count();
        assert_eq!(owners, 1);
    }

    #[test]
    fn expired_entries_are_forgotten() {
        let d = Dedup::new(100);
        d.remember(k("old"), unix_now().saturating_sub(1));
        assert_eq!(d.claim(k("old"), unix_now() + 60), Claim::New);
        // An entry that expired after being claimed no longer counts as a duplicate.
        let d = Dedup::new(100);
        assert_eq!(d.claim(k("x"), unix_now().saturating_sub(5)), Claim::New);
        assert_eq!(d.claim(k("x"), unix_now() + 60), Claim::New);
    }

    #[test]
    fn capacity_is_bounded_keeping_the_latest_expiries() {
        let d = Dedup::new(SHARDS as u64 * 10);
        let now = unix_now();
        for i in 0..1000u64 {
            d.claim(k(&i.to_string()), now + 100 + i);
        }
        assert!(d.len() <= SHARDS * 10, "{}", d.len());
        // The most recent (latest-expiring) ids are still remembered.
        assert_eq!(d.claim(k("999"), now + 5000), Claim::Duplicate);
    }

    #[test]
    fn keys_are_stable_and_distinct() {
        assert_eq!(k("29ecfcf6-7bd2-5cc9-bfdd-b7a75b3999a0"), k("29ecfcf6-7bd2-5cc9-bfdd-b7a75b3999a0"));
        assert_ne!(k("a"), k("b"));
    }

    #[test]
    fn expiry_covers_max_age_from_now() {
        let max_age = Duration::from_secs(3600);
        let long_ago = UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert!(expires_at(long_ago, max_age) >= unix_now() + 3600);
    }
}
