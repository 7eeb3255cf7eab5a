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

mod instructions;
mod long_link;
mod rathole;
mod scale;
mod services;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use futures_util::future::join_all;
use std::thread;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream as Stream;
use tokio::runtime::Runtime;

use bytes::BytesMut;
use menet_actors::cipher::{fresh_nonce, CipherKind, ServiceKey};

const CHUNK: usize = 256 * 1024;
/// Bulk downloads the backends are still sending: the next measure waits for none, so that a
/// download whose client went away (its tunnel or proxy still draining) does not slow it.
static BULK_SENDING: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
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
            // Beside each latency, the CPU both ends of the tunnel spent per exchange.
            let per = |ms: u64| ms as f64 * 1000.0 / (plan.pings + plan.pings / 10) as f64;
            let before = a.cpu_ms() + b.cpu_ms();
            let (m50, m99) = latency(echoed, plan.pings);
            let m_cpu = per(a.cpu_ms() + b.cpu_ms() - before);
            // The same through a clear tunnel (what sealing costs) and through rathole (plain
            // TCP, its default), interleaved so that they share the machine's mood.
            let before = ca.cpu_ms() + cb.cpu_ms();
            let (c50, c99) = latency(clear_echoed, plan.pings);
            let c_cpu = per(ca.cpu_ms() + cb.cpu_ms() - before);
            let rathole = rh.as_ref().map_or(String::new(), |r| {
                let before = r.cpu_ms();
                let (r50, r99) = latency(r.ports[1], plan.pings);
                let r_cpu = per(r.cpu_ms() - before);
                format!(", rathole p50 {r50:.0} p99 {r99:.0} us ({r_cpu:.1} us CPU)")
            });
            println!(
                "{when}: direct p50 {d50:.0} p99 {d99:.0} us, menet p50 {m50:.0} p99 {m99:.0} us \
                 ({m_cpu:.1} us CPU), clear tunnel p50 {c50:.0} p99 {c99:.0} us ({c_cpu:.1} us \
                 CPU){rathole}"
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

/// A configuration file the bench writes for its nodes, removed when dropped (whichever row
/// the run stops after).
pub struct TempFile(PathBuf);

impl TempFile {
    /// `menet-bench-NAME-PID.toml` in the temporary directory, holding `contents`.
    pub fn new(name: &str, contents: &str) -> TempFile {
        let path =
            std::env::temp_dir().join(format!("menet-bench-{name}-{}.toml", std::process::id()));
        std::fs::write(&path, contents).expect("write a node configuration");
        TempFile(path)
    }

    pub fn path(&self) -> &str {
        self.0.to_str().expect("a UTF-8 temporary path")
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// `--node-threads N`, if given.
fn node_threads() -> Option<String> {
    std::env::args()
        .skip_while(|a| a != "--node-threads")
        .nth(1)
}

/// `--node-config FILE`, if given: the configuration file of the nodes started without one of
/// their own (to measure other settings, e.g. `[tunnel]` windows).
fn node_config() -> Option<String> {
    std::env::args().skip_while(|a| a != "--node-config").nth(1)
}

/// `target/release/menet` beside this binary, or `--menet PATH`.
fn menet_binary() -> PathBuf {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--menet") {
        return PathBuf::from(&args[i + 1]);
    }
    let exe = std::env::current_exe().expect("own path");
    let path = exe.with_file_name("menet");
    assert!(
        path.exists(),
        "{} not found: run `cargo build --release` first",
        path.display()
    );
    path
}

fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed by pointer.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

struct Node {
    child: Child,
    admin: SocketAddr,
    tunnel: u16,
}

impl Node {
    fn start(menet: &PathBuf) -> Node {
        Node::start_env(menet, &[])
    }

    fn start_env(menet: &PathBuf, env: &[(&str, &str)]) -> Node {
        let config = node_config().unwrap_or_else(|| "/dev/null".to_owned());
        Node::start_args(menet, env, &["--config", &config])
    }

    fn start_args(menet: &PathBuf, env: &[(&str, &str)], args: &[&str]) -> Node {
        Node::start_at(menet, env, "127.0.0.1:0", "127.0.0.1:0", args)
    }

    /// A node on given admin and tunnel addresses (a restart on the same ports).
    fn start_at(
        menet: &PathBuf,
        env: &[(&str, &str)],
        admin: &str,
        tunnel: &str,
        args: &[&str],
    ) -> Node {
        let mut cmd = Command::new(menet);
        cmd.envs(env.iter().copied());
        cmd.args(["--admin", admin, "--tunnel", tunnel]);
        Node::start_command(cmd, args)
    }

    /// A node started by `cmd` (menet, or a tool that runs it) with `args`, on free ports.
    fn start_command(mut cmd: Command, args: &[&str]) -> Node {
        if !cmd.get_args().any(|a| a == "--admin") {
            cmd.args(["--admin", "127.0.0.1:0", "--tunnel", "127.0.0.1:0"]);
        }
        cmd.args(args);
        // `--node-threads N`: every node's data threads (default: theirs, one per core).
        if let Some(t) = node_threads() {
            cmd.args(["--threads", &t]);
        }
        cmd.env("RUST_LOG", "info")
            .stderr(Stdio::piped())
            .stdout(Stdio::null());
        dies_with_bench(&mut cmd);
        let mut child = cmd.spawn().expect("start menet");
        let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
        let (mut admin, mut tunnel) = (None, None);
        while admin.is_none() || tunnel.is_none() {
            let line = lines.next().expect("menet exited").expect("log line");
            if let Some(a) = line.split("admin API listening on ").nth(1) {
                admin = a.trim().parse::<SocketAddr>().ok();
            }
            if let Some(a) = line.split("tunnel port listening on ").nth(1) {
                tunnel = a.trim().parse::<SocketAddr>().ok().map(|a| a.port());
            }
        }
        // Keep draining the log so the node never blocks on a full pipe (`--node-logs`: onto
        // the bench's stderr, to see what the nodes said during a measure).
        let show = std::env::args().any(|a| a == "--node-logs");
        thread::spawn(move || {
            for line in lines {
                match line {
                    Ok(line) if show => eprintln!("node {line}"),
                    Ok(_) => {}
                    // A line that is not UTF-8 was read all the same: keep draining.
                    Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {}
                    Err(_) => break,
                }
            }
        });
        Node {
            child,
            admin: admin.expect("admin"),
            tunnel: tunnel.expect("tunnel"),
        }
    }

    fn post(&self, path: &str, body: &str) {
        let mut s = TcpStream::connect(self.admin).expect("admin");
        write!(
            s,
            "POST {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
            self.admin,
            body.len()
        )
        .expect("request");
        let mut reply = String::new();
        s.read_to_string(&mut reply).expect("reply");
        assert!(reply.starts_with("HTTP/1.1 200"), "{path} {body}: {reply}");
    }

    /// `GET path`: the body.
    fn get(&self, path: &str) -> String {
        let mut s = TcpStream::connect(self.admin).expect("admin");
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.admin
        )
        .expect("request");
        let mut reply = String::new();
        s.read_to_string(&mut reply).expect("reply");
        reply
            .split("\r\n\r\n")
            .nth(1)
            .unwrap_or_default()
            .to_owned()
    }

    /// Carries a service from this node (local) to `far` (remote, `target`) over tunnel `t`.
    fn carry(&self, far: &Node, name: &str, key: Option<&str>, target: SocketAddr) -> SocketAddr {
        self.carry_with(far, name, key.map(|k| (k, CipherKind::Rc4)), target)
    }

    /// [`Node::carry`] with a cipher.
    fn carry_with(
        &self,
        far: &Node,
        name: &str,
        key: Option<(&str, CipherKind)>,
        target: SocketAddr,
    ) -> SocketAddr {
        self.carry_on("t", far, name, key, target)
    }

    /// [`Node::carry_with`] over tunnel `tunnel`.
    fn carry_on(
        &self,
        tunnel: &str,
        far: &Node,
        name: &str,
        key: Option<(&str, CipherKind)>,
        target: SocketAddr,
    ) -> SocketAddr {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let key = key
            .map(|(k, c)| format!(r#""key":"{k}","cipher":"{c}","#))
            .unwrap_or_default();
        self.post(
            "/service",
            &format!(r#"{{"name":"{name}",{key}"type":"local","addr":["127.0.0.1","{port}"]}}"#),
        );
        far.post(
            "/service",
            &format!(
                r#"{{"name":"{name}",{key}"type":"remote","addr":["127.0.0.1","{}"]}}"#,
                target.port()
            ),
        );
        self.post(
            "/bind",
            &format!(r#"{{"tunnel":"{tunnel}","service":"{name}","type":"local"}}"#),
        );
        far.post(
            "/bind",
            &format!(r#"{{"tunnel":"{tunnel}","service":"{name}","type":"remote"}}"#),
        );
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// CPU time (user + system) the process has used, in ms.
    fn cpu_ms(&self) -> u64 {
        cpu_ms_of(self.child.id())
    }

    fn rss_kib(&self) -> u64 {
        rss_of(self.child.id())
    }
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

/// Makes the process `cmd` starts die with the benchmark (a node, a relay, rathole), so none
/// outlives an interrupted run.
fn dies_with_bench(cmd: &mut Command) {
    // SAFETY: prctl is async-signal-safe; it only sets the child's parent-death signal.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

/// Resident memory of process `pid`, in KiB (0 if it cannot be read).
/// CPU time (user and system) process `pid` has used, in ms (clock ticks apart).
fn cpu_ms_of(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which ends with ')'): utime is the 12th, stime the 13th.
    let rest = stat.rsplit(')').next().unwrap_or_default();
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    let ticks = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    ticks * 1000 / hz
}

fn rss_of(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Clone, Copy)]
enum Backend {
    /// 'U': swallow until EOF, answer the count. 'D' + u64: send that many bytes, then close.
    Bulk,
    Echo,
    /// Answers one byte, then holds the connection open until the client closes it.
    Hold,
}

/// Starts the backends on one thread of their own (one async runtime), so that the load they add
/// is the same for the direct and the tunnelled measures.
fn backends() -> (SocketAddr, SocketAddr, SocketAddr) {
    let bind = || std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let listeners = [
        (bind(), Backend::Bulk),
        (bind(), Backend::Echo),
        (bind(), Backend::Hold),
    ];
    let addrs: Vec<SocketAddr> = listeners
        .iter()
        .map(|(l, _)| l.local_addr().expect("addr"))
        .collect();
    thread::spawn(move || {
        runtime().block_on(async move {
            for (l, kind) in listeners {
                l.set_nonblocking(true).expect("nonblocking");
                let l = tokio::net::TcpListener::from_std(l).expect("listener");
                tokio::spawn(async move {
                    while let Ok((s, _)) = l.accept().await {
                        let _ = s.set_nodelay(true);
                        tokio::spawn(backend(kind, s));
                    }
                });
            }
            std::future::pending::<()>().await
        })
    });
    (addrs[0], addrs[1], addrs[2])
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

async fn backend(kind: Backend, mut s: Stream) {
    let mut buf = vec![0u8; CHUNK];
    match kind {
        Backend::Bulk => {
            let Ok(cmd) = s.read_u8().await else { return };
            if cmd == b'U' {
                let mut total = 0u64;
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    total += n as u64;
                }
                let _ = s.write_all(&total.to_be_bytes()).await;
            } else {
                let Ok(mut left) = s.read_u64().await else {
                    return;
                };
                let _sending = Sending::start();
                while left > 0 {
                    let n = left.min(CHUNK as u64) as usize;
                    if s.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                    left -= n as u64;
                }
                let _ = s.shutdown().await;
            }
        }
        Backend::Echo => {
            while let Ok(n) = s.read(&mut buf).await {
                if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        }
        Backend::Hold => {
            if let Ok(b) = s.read_u8().await {
                if s.write_u8(b).await.is_ok() {
                    let _ = s.read(&mut buf).await;
                }
            }
        }
    }
}

/// One bulk download being sent, counted in [`BULK_SENDING`] while it lives.
struct Sending;

impl Sending {
    fn start() -> Sending {
        BULK_SENDING.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Sending
    }
}

impl Drop for Sending {
    fn drop(&mut self) {
        BULK_SENDING.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Waits (up to 10 s, then says so) until the backends send no bulk download any more.
fn wait_bulk_drained() {
    let deadline = Instant::now() + Duration::from_secs(10);
    while BULK_SENDING.load(std::sync::atomic::Ordering::Relaxed) > 0 {
        if Instant::now() > deadline {
            eprintln!("(bulk downloads still being sent after 10 s; measuring anyway)");
            return;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// MiB/s over `streams` parallel connections moving `total` bytes in all.
fn throughput(rt: &Runtime, addr: SocketAddr, streams: usize, total: u64, upload: bool) -> f64 {
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

async fn dial(addr: SocketAddr) -> Stream {
    let s = Stream::connect(addr).await.expect("connect");
    s.set_nodelay(true).expect("nodelay");
    s
}

/// p50 and p99 in microseconds of a 64-byte request/response on one connection, from a plain
/// blocking socket (the least client overhead).
fn latency(addr: SocketAddr, pings: usize) -> (f64, f64) {
    let mut samples = latency_samples(addr, pings);
    samples.sort_by(f64::total_cmp);
    let pct = |p: f64| samples[((samples.len() as f64 * p) as usize).min(samples.len() - 1)];
    (pct(0.50), pct(0.99))
}

/// `pings` 64 B exchanges on one connection (after a tenth more to warm up), in us each.
fn latency_samples(addr: SocketAddr, pings: usize) -> Vec<f64> {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_nodelay(true).expect("nodelay");
    let req = [7u8; 64];
    let mut resp = [0u8; 64];
    let mut samples = Vec::with_capacity(pings);
    for i in 0..pings + pings / 10 {
        let t = Instant::now();
        s.write_all(&req).expect("ping");
        s.read_exact(&mut resp).expect("pong");
        if i >= pings / 10 {
            samples.push(t.elapsed().as_secs_f64() * 1e6);
        }
    }
    samples
}

/// Request/response exchanges per second from `clients` concurrent clients, `size` bytes each
/// way; with `reconnect`, each exchange on a new connection (connect, echo, close).
fn exchanges_per_second(
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
fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn idle_memory(rss: &dyn Fn() -> u64, addr: SocketAddr, count: usize) -> f64 {
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
fn handshakes_per_second(rt: &Runtime, addr: SocketAddr, dialers: usize, window: Duration) -> f64 {
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
fn stalled_reader(a: &Node, b: &Node, addr: SocketAddr, secs: u64) {
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
fn latency_under_load(
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
