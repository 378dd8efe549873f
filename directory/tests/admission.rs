//! Who may be listed: the operator's signed allow-list (the default), open
//! mode's per-address and per-subnet limits, and the reachability probe
//! before a vote — against a Sybil flood of a thousand descriptors.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use murmur_directory::admission::{AdmissionList, ReachabilityProbe};
use murmur_directory::config::AdmissionMode;
use murmur_directory::{AuthorityConfig, AuthorityHandle, start_authority_with_probe};
use murmur_net::clock::Clock;
use murmur_net::http::{HttpClient, POSTCARD};
use murmur_wire::ed25519_dalek::SigningKey;
use murmur_wire::{Descriptor, EpochKey, IdentityKey, Role, SignedDescriptor, SphinxPublicKey};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const SYBILS: u16 = 1000;

/// A node key from a 16-bit number (distinct from `common::key`'s seeds).
fn sybil_key(i: u16) -> SigningKey {
    let mut seed = [0xa5u8; 32];
    seed[..2].copy_from_slice(&i.to_be_bytes());
    SigningKey::from_bytes(&seed)
}

fn mix_at(k: &SigningKey, addr: SocketAddr, epoch: u64, published_at: u64) -> SignedDescriptor {
    let d = Descriptor {
        version: murmur_wire::directory::DESCRIPTOR_VERSION,
        identity: IdentityKey::from(&k.verifying_key()),
        role: Role::Mix,
        packet_addr: addr,
        http_addr: None,
        link_key: murmur_wire::LinkSecretKey::derive(&k.to_bytes())
            .public()
            .clone(),
        sphinx_keys: (epoch..epoch + 3)
            .map(|e| EpochKey {
                epoch: e,
                key: SphinxPublicKey([e as u8; 32]),
            })
            .collect(),
        published_at,
    };
    SignedDescriptor::sign(&d, k).unwrap()
}

async fn post(http: &HttpClient, addr: SocketAddr, d: &SignedDescriptor) -> u16 {
    http.post(
        addr,
        "/v1/descriptors",
        POSTCARD,
        Bytes::from(d.to_bytes().unwrap()),
        4096,
    )
    .await
    .unwrap()
    .0
    .as_u16()
}

async fn refused(addr: SocketAddr, reason: &str) -> f64 {
    metric(
        addr,
        &format!("murmur_directory_descriptors_refused_total{{reason=\"{reason}\"}}"),
    )
    .await
}

/// A single authority with the default admission (allow-list, probe on)
/// but for `tweak`, and with `probe` as its reachability probe if given.
async fn authority(
    dir: &std::path::Path,
    clock: &murmur_net::clock::OffsetClock,
    probe: Option<Arc<dyn ReachabilityProbe>>,
    tweak: impl FnOnce(&mut AuthorityConfig),
    stop: &CancellationToken,
) -> Result<AuthorityHandle, murmur_directory::Error> {
    let mut cfg = AuthorityConfig::new(dir);
    cfg.epoch_secs = EPOCH;
    cfg.timing.bootstrap_window_ms = 500;
    cfg.timing.tick_ms = 50;
    cfg.admission.probe_retry_secs = 1;
    tweak(&mut cfg);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let probe = probe.unwrap_or_else(|| {
        Arc::new(murmur_directory::admission::LinkHandshakeProbe {
            timeout: Duration::from_millis(cfg.admission.probe_timeout_ms),
        })
    });
    start_authority_with_probe(
        listener,
        cfg,
        key(1),
        Arc::new(clock.clone()),
        probe,
        stop.clone(),
    )
    .await
}

