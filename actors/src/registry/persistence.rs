//! Persistence: what a change touched (its keys) journaled through the state store, and the
//! configuration restored from it at start.

use super::*;

impl Registry {
    /// Journals what changed at `keys` without anyone waiting for the answer (a change the peer
    /// made).
    pub(super) fn save_in_background(&self, keys: &[Key], ctx: &mut Context<Self>) {
        let saved = self.persist(keys);
        ctx.spawn(
            async move {
                if let Err(e) = saved.await {
                    error!("{e}");
                }
            }
            .into_actor(self),
        );
    }

    /// Writes the configuration to the state file (if there is one); resolves once it is on disk.
    /// What the state holds at `key` now, as a journal change.
    pub(super) fn change_at(&self, key: &Key) -> Change {
        let record = |addrs: &[SocketAddr],
                      key: &Option<ServiceKey>,
                      timeout: &Option<Duration>,
                      options: &ServiceOptions| {
            ServiceRecord {
                key: key.as_ref().map(|k| k.secret.expose().to_owned()),
                cipher: key
                    .as_ref()
                    .filter(|k| k.cipher != CipherKind::Rc4)
                    .map(|k| k.cipher.name().to_owned()),
                timeout_ms: timeout.map(|d| d.as_millis() as u64),
                more_addrs: addrs[1..].to_vec(),
                ..ServiceRecord::plain(addrs[0])
            }
            .with_options(options)
        };
        match key {
            Key::Identity => Change::Identity {
                identity: self.identity.to_hex(),
            },
            Key::Tunnel(name) => Change::Tunnel {
                name: name.clone(),
                record: self
                    .tunnels
                    .get(name)
                    .filter(|t| t.role == Role::Dialer)
                    .and_then(|t| {
                        Some(TunnelRecord {
                            dest: t.dest?,
                            secret: t.secret.as_ref().map(|s| s.expose().to_owned()),
                            peer_identity: t.peer_pin.as_ref().map(|p| handshake::to_hex(p)),
                        })
                    }),
            },
            Key::Accepted(name) => Change::Accepted {
                name: name.clone(),
                record: self.accepted.get(name).map(|a| AcceptedRecord {
                    secret: a.secret.as_ref().map(|s| s.expose().to_owned()),
                    identity: a.pin.as_ref().map(|p| handshake::to_hex(p)),
                    declared: a.declared,
                    seen: a.pin.map(|_| a.seen),
                }),
            },
            Key::Service(side, name) => Change::Service {
                side: *side,
                name: name.clone(),
                record: match side {
                    Side::Local => self
                        .local
                        .get(name)
                        .map(|s| record(&[s.listening.addr], &s.key, &s.timeout, &s.options)),
                    Side::Remote => self.remote.get(name).map(|s| {
                        let addrs: Vec<SocketAddr> = s.backends.addrs().collect();
                        record(&addrs, &s.key, &s.timeout, &s.options)
                    }),
                },
            },
            Key::Bind(side, service) => Change::Bind {
                side: *side,
                service: service.clone(),
                tunnel: self.binds.get(side).and_then(|b| b.get(service)).cloned(),
            },
        }
    }

