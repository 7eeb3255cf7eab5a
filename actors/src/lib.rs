//! menet's engine: the actors that carry TCP connections through multiplexed tunnels.
//!
//! The crate in layers; a module imports only from its own layer or the ones below. A report or
//! a question going up is declared beside its sender and travels as a `Recipient` (a stream's
//! reports to its tunnel, which share a thread, through the queue declared beside the
//! connection, `connection::Upstream`); a command going down lives beside its handler (a
//! tunnel's events for a connection through the queue they share, `connection::Downstream`).
//!
//! - **wire** (plain types and codecs, no actors):
//!   [`protocol`] frames and the cipher ids they carry; [`record`] the sealed records under
//!   them (AEAD, implicit counters, rekeying); [`handshake`] the handshake messages, identities,
//!   the key exchange and both state machines; [`cipher`] stream keys and ciphers; [`credit`] receive windows and the
//!   round trip; [`send_credit`] what a tunnel may send and what its streams hold of it;
//!   [`schedule`] the per-stream send queue; [`listen_socket`] listening sockets that accept without
//!   registering; [`limits`] the node's limits, their accounting, the
//!   log's rate limits and escaping; [`admission`] handshake slots and per-source rates;
//!   [`metrics`] the Prometheus series; `io` socket helpers; `lasting` when an actor's lasting
//!   item is woken; [`data_thread`] the threads tunnels and their connections run on; [`fuzzing`] fuzz entry points;
//!   [`service`] a service's options (protocol, PROXY header, balance, bandwidth);
//!   [`backends`] a remote service's addresses and their health; [`timer`] the data threads' timers; [`pace`] bandwidth limits
//!   (token buckets); [`proxy_header`] the PROXY protocol header.
//! - **stream**: [`connection`] one client or backend socket, carried as one stream;
//!   [`datagram`] one UDP flow (a client address), carried as one stream.
//! - **tunnel**: [`tunnel`] one tunnel connection (multiplexing, flow control, heartbeats; it
//!   starts its streams' connections); [`routes`] the published route table; [`listener`] a
//!   local service's listener and the tunnel port; [`udp_listener`] a local UDP service's
//!   socket and its flow table.
//! - **registry**: [`registry`] the actor that owns the configuration and supervises the rest;
//!   [`model`] the state kept on disk, [`journal`] its line format, [`state`] the writer thread.
//! - **admin** is the `menet` crate (`src/`): the HTTP API turns requests into Registry messages.

pub mod admission;
pub mod backends;
pub mod busy_poll;
pub mod cipher;
pub mod connection;
pub mod credit;
pub mod data_thread;
pub mod datagram;
pub mod fuzzing;
pub mod handshake;
mod io;
pub mod journal;
mod lasting;
pub mod listen_socket;
#[macro_use]
pub mod limits;
pub mod listener;
pub mod metrics;
pub mod model;
pub mod pace;
pub mod protocol;
pub mod proxy_header;
pub mod record;
pub mod registry;
pub mod routes;
pub mod schedule;
pub mod send_credit;
pub mod service;
pub mod state;
pub mod timer;
pub mod tunnel;
pub mod udp_listener;

use std::fmt;
use std::time::Duration;

use actix::{Actor, Addr};
use serde::{Deserialize, Serialize};

use crate::cipher::Secret;
use crate::handshake::Terms;
use crate::limits::Limits;
use crate::protocol::Windows;
use crate::registry::Registry;

/// The two ends of a service: `local` listens for clients, `remote` is where they are sent.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    Local,
    Remote,
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Local => "local",
            Side::Remote => "remote",
        })
    }
}

