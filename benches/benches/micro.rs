//! Criterion micro-benchmarks of Murmur's hot paths. Run with
//! `cargo bench -p murmur-benches --bench micro`; docs/performance.md quotes them.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use murmur_benches::{four_hops, rng};
use murmur_client::identity::Identity;
use murmur_client::seal::{self, Body, Envelope};
use murmur_mailbox::writer::Writer;
use murmur_mailbox::{Metrics, NewItem, Quota, RedbStore, Store, WriterConfig};
use murmur_net::clock::SystemClock;
use murmur_node::engine::{ReplayCache, ReplaySettings, Seen};
use murmur_wire::mailbox::QueueItem;
use murmur_wire::{
    Ack, DEPOSIT_BODY_SIZE, Deposit, Destination, FinalPayload, KeyRing, MessageId, PacketCodec,
    Processed, QueueId, SurbId, build_forward_packet, build_surb,
};
use murmur_wire::{IdentityKey, ReplayTag};
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
    // What the client builds for one real packet: the acknowledgement SURB,
    // the deposit payload around it, and the forward packet.
    let dest = Destination::from(QueueId::from_bytes([9; 32]));
    c.bench_function("client_real_packet_surb_and_forward", |b| {
        b.iter(|| {
            let id = SurbId::random_nonzero(&mut rng);
            let (surb, recovery) = build_surb(&mut rng, &route, Destination([1; 32]), id).unwrap();
            let payload = FinalPayload::Deposit(Deposit {
                id: MessageId::random(&mut rng),
                ack: surb,
                body: Box::new([7u8; DEPOSIT_BODY_SIZE]),
            })
            .encode();
            (
                build_forward_packet(&mut rng, &route, dest, &payload).unwrap(),
                recovery,
            )
        })
    });
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
    let to_bob = (&bob.public(), bob.pq_public());
    let kind = seal::SealKind::Contact;
    c.bench_function("sealed_sender_seal_1_packet", |b| {
        b.iter(|| seal::seal(&mut rng, &alice, to_bob, &q, black_box(&env), kind).unwrap())
    });
    let sealed = seal::seal(&mut rng, &alice, to_bob, &q, &env, kind).unwrap();
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

/// The link layer: sealing and opening one frame's record (what each
/// packet costs on each link when it travels alone), a record of 22 frames
/// (a batch under load), a whole handshake, and the bare AEADs (the link's
/// AES-256-GCM, and ChaCha20-Poly1305 for comparison).
fn links(c: &mut Criterion) {
    use murmur_wire::frame::FRAME_SIZE;
    use murmur_wire::link::{Initiator, LinkSecretKey, Purpose, Responder};
    let mut rng = rng();
    let server = LinkSecretKey::generate(&mut rng);
    let pair = |rng: &mut rand_chacha::ChaCha20Rng| {
        let (init, m1) = Initiator::start(rng, Purpose::Packets, None, server.public()).unwrap();
        let (resp, m2) = Responder::respond(rng, Purpose::Packets, &server, &m1).unwrap();
        let (m3, tx) = init.finish(&m2).unwrap();
        (tx, resp.finish(&m3).unwrap().transport)
    };
    let mut group = c.benchmark_group("link");
    for frames in [1usize, 22] {
        let data = vec![0x5au8; FRAME_SIZE * frames];
        group.throughput(Throughput::Bytes(data.len() as u64));
        let (mut tx, mut rx) = pair(&mut rng);
        let mut out = Vec::with_capacity(data.len() + 64);
        let mut opened = vec![0u8; data.len() + 64];
        group.bench_function(format!("seal_open_{frames}_frames"), |b| {
            b.iter(|| {
                out.clear();
                tx.seal(black_box(&data), &mut out).unwrap();
                rx.open(&out[2..], &mut opened).unwrap()
            })
        });
    }
    group.bench_function("handshake", |b| {
        b.iter(|| pair(&mut rng));
    });
    let data = vec![0x5au8; FRAME_SIZE];
    group.throughput(Throughput::Bytes(data.len() as u64));
    group.bench_function("aes256gcm_seal_1_frame", |b| {
        use aes_gcm::aead::{AeadInOut, KeyInit};
        let aead = aes_gcm::Aes256Gcm::new(&[7u8; 32].into());
        let mut buf = data.clone();
        b.iter(|| {
            aead.encrypt_inout_detached(&[0u8; 12].into(), &[], buf.as_mut_slice().into())
                .unwrap()
        })
    });
    group.bench_function("chacha20poly1305_seal_1_frame", |b| {
        use chacha20poly1305::aead::{AeadInOut, KeyInit};
        let aead = chacha20poly1305::ChaCha20Poly1305::new(&[7u8; 32].into());
        let mut buf = data.clone();
        b.iter(|| {
            aead.encrypt_inout_detached(&[0u8; 12].into(), &[], buf.as_mut_slice().into())
                .unwrap()
        })
    });
    group.bench_function("aes256gcm_seal_1_frame", |b| {
        use aes_gcm::aead::{AeadInOut, KeyInit};
        let aead = aes_gcm::Aes256Gcm::new(&[7u8; 32].into());
        let mut buf = data.clone();
        b.iter(|| {
            aead.encrypt_inout_detached(&[0u8; 12].into(), &[], buf.as_mut_slice().into())
                .unwrap()
        })
    });
    group.finish();
}

