//! The fetch API on loopback: a deposit through a real final-hop packet,
//! fetched and deleted by its owner; and every refusal with its status.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{CaptureSink, Harness, create_body, owner_body, owner_key};
use http::StatusCode;
use murmur_directory::clock::{Clock, OffsetClock};
use murmur_directory::http::{HttpClient, POSTCARD, ServerLimits, spawn_server};
use murmur_mailbox::{Api, ApiConfig, Mailbox, Metrics, Quota, RedbStore, WriterConfig};
use murmur_wire::mailbox::{
    CreateQueueResponse, FRESHNESS_WINDOW_SECS, MAX_FETCH_LIMIT, OwnerOp, OwnerResponse, QueueItem,
    RequestDigest,
};
use murmur_wire::{MessageId, QueueId};
use tokio_util::sync::CancellationToken;

struct Server {
    _dir: tempfile::TempDir,
    addr: SocketAddr,
    /// `/metrics` and `/healthz` (the operator's listener).
    operator: SocketAddr,
    mailbox: Mailbox,
    sink: Arc<CaptureSink>,
    clock: OffsetClock,
    client: HttpClient,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    async fn start(max_queues: u64) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store =
            Arc::new(RedbStore::open(&dir.path().join("m.redb"), Quota::default()).unwrap());
        let clock = OffsetClock::new();
        let metrics = Arc::new(Metrics::new());
        let sink = Arc::new(CaptureSink::default());
        let (mailbox, _writer) = Mailbox::start(
            store.clone(),
            sink.clone(),
            Arc::new(clock.clone()),
            WriterConfig::default(),
            metrics.clone(),
        )
        .unwrap();
        let api = Arc::new(Api::new(
            store,
            Arc::new(clock.clone()),
            metrics,
            ApiConfig {
                max_queues,
                nonce_cache_capacity: 1000,
            },
        ));
        let shutdown = CancellationToken::new();
        let public = api.clone();
        let (addr, task) = spawn_server(
            "127.0.0.1:0".parse().unwrap(),
            move |req| public.clone().handle(req),
            ServerLimits::default(),
            shutdown.clone(),
        )
        .await
        .unwrap();
        let (operator, _operator_task) = spawn_server(
            "127.0.0.1:0".parse().unwrap(),
            move |req| api.clone().handle_operator(req),
            ServerLimits::default(),
            shutdown.clone(),
        )
        .await
        .unwrap();
        Self {
            _dir: dir,
            addr,
            operator,
            mailbox,
            sink,
            clock,
            client: HttpClient::new(Duration::from_secs(5)),
            shutdown,
            task,
        }
    }

    async fn post(&self, path: &str, body: Bytes) -> (StatusCode, Bytes) {
        self.client
            .post(self.addr, path, POSTCARD, body, 1 << 20)
            .await
            .unwrap()
    }

    fn now(&self) -> u64 {
        self.clock.now_secs()
    }

    async fn create(&self, seed: u8, nonce: u8) -> QueueId {
        let (status, body) = self
            .post(
                "/v1/queues",
                create_body(&owner_key(seed), self.now(), [nonce; 16]),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
        CreateQueueResponse::from_bytes(&body).unwrap().queue
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap();
    }
}

fn page_of(body: &Bytes) -> murmur_wire::mailbox::FetchResponse {
    OwnerResponse::from_bytes(body).unwrap().fetched().unwrap()
}

fn reason(body: &Bytes) -> String {
    String::from_utf8_lossy(body).into_owned()
}

