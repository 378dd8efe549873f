//! Key types: node identity keys (Ed25519) and per-epoch Sphinx keys (X25519).
//!
//! Secret keys zeroize on drop and never print: their `Debug` is redacted.

use std::fmt;

use serde::{Deserialize, Serialize};
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::ids::NodeId;

/// An Ed25519 public key as it appears in descriptors and documents.
///
/// Kept as bytes on the wire; [`IdentityKey::verifying_key`] checks that it is a
/// valid point before anything is verified against it.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct IdentityKey(pub [u8; 32]);

impl IdentityKey {
    /// The key as an `ed25519-dalek` verifying key.
    pub fn verifying_key(&self, what: &'static str) -> Result<ed25519_dalek::VerifyingKey> {
        ed25519_dalek::VerifyingKey::from_bytes(&self.0)
            .map_err(|_| Error::InvalidPublicKey { what })
    }

    /// The node id this identity key derives.
    pub fn node_id(&self) -> NodeId {
        NodeId::from_identity_bytes(&self.0)
    }

    /// Base58 text form, for configs and logs.
    pub fn to_base58(&self) -> String {
        bs58::encode(&self.0).into_string()
    }

    /// Parses the base58 text form.
    pub fn from_base58(s: &str) -> Result<Self> {
        let mut buf = [0u8; 32];
        let n = bs58::decode(s.trim())
            .onto(&mut buf[..])
            .map_err(|_| Error::InvalidId {
                kind: "identity key",
                reason: "not base58 of 32 bytes",
            })?;
        if n != 32 {
            return Err(Error::InvalidId {
                kind: "identity key",
                reason: "too short",
            });
        }
        Ok(Self(buf))
    }
}

impl From<&ed25519_dalek::VerifyingKey> for IdentityKey {
    fn from(key: &ed25519_dalek::VerifyingKey) -> Self {
        Self(key.to_bytes())
    }
}

impl fmt::Display for IdentityKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base58())
    }
}

impl fmt::Debug for IdentityKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = self.to_base58();
        let prefix: String = text.chars().take(8).collect();
        write!(f, "IdentityKey({prefix}…)")
    }
}

/// An X25519 Sphinx public key, published in descriptors per epoch.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SphinxPublicKey(pub [u8; 32]);

impl SphinxPublicKey {
    pub(crate) fn to_dalek(self) -> PublicKey {
        PublicKey::from(self.0)
    }
}

impl fmt::Debug for SphinxPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = bs58::encode(&self.0).into_string();
        let prefix: String = text.chars().take(8).collect();
        write!(f, "SphinxPublicKey({prefix}…)")
    }
}

/// An X25519 Sphinx secret key for one epoch. Zeroized on drop.
#[derive(Clone)]
pub struct SphinxSecretKey(StaticSecret);

impl SphinxSecretKey {
    /// A fresh random key.
    pub fn random<R: rand::CryptoRng + ?Sized>(rng: &mut R) -> Self {
        Self(StaticSecret::random_from_rng(rng))
    }

    /// Restores a key from its 32 secret bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(StaticSecret::from(bytes))
    }

    /// The secret bytes, for storing on disk. Wrapped so they are wiped.
    pub fn to_bytes(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.0.to_bytes())
    }

    /// The matching public key.
    pub fn public_key(&self) -> SphinxPublicKey {
        SphinxPublicKey(PublicKey::from(&self.0).to_bytes())
    }

    pub(crate) fn dalek(&self) -> &StaticSecret {
        &self.0
    }
}

impl fmt::Debug for SphinxSecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SphinxSecretKey(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_debug_is_redacted() {
        let k = SphinxSecretKey::from_bytes([42u8; 32]);
        let dbg = format!("{k:?}");
        assert!(!dbg.contains("42"), "{dbg}");
    }

    #[test]
    fn identity_key_text_round_trips_and_rejects_garbage() {
        let k = IdentityKey([5u8; 32]);
        assert_eq!(k, IdentityKey::from_base58(&k.to_base58()).unwrap());
        assert!(IdentityKey::from_base58("not-base58!").is_err());
        assert!(IdentityKey::from_base58("abc").is_err());
    }
}
