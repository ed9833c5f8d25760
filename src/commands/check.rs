//! `webhook-relay check`: validate a routes file, print every problem with its line.

use std::path::Path;

use crate::config::{Config, ConfigError};

/// Exit code 0 when valid (warnings allowed), 1 otherwise. Never prints a secret: problems
/// name where a URL comes from (`env:NAME`), never its value.
pub fn run(path: &Path, out: &mut dyn std::io::Write) -> i32 {
    match Config::load(path) {
        Ok((config, warnings)) => {
            for w in &warnings {
                let _ = writeln!(out, "{}:{w}", path.display());
            }
            let _ = writeln!(
                out,
                "{}: ok ({} routes, {} destinations, {} warning(s))",
                path.display(),
                config.router.len(),
                config.destinations.len(),
                warnings.len()
            );
            0
        }
        Err(ConfigError::Invalid(problems)) => {
            for p in &problems {
                let _ = writeln!(out, "{}:{p}", path.display());
            }
            let errors = problems.iter().filter(|p| !p.warning).count();
            let _ = writeln!(out, "{}: {errors} error(s)", path.display());
            1
        }
        Err(e) => {
            let _ = writeln!(out, "{e}");
            1
        }
    }
}

/// `check --nats`: 0 when the cluster answers with JetStream on, 1 otherwise. Prints hosts,
/// never credentials.
pub fn nats(settings: &crate::cluster::NatsSettings, out: &mut dyn std::io::Write) -> i32 {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            let _ = writeln!(out, "cannot start runtime: {e}");
            return 1;
        }
    };
    match runtime.block_on(crate::cluster::check(settings)) {
        Ok(h) => {
            let _ = writeln!(
                out,
                "nats {}: reachable (server {} v{}, {} peer(s) advertised), JetStream enabled ({} stream(s))",
                crate::cluster::shown(&settings.urls),
                h.server,
                h.version,
                h.peers,
                h.streams
            );
            0
        }
        Err(e) => {
            let _ = writeln!(out, "nats: {e}");
            1
        }
    }
}
