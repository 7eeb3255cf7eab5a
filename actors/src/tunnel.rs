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

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use bytes::{Bytes, BytesMut};
use log::{debug, error};
use serde::Serialize;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio_util::codec::FramedRead;

use crate::cipher::fresh_nonce;
use crate::connection::{Connection, FromConnection, Keying, StreamEvent};
use crate::credit::{RecvWindow, Rtt};
use crate::handshake::Terms;
use crate::io::write_all_vectored;
use crate::limits::{Escaped, Gauge, TokenBucket, Usage};
use crate::metrics::{metrics, ActiveConnection, Refused, ServiceMetrics, TunnelMetrics};
use crate::protocol::{
    Frame, FrameCodec, GoAway, KeyedOpen, ProtocolError, ResetCode, HEADER_LEN, MAX_DATA,
    NONCE_LEN, TUNNEL_STREAM,
};
use crate::routes::{CarryClient, RouteTable};
use crate::schedule::SendQueue;
use crate::{Settings, Side};

/// Tunnel -> its owner (the Registry): the tunnel actor stopped. A report going up, declared
/// here beside its sender.
#[derive(Message)]
#[rtype(result = "()")]
pub struct TunnelDown {
    pub name: String,
    pub generation: u64,
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

/// Most credit one stream holds at once; a stream is topped up when below half of it.
const GRANT_MAX: u64 = 128 * 1024;
/// One write to the tunnel socket carries at most about this much data, so that control frames
/// queued meanwhile wait for no more than this.
const WRITE_BATCH: usize = 128 * 1024;
/// What one tunnel holds towards its peer at most (granted to connections, or queued here):
/// enough to keep the socket busy, little enough that a new frame never waits long.
const SEND_BUDGET: u64 = 1 << 20;
/// The same, per stream: one bulk stream cannot fill the tunnel's queue.
const STREAM_SEND_MAX: u64 = 256 * 1024;
/// Credit a stream keeps across hand-backs (its standing grant), so that a request or response
/// this small is read and sent at once, with no Want/Grant round between actors.
const STANDING_GRANT: u64 = 8 * 1024;
/// Standing grants one tunnel hands out in all (first come, given back when a stream's sending
/// side ends): on top of [`SEND_BUDGET`], and the bound on what idle streams hold.
const STANDING_POOL: u64 = 256 * 1024;
/// Unsent bytes the kernel may hold for the tunnel socket (`TCP_NOTSENT_LOWAT`): the queue that
/// no scheduling can reorder is kept this small.
const NOTSENT_LOWAT: u32 = 128 * 1024;
/// Control frames a peer can make us queue (pongs, window updates) while not reading them.
const MAX_CONTROL_QUEUE: usize = 1 << 20;
/// Most credit a peer may extend, per stream or per tunnel.
const MAX_CREDIT: u64 = 1 << 32;
/// How long a closing tunnel may take to flush its goodbye.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
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

/// One multiplexed stream, as the tunnel sees it.
struct StreamEntry {
    /// `None` while the Registry decides on an OPEN from the peer.
    conn: Option<Addr<Connection>>,
    /// Which service the stream carries, for `GET /config` and for closing a deleted service.
    service: String,
    /// Local: we opened it for a client; remote: the peer opened it towards our backend.
    side: Side,
    /// Our stream nonce of a keyed stream the peer opened, sent in OPEN_OK.
    accept_nonce: Option<[u8; NONCE_LEN]>,
    /// Where the stream is in its life (see `STREAMS.md`).
    state: StreamState,
    /// Peer's credit for this stream that has not been granted to the connection yet.
    send_avail: u64,
    /// Granted to the connection and not yet come back as data or handed back.
    granted: u64,
    /// The connection has asked for credit and not handed back since.
    wanting: bool,
    /// The part of `granted` the connection keeps while idle (0 or [`STANDING_GRANT`]), carved
    /// from the tunnel's standing pool.
    standing: u64,
    /// Queued in `Tunnel::starving`, waiting for tunnel credit.
    starving: bool,
    /// What the peer may send on this stream: grows while the stream is window-limited.
    recv: RecvWindow,
    /// Wire bytes of this stream, for `GET /config`.
    bytes_sent: u64,
    bytes_received: u64,
    /// Its service's byte counters in `GET /metrics`.
    service_metrics: ServiceMetrics,
    /// Counts the stream in its service's active connections while it lives.
    _active: ActiveConnection,
}

/// Counters of one tunnel, for `GET /config`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TunnelStats {
    pub peer: Option<String>,
    pub streams: usize,
    pub streams_opened: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub send_window: u64,
    pub queued_bytes: usize,
    pub connections: Vec<StreamStats>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StreamStats {
    pub stream: u32,
    pub service: String,
    pub side: Side,
    pub state: &'static str,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// The stream's receive window now (it grows while window-limited, shrinks when idle).
    pub window: u64,
}

pub struct Tunnel {
    /// The tunnel's name, shared by both ends.
    name: String,
    /// Which incarnation of the name this is, so the Registry ignores a stale report.
    generation: u64,
    /// Who dialled: decides stream id parity and what happens after a drop.
    role: Role,
    registry: Recipient<TunnelDown>,
    settings: Settings,
    /// What the peer granted us in the handshake: its windows and stream limit.
    peer: Terms,
    peer_addr: Option<SocketAddr>,
    /// The node's limits and their counters (streams and dials refused).
    usage: Arc<Usage>,
    /// Backend dials the peer may still cause this second.
    dials: TokenBucket,
    /// This tunnel's backend connections, against its share of the descriptor pool: one peer
    /// cannot take every descriptor from the other tunnels and services.
    backends: Arc<Gauge>,
    /// Where OPENs from the peer go, as the Registry last published.
    routes: RouteTable,
    /// The peer proved a secret: refusals may tell it why.
    authenticated: bool,
    /// Moved into the frame reader once the actor starts.
    /// The tunnel's socket until the actor starts: registered with the arbiter it runs on there
    /// (it may have been accepted or dialled on another).
    sock: Option<std::net::TcpStream>,
    /// `None` while a write is under way (the write future owns it).
    writer: Option<OwnedWriteHalf>,
    writing: bool,
    /// Encoded control frames, written ahead of data.
    control: BytesMut,
    /// Encoded DATA and FIN frames, per stream, taken round-robin at write time.
    sched: SendQueue,
    streams: HashMap<u32, StreamEntry>,
    /// Streams we opened and streams the peer opened, against the two stream limits.
    local_streams: u32,
    remote_streams: u32,
    next_id: u32,
    /// Peer's tunnel-level credit not yet granted to any stream.
    send_window: u64,
    /// Credit granted to our connections and not yet come back as data: with what `sched` holds,
    /// what we have in hand towards the peer, capped by [`SEND_BUDGET`] (plus the standing
    /// grants) whatever it announced.
    granted_total: u64,
    /// Standing grants handed out, within [`STANDING_POOL`].
    standing_total: u64,
    /// Streams waiting for tunnel credit, served round-robin.
    starving: VecDeque<u32>,
    /// What the peer may have in flight over the whole tunnel. Credit goes back as soon as a
    /// frame is handed to its stream, so bytes a stalled stream holds never hold the tunnel: each
    /// stream's own window bounds those.
    recv: RecvWindow,
    /// The sum of the streams' receive targets, against `max_tunnel_window`: their growth budget.
    windows_total: u64,
    /// Tunnel credit held back while the node's buffer budget is spent: returned to the peer
    /// once streams have written enough for the budget to have room again.
    withheld: u64,
    /// The path's round trip, from PING/PONG: decides whether a window is what limits a stream.
    rtt: Rtt,
    /// The PING in flight and when it went, for the next RTT sample.
    ping_sent: Option<(u64, Instant)>,
    last_heard: Instant,
    /// The peer has sent at least one frame: the tunnel worked, it did not just open and drop.
    heard: bool,
    /// When the tunnel came up, to tell a lasting tunnel from one that flaps.
    up_since: Instant,
    pings: u64,
    /// A goodbye is being flushed: stop once the queues are empty.
    closing: bool,
    down_reason: Option<String>,
    /// The peer said goodbye, and why.
    goaway_received: Option<GoAway>,
    streams_opened: u64,
    bytes_sent: u64,
    bytes_received: u64,
    /// The tunnel's series in `GET /metrics` (they belong to the name: a reconnect finds them).
    metrics: TunnelMetrics,
}

impl Tunnel {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        name: String,
        generation: u64,
        role: Role,
        sock: std::net::TcpStream,
        peer: Terms,
        registry: Recipient<TunnelDown>,
        settings: Settings,
        usage: Arc<Usage>,
        routes: RouteTable,
        authenticated: bool,
    ) -> Tunnel {
        Tunnel {
            metrics: metrics().tunnel(&name),
            name,
            generation,
            role,
            registry,
            settings,
            peer,
            peer_addr: sock.peer_addr().ok(),
            dials: TokenBucket::new(settings.limits.max_dials_per_second, Instant::now()),
            backends: Gauge::new(settings.limits.descriptor_share(usage.descriptors.max())),
            usage,
            routes,
            authenticated,
            sock: Some(sock),
            writer: None,
            writing: false,
            control: BytesMut::new(),
            sched: SendQueue::default(),
            streams: HashMap::new(),
            local_streams: 0,
            remote_streams: 0,
            // The dialer opens odd streams, the acceptor even ones, so ids never collide.
            next_id: if role == Role::Dialer { 1 } else { 2 },
            send_window: u64::from(peer.windows.tunnel),
            granted_total: 0,
            standing_total: 0,
            starving: VecDeque::new(),
            recv: RecvWindow::new(
                u64::from(settings.tunnel_window),
                u64::from(settings.max_tunnel_window),
                Instant::now(),
            ),
            windows_total: 0,
            withheld: 0,
            rtt: Rtt::default(),
            ping_sent: None,
            last_heard: Instant::now(),
            heard: false,
            up_since: Instant::now(),
            pings: 0,
            closing: false,
            down_reason: None,
            goaway_received: None,
            streams_opened: 0,
            bytes_sent: 0,
            bytes_received: 0,
        }
    }

