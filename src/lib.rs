//! webhook-relay: Amazon SNS in, Slack out, nothing lost in between.
//!
//! An HTTPS endpoint that SNS topics deliver CloudWatch alarms to. Each message's
//! signature is verified, duplicates are dropped by MessageId, rules from `routes.toml`
//! pick destinations, the message is stored durably before SNS hears 200, and one worker
//! per destination posts it to Slack within that destination's rate limit.
//!
//! # The path of one message
//!
//! ```text
//! POST /sns ─▶ server ─▶ ingest::Gateway::handle_sns
//!                          ├─ sns:    parse, verify (certificate, signature, topic, age)
//!                          ├─ route:  decide (parse the alarm, classify severity, route)
//!                          ├─ queue:  accept (durable; duplicates caught here)  ─▶ 200
//!                          └─ deliver: one worker per destination
//!                                        ├─ rate limit, digests, retry, fallback
//!                                        └─ sink (Slack webhook) ─▶ Slack
//! ```
//!
//! # Layout
//!
//! Ground floor, used by the stages and importing none of them: [`model`] (the
//! notification), [`queue`] (the durable-queue seam), [`metrics`], [`shutdown`], [`dedup`]
//! (MessageId memory), [`outbound`] (the one HTTP client: proxy, trust, no redirects).
//! [`config`] validates routes.toml into the router and destinations.
//!
//! Stages, in pipeline order: [`sns`] (message types, trust rules, certificates,
//! signature check), [`route`] (severity rules and the router), [`store`] (the local
//! log: the first [`queue::Queue`]), [`deliver`] (workers, retry policy, sinks).
//!
//! [`aws`] holds the credentials chain, SigV4 signing and the SNS API call used by
//! `confirm = "api"`.
//!
//! Wiring: [`ingest`] (the door's pipeline and its error-to-status mapping), [`server`]
//! (listeners, TLS, admin endpoints), [`serve`] (assembles everything). [`commands`] holds
//! the other command-line tools (`check`, `route-test`, `demo`, `dead-letters`) and
//! [`testkit`] the stand-ins (signer, Slack) that `demo` and the tests share.
//!
//! # Who runs what
//!
//! - The tokio runtime (one thread per core) runs the public and admin listeners, one task
//!   per connection, one task per destination worker, the dead-letter replay intake (every
//!   second) and the routes.toml watcher.
//! - Two OS threads belong to the local log: `store-writer` (group commit: one write and
//!   one `fdatasync` per batch) and `store-compactor` (reclaims segments oldest first).
//! - Shutdown is one [`shutdown::Shutdown`] signal: readiness goes false, the public
//!   listener drains, workers finish their current post, the log is flushed and closed,
//!   and the admin listener answers until the end.

#![forbid(unsafe_code)]

pub mod aws;
pub mod cluster;
pub mod commands;
pub mod config;
pub mod dedup;
pub mod deliver;
pub mod ingest;
pub mod metrics;
pub mod model;
pub mod outbound;
pub mod queue;
pub mod route;
pub mod serve;
pub mod server;
pub mod shutdown;
pub mod sns;
pub mod store;
pub mod testkit;

pub use ingest::{Gateway, IngestError, Outcome};
pub use serve::{start, Running, Settings};
