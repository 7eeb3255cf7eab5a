//! The long link: the tunnel's TCP connection through `../shared/tools/delay_relay.py` (25 ms
//! each way, 32 MiB in flight), menet's rows and, with `--rathole PATH`, rathole's through the
//! same relay. And, when nginx has its stream module and `openssl` is on the PATH, the bulk rows
//! through two nginx stream proxies with TLS 1.3 between them (`nginx+TLS`): the simplest sealed
//! path of two processes, a TLS connection per connection, to read the seal's cost against.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::runtime::Runtime;

use crate::nginx::TlsChain;
use crate::{
    cpu_split_ms_of_all, dial, latency, latency_under_load, machine_busy_ms, rathole, Node, Plan,
    TempFile, CHUNK,
};

/// The tunnel link through `../shared/tools/delay_relay.py` (25 ms each way, 32 MiB in flight):
/// one stream and eight each way, and a small exchange while one bulk stream fills the link.
pub fn long_link(menet: &PathBuf, rt: &Runtime, bulk: SocketAddr, echo: SocketAddr, plan: &Plan) {
    let Some(script) = relay_script() else {
        return;
    };
    // `--max-stream-window BYTES`: the long-link nodes' [tunnel] max_stream_window.
    let config = std::env::args()
        .skip_while(|a| a != "--max-stream-window")
        .nth(1)
        .map(|w| TempFile::new("long", &format!("[tunnel]\nmax_stream_window = {w}\n")));
    let start = || match &config {
        Some(file) => Node::start_args(menet, &[], &["--config", file.path()]),
        None => Node::start(menet),
    };
    let (a, b) = (start(), start());
    let (_relay, port) = spawn_relay(&script, b.tunnel);
    a.post(
        "/tunnel",
        &format!(r#"{{"name":"t","dest":["127.0.0.1","{port}"]}}"#),
    );
    let plain = a.carry(&b, "bulk", None, bulk);
    let echoed = a.carry(&b, "echo", None, echo);
    // rathole, and two nginx with TLS between them, each through a relay of its own, started
    // now so that their bulk rows are measured in turn with menet's (this relay moves with the
    // machine from one minute to the next).
    let rathole_link = rathole::binary().map(|path| RatholeLink::start(&path, &script, bulk, echo));
    let tls = TlsChain::start(bulk, |far| spawn_relay(&script, far));
    let mut others: Vec<Beside> = rathole_link.iter().map(Beside::rathole).collect();
    others.extend(tls.iter().map(Beside::tls));
    let rounds = long_rounds();
    println!(
        "\nlong link: the tunnel through a relay delaying 25 ms each way (50 ms RTT), {} MiB in flight per connection",
        relay_cap() >> 20
    );
    let mut results = Vec::new();
    // What menet's bulk rows cost.
    let mut spent = Spent::default();
    for (dir, upload) in [("upload", true), ("download", false)] {
        for streams in [1usize, 8] {
            let mut ours = Vec::new();
            let mut theirs = vec![Vec::new(); others.len()];
            for _ in 0..rounds {
                ours.push(spent.round(
                    plan.long_run,
                    || a.cpu_ms() + b.cpu_ms(),
                    || a.minor_faults() + b.minor_faults(),
                    || throughput_for(rt, plain, streams, plan.long_run, upload),
                ));
                for (other, mbit) in others.iter_mut().zip(&mut theirs) {
                    mbit.push(other.round(rt, plan.long_run, streams, upload));
                }
            }
            let name = format!("bulk {streams} stream(s) {dir} over 50 ms (Mbit/s)");
            results.push(((upload, streams), print_rounds(&name, &mut ours)));
            for (other, mbit) in others.iter_mut().zip(theirs) {
                let name = format!(
                    "  bulk {streams} stream(s) {dir} over 50 ms, {} (Mbit/s)",
                    other.label
                );
                other.rows.push((name, mbit));
            }
        }
    }
    one_over_eight(&results);
    spent.print_menet();
    exchange_rows(
        &a,
        &b,
        (&script, port),
        (bulk, plain, echoed),
        plan.long_pings,
    );
    drop((a, b));
    for other in others {
        other.print_rows();
    }
    if let Some(r) = rathole_link {
        r.print_latency(plan.long_pings);
    }
}

/// A path measured in turn with menet's tunnel over the long link, through a relay of its own:
/// rathole, or two nginx with TLS between them.
struct Beside {
    /// What its rows are labelled with.
    label: &'static str,
    /// The heading of its rows: what it is.
    title: String,
    /// Where the bulk client dials it.
    bulk: SocketAddr,
    /// Its two processes, for their CPU time.
    pids: [u32; 2],
    /// Its rows so far: each row's name and its rounds' Mbit/s.
    rows: Vec<(String, Vec<f64>)>,
    /// What they cost.
    spent: Spent,
}

impl Beside {
    fn rathole(link: &RatholeLink) -> Beside {
        let label = rathole::label();
        Beside::new(
            label,
            label.into(),
            link.rathole.ports[0],
            link.rathole.pids(),
        )
    }

    fn tls(chain: &TlsChain<RelayProcess>) -> Beside {
        let title = "nginx+TLS (two nginx stream proxies, TLS 1.3 between them, a connection each)";
        Beside::new("nginx+TLS", title.into(), chain.near.addr, chain.pids())
    }

    fn new(label: &'static str, title: String, bulk: SocketAddr, pids: [u32; 2]) -> Beside {
        Beside {
            label,
            title,
            bulk,
            pids,
            rows: Vec::new(),
            spent: Spent::default(),
        }
    }

    /// One round of `streams` streams over `run`: Mbit/s.
    fn round(&mut self, rt: &Runtime, run: Duration, streams: usize, upload: bool) -> f64 {
        let (pids, bulk) = (self.pids, self.bulk);
        self.spent.round(
            run,
            || {
                let (user, kernel) = cpu_split_ms_of_all(&pids);
                user + kernel
            },
            || 0,
            || throughput_for(rt, bulk, streams, run, upload),
        )
    }

    /// Prints its bulk rows and what they cost.
    fn print_rows(self) {
        println!("{} over the same relay:", self.title);
        for (name, mut mbit) in self.rows {
            print_rounds(&name, &mut mbit);
        }
        let gib = self.spent.gib();
        if gib > 0.0 {
            println!(
                "{:<64} {:>12} {:>12.0}\n{:<64} {:>12} {:>12.0}",
                format!(
                    "  CPU ms/GiB, {}'s two ends, over its bulk rows",
                    self.label
                ),
                "-",
                self.spent.cpu_ms as f64 / gib,
                "  CPU ms/GiB, the whole machine, the same rows",
                "-",
                self.spent.machine_ms as f64 / gib,
            );
        }
    }
}

/// What one proxy's bulk rows cost, summed over their rounds.
#[derive(Default)]
struct Spent {
    /// The proxy's own processes' CPU time (ms): what its two ends were charged.
    cpu_ms: u64,
    /// Their minor page faults: the memory they took from the kernel anew.
    faults: u64,
    /// Bytes moved, which turn the sums into figures per GiB.
    bytes: f64,
    /// The whole machine's busy CPU time meanwhile (ms), the relay, client and server's too: on
    /// loopback the kernel charges packets to whoever is on the path.
    machine_ms: u64,
}

impl Spent {
    /// One round of a bulk row: `measure` runs it and returns its Mbit/s (over `run`), which
    /// this returns; `cpu` and `faults` read the proxy's counters before and after.
    fn round(
        &mut self,
        run: Duration,
        cpu: impl Fn() -> u64,
        faults: impl Fn() -> u64,
        measure: impl FnOnce() -> f64,
    ) -> f64 {
        let (cpu_before, faults_before, machine) = (cpu(), faults(), machine_busy_ms());
        let mbit = measure();
        self.machine_ms += machine_busy_ms().saturating_sub(machine);
        self.cpu_ms += cpu().saturating_sub(cpu_before);
        self.faults += faults().saturating_sub(faults_before);
        self.bytes += mbit * 1e6 / 8.0 * run.as_secs_f64();
        mbit
    }

    /// Prints menet's costs over its bulk rows: the whole machine's and its two nodes' CPU per
    /// GiB, and the nodes' page faults per GiB.
    fn print_menet(&self) {
        let gib = self.gib();
        if gib > 0.0 {
            println!(
                "{:<64} {:>12} {:>12.0}",
                "  CPU ms/GiB, the whole machine (relay, client, server), same rows",
                "-",
                self.machine_ms as f64 / gib,
            );
            println!(
                "{:<64} {:>12} {:>12.0}\n{:<64} {:>12} {:>12.0}",
                "  CPU ms/GiB, both nodes, over the bulk rows above",
                "-",
                self.cpu_ms as f64 / gib,
                "  page faults/GiB, both nodes, over the bulk rows above",
                "-",
                self.faults as f64 / gib,
            );
        }
    }

    /// The bytes moved, in GiB.
    fn gib(&self) -> f64 {
        self.bytes / f64::from(1u32 << 30)
    }
}

/// A 64 B exchange's p50 and p99 over the long link: idle, beside a bulk download on another
/// tunnel (through a relay of its own, then through the exchange's), and beside one on the
/// exchange's own tunnel. `relay`: the relay's script and the port of the exchange's relay;
/// the tuple: the bulk backend, and node A's bulk and echo services; `pings` exchanges a row.
fn exchange_rows(
    a: &Node,
    b: &Node,
    (script, relay): (&PathBuf, u16),
    (bulk, plain, echoed): (SocketAddr, SocketAddr, SocketAddr),
    pings: usize,
) {
    let (i50, i99) = latency(echoed, pings);
    println!(
        "{:<64} {:>12} {:>12.1}\n{:<64} {:>12} {:>12.1}",
        "64 B request/response p50 (ms), link idle",
        "-",
        i50 / 1000.0,
        "64 B request/response p99 (ms), link idle",
        "-",
        i99 / 1000.0
    );
    // Baseline: the bulk download on a second tunnel through a relay of its own, so the
    // exchange's relay is not the one busy; then the same download on the exchange's tunnel.
    let (_second, port2) = spawn_relay(script, b.tunnel);
    a.post(
        "/tunnel",
        &format!(r#"{{"name":"t2","dest":["127.0.0.1","{port2}"]}}"#),
    );
    let elsewhere = a.carry_on("t2", b, "bulk2", None, bulk);
    let (o50, o99) = latency_under_load(elsewhere, 1, echoed, pings);
    // Another tunnel through the exchange's relay: what sharing that one process (a Python
    // event loop) costs the exchange, apart from sharing its tunnel.
    a.post(
        "/tunnel",
        &format!(r#"{{"name":"t3","dest":["127.0.0.1","{relay}"]}}"#),
    );
    let beside = a.carry_on("t3", b, "bulk3", None, bulk);
    let (r50, r99) = latency_under_load(beside, 1, echoed, pings);
    let (l50, l99) = latency_under_load(plain, 1, echoed, pings);
    for (what, other, same) in [("p50", o50, l50), ("p99", o99, l99)] {
        println!(
            "{:<64} {:>12.1} {:>12.1}",
            format!("64 B request/response {what} (ms) beside a bulk download: other, same tunnel"),
            other / 1000.0,
            same / 1000.0
        );
    }
    println!(
        "{:<64} {:>12.1} {:>12.1}",
        "  p50, p99 (ms), the bulk on another tunnel through the same relay",
        r50 / 1000.0,
        r99 / 1000.0
    );
}

/// The delay relay's script (`--relay PATH`, or the shared tools' beside the repository); None
/// (said so) when it is not there.
fn relay_script() -> Option<PathBuf> {
    let script = std::env::args()
        .skip_while(|a| a != "--relay")
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../shared/tools/delay_relay.py"
            ))
        });
    if !script.exists() {
        println!(
            "long link: {} not found (--relay PATH); skipped",
            script.display()
        );
        return None;
    }
    Some(script)
}

