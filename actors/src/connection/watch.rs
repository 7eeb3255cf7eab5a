//! The readability watch: one item of the connection's actor for its whole life, which polls the
//! socket's read readiness whenever the read side is `Watching`.
//!
//! A watch future spawned afresh for each wait (as before) cost, on every short exchange, a boxed
//! future, a spawn handle and a second pass of the actor's poll loop over its mailbox and items;
//! the lasting item costs a readiness poll.
//!
//! The item is polled each time the actor's task is, after its mailbox. So a watch started by a
//! mailbox handler or by the item itself is polled in the same pass (`in_order`); one started
//! anywhere else (a dial's or a pacing timer's completion, which may come after the item in
//! the pass) wakes the actor's task, so the item is polled again before the task sleeps.

use std::pin::Pin;
use std::task::{Poll, Waker};

use super::*;

/// The watch's bookkeeping, kept in the actor.
#[derive(Default)]
pub(super) struct Watch {
    /// The actor's task, to poll the item again after a watch started out of order.
    waker: Option<Waker>,
    /// A mailbox handler or the item itself is running: the item is polled after it in this
    /// pass, so a watch it starts needs no wake-up.
    in_order: bool,
}

impl Watch {
    /// Runs `f` as a step the item is polled after (a mailbox handler).
    pub(super) fn in_order<R>(act: &mut Connection, f: impl FnOnce(&mut Connection) -> R) -> R {
        let outer = std::mem::replace(&mut act.watch.in_order, true);
        let r = f(act);
        act.watch.in_order = outer;
        r
    }
}

/// The lasting item: see the module.
struct Readable;

impl ActorFuture<Connection> for Readable {
    type Output = ();

    fn poll(
        self: Pin<&mut Self>,
        act: &mut Connection,
        ctx: &mut Context<Connection>,
        task: &mut std::task::Context<'_>,
    ) -> Poll<()> {
        let outer = std::mem::replace(&mut act.watch.in_order, true);
        let result = loop {
            if ctx.state() != ActorState::Running {
                break Poll::Pending;
            }
            match act.read {
                // Nothing more will be read: the item ends.
                ReadState::Done => break Poll::Ready(()),
                ReadState::Watching => {}
                _ => break Poll::Pending,
            }
            let Some(reader) = act.reader.as_ref() else {
                break Poll::Pending;
            };
            match reader.as_ref().poll_read_ready(task) {
                Poll::Pending => break Poll::Pending,
                Poll::Ready(ready) => act.readable(ready, ctx),
            }
        };
        act.watch.in_order = outer;
        if result.is_pending()
            && !act
                .watch
                .waker
                .as_ref()
                .is_some_and(|w| w.will_wake(task.waker()))
        {
            act.watch.waker = Some(task.waker().clone());
        }
        result
    }
}

impl Connection {
    /// Starts the lasting watch item (once, when the actor starts).
    pub(super) fn start_watch(&mut self, ctx: &mut Context<Self>) {
        ctx.spawn(Readable);
    }

    /// Waits until the socket is readable, then spends the standing grant or asks the tunnel for
    /// credit.
    pub(super) fn watch(&mut self) {
        if self.reader.is_none() {
            return;
        }
        self.read = ReadState::Watching;
        if !self.watch.in_order {
            if let Some(w) = &self.watch.waker {
                w.wake_by_ref();
            }
        }
    }

    /// The socket became readable (or failed) while watched.
    fn readable(&mut self, ready: io::Result<()>, ctx: &mut Context<Self>) {
        match ready {
            Ok(()) if self.grant > self.overhead() as u64 => {
                self.read = ReadState::Spending;
                self.read_more(ctx);
            }
            Ok(()) => {
                self.read = ReadState::Wanting;
                let stream = self.stream;
                self.report(FromConnection::Want { stream });
            }
            Err(e) => self.abort(ctx, ResetCode::Aborted, format!("read failed: {e}")),
        }
    }
}
