//! End-to-end stream encryption of a keyed service: RC4, used so that keystream is never reused.
//!
//! RC4 is what menet's users ask for; it is obfuscation-grade (no integrity, known biases). The
//! original system restarted RC4 with the service key for every chunk, so every chunk reused the
//! same keystream. Here each stream draws a fresh random nonce at open, each direction gets its own
//! RC4 key `HMAC-SHA256(key, "menet-rc4-v1" || direction || nonce)`, and the first 3072 keystream
//! bytes are dropped. The open frame carries `HMAC-SHA256(key, "menet-check-v1" || nonce)[..16]`
//! so the far end refuses a stream whose key does not match instead of emitting garbage.

use std::fmt;
use std::sync::Arc;

use hmac::{Hmac, Mac};
use rand::RngCore;
use rc4::consts::U32;
use rc4::{KeyInit, Rc4, StreamCipher};
use sha2::Sha256;

use crate::protocol::{KeyedOpen, CHECK_LEN, NONCE_LEN};

type HmacSha256 = Hmac<Sha256>;

/// Keystream bytes thrown away after keying (RFC 4345 recommends at least 1536; the design asks 3072).
pub const DISCARD: usize = 3072;

/// A service's shared secret. Never printed: `Debug` shows `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct ServiceKey(Arc<str>);

impl ServiceKey {
    pub fn new(key: &str) -> ServiceKey {
        ServiceKey(Arc::from(key))
    }

    /// The key itself, for the state file only.
    pub fn secret(&self) -> &str {
        &self.0
    }

    fn mac(&self) -> HmacSha256 {
        // HMAC takes keys of any length, so this cannot fail.
        <HmacSha256 as Mac>::new_from_slice(self.0.as_bytes()).expect("HMAC accepts any key length")
    }

    /// What the opener of a stream sends: a fresh nonce and the key check for it.
    pub fn open(&self) -> KeyedOpen {
        let mut nonce = [0u8; NONCE_LEN];
        rand::thread_rng().fill_bytes(&mut nonce);
        KeyedOpen {
            nonce,
            check: self.check(&nonce),
        }
    }

    fn check(&self, nonce: &[u8; NONCE_LEN]) -> [u8; CHECK_LEN] {
        let mut mac = self.mac();
        mac.update(b"menet-check-v1");
        mac.update(nonce);
        let full = mac.finalize().into_bytes();
        let mut out = [0u8; CHECK_LEN];
        out.copy_from_slice(&full[..CHECK_LEN]);
        out
    }

    /// Constant-time check that the opener holds the same key.
    pub fn verify(&self, open: &KeyedOpen) -> bool {
        let mut mac = self.mac();
        mac.update(b"menet-check-v1");
        mac.update(&open.nonce);
        mac.verify_truncated_left(&open.check).is_ok()
    }

    /// The keystream for one direction of one stream.
    pub fn stream(&self, nonce: &[u8; NONCE_LEN], direction: Direction) -> Keystream {
        let mut mac = self.mac();
        mac.update(b"menet-rc4-v1");
        mac.update(&[direction as u8]);
        mac.update(nonce);
        Keystream::new(&mac.finalize().into_bytes())
    }
}

impl fmt::Debug for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Which way the bytes go, relative to the end that opened the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    FromOpener = 1,
    ToOpener = 2,
}

/// One direction's RC4 state, already past the discarded prefix.
pub struct Keystream(Rc4<U32>);

impl Keystream {
    fn new(key: &[u8]) -> Keystream {
        let mut rc4 = <Rc4<U32> as KeyInit>::new(rc4::Key::<U32>::from_slice(key));
        let mut drop = [0u8; DISCARD];
        rc4.apply_keystream(&mut drop);
        Keystream(rc4)
    }

    pub fn apply(&mut self, data: &mut [u8]) {
        self.0.apply_keystream(data);
    }
}

/// The two keystreams of one stream end: `(outgoing, incoming)`.
pub fn stream_pair(
    key: &ServiceKey,
    nonce: &[u8; NONCE_LEN],
    opener: bool,
) -> (Keystream, Keystream) {
    let (tx, rx) = if opener {
        (Direction::FromOpener, Direction::ToOpener)
    } else {
        (Direction::ToOpener, Direction::FromOpener)
    };
    (key.stream(nonce, tx), key.stream(nonce, rx))
}

#[cfg(test)]
mod tests {
    use super::*;

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
            ks[0x10..0x20],
            hex("cf a4 5c 9f 7e 71 4b 54 bd fa 80 02 7c b1 43 80")[..]
        );
        assert_eq!(
            ks[0xff0..0x1000],
            hex("a1 3a 7c 79 c7 e1 19 b5 ab 02 96 ab 28 c3 00 b9")[..]
        );

        // Our Keystream drops exactly 3072 bytes, so its first bytes are RFC 6229's offset 0xc00.
        let mut ours = Keystream::new(&key);
        let mut first = [0u8; 16];
        ours.apply(&mut first);
        assert_eq!(
            first[..],
            hex("62 5a 1a b0 0e e3 9a 53 27 34 6b dd b0 1a 9c 18")[..]
        );
    }

    #[test]
    fn directions_and_nonces_never_share_keystream() {
        let key = ServiceKey::new("UHI@&s8sa*S");
        let open = key.open();
        let (mut a_tx, mut a_rx) = stream_pair(&key, &open.nonce, true);
        let (mut b_tx, mut b_rx) = stream_pair(&key, &open.nonce, false);

        let msg = b"GET / HTTP/1.1\r\n\r\n".to_vec();
        let mut wire = msg.clone();
        a_tx.apply(&mut wire);
        assert_ne!(wire, msg);
        let mut back = wire.clone();
        b_rx.apply(&mut back);
        assert_eq!(back, msg);

        let mut reply = msg.clone();
        b_tx.apply(&mut reply);
        assert_ne!(reply, wire, "each direction has its own keystream");
        a_rx.apply(&mut reply);
        assert_eq!(reply, msg);

        let other = key.open();
        assert_ne!(other.nonce, open.nonce);
        let (mut c_tx, _) = stream_pair(&key, &other.nonce, true);
        let mut wire2 = msg.clone();
        c_tx.apply(&mut wire2);
        assert_ne!(wire2, wire, "a fresh nonce gives a fresh keystream");
    }

    #[test]
    fn key_check_tells_keys_apart() {
        let key = ServiceKey::new("right");
        let open = key.open();
        assert!(key.verify(&open));
        assert!(!ServiceKey::new("wrong").verify(&open));
        assert_eq!(format!("{key:?}"), "***");
    }
}
