//! One destination's queue in memory: the deliveries its worker will make next, in accept
//! order. It holds at most `cap` of them; past that the rest wait only in the durable
//! queue and the worker reads them back in order as it catches up, so memory under a long
//! Slack outage or a burst is the durable queue's index, not this.

use std::collections::VecDeque;
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
        DestinationQueue { state: Mutex::new(State::default()), wake: Notify::new(), cap, depth }
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

    /// Drops the first `n` (done, rerouted or dead-lettered).
    pub fn pop(&self, n: usize) {
        let mut st = self.lock();
        for _ in 0..n {
            if let Some(d) = st.items.pop_front() {
                st.held.remove(&d.seq);
            }
        }
    }
}
