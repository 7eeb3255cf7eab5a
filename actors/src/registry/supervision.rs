//! Supervision: dialling, installing, re-dialling and retiring tunnels, starting and restarting
//! listeners, and what the Registry does when a tunnel or a listener stops.

use super::*;

impl Registry {
    /// Ends a tunnel entry's life: its connection closed (with `goodbye` if given), its re-dial
    /// cancelled.
    pub(super) fn retire(
        entry: TunnelEntry,
        goodbye: Option<(GoAway, String)>,
        ctx: &mut Context<Self>,
    ) {
        match entry.link {
            Link::Up(actor) => actor.do_send(CloseTunnel { goodbye }),
            Link::Retrying { task, .. } => {
                ctx.cancel_future(task);
            }
        }
    }

    /// An accepted tunnel's name is pinned to its dialer's identity (kept in the state file)
    /// and its last contact noted: journaled when the pin changes, or when the saved contact
    /// is an hour old.
    fn pin_dialer(
        &mut self,
        name: &str,
        identity: [u8; IDENTITY_LEN],
        peer_addr: Option<SocketAddr>,
        ctx: &mut Context<Self>,
    ) {
        let entry = self.accepted.entry(name.to_owned()).or_default();
        let now = unix_now();
        entry.seen = now;
        let stale = now.saturating_sub(entry.saved_seen) >= SEEN_SAVE_EVERY;
        let repinned = entry.pin != Some(identity);
        if repinned {
            if let Some(ip) = peer_addr.map(|a| a.ip()) {
                log_limited_for!(
                    info,
                    "tunnel-pinned",
                    ip,
                    "tunnel {}: pinned to the identity {} of its dialer",
                    Escaped(name),
                    fingerprint(&identity)
                );
            }
            entry.pin = Some(identity);
        }
        if repinned || stale {
            entry.saved_seen = now;
            self.save_in_background(&[Key::Accepted(name.to_owned())], ctx);
        }
    }

    /// The entry a new connection of tunnel `name` replaced goes, with a goodbye if it was up.
    fn replaced(
        name: &str,
        old: TunnelEntry,
        peer_addr: Option<SocketAddr>,
        ctx: &mut Context<Self>,
    ) {
        if matches!(old.link, Link::Up(_)) {
            let ip = peer_addr.map_or(IpAddr::from([0u8, 0, 0, 0]), |a| a.ip());
            log_limited_for!(
                info,
                "tunnel-replaced",
                ip,
                "tunnel {}: replaced by a new connection of the same dialer ({})",
                Escaped(name),
                peer_addr.map_or("?".to_owned(), |a| a.to_string())
            );
        }
        let goodbye = (
            GoAway::Replaced,
            "replaced by a newer connection".to_owned(),
        );
        Registry::retire(old, Some(goodbye), ctx);
    }

    /// Whether a dialled tunnel's acceptor identity is new to it (first contact, or a pin given
    /// by the API), said in the log.
    fn acceptor_pinned(&self, name: &str, identity: [u8; IDENTITY_LEN]) -> bool {
        let old = self.tunnels.get(name).and_then(|t| t.peer_pin);
        if old == Some(identity) {
            return false;
        }
        info!(
            "tunnel {name}: pinned to the identity {} of its acceptor",
            fingerprint(&identity)
        );
        true
    }

