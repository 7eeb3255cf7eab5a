//! Frames from the peer: DATA under credit, OPEN decided from the route table, window updates,
//! resets, pings and goodbyes.

use super::*;

impl Tunnel {
    /// A frame from the peer, read at `now` (one clock read per frame serves all it does).
    pub(super) fn on_frame(&mut self, frame: Frame, now: Instant, ctx: &mut Context<Self>) {
        match frame {
            Frame::Data { stream, payload } => self.on_data(stream, payload, now, ctx),
            control => self.on_control(control, ctx),
        }
    }

    /// A frame other than DATA. Out of line: a short exchange's DATA frame then runs through
    /// compact code, not past every other kind's (the instruction cache holds less of it).
    #[inline(never)]
    fn on_control(&mut self, frame: Frame, ctx: &mut Context<Self>) {
        match frame {
            // Handled by `on_frame`.
            Frame::Data { .. } => {}
            Frame::Window { stream, increment } => {
                // Credit past 4 GiB is a broken or hostile peer: windows are at most 1 GiB.
                if self.peer_window(stream, u64::from(increment)).is_err() {
                    let what = if stream == TUNNEL_STREAM {
                        "the tunnel window".to_owned()
                    } else {
                        format!("the window of stream {stream}")
                    };
                    self.fail(ctx, format!("peer overflowed {what}"));
                }
            }
            open @ Frame::Open { .. } => {
                if let Some(open) = Opening::of(open) {
                    self.on_open(open, ctx);
                }
            }
            Frame::OpenOk { stream, nonce } => match self.streams.get_mut(&stream) {
                Some(e) if e.side == Side::Local && e.state == StreamState::Opening => {
                    e.state = StreamState::Open;
                    e.conn.do_send(StreamEvent::Opened { nonce });
                    self.stream_opened(stream, u64::from(self.peer.terms.windows.stream));
                }
                _ => debug!("tunnel {}: OPEN_OK for unknown stream {stream}", self.name),
            },
            Frame::OpenFail { stream, reason } => {
                let known = matches!(self.streams.get(&stream), Some(e) if e.side == Side::Local && e.state == StreamState::Opening);
                if known {
                    if let Some(e) = self.remove_stream(stream) {
                        metrics().count_refused(&e.service, Side::Local, Refused::PeerRefused);
                        log_limited!(
                            warn,
                            "stream-refused-by-peer",
                            "tunnel {}: service {} refused by the peer: {}; resetting the client",
                            self.name,
                            e.service,
                            Escaped(&reason)
                        );
                        e.conn.do_send(StreamEvent::Abort);
                    }
                }
            }
            Frame::Fin { stream } => {
                if let Some(e) = self.streams.get(&stream) {
                    e.conn.do_send(StreamEvent::Fin);
                }
            }
            Frame::Reset { stream, code } => {
                self.drop_queued(stream);
                if let Some(e) = self.remove_stream(stream) {
                    if code == ResetCode::Integrity {
                        log_limited!(
                            warn,
                            "stream-integrity",
                            "tunnel {}: stream {stream} of service {} reset by the peer: {}",
                            self.name,
                            e.service,
                            code.describe()
                        );
                    } else {
                        debug!(
                            "tunnel {}: stream {stream} reset by the peer: {}",
                            self.name,
                            code.describe()
                        );
                    }
                    e.conn.do_send(StreamEvent::Abort);
                }
            }
            Frame::Ping(v) => self.queue_control(&Frame::Pong(v), ctx),
            Frame::Pong(v) => {
                if let Some((sent, at, received)) = self.beat.ping_sent {
                    if sent == v {
                        // The path's round trip, for window growth, only from a quiet exchange:
                        // a PONG that waited behind our peer's bulk measured the queue that
                        // growth would lengthen.
                        if self.stats.bytes_received - received < QUIET_BYTES {
                            self.beat.rtt.sample(at.elapsed());
                        }
                        self.metrics.rtt.set(at.elapsed().as_secs_f64());
                        self.beat.ping_sent = None;
                    }
                }
            }
            Frame::GoAway { code, reason } => {
                let reason = Escaped(&reason).to_string();
                log_limited_for!(
                    info,
                    "tunnel-goaway",
                    self.peer_ip(),
                    "tunnel {}: peer closed the tunnel: {reason}",
                    self.name
                );
                self.go_down(format!("closed by the peer: {reason}"), Some(code));
                ctx.stop();
            }
        }
    }

