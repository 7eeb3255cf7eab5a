//! The tunnel's record layer (protocol version 3): after the handshake, every byte of the tunnel
//! travels inside a sealed record, frame headers included, so a relay on the link reads neither a
//! tunnel or service name nor a byte of any service, and cannot change, drop, replay or reorder
//! anything without the tunnel ending.
//!
//! ```text
//! record = word (u32, big-endian: bit 31 KEY_UPDATE, bits 0..=30 the sealed length)
//!          sealed (AEAD ciphertext of whole frames, then its 16-byte tag)
//! ```
//!
//! The word is the AEAD's associated data. Each direction has its own traffic secret (from the
//! handshake's X25519 exchange, [`SessionKeys`]); the nonce of a record is its number under the
//! current key (0, 1, 2, ...), never sent, so a replayed, dropped or reordered record fails its
//! check. After [`RekeyPolicy`]'s volume or time the sender advances its traffic secret
//! (`secret' = HKDF-Expand(secret, "menet-v3 next")`) and marks the first record under the new key
//! with KEY_UPDATE; the receiver advances its own copy before opening it. The number restarts at 0.
//!
//! A record holds whole frames only (at most [`MAX_RECORD`] bytes of them), so frames are decoded
//! straight out of the opened record, without a copy.

use std::time::{Duration, Instant};

use aws_lc_rs::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use aws_lc_rs::hkdf;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::Decoder;

use crate::protocol::{Frame, FrameCodec, ProtocolError, TAG_LEN};

/// Bytes of a record's word.
pub const RECORD_HEADER: usize = 4;
/// Marks the first record under the sender's next key.
const KEY_UPDATE: u32 = 1 << 31;
/// Most frame bytes one record carries: a largest DATA frame fits with room to spare.
pub const MAX_RECORD: usize = 128 * 1024;
/// The writer closes a record once it holds this many bytes (a larger frame goes alone).
const RECORD_TARGET: usize = 64 * 1024;
/// A frame at least this large that no one else holds is sealed in place, in a record of its
/// own, instead of being copied into a shared one.
const IN_PLACE_MIN: usize = 4 * 1024;
/// Length of a traffic secret.
const SECRET_LEN: usize = 32;

/// The AEAD that seals a tunnel's records: AES-256-GCM when both nodes' CPUs accelerate AES,
/// ChaCha20-Poly1305 otherwise (agreed in the handshake).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportCipher {
    Aes256Gcm,
    ChaCha20Poly1305,
}

impl TransportCipher {
    fn algorithm(self) -> &'static aead::Algorithm {
        match self {
            TransportCipher::Aes256Gcm => &aead::AES_256_GCM,
            TransportCipher::ChaCha20Poly1305 => &aead::CHACHA20_POLY1305,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            TransportCipher::Aes256Gcm => "aes-256-gcm",
            TransportCipher::ChaCha20Poly1305 => "chacha20-poly1305",
        }
    }

    /// What both ends pick: AES-256-GCM only when both accelerate AES.
    pub fn agreed(both_accelerate_aes: bool) -> TransportCipher {
        if both_accelerate_aes {
            TransportCipher::Aes256Gcm
        } else {
            TransportCipher::ChaCha20Poly1305
        }
    }
}

/// Whether this CPU has AES and carry-less multiplication instructions (AES-GCM's fast path).
pub fn cpu_accelerates_aes() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("aes")
            && std::arch::is_x86_feature_detected!("pclmulqdq")
    }
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("aes")
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}

/// When a direction's key is replaced: after this many sealed bytes or this long, whichever
/// comes first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RekeyPolicy {
    /// Plaintext bytes sealed under one key at most.
    pub bytes: u64,
    /// Time one key is used at most.
    pub interval: Duration,
}

impl Default for RekeyPolicy {
    fn default() -> RekeyPolicy {
        RekeyPolicy {
            bytes: 1 << 30,
            interval: Duration::from_secs(3600),
        }
    }
}

