//! The handshake's unit tests: both state machines run in memory, with and without secrets.

use super::*;

fn terms() -> Terms {
    Terms {
        windows: Windows {
            stream: 1 << 20,
            tunnel: 1 << 25,
        },
        max_streams: 4096,
    }
}

fn sealed() -> Transport {
    Transport {
        encrypt: true,
        aes: true,
        lane: false,
    }
}

fn dialer(secret: Option<Secret>) -> Dialer {
    Dialer::new(
        "t",
        terms(),
        Arc::new(Identity::generate()),
        secret,
        sealed(),
    )
    .expect("dialer")
}

fn acceptor(hello: Message, raw: &[u8]) -> Result<Acceptor, HandshakeError> {
    Acceptor::on_hello(hello, raw, Arc::new(Identity::generate()), sealed())
}

/// Runs the whole exchange in memory; the acceptor's verdict and the dialer's.
fn exchange(
    dialer_secret: Option<&str>,
    acceptor_secret: Option<&str>,
) -> (Result<(), HandshakeError>, Result<Terms, HandshakeError>) {
    let id = Arc::new(Identity::generate());
    let mut d = Dialer::new(
        "tunnel1",
        terms(),
        id,
        dialer_secret.map(Secret::new),
        sealed(),
    )
    .expect("dialer");
    let (hello, n) = Message::parse(d.hello()).expect("ok").expect("whole");
    assert_eq!(n, d.hello().len());
    let mut a = acceptor(hello, d.hello()).expect("hello");
    let (challenge, _) = Message::parse(a.challenge()).expect("ok").expect("whole");
    let proof = d.on_challenge(challenge, a.challenge()).expect("proof");
    let (proof, _) = Message::parse(&proof).expect("ok").expect("whole");
    assert_eq!(a.open_proof(&proof).expect("opens").name, "tunnel1");
    let secret = acceptor_secret.map(Secret::new);
    let verdict = a.verify(secret.as_ref());
    let welcome = a.welcome(secret.as_ref(), terms());
    let (welcome, _) = Message::parse(&welcome).expect("ok").expect("whole");
    (verdict, d.on_welcome(welcome).map(|e| e.terms))
}

#[test]
fn matching_secrets_authenticate_both_ways() {
    let (a, d) = exchange(Some("s3cret"), Some("s3cret"));
    a.expect("acceptor accepts");
    assert_eq!(d.expect("dialer accepts"), terms());
    let (a, d) = exchange(None, None);
    assert!(
        a.is_ok() && d.is_ok(),
        "no secret on either side: identity only"
    );
}

#[test]
fn a_missing_or_wrong_secret_fails_on_the_side_that_checks() {
    for (dialer, acceptor) in [
        (Some("right"), Some("wrong")),
        (None, Some("right")),
        (Some("right"), None),
    ] {
        let (a, d) = exchange(dialer, acceptor);
        let a = a.expect_err("acceptor refuses");
        assert!(a.is_auth_failure(), "{a}");
        let d = d.expect_err("dialer refuses too");
        assert!(d.is_auth_failure(), "{d}");
    }
}

#[test]
fn a_replayed_proof_or_a_forged_identity_is_refused() {
    let secret = Some(Secret::new("s"));
    let mut d = dialer(secret.clone());
    let (hello, _) = Message::parse(d.hello()).expect("ok").expect("whole");
    let mut first = acceptor(hello.clone(), d.hello()).expect("hello");
    let (c, _) = Message::parse(first.challenge())
        .expect("ok")
        .expect("whole");
    let proof = d.on_challenge(c, first.challenge()).expect("proof");
    let (proof, _) = Message::parse(&proof).expect("ok").expect("whole");
    first.open_proof(&proof).expect("opens");
    first.verify(secret.as_ref()).expect("genuine");
    // The same HELLO and PROOF replayed to a new handshake: it does not even open (the new
    // ephemeral key and nonce make another key).
    let mut second = acceptor(hello.clone(), d.hello()).expect("hello");
    assert!(second.open_proof(&proof).is_err());
    assert!(second.verify(secret.as_ref()).is_err());
    // A PROOF with one byte changed: refused.
    let mut third = acceptor(hello, d.hello()).expect("hello");
    let Message::Proof { mut sealed } = proof else {
        unreachable!()
    };
    sealed[3] ^= 1;
    assert!(third.open_proof(&Message::Proof { sealed }).is_err());
}

