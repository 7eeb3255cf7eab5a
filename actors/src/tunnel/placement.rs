//! Which lane a new stream goes on: a plain type, shared by a tunnel's lanes (each an actor on a
//! data thread of its own, `group.rs`), that counts their live streams per service.
//!
//! The rule: a stream goes on the lane whose data thread carries the fewest streams of *other*
//! services, over every tunnel of the node ([`ThreadStreams`]); then the lane carrying the fewest
//! of them; then the fewest streams, thread and lane; then the first. And a service spreads over
//! at most all lanes but one. So one service's bulk, however many streams it opens, leaves a
//! lane clear for the others, and an interactive stream opened beside it gets a connection and a
//! thread the bulk does not use, even when the bulk is on another tunnel whose lanes share the
//! threads; one service's many streams still spread over the rest (a path that limits each
//! connection carries them over several).

use foldhash::{HashMap, HashMapExt};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::data_thread::ThreadStreams;
use crate::limits::Usage;

/// Lanes a tunnel carries at most (the first included): what a dialer may ask for and what an
/// acceptor takes.
pub const MAX_LANES: usize = 8;

/// The live streams of a tunnel's lanes, per service.
#[derive(Debug)]
pub(crate) struct Placement {
    /// The tunnel's lanes now, the first included (1 ..= [`MAX_LANES`]).
    lanes: usize,
    /// Live streams per service, per lane; a service with none anywhere has no entry (so the
    /// table holds only services with streams now).
    streams: HashMap<String, [u32; MAX_LANES]>,
    /// Each lane's data thread, by number, once known (`None`: no data threads, or not yet).
    threads: [Option<usize>; MAX_LANES],
}

impl Placement {
    pub(crate) fn new() -> Placement {
        Placement {
            lanes: 1,
            streams: HashMap::new(),
            threads: [None; MAX_LANES],
        }
    }

    /// Lanes now, the first included.
    pub(crate) fn lanes(&self) -> usize {
        self.lanes
    }

    /// One more lane: its number, or `None` at [`MAX_LANES`].
    pub(crate) fn add_lane(&mut self) -> Option<usize> {
        (self.lanes < MAX_LANES).then(|| {
            self.lanes += 1;
            self.lanes - 1
        })
    }

    /// Lane `lane` runs on data thread `thread`.
    pub(crate) fn set_thread(&mut self, lane: usize, thread: Option<usize>) {
        if let Some(t) = self.threads.get_mut(lane) {
            *t = thread;
        }
    }

    /// The data thread lane `lane` runs on, if known.
    pub(crate) fn thread(&self, lane: usize) -> Option<usize> {
        self.threads.get(lane).copied().flatten()
    }

    /// The lane a new stream of `service` goes on (see the module's rule), given what every
    /// data thread carries now.
    pub(crate) fn place(&self, service: &str, node: &ThreadStreams) -> usize {
        let n = self.lanes;
        if n < 2 {
            return 0;
        }
        let none = [0u32; MAX_LANES];
        let mine = self.streams.get(service).unwrap_or(&none);
        let mut total = [0u32; MAX_LANES];
        for counts in self.streams.values() {
            for (t, c) in total.iter_mut().zip(counts) {
                *t += c;
            }
        }
        let used = mine[..n].iter().filter(|&&c| c > 0).count();
        // At n - 1 lanes already, the service stays on those: one lane is left to the others.
        let keep_to_own = used >= n - 1;
        (0..n)
            .filter(|&i| !keep_to_own || mine[i] > 0)
            .min_by_key(|&i| {
                let (thread_others, thread_total) =
                    self.thread(i).map_or((0, 0), |t| node.load(t, service));
                let lane_others = total[i] - mine[i];
                (thread_others, lane_others, thread_total, total[i], i)
            })
            .unwrap_or(0)
    }

    /// A stream of `service` now lives on `lane`.
    pub(crate) fn opened(&mut self, lane: usize, service: &str) {
        debug_assert!(
            lane < self.lanes,
            "a stream on lane {lane} of {}",
            self.lanes
        );
        let Some(lane) = (lane < MAX_LANES).then_some(lane) else {
            return;
        };
        match self.streams.get_mut(service) {
            Some(counts) => counts[lane] += 1,
            None => {
                let mut counts = [0; MAX_LANES];
                counts[lane] = 1;
                self.streams.insert(service.to_owned(), counts);
            }
        }
    }

