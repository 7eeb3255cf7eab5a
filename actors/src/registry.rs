//! The Registry actor: the one owner of a node's configuration (tunnels, services, binds). It
//! starts and stops the tunnel and listener actors, and after every change publishes the route
//! table ([`crate::routes`]) that listeners and tunnels read to place new connections themselves:
//! which tunnel carries a client, whether a stream the peer opens is served. Neither new
//! connections nor bytes pass through here.
//!
//! It also supervises: a dialled tunnel that drops is re-dialled with back-off until it is deleted,
//! a listener that stops unbidden (or panics) is restarted with back-off, and every accepted admin
//! change is written to the state file before it is answered.

use std::cell::RefCell;
use std::collections::HashSet;
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use futures_util::future::{join_all, LocalBoxFuture};
use log::{error, info, warn};
use rand::Rng;
use serde_json::{json, Map, Value};
use thiserror::Error;
use tokio::net::TcpStream;

use crate::admission::{self, SourceBuckets};
use crate::cipher::{CipherKind, Secret, ServiceKey};
use crate::handshake::{
    self, fingerprint, HandshakeError, Identity, RefuseCode, Terms, IDENTITY_LEN,
};
use crate::journal::Change;
use crate::limits::{Escaped, Gauge, Usage};
use crate::listener::{
    self, Accepts, Listener, ListenerDown, MayAccept, SharedSocket, SocketReplaced, StopListener,
    TunnelAccepted, TunnelRefusal, TunnelSecret, Upstream,
};
use crate::metrics::metrics;
use crate::protocol::GoAway;
use crate::routes::{LocalRoute, RemoteRoute, RouteTable, Routes};
use crate::state::{AcceptedRecord, ServiceRecord, State, StateStore, TunnelRecord};
use crate::tunnel::{CloseService, CloseTunnel, Role, Snapshot, Tunnel, TunnelDown, TunnelStats};
use crate::{Access, Settings, Side};

/// Why an admin request was refused. A refused request changes nothing, except `Unsaved`: the
/// change is live but the state file could not be written.
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
    #[error("{0}")]
    Unsaved(String),
}

/// Why a dial of a tunnel failed.
#[derive(Debug, Error)]
pub enum DialError {
    #[error("{0}")]
    Handshake(#[from] HandshakeError),
    #[error("no handshake within {} ms", .0.as_millis())]
    Timeout(Duration),
}

impl DialError {
    /// The peer is a menet node that answered and refused (authentication, name held, limits):
    /// worth re-dialling while its operator fixes things.
    fn refused_by_peer(&self) -> bool {
        !self.reached_itself()
            && matches!(
                self,
                DialError::Handshake(
                    HandshakeError::Refused { .. } | HandshakeError::AuthFailed(_)
                )
            )
    }

    /// The peer is this node itself (it saw its own identity): never worth a re-dial.
    fn reached_itself(&self) -> bool {
        matches!(
            self,
            DialError::Handshake(HandshakeError::Refused {
                code: RefuseCode::OwnPort,
                ..
            })
        )
    }
}

/// Re-dials and listener restarts wait `backoff(n)` before attempt `n` (from 1): exponential from
/// 200 ms to 30 s, with "equal jitter" (a random point in the upper half of the step) so that many
/// nodes cut at once do not re-dial in lockstep.
fn backoff(attempt: u32) -> Duration {
    const FIRST: Duration = Duration::from_millis(200);
    const MOST: Duration = Duration::from_secs(30);
    let step = FIRST
        .saturating_mul(1 << attempt.saturating_sub(1).min(16))
        .min(MOST);
    step.mul_f64(rand::thread_rng().gen_range(0.5..=1.0))
        .max(FIRST)
}

/// A listener that has lived this long is healthy again: its next restart starts the back-off anew.
const HEALTHY_AFTER: Duration = Duration::from_secs(30);
/// A dialled tunnel replaced by another connection of its name starts its back-off anew only if
/// it had lasted this long: two dialers that claim one name do not knock each other off in a loop.
const STABLE_AFTER: Duration = Duration::from_secs(10);
/// A pin's last contact is journaled again once it is this stale in the state file (the TTL is
/// counted in days: an hour's error is nothing, and a reconnecting dialer costs no fsync).
const SEEN_SAVE_EVERY: u64 = 3600;
/// Source addresses whose rate of new tunnel names is remembered.
const NAME_SOURCES: usize = 4096;

/// Seconds since the Unix epoch, for pins' last contact.
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
/// How long shutdown waits for the tunnels to flush their goodbyes.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

enum Link {
    Up(Addr<Tunnel>),
    /// Waiting for, or making, re-dial attempt `attempt` (dialled tunnels only).
    Retrying {
        attempt: u32,
        task: SpawnHandle,
    },
}

struct TunnelEntry {
    /// Where a dialled tunnel goes; `None` for an accepted one.
    dest: Option<SocketAddr>,
    role: Role,
    /// The incarnation: a new tunnel connection gets a new one, so stale reports are ignored.
    generation: u64,
    link: Link,
    /// Why the last attempt or connection failed, for `GET /config`.
    last_error: Option<String>,
    /// A dialled tunnel's own secret, overriding the node's.
    secret: Option<Secret>,
    /// The re-dial attempt that made this connection (0: the admin API did). A tunnel that drops
    /// before its peer said a word goes on from there instead of starting the back-off anew, so
    /// a peer that accepts and drops at once is not hammered.
    dialled_on: u32,
    /// The data arbiter the connected tunnel runs on (`GET /config` `thread`), if any.
    thread: Option<usize>,
}

/// How a tunnel connection came to be.
enum Origin {
    /// This node dialled `dest`: by the admin API (attempt 0) or re-dial attempt `attempt`.
    Dialled {
        dest: SocketAddr,
        attempt: u32,
        secret: Option<Secret>,
    },
    /// A peer dialled in, proving `identity`.
    Accepted { identity: [u8; IDENTITY_LEN] },
}

/// A tunnel name this node accepts: declared by the admin API (with its own secret, perhaps), or
/// claimed by a dialer, whose identity it is pinned to.
#[derive(Debug, Clone, Default)]
struct AcceptedName {
    /// Only a dialer proving this secret may claim the name (instead of the node's).
    secret: Option<Secret>,
    /// The identity of the dialer that holds the name.
    pin: Option<[u8; IDENTITY_LEN]>,
    /// Declared by `POST /tunnel {"role": "acceptor"}`, not just claimed by a dialer.
    declared: bool,
    /// When its dialer was last connected (Unix seconds): the pin expires `pin_ttl` after it.
    seen: u64,
    /// `seen` as the state file has it, so a reconnect journals it only once it is stale.
    saved_seen: u64,
}

/// A listening socket the Registry keeps open: a local service's, or the tunnel port.
struct Listening {
    addr: SocketAddr,
    /// Shared with the listener actor so that closing it frees the port at once.
    socket: SharedSocket,
    actor: Option<Addr<Listener>>,
    id: u64,
    started: Instant,
    restarts: u32,
    retry: Option<SpawnHandle>,
    last_error: Option<String>,
}

impl Listening {
    fn new(addr: SocketAddr, socket: Option<tokio::net::TcpListener>) -> Listening {
        Listening {
            addr,
            socket: Rc::new(RefCell::new(socket)),
            actor: None,
            id: 0,
            started: Instant::now(),
            restarts: 0,
            retry: None,
            last_error: None,
        }
    }

