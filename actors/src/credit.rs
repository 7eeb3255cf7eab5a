//! Flow-control arithmetic, without actors: a receive window that grows to the path while it
//! limits the sender, and shrinks back when its stream idles.
//!
//! The receiver offers the peer a *target* window: what the peer may have sent and we not yet
//! consumed (`left` + `buffered` never exceeds it). Credit goes back as a WINDOW increment once a
//! quarter of the target can be returned, so a sender limited by the window keeps at least three
//! quarters of it in flight.
//!
//! Growth, after the auto-tuning of HTTP/2 and QUIC implementations (Chromium's QUIC): a sender
//! held back by the window sends it in a burst each round trip, so its quarters are consumed in
//! quick succession; a sender held back by the path delivers a quarter of the window every
//! quarter of `window / rate`. So when credit is due again within [`GROW_WITHIN`] of a round
//! trip of the last increment, the window may be what limits, and the target grows [`GROWTH`]
//! times (up to `max`, within the `room` the caller's budget leaves) — but only while it is below
//! [`BDP_CEILING`] bandwidth-delay products at the rate its bytes are consumed (measured over
//! at least [`RATE_INTERVAL`] or a round trip). Quick quarters alone cannot tell a window-limited
//! sender from a reader that drains a backlog in one go (the scheduler held it back, then let
//! it read several quarters within microseconds); the rate can: such a reader is the limit
//! itself, its rate times the round trip is small, and a larger window would only hold more
//! unread ahead of other streams. The round trip used is the smallest seen on a quiet tunnel, so
//! queueing does not feed growth. A window idle for [`IDLE`] falls back to its initial size;
//! the peer's outstanding credit is then not topped up until it is below the new target. A
//! stalled reader costs at most its current target.

use std::time::{Duration, Instant};

/// The consumption rate is measured over intervals at least this long (or a round trip, if
/// longer), so that bursts of a reader the scheduler held back average out.
pub const RATE_INTERVAL: Duration = Duration::from_millis(10);
/// A window grows only while below this many bandwidth-delay products at its measured rate
/// (eight, not one: the rate lags the window by an interval while it grows, and ramping up
/// quickly matters more than one interval of overshoot).
const BDP_CEILING: f64 = 8.0;

/// A window unused this long shrinks back to its initial size.
pub const IDLE: Duration = Duration::from_secs(1);
/// Credit due again within this share of a round trip (5/16) after the last increment means the
/// window limits the sender: a path-limited sender takes a quarter of `window / rate` per
/// quarter, which is under 5/16 of a round trip only while the window is below 1.25 x BDP.
const GROW_WITHIN: (u32, u32) = (5, 16);
/// What a window-limited target is multiplied by when it grows: once per round trip at most
/// (after a growth, the next quarter is of the larger window, which the sender has not been
/// granted yet). Four, not two: a window grows from 256 KiB to 64 MiB in four round trips
/// instead of eight (200 ms over a 50 ms path instead of 400: a tenth of a 4 s transfer), while
/// the sender's bytes still arrive in a burst; past the path it overshoots to at most four times
/// what it needed instead of twice, within `max` and the tunnel's budget.
const GROWTH: u64 = 4;

/// One receive window: a stream's, or a tunnel's.
#[derive(Debug, Clone)]
pub struct RecvWindow {
    /// What we offer now: the most the peer may have sent that we have not consumed.
    target: u64,
    /// The initial window (announced in the handshake): the target never falls below it.
    min: u64,
    /// The target never grows past it.
    max: u64,
    /// How much the peer may still send.
    left: u64,
    /// Received and not yet consumed.
    buffered: u64,
    /// When the last increment went out: credit due again within two round trips means the
    /// window is what limits the sender.
    last_update: Option<Instant>,
    /// How fast the window's bytes are consumed: growth past a few bandwidth-delay products at
    /// this rate would only queue.
    rate: Rate,
    /// When bytes last arrived or were consumed, for the shrink after [`IDLE`].
    last_active: Instant,
}

