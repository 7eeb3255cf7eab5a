//! Local UDP services: their socket is bound here (so a taken port is the request's error) and
//! handed to a [`UdpListener`] on a data thread, which keeps the service's flows.

use super::*;

use crate::datagram::DatagramCounts;
use crate::udp_listener::{StopUdp, UdpListener};

/// A local UDP service's socket and the actor that receives on it.
pub(super) struct UdpBound {
    /// The listener actor (it owns the socket).
    pub(super) actor: Addr<UdpListener>,
    /// The address bound (the port given, or the one port 0 got).
    pub(super) bound: SocketAddr,
}

impl Registry {
    /// Binds a local UDP service's `addr` and starts its listener.
    pub(super) fn start_udp(
        &mut self,
        name: &str,
        addr: SocketAddr,
        counts: &Arc<DatagramCounts>,
    ) -> Result<UdpBound, AdminError> {
        let refused = |e: std::io::Error| {
            let msg = format!("service {name}: cannot receive on {addr}: {e}");
            warn!("{msg}");
            if e.kind() == std::io::ErrorKind::AddrNotAvailable {
                AdminError::Invalid(msg)
            } else {
                AdminError::Conflict(msg)
            }
        };
        let socket = std::net::UdpSocket::bind(addr).map_err(refused)?;
        socket.set_nonblocking(true).map_err(refused)?;
        let bound = socket.local_addr().map_err(refused)?;
        let listener = UdpListener::new(
            name.to_owned(),
            socket,
            self.routes.clone(),
            self.settings.limits.max_udp_flows_per_service,
            counts.clone(),
        );
        let actor = match self.next_data_arbiter() {
            Some((arbiter, _)) => UdpListener::start_in_arbiter(&arbiter, |_| listener),
            None => listener.start(),
        };
        Ok(UdpBound { actor, bound })
    }

    /// `POST /service` of a local UDP service: bound first, so a taken port changes nothing; the
    /// same address again updates the service in place (its flows go on).
    pub(super) fn add_udp_service(
        &mut self,
        spec: ServiceSpec,
        key: Option<ServiceKey>,
        pace: Option<Arc<Pace>>,
        ctx: &mut Context<Self>,
    ) -> Result<(), AdminError> {
        if let Some(s) = self.local.get_mut(&spec.name) {
            if s.listening.addr == spec.addr && s.udp.is_some() {
                s.key = key;
                s.timeout = spec.timeout;
                s.options = spec.options;
                s.pace = pace;
                info!(
                    "service {} (local, udp) on {}: updated",
                    spec.name, spec.addr
                );
                return Ok(());
            }
        }
        let datagrams = health::datagrams(&spec.name, Side::Local);
        let udp = self.start_udp(&spec.name, spec.addr, &datagrams)?;
        info!(
            "service {} (local, udp): receiving on {}",
            spec.name, udp.bound
        );
        let connections = self.kept_gauge(&spec.name);
        let old = self.local.insert(
            spec.name.clone(),
            LocalService {
                key,
                timeout: spec.timeout,
                listening: Listening::new(spec.addr, None),
                connections,
                options: spec.options,
                pace,
                udp: Some(udp),
                datagrams,
            },
        );
        if let Some(old) = old {
            old.close(ctx);
        }
        Ok(())
    }
}

impl LocalService {
    /// Stops receiving: the TCP listener or the UDP listener (and its flows).
    pub(super) fn close(self, ctx: &mut Context<Registry>) {
        if let Some(udp) = self.udp {
            udp.actor.do_send(StopUdp);
        }
        self.listening.close(ctx);
    }
}
