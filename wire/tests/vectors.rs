//! Known-answer vectors in `wire/testdata/`: the exact bytes of a packet, a
//! SURB reply, final-hop payloads, a frame header and a signed consensus.
//!
//! Each test processes the checked-in bytes and checks the answers, so a
//! change that breaks decoding of the format fails here. Where encoding is
//! deterministic (payload kinds, the frame header, Ed25519-signed documents)
//! the test also rebuilds the bytes and compares them. Sphinx headers are not
//! byte-reproducible: `sphinx-packet` pads the final routing block with
//! random bytes of its own, so packets and SURBs are checked by processing.
//! After a deliberate format change, regenerate with
//! `MURMUR_WRITE_VECTORS=1 cargo test -p murmur-wire --test vectors` and say
//! so in the commit.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use murmur_wire::directory::CONSENSUS_VERSION;
use murmur_wire::ed25519_dalek::SigningKey;
use murmur_wire::{
    Ack, AuthoritySet, Consensus, DEPOSIT_BODY_SIZE, Delivery, Deposit, Destination, FinalPayload,
    Hop, IdentityKey, KeyRing, LinkSecretKey, MailboxEntry, MessageId, MixEntry, NetworkParams,
    NodeId, PACKET_SIZE, Packet, PacketCodec, Processed, QueueId, Route, SignedConsensus,
    SphinxPublicKey, SphinxSecretKey, SurbId, SurbRecovery, build_forward_packet, build_surb,
};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use serde_json::{Value, json};

fn path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("testdata")
        .join(name)
}

/// Reads the checked-in vector (writing `generated` first when asked to).
fn load(name: &str, generated: &Value) -> Value {
    let p = path(name);
    if std::env::var_os("MURMUR_WRITE_VECTORS").is_some() {
        std::fs::write(&p, serde_json::to_string_pretty(generated).unwrap() + "\n").unwrap();
    }
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()
}

fn unhex(v: &Value) -> Vec<u8> {
    hex::decode(v.as_str().unwrap()).unwrap()
}

fn hops(rng: &mut ChaCha20Rng) -> (Vec<SphinxSecretKey>, Vec<Hop>) {
    let keys: Vec<SphinxSecretKey> = (0..4).map(|_| SphinxSecretKey::random(rng)).collect();
    let hops = keys
        .iter()
        .enumerate()
        .map(|(i, k)| Hop {
            id: NodeId::from_bytes([0x10 + i as u8; 32]),
            key: k.public_key(),
        })
        .collect();
    (keys, hops)
}

#[test]
fn forward_packet_vector() {
    let mut rng = ChaCha20Rng::seed_from_u64(2026);
    let (keys, hops) = hops(&mut rng);
    let delays = [15u64, 25, 35, 0];
    let route = Route::new(
        hops.clone(),
        delays.iter().map(|&d| Duration::from_millis(d)).collect(),
    )
    .unwrap();
    let queue = QueueId::from_bytes([0x42; 32]);
    let plaintext = FinalPayload::LoopCover {
        id: MessageId::from_bytes([0x33; 16]),
    }
    .encode();
    let packet = build_forward_packet(&mut rng, &route, queue.into(), &plaintext).unwrap();
    let generated = json!({
        "seed": 2026,
        "hop_secret_keys": keys.iter().map(|k| hex::encode(*k.to_bytes())).collect::<Vec<_>>(),
        "hop_ids": hops.iter().map(|h| h.id.to_string()).collect::<Vec<_>>(),
        "delays_ms": delays,
        "destination_queue": queue.to_string(),
        "plaintext": hex::encode(&plaintext),
        "packet": hex::encode(packet.as_bytes()),
    });
    let v = load("forward_packet.json", &generated);

    // Process the stored bytes with the stored keys.
    let mut p = Packet::from_bytes(Bytes::from(unhex(&v["packet"]))).unwrap();
    assert_eq!(p.as_bytes().len(), PACKET_SIZE);
    for hop in 0..4 {
        let mut ring = KeyRing::new();
        let sk: [u8; 32] = unhex(&v["hop_secret_keys"][hop]).try_into().unwrap();
        ring.insert(1, SphinxSecretKey::from_bytes(sk));
        match ring.process(&p).unwrap().1 {
            Processed::Forward {
                next_hop,
                delay,
                packet,
            } => {
                assert_eq!(
                    next_hop.to_string(),
                    v["hop_ids"][hop + 1].as_str().unwrap()
                );
                assert_eq!(
                    delay,
                    Duration::from_millis(v["delays_ms"][hop].as_u64().unwrap())
                );
                p = packet;
            }
            Processed::Final {
                destination,
                delivery,
            } => {
                assert_eq!(hop, 3);
                let q: QueueId = v["destination_queue"].as_str().unwrap().parse().unwrap();
                assert_eq!(destination, Destination::from(q));
                let Delivery::Forward { plaintext } = delivery else {
                    panic!("not forward")
                };
                assert_eq!(plaintext, unhex(&v["plaintext"]));
            }
        }
    }
}

