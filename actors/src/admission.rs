//! Who may use the tunnel port before proving anything: plain types, unit-tested without sockets.
//!
//! - [`HandshakeSlots`]: the handshakes under way. Each source address and each source network
//!   (/24 for IPv4, /64 for IPv6) gets a share of the global cap, and a full cap makes room by
//!   dropping the *oldest attempt that has not yet proved itself* in that scope instead of
//!   refusing the newcomer: holding idle sockets open cannot lock the port, since every new
//!   dialer pushes the oldest idle one out (and the first-bytes deadline recycles the rest). One
//!   exception keeps a burst of honest dialers from one address (a hub re-dialling its tunnels)
//!   from knocking each other out: within its own address's share, a newcomer only pushes out an
//!   attempt that has already waited [`SlotCaps::grace`]; otherwise the newcomer is refused (and
//!   re-dials), and the attempts under way finish.
//! - [`SourceBuckets`]: a token bucket per source address, in a table of bounded size, for what
//!   a stranger may do only so often (claim a new tunnel name).

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv6Addr};
use std::time::{Duration, Instant};

use crate::limits::TokenBucket;

pub use crate::limits::source;

/// The network a source address belongs to: its /24 (IPv4) or /64 (IPv6).
pub fn network(ip: IpAddr) -> IpAddr {
    match source(ip) {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            IpAddr::from([a, b, c, 0])
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
    }
}

/// The caps of [`HandshakeSlots`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotCaps {
    /// Handshakes under way at once, node-wide.
    pub total: usize,
    /// From one source address.
    pub per_address: usize,
    /// From one source network (/24, /64).
    pub per_network: usize,
    /// Within its own address's share, a newcomer pushes out only an attempt at least this old.
    pub grace: Duration,
}

/// One handshake under way.
#[derive(Debug)]
struct Attempt<T> {
    /// Its source address (IPv4-mapped addresses as IPv4).
    address: IpAddr,
    /// Its source network, for the per-network share.
    network: IpAddr,
    /// It proved the secret and its identity: no longer dropped to make room.
    proven: bool,
    /// When it was admitted: within its address's share, only an attempt past the grace goes.
    since: Instant,
    /// What cancels it (the task's abort handle), handed back when it is dropped.
    handle: Option<T>,
}

/// Why an attempt was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotRefusal {
    /// Every attempt in the full scope has proved itself: none may be dropped.
    AllProven,
    /// The address's share is full of attempts still within their grace: the newcomer waits.
    AddressBusy,
}

/// A set of attempts sharing a cap.
#[derive(Debug, Clone, Copy)]
enum Scope {
    /// From one source address.
    Address(IpAddr),
    /// From one source network.
    Network(IpAddr),
    /// Every attempt.
    Node,
}

impl Scope {
    fn holds<T>(self, a: &Attempt<T>) -> bool {
        match self {
            Scope::Address(ip) => a.address == ip,
            Scope::Network(net) => a.network == net,
            Scope::Node => true,
        }
    }
}

/// What [`HandshakeSlots::admit`] did.
#[derive(Debug)]
pub struct Admitted<T> {
    /// The new attempt's number, for [`HandshakeSlots::attach`], `prove` and `release`.
    pub id: u64,
    /// The attempts dropped to make room: their handles, to cancel.
    pub dropped: Vec<T>,
}

/// The handshakes under way on the tunnel port, oldest first.
#[derive(Debug)]
pub struct HandshakeSlots<T> {
    /// The caps, from `[limits]`.
    caps: SlotCaps,
    /// Attempts by number; numbers grow, so the first is the oldest.
    attempts: BTreeMap<u64, Attempt<T>>,
    /// Attempts per source address, to check the per-address share in O(1).
    by_address: HashMap<IpAddr, usize>,
    /// Attempts per source network.
    by_network: HashMap<IpAddr, usize>,
    /// The next attempt's number.
    next: u64,
}

impl<T> HandshakeSlots<T> {
    pub fn new(caps: SlotCaps) -> HandshakeSlots<T> {
        debug_assert!(caps.total >= 1 && caps.per_address >= 1 && caps.per_network >= 1);
        HandshakeSlots {
            caps,
            attempts: BTreeMap::new(),
            by_address: HashMap::new(),
            by_network: HashMap::new(),
            next: 0,
        }
    }

    /// Handshakes under way.
    pub fn len(&self) -> usize {
        self.attempts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.attempts.is_empty()
    }

