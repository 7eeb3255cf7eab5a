//! rathole beside menet (`--rathole PATH`): the bench writes a rathole server and client
//! configuration for the same backends and runs the same rows through them, so every figure
//! stands beside the peer users would pick instead. rathole's server takes the clients (as
//! menet's node A does), its client dials the server (directly, or through the delay relay) and
//! reaches the backends (as node B does). Default transport (plain TCP, no encryption): rathole's
//! own default; menet's tunnel is sealed. With `--rathole-noise` rathole's Noise transport
//! (`Noise_NK_25519_ChaChaPoly_BLAKE2s`, a key pair from `rathole --genkey`) carries its
//! connections instead: sealed like menet's tunnel, for a comparison at equal security.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// `--rathole PATH`, if given.
pub fn binary() -> Option<PathBuf> {
    std::env::args()
        .skip_while(|a| a != "--rathole")
        .nth(1)
        .map(PathBuf::from)
}

/// `--rathole-noise`: rathole's connections sealed by its Noise transport.
pub fn noise() -> bool {
    std::env::args().any(|a| a == "--rathole-noise")
}

/// What the figures through rathole are labelled with: its transport.
pub fn label() -> &'static str {
    if noise() {
        "rathole+noise"
    } else {
        "rathole"
    }
}

/// A fresh X25519 key pair from `rathole --genkey`: (private, public), base64.
fn genkey(path: &Path) -> (String, String) {
    let out = Command::new(path)
        .arg("--genkey")
        .output()
        .expect("rathole --genkey");
    let text = String::from_utf8_lossy(&out.stdout);
    let key_after = |label: &str| {
        text.split(label)
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("rathole --genkey printed no {label}: {text}"))
            .to_owned()
    };
    (key_after("Private Key:"), key_after("Public Key:"))
}

/// A rathole server and client carrying named services; both killed when dropped.
pub struct Rathole {
    /// The server process (where clients connect).
    server: Child,
    /// The client process (which reaches the backends).
    client: Child,
    /// The server's port for each service, in the order given.
    pub ports: Vec<SocketAddr>,
    /// The two configuration files, removed when dropped.
    files: [PathBuf; 2],
}

/// A loopback port free now (bound, then let go).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

fn spawn(path: &Path, flag: &str, config: &Path, wrap: &[String]) -> Child {
    let mut cmd = match wrap.split_first() {
        Some((tool, args)) => {
            let mut cmd = Command::new(tool);
            cmd.args(args).arg(path);
            cmd
        }
        None => Command::new(path),
    };
    cmd.args([flag, config.to_str().expect("path")])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    crate::dies_with_bench(&mut cmd);
    cmd.spawn().expect("start rathole")
}

impl Rathole {
    /// Starts a server and a client for `services` (name, backend). `via`: a port that relays
    /// to the server's control port (the long link), given the control port chosen here.
    pub fn start(
        path: &Path,
        services: &[(&str, SocketAddr)],
        via: impl FnOnce(u16) -> Option<u16>,
    ) -> Rathole {
        Rathole::start_wrapped(path, services, via, &[])
    }

    /// As [`Rathole::start`], the server run by the tool `wrap` names (a command and its
    /// arguments, before rathole's path).
    pub fn start_wrapped(
        path: &Path,
        services: &[(&str, SocketAddr)],
        via: impl FnOnce(u16) -> Option<u16>,
        wrap: &[String],
    ) -> Rathole {
        let control = free_port();
        let dial = via(control).unwrap_or(control);
        let ports: Vec<SocketAddr> = services
            .iter()
            .map(|_| SocketAddr::from(([127, 0, 0, 1], free_port())))
            .collect();
        let mut server = format!(
            "[server]\nbind_addr = \"127.0.0.1:{control}\"\ndefault_token = \"menet-bench\"\n"
        );
        let mut client = format!(
            "[client]\nremote_addr = \"127.0.0.1:{dial}\"\ndefault_token = \"menet-bench\"\n"
        );
        if noise() {
            let (private, public) = genkey(path);
            server += &format!(
                "[server.transport]\ntype = \"noise\"\n[server.transport.noise]\nlocal_private_key = \"{private}\"\n"
            );
            client += &format!(
                "[client.transport]\ntype = \"noise\"\n[client.transport.noise]\nremote_public_key = \"{public}\"\n"
            );
        }
        for ((name, backend), port) in services.iter().zip(&ports) {
            server += &format!("[server.services.{name}]\nbind_addr = \"{port}\"\n");
            client += &format!("[client.services.{name}]\nlocal_addr = \"{backend}\"\n");
        }
        let dir = std::env::temp_dir();
        let id = format!("{}-{control}", std::process::id());
        let files = [
            dir.join(format!("rathole-server-{id}.toml")),
            dir.join(format!("rathole-client-{id}.toml")),
        ];
        std::fs::write(&files[0], server).expect("rathole server config");
        std::fs::write(&files[1], client).expect("rathole client config");
        let server = spawn(path, "-s", &files[0], wrap);
        thread::sleep(Duration::from_millis(200));
        let client = spawn(path, "-c", &files[1], &[]);
        Rathole {
            server,
            client,
            ports,
            files,
        }
    }

    /// Waits until a byte sent to the service at `index` (an echo) comes back.
    pub fn wait_echo(&self, index: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let echoed = TcpStream::connect(self.ports[index]).and_then(|mut s| {
                s.set_read_timeout(Some(Duration::from_secs(1)))?;
                s.write_all(b"x")?;
                let mut b = [0u8; 1];
                s.read_exact(&mut b)
            });
            if echoed.is_ok() {
                return;
            }
            thread::sleep(Duration::from_millis(100));
        }
        panic!("rathole did not carry the echo service within 10 s");
    }

    /// The server's process id.
    pub fn server_pid(&self) -> u32 {
        self.server.id()
    }

    /// The server's and the client's process ids.
    pub fn pids(&self) -> [u32; 2] {
        [self.server.id(), self.client.id()]
    }

    /// Resident memory of the server and the client, in KiB.
    pub fn rss_kib(&self) -> u64 {
        [self.server.id(), self.client.id()]
            .iter()
            .map(|pid| crate::rss_of(*pid))
            .sum()
    }
}

impl Drop for Rathole {
    fn drop(&mut self) {
        for child in [&mut self.server, &mut self.client] {
            let _ = child.kill();
            let _ = child.wait();
        }
        for f in &self.files {
            let _ = std::fs::remove_file(f);
        }
    }
}