    /// The credit and queue gauges of `GET /metrics`: set after each write and each second.
    fn publish_gauges(&self) {
        let queued = self.sched.bytes() + self.control.len();
        self.metrics
            .queued
            .set(i64::try_from(queued).unwrap_or(i64::MAX));
        self.metrics
            .send_window
            .set(i64::try_from(self.send_window).unwrap_or(i64::MAX));
    }

    fn queue_control(&mut self, frame: &Frame, ctx: &mut Context<Self>) {
        frame.encode(&mut self.control);
        if self.control.len() > MAX_CONTROL_QUEUE {
            self.fail(
                ctx,
                "peer does not read its control frames; closing".to_owned(),
            );
            return;
        }
        self.flush(ctx);
    }

    fn queue_data(&mut self, stream: u32, frame: Bytes, ctx: &mut Context<Self>) {
        self.sched.push(stream, frame);
        self.flush(ctx);
    }

    /// Drops what a reset stream still had queued, giving its credit back to the tunnel window.
    fn drop_queued(&mut self, stream: u32) {
        self.send_window += self.sched.drop_stream(stream);
    }

    fn send_ping(&mut self, ctx: &mut Context<Self>) {
        let v = self.pings;
        self.pings += 1;
        if self.ping_sent.is_none() {
            self.ping_sent = Some((v, Instant::now()));
        }
        self.queue_control(&Frame::Ping(v), ctx);
    }

