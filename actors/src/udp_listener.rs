//! A local UDP service's listener: the service's socket, and its table of flows, one per client
//! address (IP and port). A datagram from a new client starts a flow: the route table names the
//! tunnel, which opens a stream for it and starts its [`UdpFlow`](crate::datagram::UdpFlow);
//! datagrams that arrive meanwhile wait (a few) and then go to the flow.
//!
//! The table is bounded (`[limits] max_udp_flows_per_service`): a new client beyond it ends the
//! flow that has been quiet longest, if one has been quiet for [`QUIET`], else its datagram is
//! dropped and counted. A flow's mailbox is bounded too: a datagram the flow cannot take now is
//! dropped. So a flood from thousands of addresses costs at most the table and the tunnel's own
//! stream limits, and never stops the node.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use bytes::{Bytes, BytesMut};
use log::info;
use tokio::net::UdpSocket;
use tokio_util::codec::BytesCodec;
use tokio_util::udp::UdpFramed;

use crate::datagram::{DatagramCounts, FlowReport, ToFlow};
use crate::metrics::metrics;
use crate::routes::{CarryClient, Client, FlowStart, RouteTable};
use crate::Side;

/// Datagrams held for a flow that is starting.
const STARTING_QUEUE: usize = 8;
/// A flow quiet this long may be ended to make room for a new client.
pub const QUIET: Duration = Duration::from_secs(1);

/// A client's place in the table.
enum Slot {
    /// Sent to the tunnel; the flow has not reported yet. Its first datagrams wait here.
    Starting { id: u64, queued: Vec<Bytes> },
    /// Running: datagrams go to `flow`.
    Live {
        id: u64,
        flow: Recipient<ToFlow>,
        /// The client's last datagram.
        last: Instant,
    },
}

impl Slot {
    fn id(&self) -> u64 {
        match self {
            Slot::Starting { id, .. } | Slot::Live { id, .. } => *id,
        }
    }
}

pub struct UdpListener {
    /// The UDP service it listens for.
    service: String,
    /// Which incarnation of the service's listener this is, for its owner's reports.
    id: u64,
    /// Told when the listener stops without being asked to (a panic), to start it again.
    upstream: Recipient<UdpDown>,
    /// Running, or told to stop (then its end is not reported).
    life: UdpLife,
    /// The service's socket as bound by the Registry, until this actor's thread registers it.
    bound: Option<std::net::UdpSocket>,
    /// The service's socket, registered with this actor's thread.
    socket: Option<Arc<UdpSocket>>,
    /// The published routes: the service's tunnel and key for each new flow.
    routes: RouteTable,
    /// Flows by client address.
    flows: HashMap<SocketAddr, Slot>,
    /// Numbers the flows, so a report from an ended one is not taken for its successor's.
    next_id: u64,
    /// `max_udp_flows_per_service`.
    max_flows: usize,
    /// The service's datagram counts, kept across its listener's restarts.
    counts: Arc<DatagramCounts>,
}

/// Registry -> a UDP listener: stop (the service was deleted, replaced or the node stops).
#[derive(Message)]
#[rtype(result = "()")]
pub struct StopUdp;

/// A UDP listener -> its owner: it stopped without being told to (it panicked); the owner
/// starts another on the same socket. A report going up, declared beside its sender.
#[derive(Message)]
#[rtype(result = "()")]
pub struct UdpDown {
    /// The UDP service whose listener stopped.
    pub service: String,
    /// The incarnation that stopped.
    pub id: u64,
    /// It panicked (logged as an error; restarted all the same).
    pub panicked: bool,
}

/// Where a UDP listener is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum UdpLife {
    Running,
    /// Told to stop: its end is not a failure.
    Stopping,
}

impl UdpListener {
    /// `socket` is bound and non-blocking; it is registered on the thread the actor runs on.
    pub fn new(
        service: String,
        (id, upstream): (u64, Recipient<UdpDown>),
        socket: std::net::UdpSocket,
        routes: RouteTable,
        max_flows: usize,
        counts: Arc<DatagramCounts>,
    ) -> UdpListener {
        UdpListener {
            service,
            id,
            upstream,
            life: UdpLife::Running,
            bound: Some(socket),
            socket: None,
            routes,
            flows: HashMap::new(),
            next_id: 0,
            max_flows: max_flows.max(1),
            counts,
        }
    }

    fn datagram(&mut self, datagram: Bytes, client: SocketAddr, ctx: &mut Context<Self>) {
        match self.flows.get_mut(&client) {
            Some(Slot::Live { flow, last, .. }) => {
                *last = Instant::now();
                if flow.try_send(ToFlow::Datagram(datagram)).is_err() {
                    self.counts.dropped.inc();
                }
            }
            Some(Slot::Starting { queued, .. }) => {
                if queued.len() < STARTING_QUEUE {
                    queued.push(datagram);
                } else {
                    self.counts.dropped.inc();
                }
            }
            None => self.start_flow(datagram, client, ctx),
        }
    }

