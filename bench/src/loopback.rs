//! The loopback table: two nodes on loopback (A dials B; services local on A, remote on B)
//! carrying the bench's backends, two more whose tunnel is clear, and (given `--rathole`) rathole
//! carrying the same backends; each group of rows a method.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tokio::runtime::Runtime;

use menet_actors::cipher::CipherKind;

use crate::{
    beside_in_turn, beside_rows, cpu_split_ms_of_all, exchanges_per_second, latency,
    latency_in_turn, latency_interleaved, latency_under_load, median, node_config, node_threads,
    p50_p99, paced_samples, rathole, real_clients, row, row3, throughput, Node, Plan, TempFile,
    AEADS, KEY,
};

/// The nodes and services every loopback row measures.
pub struct Loopback {
    /// Node A: where clients connect (services local).
    pub a: Node,
    /// Node B: where the backends are reached (services remote).
    pub b: Node,
    /// Two nodes whose tunnel has the record layer off: what sealing the tunnel costs.
    pub ca: Node,
    /// The clear tunnel's far node.
    pub cb: Node,
    /// Their configuration file (`[tunnel] encrypt = false`), kept while they run and removed
    /// when dropped.
    _clear_config: TempFile,
    /// rathole carrying bulk, echo and hold, given `--rathole`.
    pub rh: Option<rathole::Rathole>,
    /// The bulk backend, directly.
    pub bulk: SocketAddr,
    /// The echo backend, directly.
    pub echo: SocketAddr,
    /// Bulk through the tunnel, no service key.
    pub plain: SocketAddr,
    /// Bulk through the tunnel, keyed with RC4.
    pub keyed: SocketAddr,
    /// Bulk through the tunnel, keyed with each AEAD.
    pub sealed: Vec<(CipherKind, SocketAddr)>,
    /// Echo through the tunnel.
    pub echoed: SocketAddr,
    /// Echo through the tunnel, keyed with RC4 as the seed's calls key a service: what a key
    /// costs a new connection (its key schedules) and a request.
    pub keyed_echoed: SocketAddr,
    /// Bulk through the clear tunnel.
    pub clear_plain: SocketAddr,
    /// Echo through the clear tunnel.
    pub clear_echoed: SocketAddr,
}

