//! The tunnel wire protocol, version 2: the frame codec. `actors/PROTOCOL.md` is the prose
//! description; the handshake that precedes the frames is [`crate::handshake`].
//!
//! ```
//! use bytes::BytesMut;
//! use menet_actors::protocol::{Frame, FrameCodec, HEADER_LEN};
//! use tokio_util::codec::Decoder;
//!
//! let mut wire = BytesMut::new();
//! Frame::Window { stream: 3, increment: 65536 }.encode(&mut wire);
//! assert_eq!(wire.len(), HEADER_LEN + 4);
//! let frame = FrameCodec.decode(&mut wire).unwrap();
//! assert_eq!(frame, Some(Frame::Window { stream: 3, increment: 65536 }));
//! ```

use std::io;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use thiserror::Error;
use tokio_util::codec::Decoder;

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

pub use crate::service::Protocol;

/// Frame header: payload length (u32), kind (u8), stream id (u32), all big-endian.
pub const HEADER_LEN: usize = 9;
/// Largest DATA payload a sender may put in one frame.
pub const MAX_DATA: usize = 64 * 1024;
/// Largest payload of any control frame.
pub const MAX_CONTROL: usize = 1024;
/// Stream 0 is the tunnel itself (WINDOW, PING, PONG, GOAWAY).
pub const TUNNEL_STREAM: u32 = 0;
pub const NONCE_LEN: usize = 16;
pub const CHECK_LEN: usize = 16;
pub const MAX_NAME: usize = 255;

#[derive(Debug, Error)]
pub enum ProtocolError {
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    #[error("frame of kind {kind} with {len} bytes is over the limit")]
    TooLarge { kind: u8, len: usize },
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    #[error("malformed {0} frame")]
    Malformed(&'static str),
    #[error("a record failed its check (tampered with, replayed, dropped or reordered)")]
    Integrity,
    #[error("a record of {0} sealed bytes is out of bounds")]
    RecordSize(usize),
}

mod kind {
    pub const OPEN: u8 = 1;
    pub const OPEN_OK: u8 = 2;
    pub const OPEN_FAIL: u8 = 3;
    pub const DATA: u8 = 4;
    pub const FIN: u8 = 5;
    pub const RESET: u8 = 6;
    pub const WINDOW: u8 = 7;
    pub const PING: u8 = 8;
    pub const PONG: u8 = 9;
    pub const GOAWAY: u8 = 10;
}

/// What the opener of a keyed stream sends so the other end can check that both ends hold the same
/// service key and cipher, and derive the stream's keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyedOpen {
    /// The cipher the opener's service names.
    pub cipher: CipherKind,
    /// The opener's fresh nonce, from which (with the acceptor's) the stream's keys derive.
    pub nonce: [u8; NONCE_LEN],
    /// HMAC of the cipher and nonce under the service key: a mismatch refuses the stream.
    pub check: [u8; CHECK_LEN],
}

/// Why a stream was reset, so the other end can log it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetCode {
    /// The stream's socket failed or closed abnormally, or the stream was closed by the node.
    Aborted,
    /// An AEAD frame did not open: tampered, dropped, reordered or replayed.
    Integrity,
    /// The stream was idle past its service's timeout.
    IdleTimeout,
    /// The peer sent past the stream's window.
    WindowOverrun,
}

impl ResetCode {
    fn code(self) -> u8 {
        match self {
            ResetCode::Aborted => 0,
            ResetCode::Integrity => 1,
            ResetCode::IdleTimeout => 2,
            ResetCode::WindowOverrun => 3,
        }
    }

    fn from_code(code: u8) -> ResetCode {
        match code {
            1 => ResetCode::Integrity,
            2 => ResetCode::IdleTimeout,
            3 => ResetCode::WindowOverrun,
            // Unknown codes from a newer peer are plain aborts.
            _ => ResetCode::Aborted,
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            ResetCode::Aborted => "aborted",
            ResetCode::Integrity => "integrity check failed",
            ResetCode::IdleTimeout => "idle timeout",
            ResetCode::WindowOverrun => "window overrun",
        }
    }
}

