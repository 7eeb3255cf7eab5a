//! UDP services through real nodes: datagrams of 1 B to 60 KiB returned whole, interleaved
//! clients each getting only their own replies, keyed flows, and a flood from 2,000 source
//! addresses that leaves the node, its admin API and a TCP service on the same tunnel working.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;

/// A UDP echo server: each datagram goes back to its sender as it came.
struct UdpEcho {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl UdpEcho {
    fn start() -> UdpEcho {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        let addr = socket.local_addr().expect("addr");
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        thread::spawn(move || {
            let mut buf = vec![0u8; 65_536];
            while !flag.load(Ordering::SeqCst) {
                if let Ok((n, from)) = socket.recv_from(&mut buf) {
                    let _ = socket.send_to(&buf[..n], from);
                }
            }
        });
        UdpEcho { addr, stop }
    }
}

impl Drop for UdpEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// A UDP service `name` local on `a` (port 0) and remote on `b` (to `target`), with `fields` in
/// both bodies; the local address it got.
fn carry_udp(a: &Node, b: &Node, name: &str, fields: &str, target: SocketAddr) -> SocketAddr {
    a.ok(
        "POST",
        "/service",
        &format!(
            r#"{{"name":"{name}", {fields}"protocol":"udp", "type": "local", "addr":["127.0.0.1", "0"]}}"#
        ),
    );
    b.ok(
        "POST",
        "/service",
        &format!(
            r#"{{"name":"{name}", {fields}"protocol":"udp", "type": "remote", "addr":["{}", "{}"]}}"#,
            target.ip(),
            target.port()
        ),
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

fn client() -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").expect("client");
    s.set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    s
}

/// Sends `data` to `to` and waits for one datagram back (resending a lost first datagram, as a
/// UDP client would).
fn exchange(s: &UdpSocket, to: SocketAddr, data: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; 65_536];
    for _ in 0..3 {
        s.send_to(data, to).expect("send");
        if let Ok((n, _)) = s.recv_from(&mut buf) {
            return buf[..n].to_vec();
        }
    }
    panic!("no answer for a datagram of {} bytes", data.len());
}

#[test]
fn datagrams_come_back_whole_and_each_client_gets_only_its_own() {
    let (a, b) = (Node::start(), Node::start());
    dial(&a, &b, "tunnel1");
    let echo = UdpEcho::start();
    for (name, fields) in [
        ("dns", ""),
        ("keyed", r#""key":"k1", "#),
        ("sealed", r#""key":"k2", "cipher":"aes-256-gcm", "#),
    ] {
        let local = carry_udp(&a, &b, name, fields, echo.addr);
        let s = client();
        for (i, len) in [1usize, 2, 512, 1200, 1472, 9000, 32 * 1024, 60 * 1024]
            .into_iter()
            .enumerate()
        {
            let data = pattern(len, i as u64);
            assert_eq!(exchange(&s, local, &data), data, "{name}: {len} bytes");
        }
        // Two clients interleaved: each reply goes to its own sender.
        let (one, two) = (client(), client());
        for i in 0..20u64 {
            let (d1, d2) = (pattern(100, i), pattern(300, 1000 + i));
            one.send_to(&d1, local).expect("send");
            two.send_to(&d2, local).expect("send");
            let mut buf = vec![0u8; 2048];
            let (n, _) = one.recv_from(&mut buf).expect("one's reply");
            assert_eq!(&buf[..n], &d1[..], "{name}: client one, round {i}");
            let (n, _) = two.recv_from(&mut buf).expect("two's reply");
            assert_eq!(&buf[..n], &d2[..], "{name}: client two, round {i}");
        }
        let view = a.config()["services"]["local"][name].clone();
        assert_eq!(view["protocol"], "udp", "{view}");
        assert_eq!(view["datagrams"]["flows"], 3, "{view}");
        assert!(view["datagrams"]["carried"].as_u64() >= Some(48), "{view}");
    }
    let (status, _, metrics) = http_text(a.admin, "GET", "/metrics", "", "");
    assert_eq!(status, 200);
    for series in [
        r#"menet_service_datagrams_total{service="dns",side="local",event="carried"}"#,
        r#"menet_service_datagrams_total{service="keyed",side="local",event="delivered"}"#,
        r#"menet_service_udp_flows{service="sealed",side="local"} 3"#,
    ] {
        assert!(metrics.contains(series), "{series} missing from /metrics");
    }
}

#[test]
fn a_protocol_mismatch_is_refused_with_a_line_on_both_nodes() {
    let (a, b) = (Node::start(), Node::start());
    dial(&a, &b, "tunnel1");
    let echo = UdpEcho::start();
    a.ok(
        "POST",
        "/service",
        r#"{"name":"mixed", "protocol":"udp", "type": "local", "addr":["127.0.0.1", "0"]}"#,
    );
    b.ok(
        "POST",
        "/service",
        &format!(
            r#"{{"name":"mixed", "type": "remote", "addr":["127.0.0.1", "{}"]}}"#,
            echo.addr.port()
        ),
    );
    for (node, side) in [(&a, "local"), (&b, "remote")] {
        node.ok(
            "POST",
            "/bind",
            &format!(r#"{{"tunnel": "tunnel1", "service":"mixed", "type": "{side}"}}"#),
        );
    }
    let local: SocketAddr = a.config()["services"]["local"]["mixed"]["listening"]
        .as_str()
        .and_then(|l| l.parse().ok())
        .expect("listening");
    client().send_to(b"hello", local).expect("send");
    assert!(b.wait_log(
        "protocol mismatch for service mixed: the peer carries udp, this node tcp",
        Duration::from_secs(5)
    ));
    // Without a tunnel secret the peer is told only "refused" (strangers learn nothing).
    assert!(a.wait_log("service mixed refused by the peer", Duration::from_secs(5)));
}

#[test]
fn a_flood_from_two_thousand_addresses_leaves_the_node_and_other_services_working() {
    let (a, b) = (Node::start(), Node::start());
    dial(&a, &b, "tunnel1");
    let echo = UdpEcho::start();
    let local = carry_udp(&a, &b, "game", "", echo.addr);
    let tcp = Backend::echo();
    let web = carry(&a, &b, "tunnel1", "web", None, tcp.addr);
    // The new client after the flood, bound before it: a flood socket's port, freed and given
    // out again, would receive the late echo of that flow's datagram.
    let late = client();
    let started = Instant::now();
    let flood = thread::spawn(move || {
        for i in 0..2000u64 {
            // A socket of its own each: 2,000 source ports, each a flow.
            let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
            let _ = s.send_to(&pattern(200, i), local);
        }
    });
    // Meanwhile the TCP service on the same tunnel keeps working.
    while !flood.is_finished() {
        let data = pattern(10_000, 3);
        assert_eq!(roundtrip(web, &data), data);
    }
    flood.join().expect("flood");
    let data = pattern(1 << 20, 4);
    assert_eq!(roundtrip(web, &data), data, "after the flood");
    // The node answers its admin API, and a new UDP client is served.
    let view = a.config()["services"]["local"]["game"].clone();
    assert!(view["datagrams"]["flows"].as_u64() <= Some(2001), "{view}");
    assert_eq!(exchange(&late, local, b"still here"), b"still here");
    assert!(started.elapsed() < Duration::from_secs(60));
}

#[test]
fn a_full_flow_table_drops_new_clients_until_a_flow_has_been_quiet() {
    let dir = TempDir::new("udp-flows");
    let a = Node::with_config(&dir, "a", "[limits]\nmax_udp_flows_per_service = 2\n");
    let b = Node::start();
    dial(&a, &b, "tunnel1");
    let echo = UdpEcho::start();
    let local = carry_udp(&a, &b, "game", "", echo.addr);
    let (one, two, three) = (client(), client(), client());
    assert_eq!(exchange(&one, local, b"one"), b"one");
    assert_eq!(exchange(&two, local, b"two"), b"two");
    // Both flows are busy: a third client's datagram is dropped, counted.
    three
        .set_read_timeout(Some(Duration::from_millis(300)))
        .expect("timeout");
    three.send_to(b"three", local).expect("send");
    let mut buf = [0u8; 64];
    assert!(
        three.recv_from(&mut buf).is_err(),
        "no room for a third flow"
    );
    let dropped = a.config()["services"]["local"]["game"]["datagrams"]["dropped"].clone();
    assert!(dropped.as_u64() >= Some(1), "{dropped}");
    assert!(a.wait_log("2 flows, none quiet", Duration::from_secs(2)));
    // Once a flow has been quiet for a second, a new client takes its place.
    thread::sleep(Duration::from_millis(1100));
    three
        .set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    assert_eq!(exchange(&three, local, b"three"), b"three");
    let flows = a.config()["services"]["local"]["game"]["datagrams"]["flows"].clone();
    assert!(flows.as_u64() <= Some(2), "{flows}");
}
