//! Tunnels on several data arbiters: bytes exact and counters right whichever thread carries
//! them, a tunnel deleted while its thread is busy, and the admin plane answering while data
//! threads carry bulk traffic.

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::thread;
use std::time::{Duration, Instant};

use common::*;

fn threaded(dir: &TempDir, name: &str, threads: usize) -> Node {
    Node::with_config(dir, name, &format!("[node]\nthreads = {threads}\n"))
}

#[test]
fn tunnels_spread_over_the_data_threads_and_carry_bytes_exactly() {
    let dir = TempDir::new("arbiters");
    let a = threaded(&dir, "a", 3);
    let b = threaded(&dir, "b", 3);
    let echo = Backend::echo();
    let mut locals: Vec<(String, SocketAddr)> = Vec::new();
    for t in 0..4 {
        let tunnel = format!("t{t}");
        dial(&a, &b, &tunnel);
        let local = carry(&a, &b, &tunnel, &format!("s{t}"), Some("k"), echo.addr);
        locals.push((tunnel, local));
    }
    let config = a.config();
    let mut threads: Vec<u64> = (0..4)
        .map(|t| {
            config["tunnels"][format!("t{t}")]["thread"]
                .as_u64()
                .expect("a connected tunnel names its thread")
        })
        .collect();
    threads.sort();
    threads.dedup();
    assert_eq!(threads, vec![0, 1, 2], "{config}");

    // Four streams per tunnel at once, all byte-exact.
    let sent_per_tunnel = 4 * 200_000u64;
    let workers: Vec<_> = locals
        .iter()
        .flat_map(|(_, local)| {
            (0..4u64).map(move |i| {
                let local = *local;
                thread::spawn(move || {
                    let data = pattern(200_000, i);
                    assert_eq!(roundtrip(local, &data), data);
                })
            })
        })
        .collect();
    for w in workers {
        w.join().expect("transfer");
    }
    // Each tunnel counted exactly its own bytes (plus the AEAD-free RC4: same length).
    assert!(eventually(Duration::from_secs(5), || {
        let config = a.config();
        locals.iter().all(|(t, _)| {
            config["tunnels"][t]["bytes_sent"].as_u64() == Some(sent_per_tunnel)
                && config["tunnels"][t]["bytes_received"].as_u64() == Some(sent_per_tunnel)
        })
    }));
}

#[test]
fn a_new_tunnel_takes_the_thread_a_deleted_one_left_free() {
    // Two tunnels on two threads; the second goes, a third comes: it takes the free thread, not
    // the next in turn (which carries the first), on the dialling node and the accepting one.
    let dir = TempDir::new("arbiters-free");
    let a = threaded(&dir, "a", 2);
    let b = threaded(&dir, "b", 2);
    let echo = Backend::echo();
    dial(&a, &b, "bulk");
    dial(&a, &b, "gone");
    let thread = |node: &Node, tunnel: &str| {
        node.config()["tunnels"][tunnel]["thread"]
            .as_u64()
            .expect("a connected tunnel names its thread")
    };
    let placed = |node: &Node, tunnel: &str| node.config()["tunnels"][tunnel]["thread"].is_u64();
    assert!(eventually(Duration::from_secs(5), || placed(&b, "gone")));
    let (bulk_a, bulk_b) = (thread(&a, "bulk"), thread(&b, "bulk"));
    assert_ne!(bulk_a, thread(&a, "gone"));
    assert_ne!(bulk_b, thread(&b, "gone"));
    a.ok("DELETE", "/tunnel", r#"{"name":"gone"}"#);
    let gone = || b.config()["tunnels"]["gone"].is_null();
    assert!(eventually(Duration::from_secs(5), gone));
    dial(&a, &b, "interactive");
    let arrived = || placed(&b, "interactive");
    assert!(eventually(Duration::from_secs(5), arrived));
    assert_ne!(thread(&a, "interactive"), bulk_a, "{}", a.config());
    assert_ne!(thread(&b, "interactive"), bulk_b, "{}", b.config());
    // And it carries bytes.
    let local = carry(&a, &b, "interactive", "s", None, echo.addr);
    let data = pattern(100_000, 7);
    assert_eq!(roundtrip(local, &data), data);
}

#[test]
fn a_tunnel_deleted_while_its_thread_is_busy_goes_at_once_and_spares_the_others() {
    let dir = TempDir::new("arbiters-delete");
    let a = threaded(&dir, "a", 2);
    let b = threaded(&dir, "b", 2);
    let echo = Backend::echo();
    dial(&a, &b, "busy");
    let busy = carry(&a, &b, "busy", "bulk", None, echo.addr);
    dial(&a, &b, "calm");
    let calm = carry(&a, &b, "calm", "quiet", None, echo.addr);
    let config = a.config();
    assert_ne!(
        config["tunnels"]["busy"]["thread"], config["tunnels"]["calm"]["thread"],
        "{config}"
    );
    // Keep the busy tunnel's thread busy: echo traffic flat out on several streams.
    let hogs: Vec<_> = (0..4)
        .map(|i| {
            thread::spawn(move || {
                let mut s = connect(busy);
                let chunk = pattern(256 * 1024, i);
                let mut back = vec![0u8; chunk.len()];
                loop {
                    if s.write_all(&chunk).is_err() || s.read_exact(&mut back).is_err() {
                        return; // reset when the tunnel goes
                    }
                    assert_eq!(back, chunk, "never a wrong byte");
                }
            })
        })
        .collect();
    thread::sleep(Duration::from_millis(500));
    // A transfer on the other thread runs across the deletion.
    let quiet = thread::spawn(move || {
        let data = pattern(4 << 20, 9);
        assert_eq!(roundtrip(calm, &data), data);
    });
    let started = Instant::now();
    a.ok("DELETE", "/tunnel", r#"{"name":"busy"}"#);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    for h in hogs {
        h.join().expect("hog");
    }
    quiet.join().expect("the other tunnel's transfer");
    assert!(a.config()["tunnels"].get("busy").is_none());
    assert!(eventually(Duration::from_secs(5), || b.config()["tunnels"]
        .get("busy")
        .is_none()));
}

#[test]
fn the_admin_api_answers_while_every_data_thread_carries_bulk() {
    let dir = TempDir::new("arbiters-admin");
    let a = threaded(&dir, "a", 2);
    let b = threaded(&dir, "b", 2);
    let echo = Backend::echo();
    let mut locals = Vec::new();
    for t in 0..2 {
        let tunnel = format!("t{t}");
        dial(&a, &b, &tunnel);
        locals.push(carry(&a, &b, &tunnel, &format!("s{t}"), None, echo.addr));
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let loads: Vec<_> = locals
        .iter()
        .map(|&local| {
            let stop = stop.clone();
            thread::spawn(move || {
                let data = pattern(1 << 20, 1);
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    assert_eq!(roundtrip(local, &data), data);
                }
            })
        })
        .collect();
    thread::sleep(Duration::from_millis(300));
    let mut worst = Duration::ZERO;
    for i in 0..50 {
        let started = Instant::now();
        a.ok(
            "POST",
            "/service",
            &format!(r#"{{"name":"x{i}", "type":"remote", "addr":["127.0.0.1", "80"]}}"#),
        );
        worst = worst.max(started.elapsed());
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for l in loads {
        l.join().expect("load");
    }
    // Bounded, not a benchmark: the admin plane is not stuck behind the data threads.
    assert!(
        worst < Duration::from_secs(1),
        "slowest POST took {worst:?}"
    );
}
