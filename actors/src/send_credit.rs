//! Send credit: what one tunnel may send its peer, and what each stream's connection holds of it.
//! A plain type (no actors, no logging, no metrics): the tunnel asks it what to grant and hands
//! the grants it returns to the connections.
//!
//! The peer grants credit per stream (its stream window and WINDOW increments) and per tunnel
//! (its tunnel window and increments on stream 0). A connection reads its socket only against a
//! *grant* carved from both at once, so every byte it hands the tunnel can be sent. Grants are
//! capped: per stream at [`GRANT_MAX`], and what the tunnel holds towards its peer (granted or
//! queued) within its send budget and [`STREAM_SEND_MAX`] per stream, whatever the peer allows.
//! A stream that asked and got less than it wanted for lack of tunnel credit *starves*: starving
//! streams are served round-robin as credit comes back. Each of the first streams also keeps a
//! *standing grant* ([`STANDING_GRANT`], from a pool of [`STANDING_POOL`]) while idle, so a short
//! request is sent without asking first; it is topped up once under half.
//!
//! Invariants, checked by [`SendCredit::invariants_hold`] (asserted in debug builds after every
//! change, and by the unit tests): the totals are the sums over the streams, the standing pool
//! is never overdrawn, a stream is queued as starving exactly when it is marked so, and no stream
//! holds more than the peer could ever have granted. Arithmetic never wraps: a subtraction that
//! would go below zero is a bug, asserted in debug builds and saturated in release ones.

use std::collections::VecDeque;

use foldhash::{HashMap, HashMapExt};

use crate::schedule::SendQueue;

/// Most credit a connection holds at once: enough for a few frames in flight, small enough that
/// what one idle connection reserves stays modest.
pub const GRANT_MAX: u64 = 128 * 1024;
/// Most a tunnel holds towards its peer for one stream, granted and queued together.
pub const STREAM_SEND_MAX: u64 = 256 * 1024;
/// The standing grant an open stream keeps while idle.
pub const STANDING_GRANT: u64 = 8 * 1024;
/// The standing grants of one tunnel together.
pub const STANDING_POOL: u64 = 256 * 1024;
/// More credit than a peer could ever have granted on one window: a peer past it is broken.
pub const MAX_CREDIT: u64 = 1 << 32;

/// A peer's WINDOW increment that took a window past [`MAX_CREDIT`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overflow;

/// One stream's share of the send credit.
#[derive(Debug, Default, Clone)]
struct StreamCredit {
    /// The peer's credit for this stream not yet granted to the connection.
    avail: u64,
    /// Granted to the connection, not yet come back as data or handed back.
    granted: u64,
    /// The part of `granted` the connection keeps while idle, carved from the standing pool.
    standing: u64,
    /// The connection asked for credit and has not handed any back since.
    wanting: bool,
    /// Queued in `starving`, waiting for tunnel credit.
    starving: bool,
    /// Open for sending: grants only go to a stream that is open and has not sent its FIN.
    open: bool,
}

/// What one tunnel may send, and what its streams hold of it.
#[derive(Debug)]
pub struct SendCredit {
    /// The peer's tunnel credit not yet granted to a stream.
    window: u64,
    /// Granted to connections, over all streams.
    granted: u64,
    /// The standing pool of this tunnel: [`STANDING_POOL`], or a quarter of the peer's initial
    /// tunnel window if that is less, so idle streams never hold the window a new one needs.
    pool: u64,
    /// Standing grants handed out, over all streams (at most `pool`).
    standing: u64,
    /// What the tunnel may hold towards its peer, granted and queued together.
    budget: u64,
    /// Each stream's share, by stream id.
    streams: HashMap<u32, StreamCredit>,
    /// Streams waiting for tunnel credit, served in turn.
    starving: VecDeque<u32>,
}

/// `a - b`, which must not go below zero: asserted in debug builds, saturated in release ones.
fn less(a: u64, b: u64) -> u64 {
    debug_assert!(a >= b, "send credit: {a} - {b} would wrap");
    a.saturating_sub(b)
}

impl SendCredit {
    /// `window`: the peer's tunnel window from the handshake; `budget`: what the tunnel may hold
    /// towards its peer.
    pub fn new(window: u64, budget: u64) -> SendCredit {
        SendCredit {
            window,
            granted: 0,
            pool: STANDING_POOL.min(window / 4),
            standing: 0,
            budget,
            streams: HashMap::new(),
            starving: VecDeque::new(),
        }
    }

    /// The peer's tunnel credit not yet granted to a stream.
    pub fn window(&self) -> u64 {
        self.window
    }

    /// A new stream: no credit until it opens.
    pub fn add(&mut self, id: u32) {
        self.streams.insert(id, StreamCredit::default());
        self.check();
    }

