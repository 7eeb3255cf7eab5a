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

use bytes::{Buf, BufMut, BytesMut};
use hmac::Mac;
use rand::RngCore;
use ring::aead::{self, LessSafeKey, UnboundKey};
use ring::agreement::{self, EphemeralPrivateKey, UnparsedPublicKey, X25519};
use ring::signature::{self, Ed25519KeyPair, KeyPair};
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
pub const VERSION: u8 = 3;
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

/// What each side of a tunnel grants the other: announced in HELLO and WELCOME.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Terms {
    pub windows: Windows,
    /// Streams the announcing side carries at once on this tunnel; OPENs past it are refused.
    pub max_streams: u32,
}

/// What a side says about the tunnel's record layer, in HELLO and CHALLENGE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transport {
    /// This side wants the tunnel sealed (`[tunnel] encrypt`, on by default).
    pub encrypt: bool,
    /// This side's CPU accelerates AES (AES-256-GCM is then its faster AEAD).
    pub aes: bool,
}

impl Transport {
    /// This node's choice, with its CPU's AES support.
    pub fn here(encrypt: bool) -> Transport {
        Transport {
            encrypt,
            aes: cpu_accelerates_aes(),
        }
    }

    fn byte(self) -> u8 {
        u8::from(self.encrypt) | (u8::from(self.aes) << 1)
    }

    fn from_byte(b: u8, what: &'static str) -> Result<Transport, HandshakeError> {
        if b & !3 != 0 {
            return Err(HandshakeError::Malformed(what));
        }
        Ok(Transport {
            encrypt: b & 1 != 0,
            aes: b & 2 != 0,
        })
    }

    /// What two sides agree: sealed unless both turned it off, with the AEAD both run fastest.
    pub fn agree(a: Transport, b: Transport) -> Option<TransportCipher> {
        (a.encrypt || b.encrypt).then(|| TransportCipher::agreed(a.aes && b.aes))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub terms: Terms,
    pub nonce: [u8; NONCE_LEN],
    /// The dialer's X25519 key for this handshake only.
    pub ephemeral: [u8; EPHEMERAL_LEN],
    pub transport: Transport,
}

/// What the dialer claims inside its sealed PROOF.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// The tunnel's name.
    pub name: String,
    /// The dialer's identity, pinned to the name on the acceptor.
    pub identity: [u8; IDENTITY_LEN],
    /// `mac_d`.
    mac: [u8; MAC_LEN],
    /// `signature_d`.
    signature: [u8; SIGNATURE_LEN],
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Hello(Hello),
    Challenge {
        nonce: [u8; NONCE_LEN],
        /// The acceptor node's identity, which the dialer pins to the tunnel.
        identity: [u8; IDENTITY_LEN],
        ephemeral: [u8; EPHEMERAL_LEN],
        transport: Transport,
    },
    /// The sealed [`Claim`].
    Proof {
        sealed: Vec<u8>,
    },
    Welcome {
        terms: Terms,
        mac: [u8; MAC_LEN],
        /// The acceptor's identity signature over the transcript and these terms.
        signature: [u8; SIGNATURE_LEN],
    },
    Refuse {
        code: RefuseCode,
        reason: String,
    },
}

fn put_terms(b: &mut BytesMut, t: &Terms) {
    b.put_u32(t.windows.stream);
    b.put_u32(t.windows.tunnel);
    b.put_u32(t.max_streams);
}

fn get_array<const N: usize>(
    body: &mut &[u8],
    what: &'static str,
) -> Result<[u8; N], HandshakeError> {
    if body.len() < N {
        return Err(HandshakeError::Malformed(what));
    }
    let mut out = [0u8; N];
    body.copy_to_slice(&mut out);
    Ok(out)
}

fn get_terms(body: &mut &[u8], what: &'static str) -> Result<Terms, HandshakeError> {
    let raw: [u8; 12] = get_array(body, what)?;
    let word = |i: usize| u32::from_be_bytes([raw[i], raw[i + 1], raw[i + 2], raw[i + 3]]);
    let terms = Terms {
        windows: Windows {
            stream: word(0),
            tunnel: word(4),
        },
        max_streams: word(8),
    };
    if terms.windows.stream > MAX_WINDOW || terms.windows.tunnel > MAX_WINDOW {
        return Err(HandshakeError::Malformed(what));
    }
    let smallest = terms.windows.stream.min(terms.windows.tunnel);
    if smallest < MIN_WINDOW {
        return Err(HandshakeError::SmallWindow {
            what,
            window: smallest,
        });
    }
    Ok(terms)
}

