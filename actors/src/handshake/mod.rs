//! The tunnel handshake, protocol version 3: mutual authentication and a forward-secret key
//! exchange before any frame.
//!
//! ```text
//! dialer                                   acceptor
//!   HELLO  windows, max streams, nonce_d, ->
//!          ephemeral_d (X25519), transport_d
//!                                       <- CHALLENGE  nonce_a, identity_a (Ed25519),
//!                                                     ephemeral_a, transport_a  (or REFUSE)
//!   PROOF  sealed(name, identity_d,     ->
//!                 mac_d, signature_d)
//!                                       <- WELCOME  windows, max streams, mac_a,
//!                                                   signature_a                 (or REFUSE)
//! ```
//!
//! `T = SHA-256(HELLO || CHALLENGE)` (the messages as sent) binds both nonces, the dialer's
//! windows, the acceptor's identity, both ephemeral keys and both transport choices. PROOF is
//! sealed (ChaCha20-Poly1305) under `HKDF(salt = T, X25519 shared secret, "menet-v3 proof")`, so
//! the tunnel's name and the dialer's identity never cross the wire readable. `C = SHA-256(T ||
//! name || identity_d)` adds them. `mac_d = HMAC-SHA256(S, "menet-v3 dialer" || C)` and
//! `mac_a = HMAC-SHA256(S, "menet-v3 acceptor" || C || WELCOME's windows and max streams)`, where
//! `S` is the tunnel secret (empty when neither node has one). The dialer proves first, so a
//! stranger gets no MAC out of the acceptor; the acceptor proves second, so the dialer knows it
//! reached a node that holds the secret. `signature_d` (over `"menet-v3 dialer identity" || C`)
//! proves the dialer holds the identity the acceptor pinned to the name; `signature_a` (over
//! `"menet-v3 acceptor identity" || C || terms`) proves the acceptor holds the identity the dialer
//! pinned to the tunnel. A man in the middle that answers each side with its own ephemeral key
//! changes `T`, so without the secret its MACs fail, and without the identities' private keys
//! its signatures do.
//!
//! The transport: each side says whether it wants the tunnel sealed and whether its CPU
//! accelerates AES. The tunnel is sealed unless both sides turned it off; with AES-256-GCM when
//! both accelerate AES, ChaCha20-Poly1305 otherwise. The record layer's keys come from the X25519
//! shared secret, the tunnel secret and `T` (`record.rs`): the ephemeral keys are dropped after
//! the handshake, so a recorded tunnel stays sealed even to whoever later steals a node's state
//! file or the secret. The secret never crosses the wire and a recorded handshake cannot be
//! replayed: the peer's nonce and ephemeral key are new each time.
//!
//! The message codec and both state machines are plain types (no sockets), so the whole exchange is
//! tested and fuzzed without I/O; [`dial`] and [`read_message`] are the thin async drivers.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use aws_lc_rs::aead::{self, LessSafeKey, UnboundKey};
use aws_lc_rs::agreement::{self, EphemeralPrivateKey, UnparsedPublicKey, X25519};
use aws_lc_rs::signature::{self, Ed25519KeyPair, KeyPair};
use bytes::{Buf, BufMut, BytesMut};
use hmac::Mac;
use rand::RngCore;
use sha2::{Digest, Sha256};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::cipher::{hmac_with, Secret};
use crate::protocol::{put_text, Windows};
use crate::record::{cpu_accelerates_aes, SessionKeys, TransportCipher};

/// First bytes of every handshake message.
pub const MAGIC: [u8; 4] = *b"MNET";
/// The protocol version this build speaks (frames and handshake).
pub const VERSION: u8 = 4;
/// magic, version, kind, body length (u16).
const HEADER: usize = 8;
/// Largest message body accepted.
pub const MAX_BODY: usize = 1024;
pub const NONCE_LEN: usize = 32;
pub const MAC_LEN: usize = 32;
pub const IDENTITY_LEN: usize = 32;
pub const SIGNATURE_LEN: usize = 64;
/// An X25519 public key.
pub const EPHEMERAL_LEN: usize = 32;
/// Largest window a peer may announce.
const MAX_WINDOW: u32 = 1 << 30;
/// Smallest stream window a peer may announce: below it, a peer would make this node cut its
/// bytes into frames of a few bytes each (CPU for nothing).
pub const MIN_WINDOW: u32 = 16 * 1024;