/// Where a stream's client came from: its address as the local service's listener saw it, and
/// the address it reached (for a PROXY protocol header at the remote end).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin {
    /// The client's address as the local service's listener saw it.
    pub client: SocketAddr,
    /// The address the client connected to.
    pub reached: SocketAddr,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Open {
        stream: u32,
        service: String,
        keyed: Option<KeyedOpen>,
        /// What the service carries: the acceptor refuses a stream of the other protocol.
        protocol: Protocol,
        /// The client's addresses, when the opener knows them.
        origin: Option<Origin>,
    },
    /// `nonce`: the acceptor's stream nonce, for a keyed stream.
    OpenOk {
        stream: u32,
        nonce: Option<[u8; NONCE_LEN]>,
    },
    OpenFail {
        stream: u32,
        reason: String,
    },
    /// Mutable so a keyed stream decrypts it in place.
    Data {
        stream: u32,
        payload: BytesMut,
    },
    Fin {
        stream: u32,
    },
    Reset {
        stream: u32,
        code: ResetCode,
    },
    Window {
        stream: u32,
        increment: u32,
    },
    Ping(u64),
    Pong(u64),
    GoAway {
        code: GoAway,
        reason: String,
    },
}

/// Why a tunnel is being closed, which tells the other end what to do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GoAway {
    /// The tunnel was deleted: forget it, do not re-dial.
    Deleted,
    /// The node is shutting down (or restarting): a dialer re-dials, an acceptor drops the tunnel.
    Leaving,
    /// A newer connection of the same tunnel (the same dialer, back) took this one's place.
    Replaced,
}

impl GoAway {
    fn code(self) -> u8 {
        match self {
            GoAway::Deleted => 0,
            GoAway::Leaving => 1,
            GoAway::Replaced => 2,
        }
    }
}

/// Writes the header of a DATA frame; the caller appends `len` payload bytes.
pub fn put_data_header(dst: &mut BytesMut, stream: u32, len: usize) {
    put_header(dst, kind::DATA, stream, len);
}

/// Rewrites the length of a frame whose payload changed size (a sealed DATA frame grew its tag).
pub fn set_frame_len(frame: &mut BytesMut, len: usize) {
    frame[..4].copy_from_slice(&(len as u32).to_be_bytes());
}

fn put_header(dst: &mut BytesMut, kind: u8, stream: u32, len: usize) {
    dst.put_u32(len as u32);
    dst.put_u8(kind);
    dst.put_u32(stream);
}

/// A u8 length and at most [`MAX_NAME`] bytes of `text` (cut at a character boundary).
pub(crate) fn put_text(dst: &mut BytesMut, text: &str) {
    let bytes = truncate_utf8(text, MAX_NAME);
    dst.put_u8(bytes.len() as u8);
    dst.put_slice(bytes);
}

fn truncate_utf8(text: &str, max: usize) -> &[u8] {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text.as_bytes()[..end]
}

fn get_text(src: &mut Bytes, what: &'static str) -> Result<String, ProtocolError> {
    if src.is_empty() {
        return Err(ProtocolError::Malformed(what));
    }
    let len = src.get_u8() as usize;
    if src.len() < len {
        return Err(ProtocolError::Malformed(what));
    }
    let raw = src.split_to(len);
    String::from_utf8(raw.to_vec()).map_err(|_| ProtocolError::Malformed(what))
}