fn get_text(body: &mut &[u8], what: &'static str) -> Result<String, HandshakeError> {
    let [len] = get_array::<1>(body, what)?;
    let len = usize::from(len);
    if body.len() < len {
        return Err(HandshakeError::Malformed(what));
    }
    let text = std::str::from_utf8(&body[..len]).map_err(|_| HandshakeError::Malformed(what))?;
    body.advance(len);
    Ok(text.to_owned())
}

impl Message {
    fn name(&self) -> &'static str {
        match self {
            Message::Hello(_) => "HELLO",
            Message::Challenge { .. } => "CHALLENGE",
            Message::Proof { .. } => "PROOF",
            Message::Welcome { .. } => "WELCOME",
            Message::Refuse { .. } => "REFUSE",
        }
    }

    /// The message as sent: header and body.
    pub fn encode(&self) -> BytesMut {
        let mut body = BytesMut::with_capacity(128);
        let kind = match self {
            Message::Hello(h) => {
                put_terms(&mut body, &h.terms);
                body.put_slice(&h.nonce);
                body.put_slice(&h.ephemeral);
                body.put_u8(h.transport.byte());
                kind::HELLO
            }
            Message::Challenge {
                nonce,
                identity,
                ephemeral,
                transport,
            } => {
                body.put_slice(nonce);
                body.put_slice(identity);
                body.put_slice(ephemeral);
                body.put_u8(transport.byte());
                kind::CHALLENGE
            }
            Message::Proof { sealed } => {
                body.put_slice(sealed);
                kind::PROOF
            }
            Message::Welcome {
                terms,
                mac,
                signature,
            } => {
                put_terms(&mut body, terms);
                body.put_slice(mac);
                body.put_slice(signature);
                kind::WELCOME
            }
            Message::Refuse { code, reason } => {
                body.put_u8(code.code());
                put_text(&mut body, reason);
                kind::REFUSE
            }
        };
        let mut out = BytesMut::with_capacity(HEADER + body.len());
        out.put_slice(&MAGIC);
        out.put_u8(VERSION);
        out.put_u8(kind);
        out.put_u16(body.len() as u16);
        out.put_slice(&body);
        out
    }

    /// Checks a message header; the body length it announces.
    fn check_header(head: &[u8; HEADER]) -> Result<usize, HandshakeError> {
        if head[..4] != MAGIC {
            return Err(HandshakeError::BadMagic);
        }
        if head[4] != VERSION {
            return Err(HandshakeError::Version(head[4]));
        }
        let len = usize::from(u16::from_be_bytes([head[6], head[7]]));
        if len > MAX_BODY {
            return Err(HandshakeError::TooLarge(len));
        }
        Ok(len)
    }

    /// Parses one whole message at the start of `buf`: `Ok(None)` while more bytes are needed,
    /// else the message and the bytes it took. Never panics, allocates nothing by a length it has
    /// not checked.
    pub fn parse(buf: &[u8]) -> Result<Option<(Message, usize)>, HandshakeError> {
        let Some(head) = buf.first_chunk::<HEADER>() else {
            if buf.len() >= 5 && buf[..4] == MAGIC && buf[4] != VERSION {
                return Err(HandshakeError::Version(buf[4]));
            }
            return Ok(None);
        };
        let len = Message::check_header(head)?;
        if buf.len() < HEADER + len {
            return Ok(None);
        }
        let msg = Message::parse_body(head[5], &buf[HEADER..HEADER + len])?;
        Ok(Some((msg, HEADER + len)))
    }

    fn parse_body(kind: u8, mut body: &[u8]) -> Result<Message, HandshakeError> {
        let b = &mut body;
        let msg = match kind {
            kind::HELLO => {
                let terms = get_terms(b, "HELLO")?;
                Message::Hello(Hello {
                    terms,
                    nonce: get_array(b, "HELLO")?,
                    ephemeral: get_array(b, "HELLO")?,
                    transport: Transport::from_byte(get_array::<1>(b, "HELLO")?[0], "HELLO")?,
                })
            }
            kind::CHALLENGE => Message::Challenge {
                nonce: get_array(b, "CHALLENGE")?,
                identity: get_array(b, "CHALLENGE")?,
                ephemeral: get_array(b, "CHALLENGE")?,
                transport: Transport::from_byte(get_array::<1>(b, "CHALLENGE")?[0], "CHALLENGE")?,
            },
            kind::PROOF => {
                let sealed = b.to_vec();
                b.advance(sealed.len());
                Message::Proof { sealed }
            }
            kind::WELCOME => Message::Welcome {
                terms: get_terms(b, "WELCOME")?,
                mac: get_array(b, "WELCOME")?,
                signature: get_array(b, "WELCOME")?,
            },
            kind::REFUSE => {
                let [code] = get_array::<1>(b, "REFUSE")?;
                // A reason is the peer's text: escaped here, once, before anyone logs or shows
                // it (a newline or a bidi control in it cannot forge or hide a line).
                Message::Refuse {
                    code: RefuseCode::from_code(code),
                    reason: crate::limits::Escaped(&get_text(b, "REFUSE")?).to_string(),
                }
            }
            _ => return Err(HandshakeError::Malformed("unknown")),
        };
        if !body.is_empty() {
            return Err(HandshakeError::Malformed(msg.name()));
        }
        Ok(msg)
    }
}

