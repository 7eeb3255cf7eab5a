//! The views: `GET /config` (whole or filtered) and readiness, built from the Registry's model and
//! each tunnel's counters.

use super::*;

/// An address as `GET /config` shows it: `["ip", port]`.
fn endpoint(a: &SocketAddr) -> Value {
    json!([a.ip().to_string(), a.port()])
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

impl Registry {
    /// The tunnels part of `GET /config` (without their counters, which the tunnels add).
    fn tunnels_view(&self, f: &ConfigFilter) -> Map<String, Value> {
        self.tunnels
            .iter()
            .filter(|(name, _)| self.keeps_tunnel(f, name))
            .map(|(name, t)| {
                let mut v = json!({
                    "dest": t.dest.as_ref().map(endpoint),
                    "role": t.role,
                    "last_error": t.last_error,
                });
                if t.role == Role::Dialer {
                    v["secret"] = json!(t.secret.as_ref().map(|_| "***"));
                } else if let Some(a) = self.accepted.get(name) {
                    v["identity"] = json!(a.pin.as_ref().map(fingerprint));
                }
                match &t.link {
                    Link::Up(_) => {
                        v["state"] = json!("connected");
                        v["thread"] = json!(t.thread);
                    }
                    Link::Retrying { attempt, .. } => {
                        v["state"] = json!("reconnecting");
                        v["attempt"] = json!(attempt);
                    }
                }
                (name.clone(), v)
            })
            .chain(
                self.dialing
                    .iter()
                    .filter(|(n, _)| !self.tunnels.contains_key(*n) && self.keeps_tunnel(f, n))
                    .map(|(n, (_, dest))| {
                        (
                            n.clone(),
                            json!({"dest": endpoint(dest), "role": Role::Dialer,
                                   "state": "connecting"}),
                        )
                    }),
            )
            .collect()
    }

    /// The services part of `GET /config`: local and remote.
    fn services_view(&self, f: &ConfigFilter) -> (Map<String, Value>, Map<String, Value>) {
        let local: Map<String, Value> = candidates(&self.local, f)
            .filter(|(name, _)| self.keeps_service(f, Side::Local, name))
            .map(|(name, s)| {
                let l = &s.listening;
                let listening = l
                    .socket
                    .borrow()
                    .as_ref()
                    .and_then(|l| l.local_addr().ok())
                    .map(|a| a.to_string());
                (
                    name.clone(),
                    json!({"addr": endpoint(&l.addr), "key": key(&s.key),
                           "cipher": cipher(&s.key),
                           "timeout": millis(&s.timeout), "listening": listening,
                           "connections": s.connections.in_use(),
                           "last_error": l.last_error}),
                )
            })
            .collect();
        let remote: Map<String, Value> = candidates(&self.remote, f)
            .filter(|(name, _)| self.keeps_service(f, Side::Remote, name))
            .map(|(name, s)| {
                (
                    name.clone(),
                    json!({"addr": endpoint(&s.addr), "key": key(&s.key),
                           "cipher": cipher(&s.key), "timeout": millis(&s.timeout)}),
                )
            })
            .collect();
        (local, remote)
    }

    pub(super) fn snapshot_config(&self, f: &ConfigFilter) -> Value {
        let tunnels = self.tunnels_view(f);
        let (local, remote) = self.services_view(f);
        let binds = |side: Side| -> Value {
            let kept: Map<String, Value> = self
                .binds
                .get(&side)
                .into_iter()
                .flat_map(|b| candidates(b, f))
                .filter(|(s, _)| self.keeps_service(f, side, s))
                .map(|(s, t)| (s.clone(), json!(t)))
                .collect();
            Value::Object(kept)
        };
        let accepted: Map<String, Value> = self
            .accepted
            .iter()
            .filter(|(name, _)| self.keeps_tunnel(f, name))
            .map(|(name, a)| {
                (
                    name.clone(),
                    json!({"declared": a.declared, "secret": a.secret.as_ref().map(|_| "***"),
                           "identity": a.pin.as_ref().map(fingerprint),
                           "connected": self.connected_tunnel(name).is_some(),
                           "last_seen": a.pin.map(|_| a.seen)}),
                )
            })
            .collect();
        json!({
            "tunnels": tunnels,
            "accepted": accepted,
            "services": {"local": local, "remote": remote},
            "bind": {"local": binds(Side::Local), "remote": binds(Side::Remote)},
            "connections": {},
            "security": {"tunnel_secret": self.access.secret.is_some(),
                         "identity": fingerprint(&self.identity.public()),
                         "accept": if self.access.known_only { "known" } else { "any" }},
            "limits": self.usage.to_json(self.accepted_count(), self.accepted.len()),
        })
    }
}

/// `GET /config`: the live configuration with the tunnels' counters and connections, all of it
/// or the part a [`ConfigFilter`] asks for.
#[derive(Message, Default)]
#[rtype(result = "Value")]
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
    type Result = ResponseActFuture<Self, Value>;

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
                let mut connections = Map::new();
                for (name, stats) in stats {
                    let Some(stats) = stats else { continue };
                    let TunnelStats {
                        connections: conns, ..
                    } = &stats;
                    for c in conns {
                        connections.insert(
                            format!("{name}/{}", c.stream),
                            json!({"tunnel": name, "stream": c.stream, "service": c.service,
                                   "side": c.side, "state": c.state,
                                   "bytes_sent": c.bytes_sent, "bytes_received": c.bytes_received,
                                   "window": c.window}),
                        );
                    }
                    if let Some(Value::Object(t)) = config["tunnels"].get_mut(&name) {
                        t.insert("peer".into(), json!(stats.peer));
                        t.insert("streams".into(), json!(stats.streams));
                        t.insert("streams_opened".into(), json!(stats.streams_opened));
                        t.insert("bytes_sent".into(), json!(stats.bytes_sent));
                        t.insert("bytes_received".into(), json!(stats.bytes_received));
                        t.insert("send_window".into(), json!(stats.send_window));
                        t.insert("queued_bytes".into(), json!(stats.queued_bytes));
                    }
                }
                if filter.connections {
                    config["connections"] = Value::Object(connections);
                } else if let Some(c) = config.as_object_mut() {
                    c.remove("connections");
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
