//! Supervision, proved with the test-only fault hook (`POST /fault`, cargo feature
//! `fault-injection`): an actor that panics is noticed, logged and replaced, and nothing else on
//! the node is disturbed.

/// Without the feature there is no fault hook: say so instead of compiling to nothing.
#[cfg(not(feature = "fault-injection"))]
#[test]
fn supervision_tests_need_the_fault_injection_feature() {
    eprintln!(
        "tests/supervision.rs skipped: build with --features fault-injection (or --all-features, \
         as README's test command does) to run them"
    );
}

#[cfg(feature = "fault-injection")]
mod common;

#[cfg(feature = "fault-injection")]
mod with_the_hook {

    use std::net::TcpStream;
    use std::time::Duration;

    use super::common::*;

    /// The stream ids `node` carries on `tunnel`.
    fn streams(node: &Node) -> Vec<u64> {
        let config = node.config();
        let mut ids: Vec<u64> = config["connections"]
            .as_object()
            .map(|c| c.values().filter_map(|v| v["stream"].as_u64()).collect())
            .unwrap_or_default();
        ids.sort_unstable();
        ids
    }

    #[test]
    fn a_panicking_connection_is_cleaned_up_and_nothing_else_notices() {
        let backend = Backend::echo();
        let (a, b) = (Node::start(), Node::start());
        let local = wire(&a, &b, backend.addr, Some("k"));
        let mut victims: Vec<TcpStream> = (0..2).map(|_| connect(local)).collect();
        let mut bystander = connect(local);
        for (i, s) in victims.iter_mut().enumerate() {
            echo_once(s, i as u64);
        }
        echo_once(&mut bystander, 9);
        let ids = streams(&a);
        assert_eq!(ids.len(), 3);

        // One on the client's side (node a), one on the backend's side (node b).
        for (node, stream) in [(&a, ids[0]), (&b, ids[1])] {
            node.ok(
                "POST",
                "/fault",
                &format!(r#"{{"actor":"connection", "tunnel":"tunnel1", "stream":{stream}}}"#),
            );
            assert!(node.wait_log("connection actor panicked", Duration::from_secs(2)));
        }
        for s in &mut victims {
            assert!(closed_within(s, Duration::from_secs(2)), "victim held open");
        }
        echo_once(&mut bystander, 10);
        assert!(eventually(Duration::from_secs(2), || streams(&a).len()
            == 1
            && streams(&b).len() == 1));
        let data = pattern(200_000, 11);
        assert_eq!(roundtrip(local, &data), data);
    }

    /// The tunnel port's listener is supervised the same way: peers can dial in again at once.
    #[test]
    fn a_panicking_tunnel_port_is_restarted() {
        let backend = Backend::echo();
        let (a, b) = (Node::start(), Node::start());
        let local = wire(&a, &b, backend.addr, None);
        b.ok("POST", "/fault", r#"{"actor":"tunnel-port"}"#);
        assert!(b.wait_log(
            "tunnel port: the listener actor panicked",
            Duration::from_secs(2)
        ));
        assert!(b.wait_log("restarting it in", Duration::from_secs(2)));
        // The tunnel already up never noticed; a new one can be dialled once the port is back.
        assert_eq!(roundtrip(local, b"unharmed"), b"unharmed");
        let c = Node::start();
        assert!(eventually(Duration::from_secs(5), || {
            c.request(
                "POST",
                "/tunnel",
                &format!(
                    r#"{{"name":"tunnel2", "dest":["127.0.0.1", "{}"]}}"#,
                    b.tunnel.port()
                ),
            )
            .0 == 200
        }));
    }

    #[test]
    fn a_panicking_listener_is_restarted() {
        let backend = Backend::echo();
        let (a, b) = (Node::start(), Node::start());
        let local = wire(&a, &b, backend.addr, None);
        let mut held = connect(local);
        echo_once(&mut held, 1);
        a.ok(
            "POST",
            "/fault",
            r#"{"actor":"listener", "service":"service1"}"#,
        );
        assert!(a.wait_log("the listener actor panicked", Duration::from_secs(2)));
        assert!(a.wait_log("restarting it in", Duration::from_secs(2)));
        let took = healed(local, b"listening again", Duration::from_secs(5)).expect("restarted");
        eprintln!("listener back {took:?} after its panic");
        echo_once(&mut held, 2);
    }

    #[test]
    fn a_panicking_tunnel_is_redialled() {
        let backend = Backend::echo();
        let (a, b) = (Node::start(), Node::start());
        let local = wire(&a, &b, backend.addr, None);
        for (node, round) in [(&a, 1u64), (&b, 2)] {
            let mut held = connect(local);
            echo_once(&mut held, round);
            node.ok(
                "POST",
                "/fault",
                r#"{"actor":"tunnel", "tunnel":"tunnel1"}"#,
            );
            assert!(node.wait_log("the tunnel actor panicked", Duration::from_secs(2)));
            assert!(closed_within(&mut held, Duration::from_secs(2)));
            let took =
                healed(local, &pattern(10_000, round), Duration::from_secs(5)).expect("healed");
            eprintln!("tunnel back {took:?} after a panic on node {round}");
        }
        let (status, _) = a.request("POST", "/fault", r#"{"actor":"tunnel", "tunnel":"nope"}"#);
        assert_eq!(status, 404);
    }

    /// The Registry itself panicking loses the node's brain: the process exits 1 at once rather than
    /// run headless, and started again it restores everything from its state file.
    #[test]
    fn a_panicking_registry_exits_and_the_restart_restores_it() {
        let dir = TempDir::new("registry-panic");
        let backend = Backend::echo();
        let mut a = Node::persistent(&dir, "a", None);
        let b = Node::persistent(&dir, "b", None);
        let local = wire_fixed(&a, &b, backend.addr, Some("k"));
        let _ = a.request("POST", "/fault", r#"{"actor":"registry"}"#);
        assert!(a.wait_log("the registry actor died", Duration::from_secs(3)));
        assert!(eventually(Duration::from_secs(5), || !a.alive()));
        a.restart();
        assert!(healed(local, b"restored", Duration::from_secs(10)).is_some());
    }

    /// A UDP service's listener is supervised too: restarted on the same socket (the port stays
    /// the node's), clients are served again.
    #[test]
    fn a_panicking_udp_listener_is_restarted_on_its_socket() {
        let echo = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let target = echo.local_addr().expect("addr");
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while let Ok((n, from)) = echo.recv_from(&mut buf) {
                let _ = echo.send_to(&buf[..n], from);
            }
        });
        let (a, b) = (Node::start(), Node::start());
        dial(&a, &b, "tunnel1");
        let port = {
            let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("free port");
            s.local_addr().expect("addr").port()
        };
        a.ok(
            "POST",
            "/service",
            &format!(
                r#"{{"name":"dns", "protocol":"udp", "type":"local", "addr":["127.0.0.1","{port}"]}}"#
            ),
        );
        b.ok(
            "POST",
            "/service",
            &format!(
                r#"{{"name":"dns", "protocol":"udp", "type":"remote", "addr":["127.0.0.1","{}"]}}"#,
                target.port()
            ),
        );
        a.ok(
            "POST",
            "/bind",
            r#"{"tunnel":"tunnel1","service":"dns","type":"local"}"#,
        );
        b.ok(
            "POST",
            "/bind",
            r#"{"tunnel":"tunnel1","service":"dns","type":"remote"}"#,
        );
        let client = std::net::UdpSocket::bind("127.0.0.1:0").expect("client");
        client
            .set_read_timeout(Some(Duration::from_millis(300)))
            .expect("timeout");
        let served = |tag: &[u8]| {
            eventually(Duration::from_secs(5), || {
                let _ = client.send_to(tag, ("127.0.0.1", port));
                let mut buf = [0u8; 64];
                matches!(client.recv_from(&mut buf), Ok((n, _)) if &buf[..n] == tag)
            })
        };
        assert!(served(b"before"));
        a.ok("POST", "/fault", r#"{"actor":"listener", "service":"dns"}"#);
        assert!(a.wait_log(
            "the listener panicked; restarting it in",
            Duration::from_secs(2)
        ));
        assert!(a.wait_log("listener restarted", Duration::from_secs(5)));
        assert!(served(b"after"), "the UDP service answers again");
    }
}
