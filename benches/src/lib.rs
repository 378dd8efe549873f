//! Shared fixtures for Murmur's benchmarks and load runs.
#![forbid(unsafe_code)]

use std::time::Duration;

use murmur_wire::{Hop, NodeId, Route, SphinxSecretKey};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

/// A seeded RNG, so runs are comparable.
pub fn rng() -> ChaCha20Rng {
    ChaCha20Rng::seed_from_u64(0x6d75726d7572)
}

/// Four hops with fresh keys (three mixes and a provider) and their secret keys.
pub fn four_hops(rng: &mut ChaCha20Rng) -> (Vec<SphinxSecretKey>, Route) {
    let keys: Vec<SphinxSecretKey> = (0..4).map(|_| SphinxSecretKey::random(rng)).collect();
    let hops = keys
        .iter()
        .enumerate()
        .map(|(i, k)| Hop {
            id: NodeId::from_bytes([i as u8 + 1; 32]),
            key: k.public_key(),
        })
        .collect();
    let route = Route::new(hops, vec![Duration::from_millis(10); 4])
        .unwrap_or_else(|_| unreachable!("four hops with four delays is a valid route"));
    (keys, route)
}
