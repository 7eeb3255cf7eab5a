//! Listening sockets: the listener actor of a local service or of the tunnel port.

use std::cell::RefCell;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::task::Poll;
use std::time::Duration;

use actix::prelude::*;
use log::error;
use tokio::net::{TcpSocket, TcpStream};

use crate::listen_socket::{Accepted, ListenSocket};

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::task::JoinHandle;

use crate::admission::{HandshakeSlots, SlotCaps, SlotRefusal};
use crate::cipher::Secret;
use crate::handshake::{
    older_refusal, read_message, refusal, version1_refusal, write_message, Acceptor,
    HandshakeError, Identity, Message, RefuseCode, Terms, Transport, IDENTITY_LEN,
};
use crate::limits::{printable, Escaped, Gauge, Slot, Usage};
use crate::metrics::{metrics, Refused};
use crate::protocol::Origin;
use crate::record::SessionKeys;
use crate::routes::{CarryClient, Client, RouteTable};
use crate::{Settings, Shared, Side};

/// Where a listener reports and asks upward: its owner (the Registry), as recipients, so this
/// module names no actor above it. The messages are declared here, beside their sender.
#[derive(Clone)]
pub struct Upstream {
    /// Told when the listener stops, to restart it unless it was told to stop.
    pub down: Recipient<ListenerDown>,
    /// Asked which secret a tunnel name's dialer must prove.
    pub secret: Recipient<TunnelSecret>,
    /// Asked whether a dialer that proved itself may have the name.
    pub may_accept: Recipient<MayAccept>,
    /// Handed each tunnel whose handshake is done.
    pub accepted: Recipient<TunnelAccepted>,
    /// This node's identity: the tunnel port signs its WELCOME with it, for the dialers' pins.
    pub identity: Arc<Identity>,
}

/// Tunnel port -> its owner (the Registry): which secret must a dialer of this name prove? Answered for any
/// name (the node's secret when the name has none of its own), so the answer tells nothing.
#[derive(Message)]
#[rtype(result = "Option<Secret>")]
pub struct TunnelSecret {
    /// The name the dialer claims in its HELLO.
    pub name: String,
}

/// Why a dialer may not have a tunnel name: what it is told, and what this node logs. A dialer
/// that proved no secret is told only what it needs to fix its own request: not who holds a
/// name, with which identity, or whether that tunnel is connected now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelRefusal {
    /// The REFUSE code.
    pub code: RefuseCode,
    /// The REFUSE text, sent to the dialer.
    pub peer: String,
    /// This node's log line.
    pub log: String,
}

impl TunnelRefusal {
    /// A refusal whose whole reason the dialer may read.
    pub fn same(code: RefuseCode, reason: String) -> TunnelRefusal {
        TunnelRefusal {
            code,
            peer: reason.clone(),
            log: reason,
        }
    }

    /// A refusal that tells a dialer without a proven secret only `brief`.
    pub fn told(code: RefuseCode, proven: bool, brief: &str, log: String) -> TunnelRefusal {
        TunnelRefusal {
            code,
            peer: if proven {
                log.clone()
            } else {
                brief.to_owned()
            },
            log,
        }
    }
}

/// Tunnel port -> its owner (the Registry): a dialer proved the secret (if any) and its identity; may it have
/// the name? Asked before the handshake is answered, so a refused dialer learns why.
#[derive(Message)]
#[rtype(result = "Result<(), TunnelRefusal>")]
pub struct MayAccept {
    /// The tunnel name the dialer claims.
    pub name: String,
    /// The dialer's public identity: a pinned name goes only to its pinned identity.
    pub identity: [u8; IDENTITY_LEN],
    /// The dialer proved a secret (the name's or the node's), not just its identity.
    pub secret_proven: bool,
    /// Where it dials from: new names are rate-limited per source address.
    pub peer: std::net::IpAddr,
    /// It asks to join its connected tunnel of that name as another lane.
    pub lane: bool,
}

/// Tunnel port -> its owner (the Registry): a peer dialled in and completed the handshake. An older tunnel of the
/// same name and identity (a dead one the peer has given up on) is replaced.
#[derive(Message)]
#[rtype(result = "()")]
pub struct TunnelAccepted {
    /// The name the dialer claimed and was given.
    pub name: String,
    /// The connection, handshake done: the tunnel (or lane) runs over it.
    pub sock: TcpStream,
    /// The dialer's windows and stream limit.
    pub peer: Terms,
    /// The dialer's public identity, pinned to the name.
    pub identity: [u8; IDENTITY_LEN],
    /// The record layer's keys; `None` when neither node seals.
    pub keys: Option<SessionKeys>,
    /// Another lane of the dialer's connected tunnel of that name, not a tunnel of its own.
    pub lane: bool,
}

