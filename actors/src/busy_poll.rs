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
//! while the node is idle, none added while it is busy). Where the nodes sleep between
//! exchanges it is twice the CPU for 20–28 µs less: one exchange a ms, both nodes' CPU per
//! exchange 161–170 µs against 91 with polling off (rathole 84–86), p50 134–142 µs against 162
//! (the bench's rows "64 B exchanges one per ms"). When the cores are needed elsewhere it stops,
//! in three ways:
//! - each turn yields the core (`sched_yield`); a yield that ran another thread ends the round,
//!   as the core is then not going idle and a sleep costs a context switch, not a wake-up;
//! - a yield that ran others for long ([`CONTENDED`]) means the cores are saturated: no polling
//!   for [`BACKOFF`], or the poller would spend the priority its thread needs to forward a
//!   reply at once (p99 beside four bulk downloads went from 250–400 µs to 1 ms without this);
//! - a thread that read bulk lately ([`BULK_QUIET`]) does not poll: bulk needs no wake-up saved.
//!
//! A turn polls the sockets once: tokio's `yield_now` has the runtime look for events without
//! blocking, run what they woke, then poll the poller again.
//!
//! Lifecycle: [`spin`] runs as a task on each data thread for the thread's life. It sleeps until
//! [`read_something`] wakes it, polls while [`Poller`] says so, then sleeps again.

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
    /// When this thread last read a bulk-sized piece ([`SMALL_READ`]); None: never.
    static LAST_BULK: Cell<Option<Instant>> = const { Cell::new(None) };
    /// The sleeping poller's waker; taken (None) while it polls, so a read then costs no wake-up.
    static SLEEPING: RefCell<Option<Waker>> = const { RefCell::new(None) };
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

/// A read of at most this many bytes is an exchange's; a larger one is bulk's. Bulk moves a
/// window at a time, for which one wake-up costs little, and a thread polling for it would
/// only take the cores its own readers and writers need.
pub const SMALL_READ: usize = 16 * 1024;

/// A thread that read bulk within this long does not poll: its sleeps are short anyway, and
/// the cores are busy.
pub const BULK_QUIET: Duration = Duration::from_millis(1);

/// A stream or tunnel on this thread read `bytes` from its socket: a small read is counted and
/// wakes the poller if it sleeps; a bulk one keeps the thread from polling for a while.
pub fn read_something(bytes: usize) {
    if bytes > SMALL_READ {
        LAST_BULK.with(|b| b.set(Some(Instant::now())));
        return;
    }
    READS.with(|r| r.set(r.get().wrapping_add(1)));
    SLEEPING.with(|s| {
        if let Some(waker) = s.borrow_mut().take() {
            waker.wake();
        }
    });
}

/// A `sched_yield` that returns later than this ran another thread: the core is wanted, so this
/// round of polling ends. One that finds nothing else to run returns within a µs or two.
pub const CORE_WANTED: Duration = Duration::from_micros(10);

/// A `sched_yield` that returns later than this ran threads with long bursts of work: the cores
/// are saturated, so the thread stops polling for [`BACKOFF`]. A thread that polls through
/// such a time is charged for it by the scheduler, and then waits behind those threads when it
/// has a reply to forward (measured: a 64 B exchange beside four bulk downloads, p99 about
/// 1 ms with polling against 250–400 µs without).
pub const CONTENDED: Duration = Duration::from_micros(100);

/// How long a thread does not poll after it found the cores saturated.
pub const BACKOFF: Duration = Duration::from_millis(10);

/// A data thread's polling, without the runtime: whether to poll after a read, and on after
/// each turn, until `budget` has passed since the last read.
#[derive(Debug)]
pub struct Poller {
    /// How long to poll after the last read.
    budget: Duration,
    /// The small-read count when the poller last looked.
    seen: u64,
    /// When it last saw the count move.
    last_read: Instant,
    /// No polling before this: the cores were saturated lately.
    quiet_until: Option<Instant>,
}

impl Poller {
    /// A poller that polls `budget` past each small read.
    pub fn new(budget: Duration, now: Instant) -> Poller {
        Poller {
            budget,
            seen: 0,
            last_read: now,
            quiet_until: None,
        }
    }

    /// A small read woke the poller at `now` (the count at `reads`; bulk last read at
    /// `last_bulk`): whether to poll.
    pub fn start(&mut self, reads: u64, last_bulk: Option<Instant>, now: Instant) -> bool {
        self.seen = reads;
        self.last_read = now;
        let quiet = self.quiet_until.is_some_and(|until| now < until);
        !quiet && !bulk_lately(last_bulk, now) && !self.budget.is_zero()
    }

