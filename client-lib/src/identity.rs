//! A person's identity key pair and the safety number of a contact relation.
//!
//! The identity is an X25519 key pair (HPKE's DHKEM(X25519) key): the
//! recipient's public key is what sealed sender encrypts to, and the sender's
//! secret key authenticates the sender to the recipient (HPKE Auth mode).

use std::fmt;

use sha2::{Digest, Sha512};
use zeroize::{Zeroize, ZeroizeOnDrop};

/// An identity public key (X25519), as carried in invitations.
#[derive(Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct IdentityPublic(pub [u8; 32]);

impl fmt::Debug for IdentityPublic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = bs58::encode(&self.0).into_string();
        let prefix: String = text.chars().take(8).collect();
        write!(f, "IdentityPublic({prefix}…)")
    }
}

/// An identity key pair. The secret half is zeroized on drop and never printed.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct Identity {
    secret: [u8; 32],
    #[zeroize(skip)]
    public: IdentityPublic,
}

impl Identity {
    /// A fresh identity.
    pub fn generate<R: rand::CryptoRng + ?Sized>(rng: &mut R) -> Self {
        let mut ikm = [0u8; 32];
        rng.fill_bytes(&mut ikm);
        let id = Self::from_secret(ikm);
        ikm.zeroize();
        id
    }

    /// Restores an identity from its 32 secret bytes.
    pub fn from_secret(secret: [u8; 32]) -> Self {
        let public = x25519_public(&secret);
        Self { secret, public }
    }

    /// The secret bytes (for the client's own state only).
    pub fn secret_bytes(&self) -> &[u8; 32] {
        &self.secret
    }

    /// The public key.
    pub fn public(&self) -> IdentityPublic {
        self.public
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

fn x25519_public(secret: &[u8; 32]) -> IdentityPublic {
    use hpke::{Deserializable, Kem, Serializable};
    // A 32-byte string is always a valid X25519 private key (it is clamped).
    match <hpke::kem::X25519HkdfSha256 as Kem>::PrivateKey::from_bytes(secret) {
        Ok(sk) => {
            let pk = hpke::kem::X25519HkdfSha256::sk_to_pk(&sk);
            let mut out = [0u8; 32];
            out.copy_from_slice(&pk.to_bytes());
            IdentityPublic(out)
        }
        Err(_) => IdentityPublic([0u8; 32]),
    }
}

/// The safety number of the relation between two identities: the same for
/// both sides, to be compared out of band (read aloud, or side by side).
/// Twelve groups of five digits.
pub fn safety_number(a: &IdentityPublic, b: &IdentityPublic) -> String {
    let (lo, hi) = if a.0 <= b.0 { (a, b) } else { (b, a) };
    let mut h = Sha512::new();
    h.update(b"murmur/safety-number/v1");
    h.update(lo.0);
    h.update(hi.0);
    let digest = h.finalize();
    let groups: Vec<String> = digest
        .chunks_exact(5)
        .take(12)
        .map(|c| {
            let v = c.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
            format!("{:05}", v % 100_000)
        })
        .collect();
    groups.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safety_numbers_are_symmetric_and_distinct() {
        let a = Identity::from_secret([1; 32]).public();
        let b = Identity::from_secret([2; 32]).public();
        let c = Identity::from_secret([3; 32]).public();
        assert_eq!(safety_number(&a, &b), safety_number(&b, &a));
        assert_ne!(safety_number(&a, &b), safety_number(&a, &c));
        let s = safety_number(&a, &b);
        assert_eq!(s.split(' ').count(), 12);
        assert!(
            s.split(' ')
                .all(|g| g.len() == 5 && g.chars().all(|c| c.is_ascii_digit()))
        );
    }

    #[test]
    fn public_key_is_derived_and_secret_is_not_printed() {
        let id = Identity::from_secret([7; 32]);
        assert_ne!(id.public().0, [0u8; 32]);
        assert_eq!(id.public(), Identity::from_secret([7; 32]).public());
        assert!(!format!("{id:?}").contains("7, 7"));
    }
}
