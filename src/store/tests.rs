//! The local log against its own files: reopen, compaction, damage, wide records.

use super::files::segment_name;
use super::*;
use std::time::Instant;

fn envelope(id: &str) -> Envelope {
    Envelope {
        message_id: id.into(),
        topic_arn: "arn:aws:sns:us-east-1:1:t".into(),
        subject: None,
        message: "m".into(),
        timestamp: "2026-01-01T00:00:00Z".into(),
        fallback_from: None,
    }
}

#[tokio::test]
async fn partial_finish_survives_reopen_and_last_finish_removes() {
    let dir = tempfile::tempdir().unwrap();
    let (store, rec) = Store::open(dir.path(), 100, Metrics::new()).unwrap();
    assert!(rec.pending.is_empty());
    let key = MessageKey::of("m1");
    let d = store.put(&envelope("m1"), vec!["a".into(), "b".into()], Some((key, u64::MAX))).await.unwrap();
    assert_eq!(d.len(), 2);
    store.put(&envelope("m2"), vec!["a".into()], None).await.unwrap();
    store.finish_now("a", d[0].seq).unwrap();
    store.finish_now("a", d[0].seq).unwrap(); // repeated: must not finish "b" too
    store.close_now().await;
    drop(store);

    let (store, rec) = Store::open(dir.path(), 100, Metrics::new()).unwrap();
    let pending: Vec<(String, u64)> = rec.pending.iter().map(|p| (p.destination.to_string(), p.seq)).collect();
    assert_eq!(pending, vec![("b".to_string(), d[0].seq), ("a".to_string(), d[0].seq + 1)]);
    assert!(rec.remembered == 1 && store.remembers(key));
    assert_eq!(store.read(d[0].seq).unwrap().unwrap().envelope.message_id, "m1");
    store.finish_now("b", d[0].seq).unwrap();
    store.flush_now().await;
    assert!(store.read(d[0].seq).unwrap().is_none(), "fully delivered message still stored");
    store.close_now().await;
}

fn files(dir: &Path, suffix: &str) -> usize {
    std::fs::read_dir(dir.join(QUEUE_DIR))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(suffix))
        .count()
}

#[tokio::test]
async fn compaction_carries_pending_messages_and_remembered_ids_forward() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = Metrics::new();
    let (store, _) = Store::open_with(dir.path(), 1000, metrics.clone(), 1024).unwrap();
    let mut seqs = Vec::new();
    for i in 0..60 {
        let id = format!("c{i}");
        let key = (MessageKey::of(&id), u64::MAX);
        let d = store.put(&envelope(&id), vec!["a".into(), "b".into()], Some(key)).await.unwrap();
        seqs.push(d[0].seq);
    }
    // Unrouted: only the id is recorded.
    store.put(&envelope("unrouted"), vec![], Some((MessageKey::of("unrouted"), u64::MAX))).await.unwrap();
    // Everything done except: seqs[3] waits for both, seqs[10] for "b" only.
    for (i, seq) in seqs.iter().enumerate() {
        if i != 3 {
            store.finish_now("a", *seq).unwrap();
        }
        if i != 3 && i != 10 {
            store.finish_now("b", *seq).unwrap();
        }
    }
    store.flush_now().await;
    let created = lock(&store.inner.index).active;
    assert!(created > 10, "test needs many segments, got {created}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while files(dir.path(), ".seg") > 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(files(dir.path(), ".seg") <= 2, "segments not reclaimed: {} left", files(dir.path(), ".seg"));
    assert!(metrics.store_compactions.get() >= 10);
    assert_eq!(files(dir.path(), ".log"), 1, "remembered ids were not carried into a keys file");
    // Carried records are readable where they now are.
    assert_eq!(store.read(seqs[3]).unwrap().unwrap().envelope.message_id, "c3");
    assert_eq!(store.read(seqs[10]).unwrap().unwrap().envelope.message_id, "c10");
    assert!(store.read(seqs[4]).unwrap().is_none());
    store.close_now().await;
    drop(store);

    let (store, rec) = Store::open_with(dir.path(), 1000, Metrics::new(), 1024).unwrap();
    let mut pending: Vec<(u64, String)> = rec.pending.iter().map(|p| (p.seq, p.destination.to_string())).collect();
    pending.sort();
    let mut want = vec![(seqs[3], "a".to_string()), (seqs[3], "b".to_string()), (seqs[10], "b".to_string())];
    want.sort();
    assert_eq!(pending, want);
    for i in 0..60 {
        assert!(store.remembers(MessageKey::of(&format!("c{i}"))), "id c{i} forgotten");
    }
    assert!(store.remembers(MessageKey::of("unrouted")));
    // New seqs never reuse old ones (dead letter ids are built from them).
    let d = store.put(&envelope("new"), vec!["a".into()], None).await.unwrap();
    assert!(d[0].seq > *seqs.last().unwrap());
    store.close_now().await;
}

