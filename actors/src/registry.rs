//! The Registry actor: the one owner of a node's configuration (tunnels, services, binds). It
//! starts and stops the tunnel and listener actors, and decides where each new connection goes:
//! which tunnel carries a client, whether a stream the peer opens is served. The tunnel then starts
//! that connection's actor itself and supervises it, so no connection ever exists that its tunnel
//! does not know. The bytes flow between a connection and its tunnel; never through here.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use actix::prelude::*;
use futures_util::future::join_all;
use log::{info, warn};
use serde_json::{json, Map, Value};
use thiserror::Error;
use tokio::net::TcpStream;

use crate::cipher::{stream_pair, ServiceKey};
use crate::listener::{self, Listener, SharedSocket, SocketReplaced, StopListener};
use crate::protocol::{KeyedOpen, Windows};
use crate::tunnel::{
    self, CarryClient, CloseService, CloseTunnel, RefuseStream, Role, ServeStream, Snapshot,
    Tunnel, TunnelStats,
};
use crate::{Settings, Side};

/// Why an admin request was refused. A refused request changes nothing.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum AdminError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Unreachable(String),
}

struct TunnelEntry {
    dest: Option<SocketAddr>,
    role: Role,
    generation: u64,
    /// The live tunnel actor; `None` once the tunnel is down.
    actor: Option<Addr<Tunnel>>,
    last_error: Option<String>,
}

struct LocalService {
    addr: SocketAddr,
    key: Option<ServiceKey>,
    timeout: Option<Duration>,
    socket: SharedSocket,
    listener: Addr<Listener>,
}

impl LocalService {
    fn close(self) {
        // Dropping the socket frees the port now; the actor goes when it reads the message.
        self.socket.borrow_mut().take();
        self.listener.do_send(StopListener);
    }
}

struct RemoteService {
    addr: SocketAddr,
    key: Option<ServiceKey>,
    timeout: Option<Duration>,
}

/// What `POST /service` carries, validated.
#[derive(Debug, Clone)]
pub struct ServiceSpec {
    pub name: String,
    pub key: Option<String>,
    pub timeout: Option<Duration>,
    pub side: Side,
    pub addr: SocketAddr,
}

pub struct Registry {
    settings: Settings,
    tunnels: BTreeMap<String, TunnelEntry>,
    /// Latest dial under way per tunnel name (generation, destination); a later request or a
    /// DELETE supersedes it.
    dialing: HashMap<String, (u64, SocketAddr)>,
    local: BTreeMap<String, LocalService>,
    remote: BTreeMap<String, RemoteService>,
    binds: BTreeMap<Side, BTreeMap<String, String>>,
    generation: u64,
}

impl Registry {
    pub fn new(settings: Settings) -> Registry {
        Registry {
            settings,
            tunnels: BTreeMap::new(),
            dialing: HashMap::new(),
            local: BTreeMap::new(),
            remote: BTreeMap::new(),
            binds: BTreeMap::from([
                (Side::Local, BTreeMap::new()),
                (Side::Remote, BTreeMap::new()),
            ]),
            generation: 0,
        }
    }

    fn next_generation(&mut self) -> u64 {
        self.generation += 1;
        self.generation
    }

    fn binds(&mut self, side: Side) -> &mut BTreeMap<String, String> {
        self.binds.entry(side).or_default()
    }

    fn connected_tunnel(&self, name: &str) -> Option<Addr<Tunnel>> {
        self.tunnels.get(name).and_then(|t| t.actor.clone())
    }

    fn install_tunnel(
        &mut self,
        name: String,
        dest: Option<SocketAddr>,
        role: Role,
        sock: TcpStream,
        peer: Windows,
        ctx: &mut Context<Self>,
    ) {
        let generation = self.next_generation();
        let actor = Tunnel::new(
            name.clone(),
            generation,
            role,
            sock,
            peer,
            ctx.address(),
            self.settings,
        )
        .start();
        let old = self.tunnels.insert(
            name.clone(),
            TunnelEntry {
                dest,
                role,
                generation,
                actor: Some(actor),
                last_error: None,
            },
        );
        if let Some(old_actor) = old.and_then(|t| t.actor) {
            info!("tunnel {name}: replaced by a new connection");
            old_actor.do_send(CloseTunnel { goodbye: None });
        }
        let role = match role {
            Role::Dialer => "dialled",
            Role::Acceptor => "accepted",
        };
        info!("tunnel {name} up ({role})");
    }

