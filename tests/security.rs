//! Safe to expose: tunnel secrets in both directions, names that cannot be taken, keyed streams
//! that cannot be replayed or tampered with, an admin API that wants its token and refuses
//! cross-site requests. Real nodes on loopback, driven with the seed's curl bodies.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use common::*;
use menet_actors::protocol::Frame;

const SECRET: &str = "correct horse battery staple";

/// A node with `[tunnel] secret` (or none) and extra config lines.
fn node(dir: &TempDir, name: &str, secret: Option<&str>, extra: &str) -> Node {
    let secret = secret
        .map(|s| format!("secret = {s:?}\n"))
        .unwrap_or_default();
    Node::with_config(dir, name, &format!("[tunnel]\n{secret}{extra}"))
}

fn post_tunnel(from: &Node, to: SocketAddr, name: &str, extra: &str) -> (u16, serde_json::Value) {
    from.request(
        "POST",
        "/tunnel",
        &format!(
            r#"{{"name":"{name}", "dest":["{}", "{}"]{extra}}}"#,
            to.ip(),
            to.port()
        ),
    )
}

/// How a connection ended: `Some(true)` with a reset, `Some(false)` with a FIN, `None` if still
/// open after `within`. Reads (and drops) whatever comes first.
fn ending(s: &mut TcpStream, within: Duration) -> Option<bool> {
    s.set_read_timeout(Some(within)).expect("timeout");
    let mut buf = [0u8; 65536];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Some(false),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Some(true),
            Err(_) => return None,
        }
    }
}

