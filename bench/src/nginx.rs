//! nginx in the bench: the web server wrk loads (`real_clients`), and nginx's stream module as
//! the simplest proxies there are, to read menet's and rathole's rows against: two of them in a
//! chain forwarding plain TCP ([`forward_chain`]), or with TLS 1.3 between them
//! ([`TlsChain`], the long link's). They move each connection's bytes as they come, one event
//! loop in C each: no tunnel, no framing, no flow control of their own. Present only when nginx
//! is on the PATH (and, for the chains, has its stream module: `nginx -V` says how it was built).

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::{dies_with_bench, rathole};

/// An nginx process (one process: no master, no daemon) on a free loopback port, its
/// configuration and files in a directory of its own; killed and the directory removed when
/// dropped.
pub struct Nginx {
    /// The nginx process.
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its configuration, the files it serves and its logs.
    dir: PathBuf,
}

impl Nginx {
    /// nginx serving `/1k` (1,024 bytes).
    pub fn start() -> Nginx {
        Nginx::run("web", |d, port| {
            std::fs::write(d.join("1k"), [b'x'; 1024]).expect("the served file");
            let d = d.display();
            // One worker process: the load a single-process backend puts on the cores.
            format!(
                "events {{ worker_connections 4096; }}\n\
                 http {{ access_log off; keepalive_requests 1000000;\n\
                 server {{ listen 127.0.0.1:{port} backlog=4096; root {d}; }} }}\n"
            )
        })
    }

    /// nginx forwarding each TCP connection to `to` (its stream module), inside TLS 1.3 when
    /// `sealed` (`proxy_ssl`), or None when this nginx has no stream module. `hop` names its
    /// directory.
    fn forwarder(hop: &str, to: SocketAddr, sealed: bool) -> Option<Nginx> {
        let load = stream_module()?;
        let seal = if sealed {
            "proxy_ssl on; proxy_ssl_protocols TLSv1.3; "
        } else {
            ""
        };
        Some(Nginx::run(hop, |_, port| {
            format!(
                "{load}events {{ worker_connections 4096; }}\n\
                 stream {{ server {{ listen 127.0.0.1:{port} backlog=4096; proxy_pass {to};\n\
                 {seal}proxy_half_close on; }} }}\n"
            )
        }))
    }