    fn snapshot_config(&self) -> Value {
        let endpoint = |a: &SocketAddr| json!([a.ip().to_string(), a.port()]);
        let key = |k: &Option<ServiceKey>| k.as_ref().map(|_| "***");
        let millis = |t: &Option<Duration>| t.map(|d| d.as_millis() as u64);
        let tunnels: Map<String, Value> = self
            .tunnels
            .iter()
            .map(|(name, t)| {
                let state = if t.actor.is_some() {
                    "connected"
                } else {
                    "down"
                };
                (
                    name.clone(),
                    json!({
                        "dest": t.dest.as_ref().map(endpoint),
                        "role": t.role,
                        "state": state,
                        "last_error": t.last_error,
                    }),
                )
            })
            .chain(
                self.dialing
                    .iter()
                    .filter(|(n, _)| !self.tunnels.contains_key(*n))
                    .map(|(n, (_, dest))| {
                        (
                            n.clone(),
                            json!({"dest": endpoint(dest), "role": Role::Dialer,
                                   "state": "connecting"}),
                        )
                    }),
            )
            .collect();
        let local: Map<String, Value> = self
            .local
            .iter()
            .map(|(name, s)| {
                let listening = s
                    .socket
                    .borrow()
                    .as_ref()
                    .and_then(|l| l.local_addr().ok())
                    .map(|a| a.to_string());
                (
                    name.clone(),
                    json!({"addr": endpoint(&s.addr), "key": key(&s.key),
                           "timeout": millis(&s.timeout), "listening": listening}),
                )
            })
            .collect();
        let remote: Map<String, Value> = self
            .remote
            .iter()
            .map(|(name, s)| {
                (
                    name.clone(),
                    json!({"addr": endpoint(&s.addr), "key": key(&s.key), "timeout": millis(&s.timeout)}),
                )
            })
            .collect();
        let binds = |side| json!(self.binds.get(&side).cloned().unwrap_or_default());
        json!({
            "tunnels": tunnels,
            "services": {"local": local, "remote": remote},
            "bind": {"local": binds(Side::Local), "remote": binds(Side::Remote)},
            "connections": {},
        })
    }

    /// The listening socket for a local service (new, or moving). The new address is bound before
    /// the old one is let go, so a refusal keeps the old; only when the service's own old listener
    /// is what holds the port (0.0.0.0:P to 127.0.0.1:P, say) is it released first, and restored
    /// if the new address still cannot be bound.
    fn rebind(&mut self, spec: &ServiceSpec) -> Result<tokio::net::TcpListener, AdminError> {
        let refused = |e: std::io::Error| {
            let msg = format!("service {}: cannot listen on {}: {e}", spec.name, spec.addr);
            warn!("{msg}");
            if e.kind() == std::io::ErrorKind::AddrNotAvailable {
                AdminError::Invalid(msg)
            } else {
                AdminError::Conflict(msg)
            }
        };
        let err = match listener::bind(spec.addr) {
            Ok(socket) => return Ok(socket),
            Err(e) => e,
        };
        let Some(old) = self.local.get(&spec.name) else {
            return Err(refused(err));
        };
        if err.kind() != std::io::ErrorKind::AddrInUse || old.addr.port() != spec.addr.port() {
            return Err(refused(err));
        }
        let released = old.socket.borrow_mut().take();
        drop(released);
        match listener::bind(spec.addr) {
            Ok(socket) => Ok(socket),
            Err(e) => {
                match listener::bind(old.addr) {
                    Ok(back) => {
                        *old.socket.borrow_mut() = Some(back);
                        old.listener.do_send(SocketReplaced);
                    }
                    Err(e) => warn!(
                        "service {}: lost its listener on {} while moving: {e}",
                        spec.name, old.addr
                    ),
                }
                Err(refused(e))
            }
        }
    }
}

impl Actor for Registry {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(1024);
    }
}

/// `POST /tunnel`: dial `dest` and register the tunnel as `name` once the handshake is done.
#[derive(Message)]
#[rtype(result = "Result<(), AdminError>")]
pub struct AddTunnel {
    pub name: String,
    pub dest: SocketAddr,
}

impl Handler<AddTunnel> for Registry {
    type Result = ResponseActFuture<Self, Result<(), AdminError>>;

