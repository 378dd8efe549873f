//! Criterion micro-benchmarks of Murmur's hot paths. Run with
//! `cargo bench -p murmur-benches --bench micro`; docs/performance.md quotes them.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;

use bytes::BytesMut;
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use murmur_benches::{four_hops, rng};
use murmur_client::identity::Identity;
use murmur_client::seal::{self, Body, Envelope};
use murmur_wire::{
    Ack, DEPOSIT_BODY_SIZE, Deposit, Destination, FinalPayload, KeyRing, MessageId, PacketCodec,
    Processed, QueueId, SurbId, build_forward_packet, build_surb,
};
use tokio_util::codec::{Decoder, Encoder};

fn deposit_plaintext(rng: &mut rand_chacha::ChaCha20Rng, route: &murmur_wire::Route) -> Vec<u8> {
    let surb_id = SurbId::random_nonzero(rng);
    let (surb, _) = build_surb(rng, route, Destination([1; 32]), surb_id).unwrap();
    FinalPayload::Deposit(Deposit {
        id: MessageId::random(rng),
        ack: surb,
        body: Box::new([7u8; DEPOSIT_BODY_SIZE]),
    })
    .encode()
}

fn packets(c: &mut Criterion) {
    let mut rng = rng();
    let (keys, route) = four_hops(&mut rng);
    let dest = Destination::from(QueueId::from_bytes([9; 32]));
    let plaintext = deposit_plaintext(&mut rng, &route);

    c.bench_function("packet_build_4_hops", |b| {
        b.iter(|| build_forward_packet(&mut rng, &route, dest, black_box(&plaintext)).unwrap())
    });

    let packet = build_forward_packet(&mut rng, &route, dest, &plaintext).unwrap();
    let mut first = KeyRing::new();
    first.insert(1, keys[0].clone());
    c.bench_function("process_one_hop", |b| {
        b.iter(|| match first.process(black_box(&packet)).unwrap() {
            (_, Processed::Forward { .. }) => {}
            _ => panic!("first hop forwards"),
        })
    });
    c.bench_function("replay_tag_only", |b| {
        b.iter(|| first.unwrap(black_box(&packet)).unwrap().replay_tag())
    });

    // Walk to the final hop once, then bench the final layer.
    let mut p = packet.clone();
    for k in &keys[..3] {
        let mut ring = KeyRing::new();
        ring.insert(1, k.clone());
        match ring.process(&p).unwrap().1 {
            Processed::Forward { packet, .. } => p = packet,
            _ => panic!("mixes forward"),
        }
    }
    let mut last = KeyRing::new();
    last.insert(1, keys[3].clone());
    c.bench_function("process_final_hop_and_parse", |b| {
        b.iter(|| match last.process(black_box(&p)).unwrap().1 {
            Processed::Final {
                delivery: murmur_wire::Delivery::Forward { plaintext },
                ..
            } => FinalPayload::parse(&plaintext).unwrap(),
            _ => panic!("final hop delivers"),
        })
    });
}

fn surbs(c: &mut Criterion) {
    let mut rng = rng();
    let (_, route) = four_hops(&mut rng);
    c.bench_function("surb_build", |b| {
        b.iter(|| {
            let id = SurbId::random_nonzero(&mut rng);
            build_surb(&mut rng, &route, Destination([1; 32]), id).unwrap()
        })
    });
    let surb_id = SurbId::random_nonzero(&mut rng);
    let (surb, _) = build_surb(&mut rng, &route, Destination([1; 32]), surb_id).unwrap();
    let ack = Ack {
        id: MessageId::from_bytes([3; 16]),
    }
    .encode();
    c.bench_function("surb_use", |b| {
        b.iter_batched(
            || surb.clone(),
            |s| s.into_packet(black_box(&ack)).unwrap(),
            BatchSize::SmallInput,
        )
    });
}

fn sealed_sender(c: &mut Criterion) {
    let mut rng = rng();
    let alice = Identity::generate(&mut rng);
    let bob = Identity::generate(&mut rng);
    let q = QueueId::from_bytes([4; 32]);
    // A message that fills one packet.
    let text = "x".repeat(1800);
    let env = Envelope::new(MessageId::from_bytes([1; 16]), 0, Body::Text(text));
    c.bench_function("sealed_sender_seal_1_packet", |b| {
        b.iter(|| seal::seal(&mut rng, &alice, &bob.public(), &q, black_box(&env)).unwrap())
    });
    let sealed = seal::seal(&mut rng, &alice, &bob.public(), &q, &env).unwrap();
    c.bench_function("sealed_sender_open_1_packet", |b| {
        b.iter(|| seal::open(&bob, &alice.public(), &q, black_box(&sealed)).unwrap())
    });
}

fn framing(c: &mut Criterion) {
    let mut rng = rng();
    let (_, route) = four_hops(&mut rng);
    let packet = build_forward_packet(&mut rng, &route, Destination([0; 32]), b"x").unwrap();
    c.bench_function("frame_encode", |b| {
        let mut buf = BytesMut::with_capacity(64 * 1024);
        b.iter(|| {
            buf.clear();
            PacketCodec.encode(black_box(&packet), &mut buf).unwrap();
        })
    });
    let mut wire = BytesMut::new();
    PacketCodec.encode(&packet, &mut wire).unwrap();
    let frame = wire.freeze();
    c.bench_function("frame_decode", |b| {
        b.iter_batched(
            || BytesMut::from(&frame[..]),
            |mut buf| PacketCodec.decode(&mut buf).unwrap().unwrap(),
            BatchSize::SmallInput,
        )
    });
}

criterion_group!(benches, packets, surbs, sealed_sender, framing);
criterion_main!(benches);