    /// After a turn of polling that gave the core away for `gave_away`: whether to poll on.
    /// Longer than [`CORE_WANTED`] means another thread ran meanwhile, so the core is not
    /// going idle and a sleep would cost a context switch, not a wake-up of an idle core;
    /// longer than [`CONTENDED`], that the cores are saturated.
    pub fn poll_on(
        &mut self,
        reads: u64,
        last_bulk: Option<Instant>,
        now: Instant,
        gave_away: Duration,
    ) -> bool {
        if reads != self.seen {
            self.seen = reads;
            self.last_read = now;
        }
        debug_assert!(now >= self.last_read, "the clock went back");
        if gave_away > CONTENDED {
            self.quiet_until = Some(now + BACKOFF);
        }
        !bulk_lately(last_bulk, now)
            && gave_away <= CORE_WANTED
            && now.saturating_duration_since(self.last_read) < self.budget
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
        if !poller.start(READS.with(Cell::get), LAST_BULK.with(Cell::get), started) {
            continue;
        }
        loop {
            // Another thread that wants this core runs first; then the runtime polls the
            // sockets without blocking, runs what they woke, and polls this task again.
            let before = Instant::now();
            std::thread::yield_now();
            let now = Instant::now();
            let (reads, bulk) = (READS.with(Cell::get), LAST_BULK.with(Cell::get));
            if !poller.poll_on(reads, bulk, now, now - before) {
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

    #[test]
    fn polling_goes_on_until_the_budget_passes_without_a_read() {
        let t0 = Instant::now();
        let us = |n| t0 + Duration::from_micros(n);
        let idle = Duration::from_micros(1);
        let mut poller = Poller::new(Duration::from_micros(50), t0);
        assert!(poller.start(7, None, t0));
        assert!(poller.poll_on(7, None, us(10), idle));
        assert!(poller.poll_on(7, None, us(49), idle));
        // A read at 40 µs: 50 more from there.
        assert!(poller.start(7, None, t0));
        assert!(poller.poll_on(8, None, us(40), idle));
        assert!(poller.poll_on(8, None, us(89), idle));
        assert!(!poller.poll_on(8, None, us(90), idle));
        // Nothing read: the budget from the start.
        assert!(poller.start(8, None, t0));
        assert!(!poller.poll_on(8, None, us(50), idle));
        // No budget, no polling.
        assert!(!Poller::new(Duration::ZERO, t0).start(1, None, t0));
    }

    #[test]
    fn polling_stops_when_another_thread_wants_the_core_and_backs_off_when_cores_are_busy() {
        let t0 = Instant::now();
        let mut poller = Poller::new(Duration::from_micros(50), t0);
        let at = t0 + Duration::from_micros(5);
        assert!(poller.start(7, None, t0));
        assert!(poller.poll_on(8, None, at, CORE_WANTED));
        // Another thread ran: this round ends, the next one polls.
        assert!(!poller.poll_on(9, None, at, CORE_WANTED + Duration::from_micros(1)));
        assert!(poller.start(9, None, at));
        // Threads with long bursts ran: no polling for the back-off.
        let busy = at + CONTENDED;
        assert!(!poller.poll_on(9, None, busy, CONTENDED + Duration::from_micros(1)));
        assert!(!poller.start(10, None, busy + BACKOFF - Duration::from_micros(1)));
        assert!(poller.start(10, None, busy + BACKOFF));
    }

    #[test]
    fn a_thread_that_read_bulk_lately_does_not_poll() {
        let t0 = Instant::now();
        let idle = Duration::from_micros(1);
        let mut poller = Poller::new(Duration::from_micros(50), t0);
        let at = t0 + Duration::from_micros(5);
        assert!(!poller.start(8, Some(t0), at));
        assert!(poller.start(8, None, at));
        assert!(!poller.poll_on(8, Some(at), at, idle));
        let later = at + BULK_QUIET;
        assert!(poller.start(9, Some(at), later));
        assert!(poller.poll_on(9, Some(at), later, idle));
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
        read_something(SMALL_READ + 1);
        assert_eq!(count.0.load(Ordering::Relaxed), 0);
        assert!(Pin::new(&mut sleep).poll(&mut cx).is_pending());
        read_something(64);
        assert_eq!(count.0.load(Ordering::Relaxed), 1);
        assert!(Pin::new(&mut sleep).poll(&mut cx).is_ready());
        // While the poller polls, a read only counts.
        read_something(64);
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
            read_something(64);
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
