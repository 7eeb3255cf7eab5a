//! The admin commands: add and delete tunnels, services and binds (each validated, applied, routed
//! and journaled).

use super::*;

impl Registry {
    /// Whether `dest` is this node's own tunnel port, however it is spelt: an IPv4-mapped
    /// address is its IPv4 one, an unspecified address is loopback (where the kernel sends it),
    /// and a port bound to every address is reached by loopback or any of this host's interface
    /// addresses. (A peer that still turns out to be this node, through a relay or a NAT, shows
    /// this node's own identity in its HELLO and is refused there.)
    pub(super) fn is_own_port(&self, dest: SocketAddr) -> bool {
        let own = self.port_addr;
        if dest.port() != own.port() {
            return false;
        }
        let reached = match admission::source(dest.ip()) {
            IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::from([127, 0, 0, 1]),
            IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        let own_ip = admission::source(own.ip());
        if own_ip.is_unspecified() {
            reached.is_loopback() || crate::io::interface_addresses().contains(&reached)
        } else {
            reached == own_ip
        }
    }

    /// The listening socket for a local service (new, or moving). The new address is bound before
    /// the old one is let go, so a refusal keeps the old; only when the service's own old listener
    /// is what holds the port (0.0.0.0:P to 127.0.0.1:P, say) is it released first, and restored
    /// if the new address still cannot be bound.
    pub(super) fn rebind(&mut self, spec: &ServiceSpec) -> Result<ListenSocket, AdminError> {
        let refused = |e: std::io::Error| {
            let msg = format!("service {}: cannot listen on {}: {e}", spec.name, spec.addr);
            warn!("{msg}");
            if e.kind() == std::io::ErrorKind::AddrNotAvailable {
                AdminError::Invalid(msg)
            } else {
                AdminError::Conflict(msg)
            }
        };
        let err = match listener::bind(spec.addr) {
            Ok(socket) => return Ok(socket),
            Err(e) => e,
        };
        let Some(old) = self.local.get(&spec.name).map(|s| &s.listening) else {
            return Err(refused(err));
        };
        // The port the old listener holds: the one it asked for, or the one it got for port 0.
        let held = old
            .socket
            .borrow()
            .as_ref()
            .map_or(old.addr.port(), |s| s.local_addr().port());
        if err.kind() != std::io::ErrorKind::AddrInUse || held != spec.addr.port() {
            return Err(refused(err));
        }
        let released = old.socket.borrow_mut().take();
        drop(released);
        match listener::bind(spec.addr) {
            Ok(socket) => Ok(socket),
            Err(e) => {
                match listener::bind(old.addr) {
                    Ok(back) => {
                        *old.socket.borrow_mut() = Some(back);
                        if let Some(actor) = &old.actor {
                            actor.do_send(SocketReplaced);
                        }
                    }
                    Err(e) => warn!(
                        "service {}: lost its listener on {} while moving: {e}",
                        spec.name, old.addr
                    ),
                }
                Err(refused(e))
            }
        }
    }
}

/// `POST /tunnel`: as a dialer, dial `dest` and register the tunnel as `name` once the
/// handshake is done; as an acceptor, declare a name peers may claim (with its own secret).
#[derive(Message)]
#[rtype(result = "Result<(), AdminError>")]
pub struct AddTunnel {
    /// The tunnel's name: what binds name and what the peer learns.
    pub name: String,
    /// Dialer (dials `dest`) or acceptor (declares a name a peer may claim).
    pub role: Role,
    /// Required for a dialer, refused for an acceptor (the API checks).
    pub dest: Option<SocketAddr>,
    /// The tunnel's own secret, overriding the node's.
    pub secret: Option<String>,
    /// The acceptor's identity to require (`"peer_identity"`), instead of pinning whatever
    /// identity answers first; a new one replaces the pin.
    pub peer_identity: Option<[u8; IDENTITY_LEN]>,
}

impl Registry {
    pub(super) fn declare_accepted(
        &mut self,
        name: String,
        secret: Option<String>,
    ) -> Result<(), AdminError> {
        if matches!(self.tunnels.get(&name), Some(t) if t.role == Role::Dialer) {
            return Err(AdminError::Conflict(format!(
                "this node dials a tunnel named {name} itself; delete it first"
            )));
        }
        let entry = self.accepted.entry(name.clone()).or_default();
        entry.declared = true;
        entry.secret = secret.as_deref().map(Secret::new);
        info!(
            "tunnel {name}: accepted from peers{}",
            if entry.secret.is_some() {
                ", with its own secret"
            } else {
                ""
            }
        );
        Ok(())
    }
}

impl Handler<AddTunnel> for Registry {
    type Result = ResponseActFuture<Self, Result<(), AdminError>>;

