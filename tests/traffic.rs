//! Bytes through real nodes: the seed scenario, both dial directions, many streams, half-close,
//! and what crosses the tunnel of a keyed service.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;

use common::*;

fn files(path: &str) -> Option<Vec<u8>> {
    match path {
        "/" => Some(b"<html>hello from the backend</html>\n".to_vec()),
        "/big" => Some(pattern(10 * 1024 * 1024, 7)),
        _ => None,
    }
}

fn http_get(addr: SocketAddr, path: &str) -> Vec<u8> {
    let mut s = connect(addr);
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").expect("request");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("response");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("headers end");
    assert!(raw.starts_with(b"HTTP/1.0 200"), "status");
    raw[split + 4..].to_vec()
}

/// The issue's five curl calls, verbatim but for the ports, then a small page and 10 MiB through
/// a real HTTP server.
#[test]
fn seed_scenario_serves_http_byte_exact() {
    let backend = Backend::http(files);
    let (a, b) = (Node::start(), Node::start());
    let local = wire(&a, &b, backend.addr, Some("UHI@&s8sa*S"));

    assert_eq!(http_get(local, "/"), files("/").expect("page"));
    assert_eq!(http_get(local, "/big"), files("/big").expect("big"));

    let config = a.config();
    assert_eq!(config["tunnels"]["tunnel1"]["state"], "connected");
    assert_eq!(config["tunnels"]["tunnel1"]["role"], "dialer");
    assert_eq!(config["services"]["local"]["service1"]["key"], "***");
    assert_eq!(config["bind"]["local"]["service1"], "tunnel1");
    let config_b = b.config();
    assert_eq!(config_b["tunnels"]["tunnel1"]["role"], "acceptor");
    assert_eq!(config_b["bind"]["remote"]["service1"], "tunnel1");
    assert!(
        !config_b.to_string().contains("UHI@"),
        "keys are never shown"
    );
    assert!(
        !a.log_contains("UHI@") && !b.log_contains("UHI@"),
        "keys are never logged"
    );
}

/// B dials A: the same tunnel, used from A's side.
#[test]
fn reverse_dial_carries_the_service() {
    let backend = Backend::echo();
    let (a, b) = (Node::start(), Node::start());
    dial(&b, &a, "tunnel1");
    let local = carry(&a, &b, "tunnel1", "s", None, backend.addr);
    let data = pattern(300_000, 1);
    assert_eq!(roundtrip(local, &data), data);
    assert_eq!(a.config()["tunnels"]["tunnel1"]["role"], "acceptor");
}

/// A tunnel carries services both ways at once.
#[test]
fn one_tunnel_carries_services_in_both_directions() {
    let (echo_a, echo_b) = (Backend::echo(), Backend::echo());
    let (a, b) = (Node::start(), Node::start());
    let to_b = wire(&a, &b, echo_b.addr, None);
    let to_a = carry(&b, &a, "tunnel1", "back", Some("k2"), echo_a.addr);
    let data = pattern(100_000, 2);
    assert_eq!(roundtrip(to_b, &data), data);
    assert_eq!(roundtrip(to_a, &data), data);
}

#[test]
fn hundred_concurrent_connections_echo_256k_each() {
    let backend = Backend::echo();
    let (a, b) = (Node::start(), Node::start());
    let local = wire(&a, &b, backend.addr, Some("secret"));
    let workers: Vec<_> = (0..100u64)
        .map(|i| {
            thread::spawn(move || {
                let data = pattern(256 * 1024, 100 + i);
                let got = roundtrip(local, &data);
                assert!(
                    got == data,
                    "stream {i}: {} bytes back, content differs",
                    got.len()
                );
            })
        })
        .collect();
    for w in workers {
        w.join().expect("stream ok");
    }
    let config = a.config();
    assert_eq!(config["tunnels"]["tunnel1"]["streams_opened"], 100);
}

