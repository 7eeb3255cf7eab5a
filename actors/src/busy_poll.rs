//! Busy polling on a data thread (`[node] busy_poll_us`): after the thread's streams or tunnels
//! read a small piece (an exchange's, not bulk's), it keeps looking for I/O events without
//! sleeping until that long passes with nothing read, and only then blocks in `epoll_wait`.
//!
//! Why: a request through a tunnel crosses four processes (client, node A, node B, server), and
//! on a virtual machine each one that had gone to sleep is woken through the host: tens of µs a
//! time, twice per node per exchange, where the nodes' own work is a few µs. The reply to a
//! request comes back to the node that forwarded it within tens of µs, so a node still polling
//! finds it without being woken, and so does the next request of a client that asks at once.
//! Measured on a 2-core VM (`menet-bench --latency-only`, 64 B exchanges one after another):
//! menet p50 22–30 µs with 50 µs of polling, 96–105 without, rathole 80–94 in the same runs.
//!
//! What it costs: CPU, at most the budget after each small read on each data thread (none
//! while the node is idle, none added while it is busy). So a thread polls only after the reads
//! that pay: for each kind of read (a stream's, the tunnel's) it learns whether another read
//! followed within the budget lately ([`Payoff`]). Node A of a client that pauses between
//! exchanges polls after the request, which the reply follows at once, and sleeps after the
//! reply; node B the other way round; neither polls after a request to a server that takes
//! ms. One exchange a ms (the bench's rows "64 B exchanges one per ms"): both nodes' CPU per
//! exchange 91–107 µs against 159–161 when every small read was polled after, and 89 with
//! polling off (rathole 75–84); p50 123–129 µs against 134 and 158–162. When the cores are
//! needed elsewhere it stops, in three ways:
//! - each turn yields the core (`sched_yield`); a yield that ran another thread ends the round,
//!   as the core is then not going idle and a sleep costs a context switch, not a wake-up;
//! - a yield that ran others for long ([`CONTENDED`]), or yields that often ran others even
//!   briefly ([`Contention`]), mean the cores are saturated: no polling for [`BACKOFF`], or the
//!   poller would spend the priority its thread needs to forward a reply at once (p99 beside
//!   four bulk downloads went from 250–400 µs to 1 ms without this) and a context switch a
//!   turn (requests/s through a pair, 32 connections on 2 cores: 64k with it, 70–74k without);
//! - a thread that read bulk lately ([`BULK_QUIET`]) does not poll: bulk needs no wake-up saved.
//!
//! A turn polls the sockets once: tokio's `yield_now` has the runtime look for events without
//! blocking, run what they woke, then poll the poller again.
//!
//! Lifecycle: [`spin`] runs as a task on each data thread for the thread's life. It sleeps until
//! [`read_something`] wakes it, polls while [`Poller`] says so, then sleeps again. Each read it
//! sees teaches the poller about the read before: found while polling, it paid; the budget
//! passing first, it did not; found after a sleep, it would have paid if it came within the
//! budget and a wake-up ([`WAKE_UP`]).

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::AtomicU64;
use std::sync::LazyLock;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;

