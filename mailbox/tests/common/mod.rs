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
    CreateQueue, MAILBOX_API_VERSION, OwnerOp, OwnerRequest, SignedCreateQueue, SignedOwnerRequest,
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
        version: MAILBOX_API_VERSION,
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
        version: MAILBOX_API_VERSION,
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

pub mod postgres;

// ------------------------------------------------------------- whole daemons

pub mod net {
    //! Helpers for tests against a running provider: an in-process directory
    //! authority, packets over the packet port, owner requests over HTTP.

    use std::net::SocketAddr;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    use bytes::{Bytes, BytesMut};
    use ed25519_dalek::SigningKey;
    use http::StatusCode;
    use murmur_directory::{AuthorityConfig, AuthorityHandle, DirectoryClient, start_authority};
    use murmur_net::LinkSettings;
    use murmur_net::clock::Clock;
    use murmur_net::http::LinkHttpClient;
    use murmur_net::http::{HttpClient, POSTCARD};
    use murmur_wire::link::Purpose;
    use murmur_wire::mailbox::{
        CreateQueueResponse, FetchResponse, OwnerOp, OwnerResponse, QueueEntry,
    };
    use murmur_wire::{
        DEPOSIT_BODY_SIZE, Deposit, FinalPayload, Hop, LinkPublicKey, LinkSecretKey, MessageId,
        NodeId, Packet, PacketCodec, QueueId, Role, Route, SurbId, SurbRecovery,
        build_forward_packet, build_surb,
    };
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;
    use tokio_util::codec::Encoder;
    use tokio_util::sync::CancellationToken;

    use super::{create_body, owner_body};

    pub const WAIT: Duration = Duration::from_secs(30);

    /// A one-node authority on loopback that publishes its first document
    /// half a second after the first descriptor arrives.
    pub async fn authority(
        dir: &std::path::Path,
        epoch_secs: u64,
        clock: Arc<dyn Clock>,
        stop: &CancellationToken,
    ) -> AuthorityHandle {
        let mut cfg = AuthorityConfig::new(dir);
        cfg.listen = "127.0.0.1:0".parse().unwrap();
        cfg.epoch_secs = epoch_secs;
        cfg.timing.bootstrap_window_ms = 500;
        cfg.timing.tick_ms = 50;
        // These tests are about the provider: an open authority on loopback
        // (the provider's key may come from `init`). Admission is tested in
        // murmur-directory.
        cfg.admission.mode = murmur_directory::config::AdmissionMode::Open;
        cfg.admission.allow_private_addresses = true;
        cfg.admission.max_per_address = 64;
        cfg.admission.max_per_subnet = 64;
        start_authority(cfg, SigningKey::from_bytes(&[200; 32]), clock, stop.clone())
            .await
            .unwrap()
    }

    /// The provider `id` as the authority's current consensus lists it:
    /// the route hop (with this epoch's Sphinx key), packet and HTTP address.
    pub async fn listed(
        auth: &AuthorityHandle,
        clock: &dyn Clock,
        id: NodeId,
    ) -> (Hop, SocketAddr, SocketAddr) {
        let client = DirectoryClient::new(
            vec![auth.endpoint()],
            1,
            HttpClient::new(Duration::from_secs(5)),
        )
        .unwrap();
        let doc = client.fetch_current(clock.now_secs()).await.unwrap();
        let node = doc.node(&id).expect("the provider is not in the consensus");
        assert_eq!(node.role, Role::Mailbox);
        (node.hop(), node.packet_addr, node.http_addr.unwrap())
    }

