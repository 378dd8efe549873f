//! Security checks against a whole network (devnet, in this process) and
//! real clients: only a queue's owner reads or deletes it and a captured
//! owner request cannot be replayed; clients and nodes refuse consensus
//! documents that a threshold of their pinned authorities did not sign.
//!
//! The other security checks live with the code they check (the threat
//! model, `docs/threat-model.md`, lists them all):
//! - `mailbox/tests/api.rs`: every refusal of the fetch API (bad signature,
//!   stale, replayed, unknown queue, oversized, malformed) and the nonce
//!   cache across a restart (`creation_is_signed_fresh_once_and_capped`);
//! - `directory/tests/failures.rs`: the directory client refuses documents
//!   under threshold, for the wrong epoch, expired, or forged by a lying
//!   authority; `wire/tests/directory.rs`: the same at the verification
//!   function;
//! - `directory/tests/hostile.rs`: authorities refuse descriptors with bad
//!   signatures, oversized, undecodable, stale;
//! - `node/tests/engine.rs`: replays and garbage frames at the engine;
//! - `cli/tests/logs.rs`: nothing secret is logged at info;
//! - `cli/tests/e2e.rs`: mailboxes and mixes store neither plaintext nor
//!   the sender's identity.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use murmur::devnet::{Devnet, DevnetOptions};
use murmur_client::network::{AuthorityEntry, follow};
use murmur_client::{Body, Client, ClientOptions, Passphrase};
use murmur_net::LinkSettings;
use murmur_net::clock::{Clock, SystemClock};
use murmur_net::http::LinkHttpClient;
use murmur_net::http::{HttpClient, POSTCARD};
use murmur_wire::ed25519_dalek::SigningKey;
use murmur_wire::link::Purpose;
use murmur_wire::mailbox::{
    MAILBOX_API_VERSION, OwnerOp, OwnerRequest, OwnerResponse, SignedOwnerRequest,
};
use murmur_wire::{IdentityKey, QueueId};
use tokio_util::sync::CancellationToken;

fn options(dir: &std::path::Path) -> DevnetOptions {
    DevnetOptions {
        dir: dir.join("devnet"),
        width: 2,
        mean_delay_ms: 10,
        max_delay_ms: 500,
        client_rate: 0.0,
        client_loop_rate: 0.0,
        mix_loop_rate: 0.0,
        ..DevnetOptions::default()
    }
}

fn client_options() -> ClientOptions {
    ClientOptions {
        fetch_interval: Duration::from_millis(50),
        ..ClientOptions::default()
    }
}

/// The passphrase of the test clients' databases.
fn passphrase() -> Passphrase {
    Passphrase::new("test passphrase")
}