    fn close(self, ctx: &mut Context<Registry>) {
        // Dropping the socket frees the port now; the actor goes when it reads the message.
        self.socket.borrow_mut().take();
        if let Some(actor) = self.actor {
            actor.do_send(StopListener);
        }
        if let Some(retry) = self.retry {
            ctx.cancel_future(retry);
        }
    }
}

struct LocalService {
    /// `None`: plaintext.
    key: Option<ServiceKey>,
    /// Idle timeout of each connection.
    timeout: Option<Duration>,
    listening: Listening,
    /// Clients carried at once, against `max_connections_per_service`.
    connections: Arc<Gauge>,
}

struct RemoteService {
    /// Where streams of this service are dialled.
    addr: SocketAddr,
    key: Option<ServiceKey>,
    timeout: Option<Duration>,
}

/// What `POST /service` carries, validated.
#[derive(Debug, Clone)]
pub struct ServiceSpec {
    pub name: String,
    pub key: Option<String>,
    /// The cipher of a keyed service (RC4 when not given).
    pub cipher: Option<CipherKind>,
    pub timeout: Option<Duration>,
    pub side: Side,
    pub addr: SocketAddr,
}

/// The state file's verdict on a change, awaited before the API answers.
type Saved = LocalBoxFuture<'static, Result<(), AdminError>>;

/// What a change touched, for the journal: the state at each key is written as it is after the
/// change (set or removed), O(1) per key.
#[derive(Debug, Clone)]
enum Key {
    Identity,
    Tunnel(String),
    Accepted(String),
    Service(Side, String),
    Bind(Side, String),
}

pub struct Registry {
    settings: Settings,
    /// The node's tunnel secret and who may dial in.
    access: Access,
    /// The limits and their counters, shared with every actor.
    usage: Arc<Usage>,
    /// This node's own tunnel port, which `POST /tunnel` must not dial.
    port_addr: SocketAddr,
    /// This node's identity as a dialer (kept in the state file): acceptors pin the names it
    /// claims to it.
    identity: Arc<Identity>,
    tunnels: BTreeMap<String, TunnelEntry>,
    /// Names peers may claim: declared ones, and the pins of names claimed.
    accepted: BTreeMap<String, AcceptedName>,
    /// What listeners and tunnels read to place new connections; republished on every change.
    routes: RouteTable,
    /// The routes as of now (persistent maps: a change costs O(log n), publishing O(1)).
    current: Routes,
    /// Latest `POST /tunnel` dial under way per tunnel name (generation, destination); a later
    /// request or a DELETE supersedes it.
    dialing: HashMap<String, (u64, SocketAddr)>,
    local: BTreeMap<String, LocalService>,
    remote: BTreeMap<String, RemoteService>,
    binds: BTreeMap<Side, BTreeMap<String, String>>,
    tunnel_port: Option<Listening>,
    store: Option<StateStore>,
    /// Restored when the actor starts.
    restore: Option<State>,
    shutting_down: bool,
    generation: u64,
    /// The identity was made at this start (none in the state file): journaled once running.
    identity_unsaved: bool,
    /// The data arbiters (`[node] threads`), each a thread of its own running tunnels and their
    /// connections; none: they run here, beside the Registry.
    data: Vec<Arbiter>,
    /// The arbiter the next tunnel goes to.
    next_data: usize,
    /// New tunnel names each source address may still claim (`new_names_per_minute`).
    new_names: SourceBuckets,
}

impl Registry {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        settings: Settings,
        access: Access,
        tunnel_port: tokio::net::TcpListener,
        store: Option<StateStore>,
        restore: Option<State>,
        fd_limit: usize,
        threads: usize,
    ) -> Registry {
        let port_addr = tunnel_port
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let loaded = restore
            .as_ref()
            .and_then(|s| s.identity.as_deref())
            .and_then(|hex| {
                Identity::from_hex(hex)
                    .map_err(|e| error!("state file: identity: {e}; a new one is made"))
                    .ok()
            });
        let identity_unsaved = loaded.is_none();
        let identity = loaded.unwrap_or_else(Identity::generate);
        Registry {
            settings,
            access,
            usage: Usage::new(settings.limits, fd_limit),
            port_addr,
            identity: Arc::new(identity),
            tunnels: BTreeMap::new(),
            accepted: BTreeMap::new(),
            routes: RouteTable::default(),
            current: Routes::default(),
            dialing: HashMap::new(),
            local: BTreeMap::new(),
            remote: BTreeMap::new(),
            binds: BTreeMap::from([
                (Side::Local, BTreeMap::new()),
                (Side::Remote, BTreeMap::new()),
            ]),
            tunnel_port: Some(Listening::new(port_addr, Some(tunnel_port))),
            store,
            restore,
            shutting_down: false,
            generation: 0,
            identity_unsaved,
            data: (0..threads).map(|_| Arbiter::new()).collect(),
            next_data: 0,
            new_names: SourceBuckets::new(settings.limits.new_names_per_minute, NAME_SOURCES),
        }
    }

    /// The gauge of a new local service's clients: at most `max_connections_per_service`, and at
    /// most its share of the descriptor pool, so one service cannot starve the others.
    fn service_gauge(&self) -> Arc<Gauge> {
        let l = &self.settings.limits;
        let share = l.descriptor_share(self.usage.descriptors.max());
        Gauge::new(l.max_connections_per_service.min(share))
    }

    /// Where listeners report and ask: this Registry, as recipients.
    fn upstream(&self, ctx: &Context<Self>) -> Upstream {
        let me = ctx.address();
        Upstream {
            down: me.clone().recipient(),
            secret: me.clone().recipient(),
            may_accept: me.clone().recipient(),
            accepted: me.recipient(),
        }
    }

    /// The data arbiter for the next tunnel, and its number.
    fn next_data_arbiter(&mut self) -> Option<(ArbiterHandle, usize)> {
        let n = self.next_data % self.data.len().max(1);
        let arbiter = self.data.get(n)?;
        self.next_data = self.next_data.wrapping_add(1);
        Some((arbiter.handle(), n))
    }

    fn next_generation(&mut self) -> u64 {
        self.generation += 1;
        self.generation
    }

    fn binds(&mut self, side: Side) -> &mut BTreeMap<String, String> {
        self.binds.entry(side).or_default()
    }

    fn connected_tunnel(&self, name: &str) -> Option<Addr<Tunnel>> {
        match self.tunnels.get(name).map(|t| &t.link) {
            Some(Link::Up(actor)) => Some(actor.clone()),
            _ => None,
        }
    }

    /// Publishes the routes as they are now (services, binds, connected tunnels), for the next
    /// connection any listener or tunnel places.
    /// Publishes the current routes: an O(1) clone of persistent maps.
    fn publish(&self) {
        self.routes.publish(self.current.clone());
    }

    /// Brings the routes at `keys` up to date (O(log n) each), then publishes them.
    fn reroute(&mut self, keys: &[Key]) {
        for key in keys {
            match key {
                Key::Service(Side::Local, name) | Key::Bind(Side::Local, name) => {
                    let tunnel = self.binds.get(&Side::Local).and_then(|b| b.get(name));
                    match self.local.get(name) {
                        Some(s) => {
                            let route = LocalRoute {
                                tunnel: tunnel.cloned(),
                                key: s.key.clone(),
                                timeout: s.timeout,
                            };
                            self.current.local.insert(name.clone(), route);
                        }
                        None => {
                            self.current.local.remove(name);
                        }
                    }
                }
                Key::Service(Side::Remote, name) | Key::Bind(Side::Remote, name) => {
                    let tunnel = self.binds.get(&Side::Remote).and_then(|b| b.get(name));
                    match self.remote.get(name) {
                        Some(s) => {
                            let route = RemoteRoute {
                                addr: s.addr,
                                key: s.key.clone(),
                                timeout: s.timeout,
                                tunnel: tunnel.cloned(),
                            };
                            self.current.remote.insert(name.clone(), route);
                        }
                        None => {
                            self.current.remote.remove(name);
                        }
                    }
                }
                Key::Tunnel(name) => match self.tunnels.get(name).map(|t| &t.link) {
                    Some(Link::Up(a)) => {
                        self.current
                            .tunnels
                            .insert(name.clone(), a.clone().recipient());
                    }
                    _ => {
                        self.current.tunnels.remove(name);
                    }
                },
                Key::Identity | Key::Accepted(_) => {}
            }
        }
        self.publish();
    }

    /// Every route from scratch (at restore): O(n), once.
    fn build_routes(&self) -> Routes {
        let bind =
            |side: Side, name: &str| self.binds.get(&side).and_then(|b| b.get(name)).cloned();
        Routes {
            local: self
                .local
                .iter()
                .map(|(n, s)| {
                    let route = LocalRoute {
                        tunnel: bind(Side::Local, n),
                        key: s.key.clone(),
                        timeout: s.timeout,
                    };
                    (n.clone(), route)
                })
                .collect(),
            remote: self
                .remote
                .iter()
                .map(|(n, s)| {
                    let route = RemoteRoute {
                        addr: s.addr,
                        key: s.key.clone(),
                        timeout: s.timeout,
                        tunnel: bind(Side::Remote, n),
                    };
                    (n.clone(), route)
                })
                .collect(),
            tunnels: self
                .tunnels
                .iter()
                .filter_map(|(n, t)| match &t.link {
                    Link::Up(a) => Some((n.clone(), a.clone().recipient())),
                    Link::Retrying { .. } => None,
                })
                .collect(),
            closed: self.shutting_down,
        }
    }