    fn handle(&mut self, msg: AddTunnel, _ctx: &mut Self::Context) -> Self::Result {
        let generation = self.next_generation();
        self.dialing
            .insert(msg.name.clone(), (generation, msg.dest));
        info!("tunnel {}: dialing {}", msg.name, msg.dest);
        let (name, dest) = (msg.name, msg.dest);
        let limit = self.settings.dial_timeout;
        let windows = self.settings.windows();
        let dial_name = name.clone();
        Box::pin(
            async move { tokio::time::timeout(limit, tunnel::dial(dest, &dial_name, windows)).await }
                .into_actor(self)
                .map(move |result, act, ctx| {
                    if act.dialing.get(&name).map(|d| d.0) != Some(generation) {
                        return Err(AdminError::Conflict(format!(
                            "tunnel {name}: superseded by a later request while dialing"
                        )));
                    }
                    act.dialing.remove(&name);
                    let error = match result {
                        Ok(Ok((sock, peer))) => {
                            act.install_tunnel(name, Some(dest), Role::Dialer, sock, peer, ctx);
                            return Ok(());
                        }
                        Ok(Err(e)) => e.to_string(),
                        Err(_) => format!("no handshake within {} ms", limit.as_millis()),
                    };
                    warn!("tunnel {name}: cannot open to {dest}: {error}");
                    Err(AdminError::Unreachable(format!(
                        "tunnel {name}: cannot reach {dest}: {error}"
                    )))
                }),
        )
    }
}

/// `DELETE /tunnel`: close it on both ends, with every connection it carries.
#[derive(Message)]
#[rtype(result = "Result<(), AdminError>")]
pub struct DeleteTunnel {
    pub name: String,
}

impl Handler<DeleteTunnel> for Registry {
    type Result = Result<(), AdminError>;

    fn handle(&mut self, msg: DeleteTunnel, _ctx: &mut Self::Context) -> Self::Result {
        let dialing = self.dialing.remove(&msg.name).is_some();
        match self.tunnels.remove(&msg.name) {
            Some(t) => {
                if let Some(actor) = t.actor {
                    actor.do_send(CloseTunnel {
                        goodbye: Some("deleted".to_owned()),
                    });
                }
                info!("tunnel {}: deleted", msg.name);
                Ok(())
            }
            None if dialing => {
                info!("tunnel {}: dial cancelled", msg.name);
                Ok(())
            }
            None => Err(AdminError::NotFound(format!(
                "no tunnel named {}",
                msg.name
            ))),
        }
    }
}

/// `POST /service`: create or replace a local (listening) or remote (target) service.
#[derive(Message)]
#[rtype(result = "Result<(), AdminError>")]
pub struct AddService(pub ServiceSpec);

impl Handler<AddService> for Registry {
    type Result = Result<(), AdminError>;

    fn handle(&mut self, AddService(spec): AddService, ctx: &mut Self::Context) -> Self::Result {
        let key = spec.key.as_deref().map(ServiceKey::new);
        match spec.side {
            Side::Remote => {
                let replaced = self.remote.insert(
                    spec.name.clone(),
                    RemoteService {
                        addr: spec.addr,
                        key,
                        timeout: spec.timeout,
                    },
                );
                info!(
                    "service {} (remote) -> {}{}",
                    spec.name,
                    spec.addr,
                    if replaced.is_some() { ", replaced" } else { "" }
                );
            }
            Side::Local => {
                if let Some(s) = self.local.get_mut(&spec.name) {
                    if s.addr == spec.addr {
                        s.key = key;
                        s.timeout = spec.timeout;
                        info!("service {} (local) on {}: updated", spec.name, spec.addr);
                        return Ok(());
                    }
                }
                let socket = self.rebind(&spec)?;
                let socket: SharedSocket = Rc::new(RefCell::new(Some(socket)));
                let listener =
                    Listener::new(spec.name.clone(), ctx.address(), socket.clone()).start();
                let old = self.local.insert(
                    spec.name.clone(),
                    LocalService {
                        addr: spec.addr,
                        key,
                        timeout: spec.timeout,
                        socket,
                        listener,
                    },
                );
                if let Some(old) = old {
                    info!(
                        "service {} (local): stopped listening on {}",
                        spec.name, old.addr
                    );
                    old.close();
                }
                info!("service {} (local): listening on {}", spec.name, spec.addr);
            }
        }
        Ok(())
    }
}

/// `DELETE /service`: stop it and close its connections. Its binds go with it.
#[derive(Message)]
#[rtype(result = "Result<(), AdminError>")]
pub struct DeleteService {
    pub name: String,
    pub side: Side,
}

impl Handler<DeleteService> for Registry {
    type Result = Result<(), AdminError>;

