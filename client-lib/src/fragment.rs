//! The fragment layer: a sealed message cut into deposit bodies of exactly
//! [`DEPOSIT_BODY_SIZE`] bytes, each encrypted under the relation's key so
//! the mailbox cannot tell which deposits belong to one message, nor how
//! long a message is except by counting deposits.
//!
//! Body layout (2048 bytes):
//!
//! ```text
//! nonce (24) ‖ XChaCha20-Poly1305( message id (16) ‖ index u32 ‖ count u32 ‖ len u16 ‖ chunk (len) ‖ zeros ) ‖ tag (16)
//! ```
//!
//! The key is `HKDF-SHA256(salt = "murmur/fragment-key/v1", ikm = contact
//! secret, info = queue id)`: one key per direction of a relation. The queue
//! id is also the associated data, so a body cannot be moved to another queue.

use std::collections::BTreeMap;

use chacha20poly1305::aead::{AeadInOut, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hkdf::Hkdf;
use murmur_wire::{DEPOSIT_BODY_SIZE, MessageId, QueueId};
use sha2::Sha256;
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::error::{Error, Result};

const NONCE_SIZE: usize = 24;
const TAG_SIZE: usize = 16;
const HEADER_SIZE: usize = 16 + 4 + 4 + 2;
const PLAINTEXT_SIZE: usize = DEPOSIT_BODY_SIZE - NONCE_SIZE - TAG_SIZE;
/// Bytes of sealed message one packet carries.
pub const CHUNK_SIZE: usize = PLAINTEXT_SIZE - HEADER_SIZE;
/// The most fragments one message may have (bounds what a receiver buffers).
pub const MAX_FRAGMENTS: u32 = 40_000;

/// The key of one direction of a relation. Zeroized on drop.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct FragmentKey([u8; 32]);

impl FragmentKey {
    /// Derives the key for `queue` from the relation's secret.
    pub fn derive(secret: &[u8; 32], queue: &QueueId) -> Self {
        let hk = Hkdf::<Sha256>::new(Some(b"murmur/fragment-key/v1"), secret);
        let mut key = [0u8; 32];
        // 32 bytes is far below HKDF-SHA256's output limit; expand cannot fail.
        if hk.expand(queue.as_bytes(), &mut key).is_err() {
            key = [0u8; 32];
        }
        Self(key)
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new(&self.0.into())
    }
}

/// One decrypted fragment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fragment {
    /// The message it belongs to.
    pub message_id: MessageId,
    /// Its position, `0..count`.
    pub index: u32,
    /// How many fragments the message has.
    pub count: u32,
    /// Its piece of the sealed message.
    pub chunk: Vec<u8>,
}

/// How many fragments a sealed message of `len` bytes needs.
pub fn fragments_for(len: usize) -> usize {
    len.div_ceil(CHUNK_SIZE).max(1)
}

/// Cuts `sealed` into encrypted deposit bodies.
pub fn split<R: rand::CryptoRng + ?Sized>(
    rng: &mut R,
    key: &FragmentKey,
    queue: &QueueId,
    message_id: MessageId,
    sealed: &[u8],
) -> Result<Vec<Box<[u8; DEPOSIT_BODY_SIZE]>>> {
    let count = fragments_for(sealed.len());
    let count_u32 = u32::try_from(count)
        .ok()
        .filter(|c| *c <= MAX_FRAGMENTS)
        .ok_or(Error::TooLarge {
            size: sealed.len(),
            max: MAX_FRAGMENTS as usize * CHUNK_SIZE,
        })?;
    let cipher = key.cipher();
    let mut out = Vec::with_capacity(count);
    for index in 0..count_u32 {
        let start = index as usize * CHUNK_SIZE;
        let chunk = sealed
            .get(start..(start + CHUNK_SIZE).min(sealed.len()))
            .unwrap_or(&[]);
        let mut body = Box::new([0u8; DEPOSIT_BODY_SIZE]);
        let (nonce, rest) = body.split_at_mut(NONCE_SIZE);
        rng.fill_bytes(nonce);
        let nonce = XNonce::try_from(&*nonce).map_err(|_| Error::Crypto("bad nonce"))?;
        let (plain, tag_out) = rest.split_at_mut(PLAINTEXT_SIZE);
        plain[..16].copy_from_slice(message_id.as_bytes());
        plain[16..20].copy_from_slice(&index.to_be_bytes());
        plain[20..24].copy_from_slice(&count_u32.to_be_bytes());
        // A chunk is at most CHUNK_SIZE (< 65536) bytes.
        plain[24..26].copy_from_slice(&(chunk.len() as u16).to_be_bytes());
        plain[HEADER_SIZE..HEADER_SIZE + chunk.len()].copy_from_slice(chunk);
        let tag = cipher
            .encrypt_inout_detached(&nonce, queue.as_bytes(), plain.into())
            .map_err(|_| Error::Crypto("could not encrypt a fragment"))?;
        tag_out.copy_from_slice(&tag);
        out.push(body);
    }
    Ok(out)
}

