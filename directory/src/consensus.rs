//! The consensus computation: a pure, deterministic function from a set of
//! votes to a [`Consensus`]. No I/O and no clock: every authority that holds
//! the same votes computes the same bytes.
//!
//! Rules (see `docs/directory.md` §3):
//! - a quorum is a majority of *all* `n` authorities: `n / 2 + 1`;
//! - the parameters are those carried by at least a quorum of the votes
//!   (compared as canonical bytes); otherwise there is no consensus;
//! - a node is listed if a quorum of votes list it with a valid descriptor
//!   that has a Sphinx key for the epoch;
//! - when votes carry different descriptors for one node, the one carried by
//!   the most votes wins, then the newest `published_at`, then the
//!   lexicographically greatest signed bytes;
//! - nodes that claim the same packet address: the one listed by the most
//!   votes stays; a tie drops all of them;
//! - mixes are ordered by `SHA-256("murmur/layer/v1\0" ‖ epoch ‖ node id)`
//!   and dealt round-robin into the layers, so layer sizes differ by at
//!   most one and no party chooses a node's layer.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use murmur_wire::directory::{Consensus, MailboxEntry, MixEntry, NetworkParams, Role, Vote};
use murmur_wire::packet::MIX_LAYERS;
use murmur_wire::{NodeId, SignedDescriptor, VerifiedDescriptor};
use sha2::{Digest, Sha256};

/// Why no consensus could be computed from a set of votes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ComputeError {
    /// Fewer votes than a majority of all authorities.
    #[error("{have} vote(s) held, a majority of {quorum} of the {n} authorities is needed")]
    NotEnoughVotes {
        /// Votes held.
        have: usize,
        /// Votes needed.
        quorum: usize,
        /// Authorities configured.
        n: usize,
    },
    /// No set of network parameters is carried by a majority of votes.
    #[error("no network parameters are shared by {quorum} of the votes")]
    NoParamsMajority {
        /// Votes needed.
        quorum: usize,
    },
    /// The majority's epoch length differs from this authority's.
    #[error("the majority's epoch length {majority} s differs from ours ({ours} s)")]
    EpochLengthMismatch {
        /// The majority's.
        majority: u64,
        /// This authority's.
        ours: u64,
    },
}

/// A majority of `n` authorities.
pub fn quorum(n: usize) -> usize {
    n / 2 + 1
}

/// How long after the end of its epoch a document stays valid: half an
/// epoch, so that packets built just before a boundary still route and a
/// late next document does not strand clients.
pub fn grace_secs(epoch_secs: u64) -> u64 {
    epoch_secs / 2
}

/// The validity window of epoch `epoch`'s document:
/// `[start(epoch), start(epoch + 1) + grace)`.
pub fn validity(epoch: u64, epoch_secs: u64) -> (u64, u64) {
    let start = epoch.saturating_mul(epoch_secs);
    let end = epoch
        .saturating_add(1)
        .saturating_mul(epoch_secs)
        .saturating_add(grace_secs(epoch_secs));
    (start, end)
}

/// The descriptors an authority puts in its vote for `epoch`: those with a
/// Sphinx key for it, in node-id order (so a vote's bytes do not depend on
/// map iteration order).
pub fn vote_descriptors<'a>(
    accepted: impl IntoIterator<Item = &'a VerifiedDescriptor>,
    epoch: u64,
) -> Vec<SignedDescriptor> {
    let mut chosen: Vec<&VerifiedDescriptor> = accepted
        .into_iter()
        .filter(|d| d.descriptor().key_for(epoch).is_some())
        .collect();
    chosen.sort_by_key(|d| d.id());
    chosen.into_iter().map(|d| d.signed().clone()).collect()
}

/// A node's position in the layer deal for `epoch`.
fn layer_rank(epoch: u64, id: &NodeId) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"murmur/layer/v1\0");
    h.update(epoch.to_be_bytes());
    h.update(id.as_bytes());
    h.finalize().into()
}

struct Candidate {
    /// Votes that list this node (with any descriptor).
    listed_by: usize,
    /// Each distinct descriptor body and how many votes carry it.
    versions: BTreeMap<Vec<u8>, (usize, VerifiedDescriptor)>,
}