    fn handle(&mut self, msg: DeleteService, _ctx: &mut Self::Context) -> Self::Result {
        let existed = match msg.side {
            Side::Local => self
                .local
                .remove(&msg.name)
                .map(LocalService::close)
                .is_some(),
            Side::Remote => self.remote.remove(&msg.name).is_some(),
        };
        if !existed {
            return Err(AdminError::NotFound(format!(
                "no {} service named {}",
                msg.side, msg.name
            )));
        }
        self.binds(msg.side).remove(&msg.name);
        for t in self.tunnels.values() {
            if let Some(actor) = &t.actor {
                actor.do_send(CloseService {
                    service: msg.name.clone(),
                    side: msg.side,
                });
            }
        }
        info!("service {} ({}): deleted", msg.name, msg.side);
        Ok(())
    }
}

/// `POST /bind` and `DELETE /bind`.
#[derive(Message)]
#[rtype(result = "Result<(), AdminError>")]
pub struct SetBind {
    pub tunnel: String,
    pub service: String,
    pub side: Side,
    pub bound: bool,
}

impl Handler<SetBind> for Registry {
    type Result = Result<(), AdminError>;

    fn handle(&mut self, msg: SetBind, _ctx: &mut Self::Context) -> Self::Result {
        let exists = match msg.side {
            Side::Local => self.local.contains_key(&msg.service),
            Side::Remote => self.remote.contains_key(&msg.service),
        };
        if msg.bound {
            if !exists {
                return Err(AdminError::NotFound(format!(
                    "no {} service named {}",
                    msg.side, msg.service
                )));
            }
            self.binds(msg.side)
                .insert(msg.service.clone(), msg.tunnel.clone());
            info!(
                "bind: {} service {} -> tunnel {}",
                msg.side, msg.service, msg.tunnel
            );
            return Ok(());
        }
        let binds = self.binds(msg.side);
        if binds.get(&msg.service) != Some(&msg.tunnel) {
            return Err(AdminError::NotFound(format!(
                "{} service {} is not bound to tunnel {}",
                msg.side, msg.service, msg.tunnel
            )));
        }
        binds.remove(&msg.service);
        info!(
            "unbind: {} service {} from tunnel {}",
            msg.side, msg.service, msg.tunnel
        );
        Ok(())
    }
}

/// `GET /config`: the live configuration with the tunnels' counters and connections.
#[derive(Message)]
#[rtype(result = "Value")]
pub struct GetConfig;

impl Handler<GetConfig> for Registry {
    type Result = ResponseActFuture<Self, Value>;

    fn handle(&mut self, _: GetConfig, _ctx: &mut Self::Context) -> Self::Result {
        let mut config = self.snapshot_config();
        let asks: Vec<(String, Addr<Tunnel>)> = self
            .tunnels
            .iter()
            .filter_map(|(n, t)| t.actor.clone().map(|a| (n.clone(), a)))
            .collect();
        Box::pin(
            async move {
                let stats =
                    join_all(asks.into_iter().map(|(name, actor)| async move {
                        (name, actor.send(Snapshot).await.ok())
                    }))
                    .await;
                let mut connections = Map::new();
                for (name, stats) in stats {
                    let Some(stats) = stats else { continue };
                    let TunnelStats {
                        connections: conns, ..
                    } = &stats;
                    for c in conns {
                        connections.insert(
                            format!("{name}/{}", c.stream),
                            json!({"tunnel": name, "stream": c.stream, "service": c.service,
                                   "side": c.side, "state": c.state,
                                   "bytes_sent": c.bytes_sent, "bytes_received": c.bytes_received}),
                        );
                    }
                    if let Some(Value::Object(t)) = config["tunnels"].get_mut(&name) {
                        t.insert("peer".into(), json!(stats.peer));
                        t.insert("streams".into(), json!(stats.streams));
                        t.insert("streams_opened".into(), json!(stats.streams_opened));
                        t.insert("bytes_sent".into(), json!(stats.bytes_sent));
                        t.insert("bytes_received".into(), json!(stats.bytes_received));
                        t.insert("send_window".into(), json!(stats.send_window));
                        t.insert("queued_bytes".into(), json!(stats.queued_bytes));
                    }
                }
                config["connections"] = Value::Object(connections);
                config
            }
            .into_actor(self),
        )
    }
}

/// Tunnel port -> Registry: a peer dialled in and completed the handshake.
#[derive(Message)]
#[rtype(result = "()")]
pub struct TunnelAccepted {
    pub name: String,
    pub sock: TcpStream,
    pub peer: Windows,
}

impl Handler<TunnelAccepted> for Registry {
    type Result = ();

