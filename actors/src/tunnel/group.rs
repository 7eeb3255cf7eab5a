//! A tunnel's lanes: its TCP connections. The first connection is the tunnel (the *head*: the
//! actor the Registry knows); a dialer configured with `[tunnel] lanes = N` dials N - 1 more
//! once it is up, each with a handshake of its own that proves the same identity and secret and
//! asks to join (`actors/PROTOCOL.md`, *Lanes*).
//!
//! Each lane is a tunnel actor of its own, on a data thread of its own where there are enough:
//! its own streams, stream ids, credit, windows, heartbeat and record keys. So a busy lane's
//! bytes, its thread and its place in the path's queues delay only its own streams. What the
//! lanes share is the name, the route (the head places every new client, `placement.rs`), the
//! tunnel's share of backend descriptors, its metrics and its life: any lane that breaks, closes
//! or goes silent takes the whole tunnel down, and the dialer re-dials all of it (a tunnel is
//! never half there).
//!
//! Lifecycle:
//! - The Registry hands each joining connection to the head ([`JoinLane`]), with the data
//!   thread it goes to; the head starts the lane's actor there, reporting to the head.
//! - A lane that stops reports [`TunnelDown`] to the head, which goes down with its reason (and
//!   the peer's goodbye, if the lane brought it).
//! - The head that stops stops its lanes; one saying goodbye has them say it on every lane
//!   first, so the peer reads it before any connection of the tunnel closes.
//! - `GET /config` asks the head, which adds its lanes' counters and streams to its own.

use futures_util::future::join_all;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

pub use super::placement::MAX_LANES;
use super::*;
use crate::data_thread::DataThreadHandle;

/// Registry -> tunnel: another connection of this tunnel's dialer, handshake done, joins as a
/// lane.
#[derive(Message)]
#[rtype(result = "()")]
pub struct JoinLane {
    /// The socket, not yet registered with any thread's reactor.
    pub sock: std::net::TcpStream,
    /// Its record keys from its own handshake; `None`: its frames go in the clear.
    pub keys: Option<SessionKeys>,
    /// The data thread the lane runs on; `None`: the head's own.
    pub thread: Option<DataThreadHandle>,
}

/// Where one tunnel actor stands among its tunnel's lanes.
pub(super) enum Group {
    /// The first connection, which the Registry knows: it places new clients over the lanes,
    /// answers for all of them and stops them when it stops.
    Head {
        /// The other lanes' actors, lane 1 first.
        lanes: Vec<Addr<Tunnel>>,
    },
    /// Another lane: it reports to its head, which is its `registry`.
    Lane,
}

/// Head -> lane: carry a client placed on this lane.
#[derive(Message)]
#[rtype(result = "()")]
pub(super) struct Placed {
    /// The client, as its listener handed it over.
    pub(super) client: CarryClient,
    /// Its place on the lane, counted until the stream ends.
    pub(super) seat: Seat,
}

/// What all of a tunnel's lanes count together, so that its limits bound the tunnel (as
/// README's limits say), not each of its lanes.
#[derive(Clone)]
pub(super) struct TunnelWide {
    /// Streams open now: those we opened (against the peer's `max_streams`) and those the peer
    /// opened (against ours), by [`Side`].
    open: Arc<[AtomicU32; 2]>,
    /// Backend dials the peer may still cause this second.
    dials: Arc<Mutex<TokenBucket>>,
    /// The tunnel's backend connections, against its share of the descriptor pool: one peer
    /// cannot take every descriptor from the other tunnels and services.
    pub(super) backends: Arc<Gauge>,
}

impl TunnelWide {
    pub(super) fn new(settings: &Settings, usage: &crate::limits::Usage) -> TunnelWide {
        TunnelWide {
            open: Arc::new([AtomicU32::new(0), AtomicU32::new(0)]),
            dials: Arc::new(Mutex::new(TokenBucket::new(
                settings.limits.max_dials_per_second,
                Instant::now(),
            ))),
            backends: Gauge::new(settings.limits.descriptor_share(usage.descriptors.max())),
        }
    }

    /// Streams open now over all lanes that `side` opened (ours: local).
    pub(super) fn open(&self, side: Side) -> u32 {
        self.open[side as usize].load(Ordering::Acquire)
    }

    /// A stream `side` opened was added (`true`) or removed on one of the lanes.
    pub(super) fn count(&self, side: Side, added: bool) {
        let n = &self.open[side as usize];
        if added {
            n.fetch_add(1, Ordering::AcqRel);
        } else {
            // Never below zero (a wrapped count would refuse every stream after it).
            let before = n.fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| c.checked_sub(1));
            debug_assert!(before.is_ok(), "more {side} streams removed than added");
        }
    }

    /// Takes a token of the peer's dial rate, if one is left this second.
    pub(super) fn take_dial(&self) -> bool {
        // A lane that panicked holding the bucket left it whole: taking a token is one update.
        let mut dials = self.dials.lock().unwrap_or_else(|p| p.into_inner());
        dials.try_take(Instant::now())
    }
}

impl Tunnel {
    /// This actor made lane `lane` of a tunnel whose placement is `lanes`, sharing its head's
    /// tunnel-wide counts.
    pub(super) fn into_lane(mut self, lane: usize, lanes: Lanes, wide: TunnelWide) -> Tunnel {
        self.group = Group::Lane;
        self.lane = lane;
        self.lanes = lanes;
        self.counts.wide = wide;
        self
    }

