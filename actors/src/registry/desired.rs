//! `PUT /config`: the configuration as one desired document. The Registry turns it into the
//! records the state file would hold, compares them key by key with what it holds now, and
//! applies only the difference, in a safe order: new and changed services, tunnels and
//! declarations, then binds, then removals (binds, services, tunnels, declarations). Objects that
//! did not change, and their live connections, are not touched.
//!
//! A step that fails (a port taken) undoes the steps this PUT already took, newest first, from
//! the records saved before it began, and the PUT answers 409. A PUT that succeeds is journaled as
//! one transaction (one journal line): after a crash either all of it or none of it is restored.
//! A key or secret given as `"***"` (as `GET /config` shows them) keeps the current one.

use super::*;

/// What `GET /config` shows instead of a key or a secret; in a desired document, "keep it".
pub const KEEP: &str = "***";

/// A tunnel this node should dial.
#[derive(Debug, Clone)]
pub struct DesiredTunnel {
    /// The peer's tunnel port to dial.
    pub dest: SocketAddr,
    /// Its own secret (`"***"`: the current one).
    pub secret: Option<String>,
    /// The acceptor's identity to require; absent: whatever is pinned now.
    pub peer_identity: Option<[u8; IDENTITY_LEN]>,
}

/// The configuration parts of a `GET /config` document, checked one object at a time by the
/// admin API.
#[derive(Debug, Clone, Default)]
pub struct Desired {
    /// Tunnels this node dials, by name.
    pub tunnels: BTreeMap<String, DesiredTunnel>,
    /// Names declared for peers to claim, with their own secret (`"***"`: the current one).
    pub accepted: BTreeMap<String, Option<String>>,
    /// Services, both sides (a key `"***"`: the current one).
    pub services: Vec<ServiceSpec>,
    /// Service -> tunnel, per side.
    pub binds: BTreeMap<Side, BTreeMap<String, String>>,
}

/// `PUT /config` (and the path API's collection PUTs, which give one part and keep the rest).
#[derive(Message)]
#[rtype(result = "Result<ConfigDiff, AdminError>")]
pub struct ApplyConfig {
    /// The whole desired configuration, checked.
    pub desired: Desired,
    /// Which parts the document governs: objects of a part it does not name are kept.
    pub parts: Parts,
    /// Only answer what would change.
    pub dry_run: bool,
}

/// The parts of the configuration a desired document governs.
#[derive(Debug, Clone, Copy)]
pub struct Parts {
    /// The document governs the tunnels this node dials.
    pub tunnels: bool,
    /// It governs the names declared for dialers.
    pub accepted: bool,
    /// It governs the services.
    pub services: bool,
    /// It governs the binds.
    pub binds: bool,
}

impl Parts {
    pub const ALL: Parts = Parts {
        tunnels: true,
        accepted: true,
        services: true,
        binds: true,
    };
    pub const NONE: Parts = Parts {
        tunnels: false,
        accepted: false,
        services: false,
        binds: false,
    };
}

/// What a `PUT /config` changed (or, with `dry_run`, would change): objects by path
/// (`services.local.web`, `bind.remote.db`, `tunnels.t1`, `accepted.t2`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ConfigDiff {
    /// Objects created.
    pub added: Vec<String>,
    /// Objects changed in place or replaced.
    pub changed: Vec<String>,
    /// Objects deleted.
    pub removed: Vec<String>,
    /// Nothing was changed: this is what would be.
    pub dry_run: bool,
}

/// One step of the plan: a key, what it holds now and what it should hold.
struct Step {
    /// What the step changes (a tunnel, a service, a bind).
    key: Key,
    /// What it holds now.
    before: Change,
    /// What it should hold.
    after: Change,
}

fn path_of(key: &Key) -> String {
    match key {
        Key::Tunnel(n) => format!("tunnels.{n}"),
        Key::Accepted(n) => format!("accepted.{n}"),
        Key::Service(side, n) => format!("services.{side}.{n}"),
        Key::Bind(side, n) => format!("bind.{side}.{n}"),
        Key::Identity => "identity".to_owned(),
    }
}

