//! The node's Prometheus metrics ([`metrics()`]), served by the admin API at `GET /metrics`.
//!
//! Series belong to names, not to connections: a tunnel's counters are found again by its name
//! when it reconnects, so they survive re-dials, and go only when the tunnel (or service) is
//! deleted. Hot paths hold their own clones of the handles ([`TunnelMetrics`],
//! [`ServiceMetrics`]): counting a frame is one relaxed atomic add, with no lookup and no lock.

use std::collections::HashSet;
use std::sync::atomic::AtomicU64;
use std::sync::{LazyLock, RwLock};

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

use crate::Side;

mod register;
mod traffic;
pub use traffic::{ServiceTraffic, Traffic, TunnelTraffic};

/// Labels of a tunnel's series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TunnelLabel {
    /// The tunnel's name.
    pub tunnel: String,
}

/// Which end of the tunnel a service is, as a label value.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum SideLabel {
    local,
    remote,
}

impl From<Side> for SideLabel {
    fn from(s: Side) -> SideLabel {
        match s {
            Side::Local => SideLabel::local,
            Side::Remote => SideLabel::remote,
        }
    }
}

/// Labels of a service's series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabel {
    /// The service's name (only configured ones: a made-up name never becomes a label).
    pub service: String,
    /// Which end of the tunnel the service is.
    pub side: SideLabel,
}

/// Labels of a UDP service's datagram counts: what happened to them.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DatagramLabel {
    /// The UDP service's name.
    pub service: String,
    /// Which end of the tunnel the service is.
    pub side: SideLabel,
    /// `carried` (into the tunnel), `delivered` (out of it), `dropped`.
    pub event: &'static str,
}

/// Labels of one address of a remote service.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendLabel {
    /// The remote service the address belongs to.
    pub service: String,
    /// The address, `ip:port`.
    pub addr: String,
}

/// Labels of a refused connection: the service and why (a fixed word, see [`Refused`]).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusedLabel {
    /// The service the connection was for.
    pub service: String,
    /// Which end refused it.
    pub side: SideLabel,
    /// Why, as [`Refused::label`] words it.
    pub reason: &'static str,
}

/// Labels of a refusal for a service this node does not have: the name is not a label (a peer
/// could make up any number of them), only the side.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SideOnly {
    /// Which end refused it.
    pub side: SideLabel,
}

/// Labels of an admin request: the route's pattern (not the raw path: bounded), method (one of
/// [`METHODS`] or `other`), status.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AdminLabel {
    /// The route's pattern (`/services/{side}/{name}`), not the raw path.
    pub route: String,
    /// The request's method, or `other`.
    pub method: &'static str,
    /// The status answered.
    pub status: u16,
}

/// The methods counted by name; any other is counted as `other` (a client may send any token).
pub const METHODS: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"];

/// A method as its label: one of [`METHODS`], else `other`.
pub fn method_label(method: &str) -> &'static str {
    METHODS
        .iter()
        .find(|m| **m == method)
        .copied()
        .unwrap_or("other")
}

/// Why a connection was refused, as the `reason` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// The node is shutting down.
    ShuttingDown,
    /// No such service (deleted while the connection arrived, or unknown to the peer).
    UnknownService,
    /// The service is not bound to a tunnel (or to this tunnel).
    NotBound,
    /// The bound tunnel is not connected.
    TunnelDown,
    /// The two ends' keys or ciphers differ.
    KeyMismatch,
    /// One end carries TCP, the other UDP.
    ProtocolMismatch,
    /// A stream limit (`max_streams`, ours or the peer's).
    StreamLimit,
    /// `max_connections_per_service`.
    ConnectionLimit,
    /// The descriptor reserve, or `max_dials_per_second`.
    Resources,
    /// The backend did not answer.
    Unreachable,
    /// The peer answered our OPEN with OPEN_FAIL.
    PeerRefused,
}

