//! A hand-made tunnel peer's socket after the handshake: the frames it writes go out sealed in
//! records and what it reads comes back opened (when the handshake agreed to seal, as it does by
//! default), so a test speaks frames to a node whatever its transport.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use menet_actors::protocol::HEADER_LEN;
use menet_actors::record::{RekeyPolicy, SealedFrameCodec, Sealer, SessionKeys, MAX_RECORD};
use tokio_util::codec::Decoder;

/// A socket whose reads can time out: a client's, or a raw peer's.
pub trait Timeout {
    fn set_timeout(&self, within: Option<Duration>) -> io::Result<()>;
}

impl Timeout for TcpStream {
    fn set_timeout(&self, within: Option<Duration>) -> io::Result<()> {
        self.set_read_timeout(within)
    }
}

/// The socket of a raw dialer once its handshake is done.
pub struct RawPeer {
    /// The tunnel connection.
    sock: TcpStream,
    /// Seals what the test writes, when the tunnel is sealed; shared with a clone, and held
    /// while a record is written, so records leave in the order they were numbered.
    sealer: Option<Arc<Mutex<Sealer>>>,
    /// Opens what the node sends, when the tunnel is sealed.
    codec: Option<SealedFrameCodec>,
    /// Bytes read, not yet opened.
    sealed_in: BytesMut,
    /// Opened frames, encoded again, not yet read by the test.
    plain_in: BytesMut,
}

impl RawPeer {
    /// The dialer's side of a tunnel whose handshake gave `keys`.
    pub fn dialer(sock: TcpStream, keys: Option<SessionKeys>) -> RawPeer {
        let (sealer, codec) = match keys {
            Some(k) => {
                let (s, o) = k.split(true, RekeyPolicy::default());
                (
                    Some(Arc::new(Mutex::new(s))),
                    Some(SealedFrameCodec::new(o)),
                )
            }
            None => (None, None),
        };
        RawPeer {
            sock,
            sealer,
            codec,
            sealed_in: BytesMut::new(),
            plain_in: BytesMut::new(),
        }
    }

    /// Whether the tunnel is sealed.
    pub fn sealed(&self) -> bool {
        self.sealer.is_some()
    }

    /// The tunnel connection itself (for socket options).
    pub fn socket(&self) -> &TcpStream {
        &self.sock
    }

    /// A second handle that does the reading from now on (this one keeps writing; both may
    /// write).
    pub fn try_clone(&mut self) -> io::Result<RawPeer> {
        Ok(RawPeer {
            sock: self.sock.try_clone()?,
            sealer: self.sealer.clone(),
            codec: self.codec.take(),
            sealed_in: std::mem::take(&mut self.sealed_in),
            plain_in: std::mem::take(&mut self.plain_in),
        })
    }
}

impl std::fmt::Debug for RawPeer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "RawPeer({:?}, sealed: {})",
            self.sock.peer_addr(),
            self.sealed()
        )
    }
}

impl Timeout for RawPeer {
    fn set_timeout(&self, within: Option<Duration>) -> io::Result<()> {
        self.sock.set_read_timeout(within)
    }
}

impl Read for RawPeer {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let Some(codec) = self.codec.as_mut() else {
            return self.sock.read(out);
        };
        loop {
            if !self.plain_in.is_empty() {
                let n = out.len().min(self.plain_in.len());
                out[..n].copy_from_slice(&self.plain_in.split_to(n));
                return Ok(n);
            }
            match codec.decode(&mut self.sealed_in) {
                Ok(Some(frame)) => {
                    frame.encode(&mut self.plain_in);
                    continue;
                }
                Ok(None) => {}
                Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e.to_string())),
            }
            let mut chunk = [0u8; 65536];
            let n = self.sock.read(&mut chunk)?;
            if n == 0 {
                return Ok(0);
            }
            self.sealed_in.extend_from_slice(&chunk[..n]);
        }
    }
}

impl Write for RawPeer {
    /// `buf` holds whole frames (a test may also write a frame header that lies about its
    /// length): they go out in records cut at frame boundaries, as a node's writer sends them.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let Some(sealer) = self.sealer.as_ref() else {
            return self.sock.write(buf);
        };
        let mut frames = Vec::new();
        let mut rest = buf;
        while !rest.is_empty() {
            let len = match rest.first_chunk::<4>() {
                Some(word) if rest.len() >= HEADER_LEN => {
                    u32::from_be_bytes(*word) as usize + HEADER_LEN
                }
                _ => rest.len(),
            };
            let take = len.min(rest.len()).min(MAX_RECORD);
            frames.push(Bytes::copy_from_slice(&rest[..take]));
            rest = &rest[take..];
        }
        let mut sealer = sealer
            .lock()
            .map_err(|_| io::Error::other("sealer poisoned"))?;
        let mut records = Vec::new();
        sealer.seal(&mut frames, &mut records);
        for r in records {
            self.sock.write_all(&r)?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.sock.flush()
    }
}
