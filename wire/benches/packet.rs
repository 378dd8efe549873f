//! Criterion benches for the packet hot paths: building a 4-hop packet and
//! processing one hop. `murmur-benches` compares these with the daemons.
#![allow(missing_docs, clippy::expect_used, clippy::panic, clippy::unreachable)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use murmur_wire::{
    Destination, Hop, KeyRing, NodeId, Processed, QueueId, Route, SphinxSecretKey,
    build_forward_packet,
};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

fn setup() -> (ChaCha20Rng, Vec<SphinxSecretKey>, Route) {
    let mut rng = ChaCha20Rng::seed_from_u64(42);
    let keys: Vec<SphinxSecretKey> = (0..4).map(|_| SphinxSecretKey::random(&mut rng)).collect();
    let hops = keys
        .iter()
        .enumerate()
        .map(|(i, k)| Hop {
            id: NodeId::from_bytes([i as u8 + 1; 32]),
            key: k.public_key(),
        })
        .collect();
    let route = Route::new(hops, vec![Duration::from_millis(10); 4]).expect("route");
    (rng, keys, route)
}

fn packet_build(c: &mut Criterion) {
    let (mut rng, _keys, route) = setup();
    let dest = Destination::from(QueueId::from_bytes([9; 32]));
    let payload = vec![7u8; 2462];
    c.bench_function("packet_build_4_hops", |b| {
        b.iter(|| build_forward_packet(&mut rng, &route, dest, black_box(&payload)).expect("build"))
    });
}

fn hop_processing(c: &mut Criterion) {
    let (mut rng, keys, route) = setup();
    let dest = Destination::from(QueueId::from_bytes([9; 32]));
    let packet = build_forward_packet(&mut rng, &route, dest, &[7u8; 2462]).expect("build");
    let mut ring = KeyRing::new();
    ring.insert(1, keys[0].clone());
    c.bench_function("process_one_hop", |b| {
        b.iter(
            || match ring.process(black_box(&packet)).expect("process") {
                (_, Processed::Forward { .. }) => {}
                _ => unreachable!("first hop forwards"),
            },
        )
    });
}

criterion_group!(benches, packet_build, hop_processing);
criterion_main!(benches);
