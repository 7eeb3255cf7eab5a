//! Crashes, restarts and partitions: real nodes killed, stopped and cut apart on loopback. What
//! the admin API configured must survive, and tunnels must heal without anyone calling the API.

mod common;

use std::thread;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// `GET /config` without what changes by itself (counters, connections, peer addresses, errors).
fn shape(mut config: Value) -> Value {
    if let Some(tunnels) = config["tunnels"].as_object_mut() {
        for t in tunnels.values_mut() {
            // The acceptor's identity pinned to a dialled tunnel survives restarts too.
            *t = serde_json::json!({"dest": t["dest"], "role": t["role"], "state": t["state"],
                                    "peer_identity": t["peer_identity"]});
        }
    }
    config["connections"] = Value::Null;
    config["limits"] = Value::Null;
    if let Some(local) = config["services"]["local"].as_object_mut() {
        for s in local.values_mut() {
            s["connections"] = Value::Null;
        }
    }
    config
}

fn connected(node: &Node, tunnel: &str) -> bool {
    node.config()["tunnels"][tunnel]["state"] == "connected"
}

/// kill -9 of the node behind the tunnel while 10 connections are open: the clients are closed at
/// once, the dialler shows `reconnecting` with its attempts, and once the node is started again
/// (restoring its services from its state file) the tunnel is back and traffic flows, with no
/// API call anywhere.
#[test]
fn kill_of_the_remote_node_heals_by_itself() {
    let dir = TempDir::new("kill-remote");
    let backend = Backend::echo();
    let a = Node::persistent(&dir, "a", None);
    let mut b = Node::persistent(&dir, "b", None);
    let local = wire(&a, &b, backend.addr, Some("k1"));
    let mut clients: Vec<_> = (0..10).map(|_| connect(local)).collect();
    for (i, c) in clients.iter_mut().enumerate() {
        echo_once(c, i as u64);
    }
    b.kill9();
    let killed = Instant::now();
    for c in &mut clients {
        assert!(closed_within(c, Duration::from_secs(3)), "client held open");
    }
    eprintln!("10 clients closed {:?} after kill -9", killed.elapsed());
    assert!(eventually(Duration::from_secs(3), || {
        let t = &a.config()["tunnels"]["tunnel1"];
        t["state"] == "reconnecting" && t["attempt"].as_u64() >= Some(2)
    }));
    // While the tunnel is down a new client is refused at once, not held.
    assert!(refused_within(local, Duration::from_secs(1)));

    b.restart();
    let restarted = Instant::now();
    let data = pattern(300_000, 7);
    let took = healed(local, &data, Duration::from_secs(10)).expect("tunnel healed");
    eprintln!("traffic flows again {took:?} after the remote node restarted");
    assert!(restarted.elapsed() < Duration::from_secs(10));
    assert!(connected(&a, "tunnel1"));
}

/// kill -9 of the dialling node: started again, it restores its state and re-dials by itself.
#[test]
fn kill_of_the_dialling_node_restores_and_redials() {
    let dir = TempDir::new("kill-dialer");
    let backend = Backend::echo();
    let mut a = Node::persistent(&dir, "a", None);
    let b = Node::persistent(&dir, "b", None);
    let local = wire_fixed(&a, &b, backend.addr, None);
    let before = shape(a.config());
    a.kill9();
    assert!(eventually(Duration::from_secs(3), || b.config()["tunnels"]
        .as_object()
        .is_some_and(|t| t.is_empty())));
    a.restart();
    let data = pattern(100_000, 8);
    let took = healed(local, &data, Duration::from_secs(10)).expect("tunnel re-dialled");
    eprintln!("dialling node: traffic flows {took:?} after its restart");
    assert_eq!(shape(a.config()), before);
}

