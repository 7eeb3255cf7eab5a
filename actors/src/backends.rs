//! A remote service's addresses and what is known of each: which answered lately, which are down
//! and until when, and the order a new stream tries them in. Shared by the service's streams on
//! every data thread (a lock held for a few comparisons) and by its health check.
//!
//! An address that refuses or does not answer is down for a back-off (1 s, doubling to 30 s while
//! it keeps failing); streams try the addresses that are up first (in order, or starting at the
//! next one for round-robin) and those that are down last, so a service whose addresses are all
//! down still tries them rather than refusing. An answer, a stream's or a health check's, brings
//! an address up at once.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::metrics::BackendCounts;
use crate::service::Balance;

/// The first back-off of an address that failed.
pub const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// The longest back-off.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// What is known of one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Health {
    /// Answered last time (or never tried).
    Up,
    /// Failed `streak` times in a row; skipped until `until` unless every address is down.
    Down { until: Instant, streak: u32 },
}

/// One address of a remote service.
#[derive(Debug)]
pub struct Backend {
    /// Where streams to this backend are dialled.
    pub addr: SocketAddr,
    /// Up or down, and for how long.
    health: Mutex<Health>,
    /// Streams connected to it, and dials (streams' and checks') that failed: the series of
    /// `/metrics`.
    counts: BackendCounts,
}

/// One address as `GET /config` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct BackendView {
    /// `["ip", port]`.
    #[schema(value_type = Vec<serde_json::Value>)]
    pub addr: (String, u16),
    /// `up` or `down`.
    pub state: &'static str,
    /// How much longer a down address is skipped, milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_in_ms: Option<u64>,
    /// Streams connected to it so far.
    pub connections: u64,
    /// Dials that failed so far.
    pub failures: u64,
}

/// A remote service's addresses, shared by its streams.
#[derive(Debug)]
pub struct Backends {
    /// In the order given.
    backends: Vec<Backend>,
    /// How a stream picks among them: in order (first up) or round-robin.
    balance: Balance,
    /// Round-robin: where the next stream starts.
    next: AtomicUsize,
}

impl Backends {
    /// `addrs` is never empty (the API and the state file check); `counts` gives each address
    /// its counters.
    pub fn new(
        addrs: &[SocketAddr],
        balance: Balance,
        counts: impl Fn(SocketAddr) -> BackendCounts,
    ) -> Backends {
        debug_assert!(!addrs.is_empty());
        Backends {
            backends: addrs
                .iter()
                .map(|&addr| Backend {
                    addr,
                    health: Mutex::new(Health::Up),
                    counts: counts(addr),
                })
                .collect(),
            balance,
            next: AtomicUsize::new(0),
        }
    }

    pub fn addrs(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.backends.iter().map(|b| b.addr)
    }

    pub fn balance(&self) -> Balance {
        self.balance
    }

    fn health(&self, i: usize) -> std::sync::MutexGuard<'_, Health> {
        // Held for a comparison or an assignment: never poisoned in practice.
        self.backends[i]
            .health
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// The order a new stream tries the addresses in (indexes): those up first, from the first
    /// or (round-robin) from the next one, then those down, the one back soonest first.
    pub fn order(&self, now: Instant) -> Vec<usize> {
        let n = self.backends.len();
        let start = match self.balance {
            Balance::First => 0,
            Balance::RoundRobin => self.next.fetch_add(1, Ordering::Relaxed) % n,
        };
        let mut up = Vec::with_capacity(n);
        let mut down = Vec::new();
        for i in (0..n).map(|k| (start + k) % n) {
            match *self.health(i) {
                Health::Down { until, .. } if until > now => down.push((until, i)),
                _ => up.push(i),
            }
        }
        down.sort();
        up.extend(down.into_iter().map(|(_, i)| i));
        debug_assert_eq!(up.len(), n);
        up
    }

    pub fn addr(&self, i: usize) -> SocketAddr {
        self.backends[i].addr
    }

    /// Address `i` answered a stream: it is up, and counted.
    pub fn connected(&self, i: usize) {
        self.backends[i].counts.connections.inc();
        self.answered(i);
    }

    /// Address `i` answered (a stream or a check): up at once.
    pub fn answered(&self, i: usize) {
        *self.health(i) = Health::Up;
    }

