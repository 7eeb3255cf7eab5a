//! Timers for the data threads, driven by a thread of their own.
//!
//! A data thread's runtime has no time driver. With one, every park of the thread (two per 64 B
//! exchange on node A: the client's request, the peer's answer) looked up the timer wheel's next
//! expiry, read the clock twice, converted between ticks and durations and polled the wheel:
//! about 900 instructions per exchange (callgrind), more than the tunnel's whole AES-GCM. The
//! actors on a data thread still use tokio's timers (heartbeats, idle timeouts, pacing, dial
//! timeouts, a closing tunnel's grace), made against the runtime of the `menet-timers` thread:
//! tokio binds a timer to the runtime current where it is made, and it may be polled on any
//! thread, so that runtime's driver fires it and wakes the actor's task on its data thread. A
//! timer costs that thread one wake-up from outside when it fires, and nothing between.
//!
//! So every timer an actor of a data thread makes is made through this module ([`timeout`],
//! [`interval_at`], [`run_later`], [`run_interval`]): made with tokio's or actix's own functions
//! directly, it would panic there ("timers are disabled"). Elsewhere (the main thread, tests,
//! `--node-threads 0`) the current runtime has its own time driver, and these are tokio's and
//! actix's functions as they are.
//!
//! Lifecycle: [`without_time_driver`] runs on each data thread as its runtime is made; the first
//! call starts the timer thread, which lives as long as the process.

use std::cell::Cell;
use std::future::IntoFuture;
use std::io;
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::Duration;

use actix::{Actor, AsyncContext, SpawnHandle};
use tokio::runtime::{EnterGuard, Handle};
use tokio::time::{Instant, Interval, Timeout};

/// The timer thread's runtime, once started.
static TIMERS: OnceLock<Handle> = OnceLock::new();

/// Held while the timer thread is started.
static STARTING: Mutex<()> = Mutex::new(());

thread_local! {
    /// This thread's runtime has no time driver: its timers are made against [`TIMERS`].
    static ELSEWHERE: Cell<bool> = const { Cell::new(false) };
}

/// Marks the calling thread as one whose runtime has no time driver, starting the timer thread
/// if it is not running yet. Fails only if that thread cannot start.
pub fn without_time_driver() -> io::Result<()> {
    if TIMERS.get().is_none() {
        // Data threads starting at once start one timer thread; the handle is published only
        // once its thread runs, so no timer is ever made against a runtime nobody drives.
        let _one = STARTING.lock().unwrap_or_else(PoisonError::into_inner);
        if TIMERS.get().is_none() {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()?;
            let handle = runtime.handle().clone();
            std::thread::Builder::new()
                .name("menet-timers".into())
                .spawn(move || runtime.block_on(std::future::pending::<()>()))?;
            let _ = TIMERS.set(handle);
        }
    }
    ELSEWHERE.with(|e| e.set(true));
    Ok(())
}

/// Makes the timers made while the guard lives on this thread's timer runtime: the timer
/// thread's on a data thread, the current one elsewhere.
pub fn enter() -> Option<EnterGuard<'static>> {
    if ELSEWHERE.with(Cell::get) {
        TIMERS.get().map(Handle::enter)
    } else {
        None
    }
}

/// `tokio::time::timeout`, on this thread's timer runtime.
pub fn timeout<F: IntoFuture>(duration: Duration, future: F) -> Timeout<F::IntoFuture> {
    let _timers = enter();
    tokio::time::timeout(duration, future)
}

/// `tokio::time::interval_at`, on this thread's timer runtime.
pub fn interval_at(start: Instant, period: Duration) -> Interval {
    let _timers = enter();
    tokio::time::interval_at(start, period)
}

/// `ctx.run_later`, its timer on this thread's timer runtime.
pub fn run_later<A, F>(ctx: &mut A::Context, after: Duration, f: F) -> SpawnHandle
where
    A: Actor,
    A::Context: AsyncContext<A>,
    F: FnOnce(&mut A, &mut A::Context) + 'static,
{
    let _timers = enter();
    ctx.run_later(after, f)
}

