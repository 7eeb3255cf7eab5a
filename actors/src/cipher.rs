//! End-to-end stream encryption of a keyed service: RC4 (the seed's cipher, obfuscation-grade) or
//! an AEAD (ChaCha20-Poly1305, AES-256-GCM: confidentiality and integrity).
//!
//! Every stream gets keys of its own, derived from the service key and fresh randomness from
//! *both* ends: the opener's 16-byte nonce travels in OPEN, the acceptor's in OPEN_OK. So a
//! recorded stream replayed to a node never decrypts as the original (the acceptor's nonce is new),
//! and no keystream or AEAD nonce is ever used twice.
//!
//! - RC4: each direction is keyed with `HMAC-SHA256(key, "menet-rc4-v2" || d || Nopen || Naccept)`
//!   and its first 3072 keystream bytes are dropped. No integrity: flipped bits pass.
//! - AEAD: each direction's key is `HKDF-SHA256(salt = Nopen || Naccept, ikm = key, info =
//!   "menet-aead-v2" || cipher || d)`; each DATA frame is sealed on its own with a 16-byte tag and
//!   the frame's number (0, 1, 2, ...) as the nonce, so a tampered, dropped, reordered or replayed
//!   frame fails to open and the stream is reset before any of its bytes is written.
//!
//! OPEN carries `HMAC-SHA256(key, "menet-check-v2" || cipher || Nopen)[..16]`, so a key mismatch
//! refuses the stream instead of producing garbage.

use std::fmt;
use std::sync::Arc;

use aws_lc_rs::aead::{self, LessSafeKey, UnboundKey};
use aws_lc_rs::hkdf;
use bytes::BytesMut;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use thiserror::Error;

use crate::protocol::{KeyedOpen, CHECK_LEN, NONCE_LEN};
use crate::record::wipe;

type HmacSha256 = Hmac<Sha256>;

/// Keystream bytes thrown away after keying (RFC 4345 recommends at least 1536; the design asks 3072).
pub const DISCARD: usize = 3072;
pub use crate::protocol::{CipherKind, TAG_LEN};

/// aws-lc-rs's algorithm for an AEAD cipher (`None`: RC4).
fn aead_of(kind: CipherKind) -> Option<&'static aead::Algorithm> {
    match kind {
        CipherKind::Rc4 => None,
        CipherKind::ChaCha20Poly1305 => Some(&aead::CHACHA20_POLY1305),
        CipherKind::Aes256Gcm => Some(&aead::AES_256_GCM),
    }
}

/// A shared secret given by an operator (a service key, a tunnel secret). Never printed:
/// `Debug` shows `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Arc<str>);

impl Secret {
    pub fn new(secret: &str) -> Secret {
        Secret(Arc::from(secret))
    }

    /// The secret itself, for the state file and key derivation only.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// An HMAC-SHA256 keyed with the secret.
    pub fn mac(&self) -> HmacSha256 {
        hmac_with(self.0.as_bytes())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// An HMAC-SHA256 with `key` (any length: HMAC hashes long keys and pads short ones).
pub fn hmac_with(key: &[u8]) -> HmacSha256 {
    match <HmacSha256 as Mac>::new_from_slice(key) {
        Ok(mac) => mac,
        // new_from_slice never refuses a key for HMAC; keep the type honest anyway.
        Err(_) => unreachable!("HMAC accepts keys of any length"),
    }
}

/// A keyed service's secret and cipher.
#[derive(Clone, PartialEq, Eq)]
pub struct ServiceKey {
    /// The shared secret both ends' stream keys are derived from.
    pub secret: Secret,
    /// The cipher both ends must name (a mismatch refuses the stream).
    pub cipher: CipherKind,
}

impl fmt::Debug for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "*** ({})", self.cipher)
    }
}

impl ServiceKey {
    pub fn new(secret: &str, cipher: CipherKind) -> ServiceKey {
        ServiceKey {
            secret: Secret::new(secret),
            cipher,
        }
    }