    fn start_flow(&mut self, datagram: Bytes, client: SocketAddr, ctx: &mut Context<Self>) {
        if self.flows.len() >= self.max_flows && !self.make_room() {
            self.counts.dropped.inc();
            crate::log_limited!(
                warn,
                "udp-flows",
                "service {}: {} flows, none quiet; dropping a datagram from {client}",
                self.service,
                self.max_flows
            );
            return;
        }
        let routes = self.routes.load();
        let (route, tunnel) = match routes.carry(&self.service) {
            Ok(r) => r,
            Err((reason, why)) => {
                metrics().count_refused(&self.service, Side::Local, reason);
                self.counts.dropped.inc();
                crate::log_limited!(
                    info,
                    "client-refused",
                    "service {}: dropping a datagram from {client}: {why}",
                    self.service
                );
                return;
            }
        };
        let Some(socket) = self.socket.clone() else {
            return;
        };
        self.next_id += 1;
        let id = self.next_id;
        let reached = socket.local_addr().ok();
        let start = FlowStart {
            socket,
            client,
            id,
            listener: ctx.address().recipient(),
            first: datagram,
            counts: self.counts.clone(),
        };
        tunnel.do_send(CarryClient {
            client: Client::Udp(start),
            service: self.service.clone(),
            key: route.key.clone(),
            idle_timeout: route.timeout,
            origin: reached.map(|reached| crate::protocol::Origin::seen(client, reached)),
            pace: route.pace.clone(),
            slots: Vec::new(),
        });
        self.flows.insert(
            client,
            Slot::Starting {
                id,
                queued: Vec::new(),
            },
        );
    }

    /// Ends the flow quiet longest, if it has been quiet for [`QUIET`]; whether it did.
    fn make_room(&mut self) -> bool {
        let now = Instant::now();
        let oldest = self
            .flows
            .iter()
            .filter_map(|(c, s)| match s {
                Slot::Live { last, flow, .. } if now.duration_since(*last) >= QUIET => {
                    Some((*last, *c, flow.clone()))
                }
                _ => None,
            })
            .min_by_key(|(last, _, _)| *last);
        match oldest {
            Some((_, client, flow)) => {
                self.flows.remove(&client);
                flow.do_send(ToFlow::End);
                true
            }
            None => false,
        }
    }
}

impl Actor for UdpListener {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let Some(bound) = self.bound.take() else {
            return;
        };
        match UdpSocket::from_std(bound) {
            Ok(socket) => {
                let socket = Arc::new(socket);
                self.socket = Some(socket.clone());
                ctx.add_stream(UdpFramed::new(socket, BytesCodec::new()));
            }
            Err(e) => {
                log::error!("service {}: cannot receive datagrams: {e}", self.service);
                ctx.stop();
            }
        }
    }

    /// Also runs after a panic in a handler: the owner hears of it and starts another.
    fn stopped(&mut self, _ctx: &mut Self::Context) {
        if self.life == UdpLife::Running {
            self.upstream.do_send(UdpDown {
                service: self.service.clone(),
                id: self.id,
                panicked: std::thread::panicking(),
            });
        }
    }
}

impl StreamHandler<Result<(BytesMut, SocketAddr), io::Error>> for UdpListener {
    fn handle(&mut self, item: Result<(BytesMut, SocketAddr), io::Error>, ctx: &mut Self::Context) {
        match item {
            Ok((datagram, client)) => self.datagram(datagram.freeze(), client, ctx),
            Err(e) => crate::log_limited!(
                warn,
                "udp-receive",
                "service {}: receiving: {e}",
                self.service
            ),
        }
    }

    fn finished(&mut self, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

impl Handler<FlowReport> for UdpListener {
    type Result = ();

    fn handle(&mut self, msg: FlowReport, _ctx: &mut Self::Context) {
        match msg {
            FlowReport::Started { client, id, flow } => {
                let Some(slot) = self.flows.get_mut(&client) else {
                    // Its place was taken back meanwhile (the table made room): end it.
                    flow.do_send(ToFlow::End);
                    return;
                };
                if slot.id() != id {
                    flow.do_send(ToFlow::End);
                    return;
                }
                if let Slot::Starting { queued, .. } = slot {
                    for d in queued.drain(..) {
                        if flow.try_send(ToFlow::Datagram(d)).is_err() {
                            self.counts.dropped.inc();
                        }
                    }
                }
                *slot = Slot::Live {
                    id,
                    flow,
                    last: Instant::now(),
                };
            }
            FlowReport::Ended { client, id } => {
                if self.flows.get(&client).is_some_and(|s| s.id() == id) {
                    self.flows.remove(&client);
                }
            }
        }
    }
}

impl Handler<StopUdp> for UdpListener {
    type Result = ();

    fn handle(&mut self, _: StopUdp, ctx: &mut Self::Context) {
        info!(
            "service {}: stopped receiving ({} flows ended)",
            self.service,
            self.flows.len()
        );
        for slot in self.flows.values() {
            if let Slot::Live { flow, .. } = slot {
                flow.do_send(ToFlow::End);
            }
        }
        self.flows.clear();
        self.life = UdpLife::Stopping;
        ctx.stop();
    }
}

#[cfg(feature = "fault-injection")]
impl Handler<crate::Crash> for UdpListener {
    type Result = ();

    fn handle(&mut self, _: crate::Crash, _ctx: &mut Self::Context) {
        panic!(
            "fault injected into the UDP listener of service {}",
            self.service
        );
    }
}