    /// Starts a write of what is queued, control frames first, unless one is under way.
    fn flush(&mut self, ctx: &mut Context<Self>) {
        if self.writing {
            return;
        }
        if self.control.is_empty() && self.sched.is_empty() {
            if self.closing {
                ctx.stop();
            }
            return;
        }
        let Some(mut writer) = self.writer.take() else {
            return;
        };
        let mut batch = Vec::with_capacity(8);
        if !self.control.is_empty() {
            batch.push(self.control.split().freeze());
        }
        self.sched.take(WRITE_BATCH, &mut batch);
        self.writing = true;
        ctx.spawn(
            async move {
                let result = write_all_vectored(&mut writer, batch).await;
                (writer, result)
            }
            .into_actor(self)
            .map(|(writer, result), act, ctx| {
                act.writing = false;
                act.publish_gauges();
                match result {
                    Ok(()) => {
                        act.writer = Some(writer);
                        // Room in our send budget again.
                        act.serve_starving();
                        act.flush(ctx);
                    }
                    Err(e) => act.fail(ctx, format!("write failed: {e}")),
                }
            }),
        );
    }

    fn fail(&mut self, ctx: &mut Context<Self>, reason: String) {
        if self.down_reason.is_none() {
            self.down_reason = Some(reason);
        }
        ctx.stop();
    }

    fn alloc_id(&mut self) -> u32 {
        loop {
            let id = self.next_id;
            self.next_id = self.next_id.wrapping_add(2);
            if self.next_id == 0 || self.next_id == 1 {
                self.next_id = if self.role == Role::Dialer { 1 } else { 2 };
            }
            if !self.streams.contains_key(&id) {
                return id;
            }
        }
    }

    fn peer_may_open(&self, id: u32) -> bool {
        id != TUNNEL_STREAM && (id % 2 == 1) == (self.role == Role::Acceptor)
    }

    /// Tops up a stream's grant from its own window and the tunnel window.
    fn grant(&mut self, id: u32) {
        let tunnel_room = self.send_room();
        let queued_here = self.sched.bytes_of(id) as u64;
        let Some(e) = self.streams.get_mut(&id) else {
            return;
        };
        if e.state != StreamState::Open || !e.wanting || e.granted >= GRANT_MAX / 2 {
            return;
        }
        if e.conn.is_none() {
            return;
        }
        let want = (GRANT_MAX - e.granted).min(e.send_avail);
        if want == 0 {
            return;
        }
        // What we hold towards the peer is bounded by our own budget, not by what it announced;
        // per stream too, so one bulk stream cannot fill the queue.
        let room = tunnel_room.min(STREAM_SEND_MAX.saturating_sub(e.granted + queued_here));
        let g = want.min(self.send_window).min(room);
        hand_credit(e, g, &mut self.send_window, &mut self.granted_total);
        if g < want && !e.starving {
            e.starving = true;
            self.starving.push_back(id);
        }
    }

    /// Gives a stream that just opened a standing grant, if the pool has one left.
    fn give_standing(&mut self, id: u32) {
        if self.standing_total + STANDING_GRANT > STANDING_POOL {
            return;
        }
        let Some(e) = self.streams.get_mut(&id) else {
            return;
        };
        let Some(conn) = e.conn.as_ref() else {
            return;
        };
        e.standing = STANDING_GRANT;
        self.standing_total += STANDING_GRANT;
        conn.do_send(StreamEvent::Standing(STANDING_GRANT));
        self.refill(id);
    }

    /// Tops a stream that is not asking for credit back up to its standing grant, from its own
    /// window and the tunnel window (not from the send budget: the pool is its own bound).
    fn refill(&mut self, id: u32) {
        let Some(e) = self.streams.get_mut(&id) else {
            return;
        };
        if e.state != StreamState::Open || e.wanting || e.granted >= e.standing {
            return;
        }
        if e.conn.is_none() {
            return;
        }
        let g = (e.standing - e.granted)
            .min(e.send_avail)
            .min(self.send_window);
        hand_credit(e, g, &mut self.send_window, &mut self.granted_total);
    }

    /// What more we may hand our connections for this tunnel: granted and queued bytes together
    /// stay under the send budget.
    fn send_room(&self) -> u64 {
        let budget = SEND_BUDGET.min(u64::from(self.settings.tunnel_window));
        budget.saturating_sub(self.granted_total + self.sched.bytes() as u64)
    }

