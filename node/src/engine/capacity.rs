//! How many packets a node can process: measured at start, so that the
//! replay filters can be sized for the most tags the node could ever check
//! in a key's lifetime (a flood cannot push more through the workers).

use std::time::{Duration, Instant};

use murmur_wire::{Hop, KeyRing, NodeId, QueueId, Route, SphinxSecretKey, build_forward_packet};

/// Packets a second one worker processes (Sphinx unwrap and finish, as a
/// mix does for a forward hop), timed over `samples` runs on a throwaway
/// key; the fastest run counts, so that a busy machine does not make the
/// node look slower (and its filters smaller) than it is. `None` if the
/// test packet cannot be built (it always can).
pub fn measure_unwrap_rate(samples: usize) -> Option<f64> {
    let mut rng = rand::rng();
    let key = SphinxSecretKey::random(&mut rng);
    let next = SphinxSecretKey::random(&mut rng);
    let route = Route::new(
        vec![
            Hop {
                id: NodeId::from_bytes([1; 32]),
                key: key.public_key(),
            },
            Hop {
                id: NodeId::from_bytes([2; 32]),
                key: next.public_key(),
            },
        ],
        vec![Duration::ZERO, Duration::ZERO],
    )
    .ok()?;
    let packet =
        build_forward_packet(&mut rng, &route, QueueId::from_bytes([3; 32]).into(), b"").ok()?;
    let mut ring = KeyRing::new();
    ring.insert(0, key);
    let mut fastest = Duration::MAX;
    for _ in 0..samples.max(1) {
        let start = Instant::now();
        let done = ring.process(&packet);
        let took = start.elapsed();
        done.ok()?;
        fastest = fastest.min(took);
    }
    Some(1.0 / fastest.as_secs_f64().max(1e-7))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_is_plausible() {
        let rate = measure_unwrap_rate(5).unwrap();
        // Between a very slow debug build and ten times a fast core.
        assert!(rate > 20.0 && rate < 200_000.0, "{rate}");
    }
}
