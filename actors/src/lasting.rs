//! How an actor's lasting item (one future held for the actor's life, polled at every pass of
//! its task) is woken for work asked of it: a plain type, shared by the connection's lasting item
//! (its tunnel's events, then readability) and the tunnel's writer; and [`WakingQueue`], the
//! queue such an item takes another actor's items from (a connection's reports, a tunnel's
//! events).
//!
//! actix polls an actor's items after its mailbox, at each pass. Work asked for by a mailbox
//! handler, or by the item itself, is therefore seen by the item later in the same pass.
//! Work asked for anywhere else (another item: a dial, a timer, a frame reader) may come after
//! the item in the pass, so it wakes the actor's task and the item is polled again before the
//! task sleeps.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::task::{Context, Waker};

/// The item's waker, and whether what runs now comes before the item in the pass.
#[derive(Default)]
pub struct LastingItem {
    /// The actor's task, kept by the item each time it waits.
    waker: Option<Waker>,
    /// A mailbox handler or the item itself is running.
    in_order: bool,
}

impl LastingItem {
    /// Marks what runs now as in order (a mailbox handler, or the item's own poll); the mark
    /// before, to give back to [`LastingItem::leave`].
    pub fn enter(&mut self) -> bool {
        std::mem::replace(&mut self.in_order, true)
    }

    /// Ends what [`LastingItem::enter`] began.
    pub fn leave(&mut self, outer: bool) {
        self.in_order = outer;
    }

    /// Work was asked of the item: wakes the actor's task unless the item comes later in this
    /// pass anyway. (Before the item's first poll there is no waker, and none is needed: a new
    /// item is polled in the pass it was spawned in.)
    pub fn asked(&self) {
        if !self.in_order {
            if let Some(w) = &self.waker {
                w.wake_by_ref();
            }
        }
    }

    /// The item waits: keeps the task's waker (a clone only when it changed).
    pub fn waits(&mut self, task: &std::task::Context<'_>) {
        if !self
            .waker
            .as_ref()
            .is_some_and(|w| w.will_wake(task.waker()))
        {
            self.waker = Some(task.waker().clone());
        }
    }
}

/// A queue from one actor to a lasting item of another on the same thread (a connection's
/// reports to its tunnel, a tunnel's events to a connection): no lock and no envelope, and the
/// taker's task is woken only by the first item sent since the taker last waited (later ones
/// find a wake-up already due). The taker keeps its waker each time it finds the queue empty; a
/// wake-up takes it. An item sent quietly wakes no one: it waits for the taker's next poll.
pub struct WakingQueue<T> {
    /// Items not taken yet, in the order they were sent.
    items: RefCell<VecDeque<T>>,
    /// The taker's task, kept each time it found the queue empty.
    taker: Cell<Option<Waker>>,
}

impl<T> Default for WakingQueue<T> {
    fn default() -> Self {
        WakingQueue {
            items: RefCell::new(VecDeque::new()),
            taker: Cell::new(None),
        }
    }
}

impl<T> WakingQueue<T> {
    /// Queues `item`; wakes the taker if it waits (else a wake-up is due already).
    pub fn send(&self, item: T) {
        self.items.borrow_mut().push_back(item);
        self.wake_taker();
    }

    /// Queues `item` without waking the taker: it is taken at the taker's next poll, whatever
    /// wakes it. (An item sent after it wakes the taker as usual, if it waits.)
    pub fn send_quiet(&self, item: T) {
        self.items.borrow_mut().push_back(item);
    }

    /// The oldest item not taken yet.
    pub fn take(&self) -> Option<T> {
        self.items.borrow_mut().pop_front()
    }

    /// Nothing waits to be taken.
    pub fn is_empty(&self) -> bool {
        self.items.borrow().is_empty()
    }

    /// Wakes the taker now (for news that is not an item), if it waits.
    pub fn wake_taker(&self) {
        if let Some(waker) = self.taker.take() {
            waker.wake();
        }
    }

    /// The taker found the queue empty: the next item wakes `task`.
    pub fn wait(&self, task: &Context<'_>) {
        let waker = match self.taker.take() {
            Some(w) if w.will_wake(task.waker()) => w,
            _ => task.waker().clone(),
        };
        self.taker.set(Some(waker));
    }

