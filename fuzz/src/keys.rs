//! Fixed test keys, and the signing and encryption steps the
//! structure-aware modes repeat with them.
//!
//! Everything here is derived from constant seeds: a crash found with one
//! build reproduces with any other. Where a mode signs or encrypts like a
//! crate does internally (signature contexts, the fragment key derivation,
//! the sealed-sender HPKE suite), the smoke test checks that the copy here
//! still agrees with the crate, so that the mode cannot silently stop
//! reaching the code behind the check.

use chacha20poly1305::aead::{AeadInOut, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use ed25519_dalek::{Signer, SigningKey};
use hpke::aead::ChaCha20Poly1305;
use hpke::kdf::HkdfSha256;
use hpke::kem::XWing;
use hpke::{Deserializable, Kem, OpModeS, PskBundle, Serializable};
use murmur_client::fragment::FragmentKey;
use murmur_client::identity::Identity;
use murmur_wire::directory::{AuthoritySignature, Signature};
use murmur_wire::{
    AuthoritySet, Hop, IdentityKey, KeyRing, NodeId, QueueId, SignedConsensus, SphinxSecretKey,
};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

/// The fixed "now" (unix seconds) of the targets and seeds.
pub const NOW: u64 = 1_700_000_000;
/// The epoch of the seed documents.
pub const EPOCH: u64 = 1000;
/// Authorities in the fixed set.
pub const AUTHORITIES: u8 = 3;
/// Signatures the fixed set requires.
pub const THRESHOLD: usize = 2;

/// `murmur-wire`'s signature context for consensus documents.
pub const CONSENSUS_CONTEXT: &[u8] = b"murmur/consensus/v1\0";
/// `murmur-client`'s HPKE info string for sealed sender (then the kind byte).
pub const SEAL_INFO: &[u8] = b"murmur/sealed-sender/v2";
/// `murmur-client`'s HKDF salt of the sealed-sender psk.
pub const SEAL_PSK_SALT: &[u8] = b"murmur/seal-psk/v2";
/// `murmur-client`'s HPKE psk id for sealed sender.
pub const SEAL_PSK_ID: &[u8] = b"murmur/static-dh/v2";
/// `murmur-client`'s HKDF salt for fragment keys.
pub const FRAGMENT_SALT: &[u8] = b"murmur/fragment-key/v1";
/// The relation secret of the fixed fragment key.
pub const RELATION_SECRET: [u8; 32] = [0x5e; 32];
/// The fixed queue.
pub const QUEUE: [u8; 32] = [0x51; 32];

/// Ed25519 key of authority `i`.
pub fn authority_key(i: u8) -> SigningKey {
    SigningKey::from_bytes(&[0xa0 | (i & 0x0f); 32])
}

/// Public key of authority `i`.
pub fn authority_identity(i: u8) -> IdentityKey {
    IdentityKey::from(&authority_key(i).verifying_key())
}

/// The fixed authority set: [`AUTHORITIES`] keys, [`THRESHOLD`] of them
/// required.
pub fn authority_set() -> AuthoritySet {
    let keys = (0..AUTHORITIES).map(authority_identity).collect();
    match AuthoritySet::new(keys, THRESHOLD) {
        Ok(s) => s,
        Err(e) => panic!("the fixed authority set is invalid: {e}"),
    }
}

/// Signs a consensus body (any bytes) by the authorities whose bit is set in
/// `signers` (bit `i`: authority `i`; bit 3: also a stranger; bit 4: a
/// duplicate of the first signature).
pub fn sign_consensus_body(body: Vec<u8>, signers: u8) -> SignedConsensus {
    let mut msg = CONSENSUS_CONTEXT.to_vec();
    msg.extend_from_slice(&body);
    let mut signatures = Vec::new();
    for i in 0..AUTHORITIES + 1 {
        if signers & (1 << i) != 0 {
            let key = authority_key(i);
            signatures.push(AuthoritySignature {
                authority: IdentityKey::from(&key.verifying_key()),
                signature: Signature(key.sign(&msg).to_bytes()),
            });
        }
    }
    if signers & 0x10 != 0
        && let Some(first) = signatures.first().cloned()
    {
        signatures.push(first);
    }
    SignedConsensus { body, signatures }
}

/// Ed25519 key of node `i` (descriptors, consensus entries).
pub fn node_signing_key(i: u8) -> SigningKey {
    SigningKey::from_bytes(&[0x10 ^ i; 32])
}

/// Public key of node `i`.
pub fn node_identity(i: u8) -> IdentityKey {
    IdentityKey::from(&node_signing_key(i).verifying_key())
}

/// Link key of node `i` (derived from its identity secret, as a real
/// node's; cached: deriving it makes an ML-KEM key pair).
pub fn link_key(i: u8) -> &'static murmur_wire::LinkSecretKey {
    use std::sync::OnceLock;
    static KEYS: OnceLock<Vec<murmur_wire::LinkSecretKey>> = OnceLock::new();
    let keys = KEYS.get_or_init(|| {
        (0..=255u8)
            .map(|n| murmur_wire::LinkSecretKey::derive(&node_signing_key(n).to_bytes()))
            .collect()
    });
    &keys[usize::from(i)]
}

