//! `webhook-relay queue stats|list|show`: what the local log holds, read-only, whether the
//! gateway runs or not (see `store::inspect`).

use std::collections::BTreeMap;
use std::path::Path;

use crate::store::inspect::{self, Pending};

pub enum Action {
    Stats,
    List { destination: Option<String>, limit: usize },
    Show(u64),
}

fn now_ms() -> u64 {
    crate::deliver::now_ms()
}

fn age(accepted_at_ms: u64) -> String {
    let secs = now_ms().saturating_sub(accepted_at_ms) / 1000;
    humantime::format_duration(std::time::Duration::from_secs(secs)).to_string()
}

fn waiting(p: &Pending) -> Vec<&str> {
    p.destinations.iter().filter(|(_, done)| !done).map(|(d, _)| d.as_str()).collect()
}

pub fn run(data_dir: &Path, action: Action, out: &mut dyn std::io::Write) -> i32 {
    let snap = match inspect::snapshot(data_dir) {
        Ok(s) => s,
        Err(e) => {
            let _ = writeln!(out, "cannot read the queue in {}: {e}", data_dir.display());
            return 1;
        }
    };
    for (path, offset, why) in &snap.damage {
        let _ = writeln!(out, "note: {} stops at byte {offset}: {why}", path.display());
    }
    match action {
        Action::Stats => {
            let _ = writeln!(
                out,
                "segments: {}\nbytes on disk: {}\nmessages pending: {}",
                snap.segments,
                snap.bytes_on_disk,
                snap.pending.len()
            );
            let mut per: BTreeMap<&str, (usize, u64)> = BTreeMap::new();
            for p in &snap.pending {
                for d in waiting(p) {
                    let e = per.entry(d).or_insert((0, u64::MAX));
                    e.0 += 1;
                    e.1 = e.1.min(p.accepted_at_ms);
                }
            }
            for (d, (n, oldest)) in per {
                let _ = writeln!(out, "  {d}: {n} pending, oldest {} ago", age(oldest));
            }
            let dead = crate::store::DeadLetters::new(data_dir).list().len();
            let _ = writeln!(out, "dead letters: {dead}");
            0
        }
        Action::List { destination, limit } => {
            let mut shown = 0;
            for p in &snap.pending {
                let w = waiting(p);
                if destination.as_deref().is_some_and(|d| !w.contains(&d)) {
                    continue;
                }
                if shown == limit {
                    let _ = writeln!(out, "... (more; raise --limit)");
                    break;
                }
                shown += 1;
                let what = match inspect::load(p) {
                    Ok(m) => crate::deliver::slack::headline(&crate::model::Notification::from_envelope(m.envelope)),
                    Err(e) => format!("(unreadable: {e})"),
                };
                let _ = writeln!(out, "{}\t{} ago\t{}\t{what}", p.seq, age(p.accepted_at_ms), w.join(","));
            }
            if shown == 0 {
                let _ = writeln!(out, "nothing pending");
            }
            0
        }
        Action::Show(seq) => {
            let Some(p) = snap.pending.iter().find(|p| p.seq == seq) else {
                let _ = writeln!(out, "{seq}: not pending (delivered, or no such message)");
                return 1;
            };
            match inspect::load(p) {
                Ok(m) => {
                    let v = serde_json::json!({
                        "seq": p.seq,
                        "accepted_at_ms": p.accepted_at_ms,
                        "destinations": p.destinations.iter().map(|(d, done)| serde_json::json!({"name": d, "done": done})).collect::<Vec<_>>(),
                        "severity": m.severity,
                        "envelope": m.envelope,
                    });
                    let _ = writeln!(out, "{}", serde_json::to_string_pretty(&v).unwrap_or_default());
                    0
                }
                Err(e) => {
                    let _ = writeln!(out, "{seq}: {e}");
                    1
                }
            }
        }
    }
}
