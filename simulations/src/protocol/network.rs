//! The synthetic network of a protocol run: a consensus signed by one
//! authority and verified as a client verifies it, with every key derived
//! from the run's seed.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use murmur_wire::directory::CONSENSUS_VERSION;
use murmur_wire::ed25519_dalek::SigningKey;
use murmur_wire::packet::MIX_LAYERS;
use murmur_wire::{
    AuthoritySet, Consensus, IdentityKey, LinkSecretKey, MailboxEntry, MixEntry, NetworkParams,
    NodeId, SignedConsensus, SphinxSecretKey, VerifiedConsensus,
};
use rand::CryptoRng;

use super::params::ProtocolParams;
use crate::error::{Error, Result};

/// The consensus's epoch.
const EPOCH: u64 = 1;
/// Its length, seconds (the run never reaches the next one).
const EPOCH_SECS: u64 = 3600;

/// The network the clients see, and how the world numbers its nodes.
pub(crate) struct Network {
    pub(crate) consensus: Arc<VerifiedConsensus>,
    /// Mixes, layer-major: mix `l × W + j` is `consensus.layers()[l][j]`.
    pub(crate) mixes: Vec<NodeId>,
    /// Providers, in the consensus's order.
    pub(crate) providers: Vec<NodeId>,
    mix_index: HashMap<NodeId, u32>,
    provider_index: HashMap<NodeId, u32>,
}

impl Network {
    /// Builds, signs and verifies the consensus of `p`, keys from `rng`.
    pub(crate) fn build<R: CryptoRng>(p: &ProtocolParams, rng: &mut R) -> Result<Self> {
        let mut node = 0u32;
        let mut next_addr = || {
            node += 1;
            let [_, a, b, c] = node.to_be_bytes();
            SocketAddr::from((Ipv4Addr::new(10, a, b, c), 1000))
        };
        let mut secret = || {
            let mut s = [0u8; 32];
            rng.fill_bytes(&mut s);
            s
        };
        let mut mixes = Vec::with_capacity(p.mixes());
        for layer in 0..MIX_LAYERS {
            for _ in 0..p.width {
                let identity =
                    IdentityKey::from(&SigningKey::from_bytes(&secret()).verifying_key());
                mixes.push(MixEntry {
                    layer: layer as u8,
                    identity,
                    packet_addr: next_addr(),
                    link_key: LinkSecretKey::derive(&secret()).public().clone(),
                    sphinx_key: SphinxSecretKey::from_bytes(secret()).public_key(),
                });
            }
        }
        mixes.sort_by_key(|m| (m.layer, m.identity));
        let mut mailboxes = Vec::with_capacity(p.providers);
        for _ in 0..p.providers {
            let identity = IdentityKey::from(&SigningKey::from_bytes(&secret()).verifying_key());
            mailboxes.push(MailboxEntry {
                identity,
                packet_addr: next_addr(),
                http_addr: next_addr(),
                link_key: LinkSecretKey::derive(&secret()).public().clone(),
                sphinx_key: SphinxSecretKey::from_bytes(secret()).public_key(),
            });
        }
        mailboxes.sort_by_key(|m| m.identity);
        let doc = Consensus {
            version: CONSENSUS_VERSION,
            epoch: EPOCH,
            valid_after: EPOCH * EPOCH_SECS,
            valid_until: (EPOCH + 1) * EPOCH_SECS,
            params: NetworkParams {
                epoch_secs: EPOCH_SECS,
                ..p.network_params()
            },
            mixes,
            mailboxes,
        };
        let authority = SigningKey::from_bytes(&secret());
        let set = AuthoritySet::new(vec![IdentityKey::from(&authority.verifying_key())], 1)
            .map_err(Error::Network)?;
        let consensus = SignedConsensus::sign(&doc, &authority)
            .and_then(|s| s.verify(&set, EPOCH * EPOCH_SECS + 1, Some(EPOCH)))
            .map_err(Error::Network)?;
        let mixes: Vec<NodeId> = consensus.layers().iter().flatten().map(|n| n.id).collect();
        let providers: Vec<NodeId> = consensus.mailboxes().iter().map(|n| n.id).collect();
        let index = |ids: &[NodeId]| -> HashMap<NodeId, u32> {
            ids.iter()
                .enumerate()
                .map(|(i, id)| (*id, i as u32))
                .collect()
        };
        Ok(Self {
            mix_index: index(&mixes),
            provider_index: index(&providers),
            mixes,
            providers,
            consensus: Arc::new(consensus),
        })
    }

    /// The world's number of mix `id`.
    pub(crate) fn mix(&self, id: &NodeId) -> Option<u32> {
        self.mix_index.get(id).copied()
    }

    /// The world's number of provider `id`.
    pub(crate) fn provider(&self, id: &NodeId) -> Option<u32> {
        self.provider_index.get(id).copied()
    }
}