    /// Whether `dest` is this node's own tunnel port, however it is spelt: an IPv4-mapped
    /// address is its IPv4 one, an unspecified address is loopback (where the kernel sends it),
    /// and a port bound to every address is reached by loopback or any of this host's interface
    /// addresses. (A peer that still turns out to be this node, through a relay or a NAT, shows
    /// this node's own identity in its HELLO and is refused there.)
    fn is_own_port(&self, dest: SocketAddr) -> bool {
        let own = self.port_addr;
        if dest.port() != own.port() {
            return false;
        }
        let reached = match admission::source(dest.ip()) {
            IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::from([127, 0, 0, 1]),
            IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        let own_ip = admission::source(own.ip());
        if own_ip.is_unspecified() {
            reached.is_loopback() || crate::io::interface_addresses().contains(&reached)
        } else {
            reached == own_ip
        }
    }

    /// The secret a dialer of `name` must prove: the name's own, else the node's.
    fn secret_for(&self, name: &str) -> Option<Secret> {
        self.accepted
            .get(name)
            .and_then(|a| a.secret.clone())
            .or_else(|| self.access.secret.clone())
    }

    /// The secret this node proves when dialling a tunnel with `own` secret.
    fn dial_secret(&self, own: &Option<Secret>) -> Option<Secret> {
        own.clone().or_else(|| self.access.secret.clone())
    }

    /// Ends a tunnel entry's life: its connection closed (with `goodbye` if given), its re-dial
    /// cancelled.
    fn retire(entry: TunnelEntry, goodbye: Option<(GoAway, String)>, ctx: &mut Context<Self>) {
        match entry.link {
            Link::Up(actor) => actor.do_send(CloseTunnel { goodbye }),
            Link::Retrying { task, .. } => {
                ctx.cancel_future(task);
            }
        }
    }

    fn install_tunnel(
        &mut self,
        name: String,
        origin: Origin,
        sock: TcpStream,
        peer: Terms,
        ctx: &mut Context<Self>,
    ) {
        let peer_addr = sock.peer_addr().ok();
        let (dest, role, dialled_on, secret) = match origin {
            Origin::Dialled {
                dest,
                attempt,
                secret,
            } => (Some(dest), Role::Dialer, attempt, secret),
            Origin::Accepted { identity } => {
                let entry = self.accepted.entry(name.clone()).or_default();
                let now = unix_now();
                entry.seen = now;
                let stale = now.saturating_sub(entry.saved_seen) >= SEEN_SAVE_EVERY;
                let repinned = entry.pin != Some(identity);
                if repinned {
                    if let Some(ip) = peer_addr.map(|a| a.ip()) {
                        log_limited_for!(
                            info,
                            "tunnel-pinned",
                            ip,
                            "tunnel {}: pinned to the identity {} of its dialer",
                            Escaped(&name),
                            fingerprint(&identity)
                        );
                    }
                    entry.pin = Some(identity);
                }
                if repinned || stale {
                    entry.saved_seen = now;
                    self.save_in_background(&[Key::Accepted(name.clone())], ctx);
                }
                (None, Role::Acceptor, 0, None)
            }
        };
        let generation = self.next_generation();
        let authenticated = match role {
            Role::Dialer => self.dial_secret(&secret).is_some(),
            Role::Acceptor => self.secret_for(&name).is_some(),
        };
        let sock = match sock.into_std() {
            Ok(s) => s,
            Err(e) => {
                warn!("tunnel {name}: cannot hand the socket to a data thread: {e}");
                return;
            }
        };
        let (registry, settings, usage, routes) = (
            ctx.address().recipient(),
            self.settings,
            self.usage.clone(),
            self.routes.clone(),
        );
        let tunnel_name = name.clone();
        let make = move |_: &mut Context<Tunnel>| {
            Tunnel::new(
                tunnel_name,
                generation,
                role,
                sock,
                peer,
                registry,
                settings,
                usage,
                routes,
                authenticated,
            )
        };
        // A tunnel and all its connections on one data arbiter, so a stream's bytes never cross
        // threads; tunnels are dealt round-robin over them.
        let (actor, thread) = match self.next_data_arbiter() {
            Some((arbiter, n)) => (Tunnel::start_in_arbiter(&arbiter, make), Some(n)),
            None => (Tunnel::create(make), None),
        };
        let old = self.tunnels.insert(
            name.clone(),
            TunnelEntry {
                dest,
                role,
                generation,
                link: Link::Up(actor),
                last_error: None,
                dialled_on,
                thread,
                secret,
            },
        );
        let log_ip = peer_addr.map_or(IpAddr::from([0u8, 0, 0, 0]), |a| a.ip());
        if let Some(old) = old {
            if matches!(old.link, Link::Up(_)) {
                log_limited_for!(
                    info,
                    "tunnel-replaced",
                    log_ip,
                    "tunnel {}: replaced by a new connection of the same dialer ({})",
                    Escaped(&name),
                    peer_addr.map_or("?".to_owned(), |a| a.to_string())
                );
            }
            let goodbye = (
                GoAway::Replaced,
                "replaced by a newer connection".to_owned(),
            );
            Registry::retire(old, Some(goodbye), ctx);
        }
        let role = match role {
            Role::Dialer => "dialled",
            Role::Acceptor => "accepted",
        };
        log_limited_for!(
            info,
            "tunnel-up",
            log_ip,
            "tunnel {} up ({role})",
            Escaped(&name)
        );
        metrics().set_tunnel_connected(&name, true);
        self.reroute(&[Key::Tunnel(name)]);
    }

    /// Journals what changed at `keys` without anyone waiting for the answer (a change the peer
    /// made).
    fn save_in_background(&self, keys: &[Key], ctx: &mut Context<Self>) {
        let saved = self.persist(keys);
        ctx.spawn(
            async move {
                if let Err(e) = saved.await {
                    error!("{e}");
                }
            }
            .into_actor(self),
        );
    }

    /// Dials tunnel `name` to `dest`, within the dial timeout.
    fn dial(
        &self,
        name: &str,
        dest: SocketAddr,
        secret: &Option<Secret>,
    ) -> impl std::future::Future<Output = Result<(TcpStream, Terms), DialError>> {
        let identity = self.identity.clone();
        let limit = self.settings.dial_timeout;
        let terms = self.settings.terms();
        let secret = self.dial_secret(secret);
        let name = name.to_owned();
        async move {
            match tokio::time::timeout(limit, handshake::dial(dest, &name, terms, identity, secret))
                .await
            {
                Ok(Ok(done)) => Ok(done),
                Ok(Err(e)) => Err(DialError::Handshake(e)),
                Err(_) => Err(DialError::Timeout(limit)),
            }
        }
    }

    /// Schedules re-dial attempt `attempt` of a dialled tunnel after `delay`.
    fn retry_tunnel(&mut self, name: &str, attempt: u32, delay: Duration, ctx: &mut Context<Self>) {
        let Some(t) = self.tunnels.get_mut(name) else {
            return;
        };
        let generation = t.generation;
        let owned = name.to_owned();
        metrics().set_tunnel_connected(name, false);
        metrics().count_redial(name);
        let task = ctx.run_later(delay, move |act, ctx| act.redial(owned, generation, ctx));
        if let Link::Retrying { task: old, .. } =
            std::mem::replace(&mut t.link, Link::Retrying { attempt, task })
        {
            ctx.cancel_future(old);
        }
    }

    fn redial(&mut self, name: String, generation: u64, ctx: &mut Context<Self>) {
        let Some(t) = self.tunnels.get(&name) else {
            return;
        };
        let (Some(dest), Link::Retrying { attempt, .. }, true) =
            (t.dest, &t.link, t.generation == generation)
        else {
            return;
        };
        let attempt = *attempt;
        let secret = t.secret.clone();
        let entry = name.clone();
        let dial = self
            .dial(&name, dest, &secret)
            .into_actor(self)
        .map(move |result, act, ctx| {
            let Some(t) = act.tunnels.get_mut(&name) else {
                return;
            };
            if t.generation != generation || act.shutting_down {
                return;
            }
            match result {
                Ok((sock, peer)) => {
                    info!("tunnel {name}: re-dial attempt {attempt} to {dest} succeeded");
                    let origin = Origin::Dialled {
                        dest,
                        attempt,
                        secret,
                    };
                    act.install_tunnel(name, origin, sock, peer, ctx);
                }
                Err(e) => {
                    let e = e.to_string();
                    let delay = backoff(attempt + 1);
                    warn!(
                        "tunnel {name}: re-dial attempt {attempt} to {dest} failed: {e}; next in {} ms",
                        delay.as_millis()
                    );
                    t.last_error = Some(e);
                    act.retry_tunnel(&name, attempt + 1, delay, ctx);
                }
            }
        });
        let task = ctx.spawn(dial);
        if let Some(t) = self.tunnels.get_mut(&entry) {
            t.link = Link::Retrying { attempt, task };
        }
    }

    fn listening_mut(&mut self, accepts: &Accepts) -> Option<&mut Listening> {
        match accepts {
            Accepts::Service(name) => self.local.get_mut(name).map(|s| &mut s.listening),
            Accepts::Tunnels => self.tunnel_port.as_mut(),
        }
    }

    /// Starts a listener actor on `accepts`'s socket, binding the socket first if it has none. A
    /// bind that fails is retried with back-off.
    fn start_listener(&mut self, accepts: Accepts, ctx: &mut Context<Self>) {
        let id = self.next_generation();
        let (registry, settings, usage) = (self.upstream(ctx), self.settings, self.usage.clone());
        let routes = self.routes.clone();
        let gate = match &accepts {
            Accepts::Service(name) => self.local.get(name).map(|s| s.connections.clone()),
            Accepts::Tunnels => None,
        };
        let Some(l) = self.listening_mut(&accepts) else {
            return;
        };
        l.retry = None;
        if l.socket.borrow().is_none() {
            match listener::bind(l.addr) {
                Ok(socket) => *l.socket.borrow_mut() = Some(socket),
                Err(e) => {
                    l.restarts += 1;
                    let delay = backoff(l.restarts);
                    error!(
                        "{accepts}: cannot listen on {}: {e}; retrying in {} ms",
                        l.addr,
                        delay.as_millis()
                    );
                    l.last_error = Some(format!("cannot listen on {}: {e}", l.addr));
                    let again = accepts.clone();
                    l.retry =
                        Some(ctx.run_later(delay, move |act, ctx| act.start_listener(again, ctx)));
                    return;
                }
            }
        }
        l.id = id;
        l.started = Instant::now();
        l.last_error = None;
        l.actor = Some(
            Listener::new(
                accepts,
                id,
                registry,
                l.socket.clone(),
                settings,
                usage,
                gate,
                routes,
            )
            .start(),
        );
    }

    /// Writes the configuration to the state file (if there is one); resolves once it is on disk.
    /// What the state holds at `key` now, as a journal change.
    fn change_at(&self, key: &Key) -> Change {
        let record = |addr: SocketAddr, key: &Option<ServiceKey>, timeout: &Option<Duration>| {
            ServiceRecord {
                addr,
                key: key.as_ref().map(|k| k.secret.expose().to_owned()),
                cipher: key
                    .as_ref()
                    .filter(|k| k.cipher != CipherKind::Rc4)
                    .map(|k| k.cipher.name().to_owned()),
                timeout_ms: timeout.map(|d| d.as_millis() as u64),
            }
        };
        match key {
            Key::Identity => Change::Identity {
                identity: self.identity.to_hex(),
            },
            Key::Tunnel(name) => Change::Tunnel {
                name: name.clone(),
                record: self
                    .tunnels
                    .get(name)
                    .filter(|t| t.role == Role::Dialer)
                    .and_then(|t| {
                        Some(TunnelRecord {
                            dest: t.dest?,
                            secret: t.secret.as_ref().map(|s| s.expose().to_owned()),
                        })
                    }),
            },
            Key::Accepted(name) => Change::Accepted {
                name: name.clone(),
                record: self.accepted.get(name).map(|a| AcceptedRecord {
                    secret: a.secret.as_ref().map(|s| s.expose().to_owned()),
                    identity: a.pin.as_ref().map(|p| handshake::to_hex(p)),
                    declared: a.declared,
                    seen: a.pin.map(|_| a.seen),
                }),
            },
            Key::Service(side, name) => Change::Service {
                side: *side,
                name: name.clone(),
                record: match side {
                    Side::Local => self
                        .local
                        .get(name)
                        .map(|s| record(s.listening.addr, &s.key, &s.timeout)),
                    Side::Remote => self
                        .remote
                        .get(name)
                        .map(|s| record(s.addr, &s.key, &s.timeout)),
                },
            },
            Key::Bind(side, service) => Change::Bind {
                side: *side,
                service: service.clone(),
                tunnel: self.binds.get(side).and_then(|b| b.get(service)).cloned(),
            },
        }
    }

    /// Journals what the state holds at `keys` now: O(1) per key, whatever the state's size.
    fn persist(&self, keys: &[Key]) -> Saved {
        let Some(store) = &self.store else {
            return Box::pin(async { Ok(()) });
        };
        let written = store.record(keys.iter().map(|k| self.change_at(k)).collect());
        let path = store.path().display().to_string();
        Box::pin(async move {
            let why = match written.await {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(e)) => e,
                Err(_) => "the state writer has stopped".to_owned(),
            };
            Err(AdminError::Unsaved(format!(
                "the change is made but could not be saved to {path}: {why}"
            )))
        })
    }

