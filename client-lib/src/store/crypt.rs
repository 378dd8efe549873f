//! Encryption at rest of the client database: the passphrase, the header
//! that wraps the data key, and the two subkeys that seal values and blind
//! key names. Only RustCrypto primitives are used (Argon2id, HKDF-SHA256,
//! HMAC-SHA256, XChaCha20-Poly1305); nothing here is hand-rolled.
//!
//! Header (101 bytes, the plaintext `header` row):
//!
//! ```text
//! version (1) ‖ m KiB u32 ‖ t u32 ‖ p u32 ‖ salt (16)          ← associated data of the wrap
//!   ‖ nonce (24) ‖ XChaCha20-Poly1305_KEK(data key (32)) ‖ tag (16)
//! KEK = Argon2id(passphrase, salt, m, t, p) → 32 bytes
//! ```
//!
//! Subkeys: `HKDF-SHA256(salt = "murmur/client-store/v1", ikm = data key)`,
//! info `"value"` (the sealing key) and `"key-names"` (the blinding key).
//! A sealed value is `nonce (24) ‖ ciphertext ‖ tag (16)` with associated
//! data `table name ‖ 0x00 ‖ stored key bytes`; a blinded key is
//! `HMAC-SHA256(blinding key, table name ‖ 0x00 ‖ identifier)` cut to 16
//! bytes.

use std::fmt;

use argon2::{Algorithm, Argon2, Params, Version};
use chacha20poly1305::aead::{AeadInOut, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use rand::Rng;
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::error::{Error, Result};

const NONCE_SIZE: usize = 24;
const TAG_SIZE: usize = 16;
/// Bytes a sealed value adds to its plaintext.
pub(crate) const SEAL_OVERHEAD: usize = NONCE_SIZE + TAG_SIZE;
/// Bytes of a blinded key.
pub(crate) const BLIND_SIZE: usize = 16;
/// A blinded key: what stands for an identifier in a table's key.
pub(crate) type Blind = [u8; BLIND_SIZE];

const HEADER_VERSION: u8 = 1;
const SALT_SIZE: usize = 16;
const KEY_SIZE: usize = 32;
/// version ‖ m ‖ t ‖ p ‖ salt: the associated data of the wrap.
const HEADER_AD_SIZE: usize = 1 + 4 + 4 + 4 + SALT_SIZE;
const HEADER_SIZE: usize = HEADER_AD_SIZE + NONCE_SIZE + KEY_SIZE + TAG_SIZE;
const SUBKEY_SALT: &[u8] = b"murmur/client-store/v1";

/// The passphrase that unlocks a client database. Its bytes are zeroized
/// when it is dropped, and `Debug` does not show them.
#[derive(Clone)]
pub struct Passphrase(Zeroizing<String>);

impl Passphrase {
    /// Wraps a passphrase (the `String` is moved in, not copied).
    pub fn new(passphrase: impl Into<String>) -> Self {
        Self(Zeroizing::new(passphrase.into()))
    }

    /// True if it is the empty string.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// True if both are the same passphrase.
    pub fn matches(&self, other: &Passphrase) -> bool {
        self.0.as_bytes() == other.0.as_bytes()
    }

    fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl fmt::Debug for Passphrase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Passphrase(..)")
    }
}

/// The cost of deriving the key-encryption key from a passphrase
/// (Argon2id). The defaults are the ones to use: cheaper settings make a
/// stolen database cheaper to guess the passphrase of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KdfParams {
    /// Memory, KiB (m). Default 65 536 (64 MiB).
    pub memory_kib: u32,
    /// Passes over the memory (t). Default 3.
    pub passes: u32,
    /// Lanes (p). Default 1.
    pub lanes: u32,
}

