//! menet's benchmark: starts two nodes on loopback (A dials B, services local on A and remote on
//! B) and prints each figure beside the same measure taken directly against the backend in the
//! same run. Figures, not pass/fail: the machine is shared and noisy, so compare ratios.
//!
//!     cargo build --release && cargo run --release -p menet-bench [-- --quick]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use menet_actors::cipher::ServiceKey;

const CHUNK: usize = 256 * 1024;
const KEY: &str = "UHI@&s8sa*S";

struct Plan {
    bulk_plain: u64,
    bulk_keyed: u64,
    pings: usize,
    window: Duration,
    idle_conns: usize,
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
        }
    } else {
        Plan {
            bulk_plain: 2 << 30,
            bulk_keyed: 512 << 20,
            pings: 20_000,
            window: Duration::from_secs(3),
            idle_conns: 1_000,
        }
    };
    raise_fd_limit();
    let menet = menet_binary();

    let rc4 = rc4_speed();
    println!("menet benchmark: two nodes on loopback, each measure beside direct loopback");
    println!("raw RC4 keystream, one core: {rc4:.0} MiB/s (the ceiling of one keyed stream)\n");

    let bulk = serve(bulk_backend);
    let echo = serve(echo_backend);
    let (a, b) = (Node::start(&menet), Node::start(&menet));
    a.post(
        "/tunnel",
        &format!(r#"{{"name":"t","dest":["127.0.0.1","{}"]}}"#, b.tunnel),
    );
    let plain = a.carry(&b, "bulk", None, bulk);
    let keyed = a.carry(&b, "bulkk", Some(KEY), bulk);
    let echoed = a.carry(&b, "echo", None, echo);

    println!(
        "{:<44} {:>12} {:>12} {:>7}",
        "measure", "direct", "menet", "ratio"
    );
    let row = |name: &str, direct: f64, menet: f64| {
        println!(
            "{name:<44} {direct:>12.1} {menet:>12.1} {:>7.2}",
            menet / direct
        );
    };
    for (dir, upload) in [("upload", true), ("download", false)] {
        for streams in [1usize, 8] {
            let d = throughput(bulk, streams, plan.bulk_plain, upload);
            let m = throughput(plain, streams, plan.bulk_plain, upload);
            row(
                &format!("bulk {streams} stream(s) {dir}, plaintext (MiB/s)"),
                d,
                m,
            );
        }
    }
    for (dir, upload) in [("upload", true), ("download", false)] {
        for streams in [1usize, 8] {
            let m = throughput(keyed, streams, plan.bulk_keyed, upload);
            row(
                &format!("bulk {streams} stream(s) {dir}, keyed vs RC4 (MiB/s)"),
                rc4,
                m,
            );
        }
    }
    let (d50, d99) = latency(echo, plan.pings);
    let (m50, m99) = latency(echoed, plan.pings);
    row("latency p50, 64 B request/response (us)", d50, m50);
    row("latency p99, 64 B request/response (us)", d99, m99);
    println!("{:<44} {:>12.1}", "  added p99 latency (us)", m99 - d99);
    row(
        "requests/s, 32 keep-alive connections",
        requests_per_second(echo, 32, plan.window),
        requests_per_second(echoed, 32, plan.window),
    );
    row(
        "new connections/s (connect, 32 B echo, close)",
        connections_per_second(echo, 8, plan.window),
        connections_per_second(echoed, 8, plan.window),
    );

    let hold = serve(hold_backend);
    let held = a.carry(&b, "hold", None, hold);
    let per_conn = idle_memory(&a, &b, held, plan.idle_conns);
    println!(
        "{:<44} {:>12} {:>12.1}",
        format!(
            "RSS per idle connection, both nodes (KiB), {}",
            plan.idle_conns
        ),
        "-",
        per_conn
    );
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
        let mut child = Command::new(menet)
            .args(["--admin", "127.0.0.1:0", "--tunnel", "127.0.0.1:0"])
            .args(["--config", "/dev/null"])
            .env("RUST_LOG", "info")
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("start menet");
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
        // Keep draining the log so the node never blocks on a full pipe.
        thread::spawn(move || lines.for_each(drop));
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
            "POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .expect("request");
        let mut reply = String::new();
        s.read_to_string(&mut reply).expect("reply");
        assert!(reply.starts_with("HTTP/1.1 200"), "{path} {body}: {reply}");
    }

    /// Carries a service from this node (local) to `far` (remote, `target`) over tunnel `t`.
    fn carry(&self, far: &Node, name: &str, key: Option<&str>, target: SocketAddr) -> SocketAddr {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let key = key.map(|k| format!(r#""key":"{k}","#)).unwrap_or_default();
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
            &format!(r#"{{"tunnel":"t","service":"{name}","type":"local"}}"#),
        );
        far.post(
            "/bind",
            &format!(r#"{{"tunnel":"t","service":"{name}","type":"remote"}}"#),
        );
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts a thread-per-connection backend.
fn serve(handler: fn(TcpStream)) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let _ = conn.set_nodelay(true);
            thread::Builder::new()
                .stack_size(128 * 1024)
                .spawn(move || handler(conn))
                .ok();
        }
    });
    addr
}

