//! The packet path through murmur-wire's public interface: a 4-hop route
//! processed hop by hop with real keys, SURB round trips, tamper detection
//! and replay tags.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::time::Duration;

use bytes::Bytes;
use murmur_wire::packet::{PACKET_SIZE, ROUTE_LEN, SPHINX_PAYLOAD_SIZE};
use murmur_wire::{
    Ack, DEPOSIT_BODY_SIZE, Delivery, Deposit, Destination, Error, FinalPayload, Hop, KeyRing,
    MessageId, NodeId, Packet, Processed, QueueId, Route, SphinxSecretKey, SurbId,
    build_forward_packet, build_surb,
};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

struct Net {
    ids: Vec<NodeId>,
    rings: Vec<KeyRing>,
}

fn net(rng: &mut ChaCha20Rng, n: usize) -> Net {
    let mut ids = Vec::new();
    let mut rings = Vec::new();
    for i in 0..n {
        let mut ring = KeyRing::new();
        ring.insert(7, SphinxSecretKey::random(rng));
        ids.push(NodeId::from_bytes([i as u8 + 1; 32]));
        rings.push(ring);
    }
    Net { ids, rings }
}

fn route(net: &Net, order: &[usize], delays: &[u64]) -> Route {
    let hops = order
        .iter()
        .map(|&i| Hop {
            id: net.ids[i],
            key: net.rings[i].get(7).unwrap().public_key(),
        })
        .collect();
    Route::new(
        hops,
        delays.iter().map(|&d| Duration::from_millis(d)).collect(),
    )
    .unwrap()
}

/// Processes `packet` starting at node `first`, following next hops, and
/// returns the delays seen and the final delivery.
fn walk(
    net: &Net,
    first: usize,
    mut packet: Packet,
) -> (Vec<Duration>, usize, Destination, Delivery) {
    let mut at = first;
    let mut delays = Vec::new();
    for _ in 0..10 {
        let (_, processed) = net.rings[at].process(&packet).unwrap();
        match processed {
            Processed::Forward {
                next_hop,
                delay,
                packet: next,
            } => {
                assert_eq!(next.as_bytes().len(), PACKET_SIZE);
                delays.push(delay);
                at = net.ids.iter().position(|id| *id == next_hop).unwrap();
                packet = next;
            }
            Processed::Final {
                destination,
                delivery,
            } => return (delays, at, destination, delivery),
        }
    }
    panic!("route did not end");
}

fn deposit(
    rng: &mut ChaCha20Rng,
    net: &Net,
    ack_queue: QueueId,
) -> (Deposit, murmur_wire::SurbRecovery) {
    let surb_id = SurbId::random_nonzero(rng);
    let (surb, recovery) = build_surb(
        rng,
        &route(net, &[2, 1, 0, 4], &[1, 2, 3, 0]),
        ack_queue.into(),
        surb_id,
    )
    .unwrap();
    let mut body = Box::new([0u8; DEPOSIT_BODY_SIZE]);
    body[..5].copy_from_slice(b"hello");
    body[DEPOSIT_BODY_SIZE - 1] = 0xAA;
    (
        Deposit {
            id: MessageId::random(rng),
            ack: surb,
            body,
        },
        recovery,
    )
}

#[test]
fn four_hop_packet_arrives_with_queue_and_payload() {
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let net = net(&mut rng, 5);
    let queue = QueueId::random(&mut rng);
    let ack_queue = QueueId::random(&mut rng);
    let (dep, _) = deposit(&mut rng, &net, ack_queue);
    let payload = FinalPayload::Deposit(dep.clone());
    let r = route(&net, &[0, 1, 2, 3], &[10, 20, 30, 0]);
    assert_eq!(r.hops().len(), ROUTE_LEN);
    let packet = build_forward_packet(&mut rng, &r, queue.into(), &payload.encode()).unwrap();
    assert_eq!(packet.as_bytes().len(), PACKET_SIZE);

    let (delays, last, destination, delivery) = walk(&net, 0, packet);
    assert_eq!(
        delays,
        vec![
            Duration::from_millis(10),
            Duration::from_millis(20),
            Duration::from_millis(30)
        ]
    );
    assert_eq!(last, 3);
    assert_eq!(destination, Destination::from(queue));
    let Delivery::Forward { plaintext } = delivery else {
        panic!("expected a forward delivery");
    };
    assert_eq!(
        FinalPayload::parse(&plaintext).unwrap(),
        FinalPayload::Deposit(dep)
    );
}

#[test]
fn surb_round_trips_and_only_its_creator_reads_the_reply() {
    let mut rng = ChaCha20Rng::seed_from_u64(2);
    let net = net(&mut rng, 5);
    let ack_queue = QueueId::random(&mut rng);
    let (dep, recovery) = deposit(&mut rng, &net, ack_queue);

    // The mailbox (SURB user) replies.
    let ack = Ack { id: dep.id };
    let (first, reply) = dep.ack.clone().into_packet(&ack.encode()).unwrap();
    assert_eq!(first, net.ids[2]);
    assert_eq!(dep.ack.first_hop(), net.ids[2]);
    let (_, last, destination, delivery) = walk(&net, 2, reply);
    assert_eq!(last, 4);
    assert_eq!(destination, Destination::from(ack_queue));
    let Delivery::Reply { surb_id, sealed } = delivery else {
        panic!("expected a reply");
    };
    assert_eq!(surb_id, recovery.id());
    assert_eq!(sealed.len(), SPHINX_PAYLOAD_SIZE);
    // The final hop cannot read it...
    assert!(FinalPayload::parse(&sealed).is_err());
    // ...the creator can, also after storing and restoring its material.
    let restored = murmur_wire::SurbRecovery::from_bytes(&recovery.to_bytes()).unwrap();
    let plaintext = restored.open(&sealed).unwrap();
    assert_eq!(Ack::parse(&plaintext).unwrap(), ack);

    // Another SURB's recovery material does not open it.
    let (_, other) = deposit(&mut rng, &net, ack_queue);
    assert!(matches!(other.open(&sealed), Err(Error::PayloadIntegrity)));
}