/// What crosses the wire in the clear says neither the tunnel's name nor the dialer's identity.
#[test]
fn the_name_and_the_dialer_identity_cross_the_wire_sealed() {
    let id = Arc::new(Identity::generate());
    let mut d =
        Dialer::new("a-secret-tunnel-name", terms(), id.clone(), None, sealed()).expect("dialer");
    let (hello, _) = Message::parse(d.hello()).expect("ok").expect("whole");
    let mut a = acceptor(hello, d.hello()).expect("hello");
    let (c, _) = Message::parse(a.challenge()).expect("ok").expect("whole");
    let proof = d.on_challenge(c, a.challenge()).expect("proof");
    let mut wire = d.hello().to_vec();
    wire.extend_from_slice(a.challenge());
    wire.extend_from_slice(&proof);
    let seen = |needle: &[u8]| wire.windows(needle.len()).any(|w| w == needle);
    assert!(!seen(b"a-secret-tunnel-name"));
    assert!(!seen(&id.public()));
    let (proof, _) = Message::parse(&proof).expect("ok").expect("whole");
    let claim = a.open_proof(&proof).expect("opens").clone();
    assert_eq!(claim.name, "a-secret-tunnel-name");
    assert_eq!(claim.identity, id.public());
}

#[test]
fn codec_round_trips_and_refuses_garbage() {
    for msg in [
        Message::Challenge {
            nonce: [1; 32],
            identity: [5; 32],
            ephemeral: [6; 32],
            transport: sealed(),
        },
        Message::Proof {
            sealed: vec![2; 150],
        },
        Message::Welcome {
            terms: terms(),
            mac: [4; 32],
            signature: [7; 64],
        },
        Message::Refuse {
            code: RefuseCode::NameHeld,
            reason: "held".into(),
        },
    ] {
        let raw = msg.encode();
        assert_eq!(Message::parse(&raw).expect("ok"), Some((msg, raw.len())));
        assert_eq!(Message::parse(&raw[..raw.len() - 1]).expect("ok"), None);
    }
    assert!(matches!(
        Message::parse(b"GET / HTTP/1.1\r\n"),
        Err(HandshakeError::BadMagic)
    ));
    // A version-1 hello: MNET, 1, name length...
    assert!(matches!(
        Message::parse(b"MNET\x01\x07tunnel1"),
        Err(HandshakeError::Version(1))
    ));
    let mut huge = Message::Challenge {
        nonce: [0; 32],
        identity: [0; 32],
        ephemeral: [0; 32],
        transport: sealed(),
    }
    .encode();
    huge[6..8].copy_from_slice(&u16::MAX.to_be_bytes());
    assert!(matches!(
        Message::parse(&huge),
        Err(HandshakeError::TooLarge(_))
    ));
}

#[test]
fn random_and_mutated_messages_never_panic() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(2);
    let d = dialer(None);
    let good = d.hello().to_vec();
    for _ in 0..20_000 {
        let mut v = good.clone();
        for _ in 0..rng.gen_range(1..4) {
            let i = rng.gen_range(0..v.len());
            v[i] = rng.gen();
        }
        v.truncate(rng.gen_range(0..=v.len()));
        if let Ok(Some((msg, _))) = Message::parse(&v) {
            if let Ok(mut a) = acceptor(msg, &v) {
                let _ = a.open_proof(&Message::Proof {
                    sealed: vec![0; 150],
                });
                let _ = a.verify(None);
            }
        }
    }
}

#[test]
fn identities_survive_the_state_file() {
    let id = Identity::generate();
    let back = Identity::from_hex(&id.to_hex()).expect("hex");
    assert_eq!(back.public(), id.public());
    assert!(Identity::from_hex("zz").is_err());
    assert_eq!(version1_refusal()[..6], *b"MNET\x01\x01");
    let v2 = older_refusal(2);
    assert_eq!(v2[..6], *b"MNET\x02\x05");
    assert!(String::from_utf8_lossy(&v2).contains("version 4"));
    let v3 = older_refusal(3);
    assert_eq!(v3[..6], *b"MNET\x03\x05");
    assert_eq!(older_refusal(9)[..6], *b"MNET\x02\x05");
}