    /// The stream opened: the peer granted `window` for it. A connection that asked meanwhile
    /// gets its grant.
    pub fn open(
        &mut self,
        id: u32,
        window: u64,
        queued: &SendQueue,
        deliver: &mut impl FnMut(u32, u64),
    ) {
        if let Some(s) = self.streams.get_mut(&id) {
            s.open = true;
            s.avail = window;
        }
        self.check();
        self.grant(id, queued, deliver);
    }

    /// Reserves a standing grant for stream `id` if the pool has one left; the tunnel announces
    /// it to the connection, then calls [`SendCredit::refill`].
    pub fn give_standing(&mut self, id: u32) -> Option<u64> {
        if self.standing + STANDING_GRANT > self.pool {
            return None;
        }
        let s = self.streams.get_mut(&id)?;
        s.standing = STANDING_GRANT;
        self.standing += STANDING_GRANT;
        self.check();
        Some(STANDING_GRANT)
    }

    /// The connection of stream `id` wants credit.
    pub fn want(&mut self, id: u32, queued: &SendQueue, deliver: &mut impl FnMut(u32, u64)) {
        if let Some(s) = self.streams.get_mut(&id) {
            s.wanting = true;
            self.grant(id, queued, deliver);
        }
    }

    /// Stream `id` sent a DATA frame of `payload` bytes against its grant.
    pub fn sent(
        &mut self,
        id: u32,
        payload: u64,
        queued: &SendQueue,
        deliver: &mut impl FnMut(u32, u64),
    ) {
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        let used = payload.min(s.granted);
        s.granted -= used;
        self.granted = less(self.granted, used);
        self.check();
        self.grant(id, queued, deliver);
        self.refill(id, deliver);
    }

    /// Stream `id`'s connection handed back `bytes` it did not use (its socket ran dry): they go
    /// back to both windows they were carved from.
    pub fn hand_back(
        &mut self,
        id: u32,
        bytes: u64,
        queued: &SendQueue,
        deliver: &mut impl FnMut(u32, u64),
    ) {
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        let bytes = bytes.min(s.granted);
        s.granted -= bytes;
        s.avail += bytes;
        s.wanting = false;
        self.window += bytes;
        self.granted = less(self.granted, bytes);
        self.check();
        self.serve_starving(queued, deliver);
        self.refill(id, deliver);
    }

    /// Stream `id` sent its FIN: nothing more is granted to it, and what it held goes back.
    pub fn half_close(&mut self, id: u32, queued: &SendQueue, deliver: &mut impl FnMut(u32, u64)) {
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        s.open = false;
        let unused = std::mem::take(&mut s.granted);
        let standing = std::mem::take(&mut s.standing);
        self.window += unused;
        self.granted = less(self.granted, unused);
        self.standing = less(self.standing, standing);
        self.check();
        self.serve_starving(queued, deliver);
    }

    /// Stream `id` is gone: its unused credit goes back to the tunnel window.
    pub fn remove(&mut self, id: u32, queued: &SendQueue, deliver: &mut impl FnMut(u32, u64)) {
        let Some(s) = self.streams.remove(&id) else {
            return;
        };
        if s.starving {
            self.starving.retain(|x| *x != id);
        }
        self.window += s.granted;
        self.granted = less(self.granted, s.granted);
        self.standing = less(self.standing, s.standing);
        self.check();
        self.serve_starving(queued, deliver);
    }

    /// Frames of a stream that were queued and never sent were dropped: their tunnel credit is
    /// unused.
    pub fn unsent(&mut self, bytes: u64) {
        self.window += bytes;
        self.check();
    }

    /// The peer's WINDOW increment for the tunnel.
    pub fn peer_tunnel_window(
        &mut self,
        increment: u64,
        queued: &SendQueue,
        deliver: &mut impl FnMut(u32, u64),
    ) -> Result<(), Overflow> {
        self.window += increment;
        if self.window > MAX_CREDIT {
            return Err(Overflow);
        }
        self.serve_starving(queued, deliver);
        Ok(())
    }

    /// The peer's WINDOW increment for stream `id` (ignored for a stream that is gone).
    pub fn peer_stream_window(
        &mut self,
        id: u32,
        increment: u64,
        queued: &SendQueue,
        deliver: &mut impl FnMut(u32, u64),
    ) -> Result<(), Overflow> {
        let Some(s) = self.streams.get_mut(&id) else {
            return Ok(());
        };
        s.avail += increment;
        if s.avail + s.granted > MAX_CREDIT {
            return Err(Overflow);
        }
        self.grant(id, queued, deliver);
        self.refill(id, deliver);
        Ok(())
    }