impl KdfParams {
    /// 64 MiB, 3 passes, 1 lane.
    pub const DEFAULT: Self = Self {
        memory_kib: 64 * 1024,
        passes: 3,
        lanes: 1,
    };
    /// The most memory a header may ask for (4 GiB): a damaged header must
    /// not make an open try to allocate terabytes.
    const MAX_MEMORY_KIB: u32 = 4 * 1024 * 1024;
    /// The most passes or lanes a header may ask for.
    const MAX_PASSES_OR_LANES: u32 = 64;

    fn argon2(&self) -> Result<Argon2<'static>> {
        if self.memory_kib > Self::MAX_MEMORY_KIB
            || self.passes > Self::MAX_PASSES_OR_LANES
            || self.lanes > Self::MAX_PASSES_OR_LANES
        {
            return Err(Error::Crypto("Argon2 parameters out of range"));
        }
        let params = Params::new(self.memory_kib, self.passes, self.lanes, Some(KEY_SIZE))
            .map_err(|_| Error::Crypto("Argon2 parameters out of range"))?;
        Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
    }

    /// Fails if these are not parameters an open would accept.
    pub(crate) fn check(&self) -> Result<()> {
        self.argon2().map(drop)
    }
}

impl Default for KdfParams {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// The 32-byte data key, zeroized on drop.
pub(crate) type DataKey = Zeroizing<[u8; KEY_SIZE]>;

/// The plaintext header: how to turn the passphrase into the key that
/// unwraps the data key, and the wrapped data key.
pub(crate) struct Header {
    kdf: KdfParams,
    salt: [u8; SALT_SIZE],
    nonce: [u8; NONCE_SIZE],
    wrapped: [u8; KEY_SIZE + TAG_SIZE],
}

impl Header {
    /// Wraps `data_key` under a key derived from `passphrase` with a fresh
    /// salt. Runs Argon2id: a fraction of a second at the defaults.
    pub(crate) fn wrap(
        kdf: KdfParams,
        passphrase: &Passphrase,
        data_key: &DataKey,
    ) -> Result<Self> {
        let mut rng = rand::rng();
        let mut header = Self {
            kdf,
            salt: [0; SALT_SIZE],
            nonce: [0; NONCE_SIZE],
            wrapped: [0; KEY_SIZE + TAG_SIZE],
        };
        rng.fill_bytes(&mut header.salt);
        rng.fill_bytes(&mut header.nonce);
        let kek = header.kek(passphrase)?;
        let (ad, nonce) = (header.ad(), XNonce::from(header.nonce));
        let (body, tag_out) = header.wrapped.split_at_mut(KEY_SIZE);
        body.copy_from_slice(&data_key[..]);
        let tag = XChaCha20Poly1305::new(&(*kek).into())
            .encrypt_inout_detached(&nonce, &ad, body.into())
            .map_err(|_| Error::Crypto("could not wrap the data key"))?;
        tag_out.copy_from_slice(&tag);
        Ok(header)
    }

    /// The data key, or `None` if the passphrase (or the header) is not
    /// the one it was wrapped with. Runs Argon2id.
    pub(crate) fn unwrap_key(&self, passphrase: &Passphrase) -> Result<Option<DataKey>> {
        let kek = self.kek(passphrase)?;
        let mut key: DataKey = Zeroizing::new([0; KEY_SIZE]);
        key.copy_from_slice(&self.wrapped[..KEY_SIZE]);
        let tag = chacha20poly1305::Tag::try_from(&self.wrapped[KEY_SIZE..])
            .map_err(|_| Error::Crypto("bad tag"))?;
        let opened = XChaCha20Poly1305::new(&(*kek).into()).decrypt_inout_detached(
            &XNonce::from(self.nonce),
            &self.ad(),
            key.as_mut_slice().into(),
            &tag,
        );
        Ok(opened.ok().map(|()| key))
    }

    /// The parameters it was made with.
    pub(crate) fn kdf(&self) -> KdfParams {
        self.kdf
    }