/// The key of the fixed mailbox queue owner.
pub fn owner_key() -> SigningKey {
    SigningKey::from_bytes(&[0x0e; 32])
}

/// Public key of the fixed queue owner.
pub fn owner_identity() -> IdentityKey {
    IdentityKey::from(&owner_key().verifying_key())
}

/// Sphinx secret key of node `i` for `epoch` (0 or 1).
pub fn sphinx_key(node: u8, epoch: u64) -> SphinxSecretKey {
    SphinxSecretKey::from_bytes([0x40 + node * 2 + (epoch as u8 & 1); 32])
}

/// Node `i`'s key ring: its keys for epochs 0 and 1.
pub fn key_ring(node: u8) -> KeyRing {
    let mut ring = KeyRing::new();
    ring.insert(0, sphinx_key(node, 0));
    ring.insert(1, sphinx_key(node, 1));
    ring
}

/// One of the fixed Sphinx nodes.
#[derive(Debug)]
pub struct Node {
    /// Its id.
    pub id: NodeId,
    /// Its keys for epochs 0 and 1.
    pub ring: KeyRing,
    index: u8,
}

impl Node {
    /// The hop to it, with its key for `epoch`.
    pub fn hop(&self, epoch: u64) -> Hop {
        Hop {
            id: self.id,
            key: sphinx_key(self.index, epoch).public_key(),
        }
    }
}

/// The fixed Sphinx nodes (five, so routes of up to five distinct hops).
pub fn nodes() -> Vec<Node> {
    (0..5)
        .map(|i| Node {
            id: node_identity(i).node_id(),
            ring: key_ring(i),
            index: i,
        })
        .collect()
}

/// The fixed relation's fragment key and queue.
pub fn fragment_key() -> (FragmentKey, QueueId) {
    let queue = QueueId::from_bytes(QUEUE);
    (FragmentKey::derive(&RELATION_SECRET, &queue), queue)
}

/// Encrypts a fragment plaintext (2008 bytes: header, chunk, padding) under
/// the fixed relation key, as `fragment::split` does, with a nonce from
/// `nonce_seed`.
pub fn encrypt_fragment(plain: &[u8], nonce_seed: u8) -> Vec<u8> {
    let hk = hkdf::Hkdf::<sha2::Sha256>::new(Some(FRAGMENT_SALT), &RELATION_SECRET);
    let mut key = [0u8; 32];
    if hk.expand(&QUEUE, &mut key).is_err() {
        panic!("HKDF-SHA256 refused 32 bytes");
    }
    let cipher = XChaCha20Poly1305::new(&key.into());
    let nonce_bytes = [nonce_seed; 24];
    let nonce = XNonce::from(nonce_bytes);
    let mut buf = plain.to_vec();
    let tag = match cipher.encrypt_inout_detached(&nonce, &QUEUE, buf.as_mut_slice().into()) {
        Ok(t) => t,
        Err(_) => panic!("fragment encryption failed"),
    };
    let mut out = nonce_bytes.to_vec();
    out.extend_from_slice(&buf);
    out.extend_from_slice(&tag);
    out
}