/// SIGTERM (and SIGINT, as Ctrl-C sends): the node says goodbye (the peer notices at once, not
/// after the heartbeat timeout), exits 0 within 5 s, and started again shows the same
/// configuration and carries traffic.
#[test]
fn sigterm_says_goodbye_and_a_restart_is_identical() {
    let dir = TempDir::new("sigterm");
    let backend = Backend::echo();
    let mut a = Node::persistent(&dir, "a", None);
    let mut b = Node::persistent(&dir, "b", None);
    let local = wire_fixed(&a, &b, backend.addr, Some("k2"));
    let mut client = connect(local);
    echo_once(&mut client, 1);
    let before = shape(a.config());

    // The dialler leaves: the acceptor drops the tunnel at once.
    let (code, took) = a.terminate();
    assert_eq!(code, Some(0), "exit code after SIGTERM");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    eprintln!("dialling node exited {took:?} after SIGTERM");
    assert!(closed_within(&mut client, Duration::from_secs(1)));
    assert!(b.config()["tunnels"]
        .as_object()
        .is_some_and(|t| t.is_empty()));
    a.restart();
    assert!(healed(local, &pattern(50_000, 2), Duration::from_secs(10)).is_some());
    assert_eq!(shape(a.config()), before);

    // The acceptor leaves (Ctrl-C): the dialler starts re-dialling at once.
    let (code, took) = b.stop_with(libc::SIGINT);
    assert_eq!(code, Some(0));
    assert!(took < Duration::from_secs(5), "took {took:?}");
    // At once: well before the 15 s heartbeat timeout would have told it.
    assert!(eventually(Duration::from_secs(1), || a.config()["tunnels"]
        ["tunnel1"]["state"]
        == "reconnecting"));
    b.restart();
    let took = healed(local, &pattern(50_000, 3), Duration::from_secs(10)).expect("healed");
    eprintln!("traffic flows {took:?} after the accepting node restarted");
}

/// Two nodes with their own heartbeats, `a` dialling `b` through a relay, service1 carried to an
/// echo backend.
struct Partitioned {
    a: Node,
    b: Node,
    relay: Relay,
    local: std::net::SocketAddr,
    _backend: Backend,
    _dir: TempDir,
}

fn partitioned(a_heartbeat: (u64, u64), b_heartbeat: (u64, u64)) -> Partitioned {
    let dir = TempDir::new("partition");
    let backend = Backend::echo();
    let a = Node::persistent(&dir, "a", Some(a_heartbeat));
    let b = Node::persistent(&dir, "b", Some(b_heartbeat));
    let relay = Relay::start(b.tunnel);
    dial_addr(&a, relay.addr, "tunnel1");
    let local = carry(&a, &b, "tunnel1", "service1", None, backend.addr);
    Partitioned {
        a,
        b,
        relay,
        local,
        _backend: backend,
        _dir: dir,
    }
}

/// A silent partition (a relay that stops forwarding: no FIN, no RST) is detected within the
/// heartbeat timeout on both sides, and the tunnel heals once packets flow again.
#[test]
fn a_silent_partition_is_detected_and_healed() {
    let p = partitioned((250, 1000), (250, 1000));
    let (a, b, relay, local) = (&p.a, &p.b, &p.relay, p.local);
    let mut client = connect(local);
    echo_once(&mut client, 4);

    relay.freeze();
    let frozen = Instant::now();
    assert!(eventually(Duration::from_secs(3), || !connected(
        a, "tunnel1"
    )));
    let detected = frozen.elapsed();
    eprintln!("silent partition detected after {detected:?} (timeout 1 s)");
    assert!(detected >= Duration::from_millis(900), "{detected:?}");
    assert!(detected <= Duration::from_millis(2000), "{detected:?}");
    assert!(closed_within(&mut client, Duration::from_secs(1)));
    let last_error = a.config()["tunnels"]["tunnel1"]["last_error"].clone();
    assert!(
        last_error.as_str().is_some_and(|e| e.contains("silent")),
        "{last_error}"
    );
    assert!(eventually(Duration::from_secs(3), || b.config()["tunnels"]
        .as_object()
        .is_some_and(|t| t.is_empty())));

    thread::sleep(Duration::from_secs(1));
    relay.thaw();
    let took = healed(local, &pattern(100_000, 5), Duration::from_secs(15)).expect("healed");
    eprintln!("traffic flows {took:?} after the partition ended");
}

