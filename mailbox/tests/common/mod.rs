//! Shared test helpers: real Sphinx packets to a one-hop route whose hop is
//! the provider's key ring, a capturing packet sink, signed API requests.
#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    missing_docs
)]

use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use ed25519_dalek::SigningKey;
use murmur_mailbox::PacketSink;
use murmur_wire::mailbox::{
    CreateQueue, OwnerOp, OwnerRequest, SignedCreateQueue, SignedOwnerRequest,
};
use murmur_wire::{
    Ack, DEPOSIT_BODY_SIZE, Delivery, Deposit, Destination, FinalPayload, Hop, IdentityKey,
    KeyRing, MessageId, NodeId, Packet, Processed, QueueId, Route, SphinxSecretKey, SurbId,
    SurbRecovery, build_forward_packet, build_surb,
};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

/// A provider's key ring and an "ack hop" (where acknowledgements are sent
/// first), both one-hop routes.
pub struct Harness {
    pub rng: ChaCha20Rng,
    pub provider: NodeId,
    provider_ring: KeyRing,
    pub ack_hop: NodeId,
    ack_ring: KeyRing,
    pub ack_queue: QueueId,
}

fn ring(rng: &mut ChaCha20Rng) -> KeyRing {
    let mut ring = KeyRing::new();
    ring.insert(1, SphinxSecretKey::random(rng));
    ring
}

fn hop(id: NodeId, ring: &KeyRing) -> Route {
    Route::new(
        vec![Hop {
            id,
            key: ring.get(1).unwrap().public_key(),
        }],
        vec![Duration::ZERO],
    )
    .unwrap()
}

impl Harness {
    pub fn new(seed: u64) -> Self {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let provider_ring = ring(&mut rng);
        let ack_ring = ring(&mut rng);
        let ack_queue = QueueId::random(&mut rng);
        Self {
            rng,
            provider: NodeId::from_bytes([1; 32]),
            provider_ring,
            ack_hop: NodeId::from_bytes([2; 32]),
            ack_ring,
            ack_queue,
        }
    }

    /// Builds a forward packet carrying `payload` to `queue` at the provider
    /// and processes it there, as the mix engine would.
    pub fn forward(&mut self, queue: QueueId, payload: &[u8]) -> (Destination, Delivery) {
        let route = hop(self.provider, &self.provider_ring);
        let packet = build_forward_packet(&mut self.rng, &route, queue.into(), payload).unwrap();
        match self.provider_ring.process(&packet).unwrap().1 {
            Processed::Final {
                destination,
                delivery,
            } => (destination, delivery),
            Processed::Forward { .. } => panic!("a one-hop packet must end at its hop"),
        }
    }

    /// A deposit of message `id` to `queue` as it reaches the provider, and
    /// the recovery material that opens its acknowledgement.
    pub fn deposit(
        &mut self,
        queue: QueueId,
        id: MessageId,
        fill: u8,
    ) -> (Destination, Delivery, SurbRecovery) {
        let surb_id = SurbId::random_nonzero(&mut self.rng);
        let route = hop(self.ack_hop, &self.ack_ring);
        let (surb, recovery) =
            build_surb(&mut self.rng, &route, self.ack_queue.into(), surb_id).unwrap();
        let payload = FinalPayload::Deposit(Deposit {
            id,
            ack: surb,
            body: Box::new([fill; DEPOSIT_BODY_SIZE]),
        });
        let (d, delivery) = self.forward(queue, &payload.encode());
        (d, delivery, recovery)
    }

    /// A SURB reply (an acknowledgement for the owner of `queue`) as it
    /// reaches the provider.
    pub fn reply(&mut self, queue: QueueId, surb_id: SurbId) -> (Destination, Delivery) {
        let route = hop(self.provider, &self.provider_ring);
        let (surb, _) = build_surb(&mut self.rng, &route, queue.into(), surb_id).unwrap();
        let (_, packet) = surb
            .into_packet(
                &Ack {
                    id: MessageId::from_bytes([7; 16]),
                }
                .encode(),
            )
            .unwrap();
        match self.provider_ring.process(&packet).unwrap().1 {
            Processed::Final {
                destination,
                delivery,
            } => (destination, delivery),
            Processed::Forward { .. } => panic!("a one-hop packet must end at its hop"),
        }
    }

    /// Processes an acknowledgement packet at the ack hop: the SURB id it
    /// arrives under and its sealed payload.
    pub fn receive_ack(&self, packet: &Packet) -> (SurbId, Vec<u8>) {
        match self.ack_ring.process(packet).unwrap().1 {
            Processed::Final {
                delivery: Delivery::Reply { surb_id, sealed },
                ..
            } => (surb_id, sealed),
            other => panic!("expected a SURB reply, got {other:?}"),
        }
    }

    /// Processes an acknowledgement packet at the ack hop and opens it with
    /// `recovery`: proves it was made from the deposit's SURB.
    pub fn open_ack(
        &self,
        first_hop: NodeId,
        packet: &Packet,
        recovery: &SurbRecovery,
    ) -> MessageId {
        assert_eq!(first_hop, self.ack_hop);
        match self.ack_ring.process(packet).unwrap().1 {
            Processed::Final {
                destination,
                delivery: Delivery::Reply { surb_id, sealed },
            } => {
                assert_eq!(destination, Destination::from(self.ack_queue));
                assert_eq!(surb_id, recovery.id());
                Ack::parse(&recovery.open(&sealed).unwrap()).unwrap().id
            }
            other => panic!("expected a SURB reply, got {other:?}"),
        }
    }
}

/// A [`PacketSink`] that keeps what it is given.
#[derive(Default)]
pub struct CaptureSink {
    packets: Mutex<Vec<(NodeId, Packet)>>,
}

impl PacketSink for CaptureSink {
    fn send(&self, first_hop: NodeId, packet: Packet) -> bool {
        self.packets.lock().unwrap().push((first_hop, packet));
        true
    }
}

impl CaptureSink {
    pub fn len(&self) -> usize {
        self.packets.lock().unwrap().len()
    }

    pub fn take(&self) -> Vec<(NodeId, Packet)> {
        std::mem::take(&mut *self.packets.lock().unwrap())
    }

    /// Waits (up to 10 s of real time) until at least `n` packets arrived.
    pub async fn wait_for(&self, n: usize) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while self.len() < n {
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for {n} acknowledgements (have {})",
                self.len()
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

pub fn owner_key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

pub fn create_body(owner: &SigningKey, timestamp: u64, nonce: [u8; 16]) -> Bytes {
    let req = CreateQueue {
        version: 1,
        owner: IdentityKey::from(&owner.verifying_key()),
        timestamp,
        nonce,
    };
    Bytes::from(
        SignedCreateQueue::sign(&req, owner)
            .unwrap()
            .to_bytes()
            .unwrap(),
    )
}

pub fn owner_body(
    owner: &SigningKey,
    queue: QueueId,
    op: OwnerOp,
    timestamp: u64,
    nonce: [u8; 16],
) -> Bytes {
    let req = OwnerRequest {
        version: 1,
        queue,
        op,
        timestamp,
        nonce,
    };
    Bytes::from(
        SignedOwnerRequest::sign(&req, owner)
            .unwrap()
            .to_bytes()
            .unwrap(),
    )
}
