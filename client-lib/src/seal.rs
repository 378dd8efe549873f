//! Sealed sender: what a message looks like to its recipient, and nobody else.
//!
//! A message is an [`Envelope`] encrypted with the relation's ratchet (see
//! "The ratchet" below) or, for the first messages of a relation, sealed
//! with HPKE (RFC 9180) in **Psk mode**
//! over the hybrid post-quantum KEM **X-Wing** (ML-KEM-768 + X25519,
//! `draft-connolly-cfrg-xwing-kem`; HPKE KEM id 0x647a), HKDF-SHA256 and
//! ChaCha20-Poly1305, to the recipient's X-Wing identity key. Whoever records
//! the ciphertext needs to break both ML-KEM-768 and X25519 to read it.
//!
//! X-Wing has no Auth mode, so the sender is authenticated by the
//! pre-shared key instead: `psk = HKDF-SHA256(salt = "murmur/seal-psk/v2",
//! ikm = X25519(sender secret, recipient public), info = sender public ‖
//! recipient public)` over the two X25519 identity keys, `psk_id =
//! "murmur/static-dh/v2"`. Only the two contacts can compute it, so a
//! message that opens was sealed by one of them, and a recipient never
//! opens its own messages as the contact's (the info is ordered sender
//! first). Like Auth mode, this authenticates the sender to the recipient
//! only (both could have computed the key: deniable), and only classically:
//! a quantum adversary who breaks X25519 *at the time* could forge, but
//! recording now and breaking later reveals nothing, because the
//! confidentiality rests on X-Wing. As with Auth mode, whoever holds the
//! recipient's X25519 secret can compute the psk too, and so forge seals
//! *to* the recipient (key-compromise impersonation).
//!
//! Sealed form (version 2):
//!
//! ```text
//! contact: 0x02 ‖ 0x00 ‖ enc (1120) ‖ HPKE ciphertext (‖ tag 16)
//! named:   0x02 ‖ 0x01 ‖ sender X25519 key (32) ‖ enc (1120) ‖ HPKE ciphertext
//! ```
//!
//! A *contact* seal carries no sender key at all: the recipient knows
//! whose it is from the queue it arrived in (each queue belongs to one
//! relation). A *named* seal names its sender's X25519 key, which the
//! recipient needs to compute the psk before it knows the sender: the one
//! who accepted an invitation seals *named* until a message from the
//! inviter shows the hello arrived (mixnet reordering may deliver a text
//! before the hello). The name travels inside the fragment layer, encrypted
//! under the invitation's secret, so relays and mailboxes see none of it.
//! The hello's envelope also carries the sender's X-Wing key, for the
//! replies.
//!
//! The HPKE info is `"murmur/sealed-sender/v2" ‖ kind`; the associated data
//! is the header (version, kind, and the sender key of a named seal) followed by
//! the id of the queue the message is sent to, so a sealed message cannot
//! be moved to another queue or have its header changed.
//!
//! ## The ratchet
//!
//! The hello also starts the relation's Double Ratchet (`crate::ratchet`):
//! its envelope carries a fresh ratchet public key of the accepter, and
//! both sides take the ratchet's shared secret from the hello's HPKE
//! context (the exporter, context `"murmur/ratchet-seed/v1"`), so the
//! ratchet is seeded post-quantum. The inviter starts as the ratchet's
//! initiator when the hello arrives and ratchets every message it sends;
//! the accepter ratchets from the inviter's first message on (until then it
//! has no sending chain and seals *named* with X-Wing, as above). So the
//! 1120-byte encapsulation is in the first messages of the accepter only,
//! and a ratchet message is
//!
//! ```text
//! ratchet: 0x02 ‖ 0x02 ‖ ratchet public key (32) ‖ previous chain length u32 ‖ n u32 ‖ ciphertext ‖ tag (16)
//! ```
//!
//! with associated data `0x02 ‖ 0x02 ‖ queue id` (after the ratchet
//! header). Its header is not encrypted by the ratchet: like a named
//! seal's sender key, it travels inside the fragment layer, which relays
//! and mailboxes cannot open.
//!
//! Version 1 seals (X25519 Auth mode, before post-quantum sealing) are
//! refused with an error saying so.