    /// An admin change's answer: its refusal, or its outcome once what it changed (`keys`) is
    /// journaled.
    fn commit(&mut self, change: Result<(), AdminError>, keys: &[Key]) -> Saved {
        // The routes first, so the change applies to the next connection.
        self.reroute(keys);
        match change {
            Ok(()) => self.persist(keys),
            Err(e) => Box::pin(async move { Err(e) }),
        }
    }

    /// Puts back what the state file holds: services listening, binds known, dialled tunnels
    /// re-dialled at once and then with back-off, so a peer that is down holds nothing up.
    fn restore(&mut self, state: State, ctx: &mut Context<Self>) {
        let count = (
            state.tunnels.len(),
            state.services.local.len() + state.services.remote.len(),
        );
        // The state file was checked when it was loaded (ciphers, identities); a bad field here
        // falls back to the safe reading (RC4, a fresh identity) with an error line.
        let key = |k: Option<String>, c: Option<String>| {
            let cipher = c.as_deref().map_or(Ok(CipherKind::Rc4), str::parse);
            let cipher = cipher.unwrap_or_else(|e| {
                error!("state file: cipher {e}; using rc4");
                CipherKind::Rc4
            });
            k.as_deref().map(|k| ServiceKey::new(k, cipher))
        };
        let timeout = |t: Option<u64>| t.map(Duration::from_millis);
        for (name, s) in state.services.remote {
            metrics().configure_service(&name, Side::Remote);
            self.remote.insert(
                name,
                RemoteService {
                    addr: s.addr,
                    key: key(s.key, s.cipher),
                    timeout: timeout(s.timeout_ms),
                },
            );
        }
        for (name, s) in state.services.local {
            self.local.insert(
                name.clone(),
                LocalService {
                    key: key(s.key, s.cipher),
                    timeout: timeout(s.timeout_ms),
                    listening: Listening::new(s.addr, None),
                    connections: self.service_gauge(),
                },
            );
            metrics().configure_service(&name, Side::Local);
            self.start_listener(Accepts::Service(name), ctx);
        }
        self.binds.insert(Side::Local, state.bind.local);
        self.binds.insert(Side::Remote, state.bind.remote);
        for (name, a) in state.accepted {
            let pin = a
                .identity
                .as_deref()
                .and_then(handshake::from_hex)
                .and_then(|v| <[u8; IDENTITY_LEN]>::try_from(v).ok());
            // A pin saved before pins had a last contact counts as seen now.
            let seen = a.seen.unwrap_or_else(unix_now);
            self.accepted.insert(
                name,
                AcceptedName {
                    secret: a.secret.as_deref().map(Secret::new),
                    pin,
                    declared: a.declared,
                    seen,
                    saved_seen: a.seen.unwrap_or(0),
                },
            );
        }
        for (name, t) in state.tunnels {
            let generation = self.next_generation();
            self.tunnels.insert(
                name.clone(),
                TunnelEntry {
                    dest: Some(t.dest),
                    role: Role::Dialer,
                    generation,
                    link: Link::Retrying {
                        attempt: 1,
                        task: SpawnHandle::default(),
                    },
                    last_error: None,
                    dialled_on: 0,
                    thread: None,
                    secret: t.secret.as_deref().map(Secret::new),
                },
            );
            self.retry_tunnel(&name, 1, Duration::ZERO, ctx);
        }
        info!(
            "restored {} tunnels and {} services from the state file",
            count.0, count.1
        );
        self.current = self.build_routes();
        self.publish();
    }

