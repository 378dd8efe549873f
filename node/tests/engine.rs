//! The packet engine through its public interface: real TCP on loopback,
//! real Sphinx, real storage in temp dirs.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use futures::SinkExt;
use murmur_node::engine::{ClientPolicy, CloseReason, DropReason, StaticTopology, Topology};
use murmur_wire::frame::FRAME_SIZE;
use murmur_wire::{
    Destination, FinalPayload, Hop, MessageId, NodeId, Packet, PacketCodec, QueueId, Route,
    SphinxPublicKey, SphinxSecretKey, build_forward_packet,
};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use tokio::io::AsyncWriteExt;

const WAIT: Duration = Duration::from_secs(20);

fn packet(rng: &mut ChaCha20Rng, hops: Vec<Hop>, delays_ms: &[u64], body: &[u8]) -> Packet {
    let delays = delays_ms
        .iter()
        .map(|&d| Duration::from_millis(d))
        .collect();
    let route = Route::new(hops, delays).unwrap();
    build_forward_packet(
        rng,
        &route,
        Destination::from(QueueId::from_bytes([9; 32])),
        body,
    )
    .unwrap()
}

fn loop_body(i: u8) -> Vec<u8> {
    FinalPayload::LoopCover {
        id: MessageId::from_bytes([i; 16]),
    }
    .encode()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_mixes_and_a_final_hop_carry_packets_end_to_end() {
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let dir = tempfile::tempdir().unwrap();
    let topology = Arc::new(StaticTopology::new());
    let nodes: Vec<TestNode> = (0..4u8)
        .map(|i| {
            start_node(
                i + 1,
                SphinxSecretKey::random(&mut rng),
                &dir.path().join(format!("n{i}")),
                topology.clone(),
                limits(),
            )
        })
        .collect();
    let members: Vec<Member> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| n.member((i < 3).then_some(i as u8)))
        .collect();
    topology.set_current(consensus(EPOCH, params(Duration::from_secs(10)), &members));

    let hops: Vec<Hop> = nodes.iter().map(TestNode::hop).collect();
    let mut link = connect(&nodes[0]).await;
    let n = 20u8;
    for i in 0..n {
        let p = packet(&mut rng, hops.clone(), &[3, 2, 1, 0], &loop_body(i));
        send(&mut link, &p).await;
    }
    let receiver = &nodes[3];
    assert!(
        wait_until(WAIT, || receiver.recorder.len() == n as usize).await,
        "delivered {} of {n}",
        receiver.recorder.len()
    );
    let mut got = receiver.recorder.payloads();
    got.sort();
    let mut want: Vec<Vec<u8>> = (0..n).map(loop_body).collect();
    want.sort();
    assert_eq!(got, want);
    for (dest, _, _) in receiver.recorder.got.lock().unwrap().iter() {
        assert_eq!(*dest, Destination::from(QueueId::from_bytes([9; 32])));
    }
    for node in &nodes[..3] {
        let s = node.engine.stats();
        assert_eq!(s.received, n as u64);
        assert_eq!(s.forwarded, n as u64);
        assert_eq!(s.dropped.values().sum::<u64>(), 0, "{s:?}");
    }
    assert_eq!(receiver.engine.stats().delivered, n as u64);
    for node in &nodes {
        node.stop().await;
    }
}

