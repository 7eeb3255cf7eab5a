//! The stream table: ids, a stream's entry and its removal (its credit given back), resets, and the
//! per-stream view of `GET /config`.

use super::*;

impl Tunnel {
    pub(super) fn alloc_id(&mut self) -> u32 {
        loop {
            let id = self.counts.next_id;
            self.counts.next_id = self.counts.next_id.wrapping_add(2);
            if self.counts.next_id == 0 || self.counts.next_id == 1 {
                self.counts.next_id = if self.role == Role::Dialer { 1 } else { 2 };
            }
            if !self.streams.contains_key(&id) {
                return id;
            }
        }
    }

    pub(super) fn peer_may_open(&self, id: u32) -> bool {
        id != TUNNEL_STREAM && (id % 2 == 1) == (self.role == Role::Acceptor)
    }

    /// Forgets a stream, returning its unused credit in both directions.
    pub(super) fn remove_stream(&mut self, id: u32) -> Option<StreamEntry> {
        // What its connection sent straight to the socket is counted first: its credit was
        // spent, and must not go back with the stream's.
        self.count_direct(id);
        let e = self.streams.remove(&id)?;
        // What it held and never wrote is dropped with it.
        self.shared.usage.buffers.release(e.recv.buffered());
        self.publish_streams();
        self.counts.wide.count(e.side, false);
        self.receive.windows_total -= e.recv.target();
        self.stream_credit_removed(id);
        Some(e)
    }

    pub(super) fn reset_stream(&mut self, id: u32, code: ResetCode, ctx: &mut Context<Self>) {
        self.drop_queued(id);
        if let Some(e) = self.remove_stream(id) {
            debug!(
                "tunnel {}: stream {id} reset: {}",
                self.name,
                code.describe()
            );
            e.conn.do_send(StreamEvent::Abort);
            self.queue_control(&Frame::Reset { stream: id, code }, ctx);
        }
    }

    /// Registers a new stream, counted against its side's limit.
    pub(super) fn insert_stream(&mut self, id: u32, entry: StreamEntry) {
        self.credit.add(id);
        self.receive.windows_total += entry.recv.target();
        self.counts.wide.count(entry.side, true);
        self.streams.insert(id, entry);
        self.stats.streams_opened += 1;
        self.metrics.streams_opened.inc();
        self.publish_streams();
    }

    pub(super) fn snapshot(&self, ask: &Snapshot) -> TunnelStats {
        let connections = self
            .streams
            .iter()
            .filter(|(_, e)| {
                ask.connections && ask.service.as_ref().is_none_or(|s| *s == e.service)
            })
            .map(|(id, e)| StreamStats {
                stream: *id,
                service: e.service.clone(),
                side: e.side,
                state: e.state.name(),
                bytes_sent: e.bytes_sent,
                bytes_received: e.bytes_received,
                window: e.recv.target(),
                lane: self.lane,
            })
            .collect();
        let out = self.upstream.look();
        TunnelStats {
            counters: TunnelCounters {
                peer: self.peer.addr.map(|a| a.to_string()),
                transport: out.sealer.as_ref().map_or("none", |s| s.cipher().name()),
                rekeys: out.sealer.as_ref().map_or(0, |s| s.rekeys()),
                streams: self.streams.len(),
                streams_opened: self.stats.streams_opened,
                bytes_sent: self.stats.bytes_sent,
                bytes_received: self.stats.bytes_received,
                send_window: self.credit.window(),
                queued_bytes: self.sched.bytes()
                    + self.control.len()
                    + out.rest.iter().map(Bytes::len).sum::<usize>(),
                receive_window: self.receive.window.target(),
                socket: self.socket_queues(),
                lanes: 1,
            },
            connections,
        }
    }
}

/// The metric handles of the services a lane carried streams of, so that a new stream takes its
/// service's without building labels and taking the families' locks.
#[derive(Default)]
pub(super) struct ServiceHandles {
    /// The metrics' count of forgotten services when these were taken: once it moves, one of
    /// them may be a removed series', and all are dropped.
    forgotten: u64,
    /// By side (local, remote), by service.
    by_side: [HashMap<String, ServiceMetrics>; 2],
}

/// Services whose handles a lane keeps at most (beyond it, it starts over).
const MAX_KEPT_SERVICES: usize = 1024;

impl ServiceHandles {
    /// The handles of `service` on `side`.
    pub(super) fn get(&mut self, service: &str, side: Side) -> ServiceMetrics {
        let forgotten = metrics().services_forgotten();
        if forgotten != self.forgotten {
            self.forgotten = forgotten;
            self.by_side.iter_mut().for_each(HashMap::clear);
        }
        let kept = &mut self.by_side[side as usize];
        if let Some(h) = kept.get(service) {
            return h.clone();
        }
        if kept.len() >= MAX_KEPT_SERVICES {
            kept.clear();
        }
        let h = metrics().service(service, side);
        kept.insert(service.to_owned(), h.clone());
        h
    }
}

impl StreamEntry {
    pub(super) fn new(
        conn: StreamActor,
        service: String,
        side: Side,
        service_metrics: ServiceMetrics,
        seat: Seat,
        s: &Settings,
    ) -> Self {
        StreamEntry {
            conn,
            service,
            side,
            accept_nonce: None,
            state: StreamState::Opening,
            _seat: seat,
            recv: RecvWindow::new(
                u64::from(s.stream_window),
                u64::from(s.max_stream_window),
                Instant::now(),
            ),
            bytes_sent: 0,
            bytes_received: 0,
            _active: service_metrics.active(),
            service_metrics,
        }
    }
}
