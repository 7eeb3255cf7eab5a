//! The UDP flow actor: one client address of a UDP service, carried as one stream of a tunnel,
//! one datagram per DATA frame (so a datagram arrives whole or not at all, never split or
//! merged). At the local end it sends replies from the service's socket to its client; at the
//! remote end it owns a socket of its own, connected to the backend.
//!
//! Datagrams are never queued without bound: a datagram waits only for credit the tunnel is
//! about to grant (at most [`PENDING_DATAGRAMS`] and [`PENDING_BYTES`]); past that, or while
//! the service's bandwidth is spent, it is dropped and counted, as the network would. What
//! arrives from the tunnel is sent at once (a full socket buffer drops it) and its credit goes
//! straight back. A flow quiet for its service's timeout ends (the stream is reset), and its
//! listener is told, so the next datagram from that client starts a new one.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use bytes::{Bytes, BytesMut};
use log::{debug, info};
use tokio::net::UdpSocket;
use tokio_util::codec::BytesCodec;
use tokio_util::udp::UdpFramed;

use crate::connection::{FromConnection, Keying, StreamEvent, Upstream};
use crate::limits::Slot;
use crate::pace::{Direction, Pace};
use crate::protocol::{put_data_header, ResetCode, HEADER_LEN, MAX_DATA};

/// Datagrams a flow holds while it waits for credit.
pub const PENDING_DATAGRAMS: usize = 32;
/// Messages (datagrams from its listener) a flow's mailbox holds; past it the listener drops.
pub const MAILBOX: usize = 64;
/// Bytes a flow holds while it waits for credit.
pub const PENDING_BYTES: usize = 64 * 1024;
/// The largest UDP payload over IPv4.
pub const MAX_DATAGRAM: usize = 65_507;

pub use crate::metrics::DatagramCounts;

/// Flow -> its listener (the local end's): the flow is running (datagrams for its client go to
/// `flow` from now on) or it ended. Declared beside its sender.
#[derive(Message)]
#[rtype(result = "()")]
pub enum FlowReport {
    Started {
        client: SocketAddr,
        /// Which flow of this client (a later one may have replaced it).
        id: u64,
        flow: Recipient<ToFlow>,
    },
    Ended {
        client: SocketAddr,
        id: u64,
    },
}

/// Listener -> a local flow.
#[derive(Message)]
#[rtype(result = "()")]
pub enum ToFlow {
    /// A datagram from the flow's client.
    Datagram(Bytes),
    /// The flow table needs the room: end now.
    End,
}

/// Which end of the tunnel a flow is.
pub enum FlowEnd {
    /// The local end: replies go from the service's socket to `client`.
    Local {
        socket: Arc<UdpSocket>,
        client: SocketAddr,
        /// Told when the flow starts and ends.
        listener: Recipient<FlowReport>,
        /// The flow's number for its listener.
        id: u64,
    },
    /// The remote end: the flow's own socket, connected to the backend.
    Remote { backend: SocketAddr },
}

/// Where the flow is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FlowState {
    /// OPEN sent or the backend socket being made: nothing is sent into the tunnel yet.
    Opening,
    /// Datagrams flow both ways.
    Open,
    /// Reported closed: the actor is stopping.
    Closed,
}

/// What the flow holds of the tunnel's credit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CreditState {
    /// Holding at most its standing grant; asks when a datagram needs more.
    Idle,
    /// Asked for credit for its pending datagrams.
    Wanting,
}

/// What a flow is given when its tunnel starts it.
pub struct FlowSpec {
    /// The stream the flow is on its tunnel.
    pub stream: u32,
    /// Where the flow reports: its tunnel's queue (`connection/upstream.rs`).
    pub upstream: Upstream,
    /// The service carried, for log lines and its counts.
    pub service: String,
    /// The service's key: each datagram sealed end to end (`None`: plaintext).
    pub keying: Option<Keying>,
    /// The flow ends after this long without a datagram either way.
    pub idle_timeout: Duration,
    /// The service's bandwidth limit, if any.
    pub pace: Option<Arc<Pace>>,
    /// The service's counts.
    pub counts: Arc<DatagramCounts>,
    /// Datagrams to carry once the stream opens (a local flow's first).
    pub first: Vec<Bytes>,
    /// Its places in the node's limits, held for its life.
    pub slots: Vec<Slot>,
}