    pub(super) fn install_tunnel(
        &mut self,
        name: String,
        origin: Origin,
        sock: TcpStream,
        peer: Terms,
        keys: Option<SessionKeys>,
        ctx: &mut Context<Self>,
    ) {
        let peer_addr = sock.peer_addr().ok();
        let mut repinned = false;
        let (dest, role, dialled_on, secret, peer_pin) = match origin {
            Origin::Dialled {
                dest,
                attempt,
                secret,
                peer_identity,
            } => {
                repinned = self.acceptor_pinned(&name, peer_identity);
                let pin = Some(peer_identity);
                (Some(dest), Role::Dialer, attempt, secret, pin)
            }
            Origin::Accepted { identity } => {
                self.pin_dialer(&name, identity, peer_addr, ctx);
                (None, Role::Acceptor, 0, None, None)
            }
        };
        let generation = self.next_generation();
        let authenticated = match role {
            Role::Dialer => self.dial_secret(&secret).is_some(),
            Role::Acceptor => self.secret_for(&name).is_some(),
        };
        let sock = match sock.into_std() {
            Ok(s) => s,
            Err(e) => {
                warn!("tunnel {name}: cannot hand the socket to a data thread: {e}");
                return;
            }
        };
        let (registry, shared) = (ctx.address().recipient(), self.shared());
        // A tunnel and all its connections on one data thread, so a stream's bytes never cross
        // threads; each goes to the one carrying the fewest tunnels.
        let (data, thread) = self.next_data_thread().unzip();
        let link = TunnelLink {
            name: name.clone(),
            generation,
            role,
            sock,
            peer,
            authenticated,
            keys,
            thread,
        };
        let make = move |_: &mut Context<Tunnel>| Tunnel::new(link, registry, shared);
        let actor = match data {
            Some(data) => data.start(make),
            None => Tunnel::create(make),
        };
        if let (Some(dest), Some(pin)) = (dest, peer_pin) {
            let threads = (1..self.settings.lanes)
                .map(|lane| self.lane_thread(thread, lane))
                .collect();
            self.dial_lanes(&name, dest, &secret, pin, (actor.clone(), threads), ctx);
        }
        let old = self.tunnels.insert(
            name.clone(),
            TunnelEntry {
                dest,
                role,
                generation,
                link: Link::Up(actor),
                last_error: None,
                dialled_on,
                thread,
                lanes: 0,
                secret,
                peer_pin,
            },
        );
        let log_ip = peer_addr.map_or(IpAddr::from([0u8, 0, 0, 0]), |a| a.ip());
        if let Some(old) = old {
            Registry::replaced(&name, old, peer_addr, ctx);
        }
        if repinned {
            // A pin taken on a re-dial (a tunnel restored from an older state file) is kept too.
            self.save_in_background(&[Key::Tunnel(name.clone())], ctx);
        }
        let role = match role {
            Role::Dialer => "dialled",
            Role::Acceptor => "accepted",
        };
        log_limited_for!(
            info,
            "tunnel-up",
            log_ip,
            "tunnel {} up ({role})",
            Escaped(&name)
        );
        metrics().set_tunnel_connected(&name, true);
        self.reroute(&[Key::Tunnel(name)]);
    }

    /// Dials tunnel `name` to `dest`, within the dial timeout.
    pub(super) fn dial(
        &self,
        name: &str,
        dest: SocketAddr,
        secret: &Option<Secret>,
        pin: Option<[u8; IDENTITY_LEN]>,
    ) -> impl std::future::Future<Output = Result<(TcpStream, Established), DialError>> {
        self.dial_plan(name, dest, secret, pin, false).dial()
    }

