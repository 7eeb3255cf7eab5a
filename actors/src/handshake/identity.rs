//! A node's identity: the Ed25519 key pair it signs handshakes with (pinned by its peers, kept
//! in its state file), the signatures' coverage and check, and the printable forms.

use super::*;

/// A dialer's identity for one tunnel: an Ed25519 key pair the acceptor pins to the tunnel's
/// name, kept in the state file so a restarted dialer can reclaim its name.
pub struct Identity {
    /// The private seed, for the state file.
    seed: [u8; 32],
    /// The key pair that signs the handshake's transcript.
    pair: Ed25519KeyPair,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Identity({})", fingerprint(&self.public()))
    }
}

impl Identity {
    pub fn generate() -> Identity {
        let mut seed = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut seed);
        match Identity::from_seed(seed) {
            Ok(id) => id,
            // Any 32 bytes are a valid Ed25519 seed.
            Err(_) => unreachable!("Ed25519 accepts any 32-byte seed"),
        }
    }

    fn from_seed(seed: [u8; 32]) -> Result<Identity, String> {
        let pair = Ed25519KeyPair::from_seed_unchecked(&seed)
            .map_err(|_| "not an Ed25519 seed".to_owned())?;
        Ok(Identity { seed, pair })
    }

    /// From the state file's hex.
    pub fn from_hex(text: &str) -> Result<Identity, String> {
        let seed: [u8; 32] = from_hex(text)
            .and_then(|v| v.try_into().ok())
            .ok_or_else(|| "an identity is 64 hex digits".to_owned())?;
        Identity::from_seed(seed)
    }

    pub fn to_hex(&self) -> String {
        to_hex(&self.seed)
    }

    pub fn public(&self) -> [u8; IDENTITY_LEN] {
        let mut pk = [0u8; IDENTITY_LEN];
        pk.copy_from_slice(self.pair.public_key().as_ref());
        pk
    }

    pub(super) fn sign(
        &self,
        label: &[u8],
        transcript: &[u8; 32],
        terms: Option<&Terms>,
    ) -> [u8; SIGNATURE_LEN] {
        let mut sig = [0u8; SIGNATURE_LEN];
        sig.copy_from_slice(self.pair.sign(&signed(label, transcript, terms)).as_ref());
        sig
    }
}

/// What an identity signature covers: a label naming the signer's role, the transcript and (for
/// the acceptor) the terms it grants.
pub(super) fn signed(label: &[u8], transcript: &[u8; 32], terms: Option<&Terms>) -> Vec<u8> {
    let mut msg = label.to_vec();
    msg.extend_from_slice(transcript);
    if let Some(terms) = terms {
        let mut b = BytesMut::new();
        put_terms(&mut b, terms);
        msg.extend_from_slice(&b);
    }
    msg
}

/// Whether `signature` is `identity`'s over `label`, the transcript and the terms.
pub(super) fn signature_ok(
    identity: &[u8; IDENTITY_LEN],
    signature: &[u8; SIGNATURE_LEN],
    label: &[u8],
    transcript: &[u8; 32],
    terms: Option<&Terms>,
) -> bool {
    signature::UnparsedPublicKey::new(&signature::ED25519, identity)
        .verify(&signed(label, transcript, terms), signature)
        .is_ok()
}

/// A short printable form of a public identity, for logs and `GET /config`.
pub fn fingerprint(identity: &[u8; IDENTITY_LEN]) -> String {
    to_hex(&identity[..8])
}

pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A public identity from its 64 hex digits (the state file, `"peer_identity"`).
pub fn parse_identity(text: &str) -> Option<[u8; IDENTITY_LEN]> {
    from_hex(text).and_then(|v| v.try_into().ok())
}

pub fn from_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || !text.is_ascii() {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}
