//! webhook-relay: Amazon SNS in, Slack out, nothing lost in between.
//!
//! The path of one message, stage by stage, is wired in [`Gateway::handle_sns`]:
//!
//! ```text
//! POST /sns ─▶ sns::SnsMessage::parse ─▶ sns::Verifier::verify ─▶ dedup::Dedup::claim
//!           ─▶ route (severity + Router) ─▶ store::Store::accept (fsync) ─▶ 200
//!           ─▶ deliver::Deliverer (one worker per destination: rate limit, retry, Slack)
//! ```
//!
//! [`start`] assembles the stages and the listeners; `main.rs` only parses the command line.

#![forbid(unsafe_code)]

pub mod commands;
pub mod config;
pub mod dedup;
pub mod deliver;
pub mod ingest;
pub mod metrics;
pub mod model;
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
