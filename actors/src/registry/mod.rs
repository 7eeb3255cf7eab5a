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
use serde::Serialize;
use thiserror::Error;
use tokio::net::TcpStream;

use crate::admission::{self, SourceBuckets};
use crate::backends::Backends;
use crate::cipher::{CipherKind, Secret, ServiceKey};
use crate::data_thread::{DataThread, DataThreadHandle};
use crate::datagram::DatagramCounts;
use crate::handshake::{
    self, fingerprint, parse_identity, Established, HandshakeError, Identity, RefuseCode, Terms,
    Transport, IDENTITY_LEN,
};
use crate::journal::Change;
use crate::limits::{Escaped, Gauge, Usage};
use crate::listen_socket::ListenSocket;
use crate::listener::{
    self, Accepts, Listener, ListenerDown, MayAccept, SharedSocket, SocketReplaced, StopListener,
    TunnelAccepted, TunnelRefusal, TunnelSecret, Upstream,
};
use crate::metrics::metrics;
use crate::pace::Pace;
use crate::protocol::GoAway;
use crate::record::SessionKeys;
use crate::routes::{LocalRoute, RemoteRoute, RouteTable, Routes};
use crate::service::{self, Protocol, ServiceOptions};
use crate::state::{AcceptedRecord, ServiceRecord, State, StateStore, TunnelRecord};
use crate::tunnel::{
    CloseService, CloseTunnel, Role, Snapshot, StreamStats, Tunnel, TunnelCounters, TunnelDown,
    TunnelLink,
};
use crate::{Access, NodeSetup, Settings, Shared, Side};

mod accept;
mod admin;
mod desired;
mod health;
mod persistence;
mod publish;
mod shutdown;
mod supervision;
mod udp;
mod views;

#[cfg(test)]
mod admin_tests;

