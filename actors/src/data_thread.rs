//! A data thread: one OS thread with a current-thread tokio runtime and a `LocalSet`, on which
//! tunnels, their connections and UDP listeners run as actors.
//!
//! Why not an actix `Arbiter`: an arbiter's thread blocks on its command channel
//! (`block_on(ArbiterRunner)`), and the `LocalSet` polls that future at every wake-up of the
//! thread before it runs the tasks woken: a poll of a tokio channel, about 200 instructions, twice
//! per 64 B exchange on node A (callgrind), for a channel that carries a command only when an
//! actor is placed on the thread. Here the commands are taken by a task of their own, polled only
//! when one arrives, and the thread blocks on a future that reads a flag.
//!
//! The node's data threads run without tokio's time driver (`registry::data_thread`): an actor
//! placed on one makes its timers through [`crate::timer`], never with `ctx.run_later` or
//! `tokio::time` directly (they would panic there).
//!
//! Lifecycle: [`DataThread::spawn`] starts the thread; [`DataThreadHandle::start`] places an
//! actor on it (from any thread); dropping the [`DataThread`] stops it: the actors still on it are
//! dropped with its `LocalSet`, as an arbiter's are when it stops. A handle outliving the thread
//! starts nothing: the actor's address is then already closed.

use foldhash::HashMap;
use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::{Mutex, MutexGuard};
use std::task::{Poll, Waker};

use actix::dev::channel;
use actix::{Actor, Addr, Context};
use tokio::sync::mpsc;

/// What a data thread is asked to do.
enum Command {
    /// Run this on the thread (it places an actor there).
    Run(Box<dyn FnOnce() + Send>),
    /// End the thread.
    Stop,
}

/// An actor's mailbox capacity: what actix's own `start_in_arbiter` gives (its
/// `DEFAULT_CAPACITY`, not exported).
const MAILBOX: usize = 16;

/// The thread, stopped when this is dropped.
pub struct DataThread {
    /// Where commands go.
    handle: DataThreadHandle,
}

/// Places actors on a data thread; cheap to clone and to send.
#[derive(Clone)]
pub struct DataThreadHandle {
    /// The thread's command channel.
    commands: mpsc::UnboundedSender<Command>,
    /// The thread's number among the node's data threads, for [`ThreadStreams`].
    number: usize,
}

impl DataThread {
    /// Starts a thread named `name`, the node's data thread `number`, whose runtime is made by
    /// `runtime` (on the thread itself), polling for `busy_poll` after each small read
    /// (`crate::busy_poll`; zero: never). The actix `System` of the caller is the thread's too.
    pub fn spawn(
        name: String,
        number: usize,
        busy_poll: std::time::Duration,
        runtime: impl FnOnce() -> io::Result<tokio::runtime::Runtime> + Send + 'static,
    ) -> io::Result<DataThread> {
        let system = actix::System::current();
        let (commands, rx) = mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::Builder::new().name(name).spawn(move || {
            let rt = match runtime() {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            actix::System::set_current(system);
            let _ = ready_tx.send(Ok(()));
            let local = tokio::task::LocalSet::new();
            let stop = Rc::new(Stop::default());
            local.spawn_local(serve(rx, stop.clone()));
            if !busy_poll.is_zero() {
                local.spawn_local(crate::busy_poll::spin(busy_poll));
            }
            local.block_on(&rt, UntilStopped(stop));
        })?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(DataThread {
                handle: DataThreadHandle { commands, number },
            }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(io::Error::other("a data thread ended while starting")),
        }
    }

    /// A handle that places actors on this thread.
    pub fn handle(&self) -> DataThreadHandle {
        self.handle.clone()
    }
}

impl Drop for DataThread {
    fn drop(&mut self) {
        // A thread already gone has nothing to stop.
        let _ = self.handle.commands.send(Command::Stop);
    }
}

impl DataThreadHandle {
    /// The thread's number among the node's data threads.
    pub fn number(&self) -> usize {
        self.number
    }

    /// Starts the actor `make` builds on the thread, as actix's `start_in_arbiter` does: its
    /// address at once, the actor built and run there.
    pub fn start<A, F>(&self, make: F) -> Addr<A>
    where
        A: Actor<Context = Context<A>>,
        F: FnOnce(&mut Context<A>) -> A + Send + 'static,
    {
        let (tx, rx) = channel::channel(MAILBOX);
        let run = move || {
            let mut ctx = Context::with_receiver(rx);
            let act = make(&mut ctx);
            actix_rt::spawn(ctx.into_future(act));
        };
        // A stopped thread drops `run`, and with it the receiver: the address is closed.
        let _ = self.commands.send(Command::Run(Box::new(run)));
        Addr::new(tx)
    }
}

/// Live streams per service on each data thread, node-wide. A tunnel places a new stream on one
/// of its lanes by what each lane's thread carries for every tunnel, not only for its own: two
/// tunnels' lanes share the threads, and a stream beside another service's bulk on its thread
/// waits for that thread whichever tunnel the bulk is on (`tunnel/placement.rs`).
#[derive(Debug, Default)]
pub struct ThreadStreams(Mutex<ThreadCounts>);

/// The counts behind [`ThreadStreams`].
#[derive(Debug, Default)]
struct ThreadCounts {
    /// Per service with live streams, its streams per thread (by number); a service with none
    /// has no entry, so the table holds only services with streams now.
    by_service: HashMap<String, Vec<u32>>,
    /// Live streams per thread, every service's.
    total: Vec<u32>,
}

impl ThreadStreams {
    /// The counts (a panic while they were held left them whole: every change is one count).
    fn lock(&self) -> MutexGuard<'_, ThreadCounts> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A stream of `service` now lives on data thread `thread`.
    pub fn opened(&self, thread: usize, service: &str) {
        let mut guard = self.lock();
        let c = &mut *guard;
        match c.by_service.get_mut(service) {
            Some(counts) => bump(counts, thread),
            // A service's name is copied only for its first live stream.
            None => {
                let mut counts = Vec::new();
                bump(&mut counts, thread);
                c.by_service.insert(service.to_owned(), counts);
            }
        }
        bump(&mut c.total, thread);
        debug_assert!(
            c.holds(thread),
            "thread {thread}'s total is its services' sum"
        );
    }