    /// What the opener of a stream sends: the cipher, a fresh nonce and the key check for it.
    pub fn open(&self) -> KeyedOpen {
        let nonce = fresh_nonce();
        KeyedOpen {
            cipher: self.cipher,
            nonce,
            check: self.check(self.cipher, &nonce),
        }
    }

    fn check_mac(&self, cipher: CipherKind, nonce: &[u8; NONCE_LEN]) -> HmacSha256 {
        let mut mac = self.secret.mac();
        mac.update(b"menet-check-v2");
        mac.update(&[cipher.wire_id()]);
        mac.update(nonce);
        mac
    }

    fn check(&self, cipher: CipherKind, nonce: &[u8; NONCE_LEN]) -> [u8; CHECK_LEN] {
        let full = self.check_mac(cipher, nonce).finalize().into_bytes();
        let mut out = [0u8; CHECK_LEN];
        out.copy_from_slice(&full[..CHECK_LEN]);
        out
    }

    /// Constant-time check that the opener holds the same key (for the cipher it named).
    pub fn verify(&self, open: &KeyedOpen) -> bool {
        self.check_mac(open.cipher, &open.nonce)
            .verify_truncated_left(&open.check)
            .is_ok()
    }

    /// The ciphers of one stream end, from both ends' nonces.
    pub fn stream(
        &self,
        opener_nonce: &[u8; NONCE_LEN],
        acceptor_nonce: &[u8; NONCE_LEN],
        opener: bool,
    ) -> StreamCrypto {
        let (tx, rx) = if opener {
            (Direction::FromOpener, Direction::ToOpener)
        } else {
            (Direction::ToOpener, Direction::FromOpener)
        };
        let nonces = [&opener_nonce[..], &acceptor_nonce[..]].concat();
        StreamCrypto {
            seal: Sealer(self.direction(&nonces, tx)),
            open: Opener(self.direction(&nonces, rx)),
        }
    }

    fn direction(&self, nonces: &[u8], direction: Direction) -> DirectionCipher {
        let d = direction as u8;
        match aead_of(self.cipher) {
            None => {
                let mut mac = self.secret.mac();
                mac.update(b"menet-rc4-v2");
                mac.update(&[d]);
                mac.update(nonces);
                DirectionCipher::Rc4(Keystream::new(&mac.finalize().into_bytes().into()))
            }
            Some(alg) => {
                let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, nonces)
                    .extract(self.secret.expose().as_bytes());
                let info = [&b"menet-aead-v2"[..], &[self.cipher.wire_id()], &[d]];
                // expand() refuses only outputs longer than 255 hash lengths; a key is one.
                let key = match prk.expand(&info, alg) {
                    Ok(okm) => UnboundKey::from(okm),
                    Err(_) => unreachable!("HKDF output of one key length"),
                };
                DirectionCipher::Aead {
                    key: LessSafeKey::new(key),
                    frames: 0,
                }
            }
        }
    }
}

/// A fresh random stream nonce.
pub fn fresh_nonce() -> [u8; NONCE_LEN] {
    let mut nonce = [0u8; NONCE_LEN];
    rand::thread_rng().fill_bytes(&mut nonce);
    nonce
}

/// Which way the bytes go, relative to the end that opened the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    FromOpener = 1,
    ToOpener = 2,
}

/// Bytes in an RC4 key here: an HMAC-SHA256 output.
const RC4_KEY_LEN: usize = 32;

/// One direction's RC4 state, already past the discarded prefix. aws-lc's RC4 (its state in 32-bit
/// words) runs ~1.2 x the `rc4` crate's (bytes) on this host, and keyed bulk is bound by it; the
/// tests hold it to the `rc4` crate's keystream byte for byte.
pub struct Keystream(aws_lc_sys::RC4_KEY);

