//! Limits a small VPS survives a hostile peer with: each is hit by a real peer or real clients,
//! refused clearly, counted in `GET /config`, and nothing else is disturbed.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use menet_actors::protocol::Frame;

fn limits(node: &Node) -> serde_json::Value {
    node.config()["limits"].clone()
}

/// B with `[limits]` lines, a remote service `svc` (to `target`) bound to tunnel `raw`.
fn acceptor(dir: &TempDir, limits: &str, target: std::net::SocketAddr) -> Node {
    let b = Node::with_config(dir, "b", &format!("[limits]\n{limits}"));
    b.ok(
        "POST",
        "/service",
        &format!(
            r#"{{"name":"svc", "type": "remote", "addr":["127.0.0.1", "{}"]}}"#,
            target.port()
        ),
    );
    b.ok(
        "POST",
        "/bind",
        r#"{"tunnel": "raw", "service":"svc", "type": "remote"}"#,
    );
    b
}

fn open(s: &mut RawPeer, stream: u32) {
    send_frame(
        s,
        &Frame::Open {
            stream,
            service: "svc".into(),
            keyed: None,
            protocol: menet_actors::protocol::Protocol::Tcp,
            origin: None,
        },
    );
}

/// Counts OPEN_OK and OPEN_FAIL answers (with the failure reasons) until `n` have come.
fn answers(s: &mut RawPeer, n: usize) -> (usize, Vec<String>) {
    let (mut ok, mut failed) = (0, Vec::new());
    recv_frame_until(s, Duration::from_secs(10), |f| {
        match f {
            Frame::OpenOk { .. } => ok += 1,
            Frame::OpenFail { reason, .. } => failed.push(reason.clone()),
            _ => {}
        }
        ok + failed.len() == n
    })
    .expect("every OPEN answered");
    (ok, failed)
}

#[test]
fn streams_past_the_announced_limit_are_refused_not_the_tunnel() {
    let dir = TempDir::new("streams");
    let backend = Backend::echo();
    let b = acceptor(&dir, "max_streams = 3\n", backend.addr);
    let mut peer = raw_dial(b.tunnel, "raw", None, None).expect("handshake");
    for i in 0..4 {
        open(&mut peer, 2 * i + 1);
    }
    let (ok, failed) = answers(&mut peer, 4);
    assert_eq!(
        (ok, failed.as_slice()),
        (3, &["too many streams on this tunnel".to_owned()][..])
    );
    assert_eq!(limits(&b)["streams_per_tunnel"]["refused"], 1);
    assert_eq!(b.config()["tunnels"]["raw"]["state"], "connected");
    // A menet dialer is told the limit and keeps to it: its fourth client is reset at once.
    let a = Node::start();
    dial(&a, &b, "tunnel1");
    let local = carry(&a, &b, "tunnel1", "echo", None, backend.addr);
    let mut held: Vec<TcpStream> = (0..3)
        .map(|i| {
            let mut s = connect(local);
            echo_once(&mut s, i);
            s
        })
        .collect();
    assert!(refused_within(local, Duration::from_secs(2)));
    assert!(a.wait_log("takes at most 3 streams", Duration::from_secs(2)));
    echo_once(&mut held[0], 9);
}

#[test]
fn backend_dials_a_peer_causes_are_rate_limited() {
    let dir = TempDir::new("dials");
    let backend = Backend::echo();
    let b = acceptor(&dir, "max_dials_per_second = 5\n", backend.addr);
    let mut peer = raw_dial(b.tunnel, "raw", None, None).expect("handshake");
    for i in 0..20 {
        open(&mut peer, 2 * i + 1);
    }
    let (ok, failed) = answers(&mut peer, 20);
    assert!(
        (5..=7).contains(&ok),
        "{ok} dials in a burst with a rate of 5/s"
    );
    assert!(
        failed
            .iter()
            .all(|r| r == "too many new streams per second"),
        "{failed:?}"
    );
    assert_eq!(limits(&b)["dials_per_second"]["refused"], failed.len());
}

#[test]
fn tunnels_and_handshakes_are_capped() {
    let dir = TempDir::new("tunnels");
    let backend = Backend::echo();
    let b = acceptor(&dir, "max_tunnels = 1\nmax_handshakes = 2\n", backend.addr);
    let _first = raw_dial(b.tunnel, "raw", None, None).expect("the first tunnel");
    let e = raw_dial(b.tunnel, "second", None, None).expect_err("one tunnel at most");
    // A dialer without the secret is told only what it needs; the log says the limit.
    assert!(e.contains("accepts no more tunnels now"), "{e}");
    assert!(b.wait_log("at most 1 tunnels", Duration::from_secs(2)));
    assert_eq!(limits(&b)["tunnels"]["refused"], 1);
    // Two connections that never speak hold both handshake slots; a third from the same
    // address is refused while they are young (a burst of honest dialers finishes), and once
    // they have waited a second it pushes the oldest out (closed at once) instead.
    let mut silent: Vec<TcpStream> = (0..2)
        .map(|_| TcpStream::connect(b.tunnel).expect("connect"))
        .collect();
    thread::sleep(Duration::from_millis(100));
    let mut early = TcpStream::connect(b.tunnel).expect("connect");
    assert!(closed_within(&mut early, Duration::from_secs(1)));
    assert_eq!(limits(&b)["handshakes"]["refused"], 1);
    thread::sleep(Duration::from_millis(1100));
    let mut third = TcpStream::connect(b.tunnel).expect("connect");
    let started = Instant::now();
    assert!(closed_within(&mut silent[0], Duration::from_secs(2)));
    assert!(started.elapsed() < Duration::from_secs(1));
    assert!(b.wait_log(
        "dropped the oldest unproven handshake",
        Duration::from_secs(2)
    ));
    assert_eq!(limits(&b)["handshakes"]["dropped"], 1);
    assert_eq!(limits(&b)["handshakes"]["in_use"], 2);
    third
        .write_all(&hello_bytes("third"))
        .expect("the newcomer is heard");
}