#[test]
fn surb_reply_vector() {
    let mut rng = ChaCha20Rng::seed_from_u64(77);
    let (keys, hops) = hops(&mut rng);
    let route = Route::new(hops, vec![Duration::from_millis(5); 4]).unwrap();
    let ack_queue = QueueId::from_bytes([0x51; 32]);
    let surb_id = SurbId::from_bytes([0x61; 16]);
    let (surb, recovery) = build_surb(&mut rng, &route, ack_queue.into(), surb_id).unwrap();
    let ack = Ack {
        id: MessageId::from_bytes([0x71; 16]),
    };
    let (first, reply) = surb.clone().into_packet(&ack.encode()).unwrap();
    // Sealing a reply draws no randomness: the SURB fixes everything.
    let generated = json!({
        "seed": 77,
        "hop_secret_keys": keys.iter().map(|k| hex::encode(*k.to_bytes())).collect::<Vec<_>>(),
        "surb": hex::encode(surb.as_bytes()),
        "recovery": hex::encode(&*recovery.to_bytes()),
        "first_hop": first.to_string(),
        "ack": hex::encode(ack.encode()),
        "reply_packet": hex::encode(reply.as_bytes()),
    });
    let v = load("surb_reply.json", &generated);

    let mut p = Packet::from_bytes(Bytes::from(unhex(&v["reply_packet"]))).unwrap();
    for hop in 0..4 {
        let mut ring = KeyRing::new();
        let sk: [u8; 32] = unhex(&v["hop_secret_keys"][hop]).try_into().unwrap();
        ring.insert(1, SphinxSecretKey::from_bytes(sk));
        match ring.process(&p).unwrap().1 {
            Processed::Forward { packet, .. } => p = packet,
            Processed::Final {
                destination,
                delivery,
            } => {
                assert_eq!(destination, Destination::from(ack_queue));
                let Delivery::Reply {
                    surb_id: id,
                    sealed,
                } = delivery
                else {
                    panic!("not a reply")
                };
                assert_eq!(id, surb_id);
                let recovery = SurbRecovery::from_bytes(&unhex(&v["recovery"])).unwrap();
                assert_eq!(recovery.open(&sealed).unwrap(), unhex(&v["ack"]));
            }
        }
    }
}

fn deposit_body() -> Box<[u8; DEPOSIT_BODY_SIZE]> {
    let mut body = Box::new([0u8; DEPOSIT_BODY_SIZE]);
    for (i, b) in body.iter_mut().enumerate() {
        *b = i as u8;
    }
    body
}