/// The tunnel's path goes silent for good while a new path works (a NAT that lost its mapping,
/// say), and the accepting side has not noticed yet (its timeout is long) when the dialler's
/// re-dial arrives: its stale tunnel is replaced, never in the way.
#[test]
fn a_stale_accepted_tunnel_never_blocks_the_redial() {
    let p = partitioned((250, 1000), (250, 30_000));
    let (a, b, relay, local) = (&p.a, &p.b, &p.relay, p.local);
    relay.strand();
    assert!(eventually(Duration::from_secs(3), || !connected(
        a, "tunnel1"
    )));
    assert!(
        connected(b, "tunnel1"),
        "b still believes in the old tunnel"
    );
    assert!(healed(local, &pattern(50_000, 6), Duration::from_secs(10)).is_some());
    assert!(b.wait_log(
        "tunnel1: replaced by a new connection",
        Duration::from_secs(2)
    ));
    let tunnels = b.config()["tunnels"].clone();
    assert_eq!(tunnels.as_object().map(|t| t.len()), Some(1), "{tunnels}");
    assert_eq!(tunnels["tunnel1"]["state"], "connected");
}

/// The tunnel cut a hundred times in a row: healed each time, and neither node's memory grows.
#[test]
fn a_hundred_cuts_heal_and_memory_stays_flat() {
    let backend = Backend::echo();
    let (a, b) = (Node::start(), Node::start());
    let relay = Relay::start(b.tunnel);
    dial_addr(&a, relay.addr, "tunnel1");
    let local = carry(&a, &b, "tunnel1", "service1", Some("k3"), backend.addr);
    let data = pattern(20_000, 6);
    let mut baseline = 0;
    let mut worst = Duration::ZERO;
    for cut in 0..100 {
        let mut held = connect(local);
        echo_once(&mut held, cut);
        relay.cut();
        assert!(
            closed_within(&mut held, Duration::from_secs(2)),
            "cut {cut}"
        );
        let took = healed(local, &data, Duration::from_secs(5))
            .unwrap_or_else(|| panic!("not healed after cut {cut}"));
        worst = worst.max(took);
        if cut == 9 {
            baseline = a.rss_kib() + b.rss_kib();
        }
    }
    let after = a.rss_kib() + b.rss_kib();
    eprintln!(
        "100 cuts: worst heal {worst:?}; RSS both nodes {baseline} KiB after 10, {after} KiB after 100"
    );
    assert!(
        after < baseline + 1024,
        "RSS grew from {baseline} KiB to {after} KiB"
    );
}