/// Computes the consensus for `epoch` from `votes` (already verified as
/// signed by distinct pinned authorities for this epoch), for a network of
/// `n` authorities whose epoch length is `epoch_secs`.
///
/// Descriptors inside the votes are verified here; invalid ones, and ones
/// without a key for the epoch, are ignored (a lying authority gains
/// nothing by including them).
pub fn compute(
    epoch: u64,
    votes: &[Vote],
    n: usize,
    epoch_secs: u64,
) -> Result<Consensus, ComputeError> {
    let quorum = quorum(n);
    if votes.len() < quorum {
        return Err(ComputeError::NotEnoughVotes {
            have: votes.len(),
            quorum,
            n,
        });
    }
    let params = majority_params(votes, quorum)?;
    if params.epoch_secs != epoch_secs {
        return Err(ComputeError::EpochLengthMismatch {
            majority: params.epoch_secs,
            ours: epoch_secs,
        });
    }

    // Per node: which votes list it, and with which descriptor bytes.
    let mut nodes: BTreeMap<NodeId, Candidate> = BTreeMap::new();
    for vote in votes {
        // One descriptor per node per vote: the greatest by
        // (published_at, bytes), so a vote listing a node twice counts once.
        let mut mine: BTreeMap<NodeId, VerifiedDescriptor> = BTreeMap::new();
        for signed in &vote.descriptors {
            let Ok(d) = signed.verify() else { continue };
            if d.descriptor().key_for(epoch).is_none() {
                continue;
            }
            let replace = match mine.get(&d.id()) {
                None => true,
                Some(old) => {
                    (d.descriptor().published_at, &d.signed().body)
                        > (old.descriptor().published_at, &old.signed().body)
                }
            };
            if replace {
                mine.insert(d.id(), d);
            }
        }
        for (id, d) in mine {
            let c = nodes.entry(id).or_insert_with(|| Candidate {
                listed_by: 0,
                versions: BTreeMap::new(),
            });
            c.listed_by += 1;
            c.versions
                .entry(d.signed().body.clone())
                .or_insert_with(|| (0, d))
                .0 += 1;
        }
    }

    // Included nodes with their chosen descriptor.
    let mut included: BTreeMap<NodeId, (usize, VerifiedDescriptor)> = BTreeMap::new();
    for (id, c) in nodes {
        if c.listed_by < quorum {
            continue;
        }
        let best = c
            .versions
            .into_iter()
            .max_by(|(ba, (ca, da)), (bb, (cb, db))| {
                (ca, da.descriptor().published_at, ba).cmp(&(cb, db.descriptor().published_at, bb))
            });
        if let Some((_, (_, d))) = best {
            included.insert(id, (c.listed_by, d));
        }
    }

    // Packet address and link key conflicts: each may belong to one node.
    // The claim listed by the most authorities wins; on a tie, none does.
    let mut by_addr: BTreeMap<SocketAddr, Vec<(usize, NodeId)>> = BTreeMap::new();
    let mut by_link_key: BTreeMap<[u8; 32], Vec<(usize, NodeId)>> = BTreeMap::new();
    for (id, (listed, d)) in &included {
        by_addr
            .entry(d.descriptor().packet_addr)
            .or_default()
            .push((*listed, *id));
        by_link_key
            .entry(d.descriptor().link_key.dh)
            .or_default()
            .push((*listed, *id));
    }
    let mut dropped = BTreeSet::new();
    for claims in by_addr.values().chain(by_link_key.values()) {
        if claims.len() < 2 {
            continue;
        }
        let top = claims.iter().map(|(l, _)| *l).max().unwrap_or(0);
        let winners = claims.iter().filter(|(l, _)| *l == top).count();
        for (listed, id) in claims {
            if winners > 1 || *listed < top {
                dropped.insert(*id);
            }
        }
    }
    for id in &dropped {
        included.remove(id);
    }

    let mut mixes: Vec<(NodeId, &VerifiedDescriptor)> = Vec::new();
    let mut mailboxes = Vec::new();
    for (id, (_, d)) in &included {
        let desc = d.descriptor();
        let Some(sphinx_key) = desc.key_for(epoch) else {
            continue;
        };
        match (desc.role, desc.http_addr) {
            (Role::Mix, _) => mixes.push((*id, d)),
            (Role::Mailbox, Some(http_addr)) => mailboxes.push(MailboxEntry {
                identity: desc.identity,
                packet_addr: desc.packet_addr,
                http_addr,
                link_key: desc.link_key.clone(),
                sphinx_key,
            }),
            // A verified mailbox descriptor always has an HTTP address.
            (Role::Mailbox, None) => {}
        }
    }
    mixes.sort_by_key(|(id, _)| layer_rank(epoch, id));
    let mut mix_entries: Vec<MixEntry> = Vec::with_capacity(mixes.len());
    for (i, (_, d)) in mixes.iter().enumerate() {
        let desc = d.descriptor();
        let Some(sphinx_key) = desc.key_for(epoch) else {
            continue;
        };
        // `i % MIX_LAYERS` < 3, so it fits in a u8.
        let layer = u8::try_from(i % MIX_LAYERS).unwrap_or(0);
        mix_entries.push(MixEntry {
            layer,
            identity: desc.identity,
            packet_addr: desc.packet_addr,
            link_key: desc.link_key.clone(),
            sphinx_key,
        });
    }
    mix_entries.sort_by_key(|m| (m.layer, m.identity));
    mailboxes.sort_by_key(|m| m.identity);

    let (valid_after, valid_until) = validity(epoch, epoch_secs);
    Ok(Consensus {
        version: murmur_wire::directory::CONSENSUS_VERSION,
        epoch,
        valid_after,
        valid_until,
        params,
        mixes: mix_entries,
        mailboxes,
    })
}