#[tokio::test]
async fn expired_ids_are_not_kept_and_a_second_opener_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open_with(dir.path(), 1000, Metrics::new(), 1024).unwrap();
    assert!(
        matches!(Store::open(dir.path(), 1000, Metrics::new()), Err(QueueError::Io { source, .. }) if source.to_string().contains("in use"))
    );
    for i in 0..30 {
        let id = format!("e{i}");
        let d = store.put(&envelope(&id), vec!["a".into()], Some((MessageKey::of(&id), 1))).await.unwrap();
        store.finish_now("a", d[0].seq).unwrap();
    }
    store.flush_now().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while files(dir.path(), ".seg") > 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(files(dir.path(), ".seg") <= 2);
    assert_eq!(files(dir.path(), ".log"), 0, "expired ids need no keys file");
    store.close_now().await;
    drop(store);
    let (store, rec) = Store::open(dir.path(), 1000, Metrics::new()).unwrap();
    assert!(rec.pending.is_empty() && rec.remembered == 0);
    store.close_now().await;
}

#[tokio::test]
async fn one_bad_byte_loses_one_message_and_what_follows_is_salvaged() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(dir.path(), 1000, Metrics::new()).unwrap();
    let mut seqs = Vec::new();
    for i in 0..10 {
        seqs.push(store.put(&envelope(&format!("d{i}")), vec!["a".into()], None).await.unwrap()[0].seq);
    }
    store.close_now().await;
    drop(store);
    let seg = dir.path().join(QUEUE_DIR).join(segment_name(1));
    let mut bytes = std::fs::read(&seg).unwrap();
    // Flip a byte in the 8th message's record: messages 0..7 survive.
    let (at, _) = {
        let (store, _) = Store::open(dir.path(), 1000, Metrics::new()).unwrap();
        let index = lock(&store.inner.index);
        let l = &index.live[&seqs[7]];
        (l.offset as usize + 20, store.inner.stop.load(Ordering::Relaxed))
    };
    bytes[at] ^= 1;
    std::fs::write(&seg, &bytes).unwrap();
    let (store, rec) = Store::open(dir.path(), 1000, Metrics::new()).unwrap();
    let got: Vec<u64> = rec.pending.iter().map(|p| p.seq).collect();
    // Only the damaged message is lost: the reader resynchronises on the next valid frame.
    let want: Vec<u64> = seqs.iter().copied().filter(|s| *s != seqs[7]).collect();
    assert_eq!(got, want);
    assert_eq!(rec.corrupt.len(), 1);
    assert!(std::fs::metadata(&rec.corrupt[0]).unwrap().len() == bytes.len() as u64, "copy is the whole file");
    assert_eq!(rec.damage.len(), 1);
    assert!(rec.damage[0].kind == "damaged_frame" && rec.damage[0].skipped_bytes > 0, "{:?}", rec.damage);
    let lost = format!("1 message(s) lost with it (seqs {}..={})", seqs[7], seqs[7]);
    assert!(rec.damage[0].detail.contains(&lost), "{:?}", rec.damage);
    // Appends continue after the salvaged part.
    let d = store.put(&envelope("after"), vec!["a".into()], None).await.unwrap();
    store.close_now().await;
    drop(store);
    let (store, rec) = Store::open(dir.path(), 1000, Metrics::new()).unwrap();
    assert_eq!(rec.pending.last().unwrap().seq, d[0].seq);
    assert_eq!(rec.pending.len(), 10, "the salvaged messages are still there after another reopen");
    assert!(rec.corrupt.is_empty() && rec.damage.is_empty(), "the repaired file was reported again: {:?}", rec.damage);
    assert_eq!(store.read(d[0].seq).unwrap().unwrap().envelope.message_id, "after");
    store.close_now().await;
}

