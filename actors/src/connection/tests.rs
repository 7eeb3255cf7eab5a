//! The connection actor tested alone: a real loopback socket pair (this test holds the client's
//! end), the actor on the other end, and a report queue in its tunnel's place that hands every
//! report to the test. Frames in (as `StreamEvent`s, through the queue the connection shares with
//! its tunnel), reports out, bytes compared exactly.

use std::io::ErrorKind;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::*;

/// A plaintext connection for stream 7 on one end of a loopback pair, as its tunnel reaches it
/// (what the two share: events go in with `send`); the client's end and the reports.
async fn connection_and_client() -> (
    Rc<Downstream>,
    tokio::net::TcpStream,
    mpsc::UnboundedReceiver<FromConnection>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let client = tokio::net::TcpStream::connect(listener.local_addr().expect("addr"))
        .await
        .expect("dial");
    let (sock, _) = listener.accept().await.expect("accept");
    let (tx, rx) = mpsc::unbounded_channel();
    let spec = plain_spec(7, tx);
    // Started as the tunnel starts it, keeping what the two share.
    let conn = Connection::accepted(spec, sock, None);
    let down = conn.downstream();
    conn.start();
    (down, client, rx)
}

/// A plaintext, unpaced stream `stream` of service `svc`, its reports forwarded on `tx`.
fn plain_spec(stream: u32, tx: mpsc::UnboundedSender<FromConnection>) -> StreamSpec {
    StreamSpec {
        stream,
        upstream: Upstream::forwarded_to(tx),
        service: "svc".to_owned(),
        keying: None,
        idle_timeout: None,
        pace: None,
        slots: Vec::new(),
    }
}

/// The next report, within 5 s.
async fn report(rx: &mut mpsc::UnboundedReceiver<FromConnection>) -> FromConnection {
    tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("a report within 5 s")
        .expect("the stub is alive")
}

/// Upstream until stream 7's FIN after its client's: readable at EOF, the end is read under
/// credit like any byte, so each `Want` is granted.
async fn until_fin(down: &Downstream, rx: &mut mpsc::UnboundedReceiver<FromConnection>) {
    loop {
        match report(rx).await {
            FromConnection::Fin { stream: 7 } => return,
            FromConnection::Want { stream: 7 } => down.send(StreamEvent::Grant(1024)),
            FromConnection::Return { .. } => {}
            _ => panic!("an unexpected report"),
        }
    }
}

#[test]
fn bytes_flow_only_under_credit_both_ways_and_a_fin_is_carried() {
    actix_rt::System::new().block_on(async {
        let (down, mut client, mut rx) = connection_and_client().await;
        client.write_all(b"hello, tunnel").await.expect("write");
        // Not open yet: nothing is read, nothing reported.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            rx.try_recv().is_err(),
            "a report before the stream was open"
        );
        down.send(StreamEvent::Opened { nonce: None });
        assert!(matches!(
            report(&mut rx).await,
            FromConnection::Want { stream: 7 }
        ));
        // A grant (payload bytes on the wire) smaller than what waits: no frame carries more.
        let granted = 5;
        down.send(StreamEvent::Grant(granted));
        let mut payload = Vec::new();
        while payload.len() < b"hello, tunnel".len() {
            match report(&mut rx).await {
                FromConnection::Data { stream: 7, frame } => {
                    let carried = (frame.len() - HEADER_LEN) as u64;
                    assert!(
                        carried <= granted,
                        "{carried} bytes on a grant of {granted}"
                    );
                    payload.extend_from_slice(&frame[HEADER_LEN..]);
                    // Still wanting (it asked once): the tunnel grants again, unasked.
                    if payload.len() < b"hello, tunnel".len() {
                        down.send(StreamEvent::Grant(granted));
                    }
                }
                FromConnection::Want { stream: 7 } => down.send(StreamEvent::Grant(granted)),
                FromConnection::Return { .. } => {}
                _ => panic!("an unexpected report"),
            }
        }
        assert_eq!(payload, b"hello, tunnel");

        // Bytes from the far end reach the client, and are reported consumed.
        down.send(StreamEvent::Data(BytesMut::from(&b"and back"[..])));
        let mut got = [0u8; 8];
        client.read_exact(&mut got).await.expect("read");
        assert_eq!(&got, b"and back");
        loop {
            match report(&mut rx).await {
                FromConnection::Consumed { stream: 7, bytes } => {
                    assert_eq!(bytes, 8);
                    break;
                }
                FromConnection::Return { .. } | FromConnection::Want { .. } => {}
                _ => panic!("an unexpected report"),
            }
        }

        // The far end's FIN: the client reads EOF. The client's FIN: the tunnel hears Fin.
        down.send(StreamEvent::Fin);
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.expect("a clean EOF");
        assert!(rest.is_empty());
        client.shutdown().await.expect("shutdown");
        until_fin(&down, &mut rx).await;
    });
}