    fn kek(&self, passphrase: &Passphrase) -> Result<Zeroizing<[u8; KEY_SIZE]>> {
        let mut kek = Zeroizing::new([0u8; KEY_SIZE]);
        self.kdf
            .argon2()?
            .hash_password_into(passphrase.as_bytes(), &self.salt, kek.as_mut_slice())
            .map_err(|_| Error::Crypto("Argon2 failed (out of memory?)"))?;
        Ok(kek)
    }

    fn ad(&self) -> [u8; HEADER_AD_SIZE] {
        let mut ad = [0u8; HEADER_AD_SIZE];
        ad[0] = HEADER_VERSION;
        ad[1..5].copy_from_slice(&self.kdf.memory_kib.to_be_bytes());
        ad[5..9].copy_from_slice(&self.kdf.passes.to_be_bytes());
        ad[9..13].copy_from_slice(&self.kdf.lanes.to_be_bytes());
        ad[13..].copy_from_slice(&self.salt);
        ad
    }

    /// The stored form.
    pub(crate) fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_SIZE);
        out.extend_from_slice(&self.ad());
        out.extend_from_slice(&self.nonce);
        out.extend_from_slice(&self.wrapped);
        out
    }

    /// Parses the stored form; a wrong length, an unknown version or
    /// parameters out of range are corruption.
    pub(crate) fn parse(bytes: &[u8]) -> Result<Self> {
        let corrupt = |what| Error::Corrupt { what };
        if bytes.len() != HEADER_SIZE {
            return Err(corrupt("database header"));
        }
        if bytes[0] != HEADER_VERSION {
            return Err(corrupt("database header version (made by a newer Murmur?)"));
        }
        let u32_at =
            |i: usize| u32::from_be_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
        let kdf = KdfParams {
            memory_kib: u32_at(1),
            passes: u32_at(5),
            lanes: u32_at(9),
        };
        kdf.check().map_err(|_| corrupt("database header"))?;
        let mut header = Self {
            kdf,
            salt: [0; SALT_SIZE],
            nonce: [0; NONCE_SIZE],
            wrapped: [0; KEY_SIZE + TAG_SIZE],
        };
        header.salt.copy_from_slice(&bytes[13..HEADER_AD_SIZE]);
        header
            .nonce
            .copy_from_slice(&bytes[HEADER_AD_SIZE..HEADER_AD_SIZE + NONCE_SIZE]);
        header
            .wrapped
            .copy_from_slice(&bytes[HEADER_AD_SIZE + NONCE_SIZE..]);
        Ok(header)
    }
}

/// The keys of an unlocked database: the data key (kept to rewrap it under
/// a new passphrase) and the two subkeys derived from it.
pub(crate) struct Keys {
    data_key: DataKey,
    seal: XChaCha20Poly1305,
    blind: Hmac<Sha256>,
}

impl Keys {
    /// A fresh random data key.
    pub(crate) fn generate() -> Result<Self> {
        let mut key: DataKey = Zeroizing::new([0; KEY_SIZE]);
        rand::rng().fill_bytes(key.as_mut_slice());
        Self::from_data_key(key)
    }

    /// The keys of a data key.
    pub(crate) fn from_data_key(data_key: DataKey) -> Result<Self> {
        let hk = Hkdf::<Sha256>::new(Some(SUBKEY_SALT), &data_key[..]);
        let mut seal_key = Zeroizing::new([0u8; KEY_SIZE]);
        let mut blind_key = Zeroizing::new([0u8; KEY_SIZE]);
        hk.expand(b"value", seal_key.as_mut_slice())
            .and_then(|()| hk.expand(b"key-names", blind_key.as_mut_slice()))
            .map_err(|_| Error::Crypto("HKDF expand failed"))?;
        let blind = <Hmac<Sha256> as KeyInit>::new_from_slice(&blind_key[..])
            .map_err(|_| Error::Crypto("HMAC key"))?;
        Ok(Self {
            seal: XChaCha20Poly1305::new(&(*seal_key).into()),
            blind,
            data_key,
        })
    }

    pub(crate) fn data_key(&self) -> &DataKey {
        &self.data_key
    }