/// The client sends its request and shuts down its write side; the answer still arrives.
#[test]
fn half_close_is_carried_through() {
    // Answers only after the client's EOF: the reversed request.
    let backend = Backend::start(|mut s| {
        let mut req = Vec::new();
        s.read_to_end(&mut req).expect("read request");
        req.reverse();
        s.write_all(&req).expect("answer");
    });
    let (a, b) = (Node::start(), Node::start());
    let local = wire(&a, &b, backend.addr, None);
    let data = pattern(50_000, 3);
    let mut want = data.clone();
    want.reverse();
    assert_eq!(roundtrip(local, &data), want);
}

/// A relay between the nodes records what crosses the tunnel, with default settings (the tunnel
/// sealed): no byte of a service without a key, no service or tunnel name and no run of zeros is
/// readable; and a second connection of the tunnel shares no ciphertext with the first.
#[test]
fn a_sealed_tunnel_shows_a_relay_no_name_no_byte_and_no_repeat() {
    let backend = Backend::echo();
    let (a, b) = (Node::start(), Node::start());
    let wire_log = Arc::new(Mutex::new(Vec::<u8>::new()));
    let relay = relay_to(b.tunnel, wire_log.clone());
    let dial = format!(
        r#"{{"name":"tunnel-name-marker", "dest":["127.0.0.1", {}]}}"#,
        relay.port()
    );
    a.ok("POST", "/tunnel", &dial);
    let plain = carry(
        &a,
        &b,
        "tunnel-name-marker",
        "service-name-marker",
        None,
        backend.addr,
    );
    let marker = b"THE-PLAINTEXT-MARKER-0123456789".repeat(64);
    let zeros = vec![0u8; 256 * 1024];
    assert_eq!(roundtrip(plain, &marker), marker);
    assert_eq!(roundtrip(plain, &zeros), zeros);
    let transport = a.config()["tunnels"]["tunnel-name-marker"]["transport"].clone();
    assert!(
        transport == "aes-256-gcm" || transport == "chacha20-poly1305",
        "{transport}"
    );
    let first = std::mem::take(&mut *wire_log.lock().expect("lock"));
    assert!(first.len() > 256 * 1024, "the relay carried the tunnel");
    for (what, needle) in [
        ("a service's bytes", &b"THE-PLAINTEXT-MARKER"[..]),
        ("the service's name", b"service-name-marker"),
        ("the tunnel's name", b"tunnel-name-marker"),
        ("a run of zeros", &[0u8; 64][..]),
    ] {
        assert!(
            !contains(&first, needle),
            "{what} crossed the tunnel readable"
        );
    }
    // The same tunnel again (a new connection, new keys): the same bytes, no common ciphertext.
    a.ok("DELETE", "/tunnel", r#"{"name":"tunnel-name-marker"}"#);
    a.ok("POST", "/tunnel", &dial);
    for side in ["local", "remote"] {
        let node = if side == "local" { &a } else { &b };
        node.ok(
            "POST",
            "/bind",
            &format!(
                r#"{{"tunnel": "tunnel-name-marker", "service":"service-name-marker", "type": "{side}"}}"#
            ),
        );
    }
    assert_eq!(roundtrip(plain, &marker), marker);
    assert_eq!(roundtrip(plain, &zeros), zeros);
    let second = wire_log.lock().expect("lock").clone();
    let runs: std::collections::HashSet<&[u8]> = first.chunks_exact(32).collect();
    let shared = second.windows(32).any(|w| runs.contains(w));
    assert!(
        !shared,
        "the second connection repeats ciphertext of the first"
    );
}

/// With the record layer off on both nodes (`[tunnel] encrypt = false`), a keyed service's
/// plaintext still never crosses the tunnel (and, as a control, a plaintext service's does).
#[test]
fn no_plaintext_of_a_keyed_service_crosses_a_clear_tunnel() {
    let backend = Backend::echo();
    let dir = TempDir::new("clear");
    let clear = "[tunnel]\nencrypt = false\n";
    let (a, b) = (
        Node::with_config(&dir, "a", clear),
        Node::with_config(&dir, "b", clear),
    );
    let wire_log = Arc::new(Mutex::new(Vec::<u8>::new()));
    let relay = relay_to(b.tunnel, wire_log.clone());
    a.ok(
        "POST",
        "/tunnel",
        &format!(
            r#"{{"name":"tunnel1", "dest":["127.0.0.1", {}]}}"#,
            relay.port()
        ),
    );
    assert_eq!(a.config()["tunnels"]["tunnel1"]["transport"], "none");
    let keyed = carry(
        &a,
        &b,
        "tunnel1",
        "keyed",
        Some("UHI@&s8sa*S"),
        backend.addr,
    );
    let plain = carry(&a, &b, "tunnel1", "plain", None, backend.addr);
    let secret = b"THE-PLAINTEXT-MARKER-0123456789".repeat(64);
    assert_eq!(roundtrip(keyed, &secret), secret);
    let seen = wire_log.lock().expect("lock").clone();
    assert!(
        !contains(&seen, b"THE-PLAINTEXT-MARKER"),
        "keyed plaintext crossed the tunnel"
    );

    assert_eq!(roundtrip(plain, &secret), secret);
    let seen = wire_log.lock().expect("lock").clone();
    assert!(
        contains(&seen, b"THE-PLAINTEXT-MARKER"),
        "the relay sees plaintext services on a clear tunnel"
    );
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// A TCP relay to `to` that appends every byte it forwards (both ways) to `log`.
fn relay_to(to: SocketAddr, log: Arc<Mutex<Vec<u8>>>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind relay");
    let addr = listener.local_addr().expect("addr");
    thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(client) = conn else { break };
            let Ok(server) = TcpStream::connect(to) else {
                continue;
            };
            for (mut from, mut into) in [
                (
                    client.try_clone().expect("clone"),
                    server.try_clone().expect("clone"),
                ),
                (server, client),
            ] {
                let log = log.clone();
                thread::spawn(move || {
                    let mut buf = [0u8; 16384];
                    loop {
                        match from.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                log.lock().expect("lock").extend_from_slice(&buf[..n]);
                                if into.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                            }
                        }
                    }
                    let _ = into.shutdown(Shutdown::Write);
                });
            }
        }
    });
    addr
}