use hkdf::Hkdf;
use hpke::aead::ChaCha20Poly1305;
use hpke::kdf::HkdfSha256;
use hpke::kem::XWing;
use hpke::{Deserializable, Kem, OpModeR, OpModeS, PskBundle, Serializable};
use murmur_wire::{MessageId, NodeId, QueueId};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::identity::{Identity, IdentityPublic, PqPublic};
use crate::ratchet::{self, Ratchet};

/// The version byte of sealed messages.
pub const SEAL_VERSION: u8 = 2;
const ENVELOPE_VERSION: u8 = 2;
const KIND_CONTACT: u8 = 0;
const KIND_NAMED: u8 = 1;
const KIND_RATCHET: u8 = 2;
/// The HPKE exporter context of the handshake's shared secret.
const EXPORT_RATCHET: &[u8] = b"murmur/ratchet-seed/v1";
const INFO: &[u8] = b"murmur/sealed-sender/v2";
const PSK_SALT: &[u8] = b"murmur/seal-psk/v2";
const PSK_ID: &[u8] = b"murmur/static-dh/v2";
/// Size of an X-Wing encapsulation (ciphertext).
pub const ENC_SIZE: usize = 1120;
const TAG_SIZE: usize = 16;
/// Bytes a sealed contact message adds to its envelope: version, kind,
/// X-Wing encapsulation, AEAD tag.
pub const SEAL_OVERHEAD: usize = 2 + ENC_SIZE + TAG_SIZE;
/// Bytes a ratchet message adds to its envelope: version, kind, ratchet
/// header, AEAD tag.
pub const RATCHET_SEAL_OVERHEAD: usize = 2 + ratchet::OVERHEAD;
/// Bytes a named seal adds to its envelope (the sender key besides).
pub const NAMED_SEAL_OVERHEAD: usize = SEAL_OVERHEAD + 32;

/// Which kind of seal: it decides whether the sender's key travels with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SealKind {
    /// A message on an established relation: the sender is implied by the
    /// queue.
    Contact,
    /// A message that names its sender's X25519 key: from the one who
    /// accepted an invitation, until the inviter has shown it knows them.
    Named,
}

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
    /// The sender's X-Wing key: in a [`Body::Hello`] only (set by [`seal`]).
    pub sender_pq: Option<PqPublic>,
    /// The sender's first ratchet public key: in a hello only (set by
    /// [`seal_hello`]); the recipient starts the relation's ratchet with it.
    pub ratchet_key: Option<[u8; 32]>,
}

impl Envelope {
    /// A new envelope.
    pub fn new(message_id: MessageId, sent_at_ms: u64, body: Body) -> Self {
        Self {
            version: ENVELOPE_VERSION,
            message_id,
            sent_at_ms,
            body,
            sender_pq: None,
            ratchet_key: None,
        }
    }
}

fn encode_envelope(envelope: &Envelope) -> Result<Zeroizing<Vec<u8>>> {
    postcard::to_stdvec(envelope)
        .map(Zeroizing::new)
        .map_err(|source| {
            Error::Wire(murmur_wire::Error::Encode {
                what: "envelope",
                source,
            })
        })
}

