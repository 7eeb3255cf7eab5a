//! menet's benchmark: starts two nodes on loopback (A dials B, services local on A and remote on
//! B) and prints each figure beside the same measure taken directly against the backend in the
//! same run. Figures, not pass/fail: the machine is shared and noisy, so compare ratios. The
//! options are in [`USAGE`] (`menet-bench --help`).

mod backends;
mod instructions;
mod long_link;
mod loopback;
mod measures;
mod nginx;
mod node;
mod rathole;
mod real_clients;
mod scale;
mod services;

use backends::{backends, wait_bulk_drained};
use measures::{
    dial, exchanges_per_second, handshakes_per_second, idle_memory, latency, latency_in_turn,
    latency_interleaved, latency_samples, latency_under_load, median, p50_p99, paced_samples,
    runtime, stalled_reader, throughput,
};
use node::{
    cpu_split_ms_of_all, dies_with_bench, machine_busy_ms, menet_binary, node_config, node_threads,
    raise_fd_limit, rss_of, Node, TempFile,
};

use std::net::SocketAddr;
use std::path::PathBuf;

use std::thread;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use menet_actors::cipher::{fresh_nonce, CipherKind, ServiceKey};

/// What `--help` prints: every option the bench reads.
const USAGE: &str = "\
menet-bench: two menet nodes on loopback, each figure beside direct loopback (and rathole)

usage: cargo build --release && target/release/menet-bench [OPTIONS]