thread_local! {
    /// Small reads on this thread so far: the poller compares it to tell that something came.
    static READS: Cell<u64> = const { Cell::new(0) };
    /// Where the last small read came from: the poller learns what follows each kind.
    static LAST_FROM: Cell<ReadFrom> = const { Cell::new(ReadFrom::Stream) };
    /// When this thread last read a bulk-sized piece ([`SMALL_READ`]); None: never.
    static LAST_BULK: Cell<Option<Instant>> = const { Cell::new(None) };
    /// The sleeping poller's waker; taken (None) while it polls, so a read then costs no wake-up.
    static SLEEPING: RefCell<Option<Waker>> = const { RefCell::new(None) };
    /// Until when this thread's poller holds the cores saturated ([`cores_saturated`]).
    static SATURATED_UNTIL: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Whether this thread's poller found the cores saturated within its last back-off
/// ([`BACKOFF`]). A connection's short frame then waits for its tunnel's writer, which sends it
/// with the others of its pass in one write, instead of making a system call of its own
/// (`connection/upstream.rs`): wrk and nginx through a pair, 32 connections on 2 cores, 74,017 -
/// 75,414 requests/s against 69,354 - 72,729 when the frames went straight to the socket, the
/// two nodes' CPU per request 12.5 - 12.6 us against 13.1 - 13.4. Never, on a thread that does
/// not poll.
pub fn cores_saturated() -> bool {
    SATURATED_UNTIL
        .with(Cell::get)
        .is_some_and(|until| Instant::now() < until)
}

/// What the data threads' polling ran and lasted, node-wide: `menet_busy_poll_rounds_total` and
/// `menet_busy_poll_seconds_total` in `GET /metrics` (`crate::metrics` registers them).
pub struct PollCounts {
    /// Rounds of polling, so an operator sees how often it ran.
    pub rounds: Counter,
    /// How long they lasted, from the read that started each to its end, so an operator sees
    /// what polling costs on this node's traffic.
    pub seconds: Counter<f64, AtomicU64>,
}

/// The node's [`PollCounts`].
pub fn counts() -> &'static PollCounts {
    static COUNTS: LazyLock<PollCounts> = LazyLock::new(|| PollCounts {
        rounds: Counter::default(),
        seconds: Counter::default(),
    });
    &COUNTS
}

/// Tests: holds this thread's cores saturated until `until` (None: not saturated).
#[cfg(test)]
pub fn saturate_for_tests(until: Option<Instant>) {
    SATURATED_UNTIL.with(|u| u.set(until));
}

/// A read of at most this many bytes is an exchange's; a larger one is bulk's. Bulk moves a
/// window at a time, for which one wake-up costs little, and a thread polling for it would
/// only take the cores its own readers and writers need.
pub const SMALL_READ: usize = 16 * 1024;

/// A thread that read bulk within this long does not poll: its sleeps are short anyway, and
/// the cores are busy.
pub const BULK_QUIET: Duration = Duration::from_millis(1);

/// Where a small read came from. On a node a request and its reply come from different kinds
/// (node A: the request from a stream, the reply from the tunnel; node B the other way round),
/// so the poller learns for each kind whether another read follows soon.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadFrom {
    /// A stream's socket: a client's or a server's bytes.
    Stream,
    /// The tunnel's socket: the peer node's frame.
    Tunnel,
}

/// A stream or tunnel on this thread read `bytes` from its socket: a small read is counted and
/// wakes the poller if it sleeps; a bulk one keeps the thread from polling for a while.
pub fn read_something(bytes: usize, from: ReadFrom) {
    if bytes > SMALL_READ {
        LAST_BULK.with(|b| b.set(Some(Instant::now())));
        return;
    }
    READS.with(|r| r.set(r.get().wrapping_add(1)));
    LAST_FROM.with(|f| f.set(from));
    SLEEPING.with(|s| {
        if let Some(waker) = s.borrow_mut().take() {
            waker.wake();
        }
    });
}

/// A `sched_yield` that returns later than this ran another thread for more than a switch: the
/// core is wanted, so this round of polling ends. One that finds nothing else to run returns
/// within a µs or two; one that switches to a thread which gives the core straight back (another
/// poller, a process that reads one small piece and blocks) within 5 to 12 µs on a virtual
/// machine. Those brief ones are left out: counted, they held the poller of a node that shares
/// its core with the client and the server near the saturation mark ([`Contention`]), so it
/// backed off for good, its core looked idle to the scheduler, and the client and the server
/// stayed there while the other node kept a core to itself. Exchanges one after another then
/// took 57 - 61 µs instead of 23 - 33 in 11 fresh pairs of 30 (none of 30 with this bound).
pub const CORE_WANTED: Duration = Duration::from_micros(15);

/// A `sched_yield` that returns later than this ran threads with long bursts of work: the cores
/// are saturated, so the thread stops polling for [`BACKOFF`]. A thread that polls through
/// such a time is charged for it by the scheduler, and then waits behind those threads when it
/// has a reply to forward (measured: a 64 B exchange beside four bulk downloads, p99 about
/// 1 ms with polling against 250–400 µs without).
pub const CONTENDED: Duration = Duration::from_micros(100);

/// How long a thread does not poll after it found the cores saturated.
pub const BACKOFF: Duration = Duration::from_millis(10);

