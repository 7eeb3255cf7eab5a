//! The tunnel handshake, protocol version 2: mutual authentication before any frame.
//!
//! ```text
//! dialer                                   acceptor
//!   HELLO  name, windows, max streams,  ->
//!          nonce_d, identity (Ed25519 public key)
//!                                       <- CHALLENGE  nonce_a          (or REFUSE)
//!   PROOF  mac_d, signature             ->
//!                                       <- WELCOME  windows, max streams, mac_a   (or REFUSE)
//! ```
//!
//! `T = SHA-256(HELLO || CHALLENGE)` (the messages as sent) binds both nonces, the name, the
//! dialer's windows and identity. `mac_d = HMAC-SHA256(S, "menet-v2 dialer" || T)` and
//! `mac_a = HMAC-SHA256(S, "menet-v2 acceptor" || T || WELCOME's windows and max streams)`, where
//! `S` is the tunnel secret (empty when neither node has one). The dialer proves first, so a
//! stranger gets no MAC out of the acceptor; the acceptor proves second, so the dialer knows it
//! reached a node that holds the secret. The signature (over `"menet-v2 identity" || T`) proves the
//! dialer holds the identity key the acceptor has pinned to the tunnel's name. The secret never
//! crosses the wire and a recorded handshake cannot be replayed: the peer's nonce is new each time.
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
use ring::signature::{self, Ed25519KeyPair, KeyPair};
use sha2::{Digest, Sha256};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::cipher::{hmac_with, Secret};
use crate::protocol::{put_text, Windows};

/// First bytes of every handshake message.
pub const MAGIC: [u8; 4] = *b"MNET";
/// The protocol version this build speaks (frames and handshake).
pub const VERSION: u8 = 2;
/// magic, version, kind, body length (u16).
const HEADER: usize = 8;
/// Largest message body accepted.
pub const MAX_BODY: usize = 1024;
pub const NONCE_LEN: usize = 32;
pub const MAC_LEN: usize = 32;
pub const IDENTITY_LEN: usize = 32;
pub const SIGNATURE_LEN: usize = 64;
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
}

