//! The tunnel actor: one per tunnel TCP connection. It multiplexes the streams of every service
//! bound to the tunnel, and owns both levels of flow control. A stream's life is in
//! `actors/STREAMS.md`; the arithmetic is in plain types, [`crate::credit`] and
//! [`crate::schedule`].
//!
//! Sending: a connection actor reads its socket only against a *grant* from this actor, carved
//! out of the peer's stream window and the peer's tunnel window together, so every byte a
//! connection hands over already has credit and nothing waits here for credit. A connection asks
//! only when its socket is readable and hands back what it did not use when the socket runs dry,
//! so idle streams reserve nothing. What the tunnel holds towards its peer (granted or queued) is
//! capped per stream and per tunnel, whatever the peer grants; frames queue per stream and leave
//! deficit round-robin, so one bulk stream delays a small frame by one frame at most; streams
//! waiting for credit are served round-robin.
//!
//! Receiving: a DATA frame is handed straight to its connection actor (the reader never waits on
//! a stream), and its tunnel credit goes back at once: what a stream holds unread, its own window
//! bounds. Stream credit goes back only once the connection reports the bytes written to its
//! socket, and the window grows while it limits the stream. A peer that sends past a stream's
//! window gets that stream reset; past the tunnel window, the tunnel is closed.

use foldhash::{HashMap, HashMapExt};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use bytes::{Buf, Bytes, BytesMut};
use log::{debug, error};
use serde::Serialize;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio_util::codec::FramedRead;

use crate::cipher::fresh_nonce;
use crate::connection::{
    Connection, Downstream, FromConnection, Keying, StreamEvent, StreamSpec, Target, Upstream,
};
use crate::credit::{RecvWindow, Rtt};
use crate::datagram::{FlowEnd, FlowReport, FlowSpec, UdpFlow};
use crate::handshake::Terms;
use crate::io::{socket_queues, try_write_now, write_all_vectored, SocketQueues};
use crate::limits::{Escaped, Gauge, Slot, TokenBucket};
use crate::metrics::{metrics, ActiveConnection, Refused, ServiceMetrics, TunnelMetrics};
use crate::protocol::{
    Frame, FrameCodec, GoAway, KeyedOpen, ProtocolError, ResetCode, HEADER_LEN, MAX_DATA,
    NONCE_LEN, TAG_LEN, TUNNEL_STREAM,
};
use crate::protocol::{Origin, Protocol};
use crate::proxy_header;
use crate::record::{SealedFrameCodec, SessionKeys, RECORD_HEADER};
use crate::routes::{CarryClient, Client, RemoteRoute};
use crate::schedule::SendQueue;
use crate::send_credit::{Overflow, SendCredit};
use crate::service::UDP_DEFAULT_TIMEOUT;
use crate::{Settings, Shared, Side};
use reader::Reader;

mod clients;
mod commands;
mod group;
mod heartbeat;
mod peer;
mod placement;
mod reader;
mod send;
mod streams;
mod writer;

#[cfg(feature = "fault-injection")]
pub use commands::CrashStream;
pub use commands::{CloseService, CloseTunnel};
use group::{Group, TunnelWide};
pub use group::{JoinLane, Snapshot, MAX_LANES};
use placement::{Lanes, Seat};
use streams::ServiceHandles;

/// Tunnel -> its owner (the Registry): the tunnel actor stopped. A report going up, declared
/// here beside its sender.
#[derive(Message)]
#[rtype(result = "()")]
pub struct TunnelDown {
    /// The tunnel's name.
    pub name: String,
    /// Which connection of the tunnel this was: a stale report is told from a current one.
    pub generation: u64,
    /// Why it stopped, for the log and `GET /config`.
    pub reason: String,
    /// The peer's goodbye, if it said one.
    pub goaway: Option<GoAway>,
    /// The peer sent at least one frame.
    pub heard: bool,
    /// How long the tunnel was up.
    pub lasted: Duration,
    /// The peer's address, for the rate limit of lines about it.
    pub peer_ip: std::net::IpAddr,
}