#[test]
fn tampering_with_any_header_byte_is_detected_at_the_first_hop() {
    let mut rng = ChaCha20Rng::seed_from_u64(3);
    let net = net(&mut rng, 4);
    let r = route(&net, &[0, 1, 2, 3], &[1, 1, 1, 0]);
    let packet = build_forward_packet(&mut rng, &r, Destination([5; 32]), b"payload").unwrap();
    for i in 0..murmur_wire::packet::HEADER_SIZE {
        let mut bytes = packet.as_bytes().to_vec();
        bytes[i] ^= 0x01;
        let tampered = Packet::from_bytes(Bytes::from(bytes)).unwrap();
        assert!(
            matches!(net.rings[0].process(&tampered), Err(Error::HeaderMac)),
            "header byte {i} not detected"
        );
    }
}

#[test]
fn tampering_with_payload_bytes_is_detected_at_the_final_hop() {
    let mut rng = ChaCha20Rng::seed_from_u64(4);
    let net = net(&mut rng, 4);
    let r = route(&net, &[0, 1, 2, 3], &[1, 1, 1, 0]);
    let packet = build_forward_packet(&mut rng, &r, Destination([5; 32]), b"payload").unwrap();
    let header = murmur_wire::packet::HEADER_SIZE;
    // Every byte position of the payload, sampled with a stride (each check
    // walks the whole route), plus both ends.
    let positions: Vec<usize> = (header..PACKET_SIZE)
        .step_by(37)
        .chain([header, PACKET_SIZE - 1])
        .collect();
    for i in positions {
        let mut bytes = packet.as_bytes().to_vec();
        bytes[i] ^= 0x80;
        let tampered = Packet::from_bytes(Bytes::from(bytes)).unwrap();
        let mut p = tampered;
        let mut at = 0;
        let result = loop {
            match net.rings[at].process(&p) {
                Ok((_, Processed::Forward { packet, .. })) => {
                    at += 1;
                    p = packet;
                }
                Ok((_, Processed::Final { .. })) => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        assert!(
            matches!(result, Err(Error::PayloadIntegrity)),
            "payload byte {i}: {result:?}"
        );
    }
}

#[test]
fn replay_tags_match_for_replays_and_differ_otherwise() {
    let mut rng = ChaCha20Rng::seed_from_u64(5);
    let net = net(&mut rng, 4);
    let r = route(&net, &[0, 1, 2, 3], &[1, 1, 1, 0]);
    let a = build_forward_packet(&mut rng, &r, Destination([5; 32]), b"same").unwrap();
    let b = build_forward_packet(&mut rng, &r, Destination([5; 32]), b"same").unwrap();
    let (tag_a1, _) = net.rings[0].process(&a).unwrap();
    let (tag_a2, _) = net.rings[0].process(&a.clone()).unwrap();
    let (tag_b, _) = net.rings[0].process(&b).unwrap();
    assert_eq!(tag_a1, tag_a2);
    assert_ne!(tag_a1, tag_b);
    // The tag is known before the expensive part of processing.
    let unwrapped = net.rings[0].unwrap(&a).unwrap();
    assert_eq!(unwrapped.replay_tag(), tag_a1);
    assert_eq!(unwrapped.key_epoch(), 7);
}

#[test]
fn the_previous_epoch_key_still_opens_packets() {
    let mut rng = ChaCha20Rng::seed_from_u64(6);
    let old = SphinxSecretKey::random(&mut rng);
    let new = SphinxSecretKey::random(&mut rng);
    let id = NodeId::from_bytes([1; 32]);
    let r = Route::new(
        vec![Hop {
            id,
            key: old.public_key(),
        }],
        vec![Duration::ZERO],
    )
    .unwrap();
    let packet = build_forward_packet(&mut rng, &r, Destination([0; 32]), b"x").unwrap();
    let mut ring = KeyRing::new();
    ring.insert(10, old);
    ring.insert(11, new);
    assert_eq!(ring.epochs(), vec![11, 10]);
    assert_eq!(ring.unwrap(&packet).unwrap().key_epoch(), 10);
    // After the grace period the old key is gone, and so is the packet.
    ring.retain_from(11);
    assert!(matches!(ring.unwrap(&packet), Err(Error::HeaderMac)));
}

#[test]
fn oversized_plaintext_is_refused() {
    let mut rng = ChaCha20Rng::seed_from_u64(7);
    let net = net(&mut rng, 4);
    let r = route(&net, &[0, 1, 2, 3], &[1, 1, 1, 0]);
    let too_big = vec![0u8; murmur_wire::packet::PAYLOAD_CAPACITY + 1];
    assert!(build_forward_packet(&mut rng, &r, Destination([0; 32]), &too_big).is_err());
    let fits = vec![0u8; murmur_wire::packet::PAYLOAD_CAPACITY];
    assert!(build_forward_packet(&mut rng, &r, Destination([0; 32]), &fits).is_ok());
}

#[test]
fn garbage_packets_fail_cleanly() {
    let mut rng = ChaCha20Rng::seed_from_u64(8);
    let net = net(&mut rng, 1);
    for fill in [0u8, 0xFF, 0x5A] {
        let p = Packet::from_bytes(Bytes::from(vec![fill; PACKET_SIZE])).unwrap();
        assert!(net.rings[0].process(&p).is_err());
    }
}