/// The fixed sender of sealed messages.
pub fn sender_identity() -> Identity {
    Identity::from_secrets([0x33; 32], [0x35; 32])
}

/// The fixed recipient of sealed messages.
pub fn recipient_identity() -> Identity {
    Identity::from_secrets([0x44; 32], [0x46; 32])
}

/// Seals arbitrary plaintext (not necessarily an envelope) from the fixed
/// sender to the fixed recipient on the fixed queue, in `seal::seal`'s
/// *named* format: version 2 ‖ kind 1 ‖ sender X25519 key ‖ X-Wing enc ‖
/// HPKE Psk-mode ciphertext, the psk from the static X25519 DH.
pub fn seal_plaintext(plaintext: &[u8]) -> Vec<u8> {
    let sender = sender_identity();
    let recipient = recipient_identity();
    let Ok(pk_r) = <XWing as Kem>::PublicKey::from_bytes(recipient.pq_public().as_bytes()) else {
        panic!("the fixed recipient has no X-Wing key");
    };
    let dh = x25519_dalek::StaticSecret::from(*sender.secret_bytes())
        .diffie_hellman(&x25519_dalek::PublicKey::from(recipient.public().0));
    let mut info = sender.public().0.to_vec();
    info.extend_from_slice(&recipient.public().0);
    let mut psk = [0u8; 32];
    let Ok(()) =
        hkdf::Hkdf::<sha2::Sha256>::new(Some(SEAL_PSK_SALT), dh.as_bytes()).expand(&info, &mut psk)
    else {
        panic!("HKDF failed");
    };
    let Ok(bundle) = PskBundle::new(&psk, SEAL_PSK_ID) else {
        panic!("bad psk bundle");
    };
    let mut header = vec![2u8, 1u8];
    header.extend_from_slice(&sender.public().0);
    let mut hpke_info = SEAL_INFO.to_vec();
    hpke_info.push(1);
    let mut aad = header.clone();
    aad.extend_from_slice(&QUEUE);
    let mut rng = ChaCha20Rng::seed_from_u64(7);
    let Ok((enc, ciphertext)) =
        hpke::single_shot_seal_with_rng::<ChaCha20Poly1305, HkdfSha256, XWing>(
            &OpModeS::Psk(bundle),
            &pk_r,
            &hpke_info,
            plaintext,
            &aad,
            &mut rng,
        )
    else {
        panic!("HPKE seal failed");
    };
    let mut out = header;
    out.extend_from_slice(&enc.to_bytes());
    out.extend_from_slice(&ciphertext);
    out
}

/// The fixed ratchet seed of the two ratchets below.
pub const RATCHET_SEED: [u8; 32] = [0x5a; 32];

/// The fixed responder ratchet (the one who receives the first ratchet
/// message), as a client holds it after sending its hello.
pub fn ratchet_responder() -> murmur_client::ratchet::Ratchet {
    let (secret, _) =
        murmur_client::ratchet::generate_key_pair(&mut ChaCha20Rng::seed_from_u64(11));
    murmur_client::ratchet::Ratchet::responder(&RATCHET_SEED, &secret)
}

/// The fixed initiator ratchet, matching [`ratchet_responder`].
pub fn ratchet_initiator() -> murmur_client::ratchet::Ratchet {
    let (_, public) =
        murmur_client::ratchet::generate_key_pair(&mut ChaCha20Rng::seed_from_u64(11));
    match murmur_client::ratchet::Ratchet::initiator(
        &mut ChaCha20Rng::seed_from_u64(12),
        &RATCHET_SEED,
        public,
    ) {
        Ok(r) => r,
        Err(e) => panic!("the fixed ratchet does not start: {e}"),
    }
}
