//! Test harness: real `menet` processes on loopback, driven over real HTTP and real sockets.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

mod peer;
pub use peer::{RawPeer, Timeout};

pub const IO_TIMEOUT: Duration = Duration::from_secs(20);

/// A running node; killed when dropped.
pub struct Node {
    child: Child,
    pub admin: SocketAddr,
    pub tunnel: SocketAddr,
    config: PathBuf,
    log: Arc<Mutex<Vec<String>>>,
}

/// A directory of its own for a test's files; removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("menet-test-{}-{tag}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// How to start a node: the one way every test starts one ([`Node::start`], [`Node::with_config`]
/// and [`Node::persistent`] are its common cases).
pub struct NodeBuilder {
    /// The configuration file: the repository's default, or one written into a test's folder.
    config: PathBuf,
    /// Where the tunnel port listens (`IP:PORT`; port 0 by default).
    tunnel: String,
    /// Extra environment variables.
    env: Vec<(String, String)>,
    /// A lower open-file limit for the process, if any.
    nofile: Option<u64>,
}

impl NodeBuilder {
    /// The configuration `toml`, written as `name`.toml in `dir`.
    pub fn config(mut self, dir: &TempDir, name: &str, toml: &str) -> NodeBuilder {
        self.config = dir.path(&format!("{name}.toml"));
        std::fs::write(&self.config, toml).expect("write config");
        self
    }

    /// The tunnel port on `addr` (IP:PORT) instead of 127.0.0.1 on a free port.
    pub fn tunnel_at(mut self, addr: &str) -> NodeBuilder {
        self.tunnel = addr.to_owned();
        self
    }

    /// An extra environment variable.
    pub fn env(mut self, key: &str, value: &str) -> NodeBuilder {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// At most `n` open descriptors.
    pub fn nofile(mut self, n: u64) -> NodeBuilder {
        self.nofile = Some(n);
        self
    }

    pub fn start(self) -> Node {
        let env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        Node::spawn_with(self.config, "127.0.0.1:0", &self.tunnel, &env, self.nofile)
    }
}

impl Node {
    /// The builder: the repository's default configuration, free loopback ports.
    pub fn build() -> NodeBuilder {
        NodeBuilder {
            config: PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/config/menet.toml")),
            tunnel: "127.0.0.1:0".to_owned(),
            env: Vec::new(),
            nofile: None,
        }
    }

    /// A node on the repository's default configuration, on free loopback ports.
    pub fn start() -> Node {
        Node::build().start()
    }

    /// A node whose configuration file is `toml`, written as `name`.toml in `dir`, on free ports.
    pub fn with_config(dir: &TempDir, name: &str, toml: &str) -> Node {
        Node::build().config(dir, name, toml).start()
    }

    /// A node with a state file (`name`.json in `dir`) and the given `[tunnel]` heartbeat.
    pub fn persistent(dir: &TempDir, name: &str, heartbeat_ms: Option<(u64, u64)>) -> Node {
        let state = dir.path(&format!("{name}.json"));
        let heartbeat = heartbeat_ms
            .map(|(i, t)| format!("heartbeat_interval_ms = {i}\nheartbeat_timeout_ms = {t}\n"))
            .unwrap_or_default();
        let toml = format!(
            "[tunnel]\n{heartbeat}[state]\npath = {:?}\n",
            state.display().to_string()
        );
        Node::with_config(dir, name, &toml)
    }

    fn spawn_with(
        config: PathBuf,
        admin: &str,
        tunnel: &str,
        env: &[(&str, &str)],
        nofile: Option<u64>,
    ) -> Node {
        let mut command = match nofile {
            Some(n) => {
                let mut c = Command::new("sh");
                c.args(["-c", &format!("ulimit -n {n} && exec \"$0\" \"$@\"")])
                    .arg(env!("CARGO_BIN_EXE_menet"));
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_menet")),
        };
        let mut child = command
            .arg("--config")
            .arg(&config)
            .args(["--admin", admin, "--tunnel", tunnel])
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
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
                Instant::now() < deadline && matches!(child.try_wait(), Ok(None)),
                "node did not start: {:?}",
                log.lock()
            );
            // The address ends the line (text), or its JSON string (`[log] format = "json"`).
            let addr = |rest: &str| rest.split('"').next().unwrap_or("").trim().parse().ok();
            for line in log.lock().expect("log lock").iter() {
                if let Some(a) = line.split("admin API listening on ").nth(1) {
                    admin = addr(a);
                }
                if let Some(a) = line.split("tunnel port listening on ").nth(1) {
                    tunnel = addr(a);
                }
            }
            thread::sleep(Duration::from_millis(20));
        }
        Node {
            child,
            admin: admin.expect("admin addr"),
            tunnel: tunnel.expect("tunnel addr"),
            config,
            log,
        }
    }

