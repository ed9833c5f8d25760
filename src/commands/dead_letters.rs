//! `webhook-relay dead-letters list|show|replay|purge`: works on the files in
//! `<data-dir>/dead-letters/`, whether or not the gateway is running. A replay is picked
//! up by the running gateway within a second, or by the next one to start.

use std::path::Path;

use crate::store::DeadLetters;

pub enum Action {
    List,
    Show(String),
    Replay(Vec<String>),
    Purge(Vec<String>),
}

pub fn run(data_dir: &Path, action: Action, all: bool, out: &mut dyn std::io::Write) -> i32 {
    let dl = DeadLetters::new(data_dir);
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
                let _ = writeln!(out, "no dead letters in {}", data_dir.display());
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

fn each(ids: Vec<String>, out: &mut dyn std::io::Write, f: impl Fn(&str) -> std::io::Result<bool>, done: &str) -> i32 {
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