impl Refused {
    pub fn label(self) -> &'static str {
        match self {
            Refused::ShuttingDown => "shutting_down",
            Refused::UnknownService => "unknown_service",
            Refused::NotBound => "not_bound",
            Refused::TunnelDown => "tunnel_down",
            Refused::KeyMismatch => "key_mismatch",
            Refused::ProtocolMismatch => "protocol_mismatch",
            Refused::StreamLimit => "stream_limit",
            Refused::ConnectionLimit => "connection_limit",
            Refused::Resources => "resources",
            Refused::Unreachable => "unreachable",
            Refused::PeerRefused => "peer_refused",
        }
    }
}

type FloatGauge = Gauge<f64, AtomicU64>;
/// A counter of seconds.
pub type FloatCounter = Counter<f64, AtomicU64>;

/// A UDP service's counts on one side (also shown in `GET /config`).
#[derive(Clone, Debug, Default)]
pub struct DatagramCounts {
    /// Datagrams from clients or the backend carried into the tunnel.
    pub carried: Counter,
    /// Datagrams from the tunnel sent on to clients or the backend.
    pub delivered: Counter,
    /// Datagrams dropped: credit short, bandwidth spent, a full socket, a full flow table.
    pub dropped: Counter,
    /// Flows live now.
    pub flows: Gauge,
}

/// One address of a remote service: streams connected to it, dials that failed.
#[derive(Clone, Debug, Default)]
pub struct BackendCounts {
    /// Streams connected to the address so far.
    pub connections: Counter,
    /// Dials to it (streams' and health checks') that failed so far.
    pub failures: Counter,
}

/// Every series of the node.
pub struct Metrics {
    /// What `GET /metrics` encodes: every family below, registered once.
    registry: Registry,
    /// `menet_tunnel_connected`: 1 while the tunnel is up.
    tunnel_connected: Family<TunnelLabel, Gauge>,
    /// `menet_tunnel_sent_bytes`: DATA payload written to the peer.
    tunnel_sent: Family<TunnelLabel, Counter>,
    /// `menet_tunnel_received_bytes`: DATA payload read from the peer.
    tunnel_received: Family<TunnelLabel, Counter>,
    /// `menet_tunnel_streams`: streams open now.
    tunnel_streams: Family<TunnelLabel, Gauge>,
    /// `menet_tunnel_streams_opened`: streams opened, either end, ever.
    tunnel_streams_opened: Family<TunnelLabel, Counter>,
    /// `menet_tunnel_redials`: re-dials after the tunnel was lost or a dial failed.
    tunnel_redials: Family<TunnelLabel, Counter>,
    /// `menet_tunnel_integrity_failures`: connections closed because a sealed record failed its check.
    tunnel_integrity_failures: Family<TunnelLabel, Counter>,
    /// `menet_tunnel_heartbeat_rtt_seconds`: the last PING's round trip.
    tunnel_rtt: Family<TunnelLabel, FloatGauge>,
    /// `menet_tunnel_send_window_bytes`: the peer's tunnel credit not yet granted to a stream.
    tunnel_send_window: Family<TunnelLabel, Gauge>,
    /// `menet_tunnel_queued_bytes`: bytes in menet's queue, not yet written to the socket.
    tunnel_queued: Family<TunnelLabel, Gauge>,
    /// `menet_tunnel_receive_window_bytes`: the tunnel window offered to the peer.
    tunnel_receive_window: Family<TunnelLabel, Gauge>,
    /// `menet_tunnel_socket_unsent_bytes`: written to the socket, not yet sent.
    tunnel_socket_unsent: Family<TunnelLabel, Gauge>,
    /// `menet_tunnel_socket_unacked_bytes`: sent, not yet acknowledged.
    tunnel_socket_unacked: Family<TunnelLabel, Gauge>,
    /// `menet_tunnel_socket_unread_bytes`: received by the kernel, not yet read.
    tunnel_socket_unread: Family<TunnelLabel, Gauge>,
    /// `menet_tunnel_lanes`: the tunnel's TCP connections now.
    tunnel_lanes: Family<TunnelLabel, Gauge>,
    /// `menet_service_connections_accepted`: connections carried, per service.
    service_accepted: Family<ServiceLabel, Counter>,
    /// `menet_service_connections_refused`: connections refused, per service and reason.
    service_refused: Family<RefusedLabel, Counter>,
    /// `menet_unknown_service_connections_refused`: refused for a service this node lacks.
    unknown_service_refused: Family<SideOnly, Counter>,
    /// `menet_service_connections_active`: connections carried now.
    service_active: Family<ServiceLabel, Gauge>,
    /// `menet_service_sent_bytes`: bytes from the service's sockets into the tunnel.
    service_sent: Family<ServiceLabel, Counter>,
    /// `menet_service_received_bytes`: bytes from the tunnel to the service's sockets.
    service_received: Family<ServiceLabel, Counter>,
    /// `menet_service_datagrams`: a UDP service's datagrams carried, delivered, dropped.
    service_datagrams: Family<DatagramLabel, Counter>,
    /// `menet_service_udp_flows`: a UDP service's flows live now.
    service_udp_flows: Family<ServiceLabel, Gauge>,
    /// `menet_service_throttled_seconds`: time the bandwidth limit held the service back.
    service_throttled: Family<ServiceLabel, FloatCounter>,
    /// `menet_backend_connections`: streams connected, per backend address.
    backend_connections: Family<BackendLabel, Counter>,
    /// `menet_backend_failures`: failed dials, per backend address.
    backend_failures: Family<BackendLabel, Counter>,
    /// `menet_admin_requests`: admin API requests, per route, method and status.
    admin_requests: Family<AdminLabel, Counter>,
    /// `menet_state_writes`: state file writes, each fsynced.
    state_writes: Counter,
    /// `menet_state_write_failures`: state file writes that failed.
    state_write_failures: Counter,
    /// The services configured now: only they have series of their own, so a name a peer or
    /// client makes up never becomes a label.
    configured: RwLock<[HashSet<String>; 2]>,
    /// The tunnels that have series now (for [`Metrics::traffic`]).
    tunnel_names: RwLock<HashSet<String>>,
    /// Services forgotten so far: a holder of kept service handles drops them when it moves
    /// (a handle may be a removed series').
    services_forgotten: AtomicU64,
}

