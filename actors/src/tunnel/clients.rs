//! Clients from listeners (a new local stream) and reports from the connections of the streams.

use super::*;

impl Handler<CarryClient> for Tunnel {
    type Result = ();

    fn handle(&mut self, msg: CarryClient, ctx: &mut Self::Context) {
        self.place(msg, ctx);
    }
}

impl Tunnel {
    /// Carries `msg`'s client as a new stream of this lane, in `seat`.
    pub(super) fn carry(&mut self, msg: CarryClient, seat: Seat, ctx: &mut Context<Self>) {
        let ending = !matches!(self.life, Life::Open);
        if ending || self.counts.wide.open(Side::Local) >= self.peer.terms.max_streams {
            self.refuse(msg, ending);
            return;
        }
        let protocol = match &msg.client {
            Client::Tcp { .. } => Protocol::Tcp,
            Client::Udp(_) => Protocol::Udp,
        };
        let id = self.alloc_id();
        let open = msg.key.as_ref().map(|k| k.open());
        let keying = msg.key.zip(open).map(|(key, open)| Keying::Opener {
            key,
            nonce: open.nonce,
        });
        let actor: StreamActor = match msg.client {
            Client::Tcp { sock, peer } => {
                // The client was accepted on the listener's thread: register it with this one.
                let sock = match TcpStream::from_std(sock) {
                    Ok(s) => s,
                    Err(e) => {
                        log_limited!(
                            warn,
                            "carry-refused",
                            "tunnel {}: cannot take over a client of service {}: {e}",
                            self.name,
                            msg.service
                        );
                        metrics().count_refused(&msg.service, Side::Local, Refused::Resources);
                        return;
                    }
                };
                let spec = StreamSpec {
                    stream: id,
                    upstream: self.upstream.clone(),
                    service: msg.service.clone(),
                    keying,
                    idle_timeout: msg.idle_timeout,
                    pace: msg.pace,
                    slots: msg.slots,
                };
                StreamActor::connection(Connection::accepted(spec, sock, Some(peer)))
            }
            Client::Udp(start) => {
                let spec = FlowSpec {
                    stream: id,
                    upstream: self.upstream.clone(),
                    service: msg.service.clone(),
                    keying,
                    idle_timeout: msg.idle_timeout.unwrap_or(UDP_DEFAULT_TIMEOUT),
                    pace: msg.pace,
                    counts: start.counts,
                    first: vec![start.first],
                    slots: msg.slots,
                };
                let end = FlowEnd::Local {
                    socket: start.socket,
                    client: start.client,
                    listener: start.listener,
                    id: start.id,
                };
                StreamActor::flow(UdpFlow::new(spec, end).start())
            }
        };
        let handles = self.service_handles.get(&msg.service, Side::Local);
        handles.accepted.inc();
        let frame = Frame::Open {
            stream: id,
            service: msg.service.clone(),
            keyed: open,
            protocol,
            origin: msg.origin,
        };
        let entry = StreamEntry::new(
            actor,
            msg.service,
            Side::Local,
            handles,
            seat,
            &self.shared.settings,
        );
        self.insert_stream(id, entry);
        self.queue_control(&frame, ctx);
    }

    /// Refuses `msg`'s client: the tunnel is `ending`, or the peer's stream limit is reached. A
    /// TCP client is reset (never a FIN: it was carried nowhere); a UDP flow is counted dropped
    /// and its listener told the flow ended.
    fn refuse(&self, msg: CarryClient, ending: bool) {
        log_limited!(
            warn,
            "carry-refused",
            "tunnel {}: the peer takes at most {} streams; resetting a client of service {}",
            self.name,
            self.peer.terms.max_streams,
            msg.service
        );
        let reason = if ending {
            Refused::ShuttingDown
        } else {
            Refused::StreamLimit
        };
        metrics().count_refused(&msg.service, Side::Local, reason);
        match msg.client {
            Client::Tcp { sock, .. } => crate::io::reset_now(&sock),
            Client::Udp(start) => {
                start.counts.dropped.inc();
                start.listener.do_send(FlowReport::Ended {
                    client: start.client,
                    id: start.id,
                });
            }
        }
    }
}

impl Tunnel {
    /// Handles the reports its connections queued since the last time, in their order; called
    /// by the writer item, whose batch then carries what they queued (`connection/upstream.rs`).
    pub(super) fn take_reports(&mut self, ctx: &mut Context<Self>) {
        while let Some(report) = self.upstream.take() {
            self.on_connection(report, ctx);
        }
    }