/// The pre-shared key of a seal from `sender_public` to `recipient_public`:
/// HKDF over their static X25519 Diffie-Hellman (see the module docs).
/// `secret` is the X25519 secret of either side, `peer` the other's public
/// key.
fn static_psk(
    secret: &[u8; 32],
    peer: &IdentityPublic,
    sender_public: &IdentityPublic,
    recipient_public: &IdentityPublic,
) -> Result<Zeroizing<[u8; 32]>> {
    let sk = x25519_dalek::StaticSecret::from(*secret);
    let shared = sk.diffie_hellman(&x25519_dalek::PublicKey::from(peer.0));
    if !shared.was_contributory() {
        return Err(Error::Crypto("the contact's identity key is degenerate"));
    }
    let hk = Hkdf::<Sha256>::new(Some(PSK_SALT), shared.as_bytes());
    let mut psk = Zeroizing::new([0u8; 32]);
    let mut info = [0u8; 64];
    info[..32].copy_from_slice(&sender_public.0);
    info[32..].copy_from_slice(&recipient_public.0);
    hk.expand(&info, psk.as_mut())
        .map_err(|_| Error::Crypto("psk derivation failed"))?;
    Ok(psk)
}

fn header(kind: SealKind, sender: &IdentityPublic) -> Vec<u8> {
    match kind {
        SealKind::Contact => vec![SEAL_VERSION, KIND_CONTACT],
        SealKind::Named => {
            let mut h = Vec::with_capacity(34);
            h.extend_from_slice(&[SEAL_VERSION, KIND_NAMED]);
            h.extend_from_slice(&sender.0);
            h
        }
    }
}

fn info(kind_byte: u8) -> Vec<u8> {
    let mut i = INFO.to_vec();
    i.push(kind_byte);
    i
}

fn aad(header: &[u8], queue: &QueueId) -> Vec<u8> {
    let mut a = Vec::with_capacity(header.len() + QueueId::LEN);
    a.extend_from_slice(header);
    a.extend_from_slice(queue.as_bytes());
    a
}

/// Seals `envelope` from `sender` to the recipient with X25519 key
/// `recipient` and X-Wing key `recipient_pq`, bound to `queue`. A hello's
/// envelope gets the sender's X-Wing key.
pub fn seal<R: rand::CryptoRng>(
    rng: &mut R,
    sender: &Identity,
    recipient: (&IdentityPublic, &PqPublic),
    queue: &QueueId,
    envelope: &Envelope,
    kind: SealKind,
) -> Result<Vec<u8>> {
    Ok(seal_exporting(rng, sender, recipient, queue, envelope, kind)?.0)
}

/// Seals a hello (see [`seal`]) that also starts the relation's ratchet:
/// the envelope gets a fresh ratchet public key, and the returned
/// [`Ratchet`] (the responder's) holds its secret and the handshake's
/// shared secret, exported from the X-Wing HPKE context. The ratchet is
/// thereby seeded post-quantum.
pub fn seal_hello<R: rand::CryptoRng>(
    rng: &mut R,
    sender: &Identity,
    recipient: (&IdentityPublic, &PqPublic),
    queue: &QueueId,
    envelope: &Envelope,
) -> Result<(Vec<u8>, Ratchet)> {
    if !matches!(envelope.body, Body::Hello { .. }) {
        return Err(Error::Crypto("only a hello starts a ratchet"));
    }
    let (secret, public) = ratchet::generate_key_pair(rng);
    let mut hello = envelope.clone();
    hello.ratchet_key = Some(public);
    let (sealed, shared) = seal_exporting(rng, sender, recipient, queue, &hello, SealKind::Named)?;
    Ok((sealed, Ratchet::responder(&shared, &secret)))
}

