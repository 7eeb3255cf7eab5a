//! Bad input of every class gets a clear error or a closed connection, and changes nothing.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;

#[test]
fn admin_api_refuses_bad_requests_and_keeps_its_state() {
    let backend = Backend::echo();
    let (a, b) = (Node::start(), Node::start());
    let local = wire(&a, &b, backend.addr, Some("k"));
    let before = a.config();
    let taken = local.port();
    let dead_port = free_port();
    let big = format!(r#"{{"name":"{}"}}"#, "x".repeat(70_000));
    let cases: Vec<(&str, &str, String, u16, &str)> = vec![
        ("POST", "/tunnel", "{not json".into(), 400, "JSON"),
        ("POST", "/tunnel", "[1,2]".into(), 400, "object"),
        (
            "POST",
            "/tunnel",
            r#"{"dest":["127.0.0.1","1"]}"#.into(),
            400,
            "\"name\"",
        ),
        (
            "POST",
            "/tunnel",
            r#"{"name":"","dest":["127.0.0.1","1"]}"#.into(),
            400,
            "\"name\"",
        ),
        (
            "POST",
            "/tunnel",
            r#"{"name":7,"dest":["127.0.0.1","1"]}"#.into(),
            400,
            "\"name\"",
        ),
        (
            "POST",
            "/tunnel",
            r#"{"name":"t","dest":["127.0.0.1","0"]}"#.into(),
            400,
            "\"dest\"",
        ),
        (
            "POST",
            "/tunnel",
            r#"{"name":"t","dest":["127.0.0.1",65536]}"#.into(),
            400,
            "\"dest\"",
        ),
        (
            "POST",
            "/tunnel",
            r#"{"name":"t","dest":["999.0.0.1","80"]}"#.into(),
            400,
            "\"dest\"",
        ),
        (
            "POST",
            "/tunnel",
            r#"{"name":"t","dest":"127.0.0.1:80"}"#.into(),
            400,
            "\"dest\"",
        ),
        (
            "POST",
            "/tunnel",
            format!(r#"{{"name":"t","dest":["127.0.0.1","{dead_port}"]}}"#),
            502,
            "cannot reach",
        ),
        (
            "POST",
            "/service",
            r#"{"name":"s","type":"local"}"#.into(),
            400,
            "\"addr\"",
        ),
        (
            "POST",
            "/service",
            r#"{"name":"s","type":"sideways","addr":["127.0.0.1","1"]}"#.into(),
            400,
            "\"type\"",
        ),
        (
            "POST",
            "/service",
            r#"{"name":"s","type":"local","key":5,"addr":["127.0.0.1","1"]}"#.into(),
            400,
            "\"key\"",
        ),
        (
            "POST",
            "/service",
            r#"{"name":"s","type":"local","timeout":"soon","addr":["127.0.0.1","1"]}"#.into(),
            400,
            "\"timeout\"",
        ),
        (
            "POST",
            "/service",
            format!(r#"{{"name":"s2","type":"local","addr":["127.0.0.1","{taken}"]}}"#),
            409,
            "cannot listen",
        ),
        (
            "POST",
            "/bind",
            r#"{"tunnel":"tunnel1","service":"nope","type":"local"}"#.into(),
            404,
            "nope",
        ),
        (
            "DELETE",
            "/tunnel",
            r#"{"name":"nope"}"#.into(),
            404,
            "nope",
        ),
        (
            "DELETE",
            "/service",
            r#"{"name":"nope","type":"remote"}"#.into(),
            404,
            "nope",
        ),
        (
            "DELETE",
            "/bind",
            r#"{"tunnel":"other","service":"service1","type":"local"}"#.into(),
            404,
            "not bound",
        ),
        ("GET", "/tunnel", String::new(), 405, "method"),
        ("PATCH", "/config", String::new(), 405, "method"),
        ("PUT", "/config", String::new(), 400, "not JSON"),
        ("GET", "/nowhere", String::new(), 404, "path"),
        ("POST", "/tunnel", big, 413, "over"),
    ];
    for (method, path, body, status, needle) in cases {
        let (got, reply) = a.request(method, path, &body);
        let short: String = body.chars().take(80).collect();
        assert_eq!(got, status, "{method} {path} {short} -> {reply}");
        let error = reply["error"].as_str().unwrap_or_default();
        assert!(
            error.contains(needle),
            "{method} {path} {short}: error {error:?} lacks {needle:?}"
        );
    }
    let after = a.config();
    assert_eq!(after["services"], before["services"]);
    assert_eq!(after["bind"], before["bind"]);
    assert_eq!(
        after["tunnels"].as_object().map(|t| t.len()),
        before["tunnels"].as_object().map(|t| t.len())
    );
    assert_eq!(roundtrip(local, b"still fine"), b"still fine");
}

/// A tunnel port that gets garbage or silence drops that connection and carries on.
#[test]
fn garbage_and_silence_on_the_tunnel_port_are_dropped() {
    let backend = Backend::echo();
    let (a, b) = (Node::start(), Node::start());
    let local = wire(&a, &b, backend.addr, None);

    let mut garbage = TcpStream::connect(b.tunnel).expect("connect");
    garbage
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("send");
    assert!(closed_within(&mut garbage, Duration::from_secs(2)));
    assert!(b.wait_log("bad handshake", Duration::from_secs(2)));

    // A version-1 peer gets a refusal it can read, and both ends can tell why.
    let mut old = TcpStream::connect(b.tunnel).expect("connect");
    let mut hello = b"MNET\x01\x05rogue".to_vec();
    hello.extend_from_slice(&(256u32 * 1024).to_be_bytes());
    hello.extend_from_slice(&(16u32 << 20).to_be_bytes());
    hello.extend_from_slice(&0u16.to_be_bytes());
    old.write_all(&hello).expect("hello");
    let mut answer = Vec::new();
    let _ = old.read_to_end(&mut answer);
    assert_eq!(&answer[..6], b"MNET\x01\x01", "a version-1 refusal");
    assert!(String::from_utf8_lossy(&answer).contains("version 4"));
    assert!(b.wait_log("version 1", Duration::from_secs(2)));
    // A version-2 peer gets a REFUSE in the layout it reads.
    let mut old = TcpStream::connect(b.tunnel).expect("connect");
    let mut hello = b"MNET\x02\x01".to_vec();
    hello.extend_from_slice(&[0, 10]);
    hello.extend_from_slice(&[0; 10]);
    old.write_all(&hello).expect("hello");
    let mut answer = Vec::new();
    let _ = old.read_to_end(&mut answer);
    assert_eq!(&answer[..6], b"MNET\x02\x05", "a version-2 REFUSE");
    assert!(String::from_utf8_lossy(&answer).contains("version 4"));
    assert!(b.wait_log("version 2", Duration::from_secs(2)));
    // So does a version-3 peer (whose OPEN has no client address).
    let mut old = TcpStream::connect(b.tunnel).expect("connect");
    let mut hello = b"MNET\x03\x01".to_vec();
    hello.extend_from_slice(&[0, 10]);
    hello.extend_from_slice(&[0; 10]);
    old.write_all(&hello).expect("hello");
    let mut answer = Vec::new();
    let _ = old.read_to_end(&mut answer);
    assert_eq!(&answer[..6], b"MNET\x03\x05", "a version-3 REFUSE");
    assert!(String::from_utf8_lossy(&answer).contains("version 4"));
    assert!(b.wait_log("version 3", Duration::from_secs(2)));

    // Valid handshake, then a frame over the size limit: the tunnel is closed with a log line.
    let mut rogue = raw_dial(b.tunnel, "rogue", None, None).expect("handshake");
    let mut huge = (10u32 << 20).to_be_bytes().to_vec();
    huge.extend_from_slice(&[4, 0, 0, 0, 1]);
    rogue.write_all(&huge).expect("frame");
    assert!(closed_within(&mut rogue, Duration::from_secs(2)));
    assert!(b.wait_log("over the limit", Duration::from_secs(2)));

    // Silence: dropped once the 2 s for the HELLO are over.
    let started = Instant::now();
    let mut silent = TcpStream::connect(b.tunnel).expect("connect");
    assert!(closed_within(&mut silent, Duration::from_secs(5)));
    assert!(started.elapsed() >= Duration::from_millis(1900));
    assert!(b.wait_log("no HELLO within 2000 ms", Duration::from_secs(2)));
    // A HELLO and then silence: dropped at the 5 s of the whole handshake.
    let started = Instant::now();
    let mut stalled = TcpStream::connect(b.tunnel).expect("connect");
    stalled.write_all(&hello_bytes("stalled")).expect("hello");
    assert!(closed_within(&mut stalled, Duration::from_secs(8)));
    assert!(started.elapsed() >= Duration::from_millis(4900));
    assert!(b.wait_log("no handshake within 5000 ms", Duration::from_secs(2)));

    // The real tunnel never noticed.
    assert_eq!(roundtrip(local, b"unharmed"), b"unharmed");
    assert_eq!(b.config()["tunnels"]["tunnel1"]["state"], "connected");
}

#[test]
fn a_bad_config_file_is_refused_with_a_clear_error() {
    let dir = std::env::temp_dir().join(format!("menet-badcfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("bad.toml");
    std::fs::write(&path, "[admin]\nport = 1\nflavour = \"x\"\n").expect("write");
    let (code, stderr) = Node::run_with_config(path.to_str().expect("path"));
    assert_ne!(code, Some(0));
    assert!(
        stderr.contains("flavour") && stderr.contains("bad.toml"),
        "{stderr}"
    );
    std::fs::remove_dir_all(&dir).ok();
}
