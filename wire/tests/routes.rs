//! Path selection over a verified consensus: every route function is
//! `policy::choose_path` applied to the consensus, so they choose uniformly
//! per layer among the eligible mixes, never choose an avoided mix unless
//! its whole layer is avoided, and make the same choices from the same
//! random stream when nothing is avoided.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::collections::HashMap;
use std::time::Duration;

use murmur_wire::directory::CONSENSUS_VERSION;
use murmur_wire::ed25519_dalek::SigningKey;
use murmur_wire::policy::{
    select_loop_mixes, select_mixes, select_mixes_avoiding, select_route, select_route_avoiding,
};
use murmur_wire::{
    AuthoritySet, Consensus, IdentityKey, LinkSecretKey, MailboxEntry, MixEntry, NetworkParams,
    NodeId, PACKET_SIZE, SignedConsensus, SphinxPublicKey, VerifiedConsensus,
};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

fn ident(n: u8) -> IdentityKey {
    IdentityKey::from(&SigningKey::from_bytes(&[n; 32]).verifying_key())
}

/// Layers of 3, 4 and 2 mixes, two providers.
fn consensus() -> VerifiedConsensus {
    let sizes = [3u8, 4, 2];
    let mut mixes = Vec::new();
    let mut n = 1u8;
    for (layer, &size) in sizes.iter().enumerate() {
        for _ in 0..size {
            mixes.push(MixEntry {
                layer: layer as u8,
                identity: ident(n),
                packet_addr: format!("127.0.0.1:{}", 9000 + u16::from(n))
                    .parse()
                    .unwrap(),
                link_key: LinkSecretKey::derive(&[n; 32]).public().clone(),
                sphinx_key: SphinxPublicKey([n; 32]),
            });
            n += 1;
        }
    }
    mixes.sort_by_key(|m| (m.layer, m.identity));
    let mailboxes = (0..2u8)
        .map(|i| MailboxEntry {
            identity: ident(100 + i),
            packet_addr: format!("127.0.0.1:{}", 9500 + u16::from(i))
                .parse()
                .unwrap(),
            http_addr: format!("127.0.0.1:{}", 9600 + u16::from(i))
                .parse()
                .unwrap(),
            link_key: LinkSecretKey::derive(&[100 + i; 32]).public().clone(),
            sphinx_key: SphinxPublicKey([100 + i; 32]),
        })
        .collect();
    let doc = Consensus {
        version: CONSENSUS_VERSION,
        epoch: 5,
        valid_after: 300,
        valid_until: 360,
        params: NetworkParams {
            epoch_secs: 60,
            mean_delay_us: 50_000,
            max_delay_us: 1_000_000,
            client_rate: 1.0,
            client_loop_rate: 1.0,
            mix_loop_rate: 1.0,
            packet_size: PACKET_SIZE as u32,
        },
        mixes,
        mailboxes,
    };
    let authority = SigningKey::from_bytes(&[200; 32]);
    let set = AuthoritySet::new(vec![IdentityKey::from(&authority.verifying_key())], 1).unwrap();
    SignedConsensus::sign(&doc, &authority)
        .unwrap()
        .verify(&set, 301, Some(5))
        .unwrap()
}

/// |count − n/k| within 5 binomial standard deviations.
fn uniform(count: u32, n: u32, k: usize) -> bool {
    let p = 1.0 / k as f64;
    let e = f64::from(n) * p;
    (f64::from(count) - e).abs() < 5.0 * (e * (1.0 - p)).sqrt()
}

