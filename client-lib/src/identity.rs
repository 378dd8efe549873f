//! A person's identity key pairs and the safety number of a contact relation.
//!
//! An identity is two key pairs, generated independently:
//! - an **X25519** key pair: its static Diffie-Hellman with a contact's
//!   X25519 key authenticates each sealed message (the pre-shared key of
//!   HPKE's Psk mode, see `crate::seal`);
//! - an **X-Wing** key pair (ML-KEM-768 + X25519, hybrid post-quantum; its
//!   secret is a 32-byte seed): what sealed sender encapsulates to.
//!
//! The X-Wing seed is random, never derived from the X25519 secret: a
//! quantum adversary recovers an X25519 secret from its public key, and a
//! seed derived from it would fall with it.

use std::fmt;

use hpke::kem::XWing;
use hpke::{Deserializable, Kem, Serializable};
use sha2::{Digest, Sha256, Sha512};
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Size of an X-Wing public (encapsulation) key.
pub const PQ_PUBLIC_KEY_SIZE: usize = 1216;

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

/// A post-quantum identity public key: an X-Wing encapsulation key
/// ([`PQ_PUBLIC_KEY_SIZE`] bytes). Only a well-formed key can be
/// represented: decoding checks the length and the key.
#[derive(Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "Vec<u8>", into = "Vec<u8>")]
pub struct PqPublic(Vec<u8>);

impl PqPublic {
    /// Parses an X-Wing encapsulation key.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != PQ_PUBLIC_KEY_SIZE {
            return None;
        }
        <XWing as Kem>::PublicKey::from_bytes(bytes).ok()?;
        Some(Self(bytes.to_vec()))
    }

    /// The encoded key.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The key as the HPKE crate takes it.
    pub(crate) fn to_kem(&self) -> Option<<XWing as Kem>::PublicKey> {
        <XWing as Kem>::PublicKey::from_bytes(&self.0).ok()
    }
}

impl TryFrom<Vec<u8>> for PqPublic {
    type Error = &'static str;
    fn try_from(v: Vec<u8>) -> Result<Self, Self::Error> {
        Self::from_bytes(&v).ok_or("not an X-Wing public key")
    }
}

impl From<PqPublic> for Vec<u8> {
    fn from(k: PqPublic) -> Self {
        k.0
    }
}

impl fmt::Debug for PqPublic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let digest = Sha256::digest(&self.0);
        let text = bs58::encode(&digest[..6]).into_string();
        write!(f, "PqPublic(#{text})")
    }
}

/// An identity: an X25519 and an X-Wing key pair. The secret halves are
/// zeroized on drop and never printed.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct Identity {
    secret: [u8; 32],
    pq_seed: [u8; 32],
    #[zeroize(skip)]
    public: IdentityPublic,
    #[zeroize(skip)]
    pq_public: PqPublic,
}

impl Identity {
    /// A fresh identity.
    pub fn generate<R: rand::CryptoRng + ?Sized>(rng: &mut R) -> Self {
        let mut secret = [0u8; 32];
        let mut pq_seed = [0u8; 32];
        rng.fill_bytes(&mut secret);
        rng.fill_bytes(&mut pq_seed);
        let id = Self::from_secrets(secret, pq_seed);
        secret.zeroize();
        pq_seed.zeroize();
        id
    }

    /// Restores an identity from its X25519 secret and its X-Wing seed.
    pub fn from_secrets(secret: [u8; 32], pq_seed: [u8; 32]) -> Self {
        let public = x25519_public(&secret);
        let pq_public = xwing_public(&pq_seed);
        Self {
            secret,
            pq_seed,
            public,
            pq_public,
        }
    }

    /// The X25519 secret bytes (for the client's own state only).
    pub fn secret_bytes(&self) -> &[u8; 32] {
        &self.secret
    }

    /// The X-Wing seed (for the client's own state only).
    pub fn pq_seed(&self) -> &[u8; 32] {
        &self.pq_seed
    }

    /// The X25519 public key.
    pub fn public(&self) -> IdentityPublic {
        self.public
    }

    /// The X-Wing public key.
    pub fn pq_public(&self) -> &PqPublic {
        &self.pq_public
    }