/// Overwrites key material (bytes, or an RC4 state's words) with zeros before its memory is given
/// back (volatile writes, so the compiler keeps them). aws-lc's AEAD key schedules are not
/// reachable from here.
pub fn wipe<T: Copy + Default>(items: &mut [T]) {
    for item in items.iter_mut() {
        // SAFETY: a write through a valid, aligned, exclusive reference.
        unsafe { std::ptr::write_volatile(item, T::default()) };
    }
    std::sync::atomic::compiler_fence(std::sync::atomic::Ordering::SeqCst);
}

/// The two traffic secrets a handshake produced, and the cipher agreed.
pub struct SessionKeys {
    /// Seals what the dialer sends.
    pub dialer_to_acceptor: [u8; SECRET_LEN],
    /// Seals what the acceptor sends.
    pub acceptor_to_dialer: [u8; SECRET_LEN],
    /// The agreed AEAD.
    pub cipher: TransportCipher,
}

impl Drop for SessionKeys {
    fn drop(&mut self) {
        wipe(&mut self.dialer_to_acceptor);
        wipe(&mut self.acceptor_to_dialer);
    }
}

impl std::fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SessionKeys({}, ***)", self.cipher.name())
    }
}

impl SessionKeys {
    /// Derives both traffic secrets: `PRK = HKDF-Extract(salt = transcript, X25519 shared secret
    /// || tunnel secret)`, each direction's secret `HKDF-Expand(PRK, "menet-v3 d2a" | "a2d")`.
    pub fn derive(
        shared: &[u8],
        tunnel_secret: &[u8],
        transcript: &[u8; 32],
        cipher: TransportCipher,
    ) -> SessionKeys {
        let mut ikm = Vec::with_capacity(shared.len() + tunnel_secret.len());
        ikm.extend_from_slice(shared);
        ikm.extend_from_slice(tunnel_secret);
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, transcript).extract(&ikm);
        wipe(&mut ikm);
        let expand = |label: &[u8]| {
            let mut out = [0u8; SECRET_LEN];
            fill(&prk, label, &mut out);
            out
        };
        SessionKeys {
            dialer_to_acceptor: expand(b"menet-v3 d2a"),
            acceptor_to_dialer: expand(b"menet-v3 a2d"),
            cipher,
        }
    }

    /// This end's sealer and opener: a dialer seals with d2a and opens a2d, an acceptor the
    /// other way round.
    pub fn split(self, dialer: bool, policy: RekeyPolicy) -> (Sealer, Opener) {
        let (send, recv) = if dialer {
            (self.dialer_to_acceptor, self.acceptor_to_dialer)
        } else {
            (self.acceptor_to_dialer, self.dialer_to_acceptor)
        };
        (
            Sealer {
                key: DirectionKey::new(self.cipher, send),
                policy,
                sealed: 0,
                since: Instant::now(),
                aged: false,
                rekeys: 0,
                group: Vec::new(),
            },
            Opener {
                key: DirectionKey::new(self.cipher, recv),
                rekeys: 0,
            },
        )
    }
}

/// HKDF-Expand of `out.len()` bytes with one label.
fn fill(prk: &hkdf::Prk, label: &[u8], out: &mut [u8]) {
    struct Len(usize);
    impl hkdf::KeyType for Len {
        fn len(&self) -> usize {
            self.0
        }
    }
    let info = [label];
    // expand() refuses only outputs longer than 255 hash lengths; these are one.
    match prk.expand(&info, Len(out.len())) {
        Ok(okm) => {
            if okm.fill(out).is_err() {
                unreachable!("HKDF output of the length asked for")
            }
        }
        Err(_) => unreachable!("HKDF output of one hash length"),
    }
}