impl Frame {
    /// Encodes the frame. DATA payloads are copied; the data path builds DATA frames itself with
    /// [`put_data_header`] to avoid that copy.
    pub fn encode(&self, dst: &mut BytesMut) {
        match self {
            Frame::Open {
                stream,
                service,
                keyed,
                protocol,
                origin,
            } => {
                let name = truncate_utf8(service, MAX_NAME);
                let origin = origin.map(Origin::one_family);
                let len = 3
                    + name.len()
                    + keyed.map_or(0, |_| NONCE_LEN + CHECK_LEN)
                    + 1
                    + origin.map_or(0, |o| 2 * (ip_len(o.client) + 2));
                put_header(dst, kind::OPEN, *stream, len);
                let udp = u8::from(*protocol == Protocol::Udp) << 1;
                dst.put_u8(u8::from(keyed.is_some()) | udp);
                dst.put_u8(keyed.map_or(0, |k| k.cipher.wire_id()));
                dst.put_u8(name.len() as u8);
                dst.put_slice(name);
                if let Some(k) = keyed {
                    dst.put_slice(&k.nonce);
                    dst.put_slice(&k.check);
                }
                match origin {
                    None => dst.put_u8(0),
                    Some(o) => {
                        dst.put_u8(if o.client.is_ipv4() { 4 } else { 6 });
                        put_addr(dst, o.client);
                        put_addr(dst, o.reached);
                    }
                }
            }
            Frame::OpenOk { stream, nonce } => {
                put_header(dst, kind::OPEN_OK, *stream, nonce.map_or(0, |n| n.len()));
                if let Some(n) = nonce {
                    dst.put_slice(n);
                }
            }
            Frame::OpenFail { stream, reason } => {
                let text = truncate_utf8(reason, MAX_NAME);
                put_header(dst, kind::OPEN_FAIL, *stream, 1 + text.len());
                put_text(dst, reason);
            }
            Frame::Data { stream, payload } => {
                put_data_header(dst, *stream, payload.len());
                dst.put_slice(payload);
            }
            Frame::Fin { stream } => put_header(dst, kind::FIN, *stream, 0),
            Frame::Reset { stream, code } => {
                put_header(dst, kind::RESET, *stream, 1);
                dst.put_u8(code.code());
            }
            Frame::Window { stream, increment } => {
                put_header(dst, kind::WINDOW, *stream, 4);
                dst.put_u32(*increment);
            }
            Frame::Ping(v) => {
                put_header(dst, kind::PING, TUNNEL_STREAM, 8);
                dst.put_u64(*v);
            }
            Frame::Pong(v) => {
                put_header(dst, kind::PONG, TUNNEL_STREAM, 8);
                dst.put_u64(*v);
            }
            Frame::GoAway { code, reason } => {
                let text = truncate_utf8(reason, MAX_NAME);
                put_header(dst, kind::GOAWAY, TUNNEL_STREAM, 2 + text.len());
                dst.put_u8(code.code());
                put_text(dst, reason);
            }
        }
    }

    fn decode_body(kind: u8, stream: u32, body: BytesMut) -> Result<Frame, ProtocolError> {
        if kind == kind::DATA {
            if body.is_empty() {
                return Err(ProtocolError::Malformed("DATA"));
            }
            return Ok(Frame::Data {
                stream,
                payload: body,
            });
        }
        let mut body = body.freeze();
        let frame = match kind {
            kind::OPEN => decode_open(stream, &mut body)?,
            kind::OPEN_OK => {
                let nonce = match body.len() {
                    0 => None,
                    NONCE_LEN => {
                        let mut n = [0u8; NONCE_LEN];
                        body.copy_to_slice(&mut n);
                        Some(n)
                    }
                    _ => return Err(ProtocolError::Malformed("OPEN_OK")),
                };
                Frame::OpenOk { stream, nonce }
            }
            kind::OPEN_FAIL => Frame::OpenFail {
                stream,
                reason: get_text(&mut body, "OPEN_FAIL")?,
            },
            kind::FIN => Frame::Fin { stream },
            kind::RESET => {
                if body.len() != 1 {
                    return Err(ProtocolError::Malformed("RESET"));
                }
                Frame::Reset {
                    stream,
                    code: ResetCode::from_code(body.get_u8()),
                }
            }
            kind::WINDOW => {
                if body.len() != 4 {
                    return Err(ProtocolError::Malformed("WINDOW"));
                }
                let increment = body.get_u32();
                if increment == 0 {
                    return Err(ProtocolError::Malformed("WINDOW"));
                }
                return Ok(Frame::Window { stream, increment });
            }
            kind::PING | kind::PONG => {
                if body.len() != 8 {
                    return Err(ProtocolError::Malformed("PING"));
                }
                let v = body.get_u64();
                return Ok(if kind == kind::PING {
                    Frame::Ping(v)
                } else {
                    Frame::Pong(v)
                });
            }
            kind::GOAWAY => {
                let code = match body.first() {
                    Some(0) => GoAway::Deleted,
                    Some(1) => GoAway::Leaving,
                    Some(2) => GoAway::Replaced,
                    _ => return Err(ProtocolError::Malformed("GOAWAY")),
                };
                body.advance(1);
                Frame::GoAway {
                    code,
                    reason: get_text(&mut body, "GOAWAY")?,
                }
            }
            other => return Err(ProtocolError::UnknownKind(other)),
        };
        if !body.is_empty() {
            return Err(ProtocolError::Malformed("control"));
        }
        Ok(frame)
    }
}