/// What a wake-up of a sleeping thread may take on a virtual machine (through the host): a read
/// that came this long past the budget after one the thread did not poll for would have come
/// within the budget to a thread polling for it.
pub const WAKE_UP: Duration = Duration::from_micros(100);

/// Whether polling after reads of one kind has paid lately: a count, saturating at
/// [`Payoff::MAX`], up for each read of that kind that another read followed soon, down for each
/// that none did. It pays from [`Payoff::PAYS`] up: two misses in a row stop polling after that
/// kind, one or two hits start it again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Payoff(u8);

impl Payoff {
    /// The most the count holds: how many misses polling outlives.
    pub const MAX: u8 = 3;
    /// From this count up, polling after this kind of read pays.
    pub const PAYS: u8 = 2;

    /// Whether to poll after a read of this kind.
    pub fn pays(self) -> bool {
        self.0 >= Payoff::PAYS
    }

    /// A read of this kind was `followed` by another soon, or not.
    pub fn learn(&mut self, followed: bool) {
        self.0 = if followed {
            (self.0 + 1).min(Payoff::MAX)
        } else {
            self.0.saturating_sub(1)
        };
        debug_assert!(self.0 <= Payoff::MAX, "a payoff of {}", self.0);
    }
}

impl Default for Payoff {
    /// Polling pays until reads of the kind show otherwise.
    fn default() -> Payoff {
        Payoff(Payoff::MAX)
    }
}

/// How often a turn's yield ran another thread lately ([`CORE_WANTED`]): a share of turns in
/// 1/[`Contention::ONE`]s, each turn weighing 1/64 (so the last hundred or so count). A thread
/// whose yields often run others is on saturated cores even when each of those ran briefly:
/// 64 B exchanges one after another give the core away in about 1 turn of 100, 32 connections
/// of requests on 2 cores in about 27 (measured). Polling there saves no wake-up of an idle
/// core and costs a context switch a turn; with it requests/s through a pair fell by a sixth.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Contention(u16);

impl Contention {
    /// The share when every turn ran another thread.
    pub const ONE: u16 = 1 << 12;
    /// What one turn weighs, as a shift: 1/64.
    const WEIGHT: u32 = 6;
    /// From this share up (1 turn in 10) the cores count as saturated.
    pub const SATURATED: u16 = Contention::ONE / 10;

    /// A turn whose yield ran another thread (`gave_core`), or not.
    pub fn turn(&mut self, gave_core: bool) {
        let gained = if gave_core {
            Contention::ONE >> Contention::WEIGHT
        } else {
            0
        };
        self.0 = self.0 - (self.0 >> Contention::WEIGHT) + gained;
        debug_assert!(self.0 <= Contention::ONE, "a share of {}", self.0);
    }

    /// Whether the cores count as saturated.
    pub fn saturated(self) -> bool {
        self.0 >= Contention::SATURATED
    }
}

/// A data thread's polling, without the runtime: whether to poll after a read, and on after
/// each turn, until `budget` has passed since the last read; and, for each kind of read,
/// whether another read has followed soon lately ([`Payoff`]), so a thread polls after the
/// reads that are answered within the budget (a request the server answers at once) and not
/// after those that are not (a reply, before a client that pauses; a request to a slow server).
#[derive(Debug)]
pub struct Poller {
    /// How long to poll after the last read.
    budget: Duration,
    /// The small-read count when the poller last looked.
    seen: u64,
    /// When it last saw the count move.
    last_read: Instant,
    /// The kind of that read while what follows it is not yet known; None once it is.
    awaited: Option<ReadFrom>,
    /// Whether polling after a stream's read pays, then after the tunnel's.
    payoff: [Payoff; 2],
    /// No polling before this: the cores were saturated lately.
    quiet_until: Option<Instant>,
    /// How often the turns' yields ran other threads lately, the other sign of saturation.
    contention: Contention,
}

impl Poller {
    /// A poller that polls `budget` past each small read.
    pub fn new(budget: Duration, now: Instant) -> Poller {
        Poller {
            budget,
            seen: 0,
            last_read: now,
            awaited: None,
            payoff: [Payoff::default(); 2],
            quiet_until: None,
            contention: Contention::default(),
        }
    }

