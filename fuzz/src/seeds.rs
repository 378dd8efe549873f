//! Seed inputs: real encodings made with the crates' own encoders and the
//! fixed keys, plus edge cases. `tests/seeds.rs` writes them to
//! `corpus/<target>/` (run it with `--ignored` after a format change); the
//! smoke test runs them from memory too, so a stale corpus cannot hide a
//! format change.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use murmur_client::fragment;
use murmur_client::invite::Invitation;
use murmur_client::seal::{self, Body, Envelope};
use murmur_wire::mailbox::{
    CreateQueue, CreateQueueResponse, FetchResponse, OwnerOp, OwnerReply, OwnerRequest,
    OwnerResponse, QueueEntry, QueueItem, RequestDigest, SignedCreateQueue, SignedOwnerRequest,
};
use murmur_wire::{
    Ack, Consensus, DEPOSIT_BODY_SIZE, Deposit, Descriptor, Destination, EpochKey, FinalPayload,
    MailboxEntry, MessageId, MixEntry, NetworkParams, PACKET_SIZE, PacketCodec, QueueId, Role,
    Route, SignedDescriptor, SignedVote, SurbId, Vote, build_forward_packet, build_surb,
};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use tokio_util::codec::Encoder;

use crate::keys;

/// One seed: target, file name, bytes.
pub type Seed = (&'static str, String, Vec<u8>);

fn rng(seed: u64) -> ChaCha20Rng {
    ChaCha20Rng::seed_from_u64(seed)
}

fn ok<T, E: std::fmt::Display>(r: Result<T, E>, what: &str) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("seed {what}: {e}"),
    }
}

/// A three-hop route through fixed nodes 0, 1, 2 for `epoch`.
pub fn route(epoch: u64) -> Route {
    let nodes = keys::nodes();
    ok(
        Route::new(
            vec![
                nodes[0].hop(epoch),
                nodes[1].hop(epoch),
                nodes[2].hop(epoch),
            ],
            vec![Duration::from_millis(5); 3],
        ),
        "route",
    )
}

fn surb_and_recovery(seed: u64) -> (murmur_wire::Surb, murmur_wire::SurbRecovery) {
    ok(
        build_surb(
            &mut rng(seed),
            &route(0),
            Destination([7; 32]),
            SurbId::from_bytes([9; 16]),
        ),
        "SURB",
    )
}

fn params() -> NetworkParams {
    NetworkParams {
        epoch_secs: 600,
        mean_delay_us: 50_000,
        max_delay_us: 1_000_000,
        client_rate: 1.0,
        client_loop_rate: 0.5,
        mix_loop_rate: 0.5,
        packet_size: PACKET_SIZE as u32,
    }
}

fn addr(s: &str) -> SocketAddr {
    ok(s.parse(), "address")
}

fn descriptor(node: u8, role: Role) -> SignedDescriptor {
    let d = Descriptor {
        version: murmur_wire::directory::DESCRIPTOR_VERSION,
        identity: keys::node_identity(node),
        role,
        packet_addr: addr(&format!("127.0.0.1:{}", 9000 + u16::from(node))),
        http_addr: (role == Role::Mailbox).then(|| addr("127.0.0.1:8080")),
        link_key: keys::link_key(node).public().clone(),
        sphinx_keys: vec![
            EpochKey {
                epoch: keys::EPOCH,
                key: keys::sphinx_key(node, 0).public_key(),
            },
            EpochKey {
                epoch: keys::EPOCH + 1,
                key: keys::sphinx_key(node, 1).public_key(),
            },
        ],
        published_at: keys::NOW,
    };
    ok(
        SignedDescriptor::sign(&d, &keys::node_signing_key(node)),
        "descriptor",
    )
}

/// A routable consensus for [`keys::EPOCH`]: one mix per layer (nodes 0, 1,
/// 2) and a mailbox (node 3).
pub fn consensus_doc() -> Consensus {
    Consensus {
        version: murmur_wire::directory::CONSENSUS_VERSION,
        epoch: keys::EPOCH,
        valid_after: keys::NOW - 300,
        valid_until: keys::NOW + 300,
        params: params(),
        mixes: (0..3)
            .map(|i| MixEntry {
                layer: i,
                identity: keys::node_identity(i),
                packet_addr: addr(&format!("127.0.0.1:{}", 9000 + u16::from(i))),
                link_key: keys::link_key(i).public().clone(),
                sphinx_key: keys::sphinx_key(i, 0).public_key(),
            })
            .collect(),
        mailboxes: vec![MailboxEntry {
            identity: keys::node_identity(3),
            packet_addr: addr("127.0.0.1:9003"),
            http_addr: addr("127.0.0.1:8080"),
            link_key: keys::link_key(3).public().clone(),
            sphinx_key: keys::sphinx_key(3, 0).public_key(),
        }],
    }
}

