//! The local backend's alarm-to-thread map (where each alarm's first Slack post is): one
//! small JSON file, `<data-dir>/threads.json`, rewritten atomically on each change. A fleet
//! has thousands of alarms, not millions, and an alarm's thread changes a few times a day,
//! so a whole-file rewrite is cheap and a log would be more machinery than it saves.
//! Entries untouched for longer than [`KEEP`] are dropped when the file is rewritten.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use crate::queue::{QueueError, ThreadRef};

/// Longer than any `lifecycle_ttl` worth setting.
pub const KEEP: Duration = Duration::from_secs(30 * 86400);

pub struct Threads {
    path: PathBuf,
    map: Mutex<HashMap<String, ThreadRef>>,
}

impl Threads {
    /// Reads the map; a missing file is an empty map, an unreadable one is set aside.
    pub fn open(data_dir: &Path) -> Threads {
        let path = data_dir.join("threads.json");
        let map = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                let aside = path.with_extension(format!("json.corrupt-{}", crate::dedup::unix_now()));
                let _ = std::fs::rename(&path, &aside);
                tracing::error!(error = %e, aside = %aside.display(), "alarm thread map unreadable; set aside, starting empty");
                HashMap::new()
            }),
            Err(_) => HashMap::new(),
        };
        Threads { path, map: Mutex::new(map) }
    }

    pub fn get(&self, key: &str) -> Option<ThreadRef> {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).get(key).cloned()
    }

    /// Records `thread` for `key` and writes the map durably before returning.
    pub fn set(&self, key: &str, thread: ThreadRef, now_ms: u64) -> Result<(), QueueError> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.insert(key.to_string(), thread);
        let keep_ms = KEEP.as_millis() as u64;
        map.retain(|_, t| now_ms.saturating_sub(t.updated_at_ms) < keep_ms);
        let bytes = serde_json::to_vec(&*map)?;
        // Under the lock, so two writers never interleave their renames.
        write_atomic(&self.path, &bytes).map_err(|e| QueueError::io(self.path.display().to_string(), e))
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn survives_reopen_and_forgets_what_is_stale() {
        let dir = tempfile::tempdir().unwrap();
        let t = Threads::open(dir.path());
        let day = 86_400_000;
        let r = |ts: &str, at: u64| ThreadRef {
            channel: "C1".into(),
            ts: ts.into(),
            updated_at_ms: at,
            state: "ALARM".into(),
            state_since_ms: at,
            last_seq: 0,
        };
        t.set("old", r("1.1", 1), 1).unwrap();
        t.set("a", r("2.2", 40 * day), 40 * day).unwrap();
        let t = Threads::open(dir.path());
        assert_eq!(t.get("a"), Some(r("2.2", 40 * day)));
        assert_eq!(t.get("old"), None, "an entry untouched for 40 days was kept");
        std::fs::write(dir.path().join("threads.json"), b"{not json").unwrap();
        let t = Threads::open(dir.path());
        assert_eq!(t.get("a"), None);
        assert!(std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().contains("corrupt")));
    }
}
