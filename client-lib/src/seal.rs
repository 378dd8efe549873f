//! Sealed sender: what a message looks like to its recipient, and nobody else.
//!
//! A message is an [`Envelope`] sealed with HPKE (RFC 9180) in Auth mode —
//! DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, ChaCha20-Poly1305 — from the
//! sender's identity key to the recipient's. Auth mode authenticates the
//! sender to the recipient only: the recipient can check who sent it but
//! cannot prove it to anyone else (both could have computed the key), and
//! relays and mailboxes never see the sender at all: the sealed bytes travel
//! inside the fragment layer (`crate::fragment`), itself inside Sphinx.
//!
//! Sealed form: `version (1) ‖ sender identity key (32) ‖ enc (32) ‖ HPKE ciphertext`.
//! The associated data is the id of the queue the message is sent to, so a
//! sealed message cannot be moved to another queue.

use hpke::aead::ChaCha20Poly1305;
use hpke::kdf::HkdfSha256;
use hpke::kem::X25519HkdfSha256;
use hpke::{Deserializable, Kem, OpModeR, OpModeS, Serializable};
use murmur_wire::{MessageId, NodeId, QueueId};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::identity::{Identity, IdentityPublic};

const SEAL_VERSION: u8 = 1;
const ENVELOPE_VERSION: u8 = 1;
const INFO: &[u8] = b"murmur/sealed-sender/v1";
/// Bytes a sealed message adds to its envelope: version, sender key, enc, AEAD tag.
pub const SEAL_OVERHEAD: usize = 1 + 32 + 32 + 16;

/// What a message says.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Body {
    /// The first message of a relation, from the one who accepted the
    /// invitation: where to write back, and their name.
    Hello {
        /// The accepter's provider.
        reply_provider: NodeId,
        /// The queue the accepter created for the inviter.
        reply_queue: QueueId,
        /// The name the accepter suggests for themself.
        name: String,
    },
    /// A text message.
    Text(String),
    /// A file.
    File {
        /// Its name (the last path component only).
        name: String,
        /// Its bytes.
        data: Vec<u8>,
    },
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Body::Hello { .. } => f.write_str("Hello"),
            Body::Text(t) => write!(f, "Text({} bytes)", t.len()),
            Body::File { data, .. } => write!(f, "File({} bytes)", data.len()),
        }
    }
}

/// A message before sealing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    version: u8,
    /// Unique per message; the recipient delivers each id once.
    pub message_id: MessageId,
    /// When the sender sent it, unix milliseconds (the sender's clock).
    pub sent_at_ms: u64,
    /// The content.
    pub body: Body,
}

impl Envelope {
    /// A new envelope.
    pub fn new(message_id: MessageId, sent_at_ms: u64, body: Body) -> Self {
        Self {
            version: ENVELOPE_VERSION,
            message_id,
            sent_at_ms,
            body,
        }
    }
}

fn private_key(id: &Identity) -> Result<<X25519HkdfSha256 as Kem>::PrivateKey> {
    <X25519HkdfSha256 as Kem>::PrivateKey::from_bytes(id.secret_bytes())
        .map_err(|_| Error::Crypto("invalid identity key"))
}

fn public_key(pk: &IdentityPublic) -> Result<<X25519HkdfSha256 as Kem>::PublicKey> {
    <X25519HkdfSha256 as Kem>::PublicKey::from_bytes(&pk.0)
        .map_err(|_| Error::Crypto("invalid identity public key"))
}

/// Seals `envelope` from `sender` to `recipient`, bound to `queue`.
pub fn seal<R: rand::CryptoRng>(
    rng: &mut R,
    sender: &Identity,
    recipient: &IdentityPublic,
    queue: &QueueId,
    envelope: &Envelope,
) -> Result<Vec<u8>> {
    let plaintext = postcard::to_stdvec(envelope).map_err(|source| {
        Error::Wire(murmur_wire::Error::Encode {
            what: "envelope",
            source,
        })
    })?;
    let sk = private_key(sender)?;
    // The identity keeps its public key: no scalar multiplication here.
    let pk_s = public_key(&sender.public())?;
    let pk_r = public_key(recipient)?;
    let (enc, ciphertext) =
        hpke::single_shot_seal_with_rng::<ChaCha20Poly1305, HkdfSha256, X25519HkdfSha256>(
            &OpModeS::Auth((sk, pk_s)),
            &pk_r,
            INFO,
            &plaintext,
            queue.as_bytes(),
            rng,
        )
        .map_err(|_| Error::Crypto("could not seal the message"))?;
    let mut out = Vec::with_capacity(1 + 32 + 32 + ciphertext.len());
    out.push(SEAL_VERSION);
    out.extend_from_slice(&sender.public().0);
    out.extend_from_slice(&enc.to_bytes());
    out.extend_from_slice(&ciphertext);
    Ok(out)
}

