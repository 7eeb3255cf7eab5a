//! Socket helpers shared by the tunnel and connection actors.

use std::cell::RefCell;
use std::io::{self, IoSlice};
use std::rc::Rc;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::Interest;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::tcp::OwnedReadHalf;

use crate::protocol::{put_data_header, set_frame_len, HEADER_LEN, MAX_DATA};

/// How many buffers one `writev` call takes at most.
const MAX_IOV: usize = 64;

/// Writes every buffer, in order, with vectored writes (no copy into a staging buffer).
pub async fn write_all_vectored<W: AsyncWrite + Unpin>(
    w: &mut W,
    mut bufs: Vec<Bytes>,
) -> io::Result<()> {
    let mut first = 0;
    while first < bufs.len() {
        if bufs[first].is_empty() {
            first += 1;
            continue;
        }
        let mut n = {
            let slices: Vec<IoSlice<'_>> = bufs[first..]
                .iter()
                .take(MAX_IOV)
                .map(|b| IoSlice::new(b))
                .collect();
            w.write_vectored(&slices).await?
        };
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        while n > 0 {
            let b = &mut bufs[first];
            if n >= b.len() {
                n -= b.len();
                first += 1;
            } else {
                b.advance(n);
                n = 0;
            }
        }
    }
    Ok(())
}

/// Writes what the socket takes now, without waiting, and drops it from `bufs`: `Ok(true)` once
/// everything is written. Most small writes complete here, which spares the caller a future
/// (and a poll of it) per write; what is left goes to [`write_all_vectored`].
pub fn try_write_now(
    w: &tokio::net::tcp::OwnedWriteHalf,
    bufs: &mut Vec<Bytes>,
) -> io::Result<bool> {
    if let [one] = bufs.as_mut_slice() {
        // A short exchange's one record: a plain `send`, without the vector's setup.
        let done = try_write_one(w, one)?;
        if done {
            bufs.clear();
        }
        return Ok(done);
    }
    bufs.retain(|b| !b.is_empty());
    while !bufs.is_empty() {
        let written = {
            // On the stack: this runs for every write of the data path.
            let mut slices = [IoSlice::new(&[]); MAX_IOV];
            let n = bufs.len().min(MAX_IOV);
            for (slice, b) in slices.iter_mut().zip(bufs.iter()) {
                *slice = IoSlice::new(b);
            }
            w.try_write_vectored(&slices[..n])
        };
        let mut n = match written {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) => return Err(e),
        };
        let mut done = 0;
        for b in bufs.iter_mut() {
            if n >= b.len() {
                n -= b.len();
                done += 1;
            } else {
                b.advance(n);
                break;
            }
        }
        bufs.drain(..done);
    }
    Ok(true)
}

/// [`try_write_now`] of one buffer: what the socket does not take stays in `buf`.
fn try_write_one(w: &tokio::net::tcp::OwnedWriteHalf, buf: &mut Bytes) -> io::Result<bool> {
    let written = try_write_some(w, buf)?;
    buf.advance(written);
    Ok(buf.is_empty())
}

/// Writes what the socket takes of `buf` now, without waiting: how many bytes it took (all of
/// them, or fewer when it would block). An error after some bytes went counts those; the next
/// write meets the error.
pub fn try_write_some(w: &tokio::net::tcp::OwnedWriteHalf, buf: &[u8]) -> io::Result<usize> {
    let mut written = 0;
    while written < buf.len() {
        match w.try_write(&buf[written..]) {
            Ok(0) if written == 0 => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) if n > 0 => written += n,
            Err(e) if written == 0 && e.kind() != io::ErrorKind::WouldBlock => return Err(e),
            _ => break,
        }
    }
    Ok(written)
}

/// What one read of a downstream socket gave.
pub enum Chunk {
    /// A DATA frame (payload at [`HEADER_LEN`]), in the read buffer the read was given;
    /// `drained` when the read came up short, so the socket had nothing more.
    Frame {
        drained: bool,
    },
    Eof,
}

thread_local! {
    /// This thread's read buffer, shared by its connections (an idle one holds nothing). A frame
    /// read into it is used where it lies when it goes straight to the tunnel's socket; one that
    /// is queued is taken out by [`take_frame`].
    static READ_BUFFER: Rc<RefCell<BytesMut>> = Rc::new(RefCell::new(BytesMut::new()));
}

/// This thread's read buffer, for [`try_read_data_frame`].
pub fn read_buffer() -> Rc<RefCell<BytesMut>> {
    READ_BUFFER.with(Rc::clone)
}

