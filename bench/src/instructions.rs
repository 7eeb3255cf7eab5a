//! Instructions node A runs per 64 B exchange and per new connection, counted by callgrind
//! (`valgrind --tool=callgrind`, when installed): unlike wall-clock time on a shared machine,
//! the count comes out the same run after run (within a fraction of a percent), so a change to
//! the data path can be weighed by it. User-space instructions only: the kernel's share (system
//! calls, wake-ups) is not in it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::Node;

/// Exchanges and connections counted (node A runs about 50 x slower under callgrind).
const EXCHANGES: usize = 3_000;
const CONNECTIONS: usize = 1_000;

/// Prints the two rows (with rathole's server beside them, given `--rathole`), or why they are
/// skipped.
pub fn rows(menet: &PathBuf, echo: SocketAddr) {
    let installed = Command::new("callgrind_control")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !installed {
        println!("(valgrind not installed: instructions per exchange not counted)");
        return;
    }
    let out = std::env::temp_dir().join(format!("menet-callgrind-{}", std::process::id()));
    let mut cmd = Command::new("valgrind");
    cmd.arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", out.display()))
        .arg(menet);
    // `--node-config FILE` applies here too (e.g. `[tunnel] encrypt = false`).
    let config = crate::node_config().unwrap_or_else(|| "/dev/null".to_owned());
    let a = Node::start_command(cmd, &["--config", &config]);
    let b = Node::start(menet);
    a.post(
        "/tunnel",
        &format!(r#"{{"name":"t","dest":["127.0.0.1","{}"]}}"#, b.tunnel),
    );
    let local = a.carry(&b, "echo", None, echo);
    let pid = a.child.id();
    let per_exchange = count(pid, &out, EXCHANGES, || pinger(local));
    let per_connection = count(pid, &out, CONNECTIONS, || connector(local));
    drop((a, b));
    remove_dumps(&out);
    // rathole's server, where its clients connect (as node A), counted the same way.
    let rathole = crate::rathole::binary().map(|path| {
        let r = crate::rathole::Rathole::start_wrapped(
            &path,
            &[("echo", echo)],
            |_| None,
            &[
                "valgrind".to_owned(),
                "--tool=callgrind".to_owned(),
                format!("--callgrind-out-file={}", out.display()),
            ],
        );
        r.wait_echo(0);
        let pid = r.server_pid();
        let counts = (
            count(pid, &out, EXCHANGES, || pinger(r.ports[0])),
            count(pid, &out, CONNECTIONS, || connector(r.ports[0])),
        );
        drop(r);
        remove_dumps(&out);
        counts
    });
    let column = |n: Option<u64>| n.map_or(String::new(), |n| format!(" {:>7} {n:>12}", ""));
    println!(
        "{:<64} {:>12} {per_exchange:>12}{}\n{:<64} {:>12} {per_connection:>12}{}",
        "instructions per 64 B exchange on node A (callgrind)",
        "-",
        column(rathole.map(|r| r.0)),
        "instructions per new connection on node A (32 B echo)",
        "-",
        column(rathole.map(|r| r.1)),
    );
}

/// One 64 B exchange per call, on one connection to `addr`.
fn pinger(addr: SocketAddr) -> impl FnMut() {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_nodelay(true).expect("nodelay");
    let mut reply = [0u8; 64];
    move || {
        s.write_all(&[7u8; 64]).expect("ping");
        s.read_exact(&mut reply).expect("pong");
    }
}

/// One connection per call to `addr`: 32 B echoed, then closed.
fn connector(addr: SocketAddr) -> impl FnMut() {
    move || {
        let mut s = TcpStream::connect(addr).expect("connect");
        s.set_nodelay(true).expect("nodelay");
        s.write_all(&[9u8; 32]).expect("request");
        let mut reply = [0u8; 32];
        s.read_exact(&mut reply).expect("reply");
    }
}

/// Instructions process `pid` ran per call of the closure `make` returns, over `n` calls after a
/// tenth more to warm up: counters zeroed, the calls, a dump, its total.
fn count<F: FnMut()>(pid: u32, out: &Path, n: usize, make: impl FnOnce() -> F) -> u64 {
    let mut once = make();
    for _ in 0..n / 10 {
        once();
    }
    let control = |flag: &str| {
        let done = Command::new("callgrind_control")
            .args([flag, &pid.to_string()])
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(done, "callgrind_control {flag} failed");
    };
    control("-z");
    for _ in 0..n {
        once();
    }
    // Let the last replies' credit and the connections' ends run their course.
    std::thread::sleep(Duration::from_millis(200));
    control("-d");
    // Dumps are numbered from 1: the last is this one.
    let dump = (1..)
        .map(|k| PathBuf::from(format!("{}.{k}", out.display())))
        .take_while(|p| p.exists())
        .last()
        .expect("callgrind dumped its counts");
    let total = std::fs::read_to_string(&dump)
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("totals: "))
                .and_then(|t| t.trim().parse::<u64>().ok())
        })
        .expect("a callgrind dump with its totals");
    total / n as u64
}

/// Removes callgrind's files for `out`: the dumps (numbered from 1) and the one written at exit.
fn remove_dumps(out: &Path) {
    let _ = std::fs::remove_file(out);
    for k in 1..=4 {
        let _ = std::fs::remove_file(format!("{}.{k}", out.display()));
    }
}
