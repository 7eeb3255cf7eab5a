//! The handshake's messages: their layout on the wire (encode, parse, never a panic nor an
//! allocation by an unchecked length), what each carries, and the refusals older versions read.

use super::*;

/// What each side of a tunnel grants the other: announced in HELLO and WELCOME.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Terms {
    /// The initial stream and tunnel windows the announcing side offers.
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
    /// HELLO: this connection joins the dialer's connected tunnel of the name in PROOF as
    /// another lane; CHALLENGE: the acceptor knows lanes and read the request.
    pub lane: bool,
}

impl Transport {
    /// This node's choice, with its CPU's AES support.
    pub fn here(encrypt: bool) -> Transport {
        Transport {
            encrypt,
            aes: cpu_accelerates_aes(),
            lane: false,
        }
    }

    fn byte(self) -> u8 {
        u8::from(self.encrypt) | (u8::from(self.aes) << 1) | (u8::from(self.lane) << 3)
    }

    fn from_byte(b: u8, what: &'static str) -> Result<Transport, HandshakeError> {
        // Bit 2 asked for a lane sharing its tunnel's streams and credit (lanes of 2026-12-03,
        // before each lane carried streams of its own): refused, so neither kind of node takes
        // the other's lane for its own.
        if b & !0b1011 != 0 {
            return Err(HandshakeError::Malformed(what));
        }
        Ok(Transport {
            encrypt: b & 1 != 0,
            aes: b & 2 != 0,
            lane: b & 8 != 0,
        })
    }

    /// What two sides agree: sealed unless both turned it off, with the AEAD both run fastest.
    pub fn agree(a: Transport, b: Transport) -> Option<TransportCipher> {
        (a.encrypt || b.encrypt).then(|| TransportCipher::agreed(a.aes && b.aes))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// The dialer's windows and stream limit.
    pub terms: Terms,
    /// The dialer's fresh random nonce: what the two sides prove covers it, so no old answer replays.
    pub nonce: [u8; NONCE_LEN],
    /// The dialer's X25519 key for this handshake only.
    pub ephemeral: [u8; EPHEMERAL_LEN],
    /// Whether the dialer wants the tunnel sealed, its AES support, whether it joins as a lane.
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
    pub(super) mac: [u8; MAC_LEN],
    /// `signature_d`.
    pub(super) signature: [u8; SIGNATURE_LEN],
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

pub(super) fn put_terms(b: &mut BytesMut, t: &Terms) {
    b.put_u32(t.windows.stream);
    b.put_u32(t.windows.tunnel);
    b.put_u32(t.max_streams);
}

pub(super) fn get_array<const N: usize>(
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

pub(super) fn get_terms(body: &mut &[u8], what: &'static str) -> Result<Terms, HandshakeError> {
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

pub(super) fn get_text(body: &mut &[u8], what: &'static str) -> Result<String, HandshakeError> {
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
    pub(super) fn check_header(head: &[u8; HEADER]) -> Result<usize, HandshakeError> {
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

/// What a dialer of version 2 or 3 understands as a refusal: a REFUSE in its own layout (which
/// later versions kept), with its version in the header. A newer dialer is answered in the
/// version-2 layout, as older nodes did.
pub fn older_refusal(version: u8) -> Vec<u8> {
    let mut b = refusal(
        RefuseCode::Other,
        &format!("this node speaks menet protocol version {VERSION}; upgrade this node"),
    );
    b[4] = if (2..VERSION).contains(&version) {
        version
    } else {
        2
    };
    b.to_vec()
}

/// A refusal to send instead of CHALLENGE or WELCOME.
pub fn refusal(code: RefuseCode, reason: &str) -> BytesMut {
    Message::Refuse {
        code,
        reason: reason.to_owned(),
    }
    .encode()
}