/// The delay a packet spends in a node follows its header, on a paused
/// clock: it is not forwarded a millisecond early, and is forwarded on time.
#[tokio::test(start_paused = true)]
async fn packets_are_held_for_the_delay_in_their_header() {
    // While a blocking task runs, tokio does not auto-advance the paused
    // clock: time moves only when this test advances it.
    let (gate, gate_rx) = std::sync::mpsc::channel::<()>();
    let hold = tokio::task::spawn_blocking(move || {
        let _ = gate_rx.recv();
    });

    let mut rng = ChaCha20Rng::seed_from_u64(2);
    let dir = tempfile::tempdir().unwrap();
    let topology = Arc::new(StaticTopology::new());
    let mix = start_node(
        1,
        SphinxSecretKey::random(&mut rng),
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
    topology.set_current(consensus(
        EPOCH,
        params(Duration::from_secs(60)),
        &[mix.member(Some(0)), sink.member(None)],
    ));
    let hops = vec![mix.hop(), sink.hop()];
    let mut link = connect(&mix).await;

    let delay = Duration::from_millis(3_500);
    let start = tokio::time::Instant::now();
    send(
        &mut link,
        &packet(&mut rng, hops.clone(), &[3_500, 0], &loop_body(1)),
    )
    .await;
    assert!(wait_until(WAIT, || mix.engine.stats().delay_queue == 1).await);

    tokio::time::advance(delay - Duration::from_millis(1)).await;
    settle(Duration::from_millis(200)).await;
    assert_eq!(sink.recorder.len(), 0, "forwarded early");
    assert_eq!(mix.engine.stats().forwarded, 0);

    tokio::time::advance(Duration::from_millis(2)).await;
    assert!(wait_until(WAIT, || sink.recorder.len() == 1).await);
    let arrived = sink.recorder.got.lock().unwrap()[0].2;
    let held = arrived - start;
    assert!(
        held >= delay && held <= delay + Duration::from_millis(1),
        "held {held:?}"
    );

    // A zero delay goes straight through, with no time passing at all.
    let now = tokio::time::Instant::now();
    send(
        &mut link,
        &packet(&mut rng, hops.clone(), &[0, 0], &loop_body(2)),
    )
    .await;
    assert!(wait_until(WAIT, || sink.recorder.len() == 2).await);
    assert_eq!(sink.recorder.got.lock().unwrap()[1].2, now);

    // Longer than the consensus allows: dropped, never held.
    send(
        &mut link,
        &packet(&mut rng, hops.clone(), &[60_001, 0], &loop_body(3)),
    )
    .await;
    assert!(
        wait_until(WAIT, || mix
            .engine
            .stats()
            .dropped(DropReason::DelayTooLong)
            == 1)
        .await
    );
    assert_eq!(mix.engine.stats().delay_queue, 0);

    drop(gate);
    hold.await.unwrap();
    mix.stop().await;
    sink.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replays_are_dropped_also_after_a_restart() {
    let mut rng = ChaCha20Rng::seed_from_u64(3);
    let dir = tempfile::tempdir().unwrap();
    let topology = Arc::new(StaticTopology::new());
    let mix_key = SphinxSecretKey::random(&mut rng);
    let mix_dir = dir.path().join("mix");
    let mix = start_node(1, mix_key.clone(), &mix_dir, topology.clone(), limits());
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
    let p = packet(
        &mut rng,
        vec![mix.hop(), sink.hop()],
        &[0, 0],
        &loop_body(1),
    );
    let mut link = connect(&mix).await;
    send(&mut link, &p).await;
    assert!(wait_until(WAIT, || sink.recorder.len() == 1).await);
    send(&mut link, &p).await;
    assert!(wait_until(WAIT, || mix.engine.stats().dropped(DropReason::Replay) == 1).await);
    assert_eq!(mix.engine.stats().forwarded, 1);

    // Restart the mix on the same data directory and key, same epoch.
    mix.stop().await;
    drop(link);
    let mix = start_node(1, mix_key, &mix_dir, topology.clone(), limits());
    let mut link = connect(&mix).await;
    send(&mut link, &p).await;
    assert!(wait_until(WAIT, || mix.engine.stats().dropped(DropReason::Replay) == 1).await);
    assert_eq!(mix.engine.stats().forwarded, 0);
    // A fresh packet still goes through.
    let q = packet(
        &mut rng,
        vec![mix.hop(), sink.hop()],
        &[0, 0],
        &loop_body(2),
    );
    send(&mut link, &q).await;
    assert!(wait_until(WAIT, || sink.recorder.len() == 2).await);
    mix.stop().await;
    sink.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_close_only_their_connection_and_are_counted() {
    let mut rng = ChaCha20Rng::seed_from_u64(4);
    let dir = tempfile::tempdir().unwrap();
    let topology = Arc::new(StaticTopology::new());
    let mix = start_node(
        1,
        SphinxSecretKey::random(&mut rng),
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
    topology.set_current(consensus(
        EPOCH,
        params(Duration::from_secs(10)),
        &[mix.member(Some(0)), sink.member(None)],
    ));
    let hops = vec![mix.hop(), sink.hop()];
    let addr = mix.engine.local_addr;

    // A good connection that stays open throughout.
    let mut good = connect(&mix).await;
    send(
        &mut good,
        &packet(&mut rng, hops.clone(), &[0, 0], &loop_body(1)),
    )
    .await;
    assert!(wait_until(WAIT, || sink.recorder.len() == 1).await);

    // Not a link at all: an HTTP request instead of a handshake.
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    // Inside a link: garbage instead of a frame header.
    let mut g = connect(&mix).await;
    g.get_mut()
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    g.get_mut().flush().await.unwrap();
    // Inside a link: a frame announcing a huge length.
    let mut header = PacketCodec::header();
    header[4..8].copy_from_slice(&u32::MAX.to_be_bytes());
    let mut w = connect(&mix).await;
    w.get_mut().write_all(&header).await.unwrap();
    w.get_mut().flush().await.unwrap();
    // Inside a link: a frame cut short by the peer.
    let mut t = connect(&mix).await;
    let mut frame = PacketCodec::header().to_vec();
    frame.extend_from_slice(&[0u8; 100]);
    t.get_mut().write_all(&frame).await.unwrap();
    t.get_mut().shutdown().await.unwrap();
    // Under a link: a record that does not verify (bytes written to the
    // socket past the link's encryption, as an attacker on the path would).
    let mut r = connect(&mix).await;
    let mut forged = 40u16.to_be_bytes().to_vec();
    forged.extend_from_slice(&[0x42; 40]);
    r.get_mut().get_mut().write_all(&forged).await.unwrap();
    // Inside a link: a well-formed frame of random bytes is a malformed
    // packet, but the connection stays.
    let mut noise = PacketCodec::header().to_vec();
    noise.extend((0..murmur_wire::PACKET_SIZE).map(|i| (i * 7 + 3) as u8));
    assert_eq!(noise.len(), FRAME_SIZE);
    let mut m = connect(&mix).await;
    m.get_mut().write_all(&noise).await.unwrap();
    m.get_mut().flush().await.unwrap();

    let stats = || mix.engine.stats();
    assert!(
        wait_until(WAIT, || {
            let s = stats();
            s.closed(CloseReason::Handshake) == 1
                && s.closed(CloseReason::Garbage) == 1
                && s.closed(CloseReason::WrongSize) == 1
                && s.closed(CloseReason::Truncated) == 1
                && s.closed(CloseReason::BadRecord) == 1
                && s.dropped(DropReason::Malformed) == 1
        })
        .await,
        "{:?}",
        stats()
    );
    assert_eq!(stats().handshake_failures, 1);

    // The good connection still works, and so does the noisy one.
    send(
        &mut good,
        &packet(&mut rng, hops.clone(), &[0, 0], &loop_body(2)),
    )
    .await;
    let p = packet(&mut rng, hops.clone(), &[0, 0], &loop_body(3));
    send(&mut m, &p).await;
    assert!(wait_until(WAIT, || sink.recorder.len() == 3).await);

    // A next hop that is not in the consensus.
    let stranger = Hop {
        id: NodeId::from_bytes([77; 32]),
        key: SphinxPublicKey([5; 32]),
    };
    send(
        &mut good,
        &packet(&mut rng, vec![mix.hop(), stranger], &[0, 0], &loop_body(4)),
    )
    .await;
    assert!(wait_until(WAIT, || stats().dropped(DropReason::UnknownNextHop) == 1).await);
    mix.stop().await;
    sink.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_owner_sends_its_own_packets_through_outbound() {
    let mut rng = ChaCha20Rng::seed_from_u64(5);
    let dir = tempfile::tempdir().unwrap();
    let topology = Arc::new(StaticTopology::new());
    let a = start_node(
        1,
        SphinxSecretKey::random(&mut rng),
        &dir.path().join("a"),
        topology.clone(),
        limits(),
    );
    let b = start_node(
        2,
        SphinxSecretKey::random(&mut rng),
        &dir.path().join("b"),
        topology.clone(),
        limits(),
    );
    let out = a.engine.outbound();
    let p = packet(&mut rng, vec![b.hop()], &[0], &loop_body(1));
    // No consensus yet: the next hop cannot be resolved.
    assert!(!out.send(b.id, p.clone()));
    topology.set_current(consensus(
        EPOCH,
        params(Duration::from_secs(10)),
        &[a.member(Some(0)), b.member(None)],
    ));
    assert!(out.send(b.id, p));
    assert!(wait_until(WAIT, || b.recorder.len() == 1).await);
    // The link between the two nodes authenticated both ends: b knows a
    // as a node of the consensus.
    assert_eq!(b.engine.stats().peers_node, 1);
    assert_eq!(b.engine.stats().peers_client, 0);
    assert!(!out.send(
        NodeId::from_bytes([1; 32]),
        packet(&mut rng, vec![b.hop()], &[0], &loop_body(2))
    ));
    let s = a.engine.stats();
    assert_eq!(s.sent_own, 1);
    assert_eq!(s.dropped(DropReason::UnknownNextHop), 2);

    // A next hop listed only in the previous epoch's consensus is still
    // reachable.
    topology.set_current(consensus(
        EPOCH + 1,
        params(Duration::from_secs(10)),
        &[a.member(Some(0))],
    ));
    assert!(topology.for_epoch(EPOCH).is_some());
    assert!(out.send(b.id, packet(&mut rng, vec![b.hop()], &[0], &loop_body(3))));
    assert!(wait_until(WAIT, || b.recorder.len() == 2).await);
    a.stop().await;
    b.stop().await;
}

/// Clients enter the network only at the first layer: a mix of another
/// layer (or not listed) closes an unidentified initiator's link after the
/// handshake, and takes it again once the consensus puts it in layer 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_entry_mixes_take_links_from_clients() {
    let mut rng = ChaCha20Rng::seed_from_u64(8);
    let dir = tempfile::tempdir().unwrap();
    let topology = Arc::new(StaticTopology::new());
    let key = SphinxSecretKey::random(&mut rng);
    let mut ring = murmur_wire::KeyRing::new();
    ring.insert(EPOCH, key.clone());
    let mix = start_node_with_policy(
        1,
        key,
        murmur_node::keys::KeyRingHandle::new(ring),
        &dir.path().join("mix"),
        topology.clone(),
        limits(),
        replay_settings(),
        ClientPolicy::EntryLayer,
    );
    let sink = start_node(
        2,
        SphinxSecretKey::random(&mut rng),
        &dir.path().join("sink"),
        topology.clone(),
        limits(),
    );
    let refused = |n| {
        let mix = &mix;
        move || mix.engine.stats().closed(CloseReason::ClientRefused) == n
    };
    // Not listed yet.
    let _a = connect(&mix).await;
    assert!(wait_until(WAIT, refused(1)).await);
    // A middle-layer mix.
    topology.set_current(consensus(
        EPOCH,
        params(Duration::from_secs(10)),
        &[mix.member(Some(1)), sink.member(None)],
    ));
    let mut b = connect(&mix).await;
    assert!(wait_until(WAIT, refused(2)).await);
    // What the client sent is not processed.
    let hops = vec![mix.hop(), sink.hop()];
    let _ = b
        .send(packet(&mut rng, hops.clone(), &[0, 0], &loop_body(1)))
        .await;
    // An entry mix.
    topology.set_current(consensus(
        EPOCH,
        params(Duration::from_secs(10)),
        &[mix.member(Some(0)), sink.member(None)],
    ));
    let mut c = connect(&mix).await;
    send(
        &mut c,
        &packet(&mut rng, hops.clone(), &[0, 0], &loop_body(2)),
    )
    .await;
    assert!(wait_until(WAIT, || sink.recorder.len() == 1).await);
    let s = mix.engine.stats();
    assert_eq!(s.closed(CloseReason::ClientRefused), 2);
    assert_eq!(s.peers_client, 1);
    assert_eq!(s.received, 1);
    mix.stop().await;
    sink.stop().await;
}

#[tokio::test(start_paused = true)]
async fn idle_peers_are_closed_after_the_read_timeout() {
    let mut rng = ChaCha20Rng::seed_from_u64(6);
    let dir = tempfile::tempdir().unwrap();
    let topology = Arc::new(StaticTopology::new());
    let mut lim = limits();
    lim.read_timeout_secs = 5;
    lim.handshake_timeout_ms = 3_000;
    let mix = start_node(
        1,
        SphinxSecretKey::random(&mut rng),
        &dir.path().join("mix"),
        topology,
        lim,
    );
    let start = tokio::time::Instant::now();
    // A peer that never starts the handshake: closed at the handshake
    // timeout.
    let _silent = tokio::net::TcpStream::connect(mix.engine.local_addr)
        .await
        .unwrap();
    // A peer that completes the handshake and then sends nothing: closed
    // at the read timeout.
    let _idle = connect(&mix).await;
    // Let the paused clock run (auto-advance) until both are closed.
    for _ in 0..600 {
        let s = mix.engine.stats();
        if s.closed(CloseReason::Timeout) == 1 && s.closed(CloseReason::Handshake) == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let s = mix.engine.stats();
    assert_eq!(s.closed(CloseReason::Timeout), 1, "{s:?}");
    assert_eq!(s.closed(CloseReason::Handshake), 1, "{s:?}");
    assert!(start.elapsed() >= Duration::from_secs(5));
    assert_eq!(s.connections, 0);
    mix.stop().await;
}
