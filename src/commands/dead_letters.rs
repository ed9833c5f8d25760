//! `webhook-relay dead-letters list|show|replay|purge`: on the files in
//! `<data-dir>/dead-letters/`, or with `--nats` on the cluster's dead letters in NATS,
//! whether or not a gateway is running. A replay is picked up by a running gateway within a
//! second (in cluster mode, by the replica that posts for the destination), or by the next
//! one to start.

use std::path::Path;

use crate::queue::DeadLetter;
use crate::store::DeadLetters;

pub enum Action {
    List,
    Show(String),
    Replay(Vec<String>),
    Purge(Vec<String>),
}

/// Where dead letters are kept, as the command sees it.
pub trait Letters {
    /// Where, for "no dead letters in ...".
    fn place(&self) -> String;
    fn list(&self) -> Vec<Result<DeadLetter, String>>;
    fn show(&self, id: &str) -> Result<DeadLetter, String>;
    /// Moves it to the replay requests; `false` when there is no such dead letter.
    fn replay(&self, id: &str) -> Result<bool, String>;
    fn purge(&self, id: &str) -> Result<bool, String>;
}

impl Letters for DeadLetters {
    fn place(&self) -> String {
        self.dir().display().to_string()
    }
    fn list(&self) -> Vec<Result<DeadLetter, String>> {
        DeadLetters::list(self).into_iter().map(|r| r.map_err(|e| e.to_string())).collect()
    }
    fn show(&self, id: &str) -> Result<DeadLetter, String> {
        DeadLetters::show(self, id).map_err(|e| e.to_string())
    }
    fn replay(&self, id: &str) -> Result<bool, String> {
        DeadLetters::replay(self, id).map_err(|e| e.to_string())
    }
    fn purge(&self, id: &str) -> Result<bool, String> {
        DeadLetters::purge(self, id).map_err(|e| e.to_string())
    }
}

/// On the local store's files in `data_dir`.
pub fn run(data_dir: &Path, action: Action, all: bool, out: &mut dyn std::io::Write) -> i32 {
    run_on(&DeadLetters::new(data_dir), action, all, out)
}

pub fn run_on(dl: &dyn Letters, action: Action, all: bool, out: &mut dyn std::io::Write) -> i32 {
    let ids = |ids: Vec<String>| -> Vec<String> {
        if all {
            dl.list().into_iter().filter_map(|r| r.ok()).map(|l| l.id).collect()
        } else {
            ids
        }
    };
    match action {
        Action::List => {
            let letters = dl.list();
            if letters.is_empty() {
                let _ = writeln!(out, "no dead letters in {}", dl.place());
            }
            for l in letters {
                match l {
                    Ok(l) => {
                        let _ = writeln!(
                            out,
                            "{}\t{}\t{}\tattempts={}\t{}\t{}",
                            l.id,
                            l.destination,
                            l.failed_at,
                            l.attempts,
                            l.reason,
                            l.envelope.subject.as_deref().unwrap_or(&l.envelope.message_id)
                        );
                    }
                    Err(e) => {
                        let _ = writeln!(out, "unreadable: {e}");
                    }
                }
            }
            0
        }
        Action::Show(id) => match dl.show(&id) {
            Ok(l) => {
                let _ = writeln!(out, "{}", serde_json::to_string_pretty(&l).unwrap_or_default());
                0
            }
            Err(e) => {
                let _ = writeln!(out, "{e}");
                1
            }
        },
        Action::Replay(list) => each(ids(list), out, |id| dl.replay(id), "queued for replay"),
        Action::Purge(list) => each(ids(list), out, |id| dl.purge(id), "purged"),
    }
}

fn each(ids: Vec<String>, out: &mut dyn std::io::Write, f: impl Fn(&str) -> Result<bool, String>, done: &str) -> i32 {
    let mut code = 0;
    if ids.is_empty() {
        let _ = writeln!(out, "nothing to do (name dead letter ids, or --all)");
    }
    for id in ids {
        match f(&id) {
            Ok(true) => {
                let _ = writeln!(out, "{id}: {done}");
            }
            Ok(false) => {
                let _ = writeln!(out, "{id}: no such dead letter");
                code = 1;
            }
            Err(e) => {
                let _ = writeln!(out, "{id}: {e}");
                code = 1;
            }
        }
    }
    code
}