/// One stream's rate over eight streams', each way, from the bulk rows' `results`
/// ((upload, streams), Mbit/s).
fn one_over_eight(results: &[((bool, usize), f64)]) {
    for upload in [true, false] {
        let one = results
            .iter()
            .find(|r| r.0 == (upload, 1))
            .map_or(0.0, |r| r.1);
        let eight = results
            .iter()
            .find(|r| r.0 == (upload, 8))
            .map_or(1.0, |r| r.1);
        println!(
            "{:<64} {:>12} {:>12.2}",
            format!(
                "  one stream / eight streams, {}",
                if upload { "upload" } else { "download" }
            ),
            "-",
            one / eight
        );
    }
}

/// `--long-rounds N`: each long-link bulk row measured N times (menet and rathole in turn), its
/// median printed with the range; 1 unless given.
fn long_rounds() -> usize {
    std::env::args()
        .skip_while(|a| a != "--long-rounds")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(1)
        .max(1)
}

/// Prints a bulk row: the median of its rounds, with their range when there were several.
fn print_rounds(name: &str, mbit: &mut [f64]) -> f64 {
    mbit.sort_by(f64::total_cmp);
    let mid = mbit[mbit.len() / 2];
    let runs = mbit.len();
    let label = match &*mbit {
        [low, .., high] => format!("{name}, {runs} runs {low:.0} - {high:.0}"),
        _ => name.to_owned(),
    };
    println!("{label:<64} {:>12} {mid:>12.0}", "-");
    mid
}

