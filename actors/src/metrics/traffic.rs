//! The byte counters of every tunnel and service read at once (the dashboard's charts sample
//! them each second), from the same series `/metrics` serves.

use super::*;

/// One tunnel's counters.
#[derive(Debug, Clone, PartialEq)]
pub struct TunnelTraffic {
    /// The tunnel's name.
    pub name: String,
    /// Payload bytes sent to the peer, ever.
    pub sent: u64,
    /// Payload bytes received from the peer, ever.
    pub received: u64,
    /// Whether it is up now.
    pub connected: bool,
    /// Streams open now.
    pub streams: i64,
}

/// One service's counters.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceTraffic {
    /// The service's name.
    pub name: String,
    /// Which end of the tunnel it is.
    pub side: Side,
    /// Bytes carried from its sockets into the tunnel, ever.
    pub sent: u64,
    /// Bytes carried from the tunnel to its sockets, ever.
    pub received: u64,
}

/// Every tunnel's and every configured service's counters now.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Traffic {
    /// Every tunnel with series, by name.
    pub tunnels: Vec<TunnelTraffic>,
    /// Every configured service, by name and side.
    pub services: Vec<ServiceTraffic>,
}

impl Metrics {
    /// Reads every tunnel's and configured service's counters (names only this node made, so
    /// the set is bounded by its configuration and tunnels).
    pub fn traffic(&self) -> Traffic {
        let tunnels: Vec<String> = self
            .tunnel_names
            .read()
            .map(|n| n.iter().cloned().collect())
            .unwrap_or_default();
        let services: Vec<(String, Side)> = self
            .configured
            .read()
            .map(|c| {
                let side = |i: usize, s: Side| c[i].iter().map(move |n| (n.clone(), s));
                side(Side::Local as usize, Side::Local)
                    .chain(side(Side::Remote as usize, Side::Remote))
                    .collect()
            })
            .unwrap_or_default();
        // One series at a time: a family's guard lives to the end of its statement.
        let tunnels = tunnels
            .into_iter()
            .map(|name| {
                let l = Self::tunnel_label(&name);
                let sent = self.tunnel_sent.get_or_create(&l).get();
                let received = self.tunnel_received.get_or_create(&l).get();
                let connected = self.tunnel_connected.get_or_create(&l).get() == 1;
                let streams = self.tunnel_streams.get_or_create(&l).get();
                TunnelTraffic {
                    name,
                    sent,
                    received,
                    connected,
                    streams,
                }
            })
            .collect();
        let services = services
            .into_iter()
            .map(|(name, side)| {
                let l = Self::service_label(&name, side);
                let sent = self.service_sent.get_or_create(&l).get();
                let received = self.service_received.get_or_create(&l).get();
                ServiceTraffic {
                    name,
                    side,
                    sent,
                    received,
                }
            })
            .collect();
        Traffic { tunnels, services }
    }
}