/// Decrypts and parses one deposit body.
pub fn open(key: &FragmentKey, queue: &QueueId, body: &[u8]) -> Result<Fragment> {
    if body.len() != DEPOSIT_BODY_SIZE {
        return Err(Error::Crypto("fragment has the wrong size"));
    }
    let (nonce, rest) = body.split_at(NONCE_SIZE);
    let (ciphertext, tag) = rest.split_at(PLAINTEXT_SIZE);
    let mut plain = ciphertext.to_vec();
    let tag = chacha20poly1305::Tag::try_from(tag).map_err(|_| Error::Crypto("bad tag"))?;
    let nonce = XNonce::try_from(nonce).map_err(|_| Error::Crypto("bad nonce"))?;
    key.cipher()
        .decrypt_inout_detached(&nonce, queue.as_bytes(), plain.as_mut_slice().into(), &tag)
        .map_err(|_| Error::Crypto("fragment does not decrypt with this relation's key"))?;
    let message_id = MessageId::from_slice(&plain[..16])?;
    let index = u32::from_be_bytes([plain[16], plain[17], plain[18], plain[19]]);
    let count = u32::from_be_bytes([plain[20], plain[21], plain[22], plain[23]]);
    let len = usize::from(u16::from_be_bytes([plain[24], plain[25]]));
    if count == 0 || count > MAX_FRAGMENTS || index >= count || len > CHUNK_SIZE {
        return Err(Error::Crypto("fragment header is inconsistent"));
    }
    if plain[HEADER_SIZE + len..].iter().any(|b| *b != 0) {
        return Err(Error::Crypto("fragment padding is not zero"));
    }
    Ok(Fragment {
        message_id,
        index,
        count,
        chunk: plain[HEADER_SIZE..HEADER_SIZE + len].to_vec(),
    })
}

/// Collects the fragments of one message, in any order, each once.
#[derive(Clone, Debug, Default)]
pub struct Reassembly {
    count: u32,
    chunks: BTreeMap<u32, Vec<u8>>,
}

impl Reassembly {
    /// Adds a fragment. Returns `Ok(true)` if it was new. A fragment that
    /// disagrees with earlier ones about the count is refused.
    pub fn add(&mut self, fragment: Fragment) -> Result<bool> {
        if self.chunks.is_empty() {
            self.count = fragment.count;
        } else if fragment.count != self.count {
            return Err(Error::Crypto("fragments disagree about the message length"));
        }
        if self.chunks.contains_key(&fragment.index) {
            return Ok(false);
        }
        self.chunks.insert(fragment.index, fragment.chunk);
        Ok(true)
    }

    /// Fragments held.
    pub fn have(&self) -> u32 {
        self.chunks.len() as u32
    }

    /// Fragments the message has (0 before the first).
    pub fn count(&self) -> u32 {
        self.count
    }

    /// True once every fragment is held.
    pub fn is_complete(&self) -> bool {
        self.count > 0 && self.have() == self.count
    }

    /// The sealed message, once complete.
    pub fn assemble(&self) -> Option<Vec<u8>> {
        self.is_complete()
            .then(|| self.chunks.values().flatten().copied().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    #[test]
    fn split_and_reassemble_in_any_order_exactly_once() {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let q = QueueId::from_bytes([1; 32]);
        let key = FragmentKey::derive(&[5; 32], &q);
        let sealed: Vec<u8> = (0..CHUNK_SIZE * 3 + 17).map(|i| i as u8).collect();
        let id = MessageId::from_bytes([2; 16]);
        let bodies = split(&mut rng, &key, &q, id, &sealed).unwrap();
        assert_eq!(bodies.len(), 4);
        let mut r = Reassembly::default();
        for i in [3usize, 1, 1, 0, 2, 3] {
            let f = open(&key, &q, &bodies[i][..]).unwrap();
            assert_eq!(f.message_id, id);
            r.add(f).unwrap();
        }
        assert!(r.is_complete());
        assert_eq!(r.assemble().unwrap(), sealed);
    }

    #[test]
    fn empty_message_is_one_fragment() {
        let mut rng = ChaCha20Rng::seed_from_u64(2);
        let q = QueueId::from_bytes([1; 32]);
        let key = FragmentKey::derive(&[5; 32], &q);
        let bodies = split(&mut rng, &key, &q, MessageId::from_bytes([0; 16]), &[]).unwrap();
        assert_eq!(bodies.len(), 1);
        let mut r = Reassembly::default();
        r.add(open(&key, &q, &bodies[0][..]).unwrap()).unwrap();
        assert_eq!(r.assemble().unwrap(), Vec::<u8>::new());
    }

    #[test]
    fn wrong_key_queue_or_tampering_is_refused() {
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        let q = QueueId::from_bytes([1; 32]);
        let key = FragmentKey::derive(&[5; 32], &q);
        let body = split(&mut rng, &key, &q, MessageId::from_bytes([1; 16]), b"hi").unwrap();
        let body = &body[0][..];
        assert!(open(&FragmentKey::derive(&[6; 32], &q), &q, body).is_err());
        let q2 = QueueId::from_bytes([2; 32]);
        assert!(open(&key, &q2, body).is_err());
        assert!(open(&FragmentKey::derive(&[5; 32], &q2), &q2, body).is_err());
        for i in [0, 30, 1000, DEPOSIT_BODY_SIZE - 1] {
            let mut t = body.to_vec();
            t[i] ^= 1;
            assert!(open(&key, &q, &t).is_err());
        }
        assert!(open(&key, &q, &body[1..]).is_err());
    }

    #[test]
    fn inconsistent_counts_are_refused() {
        let mut r = Reassembly::default();
        let f = |index, count| Fragment {
            message_id: MessageId::from_bytes([0; 16]),
            index,
            count,
            chunk: vec![1],
        };
        assert!(r.add(f(0, 2)).unwrap());
        assert!(!r.add(f(0, 2)).unwrap());
        assert!(r.add(f(1, 3)).is_err());
        assert!(!r.is_complete());
    }

    proptest! {
        #[test]
        fn arbitrary_bodies_never_panic(data in proptest::collection::vec(any::<u8>(), 0..2100)) {
            let q = QueueId::from_bytes([1; 32]);
            let _ = open(&FragmentKey::derive(&[0; 32], &q), &q, &data);
        }
    }
}