/// What a version-1 dialer understands as a refusal: its own WELCOME layout, status 1.
pub fn version1_refusal() -> Vec<u8> {
    let reason = format!("this node speaks menet protocol version {VERSION}; upgrade this node");
    let mut b = Vec::with_capacity(16 + reason.len());
    b.extend_from_slice(&MAGIC);
    b.extend_from_slice(&[1, 1]);
    b.extend_from_slice(&[0; 8]);
    b.push(reason.len() as u8);
    b.extend_from_slice(reason.as_bytes());
    b
}

/// What a version-2 dialer understands as a refusal: a REFUSE in its own layout (which version
/// 3 kept), with version 2 in the header.
pub fn version2_refusal() -> Vec<u8> {
    let mut b = refusal(
        RefuseCode::Other,
        &format!("this node speaks menet protocol version {VERSION}; upgrade this node"),
    );
    b[4] = 2;
    b.to_vec()
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
    if raw[4] != VERSION {
        return Err(HandshakeError::Version(raw[4]));
    }
    r.read_exact(&mut raw[5..]).await.map_err(eof)?;
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

/// A dialer's identity for one tunnel: an Ed25519 key pair the acceptor pins to the tunnel's
/// name, kept in the state file so a restarted dialer can reclaim its name.
pub struct Identity {
    /// The private seed, for the state file.
    seed: [u8; 32],
    pair: Ed25519KeyPair,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Identity({})", fingerprint(&self.public()))
    }
}

impl Identity {
    pub fn generate() -> Identity {
        let mut seed = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut seed);
        match Identity::from_seed(seed) {
            Ok(id) => id,
            // Any 32 bytes are a valid Ed25519 seed.
            Err(_) => unreachable!("Ed25519 accepts any 32-byte seed"),
        }
    }

    fn from_seed(seed: [u8; 32]) -> Result<Identity, String> {
        let pair = Ed25519KeyPair::from_seed_unchecked(&seed)
            .map_err(|_| "not an Ed25519 seed".to_owned())?;
        Ok(Identity { seed, pair })
    }

    /// From the state file's hex.
    pub fn from_hex(text: &str) -> Result<Identity, String> {
        let seed: [u8; 32] = from_hex(text)
            .and_then(|v| v.try_into().ok())
            .ok_or_else(|| "an identity is 64 hex digits".to_owned())?;
        Identity::from_seed(seed)
    }

    pub fn to_hex(&self) -> String {
        to_hex(&self.seed)
    }

    pub fn public(&self) -> [u8; IDENTITY_LEN] {
        let mut pk = [0u8; IDENTITY_LEN];
        pk.copy_from_slice(self.pair.public_key().as_ref());
        pk
    }

    fn sign(
        &self,
        label: &[u8],
        transcript: &[u8; 32],
        terms: Option<&Terms>,
    ) -> [u8; SIGNATURE_LEN] {
        let mut sig = [0u8; SIGNATURE_LEN];
        sig.copy_from_slice(self.pair.sign(&signed(label, transcript, terms)).as_ref());
        sig
    }
}

