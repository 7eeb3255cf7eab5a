//! Tunnel-port admission: which secret a dialer must prove, whether it may have a name (pins, the
//! name table and its rate per source, places kept for expected dialers), and the tunnel handed
//! over once the handshake is done.

use super::*;

impl Handler<TunnelSecret> for Registry {
    type Result = Option<Secret>;

    fn handle(&mut self, msg: TunnelSecret, _ctx: &mut Self::Context) -> Self::Result {
        self.secret_for(&msg.name)
    }
}

/// What [`Registry::may_accept`] found about the name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum NameStatus {
    /// Declared here, or pinned (to this dialer, or a secret let it take the name over).
    Known,
    /// New to this node: a pin is to be made, within the name table and the source's rate.
    New,
}

impl Registry {
    pub(super) fn may_accept(
        &self,
        name: &str,
        identity: &[u8; IDENTITY_LEN],
        proven: bool,
    ) -> Result<NameStatus, TunnelRefusal> {
        if self.shutting_down {
            return Err(TunnelRefusal::same(
                RefuseCode::ShuttingDown,
                "the node is shutting down".to_owned(),
            ));
        }
        if *identity == self.identity.public() {
            return Err(TunnelRefusal::same(
                RefuseCode::OwnPort,
                "the dialer is this node itself (its own identity)".to_owned(),
            ));
        }
        let shown = Escaped(name);
        let live = self.connected_tunnel(name).is_some();
        if matches!(self.tunnels.get(name), Some(t) if t.role == Role::Dialer) {
            return Err(TunnelRefusal::told(
                RefuseCode::NameHeld,
                proven,
                "this tunnel name is not available here; pick another",
                format!("this node dials a tunnel named {shown} itself; pick another name"),
            ));
        }
        let known = self.accepted.get(name);
        if self.access.known_only && !known.is_some_and(|a| a.declared) {
            return Err(TunnelRefusal::same(
                RefuseCode::UnknownName,
                format!("tunnel name {shown} is not declared on this node"),
            ));
        }
        if let Some(pin) = known.and_then(|a| a.pin) {
            if pin != *identity && (live || !proven) {
                return Err(TunnelRefusal::told(
                    RefuseCode::NameHeld,
                    proven,
                    "this tunnel name is held by another dialer; pick another",
                    format!(
                        "tunnel name {shown} is held by another dialer (identity {}){}",
                        fingerprint(&pin),
                        if live { ", connected now" } else { "" }
                    ),
                ));
            }
        }
        // Expected dialers (a declared name, or the identity a name is pinned to) may take the
        // places strangers' new names may not.
        let expected = known.is_some_and(|a| a.declared || a.pin == Some(*identity));
        let l = &self.settings.limits;
        let room = if expected {
            l.max_tunnels
        } else {
            l.max_tunnels.saturating_sub(l.reserved_tunnels)
        };
        if !live && self.accepted_count() >= room {
            self.usage.refuse_tunnel();
            return Err(TunnelRefusal::told(
                RefuseCode::Busy,
                proven,
                "this node accepts no more tunnels now",
                format!(
                    "this node accepts at most {} tunnels ({} of them kept for expected dialers)",
                    l.max_tunnels, l.reserved_tunnels
                ),
            ));
        }
        Ok(if known.is_some() {
            NameStatus::Known
        } else {
            NameStatus::New
        })
    }

    /// Whether a pin may go to make room, or at its TTL: no live tunnel, not declared, no bind
    /// naming it (binds are the operator's word that the name is expected).
    pub(super) fn pin_is_loose(&self, name: &str, a: &AcceptedName, bound: &HashSet<&str>) -> bool {
        !a.declared && !bound.contains(name) && self.connected_tunnel(name).is_none()
    }

    /// The tunnel names binds name, on either side.
    pub(super) fn bound_tunnels(&self) -> HashSet<&str> {
        self.binds
            .values()
            .flat_map(|b| b.values().map(String::as_str))
            .collect()
    }