#[test]
fn tunnel_secrets_are_proved_both_ways() {
    let dir = TempDir::new("secret");
    let backend = Backend::echo();
    let b = node(&dir, "b", Some(SECRET), "");
    // No secret on the dialer: the acceptor refuses, 502 says why, and the dialer keeps trying.
    let a = node(&dir, "a", None, "");
    let (status, reply) = post_tunnel(&a, b.tunnel, "tunnel1", "");
    assert_eq!(status, 502, "{reply}");
    assert!(
        reply["error"]
            .as_str()
            .is_some_and(|e| e.contains("authentication failed")),
        "{reply}"
    );
    assert!(b.wait_log("authentication failed", Duration::from_secs(2)));
    assert!(b.log_lines("authentication failed")[0].contains("127.0.0.1:"));
    assert!(eventually(Duration::from_secs(3), || {
        a.config()["tunnels"]["tunnel1"]["state"] == "reconnecting"
    }));
    // The wrong secret: refused too.
    let (status, reply) = post_tunnel(&a, b.tunnel, "tunnel2", r#", "secret":"wrong""#);
    assert_eq!(status, 502, "{reply}");
    assert!(!reply.to_string().contains("wrong\""), "{reply}");
    // The acceptor has no secret but the dialer has: the dialer refuses an acceptor that
    // cannot prove it.
    let open = node(&dir, "open", None, "");
    let (status, reply) = post_tunnel(
        &a,
        open.tunnel,
        "tunnel3",
        &format!(r#", "secret":"{SECRET}""#),
    );
    assert_eq!(status, 502, "{reply}");
    assert!(
        reply.to_string().contains("authentication failed"),
        "{reply}"
    );
    // The right secret, given per tunnel: up, and traffic flows.
    a.ok(
        "POST",
        "/tunnel",
        &format!(
            r#"{{"name":"tunnel1", "dest":["127.0.0.1", "{}"], "secret":"{SECRET}"}}"#,
            b.tunnel.port()
        ),
    );
    let local = carry(
        &a,
        &b,
        "tunnel1",
        "service1",
        Some("UHI@&s8sa*S"),
        backend.addr,
    );
    assert_eq!(roundtrip(local, b"through"), b"through");
    // A node-wide secret on both: the seed's curl call, unchanged.
    let c = node(&dir, "c", Some(SECRET), "");
    dial(&c, &b, "tunnel4");
    // A per-name secret declared on the acceptor overrides the node's.
    b.ok(
        "POST",
        "/tunnel",
        r#"{"name":"tunnel5", "role":"acceptor", "secret":"per-name-s3cret"}"#,
    );
    let (status, _) = post_tunnel(&c, b.tunnel, "tunnel5", "");
    assert_eq!(
        status, 502,
        "the node's secret does not open a name with its own"
    );
    let (status, reply) = post_tunnel(&c, b.tunnel, "tunnel6", r#", "secret":"per-name-s3cret""#);
    assert_eq!(status, 502, "nor the name's secret another name: {reply}");
    c.ok(
        "POST",
        "/tunnel",
        &format!(
            r#"{{"name":"tunnel5", "dest":["127.0.0.1", "{}"], "secret":"per-name-s3cret"}}"#,
            b.tunnel.port()
        ),
    );
    // Secrets are never shown or logged.
    for n in [&a, &b, &c] {
        let config = n.config().to_string();
        assert!(
            !config.contains(SECRET) && !config.contains("per-name-s3cret"),
            "{config}"
        );
        assert!(!n.log_contains(SECRET) && !n.log_contains("per-name-s3cret"));
        assert!(!n.log_contains("UHI@&s8sa*S"));
    }
}

#[test]
fn a_live_tunnel_name_cannot_be_taken() {
    let backend = Backend::echo();
    let (a, b) = (Node::start(), Node::start());
    let local = wire(&a, &b, backend.addr, None);
    let mut held = connect(local);
    let steady = thread::spawn(move || {
        for i in 0..200 {
            echo_once(&mut held, i);
            thread::sleep(Duration::from_millis(5));
        }
    });
    // A stranger (another identity) claims the name: refused, with the reason.
    for _ in 0..5 {
        let e = raw_dial(b.tunnel, "tunnel1", None, None).expect_err("refused");
        assert!(e.contains("held by another dialer"), "{e}");
    }
    // Another menet node claiming it: 502 with the reason, and it does not knock A off.
    let c = Node::start();
    let (status, reply) = post_tunnel(&c, b.tunnel, "tunnel1", "");
    assert_eq!(status, 502, "{reply}");
    assert!(
        reply.to_string().contains("held by another dialer"),
        "{reply}"
    );
    steady.join().expect("traffic undisturbed");
    assert_eq!(b.config()["tunnels"]["tunnel1"]["state"], "connected");
    assert_eq!(roundtrip(local, b"still mine"), b"still mine");
    // The rightful dialer coming back (a re-POST) replaces its own entry.
    dial(&a, &b, "tunnel1");
    assert_eq!(roundtrip(local, b"back"), b"back");
    // Deleted by its dialer, the name is free for another.
    a.ok("DELETE", "/tunnel", r#"{"name":"tunnel1"}"#);
    assert!(eventually(Duration::from_secs(2), || b.config()
        ["accepted"]
        .get("tunnel1")
        .is_none()));
    dial(&c, &b, "tunnel1");
}

#[test]
fn accept_known_admits_only_declared_names() {
    let dir = TempDir::new("known");
    let b = node(&dir, "b", None, "accept = \"known\"\n");
    let a = Node::start();
    let (status, reply) = post_tunnel(&a, b.tunnel, "tunnel1", "");
    assert_eq!(status, 502, "{reply}");
    assert!(reply.to_string().contains("not declared"), "{reply}");
    b.ok(
        "POST",
        "/tunnel",
        r#"{"name":"tunnel1", "role":"acceptor"}"#,
    );
    dial(&a, &b, "tunnel1");
    assert_eq!(b.config()["accepted"]["tunnel1"]["declared"], true);
}

#[test]
fn pins_survive_a_restart_of_either_node() {
    let dir = TempDir::new("pins");
    let backend = Backend::echo();
    let mut a = Node::persistent(&dir, "a", None);
    let mut b = Node::persistent(&dir, "b", None);
    let local = wire_fixed(&a, &b, backend.addr, None);
    a.kill9();
    b.kill9();
    b.restart();
    // A stranger gets there first while the rightful dialer is down: refused.
    let e = raw_dial(b.tunnel, "tunnel1", None, None).expect_err("refused");
    assert!(e.contains("held by another dialer"), "{e}");
    a.restart();
    assert!(healed(local, b"home again", Duration::from_secs(10)).is_some());
}

/// A relay on the tunnel link that understands frames: it can flip a byte of a DATA payload
/// from the dialer, record a keyed stream's OPEN and DATA, and inject frames at frame boundaries.
struct FrameRelay {
    addr: SocketAddr,
    /// Flip one byte of the next DATA payload going to the acceptor.
    flip: Arc<AtomicBool>,
    /// OPEN and DATA frames (decoded) of streams the dialer opened, in order.
    recorded: Arc<Mutex<Vec<Frame>>>,
    /// The write half towards the acceptor, to inject frames.
    to_acceptor: Arc<Mutex<Option<TcpStream>>>,
    /// Frames the acceptor sent back (decoded).
    from_acceptor: Arc<Mutex<Vec<Frame>>>,
}

fn read_exact_vec(s: &mut TcpStream, n: usize) -> Option<Vec<u8>> {
    let mut v = vec![0u8; n];
    s.read_exact(&mut v).ok()?;
    Some(v)
}

/// Copies `n` handshake messages (8-byte header, u16 body length) from `from` to `to`.
fn pass_handshake(from: &mut TcpStream, to: &Mutex<Option<TcpStream>>, n: usize) -> Option<()> {
    for _ in 0..n {
        let mut msg = read_exact_vec(from, 8)?;
        let len = usize::from(u16::from_be_bytes([msg[6], msg[7]]));
        msg.extend(read_exact_vec(from, len)?);
        to.lock().ok()?.as_mut()?.write_all(&msg).ok()?;
    }
    Some(())
}

/// Reads one raw frame (header and payload).
fn read_frame(from: &mut TcpStream) -> Option<Vec<u8>> {
    let mut f = read_exact_vec(from, 9)?;
    let len = u32::from_be_bytes([f[0], f[1], f[2], f[3]]) as usize;
    f.extend(read_exact_vec(from, len)?);
    Some(f)
}

fn decode(raw: &[u8]) -> Option<Frame> {
    use tokio_util::codec::Decoder;
    menet_actors::protocol::FrameCodec
        .decode(&mut bytes::BytesMut::from(raw))
        .ok()
        .flatten()
}

impl FrameRelay {
    fn start(target: SocketAddr) -> FrameRelay {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let relay = FrameRelay {
            addr: listener.local_addr().expect("addr"),
            flip: Arc::new(AtomicBool::new(false)),
            recorded: Arc::new(Mutex::new(Vec::new())),
            to_acceptor: Arc::new(Mutex::new(None)),
            from_acceptor: Arc::new(Mutex::new(Vec::new())),
        };
        let (flip, recorded, to_acceptor, from_acceptor) = (
            relay.flip.clone(),
            relay.recorded.clone(),
            relay.to_acceptor.clone(),
            relay.from_acceptor.clone(),
        );
        thread::spawn(move || {
            let Ok((mut dialer, _)) = listener.accept() else {
                return;
            };
            let Ok(mut acceptor) = TcpStream::connect(target) else {
                return;
            };
            let back = Arc::new(Mutex::new(dialer.try_clone().ok()));
            *to_acceptor.lock().expect("lock") = acceptor.try_clone().ok();
            let seen = from_acceptor.clone();
            thread::spawn(move || {
                pass_handshake(&mut acceptor, &back, 2);
                while let Some(f) = read_frame(&mut acceptor) {
                    if let Some(frame) = decode(&f) {
                        seen.lock().expect("lock").push(frame);
                    }
                    let mut guard = back.lock().expect("lock");
                    if guard.as_mut().is_none_or(|s| s.write_all(&f).is_err()) {
                        break;
                    }
                }
                if let Some(s) = back.lock().expect("lock").as_ref() {
                    let _ = s.shutdown(Shutdown::Both);
                }
            });
            pass_handshake(&mut dialer, &to_acceptor, 2);
            while let Some(mut f) = read_frame(&mut dialer) {
                if f[4] == 4 && f.len() > 20 && flip.swap(false, Ordering::SeqCst) {
                    f[20] ^= 0x01;
                }
                if let Some(frame) = decode(&f) {
                    if matches!(frame, Frame::Open { .. } | Frame::Data { .. }) {
                        recorded.lock().expect("lock").push(frame);
                    }
                }
                let mut guard = to_acceptor.lock().expect("lock");
                if guard.as_mut().is_none_or(|s| s.write_all(&f).is_err()) {
                    break;
                }
            }
        });
        relay
    }

    fn inject(&self, frame: &Frame) {
        let mut guard = self.to_acceptor.lock().expect("lock");
        send_frame(guard.as_mut().expect("connected"), frame);
    }
}

/// What each backend connection received, and whether it ended with a reset.
type Received = Arc<Mutex<Vec<(Vec<u8>, bool)>>>;

/// A backend that records what each connection received and echoes it.
fn recording_backend() -> (Backend, Received) {
    let log: Received = Arc::new(Mutex::new(Vec::new()));
    let sink = log.clone();
    let backend = Backend::start(move |mut s| {
        let mut got = Vec::new();
        let mut buf = vec![0u8; 65536];
        let reset = loop {
            match s.read(&mut buf) {
                Ok(0) => break false,
                Ok(n) => {
                    got.extend_from_slice(&buf[..n]);
                    if s.write_all(&buf[..n]).is_err() {
                        break true;
                    }
                }
                Err(_) => break true,
            }
        };
        sink.lock().expect("lock").push((got, reset));
    });
    (backend, log)
}

/// Two nodes with the tunnel through a [`FrameRelay`] and `service1` keyed with `cipher`. Both
/// nodes turn the record layer off (`[tunnel] encrypt = false`), so the relay reads and forges
/// frames: what the per-service key protects on its own, end to end.
struct Keyed {
    a: Node,
    b: Node,
    _dir: TempDir,
    relay: FrameRelay,
    local: SocketAddr,
    _backend: Backend,
    received: Received,
}

fn keyed_over_relay(cipher: &str) -> Keyed {
    let (backend, received) = recording_backend();
    let dir = TempDir::new("keyed");
    let clear = "[tunnel]\nencrypt = false\n";
    let (a, b) = (
        Node::with_config(&dir, "a", clear),
        Node::with_config(&dir, "b", clear),
    );
    let relay = FrameRelay::start(b.tunnel);
    dial_addr(&a, relay.addr, "tunnel1");
    let cipher = if cipher == "rc4" {
        String::new()
    } else {
        format!(r#""cipher":"{cipher}", "#)
    };
    let fields = format!(r#""key":"UHI@&s8sa*S", {cipher}"#);
    let local = carry_at(
        &a,
        &b,
        "tunnel1",
        "service1",
        &fields,
        free_port(),
        backend.addr,
    );
    Keyed {
        a,
        b,
        _dir: dir,
        relay,
        local,
        _backend: backend,
        received,
    }
}

#[test]
fn every_cipher_carries_bytes_exactly_and_a_mismatch_is_refused() {
    for cipher in ["rc4", "chacha20-poly1305", "aes-256-gcm"] {
        let Keyed {
            a,
            b,
            local,
            relay: _relay,
            _backend: _kept,
            ..
        } = keyed_over_relay(cipher);
        let data = pattern(3 << 20, 7);
        assert!(roundtrip(local, &data) == data, "{cipher}: byte-exact");
        assert_eq!(
            a.config()["services"]["local"]["service1"]["cipher"],
            cipher
        );
        // The other end switches cipher: the stream is refused, logged on the refusing node.
        let other = if cipher == "rc4" {
            "aes-256-gcm"
        } else {
            "rc4"
        };
        b.ok(
            "POST",
            "/service",
            &format!(
                r#"{{"name":"service1", "key":"UHI@&s8sa*S", "cipher":"{other}", "type": "remote", "addr":["127.0.0.1", "1"]}}"#
            ),
        );
        let mut s = connect(local);
        let _ = s.write_all(b"x");
        assert!(closed_within(&mut s, Duration::from_secs(3)));
        assert!(
            b.wait_log("cipher mismatch", Duration::from_secs(2)),
            "{cipher}"
        );
    }
}

#[test]
fn a_tampered_aead_frame_resets_the_stream_and_no_byte_of_it_arrives() {
    let Keyed {
        a,
        b,
        relay,
        local,
        received,
        _backend: _kept,
        ..
    } = keyed_over_relay("chacha20-poly1305");
    // A first stream, untouched.
    assert_eq!(roundtrip(local, b"clean"), b"clean");
    relay.flip.store(true, Ordering::SeqCst);
    let data = pattern(1 << 20, 9);
    let mut s = connect(local);
    let writer = {
        let mut w = s.try_clone().expect("clone");
        let data = data.clone();
        thread::spawn(move || {
            let _ = w.write_all(&data);
        })
    };
    let mut got = Vec::new();
    let mut buf = vec![0u8; 65536];
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let reset = loop {
        match s.read(&mut buf) {
            Ok(0) => break false,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => break e.kind() == std::io::ErrorKind::ConnectionReset,
        }
    };
    let _ = writer.join();
    assert!(
        reset,
        "the client's connection ends with a reset, not a FIN"
    );
    assert!(
        got.len() < data.len() && data.starts_with(&got),
        "only good bytes echoed"
    );
    assert!(b.wait_log("integrity check failed", Duration::from_secs(3)));
    assert!(a.wait_log("integrity check failed", Duration::from_secs(3)));
    assert!(eventually(Duration::from_secs(3), || received
        .lock()
        .expect("lock")
        .len()
        == 2));
    let conns = received.lock().expect("lock").clone();
    let (bytes, was_reset) = &conns[1];
    assert!(*was_reset, "the backend's connection was reset");
    assert!(
        data.starts_with(bytes),
        "the backend got a byte-exact prefix, never a flipped byte"
    );
    assert!(bytes.len() < data.len());
    // The tunnel and other streams are unharmed.
    assert_eq!(roundtrip(local, b"after"), b"after");
}

#[test]
fn a_replayed_keyed_stream_never_reaches_the_backend_as_the_original() {
    for cipher in ["rc4", "aes-256-gcm"] {
        let Keyed {
            b,
            relay,
            local,
            received,
            _backend: _kept,
            a: _a,
            ..
        } = keyed_over_relay(cipher);
        let secret = b"GET /payroll HTTP/1.1\r\nAuthorization: Basic c2VjcmV0\r\n\r\n";
        assert_eq!(roundtrip(local, secret), secret.to_vec());
        assert!(eventually(Duration::from_secs(2), || received
            .lock()
            .expect("lock")
            .len()
            == 1));
        let frames = relay.recorded.lock().expect("lock").clone();
        let (stream, keyed) = frames
            .iter()
            .find_map(|f| match f {
                Frame::Open {
                    stream,
                    keyed: Some(k),
                    ..
                } => Some((*stream, *k)),
                _ => None,
            })
            .expect("a keyed OPEN was recorded");
        let data: Vec<Frame> = frames
            .iter()
            .filter(|f| matches!(f, Frame::Data { stream: s, .. } if *s == stream))
            .cloned()
            .collect();
        assert!(!data.is_empty());
        // Replay on the live tunnel under a fresh stream id, as an on-path attacker would.
        let replay = 0x7fff_fff1;
        relay.inject(&Frame::Open {
            stream: replay,
            service: "service1".into(),
            keyed: Some(keyed),
            protocol: menet_actors::protocol::Protocol::Tcp,
            origin: None,
        });
        assert!(eventually(Duration::from_secs(3), || relay
            .from_acceptor
            .lock()
            .expect("lock")
            .iter()
            .any(
                |f| matches!(f, Frame::OpenOk { stream, nonce: Some(_) } if *stream == replay)
            )));
        for f in data {
            if let Frame::Data { payload, .. } = f {
                relay.inject(&Frame::Data {
                    stream: replay,
                    payload,
                });
            }
        }
        relay.inject(&Frame::Fin { stream: replay });
        assert!(eventually(Duration::from_secs(3), || received
            .lock()
            .expect("lock")
            .len()
            == 2));
        let (replayed, _) = received.lock().expect("lock")[1].clone();
        assert!(
            !replayed
                .windows(12)
                .any(|w| secret.windows(12).any(|s| s == w)),
            "{cipher}: the backend must never read the original again"
        );
        if cipher != "rc4" {
            assert!(replayed.is_empty(), "an AEAD replay delivers nothing");
            assert!(b.wait_log("integrity check failed", Duration::from_secs(2)));
        }
    }
}

#[test]
fn the_admin_token_guards_every_route() {
    let dir = TempDir::new("token");
    let token_file = dir.path("token");
    std::fs::write(&token_file, "s3cr3t-t0ken\n").expect("token file");
    let from_file = Node::with_config(
        &dir,
        "file",
        &format!(
            "[admin]\ntoken_file = {:?}\n",
            token_file.display().to_string()
        ),
    );
    let from_env = Node::build()
        .config(&dir, "env", "")
        .env("MENET_ADMIN_TOKEN", "s3cr3t-t0ken")
        .start();
    for node in [&from_file, &from_env] {
        for (method, path, body) in [
            ("GET", "/config", ""),
            (
                "POST",
                "/tunnel",
                r#"{"name":"t", "dest":["127.0.0.1", "9"]}"#,
            ),
            ("DELETE", "/tunnel", r#"{"name":"t"}"#),
            (
                "POST",
                "/service",
                r#"{"name":"s", "type":"remote", "addr":["127.0.0.1", "9"]}"#,
            ),
            ("DELETE", "/service", r#"{"name":"s", "type":"remote"}"#),
            (
                "POST",
                "/bind",
                r#"{"tunnel":"t", "service":"s", "type":"remote"}"#,
            ),
            (
                "DELETE",
                "/bind",
                r#"{"tunnel":"t", "service":"s", "type":"remote"}"#,
            ),
            ("GET", "/nowhere", ""),
        ] {
            for auth in [
                "",
                "Authorization: Bearer wrong\r\n",
                "Authorization: s3cr3t-t0ken\r\n",
            ] {
                let (status, head, reply) = http_with(node.admin, method, path, auth, body);
                assert_eq!(status, 401, "{method} {path} {auth}: {reply}");
                assert!(head.contains("www-authenticate: Bearer"), "{head}");
                assert!(reply["error"].is_string());
            }
        }
        let (status, _, reply) = http_with(
            node.admin,
            "POST",
            "/service",
            "Authorization: Bearer s3cr3t-t0ken\r\n",
            r#"{"name":"s", "type":"remote", "addr":["127.0.0.1", "9"]}"#,
        );
        assert_eq!(status, 200, "{reply}");
        let (status, _, config) = http_with(
            node.admin,
            "GET",
            "/config",
            "Authorization: Bearer s3cr3t-t0ken\r\n",
            "",
        );
        assert_eq!(status, 200);
        assert!(config["services"]["remote"]["s"].is_object());
        assert!(node.wait_log("refused", Duration::from_secs(2)));
        assert!(!node.log_contains("s3cr3t-t0ken") && !node.log_contains("wrong"));
    }
}

#[test]
fn a_non_loopback_admin_needs_a_token_or_a_waiver() {
    let dir = TempDir::new("insecure");
    let config = dir.path("m.toml");
    std::fs::write(&config, "[admin]\nip = \"0.0.0.0\"\nport = 0\n").expect("write");
    let (code, err) = Node::run_with_config(config.to_str().expect("path"));
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("no token"), "{err}");
}

#[test]
fn cross_site_and_rebinding_requests_are_refused_and_change_nothing() {
    let a = Node::start();
    let evil = r#"{"name":"exfil", "dest":["127.0.0.1", "9"]}"#;
    let host = format!("Host: {}\r\n", a.admin);
    for headers in [
        // A page on another origin posting a form (no preflight).
        format!("{host}Origin: http://evil.example\r\n"),
        format!("{host}Origin: null\r\n"),
        format!("{host}Sec-Fetch-Site: cross-site\r\n"),
        // DNS rebinding: the browser thinks it talks to evil.example.
        format!("Host: evil.example:{}\r\n", a.admin.port()),
    ] {
        let (status, _, reply) = http_with(a.admin, "POST", "/tunnel", &headers, evil);
        assert_eq!(status, 403, "{headers}: {reply}");
    }
    assert!(a.config()["tunnels"].get("exfil").is_none());
    // The API's own page (same origin) and curl (no Origin) pass.
    let same = format!(
        "{host}Origin: http://{}\r\nSec-Fetch-Site: same-origin\r\n",
        a.admin
    );
    let (status, _, _) = http_with(a.admin, "GET", "/config", &same, "");
    assert_eq!(status, 200);
}

#[test]
fn bodies_with_unknown_fields_control_characters_or_our_own_port_are_refused() {
    let a = Node::start();
    let cases = [
        (
            "/service",
            r#"{"name":"s", "Key":"k", "type": "local", "addr":["127.0.0.1", "9"]}"#.to_owned(),
            "unknown field \"Key\"",
        ),
        (
            "/tunnel",
            "{\"name\":\"t\\r\\nINFO forged\", \"dest\":[\"127.0.0.1\", \"9\"]}".to_owned(),
            "control characters",
        ),
        (
            "/tunnel",
            format!(
                r#"{{"name":"self", "dest":["127.0.0.1", "{}"]}}"#,
                a.tunnel.port()
            ),
            "own tunnel port",
        ),
    ];
    for (path, body, want) in cases {
        let (status, reply) = a.request("POST", path, &body);
        assert_eq!(status, 400, "{body}: {reply}");
        assert!(
            reply["error"].as_str().is_some_and(|e| e.contains(want)),
            "{reply}"
        );
    }
    assert!(a.config()["services"]["local"]
        .as_object()
        .is_some_and(|m| m.is_empty()));
}

#[test]
fn peer_supplied_text_is_escaped_and_refusals_do_not_flood_the_log() {
    let b = Node::start();
    let mut s = raw_dial(b.tunnel, "flood", None, None).expect("handshake");
    let mut burst = bytes::BytesMut::new();
    for i in 0..20_000u32 {
        Frame::Open {
            stream: 2 * i + 1,
            service: "evil\r\n[2026-01-01T00:00:00Z INFO  menet] forged".into(),
            keyed: None,
            protocol: menet_actors::protocol::Protocol::Tcp,
            origin: None,
        }
        .encode(&mut burst);
    }
    s.write_all(&burst).expect("flood");
    // Every OPEN is answered with OPEN_FAIL, saying nothing about what exists.
    let mut fails = 0;
    recv_frame_until(&mut s, Duration::from_secs(10), |f| {
        if let Frame::OpenFail { reason, .. } = f {
            assert_eq!(reason, "refused");
            fails += 1;
        }
        fails == 20_000
    })
    .expect("every OPEN refused");
    let lines = b.log_lines("refusing stream");
    assert!(
        lines.len() <= 12,
        "{} lines for 20,000 refusals",
        lines.len()
    );
    for l in b.log_lines("forged") {
        assert!(l.contains("\\r\\n"), "escaped: {l}");
    }
    assert_eq!(b.config()["tunnels"]["flood"]["state"], "connected");
}

#[test]
fn aborted_streams_end_with_a_reset_and_clean_ones_with_a_fin() {
    // A backend that sends a little and then resets its connection.
    let resetting = Backend::start(|mut s| {
        let _ = s.write_all(&pattern(100_000, 3));
        thread::sleep(Duration::from_millis(100));
        linger_zero(&s);
        drop(s);
    });
    let echo = Backend::echo();
    let (a, mut b) = (Node::start(), Node::start());
    dial(&a, &b, "tunnel1");
    let aborting = carry(&a, &b, "tunnel1", "resets", None, resetting.addr);
    let clean = carry(&a, &b, "tunnel1", "echo", None, echo.addr);
    // Clean: a FIN after the whole answer.
    let mut s = connect(clean);
    s.write_all(b"bye").expect("send");
    s.shutdown(Shutdown::Write).expect("half-close");
    assert_eq!(ending(&mut s, Duration::from_secs(5)), Some(false));
    // The backend resets: so is the client.
    let mut s = connect(aborting);
    assert_eq!(ending(&mut s, Duration::from_secs(5)), Some(true));
    // The tunnel is lost mid-transfer (the far node killed): the client is reset.
    let mut s = connect(clean);
    echo_once(&mut s, 1);
    b.kill9();
    assert_eq!(ending(&mut s, Duration::from_secs(5)), Some(true));
}