/// One direction's traffic secret, the key made from it, and the number of the next record.
struct DirectionKey {
    /// Advanced at each rekey; the key is made from it.
    secret: [u8; SECRET_LEN],
    /// Seals or opens this direction's records.
    key: LessSafeKey,
    /// The next record's number under this key: its nonce.
    counter: u64,
    /// Which AEAD the key is for.
    cipher: TransportCipher,
}

impl Drop for DirectionKey {
    fn drop(&mut self) {
        wipe(&mut self.secret);
    }
}

impl DirectionKey {
    fn new(cipher: TransportCipher, secret: [u8; SECRET_LEN]) -> DirectionKey {
        let prk = hkdf::Prk::new_less_safe(hkdf::HKDF_SHA256, &secret);
        let mut raw = [0u8; 32];
        fill(&prk, b"menet-v3 key", &mut raw);
        let key = match UnboundKey::new(cipher.algorithm(), &raw) {
            Ok(k) => LessSafeKey::new(k),
            Err(_) => unreachable!("both AEADs take 32-byte keys"),
        };
        DirectionKey {
            secret,
            key,
            counter: 0,
            cipher,
        }
    }

    /// The next traffic secret and its key; numbering restarts.
    fn advance(&mut self) {
        let prk = hkdf::Prk::new_less_safe(hkdf::HKDF_SHA256, &self.secret);
        let mut next = [0u8; SECRET_LEN];
        fill(&prk, b"menet-v3 next", &mut next);
        *self = DirectionKey::new(self.cipher, next);
    }

    /// The nonce of the next record: its number, big-endian, in the last 8 of 12 bytes.
    fn next_nonce(&mut self) -> Nonce {
        let mut n = [0u8; aead::NONCE_LEN];
        n[4..].copy_from_slice(&self.counter.to_be_bytes());
        // A key seals far fewer than 2^64 records: rekeying comes first.
        self.counter = self.counter.wrapping_add(1);
        Nonce::assume_unique_for_key(n)
    }
}

/// Seals this end's frames into records.
pub struct Sealer {
    /// The current key and record number.
    key: DirectionKey,
    /// When to move to the next key.
    policy: RekeyPolicy,
    /// Plaintext bytes sealed under the current key.
    sealed: u64,
    /// When the current key was taken into use.
    since: Instant,
    /// The current key has been in use for the policy's interval: the next record moves to the
    /// next key. Set by [`Sealer::check_age`] from the tunnel's heartbeat, so that sealing a
    /// record reads no clock.
    aged: bool,
    /// Keys replaced so far, for `GET /config`.
    rekeys: u64,
    /// Small frames gathered for the next record: kept empty between calls, so that sealing
    /// allocates no list.
    group: Vec<Bytes>,
}

impl Sealer {
    /// The AEAD sealing the records.
    pub fn cipher(&self) -> TransportCipher {
        self.key.cipher
    }

    /// Keys replaced so far.
    pub fn rekeys(&self) -> u64 {
        self.rekeys
    }

    /// Marks the current key for replacement at the next record once it has been in use for
    /// the policy's interval by `now`. Called from the tunnel's heartbeat (at least once a
    /// second), so a key lasts at most about a second beyond its interval.
    pub fn check_age(&mut self, now: Instant) {
        if now.saturating_duration_since(self.since) >= self.policy.interval {
            self.aged = true;
        }
    }

    /// Seals `frames` (whole encoded frames, in order; taken out, the list left empty) into
    /// records appended to `out`. Small frames are gathered into one record (copied); a large
    /// one that no one else holds is sealed where it lies, its record word and tag written
    /// beside it (no copy of its bytes).
    pub fn seal(&mut self, frames: &mut Vec<Bytes>, out: &mut Vec<Bytes>) {
        let mut group = std::mem::take(&mut self.group);
        let mut len = 0;
        for frame in frames.drain(..) {
            let frame = if frame.len() >= IN_PLACE_MIN {
                match frame.try_into_mut() {
                    Ok(mut own) => {
                        self.flush_group(&mut group, &mut len, out);
                        self.seal_in_place(&mut own, out);
                        continue;
                    }
                    Err(shared) => shared,
                }
            } else {
                frame
            };
            if !group.is_empty() && len + frame.len() > RECORD_TARGET {
                self.flush_group(&mut group, &mut len, out);
            }
            len += frame.len();
            group.push(frame);
        }
        self.flush_group(&mut group, &mut len, out);
        self.group = group;
    }