    /// Address `i` refused or did not answer: down for the next back-off.
    pub fn failed(&self, i: usize, now: Instant) {
        self.failed_for(i, now, Duration::ZERO);
    }

    /// Address `i` failed a health check: down for the back-off, and at least until the next
    /// check (`at_least`) can bring it up.
    pub fn failed_for(&self, i: usize, now: Instant, at_least: Duration) {
        self.backends[i].counts.failures.inc();
        let mut h = self.health(i);
        let streak = match *h {
            Health::Up => 1,
            Health::Down { streak, .. } => streak.saturating_add(1),
        };
        let backoff = FIRST_BACKOFF
            .saturating_mul(1 << (streak - 1).min(5))
            .min(MAX_BACKOFF);
        *h = Health::Down {
            until: now + backoff.max(at_least),
            streak,
        };
    }

    /// Per address: whether a stream would try it first now, and its counts.
    pub fn view(&self, now: Instant) -> Vec<BackendView> {
        (0..self.backends.len())
            .map(|i| {
                let b = &self.backends[i];
                let retry = match *self.health(i) {
                    Health::Down { until, .. } if until > now => Some(until - now),
                    _ => None,
                };
                BackendView {
                    addr: (b.addr.ip().to_string(), b.addr.port()),
                    state: if retry.is_some() { "down" } else { "up" },
                    retry_in_ms: retry.map(|d| d.as_millis() as u64),
                    connections: b.counts.connections.get(),
                    failures: b.counts.failures.get(),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(n: u16) -> Vec<SocketAddr> {
        (0..n)
            .map(|i| SocketAddr::from(([127, 0, 0, 1], 8000 + i)))
            .collect()
    }

    #[test]
    fn first_tries_in_order_and_skips_a_down_address_until_its_backoff_ends() {
        let b = Backends::new(&addrs(3), Balance::First, |_| BackendCounts::default());
        let t0 = Instant::now();
        assert_eq!(b.order(t0), [0, 1, 2]);
        b.failed(0, t0);
        assert_eq!(b.order(t0), [1, 2, 0]);
        assert_eq!(b.order(t0 + FIRST_BACKOFF), [0, 1, 2]);
        // Failing again doubles the back-off.
        b.failed(0, t0 + FIRST_BACKOFF);
        assert_eq!(b.order(t0 + FIRST_BACKOFF * 2), [1, 2, 0]);
        assert_eq!(b.order(t0 + FIRST_BACKOFF * 3), [0, 1, 2]);
        b.answered(0);
        assert_eq!(b.order(t0), [0, 1, 2]);
        assert_eq!(b.view(t0)[0].failures, 2);
    }

    #[test]
    fn round_robin_starts_each_stream_at_the_next_address() {
        let b = Backends::new(&addrs(3), Balance::RoundRobin, |_| BackendCounts::default());
        let t0 = Instant::now();
        let firsts: Vec<usize> = (0..6).map(|_| b.order(t0)[0]).collect();
        assert_eq!(firsts, [0, 1, 2, 0, 1, 2]);
        b.failed(1, t0);
        let firsts: Vec<usize> = (0..3).map(|_| b.order(t0)[0]).collect();
        assert_eq!(firsts, [0, 2, 2]);
    }

    #[test]
    fn when_all_are_down_the_one_back_soonest_is_tried_first() {
        let b = Backends::new(&addrs(2), Balance::First, |_| BackendCounts::default());
        let t0 = Instant::now();
        b.failed(0, t0);
        b.failed(0, t0);
        b.failed(1, t0);
        assert_eq!(b.order(t0), [1, 0]);
        let v = b.view(t0);
        assert_eq!((v[0].state, v[1].state), ("down", "down"));
    }

    #[test]
    fn the_backoff_stops_growing_at_its_ceiling() {
        let b = Backends::new(&addrs(1), Balance::First, |_| BackendCounts::default());
        let t0 = Instant::now();
        for _ in 0..40 {
            b.failed(0, t0);
        }
        let retry = b.view(t0)[0].retry_in_ms.expect("down");
        assert_eq!(retry, MAX_BACKOFF.as_millis() as u64);
    }
}