    fn handle(&mut self, msg: AddTunnel, _ctx: &mut Self::Context) -> Self::Result {
        let dest = match (msg.role, msg.dest) {
            (Role::Acceptor, _) => {
                let keys = [Key::Accepted(msg.name.clone())];
                let change = self.declare_accepted(msg.name, msg.secret);
                return Box::pin(self.commit(change, &keys).into_actor(self));
            }
            (Role::Dialer, Some(dest)) => dest,
            (Role::Dialer, None) => {
                let e = AdminError::Invalid("missing field \"dest\"".to_owned());
                return Box::pin(fut::ready(Err(e)));
            }
        };
        let refusal = if self.is_own_port(dest) {
            Some(AdminError::Invalid(format!(
                "tunnel {}: {dest} is this node's own tunnel port",
                msg.name
            )))
        } else if self.accepted.get(&msg.name).is_some_and(|a| a.declared) {
            Some(AdminError::Conflict(format!(
                "tunnel {}: the name is declared as accepted on this node; delete it first",
                msg.name
            )))
        } else {
            None
        };
        if let Some(e) = refusal {
            return Box::pin(fut::ready(Err(e)));
        }
        let secret = msg.secret.as_deref().map(Secret::new);
        // The pin to require: the one given, else the one this tunnel holds.
        let existing = self.tunnels.get(&msg.name).and_then(|t| t.peer_pin);
        let pin = msg.peer_identity.or(existing);
        if let Some(t) = self.tunnels.get(&msg.name) {
            if matches!(t.link, Link::Up(_))
                && t.dest == Some(dest)
                && t.secret == secret
                && pin == t.peer_pin
            {
                // The same body again: the live tunnel and its connections stay as they are.
                info!(
                    "tunnel {}: unchanged (already connected to {dest})",
                    msg.name
                );
                return Box::pin(fut::ready(Ok(())));
            }
        }
        let generation = self.next_generation();
        self.dialing.insert(msg.name.clone(), (generation, dest));
        info!("tunnel {}: dialing {dest}", msg.name);
        let name = msg.name;
        Box::pin(
            self.dial(&name, dest, &secret, pin)
                .into_actor(self)
                .map(move |result, act, ctx| {
                    let dial = AdminDial {
                        name,
                        dest,
                        secret,
                        generation,
                        pin,
                    };
                    act.admin_dial_done(dial, result, ctx)
                })
                .then(|answer, act, _ctx| answer.into_actor(act)),
        )
    }
}

/// A dial the admin API asked for, while it is under way.
struct AdminDial {
    /// The tunnel's name.
    name: String,
    /// Where it dials.
    dest: SocketAddr,
    /// Its own secret, if any.
    secret: Option<Secret>,
    /// The request's number in `dialing`: a later request for the name supersedes this one.
    generation: u64,
    /// The acceptor identity required, if any.
    pin: Option<[u8; IDENTITY_LEN]>,
}

impl Registry {
    /// The answer to `POST /tunnel` once its dial is done, after what it changed is journaled.
    fn admin_dial_done(
        &mut self,
        dial: AdminDial,
        result: Result<(TcpStream, Established), DialError>,
        ctx: &mut Context<Self>,
    ) -> Saved {
        let AdminDial {
            name,
            dest,
            secret,
            generation,
            pin,
        } = dial;
        if self.dialing.get(&name).map(|d| d.0) != Some(generation) {
            return answer_now(Err(AdminError::Conflict(format!(
                "tunnel {name}: superseded by a later request while dialing"
            ))));
        }
        self.dialing.remove(&name);
        let e = match result {
            Ok((sock, done)) => {
                let keys = [Key::Tunnel(name.clone())];
                let origin = Origin::Dialled {
                    dest,
                    attempt: 0,
                    secret,
                    peer_identity: done.peer_identity,
                };
                self.install_tunnel(name, origin, sock, done.terms, done.keys, ctx);
                return self.answer_once_saved(Ok(()), &keys);
            }
            Err(e) => e,
        };
        warn!("tunnel {name}: cannot open to {dest}: {e}");
        if e.reached_itself() {
            return answer_now(Err(AdminError::Invalid(format!(
                "tunnel {name}: {dest} is this node itself (it answered with this node's own \
                 identity)"
            ))));
        }
        if !e.refused_by_peer() {
            return answer_now(Err(AdminError::Unreachable(format!(
                "tunnel {name}: cannot reach {dest}: {e}"
            ))));
        }
        self.keep_refused(
            AdminDial {
                name,
                dest,
                secret,
                generation,
                pin,
            },
            e,
            ctx,
        )
    }