pub struct UdpFlow {
    /// Where its reports go: its tunnel's queue on this thread.
    upstream: Upstream,
    /// The service carried, for log lines.
    service: String,
    /// The stream the flow is on its tunnel: the id every report and frame carries.
    stream: u32,
    /// Which end it is, and the socket and peer its datagrams go to.
    end: FlowEnd,
    /// The remote end's socket once made (the local end uses the service's).
    socket: Option<Arc<UdpSocket>>,
    /// Where the flow is: opening, open or closed.
    state: FlowState,
    /// Whether it waits for credit it asked for.
    credit: CreditState,
    /// Wire bytes the tunnel let us send.
    grant: u64,
    /// The standing grant kept while idle.
    keep: u64,
    /// Datagrams waiting for credit.
    pending: VecDeque<Bytes>,
    /// Their bytes.
    pending_bytes: usize,
    /// The service's key, if any (`None`: plaintext).
    keying: Option<Keying>,
    /// The flow ends after this long without a datagram either way.
    idle_timeout: Duration,
    /// When a datagram last went either way, for the idle timeout.
    last_active: Instant,
    /// The service's bandwidth limit, if any: datagrams past it are dropped.
    pace: Option<Arc<Pace>>,
    /// The service's datagram counts (carried, delivered, dropped, flows).
    counts: Arc<DatagramCounts>,
    /// Its places in the node's limits, held for its life and given back when it drops.
    _slots: Vec<Slot>,
}

impl UdpFlow {
    pub fn new(spec: FlowSpec, end: FlowEnd) -> UdpFlow {
        let pending_bytes = spec.first.iter().map(Bytes::len).sum();
        UdpFlow {
            upstream: spec.upstream,
            service: spec.service,
            stream: spec.stream,
            socket: match &end {
                FlowEnd::Local { socket, .. } => Some(socket.clone()),
                FlowEnd::Remote { .. } => None,
            },
            end,
            state: FlowState::Opening,
            credit: CreditState::Idle,
            grant: 0,
            keep: 0,
            pending: spec.first.into(),
            pending_bytes,
            keying: spec.keying,
            idle_timeout: spec.idle_timeout,
            last_active: Instant::now(),
            pace: spec.pace,
            counts: spec.counts,
            _slots: spec.slots,
        }
    }

    fn overhead(&self) -> usize {
        Keying::overhead(&self.keying)
    }

    /// A datagram from the client (local end) or the backend (remote end), into the tunnel.
    fn outgoing(&mut self, datagram: Bytes) {
        self.last_active = Instant::now();
        let paced = self
            .pace
            .as_ref()
            .is_some_and(|p| p.wait(Direction::Read).is_some());
        // An empty datagram has no DATA frame (a plaintext one would be empty).
        if datagram.is_empty() || datagram.len() > MAX_DATAGRAM || paced {
            self.counts.dropped.inc();
            return;
        }
        let fits = self.pending.len() < PENDING_DATAGRAMS
            && self.pending_bytes + datagram.len() <= PENDING_BYTES;
        if !fits {
            self.counts.dropped.inc();
            return;
        }
        self.pending_bytes += datagram.len();
        self.pending.push_back(datagram);
        self.flush();
    }

    /// Sends what the grant covers, in order; asks for more if some wait, else gives back what
    /// is beyond the standing grant.
    fn flush(&mut self) {
        if self.state != FlowState::Open {
            return;
        }
        let overhead = self.overhead() as u64;
        while let Some(d) = self.pending.front() {
            let need = d.len() as u64 + overhead;
            if self.grant < need {
                break;
            }
            let Some(d) = self.pending.pop_front() else {
                break;
            };
            self.pending_bytes -= d.len();
            self.send_frame(&d);
        }
        let stream = self.stream;
        if !self.pending.is_empty() {
            if self.credit == CreditState::Idle {
                self.credit = CreditState::Wanting;
                self.report(FromConnection::Want { stream });
            }
            return;
        }
        let unused = self.grant.saturating_sub(self.keep);
        if unused > 0 || self.credit == CreditState::Wanting {
            self.grant -= unused;
            self.report(FromConnection::Return {
                stream,
                bytes: unused,
            });
        }
        self.credit = CreditState::Idle;
    }

