//! The tunnel actor tested alone: a real socket pair on loopback, this test as the peer (frames
//! in, frames out), and a stub recipient in the Registry's place.

use std::sync::Mutex;

use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedReadHalf;

use super::*;
use crate::data_thread::{DataThread, DataThreadHandle};
use crate::limits::Usage;
use crate::routes::{RemoteRoute, RouteTable, Routes};

/// The test's side of the tunnel socket: frames out, frames in.
struct Peer {
    /// Frames from the tunnel.
    read: FramedRead<OwnedReadHalf, FrameCodec>,
    /// Where the test writes its frames.
    write: OwnedWriteHalf,
}

impl Peer {
    async fn send(&mut self, frame: Frame) -> std::io::Result<()> {
        let mut buf = BytesMut::new();
        frame.encode(&mut buf);
        self.write.write_all(&buf).await
    }

    async fn next(&mut self) -> Option<Result<Frame, ProtocolError>> {
        self.read.next().await
    }

    /// Opens `stream` of `service` (plain TCP, unkeyed).
    async fn open(&mut self, stream: u32, service: &str) {
        self.send(Frame::Open {
            stream,
            service: service.into(),
            keyed: None,
            protocol: crate::protocol::Protocol::Tcp,
            origin: None,
        })
        .await
        .expect("open");
    }
}

/// Stands in for the Registry: keeps the tunnel's report.
struct Owner(Arc<Mutex<Option<TunnelDown>>>);

impl Actor for Owner {
    type Context = Context<Self>;
}

impl Handler<TunnelDown> for Owner {
    type Result = ();

    fn handle(&mut self, msg: TunnelDown, _ctx: &mut Self::Context) {
        *self.0.lock().expect("report") = Some(msg);
    }
}

fn terms() -> Terms {
    Settings::default().terms()
}

/// A loopback pair: the tunnel's end (not yet registered) and the test's, framed.
/// A lane joined to `tunnel` (on `thread`, or the tunnel's own): its peer end.
async fn join_lane(tunnel: &Addr<Tunnel>, thread: Option<DataThreadHandle>) -> Peer {
    let (sock, lane) = socket_pair();
    tunnel
        .send(JoinLane {
            sock,
            keys: None,
            thread,
        })
        .await
        .expect("joined");
    lane
}

fn socket_pair() -> (std::net::TcpStream, Peer) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let peer = std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("dial");
    let (sock, _) = listener.accept().expect("accept");
    sock.set_nonblocking(true).expect("nonblocking");
    peer.set_nonblocking(true).expect("nonblocking");
    let (read, write) = tokio::net::TcpStream::from_std(peer)
        .expect("peer")
        .into_split();
    let peer = Peer {
        read: FramedRead::new(read, FrameCodec),
        write,
    };
    (sock, peer)
}

/// Starts a tunnel (the acceptor of `name`) on one end of a loopback pair; the other end, framed.
async fn tunnel_and_peer(routes: Routes) -> (Peer, Arc<Mutex<Option<TunnelDown>>>) {
    let (peer, report, _) = tunnel_peer_addr(routes).await;
    (peer, report)
}

/// [`tunnel_and_peer`], with the tunnel's address for commands.
async fn tunnel_peer_addr(routes: Routes) -> (Peer, Arc<Mutex<Option<TunnelDown>>>, Addr<Tunnel>) {
    tunnel_with(routes, Settings::default()).await
}

/// The same with `settings` (its limits, say).
async fn tunnel_with(
    routes: Routes,
    settings: Settings,
) -> (Peer, Arc<Mutex<Option<TunnelDown>>>, Addr<Tunnel>) {
    let (sock, peer) = socket_pair();
    let report = Arc::new(Mutex::new(None));
    let owner = Owner(report.clone()).start();
    let table = RouteTable::default();
    table.publish(routes);
    let shared = Shared {
        settings,
        usage: Usage::new(settings.limits, 1024),
        routes: table,
    };
    let link = TunnelLink {
        name: "t1".to_owned(),
        generation: 1,
        role: Role::Acceptor,
        sock,
        peer: terms(),
        authenticated: true,
        keys: None,
        thread: None,
    };
    let tunnel = Tunnel::new(link, owner.recipient(), shared).start();
    (peer, report, tunnel)
}

/// A remote service `svc` bound to tunnel `t1`, dialled at `backend`.
fn svc_route(backend: std::net::SocketAddr) -> Routes {
    let mut routes = Routes::default();
    routes.remote.insert(
        "svc".into(),
        RemoteRoute {
            backends: Arc::new(crate::backends::Backends::new(
                &[backend],
                crate::service::Balance::First,
                |_| Default::default(),
            )),
            key: None,
            timeout: None,
            tunnel: Some("t1".into()),
            protocol: crate::protocol::Protocol::Tcp,
            proxy_protocol: None,
            pace: None,
            datagrams: Arc::default(),
        },
    );
    routes
}

