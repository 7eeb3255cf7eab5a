//! Test harness: real `menet` processes on loopback, driven over real HTTP and real sockets.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

pub const IO_TIMEOUT: Duration = Duration::from_secs(20);

/// A running node; killed when dropped.
pub struct Node {
    child: Child,
    pub admin: SocketAddr,
    pub tunnel: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
}

impl Node {
    pub fn start() -> Node {
        let mut child = Command::new(env!("CARGO_BIN_EXE_menet"))
            .args([
                "--config",
                concat!(env!("CARGO_MANIFEST_DIR"), "/config/menet.toml"),
                "--admin",
                "127.0.0.1:0",
                "--tunnel",
                "127.0.0.1:0",
            ])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn menet");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = log.clone();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                sink.lock().expect("log lock").push(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(15);
        let (mut admin, mut tunnel) = (None, None);
        while admin.is_none() || tunnel.is_none() {
            assert!(
                Instant::now() < deadline,
                "node did not start: {:?}",
                log.lock()
            );
            for line in log.lock().expect("log lock").iter() {
                if let Some(a) = line.split("admin API listening on ").nth(1) {
                    admin = a.trim().parse().ok();
                }
                if let Some(a) = line.split("tunnel port listening on ").nth(1) {
                    tunnel = a.trim().parse().ok();
                }
            }
            thread::sleep(Duration::from_millis(20));
        }
        Node {
            child,
            admin: admin.expect("admin addr"),
            tunnel: tunnel.expect("tunnel addr"),
            log,
        }
    }