    /// Round-robin over the streams that wait for tunnel credit.
    fn serve_starving(&mut self) {
        for _ in 0..self.starving.len() {
            if self.send_window == 0 || self.send_room() == 0 {
                break;
            }
            let Some(id) = self.starving.pop_front() else {
                break;
            };
            if let Some(e) = self.streams.get_mut(&id) {
                e.starving = false;
                self.grant(id);
            }
        }
    }

    /// Forgets a stream, returning its unused credit in both directions.
    fn remove_stream(&mut self, id: u32) -> Option<StreamEntry> {
        let e = self.streams.remove(&id)?;
        // What it held and never wrote is dropped with it.
        self.usage.buffers.release(e.recv.buffered());
        self.metrics.streams.set(self.streams.len() as i64);
        match e.side {
            Side::Local => self.local_streams -= 1,
            Side::Remote => self.remote_streams -= 1,
        }
        self.send_window += e.granted;
        self.granted_total -= e.granted;
        self.standing_total -= e.standing;
        self.windows_total -= e.recv.target();
        self.serve_starving();
        Some(e)
    }

    /// `n` bytes left the tunnel's hands (handed to their stream, or dropped): tunnel credit.
    fn credit_tunnel(&mut self, n: u64, now: Instant, ctx: &mut Context<Self>) {
        let rtt = self.rtt.get();
        if let Some(increment) = self.recv.consume(n, now, rtt, u64::MAX) {
            self.queue_control(
                &Frame::Window {
                    stream: TUNNEL_STREAM,
                    increment: increment as u32,
                },
                ctx,
            );
        }
    }

    fn reset_stream(&mut self, id: u32, code: ResetCode, ctx: &mut Context<Self>) {
        self.drop_queued(id);
        if let Some(e) = self.remove_stream(id) {
            debug!(
                "tunnel {}: stream {id} reset: {}",
                self.name,
                code.describe()
            );
            if let Some(conn) = e.conn {
                conn.do_send(StreamEvent::Abort);
            }
            self.queue_control(&Frame::Reset { stream: id, code }, ctx);
        }
    }

    /// Registers a new stream, counted against its side's limit.
    fn insert_stream(&mut self, id: u32, entry: StreamEntry) {
        self.windows_total += entry.recv.target();
        match entry.side {
            Side::Local => self.local_streams += 1,
            Side::Remote => self.remote_streams += 1,
        }
        self.streams.insert(id, entry);
        self.streams_opened += 1;
        self.metrics.streams_opened.inc();
        self.metrics.streams.set(self.streams.len() as i64);
    }

    fn on_frame(&mut self, frame: Frame, ctx: &mut Context<Self>) {
        match frame {
            Frame::Data { stream, payload } => self.on_data(stream, payload, ctx),
            Frame::Window { stream, increment } => {
                // Credit past 4 GiB is a broken or hostile peer: windows are at most 1 GiB.
                let inc = u64::from(increment);
                if stream == TUNNEL_STREAM {
                    self.send_window += inc;
                    if self.send_window > MAX_CREDIT {
                        self.fail(ctx, "peer overflowed the tunnel window".to_owned());
                        return;
                    }
                    self.serve_starving();
                } else if let Some(e) = self.streams.get_mut(&stream) {
                    e.send_avail += inc;
                    if e.send_avail + e.granted > MAX_CREDIT {
                        self.fail(
                            ctx,
                            format!("peer overflowed the window of stream {stream}"),
                        );
                        return;
                    }
                    self.grant(stream);
                    self.refill(stream);
                }
            }
            Frame::Open {
                stream,
                service,
                keyed,
            } => self.on_open(stream, service, keyed, ctx),
            Frame::OpenOk { stream, nonce } => match self.streams.get_mut(&stream) {
                Some(e) if e.side == Side::Local && e.state == StreamState::Opening => {
                    e.state = StreamState::Open;
                    e.send_avail = u64::from(self.peer.windows.stream);
                    if let Some(conn) = &e.conn {
                        conn.do_send(StreamEvent::Opened { nonce });
                    }
                    self.grant(stream);
                    self.give_standing(stream);
                }
                _ => debug!("tunnel {}: OPEN_OK for unknown stream {stream}", self.name),
            },
            Frame::OpenFail { stream, reason } => {
                let known = matches!(self.streams.get(&stream), Some(e) if e.side == Side::Local && e.state == StreamState::Opening);
                if known {
                    if let Some(e) = self.remove_stream(stream) {
                        metrics().count_refused(&e.service, Side::Local, Refused::PeerRefused);
                        log_limited!(
                            warn,
                            "stream-refused-by-peer",
                            "tunnel {}: service {} refused by the peer: {}; resetting the client",
                            self.name,
                            e.service,
                            Escaped(&reason)
                        );
                        if let Some(conn) = e.conn {
                            conn.do_send(StreamEvent::Abort);
                        }
                    }
                }
            }
            Frame::Fin { stream } => {
                if let Some(conn) = self.streams.get(&stream).and_then(|e| e.conn.as_ref()) {
                    conn.do_send(StreamEvent::Fin);
                }
            }
            Frame::Reset { stream, code } => {
                self.drop_queued(stream);
                if let Some(e) = self.remove_stream(stream) {
                    if code == ResetCode::Integrity {
                        log_limited!(
                            warn,
                            "stream-integrity",
                            "tunnel {}: stream {stream} of service {} reset by the peer: {}",
                            self.name,
                            e.service,
                            code.describe()
                        );
                    } else {
                        debug!(
                            "tunnel {}: stream {stream} reset by the peer: {}",
                            self.name,
                            code.describe()
                        );
                    }
                    if let Some(conn) = e.conn {
                        conn.do_send(StreamEvent::Abort);
                    }
                }
            }
            Frame::Ping(v) => self.queue_control(&Frame::Pong(v), ctx),
            Frame::Pong(v) => {
                if let Some((sent, at)) = self.ping_sent {
                    if sent == v {
                        self.rtt.sample(at.elapsed());
                        self.metrics.rtt.set(at.elapsed().as_secs_f64());
                        self.ping_sent = None;
                    }
                }
            }
            Frame::GoAway { code, reason } => {
                let reason = Escaped(&reason).to_string();
                log_limited_for!(
                    info,
                    "tunnel-goaway",
                    self.peer_ip(),
                    "tunnel {}: peer closed the tunnel: {reason}",
                    self.name
                );
                self.goaway_received = Some(code);
                self.fail(ctx, format!("closed by the peer: {reason}"));
            }
        }
    }

