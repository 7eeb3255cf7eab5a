//! The issue's own measure of requests and new connections: `wrk` (one thread, 32 connections)
//! against nginx serving a 1 KiB file, directly, through menet and (given `--rathole`) through
//! rathole, alternated over three rounds. Runs when both programs are on the PATH. Then bulk as
//! iperf3 moves it (`-P 8`: eight streams from one thread, which reads its sockets in turn), the
//! same way, when iperf3 is on the PATH.
//!
//! The echo rows of the main table measure the same paths with a client and a backend that cost
//! almost nothing per request, so the proxy's own cost weighs more there; these rows weigh it
//! against a real web server and a real load generator sharing the same two cores.
//! Beside them, the CPU each side spent per request, in user space and in the kernel: on
//! loopback the kernel's TCP work (a connection accepted, dialled and closed twice instead of
//! once) is most of what a new connection through a proxy costs. And, when nginx has its stream
//! module, the same wrk runs through two chained nginx stream proxies (plain forwarding, no
//! tunnel): the rate any two processes on the path leave on these cores.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::nginx::{forward_chain, Nginx};
use crate::{cpu_split_ms_of_all, dies_with_bench, median, rathole, Node};

/// A table row with rathole's figure beside menet's when rathole runs: (name, direct, menet,
/// rathole).
pub type Row3<'a> = dyn Fn(&str, f64, f64, Option<f64>) + 'a;

/// How long each wrk run lasts.
const RUN: Duration = Duration::from_secs(5);
/// Rounds of direct, menet and rathole in turn.
const ROUNDS: usize = 3;

/// True when `program` runs (it is on the PATH).
fn runs(program: &str, arg: &str) -> bool {
    Command::new(program)
        .arg(arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// Waits until `GET /1k` at `addr` answers 200 (through a proxy: once it carries the service).
fn wait_http(addr: SocketAddr, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let reply = TcpStream::connect(addr).and_then(|mut s| {
            s.set_read_timeout(Some(Duration::from_secs(1)))?;
            s.write_all(b"GET /1k HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
            let mut reply = Vec::new();
            s.read_to_end(&mut reply)?;
            Ok(reply)
        });
        if matches!(&reply, Ok(r) if r.starts_with(b"HTTP/1.1 200")) {
            return;
        }
        thread::sleep(Duration::from_millis(100));
    }
    panic!("{what} did not serve GET /1k at {addr} within 10 s");
}

/// Requests per second wrk measured at `addr` (32 connections, one thread); `close`: each
/// request on a new connection (`Connection: close`). With them, the CPU wrk itself used, in ms:
/// (requests/s, user, kernel).
fn wrk(addr: SocketAddr, close: bool) -> (f64, u64, u64) {
    let mut cmd = Command::new("wrk");
    if close {
        cmd.args(["-H", "Connection: close"]);
    }
    // What the bench's reaped children used so far: wrk's share is what this grows by.
    let children = || {
        // SAFETY: rusage is plain data, filled by getrusage.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: a pointer to a live local.
        unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
        usage
    };
    let before = children();
    let out = cmd
        .args(["-t1", "-c32", &format!("-d{}s", RUN.as_secs())])
        .arg(format!("http://{addr}/1k"))
        .stderr(Stdio::null())
        .output()
        .expect("run wrk");
    let after = children();
    let text = String::from_utf8_lossy(&out.stdout);
    let ms = |t: libc::timeval| t.tv_sec as u64 * 1000 + t.tv_usec as u64 / 1000;
    let rate = text
        .split("Requests/sec:")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("wrk printed no Requests/sec: {text}"));
    (
        rate,
        ms(after.ru_utime).saturating_sub(ms(before.ru_utime)),
        ms(after.ru_stime).saturating_sub(ms(before.ru_stime)),
    )
}

/// One wrk run at `addr` and the CPU the processes `pids` (and wrk, if `with_wrk`) spent on it
/// per request, in us: (requests/s, user, kernel).
fn measured(addr: SocketAddr, close: bool, pids: &[u32], with_wrk: bool) -> (f64, f64, f64) {
    let cpu = || cpu_split_ms_of_all(pids);
    let before = cpu();
    let (rate, wrk_user, wrk_kernel) = wrk(addr, close);
    let after = cpu();
    let (wrk_user, wrk_kernel) = if with_wrk {
        (wrk_user, wrk_kernel)
    } else {
        (0, 0)
    };
    let per = |ms: u64| ms as f64 * 1000.0 / (rate * RUN.as_secs_f64()).max(1.0);
    (
        rate,
        per(after.0 - before.0 + wrk_user),
        per(after.1 - before.1 + wrk_kernel),
    )
}

/// The rows of real clients (`row3`: a row with rathole's figure when it runs): wrk against
/// nginx, then iperf3.
pub fn rows(a: &Node, b: &Node, row3: &Row3) {
    web_rows(a, b, row3);
    iperf_rows(a, b, row3);
}

/// Requests/s over 32 keep-alive connections and new connections/s, each the median of three
/// rounds, then the CPU per request of the load generator and the backend together (direct) and
/// of each proxy's two processes, and what two chained plain forwarders carry ([`forward_chain`]).
fn web_rows(a: &Node, b: &Node, row3: &Row3) {
    if !(runs("wrk", "--version") && runs("nginx", "-v")) {
        println!("(wrk or nginx not found: the rows of real clients are left out)");
        return;
    }
    let nginx = Nginx::start();
    wait_http(nginx.addr, "nginx");
    let through = a.carry(b, "web", None, nginx.addr);
    wait_http(through, "menet");
    let rh = rathole::binary().map(|path| {
        let r = rathole::Rathole::start(&path, &[("web", nginx.addr)], |_| None);
        wait_http(r.ports[0], "rathole");
        r
    });
    let chain = forward_chain(nginx.addr);
    match &chain {
        Some([near, _]) => wait_http(near.addr, "two chained nginx stream proxies"),
        None => println!(
            "(nginx has no stream module: the rows of two chained forwarders are left out)"
        ),
    }
    let nodes = [a.child.id(), b.child.id()];
    for (name, close) in [
        (
            "requests/s, wrk + nginx 1 KiB, 32 keep-alive connections",
            false,
        ),
        (
            "new connections/s, wrk + nginx 1 KiB (Connection: close)",
            true,
        ),
    ] {
        let (mut d, mut m, mut r, mut c) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            d.push(measured(nginx.addr, close, &[nginx.pid()], true));
            m.push(measured(through, close, &nodes, false));
            if let Some(rh) = &rh {
                r.push(measured(rh.ports[0], close, &rh.pids(), false));
            }
            if let Some([first, _]) = &chain {
                c.push(wrk(first.addr, close).0);
            }
        }
        let mid = |v: &[(f64, f64, f64)], i: usize| {
            let mut x: Vec<f64> = v.iter().map(|t| [t.0, t.1, t.2][i]).collect();
            (!x.is_empty()).then(|| median(&mut x))
        };
        let direct = |i| mid(&d, i).unwrap_or(0.0);
        let menet = |i| mid(&m, i).unwrap_or(0.0);
        row3(name, direct(0), menet(0), mid(&r, 0));
        for (what, i) in [("user", 1), ("kernel", 2)] {
            row3(
                &format!("  CPU us per request, {what}: wrk + nginx, the proxy (medians)"),
                direct(i),
                menet(i),
                mid(&r, i),
            );
        }
        // With every process on the same two busy cores, a proxy that costs P per request
        // beside the client and server's D carries at most D / (D + P) of the direct rate.
        let own = direct(1) + direct(2);
        let ceiling = |p: f64| own / (own + p).max(1e-9);
        let rathole = mid(&r, 1).zip(mid(&r, 2)).map(|(u, k)| ceiling(u + k));
        row3(
            "  ceiling from CPU alone: D / (D + the proxy's CPU per request)",
            1.0,
            ceiling(menet(1) + menet(2)),
            rathole,
        );
        if !c.is_empty() {
            row3(
                "  two chained nginx stream proxies: plain forwarding, no tunnel",
                direct(0),
                median(&mut c),
                None,
            );
        }
    }
}