/// The sender a sealed message claims, before it is opened (the recipient
/// needs it to open an Auth-mode seal).
pub fn claimed_sender(sealed: &[u8]) -> Result<IdentityPublic> {
    match sealed {
        [SEAL_VERSION, rest @ ..] if rest.len() >= 64 + 16 => {
            let mut pk = [0u8; 32];
            pk.copy_from_slice(&rest[..32]);
            Ok(IdentityPublic(pk))
        }
        [SEAL_VERSION, ..] => Err(Error::Crypto("sealed message is truncated")),
        _ => Err(Error::Crypto("sealed message has an unknown version")),
    }
}

/// Opens a sealed message addressed to `recipient` on `queue`, checking that
/// it was sealed by `sender`.
pub fn open(
    recipient: &Identity,
    sender: &IdentityPublic,
    queue: &QueueId,
    sealed: &[u8],
) -> Result<Envelope> {
    if claimed_sender(sealed)? != *sender {
        return Err(Error::Crypto("message is not from the expected sender"));
    }
    let enc = <X25519HkdfSha256 as Kem>::EncappedKey::from_bytes(&sealed[33..65])
        .map_err(|_| Error::Crypto("sealed message has a bad key"))?;
    let sk = private_key(recipient)?;
    let pk_s = public_key(sender)?;
    let plaintext = hpke::single_shot_open::<ChaCha20Poly1305, HkdfSha256, X25519HkdfSha256>(
        &OpModeR::Auth(pk_s),
        &sk,
        &enc,
        INFO,
        &sealed[65..],
        queue.as_bytes(),
    )
    .map_err(|_| Error::Crypto("message does not open: not sealed by its sender for this queue"))?;
    let (env, rest): (Envelope, _) = postcard::take_from_bytes(&plaintext)
        .map_err(|_| Error::Crypto("message does not decode"))?;
    if !rest.is_empty() || env.version != ENVELOPE_VERSION {
        return Err(Error::Crypto("message has an unknown format"));
    }
    Ok(env)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    fn env() -> Envelope {
        Envelope::new(
            MessageId::from_bytes([1; 16]),
            42,
            Body::Text("meet at noon".into()),
        )
    }

    #[test]
    fn only_the_recipient_opens_and_the_sender_is_verified() {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let alice = Identity::generate(&mut rng);
        let bob = Identity::generate(&mut rng);
        let eve = Identity::generate(&mut rng);
        let q = QueueId::from_bytes([9; 32]);
        let sealed = seal(&mut rng, &alice, &bob.public(), &q, &env()).unwrap();
        assert!(!sealed.windows(12).any(|w| w == b"meet at noon"));
        assert_eq!(claimed_sender(&sealed).unwrap(), alice.public());
        assert_eq!(open(&bob, &alice.public(), &q, &sealed).unwrap(), env());
        // Not the recipient.
        assert!(open(&eve, &alice.public(), &q, &sealed).is_err());
        // Not the expected sender.
        assert!(open(&bob, &eve.public(), &q, &sealed).is_err());
        // Moved to another queue.
        assert!(
            open(
                &bob,
                &alice.public(),
                &QueueId::from_bytes([8; 32]),
                &sealed
            )
            .is_err()
        );
        // A forger who rewrites the claimed sender cannot make it open.
        let mut forged = seal(&mut rng, &eve, &bob.public(), &q, &env()).unwrap();
        forged[1..33].copy_from_slice(&alice.public().0);
        assert!(open(&bob, &alice.public(), &q, &forged).is_err());
        // Any flipped byte breaks it.
        for i in [0, 5, 40, sealed.len() - 1] {
            let mut t = sealed.clone();
            t[i] ^= 1;
            assert!(open(&bob, &alice.public(), &q, &t).is_err(), "byte {i}");
        }
        assert!(open(&bob, &alice.public(), &q, &sealed[..50]).is_err());
    }

    #[test]
    fn overhead_is_as_documented() {
        let mut rng = ChaCha20Rng::seed_from_u64(2);
        let a = Identity::generate(&mut rng);
        let b = Identity::generate(&mut rng);
        let q = QueueId::from_bytes([1; 32]);
        let e = env();
        let plain = postcard::to_stdvec(&e).unwrap().len();
        assert_eq!(
            seal(&mut rng, &a, &b.public(), &q, &e).unwrap().len(),
            plain + SEAL_OVERHEAD
        );
    }
}