/// One write to the tunnel socket carries at most about this much data, so that control frames
/// queued meanwhile wait for no more than this.
const WRITE_BATCH: usize = 64 * 1024;
/// What one tunnel holds towards its peer at most (granted to connections, or queued here):
/// enough to keep the socket busy, little enough that a new frame never waits long.
const SEND_BUDGET: u64 = 1 << 20;
/// (Per stream, the grant caps and the standing grants are in [`crate::send_credit`].)
/// Unsent bytes the kernel may hold for the tunnel socket (`TCP_NOTSENT_LOWAT`): the queue that
/// no scheduling can reorder is kept this small.
const NOTSENT_LOWAT: u32 = 64 * 1024;
/// How many streams at their initial windows the tunnel window covers at least, once that many
/// are open (2 MiB with the defaults): a tunnel window smaller than its busy streams' windows
/// together is what limits them, and on a busy machine it does not grow (credit comes back when
/// the receiving thread is next scheduled, which the growth guards cannot tell from a reader
/// that is the limit itself). iperf3 `-P 8` through a loopback pair on two shared cores carried
/// 602 MiB/s with the tunnel window at 256 - 1,024 KiB, 971 with 2 MiB (`bench/RESULTS.md`,
/// *Eight streams from one reading thread*).
/// What this lets bulk hold in flight ahead of a small exchange on the same lane is each busy
/// stream's window, up to this many.
const STREAMS_COVERED: u64 = 8;
/// Control frames a peer can make us queue (pongs, window updates) while not reading them.
const MAX_CONTROL_QUEUE: usize = 1 << 20;
/// DATA bytes received during a PING's round trip below which it measured the path, not a queue
/// of the peer's bulk (one record's worth).
const QUIET_BYTES: u64 = 64 * 1024;
/// Extra PINGs soon after the tunnel comes up, while it is most likely quiet: the first
/// round-trip samples window growth relies on.
const EARLY_PINGS: [Duration; 2] = [Duration::from_millis(20), Duration::from_millis(200)];
/// How long a closing tunnel may take to flush its goodbye.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Dialer,
    Acceptor,
}

/// Where a stream is in its life, as its tunnel sees it (`actors/STREAMS.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamState {
    /// OPEN sent (local) or received (remote); no OPEN_OK yet: no data may flow.
    Opening,
    /// OPEN_OK exchanged: data flows both ways.
    Open,
    /// Our side sent FIN: it reads no more, so it needs no more credit; the peer may still send.
    HalfClosed,
}

impl StreamState {
    fn name(self) -> &'static str {
        match self {
            StreamState::Opening => "opening",
            StreamState::Open => "open",
            StreamState::HalfClosed => "half-closed",
        }
    }
}

/// The actor carrying one stream's socket, as its tunnel addresses it: a TCP connection or a UDP
/// flow.
pub(crate) struct StreamActor {
    /// Where the stream's events go.
    events: StreamEvents,
    /// The fault hook of the actor (tests of supervision).
    #[cfg(feature = "fault-injection")]
    crash: Recipient<crate::Crash>,
}

impl Drop for StreamActor {
    /// The tunnel lets go of the stream: a connection's lasting item may end
    /// (`connection/watch.rs`).
    fn drop(&mut self) {
        if let StreamEvents::Connection(down) = &self.events {
            down.release();
        }
    }
}

/// Where a stream's events go.
enum StreamEvents {
    /// A TCP connection: the queue and socket write half it shares with its tunnel
    /// (`connection/downstream.rs`), which also takes direct writes.
    Connection(Rc<Downstream>),
    /// A UDP flow: its actor's mailbox.
    Flow(Recipient<StreamEvent>),
}

impl StreamActor {
    fn do_send(&self, event: StreamEvent) {
        match &self.events {
            StreamEvents::Connection(down) => down.send(event),
            StreamEvents::Flow(flow) => flow.do_send(event),
        }
    }

    /// The DATA payload the stream's connection sent straight to the tunnel's socket since the
    /// tunnel last counted (`connection/upstream.rs`).
    fn take_unaccounted(&self) -> u64 {
        match &self.events {
            StreamEvents::Connection(down) => down.take_unaccounted(),
            StreamEvents::Flow(_) => 0,
        }
    }

    /// Writes what the connection's socket takes of `bytes` now, if nothing is ahead of them:
    /// how many went.
    fn write_direct(&self, bytes: &[u8]) -> usize {
        match &self.events {
            StreamEvents::Connection(down) => down.write_direct(bytes),
            StreamEvents::Flow(_) => 0,
        }
    }

