//! menet's benchmark: starts two nodes on loopback (A dials B, services local on A and remote on
//! B) and prints each figure beside the same measure taken directly against the backend in the
//! same run. Figures, not pass/fail: the machine is shared and noisy, so compare ratios.
//!
//!     cargo build --release && cargo run --release -p menet-bench [-- --quick] [--loopback-only]
//!         [--menet PATH]
//!     cargo run --release -p menet-bench -- --scale [--objects 10000] [--listeners 2000]
//!     any of them with --node-threads N: the nodes' data threads (0: all on the admin thread),
//!     --node-config FILE: the nodes' configuration file,
//!     --rathole PATH: the same rows through rathole (a build of its own, not in this repository)
//!     --rathole-noise: rathole's connections sealed by its Noise transport (equal security)
//!     --services-only: the rows of UDP services and PROXY headers alone
//!     --memory-only: fresh nodes' RSS and RSS per idle connection alone
//!     --real-clients-only: wrk against nginx (the issue's measure of requests and new
//!     connections) alone

mod backends;
mod instructions;
mod long_link;
mod measures;
mod node;
mod rathole;
mod real_clients;
mod scale;
mod services;

use backends::{backends, wait_bulk_drained};
use measures::{
    dial, exchanges_per_second, handshakes_per_second, idle_memory, latency, latency_samples,
    latency_under_load, median, runtime, stalled_reader, throughput,
};
use node::{
    cpu_split_ms_of, dies_with_bench, menet_binary, node_config, node_threads, raise_fd_limit,
    rss_of, Node, TempFile,
};

use std::net::SocketAddr;
use std::path::PathBuf;

use std::thread;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use menet_actors::cipher::{fresh_nonce, CipherKind, ServiceKey};

const CHUNK: usize = 256 * 1024;
const KEY: &str = "UHI@&s8sa*S";

