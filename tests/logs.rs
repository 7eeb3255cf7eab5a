//! `[log] format = "json"`: every line the node writes is one JSON object with `ts`, `level`,
//! `target` and `msg`, and the fields the line is about as keys; also when a peer's text holds
//! quotes and newlines.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::thread;
use std::time::Duration;

use serde_json::Value;

use common::*;

/// A fake acceptor: answers any HELLO with a REFUSE whose reason is hostile text.
fn refusing_acceptor(reason: &[u8]) -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    let mut msg = b"MNET".to_vec();
    msg.push(menet_actors::handshake::VERSION);
    msg.push(5);
    let body_len = 2 + reason.len();
    msg.extend_from_slice(&(body_len as u16).to_be_bytes());
    msg.push(7);
    msg.push(reason.len() as u8);
    msg.extend_from_slice(reason);
    thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let mut hello = [0u8; 128];
            let _ = s.read(&mut hello);
            let _ = s.write_all(&msg);
        }
    });
    addr
}

#[test]
fn every_line_is_one_json_object_with_its_fields() {
    let dir = TempDir::new("json-logs");
    let a = Node::with_config(&dir, "a", "[log]\nformat = \"json\"\n");
    let b = Node::with_config(&dir, "b", "[log]\nformat = \"json\"\n");
    let echo = Backend::echo();
    let addr = wire(&a, &b, echo.addr, Some("k"));
    let data = pattern(1000, 1);
    assert_eq!(roundtrip(addr, &data), data);
    // A peer's text with quotes, a newline and a forged JSON line in it.
    let fake = refusing_acceptor(b"no\"\n{\"level\":\"ERROR\",\"msg\":\"forged\"}");
    let (status, _) = a.request(
        "POST",
        "/tunnel",
        &format!(r#"{{"name":"t9","dest":["127.0.0.1","{}"]}}"#, fake.port()),
    );
    assert_eq!(status, 502);
    // Garbage on the tunnel port.
    let mut g = std::net::TcpStream::connect(b.tunnel).expect("connect");
    g.write_all(b"GET / HTTP/1.1\r\n\"quoted\"\r\n\r\n")
        .expect("garbage");
    assert!(b.wait_log("bad handshake", Duration::from_secs(3)));
    assert!(a.wait_log("refused by the peer", Duration::from_secs(3)));
    for (node, name) in [(&a, "a"), (&b, "b")] {
        let lines = node.log_all();
        assert!(lines.len() > 5, "{name}: {lines:?}");
        for line in &lines {
            let v: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{name}: not one JSON object ({e}): {line}"));
            for key in ["ts", "level", "target", "msg"] {
                assert!(v[key].is_string(), "{name}: no {key}: {line}");
            }
            assert!(
                v["ts"]
                    .as_str()
                    .is_some_and(|t| t.contains('T') && t.contains('.')),
                "{name}: RFC 3339 with milliseconds: {line}"
            );
            assert_ne!(v["msg"], "forged", "{name}: a forged line: {line}");
        }
    }
    let lines = a.log_all();
    let bound = lines
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["msg"].as_str().is_some_and(|m| m.starts_with("bind:")))
        .expect("a bind line");
    assert_eq!(bound["service"], "service1", "{bound}");
    let refused = lines
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| {
            v["msg"]
                .as_str()
                .is_some_and(|m| m.contains("refused by the peer"))
        })
        .expect("a refusal line");
    assert_eq!(refused["tunnel"], "t9", "{refused}");
    assert!(
        refused["msg"]
            .as_str()
            .is_some_and(|m| m.contains("forged")),
        "kept as text: {refused}"
    );
}
