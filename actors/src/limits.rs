//! What one node lets its peers and clients use, and the accounting behind it: plain types, shared
//! by the actors through an `Arc`, so every limit is enforced where it is hit and counted in one
//! place for `GET /config`.
//!
//! Also the two defences of the log against a flood: [`log_allowed`] rate-limits a category of
//! lines, and [`Escaped`] prints peer-supplied text with control characters escaped, so a `\n` in
//! a tunnel name cannot forge a log line.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

/// The configured limits. The defaults let a small VPS survive a hostile peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Handshakes under way on the tunnel port at once; more connections are closed at once.
    pub max_handshakes: usize,
    /// Tunnels this node accepts at once (peers dialling in).
    pub max_tunnels: usize,
    /// Streams the peer may have open on one tunnel at once, announced in the handshake.
    pub max_streams: u32,
    /// Clients one local service carries at once.
    pub max_connections_per_service: usize,
    /// Flows (client addresses) one local UDP service carries at once.
    pub max_udp_flows_per_service: usize,
    /// Backend dials one tunnel's peer may cause per second (OPENs of remote services). The
    /// default sits well above what one tunnel carries on a small machine (13,000 - 14,000 new
    /// connections a second through a pair on 2 cores, README's Security table), so it stops a
    /// peer that dials far faster than any legitimate load, never a busy one.
    pub max_dials_per_second: u32,
    /// File descriptors kept free for the admin API, the tunnel port and the state file.
    pub fd_reserve: usize,
    /// Handshakes under way from one source address (within `max_handshakes`).
    pub handshakes_per_address: usize,
    /// Handshakes under way from one source network, /24 or /64 (within `max_handshakes`).
    pub handshakes_per_network: usize,
    /// Of `max_tunnels`, the places only expected dialers may take: a declared name, or a
    /// pinned name claimed by its pinned identity. Strangers' new names get the rest.
    pub reserved_tunnels: usize,
    /// Tunnel names the node remembers (declared and pinned); past it, a new name evicts the
    /// pin least recently seen that has no live tunnel, no bind and no declaration.
    pub max_names: usize,
    /// New tunnel names one source address may claim per minute (and at once), unless it proved
    /// the tunnel secret.
    pub new_names_per_minute: u32,
    /// Percent of the descriptor pool one tunnel's backend connections, or one local service's
    /// clients, may hold: one cannot starve the others.
    pub descriptor_share_percent: u8,
    /// Admin API connections open at once (inside the descriptor reserve).
    pub max_admin_connections: usize,
    /// Bytes all tunnels together may hold for their streams (received, not yet written to the
    /// stream's socket); past it, tunnels return no credit for what they receive until their
    /// streams drain, so peers slow down instead of the node growing.
    pub max_buffered_bytes: u64,
}

impl Limits {
    /// The most descriptors one tunnel's backends or one local service's clients may hold, out
    /// of a pool of `pool`.
    pub fn descriptor_share(&self, pool: usize) -> usize {
        (pool.saturating_mul(usize::from(self.descriptor_share_percent)) / 100).max(1)
    }
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_handshakes: 64,
            max_tunnels: 256,
            max_streams: 4096,
            max_connections_per_service: 4096,
            max_udp_flows_per_service: 4096,
            max_dials_per_second: 50_000,
            fd_reserve: 128,
            handshakes_per_address: 4,
            handshakes_per_network: 16,
            reserved_tunnels: 64,
            max_names: 4096,
            new_names_per_minute: 60,
            descriptor_share_percent: 50,
            max_admin_connections: 64,
            max_buffered_bytes: 256 * 1024 * 1024,
        }
    }
}

/// A count of things in use with a ceiling, and how often the ceiling refused one.
#[derive(Debug)]
pub struct Gauge {
    /// Things counted now.
    in_use: AtomicUsize,
    /// The ceiling: one more is refused.
    max: usize,
    /// How often the ceiling refused one, for `GET /config` and `/metrics`.
    refused: AtomicU64,
}

impl Gauge {
    pub fn new(max: usize) -> Arc<Gauge> {
        Arc::new(Gauge {
            in_use: AtomicUsize::new(0),
            max,
            refused: AtomicU64::new(0),
        })
    }