    fn send_frame(&mut self, datagram: &[u8]) {
        debug_assert!(datagram.len() + self.overhead() <= MAX_DATA);
        let overhead = self.overhead();
        let mut frame = BytesMut::with_capacity(HEADER_LEN + datagram.len() + overhead);
        put_data_header(&mut frame, self.stream, datagram.len());
        frame.extend_from_slice(datagram);
        Keying::seal_frame(&mut self.keying, &mut frame);
        let len = frame.len() - HEADER_LEN;
        self.grant = self.grant.saturating_sub(len as u64);
        if let Some(p) = &self.pace {
            p.take(Direction::Read, len as u64);
        }
        self.counts.carried.inc();
        let stream = self.stream;
        self.report(FromConnection::Data {
            stream,
            frame: frame.freeze(),
        });
    }

    /// A datagram from the tunnel, to the client or the backend; its credit goes back at once.
    fn incoming(&mut self, mut payload: BytesMut, ctx: &mut Context<Self>) {
        self.last_active = Instant::now();
        let wire = payload.len() as u64;
        if let Err((code, why)) = Keying::open(&mut self.keying, &mut payload) {
            if code == ResetCode::Integrity {
                crate::log_limited!(
                    warn,
                    "stream-integrity",
                    "service {}: flow {}: {why}; resetting the flow",
                    self.service,
                    self.stream
                );
            }
            return self.close(ctx, Some((code, why)));
        }
        let paced = self
            .pace
            .as_ref()
            .is_some_and(|p| p.wait(Direction::Write).is_some());
        let sent = match (&self.socket, &self.end) {
            _ if paced => Err(io::ErrorKind::WouldBlock.into()),
            (Some(s), FlowEnd::Local { client, .. }) => s.try_send_to(&payload, *client),
            (Some(s), FlowEnd::Remote { .. }) => s.try_send(&payload),
            (None, _) => Err(io::ErrorKind::NotConnected.into()),
        };
        match sent {
            Ok(n) => {
                if let Some(p) = &self.pace {
                    p.take(Direction::Write, n as u64);
                }
                self.counts.delivered.inc();
            }
            Err(e) => {
                debug!(
                    "service {}: flow {}: datagram dropped: {e}",
                    self.service, self.stream
                );
                self.counts.dropped.inc();
            }
        }
        let stream = self.stream;
        self.report(FromConnection::Consumed {
            stream,
            bytes: wire,
        });
    }

    fn report(&self, msg: FromConnection) {
        self.upstream.send(msg);
    }

    /// Ends the flow: the tunnel resets the stream (or refuses it) unless `failure` is `None`
    /// and the far end ended it.
    fn close(&mut self, ctx: &mut Context<Self>, failure: Option<(ResetCode, String)>) {
        if self.state != FlowState::Closed {
            self.state = FlowState::Closed;
            let stream = self.stream;
            self.report(FromConnection::Closed { stream, failure });
        }
        ctx.stop();
    }

    /// The remote end: a socket of its own, connected to the backend, read as a stream of
    /// datagrams.
    fn connect_backend(&mut self, backend: SocketAddr, ctx: &mut Context<Self>) {
        let made = std::net::UdpSocket::bind(if backend.is_ipv4() {
            SocketAddr::from(([0, 0, 0, 0], 0))
        } else {
            SocketAddr::from(([0u16; 8], 0))
        })
        .and_then(|s| {
            s.connect(backend)?;
            s.set_nonblocking(true)?;
            Ok(s)
        })
        .and_then(UdpSocket::from_std);
        match made {
            Ok(socket) => {
                let socket = Arc::new(socket);
                self.socket = Some(socket.clone());
                ctx.add_stream(UdpFramed::new(socket, BytesCodec::new()));
                // The remote end is open once its socket is: OPEN_OK goes back now.
                self.state = FlowState::Open;
                let stream = self.stream;
                self.report(FromConnection::Dialed { stream });
            }
            Err(e) => {
                crate::log_limited!(
                    warn,
                    "backend-unreachable",
                    "service {}: cannot make a socket for {backend}: {e}; refusing the flow",
                    self.service
                );
                self.close(ctx, Some((ResetCode::Aborted, format!("no socket: {e}"))));
            }
        }
    }
}