    /// The blinded key standing for `id` in `table`.
    pub(crate) fn blind(&self, table: &str, id: &[u8]) -> Blind {
        let mut mac = self.blind.clone();
        mac.update(table.as_bytes());
        mac.update(&[0]);
        mac.update(id);
        let full = mac.finalize().into_bytes();
        let mut out = [0u8; BLIND_SIZE];
        out.copy_from_slice(&full[..BLIND_SIZE]);
        out
    }

    /// Seals `plain` as the value of row `key` in `table`.
    pub(crate) fn seal(&self, table: &str, key: &[u8], plain: &[u8]) -> Result<Vec<u8>> {
        let mut out = vec![0u8; plain.len() + SEAL_OVERHEAD];
        let (nonce, rest) = out.split_at_mut(NONCE_SIZE);
        rand::rng().fill_bytes(nonce);
        let nonce = XNonce::try_from(&*nonce).map_err(|_| Error::Crypto("bad nonce"))?;
        let (body, tag_out) = rest.split_at_mut(plain.len());
        body.copy_from_slice(plain);
        let tag = self
            .seal
            .encrypt_inout_detached(&nonce, &ad(table, key), body.into())
            .map_err(|_| Error::Crypto("could not seal a stored value"))?;
        tag_out.copy_from_slice(&tag);
        Ok(out)
    }

    /// Opens the value of row `key` in `table`. A value that does not open
    /// (altered, truncated, moved from another row) is `Corrupt { what }`.
    pub(crate) fn open(
        &self,
        table: &str,
        key: &[u8],
        sealed: &[u8],
        what: &'static str,
    ) -> Result<Zeroizing<Vec<u8>>> {
        let mut out = Zeroizing::new(Vec::with_capacity(sealed.len()));
        self.open_append(table, key, sealed, &mut out, what)?;
        Ok(out)
    }

    /// Opens the value of row `key` in `table` onto the end of `out` (which
    /// is left as it was if it does not open).
    pub(crate) fn open_append(
        &self,
        table: &str,
        key: &[u8],
        sealed: &[u8],
        out: &mut Vec<u8>,
        what: &'static str,
    ) -> Result<()> {
        let corrupt = Error::Corrupt { what };
        if sealed.len() < SEAL_OVERHEAD {
            return Err(corrupt);
        }
        let (nonce, rest) = sealed.split_at(NONCE_SIZE);
        let (body, tag) = rest.split_at(rest.len() - TAG_SIZE);
        let (Ok(nonce), Ok(tag)) = (
            XNonce::try_from(nonce),
            chacha20poly1305::Tag::try_from(tag),
        ) else {
            return Err(corrupt);
        };
        let start = out.len();
        out.extend_from_slice(body);
        let opened = self.seal.decrypt_inout_detached(
            &nonce,
            &ad(table, key),
            (&mut out[start..]).into(),
            &tag,
        );
        if opened.is_err() {
            // Wipe what was copied, then drop it.
            out[start..].iter_mut().for_each(|b| *b = 0);
            out.truncate(start);
            return Err(corrupt);
        }
        Ok(())
    }
}