/// Regression: credit handed back when a socket runs dry must return to the stream's window too,
/// or a chatty connection stalls after a few exchanges.
#[test]
fn many_small_exchanges_on_one_connection() {
    let backend = Backend::echo();
    let (a, b) = (Node::start(), Node::start());
    let local = wire(&a, &b, backend.addr, Some("k"));
    let mut s = connect(local);
    for i in 0..2_000u64 {
        let req = pattern(64 + (i as usize % 200), i);
        s.write_all(&req).expect("request");
        let mut resp = vec![0u8; req.len()];
        s.read_exact(&mut resp).expect("response");
        assert_eq!(resp, req, "exchange {i}");
    }
}

/// Regression: idle streams must not hold the tunnel's credit, or a few hundred of them starve
/// every other stream of the tunnel.
#[test]
fn idle_connections_hold_no_tunnel_credit() {
    let backend = Backend::echo();
    let (a, b) = (Node::start(), Node::start());
    let local = wire(&a, &b, backend.addr, None);
    let idle: Vec<TcpStream> = (0..300u64)
        .map(|i| {
            let mut s = connect(local);
            s.write_all(&[i as u8]).expect("hello");
            let mut r = [0u8; 1];
            s.read_exact(&mut r).expect("echo");
            s
        })
        .collect();
    let data = pattern(24 << 20, 12);
    assert_eq!(roundtrip(local, &data), data);
    assert_eq!(a.config()["tunnels"]["tunnel1"]["streams"], 300);
    drop(idle);
}
