//! Key rotation through the engine: a packet built for the previous
//! epoch's key is processed during the grace period and refused after it;
//! past keys are erased from disk, and so is their replay cache.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use murmur_node::engine::{DropReason, StaticTopology};
use murmur_node::keys::{KeyManager, KeySettings};
use murmur_wire::{
    Destination, FinalPayload, Hop, MessageId, QueueId, Route, SphinxSecretKey,
    build_forward_packet,
};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

const WAIT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn previous_keys_work_during_the_grace_period_only_and_are_erased() {
    let mut rng = ChaCha20Rng::seed_from_u64(9);
    let dir = tempfile::tempdir().unwrap();
    let keys_dir = dir.path().join("mix/keys");
    let settings = KeySettings {
        grace_secs: 600,
        ahead_epochs: 2,
    };
    let e = EPOCH;
    let km = KeyManager::open(&keys_dir, L, settings, e * L + 100).unwrap();
    let topology = Arc::new(StaticTopology::new());
    let mix_key_e = km.public_keys(e * L + 100)[0];
    assert_eq!(mix_key_e.epoch, e);
    let key_e1 = km.public_keys(e * L + 100)[1];
    assert_eq!(key_e1.epoch, e + 1);

    let mix = start_node_with_ring(
        1,
        // Unused: the ring comes from the key manager.
        SphinxSecretKey::random(&mut rng),
        km.ring(),
        &dir.path().join("mix"),
        topology.clone(),
        limits(),
    );
    let sink = start_node(
        2,
        SphinxSecretKey::random(&mut rng),
        &dir.path().join("sink"),
        topology.clone(),
        limits(),
    );
    let member = |key| Member {
        key,
        ..mix.member(Some(0))
    };
    topology.set_current(consensus(
        e,
        params(Duration::from_secs(10)),
        &[member(mix_key_e.key), sink.member(None)],
    ));

    let mut build = |key, n: u8| {
        let route = Route::new(
            vec![Hop { id: mix.id, key }, sink.hop()],
            vec![Duration::ZERO; 2],
        )
        .unwrap();
        let body = FinalPayload::LoopCover {
            id: MessageId::from_bytes([n; 16]),
        }
        .encode();
        build_forward_packet(
            &mut rng,
            &route,
            Destination::from(QueueId::from_bytes([1; 32])),
            &body,
        )
        .unwrap()
    };
    let p1 = build(mix_key_e.key, 1);
    let p2 = build(mix_key_e.key, 2);
    let p3 = build(mix_key_e.key, 3);
    let q = build(key_e1.key, 4);

    let mut link = connect(&mix).await;
    send(&mut link, &p1).await;
    assert!(wait_until(WAIT, || sink.recorder.len() == 1).await);
    // The replay cache now has a file for epoch e.
    let replay_dir = dir.path().join("mix/replay");
    let files_for = |epoch: u64| {
        std::fs::read_dir(&replay_dir)
            .unwrap()
            .filter(|f| {
                f.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with(&format!("epoch-{epoch}."))
            })
            .count()
    };
    assert!(files_for(e) > 0);

    // Rotate into epoch e+1, within the grace period.
    let r = km.rotate((e + 1) * L + 10).unwrap();
    assert_eq!(r.ring_epochs, vec![e + 1, e]);
    topology.set_current(consensus(
        e + 1,
        params(Duration::from_secs(10)),
        &[member(key_e1.key), sink.member(None)],
    ));
    send(&mut link, &p2).await;
    send(&mut link, &q).await;
    assert!(wait_until(WAIT, || sink.recorder.len() == 3).await);

    // After the grace period the old key is gone: refused.
    let r = km.rotate((e + 1) * L + 601).unwrap();
    assert_eq!(r.erased, vec![e]);
    assert!(!keys_dir.join(format!("sphinx-{e}.key")).exists());
    assert_eq!(km.stored_epochs().unwrap(), vec![e + 1, e + 2, e + 3]);
    send(&mut link, &p3).await;
    assert!(
        wait_until(WAIT, || mix.engine.stats().dropped(DropReason::Malformed)
            == 1)
        .await
    );
    assert_eq!(sink.recorder.len(), 3);
    // The replay cache of the erased key's epoch goes too.
    assert!(wait_until(WAIT, || files_for(e) == 0).await);
    assert!(files_for(e + 1) > 0);

    mix.stop().await;
    sink.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rotation_task_follows_the_clock() {
    use murmur_net::clock::{Clock, OffsetClock};
    use murmur_node::keys::spawn_rotation;
    use tokio_util::sync::CancellationToken;
    use tokio_util::task::TaskTracker;

    let dir = tempfile::tempdir().unwrap();
    let clock = OffsetClock::new();
    // Put the clock 10 s before an epoch boundary.
    let now_ms = clock.now().as_millis() as i64;
    let l_ms = L as i64 * 1000;
    clock.set_offset_ms(l_ms - 10_000 - now_ms % l_ms);
    let e = clock.now_secs() / L;
    let settings = KeySettings {
        grace_secs: 600,
        ahead_epochs: 1,
    };
    let km = Arc::new(KeyManager::open(dir.path(), L, settings, clock.now_secs()).unwrap());
    assert_eq!(km.ring().load().epochs(), vec![e]);
    let stop = CancellationToken::new();
    let tracker = TaskTracker::new();
    spawn_rotation(
        km.clone(),
        Arc::new(clock.clone()),
        Duration::from_millis(20),
        stop.clone(),
        &tracker,
    );
    clock.advance(Duration::from_secs(11));
    assert!(
        wait_until(WAIT, || km.ring().load().epochs() == vec![e + 1, e]).await,
        "ring {:?}, stored {:?}, e {e}, now {}",
        km.ring().load().epochs(),
        km.stored_epochs().unwrap(),
        clock.now_secs()
    );
    assert_eq!(km.stored_epochs().unwrap(), vec![e, e + 1, e + 2]);
    clock.advance(Duration::from_secs(600));
    assert!(wait_until(WAIT, || km.ring().load().epochs() == vec![e + 1]).await);
    assert!(wait_until(WAIT, || km.stored_epochs().unwrap() == vec![e + 1, e + 2]).await);
    stop.cancel();
    tracker.close();
    tracker.wait().await;
}