    /// Takes one unit, or counts a refusal if all are in use. The unit is given back when the
    /// slot is dropped.
    pub fn try_acquire(self: &Arc<Gauge>) -> Option<Slot> {
        let taken = self
            .in_use
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            });
        match taken {
            Ok(_) => Some(Slot(self.clone())),
            Err(_) => {
                self.refuse();
                None
            }
        }
    }

    /// Counts a refusal made by this limit's own rule (a peer over its stream count, say).
    pub fn refuse(&self) {
        self.refused.fetch_add(1, Ordering::Relaxed);
    }

    pub fn in_use(&self) -> usize {
        self.in_use.load(Ordering::Acquire)
    }

    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    pub fn max(&self) -> usize {
        self.max
    }
}

/// One unit of a [`Gauge`], held for as long as the thing it counts lives.
#[derive(Debug)]
pub struct Slot(Arc<Gauge>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.in_use.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The node-wide accounting: one per node, shared by every actor.
#[derive(Debug)]
pub struct Usage {
    /// The configured limits (`[limits]`), fixed at start.
    pub limits: Limits,
    /// Handshakes under way on the tunnel port (the listener's slot table holds them).
    pub handshakes_in_use: AtomicUsize,
    /// Connections on the tunnel port closed at once: every handshake slot held a proven dialer.
    pub handshakes_refused: AtomicU64,
    /// Unproven handshakes dropped to make room for a newer dialer.
    pub handshakes_dropped: AtomicU64,
    /// New tunnel names refused: a source over `new_names_per_minute`, or no pin evictable.
    pub names_refused: AtomicU64,
    /// Pins evicted for a new name, or expired after `pin_ttl`.
    pub names_evicted: AtomicU64,
    /// What all tunnels hold for their streams, against `max_buffered_bytes`.
    pub buffers: BufferBudget,
    /// Sockets of connections and handshakes, against the descriptor limit less the reserve.
    pub descriptors: Arc<Gauge>,
    /// The process's descriptor limit (`RLIMIT_NOFILE`).
    pub fd_limit: usize,
    /// Tunnels refused because `max_tunnels` were accepted.
    pub tunnels_refused: AtomicU64,
    /// OPENs refused because the peer had `max_streams` open.
    pub streams_refused: AtomicU64,
    /// OPENs refused because the peer dialled faster than `max_dials_per_second`.
    pub dials_refused: AtomicU64,
    /// Clients refused because their service carried `max_connections_per_service`.
    pub connections_refused: AtomicU64,
    /// Live streams per service on each data thread, for placing new ones.
    pub thread_streams: crate::data_thread::ThreadStreams,
}

impl Usage {
    pub fn new(limits: Limits, fd_limit: usize) -> Arc<Usage> {
        Arc::new(Usage {
            limits,
            handshakes_in_use: AtomicUsize::new(0),
            handshakes_refused: AtomicU64::new(0),
            handshakes_dropped: AtomicU64::new(0),
            names_refused: AtomicU64::new(0),
            names_evicted: AtomicU64::new(0),
            buffers: BufferBudget::new(limits.max_buffered_bytes),
            descriptors: Gauge::new(fd_limit.saturating_sub(limits.fd_reserve)),
            fd_limit,
            tunnels_refused: AtomicU64::new(0),
            streams_refused: AtomicU64::new(0),
            dials_refused: AtomicU64::new(0),
            connections_refused: AtomicU64::new(0),
            thread_streams: Default::default(),
        })
    }

    pub fn refuse_stream(&self) {
        self.streams_refused.fetch_add(1, Ordering::Relaxed);
    }

    pub fn refuse_dial(&self) {
        self.dials_refused.fetch_add(1, Ordering::Relaxed);
    }

    pub fn refuse_tunnel(&self) {
        self.tunnels_refused.fetch_add(1, Ordering::Relaxed);
    }

    pub fn refuse_connection(&self) {
        self.connections_refused.fetch_add(1, Ordering::Relaxed);
    }

    /// The limits as `GET /config` shows them: each with its use and refusals.
    pub fn view(&self, tunnels_accepted: usize, names: usize) -> LimitsView {
        let l = &self.limits;
        let count = |c: &AtomicU64| c.load(Ordering::Relaxed);
        LimitsView {
            handshakes: HandshakesView {
                max: l.max_handshakes,
                per_address: l.handshakes_per_address,
                per_network: l.handshakes_per_network,
                in_use: self.handshakes_in_use.load(Ordering::Relaxed),
                refused: count(&self.handshakes_refused),
                dropped: count(&self.handshakes_dropped),
            },
            tunnels: TunnelsView {
                max: l.max_tunnels,
                reserved: l.reserved_tunnels,
                in_use: tunnels_accepted,
                refused: count(&self.tunnels_refused),
            },
            names: NamesView {
                max: l.max_names,
                in_use: names,
                new_per_minute: l.new_names_per_minute,
                refused: count(&self.names_refused),
                evicted: count(&self.names_evicted),
            },
            streams_per_tunnel: Refusals {
                max: u64::from(l.max_streams),
                refused: count(&self.streams_refused),
            },
            connections_per_service: Refusals {
                max: l.max_connections_per_service as u64,
                refused: count(&self.connections_refused),
            },
            dials_per_second: Refusals {
                max: u64::from(l.max_dials_per_second),
                refused: count(&self.dials_refused),
            },
            descriptors: DescriptorsView {
                limit: self.fd_limit,
                reserve: l.fd_reserve,
                max: self.descriptors.max(),
                in_use: self.descriptors.in_use(),
                share: l.descriptor_share(self.descriptors.max()),
                refused: self.descriptors.refused(),
            },
            admin_connections: MaxView {
                max: l.max_admin_connections,
            },
            buffered_bytes: BuffersView {
                max: l.max_buffered_bytes,
                in_use: self.buffers.held(),
                credit_withheld: self.buffers.withheld(),
            },
        }
    }
}

/// The node-wide budget of bytes tunnels hold for their streams: received from a peer, not yet
/// written to the stream's socket. Each tunnel adds what it hands a stream and takes back what
/// the stream wrote (or dropped); while the sum is over the budget, tunnels hold back the credit
/// of what they receive, so the node's memory stays near the budget plus one tunnel window per
/// tunnel, however many streams stall.
#[derive(Debug)]
pub struct BufferBudget {
    /// The budget (`max_buffered_bytes`).
    max: u64,
    /// Bytes held now, by every tunnel.
    held: AtomicU64,
    /// Times a tunnel held back credit because the budget was spent.
    withheld: AtomicU64,
}

impl BufferBudget {
    pub fn new(max: u64) -> BufferBudget {
        BufferBudget {
            max,
            held: AtomicU64::new(0),
            withheld: AtomicU64::new(0),
        }
    }

    /// A stream now holds `n` more bytes; whether the budget is still unspent (credit may go).
    pub fn hold(&self, n: u64) -> bool {
        let now = self.held.fetch_add(n, Ordering::AcqRel).saturating_add(n);
        let room = now <= self.max;
        if !room {
            self.withheld.fetch_add(1, Ordering::Relaxed);
        }
        room
    }

    /// A stream wrote or dropped `n` bytes it held.
    pub fn release(&self, n: u64) {
        let before = self
            .held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |h| {
                Some(h.saturating_sub(n))
            })
            .unwrap_or(0);
        debug_assert!(before >= n, "released {n} of {before} bytes held");
    }

    /// Whether held credit may go back to peers now.
    pub fn has_room(&self) -> bool {
        self.held.load(Ordering::Acquire) <= self.max
    }

    pub fn held(&self) -> u64 {
        self.held.load(Ordering::Relaxed)
    }

    pub fn withheld(&self) -> u64 {
        self.withheld.load(Ordering::Relaxed)
    }
}