#[test]
fn an_abort_resets_the_client_and_never_looks_like_an_end() {
    actix_rt::System::new().block_on(async {
        let (down, mut client, _rx) = connection_and_client().await;
        down.send(StreamEvent::Opened { nonce: None });
        down.send(StreamEvent::Data(BytesMut::from(&b"partial"[..])));
        let mut got = [0u8; 7];
        client.read_exact(&mut got).await.expect("read");
        down.send(StreamEvent::Abort);
        let mut rest = [0u8; 16];
        let end = tokio::time::timeout(Duration::from_secs(5), client.read(&mut rest))
            .await
            .expect("the client hears within 5 s");
        match end {
            Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionReset),
            Ok(n) => {
                panic!("{n} bytes or a FIN after an abort: a truncated stream looked complete")
            }
        }
    });
}

#[test]
fn a_client_reset_is_reported_as_a_failure_not_an_end() {
    actix_rt::System::new().block_on(async {
        let (down, client, mut rx) = connection_and_client().await;
        down.send(StreamEvent::Opened { nonce: None });
        let client = client.into_std().expect("std");
        socket_linger_zero(&client);
        drop(client);
        loop {
            match report(&mut rx).await {
                FromConnection::Closed {
                    stream: 7,
                    failure: Some(_),
                } => break,
                FromConnection::Closed { failure: None, .. } | FromConnection::Fin { .. } => {
                    panic!("a reset client reported as a clean end")
                }
                // Readable: the reset is read once credit allows a read.
                FromConnection::Want { stream: 7 } => down.send(StreamEvent::Grant(1024)),
                _ => {}
            }
        }
    });
}

/// After its client's FIN the connection still writes what the tunnel sends; once the tunnel
/// lets go of the stream (its entry dropped) the actor ends and resets the socket: a stream its
/// tunnel forgot never stays open.
#[test]
fn a_connection_lives_while_its_tunnel_holds_it_and_ends_when_let_go() {
    actix_rt::System::new().block_on(async {
        let (down, mut client, mut rx) = connection_and_client().await;
        down.send(StreamEvent::Opened { nonce: None });
        client.shutdown().await.expect("the client's FIN");
        until_fin(&down, &mut rx).await;
        // Nothing more to read, but the way back is open.
        down.send(StreamEvent::Data(BytesMut::from(&b"still here"[..])));
        let mut got = [0u8; 10];
        client.read_exact(&mut got).await.expect("the reply");
        assert_eq!(&got, b"still here");
        down.release();
        let closed = tokio::time::timeout(Duration::from_secs(5), client.read(&mut got))
            .await
            .expect("the connection ended within 5 s");
        assert!(
            matches!(closed, Err(ref e) if e.kind() == ErrorKind::ConnectionReset),
            "a reset, not a clean end: {closed:?}"
        );
        // The tunnel is told too, as a failure (its consumption report of the reply first).
        loop {
            match report(&mut rx).await {
                FromConnection::Closed {
                    stream: 7,
                    failure: Some(_),
                } => break,
                FromConnection::Consumed { stream: 7, .. } | FromConnection::Return { .. } => {}
                _ => panic!("an unexpected report"),
            }
        }
    });
}