    /// Credit may have come back (a write emptied the queues): serve the starving streams.
    pub fn serve_starving(&mut self, queued: &SendQueue, deliver: &mut impl FnMut(u32, u64)) {
        for _ in 0..self.starving.len() {
            if self.window == 0 || self.room(queued) == 0 {
                break;
            }
            let Some(id) = self.starving.pop_front() else {
                break;
            };
            if let Some(s) = self.streams.get_mut(&id) {
                s.starving = false;
                self.grant(id, queued, deliver);
            }
        }
        self.check();
    }

    /// What more the tunnel may hand its connections: granted and queued stay within the budget.
    fn room(&self, queued: &SendQueue) -> u64 {
        self.budget
            .saturating_sub(self.granted + queued.bytes() as u64)
    }

    /// Tops up the grant of stream `id`, which asked, from its window and the tunnel's.
    fn grant(&mut self, id: u32, queued: &SendQueue, deliver: &mut impl FnMut(u32, u64)) {
        let room = self.room(queued);
        let queued_here = queued.bytes_of(id) as u64;
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        if !s.open || !s.wanting || s.granted >= GRANT_MAX / 2 {
            return;
        }
        let want = (GRANT_MAX - s.granted).min(s.avail);
        if want == 0 {
            return;
        }
        // What we hold towards the peer is bounded by our own budget, not by what it announced;
        // per stream too, so one bulk stream cannot fill the queue.
        let room = room.min(STREAM_SEND_MAX.saturating_sub(s.granted + queued_here));
        let g = want.min(self.window).min(room);
        if g > 0 {
            s.avail -= g;
            s.granted += g;
            self.window -= g;
            self.granted += g;
            deliver(id, g);
        }
        if g < want && !s.starving {
            s.starving = true;
            self.starving.push_back(id);
        }
        self.check();
    }

    /// Tops stream `id`, when it is not asking, back up to its standing grant once it holds less
    /// than half of it, from its window and the tunnel's (not from the send budget: the standing
    /// pool is its own bound). Half, not every byte: a connection sending short requests gets one
    /// grant message per several of them, not one each, and still never asks before a request
    /// of up to half its standing grant.
    pub fn refill(&mut self, id: u32, deliver: &mut impl FnMut(u32, u64)) {
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        if !s.open || s.wanting || s.granted.saturating_mul(2) >= s.standing {
            return;
        }
        let g = (s.standing - s.granted).min(s.avail).min(self.window);
        if g > 0 {
            s.avail -= g;
            s.granted += g;
            self.window -= g;
            self.granted += g;
            deliver(id, g);
        }
        self.check();
    }

    /// Whether every invariant holds (O(streams): for debug assertions and tests).
    pub fn invariants_hold(&self) -> bool {
        let granted: u64 = self.streams.values().map(|s| s.granted).sum();
        let standing: u64 = self.streams.values().map(|s| s.standing).sum();
        let marked = self.streams.values().filter(|s| s.starving).count();
        granted == self.granted
            && standing == self.standing
            && self.standing <= self.pool
            && marked == self.starving.len()
            && self
                .starving
                .iter()
                .all(|id| self.streams.get(id).is_some_and(|s| s.starving))
            && self
                .streams
                .values()
                .all(|s| s.avail + s.granted <= 2 * MAX_CREDIT)
    }