impl Actor for UdpFlow {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(MAILBOX);
        self.counts.flows.inc();
        match &self.end {
            FlowEnd::Local {
                listener,
                client,
                id,
                ..
            } => listener.do_send(FlowReport::Started {
                client: *client,
                id: *id,
                flow: ctx.address().recipient(),
            }),
            FlowEnd::Remote { backend } => {
                let backend = *backend;
                self.connect_backend(backend, ctx);
            }
        }
        let idle = self.idle_timeout;
        let period = (idle / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
        crate::timer::run_interval(ctx, period, move |act: &mut UdpFlow, ctx| {
            if act.last_active.elapsed() >= idle {
                info!(
                    "service {}: flow {} idle for {} ms; ending it",
                    act.service,
                    act.stream,
                    idle.as_millis()
                );
                act.close(ctx, Some((ResetCode::IdleTimeout, "idle timeout".into())));
            }
        });
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        self.counts.flows.dec();
        if self.state != FlowState::Closed {
            self.state = FlowState::Closed;
            let stream = self.stream;
            self.report(FromConnection::Closed {
                stream,
                failure: Some((ResetCode::Aborted, "the flow ended".into())),
            });
        }
        if let FlowEnd::Local {
            listener,
            client,
            id,
            ..
        } = &self.end
        {
            listener.do_send(FlowReport::Ended {
                client: *client,
                id: *id,
            });
        }
    }
}

impl Handler<StreamEvent> for UdpFlow {
    type Result = ();

    fn handle(&mut self, msg: StreamEvent, ctx: &mut Self::Context) {
        match msg {
            StreamEvent::Opened { nonce } => {
                if let Err(why) = Keying::opened(&mut self.keying, nonce) {
                    return self.close(ctx, Some((ResetCode::Aborted, why.to_owned())));
                }
                self.state = FlowState::Open;
                self.flush();
            }
            StreamEvent::Grant(n) => {
                self.grant += n;
                self.flush();
            }
            StreamEvent::Standing(n) => self.keep = n,
            StreamEvent::Data(payload) => self.incoming(payload, ctx),
            // A flow has no half-close: the far end ended it.
            StreamEvent::Fin => self.close(ctx, None),
            StreamEvent::Abort => {
                self.state = FlowState::Closed;
                ctx.stop();
            }
        }
    }
}

impl Handler<ToFlow> for UdpFlow {
    type Result = ();

    fn handle(&mut self, msg: ToFlow, ctx: &mut Self::Context) {
        match msg {
            ToFlow::Datagram(d) => self.outgoing(d),
            ToFlow::End => self.close(
                ctx,
                Some((ResetCode::IdleTimeout, "flow table full".into())),
            ),
        }
    }
}

/// Replies from the backend (the remote end's own socket).
impl StreamHandler<Result<(BytesMut, SocketAddr), io::Error>> for UdpFlow {
    fn handle(
        &mut self,
        item: Result<(BytesMut, SocketAddr), io::Error>,
        _ctx: &mut Self::Context,
    ) {
        match item {
            Ok((datagram, _)) => self.outgoing(datagram.freeze()),
            // An ICMP unreachable from the backend, say: the flow goes on.
            Err(e) => debug!("service {}: flow {}: {e}", self.service, self.stream),
        }
    }

    fn finished(&mut self, _ctx: &mut Self::Context) {}
}

#[cfg(feature = "fault-injection")]
impl Handler<crate::Crash> for UdpFlow {
    type Result = ();

    fn handle(&mut self, _: crate::Crash, _ctx: &mut Self::Context) {
        panic!(
            "fault injected into flow {} of service {}",
            self.stream, self.service
        );
    }
}