/// Node ids in the document `auth` publishes for `epoch`.
async fn listed(auth: &AuthorityHandle, epoch: u64) -> Vec<IdentityKey> {
    let doc = eventually(15, "a document", || async {
        served(auth.addr, epoch).await
    })
    .await;
    let c: murmur_wire::Consensus = postcard::from_bytes(&doc.body).unwrap();
    let mut keys: Vec<IdentityKey> = c
        .mixes
        .iter()
        .map(|m| m.identity)
        .chain(c.mailboxes.iter().map(|m| m.identity))
        .collect();
    keys.sort();
    keys
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_sybil_descriptors_from_one_address_are_refused() {
    let http = HttpClient::new(Duration::from_secs(5));
    let stop = CancellationToken::new();
    let (clock, e) = clock_at(1_000);
    let now = clock.now_secs();
    // Honest nodes, each on its own loopback host, listening for packet
    // links with the link keys they publish.
    let mut honest = Vec::new();
    for i in 0..3u8 {
        let k = key(100 + i);
        let addr = link_responder_on(&k, &format!("127.0.{}.1:0", 10 + i)).await;
        honest.push((k, addr));
    }
    let honest_keys: Vec<IdentityKey> = honest.iter().map(|(k, _)| ident(k)).collect();

    // 1. The default: an allow-list. The operator admitted the honest nodes;
    // a thousand strangers on one host, one port each, are all refused, and
    // take no room from the honest ones.
    let dir = tempfile::tempdir().unwrap();
    let admitted = honest_keys.iter().map(IdentityKey::to_base58).collect();
    let auth = authority(
        dir.path(),
        &clock,
        None,
        |c| {
            c.admission.nodes = admitted;
            c.limits.max_descriptors = 100;
        },
        &stop,
    )
    .await
    .unwrap();
    let started = std::time::Instant::now();
    for i in 0..SYBILS {
        let sybil = mix_at(
            &sybil_key(i),
            SocketAddr::from(([127, 0, 0, 9], 30_000 + i)),
            e,
            now,
        );
        assert_eq!(post(&http, auth.addr, &sybil).await, 403, "sybil {i}");
    }
    let flood_time = started.elapsed();
    for (k, addr) in &honest {
        assert_eq!(post(&http, auth.addr, &mix_at(k, *addr, e, now)).await, 200);
    }
    assert_eq!(refused(auth.addr, "not_admitted").await, f64::from(SYBILS));
    assert_eq!(
        metric(auth.addr, "murmur_directory_descriptors_stored").await,
        3.0
    );
    let mut want = honest_keys.clone();
    want.sort();
    assert_eq!(listed(&auth, e).await, want);
    println!(
        "| allow-list: {SYBILS} Sybil descriptors from one host refused (not_admitted) in {flood_time:?}; \
         the 3 admitted nodes listed |"
    );
    auth.stop().await;

    // 2. Open mode: anyone may register, two identities per host and eight
    // per /24. The flood from one host gets two in; they are never listed
    // because nothing answers at their addresses; the honest nodes are.
    let dir = tempfile::tempdir().unwrap();
    let auth = authority(
        dir.path(),
        &clock,
        None,
        |c| {
            c.admission.mode = AdmissionMode::Open;
            c.admission.allow_private_addresses = true;
            c.limits.max_descriptors = 100;
        },
        &stop,
    )
    .await
    .unwrap();
    // The honest nodes register first (the bootstrap vote comes 500 ms
    // after the first descriptor).
    for (k, addr) in &honest {
        assert_eq!(post(&http, auth.addr, &mix_at(k, *addr, e, now)).await, 200);
    }
    let mut accepted = 0;
    for i in 0..SYBILS {
        let sybil = mix_at(
            &sybil_key(i),
            SocketAddr::from(([127, 0, 0, 9], 30_000 + i)),
            e,
            now,
        );
        match post(&http, auth.addr, &sybil).await {
            200 => accepted += 1,
            403 => {}
            other => panic!("sybil {i}: {other}"),
        }
    }
    assert_eq!(accepted, 2);
    assert_eq!(
        refused(auth.addr, "address_limit").await,
        f64::from(SYBILS - 2)
    );
    // Spread over a /24: six more hosts fit, then the subnet is full.
    let mut subnet = Vec::new();
    for h in 0..10u8 {
        let k = sybil_key(5000 + u16::from(h));
        let d = mix_at(&k, SocketAddr::from(([127, 0, 0, 20 + h], 4000)), e, now);
        subnet.push(post(&http, auth.addr, &d).await);
    }
    assert_eq!(
        subnet.iter().filter(|s| **s == 200).count(),
        6,
        "{subnet:?}"
    );
    assert_eq!(refused(auth.addr, "subnet_limit").await, 4.0);
    assert_eq!(listed(&auth, e).await, want);
    let unreachable = metric(
        auth.addr,
        "murmur_directory_probes_total{outcome=\"unreachable\"}",
    )
    .await;
    assert!(unreachable >= 8.0, "{unreachable}");
    assert_eq!(
        metric(auth.addr, "murmur_directory_descriptors_reachable").await,
        3.0
    );
    println!(
        "| open mode: {SYBILS} Sybil descriptors from one host: 2 kept (max_per_address), {} refused \
         (address_limit), 4 of 10 hosts in one /24 refused (subnet_limit), none listed \
         (unreachable: {unreachable} probes failed); the 3 honest nodes listed |",
        SYBILS - 2
    );
    auth.stop().await;
}

/// A probe the test controls: reaches only the nodes it is told to.
struct Switch {
    reach_b: AtomicBool,
    b: IdentityKey,
}

impl ReachabilityProbe for Switch {
    fn probe(
        &self,
        node: IdentityKey,
        _addr: SocketAddr,
        _link_key: murmur_wire::LinkPublicKey,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>> {
        let ok = node != self.b || self.reach_b.load(Ordering::SeqCst);
        Box::pin(async move {
            if ok {
                Ok(())
            } else {
                Err("switched off".into())
            }
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_nodes_are_kept_but_not_voted_until_a_probe_reaches_them() {
    let stop = CancellationToken::new();
    let (clock, e) = clock_at(1_000);
    let now = clock.now_secs();
    let (a, b) = (key(100), key(101));
    let probe = Arc::new(Switch {
        reach_b: AtomicBool::new(false),
        b: ident(&b),
    });
    let dir = tempfile::tempdir().unwrap();
    let admitted = vec![ident(&a).to_base58(), ident(&b).to_base58()];
    let auth = authority(
        dir.path(),
        &clock,
        Some(probe.clone()),
        |c| c.admission.nodes = admitted,
        &stop,
    )
    .await
    .unwrap();
    let http = HttpClient::new(Duration::from_secs(5));
    for (k, port) in [(&a, 7001), (&b, 7002)] {
        let d = mix_at(k, SocketAddr::from(([192, 0, 2, 1], port)), e, now);
        assert_eq!(post(&http, auth.addr, &d).await, 200);
    }
    // Both are held; only A is listed.
    assert_eq!(listed(&auth, e).await, vec![ident(&a)]);
    assert_eq!(
        metric(auth.addr, "murmur_directory_descriptors_stored").await,
        2.0
    );
    // B comes up; it is probed again (probe_retry_secs = 1) and is in the
    // next epoch's vote.
    probe.reach_b.store(true, Ordering::SeqCst);
    eventually(10, "B reachable", || async {
        (metric(auth.addr, "murmur_directory_descriptors_reachable").await == 2.0).then_some(())
    })
    .await;
    set_time_ms(&clock, (e + 1) * EPOCH * 1000 - EPOCH * 1000 / 2 + 100);
    let mut both = vec![ident(&a), ident(&b)];
    both.sort();
    assert_eq!(listed(&auth, e + 1).await, both);
    assert!(
        metric(
            auth.addr,
            "murmur_directory_probes_total{outcome=\"unreachable\"}"
        )
        .await
            >= 1.0
    );
    auth.stop().await;
}

/// A link responder on loopback holding the link key of `k`, completing
/// every handshake; returns its address.
async fn link_responder(k: &SigningKey) -> SocketAddr {
    link_responder_on(k, "127.0.0.1:0").await
}

/// [`link_responder`] bound to `bind`.
async fn link_responder_on(k: &SigningKey, bind: &str) -> SocketAddr {
    let listener = TcpListener::bind(bind).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let key = Arc::new(murmur_wire::LinkSecretKey::derive(&k.to_bytes()));
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let key = key.clone();
            tokio::spawn(async move {
                let _ = murmur_net::accept(
                    tcp,
                    murmur_wire::link::Purpose::Packets,
                    &key,
                    &murmur_net::LinkSettings::default(),
                )
                .await;
            });
        }
    });
    addr
}

/// The default probe completes a link handshake expecting the descriptor's
/// link key: a node listening where it says with the key it publishes is
/// listed; one that copied another node's link key (to have it pinned as
/// its own) is not, and neither is one whose port is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_probe_lists_only_nodes_that_hold_their_link_key() {
    let stop = CancellationToken::new();
    let (clock, e) = clock_at(1_000);
    let now = clock.now_secs();
    let (honest, squatter, absent) = (key(110), key(111), key(112));
    let dir = tempfile::tempdir().unwrap();
    let admitted = vec![
        ident(&honest).to_base58(),
        ident(&squatter).to_base58(),
        ident(&absent).to_base58(),
    ];
    let auth = authority(
        dir.path(),
        &clock,
        None,
        |c| {
            c.admission.nodes = admitted;
            c.admission.probe_timeout_ms = 2000;
        },
        &stop,
    )
    .await
    .unwrap();
    let http = HttpClient::new(Duration::from_secs(5));
    // The honest node holds its key where it says.
    let honest_addr = link_responder(&honest).await;
    let d = mix_at(&honest, honest_addr, e, now);
    assert_eq!(post(&http, auth.addr, &d).await, 200);
    // The squatter listens with its own key but publishes the honest
    // node's link key (a different X25519 half, so the authority's
    // first-come check does not catch it: only the probe can).
    let squatter_addr = link_responder(&squatter).await;
    let mut copied = mix_at(&squatter, squatter_addr, e, now)
        .verify()
        .unwrap()
        .descriptor()
        .clone();
    let mut stolen = murmur_wire::LinkSecretKey::derive(&key(113).to_bytes())
        .public()
        .clone();
    stolen.kem = d.verify().unwrap().descriptor().link_key.kem.clone();
    copied.link_key = stolen;
    let forged = SignedDescriptor::sign(&copied, &squatter).unwrap();
    assert_eq!(post(&http, auth.addr, &forged).await, 200);
    // Nothing listens for the third.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    assert_eq!(
        post(&http, auth.addr, &mix_at(&absent, closed, e, now)).await,
        200
    );
    eventually(15, "three probes", || async {
        (metric(
            auth.addr,
            "murmur_directory_probes_total{outcome=\"unreachable\"}",
        )
        .await
            >= 2.0)
            .then_some(())
    })
    .await;
    assert_eq!(listed(&auth, e).await, vec![ident(&honest)]);
    auth.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_signed_list_is_followed_live_and_a_tampered_one_is_refused() {
    let stop = CancellationToken::new();
    let (clock, e) = clock_at(1_000);
    let now = clock.now_secs();
    let dir = tempfile::tempdir().unwrap();
    let list_path = dir.path().join("admitted-nodes.list");
    let me = key(1);
    let (a, b) = (key(100), key(101));
    let mut list = AdmissionList::new();
    list.admit(ident(&a), "node a");
    list.save(&list_path, &me).unwrap();
    let auth = authority(
        dir.path(),
        &clock,
        None,
        |c| c.admission.probe = false,
        &stop,
    )
    .await
    .unwrap();
    let http = HttpClient::new(Duration::from_secs(5));
    let da = mix_at(&a, SocketAddr::from(([192, 0, 2, 1], 7001)), e, now);
    let db = mix_at(&b, SocketAddr::from(([192, 0, 2, 2], 7001)), e, now);
    assert_eq!(post(&http, auth.addr, &da).await, 200);
    assert_eq!(post(&http, auth.addr, &db).await, 403);
    assert_eq!(
        metric(auth.addr, "murmur_directory_admitted_nodes").await,
        1.0
    );

    // The operator admits B (what `murmur-directory admit` does): taken up
    // without a restart.
    list.admit(ident(&b), "node b");
    list.save(&list_path, &me).unwrap();
    eventually(5, "B admitted", || async {
        (post(&http, auth.addr, &db).await == 200).then_some(())
    })
    .await;
    // Revoking A drops its descriptor and refuses it from then on.
    list.revoke(&ident(&a));
    list.save(&list_path, &me).unwrap();
    eventually(5, "A revoked", || async {
        (metric(auth.addr, "murmur_directory_descriptors_stored").await == 1.0).then_some(())
    })
    .await;
    assert_eq!(post(&http, auth.addr, &da).await, 403);

    // Someone edits the file by hand to let A back in: the list does not
    // verify, is refused and counted, and the signed one stays in force.
    let text = std::fs::read_to_string(&list_path).unwrap();
    let forged = text.replacen(
        "node ",
        &format!("node {}\nnode ", ident(&a).to_base58()),
        1,
    );
    std::fs::write(&list_path, &forged).unwrap();
    eventually(5, "the forged list refused", || async {
        (metric(auth.addr, "murmur_directory_admission_list_errors_total").await == 1.0)
            .then_some(())
    })
    .await;
    assert_eq!(post(&http, auth.addr, &da).await, 403);
    assert_eq!(post(&http, auth.addr, &db).await, 200);
    auth.stop().await;
    // And an authority does not start on it.
    let err = authority(dir.path(), &clock, None, |_| {}, &stop)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("admission list"), "{err}");
}
