//! The views: `GET /config` (whole or filtered) and readiness, built from the Registry's model and
//! each tunnel's counters.

use super::*;

use crate::backends::BackendView;
use crate::service::{Balance, Protocol, ProxyVersion};

/// An address as `GET /config` shows it: `["ip", port]`.
pub type Endpoint = (String, u16);

fn endpoint(a: &SocketAddr) -> Endpoint {
    (a.ip().to_string(), a.port())
}

/// A key as `GET /config` shows it: never the key itself.
fn key(k: &Option<ServiceKey>) -> Option<&'static str> {
    k.as_ref().map(|_| "***")
}

fn cipher(k: &Option<ServiceKey>) -> Option<&'static str> {
    k.as_ref().map(|k| k.cipher.name())
}

fn millis(t: &Option<Duration>) -> Option<u64> {
    t.map(|d| d.as_millis() as u64)
}

/// `GET /config`: everything the node knows, live.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ConfigView {
    /// Tunnels by name: dialled, accepted, being dialled.
    pub tunnels: BTreeMap<String, TunnelView>,
    /// Names peers may claim: declared ones and pins.
    pub accepted: BTreeMap<String, AcceptedView>,
    /// Local and remote services.
    pub services: ServicesView,
    /// Which tunnel carries each service.
    pub bind: BindsView,
    /// Live streams by `tunnel/stream`, `tunnel/lane/stream` beyond a tunnel's first lane
    /// (absent with `connections=false`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connections: Option<BTreeMap<String, ConnectionView>>,
    /// The node's secret (whether set), identity and who may dial in.
    pub security: SecurityView,
    /// Every limit with its use and refusals.
    pub limits: crate::limits::LimitsView,
}

/// One tunnel in `GET /config`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TunnelView {
    /// Where a dialled tunnel goes, `["ip", port]` (`null` for an accepted one).
    #[schema(value_type = Option<Vec<serde_json::Value>>)]
    pub dest: Option<Endpoint>,
    /// Which end dialled.
    pub role: Role,
    /// Why the last attempt or connection failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<Option<String>>,
    /// A dialled tunnel's own secret, shown as `"***"` (dialers only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<Option<&'static str>>,
    /// The pinned identity of an accepted tunnel's dialer (acceptors only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity: Option<Option<String>>,
    /// The acceptor's whole identity pinned to a dialled tunnel (dialers only): every
    /// connection must prove it; `null` until the first contact.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_identity: Option<Option<String>>,
    /// `connected`, `reconnecting` or `connecting`.
    pub state: &'static str,
    /// The data thread a connected tunnel runs on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub thread: Option<Option<usize>>,
    /// The re-dial attempt under way.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    /// A connected tunnel's counters, from the tunnel itself.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub counters: Option<TunnelCounters>,
}

/// A name peers may claim.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AcceptedView {
    /// Declared by the admin API (not only claimed).
    pub declared: bool,
    /// Its own secret, shown as `"***"`.
    pub secret: Option<&'static str>,
    /// The identity it is pinned to.
    pub identity: Option<String>,
    /// A tunnel of the name is connected now.
    pub connected: bool,
    /// When its dialer was last connected (Unix seconds), for a pin.
    pub last_seen: Option<u64>,
}

/// The services, by side.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ServicesView {
    /// Services listening on this node, by name.
    pub local: BTreeMap<String, LocalServiceView>,
    /// Services this node dials for, by name.
    pub remote: BTreeMap<String, RemoteServiceView>,
}

/// A local service: where it listens.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct LocalServiceView {
    /// The address asked for, `["ip", port]`.
    #[schema(value_type = Vec<serde_json::Value>)]
    pub addr: Endpoint,
    /// `"***"` when keyed.
    pub key: Option<&'static str>,
    /// The cipher of a keyed service.
    pub cipher: Option<&'static str>,
    /// Idle timeout, milliseconds.
    pub timeout: Option<u64>,
    /// The address it listens on now, if it does.
    pub listening: Option<String>,
    /// Clients carried now.
    pub connections: usize,
    /// Why it does not listen, if it does not.
    pub last_error: Option<String>,
    /// Protocol and bandwidth.
    #[serde(flatten)]
    pub options: OptionsView,
}

/// A remote service: where its streams are dialled.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RemoteServiceView {
    /// Where its streams are dialled: `["ip", port]`, or a list of them.
    pub addr: AddrsView,
    /// `"***"` when keyed (a key is never shown), else absent.
    pub key: Option<&'static str>,
    /// A keyed service's cipher.
    pub cipher: Option<&'static str>,
    /// The idle timeout in milliseconds, if any.
    pub timeout: Option<u64>,
    /// Protocol, PROXY header, balance, health check, bandwidth.
    #[serde(flatten)]
    pub options: OptionsView,
    /// Each address: up or down, streams connected, dials failed.
    pub backends: Vec<BackendView>,
}

