//! Stand-ins for the outside world, shared by `webhook-relay demo`, the integration tests
//! and the benchmarks (one copy, not three): an SNS-style message signer with a freshly
//! made RSA key and certificate, and a local stand-in for Slack that records posts and can
//! be told to answer 429, 5xx, 404 `no_service` or slowly. Nothing here is used by `serve`.

pub mod signer;
pub mod slack_sink;

pub use signer::TestSigner;

/// `serve` args for a gateway laid out in `dir` (routes.toml, data/, certs/), on
/// 127.0.0.1 `port` with admin on `admin`; appended to `cmd` (the binary, or a profiler
/// wrapping it).
pub fn serve_args(cmd: &mut std::process::Command, dir: &std::path::Path, port: u16, admin: u16) {
    cmd.args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--admin-listen", &format!("127.0.0.1:{admin}")])
        .arg("--config")
        .arg(dir.join("routes.toml"))
        .arg("--data-dir")
        .arg(dir.join("data"))
        .arg("--sns-cert-dir")
        .arg(dir.join("certs"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
}
pub use slack_sink::{Post, Reply, SlackSink};
