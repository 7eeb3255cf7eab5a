//! Rows for services beyond one TCP backend: UDP datagrams per second and loss at a fixed rate
//! beside direct (64 B and 1,200 B), and what a PROXY header costs new connections.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::runtime::Runtime;

use crate::{exchanges_per_second, runtime, Node};

/// A UDP echo server on its own thread.
fn udp_echo() -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let addr = socket.local_addr().expect("addr");
    thread::spawn(move || {
        let mut buf = vec![0u8; 65_536];
        while let Ok((n, from)) = socket.recv_from(&mut buf) {
            let _ = socket.send_to(&buf[..n], from);
        }
    });
    addr
}

/// Sends `rate` datagrams of `size` bytes a second to `to` for `window` from four client
/// sockets (four flows), counting the echoes: (echoes a second, loss in percent).
fn udp_at_rate(to: SocketAddr, size: usize, rate: u64, window: Duration) -> (f64, f64) {
    let sent = Arc::new(AtomicU64::new(0));
    let got = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let clients: Vec<UdpSocket> = (0..4)
        .map(|_| {
            let s = UdpSocket::bind("127.0.0.1:0").expect("client");
            s.set_read_timeout(Some(Duration::from_millis(50)))
                .expect("timeout");
            s
        })
        .collect();
    let receivers: Vec<_> = clients
        .iter()
        .map(|c| {
            let (c, got, done) = (c.try_clone().expect("clone"), got.clone(), done.clone());
            thread::spawn(move || {
                let mut buf = vec![0u8; 65_536];
                while !done.load(Ordering::SeqCst) {
                    if c.recv_from(&mut buf).is_ok() {
                        got.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    let payload = vec![7u8; size];
    let started = Instant::now();
    // Paced in 1 ms ticks: each tick sends what the rate owes by then.
    while started.elapsed() < window {
        let owed = (started.elapsed().as_secs_f64() * rate as f64) as u64;
        while sent.load(Ordering::Relaxed) < owed {
            let n = sent.fetch_add(1, Ordering::Relaxed);
            let _ = clients[(n % 4) as usize].send_to(&payload, to);
        }
        thread::sleep(Duration::from_millis(1));
    }
    // The last echoes in flight.
    thread::sleep(Duration::from_millis(200));
    done.store(true, Ordering::SeqCst);
    for r in receivers {
        let _ = r.join();
    }
    let (sent, got) = (sent.load(Ordering::Relaxed), got.load(Ordering::Relaxed));
    let loss = 100.0 * (1.0 - got as f64 / sent.max(1) as f64);
    (got as f64 / window.as_secs_f64(), loss.max(0.0))
}

/// A TCP echo backend that first reads a PROXY v2 header (IPv4: 28 bytes).
fn proxy_echo() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    thread::spawn(move || {
        runtime().block_on(async move {
            l.set_nonblocking(true).expect("nonblocking");
            let l = tokio::net::TcpListener::from_std(l).expect("listener");
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let mut header = [0u8; 28];
                    if s.read_exact(&mut header).await.is_err() {
                        return;
                    }
                    let mut buf = vec![0u8; 4096];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        })
    });
    addr
}

/// The rows, through `a` (local) and `b` (remote) over tunnel `t`; `echo` is the plain TCP echo.
pub fn rows(
    rt: &Runtime,
    a: &Node,
    b: &Node,
    echo: SocketAddr,
    window: Duration,
    row: &dyn Fn(&str, f64, f64),
) {
    let target = udp_echo();
    let port = UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("free port")
        .port();
    a.post(
        "/service",
        &format!(
            r#"{{"name":"udp","protocol":"udp","type":"local","addr":["127.0.0.1","{port}"]}}"#
        ),
    );
    b.post(
        "/service",
        &format!(
            r#"{{"name":"udp","protocol":"udp","type":"remote","addr":["127.0.0.1","{}"]}}"#,
            target.port()
        ),
    );
    a.post("/bind", r#"{"tunnel":"t","service":"udp","type":"local"}"#);
    b.post("/bind", r#"{"tunnel":"t","service":"udp","type":"remote"}"#);
    let through = SocketAddr::from(([127, 0, 0, 1], port));
    for (size, rate) in [(64usize, 20_000u64), (1200, 10_000)] {
        let (d, dl) = udp_at_rate(target, size, rate, window);
        let (m, ml) = udp_at_rate(through, size, rate, window);
        row(
            &format!("UDP {size} B datagrams echoed/s, sent at {rate}/s (4 flows)"),
            d,
            m,
        );
        // A ratio of loss means little (direct is often 0): the two figures only.
        println!(
            "{:<64} {dl:>12.2} {ml:>12.2}",
            format!("  loss %, {size} B at {rate}/s")
        );
    }
    // Where menet dropped (the rest of the loss is the clients' and the backend's sockets).
    let dropped = |n: &Node, side: &str| -> u64 {
        let config: serde_json::Value =
            serde_json::from_str(&n.get("/config?connections=false")).unwrap_or_default();
        config["services"][side]["udp"]["datagrams"]["dropped"]
            .as_u64()
            .unwrap_or(0)
    };
    println!(
        "  (dropped by menet: node A {}, node B {})",
        dropped(a, "local"),
        dropped(b, "remote")
    );

    let plain = a.carry(b, "plain-conns", None, echo);
    let proxied_target = proxy_echo();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    a.post(
        "/service",
        &format!(r#"{{"name":"proxied","type":"local","addr":["127.0.0.1","{port}"]}}"#),
    );
    b.post(
        "/service",
        &format!(
            r#"{{"name":"proxied","proxy_protocol":"v2","type":"remote","addr":["127.0.0.1","{}"]}}"#,
            proxied_target.port()
        ),
    );
    a.post(
        "/bind",
        r#"{"tunnel":"t","service":"proxied","type":"local"}"#,
    );
    b.post(
        "/bind",
        r#"{"tunnel":"t","service":"proxied","type":"remote"}"#,
    );
    let proxied = SocketAddr::from(([127, 0, 0, 1], port));
    let (mut without, mut with) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        without.push(exchanges_per_second(rt, plain, 32, 32, true, window));
        with.push(exchanges_per_second(rt, proxied, 32, 32, true, window));
    }
    row(
        "new connections/s through menet: without / with a PROXY v2 header",
        crate::median(&mut without),
        crate::median(&mut with),
    );
}
