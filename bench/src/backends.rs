//! The backends the bench's clients reach, directly and through the tunnel: a bulk sender and
//! sink, an echo and a holder of idle connections, on one thread of their own.

use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::thread;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream as Stream;

use crate::{runtime, CHUNK};

/// Bulk downloads the backends are still sending: the next measure waits for none, so that a
/// download whose client went away (its tunnel or proxy still draining) does not slow it.
static BULK_SENDING: AtomicUsize = AtomicUsize::new(0);

#[derive(Clone, Copy)]
enum Backend {
    /// 'U': swallow until EOF, answer the count. 'D' + u64: send that many bytes, then close.
    Bulk,
    Echo,
    /// Answers one byte, then holds the connection open until the client closes it.
    Hold,
}

/// Starts the backends on one thread of their own (one async runtime), so that the load they add
/// is the same for the direct and the tunnelled measures.
pub fn backends() -> (SocketAddr, SocketAddr, SocketAddr) {
    let bind = || std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let listeners = [
        (bind(), Backend::Bulk),
        (bind(), Backend::Echo),
        (bind(), Backend::Hold),
    ];
    let addrs: Vec<SocketAddr> = listeners
        .iter()
        .map(|(l, _)| l.local_addr().expect("addr"))
        .collect();
    thread::spawn(move || {
        runtime().block_on(async move {
            for (l, kind) in listeners {
                l.set_nonblocking(true).expect("nonblocking");
                let l = tokio::net::TcpListener::from_std(l).expect("listener");
                tokio::spawn(async move {
                    while let Ok((s, _)) = l.accept().await {
                        let _ = s.set_nodelay(true);
                        tokio::spawn(backend(kind, s));
                    }
                });
            }
            std::future::pending::<()>().await
        })
    });
    (addrs[0], addrs[1], addrs[2])
}

async fn backend(kind: Backend, mut s: Stream) {
    let mut buf = vec![0u8; CHUNK];
    match kind {
        Backend::Bulk => {
            let Ok(cmd) = s.read_u8().await else { return };
            if cmd == b'U' {
                let mut total = 0u64;
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    total += n as u64;
                }
                let _ = s.write_all(&total.to_be_bytes()).await;
            } else {
                let Ok(mut left) = s.read_u64().await else {
                    return;
                };
                let _sending = Sending::start();
                while left > 0 {
                    let n = left.min(CHUNK as u64) as usize;
                    if s.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                    left -= n as u64;
                }
                let _ = s.shutdown().await;
            }
        }
        Backend::Echo => {
            while let Ok(n) = s.read(&mut buf).await {
                if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        }
        Backend::Hold => {
            if let Ok(b) = s.read_u8().await {
                if s.write_u8(b).await.is_ok() {
                    let _ = s.read(&mut buf).await;
                }
            }
        }
    }
}

/// One bulk download being sent, counted in [`BULK_SENDING`] while it lives.
struct Sending;

impl Sending {
    fn start() -> Sending {
        BULK_SENDING.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Sending
    }
}

impl Drop for Sending {
    fn drop(&mut self) {
        BULK_SENDING.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Waits (up to 10 s, then says so) until the backends send no bulk download any more.
pub fn wait_bulk_drained() {
    let deadline = Instant::now() + Duration::from_secs(10);
    while BULK_SENDING.load(std::sync::atomic::Ordering::Relaxed) > 0 {
        if Instant::now() > deadline {
            eprintln!("(bulk downloads still being sent after 10 s; measuring anyway)");
            return;
        }
        thread::sleep(Duration::from_millis(20));
    }
}
