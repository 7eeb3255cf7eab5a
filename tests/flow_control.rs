//! Backpressure end to end: a client that stops reading stalls only its own stream, and memory
//! stays bounded while the backend would send without end.

mod common;

use std::io::{Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;

#[test]
fn a_stalled_reader_stalls_only_its_own_stream_and_memory_stays_bounded() {
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