mod exchange;
mod identity;
mod messages;

pub use exchange::{Acceptor, Dialer, Established};
use identity::signature_ok;
pub use identity::{fingerprint, from_hex, parse_identity, to_hex, Identity};
use messages::{get_array, get_text, put_terms};
pub use messages::{
    older_refusal, refusal, version1_refusal, Claim, Hello, Message, Terms, Transport,
};

mod kind {
    pub const HELLO: u8 = 1;
    pub const CHALLENGE: u8 = 2;
    pub const PROOF: u8 = 3;
    pub const WELCOME: u8 = 4;
    pub const REFUSE: u8 = 5;
}

#[derive(Debug, Error)]
pub enum HandshakeError {
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    #[error("the peer closed the connection during the handshake")]
    Closed,
    #[error("not a menet peer (bad magic)")]
    BadMagic,
    #[error("the peer speaks menet protocol version {0}; this node speaks version {VERSION}")]
    Version(u8),
    #[error("malformed {0} message")]
    Malformed(&'static str),
    #[error("expected {expected}, got another message")]
    Unexpected { expected: &'static str },
    #[error("handshake message of {0} bytes is over the limit")]
    TooLarge(usize),
    #[error("authentication failed: {0}")]
    AuthFailed(&'static str),
    #[error("no {what} within {} ms", .limit.as_millis())]
    Deadline {
        what: &'static str,
        limit: std::time::Duration,
    },
    #[error("{what} announces a window of {window} bytes; at least {MIN_WINDOW} are needed")]
    SmallWindow { what: &'static str, window: u32 },
    #[error("refused by the peer: {reason}")]
    Refused { code: RefuseCode, reason: String },
    #[error(
        "the peer's identity is {presented}, not the {pinned} pinned to this tunnel (a man in \
         the middle, or a reinstalled peer: re-POST the tunnel with \"peer_identity\" set to \
         the new one to accept it)"
    )]
    IdentityChanged { pinned: String, presented: String },
}

impl HandshakeError {
    /// The tunnel secret (or the dialer's identity) did not check out, on either end.
    pub fn is_auth_failure(&self) -> bool {
        matches!(
            self,
            HandshakeError::AuthFailed(_)
                | HandshakeError::IdentityChanged { .. }
                | HandshakeError::Refused {
                    code: RefuseCode::AuthFailed,
                    ..
                }
        )
    }
}

/// Why an acceptor refused a dialer, so the dialer can tell an operator what to fix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefuseCode {
    AuthFailed,
    /// Another dialer holds the name (a live tunnel, or a pinned identity).
    NameHeld,
    /// `accept = "known"` and the name is not declared on the acceptor.
    UnknownName,
    /// A limit of the acceptor (tunnels, handshakes).
    Busy,
    ShuttingDown,
    /// The dialer reached its own tunnel port (it presented this node's own identity).
    OwnPort,
    Other,
}

impl RefuseCode {
    fn code(self) -> u8 {
        match self {
            RefuseCode::AuthFailed => 1,
            RefuseCode::NameHeld => 2,
            RefuseCode::UnknownName => 3,
            RefuseCode::Busy => 4,
            RefuseCode::ShuttingDown => 5,
            RefuseCode::OwnPort => 6,
            RefuseCode::Other => 7,
        }
    }