#[test]
fn payload_and_frame_vector() {
    let mut rng = ChaCha20Rng::seed_from_u64(5);
    let (_, hops) = hops(&mut rng);
    let route = Route::new(hops, vec![Duration::ZERO; 4]).unwrap();
    let (surb, _) = build_surb(
        &mut rng,
        &route,
        Destination([1; 32]),
        SurbId::from_bytes([2; 16]),
    )
    .unwrap();
    let deposit = FinalPayload::Deposit(Deposit {
        id: MessageId::from_bytes([3; 16]),
        ack: surb,
        body: deposit_body(),
    });
    let generated = json!({
        "deposit": hex::encode(deposit.encode()),
        "drop_cover": hex::encode(FinalPayload::DropCover.encode()),
        "loop_cover": hex::encode(FinalPayload::LoopCover { id: MessageId::from_bytes([4; 16]) }.encode()),
        "ack": hex::encode(Ack { id: MessageId::from_bytes([5; 16]) }.encode()),
        "frame_header": hex::encode(PacketCodec::header()),
    });
    let v = load("payloads.json", &generated);
    for key in ["drop_cover", "loop_cover", "ack", "frame_header"] {
        assert_eq!(v[key], generated[key], "{key} encoding changed");
    }
    let stored_deposit = unhex(&v["deposit"]);
    let FinalPayload::Deposit(parsed) = FinalPayload::parse(&stored_deposit).unwrap() else {
        panic!("not a deposit");
    };
    assert_eq!(parsed.id, MessageId::from_bytes([3; 16]));
    assert_eq!(parsed.body, deposit_body());
    assert_eq!(FinalPayload::Deposit(parsed).encode(), stored_deposit);
    assert_eq!(
        FinalPayload::parse(&unhex(&v["drop_cover"])).unwrap(),
        FinalPayload::DropCover
    );
    assert!(matches!(
        FinalPayload::parse(&unhex(&v["loop_cover"])).unwrap(),
        FinalPayload::LoopCover { .. }
    ));
    assert_eq!(
        Ack::parse(&unhex(&v["ack"])).unwrap().id,
        MessageId::from_bytes([5; 16])
    );
}

#[test]
fn signed_consensus_vector() {
    let auth: Vec<SigningKey> = (1..=3u8)
        .map(|i| SigningKey::from_bytes(&[i; 32]))
        .collect();
    let ident = |k: &SigningKey| IdentityKey::from(&k.verifying_key());
    let doc = Consensus {
        version: CONSENSUS_VERSION,
        epoch: 1000,
        valid_after: 3_600_000,
        valid_until: 3_605_400,
        params: NetworkParams {
            epoch_secs: 3600,
            mean_delay_us: 50_000,
            max_delay_us: 2_000_000,
            client_rate: 2.0,
            client_loop_rate: 0.5,
            mix_loop_rate: 0.5,
            packet_size: PACKET_SIZE as u32,
        },
        mixes: (0..3u8)
            .map(|l| MixEntry {
                layer: l,
                identity: ident(&SigningKey::from_bytes(&[0x20 + l; 32])),
                packet_addr: format!("127.0.0.1:{}", 7000 + u16::from(l))
                    .parse()
                    .unwrap(),
                link_key: LinkSecretKey::derive(&[0x20 + l; 32]).public().clone(),
                sphinx_key: SphinxPublicKey([l; 32]),
            })
            .collect(),
        mailboxes: vec![MailboxEntry {
            identity: ident(&SigningKey::from_bytes(&[0x30; 32])),
            packet_addr: "127.0.0.1:7100".parse().unwrap(),
            http_addr: "127.0.0.1:7101".parse().unwrap(),
            link_key: LinkSecretKey::derive(&[0x30; 32]).public().clone(),
            sphinx_key: SphinxPublicKey([9; 32]),
        }],
    };
    let mut signed = SignedConsensus::sign(&doc, &auth[0]).unwrap();
    signed.add_signature(&auth[1]);
    let generated = json!({
        "authority_seeds": [1, 2, 3],
        "threshold": 2,
        "signed_consensus": hex::encode(signed.to_bytes().unwrap()),
    });
    let v = load("signed_consensus.json", &generated);
    // Ed25519 signatures are deterministic: the bytes must not change.
    assert_eq!(v, generated, "signed consensus encoding changed");
    let stored = SignedConsensus::from_bytes(&unhex(&v["signed_consensus"])).unwrap();
    let set = AuthoritySet::new(auth.iter().map(ident).collect(), 2).unwrap();
    let verified = stored.verify(&set, 3_600_100, Some(1000)).unwrap();
    assert_eq!(verified.document(), &doc);
}