    /// The peer's address, for lines rate-limited per peer.
    fn peer_ip(&self) -> std::net::IpAddr {
        self.peer_addr
            .map_or(std::net::IpAddr::from([0u8, 0, 0, 0]), |a| a.ip())
    }

    fn on_data(&mut self, id: u32, payload: BytesMut, ctx: &mut Context<Self>) {
        let len = payload.len() as u64;
        let now = Instant::now();
        if !self.recv.receive(len, now) {
            self.fail(ctx, "peer overran the tunnel window".to_owned());
            return;
        }
        self.bytes_received += len;
        self.metrics.received.inc_by(len);
        let Some(e) = self.streams.get_mut(&id) else {
            // A stream that was just reset: the bytes are dropped, their credit goes back.
            self.credit_tunnel(len, now, ctx);
            return;
        };
        if e.state == StreamState::Opening || !e.recv.receive(len, now) {
            self.credit_tunnel(len, now, ctx);
            log_limited!(
                warn,
                "stream-overrun",
                "tunnel {}: peer overran the window of stream {id}; resetting it",
                self.name
            );
            self.reset_stream(id, ResetCode::WindowOverrun, ctx);
            return;
        }
        e.bytes_received += len;
        e.service_metrics.received.inc_by(len);
        if let Some(conn) = &e.conn {
            conn.do_send(StreamEvent::Data(payload));
        }
        // The tunnel's hands are empty again at once (what the stream holds, its window
        // bounds), unless the node's streams together hold more than its budget.
        if self.usage.buffers.hold(len) {
            self.credit_tunnel(len, now, ctx);
        } else {
            self.withheld += len;
        }
    }

    /// Returns the tunnel credit held back for the buffer budget, once it has room again.
    fn release_withheld(&mut self, ctx: &mut Context<Self>) {
        if self.withheld > 0 && self.usage.buffers.has_room() {
            let n = std::mem::take(&mut self.withheld);
            self.credit_tunnel(n, Instant::now(), ctx);
        }
    }

    fn on_open(
        &mut self,
        id: u32,
        service: String,
        keyed: Option<KeyedOpen>,
        ctx: &mut Context<Self>,
    ) {
        if !self.peer_may_open(id) {
            self.fail(
                ctx,
                format!("peer opened stream {id} with the wrong parity"),
            );
            return;
        }
        if self.streams.contains_key(&id) {
            self.fail(ctx, format!("peer reopened live stream {id}"));
            return;
        }
        if self.remote_streams >= self.settings.limits.max_streams {
            self.usage.refuse_stream();
            metrics().count_refused(&service, Side::Remote, Refused::StreamLimit);
            let reason = "too many streams on this tunnel";
            log_limited!(
                warn,
                "stream-limit",
                "tunnel {}: refusing stream {id}: {reason} (max_streams {})",
                self.name,
                self.settings.limits.max_streams
            );
            return self.refuse_open(id, reason.to_owned(), ctx);
        }
        // Decided here, from the routes the Registry published: no round trip through it.
        let routes = self.routes.load();
        let route = match routes.open(&self.name, &service, keyed.as_ref(), self.authenticated) {
            Ok(route) => route,
            Err(refusal) => {
                metrics().count_refused(&service, Side::Remote, refusal.reason);
                log_limited!(
                    warn,
                    "stream-refused",
                    "tunnel {}: refusing stream {id}: {}",
                    self.name,
                    refusal.log
                );
                return self.refuse_open(id, refusal.peer, ctx);
            }
        };
        let refusal = if !self.dials.try_take(Instant::now()) {
            self.usage.refuse_dial();
            log_limited!(
                warn,
                "dial-limit",
                "tunnel {}: refusing stream {id}: the peer opens more than {} streams a second",
                self.name,
                self.settings.limits.max_dials_per_second
            );
            Some("too many new streams per second")
        } else {
            None
        };
        let share = match refusal {
            Some(_) => None,
            None => self.backends.try_acquire(),
        };
        if share.is_none() && refusal.is_none() {
            log_limited!(
                warn,
                "descriptors",
                "tunnel {}: its backend connections use its share of the descriptor pool ({}); \
                 refusing stream {id}",
                self.name,
                self.backends.max()
            );
        }
        let refusal = refusal.or(share
            .is_none()
            .then_some("this tunnel has too many connections"));
        let descriptor = match refusal {
            Some(_) => None,
            None => self.usage.descriptors.try_acquire(),
        };
        let (Some(descriptor), Some(share)) = (descriptor, share) else {
            if refusal.is_none() {
                log_limited!(
                    warn,
                    "descriptors",
                    "tunnel {}: out of file descriptors (reserve kept); refusing stream {id}",
                    self.name
                );
            }
            let reason = refusal.unwrap_or("the node is out of connections");
            metrics().count_refused(&service, Side::Remote, Refused::Resources);
            return self.refuse_open(id, reason.to_owned(), ctx);
        };
        // Key setup here, not in the Registry: our nonce goes back in OPEN_OK.
        let crypto = route.key.as_ref().zip(keyed.as_ref()).map(|(k, o)| {
            let ours = fresh_nonce();
            (k.stream(&o.nonce, &ours, false), ours)
        });
        let (crypto, nonce) = match crypto {
            Some((c, n)) => (Some(c), Some(n)),
            None => (None, None),
        };
        let conn = Connection::dialing(
            id,
            route.addr,
            self.settings.connect_timeout,
            ctx.address().recipient(),
            service.clone(),
            crypto.map(|c| Keying::Ready(Box::new(c))),
            route.timeout,
            vec![descriptor, share],
        )
        .start();
        let mut entry = StreamEntry::new(Some(conn), service, Side::Remote, &self.settings);
        entry.accept_nonce = nonce;
        self.insert_stream(id, entry);
    }