fn majority_params(votes: &[Vote], quorum: usize) -> Result<NetworkParams, ComputeError> {
    let mut counts: BTreeMap<Vec<u8>, (usize, &NetworkParams)> = BTreeMap::new();
    for v in votes {
        // Parameters that do not encode cannot be agreed on; skip them.
        let Ok(bytes) = postcard::to_stdvec(&v.params) else {
            continue;
        };
        counts.entry(bytes).or_insert((0, &v.params)).0 += 1;
    }
    counts
        .into_values()
        .find(|(c, p)| *c >= quorum && p.check().is_ok())
        .map(|(_, p)| p.clone())
        .ok_or(ComputeError::NoParamsMajority { quorum })
}

#[cfg(test)]
mod tests {
    use super::*;
    use murmur_wire::directory::{Descriptor, EpochKey};
    use murmur_wire::ed25519_dalek::SigningKey;
    use murmur_wire::{IdentityKey, PACKET_SIZE, SphinxPublicKey};

    fn params() -> NetworkParams {
        NetworkParams {
            epoch_secs: 60,
            mean_delay_us: 1000,
            max_delay_us: 10_000,
            client_rate: 1.0,
            client_loop_rate: 1.0,
            mix_loop_rate: 1.0,
            packet_size: PACKET_SIZE as u32,
        }
    }

    fn desc(n: u8, role: Role, port: u16, published_at: u64) -> SignedDescriptor {
        let key = SigningKey::from_bytes(&[n; 32]);
        let d = Descriptor {
            version: murmur_wire::directory::DESCRIPTOR_VERSION,
            identity: IdentityKey::from(&key.verifying_key()),
            role,
            packet_addr: SocketAddr::from(([127, 0, 0, 1], port)),
            http_addr: (role == Role::Mailbox).then(|| SocketAddr::from(([127, 0, 0, 1], 1))),
            link_key: murmur_wire::LinkSecretKey::derive(&key.to_bytes())
                .public()
                .clone(),
            sphinx_keys: vec![EpochKey {
                epoch: 10,
                key: SphinxPublicKey([n; 32]),
            }],
            published_at,
        };
        SignedDescriptor::sign(&d, &key).unwrap()
    }

    fn vote(a: u8, descriptors: Vec<SignedDescriptor>) -> Vote {
        Vote {
            version: 1,
            epoch: 10,
            authority: IdentityKey([a; 32]),
            params: params(),
            descriptors,
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]
        /// Any votes, in any order, give the same bytes; every listed node
        /// has a majority; layers are balanced.
        #[test]
        fn compute_is_order_independent_and_majority_based(
            n in 1usize..6,
            listing in proptest::collection::vec(proptest::collection::vec(proptest::bool::ANY, 12), 6),
            rotate in 0usize..6,
        ) {
            let all: Vec<SignedDescriptor> = (0..12u8)
                .map(|i| desc(i + 1, if i < 9 { Role::Mix } else { Role::Mailbox }, 3000 + u16::from(i), 5))
                .collect();
            let votes: Vec<Vote> = (0..n)
                .map(|a| {
                    let ds = all.iter().zip(&listing[a]).filter(|(_, l)| **l).map(|(d, _)| d.clone()).collect();
                    vote(a as u8 + 1, ds)
                })
                .collect();
            let mut turned = votes.clone();
            turned.rotate_left(rotate % n);
            let a = compute(10, &votes, n, 60);
            let b = compute(10, &turned, n, 60);
            proptest::prop_assert_eq!(&a, &b);
            let doc = a.unwrap();
            let support = |id: &murmur_wire::IdentityKey| {
                (0..n).filter(|v| all.iter().zip(&listing[*v]).any(|(d, l)| *l && d.verify().unwrap().descriptor().identity == *id)).count()
            };
            for m in &doc.mixes {
                proptest::prop_assert!(support(&m.identity) >= quorum(n));
            }
            for m in &doc.mailboxes {
                proptest::prop_assert!(support(&m.identity) >= quorum(n));
            }
            let sizes: Vec<usize> = (0..3u8).map(|l| doc.mixes.iter().filter(|m| m.layer == l).count()).collect();
            proptest::prop_assert!(sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1);
        }
    }