/// The next frame from the tunnel that is not a PING (answered) or a WINDOW.
async fn next_frame(peer: &mut Peer) -> Option<Frame> {
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(5), peer.next())
            .await
            .ok()??
            .ok()?;
        match frame {
            Frame::Ping(v) => peer.send(Frame::Pong(v)).await.ok()?,
            Frame::Window { .. } => {}
            other => return Some(other),
        }
    }
}

/// The next frame from the tunnel that is not a PING, a WINDOW or the FIN of another stream
/// (an earlier stream's backend that closed its end).
async fn next_of(peer: &mut Peer, stream: u32) -> Option<Frame> {
    loop {
        match next_frame(peer).await {
            Some(Frame::Fin { stream: s }) if s != stream => continue,
            other => return other,
        }
    }
}

/// The peer opens `stream` to `svc` on `peer`'s connection: the backend is dialled, OPEN_OK comes
/// back there, `out` reaches the backend and its reply `back` returns there, each byte-exact.
async fn open_and_echo(
    peer: &mut Peer,
    backend: &tokio::net::TcpListener,
    stream: u32,
    out: &[u8],
    back: &[u8],
) {
    peer.open(stream, "svc").await;
    let (mut conn, _) = backend.accept().await.expect("dialled");
    match next_of(peer, stream).await {
        Some(Frame::OpenOk { stream: s, .. }) => assert_eq!(s, stream),
        other => panic!("{other:?}"),
    }
    peer.send(Frame::Data {
        stream,
        payload: BytesMut::from(out),
    })
    .await
    .expect("data");
    let mut got = vec![0u8; out.len()];
    tokio::io::AsyncReadExt::read_exact(&mut conn, &mut got)
        .await
        .expect("bytes");
    assert_eq!(got, out);
    tokio::io::AsyncWriteExt::write_all(&mut conn, back)
        .await
        .expect("reply");
    match next_frame(peer).await {
        Some(Frame::Data { stream: s, payload }) if s == stream => assert_eq!(&payload[..], back),
        other => panic!("{other:?}"),
    }
}