/// A state file that is corrupt, from another version, or already in use stops the node with an
/// error naming it, and is left exactly as it was.
#[test]
fn a_bad_or_busy_state_file_is_refused_and_left_alone() {
    let dir = TempDir::new("bad-state");
    let state = dir.path("menet.json");
    let config = dir.path("menet.toml");
    std::fs::write(
        &config,
        format!(
            "[admin]\nport = 0\n[tunnel]\nip = \"127.0.0.1\"\nport = 0\n[state]\npath = {:?}\n",
            state.display().to_string()
        ),
    )
    .expect("write config");
    let config = config.display().to_string();
    for (content, says) in [
        (&b"{\"version\": 1, \"tunnels\": {\"t\": "[..], "corrupt"),
        (&b"\x00\xff garbage"[..], "corrupt"),
        (&b"{\"version\": 7}"[..], "version 7"),
    ] {
        std::fs::write(&state, content).expect("write state");
        let (code, stderr) = Node::run_with_config(&config);
        assert_eq!(code, Some(1), "{stderr}");
        assert!(stderr.contains(says), "{stderr}");
        assert!(stderr.contains("menet.json"), "{stderr}");
        assert_eq!(std::fs::read(&state).expect("read state"), content);
    }

    std::fs::remove_file(&state).expect("remove");
    let a = Node::with_config(&dir, "a", &std::fs::read_to_string(&config).expect("read"));
    a.ok(
        "POST",
        "/service",
        r#"{"name":"s", "key":"sekrit", "type":"remote", "addr":["127.0.0.1", "9"]}"#,
    );
    let (code, stderr) = Node::run_with_config(&config);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("in use"), "{stderr}");
    // The change is in the journal beside the (not yet written) snapshot, owner-only like it.
    use std::os::unix::fs::PermissionsExt;
    let journal = dir.path("menet.json.journal");
    let mode = std::fs::metadata(&journal)
        .expect("journal")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "journal mode {mode:o}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_menet"))
        .args(["--dump-state", "--config", &config])
        .output()
        .expect("dump");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let saved: Value = serde_json::from_slice(&out.stdout).expect("the dump is JSON");
    assert_eq!(saved["services"]["remote"]["s"]["key"], "sekrit");
}