#[test]
fn routes_avoid_suspects_and_choose_uniformly_among_the_rest() {
    let c = consensus();
    let layers = c.layers();
    // Layer 0: one of three avoided. Layer 1: none. Layer 2: both (used whole).
    let avoided: Vec<NodeId> = vec![layers[0][1].id, layers[2][0].id, layers[2][1].id];
    let provider = c.mailboxes()[1].id;
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let mut counts: HashMap<NodeId, u32> = HashMap::new();
    let n = 40_000;
    for _ in 0..n {
        let route =
            select_route_avoiding(&mut rng, &c, &provider, |id| avoided.contains(id)).unwrap();
        let hops = route.hops();
        assert_eq!(hops.len(), 4);
        assert_eq!(hops[3].id, provider);
        for (layer, hop) in hops[..3].iter().enumerate() {
            assert_eq!(c.node(&hop.id).and_then(|m| m.layer), Some(layer as u8));
            *counts.entry(hop.id).or_default() += 1;
        }
        assert_eq!(route.delays().len(), 4);
        assert_eq!(route.delays()[3], Duration::ZERO);
    }
    let count = |id: &NodeId| counts.get(id).copied().unwrap_or(0);
    assert_eq!(count(&layers[0][1].id), 0, "an avoided mix is never chosen");
    for id in [layers[0][0].id, layers[0][2].id] {
        assert!(uniform(count(&id), n, 2), "layer 0: {}", count(&id));
    }
    for m in &layers[1] {
        assert!(uniform(count(&m.id), n, 4), "layer 1: {}", count(&m.id));
    }
    for m in &layers[2] {
        // The whole layer is avoided: it is used whole, uniformly.
        assert!(uniform(count(&m.id), n, 2), "layer 2: {}", count(&m.id));
    }
}

#[test]
fn the_route_functions_make_the_same_choices_from_the_same_stream() {
    let c = consensus();
    let provider = c.mailboxes()[0].id;
    let (mut a, mut b, mut d) = (
        ChaCha8Rng::seed_from_u64(9),
        ChaCha8Rng::seed_from_u64(9),
        ChaCha8Rng::seed_from_u64(9),
    );
    for _ in 0..500 {
        let plain = select_route(&mut a, &c, &provider).unwrap();
        let none_avoided = select_route_avoiding(&mut b, &c, &provider, |_| false).unwrap();
        assert_eq!(plain.hops(), none_avoided.hops());
        assert_eq!(plain.delays(), none_avoided.delays());
        // The mixes alone: the same draws as the route's (which then draws
        // its delays from the same stream).
        let mixes = select_mixes(&mut d, &c).unwrap();
        let ids: Vec<NodeId> = mixes.iter().map(|m| m.id).collect();
        let route_ids: Vec<NodeId> = plain.hops()[..3].iter().map(|h| h.id).collect();
        assert_eq!(ids, route_ids);
        let _ = murmur_wire::policy::sample_delays(
            &mut d,
            3,
            Duration::from_micros(50_000),
            Duration::from_micros(1_000_000),
        );
    }
}

#[test]
fn avoiding_every_mix_still_gives_a_path() {
    let c = consensus();
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let all = select_mixes_avoiding(&mut rng, &c, |_| true).unwrap();
    for (layer, m) in all.iter().enumerate() {
        assert_eq!(m.layer, Some(layer as u8));
    }
    let missing = NodeId::from_bytes([0xee; 32]);
    assert!(select_route(&mut rng, &c, &missing).is_err());
}

#[test]
fn a_mix_loop_crosses_the_next_two_layers_uniformly() {
    let c = consensus();
    let layers = c.layers();
    let me = layers[1][2].id;
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let mut counts: HashMap<NodeId, u32> = HashMap::new();
    let n = 20_000;
    for _ in 0..n {
        let [a, b] = select_loop_mixes(&mut rng, &c, &me).unwrap();
        assert_eq!((a.layer, b.layer), (Some(2), Some(0)));
        *counts.entry(a.id).or_default() += 1;
        *counts.entry(b.id).or_default() += 1;
    }
    for m in &layers[2] {
        assert!(uniform(counts[&m.id], n, 2));
    }
    for m in &layers[0] {
        assert!(uniform(counts[&m.id], n, 3));
    }
    // A provider has no loop of its own here.
    assert!(select_loop_mixes(&mut rng, &c, &c.mailboxes()[0].id).is_err());
}
