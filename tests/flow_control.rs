//! Backpressure end to end: a client that stops reading stalls only its own stream, and memory
//! stays bounded while the backend would send without end.

mod common;

use std::io::{Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

/// The tests of this file run in parallel and load both cores; the one measuring how far the
/// tunnel window grows on loopback runs alone (a loaded machine lengthens the quiet round trips
/// growth is measured against, which is the node's behaviour, not the one under test).
static MACHINE: RwLock<()> = RwLock::new(());

/// Shares the machine with the other sharing tests.
fn shared() -> RwLockReadGuard<'static, ()> {
    MACHINE.read().unwrap_or_else(|e| e.into_inner())
}

/// Has the machine to itself (among this file's tests).
fn alone() -> RwLockWriteGuard<'static, ()> {
    MACHINE.write().unwrap_or_else(|e| e.into_inner())
}

#[test]
fn a_stalled_reader_stalls_only_its_own_stream_and_memory_stays_bounded() {
    let _machine = shared();
    // First byte chooses: 'S' streams bytes forever, anything else echoes.
    let pushed = Arc::new(AtomicU64::new(0));
    let counter = pushed.clone();
    let backend = Backend::start(move |mut s| {
        let mut first = [0u8; 1];
        if s.read_exact(&mut first).is_err() {
            return;
        }
        if first[0] == b'S' {
            let chunk = pattern(64 * 1024, 9);
            while s.write_all(&chunk).is_ok() {
                counter.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            }
            return;
        }
        s.write_all(&first).ok();
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n) = s.read(&mut buf) {
            if n == 0 || s.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = s.shutdown(std::net::Shutdown::Write);
    });
    let (a, b) = (Node::start(), Node::start());
    let local = wire(&a, &b, backend.addr, Some("k"));
    // Warm up allocators and buffers before taking the baseline.
    let mut warm = pattern(4 << 20, 10);
    warm[0] = b'E';
    assert_eq!(roundtrip(local, &warm), warm);
    let baseline = a.rss_kib() + b.rss_kib();

    let mut stalled = connect(local);
    stalled.write_all(b"S").expect("start the flood");
    // Let the flood fill every window and socket buffer on the way.
    let mut last = 0;
    let settled = eventually(Duration::from_secs(10), || {
        thread::sleep(Duration::from_millis(300));
        let now = pushed.load(Ordering::Relaxed);
        let still = now == last && now > 0;
        last = now;
        still
    });
    assert!(settled, "the backend was held back by flow control");
    let held_back_at = pushed.load(Ordering::Relaxed);

    // Another stream on the same tunnel runs at full speed meanwhile.
    let mut data = pattern(32 << 20, 11);
    data[0] = b'E';
    let started = Instant::now();
    assert_eq!(roundtrip(local, &data), data);
    let took = started.elapsed();
    assert!(took < Duration::from_secs(10), "other stream took {took:?}");

    thread::sleep(Duration::from_millis(500));
    let growth = (a.rss_kib() + b.rss_kib()).saturating_sub(baseline);
    // About one stream window (1 MiB) is expected; 8 MiB leaves room for allocator slack.
    assert!(
        growth < 8 * 1024,
        "nodes grew by {growth} KiB while a reader stalled"
    );
    assert_eq!(
        pushed.load(Ordering::Relaxed),
        held_back_at,
        "the stalled stream stayed stalled"
    );

    // The stalled client still gets its bytes, in order, once it reads.
    let mut got = vec![0u8; 1 << 20];
    stalled.read_exact(&mut got).expect("read the backlog");
    let chunk = pattern(64 * 1024, 9);
    assert!(got.chunks(chunk.len()).all(|c| c == &chunk[..c.len()]));
}

