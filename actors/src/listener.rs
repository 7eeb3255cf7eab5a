//! Listening sockets: the listener actor of a local service or of the tunnel port.

use std::cell::RefCell;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::task::Poll;
use std::time::Duration;

use actix::prelude::*;
use log::{error, info};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

use std::sync::Arc;

use crate::handshake::{
    read_message, refusal, version1_refusal, write_message, Acceptor, HandshakeError, RefuseCode,
};
use crate::limits::{printable, Escaped, Gauge, Slot, Usage};
use crate::metrics::{metrics, Refused};
use crate::registry::{ListenerDown, MayAccept, Registry, TunnelAccepted, TunnelSecret};
use crate::routes::RouteTable;
use crate::tunnel::CarryClient;
use crate::{Settings, Side};

/// Pause after an accept error (out of file descriptors, say) so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The listening socket of a local service, shared with the Registry so that closing it frees the
/// port at once: a DELETE or a move followed by a POST on the same port must not race the actor.
pub type SharedSocket = Rc<RefCell<Option<TcpListener>>>;

/// Pending connections the kernel queues per listener: bursts of new clients must not be refused.
const BACKLOG: u32 = 1024;

/// Binds a listening socket (a local service's, or the tunnel port).
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// What a listener accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Accepts {
    /// Clients of this local service, handed to the Registry.
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
    accepts: Accepts,
    /// Which incarnation this is, so the Registry can tell a stale report from a current one.
    id: u64,
    registry: Addr<Registry>,
    /// The listening socket, shared with the Registry (which closes it).
    socket: SharedSocket,
    settings: Settings,
    /// Descriptors and handshakes, node-wide.
    usage: Arc<Usage>,
    /// A local service's connections at once (`None` for the tunnel port).
    connections: Option<Arc<Gauge>>,
    /// Where a local service's clients go, as the Registry last published.
    routes: RouteTable,
}