    /// Dials the other lanes of dialled tunnel `name` (`[tunnel] lanes`), one after another,
    /// each handed to the tunnel's `actor` as it joins, with the data thread it runs on (lane
    /// k's is `threads[k - 1]`). A lane that fails in a way that may
    /// pass (a timeout, a busy acceptor) is tried again with back-off, a few times, while the
    /// tunnel lives; otherwise the tunnel stays on the lanes it has (an older acceptor refuses
    /// lanes).
    fn dial_lanes(
        &self,
        name: &str,
        dest: SocketAddr,
        secret: &Option<Secret>,
        pin: [u8; IDENTITY_LEN],
        (actor, threads): (Addr<Tunnel>, Vec<Option<DataThreadHandle>>),
        ctx: &mut Context<Self>,
    ) {
        /// Tries of one lane before the tunnel goes on without it.
        const LANE_TRIES: u32 = 5;
        let lanes = self.settings.lanes;
        if lanes < 2 {
            return;
        }
        let plan = self.dial_plan(name, dest, secret, Some(pin), true);
        let dialling = async move {
            let mut lane = 1;
            let mut tries = 0;
            // A tunnel gone meanwhile takes no more lanes (its successor dials its own).
            while lane < lanes && actor.connected() {
                tries += 1;
                let failed = match plan.clone().dial().await {
                    Ok((sock, done)) => match sock.into_std() {
                        Ok(sock) => {
                            actor.do_send(crate::tunnel::JoinLane {
                                sock,
                                keys: done.keys,
                                thread: threads.get(lane - 1).cloned().flatten(),
                            });
                            lane += 1;
                            tries = 0;
                            continue;
                        }
                        Err(e) => (e.to_string(), false),
                    },
                    Err(e) => (e.to_string(), e.lane_may_retry()),
                };
                let (e, retry) = failed;
                if !retry || tries >= LANE_TRIES {
                    warn!(
                        "tunnel {}: lane {lane} not joined: {e}; its streams go on {lane} lane(s)",
                        plan.name
                    );
                    break;
                }
                let delay = backoff(tries);
                warn!(
                    "tunnel {}: lane {lane} not joined: {e}; next try in {} ms",
                    plan.name,
                    delay.as_millis()
                );
                tokio::time::sleep(delay).await;
            }
        };
        ctx.spawn(dialling.into_actor(self));
    }

    /// What a dial of tunnel `name` needs, taken off the Registry so it can be repeated.
    fn dial_plan(
        &self,
        name: &str,
        dest: SocketAddr,
        secret: &Option<Secret>,
        pin: Option<[u8; IDENTITY_LEN]>,
        lane: bool,
    ) -> DialPlan {
        DialPlan {
            name: name.to_owned(),
            dest,
            terms: self.settings.terms(),
            identity: self.identity.clone(),
            secret: self.dial_secret(secret),
            transport: Transport {
                lane,
                ..Transport::here(self.settings.encrypt)
            },
            pin,
            limit: self.settings.dial_timeout,
        }
    }

    /// Schedules re-dial attempt `attempt` of a dialled tunnel after `delay`.
    pub(super) fn retry_tunnel(
        &mut self,
        name: &str,
        attempt: u32,
        delay: Duration,
        ctx: &mut Context<Self>,
    ) {
        let Some(t) = self.tunnels.get_mut(name) else {
            return;
        };
        let generation = t.generation;
        let owned = name.to_owned();
        metrics().set_tunnel_connected(name, false);
        metrics().count_redial(name);
        let task = ctx.run_later(delay, move |act, ctx| act.redial(owned, generation, ctx));
        if let Link::Retrying { task: old, .. } =
            std::mem::replace(&mut t.link, Link::Retrying { attempt, task })
        {
            ctx.cancel_future(old);
        }
    }

    pub(super) fn redial(&mut self, name: String, generation: u64, ctx: &mut Context<Self>) {
        let Some(t) = self.tunnels.get(&name) else {
            return;
        };
        let (Some(dest), Link::Retrying { attempt, .. }, true) =
            (t.dest, &t.link, t.generation == generation)
        else {
            return;
        };
        let attempt = *attempt;
        let secret = t.secret.clone();
        let pin = t.peer_pin;
        let entry = name.clone();
        let dial = self
            .dial(&name, dest, &secret, pin)
            .into_actor(self)
        .map(move |result, act, ctx| {
            let Some(t) = act.tunnels.get_mut(&name) else {
                return;
            };
            if t.generation != generation || act.shutting_down {
                return;
            }
            match result {
                Ok((sock, done)) => {
                    info!("tunnel {name}: re-dial attempt {attempt} to {dest} succeeded");
                    let origin = Origin::Dialled {
                        dest,
                        attempt,
                        secret,
                        peer_identity: done.peer_identity,
                    };
                    act.install_tunnel(name, origin, sock, done.terms, done.keys, ctx);
                }
                Err(e) => {
                    let e = e.to_string();
                    let delay = backoff(attempt + 1);
                    warn!(
                        "tunnel {name}: re-dial attempt {attempt} to {dest} failed: {e}; next in {} ms",
                        delay.as_millis()
                    );
                    t.last_error = Some(e);
                    act.retry_tunnel(&name, attempt + 1, delay, ctx);
                }
            }
        });
        let task = ctx.spawn(dial);
        if let Some(t) = self.tunnels.get_mut(&entry) {
            t.link = Link::Retrying { attempt, task };
        }
    }