    /// Journals what the state holds at `keys` now: O(1) per key, whatever the state's size.
    pub(super) fn persist(&self, keys: &[Key]) -> Saved {
        let Some(store) = &self.store else {
            return Box::pin(async { Ok(()) });
        };
        let mut changes: Vec<Change> = keys.iter().map(|k| self.change_at(k)).collect();
        if changes.len() > 1 {
            // One line: a crash keeps all of them or none.
            changes = vec![Change::Batch { changes }];
        }
        let written = store.record(changes);
        let path = store.path().display().to_string();
        Box::pin(async move {
            let why = match written.await {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(e)) => e,
                Err(_) => "the state writer has stopped".to_owned(),
            };
            Err(AdminError::Unsaved(format!(
                "the change is made but could not be saved to {path}: {why}"
            )))
        })
    }

    /// An admin change's answer: its refusal, or its outcome once what it changed (`keys`) is
    /// journaled.
    pub(super) fn commit(&mut self, change: Result<(), AdminError>, keys: &[Key]) -> Saved {
        // The routes first, so the change applies to the next connection.
        self.reroute(keys);
        match change {
            Ok(()) => self.persist(keys),
            Err(e) => Box::pin(async move { Err(e) }),
        }
    }

    /// Puts back what the state file holds: services listening, binds known, dialled tunnels
    /// re-dialled at once and then with back-off, so a peer that is down holds nothing up.
    pub(super) fn restore(&mut self, state: State, ctx: &mut Context<Self>) {
        let count = (
            state.tunnels.len(),
            state.services.local.len() + state.services.remote.len(),
        );
        self.restore_services(state.services, ctx);
        self.binds.insert(Side::Local, state.bind.local);
        self.binds.insert(Side::Remote, state.bind.remote);
        for (name, a) in state.accepted {
            let pin = a.identity.as_deref().and_then(parse_identity);
            // A pin saved before pins had a last contact counts as seen now.
            let seen = a.seen.unwrap_or_else(unix_now);
            self.accepted.insert(
                name,
                AcceptedName {
                    secret: a.secret.as_deref().map(Secret::new),
                    pin,
                    declared: a.declared,
                    seen,
                    saved_seen: a.seen.unwrap_or(0),
                },
            );
        }
        for (name, t) in state.tunnels {
            self.add_dialer(name, t, ctx);
        }
        info!(
            "restored {} tunnels and {} services from the state file",
            count.0, count.1
        );
        self.current = self.build_routes();
        self.publish();
    }

    /// Puts back the services of a state file: remote ones routed, local ones listening.
    fn restore_services(&mut self, services: crate::state::Services, ctx: &mut Context<Self>) {
        // The state file was checked when it was loaded (ciphers, identities); a bad field here
        // falls back to the safe reading (RC4, a fresh identity) with an error line.
        let key = |k: Option<String>, c: Option<String>| {
            let cipher = c.as_deref().map_or(Ok(CipherKind::Rc4), str::parse);
            let cipher = cipher.unwrap_or_else(|e| {
                error!("state file: cipher {e}; using rc4");
                CipherKind::Rc4
            });
            k.as_deref().map(|k| ServiceKey::new(k, cipher))
        };
        let timeout = |t: Option<u64>| t.map(Duration::from_millis);
        for (name, s) in services.remote {
            metrics().configure_service(&name, Side::Remote);
            let options = s.options();
            let addrs: Vec<SocketAddr> = std::iter::once(s.addr).chain(s.more_addrs).collect();
            let service = self.remote_service(&name, &addrs, key(s.key, s.cipher), options, ctx);
            self.remote.insert(
                name,
                RemoteService {
                    timeout: timeout(s.timeout_ms),
                    ..service
                },
            );
        }
        for (name, s) in services.local {
            let options = s.options();
            let datagrams = health::datagrams(&name, Side::Local);
            let udp = match options.protocol {
                Protocol::Tcp => None,
                // A port taken meanwhile: the service is kept (and shown without `listening`).
                Protocol::Udp => self.start_udp(&name, s.addr, &datagrams, ctx).ok(),
            };
            let tcp = udp.is_none() && options.protocol == Protocol::Tcp;
            self.local.insert(
                name.clone(),
                LocalService {
                    key: key(s.key, s.cipher),
                    timeout: timeout(s.timeout_ms),
                    listening: Listening::new(s.addr, None),
                    connections: self.service_gauge(),
                    pace: health::pace(&name, Side::Local, &options),
                    options,
                    udp,
                    datagrams,
                },
            );
            metrics().configure_service(&name, Side::Local);
            if tcp {
                self.start_listener(Accepts::Service(name), ctx);
            }
        }
    }
}
