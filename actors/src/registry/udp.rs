//! Local UDP services: their socket is bound here (so a taken port is the request's error) and
//! handed to a [`UdpListener`] on a data thread, which keeps the service's flows.

use super::*;

use crate::datagram::DatagramCounts;
use crate::udp_listener::{StopUdp, UdpDown, UdpListener};

/// A local UDP service's socket and the actor that receives on it.
pub(super) struct UdpBound {
    /// The listener actor (it owns the socket).
    pub(super) actor: Addr<UdpListener>,
    /// The address bound (the port given, or the one port 0 got).
    pub(super) bound: SocketAddr,
    /// The socket, kept to start another listener on it if this one dies (the port stays ours).
    socket: std::net::UdpSocket,
    /// The incarnation of the listener now.
    id: u64,
    /// Restarts in a row (the back-off), reset once one has run for a while.
    restarts: u32,
    /// When the listener now was started: one that runs a while resets the back-off.
    started: Instant,
    /// The service's datagram counts, for the next listener.
    counts: Arc<DatagramCounts>,
}

impl Registry {
    /// Binds a local UDP service's `addr` and starts its listener.
    pub(super) fn start_udp(
        &mut self,
        name: &str,
        addr: SocketAddr,
        counts: &Arc<DatagramCounts>,
        ctx: &Context<Self>,
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
        let id = self.next_generation();
        let actor = self.spawn_udp(name, id, socket.try_clone().map_err(refused)?, counts, ctx);
        Ok(UdpBound {
            actor,
            bound,
            socket,
            id,
            restarts: 0,
            started: Instant::now(),
            counts: counts.clone(),
        })
    }

    /// A listener for `name` on `socket`, on the next data thread.
    fn spawn_udp(
        &mut self,
        name: &str,
        id: u64,
        socket: std::net::UdpSocket,
        counts: &Arc<DatagramCounts>,
        ctx: &Context<Self>,
    ) -> Addr<UdpListener> {
        let listener = UdpListener::new(
            name.to_owned(),
            (id, ctx.address().recipient()),
            socket,
            self.routes.clone(),
            self.settings.limits.max_udp_flows_per_service,
            counts.clone(),
        );
        match self.next_data_thread() {
            Some((thread, _)) => thread.start(|_| listener),
            None => listener.start(),
        }
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
        if self.update_in_place(&spec, &key, &pace, Protocol::Udp) {
            return Ok(());
        }
        let datagrams = health::datagrams(&spec.name, Side::Local);
        let udp = self.start_udp(&spec.name, spec.addr, &datagrams, ctx)?;
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

impl Handler<UdpDown> for Registry {
    type Result = ();

    /// A UDP listener that died (it panicked) is started again on the same socket, with the
    /// listeners' back-off; its flows end with it and clients' next datagrams start new ones.
    fn handle(&mut self, msg: UdpDown, ctx: &mut Self::Context) {
        if self.shutting_down {
            return;
        }
        let Some(udp) = self
            .local
            .get_mut(&msg.service)
            .and_then(|s| s.udp.as_mut())
            .filter(|u| u.id == msg.id)
        else {
            return;
        };
        if udp.started.elapsed() >= HEALTHY_AFTER {
            udp.restarts = 0;
        }
        udp.restarts += 1;
        let delay = backoff(udp.restarts);
        let why = if msg.panicked { "panicked" } else { "stopped" };
        error!(
            "service {} (local, udp): the listener {why}; restarting it in {} ms",
            msg.service,
            delay.as_millis()
        );
        ctx.run_later(delay, move |act, ctx| {
            act.restart_udp(&msg.service, msg.id, ctx)
        });
    }
}

impl Registry {
    fn restart_udp(&mut self, name: &str, dead: u64, ctx: &mut Context<Self>) {
        let id = self.next_generation();
        let Some((socket, counts)) = self
            .local
            .get(name)
            .and_then(|s| s.udp.as_ref())
            .filter(|u| u.id == dead)
            .map(|u| (u.socket.try_clone(), u.counts.clone()))
        else {
            return;
        };
        let socket = match socket {
            Ok(s) => s,
            Err(e) => {
                error!("service {name} (local, udp): cannot restart its listener: {e}");
                return;
            }
        };
        let actor = self.spawn_udp(name, id, socket, &counts, ctx);
        if let Some(udp) = self.local.get_mut(name).and_then(|s| s.udp.as_mut()) {
            udp.actor = actor;
            udp.id = id;
            udp.started = Instant::now();
        }
        info!("service {name} (local, udp): listener restarted");
    }
}