    /// The peer answered and refused: the tunnel is kept and re-dialled on the back-off, as its
    /// operator may be fixing the secret. A live tunnel of the name stays as it is.
    fn keep_refused(&mut self, dial: AdminDial, e: DialError, ctx: &mut Context<Self>) -> Saved {
        let AdminDial {
            name,
            dest,
            secret,
            pin,
            ..
        } = dial;
        let live = matches!(self.tunnels.get(&name), Some(t) if matches!(t.link, Link::Up(_)));
        if live {
            return answer_now(Err(AdminError::Unreachable(format!(
                "tunnel {name}: {dest} refused it: {e}; the live tunnel of that name stays"
            ))));
        }
        let generation = self.next_generation();
        let old = self.tunnels.insert(
            name.clone(),
            TunnelEntry {
                dest: Some(dest),
                role: Role::Dialer,
                generation,
                link: Link::Retrying {
                    attempt: 1,
                    task: SpawnHandle::default(),
                },
                last_error: Some(e.to_string()),
                dialled_on: 0,
                thread: None,
                lanes: 0,
                secret,
                peer_pin: pin,
            },
        );
        if let Some(old) = old {
            Registry::retire(old, None, ctx);
        }
        self.retry_tunnel(&name, 1, backoff(1), ctx);
        let answer = Err(AdminError::Unreachable(format!(
            "tunnel {name}: {dest} refused it: {e}; kept: re-dialling with back-off until it is \
             deleted"
        )));
        self.answer_once_saved(answer, &[Key::Tunnel(name)])
    }

    /// `answer`, once what the change touched (`keys`) is journaled (a failed write is the answer
    /// then).
    fn answer_once_saved(&self, answer: Result<(), AdminError>, keys: &[Key]) -> Saved {
        let saved = self.persist(keys);
        Box::pin(async move {
            saved.await?;
            answer
        })
    }
}

/// An answer with nothing to journal.
fn answer_now(answer: Result<(), AdminError>) -> Saved {
    Box::pin(async move { answer })
}

/// `DELETE /tunnel`: close it on both ends, with every connection it carries; an accepted name
/// is forgotten (its declaration and its pin), so a new dialer may claim it.
#[derive(Message)]
#[rtype(result = "Result<(), AdminError>")]
pub struct DeleteTunnel {
    /// The tunnel (dialled or accepted) or declared name to delete.
    pub name: String,
}

impl Handler<DeleteTunnel> for Registry {
    type Result = ResponseFuture<Result<(), AdminError>>;

