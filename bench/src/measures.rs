//! The clients' measures, each taken the same way directly against a backend and through a
//! proxy: throughput, one connection's latency, exchanges per second, idle memory, tunnel
//! handshakes, a stalled reader beside live ones, latency beside bulk.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream as Stream;
use tokio::runtime::Runtime;

use crate::{wait_bulk_drained, Node, CHUNK, KEY};

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// MiB/s over `streams` parallel connections moving `total` bytes in all.
pub fn throughput(rt: &Runtime, addr: SocketAddr, streams: usize, total: u64, upload: bool) -> f64 {
    let each = total / streams as u64;
    let started = Instant::now();
    rt.block_on(join_all((0..streams).map(|_| async move {
        let mut s = dial(addr).await;
        let mut buf = vec![0x5au8; CHUNK];
        if upload {
            s.write_u8(b'U').await.expect("cmd");
            let mut left = each;
            while left > 0 {
                let n = left.min(CHUNK as u64) as usize;
                s.write_all(&buf[..n]).await.expect("upload");
                left -= n as u64;
            }
            s.shutdown().await.expect("half-close");
            assert_eq!(
                s.read_u64().await.expect("count"),
                each,
                "upload lost bytes"
            );
        } else {
            s.write_u8(b'D').await.expect("cmd");
            s.write_u64(each).await.expect("len");
            let mut got = 0u64;
            loop {
                let n = s.read(&mut buf).await.expect("download");
                if n == 0 {
                    break;
                }
                got += n as u64;
            }
            assert_eq!(got, each, "download lost bytes");
        }
    })));
    (each * streams as u64) as f64 / (1 << 20) as f64 / started.elapsed().as_secs_f64()
}

pub async fn dial(addr: SocketAddr) -> Stream {
    let s = Stream::connect(addr).await.expect("connect");
    s.set_nodelay(true).expect("nodelay");
    s
}

/// p50 and p99 in microseconds of a 64-byte request/response on one connection, from a plain
/// blocking socket (the least client overhead).
pub fn latency(addr: SocketAddr, pings: usize) -> (f64, f64) {
    p50_p99(latency_samples(addr, pings))
}

/// The p50 and p99 of `samples`.
pub fn p50_p99(mut samples: Vec<f64>) -> (f64, f64) {
    samples.sort_by(f64::total_cmp);
    let pct = |p: f64| samples[((samples.len() as f64 * p) as usize).min(samples.len() - 1)];
    (pct(0.50), pct(0.99))
}

/// `pings` 64 B exchanges on one connection (after a tenth more to warm up), in us each.
pub fn latency_samples(addr: SocketAddr, pings: usize) -> Vec<f64> {
    interleaved_samples(&[addr], pings, Duration::ZERO).remove(0)
}

/// `count` 64 B exchanges on one connection, the client sleeping `pause` after each (as an
/// interactive client thinks between requests): each one's time in us (after a tenth more to
/// warm up). Measures what a proxy adds when its threads have gone to sleep between exchanges,
/// and, with the CPU counted around it, what it spends per exchange then.
pub fn paced_samples(addr: SocketAddr, count: usize, pause: Duration) -> Vec<f64> {
    interleaved_samples(&[addr], count, pause).remove(0)
}

/// p50 and p99 (us) of each target's 64 B exchanges, one connection each, taken one exchange of
/// each in turn: a burst of the host's delays (they come every second or so on this shared
/// machine and last tens of ms) lands on all of them alike, so the differences are the targets'.
/// But not the cores' sleep: menet's data threads poll for 50 µs after a small read that
/// another has followed soon lately (`[node] busy_poll_us`), which keeps the cores awake for the
/// exchange that follows through another target, while menet's own comes after the others,
/// when its nodes may sleep again.
pub fn latency_interleaved(targets: &[SocketAddr], pings: usize) -> Vec<(f64, f64)> {
    interleaved_samples(targets, pings, Duration::ZERO)
        .into_iter()
        .map(p50_p99)
        .collect()
}

/// `pings` 64 B exchanges with each target in turn, one connection each (after a tenth more to
/// warm up), the client sleeping `pause` after each round (none when zero): each target's times
/// in us.
fn interleaved_samples(targets: &[SocketAddr], pings: usize, pause: Duration) -> Vec<Vec<f64>> {
    let mut conns: Vec<TcpStream> = targets
        .iter()
        .map(|addr| {
            let s = TcpStream::connect(addr).expect("connect");
            s.set_nodelay(true).expect("nodelay");
            s
        })
        .collect();
    let req = [7u8; 64];
    let mut resp = [0u8; 64];
    let mut samples = vec![Vec::with_capacity(pings); targets.len()];
    let n = targets.len();
    for i in 0..pings + pings / 10 {
        // Each round starts with the next target: what an exchange follows (a warm core, the
        // one before it still finishing) shifts its time, so every target follows every other.
        for k in (0..n).map(|k| (i + k) % n) {
            let t = Instant::now();
            conns[k].write_all(&req).expect("ping");
            conns[k].read_exact(&mut resp).expect("pong");
            if i >= pings / 10 {
                samples[k].push(t.elapsed().as_secs_f64() * 1e6);
            }
        }
        if !pause.is_zero() {
            thread::sleep(pause);
        }
    }
    samples
}