    /// The other lanes' actors (none unless this is the head of a tunnel with lanes).
    pub(super) fn other_lanes(&self) -> &[Addr<Tunnel>] {
        match &self.group {
            Group::Head { lanes } => lanes,
            Group::Lane => &[],
        }
    }

    /// Sends a new client where placement puts it: carried here, or handed to its lane.
    pub(super) fn place(&mut self, client: CarryClient, ctx: &mut Context<Self>) {
        let seat = self.lanes.place(&client.service);
        let target = seat
            .lane()
            .checked_sub(1)
            .and_then(|i| self.other_lanes().get(i))
            .filter(|_| seat.lane() != self.lane);
        match target {
            Some(lane) => lane.do_send(Placed { client, seat }),
            None if seat.lane() == self.lane => self.carry(client, seat, ctx),
            None => {
                let seat = self.lanes.seat_on(self.lane, &client.service);
                self.carry(client, seat, ctx)
            }
        }
    }

    /// A stopping head stops its lanes, unless they are saying goodbye (they stop once it is
    /// written).
    pub(super) fn stop_lanes(&self) {
        if matches!(self.life, Life::Closing { .. }) {
            return;
        }
        for lane in self.other_lanes() {
            lane.do_send(CloseTunnel { goodbye: None });
        }
    }
}

impl Handler<Placed> for Tunnel {
    type Result = ();

    fn handle(&mut self, msg: Placed, ctx: &mut Self::Context) {
        self.carry(msg.client, msg.seat, ctx);
    }
}

impl Handler<JoinLane> for Tunnel {
    type Result = ();

    fn handle(&mut self, msg: JoinLane, ctx: &mut Self::Context) {
        let open = matches!(self.life, Life::Open) && matches!(self.group, Group::Head { .. });
        let thread = msg.thread.as_ref().map(DataThreadHandle::number);
        let lane = if open {
            let mut placement = self.lanes.lock();
            let lane = placement.add_lane();
            if let Some(lane) = lane {
                placement.set_thread(lane, thread);
            }
            lane
        } else {
            None
        };
        let Some(lane) = lane else {
            crate::io::reset_now(&msg.sock);
            return;
        };
        let link = TunnelLink {
            name: self.name.clone(),
            generation: self.generation,
            role: self.role,
            sock: msg.sock,
            peer: self.peer.terms,
            authenticated: self.peer.authenticated,
            keys: msg.keys,
            thread,
        };
        let (head, shared) = (ctx.address().recipient(), self.shared.clone());
        let (lanes, wide) = (self.lanes.clone(), self.counts.wide.clone());
        let make = move |_: &mut Context<Tunnel>| {
            Tunnel::new(link, head, shared).into_lane(lane, lanes, wide)
        };
        let actor = match &msg.thread {
            Some(thread) => thread.start(make),
            None => Tunnel::create(make),
        };
        if let Group::Head { lanes } = &mut self.group {
            lanes.push(actor);
        }
        debug!("tunnel {}: lane {lane} joined", self.name);
        self.metrics.lanes.set(self.lanes.lock().lanes() as i64);
    }
}

/// A lane stopped: the tunnel goes down with it, with the peer's goodbye if the lane brought it.
impl Handler<TunnelDown> for Tunnel {
    type Result = ();

    fn handle(&mut self, msg: TunnelDown, ctx: &mut Self::Context) {
        if matches!(self.life, Life::Closing { .. }) {
            // Its lanes end with the goodbye too.
            return;
        }
        self.go_down(format!("a lane went down: {}", msg.reason), msg.goaway);
        ctx.stop();
    }
}

impl TunnelStats {
    /// Adds a lane's counters and streams to its head's.
    fn add_lane(&mut self, lane: TunnelStats) {
        let (c, l) = (&mut self.counters, lane.counters);
        c.streams += l.streams;
        c.streams_opened += l.streams_opened;
        c.bytes_sent += l.bytes_sent;
        c.bytes_received += l.bytes_received;
        c.send_window += l.send_window;
        c.queued_bytes += l.queued_bytes;
        c.receive_window += l.receive_window;
        c.socket.unsent += l.socket.unsent;
        c.socket.unacked += l.socket.unacked;
        c.socket.unread += l.socket.unread;
        c.lanes += l.lanes;
        c.rekeys += l.rekeys;
        self.connections.extend(lane.connections);
    }
}

/// Registry -> tunnel: its counters, for `GET /config`; its connections too unless
/// `connections` is false (only those of `service` if given). A head answers for its lanes too.
#[derive(Message)]
#[rtype(result = "TunnelStats")]
pub struct Snapshot {
    /// List the connections (`false`: counters only, cheaper).
    pub connections: bool,
    /// Only this service's connections, if given.
    pub service: Option<String>,
}

impl Handler<Snapshot> for Tunnel {
    type Result = ResponseFuture<TunnelStats>;

    fn handle(&mut self, msg: Snapshot, ctx: &mut Self::Context) -> Self::Result {
        // Bytes the connections sent straight to the socket are counted by their reports.
        self.take_reports(ctx);
        let mut stats = self.snapshot(&msg);
        let asks: Vec<_> = self
            .other_lanes()
            .iter()
            .map(|lane| {
                lane.send(Snapshot {
                    connections: msg.connections,
                    service: msg.service.clone(),
                })
            })
            .collect();
        Box::pin(async move {
            // A lane gone meanwhile has nothing to add: the tunnel is going down.
            for lane in join_all(asks).await.into_iter().flatten() {
                stats.add_lane(lane);
            }
            stats
        })
    }
}
