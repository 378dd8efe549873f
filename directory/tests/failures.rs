//! Authorities that are down, divergent or lying; restarts.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use http::{Request, StatusCode};
use hyper::body::Incoming;
use murmur_directory::{AttemptError, AuthorityPin, DirectoryClient};
use murmur_net::http::{self as h, HttpClient, POSTCARD, ServerLimits};
use murmur_wire::directory::{AuthoritySignature, Signature};
use murmur_wire::ed25519_dalek::SigningKey;
use murmur_wire::{Error as WireError, SignedConsensus, SignedVote, Vote};
use tokio_util::sync::CancellationToken;

fn at(x: u64, offset_ms: i64) -> u64 {
    ((x * EPOCH * 1000) as i64 + offset_ms) as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_down_still_publishes_two_down_keeps_the_last_good() {
    let (clock, e) = clock_at(1_000);
    let mut net = Net::start(3, 2, clock.clone()).await;
    let client = net.client();
    for d in network_descriptors(e, net.now()) {
        assert!(client.upload_descriptor(&d).await.all_accepted());
    }
    all_serve(&net.addrs, e, 3).await;

    // One authority down: the other two still publish epoch e+1, once the
    // compute time (a quarter epoch before the boundary) has come.
    net.stop(2).await;
    set_time_ms(&clock, at(e + 1, -29_000));
    tokio::time::sleep(Duration::from_millis(400)).await;
    set_time_ms(&clock, at(e + 1, -14_000));
    let docs = all_serve(&net.addrs[..2], e + 1, 2).await;
    assert_eq!(docs[0].body, docs[1].body);
    let doc = client.fetch(e + 1, net.now()).await.unwrap();
    assert_eq!(doc.epoch(), e + 1);
    assert_eq!(doc.signed().signatures.len(), 2);

    // Two down: no document for e+2 (one vote is no majority); the client
    // says why for each authority and keeps the last good document.
    net.stop(1).await;
    set_time_ms(&clock, at(e + 2, -29_000));
    tokio::time::sleep(Duration::from_millis(300)).await;
    set_time_ms(&clock, at(e + 2, -14_000));
    tokio::time::sleep(Duration::from_millis(500)).await;
    set_time_ms(&clock, at(e + 2, 1_000));
    let err = client.fetch(e + 2, net.now()).await.unwrap_err();
    assert_eq!(err.attempts.len(), 3, "{err}");
    for a in &err.attempts {
        if a.authority.addr == net.addrs[0] {
            assert!(
                matches!(a.error, AttemptError::Status { status: 404, .. }),
                "{err}"
            );
        } else {
            assert!(matches!(a.error, AttemptError::Unreachable(_)), "{err}");
        }
    }
    let text = err.to_string();
    assert!(text.contains("no document for epoch"), "{text}");
    assert!(text.contains("unreachable"), "{text}");
    // e+1's document is still good during its grace period.
    let last = client.last_good(net.now()).unwrap();
    assert_eq!(last.epoch(), e + 1);

    // The follower, started now, finds e+1's document through
    // /v1/consensus/current and reports why e+2's is missing.
    let watch = murmur_directory::spawn_follower(
        client.clone(),
        Arc::new(clock.clone()),
        net.shutdown.clone(),
    );
    eventually(10, "follower reports the missing document", || async {
        let cur = watch.current()?;
        assert_eq!(cur.epoch(), e + 1);
        watch.last_error().filter(|t| t.contains("epoch"))
    })
    .await;

    // An authority restarted across the boundary serves its published
    // documents again, unchanged.
    net.restart(1).await;
    let before = docs[1].clone();
    let after = served(net.addrs[1], e + 1).await.unwrap();
    assert_eq!(after.body, before.body);
    net.shutdown().await;
}

/// A rogue authority: serves a vote with other parameters and no nodes,
/// and a document with another node set, signed by itself, with forged
/// signatures claiming the honest authorities.
async fn rogue(
    at: SocketAddr,
    key: SigningKey,
    honest: Vec<SigningKey>,
    shutdown: CancellationToken,
) -> SocketAddr {
    let handler = move |req: Request<Incoming>| {
        let key = key.clone();
        let honest = honest.clone();
        async move {
            let path = req.uri().path().to_owned();
            let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
            let Some(epoch) = parts.get(2).and_then(|p| p.parse::<u64>().ok()) else {
                return h::text(StatusCode::NOT_FOUND, "no");
            };
            let mut params = common_params();
            params.mean_delay_us *= 7;
            match parts[1] {
                "votes" => {
                    let vote = Vote {
                        version: 1,
                        epoch,
                        authority: ident(&key),
                        params,
                        descriptors: vec![],
                    };
                    let v = vec![SignedVote::sign(&vote, &key).unwrap()];
                    h::response(StatusCode::OK, POSTCARD, postcard::to_stdvec(&v).unwrap())
                }
                _ => {
                    let (valid_after, valid_until) =
                        murmur_directory::consensus::validity(epoch, EPOCH);
                    let doc = murmur_wire::Consensus {
                        version: murmur_wire::directory::CONSENSUS_VERSION,
                        epoch,
                        valid_after,
                        valid_until,
                        params,
                        mixes: vec![],
                        mailboxes: vec![],
                    };
                    let mut signed = SignedConsensus::sign(&doc, &key).unwrap();
                    for k in &honest {
                        signed.signatures.push(AuthoritySignature {
                            authority: ident(k),
                            signature: Signature([7; 64]),
                        });
                    }
                    h::response(StatusCode::OK, POSTCARD, signed.to_bytes().unwrap())
                }
            }
        }
    };
    let (addr, _) = h::spawn_server(at, handler, ServerLimits::default(), shutdown)
        .await
        .unwrap();
    addr
}

fn common_params() -> murmur_wire::NetworkParams {
    config(std::path::Path::new(".")).network_params()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lying_authority_cannot_make_clients_accept_its_document() {
    let (clock, e) = clock_at(1_000);
    // Authorities 0 and 1 are honest; authority 2 is replaced by a rogue.
    let mut net = Net::start(3, 2, clock.clone()).await;
    net.stop(2).await;
    let rogue_key = net.keys[2].clone();
    // It takes over authority 2's address, so the honest ones talk to it.
    let rogue_addr = rogue(
        net.addrs[2],
        rogue_key.clone(),
        net.keys[..2].to_vec(),
        net.shutdown.clone(),
    )
    .await;
    let endpoints = net.endpoints();
    let client = DirectoryClient::new(
        endpoints.clone(),
        2,
        HttpClient::new(Duration::from_secs(2)),
    )
    .unwrap();
    for d in network_descriptors(e, net.now()) {
        let report = client.upload_descriptor(&d).await;
        assert_eq!(report.accepted.len(), 2, "{report}");
    }

    // The honest two agree (the rogue's vote is outvoted on parameters and
    // nodes) and never carry a signature from the rogue.
    let docs = all_serve(&net.addrs[..2], e, 2).await;
    assert_eq!(docs[0].body, docs[1].body);
    assert!(
        docs[0]
            .signatures
            .iter()
            .all(|s| s.authority != ident(&rogue_key))
    );
    for _ in 0..6 {
        let doc = client.fetch(e, net.now()).await.unwrap();
        assert_eq!(
            doc.signed().body,
            docs[0].body,
            "client accepted the rogue's document"
        );
        assert_eq!(doc.params(), &common_params());
        assert_eq!(doc.layers().iter().map(Vec::len).sum::<usize>(), 9);
    }

    // From the rogue alone: refused as under threshold, forged signatures
    // counted as invalid.
    let only_rogue = DirectoryClient::new(
        vec![
            endpoints[2],
            AuthorityPin {
                addr: "127.0.0.1:1".parse().unwrap(),
                key: endpoints[0].key,
            },
            AuthorityPin {
                addr: "127.0.0.1:1".parse().unwrap(),
                key: endpoints[1].key,
            },
        ],
        2,
        HttpClient::new(Duration::from_secs(2)),
    )
    .unwrap();
    let err = only_rogue.fetch(e, net.now()).await.unwrap_err();
    let rogue_attempt = err
        .attempts
        .iter()
        .find(|a| a.authority.addr == rogue_addr)
        .unwrap();
    assert!(
        matches!(
            rogue_attempt.error,
            AttemptError::Refused(WireError::UnderThreshold {
                valid: 1,
                required: 2,
                invalid: 2
            })
        ),
        "{err}"
    );
    assert!(only_rogue.last_good(net.now()).is_none());

    // The honest authorities took the rogue's vote into account (and
    // outvoted it), and counted its document as divergent.
    for a in &net.addrs[..2] {
        assert!(metric(*a, "murmur_directory_votes_fetched_total").await >= 2.0);
        assert!(metric(*a, "murmur_directory_divergent_documents_total").await >= 1.0);
    }
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_refuses_wrong_epoch_and_expired_documents() {
    let (clock, e) = clock_at(1_000);
    let net = Net::start(1, 1, clock.clone()).await;
    let client = net.client();
    for d in network_descriptors(e, net.now()) {
        assert!(client.upload_descriptor(&d).await.all_accepted());
    }
    all_serve(&net.addrs, e, 1).await;
    // A server that answers every epoch with epoch e's real document.
    let real = served(net.addrs[0], e).await.unwrap().to_bytes().unwrap();
    let handler = move |_req: Request<Incoming>| {
        let real = real.clone();
        async move { h::response(StatusCode::OK, POSTCARD, real) }
    };
    let (replay_addr, _) = h::spawn_server(
        "127.0.0.1:0".parse().unwrap(),
        handler,
        ServerLimits::default(),
        net.shutdown.clone(),
    )
    .await
    .unwrap();
    let replayer = DirectoryClient::new(
        vec![AuthorityPin {
            addr: replay_addr,
            key: ident(&net.keys[0]),
        }],
        1,
        HttpClient::new(Duration::from_secs(2)),
    )
    .unwrap();
    let err = replayer.fetch(e + 1, net.now()).await.unwrap_err();
    assert!(
        matches!(
            err.attempts[0].error,
            AttemptError::Refused(WireError::WrongEpoch { .. })
        ),
        "{err}"
    );
    let late = (e + 1) * EPOCH + EPOCH / 2;
    let err = replayer.fetch(e, late).await.unwrap_err();
    assert!(
        matches!(
            err.attempts[0].error,
            AttemptError::Refused(WireError::Expired { .. })
        ),
        "{err}"
    );
    // A key the client does not pin: under threshold.
    let stranger = DirectoryClient::new(
        vec![AuthorityPin {
            addr: net.addrs[0],
            key: ident(&key(99)),
        }],
        1,
        HttpClient::new(Duration::from_secs(2)),
    )
    .unwrap();
    let err = stranger.fetch(e, net.now()).await.unwrap_err();
    assert!(
        matches!(
            err.attempts[0].error,
            AttemptError::Refused(WireError::UnderThreshold { valid: 0, .. })
        ),
        "{err}"
    );
    net.shutdown().await;
}

/// An authority that shows different votes to different peers (the first
/// asker sees one that lists an extra node, everyone after sees an empty
/// one) is caught: both its votes are ignored, and the
/// honest authorities agree without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_equivocating_authority_is_caught_and_ignored() {
    use std::sync::atomic::{AtomicUsize, Ordering};

    let (clock, e) = clock_at(1_000);
    let mut net = Net::start(3, 2, clock.clone()).await;
    net.stop(2).await;
    let rogue_key = net.keys[2].clone();
    let nodes = network_descriptors(e, net.now());
    // A node only authority 0 knows about: listed only if the rogue's
    // first vote counts.
    let extra = descriptor(200, murmur_wire::Role::Mix, 29_000, e, 3, net.now());
    let mut first_vote = nodes.clone();
    first_vote.push(extra.clone());
    let asked = Arc::new(AtomicUsize::new(0));
    let handler = move |req: Request<Incoming>| {
        let key = rogue_key.clone();
        let first_vote = first_vote.clone();
        let asked = asked.clone();
        async move {
            let path = req.uri().path().to_owned();
            let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
            let epoch = parts.get(2).and_then(|p| p.parse::<u64>().ok());
            match (parts.get(1), epoch) {
                (Some(&"votes"), Some(epoch)) => {
                    let descriptors = if asked.fetch_add(1, Ordering::SeqCst) == 0 {
                        first_vote
                    } else {
                        vec![]
                    };
                    let vote = Vote {
                        version: 1,
                        epoch,
                        authority: ident(&key),
                        params: common_params(),
                        descriptors,
                    };
                    let v = vec![SignedVote::sign(&vote, &key).unwrap()];
                    h::response(StatusCode::OK, POSTCARD, postcard::to_stdvec(&v).unwrap())
                }
                _ => h::text(StatusCode::NOT_FOUND, "no"),
            }
        }
    };
    h::spawn_server(
        net.addrs[2],
        handler,
        ServerLimits::default(),
        net.shutdown.clone(),
    )
    .await
    .unwrap();
    let client = net.client();
    for d in &nodes {
        assert_eq!(client.upload_descriptor(d).await.accepted.len(), 2);
    }
    let http = HttpClient::new(Duration::from_secs(2));
    let (status, _) = http
        .post(
            net.addrs[0],
            "/v1/descriptors",
            POSTCARD,
            extra.to_bytes().unwrap().into(),
            1024,
        )
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);

    let docs = all_serve(&net.addrs[..2], e, 2).await;
    assert_eq!(docs[0].body, docs[1].body);
    let doc = client.fetch(e, net.now()).await.unwrap();
    assert_eq!(doc.layers().iter().map(Vec::len).sum::<usize>(), 9);
    assert!(doc.node(&ident(&key(200)).node_id()).is_none());
    // At least the authority that saw the first vote caught the pair (the
    // other may have published first, from the same votes minus the
    // rogue's, and stopped comparing).
    let mut caught = 0.0;
    for a in &net.addrs[..2] {
        caught += metric(*a, "murmur_directory_equivocations_total").await;
    }
    assert!(caught >= 1.0);
    net.shutdown().await;
}

/// A misconfigured authority (other network parameters) is outvoted: all
/// three sign the majority's document.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_misconfigured_authority_is_outvoted() {
    let (clock, e) = clock_at(1_000);
    let net = Net::start_with(3, 2, clock, |i, cfg| {
        if i == 2 {
            cfg.params.mean_delay_ms = 999;
        }
    })
    .await;
    let client = net.client();
    for d in network_descriptors(e, net.now()) {
        assert!(client.upload_descriptor(&d).await.all_accepted());
    }
    let docs = all_serve(&net.addrs, e, 3).await;
    assert!(docs.windows(2).all(|w| w[0] == w[1]));
    let doc = client.fetch(e, net.now()).await.unwrap();
    assert_eq!(doc.params(), &common_params());
    net.shutdown().await;
}

/// An authority that was down across a boundary catches up on restart:
/// it votes for the current epoch, computes the same document as the
/// others, and adds its signature to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_authority_restarted_after_a_boundary_catches_up() {
    let (clock, e) = clock_at(1_000);
    let mut net = Net::start(3, 2, clock.clone()).await;
    let client = net.client();
    for d in network_descriptors(e, net.now()) {
        assert!(client.upload_descriptor(&d).await.all_accepted());
    }
    all_serve(&net.addrs, e, 3).await;
    net.stop(2).await;
    set_time_ms(&clock, at(e + 1, -14_000));
    all_serve(&net.addrs[..2], e + 1, 2).await;
    // Past the boundary, authority 2 comes back with its data directory.
    set_time_ms(&clock, at(e + 1, 2_000));
    net.restart(2).await;
    let docs = all_serve(&net.addrs, e + 1, 3).await;
    assert!(docs.windows(2).all(|w| w[0] == w[1]));
    let (status, _) = get(net.addrs[2], "/v1/consensus/current").await;
    assert_eq!(status, 200);
    net.shutdown().await;
}