#[cfg(test)]
mod tests {
    //! The flow actor alone: a real loopback UDP socket pair, stand-ins in its tunnel's
    //! and its listener's places; datagrams compared byte for byte.

    use tokio::sync::mpsc;

    use super::*;

    struct Stub<M: Message<Result = ()> + Send>(mpsc::UnboundedSender<M>);

    impl<M: Message<Result = ()> + Send + 'static> Actor for Stub<M> {
        type Context = Context<Self>;
    }

    impl<M: Message<Result = ()> + Send + 'static> Handler<M> for Stub<M> {
        type Result = ();

        fn handle(&mut self, msg: M, _ctx: &mut Self::Context) {
            let _ = self.0.send(msg);
        }
    }

    async fn next<M>(rx: &mut mpsc::UnboundedReceiver<M>) -> M {
        tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("within 5 s")
            .expect("stub alive")
    }

    #[test]
    fn a_local_flow_carries_whole_datagrams_against_credit_and_replies_to_its_client() {
        actix_rt::System::new().block_on(async {
            let service = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind"));
            let client = UdpSocket::bind("127.0.0.1:0").await.expect("client");
            let (ttx, mut reports) = mpsc::unbounded_channel::<FromConnection>();
            let (ltx, mut heard) = mpsc::unbounded_channel::<FlowReport>();
            let spec = FlowSpec {
                stream: 3,
                upstream: Upstream::forwarded_to(ttx),
                service: "dns".into(),
                keying: None,
                idle_timeout: Duration::from_secs(60),
                pace: None,
                counts: Arc::default(),
                first: vec![Bytes::from_static(b"first")],
                slots: Vec::new(),
            };
            let end = FlowEnd::Local {
                socket: service.clone(),
                client: client.local_addr().expect("addr"),
                listener: Stub(ltx).start().recipient(),
                id: 1,
            };
            let flow = UdpFlow::new(spec, end).start();
            let FlowReport::Started { id: 1, .. } = next(&mut heard).await else {
                panic!("not started");
            };
            // Nothing goes before the stream is open and credit is there.
            flow.do_send(StreamEvent::Opened { nonce: None });
            assert!(matches!(
                next(&mut reports).await,
                FromConnection::Want { stream: 3 }
            ));
            flow.do_send(StreamEvent::Grant(100));
            let FromConnection::Data { frame, .. } = next(&mut reports).await else {
                panic!("no data");
            };
            assert_eq!(&frame[HEADER_LEN..], b"first");
            // The rest of the grant goes back once nothing waits.
            assert!(matches!(
                next(&mut reports).await,
                FromConnection::Return { bytes: 95, .. }
            ));
            // A datagram larger than the credit waits for it, whole.
            let big = vec![5u8; 9000];
            flow.do_send(ToFlow::Datagram(Bytes::from(big.clone())));
            assert!(matches!(
                next(&mut reports).await,
                FromConnection::Want { .. }
            ));
            flow.do_send(StreamEvent::Grant(9000));
            let FromConnection::Data { frame, .. } = next(&mut reports).await else {
                panic!("no data");
            };
            assert_eq!(&frame[HEADER_LEN..], &big[..]);
            // A reply from the tunnel reaches the client as one datagram; its credit goes back.
            flow.do_send(StreamEvent::Data(BytesMut::from(&b"answer"[..])));
            let mut buf = [0u8; 64];
            let (n, from) =
                tokio::time::timeout(Duration::from_secs(5), client.recv_from(&mut buf))
                    .await
                    .expect("reply within 5 s")
                    .expect("reply");
            assert_eq!(
                (&buf[..n], from),
                (&b"answer"[..], service.local_addr().expect("addr"))
            );
            loop {
                if let FromConnection::Consumed { bytes, .. } = next(&mut reports).await {
                    assert_eq!(bytes, 6);
                    break;
                }
            }
            // Reset by the far end: the listener hears the flow ended.
            flow.do_send(StreamEvent::Abort);
            assert!(matches!(
                next(&mut heard).await,
                FlowReport::Ended { id: 1, .. }
            ));
        });
    }
}