what runs (the whole bench, about 15 minutes, unless one of these is given):
  --loopback-only        the loopback table alone (not the stalled reader, the long link,
                         tunnel handshakes or memory)
  --long-only            the long link alone (the tunnel through a relay delaying 25 ms each way)
  --long-rounds N        with the long link: each bulk row N times, menet and rathole in turn
  --relay-cap BYTES      with the long link: what its relay holds in flight per connection
                         (default 32 MiB; small, a path that limits each connection)
  --latency-only         one keep-alive connection's latency alone
  --requests-only        requests/s over 32 keep-alive connections alone, three rounds
  --connections-only     new connections/s alone, one long run (and a keyed service's)
  --flow-only            bulk, and a small exchange beside bulk on the same and another tunnel
  --real-clients-only    wrk against nginx (the issue's measure of requests and connections)
  --services-only        UDP services and PROXY headers
  --memory-only          fresh nodes' RSS and RSS per idle connection
  --instructions-only    instructions per exchange and per new connection (callgrind)
  --scale [--objects N] [--listeners N]   a node with many objects (default 10000, 2000)
  --quick                shorter runs of everything

how:
  --menet PATH           the menet binary (default: target/release/menet beside this one)
  --node-threads N       the nodes' data threads (0: all on the admin thread)
  --node-config FILE     the nodes' configuration file
  --node-logs            the nodes' logs onto this one's standard error
  --rathole PATH         the same rows through rathole (a build of its own, not in this repository)
  --rathole-noise        rathole's connections sealed by its Noise transport (equal security)
  -h, --help             this text
";

const CHUNK: usize = 256 * 1024;
const KEY: &str = "UHI@&s8sa*S";

struct Plan {
    /// Bytes each plaintext bulk row moves.
    bulk_plain: u64,
    /// Bytes each keyed bulk row moves (RC4 and the AEADs are slower).
    bulk_keyed: u64,
    /// Exchanges in each latency round.
    pings: usize,
    /// How long each rate measure (requests, new connections, UDP) runs.
    window: Duration,
    /// Idle connections opened to weigh what one costs in memory.
    idle_conns: usize,
    /// How long each long-link throughput run lasts.
    long_run: Duration,
    /// Exchanges in each long-link latency row (50 ms each): its p99 is the 1 % slowest, so
    /// 500 puts it at the 5th slowest rather than at 200's 2nd, which one stall of the
    /// machine sets alone.
    long_pings: usize,
}

fn main() {
    if std::env::args().any(|a| a == "--help" || a == "-h") {
        print!("{USAGE}");
        return;
    }
    let quick = std::env::args().any(|a| a == "--quick");
    let plan = Plan::new(quick);
    raise_fd_limit();
    let menet = menet_binary();

    let rc4 = cipher_rows();

    let rt = runtime();
    let (bulk, echo, hold) = backends();
    if std::env::args().any(|a| a == "--scale") {
        scale::run(&menet, echo);
        return;
    }
    if std::env::args().any(|a| a == "--memory-only") {
        // For weighing a change that moves memory (an allocator, a buffer size).
        memory_rows(&menet, echo, hold, plan.idle_conns);
        return;
    }
    if std::env::args().any(|a| a == "--long-only") {
        long_link::long_link(&menet, &rt, bulk, echo, &plan);
        return;
    }
    let lb = loopback::Loopback::start(&menet, bulk, echo, hold);
    lb.header();
    if std::env::args().any(|a| a == "--requests-only") {
        lb.requests_only(&rt);
        return;
    }
    if std::env::args().any(|a| a == "--latency-only") {
        lb.latency_only(&rt, &plan);
        return;
    }
    if std::env::args().any(|a| a == "--services-only") {
        services::rows(&rt, &lb.a, &lb.b, echo, plan.window, &|name, d, m| {
            println!("{name:<64} {d:>12.1} {m:>12.1} {:>7.2}", m / d.max(1e-9));
        });
        return;
    }
    if std::env::args().any(|a| a == "--instructions-only") {
        // For weighing a change to the data path: instructions, not time.
        instructions::rows(&menet, echo);
        return;
    }
    if std::env::args().any(|a| a == "--connections-only") {
        // For profiling the connection set-up path: a long run of that measure alone.
        let m = exchanges_per_second(&rt, lb.echoed, 32, 32, true, Duration::from_secs(8));
        let k = exchanges_per_second(&rt, lb.keyed_echoed, 32, 32, true, Duration::from_secs(8));
        println!("new connections/s: {m:.0}; keyed with RC4: {k:.0}");
        return;
    }
    if std::env::args().any(|a| a == "--real-clients-only") {
        real_clients::rows(&lb.a, &lb.b, &row3);
        return;
    }
    if std::env::args().any(|a| a == "--flow-only") {
        lb.flow_only(&rt, &plan, &menet);
        return;
    }
    lb.bulk_rows(&rt, &plan, rc4);
    lb.latency_rows(&plan);
    lb.request_rows(&rt, &plan);
    // The clear tunnel's nodes go: the rows below need A and B, rathole and one bulk service.
    let loopback::Loopback {
        a, b, rh, plain, ..
    } = lb;
    services::rows(&rt, &a, &b, echo, plan.window, &row);
    instructions::rows(&menet, echo);

    if std::env::args().any(|a| a == "--loopback-only") {
        // For before/after comparisons of the data path: the loopback table alone.
        return;
    }
    stalled_reader(&a, &b, plain, if quick { 3 } else { 10 });
    long_link::long_link(&menet, &rt, bulk, echo, &plan);

    handshake_rows(&menet, &rt, plan.window);

    // Fresh nodes: memory freed by the bulk runs above would hide what connections cost.
    drop((a, b));
    drop(rh);
    memory_rows(&menet, echo, hold, plan.idle_conns);
}

impl Plan {
    /// The full run's sizes, or `--quick`'s.
    fn new(quick: bool) -> Plan {
        if quick {
            Plan {
                bulk_plain: 256 << 20,
                bulk_keyed: 64 << 20,
                pings: 2_000,
                window: Duration::from_millis(700),
                idle_conns: 300,
                long_run: Duration::from_secs(4),
                long_pings: 200,
            }
        } else {
            Plan {
                bulk_plain: 2 << 30,
                bulk_keyed: 512 << 20,
                pings: 20_000,
                window: Duration::from_secs(3),
                idle_conns: 1_000,
                long_run: Duration::from_secs(8),
                long_pings: 500,
            }
        }
    }
}

/// The ciphers' own speed on one core (the ceilings of the keyed and sealed rows); RC4's, for
/// the bulk rows.
fn cipher_rows() -> f64 {
    let rc4 = cipher_speed(CipherKind::Rc4);
    println!("menet benchmark: two nodes on loopback, each measure beside direct loopback");
    println!("raw RC4 keystream, one core: {rc4:.0} MiB/s (the ceiling of one keyed stream)");
    for cipher in AEADS {
        println!(
            "raw {cipher} sealing 64 KiB frames, one core: {:.0} MiB/s",
            cipher_speed(cipher)
        );
    }
    println!();
    rc4
}

/// Tunnel handshakes with a secret per second, one dialer and eight at once.
fn handshake_rows(menet: &PathBuf, rt: &tokio::runtime::Runtime, window: Duration) {
    // Tunnel handshakes with a secret (HMAC both ways, an Ed25519 signature each way, an X25519
    // exchange and the sealed PROOF), one dialer and eight at once, against a fresh acceptor.
    let guarded = Node::start_env(menet, &[("MENET_TUNNEL_SECRET", KEY)]);
    let port = SocketAddr::from(([127, 0, 0, 1], guarded.tunnel));
    for dialers in [1usize, 8] {
        let m = handshakes_per_second(rt, port, dialers, window);
        println!(
            "{:<64} {:>12} {m:>12.0}",
            format!("tunnels established/s with a secret, {dialers} dialer(s)"),
            "-"
        );
    }
    drop(guarded);
}

/// Fresh nodes' resident memory, and what each idle connection adds (rathole's beside them,
/// given `--rathole`).
fn memory_rows(menet: &PathBuf, echo: SocketAddr, hold: SocketAddr, idle_conns: usize) {
    let (a, b) = (Node::start(menet), Node::start(menet));
    a.post(
        "/tunnel",
        &format!(r#"{{"name":"t","dest":["127.0.0.1","{}"]}}"#, b.tunnel),
    );
    let held = a.carry(&b, "hold", None, hold);
    thread::sleep(Duration::from_millis(300));
    let fresh = a.rss_kib() + b.rss_kib();
    let per_conn = idle_memory(&|| a.rss_kib() + b.rss_kib(), held, idle_conns);
    let rathole = rathole::binary().map(|path| {
        let r = rathole::Rathole::start(&path, &[("echo", echo), ("hold", hold)], |_| None);
        r.wait_echo(0);
        let fresh = r.rss_kib();
        (fresh, idle_memory(&|| r.rss_kib(), r.ports[1], idle_conns))
    });
    let column = |f: &dyn Fn((u64, f64)) -> f64| {
        rathole.map_or(String::new(), |r| format!(" {:>12.1}", f(r)))
    };
    println!(
        "{:<64} {:>12} {:>12} {:>7}{}",
        "RSS of two fresh nodes with one tunnel (KiB)",
        "-",
        fresh,
        "",
        column(&|r| r.0 as f64),
    );
    println!(
        "{:<64} {:>12} {:>12.1} {:>7}{}",
        format!("RSS per idle connection, both nodes (KiB), {idle_conns}"),
        "-",
        per_conn,
        "",
        column(&|r| r.1),
    );
}

/// The two rows of a small exchange beside 4 bulk downloads: with the bulk on another tunnel,
/// and on the exchange's own; (p50, p99) each.
fn beside_rows(row: &dyn Fn(&str, f64, f64), other: (f64, f64), same: (f64, f64)) {
    row(
        "  p50 (us) beside 4 bulk downloads: another tunnel, same tunnel",
        other.0,
        same.0,
    );
    row(
        "  p99 (us) beside 4 bulk downloads: another tunnel, same tunnel",
        other.1,
        same.1,
    );
}

/// The 64 B exchange beside four bulk downloads on another tunnel and on its own, in turn for
/// `rounds` rounds (each p99 is of `pings` exchanges, and moves with the shared cores from one
/// run to the next): each round's p99s and their ratio, then the medians (p50, p99) of each.
fn beside_in_turn(
    other_bulk: SocketAddr,
    same_bulk: SocketAddr,
    echo: SocketAddr,
    pings: usize,
    rounds: usize,
) -> ((f64, f64), (f64, f64)) {
    let (mut other, mut same) = ((Vec::new(), Vec::new()), (Vec::new(), Vec::new()));
    for round in 1..=rounds {
        let o = latency_under_load(other_bulk, 4, echo, pings);
        let l = latency_under_load(same_bulk, 4, echo, pings);
        println!(
            "{:<64} {:>12.0} {:>12.0} {:>7.2}",
            format!("    round {round}: p99 (us) another tunnel, same tunnel"),
            o.1,
            l.1,
            l.1 / o.1
        );
        other.0.push(o.0);
        other.1.push(o.1);
        same.0.push(l.0);
        same.1.push(l.1);
    }
    (
        (median(&mut other.0), median(&mut other.1)),
        (median(&mut same.0), median(&mut same.1)),
    )
}

/// The AEADs a keyed service may choose.
const AEADS: [CipherKind; 2] = [CipherKind::ChaCha20Poly1305, CipherKind::Aes256Gcm];

/// MiB/s of one core sealing a stream's 64 KiB DATA frames with `cipher`.
fn cipher_speed(cipher: CipherKind) -> f64 {
    let key = ServiceKey::new(KEY, cipher);
    let open = key.open();
    let mut crypto = key.stream(&open.nonce, &fresh_nonce(), true);
    let mut buf = BytesMut::with_capacity(64 * 1024 + 16);
    let started = Instant::now();
    let mut bytes = 0u64;
    while started.elapsed() < Duration::from_secs(1) {
        buf.clear();
        buf.resize(64 * 1024, 0);
        crypto.seal.seal(&mut buf);
        bytes += 64 * 1024;
    }
    bytes as f64 / (1 << 20) as f64 / started.elapsed().as_secs_f64()
}

/// A table row: a measure directly and through menet, and their ratio.
fn row(name: &str, direct: f64, menet: f64) {
    println!(
        "{name:<64} {direct:>12.1} {menet:>12.1} {:>7.2}",
        menet / direct
    );
}

/// A row with rathole's figure for the same measure, when it runs.
fn row3(name: &str, direct: f64, menet: f64, rathole: Option<f64>) {
    match rathole {
        Some(r) => println!(
            "{name:<64} {direct:>12.1} {menet:>12.1} {:>7.2} {r:>12.1} {:>7.2}",
            menet / direct,
            r / direct
        ),
        None => row(name, direct, menet),
    }
}