#[tokio::test]
async fn deposit_fetch_delete_and_every_refusal() {
    let s = Server::start(100).await;
    let owner = owner_key(1);
    let q = s.create(1, 1).await;

    // A deposit arrives through a real final-hop packet and is acknowledged.
    let mut h = Harness::new(11);
    let id = MessageId::from_bytes([42; 16]);
    let (dest, delivery, recovery) = h.deposit(q, id, 0x5A);
    s.mailbox.handle_final(dest, delivery);
    s.sink.wait_for(1).await;
    let (hop, packet) = s.sink.take().pop().unwrap();
    assert_eq!(h.open_ack(hop, &packet, &recovery), id);

    // The owner fetches it.
    let fetch = owner_body(
        &owner,
        q,
        OwnerOp::Fetch {
            after: 0,
            limit: 10,
        },
        s.now(),
        [1; 16],
    );
    let (status, body) = s.post("/v1/queue", fetch.clone()).await;
    assert_eq!(status, StatusCode::OK, "{}", reason(&body));
    // The answer names the request it answers.
    assert_eq!(
        OwnerResponse::from_bytes(&body).unwrap().request,
        RequestDigest::of(&fetch)
    );
    let page = page_of(&body);
    assert!(!page.more);
    assert_eq!(page.entries.len(), 1);
    let seq = page.entries[0].seq;
    assert!(matches!(
        &page.entries[0].item,
        QueueItem::Deposit { id: got, body } if *got == id && body.iter().all(|b| *b == 0x5A)
    ));

    // The same request again is a replay.
    let (status, body) = s.post("/v1/queue", fetch).await;
    assert_eq!(status, StatusCode::CONFLICT, "{}", reason(&body));
    assert!(reason(&body).contains("replayed"));

    // Signed by another key.
    let (status, body) = s
        .post(
            "/v1/queue",
            owner_body(
                &owner_key(2),
                q,
                OwnerOp::Fetch {
                    after: 0,
                    limit: 10,
                },
                s.now(),
                [2; 16],
            ),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{}", reason(&body));
    assert!(reason(&body).contains("bad signature"));

    // Stale: too old, and too far in the future.
    for ts in [
        s.now() - FRESHNESS_WINDOW_SECS - 5,
        s.now() + FRESHNESS_WINDOW_SECS + 5,
    ] {
        let (status, body) = s
            .post(
                "/v1/queue",
                owner_body(
                    &owner,
                    q,
                    OwnerOp::Fetch {
                        after: 0,
                        limit: 10,
                    },
                    ts,
                    [3; 16],
                ),
            )
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{}", reason(&body));
        assert!(reason(&body).contains("stale"));
    }

    // Unknown queue.
    let (status, body) = s
        .post(
            "/v1/queue",
            owner_body(
                &owner,
                QueueId::from_bytes([9; 32]),
                OwnerOp::Fetch {
                    after: 0,
                    limit: 10,
                },
                s.now(),
                [4; 16],
            ),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{}", reason(&body));

    // Malformed, empty, oversized, a fetch of nothing, wrong method, wrong path.
    let (status, _) = s
        .post("/v1/queue", Bytes::from_static(b"\xff\xff\xff"))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = s.post("/v1/queue", Bytes::new()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = s.post("/v1/queue", Bytes::from(vec![0u8; 4096])).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    let (status, _) = s
        .post(
            "/v1/queue",
            owner_body(
                &owner,
                q,
                OwnerOp::Fetch { after: 0, limit: 0 },
                s.now(),
                [5; 16],
            ),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = s.client.get(s.addr, "/v1/queue", 1024).await.unwrap();
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    let (status, _) = s.client.get(s.addr, "/nope", 1024).await.unwrap();
    assert_eq!(status, StatusCode::NOT_FOUND);

    // The owner acknowledges (deletes) what it fetched.
    let (status, body) = s
        .post(
            "/v1/queue",
            owner_body(
                &owner,
                q,
                OwnerOp::Delete { seqs: vec![seq] },
                s.now(),
                [6; 16],
            ),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{}", reason(&body));
    assert_eq!(OwnerResponse::from_bytes(&body).unwrap().deleted(), Some(1));
    let (status, body) = s
        .post(
            "/v1/queue",
            owner_body(
                &owner,
                q,
                OwnerOp::Fetch {
                    after: 0,
                    limit: 10,
                },
                s.now(),
                [7; 16],
            ),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(page_of(&body).entries.is_empty());

    // Health and metrics: on the operator's listener, never on the API's.
    for path in ["/healthz", "/metrics"] {
        let (status, _) = s.client.get(s.addr, path, 1024).await.unwrap();
        assert_eq!(status, StatusCode::NOT_FOUND, "{path} on the fetch API");
    }
    let (status, _) = s.client.get(s.operator, "/healthz", 1024).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    let (status, _) = s.client.get(s.operator, "/v1/queues", 1024).await.unwrap();
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "the API on the operator's listener"
    );
    let (status, text) = s.client.get(s.operator, "/metrics", 1 << 20).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    let text = reason(&text);
    for line in [
        "murmur_mailbox_api_errors_total{reason=\"replayed\"} 1",
        "murmur_mailbox_api_errors_total{reason=\"bad_signature\"} 1",
        "murmur_mailbox_api_errors_total{reason=\"stale\"} 2",
        "murmur_mailbox_api_errors_total{reason=\"unknown_queue\"} 1",
        "murmur_mailbox_api_errors_total{reason=\"malformed\"} 3",
        "murmur_mailbox_api_errors_total{reason=\"too_large\"} 1",
        "murmur_mailbox_deposits_total{outcome=\"stored\"} 1",
        "murmur_mailbox_acks_sent_total 1",
        "murmur_mailbox_fetches_total 2",
        "murmur_mailbox_queues 1",
    ] {
        assert!(text.contains(line), "missing {line}:\n{text}");
    }
    // Metrics never carry the queue id.
    assert!(!text.contains(&q.to_string()));

    // The owner deletes the queue; it is gone.
    let (status, _) = s
        .post(
            "/v1/queue",
            owner_body(&owner, q, OwnerOp::DeleteQueue, s.now(), [8; 16]),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = s
        .post(
            "/v1/queue",
            owner_body(
                &owner,
                q,
                OwnerOp::Fetch { after: 0, limit: 1 },
                s.now(),
                [9; 16],
            ),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    s.stop().await;
}

#[tokio::test]
async fn pages_follow_sequence_numbers() {
    let s = Server::start(100).await;
    let owner = owner_key(3);
    let q = s.create(3, 1).await;
    let mut h = Harness::new(12);
    for i in 0..5u8 {
        let (d, del, _) = h.deposit(q, MessageId::from_bytes([i; 16]), i);
        s.mailbox.handle_final(d, del);
    }
    s.sink.wait_for(5).await;
    let mut after = 0;
    let mut seen = Vec::new();
    for nonce in 10u8.. {
        let (status, body) = s
            .post(
                "/v1/queue",
                owner_body(
                    &owner,
                    q,
                    OwnerOp::Fetch { after, limit: 2 },
                    s.now(),
                    [nonce; 16],
                ),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        let page = page_of(&body);
        assert!(page.entries.len() <= 2);
        for e in &page.entries {
            seen.push(e.seq);
            after = e.seq;
        }
        if !page.more {
            break;
        }
    }
    assert_eq!(seen, vec![1, 2, 3, 4, 5]);
    // A limit over the maximum is capped, not refused.
    let (status, body) = s
        .post(
            "/v1/queue",
            owner_body(
                &owner,
                q,
                OwnerOp::Fetch {
                    after: 0,
                    limit: MAX_FETCH_LIMIT * 10,
                },
                s.now(),
                [99; 16],
            ),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page_of(&body).entries.len(), 5);
    s.stop().await;
}

#[tokio::test]
async fn creation_is_signed_fresh_once_and_capped() {
    let s = Server::start(2).await;
    let owner = owner_key(4);
    let body = create_body(&owner, s.now(), [1; 16]);
    let (status, _) = s.post("/v1/queues", body.clone()).await;
    assert_eq!(status, StatusCode::OK);
    let (status, resp) = s.post("/v1/queues", body).await;
    assert_eq!(status, StatusCode::CONFLICT, "{}", reason(&resp));

    // A signature that does not match the key inside.
    let mut tampered = create_body(&owner, s.now(), [2; 16]).to_vec();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    let (status, resp) = s.post("/v1/queues", Bytes::from(tampered)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{}", reason(&resp));

    let (status, _) = s
        .post("/v1/queues", create_body(&owner, s.now() - 1000, [3; 16]))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // Within the window but signed before the provider started: its nonce
    // cache cannot vouch for it, so it is refused as stale.
    let (status, resp) = s
        .post("/v1/queues", create_body(&owner, s.now() - 5, [6; 16]))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(reason(&resp).contains("last start"), "{}", reason(&resp));

    // Two queues for one key are allowed (ids are fresh and unrelated)...
    let a = s.create(4, 4).await;
    assert_ne!(a, QueueId::from_bytes([0; 32]));
    // ...up to the provider's cap.
    let (status, resp) = s
        .post("/v1/queues", create_body(&owner_key(5), s.now(), [5; 16]))
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{}", reason(&resp));
    s.stop().await;
}