    #[test]
    fn layers_are_balanced_and_deterministic() {
        let ds: Vec<_> = (1..=10)
            .map(|i| desc(i, Role::Mix, 1000 + u16::from(i), 5))
            .collect();
        let mut reversed = ds.clone();
        reversed.reverse();
        let a = compute(10, &[vote(1, ds.clone()), vote(2, ds)], 3, 60).unwrap();
        let b = compute(10, &[vote(2, reversed.clone()), vote(1, reversed)], 3, 60).unwrap();
        assert_eq!(
            postcard::to_stdvec(&a).unwrap(),
            postcard::to_stdvec(&b).unwrap()
        );
        let sizes: Vec<usize> = (0..3u8)
            .map(|l| a.mixes.iter().filter(|m| m.layer == l).count())
            .collect();
        assert_eq!(sizes.iter().sum::<usize>(), 10);
        assert!(
            sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1,
            "{sizes:?}"
        );
        assert!(
            a.mixes
                .windows(2)
                .all(|w| (w[0].layer, w[0].identity) < (w[1].layer, w[1].identity))
        );
        assert_eq!(a.valid_after, 600);
        assert_eq!(a.valid_until, 690);
    }

    #[test]
    fn majority_of_all_authorities_is_required() {
        let x = desc(1, Role::Mix, 1001, 5);
        let y = desc(2, Role::Mailbox, 1002, 5);
        // n = 3: a node listed by one vote of two is left out.
        let c = compute(
            10,
            &[
                vote(1, vec![x.clone(), y.clone()]),
                vote(2, vec![x.clone()]),
            ],
            3,
            60,
        )
        .unwrap();
        assert_eq!(c.mixes.len(), 1);
        assert!(c.mailboxes.is_empty());
        // One vote of three is not a quorum.
        assert!(matches!(
            compute(10, &[vote(1, vec![x.clone()])], 3, 60),
            Err(ComputeError::NotEnoughVotes { .. })
        ));
        // n = 1 works.
        let c = compute(10, &[vote(1, vec![x, y])], 1, 60).unwrap();
        assert_eq!((c.mixes.len(), c.mailboxes.len()), (1, 1));
    }

    #[test]
    fn differing_descriptors_are_chosen_deterministically() {
        let old = desc(1, Role::Mix, 1001, 5);
        let new = desc(1, Role::Mix, 1001, 6);
        let c1 = compute(
            10,
            &[
                vote(1, vec![old.clone()]),
                vote(2, vec![new.clone()]),
                vote(3, vec![new.clone()]),
            ],
            3,
            60,
        )
        .unwrap();
        let c2 = compute(
            10,
            &[
                vote(3, vec![new.clone()]),
                vote(1, vec![old.clone()]),
                vote(2, vec![new]),
            ],
            3,
            60,
        )
        .unwrap();
        assert_eq!(c1, c2);
        assert_eq!(c1.mixes.len(), 1);
    }

    #[test]
    fn params_need_a_majority_and_address_conflicts_resolve() {
        let mut odd = vote(3, vec![]);
        odd.params.mean_delay_us = 2000;
        let a = desc(1, Role::Mix, 1001, 5);
        let b = desc(2, Role::Mix, 1001, 5);
        let c = compute(
            10,
            &[
                vote(1, vec![a.clone(), b.clone()]),
                vote(2, vec![a.clone(), b.clone()]),
                odd.clone(),
            ],
            3,
            60,
        )
        .unwrap();
        assert_eq!(c.params, params());
        // Same address, equal support: both dropped.
        assert!(c.mixes.is_empty());
        // More support wins.
        let c = compute(
            10,
            &[
                vote(1, vec![a.clone(), b.clone()]),
                vote(2, vec![a.clone()]),
                vote(3, vec![a]),
            ],
            3,
            60,
        )
        .unwrap();
        assert_eq!(c.mixes.len(), 1);
        let mut odd2 = vote(2, vec![]);
        odd2.params.client_rate = 5.0;
        assert!(matches!(
            compute(10, &[vote(1, vec![]), odd2, odd], 3, 60),
            Err(ComputeError::NoParamsMajority { .. })
        ));
    }
}