/// Every limit as `GET /config` shows it (`limits`).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct LimitsView {
    /// Handshakes under way on the tunnel port.
    pub handshakes: HandshakesView,
    /// Accepted tunnels.
    pub tunnels: TunnelsView,
    /// Tunnel names remembered.
    pub names: NamesView,
    /// Streams a peer may open per tunnel.
    pub streams_per_tunnel: Refusals,
    /// Clients of one local service.
    pub connections_per_service: Refusals,
    /// Backend dials a peer may cause per second.
    pub dials_per_second: Refusals,
    /// The descriptor pool.
    pub descriptors: DescriptorsView,
    /// Admin connections at once.
    pub admin_connections: MaxView,
    /// Bytes held for streams, node-wide.
    pub buffered_bytes: BuffersView,
}

/// `limits.handshakes`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct HandshakesView {
    /// Handshakes under way at once on the tunnel port (`max_handshakes`).
    pub max: usize,
    /// Handshakes at once from one address (`handshakes_per_address`).
    pub per_address: usize,
    /// Handshakes at once from one /24 or /64 (`handshakes_per_network`).
    pub per_network: usize,
    /// Handshakes under way now.
    pub in_use: usize,
    /// Attempts refused so far.
    pub refused: u64,
    /// Unproven attempts dropped to make room.
    pub dropped: u64,
}

