//! The writer: control frames ahead of data, data frames per stream taken round-robin, written to
//! the tunnel socket in vectored batches with `TCP_NOTSENT_LOWAT`.

use super::*;

impl Tunnel {
    /// Queues a control frame on the lane it belongs to (`lanes.rs`).
    pub(super) fn queue_control(&mut self, frame: &Frame, ctx: &mut Context<Self>) {
        let lane = self.lane_of(frame);
        self.queue_control_on(lane, frame, ctx);
    }

    /// Queues a control frame on `lane` (the first one before the actor started).
    pub(super) fn queue_control_on(&mut self, lane: usize, frame: &Frame, ctx: &mut Context<Self>) {
        let Some(l) = self.lanes.get_mut(lane) else {
            return;
        };
        frame.encode(&mut l.control);
        // The cap is the tunnel's, over all its lanes: more lanes are no more room.
        if self.control_bytes() > MAX_CONTROL_QUEUE {
            self.fail(
                ctx,
                "peer does not read its control frames; closing".to_owned(),
            );
            return;
        }
        self.flush_lane(lane, ctx);
    }

    /// Queues a DATA or FIN frame of `stream`, which lives on `lane`.
    pub(super) fn queue_data(
        &mut self,
        lane: usize,
        stream: u32,
        frame: Bytes,
        ctx: &mut Context<Self>,
    ) {
        self.sched.push_on(lane, stream, frame);
        self.flush_lane(lane, ctx);
    }

    /// Drops what a reset stream still had queued, giving its credit back to the tunnel window.
    pub(super) fn drop_queued(&mut self, stream: u32) {
        self.credit.unsent(self.sched.drop_stream(stream));
    }

    /// A PING on every lane: the first lane's measures the path's round trip; each lane's
    /// answer shows that connection alive.
    pub(super) fn send_ping(&mut self, ctx: &mut Context<Self>) {
        let v = self.beat.pings;
        self.beat.pings += 1;
        if self.beat.ping_sent.is_none() {
            self.beat.ping_sent = Some((v, Instant::now(), self.stats.bytes_received));
        }
        self.queue_control_on(0, &Frame::Ping(v), ctx);
        for lane in 1..self.lanes.len() {
            // Values no first-lane PING takes: their PONGs are not round-trip samples.
            self.queue_control_on(lane, &Frame::Ping(u64::MAX - lane as u64), ctx);
        }
    }

    /// What one write on `lane` carries: its control frames, then its streams' data frames
    /// round-robin up to [`WRITE_BATCH`], sealed into records if the lane is sealed.
    fn take_batch(&mut self, lane: usize) -> Vec<Bytes> {
        let mut batch = Vec::with_capacity(8);
        let Some(l) = self.lanes.get_mut(lane) else {
            return batch;
        };
        if !l.control.is_empty() {
            batch.push(l.control.split().freeze());
        }
        self.sched.take_from(lane, WRITE_BATCH, &mut batch);
        if let Some(sealer) = &mut l.sealer {
            let mut records = Vec::with_capacity(4);
            sealer.seal(batch, &mut records);
            batch = records;
        }
        batch
    }

    /// Starts a write of what `lane` has queued, control frames first, unless one is under way.
    /// A closing tunnel stops once every lane has written everything.
    pub(super) fn flush_lane(&mut self, lane: usize, ctx: &mut Context<Self>) {
        let Some(l) = self.lanes.get_mut(lane) else {
            return;
        };
        if l.control.is_empty() && self.sched.lane_is_empty(lane) {
            if matches!(self.life, Life::Closing { .. }) && self.all_written() {
                ctx.stop();
            }
            return;
        }
        // No writer: a write is under way, and this lane's next one follows it.
        let Some(writer) = l.writer.take() else {
            return;
        };
        // The batch is taken when the write is first polled, after the handlers of every message
        // already in the mailbox have run: what they queue (a burst of requests, the credit for
        // them) leaves in this one write instead of one write each.
        ctx.spawn(
            actix::fut::ready(())
                .map(move |(), act: &mut Tunnel, ctx| act.write_batch(lane, writer, ctx)),
        );
    }

    /// Nothing queued on any lane and no write under way.
    fn all_written(&self) -> bool {
        self.sched.is_empty()
            && self
                .lanes
                .iter()
                .all(|l| l.control.is_empty() && l.writer.is_some())
    }

    /// Writes what `lane` has queued: at once as far as the socket takes it (most writes), the
    /// rest when the socket has room.
    fn write_batch(&mut self, lane: usize, writer: OwnedWriteHalf, ctx: &mut Context<Self>) {
        let mut batch = self.take_batch(lane);
        match try_write_now(&writer, &mut batch) {
            Ok(true) => self.written(lane, writer, ctx),
            Ok(false) => {
                let mut writer = writer;
                ctx.spawn(
                    async move {
                        let result = write_all_vectored(&mut writer, batch).await;
                        (writer, result)
                    }
                    .into_actor(self)
                    .map(move |(writer, result), act, ctx| match result {
                        Ok(()) => act.written(lane, writer, ctx),
                        Err(e) => act.fail(ctx, format!("write failed: {e}")),
                    }),
                );
            }
            Err(e) => self.fail(ctx, format!("write failed: {e}")),
        }
    }

    /// A write on `lane` completed: its next one may start.
    fn written(&mut self, lane: usize, writer: OwnedWriteHalf, ctx: &mut Context<Self>) {
        self.publish_gauges();
        if let Some(l) = self.lanes.get_mut(lane) {
            l.writer = Some(writer);
        }
        // Room in our send budget again.
        self.serve_starving();
        self.flush_lane(lane, ctx);
    }
}