/// p50 and p99 (us) of one connection's 64 B exchanges directly, through menet and, given, through
/// rathole, measured in turn for `rounds` rounds of `pings` each (each round's order rotated, so
/// none is always first after the others): one run's figures moved 10 - 20 us between runs of
/// the same build on two shared cores, more than the gap between the proxies. Each round is
/// printed; the result holds the medians over the rounds of each p50 and p99 and of each added
/// p50 and p99 (the proxy's less direct's in the same round).
pub fn latency_in_turn(
    direct: SocketAddr,
    menet: SocketAddr,
    rathole: Option<SocketAddr>,
    pings: usize,
    rounds: usize,
) -> InTurn {
    let targets: Vec<SocketAddr> = [Some(direct), Some(menet), rathole]
        .into_iter()
        .flatten()
        .collect();
    // Per target: the rounds' p50s, p99s, and (past direct) added p50s and p99s.
    let mut seen = vec![[Vec::new(), Vec::new(), Vec::new(), Vec::new()]; targets.len()];
    for round in 0..rounds {
        let mut got = vec![(0.0, 0.0); targets.len()];
        for k in 0..targets.len() {
            let i = (round + k) % targets.len();
            got[i] = latency(targets[i], pings);
        }
        let (d50, d99) = got[0];
        for (i, &(p50, p99)) in got.iter().enumerate() {
            seen[i][0].push(p50);
            seen[i][1].push(p99);
            seen[i][2].push(p50 - d50);
            seen[i][3].push(p99 - d99);
        }
        let through = |i: usize| {
            got.get(i).map_or(String::new(), |(p50, p99)| {
                format!(
                    ", {} {p50:.0} / {p99:.0} ({:+.1})",
                    ["menet", "rathole"][i - 1],
                    p50 - d50
                )
            })
        };
        println!(
            "    round {}: p50 / p99 (us) direct {d50:.0} / {d99:.0}{}{}",
            round + 1,
            through(1),
            through(2)
        );
    }
    let mut medians = seen
        .into_iter()
        .map(|mut s| s.each_mut().map(|v| median(v)));
    let direct = medians.next().unwrap_or_default();
    let menet = medians.next().unwrap_or_default();
    InTurn {
        direct,
        menet,
        rathole: medians.next(),
    }
}

/// What [`latency_in_turn`] found: for each target the medians over the rounds of its p50, p99,
/// added p50 and added p99 (us; added is 0 for direct).
pub struct InTurn {
    /// Direct to the echo backend.
    pub direct: [f64; 4],
    /// Through menet.
    pub menet: [f64; 4],
    /// Through rathole, when it runs.
    pub rathole: Option<[f64; 4]>,
}

/// Request/response exchanges per second from `clients` concurrent clients, `size` bytes each
/// way; with `reconnect`, each exchange on a new connection (connect, echo, close).
pub fn exchanges_per_second(
    rt: &Runtime,
    addr: SocketAddr,
    clients: usize,
    size: usize,
    reconnect: bool,
    window: Duration,
) -> f64 {
    let deadline = Instant::now() + window;
    let started = Instant::now();
    let done: u64 = rt
        .block_on(join_all((0..clients).map(|_| async move {
            let req = vec![1u8; size];
            let mut resp = vec![0u8; size];
            let mut s = dial(addr).await;
            let mut n = 0u64;
            while Instant::now() < deadline {
                if reconnect && n > 0 {
                    s = dial(addr).await;
                }
                s.write_all(&req).await.expect("request");
                s.read_exact(&mut resp).await.expect("response");
                n += 1;
            }
            n
        })))
        .into_iter()
        .sum();
    done as f64 / started.elapsed().as_secs_f64()
}

/// Resident memory both nodes gain per connection held open through the tunnel, in KiB.
/// The median of a few measures (sorted in place).
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub fn idle_memory(rss: &dyn Fn() -> u64, addr: SocketAddr, count: usize) -> f64 {
    let open = |n: usize| -> Vec<TcpStream> {
        (0..n)
            .map(|_| {
                let mut s = TcpStream::connect(addr).expect("connect");
                s.write_all(b"h").expect("hello");
                let mut r = [0u8; 1];
                s.read_exact(&mut r).expect("through the tunnel");
                s
            })
            .collect()
    };
    // A few first connections set up what every node sets up once.
    drop(open(10));
    thread::sleep(Duration::from_millis(300));
    let before = rss();
    let held = open(count);
    thread::sleep(Duration::from_millis(500));
    let after = rss();
    drop(held);
    after.saturating_sub(before) as f64 / count as f64
}

