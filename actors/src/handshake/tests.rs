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

/// Runs the whole exchange in memory; the acceptor's verdict and the dialer's.
fn exchange(
    dialer_secret: Option<&str>,
    acceptor_secret: Option<&str>,
) -> (Result<(), HandshakeError>, Result<Terms, HandshakeError>) {
    let id = Arc::new(Identity::generate());
    let mut d = Dialer::new("tunnel1", terms(), id, dialer_secret.map(Secret::new));
    let (hello, n) = Message::parse(d.hello()).expect("ok").expect("whole");
    assert_eq!(n, d.hello().len());
    let a = Acceptor::on_hello(hello, d.hello()).expect("hello");
    assert_eq!(a.hello.name, "tunnel1");
    let (challenge, _) = Message::parse(a.challenge()).expect("ok").expect("whole");
    let proof = d.on_challenge(challenge, a.challenge()).expect("proof");
    let (proof, _) = Message::parse(&proof).expect("ok").expect("whole");
    let secret = acceptor_secret.map(Secret::new);
    let verdict = a.verify(&proof, secret.as_ref());
    let welcome = a.welcome(secret.as_ref(), terms());
    let (welcome, _) = Message::parse(&welcome).expect("ok").expect("whole");
    (verdict, d.on_welcome(welcome))
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
    let id = Arc::new(Identity::generate());
    let secret = Some(Secret::new("s"));
    let mut d = Dialer::new("t", terms(), id, secret.clone());
    let (hello, _) = Message::parse(d.hello()).expect("ok").expect("whole");
    let first = Acceptor::on_hello(hello.clone(), d.hello()).expect("hello");
    let (c, _) = Message::parse(first.challenge())
        .expect("ok")
        .expect("whole");
    let proof = d.on_challenge(c, first.challenge()).expect("proof");
    let (proof, _) = Message::parse(&proof).expect("ok").expect("whole");
    first.verify(&proof, secret.as_ref()).expect("genuine");
    // The same HELLO and PROOF replayed to a new handshake: the new nonce refuses it.
    let second = Acceptor::on_hello(hello.clone(), d.hello()).expect("hello");
    assert!(second.verify(&proof, secret.as_ref()).is_err());
    // Someone else's identity in HELLO: the signature fails though the secret is right.
    let Message::Hello(mut h) = hello else {
        unreachable!()
    };
    h.identity = Identity::generate().public();
    let raw = Message::Hello(h.clone()).encode();
    let mut d2 = Dialer::new("t", terms(), Arc::new(Identity::generate()), secret.clone());
    let a = Acceptor::on_hello(Message::Hello(h), &raw).expect("hello");
    let (c, _) = Message::parse(a.challenge()).expect("ok").expect("whole");
    let p = d2.on_challenge(c, a.challenge()).expect("proof");
    let (p, _) = Message::parse(&p).expect("ok").expect("whole");
    assert!(a.verify(&p, secret.as_ref()).is_err());
}

#[test]
fn codec_round_trips_and_refuses_garbage() {
    for msg in [
        Message::Challenge { nonce: [1; 32] },
        Message::Proof {
            mac: [2; 32],
            signature: [3; 64],
        },
        Message::Welcome {
            terms: terms(),
            mac: [4; 32],
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
    let mut huge = Message::Challenge { nonce: [0; 32] }.encode();
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
    let id = Arc::new(Identity::generate());
    let d = Dialer::new("t", terms(), id, None);
    let good = d.hello().to_vec();
    for _ in 0..20_000 {
        let mut v = good.clone();
        for _ in 0..rng.gen_range(1..4) {
            let i = rng.gen_range(0..v.len());
            v[i] = rng.gen();
        }
        v.truncate(rng.gen_range(0..=v.len()));
        if let Ok(Some((msg, _))) = Message::parse(&v) {
            if let Ok(a) = Acceptor::on_hello(msg, &v) {
                let _ = a.verify(
                    &Message::Proof {
                        mac: [0; 32],
                        signature: [0; 64],
                    },
                    None,
                );
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
}
