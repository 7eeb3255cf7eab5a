//! Bandwidth limits: a token bucket per service and direction, shared by the service's
//! connections. A connection reads its socket (or writes to it) only while its direction's bucket
//! is not in debt, and takes what it moved afterwards; when the bucket is in debt it waits until
//! the debt is paid. Waiting to read leaves bytes in the sender's socket, waiting to write holds
//! back the stream's credit, so a limited service slows its senders through flow control and
//! queues nothing. The buckets are [`TokenBucket`]s that may go into debt (a read of 64 KiB
//! against the last few tokens is paid for before anyone moves again). A write takes from the
//! stream's queue only what the bucket holds (at least [`PACE_CHUNK`]), never the whole queue:
//! a queue may hold a whole stream window, and writing it at once would let that much through
//! above the limit in one burst.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::limits::TokenBucket;
use crate::metrics::FloatCounter;

/// The least a paced write takes from its queue: fewer bytes would cost a system call each for
/// little, and the debt it may leave is paid before the next write.
pub const PACE_CHUNK: u64 = 16 * 1024;

/// Takes from the front of `queue` at most `limit` bytes (splitting a buffer if need be), in
/// order; what is left stays queued.
pub fn take_paced(queue: &mut VecDeque<Bytes>, limit: u64) -> Vec<Bytes> {
    let mut batch = Vec::new();
    let mut left = limit;
    while left > 0 {
        let Some(mut front) = queue.pop_front() else {
            break;
        };
        if front.len() as u64 > left {
            let rest = front.split_off(left as usize);
            queue.push_front(rest);
        }
        left -= front.len() as u64;
        batch.push(front);
    }
    debug_assert!(batch.iter().map(|b| b.len() as u64).sum::<u64>() <= limit);
    batch
}

/// One service's limit, both directions, shared by its connections (on any data thread).
#[derive(Debug)]
pub struct Pace {
    /// The limit, bytes a second each way (for views).
    pub rate: u64,
    /// Bytes read from the service's sockets (into the tunnel).
    read: Mutex<TokenBucket>,
    /// Bytes written to the service's sockets (out of the tunnel).
    write: Mutex<TokenBucket>,
    /// Seconds connections spent waiting for tokens (the `/metrics` series).
    throttled: FloatCounter,
}

/// Which way bytes move through a service's socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From the socket into the tunnel.
    Read,
    /// From the tunnel into the socket.
    Write,
}

impl Pace {
    /// `rate` bytes a second each way; waits are counted in `throttled`.
    pub fn new(rate: u64, throttled: FloatCounter) -> Pace {
        let now = Instant::now();
        Pace {
            rate,
            read: Mutex::new(TokenBucket::bytes_per_second(rate, now)),
            write: Mutex::new(TokenBucket::bytes_per_second(rate, now)),
            throttled,
        }
    }

    fn bucket(&self, d: Direction) -> std::sync::MutexGuard<'_, TokenBucket> {
        let m = match d {
            Direction::Read => &self.read,
            Direction::Write => &self.write,
        };
        // A holder never panics while holding it (plain arithmetic).
        m.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How long a connection waits before moving bytes `d`: `None` when it may now. The wait
    /// is counted as throttled time.
    pub fn wait(&self, d: Direction) -> Option<Duration> {
        let wait = self.bucket(d).wait(Instant::now());
        if let Some(w) = wait {
            self.throttled.inc_by(w.as_secs_f64());
        }
        wait
    }

    /// Bytes the bucket of `d` holds now (none while it is in debt).
    pub fn allowance(&self, d: Direction) -> u64 {
        self.bucket(d).available(Instant::now())
    }

    /// `n` bytes moved `d`.
    pub fn take(&self, d: Direction, n: u64) {
        self.bucket(d).take(n, Instant::now());
    }

    /// Seconds connections waited for tokens so far.
    pub fn throttled_seconds(&self) -> f64 {
        self.throttled.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_paced_write_takes_at_most_its_allowance_in_order() {
        let mut queue: VecDeque<Bytes> = [&b"abcd"[..], b"efgh", b"ij"]
            .iter()
            .map(|b| Bytes::copy_from_slice(b))
            .collect();
        let first = take_paced(&mut queue, 6);
        assert_eq!(first.concat(), b"abcdef");
        assert_eq!(queue.len(), 2, "the split buffer's rest stays in front");
        let second = take_paced(&mut queue, 100);
        assert_eq!(second.concat(), b"ghij");
        assert!(queue.is_empty());
        assert!(take_paced(&mut queue, 10).is_empty());
    }

    #[test]
    fn a_bucket_says_what_it_holds_and_nothing_in_debt() {
        let t0 = Instant::now();
        let mut b = TokenBucket::bytes_per_second(1000, t0);
        assert_eq!(b.available(t0), 1000);
        b.take(1500, t0);
        assert_eq!(b.available(t0), 0);
        assert_eq!(b.available(t0 + Duration::from_secs(1)), 500);
    }

    #[test]
    fn a_full_bucket_lets_one_second_through_then_paces_to_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::bytes_per_second(1000, t0);
        assert_eq!(b.wait(t0), None);
        b.take(1000, t0);
        let w = b.wait(t0).expect("empty");
        assert!(w <= Duration::from_millis(2), "{w:?}");
        // 500 bytes of debt take half a second to pay.
        b.take(500, t0);
        let w = b.wait(t0).expect("in debt");
        assert!(w >= Duration::from_millis(500) && w <= Duration::from_millis(502));
        assert_eq!(b.wait(t0 + Duration::from_millis(502)), None);
    }

    #[test]
    fn saving_stops_at_the_burst() {
        let t0 = Instant::now();
        let mut b = TokenBucket::bytes_per_second(1000, t0);
        b.take(1000, t0);
        // Ten seconds idle save one second's worth, not ten.
        let later = t0 + Duration::from_secs(10);
        b.take(1001, later);
        assert!(b.wait(later).is_some());
    }

    #[test]
    fn over_a_long_run_the_rate_holds() {
        let t0 = Instant::now();
        let mut b = TokenBucket::bytes_per_second(1 << 20, t0);
        let mut now = t0;
        let mut moved = 0u64;
        while now < t0 + Duration::from_secs(10) {
            match b.wait(now) {
                Some(w) => now += w,
                None => {
                    b.take(64 * 1024, now);
                    moved += 64 * 1024;
                }
            }
        }
        // Ten seconds at 1 MiB/s plus the one-second burst, within one read.
        let limit = 11 * (1 << 20) + 64 * 1024;
        assert!(moved <= limit && moved >= 10 * (1 << 20), "{moved}");
    }
}
