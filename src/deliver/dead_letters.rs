//! Dead letters from delivery's side: writing one when a delivery is given up on, and
//! taking back in those an operator asked to replay. Where they are kept is the queue
//! backend's business ([`Queue::put_dead_letter`]).

use std::time::SystemTime;

use crate::config::Config;
use crate::model::{Envelope, Notification};
use crate::queue::{Accepted, DeadLetter, Delivery, NewMessage, Queue, QueueError};

/// Keeps `delivery` as a dead letter, then finishes it. A message already finished (by a
/// concurrent path) is left alone.
pub async fn write(queue: &dyn Queue, delivery: &Delivery, reason: &str, attempts: u32) -> Result<(), QueueError> {
    let Some(message) = queue.load(delivery.seq).await? else { return Ok(()) };
    let letter = DeadLetter {
        id: format!("{}-{}", delivery.seq, delivery.destination),
        destination: delivery.destination.to_string(),
        reason: reason.to_string(),
        attempts,
        failed_at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        accepted_at_ms: message.accepted_at_ms,
        envelope: message.envelope,
        severity: message.severity,
    };
    queue.put_dead_letter(letter).await?;
    queue.finish(&delivery.destination, delivery.seq).await
}

/// Takes dead letters queued for replay back into the queue; returns the new deliveries.
/// A replay that cannot be stored now (queue full or failing) stays requested and is tried
/// again on the next call.
pub async fn take_replays(queue: &dyn Queue, config: &Config, owns: &(dyn Fn(&str) -> bool + Sync)) -> Vec<Delivery> {
    let requests = match queue.replay_requests().await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "cannot read replay requests");
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    for letter in requests.into_iter().filter(|l| owns(&l.destination)) {
        // Replays bypass dedup (the MessageId is already known). An operator replays
        // after fixing something, so the one-hop fallback rule starts afresh.
        let envelope = Envelope { fallback_from: None, ..letter.envelope };
        let severity = letter
            .severity
            .clone()
            .unwrap_or_else(|| config.severity.classify(&Notification::from_envelope(envelope.clone())));
        let new = NewMessage {
            envelope: &envelope,
            severity: &severity,
            destinations: vec![letter.destination.clone()],
            dedup: None,
            replay_of: Some(&letter.id),
            message_json: None,
        };
        match queue.accept(new).await {
            Ok(Accepted::Stored(deliveries)) => {
                if let Err(e) = queue.replay_taken(&letter.id).await {
                    tracing::error!(id = %letter.id, error = %e, "replayed, but the request could not be cleared; it may be replayed again");
                }
                tracing::info!(id = %letter.id, destination = %letter.destination, "dead letter replayed");
                out.extend(deliveries);
            }
            Ok(Accepted::Duplicate) => {}
            Err(QueueError::Closed) => break,
            Err(e) => tracing::error!(id = %letter.id, error = %e, "dead letter replay failed; tried again later"),
        }
    }
    out
}
