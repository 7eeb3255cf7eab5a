//! Beyond one TCP backend, through real nodes: the client's address in a PROXY protocol header
//! (parsed here independently of menet's encoder), several addresses per remote service (a dead
//! one skipped, round-robin spreading, one killed midway), and bandwidth limits holding a
//! service to its rate while another on the same tunnel keeps its speed.

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;

/// Reads a PROXY header (version 1 or 2, per HAProxy's specification) from `s`: the source and
/// destination it names.
fn read_proxy_header(s: &mut TcpStream) -> (SocketAddr, SocketAddr) {
    let mut first = [0u8; 12];
    s.read_exact(&mut first[..5]).expect("header start");
    if &first[..5] == b"PROXY" {
        let mut line = b"PROXY".to_vec();
        let mut b = [0u8; 1];
        while !line.ends_with(b"\r\n") {
            assert!(line.len() <= 107, "a v1 header is at most 107 bytes");
            s.read_exact(&mut b).expect("v1 header");
            line.push(b[0]);
        }
        let text = String::from_utf8(line).expect("ascii");
        let parts: Vec<&str> = text.trim_end().split(' ').collect();
        assert_eq!(parts.len(), 6, "{text}");
        assert!(parts[1] == "TCP4" || parts[1] == "TCP6", "{text}");
        let ip = |t: &str| t.parse::<IpAddr>().expect("ip");
        let port = |t: &str| t.parse::<u16>().expect("port");
        return (
            SocketAddr::new(ip(parts[2]), port(parts[4])),
            SocketAddr::new(ip(parts[3]), port(parts[5])),
        );
    }
    s.read_exact(&mut first[5..]).expect("v2 signature");
    assert_eq!(&first, b"\r\n\r\n\0\r\nQUIT\n", "v2 signature");
    let mut head = [0u8; 4];
    s.read_exact(&mut head).expect("v2 header");
    assert_eq!(head[0], 0x21, "version 2, PROXY");
    let len = usize::from(u16::from_be_bytes([head[2], head[3]]));
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).expect("v2 addresses");
    match head[1] {
        0x11 => {
            let ip = |i: usize| {
                IpAddr::V4(Ipv4Addr::new(
                    body[i],
                    body[i + 1],
                    body[i + 2],
                    body[i + 3],
                ))
            };
            let port = |i: usize| u16::from_be_bytes([body[i], body[i + 1]]);
            (
                SocketAddr::new(ip(0), port(8)),
                SocketAddr::new(ip(4), port(10)),
            )
        }
        0x21 => {
            let ip = |i: usize| {
                let raw: [u8; 16] = body[i..i + 16].try_into().expect("16");
                IpAddr::V6(Ipv6Addr::from(raw))
            };
            let port = |i: usize| u16::from_be_bytes([body[i], body[i + 1]]);
            (
                SocketAddr::new(ip(0), port(32)),
                SocketAddr::new(ip(16), port(34)),
            )
        }
        other => panic!("unexpected family/transport {other:#x}"),
    }
}

/// A backend that reads a PROXY header, answers with the source it names as one line, then
/// echoes.
fn proxy_aware_backend() -> Backend {
    Backend::start(|mut s| {
        let (src, dst) = read_proxy_header(&mut s);
        let _ = writeln!(s, "{src} {dst}");
        let mut buf = [0u8; 4096];
        while let Ok(n) = s.read(&mut buf) {
            if n == 0 || s.write_all(&buf[..n]).is_err() {
                break;
            }
        }
    })
}

fn read_line(s: &mut TcpStream) -> String {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while !line.ends_with(b"\n") {
        s.read_exact(&mut b).expect("line");
        line.push(b[0]);
    }
    String::from_utf8(line)
        .expect("utf-8")
        .trim_end()
        .to_owned()
}

#[test]
fn a_backend_behind_a_proxy_header_sees_the_clients_address_and_port() {
    let (a, b) = (Node::start(), Node::start());
    dial(&a, &b, "tunnel1");
    let backend = proxy_aware_backend();
    for version in ["v1", "v2"] {
        let name = format!("web-{version}");
        // The option is the remote end's; the local end's body is the seed's.
        let local = service_with(
            &a,
            &b,
            &name,
            &format!(
                r#""proxy_protocol":"{version}", "addr": {}"#,
                pair(backend.addr)
            ),
        );
        assert_eq!(
            b.config()["services"]["remote"][&name]["proxy_protocol"],
            version
        );
        for _ in 0..3 {
            let mut client = connect(local);
            let me = client.local_addr().expect("client address");
            client.write_all(b"ping\n").expect("write");
            let seen = read_line(&mut client);
            assert_eq!(seen, format!("{me} {local}"), "{version}");
            // The header came first; the client's own bytes follow unchanged.
            assert_eq!(read_line(&mut client), "ping", "{version}");
        }
    }
}

