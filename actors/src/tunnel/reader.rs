//! The tunnel's frame reader: one item of the actor for its life, which decodes the peer's frames
//! (through the record layer when sealed) and hands each to the actor's `StreamHandler`, as
//! actix's own stream item did, but polls the socket only when its readiness woke it.
//!
//! actix polls every item of an actor at each pass of its task. The tunnel's task runs for its
//! writes too (a connection's report, a grant), and each of those passes polled the frame
//! stream, down to tokio's readiness check of the socket, for nothing. Here the socket is given
//! a waker of the reader's own, which marks the reader woken before it wakes the task; a pass
//! that finds the mark unset skips the socket.
//!
//! The mark is set again, so that the next pass reads on, whenever the reader stops for another
//! reason than the socket running dry: after [`BURST`] frames (as actix's stream item yields, so
//! that the writer and the mailbox get their turn), or when a handler made the actor wait.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Poll, Wake, Waker};

use futures_util::task::AtomicWaker;
use futures_util::Stream;
use tokio_util::codec::Decoder;

use super::*;

/// Frames handled per poll at most, as actix's stream item does, before the reader lets the
/// actor's other items run.
const BURST: usize = 16;

/// The lasting item: see the module.
pub(super) struct Reader<C> {
    /// The peer's frames, from the socket's read half.
    frames: FramedRead<tokio::net::tcp::OwnedReadHalf, C>,
    /// Set when the socket's readiness woke the reader, or when it must read on.
    wake: Arc<ReadWake>,
    /// The waker the socket is polled with: `wake`'s.
    waker: Waker,
}

/// The reader's own waker: marks the reader woken, then wakes the actor's task.
struct ReadWake {
    /// The reader is to poll the socket at its next poll.
    woken: AtomicBool,
    /// The actor's task, registered at each poll of the reader.
    task: AtomicWaker,
}

impl Wake for ReadWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl<C> Reader<C> {
    /// A reader of `frames`; it polls them at its first poll.
    pub(super) fn new(frames: FramedRead<tokio::net::tcp::OwnedReadHalf, C>) -> Reader<C> {
        let wake = Arc::new(ReadWake {
            woken: AtomicBool::new(true),
            task: AtomicWaker::new(),
        });
        Reader {
            frames,
            waker: Waker::from(wake.clone()),
            wake,
        }
    }
}

impl<C> ActorFuture<Tunnel> for Reader<C>
where
    C: Decoder<Item = Frame, Error = ProtocolError> + Unpin + 'static,
{
    type Output = ();

    fn poll(
        self: Pin<&mut Self>,
        act: &mut Tunnel,
        ctx: &mut Context<Tunnel>,
        task: &mut std::task::Context<'_>,
    ) -> Poll<()> {
        let this = self.get_mut();
        // Registered before the mark is read: a wake-up in between is not lost.
        this.wake.task.register(task.waker());
        if !this.wake.woken.swap(false, Ordering::Acquire) {
            return Poll::Pending;
        }
        let mut socket = std::task::Context::from_waker(&this.waker);
        for _ in 0..BURST {
            match Pin::new(&mut this.frames).poll_next(&mut socket) {
                Poll::Ready(Some(item)) => {
                    let bytes = match &item {
                        Ok(Frame::Data { payload, .. }) => payload.len(),
                        _ => 0,
                    };
                    crate::busy_poll::read_something(bytes, crate::busy_poll::ReadFrom::Tunnel);
                    <Tunnel as StreamHandler<Result<Frame, ProtocolError>>>::handle(act, item, ctx);
                    if ctx.waiting() {
                        // actix polls the items again once the wait is over, in this pass.
                        this.wake.woken.store(true, Ordering::Release);
                        return Poll::Pending;
                    }
                }
                Poll::Ready(None) => {
                    <Tunnel as StreamHandler<Result<Frame, ProtocolError>>>::finished(act, ctx);
                    return Poll::Ready(());
                }
                // The socket ran dry; its readiness wakes the reader.
                Poll::Pending => return Poll::Pending,
            }
        }
        // A burst: read on at the next pass, after the other items.
        this.wake.woken.store(true, Ordering::Release);
        task.waker().wake_by_ref();
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lasting::counting_waker;

    #[test]
    fn the_reader_is_marked_woken_only_by_its_own_waker() {
        let (task, count) = counting_waker();
        let wake = Arc::new(ReadWake {
            woken: AtomicBool::new(false),
            task: AtomicWaker::new(),
        });
        let waker = Waker::from(wake.clone());
        wake.task.register(&task);
        // The socket's readiness: marked, and the task woken.
        waker.wake_by_ref();
        assert!(wake.woken.swap(false, Ordering::Acquire));
        assert_eq!(count.get(), 1);
        // The task's wake-up alone (a write, a report) leaves the reader unmarked.
        task.wake_by_ref();
        assert!(!wake.woken.load(Ordering::Acquire));
        // Not registered again: a second readiness marks it without waking anyone.
        waker.wake_by_ref();
        assert!(wake.woken.load(Ordering::Acquire));
        assert_eq!(count.get(), 2);
    }
}
