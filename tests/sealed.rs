//! The whole tunnel sealed (protocol 3), checked with real nodes and a relay on the tunnel link:
//! a flipped byte ends the tunnel and never reaches a client, a recorded connection replayed
//! gets nowhere, keys are replaced under traffic without a stream noticing, and the dialer holds
//! its acceptor to the identity it pinned, so a man in the middle is refused.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

/// A relay on the tunnel link: forwards both ways, records what the dialer sends on each
/// connection, and flips one byte of it at `flip_at` (if set) on the first connection only.
struct Tap {
    addr: SocketAddr,
    /// What the dialer sent, per connection (in the order they came).
    recorded: Arc<Mutex<Vec<Vec<u8>>>>,
    /// Connections relayed so far.
    connections: Arc<AtomicUsize>,
}

impl Tap {
    fn start(to: SocketAddr, flip_at: Option<usize>) -> Tap {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind tap");
        let addr = listener.local_addr().expect("addr");
        let recorded = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let (rec, count) = (recorded.clone(), connections.clone());
        thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(dialer) = conn else { break };
                let Ok(acceptor) = TcpStream::connect(to) else {
                    continue;
                };
                let index = count.fetch_add(1, Ordering::SeqCst);
                let first = index == 0;
                rec.lock().expect("lock").push(Vec::new());
                let (d2, a2) = (
                    dialer.try_clone().expect("clone"),
                    acceptor.try_clone().expect("clone"),
                );
                let rec = rec.clone();
                thread::spawn(move || {
                    pump(dialer, acceptor, |seen, chunk| {
                        rec.lock().expect("lock")[index].extend_from_slice(chunk);
                        if first {
                            if let Some(at) = flip_at {
                                if (seen..seen + chunk.len()).contains(&at) {
                                    chunk[at - seen] ^= 0x01;
                                }
                            }
                        }
                    })
                });
                thread::spawn(move || pump(a2, d2, |_, _| {}));
            }
        });
        Tap {
            addr,
            recorded,
            connections,
        }
    }
}

/// Copies `from` to `into`, letting `touch` see (and change) each chunk with the count before it.
fn pump(mut from: TcpStream, mut into: TcpStream, mut touch: impl FnMut(usize, &mut [u8])) {
    let mut buf = vec![0u8; 16384];
    let mut seen = 0;
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                touch(seen, &mut buf[..n]);
                seen += n;
                if into.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = into.shutdown(Shutdown::Write);
}

/// Sends `data` and reads the echo until the end; what came back, and whether the end was a
/// reset (never a FIN for a stream cut short). The writer and the reader share the socket, and
/// the kernel reports a reset once, to whichever call comes first: a reset the writer saw, with
/// the reader's end of file after it, is a reset too (a FIN would have reached the reader first).
fn echo_until_end(addr: SocketAddr, data: &[u8]) -> (Vec<u8>, bool) {
    let mut s = connect(addr);
    let mut w = s.try_clone().expect("clone");
    let data = data.to_vec();
    let writer = thread::spawn(move || match w.write_all(&data) {
        Ok(()) => None,
        Err(e) => Some((e.kind(), Instant::now())),
    });
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut got = Vec::new();
    let mut buf = vec![0u8; 65536];
    let (reset, ended) = loop {
        match s.read(&mut buf) {
            Ok(0) => break (false, Instant::now()),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => break (e.kind() == ErrorKind::ConnectionReset, Instant::now()),
        }
    };
    let written = writer.join().expect("writer");
    let writer_saw_reset = matches!(written, Some((ErrorKind::ConnectionReset, at)) if at <= ended);
    (got, reset || writer_saw_reset)
}