    pub(super) fn on_data(
        &mut self,
        id: u32,
        mut payload: BytesMut,
        now: Instant,
        ctx: &mut Context<Self>,
    ) {
        let len = payload.len() as u64;
        if !self.receive.window.receive(len, now) {
            return self.tunnel_overran(ctx);
        }
        self.stats.bytes_received += len;
        self.metrics.received.inc_by(len);
        let Some(e) = self.streams.get_mut(&id) else {
            // A stream that was just reset: the bytes are dropped, their credit goes back.
            self.credit_tunnel(len, now, ctx);
            return;
        };
        if e.state == StreamState::Opening || !e.recv.receive(len, now) {
            return self.data_overran(id, len, now, ctx);
        }
        e.bytes_received += len;
        e.service_metrics.received.inc_by(len);
        // Straight to the socket when nothing is ahead (no message to the connection and none
        // back); what it does not take goes the usual way.
        let direct = e.conn.write_direct(&payload) as u64;
        if direct < len {
            payload.advance(direct as usize);
            e.conn.do_send(StreamEvent::Data(payload));
            // The tunnel's hands are empty again at once (what the stream holds, its window
            // bounds), unless the node's streams together hold more than its budget.
            let rest = len - direct;
            if self.shared.usage.buffers.hold(rest) {
                self.credit_tunnel(rest, now, ctx);
            } else {
                self.receive.withheld += rest;
            }
        }
        if direct > 0 {
            self.credit_tunnel(direct, now, ctx);
            self.stream_consumed(id, direct, false, now, ctx);
        }
    }

    /// Whether the peer may open stream `id` at all (its parity, not a live one, within the
    /// stream limit); if not, the tunnel fails or the OPEN is refused here.
    fn may_open(&mut self, id: u32, service: &str, ctx: &mut Context<Self>) -> bool {
        if !self.peer_may_open(id) {
            self.fail(
                ctx,
                format!("peer opened stream {id} with the wrong parity"),
            );
            return false;
        }
        if self.streams.contains_key(&id) {
            self.fail(ctx, format!("peer reopened live stream {id}"));
            return false;
        }
        if self.counts.wide.open(Side::Remote) >= self.shared.settings.limits.max_streams {
            self.shared.usage.refuse_stream();
            metrics().count_refused(service, Side::Remote, Refused::StreamLimit);
            let reason = "too many streams on this tunnel";
            log_limited!(
                warn,
                "stream-limit",
                "tunnel {}: refusing stream {id}: {reason} (max_streams {})",
                self.name,
                self.shared.settings.limits.max_streams
            );
            self.refuse_open(id, reason.to_owned(), ctx);
            return false;
        }
        true
    }

    /// A peer's OPEN: checked against the published routes, then the stream's backend is dialled
    /// (no round trip through the Registry).
    pub(super) fn on_open(&mut self, open: Opening, ctx: &mut Context<Self>) {
        let (id, service, protocol) = (open.id, open.service.as_str(), open.protocol);
        if !self.may_open(id, service, ctx) {
            return;
        }
        // Decided here, from the routes the Registry published: no round trip through it.
        let routes = self.shared.routes.load();
        let route = match routes.open(
            &self.name,
            service,
            open.keyed.as_ref(),
            protocol,
            self.peer.authenticated,
        ) {
            Ok(route) => route,
            Err(refusal) => {
                metrics().count_refused(service, Side::Remote, refusal.reason);
                log_limited!(
                    warn,
                    "stream-refused",
                    "tunnel {}: refusing stream {id}: {}",
                    self.name,
                    refusal.log
                );
                return self.refuse_open(id, refusal.peer, ctx);
            }
        };
        let header = match (route.proxy_protocol, open.origin) {
            (None, _) => None,
            (Some(v), Some(o)) => Some(proxy_header::encode(v, protocol, o.client, o.reached)),
            (Some(_), None) => {
                metrics().count_refused(service, Side::Remote, Refused::PeerRefused);
                log_limited!(
                    warn,
                    "stream-refused",
                    "tunnel {}: refusing stream {id}: service {} sends a PROXY header, and the \
                     peer sent no client address",
                    self.name,
                    Escaped(service)
                );
                let reason = "this service needs the client's address, which the OPEN lacks";
                return self.refuse_open(id, reason.to_owned(), ctx);
            }
        };
        self.start_remote(open, route, header, ctx);
    }

