//! The per-contact ratchet: forward secrecy and post-compromise security
//! for the messages of a relation, after the post-quantum handshake.
//!
//! A Double Ratchet (Signal's specification, "The Double Ratchet
//! Algorithm", rev. 1) composed from the primitives already in the tree —
//! X25519 (`x25519-dalek`), HKDF-SHA256 (`hkdf`) and ChaCha20-Poly1305
//! (`chacha20poly1305`) — without header encryption (the header travels
//! inside the fragment layer, see `crate::seal`). `vodozemac` (Olm) was not
//! used: its sessions start from its own triple Diffie-Hellman over
//! one-time keys published to a server, and cannot be seeded from the
//! X-Wing handshake this client already has.
//!
//! - `KDF_RK(rk, dh) = HKDF-SHA256(salt = rk, ikm = dh, info =
//!   "murmur/ratchet/root/v1")` → 64 bytes: the new root key, a chain key.
//! - `KDF_CK(ck)`: HKDF-Expand with `ck` as the PRK, info
//!   `"murmur/ratchet/message/v1"` → the message key, info
//!   `"murmur/ratchet/chain/v1"` → the next chain key.
//! - A message key gives, by HKDF-Expand (info `"murmur/ratchet/aead/v1"`),
//!   a ChaCha20-Poly1305 key and nonce used for that one message; the
//!   associated data is the header followed by the caller's data.
//! - Header: `ratchet public key (32) ‖ previous chain length u32 ‖ message
//!   number u32` (big-endian), [`HEADER_SIZE`] bytes.
//!
//! Message keys are used once and dropped (zeroized); a chain key is
//! replaced by its successor as soon as a message key is taken from it.
//! Keys of messages that were skipped (lost or late: the mixnet reorders)
//! are kept, at most [`MAX_SKIP`] ahead in one chain and at most
//! [`MAX_SKIPPED_KEYS`] in all (the oldest dropped first), so a late
//! message still opens and a replayed one does not (its key is gone).
//!
//! Every state change is all or nothing: [`Ratchet::decrypt`] works on a
//! copy and keeps it only if the message opened, so a forged or replayed
//! message changes nothing.
//!
//! Roles: the *initiator* knows the shared secret and the responder's
//! ratchet public key and can send at once; the *responder* holds the
//! ratchet key pair whose public half the initiator has, and can send once
//! a message from the initiator arrived.

use chacha20poly1305::aead::{AeadInOut, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Nonce};
use hkdf::Hkdf;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::error::{Error, Result};

/// Size of a ratchet header.
pub const HEADER_SIZE: usize = 32 + 4 + 4;
/// Size of the AEAD tag of a ratchet message.
pub const TAG_SIZE: usize = 16;
/// Bytes a ratchet message adds to its plaintext.
pub const OVERHEAD: usize = HEADER_SIZE + TAG_SIZE;
/// How many message keys one message may skip in a chain. A sender's
/// messages reach the recipient out of order by at most the number it
/// sends while an earlier one is still being retransmitted: up to
/// `max_tries` (10) acknowledgement timeouts, a few minutes. A thousand
/// messages in that time is far beyond a person's rate; a gap larger than
/// this is an attack (it would make the recipient derive that many keys).
pub const MAX_SKIP: u32 = 1000;
/// How many skipped message keys are kept in all (each 72 bytes, so at
/// most about 144 KiB per contact); beyond, the oldest are dropped and
/// those messages, if they still come, do not open.
pub const MAX_SKIPPED_KEYS: usize = 2000;

const ROOT_INFO: &[u8] = b"murmur/ratchet/root/v1";
const MESSAGE_INFO: &[u8] = b"murmur/ratchet/message/v1";
const CHAIN_INFO: &[u8] = b"murmur/ratchet/chain/v1";
const AEAD_INFO: &[u8] = b"murmur/ratchet/aead/v1";

/// A message key kept for a message that has not arrived yet.
#[derive(Clone, Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
struct Skipped {
    #[zeroize(skip)]
    ratchet_key: [u8; 32],
    #[zeroize(skip)]
    n: u32,
    key: [u8; 32],
}