    /// The queue's buffer, if the queue is empty and has one (the queue then holds none).
    pub fn take_buffer(&self) -> Option<VecDeque<T>> {
        let mut items = self.items.borrow_mut();
        (items.is_empty() && items.capacity() > 0).then(|| std::mem::take(&mut *items))
    }

    /// Whether the queue holds no buffer (its next item allocates one).
    pub fn has_no_buffer(&self) -> bool {
        self.items.borrow().capacity() == 0
    }

    /// Gives the queue `buffer` (emptied) if it holds none.
    pub fn give_buffer(&self, buffer: VecDeque<T>) {
        debug_assert!(buffer.is_empty(), "a buffer given with items in it");
        let mut items = self.items.borrow_mut();
        if items.capacity() == 0 && buffer.is_empty() {
            *items = buffer;
        }
    }
}

/// A waker that counts its wake-ups, for the unit tests of what wakes a task.
#[cfg(test)]
pub(crate) fn counting_waker() -> (Waker, std::sync::Arc<Wakes>) {
    let count = std::sync::Arc::new(Wakes(std::sync::atomic::AtomicUsize::new(0)));
    (Waker::from(count.clone()), count)
}

/// The wake-ups a [`counting_waker`] has had.
#[cfg(test)]
pub(crate) struct Wakes(std::sync::atomic::AtomicUsize);

#[cfg(test)]
impl Wakes {
    pub(crate) fn get(&self) -> usize {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[cfg(test)]
impl std::task::Wake for Wakes {
    fn wake(self: std::sync::Arc<Self>) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_work_asked_out_of_order_wakes_the_task() {
        let (waker, count) = counting_waker();
        let mut item = LastingItem::default();
        // No waker yet: nothing to wake, nothing needed.
        item.asked();
        item.waits(&std::task::Context::from_waker(&waker));
        let outer = item.enter();
        item.asked();
        assert_eq!(count.get(), 0, "in order: no wake-up");
        // Nested in-order steps keep the mark until the outermost ends.
        let inner = item.enter();
        item.leave(inner);
        item.asked();
        assert_eq!(count.get(), 0);
        item.leave(outer);
        item.asked();
        assert_eq!(count.get(), 1, "out of order: one wake-up");
    }

    #[test]
    fn a_quiet_item_wakes_no_one_and_does_not_hold_back_the_next_wake_up() {
        let (waker, count) = counting_waker();
        let task = Context::from_waker(&waker);
        let queue = WakingQueue::default();
        queue.wait(&task);
        queue.send_quiet(1);
        assert_eq!(count.get(), 0, "a quiet item waits for the next poll");
        queue.send(2);
        assert_eq!(
            count.get(),
            1,
            "the next item wakes the taker, the queue not empty"
        );
        queue.send(3);
        assert_eq!(count.get(), 1, "a wake-up is due already");
        assert_eq!(queue.take(), Some(1));
        assert_eq!(queue.take(), Some(2));
        assert_eq!(queue.take(), Some(3));
        queue.wait(&task);
        queue.send(4);
        assert_eq!(count.get(), 2, "the taker waited again");
    }

    #[test]
    fn a_waking_queue_gives_its_buffer_up_only_when_empty_and_takes_one_only_when_it_has_none() {
        let queue = WakingQueue::default();
        for n in 0..5 {
            queue.send(n);
        }
        assert!(queue.take_buffer().is_none(), "kept while it holds items");
        assert_eq!(queue.take(), Some(0));
        while queue.take().is_some() {}
        let buffer = queue.take_buffer().expect("the emptied buffer");
        assert!(buffer.capacity() >= 5);
        assert!(queue.is_empty() && queue.has_no_buffer());
        assert!(queue.take_buffer().is_none(), "none left to give");
        // A queue given a buffer uses it; one that has a buffer keeps its own.
        let capacity = buffer.capacity();
        queue.give_buffer(buffer);
        assert_eq!(queue.items.borrow().capacity(), capacity);
        queue.give_buffer(VecDeque::with_capacity(64));
        assert_eq!(queue.items.borrow().capacity(), capacity);
        queue.send(7);
        assert_eq!(queue.take(), Some(7));
    }
}