fn frame(packets: &[murmur_wire::Packet]) -> Vec<u8> {
    let mut buf = BytesMut::new();
    for p in packets {
        ok(PacketCodec.encode(p, &mut buf), "frame");
    }
    buf.to_vec()
}

fn with_mode(m: u8, rest: &[u8]) -> Vec<u8> {
    let mut v = vec![m];
    v.extend_from_slice(rest);
    v
}

fn http_post(path: &str, body: &[u8]) -> Vec<u8> {
    let mut v = format!(
        "POST {path} HTTP/1.1\r\nhost: mailbox\r\ncontent-type: application/x-postcard\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    v.extend_from_slice(body);
    v
}

fn owner_request(op: OwnerOp, nonce: u8) -> Vec<u8> {
    let req = OwnerRequest {
        version: murmur_wire::mailbox::MAILBOX_API_VERSION,
        queue: QueueId::from_bytes(keys::QUEUE),
        op,
        timestamp: keys::NOW,
        nonce: [nonce; 16],
    };
    ok(
        ok(
            SignedOwnerRequest::sign(&req, &keys::owner_key()),
            "owner request",
        )
        .to_bytes(),
        "owner request",
    )
}

fn create_queue(nonce: u8) -> Vec<u8> {
    let req = CreateQueue {
        version: murmur_wire::mailbox::MAILBOX_API_VERSION,
        owner: keys::owner_identity(),
        timestamp: keys::NOW,
        nonce: [nonce; 16],
    };
    ok(
        ok(SignedCreateQueue::sign(&req, &keys::owner_key()), "create").to_bytes(),
        "create",
    )
}

/// Every seed of every target.
pub fn all() -> Vec<Seed> {
    let mut out: Vec<Seed> = Vec::new();
    let mut add =
        |t: &'static str, name: &str, bytes: Vec<u8>| out.push((t, name.to_owned(), bytes));

    // Packets.
    let fwd = ok(
        build_forward_packet(
            &mut rng(1),
            &route(0),
            Destination(keys::QUEUE),
            &FinalPayload::DropCover.encode(),
        ),
        "forward packet",
    );
    let fwd1 = ok(
        build_forward_packet(&mut rng(2), &route(1), Destination(keys::QUEUE), b"hello"),
        "forward packet",
    );
    let (surb, recovery) = surb_and_recovery(3);
    let (_, reply) = ok(
        surb.clone().into_packet(
            &Ack {
                id: MessageId::from_bytes([4; 16]),
            }
            .encode(),
        ),
        "reply",
    );

    // frame: mode byte (chunking), then the stream.
    let two = frame(&[fwd.clone(), fwd1.clone()]);
    add("frame", "two_frames", with_mode(0, &two));
    add("frame", "two_frames_bytewise", with_mode(1, &two));
    add(
        "frame",
        "one_frame",
        with_mode(4, &frame(std::slice::from_ref(&reply))),
    );
    add("frame", "truncated", with_mode(2, &two[..two.len() - 100]));
    let mut bad_len = frame(std::slice::from_ref(&fwd));
    bad_len[4..8].copy_from_slice(&u32::MAX.to_be_bytes());
    add("frame", "huge_length", with_mode(3, &bad_len));
    add(
        "frame",
        "bad_magic",
        with_mode(0, b"GET / HTTP/1.1\r\n\r\n"),
    );
    add("frame", "header_only", with_mode(0, &PacketCodec::header()));

    // link: mode byte, then handshake messages or records.
    {
        use murmur_wire::link::{Initiator, MESSAGE2_SIZE, MESSAGE3_SIZE, Purpose};
        let m1 = ok(
            Initiator::start(
                &mut rng(7),
                Purpose::Packets,
                None,
                keys::link_key(1).public(),
            ),
            "link message 1",
        )
        .1;
        add("link", "message1", with_mode(0, &m1));
        add(
            "link",
            "message1_wrong_purpose_key",
            with_mode(0, &m1[..100]),
        );
        add(
            "link",
            "message2_zeros",
            with_mode(1, &[0u8; MESSAGE2_SIZE]),
        );
        add(
            "link",
            "message3_zeros",
            with_mode(2, &[0u8; MESSAGE3_SIZE]),
        );
        let mut record = 40u16.to_be_bytes().to_vec();
        record.extend_from_slice(&[0x42; 40]);
        add("link", "raw_record", with_mode(3, &record));
        add("link", "raw_record_stream", with_mode(4, &record));
        add("link", "short_length", with_mode(4, &[0, 3, 1, 2, 3]));
        add("link", "huge_length", with_mode(3, &[0xff, 0xff, 1, 2, 3]));
        add(
            "link",
            "genuine_records",
            with_mode(5, &[0x00, 0x10, 0x81, 0x00, 0x0b, 0xb8, 0x7f, 0xff]),
        );
    }

    // sphinx_packet: packets for node 0's key ring.
    add("sphinx_packet", "forward_epoch0", fwd.as_bytes().to_vec());
    add("sphinx_packet", "forward_epoch1", fwd1.as_bytes().to_vec());
    add("sphinx_packet", "reply", reply.as_bytes().to_vec());
    add("sphinx_packet", "zeros", vec![0; PACKET_SIZE]);
    add("sphinx_packet", "short", fwd.as_bytes()[..100].to_vec());

    // sphinx_structured: unstructured bytes the Arbitrary case is drawn from.
    for (i, len) in [64usize, 200, 600, 2000, 5000].into_iter().enumerate() {
        add(
            "sphinx_structured",
            &format!("random_{len}"),
            crate::pseudo_random(i as u64 + 100, len),
        );
    }

    // final_payload.
    let deposit = FinalPayload::Deposit(Deposit {
        id: MessageId::from_bytes([1; 16]),
        ack: surb.clone(),
        body: Box::new([0xab; DEPOSIT_BODY_SIZE]),
    });
    add("final_payload", "deposit", deposit.encode());
    add("final_payload", "drop", FinalPayload::DropCover.encode());
    add(
        "final_payload",
        "loop",
        FinalPayload::LoopCover {
            id: MessageId::from_bytes([2; 16]),
        }
        .encode(),
    );
    add(
        "final_payload",
        "ack",
        Ack {
            id: MessageId::from_bytes([3; 16]),
        }
        .encode()
        .to_vec(),
    );
    let mut surb_plus = surb.as_bytes().to_vec();
    surb_plus.extend_from_slice(b"reply text");
    add("final_payload", "surb_and_reply", surb_plus);
    add(
        "final_payload",
        "surb_recovery",
        recovery.to_bytes().to_vec(),
    );
    add("final_payload", "empty", Vec::new());

    // descriptor.
    let mix = descriptor(0, Role::Mix);
    let mbx = descriptor(3, Role::Mailbox);
    add(
        "descriptor",
        "mix",
        with_mode(0, &ok(mix.to_bytes(), "descriptor")),
    );
    add(
        "descriptor",
        "mailbox",
        with_mode(0, &ok(mbx.to_bytes(), "descriptor")),
    );
    add(
        "descriptor",
        "structured",
        with_mode(1, &crate::pseudo_random(5, 200)),
    );

    // consensus.
    let doc = consensus_doc();
    let body = ok(postcard::to_stdvec(&doc), "consensus");
    let signed = keys::sign_consensus_body(body.clone(), 0b011);
    add(
        "consensus",
        "signed",
        with_mode(0, &ok(signed.to_bytes(), "consensus")),
    );
    let all_three = keys::sign_consensus_body(body.clone(), 0b111);
    add(
        "consensus",
        "signed_by_all",
        with_mode(0, &ok(all_three.to_bytes(), "consensus")),
    );
    let under = keys::sign_consensus_body(body.clone(), 0b1001);
    add(
        "consensus",
        "under_threshold",
        with_mode(0, &ok(under.to_bytes(), "consensus")),
    );
    add("consensus", "body", with_mode(1, &body));
    add(
        "consensus",
        "structured",
        with_mode(2, &crate::pseudo_random(6, 600)),
    );
    let vote = Vote {
        version: murmur_wire::directory::VOTE_VERSION,
        epoch: keys::EPOCH,
        authority: keys::authority_identity(0),
        params: params(),
        descriptors: vec![mix.clone(), mbx.clone()],
    };
    let vote = ok(SignedVote::sign(&vote, &keys::authority_key(0)), "vote");
    add(
        "consensus",
        "vote",
        with_mode(3, &ok(vote.to_bytes(), "vote")),
    );

    // mailbox_api.
    add("mailbox_api", "create_queue", create_queue(1));
    add(
        "mailbox_api",
        "fetch",
        owner_request(
            OwnerOp::Fetch {
                after: 0,
                limit: 16,
            },
            2,
        ),
    );
    add(
        "mailbox_api",
        "delete_entries",
        owner_request(
            OwnerOp::Delete {
                seqs: vec![1, 5, 9],
            },
            3,
        ),
    );
    add(
        "mailbox_api",
        "delete",
        owner_request(OwnerOp::DeleteQueue, 4),
    );
    let fetched = FetchResponse {
        entries: vec![
            QueueEntry {
                seq: 1,
                item: QueueItem::Deposit {
                    id: MessageId::from_bytes([1; 16]),
                    body: vec![0xcd; 64],
                },
            },
            QueueEntry {
                seq: 2,
                item: QueueItem::Reply {
                    surb_id: SurbId::from_bytes([2; 16]),
                    sealed: vec![0xef; 64],
                },
            },
            QueueEntry {
                seq: 3,
                item: QueueItem::Loop {
                    id: MessageId::from_bytes([3; 16]),
                },
            },
        ],
        more: true,
    };
    add(
        "mailbox_api",
        "fetch_response",
        ok(
            OwnerResponse {
                request: RequestDigest([7; 32]),
                reply: OwnerReply::Fetched(fetched),
            }
            .to_bytes(),
            "fetch response",
        ),
    );
    add(
        "mailbox_api",
        "delete_response",
        ok(
            OwnerResponse {
                request: RequestDigest([8; 32]),
                reply: OwnerReply::Deleted { deleted: 3 },
            }
            .to_bytes(),
            "delete response",
        ),
    );
    add(
        "mailbox_api",
        "create_response",
        ok(
            CreateQueueResponse {
                request: RequestDigest([9; 32]),
                queue: QueueId::from_bytes(keys::QUEUE),
            }
            .to_bytes(),
            "create response",
        ),
    );

    // mailbox_http: raw HTTP/1.1 connections.
    add(
        "mailbox_http",
        "create",
        http_post("/v1/queues", &create_queue(10)),
    );
    add(
        "mailbox_http",
        "fetch",
        http_post(
            "/v1/queue",
            &owner_request(OwnerOp::Fetch { after: 0, limit: 8 }, 11),
        ),
    );
    let mut pipelined = http_post("/v1/queues", &create_queue(12));
    pipelined.extend(http_post(
        "/v1/queue",
        &owner_request(OwnerOp::Delete { seqs: vec![1] }, 13),
    ));
    pipelined.extend_from_slice(b"GET /healthz HTTP/1.1\r\nhost: m\r\n\r\n");
    add("mailbox_http", "pipelined", pipelined);
    add(
        "mailbox_http",
        "healthz",
        b"GET /healthz HTTP/1.1\r\nhost: m\r\n\r\n".to_vec(),
    );
    add(
        "mailbox_http",
        "metrics",
        b"GET /metrics HTTP/1.1\r\nhost: m\r\n\r\n".to_vec(),
    );
    add(
        "mailbox_http",
        "too_large",
        b"POST /v1/queue HTTP/1.1\r\nhost: m\r\ncontent-length: 99999999\r\n\r\nxx".to_vec(),
    );
    add(
        "mailbox_http",
        "chunked",
        b"POST /v1/queues HTTP/1.1\r\nhost: m\r\ntransfer-encoding: chunked\r\n\r\n4\r\nabcd\r\n0\r\n\r\n"
            .to_vec(),
    );
    add(
        "mailbox_http",
        "short_body",
        b"POST /v1/queues HTTP/1.1\r\nhost: m\r\ncontent-length: 50\r\n\r\nabc".to_vec(),
    );

    // invitation.
    let inviter = keys::sender_identity();
    let inv = ok(
        Invitation::new(
            inviter.public(),
            inviter.pq_public().clone(),
            keys::node_identity(3).node_id(),
            QueueId::from_bytes(keys::QUEUE),
            keys::RELATION_SECRET,
            "Alice".to_owned(),
        ),
        "invitation",
    );
    let text = ok(inv.to_text(), "invitation");
    add("invitation", "valid", text.clone().into_bytes());
    let wrapped: String = text
        .as_bytes()
        .chunks(20)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join("\n  ");
    add(
        "invitation",
        "wrapped",
        format!("  {wrapped}\n").into_bytes(),
    );
    let inv_body = ok(postcard::to_stdvec(&inv), "invitation body");
    add("invitation", "body_with_checksum", with_mode(1, &inv_body));
    add("invitation", "prefix_only", b"murmur-invite:".to_vec());
    add(
        "invitation",
        "identity_key",
        keys::authority_identity(1).to_base58().into_bytes(),
    );
    add(
        "invitation",
        "node_id",
        keys::node_identity(3).node_id().to_base58().into_bytes(),
    );
    add("invitation", "not_base58", b"murmur-invite:0OIl".to_vec());

    // client_fragments.
    let (key, queue) = keys::fragment_key();
    let recipient = keys::recipient_identity();
    let env = Envelope::new(
        MessageId::from_bytes([8; 16]),
        1,
        Body::Text("hi".to_owned()),
    );
    let sealed = ok(
        seal::seal(
            &mut rng(9),
            &inviter,
            (&recipient.public(), recipient.pq_public()),
            &queue,
            &env,
            seal::SealKind::Contact,
        ),
        "seal",
    );
    let bodies = ok(
        fragment::split(
            &mut rng(10),
            &key,
            &queue,
            MessageId::from_bytes([8; 16]),
            &sealed,
        ),
        "split",
    );
    add("client_fragments", "body", with_mode(0, &bodies[0][..]));
    let mut plain = Vec::new();
    plain.put_slice(&[8; 16]);
    plain.put_u32(0);
    plain.put_u32(1);
    plain.put_u16(5);
    plain.put_slice(b"chunk");
    add(
        "client_fragments",
        "fragment_plaintext",
        with_mode(1, &plain),
    );
    add("client_fragments", "sealed", with_mode(2, &sealed));
    let ratcheted = ok(
        seal::seal_ratcheted(&mut keys::ratchet_initiator(), &queue, &env),
        "ratchet seal",
    );
    add("client_fragments", "ratcheted", with_mode(2, &ratcheted));
    add(
        "client_fragments",
        "envelope_text",
        with_mode(3, &ok(postcard::to_stdvec(&env), "envelope")),
    );
    let file = Envelope::new(
        MessageId::from_bytes([9; 16]),
        2,
        Body::File {
            name: "a.txt".to_owned(),
            data: vec![1, 2, 3],
        },
    );
    add(
        "client_fragments",
        "envelope_file",
        with_mode(3, &ok(postcard::to_stdvec(&file), "envelope")),
    );
    let mut hello = Envelope::new(
        MessageId::from_bytes([10; 16]),
        3,
        Body::Hello {
            reply_provider: keys::node_identity(3).node_id(),
            reply_queue: QueueId::from_bytes([1; 32]),
            name: "Bob".to_owned(),
        },
    );
    // A hello carries its sender's X-Wing key and a ratchet key.
    hello.sender_pq = Some(inviter.pq_public().clone());
    hello.ratchet_key = Some([0x77; 32]);
    add(
        "client_fragments",
        "envelope_hello",
        with_mode(3, &ok(postcard::to_stdvec(&hello), "envelope")),
    );

    // configs.
    let key_b58 = keys::authority_identity(0).to_base58();
    add(
        "configs",
        "directory",
        murmur_directory::config::example_config(addr("127.0.0.1:7000"), "data", "authority.key")
            .into_bytes(),
    );
    add(
        "configs",
        "mixnode",
        murmur_mixnode::config::example_config(
            "data",
            addr("0.0.0.0:9000"),
            Some(addr("192.0.2.1:9000")),
            addr("127.0.0.1:9100"),
            &[murmur_directory::AuthorityPin {
                addr: addr("127.0.0.1:7000"),
                key: keys::authority_identity(0),
            }],
            1,
        )
        .into_bytes(),
    );
    add(
        "configs",
        "mailbox",
        murmur_mailbox::example_config(&murmur_mailbox::ExampleOptions {
            public_addr: Some(addr("192.0.2.1:9001")),
            http_public_addr: Some(addr("192.0.2.1:9002")),
            authorities: vec![murmur_directory::AuthorityPin {
                addr: addr("127.0.0.1:7000"),
                key: keys::authority_identity(0),
            }],
            threshold: 1,
            ..murmur_mailbox::ExampleOptions::default()
        })
        .into_bytes(),
    );
    let network = murmur_client::network::NetworkConfig {
        threshold: 1,
        authorities: vec![murmur_client::network::AuthorityEntry {
            address: addr("127.0.0.1:7000"),
            key: key_b58,
        }],
    };
    add("configs", "network", network.to_toml().into_bytes());
    add(
        "configs",
        "study",
        b"layers = 3\nwidth = 8\nclients = 5000\nrate = 0.1\ncover_rate = 1.0\nloop_rate = 0.5\n\
link_delay = \"0.002..0.020\"\nduration = 120\nwarmup = 20\n\n[[sweep]]\nparam = \"mean_delay\"\n\
values = [0.01, 0.02, 0.05]\n\n[[sweep]]\nparam = \"compromised\"\nvalues = [0.0, 0.1]\n"
            .to_vec(),
    );
    add(
        "configs",
        "sweep_flags",
        b"mean-delay=0.01,0.02\nlink-delay=0.001..0.002\n".to_vec(),
    );

    out
}