#[tokio::test]
async fn a_message_for_more_destinations_than_a_record_holds_is_split_and_each_kept() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(dir.path(), 1000, Metrics::new()).unwrap();
    let names: Vec<String> = (0..70).map(|i| format!("d{i}")).collect();
    let d = store.put(&envelope("wide"), names.clone(), Some((MessageKey::of("wide"), u64::MAX))).await.unwrap();
    assert_eq!(d.iter().map(|d| d.destination.to_string()).collect::<Vec<_>>(), names);
    let seqs: std::collections::BTreeSet<u64> = d.iter().map(|d| d.seq).collect();
    assert_eq!(seqs.len(), 3, "70 destinations need three records of at most 32");
    store.finish_now("d40", d[40].seq).unwrap();
    store.close_now().await;
    drop(store);
    let (store, rec) = Store::open(dir.path(), 1000, Metrics::new()).unwrap();
    let mut pending: Vec<String> = rec.pending.iter().map(|p| p.destination.to_string()).collect();
    pending.sort();
    let mut want: Vec<String> = names.into_iter().filter(|n| n != "d40").collect();
    want.sort();
    assert_eq!(pending, want);
    assert_eq!(rec.remembered, 1, "the MessageId is recorded once");
    store.close_now().await;
}

#[tokio::test]
async fn a_long_pending_oldest_segment_does_not_pin_the_garbage_behind_it() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open_with(dir.path(), 1000, Metrics::new(), 1024).unwrap();
    let mut stuck = Vec::new();
    for i in 0..8 {
        stuck.push(store.put(&envelope(&format!("s{i}")), vec!["down".into()], None).await.unwrap()[0].seq);
    }
    for i in 0..200 {
        let d = store.put(&envelope(&format!("g{i}")), vec!["up".into()], None).await.unwrap();
        store.finish_now("up", d[0].seq).unwrap();
    }
    store.flush_now().await;
    // The bound: garbage at most three times what is pending, plus four segments.
    let deadline = Instant::now() + Duration::from_secs(10);
    while files(dir.path(), ".seg") > 12 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(files(dir.path(), ".seg") <= 12, "{} segments left", files(dir.path(), ".seg"));
    store.close_now().await;
    drop(store);
    let (store, rec) = Store::open(dir.path(), 1000, Metrics::new()).unwrap();
    assert_eq!(rec.pending.iter().map(|p| p.seq).collect::<Vec<_>>(), stuck);
    assert_eq!(store.read(stuck[7]).unwrap().unwrap().envelope.message_id, "s7");
    store.close_now().await;
}

impl Store {
    /// The old inherent accept, as these tests were written against: stores without the
    /// MessageId claim (the door's part).
    async fn put(
        &self,
        envelope: &Envelope,
        destinations: Vec<String>,
        dedup: Option<(MessageKey, u64)>,
    ) -> Result<Vec<Delivery>, QueueError> {
        self.store(envelope, None, "warning", destinations, dedup).await
    }

    fn remembers(&self, key: MessageKey) -> bool {
        self.inner.dedup.contains(key)
    }
}