    /// nginx taking TLS 1.3 connections and forwarding what they carry to `to`, with a fresh
    /// self-signed certificate (`openssl req`), or None without a stream module or `openssl`.
    fn tls_server(hop: &str, to: SocketAddr) -> Option<Nginx> {
        let load = stream_module()?;
        let mut certified = true;
        let nginx = Nginx::run(hop, |dir, port| {
            certified = Command::new("openssl")
                .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
                .args(["ec_paramgen_curve:P-256", "-nodes", "-days", "1"])
                .args(["-subj", "/CN=menet-bench", "-keyout"])
                .arg(dir.join("key.pem"))
                .arg("-out")
                .arg(dir.join("cert.pem"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            let d = dir.display();
            format!(
                "{load}events {{ worker_connections 4096; }}\n\
                 stream {{ server {{ listen 127.0.0.1:{port} ssl backlog=4096; proxy_pass {to};\n\
                 ssl_certificate {d}/cert.pem; ssl_certificate_key {d}/key.pem;\n\
                 ssl_protocols TLSv1.3; proxy_half_close on; }} }}\n"
            )
        });
        certified.then_some(nginx)
    }

    /// The process's id, for its CPU time.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Starts nginx with the configuration `body(dir, port)` returns (after the lines that keep
    /// it one process in the foreground).
    fn run(name: &str, body: impl FnOnce(&Path, u16) -> String) -> Nginx {
        let port = rathole::free_port();
        let dir =
            std::env::temp_dir().join(format!("menet-bench-nginx-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("nginx directory");
        let d = dir.display();
        let conf = format!(
            "master_process off; daemon off; pid {d}/nginx.pid; error_log {d}/error.log;\n{}",
            body(&dir, port)
        );
        // nginx wants `load_module` before anything else: such a line goes to the front.
        let (load, rest): (Vec<&str>, Vec<&str>) =
            conf.lines().partition(|l| l.starts_with("load_module"));
        let conf = load.into_iter().chain(rest).collect::<Vec<_>>().join("\n");
        std::fs::write(dir.join("nginx.conf"), conf).expect("nginx configuration");
        let mut cmd = Command::new("nginx");
        cmd.arg("-c")
            .arg(dir.join("nginx.conf"))
            .arg("-p")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        dies_with_bench(&mut cmd);
        let child = cmd.spawn().expect("start nginx");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        Nginx { child, addr, dir }
    }
}

/// The `load_module` line nginx needs for its stream module ("" when it is built in), or None
/// when this nginx has none (`nginx -V` lists how it was built).
fn stream_module() -> Option<String> {
    let out = Command::new("nginx").arg("-V").output().ok()?;
    let built = String::from_utf8_lossy(&out.stderr).into_owned();
    let flags: Vec<&str> = built.split_whitespace().collect();
    if flags.contains(&"--with-stream") {
        return Some(String::new());
    }
    if !flags.contains(&"--with-stream=dynamic") {
        return None;
    }
    let modules = flags
        .iter()
        .find_map(|f| f.strip_prefix("--modules-path="))
        .unwrap_or("/usr/lib/nginx/modules");
    let module = Path::new(modules).join("ngx_stream_module.so");
    module
        .exists()
        .then(|| format!("load_module {};\n", module.display()))
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Two nginx stream proxies in a chain in front of `backend` (wrk's side forwarding to the
/// backend's side, which forwards to the backend), or None when nginx has no stream module.
/// They forward each connection's bytes as they come: no tunnel, no framing, no seal, one
/// event loop in C each. So what wrk gets through them is what any proxy of two processes on
/// the path gets on these cores, however little it does per request: the floor under what a
/// tunnel's two nodes cost, beside which to read menet's and rathole's rows.
pub fn forward_chain(backend: SocketAddr) -> Option<[Nginx; 2]> {
    let far = Nginx::forwarder("far", backend, false)?;
    let near = Nginx::forwarder("near", far.addr, false)?;
    for hop in [&far, &near] {
        wait_listening(hop.addr, "an nginx stream proxy");
    }
    Some([near, far])
}

/// Waits until `addr` accepts a TCP connection.
fn wait_listening(addr: SocketAddr, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(addr).is_err() {
        assert!(
            Instant::now() < deadline,
            "{what} did not listen at {addr} within 10 s"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// Two nginx stream proxies with TLS 1.3 between them: wrk's or the bench's side dials the
/// near one, which carries each connection sealed (AES-256-GCM, as menet's tunnel) to the far
/// one through `link` (a relay in front of the port it is given; its process and port), which
/// forwards to `backend`. One TLS connection per connection: the simplest sealed path of two
/// processes. None without nginx's stream module or `openssl`.
pub struct TlsChain<L> {
    /// The proxy the client dials.
    pub near: Nginx,
    /// What carries the sealed connections between them (a relay), dropped before `far`.
    _link: L,
    /// The proxy that opens the TLS and reaches the backend.
    pub far: Nginx,
}

impl<L> TlsChain<L> {
    pub fn start(backend: SocketAddr, link: impl FnOnce(u16) -> (L, u16)) -> Option<TlsChain<L>> {
        let far = Nginx::tls_server("tls-far", backend)?;
        wait_listening(far.addr, "an nginx TLS server");
        let (link, port) = link(far.addr.port());
        let near = Nginx::forwarder("tls-near", SocketAddr::from(([127, 0, 0, 1], port)), true)?;
        wait_listening(near.addr, "an nginx TLS client");
        Some(TlsChain {
            near,
            _link: link,
            far,
        })
    }

    /// Both processes' ids.
    pub fn pids(&self) -> [u32; 2] {
        [self.near.pid(), self.far.pid()]
    }
}