    /// Starts the node again, same configuration and same addresses, once it has exited.
    pub fn restart(&mut self) {
        assert!(!self.alive(), "restart of a running node");
        let again = Node::spawn_with(
            self.config.clone(),
            &self.admin.to_string(),
            &self.tunnel.to_string(),
            &[],
            None,
        );
        *self = again;
    }

    /// `kill -9`.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM; the exit code and how long the node took to exit (or `None` after 10 s).
    pub fn terminate(&mut self) -> (Option<i32>, Duration) {
        self.stop_with(libc::SIGTERM)
    }

    /// Sends `signal`; the exit code and how long the node took to exit (or `None` after 10 s).
    pub fn stop_with(&mut self, signal: libc::c_int) -> (Option<i32>, Duration) {
        let started = Instant::now();
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
        while started.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(status)) = self.child.try_wait() {
                return (status.code(), started.elapsed());
            }
            thread::sleep(Duration::from_millis(10));
        }
        (None, started.elapsed())
    }

    /// Lines of its log (this run's) containing `needle`.
    pub fn log_lines(&self, needle: &str) -> Vec<String> {
        self.log
            .lock()
            .expect("log lock")
            .iter()
            .filter(|l| l.contains(needle))
            .cloned()
            .collect()
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

    /// Bytes its log holds (this run's), newlines included.
    pub fn log_bytes(&self) -> usize {
        self.log
            .lock()
            .expect("log lock")
            .iter()
            .map(|l| l.len() + 1)
            .sum()
    }

    /// Every line of its log (this run's).
    pub fn log_all(&self) -> Vec<String> {
        self.log.lock().expect("log lock").clone()
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

/// Resident memory of process `pid` in KiB. Fails the test when it cannot be read: a memory
/// check that silently measured 0 would pass without checking anything.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("cannot read /proc/{pid}/status to measure memory: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status"))
}

/// One HTTP/1.1 request as `curl -d` sends it (form Content-Type, JSON body).
pub fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, Value) {
    try_http(addr, method, path, body).expect("admin request")
}

/// Like [`http`], but a node that is not there is an error, not a panic.
pub fn try_http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> std::io::Result<(u16, Value)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    let head = if body.is_empty() {
        format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
    } else {
        format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
             Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
    };
    s.write_all(head.as_bytes())?;
    s.write_all(body.as_bytes())?;
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
    Ok((status, serde_json::from_str(body).unwrap_or(Value::Null)))
}

/// A free loopback port (bound then released), never the same one twice in a test run.
pub fn free_port() -> u16 {
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port();
        let mut given = GIVEN.lock().expect("ports lock");
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// `POST /tunnel` on `from`, dialling `to`'s tunnel port.
pub fn dial(from: &Node, to: &Node, tunnel: &str) {
    dial_addr(from, to.tunnel, tunnel);
}

/// `POST /tunnel` on `from`, dialling `dest` (a relay in front of a node, say).
pub fn dial_addr(from: &Node, dest: SocketAddr, tunnel: &str) {
    from.ok(
        "POST",
        "/tunnel",
        &format!(
            r#"{{"name":"{tunnel}", "dest":["{}", "{}"]}}"#,
            dest.ip(),
            dest.port()
        ),
    );
}

/// Carries service `name` over `tunnel`: local on `local` (on port 0: the port it got is returned),
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
    carry_at(local, remote, tunnel, name, &key, 0, target)
}

