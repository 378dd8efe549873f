//! A flood of valid packets, each with a fresh replay tag, five times what
//! one replay filter segment is sized for: the filter chain grows instead
//! of saturating, so fresh packets after the flood are all forwarded, none
//! dropped as a replay; the growth shows in the metrics.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use murmur_node::engine::{DropReason, EngineLimits, ReplaySettings, StaticTopology};
use murmur_node::keys::KeyRingHandle;
use murmur_wire::{
    Destination, FinalPayload, Hop, KeyRing, MessageId, NodeId, Packet, QueueId, Route,
    SphinxSecretKey, build_forward_packet,
};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

const WAIT: Duration = Duration::from_secs(60);
/// Tags one segment holds (the smallest the settings allow).
const SEGMENT: u64 = 1000;
const FLOOD: u64 = 5 * SEGMENT;
const FRESH: u64 = 300;

fn packet(rng: &mut ChaCha20Rng, hops: Vec<Hop>, i: u64) -> Packet {
    let route = Route::new(hops, vec![Duration::ZERO, Duration::ZERO]).unwrap();
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&i.to_be_bytes());
    let body = FinalPayload::LoopCover {
        id: MessageId::from_bytes(id),
    }
    .encode();
    build_forward_packet(
        rng,
        &route,
        Destination::from(QueueId::from_bytes([9; 32])),
        &body,
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_flood_five_times_a_filter_does_not_drop_fresh_packets() {
    let mut rng = ChaCha20Rng::seed_from_u64(21);
    let dir = tempfile::tempdir().unwrap();
    let topology = Arc::new(StaticTopology::new());
    let mix_key = SphinxSecretKey::random(&mut rng);
    let mut ring = KeyRing::new();
    ring.insert(EPOCH, mix_key.clone());
    // One segment is 1000 tags; the node is declared able to process 100
    // packets/s, so its chain may grow to cover a whole key lifetime.
    // 1e-9 per segment. (In filters this small `bloomfilter`'s double
    // hashing makes false positives likelier than that — a tag probing one
    // bit k times, about one in 2 × 43 000 per full segment — so a few are
    // allowed below and compared with the hundreds of a saturated filter.)
    let replay = ReplaySettings {
        expected_packet_rate: 0.001,
        false_positive_rate: 1e-9,
        max_packet_rate: 100.0,
        fsync_interval_ms: 50,
        ..ReplaySettings::default()
    };
    let mix = start_node_with_replay(
        1,
        mix_key,
        KeyRingHandle::new(ring),
        &dir.path().join("mix"),
        topology.clone(),
        EngineLimits {
            workers: 2,
            ..limits()
        },
        replay,
    );
    let sink = start_node(
        2,
        SphinxSecretKey::random(&mut rng),
        &dir.path().join("sink"),
        topology.clone(),
        limits(),
    );
    topology.set_current(consensus(
        EPOCH,
        params(Duration::from_secs(10)),
        &[mix.member(Some(0)), sink.member(None)],
    ));
    assert_eq!(
        metric(&mix.registry, "replay_filter_capacity_tags"),
        (100 * (L + 600)) as f64
    );

    // The flood: valid packets whose next hop is nobody. Each is unwrapped
    // and its tag recorded, then dropped (unknown_next_hop). Sent in
    // batches the node keeps up with, so none is lost to overload.
    let nobody = Hop {
        id: NodeId::from_bytes([77; 32]),
        key: SphinxSecretKey::random(&mut rng).public_key(),
    };
    let built = Instant::now();
    let first = mix.hop();
    // Built on two threads (Sphinx packet building is the slow part here).
    let flood: Vec<Packet> = std::thread::scope(|s| {
        let halves: Vec<_> = [0..FLOOD / 2, FLOOD / 2..FLOOD]
            .into_iter()
            .enumerate()
            .map(|(t, range)| {
                s.spawn(move || {
                    let mut rng = ChaCha20Rng::seed_from_u64(100 + t as u64);
                    range
                        .map(|i| packet(&mut rng, vec![first, nobody], i))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        halves.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    let build_time = built.elapsed();
    let started = Instant::now();
    let mut link = connect(&mix).await;
    for (n, chunk) in flood.chunks(250).enumerate() {
        for p in chunk {
            send(&mut link, p).await;
        }
        let want = ((n + 1) * 250) as u64;
        assert!(
            wait_until(WAIT, || mix
                .engine
                .stats()
                .dropped(DropReason::UnknownNextHop)
                + mix.engine.stats().dropped(DropReason::Replay)
                >= want)
            .await
        );
    }
    let flood_time = started.elapsed();
    let stats = mix.engine.stats();
    // Every flood packet was taken as fresh (but for a rare false positive)
    // even as the flood passed the first segment's size many times.
    let flood_fp = stats.dropped(DropReason::Replay);
    assert_eq!(stats.dropped(DropReason::UnknownNextHop) + flood_fp, FLOOD);
    assert!(flood_fp <= 2, "{flood_fp} flood packets taken for replays");

    // Fresh packets after the flood: they arrive.
    let fresh: Vec<Packet> = (0..FRESH)
        .map(|i| packet(&mut rng, vec![mix.hop(), sink.hop()], FLOOD + i))
        .collect();
    for p in &fresh {
        send(&mut link, p).await;
    }
    let replays = || mix.engine.stats().dropped(DropReason::Replay);
    assert!(
        wait_until(WAIT, || sink.recorder.len() as u64 + (replays() - flood_fp)
            == FRESH)
        .await
    );
    let fresh_fp = replays() - flood_fp;
    assert!(fresh_fp <= 1, "{fresh_fp} fresh packets taken for replays");
    // Replays of the flood are still caught.
    let before = replays();
    for p in flood.iter().step_by(50) {
        send(&mut link, p).await;
    }
    assert!(wait_until(WAIT, || replays() == before + FLOOD / 50).await);

    // The chain grew (1000 tags a segment) and says so; it is far from its
    // capacity, so no saturation.
    let recorded = FLOOD + FRESH - flood_fp - fresh_fp;
    assert!(
        wait_until(WAIT, || metric(&mix.registry, "replay_filter_tags")
            >= recorded as f64)
        .await
    );
    let segments = metric(&mix.registry, "replay_filter_segments");
    assert_eq!(segments, (recorded / SEGMENT + 1) as f64);
    assert_eq!(metric(&mix.registry, "replay_saturated_tags_total"), 0.0);
    assert_eq!(metric(&mix.registry, "replay_filter_saturated"), 0.0);
    let bound = metric(&mix.registry, "replay_false_positive_bound");
    assert!(bound < 1e-8, "{bound}");
    println!(
        "| replay flood through a mix: {FLOOD} valid packets (fresh tags, 5 x a 1000-tag segment at 1e-9; \
         built in {build_time:.1?}, processed in {flood_time:.1?}), then {FRESH} fresh packets | {} forwarded, \
         {fresh_fp} dropped as replays ({flood_fp} of the flood's); {} flood replays caught | {segments} \
         segments, false positive bound {bound:.1e}, saturated 0 |",
        FRESH - fresh_fp,
        FLOOD / 50
    );
    mix.stop().await;
    sink.stop().await;
}

/// With its memory capped at one segment, the same flood saturates the
/// filter: that is counted and raised as an alarm.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saturated_replay_filter_is_counted_and_alarmed() {
    let mut rng = ChaCha20Rng::seed_from_u64(22);
    let dir = tempfile::tempdir().unwrap();
    let topology = Arc::new(StaticTopology::new());
    let mix_key = SphinxSecretKey::random(&mut rng);
    let mut ring = KeyRing::new();
    ring.insert(EPOCH, mix_key.clone());
    // 1000 tags per segment, and room for only one: the node says it
    // processes far less than the flood.
    let replay = ReplaySettings {
        expected_packet_rate: 0.001,
        false_positive_rate: 1e-9,
        max_packet_rate: 0.001,
        fsync_interval_ms: 50,
        ..ReplaySettings::default()
    };
    let mix = start_node_with_replay(
        1,
        mix_key,
        KeyRingHandle::new(ring),
        &dir.path().join("mix"),
        topology.clone(),
        limits(),
        replay,
    );
    topology.set_current(consensus(
        EPOCH,
        params(Duration::from_secs(10)),
        &[mix.member(Some(0))],
    ));
    let nobody = Hop {
        id: NodeId::from_bytes([77; 32]),
        key: SphinxSecretKey::random(&mut rng).public_key(),
    };
    let mut link = connect(&mix).await;
    let n = SEGMENT + 500;
    for chunk in (0..n).collect::<Vec<_>>().chunks(250) {
        for i in chunk {
            send(&mut link, &packet(&mut rng, vec![mix.hop(), nobody], *i)).await;
        }
        let want = chunk.last().copied().unwrap_or(0) + 1;
        assert!(
            wait_until(WAIT, || mix
                .engine
                .stats()
                .dropped(DropReason::UnknownNextHop)
                + mix.engine.stats().dropped(DropReason::Replay)
                >= want)
            .await
        );
    }
    assert!(
        wait_until(WAIT, || metric(&mix.registry, "replay_filter_saturated")
            == 1.0)
        .await
    );
    let saturated = metric(&mix.registry, "replay_saturated_tags_total");
    assert!(saturated >= 450.0, "{saturated}");
    assert_eq!(metric(&mix.registry, "replay_filter_segments"), 1.0);
    mix.stop().await;
}