/// A remote service's address or addresses, as posted.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum AddrsView {
    /// One address, `["ip", port]`.
    #[schema(value_type = Vec<serde_json::Value>)]
    One(Endpoint),
    /// Several, in order.
    #[schema(value_type = Vec<Vec<serde_json::Value>>)]
    Many(Vec<Endpoint>),
}

/// A service's options beyond its address, key and timeout.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct OptionsView {
    /// `tcp` or `udp`.
    pub protocol: Protocol,
    /// The PROXY header a remote service's backend receives (`v1`, `v2`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy_protocol: Option<ProxyVersion>,
    /// How a remote service picks an address (`first`, `round-robin`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub balance: Option<Balance>,
    /// A remote service's addresses are dialled this often to find which answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health_check_ms: Option<u64>,
    /// Bytes per second its connections may move together, each direction.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<u64>,
    /// Seconds its connections waited for the bandwidth limit so far.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub throttled_seconds: Option<f64>,
    /// A UDP service's flows and datagrams.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub datagrams: Option<DatagramsView>,
}

/// A UDP service's flows and datagrams so far.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DatagramsView {
    /// Flows (client addresses) live now.
    pub flows: u64,
    /// Datagrams carried into the tunnel (from clients, or from the backend).
    pub carried: u64,
    /// Datagrams from the tunnel sent on (to clients, or to the backend).
    pub delivered: u64,
    /// Datagrams dropped: credit short, bandwidth spent, a full socket or flow table.
    pub dropped: u64,
}

impl DatagramsView {
    fn of(c: &DatagramCounts) -> DatagramsView {
        DatagramsView {
            flows: c.flows.get().max(0) as u64,
            carried: c.carried.get(),
            delivered: c.delivered.get(),
            dropped: c.dropped.get(),
        }
    }
}

impl OptionsView {
    fn of(
        o: &ServiceOptions,
        pace: &Option<Arc<Pace>>,
        side: Side,
        datagrams: &DatagramCounts,
    ) -> OptionsView {
        OptionsView {
            datagrams: (o.protocol == Protocol::Udp).then(|| DatagramsView::of(datagrams)),
            protocol: o.protocol,
            proxy_protocol: o.proxy_protocol,
            balance: (side == Side::Remote).then_some(o.balance),
            health_check_ms: o.health_check_ms,
            bandwidth: o.bandwidth,
            throttled_seconds: pace.as_ref().map(|p| p.throttled_seconds()),
        }
    }
}

/// Binds, by side: service -> tunnel.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct BindsView {
    /// Local services and the tunnel each is carried over.
    pub local: BTreeMap<String, String>,
    /// Remote services and the tunnel each accepts streams from.
    pub remote: BTreeMap<String, String>,
}

/// One live stream: its tunnel, and what the tunnel reports of it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ConnectionView {
    /// The tunnel carrying it.
    pub tunnel: String,
    /// The stream, as its tunnel reports it.
    #[serde(flatten)]
    pub stats: StreamStats,
}

/// The node's security settings.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SecurityView {
    /// A node-wide tunnel secret is set.
    pub tunnel_secret: bool,
    /// This node's identity fingerprint.
    pub identity: String,
    /// This node's whole public identity (64 hex digits): what a dialer's `peer_identity` names
    /// to require this node.
    pub public_identity: String,
    /// `any` or `known`.
    pub accept: &'static str,
}

impl Registry {
    /// The tunnels part of `GET /config` (without their counters, which the tunnels add).
    fn tunnels_view(&self, f: &ConfigFilter) -> BTreeMap<String, TunnelView> {
        let listed = self
            .tunnels
            .iter()
            .filter(|(name, _)| self.keeps_tunnel(f, name))
            .map(|(name, t)| {
                let (state, thread, attempt) = match &t.link {
                    Link::Up(_) => ("connected", Some(t.thread), None),
                    Link::Retrying { attempt, .. } => ("reconnecting", None, Some(*attempt)),
                };
                let view = TunnelView {
                    dest: t.dest.as_ref().map(endpoint),
                    role: t.role,
                    last_error: Some(t.last_error.clone()),
                    secret: (t.role == Role::Dialer).then(|| t.secret.as_ref().map(|_| "***")),
                    identity: match t.role {
                        Role::Acceptor => self
                            .accepted
                            .get(name)
                            .map(|a| a.pin.as_ref().map(fingerprint)),
                        Role::Dialer => None,
                    },
                    peer_identity: (t.role == Role::Dialer)
                        .then(|| t.peer_pin.as_ref().map(|p| handshake::to_hex(p))),
                    state,
                    thread,
                    attempt,
                    counters: None,
                };
                (name.clone(), view)
            });
        let dialing = self
            .dialing
            .iter()
            .filter(|(n, _)| !self.tunnels.contains_key(*n) && self.keeps_tunnel(f, n))
            .map(|(n, (_, dest))| {
                let view = TunnelView {
                    dest: Some(endpoint(dest)),
                    role: Role::Dialer,
                    last_error: None,
                    secret: None,
                    identity: None,
                    peer_identity: None,
                    state: "connecting",
                    thread: None,
                    attempt: None,
                    counters: None,
                };
                (n.clone(), view)
            });
        listed.chain(dialing).collect()
    }

