//! Route publishing: the Registry keeps the routes as persistent maps, changes them at the keys a
//! change touched and publishes a new immutable table for listeners and tunnels.

use super::*;

impl Registry {
    /// Publishes the routes as they are now (services, binds, connected tunnels), for the next
    /// connection any listener or tunnel places.
    /// Publishes the current routes: an O(1) clone of persistent maps.
    pub(super) fn publish(&self) {
        self.routes.publish(self.current.clone());
    }

    /// Brings the routes at `keys` up to date (O(log n) each), then publishes them.
    pub(super) fn reroute(&mut self, keys: &[Key]) {
        for key in keys {
            match key {
                Key::Service(Side::Local, name) | Key::Bind(Side::Local, name) => {
                    let tunnel = self.binds.get(&Side::Local).and_then(|b| b.get(name));
                    match self.local.get(name) {
                        Some(s) => {
                            let route = local_route(s, tunnel.cloned());
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
                            let route = remote_route(s, tunnel.cloned());
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
    pub(super) fn build_routes(&self) -> Routes {
        let bind =
            |side: Side, name: &str| self.binds.get(&side).and_then(|b| b.get(name)).cloned();
        Routes {
            local: self
                .local
                .iter()
                .map(|(n, s)| (n.clone(), local_route(s, bind(Side::Local, n))))
                .collect(),
            remote: self
                .remote
                .iter()
                .map(|(n, s)| (n.clone(), remote_route(s, bind(Side::Remote, n))))
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
}

/// A local service's route, bound to `tunnel`.
fn local_route(s: &LocalService, tunnel: Option<String>) -> LocalRoute {
    LocalRoute {
        tunnel,
        key: s.key.clone(),
        timeout: s.timeout,
        protocol: s.options.protocol,
        pace: s.pace.clone(),
    }
}

/// A remote service's route, bound to `tunnel`.
fn remote_route(s: &RemoteService, tunnel: Option<String>) -> RemoteRoute {
    RemoteRoute {
        backends: s.backends.clone(),
        key: s.key.clone(),
        timeout: s.timeout,
        tunnel,
        protocol: s.options.protocol,
        proxy_protocol: s.options.proxy_protocol,
        pace: s.pace.clone(),
        datagrams: s.datagrams.clone(),
    }
}