    pub(super) fn listening_mut(&mut self, accepts: &Accepts) -> Option<&mut Listening> {
        match accepts {
            Accepts::Service(name) => self.local.get_mut(name).map(|s| &mut s.listening),
            Accepts::Tunnels => self.tunnel_port.as_mut(),
        }
    }

    /// Starts a listener actor on `accepts`'s socket, binding the socket first if it has none. A
    /// bind that fails is retried with back-off.
    pub(super) fn start_listener(&mut self, accepts: Accepts, ctx: &mut Context<Self>) {
        let id = self.next_generation();
        let (registry, shared) = (self.upstream(ctx), self.shared());
        let gate = match &accepts {
            // A UDP service has no TCP listener to start.
            Accepts::Service(name) if self.local.get(name).is_some_and(|s| s.udp.is_some()) => {
                return
            }
            Accepts::Service(name) => self.local.get(name).map(|s| s.connections.clone()),
            Accepts::Tunnels => None,
        };
        let Some(l) = self.listening_mut(&accepts) else {
            return;
        };
        l.retry = None;
        if l.socket.borrow().is_none() {
            match listener::bind(l.addr) {
                Ok(socket) => *l.socket.borrow_mut() = Some(socket),
                Err(e) => {
                    l.restarts += 1;
                    let delay = backoff(l.restarts);
                    error!(
                        "{accepts}: cannot listen on {}: {e}; retrying in {} ms",
                        l.addr,
                        delay.as_millis()
                    );
                    l.last_error = Some(format!("cannot listen on {}: {e}", l.addr));
                    let again = accepts.clone();
                    l.retry =
                        Some(ctx.run_later(delay, move |act, ctx| act.start_listener(again, ctx)));
                    return;
                }
            }
        }
        l.id = id;
        l.started = Instant::now();
        l.last_error = None;
        l.actor =
            Some(Listener::new(accepts, id, registry, l.socket.clone(), shared, gate).start());
    }
}

impl Handler<TunnelDown> for Registry {
    type Result = ();

    fn handle(&mut self, msg: TunnelDown, ctx: &mut Self::Context) {
        let Some(t) = self.tunnels.get_mut(&msg.name) else {
            return;
        };
        if t.generation != msg.generation || !matches!(t.link, Link::Up(_)) {
            return;
        }
        let name = msg.name.clone();
        self.tunnel_down(msg, ctx);
        self.reroute(&[Key::Tunnel(name)]);
    }
}