    fn from_code(code: u8) -> RefuseCode {
        match code {
            1 => RefuseCode::AuthFailed,
            2 => RefuseCode::NameHeld,
            3 => RefuseCode::UnknownName,
            4 => RefuseCode::Busy,
            5 => RefuseCode::ShuttingDown,
            6 => RefuseCode::OwnPort,
            _ => RefuseCode::Other,
        }
    }
}

/// Reads one handshake message; also returns its bytes as sent (for the transcript).
pub async fn read_message<R: AsyncRead + Unpin>(
    r: &mut R,
) -> Result<(Message, Vec<u8>), HandshakeError> {
    read(r, false).await
}

/// Reads the acceptor's answer to this dialer: as [`read_message`], but an older node's version
/// refusal (every older node answers a newer HELLO in the version-1 layout) is read out as a
/// refusal, so the operator sees what the peer said ("this node speaks menet protocol version
/// 2; upgrade this node").
pub async fn read_answer<R: AsyncRead + Unpin>(
    r: &mut R,
) -> Result<(Message, Vec<u8>), HandshakeError> {
    read(r, true).await
}

fn eof(e: io::Error) -> HandshakeError {
    match e.kind() {
        io::ErrorKind::UnexpectedEof => HandshakeError::Closed,
        _ => HandshakeError::Io(e),
    }
}

/// The rest of a version-1 refusal after `MNET 1`: status 1, eight bytes, a u8 length, the text.
async fn version1_reason<R: AsyncRead + Unpin>(r: &mut R) -> Result<String, HandshakeError> {
    let mut head = [0u8; 10];
    r.read_exact(&mut head).await.map_err(eof)?;
    if head[0] != 1 {
        return Err(HandshakeError::Version(1));
    }
    let mut text = vec![0u8; usize::from(head[9])];
    r.read_exact(&mut text).await.map_err(eof)?;
    Ok(crate::limits::Escaped(&String::from_utf8_lossy(&text)).to_string())
}

async fn read<R: AsyncRead + Unpin>(
    r: &mut R,
    answer: bool,
) -> Result<(Message, Vec<u8>), HandshakeError> {
    let mut raw = vec![0u8; HEADER];
    r.read_exact(&mut raw[..5]).await.map_err(eof)?;
    if raw[..4] != MAGIC {
        return Err(HandshakeError::BadMagic);
    }
    if raw[4] == 1 && answer {
        return Err(HandshakeError::Refused {
            code: RefuseCode::Other,
            reason: version1_reason(r).await?,
        });
    }
    // An older acceptor refuses a newer dialer with a REFUSE in its own version's layout
    // (unchanged since version 2): read its words rather than only its version.
    let older_refusal = answer && (2..VERSION).contains(&raw[4]);
    if raw[4] != VERSION && !older_refusal {
        return Err(HandshakeError::Version(raw[4]));
    }
    r.read_exact(&mut raw[5..]).await.map_err(eof)?;
    if older_refusal {
        if raw[5] != 5 {
            return Err(HandshakeError::Version(raw[4]));
        }
        // Parsed as this version's REFUSE, whose layout it shares.
        raw[4] = VERSION;
    }
    let head: [u8; HEADER] = raw[..HEADER]
        .try_into()
        .map_err(|_| HandshakeError::Closed)?;
    let len = Message::check_header(&head)?;
    raw.resize(HEADER + len, 0);
    r.read_exact(&mut raw[HEADER..]).await.map_err(eof)?;
    match Message::parse(&raw)? {
        Some((msg, _)) => Ok((msg, raw)),
        None => Err(HandshakeError::Closed),
    }
}

pub async fn write_message<W: AsyncWrite + Unpin>(w: &mut W, msg: &[u8]) -> io::Result<()> {
    w.write_all(msg).await?;
    w.flush().await
}

/// Dials a peer's tunnel port and runs the dialer's side of the handshake. With `pin`, the
/// acceptor must prove that identity.
pub async fn dial(
    dest: SocketAddr,
    name: &str,
    ours: Terms,
    identity: Arc<Identity>,
    secret: Option<Secret>,
    transport: Transport,
    pin: Option<[u8; IDENTITY_LEN]>,
) -> Result<(TcpStream, Established), HandshakeError> {
    let mut sock = TcpStream::connect(dest).await?;
    sock.set_nodelay(true)?;
    let mut dialer = Dialer::new(name, ours, identity, secret, transport)?;
    write_message(&mut sock, dialer.hello()).await?;
    let (msg, raw) = read_answer(&mut sock).await?;
    let proof = dialer.on_challenge(msg, &raw)?;
    write_message(&mut sock, &proof).await?;
    let (msg, _) = read_answer(&mut sock).await?;
    let established = dialer.on_welcome(msg)?;
    if let Some(pin) = pin {
        if pin != established.peer_identity {
            return Err(HandshakeError::IdentityChanged {
                pinned: fingerprint(&pin),
                presented: fingerprint(&established.peer_identity),
            });
        }
    }
    Ok((sock, established))
}

#[cfg(test)]
mod tests;