    fn snapshot_config(&self, f: &ConfigFilter) -> Value {
        let endpoint = |a: &SocketAddr| json!([a.ip().to_string(), a.port()]);
        let key = |k: &Option<ServiceKey>| k.as_ref().map(|_| "***");
        let cipher = |k: &Option<ServiceKey>| k.as_ref().map(|k| k.cipher.name());
        let millis = |t: &Option<Duration>| t.map(|d| d.as_millis() as u64);
        let tunnels: Map<String, Value> = self
            .tunnels
            .iter()
            .filter(|(name, _)| self.keeps_tunnel(f, name))
            .map(|(name, t)| {
                let mut v = json!({
                    "dest": t.dest.as_ref().map(endpoint),
                    "role": t.role,
                    "last_error": t.last_error,
                });
                if t.role == Role::Dialer {
                    v["secret"] = json!(t.secret.as_ref().map(|_| "***"));
                } else if let Some(a) = self.accepted.get(name) {
                    v["identity"] = json!(a.pin.as_ref().map(fingerprint));
                }
                match &t.link {
                    Link::Up(_) => {
                        v["state"] = json!("connected");
                        v["thread"] = json!(t.thread);
                    }
                    Link::Retrying { attempt, .. } => {
                        v["state"] = json!("reconnecting");
                        v["attempt"] = json!(attempt);
                    }
                }
                (name.clone(), v)
            })
            .chain(
                self.dialing
                    .iter()
                    .filter(|(n, _)| !self.tunnels.contains_key(*n) && self.keeps_tunnel(f, n))
                    .map(|(n, (_, dest))| {
                        (
                            n.clone(),
                            json!({"dest": endpoint(dest), "role": Role::Dialer,
                                   "state": "connecting"}),
                        )
                    }),
            )
            .collect();
        let local: Map<String, Value> = candidates(&self.local, f)
            .filter(|(name, _)| self.keeps_service(f, Side::Local, name))
            .map(|(name, s)| {
                let l = &s.listening;
                let listening = l
                    .socket
                    .borrow()
                    .as_ref()
                    .and_then(|l| l.local_addr().ok())
                    .map(|a| a.to_string());
                (
                    name.clone(),
                    json!({"addr": endpoint(&l.addr), "key": key(&s.key),
                           "cipher": cipher(&s.key),
                           "timeout": millis(&s.timeout), "listening": listening,
                           "connections": s.connections.in_use(),
                           "last_error": l.last_error}),
                )
            })
            .collect();
        let remote: Map<String, Value> = candidates(&self.remote, f)
            .filter(|(name, _)| self.keeps_service(f, Side::Remote, name))
            .map(|(name, s)| {
                (
                    name.clone(),
                    json!({"addr": endpoint(&s.addr), "key": key(&s.key),
                           "cipher": cipher(&s.key), "timeout": millis(&s.timeout)}),
                )
            })
            .collect();
        let binds = |side: Side| -> Value {
            let kept: Map<String, Value> = self
                .binds
                .get(&side)
                .into_iter()
                .flat_map(|b| candidates(b, f))
                .filter(|(s, _)| self.keeps_service(f, side, s))
                .map(|(s, t)| (s.clone(), json!(t)))
                .collect();
            Value::Object(kept)
        };
        let accepted: Map<String, Value> = self
            .accepted
            .iter()
            .filter(|(name, _)| self.keeps_tunnel(f, name))
            .map(|(name, a)| {
                (
                    name.clone(),
                    json!({"declared": a.declared, "secret": a.secret.as_ref().map(|_| "***"),
                           "identity": a.pin.as_ref().map(fingerprint),
                           "connected": self.connected_tunnel(name).is_some(),
                           "last_seen": a.pin.map(|_| a.seen)}),
                )
            })
            .collect();
        json!({
            "tunnels": tunnels,
            "accepted": accepted,
            "services": {"local": local, "remote": remote},
            "bind": {"local": binds(Side::Local), "remote": binds(Side::Remote)},
            "connections": {},
            "security": {"tunnel_secret": self.access.secret.is_some(),
                         "identity": fingerprint(&self.identity.public()),
                         "accept": if self.access.known_only { "known" } else { "any" }},
            "limits": self.usage.to_json(self.accepted_count(), self.accepted.len()),
        })
    }

    /// Accepted tunnels up now, against `max_tunnels`.
    fn accepted_count(&self) -> usize {
        self.tunnels
            .values()
            .filter(|t| t.role == Role::Acceptor && matches!(t.link, Link::Up(_)))
            .count()
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
        let Some(old) = self.local.get(&spec.name).map(|s| &s.listening) else {
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
                        if let Some(actor) = &old.actor {
                            actor.do_send(SocketReplaced);
                        }
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
        self.start_listener(Accepts::Tunnels, ctx);
        if let Some(state) = self.restore.take() {
            self.restore(state, ctx);
        }
        if std::mem::take(&mut self.identity_unsaved) {
            self.save_in_background(&[Key::Identity], ctx);
        }
        // Pins of dialers gone for `pin_ttl` go, checked at start and then every so often.
        self.expire_pins(ctx);
        let every =
            (self.settings.pin_ttl / 8).clamp(Duration::from_secs(1), Duration::from_secs(60));
        ctx.run_interval(every, |act, ctx| act.expire_pins(ctx));
    }
}

/// `POST /tunnel`: as a dialer, dial `dest` and register the tunnel as `name` once the
/// handshake is done; as an acceptor, declare a name peers may claim (with its own secret).
#[derive(Message)]
#[rtype(result = "Result<(), AdminError>")]
pub struct AddTunnel {
    pub name: String,
    pub role: Role,
    /// Required for a dialer, refused for an acceptor (the API checks).
    pub dest: Option<SocketAddr>,
    /// The tunnel's own secret, overriding the node's.
    pub secret: Option<String>,
}

impl Registry {
    fn declare_accepted(&mut self, name: String, secret: Option<String>) -> Result<(), AdminError> {
        if matches!(self.tunnels.get(&name), Some(t) if t.role == Role::Dialer) {
            return Err(AdminError::Conflict(format!(
                "this node dials a tunnel named {name} itself; delete it first"
            )));
        }
        let entry = self.accepted.entry(name.clone()).or_default();
        entry.declared = true;
        entry.secret = secret.as_deref().map(Secret::new);
        info!(
            "tunnel {name}: accepted from peers{}",
            if entry.secret.is_some() {
                ", with its own secret"
            } else {
                ""
            }
        );
        Ok(())
    }
}

impl Handler<AddTunnel> for Registry {
    type Result = ResponseActFuture<Self, Result<(), AdminError>>;

    fn handle(&mut self, msg: AddTunnel, _ctx: &mut Self::Context) -> Self::Result {
        let dest = match (msg.role, msg.dest) {
            (Role::Acceptor, _) => {
                let keys = [Key::Accepted(msg.name.clone())];
                let change = self.declare_accepted(msg.name, msg.secret);
                return Box::pin(self.commit(change, &keys).into_actor(self));
            }
            (Role::Dialer, Some(dest)) => dest,
            (Role::Dialer, None) => {
                let e = AdminError::Invalid("missing field \"dest\"".to_owned());
                return Box::pin(fut::ready(Err(e)));
            }
        };
        let refusal = if self.is_own_port(dest) {
            Some(AdminError::Invalid(format!(
                "tunnel {}: {dest} is this node's own tunnel port",
                msg.name
            )))
        } else if self.accepted.get(&msg.name).is_some_and(|a| a.declared) {
            Some(AdminError::Conflict(format!(
                "tunnel {}: the name is declared as accepted on this node; delete it first",
                msg.name
            )))
        } else {
            None
        };
        if let Some(e) = refusal {
            return Box::pin(fut::ready(Err(e)));
        }
        let secret = msg.secret.as_deref().map(Secret::new);
        if let Some(t) = self.tunnels.get(&msg.name) {
            if matches!(t.link, Link::Up(_)) && t.dest == Some(dest) && t.secret == secret {
                // The same body again: the live tunnel and its connections stay as they are.
                info!(
                    "tunnel {}: unchanged (already connected to {dest})",
                    msg.name
                );
                return Box::pin(fut::ready(Ok(())));
            }
        }
        let generation = self.next_generation();
        self.dialing.insert(msg.name.clone(), (generation, dest));
        info!("tunnel {}: dialing {dest}", msg.name);
        let name = msg.name;
        let keys = [Key::Tunnel(name.clone())];
        Box::pin(
            self.dial(&name, dest, &secret)
                .into_actor(self)
                .map(move |result, act, ctx| {
                    if act.dialing.get(&name).map(|d| d.0) != Some(generation) {
                        return (
                            Err(AdminError::Conflict(format!(
                                "tunnel {name}: superseded by a later request while dialing"
                            ))),
                            false,
                        );
                    }
                    act.dialing.remove(&name);
                    let e = match result {
                        Ok((sock, peer)) => {
                            let origin = Origin::Dialled {
                                dest,
                                attempt: 0,
                                secret,
                            };
                            act.install_tunnel(name, origin, sock, peer, ctx);
                            return (Ok(()), true);
                        }
                        Err(e) => e,
                    };
                    warn!("tunnel {name}: cannot open to {dest}: {e}");
                    if e.reached_itself() {
                        return (
                            Err(AdminError::Invalid(format!(
                                "tunnel {name}: {dest} is this node itself (it answered with \
                                 this node's own identity)"
                            ))),
                            false,
                        );
                    }
                    if !e.refused_by_peer() {
                        return (
                            Err(AdminError::Unreachable(format!(
                                "tunnel {name}: cannot reach {dest}: {e}"
                            ))),
                            false,
                        );
                    }
                    // The peer answered and refused: keep the tunnel and re-dial on the back-off,
                    // as its operator may be fixing the secret. A live tunnel of the name stays.
                    let live =
                        matches!(act.tunnels.get(&name), Some(t) if matches!(t.link, Link::Up(_)));
                    if !live {
                        let generation = act.next_generation();
                        let old = act.tunnels.insert(
                            name.clone(),
                            TunnelEntry {
                                dest: Some(dest),
                                role: Role::Dialer,
                                generation,
                                link: Link::Retrying {
                                    attempt: 1,
                                    task: SpawnHandle::default(),
                                },
                                last_error: Some(e.to_string()),
                                dialled_on: 0,
                                thread: None,
                                secret,
                            },
                        );
                        if let Some(old) = old {
                            Registry::retire(old, None, ctx);
                        }
                        act.retry_tunnel(&name, 1, backoff(1), ctx);
                    }
                    let kept = if live {
                        "the live tunnel of that name stays"
                    } else {
                        "kept: re-dialling with back-off until it is deleted"
                    };
                    (
                        Err(AdminError::Unreachable(format!(
                            "tunnel {name}: {dest} refused it: {e}; {kept}"
                        ))),
                        !live,
                    )
                })
                .then(move |(change, save), act, _ctx| {
                    let saved = match (&change, save) {
                        (_, false) => Box::pin(async { Ok(()) }),
                        (_, true) => act.persist(&keys),
                    };
                    async move {
                        saved.await?;
                        change
                    }
                    .into_actor(act)
                }),
        )
    }
}

/// `DELETE /tunnel`: close it on both ends, with every connection it carries; an accepted name
/// is forgotten (its declaration and its pin), so a new dialer may claim it.
#[derive(Message)]
#[rtype(result = "Result<(), AdminError>")]
pub struct DeleteTunnel {
    pub name: String,
}

impl Handler<DeleteTunnel> for Registry {
    type Result = ResponseFuture<Result<(), AdminError>>;