/// Whether a change leaves its key holding configuration (a name only pinned, not declared,
/// is not configuration).
fn holds(c: &Change) -> bool {
    match c {
        Change::Identity { .. } => true,
        Change::Tunnel { record, .. } => record.is_some(),
        Change::Accepted { record, .. } => record.as_ref().is_some_and(|r| r.declared),
        Change::Service { record, .. } => record.is_some(),
        Change::Bind { tunnel, .. } => tunnel.is_some(),
        Change::Batch { .. } => true,
    }
}

/// The order of the plan: sets of services, tunnels and names first, then binds set, then the
/// removals from the binds up.
fn rank(step: &Step) -> u8 {
    let set = holds(&step.after);
    match (&step.key, set) {
        (Key::Service(..) | Key::Tunnel(_) | Key::Accepted(_) | Key::Identity, true) => 0,
        (Key::Bind(..), true) => 1,
        (Key::Bind(..), false) => 2,
        (Key::Service(..), false) => 3,
        (Key::Tunnel(_), false) => 4,
        (Key::Accepted(_) | Key::Identity, false) => 5,
    }
}

impl Registry {
    /// The record a service spec makes, its key `"***"` resolved to the current one.
    fn desired_service(&self, spec: &ServiceSpec) -> Result<ServiceRecord, String> {
        let current = match spec.side {
            Side::Local => self.local.get(&spec.name).and_then(|s| s.key.as_ref()),
            Side::Remote => self.remote.get(&spec.name).and_then(|s| s.key.as_ref()),
        };
        let key =
            match spec.key.as_deref() {
                Some(KEEP) => Some(current.map(|k| k.secret.expose().to_owned()).ok_or_else(
                    || {
                        format!(
                    "services.{}.{}: field \"key\" is \"***\" (keep the current key), and the \
                     service has none here",
                    spec.side, spec.name
                )
                    },
                )?),
                other => other.map(str::to_owned),
            };
        // "***" keeps the cipher too unless one is given.
        let cipher = match (spec.key.as_deref(), spec.cipher) {
            (_, Some(c)) => Some(c),
            (Some(KEEP), None) => current.map(|k| k.cipher),
            (_, None) => None,
        }
        .filter(|c| *c != CipherKind::Rc4);
        Ok(ServiceRecord {
            key,
            cipher: cipher.map(|c| c.name().to_owned()),
            timeout_ms: spec.timeout.map(|d| d.as_millis() as u64),
            more_addrs: spec.more_addrs.clone(),
            ..ServiceRecord::plain(spec.addr)
        }
        .with_options(&spec.options))
    }

    /// A secret `"***"` resolved to `current`.
    fn keep_secret(
        given: &Option<String>,
        current: Option<&Secret>,
        what: &str,
    ) -> Result<Option<String>, String> {
        match given.as_deref() {
            Some(KEEP) => current
                .map(|s| Some(s.expose().to_owned()))
                .ok_or_else(|| {
                    format!("{what}: field \"secret\" is \"***\" (keep the current secret), and there is none here")
                }),
            other => Ok(other.map(str::to_owned)),
        }
    }