    /// A stream of `service` on `lane` ended.
    pub(crate) fn closed(&mut self, lane: usize, service: &str) {
        let Some(counts) = self.streams.get_mut(service) else {
            debug_assert!(false, "a stream of an uncounted service {service} closed");
            return;
        };
        let Some(c) = counts.get_mut(lane) else {
            return;
        };
        debug_assert!(*c > 0, "more streams closed than opened on lane {lane}");
        *c = c.saturating_sub(1);
        if counts.iter().all(|&c| c == 0) {
            self.streams.remove(service);
        }
    }
}

/// A tunnel's placement, shared by its lanes across their threads.
#[derive(Clone)]
pub(crate) struct Lanes {
    /// The tunnel's own table.
    placement: Arc<Mutex<Placement>>,
    /// The node's accounting, whose [`ThreadStreams`] counts every tunnel's streams per thread.
    usage: Arc<Usage>,
}

impl Lanes {
    pub(crate) fn new(usage: Arc<Usage>) -> Lanes {
        Lanes {
            placement: Arc::new(Mutex::new(Placement::new())),
            usage,
        }
    }

    /// The table (a lane that panicked while holding it left it whole: every change is one
    /// counter).
    pub(crate) fn lock(&self) -> MutexGuard<'_, Placement> {
        self.placement.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A seat for a new stream of `service` on the lane the rule picks, counted at once (so a
    /// burst of new streams is placed knowing the ones before it).
    pub(crate) fn place(&self, service: &str) -> Seat {
        let lane = self.lock().place(service, &self.usage.thread_streams);
        self.seat_on(lane, service)
    }

    /// A seat for a stream of `service` living on `lane` (one the peer opened there).
    pub(crate) fn seat_on(&self, lane: usize, service: &str) -> Seat {
        let thread = {
            let mut p = self.lock();
            p.opened(lane, service);
            p.thread(lane)
        };
        if let Some(t) = thread {
            self.usage.thread_streams.opened(t, service);
        }
        Seat {
            lanes: self.clone(),
            lane,
            thread,
            service: service.to_owned(),
        }
    }
}

/// One stream's place on a lane, counted while it lives: dropped with the stream (or with a
/// client that never became one), it is uncounted.
pub(crate) struct Seat {
    /// The placement it is counted in.
    lanes: Lanes,
    /// The lane it is on.
    lane: usize,
    /// The data thread it was counted on node-wide (`None`: not counted there).
    thread: Option<usize>,
    /// Its service.
    service: String,
}

impl Seat {
    pub(crate) fn lane(&self) -> usize {
        self.lane
    }
}

impl Drop for Seat {
    fn drop(&mut self) {
        self.lanes.lock().closed(self.lane, &self.service);
        if let Some(t) = self.thread {
            self.lanes.usage.thread_streams.closed(t, &self.service);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage() -> Arc<Usage> {
        Usage::new(crate::limits::Limits::default(), 1024)
    }

    fn with_lanes(n: usize) -> Lanes {
        let lanes = Lanes::new(usage());
        for _ in 1..n {
            lanes.lock().add_lane();
        }
        lanes
    }

    #[test]
    fn one_lane_takes_everything() {
        let lanes = Lanes::new(usage());
        let seats: Vec<Seat> = (0..5).map(|_| lanes.place("bulk")).collect();
        assert!(seats.iter().all(|s| s.lane() == 0));
    }

    #[test]
    fn a_service_leaves_one_lane_to_the_others() {
        let lanes = with_lanes(2);
        let bulk: Vec<Seat> = (0..4).map(|_| lanes.place("bulk")).collect();
        assert!(
            bulk.iter().all(|s| s.lane() == 0),
            "bulk keeps to one of two"
        );
        let echo = lanes.place("echo");
        assert_eq!(echo.lane(), 1, "the exchange gets the lane the bulk left");
        // More of the bulk still keeps off the exchange's lane.
        assert_eq!(lanes.place("bulk").lane(), 0);
    }

    #[test]
    fn one_service_spreads_over_all_lanes_but_one() {
        let lanes = with_lanes(4);
        let seats: Vec<Seat> = (0..9).map(|_| lanes.place("bulk")).collect();
        let mut per = [0; 4];
        for s in &seats {
            per[s.lane()] += 1;
        }
        assert_eq!(per, [3, 3, 3, 0]);
        assert_eq!(lanes.place("ssh").lane(), 3);
    }

    #[test]
    fn a_lane_the_others_use_is_avoided_while_one_is_clear() {
        let lanes = with_lanes(3);
        let a = lanes.place("a");
        let b = lanes.place("b");
        assert_eq!((a.lane(), b.lane()), (0, 1));
        let c = lanes.place("c");
        assert_eq!(c.lane(), 2);
        // No lane is clear of others now: the one with the fewest other streams.
        let _a2 = lanes.place("a");
        let d = lanes.place("d");
        assert_eq!(
            d.lane(),
            1,
            "lanes 1 and 2 carry one stream of others; 1 comes first"
        );
    }

    #[test]
    fn a_dropped_seat_is_uncounted_and_the_table_empties() {
        let lanes = with_lanes(2);
        let bulk = lanes.place("bulk");
        assert_eq!(bulk.lane(), 0);
        drop(bulk);
        assert!(lanes.lock().streams.is_empty());
        // With the bulk gone, an exchange may take the first lane again.
        assert_eq!(lanes.place("echo").lane(), 0);
    }

    #[test]
    fn streams_the_peer_opened_count_too() {
        let lanes = with_lanes(2);
        let _peer = lanes.seat_on(0, "download");
        assert_eq!(lanes.place("echo").lane(), 1);
    }

    /// A tunnel of two lanes on data threads `first` and `first + 1` (of two), counted in `usage`.
    fn on_threads(usage: &Arc<Usage>, first: usize) -> Lanes {
        let lanes = Lanes::new(usage.clone());
        let mut p = lanes.lock();
        p.set_thread(0, Some(first % 2));
        let lane = p.add_lane().expect("a second lane");
        p.set_thread(lane, Some((first + 1) % 2));
        drop(p);
        lanes
    }

    #[test]
    fn another_tunnels_bulk_on_a_thread_is_avoided_too() {
        let usage = usage();
        let (interactive, bulky) = (on_threads(&usage, 0), on_threads(&usage, 0));
        // The bulk takes the first lane of its tunnel: thread 0.
        let bulk = bulky.place("bulk");
        assert_eq!(bulk.lane(), 0);
        assert_eq!(usage.thread_streams.load(0, "echo"), (1, 1));
        // The exchange's own tunnel carries nothing, but its first lane shares thread 0 with
        // the bulk: it goes on the lane of the other thread.
        assert_eq!(interactive.place("echo").lane(), 1);
        // Once the bulk is gone, nothing is left counted and the first lane is first again.
        drop(bulk);
        assert_eq!(usage.thread_streams.load(0, "echo"), (0, 0));
        assert_eq!(interactive.place("echo").lane(), 0);
    }

    #[test]
    fn the_bulk_keeps_off_the_thread_of_an_exchange_already_there() {
        let usage = usage();
        let (interactive, bulky) = (on_threads(&usage, 0), on_threads(&usage, 1));
        let echo = interactive.place("echo");
        assert_eq!(echo.lane(), 0, "thread 0");
        // The bulk's tunnel starts on thread 1 anyway; its second lane (thread 0) is not taken.
        assert_eq!(bulky.place("bulk").lane(), 0);
        let bulky = on_threads(&usage, 0);
        assert_eq!(
            bulky.place("bulk").lane(),
            1,
            "thread 1, not the exchange's"
        );
    }

    #[test]
    fn thread_counts_follow_seats_and_their_service() {
        let usage = usage();
        let lanes = on_threads(&usage, 0);
        let a = lanes.seat_on(1, "a");
        let _b = lanes.seat_on(1, "b");
        assert_eq!(usage.thread_streams.load(1, "a"), (1, 2));
        assert_eq!(usage.thread_streams.load(1, "c"), (2, 2));
        assert_eq!(usage.thread_streams.load(0, "a"), (0, 0));
        drop(a);
        assert_eq!(usage.thread_streams.load(1, "b"), (0, 1));
    }

    #[test]
    fn lanes_stop_at_the_maximum() {
        let lanes = with_lanes(MAX_LANES);
        assert_eq!(lanes.lock().lanes(), MAX_LANES);
        assert_eq!(lanes.lock().add_lane(), None);
    }
}