    fn handle(&mut self, msg: DeleteTunnel, ctx: &mut Self::Context) -> Self::Result {
        let dialing = self.dialing.remove(&msg.name).is_some();
        let forgotten = self.accepted.remove(&msg.name).is_some();
        metrics().forget_tunnel(&msg.name);
        let change = match self.tunnels.remove(&msg.name) {
            Some(t) => {
                Registry::retire(t, Some((GoAway::Deleted, "deleted".to_owned())), ctx);
                info!("tunnel {}: deleted", msg.name);
                Ok(())
            }
            None if dialing => {
                info!("tunnel {}: dial cancelled", msg.name);
                Ok(())
            }
            None if forgotten => {
                info!("tunnel {}: accepted name forgotten", msg.name);
                Ok(())
            }
            None => Err(AdminError::NotFound(format!(
                "no tunnel named {}",
                msg.name
            ))),
        };
        self.commit(
            change,
            &[
                Key::Tunnel(msg.name.clone()),
                Key::Accepted(msg.name.clone()),
            ],
        )
    }
}

impl Registry {
    /// A local service posted again on the address it has, with the same protocol: its key,
    /// timeout and options change in place (its listener and connections go on). Whether it was.
    pub(super) fn update_in_place(
        &mut self,
        spec: &ServiceSpec,
        key: &Option<ServiceKey>,
        pace: &Option<Arc<Pace>>,
        protocol: Protocol,
    ) -> bool {
        let Some(s) = self.local.get_mut(&spec.name) else {
            return false;
        };
        let same_protocol = s.udp.is_some() == (protocol == Protocol::Udp);
        if s.listening.addr != spec.addr || !same_protocol {
            return false;
        }
        s.key = key.clone();
        s.timeout = spec.timeout;
        s.options = spec.options.clone();
        s.pace = pace.clone();
        info!(
            "service {} (local, {protocol}) on {}: updated",
            spec.name, spec.addr
        );
        true
    }
}

/// `POST /service`: create or replace a local (listening) or remote (target) service.
#[derive(Message)]
#[rtype(result = "Result<(), AdminError>")]
pub struct AddService(pub ServiceSpec);

/// An idle timeout shorter than this is said in a warning: likely seconds typed as milliseconds.
const SHORT_TIMEOUT: Duration = Duration::from_secs(1);

impl Registry {
    /// Creates or replaces a service (`POST /service`, the path API, `PUT /config`).
    pub(super) fn add_service(
        &mut self,
        spec: ServiceSpec,
        ctx: &mut Context<Self>,
    ) -> Result<(), AdminError> {
        let (name, side, timeout) = (spec.name.clone(), spec.side, spec.timeout);
        self.put_service(spec, ctx)?;
        if let Some(t) = timeout.filter(|t| *t < SHORT_TIMEOUT) {
            // Seconds typed where milliseconds are meant: said before connections die of it.
            log_limited!(
                warn,
                "short-timeout",
                "service {name} ({side}): idle timeout {} ms: its connections are reset after \
                 {} ms without traffic (the timeout is in milliseconds: 30000 is 30 s)",
                t.as_millis(),
                t.as_millis()
            );
        }
        Ok(())
    }

    fn put_service(
        &mut self,
        spec: ServiceSpec,
        ctx: &mut Context<Self>,
    ) -> Result<(), AdminError> {
        let cipher = spec.cipher.unwrap_or(CipherKind::Rc4);
        let key = spec.key.as_deref().map(|k| ServiceKey::new(k, cipher));
        match spec.side {
            Side::Remote => {
                let addrs: Vec<SocketAddr> = std::iter::once(spec.addr)
                    .chain(spec.more_addrs.iter().copied())
                    .collect();
                let service = self.remote_service(&spec.name, &addrs, key, spec.options, ctx);
                let replaced = self.remote.insert(
                    spec.name.clone(),
                    RemoteService {
                        timeout: spec.timeout,
                        ..service
                    },
                );
                if let Some(old) = &replaced {
                    let gone = old.backends.addrs().filter(|a| !addrs.contains(a));
                    metrics().forget_backends(&spec.name, gone);
                }
                let shown: Vec<String> = addrs.iter().map(ToString::to_string).collect();
                info!(
                    "service {} (remote) -> {}{}",
                    spec.name,
                    shown.join(", "),
                    if replaced.is_some() { ", replaced" } else { "" }
                );
            }
            Side::Local => {
                let pace = health::pace(&spec.name, Side::Local, &spec.options);
                if spec.options.protocol == Protocol::Udp {
                    return self.add_udp_service(spec, key, pace, ctx);
                }
                if self.update_in_place(&spec, &key, &pace, Protocol::Tcp) {
                    return Ok(());
                }
                let socket = self.rebind(&spec)?;
                // Port 0 asks for any free port: the log says the one bound.
                let bound = socket.local_addr();
                // Connections already carried keep counting against the service's limit.
                let connections = self.kept_gauge(&spec.name);
                let old = self.local.insert(
                    spec.name.clone(),
                    LocalService {
                        key,
                        timeout: spec.timeout,
                        listening: Listening::new(spec.addr, Some(socket)),
                        connections,
                        options: spec.options,
                        pace,
                        udp: None,
                        datagrams: health::datagrams(&spec.name, Side::Local),
                    },
                );
                if let Some(old) = old {
                    info!(
                        "service {} (local): stopped listening on {}",
                        spec.name, old.listening.addr
                    );
                    old.close(ctx);
                }
                self.start_listener(Accepts::Service(spec.name.clone()), ctx);
                info!("service {} (local): listening on {bound}", spec.name);
            }
        }
        Ok(())
    }
}

impl Handler<AddService> for Registry {
    type Result = ResponseFuture<Result<(), AdminError>>;

