//! Authorities agree on one threshold-signed document per epoch: the
//! bootstrap document and the following epochs', verified by the client and
//! tracked by the follower.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use murmur_directory::spawn_follower;
use murmur_wire::AuthoritySet;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_authorities_agree_on_successive_epochs() {
    let (clock, e) = clock_at(1_000);
    let net = Net::start(3, 2, clock.clone()).await;
    let client = net.client();
    let start = |x: u64| x * EPOCH * 1000;

    // Nodes register with every authority right away (as in devnet).
    for d in network_descriptors(e, net.now()) {
        let report = client.upload_descriptor(&d).await;
        assert!(report.all_accepted(), "{report}");
    }

    // Bootstrap: a document for the current epoch within a few seconds.
    let docs = all_serve(&net.addrs, e, 3).await;
    assert!(
        docs.windows(2).all(|w| w[0] == w[1]),
        "authorities serve different documents"
    );
    let doc = client.fetch(e, net.now()).await.unwrap();
    assert_eq!(doc.epoch(), e);
    assert!(doc.is_routable());
    let sizes: Vec<usize> = doc.layers().iter().map(Vec::len).collect();
    assert_eq!(sizes, vec![3, 3, 3]);
    assert_eq!(doc.mailboxes().len(), 2);
    assert_eq!(doc.document().valid_after, e * EPOCH);
    assert_eq!(doc.document().valid_until, (e + 1) * EPOCH + EPOCH / 2);

    let shutdown = net.shutdown.clone();
    let mut watch = spawn_follower(client.clone(), Arc::new(clock.clone()), shutdown.clone());
    eventually(10, "follower's first document", || async {
        watch.current().filter(|c| c.epoch() == e).map(|_| ())
    })
    .await;
    assert!(watch.last_error().is_none());

    // Regular rounds for the next two epochs, each published before it starts.
    for x in [e + 1, e + 2] {
        // Half an epoch before x starts: vote time.
        set_time_ms(&clock, start(x) - EPOCH * 1000 / 2 + 500);
        let docs = all_serve(&net.addrs, x, 3).await;
        assert!(docs.windows(2).all(|w| w[0] == w[1]));
        assert!(
            net.now() < x * EPOCH,
            "published only after the epoch began"
        );
        let doc = client.fetch(x, net.now()).await.unwrap();
        assert_eq!(doc.epoch(), x);
        let sizes: Vec<usize> = doc.layers().iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![3, 3, 3]);
        // A document signed by exactly k of the authorities verifies too.
        let mut two = docs[0].clone();
        two.signatures.truncate(2);
        let set = client.authorities().clone();
        two.verify(&set, net.now(), Some(x)).unwrap();
        let strict = AuthoritySet::new(set.keys().to_vec(), 3).unwrap();
        assert!(two.verify(&strict, net.now(), Some(x)).is_err());

        // The follower fetches it ahead of the boundary and switches at it.
        set_time_ms(&clock, start(x) - 10_000);
        eventually(10, "follower prefetches the next document", || async {
            watch.get(x).map(|_| ())
        })
        .await;
        set_time_ms(&clock, start(x) + 200);
        tokio::time::timeout(Duration::from_secs(10), async {
            while watch.current().map(|c| c.epoch()) != Some(x) {
                watch.changed().await.unwrap();
            }
        })
        .await
        .expect("follower switched at the boundary");
        assert_eq!(
            watch.get(x - 1).map(|d| d.epoch()),
            Some(x - 1),
            "previous kept"
        );
    }

    // A published document never changes: the bootstrap one is still served as it was.
    let again = served(net.addrs[0], e).await.unwrap();
    assert_eq!(again.body, docs_body(&net, e).await);
    net.shutdown().await;
    // The follower stops with its shutdown token, and says so.
    let stopped = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Err(e) = watch.changed().await {
                return e;
            }
        }
    })
    .await
    .unwrap();
    assert!(matches!(stopped, murmur_directory::Error::FollowerStopped));
}

async fn docs_body(net: &Net, e: u64) -> Vec<u8> {
    served(net.addrs[1], e).await.unwrap().body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_authority_works() {
    let (clock, e) = clock_at(1_000);
    let net = Net::start(1, 1, clock.clone()).await;
    let client = net.client();
    for d in network_descriptors(e, net.now()) {
        assert!(client.upload_descriptor(&d).await.all_accepted());
    }
    all_serve(&net.addrs, e, 1).await;
    let doc = client.fetch(e, net.now()).await.unwrap();
    assert!(doc.is_routable());
    assert_eq!(client.last_good(net.now()).unwrap().epoch(), e);

    set_time_ms(&clock, (e + 1) * EPOCH * 1000 - EPOCH * 1000 / 2 + 100);
    all_serve(&net.addrs, e + 1, 1).await;
    let next = client.fetch(e + 1, net.now()).await.unwrap();
    assert_eq!(next.epoch(), e + 1);
    // current is still epoch e's until the boundary.
    let (status, body) = get(net.addrs[0], "/v1/consensus/current").await;
    assert_eq!(status, 200);
    let cur = murmur_wire::SignedConsensus::from_bytes(&body).unwrap();
    assert_eq!(cur.body, doc.signed().body);
    net.shutdown().await;
}

/// The devnet case with default timing: three authorities with one-hour
/// epochs, nodes registering right after they start, and a follower that
/// must get a routable document within seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devnet_bootstrap_with_one_hour_epochs_and_default_timing() {
    let mut listeners = Vec::new();
    for _ in 0..3 {
        listeners.push(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap());
    }
    let addrs: Vec<_> = listeners.iter().map(|l| l.local_addr().unwrap()).collect();
    let keys: Vec<_> = (0..3u8).map(|i| key(40 + i)).collect();
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let clock = Arc::new(murmur_net::clock::SystemClock);
    let mut handles = Vec::new();
    for (i, listener) in listeners.into_iter().enumerate() {
        let mut cfg = murmur_directory::AuthorityConfig::new(dirs[i].path());
        admit_test_nodes(&mut cfg);
        cfg.threshold = 2;
        cfg.peers = (0..3)
            .filter(|j| *j != i)
            .map(|j| murmur_directory::AuthorityPin {
                addr: addrs[j],
                key: ident(&keys[j]),
            })
            .collect();
        handles.push(
            murmur_directory::start_authority_on(
                listener,
                cfg,
                keys[i].clone(),
                clock.clone(),
                shutdown.clone(),
            )
            .await
            .unwrap(),
        );
    }
    let client = murmur_directory::DirectoryClient::new(
        handles.iter().map(|h| h.endpoint()).collect(),
        2,
        murmur_net::http::HttpClient::new(Duration::from_secs(2)),
    )
    .unwrap();
    let now = murmur_net::clock::Clock::now_secs(clock.as_ref());
    let e = now / 3600;
    for d in network_descriptors(e, now) {
        assert!(client.upload_descriptor(&d).await.all_accepted());
    }
    let watch = spawn_follower(client.clone(), clock.clone(), shutdown.clone());
    let doc = eventually(20, "a routable bootstrap document", || async {
        watch.current().filter(|d| d.is_routable())
    })
    .await;
    // (The hour may have turned meanwhile.)
    assert!(doc.epoch() >= e);
    assert!(doc.signed().signatures.len() >= 2);
    shutdown.cancel();
    for h in handles {
        h.wait().await;
    }
}