/// Listener -> its owner (the Registry): a listener actor stopped. Unless the Registry stopped it (the service is
/// gone or has a newer listener), it is restarted with back-off.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ListenerDown {
    /// What the listener accepted: a service's clients or the tunnel port's peers.
    pub accepts: Accepts,
    /// The incarnation that stopped: a report from an old one is ignored.
    pub id: u64,
    /// It panicked (logged as an error; restarted all the same).
    pub panicked: bool,
}

/// Within its own address's share of the handshake slots, a newcomer pushes out only an attempt
/// that has waited this long: a burst of honest dialers from one address finishes instead of
/// knocking itself out, while idle sockets (older than this) still make room.
const HANDSHAKE_GRACE: Duration = Duration::from_secs(1);

/// Pause after an accept error (out of file descriptors, say) so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The listening socket of a local service, shared with the Registry so that closing it frees the
/// port at once: a DELETE or a move followed by a POST on the same port must not race the actor.
pub type SharedSocket = Rc<RefCell<Option<ListenSocket>>>;

/// Pending connections the kernel queues per listener: bursts of new clients must not be refused.
const BACKLOG: u32 = 1024;

/// Binds a listening socket (a local service's, or the tunnel port), on the calling thread's
/// reactor (the Registry's, where listeners run).
pub fn bind(addr: SocketAddr) -> io::Result<ListenSocket> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    ListenSocket::from_tokio(socket.listen(BACKLOG)?)
}

/// What a listener accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Accepts {
    /// Clients of this local service, each handed straight to the tunnel its service is bound to.
    Service(String),
    /// Peers dialling tunnels: each gets its handshake, then the Registry takes the tunnel.
    Tunnels,
}

impl std::fmt::Display for Accepts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Accepts::Service(name) => write!(f, "service {name}"),
            Accepts::Tunnels => f.write_str("tunnel port"),
        }
    }
}

/// Accepts on one listening socket. The Registry starts it and restarts it if it stops without
/// being told to.
pub struct Listener {
    /// What it accepts: a service's clients or the tunnel port's peers.
    accepts: Accepts,
    /// Which incarnation this is, so the Registry can tell a stale report from a current one.
    id: u64,
    /// Where accepted tunnels and its own end are reported.
    registry: Upstream,
    /// The listening socket, shared with the Registry (which closes it).
    socket: SharedSocket,
    /// The node's settings: handshake timeouts and limits, stream windows.
    settings: Settings,
    /// Descriptors and handshakes, node-wide.
    usage: Arc<Usage>,
    /// A local service's connections at once (`None` for the tunnel port).
    connections: Option<Arc<Gauge>>,
    /// Where a local service's clients go, as the Registry last published.
    routes: RouteTable,
    /// The tunnel port's handshakes under way, shared with their tasks (same thread).
    handshakes: Rc<RefCell<HandshakeSlots<JoinHandle<()>>>>,
}

/// A handshake's place in the tunnel port's [`HandshakeSlots`], given back when its task ends,
/// however it ends (done, failed, timed out, or aborted to make room).
struct HandshakeSlot {
    /// The table, shared with the listener.
    table: Rc<RefCell<HandshakeSlots<JoinHandle<()>>>>,
    /// This attempt's number in it.
    id: u64,
    /// Where `GET /config` reads the count from.
    usage: Arc<Usage>,
}

impl HandshakeSlot {
    /// The dialer proved itself: it is no longer dropped to make room for newcomers.
    fn prove(&self) {
        self.table.borrow_mut().prove(self.id);
    }
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        if let Ok(mut table) = self.table.try_borrow_mut() {
            table.release(self.id);
            self.usage
                .handshakes_in_use
                .store(table.len(), Ordering::Relaxed);
        }
    }
}

