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
use murmur_mailbox::{Api, ApiConfig, Mailbox, Metrics, Quota, RedbStore, WriterConfig};
use murmur_net::clock::{Clock, OffsetClock};
use murmur_net::http::{HttpClient, POSTCARD, ServerLimits, spawn_server};
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
    api: Arc<Api>,
    metrics: Arc<Metrics>,
    mailbox: Mailbox,
    sink: Arc<CaptureSink>,
    clock: OffsetClock,
    client: HttpClient,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    async fn start(max_queues: u64) -> Self {
        Self::start_with(
            ApiConfig {
                max_queues,
                nonce_cache_capacity: 1000,
                ..ApiConfig::default()
            },
            ServerLimits::default(),
        )
        .await
    }

    async fn start_with(config: ApiConfig, limits: ServerLimits) -> Self {
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
            metrics.clone(),
            config,
        ));
        let shutdown = CancellationToken::new();
        let handler_api = api.clone();
        let (addr, task) = spawn_server(
            "127.0.0.1:0".parse().unwrap(),
            move |req| handler_api.clone().handle(req),
            limits,
            shutdown.clone(),
        )
        .await
        .unwrap();
        let operator_api = api.clone();
        let (operator, _operator_task) = spawn_server(
            "127.0.0.1:0".parse().unwrap(),
            move |req| operator_api.clone().handle_operator(req),
            ServerLimits::default(),
            shutdown.clone(),
        )
        .await
        .unwrap();
        Self {
            _dir: dir,
            addr,
            operator,
            api,
            metrics,
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

/// Percentile `p` (0..=100) of sorted `xs`.
fn percentile(xs: &[Duration], p: usize) -> Duration {
    let i = (xs.len() * p / 100).min(xs.len().saturating_sub(1));
    xs[i]
}

const FLOOD_RATE: u64 = 830;
const FLOOD: Duration = Duration::from_secs(5);
const HONEST_OWNERS: u8 = 20;
/// The stated bound on honest owners' p99 latency during the flood: a
/// generous one for a loaded 2-core CI machine (measured figures are in
/// docs/mailbox.md).
const P99_BOUND: Duration = Duration::from_millis(1500);

/// The attack, scaled: one owner floods signed requests (over three
/// of its queues) at 830 a second — the rate that filled the old single
/// 200 000-entry replay cache in 240 s and then had every user refused —
/// against a cache of 2000, which it overflows within 2.5 s. The other
/// owners keep being served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_830_per_second_signed_flood_leaves_other_owners_served() {
    let s = Arc::new(
        Server::start_with(
            ApiConfig {
                max_queues: 100,
                nonce_cache_capacity: 2000,
                create_burst_per_address: 100,
                ..ApiConfig::default()
            },
            // Every client here is on 127.0.0.1: room for all connections.
            ServerLimits {
                max_connections_per_address: 64,
                ..ServerLimits::default()
            },
        )
        .await,
    );
    let flood_queues: Vec<(u8, QueueId)> = {
        let mut v = Vec::new();
        for seed in 200..203u8 {
            v.push((seed, s.create(seed, seed).await));
        }
        v
    };
    let mut honest = Vec::new();
    for seed in 1..=HONEST_OWNERS {
        honest.push((seed, s.create(seed, seed).await));
    }

    let started = std::time::Instant::now();
    let until = started + FLOOD;
    // The flood: 8 senders, each signing a fresh request (timestamp now,
    // new nonce) per send, paced together at FLOOD_RATE.
    let mut flooders = Vec::new();
    for t in 0..8u64 {
        let s = s.clone();
        let queues = flood_queues.clone();
        flooders.push(tokio::spawn(async move {
            let (mut sent, mut ok, mut throttled) = (0u64, 0u64, 0u64);
            let per_task = FLOOD_RATE as f64 / 8.0;
            while std::time::Instant::now() < until {
                let due = (started.elapsed().as_secs_f64() * per_task) as u64;
                if sent >= due {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    continue;
                }
                let (seed, q) = queues[(sent as usize + t as usize) % queues.len()];
                let mut nonce = [0u8; 16];
                nonce[..8].copy_from_slice(&sent.to_be_bytes());
                nonce[8] = t as u8;
                nonce[9] = 0xf1;
                let body = owner_body(
                    &owner_key(seed),
                    q,
                    OwnerOp::Fetch { after: 0, limit: 1 },
                    s.now(),
                    nonce,
                );
                let (status, _) = s.post("/v1/queue", body).await;
                sent += 1;
                match status {
                    StatusCode::OK => ok += 1,
                    StatusCode::TOO_MANY_REQUESTS => throttled += 1,
                    other => panic!("flood request got {other}"),
                }
            }
            (sent, ok, throttled)
        }));
    }
    // The other owners: each fetches every 100 ms, as a client does.
    let mut owners = Vec::new();
    for (seed, q) in honest {
        let s = s.clone();
        owners.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut first = None;
            let mut n = 0u8;
            tokio::time::sleep(Duration::from_millis(u64::from(seed) * 5)).await;
            while std::time::Instant::now() < until {
                n = n.wrapping_add(1);
                let body = owner_body(
                    &owner_key(seed),
                    q,
                    OwnerOp::Fetch {
                        after: 0,
                        limit: 10,
                    },
                    s.now(),
                    [n; 16],
                );
                first.get_or_insert_with(|| body.clone());
                let t = std::time::Instant::now();
                let (status, resp) = s.post("/v1/queue", body).await;
                latencies.push(t.elapsed());
                assert_eq!(status, StatusCode::OK, "owner {seed}: {}", reason(&resp));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            (latencies, first.unwrap())
        }));
    }
    let (mut sent, mut ok, mut throttled) = (0, 0, 0);
    for f in flooders {
        let (a, b, c) = f.await.unwrap();
        sent += a;
        ok += b;
        throttled += c;
    }
    let mut latencies = Vec::new();
    let mut first_honest = None;
    for o in owners {
        let (l, first) = o.await.unwrap();
        latencies.extend(l);
        first_honest.get_or_insert(first);
    }
    latencies.sort();
    let [scope_full, cache_full, global] = s.metrics.nonce_evictions();
    let (p50, p99, max) = (
        percentile(&latencies, 50),
        percentile(&latencies, 99),
        *latencies.last().unwrap(),
    );
    println!(
        "| signed flood: {sent} requests in {FLOOD:?} ({:.0}/s; {ok} served, {throttled} throttled) \
         over 3 queues of one owner, cache 2000 / 1024 per queue | {} requests of {HONEST_OWNERS} other owners: \
         all served, p50 {p50:.1?}, p99 {p99:.1?}, max {max:.1?} (bound {P99_BOUND:?}) | evictions: \
         scope_full {scope_full}, cache_full {cache_full}, global {global} |",
        sent as f64 / FLOOD.as_secs_f64(),
        latencies.len(),
    );
    // The flood was big enough to fill the old cache (it sent more than
    // the cache holds within the window), and was paid for by the flooder.
    assert!(
        sent > 2000,
        "the flood did not reach the cache's size: {sent}"
    );
    assert!(scope_full + cache_full > 0);
    assert_eq!(global, 0, "no owner outside the flood paid for it");
    assert!(latencies.len() >= usize::from(HONEST_OWNERS) * 20);
    assert!(p99 < P99_BOUND, "p99 {p99:?}");
    assert_eq!(s.metrics.api_errors("busy"), 0);
    // The other owners' requests were never forgotten: a replay of one
    // made at the start of the flood is still recognised.
    let (status, resp) = s.post("/v1/queue", first_honest.unwrap()).await;
    assert_eq!(status, StatusCode::CONFLICT, "{}", reason(&resp));
    Arc::try_unwrap(s).ok().unwrap().stop().await;
}