    /// Whether polling after a read from `from` pays, as far as the poller learnt.
    pub fn pays_after(&self, from: ReadFrom) -> bool {
        self.payoff[from as usize].pays()
    }

    /// A read from `from` came at `now`; `soon` tells whether it came soon enough after the
    /// awaited one for polling to have found it. It is awaited in turn.
    fn learn(&mut self, from: ReadFrom, now: Instant, soon: bool) {
        if let Some(before) = self.awaited {
            self.payoff[before as usize].learn(soon);
        }
        self.awaited = Some(from);
        self.last_read = now;
    }

    /// A small read (the count at `reads`, the last from `from`) woke the sleeping poller at
    /// `now`; bulk was last read at `last_bulk`: whether to poll.
    pub fn start(
        &mut self,
        reads: u64,
        from: ReadFrom,
        last_bulk: Option<Instant>,
        now: Instant,
    ) -> bool {
        self.seen = reads;
        // The thread slept since the awaited read: the wake-up is part of the gap.
        let gap = now.saturating_duration_since(self.last_read);
        self.learn(from, now, gap <= self.budget + WAKE_UP);
        let quiet = self.quiet_until.is_some_and(|until| now < until);
        !quiet && !bulk_lately(last_bulk, now) && !self.budget.is_zero() && self.pays_after(from)
    }

    /// After a turn of polling that gave the core away for `gave_away`: whether to poll on.
    /// Longer than [`CORE_WANTED`] means another thread ran meanwhile, so the core is not
    /// going idle and a sleep would cost a context switch, not a wake-up of an idle core;
    /// longer than [`CONTENDED`], or often longer than [`CORE_WANTED`] ([`Contention`]), that
    /// the cores are saturated.
    ///
    /// A read whose kind does not pay ends the round too; so does the budget passing without a
    /// read, which teaches the poller that the read before did not pay.
    pub fn poll_on(
        &mut self,
        reads: u64,
        from: ReadFrom,
        last_bulk: Option<Instant>,
        now: Instant,
        gave_away: Duration,
    ) -> bool {
        if reads != self.seen {
            self.seen = reads;
            // Found while polling: the awaited read paid.
            self.learn(from, now, true);
            if !self.pays_after(from) {
                return false;
            }
        }
        debug_assert!(now >= self.last_read, "the clock went back");
        self.contention.turn(gave_away > CORE_WANTED);
        if gave_away > CONTENDED || self.contention.saturated() {
            self.quiet_until = Some(now + BACKOFF);
        }
        if bulk_lately(last_bulk, now) || gave_away > CORE_WANTED {
            // Cut short: the next read's gap tells whether the awaited one would have paid.
            return false;
        }
        if now.saturating_duration_since(self.last_read) >= self.budget {
            // Polled through the budget for nothing: the awaited read did not pay.
            if let Some(before) = self.awaited.take() {
                self.payoff[before as usize].learn(false);
            }
            return false;
        }
        true
    }
}

/// Whether the thread read bulk within [`BULK_QUIET`] of `now`.
fn bulk_lately(last_bulk: Option<Instant>, now: Instant) -> bool {
    last_bulk.is_some_and(|at| now.saturating_duration_since(at) < BULK_QUIET)
}

/// The data thread's poller: sleeps until something small is read, then polls for `budget`
/// past the last read, as [`Poller`] decides. Never ends; dropped with the thread's tasks.
pub async fn spin(budget: Duration) {
    let mut poller = Poller::new(budget, Instant::now());
    loop {
        ReadSince(READS.with(Cell::get)).await;
        let started = Instant::now();
        let (reads, from, bulk) = (
            READS.with(Cell::get),
            LAST_FROM.with(Cell::get),
            LAST_BULK.with(Cell::get),
        );
        if !poller.start(reads, from, bulk, started) {
            continue;
        }
        loop {
            // Another thread that wants this core runs first; then the runtime polls the
            // sockets without blocking, runs what they woke, and polls this task again.
            let before = Instant::now();
            std::thread::yield_now();
            let now = Instant::now();
            let (reads, from, bulk) = (
                READS.with(Cell::get),
                LAST_FROM.with(Cell::get),
                LAST_BULK.with(Cell::get),
            );
            let on = poller.poll_on(reads, from, bulk, now, now - before);
            SATURATED_UNTIL.with(|u| u.set(poller.quiet_until));
            if !on {
                counts().rounds.inc();
                counts().seconds.inc_by((now - started).as_secs_f64());
                break;
            }
            tokio::task::yield_now().await;
        }
    }
}