impl Listener {
    pub fn new(
        accepts: Accepts,
        id: u64,
        registry: Upstream,
        socket: SharedSocket,
        shared: Shared,
        connections: Option<Arc<Gauge>>,
    ) -> Listener {
        let Shared {
            settings,
            usage,
            routes,
        } = shared;
        let l = &settings.limits;
        let caps = SlotCaps {
            total: l.max_handshakes.max(1),
            per_address: l.handshakes_per_address.clamp(1, l.max_handshakes.max(1)),
            per_network: l.handshakes_per_network.clamp(1, l.max_handshakes.max(1)),
            grace: HANDSHAKE_GRACE,
        };
        Listener {
            accepts,
            id,
            registry,
            socket,
            settings,
            usage,
            connections,
            routes,
            handshakes: Rc::new(RefCell::new(HandshakeSlots::new(caps))),
        }
    }

    /// A dialer on the tunnel port: its handshake runs as a task of its own, in a slot of the
    /// table; the oldest unproven attempts in a full scope are aborted to make room.
    fn start_handshake(&self, sock: TcpStream, peer: SocketAddr) {
        let admitted = self
            .handshakes
            .borrow_mut()
            .admit(peer.ip(), std::time::Instant::now());
        let admitted = match admitted {
            Ok(a) => a,
            Err(refusal) => {
                self.usage
                    .handshakes_refused
                    .fetch_add(1, Ordering::Relaxed);
                match refusal {
                    SlotRefusal::AllProven => log_limited!(
                        warn,
                        "listener-limit",
                        "tunnel port: every handshake slot ({}) holds a dialer that proved \
                         itself; closing {peer}",
                        self.settings.limits.max_handshakes
                    ),
                    SlotRefusal::AddressBusy => log_limited_for!(
                        warn,
                        "listener-limit",
                        peer.ip(),
                        "tunnel port: {} handshakes from {} under way (handshakes_per_address); \
                         closing {peer}",
                        self.settings.limits.handshakes_per_address,
                        peer.ip()
                    ),
                }
                crate::io::reset_now(&sock);
                return;
            }
        };
        if !admitted.dropped.is_empty() {
            let n = admitted.dropped.len() as u64;
            self.usage
                .handshakes_dropped
                .fetch_add(n, Ordering::Relaxed);
            log_limited!(
                warn,
                "handshake-dropped",
                "tunnel port: handshake slots full for {peer} (its address, its network or the \
                 node); dropped the oldest unproven handshake to make room"
            );
        }
        for dropped in admitted.dropped {
            dropped.abort();
        }
        let slot = HandshakeSlot {
            table: self.handshakes.clone(),
            id: admitted.id,
            usage: self.usage.clone(),
        };
        let task = actix_rt::spawn(handshake(
            sock,
            peer,
            self.registry.clone(),
            self.settings,
            slot,
        ));
        let mut table = self.handshakes.borrow_mut();
        table.attach(admitted.id, task);
        self.usage
            .handshakes_in_use
            .store(table.len(), Ordering::Relaxed);
    }

    /// Hands a client straight to the tunnel its service is bound to (no Registry hop), or
    /// resets it at once when there is none, so it learns that nothing is behind the port.
    fn carry(&self, service: &str, accepted: Accepted, slots: Vec<Slot>) {
        let Accepted {
            sock,
            peer,
            reached,
        } = accepted;
        let routes = self.routes.load();
        match routes.carry(service) {
            // The tunnel may run on another thread: the socket goes unregistered (it never was).
            Ok((route, tunnel)) => tunnel.do_send(CarryClient {
                origin: reached
                    .or_else(|| sock.local_addr().ok())
                    .map(|reached| Origin::seen(peer, reached)),
                client: Client::Tcp { sock, peer },
                service: service.to_owned(),
                key: route.key.clone(),
                idle_timeout: route.timeout,
                pace: route.pace.clone(),
                slots,
            }),
            Err((reason, why)) => {
                metrics().count_refused(service, Side::Local, reason);
                log_limited!(
                    info,
                    "client-refused",
                    "service {service}: resetting connection from {peer}: {why}"
                );
                crate::io::reset_now(&sock);
            }
        }
    }

    fn count_refused(&self, reason: Refused) {
        if let Accepts::Service(service) = &self.accepts {
            metrics().count_refused(service, Side::Local, reason);
        }
    }