/// A raw POST from a chosen loopback address (the server's per-address
/// budget counts by source address). Returns the status code.
async fn post_from(local: &str, addr: SocketAddr, path: &str, body: &[u8]) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{local}:0").parse().unwrap()).unwrap();
    let mut stream = socket.connect(addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: {POSTCARD}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    let mut out = Vec::new();
    stream.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out);
    text.split(' ').nth(1).unwrap().parse().unwrap()
}

#[tokio::test]
async fn queue_creation_is_rate_limited_per_address_and_in_total() {
    let s = Server::start_with(
        ApiConfig {
            max_queues: 100,
            create_burst_per_address: 5,
            create_per_address_per_hour: 3600,
            create_burst: 8,
            create_per_hour: 3600,
            ..ApiConfig::default()
        },
        ServerLimits::default(),
    )
    .await;
    let body = |seed: u8| create_body(&owner_key(seed), s.now(), [seed; 16]);
    // 127.0.0.1 creates its five, then is refused — before its signature
    // is even checked.
    for seed in 1..=5 {
        assert_eq!(
            post_from("127.0.0.1", s.addr, "/v1/queues", &body(seed)).await,
            200
        );
    }
    assert_eq!(
        post_from("127.0.0.1", s.addr, "/v1/queues", &body(6)).await,
        429
    );
    let mut forged = body(7).to_vec();
    let last = forged.len() - 1;
    forged[last] ^= 1;
    assert_eq!(
        post_from("127.0.0.1", s.addr, "/v1/queues", &forged).await,
        429
    );
    assert_eq!(s.metrics.api_errors("rate_limited"), 2);
    // Another address still can, until the provider's total of 8 is spent.
    for seed in 11..=13 {
        assert_eq!(
            post_from("127.0.0.2", s.addr, "/v1/queues", &body(seed)).await,
            200
        );
    }
    assert_eq!(
        post_from("127.0.0.2", s.addr, "/v1/queues", &body(14)).await,
        503
    );
    assert_eq!(s.metrics.api_errors("busy"), 1);
    // The budgets refill with time (one a second here).
    s.clock.advance(Duration::from_secs(5));
    assert_eq!(
        post_from("127.0.0.2", s.addr, "/v1/queues", &body(15)).await,
        200
    );
    assert_eq!(
        post_from("127.0.0.1", s.addr, "/v1/queues", &body(16)).await,
        200
    );

    // An owner's request marks its queue as used, for the reaper.
    let q = s.create(30, 30).await;
    let _ = s.api.queue_usage().drain();
    let fetch = owner_body(
        &owner_key(30),
        q,
        OwnerOp::Fetch { after: 0, limit: 1 },
        s.now(),
        [9; 16],
    );
    assert_eq!(s.post("/v1/queue", fetch).await.0, StatusCode::OK);
    let used = s.api.queue_usage().drain();
    assert_eq!(used, vec![(q, s.now())]);
    s.stop().await;
}