    /// Answers a peer's OPEN with OPEN_FAIL.
    fn refuse_open(&mut self, stream: u32, reason: String, ctx: &mut Context<Self>) {
        self.queue_control(&Frame::OpenFail { stream, reason }, ctx);
    }

    fn snapshot(&self, ask: &Snapshot) -> TunnelStats {
        let connections = self
            .streams
            .iter()
            .filter(|(_, e)| {
                ask.connections && ask.service.as_ref().is_none_or(|s| *s == e.service)
            })
            .map(|(id, e)| StreamStats {
                stream: *id,
                service: e.service.clone(),
                side: e.side,
                state: e.state.name(),
                bytes_sent: e.bytes_sent,
                bytes_received: e.bytes_received,
                window: e.recv.target(),
            })
            .collect();
        TunnelStats {
            peer: self.peer_addr.map(|a| a.to_string()),
            streams: self.streams.len(),
            streams_opened: self.streams_opened,
            bytes_sent: self.bytes_sent,
            bytes_received: self.bytes_received,
            send_window: self.send_window,
            queued_bytes: self.sched.bytes() + self.control.len(),
            connections,
        }
    }
}

/// Grants `g` bytes to stream `e`'s connection, carved from its window and the tunnel's.
fn hand_credit(e: &mut StreamEntry, g: u64, send_window: &mut u64, granted_total: &mut u64) {
    let Some(conn) = e.conn.as_ref() else {
        return;
    };
    if g > 0 {
        conn.do_send(StreamEvent::Grant(g));
        e.send_avail -= g;
        e.granted += g;
        *send_window -= g;
        *granted_total += g;
    }
}

impl StreamEntry {
    fn new(conn: Option<Addr<Connection>>, service: String, side: Side, s: &Settings) -> Self {
        let service_metrics = metrics().service(&service, side);
        StreamEntry {
            conn,
            service,
            side,
            accept_nonce: None,
            state: StreamState::Opening,
            send_avail: 0,
            granted: 0,
            wanting: false,
            standing: 0,
            starving: false,
            recv: RecvWindow::new(
                u64::from(s.stream_window),
                u64::from(s.max_stream_window),
                Instant::now(),
            ),
            bytes_sent: 0,
            bytes_received: 0,
            _active: service_metrics.active(),
            service_metrics,
        }
    }
}

impl Actor for Tunnel {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(256);
        if let Some(sock) = self.sock.take() {
            crate::io::set_notsent_lowat(&sock, NOTSENT_LOWAT);
            let sock = match TcpStream::from_std(sock) {
                Ok(s) => s,
                Err(e) => {
                    self.fail(ctx, format!("cannot take the socket over: {e}"));
                    return;
                }
            };
            let (reader, writer) = sock.into_split();
            self.writer = Some(writer);
            ctx.add_stream(FramedRead::with_capacity(
                reader,
                FrameCodec,
                HEADER_LEN + MAX_DATA,
            ));
        }
        // A first ping at once, so a working peer is heard within a round trip. Pings keep an
        // idle tunnel audible; silence is checked on a shorter period of its own, so a dead peer
        // is declared within the timeout, not the timeout plus an interval.
        self.send_ping(ctx);
        ctx.run_interval(self.settings.heartbeat_interval, |act, ctx| {
            act.send_ping(ctx)
        });
        let check = (self.settings.heartbeat_timeout / 8).min(Duration::from_secs(1));
        ctx.run_interval(check, |act, ctx| {
            let now = Instant::now();
            let mut total = 0;
            for e in act.streams.values_mut() {
                e.recv.shrink_if_idle(now);
                total += e.recv.target();
            }
            act.windows_total = total;
            act.publish_gauges();
            // Other tunnels' streams may have made room in the node's buffer budget.
            act.release_withheld(ctx);
            let silent = act.last_heard.elapsed();
            if silent > act.settings.heartbeat_timeout {
                act.fail(ctx, format!("peer silent for {} ms", silent.as_millis()));
            }
        });
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
            let reason = self
                .down_reason
                .take()
                .unwrap_or_else(|| "closed".to_owned());
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
        for (_, e) in self.streams.drain() {
            self.usage.buffers.release(e.recv.buffered());
            if let Some(conn) = e.conn {
                conn.do_send(StreamEvent::Abort);
            }
        }
        self.metrics.streams.set(0);
        self.metrics.queued.set(0);
        self.registry.do_send(TunnelDown {
            name: self.name.clone(),
            generation: self.generation,
            reason,
            goaway: self.goaway_received,
            heard: self.heard,
            lasted: self.up_since.elapsed(),
            peer_ip: self.peer_ip(),
        });
    }
}