    /// The slots a new client needs, or `None` (logged, counted) when a limit is reached: a
    /// descriptor from the pool that keeps a reserve free, and a place in its service's limit.
    /// (A dialer on the tunnel port takes a handshake slot instead, so the tunnel port still
    /// answers when clients have used every descriptor they may.)
    fn admit(&self, peer: SocketAddr) -> Option<Vec<Slot>> {
        let Some(descriptor) = self.usage.descriptors.try_acquire() else {
            self.count_refused(Refused::Resources);
            log_limited!(
                warn,
                "descriptors",
                "{}: out of file descriptors (a reserve of {} is kept for the admin API and \
                 the tunnel port); closing {peer}",
                self.accepts,
                self.usage.limits.fd_reserve
            );
            return None;
        };
        let Some(gate) = &self.connections else {
            return Some(vec![descriptor]);
        };
        match gate.try_acquire() {
            Some(slot) => Some(vec![descriptor, slot]),
            None => {
                self.usage.refuse_connection();
                self.count_refused(Refused::ConnectionLimit);
                log_limited!(
                    warn,
                    "listener-limit",
                    "{}: {} connections at once (max_connections_per_service, or the service's \
                     descriptor share); resetting {peer}",
                    self.accepts,
                    gate.max()
                );
                None
            }
        }
    }
}

impl Actor for Listener {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let socket = self.socket.clone();
        ctx.add_stream(futures_util::stream::poll_fn(move |cx| {
            match socket.borrow().as_ref() {
                Some(l) => l.poll_accept(cx).map(Some),
                None => Poll::Ready(None),
            }
        }));
    }

    /// Also runs when a handler panicked: keep it to logging and a send.
    fn stopped(&mut self, _ctx: &mut Self::Context) {
        let panicked = std::thread::panicking();
        if panicked {
            error!("{}: the listener actor panicked", self.accepts);
        }
        self.registry.down.do_send(ListenerDown {
            accepts: self.accepts.clone(),
            id: self.id,
            panicked,
        });
    }
}

impl StreamHandler<io::Result<Accepted>> for Listener {
    fn handle(&mut self, item: io::Result<Accepted>, ctx: &mut Self::Context) {
        match item {
            Ok(accepted) => match &self.accepts {
                Accepts::Tunnels => match TcpStream::from_std(accepted.sock) {
                    Ok(sock) => self.start_handshake(sock, accepted.peer),
                    Err(e) => log_limited!(
                        warn,
                        "accept",
                        "{}: cannot take a dialer from {} over: {e}",
                        self.accepts,
                        accepted.peer
                    ),
                },
                Accepts::Service(service) => {
                    let Some(slots) = self.admit(accepted.peer) else {
                        crate::io::reset_now(&accepted.sock);
                        return;
                    };
                    self.carry(service, accepted, slots)
                }
            },
            Err(e) => {
                log_limited!(warn, "accept", "{}: accept failed: {e}", self.accepts);
                ctx.wait(tokio::time::sleep(ACCEPT_BACKOFF).into_actor(self));
            }
        }
    }