/// The node's metrics (one set per process).
pub fn metrics() -> &'static Metrics {
    static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);
    &METRICS
}

/// A tunnel's handles, held by its actor (and found again by name when it reconnects).
#[derive(Clone)]
pub struct TunnelMetrics {
    /// Payload bytes of DATA frames written to the peer.
    pub sent: Counter,
    /// Payload bytes of DATA frames read from the peer.
    pub received: Counter,
    /// Streams open now.
    pub streams: Gauge,
    /// Streams opened (either end), ever.
    pub streams_opened: Counter,
    /// Last heartbeat round trip.
    pub rtt: FloatGauge,
    /// Peer's tunnel credit not yet granted to a stream.
    pub send_window: Gauge,
    /// Bytes queued in the tunnel, not yet written to its socket.
    pub queued: Gauge,
    /// The tunnel window offered to the peer now.
    pub receive_window: Gauge,
    /// The tunnel socket's send queue: written, not yet sent.
    pub socket_unsent: Gauge,
    /// The tunnel socket's send queue: sent, not yet acknowledged.
    pub socket_unacked: Gauge,
    /// The tunnel socket's receive queue: received, not yet read.
    pub socket_unread: Gauge,
    /// The tunnel's TCP connections now (`[tunnel] lanes` on its dialer).
    pub lanes: Gauge,
}

/// A service's handles, held by each of its streams. A holder may keep them for later streams
/// while [`Metrics::services_forgotten`] stays where it was when it took them.
#[derive(Clone)]
pub struct ServiceMetrics {
    /// Connections carried: accepted by a local service, dialled for a remote one.
    pub accepted: Counter,
    /// Bytes carried from the service's sockets into the tunnel (DATA payload).
    pub sent: Counter,
    /// Bytes carried from the tunnel to the service's sockets (DATA payload).
    pub received: Counter,
    /// Connections of the service now (decremented by [`ActiveConnection`]'s drop).
    active: Gauge,
}

/// One live connection of a service in `menet_service_connections_active`, for as long as it
/// is held.
pub struct ActiveConnection(Gauge);

