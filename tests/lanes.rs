//! Tunnels over several TCP connections (`[tunnel] lanes`): streams spread over the lanes and
//! arrive byte-exact, one service leaves a lane to the others, both ends agree on each stream's
//! lane, and a lane that breaks takes the whole tunnel down, after which the dialer re-dials all
//! of it.

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::net::TcpStream;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use menet_actors::handshake::Identity;

use common::*;

fn with_lanes(dir: &TempDir, name: &str, lanes: usize) -> Node {
    Node::with_config(dir, name, &format!("[tunnel]\nlanes = {lanes}\n"))
}

/// Each node's lanes of tunnel `t`, as `GET /config` shows them.
fn lanes(node: &Node) -> Option<u64> {
    node.config()["tunnels"]["t"]["lanes"].as_u64()
}

/// (lane, stream id, service) of each stream node `node` carries on tunnel `t` (ids are each
/// lane's own).
fn stream_lanes(node: &Node) -> BTreeSet<(u64, u64, String)> {
    let (status, config) = node.request("GET", "/config?connections=true", "");
    assert_eq!(status, 200);
    config["connections"]
        .as_object()
        .map(|streams| {
            streams
                .values()
                .filter(|s| s["tunnel"] == "t")
                .filter_map(|s| {
                    let service = s["service"].as_str()?.to_owned();
                    Some((s["lane"].as_u64()?, s["stream"].as_u64()?, service))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Streams per lane of `streams` (of 3 lanes), of `service`.
fn per_lane(streams: &BTreeSet<(u64, u64, String)>, service: &str) -> [usize; 3] {
    let mut per = [0; 3];
    for (lane, _, s) in streams {
        if s == service {
            per[*lane as usize] += 1;
        }
    }
    per
}

#[test]
fn streams_spread_over_the_lanes_and_arrive_byte_exact() {
    let dir = TempDir::new("lanes");
    let a = with_lanes(&dir, "a", 3);
    let b = Node::start();
    let echo = Backend::echo();
    dial(&a, &b, "t");
    // Keyed (RC4, end to end): each stream's keys are its own, whichever lane carries it.
    let local = carry(&a, &b, "t", "echo", Some("k"), echo.addr);
    assert!(
        eventually(Duration::from_secs(10), || lanes(&a) == Some(3)
            && lanes(&b) == Some(3)),
        "both ends carry three lanes: {} / {}",
        a.config(),
        b.config()
    );

    // Six clients held open: one service spreads over two of the three lanes, three streams
    // on each, on both ends alike.
    let mut clients: Vec<TcpStream> = (0..6u64)
        .map(|i| {
            let mut s = connect(local);
            echo_once(&mut s, i);
            s
        })
        .collect();
    let (on_a, on_b) = (stream_lanes(&a), stream_lanes(&b));
    assert_eq!(on_a.len(), 6, "{on_a:?}");
    assert_eq!(on_a, on_b, "both ends put each stream on the same lane");
    assert_eq!(
        per_lane(&on_a, "echo"),
        [3, 3, 0],
        "a service spreads over all lanes but one"
    );
    // Another service's client takes the lane left clear.
    let other = carry(&a, &b, "t", "other", None, echo.addr);
    let mut third = connect(other);
    echo_once(&mut third, 7);
    assert_eq!(per_lane(&stream_lanes(&a), "other"), [0, 0, 1]);
    assert_eq!(stream_lanes(&a), stream_lanes(&b));

    // Bulk on all of them at once, each byte-exact.
    let workers: Vec<_> = (0..6u64)
        .map(|i| {
            thread::spawn(move || {
                let data = pattern(1 << 20, 100 + i);
                assert_eq!(roundtrip(local, &data), data);
            })
        })
        .collect();
    for w in workers {
        w.join().expect("transfer");
    }
    for (i, s) in clients.iter_mut().enumerate() {
        echo_once(s, 10 + i as u64);
    }
}

/// Node a dials b over two lanes through a relay (both with `[tunnel]` lines `extra`), an echo
/// service carried: the nodes, the relay, the echo and the local service's address.
fn two_lanes_through_relay(
    dir: &TempDir,
    extra: &str,
) -> (Node, Node, Relay, Backend, std::net::SocketAddr) {
    let a = Node::with_config(dir, "a", &format!("[tunnel]\nlanes = 2\n{extra}"));
    let b = Node::with_config(dir, "b", &format!("[tunnel]\n{extra}"));
    let relay = Relay::start(b.tunnel);
    dial_addr(&a, relay.addr, "t");
    let echo = Backend::echo();
    let local = carry(&a, &b, "t", "echo", None, echo.addr);
    assert!(eventually(Duration::from_secs(10), || lanes(&a) == Some(2)
        && lanes(&b) == Some(2)));
    (a, b, relay, echo, local)
}

#[test]
fn a_lane_that_breaks_takes_the_tunnel_down_and_the_dialer_redials_every_lane() {
    let dir = TempDir::new("lanes-break");
    let (a, b, relay, _echo, local) = two_lanes_through_relay(&dir, "");
    let mut held = connect(local);
    echo_once(&mut held, 1);
    let mut second = connect(local);
    echo_once(&mut second, 2);

    // The second connection through the relay is the second lane.
    relay.cut_one(1);
    for s in [&mut held, &mut second] {
        assert!(
            closed_within(s, Duration::from_secs(5)),
            "every stream of the tunnel ends with it"
        );
    }
    assert!(
        eventually(Duration::from_secs(15), || lanes(&a) == Some(2)
            && lanes(&b) == Some(2)
            && try_roundtrip(local, b"after").is_ok_and(|r| r == b"after")),
        "re-dialled with both lanes: {}",
        a.config()
    );
    let mut again = connect(local);
    echo_once(&mut again, 3);
    again.flush().expect("flush");
}

#[test]
fn a_lane_joins_only_a_connected_tunnel_of_its_own_dialer() {
    let b = Node::start();
    let (owner, stranger) = (
        Arc::new(Identity::generate()),
        Arc::new(Identity::generate()),
    );
    // No tunnel of that name: a lane makes none.
    let refused = raw_dial_lane(b.tunnel, "t", owner.clone())
        .err()
        .unwrap_or_default();
    assert!(refused.contains("no connected tunnel"), "{refused}");
    assert!(b.config()["tunnels"]["t"].is_null(), "{}", b.config());

    let mut first = raw_dial(b.tunnel, "t", None, Some(owner.clone())).expect("the tunnel");
    assert!(eventually(Duration::from_secs(5), || lanes(&b) == Some(1)));
    // Another identity cannot join it, nor take it over by asking for a lane.
    let refused = raw_dial_lane(b.tunnel, "t", stranger)
        .err()
        .unwrap_or_default();
    assert!(refused.contains("no connected tunnel"), "{refused}");
    // Its own dialer can: the tunnel now runs over two connections, and the first still works.
    let _lane = raw_dial_lane(b.tunnel, "t", owner).expect("a lane of its own tunnel");
    assert!(
        eventually(Duration::from_secs(5), || lanes(&b) == Some(2)),
        "{}",
        b.config()
    );
    assert_eq!(b.config()["tunnels"]["t"]["state"], "connected");
    assert!(
        pong(&mut first, 7),
        "the first connection still carries the tunnel"
    );
}

/// Sends PING `v` on a raw peer's connection; whether its PONG comes back.
fn pong(peer: &mut RawPeer, v: u64) -> bool {
    use menet_actors::protocol::{Frame, FrameCodec};
    use std::io::Read;
    use tokio_util::codec::Decoder;
    let mut out = bytes::BytesMut::new();
    Frame::Ping(v).encode(&mut out);
    if peer.write_all(&out).is_err() {
        return false;
    }
    peer.set_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let (mut codec, mut inbox, mut buf) = (FrameCodec, bytes::BytesMut::new(), [0u8; 4096]);
    loop {
        match codec.decode(&mut inbox) {
            Ok(Some(Frame::Pong(got))) if got == v => return true,
            Ok(Some(_)) => continue,
            Ok(None) => {}
            Err(_) => return false,
        }
        match peer.read(&mut buf) {
            Ok(n) if n > 0 => inbox.extend_from_slice(&buf[..n]),
            _ => return false,
        }
    }
}

#[test]
fn a_tunnel_deleted_by_its_acceptor_is_forgotten_by_its_dialer_whatever_lane_closes_first() {
    let dir = TempDir::new("lanes-delete");
    let a = with_lanes(&dir, "a", 3);
    let b = Node::start();
    dial(&a, &b, "t");
    assert!(eventually(Duration::from_secs(10), || lanes(&a) == Some(3)
        && lanes(&b) == Some(3)));
    b.ok("DELETE", "/tunnel", r#"{"name":"t"}"#);
    assert!(
        eventually(Duration::from_secs(5), || a.config()["tunnels"]["t"]
            .is_null()),
        "the dialer forgot the tunnel instead of re-dialling it: {}",
        a.config()
    );
    thread::sleep(Duration::from_millis(500));
    assert!(b.config()["tunnels"]["t"].is_null(), "{}", b.config());
}

#[test]
fn streams_the_acceptor_opens_go_over_the_lanes_too() {
    let dir = TempDir::new("lanes-back");
    let a = with_lanes(&dir, "a", 2);
    let b = Node::start();
    let echo = Backend::echo();
    dial(&a, &b, "t");
    // A service local on the acceptor, remote on the dialer: b opens the streams.
    let local = carry(&b, &a, "t", "back", None, echo.addr);
    assert!(eventually(Duration::from_secs(10), || lanes(&a) == Some(2)
        && lanes(&b) == Some(2)));
    let mut clients: Vec<TcpStream> = (0..4u64)
        .map(|i| {
            let mut s = connect(local);
            echo_once(&mut s, 20 + i);
            s
        })
        .collect();
    let (on_b, on_a) = (stream_lanes(&b), stream_lanes(&a));
    assert_eq!(on_b, on_a, "both ends put each stream on the same lane");
    assert!(
        on_b.iter().all(|(_, id, _)| id % 2 == 0),
        "the acceptor's ids: {on_b:?}"
    );
    // One service of two lanes keeps to one.
    let lanes_used: BTreeSet<u64> = on_b.iter().map(|(lane, _, _)| *lane).collect();
    assert_eq!(lanes_used.len(), 1, "{on_b:?}");
    // Another service of the acceptor's goes on the other.
    let second = carry(&b, &a, "t", "back2", None, echo.addr);
    let mut s = connect(second);
    echo_once(&mut s, 40);
    let on_b = stream_lanes(&b);
    let other: BTreeSet<u64> = on_b
        .iter()
        .filter(|(_, _, s)| s == "back2")
        .map(|(lane, _, _)| *lane)
        .collect();
    assert!(
        other.len() == 1 && other.is_disjoint(&lanes_used),
        "{on_b:?}"
    );
    assert_eq!(on_b, stream_lanes(&a));
    for (i, s) in clients.iter_mut().enumerate() {
        echo_once(s, 30 + i as u64);
    }
}

#[test]
fn a_lane_gone_silent_takes_the_tunnel_down_within_the_heartbeat_timeout() {
    let dir = TempDir::new("lanes-silent");
    let heartbeat = "heartbeat_interval_ms = 200\nheartbeat_timeout_ms = 1000\n";
    let (a, b, relay, _echo, local) = two_lanes_through_relay(&dir, heartbeat);
    let mut held = connect(local);
    echo_once(&mut held, 1);
    // The second lane stops passing anything, both ways, without closing: only the silence
    // tells.
    relay.strand_one(1);
    assert!(
        closed_within(&mut held, Duration::from_secs(5)),
        "the tunnel went down with its silent lane"
    );
    // Whichever end's check runs first finds the lane silent; the other sees it close.
    assert!(
        eventually(Duration::from_secs(5), || a.log_contains("silent")
            || b.log_contains("silent")),
        "{:?} {:?}",
        a.log_all(),
        b.log_all()
    );
    assert!(
        eventually(Duration::from_secs(15), || lanes(&a) == Some(2)
            && try_roundtrip(local, b"again").is_ok_and(|r| r == b"again")),
        "re-dialled over fresh connections: {}",
        a.config()
    );
}

/// The data thread each stream of `service` runs on at node `node` (its tunnel's first lane's
/// thread, then one thread further per lane, of `threads`).
fn stream_threads(node: &Node, service: &str, threads: u64) -> BTreeSet<u64> {
    let (status, config) = node.request("GET", "/config?connections=true", "");
    assert_eq!(status, 200);
    let head = |t: &str| config["tunnels"][t]["thread"].as_u64();
    config["connections"]
        .as_object()
        .map(|streams| {
            streams
                .values()
                .filter(|s| s["service"] == service)
                .filter_map(|s| {
                    let first = head(s["tunnel"].as_str()?)?;
                    Some((first + s["lane"].as_u64()?) % threads)
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_stream_keeps_off_the_thread_of_another_tunnels_bulk() {
    let dir = TempDir::new("lanes-threads");
    // Two data threads and three tunnels of two lanes: t1 and t3 start on the same thread, so
    // each lane of t3 shares a thread with a lane of t1.
    let a = Node::with_config(&dir, "a", "[tunnel]\nlanes = 2\n[node]\nthreads = 2\n");
    let b = Node::with_config(&dir, "b", "[node]\nthreads = 2\n");
    let echo = Backend::echo();
    for t in ["t1", "t2", "t3"] {
        dial(&a, &b, t);
    }
    assert!(
        eventually(Duration::from_secs(10), || {
            let c = a.config();
            ["t1", "t2", "t3"]
                .iter()
                .all(|t| c["tunnels"][t]["lanes"].as_u64() == Some(2))
        }),
        "every tunnel carries two lanes: {}",
        a.config()
    );
    let bulk = carry(&a, &b, "t3", "bulk", None, echo.addr);
    let interactive = carry(&a, &b, "t1", "echo", None, echo.addr);
    // The bulk first, held open; then the exchange on the other tunnel.
    let mut held = connect(bulk);
    echo_once(&mut held, 1);
    let mut exchange = connect(interactive);
    echo_once(&mut exchange, 2);
    let (bulk_on, echo_on) = (stream_threads(&a, "bulk", 2), stream_threads(&a, "echo", 2));
    assert_eq!((bulk_on.len(), echo_on.len()), (1, 1), "{}", a.config());
    assert!(
        bulk_on.is_disjoint(&echo_on),
        "the exchange on thread {echo_on:?} beside the bulk on {bulk_on:?}: {}",
        a.config()
    );
    // And the other way round: a second bulk stream keeps off the exchange's thread.
    let mut more = connect(bulk);
    echo_once(&mut more, 3);
    assert!(stream_threads(&a, "bulk", 2).is_disjoint(&echo_on));
}
