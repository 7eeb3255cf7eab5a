//! Bandwidth limits: a token bucket per service and direction, shared by the service's
//! connections. A connection reads its socket (or writes to it) only while its direction's bucket
//! is not in debt, and takes what it moved afterwards; when the bucket is in debt it waits until
//! the debt is paid. Waiting to read leaves bytes in the sender's socket, waiting to write holds
//! back the stream's credit, so a limited service slows its senders through flow control and
//! queues nothing. The buckets are [`TokenBucket`]s that may go into debt (a read of 64 KiB
//! against the last few tokens is paid for before anyone moves again).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::limits::TokenBucket;
use crate::metrics::FloatCounter;

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