impl Listener {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        accepts: Accepts,
        id: u64,
        registry: Addr<Registry>,
        socket: SharedSocket,
        settings: Settings,
        usage: Arc<Usage>,
        connections: Option<Arc<Gauge>>,
        routes: RouteTable,
    ) -> Listener {
        Listener {
            accepts,
            id,
            registry,
            socket,
            settings,
            usage,
            connections,
            routes,
        }
    }

    /// Hands a client straight to the tunnel its service is bound to (no Registry hop), or
    /// resets it at once when there is none, so it learns that nothing is behind the port.
    fn carry(&self, service: &str, sock: TcpStream, peer: SocketAddr, slots: Vec<Slot>) {
        let routes = self.routes.load();
        match routes.carry(service) {
            // The tunnel may run on another arbiter: the socket goes unregistered.
            Ok((route, tunnel)) => match sock.into_std() {
                Ok(sock) => tunnel.do_send(CarryClient {
                    sock,
                    service: service.to_owned(),
                    key: route.key.clone(),
                    idle_timeout: route.timeout,
                    slots,
                }),
                Err(e) => log_limited!(
                    warn,
                    "client-refused",
                    "service {service}: cannot hand over a client from {peer}: {e}"
                ),
            },
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

    /// The slots a new socket needs, or `None` (logged, counted) when a limit is reached.
    ///
    /// A client takes a descriptor from the pool that keeps a reserve free; a dialer on the
    /// tunnel port takes a handshake slot instead, so the tunnel port still answers when clients
    /// have used every descriptor they may (tunnels are bounded by `max_tunnels`).
    fn admit(&self, peer: SocketAddr) -> Option<Vec<Slot>> {
        if self.accepts == Accepts::Tunnels {
            return match self.usage.handshakes.try_acquire() {
                Some(slot) => Some(vec![slot]),
                None => {
                    log_limited!(
                        warn,
                        "listener-limit",
                        "{}: too many handshakes at once; closing {peer}",
                        self.accepts
                    );
                    None
                }
            };
        }
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
                    "{}: too many connections at once (max_connections_per_service {}); resetting {peer}",
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
        self.registry.do_send(ListenerDown {
            accepts: self.accepts.clone(),
            id: self.id,
            panicked,
        });
    }
}

impl StreamHandler<io::Result<(TcpStream, SocketAddr)>> for Listener {
    fn handle(&mut self, item: io::Result<(TcpStream, SocketAddr)>, ctx: &mut Self::Context) {
        match item {
            Ok((sock, peer)) => {
                let Some(slots) = self.admit(peer) else {
                    crate::io::reset_now(&sock);
                    return;
                };
                match &self.accepts {
                    Accepts::Service(service) => self.carry(service, sock, peer, slots),
                    Accepts::Tunnels => {
                        actix_rt::spawn(handshake(
                            sock,
                            peer,
                            self.registry.clone(),
                            self.settings,
                            slots,
                        ));
                    }
                }
            }
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

/// A dialer on the tunnel port: HELLO, CHALLENGE, PROOF, then the Registry's verdict on the name,
/// then WELCOME (or REFUSE), all within `settings.handshake_timeout`. Nothing about this node's
/// tunnels or services is said before the dialer has proved the secret.
async fn handshake(
    sock: TcpStream,
    peer: SocketAddr,
    registry: Addr<Registry>,
    settings: Settings,
    slots: Vec<Slot>,
) {
    let limit = settings.handshake_timeout;
    match tokio::time::timeout(limit, answer(sock, peer, &registry, settings)).await {
        Ok(Ok(accepted)) => {
            info!(
                "tunnel port: {peer} opened tunnel {}",
                Escaped(&accepted.name)
            );
            // The handshake slot is given back now.
            drop(slots);
            registry.do_send(accepted);
        }
        Ok(Err(e)) if e.is_auth_failure() => log_limited!(
            warn,
            "handshake-auth",
            "tunnel port: {peer}: {e}; connection closed"
        ),
        Ok(Err(e)) => log_limited!(
            warn,
            "handshake",
            "tunnel port: {peer}: bad handshake: {e}; connection closed"
        ),
        Err(_) => log_limited!(
            warn,
            "handshake",
            "tunnel port: {peer}: no handshake within {} ms; connection closed",
            limit.as_millis()
        ),
    }
}

async fn answer(
    mut sock: TcpStream,
    peer: SocketAddr,
    registry: &Addr<Registry>,
    settings: Settings,
) -> Result<TunnelAccepted, HandshakeError> {
    sock.set_nodelay(true)?;
    let (hello, raw) = match read_message(&mut sock).await {
        Err(HandshakeError::Version(v)) => {
            let _ = write_message(&mut sock, &version1_refusal()).await;
            return Err(HandshakeError::Version(v));
        }
        other => other?,
    };
    let acceptor = Acceptor::on_hello(hello, &raw)?;
    let name = acceptor.hello.name.clone();
    if name.is_empty() || !printable(&name) {
        let _ = write_message(
            &mut sock,
            &refusal(
                RefuseCode::Other,
                "a tunnel name must be printable and not empty",
            ),
        )
        .await;
        return Err(HandshakeError::Malformed("HELLO (tunnel name)"));
    }
    let secret = registry
        .send(TunnelSecret { name: name.clone() })
        .await
        .map_err(|_| HandshakeError::Refused {
            code: RefuseCode::ShuttingDown,
            reason: "the node is stopping".to_owned(),
        })?;
    write_message(&mut sock, acceptor.challenge()).await?;
    let (proof, _) = read_message(&mut sock).await?;
    if let Err(e) = acceptor.verify(&proof, secret.as_ref()) {
        let _ = write_message(
            &mut sock,
            &refusal(RefuseCode::AuthFailed, "authentication failed"),
        )
        .await;
        return Err(e);
    }
    let verdict = registry
        .send(MayAccept {
            name: name.clone(),
            identity: acceptor.hello.identity,
            secret_proven: secret.is_some(),
        })
        .await
        .unwrap_or_else(|_| Err((RefuseCode::ShuttingDown, "the node is stopping".to_owned())));
    if let Err((code, reason)) = verdict {
        let _ = write_message(&mut sock, &refusal(code, &reason)).await;
        return Err(HandshakeError::Refused {
            code,
            reason: format!("tunnel {} from {peer}: {reason}", Escaped(&name)),
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
        identity: acceptor.hello.identity,
    })
}
