//! `menet-bench --scale [--objects N] [--listeners M]`: one node with a state file built up to N
//! remote services and N binds through the admin API (one keep-alive client), measuring what an
//! admin change costs at 100 objects and at N, what the admin plane does to a live tunnelled
//! connection through the same node, and how fast the node serves again after a restart.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use super::{latency_samples, Node};

/// One keep-alive HTTP/1.1 connection to an admin API.
struct Admin {
    /// The response side, buffered to read headers by line.
    reader: BufReader<TcpStream>,
    /// The request side.
    writer: TcpStream,
    /// The API's address, for the `Host` header.
    host: SocketAddr,
}

impl Admin {
    fn connect(addr: SocketAddr) -> Admin {
        let s = TcpStream::connect(addr).expect("admin");
        s.set_nodelay(true).expect("nodelay");
        Admin {
            reader: BufReader::new(s.try_clone().expect("clone")),
            writer: s,
            host: addr,
        }
    }

    /// One request; the status and the body.
    fn call(&mut self, method: &str, path: &str, body: &str) -> (u16, Vec<u8>) {
        write!(
            self.writer,
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\n\r\n{body}",
            self.host,
            body.len()
        )
        .expect("request");
        let mut status = String::new();
        self.reader.read_line(&mut status).expect("status");
        let code = status
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let mut len = 0usize;
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line).expect("header");
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0u8; len];
        self.reader.read_exact(&mut body).expect("body");
        (code, body)
    }

    /// A request that must succeed; how long it took.
    fn ok(&mut self, method: &str, path: &str, body: &str) -> Duration {
        let t = Instant::now();
        let (code, reply) = self.call(method, path, body);
        assert_eq!(
            code,
            200,
            "{method} {path} {body}: {}",
            String::from_utf8_lossy(&reply)
        );
        t.elapsed()
    }
}

fn median_ms(samples: &mut [Duration]) -> (f64, f64) {
    samples.sort();
    let at = |p: f64| {
        samples[((samples.len() as f64 * p) as usize).min(samples.len() - 1)].as_secs_f64() * 1e3
    };
    (at(0.5), at(0.99))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// p99 (us) of 64 B echoes on `conn` while `load` runs in another thread.
fn echo_p99_while(echo: SocketAddr, pings: usize, load: Option<Box<dyn FnMut() + Send>>) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let loader = load.map(|mut f| {
        let stop = stop.clone();
        thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                f();
            }
        })
    });
    thread::sleep(Duration::from_millis(200));
    let mut samples = latency_samples(echo, pings);
    stop.store(true, Ordering::Relaxed);
    if let Some(l) = loader {
        let _ = l.join();
    }
    samples.sort_by(f64::total_cmp);
    samples[((samples.len() as f64 * 0.99) as usize).min(samples.len() - 1)]
}