/// What an identity signature covers: a label naming the signer's role, the transcript and (for
/// the acceptor) the terms it grants.
fn signed(label: &[u8], transcript: &[u8; 32], terms: Option<&Terms>) -> Vec<u8> {
    let mut msg = label.to_vec();
    msg.extend_from_slice(transcript);
    if let Some(terms) = terms {
        let mut b = BytesMut::new();
        put_terms(&mut b, terms);
        msg.extend_from_slice(&b);
    }
    msg
}

/// Whether `signature` is `identity`'s over `label`, the transcript and the terms.
fn signature_ok(
    identity: &[u8; IDENTITY_LEN],
    signature: &[u8; SIGNATURE_LEN],
    label: &[u8],
    transcript: &[u8; 32],
    terms: Option<&Terms>,
) -> bool {
    signature::UnparsedPublicKey::new(&signature::ED25519, identity)
        .verify(&signed(label, transcript, terms), signature)
        .is_ok()
}

/// A fresh X25519 key pair for one handshake: the private half and the public bytes.
fn ephemeral() -> Result<(EphemeralPrivateKey, [u8; EPHEMERAL_LEN]), HandshakeError> {
    let rng = ring::rand::SystemRandom::new();
    let private = EphemeralPrivateKey::generate(&X25519, &rng)
        .map_err(|_| HandshakeError::Io(io::Error::other("no randomness for a key")))?;
    let public = private
        .compute_public_key()
        .map_err(|_| HandshakeError::Io(io::Error::other("no X25519 public key")))?;
    let mut out = [0u8; EPHEMERAL_LEN];
    out.copy_from_slice(public.as_ref());
    Ok((private, out))
}

/// The X25519 shared secret with the peer's public key; refused for a degenerate key.
fn agree(
    private: EphemeralPrivateKey,
    theirs: &[u8; EPHEMERAL_LEN],
    what: &'static str,
) -> Result<Vec<u8>, HandshakeError> {
    agreement::agree_ephemeral(private, &UnparsedPublicKey::new(&X25519, theirs), |k| {
        k.to_vec()
    })
    .map_err(|_| HandshakeError::Malformed(what))
}

/// A finished handshake, as the dialer sees it.
#[derive(Debug)]
pub struct Established {
    /// What the acceptor grants.
    pub terms: Terms,
    /// The acceptor node's identity, proved by its signature.
    pub peer_identity: [u8; IDENTITY_LEN],
    /// The record layer's keys; `None` when both sides turned sealing off.
    pub keys: Option<SessionKeys>,
}

/// A short printable form of a public identity, for logs and `GET /config`.
pub fn fingerprint(identity: &[u8; IDENTITY_LEN]) -> String {
    to_hex(&identity[..8])
}

pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A public identity from its 64 hex digits (the state file, `"peer_identity"`).
pub fn parse_identity(text: &str) -> Option<[u8; IDENTITY_LEN]> {
    from_hex(text).and_then(|v| v.try_into().ok())
}

pub fn from_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || !text.is_ascii() {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}

fn transcript(hello: &[u8], challenge: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(hello);
    h.update(challenge);
    h.finalize().into()
}

/// `C = SHA-256(T || name || identity_d)`: the transcript with what PROOF claims.
fn with_claim(t: &[u8; 32], name: &str, identity: &[u8; IDENTITY_LEN]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(t);
    h.update([name.len() as u8]);
    h.update(name.as_bytes());
    h.update(identity);
    h.finalize().into()
}

/// The key that seals PROOF: `HKDF(salt = T, X25519 shared secret, "menet-v3 proof")`, used once.
fn proof_key(shared: &[u8], t: &[u8; 32]) -> LessSafeKey {
    let prk = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, t).extract(shared);
    let info = [&b"menet-v3 proof"[..]];
    match prk.expand(&info, &aead::CHACHA20_POLY1305) {
        Ok(okm) => LessSafeKey::new(UnboundKey::from(okm)),
        Err(_) => unreachable!("HKDF output of one key length"),
    }
}