/// rathole beside menet on the long link: its client dials its server through a relay of its
/// own, like menet's tunnel.
struct RatholeLink {
    /// rathole's server and client (stopped before the relay between them).
    rathole: rathole::Rathole,
    /// The relay its client dials through.
    _relay: Option<RelayProcess>,
}

impl RatholeLink {
    fn start(path: &Path, script: &PathBuf, bulk: SocketAddr, echo: SocketAddr) -> RatholeLink {
        let mut relay = None;
        let r = rathole::Rathole::start(path, &[("bulk", bulk), ("echo", echo)], |control| {
            let (process, port) = spawn_relay(script, control);
            relay = Some(process);
            Some(port)
        });
        r.wait_echo(1);
        RatholeLink {
            rathole: r,
            _relay: relay,
        }
    }

    /// Prints a 64 B exchange's p50 and p99 beside one bulk download through rathole (`pings`
    /// exchanges).
    fn print_latency(&self, pings: usize) {
        let ports = &self.rathole.ports;
        let (r50, r99) = latency_under_load(ports[0], 1, ports[1], pings);
        println!(
            "{:<64} {:>12.1} {:>12.1}",
            format!(
                "  64 B p50, p99 (ms) beside a bulk download, {}",
                rathole::label()
            ),
            r50 / 1000.0,
            r99 / 1000.0
        );
    }
}

