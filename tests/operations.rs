//! Operating a node: `/metrics` after real traffic, `/healthz` and `/readyz` around a restore, the
//! path API against the seed's routes, the OpenAPI document (validated, and every documented
//! route and status called for real), `--check`, `--version`, and systemd readiness.

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// A GET whose body is text (the metrics), with optional extra header lines.
fn get_text(addr: SocketAddr, path: &str, headers: &str) -> (u16, String) {
    let (status, _, body) = http_text(addr, "GET", path, headers, "");
    (status, body)
}

/// The value of the series `name{labels}` (labels as written, in order), if present.
fn series(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

fn metrics(node: &Node) -> String {
    let (status, text) = get_text(node.admin, "/metrics", "");
    assert_eq!(status, 200, "{text}");
    text
}

#[test]
fn metrics_count_real_traffic_and_survive_a_reconnect() {
    let dir = TempDir::new("metrics");
    let mut b = Node::persistent(&dir, "b", Some((100, 600)));
    let a = Node::persistent(&dir, "a", Some((100, 600)));
    let echo = Backend::echo();
    let local = wire(&a, &b, echo.addr, None);
    let data = pattern(300_000, 7);
    assert_eq!(roundtrip(local, &data), data);
    let n = data.len() as f64;
    let t = r#"{tunnel="tunnel1"}"#;
    let (svc_local, svc_remote) = (
        r#"{service="service1",side="local"}"#,
        r#"{service="service1",side="remote"}"#,
    );
    // Bytes counted equal bytes sent, on both nodes, per tunnel and per service.
    assert!(eventually(Duration::from_secs(5), || {
        let (ma, mb) = (metrics(&a), metrics(&b));
        series(&ma, &format!("menet_tunnel_sent_bytes_total{t}")) == Some(n)
            && series(&ma, &format!("menet_tunnel_received_bytes_total{t}")) == Some(n)
            && series(&mb, &format!("menet_tunnel_received_bytes_total{t}")) == Some(n)
            && series(&mb, &format!("menet_tunnel_sent_bytes_total{t}")) == Some(n)
            && series(&ma, &format!("menet_service_sent_bytes_total{svc_local}")) == Some(n)
            && series(
                &ma,
                &format!("menet_service_received_bytes_total{svc_local}"),
            ) == Some(n)
            && series(
                &mb,
                &format!("menet_service_received_bytes_total{svc_remote}"),
            ) == Some(n)
            && series(&mb, &format!("menet_service_sent_bytes_total{svc_remote}")) == Some(n)
            && series(&ma, &format!("menet_service_connections_active{svc_local}")) == Some(0.0)
    }));
    let ma = metrics(&a);
    let mb = metrics(&b);
    assert_eq!(
        series(&ma, &format!("menet_tunnel_connected{t}")),
        Some(1.0)
    );
    assert_eq!(
        series(&ma, &format!("menet_tunnel_streams_opened_total{t}")),
        Some(1.0)
    );
    assert_eq!(
        series(
            &ma,
            &format!("menet_service_connections_accepted_total{svc_local}")
        ),
        Some(1.0)
    );
    assert_eq!(
        series(
            &mb,
            &format!("menet_service_connections_accepted_total{svc_remote}")
        ),
        Some(1.0)
    );
    assert!(series(&ma, &format!("menet_tunnel_heartbeat_rtt_seconds{t}")).is_some());
    assert!(ma.contains("menet_build_info{version=\""), "{ma}");
    assert_eq!(
        series(
            &ma,
            r#"menet_admin_requests_total{route="/service",method="POST",status="200"}"#
        ),
        Some(1.0)
    );
    // Two services, a bind each, a tunnel: every change was written to the state file.
    assert!(series(&ma, "menet_state_writes_total").unwrap_or(0.0) >= 3.0);
    assert_eq!(series(&ma, "menet_state_write_failures_total"), Some(0.0));

    // A live connection counts as active while it lives.
    let mut held = connect(local);
    held.write_all(b"x").expect("write");
    let mut one = [0u8; 1];
    held.read_exact(&mut one).expect("echo");
    assert_eq!(
        series(
            &metrics(&a),
            &format!("menet_service_connections_active{svc_local}")
        ),
        Some(1.0)
    );
    drop(held);
    // The first small reads started rounds of busy polling (50 µs by default) on the data
    // thread: every kind of read pays until the thread learns otherwise.
    assert!(eventually(Duration::from_secs(5), || {
        let m = metrics(&a);
        series(&m, "menet_busy_poll_rounds_total").unwrap_or(0.0) >= 1.0
            && series(&m, "menet_busy_poll_seconds_total").unwrap_or(0.0) > 0.0
    }));

    // The peer goes away and comes back: the counters belong to the name, not the connection.
    b.kill9();
    assert!(eventually(Duration::from_secs(5), || {
        series(&metrics(&a), &format!("menet_tunnel_connected{t}")) == Some(0.0)
    }));
    b.restart();
    assert!(eventually(Duration::from_secs(10), || {
        let m = metrics(&a);
        series(&m, &format!("menet_tunnel_connected{t}")) == Some(1.0)
            && series(&m, &format!("menet_tunnel_redials_total{t}")).unwrap_or(0.0) >= 1.0
    }));
    assert!(
        eventually(Duration::from_secs(5), || try_roundtrip(local, b"again")
            .is_ok()),
        "traffic after the reconnect"
    );
    assert!(eventually(Duration::from_secs(5), || {
        // At least: an attempt that failed while the tunnel came back may have sent too.
        series(&metrics(&a), &format!("menet_tunnel_sent_bytes_total{t}")).unwrap_or(0.0) >= n + 5.0
    }));

    // A refusal is counted with its reason.
    a.ok(
        "POST",
        "/service",
        &format!(
            r#"{{"name":"lonely", "type": "local", "addr":["127.0.0.1", "{}"]}}"#,
            free_port()
        ),
    );
    let lonely = a.config()["services"]["local"]["lonely"]["listening"]
        .as_str()
        .expect("listening")
        .parse::<SocketAddr>()
        .expect("addr");
    assert!(refused_within(lonely, Duration::from_secs(5)));
    assert_eq!(
        series(
            &metrics(&a),
            r#"menet_service_connections_refused_total{service="lonely",side="local",reason="not_bound"}"#
        ),
        Some(1.0)
    );
    // A deleted service's series go with it.
    a.ok("DELETE", "/service", r#"{"name":"lonely", "type":"local"}"#);
    assert!(!metrics(&a).contains("service=\"lonely\""));
}

#[test]
fn health_and_readiness_follow_the_restore() {
    let dir = TempDir::new("ready");
    let mut node = Node::persistent(&dir, "n", None);
    let (status, body) = get_text(node.admin, "/healthz", "");
    assert_eq!((status, body.as_str()), (200, r#"{"status":"ok"}"#));
    assert_eq!(node.request("GET", "/readyz", "").0, 200);
    let port = free_port();
    node.ok(
        "POST",
        "/service",
        &format!(r#"{{"name":"web", "type": "local", "addr":["127.0.0.1", "{port}"]}}"#),
    );
    node.terminate();
    // Someone else holds the port when the node comes back: restored, but not ready.
    let squatter = TcpListener::bind(("127.0.0.1", port)).expect("squat");
    node.restart();
    assert_eq!(node.request("GET", "/healthz", "").0, 200);
    let (status, reply) = node.request("GET", "/readyz", "");
    assert_eq!(status, 503, "{reply}");
    assert_eq!(reply["status"], "not ready");
    let reasons = reply["reasons"].to_string();
    assert!(reasons.contains("local service web"), "{reasons}");
    assert!(reasons.contains(&port.to_string()), "{reasons}");
    // The port is freed: the listener's retry binds it and the node becomes ready.
    drop(squatter);
    assert!(eventually(Duration::from_secs(15), || node
        .request("GET", "/readyz", "")
        .0
        == 200));
}

#[test]
fn the_probes_and_the_dashboard_need_no_token_and_everything_else_does() {
    let dir = TempDir::new("probes");
    let node = Node::with_config(&dir, "n", "[admin]\ntoken = \"s3cret\"\n");
    for path in ["/healthz", "/readyz", "/ui/", "/ui/app.js", "/ui/style.css"] {
        assert_eq!(get_text(node.admin, path, "").0, 200, "{path}");
    }
    let (status, _) = get_text(node.admin, "/", "");
    assert_eq!(status, 302);
    for path in [
        "/metrics",
        "/config",
        "/tunnels",
        "/services",
        "/binds",
        "/openapi.json",
    ] {
        assert_eq!(get_text(node.admin, path, "").0, 401, "{path}");
        assert_eq!(
            get_text(node.admin, path, "Authorization: Bearer s3cret\r\n").0,
            200,
            "{path}"
        );
    }
    // The probes still refuse a rebinding Host.
    let (status, _, _) = http_with(node.admin, "GET", "/healthz", "Host: evil.example\r\n", "");
    assert_eq!(status, 403);
    let (status, head, _) = http_with(node.admin, "GET", "/ui/", "", "");
    assert_eq!(status, 200);
    assert!(
        head.to_ascii_lowercase()
            .contains("content-security-policy: default-src 'self'"),
        "{head}"
    );
}

#[test]
fn the_path_api_is_the_seed_api_addressed_by_path() {
    let dir = TempDir::new("paths");
    let mut a = Node::persistent(&dir, "a", None);
    let b = Node::persistent(&dir, "b", None);
    let echo = Backend::echo();
    let port = free_port();
    let dest = format!(r#"{{"dest":["127.0.0.1", {}]}}"#, b.tunnel.port());
    a.ok("PUT", "/tunnels/t1", &dest);
    a.ok(
        "PUT",
        "/services/local/web",
        &format!(r#"{{"addr":["127.0.0.1", {port}], "key":"k", "cipher":"aes-256-gcm"}}"#),
    );
    b.ok(
        "PUT",
        "/services/remote/web",
        &format!(
            r#"{{"addr":["127.0.0.1", {}], "key":"k", "cipher":"aes-256-gcm"}}"#,
            echo.addr.port()
        ),
    );
    a.ok("PUT", "/binds/local/web", r#"{"tunnel":"t1"}"#);
    b.ok("PUT", "/binds/remote/web", r#"{"tunnel":"t1"}"#);
    let data = pattern(100_000, 3);
    assert_eq!(
        roundtrip(SocketAddr::from(([127, 0, 0, 1], port)), &data),
        data
    );

    // Each GET is exactly its part of GET /config (once the echo's connection has closed: the
    // service's live connection count is part of it).
    assert!(eventually(Duration::from_secs(5), || {
        a.config()["services"]["local"]["web"]["connections"] == 0
    }));
    let config = a.config();
    let part = |path: &str| {
        let (status, v) = a.request("GET", path, "");
        assert_eq!(status, 200, "{path}: {v}");
        v
    };
    assert_eq!(part("/services"), config["services"]);
    assert_eq!(
        part("/services/local/web"),
        config["services"]["local"]["web"]
    );
    assert_eq!(part("/binds"), config["bind"]);
    assert_eq!(part("/binds/local/web"), json!("t1"));
    assert_eq!(
        part("/tunnels")["t1"]["dest"],
        config["tunnels"]["t1"]["dest"]
    );
    assert_eq!(part("/tunnels/t1")["state"], "connected");
    assert_eq!(
        b.request("GET", "/services/remote/web", "").1,
        b.config()["services"]["remote"]["web"]
    );

    // Filtered views of GET /config: one tunnel, one service, no connections.
    let (status, only) = a.request("GET", "/config?service=web&connections=false", "");
    assert_eq!(status, 200);
    assert_eq!(
        only["services"]["local"]["web"],
        config["services"]["local"]["web"]
    );
    assert!(only.get("connections").is_none());
    assert_eq!(only["tunnels"].as_object().map(|t| t.len()), Some(1));
    let (_, by_tunnel) = a.request("GET", "/config?tunnel=nope", "");
    assert_eq!(by_tunnel["tunnels"], json!({}));
    assert_eq!(by_tunnel["services"]["local"], json!({}));
    let (status, reply) = a.request("GET", "/config?tunnels=t1", "");
    assert_eq!(status, 400);
    assert!(
        reply["error"].as_str().unwrap_or("").contains("tunnels"),
        "{reply}"
    );

    // The same validation and errors as the seed's routes.
    let bad = r#"{"name":"x", "type":"local", "addr":["127.0.0.1", 70000]}"#;
    let seed = a.request("POST", "/service", bad);
    let path = a.request(
        "PUT",
        "/services/local/x",
        r#"{"addr":["127.0.0.1", 70000]}"#,
    );
    assert_eq!(seed.0, 400);
    assert_eq!(path, seed);
    assert_eq!(
        a.request(
            "PUT",
            "/services/local/x",
            r#"{"Key":"k", "addr":["127.0.0.1", 1]}"#
        )
        .1["error"]
            .as_str()
            .map(|e| e.contains("unknown field \"Key\"")),
        Some(true)
    );
    let (status, reply) = a.request("PUT", "/services/local/web2", r#"{"name":"other"}"#);
    assert_eq!(status, 400);
    assert!(reply["error"]
        .as_str()
        .unwrap_or("")
        .contains("differs from the path"));
    assert_eq!(a.request("GET", "/services/local/nope", "").0, 404);
    assert_eq!(a.request("GET", "/services/sideways/web", "").0, 404);
    assert_eq!(a.request("GET", "/tunnels/nope", "").0, 404);
    assert_eq!(a.request("DELETE", "/services/remote/web", "").0, 404);
    assert_eq!(a.request("PATCH", "/services/local/web", "").0, 405);

    // Persisted like the seed's changes: a restart brings back what the paths created.
    a.terminate();
    a.restart();
    assert_eq!(a.request("GET", "/binds/local/web", "").1, json!("t1"));
    assert!(eventually(Duration::from_secs(10), || {
        a.request("GET", "/tunnels/t1", "").1["state"] == "connected"
    }));
    assert_eq!(
        roundtrip(SocketAddr::from(([127, 0, 0, 1], port)), &data),
        data
    );

    // DELETE by path; a bind's DELETE needs no body.
    a.ok("DELETE", "/binds/local/web", "");
    assert_eq!(a.request("GET", "/binds/local/web", "").0, 404);
    a.ok("DELETE", "/services/local/web", "");
    assert!(a.config()["services"]["local"].get("web").is_none());
    a.ok("DELETE", "/tunnels/t1", "");
    assert!(a.config()["tunnels"].get("t1").is_none());
    assert_eq!(a.request("DELETE", "/tunnels/t1", "").0, 404);
}

/// Validates the document with `openapi-spec-validator` (Python), which `.ci/run` installs.
fn validate_openapi(doc: &Value, dir: &TempDir) {
    let path = dir.path("openapi.json");
    std::fs::write(&path, doc.to_string()).expect("write document");
    let out = Command::new("python3")
        .args([
            "-c",
            "import json, sys\nfrom openapi_spec_validator import validate\n\
             validate(json.load(open(sys.argv[1])))\nprint('valid')",
        ])
        .arg(&path)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "the OpenAPI document is invalid (or openapi-spec-validator is missing: \
         pip install openapi-spec-validator): {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Calls `method path` so that it answers `status`, from a node set up for it; the status it got.
fn call_for(
    node: &Node,
    secured: &Node,
    peerless: SocketAddr,
    method: &str,
    path: &str,
    status: u16,
) -> u16 {
    let concrete = path
        .replace("{name}", "x")
        .replace("{side}", "local")
        .replace("{service}", "x");
    let taken = node.config()["services"]["local"]["taken"]["addr"][1]
        .as_u64()
        .expect("taken port");
    if status == 401 {
        return secured.request(method, &concrete, "").0;
    }
    if status == 403 {
        return http_with(
            node.admin,
            method,
            &concrete,
            "Origin: http://evil.example\r\n",
            "",
        )
        .0;
    }
    let tunnel_dest = format!(r#""dest":["127.0.0.1", {}]"#, peerless.port());
    let body = match (method, path, status) {
        ("GET", "/config", 400) => return node.request("GET", "/config?bogus=1", "").0,
        (_, _, 400) => r#"{"name": 7}"#.to_owned(),
        ("PUT", "/services/{side}/{name}", 404) => {
            return node.request(method, "/services/up/x", "{}").0
        }
        (
            "GET" | "DELETE",
            "/services/{side}/{name}" | "/tunnels/{name}" | "/binds/{side}/{service}",
            404,
        ) => String::new(),
        ("PUT", "/binds/{side}/{service}", 404) => r#"{"tunnel":"t"}"#.to_owned(),
        ("POST", "/bind", 404) => r#"{"tunnel":"t","service":"none","type":"local"}"#.to_owned(),
        ("DELETE", "/bind", 404) => r#"{"tunnel":"t","service":"none","type":"local"}"#.to_owned(),
        ("DELETE", "/tunnel", 404) => r#"{"name":"none"}"#.to_owned(),
        ("DELETE", "/service", 404) => r#"{"name":"none","type":"local"}"#.to_owned(),
        ("POST", "/tunnel", 409) => format!(r#"{{"name":"declared",{tunnel_dest}}}"#),
        ("PUT", "/tunnels/{name}", 409) => {
            return node
                .request(method, "/tunnels/declared", &format!("{{{tunnel_dest}}}"))
                .0
        }
        ("POST", "/tunnel", 502) => format!(r#"{{"name":"x",{tunnel_dest}}}"#),
        ("PUT", "/tunnels/{name}", 502) => format!("{{{tunnel_dest}}}"),
        ("POST", "/service", 409) => {
            format!(r#"{{"name":"x2","type":"local","addr":["127.0.0.1",{taken}]}}"#)
        }
        ("PUT", "/services/{side}/{name}", 409) => {
            format!(r#"{{"addr":["127.0.0.1",{taken}]}}"#)
        }
        ("GET", "/readyz", 503) => return node.request("GET", "/readyz", "").0,
        ("PUT", "/config", 409) => {
            let mut doc = node.config();
            doc["services"]["local"]["x3"] = json!({"addr": ["127.0.0.1", taken]});
            return node.request("PUT", "/config", &doc.to_string()).0;
        }
        ("PUT", "/services", 409) => {
            let mut services = node.request("GET", "/services", "").1;
            services["local"]["x3"] = json!({"addr": ["127.0.0.1", taken]});
            return node.request("PUT", "/services", &services.to_string()).0;
        }
        ("GET", "/events", 200) => return stream_status(node.admin, "/events"),
        (_, _, 200) => return ok_call(node, method, path),
        _ => panic!("no recipe for {method} {path} -> {status}"),
    };
    node.request(method, &concrete, &body).0
}

/// The status of a response that streams without end (server-sent events): its first line.
fn stream_status(admin: SocketAddr, path: &str) -> u16 {
    let mut s = std::net::TcpStream::connect(admin).expect("connect");
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .expect("timeout");
    write!(s, "GET {path} HTTP/1.1\r\nHost: {admin}\r\n\r\n").expect("request");
    let mut head = [0u8; 12];
    s.read_exact(&mut head).expect("status line");
    String::from_utf8_lossy(&head[9..12]).parse().unwrap_or(0)
}

/// A call that succeeds: creating what it needs first.
fn ok_call(node: &Node, method: &str, path: &str) -> u16 {
    let free = free_port();
    let body = match (method, path) {
        ("GET", _) => {
            return node
                .request(
                    "GET",
                    path.replace("{name}", "ok")
                        .replace("{side}", "remote")
                        .replace("{service}", "ok")
                        .as_str(),
                    "",
                )
                .0
        }
        ("POST", "/tunnel") => r#"{"name":"ok","role":"acceptor"}"#.to_owned(),
        ("PUT", "/tunnels/{name}") => r#"{"role":"acceptor"}"#.to_owned(),
        ("DELETE", "/tunnel") => {
            node.ok("POST", "/tunnel", r#"{"name":"gone","role":"acceptor"}"#);
            r#"{"name":"gone"}"#.to_owned()
        }
        ("DELETE", "/tunnels/{name}") => {
            node.ok("POST", "/tunnel", r#"{"name":"gone","role":"acceptor"}"#);
            return node.request("DELETE", "/tunnels/gone", "").0;
        }
        ("POST", "/service") => {
            format!(r#"{{"name":"ok","type":"remote","addr":["127.0.0.1",{free}]}}"#)
        }
        ("PUT", "/services/{side}/{name}") => {
            return node
                .request(
                    "PUT",
                    "/services/remote/ok",
                    &format!(r#"{{"addr":["127.0.0.1",{free}]}}"#),
                )
                .0
        }
        ("DELETE", "/service") | ("DELETE", "/services/{side}/{name}") => {
            node.ok(
                "POST",
                "/service",
                &format!(r#"{{"name":"gone","type":"remote","addr":["127.0.0.1",{free}]}}"#),
            );
            if method == "DELETE" && path == "/service" {
                r#"{"name":"gone","type":"remote"}"#.to_owned()
            } else {
                return node.request("DELETE", "/services/remote/gone", "").0;
            }
        }
        ("POST", "/bind") => r#"{"tunnel":"ok","service":"ok","type":"remote"}"#.to_owned(),
        ("PUT", "/binds/{side}/{service}") => {
            return node
                .request("PUT", "/binds/remote/ok", r#"{"tunnel":"ok"}"#)
                .0
        }
        ("DELETE", "/bind") | ("DELETE", "/binds/{side}/{service}") => {
            node.ok(
                "POST",
                "/service",
                &format!(r#"{{"name":"tmp","type":"remote","addr":["127.0.0.1",{free}]}}"#),
            );
            node.ok(
                "POST",
                "/bind",
                r#"{"tunnel":"ok","service":"tmp","type":"remote"}"#,
            );
            if path == "/bind" {
                r#"{"tunnel":"ok","service":"tmp","type":"remote"}"#.to_owned()
            } else {
                return node.request("DELETE", "/binds/remote/tmp", "").0;
            }
        }
        // The document as it is, as a dry run: answered, nothing changed.
        ("PUT", "/config") => {
            let doc = node.config();
            return node
                .request("PUT", "/config?dry_run=true", &doc.to_string())
                .0;
        }
        ("PUT", "/tunnels" | "/services" | "/binds") => {
            let part = node.request("GET", path, "").1;
            return node
                .request("PUT", &format!("{path}?dry_run=true"), &part.to_string())
                .0;
        }
        _ => panic!("no 200 recipe for {method} {path}"),
    };
    node.request(method, path, &body).0
}

#[test]
fn the_openapi_document_is_valid_and_every_route_and_status_in_it_is_real() {
    let dir = TempDir::new("openapi");
    let port = free_port();
    // A local service on a port someone else holds: restored but not listening, so /readyz is
    // 503; its own port, `taken`, answers 409 to anyone else.
    let node = Node::with_config(&dir, "n", "");
    let secured = Node::with_config(&dir, "s", "[admin]\ntoken = \"t\"\n");
    let (status, doc) = node.request("GET", "/openapi.json", "");
    assert_eq!(status, 200);
    validate_openapi(&doc, &dir);
    assert!(doc["openapi"].as_str().unwrap_or("").starts_with('3'));

    // The documented routes are the routes the node has: every seed route and every path route.
    let paths = doc["paths"].as_object().expect("paths");
    let documented: BTreeSet<String> = paths.keys().cloned().collect();
    for p in [
        "/tunnel",
        "/service",
        "/bind",
        "/config",
        "/tunnels",
        "/tunnels/{name}",
        "/services",
        "/services/{side}/{name}",
        "/binds",
        "/binds/{side}/{service}",
        "/metrics",
        "/healthz",
        "/readyz",
        "/openapi.json",
    ] {
        assert!(documented.contains(p), "{p} is not documented");
    }

    // Set-ups the recipes need: a declared acceptor name (409 for a dialer of it), a taken port.
    node.ok(
        "POST",
        "/tunnel",
        r#"{"name":"declared","role":"acceptor"}"#,
    );
    node.ok(
        "POST",
        "/service",
        &format!(r#"{{"name":"taken","type":"local","addr":["127.0.0.1",{port}]}}"#),
    );
    node.ok("POST", "/tunnel", r#"{"name":"ok","role":"acceptor"}"#);
    node.ok(
        "POST",
        "/service",
        &format!(
            r#"{{"name":"ok","type":"remote","addr":["127.0.0.1",{}]}}"#,
            free_port()
        ),
    );
    node.ok(
        "POST",
        "/bind",
        r#"{"tunnel":"ok","service":"ok","type":"remote"}"#,
    );
    let peerless = Blackhole::new();
    let mut calls = 0;
    for (path, item) in paths {
        for (method, op) in item.as_object().expect("path item") {
            let method = method.to_ascii_uppercase();
            for status in op["responses"].as_object().expect("responses").keys() {
                let status: u16 = status.parse().expect("numeric status");
                if status == 503 {
                    continue; // below, on a node that cannot bind its service
                }
                let got = call_for(&node, &secured, peerless.addr, &method, path, status);
                assert_eq!(
                    got, status,
                    "{method} {path} documented {status}, answered {got}"
                );
                calls += 1;
            }
        }
    }
    assert!(calls > 60, "{calls} calls");
    // And the one 503: /readyz on a node whose restored service cannot listen.
    let squatter = TcpListener::bind("127.0.0.1:0").expect("squat");
    let held = squatter.local_addr().expect("addr").port();
    let state = dir.path("r.json");
    std::fs::write(
        &state,
        json!({"version": 2, "services": {"local": {"web": {"addr": format!("127.0.0.1:{held}")}}}})
            .to_string(),
    )
    .expect("state");
    let unready = Node::with_config(
        &dir,
        "r",
        &format!("[state]\npath = {:?}\n", state.display().to_string()),
    );
    assert_eq!(unready.request("GET", "/readyz", "").0, 503);
    assert!(paths["/readyz"]["get"]["responses"].get("503").is_some());
}

#[test]
fn check_validates_the_config_and_the_state_file() {
    let dir = TempDir::new("check");
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_menet"))
            .args(args)
            .output()
            .expect("menet");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let good = dir.path("good.toml");
    let state = dir.path("state.json");
    std::fs::write(
        &good,
        format!("[state]\npath = {:?}\n", state.display().to_string()),
    )
    .expect("config");
    let (code, out, err) = run(&["--check", "--config", good.to_str().expect("path")]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("none yet"), "{out}");
    // A real state file, made by a node.
    {
        let node = Node::with_config(
            &dir,
            "maker",
            &format!("[state]\npath = {:?}\n", state.display().to_string()),
        );
        node.ok(
            "POST",
            "/service",
            r#"{"name":"s","type":"remote","addr":["127.0.0.1",80]}"#,
        );
    }
    let (code, out, _) = run(&["--check", "--config", good.to_str().expect("path")]);
    assert_eq!(code, Some(0));
    assert!(out.contains("1 remote services"), "{out}");
    // Nothing was bound: --check of a running node's config works beside it.
    std::fs::write(&state, "{ not json").expect("corrupt");
    let (code, _, err) = run(&["--check", "--config", good.to_str().expect("path")]);
    assert_eq!(code, Some(1));
    assert!(err.contains("corrupt"), "{err}");
    let bad = dir.path("bad.toml");
    std::fs::write(&bad, "[tunnel]\nstream_window = \"big\"\n").expect("config");
    let (code, _, err) = run(&["--check", "--config", bad.to_str().expect("path")]);
    assert_eq!(code, Some(1));
    assert!(err.contains("bad.toml"), "{err}");
    let (code, out, _) = run(&["--version"]);
    assert_eq!(code, Some(0));
    assert!(out.contains(env!("CARGO_PKG_VERSION")), "{out}");
    assert!(
        out.contains(&format!("protocol {}", menet_actors::handshake::VERSION)),
        "{out}"
    );
    let (code, out, _) = run(&["--help"]);
    assert_eq!(code, Some(0));
    for flag in [
        "--config",
        "--admin",
        "--tunnel",
        "--state",
        "--check",
        "--version",
        "MENET_TUNNEL_SECRET",
        "MENET_ADMIN_TOKEN",
        "RUST_LOG",
        "NOTIFY_SOCKET",
    ] {
        assert!(out.contains(flag), "--help lacks {flag}: {out}");
    }
}

#[test]
fn systemd_is_told_ready_once_the_listeners_are_bound() {
    let dir = TempDir::new("notify");
    let socket = dir.path("notify.sock");
    let listener = UnixDatagram::bind(&socket).expect("notify socket");
    listener
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let state = dir.path("s.json");
    let port = free_port();
    std::fs::write(
        &state,
        json!({"version": 2, "services": {"local": {"web": {"addr": format!("127.0.0.1:{port}")}}}})
            .to_string(),
    )
    .expect("state");
    let mut node = Node::build()
        .config(
            &dir,
            "n",
            &format!("[state]\npath = {:?}\n", state.display().to_string()),
        )
        .env("NOTIFY_SOCKET", socket.to_str().expect("path"))
        .start();
    let mut buf = [0u8; 256];
    let n = listener.recv(&mut buf).expect("READY=1 within 10 s");
    assert_eq!(std::str::from_utf8(&buf[..n]).map(str::trim), Ok("READY=1"));
    // Ready means ready: the restored service listens already.
    if let Err(e) = TcpStream::connect(("127.0.0.1", port)) {
        panic!("the restored service on port {port} after READY=1: {e}");
    }
    node.terminate();
    let n = listener.recv(&mut buf).expect("STOPPING=1");
    assert_eq!(
        std::str::from_utf8(&buf[..n]).map(str::trim),
        Ok("STOPPING=1")
    );
}

#[test]
fn the_two_node_example_fetches_a_page_through_the_tunnel() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/two-nodes.sh");
    let mut child = Command::new("bash")
        .arg(script)
        .env("MENET", env!("CARGO_BIN_EXE_menet"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("bash");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while child.try_wait().expect("wait").is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("examples/two-nodes.sh did not finish within 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("fetched through the tunnel: <h1>hello through the menet tunnel</h1>"),
        "{stdout}"
    );
}