/// PROOF's sealed body: the claim, encrypted and authenticated.
fn seal_claim(key: &LessSafeKey, claim: &Claim) -> Vec<u8> {
    let mut plain = BytesMut::with_capacity(1 + claim.name.len() + 128 + aead::MAX_TAG_LEN);
    put_text(&mut plain, &claim.name);
    plain.put_slice(&claim.identity);
    plain.put_slice(&claim.mac);
    plain.put_slice(&claim.signature);
    let mut out = plain.to_vec();
    let nonce = aead::Nonce::assume_unique_for_key([0; aead::NONCE_LEN]);
    if key
        .seal_in_place_append_tag(nonce, aead::Aad::empty(), &mut out)
        .is_err()
    {
        unreachable!("ChaCha20-Poly1305 seals a short message");
    }
    out
}

/// Opens PROOF's sealed body; a body that does not open, or opens to garbage, is malformed.
fn open_claim(key: &LessSafeKey, sealed: &[u8]) -> Result<Claim, HandshakeError> {
    let mut buf = sealed.to_vec();
    let nonce = aead::Nonce::assume_unique_for_key([0; aead::NONCE_LEN]);
    let plain = key
        .open_in_place(nonce, aead::Aad::empty(), &mut buf)
        .map_err(|_| HandshakeError::AuthFailed("PROOF does not open (not this handshake's)"))?;
    let b = &mut &plain[..];
    let claim = Claim {
        name: get_text(b, "PROOF")?,
        identity: get_array(b, "PROOF")?,
        mac: get_array(b, "PROOF")?,
        signature: get_array(b, "PROOF")?,
    };
    if !b.is_empty() {
        return Err(HandshakeError::Malformed("PROOF"));
    }
    Ok(claim)
}

fn proof_mac(secret: Option<&Secret>, label: &[u8], t: &[u8; 32], terms: Option<&Terms>) -> Mac32 {
    let mut mac = hmac_with(secret.map_or(&b""[..], |s| s.expose().as_bytes()));
    mac.update(label);
    mac.update(t);
    if let Some(terms) = terms {
        let mut b = BytesMut::new();
        put_terms(&mut b, terms);
        mac.update(&b);
    }
    Mac32(mac)
}

/// An HMAC not finalized yet: computed, or verified in constant time.
struct Mac32(hmac::Hmac<Sha256>);

impl Mac32 {
    fn bytes(self) -> [u8; MAC_LEN] {
        self.0.finalize().into_bytes().into()
    }

    fn verify(self, tag: &[u8; MAC_LEN]) -> bool {
        self.0.verify_slice(tag).is_ok()
    }
}

const DIALER_LABEL: &[u8] = b"menet-v3 dialer";
const ACCEPTOR_LABEL: &[u8] = b"menet-v3 acceptor";
const DIALER_IDENTITY: &[u8] = b"menet-v3 dialer identity";
const ACCEPTOR_IDENTITY: &[u8] = b"menet-v3 acceptor identity";

/// The dialer's side of the handshake.
pub struct Dialer {
    /// The tunnel's name, told the acceptor inside the sealed PROOF.
    name: String,
    /// HELLO as sent: the transcript's first half.
    hello: Vec<u8>,
    /// Signs the transcript for the acceptor's pin.
    identity: Arc<Identity>,
    /// Proves (and checks) the tunnel secret.
    secret: Option<Secret>,
    /// What this side wants of the record layer.
    transport: Transport,
    /// The X25519 private key until CHALLENGE brings the peer's half.
    ephemeral: Option<EphemeralPrivateKey>,
    /// What CHALLENGE brought, once it came.
    challenged: Option<Challenged>,
}

/// What the dialer learnt from CHALLENGE.
struct Challenged {
    /// `C`: the transcript with the claim.
    transcript: [u8; 32],
    /// The acceptor's identity, to check its signature against and to pin.
    identity: [u8; IDENTITY_LEN],
    /// The X25519 shared secret.
    shared: Vec<u8>,
    /// The record layer both sides agreed, if any.
    cipher: Option<TransportCipher>,
}