/// [`carry`] with the local service on 127.0.0.1:`port` (0: any free port, read back from
/// `listening` in `GET /config`) and `fields` (each followed by `, `, such as
/// `"key":"k", "cipher":"aes-256-gcm", `) in both service bodies; the seed's body shapes.
pub fn carry_at(
    local: &Node,
    remote: &Node,
    tunnel: &str,
    name: &str,
    fields: &str,
    port: u16,
    target: SocketAddr,
) -> SocketAddr {
    local.ok(
        "POST",
        "/service",
        &format!(r#"{{"name":"{name}", {fields}"type": "local", "addr":["127.0.0.1", "{port}"]}}"#),
    );
    remote.ok(
        "POST",
        "/service",
        &format!(
            r#"{{"name":"{name}", {fields}"type": "remote", "addr":["{}", "{}"]}}"#,
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
    if port != 0 {
        return SocketAddr::from(([127, 0, 0, 1], port));
    }
    let listening = local.config()["services"]["local"][name]["listening"].clone();
    listening
        .as_str()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| {
            panic!("service {name} on port 0 shows no listening address: {listening}")
        })
}

/// The seed scenario: A dials B as `tunnel1`, `service1` local on A and remote on B (`target`).
pub fn wire(a: &Node, b: &Node, target: SocketAddr, key: Option<&str>) -> SocketAddr {
    dial(a, b, "tunnel1");
    carry(a, b, "tunnel1", "service1", key, target)
}

/// [`wire`] with the local service on a port of its own asked for by number, so that a restart
/// listens on the same one (a service on port 0 gets any free port at each start).
pub fn wire_fixed(a: &Node, b: &Node, target: SocketAddr, key: Option<&str>) -> SocketAddr {
    dial(a, b, "tunnel1");
    let key = key.map(|k| format!(r#""key":"{k}", "#)).unwrap_or_default();
    carry_at(a, b, "tunnel1", "service1", &key, free_port(), target)
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

/// Whether a client of `addr` is closed (reset or EOF) within `within`: the node may reset it so
/// soon on loopback that the reset arrives before `connect` returns, which counts too.
pub fn refused_within(addr: SocketAddr, within: Duration) -> bool {
    match TcpStream::connect(addr) {
        Ok(mut s) => closed_within(&mut s, within),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => true,
        Err(e) => panic!("connect to {addr}: {e}"),
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

/// Like [`roundtrip`], but an error (the tunnel is down, say) is returned, not a panic.
pub fn try_roundtrip(addr: SocketAddr, data: &[u8]) -> std::io::Result<Vec<u8>> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut writer = s.try_clone()?;
    let data = data.to_vec();
    let w = thread::spawn(move || {
        let _ = writer
            .write_all(&data)
            .and_then(|()| writer.shutdown(Shutdown::Write));
    });
    let mut got = Vec::new();
    let read = (&s).read_to_end(&mut got);
    let _ = w.join();
    read.map(|_| got)
}

/// Polls until `data` comes back through `addr` byte-exact; how long that took.
pub fn healed(addr: SocketAddr, data: &[u8], within: Duration) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < within {
        if try_roundtrip(addr, data).is_ok_and(|got| got == data) {
            return Some(started.elapsed());
        }
        thread::sleep(Duration::from_millis(20));
    }
    None
}

/// A TCP relay in front of `target`, to break the path between two nodes on demand: `cut` resets
/// every connection through it; `freeze` stops forwarding without closing anything (a silent
/// partition: no FIN, no RST), `thaw` resumes it; `strand` freezes only the connections open now,
/// for good, while new ones pass.
pub struct Relay {
    pub addr: SocketAddr,
    frozen: Arc<AtomicBool>,
    stranded: Arc<Mutex<Vec<Arc<AtomicBool>>>>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    stop: Arc<AtomicBool>,
}

impl Relay {
    pub fn start(target: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind relay");
        let addr = listener.local_addr().expect("addr");
        let frozen = Arc::new(AtomicBool::new(false));
        let stranded = Arc::new(Mutex::new(Vec::new()));
        let conns = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (f, sd, c, st) = (
            frozen.clone(),
            stranded.clone(),
            conns.clone(),
            stop.clone(),
        );
        thread::spawn(move || {
            for client in listener.incoming() {
                if st.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(target) else {
                    continue;
                };
                let mut list = c.lock().expect("relay lock");
                for s in [&client, &server] {
                    if let Ok(clone) = s.try_clone() {
                        list.push(clone);
                    }
                }
                drop(list);
                let mine = Arc::new(AtomicBool::new(false));
                sd.lock().expect("relay lock").push(mine.clone());
                for (from, to) in [(&client, &server), (&server, &client)] {
                    let (Ok(from), Ok(to)) = (from.try_clone(), to.try_clone()) else {
                        continue;
                    };
                    let (frozen, mine) = (f.clone(), mine.clone());
                    thread::spawn(move || pump(from, to, &[&frozen, &mine]));
                }
            }
        });
        Relay {
            addr,
            frozen,
            stranded,
            conns,
            stop,
        }
    }

    pub fn cut(&self) {
        for s in self.conns.lock().expect("relay lock").drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    /// Resets the `n`th connection made through the relay (from 0), both of its sockets.
    pub fn cut_one(&self, n: usize) {
        let conns = self.conns.lock().expect("relay lock");
        for s in conns.iter().skip(2 * n).take(2) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    pub fn freeze(&self) {
        self.frozen.store(true, Ordering::SeqCst);
    }

    pub fn thaw(&self) {
        self.frozen.store(false, Ordering::SeqCst);
    }

    /// Freezes only the `n`th connection made through the relay (from 0), for good: a silent
    /// connection among live ones.
    pub fn strand_one(&self, n: usize) {
        if let Some(flag) = self.stranded.lock().expect("relay lock").get(n) {
            flag.store(true, Ordering::SeqCst);
        }
    }

    pub fn strand(&self) {
        for flag in self.stranded.lock().expect("relay lock").iter() {
            flag.store(true, Ordering::SeqCst);
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.thaw();
        for flag in self.stranded.lock().expect("relay lock").drain(..) {
            flag.store(false, Ordering::SeqCst);
        }
        self.cut();
        let _ = TcpStream::connect(self.addr);
    }
}

fn pump(mut from: TcpStream, mut to: TcpStream, frozen: &[&AtomicBool]) {
    let _ = from.set_read_timeout(Some(Duration::from_millis(20)));
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if frozen.iter().any(|f| f.load(Ordering::SeqCst)) {
            thread::sleep(Duration::from_millis(10));
            continue;
        }
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => break,
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

/// Sends 4 KiB through `s` to an echo backend and checks they come back byte-exact.
pub fn echo_once(s: &mut TcpStream, seed: u64) {
    let data = pattern(4096, seed);
    s.write_all(&data).expect("send");
    let mut got = vec![0u8; data.len()];
    s.read_exact(&mut got).expect("echo");
    assert_eq!(got, data);
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
pub fn closed_within(s: &mut (impl Read + Timeout), within: Duration) -> bool {
    s.set_timeout(Some(within)).expect("timeout");
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

/// Reads one handshake message from a blocking socket: the message and its bytes as sent.
pub fn read_handshake(
    s: &mut TcpStream,
) -> Result<(menet_actors::handshake::Message, Vec<u8>), String> {
    let mut raw = vec![0u8; 8];
    s.read_exact(&mut raw).map_err(|e| e.to_string())?;
    let len = usize::from(u16::from_be_bytes([raw[6], raw[7]]));
    raw.resize(8 + len, 0);
    s.read_exact(&mut raw[8..]).map_err(|e| e.to_string())?;
    match menet_actors::handshake::Message::parse(&raw) {
        Ok(Some((msg, _))) => Ok((msg, raw)),
        Ok(None) => Err("short message".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// A hand-made dialer: the v3 handshake to `addr` for `name`, proving `secret` (if any) and a
/// fresh identity (or `identity`). The socket, once WELCOME checked out; or why not.
pub fn raw_dial(
    addr: SocketAddr,
    name: &str,
    secret: Option<&str>,
    identity: Option<Arc<menet_actors::handshake::Identity>>,
) -> Result<RawPeer, String> {
    raw_dial_windows(addr, name, secret, identity, (1 << 20, 32 << 20))
}

/// A TCP connection to `addr` from source address `from` (127.0.0.2, say: a second host).
pub fn connect_from(from: std::net::IpAddr, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    socket.bind(&SocketAddr::new(from, 0).into())?;
    // Closed with a reset, never left in TIME_WAIT: a client port in TIME_WAIT (thousands of
    // them, in the hostile tests) keeps other tests' services from binding 0.0.0.0 on it.
    socket.set_linger(Some(Duration::ZERO))?;
    socket.connect(&addr.into())?;
    Ok(socket.into())
}

/// A dialer's HELLO for tunnel `name` (a fresh identity, the usual windows).
pub fn hello_bytes(name: &str) -> Vec<u8> {
    use menet_actors::handshake::{Dialer, Identity, Terms};
    use menet_actors::protocol::Windows;
    let terms = Terms {
        windows: Windows {
            stream: 1 << 20,
            tunnel: 32 << 20,
        },
        max_streams: 4096,
    };
    let transport = menet_actors::handshake::Transport::here(true);
    Dialer::new(name, terms, Arc::new(Identity::generate()), None, transport)
        .expect("a dialer")
        .hello()
        .to_vec()
}

/// [`raw_dial`] from source address `from`.
pub fn raw_dial_from(
    from: std::net::IpAddr,
    addr: SocketAddr,
    name: &str,
    identity: Option<Arc<menet_actors::handshake::Identity>>,
) -> Result<RawPeer, String> {
    let s = connect_from(from, addr).map_err(|e| e.to_string())?;
    raw_handshake(s, name, None, identity, (1 << 20, 32 << 20), false)
}

/// A raw dialer's connection asking to join its connected tunnel `name` as another lane
/// (HELLO transport bit 2), proving `identity`.
pub fn raw_dial_lane(
    addr: SocketAddr,
    name: &str,
    identity: Arc<menet_actors::handshake::Identity>,
) -> Result<RawPeer, String> {
    let s = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    raw_handshake(s, name, None, Some(identity), (1 << 20, 32 << 20), true)
}

/// [`raw_dial`], announcing `windows` (stream, tunnel).
pub fn raw_dial_windows(
    addr: SocketAddr,
    name: &str,
    secret: Option<&str>,
    identity: Option<Arc<menet_actors::handshake::Identity>>,
    windows: (u32, u32),
) -> Result<RawPeer, String> {
    let s = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    raw_handshake(s, name, secret, identity, windows, false)
}

/// The dialer's side of the handshake on a connected socket.
fn raw_handshake(
    mut s: TcpStream,
    name: &str,
    secret: Option<&str>,
    identity: Option<Arc<menet_actors::handshake::Identity>>,
    windows: (u32, u32),
    lane: bool,
) -> Result<RawPeer, String> {
    use menet_actors::handshake::{Dialer, Identity, Terms, Transport};
    use menet_actors::protocol::Windows;
    s.set_read_timeout(Some(IO_TIMEOUT)).ok();
    let terms = Terms {
        windows: Windows {
            stream: windows.0,
            tunnel: windows.1,
        },
        max_streams: 4096,
    };
    let identity = identity.unwrap_or_else(|| Arc::new(Identity::generate()));
    let mut d = Dialer::new(
        name,
        terms,
        identity,
        secret.map(menet_actors::cipher::Secret::new),
        Transport {
            lane,
            ..Transport::here(true)
        },
    )
    .map_err(|e| e.to_string())?;
    s.write_all(d.hello()).map_err(|e| e.to_string())?;
    let (msg, raw) = read_handshake(&mut s)?;
    let proof = d.on_challenge(msg, &raw).map_err(|e| e.to_string())?;
    s.write_all(&proof).map_err(|e| e.to_string())?;
    let (msg, _) = read_handshake(&mut s)?;
    let done = d.on_welcome(msg).map_err(|e| e.to_string())?;
    Ok(RawPeer::dialer(s, done.keys))
}

/// A hand-made acceptor without a secret: answers a dialer's handshake on `s`; whether it
/// completed.
pub fn raw_accept(s: &mut TcpStream) -> bool {
    use menet_actors::handshake::{Acceptor, Identity, Terms, Transport};
    use menet_actors::protocol::Windows;
    let Ok((hello, raw)) = read_handshake(s) else {
        return false;
    };
    let identity = Arc::new(Identity::generate());
    let Ok(mut a) = Acceptor::on_hello(hello, &raw, identity, Transport::here(true)) else {
        return false;
    };
    if s.write_all(a.challenge()).is_err() {
        return false;
    }
    let Ok((proof, _)) = read_handshake(s) else {
        return false;
    };
    if a.open_proof(&proof).is_err() || a.verify(None).is_err() {
        return false;
    }
    let terms = Terms {
        windows: Windows {
            stream: 1 << 20,
            tunnel: 32 << 20,
        },
        max_streams: 4096,
    };
    s.write_all(&a.welcome(None, terms)).is_ok()
}

/// One HTTP/1.1 request with extra header lines (each ending in `\r\n`): the status, the
/// response head and the body as JSON.
pub fn http_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &str,
    body: &str,
) -> (u16, String, Value) {
    let (status, head, body) = http_text(addr, method, path, headers, body);
    (
        status,
        head,
        serde_json::from_str(&body).unwrap_or(Value::Null),
    )
}

/// [`http_with`], the body as text (the metrics, the dashboard's files).
pub fn http_text(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &str,
    body: &str,
) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).expect("connect admin");
    s.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    let host = if headers.to_ascii_lowercase().contains("host:") {
        String::new()
    } else {
        format!("Host: {addr}\r\n")
    };
    let head = format!(
        "{method} {path} HTTP/1.1\r\nConnection: close\r\n{host}{headers}\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).expect("request");
    s.write_all(body.as_bytes()).expect("body");
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (status, head.to_owned(), body.to_owned())
}

/// Writes one tunnel frame to a blocking socket.
pub fn send_frame(s: &mut impl Write, frame: &menet_actors::protocol::Frame) {
    let mut buf = bytes::BytesMut::new();
    frame.encode(&mut buf);
    s.write_all(&buf).expect("send frame");
}

/// Reads tunnel frames from a blocking socket until `want` matches one (pings are answered);
/// `None` on close, error or timeout.
pub fn recv_frame_until(
    s: &mut (impl Read + Write + Timeout),
    within: Duration,
    mut want: impl FnMut(&menet_actors::protocol::Frame) -> bool,
) -> Option<menet_actors::protocol::Frame> {
    use menet_actors::protocol::{Frame, FrameCodec};
    use tokio_util::codec::Decoder;
    let deadline = Instant::now() + within;
    let mut buf = bytes::BytesMut::new();
    let mut chunk = [0u8; 65536];
    loop {
        while let Ok(Some(frame)) = FrameCodec.decode(&mut buf) {
            if let Frame::Ping(v) = frame {
                send_frame(s, &Frame::Pong(v));
                continue;
            }
            if want(&frame) {
                return Some(frame);
            }
        }
        let left = deadline.checked_duration_since(Instant::now())?;
        s.set_timeout(Some(left.max(Duration::from_millis(1))))
            .ok()?;
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// A relay that delays every chunk by `delay` in each direction (a long path), holding at most
/// `cap` chunks of up to 64 KiB in flight per direction; for one connection at a time.
pub struct DelayRelay {
    pub addr: SocketAddr,
}

impl DelayRelay {
    pub fn start(target: SocketAddr, delay: Duration, cap: usize) -> DelayRelay {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind relay");
        let addr = listener.local_addr().expect("addr");
        thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(near) = conn else { break };
                let Ok(far) = TcpStream::connect(target) else {
                    continue;
                };
                for (from, to) in [
                    (
                        near.try_clone().expect("clone"),
                        far.try_clone().expect("clone"),
                    ),
                    (far, near),
                ] {
                    let (tx, rx) = std::sync::mpsc::sync_channel::<(Instant, Vec<u8>)>(cap);
                    let mut from = from;
                    thread::spawn(move || {
                        let mut buf = vec![0u8; 64 * 1024];
                        while let Ok(n) = from.read(&mut buf) {
                            if n == 0
                                || tx
                                    .send((Instant::now() + delay, buf[..n].to_vec()))
                                    .is_err()
                            {
                                break;
                            }
                        }
                    });
                    let mut to = to;
                    thread::spawn(move || {
                        for (due, chunk) in rx {
                            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                                thread::sleep(wait);
                            }
                            if to.write_all(&chunk).is_err() {
                                break;
                            }
                        }
                        let _ = to.shutdown(Shutdown::Write);
                    });
                }
            }
        });
        DelayRelay { addr }
    }
}

/// Sets SO_LINGER 0 on a socket, so dropping it sends a reset instead of a FIN.
pub fn linger_zero(s: &TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on a socket we own, reading the struct for its size.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            std::ptr::addr_of!(linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}