/// 300 admin changes from 10 concurrent clients while traffic flows: every one succeeds, the
/// final configuration is exactly what was asked (also after a kill -9 and restart, from the
/// state file), and the traffic is unharmed.
#[test]
fn concurrent_admin_changes_while_traffic_flows() {
    let dir = TempDir::new("admin-storm");
    let backend = Backend::echo();
    let mut a = Node::persistent(&dir, "a", None);
    let b = Node::persistent(&dir, "b", None);
    let local = wire_fixed(&a, &b, backend.addr, Some("k4"));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stop.clone();
    let traffic = thread::spawn(move || {
        let mut rounds = 0u64;
        while !flag.load(std::sync::atomic::Ordering::SeqCst) {
            let data = pattern(64 * 1024, rounds);
            assert_eq!(roundtrip(local, &data), data, "round {rounds}");
            rounds += 1;
        }
        rounds
    });

    let admin = a.admin;
    let clients: Vec<_> = (0..10)
        .map(|i| {
            thread::spawn(move || {
                let mut statuses = Vec::new();
                let mut call = |method: &str, path: &str, body: String| {
                    statuses.push((http(admin, method, path, &body).0, body));
                };
                let ports: Vec<u16> = (0..10).map(|_| free_port()).collect();
                for (j, port) in ports.iter().enumerate() {
                    call("POST", "/service", format!(
                        r#"{{"name":"s{i}-{j}", "type":"local", "addr":["127.0.0.1", {port}]}}"#
                    ));
                    call("POST", "/bind", format!(
                        r#"{{"tunnel":"tunnel1", "service":"s{i}-{j}", "type":"local"}}"#
                    ));
                }
                for j in 0..5 {
                    call("DELETE", "/service", format!(r#"{{"name":"s{i}-{j}", "type":"local"}}"#));
                }
                for (j, port) in ports.iter().enumerate().skip(5) {
                    call("POST", "/service", format!(
                        r#"{{"name":"s{i}-{j}", "key":"k{i}{j}", "timeout":60000, "type":"local", "addr":["127.0.0.1", {port}]}}"#
                    ));
                }
                (ports, statuses)
            })
        })
        .collect();
    let mut ports = Vec::new();
    for c in clients {
        let (p, statuses) = c.join().expect("admin client");
        assert_eq!(statuses.len(), 30);
        for (status, body) in statuses {
            assert_eq!(status, 200, "{body}");
        }
        ports.push(p);
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let rounds = traffic.join().expect("traffic unharmed");
    eprintln!("300 admin changes done while {rounds} echo rounds went through byte-exact");

    let check = |config: &Value| {
        let services = config["services"]["local"].as_object().expect("services");
        let binds = config["bind"]["local"].as_object().expect("binds");
        assert_eq!(services.len(), 1 + 10 * 5, "{config}");
        assert_eq!(binds.len(), 1 + 10 * 5, "{config}");
        for (i, ports) in ports.iter().enumerate() {
            for (j, port) in ports.iter().enumerate() {
                let name = format!("s{i}-{j}");
                if j < 5 {
                    assert!(!services.contains_key(&name), "{name} deleted");
                    continue;
                }
                let s = &services[&name];
                assert_eq!(s["addr"], serde_json::json!(["127.0.0.1", port]), "{name}");
                assert_eq!(s["key"], "***");
                assert_eq!(s["timeout"], 60000);
                assert_eq!(binds[&name], "tunnel1");
            }
        }
    };
    let before = a.config();
    check(&before);
    a.kill9();
    a.restart();
    assert!(healed(local, b"after the storm", Duration::from_secs(10)).is_some());
    let after = a.config();
    check(&after);
    assert_eq!(shape(after), shape(before));
}

/// `kill -9` while admin changes stream in, ten times at arbitrary instants: the state file is
/// never torn (the node always starts again) and every change answered 200 before the kill is
/// there after it.
#[test]
fn acknowledged_changes_survive_kill_at_any_instant() {
    let dir = TempDir::new("kill-anytime");
    let mut node = Node::persistent(&dir, "a", None);
    let mut acknowledged: Vec<String> = Vec::new();
    for round in 0..10u64 {
        let admin = node.admin;
        let writer = thread::spawn(move || {
            let mut done = Vec::new();
            for i in 0.. {
                let name = format!("r{round}-{i}");
                let body = format!(
                    r#"{{"name":"{name}", "key":"k", "type":"remote", "addr":["127.0.0.1", "{}"]}}"#,
                    1000 + i
                );
                match try_http(admin, "POST", "/service", &body) {
                    Ok((200, _)) => done.push(name),
                    _ => break,
                }
            }
            done
        });
        thread::sleep(Duration::from_millis(30 + round * 17));
        node.kill9();
        acknowledged.extend(writer.join().expect("writer"));
        node.restart();
        let config = node.config();
        let services = config["services"]["remote"].as_object().expect("services");
        for name in &acknowledged {
            assert!(services.contains_key(name), "round {round}: {name} lost");
        }
    }
    eprintln!(
        "{} acknowledged changes, all kept over 10 kills",
        acknowledged.len()
    );
}

/// A peer that completes the handshake and drops the tunnel at once, again and again, is not
/// hammered: a tunnel that closed before its peer said a word does not restart the back-off.
#[test]
fn a_peer_that_accepts_and_drops_is_not_hammered() {
    let peer = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = peer.local_addr().expect("addr").port();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let count = accepted.clone();
    thread::spawn(move || {
        for conn in peer.incoming() {
            let Ok(mut conn) = conn else { break };
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            // Completes the handshake, then drops the connection (a reset, as the node's first
            // ping is never read: that must not count as hearing the peer either).
            thread::spawn(move || raw_accept(&mut conn));
        }
    });
    let a = Node::start();
    a.ok(
        "POST",
        "/tunnel",
        &format!(r#"{{"name":"tunnel1", "dest":["127.0.0.1", "{port}"]}}"#),
    );
    thread::sleep(Duration::from_secs(3));
    let dials = accepted.load(std::sync::atomic::Ordering::SeqCst);
    let attempt = a.config()["tunnels"]["tunnel1"]["attempt"].clone();
    eprintln!("a peer that drops at once: {dials} dials in 3 s, now at attempt {attempt}");
    // 0.2 + 0.4 + 0.8 + 1.6 s of back-off (at least half of each): at most 7 dials, not 15.
    assert!((2..=7).contains(&dials), "{dials} dials in 3 s");
    assert!(attempt.as_u64() >= Some(3), "{attempt}");
}
