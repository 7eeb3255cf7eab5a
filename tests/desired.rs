//! `PUT /config` through real nodes: the document `GET /config` returns, edited, applied as the
//! desired state: only the difference changes, live connections of untouched services keep
//! flowing, a bad document changes nothing and names every error, `"***"` keeps keys, `dry_run`
//! changes nothing, a failing step undoes the rest, and a kill right after a PUT restores all of
//! it.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::{json, Value};

use common::*;

fn put(node: &Node, path: &str, doc: &Value) -> (u16, Value) {
    node.request("PUT", path, &doc.to_string())
}

/// An echo round trip on a connection kept open.
fn still_echoes(s: &mut TcpStream, seed: u64) {
    let data = pattern(4096, seed);
    s.write_all(&data).expect("write");
    let mut back = vec![0u8; data.len()];
    s.read_exact(&mut back).expect("read");
    assert_eq!(back, data, "the live connection still carries bytes");
}

fn local_service(port: u16) -> Value {
    json!({"addr": ["127.0.0.1", port]})
}

#[test]
fn a_document_changes_only_what_differs_and_live_connections_keep_flowing() {
    let (a, b) = (Node::start(), Node::start());
    let echo = Backend::echo();
    let web = wire(&a, &b, echo.addr, Some("k1"));
    let mut live = connect(web);
    still_echoes(&mut live, 1);

    // The document as it is: nothing to do (a key shown as "***" is kept).
    let doc = a.config();
    let (status, reply) = put(&a, "/config", &doc);
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["added"], json!([]), "{reply}");
    assert_eq!(reply["changed"], json!([]), "{reply}");
    assert_eq!(reply["removed"], json!([]), "{reply}");
    still_echoes(&mut live, 2);

    // One service added: applied, the live connection of the other untouched.
    let port = free_port();
    let mut doc = a.config();
    doc["services"]["local"]["extra"] = local_service(port);
    let (status, reply) = put(&a, "/config?dry_run=true", &doc);
    assert_eq!(
        (status, reply["dry_run"].clone()),
        (200, json!(true)),
        "{reply}"
    );
    assert_eq!(reply["added"], json!(["services.local.extra"]));
    assert!(
        a.config()["services"]["local"].get("extra").is_none(),
        "dry run changed nothing"
    );
    let (status, reply) = put(&a, "/config", &doc);
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["added"], json!(["services.local.extra"]), "{reply}");
    // It listens once the PUT has answered. (One CI run here saw a first connect fail, once in
    // many: the error is printed, and a moment's retry tells a slow kernel from a missing
    // listener.)
    if let Err(e) = TcpStream::connect(("127.0.0.1", port)) {
        eprintln!("first connect to the new service: {e}");
    }
    assert!(
        eventually(Duration::from_secs(2), || TcpStream::connect((
            "127.0.0.1",
            port
        ))
        .is_ok()),
        "the new service listens"
    );
    still_echoes(&mut live, 3);
    // The keyed service still works for new connections: its key was kept.
    let data = pattern(10_000, 4);
    assert_eq!(roundtrip(web, &data), data);

    // A document leaving it out removes it; the other's connection still flows.
    let mut doc = a.config();
    doc["services"]["local"]
        .as_object_mut()
        .expect("local services")
        .remove("extra");
    let (status, reply) = put(&a, "/config", &doc);
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["removed"], json!(["services.local.extra"]), "{reply}");
    let gone = SocketAddr::from(([127, 0, 0, 1], port));
    assert!(eventually(Duration::from_secs(2), || TcpStream::connect(
        gone
    )
    .is_err()));
    still_echoes(&mut live, 5);
}

#[test]
fn a_document_with_errors_names_each_and_changes_nothing() {
    let a = Node::start();
    let mut doc = a.config();
    doc["services"]["local"]["good"] = local_service(free_port());
    doc["services"]["local"]["bad"] = json!({"addr": ["127.0.0.1", "nope"]});
    doc["services"]["remote"]["worse"] = json!({"addr": ["127.0.0.1", 80], "balance": "random"});
    doc["bind"]["local"]["ghost"] = json!("t1");
    let (status, reply) = put(&a, "/config", &doc);
    assert_eq!(status, 400, "{reply}");
    let errors: Vec<String> = serde_json::from_value(reply["errors"].clone()).expect("errors");
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with("services.local.bad: field \"addr\"")),
        "{errors:?}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with("services.remote.worse: field \"balance\"")),
        "{errors:?}"
    );
    assert!(
        a.config()["services"]["local"].get("good").is_none(),
        "nothing applied"
    );
    // The bind to a service the document lacks is named once the objects parse.
    let mut doc = a.config();
    doc["bind"]["local"]["ghost"] = json!("t1");
    let (status, reply) = put(&a, "/config", &doc);
    assert_eq!(status, 400, "{reply}");
    assert!(
        reply["error"]
            .as_str()
            .unwrap_or("")
            .contains("bind.local.ghost"),
        "{reply}"
    );
}