/// `limits.tunnels`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TunnelsView {
    /// Tunnels accepted at once (`max_tunnels`).
    pub max: usize,
    /// Kept for expected dialers.
    pub reserved: usize,
    /// Accepted tunnels now.
    pub in_use: usize,
    /// Tunnels refused so far.
    pub refused: u64,
}

/// `limits.names`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct NamesView {
    /// Tunnel names remembered at most (`max_names`).
    pub max: usize,
    /// Names remembered now.
    pub in_use: usize,
    /// New names one address may bring per minute (`new_names_per_minute`).
    pub new_per_minute: u32,
    /// New names refused so far.
    pub refused: u64,
    /// Pins forgotten so far to make room for new names.
    pub evicted: u64,
}

/// A limit that only refuses: its maximum and the refusals.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Refusals {
    /// The limit.
    pub max: u64,
    /// What it refused so far.
    pub refused: u64,
}

/// `limits.descriptors`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DescriptorsView {
    /// `RLIMIT_NOFILE`.
    pub limit: usize,
    /// Descriptors kept back for the admin API, the tunnel port and the state file (`fd_reserve`).
    pub reserve: usize,
    /// Descriptors streams may hold: `limit` less the reserve.
    pub max: usize,
    /// Descriptors held by streams now.
    pub in_use: usize,
    /// What one tunnel or service may hold.
    pub share: usize,
    /// Connections refused for want of a descriptor so far.
    pub refused: u64,
}

/// A limit with only a maximum.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MaxView {
    /// The limit.
    pub max: usize,
}

/// `limits.buffered_bytes`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct BuffersView {
    /// Bytes all streams may hold at once (`max_buffered_bytes`).
    pub max: u64,
    /// Bytes held now.
    pub in_use: u64,
    /// Times a tunnel held back credit for the budget.
    pub credit_withheld: u64,
}

/// A token bucket: `rate` tokens a second, holding at most `burst`.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    /// Tokens added per second.
    rate: f64,
    /// The most tokens held: what may be taken at once.
    burst: f64,
    /// Tokens now (as of `last`).
    tokens: f64,
    /// When `tokens` was last brought up to date.
    last: Instant,
}

impl TokenBucket {
    /// `rate` a second, with a burst of one second's worth.
    pub fn new(rate: u32, now: Instant) -> TokenBucket {
        let rate = f64::from(rate.max(1));
        TokenBucket {
            rate,
            burst: rate,
            tokens: rate,
            last: now,
        }
    }