    /// The record word for `len` frame bytes, moving to the next key first when it is due.
    fn next_word(&mut self, len: usize) -> [u8; RECORD_HEADER] {
        debug_assert!(len <= MAX_RECORD, "a record of {len} bytes");
        let mut word = (len + TAG_LEN) as u32;
        if self.sealed >= self.policy.bytes || self.aged {
            self.key.advance();
            self.sealed = 0;
            self.since = Instant::now();
            self.aged = false;
            self.rekeys += 1;
            word |= KEY_UPDATE;
        }
        self.sealed += len as u64;
        word.to_be_bytes()
    }

    /// Seals `body` in place under the next nonce, with `word` as associated data; its tag.
    fn seal_body(&mut self, word: [u8; RECORD_HEADER], body: &mut [u8]) -> aead::Tag {
        let nonce = self.key.next_nonce();
        match self
            .key
            .key
            .seal_in_place_separate_tag(nonce, Aad::from(word), body)
        {
            Ok(tag) => tag,
            Err(_) => unreachable!("aws-lc seals any length below 2^32 blocks"),
        }
    }

    /// One large frame sealed where it lies: word, frame, tag as three buffers.
    fn seal_in_place(&mut self, frame: &mut BytesMut, out: &mut Vec<Bytes>) {
        let word = self.next_word(frame.len());
        let tag = self.seal_body(word, frame);
        out.push(Bytes::copy_from_slice(&word));
        out.push(std::mem::take(frame).freeze());
        out.push(Bytes::copy_from_slice(tag.as_ref()));
    }

    /// Seals `frame` as one record appended to `record`: a direct write's, sealed into the
    /// tunnel's reused buffer, so that a short exchange's record costs no allocation.
    pub fn seal_into(&mut self, frame: &[u8], record: &mut BytesMut) {
        let word = self.next_word(frame.len());
        let start = record.len();
        record.reserve(RECORD_HEADER + frame.len() + TAG_LEN);
        record.put_slice(&word);
        record.put_slice(frame);
        let tag = self.seal_body(word, &mut record[start + RECORD_HEADER..]);
        record.put_slice(tag.as_ref());
    }

    /// The small frames gathered so far, copied into one record.
    fn flush_group(&mut self, group: &mut Vec<Bytes>, len: &mut usize, out: &mut Vec<Bytes>) {
        if group.is_empty() {
            return;
        }
        let word = self.next_word(*len);
        let mut record = BytesMut::with_capacity(RECORD_HEADER + *len + TAG_LEN);
        record.put_slice(&word);
        for f in group.drain(..) {
            record.put_slice(&f);
        }
        let tag = self.seal_body(word, &mut record[RECORD_HEADER..]);
        record.put_slice(tag.as_ref());
        out.push(record.freeze());
        *len = 0;
    }
}

/// Opens the peer's records.
pub struct Opener {
    /// The current key and the number the next record must have.
    key: DirectionKey,
    /// Keys the peer has replaced so far.
    rekeys: u64,
}

impl Opener {
    /// Keys the peer replaced so far.
    pub fn rekeys(&self) -> u64 {
        self.rekeys
    }