    fn handle(&mut self, msg: TunnelAccepted, ctx: &mut Self::Context) {
        self.install_tunnel(msg.name, None, Role::Acceptor, msg.sock, msg.peer, ctx);
    }
}

/// Tunnel -> Registry: the tunnel actor stopped.
#[derive(Message)]
#[rtype(result = "()")]
pub struct TunnelDown {
    pub name: String,
    pub generation: u64,
    pub reason: String,
    /// The peer said goodbye (deleted the tunnel): forget it here too.
    pub closed_by_peer: bool,
}

impl Handler<TunnelDown> for Registry {
    type Result = ();

    fn handle(&mut self, msg: TunnelDown, _ctx: &mut Self::Context) {
        let Some(t) = self.tunnels.get_mut(&msg.name) else {
            return;
        };
        if t.generation != msg.generation {
            return;
        }
        if t.role == Role::Dialer && !msg.closed_by_peer {
            warn!("tunnel {} is down: {}", msg.name, msg.reason);
            t.actor = None;
            t.last_error = Some(msg.reason);
        } else {
            info!("tunnel {} removed: {}", msg.name, msg.reason);
            self.tunnels.remove(&msg.name);
        }
    }
}

/// Listener -> Registry: a client connected to a local service.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Accepted {
    pub service: String,
    pub sock: TcpStream,
    pub peer: SocketAddr,
}

impl Handler<Accepted> for Registry {
    type Result = ();

    fn handle(&mut self, msg: Accepted, _ctx: &mut Self::Context) {
        let Some(service) = self.local.get(&msg.service) else {
            return;
        };
        let refuse = |why: String| {
            info!(
                "service {}: closing connection from {}: {why}",
                msg.service, msg.peer
            );
        };
        let Some(tunnel_name) = self
            .binds
            .get(&Side::Local)
            .and_then(|b| b.get(&msg.service))
        else {
            return refuse("the service is not bound to a tunnel".to_owned());
        };
        let Some(tunnel) = self.connected_tunnel(tunnel_name) else {
            return refuse(format!("tunnel {tunnel_name} is not connected"));
        };
        let keyed: Option<KeyedOpen> = service.key.as_ref().map(ServiceKey::open);
        let ciphers = service
            .key
            .as_ref()
            .zip(keyed.as_ref())
            .map(|(k, o)| stream_pair(k, &o.nonce, true));
        tunnel.do_send(CarryClient {
            sock: msg.sock,
            service: msg.service,
            keyed,
            ciphers,
            idle_timeout: service.timeout,
        });
    }
}

/// Tunnel -> Registry: the peer opened a stream for one of our remote services.
#[derive(Message)]
#[rtype(result = "()")]
pub struct IncomingOpen {
    pub tunnel: String,
    pub addr: Addr<Tunnel>,
    pub stream: u32,
    pub service: String,
    pub keyed: Option<KeyedOpen>,
}

impl Handler<IncomingOpen> for Registry {
    type Result = ();

    fn handle(&mut self, msg: IncomingOpen, _ctx: &mut Self::Context) {
        let refusal = match self.remote.get(&msg.service) {
            None => Some(format!("no remote service named {}", msg.service)),
            Some(_)
                if self
                    .binds
                    .get(&Side::Remote)
                    .and_then(|b| b.get(&msg.service))
                    != Some(&msg.tunnel) =>
            {
                Some(format!(
                    "remote service {} is not bound to tunnel {}",
                    msg.service, msg.tunnel
                ))
            }
            Some(s) => match (&s.key, &msg.keyed) {
                (Some(k), Some(open)) if !k.verify(open) => {
                    Some(format!("key mismatch for service {}", msg.service))
                }
                (Some(_), None) | (None, Some(_)) => Some(format!(
                    "key mismatch for service {}: only one end has a key",
                    msg.service
                )),
                _ => None,
            },
        };
        if let Some(reason) = refusal {
            warn!(
                "tunnel {}: refusing stream {}: {reason}",
                msg.tunnel, msg.stream
            );
            msg.addr.do_send(RefuseStream {
                stream: msg.stream,
                reason,
            });
            return;
        }
        let Some(service) = self.remote.get(&msg.service) else {
            return;
        };
        let ciphers = service
            .key
            .as_ref()
            .zip(msg.keyed.as_ref())
            .map(|(k, o)| stream_pair(k, &o.nonce, false));
        msg.addr.do_send(ServeStream {
            stream: msg.stream,
            target: service.addr,
            connect_timeout: self.settings.connect_timeout,
            ciphers,
            idle_timeout: service.timeout,
        });
    }
}
