//! Identities and addresses: node ids, mailbox queue ids, message ids.
//!
//! Every id is a fixed number of bytes with a base58 text form for humans.
//! Parsing the text form checks the alphabet and the decoded length, so a
//! parsed id is always well formed. `Debug` shows only a short prefix: ids are
//! metadata and do not belong in logs in full (STYLE.md, point 16).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

macro_rules! byte_id {
    ($(#[$meta:meta])* $name:ident, $len:expr, $kind:literal) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        pub struct $name([u8; $len]);

        impl $name {
            /// Length of this id in bytes.
            pub const LEN: usize = $len;

            /// Wraps raw bytes.
            pub const fn from_bytes(bytes: [u8; $len]) -> Self {
                Self(bytes)
            }

            /// Parses raw bytes of exactly [`Self::LEN`] bytes.
            pub fn from_slice(bytes: &[u8]) -> Result<Self> {
                let arr: [u8; $len] = bytes.try_into().map_err(|_| Error::WrongLength {
                    what: $kind,
                    expected: $len,
                    actual: bytes.len(),
                })?;
                Ok(Self(arr))
            }

            /// A fresh random id.
            pub fn random<R: rand::CryptoRng + ?Sized>(rng: &mut R) -> Self {
                let mut bytes = [0u8; $len];
                rng.fill_bytes(&mut bytes);
                Self(bytes)
            }

            /// The raw bytes.
            pub const fn as_bytes(&self) -> &[u8; $len] {
                &self.0
            }

            /// The raw bytes, by value.
            pub const fn to_bytes(self) -> [u8; $len] {
                self.0
            }

            /// The base58 text form (also what `Display` prints).
            pub fn to_base58(&self) -> String {
                bs58::encode(&self.0).into_string()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_base58())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                // A short prefix is enough to tell ids apart while debugging
                // and is not enough to address anything.
                let text = self.to_base58();
                let prefix: String = text.chars().take(6).collect();
                write!(f, concat!(stringify!($name), "({}…)"), prefix)
            }
        }

        impl FromStr for $name {
            type Err = Error;

            fn from_str(s: &str) -> Result<Self> {
                let s = s.trim();
                if s.is_empty() {
                    return Err(Error::InvalidId { kind: $kind, reason: "empty" });
                }
                // A base58 string of N bytes is at most ceil(N * log(256)/log(58)) chars;
                // refuse anything much longer before decoding it.
                if s.len() > $len * 2 {
                    return Err(Error::InvalidId { kind: $kind, reason: "too long" });
                }
                let mut buf = [0u8; $len];
                let written = bs58::decode(s).onto(&mut buf[..]).map_err(|e| match e {
                    bs58::decode::Error::BufferTooSmall => {
                        Error::InvalidId { kind: $kind, reason: "too long" }
                    }
                    _ => Error::InvalidId { kind: $kind, reason: "not base58" },
                })?;
                if written != $len {
                    return Err(Error::InvalidId { kind: $kind, reason: "too short" });
                }
                Ok(Self(buf))
            }
        }
    };
}

byte_id!(
    /// A node's id: 32 bytes derived from its Ed25519 identity key
    /// ([`NodeId::from_identity`]). Used as the Sphinx next-hop address and
    /// resolved to a socket address through the verified consensus.
    NodeId,
    32,
    "node id"
);

byte_id!(
    /// A mailbox queue id: 32 unguessable random bytes, chosen by the provider
    /// when the queue is created. The Sphinx final destination address.
    QueueId,
    32,
    "queue id"
);

byte_id!(
    /// The id of one deposited message (one fragment): 16 random bytes chosen
    /// by the sender. Mailboxes store a deposit once per message id, and the
    /// acknowledgement names it.
    MessageId,
    16,
    "message id"
);

byte_id!(
    /// The id of a SURB (single-use reply block): 16 random non-zero bytes.
    /// It reaches only the SURB's final hop (in the clear, as the Sphinx
    /// identifier) and lets the SURB's creator find the recovery material
    /// for the reply.
    SurbId,
    16,
    "SURB id"
);

impl SurbId {
    /// A fresh random SURB id; never all zeros, because a zero identifier
    /// marks a forward packet (see `packet`).
    pub fn random_nonzero<R: rand::CryptoRng + ?Sized>(rng: &mut R) -> Self {
        let mut id = Self::random(rng);
        if id.0 == [0u8; 16] {
            id.0[0] = 1;
        }
        id
    }

    /// True for the all-zero id, which no SURB uses.
    pub fn is_zero(&self) -> bool {
        self.0 == [0u8; 16]
    }
}

impl NodeId {
    /// Derives a node id from the node's Ed25519 identity public key:
    /// `SHA-256("murmur/node-id/v1" || key)`.
    pub fn from_identity(identity: &ed25519_dalek::VerifyingKey) -> Self {
        Self::from_identity_bytes(identity.as_bytes())
    }

    /// As [`NodeId::from_identity`], from the raw key bytes.
    pub fn from_identity_bytes(identity: &[u8; 32]) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(b"murmur/node-id/v1");
        hasher.update(identity);
        Self(hasher.finalize().into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn text_forms_round_trip() {
        let q = QueueId::from_bytes([7u8; 32]);
        assert_eq!(q, q.to_string().parse().unwrap());
        let m = MessageId::from_bytes([0u8; 16]);
        assert_eq!(m, m.to_string().parse().unwrap());
    }

    #[test]
    fn garbage_is_refused_with_a_reason() {
        let err = "0OIl".parse::<NodeId>().unwrap_err();
        assert!(err.to_string().contains("not base58"), "{err}");
        let err = "".parse::<QueueId>().unwrap_err();
        assert!(err.to_string().contains("empty"), "{err}");
        let short = bs58::encode([1u8; 31]).into_string();
        let err = short.parse::<QueueId>().unwrap_err();
        assert!(err.to_string().contains("too short"), "{err}");
        let long = bs58::encode([1u8; 33]).into_string();
        let err = long.parse::<QueueId>().unwrap_err();
        assert!(err.to_string().contains("too long"), "{err}");
        let err = "x".repeat(500).parse::<QueueId>().unwrap_err();
        assert!(err.to_string().contains("too long"), "{err}");
    }

    #[test]
    fn debug_shows_only_a_prefix() {
        let q = QueueId::from_bytes([9u8; 32]);
        let full = q.to_string();
        let dbg = format!("{q:?}");
        assert!(!dbg.contains(&full), "{dbg}");
        assert!(dbg.starts_with("QueueId("), "{dbg}");
    }

    #[test]
    fn node_id_is_derived_not_copied() {
        let key = [3u8; 32];
        let id = NodeId::from_identity_bytes(&key);
        assert_ne!(id.as_bytes(), &key);
        assert_eq!(id, NodeId::from_identity_bytes(&key));
    }

    proptest! {
        #[test]
        fn any_queue_id_round_trips(bytes in any::<[u8; 32]>()) {
            let q = QueueId::from_bytes(bytes);
            prop_assert_eq!(q, q.to_string().parse::<QueueId>().unwrap());
        }

        #[test]
        fn any_message_id_round_trips(bytes in any::<[u8; 16]>()) {
            let m = MessageId::from_bytes(bytes);
            prop_assert_eq!(m, m.to_string().parse::<MessageId>().unwrap());
        }

        #[test]
        fn arbitrary_text_never_panics(s in ".{0,120}") {
            let _ = s.parse::<NodeId>();
            let _ = s.parse::<QueueId>();
            let _ = s.parse::<MessageId>();
        }
    }
}