/// Associated data of a sealed value: `table ‖ 0x00 ‖ key`.
fn ad(table: &str, key: &[u8]) -> Vec<u8> {
    let mut ad = Vec::with_capacity(table.len() + 1 + key.len());
    ad.extend_from_slice(table.as_bytes());
    ad.push(0);
    ad.extend_from_slice(key);
    ad
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHEAP: KdfParams = KdfParams {
        memory_kib: 64,
        passes: 1,
        lanes: 1,
    };

    #[test]
    fn header_round_trips_and_refuses_another_passphrase_or_edits() {
        let keys = Keys::generate().unwrap();
        let right = Passphrase::new("correct horse");
        let header = Header::wrap(CHEAP, &right, keys.data_key()).unwrap();
        let bytes = header.to_bytes();
        assert_eq!(bytes.len(), HEADER_SIZE);
        let parsed = Header::parse(&bytes).unwrap();
        assert_eq!(
            *parsed.unwrap_key(&right).unwrap().unwrap(),
            **keys.data_key()
        );
        assert!(
            parsed
                .unwrap_key(&Passphrase::new("correct horse "))
                .unwrap()
                .is_none()
        );
        // Every byte of the header is bound: the salt and the parameters
        // through the associated data, the rest through the tag.
        for i in [13, 20, HEADER_AD_SIZE, HEADER_AD_SIZE + 30, HEADER_SIZE - 1] {
            let mut t = bytes.clone();
            t[i] ^= 1;
            assert!(
                Header::parse(&t)
                    .unwrap()
                    .unwrap_key(&right)
                    .unwrap()
                    .is_none()
            );
        }
        // A changed parameter, still in range, changes the AD.
        let mut t = bytes.clone();
        t[8] ^= 1; // passes 1 -> 0 is out of range: corrupt
        assert!(matches!(Header::parse(&t), Err(Error::Corrupt { .. })));
        let mut t = bytes.clone();
        t[4] ^= 0x80; // memory 64 -> 192 KiB
        assert!(
            Header::parse(&t)
                .unwrap()
                .unwrap_key(&right)
                .unwrap()
                .is_none()
        );
        let mut t = bytes.clone();
        t[0] = 2;
        assert!(matches!(Header::parse(&t), Err(Error::Corrupt { .. })));
        assert!(matches!(
            Header::parse(&bytes[1..]),
            Err(Error::Corrupt { .. })
        ));
        // A header asking for 4 TiB of memory is refused before Argon2 runs.
        let mut t = bytes.clone();
        t[1] = 0xff;
        assert!(matches!(Header::parse(&t), Err(Error::Corrupt { .. })));
    }

    #[test]
    fn sealed_values_are_bound_to_their_table_and_key() {
        let keys = Keys::generate().unwrap();
        let sealed = keys.seal("inbox", b"k1", b"hello").unwrap();
        assert_eq!(sealed.len(), 5 + SEAL_OVERHEAD);
        assert_eq!(
            &keys.open("inbox", b"k1", &sealed, "x").unwrap()[..],
            b"hello"
        );
        assert!(keys.open("inbox", b"k2", &sealed, "x").is_err());
        assert!(keys.open("outbox", b"k1", &sealed, "x").is_err());
        assert!(keys.open("inbox", b"k1", &sealed[..10], "x").is_err());
        for i in 0..sealed.len() {
            let mut t = sealed.clone();
            t[i] ^= 0x40;
            assert!(keys.open("inbox", b"k1", &t, "x").is_err());
        }
        let other = Keys::generate().unwrap();
        assert!(other.open("inbox", b"k1", &sealed, "x").is_err());
        let mut out = b"kept".to_vec();
        assert!(
            keys.open_append("inbox", b"k2", &sealed, &mut out, "x")
                .is_err()
        );
        assert_eq!(out, b"kept");
        keys.open_append("inbox", b"k1", &sealed, &mut out, "x")
            .unwrap();
        assert_eq!(out, b"kepthello");
    }

    #[test]
    fn blinded_names_depend_on_the_key_and_the_table() {
        let a = Keys::generate().unwrap();
        let b = Keys::generate().unwrap();
        assert_eq!(a.blind("contacts", b"bob"), a.blind("contacts", b"bob"));
        assert_ne!(a.blind("contacts", b"bob"), b.blind("contacts", b"bob"));
        assert_ne!(a.blind("contacts", b"bob"), a.blind("outbox", b"bob"));
        assert_ne!(a.blind("contacts", b"bob"), a.blind("contacts", b"bob2"));
    }

    #[test]
    fn passphrase_debug_hides_it() {
        let p = Passphrase::new("hunter2");
        assert!(!format!("{p:?}").contains("hunter2"));
        assert!(p.matches(&Passphrase::new(String::from("hunter2"))));
        assert!(!p.is_empty());
    }
}