pub fn run(menet: &PathBuf, echo_backend: SocketAddr) {
    let objects = arg("--objects", 10_000);
    let listeners = arg("--listeners", 2_000).min(objects);
    let dir = std::env::temp_dir().join(format!("menet-scale-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let state = dir.join("state.json");
    let state_arg = state.display().to_string();
    let threads = super::node_threads();
    let node_args = ["--config", "/dev/null", "--state", &state_arg];
    println!(
        "scale: one node with a state file, {objects} remote services and {objects} binds, \
         {listeners} local services; one keep-alive admin client; node data threads: {}",
        threads.as_deref().unwrap_or("default")
    );
    let node = Node::start_args(menet, &[], &node_args);
    // A live tunnelled connection through the node: the far node dials it; the echo backend
    // is reached through a service local on the far node, remote on this one.
    let far = Node::start(menet);
    far.post(
        "/tunnel",
        &format!(r#"{{"name":"t","dest":["127.0.0.1","{}"]}}"#, node.tunnel),
    );
    let echo = far.carry_on("t", &node, "echo", None, echo_backend);
    let mut admin = Admin::connect(node.admin);

    build_rows(&mut admin, objects);

    // Local listeners, for the restore figure.
    for i in 0..listeners {
        admin.ok(
            "POST",
            "/service",
            &format!(
                r#"{{"name":"listen-{i}","type":"local","addr":["127.0.0.1","{}"]}}"#,
                free_port()
            ),
        );
    }
    let (code, config) = admin.call("GET", "/config", "");
    assert_eq!(code, 200);
    println!(
        "{:<64} {:>12}",
        "GET /config size (KB)",
        config.len() / 1000
    );

    admin_beside_data_rows(echo, node.admin);

    // Restore at scale: kill -9, start again, time to serving.
    let journal = std::fs::metadata(dir.join("state.json.journal")).map_or(0, |m| m.len());
    let snapshot = std::fs::metadata(&state).map_or(0, |m| m.len());
    println!(
        "{:<64} {:>12} {:>12}",
        "state on disk: snapshot, journal (KB)",
        snapshot / 1000,
        journal / 1000
    );
    drop(admin);
    let (admin_at, tunnel_at) = (node.admin.to_string(), format!("127.0.0.1:{}", node.tunnel));
    drop(node);
    // The same ports again: a port 0 admin API could take a restored service's port.
    restart_row(
        menet,
        &admin_at,
        &tunnel_at,
        &node_args,
        (objects, listeners),
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Builds `objects` remote services and as many binds through one keep-alive client, and prints
/// the POSTs' latency at 100 objects and at all of them, and how long each build took.
fn build_rows(admin: &mut Admin, objects: usize) {
    let body = |i: usize| {
        format!(
            r#"{{"name":"svc-{i}","type":"remote","addr":["127.0.0.1","{}"]}}"#,
            1 + i % 65000
        )
    };
    let started = Instant::now();
    let mut at_100 = Vec::new();
    let mut at_n = Vec::new();
    for i in 0..objects {
        let took = admin.ok("POST", "/service", &body(i));
        if i < 100 {
            at_100.push(took);
        }
        if i + 100 >= objects {
            at_n.push(took);
        }
    }
    let services_time = started.elapsed();
    let started = Instant::now();
    for i in 0..objects {
        admin.ok(
            "POST",
            "/bind",
            &format!(r#"{{"tunnel":"t","service":"svc-{i}","type":"remote"}}"#),
        );
    }
    let binds_time = started.elapsed();
    // POST latency at N objects, measured again now that binds are there too (re-POSTs).
    let mut at_full = Vec::new();
    for i in 0..200 {
        at_full.push(admin.ok("POST", "/service", &body(i * (objects / 200).max(1))));
    }
    let (m100, p100) = median_ms(&mut at_100);
    let (mn, pn) = median_ms(&mut at_n);
    let (mf, pf) = median_ms(&mut at_full);
    println!(
        "{:<64} {:>12} {:>12} {:>7}",
        "measure", "at 100", "at N", "ratio"
    );
    println!(
        "{:<64} {m100:>12.3} {mn:>12.3} {:>7.2}",
        "POST /service median (ms), building services",
        mn / m100
    );
    println!(
        "{:<64} {p100:>12.3} {pn:>12.3} {:>7.2}",
        "POST /service p99 (ms), building services",
        pn / p100
    );
    println!(
        "{:<64} {m100:>12.3} {mf:>12.3} {:>7.2}",
        format!("POST /service median (ms), {objects} services + {objects} binds"),
        mf / m100
    );
    println!(
        "{:<64} {p100:>12.3} {pf:>12.3} {:>7.2}",
        format!("POST /service p99 (ms), {objects} services + {objects} binds"),
        pf / p100
    );
    println!(
        "{:<64} {:>12.2}",
        format!("{objects} services built from empty (s)"),
        services_time.as_secs_f64()
    );
    println!(
        "{:<64} {:>12.2}",
        format!("{objects} binds built (s)"),
        binds_time.as_secs_f64()
    );
}

/// A 64 B echo's p99 through the node: idle, and while POST /service, GET /config and a path
/// GET loop on its admin API.
fn admin_beside_data_rows(echo: SocketAddr, admin_addr: SocketAddr) {
    // The data path beside the admin plane: idle, while POSTs loop, while GET /config loops.
    let pings = 5_000;
    // Let the listeners' set-up and any compaction settle first.
    thread::sleep(Duration::from_secs(1));
    let idle = echo_p99_while(echo, pings, None);
    let mut poster = Admin::connect(admin_addr);
    let mut k = 0usize;
    let posting = echo_p99_while(
        echo,
        pings,
        Some(Box::new(move || {
            k += 1;
            poster.ok(
                "POST",
                "/service",
                &format!(
                    r#"{{"name":"svc-{}","type":"remote","addr":["127.0.0.1","{}"]}}"#,
                    k % 100,
                    1 + k % 65000
                ),
            );
        })),
    );
    let mut getter = Admin::connect(admin_addr);
    let getting = echo_p99_while(
        echo,
        pings,
        Some(Box::new(move || {
            let _ = getter.call("GET", "/config", "");
        })),
    );
    let mut one = Admin::connect(admin_addr);
    let filtered = echo_p99_while(
        echo,
        pings,
        Some(Box::new(move || {
            let _ = one.call("GET", "/services/remote/svc-7", "");
        })),
    );
    println!(
        "{:<64} {:>12} {:>12} {:>7}",
        "64 B echo through the node", "idle p99", "p99", "ratio"
    );
    for (what, p99) in [
        ("  while POST /service loops (us)", posting),
        ("  while GET /config loops (us)", getting),
        ("  while GET /services/remote/NAME loops (us)", filtered),
    ] {
        println!("{what:<64} {idle:>12.0} {p99:>12.0} {:>7.2}", p99 / idle);
    }
}

/// After a kill -9: the node started again on the same ports, timed to `/readyz` 200.
fn restart_row(
    menet: &PathBuf,
    admin_at: &str,
    tunnel_at: &str,
    node_args: &[&str],
    (objects, listeners): (usize, usize),
) {
    let started = Instant::now();
    let node = Node::start_at(menet, &[], admin_at, tunnel_at, node_args);
    let mut admin = Admin::connect(node.admin);
    let deadline = Instant::now() + Duration::from_secs(10);
    let ready = loop {
        let (code, body) = admin.call("GET", "/readyz", "");
        if code == 200 {
            break Ok(started.elapsed());
        }
        if Instant::now() > deadline {
            break Err(String::from_utf8_lossy(&body).into_owned());
        }
        thread::sleep(Duration::from_millis(5));
    };
    match ready {
        Ok(took) => println!(
            "{:<64} {:>12.0}",
            format!("restart to ready, {objects} + {objects} + {listeners} listeners (ms)"),
            took.as_secs_f64() * 1e3
        ),
        Err(why) => println!("restart: not ready within 10 s: {why}"),
    }
}
