//! The tunnel's send scheduler, without actors: DATA and FIN frames queue per stream, and each
//! write to the tunnel socket takes them deficit round-robin by bytes, a quantum of one full
//! frame per busy stream per round. So a small frame waits behind at most one frame of each busy
//! stream, whatever they have queued; a stream's own frames keep their order (its FIN after its
//! DATA). Control frames are not scheduled here: they go ahead of all data.
//!
//! A stream that had nothing queued (a request, a keystroke, a reply) is *sparse*: it is served
//! ahead of the busy streams, once, as fq_codel serves its new flows, so an interactive exchange
//! does not wait for a round of the bulk streams beside it. A sparse stream that still has frames
//! after its quantum joins the busy ring at the back; one whose queue emptied stays in the busy
//! ring (empty) until its turn, so no stream can be sparse again before the busy streams have
//! each been served once: bulk cannot starve by posing as sparse.
//!
//! The common case, one frame queued on an idle tunnel (a request or its reply), is held apart
//! as the *solo* frame: no table entry, no ring, no per-stream queue to make and drop. It is
//! what the rings would serve first anyway (a sparse stream on an empty queue), and a second
//! frame moves it into the rings ahead of itself, so the order is the same.

use std::collections::VecDeque;

use foldhash::HashMap;

use bytes::Bytes;

use crate::protocol::{HEADER_LEN, MAX_DATA};

/// Bytes a busy stream may send per round: one full DATA frame.
pub const QUANTUM: usize = HEADER_LEN + MAX_DATA;

#[derive(Debug, Default)]
struct StreamQueue {
    /// The stream's frames waiting for their turn, oldest first.
    frames: VecDeque<Bytes>,
    /// Bytes of `frames`, headers included.
    bytes: usize,
    /// What the stream may still send this round.
    deficit: usize,
}

#[derive(Debug, Default)]
pub struct SendQueue {
    /// Every stream in one of the two rings (with frames queued, or emptied as a sparse stream
    /// and waiting for its turn in the busy ring).
    streams: HashMap<u32, StreamQueue>,
    /// Sparse streams (they had nothing queued), served first, in arrival order.
    sparse: VecDeque<u32>,
    /// Busy streams, in the order they are served.
    ring: VecDeque<u32>,
    /// Bytes queued over all streams.
    bytes: usize,
    /// The one frame queued while the rings are empty (then they stay empty until the next
    /// push), with its stream: the idle tunnel's case, at no bookkeeping.
    solo: Option<(u32, Bytes)>,
    /// Emptied streams' frame queues, kept for the next stream that queues (at most
    /// [`SPARE_QUEUES`], none grown past [`SPARE_CAPACITY`]): many short requests at once each
    /// queue a frame, and made and dropped a queue per request.
    spare: Vec<VecDeque<Bytes>>,
}

/// Emptied frame queues a send queue keeps for reuse.
const SPARE_QUEUES: usize = 64;
/// The largest capacity (in frames) of an emptied queue that is kept.
const SPARE_CAPACITY: usize = 16;

impl SendQueue {
    /// Queues an encoded DATA or FIN frame of `stream`.
    pub fn push(&mut self, stream: u32, frame: Bytes) {
        self.bytes += frame.len();
        if self.streams.is_empty() {
            match self.solo.take() {
                None => {
                    self.solo = Some((stream, frame));
                    return;
                }
                // The rings take over, the solo frame first (it came first).
                Some((id, first)) => self.push_queued(id, first),
            }
        }
        self.push_queued(stream, frame);
        debug_assert!(self.solo.is_none(), "a solo frame beside the rings");
    }

    /// Queues `frame` in its stream's queue (its bytes already counted in the total).
    fn push_queued(&mut self, stream: u32, frame: Bytes) {
        let q = self.streams.entry(stream).or_insert_with(|| {
            self.sparse.push_back(stream);
            StreamQueue {
                frames: self.spare.pop().unwrap_or_default(),
                ..StreamQueue::default()
            }
        });
        q.bytes += frame.len();
        q.frames.push_back(frame);
    }