/// What the relay holds in flight per connection and direction: 32 MiB, or `--relay-cap BYTES`
/// (a path that limits each connection to `cap` per round trip, as a per-flow shaper does).
fn relay_cap() -> u64 {
    std::env::args()
        .skip_while(|a| a != "--relay-cap")
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(32 << 20)
}

/// Starts the delay relay (25 ms each way, [`relay_cap`] in flight) in front of `target`; its
/// process (killed when dropped) and port.
fn spawn_relay(script: &PathBuf, target: u16) -> (RelayProcess, u16) {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let mut relay = Command::new("python3");
    relay
        .arg(script)
        .args([
            port.to_string(),
            target.to_string(),
            "25".into(),
            relay_cap().to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    crate::dies_with_bench(&mut relay);
    let process = RelayProcess(relay.spawn().expect("start the delay relay"));
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let started = Instant::now();
    while TcpStream::connect(addr).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "relay did not start"
        );
        thread::sleep(Duration::from_millis(50));
    }
    (process, port)
}

/// The delay relay's process, killed with the section.
struct RelayProcess(Child);

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Mbit/s moved by `streams` streams for `run` (uploads counted by the backend).
fn throughput_for(
    rt: &Runtime,
    addr: SocketAddr,
    streams: usize,
    run: Duration,
    upload: bool,
) -> f64 {
    let started = Instant::now();
    let deadline = started + run;
    let bytes: u64 = rt
        .block_on(join_all((0..streams).map(|_| async move {
            let mut s = dial(addr).await;
            let mut buf = vec![0x5au8; CHUNK];
            if upload {
                s.write_u8(b'U').await.expect("cmd");
                while Instant::now() < deadline {
                    s.write_all(&buf).await.expect("upload");
                }
                s.shutdown().await.expect("half-close");
                s.read_u64().await.expect("count")
            } else {
                s.write_u8(b'D').await.expect("cmd");
                s.write_u64(u64::MAX).await.expect("len");
                let mut got = 0u64;
                while Instant::now() < deadline {
                    got += s.read(&mut buf).await.expect("download") as u64;
                }
                got
            }
        })))
        .into_iter()
        .sum();
    bytes as f64 * 8.0 / 1e6 / started.elapsed().as_secs_f64()
}