/// `ctx.run_interval`, its timer on this thread's timer runtime (the interval resets the timer
/// it made, so it stays there).
pub fn run_interval<A, F>(ctx: &mut A::Context, every: Duration, f: F) -> SpawnHandle
where
    A: Actor,
    A::Context: AsyncContext<A>,
    F: FnMut(&mut A, &mut A::Context) + 'static,
{
    let _timers = enter();
    ctx.run_interval(every, f)
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix::{ActorContext, Context};
    use std::future::Future;
    use std::sync::mpsc;

    /// Runs the future `make` builds on a thread whose runtime has no time driver, as a data
    /// thread's.
    fn on_thread_without_timers<T, F, Fut>(make: F) -> T
    where
        T: Send + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = T> + 'static,
    {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .build()
                .expect("runtime");
            without_time_driver().expect("the timer thread");
            let local = tokio::task::LocalSet::new();
            let _ = tx.send(local.block_on(&rt, make()));
        });
        rx.recv_timeout(Duration::from_secs(10))
            .expect("done in time")
    }

    #[test]
    fn timers_made_here_fire_on_a_thread_without_a_time_driver() {
        let (slept, timed_out) = on_thread_without_timers(|| async {
            let started = std::time::Instant::now();
            let never = std::future::pending::<()>();
            let timed_out = timeout(Duration::from_millis(30), never).await.is_err();
            let slept = started.elapsed();
            let mut every = interval_at(Instant::now(), Duration::from_millis(5));
            for _ in 0..3 {
                every.tick().await;
            }
            (slept, timed_out)
        });
        assert!(slept >= Duration::from_millis(30), "{slept:?}");
        assert!(timed_out, "the timeout fired");
    }

    /// The code of the actors that run on data threads makes no timer but through this module:
    /// one made with actix's or tokio's functions there would panic (`tokio::time::Instant` and
    /// such are only the clock).
    #[test]
    fn data_thread_actors_make_their_timers_here() {
        let sources = [
            ("connection/mod.rs", include_str!("connection/mod.rs")),
            ("connection/dial.rs", include_str!("connection/dial.rs")),
            (
                "connection/downstream.rs",
                include_str!("connection/downstream.rs"),
            ),
            (
                "connection/upstream.rs",
                include_str!("connection/upstream.rs"),
            ),
            ("connection/watch.rs", include_str!("connection/watch.rs")),
            ("datagram.rs", include_str!("datagram.rs")),
            ("udp_listener.rs", include_str!("udp_listener.rs")),
            ("lasting.rs", include_str!("lasting.rs")),
            ("tunnel/mod.rs", include_str!("tunnel/mod.rs")),
            ("tunnel/clients.rs", include_str!("tunnel/clients.rs")),
            ("tunnel/commands.rs", include_str!("tunnel/commands.rs")),
            ("tunnel/group.rs", include_str!("tunnel/group.rs")),
            ("tunnel/heartbeat.rs", include_str!("tunnel/heartbeat.rs")),
            ("tunnel/peer.rs", include_str!("tunnel/peer.rs")),
            ("tunnel/placement.rs", include_str!("tunnel/placement.rs")),
            ("tunnel/reader.rs", include_str!("tunnel/reader.rs")),
            ("tunnel/send.rs", include_str!("tunnel/send.rs")),
            ("tunnel/streams.rs", include_str!("tunnel/streams.rs")),
            ("tunnel/writer.rs", include_str!("tunnel/writer.rs")),
        ];
        let made_elsewhere = [
            "ctx.run_later(",
            "ctx.run_interval(",
            "notify_later(",
            "tokio::time::sleep",
            "tokio::time::timeout",
            "tokio::time::interval",
            "actix_rt::time::",
            "actix::clock::",
        ];
        for (name, text) in sources {
            // The unit tests run on runtimes of their own, with time drivers.
            let code = text.split("#[cfg(test)]\nmod tests").next().unwrap_or(text);
            for timer in made_elsewhere {
                assert!(
                    !code.contains(timer),
                    "{name} makes a timer with `{timer}`: make it through `crate::timer`"
                );
            }
        }
    }

    /// Counts its interval's ticks and stops after a later run.
    struct Ticking {
        ticks: u32,
        done: Option<tokio::sync::oneshot::Sender<u32>>,
    }

    impl Actor for Ticking {
        type Context = Context<Self>;

        fn started(&mut self, ctx: &mut Context<Self>) {
            run_interval(ctx, Duration::from_millis(5), |act: &mut Ticking, _| {
                act.ticks += 1
            });
            run_later(ctx, Duration::from_millis(60), |act: &mut Ticking, ctx| {
                if let Some(done) = act.done.take() {
                    let _ = done.send(act.ticks);
                }
                ctx.stop();
            });
        }
    }

    #[test]
    fn an_actors_timers_run_on_a_thread_without_a_time_driver() {
        let ticks = on_thread_without_timers(|| async {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let _addr = Ticking {
                ticks: 0,
                done: Some(tx),
            }
            .start();
            rx.await.expect("the later run")
        });
        assert!((3..=13).contains(&ticks), "{ticks} ticks in 60 ms of 5");
    }
}
