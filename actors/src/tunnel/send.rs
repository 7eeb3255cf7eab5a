//! Send credit in the tunnel: the [`SendCredit`] type decides (plain, unit-tested); here its
//! grants reach the connections. And the tunnel credit this node returns to its peer (withheld
//! while the node's buffer budget is spent).

use super::*;

/// Hands each grant [`SendCredit`] decides to its stream's connection.
fn deliver(streams: &HashMap<u32, StreamEntry>) -> impl FnMut(u32, u64) + '_ {
    move |id, g| {
        if let Some(e) = streams.get(&id) {
            e.conn.do_send(StreamEvent::Grant(g));
        }
    }
}

impl Tunnel {
    /// Credit may have come back: the streams waiting for it are served in turn.
    pub(super) fn serve_starving(&mut self) {
        self.credit
            .serve_starving(&self.sched, &mut deliver(&self.streams));
    }

    /// Stream `id` opened: the peer granted `window` for it; it gets what it asked for, and a
    /// standing grant if the pool has one left.
    pub(super) fn stream_opened(&mut self, id: u32, window: u64) {
        self.credit
            .open(id, window, &self.sched, &mut deliver(&self.streams));
        if let Some(standing) = self.credit.give_standing(id) {
            if let Some(e) = self.streams.get(&id) {
                e.conn.do_send(StreamEvent::Standing(standing));
            }
            self.credit.refill(id, &mut deliver(&self.streams));
        }
    }

    /// The connection of stream `id` wants credit.
    pub(super) fn stream_wants(&mut self, id: u32) {
        self.credit
            .want(id, &self.sched, &mut deliver(&self.streams));
    }

    /// Stream `id` sent a DATA frame of `payload` bytes (already queued).
    pub(super) fn stream_sent(&mut self, id: u32, payload: u64) {
        self.credit
            .sent(id, payload, &self.sched, &mut deliver(&self.streams));
    }

    /// Stream `id` handed back credit it did not use.
    pub(super) fn stream_handed_back(&mut self, id: u32, bytes: u64) {
        self.credit
            .hand_back(id, bytes, &self.sched, &mut deliver(&self.streams));
    }

    /// Stream `id` sent its FIN: what it held goes back.
    pub(super) fn stream_half_closed(&mut self, id: u32) {
        self.credit
            .half_close(id, &self.sched, &mut deliver(&self.streams));
    }

    /// Stream `id` is gone from the table: its credit goes back.
    pub(super) fn stream_credit_removed(&mut self, id: u32) {
        self.credit
            .remove(id, &self.sched, &mut deliver(&self.streams));
    }

    /// A WINDOW frame from the peer: for the tunnel (stream 0) or one stream.
    pub(super) fn peer_window(&mut self, stream: u32, increment: u64) -> Result<(), Overflow> {
        if stream == TUNNEL_STREAM {
            self.credit
                .peer_tunnel_window(increment, &self.sched, &mut deliver(&self.streams))
        } else {
            self.credit.peer_stream_window(
                stream,
                increment,
                &self.sched,
                &mut deliver(&self.streams),
            )
        }
    }

    /// `n` bytes left the tunnel's hands (handed to their stream, or dropped): tunnel credit.
    /// The window first covers the open streams' windows, up to [`STREAMS_COVERED`] of them at
    /// their initial windows (after an idle second shrank it, again at the next frame).
    pub(super) fn credit_tunnel(&mut self, n: u64, now: Instant, ctx: &mut Context<Self>) {
        let covered = STREAMS_COVERED * u64::from(self.shared.settings.stream_window);
        self.receive
            .window
            .raise_to(self.receive.windows_total.min(covered));
        let rtt = self.beat.rtt.get();
        if let Some(increment) = self.receive.window.consume(n, now, rtt, u64::MAX) {
            self.queue_control(
                &Frame::Window {
                    stream: TUNNEL_STREAM,
                    increment: increment as u32,
                },
                ctx,
            );
        }
    }

    /// Returns the tunnel credit held back for the buffer budget, once it has room again.
    pub(super) fn release_withheld(&mut self, ctx: &mut Context<Self>) {
        if self.receive.withheld > 0 && self.shared.usage.buffers.has_room() {
            let n = std::mem::take(&mut self.receive.withheld);
            self.credit_tunnel(n, Instant::now(), ctx);
        }
    }
}