#[tokio::test]
async fn the_severity_decided_at_accept_is_read_back_after_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(dir.path(), 1000, Metrics::new()).unwrap();
    let env = envelope("sev");
    let new = NewMessage {
        envelope: &env,
        severity: "critical",
        destinations: vec!["a".into()],
        dedup: None,
        replay_of: None,
        message_json: None,
    };
    let Accepted::Stored(d) = Queue::accept(&store, new).await.unwrap() else { panic!("not stored") };
    store.close_now().await;
    drop(store);
    let (store, rec) = Store::open(dir.path(), 1000, Metrics::new()).unwrap();
    assert_eq!(rec.pending.len(), 1);
    assert_eq!(store.read(d[0].seq).unwrap().unwrap().severity.as_deref(), Some("critical"));
    // A MessageId accepted through the trait is a duplicate after the reopen too.
    let key = MessageKey::of("dup");
    let new = NewMessage {
        envelope: &env,
        severity: "info",
        destinations: vec!["a".into()],
        dedup: Some((key, u64::MAX)),
        replay_of: None,
        message_json: None,
    };
    assert!(matches!(Queue::accept(&store, new).await.unwrap(), Accepted::Stored(_)));
    store.close_now().await;
    drop(store);
    let (store, _) = Store::open(dir.path(), 1000, Metrics::new()).unwrap();
    let new = NewMessage {
        envelope: &env,
        severity: "info",
        destinations: vec!["a".into()],
        dedup: Some((key, u64::MAX)),
        replay_of: None,
        message_json: None,
    };
    assert!(matches!(Queue::accept(&store, new).await.unwrap(), Accepted::Duplicate));
    store.close_now().await;
}

/// Messages spread over several 1 KiB segments, all pending; returns the segment files.
async fn several_segments(dir: &Path) -> Vec<PathBuf> {
    let (store, _) = Store::open_with(dir, 1000, Metrics::new(), 1024).unwrap();
    for i in 0..30 {
        store.put(&envelope(&format!("s{i}")), vec!["a".into()], None).await.unwrap();
    }
    store.close_now().await;
    drop(store);
    let mut segs: Vec<PathBuf> = std::fs::read_dir(dir.join(QUEUE_DIR))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    segs.sort();
    assert!(segs.len() >= 4, "{segs:?}");
    segs
}

#[tokio::test]
async fn an_emptied_or_missing_segment_is_reported_never_silent() {
    // A sealed segment truncated to 0 bytes (crash after O_TRUNC, journal replay).
    let dir = tempfile::tempdir().unwrap();
    let segs = several_segments(dir.path()).await;
    std::fs::File::create(&segs[1]).unwrap(); // truncates
    let metrics = Metrics::new();
    let (store, rec) = Store::open_with(dir.path(), 1000, metrics.clone(), 1024).unwrap();
    assert!(rec.damage.iter().any(|d| d.kind == "empty_segment"), "{:?}", rec.damage);
    assert!(metrics.render().contains("webhook_relay_store_damage_total{kind=\"empty_segment\"} 1"));
    assert!(!rec.corrupt.is_empty(), "nothing set aside");
    assert!(rec.pending.len() < 30 && !rec.pending.is_empty(), "what the other segments hold is kept");
    store.close_now().await;
    drop(store);

    // A segment deleted from the middle.
    let dir = tempfile::tempdir().unwrap();
    let segs = several_segments(dir.path()).await;
    std::fs::remove_file(&segs[2]).unwrap();
    let metrics = Metrics::new();
    let (store, rec) = Store::open_with(dir.path(), 1000, metrics.clone(), 1024).unwrap();
    assert!(rec.damage.iter().any(|d| d.kind == "missing_segment"), "{:?}", rec.damage);
    assert!(metrics.render().contains("webhook_relay_store_damage_total{kind=\"missing_segment\"} 1"));
    assert!(!rec.pending.is_empty());
    store.close_now().await;

    // A segment copied over another (its header names a different number).
    let dir = tempfile::tempdir().unwrap();
    let segs = several_segments(dir.path()).await;
    std::fs::copy(&segs[1], &segs[2]).unwrap();
    let (store, rec) = Store::open_with(dir.path(), 1000, Metrics::new(), 1024).unwrap();
    assert!(rec.damage.iter().any(|d| d.kind == "out_of_sequence"), "{:?}", rec.damage);
    assert!(!rec.corrupt.is_empty(), "no copy set aside");
    store.close_now().await;

    // The newest file empty is a crash while creating it: set aside, not damage.
    let dir = tempfile::tempdir().unwrap();
    let segs = several_segments(dir.path()).await;
    let newest = segs.last().unwrap();
    let next = newest.with_file_name(format!("{:020}.seg", segs.len() as u64 + 1));
    std::fs::File::create(&next).unwrap();
    let (store, rec) = Store::open_with(dir.path(), 1000, Metrics::new(), 1024).unwrap();
    assert!(rec.damage.is_empty(), "{:?}", rec.damage);
    assert_eq!(rec.pending.len(), 30);
    store.close_now().await;
}