    fn check(&self) {
        debug_assert!(self.invariants_hold(), "send credit: {self:?}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    /// Runs `f` with a deliver callback that records the grants.
    fn record(f: impl FnOnce(&mut dyn FnMut(u32, u64))) -> Vec<(u32, u64)> {
        let mut got = Vec::new();
        f(&mut |id, g| got.push((id, g)));
        got
    }

    fn open_stream(c: &mut SendCredit, id: u32, window: u64) {
        c.add(id);
        c.open(id, window, &SendQueue::default(), &mut |_, _| {});
    }

    #[test]
    fn a_wanting_stream_gets_credit_from_both_windows_within_the_caps() {
        let q = SendQueue::default();
        let mut c = SendCredit::new(1 << 20, 1 << 20);
        open_stream(&mut c, 1, 1 << 20);
        let got = record(|d| c.want(1, &q, &mut |id, g| d(id, g)));
        assert_eq!(got, vec![(1, GRANT_MAX)]);
        assert_eq!(c.window(), (1 << 20) - GRANT_MAX);
        // Sending half of it tops the grant up again.
        let got = record(|d| c.sent(1, GRANT_MAX, &q, &mut |id, g| d(id, g)));
        assert_eq!(got, vec![(1, GRANT_MAX)]);
        assert!(c.invariants_hold());
    }

    #[test]
    fn a_stream_short_of_tunnel_credit_starves_and_is_served_when_it_comes_back() {
        let q = SendQueue::default();
        let mut c = SendCredit::new(10_000, 1 << 20);
        open_stream(&mut c, 1, 1 << 20);
        open_stream(&mut c, 3, 1 << 20);
        let got = record(|d| c.want(1, &q, &mut |id, g| d(id, g)));
        assert_eq!(got, vec![(1, 10_000)]);
        let got = record(|d| c.want(3, &q, &mut |id, g| d(id, g)));
        assert!(got.is_empty(), "no tunnel credit left");
        assert!(c.invariants_hold());
        let got = record(|d| {
            c.peer_tunnel_window(50_000, &q, &mut |id, g| d(id, g))
                .expect("in range")
        });
        assert_eq!(
            got,
            vec![(1, 50_000)],
            "round-robin: the first in line first"
        );
        let got = record(|d| {
            c.peer_tunnel_window(1 << 20, &q, &mut |id, g| d(id, g))
                .expect("in range")
        });
        assert!(got.contains(&(3, GRANT_MAX)), "{got:?}");
        assert!(c.invariants_hold());
    }

    #[test]
    fn handing_back_and_removal_return_credit_to_both_windows() {
        let q = SendQueue::default();
        let mut c = SendCredit::new(1 << 20, 1 << 20);
        open_stream(&mut c, 1, 200_000);
        record(|d| c.want(1, &q, &mut |id, g| d(id, g)));
        c.hand_back(1, 100_000, &q, &mut |_, _| {});
        assert_eq!(c.window(), (1 << 20) - GRANT_MAX + 100_000);
        assert!(c.invariants_hold());
        c.remove(1, &q, &mut |_, _| {});
        assert_eq!(c.window(), 1 << 20, "everything back");
        assert!(c.invariants_hold());
        // A stream that is gone takes no credit and causes no error.
        assert_eq!(c.peer_stream_window(1, 10, &q, &mut |_, _| {}), Ok(()));
    }

    #[test]
    fn standing_grants_come_from_a_bounded_pool_and_go_back_with_the_stream() {
        let q = SendQueue::default();
        let mut c = SendCredit::new(1 << 30, 1 << 20);
        let per_pool = (STANDING_POOL / STANDING_GRANT) as u32;
        for id in 0..per_pool + 4 {
            open_stream(&mut c, 2 * id + 1, 1 << 20);
            let standing = c.give_standing(2 * id + 1);
            assert_eq!(standing.is_some(), id < per_pool, "{id}");
            let got = record(|d| c.refill(2 * id + 1, &mut |s, g| d(s, g)));
            if id < per_pool {
                assert_eq!(got, vec![(2 * id + 1, STANDING_GRANT)]);
            } else {
                assert!(got.is_empty());
            }
        }
        assert!(c.invariants_hold());
        c.half_close(1, &q, &mut |_, _| {});
        assert!(
            c.give_standing(2 * per_pool + 1).is_some(),
            "its place is free again"
        );
        assert!(c.invariants_hold());
    }

    #[test]
    fn a_closed_stream_is_granted_nothing_and_a_peer_past_any_window_is_an_error() {
        let q = SendQueue::default();
        let mut c = SendCredit::new(1 << 20, 1 << 20);
        c.add(1);
        let got = record(|d| c.want(1, &q, &mut |id, g| d(id, g)));
        assert!(got.is_empty(), "not open yet");
        c.open(1, 1 << 20, &q, &mut |_, _| {});
        c.half_close(1, &q, &mut |_, _| {});
        let got = record(|d| c.want(1, &q, &mut |id, g| d(id, g)));
        assert!(got.is_empty(), "FIN sent");
        assert_eq!(
            c.peer_stream_window(1, MAX_CREDIT, &q, &mut |_, _| {}),
            Err(Overflow)
        );
        assert_eq!(
            c.peer_tunnel_window(MAX_CREDIT, &q, &mut |_, _| {}),
            Err(Overflow)
        );
    }

    #[test]
    fn what_is_queued_counts_against_the_budget_and_the_stream_share() {
        let mut q = SendQueue::default();
        q.push(1, Bytes::from(vec![0u8; 200 * 1024]));
        let mut c = SendCredit::new(1 << 30, 1 << 20);
        open_stream(&mut c, 1, 1 << 30);
        let got = record(|d| c.want(1, &q, &mut |id, g| d(id, g)));
        assert_eq!(got, vec![(1, STREAM_SEND_MAX - 200 * 1024)]);
        let tight = SendQueue::default();
        let mut c = SendCredit::new(1 << 30, 64 * 1024);
        open_stream(&mut c, 1, 1 << 30);
        let got = record(|d| c.want(1, &tight, &mut |id, g| d(id, g)));
        assert_eq!(got, vec![(1, 64 * 1024)], "the budget caps it");
        assert!(c.invariants_hold());
    }
}
