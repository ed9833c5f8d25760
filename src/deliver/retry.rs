//! The retry policy: exponential backoff with full jitter between attempts, and the budget
//! (attempts and age) after which a delivery becomes a dead letter.

use std::time::Duration;

use crate::config::Destination;

/// Exponential backoff: base and cap of the full-jitter window.
const BACKOFF_BASE: Duration = Duration::from_millis(500);
const BACKOFF_CAP: Duration = Duration::from_secs(300);

/// Full jitter (AWS Architecture Blog, "Exponential Backoff and Jitter"): a uniform
/// pick in [0, min(cap, base·2^attempt)]. Hand-written because the delay must interleave
/// with Retry-After and the per-destination budget that a retry crate's loop does not know.
pub fn backoff(attempt: u32) -> Duration {
    window(attempt).mul_f64(rand::random::<f64>())
}

fn window(attempt: u32) -> Duration {
    BACKOFF_BASE.saturating_mul(1u32 << attempt.min(20)).min(BACKOFF_CAP)
}

/// Whether `attempts` tries, the oldest accepted at `oldest_ms`, used up the destination's
/// retry budget.
pub fn budget_spent(dest: &Destination, attempts: u32, oldest_ms: u64, now_ms: u64) -> bool {
    attempts >= dest.retry.max_attempts || now_ms.saturating_sub(oldest_ms) > dest.retry.max_age.as_millis() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_full_jitter_within_capped_window() {
        for attempt in 0..30 {
            for _ in 0..50 {
                assert!(backoff(attempt) <= window(attempt));
            }
        }
        assert_eq!(window(30), BACKOFF_CAP);
        // Full jitter spreads: some picks land in the lower half of the window.
        assert!((0..200).any(|_| backoff(10) < BACKOFF_CAP / 2));
    }
}