/// An OPEN frame's body: the flags (keyed, UDP), the cipher, the service name, for a keyed
/// stream the opener's nonce and the key check, then the origin (none, or the client's and the
/// reached address, both IPv4 or both IPv6).
fn decode_open(stream: u32, body: &mut Bytes) -> Result<Frame, ProtocolError> {
    let bad = || ProtocolError::Malformed("OPEN");
    if body.len() < 2 {
        return Err(bad());
    }
    let flags = body.get_u8();
    let cipher = body.get_u8();
    if flags & !3 != 0 {
        return Err(bad());
    }
    let protocol = if flags & 2 != 0 {
        Protocol::Udp
    } else {
        Protocol::Tcp
    };
    let service = get_text(body, "OPEN")?;
    let keyed = match (flags & 1, CipherKind::from_wire(cipher)) {
        (0, _) if cipher == 0 => None,
        (1, Some(cipher)) if body.len() >= NONCE_LEN + CHECK_LEN => {
            let mut k = KeyedOpen {
                cipher,
                nonce: [0; NONCE_LEN],
                check: [0; CHECK_LEN],
            };
            body.copy_to_slice(&mut k.nonce);
            body.copy_to_slice(&mut k.check);
            Some(k)
        }
        _ => return Err(bad()),
    };
    if body.is_empty() {
        return Err(bad());
    }
    let origin = match body.get_u8() {
        0 => None,
        family @ (4 | 6) => Some(Origin {
            client: get_addr(body, family).ok_or_else(bad)?,
            reached: get_addr(body, family).ok_or_else(bad)?,
        }),
        _ => return Err(bad()),
    };
    if !body.is_empty() {
        return Err(bad());
    }
    Ok(Frame::Open {
        stream,
        service,
        keyed,
        protocol,
        origin,
    })
}

impl Origin {
    /// The addresses a listener saw, as OPEN carries them: an IPv4 client of a dual-stack
    /// listener (an IPv4-mapped address) as the IPv4 address it is.
    pub fn seen(client: SocketAddr, reached: SocketAddr) -> Origin {
        let canon = |a: SocketAddr| SocketAddr::new(a.ip().to_canonical(), a.port());
        Origin {
            client: canon(client),
            reached: canon(reached),
        }
    }

    /// Both addresses in one family, as the wire needs them: if they differ, the IPv4 one
    /// mapped into IPv6 (and nothing else changed, so a decoded OPEN encodes as it came).
    pub fn one_family(self) -> Origin {
        if self.client.is_ipv4() == self.reached.is_ipv4() {
            return self;
        }
        let six = |a: SocketAddr| match a.ip() {
            IpAddr::V4(v4) => SocketAddr::new(IpAddr::V6(v4.to_ipv6_mapped()), a.port()),
            IpAddr::V6(_) => a,
        };
        Origin {
            client: six(self.client),
            reached: six(self.reached),
        }
    }
}

fn ip_len(a: SocketAddr) -> usize {
    if a.is_ipv4() {
        4
    } else {
        16
    }
}

