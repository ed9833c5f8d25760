//! Stand-ins for the outside world, shared by `webhook-relay demo`, the integration tests
//! and the benchmarks (one copy, not three): an SNS-style message signer with a freshly
//! made RSA key and certificate, and a local stand-in for Slack that records posts and can
//! be told to answer 429, 5xx, 404 `no_service` or slowly. Nothing here is used by `serve`.

pub mod signer;
pub mod slack_sink;

pub use signer::TestSigner;
pub use slack_sink::{Post, Reply, SlackSink};