impl StreamHandler<Result<Frame, ProtocolError>> for Tunnel {
    fn handle(&mut self, item: Result<Frame, ProtocolError>, ctx: &mut Self::Context) {
        match item {
            Ok(frame) => {
                // Only a frame counts as hearing the peer: a reset or garbage does not.
                self.last_heard = Instant::now();
                self.heard = true;
                self.on_frame(frame, ctx)
            }
            Err(e) => {
                log_limited!(
                    warn,
                    "tunnel-protocol",
                    "tunnel {}: {e}; closing the tunnel",
                    self.name
                );
                self.fail(ctx, e.to_string());
            }
        }
    }

    fn finished(&mut self, ctx: &mut Self::Context) {
        self.fail(ctx, "the peer closed the connection".to_owned());
    }
}

impl Handler<CarryClient> for Tunnel {
    type Result = ();

    fn handle(&mut self, msg: CarryClient, ctx: &mut Self::Context) {
        if self.closing || self.local_streams >= self.peer.max_streams {
            log_limited!(
                warn,
                "carry-refused",
                "tunnel {}: the peer takes at most {} streams; resetting a client of service {}",
                self.name,
                self.peer.max_streams,
                msg.service
            );
            let reason = if self.closing {
                Refused::ShuttingDown
            } else {
                Refused::StreamLimit
            };
            metrics().count_refused(&msg.service, Side::Local, reason);
            crate::io::reset_now(&msg.sock);
            return;
        }
        // The client was accepted on the listener's arbiter: register it with this one.
        let sock = match TcpStream::from_std(msg.sock) {
            Ok(s) => s,
            Err(e) => {
                log_limited!(
                    warn,
                    "carry-refused",
                    "tunnel {}: cannot take over a client of service {}: {e}",
                    self.name,
                    msg.service
                );
                metrics().count_refused(&msg.service, Side::Local, Refused::Resources);
                return;
            }
        };
        metrics().count_accepted(&msg.service, Side::Local);
        let id = self.alloc_id();
        let open = msg.key.as_ref().map(|k| k.open());
        let keying = msg.key.zip(open).map(|(key, open)| Keying::Opener {
            key,
            nonce: open.nonce,
        });
        let conn = Connection::accepted(
            id,
            sock,
            ctx.address().recipient(),
            msg.service.clone(),
            keying,
            msg.idle_timeout,
            msg.slots,
        )
        .start();
        let frame = Frame::Open {
            stream: id,
            service: msg.service.clone(),
            keyed: open,
        };
        let entry = StreamEntry::new(Some(conn), msg.service, Side::Local, &self.settings);
        self.insert_stream(id, entry);
        self.queue_control(&frame, ctx);
    }
}

impl Handler<FromConnection> for Tunnel {
    type Result = ();