fn put_addr(dst: &mut BytesMut, a: SocketAddr) {
    match a.ip() {
        IpAddr::V4(v4) => dst.put_slice(&v4.octets()),
        IpAddr::V6(v6) => dst.put_slice(&v6.octets()),
    }
    dst.put_u16(a.port());
}

fn get_addr(body: &mut Bytes, family: u8) -> Option<SocketAddr> {
    let ip = if family == 4 {
        let raw: [u8; 4] = body.get(..4)?.try_into().ok()?;
        body.advance(4);
        IpAddr::from(raw)
    } else {
        let raw: [u8; 16] = body.get(..16)?.try_into().ok()?;
        body.advance(16);
        IpAddr::from(raw)
    };
    if body.len() < 2 {
        return None;
    }
    Some(SocketAddr::new(ip, body.get_u16()))
}

/// Frame decoder for the tunnel connection once the handshake is done (encoding is [`Frame::encode`]).
#[derive(Debug, Default)]
pub struct FrameCodec;

impl Decoder for FrameCodec {
    type Item = Frame;
    type Error = ProtocolError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, ProtocolError> {
        if src.len() < HEADER_LEN {
            return Ok(None);
        }
        let len = u32::from_be_bytes([src[0], src[1], src[2], src[3]]) as usize;
        let kind = src[4];
        let limit = if kind == kind::DATA {
            MAX_DATA
        } else {
            MAX_CONTROL
        };
        if len > limit {
            return Err(ProtocolError::TooLarge { kind, len });
        }
        if src.len() < HEADER_LEN + len {
            // Read the rest of a large frame in one go rather than in 8 KiB steps.
            src.reserve(HEADER_LEN + len - src.len());
            return Ok(None);
        }
        let stream = u32::from_be_bytes([src[5], src[6], src[7], src[8]]);
        src.advance(HEADER_LEN);
        let body = src.split_to(len);
        Frame::decode_body(kind, stream, body).map(Some)
    }
}

/// Receive windows a side grants its peer, announced in the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Windows {
    /// Each stream's initial receive window, bytes.
    pub stream: u32,
    /// The tunnel's initial receive window over all its streams, bytes.
    pub tunnel: u32,
}

/// Bytes an AEAD adds to each DATA frame.
pub const TAG_LEN: usize = 16;

/// The cipher of a keyed service, as OPEN names it (the cipher itself is in `cipher.rs`). Both
/// ends of a service must name the same one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CipherKind {
    Rc4,
    ChaCha20Poly1305,
    Aes256Gcm,
}

impl CipherKind {
    /// The byte that names the cipher in OPEN.
    pub fn wire_id(self) -> u8 {
        match self {
            CipherKind::Rc4 => 1,
            CipherKind::ChaCha20Poly1305 => 2,
            CipherKind::Aes256Gcm => 3,
        }
    }

    pub fn from_wire(id: u8) -> Option<CipherKind> {
        match id {
            1 => Some(CipherKind::Rc4),
            2 => Some(CipherKind::ChaCha20Poly1305),
            3 => Some(CipherKind::Aes256Gcm),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            CipherKind::Rc4 => "rc4",
            CipherKind::ChaCha20Poly1305 => "chacha20-poly1305",
            CipherKind::Aes256Gcm => "aes-256-gcm",
        }
    }

    /// Bytes this cipher adds to each DATA frame.
    pub fn overhead(self) -> usize {
        match self {
            CipherKind::Rc4 => 0,
            CipherKind::ChaCha20Poly1305 | CipherKind::Aes256Gcm => TAG_LEN,
        }
    }
}

impl fmt::Display for CipherKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for CipherKind {
    type Err = String;

    fn from_str(s: &str) -> Result<CipherKind, String> {
        [
            CipherKind::Rc4,
            CipherKind::ChaCha20Poly1305,
            CipherKind::Aes256Gcm,
        ]
        .into_iter()
        .find(|c| c.name() == s)
        .ok_or_else(|| "must be \"rc4\", \"chacha20-poly1305\" or \"aes-256-gcm\"".to_owned())
    }
}

#[cfg(test)]
mod tests;
