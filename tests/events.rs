//! `GET /events`: the history, then a sample each second with the rates of what moved; at
//! 10,000 objects it still sends only what moved, never the whole configuration.

mod common;

use std::io::Read;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::*;

/// Reads `GET /events` until `count` events arrived: (kind, data) each.
fn events(node: &Node, count: usize, within: Duration) -> Vec<(String, Value)> {
    let mut s = TcpStream::connect(node.admin).expect("connect");
    s.set_read_timeout(Some(within)).expect("timeout");
    std::io::Write::write_all(
        &mut s,
        format!("GET /events HTTP/1.1\r\nHost: {}\r\n\r\n", node.admin).as_bytes(),
    )
    .expect("request");
    let started = Instant::now();
    let mut raw = String::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut out = Vec::new();
    while out.len() < count && started.elapsed() < within {
        let n = s.read(&mut buf).expect("read");
        assert!(n > 0, "the stream ended");
        raw.push_str(&String::from_utf8_lossy(&buf[..n]));
        out = raw
            .split("\n\n")
            .filter_map(|frame| {
                let kind = frame.lines().find_map(|l| l.strip_prefix("event: "))?;
                let data = frame.lines().find_map(|l| l.strip_prefix("data: "))?;
                Some((kind.to_owned(), serde_json::from_str(data).ok()?))
            })
            .collect();
    }
    out
}

#[test]
fn events_carry_history_then_samples_of_what_moved() {
    let (a, b) = (Node::start(), Node::start());
    let echo = Backend::echo();
    let web = wire(&a, &b, echo.addr, None);
    let mover = std::thread::spawn(move || {
        for i in 0..30 {
            let data = pattern(256 * 1024, i);
            assert_eq!(roundtrip(web, &data), data);
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    let got = events(&a, 4, Duration::from_secs(10));
    mover.join().expect("traffic");
    assert_eq!(got[0].0, "history");
    assert!(got[0].1["seconds"].is_array());
    let moved = got[1..].iter().any(|(kind, d)| {
        kind == "sample"
            && d["rates"]["tunnel:tunnel1"][1].as_f64() > Some(0.0)
            && d["rates"]["service:local:service1"][0].as_f64() > Some(0.0)
    });
    assert!(moved, "{got:?}");
    assert!(got[1..]
        .iter()
        .all(|(_, d)| d["tunnels"]["tunnel1"]["connected"] == true));
}

#[test]
fn at_ten_thousand_objects_a_sample_is_what_moved() {
    let a = Node::start();
    let mut doc = a.config();
    for i in 0..10_000 {
        doc["services"]["remote"][format!("s{i}")] = json!({"addr": ["127.0.0.1", 1 + i % 60000]});
    }
    let (status, reply) = a.request("PUT", "/config", &doc.to_string());
    assert_eq!(status, 200, "{reply}");
    let got = events(&a, 3, Duration::from_secs(10));
    assert_eq!(got.len(), 3, "{got:?}");
    for (kind, d) in &got[1..] {
        assert_eq!(kind, "sample");
        assert!(
            d.to_string().len() < 1024,
            "an idle node's sample is small: {d}"
        );
    }
}