impl Dialer {
    pub fn new(
        name: &str,
        terms: Terms,
        identity: Arc<Identity>,
        secret: Option<Secret>,
        transport: Transport,
    ) -> Result<Dialer, HandshakeError> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::thread_rng().fill_bytes(&mut nonce);
        let (private, public) = ephemeral()?;
        if name.len() > usize::from(u8::MAX) {
            return Err(HandshakeError::Malformed("HELLO (a name over 255 bytes)"));
        }
        let hello = Message::Hello(Hello {
            terms,
            nonce,
            ephemeral: public,
            transport,
        })
        .encode()
        .to_vec();
        Ok(Dialer {
            name: name.to_owned(),
            hello,
            identity,
            secret,
            transport,
            ephemeral: Some(private),
            challenged: None,
        })
    }

    /// HELLO, as sent.
    pub fn hello(&self) -> &[u8] {
        &self.hello
    }

    /// Answers the acceptor's CHALLENGE (`raw` as received) with PROOF.
    pub fn on_challenge(&mut self, msg: Message, raw: &[u8]) -> Result<BytesMut, HandshakeError> {
        let (identity, theirs, transport) = match msg {
            Message::Challenge {
                identity,
                ephemeral,
                transport,
                ..
            } => (identity, ephemeral, transport),
            Message::Refuse { code, reason } => {
                return Err(HandshakeError::Refused { code, reason })
            }
            _ => {
                return Err(HandshakeError::Unexpected {
                    expected: "CHALLENGE",
                })
            }
        };
        let private = self.ephemeral.take().ok_or(HandshakeError::Unexpected {
            expected: "WELCOME",
        })?;
        let shared = agree(private, &theirs, "CHALLENGE (ephemeral key)")?;
        let t = transcript(&self.hello, raw);
        let ours = self.identity.public();
        let c = with_claim(&t, &self.name, &ours);
        let claim = Claim {
            name: self.name.clone(),
            identity: ours,
            mac: proof_mac(self.secret.as_ref(), DIALER_LABEL, &c, None).bytes(),
            signature: self.identity.sign(DIALER_IDENTITY, &c, None),
        };
        let sealed = seal_claim(&proof_key(&shared, &t), &claim);
        self.challenged = Some(Challenged {
            transcript: c,
            identity,
            shared,
            cipher: Transport::agree(self.transport, transport),
        });
        Ok(Message::Proof { sealed }.encode())
    }

    /// Checks the acceptor's WELCOME: it must prove the same secret and sign with the identity
    /// its CHALLENGE named. The acceptor's terms and identity, and the record layer's keys.
    pub fn on_welcome(&self, msg: Message) -> Result<Established, HandshakeError> {
        let (terms, mac, signature) = match msg {
            Message::Welcome {
                terms,
                mac,
                signature,
            } => (terms, mac, signature),
            Message::Refuse { code, reason } => {
                return Err(HandshakeError::Refused { code, reason })
            }
            _ => {
                return Err(HandshakeError::Unexpected {
                    expected: "WELCOME",
                })
            }
        };
        let c = self.challenged.as_ref().ok_or(HandshakeError::Unexpected {
            expected: "CHALLENGE",
        })?;
        let t = &c.transcript;
        if !proof_mac(self.secret.as_ref(), ACCEPTOR_LABEL, t, Some(&terms)).verify(&mac) {
            return Err(HandshakeError::AuthFailed(
                "the peer did not prove the tunnel secret",
            ));
        }
        if !signature_ok(&c.identity, &signature, ACCEPTOR_IDENTITY, t, Some(&terms)) {
            return Err(HandshakeError::AuthFailed(
                "the acceptor's identity signature does not verify",
            ));
        }
        let secret = self
            .secret
            .as_ref()
            .map_or(&b""[..], |s| s.expose().as_bytes());
        Ok(Established {
            terms,
            peer_identity: c.identity,
            keys: c
                .cipher
                .map(|cipher| SessionKeys::derive(&c.shared, secret, t, cipher)),
        })
    }
}

/// The acceptor's side of the handshake, once HELLO has arrived.
pub struct Acceptor {
    /// The dialer's HELLO.
    pub hello: Hello,
    /// `T = SHA-256(HELLO || CHALLENGE)`, then `C` once PROOF is opened.
    transcript: [u8; 32],
    /// What the opened PROOF claims.
    claim: Option<Claim>,
    /// CHALLENGE as sent.
    challenge: BytesMut,
    /// Signs WELCOME for the dialer's pin.
    identity: Arc<Identity>,
    /// The X25519 shared secret.
    shared: Vec<u8>,
    /// The record layer both sides agreed, if any.
    cipher: Option<TransportCipher>,
}

