//! Both sides' state machines as plain types (no sockets): the X25519 exchange, the sealed
//! PROOF, the MACs and signatures over the transcript, and the record layer's keys they end in.

use super::*;

/// A fresh X25519 key pair for one handshake: the private half and the public bytes.
fn ephemeral() -> Result<(EphemeralPrivateKey, [u8; EPHEMERAL_LEN]), HandshakeError> {
    let rng = aws_lc_rs::rand::SystemRandom::new();
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
    let theirs = UnparsedPublicKey::new(&X25519, theirs);
    let refused = HandshakeError::Malformed(what);
    agreement::agree_ephemeral(private, theirs, refused, |k| Ok(k.to_vec()))
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
    let prk = aws_lc_rs::hkdf::Salt::new(aws_lc_rs::hkdf::HKDF_SHA256, t).extract(shared);
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

impl Drop for Challenged {
    fn drop(&mut self) {
        crate::record::wipe(&mut self.shared);
    }
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

impl Drop for Acceptor {
    fn drop(&mut self) {
        crate::record::wipe(&mut self.shared);
    }
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
        // A lane's request is answered in kind: the dialer learns this node read it.
        let transport = Transport {
            lane: hello.transport.lane,
            ..transport
        };
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