/// Ready once the thread's read count has moved past the one it holds.
struct ReadSince(u64);

impl Future for ReadSince {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if READS.with(Cell::get) != self.0 {
            return Poll::Ready(());
        }
        SLEEPING.with(|s| *s.borrow_mut() = Some(cx.waker().clone()));
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: ReadFrom = ReadFrom::Stream;
    const T: ReadFrom = ReadFrom::Tunnel;
    /// A yield that ran nothing else.
    const IDLE: Duration = Duration::from_micros(1);

    /// A poller with a 50 µs budget, made at some instant t0, and the instant `n` µs after t0.
    fn poller_at_t0() -> (Poller, impl Fn(u64) -> Instant) {
        let t0 = Instant::now();
        let poller = Poller::new(Duration::from_micros(50), t0);
        (poller, move |n| t0 + Duration::from_micros(n))
    }

    #[test]
    fn a_payoff_counts_up_and_down_within_its_bounds() {
        let mut payoff = Payoff::default();
        assert!(payoff.pays());
        payoff.learn(true);
        assert_eq!(payoff, Payoff(Payoff::MAX));
        payoff.learn(false);
        assert!(payoff.pays());
        payoff.learn(false);
        assert!(!payoff.pays());
        payoff.learn(false);
        payoff.learn(false);
        assert_eq!(payoff, Payoff(0));
        payoff.learn(true);
        assert!(!payoff.pays());
        payoff.learn(true);
        assert!(payoff.pays());
    }

    /// Node A of exchanges one a ms: a request from a stream, its reply from the tunnel 30 µs
    /// later, then nothing until the next request. Polling after the request pays; after the
    /// reply it does not, and the poller learns to stop at the reply.
    #[test]
    fn the_poller_learns_to_stop_at_a_reply_a_pausing_client_does_not_follow() {
        let (mut poller, us) = poller_at_t0();
        let mut reads = 0;
        let mut ends_at_reply = Vec::new();
        for exchange in 0..5u64 {
            let at = exchange * 1000;
            reads += 1;
            assert!(poller.start(reads, S, None, us(at)), "exchange {exchange}");
            assert!(poller.poll_on(reads, S, None, us(at + 10), IDLE));
            reads += 1;
            let on = poller.poll_on(reads, T, None, us(at + 30), IDLE);
            ends_at_reply.push(!on);
            if on {
                assert!(poller.poll_on(reads, T, None, us(at + 60), IDLE));
                assert!(!poller.poll_on(reads, T, None, us(at + 80), IDLE));
            }
        }
        assert_eq!(ends_at_reply, [false, false, true, true, true]);
        assert!(poller.pays_after(S));
        assert!(!poller.pays_after(T));
    }

    /// The same poller, once the client asks again at once: the reply is followed within the
    /// budget and the wake-up, even unpolled, and polling after it starts again.
    #[test]
    fn the_poller_polls_after_replies_again_once_a_request_follows_each_at_once() {
        let (mut poller, us) = poller_at_t0();
        // Replies that no request follows for a ms.
        for (reads, at) in [(1, 0), (2, 1000), (3, 2000)] {
            if poller.start(reads, T, None, us(at)) {
                assert!(!poller.poll_on(reads, T, None, us(at + 50), IDLE));
            }
        }
        assert!(!poller.pays_after(T));
        // Requests 80 µs after replies the thread slept through (a wake-up's worth late), and
        // replies 80 µs after them.
        let mut at = 3000;
        for reads in 4..10 {
            let from = if reads % 2 == 0 { S } else { T };
            poller.start(reads, from, None, us(at));
            at += 80;
        }
        assert!(poller.pays_after(T));
        assert!(poller.pays_after(S));
    }

