//! The connection's lasting item: one item of its actor for its whole life, which takes the
//! events its tunnel queued for it (`downstream.rs`), in order, and then polls the socket's read
//! readiness whenever the read side is `Watching`.
//!
//! A watch future spawned afresh for each wait (as before) cost, on every short exchange, a boxed
//! future, a spawn handle and a second pass of the actor's poll loop over its mailbox and items;
//! the lasting item costs a readiness poll. Events taken first, in the same poll: a watch an
//! event asks for is seen at once, as it was when events came through the mailbox (polled before
//! the items); and one item, not two, is polled per pass.
//!
//! `lasting.rs` says when a watch asked for is seen in the same pass and when it wakes the
//! actor's task (a dial's or a pacing timer's completion asks out of order).
//!
//! The item ends once nothing more will be read and the tunnel has let go of the stream with
//! every event taken: the actor then lives on only while a write of its own is under way, as it
//! did when the tunnel's address of it was its mailbox's last sender.

use std::pin::Pin;
use std::task::Poll;

use super::*;

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
        let outer = act.watch.enter();
        let result = loop {
            if ctx.state() != ActorState::Running {
                break Poll::Pending;
            }
            if let Some(event) = act.down.take_event() {
                act.on_event(event, ctx);
                continue;
            }
            match act.read {
                // Nothing more will be read, and no event will come: the item ends.
                ReadState::Done if act.down.released() => break Poll::Ready(()),
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
        act.watch.leave(outer);
        if result.is_pending() {
            act.watch.waits(task);
            act.down.wait_events(task);
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
        self.watch.asked();
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