impl Drop for ActiveConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl ServiceMetrics {
    /// Counts a connection as active until the guard is dropped.
    pub fn active(&self) -> ActiveConnection {
        self.active.inc();
        ActiveConnection(self.active.clone())
    }
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("menet");
        let m = Metrics {
            tunnel_connected: Family::default(),
            tunnel_sent: Family::default(),
            tunnel_received: Family::default(),
            tunnel_streams: Family::default(),
            tunnel_streams_opened: Family::default(),
            tunnel_redials: Family::default(),
            tunnel_integrity_failures: Family::default(),
            tunnel_rtt: Family::default(),
            tunnel_send_window: Family::default(),
            tunnel_queued: Family::default(),
            tunnel_receive_window: Family::default(),
            tunnel_socket_unsent: Family::default(),
            tunnel_socket_unacked: Family::default(),
            tunnel_socket_unread: Family::default(),
            tunnel_lanes: Family::default(),
            service_accepted: Family::default(),
            service_refused: Family::default(),
            unknown_service_refused: Family::default(),
            service_active: Family::default(),
            service_sent: Family::default(),
            service_received: Family::default(),
            service_datagrams: Family::default(),
            service_udp_flows: Family::default(),
            service_throttled: Family::default(),
            backend_connections: Family::default(),
            backend_failures: Family::default(),
            admin_requests: Family::default(),
            state_writes: Counter::default(),
            state_write_failures: Counter::default(),
            configured: RwLock::new([HashSet::new(), HashSet::new()]),
            tunnel_names: RwLock::new(HashSet::new()),
            services_forgotten: AtomicU64::new(0),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register(
            "build",
            "menet's version and protocol version",
            Info::new(vec![
                ("version", env!("CARGO_PKG_VERSION").to_owned()),
                ("protocol", crate::handshake::VERSION.to_string()),
            ]),
        );
        register::register_tunnel_series(r, &m);
        register::register_other_series(r, &m);
        Metrics { registry, ..m }
    }