    fn handle(&mut self, msg: DeleteTunnel, ctx: &mut Self::Context) -> Self::Result {
        let dialing = self.dialing.remove(&msg.name).is_some();
        let forgotten = self.accepted.remove(&msg.name).is_some();
        metrics().forget_tunnel(&msg.name);
        let change = match self.tunnels.remove(&msg.name) {
            Some(t) => {
                Registry::retire(t, Some((GoAway::Deleted, "deleted".to_owned())), ctx);
                info!("tunnel {}: deleted", msg.name);
                Ok(())
            }
            None if dialing => {
                info!("tunnel {}: dial cancelled", msg.name);
                Ok(())
            }
            None if forgotten => {
                info!("tunnel {}: accepted name forgotten", msg.name);
                Ok(())
            }
            None => Err(AdminError::NotFound(format!(
                "no tunnel named {}",
                msg.name
            ))),
        };
        self.commit(
            change,
            &[
                Key::Tunnel(msg.name.clone()),
                Key::Accepted(msg.name.clone()),
            ],
        )
    }
}

/// `POST /service`: create or replace a local (listening) or remote (target) service.
#[derive(Message)]
#[rtype(result = "Result<(), AdminError>")]
pub struct AddService(pub ServiceSpec);

impl Registry {
    fn add_service(
        &mut self,
        spec: ServiceSpec,
        ctx: &mut Context<Self>,
    ) -> Result<(), AdminError> {
        let cipher = spec.cipher.unwrap_or(CipherKind::Rc4);
        let key = spec.key.as_deref().map(|k| ServiceKey::new(k, cipher));
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
                    if s.listening.addr == spec.addr {
                        s.key = key;
                        s.timeout = spec.timeout;
                        info!("service {} (local) on {}: updated", spec.name, spec.addr);
                        return Ok(());
                    }
                }
                let socket = self.rebind(&spec)?;
                // Connections already carried keep counting against the service's limit.
                let connections = self
                    .local
                    .get(&spec.name)
                    .map(|s| s.connections.clone())
                    .unwrap_or_else(|| self.service_gauge());
                let old = self.local.insert(
                    spec.name.clone(),
                    LocalService {
                        key,
                        timeout: spec.timeout,
                        listening: Listening::new(spec.addr, Some(socket)),
                        connections,
                    },
                );
                if let Some(old) = old {
                    info!(
                        "service {} (local): stopped listening on {}",
                        spec.name, old.listening.addr
                    );
                    old.listening.close(ctx);
                }
                self.start_listener(Accepts::Service(spec.name.clone()), ctx);
                info!("service {} (local): listening on {}", spec.name, spec.addr);
            }
        }
        Ok(())
    }
}

impl Handler<AddService> for Registry {
    type Result = ResponseFuture<Result<(), AdminError>>;

