//! The local backend's dead letters: one JSON file each under `<data-dir>/dead-letters/`.
//! Files (not log records) so that the command line can list, show and purge them while
//! the gateway runs and holds the log's lock. A replay moves the file to
//! `<data-dir>/replay/`, and the gateway takes it back into its queue from there.

use std::io::Write;
use std::path::{Path, PathBuf};

pub use crate::queue::DeadLetter;

/// Why a dead letter could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    #[error("bad dead letter id {0:?}")]
    BadId(String),
    #[error("{path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path}: unreadable: {source}")]
    Unreadable { path: String, source: serde_json::Error },
}

#[derive(Debug, Clone)]
pub struct DeadLetters {
    dead_dir: PathBuf,
    replay_dir: PathBuf,
}

impl DeadLetters {
    pub fn new(data_dir: &Path) -> DeadLetters {
        DeadLetters { dead_dir: data_dir.join("dead-letters"), replay_dir: data_dir.join("replay") }
    }

    /// The data directory these live in.
    pub fn dir(&self) -> &Path {
        self.dead_dir.parent().unwrap_or(&self.dead_dir)
    }

    fn file(dir: &Path, id: &str) -> Option<PathBuf> {
        // Ids come from the command line for show/replay/purge: keep them to one file name.
        if id.is_empty() || id.contains(['/', '\\']) || id.starts_with('.') {
            return None;
        }
        Some(dir.join(format!("{id}.json")))
    }

    /// Writes atomically (temp file, fsync, rename, fsync dir) so a crash leaves either
    /// no file or a whole one.
    pub fn write(&self, letter: &DeadLetter) -> std::io::Result<()> {
        write_atomic(&self.dead_dir, &letter.id, letter)
    }

    /// Every dead letter, oldest first; unreadable files are reported, not skipped silently.
    pub fn list(&self) -> Vec<Result<DeadLetter, DeadLetterError>> {
        let mut out = read_dir_json(&self.dead_dir);
        out.sort_by_key(|(path, r)| match r {
            Ok(l) => (l.accepted_at_ms, l.id.clone()),
            Err(_) => (0, path.display().to_string()),
        });
        out.into_iter().map(|(_, r)| r).collect()
    }

    pub fn show(&self, id: &str) -> Result<DeadLetter, DeadLetterError> {
        let path = DeadLetters::file(&self.dead_dir, id).ok_or_else(|| DeadLetterError::BadId(id.to_string()))?;
        read_json(&path)
    }

    /// Queues a dead letter for redelivery; returns false if it does not exist.
    pub fn replay(&self, id: &str) -> std::io::Result<bool> {
        let (Some(from), Some(to)) = (DeadLetters::file(&self.dead_dir, id), DeadLetters::file(&self.replay_dir, id))
        else {
            return Ok(false);
        };
        if !from.exists() {
            return Ok(false);
        }
        std::fs::create_dir_all(&self.replay_dir)?;
        std::fs::rename(&from, &to)?;
        sync_dir(&self.replay_dir);
        Ok(true)
    }

    pub fn purge(&self, id: &str) -> std::io::Result<bool> {
        let Some(path) = DeadLetters::file(&self.dead_dir, id) else { return Ok(false) };
        match std::fs::remove_file(path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Dead letters waiting in `replay/`.
    pub fn replays(&self) -> Vec<DeadLetter> {
        read_dir_json(&self.replay_dir)
            .into_iter()
            .filter_map(|(_, r)| match r {
                Ok(l) => Some(l),
                Err(e) => {
                    tracing::error!(error = %e, "unreadable replay file left in place");
                    None
                }
            })
            .collect()
    }

    /// A replay was taken back into the queue: its file goes.
    pub fn replay_taken(&self, id: &str) -> std::io::Result<()> {
        let Some(path) = DeadLetters::file(&self.replay_dir, id) else { return Ok(()) };
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

fn read_json(path: &Path) -> Result<DeadLetter, DeadLetterError> {
    let shown = || path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| DeadLetterError::Read { path: shown(), source })?;
    serde_json::from_slice(&bytes).map_err(|source| DeadLetterError::Unreadable { path: shown(), source })
}

fn read_dir_json(dir: &Path) -> Vec<(PathBuf, Result<DeadLetter, DeadLetterError>)> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| {
            let r = read_json(&p);
            (p, r)
        })
        .collect()
}

fn write_atomic(dir: &Path, id: &str, letter: &DeadLetter) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let path = DeadLetters::file(dir, id).ok_or_else(|| std::io::Error::other("bad dead letter id"))?;
    let tmp = dir.join(format!(".{id}.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&serde_json::to_vec_pretty(letter).map_err(std::io::Error::other)?)?;
    f.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    sync_dir(dir);
    Ok(())
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}