/// Tunnel handshakes completed per second by `dialers` dialers at once, each dialling, proving
/// the secret and closing, over and over.
pub fn handshakes_per_second(
    rt: &Runtime,
    addr: SocketAddr,
    dialers: usize,
    window: Duration,
) -> f64 {
    use menet_actors::cipher::Secret;
    use menet_actors::handshake::{self, Identity, Terms, Transport};
    use menet_actors::protocol::Windows;
    let terms = Terms {
        windows: Windows {
            stream: 1 << 20,
            tunnel: 32 << 20,
        },
        max_streams: 4096,
    };
    let started = Instant::now();
    let deadline = started + window;
    let done: u64 = rt
        .block_on(join_all((0..dialers).map(|i| async move {
            // One identity per dialer: each re-dial replaces its own tunnel of the name.
            let identity = std::sync::Arc::new(Identity::generate());
            let name = format!("handshake-{i}");
            let mut n = 0u64;
            while Instant::now() < deadline {
                let secret = Some(Secret::new(KEY));
                // Eight dialers share one address: past its share of handshake slots
                // (`handshakes_per_address`) a dial is refused at once and made again.
                // A dialer that wants the tunnel sealed: the X25519 exchange and the key
                // schedule are part of what is measured.
                let transport = Transport::here(true);
                let dial = handshake::dial(
                    addr,
                    &name,
                    terms,
                    identity.clone(),
                    secret,
                    transport,
                    None,
                );
                match dial.await {
                    Ok(_) => n += 1,
                    Err(_) => tokio::time::sleep(Duration::from_micros(200)).await,
                }
            }
            n
        })))
        .into_iter()
        .sum();
    done as f64 / started.elapsed().as_secs_f64()
}

/// One of 32 downloads on a tunnel stops reading for `secs` seconds: what it costs the nodes in
/// memory, and the other 31's speed against 31 alone.
pub fn stalled_reader(a: &Node, b: &Node, addr: SocketAddr, secs: u64) {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    let run = |stall: bool| -> (f64, u64) {
        let stop = Arc::new(AtomicBool::new(false));
        let moved = Arc::new(AtomicU64::new(0));
        let before = a.rss_kib() + b.rss_kib();
        let mut readers = Vec::new();
        for i in 0..32 {
            let (stop, moved) = (stop.clone(), moved.clone());
            readers.push(thread::spawn(move || {
                let mut s = TcpStream::connect(addr).expect("connect");
                s.write_all(b"D").expect("cmd");
                s.write_all(&u64::MAX.to_be_bytes()).expect("len");
                let mut buf = vec![0u8; CHUNK];
                if i == 0 {
                    // The stalled reader: one read, then nothing until the end (or it is absent).
                    if stall {
                        let _ = s.read(&mut buf);
                    }
                    while !stop.load(Ordering::Relaxed) {
                        thread::sleep(Duration::from_millis(20));
                    }
                    return;
                }
                while !stop.load(Ordering::Relaxed) {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            moved.fetch_add(n as u64, Ordering::Relaxed);
                        }
                    }
                }
            }));
        }
        thread::sleep(Duration::from_secs(1));
        let from = moved.load(Ordering::Relaxed);
        let started = Instant::now();
        thread::sleep(Duration::from_secs(secs));
        let rate = (moved.load(Ordering::Relaxed) - from) as f64
            / (1 << 20) as f64
            / started.elapsed().as_secs_f64();
        let grown = (a.rss_kib() + b.rss_kib()).saturating_sub(before);
        stop.store(true, Ordering::Relaxed);
        for r in readers {
            let _ = r.join();
        }
        thread::sleep(Duration::from_millis(300));
        (rate, grown)
    };
    let (alone, _) = run(false);
    let (beside, grown) = run(true);
    println!(
        "{:<64} {alone:>12.1} {beside:>12.1} {:>7.2}",
        format!("31 downloads (MiB/s): alone, beside a reader stalled {secs} s"),
        beside / alone
    );
    println!(
        "{:<64} {:>12} {grown:>12}",
        "  RSS growth of both nodes with the stalled reader (KiB)", "-"
    );
}

/// 64-byte request/response latency on `echo` while `bulk` streams download through `bulk_addr`
/// on the same tunnel: (p50, p99) in microseconds.
pub fn latency_under_load(
    bulk_addr: SocketAddr,
    bulk: usize,
    echo: SocketAddr,
    pings: usize,
) -> (f64, f64) {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let loaders: Vec<_> = (0..bulk)
        .map(|_| {
            let stop = stop.clone();
            thread::spawn(move || {
                let mut s = TcpStream::connect(bulk_addr).expect("bulk");
                s.write_all(b"D").expect("cmd");
                s.write_all(&u64::MAX.to_be_bytes()).expect("len");
                let mut buf = vec![0u8; CHUNK];
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    if s.read(&mut buf).unwrap_or(0) == 0 {
                        break;
                    }
                }
            })
        })
        .collect();
    // Let the bulk streams fill the path first.
    thread::sleep(Duration::from_millis(1500));
    let (p50, p99) = latency(echo, pings);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for l in loaders {
        let _ = l.join();
    }
    wait_bulk_drained();
    (p50, p99)
}
