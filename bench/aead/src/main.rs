//! Seals and opens 64 KiB frames (menet's largest DATA payload) with each AEAD crate, and
//! encrypts and decrypts them with each RC4 (a service key's default cipher), for one second of
//! one core each, and prints MiB/s. menet uses the fastest (README, "Encryption").
//!
//!     cargo run --release --manifest-path bench/aead/Cargo.toml

use std::time::{Duration, Instant};

use aes_gcm::aead::{AeadInPlace, KeyInit};

const FRAME: usize = 64 * 1024;

fn measure(name: &str, mut round: impl FnMut(&mut Vec<u8>, u64)) {
    let mut buf = vec![7u8; FRAME];
    let started = Instant::now();
    let mut n = 0u64;
    while started.elapsed() < Duration::from_secs(1) {
        round(&mut buf, n);
        n += 1;
    }
    let mib = (n * FRAME as u64) as f64 / (1 << 20) as f64 / started.elapsed().as_secs_f64();
    println!("{name:<40} {mib:>8.0} MiB/s (seal + open)");
}

fn nonce12(n: u64) -> [u8; 12] {
    let mut nonce = [0u8; 12];
    nonce[4..].copy_from_slice(&n.to_be_bytes());
    nonce
}

/// A seal-and-open round for one of the ring-style crates (`ring`, `aws_lc_rs`): the same API
/// under a different path, so one body for both.
macro_rules! ring_style_round {
    ($name:ident, $krate:ident) => {
        fn $name(alg: &'static $krate::aead::Algorithm) -> impl FnMut(&mut Vec<u8>, u64) {
            use $krate::aead::{Aad, LessSafeKey, Nonce, UnboundKey};
            let key = &[9u8; 32][..alg.key_len()];
            let key = LessSafeKey::new(UnboundKey::new(alg, key).expect("key"));
            move |buf, n| {
                buf.truncate(FRAME);
                let nonce = || Nonce::assume_unique_for_key(nonce12(n));
                let tag = key
                    .seal_in_place_separate_tag(nonce(), Aad::empty(), buf)
                    .expect("seal");
                buf.extend_from_slice(tag.as_ref());
                let len = key
                    .open_in_place(nonce(), Aad::empty(), buf)
                    .expect("open")
                    .len();
                buf.truncate(len);
            }
        }
    };
}

ring_style_round!(ring_round, ring);
ring_style_round!(aws_lc_round, aws_lc_rs);

fn rustcrypto_round<A: AeadInPlace + KeyInit>() -> impl FnMut(&mut Vec<u8>, u64) {
    let cipher = A::new_from_slice(&[9u8; 32]).expect("key");
    move |buf, n| {
        buf.truncate(FRAME);
        let nonce = nonce12(n);
        cipher
            .encrypt_in_place(nonce.as_slice().into(), b"", buf)
            .expect("seal");
        cipher
            .decrypt_in_place(nonce.as_slice().into(), b"", buf)
            .expect("open");
    }
}

/// RC4 as the `rc4` crate (RustCrypto) writes it: one state encrypts, another decrypts.
fn rustcrypto_rc4_round() -> impl FnMut(&mut Vec<u8>, u64) {
    use rc4::{consts::U32, KeyInit, Rc4, StreamCipher};
    let state = || <Rc4<U32> as KeyInit>::new(rc4::Key::<U32>::from_slice(&[9u8; 32]));
    let (mut seal, mut open) = (state(), state());
    move |buf, _| {
        seal.apply_keystream(buf);
        open.apply_keystream(buf);
    }
}

/// aws-lc's RC4 (its state in 32-bit words): one state encrypts, another decrypts.
fn aws_lc_rc4_round() -> impl FnMut(&mut Vec<u8>, u64) {
    use aws_lc_sys::{RC4_set_key, RC4, RC4_KEY};
    let state = || {
        let mut key = RC4_KEY {
            x: 0,
            y: 0,
            data: [0; 256],
        };
        // SAFETY: a valid RC4_KEY to write and 32 readable key bytes.
        unsafe { RC4_set_key(&mut key, 32, [9u8; 32].as_ptr()) };
        key
    };
    let (mut seal, mut open) = (state(), state());
    move |buf, _| {
        let at = buf.as_mut_ptr();
        // SAFETY: `buf.len()` bytes held exclusively; RC4 reads each byte before writing it.
        unsafe {
            RC4(&mut seal, buf.len(), at, at);
            RC4(&mut open, buf.len(), at, at);
        }
    }
}

fn main() {
    println!("AEAD crates on 64 KiB frames, one core:");
    for (name, alg) in [
        ("ChaCha20-Poly1305", &ring::aead::CHACHA20_POLY1305),
        ("AES-256-GCM", &ring::aead::AES_256_GCM),
        ("AES-128-GCM", &ring::aead::AES_128_GCM),
    ] {
        measure(&format!("ring {name}"), ring_round(alg));
    }
    for (name, alg) in [
        ("ChaCha20-Poly1305", &aws_lc_rs::aead::CHACHA20_POLY1305),
        ("AES-256-GCM", &aws_lc_rs::aead::AES_256_GCM),
        ("AES-128-GCM", &aws_lc_rs::aead::AES_128_GCM),
    ] {
        measure(&format!("aws-lc-rs {name}"), aws_lc_round(alg));
    }
    measure(
        "RustCrypto chacha20poly1305",
        rustcrypto_round::<chacha20poly1305::ChaCha20Poly1305>(),
    );
    measure(
        "RustCrypto aes-gcm",
        rustcrypto_round::<aes_gcm::Aes256Gcm>(),
    );
    measure("RustCrypto rc4", rustcrypto_rc4_round());
    measure("aws-lc RC4", aws_lc_rc4_round());
}