    /// Starts the remote end of an accepted OPEN: its backend connection (or UDP flow), with
    /// the stream's keys and its PROXY header.
    fn start_remote(
        &mut self,
        open: Opening,
        route: &RemoteRoute,
        header: Option<Vec<u8>>,
        ctx: &mut Context<Self>,
    ) {
        let Opening {
            id,
            service,
            keyed,
            protocol,
            ..
        } = open;
        let slots = match self.backend_slots(id) {
            Ok(slots) => slots,
            Err(reason) => {
                metrics().count_refused(&service, Side::Remote, Refused::Resources);
                return self.refuse_open(id, reason.to_owned(), ctx);
            }
        };
        // Key setup here, not in the Registry: our nonce goes back in OPEN_OK.
        let crypto = route.key.as_ref().zip(keyed.as_ref()).map(|(k, o)| {
            let ours = fresh_nonce();
            (k.stream(&o.nonce, &ours, false), ours)
        });
        let (crypto, nonce) = match crypto {
            Some((c, n)) => (Some(c), Some(n)),
            None => (None, None),
        };
        let spec = StreamSpec {
            stream: id,
            upstream: self.upstream.clone(),
            service: service.clone(),
            keying: crypto.map(|c| Keying::Ready(Box::new(c))),
            idle_timeout: route.timeout,
            pace: route.pace.clone(),
            slots,
        };
        let actor: StreamActor = match protocol {
            Protocol::Tcp => {
                let target = Target {
                    backends: route.backends.clone(),
                    connect_timeout: self.shared.settings.connect_timeout,
                    header,
                };
                StreamActor::connection(Connection::dialing(spec, target))
            }
            Protocol::Udp => {
                // No answer to wait for: the first address not marked down.
                let order = route.backends.order(Instant::now());
                let backend = route.backends.addr(order[0]);
                let flow = FlowSpec {
                    stream: id,
                    upstream: spec.upstream,
                    service: spec.service,
                    keying: spec.keying,
                    idle_timeout: spec.idle_timeout.unwrap_or(UDP_DEFAULT_TIMEOUT),
                    pace: spec.pace,
                    counts: route.datagrams.clone(),
                    first: Vec::new(),
                    slots: spec.slots,
                };
                StreamActor::flow(UdpFlow::new(flow, FlowEnd::Remote { backend }).start())
            }
        };
        // It lives on this lane: the peer sends all its frames here.
        let seat = self.lanes.seat_on(self.lane, &service);
        let handles = self.service_handles.get(&service, Side::Remote);
        let mut entry = StreamEntry::new(
            actor,
            service,
            Side::Remote,
            handles,
            seat,
            &self.shared.settings,
        );
        entry.accept_nonce = nonce;
        self.insert_stream(id, entry);
    }