/// Both ends derive the same keys, and their records open on the other side; a middle that
/// answers each side with its own handshake is caught by the secret, or by the dialer's pin.
#[test]
fn both_ends_agree_keys_and_a_spliced_handshake_is_refused() {
    use crate::record::{RekeyPolicy, SealedFrameCodec};
    use tokio_util::codec::Decoder;
    let secret = Some(Secret::new("s"));
    let mut d = dialer(secret.clone());
    let (hello, _) = Message::parse(d.hello()).expect("ok").expect("whole");
    let acceptor_id = Arc::new(Identity::generate());
    let mut a = Acceptor::on_hello(hello, d.hello(), acceptor_id.clone(), sealed()).expect("hello");
    let (c, _) = Message::parse(a.challenge()).expect("ok").expect("whole");
    let proof = d.on_challenge(c, a.challenge()).expect("proof");
    let (proof, _) = Message::parse(&proof).expect("ok").expect("whole");
    a.open_proof(&proof).expect("opens");
    a.verify(secret.as_ref()).expect("verified");
    let (w, _) = Message::parse(&a.welcome(secret.as_ref(), terms()))
        .expect("ok")
        .expect("whole");
    let done = d.on_welcome(w).expect("welcome");
    assert_eq!(done.peer_identity, acceptor_id.public());
    let (mut sealer, _) = done
        .keys
        .expect("sealed")
        .split(true, RekeyPolicy::default());
    let (_, opener) = a
        .keys(secret.as_ref())
        .expect("sealed")
        .split(false, RekeyPolicy::default());
    let mut wire = Vec::new();
    let mut frame = BytesMut::new();
    crate::protocol::Frame::Ping(7).encode(&mut frame);
    sealer.seal(&mut vec![frame.freeze()], &mut wire);
    let mut src = BytesMut::from(&wire[0][..]);
    assert_eq!(
        SealedFrameCodec::new(opener)
            .decode(&mut src)
            .expect("opens"),
        Some(crate::protocol::Frame::Ping(7))
    );

    // A WELCOME signed by another identity than CHALLENGE named: refused.
    let mut d = dialer(None);
    let (hello, _) = Message::parse(d.hello()).expect("ok").expect("whole");
    let a = acceptor(hello.clone(), d.hello()).expect("hello");
    let (c, _) = Message::parse(a.challenge()).expect("ok").expect("whole");
    d.on_challenge(c, a.challenge()).expect("proof");
    let impostor = acceptor(hello, d.hello()).expect("hello");
    let (w, _) = Message::parse(&impostor.welcome(None, terms()))
        .expect("ok")
        .expect("whole");
    assert!(d.on_welcome(w).is_err(), "a WELCOME from another handshake");
}

#[test]
fn sealed_unless_both_turn_it_off_with_aes_only_when_both_accelerate_it() {
    let t = |encrypt, aes| Transport {
        encrypt,
        aes,
        lane: false,
    };
    assert_eq!(Transport::agree(t(false, true), t(false, true)), None);
    assert_eq!(
        Transport::agree(t(true, true), t(false, true)),
        Some(TransportCipher::Aes256Gcm)
    );
    assert_eq!(
        Transport::agree(t(false, false), t(true, true)),
        Some(TransportCipher::ChaCha20Poly1305)
    );
}

#[test]
fn a_lane_request_is_read_and_answered_in_kind_and_other_bits_are_refused() {
    let lane = Transport {
        lane: true,
        ..sealed()
    };
    let d = Dialer::new("t", terms(), Arc::new(Identity::generate()), None, lane).expect("dialer");
    let (hello, _) = Message::parse(d.hello()).expect("ok").expect("whole");
    let a = acceptor(hello, d.hello()).expect("hello");
    assert!(a.hello.transport.lane, "the acceptor reads the request");
    let (challenge, _) = Message::parse(a.challenge()).expect("ok").expect("whole");
    let Message::Challenge { transport, .. } = challenge else {
        panic!("a CHALLENGE");
    };
    assert!(transport.lane, "and echoes it");
    // A plain dialer's CHALLENGE says nothing of lanes.
    let d = dialer(None);
    let (hello, _) = Message::parse(d.hello()).expect("ok").expect("whole");
    let a = acceptor(hello, d.hello()).expect("hello");
    let (challenge, _) = Message::parse(a.challenge()).expect("ok").expect("whole");
    assert!(matches!(challenge, Message::Challenge { transport, .. } if !transport.lane));
    // Bit 2 (the lanes that shared their tunnel's streams) and bits 4 and up are refused.
    for bit in [4, 16, 128] {
        let mut raw = d.hello().to_vec();
        let last = raw.len() - 1;
        raw[last] |= bit;
        assert!(Message::parse(&raw).is_err(), "bit {bit}");
    }
}

#[test]
fn a_low_order_ephemeral_key_is_refused_both_ways() {
    // X25519 with a point of small order (0 here) gives a shared secret anyone knows: refused,
    // whichever side sends it.
    let d = dialer(None);
    let Ok(Some((Message::Hello(mut hello), _))) = Message::parse(d.hello()) else {
        panic!("a HELLO");
    };
    hello.ephemeral = [0; EPHEMERAL_LEN];
    let raw = Message::Hello(hello.clone()).encode();
    let refused = acceptor(Message::Hello(hello), &raw).err();
    assert!(
        matches!(refused, Some(HandshakeError::Malformed(_))),
        "{refused:?}"
    );

    let mut d = dialer(None);
    let (hello, _) = Message::parse(d.hello()).expect("ok").expect("whole");
    let a = acceptor(hello, d.hello()).expect("hello");
    let Ok(Some((
        Message::Challenge {
            nonce,
            identity,
            transport,
            ..
        },
        _,
    ))) = Message::parse(a.challenge())
    else {
        panic!("a CHALLENGE");
    };
    let challenge = Message::Challenge {
        nonce,
        identity,
        ephemeral: [0; EPHEMERAL_LEN],
        transport,
    };
    let raw = challenge.encode();
    let refused = d.on_challenge(challenge, &raw).err();
    assert!(
        matches!(refused, Some(HandshakeError::Malformed(_))),
        "{refused:?}"
    );
}
