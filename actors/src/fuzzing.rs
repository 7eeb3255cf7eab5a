//! Entry points of the fuzz targets in `fuzz/` (`cargo +nightly fuzz run frames`, ...), kept here
//! so that an ordinary test replays the regression corpus through exactly the same code.
//!
//! Each takes arbitrary bytes and must neither panic nor allocate by a length it has not checked.

use bytes::BytesMut;
use tokio_util::codec::Decoder;

use crate::cipher::Secret;
use crate::handshake::{Acceptor, Dialer, Identity, Message, Terms};
use crate::protocol::{FrameCodec, Windows};

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
    let mut dialer = Dialer::new(
        "fuzz",
        terms,
        std::sync::Arc::new(fixed_identity()),
        Some(secret.clone()),
    );
    while let Ok(Some((msg, used))) = Message::parse(rest) {
        let raw = &rest[..used];
        match &msg {
            Message::Hello(_) => acceptor = Acceptor::on_hello(msg.clone(), raw).ok(),
            Message::Proof { .. } => {
                if let Some(a) = &acceptor {
                    let _ = a.verify(&msg, None);
                    let _ = a.verify(&msg, Some(&secret));
                    let _ = a.welcome(Some(&secret), terms);
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

/// One identity for every run, so a crash reproduces.
fn fixed_identity() -> Identity {
    match Identity::from_hex(&"42".repeat(32)) {
        Ok(id) => id,
        Err(_) => unreachable!("64 hex digits are an identity"),
    }
}
