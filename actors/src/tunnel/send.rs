//! Send credit: grants to connections carved from the peer's stream and tunnel windows within the send budget, standing grants, streams starving for tunnel credit served round-robin; and the tunnel credit this node returns.

use super::*;

impl Tunnel {
    /// Tops up a stream's grant from its own window and the tunnel window.
    pub(super) fn grant(&mut self, id: u32) {
        let tunnel_room = self.send_room();
        let queued_here = self.sched.bytes_of(id) as u64;
        let Some(e) = self.streams.get_mut(&id) else {
            return;
        };
        if e.state != StreamState::Open || !e.wanting || e.granted >= GRANT_MAX / 2 {
            return;
        }
        if e.conn.is_none() {
            return;
        }
        let want = (GRANT_MAX - e.granted).min(e.send_avail);
        if want == 0 {
            return;
        }
        // What we hold towards the peer is bounded by our own budget, not by what it announced;
        // per stream too, so one bulk stream cannot fill the queue.
        let room = tunnel_room.min(STREAM_SEND_MAX.saturating_sub(e.granted + queued_here));
        let g = want.min(self.send_window).min(room);
        hand_credit(e, g, &mut self.send_window, &mut self.granted_total);
        if g < want && !e.starving {
            e.starving = true;
            self.starving.push_back(id);
        }
    }

    /// Gives a stream that just opened a standing grant, if the pool has one left.
    pub(super) fn give_standing(&mut self, id: u32) {
        if self.standing_total + STANDING_GRANT > STANDING_POOL {
            return;
        }
        let Some(e) = self.streams.get_mut(&id) else {
            return;
        };
        let Some(conn) = e.conn.as_ref() else {
            return;
        };
        e.standing = STANDING_GRANT;
        self.standing_total += STANDING_GRANT;
        conn.do_send(StreamEvent::Standing(STANDING_GRANT));
        self.refill(id);
    }

    /// Tops a stream that is not asking for credit back up to its standing grant, from its own
    /// window and the tunnel window (not from the send budget: the pool is its own bound).
    pub(super) fn refill(&mut self, id: u32) {
        let Some(e) = self.streams.get_mut(&id) else {
            return;
        };
        if e.state != StreamState::Open || e.wanting || e.granted >= e.standing {
            return;
        }
        if e.conn.is_none() {
            return;
        }
        let g = (e.standing - e.granted)
            .min(e.send_avail)
            .min(self.send_window);
        hand_credit(e, g, &mut self.send_window, &mut self.granted_total);
    }

    /// What more we may hand our connections for this tunnel: granted and queued bytes together
    /// stay under the send budget.
    pub(super) fn send_room(&self) -> u64 {
        let budget = SEND_BUDGET.min(u64::from(self.settings.tunnel_window));
        budget.saturating_sub(self.granted_total + self.sched.bytes() as u64)
    }

    /// Round-robin over the streams that wait for tunnel credit.
    pub(super) fn serve_starving(&mut self) {
        for _ in 0..self.starving.len() {
            if self.send_window == 0 || self.send_room() == 0 {
                break;
            }
            let Some(id) = self.starving.pop_front() else {
                break;
            };
            if let Some(e) = self.streams.get_mut(&id) {
                e.starving = false;
                self.grant(id);
            }
        }
    }

    /// `n` bytes left the tunnel's hands (handed to their stream, or dropped): tunnel credit.
    pub(super) fn credit_tunnel(&mut self, n: u64, now: Instant, ctx: &mut Context<Self>) {
        let rtt = self.rtt.get();
        if let Some(increment) = self.recv.consume(n, now, rtt, u64::MAX) {
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
        if self.withheld > 0 && self.usage.buffers.has_room() {
            let n = std::mem::take(&mut self.withheld);
            self.credit_tunnel(n, Instant::now(), ctx);
        }
    }
}

/// Grants `g` bytes to stream `e`'s connection, carved from its window and the tunnel's.
pub(super) fn hand_credit(
    e: &mut StreamEntry,
    g: u64,
    send_window: &mut u64,
    granted_total: &mut u64,
) {
    let Some(conn) = e.conn.as_ref() else {
        return;
    };
    if g > 0 {
        conn.do_send(StreamEvent::Grant(g));
        e.send_avail -= g;
        e.granted += g;
        *send_window -= g;
        *granted_total += g;
    }
}
