//! Reconfiguration at runtime and what happens to connections: unbind, rebind, moving a listener,
//! deleting and recreating a tunnel, unreachable backends, key mismatch, idle timeout.

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;

const BIND_LOCAL: &str = r#"{"tunnel": "tunnel1", "service":"service1", "type": "local"}"#;

#[test]
fn unbind_rebind_and_move_leave_live_connections_alone() {
    let backend = Backend::echo();
    let (a, b) = (Node::start(), Node::start());
    let local = wire(&a, &b, backend.addr, Some("k"));
    let mut live = connect(local);
    echo_once(&mut live, 1);

    // Unbound: new connections are closed at once, the live one keeps working.
    a.ok("DELETE", "/bind", BIND_LOCAL);
    assert!(refused_within(local, Duration::from_secs(2)));
    echo_once(&mut live, 2);
    assert_eq!(a.request("DELETE", "/bind", BIND_LOCAL).0, 404);

    // Rebound: new connections flow again.
    a.ok("POST", "/bind", BIND_LOCAL);
    assert_eq!(roundtrip(local, b"again"), b"again");

    // Moved to another port: the old port stops listening, the new one serves, the live
    // connection accepted on the old port is untouched.
    let port = free_port();
    a.ok(
        "POST",
        "/service",
        &format!(
            r#"{{"name":"service1", "key":"k", "type": "local", "addr":["0.0.0.0", "{port}"]}}"#
        ),
    );
    assert!(
        std::net::TcpStream::connect(local).is_err(),
        "old port closed"
    );
    let moved = SocketAddr::from(([127, 0, 0, 1], port));
    assert_eq!(roundtrip(moved, b"moved"), b"moved");
    echo_once(&mut live, 3);

    // Same port, another address (0.0.0.0 to 127.0.0.1): the service's own old listener is
    // what holds the port, so it is released first.
    a.ok(
        "POST",
        "/service",
        &format!(
            r#"{{"name":"service1", "key":"k", "type": "local", "addr":["127.0.0.1", "{port}"]}}"#
        ),
    );
    assert_eq!(roundtrip(moved, b"narrowed"), b"narrowed");
    // Widening back to 0.0.0.0 while someone else holds 127.0.0.2 on that port: refused, and
    // the service keeps listening where it was.
    let squatter = std::net::TcpListener::bind(("127.0.0.2", port)).expect("bind");
    let (status, reply) = a.request(
        "POST",
        "/service",
        &format!(
            r#"{{"name":"service1", "key":"k", "type": "local", "addr":["0.0.0.0", "{port}"]}}"#
        ),
    );
    assert_eq!(status, 409, "{reply}");
    assert_eq!(roundtrip(moved, b"kept"), b"kept");
    drop(squatter);

    // Moved back at once: the port is free again (no race with the old listener).
    a.ok(
        "POST",
        "/service",
        &format!(
            r#"{{"name":"service1", "key":"k", "type": "local", "addr":["127.0.0.1", "{}"]}}"#,
            local.port()
        ),
    );
    assert_eq!(roundtrip(local, b"back"), b"back");

    // Another tunnel and another service added meanwhile disturb nothing.
    let c = Node::start();
    dial(&a, &c, "tunnel2");
    let other = free_port();
    a.ok(
        "POST",
        "/service",
        &format!(r#"{{"name":"other", "type": "local", "addr":["127.0.0.1", "{other}"]}}"#),
    );
    echo_once(&mut live, 4);
}

#[test]
fn deleting_a_tunnel_closes_its_connections_on_both_ends_and_it_can_be_recreated() {
    let backend = Backend::echo();
    let (a, b) = (Node::start(), Node::start());
    let local = wire(&a, &b, backend.addr, None);
    let mut live = connect(local);
    echo_once(&mut live, 5);

    let started = Instant::now();
    a.ok("DELETE", "/tunnel", r#"{"name":"tunnel1"}"#);
    assert!(
        closed_within(&mut live, Duration::from_secs(2)),
        "live connection closed"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(eventually(Duration::from_secs(3), || b.config()["tunnels"]
        .get("tunnel1")
        .is_none()));
    assert!(a.config()["tunnels"].get("tunnel1").is_none());
    assert_eq!(
        a.request("DELETE", "/tunnel", r#"{"name":"tunnel1"}"#).0,
        404
    );

    // While the tunnel is gone, a client is closed at once, not held.
    assert!(refused_within(local, Duration::from_secs(2)));

    // The name was freed by its dialer: B dropped its bind to it (a stranger could claim the
    // name next), A kept its own. Recreated and bound again on B, traffic flows again.
    assert!(b.config()["bind"]["remote"]["service1"].is_null());
    assert_eq!(a.config()["bind"]["local"]["service1"], "tunnel1");
    dial(&a, &b, "tunnel1");
    b.ok(
        "POST",
        "/bind",
        r#"{"tunnel": "tunnel1", "service":"service1", "type": "remote"}"#,
    );
    assert_eq!(roundtrip(local, b"recreated"), b"recreated");
}

#[test]
fn replacing_a_tunnel_by_name_keeps_serving() {
    let backend = Backend::echo();
    let (a, b) = (Node::start(), Node::start());
    let local = wire(&a, &b, backend.addr, None);
    // A new destination (the same peer through a relay) replaces the tunnel.
    let relay = Relay::start(b.tunnel);
    dial_addr(&a, relay.addr, "tunnel1");
    assert_eq!(roundtrip(local, b"replaced"), b"replaced");
    assert!(eventually(Duration::from_secs(2), || b.config()["tunnels"]
        ["tunnel1"]["state"]
        == "connected"));
    assert_eq!(
        a.config()["tunnels"]["tunnel1"]["dest"][1],
        relay.addr.port(),
        "{}",
        a.config()
    );
}

/// The seed's calls typed again, unchanged, while a connection is live: nothing is torn down.
#[test]
fn reposting_unchanged_bodies_leaves_live_connections_running() {
    let backend = Backend::echo();
    let (a, b) = (Node::start(), Node::start());
    let local = wire(&a, &b, backend.addr, Some("UHI@&s8sa*S"));
    let mut held = connect(local);
    echo_once(&mut held, 1);
    let peer_before = a.config()["tunnels"]["tunnel1"]["peer"].clone();
    dial(&a, &b, "tunnel1");
    let key = r#""key":"UHI@&s8sa*S", "#;
    carry_at(
        &a,
        &b,
        "tunnel1",
        "service1",
        key,
        local.port(),
        backend.addr,
    );
    echo_once(&mut held, 2);
    assert_eq!(
        a.config()["tunnels"]["tunnel1"]["peer"],
        peer_before,
        "the same tunnel connection"
    );
    assert_eq!(a.config()["tunnels"]["tunnel1"]["streams"], 1);
}

#[test]
fn unreachable_backend_closes_the_client_promptly() {
    let dead = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let (a, b) = (Node::start(), Node::start());
    let local = wire(&a, &b, dead, None);
    let started = Instant::now();
    let mut s = connect(local);
    // The refusal may reset the client before it writes (a dead port refuses at once).
    let _ = s.write_all(b"hello?");
    assert!(closed_within(&mut s, Duration::from_secs(4)));
    assert!(started.elapsed() < Duration::from_secs(4));
    assert!(b.wait_log("cannot reach", Duration::from_secs(2)));
}

#[test]
fn missing_remote_service_closes_the_client() {
    let (a, b) = (Node::start(), Node::start());
    let backend = Backend::echo();
    let local = wire(&a, &b, backend.addr, None);
    b.ok(
        "DELETE",
        "/service",
        r#"{"name":"service1", "type":"remote"}"#,
    );
    assert!(refused_within(local, Duration::from_secs(2)));
    assert!(b.wait_log("no remote service named service1", Duration::from_secs(2)));
}

#[test]
fn key_mismatch_refuses_the_stream_on_both_ends() {
    let backend = Backend::echo();
    let (a, b) = (Node::start(), Node::start());
    let local = wire(&a, &b, backend.addr, Some("right"));
    b.ok(
        "POST",
        "/service",
        &format!(
            r#"{{"name":"service1", "key":"wrong", "type": "remote", "addr":["127.0.0.1", "{}"]}}"#,
            backend.addr.port()
        ),
    );
    let mut s = connect(local);
    // The refusal may reset the client before it writes (loopback is that fast): that is fine.
    let _ = s.write_all(b"anyone?");
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    assert!(got.is_empty(), "the client never receives garbage");
    assert!(b.wait_log("key mismatch", Duration::from_secs(2)));
    // Without a tunnel secret the peer is told only that the stream was refused: it learns
    // nothing about which services exist.
    assert!(a.wait_log("refused by the peer: refused", Duration::from_secs(2)));
    assert!(!a.log_contains("key mismatch"));
}

#[test]
fn idle_timeout_closes_quiet_connections_only() {
    let backend = Backend::echo();
    let (a, b) = (Node::start(), Node::start());
    let local = wire(&a, &b, backend.addr, None);
    a.ok(
        "POST",
        "/service",
        &format!(
            r#"{{"name":"service1", "timeout": 400, "type": "local", "addr":["127.0.0.1", "{}"]}}"#,
            local.port()
        ),
    );
    let mut busy = connect(local);
    let mut quiet = connect(local);
    echo_once(&mut quiet, 6);
    for i in 0..6 {
        echo_once(&mut busy, 10 + i);
        std::thread::sleep(Duration::from_millis(150));
    }
    assert!(
        closed_within(&mut quiet, Duration::from_millis(100)),
        "idle one closed"
    );
    echo_once(&mut busy, 20);
    // 400 ms is likely seconds typed as milliseconds: the node says so.
    assert!(a.wait_log(
        "service service1 (local): idle timeout 400 ms: its connections are reset after 400 ms",
        Duration::from_secs(2)
    ));
    assert!(!b.log_contains("idle timeout"));
}

#[test]
fn deleting_a_service_stops_its_listener_and_connections() {
    let backend = Backend::echo();
    let (a, b) = (Node::start(), Node::start());
    let local = wire(&a, &b, backend.addr, None);
    let mut live = connect(local);
    echo_once(&mut live, 7);
    a.ok(
        "DELETE",
        "/service",
        r#"{"name":"service1", "type":"local"}"#,
    );
    assert!(closed_within(&mut live, Duration::from_secs(2)));
    assert!(std::net::TcpStream::connect(local).is_err());
    let config = a.config();
    assert!(config["services"]["local"].get("service1").is_none());
    assert!(config["bind"]["local"].get("service1").is_none());
}

/// A backend that never answers (its accept queue is full, so SYNs are dropped): the client is
/// closed once the 3 s connect timeout passes, not held for the kernel's minutes of retries.
#[test]
fn silent_backend_closes_the_client_after_the_connect_timeout() {
    let hole = Blackhole::new();
    let target = hole.addr;
    let (a, b) = (Node::start(), Node::start());
    let local = wire(&a, &b, target, None);
    let started = Instant::now();
    assert!(refused_within(local, Duration::from_secs(6)));
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(2500) && took < Duration::from_secs(5),
        "closed after {took:?}"
    );
    assert!(b.wait_log("no answer within 3000 ms", Duration::from_secs(1)));
}

/// The backend half-closes first (a greeting, then EOF) and still receives what the client
/// sends afterwards.
#[test]
fn half_close_from_the_backend_side() {
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    let tx = std::sync::Mutex::new(tx);
    let backend = Backend::start(move |mut s| {
        s.write_all(b"hello, then silence").expect("greet");
        s.shutdown(std::net::Shutdown::Write).expect("half-close");
        let mut got = Vec::new();
        s.read_to_end(&mut got).expect("read the client");
        let _ = tx.lock().expect("lock").send(got);
    });
    let (a, b) = (Node::start(), Node::start());
    let local = wire(&a, &b, backend.addr, Some("k"));
    let mut s = connect(local);
    let mut greeting = Vec::new();
    s.read_to_end(&mut greeting).expect("greeting and EOF");
    assert_eq!(greeting, b"hello, then silence");
    let data = pattern(200_000, 21);
    s.write_all(&data).expect("send after the backend's EOF");
    s.shutdown(std::net::Shutdown::Write).expect("close");
    let got = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("backend got it");
    assert_eq!(got, data);
}

/// A peer that goes silent (its process stopped: the kernel still ACKs, but no frame comes) is
/// detected by the heartbeat within its 15 s timeout (counted from the last frame, which may be a
/// ping up to 5 s before the stop); the tunnel's clients are closed then.
#[test]
fn a_silent_peer_is_detected_by_the_heartbeat() {
    let backend = Backend::echo();
    let (a, b) = (Node::start(), Node::start());
    let local = wire(&a, &b, backend.addr, None);
    let mut live = connect(local);
    echo_once(&mut live, 30);
    let b_pid = b.pid() as libc::pid_t;
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(b_pid, libc::SIGSTOP) };
    let started = Instant::now();
    let detected = eventually(Duration::from_secs(18), || {
        a.config()["tunnels"]["tunnel1"]["state"] == "reconnecting"
    });
    // SAFETY: as above; let it run again so that it can be killed and reaped normally.
    unsafe { libc::kill(b_pid, libc::SIGCONT) };
    assert!(
        detected,
        "tunnel still shown up after {:?}",
        started.elapsed()
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(9) && took <= Duration::from_secs(17),
        "{took:?}"
    );
    assert!(closed_within(&mut live, Duration::from_secs(1)));
    let config = a.config();
    let reason = config["tunnels"]["tunnel1"]["last_error"]
        .as_str()
        .unwrap_or_default();
    assert!(reason.contains("silent"), "{reason}");
}

/// `POST /tunnel` to a peer that never answers: shown as connecting (with its destination)
/// meanwhile, answered 502 within the 5 s limit, and nothing is kept.
#[test]
fn dialling_a_silent_peer_answers_502_within_five_seconds() {
    let hole = Blackhole::new();
    let a = Node::start();
    let admin = a.admin;
    let body = format!(
        r#"{{"name":"t", "dest":["127.0.0.1", "{}"]}}"#,
        hole.addr.port()
    );
    let started = Instant::now();
    let post = std::thread::spawn(move || http(admin, "POST", "/tunnel", &body));
    assert!(eventually(Duration::from_secs(2), || {
        let t = &a.config()["tunnels"]["t"];
        t["state"] == "connecting" && t["dest"][1] == hole.addr.port()
    }));
    let (status, reply) = post.join().expect("request");
    let took = started.elapsed();
    assert_eq!(status, 502, "{reply}");
    assert!(
        took < Duration::from_millis(6500),
        "answered after {took:?}"
    );
    assert!(a.config()["tunnels"].get("t").is_none(), "nothing kept");
}

/// Clients keep arriving while the tunnel is deleted and re-dialled again and again: each one is
/// either served byte-exact or closed promptly, none is left hanging, and no stream is left over.
#[test]
fn tunnel_churn_never_leaves_a_client_hanging() {
    let backend = Backend::echo();
    let (a, b) = (Node::start(), Node::start());
    // Declared on B: its binds outlive each delete of the tunnel by A.
    b.ok(
        "POST",
        "/tunnel",
        r#"{"name":"tunnel1", "role":"acceptor"}"#,
    );
    let local = wire(&a, &b, backend.addr, Some("k"));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..4u64)
        .map(|w| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let (mut served, mut closed) = (0u32, 0u32);
                let mut i = 0u64;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    i += 1;
                    let data = pattern(20_000, w * 1_000_000 + i);
                    let Ok(mut s) = std::net::TcpStream::connect(local) else {
                        continue;
                    };
                    s.set_read_timeout(Some(Duration::from_secs(5)))
                        .expect("timeout");
                    let _ = s.write_all(&data);
                    let _ = s.shutdown(std::net::Shutdown::Write);
                    let mut got = Vec::new();
                    match s.read_to_end(&mut got) {
                        Ok(_) if got == data => served += 1,
                        // Cut by the churn: it must end (EOF or reset), with a prefix at most.
                        Ok(_) => {
                            assert!(data.starts_with(&got), "client {w}/{i}: corrupted bytes");
                            closed += 1;
                        }
                        Err(e)
                            if e.kind() == std::io::ErrorKind::WouldBlock
                                || e.kind() == std::io::ErrorKind::TimedOut =>
                        {
                            panic!("client {w}/{i} left hanging")
                        }
                        Err(_) => closed += 1,
                    }
                }
                (served, closed)
            })
        })
        .collect();
    for _ in 0..15 {
        std::thread::sleep(Duration::from_millis(60));
        a.ok("DELETE", "/tunnel", r#"{"name":"tunnel1"}"#);
        std::thread::sleep(Duration::from_millis(20));
        dial(&a, &b, "tunnel1");
    }
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (mut served, mut closed) = (0, 0);
    for c in clients {
        let (s, c) = c.join().expect("no client hung");
        served += s;
        closed += c;
    }
    assert!(served > 0 && closed > 0, "served {served}, closed {closed}");
    assert_eq!(roundtrip(local, b"after the churn"), b"after the churn");
    assert!(eventually(Duration::from_secs(3), || {
        a.config()["connections"]
            .as_object()
            .is_some_and(|c| c.is_empty())
            && b.config()["connections"]
                .as_object()
                .is_some_and(|c| c.is_empty())
    }));
}