/// The ratchet state of one relation. Secret: stored only in the encrypted
/// client store, zeroized on drop, never printed.
#[derive(Clone, Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
pub struct Ratchet {
    root: [u8; 32],
    own_secret: [u8; 32],
    #[zeroize(skip)]
    own_public: [u8; 32],
    #[zeroize(skip)]
    remote: Option<[u8; 32]>,
    send_chain: Option<[u8; 32]>,
    #[zeroize(skip)]
    send_n: u32,
    #[zeroize(skip)]
    prev_send_n: u32,
    recv_chain: Option<[u8; 32]>,
    #[zeroize(skip)]
    recv_n: u32,
    skipped: Vec<Skipped>,
}

impl std::fmt::Debug for Ratchet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ratchet")
            .field("send_n", &self.send_n)
            .field("recv_n", &self.recv_n)
            .field("skipped", &self.skipped.len())
            .finish_non_exhaustive()
    }
}

/// A parsed ratchet header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// The sender's current ratchet public key.
    pub ratchet_key: [u8; 32],
    /// Messages in the sender's previous sending chain.
    pub prev_n: u32,
    /// This message's number in its chain.
    pub n: u32,
}

impl Header {
    fn to_bytes(self) -> [u8; HEADER_SIZE] {
        let mut out = [0u8; HEADER_SIZE];
        out[..32].copy_from_slice(&self.ratchet_key);
        out[32..36].copy_from_slice(&self.prev_n.to_be_bytes());
        out[36..].copy_from_slice(&self.n.to_be_bytes());
        out
    }

    /// Parses the header at the start of a ratchet message.
    pub fn parse(message: &[u8]) -> Result<Self> {
        let Some(h) = message.get(..HEADER_SIZE) else {
            return Err(Error::Crypto("ratchet message is truncated"));
        };
        let mut ratchet_key = [0u8; 32];
        ratchet_key.copy_from_slice(&h[..32]);
        let word = |i: usize| u32::from_be_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
        Ok(Self {
            ratchet_key,
            prev_n: word(32),
            n: word(36),
        })
    }
}

/// A fresh X25519 key pair for the ratchet: (secret, public).
pub fn generate_key_pair<R: rand::CryptoRng + ?Sized>(
    rng: &mut R,
) -> (Zeroizing<[u8; 32]>, [u8; 32]) {
    let mut secret = Zeroizing::new([0u8; 32]);
    rng.fill_bytes(secret.as_mut());
    let public = public_of(&secret);
    (secret, public)
}

fn public_of(secret: &[u8; 32]) -> [u8; 32] {
    let sk = x25519_dalek::StaticSecret::from(*secret);
    x25519_dalek::PublicKey::from(&sk).to_bytes()
}

fn dh(secret: &[u8; 32], public: &[u8; 32]) -> Result<Zeroizing<[u8; 32]>> {
    let sk = x25519_dalek::StaticSecret::from(*secret);
    let shared = sk.diffie_hellman(&x25519_dalek::PublicKey::from(*public));
    if !shared.was_contributory() {
        return Err(Error::Crypto("ratchet key is degenerate"));
    }
    Ok(Zeroizing::new(shared.to_bytes()))
}

/// `KDF_RK`: (new root key, chain key).
fn kdf_root(root: &[u8; 32], dh_out: &[u8; 32]) -> Result<([u8; 32], [u8; 32])> {
    let hk = Hkdf::<Sha256>::new(Some(root), dh_out);
    let mut okm = Zeroizing::new([0u8; 64]);
    hk.expand(ROOT_INFO, okm.as_mut())
        .map_err(|_| Error::Crypto("HKDF expand failed"))?;
    let mut rk = [0u8; 32];
    let mut ck = [0u8; 32];
    rk.copy_from_slice(&okm[..32]);
    ck.copy_from_slice(&okm[32..]);
    Ok((rk, ck))
}

/// `KDF_CK`: (message key, next chain key).
fn kdf_chain(ck: &[u8; 32]) -> Result<(Zeroizing<[u8; 32]>, [u8; 32])> {
    let hk = Hkdf::<Sha256>::from_prk(ck).map_err(|_| Error::Crypto("bad chain key"))?;
    let mut mk = Zeroizing::new([0u8; 32]);
    let mut next = [0u8; 32];
    hk.expand(MESSAGE_INFO, mk.as_mut())
        .and_then(|()| hk.expand(CHAIN_INFO, &mut next))
        .map_err(|_| Error::Crypto("HKDF expand failed"))?;
    Ok((mk, next))
}

