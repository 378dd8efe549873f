//! What the client core's tests share: a small signed consensus.
#![allow(dead_code, unreachable_pub, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;

use murmur_wire::ed25519_dalek::SigningKey;
use murmur_wire::{
    AuthoritySet, Consensus, IdentityKey, LinkSecretKey, MailboxEntry, MixEntry, NetworkParams,
    QueueId, SignedConsensus, SphinxSecretKey, VerifiedConsensus,
};

pub const EPOCH: u64 = 3600;

pub fn key(n: u8) -> IdentityKey {
    IdentityKey::from(&SigningKey::from_bytes(&[n; 32]).verifying_key())
}

/// Two mixes per layer and one provider; delays of `mean_ms` on average,
/// sending at `rate` and looping at `loop_rate` packets a second.
pub fn consensus(mean_ms: u64, rate: f64, loop_rate: f64) -> Arc<VerifiedConsensus> {
    let addr = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
    let sphinx = SphinxSecretKey::from_bytes([7; 32]).public_key();
    let mut mixes: Vec<MixEntry> = (0..6u8)
        .map(|i| MixEntry {
            layer: i % 3,
            identity: key(i + 1),
            packet_addr: addr(1000 + u16::from(i)),
            link_key: LinkSecretKey::derive(&[i + 1; 32]).public().clone(),
            sphinx_key: sphinx,
        })
        .collect();
    mixes.sort_by_key(|m| (m.layer, m.identity));
    let doc = Consensus {
        version: murmur_wire::directory::CONSENSUS_VERSION,
        epoch: 10,
        valid_after: 10 * EPOCH,
        valid_until: 11 * EPOCH,
        params: NetworkParams {
            epoch_secs: EPOCH,
            mean_delay_us: mean_ms * 1000,
            max_delay_us: mean_ms * 1000 * 20,
            client_rate: rate,
            client_loop_rate: loop_rate,
            mix_loop_rate: 0.0,
            packet_size: murmur_wire::PACKET_SIZE as u32,
        },
        mixes,
        mailboxes: vec![MailboxEntry {
            identity: key(50),
            packet_addr: addr(2000),
            http_addr: addr(2001),
            link_key: LinkSecretKey::derive(&[50; 32]).public().clone(),
            sphinx_key: sphinx,
        }],
    };
    let authority = SigningKey::from_bytes(&[200; 32]);
    let set = AuthoritySet::new(vec![IdentityKey::from(&authority.verifying_key())], 1)
        .expect("authority set");
    Arc::new(
        SignedConsensus::sign(&doc, &authority)
            .expect("sign")
            .verify(&set, 10 * EPOCH + 1, Some(10))
            .expect("verify"),
    )
}

pub fn qid(n: u8) -> QueueId {
    QueueId::from_bytes([n; 32])
}