impl Keystream {
    fn new(key: &[u8; RC4_KEY_LEN]) -> Keystream {
        let mut state = aws_lc_sys::RC4_KEY {
            x: 0,
            y: 0,
            data: [0; 256],
        };
        // SAFETY: `state` is a valid RC4_KEY to write; `key` is RC4_KEY_LEN (> 0) readable bytes.
        unsafe { aws_lc_sys::RC4_set_key(&mut state, RC4_KEY_LEN as u32, key.as_ptr()) };
        let mut keystream = Keystream(state);
        keystream.apply(&mut [0u8; DISCARD]);
        keystream
    }

    pub fn apply(&mut self, data: &mut [u8]) {
        let at = data.as_mut_ptr();
        // SAFETY: `at` is `data.len()` bytes this call holds exclusively; RC4 reads each byte
        // before it writes the same byte, so input and output may be the same buffer.
        unsafe { aws_lc_sys::RC4(&mut self.0, data.len(), at, at) };
    }
}

impl Drop for Keystream {
    /// The state is the rest of the keystream: zeros before the memory is given back (a copy a
    /// move left on the stack while keying is not reached).
    fn drop(&mut self) {
        wipe(&mut self.0.data);
        (self.0.x, self.0.y) = (0, 0);
    }
}

/// One direction's cipher state. Both variants are a few hundred bytes (an RC4 state, an AES key
/// schedule); a stream holds two, so they live in place.
#[allow(clippy::large_enum_variant)]
enum DirectionCipher {
    Rc4(Keystream),
    Aead {
        key: LessSafeKey,
        /// Frames sealed (or opened) so far: the next frame's nonce.
        frames: u64,
    },
}

fn frame_nonce(frames: &mut u64) -> aead::Nonce {
    let mut nonce = [0u8; aead::NONCE_LEN];
    nonce[4..].copy_from_slice(&frames.to_be_bytes());
    *frames += 1;
    aead::Nonce::assume_unique_for_key(nonce)
}

/// A frame that does not open: tampered, dropped, reordered, replayed or forged.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("integrity check failed: the frame was altered, dropped, reordered or replayed")]
pub struct IntegrityError;

/// The outgoing half of a stream's crypto.
pub struct Sealer(DirectionCipher);

impl Sealer {
    /// Bytes each sealed frame grows by.
    pub fn overhead(&self) -> usize {
        match self.0 {
            DirectionCipher::Rc4(_) => 0,
            DirectionCipher::Aead { .. } => TAG_LEN,
        }
    }

    /// Encrypts `payload` in place and appends the tag, if any (reserve [`Sealer::overhead`]
    /// bytes of capacity to avoid a reallocation).
    pub fn seal(&mut self, payload: &mut BytesMut) {
        match &mut self.0 {
            DirectionCipher::Rc4(ks) => ks.apply(payload),
            DirectionCipher::Aead { key, frames } => {
                let nonce = frame_nonce(frames);
                // Sealing fails only for payloads over ~256 GiB; a frame is at most 64 KiB.
                if let Ok(tag) = key.seal_in_place_separate_tag(nonce, aead::Aad::empty(), payload)
                {
                    payload.extend_from_slice(tag.as_ref());
                }
            }
        }
    }
}

/// The incoming half of a stream's crypto.
pub struct Opener(DirectionCipher);

impl Opener {
    /// Decrypts `payload` in place (an AEAD frame is checked whole first, then its tag removed).
    pub fn open(&mut self, payload: &mut BytesMut) -> Result<(), IntegrityError> {
        match &mut self.0 {
            DirectionCipher::Rc4(ks) => {
                ks.apply(payload);
                Ok(())
            }
            DirectionCipher::Aead { key, frames } => {
                let nonce = frame_nonce(frames);
                let plain = key
                    .open_in_place(nonce, aead::Aad::empty(), payload)
                    .map_err(|_| IntegrityError)?
                    .len();
                payload.truncate(plain);
                Ok(())
            }
        }
    }
}

