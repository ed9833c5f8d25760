//! The ingest side's outbound GETs: signing certificates and subscription confirmations,
//! through the gateway's one client ([`crate::outbound`]: proxy, trust, no redirects) with
//! a short timeout and a body cap, so a hostile URL that somehow passed the trust rules
//! still cannot make us wander or buffer without bound.

use std::time::Duration;

use bytes::Bytes;

pub use crate::outbound::FetchError;
use crate::outbound::Outbound;

#[derive(Clone)]
pub struct Fetcher {
    outbound: Outbound,
    timeout: Duration,
}

impl Fetcher {
    pub fn new(outbound: Outbound, timeout: Duration) -> Fetcher {
        Fetcher { outbound, timeout }
    }

    /// GETs `url` (http or https) and returns a body of at most `max_body` bytes; only 200 counts.
    pub async fn get(&self, url: &str, max_body: usize) -> Result<Bytes, FetchError> {
        self.outbound.get(url, max_body, self.timeout).await
    }
}