fn seal_exporting<R: rand::CryptoRng>(
    rng: &mut R,
    sender: &Identity,
    recipient: (&IdentityPublic, &PqPublic),
    queue: &QueueId,
    envelope: &Envelope,
    kind: SealKind,
) -> Result<(Vec<u8>, Zeroizing<[u8; 32]>)> {
    let (recipient_x, recipient_pq) = recipient;
    let plaintext = match (&envelope.body, kind) {
        (Body::Hello { .. }, SealKind::Named) => {
            let mut hello = envelope.clone();
            hello.sender_pq = Some(sender.pq_public().clone());
            encode_envelope(&hello)?
        }
        (Body::Hello { .. }, SealKind::Contact) => {
            return Err(Error::Crypto("a hello must name its sender"));
        }
        _ => encode_envelope(envelope)?,
    };
    let psk = static_psk(
        sender.secret_bytes(),
        recipient_x,
        &sender.public(),
        recipient_x,
    )?;
    let pk_r = recipient_pq
        .to_kem()
        .ok_or(Error::Crypto("invalid post-quantum public key"))?;
    let header = header(kind, &sender.public());
    let bundle = PskBundle::new(psk.as_ref(), PSK_ID)
        .map_err(|_| Error::Crypto("invalid pre-shared key"))?;
    let (enc, mut ctx) = hpke::setup_sender_with_rng::<ChaCha20Poly1305, HkdfSha256, XWing>(
        &OpModeS::Psk(bundle),
        &pk_r,
        &info(header[1]),
        rng,
    )
    .map_err(|_| Error::Crypto("could not seal the message"))?;
    let ciphertext = ctx
        .seal(&plaintext, &aad(&header, queue))
        .map_err(|_| Error::Crypto("could not seal the message"))?;
    let mut shared = Zeroizing::new([0u8; 32]);
    ctx.export(EXPORT_RATCHET, shared.as_mut())
        .map_err(|_| Error::Crypto("could not export the handshake secret"))?;
    let mut out = Vec::with_capacity(header.len() + ENC_SIZE + ciphertext.len());
    out.extend_from_slice(&header);
    out.extend_from_slice(&enc.to_bytes());
    out.extend_from_slice(&ciphertext);
    Ok((out, shared))
}

/// Seals `envelope` with the relation's ratchet (which must be able to
/// send, [`Ratchet::can_send`]), bound to `queue`:
/// `0x02 ‖ 0x02 ‖ ratchet header (40) ‖ ciphertext ‖ tag (16)`.
pub fn seal_ratcheted(
    ratchet: &mut Ratchet,
    queue: &QueueId,
    envelope: &Envelope,
) -> Result<Vec<u8>> {
    if matches!(envelope.body, Body::Hello { .. }) {
        return Err(Error::Crypto("a hello is not ratcheted"));
    }
    let plaintext = encode_envelope(envelope)?;
    let header = [SEAL_VERSION, KIND_RATCHET];
    let message = ratchet.encrypt(&plaintext, &aad(&header, queue))?;
    let mut out = Vec::with_capacity(2 + message.len());
    out.extend_from_slice(&header);
    out.extend_from_slice(&message);
    Ok(out)
}

/// True if `sealed` is a ratchet message ([`open_ratcheted`] opens it).
pub fn is_ratcheted(sealed: &[u8]) -> bool {
    matches!(sealed, [SEAL_VERSION, KIND_RATCHET, ..])
}

/// Opens a ratchet message with the relation's ratchet; on error the
/// ratchet is unchanged (a replayed message does not open: its key was
/// erased when it first did).
pub fn open_ratcheted<R: rand::CryptoRng + ?Sized>(
    ratchet: &mut Ratchet,
    rng: &mut R,
    queue: &QueueId,
    sealed: &[u8],
) -> Result<Envelope> {
    let Some(([version, kind], message)) = sealed.split_first_chunk::<2>() else {
        return Err(Error::Crypto("sealed message is truncated"));
    };
    if (*version, *kind) != (SEAL_VERSION, KIND_RATCHET) {
        return Err(Error::Crypto("not a ratchet message"));
    }
    let mut trial = ratchet.clone();
    let plaintext = trial.decrypt(rng, message, &aad(&[*version, *kind], queue))?;
    let env = decode_envelope(&plaintext)?;
    if matches!(env.body, Body::Hello { .. })
        || env.sender_pq.is_some()
        || env.ratchet_key.is_some()
    {
        return Err(Error::Crypto("a ratchet message carries handshake fields"));
    }
    *ratchet = trial;
    Ok(env)
}

