//! The route table: what a listener and a tunnel need to place a new connection without asking
//! the Registry. The Registry builds a new, immutable [`Routes`] on every change of services,
//! binds or connected tunnels and publishes it through a [`RouteTable`]; listeners and tunnels
//! read the current one for each connection (one `Arc` clone), so new connections never queue
//! behind admin work, and a change is seen by the next connection, never half-applied.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use actix::prelude::*;
use bytes::Bytes;

use crate::backends::Backends;
use crate::cipher::ServiceKey;
use crate::datagram::{DatagramCounts, FlowReport};
use crate::limits::Escaped;
use crate::limits::Slot;
use crate::metrics::Refused;
use crate::pace::Pace;
use crate::protocol::{KeyedOpen, Origin};
use crate::service::{Protocol, ProxyVersion};

/// Listener -> tunnel: carry a client just accepted by a local service as a new stream. The route
/// table's currency: a route names its tunnel as a `Recipient` of this message.
///
/// The tunnel starts the connection actor itself, so a connection exists only once its tunnel
/// knows it: if the tunnel is gone, this message and the socket in it are dropped, and the client
/// sees its connection closed at once.
#[derive(Message)]
#[rtype(result = "()")]
pub struct CarryClient {
    /// The client: a TCP connection or a UDP flow's first datagram.
    pub client: Client,
    /// The local service it connected to: named in the OPEN.
    pub service: String,
    /// The service key, if keyed: the stream's keys are derived once OPEN_OK brings the
    /// acceptor's nonce.
    pub key: Option<crate::cipher::ServiceKey>,
    /// The service's idle timeout, for the connection's actor.
    pub idle_timeout: Option<Duration>,
    /// The client's address and the one it reached, sent in OPEN (for a PROXY header).
    pub origin: Option<Origin>,
    /// The service's bandwidth limit, if it has one.
    pub pace: Option<Arc<Pace>>,
    /// Held for the connection's life: its descriptor and its place in the service's limit.
    pub slots: Vec<Slot>,
}

/// What a listener hands its tunnel.
pub enum Client {
    /// A TCP client, not yet registered: the tunnel's thread takes it over.
    Tcp {
        sock: std::net::TcpStream,
        /// Who connected (as accepted: nobody asks the kernel again).
        peer: std::net::SocketAddr,
    },
    /// A new UDP flow.
    Udp(FlowStart),
}

/// A UDP listener -> its tunnel: start a flow for `client`.
pub struct FlowStart {
    /// The service's socket, where replies are sent from.
    pub socket: Arc<tokio::net::UdpSocket>,
    /// The client's address: the flow's key.
    pub client: SocketAddr,
    /// The flow's number for its listener.
    pub id: u64,
    /// Told when the flow starts and ends.
    pub listener: Recipient<FlowReport>,
    /// The client's first datagram.
    pub first: Bytes,
    /// The service's datagram counts.
    pub counts: Arc<DatagramCounts>,
}

/// A local service's route: where its clients go.
#[derive(Clone)]
pub struct LocalRoute {
    /// The tunnel it is bound to, if any.
    pub tunnel: Option<String>,
    /// The service key, if keyed.
    pub key: Option<ServiceKey>,
    /// The idle timeout of its connections, if any.
    pub timeout: Option<Duration>,
    /// What it carries, named in each OPEN.
    pub protocol: Protocol,
    /// Its bandwidth limit, shared by its connections.
    pub pace: Option<Arc<Pace>>,
}

/// A remote service's route: where streams for it are dialled, and from which tunnel.
#[derive(Clone)]
pub struct RemoteRoute {
    /// Its addresses and their health, shared by its streams.
    pub backends: Arc<Backends>,
    /// The service key, if keyed: an OPEN must prove the same key and cipher.
    pub key: Option<ServiceKey>,
    /// The idle timeout of its streams, if any.
    pub timeout: Option<Duration>,
    /// The tunnel it is bound to: OPENs from any other tunnel are refused.
    pub tunnel: Option<String>,
    /// What it carries: OPENs of the other protocol are refused.
    pub protocol: Protocol,
    /// The header its backend receives first, if any.
    pub proxy_protocol: Option<ProxyVersion>,
    /// Its bandwidth limit, shared by its connections.
    pub pace: Option<Arc<Pace>>,
    /// A UDP service's datagram and flow counts.
    pub datagrams: Arc<DatagramCounts>,
}

