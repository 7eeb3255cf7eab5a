//! Listening sockets: a local service's listener actor, and the tunnel port's acceptor.

use std::cell::RefCell;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::task::Poll;
use std::time::Duration;

use actix::prelude::*;
use log::{info, warn};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

use crate::registry::{Accepted, Registry, TunnelAccepted};
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

/// Accepts clients of one local service and hands them to the Registry.
pub struct Listener {
    service: String,
    registry: Addr<Registry>,
    socket: SharedSocket,
}

impl Listener {
    pub fn new(service: String, registry: Addr<Registry>, socket: SharedSocket) -> Listener {
        Listener {
            service,
            registry,
            socket,
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
}

impl StreamHandler<io::Result<(TcpStream, SocketAddr)>> for Listener {
    fn handle(&mut self, item: io::Result<(TcpStream, SocketAddr)>, ctx: &mut Self::Context) {
        match item {
            Ok((sock, peer)) => self.registry.do_send(Accepted {
                service: self.service.clone(),
                sock,
                peer,
            }),
            Err(e) => {
                warn!("service {}: accept failed: {e}", self.service);
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

/// Accepts tunnels on the tunnel port: each dialer gets `settings.handshake_timeout` to say hello,
/// then the Registry takes the tunnel.
pub fn serve_tunnel_port(listener: TcpListener, registry: Addr<Registry>, settings: Settings) {
    actix_rt::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((sock, peer)) => {
                    actix_rt::spawn(handshake(sock, peer, registry.clone(), settings));
                }
                Err(e) => {
                    warn!("tunnel port: accept failed: {e}");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            }
        }
    });
}

async fn handshake(
    mut sock: TcpStream,
    peer: SocketAddr,
    registry: Addr<Registry>,
    settings: Settings,
) {
    let limit = settings.handshake_timeout;
    match tokio::time::timeout(limit, tunnel::accept(&mut sock, settings.windows())).await {
        Ok(Ok(hello)) => {
            info!("tunnel port: {peer} opened tunnel {}", hello.name);
            registry.do_send(TunnelAccepted {
                name: hello.name,
                sock,
                peer: hello.windows,
            });
        }
        Ok(Err(e)) => warn!("tunnel port: {peer}: bad handshake: {e}; connection closed"),
        Err(_) => warn!(
            "tunnel port: {peer}: no handshake within {} ms; connection closed",
            limit.as_millis()
        ),
    }
}
