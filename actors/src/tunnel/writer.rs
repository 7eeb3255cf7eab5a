//! The writer: control frames ahead of data, data frames per stream taken round-robin, written to
//! the tunnel socket in vectored batches with `TCP_NOTSENT_LOWAT`.
//!
//! Writes start from one lasting item of the actor: a flush marks a write as due, and the item
//! takes the batch after the mailbox's handlers have run and after it has taken the reports its
//! connections queued (`connection/upstream.rs`), so what they queue leaves in one write. When a
//! flush is seen in the same pass and when it wakes the actor's task (a frame from the peer or
//! a timer asks out of order) is `lasting.rs`'s. (A future spawned per flush, as before,
//! cost a boxed future, a spawn handle and a second pass over the mailbox and items each time.)
//!
//! The way out (the socket's write half and the sealer) lives in what the tunnel shares with
//! its connections (`connection/upstream.rs`). After each pass of the writer, and after each
//! write completes, the tunnel lends it to them if nothing is queued and no write is under way:
//! a connection's frame then goes straight to the socket. Anything queued takes it back.

use std::pin::Pin;
use std::task::Poll;

use super::*;

/// Whether a write is due, and how the writer item is woken for it.
#[derive(Default)]
pub(super) struct Flushing {
    /// Something is queued and no write was started for it yet.
    wanted: bool,
    /// The writer item's waker and ordering (`lasting.rs`).
    item: crate::lasting::LastingItem,
}

/// The lasting writer item: see the module.
struct WriterItem;

impl ActorFuture<Tunnel> for WriterItem {
    type Output = ();

    fn poll(
        self: Pin<&mut Self>,
        act: &mut Tunnel,
        ctx: &mut Context<Tunnel>,
        task: &mut std::task::Context<'_>,
    ) -> Poll<()> {
        let outer = act.flushing.item.enter();
        act.take_reports(ctx);
        while act.flushing.wanted && ctx.state() == ActorState::Running {
            act.flushing.wanted = false;
            let Some(writer) = act.upstream.out().writer.take() else {
                break;
            };
            act.write_batch(writer, ctx);
        }
        act.lend_way_out(ctx);
        act.flushing.item.leave(outer);
        act.flushing.item.waits(task);
        act.upstream.wait(task);
        Poll::Pending
    }
}

impl Tunnel {
    pub(super) fn queue_control(&mut self, frame: &Frame, ctx: &mut Context<Self>) {
        frame.encode(&mut self.control);
        if self.control.len() > MAX_CONTROL_QUEUE {
            self.fail(
                ctx,
                "peer does not read its control frames; closing".to_owned(),
            );
            return;
        }
        self.flush(ctx);
    }

    pub(super) fn queue_data(&mut self, stream: u32, frame: Bytes, ctx: &mut Context<Self>) {
        self.sched.push(stream, frame);
        self.flush(ctx);
    }

    /// Drops what a reset stream still had queued, giving its credit back to the tunnel window.
    pub(super) fn drop_queued(&mut self, stream: u32) {
        self.credit.unsent(self.sched.drop_stream(stream));
    }

    pub(super) fn send_ping(&mut self, ctx: &mut Context<Self>) {
        let v = self.beat.pings;
        self.beat.pings += 1;
        if self.beat.ping_sent.is_none() {
            self.beat.ping_sent = Some((v, Instant::now(), self.stats.bytes_received));
        }
        self.queue_control(&Frame::Ping(v), ctx);
    }

    /// What one write carries: what a connection's direct write left (it was sealed first);
    /// else the control frames, then data frames round-robin up to [`WRITE_BATCH`], sealed into
    /// records if the tunnel is sealed.
    fn take_batch(&mut self) -> Vec<Bytes> {
        let mut out = self.upstream.out();
        if !out.rest.is_empty() {
            return std::mem::take(&mut out.rest);
        }
        let mut batch = out.list();
        if !self.control.is_empty() {
            batch.push(self.control.split().freeze());
        }
        self.sched.take(WRITE_BATCH, &mut batch);
        out.seal(batch)
    }

    /// Lends the way out to the connections if nothing is queued and no write is under way
    /// (`connection/upstream.rs`), else keeps it.
    fn lend_way_out(&self, ctx: &Context<Self>) {
        let idle = matches!(self.life, Life::Open)
            && ctx.state() == ActorState::Running
            && !self.flushing.wanted
            && self.control.is_empty()
            && self.sched.is_empty();
        let open = idle && {
            let out = self.upstream.look();
            out.writer.is_some() && out.rest.is_empty()
        };
        self.upstream.set_open(open);
    }

    /// Starts a write of what is queued, control frames first, unless one is under way.
    pub(super) fn flush(&mut self, ctx: &mut Context<Self>) {
        let (writer_here, rest) = {
            let out = self.upstream.look();
            (out.writer.is_some(), !out.rest.is_empty())
        };
        // After the start the socket is split; no writer then means a write is under way.
        if self.sock.is_none() && !writer_here {
            return;
        }
        if self.control.is_empty() && self.sched.is_empty() && !rest {
            if matches!(self.life, Life::Closing { .. }) {
                ctx.stop();
            }
            return;
        }
        // Something is queued: no connection's frame may pass it.
        self.upstream.set_open(false);
        if !writer_here {
            // Not started yet; the writer item's first pass takes what is queued.
            return;
        }
        // The batch is taken when the writer item is next polled, after the handlers of every
        // message already in the mailbox have run: what they queue (a burst of requests, the
        // credit for them) leaves in this one write instead of one write each.
        self.flushing.wanted = true;
        self.flushing.item.asked();
    }

    /// Starts the lasting writer item (once, when the socket is taken over).
    pub(super) fn start_writer(&mut self, ctx: &mut Context<Self>) {
        ctx.spawn(WriterItem);
    }

    /// Writes what is queued: at once as far as the socket takes it (most writes), the rest
    /// when the socket has room.
    fn write_batch(&mut self, writer: OwnedWriteHalf, ctx: &mut Context<Self>) {
        let mut batch = self.take_batch();
        match try_write_now(&writer, &mut batch) {
            Ok(true) => {
                self.upstream.out().recycle(batch);
                self.written(writer, ctx)
            }
            Ok(false) => {
                let mut writer = writer;
                ctx.spawn(
                    async move {
                        let result = write_all_vectored(&mut writer, batch).await;
                        (writer, result)
                    }
                    .into_actor(self)
                    .map(|(writer, result), act, ctx| match result {
                        Ok(()) => act.written(writer, ctx),
                        Err(e) => act.fail(ctx, format!("write failed: {e}")),
                    }),
                );
            }
            Err(e) => self.fail(ctx, format!("write failed: {e}")),
        }
    }

    /// A write completed: the next one may start.
    fn written(&mut self, writer: OwnedWriteHalf, ctx: &mut Context<Self>) {
        self.publish_gauges();
        self.upstream.out().writer = Some(writer);
        // Room in our send budget again.
        self.serve_starving();
        self.flush(ctx);
        self.lend_way_out(ctx);
    }
}