    /// `rate` a minute, with a burst of one minute's worth.
    pub fn per_minute(rate: u32, now: Instant) -> TokenBucket {
        let burst = f64::from(rate.max(1));
        TokenBucket {
            rate: burst / 60.0,
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// `rate` bytes a second (a bandwidth limit), with a burst of one second's worth.
    pub fn bytes_per_second(rate: u64, now: Instant) -> TokenBucket {
        let rate = rate.max(1) as f64;
        TokenBucket {
            rate,
            burst: rate,
            tokens: rate,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now.max(self.last);
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        debug_assert!(self.tokens <= self.burst);
    }

    /// Takes a token if one is there.
    pub fn try_take(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// How long to wait before taking anything: `None` while tokens are there. With
    /// [`TokenBucket::take`] the bucket may be in debt; this waits until it is paid.
    pub fn wait(&mut self, now: Instant) -> Option<Duration> {
        self.refill(now);
        if self.tokens > 0.0 {
            return None;
        }
        let secs = (1.0 - self.tokens) / self.rate;
        Some(Duration::from_secs_f64(secs).max(Duration::from_millis(1)))
    }

    /// Whole tokens there now: none while in debt.
    pub fn available(&mut self, now: Instant) -> u64 {
        self.refill(now);
        self.tokens.max(0.0) as u64
    }

    /// Takes `n` tokens, going into debt if there are fewer (bytes already moved).
    pub fn take(&mut self, n: u64, now: Instant) {
        self.refill(now);
        self.tokens -= n as f64;
    }
}

/// Lines one category may log in a [`LOG_PERIOD`] before the rest are only counted.
const LOG_BURST: u32 = 10;
const LOG_PERIOD: Duration = Duration::from_secs(10);

/// One category's lines in the current period.
struct LogWindow {
    /// When the current period began.
    started: Instant,
    /// Lines logged in it, against [`LOG_BURST`].
    logged: u32,
    /// Lines suppressed since the last one logged, said by the next one.
    suppressed: u64,
}

impl LogWindow {
    fn new(now: Instant) -> LogWindow {
        LogWindow {
            started: now,
            logged: 0,
            suppressed: 0,
        }
    }

    /// Whether one more line may be logged now (`Some(lines suppressed since the last one)`), or
    /// none (it is counted as suppressed).
    fn admit(&mut self, now: Instant) -> Option<u64> {
        if now.duration_since(self.started) >= LOG_PERIOD {
            self.started = now;
            self.logged = 0;
        }
        if self.logged < LOG_BURST {
            self.logged += 1;
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        }
    }
}

/// Whether a line of `category` may be logged now: `Some(n)` if so, `n` being how many lines of it
/// were suppressed since the last one logged; `None` if this one is to be suppressed (counted).
pub fn log_allowed(category: &'static str) -> Option<u64> {
    static WINDOWS: Mutex<Option<HashMap<&'static str, LogWindow>>> = Mutex::new(None);
    let Ok(mut guard) = WINDOWS.lock() else {
        return Some(0);
    };
    let windows = guard.get_or_insert_with(HashMap::new);
    let now = Instant::now();
    windows
        .entry(category)
        .or_insert_with(|| LogWindow::new(now))
        .admit(now)
}

/// The address a peer is counted under (rate limits, log windows, handshake slots): an
/// IPv4-mapped IPv6 address is its IPv4 address.
pub fn source(ip: std::net::IpAddr) -> std::net::IpAddr {
    match ip {
        std::net::IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map_or(std::net::IpAddr::V6(v6), std::net::IpAddr::V4),
        v4 => v4,
    }
}

/// Categories times peer addresses remembered by [`log_allowed_for`]; past it, lines of new
/// addresses share one window per category.
const LOG_KEYS: usize = 1024;

/// Whether a line of `category` about peer address `peer` may be logged now, as
/// [`log_allowed`] but with a window per (category, address): one noisy peer uses up its own
/// share, not everyone's. The table is bounded ([`LOG_KEYS`]).
pub fn log_allowed_for(category: &'static str, peer: std::net::IpAddr) -> Option<u64> {
    type Windows = HashMap<(&'static str, std::net::IpAddr), LogWindow>;
    static WINDOWS: Mutex<Option<Windows>> = Mutex::new(None);
    let Ok(mut guard) = WINDOWS.lock() else {
        return Some(0);
    };
    let windows = guard.get_or_insert_with(HashMap::new);
    let now = Instant::now();
    let mut key = (category, source(peer));
    if !windows.contains_key(&key) && windows.len() >= LOG_KEYS {
        windows.retain(|_, w| now.duration_since(w.started) < LOG_PERIOD || w.suppressed > 0);
        if windows.len() >= LOG_KEYS {
            // Everyone new shares one window: the table stays bounded.
            key.1 = std::net::IpAddr::from([0u8, 0, 0, 0]);
        }
    }
    windows
        .entry(key)
        .or_insert_with(|| LogWindow::new(now))
        .admit(now)
}

/// Logs at `level` unless the category has logged its share of the period; the next line logged
/// says how many were suppressed.
#[macro_export]
macro_rules! log_limited {
    ($level:ident, $category:expr, $($arg:tt)+) => {
        match $crate::limits::log_allowed($category) {
            Some(0) => log::$level!($($arg)+),
            Some(n) => log::$level!("{} ({n} similar lines suppressed)", format_args!($($arg)+)),
            None => {}
        }
    };
}

/// As [`log_limited!`], with a window per peer address (an `IpAddr`) within the category.
#[macro_export]
macro_rules! log_limited_for {
    ($level:ident, $category:expr, $peer:expr, $($arg:tt)+) => {
        match $crate::limits::log_allowed_for($category, $peer) {
            Some(0) => log::$level!($($arg)+),
            Some(n) => log::$level!("{} ({n} similar lines suppressed)", format_args!($($arg)+)),
            None => {}
        }
    };
}

/// Characters that change how a line reads without being seen: control characters, the Unicode
/// line and paragraph separators, and the bidirectional controls (which can make a log line or
/// a name read backwards).
pub fn is_invisible(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{2028}'
                | '\u{2029}'
                | '\u{061C}'
                | '\u{200B}'..='\u{200F}'
                | '\u{202A}'..='\u{202E}'
                | '\u{2060}'..='\u{2069}'
                | '\u{FEFF}'
        )
}

/// Peer-supplied text for a log line or an error: control characters (`\r`, `\n`, escapes),
/// line separators and bidi controls are escaped, so such text cannot forge a line or hide one.
pub struct Escaped<'a>(pub &'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in self.0.chars() {
            if c.is_control() {
                write!(f, "{}", c.escape_default())?;
            } else if is_invisible(c) {
                write!(f, "{}", c.escape_unicode())?;
            } else {
                fmt::Write::write_char(f, c)?;
            }
        }
        Ok(())
    }
}

/// Whether a name (of a tunnel or service) is acceptable: no control characters, line
/// separators or bidi controls.
pub fn printable(name: &str) -> bool {
    !name.chars().any(is_invisible)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gauges_refuse_past_the_ceiling_and_free_on_drop() {
        let g = Gauge::new(2);
        let a = g.try_acquire().expect("one");
        let _b = g.try_acquire().expect("two");
        assert!(g.try_acquire().is_none());
        assert_eq!((g.in_use(), g.refused()), (2, 1));
        drop(a);
        assert!(g.try_acquire().is_some());
        assert_eq!(g.in_use(), 1, "the temporary slot was dropped at once");
    }

    #[test]
    fn the_buffer_budget_says_when_it_is_spent() {
        let b = BufferBudget::new(100);
        assert!(b.hold(60));
        assert!(b.hold(40), "at the budget is within it");
        assert!(!b.hold(1));
        assert!(!b.has_room());
        b.release(41);
        assert!(b.has_room());
        assert_eq!((b.held(), b.withheld()), (60, 1));
    }

    #[test]
    fn token_bucket_allows_its_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(100, t0);
        let burst = (0..1000).filter(|_| b.try_take(t0)).count();
        assert_eq!(burst, 100);
        let later = t0 + Duration::from_millis(500);
        let refill = (0..1000).filter(|_| b.try_take(later)).count();
        assert!((49..=51).contains(&refill), "{refill}");
    }

    #[test]
    fn log_lines_are_rate_limited_and_escaped() {
        let allowed = (0..1000)
            .filter(|_| log_allowed("test-category").is_some())
            .count();
        assert_eq!(allowed, LOG_BURST as usize);
        assert_eq!(
            Escaped("evil\r\n[INFO] forged").to_string(),
            "evil\\r\\n[INFO] forged"
        );
        assert!(printable("tunnel-1 é"));
        assert!(!printable("a\nb"));
        assert!(!printable("a\u{2028}b") && !printable("\u{202E}gpj.exe"));
        assert_eq!(
            Escaped("a\u{2028}b\u{202E}c\x1b[31m").to_string(),
            "a\\u{2028}b\\u{202e}c\\u{1b}[31m"
        );
        let peer = std::net::IpAddr::from([192, 0, 2, 1]);
        let other = std::net::IpAddr::from([192, 0, 2, 2]);
        let allowed = (0..100)
            .filter(|_| log_allowed_for("test-peer", peer).is_some())
            .count();
        assert_eq!(allowed, LOG_BURST as usize);
        assert!(
            log_allowed_for("test-peer", other).is_some(),
            "a window per peer"
        );
    }
}