#[test]
fn a_local_service_carries_at_most_its_limit() {
    let dir = TempDir::new("conns");
    let backend = Backend::echo();
    let a = Node::with_config(&dir, "a", "[limits]\nmax_connections_per_service = 2\n");
    let b = Node::start();
    let local = wire(&a, &b, backend.addr, None);
    let mut held: Vec<TcpStream> = (0..2)
        .map(|i| {
            let mut s = connect(local);
            echo_once(&mut s, i);
            s
        })
        .collect();
    assert!(refused_within(local, Duration::from_secs(2)));
    assert_eq!(limits(&a)["connections_per_service"]["refused"], 1);
    assert_eq!(
        a.config()["services"]["local"]["service1"]["connections"],
        2
    );
    drop(held.pop());
    assert!(eventually(Duration::from_secs(2), || {
        try_roundtrip(local, b"room again").is_ok_and(|r| r == b"room again")
    }));
}

#[test]
fn out_of_descriptors_the_admin_api_and_tunnel_port_still_answer() {
    let dir = TempDir::new("fds");
    let backend = Backend::echo();
    let a = Node::build()
        .config(
            &dir,
            "a",
            "[limits]\nfd_reserve = 64\ndescriptor_share_percent = 100\n",
        )
        .nofile(160)
        .start();
    let b = Node::start();
    let local = wire(&a, &b, backend.addr, None);
    let max = limits(&a)["descriptors"]["max"].as_u64().expect("max");
    assert_eq!(max, 160 - 64);
    // Far more clients than descriptors: the ones past the limit are reset.
    let clients: Vec<TcpStream> = (0..200)
        .filter_map(|_| TcpStream::connect(local).ok())
        .collect();
    assert!(eventually(Duration::from_secs(5), || {
        limits(&a)["descriptors"]["refused"].as_u64() > Some(0)
    }));
    assert!(a.wait_log("out of file descriptors", Duration::from_secs(2)));
    // The reserve keeps the admin API and the tunnel port answering.
    let c = Node::start();
    dial(&c, &a, "tunnel2");
    // The acceptor shows the name once its side of the handshake is done.
    assert!(eventually(Duration::from_secs(5), || {
        a.config()["tunnels"]["tunnel2"]["state"] == "connected"
    }));
    drop(clients);
    assert!(healed(local, b"recovered", Duration::from_secs(5)).is_some());
}

#[test]
fn a_peer_that_announces_huge_windows_and_never_reads_costs_our_window_only() {
    let dir = TempDir::new("huge");
    // A backend that sends as fast as it can.
    let flood = Backend::start(|mut s| {
        let chunk = vec![7u8; 1 << 20];
        while s.write_all(&chunk).is_ok() {}
    });
    let b = Node::with_config(
        &dir,
        "b",
        "[tunnel]\nstream_window = 1048576\ntunnel_window = 4194304\n",
    );
    b.ok(
        "POST",
        "/service",
        &format!(
            r#"{{"name":"svc", "type": "remote", "addr":["127.0.0.1", "{}"]}}"#,
            flood.addr.port()
        ),
    );
    b.ok(
        "POST",
        "/bind",
        r#"{"tunnel": "raw", "service":"svc", "type": "remote"}"#,
    );
    let before = b.rss_kib();
    let mut peer =
        raw_dial_windows(b.tunnel, "raw", None, None, (1 << 30, 1 << 30)).expect("handshake");
    for i in 0..8 {
        open(&mut peer, 2 * i + 1);
    }
    // Never read: let the node push as much as it will.
    thread::sleep(Duration::from_secs(3));
    let grown = b.rss_kib().saturating_sub(before);
    let queued = b.config()["tunnels"]["raw"]["queued_bytes"]
        .as_u64()
        .expect("queued");
    eprintln!("peer announcing 1 GiB windows, never reading: +{grown} KiB, {queued} bytes queued");
    assert!(queued <= (4 << 20) + (512 << 10), "queued {queued}");
    assert!(grown < 24 * 1024, "RSS grew {grown} KiB");
    let mut buf = [0u8; 1];
    let _ = peer.read(&mut buf);
}