    /// The slots the backend connection of stream `id` needs: a token of the peer's dial rate,
    /// a place in this tunnel's share of descriptors, a descriptor. Or what the peer is told
    /// (logged, counted).
    fn backend_slots(&mut self, id: u32) -> Result<Vec<Slot>, &'static str> {
        if !self.counts.wide.take_dial() {
            self.shared.usage.refuse_dial();
            log_limited!(
                warn,
                "dial-limit",
                "tunnel {}: refusing stream {id}: the peer opens more than {} streams a second",
                self.name,
                self.shared.settings.limits.max_dials_per_second
            );
            return Err("too many new streams per second");
        }
        let Some(share) = self.counts.wide.backends.try_acquire() else {
            log_limited!(
                warn,
                "descriptors",
                "tunnel {}: its backend connections use its share of the descriptor pool ({}); \
                 refusing stream {id}",
                self.name,
                self.counts.wide.backends.max()
            );
            return Err("this tunnel has too many connections");
        };
        let Some(descriptor) = self.shared.usage.descriptors.try_acquire() else {
            log_limited!(
                warn,
                "descriptors",
                "tunnel {}: out of file descriptors (reserve kept); refusing stream {id}",
                self.name
            );
            return Err("the node is out of connections");
        };
        Ok(vec![descriptor, share])
    }

    /// Answers a peer's OPEN with OPEN_FAIL.
    pub(super) fn refuse_open(&mut self, stream: u32, reason: String, ctx: &mut Context<Self>) {
        self.queue_control(&Frame::OpenFail { stream, reason }, ctx);
    }
}

impl StreamHandler<Result<Frame, ProtocolError>> for Tunnel {
    fn handle(&mut self, item: Result<Frame, ProtocolError>, ctx: &mut Self::Context) {
        match item {
            Ok(frame) => {
                // Only a frame counts as hearing the peer: a reset or garbage does not.
                let now = Instant::now();
                self.beat.last_heard = now;
                self.beat.heard = true;
                self.on_frame(frame, now, ctx)
            }
            Err(e) => self.protocol_failed(e, ctx),
        }
    }

    fn finished(&mut self, ctx: &mut Self::Context) {
        self.fail(ctx, "the peer closed the connection".to_owned());
    }
}

impl Tunnel {
    /// The peer's bytes broke the protocol (or failed their integrity check): the tunnel fails.
    /// Out of line: the frame path stays compact in the instruction cache.
    #[cold]
    fn protocol_failed(&mut self, e: ProtocolError, ctx: &mut Context<Self>) {
        if matches!(e, ProtocolError::Integrity) {
            metrics().count_integrity_failure(&self.name);
        }
        let peer = self.peer.addr.map_or("?".to_owned(), |a| a.to_string());
        log_limited_for!(
            warn,
            "tunnel-protocol",
            self.peer_ip(),
            "tunnel {} (peer {peer}): {e}; closing the tunnel and resetting its {} streams",
            Escaped(&self.name),
            self.streams.len()
        );
        self.fail(ctx, e.to_string());
    }

    /// DATA beyond the tunnel's window: the tunnel fails. Out of line, as above.
    #[cold]
    fn tunnel_overran(&mut self, ctx: &mut Context<Self>) {
        self.fail(ctx, "peer overran the tunnel window".to_owned());
    }

    /// DATA beyond a stream's window (or for a stream not open yet): that stream is reset and
    /// the bytes dropped. Out of line, as above.
    #[cold]
    fn data_overran(&mut self, id: u32, len: u64, now: Instant, ctx: &mut Context<Self>) {
        self.credit_tunnel(len, now, ctx);
        log_limited!(
            warn,
            "stream-overrun",
            "tunnel {}: peer overran the window of stream {id}; resetting it",
            self.name
        );
        self.reset_stream(id, ResetCode::WindowOverrun, ctx);
    }
}

impl Opening {
    /// The OPEN in `frame`, if it is one.
    fn of(frame: Frame) -> Option<Opening> {
        match frame {
            Frame::Open {
                stream,
                service,
                keyed,
                protocol,
                origin,
            } => Some(Opening {
                id: stream,
                service,
                keyed,
                protocol,
                origin,
            }),
            _ => None,
        }
    }
}

/// A peer's OPEN, as the frame carried it.
pub(super) struct Opening {
    /// The stream's id (the peer's parity).
    pub(super) id: u32,
    /// The remote service asked for (peer-supplied: escaped in logs).
    pub(super) service: String,
    /// The opener's nonce and key check, for a keyed service.
    pub(super) keyed: Option<KeyedOpen>,
    /// What the opener carries: the service here must carry the same.
    pub(super) protocol: Protocol,
    /// The client's address, for a PROXY header.
    pub(super) origin: Option<Origin>,
}