    /// Fails with a config error instead of starting.
    pub fn run_with_config(path: &str) -> (Option<i32>, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_menet"))
            .args(["--config", path])
            .output()
            .expect("run menet");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_contains(&self, needle: &str) -> bool {
        self.log
            .lock()
            .expect("log lock")
            .iter()
            .any(|l| l.contains(needle))
    }

    pub fn wait_log(&self, needle: &str, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if self.log_contains(needle) {
                return true;
            }
            thread::sleep(Duration::from_millis(20));
        }
        false
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Resident memory in KiB.
    pub fn rss_kib(&self) -> u64 {
        rss_kib(self.pid())
    }

    pub fn request(&self, method: &str, path: &str, body: &str) -> (u16, Value) {
        http(self.admin, method, path, body)
    }

    /// A request that must succeed.
    pub fn ok(&self, method: &str, path: &str, body: &str) {
        let (status, reply) = self.request(method, path, body);
        assert_eq!(status, 200, "{method} {path} {body} -> {reply}");
    }

    pub fn config(&self) -> Value {
        let (status, v) = self.request("GET", "/config", "");
        assert_eq!(status, 200);
        v
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// One HTTP/1.1 request as `curl -d` sends it (form Content-Type, JSON body).
pub fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, Value) {
    let mut s = TcpStream::connect(addr).expect("connect admin");
    s.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    let head = if body.is_empty() {
        format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
    } else {
        format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
             Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
    };
    s.write_all(head.as_bytes()).expect("write head");
    s.write_all(body.as_bytes()).expect("write body");
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

/// A free loopback port (bound then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// `POST /tunnel` on `from`, dialling `to`'s tunnel port.
pub fn dial(from: &Node, to: &Node, tunnel: &str) {
    from.ok(
        "POST",
        "/tunnel",
        &format!(
            r#"{{"name":"{tunnel}", "dest":["127.0.0.1", "{}"]}}"#,
            to.tunnel.port()
        ),
    );
}

/// Carries service `name` over `tunnel`: local on `local` (listening on a free port, returned),
/// remote on `remote` (sent to `target`); the bodies are the seed's curl calls.
pub fn carry(
    local: &Node,
    remote: &Node,
    tunnel: &str,
    name: &str,
    key: Option<&str>,
    target: SocketAddr,
) -> SocketAddr {
    let key = key.map(|k| format!(r#""key":"{k}", "#)).unwrap_or_default();
    let port = free_port();
    local.ok(
        "POST",
        "/service",
        &format!(r#"{{"name":"{name}", {key}"type": "local", "addr":["0.0.0.0", "{port}"]}}"#),
    );
    remote.ok(
        "POST",
        "/service",
        &format!(
            r#"{{"name":"{name}", {key}"type": "remote", "addr":["{}", "{}"]}}"#,
            target.ip(),
            target.port()
        ),
    );
    for (node, side) in [(local, "local"), (remote, "remote")] {
        node.ok(
            "POST",
            "/bind",
            &format!(r#"{{"tunnel": "{tunnel}", "service":"{name}", "type": "{side}"}}"#),
        );
    }
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// The seed scenario: A dials B as `tunnel1`, `service1` local on A and remote on B (`target`).
pub fn wire(a: &Node, b: &Node, target: SocketAddr, key: Option<&str>) -> SocketAddr {
    dial(a, b, "tunnel1");
    carry(a, b, "tunnel1", "service1", key, target)
}

/// A backend server that runs `serve` on each connection in its own thread; stops accepting when
/// dropped.
pub struct Backend {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl Backend {
    pub fn start<F>(serve: F) -> Backend
    where
        F: Fn(TcpStream) + Send + Sync + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind backend");
        let addr = listener.local_addr().expect("addr");
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let serve = Arc::new(serve);
        thread::spawn(move || {
            for conn in listener.incoming() {
                if flag.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let serve = serve.clone();
                thread::spawn(move || serve(conn));
            }
        });
        Backend { addr, stop }
    }

    /// Echoes every byte back and half-closes after the client does.
    pub fn echo() -> Backend {
        Backend::start(|mut s| {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if s.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                }
            }
            let _ = s.shutdown(Shutdown::Write);
        })
    }

    /// A minimal HTTP/1.0 server: `GET /PATH` answers `files(PATH)`.
    pub fn http(files: fn(&str) -> Option<Vec<u8>>) -> Backend {
        Backend::start(move |mut s| {
            let mut req = Vec::new();
            let mut buf = [0u8; 4096];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                }
            }
            let line = String::from_utf8_lossy(&req);
            let path = line.split_whitespace().nth(1).unwrap_or("/").to_owned();
            let reply = match files(&path) {
                Some(body) => {
                    let mut r = format!(
                        "HTTP/1.0 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    )
                    .into_bytes();
                    r.extend_from_slice(&body);
                    r
                }
                None => b"HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_vec(),
            };
            let _ = s.write_all(&reply);
        })
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
    }
}

pub fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    s.set_write_timeout(Some(IO_TIMEOUT)).expect("timeout");
    s
}

/// Sends `data`, half-closes, and returns everything read until EOF.
pub fn roundtrip(addr: SocketAddr, data: &[u8]) -> Vec<u8> {
    let s = connect(addr);
    let mut writer = s.try_clone().expect("clone");
    let data = data.to_vec();
    let w = thread::spawn(move || {
        writer.write_all(&data).expect("send");
        writer.shutdown(Shutdown::Write).expect("half-close");
    });
    let mut got = Vec::new();
    (&s).read_to_end(&mut got).expect("receive");
    w.join().expect("writer");
    got
}

/// Deterministic pseudo-random bytes (xorshift), so every test checks distinct content.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Whether the peer closed `s` (EOF or reset) within `within`.
pub fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    s.set_read_timeout(Some(within)).expect("timeout");
    let mut buf = [0u8; 1024];
    let deadline = Instant::now() + within;
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                return false
            }
            Err(_) => return true,
        }
        if Instant::now() > deadline {
            return false;
        }
    }
}

/// Polls `cond` until it holds or `within` passes.
pub fn eventually(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        thread::sleep(Duration::from_millis(20));
    }
    cond()
}

/// A loopback listener that never answers: backlog 0 and its queue already full, so the kernel
/// drops further SYNs and connecting hangs.
pub struct Blackhole {
    pub addr: SocketAddr,
    _listener: TcpListener,
    _queued: Vec<TcpStream>,
}

impl Blackhole {
    pub fn new() -> Blackhole {
        use std::os::fd::AsRawFd;
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        // SAFETY: listen() on a socket we own; a backlog of 0 queues one connection at most.
        assert_eq!(unsafe { libc::listen(listener.as_raw_fd(), 0) }, 0);
        let addr = listener.local_addr().expect("addr");
        let queued = (0..2)
            .filter_map(|_| TcpStream::connect_timeout(&addr, Duration::from_millis(300)).ok())
            .collect();
        Blackhole {
            addr,
            _listener: listener,
            _queued: queued,
        }
    }
}