/// Both halves of one stream end's crypto.
pub struct StreamCrypto {
    /// Seals what this end sends.
    pub seal: Sealer,
    /// Opens what the other end sent.
    pub open: Opener,
}

#[cfg(test)]
mod tests {
    use super::*;
    use rc4::consts::U32;
    use rc4::{KeyInit, Rc4, StreamCipher};

    fn hex(s: &str) -> Vec<u8> {
        s.split_whitespace()
            .map(|b| u8::from_str_radix(b, 16).expect("hex"))
            .collect()
    }

    /// RFC 6229, 256-bit key 0x0102..20: the keystream at offsets 0 and 3072 (0xc00).
    #[test]
    fn rfc6229_vectors() {
        let key = hex("01 02 03 04 05 06 07 08 09 0a 0b 0c 0d 0e 0f 10 11 12 13 14 15 16 17 18 19 1a 1b 1c 1d 1e 1f 20");
        let mut raw = <Rc4<U32> as KeyInit>::new(rc4::Key::<U32>::from_slice(&key));
        let mut ks = [0u8; 0x1010];
        raw.apply_keystream(&mut ks);
        assert_eq!(
            ks[..16],
            hex("ea a6 bd 25 88 0b f9 3d 3f 5d 1e 4c a2 61 1d 91")[..]
        );
        assert_eq!(
            ks[0xff0..0x1000],
            hex("a1 3a 7c 79 c7 e1 19 b5 ab 02 96 ab 28 c3 00 b9")[..]
        );
        // Our Keystream drops exactly 3072 bytes, so its first bytes are RFC 6229's offset 0xc00.
        let mut ours = Keystream::new(&key[..].try_into().expect("32 bytes"));
        let mut first = [0u8; 16];
        ours.apply(&mut first);
        assert_eq!(
            first[..],
            hex("62 5a 1a b0 0e e3 9a 53 27 34 6b dd b0 1a 9c 18")[..]
        );
    }

    /// aws-lc's RC4 is RustCrypto's byte for byte, for random keys, applied in pieces of every
    /// size a frame can have (0, 1, odd, large), so the wire is the same whichever computes it.
    #[test]
    fn the_keystream_is_the_rc4_crates_in_pieces_of_any_size() {
        for _ in 0..20 {
            let mut key = [0u8; RC4_KEY_LEN];
            rand::thread_rng().fill_bytes(&mut key);
            let mut reference = <Rc4<U32> as KeyInit>::new(rc4::Key::<U32>::from_slice(&key));
            reference.apply_keystream(&mut [0u8; DISCARD]);
            let mut ours = Keystream::new(&key);
            for len in [0usize, 1, 7, 255, 256, 1_000, 16_384, 65_536 + 3] {
                let mut data = vec![0u8; len];
                rand::thread_rng().fill_bytes(&mut data);
                let mut expected = data.clone();
                reference.apply_keystream(&mut expected);
                ours.apply(&mut data);
                assert_eq!(data, expected, "a piece of {len} bytes");
            }
        }
    }

    fn pair(key: &ServiceKey) -> (StreamCrypto, StreamCrypto, [u8; NONCE_LEN]) {
        let open = key.open();
        let accept = fresh_nonce();
        (
            key.stream(&open.nonce, &accept, true),
            key.stream(&open.nonce, &accept, false),
            open.nonce,
        )
    }