    /// A connection's actor, reached through what it shares with its tunnel.
    fn connection(conn: Connection) -> StreamActor {
        let down = conn.downstream();
        let _addr = conn.start();
        StreamActor {
            events: StreamEvents::Connection(down),
            #[cfg(feature = "fault-injection")]
            crash: _addr.recipient(),
        }
    }

    /// A UDP flow's actor.
    fn flow(flow: Addr<UdpFlow>) -> StreamActor {
        StreamActor {
            #[cfg(feature = "fault-injection")]
            crash: flow.clone().recipient(),
            events: StreamEvents::Flow(flow.recipient()),
        }
    }
}

/// One multiplexed stream, as the tunnel sees it.
struct StreamEntry {
    /// The actor of the stream's socket (a connection or a UDP flow, started by this tunnel).
    conn: StreamActor,
    /// Which service the stream carries, for `GET /config` and for closing a deleted service.
    service: String,
    /// Local: we opened it for a client; remote: the peer opened it towards our backend.
    side: Side,
    /// Our stream nonce of a keyed stream the peer opened, sent in OPEN_OK.
    accept_nonce: Option<[u8; NONCE_LEN]>,
    /// Where the stream is in its life (see `STREAMS.md`).
    state: StreamState,
    /// Its place among the tunnel's lanes, counted while it lives (`placement.rs`).
    _seat: Seat,
    /// What the peer may send on this stream: grows while the stream is window-limited.
    recv: RecvWindow,
    /// Wire bytes of this stream, for `GET /config`.
    bytes_sent: u64,
    /// Wire bytes received on it, for `GET /config`.
    bytes_received: u64,
    /// Its service's byte counters in `GET /metrics`.
    service_metrics: ServiceMetrics,
    /// Counts the stream in its service's active connections while it lives.
    _active: ActiveConnection,
}

/// A connected tunnel's counters.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct TunnelCounters {
    /// The peer's address.
    pub peer: Option<String>,
    /// Streams open now.
    pub streams: usize,
    /// Streams opened, ever.
    pub streams_opened: u64,
    /// DATA payload bytes sent.
    pub bytes_sent: u64,
    /// DATA payload bytes received.
    pub bytes_received: u64,
    /// The peer's tunnel credit not yet granted.
    pub send_window: u64,
    /// Bytes queued in the tunnel, not yet written to its socket.
    pub queued_bytes: usize,
    /// The tunnel window offered to the peer now: what it may have in flight and unread
    /// towards us (it grows while it limits the peer, to the path's bandwidth-delay product).
    pub receive_window: u64,
    /// Where the tunnel's bytes wait in the kernel: its sockets' send and receive queues.
    pub socket: SocketQueues,
    /// The tunnel's TCP connections (`[tunnel] lanes` on its dialer), each on a data thread.
    pub lanes: usize,
    /// The AEAD sealing the tunnel's records, or `"none"` (both nodes turned sealing off).
    pub transport: &'static str,
    /// Times this end replaced its sending key.
    pub rekeys: u64,
}

/// What a tunnel answers [`Snapshot`]: its counters, and its streams if asked.
#[derive(Debug, Clone, Default)]
pub struct TunnelStats {
    /// The tunnel's own counters, shown in its `GET /config` entry.
    pub counters: TunnelCounters,
    /// Its live streams (none unless asked for).
    pub connections: Vec<StreamStats>,
}

/// One stream as its tunnel reports it (`GET /config` `connections`).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct StreamStats {
    /// Its id on the tunnel.
    pub stream: u32,
    /// The service it carries.
    pub service: String,
    /// Which end of the service this node is.
    pub side: Side,
    /// `opening`, `open` or `half-closed` (our side sent FIN).
    pub state: &'static str,
    /// Payload bytes sent to the peer.
    pub bytes_sent: u64,
    /// Payload bytes received from the peer.
    pub bytes_received: u64,
    /// The stream's receive window now (it grows while window-limited, shrinks when idle).
    pub window: u64,
    /// The tunnel connection it travels on (0: the first; `[tunnel] lanes`); its id is that
    /// lane's.
    pub lane: usize,
}