    /// A request to a server that answers in 5 ms: polling after it goes dry twice, then the
    /// thread sleeps after requests at once.
    #[test]
    fn the_poller_stops_polling_after_requests_a_slow_server_answers() {
        let (mut poller, us) = poller_at_t0();
        let mut polled = Vec::new();
        for exchange in 0..4u64 {
            let at = exchange * 10_000;
            let reads = exchange * 2 + 1;
            let polls = poller.start(reads, S, None, us(at));
            polled.push(polls);
            if polls {
                assert!(!poller.poll_on(reads, S, None, us(at + 50), IDLE));
            }
            // The reply, 5 ms on: the thread slept.
            poller.start(reads + 1, T, None, us(at + 5000));
            poller.poll_on(reads + 1, T, None, us(at + 5050), IDLE);
        }
        assert_eq!(polled, [true, true, false, false]);
    }

    #[test]
    fn polling_goes_on_until_the_budget_passes_without_a_read() {
        let (mut poller, us) = poller_at_t0();
        assert!(poller.start(7, S, None, us(0)));
        assert!(poller.poll_on(7, S, None, us(10), IDLE));
        assert!(poller.poll_on(7, S, None, us(49), IDLE));
        // A read at 40 µs: 50 more from there.
        assert!(poller.start(7, S, None, us(0)));
        assert!(poller.poll_on(8, S, None, us(40), IDLE));
        assert!(poller.poll_on(8, S, None, us(89), IDLE));
        assert!(!poller.poll_on(8, S, None, us(90), IDLE));
        // Nothing read: the budget from the start.
        assert!(poller.start(8, S, None, us(0)));
        assert!(!poller.poll_on(8, S, None, us(50), IDLE));
        // No budget, no polling.
        assert!(!Poller::new(Duration::ZERO, us(0)).start(1, S, None, us(0)));
    }

    #[test]
    fn polling_stops_when_another_thread_wants_the_core_and_backs_off_when_cores_are_busy() {
        let (mut poller, us) = poller_at_t0();
        let at = us(5);
        assert!(poller.start(7, S, None, us(0)));
        assert!(poller.poll_on(8, S, None, at, CORE_WANTED));
        // Another thread ran: this round ends, the next one polls.
        assert!(!poller.poll_on(9, S, None, at, CORE_WANTED + Duration::from_micros(1)));
        assert!(poller.start(9, S, None, at));
        // Threads with long bursts ran: no polling for the back-off.
        let busy = at + CONTENDED;
        assert!(!poller.poll_on(9, S, None, busy, CONTENDED + Duration::from_micros(1)));
        assert!(!poller.start(10, S, None, busy + BACKOFF - Duration::from_micros(1)));
        assert!(poller.start(10, S, None, busy + BACKOFF));
    }

    /// A yield that switched to a thread which handed the core straight back (12 µs on a VM)
    /// neither ends the round nor counts towards saturation, however often it happens.
    #[test]
    fn brief_switches_neither_end_a_round_nor_saturate() {
        let (mut poller, us) = poller_at_t0();
        let brief = Duration::from_micros(12);
        assert!(brief <= CORE_WANTED);
        let mut reads = 1;
        assert!(poller.start(reads, S, None, us(0)));
        for at in (10..100_000).step_by(10) {
            reads += 1;
            assert!(poller.poll_on(reads, S, None, us(at), brief), "at {at} µs");
        }
        assert!(!poller.contention.saturated());
        assert!(poller.quiet_until.is_none());
    }

    #[test]
    fn a_contention_share_follows_how_often_turns_ran_others_within_its_bounds() {
        let mut share = Contention::default();
        assert!(!share.saturated());
        // Exchanges one after another: about 1 turn in 100 ran another thread.
        for turn in 0..10_000 {
            share.turn(turn % 100 == 0);
            assert!(!share.saturated(), "turn {turn}");
        }
        // Requests on saturated cores: about 27 in 100.
        let saturated_at = (0..1000).position(|turn| {
            share.turn(turn % 100 < 27);
            share.saturated()
        });
        assert!(saturated_at.is_some_and(|t| t < 100), "{saturated_at:?}");
        // Every turn: the share stays within one.
        for _ in 0..1000 {
            share.turn(true);
        }
        assert_eq!(share, Contention(Contention::ONE));
        // Turns that run nothing else bring it down within a couple of hundred.
        let calm_at = (0..1000).position(|_| {
            share.turn(false);
            !share.saturated()
        });
        assert!(calm_at.is_some_and(|t| t < 200), "{calm_at:?}");
    }