    /// Forgets pinned name `name` (evicted or expired): its pin, its series; journaled.
    pub(super) fn forget_pin(&mut self, name: &str, why: &str, ctx: &mut Context<Self>) {
        if self.accepted.remove(name).is_none() {
            return;
        }
        self.usage
            .names_evicted
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        metrics().forget_tunnel(name);
        log_limited!(
            info,
            "pin-forgotten",
            "tunnel name {}: pin forgotten ({why})",
            Escaped(name)
        );
        self.save_in_background(&[Key::Accepted(name.to_owned())], ctx);
    }

    /// Makes room in the name table for a new name: at `max_names`, the loose pin seen least
    /// recently goes; if none is loose, the new name is refused.
    pub(super) fn make_room_for_name(
        &mut self,
        ctx: &mut Context<Self>,
    ) -> Result<(), TunnelRefusal> {
        let max = self.settings.limits.max_names;
        if self.accepted.len() < max {
            return Ok(());
        }
        let bound = self.bound_tunnels();
        let oldest = self
            .accepted
            .iter()
            .filter(|(n, a)| self.pin_is_loose(n, a, &bound))
            .min_by_key(|(_, a)| a.seen)
            .map(|(n, _)| n.clone());
        drop(bound);
        let Some(oldest) = oldest else {
            self.usage
                .names_refused
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Err(TunnelRefusal::same(
                RefuseCode::Busy,
                "this node takes no new tunnel names now".to_owned(),
            ));
        };
        self.forget_pin(&oldest, "the name table is full: seen least recently", ctx);
        Ok(())
    }

    /// Forgets the loose pins not seen for `pin_ttl`.
    pub(super) fn expire_pins(&mut self, ctx: &mut Context<Self>) {
        let ttl = self.settings.pin_ttl.as_secs();
        let now = unix_now();
        let bound = self.bound_tunnels();
        let expired: Vec<String> = self
            .accepted
            .iter()
            .filter(|(n, a)| {
                a.pin.is_some()
                    && now.saturating_sub(a.seen) >= ttl
                    && self.pin_is_loose(n, a, &bound)
            })
            .map(|(n, _)| n.clone())
            .collect();
        drop(bound);
        for name in expired {
            self.forget_pin(&name, "its dialer has not been seen for pin_ttl", ctx);
        }
    }
}

impl Handler<MayAccept> for Registry {
    type Result = Result<(), TunnelRefusal>;

    fn handle(&mut self, msg: MayAccept, ctx: &mut Self::Context) -> Self::Result {
        if msg.lane {
            return self.lane_target(&msg.name, &msg.identity).map(|_| ());
        }
        if self.may_accept(&msg.name, &msg.identity, msg.secret_proven)? == NameStatus::New {
            // A dialer that proved the secret is no stranger: only strangers are rate-limited.
            if !msg.secret_proven && !self.new_names.try_take(msg.peer, Instant::now()) {
                self.usage
                    .names_refused
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return Err(TunnelRefusal::same(
                    RefuseCode::Busy,
                    format!(
                        "too many new tunnel names from this address (at most {} a minute); \
                         try again later",
                        self.settings.limits.new_names_per_minute
                    ),
                ));
            }
            self.make_room_for_name(ctx)?;
        }
        Ok(())
    }
}

impl Handler<TunnelAccepted> for Registry {
    type Result = ();