/// One tunnel connection as its Registry hands it over: who, on which socket, on what terms.
pub struct TunnelLink {
    /// The tunnel's name, shared by both ends.
    pub name: String,
    /// Which incarnation of the name this is.
    pub generation: u64,
    /// Which end dialled.
    pub role: Role,
    /// The socket, not yet registered with the thread the tunnel runs on.
    pub sock: std::net::TcpStream,
    /// What the peer granted in the handshake.
    pub peer: Terms,
    /// The peer proved a secret.
    pub authenticated: bool,
    /// The record layer's keys from the handshake; `None`: frames go in the clear.
    pub keys: Option<SessionKeys>,
    /// The data thread it runs on, by number (`None`: no data threads), for placing streams.
    pub thread: Option<usize>,
}

/// A tunnel's end, as one state.
enum Life {
    /// Carrying streams.
    Open,
    /// A goodbye (GOAWAY) is being flushed: stop once the queues are empty; `reason` is told
    /// to the Registry.
    Closing { reason: String },
    /// Stopping: why, for the Registry's report, and the peer's goodbye if it sent one.
    Down {
        reason: String,
        goaway: Option<GoAway>,
    },
}

/// What the peer is: its terms, its address, whether it proved a secret.
struct PeerInfo {
    /// What the peer granted us in the handshake: its windows and stream limit.
    terms: Terms,
    /// Its address, for `GET /config` and for rate-limiting lines about it.
    addr: Option<SocketAddr>,
    /// It proved a secret: refusals may tell it why.
    authenticated: bool,
}

/// What one lane lets its peer open: its stream ids, and what all of the tunnel's lanes count
/// together (the two stream counts, the dial rate, the backend descriptors).
struct StreamCounts {
    /// The next id of a stream we open (odd for the dialer, even for the acceptor).
    next_id: u32,
    /// Shared by the tunnel's lanes, so that its limits bound the tunnel, not each lane.
    wide: TunnelWide,
}

/// The receiving side's tunnel-level accounting.
struct Receive {
    /// What the peer may have in flight over the whole tunnel. Credit goes back as soon as a
    /// frame is handed to its stream, so bytes a stalled stream holds never hold the tunnel: each
    /// stream's own window bounds those.
    window: RecvWindow,
    /// The sum of the streams' receive targets, against `max_tunnel_window`: their growth budget.
    windows_total: u64,
    /// Tunnel credit held back while the node's buffer budget is spent: returned to the peer
    /// once streams have written enough for the budget to have room again.
    withheld: u64,
}

/// The heartbeat: pings, the round trip, and when the peer was last heard.
struct Heartbeat {
    /// The path's round trip, from PING/PONG: decides whether a window is what limits a stream.
    rtt: Rtt,
    /// The PING in flight: its value, when it went, and the DATA bytes received by then (a
    /// round trip taken while bulk arrived measured our own queue, not the path).
    ping_sent: Option<(u64, Instant, u64)>,
    /// When the last frame came: past the heartbeat timeout the peer is dead.
    last_heard: Instant,
    /// The peer has sent at least one frame: the tunnel worked, it did not just open and drop.
    heard: bool,
    /// When the tunnel came up, to tell a lasting tunnel from one that flaps.
    up_since: Instant,
    /// PINGs sent, the next one's value.
    pings: u64,
}

/// The tunnel's own counters for `GET /config`.
#[derive(Default)]
struct Counters {
    /// Streams opened (either end), ever.
    streams_opened: u64,
    /// DATA payload bytes sent to the peer.
    bytes_sent: u64,
    /// DATA payload bytes received from the peer.
    bytes_received: u64,
}