impl RecvWindow {
    pub fn new(initial: u64, max: u64, now: Instant) -> RecvWindow {
        RecvWindow {
            target: initial,
            min: initial,
            max: max.max(initial),
            left: initial,
            buffered: 0,
            last_update: None,
            rate: Rate::new(now),
            last_active: now,
        }
    }

    /// `n` bytes arrived; `false` if they overran the window (a protocol violation).
    #[must_use]
    pub fn receive(&mut self, n: u64, now: Instant) -> bool {
        if n > self.left {
            return false;
        }
        self.left -= n;
        self.buffered += n;
        self.last_active = now;
        true
    }

    /// `n` received bytes were consumed. Returns the increment to send the peer, if one is due.
    /// `rtt` is the path's smoothed round trip (no growth until one is known); `room` is how much
    /// the target may grow now, from the budget the caller shares among windows.
    pub fn consume(
        &mut self,
        n: u64,
        now: Instant,
        rtt: Option<Duration>,
        room: u64,
    ) -> Option<u64> {
        self.buffered = self.buffered.saturating_sub(n);
        if idle_since(self.last_active, now) {
            self.target = self.min;
            self.rate = Rate::new(now);
        }
        self.rate.add(n, now, rtt);
        self.last_active = now;
        let mut increment = self.target.saturating_sub(self.left + self.buffered);
        if increment == 0 || increment < self.target / 4 {
            return None;
        }
        if let (Some(last), Some(rtt)) = (self.last_update, rtt) {
            let ceiling = BDP_CEILING * self.rate.per_second() * rtt.as_secs_f64();
            if now.saturating_duration_since(last) < rtt * GROW_WITHIN.0 / GROW_WITHIN.1
                && (self.target as f64) < ceiling
            {
                let grow = (self.target * (GROWTH - 1))
                    .min(self.max - self.target)
                    .min(room);
                self.target += grow;
                increment += grow;
            }
        }
        self.last_update = Some(now);
        self.left += increment;
        Some(increment)
    }

    /// Raises the window to at least `n` (within its maximum): a tunnel's window follows its
    /// largest stream's, so a stream whose own window grew to the path is not then held back by
    /// the tunnel's. The increment follows with the next credit due.
    pub fn raise_to(&mut self, n: u64) {
        self.target = self.target.max(n.min(self.max));
    }

    /// Shrinks an idle window back to its initial size (the credit the peer already holds stays
    /// valid; it is not topped up until below the new target).
    pub fn shrink_if_idle(&mut self, now: Instant) {
        if idle_since(self.last_active, now) {
            self.target = self.min;
            self.rate = Rate::new(now);
        }
    }

    /// The window offered now.
    pub fn target(&self) -> u64 {
        self.target
    }

    /// Received and not consumed.
    pub fn buffered(&self) -> u64 {
        self.buffered
    }
}

/// Whether a window last active at `last` is idle by `now` (an instant and a comparison: a
/// duration between two instants costs several times that, and this runs per consumed frame).
fn idle_since(last: Instant, now: Instant) -> bool {
    last.checked_add(IDLE).is_some_and(|idle| now >= idle)
}

/// The rate a window's bytes are consumed at, over the last whole interval of at least
/// [`RATE_INTERVAL`] (or a round trip, if longer).
#[derive(Debug, Clone, Copy)]
struct Rate {
    /// When the interval being measured began.
    since: Instant,
    /// When it may close: [`RATE_INTERVAL`] after it began, or the round trip once that is known
    /// to be longer. Compared per consumed frame instead of the span since `since`.
    ends: Instant,
    /// Bytes consumed in it so far.
    bytes: u64,
    /// Bytes per second over the last whole interval (0 until one has passed).
    last: f64,
}

impl Rate {
    fn new(now: Instant) -> Rate {
        Rate {
            since: now,
            ends: now.checked_add(RATE_INTERVAL).unwrap_or(now),
            bytes: 0,
            last: 0.0,
        }
    }