    /// Opens one record in place (`word` as received); its frame bytes, tag cut off.
    fn open(
        &mut self,
        word: [u8; RECORD_HEADER],
        record: &mut BytesMut,
    ) -> Result<(), ProtocolError> {
        if u32::from_be_bytes(word) & KEY_UPDATE != 0 {
            self.key.advance();
            self.rekeys += 1;
        }
        let nonce = self.key.next_nonce();
        let plain = self
            .key
            .key
            .open_in_place(nonce, Aad::from(word), record)
            .map_err(|_| ProtocolError::Integrity)?
            .len();
        record.truncate(plain);
        Ok(())
    }
}

/// The tunnel's frame decoder with the record layer under it: opens each record, then decodes
/// the frames it holds.
pub struct SealedFrameCodec {
    /// Opens the peer's records.
    opener: Opener,
    /// What is left of the record being decoded: whole frames only.
    plain: BytesMut,
}

impl SealedFrameCodec {
    pub fn new(opener: Opener) -> SealedFrameCodec {
        SealedFrameCodec {
            opener,
            plain: BytesMut::new(),
        }
    }
}

impl Decoder for SealedFrameCodec {
    type Item = Frame;
    type Error = ProtocolError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, ProtocolError> {
        loop {
            if !self.plain.is_empty() {
                return match FrameCodec.decode(&mut self.plain)? {
                    Some(frame) => Ok(Some(frame)),
                    None => Err(ProtocolError::Malformed("record (a frame cut at its end)")),
                };
            }
            let Some(word) = src.first_chunk::<RECORD_HEADER>().copied() else {
                return Ok(None);
            };
            let len = (u32::from_be_bytes(word) & !KEY_UPDATE) as usize;
            if !(TAG_LEN..=MAX_RECORD + TAG_LEN).contains(&len) {
                return Err(ProtocolError::RecordSize(len));
            }
            if src.len() < RECORD_HEADER + len {
                src.reserve(RECORD_HEADER + len - src.len());
                return Ok(None);
            }
            src.advance(RECORD_HEADER);
            let mut record = src.split_to(len);
            self.opener.open(word, &mut record)?;
            self.plain = record;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Frame;

    fn pair(policy: RekeyPolicy) -> (Sealer, SealedFrameCodec) {
        let keys = || SessionKeys::derive(&[7; 32], b"s", &[1; 32], TransportCipher::Aes256Gcm);
        let (sealer, _) = keys().split(true, policy);
        let (_, opener) = keys().split(false, policy);
        (sealer, SealedFrameCodec::new(opener))
    }

    fn frames(n: usize, size: usize) -> Vec<Bytes> {
        (0..n)
            .map(|i| {
                let mut b = BytesMut::new();
                Frame::Data {
                    stream: i as u32 + 1,
                    payload: BytesMut::from(&vec![i as u8; size][..]),
                }
                .encode(&mut b);
                b.freeze()
            })
            .collect()
    }

    fn decode_all(
        codec: &mut SealedFrameCodec,
        wire: &[Bytes],
    ) -> Result<Vec<Frame>, ProtocolError> {
        let mut src = BytesMut::new();
        for r in wire {
            src.extend_from_slice(r);
        }
        let mut out = Vec::new();
        while let Some(f) = codec.decode(&mut src)? {
            out.push(f);
        }
        Ok(out)
    }

    fn plain_frames(f: &[Bytes]) -> Vec<Frame> {
        let mut src = BytesMut::new();
        for b in f {
            src.extend_from_slice(b);
        }
        let mut out = Vec::new();
        while let Ok(Some(frame)) = FrameCodec.decode(&mut src) {
            out.push(frame);
        }
        out
    }

    #[test]
    fn frames_round_trip_in_records_of_whole_frames() {
        for cipher in [
            TransportCipher::Aes256Gcm,
            TransportCipher::ChaCha20Poly1305,
        ] {
            let keys = || SessionKeys::derive(&[3; 32], b"", &[9; 32], cipher);
            let (mut sealer, _) = keys().split(false, RekeyPolicy::default());
            let (_, opener) = keys().split(true, RekeyPolicy::default());
            let mut codec = SealedFrameCodec::new(opener);
            let sent = frames(40, 10_000);
            let mut wire = Vec::new();
            sealer.seal(&mut sent.clone(), &mut wire);
            assert!(wire.len() > 1 && wire.len() < 40, "{} records", wire.len());
            let all: Vec<u8> = wire.iter().flat_map(|r| r.to_vec()).collect();
            assert!(
                !all.windows(64).any(|w| w.iter().all(|b| *b == 5)),
                "plaintext visible"
            );
            assert_eq!(
                decode_all(&mut codec, &wire).expect("opens"),
                plain_frames(&sent)
            );
        }
    }

    /// A direct write's records, sealed one by one into one reused buffer, share the record
    /// numbers with the writer's: interleaved, every frame opens, in order.
    #[test]
    fn records_sealed_into_a_buffer_open_in_turn_with_the_writers() {
        let (mut s, mut c) = pair(RekeyPolicy::default());
        let small = frames(3, 64);
        let mut wire = Vec::new();
        let mut scratch = BytesMut::new();
        s.seal_into(&small[0], &mut scratch);
        s.seal_into(&small[1], &mut scratch);
        assert_eq!(
            scratch.len(),
            2 * (RECORD_HEADER + small[0].len() + TAG_LEN)
        );
        wire.push(scratch.split().freeze());
        s.seal(&mut frames(2, 5_000), &mut wire);
        s.seal_into(&small[2], &mut scratch);
        wire.push(scratch.split().freeze());
        let all: Vec<u8> = wire.iter().flat_map(|r| r.to_vec()).collect();
        assert!(
            !all.windows(64).any(|w| w.iter().all(|b| *b == 2)),
            "plaintext visible"
        );
        let expected: Vec<Frame> = plain_frames(&small[..2])
            .into_iter()
            .chain(plain_frames(&frames(2, 5_000)))
            .chain(plain_frames(&small[2..]))
            .collect();
        assert_eq!(decode_all(&mut c, &wire).expect("opens"), expected);
    }

    /// Large frames no one else holds are sealed where they lie (word, frame, tag: three
    /// buffers, no copy); small ones share a record; all of them open to the same frames.
    #[test]
    fn large_frames_are_sealed_in_place_and_small_ones_together() {
        let (mut s, mut c) = pair(RekeyPolicy::default());
        let expected = plain_frames(&frames(3, 20_000));
        let mut mixed = frames(3, 20_000);
        mixed.extend(frames(5, 100));
        let expected: Vec<Frame> = expected
            .into_iter()
            .chain(plain_frames(&frames(5, 100)))
            .collect();
        let before: Vec<*const u8> = mixed.iter().map(|f| f.as_ptr()).collect();
        let mut wire = Vec::new();
        s.seal(&mut mixed, &mut wire);
        assert_eq!(wire.len(), 3 * 3 + 1, "three in place, one shared record");
        for (i, ptr) in before.iter().take(3).enumerate() {
            assert_eq!(wire[3 * i + 1].as_ptr(), *ptr, "frame {i} was copied");
            assert_eq!(wire[3 * i].len(), RECORD_HEADER);
            assert_eq!(wire[3 * i + 2].len(), TAG_LEN);
        }
        let all: Vec<u8> = wire.iter().flat_map(|r| r.to_vec()).collect();
        assert!(
            !all.windows(64).any(|w| w.iter().all(|b| *b == 1)),
            "plaintext visible"
        );
        assert_eq!(decode_all(&mut c, &wire).expect("opens"), expected);
    }

    #[test]
    fn a_flipped_dropped_replayed_or_reordered_record_fails() {
        let sent = frames(4, 40_000);
        let sealed = || {
            let (mut s, c) = pair(RekeyPolicy::default());
            let mut wire = Vec::new();
            for f in &sent {
                s.seal(&mut vec![f.clone()], &mut wire);
            }
            (wire, c)
        };
        let (wire, mut c) = sealed();
        let mut flipped = wire.clone();
        let mut r = flipped[1].to_vec();
        r[100] ^= 1;
        flipped[1] = Bytes::from(r);
        assert!(matches!(
            decode_all(&mut c, &flipped),
            Err(ProtocolError::Integrity)
        ));
        for tampered in [
            vec![wire[0].clone(), wire[2].clone()],
            vec![wire[0].clone(), wire[0].clone()],
            vec![wire[1].clone(), wire[0].clone()],
        ] {
            let (_, mut c) = sealed();
            assert!(matches!(
                decode_all(&mut c, &tampered),
                Err(ProtocolError::Integrity)
            ));
        }
        // Another session's records (another transcript): refused.
        let other = SessionKeys::derive(&[7; 32], b"s", &[2; 32], TransportCipher::Aes256Gcm);
        let mut c = SealedFrameCodec::new(other.split(false, RekeyPolicy::default()).1);
        assert!(matches!(
            decode_all(&mut c, &wire),
            Err(ProtocolError::Integrity)
        ));
    }

    #[test]
    fn rekeying_after_a_volume_changes_keys_without_losing_a_frame() {
        let policy = RekeyPolicy {
            bytes: 100_000,
            interval: Duration::from_secs(3600),
        };
        let (mut s, mut c) = pair(policy);
        let sent = frames(50, 30_000);
        let mut wire = Vec::new();
        for f in &sent {
            s.seal(&mut vec![f.clone()], &mut wire);
        }
        assert!(s.rekeys() >= 10, "{} rekeys", s.rekeys());
        assert_eq!(
            decode_all(&mut c, &wire).expect("opens"),
            plain_frames(&sent)
        );
        assert_eq!(c.opener.rekeys(), s.rekeys());
        // A KEY_UPDATE bit set by a relay makes the receiver advance alone: the record fails.
        let (mut s, mut c) = pair(RekeyPolicy::default());
        let mut wire = Vec::new();
        s.seal(&mut frames(1, 10), &mut wire);
        let mut r = wire[0].to_vec();
        r[0] |= 0x80;
        assert!(matches!(
            decode_all(&mut c, &[Bytes::from(r)]),
            Err(ProtocolError::Integrity)
        ));
    }

    #[test]
    fn a_key_past_its_interval_is_replaced_at_the_next_record_once_checked() {
        let policy = RekeyPolicy {
            bytes: 1 << 30,
            interval: Duration::from_secs(60),
        };
        let (mut s, mut c) = pair(policy);
        let mut wire = Vec::new();
        s.seal(&mut frames(1, 10), &mut wire);
        // Younger than its interval: kept.
        s.check_age(Instant::now());
        s.seal(&mut frames(1, 10), &mut wire);
        assert_eq!(s.rekeys(), 0);
        // Past it: replaced at the next record, once only.
        s.check_age(Instant::now() + Duration::from_secs(61));
        assert_eq!(s.rekeys(), 0, "not before a record is sealed");
        s.seal(&mut frames(1, 10), &mut wire);
        s.seal(&mut frames(1, 10), &mut wire);
        assert_eq!(s.rekeys(), 1);
        assert_eq!(decode_all(&mut c, &wire).expect("opens").len(), 4);
        assert_eq!(c.opener.rekeys(), 1);
    }

    #[test]
    fn oversized_or_runt_records_are_refused_before_any_allocation() {
        let (_, mut c) = pair(RekeyPolicy::default());
        let mut src = BytesMut::from(&[0x7f, 0xff, 0xff, 0xff, 0, 0][..]);
        assert!(matches!(
            c.decode(&mut src),
            Err(ProtocolError::RecordSize(_))
        ));
        let mut src = BytesMut::from(&[0, 0, 0, 3, 1, 2, 3][..]);
        assert!(matches!(
            c.decode(&mut src),
            Err(ProtocolError::RecordSize(3))
        ));
    }
}
