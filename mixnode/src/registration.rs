//! The node's descriptor: role Mix, packet address, Sphinx keys for the
//! current and upcoming epochs, signed with the Ed25519 identity key.

use std::net::SocketAddr;

use murmur_wire::directory::DESCRIPTOR_VERSION;
use murmur_wire::ed25519_dalek::SigningKey;
use murmur_wire::{Descriptor, IdentityKey, Role, SignedDescriptor};

use crate::error::{Error, Result};
use crate::keys::KeyManager;

/// Signs the descriptor a mix at `packet_addr` publishes at unix time
/// `now_secs`.
pub fn mix_descriptor(
    identity: &SigningKey,
    packet_addr: SocketAddr,
    keys: &KeyManager,
    now_secs: u64,
) -> Result<SignedDescriptor> {
    let descriptor = Descriptor {
        version: DESCRIPTOR_VERSION,
        identity: IdentityKey::from(&identity.verifying_key()),
        role: Role::Mix,
        packet_addr,
        http_addr: None,
        sphinx_keys: keys.public_keys(now_secs),
        published_at: now_secs,
    };
    let signed = SignedDescriptor::sign(&descriptor, identity).map_err(|source| Error::Wire {
        what: "could not sign the descriptor",
        source,
    })?;
    // Never publish what an authority would refuse.
    signed.verify().map_err(|source| Error::Wire {
        what: "the descriptor does not verify",
        source,
    })?;
    Ok(signed)
}