async fn report_of(report: &Arc<Mutex<Option<TunnelDown>>>) -> Option<TunnelDown> {
    for _ in 0..100 {
        if let Some(r) = report.lock().expect("report").take() {
            return Some(r);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

#[test]
fn an_open_for_a_service_not_bound_here_is_refused_and_the_tunnel_stays() {
    actix_rt::System::new().block_on(async {
        let (mut peer, report) = tunnel_and_peer(Routes::default()).await;
        peer.open(1, "nope").await;
        match next_frame(&mut peer).await {
            Some(Frame::OpenFail { stream: 1, reason }) => {
                assert_eq!(reason, "no remote service named nope for this tunnel")
            }
            other => panic!("{other:?}"),
        }
        // The tunnel lives on: a ping is answered.
        peer.send(Frame::Ping(7)).await.expect("ping");
        let pong = loop {
            match tokio::time::timeout(Duration::from_secs(5), peer.next()).await {
                Ok(Some(Ok(Frame::Pong(v)))) => break v,
                Ok(Some(Ok(_))) => {}
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(pong, 7);
        assert!(report.lock().expect("report").is_none());
    });
}

#[test]
fn an_open_of_a_bound_service_reaches_its_backend_and_carries_bytes() {
    actix_rt::System::new().block_on(async {
        let backend = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("backend");
        let routes = svc_route(backend.local_addr().expect("addr"));
        let (mut peer, _report) = tunnel_and_peer(routes).await;
        open_and_echo(&mut peer, &backend, 1, b"hello backend", b"and back").await;
    });
}

#[test]
fn a_peer_past_the_tunnel_window_loses_the_tunnel_and_the_owner_hears_why() {
    actix_rt::System::new().block_on(async {
        let (mut peer, report) = tunnel_and_peer(Routes::default()).await;
        peer.send(Frame::Window {
            stream: TUNNEL_STREAM,
            increment: u32::MAX,
        })
        .await
        .expect("window");
        peer.send(Frame::Window {
            stream: TUNNEL_STREAM,
            increment: u32::MAX,
        })
        .await
        .expect("window");
        let down = report_of(&report).await.expect("reported");
        assert!(
            down.reason.contains("overflowed the tunnel window"),
            "{}",
            down.reason
        );
        assert_eq!(down.name, "t1");
    });
}

#[test]
fn a_goodbye_from_the_peer_is_reported_with_its_code() {
    actix_rt::System::new().block_on(async {
        let (mut peer, report) = tunnel_and_peer(Routes::default()).await;
        peer.send(Frame::GoAway {
            code: GoAway::Deleted,
            reason: "bye\nforged".into(),
        })
        .await
        .expect("goaway");
        let down = report_of(&report).await.expect("reported");
        assert_eq!(down.goaway, Some(GoAway::Deleted));
        assert!(
            down.reason.contains("bye\\nforged"),
            "escaped: {}",
            down.reason
        );
    });
}

#[test]
fn a_lane_on_another_thread_carries_streams_of_its_own_and_takes_the_tunnel_down_with_it() {
    actix_rt::System::new().block_on(async {
        let backend = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("backend");
        let routes = svc_route(backend.local_addr().expect("addr"));
        let (mut first, report, tunnel) = tunnel_peer_addr(routes).await;
        let thread = DataThread::spawn("lane-test".into(), 1, Duration::from_micros(50), || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
        })
        .expect("a data thread");
        let mut lane = join_lane(&tunnel, Some(thread.handle())).await;
        // Stream ids are each lane's own: stream 1 on both, each answered on its own lane.
        open_and_echo(&mut lane, &backend, 1, b"by lane one", b"back on it").await;
        open_and_echo(&mut first, &backend, 1, b"by the first", b"back there").await;
        // The head answers for both lanes.
        let stats = tunnel
            .send(Snapshot {
                connections: true,
                service: None,
            })
            .await
            .expect("stats");
        assert_eq!(stats.counters.lanes, 2);
        assert_eq!(stats.counters.streams, 2);
        let mut lanes: Vec<(usize, u32)> = stats
            .connections
            .iter()
            .map(|c| (c.lane, c.stream))
            .collect();
        lanes.sort();
        assert_eq!(lanes, [(0, 1), (1, 1)]);
        // A lane that closes takes the tunnel down, and the head's report says why.
        drop(lane);
        let down = report_of(&report).await.expect("reported");
        assert!(down.reason.contains("a lane went down"), "{}", down.reason);
        assert_eq!(down.name, "t1");
        drop(thread);
    });
}

#[test]
fn max_streams_bounds_the_tunnel_over_all_its_lanes() {
    actix_rt::System::new().block_on(async {
        let backend = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("backend");
        let mut settings = Settings::default();
        settings.limits.max_streams = 2;
        let routes = svc_route(backend.local_addr().expect("addr"));
        let (mut first, _report, tunnel) = tunnel_with(routes, settings).await;
        let mut lane = join_lane(&tunnel, None).await;
        // One stream on each lane: the tunnel's two.
        open_and_echo(&mut first, &backend, 1, b"one", b"one back").await;
        open_and_echo(&mut lane, &backend, 1, b"two", b"two back").await;
        // A third is refused on either lane: they count together, and the lanes stay up.
        for peer in [&mut lane, &mut first] {
            peer.open(3, "svc").await;
            // (The backends closed their ends: the FINs of streams 1, still open our way.)
            match next_of(peer, 3).await {
                Some(Frame::OpenFail { stream: 3, reason }) => {
                    assert!(reason.contains("too many streams"), "{reason}")
                }
                other => panic!("{other:?}"),
            }
        }
        // A stream that ends makes room on any lane.
        first
            .send(Frame::Reset {
                stream: 1,
                code: ResetCode::Aborted,
            })
            .await
            .expect("reset");
        tokio::time::sleep(Duration::from_millis(50)).await;
        open_and_echo(&mut lane, &backend, 5, b"three", b"three back").await;
    });
}

#[test]
fn a_head_that_goes_down_closes_its_lanes() {
    actix_rt::System::new().block_on(async {
        let (first, report, tunnel) = tunnel_peer_addr(Routes::default()).await;
        let mut lane = join_lane(&tunnel, None).await;
        drop(first);
        report_of(&report).await.expect("reported");
        // The lane's connection ends, without a goodbye: the tunnel broke.
        loop {
            match tokio::time::timeout(Duration::from_secs(5), lane.next()).await {
                Ok(Some(Ok(Frame::GoAway { .. }))) => panic!("a goodbye from a broken tunnel"),
                Ok(Some(Ok(_))) => {}
                Ok(None | Some(Err(_))) => break,
                Err(_) => panic!("the lane outlived its tunnel"),
            }
        }
    });
}

#[test]
fn a_goodbye_goes_on_every_lane_before_it_closes() {
    actix_rt::System::new().block_on(async {
        let (mut first, _report, tunnel) = tunnel_peer_addr(Routes::default()).await;
        let mut lane = join_lane(&tunnel, None).await;
        tunnel
            .send(CloseTunnel {
                goodbye: Some((GoAway::Deleted, "deleted".into())),
            })
            .await
            .expect("closed");
        for peer in [&mut first, &mut lane] {
            let goodbye = loop {
                match tokio::time::timeout(Duration::from_secs(5), peer.next()).await {
                    Ok(Some(Ok(Frame::GoAway { code, .. }))) => break code,
                    Ok(Some(Ok(_))) => {}
                    other => panic!("the connection ended without a goodbye: {other:?}"),
                }
            };
            assert_eq!(goodbye, GoAway::Deleted);
        }
    });
}

#[test]
fn a_peer_that_floods_pings_over_its_lanes_without_reading_loses_the_tunnel() {
    actix_rt::System::new().block_on(async {
        let (mut first, report, tunnel) = tunnel_peer_addr(Routes::default()).await;
        let mut lane = join_lane(&tunnel, None).await;
        // 64 KiB of PINGs at a time on each lane in turn, never reading a PONG: the PONGs fill
        // the kernel's buffers, then each lane's control queue, which holds 1 MiB: a lane is
        // no more room than a tunnel.
        let mut burst = BytesMut::new();
        for v in 0..(64 * 1024 / (HEADER_LEN + 8)) as u64 {
            Frame::Ping(v).encode(&mut burst);
        }
        let mut sent = 0usize;
        let down = loop {
            if let Some(down) = report.lock().expect("report").take() {
                break down;
            }
            assert!(
                sent < 64 << 20,
                "64 MiB of PINGs and the tunnel still queues PONGs"
            );
            for peer in [&mut first, &mut lane] {
                let write = peer.write.write_all(&burst);
                if tokio::time::timeout(Duration::from_millis(200), write)
                    .await
                    .is_ok_and(|r| r.is_ok())
                {
                    sent += burst.len();
                }
            }
        };
        assert!(
            down.reason.contains("does not read its control frames"),
            "{}",
            down.reason
        );
    });
}

/// A frame from the peer that needs an answer (here a PING) is answered at once, not at the
/// tunnel's next wake-up for something else: the frame's handler may run after the writer item in
/// the actor's poll, and must wake it. Ten pings in turn take milliseconds; one missed wake-up
/// would hold each pong until the next heartbeat tick (about two seconds apart by default).
#[test]
fn pings_from_the_peer_are_answered_at_once() {
    actix_rt::System::new().block_on(async {
        let (mut peer, _report) = tunnel_and_peer(Routes::default()).await;
        let start = std::time::Instant::now();
        for v in 100..110 {
            peer.send(Frame::Ping(v)).await.expect("ping");
            loop {
                match tokio::time::timeout(Duration::from_secs(5), peer.next()).await {
                    Ok(Some(Ok(Frame::Pong(p)))) if p == v => break,
                    Ok(Some(Ok(_))) => {}
                    other => panic!("{other:?}"),
                }
            }
        }
        let took = start.elapsed();
        assert!(
            took < Duration::from_secs(2),
            "ten pings answered in {took:?}"
        );
    });
}

#[test]
fn bytes_a_connection_sent_straight_to_the_socket_are_counted_before_its_stream_goes() {
    actix_rt::System::new().block_on(async {
        let backend = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let routes = svc_route(backend.local_addr().expect("addr"));
        let (mut peer, _report, tunnel) = tunnel_peer_addr(routes).await;
        let stats = || Snapshot {
            connections: false,
            service: None,
        };
        let before = tunnel.send(stats()).await.expect("stats").counters;
        let reply = b"a reply that went straight to the socket";
        open_and_echo(&mut peer, &backend, 1, b"hello", reply).await;
        // Nothing was queued, so the reply went straight to the socket and its report quietly.
        // A handler in the mailbox runs before the writer item takes that report: the stream's
        // credit must not go back whole with the stream (the peer's window would be overrun).
        tunnel.do_send(CloseService {
            service: "svc".into(),
            side: Side::Remote,
        });
        match next_of(&mut peer, 1).await {
            Some(Frame::Reset { stream: 1, .. }) => {}
            other => panic!("{other:?}"),
        }
        let after = tunnel.send(stats()).await.expect("stats").counters;
        assert_eq!(after.bytes_sent, reply.len() as u64);
        assert_eq!(
            after.send_window,
            before.send_window - reply.len() as u64,
            "the reply's credit is spent; the rest of the stream's came back"
        );
    });
}