/// Faults on cue for the writer's appends and syncs (the `LogIo` seam).
#[derive(Default)]
struct Faults {
    writes: Mutex<std::collections::VecDeque<Fault>>,
    syncs: Mutex<std::collections::VecDeque<()>>,
}

#[derive(Debug, Clone, Copy)]
enum Fault {
    NoSpace,
    Eio,
    /// Half the bytes reach the file, then the error.
    Torn,
}

impl files::LogIo for Faults {
    fn write_at(&self, file: &File, buf: &[u8], at: u64) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        match self.writes.lock().unwrap().pop_front() {
            None => file.write_all_at(buf, at),
            Some(Fault::NoSpace) => Err(std::io::Error::from(std::io::ErrorKind::StorageFull)),
            Some(Fault::Eio) => Err(std::io::Error::other("injected EIO")),
            Some(Fault::Torn) => {
                file.write_all_at(&buf[..buf.len() / 2], at)?;
                Err(std::io::Error::other("injected torn write"))
            }
        }
    }

    fn sync(&self, file: &File) -> std::io::Result<()> {
        match self.syncs.lock().unwrap().pop_front() {
            None => file.sync_data(),
            Some(()) => Err(std::io::Error::other("injected fsync EIO")),
        }
    }
}

#[derive(Debug, Clone)]
enum ModelOp {
    Accept,
    Finish(usize),
    FailWrite(Fault),
    FailSync,
    Reopen,
    /// kill -9: the files as they are right now (what the kernel holds) are what the next
    /// process opens; the old one's threads never get to finish anything.
    Crash,
}

fn model_op() -> impl proptest::strategy::Strategy<Value = ModelOp> {
    use proptest::prelude::*;
    prop_oneof![
        6 => Just(ModelOp::Accept),
        3 => (0usize..64).prop_map(ModelOp::Finish),
        1 => prop_oneof![Just(Fault::NoSpace), Just(Fault::Eio), Just(Fault::Torn)].prop_map(ModelOp::FailWrite),
        1 => Just(ModelOp::FailSync),
        1 => Just(ModelOp::Reopen),
        1 => Just(ModelOp::Crash),
    ]
}

