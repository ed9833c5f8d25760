//! One destination's queue in memory: the deliveries its worker will make next, in accept
//! order. It holds at most `cap` of them; past that the rest wait only in the durable
//! queue and the worker reads them back in order as it catches up, so memory under a long
//! Slack outage or a burst is the durable queue's index, not this.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::Notify;

use crate::queue::{Delivery, SeqSet};

/// Deliveries one destination holds in memory by default.
pub const DEFAULT_QUEUE_CAP: usize = 4096;
/// Queue depth up to which a delivery keeps its parsed notification in memory.
const KEEP_PREPARED_UP_TO: usize = 2048;

pub struct DestinationQueue {
    state: Mutex<State>,
    /// Wakes the worker when something arrives.
    pub wake: Notify,
    /// Wakes a feeder waiting for room (cluster mode feeds from JetStream up to `cap`).
    pub room: Notify,
    /// Until when (ms since the epoch) this replica may post for the destination: always
    /// for the local store; in cluster mode, while it holds the destination's lease.
    owned_until_ms: AtomicU64,
    /// The worker is between deciding to post and having recorded the answer: giving a
    /// lease up waits for this to clear.
    sending: AtomicBool,
    cap: usize,
    /// `webhook_relay_queue_depth` for this destination, looked up once.
    depth: Gauge,
}

#[derive(Default)]
pub struct State {
    pub items: VecDeque<Delivery>,
    /// Seqs in `items`, so a delivery is never held twice.
    pub held: SeqSet,
    /// The durable queue holds deliveries for this destination that `items` does not.
    pub spilled: bool,
    /// About how many those are (for the depth gauge).
    pub spilled_count: usize,
    /// Counts deliveries marked spilled, ever: a refill compares it before and after its
    /// read of the durable queue, and keeps `spilled` set if any arrived meanwhile (they may
    /// be missing from what it read).
    pub spills: u64,
}

impl State {
    pub fn depth(&self) -> usize {
        self.items.len() + self.spilled_count
    }
}

impl DestinationQueue {
    pub fn new(cap: usize, depth: Gauge) -> DestinationQueue {
        DestinationQueue {
            state: Mutex::new(State::default()),
            wake: Notify::new(),
            room: Notify::new(),
            owned_until_ms: AtomicU64::new(u64::MAX),
            sending: AtomicBool::new(false),
            cap,
            depth,
        }
    }

    /// Whether this replica may post for the destination now.
    pub fn owned(&self) -> bool {
        super::now_ms() < self.owned_until_ms.load(Ordering::SeqCst)
    }

    pub fn sending(&self) -> bool {
        self.sending.load(Ordering::SeqCst)
    }

    pub fn set_sending(&self, on: bool) {
        self.sending.store(on, Ordering::SeqCst);
    }

    /// Cluster mode: posting is allowed until `until_ms` (0: not at all).
    pub fn own_until(&self, until_ms: u64) {
        self.owned_until_ms.store(until_ms, Ordering::SeqCst);
        self.wake.notify_one();
    }

    /// Forgets everything held in memory (the lease moved: the deliveries stay in the
    /// durable queue for whoever holds it).
    pub fn clear(&self) {
        {
            let mut st = self.lock();
            st.items.clear();
            st.held.clear();
            st.spilled = false;
            st.spilled_count = 0;
        }
        self.depth.set(0);
        self.room.notify_waiters();
    }

    pub fn cap(&self) -> usize {
        self.cap
    }

    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a delivery (or notes that the durable queue holds it).
    pub fn push(&self, mut d: Delivery) {
        let depth = {
            let mut st = self.lock();
            if st.held.contains(&d.seq) {
                // Already read back from the durable queue by the worker.
            } else if st.spilled || st.items.len() >= self.cap {
                // The worker reads it back, in order, when it gets there.
                st.spilled = true;
                st.spilled_count += 1;
                st.spills += 1;
            } else {
                if st.items.len() >= KEEP_PREPARED_UP_TO {
                    // A long backlog (Slack down) must not hold every message in memory:
                    // past this depth the worker reads them back.
                    d.prepared = None;
                }
                st.held.insert(d.seq);
                st.items.push_back(d);
            }
            st.depth()
        };
        self.depth.set(depth as i64);
        self.wake.notify_one();
    }

    /// Drops the deliveries of a batch (done, rerouted or dead-lettered). By seq, not by
    /// count: in cluster mode the queue may have been cleared and refilled meanwhile.
    pub fn pop(&self, batch: &[Delivery]) {
        {
            let mut st = self.lock();
            for d in batch {
                if st.items.front().is_some_and(|f| f.seq == d.seq) {
                    st.items.pop_front();
                } else if st.held.contains(&d.seq) {
                    st.items.retain(|i| i.seq != d.seq);
                }
                st.held.remove(&d.seq);
            }
        }
        self.room.notify_waiters();
    }
}