    fn add(&mut self, n: u64, now: Instant, rtt: Option<Duration>) {
        self.bytes += n;
        if now < self.ends {
            return;
        }
        let span = now.saturating_duration_since(self.since);
        let least = RATE_INTERVAL.max(rtt.unwrap_or_default());
        if span >= least {
            self.last = self.bytes as f64 / span.as_secs_f64();
            *self = Rate {
                last: self.last,
                ..Rate::new(now)
            };
        } else {
            // A round trip longer than the interval: not before it has passed.
            self.ends = self.since.checked_add(least).unwrap_or(now);
        }
    }

    fn per_second(&self) -> f64 {
        self.last
    }
}

/// The path's round trip from the tunnel's PING/PONG (quiet ones only): the smallest sample,
/// which is the path's own delay (a larger one includes queueing, often our own, and must not feed window growth).
#[derive(Debug, Clone, Copy, Default)]
pub struct Rtt {
    /// The smallest round trip seen so far (`None` until a quiet PONG came back).
    min: Option<Duration>,
}

impl Rtt {
    pub fn sample(&mut self, rtt: Duration) {
        self.min = Some(self.min.map_or(rtt, |m| m.min(rtt)));
    }

    pub fn get(&self) -> Option<Duration> {
        self.min
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KIB: u64 = 1024;

    #[test]
    fn credit_returns_once_a_quarter_is_consumed_and_never_exceeds_the_target() {
        let t0 = Instant::now();
        let mut w = RecvWindow::new(256 * KIB, 256 * KIB, t0);
        assert!(w.receive(256 * KIB, t0));
        assert!(!w.receive(1, t0), "past the window is an overrun");
        assert_eq!(w.consume(32 * KIB, t0, None, 0), None, "an eighth: not yet");
        assert_eq!(w.consume(32 * KIB, t0, None, 0), Some(64 * KIB));
        assert_eq!(w.buffered(), 192 * KIB);
        // Unconsumed bytes are never credited: the peer may send exactly what was consumed.
        assert!(w.receive(64 * KIB, t0));
        assert!(!w.receive(1, t0));
    }

    #[test]
    fn a_window_limited_stream_grows_to_the_max_and_an_idle_one_shrinks() {
        let t0 = Instant::now();
        let rtt = Some(Duration::from_millis(50));
        let mut w = RecvWindow::new(256 * KIB, 4096 * KIB, t0);
        let mut now = t0;
        // Window-limited: the sender's whole window arrives in a burst each round trip, and we
        // consume it as it arrives.
        for _ in 0..12 {
            now += Duration::from_millis(50);
            for _ in 0..8 {
                now += Duration::from_micros(100);
                let chunk = w.left / 4 + 1;
                assert!(w.receive(chunk.min(w.left), now));
                let _ = w.consume(chunk.min(w.buffered()), now, rtt, u64::MAX);
            }
        }
        assert_eq!(w.target(), 4096 * KIB, "grown to the max");
        let fast_end = now;
        // Path-limited (128 KiB per 50 ms round trip, bytes paced by the path, the window twice
        // the bandwidth-delay product): no growth.
        let mut slow = RecvWindow::new(256 * KIB, 4096 * KIB, t0);
        let mut now = t0;
        for _ in 0..400 {
            now += Duration::from_micros(6250);
            assert!(slow.receive(16 * KIB, now));
            let _ = slow.consume(16 * KIB, now, rtt, u64::MAX);
        }
        assert_eq!(slow.target(), 256 * KIB);
        // Idle for a second: back to the initial window, and the peer's credit is not topped up
        // until it falls under it.
        let later = fast_end + IDLE + Duration::from_millis(1);
        let mut idle = w.clone();
        let _ = w.consume(0, later, rtt, u64::MAX);
        assert_eq!(w.target(), 256 * KIB);
        // The periodic check shrinks it without any traffic.
        idle.shrink_if_idle(fast_end + Duration::from_millis(500));
        assert_eq!(idle.target(), 4096 * KIB, "not idle long enough");
        idle.shrink_if_idle(later);
        assert_eq!(idle.target(), 256 * KIB);
    }

    #[test]
    fn a_window_limited_window_grows_fourfold_once_per_round_trip() {
        // The sender's whole window arrives in a burst each 50 ms round trip, consumed as it
        // arrives: its quarters come back microseconds apart, and the window is four times
        // larger after each round, not more (the growth is of credit the sender gets next round).
        let t0 = Instant::now();
        let rtt = Some(Duration::from_millis(50));
        let mut w = RecvWindow::new(256 * KIB, 64 * 1024 * KIB, t0);
        let mut now = t0;
        let mut targets = Vec::new();
        for _ in 0..6 {
            now += Duration::from_millis(50);
            // What the sender held when the round began: credit returned meanwhile is used
            // in the next round, a round trip later.
            let mut burst = w.left;
            while burst > 0 {
                now += Duration::from_micros(20);
                let chunk = burst.min(64 * KIB);
                burst -= chunk;
                assert!(w.receive(chunk, now));
                let _ = w.consume(chunk, now, rtt, u64::MAX);
            }
            targets.push(w.target() / KIB);
        }
        assert_eq!(targets, [1024, 4096, 16384, 65536, 65536, 65536]);
    }

    #[test]
    fn a_reader_draining_a_backlog_in_bursts_does_not_grow_the_window() {
        // The window held in the socket, read in one go every 10 ms (our reader is the limit,
        // not the window): quarters come back microseconds apart, but each round of credit takes
        // 10 ms, ten round trips of this 1 ms path.
        let t0 = Instant::now();
        let rtt = Some(Duration::from_millis(1));
        let mut w = RecvWindow::new(256 * KIB, 64 * 1024 * KIB, t0);
        let mut now = t0;
        for _ in 0..50 {
            now += Duration::from_millis(10);
            let backlog = w.left;
            assert!(w.receive(backlog, now));
            for _ in 0..16 {
                now += Duration::from_micros(5);
                let _ = w.consume(backlog / 16, now, rtt, u64::MAX);
            }
        }
        assert_eq!(w.target(), 256 * KIB);
    }

    #[test]
    fn a_held_back_reader_draining_several_windows_at_once_does_not_grow_the_window() {
        // Every 10 ms our reader gets the CPU and drains four windows in 40 us (the sender
        // refills as fast as credit comes back): its rounds are tiny, but the rate is 100 MB/s,
        // whose bandwidth-delay product on this 0.25 ms path is 25 KB: 256 KiB is past eight.
        let t0 = Instant::now();
        let rtt = Some(Duration::from_micros(250));
        let mut w = RecvWindow::new(256 * KIB, 64 * 1024 * KIB, t0);
        let mut now = t0;
        for _ in 0..50 {
            now += Duration::from_millis(10);
            for _ in 0..16 {
                now += Duration::from_micros(2);
                let n = w.left.min(64 * KIB);
                assert!(w.receive(n, now));
                let _ = w.consume(n, now, rtt, u64::MAX);
            }
        }
        assert_eq!(w.target(), 256 * KIB);
    }

    #[test]
    fn growth_stays_within_the_room_given() {
        let t0 = Instant::now();
        let rtt = Some(Duration::from_millis(50));
        let mut w = RecvWindow::new(256 * KIB, 16384 * KIB, t0);
        let mut now = t0;
        for _ in 0..40 {
            now += Duration::from_micros(100);
            let chunk = w.left.min(w.target() / 2);
            assert!(w.receive(chunk, now));
            let _ = w.consume(chunk, now, rtt, 0);
        }
        assert_eq!(w.target(), 256 * KIB, "no room, no growth");
    }

    #[test]
    fn rtt_is_the_smallest_sample() {
        let mut r = Rtt::default();
        assert_eq!(r.get(), None);
        r.sample(Duration::from_millis(80));
        r.sample(Duration::from_millis(50));
        r.sample(Duration::from_millis(300));
        assert_eq!(r.get(), Some(Duration::from_millis(50)));
    }
}
