//! A listening socket whose accepted connections are not registered with the accepting thread's
//! reactor.
//!
//! A client of a local service is accepted on the Registry's thread and carried by its tunnel's
//! data thread. tokio's `TcpListener::accept` registers every accepted socket with the accepting
//! thread's reactor, and handing it over unregisters it again: two `epoll_ctl` calls per
//! connection for nothing (`strace -c` on node A: 4 of its 24 system calls per new connection).
//! Here the listening socket alone is registered (for readability), and `accept4` makes each
//! connection non-blocking and close-on-exec at once, with its peer's address: the thread that
//! carries it registers it once, and nobody asks the kernel for the peer's address again.

use std::io;
use std::mem::MaybeUninit;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, FromRawFd};
use std::task::{ready, Context, Poll};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// A listening socket, registered with the reactor of the thread that polls it.
pub struct ListenSocket {
    /// The socket, registered for readability only.
    fd: AsyncFd<std::net::TcpListener>,
    /// The address it is bound to: every connection reaches this one, unless it is a wildcard
    /// (then each connection's own address is asked for when needed).
    local: SocketAddr,
}

/// One accepted connection.
pub struct Accepted {
    /// The connection, non-blocking and registered nowhere.
    pub sock: std::net::TcpStream,
    /// Who connected (from `accept4` itself).
    pub peer: SocketAddr,
    /// The address the client reached, when the listener's own tells it (a specific address,
    /// not a wildcard).
    pub reached: Option<SocketAddr>,
}

impl ListenSocket {
    /// Takes over a bound, listening tokio socket; must run inside a runtime (the thread that
    /// will poll it).
    pub fn from_tokio(listener: tokio::net::TcpListener) -> io::Result<ListenSocket> {
        let std = listener.into_std()?;
        let local = std.local_addr()?;
        // SAFETY: the listener owns its descriptor, open until the AsyncFd drops it, and is
        // never swapped for another (only `get_ref` reaches it).
        let fd = unsafe { AsyncFd::register_with_interest(std, Interest::READABLE)? };
        Ok(ListenSocket { fd, local })
    }

    /// The address the socket is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The next connection, when one is waiting.
    pub fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<Accepted>> {
        loop {
            let mut guard = ready!(self.fd.poll_read_ready(cx))?;
            // `try_io` clears the readiness when the kernel says EAGAIN, and polls again.
            if let Ok(result) = guard.try_io(|inner| accept_now(inner.get_ref())) {
                let reached = (!self.local.ip().is_unspecified()).then_some(self.local);
                return Poll::Ready(result.map(|(sock, peer)| Accepted {
                    sock,
                    peer,
                    reached,
                }));
            }
        }
    }
}

/// `accept4` on `listener`: a non-blocking, close-on-exec connection and its peer's address.
fn accept_now(listener: &std::net::TcpListener) -> io::Result<(std::net::TcpStream, SocketAddr)> {
    let mut storage = MaybeUninit::<libc::sockaddr_storage>::zeroed();
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: accept4 writes at most `len` bytes of address into `storage`, which is that large,
    // and returns a new descriptor or -1.
    let fd = unsafe {
        libc::accept4(
            listener.as_raw_fd(),
            storage.as_mut_ptr().cast(),
            &mut len,
            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a connected socket just returned to us, owned by nothing else; the stream
    // closes it when dropped, also when the address below cannot be read.
    let sock = unsafe { std::net::TcpStream::from_raw_fd(fd) };
    // SAFETY: zeroed at first and written by the kernel: a valid sockaddr_storage either way.
    let storage = unsafe { storage.assume_init() };
    let peer = socket_addr(&storage, len)?;
    Ok((sock, peer))
}

/// The address in `storage` (of `len` bytes, as the kernel wrote it).
fn socket_addr(storage: &libc::sockaddr_storage, len: libc::socklen_t) -> io::Result<SocketAddr> {
    let len = len as usize;
    match libc::c_int::from(storage.ss_family) {
        libc::AF_INET if len >= std::mem::size_of::<libc::sockaddr_in>() => {
            // SAFETY: an AF_INET address of its full size; sockaddr_storage is aligned for it.
            let a =
                unsafe { &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Ok(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 if len >= std::mem::size_of::<libc::sockaddr_in6>() => {
            // SAFETY: an AF_INET6 address of its full size; sockaddr_storage is aligned for it.
            let a = unsafe {
                &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>()
            };
            Ok(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(a.sin6_addr.s6_addr),
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        family => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("accept: an address of family {family}, {len} bytes"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;

    async fn accept_one(bind: &str) -> (Accepted, std::net::TcpStream) {
        let tokio = tokio::net::TcpListener::bind(bind).await.expect("bind");
        let (accepted, client, _) = accept_on(tokio).await;
        (accepted, client)
    }

    /// One connection accepted by `tokio` taken over as a [`ListenSocket`]: what it accepted,
    /// the client's end, and the address the listener is bound to.
    async fn accept_on(
        tokio: tokio::net::TcpListener,
    ) -> (Accepted, std::net::TcpStream, SocketAddr) {
        let listener = ListenSocket::from_tokio(tokio).expect("take over");
        let client = std::net::TcpStream::connect(listener.local_addr()).expect("connect");
        let accepted = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            poll_fn(|cx| listener.poll_accept(cx)),
        )
        .await
        .expect("a connection within 5 s")
        .expect("accept");
        (accepted, client, listener.local_addr())
    }

    #[tokio::test]
    async fn an_accepted_connection_is_non_blocking_with_its_peer_and_the_address_it_reached() {
        let (accepted, client) = accept_one("127.0.0.1:0").await;
        assert_eq!(accepted.peer, client.local_addr().expect("client addr"));
        assert_eq!(
            accepted.reached,
            Some(client.peer_addr().expect("server addr"))
        );
        // Non-blocking: a read with nothing sent says WouldBlock at once.
        let mut b = [0u8; 1];
        let e = std::io::Read::read(&mut &accepted.sock, &mut b).expect_err("nothing sent");
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        // Close-on-exec.
        // SAFETY: F_GETFD on a descriptor we own.
        let flags = unsafe { libc::fcntl(accepted.sock.as_raw_fd(), libc::F_GETFD) };
        assert!(flags & libc::FD_CLOEXEC != 0, "flags {flags}");
        // Bytes go both ways once the carrying thread registers it.
        std::io::Write::write_all(&mut &client, b"ping").expect("send");
        let mut sock = tokio::net::TcpStream::from_std(accepted.sock).expect("register");
        let mut got = [0u8; 4];
        tokio::time::timeout(
            std::time::Duration::from_secs(5),
            tokio::io::AsyncReadExt::read_exact(&mut sock, &mut got),
        )
        .await
        .expect("the bytes within 5 s")
        .expect("read");
        assert_eq!(&got, b"ping");
    }

    #[tokio::test]
    async fn a_wildcard_listener_leaves_the_reached_address_to_be_asked() {
        let (accepted, _client) = accept_one("0.0.0.0:0").await;
        assert_eq!(accepted.reached, None);
        assert!(accepted.peer.ip().is_loopback(), "{}", accepted.peer);
    }

    #[tokio::test]
    async fn an_ipv6_peer_is_read_in_full() {
        let Ok(tokio) = tokio::net::TcpListener::bind("[::1]:0").await else {
            return; // no IPv6 loopback here
        };
        let (accepted, client, bound) = accept_on(tokio).await;
        assert_eq!(accepted.peer, client.local_addr().expect("client addr"));
        assert_eq!(accepted.reached, Some(bound));
    }
}