impl Registry {
    pub(super) fn tunnel_down(&mut self, msg: TunnelDown, ctx: &mut Context<Self>) {
        let Some(t) = self.tunnels.get_mut(&msg.name) else {
            return;
        };
        metrics().set_tunnel_connected(&msg.name, false);
        match (t.role, msg.goaway) {
            (Role::Dialer, Some(GoAway::Deleted)) => {
                log_limited_for!(
                    info,
                    "tunnel-down",
                    msg.peer_ip,
                    "tunnel {} removed: {}",
                    msg.name,
                    msg.reason
                );
                self.tunnels.remove(&msg.name);
                metrics().forget_tunnel(&msg.name);
                self.save_in_background(&[Key::Tunnel(msg.name.clone())], ctx);
            }
            (Role::Dialer, _) if !self.shutting_down => {
                // Replaced by another connection of the name soon after it came up: another
                // dialer claims the name too. Going on with the back-off keeps the two from
                // knocking each other off in a loop.
                let flapping = msg.goaway == Some(GoAway::Replaced) && msg.lasted < STABLE_AFTER;
                let attempt = if msg.heard && !flapping {
                    1
                } else {
                    t.dialled_on + 1
                };
                let delay = backoff(attempt);
                log_limited_for!(
                    warn,
                    "tunnel-down",
                    msg.peer_ip,
                    "tunnel {} is down: {}; re-dialing in {} ms",
                    msg.name,
                    msg.reason,
                    delay.as_millis()
                );
                t.last_error = Some(msg.reason);
                self.retry_tunnel(&msg.name, attempt, delay, ctx);
            }
            (Role::Dialer, _) => info!("tunnel {} closed: {}", msg.name, msg.reason),
            (Role::Acceptor, goaway) => {
                log_limited_for!(
                    info,
                    "tunnel-down",
                    msg.peer_ip,
                    "tunnel {} removed: {}",
                    Escaped(&msg.name),
                    msg.reason
                );
                self.tunnels.remove(&msg.name);
                if let Some(a) = self.accepted.get_mut(&msg.name) {
                    // Its last contact: the pin's TTL runs from here.
                    a.seen = unix_now();
                }
                if goaway == Some(GoAway::Deleted) {
                    self.name_freed(&msg.name, ctx);
                }
            }
        }
    }
}

impl Handler<ListenerDown> for Registry {
    type Result = ();

    fn handle(&mut self, msg: ListenerDown, ctx: &mut Self::Context) {
        if self.shutting_down {
            return;
        }
        let Some(l) = self.listening_mut(&msg.accepts) else {
            return;
        };
        if l.id != msg.id || l.retry.is_some() {
            return;
        }
        l.actor = None;
        if l.started.elapsed() >= HEALTHY_AFTER {
            l.restarts = 0;
        }
        l.restarts += 1;
        let delay = backoff(l.restarts);
        let why = if msg.panicked { "panicked" } else { "stopped" };
        error!(
            "{}: the listener {why}; restarting it in {} ms",
            msg.accepts,
            delay.as_millis()
        );
        l.last_error = Some(format!("the listener {why}"));
        let accepts = msg.accepts;
        l.retry = Some(ctx.run_later(delay, move |act, ctx| act.start_listener(accepts, ctx)));
    }
}

/// One dial of a tunnel, repeatable off the Registry: where, as whom, on what terms.
#[derive(Clone)]
struct DialPlan {
    /// The tunnel's name, claimed in PROOF.
    name: String,
    /// The acceptor's tunnel port.
    dest: SocketAddr,
    /// What this node grants the acceptor.
    terms: Terms,
    /// This node's identity, proved in PROOF.
    identity: Arc<Identity>,
    /// The secret proved, if any.
    secret: Option<Secret>,
    /// Sealing, AES, and whether this is another lane of a connected tunnel.
    transport: Transport,
    /// The acceptor's identity this tunnel is pinned to, if known.
    pin: Option<[u8; IDENTITY_LEN]>,
    /// The whole dial and handshake within this.
    limit: Duration,
}

impl DialPlan {
    async fn dial(self) -> Result<(TcpStream, Established), DialError> {
        let dial = handshake::dial(
            self.dest,
            &self.name,
            self.terms,
            self.identity,
            self.secret,
            self.transport,
            self.pin,
        );
        match tokio::time::timeout(self.limit, dial).await {
            Ok(Ok(done)) => Ok(done),
            Ok(Err(e)) => Err(DialError::Handshake(e)),
            Err(_) => Err(DialError::Timeout(self.limit)),
        }
    }
}
