//! Entry points of the fuzz targets in `fuzz/` (`cargo +nightly fuzz run frames`, ...), kept here
//! so that an ordinary test replays the regression corpus through exactly the same code.
//!
//! Each takes arbitrary bytes and must neither panic nor allocate by a length it has not checked.

use bytes::BytesMut;
use tokio_util::codec::Decoder;

use crate::cipher::Secret;
use crate::handshake::{Acceptor, Dialer, Identity, Message, Terms, Transport};
use crate::protocol::{FrameCodec, Windows};
use crate::record::{RekeyPolicy, SealedFrameCodec, SessionKeys, TransportCipher};

/// The frame decoder on a byte stream: every frame decoded is encoded again and must decode to
/// itself.
pub fn frames(data: &[u8]) {
    let mut input = BytesMut::from(data);
    loop {
        let before = input.len();
        match FrameCodec.decode(&mut input) {
            Ok(Some(frame)) => {
                assert!(input.len() < before, "the decoder made no progress");
                let mut again = BytesMut::new();
                frame.encode(&mut again);
                let back = FrameCodec.decode(&mut again);
                assert!(
                    matches!(&back, Ok(Some(f)) if *f == frame),
                    "{frame:?} re-decodes as {back:?}"
                );
            }
            Ok(None) | Err(_) => return,
        }
    }
}

/// The handshake messages, parsed one after another and fed to both state machines, with and
/// without a secret.
pub fn handshake(data: &[u8]) {
    let terms = Terms {
        windows: Windows {
            stream: 1 << 20,
            tunnel: 1 << 25,
        },
        max_streams: 16,
    };
    let secret = Secret::new("fuzz");
    let mut rest = data;
    let mut acceptor: Option<Acceptor> = None;
    let identity = std::sync::Arc::new(fixed_identity());
    let transport = Transport {
        encrypt: true,
        aes: true,
        lane: false,
    };
    let Ok(mut dialer) = Dialer::new(
        "fuzz",
        terms,
        identity.clone(),
        Some(secret.clone()),
        transport,
    ) else {
        return;
    };
    while let Ok(Some((msg, used))) = Message::parse(rest) {
        let raw = &rest[..used];
        match &msg {
            Message::Hello(_) => {
                acceptor = Acceptor::on_hello(msg.clone(), raw, identity.clone(), transport).ok()
            }
            Message::Proof { .. } => {
                if let Some(a) = &mut acceptor {
                    if a.open_proof(&msg).is_ok() {
                        let _ = a.verify(None);
                        let _ = a.verify(Some(&secret));
                        let _ = a.welcome(Some(&secret), terms);
                        let _ = a.keys(Some(&secret));
                    }
                }
            }
            Message::Challenge { .. } => {
                let _ = dialer.on_challenge(msg.clone(), raw);
            }
            Message::Welcome { .. } | Message::Refuse { .. } => {
                let _ = dialer.on_welcome(msg.clone());
            }
        }
        rest = &rest[used..];
    }
}

/// The record layer's decoder on a byte stream: garbage, and records sealed under the fuzzer's
/// fixed keys (the input's first byte picks how many of its frames are sealed first), so both
/// the checks and the frames inside opened records are exercised.
pub fn records(data: &[u8]) {
    let keys = || SessionKeys::derive(&[5; 32], b"fuzz", &[6; 32], TransportCipher::Aes256Gcm);
    let (mut sealer, _) = keys().split(true, RekeyPolicy::default());
    let (_, opener) = keys().split(false, RekeyPolicy::default());
    let mut codec = SealedFrameCodec::new(opener);
    let mut input = BytesMut::new();
    if let Some((first, rest)) = data.split_first() {
        // The rest, cut into chunks sealed as records: whatever frames (or garbage) they hold
        // reach the frame decoder through an opened record.
        let chunks: Vec<bytes::Bytes> = rest
            .chunks(usize::from(*first).max(1) * 64)
            .map(bytes::Bytes::copy_from_slice)
            .collect();
        let mut sealed = Vec::new();
        for c in chunks {
            sealer.seal(&mut vec![c], &mut sealed);
        }
        for r in &sealed {
            input.extend_from_slice(r);
        }
        // Then the raw bytes as they are: never opened, never a panic.
        input.extend_from_slice(rest);
    }
    while let Ok(Some(_)) = codec.decode(&mut input) {}
}

/// One identity for every run, so a crash reproduces.
fn fixed_identity() -> Identity {
    match Identity::from_hex(&"42".repeat(32)) {
        Ok(id) => id,
        Err(_) => unreachable!("64 hex digits are an identity"),
    }
}