#[test]
fn the_tunnel_writes_to_the_socket_directly_only_when_nothing_is_ahead() {
    actix_rt::System::new().block_on(async {
        let (down, mut client, _rx) = connection_and_client().await;
        let mut expected = Vec::new();
        // Idle and plaintext: straight to the client.
        assert_eq!(down.write_direct(b"direct "), 7);
        expected.extend_from_slice(b"direct ");
        // An event in the queue: no direct write passes it.
        down.send(StreamEvent::Data(BytesMut::from(&b"queued "[..])));
        expected.extend_from_slice(b"queued ");
        assert_eq!(down.write_direct(b"early"), 0);
        // Once it is taken and written, direct writes go again, behind it.
        let deadline = Instant::now() + Duration::from_secs(5);
        while down.write_direct(b"after ") == 0 {
            assert!(Instant::now() < deadline, "direct writes never resumed");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        expected.extend_from_slice(b"after ");
        // The client reads nothing: direct writes fill the socket until it takes no more.
        let chunk = vec![b'f'; 64 * 1024];
        loop {
            let n = down.write_direct(&chunk);
            expected.extend_from_slice(&chunk[..n]);
            if n < chunk.len() {
                break;
            }
        }
        // The rest goes the usual way and waits in the connection: meanwhile nothing direct.
        down.send(StreamEvent::Data(BytesMut::from(&b"tail"[..])));
        expected.extend_from_slice(b"tail");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            down.write_direct(b"x"),
            0,
            "a direct write passed a queued one"
        );
        let mut got = vec![0u8; expected.len()];
        client.read_exact(&mut got).await.expect("read");
        assert!(got == expected, "the bytes arrived out of order");
        // After the far end's FIN: no direct write, and the client reads a clean end.
        down.send(StreamEvent::Fin);
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.expect("a clean EOF");
        assert!(rest.is_empty());
        assert_eq!(down.write_direct(b"late"), 0);
    });
}

/// Makes closing `sock` send a reset (SO_LINGER 0) instead of a FIN.
fn socket_linger_zero(sock: &std::net::TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid descriptor and a correctly sized option value.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_LINGER");
}

/// A dialled connection starts watching from the dial's completion, an item that may come after
/// the lasting watch item in the actor's poll: the watch still sees the backend's bytes that
/// arrive later (its wake-up polls the item again), under a standing grant with no asking.
#[test]
fn a_dialled_connection_reads_what_its_backend_sends_later() {
    actix_rt::System::new().block_on(async {
        let backend = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = backend.local_addr().expect("addr");
        let (tx, mut rx) = mpsc::unbounded_channel();
        let spec = plain_spec(8, tx);
        let target = Target {
            backends: Arc::new(crate::backends::Backends::new(
                &[addr],
                crate::service::Balance::First,
                |_| crate::metrics::BackendCounts::default(),
            )),
            connect_timeout: Duration::from_secs(5),
            header: None,
        };
        let conn = Connection::dialing(spec, target);
        let down = conn.downstream();
        conn.start();
        down.send(StreamEvent::Standing(4096));
        down.send(StreamEvent::Grant(4096));
        let (mut sock, _) = backend.accept().await.expect("the dial");
        assert!(matches!(
            report(&mut rx).await,
            FromConnection::Dialed { stream: 8 }
        ));
        // Well after the dial's completion has run and the actor has gone to sleep.
        tokio::time::sleep(Duration::from_millis(100)).await;
        sock.write_all(b"late reply").await.expect("write");
        let mut payload = Vec::new();
        while payload.len() < b"late reply".len() {
            match report(&mut rx).await {
                FromConnection::Data { stream: 8, frame } => {
                    payload.extend_from_slice(&frame[HEADER_LEN..])
                }
                FromConnection::Return { .. } => {}
                FromConnection::Want { stream: 8 } => down.send(StreamEvent::Grant(4096)),
                _ => panic!("an unexpected report"),
            }
        }
        assert_eq!(payload, b"late reply");
    });
}
