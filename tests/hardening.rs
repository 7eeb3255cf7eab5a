//! What a stranger on the network can do to a node, tried with real processes: a hostile
//! protocol-2 dialer in this harness and a second source address (127.0.0.2). Nothing it sends
//! becomes a label, a map entry or a log line without a bound; it cannot lock the tunnel port,
//! fill the name table, forge log lines or make a node dial itself.

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use menet_actors::handshake::{refusal, Identity, RefuseCode};
use menet_actors::protocol::Frame;

/// The second host: another loopback address.
fn stranger() -> IpAddr {
    IpAddr::from([127, 0, 0, 2])
}

fn metrics_text(node: &Node) -> String {
    let (status, _, body) = http_text(node.admin, "GET", "/metrics", "", "");
    assert_eq!(status, 200);
    body
}

fn limits(node: &Node) -> serde_json::Value {
    node.config()["limits"].clone()
}

/// RSS in KiB, which must be readable (a 0 would make every memory check pass unseen).
fn rss(node: &Node) -> u64 {
    let kib = node.rss_kib();
    assert!(kib > 0, "cannot read the node's RSS from /proc");
    kib
}

#[test]
fn unique_service_names_in_opens_leave_metrics_and_memory_where_they_were() {
    let b = Node::start();
    let mut peer = raw_dial_from(stranger(), b.tunnel, "stranger", None).expect("handshake");
    // Drain the OPEN_FAILs as they come, so the node never waits on this socket.
    let mut reader = peer.try_clone().expect("clone");
    let drained = thread::spawn(move || {
        let mut fails = 0usize;
        recv_frame_until(&mut reader, Duration::from_secs(60), |f| {
            if matches!(f, Frame::OpenFail { .. }) {
                fails += 1;
            }
            fails == 20_000
        });
        fails
    });
    let send = |peer: &mut RawPeer, from: u32, to: u32| {
        let mut buf = bytes::BytesMut::new();
        for i in from..to {
            Frame::Open {
                stream: 2 * i + 1,
                service: format!("made-up-service-{i:08}-{}", "x".repeat(150)),
                keyed: None,
                protocol: menet_actors::protocol::Protocol::Tcp,
                origin: None,
            }
            .encode(&mut buf);
        }
        peer.write_all(&buf).expect("opens");
    };
    // A first thousand warms the node up (allocator, tables) before the baseline is taken.
    send(&mut peer, 0, 1000);
    thread::sleep(Duration::from_millis(500));
    metrics_text(&b);
    let (metrics_before, rss_before) = (metrics_text(&b).len(), rss(&b));
    send(&mut peer, 1000, 20_000);
    assert_eq!(
        drained.join().expect("reader"),
        20_000,
        "every OPEN refused"
    );
    let (metrics_after, rss_after) = (metrics_text(&b), rss(&b));
    eprintln!(
        "19,000 OPENs with unique names: /metrics {metrics_before} -> {} bytes, RSS {rss_before} -> {rss_after} KiB",
        metrics_after.len()
    );
    assert!(
        metrics_after.len() < metrics_before + 100,
        "/metrics grew from {metrics_before} to {} bytes",
        metrics_after.len()
    );
    assert!(!metrics_after.contains("made-up-service"));
    assert!(
        metrics_after
            .contains("menet_unknown_service_connections_refused_total{side=\"remote\"} 20000"),
        "{metrics_after}"
    );
    assert!(
        rss_after < rss_before + 2048,
        "RSS grew from {rss_before} to {rss_after} KiB"
    );
}

