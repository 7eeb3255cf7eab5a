//! What a stream's tunnel and its connection share on their one thread: the queue of the
//! tunnel's events for the connection, and the socket's write half, so that the tunnel writes a
//! frame's bytes straight to the socket when nothing is ahead of them.
//!
//! A connection is started by its tunnel on the tunnel's thread, so the two reach the socket and
//! the queue in turn, never at once. Events go through the queue, not as actor messages (each
//! had cost an envelope and a channel node allocated, and a pass over the mailbox): the
//! connection's lasting item takes them in order (`watch.rs`), and only the event that finds the queue
//! empty wakes its task. The queue is bounded by what bounds the events: DATA only within the
//! stream's window, and a handful of others over the stream's life.
//!
//! The direct write saves the usual path's event and its consumption report on every short
//! exchange. It is taken only when it cannot reorder or hide anything:
//! - the connection has nothing of its own queued or being written, and its socket's write side
//!   is not shut down (it keeps [`Downstream::open`] up to date);
//! - no event is waiting in the queue;
//! - the stream is plaintext and unpaced (a keyed stream's keys and a paced stream's tokens are
//!   the connection's own).
//!
//! Whatever the socket does not take at once goes the usual way, as a `StreamEvent::Data` behind
//! which no direct write can pass (it waits in the queue until taken).

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::task::Context;

use tokio::net::tcp::OwnedWriteHalf;

use super::StreamEvent;
use crate::lasting::WakingQueue;

/// Emptied event queues a data thread keeps for its connections.
const SPARE_QUEUES: usize = 64;
/// The largest capacity (in events) of an emptied queue that is kept.
const SPARE_CAPACITY: usize = 8;

thread_local! {
    /// Event queues this thread's idle connections gave back (at most [`SPARE_QUEUES`]), for the
    /// next connection that receives an event: with many connections exchanging at once, each
    /// request's event had made a queue and dropped it when the connection went idle again.
    static SPARE: RefCell<Vec<VecDeque<StreamEvent>>> = const { RefCell::new(Vec::new()) };
}

/// What a connection shares with its tunnel: the tunnel's events for it and its socket's write
/// half.
pub struct Downstream {
    /// The write half; `None` while a write future of the connection owns it, before a remote
    /// end's dial answers, and once our write side is shut down.
    writer: RefCell<Option<OwnedWriteHalf>>,
    /// The connection takes direct writes now (see the module's conditions).
    open: Cell<bool>,
    /// Events the tunnel sent that the connection has not taken yet, in order: a direct write
    /// must not pass them. Their taker is the connection's lasting item.
    events: WakingQueue<StreamEvent>,
    /// The tunnel let go of the stream: no event will come (the connection's lasting item may
    /// end, `watch.rs`).
    released: Cell<bool>,
    /// DATA payload the connection wrote straight to its tunnel's socket (`upstream.rs`) that
    /// the tunnel has not counted yet: it counts it at the `Sent` report, or before it lets go
    /// of the stream, whichever comes first (the stream's credit must be settled before it goes).
    unaccounted: Cell<u64>,
    /// Reads and writes either way so far (direct writes count), for the connection's idle
    /// timeout: counted, not timed, so that moving bytes reads no clock; the idle check
    /// compares it between its ticks.
    activity: Cell<u64>,
}

impl Downstream {
    pub fn new() -> Downstream {
        Downstream {
            writer: RefCell::new(None),
            open: Cell::new(false),
            events: WakingQueue::default(),
            released: Cell::new(false),
            unaccounted: Cell::new(0),
            activity: Cell::new(0),
        }
    }

    /// Writes what the socket takes of `bytes` at once, if a direct write may be taken now: how
    /// many bytes went (0 if none, or if it may not be taken). An error is not reported here: the
    /// bytes then go the usual way and the connection meets the error on its own write.
    pub fn write_direct(&self, bytes: &[u8]) -> usize {
        if !self.open.get() || bytes.is_empty() || !self.events.is_empty() {
            return 0;
        }
        let writer = self.writer.borrow();
        let Some(w) = writer.as_ref() else {
            return 0;
        };
        match w.try_write(bytes) {
            Ok(n) => {
                self.touch();
                n
            }
            // Full (`WouldBlock`) or failed: the usual way, which waits or meets the error.
            Err(_) => 0,
        }
    }

    /// Tunnel -> connection: queues `event`; wakes the connection's task if the queue was empty
    /// (else a wake-up is due already). No direct write passes it until it is taken.
    pub fn send(&self, event: StreamEvent) {
        if self.events.has_no_buffer() {
            if let Some(buffer) = SPARE.with_borrow_mut(Vec::pop) {
                self.events.give_buffer(buffer);
            }
        }
        self.events.send(event);
    }

    /// Tunnel -> connection: the tunnel let go of the stream (its entry is gone).
    pub fn release(&self) {
        self.released.set(true);
        self.events.wake_taker();
    }

    /// Whether a frame of the connection may pass its tunnel's reports straight to the tunnel's
    /// socket (`upstream.rs`): every event of the tunnel taken, and the stream still the tunnel's
    /// (a stream it removed has had its credit taken back).
    pub(super) fn passable(&self) -> bool {
        self.events.is_empty() && !self.released.get()
    }

    /// Connection: `payload` bytes of DATA went straight to the tunnel's socket.
    pub(super) fn sent_direct(&self, payload: u64) {
        self.unaccounted.set(self.unaccounted.get() + payload);
    }

    /// Tunnel: the DATA payload sent straight since it last looked, to count now.
    pub fn take_unaccounted(&self) -> u64 {
        self.unaccounted.take()
    }

    /// Whether the tunnel let go of the stream.
    pub(super) fn released(&self) -> bool {
        self.released.get()
    }

    /// The oldest event not taken yet.
    pub(super) fn take_event(&self) -> Option<StreamEvent> {
        self.events.take()
    }

    /// The lasting item found the queue empty: the next event wakes `task`. The queue's buffer
    /// goes back to the thread's spares (or to the allocator) meanwhile, so an idle connection
    /// holds none.
    pub(super) fn wait_events(&self, task: &Context<'_>) {
        if let Some(buffer) = self.events.take_buffer() {
            if buffer.capacity() <= SPARE_CAPACITY {
                SPARE.with_borrow_mut(|spare| {
                    if spare.len() < SPARE_QUEUES {
                        spare.push(buffer);
                    }
                });
            }
        }
        self.events.wait(task);
    }

    pub(super) fn set_open(&self, open: bool) {
        self.open.set(open);
    }

    /// Takes the write half out (for a write future, or to shut it down).
    pub(super) fn take_writer(&self) -> Option<OwnedWriteHalf> {
        self.writer.borrow_mut().take()
    }

    pub(super) fn put_writer(&self, w: OwnedWriteHalf) {
        *self.writer.borrow_mut() = Some(w);
    }

    pub(super) fn has_writer(&self) -> bool {
        self.writer.borrow().is_some()
    }

    /// Bytes moved: the connection is not idle.
    pub(super) fn touch(&self) {
        self.activity.set(self.activity.get().wrapping_add(1));
    }

    /// Reads and writes so far: unchanged between two looks, nothing moved between them.
    pub(super) fn activity(&self) -> u64 {
        self.activity.get()
    }
}

impl Default for Downstream {
    fn default() -> Self {
        Downstream::new()
    }
}
