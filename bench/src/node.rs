//! The nodes the bench starts (a menet process each, on free loopback ports, driven over its
//! admin API) and what it reads of any process it starts: CPU time and resident memory.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread;

use menet_actors::cipher::CipherKind;

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
pub fn node_threads() -> Option<String> {
    std::env::args()
        .skip_while(|a| a != "--node-threads")
        .nth(1)
}

/// `--node-config FILE`, if given: the configuration file of the nodes started without one of
/// their own (to measure other settings, e.g. `[tunnel]` windows).
pub fn node_config() -> Option<String> {
    std::env::args().skip_while(|a| a != "--node-config").nth(1)
}

/// `target/release/menet` beside this binary, or `--menet PATH`.
pub fn menet_binary() -> PathBuf {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--menet") {
        let Some(path) = args.get(i + 1) else {
            eprintln!("--menet needs the path of a menet binary");
            std::process::exit(2);
        };
        return PathBuf::from(path);
    }
    let path = std::env::current_exe()
        .map(|exe| exe.with_file_name("menet"))
        .unwrap_or_else(|_| PathBuf::from("target/release/menet"));
    if !path.exists() {
        eprintln!(
            "{} not found: run `cargo build --release` first, or give --menet PATH",
            path.display()
        );
        std::process::exit(2);
    }
    path
}

pub fn raise_fd_limit() {
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

pub struct Node {
    /// The menet process.
    pub child: Child,
    /// Its admin API's address (from its log).
    pub admin: SocketAddr,
    /// Its tunnel port (from its log).
    pub tunnel: u16,
}

impl Node {
    pub fn start(menet: &PathBuf) -> Node {
        Node::start_env(menet, &[])
    }

    pub fn start_env(menet: &PathBuf, env: &[(&str, &str)]) -> Node {
        let config = node_config().unwrap_or_else(|| "/dev/null".to_owned());
        Node::start_args(menet, env, &["--config", &config])
    }

    pub fn start_args(menet: &PathBuf, env: &[(&str, &str)], args: &[&str]) -> Node {
        Node::start_at(menet, env, "127.0.0.1:0", "127.0.0.1:0", args)
    }

    /// A node on given admin and tunnel addresses (a restart on the same ports).
    pub fn start_at(
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
    pub fn start_command(mut cmd: Command, args: &[&str]) -> Node {
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

    pub fn post(&self, path: &str, body: &str) {
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
    pub fn get(&self, path: &str) -> String {
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
    pub fn carry(
        &self,
        far: &Node,
        name: &str,
        key: Option<&str>,
        target: SocketAddr,
    ) -> SocketAddr {
        self.carry_with(far, name, key.map(|k| (k, CipherKind::Rc4)), target)
    }

    /// [`Node::carry`] with a cipher.
    pub fn carry_with(
        &self,
        far: &Node,
        name: &str,
        key: Option<(&str, CipherKind)>,
        target: SocketAddr,
    ) -> SocketAddr {
        self.carry_on("t", far, name, key, target)
    }

    /// [`Node::carry_with`] over tunnel `tunnel`.
    pub fn carry_on(
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
    pub fn cpu_ms(&self) -> u64 {
        cpu_ms_of(self.child.id())
    }

    /// Minor page faults the process has taken (memory it touched afresh, e.g. pages its
    /// allocator gave back and took again).
    pub fn minor_faults(&self) -> u64 {
        minor_faults_of(self.child.id())
    }

    pub fn rss_kib(&self) -> u64 {
        rss_of(self.child.id())
    }
}

/// Makes the process `cmd` starts die with the benchmark (a node, a relay, rathole), so none
/// outlives an interrupted run.
pub fn dies_with_bench(cmd: &mut Command) {
    // SAFETY: prctl is async-signal-safe; it only sets the child's parent-death signal.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

/// CPU time (user and system) process `pid` has used, in ms (clock ticks apart).
fn cpu_ms_of(pid: u32) -> u64 {
    let (user, system) = cpu_split_ms_of(pid);
    user + system
}

/// CPU time the processes `pids` have used together, in ms: (in user space, in the kernel).
pub fn cpu_split_ms_of_all(pids: &[u32]) -> (u64, u64) {
    pids.iter()
        .map(|&p| cpu_split_ms_of(p))
        .fold((0, 0), |(u, k), (du, dk)| (u + du, k + dk))
}

/// CPU time process `pid` has used, in ms: (in user space, in the kernel).
pub fn cpu_split_ms_of(pid: u32) -> (u64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which ends with ')'): utime is the 12th, stime the 13th.
    let rest = stat.rsplit(')').next().unwrap_or_default();
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let ms = |i: usize| f.get(i).copied().unwrap_or(0) * 1000 / hz;
    (ms(11), ms(12))
}

/// CPU time the whole machine has spent busy (user, nice, system, irq, softirq over all cores),
/// in ms: on loopback the kernel charges a packet's receive to whichever process sent it, so
/// what two processes spent depends on who else is on the path; the machine's is what the path
/// cost (0 if it cannot be read).
pub fn machine_busy_ms() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return 0;
    };
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    [0, 1, 2, 5, 6]
        .iter()
        .map(|&i| f.get(i).copied().unwrap_or(0))
        .sum::<u64>()
        * 1000
        / hz
}

/// Minor page faults process `pid` has taken (0 if it cannot be read).
fn minor_faults_of(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // minflt is the 10th field, the 8th after the command name.
    let rest = stat.rsplit(')').next().unwrap_or_default();
    rest.split_whitespace()
        .nth(7)
        .and_then(|x| x.parse().ok())
        .unwrap_or(0)
}

/// Resident memory of process `pid`, in KiB (0 if it cannot be read).
pub fn rss_of(pid: u32) -> u64 {
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