/// An iperf3 server on a free loopback port; killed when dropped.
struct IperfServer {
    /// The `iperf3 -s` process (one test at a time, as the rows run them).
    child: Child,
    /// Where it listens.
    addr: SocketAddr,
}

impl IperfServer {
    fn start() -> IperfServer {
        let port = rathole::free_port();
        let mut cmd = Command::new("iperf3");
        cmd.args(["-s", "-B", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        dies_with_bench(&mut cmd);
        let child = cmd.spawn().expect("start iperf3 -s");
        IperfServer {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }
}

impl Drop for IperfServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Eight iperf3 streams each way, directly, through menet and through rathole in turn, three
/// rounds of 4 s, the medians in MiB/s. iperf3 (3.x before 3.16) serves all eight sockets from
/// one thread: each stream is read in turn, so each stream's credit comes back in bursts, as
/// many real clients do it (the bench's own bulk client reads each stream from its own task).
fn iperf_rows(a: &Node, b: &Node, row3: &Row3) {
    if !runs("iperf3", "--version") {
        println!("(iperf3 not found: its rows are left out)");
        return;
    }
    let server = IperfServer::start();
    let through = a.carry(b, "iperf", None, server.addr);
    let rh = rathole::binary()
        .map(|path| rathole::Rathole::start(&path, &[("iperf", server.addr)], |_| None));
    for (name, reverse) in [
        ("bulk 8 streams upload, iperf3 -P 8 (MiB/s)", false),
        ("bulk 8 streams download, iperf3 -P 8 -R (MiB/s)", true),
    ] {
        let (mut d, mut m, mut r) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            d.push(iperf(server.addr, reverse));
            m.push(iperf(through, reverse));
            if let Some(rh) = &rh {
                r.push(iperf(rh.ports[0], reverse));
            }
        }
        let rathole = (!r.is_empty()).then(|| median(&mut r));
        row3(name, median(&mut d), median(&mut m), rathole);
    }
}

/// MiB/s of one `iperf3 -P 8` run of 4 s at `addr` (`reverse`: the server sends). A listener
/// that is not carrying yet (rathole's, until its client is in) or a server still ending the
/// run before is retried for 10 s.
fn iperf(addr: SocketAddr, reverse: bool) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut cmd = Command::new("iperf3");
        cmd.args(["-c", &addr.ip().to_string(), "-p", &addr.port().to_string()])
            .args(["-P", "8", "-t", "4", "-J"]);
        if reverse {
            cmd.arg("-R");
        }
        let out = cmd.stderr(Stdio::null()).output().expect("run iperf3");
        let bits = serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .ok()
            .and_then(|v| v["end"]["sum_received"]["bits_per_second"].as_f64());
        match bits {
            Some(bits) => return bits / 8.0 / f64::from(1u32 << 20),
            None if Instant::now() < deadline => thread::sleep(Duration::from_millis(500)),
            None => panic!(
                "iperf3 at {addr} printed no result: {}",
                String::from_utf8_lossy(&out.stdout)
            ),
        }
    }
}