fn decode_envelope(plaintext: &[u8]) -> Result<Envelope> {
    let (env, rest): (Envelope, _) = postcard::take_from_bytes(plaintext)
        .map_err(|_| Error::Crypto("message does not decode"))?;
    if !rest.is_empty() || env.version != ENVELOPE_VERSION {
        return Err(Error::Crypto("message has an unknown format"));
    }
    Ok(env)
}

/// A sealed message, parsed: its header, encapsulation and ciphertext.
struct Parsed<'a> {
    header: &'a [u8],
    claimed: Option<IdentityPublic>,
    enc: &'a [u8],
    ciphertext: &'a [u8],
}

fn parse(sealed: &[u8]) -> Result<Parsed<'_>> {
    let header_len = match sealed {
        [SEAL_VERSION, KIND_CONTACT, ..] => 2,
        [SEAL_VERSION, KIND_NAMED, ..] => 34,
        [SEAL_VERSION, KIND_RATCHET, ..] => {
            return Err(Error::Crypto(
                "a ratchet message is opened with the ratchet",
            ));
        }
        [SEAL_VERSION, ..] => return Err(Error::Crypto("sealed message has an unknown kind")),
        [1, ..] => {
            return Err(Error::Crypto(
                "sealed message is of version 1 (before post-quantum sealing): refused",
            ));
        }
        _ => return Err(Error::Crypto("sealed message has an unknown version")),
    };
    if sealed.len() < header_len + ENC_SIZE + TAG_SIZE {
        return Err(Error::Crypto("sealed message is truncated"));
    }
    let (header, rest) = sealed.split_at(header_len);
    let (enc, ciphertext) = rest.split_at(ENC_SIZE);
    let claimed = match header {
        [_, _, key @ ..] if key.len() == 32 => {
            let mut pk = [0u8; 32];
            pk.copy_from_slice(key);
            Some(IdentityPublic(pk))
        }
        _ => None,
    };
    Ok(Parsed {
        header,
        claimed,
        enc,
        ciphertext,
    })
}

/// The sender a named seal claims, before it is opened (the recipient
/// needs it to open the seal); `None` for a contact seal, whose sender is
/// the contact owning the queue.
pub fn claimed_sender(sealed: &[u8]) -> Result<Option<IdentityPublic>> {
    if is_ratcheted(sealed) {
        return Ok(None);
    }
    Ok(parse(sealed)?.claimed)
}

/// Opens a sealed message addressed to `recipient` on `queue`, checking that
/// it was sealed by `sender`.
pub fn open(
    recipient: &Identity,
    sender: &IdentityPublic,
    queue: &QueueId,
    sealed: &[u8],
) -> Result<Envelope> {
    Ok(open_exporting(recipient, sender, queue, sealed)?.0)
}

/// Opens an X-Wing seal (see [`open`]); if it is a hello with a ratchet
/// key, also starts the relation's ratchet as its initiator, from the
/// handshake's shared secret and that key.
pub fn open_hello<R: rand::CryptoRng + ?Sized>(
    rng: &mut R,
    recipient: &Identity,
    sender: &IdentityPublic,
    queue: &QueueId,
    sealed: &[u8],
) -> Result<(Envelope, Option<Ratchet>)> {
    let (env, shared) = open_exporting(recipient, sender, queue, sealed)?;
    let ratchet = match (&env.body, env.ratchet_key) {
        (Body::Hello { .. }, Some(key)) => Some(Ratchet::initiator(rng, &shared, key)?),
        _ => None,
    };
    Ok((env, ratchet))
}