    /// A stream of `service` on data thread `thread` ended.
    pub fn closed(&self, thread: usize, service: &str) {
        let mut c = self.lock();
        let Some(counts) = c.by_service.get_mut(service) else {
            debug_assert!(false, "a stream of an uncounted service {service} closed");
            return;
        };
        let Some(n) = counts.get_mut(thread) else {
            debug_assert!(
                false,
                "a stream closed on thread {thread}, where none was opened"
            );
            return;
        };
        debug_assert!(*n > 0, "more streams closed than opened on thread {thread}");
        *n = n.saturating_sub(1);
        if counts.iter().all(|&n| n == 0) {
            c.by_service.remove(service);
        }
        if let Some(t) = c.total.get_mut(thread) {
            *t = t.saturating_sub(1);
        }
        debug_assert!(
            c.holds(thread),
            "thread {thread}'s total is its services' sum"
        );
    }

    /// Live streams on data thread `thread`: of services other than `service`, and of all.
    pub fn load(&self, thread: usize, service: &str) -> (u32, u32) {
        let c = self.lock();
        let total = c.total.get(thread).copied().unwrap_or(0);
        let mine = c
            .by_service
            .get(service)
            .and_then(|counts| counts.get(thread))
            .copied()
            .unwrap_or(0);
        (total.saturating_sub(mine), total)
    }
}

impl ThreadCounts {
    /// The invariant: a thread's total is the sum of its services' streams (O(services): for
    /// debug assertions).
    fn holds(&self, thread: usize) -> bool {
        let sum: u32 = self
            .by_service
            .values()
            .map(|counts| counts.get(thread).copied().unwrap_or(0))
            .sum();
        sum == self.total.get(thread).copied().unwrap_or(0)
    }
}

/// One more at `i`, growing `counts` to hold it.
fn bump(counts: &mut Vec<u32>, i: usize) {
    if counts.len() <= i {
        counts.resize(i + 1, 0);
    }
    counts[i] += 1;
}

/// The thread's stop flag and the waker of the future it blocks on.
#[derive(Default)]
struct Stop {
    /// Set when the thread is to end.
    stopped: Cell<bool>,
    /// Woken when the flag is set.
    waker: RefCell<Option<Waker>>,
}

/// Takes the thread's commands until told to stop or until no handle is left.
async fn serve(mut rx: mpsc::UnboundedReceiver<Command>, stop: Rc<Stop>) {
    while let Some(Command::Run(run)) = rx.recv().await {
        // A panic while an actor is built loses that actor (its address closes), not the
        // thread's command loop, as a panic in an arbiter's spawned command did.
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)).is_err() {
            log::error!("an actor panicked while it was placed on a data thread");
        }
    }
    stop.stopped.set(true);
    if let Some(waker) = stop.waker.borrow_mut().take() {
        waker.wake();
    }
}

/// What the thread blocks on: ready once the stop flag is set. Polled at every wake-up of the
/// thread, so it does no more than read the flag (and keep the waker, when it changed).
struct UntilStopped(Rc<Stop>);

impl Future for UntilStopped {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<()> {
        if self.0.stopped.get() {
            return Poll::Ready(());
        }
        let mut waker = self.0.waker.borrow_mut();
        match waker.as_ref() {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => *waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix::{Handler, Message, MessageResult};
    use std::time::Duration;

    /// Says which thread it runs on.
    struct Where;
    impl Actor for Where {
        type Context = Context<Self>;
    }
    #[derive(Message)]
    #[rtype(result = "std::thread::ThreadId")]
    struct Ask;
    impl Handler<Ask> for Where {
        type Result = MessageResult<Ask>;
        fn handle(&mut self, _: Ask, _: &mut Context<Self>) -> Self::Result {
            MessageResult(std::thread::current().id())
        }
    }

    fn runtime() -> io::Result<tokio::runtime::Runtime> {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    }

    #[test]
    fn actors_run_on_the_thread_survive_a_neighbour_panicking_while_built_and_stop_with_it() {
        actix_rt::System::new().block_on(async {
            let thread =
                DataThread::spawn("data-test".into(), 0, Duration::ZERO, runtime).expect("thread");
            let here = std::thread::current().id();
            let addr = thread.handle().start(|_| Where);
            let there = addr.send(Ask).await.expect("an answer");
            assert_ne!(there, here);
            // Two actors on one thread share it.
            let other = thread.handle().start(|_| Where).send(Ask).await;
            assert_eq!(other.ok(), Some(there));
            let handle = thread.handle();
            // A panic while an actor is built loses that actor only.
            let broken = handle.start(|_| -> Where { panic!("fault injected while building") });
            assert!(broken.send(Ask).await.is_err());
            let after = handle.start(|_| Where).send(Ask).await;
            assert_eq!(after.ok(), Some(there));
            drop(thread);
            // The thread ends and its actors with it: their addresses close.
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while addr.connected() {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the actor outlived its thread"
                );
                actix_rt::time::sleep(Duration::from_millis(10)).await;
            }
            // A handle that outlived its thread starts nothing.
            let late = handle.start(|_| Where);
            assert!(late.send(Ask).await.is_err());
        });
    }
}