    fn finished(&mut self, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

/// Registry -> listener: the socket is closed, stop.
#[derive(Message)]
#[rtype(result = "()")]
pub struct StopListener;

impl Handler<StopListener> for Listener {
    type Result = ();

    fn handle(&mut self, _: StopListener, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

/// Registry -> listener: the shared socket is a new one; poll it so that it wakes this actor.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SocketReplaced;

impl Handler<SocketReplaced> for Listener {
    type Result = ();

    fn handle(&mut self, _: SocketReplaced, _ctx: &mut Self::Context) {}
}

#[cfg(feature = "fault-injection")]
impl Handler<crate::Crash> for Listener {
    type Result = ();

    fn handle(&mut self, _: crate::Crash, _ctx: &mut Self::Context) {
        panic!("fault injected into the listener of {}", self.accepts);
    }
}

/// A dialer on the tunnel port: HELLO (within `settings.hello_timeout`), CHALLENGE, PROOF, then
/// the Registry's verdict on the name, then WELCOME (or REFUSE), all within
/// `settings.handshake_timeout`. Nothing about this node's tunnels or services is said before
/// the dialer has proved the secret.
async fn handshake(
    sock: TcpStream,
    peer: SocketAddr,
    registry: Upstream,
    settings: Settings,
    slot: HandshakeSlot,
) {
    let limit = settings.handshake_timeout;
    let ip = peer.ip();
    match tokio::time::timeout(limit, answer(sock, peer, &registry, settings, &slot)).await {
        Ok(Ok(accepted)) => {
            log_limited_for!(
                info,
                "tunnel-opened",
                ip,
                "tunnel port: {peer} opened tunnel {}",
                Escaped(&accepted.name)
            );
            // The handshake slot is given back now.
            drop(slot);
            registry.accepted.do_send(accepted);
        }
        Ok(Err(e)) if e.is_auth_failure() => log_limited_for!(
            warn,
            "handshake-auth",
            ip,
            "tunnel port: {peer}: {e}; connection closed"
        ),
        Ok(Err(e)) => log_limited_for!(
            warn,
            "handshake",
            ip,
            "tunnel port: {peer}: bad handshake: {e}; connection closed"
        ),
        Err(_) => log_limited_for!(
            warn,
            "handshake",
            ip,
            "tunnel port: {peer}: no handshake within {} ms; connection closed",
            limit.as_millis()
        ),
    }
}

/// Opens PROOF and checks it with the secret its tunnel name needs: the name, the dialer's
/// identity and that secret; or the refusal to send and why.
async fn check_proof(
    acceptor: &mut Acceptor,
    proof: &Message,
    registry: &Upstream,
) -> Result<(String, [u8; IDENTITY_LEN], Option<Secret>), (bytes::BytesMut, HandshakeError)> {
    let auth_failed = || refusal(RefuseCode::AuthFailed, "authentication failed");
    let claim = acceptor.open_proof(proof).map_err(|e| (auth_failed(), e))?;
    let (name, identity) = (claim.name.clone(), claim.identity);
    if name.is_empty() || !printable(&name) {
        let answer = refusal(
            RefuseCode::Other,
            "a tunnel name must be printable and not empty",
        );
        return Err((answer, HandshakeError::Malformed("PROOF (tunnel name)")));
    }
    let stopping = || {
        let reason = "the node is stopping";
        (
            refusal(RefuseCode::ShuttingDown, reason),
            HandshakeError::Refused {
                code: RefuseCode::ShuttingDown,
                reason: reason.to_owned(),
            },
        )
    };
    let secret = registry
        .secret
        .send(TunnelSecret { name: name.clone() })
        .await
        .map_err(|_| stopping())?;
    acceptor
        .verify(secret.as_ref())
        .map_err(|e| (auth_failed(), e))?;
    Ok((name, identity, secret))
}

async fn answer(
    mut sock: TcpStream,
    peer: SocketAddr,
    registry: &Upstream,
    settings: Settings,
    slot: &HandshakeSlot,
) -> Result<TunnelAccepted, HandshakeError> {
    sock.set_nodelay(true)?;
    let first = tokio::time::timeout(settings.hello_timeout, read_message(&mut sock)).await;
    let (hello, raw) = match first {
        Err(_) => {
            return Err(HandshakeError::Deadline {
                what: "HELLO",
                limit: settings.hello_timeout,
            })
        }
        Ok(Err(HandshakeError::Version(v))) => {
            // Refused in a layout the older dialer reads, so its operator sees why.
            let refusal = if v == 1 {
                version1_refusal()
            } else {
                older_refusal(v)
            };
            let _ = write_message(&mut sock, &refusal).await;
            return Err(HandshakeError::Version(v));
        }
        Ok(other) => other?,
    };
    let transport = Transport::here(settings.encrypt);
    let mut acceptor = Acceptor::on_hello(hello, &raw, registry.identity.clone(), transport)?;
    write_message(&mut sock, acceptor.challenge()).await?;
    let (proof, _) = read_message(&mut sock).await?;
    let (name, identity, secret) = match check_proof(&mut acceptor, &proof, registry).await {
        Ok(proven) => proven,
        Err((answer, e)) => {
            let _ = write_message(&mut sock, &answer).await;
            return Err(e);
        }
    };
    slot.prove();
    let verdict = registry
        .may_accept
        .send(MayAccept {
            name: name.clone(),
            identity,
            secret_proven: secret.is_some(),
            peer: peer.ip(),
            lane: acceptor.hello.transport.lane,
        })
        .await
        .unwrap_or_else(|_| {
            Err(TunnelRefusal::same(
                RefuseCode::ShuttingDown,
                "the node is stopping".to_owned(),
            ))
        });
    if let Err(r) = verdict {
        let _ = write_message(&mut sock, &refusal(r.code, &r.peer)).await;
        return Err(HandshakeError::Refused {
            code: r.code,
            reason: format!("tunnel {} from {peer}: {}", Escaped(&name), r.log),
        });
    }
    write_message(
        &mut sock,
        &acceptor.welcome(secret.as_ref(), settings.terms()),
    )
    .await?;
    Ok(TunnelAccepted {
        name,
        sock,
        peer: acceptor.hello.terms,
        identity,
        keys: acceptor.keys(secret.as_ref()),
        lane: acceptor.hello.transport.lane,
    })
}