fn open_exporting(
    recipient: &Identity,
    sender: &IdentityPublic,
    queue: &QueueId,
    sealed: &[u8],
) -> Result<(Envelope, Zeroizing<[u8; 32]>)> {
    let p = parse(sealed)?;
    if p.claimed.is_some_and(|c| c != *sender) {
        return Err(Error::Crypto("message is not from the expected sender"));
    }
    let enc = <XWing as Kem>::EncappedKey::from_bytes(p.enc)
        .map_err(|_| Error::Crypto("sealed message has a bad key"))?;
    let sk = recipient
        .pq_private()
        .ok_or(Error::Crypto("invalid identity key"))?;
    let psk = static_psk(
        recipient.secret_bytes(),
        sender,
        sender,
        &recipient.public(),
    )?;
    let bundle = PskBundle::new(psk.as_ref(), PSK_ID)
        .map_err(|_| Error::Crypto("invalid pre-shared key"))?;
    let not_open =
        || Error::Crypto("message does not open: not sealed by its sender for this queue");
    let mut ctx = hpke::setup_receiver::<ChaCha20Poly1305, HkdfSha256, XWing>(
        &OpModeR::Psk(bundle),
        &sk,
        &enc,
        &info(p.header[1]),
    )
    .map_err(|_| not_open())?;
    let plaintext = Zeroizing::new(
        ctx.open(p.ciphertext, &aad(p.header, queue))
            .map_err(|_| not_open())?,
    );
    let env = decode_envelope(&plaintext)?;
    let is_hello = matches!(env.body, Body::Hello { .. });
    if is_hello && (p.claimed.is_none() || env.sender_pq.is_none()) {
        return Err(Error::Crypto("a hello lacks its sender's keys"));
    }
    if !is_hello && env.ratchet_key.is_some() {
        return Err(Error::Crypto("only a hello carries a ratchet key"));
    }
    let mut shared = Zeroizing::new([0u8; 32]);
    ctx.export(EXPORT_RATCHET, shared.as_mut())
        .map_err(|_| Error::Crypto("could not export the handshake secret"))?;
    Ok((env, shared))
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

    fn to(id: &Identity) -> (IdentityPublic, PqPublic) {
        (id.public(), id.pq_public().clone())
    }

    fn seal_to(
        rng: &mut ChaCha20Rng,
        from: &Identity,
        recipient: &Identity,
        q: &QueueId,
        kind: SealKind,
    ) -> Vec<u8> {
        seal_env(rng, from, recipient, q, kind, &env()).unwrap()
    }

    fn seal_env(
        rng: &mut ChaCha20Rng,
        from: &Identity,
        recipient: &Identity,
        q: &QueueId,
        kind: SealKind,
        e: &Envelope,
    ) -> Result<Vec<u8>> {
        let (x, pq) = to(recipient);
        seal(rng, from, (&x, &pq), q, e, kind)
    }

    fn hello() -> Envelope {
        Envelope::new(
            MessageId::from_bytes([2; 16]),
            43,
            Body::Hello {
                reply_provider: NodeId::from_bytes([3; 32]),
                reply_queue: QueueId::from_bytes([4; 32]),
                name: "alice".into(),
            },
        )
    }

    #[test]
    fn only_the_recipient_opens_and_the_sender_is_verified() {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let alice = Identity::generate(&mut rng);
        let bob = Identity::generate(&mut rng);
        let eve = Identity::generate(&mut rng);
        let q = QueueId::from_bytes([9; 32]);
        let sealed = seal_to(&mut rng, &alice, &bob, &q, SealKind::Contact);
        assert!(!sealed.windows(12).any(|w| w == b"meet at noon"));
        // A contact message does not name its sender.
        assert!(!sealed.windows(32).any(|w| w == alice.public().0));
        assert_eq!(claimed_sender(&sealed).unwrap(), None);
        assert_eq!(open(&bob, &alice.public(), &q, &sealed).unwrap(), env());
        // Not the recipient.
        assert!(open(&eve, &alice.public(), &q, &sealed).is_err());
        // Not the expected sender.
        assert!(open(&bob, &eve.public(), &q, &sealed).is_err());
        // The sender cannot open their own message as if it came from the recipient.
        assert!(open(&alice, &bob.public(), &q, &sealed).is_err());
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
        // Eve, who knows both public keys, cannot seal as Alice.
        let forged = seal_to(&mut rng, &eve, &bob, &q, SealKind::Contact);
        assert!(open(&bob, &alice.public(), &q, &forged).is_err());
        // Any flipped byte breaks it.
        for i in [0, 1, 5, 40, 1100, 1130, sealed.len() - 1] {
            let mut t = sealed.clone();
            t[i] ^= 1;
            assert!(open(&bob, &alice.public(), &q, &t).is_err(), "byte {i}");
        }
        assert!(open(&bob, &alice.public(), &q, &sealed[..50]).is_err());
        assert!(open(&bob, &alice.public(), &q, &sealed[..sealed.len() - 1]).is_err());
    }

    #[test]
    fn a_hello_names_its_sender_and_carries_their_post_quantum_key() {
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        let alice = Identity::generate(&mut rng);
        let bob = Identity::generate(&mut rng);
        let eve = Identity::generate(&mut rng);
        let q = QueueId::from_bytes([9; 32]);
        let sealed = seal_env(&mut rng, &alice, &bob, &q, SealKind::Named, &hello()).unwrap();
        assert_eq!(claimed_sender(&sealed).unwrap(), Some(alice.public()));
        let opened = open(&bob, &alice.public(), &q, &sealed).unwrap();
        assert_eq!(opened.sender_pq.as_ref(), Some(alice.pq_public()));
        assert_eq!(opened.body, hello().body);
        // A hello must name its sender.
        assert!(seal_env(&mut rng, &alice, &bob, &q, SealKind::Contact, &hello()).is_err());
        // Other named messages open, without a post-quantum key.
        let named = seal_to(&mut rng, &alice, &bob, &q, SealKind::Named);
        let opened = open(&bob, &alice.public(), &q, &named).unwrap();
        assert_eq!(opened.sender_pq, None);
        assert_eq!(opened, env());
        // A forger who rewrites the claimed sender cannot make it open.
        let mut forged = seal_to(&mut rng, &eve, &bob, &q, SealKind::Named);
        forged[2..34].copy_from_slice(&alice.public().0);
        assert!(open(&bob, &alice.public(), &q, &forged).is_err());
        // Nor can a hello be relabelled a contact message.
        let mut relabelled = sealed.clone();
        relabelled.drain(1..34);
        relabelled.insert(1, KIND_CONTACT);
        assert!(open(&bob, &alice.public(), &q, &relabelled).is_err());
    }

    #[test]
    fn version_1_seals_are_refused_with_a_reason() {
        let mut v1 = vec![1u8];
        v1.extend_from_slice(&[0u8; 200]);
        let Err(Error::Crypto(reason)) = claimed_sender(&v1) else {
            panic!("a version 1 seal was accepted");
        };
        assert!(reason.contains("version 1"), "{reason}");
        assert!(claimed_sender(&[9, 0]).is_err());
        assert!(claimed_sender(&[]).is_err());
    }

    #[test]
    fn overhead_is_as_documented() {
        let mut rng = ChaCha20Rng::seed_from_u64(2);
        let a = Identity::generate(&mut rng);
        let b = Identity::generate(&mut rng);
        let q = QueueId::from_bytes([1; 32]);
        let plain = postcard::to_stdvec(&env()).unwrap().len();
        let contact = seal_to(&mut rng, &a, &b, &q, SealKind::Contact);
        assert_eq!(contact.len(), plain + SEAL_OVERHEAD);
        let named = seal_to(&mut rng, &a, &b, &q, SealKind::Named);
        assert_eq!(named.len(), plain + NAMED_SEAL_OVERHEAD);
        // A hello's envelope also carries the X-Wing key (length-prefixed).
        let plain = postcard::to_stdvec(&hello()).unwrap().len();
        let sealed = seal_env(&mut rng, &a, &b, &q, SealKind::Named, &hello()).unwrap();
        assert_eq!(
            sealed.len(),
            plain + NAMED_SEAL_OVERHEAD + 2 + crate::identity::PQ_PUBLIC_KEY_SIZE
        );
    }
}
