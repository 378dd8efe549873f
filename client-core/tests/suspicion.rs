//! Suspicion of mixes (`murmur_wire::policy::Suspicion`), which the client
//! core uses to route around mixes that lose packets.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use murmur_wire::NodeId;
use murmur_wire::policy::{SUSPECT_AFTER, Suspicion, retry_timeout};

fn pair(layer: usize) -> (NodeId, NodeId) {
    let c = common::consensus(50, 0.0, 0.0);
    (c.layers()[layer][0].id, c.layers()[layer][1].id)
}

#[test]
fn suspects_need_repeated_timeouts() {
    let c = common::consensus(50, 0.0, 0.0);
    let (a, b) = pair(0);
    let mut s = Suspicion::default();
    s.timed_out(&[a], Duration::ZERO);
    assert!(s.avoided(&c, Duration::ZERO).is_empty());
    for _ in 0..SUSPECT_AFTER {
        s.timed_out(&[b], Duration::ZERO);
    }
    assert_eq!(s.avoided(&c, Duration::ZERO), HashSet::from([b]));
    // Carrying a packet clears the blame.
    s.carried(&[b], Duration::from_secs(1));
    assert!(s.avoided(&c, Duration::ZERO).is_empty());
}

#[test]
fn a_layer_is_never_avoided_whole() {
    let c = common::consensus(50, 0.0, 0.0);
    let (a, b) = pair(1);
    let mut s = Suspicion::default();
    for _ in 0..SUSPECT_AFTER + 3 {
        s.timed_out(&[a], Duration::ZERO);
    }
    for _ in 0..SUSPECT_AFTER {
        s.timed_out(&[b], Duration::ZERO);
    }
    assert_eq!(
        s.avoided(&c, Duration::ZERO),
        HashSet::from([a]),
        "the least blamed stays"
    );
    for _ in 0..3 {
        s.timed_out(&[b], Duration::ZERO);
    }
    assert!(
        s.avoided(&c, Duration::ZERO).is_empty(),
        "equal blame: the layer is used whole"
    );
}

#[test]
fn a_timeout_does_not_blame_a_mix_that_carried_a_later_packet() {
    let c = common::consensus(50, 0.0, 0.0);
    let (dead, alive) = pair(1);
    let t0 = Duration::from_secs(10);
    // Two tries sent at t0 cross both mixes; a try through the live mix
    // sent later was acknowledged.
    let mut s = Suspicion::default();
    s.carried(&[alive], t0 + Duration::from_millis(5));
    for _ in 0..2 {
        s.timed_out(&[dead, alive], t0);
    }
    assert_eq!(s.avoided(&c, Duration::ZERO), HashSet::from([dead]));
    assert_eq!(s.blame_of(&alive), 0);
    // Without that proof both are blamed, and neither is avoided alone.
    let mut s = Suspicion::default();
    for _ in 0..2 {
        s.timed_out(&[dead, alive], t0);
    }
    assert!(s.avoided(&c, Duration::ZERO).is_empty());
}

#[test]
fn timeouts_back_off_to_four_times_the_base() {
    let base = Duration::from_secs(2);
    let t: Vec<Duration> = (1..=5).map(|k| retry_timeout(base, k)).collect();
    assert_eq!(t, [2, 4, 8, 8, 8].map(Duration::from_secs).to_vec());
}

#[test]
fn a_suspect_is_given_another_chance_after_probation_and_loses_it_at_once() {
    use murmur_wire::policy::PROBATION;
    let c = common::consensus(50, 0.0, 0.0);
    let (a, _) = pair(2);
    let t0 = Duration::from_secs(100);
    let mut s = Suspicion::default();
    for _ in 0..SUSPECT_AFTER {
        s.timed_out(&[a], t0);
    }
    assert!(
        s.avoided(&c, t0 + PROBATION - Duration::from_secs(1))
            .contains(&a)
    );
    let later = t0 + PROBATION;
    assert!(s.avoided(&c, later).is_empty(), "on probation: used again");
    assert_eq!(s.blame_of(&a), SUSPECT_AFTER, "its blame is kept");
    // One more loss through it while on probation: avoided again, for
    // twice as long.
    s.timed_out(&[a], later);
    assert!(s.avoided(&c, later + Duration::from_secs(1)).contains(&a));
    assert!(
        s.avoided(&c, later + 2 * PROBATION - Duration::from_secs(1))
            .contains(&a)
    );
    assert!(s.avoided(&c, later + 2 * PROBATION).is_empty());
    // Carrying a packet ends it all.
    s.carried(&[a], later + 2 * PROBATION);
    assert_eq!(s.blame_of(&a), 0);
}