    fn handle(&mut self, AddService(spec): AddService, ctx: &mut Self::Context) -> Self::Result {
        let keys = [Key::Service(spec.side, spec.name.clone())];
        let (name, side) = (spec.name.clone(), spec.side);
        let change = self.add_service(spec, ctx);
        if change.is_ok() {
            metrics().configure_service(&name, side);
        }
        self.commit(change, &keys)
    }
}

/// `DELETE /service`: stop it and close its connections. Its binds go with it.
#[derive(Message)]
#[rtype(result = "Result<(), AdminError>")]
pub struct DeleteService {
    /// The service to delete.
    pub name: String,
    /// Which of the two services of that name: local or remote.
    pub side: Side,
}

impl Handler<DeleteService> for Registry {
    type Result = ResponseFuture<Result<(), AdminError>>;

    fn handle(&mut self, msg: DeleteService, ctx: &mut Self::Context) -> Self::Result {
        if !self.remove_service(msg.side, &msg.name, ctx) {
            return self.commit(
                Err(AdminError::NotFound(format!(
                    "no {} service named {}",
                    msg.side, msg.name
                ))),
                &[],
            );
        }
        self.commit(
            Ok(()),
            &[
                Key::Service(msg.side, msg.name.clone()),
                Key::Bind(msg.side, msg.name.clone()),
            ],
        )
    }
}

/// `POST /bind` and `DELETE /bind`.
#[derive(Message)]
#[rtype(result = "Result<(), AdminError>")]
pub struct SetBind {
    /// The tunnel the service is carried over.
    pub tunnel: String,
    /// The service carried.
    pub service: String,
    /// Which of the two services of that name: local or remote.
    pub side: Side,
    /// `true` to bind (`POST`), `false` to unbind (`DELETE`).
    pub bound: bool,
}

impl Registry {
    pub(super) fn set_bind(&mut self, msg: SetBind) -> Result<(), AdminError> {
        let exists = match msg.side {
            Side::Local => self.local.contains_key(&msg.service),
            Side::Remote => self.remote.contains_key(&msg.service),
        };
        if msg.bound {
            if !exists {
                return Err(AdminError::NotFound(format!(
                    "no {} service named {}",
                    msg.side, msg.service
                )));
            }
            self.binds(msg.side)
                .insert(msg.service.clone(), msg.tunnel.clone());
            info!(
                "bind: {} service {} -> tunnel {}",
                msg.side, msg.service, msg.tunnel
            );
            return Ok(());
        }
        let binds = self.binds(msg.side);
        if binds.get(&msg.service) != Some(&msg.tunnel) {
            return Err(AdminError::NotFound(format!(
                "{} service {} is not bound to tunnel {}",
                msg.side, msg.service, msg.tunnel
            )));
        }
        binds.remove(&msg.service);
        info!(
            "unbind: {} service {} from tunnel {}",
            msg.side, msg.service, msg.tunnel
        );
        Ok(())
    }
}

impl Handler<SetBind> for Registry {
    type Result = ResponseFuture<Result<(), AdminError>>;

    fn handle(&mut self, msg: SetBind, _ctx: &mut Self::Context) -> Self::Result {
        let keys = [Key::Bind(msg.side, msg.service.clone())];
        let change = self.set_bind(msg);
        self.commit(change, &keys)
    }
}