    fn handle(&mut self, msg: TunnelAccepted, ctx: &mut Self::Context) {
        if msg.lane {
            self.join_lane(msg);
            return;
        }
        // Checked again: another dialer may have claimed the name since the first check.
        let proven = self.secret_for(&msg.name).is_some();
        let verdict = match self.may_accept(&msg.name, &msg.identity, proven) {
            Ok(NameStatus::New) => self.make_room_for_name(ctx),
            Ok(NameStatus::Known) => Ok(()),
            Err(e) => Err(e),
        };
        if let Err(refusal) = verdict {
            let ip = msg
                .sock
                .peer_addr()
                .map_or(IpAddr::from([0u8, 0, 0, 0]), |a| a.ip());
            log_limited_for!(
                warn,
                "tunnel-refused",
                ip,
                "tunnel {}: accepted connection dropped: {}",
                Escaped(&msg.name),
                refusal.log
            );
            crate::io::reset_now(&msg.sock);
            return;
        }
        let origin = Origin::Accepted {
            identity: msg.identity,
        };
        self.install_tunnel(msg.name, origin, msg.sock, msg.peer, msg.keys, ctx);
    }
}

impl Registry {
    /// The connected tunnel another lane of `name` from `identity` joins: accepted here, up,
    /// and pinned to that identity. Anything else is refused: a lane never makes a tunnel.
    fn lane_target(
        &self,
        name: &str,
        identity: &[u8; IDENTITY_LEN],
    ) -> Result<Addr<Tunnel>, TunnelRefusal> {
        let pinned = self.accepted.get(name).and_then(|a| a.pin) == Some(*identity);
        match self.tunnels.get(name) {
            Some(t) if t.role == Role::Acceptor && pinned && !self.shutting_down => match &t.link {
                Link::Up(actor) => Ok(actor.clone()),
                Link::Retrying { .. } => Err(Self::no_lane_target()),
            },
            _ => Err(Self::no_lane_target()),
        }
    }

    fn no_lane_target() -> TunnelRefusal {
        TunnelRefusal::same(
            RefuseCode::Other,
            "no connected tunnel of that name from this dialer to join as a lane".to_owned(),
        )
    }

    /// Hands an accepted lane to its tunnel (checked again: the tunnel may have gone since).
    fn join_lane(&mut self, msg: TunnelAccepted) {
        let sock = match self.lane_target(&msg.name, &msg.identity) {
            Ok(actor) => msg.sock.into_std().map(|sock| (actor, sock)),
            Err(refusal) => {
                log::debug!(
                    "tunnel {}: lane dropped: {}",
                    Escaped(&msg.name),
                    refusal.log
                );
                crate::io::reset_now(&msg.sock);
                return;
            }
        };
        match sock {
            Ok((actor, sock)) => {
                let (thread, lane) = match self.tunnels.get_mut(&msg.name) {
                    Some(t) => {
                        t.lanes += 1;
                        (t.thread, t.lanes)
                    }
                    None => (None, 0),
                };
                actor.do_send(crate::tunnel::JoinLane {
                    sock,
                    keys: msg.keys,
                    thread: self.lane_thread(thread, lane),
                })
            }
            Err(e) => warn!(
                "tunnel {}: cannot hand a lane's socket to its tunnel: {e}",
                Escaped(&msg.name)
            ),
        }
    }

    /// The dialer of accepted name `name` deleted its tunnel: the name is free again. A declared
    /// name keeps its declaration and its binds; an undeclared one loses its binds too, so a
    /// stranger who claims the name next is carried nothing the old dialer was.
    pub(super) fn name_freed(&mut self, name: &str, ctx: &mut Context<Self>) {
        let mut keys = vec![Key::Accepted(name.to_owned())];
        match self.accepted.get_mut(name) {
            Some(a) if a.declared => a.pin = None,
            _ => {
                self.accepted.remove(name);
                metrics().forget_tunnel(name);
                for (side, binds) in &mut self.binds {
                    let unbound: Vec<String> = binds
                        .iter()
                        .filter(|(_, t)| t.as_str() == name)
                        .map(|(s, _)| s.clone())
                        .collect();
                    for service in unbound {
                        binds.remove(&service);
                        info!(
                            "{side} service {service}: unbound from tunnel {}, whose dialer \
                             deleted it",
                            Escaped(name)
                        );
                        keys.push(Key::Bind(*side, service));
                    }
                }
            }
        }
        self.reroute(&keys);
        self.save_in_background(&keys, ctx);
    }
}