/// Reads at most `max` bytes that are ready now into `buffer` as a new DATA frame for `stream`,
/// with `spare` bytes of capacity left after them (for an AEAD tag); `WouldBlock` when nothing is
/// ready. The socket is read straight into the buffer, behind the frame's header.
/// A short read also clears the socket's readiness (through `try_io`, which keeps it if data came
/// in meanwhile), which saves the read that would only say `EAGAIN`.
pub fn try_read_data_frame(
    buffer: &mut BytesMut,
    rd: &OwnedReadHalf,
    stream: u32,
    max: usize,
    spare: usize,
) -> io::Result<Chunk> {
    let max = max.clamp(1, MAX_DATA);
    buffer.clear();
    buffer.reserve(HEADER_LEN + max + spare);
    put_data_header(buffer, stream, max);
    let mut got = None;
    let result = rd.as_ref().try_io(Interest::READABLE, || {
        // At most `max`: the spare capacity is the tag's.
        let n = rd.try_read_buf(&mut (&mut *buffer).limit(max))?;
        got = Some(n);
        if n > 0 && n < max {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    });
    let n = match (got, result) {
        (Some(n), _) => n,
        (None, Err(e)) => return Err(e),
        (None, Ok(n)) => n,
    };
    if n == 0 {
        buffer.clear();
        return Ok(Chunk::Eof);
    }
    crate::busy_poll::read_something(n, crate::busy_poll::ReadFrom::Stream);
    set_frame_len(buffer, n);
    Ok(Chunk::Frame { drained: n < max })
}

/// The frame in the read buffer `buffer`, as a frame of its own (to be queued). A frame that
/// fills less than half of the buffer is copied to a buffer of its own size, so a queued frame
/// never holds more than twice its bytes; a longer one leaves in the buffer itself (the thread
/// takes a new one at its next read).
pub fn take_frame(buffer: &mut BytesMut) -> BytesMut {
    if buffer.len() * 2 < buffer.capacity() {
        let exact = BytesMut::from(&buffer[..]);
        buffer.clear();
        exact
    } else {
        std::mem::take(buffer)
    }
}

/// Resets the TCP connection on `fd` now (a RST, not a FIN), for a stream that did not end
/// cleanly: a truncated transfer must not look complete.
///
/// `SO_LINGER` 0 makes the final close send a reset; disconnecting with `AF_UNSPEC` sends it at
/// once, before any half of the socket is dropped (dropping a write half would shut it down with
/// a FIN first). The descriptor stays open until its owners drop it.
pub fn reset_fd(fd: std::os::fd::RawFd) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: plain system calls on a descriptor the caller owns; the structs are read for the
    // lengths given. A failure (a socket already closed by the peer) changes nothing.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            std::ptr::addr_of!(linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
        let mut unspec: libc::sockaddr = std::mem::zeroed();
        unspec.sa_family = libc::AF_UNSPEC as libc::sa_family_t;
        libc::connect(
            fd,
            &unspec,
            std::mem::size_of::<libc::sockaddr>() as libc::socklen_t,
        );
    }
}

/// [`reset_fd`] on a whole socket (one that is dropped right after).
pub fn reset_now(sock: &impl std::os::fd::AsRawFd) {
    reset_fd(sock.as_raw_fd());
}

/// Sets `TCP_NOTSENT_LOWAT`: the kernel reports the socket writable, and takes more, only while
/// its unsent bytes are under `bytes`. What the kernel holds cannot be reordered, so this keeps a
/// small frame from waiting behind megabytes queued there. Best effort: a failure changes nothing.
pub fn set_notsent_lowat(sock: &impl std::os::fd::AsRawFd, bytes: u32) {
    let value = bytes as libc::c_int;
    // SAFETY: setsockopt reads `value` for the length given, on a socket we own.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_NOTSENT_LOWAT,
            std::ptr::addr_of!(value).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// Where a socket's bytes wait in the kernel, from its `SIOCOUTQ`, `SIOCOUTQNSD` and `SIOCINQ`:
/// what bounds a tunnel's queues is visible beside what the tunnel itself holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct SocketQueues {
    /// Written, not yet sent (the part `TCP_NOTSENT_LOWAT` bounds).
    pub unsent: u64,
    /// Sent, not yet acknowledged by the peer's kernel (in flight on the path).
    pub unacked: u64,
    /// Received, not yet read by this node.
    pub unread: u64,
}

/// `SIOCOUTQNSD` (linux/sockios.h): bytes in the send queue not yet sent.
const SIOCOUTQNSD: libc::c_ulong = 0x894B;