    /// Bytes queued, headers included.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Bytes one stream has queued.
    pub fn bytes_of(&self, stream: u32) -> usize {
        match &self.solo {
            Some((id, frame)) if *id == stream => frame.len(),
            _ => self.streams.get(&stream).map_or(0, |q| q.bytes),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.bytes == 0
    }

    /// Moves frames for one write of about `budget` bytes into `out`, round-robin; the bytes
    /// taken.
    pub fn take(&mut self, budget: usize, out: &mut Vec<Bytes>) -> usize {
        debug_assert!(
            self.solo.is_none() || self.streams.is_empty(),
            "a solo frame beside the rings"
        );
        if budget > 0 {
            if let Some((_, frame)) = self.solo.take() {
                self.bytes -= frame.len();
                let taken = frame.len();
                out.push(frame);
                return taken;
            }
        }
        let mut taken = 0;
        while taken < budget {
            let (id, sparse) = match self.sparse.pop_front() {
                Some(id) => (id, true),
                None => match self.ring.pop_front() {
                    Some(id) => (id, false),
                    None => break,
                },
            };
            let Some(q) = self.streams.get_mut(&id) else {
                continue;
            };
            q.deficit += QUANTUM;
            while let Some(len) = q.frames.front().map(Bytes::len) {
                if len > q.deficit {
                    break;
                }
                q.deficit -= len;
                q.bytes -= len;
                taken += len;
                out.extend(q.frames.pop_front());
            }
            if q.frames.is_empty() && !sparse {
                if let Some(q) = self.streams.remove(&id) {
                    self.keep_spare(q.frames);
                }
            } else {
                if q.frames.is_empty() {
                    q.deficit = 0;
                }
                self.ring.push_back(id);
            }
        }
        self.bytes -= taken;
        taken
    }

    /// Keeps an emptied stream's queue for the next stream that queues, within the bounds.
    fn keep_spare(&mut self, frames: VecDeque<Bytes>) {
        debug_assert!(frames.is_empty(), "a queue kept with frames in it");
        if self.spare.len() < SPARE_QUEUES && frames.capacity() <= SPARE_CAPACITY {
            self.spare.push(frames);
        }
    }

    /// Drops what `stream` has queued (it was reset); the payload bytes dropped, so the caller
    /// can give back the credit they had taken.
    pub fn drop_stream(&mut self, stream: u32) -> u64 {
        if let Some((_, frame)) = self.solo.take_if(|(id, _)| *id == stream) {
            self.bytes -= frame.len();
            return frame.len().saturating_sub(HEADER_LEN) as u64;
        }
        let Some(q) = self.streams.remove(&stream) else {
            return 0;
        };
        self.ring.retain(|&id| id != stream);
        self.sparse.retain(|&id| id != stream);
        self.bytes -= q.bytes;
        q.frames
            .iter()
            .map(|f| f.len().saturating_sub(HEADER_LEN) as u64)
            .sum()
    }

    pub fn clear(&mut self) {
        self.solo = None;
        self.streams.clear();
        self.ring.clear();
        self.sparse.clear();
        self.bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(stream: u32, payload: usize) -> Bytes {
        let mut b = bytes::BytesMut::new();
        crate::protocol::put_data_header(&mut b, stream, payload);
        b.resize(HEADER_LEN + payload, stream as u8);
        b.freeze()
    }

    fn stream_of(f: &Bytes) -> u32 {
        u32::from_be_bytes([f[5], f[6], f[7], f[8]])
    }

    /// Many streams each queueing a frame at once, round after round: their emptied queues are
    /// reused (no more kept than the bound), and every frame still comes out once, in order.
    #[test]
    fn emptied_stream_queues_are_reused_within_the_bound() {
        let mut q = SendQueue::default();
        let streams = 2 * SPARE_QUEUES as u32;
        for round in 0..3u32 {
            for s in 1..=streams {
                q.push(s, frame(s, 10 + round as usize));
            }
            let mut out = Vec::new();
            while !q.is_empty() {
                q.take(usize::MAX, &mut out);
            }
            // Sparse streams wait for their turn in the busy ring; one more pass empties it.
            q.take(usize::MAX, &mut out);
            assert_eq!(out.len(), streams as usize, "round {round}");
            for (i, f) in out.iter().enumerate() {
                assert_eq!(stream_of(f), i as u32 + 1);
                assert_eq!(f.len(), HEADER_LEN + 10 + round as usize);
            }
            assert!(q.streams.is_empty(), "every stream left the rings");
            assert_eq!(q.spare.len(), SPARE_QUEUES, "kept up to the bound");
        }
    }

    #[test]
    fn a_small_frame_waits_behind_one_frame_of_each_busy_stream() {
        let mut q = SendQueue::default();
        for s in [1, 3, 5, 7] {
            for _ in 0..16 {
                q.push(s, frame(s, MAX_DATA));
            }
        }
        q.push(9, frame(9, 64));
        let mut out = Vec::new();
        let mut before = 0;
        while !q.is_empty() {
            let mut batch = Vec::new();
            q.take(128 * 1024, &mut batch);
            if let Some(i) = batch.iter().position(|f| stream_of(f) == 9) {
                before += i;
                break;
            }
            before += batch.len();
            out.extend(batch);
        }
        assert_eq!(
            before, 4,
            "one frame of each of the four bulk streams, then ours"
        );
    }

    #[test]
    fn a_sparse_stream_goes_ahead_of_busy_ones_but_only_once_per_round() {
        let mut q = SendQueue::default();
        for s in [1, 3, 5, 7] {
            for _ in 0..16 {
                q.push(s, frame(s, MAX_DATA));
            }
        }
        let mut batch = Vec::new();
        q.take(4 * QUANTUM, &mut batch);
        // The bulk streams are busy now: a small frame of an idle stream goes first.
        q.push(9, frame(9, 64));
        let mut batch = Vec::new();
        q.take(1, &mut batch);
        assert_eq!(stream_of(&batch[0]), 9);
        // Posing as sparse again at once does not jump the queue: the busy streams each get
        // their turn before stream 9 is sparse again.
        q.push(9, frame(9, 64));
        let mut seen = Vec::new();
        for _ in 0..5 {
            let mut batch = Vec::new();
            q.take(1, &mut batch);
            seen.push(stream_of(&batch[0]));
        }
        assert_eq!(
            seen,
            [1, 3, 5, 7, 9],
            "the busy ring, in turn, then stream 9"
        );
        // Every frame is accounted for.
        let mut rest = Vec::new();
        q.take(usize::MAX, &mut rest);
        assert!(q.is_empty());
        assert_eq!(q.streams.len(), 0, "no stream left behind");
    }

    #[test]
    fn one_frame_on_an_idle_queue_is_counted_served_and_dropped_like_any_other() {
        let mut q = SendQueue::default();
        q.push(5, frame(5, 64));
        assert_eq!(q.bytes(), HEADER_LEN + 64);
        assert_eq!(q.bytes_of(5), HEADER_LEN + 64);
        assert_eq!(q.bytes_of(7), 0);
        assert!(q.streams.is_empty(), "held apart, no table entry");
        let mut out = Vec::new();
        assert_eq!(q.take(0, &mut out), 0, "no budget, nothing taken");
        assert_eq!(q.take(1, &mut out), HEADER_LEN + 64);
        assert_eq!(out.len(), 1);
        assert_eq!(stream_of(&out[0]), 5);
        assert!(q.is_empty());
        q.push(5, frame(5, 100));
        assert_eq!(q.drop_stream(7), 0, "another stream's frame stays");
        assert_eq!(q.drop_stream(5), 100, "its payload's credit comes back");
        assert!(q.is_empty());
        assert_eq!(q.take(usize::MAX, &mut out), 0);
    }

    #[test]
    fn a_second_frame_moves_the_first_into_the_rings_ahead_of_itself() {
        for second in [5, 7] {
            let mut q = SendQueue::default();
            q.push(5, frame(5, 10));
            q.push(second, frame(second, 20));
            assert_eq!(q.bytes(), 2 * HEADER_LEN + 30);
            assert_eq!(
                q.bytes_of(5),
                HEADER_LEN + 10 + (second == 5) as usize * (HEADER_LEN + 20)
            );
            let mut out = Vec::new();
            q.take(usize::MAX, &mut out);
            let lens: Vec<usize> = out.iter().map(Bytes::len).collect();
            assert_eq!(
                lens,
                [HEADER_LEN + 10, HEADER_LEN + 20],
                "first come, first sent"
            );
            assert!(q.is_empty());
            assert!(q.streams.is_empty() && q.ring.is_empty() && q.sparse.is_empty());
            // Idle again: the next lone frame is held apart again.
            q.push(second, frame(second, 1));
            assert!(q.streams.is_empty());
            assert_eq!(q.take(1, &mut out), HEADER_LEN + 1);
        }
    }

    #[test]
    fn frames_pushed_and_taken_in_any_order_keep_each_streams_order_and_the_count() {
        // A fixed pseudo-random walk over pushes and takes of small budgets: every frame comes
        // out once, each stream's in the order pushed, and the byte count always adds up.
        let mut q = SendQueue::default();
        let mut seed = 0x2545_f491_u32;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            seed
        };
        let mut pushed: HashMap<u32, Vec<usize>> = HashMap::default();
        let mut sent: HashMap<u32, Vec<usize>> = HashMap::default();
        let mut queued = 0;
        for _ in 0..5_000 {
            let r = next();
            if r % 3 == 0 {
                let mut out = Vec::new();
                queued -= q.take((r as usize >> 4) % (2 * QUANTUM), &mut out);
                for f in out {
                    sent.entry(stream_of(&f)).or_default().push(f.len());
                }
            } else {
                let stream = 1 + 2 * (r >> 8) % 4;
                let len = (r as usize >> 12) % 3000;
                q.push(stream, frame(stream, len));
                pushed.entry(stream).or_default().push(HEADER_LEN + len);
                queued += HEADER_LEN + len;
            }
            assert_eq!(q.bytes(), queued);
        }
        let mut out = Vec::new();
        q.take(usize::MAX, &mut out);
        for f in out {
            sent.entry(stream_of(&f)).or_default().push(f.len());
        }
        assert!(q.is_empty());
        assert_eq!(sent, pushed);
    }

    #[test]
    fn order_within_a_stream_is_kept_and_bytes_add_up() {
        let mut q = SendQueue::default();
        q.push(1, frame(1, 100));
        q.push(3, frame(3, MAX_DATA));
        q.push(1, frame(1, 0)); // a FIN
        assert_eq!(q.bytes(), 3 * HEADER_LEN + 100 + MAX_DATA);
        assert_eq!(q.bytes_of(1), 2 * HEADER_LEN + 100);
        let mut out = Vec::new();
        let taken = q.take(usize::MAX, &mut out);
        assert_eq!(taken, 3 * HEADER_LEN + 100 + MAX_DATA);
        let ones: Vec<usize> = out
            .iter()
            .filter(|f| stream_of(f) == 1)
            .map(Bytes::len)
            .collect();
        assert_eq!(ones, vec![HEADER_LEN + 100, HEADER_LEN]);
        assert!(q.is_empty());
    }

    #[test]
    fn a_dropped_stream_gives_back_its_payload() {
        let mut q = SendQueue::default();
        q.push(1, frame(1, 1000));
        q.push(1, frame(1, 0));
        q.push(3, frame(3, 10));
        assert_eq!(q.drop_stream(1), 1000);
        assert_eq!(q.bytes(), HEADER_LEN + 10);
        let mut out = Vec::new();
        q.take(usize::MAX, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(q.drop_stream(1), 0);
    }
}
