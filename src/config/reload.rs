//! The running config and its hot reload. Readers take a snapshot (`Arc<Config>`) per
//! request, so a reload swaps the whole config at once and no request sees half of one.
//! Reloads come from file-system events and SIGHUP; the parent directory is watched rather
//! than the file, because a Kubernetes ConfigMap update swaps a `..data` symlink next to
//! the file instead of writing to it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use super::{Config, ConfigError};
use crate::metrics::Metrics;

/// The config in force, swappable.
pub struct ConfigHandle {
    current: ArcSwap<Config>,
    path: PathBuf,
    /// Last file content applied or refused, so a burst of events for one write is one reload.
    last_text: std::sync::Mutex<String>,
    metrics: Metrics,
}

/// What a reload did.
#[derive(Debug, PartialEq, Eq)]
pub enum ReloadOutcome {
    Applied,
    Unchanged,
    Refused,
}

impl ConfigHandle {
    pub fn new(config: Config, path: PathBuf, metrics: Metrics) -> ConfigHandle {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        metrics.config_last_reload_success.set(1);
        ConfigHandle { current: ArcSwap::from_pointee(config), path, last_text: std::sync::Mutex::new(text), metrics }
    }

    pub fn get(&self) -> Arc<Config> {
        self.current.load_full()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Re-reads the file; applies it only if it validates. Without `force`, unchanged text
    /// is skipped (one write raises several events); SIGHUP forces, so that `file:`
    /// secrets are re-read even when routes.toml itself did not change.
    pub fn reload(&self, force: bool) -> ReloadOutcome {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) => {
                // Mid-swap a ConfigMap file can be briefly absent; the next event retries.
                tracing::warn!(path = %self.path.display(), error = %e, "routes file unreadable; keeping running rules");
                return self.refused(1);
            }
        };
        {
            let mut last = self.last_text.lock().unwrap_or_else(|p| p.into_inner());
            if *last == text && !force {
                return ReloadOutcome::Unchanged;
            }
            *last = text.clone();
        }
        self.metrics
            .config_last_reload_timestamp
            .set(SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0));
        match Config::parse(&text) {
            Ok((config, warnings)) => {
                for w in &warnings {
                    tracing::warn!(path = %self.path.display(), "{w}");
                }
                self.current.store(Arc::new(config));
                self.metrics.config_reloads.get_or_create(&[("outcome", "applied")]).inc();
                self.metrics.config_last_reload_success.set(1);
                self.metrics.config_errors.set(0);
                tracing::info!(path = %self.path.display(), "routes reloaded");
                ReloadOutcome::Applied
            }
            Err(ConfigError::Invalid(problems)) => {
                for p in &problems {
                    tracing::error!(path = %self.path.display(), "{p}");
                }
                self.refused(problems.iter().filter(|p| !p.warning).count())
            }
            Err(e) => {
                tracing::error!(error = %e, "routes reload failed");
                self.refused(1)
            }
        }
    }

    fn refused(&self, errors: usize) -> ReloadOutcome {
        self.metrics.config_reloads.get_or_create(&[("outcome", "refused")]).inc();
        self.metrics.config_last_reload_success.set(0);
        self.metrics.config_errors.set(errors as i64);
        tracing::error!(path = %self.path.display(), "routes reload refused; the running rules stay in force");
        ReloadOutcome::Refused
    }
}

/// Watches the file's directory and SIGHUP, reloading on either, until `shutdown` fires.
/// Returns the watcher, which must be kept alive.
pub fn spawn_reloader(
    handle: Arc<ConfigHandle>,
    mut shutdown: crate::shutdown::Shutdown,
) -> notify::Result<notify::RecommendedWatcher> {
    // The message says whether to force (SIGHUP) or only reload changed text (file events).
    let (tx, mut rx) = mpsc::channel::<bool>(16);
    let file_name = handle.path.file_name().map(|n| n.to_os_string());
    let events_tx = tx.clone();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event {
            // The file itself, or a ConfigMap's `..data` swap, or a rename-over.
            let relevant = event.paths.iter().any(|p| {
                let name = p.file_name();
                name == file_name.as_deref() || name.is_some_and(|n| n.to_string_lossy().starts_with(".."))
            });
            if relevant && !event.kind.is_access() {
                let _ = events_tx.try_send(false);
            }
        }
    })?;
    let dir = match handle.path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;

    #[cfg(unix)]
    {
        let tx = tx.clone();
        tokio::spawn(async move {
            let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
                tracing::warn!("cannot install SIGHUP handler; reload on file change only");
                return;
            };
            while hup.recv().await.is_some() {
                tracing::info!("SIGHUP: reloading routes");
                let _ = tx.send(true).await;
            }
        });
    }

    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = shutdown.recv() => return,
                got = rx.recv() => {
                    let Some(mut force) = got else { return };
                    // Editors and kubelet write in several steps: settle, then drain.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    while let Ok(f) = rx.try_recv() {
                        force |= f;
                    }
                    let h = handle.clone();
                    let _ = tokio::task::spawn_blocking(move || h.reload(force)).await;
                }
            }
        }
    });
    Ok(watcher)
}