    /// Admits an attempt from `peer`, dropping the oldest unproven attempt of each full scope
    /// (its address, its network, the node) to make room.
    pub fn admit(&mut self, peer: IpAddr, now: Instant) -> Result<Admitted<T>, SlotRefusal> {
        let address = source(peer);
        let network = network(peer);
        let mut dropped = Vec::new();
        while let Some(scope) = self.full_scope(address, network) {
            let oldest = self
                .attempts
                .iter()
                .find(|(_, a)| !a.proven && scope.holds(a))
                .map(|(id, a)| (*id, a.since));
            let Some((id, since)) = oldest else {
                return Err(SlotRefusal::AllProven);
            };
            if matches!(scope, Scope::Address(_))
                && now.saturating_duration_since(since) < self.caps.grace
            {
                return Err(SlotRefusal::AddressBusy);
            }
            if let Some(handle) = self.remove(id) {
                dropped.extend(handle);
            }
        }
        let id = self.next;
        self.next += 1;
        *self.by_address.entry(address).or_default() += 1;
        *self.by_network.entry(network).or_default() += 1;
        self.attempts.insert(
            id,
            Attempt {
                address,
                network,
                proven: false,
                since: now,
                handle: None,
            },
        );
        debug_assert!(self.attempts.len() <= self.caps.total);
        Ok(Admitted { id, dropped })
    }

    /// The first scope a newcomer from `address` in `network` would overfill, if any.
    fn full_scope(&self, address: IpAddr, network: IpAddr) -> Option<Scope> {
        if self.count(&self.by_address, address) >= self.caps.per_address {
            Some(Scope::Address(address))
        } else if self.count(&self.by_network, network) >= self.caps.per_network {
            Some(Scope::Network(network))
        } else if self.attempts.len() >= self.caps.total {
            Some(Scope::Node)
        } else {
            None
        }
    }

    fn count(&self, map: &HashMap<IpAddr, usize>, key: IpAddr) -> usize {
        map.get(&key).copied().unwrap_or(0)
    }

    /// Gives attempt `id` the handle that cancels it (once its task is spawned).
    pub fn attach(&mut self, id: u64, handle: T) {
        if let Some(a) = self.attempts.get_mut(&id) {
            a.handle = Some(handle);
        }
    }

    /// Attempt `id` proved itself: it is no longer dropped to make room.
    pub fn prove(&mut self, id: u64) {
        if let Some(a) = self.attempts.get_mut(&id) {
            a.proven = true;
        }
    }

    /// Attempt `id` ended (done, failed, timed out or dropped): its place is free.
    pub fn release(&mut self, id: u64) {
        // Its handle is the task's own: dropping it does not cancel anything.
        drop(self.remove(id));
    }

    fn remove(&mut self, id: u64) -> Option<Option<T>> {
        let a = self.attempts.remove(&id)?;
        for (map, key) in [
            (&mut self.by_address, a.address),
            (&mut self.by_network, a.network),
        ] {
            if let Some(n) = map.get_mut(&key) {
                *n -= 1;
                if *n == 0 {
                    map.remove(&key);
                }
            }
        }
        debug_assert_eq!(self.by_address.values().sum::<usize>(), self.attempts.len());
        Some(a.handle)
    }
}

/// A token bucket per source address, for `max_sources` addresses at most: when the table is
/// full, the bucket used least recently goes (it is full again by then, or its source is gone).
#[derive(Debug)]
pub struct SourceBuckets {
    /// Tokens a second, and the burst, of each bucket.
    rate_per_minute: u32,
    /// The most addresses remembered.
    max_sources: usize,
    /// The buckets, with when each was last used.
    buckets: HashMap<IpAddr, (TokenBucket, Instant)>,
}

impl SourceBuckets {
    pub fn new(rate_per_minute: u32, max_sources: usize) -> SourceBuckets {
        SourceBuckets {
            rate_per_minute,
            max_sources: max_sources.max(1),
            buckets: HashMap::new(),
        }
    }

