//! menet's engine: the actors that carry TCP connections through multiplexed tunnels.
//!
//! - [`registry::Registry`] owns the configuration (kept on disk by [`state`]) and supervises the
//!   tunnels and listeners.
//! - [`tunnel::Tunnel`] is one tunnel connection: framing, multiplexing, flow control, heartbeats;
//!   it starts and supervises the connection actors of its streams.
//! - [`listener::Listener`] accepts the clients of one local service.
//! - [`connection::Connection`] is one client or backend connection, carried as one stream.
//!
//! The wire protocol is [`protocol`] (prose in `PROTOCOL.md`); stream encryption is [`cipher`].

pub mod cipher;
pub mod connection;
mod io;
pub mod listener;
pub mod protocol;
pub mod registry;
pub mod state;
pub mod tunnel;

use std::fmt;
use std::time::Duration;

use actix::{Actor, Addr};
use serde::Serialize;

use crate::protocol::Windows;
use crate::registry::Registry;

/// The two ends of a service: `local` listens for clients, `remote` is where they are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
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
    /// Receive window per stream: the most one stalled stream can hold in memory.
    pub stream_window: u32,
    /// Receive window per tunnel: the most all streams of a tunnel can hold in memory together.
    pub tunnel_window: u32,
    pub heartbeat_interval: Duration,
    pub heartbeat_timeout: Duration,
    /// A connection on the tunnel port must complete its handshake within this.
    pub handshake_timeout: Duration,
    /// Dialling a remote service's `addr`.
    pub connect_timeout: Duration,
    /// `POST /tunnel` answers within this: dial plus handshake.
    pub dial_timeout: Duration,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            stream_window: 1024 * 1024,
            tunnel_window: 32 * 1024 * 1024,
            heartbeat_interval: Duration::from_secs(5),
            heartbeat_timeout: Duration::from_secs(15),
            handshake_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(3),
            dial_timeout: Duration::from_secs(5),
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
}

/// Starts the Registry on the current actix system: it listens on the tunnel port and restores
/// `restore` (what the state file held).
pub fn start(
    settings: Settings,
    tunnel_port: tokio::net::TcpListener,
    store: Option<state::StateStore>,
    restore: Option<state::State>,
) -> Addr<Registry> {
    Registry::new(settings, tunnel_port, store, restore).start()
}

/// Test-only fault hook: the actor that receives it panics.
#[cfg(feature = "fault-injection")]
#[derive(actix::Message)]
#[rtype(result = "()")]
pub struct Crash;