impl HandshakeError {
    /// The tunnel secret (or the dialer's identity) did not check out, on either end.
    pub fn is_auth_failure(&self) -> bool {
        matches!(
            self,
            HandshakeError::AuthFailed(_)
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

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub name: String,
    pub terms: Terms,
    pub nonce: [u8; NONCE_LEN],
    pub identity: [u8; IDENTITY_LEN],
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Hello(Hello),
    Challenge {
        nonce: [u8; NONCE_LEN],
    },
    Proof {
        mac: [u8; MAC_LEN],
        signature: [u8; SIGNATURE_LEN],
    },
    Welcome {
        terms: Terms,
        mac: [u8; MAC_LEN],
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
                put_text(&mut body, &h.name);
                put_terms(&mut body, &h.terms);
                body.put_slice(&h.nonce);
                body.put_slice(&h.identity);
                kind::HELLO
            }
            Message::Challenge { nonce } => {
                body.put_slice(nonce);
                kind::CHALLENGE
            }
            Message::Proof { mac, signature } => {
                body.put_slice(mac);
                body.put_slice(signature);
                kind::PROOF
            }
            Message::Welcome { terms, mac } => {
                put_terms(&mut body, terms);
                body.put_slice(mac);
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
                let name = get_text(b, "HELLO")?;
                let terms = get_terms(b, "HELLO")?;
                Message::Hello(Hello {
                    name,
                    terms,
                    nonce: get_array(b, "HELLO")?,
                    identity: get_array(b, "HELLO")?,
                })
            }
            kind::CHALLENGE => Message::Challenge {
                nonce: get_array(b, "CHALLENGE")?,
            },
            kind::PROOF => Message::Proof {
                mac: get_array(b, "PROOF")?,
                signature: get_array(b, "PROOF")?,
            },
            kind::WELCOME => Message::Welcome {
                terms: get_terms(b, "WELCOME")?,
                mac: get_array(b, "WELCOME")?,
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

/// Reads one handshake message; also returns its bytes as sent (for the transcript).
pub async fn read_message<R: AsyncRead + Unpin>(
    r: &mut R,
) -> Result<(Message, Vec<u8>), HandshakeError> {
    let eof = |e: io::Error| match e.kind() {
        io::ErrorKind::UnexpectedEof => HandshakeError::Closed,
        _ => HandshakeError::Io(e),
    };
    let mut raw = vec![0u8; HEADER];
    r.read_exact(&mut raw[..5]).await.map_err(eof)?;
    if raw[..4] != MAGIC {
        return Err(HandshakeError::BadMagic);
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

    fn sign(&self, transcript: &[u8; 32]) -> [u8; SIGNATURE_LEN] {
        let mut msg = b"menet-v2 identity".to_vec();
        msg.extend_from_slice(transcript);
        let mut sig = [0u8; SIGNATURE_LEN];
        sig.copy_from_slice(self.pair.sign(&msg).as_ref());
        sig
    }
}

/// A short printable form of a public identity, for logs and `GET /config`.
pub fn fingerprint(identity: &[u8; IDENTITY_LEN]) -> String {
    to_hex(&identity[..8])
}

pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
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

const DIALER_LABEL: &[u8] = b"menet-v2 dialer";
const ACCEPTOR_LABEL: &[u8] = b"menet-v2 acceptor";

/// The dialer's side of the handshake.
pub struct Dialer {
    hello: Vec<u8>,
    identity: Arc<Identity>,
    secret: Option<Secret>,
    transcript: Option<[u8; 32]>,
}

impl Dialer {
    pub fn new(
        name: &str,
        terms: Terms,
        identity: Arc<Identity>,
        secret: Option<Secret>,
    ) -> Dialer {
        let mut nonce = [0u8; NONCE_LEN];
        rand::thread_rng().fill_bytes(&mut nonce);
        let hello = Message::Hello(Hello {
            name: name.to_owned(),
            terms,
            nonce,
            identity: identity.public(),
        })
        .encode()
        .to_vec();
        Dialer {
            hello,
            identity,
            secret,
            transcript: None,
        }
    }

    /// HELLO, as sent.
    pub fn hello(&self) -> &[u8] {
        &self.hello
    }

    /// Answers the acceptor's CHALLENGE (`raw` as received) with PROOF.
    pub fn on_challenge(&mut self, msg: Message, raw: &[u8]) -> Result<BytesMut, HandshakeError> {
        match msg {
            Message::Challenge { .. } => {}
            Message::Refuse { code, reason } => {
                return Err(HandshakeError::Refused { code, reason })
            }
            _ => {
                return Err(HandshakeError::Unexpected {
                    expected: "CHALLENGE",
                })
            }
        }
        let t = transcript(&self.hello, raw);
        self.transcript = Some(t);
        Ok(Message::Proof {
            mac: proof_mac(self.secret.as_ref(), DIALER_LABEL, &t, None).bytes(),
            signature: self.identity.sign(&t),
        }
        .encode())
    }

    /// Checks the acceptor's WELCOME: it must prove the same secret.
    pub fn on_welcome(&self, msg: Message) -> Result<Terms, HandshakeError> {
        let (terms, mac) = match msg {
            Message::Welcome { terms, mac } => (terms, mac),
            Message::Refuse { code, reason } => {
                return Err(HandshakeError::Refused { code, reason })
            }
            _ => {
                return Err(HandshakeError::Unexpected {
                    expected: "WELCOME",
                })
            }
        };
        let t = self.transcript.ok_or(HandshakeError::Unexpected {
            expected: "CHALLENGE",
        })?;
        if !proof_mac(self.secret.as_ref(), ACCEPTOR_LABEL, &t, Some(&terms)).verify(&mac) {
            return Err(HandshakeError::AuthFailed(
                "the peer did not prove the tunnel secret",
            ));
        }
        Ok(terms)
    }
}

/// The acceptor's side of the handshake, once HELLO has arrived.
pub struct Acceptor {
    pub hello: Hello,
    transcript: [u8; 32],
    challenge: BytesMut,
}

impl Acceptor {
    /// Takes HELLO (`raw` as received) and makes the CHALLENGE to send.
    pub fn on_hello(msg: Message, raw: &[u8]) -> Result<Acceptor, HandshakeError> {
        let Message::Hello(hello) = msg else {
            return Err(HandshakeError::Unexpected { expected: "HELLO" });
        };
        let mut nonce = [0u8; NONCE_LEN];
        rand::thread_rng().fill_bytes(&mut nonce);
        let challenge = Message::Challenge { nonce }.encode();
        Ok(Acceptor {
            transcript: transcript(raw, &challenge),
            hello,
            challenge,
        })
    }

    pub fn challenge(&self) -> &[u8] {
        &self.challenge
    }

    /// Checks PROOF: the dialer's MAC with `secret` (constant time) and its identity signature.
    pub fn verify(&self, msg: &Message, secret: Option<&Secret>) -> Result<(), HandshakeError> {
        let Message::Proof { mac, signature } = msg else {
            return Err(HandshakeError::Unexpected { expected: "PROOF" });
        };
        let mac_ok = proof_mac(secret, DIALER_LABEL, &self.transcript, None).verify(mac);
        let mut signed = b"menet-v2 identity".to_vec();
        signed.extend_from_slice(&self.transcript);
        let sig_ok = signature::UnparsedPublicKey::new(&signature::ED25519, &self.hello.identity)
            .verify(&signed, signature)
            .is_ok();
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

    /// WELCOME, proving the same secret back.
    pub fn welcome(&self, secret: Option<&Secret>, terms: Terms) -> BytesMut {
        Message::Welcome {
            terms,
            mac: proof_mac(secret, ACCEPTOR_LABEL, &self.transcript, Some(&terms)).bytes(),
        }
        .encode()
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

/// Dials a peer's tunnel port and runs the dialer's side of the handshake.
pub async fn dial(
    dest: SocketAddr,
    name: &str,
    ours: Terms,
    identity: Arc<Identity>,
    secret: Option<Secret>,
) -> Result<(TcpStream, Terms), HandshakeError> {
    let mut sock = TcpStream::connect(dest).await?;
    sock.set_nodelay(true)?;
    let mut dialer = Dialer::new(name, ours, identity, secret);
    write_message(&mut sock, dialer.hello()).await?;
    let (msg, raw) = read_message(&mut sock).await?;
    let proof = dialer.on_challenge(msg, &raw)?;
    write_message(&mut sock, &proof).await?;
    let (msg, _) = read_message(&mut sock).await?;
    let theirs = dialer.on_welcome(msg)?;
    Ok((sock, theirs))
}

#[cfg(test)]
mod tests;