/// A backend that echoes, counts its connections and can be killed (its port then refuses).
struct Killable {
    addr: SocketAddr,
    served: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl Killable {
    fn start() -> Killable {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let served = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (count, flag) = (served.clone(), stop.clone());
        thread::spawn(move || {
            for conn in listener.incoming() {
                if flag.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(mut s) = conn else { continue };
                count.fetch_add(1, Ordering::SeqCst);
                thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = s.read(&mut buf) {
                        if n == 0 || s.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = s.shutdown(Shutdown::Write);
                });
            }
        });
        Killable { addr, served, stop }
    }

    /// Stops listening: connections to its port are refused from now on.
    fn kill(&self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        assert!(eventually(Duration::from_secs(5), || TcpStream::connect(
            self.addr
        )
        .is_err()));
    }

    fn served(&self) -> usize {
        self.served.load(Ordering::SeqCst)
    }
}

/// A port nothing listens on.
fn dead_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

fn service_with(a: &Node, b: &Node, name: &str, remote_fields: &str) -> SocketAddr {
    a.ok(
        "POST",
        "/service",
        &format!(r#"{{"name":"{name}", "type": "local", "addr":["127.0.0.1", "0"]}}"#),
    );
    b.ok(
        "POST",
        "/service",
        &format!(r#"{{"name":"{name}", "type": "remote", {remote_fields}}}"#),
    );
    for (node, side) in [(a, "local"), (b, "remote")] {
        node.ok(
            "POST",
            "/bind",
            &format!(r#"{{"tunnel": "tunnel1", "service":"{name}", "type": "{side}"}}"#),
        );
    }
    a.config()["services"]["local"][name]["listening"]
        .as_str()
        .and_then(|l| l.parse().ok())
        .expect("listening")
}

fn pair(a: SocketAddr) -> String {
    format!(r#"["{}", {}]"#, a.ip(), a.port())
}

#[test]
fn several_backends_skip_the_dead_spread_round_robin_and_drop_one_killed_midway() {
    let (a, b) = (Node::start(), Node::start());
    dial(&a, &b, "tunnel1");
    let dead = dead_port();
    let live = Killable::start();
    let first = service_with(
        &a,
        &b,
        "first",
        &format!(r#""addr": [{}, {}]"#, pair(dead), pair(live.addr)),
    );
    for i in 0..10u64 {
        let data = pattern(1000, i);
        assert_eq!(roundtrip(first, &data), data, "connection {i}");
    }
    assert_eq!(live.served(), 10);
    let view = &b.config()["services"]["remote"]["first"];
    assert_eq!(view["balance"], "first");
    let backends = view["backends"].as_array().expect("backends");
    assert_eq!(backends[0]["state"], "down", "{view}");
    assert!(backends[0]["failures"].as_u64() >= Some(1), "{view}");
    assert_eq!(backends[1]["connections"], 10, "{view}");
    assert_eq!(view["addr"][1][1], live.addr.port(), "the list as posted");

    let (one, two) = (Killable::start(), Killable::start());
    let spread = service_with(
        &a,
        &b,
        "spread",
        &format!(
            r#""addr": [{}, {}], "balance": "round-robin""#,
            pair(one.addr),
            pair(two.addr)
        ),
    );
    for i in 0..10u64 {
        let data = pattern(100, i);
        assert_eq!(roundtrip(spread, &data), data);
    }
    assert_eq!((one.served(), two.served()), (5, 5));
    // One killed midway: every later connection still works, on the other.
    two.kill();
    for i in 0..10u64 {
        let data = pattern(100, i);
        assert_eq!(
            roundtrip(spread, &data),
            data,
            "after the kill, connection {i}"
        );
    }
    assert_eq!(
        one.served(),
        15,
        "all but one try after the kill went to the live one"
    );
    let view = &b.config()["services"]["remote"]["spread"];
    assert_eq!(view["backends"][1]["state"], "down", "{view}");
    assert_eq!(
        view["backends"][1]["failures"], 1,
        "skipped from then on: {view}"
    );
}

#[test]
fn a_health_check_marks_a_dead_address_down_before_any_stream_tries_it() {
    let (a, b) = (Node::start(), Node::start());
    dial(&a, &b, "tunnel1");
    let live = Killable::start();
    let dead = dead_port();
    service_with(
        &a,
        &b,
        "checked",
        &format!(
            r#""addr": [{}, {}], "health_check_ms": 200"#,
            pair(dead),
            pair(live.addr)
        ),
    );
    assert!(
        eventually(Duration::from_secs(3), || {
            let v = b.config()["services"]["remote"]["checked"]["backends"].clone();
            v[0]["state"] == "down" && v[1]["state"] == "up"
        }),
        "{}",
        b.config()["services"]["remote"]["checked"]
    );
}

/// Uploads `bytes` through `addr` to a sink that answers how many it counted; the seconds it
/// took.
fn upload(addr: SocketAddr, bytes: usize) -> f64 {
    let started = Instant::now();
    let mut s = connect(addr);
    s.set_read_timeout(Some(Duration::from_secs(60))).ok();
    let chunk = vec![7u8; 64 * 1024];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len());
        s.write_all(&chunk[..n]).expect("upload");
        left -= n;
    }
    s.shutdown(Shutdown::Write).expect("fin");
    let mut ack = Vec::new();
    s.read_to_end(&mut ack).expect("ack");
    assert_eq!(
        ack,
        bytes.to_string().as_bytes(),
        "the sink counted every byte"
    );
    started.elapsed().as_secs_f64()
}

#[test]
fn a_bandwidth_limit_holds_its_service_both_ways_while_another_keeps_its_speed() {
    const MIB: usize = 1 << 20;
    let (a, b) = (Node::start(), Node::start());
    dial(&a, &b, "tunnel1");
    // Counts what it receives and answers the count; or sends 3 MiB after a request byte "d".
    let backend = Backend::start(|mut s| {
        let mut first = [0u8; 1];
        if s.read_exact(&mut first).is_err() {
            return;
        }
        if first[0] == b'd' {
            let chunk = vec![9u8; 64 * 1024];
            for _ in 0..48 {
                if s.write_all(&chunk).is_err() {
                    return;
                }
            }
            let _ = s.shutdown(Shutdown::Write);
            return;
        }
        let mut total = 1usize;
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n) = s.read(&mut buf) {
            if n == 0 {
                break;
            }
            total += n;
        }
        let _ = write!(s, "{total}");
    });
    let limited = service_with(
        &a,
        &b,
        "limited",
        &format!(r#""addr": {}, "bandwidth": {MIB}"#, pair(backend.addr)),
    );
    let echo = Backend::echo();
    let fast = carry(&a, &b, "tunnel1", "fast", None, echo.addr);
    assert_eq!(
        b.config()["services"]["remote"]["limited"]["bandwidth"],
        MIB
    );

    let upload = thread::spawn(move || upload(limited, 3 * MIB));
    let download = thread::spawn(move || {
        let started = Instant::now();
        let mut s = connect(limited);
        s.write_all(b"d").expect("request");
        let mut got = 0usize;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match s.read(&mut buf).expect("download") {
                0 => break,
                n => got += n,
            }
        }
        assert_eq!(got, 3 * MIB);
        started.elapsed().as_secs_f64()
    });
    // Meanwhile 32 MiB through the other service on the same tunnel, both ways.
    let started = Instant::now();
    let data = pattern(32 * MIB, 5);
    assert_eq!(roundtrip(fast, &data), data);
    let fast_rate = 32.0 / started.elapsed().as_secs_f64();
    let (up, down) = (
        upload.join().expect("upload"),
        download.join().expect("download"),
    );
    // 3 MiB at 1 MiB/s with a second of burst: two seconds, each way at once, less at most
    // one paced write or read (a write never takes a whole queued window at once).
    eprintln!("upload {up:.2} s, download {down:.2} s");
    assert!((1.9..8.0).contains(&up), "upload took {up:.2} s");
    assert!((1.9..8.0).contains(&down), "download took {down:.2} s");
    assert!(
        fast_rate >= 10.0,
        "the other service moved {fast_rate:.1} MiB/s"
    );
    let throttled = b.config()["services"]["remote"]["limited"]["throttled_seconds"]
        .as_f64()
        .expect("throttled time");
    assert!(throttled > 0.5, "throttled {throttled}");
    let (_, _, metrics) = http_text(b.admin, "GET", "/metrics", "", "");
    let series = r#"menet_service_throttled_seconds_total{service="limited",side="remote"}"#;
    assert!(metrics.contains(series), "{series} missing from /metrics");
}

#[test]
fn the_options_are_kept_in_the_state_file_across_a_kill() {
    let dir = TempDir::new("service-options");
    let mut n = Node::persistent(&dir, "n", None);
    let udp_port = {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("free udp port");
        s.local_addr().expect("addr").port()
    };
    n.ok(
        "POST",
        "/service",
        &format!(
            r#"{{"name":"dns", "protocol":"udp", "bandwidth":"65536", "type":"local", "addr":["127.0.0.1","{udp_port}"]}}"#
        ),
    );
    n.ok(
        "POST",
        "/service",
        r#"{"name":"api", "type":"remote", "addr":[["127.0.0.1","8000"],["127.0.0.1","8001"]],
            "balance":"round-robin", "health_check_ms":5000, "proxy_protocol":"v1"}"#,
    );
    let before = n.config()["services"].clone();
    n.kill9();
    n.restart();
    let after = n.config()["services"].clone();
    for (side, name, field) in [
        ("local", "dns", "protocol"),
        ("local", "dns", "bandwidth"),
        ("local", "dns", "listening"),
        ("remote", "api", "addr"),
        ("remote", "api", "balance"),
        ("remote", "api", "health_check_ms"),
        ("remote", "api", "proxy_protocol"),
    ] {
        assert_eq!(
            after[side][name][field], before[side][name][field],
            "{side} {name} {field}: {after}"
        );
        assert!(!after[side][name][field].is_null(), "{side} {name} {field}");
    }
    // The restored UDP service receives on its port again.
    assert_eq!(
        after["local"]["dns"]["listening"],
        format!("127.0.0.1:{udp_port}")
    );
}