/// Engine tunables. The defaults are what the protocol and the admin API promise.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Initial receive window per stream (announced in the handshake); it grows while the stream
    /// is window-limited.
    pub stream_window: u32,
    /// The most a stream's window grows to: what one stalled stream can hold at most.
    pub max_stream_window: u32,
    /// Initial receive window per tunnel: the bytes in flight over all its streams.
    pub tunnel_window: u32,
    /// The most the tunnel window grows to, and the budget of all stream windows' growth.
    pub max_tunnel_window: u32,
    /// A PING goes out this often (and once a second while streams are open, for round trips).
    pub heartbeat_interval: Duration,
    /// The tunnel is dead after this long without a frame received.
    pub heartbeat_timeout: Duration,
    /// A connection on the tunnel port must send its HELLO within this.
    pub hello_timeout: Duration,
    /// A connection on the tunnel port must complete its handshake within this.
    pub handshake_timeout: Duration,
    /// A pinned tunnel name whose tunnel is gone (and that has no bind or declaration) is
    /// forgotten after this long without its dialer.
    pub pin_ttl: Duration,
    /// Dialling a remote service's `addr`.
    pub connect_timeout: Duration,
    /// `POST /tunnel` answers within this: dial plus handshake.
    pub dial_timeout: Duration,
    /// What peers and clients may use of this node.
    pub limits: Limits,
    /// Seal the tunnel's frames in records (`[tunnel] encrypt`, on by default): a tunnel is
    /// sealed unless both of its nodes turned this off.
    pub encrypt: bool,
    /// When a sealed tunnel's sending key is replaced.
    pub rekey: record::RekeyPolicy,
    /// TCP connections a dialled tunnel runs over (`[tunnel] lanes`, 1 to
    /// [`tunnel::MAX_LANES`]), each a tunnel actor on a data thread of its own: one service's
    /// bulk leaves a lane, and its thread, to the others' streams.
    pub lanes: usize,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            // Small at first, so bulk holds little in flight and unread ahead of a small
            // exchange; both grow while they limit the sender (to the bandwidth-delay product).
            stream_window: 256 * 1024,
            // A stream may grow to the whole tunnel budget: one stream as fast as the path.
            max_stream_window: 64 * 1024 * 1024,
            tunnel_window: 256 * 1024,
            max_tunnel_window: 64 * 1024 * 1024,
            heartbeat_interval: Duration::from_secs(5),
            heartbeat_timeout: Duration::from_secs(15),
            hello_timeout: Duration::from_secs(2),
            handshake_timeout: Duration::from_secs(5),
            pin_ttl: Duration::from_secs(30 * 24 * 3600),
            connect_timeout: Duration::from_secs(3),
            dial_timeout: Duration::from_secs(5),
            limits: Limits::default(),
            encrypt: true,
            // Two: one service's bulk keeps to one lane and its thread, and a small exchange
            // of any other service takes the other (`tunnel/placement.rs`).
            lanes: 2,
            rekey: record::RekeyPolicy::default(),
        }
    }
}

impl Settings {
    pub fn windows(&self) -> Windows {
        Windows {
            stream: self.stream_window,
            tunnel: self.tunnel_window,
        }
    }

    /// What this node grants a peer, announced in the handshake.
    pub fn terms(&self) -> Terms {
        Terms {
            windows: self.windows(),
            max_streams: self.limits.max_streams,
        }
    }
}

/// What the actors of one node share: its tunables and limits, the accounting of those limits,
/// and the route table. Cheap to clone (a copy and two `Arc`s); every tunnel and listener gets
/// one instead of a long parameter list.
#[derive(Clone)]
pub struct Shared {
    /// Tunables and limits.
    pub settings: Settings,
    /// The limits' counters: descriptors, handshakes, buffers, refusals.
    pub usage: std::sync::Arc<limits::Usage>,
    /// Where new connections go, as the Registry last published it.
    pub routes: routes::RouteTable,
}

/// How a node starts, besides its sockets and its state: tunables, who may dial in, the
/// process's descriptor limit (of which `settings.limits.fd_reserve` is kept free for the admin
/// API and the tunnel port) and the data threads (0: tunnels run beside the Registry).
#[derive(Debug, Clone)]
pub struct NodeSetup {
    /// Tunables and limits.
    pub settings: Settings,
    /// The tunnel secret and who may dial in.
    pub access: Access,
    /// The process's descriptor limit (`RLIMIT_NOFILE`).
    pub fd_limit: usize,
    /// Data threads for tunnels and their connections.
    pub threads: usize,
    /// How long a data thread polls on after its last read before it sleeps (`busy_poll`).
    pub busy_poll: std::time::Duration,
}

/// Which peers may open tunnels to this node.
#[derive(Debug, Clone, Default)]
pub struct Access {
    /// The node's tunnel secret: every peer must prove it (unless a tunnel has its own).
    pub secret: Option<Secret>,
    /// Admit only tunnel names declared on this node (`[tunnel] accept = "known"`).
    pub known_only: bool,
}

/// Starts the Registry on the current actix system: it listens on the tunnel port and restores
/// `restore` (what the state file held).
pub fn start(
    setup: NodeSetup,
    tunnel_port: listen_socket::ListenSocket,
    store: Option<state::StateStore>,
    restore: Option<state::State>,
) -> Addr<Registry> {
    Registry::new(setup, tunnel_port, store, restore).start()
}

/// Test-only fault hook: the actor that receives it panics.
#[cfg(feature = "fault-injection")]
#[derive(actix::Message)]
#[rtype(result = "()")]
pub struct Crash;
