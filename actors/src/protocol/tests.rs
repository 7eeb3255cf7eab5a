//! The frame codec's round trips, partial input, limits and random input.

use super::*;

fn roundtrip(frame: Frame) {
    let mut buf = BytesMut::new();
    frame.encode(&mut buf);
    let decoded = FrameCodec
        .decode(&mut buf)
        .expect("decodes")
        .expect("complete");
    assert_eq!(decoded, frame);
    assert!(buf.is_empty());
}

#[test]
fn frames_roundtrip() {
    roundtrip(Frame::Open {
        stream: 7,
        service: "service1".into(),
        keyed: None,
        protocol: Protocol::Tcp,
        origin: None,
    });
    roundtrip(Frame::Open {
        stream: 7,
        service: "service1".into(),
        keyed: None,
        protocol: Protocol::Udp,
        origin: Some(Origin {
            client: "192.0.2.7:5353".parse().expect("addr"),
            reached: "127.0.0.1:53".parse().expect("addr"),
        }),
    });
    roundtrip(Frame::Open {
        stream: 7,
        service: "v6".into(),
        keyed: None,
        protocol: Protocol::Tcp,
        origin: Some(Origin {
            client: "[2001:db8::7]:5353".parse().expect("addr"),
            reached: "[::1]:53".parse().expect("addr"),
        }),
    });
    roundtrip(Frame::Open {
        stream: 9,
        service: "s".into(),
        keyed: Some(KeyedOpen {
            cipher: CipherKind::ChaCha20Poly1305,
            nonce: [3; NONCE_LEN],
            check: [4; CHECK_LEN],
        }),
        protocol: Protocol::Tcp,
        origin: Some(
            Origin {
                client: "[::ffff:10.1.2.3]:40000".parse().expect("addr"),
                reached: "10.0.0.1:80".parse().expect("addr"),
            }
            .one_family(),
        ),
    });
    roundtrip(Frame::OpenOk {
        stream: 1,
        nonce: None,
    });
    roundtrip(Frame::OpenOk {
        stream: 1,
        nonce: Some([9; NONCE_LEN]),
    });
    roundtrip(Frame::OpenFail {
        stream: 1,
        reason: "no such service".into(),
    });
    roundtrip(Frame::Data {
        stream: 3,
        payload: BytesMut::from(&b"hello"[..]),
    });
    roundtrip(Frame::Fin { stream: 3 });
    roundtrip(Frame::Reset {
        stream: 3,
        code: ResetCode::Integrity,
    });
    roundtrip(Frame::Window {
        stream: 0,
        increment: 65536,
    });
    roundtrip(Frame::Ping(42));
    roundtrip(Frame::Pong(42));
    roundtrip(Frame::GoAway {
        code: GoAway::Deleted,
        reason: "deleted".into(),
    });
    roundtrip(Frame::GoAway {
        code: GoAway::Replaced,
        reason: "replaced".into(),
    });
    roundtrip(Frame::GoAway {
        code: GoAway::Leaving,
        reason: "shutting down".into(),
    });
}

#[test]
fn partial_frames_wait_for_more() {
    let mut full = BytesMut::new();
    Frame::Ping(1).encode(&mut full);
    let mut part = BytesMut::from(&full[..HEADER_LEN + 3]);
    assert_eq!(FrameCodec.decode(&mut part).expect("ok"), None);
}

#[test]
fn oversized_and_unknown_frames_are_errors() {
    let mut buf = BytesMut::new();
    put_header(&mut buf, kind::DATA, 1, MAX_DATA + 1);
    assert!(matches!(
        FrameCodec.decode(&mut buf),
        Err(ProtocolError::TooLarge { .. })
    ));
    let mut buf = BytesMut::new();
    put_header(&mut buf, 77, 1, 0);
    assert!(matches!(
        FrameCodec.decode(&mut buf),
        Err(ProtocolError::UnknownKind(77))
    ));
    let mut buf = BytesMut::new();
    put_header(&mut buf, kind::WINDOW, 1, 3);
    buf.put_slice(&[0, 0, 1]);
    assert!(matches!(
        FrameCodec.decode(&mut buf),
        Err(ProtocolError::Malformed(_))
    ));
}

/// Garbage and mutated frames: the decoder returns frames or errors, never panics, and always
/// makes progress or waits for more.
#[test]
fn random_input_never_panics() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(6229);
    let mut valid = BytesMut::new();
    Frame::Open {
        stream: 5,
        service: "svc".into(),
        keyed: Some(KeyedOpen {
            cipher: CipherKind::Rc4,
            nonce: [1; NONCE_LEN],
            check: [2; CHECK_LEN],
        }),
        protocol: Protocol::Udp,
        origin: Some(Origin {
            client: "192.0.2.1:1".parse().expect("addr"),
            reached: "[::1]:2".parse().expect("addr"),
        }),
    }
    .encode(&mut valid);
    Frame::Window {
        stream: 0,
        increment: 9,
    }
    .encode(&mut valid);
    for round in 0..20_000 {
        let mut input = if round % 2 == 0 {
            let len = rng.gen_range(0..64);
            BytesMut::from(&(0..len).map(|_| rng.gen::<u8>()).collect::<Vec<u8>>()[..])
        } else {
            let mut v = valid.clone();
            for _ in 0..rng.gen_range(1..4) {
                let i = rng.gen_range(0..v.len());
                v[i] = rng.gen();
            }
            v
        };
        for _ in 0..8 {
            let before = input.len();
            match FrameCodec.decode(&mut input) {
                Ok(Some(_)) => assert!(input.len() < before, "no progress"),
                Ok(None) | Err(_) => break,
            }
        }
    }
}