    #[test]
    fn polling_backs_off_when_its_yields_often_run_other_threads() {
        let (mut poller, us) = poller_at_t0();
        let brief = CORE_WANTED + Duration::from_micros(5);
        let mut at = 0;
        let mut reads = 0;
        // Each round a read, an idle turn, then a turn another thread took briefly: rounds end
        // one by one, until the share of such turns says the cores are saturated.
        let mut rounds = 0;
        loop {
            reads += 1;
            at += 20;
            if !poller.start(reads, S, None, us(at)) {
                break;
            }
            assert!(poller.poll_on(reads, S, None, us(at + 2), IDLE));
            assert!(!poller.poll_on(reads, S, None, us(at + 17), brief));
            rounds += 1;
            assert!(rounds < 100, "never backed off");
        }
        assert!(rounds > 3, "backed off after {rounds} rounds");
        // No polling for the back-off, then polling again.
        let before_the_end = us(at) + BACKOFF - Duration::from_micros(20);
        assert!(!poller.start(reads + 1, S, None, before_the_end));
        assert!(poller.start(reads + 2, S, None, us(at) + BACKOFF));
    }

    #[test]
    fn cores_count_as_saturated_until_the_back_off_ends() {
        assert!(!cores_saturated());
        saturate_for_tests(Some(Instant::now() + BACKOFF));
        assert!(cores_saturated());
        saturate_for_tests(Some(Instant::now()));
        assert!(!cores_saturated());
        saturate_for_tests(None);
        assert!(!cores_saturated());
    }

    #[test]
    fn a_thread_that_read_bulk_lately_does_not_poll() {
        let (mut poller, us) = poller_at_t0();
        let at = us(5);
        assert!(!poller.start(8, S, Some(us(0)), at));
        assert!(poller.start(8, S, None, at));
        assert!(!poller.poll_on(8, S, Some(at), at, IDLE));
        let later = at + BULK_QUIET;
        assert!(poller.start(9, S, Some(at), later));
        assert!(poller.poll_on(9, S, Some(at), later, IDLE));
    }

    #[test]
    fn a_read_wakes_the_sleeping_poller_once_and_a_later_one_finds_it_awake() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;
        use std::task::Wake;
        struct Count(AtomicUsize);
        impl Wake for Count {
            fn wake(self: Arc<Self>) {
                self.0.fetch_add(1, Ordering::Relaxed);
            }
        }
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        let mut sleep = ReadSince(READS.with(Cell::get));
        assert!(Pin::new(&mut sleep).poll(&mut cx).is_pending());
        // A bulk read neither counts nor wakes it.
        read_something(SMALL_READ + 1, S);
        assert_eq!(count.0.load(Ordering::Relaxed), 0);
        assert!(Pin::new(&mut sleep).poll(&mut cx).is_pending());
        read_something(64, S);
        assert_eq!(count.0.load(Ordering::Relaxed), 1);
        assert!(Pin::new(&mut sleep).poll(&mut cx).is_ready());
        // While the poller polls, a read only counts.
        read_something(64, S);
        assert_eq!(count.0.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn the_poller_sleeps_until_a_read_then_sleeps_again() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .expect("runtime");
        let local = tokio::task::LocalSet::new();
        local.block_on(&rt, async {
            let rounds = counts().rounds.get();
            let poller = tokio::task::spawn_local(spin(Duration::from_millis(20)));
            // Asleep: the waker is kept.
            tokio::task::yield_now().await;
            assert!(SLEEPING.with(|s| s.borrow().is_some()));
            read_something(64, S);
            // Woken: the waker is taken. It polls (or, on a busy machine, stops at once), then
            // sleeps again: the waker is kept once more.
            assert!(SLEEPING.with(|s| s.borrow().is_none()));
            let deadline = Instant::now() + Duration::from_secs(5);
            while SLEEPING.with(|s| s.borrow().is_none()) {
                assert!(Instant::now() < deadline, "the poller never slept again");
                tokio::task::yield_now().await;
            }
            // The round is counted (other tests may count theirs too).
            assert!(counts().rounds.get() > rounds);
            poller.abort();
        });
    }
}