    /// The tunnels this node should dial and the names it should declare.
    fn wanted_names(
        &self,
        d: &Desired,
        put: &mut impl FnMut(Key, Change),
        errors: &mut Vec<String>,
    ) {
        for (name, t) in &d.tunnels {
            let current = self.tunnels.get(name);
            let secret = Self::keep_secret(
                &t.secret,
                current.and_then(|c| c.secret.as_ref()),
                &format!("tunnels.{name}"),
            );
            match secret {
                Ok(secret) => put(
                    Key::Tunnel(name.clone()),
                    Change::Tunnel {
                        name: name.clone(),
                        record: Some(TunnelRecord {
                            dest: t.dest,
                            secret,
                            peer_identity: t
                                .peer_identity
                                .or(current.and_then(|c| c.peer_pin))
                                .map(|p| handshake::to_hex(&p)),
                        }),
                    },
                ),
                Err(e) => errors.push(e),
            }
        }
        for (name, secret) in &d.accepted {
            if d.tunnels.contains_key(name) {
                errors.push(format!(
                    "accepted.{name}: this document also dials a tunnel named {name}"
                ));
                continue;
            }
            let current = self.accepted.get(name);
            match Self::keep_secret(
                secret,
                current.and_then(|a| a.secret.as_ref()),
                &format!("accepted.{name}"),
            ) {
                Ok(secret) => put(
                    Key::Accepted(name.clone()),
                    Change::Accepted {
                        name: name.clone(),
                        record: Some(AcceptedRecord {
                            secret,
                            identity: current.and_then(|a| a.pin).map(|p| handshake::to_hex(&p)),
                            declared: true,
                            seen: current.filter(|a| a.pin.is_some()).map(|a| a.seen),
                        }),
                    },
                ),
                Err(e) => errors.push(e),
            }
        }
    }

    /// What each key the document names should hold (by its path); or every problem.
    fn wanted(
        &self,
        d: &Desired,
        parts: Parts,
    ) -> Result<BTreeMap<String, (Key, Change)>, Vec<String>> {
        let mut errors = Vec::new();
        let mut wanted: BTreeMap<String, (Key, Change)> = BTreeMap::new();
        let mut put = |key: Key, change: Change| {
            wanted.insert(path_of(&key), (key, change));
        };
        for spec in &d.services {
            match self.desired_service(spec) {
                Ok(record) => put(
                    Key::Service(spec.side, spec.name.clone()),
                    Change::Service {
                        side: spec.side,
                        name: spec.name.clone(),
                        record: Some(record),
                    },
                ),
                Err(e) => errors.push(e),
            }
        }
        self.wanted_names(d, &mut put, &mut errors);
        for (side, binds) in &d.binds {
            for (service, tunnel) in binds {
                let named = d
                    .services
                    .iter()
                    .any(|s| s.side == *side && s.name == *service);
                let kept = !parts.services
                    && match side {
                        Side::Local => self.local.contains_key(service),
                        Side::Remote => self.remote.contains_key(service),
                    };
                if !named && !kept {
                    errors.push(format!(
                        "bind.{side}.{service}: there is no {side} service named {service}"
                    ));
                    continue;
                }
                put(
                    Key::Bind(*side, service.clone()),
                    Change::Bind {
                        side: *side,
                        service: service.clone(),
                        tunnel: Some(tunnel.clone()),
                    },
                );
            }
        }
        if errors.is_empty() {
            Ok(wanted)
        } else {
            Err(errors)
        }
    }

    /// The keys the governed parts hold now.
    fn governed(&self, parts: Parts) -> Vec<Key> {
        let mut keys: Vec<Key> = Vec::new();
        if parts.services {
            keys.extend(
                self.local
                    .keys()
                    .map(|n| Key::Service(Side::Local, n.clone())),
            );
            keys.extend(
                self.remote
                    .keys()
                    .map(|n| Key::Service(Side::Remote, n.clone())),
            );
        }
        if parts.binds {
            for (side, binds) in &self.binds {
                keys.extend(binds.keys().map(|s| Key::Bind(*side, s.clone())));
            }
        }
        if parts.tunnels {
            let dialled = self.tunnels.iter().filter(|(_, t)| t.role == Role::Dialer);
            keys.extend(dialled.map(|(n, _)| Key::Tunnel(n.clone())));
        }
        if parts.accepted {
            let declared = self.accepted.iter().filter(|(_, a)| a.declared);
            keys.extend(declared.map(|(n, _)| Key::Accepted(n.clone())));
        }
        keys
    }