impl Loopback {
    /// Starts the nodes (and rathole) and carries the backends through them.
    pub fn start(
        menet: &PathBuf,
        bulk: SocketAddr,
        echo: SocketAddr,
        hold: SocketAddr,
    ) -> Loopback {
        let (a, b) = (Node::start(menet), Node::start(menet));
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
        let keyed_echoed = a.carry(&b, "echok", Some(KEY), echo);
        // The same services through a tunnel with the record layer off (`[tunnel] encrypt = false`
        // on both nodes): what sealing the whole tunnel (the default) costs.
        let clear_config = TempFile::new("clear", "[tunnel]\nencrypt = false\n");
        let clear_args = ["--config", clear_config.path()];
        let (ca, cb) = (
            Node::start_args(menet, &[], &clear_args),
            Node::start_args(menet, &[], &clear_args),
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
        Loopback {
            a,
            b,
            ca,
            cb,
            _clear_config: clear_config,
            rh,
            bulk,
            echo,
            plain,
            keyed,
            sealed,
            echoed,
            keyed_echoed,
            clear_plain,
            clear_echoed,
        }
    }

    /// rathole's port for the backend at `index` (bulk, echo, hold), when it runs.
    pub fn rh_port(&self, index: usize) -> Option<SocketAddr> {
        self.rh.as_ref().map(|r| r.ports[index])
    }

    /// The table's header.
    pub fn header(&self) {
        let Loopback { rh, .. } = self;
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
    }

    /// `--requests-only`: for profiling the request/response path.
    pub fn requests_only(&self, rt: &Runtime) {
        let echo = self.echo;
        let echoed = self.echoed;
        let rh_port = |i: usize| self.rh_port(i);
        // For profiling the request/response path: that measure alone, direct, through menet
        // and through rathole (given `--rathole`) in turn, three rounds of 5 s.
        // And through two chained nginx stream proxies, when nginx has its stream module: the
        // floor of any two processes on the path (`nginx::forward_chain`).
        let window = Duration::from_secs(5);
        let chain = crate::nginx::forward_chain(echo);
        for round in 1..=3 {
            let d = exchanges_per_second(rt, echo, 32, 128, false, window);
            let m = exchanges_per_second(rt, echoed, 32, 128, false, window);
            let r = rh_port(1).map_or(String::new(), |p| {
                let r = exchanges_per_second(rt, p, 32, 128, false, window);
                format!(", rathole {r:.0} ({:.2})", r / d)
            });
            let c = chain.as_ref().map_or(String::new(), |[near, _]| {
                let c = exchanges_per_second(rt, near.addr, 32, 128, false, window);
                format!(", two chained nginx stream proxies {c:.0} ({:.2})", c / d)
            });
            println!(
                "requests/s, round {round}: direct {d:.0}, menet {m:.0} ({:.2}){r}{c}",
                m / d
            );
        }
    }

    /// 64 B exchanges one per ms (the client sleeps between them), direct, through menet and
    /// through rathole: p50, p99, and both nodes' CPU per exchange. What busy polling buys
    /// an exchange whose nodes went to sleep, and what it costs them.
    pub fn paced_rows(&self, plan: &Plan) {
        let Loopback { a, b, rh, .. } = self;
        let count = plan.pings / 5;
        let pause = Duration::from_millis(1);
        let paced = |addr: SocketAddr, pids: &[u32]| {
            let before = cpu_split_ms_of_all(pids);
            let (p50, p99) = p50_p99(paced_samples(addr, count, pause));
            let after = cpu_split_ms_of_all(pids);
            let cpu = (after.0 + after.1 - before.0 - before.1) as f64 * 1000.0
                / (count + count / 10) as f64;
            (p50, p99, cpu)
        };
        let (d50, d99, _) = paced(self.echo, &[]);
        let (m50, m99, mcpu) = paced(self.echoed, &[a.child.id(), b.child.id()]);
        let r = rh.as_ref().map(|r| paced(r.ports[1], &r.pids()));
        row3(
            "64 B exchanges one per ms, p50 (us)",
            d50,
            m50,
            r.map(|r| r.0),
        );
        row3(
            "64 B exchanges one per ms, p99 (us)",
            d99,
            m99,
            r.map(|r| r.1),
        );
        println!(
            "{:<64} {:>12} {:>12.1} {:>7}{}",
            "  both nodes' CPU per exchange, one per ms (us)",
            "-",
            mcpu,
            "",
            r.map_or(String::new(), |r| format!(" {:>12.1}", r.2))
        );
    }

    /// `--latency-only`: for profiling one connection's latency.
    pub fn latency_only(&self, rt: &Runtime, plan: &Plan) {
        let Loopback {
            a, b, ca, cb, rh, ..
        } = self;
        let echo = self.echo;
        let plain = self.plain;
        let echoed = self.echoed;
        let clear_echoed = self.clear_echoed;
        // For profiling one connection's latency: fresh nodes, then after a bulk download.
        for when in ["fresh nodes", "fresh nodes", "after bulk", "after bulk"] {
            if when == "after bulk" {
                throughput(rt, plain, 8, plan.bulk_plain / 4, false);
            }
            let (d50, d99) = latency(echo, plan.pings);
            // Beside each latency, the CPU both ends of the tunnel spent per exchange: in all,
            // in user space, in the kernel.
            let exchanges = (plan.pings + plan.pings / 10) as f64;
            let measured = |addr: SocketAddr, pids: &[u32]| {
                let before = cpu_split_ms_of_all(pids);
                let (p50, p99) = latency(addr, plan.pings);
                let after = cpu_split_ms_of_all(pids);
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
        // One exchange of each in turn: the host's bursts of delay hit all alike.
        if let Some(r) = rh {
            let got = latency_interleaved(&[echo, echoed, r.ports[1], clear_echoed], plan.pings);
            let [d, m, t, c] = [0, 1, 2, 3].map(|k| got[k]);
            println!(
                "one exchange of each in turn, p50 / p99 (us): direct {:.0} / {:.0}, menet {:.0} / \
                 {:.0}, rathole {:.0} / {:.0}, clear tunnel {:.0} / {:.0}",
                d.0, d.1, m.0, m.1, t.0, t.1, c.0, c.1
            );
        }
        self.paced_rows(plan);
    }

    /// `--flow-only`: for tuning flow control.
    pub fn flow_only(&self, rt: &Runtime, plan: &Plan, menet: &PathBuf) {
        let Loopback { a, b, .. } = self;
        let bulk = self.bulk;
        let echo = self.echo;
        let plain = self.plain;
        let echoed = self.echoed;
        // For tuning flow control: bulk through the tunnel, and a small exchange beside bulk on
        // the same tunnel and on another.
        for (dir, upload) in [("upload", true), ("download", false)] {
            for streams in [1usize, 8] {
                row(
                    &format!("bulk {streams} stream(s) {dir}, plaintext (MiB/s)"),
                    throughput(rt, bulk, streams, plan.bulk_plain, upload),
                    throughput(rt, plain, streams, plan.bulk_plain, upload),
                );
            }
        }
        a.post(
            "/tunnel",
            &format!(r#"{{"name":"t2","dest":["127.0.0.1","{}"]}}"#, b.tunnel),
        );
        let elsewhere = a.carry_on("t2", b, "bulk2", None, bulk);
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
                Node::start_args(menet, &[], &one),
                Node::start_args(menet, &[], &one),
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
    }

    /// Bulk through the tunnel: plaintext (beside rathole), sealed tunnel vs clear, keyed, each
    /// AEAD; then the nodes' CPU per GiB.
    pub fn bulk_rows(&self, rt: &Runtime, plan: &Plan, rc4: f64) {
        let Loopback { a, b, .. } = self;
        let bulk = self.bulk;
        let plain = self.plain;
        let keyed = self.keyed;
        let sealed = &self.sealed;
        let rh_port = |i: usize| self.rh_port(i);
        let mut cpu_rows: Vec<RunCost> = Vec::new();
        // Node CPU time and page faults spent on one tunnelled run, beside what it moved.
        let mut tunnelled =
            |addr: SocketAddr, streams: usize, bytes: u64, upload: bool, name: String| {
                let before = a.cpu_ms() + b.cpu_ms();
                let faults = a.minor_faults() + b.minor_faults();
                let m = throughput(rt, addr, streams, bytes, upload);
                let ms = a.cpu_ms() + b.cpu_ms() - before;
                let faults = (a.minor_faults() + b.minor_faults()).saturating_sub(faults);
                match cpu_rows.last_mut() {
                    // Another round of the same row: its cost adds to the row's.
                    Some(last) if last.name == name => {
                        last.cpu_ms += ms;
                        last.faults += faults;
                        last.bytes += bytes;
                    }
                    _ => cpu_rows.push(RunCost {
                        name,
                        cpu_ms: ms,
                        faults,
                        bytes,
                    }),
                }
                m
            };
        let mut plaintext = HashMap::new();
        for (dir, upload) in [("upload", true), ("download", false)] {
            for streams in [1usize, 8] {
                // Direct, menet and rathole in turn, three rounds: one run of each moved by a
                // tenth or more between runs on two shared cores; the medians are the row.
                let name = format!("bulk {streams} stream(s) {dir}, plaintext");
                let (mut d, mut m, mut r) = (Vec::new(), Vec::new(), Vec::new());
                for _ in 0..3 {
                    d.push(throughput(rt, bulk, streams, plan.bulk_plain, upload));
                    m.push(tunnelled(
                        plain,
                        streams,
                        plan.bulk_plain,
                        upload,
                        name.clone(),
                    ));
                    if let Some(p) = rh_port(0) {
                        r.push(throughput(rt, p, streams, plan.bulk_plain, upload));
                    }
                }
                let m = median(&mut m);
                let r = (!r.is_empty()).then(|| median(&mut r));
                row3(&format!("{name}, 3 in turn (MiB/s)"), median(&mut d), m, r);
                plaintext.insert((upload, streams), m);
            }
        }
        self.sealed_vs_clear_rows(rt, plan, &plaintext);
        for (dir, upload) in [("upload", true), ("download", false)] {
            for streams in [1usize, 8] {
                let name = format!("bulk {streams} stream(s) {dir}, keyed");
                let m = tunnelled(keyed, streams, plan.bulk_keyed, upload, name.clone());
                row(&format!("{name} vs RC4 (MiB/s)"), rc4, m);
            }
        }
        // AEAD streams beside plaintext menet, measured above in this run.
        for &(cipher, addr) in sealed {
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
        print_costs(&cpu_rows);
    }

    /// The tunnel is sealed by default: the same plaintext service through a clear tunnel, the
    /// two measured alternately three times (medians), so a noisy neighbour hits both; menet's
    /// first round is its plaintext row's median (`plaintext`, by direction and streams).
    fn sealed_vs_clear_rows(
        &self,
        rt: &Runtime,
        plan: &Plan,
        plaintext: &HashMap<(bool, usize), f64>,
    ) {
        for (dir, upload) in [("upload", true), ("download", false)] {
            for streams in [1usize, 8] {
                let (mut c, mut m) = (Vec::new(), vec![plaintext[&(upload, streams)]]);
                for round in 0..3 {
                    c.push(throughput(
                        rt,
                        self.clear_plain,
                        streams,
                        plan.bulk_plain,
                        upload,
                    ));
                    if round < 2 {
                        m.push(throughput(rt, self.plain, streams, plan.bulk_plain, upload));
                    }
                }
                row(
                    &format!("bulk {streams} stream(s) {dir}, sealed tunnel vs clear (MiB/s)"),
                    median(&mut c),
                    median(&mut m),
                );
            }
        }
    }

    /// One connection's latency, alone and beside bulk on the same tunnel and on another.
    pub fn latency_rows(&self, plan: &Plan) {
        let Loopback { a, b, .. } = self;
        let bulk = self.bulk;
        let echo = self.echo;
        let plain = self.plain;
        let echoed = self.echoed;
        let clear_echoed = self.clear_echoed;
        let rh_port = |i: usize| self.rh_port(i);
        // Direct, menet and rathole in turn, five rounds: the rows are the rounds' medians.
        let turn = latency_in_turn(echo, echoed, rh_port(1), plan.pings / 5, 5);
        let (d, m, r) = (turn.direct, turn.menet, turn.rathole);
        let (m50, m99) = (m[0], m[1]);
        row3(
            "latency p50, 64 B request/response (us)",
            d[0],
            m50,
            r.map(|r| r[0]),
        );
        row3(
            "latency p99, 64 B request/response (us)",
            d[1],
            m99,
            r.map(|r| r[1]),
        );
        for (what, i) in [("p50", 2), ("p99", 3)] {
            println!(
                "{:<64} {:>12} {:>12.1} {:>7}{}",
                format!("  added {what} latency (us), median of the rounds"),
                "-",
                m[i],
                "",
                r.map_or(String::new(), |r| format!(" {:>12.1}", r[i]))
            );
        }
        // The same exchanges, one of each in turn (direct, menet, rathole, menet's clear
        // tunnel): the host's bursts of delay hit all alike, but menet's busy polling keeps the
        // cores awake for the exchange after its own (`latency_interleaved`).
        if let Some(r) = rh_port(1) {
            let got = latency_interleaved(&[echo, echoed, r, clear_echoed], plan.pings);
            for (what, i) in [("p50", 0), ("p99", 1)] {
                let at = |k: usize| if i == 0 { got[k].0 } else { got[k].1 };
                row3(
                    &format!("  latency {what}, one exchange of each in turn (us)"),
                    at(0),
                    at(1),
                    Some(at(2)),
                );
                println!(
                    "{:<64} {:>12} {:>12.1}",
                    format!("    the same through a clear tunnel ({what}, us)"),
                    "-",
                    at(3)
                );
            }
        }
        let (c50, c99) = latency(clear_echoed, plan.pings);
        row("  latency p50, sealed tunnel vs clear (us)", c50, m50);
        row("  latency p99, sealed tunnel vs clear (us)", c99, m99);
        self.paced_rows(plan);
        // Four bulk downloads beside the exchange: through the same tunnel, and (the baseline: the
        // same load generator on the same cores) directly.
        // The fair baseline for menet's own queueing: the same load through another tunnel between
        // the same two nodes (the same CPUs busy), against it on the exchange's own tunnel.
        a.post(
            "/tunnel",
            &format!(r#"{{"name":"t2","dest":["127.0.0.1","{}"]}}"#, b.tunnel),
        );
        let elsewhere = a.carry_on("t2", b, "bulk2", None, bulk);
        let (x50, x99) = latency_under_load(bulk, 4, echo, plan.pings / 4);
        // Another tunnel and the same one in turn, three rounds: one p99 against one moved by
        // 0.1 - 9.7 x between runs on two shared cores; the medians are the row.
        let ((o50, o99), (l50, l99)) = beside_in_turn(elsewhere, plain, echoed, plan.pings / 4, 3);
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
    }

    /// Requests and new connections: the echo's, the real clients', sealed vs clear.
    pub fn request_rows(&self, rt: &Runtime, plan: &Plan) {
        let Loopback { a, b, .. } = self;
        let echo = self.echo;
        let echoed = self.echoed;
        let clear_echoed = self.clear_echoed;
        let rh_port = |i: usize| self.rh_port(i);
        row3(
            "requests/s, 32 keep-alive connections",
            exchanges_per_second(rt, echo, 32, 128, false, plan.window),
            exchanges_per_second(rt, echoed, 32, 128, false, plan.window),
            rh_port(1).map(|p| exchanges_per_second(rt, p, 32, 128, false, plan.window)),
        );
        // The same through two processes that only forward bytes: what any proxy's two
        // processes on the path leave of direct here, however little they do per request.
        if let Some([near, _far]) = crate::nginx::forward_chain(echo) {
            row(
                "  requests/s: two chained nginx stream proxies (plain forwarding)",
                exchanges_per_second(rt, echo, 32, 128, false, plan.window),
                exchanges_per_second(rt, near.addr, 32, 128, false, plan.window),
            );
        }
        row3(
            "new connections/s, 32 clients (32 B echo)",
            exchanges_per_second(rt, echo, 32, 32, true, plan.window),
            exchanges_per_second(rt, echoed, 32, 32, true, plan.window),
            rh_port(1).map(|p| exchanges_per_second(rt, p, 32, 32, true, plan.window)),
        );
        real_clients::rows(a, b, &row3);
        let (mut c, mut m) = (Vec::new(), Vec::new());
        for _ in 0..3 {
            c.push(exchanges_per_second(
                rt,
                clear_echoed,
                32,
                128,
                false,
                plan.window,
            ));
            m.push(exchanges_per_second(
                rt,
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
        let keyed_echoed = self.keyed_echoed;
        row(
            "  new connections/s, 32 clients, keyed (RC4) vs no key",
            exchanges_per_second(rt, echoed, 32, 32, true, plan.window),
            exchanges_per_second(rt, keyed_echoed, 32, 32, true, plan.window),
        );
        row(
            "  requests/s, 32 keep-alive connections, keyed (RC4) vs no key",
            exchanges_per_second(rt, echoed, 32, 128, false, plan.window),
            exchanges_per_second(rt, keyed_echoed, 32, 128, false, plan.window),
        );
    }
}

/// What one tunnelled bulk run cost both nodes, beside what it moved.
struct RunCost {
    /// The run's row name.
    name: String,
    /// CPU time, ms.
    cpu_ms: u64,
    /// Minor page faults.
    faults: u64,
    /// Bytes moved.
    bytes: u64,
}

/// Prints the nodes' CPU time and page faults per GiB for each tunnelled bulk row.
fn print_costs(cpu_rows: &[RunCost]) {
    for (what, faults) in [("CPU ms", false), ("page faults", true)] {
        for row in cpu_rows {
            let count = if faults { row.faults } else { row.cpu_ms };
            let per_gib = count as f64 / (row.bytes as f64 / (1u64 << 30) as f64);
            println!(
                "{:<64} {:>12} {per_gib:>12.0}",
                format!("  {what}/GiB, both nodes: {}", &row.name[5..]),
                "-"
            );
        }
    }
}