/// While one stream saturates the tunnel, small exchanges on another stream of the same tunnel
/// keep going: queued bulk data never starves them.
#[test]
fn a_bulk_stream_does_not_starve_small_exchanges() {
    let _machine = shared();
    // First byte 'B': stream bytes until the client goes away. Otherwise echo.
    let backend = Backend::start(|mut s| {
        let mut first = [0u8; 1];
        if s.read_exact(&mut first).is_err() {
            return;
        }
        if first[0] == b'B' {
            let chunk = vec![7u8; 256 * 1024];
            while s.write_all(&chunk).is_ok() {}
            return;
        }
        let _ = s.write_all(&first);
        let mut buf = vec![0u8; 4096];
        while let Ok(n) = s.read(&mut buf) {
            if n == 0 || s.write_all(&buf[..n]).is_err() {
                break;
            }
        }
    });
    let (a, b) = (Node::start(), Node::start());
    let local = wire(&a, &b, backend.addr, None);
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = done.clone();
    let bulk = thread::spawn(move || {
        let mut s = connect(local);
        s.write_all(b"B").expect("start");
        let mut buf = vec![0u8; 256 * 1024];
        let mut total = 0u64;
        while !flag.load(Ordering::SeqCst) {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n as u64,
            }
        }
        total
    });
    thread::sleep(Duration::from_millis(300));
    let mut chat = connect(local);
    chat.write_all(b"E").expect("start");
    let mut one = [0u8; 1];
    chat.read_exact(&mut one).expect("echo");
    let mut worst = Duration::ZERO;
    for i in 0..300u32 {
        let req = i.to_be_bytes();
        let started = Instant::now();
        chat.write_all(&req).expect("request");
        let mut resp = [0u8; 4];
        chat.read_exact(&mut resp).expect("response");
        assert_eq!(resp, req);
        worst = worst.max(started.elapsed());
    }
    done.store(true, Ordering::SeqCst);
    let moved = bulk.join().expect("bulk");
    assert!(
        moved > 64 << 20,
        "the bulk stream was running: {moved} bytes"
    );
    assert!(
        worst < Duration::from_millis(250),
        "worst exchange took {worst:?}"
    );
}

/// A backend for the tests below: 'S' floods forever, 'D' + u32 sends that many bytes of
/// `pattern(n, 4)` and closes, anything else echoes.
fn flood_backend() -> Backend {
    Backend::start(|mut s| {
        let mut first = [0u8; 1];
        if s.read_exact(&mut first).is_err() {
            return;
        }
        match first[0] {
            b'S' => {
                let chunk = pattern(64 * 1024, 9);
                while s.write_all(&chunk).is_ok() {}
            }
            b'D' => {
                let mut len = [0u8; 4];
                if s.read_exact(&mut len).is_ok() {
                    let data = pattern(u32::from_be_bytes(len) as usize, 4);
                    let _ = s.write_all(&data);
                }
            }
            other => {
                let _ = s.write_all(&[other]);
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                let _ = s.shutdown(std::net::Shutdown::Write);
            }
        }
    })
}

/// Tunnel credit goes back as soon as a frame reaches its stream, so streams whose readers
/// stopped hold only their own windows, never the tunnel's.
#[test]
fn twenty_four_stalled_streams_leave_room_for_a_live_one() {
    let _machine = shared();
    let backend = flood_backend();
    let (a, b) = (Node::start(), Node::start());
    let local = wire(&a, &b, backend.addr, None);
    let before = a.rss_kib() + b.rss_kib();
    let stalled: Vec<_> = (0..24)
        .map(|_| {
            let mut s = connect(local);
            s.write_all(b"S").expect("flood");
            s
        })
        .collect();
    thread::sleep(Duration::from_secs(2));
    let data = pattern(8 << 20, 11);
    let mut live = data.clone();
    live[0] = b'E';
    let started = Instant::now();
    assert!(
        roundtrip(local, &live) == live,
        "the live stream completes, byte-exact"
    );
    let took = started.elapsed();
    let grown = (a.rss_kib() + b.rss_kib()).saturating_sub(before);
    eprintln!("24 stalled streams: a live 8 MiB echo took {took:?}; RSS both nodes +{grown} KiB");
    assert!(took < Duration::from_secs(10));
    // Each stalled stream holds its 1 MiB window and its sockets' buffers, on two nodes.
    assert!(grown < 24 * 4 * 1024, "RSS grew {grown} KiB");
    drop(stalled);
}