    /// Every key the desired document governs, with what it holds and should hold, in the
    /// order to apply; or every problem.
    fn desired_changes(&self, d: &Desired, parts: Parts) -> Result<Vec<Step>, Vec<String>> {
        let wanted = self.wanted(d, parts)?;
        let keys = self.governed(parts);
        let mut steps = Vec::new();
        for key in keys {
            if wanted.contains_key(&path_of(&key)) {
                continue;
            }
            let before = self.change_at(&key);
            let after = match &before {
                // A declaration goes; the pin of a dialer that holds the name stays.
                Change::Accepted {
                    name,
                    record: Some(r),
                } if r.identity.is_some() => Change::Accepted {
                    name: name.clone(),
                    record: Some(AcceptedRecord {
                        declared: false,
                        secret: None,
                        ..r.clone()
                    }),
                },
                other => removal(other),
            };
            steps.push(Step { key, before, after });
        }
        for (_, (key, after)) in wanted {
            let before = self.change_at(&key);
            steps.push(Step { key, before, after });
        }
        steps.retain(|s| s.before != s.after);
        steps.sort_by_key(rank);
        Ok(steps)
    }

    /// Makes the live configuration hold `change` at its key, as the single-object routes do
    /// (a tunnel is dialled in the background, as at a restart).
    fn apply_live(&mut self, change: Change, ctx: &mut Context<Self>) -> Result<(), AdminError> {
        match change {
            Change::Service {
                side,
                name,
                record: Some(r),
            } => {
                let spec = spec_of(&name, side, r)?;
                self.add_service(spec, ctx)?;
                metrics().configure_service(&name, side);
            }
            Change::Service {
                side,
                name,
                record: None,
            } => {
                self.remove_service(side, &name, ctx);
            }
            Change::Bind {
                side,
                service,
                tunnel,
            } => match tunnel {
                Some(t) => {
                    self.binds(side).insert(service, t);
                }
                None => {
                    self.binds(side).remove(&service);
                }
            },
            Change::Tunnel { name, record } => {
                if let Some(old) = self.tunnels.remove(&name) {
                    // Removed: the peer forgets the name, as for DELETE /tunnel. Changed: closed
                    // without a word, as a re-POST does; the new dial takes its place.
                    let goodbye = record
                        .is_none()
                        .then(|| (GoAway::Deleted, "deleted".to_owned()));
                    Registry::retire(old, goodbye, ctx);
                }
                self.dialing.remove(&name);
                match record {
                    Some(r) => self.add_dialer(name, r, ctx),
                    None => metrics().forget_tunnel(&name),
                }
            }
            Change::Accepted { name, record } => match record {
                Some(r) => {
                    let entry = self.accepted.entry(name).or_insert_with(|| AcceptedName {
                        secret: None,
                        pin: None,
                        declared: false,
                        seen: unix_now(),
                        saved_seen: 0,
                    });
                    entry.declared = r.declared;
                    entry.secret = r.secret.as_deref().map(Secret::new);
                }
                None => {
                    self.accepted.remove(&name);
                }
            },
            Change::Identity { .. } | Change::Batch { .. } => {}
        }
        Ok(())
    }

    /// A tunnel this node dials, from its record: dialled now, then with back-off.
    pub(super) fn add_dialer(&mut self, name: String, t: TunnelRecord, ctx: &mut Context<Self>) {
        let generation = self.next_generation();
        self.tunnels.insert(
            name.clone(),
            TunnelEntry {
                dest: Some(t.dest),
                role: Role::Dialer,
                generation,
                link: Link::Retrying {
                    attempt: 1,
                    task: SpawnHandle::default(),
                },
                last_error: None,
                dialled_on: 0,
                thread: None,
                lanes: 0,
                secret: t.secret.as_deref().map(Secret::new),
                peer_pin: t.peer_identity.as_deref().and_then(parse_identity),
            },
        );
        self.retry_tunnel(&name, 1, Duration::ZERO, ctx);
    }

