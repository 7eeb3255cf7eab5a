//! Listening sockets: the listener actor of a local service or of the tunnel port.

use std::cell::RefCell;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::task::Poll;
use std::time::Duration;

use actix::prelude::*;
use log::{error, info, warn};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

use crate::registry::{Accepted, ListenerDown, MayAccept, Registry, TunnelAccepted};
use crate::tunnel;
use crate::Settings;

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
    socket: SharedSocket,
    settings: Settings,
}

impl Listener {
    pub fn new(
        accepts: Accepts,
        id: u64,
        registry: Addr<Registry>,
        socket: SharedSocket,
        settings: Settings,
    ) -> Listener {
        Listener {
            accepts,
            id,
            registry,
            socket,
            settings,
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
            Ok((sock, peer)) => match &self.accepts {
                Accepts::Service(service) => self.registry.do_send(Accepted {
                    service: service.clone(),
                    sock,
                    peer,
                }),
                Accepts::Tunnels => {
                    actix_rt::spawn(handshake(sock, peer, self.registry.clone(), self.settings));
                }
            },
            Err(e) => {
                warn!("{}: accept failed: {e}", self.accepts);
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

/// A dialer on the tunnel port gets `settings.handshake_timeout` to say hello; the Registry
/// decides whether the name it asks for is welcome before we answer.
async fn handshake(
    mut sock: TcpStream,
    peer: SocketAddr,
    registry: Addr<Registry>,
    settings: Settings,
) {
    let limit = settings.handshake_timeout;
    let hello = match tokio::time::timeout(limit, tunnel::read_hello(&mut sock)).await {
        Ok(Ok(hello)) => hello,
        Ok(Err(e)) => return warn!("tunnel port: {peer}: bad handshake: {e}; connection closed"),
        Err(_) => {
            return warn!(
                "tunnel port: {peer}: no handshake within {} ms; connection closed",
                limit.as_millis()
            )
        }
    };
    let verdict = match registry
        .send(MayAccept {
            name: hello.name.clone(),
        })
        .await
    {
        Ok(verdict) => verdict,
        Err(_) => Err("the node is stopping".to_owned()),
    };
    let welcome = verdict.clone().map(|()| settings.windows());
    let answered = tokio::time::timeout(limit, tunnel::welcome(&mut sock, welcome)).await;
    match (verdict, answered) {
        (Ok(()), Ok(Ok(()))) => {
            info!("tunnel port: {peer} opened tunnel {}", hello.name);
            registry.do_send(TunnelAccepted {
                name: hello.name,
                sock,
                peer: hello.windows,
            });
        }
        (Err(why), _) => warn!("tunnel port: {peer}: refused tunnel {}: {why}", hello.name),
        (Ok(()), _) => warn!("tunnel port: {peer}: handshake not completed; connection closed"),
    }
}