/// One immutable version of the routes.
#[derive(Clone, Default)]
pub struct Routes {
    // Persistent maps: the Registry changes one entry in O(log n) and publishes a version in
    // O(1), sharing the rest with the version before.
    pub local: imbl::HashMap<String, LocalRoute>,
    /// Remote services by name: where an OPEN's stream is dialled.
    pub remote: imbl::HashMap<String, RemoteRoute>,
    /// Tunnels connected now, by name.
    pub tunnels: imbl::HashMap<String, Recipient<CarryClient>>,
    /// The node is shutting down: no new connections.
    pub closed: bool,
}

/// Why an OPEN is refused: the line to log, and what the peer is told.
#[derive(Debug, PartialEq, Eq)]
pub struct Refusal {
    /// The line this node logs (names escaped).
    pub log: String,
    /// The reason sent in OPEN_FAIL: to a peer not authenticated, only `refused`.
    pub peer: String,
    /// The kind, for `menet_service_connections_refused`.
    pub reason: Refused,
}

impl Routes {
    /// Where a client of local service `service` goes: its route and the tunnel to carry it, or
    /// why it cannot be carried.
    pub fn carry(
        &self,
        service: &str,
    ) -> Result<(&LocalRoute, &Recipient<CarryClient>), (Refused, String)> {
        if self.closed {
            return Err((
                Refused::ShuttingDown,
                "the node is shutting down".to_owned(),
            ));
        }
        let route = self.local.get(service).ok_or_else(|| {
            (
                Refused::UnknownService,
                format!("service {service} is gone"),
            )
        })?;
        let tunnel = route.tunnel.as_deref().ok_or_else(|| {
            (
                Refused::NotBound,
                "the service is not bound to a tunnel".to_owned(),
            )
        })?;
        let addr = self.tunnels.get(tunnel).ok_or_else(|| {
            (
                Refused::TunnelDown,
                format!("tunnel {tunnel} is not connected"),
            )
        })?;
        Ok((route, addr))
    }

    /// Whether tunnel `tunnel` may open a stream to remote service `service` with `keyed`. A
    /// peer that did not prove a secret (`authenticated` false) is told only "refused": not
    /// whether the service exists, is bound elsewhere, or has another key or cipher.
    pub fn open(
        &self,
        tunnel: &str,
        service: &str,
        keyed: Option<&KeyedOpen>,
        protocol: Protocol,
        authenticated: bool,
    ) -> Result<&RemoteRoute, Refusal> {
        let shown = Escaped(service);
        let (reason, why) = match self.remote.get(service) {
            _ if self.closed => (
                Refused::ShuttingDown,
                "the node is shutting down".to_owned(),
            ),
            None => (
                Refused::UnknownService,
                format!("no remote service named {shown}"),
            ),
            Some(r) if r.tunnel.as_deref() != Some(tunnel) => (
                Refused::NotBound,
                format!("remote service {shown} is not bound to tunnel {tunnel}"),
            ),
            Some(r) if r.protocol != protocol => (
                Refused::ProtocolMismatch,
                format!(
                    "protocol mismatch for service {shown}: the peer carries {protocol}, this node {}",
                    r.protocol
                ),
            ),
            Some(r) => match (&r.key, keyed) {
                (Some(k), Some(open)) if open.cipher != k.cipher => (
                    Refused::KeyMismatch,
                    format!(
                        "cipher mismatch for service {shown}: the peer uses {}, this node {}",
                        open.cipher, k.cipher
                    ),
                ),
                (Some(k), Some(open)) if !k.verify(open) => (
                    Refused::KeyMismatch,
                    format!("key mismatch for service {shown}"),
                ),
                (Some(_), None) | (None, Some(_)) => (
                    Refused::KeyMismatch,
                    format!("key mismatch for service {shown}: only one end has a key"),
                ),
                _ => return Ok(r),
            },
        };
        let peer = match reason {
            _ if !authenticated => "refused".to_owned(),
            // Bound to another tunnel or not there: the same words, so a peer learns nothing of
            // the services other tunnels carry.
            Refused::UnknownService | Refused::NotBound => {
                format!("no remote service named {shown} for this tunnel")
            }
            _ => why.clone(),
        };
        Err(Refusal {
            reason,
            peer,
            log: why,
        })
    }
}

/// The current [`Routes`], shared by the Registry (which writes) and every listener and tunnel
/// (which read).
#[derive(Clone, Default)]
pub struct RouteTable(Arc<RwLock<Arc<Routes>>>);