    /// Counts `payload` bytes of DATA sent on stream `id`, if it is still carried.
    fn count_sent(&mut self, id: u32, payload: u64) -> bool {
        let Some(e) = self.streams.get_mut(&id) else {
            return false;
        };
        e.bytes_sent += payload;
        e.service_metrics.sent.inc_by(payload);
        self.stats.bytes_sent += payload;
        self.metrics.sent.inc_by(payload);
        true
    }

    /// Counts what stream `id`'s connection sent straight to the socket since the last count
    /// (`connection/upstream.rs`): its bytes, and the credit it spent.
    pub(super) fn count_direct(&mut self, id: u32) {
        let Some(e) = self.streams.get(&id) else {
            return;
        };
        let payload = e.conn.take_unaccounted();
        if payload > 0 && self.count_sent(id, payload) {
            self.stream_sent(id, payload);
        }
    }

    fn on_connection(&mut self, msg: FromConnection, ctx: &mut Context<Self>) {
        match msg {
            FromConnection::Data { stream, frame } => {
                let payload = (frame.len() - HEADER_LEN) as u64;
                if self.count_sent(stream, payload) {
                    self.queue_data(stream, frame, ctx);
                    self.stream_sent(stream, payload);
                }
            }
            FromConnection::Sent { stream } => {
                self.count_direct(stream);
                // A direct write the socket did not take whole left its rest to send first.
                if !self.upstream.look().rest.is_empty() {
                    self.flush(ctx);
                }
            }
            FromConnection::Want { stream } => self.stream_wants(stream),
            // Unused credit goes back to both windows it was carved from.
            FromConnection::Return { stream, bytes } => self.stream_handed_back(stream, bytes),
            FromConnection::Consumed { stream, bytes } => {
                self.stream_consumed(stream, bytes, true, Instant::now(), ctx)
            }
            FromConnection::Fin { stream } => {
                let Some(e) = self.streams.get_mut(&stream) else {
                    return;
                };
                e.state = StreamState::HalfClosed;
                self.stream_half_closed(stream);
                let mut fin = BytesMut::with_capacity(HEADER_LEN);
                Frame::Fin { stream }.encode(&mut fin);
                self.queue_data(stream, fin.freeze(), ctx);
            }
            FromConnection::Dialed { stream } => {
                let Some(e) = self.streams.get_mut(&stream) else {
                    return;
                };
                e.state = StreamState::Open;
                e.service_metrics.accepted.inc();
                let nonce = e.accept_nonce.take();
                self.queue_control(&Frame::OpenOk { stream, nonce }, ctx);
                self.stream_opened(stream, u64::from(self.peer.terms.windows.stream));
            }
            FromConnection::Closed { stream, failure } => {
                if failure.is_some() {
                    self.drop_queued(stream);
                }
                let Some(e) = self.remove_stream(stream) else {
                    return;
                };
                match failure {
                    None => {}
                    Some((_, reason))
                        if e.state == StreamState::Opening && e.side == Side::Remote =>
                    {
                        metrics().count_refused(&e.service, Side::Remote, Refused::Unreachable);
                        self.queue_control(&Frame::OpenFail { stream, reason }, ctx)
                    }
                    Some((code, _)) => self.queue_control(&Frame::Reset { stream, code }, ctx),
                }
            }
        }
    }
}

impl Tunnel {
    /// `bytes` of stream `stream` were written to its socket: what they held of the node's
    /// buffer budget goes back (if `held`: a direct write never held any), and the stream's
    /// window is credited to the peer (and may grow).
    pub(super) fn stream_consumed(
        &mut self,
        stream: u32,
        bytes: u64,
        held: bool,
        now: Instant,
        ctx: &mut Context<Self>,
    ) {
        let room = u64::from(self.shared.settings.max_tunnel_window)
            .saturating_sub(self.receive.windows_total);
        let rtt = self.beat.rtt.get();
        let Some(e) = self.streams.get_mut(&stream) else {
            return;
        };
        let bytes = bytes.min(e.recv.buffered());
        if held {
            self.shared.usage.buffers.release(bytes);
        }
        let before = e.recv.target();
        let update = e.recv.consume(bytes, now, rtt, room);
        let after = e.recv.target();
        self.receive.windows_total = self.receive.windows_total - before + after;
        if after > before {
            // The tunnel window grows with the stream's (what the stream's own window
            // lets through, beside what the others had at first).
            let initial = u64::from(self.shared.settings.tunnel_window);
            self.receive.window.raise_to(after + initial);
        }
        if let Some(inc) = update {
            self.queue_control(
                &Frame::Window {
                    stream,
                    increment: inc as u32,
                },
                ctx,
            );
        }
        self.release_withheld(ctx);
    }
}