impl Acceptor {
    /// Takes HELLO (`raw` as received) and makes the CHALLENGE to send, naming this node's
    /// `identity` and `transport`.
    pub fn on_hello(
        msg: Message,
        raw: &[u8],
        identity: Arc<Identity>,
        transport: Transport,
    ) -> Result<Acceptor, HandshakeError> {
        let Message::Hello(hello) = msg else {
            return Err(HandshakeError::Unexpected { expected: "HELLO" });
        };
        let mut nonce = [0u8; NONCE_LEN];
        rand::thread_rng().fill_bytes(&mut nonce);
        let (private, public) = ephemeral()?;
        let shared = agree(private, &hello.ephemeral, "HELLO (ephemeral key)")?;
        let challenge = Message::Challenge {
            nonce,
            identity: identity.public(),
            ephemeral: public,
            transport,
        }
        .encode();
        Ok(Acceptor {
            transcript: transcript(raw, &challenge),
            claim: None,
            cipher: Transport::agree(hello.transport, transport),
            hello,
            challenge,
            identity,
            shared,
        })
    }

    pub fn challenge(&self) -> &[u8] {
        &self.challenge
    }

    /// Opens PROOF: the tunnel's name and the dialer's identity it claims, to be checked by
    /// [`Acceptor::verify`] with the name's secret.
    pub fn open_proof(&mut self, msg: &Message) -> Result<&Claim, HandshakeError> {
        let Message::Proof { sealed } = msg else {
            return Err(HandshakeError::Unexpected { expected: "PROOF" });
        };
        if self.claim.is_some() {
            return Err(HandshakeError::Unexpected {
                expected: "WELCOME",
            });
        }
        let claim = open_claim(&proof_key(&self.shared, &self.transcript), sealed)?;
        self.transcript = with_claim(&self.transcript, &claim.name, &claim.identity);
        Ok(self.claim.insert(claim))
    }

    /// What the opened PROOF claims.
    pub fn claim(&self) -> Option<&Claim> {
        self.claim.as_ref()
    }

    /// Checks the opened PROOF: the dialer's MAC with `secret` (constant time) and its identity
    /// signature.
    pub fn verify(&self, secret: Option<&Secret>) -> Result<(), HandshakeError> {
        let Some(claim) = &self.claim else {
            return Err(HandshakeError::Unexpected { expected: "PROOF" });
        };
        let t = &self.transcript;
        let mac_ok = proof_mac(secret, DIALER_LABEL, t, None).verify(&claim.mac);
        let sig_ok = signature_ok(&claim.identity, &claim.signature, DIALER_IDENTITY, t, None);
        match (mac_ok, sig_ok) {
            (true, true) => Ok(()),
            (false, _) => Err(HandshakeError::AuthFailed(
                "the dialer did not prove the tunnel secret",
            )),
            (true, false) => Err(HandshakeError::AuthFailed(
                "the dialer's identity signature does not verify",
            )),
        }
    }

    /// WELCOME, proving the same secret back and signed with this node's identity.
    pub fn welcome(&self, secret: Option<&Secret>, terms: Terms) -> BytesMut {
        let t = &self.transcript;
        Message::Welcome {
            terms,
            mac: proof_mac(secret, ACCEPTOR_LABEL, t, Some(&terms)).bytes(),
            signature: self.identity.sign(ACCEPTOR_IDENTITY, t, Some(&terms)),
        }
        .encode()
    }

    /// The record layer's keys (after [`Acceptor::verify`]); `None` when both sides turned
    /// sealing off.
    pub fn keys(&self, secret: Option<&Secret>) -> Option<SessionKeys> {
        let secret = secret.map_or(&b""[..], |s| s.expose().as_bytes());
        self.cipher
            .map(|cipher| SessionKeys::derive(&self.shared, secret, &self.transcript, cipher))
    }
}

/// A refusal to send instead of CHALLENGE or WELCOME.
pub fn refusal(code: RefuseCode, reason: &str) -> BytesMut {
    Message::Refuse {
        code,
        reason: reason.to_owned(),
    }
    .encode()
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