/// The directory's files as they were at one instant, as a kill -9 leaves them. Copying
/// file by file is not that: the compactor may append carried records to one file and
/// delete another between two copies, and the copy then holds a state that never existed
/// (it lost messages the real disk never lost). So the files are read until two reads in a
/// row agree.
fn snapshot(dir: &Path) -> Vec<(std::ffi::OsString, Vec<u8>)> {
    let read = || {
        let mut files: Vec<(std::ffi::OsString, Vec<u8>)> = std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name() != "LOCK")
            .filter_map(|e| Some((e.file_name(), std::fs::read(e.path()).ok()?)))
            .collect();
        files.sort();
        files
    };
    let mut last = read();
    loop {
        let now = read();
        if now == last {
            return now;
        }
        last = now;
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// Message ids of every pending message, read back through the store.
fn pending_ids(store: &Store, rec: &Recovered) -> std::collections::BTreeMap<String, u64> {
    rec.pending.iter().map(|d| (store.read(d.seq).unwrap().unwrap().envelope.message_id, d.seq)).collect()
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 48, ..Default::default() })]

    /// Random accepts, finishes, reopens, crashes and injected faults (ENOSPC, EIO, torn writes,
    /// failed fsyncs) against a model. Whatever was answered Ok is pending until finished;
    /// whatever was answered with an error never appears; a finish whose commit saw no
    /// fault is never pending again; the store always reopens; nothing panics.
    #[test]
    fn the_log_keeps_its_promises_under_injected_faults(ops in proptest::collection::vec(model_op(), 1..40)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let mut dirs = vec![tempfile::tempdir().unwrap()];
            let faults = Arc::new(Faults::default());
            let open = |dir: &Path, faults: Arc<Faults>| Store::open_with_io(dir, 10_000, Metrics::new(), 2048, faults).unwrap();
            let (mut store, _) = open(dirs[0].path(), faults.clone());
            // message id -> (seq, finished durably)
            let mut ok: std::collections::BTreeMap<String, (u64, bool)> = Default::default();
            let mut refused: Vec<String> = Vec::new();
            let mut shaky_finishes: std::collections::HashSet<String> = Default::default();
            let armed = |f: &Faults| !f.writes.lock().unwrap().is_empty() || !f.syncs.lock().unwrap().is_empty();
            let mut n = 0;
            for op in ops {
                match op {
                    ModelOp::Accept => {
                        n += 1;
                        let id = format!("m{n}");
                        match store.put(&envelope(&id), vec!["a".into()], None).await {
                            Ok(d) => { ok.insert(id, (d[0].seq, false)); }
                            Err(_) => refused.push(id),
                        }
                    }
                    ModelOp::Finish(i) => {
                        let open_ids: Vec<String> = ok.iter().filter(|(_, (_, f))| !f).map(|(k, _)| k.clone()).collect();
                        if open_ids.is_empty() { continue; }
                        let id = open_ids[i % open_ids.len()].clone();
                        let risky = armed(&faults);
                        store.finish_now("a", ok[&id].0).unwrap();
                        store.flush_now().await;
                        if risky || armed(&faults) { shaky_finishes.insert(id.clone()); }
                        ok.get_mut(&id).unwrap().1 = true;
                    }
                    ModelOp::FailWrite(f) => faults.writes.lock().unwrap().push_back(f),
                    ModelOp::FailSync => faults.syncs.lock().unwrap().push_back(()),
                    ModelOp::Reopen | ModelOp::Crash => {
                        if matches!(op, ModelOp::Crash) {
                            let copy = tempfile::tempdir().unwrap();
                            let from = dirs.last().unwrap().path().join(QUEUE_DIR);
                            std::fs::create_dir(copy.path().join(QUEUE_DIR)).unwrap();
                            for (name, bytes) in snapshot(&from) {
                                std::fs::write(copy.path().join(QUEUE_DIR).join(name), bytes).unwrap();
                            }
                            dirs.push(copy);
                        }
                        store.close_now().await;
                        drop(store);
                        faults.writes.lock().unwrap().clear();
                        faults.syncs.lock().unwrap().clear();
                        let (s, rec) = open(dirs.last().unwrap().path(), faults.clone());
                        let pending = pending_ids(&s, &rec);
                        for (id, (_, finished)) in &ok {
                            if !finished {
                                assert!(pending.contains_key(id), "{id} was accepted and is gone");
                            } else if !shaky_finishes.contains(id) {
                                assert!(!pending.contains_key(id), "{id} was finished and is pending again");
                            }
                        }
                        for id in &refused {
                            assert!(!pending.contains_key(id), "{id} was refused (503) and is stored");
                        }
                        // Finishes that came back count as open again, with their new seqs.
                        for (id, (seq, finished)) in ok.iter_mut() {
                            if let Some(s2) = pending.get(id) {
                                *seq = *s2;
                                *finished = false;
                            }
                        }
                        shaky_finishes.clear();
                        store = s;
                    }
                }
            }
            store.close_now().await;
        });
    }
}