/// `POST /tunnel` of `name` to `port` on 127.0.0.1 from `node` (and `extra` fields): it must
/// answer 502 with an error containing `words`.
fn dial_refused(node: &Node, name: &str, port: u16, extra: &str, words: &str) {
    let body = format!(r#"{{"name":"{name}", "dest":["127.0.0.1", {port}]{extra}}}"#);
    let (code, reply) = node.request("POST", "/tunnel", &body);
    assert_eq!(code, 502, "{reply}");
    assert!(
        reply["error"].as_str().is_some_and(|e| e.contains(words)),
        "{reply}"
    );
}

#[test]
fn a_flipped_byte_ends_the_tunnel_never_reaches_a_client_and_the_dialer_redials() {
    let backend = Backend::echo();
    // One connection per tunnel, so the tap's recordings are the tunnel and its re-dial.
    let dir = TempDir::new("sealed-flip");
    let (a, b) = (
        Node::with_config(&dir, "a", "[tunnel]\nlanes = 1\n"),
        Node::start(),
    );
    let tap = Tap::start(b.tunnel, Some(2 << 20));
    dial_addr(&a, tap.addr, "tunnel1");
    let local = carry(&a, &b, "tunnel1", "service1", None, backend.addr);
    let data = pattern(8 << 20, 3);
    let (got, reset) = echo_until_end(local, &data);
    assert!(got.len() < data.len(), "the whole transfer came back");
    assert!(data.starts_with(&got), "a wrong byte reached the client");
    assert!(reset, "a cut stream ended with a FIN, not a reset");
    assert!(b.wait_log("failed its check", Duration::from_secs(5)));
    let line = b.log_lines("failed its check").join("\n");
    assert!(
        line.contains("peer 127.0.0.1:"),
        "the line names the peer: {line}"
    );
    let (_, _, metrics) = http_text(b.admin, "GET", "/metrics", "", "");
    assert!(
        metrics.contains("menet_tunnel_integrity_failures_total{tunnel=\"tunnel1\"} 1"),
        "counted in /metrics"
    );
    // The dialer re-dials (a new connection through the tap, not flipped) and traffic flows.
    let again = pattern(1 << 20, 4);
    assert!(
        eventually(Duration::from_secs(10), || {
            tap.connections.load(Ordering::SeqCst) >= 2
                && try_roundtrip(local, &again).is_ok_and(|g| g == again)
        }),
        "traffic flows after the re-dial"
    );
    // The re-dialled connection (new keys) repeats no 32-byte run of the first's ciphertext.
    let recorded = tap.recorded.lock().expect("lock").clone();
    let (first, second) = (&recorded[0], &recorded[1]);
    assert!(
        second.len() > 1 << 20,
        "the second connection carried the transfer"
    );
    let runs: std::collections::HashSet<&[u8]> = first.chunks_exact(32).collect();
    let repeated = second.windows(32).any(|w| runs.contains(w));
    assert!(
        !repeated,
        "the re-dialled tunnel repeats ciphertext of the first"
    );
}

#[test]
fn a_recorded_tunnel_connection_replayed_to_the_acceptor_gets_nowhere() {
    let served = Arc::new(AtomicUsize::new(0));
    let count = served.clone();
    let backend = Backend::start(move |mut s| {
        count.fetch_add(1, Ordering::SeqCst);
        let mut buf = [0u8; 4096];
        while let Ok(n) = s.read(&mut buf) {
            if n == 0 || s.write_all(&buf[..n]).is_err() {
                break;
            }
        }
    });
    let (a, b) = (Node::start(), Node::start());
    let tap = Tap::start(b.tunnel, None);
    dial_addr(&a, tap.addr, "tunnel1");
    let local = carry(&a, &b, "tunnel1", "service1", None, backend.addr);
    let request = b"GET /payroll HTTP/1.1\r\nHost: x\r\n\r\n".repeat(10);
    assert_eq!(roundtrip(local, &request), request);
    let peer_before = b.config()["tunnels"]["tunnel1"]["peer"].clone();
    let served_before = served.load(Ordering::SeqCst);
    let recording = tap.recorded.lock().expect("lock")[0].clone();
    assert!(recording.len() > request.len());
    // The whole recorded dialer side, replayed to the acceptor's tunnel port.
    let mut replay = TcpStream::connect(b.tunnel).expect("connect");
    let _ = replay.write_all(&recording);
    assert!(closed_within(&mut replay, Duration::from_secs(5)));
    assert!(b.wait_log("PROOF does not open", Duration::from_secs(3)));
    thread::sleep(Duration::from_millis(300));
    assert_eq!(
        served.load(Ordering::SeqCst),
        served_before,
        "the replay reached the backend"
    );
    assert_eq!(
        b.config()["tunnels"]["tunnel1"]["peer"],
        peer_before,
        "the tunnel was replaced"
    );
    assert_eq!(roundtrip(local, b"still here"), b"still here");
}

#[test]
fn keys_are_replaced_under_traffic_without_a_stream_noticing() {
    let dir = TempDir::new("rekey");
    let small = "[tunnel]\nrekey_bytes = 1048576\n";
    let (a, b) = (
        Node::with_config(&dir, "a", small),
        Node::with_config(&dir, "b", small),
    );
    let backend = Backend::echo();
    let local = wire(&a, &b, backend.addr, None);
    let data = pattern(24 << 20, 11);
    assert!(roundtrip(local, &data) == data, "byte-exact across rekeys");
    let rekeys = |n: &Node| {
        n.config()["tunnels"]["tunnel1"]["rekeys"]
            .as_u64()
            .unwrap_or(0)
    };
    eprintln!("rekeys: dialer {}, acceptor {}", rekeys(&a), rekeys(&b));
    assert!(rekeys(&a) >= 16, "dialer rekeyed {} times", rekeys(&a));
    assert!(rekeys(&b) >= 16, "acceptor rekeyed {} times", rekeys(&b));
    assert_eq!(a.config()["tunnels"]["tunnel1"]["streams_opened"], 1);
}

#[test]
fn the_dialer_holds_its_acceptor_to_the_pinned_identity() {
    let backend = Backend::echo();
    let (a, mut b) = (Node::start(), Node::start());
    let local = wire(&a, &b, backend.addr, None);
    let pinned = a.config()["tunnels"]["tunnel1"]["peer_identity"].clone();
    assert_eq!(pinned, b.config()["security"]["public_identity"]);
    // The acceptor comes back with another identity (a reinstall: no state file).
    b.kill9();
    b.restart();
    let wanted = pinned.as_str().unwrap_or("")[..16].to_owned();
    assert!(
        eventually(Duration::from_secs(10), || a.config()["tunnels"]["tunnel1"]
            ["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("not the") && e.contains(&wanted))),
        "the re-dial is refused: {}",
        a.config()["tunnels"]["tunnel1"]
    );
    assert_ne!(a.config()["tunnels"]["tunnel1"]["state"], "connected");
    // A wrong identity given up front: refused with the same words.
    let dest = format!(r#"["127.0.0.1", {}]"#, b.tunnel.port());
    let wrong = format!(r#", "peer_identity":"{}""#, "ab".repeat(32));
    dial_refused(&a, "tunnel2", b.tunnel.port(), &wrong, "pinned");
    // The operator accepts the new identity: re-POSTed with it, the tunnel comes up.
    let new = b.config()["security"]["public_identity"].clone();
    a.ok(
        "POST",
        "/tunnel",
        &format!(r#"{{"name":"tunnel1", "dest":{dest}, "peer_identity":{new}}}"#),
    );
    assert_eq!(a.config()["tunnels"]["tunnel1"]["peer_identity"], new);
    b.ok(
        "POST",
        "/service",
        &format!(
            r#"{{"name":"service1", "type": "remote", "addr":["127.0.0.1", "{}"]}}"#,
            backend.addr.port()
        ),
    );
    b.ok(
        "POST",
        "/bind",
        r#"{"tunnel": "tunnel1", "service":"service1", "type": "remote"}"#,
    );
    assert_eq!(roundtrip(local, b"again"), b"again");
}

#[test]
fn a_man_in_the_middle_is_refused_by_the_secret_or_caught_by_the_pin() {
    let dir = TempDir::new("mitm");
    let with_secret = "[tunnel]\nsecret = \"s3cret-shared\"\n";
    let (a, b) = (
        Node::with_config(&dir, "a", with_secret),
        Node::with_config(&dir, "b", with_secret),
    );
    // The middle: a node of its own that accepts any name, without the secret.
    let middle = Node::start();
    dial_refused(&a, "tunnel1", middle.tunnel.port(), "", "authentication");
    assert!(middle.config()["tunnels"]["tunnel1"].is_null());
    // The real acceptor, with the secret: it works.
    dial(&a, &b, "tunnel1");
    // Without a secret: the dialer pins the real acceptor, then someone points the tunnel at
    // the middle (which answers with its own identity): the pin refuses it.
    let (c, d) = (Node::start(), Node::start());
    dial(&c, &d, "tunnel9");
    let real = c.config()["tunnels"]["tunnel9"]["peer_identity"].clone();
    assert_eq!(real, d.config()["security"]["public_identity"]);
    dial_refused(&c, "tunnel9", middle.tunnel.port(), "", "pinned");
    assert_eq!(c.config()["tunnels"]["tunnel9"]["peer_identity"], real);
}

/// A version-2 acceptor answers a version-3 HELLO the way it answers every newer one, in the
/// version-1 layout: the dialer's operator reads what it said.
#[test]
fn a_version_2_acceptor_refusal_reaches_the_operator() {
    let old = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = old.local_addr().expect("addr").port();
    thread::spawn(move || {
        for conn in old.incoming().take(4) {
            let Ok(mut s) = conn else { break };
            let mut hello = [0u8; 64];
            let _ = s.read(&mut hello);
            let reason = b"this node speaks menet protocol version 2; upgrade this node";
            let mut answer = b"MNET\x01\x01".to_vec();
            answer.extend_from_slice(&[0; 8]);
            answer.push(reason.len() as u8);
            answer.extend_from_slice(reason);
            let _ = s.write_all(&answer);
        }
    });
    let a = Node::start();
    dial_refused(&a, "old", port, "", "speaks menet protocol version 2");
}

/// A tunnel is sealed unless both nodes turned sealing off: one node with `encrypt = false`
/// still gets a sealed tunnel from a peer that wants one, on both ends.
#[test]
fn one_node_with_encrypt_off_still_gets_a_sealed_tunnel() {
    let dir = TempDir::new("mixed");
    let clear = Node::with_config(&dir, "clear", "[tunnel]\nencrypt = false\n");
    let sealed = Node::start();
    let backend = Backend::echo();
    for (dialer, acceptor, name) in [(&clear, &sealed, "out"), (&sealed, &clear, "in")] {
        dial(dialer, acceptor, name);
        for node in [dialer, acceptor] {
            // The acceptor learns the name once its side of the handshake is done, which may be
            // a moment after the dialer's POST answered.
            let sealed = |t: &serde_json::Value| {
                t["transport"] == "aes-256-gcm" || t["transport"] == "chacha20-poly1305"
            };
            let seen = eventually(Duration::from_secs(5), || {
                sealed(&node.config()["tunnels"][name])
            });
            assert!(seen, "{name}: {}", node.config()["tunnels"][name]);
        }
        let local = carry(dialer, acceptor, name, name, None, backend.addr);
        let data = pattern(1 << 20, 5);
        assert!(roundtrip(local, &data) == data, "{name}: byte-exact");
    }
}