/// 'U': swallow until EOF, answer the count. 'D' + u64: send that many bytes, then close.
fn bulk_backend(mut s: TcpStream) {
    let mut cmd = [0u8; 1];
    if s.read_exact(&mut cmd).is_err() {
        return;
    }
    let mut buf = vec![0u8; CHUNK];
    if cmd[0] == b'U' {
        let mut total = 0u64;
        while let Ok(n) = s.read(&mut buf) {
            if n == 0 {
                break;
            }
            total += n as u64;
        }
        let _ = s.write_all(&total.to_be_bytes());
    } else {
        let mut len = [0u8; 8];
        if s.read_exact(&mut len).is_err() {
            return;
        }
        let mut left = u64::from_be_bytes(len);
        while left > 0 {
            let n = left.min(CHUNK as u64) as usize;
            if s.write_all(&buf[..n]).is_err() {
                return;
            }
            left -= n as u64;
        }
        let _ = s.shutdown(Shutdown::Write);
    }
}

fn echo_backend(mut s: TcpStream) {
    let mut buf = vec![0u8; 16 * 1024];
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 || s.write_all(&buf[..n]).is_err() {
            break;
        }
    }
}

/// Answers one byte, then holds the connection open until the client closes it.
fn hold_backend(mut s: TcpStream) {
    let mut b = [0u8; 1];
    if s.read_exact(&mut b).is_ok() && s.write_all(&b).is_ok() {
        let _ = s.read(&mut b);
    }
}

/// MiB/s over `streams` parallel connections moving `total` bytes in all.
fn throughput(addr: SocketAddr, streams: usize, total: u64, upload: bool) -> f64 {
    let each = total / streams as u64;
    let started = Instant::now();
    let workers: Vec<_> = (0..streams)
        .map(|_| {
            thread::spawn(move || {
                let mut s = TcpStream::connect(addr).expect("connect");
                let buf = vec![0x5au8; CHUNK];
                if upload {
                    s.write_all(b"U").expect("cmd");
                    let mut left = each;
                    while left > 0 {
                        let n = left.min(CHUNK as u64) as usize;
                        s.write_all(&buf[..n]).expect("upload");
                        left -= n as u64;
                    }
                    s.shutdown(Shutdown::Write).expect("half-close");
                    let mut count = [0u8; 8];
                    s.read_exact(&mut count).expect("count");
                    assert_eq!(u64::from_be_bytes(count), each, "upload lost bytes");
                } else {
                    s.write_all(b"D").expect("cmd");
                    s.write_all(&each.to_be_bytes()).expect("len");
                    let mut buf = buf;
                    let mut got = 0u64;
                    loop {
                        let n = s.read(&mut buf).expect("download");
                        if n == 0 {
                            break;
                        }
                        got += n as u64;
                    }
                    assert_eq!(got, each, "download lost bytes");
                }
            })
        })
        .collect();
    for w in workers {
        w.join().expect("stream");
    }
    (each * streams as u64) as f64 / (1 << 20) as f64 / started.elapsed().as_secs_f64()
}

/// p50 and p99 in microseconds of a 64-byte request/response on one connection.
fn latency(addr: SocketAddr, pings: usize) -> (f64, f64) {
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
    samples.sort_by(f64::total_cmp);
    let pct = |p: f64| samples[((samples.len() as f64 * p) as usize).min(samples.len() - 1)];
    (pct(0.50), pct(0.99))
}

fn requests_per_second(addr: SocketAddr, conns: usize, window: Duration) -> f64 {
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..conns)
        .map(|_| {
            let (done, stop) = (done.clone(), stop.clone());
            thread::spawn(move || {
                let mut s = TcpStream::connect(addr).expect("connect");
                s.set_nodelay(true).expect("nodelay");
                let req = [1u8; 128];
                let mut resp = [0u8; 128];
                while !stop.load(Ordering::Relaxed) {
                    s.write_all(&req).expect("request");
                    s.read_exact(&mut resp).expect("response");
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let started = Instant::now();
    thread::sleep(window);
    let n = done.load(Ordering::Relaxed);
    let secs = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().expect("worker");
    }
    n as f64 / secs
}

fn connections_per_second(addr: SocketAddr, workers: usize, window: Duration) -> f64 {
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let handles: Vec<_> = (0..workers)
        .map(|_| {
            let (done, stop) = (done.clone(), stop.clone());
            thread::spawn(move || {
                let req = [3u8; 32];
                let mut resp = [0u8; 32];
                while !stop.load(Ordering::Relaxed) {
                    let mut s = TcpStream::connect(addr).expect("connect");
                    s.set_nodelay(true).expect("nodelay");
                    s.write_all(&req).expect("request");
                    s.read_exact(&mut resp).expect("response");
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let started = Instant::now();
    thread::sleep(window);
    let n = done.load(Ordering::Relaxed);
    let secs = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.join().expect("worker");
    }
    n as f64 / secs
}

/// Resident memory both nodes gain per connection held open through the tunnel, in KiB.
fn idle_memory(a: &Node, b: &Node, addr: SocketAddr, count: usize) -> f64 {
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
    // Warm the allocators with a round of the same size first.
    drop(open(count));
    thread::sleep(Duration::from_millis(500));
    let before = a.rss_kib() + b.rss_kib();
    let held = open(count);
    thread::sleep(Duration::from_millis(500));
    let after = a.rss_kib() + b.rss_kib();
    drop(held);
    after.saturating_sub(before) as f64 / count as f64
}

/// MiB/s of one core applying a stream's RC4 keystream.
fn rc4_speed() -> f64 {
    let key = ServiceKey::new(KEY);
    let open = key.open();
    let (mut tx, _) = menet_actors::cipher::stream_pair(&key, &open.nonce, true);
    let mut buf = vec![0u8; 64 * 1024];
    let started = Instant::now();
    let mut bytes = 0u64;
    while started.elapsed() < Duration::from_secs(1) {
        tx.apply(&mut buf);
        bytes += buf.len() as u64;
    }
    bytes as f64 / (1 << 20) as f64 / started.elapsed().as_secs_f64()
}