    /// Polls `GET /healthz` (on the operator listener) until it answers
    /// 200; returns its body.
    pub async fn wait_healthy(addr: SocketAddr) -> String {
        let http = HttpClient::new(Duration::from_secs(5));
        let deadline = std::time::Instant::now() + WAIT;
        let mut last = String::new();
        while std::time::Instant::now() < deadline {
            if let Ok((status, body)) = http.get(addr, "/healthz", 4096).await {
                last = String::from_utf8_lossy(&body).into_owned();
                if status == StatusCode::OK {
                    return last;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the provider did not become healthy: {last}");
    }

    /// Builds packets the way a client does, for one-hop routes.
    pub struct Sender {
        rng: ChaCha20Rng,
    }

    impl Sender {
        pub fn new(seed: u64) -> Self {
            Self {
                rng: ChaCha20Rng::seed_from_u64(seed),
            }
        }

        /// A deposit of message `id` into `queue` at `hop`, whose
        /// acknowledgement SURB leads through `ack_hop` into `ack_queue`;
        /// and the recovery material that opens the acknowledgement.
        pub fn deposit(
            &mut self,
            hop: Hop,
            queue: QueueId,
            id: MessageId,
            fill: u8,
            ack_hop: Hop,
            ack_queue: QueueId,
        ) -> (Packet, SurbRecovery) {
            let surb_route = Route::new(vec![ack_hop], vec![Duration::ZERO]).unwrap();
            let surb_id = SurbId::random_nonzero(&mut self.rng);
            let (surb, recovery) =
                build_surb(&mut self.rng, &surb_route, ack_queue.into(), surb_id).unwrap();
            let payload = FinalPayload::Deposit(Deposit {
                id,
                ack: surb,
                body: Box::new([fill; DEPOSIT_BODY_SIZE]),
            });
            let route = Route::new(vec![hop], vec![Duration::ZERO]).unwrap();
            let packet =
                build_forward_packet(&mut self.rng, &route, queue.into(), &payload.encode())
                    .unwrap();
            (packet, recovery)
        }
    }

    /// `packet` as one frame of the packet link protocol.
    pub fn frame(packet: &Packet) -> BytesMut {
        let mut buf = BytesMut::new();
        PacketCodec.encode(packet, &mut buf).unwrap();
        buf
    }

    /// The link key of the node whose identity key is `key`.
    pub fn link_of(key: &SigningKey) -> LinkSecretKey {
        LinkSecretKey::derive(&key.to_bytes())
    }

    /// Sends frames over a fresh link to the provider at `addr` whose
    /// identity is `to`, as the node whose identity is `me`: a provider
    /// takes packet links only from nodes of the consensus it follows.
    pub async fn send_packets(
        addr: SocketAddr,
        me: &SigningKey,
        to: &SigningKey,
        packets: &[&Packet],
    ) {
        use tokio::io::AsyncWriteExt;
        let mut link = murmur_net::connect(
            addr,
            Purpose::Packets,
            Some(&link_of(me)),
            link_of(to).public(),
            &LinkSettings::default(),
        )
        .await
        .unwrap();
        let mut all = Vec::new();
        for p in packets {
            all.extend_from_slice(&frame(p));
        }
        link.write_all(&all).await.unwrap();
        link.flush().await.unwrap();
        link.shutdown().await.unwrap();
    }

    /// An owner's view of the fetch API (over an encrypted link to the
    /// provider whose identity is `provider`).
    pub struct Owner {
        http: LinkHttpClient,
        addr: SocketAddr,
        key: LinkPublicKey,
        clock: Arc<dyn Clock>,
        nonce: AtomicU64,
    }

    impl Owner {
        pub fn new(addr: SocketAddr, provider: &SigningKey, clock: Arc<dyn Clock>) -> Self {
            Self {
                http: LinkHttpClient::new(
                    Purpose::MailboxApi,
                    LinkSettings::default(),
                    Duration::from_secs(5),
                ),
                addr,
                key: link_of(provider).public().clone(),
                clock,
                nonce: AtomicU64::new(1),
            }
        }

        fn nonce(&self) -> [u8; 16] {
            let mut n = [0u8; 16];
            n[..8].copy_from_slice(&self.nonce.fetch_add(1, Ordering::Relaxed).to_be_bytes());
            n
        }

        async fn post(&self, path: &str, body: Bytes) -> Bytes {
            let (status, body) = self
                .http
                .post(self.addr, &self.key, path, POSTCARD, body, 1 << 20)
                .await
                .unwrap();
            assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
            body
        }

        pub async fn create(&self, key: &SigningKey) -> QueueId {
            let body = create_body(key, self.clock.now_secs(), self.nonce());
            CreateQueueResponse::from_bytes(&self.post("/v1/queues", body).await)
                .unwrap()
                .queue
        }

        pub async fn fetch(&self, key: &SigningKey, queue: QueueId) -> FetchResponse {
            self.fetch_after(key, queue, 0).await
        }

        /// Up to 256 entries numbered above `after`.
        pub async fn fetch_after(
            &self,
            key: &SigningKey,
            queue: QueueId,
            after: u64,
        ) -> FetchResponse {
            let op = OwnerOp::Fetch { after, limit: 256 };
            let body = owner_body(key, queue, op, self.clock.now_secs(), self.nonce());
            OwnerResponse::from_bytes(&self.post("/v1/queue", body).await)
                .unwrap()
                .fetched()
                .unwrap()
        }

        /// Every entry of the queue, page by page.
        pub async fn fetch_all(&self, key: &SigningKey, queue: QueueId) -> Vec<QueueEntry> {
            let mut all: Vec<QueueEntry> = Vec::new();
            loop {
                let after = all.last().map_or(0, |e| e.seq);
                let page = self.fetch_after(key, queue, after).await;
                all.extend(page.entries);
                if !page.more {
                    return all;
                }
            }
        }

        /// Fetches until the queue holds at least `n` entries.
        pub async fn fetch_at_least(
            &self,
            key: &SigningKey,
            queue: QueueId,
            n: usize,
        ) -> FetchResponse {
            let deadline = std::time::Instant::now() + WAIT;
            loop {
                let got = self.fetch(key, queue).await;
                if got.entries.len() >= n {
                    return got;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "timed out waiting for {n} entries (have {})",
                    got.entries.len()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }

        pub async fn delete(&self, key: &SigningKey, queue: QueueId, seqs: Vec<u64>) -> u64 {
            let body = owner_body(
                key,
                queue,
                OwnerOp::Delete { seqs },
                self.clock.now_secs(),
                self.nonce(),
            );
            OwnerResponse::from_bytes(&self.post("/v1/queue", body).await)
                .unwrap()
                .deleted()
                .unwrap()
        }
    }
}
