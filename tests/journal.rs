//! The state journal with real processes: kill -9 at arbitrary instants while changes stream in
//! (every acknowledged change is there after the restart, and the files load), compaction while
//! changes stream in, a torn last record, a corrupt middle.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use common::*;

/// A node whose journal is folded into the snapshot every few kilobytes.
fn node(dir: &TempDir, compact_bytes: u64) -> Node {
    let state = dir.path("n.json");
    Node::with_config(
        dir,
        "n",
        &format!(
            "[state]\npath = {:?}\ncompact_bytes = {compact_bytes}\n",
            state.display().to_string()
        ),
    )
}

/// Posts remote services `prefix-0`, `prefix-1`, ... from `clients` threads until `stop`;
/// the names whose POST was answered 200.
fn stream_changes(
    node: &Node,
    prefix: &'static str,
    clients: usize,
    stop: Arc<AtomicBool>,
) -> Vec<thread::JoinHandle<Vec<String>>> {
    (0..clients)
        .map(|c| {
            let admin = node.admin;
            let stop = stop.clone();
            thread::spawn(move || {
                let mut acked = Vec::new();
                let mut i = 0;
                while !stop.load(Ordering::SeqCst) {
                    let name = format!("{prefix}-{c}-{i}");
                    let body = format!(
                        r#"{{"name":"{name}", "key":"k{i}", "type":"remote", "addr":["127.0.0.1", "{}"]}}"#,
                        1000 + i % 60000
                    );
                    match try_http(admin, "POST", "/service", &body) {
                        Ok((200, _)) => acked.push(name),
                        _ => break,
                    }
                    i += 1;
                }
                acked
            })
        })
        .collect()
}

#[test]
fn every_acknowledged_change_survives_kill_9_at_any_instant() {
    let dir = TempDir::new("journal-kill");
    let mut n = node(&dir, 4096);
    let mut all: Vec<String> = Vec::new();
    // Kill at different instants: early, mid-compaction likely, late.
    for (round, ms) in [(0, 37u64), (1, 160), (2, 420), (3, 90), (4, 260)] {
        let stop = Arc::new(AtomicBool::new(false));
        let prefix: &'static str = Box::leak(format!("r{round}").into_boxed_str());
        let clients = stream_changes(&n, prefix, 4, stop.clone());
        thread::sleep(Duration::from_millis(ms));
        n.kill9();
        stop.store(true, Ordering::SeqCst);
        for c in clients {
            all.extend(c.join().expect("client"));
        }
        n.restart();
        let config = n.config();
        let remote = config["services"]["remote"]
            .as_object()
            .expect("remote services");
        for name in &all {
            assert!(
                remote.contains_key(name),
                "round {round}: {name} was acknowledged but is gone"
            );
        }
        // Unacknowledged changes may be there or not; nothing else is.
        assert!(remote.len() >= all.len());
    }
    assert!(
        all.len() > 100,
        "only {} changes were acknowledged",
        all.len()
    );
    // The journal was folded in along the way: the snapshot exists and holds most of it.
    assert!(dir.path("n.json").exists());
}

#[test]
fn compaction_under_load_keeps_every_change_and_the_traffic() {
    let dir = TempDir::new("journal-compact");
    let mut n = node(&dir, 2048);
    let b = Node::start();
    let echo = Backend::echo();
    let local = wire(&n, &b, echo.addr, None);
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = {
        let stop = stop.clone();
        thread::spawn(move || {
            let mut rounds = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let data = pattern(32 * 1024, rounds);
                assert_eq!(roundtrip(local, &data), data);
                rounds += 1;
            }
            rounds
        })
    };
    let changes = Arc::new(AtomicBool::new(false));
    let clients = stream_changes(&n, "c", 3, changes.clone());
    thread::sleep(Duration::from_millis(1500));
    changes.store(true, Ordering::SeqCst);
    let acked: Vec<String> = clients
        .into_iter()
        .flat_map(|c| c.join().expect("client"))
        .collect();
    stop.store(true, Ordering::SeqCst);
    assert!(traffic.join().expect("traffic") > 0);
    assert!(
        n.log_contains("folded into the snapshot"),
        "no compaction ran"
    );
    let journal = std::fs::metadata(dir.path("n.json.journal"))
        .expect("journal")
        .len();
    let snapshot = std::fs::metadata(dir.path("n.json"))
        .expect("snapshot")
        .len();
    assert!(
        journal <= snapshot.max(2048) + 4096,
        "journal {journal}, snapshot {snapshot}"
    );
    n.kill9();
    n.restart();
    let config = n.config();
    for name in &acked {
        assert!(config["services"]["remote"].get(name).is_some(), "{name}");
    }
    assert_eq!(config["bind"]["local"]["service1"], "tunnel1");
}

#[test]
fn a_torn_last_record_is_dropped_and_a_corrupt_middle_stops_the_start() {
    let dir = TempDir::new("journal-torn");
    let mut n = node(&dir, 1 << 20);
    for i in 0..5 {
        n.ok(
            "POST",
            "/service",
            &format!(
                r#"{{"name":"s{i}", "type":"remote", "addr":["127.0.0.1", "{}"]}}"#,
                80 + i
            ),
        );
    }
    n.kill9();
    let journal = dir.path("n.json.journal");
    let good = std::fs::read(&journal).expect("journal");
    // A crash cut the last append short: dropped with a warning, everything before it is there.
    let mut torn = good.clone();
    torn.extend_from_slice(b"0123456789abcdef {\"op\":\"service\",\"side\":\"remote\",\"na");
    std::fs::write(&journal, &torn).expect("tear");
    n.restart();
    assert!(n.wait_log("torn record at offset", Duration::from_secs(5)));
    let config = n.config();
    for i in 0..5 {
        assert!(config["services"]["remote"].get(format!("s{i}")).is_some());
    }
    // The tail was cut off, so new records follow the good ones and load again.
    n.ok(
        "POST",
        "/service",
        r#"{"name":"after", "type":"remote", "addr":["127.0.0.1", "99"]}"#,
    );
    n.kill9();
    n.restart();
    assert!(n.config()["services"]["remote"].get("after").is_some());
    n.kill9();

    // A flipped byte in a record with good ones after it is not a torn write: the node refuses
    // to start, naming the journal and the offset, and leaves the files as they are.
    let mut bytes = std::fs::read(&journal).expect("journal");
    let second = bytes.iter().position(|&b| b == b'\n').expect("a line") + 1;
    bytes[second + 40] ^= 0x20;
    std::fs::write(&journal, &bytes).expect("corrupt");
    // Port 0 and a deadline: if the corruption went unnoticed, the node would start, and the
    // test must fail, not hang or take a fixed port.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_menet"))
        .arg("--config")
        .arg(dir.path("n.toml"))
        .args(["--admin", "127.0.0.1:0", "--tunnel", "127.0.0.1:0"])
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("menet");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while child.try_wait().expect("wait").is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("a node with a corrupt journal started");
        }
        thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("output");
    let (code, stderr) = (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("n.json.journal"), "{stderr}");
    assert!(stderr.contains(&format!("offset {second}")), "{stderr}");
    assert_eq!(std::fs::read(&journal).expect("journal"), bytes);
}