/// The mix node's replay cache (the engine's own type), sized as a node
/// with the default settings sizes it: a fresh tag checked and recorded
/// (Bloom filter + tag log append) per iteration, and a replayed tag.
fn replay_cache(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let settings = ReplaySettings::default();
    // One segment, as a node at its expected load holds.
    let sizing = settings.sizing(Duration::from_secs(3600 + 600), 0.0);
    let cache = ReplayCache::open(dir.path(), sizing, &[1]).unwrap();
    let mut n: u64 = 0;
    c.bench_function("replay_cache_check_fresh", |b| {
        b.iter(|| {
            n += 1;
            let mut tag = [0u8; 32];
            tag[..8].copy_from_slice(&n.to_le_bytes());
            tag[8..16].copy_from_slice(&n.wrapping_mul(0x9e37_79b9_7f4a_7c15).to_le_bytes());
            // Criterion runs more iterations than the filter is sized
            // for, so late ones may be false positives: only errors fail.
            let (seen, err) = cache.check_and_insert(1, black_box(&ReplayTag(tag)));
            assert!(err.is_none());
            black_box(seen);
        })
    });
    let old = ReplayTag([0u8; 32]);
    cache.check_and_insert(1, &old);
    c.bench_function("replay_cache_check_replayed", |b| {
        b.iter(|| assert!(cache.check_and_insert(1, black_box(&old)).0 == Seen::Replay))
    });
    cache.close().unwrap();
}

/// Durable deposits through the mailbox's writer and redb store in a temp
/// dir: one deposit at a time (each its own fsynced commit), and 256
/// submitted together (group commit).
fn mailbox_deposit(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(
        RedbStore::open(
            &dir.path().join("mailbox.redb"),
            Quota {
                max_messages: u64::MAX,
                max_bytes: u64::MAX,
            },
        )
        .unwrap(),
    );
    let mut rng = rng();
    let queues: Vec<QueueId> = (0..1024)
        .map(|_| {
            let q = QueueId::random(&mut rng);
            store
                .create_queue(&q, &IdentityKey([1; 32]), 0, u64::MAX)
                .unwrap();
            q
        })
        .collect();
    let (writer, thread) = Writer::start(
        store,
        Arc::new(SystemClock),
        WriterConfig::default(),
        Arc::new(Metrics::new()),
    )
    .unwrap();
    let mut i = 0usize;
    let mut item = move |rng: &mut rand_chacha::ChaCha20Rng| {
        i += 1;
        NewItem {
            queue: queues[i % queues.len()],
            item: QueueItem::Deposit {
                id: MessageId::random(rng),
                body: vec![7u8; DEPOSIT_BODY_SIZE],
            },
        }
    };
    let mut group = c.benchmark_group("mailbox_deposit_durable");
    group.throughput(Throughput::Elements(1));
    group.bench_function("one_at_a_time", |b| {
        b.iter(|| {
            let rx = writer.submit(item(&mut rng), true).unwrap().unwrap();
            rx.blocking_recv().unwrap().unwrap()
        })
    });
    group.throughput(Throughput::Elements(256));
    group.bench_function("group_of_256", |b| {
        b.iter(|| {
            let rxs: Vec<_> = (0..256)
                .map(|_| writer.submit(item(&mut rng), true).unwrap().unwrap())
                .collect();
            for rx in rxs {
                rx.blocking_recv().unwrap().unwrap();
            }
        })
    });
    group.finish();
    drop(writer);
    thread.join().unwrap();
}

criterion_group!(
    benches,
    packets,
    surbs,
    sealed_sender,
    framing,
    links,
    replay_cache,
    mailbox_deposit
);
criterion_main!(benches);