struct Plan {
    bulk_plain: u64,
    bulk_keyed: u64,
    pings: usize,
    window: Duration,
    idle_conns: usize,
    /// How long each long-link throughput run lasts.
    long_run: Duration,
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let plan = if quick {
        Plan {
            bulk_plain: 256 << 20,
            bulk_keyed: 64 << 20,
            pings: 2_000,
            window: Duration::from_millis(700),
            idle_conns: 300,
            long_run: Duration::from_secs(4),
        }
    } else {
        Plan {
            bulk_plain: 2 << 30,
            bulk_keyed: 512 << 20,
            pings: 20_000,
            window: Duration::from_secs(3),
            idle_conns: 1_000,
            long_run: Duration::from_secs(8),
        }
    };
    raise_fd_limit();
    let menet = menet_binary();

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
    let (a, b) = (Node::start(&menet), Node::start(&menet));
    a.post(
        "/tunnel",
        &format!(r#"{{"name":"t","dest":["127.0.0.1","{}"]}}"#, b.tunnel),
    );
    let plain = a.carry(&b, "bulk", None, bulk);
    let keyed = a.carry(&b, "bulkk", Some(KEY), bulk);
    let sealed: Vec<(CipherKind, SocketAddr)> = AEADS
        .iter()
        .map(|&c| {
            (
                c,
                a.carry_with(&b, &format!("bulk-{c}"), Some((KEY, c)), bulk),
            )
        })
        .collect();
    let echoed = a.carry(&b, "echo", None, echo);
    // The same services through a tunnel with the record layer off (`[tunnel] encrypt = false`
    // on both nodes): what sealing the whole tunnel (the default) costs.
    let clear_config = TempFile::new("clear", "[tunnel]\nencrypt = false\n");
    let clear_args = ["--config", clear_config.path()];
    let (ca, cb) = (
        Node::start_args(&menet, &[], &clear_args),
        Node::start_args(&menet, &[], &clear_args),
    );
    ca.post(
        "/tunnel",
        &format!(r#"{{"name":"t","dest":["127.0.0.1","{}"]}}"#, cb.tunnel),
    );
    let clear_plain = ca.carry(&cb, "bulk", None, bulk);
    let clear_echoed = ca.carry(&cb, "echo", None, echo);

    // rathole beside menet, carrying the same backends (bulk, echo, hold).
    let rh = rathole::binary().map(|path| {
        let r = rathole::Rathole::start(
            &path,
            &[("bulk", bulk), ("echo", echo), ("hold", hold)],
            |_| None,
        );
        r.wait_echo(1);
        r
    });
    let rh_port = |i: usize| rh.as_ref().map(|r| r.ports[i]);
    println!(
        "{:<64} {:>12} {:>12} {:>7}{}",
        "measure",
        "direct",
        "menet",
        "ratio",
        if rh.is_some() {
            format!(" {:>12} {:>7}", rathole::label(), "ratio")
        } else {
            String::new()
        }
    );
    if std::env::args().any(|a| a == "--requests-only") {
        // For profiling the request/response path: that measure alone, direct, through menet
        // and through rathole (given `--rathole`) in turn, three rounds of 5 s.
        let window = Duration::from_secs(5);
        for round in 1..=3 {
            let d = exchanges_per_second(&rt, echo, 32, 128, false, window);
            let m = exchanges_per_second(&rt, echoed, 32, 128, false, window);
            let r = rh_port(1).map_or(String::new(), |p| {
                let r = exchanges_per_second(&rt, p, 32, 128, false, window);
                format!(", rathole {r:.0} ({:.2})", r / d)
            });
            println!(
                "requests/s, round {round}: direct {d:.0}, menet {m:.0} ({:.2}){r}",
                m / d
            );
        }
        return;
    }
    if std::env::args().any(|a| a == "--latency-only") {
        // For profiling one connection's latency: fresh nodes, then after a bulk download.
        for when in ["fresh nodes", "fresh nodes", "after bulk", "after bulk"] {
            if when == "after bulk" {
                throughput(&rt, plain, 8, plan.bulk_plain / 4, false);
            }
            let (d50, d99) = latency(echo, plan.pings);
            // Beside each latency, the CPU both ends of the tunnel spent per exchange: in all,
            // in user space, in the kernel.
            let cpu = |pids: &[u32]| {
                pids.iter()
                    .map(|&p| cpu_split_ms_of(p))
                    .fold((0, 0), |(u, k), (du, dk)| (u + du, k + dk))
            };
            let exchanges = (plan.pings + plan.pings / 10) as f64;
            let measured = |addr: SocketAddr, pids: &[u32]| {
                let before = cpu(pids);
                let (p50, p99) = latency(addr, plan.pings);
                let after = cpu(pids);
                let per = |a: u64, b: u64| (a - b) as f64 * 1000.0 / exchanges;
                let (user, kernel) = (per(after.0, before.0), per(after.1, before.1));
                format!(
                    "p50 {p50:.0} p99 {p99:.0} us ({:.1} us CPU: {user:.1} user, {kernel:.1} \
                     kernel)",
                    user + kernel
                )
            };
            let menet = measured(echoed, &[a.child.id(), b.child.id()]);
            // The same through a clear tunnel (what sealing costs) and through rathole (plain
            // TCP, its default), interleaved so that they share the machine's mood.
            let clear = measured(clear_echoed, &[ca.child.id(), cb.child.id()]);
            let rathole = rh.as_ref().map_or(String::new(), |r| {
                format!(", rathole {}", measured(r.ports[1], &r.pids()))
            });
            println!(
                "{when}: direct p50 {d50:.0} p99 {d99:.0} us, menet {menet}, clear tunnel \
                 {clear}{rathole}"
            );
        }
        return;
    }
    if std::env::args().any(|a| a == "--services-only") {
        services::rows(&rt, &a, &b, echo, plan.window, &|name, d, m| {
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
        let m = exchanges_per_second(&rt, echoed, 32, 32, true, Duration::from_secs(8));
        println!("new connections/s: {m:.0}");
        return;
    }
    let row = |name: &str, direct: f64, menet: f64| {
        println!(
            "{name:<64} {direct:>12.1} {menet:>12.1} {:>7.2}",
            menet / direct
        );
    };
    // A row with rathole's figure for the same measure, when it runs.
    let row3 = |name: &str, direct: f64, menet: f64, rathole: Option<f64>| match rathole {
        Some(r) => println!(
            "{name:<64} {direct:>12.1} {menet:>12.1} {:>7.2} {r:>12.1} {:>7.2}",
            menet / direct,
            r / direct
        ),
        None => row(name, direct, menet),
    };
    if std::env::args().any(|a| a == "--real-clients-only") {
        real_clients::rows(&a, &b, &row3);
        return;
    }
    if std::env::args().any(|a| a == "--flow-only") {
        // For tuning flow control: bulk through the tunnel, and a small exchange beside bulk on
        // the same tunnel and on another.
        for (dir, upload) in [("upload", true), ("download", false)] {
            for streams in [1usize, 8] {
                row(
                    &format!("bulk {streams} stream(s) {dir}, plaintext (MiB/s)"),
                    throughput(&rt, bulk, streams, plan.bulk_plain, upload),
                    throughput(&rt, plain, streams, plan.bulk_plain, upload),
                );
            }
        }
        a.post(
            "/tunnel",
            &format!(r#"{{"name":"t2","dest":["127.0.0.1","{}"]}}"#, b.tunnel),
        );
        let elsewhere = a.carry_on("t2", &b, "bulk2", None, bulk);
        for _ in 0..2 {
            let other = latency_under_load(elsewhere, 4, echoed, plan.pings / 4);
            let same = latency_under_load(plain, 4, echoed, plan.pings / 4);
            beside_rows(&row, other, same);
        }
        if node_threads().is_none() {
            // The same two tunnels between nodes with one data thread each: the other tunnel
            // then shares the bulk's thread too, which isolates what the tunnel itself queues
            // (frames, windows) from what sharing a busy thread costs.
            println!("nodes with one data thread each (both tunnels on it):");
            let config = node_config().unwrap_or_else(|| "/dev/null".to_owned());
            let one = ["--config", config.as_str(), "--threads", "1"];
            let (a1, b1) = (
                Node::start_args(&menet, &[], &one),
                Node::start_args(&menet, &[], &one),
            );
            for t in ["t1", "t2"] {
                a1.post(
                    "/tunnel",
                    &format!(r#"{{"name":"{t}","dest":["127.0.0.1","{}"]}}"#, b1.tunnel),
                );
            }
            let same_bulk = a1.carry_on("t1", &b1, "bulk", None, bulk);
            let one_echo = a1.carry_on("t1", &b1, "echo", None, echo);
            let other_bulk = a1.carry_on("t2", &b1, "bulk2", None, bulk);
            let other = latency_under_load(other_bulk, 4, one_echo, plan.pings / 4);
            let same = latency_under_load(same_bulk, 4, one_echo, plan.pings / 4);
            beside_rows(&row, other, same);
        }
        return;
    }
    let mut cpu_rows: Vec<(String, u64, u64)> = Vec::new();
    // Node CPU time spent on one tunnelled run, beside what it moved.
    let mut tunnelled =
        |addr: SocketAddr, streams: usize, bytes: u64, upload: bool, name: String| {
            let before = a.cpu_ms() + b.cpu_ms();
            let m = throughput(&rt, addr, streams, bytes, upload);
            cpu_rows.push((name, a.cpu_ms() + b.cpu_ms() - before, bytes));
            m
        };
    let mut plaintext = std::collections::HashMap::new();
    for (dir, upload) in [("upload", true), ("download", false)] {
        for streams in [1usize, 8] {
            let d = throughput(&rt, bulk, streams, plan.bulk_plain, upload);
            let name = format!("bulk {streams} stream(s) {dir}, plaintext");
            let m = tunnelled(plain, streams, plan.bulk_plain, upload, name.clone());
            let r = rh_port(0).map(|p| throughput(&rt, p, streams, plan.bulk_plain, upload));
            row3(&format!("{name} (MiB/s)"), d, m, r);
            plaintext.insert((upload, streams), m);
        }
    }
    // The tunnel is sealed by default: the same plaintext service through a clear tunnel,
    // the two measured alternately three times (medians), so a noisy neighbour hits both.
    for (dir, upload) in [("upload", true), ("download", false)] {
        for streams in [1usize, 8] {
            let (mut c, mut m) = (Vec::new(), vec![plaintext[&(upload, streams)]]);
            for round in 0..3 {
                c.push(throughput(
                    &rt,
                    clear_plain,
                    streams,
                    plan.bulk_plain,
                    upload,
                ));
                if round < 2 {
                    m.push(throughput(&rt, plain, streams, plan.bulk_plain, upload));
                }
            }
            row(
                &format!("bulk {streams} stream(s) {dir}, sealed tunnel vs clear (MiB/s)"),
                median(&mut c),
                median(&mut m),
            );
        }
    }
    for (dir, upload) in [("upload", true), ("download", false)] {
        for streams in [1usize, 8] {
            let name = format!("bulk {streams} stream(s) {dir}, keyed");
            let m = tunnelled(keyed, streams, plan.bulk_keyed, upload, name.clone());
            row(&format!("{name} vs RC4 (MiB/s)"), rc4, m);
        }
    }
    // AEAD streams beside plaintext menet, measured above in this run.
    for &(cipher, addr) in &sealed {
        for (dir, upload) in [("upload", true), ("download", false)] {
            for streams in [1usize, 8] {
                let name = format!("bulk {streams} stream(s) {dir}, {cipher}");
                let m = tunnelled(addr, streams, plan.bulk_keyed, upload, name.clone());
                row(
                    &format!("{name} vs plaintext (MiB/s)"),
                    plaintext[&(upload, streams)],
                    m,
                );
            }
        }
    }
    for (name, ms, bytes) in &cpu_rows {
        let per_gib = *ms as f64 / (*bytes as f64 / (1u64 << 30) as f64);
        println!(
            "{:<64} {:>12} {per_gib:>12.0}",
            format!("  CPU ms/GiB, both nodes: {}", &name[5..]),
            "-"
        );
    }
    let (d50, d99) = latency(echo, plan.pings);
    let (m50, m99) = latency(echoed, plan.pings);
    let r = rh_port(1).map(|p| latency(p, plan.pings));
    row3(
        "latency p50, 64 B request/response (us)",
        d50,
        m50,
        r.map(|r| r.0),
    );
    row3(
        "latency p99, 64 B request/response (us)",
        d99,
        m99,
        r.map(|r| r.1),
    );
    for (what, d, m, r) in [
        ("p50", d50, m50, r.map(|r| r.0)),
        ("p99", d99, m99, r.map(|r| r.1)),
    ] {
        println!(
            "{:<64} {:>12} {:>12.1} {:>7}{}",
            format!("  added {what} latency (us)"),
            "-",
            m - d,
            "",
            r.map_or(String::new(), |r| format!(" {:>12.1}", r - d))
        );
    }
    let (c50, c99) = latency(clear_echoed, plan.pings);
    row("  latency p50, sealed tunnel vs clear (us)", c50, m50);
    row("  latency p99, sealed tunnel vs clear (us)", c99, m99);
    // Four bulk downloads beside the exchange: through the same tunnel, and (the baseline: the
    // same load generator on the same cores) directly.
    // The fair baseline for menet's own queueing: the same load through another tunnel between
    // the same two nodes (the same CPUs busy), against it on the exchange's own tunnel.
    a.post(
        "/tunnel",
        &format!(r#"{{"name":"t2","dest":["127.0.0.1","{}"]}}"#, b.tunnel),
    );
    let elsewhere = a.carry_on("t2", &b, "bulk2", None, bulk);
    let (x50, x99) = latency_under_load(bulk, 4, echo, plan.pings / 4);
    let (o50, o99) = latency_under_load(elsewhere, 4, echoed, plan.pings / 4);
    let (l50, l99) = latency_under_load(plain, 4, echoed, plan.pings / 4);
    println!(
        "{:<64} {:>12.0} {:>12.0}\n{:<64} {:>12.0} {:>12.0}",
        "  p50 (us) beside 4 bulk downloads: direct, another tunnel",
        x50,
        o50,
        "  p99 (us) beside 4 bulk downloads: direct, another tunnel",
        x99,
        o99
    );
    beside_rows(&row, (o50, o99), (l50, l99));
    if let (Some(rb), Some(re)) = (rh_port(0), rh_port(1)) {
        // rathole carries each connection on a TCP connection of its own: its figure beside
        // the same load through it.
        // Fewer exchanges: each waits milliseconds there.
        let (r50, r99) = latency_under_load(rb, 4, re, plan.pings / 40);
        println!(
            "{:<64} {:>12.0} {:>12.0}",
            format!(
                "  p50, p99 (us) beside 4 bulk downloads through {}",
                rathole::label()
            ),
            r50,
            r99
        );
    }

    row3(
        "requests/s, 32 keep-alive connections",
        exchanges_per_second(&rt, echo, 32, 128, false, plan.window),
        exchanges_per_second(&rt, echoed, 32, 128, false, plan.window),
        rh_port(1).map(|p| exchanges_per_second(&rt, p, 32, 128, false, plan.window)),
    );
    row3(
        "new connections/s, 32 clients (32 B echo)",
        exchanges_per_second(&rt, echo, 32, 32, true, plan.window),
        exchanges_per_second(&rt, echoed, 32, 32, true, plan.window),
        rh_port(1).map(|p| exchanges_per_second(&rt, p, 32, 32, true, plan.window)),
    );
    real_clients::rows(&a, &b, &row3);
    let (mut c, mut m) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        c.push(exchanges_per_second(
            &rt,
            clear_echoed,
            32,
            128,
            false,
            plan.window,
        ));
        m.push(exchanges_per_second(
            &rt,
            echoed,
            32,
            128,
            false,
            plan.window,
        ));
    }
    row(
        "  requests/s, 32 keep-alive connections, sealed tunnel vs clear",
        median(&mut c),
        median(&mut m),
    );
    drop((ca, cb));
    services::rows(&rt, &a, &b, echo, plan.window, &row);
    instructions::rows(&menet, echo);

    if std::env::args().any(|a| a == "--loopback-only") {
        // For before/after comparisons of the data path: the loopback table alone.
        return;
    }
    stalled_reader(&a, &b, plain, if quick { 3 } else { 10 });
    long_link::long_link(&menet, &rt, bulk, echo, &plan);

    // Tunnel handshakes with a secret (HMAC both ways, an Ed25519 signature each way, an X25519
    // exchange and the sealed PROOF), one dialer and eight at once, against a fresh acceptor.
    let guarded = Node::start_env(&menet, &[("MENET_TUNNEL_SECRET", KEY)]);
    let port = SocketAddr::from(([127, 0, 0, 1], guarded.tunnel));
    for dialers in [1usize, 8] {
        let m = handshakes_per_second(&rt, port, dialers, plan.window);
        println!(
            "{:<64} {:>12} {m:>12.0}",
            format!("tunnels established/s with a secret, {dialers} dialer(s)"),
            "-"
        );
    }
    drop(guarded);

    // Fresh nodes: memory freed by the bulk runs above would hide what connections cost.
    drop((a, b));
    drop(rh);
    memory_rows(&menet, echo, hold, plan.idle_conns);
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