pub use admin::{AddService, AddTunnel, DeleteService, DeleteTunnel, SetBind};
pub use desired::{ApplyConfig, ConfigDiff, Desired, DesiredTunnel, Parts, KEEP};
#[cfg(feature = "fault-injection")]
pub use shutdown::InjectFault;
pub use shutdown::Shutdown;
pub use views::{
    AcceptedView, BindsView, ConfigFilter, ConfigView, ConnectionView, GetConfig, GetReadiness,
    LocalServiceView, RemoteServiceView, SecurityView, ServicesView, TunnelView,
};

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
                    HandshakeError::Refused { .. }
                        | HandshakeError::AuthFailed(_)
                        | HandshakeError::IdentityChanged { .. }
                )
            )
    }

    /// A lane that failed this way may join at a later try: the path or the acceptor was
    /// busy. Not a node that closed the handshake (one from before lanes reads the request as
    /// malformed) nor one that refused it (no tunnel of that name to join).
    fn lane_may_retry(&self) -> bool {
        matches!(
            self,
            DialError::Timeout(_)
                | DialError::Handshake(
                    HandshakeError::Io(_)
                        | HandshakeError::Deadline { .. }
                        | HandshakeError::Refused {
                            code: RefuseCode::Busy,
                            ..
                        }
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
    /// The data thread the connected tunnel runs on (`GET /config` `thread`), if any.
    thread: Option<usize>,
    /// Lanes handed to the connected tunnel so far: the next runs on the data thread after the
    /// last one's.
    lanes: usize,
    /// A dialled tunnel's acceptor identity: pinned at first contact (or by `peer_identity`),
    /// then required of every connection.
    peer_pin: Option<[u8; IDENTITY_LEN]>,
}

/// How a tunnel connection came to be.
enum Origin {
    /// This node dialled `dest`: by the admin API (attempt 0) or re-dial attempt `attempt`.
    Dialled {
        dest: SocketAddr,
        attempt: u32,
        secret: Option<Secret>,
        /// The identity the acceptor proved, pinned to the tunnel from now on.
        peer_identity: [u8; IDENTITY_LEN],
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
    fn new(addr: SocketAddr, socket: Option<ListenSocket>) -> Listening {
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
    /// Its protocol and bandwidth (the remote-only options stay at their defaults).
    options: ServiceOptions,
    /// Its bandwidth limit's buckets, shared by its connections.
    pace: Option<Arc<Pace>>,
    /// A UDP service's socket and listener (a TCP service's is `listening`).
    udp: Option<udp::UdpBound>,
    /// A UDP service's datagram and flow counts.
    datagrams: Arc<DatagramCounts>,
}

struct RemoteService {
    /// Where streams of this service are dialled, and what is known of each address.
    backends: Arc<Backends>,
    key: Option<ServiceKey>,
    timeout: Option<Duration>,
    /// Protocol, PROXY header, balance, health check, bandwidth.
    options: ServiceOptions,
    /// Its bandwidth limit's buckets, shared by its connections.
    pace: Option<Arc<Pace>>,
    /// A UDP service's datagram and flow counts.
    datagrams: Arc<DatagramCounts>,
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
    /// Where a local service listens; a remote service's first address.
    pub addr: SocketAddr,
    /// A remote service's further addresses, in order.
    pub more_addrs: Vec<SocketAddr>,
    /// Protocol, PROXY header, balance, health check, bandwidth.
    pub options: ServiceOptions,
}

impl ServiceSpec {
    /// A plain TCP service with one address, as the seed API makes it.
    pub fn plain(
        name: &str,
        side: Side,
        addr: SocketAddr,
        key: Option<String>,
        timeout: Option<Duration>,
    ) -> ServiceSpec {
        ServiceSpec {
            name: name.to_owned(),
            key,
            cipher: None,
            timeout,
            side,
            addr,
            more_addrs: Vec::new(),
            options: ServiceOptions::default(),
        }
    }
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
    /// The data threads (`[node] threads`), each running tunnels and their
    /// connections; none: they run here, beside the Registry.
    data: Vec<DataThread>,
    /// Where the next search for the least-loaded data thread starts, so that equals take turns.
    next_data: usize,
    /// New tunnel names each source address may still claim (`new_names_per_minute`).
    new_names: SourceBuckets,
}

impl Registry {
    pub fn new(
        setup: NodeSetup,
        tunnel_port: ListenSocket,
        store: Option<StateStore>,
        restore: Option<State>,
    ) -> Registry {
        let NodeSetup {
            settings,
            access,
            fd_limit,
            threads,
            busy_poll,
        } = setup;
        let port_addr = tunnel_port.local_addr();
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
            data: (0..threads).map(|n| data_thread(n, busy_poll)).collect(),
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

    /// A local service's gauge: the one it has (connections already carried keep counting
    /// against its limit when it is replaced), or a new one.
    fn kept_gauge(&self, name: &str) -> Arc<Gauge> {
        self.local
            .get(name)
            .map(|s| s.connections.clone())
            .unwrap_or_else(|| self.service_gauge())
    }

    /// Where listeners report and ask: this Registry, as recipients.
    fn upstream(&self, ctx: &Context<Self>) -> Upstream {
        let me = ctx.address();
        Upstream {
            down: me.clone().recipient(),
            secret: me.clone().recipient(),
            may_accept: me.clone().recipient(),
            accepted: me.recipient(),
            identity: self.identity.clone(),
        }
    }

    /// What every tunnel and listener shares with this node.
    fn shared(&self) -> Shared {
        Shared {
            settings: self.settings,
            usage: self.usage.clone(),
            routes: self.routes.clone(),
        }
    }

    /// The data thread for the next tunnel (or UDP listener), and its number: one carrying the
    /// fewest connected tunnels, the next in turn among equals. A tunnel that comes back after
    /// others came and went takes the thread left free, so two tunnels between the same nodes
    /// (one for interactive services, one for bulk) keep a thread each while there are as many.
    fn next_data_thread(&mut self) -> Option<(DataThreadHandle, usize)> {
        let threads = self.data.len();
        let mut load = vec![0usize; threads];
        for t in self.tunnels.values() {
            if let (Link::Up(_), Some(n)) = (&t.link, t.thread) {
                if let Some(l) = load.get_mut(n) {
                    *l += 1;
                }
            }
        }
        let start = self.next_data % threads.max(1);
        let n = (0..threads)
            .map(|i| (start + i) % threads)
            .min_by_key(|&n| load[n])?;
        self.next_data = n + 1;
        Some((self.data[n].handle(), n))
    }

    /// The data thread of lane `lane` (1 ..) of a tunnel whose first connection runs on data
    /// thread `head`: the `lane`-th thread after it, so a tunnel's lanes each have a thread of
    /// their own while there are as many. `None`: beside the head (no data threads).
    fn lane_thread(&self, head: Option<usize>, lane: usize) -> Option<DataThreadHandle> {
        let n = self.data.len();
        head.filter(|_| n > 0)
            .map(|head| self.data[(head + lane) % n].handle())
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

    /// Accepted tunnels up now, against `max_tunnels`.
    fn accepted_count(&self) -> usize {
        self.tunnels
            .values()
            .filter(|t| t.role == Role::Acceptor && matches!(t.link, Link::Up(_)))
            .count()
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

/// Tokio's current-thread scheduler looks for I/O events only when its run queue is empty or
/// after this many task polls. On a data thread under bulk load the queue is never empty, and a
/// poll can copy and seal a 64 KiB frame: at tokio's default (61), a small request that became
/// readable waited for up to 61 of them (milliseconds). Eight keeps that wait near one poll of each
/// busy stream, for one `epoll_wait` per eight polls.
const EVENT_INTERVAL: u32 = 8;

/// Data thread `n`: its runtime checks for I/O events every [`EVENT_INTERVAL`] polls. Sockets
/// only: signals are the main thread's, and its actors' timers the timer thread's
/// (`crate::timer`); a signal or time driver here would be checked at every park of the thread,
/// twice per short exchange, for nothing.
fn data_thread(n: usize, busy_poll: Duration) -> DataThread {
    let runtime = || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .event_interval(EVENT_INTERVAL)
            .build()?;
        crate::timer::without_time_driver()?;
        Ok(runtime)
    };
    // As `Arbiter::new` does: a node whose data threads cannot start cannot run at all.
    DataThread::spawn(format!("menet-data-{n}"), n, busy_poll, runtime).expect("a data thread")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lane_is_tried_again_only_after_a_failure_that_may_pass() {
        let refused = |code| {
            DialError::Handshake(HandshakeError::Refused {
                code,
                reason: String::new(),
            })
        };
        assert!(DialError::Timeout(Duration::from_secs(5)).lane_may_retry());
        assert!(DialError::Handshake(HandshakeError::Io(
            std::io::ErrorKind::ConnectionReset.into()
        ))
        .lane_may_retry());
        assert!(refused(RefuseCode::Busy).lane_may_retry());
        // An older acceptor closes a lane's HELLO; a newer one with no tunnel to join refuses.
        assert!(!DialError::Handshake(HandshakeError::Closed).lane_may_retry());
        assert!(!refused(RefuseCode::Other).lane_may_retry());
        assert!(!refused(RefuseCode::AuthFailed).lane_may_retry());
    }

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