    /// Removes a service: its listener stops, its connections close, its bind goes.
    pub(super) fn remove_service(
        &mut self,
        side: Side,
        name: &str,
        ctx: &mut Context<Self>,
    ) -> bool {
        let existed = match side {
            Side::Local => self.local.remove(name).map(|s| s.close(ctx)).is_some(),
            Side::Remote => self
                .remote
                .remove(name)
                .map(|s| metrics().forget_backends(name, s.backends.addrs()))
                .is_some(),
        };
        if !existed {
            return false;
        }
        self.binds(side).remove(name);
        metrics().forget_service(name, side);
        for t in self.tunnels.values() {
            if let Link::Up(actor) = &t.link {
                actor.do_send(CloseService {
                    service: name.to_owned(),
                    side,
                });
            }
        }
        info!("service {name} ({side}): deleted");
        true
    }
}

/// The change that removes `c`'s key.
fn removal(c: &Change) -> Change {
    match c.clone() {
        Change::Tunnel { name, .. } => Change::Tunnel { name, record: None },
        Change::Accepted { name, .. } => Change::Accepted { name, record: None },
        Change::Service { side, name, .. } => Change::Service {
            side,
            name,
            record: None,
        },
        Change::Bind { side, service, .. } => Change::Bind {
            side,
            service,
            tunnel: None,
        },
        other => other,
    }
}

/// The spec a kept record makes.
fn spec_of(name: &str, side: Side, r: ServiceRecord) -> Result<ServiceSpec, AdminError> {
    let cipher = r
        .cipher
        .as_deref()
        .map(str::parse::<CipherKind>)
        .transpose()
        .map_err(|e| AdminError::Invalid(format!("services.{side}.{name}: cipher {e}")))?;
    let options = r.options();
    Ok(ServiceSpec {
        name: name.to_owned(),
        key: r.key,
        cipher,
        timeout: r.timeout_ms.map(Duration::from_millis),
        side,
        addr: r.addr,
        more_addrs: r.more_addrs,
        options,
    })
}

impl Handler<ApplyConfig> for Registry {
    type Result = ResponseFuture<Result<ConfigDiff, AdminError>>;

    fn handle(&mut self, msg: ApplyConfig, ctx: &mut Self::Context) -> Self::Result {
        let steps = match self.desired_changes(&msg.desired, msg.parts) {
            Ok(s) => s,
            Err(errors) => {
                return Box::pin(async move { Err(AdminError::Invalid(errors.join("\n"))) })
            }
        };
        let mut diff = ConfigDiff {
            dry_run: msg.dry_run,
            ..ConfigDiff::default()
        };
        for s in &steps {
            let list = match (holds(&s.before), holds(&s.after)) {
                (false, _) => &mut diff.added,
                (true, true) => &mut diff.changed,
                (true, false) => &mut diff.removed,
            };
            list.push(path_of(&s.key));
        }
        if msg.dry_run || steps.is_empty() {
            return Box::pin(async move { Ok(diff) });
        }
        let keys: Vec<Key> = steps.iter().map(|s| s.key.clone()).collect();
        for (done, step) in steps.iter().enumerate() {
            if let Err(e) = self.apply_live(step.after.clone(), ctx) {
                warn!(
                    "PUT /config: {} failed ({}); undoing the {done} steps before it",
                    path_of(&step.key),
                    e
                );
                for undo in steps[..done].iter().rev() {
                    if let Err(again) = self.apply_live(undo.before.clone(), ctx) {
                        error!(
                            "PUT /config: undoing {} failed: {again}",
                            path_of(&undo.key)
                        );
                    }
                }
                self.reroute(&keys);
                let why = format!("{}: {e}; nothing was changed", path_of(&step.key));
                return Box::pin(async move { Err(AdminError::Conflict(why)) });
            }
        }
        info!(
            "PUT /config: {} added, {} changed, {} removed",
            diff.added.len(),
            diff.changed.len(),
            diff.removed.len()
        );
        let saved = self.commit(Ok(()), &keys);
        Box::pin(async move { saved.await.map(|()| diff) })
    }
}