    #[test]
    fn every_cipher_round_trips_both_ways() {
        for cipher in [
            CipherKind::Rc4,
            CipherKind::ChaCha20Poly1305,
            CipherKind::Aes256Gcm,
        ] {
            let key = ServiceKey::new("UHI@&s8sa*S", cipher);
            let (mut a, mut b, _) = pair(&key);
            for round in 0..3u8 {
                let msg = vec![round; 1000 + usize::from(round)];
                let mut wire = BytesMut::from(&msg[..]);
                a.seal.seal(&mut wire);
                assert_eq!(wire.len(), msg.len() + cipher.overhead(), "{cipher}");
                assert_ne!(&wire[..msg.len()], &msg[..]);
                b.open.open(&mut wire).expect("opens");
                assert_eq!(&wire[..], &msg[..], "{cipher}");
                let mut back = BytesMut::from(&msg[..]);
                b.seal.seal(&mut back);
                a.open.open(&mut back).expect("opens");
                assert_eq!(&back[..], &msg[..]);
            }
        }
    }

    #[test]
    fn aead_refuses_tampered_dropped_reordered_and_replayed_frames() {
        for cipher in [CipherKind::ChaCha20Poly1305, CipherKind::Aes256Gcm] {
            let key = ServiceKey::new("k", cipher);
            let seal = |s: &mut StreamCrypto, m: &[u8]| {
                let mut w = BytesMut::from(m);
                s.seal.seal(&mut w);
                w
            };
            // Tampered: one flipped bit anywhere.
            let (mut a, mut b, _) = pair(&key);
            let mut f = seal(&mut a, b"hello");
            f[2] ^= 1;
            assert_eq!(b.open.open(&mut f), Err(IntegrityError));
            // Dropped (frame 0 never arrives), and reordered.
            let (mut a, mut b, _) = pair(&key);
            let _lost = seal(&mut a, b"one");
            let mut second = seal(&mut a, b"two");
            assert_eq!(b.open.open(&mut second), Err(IntegrityError));
            // Replayed: frame 0 twice.
            let (mut a, mut b, _) = pair(&key);
            let f = seal(&mut a, b"once");
            b.open.open(&mut f.clone()).expect("first");
            assert_eq!(b.open.open(&mut f.clone()), Err(IntegrityError));
            // Replayed into a new stream (a new acceptor nonce): refused.
            let (mut a, _, nonce) = pair(&key);
            let mut f = seal(&mut a, b"captured");
            let mut replay = key.stream(&nonce, &fresh_nonce(), false);
            assert_eq!(replay.open.open(&mut f), Err(IntegrityError));
        }
    }

    #[test]
    fn rc4_directions_and_nonces_never_share_keystream() {
        let key = ServiceKey::new("UHI@&s8sa*S", CipherKind::Rc4);
        let (mut a, mut b, nonce) = pair(&key);
        let msg = b"GET / HTTP/1.1\r\n\r\n";
        let mut wire = BytesMut::from(&msg[..]);
        a.seal.seal(&mut wire);
        let mut reply = BytesMut::from(&msg[..]);
        b.seal.seal(&mut reply);
        assert_ne!(reply, wire, "each direction has its own keystream");
        // The same opener nonce with another acceptor nonce (a replay) gives another keystream.
        let mut replayed = key.stream(&nonce, &fresh_nonce(), false);
        let mut again = wire.clone();
        replayed
            .open
            .open(&mut again)
            .expect("rc4 has no integrity");
        assert_ne!(
            &again[..],
            &msg[..],
            "a replay does not decrypt as the original"
        );
    }

    #[test]
    fn key_check_tells_keys_and_ciphers_apart() {
        let key = ServiceKey::new("right", CipherKind::Rc4);
        let open = key.open();
        assert!(key.verify(&open));
        assert!(!ServiceKey::new("wrong", CipherKind::Rc4).verify(&open));
        let mut other = open;
        other.cipher = CipherKind::Aes256Gcm;
        assert!(!key.verify(&other), "the check covers the cipher");
        assert_eq!(format!("{key:?}"), "*** (rc4)");
        assert_eq!(format!("{:?}", Secret::new("x")), "***");
        assert_eq!(
            "aes-256-gcm".parse::<CipherKind>(),
            Ok(CipherKind::Aes256Gcm)
        );
        assert!("des".parse::<CipherKind>().is_err());
    }
}