/// A tunnel deleted and re-dialled hundreds of times, each time with live keyed connections on
/// it: resident memory stays flat (the leak class that grows with every reconnect).
#[test]
fn memory_stays_flat_over_hundreds_of_tunnel_cuts() {
    let backend = Backend::echo();
    let (a, b) = (Node::start(), Node::start());
    // Declared on B: its binds outlive each delete of the tunnel by A.
    b.ok(
        "POST",
        "/tunnel",
        r#"{"name":"tunnel1", "role":"acceptor"}"#,
    );
    let local = wire(&a, &b, backend.addr, Some("k"));
    let cycle = |rounds: u64| {
        for i in 0..rounds {
            let held: Vec<_> = (0..5)
                .map(|j| {
                    let mut s = connect(local);
                    echo_once(&mut s, i * 10 + j);
                    s
                })
                .collect();
            a.ok("DELETE", "/tunnel", r#"{"name":"tunnel1"}"#);
            drop(held);
            dial(&a, &b, "tunnel1");
        }
    };
    cycle(50);
    std::thread::sleep(Duration::from_millis(300));
    let before = a.rss_kib() + b.rss_kib();
    cycle(300);
    std::thread::sleep(Duration::from_millis(300));
    let growth = (a.rss_kib() + b.rss_kib()).saturating_sub(before);
    // Measured: a few tens of KiB over 300 cuts.
    assert!(growth < 1024, "grew {growth} KiB over 300 tunnel cuts");
    assert!(eventually(Duration::from_secs(3), || {
        a.config()["connections"]
            .as_object()
            .is_some_and(|c| c.is_empty())
    }));
}