#[test]
fn a_step_that_fails_undoes_the_others() {
    let a = Node::start();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let mut doc = a.config();
    doc["services"]["local"]["first"] = local_service(free_port());
    doc["services"]["remote"]["second"] = json!({"addr": ["127.0.0.1", 9]});
    doc["services"]["local"]["taken"] = local_service(taken.local_addr().expect("addr").port());
    let (status, reply) = put(&a, "/config", &doc);
    assert_eq!(status, 409, "{reply}");
    assert!(
        reply["error"]
            .as_str()
            .unwrap_or("")
            .contains("services.local.taken"),
        "{reply}"
    );
    let services = a.config()["services"].clone();
    assert_eq!(services, json!({"local": {}, "remote": {}}), "all undone");
}

#[test]
fn a_kill_right_after_a_put_restores_all_of_it() {
    let dir = TempDir::new("desired");
    let mut a = Node::persistent(&dir, "a", None);
    let mut doc = a.config();
    for i in 0..20 {
        doc["services"]["remote"][format!("s{i}")] = json!({"addr": ["127.0.0.1", 1000 + i]});
        doc["bind"]["remote"][format!("s{i}")] = json!("t1");
    }
    doc["tunnels"]["t1"] = json!({"dest": ["127.0.0.1", free_port()], "role": "dialer"});
    let (status, reply) = put(&a, "/config", &doc);
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["added"].as_array().map(Vec::len), Some(41), "{reply}");
    a.kill9();
    a.restart();
    let config = a.config();
    assert_eq!(
        config["services"]["remote"].as_object().map(|m| m.len()),
        Some(20)
    );
    assert_eq!(
        config["bind"]["remote"].as_object().map(|m| m.len()),
        Some(20)
    );
    assert_eq!(config["tunnels"]["t1"]["role"], "dialer");
    // And the journal holds it as one line: one transaction.
    let journal = std::fs::read_to_string(dir.path("a.json.journal")).unwrap_or_default();
    assert!(
        journal.lines().filter(|l| l.contains("batch")).count() <= 1,
        "{journal}"
    );
}

#[test]
fn the_path_api_puts_one_collection_and_keeps_the_rest() {
    let (a, b) = (Node::start(), Node::start());
    let echo = Backend::echo();
    let web = wire(&a, &b, echo.addr, None);
    let (_, services) = a.request("GET", "/services", "");
    let mut services = services;
    services["remote"]["api"] = json!({"addr": [["127.0.0.1", 8000], ["127.0.0.1", 8001]]});
    let (status, reply) = put(&a, "/services", &services);
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["added"], json!(["services.remote.api"]), "{reply}");
    // Tunnels and binds were not part of it: kept.
    assert_eq!(a.config()["bind"]["local"]["service1"], "tunnel1");
    assert_eq!(a.config()["tunnels"]["tunnel1"]["state"], "connected");
    let data = pattern(1000, 9);
    assert_eq!(roundtrip(web, &data), data);
    let (status, reply) = put(&a, "/binds", &json!({"local": {}, "remote": {}}));
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["removed"], json!(["bind.local.service1"]), "{reply}");
}

#[test]
fn check_reads_a_desired_document_offline_and_names_every_error() {
    let dir = TempDir::new("desired-check");
    let good = dir.path("good.json");
    let a = Node::start();
    let mut doc = a.config();
    doc["services"]["remote"]["db"] = json!({"addr": ["127.0.0.1", 5432], "protocol": "tcp"});
    doc["bind"]["remote"]["db"] = json!("t1");
    std::fs::write(&good, doc.to_string()).expect("write");
    let bad = dir.path("bad.json");
    doc["services"]["local"]["x"] = json!({"addr": ["127.0.0.1", 99999]});
    doc["bind"]["local"]["ghost"] = json!("t1");
    std::fs::write(&bad, doc.to_string()).expect("write");
    let run = |file: &std::path::Path| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_menet"))
            .args([
                "--config",
                concat!(env!("CARGO_MANIFEST_DIR"), "/config/menet.toml"),
            ])
            .arg("--check")
            .arg("--desired")
            .arg(file)
            .output()
            .expect("run");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, _) = run(&good);
    assert_eq!(code, Some(0));
    assert!(out.contains("1 services, 1 binds"), "{out}");
    let (code, _, err) = run(&bad);
    assert_eq!(code, Some(1));
    assert!(err.contains("services.local.x: field \"addr\""), "{err}");
}

#[test]
fn a_tunnel_moved_to_another_path_keeps_the_peers_binds() {
    let (a, b) = (Node::start(), Node::start());
    let echo = Backend::echo();
    let web = wire(&a, &b, echo.addr, None);
    let relay = Relay::start(b.tunnel);
    let mut doc = a.config();
    doc["tunnels"]["tunnel1"]["dest"] = json!(["127.0.0.1", relay.addr.port()]);
    let (status, reply) = put(&a, "/config", &doc);
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["changed"], json!(["tunnels.tunnel1"]), "{reply}");
    // The new path comes up and the peer still carries the service for the name: its bind
    // was not dropped as it would be for a deleted tunnel.
    let data = pattern(50_000, 3);
    assert!(
        healed(web, &data, Duration::from_secs(10)).is_some(),
        "traffic flows on the new path"
    );
    assert_eq!(b.config()["bind"]["remote"]["service1"], "tunnel1");
    assert_eq!(
        a.config()["tunnels"]["tunnel1"]["dest"],
        json!(["127.0.0.1", relay.addr.port()])
    );
}