/// The AEAD key and nonce of a message key.
fn message_cipher(mk: &[u8; 32]) -> Result<(ChaCha20Poly1305, Nonce)> {
    let hk = Hkdf::<Sha256>::from_prk(mk).map_err(|_| Error::Crypto("bad message key"))?;
    let mut okm = Zeroizing::new([0u8; 44]);
    hk.expand(AEAD_INFO, okm.as_mut())
        .map_err(|_| Error::Crypto("HKDF expand failed"))?;
    let mut key = Zeroizing::new([0u8; 32]);
    key.copy_from_slice(&okm[..32]);
    let nonce = Nonce::try_from(&okm[32..]).map_err(|_| Error::Crypto("bad nonce"))?;
    Ok((ChaCha20Poly1305::new(&(*key).into()), nonce))
}

fn associated(header: &[u8; HEADER_SIZE], ad: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_SIZE + ad.len());
    out.extend_from_slice(header);
    out.extend_from_slice(ad);
    out
}

impl Ratchet {
    /// The initiator's state: it knows the handshake's `shared` secret and
    /// the responder's ratchet public key, and can send at once.
    pub fn initiator<R: rand::CryptoRng + ?Sized>(
        rng: &mut R,
        shared: &[u8; 32],
        responder_public: [u8; 32],
    ) -> Result<Self> {
        let (own_secret, own_public) = generate_key_pair(rng);
        let (root, send) = kdf_root(shared, &*dh(&own_secret, &responder_public)?)?;
        Ok(Self {
            root,
            own_secret: *own_secret,
            own_public,
            remote: Some(responder_public),
            send_chain: Some(send),
            send_n: 0,
            prev_send_n: 0,
            recv_chain: None,
            recv_n: 0,
            skipped: Vec::new(),
        })
    }

    /// The responder's state: the handshake's `shared` secret and the
    /// ratchet key pair whose public half went to the initiator. It can
    /// send once a message from the initiator arrived.
    pub fn responder(shared: &[u8; 32], own_secret: &[u8; 32]) -> Self {
        Self {
            root: *shared,
            own_secret: *own_secret,
            own_public: public_of(own_secret),
            remote: None,
            send_chain: None,
            send_n: 0,
            prev_send_n: 0,
            recv_chain: None,
            recv_n: 0,
            skipped: Vec::new(),
        }
    }

    /// True if this side has a sending chain (the responder gets one with
    /// the first message it receives).
    pub fn can_send(&self) -> bool {
        self.send_chain.is_some()
    }

    /// How many skipped message keys are kept.
    pub fn skipped_keys(&self) -> usize {
        self.skipped.len()
    }

    /// Encrypts `plaintext` with the next message key, `ad` authenticated
    /// besides the header: `header ‖ ciphertext ‖ tag`. The key is erased.
    pub fn encrypt(&mut self, plaintext: &[u8], ad: &[u8]) -> Result<Vec<u8>> {
        let Some(ck) = self.send_chain else {
            return Err(Error::Crypto(
                "the ratchet cannot send before the contact's first message",
            ));
        };
        let (mk, next) = kdf_chain(&ck)?;
        let header = Header {
            ratchet_key: self.own_public,
            prev_n: self.prev_send_n,
            n: self.send_n,
        }
        .to_bytes();
        let send_n = self
            .send_n
            .checked_add(1)
            .ok_or(Error::Crypto("ratchet chain exhausted"))?;
        let (cipher, nonce) = message_cipher(&mk)?;
        let mut out = Vec::with_capacity(OVERHEAD + plaintext.len());
        out.extend_from_slice(&header);
        out.extend_from_slice(plaintext);
        let tag = cipher
            .encrypt_inout_detached(
                &nonce,
                &associated(&header, ad),
                (&mut out[HEADER_SIZE..]).into(),
            )
            .map_err(|_| Error::Crypto("could not encrypt a ratchet message"))?;
        out.extend_from_slice(&tag);
        self.send_chain = Some(next);
        self.send_n = send_n;
        Ok(out)
    }