/// Through a 50 ms path, a stream's window grows past its initial 1 MiB (which alone would cap
/// it at 20 MB/s), and shrinks back once the stream has idled.
#[test]
fn a_window_grows_on_a_long_path_and_shrinks_when_idle() {
    let _machine = shared();
    let backend = flood_backend();
    let (a, b) = (Node::start(), Node::start());
    let relay = DelayRelay::start(b.tunnel, Duration::from_millis(25), 1024);
    dial_addr(&a, relay.addr, "tunnel1");
    let local = carry(&a, &b, "tunnel1", "service1", None, backend.addr);
    let len = 48 << 20;
    let mut s = connect(local);
    s.write_all(b"D").expect("cmd");
    s.write_all(&(len as u32).to_be_bytes()).expect("len");
    let started = Instant::now();
    let mut got = Vec::with_capacity(len);
    let mut buf = vec![0u8; 1 << 20];
    let mut widest = 0;
    let mut last_sample = Instant::now();
    while got.len() < len {
        let n = s.read(&mut buf).expect("download");
        assert!(n > 0, "closed early at {}", got.len());
        got.extend_from_slice(&buf[..n]);
        // Sampled, not after every read: a client busy asking would be the slow reader.
        if last_sample.elapsed() < Duration::from_millis(100) {
            continue;
        }
        last_sample = Instant::now();
        let cfg = a.config();
        if let Some(c) = cfg["connections"].as_object() {
            for conn in c.values() {
                widest = widest.max(conn["window"].as_u64().unwrap_or(0));
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let rate = len as f64 / secs / 1e6;
    eprintln!("48 MiB over 50 ms: {rate:.0} MB/s; widest window {widest} bytes");
    assert!(got == pattern(len, 4), "byte-exact");
    assert!(widest > 1 << 20, "the window grew: {widest}");
    // A 1 MiB window allows 21 MB/s over 50 ms; a quiet machine moves about 77 here, one with a
    // core taken by something else (the relay is a thread of this test) about 28.
    assert!(
        rate > 25.0,
        "{rate:.0} MB/s is about what a 1 MiB window allows"
    );
    // Idle for more than a second: back to the initial window.
    drop(s);
    let mut echo = connect(local);
    echo.write_all(b"E").expect("echo");
    let mut one = [0u8; 1];
    echo.read_exact(&mut one).expect("echo");
    thread::sleep(Duration::from_millis(1500));
    echo_once(&mut echo, 5);
    let windows: Vec<u64> = a.config()["connections"]
        .as_object()
        .map(|c| c.values().filter_map(|v| v["window"].as_u64()).collect())
        .unwrap_or_default();
    assert!(windows.iter().all(|&w| w <= 1 << 20), "{windows:?}");
}

/// `count` downloads of `len` bytes each from [`flood_backend`] through `local`, at once; each
/// thread checks that its bytes arrived as sent, up to the backend's close.
fn downloads(local: std::net::SocketAddr, count: usize, len: usize) -> Vec<thread::JoinHandle<()>> {
    (0..count)
        .map(|_| {
            thread::spawn(move || {
                let mut s = connect(local);
                s.write_all(b"D").expect("cmd");
                s.write_all(&(len as u32).to_be_bytes()).expect("len");
                let mut got = Vec::with_capacity(len);
                s.read_to_end(&mut got).expect("download");
                assert!(got == pattern(len, 4), "{} bytes, not as sent", got.len());
            })
        })
        .collect()
}

/// Four bulk downloads on one loopback tunnel: what the sending node has in its tunnel socket
/// (unsent and unacknowledged), and what the receiving node has not read of it, each stay
/// within the receiving node's tunnel window (on a quiet loopback, the four streams' initial
/// windows together: 1 MiB), so a small frame behind bulk on the same connection waits for about
/// that much at most; and `GET /config` and `/metrics` show each queue.
#[test]
fn bulk_keeps_at_most_the_tunnel_window_in_flight_and_unread_and_shows_where_it_waits() {
    let _machine = alone();
    let backend = flood_backend();
    let (a, b) = (Node::start(), Node::start());
    dial(&a, &b, "t");
    let local = carry(&a, &b, "t", "bulk", None, backend.addr);
    let readers = downloads(local, 4, 64 << 20);
    let (mut samples, mut widest_window, mut most_sending, mut most_unread) = (0, 0, 0, 0);
    let started = Instant::now();
    while !readers.iter().all(|r| r.is_finished()) && started.elapsed() < Duration::from_secs(60) {
        let (ta, tb) = (&a.config()["tunnels"]["t"], &b.config()["tunnels"]["t"]);
        let n = |v: &serde_json::Value| v.as_u64().expect("a number");
        widest_window = widest_window.max(n(&ta["receive_window"]));
        // B sends the downloads: what its socket holds, and what A has not read.
        most_sending = most_sending.max(n(&tb["socket"]["unsent"]) + n(&tb["socket"]["unacked"]));
        most_unread = most_unread.max(n(&ta["socket"]["unread"]));
        samples += 1;
        thread::sleep(Duration::from_millis(20));
    }
    for r in readers {
        r.join().expect("a download ended early");
    }
    eprintln!(
        "{samples} samples: at most {most_sending} bytes in B's tunnel socket, {most_unread} \
         unread in A's, A's tunnel window at most {widest_window}"
    );
    assert!(
        samples >= 5,
        "the downloads were too quick to sample: {samples}"
    );
    // Each queue holds at most a window (and the control frames and record overhead beside
    // it): B cannot send past A's credit, and A's credit goes back as it reads.
    for (what, bytes) in [
        ("in B's socket", most_sending),
        ("unread by A", most_unread),
    ] {
        assert!(
            bytes <= widest_window + 64 * 1024,
            "{bytes} bytes {what}, beyond a window of {widest_window}"
        );
    }
    // It stays at the streams' initial windows on a quiet machine (README). A loaded one (CI's
    // two cores, other test binaries' leftovers) lengthens the quiet round trips growth is
    // measured against, and growth stops at eight bandwidth-delay products of that: a loose
    // bound here, a quarter of the 64 MiB maximum, half the 32 MiB every tunnel used to start
    // with.
    assert!(
        widest_window <= 16 << 20,
        "on loopback the tunnel window stays small: {widest_window}"
    );
    let (status, _, metrics) = http_text(a.admin, "GET", "/metrics", "", "");
    assert_eq!(status, 200);
    for series in [
        "menet_tunnel_receive_window_bytes{tunnel=\"t\"}",
        "menet_tunnel_socket_unsent_bytes{tunnel=\"t\"}",
        "menet_tunnel_socket_unacked_bytes{tunnel=\"t\"}",
        "menet_tunnel_socket_unread_bytes{tunnel=\"t\"}",
    ] {
        assert!(metrics.contains(series), "{series} missing from /metrics");
    }
}

/// Eight downloads at once on one tunnel: the receiving node's tunnel window covers their eight
/// initial stream windows (2 MiB) as soon as they run, instead of holding them to less and
/// waiting for growth that a busy machine's guards refuse; every byte arrives as sent.
#[test]
fn eight_downloads_get_a_tunnel_window_covering_their_stream_windows() {
    let _machine = shared();
    let backend = flood_backend();
    let (a, b) = (Node::start(), Node::start());
    dial(&a, &b, "t");
    let local = carry(&a, &b, "t", "bulk", None, backend.addr);
    let readers = downloads(local, 8, 8 << 20);
    let mut widest = 0;
    let started = Instant::now();
    while !readers.iter().all(|r| r.is_finished()) && started.elapsed() < Duration::from_secs(60) {
        let window = a.config()["tunnels"]["t"]["receive_window"].as_u64();
        widest = widest.max(window.expect("a number"));
        thread::sleep(Duration::from_millis(10));
    }
    for r in readers {
        r.join().expect("a download");
    }
    assert!(
        widest >= 8 * 256 * 1024,
        "the tunnel window stayed at {widest} beside eight streams"
    );
}

/// A client that resets its connection resets the backend's too: an aborted upload never looks
/// complete to the server.
#[test]
fn a_client_reset_reaches_the_backend_as_a_reset() {
    let _machine = shared();
    use std::sync::Mutex;
    let ended: Arc<Mutex<Vec<bool>>> = Arc::new(Mutex::new(Vec::new()));
    let sink = ended.clone();
    let backend = Backend::start(move |mut s| {
        let mut buf = [0u8; 4096];
        let reset = loop {
            match s.read(&mut buf) {
                Ok(0) => break false,
                Ok(_) => {}
                Err(_) => break true,
            }
        };
        sink.lock().expect("lock").push(reset);
    });
    let (a, b) = (Node::start(), Node::start());
    let local = wire(&a, &b, backend.addr, None);
    // Clean: a FIN.
    let mut s = connect(local);
    s.write_all(b"complete").expect("send");
    s.shutdown(std::net::Shutdown::Write).expect("fin");
    let _ = s.read(&mut [0u8; 1]);
    // Aborted: SO_LINGER 0, then close.
    let s = connect(local);
    (&s).write_all(&pattern(100_000, 1)).expect("send");
    thread::sleep(Duration::from_millis(200));
    linger_zero(&s);
    drop(s);
    assert!(eventually(Duration::from_secs(3), || ended
        .lock()
        .expect("lock")
        .len()
        == 2));
    assert_eq!(*ended.lock().expect("lock"), vec![false, true]);
}