    /// The services part of `GET /config`.
    fn services_view(&self, f: &ConfigFilter) -> ServicesView {
        let local = candidates(&self.local, f)
            .filter(|(name, _)| self.keeps_service(f, Side::Local, name))
            .map(|(name, s)| {
                let l = &s.listening;
                let listening = l
                    .socket
                    .borrow()
                    .as_ref()
                    .map(|l| l.local_addr())
                    .or(s.udp.as_ref().map(|u| u.bound))
                    .map(|a| a.to_string());
                let view = LocalServiceView {
                    addr: endpoint(&l.addr),
                    key: key(&s.key),
                    cipher: cipher(&s.key),
                    timeout: millis(&s.timeout),
                    listening,
                    connections: s.connections.in_use(),
                    last_error: l.last_error.clone(),
                    options: OptionsView::of(&s.options, &s.pace, Side::Local, &s.datagrams),
                };
                (name.clone(), view)
            })
            .collect();
        let remote = candidates(&self.remote, f)
            .filter(|(name, _)| self.keeps_service(f, Side::Remote, name))
            .map(|(name, s)| {
                let addrs: Vec<Endpoint> = s.backends.addrs().map(|a| endpoint(&a)).collect();
                let view = RemoteServiceView {
                    addr: match <[Endpoint; 1]>::try_from(addrs) {
                        Ok([one]) => AddrsView::One(one),
                        Err(many) => AddrsView::Many(many),
                    },
                    key: key(&s.key),
                    cipher: cipher(&s.key),
                    timeout: millis(&s.timeout),
                    options: OptionsView::of(&s.options, &s.pace, Side::Remote, &s.datagrams),
                    backends: s.backends.view(Instant::now()),
                };
                (name.clone(), view)
            })
            .collect();
        ServicesView { local, remote }
    }

    pub(super) fn snapshot_config(&self, f: &ConfigFilter) -> ConfigView {
        let binds = |side: Side| -> BTreeMap<String, String> {
            self.binds
                .get(&side)
                .into_iter()
                .flat_map(|b| candidates(b, f))
                .filter(|(s, _)| self.keeps_service(f, side, s))
                .map(|(s, t)| (s.clone(), t.clone()))
                .collect()
        };
        let accepted = self
            .accepted
            .iter()
            .filter(|(name, _)| self.keeps_tunnel(f, name))
            .map(|(name, a)| {
                let view = AcceptedView {
                    declared: a.declared,
                    secret: a.secret.as_ref().map(|_| "***"),
                    identity: a.pin.as_ref().map(fingerprint),
                    connected: self.connected_tunnel(name).is_some(),
                    last_seen: a.pin.map(|_| a.seen),
                };
                (name.clone(), view)
            })
            .collect();
        ConfigView {
            tunnels: self.tunnels_view(f),
            accepted,
            services: self.services_view(f),
            bind: BindsView {
                local: binds(Side::Local),
                remote: binds(Side::Remote),
            },
            connections: f.connections.then(BTreeMap::new),
            security: SecurityView {
                tunnel_secret: self.access.secret.is_some(),
                identity: fingerprint(&self.identity.public()),
                public_identity: handshake::to_hex(&self.identity.public()),
                accept: if self.access.known_only {
                    "known"
                } else {
                    "any"
                },
            },
            limits: self.usage.view(self.accepted_count(), self.accepted.len()),
        }
    }
}

/// `GET /config`: the live configuration with the tunnels' counters and connections, all of it
/// or the part a [`ConfigFilter`] asks for.
#[derive(Message, Default)]
#[rtype(result = "ConfigView")]
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
    pub(super) fn keeps_tunnel(&self, f: &ConfigFilter, name: &str) -> bool {
        f.tunnel.as_deref().is_none_or(|t| t == name)
            && f.service.as_deref().is_none_or(|s| {
                self.binds
                    .values()
                    .any(|b| b.get(s).is_some_and(|t| t == name))
            })
    }

    /// Whether `filter` keeps service `name` of `side`.
    pub(super) fn keeps_service(&self, f: &ConfigFilter, side: Side, name: &str) -> bool {
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
    type Result = ResponseActFuture<Self, ConfigView>;

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
                for (name, stats) in stats {
                    let Some(stats) = stats else { continue };
                    if let Some(conns) = config.connections.as_mut() {
                        for c in stats.connections {
                            // Stream ids are each lane's own: another lane's name it.
                            let key = match c.lane {
                                0 => format!("{name}/{}", c.stream),
                                lane => format!("{name}/{lane}/{}", c.stream),
                            };
                            let view = ConnectionView {
                                tunnel: name.clone(),
                                stats: c,
                            };
                            conns.insert(key, view);
                        }
                    }
                    if let Some(t) = config.tunnels.get_mut(&name) {
                        t.counters = Some(stats.counters);
                    }
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
