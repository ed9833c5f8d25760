//! Stand-ins for the outside world, shared by `webhook-relay demo`, the integration tests
//! and the benchmarks (one copy, not three): an SNS-style message signer with a freshly
//! made RSA key and certificate, and a local stand-in for Slack that records posts and can
//! be told to answer 429, 5xx, 404 `no_service` or slowly. Nothing here is used by `serve`.

pub mod signer;
pub mod slack_sink;

pub use signer::TestSigner;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

/// The addresses a `serve` started on port 0 (see [`serve_args`]) bound, read from its
/// log line "webhook-relay serving addr=… admin_addr=…". A port picked by the test and
/// bound later by the gateway can be taken in between by anything on the machine (an
/// outgoing connection's ephemeral port, another test); CI saw exactly that. Port 0 bound
/// by the gateway itself leaves no such window. Blocks until the line appears, the process
/// exits, or `timeout`; the error carries the log.
pub fn bound_addrs(log: &Path, child: &mut Child, timeout: Duration) -> Result<(SocketAddr, SocketAddr), String> {
    let deadline = Instant::now() + timeout;
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.contains("webhook-relay serving")) {
            let field = |name: &str| {
                line.split_whitespace().find_map(|w| w.strip_prefix(name)).and_then(|v| v.parse::<SocketAddr>().ok())
            };
            return match (field("addr="), field("admin_addr=")) {
                (Some(addr), Some(admin)) => Ok((addr, admin)),
                _ => Err(format!("cannot read the addresses from {line:?}")),
            };
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("gateway exited ({status}) before serving; log:\n{text}"));
        }
        if Instant::now() > deadline {
            return Err(format!("gateway not serving after {timeout:?}; log:\n{text}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `serve` args for a gateway laid out in `dir` (routes.toml, data/, certs/), on
/// 127.0.0.1 `port` with admin on `admin` (0 for any: read them with [`bound_addrs`]); appended to `cmd` (the binary, or a profiler
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