fn signed(key: &SigningKey, queue: QueueId, op: OwnerOp, timestamp: u64, nonce: u8) -> Bytes {
    let req = OwnerRequest {
        version: MAILBOX_API_VERSION,
        queue,
        op,
        timestamp,
        nonce: [nonce; 16],
    };
    Bytes::from(
        SignedOwnerRequest::sign(&req, key)
            .unwrap()
            .to_bytes()
            .unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_owner_reads_or_deletes_a_queue_and_requests_do_not_replay() {
    let dir = tempfile::tempdir().unwrap();
    let devnet = Devnet::start(options(dir.path())).await.unwrap();
    devnet.wait_ready(Duration::from_secs(60)).await.unwrap();
    let token = CancellationToken::new();
    let consensus = follow(devnet.network(), Duration::from_secs(30), token.clone())
        .await
        .unwrap();
    let alice = Client::create(
        &dir.path().join("alice"),
        "alice",
        consensus.clone(),
        None,
        client_options(),
        &passphrase(),
    )
    .await
    .unwrap();
    let bob = Client::create(
        &dir.path().join("bob"),
        "bob",
        consensus.clone(),
        None,
        client_options(),
        &passphrase(),
    )
    .await
    .unwrap();
    bob.accept(&alice.invite(None).await.unwrap(), None)
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(30), async {
        while !alice.contacts().unwrap().iter().any(|c| c.established) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap();
    // Bob goes offline; two messages wait in his queue for Alice.
    let inbox = bob.inbox_queue_of("alice").unwrap();
    let owned = bob
        .owned_queues()
        .unwrap()
        .into_iter()
        .find(|q| q.queue == inbox)
        .unwrap();
    bob.shutdown().await;
    let mut ids = Vec::new();
    for t in ["first", "second"] {
        let h = alice.send_text("bob", t).await.unwrap();
        ids.push(h.id());
        tokio::time::timeout(Duration::from_secs(60), h.delivered())
            .await
            .unwrap()
            .unwrap();
    }

    let c = consensus.current().unwrap();
    let provider = c.node(&owned.provider).unwrap();
    let api = provider.http_addr.unwrap();
    let key = provider.link_key.clone();
    let http = LinkHttpClient::new(
        Purpose::MailboxApi,
        LinkSettings::default(),
        Duration::from_secs(5),
    );
    let post = |body: Bytes| {
        let (http, key) = (http.clone(), key.clone());
        async move {
            let (status, body) = http
                .post(api, &key, "/v1/queue", POSTCARD, body, 1 << 20)
                .await
                .unwrap();
            (status.as_u16(), String::from_utf8_lossy(&body).into_owned())
        }
    };
    let now = SystemClock.now_secs();
    let owner = SigningKey::from_bytes(&owned.owner_secret);
    let stranger = SigningKey::from_bytes(&[7; 32]);

    // Anyone who knows the queue id (the contact, the provider's
    // neighbours) but not the owner key: no reading, no deleting.
    let fetch = OwnerOp::Fetch {
        after: 0,
        limit: 10,
    };
    for (n, op) in [
        fetch.clone(),
        OwnerOp::Delete {
            seqs: (1..=256).collect(),
        },
        OwnerOp::DeleteQueue,
    ]
    .into_iter()
    .enumerate()
    {
        let (status, reason) = post(signed(&stranger, inbox, op.clone(), now, n as u8)).await;
        assert_eq!(status, 401, "{op:?} by a stranger: {reason}");
        assert!(reason.contains("bad signature"), "{reason}");
    }
    // The owner's own request, captured and sent again: refused.
    let genuine = signed(&owner, inbox, fetch.clone(), now, 100);
    let (status, body) = http
        .post(api, &key, "/v1/queue", POSTCARD, genuine.clone(), 1 << 20)
        .await
        .unwrap();
    assert_eq!(status.as_u16(), 200);
    assert_eq!(
        OwnerResponse::from_bytes(&body)
            .unwrap()
            .fetched()
            .unwrap()
            .entries
            .len(),
        2
    );
    let (status, reason) = post(genuine).await;
    assert_eq!(status, 409, "{reason}");
    assert!(reason.contains("replayed"), "{reason}");
    // Signed by the owner but old (a request captured earlier): refused.
    let (status, reason) = post(signed(&owner, inbox, OwnerOp::DeleteQueue, now - 600, 101)).await;
    assert_eq!(status, 401, "{reason}");
    assert!(reason.contains("stale"), "{reason}");

    // Nothing was deleted: Bob, back online, reads both messages once.
    let bob = Client::open(
        &dir.path().join("bob"),
        consensus.clone(),
        client_options(),
        &passphrase(),
    )
    .await
    .unwrap();
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let got: Vec<_> = bob.inbox(false).unwrap();
            let texts: Vec<&str> = got
                .iter()
                .filter_map(|(_, r)| match &r.body {
                    Body::Text(t) => Some(t.as_str()),
                    _ => None,
                })
                .collect();
            if texts.len() >= 2 {
                assert_eq!(texts, ["first", "second"]);
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap();

    alice.shutdown().await;
    bob.shutdown().await;
    token.cancel();
    devnet.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_and_nodes_refuse_documents_without_a_threshold_of_their_pins() {
    let dir = tempfile::tempdir().unwrap();
    let devnet = Devnet::start(options(dir.path())).await.unwrap();
    devnet.wait_ready(Duration::from_secs(60)).await.unwrap();
    let real = devnet.network().clone();
    let stranger =
        |seed: u8| IdentityKey::from(&SigningKey::from_bytes(&[seed; 32]).verifying_key());

    // A client that pins two of the three real authorities and a stranger,
    // with a threshold of three: the real documents carry at most two
    // signatures it accepts.
    let mut short = real.clone();
    short.threshold = 3;
    short.authorities[2].key = stranger(9).to_base58();
    let token = CancellationToken::new();
    let err = follow(&short, Duration::from_secs(5), token.clone())
        .await
        .err()
        .expect("a document under threshold was accepted");
    assert!(
        err.to_string()
            .contains("2 valid signature(s) from pinned authorities, 3 required"),
        "{err}"
    );
    // The command says so, and leaves no client behind.
    let file = dir.path().join("short.toml");
    std::fs::write(&file, short.to_toml()).unwrap();
    let home = dir.path().join("carol");
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_murmur"))
        .env("MURMUR_PASSPHRASE", "test passphrase")
        .arg("--home")
        .arg(&home)
        .args(["init", "--network", file.to_str().unwrap()])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("required"), "{stderr}");
    assert!(!home.join("client.redb").exists());
    // Pinning only strangers at the real addresses: nothing verifies.
    let mut strangers = real.clone();
    for (i, a) in strangers.authorities.iter_mut().enumerate() {
        *a = AuthorityEntry {
            address: a.address,
            key: stranger(20 + i as u8).to_base58(),
        };
    }
    assert!(
        follow(&strangers, Duration::from_secs(3), token.clone())
            .await
            .is_err()
    );

    // A mix node pinning strangers' keys at the real addresses never takes
    // the network's consensus: it stays unhealthy ("no consensus yet").
    let node_dir = dir.path().join("rogue-mix");
    let mut cfg = murmur_mixnode::MixNodeConfig::new(&node_dir);
    cfg.listen_addr = "127.0.0.1:0".parse().unwrap();
    cfg.http_addr = "127.0.0.1:0".parse().unwrap();
    cfg.network.epoch_secs = 600;
    cfg.keys.grace_secs = 300;
    cfg.replay.expected_packet_rate = 10.0;
    cfg.directory.threshold = 2;
    cfg.directory.authorities = strangers
        .authorities
        .iter()
        .map(|a| murmur_directory::AuthorityPin {
            addr: a.address,
            key: murmur_wire::IdentityKey::from_base58(&a.key).unwrap(),
        })
        .collect();
    let stop = CancellationToken::new();
    let node = murmur_mixnode::start_mixnode(
        cfg,
        SigningKey::from_bytes(&[33; 32]),
        Arc::new(SystemClock),
        stop.clone(),
    )
    .await
    .unwrap();
    let http = HttpClient::new(Duration::from_secs(2));
    for _ in 0..15 {
        let (status, body) = http.get(node.http_addr, "/healthz", 4096).await.unwrap();
        assert_eq!(status.as_u16(), 503);
        assert!(
            String::from_utf8_lossy(&body).contains("no consensus"),
            "{}",
            String::from_utf8_lossy(&body)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // While the network's own nodes are fine.
    devnet.wait_ready(Duration::from_secs(10)).await.unwrap();

    stop.cancel();
    node.wait().await;
    token.cancel();
    devnet.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_observer_of_a_clients_link_sees_the_same_rate_whether_it_sends_or_not() {
    // λ = 20 packets/s of send stream, λ_L = 2 of loops: an observer of
    // Alice's link counts packets; real ones replace drop cover.
    const RATE: f64 = 22.0;
    const WINDOW: Duration = Duration::from_secs(3);
    let dir = tempfile::tempdir().unwrap();
    let devnet = Devnet::start(DevnetOptions {
        client_rate: 20.0,
        client_loop_rate: 2.0,
        ..options(dir.path())
    })
    .await
    .unwrap();
    devnet.wait_ready(Duration::from_secs(60)).await.unwrap();
    let token = CancellationToken::new();
    let consensus = follow(devnet.network(), Duration::from_secs(30), token.clone())
        .await
        .unwrap();
    let alice = Client::create(
        &dir.path().join("alice"),
        "alice",
        consensus.clone(),
        None,
        client_options(),
        &passphrase(),
    )
    .await
    .unwrap();
    let bob = Client::create(
        &dir.path().join("bob"),
        "bob",
        consensus.clone(),
        None,
        client_options(),
        &passphrase(),
    )
    .await
    .unwrap();
    bob.accept(&alice.invite(None).await.unwrap(), None)
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(30), async {
        while !alice.contacts().unwrap().iter().any(|c| c.established) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap();
    // Every packet Alice puts on her links, whatever it is.
    let packets = |c: &Client| {
        let s = c.stats();
        s.real_sent + s.retransmissions + s.drop_cover_sent + s.loop_cover_sent
    };

    let (p0, r0) = (packets(&alice), alice.stats().real_sent);
    tokio::time::sleep(WINDOW).await;
    let (p1, r1) = (packets(&alice), alice.stats().real_sent);
    // A file of about 100 packets: more than the window can carry.
    let file = dir.path().join("f.bin");
    std::fs::write(&file, vec![0x42u8; 200_000]).unwrap();
    let h = alice.send_file("bob", &file).await.unwrap();
    assert!(h.progress().total >= 100);
    tokio::time::sleep(WINDOW).await;
    let (p2, r2) = (packets(&alice), alice.stats().real_sent);

    let (idle, busy) = ((p1 - p0) as f64, (p2 - p1) as f64);
    let expected = RATE * WINDOW.as_secs_f64();
    // Poisson counts: four standard deviations either way. Without cover
    // the busy window would carry about 60 packets more than the idle one.
    let tolerance = 4.0 * expected.sqrt();
    assert_eq!(r1 - r0, 0, "real packets while idle");
    assert!(r2 - r1 >= 30, "the file did not go out on the send stream");
    for (what, n) in [("idle", idle), ("sending", busy)] {
        assert!(
            (n - expected).abs() <= tolerance,
            "{what}: {n} packets in {WINDOW:?}, expected {expected} ± {tolerance:.0}"
        );
    }
    println!(
        "packets on Alice's link in {WINDOW:?}: idle {idle}, while sending a file {busy} \
         ({} of them real); expected {expected}",
        r2 - r1
    );
    alice.shutdown().await;
    bob.shutdown().await;
    token.cancel();
    devnet.shutdown().await;
}