    /// Takes a token from `peer`'s bucket, if it has one.
    pub fn try_take(&mut self, peer: IpAddr, now: Instant) -> bool {
        let key = source(peer);
        if !self.buckets.contains_key(&key) && self.buckets.len() >= self.max_sources {
            if let Some(stale) = self
                .buckets
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| *k)
            {
                self.buckets.remove(&stale);
            }
        }
        let rate = self.rate_per_minute;
        let (bucket, used) = self
            .buckets
            .entry(key)
            .or_insert_with(|| (TokenBucket::per_minute(rate, now), now));
        *used = now;
        let taken = bucket.try_take(now);
        debug_assert!(self.buckets.len() <= self.max_sources);
        taken
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t0() -> Instant {
        Instant::now()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    fn caps() -> SlotCaps {
        SlotCaps {
            total: 8,
            per_address: 2,
            per_network: 4,
            grace: Duration::ZERO,
        }
    }

    #[test]
    fn an_address_over_its_share_pushes_out_its_own_oldest() {
        let mut s = HandshakeSlots::new(caps());
        let a = s.admit(ip("10.0.0.1"), t0()).expect("a");
        s.attach(a.id, "a");
        let b = s.admit(ip("10.0.0.1"), t0()).expect("b");
        s.attach(b.id, "b");
        let other = s.admit(ip("10.0.0.2"), t0()).expect("other");
        s.attach(other.id, "other");
        let c = s.admit(ip("10.0.0.1"), t0()).expect("c");
        assert_eq!(c.dropped, vec!["a"], "the oldest of the same address goes");
        assert_eq!(s.len(), 3);
    }

    #[test]
    fn a_network_over_its_share_pushes_out_its_oldest_and_spares_others() {
        let mut s = HandshakeSlots::new(caps());
        let outsider = s.admit(ip("192.0.2.9"), t0()).expect("outsider");
        s.attach(outsider.id, "outsider");
        for i in 1..=4 {
            let a = s.admit(ip(&format!("10.0.0.{i}")), t0()).expect("admitted");
            s.attach(a.id, "first");
        }
        let n = s.admit(ip("10.0.0.99"), t0()).expect("admitted");
        assert_eq!(n.dropped, vec!["first"]);
        assert_eq!(s.len(), 5, "the outsider stays");
    }

    #[test]
    fn a_full_node_drops_the_oldest_unproven_and_never_a_proven_one() {
        let mut s = HandshakeSlots::new(SlotCaps {
            total: 2,
            per_address: 2,
            per_network: 2,
            grace: Duration::ZERO,
        });
        let a = s.admit(ip("10.0.0.1"), t0()).expect("a");
        s.attach(a.id, "a");
        s.prove(a.id);
        let b = s.admit(ip("10.0.1.1"), t0()).expect("b");
        s.attach(b.id, "b");
        let c = s.admit(ip("10.0.2.1"), t0()).expect("c");
        assert_eq!(c.dropped, vec!["b"], "the proven one stays");
        s.prove(c.id);
        assert_eq!(
            s.admit(ip("10.0.3.1"), t0()).err(),
            Some(SlotRefusal::AllProven)
        );
        s.release(a.id);
        assert!(s.admit(ip("10.0.3.1"), t0()).is_ok());
        assert_eq!(s.len(), 2);
    }

    #[test]
    fn releasing_frees_the_place_and_mapped_addresses_count_as_ipv4() {
        let mut s = HandshakeSlots::<()>::new(caps());
        let a = s.admit(ip("::ffff:10.0.0.1"), t0()).expect("a");
        let _b = s.admit(ip("10.0.0.1"), t0()).expect("b");
        let c = s.admit(ip("10.0.0.1"), t0()).expect("c");
        assert_eq!(c.dropped.len(), 0, "handles not attached are not returned");
        assert_eq!(s.len(), 2, "a was dropped: one address, two places");
        s.release(a.id);
        s.release(c.id);
        assert_eq!(s.len(), 1);
        assert_eq!(network(ip("2001:db8:1:2:3:4:5:6")), ip("2001:db8:1:2::"));
    }

    #[test]
    fn within_its_grace_a_burst_from_one_address_waits_instead_of_evicting() {
        let mut s = HandshakeSlots::new(SlotCaps {
            grace: Duration::from_secs(1),
            ..caps()
        });
        let start = Instant::now();
        let a = s.admit(ip("10.0.0.1"), start).expect("a");
        s.attach(a.id, "a");
        s.admit(ip("10.0.0.1"), start).expect("b");
        assert_eq!(
            s.admit(ip("10.0.0.1"), start).err(),
            Some(SlotRefusal::AddressBusy),
            "young attempts of the address finish"
        );
        let later = start + Duration::from_millis(1500);
        let c = s.admit(ip("10.0.0.1"), later).expect("c");
        assert_eq!(c.dropped, vec!["a"], "an attempt past its grace goes");
        // Another address of the network is not held back by the grace.
        for i in 2..=3 {
            s.admit(ip(&format!("10.0.0.{i}")), start).expect("room");
        }
        let n = s
            .admit(ip("10.0.0.9"), start)
            .expect("the network makes room");
        assert_eq!(
            n.dropped.len(),
            0,
            "the oldest in the network had no handle: {n:?}"
        );
    }

    #[test]
    fn source_buckets_rate_each_address_and_stay_bounded() {
        let t0 = Instant::now();
        let mut b = SourceBuckets::new(6, 3);
        let first = (0..100).filter(|_| b.try_take(ip("10.0.0.1"), t0)).count();
        assert_eq!(first, 6, "the burst is a minute's rate");
        assert!(
            b.try_take(ip("10.0.0.2"), t0),
            "another address has its own"
        );
        assert!(!b.try_take(ip("10.0.0.1"), t0 + Duration::from_secs(5)));
        assert!(b.try_take(ip("10.0.0.1"), t0 + Duration::from_secs(11)));
        for i in 3..100 {
            b.try_take(ip(&format!("10.0.1.{i}")), t0);
        }
        assert!(b.buckets.len() <= 3);
    }
}