pub struct Tunnel {
    /// The tunnel's name, shared by both ends.
    name: String,
    /// Which incarnation of the name this is, so the Registry ignores a stale report.
    generation: u64,
    /// Who dialled: decides stream id parity and what happens after a drop.
    role: Role,
    /// Where the tunnel reports that it stopped (its Registry).
    registry: Recipient<TunnelDown>,
    /// The node's settings, limits' accounting and route table.
    shared: Shared,
    /// The peer: its terms, address and proof.
    peer: PeerInfo,
    /// The tunnel's socket until the actor starts: registered with the thread it runs on there
    /// (it may have been accepted or dialled on another).
    sock: Option<std::net::TcpStream>,
    /// The socket's descriptor once started, to ask the kernel what waits in its queues.
    fd: Option<std::os::fd::RawFd>,
    /// The handshake's keys until the actor starts, if the tunnel is sealed: then the sealer of
    /// the way out and the opener of the reader.
    keys: Option<SessionKeys>,
    /// Whether a write is due, and how the lasting writer item is woken for it (`writer.rs`).
    flushing: writer::Flushing,
    /// Its connections' reports, queued on this thread and taken before each write; and its way
    /// out (the socket's write half and the sealer), which it lends them while nothing is queued
    /// (`connection/upstream.rs`).
    upstream: Upstream,
    /// Encoded control frames, written ahead of data.
    control: BytesMut,
    /// Encoded DATA and FIN frames, per stream, taken round-robin at write time.
    sched: SendQueue,
    /// The metric handles of the services this lane carried, for its new streams.
    service_handles: ServiceHandles,
    /// The streams carried now, by id.
    streams: HashMap<u32, StreamEntry>,
    /// Stream ids and counts, and what a peer's OPEN may take.
    counts: StreamCounts,
    /// What we may send the peer and what our connections hold of it (grants, standing grants,
    /// streams starving for tunnel credit): a plain type with its own invariants.
    credit: SendCredit,
    /// What the peer may send us, and the credit held back for the node's buffer budget.
    receive: Receive,
    /// Pings, the round trip, and when the peer was last heard.
    beat: Heartbeat,
    /// Open, saying goodbye, or going down (and why): one state for the tunnel's end.
    life: Life,
    /// Streams and bytes, for `GET /config`.
    stats: Counters,
    /// The tunnel's series in `GET /metrics` (they belong to the name: a reconnect finds them).
    metrics: TunnelMetrics,
    /// What this actor adds to the tunnel's gauges now: its lanes add theirs to the same series.
    published: Published,
    /// The head of the tunnel, or one of its other lanes (`group.rs`).
    group: Group,
    /// This connection's number among the tunnel's lanes (0: the head).
    lane: usize,
    /// Where the tunnel's lanes' streams are, by service: a new client's lane (`placement.rs`).
    lanes: Lanes,
}

/// What one tunnel actor adds to its tunnel's gauges: each lane publishes the change in its
/// own figures, so the series carry the sum over the lanes.
#[derive(Default)]
struct Published {
    /// Streams open on this lane, as last added to the tunnel's gauge.
    streams: i64,
    /// Bytes queued here, as last added.
    queued: i64,
    /// Send credit held here, as last added.
    send_window: i64,
    /// Receive window offered here, as last added.
    receive_window: i64,
    /// This lane's socket's unsent bytes, as last added.
    unsent: i64,
    /// Its unacknowledged bytes, as last added.
    unacked: i64,
    /// Its unread bytes, as last added.
    unread: i64,
}

/// Moves `gauge` by the change from what this actor added before (`mine`) to `now`.
fn publish(gauge: &prometheus_client::metrics::gauge::Gauge, mine: &mut i64, now: u64) {
    let now = i64::try_from(now).unwrap_or(i64::MAX);
    gauge.inc_by(now.saturating_sub(*mine));
    *mine = now;
}

impl Tunnel {
    pub fn new(link: TunnelLink, registry: Recipient<TunnelDown>, shared: Shared) -> Tunnel {
        let TunnelLink {
            name,
            generation,
            role,
            sock,
            peer,
            authenticated,
            keys,
            thread,
        } = link;
        let Shared {
            settings,
            usage,
            routes,
        } = shared;
        let counts = StreamCounts {
            // The dialer opens odd streams, the acceptor even ones, so ids never collide.
            next_id: if role == Role::Dialer { 1 } else { 2 },
            wide: TunnelWide::new(&settings, &usage),
        };
        Tunnel {
            metrics: metrics().tunnel(&name),
            name,
            generation,
            role,
            registry,
            peer: PeerInfo {
                terms: peer,
                addr: sock.peer_addr().ok(),
                authenticated,
            },
            sock: Some(sock),
            fd: None,
            keys,
            flushing: writer::Flushing::default(),
            upstream: Upstream::new(),
            control: BytesMut::new(),
            sched: SendQueue::default(),
            service_handles: ServiceHandles::default(),
            streams: HashMap::new(),
            counts,
            credit: SendCredit::new(
                u64::from(peer.windows.tunnel),
                SEND_BUDGET.min(u64::from(settings.tunnel_window)),
            ),
            receive: Receive {
                window: RecvWindow::new(
                    u64::from(settings.tunnel_window),
                    u64::from(settings.max_tunnel_window),
                    Instant::now(),
                ),
                windows_total: 0,
                withheld: 0,
            },
            beat: Heartbeat {
                rtt: Rtt::default(),
                ping_sent: None,
                last_heard: Instant::now(),
                heard: false,
                up_since: Instant::now(),
                pings: 0,
            },
            life: Life::Open,
            stats: Counters::default(),
            published: Published::default(),
            group: Group::Head { lanes: Vec::new() },
            lane: 0,
            lanes: {
                let lanes = Lanes::new(usage.clone());
                lanes.lock().set_thread(0, thread);
                lanes
            },
            shared: Shared {
                settings,
                usage,
                routes,
            },
        }
    }