    fn handle(&mut self, AddService(spec): AddService, ctx: &mut Self::Context) -> Self::Result {
        let keys = [Key::Service(spec.side, spec.name.clone())];
        let (name, side) = (spec.name.clone(), spec.side);
        let change = self.add_service(spec, ctx);
        if change.is_ok() {
            metrics().configure_service(&name, side);
        }
        self.commit(change, &keys)
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
    type Result = ResponseFuture<Result<(), AdminError>>;

    fn handle(&mut self, msg: DeleteService, ctx: &mut Self::Context) -> Self::Result {
        let existed = match msg.side {
            Side::Local => self
                .local
                .remove(&msg.name)
                .map(|s| s.listening.close(ctx))
                .is_some(),
            Side::Remote => self.remote.remove(&msg.name).is_some(),
        };
        if !existed {
            return self.commit(
                Err(AdminError::NotFound(format!(
                    "no {} service named {}",
                    msg.side, msg.name
                ))),
                &[],
            );
        }
        self.binds(msg.side).remove(&msg.name);
        metrics().forget_service(&msg.name, msg.side);
        for t in self.tunnels.values() {
            if let Link::Up(actor) = &t.link {
                actor.do_send(CloseService {
                    service: msg.name.clone(),
                    side: msg.side,
                });
            }
        }
        info!("service {} ({}): deleted", msg.name, msg.side);
        self.commit(
            Ok(()),
            &[
                Key::Service(msg.side, msg.name.clone()),
                Key::Bind(msg.side, msg.name.clone()),
            ],
        )
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

impl Registry {
    fn set_bind(&mut self, msg: SetBind) -> Result<(), AdminError> {
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

impl Handler<SetBind> for Registry {
    type Result = ResponseFuture<Result<(), AdminError>>;

    fn handle(&mut self, msg: SetBind, _ctx: &mut Self::Context) -> Self::Result {
        let keys = [Key::Bind(msg.side, msg.service.clone())];
        let change = self.set_bind(msg);
        self.commit(change, &keys)
    }
}

/// `GET /config`: the live configuration with the tunnels' counters and connections, all of it
/// or the part a [`ConfigFilter`] asks for.
#[derive(Message, Default)]
#[rtype(result = "Value")]
pub struct GetConfig(pub ConfigFilter);

/// Which part of `GET /config` to build (`?tunnel=`, `?service=`, `?connections=false`): a tool
/// that wants one object does not pull the whole configuration.
#[derive(Debug, Clone)]
pub struct ConfigFilter {
    /// Only this tunnel, and the services bound to it.
    pub tunnel: Option<String>,
    /// Only this service (either side), and the tunnels it is bound to.
    pub service: Option<String>,
    /// With the live connections (the default).
    pub connections: bool,
}

impl Default for ConfigFilter {
    fn default() -> ConfigFilter {
        ConfigFilter {
            tunnel: None,
            service: None,
            connections: true,
        }
    }
}

/// The entries of a map keyed by service name that `f` may keep: one lookup when it names a
/// service, else all of them.
fn candidates<'a, V>(
    map: &'a BTreeMap<String, V>,
    f: &ConfigFilter,
) -> Box<dyn Iterator<Item = (&'a String, &'a V)> + 'a> {
    match &f.service {
        Some(s) => Box::new(map.get_key_value(s.as_str()).into_iter()),
        None => Box::new(map.iter()),
    }
}

impl Registry {
    /// Whether `filter` keeps tunnel `name`.
    fn keeps_tunnel(&self, f: &ConfigFilter, name: &str) -> bool {
        f.tunnel.as_deref().is_none_or(|t| t == name)
            && f.service.as_deref().is_none_or(|s| {
                self.binds
                    .values()
                    .any(|b| b.get(s).is_some_and(|t| t == name))
            })
    }

    /// Whether `filter` keeps service `name` of `side`.
    fn keeps_service(&self, f: &ConfigFilter, side: Side, name: &str) -> bool {
        f.service.as_deref().is_none_or(|s| s == name)
            && f.tunnel.as_deref().is_none_or(|t| {
                self.binds
                    .get(&side)
                    .and_then(|b| b.get(name))
                    .is_some_and(|b| b == t)
            })
    }
}

impl Handler<GetConfig> for Registry {
    type Result = ResponseActFuture<Self, Value>;

    fn handle(&mut self, GetConfig(filter): GetConfig, _ctx: &mut Self::Context) -> Self::Result {
        let mut config = self.snapshot_config(&filter);
        let asks: Vec<(String, Addr<Tunnel>)> = self
            .tunnels
            .iter()
            .filter(|(n, _)| self.keeps_tunnel(&filter, n))
            .filter_map(|(n, t)| match &t.link {
                Link::Up(a) => Some((n.clone(), a.clone())),
                Link::Retrying { .. } => None,
            })
            .collect();
        Box::pin(
            async move {
                let stats = join_all(asks.into_iter().map(|(name, actor)| {
                    let ask = Snapshot {
                        connections: filter.connections,
                        service: filter.service.clone(),
                    };
                    async move { (name, actor.send(ask).await.ok()) }
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
                                   "bytes_sent": c.bytes_sent, "bytes_received": c.bytes_received,
                                   "window": c.window}),
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
                if filter.connections {
                    config["connections"] = Value::Object(connections);
                } else if let Some(c) = config.as_object_mut() {
                    c.remove("connections");
                }
                config
            }
            .into_actor(self),
        )
    }
}

/// `GET /readyz`: `Ok` once the tunnel port and every local service listen (the state file was
/// loaded before the Registry started); otherwise what is missing.
#[derive(Message)]
#[rtype(result = "Result<(), Vec<String>>")]
pub struct GetReadiness;

impl Handler<GetReadiness> for Registry {
    type Result = Result<(), Vec<String>>;

    fn handle(&mut self, _: GetReadiness, _ctx: &mut Self::Context) -> Self::Result {
        let listening = |l: &Listening| l.socket.borrow().is_some();
        let mut missing = Vec::new();
        if self.shutting_down {
            missing.push("the node is shutting down".to_owned());
        }
        if !self.tunnel_port.as_ref().is_some_and(listening) {
            missing.push("the tunnel port is not listening".to_owned());
        }
        for (name, s) in &self.local {
            if !listening(&s.listening) {
                let why = s
                    .listening
                    .last_error
                    .as_deref()
                    .unwrap_or("not listening yet");
                missing.push(format!("local service {}: {why}", Escaped(name)));
            }
        }
        if missing.is_empty() {
            Ok(())
        } else {
            Err(missing)
        }
    }
}

impl Handler<TunnelSecret> for Registry {
    type Result = Option<Secret>;

    fn handle(&mut self, msg: TunnelSecret, _ctx: &mut Self::Context) -> Self::Result {
        self.secret_for(&msg.name)
    }
}

/// What [`Registry::may_accept`] found about the name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NameStatus {
    /// Declared here, or pinned (to this dialer, or a secret let it take the name over).
    Known,
    /// New to this node: a pin is to be made, within the name table and the source's rate.
    New,
}

impl Registry {
    fn may_accept(
        &self,
        name: &str,
        identity: &[u8; IDENTITY_LEN],
        proven: bool,
    ) -> Result<NameStatus, TunnelRefusal> {
        if self.shutting_down {
            return Err(TunnelRefusal::same(
                RefuseCode::ShuttingDown,
                "the node is shutting down".to_owned(),
            ));
        }
        if *identity == self.identity.public() {
            return Err(TunnelRefusal::same(
                RefuseCode::OwnPort,
                "the dialer is this node itself (its own identity)".to_owned(),
            ));
        }
        let shown = Escaped(name);
        let live = self.connected_tunnel(name).is_some();
        if matches!(self.tunnels.get(name), Some(t) if t.role == Role::Dialer) {
            return Err(TunnelRefusal::told(
                RefuseCode::NameHeld,
                proven,
                "this tunnel name is not available here; pick another",
                format!("this node dials a tunnel named {shown} itself; pick another name"),
            ));
        }
        let known = self.accepted.get(name);
        if self.access.known_only && !known.is_some_and(|a| a.declared) {
            return Err(TunnelRefusal::same(
                RefuseCode::UnknownName,
                format!("tunnel name {shown} is not declared on this node"),
            ));
        }
        if let Some(pin) = known.and_then(|a| a.pin) {
            if pin != *identity && (live || !proven) {
                return Err(TunnelRefusal::told(
                    RefuseCode::NameHeld,
                    proven,
                    "this tunnel name is held by another dialer; pick another",
                    format!(
                        "tunnel name {shown} is held by another dialer (identity {}){}",
                        fingerprint(&pin),
                        if live { ", connected now" } else { "" }
                    ),
                ));
            }
        }
        // Expected dialers (a declared name, or the identity a name is pinned to) may take the
        // places strangers' new names may not.
        let expected = known.is_some_and(|a| a.declared || a.pin == Some(*identity));
        let l = &self.settings.limits;
        let room = if expected {
            l.max_tunnels
        } else {
            l.max_tunnels.saturating_sub(l.reserved_tunnels)
        };
        if !live && self.accepted_count() >= room {
            self.usage.refuse_tunnel();
            return Err(TunnelRefusal::told(
                RefuseCode::Busy,
                proven,
                "this node accepts no more tunnels now",
                format!(
                    "this node accepts at most {} tunnels ({} of them kept for expected dialers)",
                    l.max_tunnels, l.reserved_tunnels
                ),
            ));
        }
        Ok(if known.is_some() {
            NameStatus::Known
        } else {
            NameStatus::New
        })
    }

    /// Whether a pin may go to make room, or at its TTL: no live tunnel, not declared, no bind
    /// naming it (binds are the operator's word that the name is expected).
    fn pin_is_loose(&self, name: &str, a: &AcceptedName, bound: &HashSet<&str>) -> bool {
        !a.declared && !bound.contains(name) && self.connected_tunnel(name).is_none()
    }

    /// The tunnel names binds name, on either side.
    fn bound_tunnels(&self) -> HashSet<&str> {
        self.binds
            .values()
            .flat_map(|b| b.values().map(String::as_str))
            .collect()
    }

    /// Forgets pinned name `name` (evicted or expired): its pin, its series; journaled.
    fn forget_pin(&mut self, name: &str, why: &str, ctx: &mut Context<Self>) {
        if self.accepted.remove(name).is_none() {
            return;
        }
        self.usage
            .names_evicted
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        metrics().forget_tunnel(name);
        log_limited!(
            info,
            "pin-forgotten",
            "tunnel name {}: pin forgotten ({why})",
            Escaped(name)
        );
        self.save_in_background(&[Key::Accepted(name.to_owned())], ctx);
    }

    /// Makes room in the name table for a new name: at `max_names`, the loose pin seen least
    /// recently goes; if none is loose, the new name is refused.
    fn make_room_for_name(&mut self, ctx: &mut Context<Self>) -> Result<(), TunnelRefusal> {
        let max = self.settings.limits.max_names;
        if self.accepted.len() < max {
            return Ok(());
        }
        let bound = self.bound_tunnels();
        let oldest = self
            .accepted
            .iter()
            .filter(|(n, a)| self.pin_is_loose(n, a, &bound))
            .min_by_key(|(_, a)| a.seen)
            .map(|(n, _)| n.clone());
        drop(bound);
        let Some(oldest) = oldest else {
            self.usage
                .names_refused
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Err(TunnelRefusal::same(
                RefuseCode::Busy,
                "this node takes no new tunnel names now".to_owned(),
            ));
        };
        self.forget_pin(&oldest, "the name table is full: seen least recently", ctx);
        Ok(())
    }

    /// Forgets the loose pins not seen for `pin_ttl`.
    fn expire_pins(&mut self, ctx: &mut Context<Self>) {
        let ttl = self.settings.pin_ttl.as_secs();
        let now = unix_now();
        let bound = self.bound_tunnels();
        let expired: Vec<String> = self
            .accepted
            .iter()
            .filter(|(n, a)| {
                a.pin.is_some()
                    && now.saturating_sub(a.seen) >= ttl
                    && self.pin_is_loose(n, a, &bound)
            })
            .map(|(n, _)| n.clone())
            .collect();
        drop(bound);
        for name in expired {
            self.forget_pin(&name, "its dialer has not been seen for pin_ttl", ctx);
        }
    }
}

impl Handler<MayAccept> for Registry {
    type Result = Result<(), TunnelRefusal>;

    fn handle(&mut self, msg: MayAccept, ctx: &mut Self::Context) -> Self::Result {
        if self.may_accept(&msg.name, &msg.identity, msg.secret_proven)? == NameStatus::New {
            // A dialer that proved the secret is no stranger: only strangers are rate-limited.
            if !msg.secret_proven && !self.new_names.try_take(msg.peer, Instant::now()) {
                self.usage
                    .names_refused
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return Err(TunnelRefusal::same(
                    RefuseCode::Busy,
                    format!(
                        "too many new tunnel names from this address (at most {} a minute); \
                         try again later",
                        self.settings.limits.new_names_per_minute
                    ),
                ));
            }
            self.make_room_for_name(ctx)?;
        }
        Ok(())
    }
}

impl Handler<TunnelAccepted> for Registry {
    type Result = ();

    fn handle(&mut self, msg: TunnelAccepted, ctx: &mut Self::Context) {
        // Checked again: another dialer may have claimed the name since the first check.
        let proven = self.secret_for(&msg.name).is_some();
        let verdict = match self.may_accept(&msg.name, &msg.identity, proven) {
            Ok(NameStatus::New) => self.make_room_for_name(ctx),
            Ok(NameStatus::Known) => Ok(()),
            Err(e) => Err(e),
        };
        if let Err(refusal) = verdict {
            let ip = msg
                .sock
                .peer_addr()
                .map_or(IpAddr::from([0u8, 0, 0, 0]), |a| a.ip());
            log_limited_for!(
                warn,
                "tunnel-refused",
                ip,
                "tunnel {}: accepted connection dropped: {}",
                Escaped(&msg.name),
                refusal.log
            );
            crate::io::reset_now(&msg.sock);
            return;
        }
        let origin = Origin::Accepted {
            identity: msg.identity,
        };
        self.install_tunnel(msg.name, origin, msg.sock, msg.peer, ctx);
    }
}

impl Handler<TunnelDown> for Registry {
    type Result = ();

    fn handle(&mut self, msg: TunnelDown, ctx: &mut Self::Context) {
        let Some(t) = self.tunnels.get_mut(&msg.name) else {
            return;
        };
        if t.generation != msg.generation || !matches!(t.link, Link::Up(_)) {
            return;
        }
        let name = msg.name.clone();
        self.tunnel_down(msg, ctx);
        self.reroute(&[Key::Tunnel(name)]);
    }
}

impl Registry {
    fn tunnel_down(&mut self, msg: TunnelDown, ctx: &mut Context<Self>) {
        let Some(t) = self.tunnels.get_mut(&msg.name) else {
            return;
        };
        metrics().set_tunnel_connected(&msg.name, false);
        match (t.role, msg.goaway) {
            (Role::Dialer, Some(GoAway::Deleted)) => {
                log_limited_for!(
                    info,
                    "tunnel-down",
                    msg.peer_ip,
                    "tunnel {} removed: {}",
                    msg.name,
                    msg.reason
                );
                self.tunnels.remove(&msg.name);
                metrics().forget_tunnel(&msg.name);
                self.save_in_background(&[Key::Tunnel(msg.name.clone())], ctx);
            }
            (Role::Dialer, _) if !self.shutting_down => {
                // Replaced by another connection of the name soon after it came up: another
                // dialer claims the name too. Going on with the back-off keeps the two from
                // knocking each other off in a loop.
                let flapping = msg.goaway == Some(GoAway::Replaced) && msg.lasted < STABLE_AFTER;
                let attempt = if msg.heard && !flapping {
                    1
                } else {
                    t.dialled_on + 1
                };
                let delay = backoff(attempt);
                log_limited_for!(
                    warn,
                    "tunnel-down",
                    msg.peer_ip,
                    "tunnel {} is down: {}; re-dialing in {} ms",
                    msg.name,
                    msg.reason,
                    delay.as_millis()
                );
                t.last_error = Some(msg.reason);
                self.retry_tunnel(&msg.name, attempt, delay, ctx);
            }
            (Role::Dialer, _) => info!("tunnel {} closed: {}", msg.name, msg.reason),
            (Role::Acceptor, goaway) => {
                log_limited_for!(
                    info,
                    "tunnel-down",
                    msg.peer_ip,
                    "tunnel {} removed: {}",
                    Escaped(&msg.name),
                    msg.reason
                );
                self.tunnels.remove(&msg.name);
                if let Some(a) = self.accepted.get_mut(&msg.name) {
                    // Its last contact: the pin's TTL runs from here.
                    a.seen = unix_now();
                }
                if goaway == Some(GoAway::Deleted) {
                    self.name_freed(&msg.name, ctx);
                }
            }
        }
    }
}

impl Registry {
    /// The dialer of accepted name `name` deleted its tunnel: the name is free again. A declared
    /// name keeps its declaration and its binds; an undeclared one loses its binds too, so a
    /// stranger who claims the name next is carried nothing the old dialer was.
    fn name_freed(&mut self, name: &str, ctx: &mut Context<Self>) {
        let mut keys = vec![Key::Accepted(name.to_owned())];
        match self.accepted.get_mut(name) {
            Some(a) if a.declared => a.pin = None,
            _ => {
                self.accepted.remove(name);
                metrics().forget_tunnel(name);
                for (side, binds) in &mut self.binds {
                    let unbound: Vec<String> = binds
                        .iter()
                        .filter(|(_, t)| t.as_str() == name)
                        .map(|(s, _)| s.clone())
                        .collect();
                    for service in unbound {
                        binds.remove(&service);
                        info!(
                            "{side} service {service}: unbound from tunnel {}, whose dialer \
                             deleted it",
                            Escaped(name)
                        );
                        keys.push(Key::Bind(*side, service));
                    }
                }
            }
        }
        self.reroute(&keys);
        self.save_in_background(&keys, ctx);
    }
}

impl Handler<ListenerDown> for Registry {
    type Result = ();

    fn handle(&mut self, msg: ListenerDown, ctx: &mut Self::Context) {
        if self.shutting_down {
            return;
        }
        let Some(l) = self.listening_mut(&msg.accepts) else {
            return;
        };
        if l.id != msg.id || l.retry.is_some() {
            return;
        }
        l.actor = None;
        if l.started.elapsed() >= HEALTHY_AFTER {
            l.restarts = 0;
        }
        l.restarts += 1;
        let delay = backoff(l.restarts);
        let why = if msg.panicked { "panicked" } else { "stopped" };
        error!(
            "{}: the listener {why}; restarting it in {} ms",
            msg.accepts,
            delay.as_millis()
        );
        l.last_error = Some(format!("the listener {why}"));
        let accepts = msg.accepts;
        l.retry = Some(ctx.run_later(delay, move |act, ctx| act.start_listener(accepts, ctx)));
    }
}

/// The node is stopping (SIGTERM, SIGINT): stop accepting, say goodbye to every peer (dialers
/// re-dial, acceptors drop the tunnel at once instead of waiting for the heartbeat), close every
/// connection, flush the state file. Resolves once the tunnels have stopped, or after a grace.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Shutdown;

impl Handler<Shutdown> for Registry {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: Shutdown, ctx: &mut Self::Context) -> Self::Result {
        self.shutting_down = true;
        self.current.closed = true;
        self.publish();
        if let Some(port) = self.tunnel_port.take() {
            port.close(ctx);
        }
        let services: Vec<String> = self.local.keys().cloned().collect();
        for name in services {
            if let Some(s) = self.local.get_mut(&name) {
                let addr = s.listening.addr;
                let listening = std::mem::replace(&mut s.listening, Listening::new(addr, None));
                listening.close(ctx);
            }
        }
        self.dialing.clear();
        let mut closing = Vec::new();
        for t in self.tunnels.values_mut() {
            match &t.link {
                Link::Up(actor) => {
                    actor.do_send(CloseTunnel {
                        goodbye: Some((GoAway::Leaving, "the node is shutting down".to_owned())),
                    });
                    closing.push(actor.clone());
                }
                Link::Retrying { task, .. } => {
                    ctx.cancel_future(*task);
                }
            }
        }
        info!("shutting down: {} tunnels told", closing.len());
        // Every change is journaled already; leave one compact snapshot behind.
        let compacted = self.store.as_ref().map(StateStore::compact);
        Box::pin(async move {
            if let Some(done) = compacted {
                if let Ok(Err(e)) = done.await {
                    error!("state file: cannot compact at shutdown: {e}");
                }
            }
            let deadline = Instant::now() + SHUTDOWN_GRACE;
            while closing.iter().any(Addr::connected) && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    }
}

/// Test-only fault hook: makes one actor panic, to prove that the node notices and recovers.
#[cfg(feature = "fault-injection")]
#[derive(Message, Debug, Clone)]
#[rtype(result = "Result<(), AdminError>")]
pub enum InjectFault {
    Registry,
    TunnelPort,
    Listener { service: String },
    Tunnel { name: String },
    Connection { tunnel: String, stream: u32 },
}

#[cfg(feature = "fault-injection")]
impl Handler<InjectFault> for Registry {
    type Result = Result<(), AdminError>;

    fn handle(&mut self, msg: InjectFault, _ctx: &mut Self::Context) -> Self::Result {
        warn!("fault injection: {msg:?}");
        let missing = || AdminError::NotFound(format!("no live actor for {msg:?}"));
        match &msg {
            InjectFault::Registry => panic!("fault injected into the registry"),
            InjectFault::TunnelPort => self
                .tunnel_port
                .as_ref()
                .and_then(|l| l.actor.as_ref())
                .ok_or_else(missing)?
                .do_send(crate::Crash),
            InjectFault::Listener { service } => self
                .local
                .get(service)
                .and_then(|s| s.listening.actor.as_ref())
                .ok_or_else(missing)?
                .do_send(crate::Crash),
            InjectFault::Tunnel { name } => self
                .connected_tunnel(name)
                .ok_or_else(missing)?
                .do_send(crate::Crash),
            InjectFault::Connection { tunnel, stream } => self
                .connected_tunnel(tunnel)
                .ok_or_else(missing)?
                .do_send(crate::tunnel::CrashStream { stream: *stream }),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_200_ms_to_30_s_with_jitter() {
        for _ in 0..200 {
            assert_eq!(backoff(1), Duration::from_millis(200));
            let second = backoff(2);
            assert!((200..=400).contains(&second.as_millis()), "{second:?}");
            let sixth = backoff(6);
            assert!((3200..=6400).contains(&sixth.as_millis()), "{sixth:?}");
            for n in [9, 10, 40, u32::MAX] {
                let late = backoff(n);
                assert!(
                    (15_000..=30_000).contains(&late.as_millis()),
                    "{n}: {late:?}"
                );
            }
        }
        let spread: std::collections::HashSet<u128> =
            (0..50).map(|_| backoff(8).as_millis()).collect();
        assert!(spread.len() > 10, "jitter: {spread:?}");
    }
}