    /// Decrypts a ratchet message, `ad` as given to [`Ratchet::encrypt`].
    /// On any error the state is unchanged: a replayed message (its key is
    /// gone), a forged one, one too far ahead.
    pub fn decrypt<R: rand::CryptoRng + ?Sized>(
        &mut self,
        rng: &mut R,
        message: &[u8],
        ad: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>> {
        let header = Header::parse(message)?;
        if message.len() < OVERHEAD {
            return Err(Error::Crypto("ratchet message is truncated"));
        }
        let mut next = self.clone();
        let mk = next.message_key(rng, &header)?;
        let plain = open_with(&mk, message, ad)?;
        *self = next;
        Ok(plain)
    }

    /// The key of the message `header` describes, advancing the state (on
    /// `self`, a copy the caller keeps only on success).
    fn message_key<R: rand::CryptoRng + ?Sized>(
        &mut self,
        rng: &mut R,
        header: &Header,
    ) -> Result<Zeroizing<[u8; 32]>> {
        if let Some(i) = self
            .skipped
            .iter()
            .position(|s| s.ratchet_key == header.ratchet_key && s.n == header.n)
        {
            let s = self.skipped.remove(i);
            return Ok(Zeroizing::new(s.key));
        }
        if self.remote != Some(header.ratchet_key) {
            self.skip_until(header.prev_n)?;
            self.dh_step(rng, header.ratchet_key)?;
        }
        self.skip_until(header.n)?;
        let Some(ck) = self.recv_chain else {
            return Err(Error::Crypto("no receiving chain"));
        };
        if header.n < self.recv_n {
            return Err(Error::Crypto(
                "ratchet message was opened already (a replay) or its key expired",
            ));
        }
        let (mk, next) = kdf_chain(&ck)?;
        self.recv_chain = Some(next);
        self.recv_n = self
            .recv_n
            .checked_add(1)
            .ok_or(Error::Crypto("ratchet chain exhausted"))?;
        Ok(mk)
    }

    /// Keeps the keys of the current receiving chain up to message `until`.
    fn skip_until(&mut self, until: u32) -> Result<()> {
        let Some(mut ck) = self.recv_chain else {
            return Ok(());
        };
        let Some(remote) = self.remote else {
            return Ok(());
        };
        if until > self.recv_n.saturating_add(MAX_SKIP) {
            return Err(Error::Crypto("ratchet message skips too many messages"));
        }
        while self.recv_n < until {
            let (mk, next) = kdf_chain(&ck)?;
            self.skipped.push(Skipped {
                ratchet_key: remote,
                n: self.recv_n,
                key: *mk,
            });
            ck = next;
            self.recv_n += 1;
        }
        self.recv_chain = Some(ck);
        if self.skipped.len() > MAX_SKIPPED_KEYS {
            let excess = self.skipped.len() - MAX_SKIPPED_KEYS;
            self.skipped.drain(..excess);
        }
        Ok(())
    }

    /// A Diffie-Hellman ratchet step on a new remote ratchet key: a new
    /// receiving chain, a fresh key pair of our own, a new sending chain.
    /// The old secret key is overwritten.
    fn dh_step<R: rand::CryptoRng + ?Sized>(
        &mut self,
        rng: &mut R,
        remote: [u8; 32],
    ) -> Result<()> {
        self.prev_send_n = self.send_n;
        self.send_n = 0;
        self.recv_n = 0;
        self.remote = Some(remote);
        let (root, recv) = kdf_root(&self.root, &*dh(&self.own_secret, &remote)?)?;
        let (secret, public) = generate_key_pair(rng);
        let (root, send) = kdf_root(&root, &*dh(&secret, &remote)?)?;
        self.own_secret.zeroize();
        self.own_secret = *secret;
        self.own_public = public;
        self.root = root;
        self.recv_chain = Some(recv);
        self.send_chain = Some(send);
        Ok(())
    }
}

fn open_with(mk: &[u8; 32], message: &[u8], ad: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
    let (header, rest) = message.split_at(HEADER_SIZE);
    let (ciphertext, tag) = rest.split_at(rest.len() - TAG_SIZE);
    let mut header_bytes = [0u8; HEADER_SIZE];
    header_bytes.copy_from_slice(header);
    let (cipher, nonce) = message_cipher(mk)?;
    let tag = chacha20poly1305::Tag::try_from(tag).map_err(|_| Error::Crypto("bad tag"))?;
    let mut plain = Zeroizing::new(ciphertext.to_vec());
    cipher
        .decrypt_inout_detached(
            &nonce,
            &associated(&header_bytes, ad),
            plain.as_mut_slice().into(),
            &tag,
        )
        .map_err(|_| Error::Crypto("ratchet message does not open"))?;
    Ok(plain)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    fn pair(rng: &mut ChaCha20Rng) -> (Ratchet, Ratchet) {
        let shared = [7u8; 32];
        let (secret, public) = generate_key_pair(rng);
        let bob = Ratchet::responder(&shared, &secret);
        let alice = Ratchet::initiator(rng, &shared, public).unwrap();
        (alice, bob)
    }

    #[test]
    fn messages_flow_both_ways_and_the_state_survives_a_round_trip_through_postcard() {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let (mut a, mut b) = pair(&mut rng);
        assert!(!b.can_send());
        let m = a.encrypt(b"hi", b"ad").unwrap();
        assert_eq!(m.len(), 2 + OVERHEAD);
        assert_eq!(&*b.decrypt(&mut rng, &m, b"ad").unwrap(), b"hi");
        assert!(b.can_send());
        let bytes = postcard::to_stdvec(&b).unwrap();
        let mut b: Ratchet = postcard::from_bytes(&bytes).unwrap();
        let r = b.encrypt(b"hello", b"ad").unwrap();
        assert_eq!(&*a.decrypt(&mut rng, &r, b"ad").unwrap(), b"hello");
        // Wrong associated data, flipped bytes: refused, state unchanged.
        let m2 = a.encrypt(b"again", b"ad").unwrap();
        assert!(b.decrypt(&mut rng, &m2, b"other").is_err());
        for i in [0, 33, 39, 40, m2.len() - 1] {
            let mut t = m2.clone();
            t[i] ^= 1;
            assert!(b.decrypt(&mut rng, &t, b"ad").is_err(), "byte {i}");
        }
        assert_eq!(&*b.decrypt(&mut rng, &m2, b"ad").unwrap(), b"again");
    }

    proptest! {
        #[test]
        fn any_order_and_any_losses_within_the_window_open_each_message_once(
            order in proptest::sample::subsequence((0..24usize).collect::<Vec<_>>(), 0..=24)
                .prop_shuffle(),
        ) {
            let mut rng = ChaCha20Rng::seed_from_u64(7);
            let (mut a, mut b) = pair(&mut rng);
            // Three chains from Alice (Bob answers between them), 8 each.
            let mut sent = Vec::new();
            for round in 0..3u8 {
                for i in 0..8u8 {
                    let text = [round, i];
                    sent.push((text, a.encrypt(&text, b"q").unwrap()));
                }
                if round == 0 {
                    // Bob must have received something to answer.
                    b.decrypt(&mut rng, &sent[0].1, b"q").unwrap();
                }
                let r = b.encrypt(b"ack", b"q").unwrap();
                a.decrypt(&mut rng, &r, b"q").unwrap();
            }
            let mut opened = std::collections::HashSet::from([0usize]);
            for i in order {
                let got = b.decrypt(&mut rng, &sent[i].1, b"q");
                if opened.insert(i) {
                    prop_assert_eq!(&*got.unwrap(), &sent[i].0[..]);
                } else {
                    prop_assert!(got.is_err(), "message {} opened twice", i);
                }
            }
            prop_assert!(b.skipped_keys() <= MAX_SKIPPED_KEYS);
        }

        #[test]
        fn arbitrary_bytes_never_open_nor_change_the_state(
            bytes in proptest::collection::vec(any::<u8>(), 0..200),
        ) {
            let mut rng = ChaCha20Rng::seed_from_u64(8);
            let (mut a, mut b) = pair(&mut rng);
            b.decrypt(&mut rng, &a.encrypt(b"x", b"").unwrap(), b"").unwrap();
            let before = postcard::to_stdvec(&b).unwrap();
            prop_assert!(b.decrypt(&mut rng, &bytes, b"").is_err());
            prop_assert_eq!(postcard::to_stdvec(&b).unwrap(), before);
        }
    }

    #[test]
    fn a_gap_beyond_the_bound_is_refused_and_changes_nothing() {
        let mut rng = ChaCha20Rng::seed_from_u64(2);
        let (mut a, mut b) = pair(&mut rng);
        let first = a.encrypt(b"0", b"").unwrap();
        b.decrypt(&mut rng, &first, b"").unwrap();
        let mut far = Vec::new();
        for _ in 0..=MAX_SKIP + 1 {
            far = a.encrypt(b"x", b"").unwrap();
        }
        assert!(b.decrypt(&mut rng, &far, b"").is_err());
        assert_eq!(b.skipped_keys(), 0);
    }
}