    /// The credit and queue gauges of `GET /metrics`: set after each write and each second.
    fn publish_gauges(&mut self) {
        let queued = (self.sched.bytes() + self.control.len()) as u64;
        let (m, p) = (&self.metrics, &mut self.published);
        publish(&m.queued, &mut p.queued, queued);
        publish(&m.send_window, &mut p.send_window, self.credit.window());
    }

    /// The stream gauge of `GET /metrics`, at each stream's start and end.
    fn publish_streams(&mut self) {
        let n = self.streams.len() as u64;
        publish(&self.metrics.streams, &mut self.published.streams, n);
    }

    /// The kernel's queues of the tunnel socket (zeros before the actor starts).
    fn socket_queues(&self) -> SocketQueues {
        self.fd.map(socket_queues).unwrap_or_default()
    }

    /// The kernel-side gauges of `GET /metrics`: set each second (three system calls).
    fn publish_socket_gauges(&mut self) {
        let q = self.socket_queues();
        let window = self.receive.window.target();
        let (m, p) = (&self.metrics, &mut self.published);
        publish(&m.socket_unsent, &mut p.unsent, q.unsent);
        publish(&m.socket_unacked, &mut p.unacked, q.unacked);
        publish(&m.socket_unread, &mut p.unread, q.unread);
        publish(&m.receive_window, &mut p.receive_window, window);
    }

    /// Takes this actor's share out of the tunnel's gauges: it stopped.
    fn unpublish(&mut self) {
        let (m, p) = (&self.metrics, &mut self.published);
        publish(&m.streams, &mut p.streams, 0);
        publish(&m.queued, &mut p.queued, 0);
        publish(&m.send_window, &mut p.send_window, 0);
        publish(&m.receive_window, &mut p.receive_window, 0);
        publish(&m.socket_unsent, &mut p.unsent, 0);
        publish(&m.socket_unacked, &mut p.unacked, 0);
        publish(&m.socket_unread, &mut p.unread, 0);
        if matches!(self.group, Group::Head { .. }) {
            m.lanes.set(0);
        }
    }

    /// The peer's address, for lines rate-limited per peer.
    fn peer_ip(&self) -> std::net::IpAddr {
        self.peer
            .addr
            .map_or(std::net::IpAddr::from([0u8, 0, 0, 0]), |a| a.ip())
    }

    fn fail(&mut self, ctx: &mut Context<Self>, reason: String) {
        self.go_down(reason, None);
        ctx.stop();
    }

    /// Marks the tunnel going down: the first reason stands (a goodbye being flushed keeps its
    /// own); a goodbye from the peer is kept whenever it comes.
    fn go_down(&mut self, reason: String, goaway: Option<GoAway>) {
        self.upstream.set_open(false);
        self.life = match std::mem::replace(&mut self.life, Life::Open) {
            Life::Open => Life::Down { reason, goaway },
            Life::Closing { reason } => Life::Down { reason, goaway },
            Life::Down {
                reason,
                goaway: before,
            } => Life::Down {
                reason,
                goaway: before.or(goaway),
            },
        };
    }
}