impl RouteTable {
    /// The routes now: a snapshot that stays valid however the table changes meanwhile.
    pub fn load(&self) -> Arc<Routes> {
        match self.0.read() {
            Ok(r) => r.clone(),
            // A writer never panics while holding the lock (it only swaps an Arc).
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub fn publish(&self, routes: Routes) {
        let routes = Arc::new(routes);
        match self.0.write() {
            Ok(mut w) => *w = routes,
            Err(poisoned) => *poisoned.into_inner() = routes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cipher::CipherKind;

    fn routes() -> Routes {
        let mut r = Routes::default();
        r.remote.insert(
            "svc".into(),
            RemoteRoute {
                backends: Arc::new(Backends::new(
                    &["127.0.0.1:80".parse().expect("addr")],
                    crate::service::Balance::First,
                    |_| Default::default(),
                )),
                key: Some(ServiceKey::new("k", CipherKind::Aes256Gcm)),
                timeout: None,
                tunnel: Some("t1".into()),
                protocol: Protocol::Tcp,
                proxy_protocol: None,
                pace: None,
                datagrams: Arc::default(),
            },
        );
        r.remote.insert(
            "plain".into(),
            RemoteRoute {
                backends: Arc::new(Backends::new(
                    &["127.0.0.1:81".parse().expect("addr")],
                    crate::service::Balance::First,
                    |_| Default::default(),
                )),
                key: None,
                timeout: None,
                tunnel: Some("t1".into()),
                protocol: Protocol::Tcp,
                proxy_protocol: None,
                pace: None,
                datagrams: Arc::default(),
            },
        );
        r
    }

    #[test]
    fn opens_are_decided_and_strangers_learn_nothing() {
        let r = routes();
        let good = ServiceKey::new("k", CipherKind::Aes256Gcm).open();
        assert!(r
            .open("t1", "svc", Some(&good), Protocol::Tcp, false)
            .is_ok());
        assert!(r.open("t1", "plain", None, Protocol::Tcp, false).is_ok());
        let e = r
            .open("t1", "plain", None, Protocol::Udp, true)
            .err()
            .expect("refused");
        assert_eq!(e.reason, Refused::ProtocolMismatch);
        assert!(
            e.log.contains("the peer carries udp, this node tcp"),
            "{}",
            e.log
        );
        let wrong_key = ServiceKey::new("x", CipherKind::Aes256Gcm).open();
        let wrong_cipher = ServiceKey::new("k", CipherKind::Rc4).open();
        for (tunnel, service, keyed, log) in [
            ("t1", "nope", None, "no remote service"),
            ("t2", "plain", None, "not bound to tunnel t2"),
            ("t1", "svc", Some(&wrong_key), "key mismatch"),
            ("t1", "svc", Some(&wrong_cipher), "cipher mismatch"),
            ("t1", "svc", None, "only one end has a key"),
        ] {
            let e = r
                .open(tunnel, service, keyed, Protocol::Tcp, false)
                .err()
                .expect("refused");
            assert!(e.log.contains(log), "{}", e.log);
            assert_eq!(e.peer, "refused");
            let e = r
                .open(tunnel, service, keyed, Protocol::Tcp, true)
                .err()
                .expect("refused");
            if matches!(e.reason, Refused::UnknownService | Refused::NotBound) {
                assert_eq!(
                    e.peer,
                    format!("no remote service named {service} for this tunnel"),
                    "bound elsewhere reads as absent"
                );
            } else {
                assert_eq!(e.peer, e.log, "an authenticated peer is told why");
            }
        }
    }

    #[test]
    fn clients_need_a_bind_and_a_connected_tunnel() {
        let mut r = routes();
        r.local.insert(
            "l".into(),
            LocalRoute {
                tunnel: Some("t1".into()),
                key: None,
                timeout: None,
                protocol: Protocol::Tcp,
                pace: None,
            },
        );
        let (reason, why) = r.carry("l").err().expect("down");
        assert_eq!(reason, Refused::TunnelDown);
        assert!(why.contains("not connected"));
        assert_eq!(
            r.carry("x").err().map(|e| e.0),
            Some(Refused::UnknownService)
        );
        r.closed = true;
        let (reason, why) = r.carry("l").err().expect("closed");
        assert_eq!(reason, Refused::ShuttingDown);
        assert!(why.contains("shutting down"));
        let table = RouteTable::default();
        let before = table.load();
        table.publish(r);
        assert!(before.local.is_empty(), "a snapshot stays as it was");
        assert!(table.load().closed);
    }
}