    /// The text exposition (OpenMetrics, which Prometheus reads).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    fn tunnel_label(name: &str) -> TunnelLabel {
        TunnelLabel {
            tunnel: name.to_owned(),
        }
    }

    /// The handles of tunnel `name`, created on first use.
    pub fn tunnel(&self, name: &str) -> TunnelMetrics {
        if let Ok(mut names) = self.tunnel_names.write() {
            names.insert(name.to_owned());
        }
        let l = Self::tunnel_label(name);
        TunnelMetrics {
            sent: self.tunnel_sent.get_or_create(&l).clone(),
            received: self.tunnel_received.get_or_create(&l).clone(),
            streams: self.tunnel_streams.get_or_create(&l).clone(),
            streams_opened: self.tunnel_streams_opened.get_or_create(&l).clone(),
            rtt: self.tunnel_rtt.get_or_create(&l).clone(),
            send_window: self.tunnel_send_window.get_or_create(&l).clone(),
            queued: self.tunnel_queued.get_or_create(&l).clone(),
            receive_window: self.tunnel_receive_window.get_or_create(&l).clone(),
            socket_unsent: self.tunnel_socket_unsent.get_or_create(&l).clone(),
            socket_unacked: self.tunnel_socket_unacked.get_or_create(&l).clone(),
            socket_unread: self.tunnel_socket_unread.get_or_create(&l).clone(),
            lanes: self.tunnel_lanes.get_or_create(&l).clone(),
        }
    }

    pub fn set_tunnel_connected(&self, name: &str, connected: bool) {
        self.tunnel_connected
            .get_or_create(&Self::tunnel_label(name))
            .set(i64::from(connected));
    }

    pub fn count_redial(&self, name: &str) {
        self.tunnel_redials
            .get_or_create(&Self::tunnel_label(name))
            .inc();
    }

    /// A connection of tunnel `name` ended because a sealed record failed its check.
    pub fn count_integrity_failure(&self, name: &str) {
        self.tunnel_integrity_failures
            .get_or_create(&Self::tunnel_label(name))
            .inc();
    }

    /// Tunnel `name` was deleted: its series go.
    pub fn forget_tunnel(&self, name: &str) {
        if let Ok(mut names) = self.tunnel_names.write() {
            names.remove(name);
        }
        let l = Self::tunnel_label(name);
        self.tunnel_connected.remove(&l);
        self.tunnel_sent.remove(&l);
        self.tunnel_received.remove(&l);
        self.tunnel_streams.remove(&l);
        self.tunnel_streams_opened.remove(&l);
        self.tunnel_redials.remove(&l);
        self.tunnel_integrity_failures.remove(&l);
        self.tunnel_rtt.remove(&l);
        self.tunnel_send_window.remove(&l);
        self.tunnel_queued.remove(&l);
        self.tunnel_receive_window.remove(&l);
        self.tunnel_socket_unsent.remove(&l);
        self.tunnel_socket_unacked.remove(&l);
        self.tunnel_socket_unread.remove(&l);
        self.tunnel_lanes.remove(&l);
    }

    fn service_label(service: &str, side: Side) -> ServiceLabel {
        ServiceLabel {
            service: service.to_owned(),
            side: side.into(),
        }
    }

    /// The handles of a service, created on first use.
    pub fn service(&self, service: &str, side: Side) -> ServiceMetrics {
        let l = Self::service_label(service, side);
        ServiceMetrics {
            accepted: self.service_accepted.get_or_create(&l).clone(),
            sent: self.service_sent.get_or_create(&l).clone(),
            received: self.service_received.get_or_create(&l).clone(),
            active: self.service_active.get_or_create(&l).clone(),
        }
    }

    /// A UDP service's counts, created on first use.
    pub fn datagrams(&self, service: &str, side: Side) -> DatagramCounts {
        let l = Self::service_label(service, side);
        let event = |event| DatagramLabel {
            service: service.to_owned(),
            side: side.into(),
            event,
        };
        // One at a time: a family's guard is held to the end of its statement, and creating
        // a series while another guard of the same family is held would deadlock.
        let counter = |e| self.service_datagrams.get_or_create(&event(e)).clone();
        let carried = counter("carried");
        let delivered = counter("delivered");
        let dropped = counter("dropped");
        let flows = self.service_udp_flows.get_or_create(&l).clone();
        DatagramCounts {
            carried,
            delivered,
            dropped,
            flows,
        }
    }

    /// Seconds a service's connections waited for its bandwidth limit.
    pub fn throttled(&self, service: &str, side: Side) -> FloatCounter {
        let l = Self::service_label(service, side);
        self.service_throttled.get_or_create(&l).clone()
    }

    /// One address of a remote service's counts.
    pub fn backend(&self, service: &str, addr: std::net::SocketAddr) -> BackendCounts {
        let l = BackendLabel {
            service: service.to_owned(),
            addr: addr.to_string(),
        };
        BackendCounts {
            connections: self.backend_connections.get_or_create(&l).clone(),
            failures: self.backend_failures.get_or_create(&l).clone(),
        }
    }

    /// A remote service's addresses went (deleted or replaced).
    pub fn forget_backends(
        &self,
        service: &str,
        addrs: impl Iterator<Item = std::net::SocketAddr>,
    ) {
        for addr in addrs {
            let l = BackendLabel {
                service: service.to_owned(),
                addr: addr.to_string(),
            };
            self.backend_connections.remove(&l);
            self.backend_failures.remove(&l);
        }
    }

    /// Service `service` exists now on `side`: its series may be made.
    pub fn configure_service(&self, service: &str, side: Side) {
        if let Ok(mut c) = self.configured.write() {
            c[side as usize].insert(service.to_owned());
        }
    }

    fn is_configured(&self, service: &str, side: Side) -> bool {
        self.configured
            .read()
            .is_ok_and(|c| c[side as usize].contains(service))
    }

    /// A refused connection of `service`: under the service's own series if it is configured,
    /// else under the one unknown-service series of its side.
    pub fn count_refused(&self, service: &str, side: Side, reason: Refused) {
        if !self.is_configured(service, side) {
            self.unknown_service_refused
                .get_or_create(&SideOnly { side: side.into() })
                .inc();
            return;
        }
        self.service_refused
            .get_or_create(&RefusedLabel {
                service: service.to_owned(),
                side: side.into(),
                reason: reason.label(),
            })
            .inc();
    }

    /// Services forgotten so far (see [`ServiceMetrics`]).
    pub fn services_forgotten(&self) -> u64 {
        self.services_forgotten
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// A service was deleted: its series go (the refusal counters too).
    pub fn forget_service(&self, service: &str, side: Side) {
        self.services_forgotten
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        if let Ok(mut c) = self.configured.write() {
            c[side as usize].remove(service);
        }
        let l = Self::service_label(service, side);
        self.service_accepted.remove(&l);
        self.service_active.remove(&l);
        self.service_sent.remove(&l);
        self.service_received.remove(&l);
        self.service_udp_flows.remove(&l);
        self.service_throttled.remove(&l);
        for event in ["carried", "delivered", "dropped"] {
            self.service_datagrams.remove(&DatagramLabel {
                service: service.to_owned(),
                side: side.into(),
                event,
            });
        }
        for reason in [
            Refused::ShuttingDown,
            Refused::UnknownService,
            Refused::NotBound,
            Refused::TunnelDown,
            Refused::KeyMismatch,
            Refused::ProtocolMismatch,
            Refused::StreamLimit,
            Refused::ConnectionLimit,
            Refused::Resources,
            Refused::Unreachable,
            Refused::PeerRefused,
        ] {
            self.service_refused.remove(&RefusedLabel {
                service: service.to_owned(),
                side: side.into(),
                reason: reason.label(),
            });
        }
    }

    pub fn count_admin_request(&self, route: &str, method: &str, status: u16) {
        self.admin_requests
            .get_or_create(&AdminLabel {
                route: route.to_owned(),
                method: method_label(method),
                status,
            })
            .inc();
    }

    pub fn count_state_write(&self, ok: bool) {
        self.state_writes.inc();
        if !ok {
            self.state_write_failures.inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_belong_to_names_and_go_with_them() {
        let m = Metrics::new();
        let t = m.tunnel("t1");
        t.sent.inc_by(100);
        // Found again by name, as after a reconnect.
        m.tunnel("t1").sent.inc_by(23);
        let s = m.service("web", Side::Local);
        let guard = s.active();
        m.count_refused("web", Side::Local, Refused::NotBound);
        m.configure_service("web", Side::Local);
        m.count_refused("web", Side::Local, Refused::NotBound);
        for i in 0..100 {
            m.count_refused(
                &format!("made-up-{i}"),
                Side::Remote,
                Refused::UnknownService,
            );
            m.count_admin_request("unmatched", &format!("M{i}"), 405);
        }
        let text = m.encode();
        assert!(
            text.contains("menet_tunnel_sent_bytes_total{tunnel=\"t1\"} 123"),
            "{text}"
        );
        assert!(text.contains("menet_service_connections_active{service=\"web\",side=\"local\"} 1"));
        assert!(text.contains("reason=\"not_bound\"} 1"), "{text}");
        assert!(!text.contains("made-up"), "{text}");
        assert!(text.contains("menet_unknown_service_connections_refused_total{side=\"local\"} 1"));
        assert!(
            text.contains("menet_unknown_service_connections_refused_total{side=\"remote\"} 100")
        );
        assert!(
            text.contains("method=\"other\",status=\"405\"} 100"),
            "{text}"
        );
        assert!(text.contains("menet_build_info{"));
        drop(guard);
        assert!(m
            .encode()
            .contains("menet_service_connections_active{service=\"web\",side=\"local\"} 0"));
        m.forget_tunnel("t1");
        m.forget_service("web", Side::Local);
        let text = m.encode();
        assert!(!text.contains("t1"), "{text}");
        assert!(!text.contains("web"), "{text}");
    }

    #[test]
    fn label_values_are_escaped() {
        let m = Metrics::new();
        m.tunnel("a\"b\\c").sent.inc();
        let text = m.encode();
        assert!(text.contains("tunnel=\"a\\\"b\\\\c\""), "{text}");
    }
}