impl Actor for Tunnel {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(256);
        if let Some(sock) = self.sock.take() {
            crate::io::set_notsent_lowat(&sock, NOTSENT_LOWAT);
            self.fd = Some(std::os::fd::AsRawFd::as_raw_fd(&sock));
            let sock = match TcpStream::from_std(sock) {
                Ok(s) => s,
                Err(e) => {
                    self.fail(ctx, format!("cannot take the socket over: {e}"));
                    return;
                }
            };
            let (reader, writer) = sock.into_split();
            self.upstream.out().writer = Some(writer);
            self.start_writer(ctx);
            match self.keys.take() {
                Some(keys) => {
                    let dialer = self.role == Role::Dialer;
                    let (sealer, opener) = keys.split(dialer, self.shared.settings.rekey);
                    self.upstream.out().sealer = Some(Box::new(sealer));
                    ctx.spawn(Reader::new(FramedRead::with_capacity(
                        reader,
                        SealedFrameCodec::new(opener),
                        // The largest record a writer makes (one largest DATA frame); a larger
                        // one (up to MAX_RECORD) grows the buffer when it comes.
                        RECORD_HEADER + HEADER_LEN + MAX_DATA + TAG_LEN,
                    )));
                }
                None => {
                    ctx.spawn(Reader::new(FramedRead::with_capacity(
                        reader,
                        FrameCodec,
                        HEADER_LEN + MAX_DATA,
                    )));
                }
            }
        }
        if matches!(self.group, Group::Head { .. }) {
            self.metrics.lanes.set(1);
        }
        // A first ping at once, so a working peer is heard within a round trip. Pings keep an
        // idle tunnel audible; silence is checked on a shorter period of its own, so a dead peer
        // is declared within the timeout, not the timeout plus an interval.
        self.send_ping(ctx);
        for after in EARLY_PINGS {
            crate::timer::run_later(ctx, after, |act: &mut Tunnel, ctx| {
                if act.beat.ping_sent.is_none() {
                    act.send_ping(ctx);
                }
            });
        }
        self.start_heartbeat(ctx);
    }
    /// Also runs when a handler panicked (actix stops the actor as its task unwinds): keep it
    /// to sends and logging, which cannot panic again.
    fn stopped(&mut self, _ctx: &mut Self::Context) {
        let reason = if std::thread::panicking() {
            error!(
                "tunnel {}: the tunnel actor panicked; closing its {} streams",
                self.name,
                self.streams.len()
            );
            "the tunnel actor panicked".to_owned()
        } else {
            let reason = match &self.life {
                Life::Open => "closed".to_owned(),
                Life::Closing { reason } | Life::Down { reason, .. } => reason.clone(),
            };
            log_limited_for!(
                info,
                "tunnel-down",
                self.peer_ip(),
                "tunnel {} down ({} streams closed): {reason}",
                self.name,
                self.streams.len()
            );
            reason
        };
        // The socket's write half and the keys go now, not with the last connection.
        self.upstream.close();
        for (_, e) in self.streams.drain() {
            self.shared.usage.buffers.release(e.recv.buffered());
            e.conn.do_send(StreamEvent::Abort);
        }
        self.unpublish();
        self.stop_lanes();
        self.registry.do_send(TunnelDown {
            name: self.name.clone(),
            generation: self.generation,
            reason,
            goaway: match self.life {
                Life::Down { goaway, .. } => goaway,
                _ => None,
            },
            heard: self.beat.heard,
            lasted: self.beat.up_since.elapsed(),
            peer_ip: self.peer_ip(),
        });
    }
}

impl Tunnel {
    /// The periodic check: idle windows shrink, gauges are published, a round-trip sample is
    /// taken while streams are open, withheld credit is released, and a silent peer fails the
    /// tunnel.
    fn check(&mut self, now: Instant, ctx: &mut Context<Self>) {
        let mut total = 0;
        for e in self.streams.values_mut() {
            e.recv.shrink_if_idle(now);
            total += e.recv.target();
        }
        self.receive.windows_total = total;
        if let Some(sealer) = &mut self.upstream.out().sealer {
            sealer.check_age(now);
        }
        self.publish_gauges();
        self.publish_socket_gauges();
        // While streams are open, a round-trip sample each check, not only each heartbeat:
        // window growth uses the smallest quiet one, and one taken while the machine was
        // busy would let windows grow past what the path needs. (An idle tunnel pings at its
        // heartbeat interval only.)
        if self.beat.ping_sent.is_none() && !self.streams.is_empty() {
            self.send_ping(ctx);
        }
        // Other tunnels' streams may have made room in the node's buffer budget.
        self.release_withheld(ctx);
        let silent = self.beat.last_heard.elapsed();
        if silent > self.shared.settings.heartbeat_timeout {
            self.fail(ctx, format!("peer silent for {} ms", silent.as_millis()));
        }
    }
}

#[cfg(test)]
mod tests;
