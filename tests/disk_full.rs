//! A full disk for real: the gateway's data directory on a 40 MiB tmpfs, Slack down while
//! big alarms fill it. The gateway must answer 503 (never lose what it said 200 to), say
//! not ready, and once Slack is back and the backlog drains, recover by itself: space
//! comes back, /sns answers 200 and /readyz 200 again, without a restart.
//!
//! Mounting needs root. Under CI (`CI=true`, where .ci/run runs as root) the test fails if
//! the mount is refused; elsewhere it says loudly that it was skipped.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_webhook-relay");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Option<Tmpfs> {
        let out = Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"]).arg(at).output();
        match out {
            Ok(o) if o.status.success() => Some(Tmpfs(at.to_path_buf())),
            other => {
                let why = match other {
                    Ok(o) => String::from_utf8_lossy(&o.stderr).into_owned(),
                    Err(e) => e.to_string(),
                };
                if std::env::var("CI").is_ok_and(|v| v == "true") {
                    panic!("cannot mount a tmpfs for the disk-full test (CI must run it as root): {why}");
                }
                eprintln!("\n!!!!!!!! SKIPPED: the disk-full test needs root to mount a tmpfs: {why} !!!!!!!!\n");
                None
            }
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

struct Gateway(Child);

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn get(addr: SocketAddr, path: &str) -> u16 {
    reqwest_like::Client.get(addr, path).await.0
}

/// routes.toml with one destination at a Slack that is down (nothing listens yet); returns
/// where it would listen.
fn one_route(dir: &Path) -> SocketAddr {
    let slack: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    std::fs::write(
        dir.join("routes.toml"),
        format!(
            "[sns]\ntopics = [\"arn:aws:sns:*:123456789012:alarms-*\"]\n[destinations.c]\nurl = \"http://{slack}/hook/c\"\n\
             rate = \"200/s\"\nburst = 50\nmax_attempts = 100000\n[[route]]\nname = \"all\"\nto = [\"c\"]\n"
        ),
    )
    .unwrap();
    signer().pin_into(&dir.join("certs")).unwrap();
    slack
}

/// The gateway with its data dir on `mnt`, its log in `dir/log`.
/// The gateway on ports it picks (read from its log), its data on `mnt`.
fn spawn(dir: &Path, mnt: &Path) -> (Gateway, SocketAddr, SocketAddr) {
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .arg("--config")
        .arg(dir.join("routes.toml"))
        .arg("--data-dir")
        .arg(mnt.join("data"))
        .arg("--sns-cert-dir")
        .arg(dir.join("certs"))
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.join("log")).unwrap())
        .spawn()
        .unwrap();
    let (addr, admin) = webhook_relay::testkit::bound_addrs(&dir.join("log"), &mut child, Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{e}"));
    (Gateway(child), addr, admin)
}

async fn wait_up(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while reqwest_like::try_post(addr, "x".into()).await.is_err() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A signed alarm of about 100 KB (a long description).
fn big(i: usize) -> String {
    let mut msg: serde_json::Value = serde_json::from_str(&alarm_message(
        &format!("prod-fill{i}"),
        "ALARM",
        "OK",
        "full",
        "us-east-1",
        "123456789012",
    ))
    .unwrap();
    msg["AlarmDescription"] = "x".repeat(100_000).into();
    signer().notification(TOPIC, &format!("fill-{i}"), None, &msg.to_string()).to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_recovers_by_itself_once_the_backlog_drains() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let Some(_tmpfs) = Tmpfs::mount(&mnt, "40m") else { return };
    let slack = one_route(dir.path());
    let (_gateway, addr, admin) = spawn(dir.path(), &mnt);
    wait_up(addr).await;

    // Slack is down: big alarms (100 KB each) until the disk is full.
    let mut accepted = Vec::new();
    let mut refused = 0;
    for i in 0..1000 {
        match reqwest_like::try_post(addr, big(i).into()).await {
            Ok((200, _)) => accepted.push(i),
            Ok((503, _)) => {
                refused += 1;
                if refused >= 3 {
                    break;
                }
            }
            other => panic!("unexpected answer {other:?}"),
        }
    }
    assert!(refused >= 3, "the disk never filled ({} accepted)", accepted.len());
    assert!(accepted.len() > 100, "only {} accepted before the disk filled", accepted.len());
    assert_eq!(get(admin, "/readyz").await, 503, "ready while the store cannot write");

    // Slack comes back: everything accepted is delivered, space comes back, and the
    // gateway takes alarms again without a restart.
    let sink = SlackSink::start_on(slack).await.unwrap();
    let all = sink
        .wait_until(Duration::from_secs(60), |_| name_counts(&sink, "c", "prod-fill").len() == accepted.len())
        .await;
    assert!(all, "{} of {} accepted alarms delivered", name_counts(&sink, "c", "prod-fill").len(), accepted.len());
    // Readiness comes back by itself: a pod that is not ready gets no traffic to find out.
    let deadline = Instant::now() + Duration::from_secs(30);
    while get(admin, "/readyz").await != 200 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(get(admin, "/readyz").await, 200, "not ready again after the drain, with no request to trigger it");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut answer = 0;
    let mut i = 10_000;
    while Instant::now() < deadline {
        answer = reqwest_like::try_post(addr, big(i).into()).await.map(|a| a.0).unwrap_or(0);
        i += 1;
        if answer == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let log = std::fs::read_to_string(dir.path().join("log")).unwrap_or_default();
    assert_eq!(answer, 200, "still refusing after the drain:\n{}", &log[log.len().saturating_sub(3000)..]);
    let deadline = Instant::now() + Duration::from_secs(5);
    while get(admin, "/readyz").await != 200 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(get(admin, "/readyz").await, 200, "not ready again after the disk recovered");
    // The refusals were logged at a bounded rate, not once per failed commit.
    let lines = log.lines().filter(|l| l.contains("store write failed")).count();
    assert!(lines < 30, "{lines} log lines for the write failures");
}

#[tokio::test(flavor = "multi_thread")]
async fn readiness_comes_back_by_itself_when_space_does() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let Some(_tmpfs) = Tmpfs::mount(&mnt, "40m") else { return };
    one_route(dir.path());
    let (_gateway, addr, admin) = spawn(dir.path(), &mnt);
    wait_up(addr).await;
    // Something else fills the volume (a ballast file), then a write fails.
    let ballast = mnt.join("ballast");
    let _ = std::fs::write(&ballast, vec![1u8; 40 << 20]);
    let mut refused = false;
    for i in 0..200 {
        if reqwest_like::try_post(addr, big(i).into()).await.is_ok_and(|a| a.0 == 503) {
            refused = true;
            break;
        }
    }
    assert!(refused, "the disk never filled");
    assert_eq!(get(admin, "/readyz").await, 503);
    // The space comes back; no request arrives (a pod that is not ready gets none).
    std::fs::remove_file(&ballast).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while get(admin, "/readyz").await != 200 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(get(admin, "/readyz").await, 200, "readiness did not come back by itself");
    assert_eq!(reqwest_like::try_post(addr, big(1000).into()).await.unwrap().0, 200);
}