    fn handle(&mut self, msg: FromConnection, ctx: &mut Self::Context) {
        match msg {
            FromConnection::Data { stream, frame } => {
                let payload = (frame.len() - HEADER_LEN) as u64;
                let Some(e) = self.streams.get_mut(&stream) else {
                    return;
                };
                let used = payload.min(e.granted);
                e.granted -= used;
                self.granted_total -= used;
                e.bytes_sent += payload;
                e.service_metrics.sent.inc_by(payload);
                self.bytes_sent += payload;
                self.metrics.sent.inc_by(payload);
                self.queue_data(stream, frame, ctx);
                self.grant(stream);
                self.refill(stream);
            }
            FromConnection::Want { stream } => {
                if let Some(e) = self.streams.get_mut(&stream) {
                    e.wanting = true;
                    self.grant(stream);
                }
            }
            FromConnection::Return { stream, bytes } => {
                let Some(e) = self.streams.get_mut(&stream) else {
                    return;
                };
                // Unused credit goes back to both windows it was carved from.
                let bytes = bytes.min(e.granted);
                e.granted -= bytes;
                e.send_avail += bytes;
                e.wanting = false;
                self.send_window += bytes;
                self.granted_total -= bytes;
                self.serve_starving();
                self.refill(stream);
            }
            FromConnection::Consumed { stream, bytes } => {
                let room =
                    u64::from(self.settings.max_tunnel_window).saturating_sub(self.windows_total);
                let rtt = self.rtt.get();
                let Some(e) = self.streams.get_mut(&stream) else {
                    return;
                };
                let bytes = bytes.min(e.recv.buffered());
                self.usage.buffers.release(bytes);
                let before = e.recv.target();
                let update = e.recv.consume(bytes, Instant::now(), rtt, room);
                self.windows_total = self.windows_total - before + e.recv.target();
                if let Some(inc) = update {
                    self.queue_control(
                        &Frame::Window {
                            stream,
                            increment: inc as u32,
                        },
                        ctx,
                    );
                }
                self.release_withheld(ctx);
            }
            FromConnection::Fin { stream } => {
                let Some(e) = self.streams.get_mut(&stream) else {
                    return;
                };
                e.state = StreamState::HalfClosed;
                let unused = std::mem::take(&mut e.granted);
                self.send_window += unused;
                self.granted_total -= unused;
                self.standing_total -= std::mem::take(&mut e.standing);
                self.serve_starving();
                let mut fin = BytesMut::with_capacity(HEADER_LEN);
                Frame::Fin { stream }.encode(&mut fin);
                self.queue_data(stream, fin.freeze(), ctx);
            }
            FromConnection::Dialed { stream } => {
                let Some(e) = self.streams.get_mut(&stream) else {
                    return;
                };
                e.state = StreamState::Open;
                e.send_avail = u64::from(self.peer.windows.stream);
                metrics().count_accepted(&e.service, Side::Remote);
                let nonce = e.accept_nonce.take();
                self.queue_control(&Frame::OpenOk { stream, nonce }, ctx);
                self.grant(stream);
                self.give_standing(stream);
            }
            FromConnection::Closed { stream, failure } => {
                if failure.is_some() {
                    self.drop_queued(stream);
                }
                let Some(e) = self.remove_stream(stream) else {
                    return;
                };
                match failure {
                    None => {}
                    Some((_, reason))
                        if e.state == StreamState::Opening && e.side == Side::Remote =>
                    {
                        metrics().count_refused(&e.service, Side::Remote, Refused::Unreachable);
                        self.queue_control(&Frame::OpenFail { stream, reason }, ctx)
                    }
                    Some((code, _)) => self.queue_control(&Frame::Reset { stream, code }, ctx),
                }
            }
        }
    }
}

/// Registry -> tunnel: close. With a goodbye the peer learns why at once (and forgets the tunnel
/// if it was deleted) instead of finding out from a broken connection or the heartbeat.
#[derive(Message)]
#[rtype(result = "()")]
pub struct CloseTunnel {
    pub goodbye: Option<(GoAway, String)>,
}

impl Handler<CloseTunnel> for Tunnel {
    type Result = ();

    fn handle(&mut self, msg: CloseTunnel, ctx: &mut Self::Context) {
        self.down_reason = Some(match &msg.goodbye {
            Some((_, reason)) => reason.clone(),
            None => "replaced".to_owned(),
        });
        match msg.goodbye {
            Some((code, reason)) => {
                for (_, e) in self.streams.drain() {
                    if let Some(conn) = e.conn {
                        conn.do_send(StreamEvent::Abort);
                    }
                }
                self.sched.clear();
                self.closing = true;
                self.queue_control(&Frame::GoAway { code, reason }, ctx);
                ctx.run_later(CLOSE_GRACE, |_, ctx| ctx.stop());
            }
            None => ctx.stop(),
        }
    }
}

/// Registry -> tunnel: a service was deleted; close its streams.
#[derive(Message)]
#[rtype(result = "()")]
pub struct CloseService {
    pub service: String,
    pub side: Side,
}

impl Handler<CloseService> for Tunnel {
    type Result = ();

    fn handle(&mut self, msg: CloseService, ctx: &mut Self::Context) {
        let ids: Vec<u32> = self
            .streams
            .iter()
            .filter(|(_, e)| e.side == msg.side && e.service == msg.service)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.reset_stream(id, ResetCode::Aborted, ctx);
        }
    }
}

#[cfg(feature = "fault-injection")]
impl Handler<crate::Crash> for Tunnel {
    type Result = ();

    fn handle(&mut self, _: crate::Crash, _ctx: &mut Self::Context) {
        panic!("fault injected into tunnel {}", self.name);
    }
}

/// Test-only fault hook: make the connection actor of one stream panic.
#[cfg(feature = "fault-injection")]
#[derive(Message)]
#[rtype(result = "()")]
pub struct CrashStream {
    pub stream: u32,
}

#[cfg(feature = "fault-injection")]
impl Handler<CrashStream> for Tunnel {
    type Result = ();

    fn handle(&mut self, msg: CrashStream, _ctx: &mut Self::Context) {
        if let Some(conn) = self.streams.get(&msg.stream).and_then(|e| e.conn.as_ref()) {
            conn.do_send(crate::Crash);
        }
    }
}

/// Registry -> tunnel: its counters, for `GET /config`; its connections too unless
/// `connections` is false (only those of `service` if given).
#[derive(Message)]
#[rtype(result = "TunnelStats")]
pub struct Snapshot {
    pub connections: bool,
    pub service: Option<String>,
}

impl Handler<Snapshot> for Tunnel {
    type Result = MessageResult<Snapshot>;

    fn handle(&mut self, msg: Snapshot, _ctx: &mut Self::Context) -> Self::Result {
        MessageResult(self.snapshot(&msg))
    }
}