#[test]
fn unique_http_methods_leave_metrics_and_memory_where_they_were() {
    let b = Node::start();
    let request = |i: usize| {
        let mut s = TcpStream::connect(b.admin).expect("connect");
        s.set_read_timeout(Some(IO_TIMEOUT)).ok();
        let method = format!("M{i:06}{}", "Q".repeat(1000));
        let head =
            format!("{method} /config HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
        s.write_all(head.as_bytes()).expect("request");
        let mut answer = Vec::new();
        let _ = s.read_to_end(&mut answer);
        assert!(
            answer.starts_with(b"HTTP/1.1 4"),
            "{:?}",
            String::from_utf8_lossy(&answer)
        );
    };
    for i in 0..200 {
        request(i);
    }
    metrics_text(&b);
    let (metrics_before, rss_before) = (metrics_text(&b).len(), rss(&b));
    for i in 200..5000 {
        request(i);
    }
    let (metrics_after, rss_after) = (metrics_text(&b), rss(&b));
    eprintln!(
        "4,800 requests with unique methods: /metrics {metrics_before} -> {} bytes, RSS {rss_before} -> {rss_after} KiB",
        metrics_after.len()
    );
    assert!(
        metrics_after.len() < metrics_before + 200,
        "/metrics grew from {metrics_before} to {} bytes",
        metrics_after.len()
    );
    assert!(metrics_after.contains("method=\"other\""));
    assert!(!metrics_after.contains("QQQQ"));
    assert!(
        rss_after < rss_before + 2048,
        "RSS grew from {rss_before} to {rss_after} KiB"
    );
}

#[test]
fn idle_sockets_from_strangers_cannot_lock_the_tunnel_port() {
    let backend = Backend::echo();
    let (a, b) = (Node::start(), Node::start());
    // 100 idle sockets from one address, then 100 more spread over 25 addresses of its /24.
    // (A socket the node refuses at once may see its reset before `connect` returns: kept out.)
    let mut idle: Vec<TcpStream> = (0..100)
        .filter_map(|_| connect_from(stranger(), b.tunnel).ok())
        .collect();
    idle.extend((0..100).filter_map(|i| {
        let from = IpAddr::from([127, 0, 0, 10 + (i % 25) as u8]);
        connect_from(from, b.tunnel).ok()
    }));
    thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    let local = wire(&a, &b, backend.addr, None);
    eprintln!(
        "200 idle sockets held: tunnel dialled and wired in {:?}",
        started.elapsed()
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(roundtrip(local, b"through"), b"through");
    let handshakes = &limits(&b)["handshakes"];
    assert!(handshakes["dropped"].as_u64() > Some(0), "{handshakes}");
    assert!(
        handshakes["in_use"].as_u64() <= Some(16),
        "one /24 holds at most its share: {handshakes}"
    );
    // Idle sockets past the HELLO deadline are gone: the table empties by itself.
    assert!(eventually(Duration::from_secs(4), || limits(&b)
        ["handshakes"]["in_use"]
        == 0));
    // Another tunnel while a fresh hundred are held.
    let more: Vec<TcpStream> = (0..100)
        .filter_map(|_| connect_from(stranger(), b.tunnel).ok())
        .collect();
    thread::sleep(Duration::from_millis(100));
    dial(&a, &b, "tunnel2");
    drop((idle, more));
}

#[test]
fn stranger_names_cannot_fill_the_name_table_before_or_after_a_restart() {
    let dir = TempDir::new("names");
    let backend = Backend::echo();
    let mut b = Node::persistent(&dir, "b", None);
    let a = Node::start();
    let started = Instant::now();
    let mut admitted = 0;
    let mut refused = Vec::new();
    for i in 0..6000 {
        match raw_dial_from(stranger(), b.tunnel, &format!("stranger-{i}"), None) {
            Ok(_) => admitted += 1,
            Err(e) => refused.push(e),
        }
    }
    eprintln!(
        "6,000 new names from one address: {admitted} admitted in {:?}",
        started.elapsed()
    );
    assert!(
        (50..=80).contains(&admitted),
        "{admitted} new names admitted from one address in {:?}",
        started.elapsed()
    );
    assert!(refused
        .iter()
        .all(|e| e.contains("too many new tunnel names from this address")));
    assert!(limits(&b)["names"]["refused"].as_u64() >= Some(5900));
    // A real dialer from another address gets a new name at once.
    let local = wire(&a, &b, backend.addr, None);
    assert_eq!(roundtrip(local, b"named"), b"named");
    b.kill9();
    b.restart();
    assert!(eventually(Duration::from_secs(5), || {
        b.config()["tunnels"]["tunnel1"]["state"] == "connected"
    }));
    dial(&a, &b, "another-new-name");
    assert!(eventually(Duration::from_secs(2), || {
        b.config()["tunnels"]["another-new-name"]["state"] == "connected"
    }));
}

#[test]
fn a_full_name_table_evicts_the_loose_pin_seen_least_recently() {
    let dir = TempDir::new("evict");
    let b = Node::with_config(
        &dir,
        "b",
        "[limits]\nmax_names = 4\nnew_names_per_minute = 1000\n",
    );
    // The operator bound a service to "expected": its pin is never the one to go.
    b.ok(
        "POST",
        "/service",
        r#"{"name":"svc", "type": "remote", "addr":["127.0.0.1", "9"]}"#,
    );
    b.ok(
        "POST",
        "/bind",
        r#"{"tunnel": "expected", "service":"svc", "type": "remote"}"#,
    );
    drop(raw_dial(b.tunnel, "expected", None, None).expect("pin expected"));
    for i in 0..10 {
        thread::sleep(Duration::from_millis(50));
        drop(raw_dial_from(stranger(), b.tunnel, &format!("s{i}"), None).expect("room made"));
    }
    thread::sleep(Duration::from_millis(100));
    let config = b.config();
    let names = config["accepted"].as_object().map_or(0, |m| m.len());
    assert_eq!(names, 4, "{config}");
    assert!(
        config["accepted"]["expected"].is_object(),
        "the bound pin stays: {config}"
    );
    assert!(
        config["accepted"]["s9"].is_object(),
        "the newest is there: {config}"
    );
    assert!(
        config["accepted"]["s0"].is_null(),
        "the oldest went: {config}"
    );
    assert_eq!(config["limits"]["names"]["evicted"], 7);
}

#[test]
fn a_name_freed_by_its_dialer_takes_its_binds_with_it() {
    let backend = Backend::echo();
    let (a, b) = (Node::start(), Node::start());
    let _local = wire(&a, &b, backend.addr, None);
    assert_eq!(b.config()["bind"]["remote"]["service1"], "tunnel1");
    a.ok("DELETE", "/tunnel", r#"{"name": "tunnel1"}"#);
    assert!(eventually(Duration::from_secs(2), || {
        b.config()["bind"]["remote"]["service1"].is_null()
    }));
    // A stranger claiming the freed name is carried nothing.
    let mut s = raw_dial_from(stranger(), b.tunnel, "tunnel1", None).expect("claim");
    send_frame(
        &mut s,
        &Frame::Open {
            stream: 1,
            service: "service1".into(),
            keyed: None,
            protocol: menet_actors::protocol::Protocol::Tcp,
            origin: None,
        },
    );
    let answer = recv_frame_until(&mut s, Duration::from_secs(5), |f| {
        matches!(f, Frame::OpenOk { .. } | Frame::OpenFail { .. })
    });
    assert!(matches!(answer, Some(Frame::OpenFail { .. })), "{answer:?}");
    // A declared name keeps its binds.
    let (c, d) = (Node::start(), Node::start());
    d.ok(
        "POST",
        "/tunnel",
        r#"{"name": "tunnel1", "role": "acceptor"}"#,
    );
    let _local = wire(&c, &d, backend.addr, None);
    c.ok("DELETE", "/tunnel", r#"{"name": "tunnel1"}"#);
    thread::sleep(Duration::from_millis(300));
    assert_eq!(d.config()["bind"]["remote"]["service1"], "tunnel1");
}

#[test]
fn strangers_new_names_cannot_take_the_places_kept_for_expected_dialers() {
    let dir = TempDir::new("reserve");
    let b = Node::with_config(
        &dir,
        "b",
        "[limits]\nmax_tunnels = 4\nreserved_tunnels = 2\nnew_names_per_minute = 100\n",
    );
    let a = Node::start();
    b.ok(
        "POST",
        "/tunnel",
        r#"{"name": "expected", "role": "acceptor"}"#,
    );
    let held: Vec<RawPeer> = (0..2)
        .map(|i| raw_dial_from(stranger(), b.tunnel, &format!("s{i}"), None).expect("room"))
        .collect();
    let e = raw_dial_from(stranger(), b.tunnel, "s2", None).expect_err("no more for strangers");
    assert!(e.contains("accepts no more tunnels"), "{e}");
    assert!(
        !e.contains("kept"),
        "a stranger is told only what it needs: {e}"
    );
    dial(&a, &b, "expected");
    drop(held);
}

#[test]
fn self_dial_is_refused_in_any_spelling() {
    let dir = TempDir::new("self");
    let wide = Node::build()
        .config(&dir, "wide", "")
        .tunnel_at("0.0.0.0:0")
        .start();
    let port = wide.tunnel.port();
    for ip in ["0.0.0.0", "::ffff:127.0.0.1", "127.0.0.2", "127.0.0.1"] {
        let (status, reply) = wide.request(
            "POST",
            "/tunnel",
            &format!(r#"{{"name": "me", "dest": ["{ip}", {port}]}}"#),
        );
        assert_eq!(status, 400, "{ip}: {reply}");
        assert!(reply["error"]
            .as_str()
            .is_some_and(|e| e.contains("own tunnel port")));
    }
    let narrow = Node::start();
    let port = narrow.tunnel.port();
    for ip in ["0.0.0.0", "::ffff:127.0.0.1", "127.0.0.1"] {
        let (status, reply) = narrow.request(
            "POST",
            "/tunnel",
            &format!(r#"{{"name": "me", "dest": ["{ip}", {port}]}}"#),
        );
        assert_eq!(status, 400, "{ip}: {reply}");
    }
    // Through a relay the address is another's: the node's own identity gives it away.
    let relay = Relay::start(narrow.tunnel);
    let (status, reply) = narrow.request(
        "POST",
        "/tunnel",
        &format!(
            r#"{{"name": "me", "dest": ["127.0.0.1", {}]}}"#,
            relay.addr.port()
        ),
    );
    assert_eq!(status, 400, "{reply}");
    assert!(reply["error"]
        .as_str()
        .is_some_and(|e| e.contains("this node itself")));
    assert!(narrow.config()["tunnels"]["me"].is_null(), "nothing kept");
}

#[test]
fn a_refusal_with_newlines_and_escapes_is_logged_on_one_line() {
    let a = Node::start();
    let hostile = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = hostile.local_addr().expect("addr").port();
    let server = thread::spawn(move || {
        let (mut s, _) = hostile.accept().expect("accept");
        let _ = read_handshake(&mut s);
        let reason =
            "evil\n[2026-01-01T00:00:00Z INFO  menet] forged\r\u{1b}[31mred\u{2028}sep\u{202e}txt";
        s.write_all(&refusal(RefuseCode::Other, reason))
            .expect("refuse");
        thread::sleep(Duration::from_millis(200));
    });
    let (status, reply) = a.request(
        "POST",
        "/tunnel",
        &format!(r#"{{"name": "t", "dest": ["127.0.0.1", {port}]}}"#),
    );
    server.join().expect("hostile acceptor");
    assert_eq!(status, 502, "{reply}");
    let error = reply["error"].as_str().unwrap_or_default();
    assert!(error.contains("evil\\n[2026"), "{error}");
    a.ok("DELETE", "/tunnel", r#"{"name": "t"}"#);
    assert!(a.wait_log("evil\\n", Duration::from_secs(2)));
    for line in a.log_all() {
        assert!(
            !line.contains("forged") || line.contains("evil\\n"),
            "forged: {line:?}"
        );
        assert!(
            !line.contains('\u{1b}') && !line.contains('\u{2028}') && !line.contains('\u{202e}')
        );
    }
}

#[test]
fn two_thousand_tunnel_openings_under_one_name_log_little() {
    let b = Node::start();
    let id = Arc::new(Identity::generate());
    drop(raw_dial_from(stranger(), b.tunnel, "churn", Some(id.clone())).expect("first"));
    thread::sleep(Duration::from_millis(200));
    let before = b.log_bytes();
    for _ in 0..2000 {
        let s = raw_dial_from(stranger(), b.tunnel, "churn", Some(id.clone())).expect("again");
        linger_zero(s.socket());
    }
    thread::sleep(Duration::from_millis(500));
    let written = b.log_bytes() - before;
    eprintln!("2,000 openings of one name: {written} bytes of log");
    assert!(
        written <= 2000 * 100,
        "{written} bytes of log for 2000 openings"
    );
    assert!(written < 20_000, "rate-limited: {written} bytes");
}

#[test]
fn names_with_line_separators_or_bidi_controls_are_refused() {
    let b = Node::start();
    for name in ["a\u{2028}b", "x\u{202e}txt", "z\u{2066}"] {
        let body = serde_json::json!({"name": name, "dest": ["127.0.0.1", 9]}).to_string();
        let (status, reply) = b.request("POST", "/tunnel", &body);
        assert_eq!(status, 400, "{name:?}: {reply}");
        let e = raw_dial(b.tunnel, name, None, None).expect_err("refused");
        assert!(e.contains("printable"), "{e}");
    }
}

#[test]
fn a_peer_announcing_tiny_windows_is_refused() {
    let b = Node::start();
    let e = raw_dial_windows(b.tunnel, "tiny", None, None, (1, 1 << 20)).expect_err("refused");
    assert!(!e.is_empty());
    assert!(b.wait_log("announces a window of 1 bytes", Duration::from_secs(2)));
}

#[test]
fn duplicate_keys_and_paths_that_are_not_utf8_are_refused() {
    let b = Node::start();
    let (status, reply) = b.request(
        "POST",
        "/service",
        r#"{"name":"s", "type":"remote", "addr":["127.0.0.1", 80], "name":"t"}"#,
    );
    assert_eq!(status, 400, "{reply}");
    assert!(reply["error"]
        .as_str()
        .is_some_and(|e| e.contains("duplicate key \"name\"")));
    assert!(b.config()["services"]["remote"]
        .as_object()
        .is_some_and(|m| m.is_empty()));
    for path in [
        "/services/remote/%FF",
        "/services/remote/%C0%AE",
        "/tunnels/a%E2%80",
    ] {
        let (status, _, body) = http_text(b.admin, "GET", path, "", "");
        assert_eq!(status, 400, "{path}: {body}");
    }
    let (status, _, _) = http_text(b.admin, "GET", "/services/remote/%C3%A9", "", "");
    assert_eq!(status, 404, "valid UTF-8 is looked up");
}

#[test]
fn a_state_directory_others_could_write_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("unsafe");
    let shared = dir.path("shared");
    std::fs::create_dir(&shared).expect("dir");
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let config = dir.path("shared.toml");
    std::fs::write(
        &config,
        format!(
            "[state]\npath = {:?}\n",
            shared.join("s.json").display().to_string()
        ),
    )
    .expect("config");
    let (code, stderr) = Node::run_with_config(config.to_str().expect("path"));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("writable by others"), "{stderr}");
    // A state file planted as a link is refused, not followed.
    let linked = dir.path("linked");
    std::fs::create_dir(&linked).expect("dir");
    std::os::unix::fs::symlink("/etc/hostname", linked.join("s.json")).expect("link");
    std::fs::write(
        &config,
        format!(
            "[state]\npath = {:?}\n",
            linked.join("s.json").display().to_string()
        ),
    )
    .expect("config");
    let (code, stderr) = Node::run_with_config(config.to_str().expect("path"));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("not a regular file"), "{stderr}");
    // Another user's directory (needs root to make one here).
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        let theirs = dir.path("theirs");
        std::fs::create_dir(&theirs).expect("dir");
        std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).expect("chown");
        std::fs::set_permissions(&theirs, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        std::fs::write(
            &config,
            format!(
                "[state]\npath = {:?}\n",
                theirs.join("s.json").display().to_string()
            ),
        )
        .expect("config");
        let (code, stderr) = Node::run_with_config(config.to_str().expect("path"));
        assert_eq!(code, Some(1), "{stderr}");
        assert!(stderr.contains("belongs to user 65534"), "{stderr}");
    }
}

#[test]
fn one_tunnel_cannot_take_every_descriptor() {
    let dir = TempDir::new("share");
    let backend = Backend::echo();
    let b = Node::build()
        .config(&dir, "b", "[limits]\nfd_reserve = 64\n")
        .nofile(224)
        .start();
    let pool = limits(&b)["descriptors"]["max"].as_u64().expect("max");
    let share = limits(&b)["descriptors"]["share"].as_u64().expect("share");
    assert_eq!((pool, share), (160, 80));
    b.ok(
        "POST",
        "/service",
        &format!(
            r#"{{"name":"svc", "type": "remote", "addr":["127.0.0.1", "{}"]}}"#,
            backend.addr.port()
        ),
    );
    b.ok(
        "POST",
        "/bind",
        r#"{"tunnel": "greedy", "service":"svc", "type": "remote"}"#,
    );
    let mut greedy = raw_dial_from(stranger(), b.tunnel, "greedy", None).expect("handshake");
    let mut buf = bytes::BytesMut::new();
    for i in 0..120u32 {
        Frame::Open {
            stream: 2 * i + 1,
            service: "svc".into(),
            keyed: None,
            protocol: menet_actors::protocol::Protocol::Tcp,
            origin: None,
        }
        .encode(&mut buf);
    }
    greedy.write_all(&buf).expect("opens");
    let (mut ok, mut failed) = (0, 0);
    recv_frame_until(&mut greedy, Duration::from_secs(10), |f| {
        match f {
            Frame::OpenOk { .. } => ok += 1,
            Frame::OpenFail { .. } => failed += 1,
            _ => {}
        }
        ok + failed == 120
    })
    .expect("every OPEN answered");
    assert_eq!((ok, failed), (80, 40));
    // Another tunnel still gets its connections.
    let a = Node::start();
    let local = wire(&a, &b, backend.addr, None);
    assert_eq!(roundtrip(local, b"room left"), b"room left");
}

#[test]
fn stalled_readers_hold_at_most_the_node_buffer_budget_and_a_tunnel_window() {
    let dir = TempDir::new("budget");
    // A backend that sends without end, to clients that never read.
    let firehose = Backend::start(|mut s| {
        let chunk = vec![0x5au8; 64 * 1024];
        while s.write_all(&chunk).is_ok() {}
    });
    let tunnel =
        "[tunnel]\nstream_window = 262144\ntunnel_window = 1048576\nmax_tunnel_window = 1048576\n";
    let a = Node::with_config(
        &dir,
        "a",
        &format!("{tunnel}[limits]\nmax_buffered_bytes = 2097152\n"),
    );
    let b = Node::with_config(&dir, "b", tunnel);
    let local = wire(&a, &b, firehose.addr, None);
    let stalled: Vec<TcpStream> = (0..32).map(|_| connect(local)).collect();
    let budget = || limits(&a)["buffered_bytes"].clone();
    assert!(
        eventually(Duration::from_secs(20), || budget()["credit_withheld"]
            .as_u64()
            > Some(0)),
        "the budget was never reached: {}",
        budget()
    );
    thread::sleep(Duration::from_millis(500));
    let held = budget()["in_use"].as_u64().unwrap_or(u64::MAX);
    eprintln!(
        "32 stalled readers, 2 MiB budget: {held} bytes held, {}",
        budget()
    );
    assert!(
        held <= 2 * 1024 * 1024 + 1024 * 1024 + 64 * 1024,
        "{held} bytes held with a 2 MiB budget and a 1 MiB tunnel window"
    );
    // Readers again: everything drains and the budget is free.
    drop(stalled);
    assert!(
        eventually(Duration::from_secs(10), || budget()["in_use"] == 0),
        "{}",
        budget()
    );
    let mut s = connect(local);
    let mut got = vec![0u8; 1 << 20];
    s.read_exact(&mut got).expect("a new stream is carried");
    assert!(got.iter().all(|b| *b == 0x5a));
}

#[test]
fn pins_expire_after_pin_ttl_and_the_clock_survives_a_restart() {
    let dir = TempDir::new("ttl");
    let state = dir.path("b.json");
    let mut b = Node::with_config(
        &dir,
        "b",
        &format!(
            "[tunnel]\npin_ttl = \"2s\"\n[state]\npath = {:?}\n",
            state.display().to_string()
        ),
    );
    drop(raw_dial_from(stranger(), b.tunnel, "passing", None).expect("pin"));
    assert!(eventually(Duration::from_secs(2), || {
        b.config()["accepted"]["passing"].is_object()
    }));
    assert!(eventually(Duration::from_secs(5), || {
        b.config()["accepted"]["passing"].is_null()
    }));
    assert!(limits(&b)["names"]["evicted"].as_u64() >= Some(1));
    // Pinned, then the node is down past the TTL: the pin is gone at the next start, not
    // two seconds after it (its last contact was kept in the state file).
    drop(raw_dial_from(stranger(), b.tunnel, "sleeper", None).expect("pin"));
    assert!(eventually(Duration::from_secs(2), || {
        b.config()["accepted"]["sleeper"].is_object()
    }));
    b.kill9();
    thread::sleep(Duration::from_millis(2500));
    b.restart();
    let restarted = Instant::now();
    assert!(eventually(Duration::from_secs(1), || {
        b.config()["accepted"]["sleeper"].is_null()
    }));
    assert!(restarted.elapsed() < Duration::from_secs(1));
}