    /// The X-Wing private key as the HPKE crate takes it.
    pub(crate) fn pq_private(&self) -> Option<<XWing as Kem>::PrivateKey> {
        <XWing as Kem>::PrivateKey::from_bytes(&self.pq_seed).ok()
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("public", &self.public)
            .field("pq_public", &self.pq_public)
            .finish_non_exhaustive()
    }
}

fn x25519_public(secret: &[u8; 32]) -> IdentityPublic {
    let sk = x25519_dalek::StaticSecret::from(*secret);
    IdentityPublic(x25519_dalek::PublicKey::from(&sk).to_bytes())
}

fn xwing_public(seed: &[u8; 32]) -> PqPublic {
    // Any 32 bytes are an X-Wing private key (it is a seed), so the parse
    // cannot fail; the public key it gives is well formed by construction.
    match <XWing as Kem>::PrivateKey::from_bytes(seed) {
        Ok(sk) => PqPublic(XWing::sk_to_pk(&sk).to_bytes().to_vec()),
        Err(_) => PqPublic(vec![0; PQ_PUBLIC_KEY_SIZE]),
    }
}

/// The safety number of the relation between two identities: the same for
/// both sides, to be compared out of band (read aloud, or side by side).
/// Twelve groups of five digits. It covers both keys of each side, so a
/// substituted post-quantum key changes it as surely as an X25519 key.
pub fn safety_number(a: (&IdentityPublic, &PqPublic), b: (&IdentityPublic, &PqPublic)) -> String {
    let (lo, hi) = if a.0.0 <= b.0.0 { (a, b) } else { (b, a) };
    let mut h = Sha512::new();
    h.update(b"murmur/safety-number/v2");
    for (x, pq) in [lo, hi] {
        h.update(x.0);
        h.update(pq.as_bytes());
    }
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

    fn id(n: u8) -> Identity {
        Identity::from_secrets([n; 32], [n.wrapping_add(100); 32])
    }

    #[test]
    fn safety_numbers_are_symmetric_and_distinct() {
        let (a, b, c) = (id(1), id(2), id(3));
        let k = |i: &Identity| (i.public(), i.pq_public().clone());
        let (ka, kb, kc) = (k(&a), k(&b), k(&c));
        let sn = |x: &(IdentityPublic, PqPublic), y: &(IdentityPublic, PqPublic)| {
            safety_number((&x.0, &x.1), (&y.0, &y.1))
        };
        assert_eq!(sn(&ka, &kb), sn(&kb, &ka));
        assert_ne!(sn(&ka, &kb), sn(&ka, &kc));
        // Swapping only the post-quantum key changes it.
        let swapped = (kb.0, kc.1.clone());
        assert_ne!(sn(&ka, &kb), sn(&ka, &swapped));
        let s = sn(&ka, &kb);
        assert_eq!(s.split(' ').count(), 12);
        assert!(
            s.split(' ')
                .all(|g| g.len() == 5 && g.chars().all(|c| c.is_ascii_digit()))
        );
    }

    #[test]
    fn public_keys_are_derived_and_secrets_are_not_printed() {
        let a = id(7);
        assert_ne!(a.public().0, [0u8; 32]);
        assert_eq!(a.public(), id(7).public());
        assert_eq!(a.pq_public(), id(7).pq_public());
        assert_eq!(a.pq_public().as_bytes().len(), PQ_PUBLIC_KEY_SIZE);
        // The X-Wing key does not follow from the X25519 secret.
        assert_ne!(
            a.pq_public(),
            Identity::from_secrets([7; 32], [8; 32]).pq_public()
        );
        let shown = format!("{a:?}");
        assert!(!shown.contains("7, 7") && !shown.contains("107, 107"));
    }

    #[test]
    fn malformed_pq_keys_do_not_parse() {
        let good = id(1).pq_public().clone();
        assert_eq!(PqPublic::from_bytes(good.as_bytes()), Some(good.clone()));
        assert!(PqPublic::from_bytes(&good.as_bytes()[1..]).is_none());
        let bytes = postcard::to_stdvec(&good).unwrap();
        assert_eq!(postcard::from_bytes::<PqPublic>(&bytes).unwrap(), good);
        let short = postcard::to_stdvec(&vec![0u8; 100]).unwrap();
        assert!(postcard::from_bytes::<PqPublic>(&short).is_err());
    }
}
