//! What a stream's tunnel and its connection share on their one thread: the socket's write half,
//! so that the tunnel writes a frame's bytes straight to the socket when nothing is ahead of them.
//!
//! A connection is started by its tunnel on the tunnel's thread, so the two reach the socket in
//! turn, never at once. The direct write saves the two actor messages of the usual path (the
//! frame to the connection, its consumption back), each a boxed envelope and a task wake-up,
//! on every short exchange. It is taken only when it cannot reorder or hide anything:
//! - the connection has nothing of its own queued or being written, and its socket's write side
//!   is not shut down (it keeps [`Downstream::open`] up to date);
//! - no event the tunnel sent it is still in its mailbox (the tunnel counts them);
//! - the stream is plaintext and unpaced (a keyed stream's keys and a paced stream's tokens are
//!   the connection's own).
//!
//! Whatever the socket does not take at once goes the usual way, as a `StreamEvent::Data` behind
//! which no direct write can pass (it is counted in the mailbox until handled).

use std::cell::{Cell, RefCell};

use tokio::net::tcp::OwnedWriteHalf;

/// A connection's socket write half, shared with its tunnel.
pub struct Downstream {
    /// The write half; `None` while a write future of the connection owns it, before a remote
    /// end's dial answers, and once our write side is shut down.
    writer: RefCell<Option<OwnedWriteHalf>>,
    /// The connection takes direct writes now (see the module's conditions).
    open: Cell<bool>,
    /// Events the tunnel sent the connection that it has not handled yet: a direct write must not
    /// pass them.
    in_mailbox: Cell<u32>,
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
            in_mailbox: Cell::new(0),
            activity: Cell::new(0),
        }
    }

    /// Writes what the socket takes of `bytes` at once, if a direct write may be taken now: how
    /// many bytes went (0 if none, or if it may not be taken). An error is not reported here: the
    /// bytes then go the usual way and the connection meets the error on its own write.
    pub fn write_direct(&self, bytes: &[u8]) -> usize {
        if !self.open.get() || self.in_mailbox.get() != 0 || bytes.is_empty() {
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

    /// The tunnel sends the connection an event: no direct write passes it until it is handled.
    pub fn event_sent(&self) {
        self.in_mailbox.set(self.in_mailbox.get() + 1);
    }

    /// The connection handled one event (one sent without counting, in tests, changes nothing).
    pub(super) fn event_handled(&self) {
        self.in_mailbox.set(self.in_mailbox.get().saturating_sub(1));
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