/// The kernel's queues of socket `fd` now; zeros for what the kernel will not tell.
pub fn socket_queues(fd: std::os::fd::RawFd) -> SocketQueues {
    let ask = |request: libc::c_ulong| -> u64 {
        let mut n: libc::c_int = 0;
        // SAFETY: these ioctls write one int through the pointer, on a descriptor we own.
        let rc = unsafe { libc::ioctl(fd, request as _, std::ptr::addr_of_mut!(n)) };
        if rc == 0 {
            u64::try_from(n).unwrap_or(0)
        } else {
            0
        }
    };
    let queued = ask(libc::TIOCOUTQ as libc::c_ulong);
    let unsent = ask(SIOCOUTQNSD);
    SocketQueues {
        unsent,
        unacked: queued.saturating_sub(unsent),
        unread: ask(libc::FIONREAD as libc::c_ulong),
    }
}

/// The addresses of this host's network interfaces (`getifaddrs`), to recognise a dial of this
/// node's own tunnel port by one of them. Empty if the kernel will not say.
pub fn interface_addresses() -> Vec<std::net::IpAddr> {
    let mut found = Vec::new();
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list` with a linked list we own until freeifaddrs.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return found;
    }
    let mut cur = list;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, not yet freed.
        let ifa = unsafe { &*cur };
        if !ifa.ifa_addr.is_null() {
            // SAFETY: ifa_addr points at a sockaddr whose family says its real type.
            let family = i32::from(unsafe { (*ifa.ifa_addr).sa_family });
            if family == libc::AF_INET {
                // SAFETY: AF_INET: the sockaddr is a sockaddr_in.
                let a = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                found.push(std::net::IpAddr::from(
                    u32::from_be(a.sin_addr.s_addr).to_be_bytes(),
                ));
            } else if family == libc::AF_INET6 {
                // SAFETY: AF_INET6: the sockaddr is a sockaddr_in6.
                let a = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in6) };
                found.push(std::net::IpAddr::from(a.sin6_addr.s6_addr));
            }
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: the list came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(list) };
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// Reads one frame of at most `max` bytes once the socket is readable, taken out of the
    /// thread's read buffer as a queued frame is.
    async fn frame(rd: &OwnedReadHalf, max: usize) -> BytesMut {
        let buffer = read_buffer();
        loop {
            rd.readable().await.expect("readable");
            let mut buffer = buffer.borrow_mut();
            match try_read_data_frame(&mut buffer, rd, 7, max, 16) {
                Ok(Chunk::Frame { .. }) => return take_frame(&mut buffer),
                Ok(Chunk::Eof) => panic!("closed"),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => panic!("{e}"),
            }
        }
    }

    #[test]
    fn a_frame_holds_its_bytes_and_at_most_as_much_again_whatever_read_before() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let mut client = tokio::net::TcpStream::connect(listener.local_addr().expect("addr"))
                .await
                .expect("connect");
            let (rd, _wr) = listener.accept().await.expect("accept").0.into_split();
            // A full frame leaves in the read buffer itself (no copy, no more capacity than asked).
            client.write_all(&[1u8; 60_000]).await.expect("write");
            let mut got = 0;
            while got < 60_000 {
                let f = frame(&rd, MAX_DATA).await;
                assert!(f.iter().skip(HEADER_LEN).all(|&b| b == 1));
                got += f.len() - HEADER_LEN;
            }
            // A short read is copied out: the thread keeps its frame-sized buffer.
            client.write_all(&[4u8; 100]).await.expect("write");
            let f = frame(&rd, MAX_DATA).await;
            assert_eq!(f.len(), HEADER_LEN + 100);
            assert!(
                f.capacity() <= 2 * f.len() + 16,
                "capacity {}",
                f.capacity()
            );
            // So a read of 3,000 bytes against a grant of 4,096 (more than half of what it
            // asked) must not take that buffer: it gets one near its own size.
            client.write_all(&[2u8; 3_000]).await.expect("write");
            let f = frame(&rd, 4_096).await;
            assert_eq!(f.len(), HEADER_LEN + 3_000);
            assert_eq!(
                &f[..4],
                &3_000u32.to_be_bytes(),
                "the header says what was read"
            );
            assert!(
                f.capacity() <= 2 * f.len() + 16,
                "capacity {}",
                f.capacity()
            );
            // And a full read of the whole buffer is handed over as it is.
            client.write_all(&[3u8; MAX_DATA]).await.expect("write");
            let f = frame(&rd, MAX_DATA).await;
            assert!(
                f.capacity() <= 2 * f.len() + 16,
                "capacity {}",
                f.capacity()
            );
        });
    }
}
