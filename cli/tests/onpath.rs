//! Active attacks on a client's link to its mailbox provider, against a
//! whole network (devnet) and real clients.
//!
//! - An attacker on the path, without the provider's keys, who modifies the
//!   provider's answers: every modified answer is refused (the link's
//!   records do not verify), the owner deletes nothing while it lasts, and
//!   once the path is clean every message arrives exactly once.
//! - The provider itself lying (it holds the link key): it answers a fetch
//!   with forged entries, one numbered `u64::MAX` (the old range
//!   acknowledgement would have deleted the whole queue). The owner deletes
//!   exactly the real entries it stored, never a forged one; what the
//!   provider sees of the deletions is checked, as the provider sees it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use murmur::devnet::{Devnet, DevnetOptions};
use murmur_client::network::follow;
use murmur_client::{Body, Client, ClientOptions, Passphrase};
use murmur_net::LinkSettings;
use murmur_net::http::LinkHttpClient;
use murmur_wire::link::{LinkPublicKey, LinkSecretKey, MESSAGE2_SIZE, Purpose};
use murmur_wire::mailbox::{
    OwnerOp, OwnerReply, OwnerResponse, QueueEntry, QueueItem, SignedOwnerRequest,
};
use murmur_wire::{DEPOSIT_BODY_SIZE, MessageId, NodeId};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(60);

fn options(dir: &std::path::Path, api: SocketAddr) -> DevnetOptions {
    DevnetOptions {
        dir: dir.join("devnet"),
        width: 2,
        mean_delay_ms: 10,
        max_delay_ms: 500,
        client_rate: 0.0,
        client_loop_rate: 0.0,
        mix_loop_rate: 0.0,
        // Mailbox 0 publishes the attacker's address for its fetch API.
        mailbox_api_public: vec![Some(api)],
        ..DevnetOptions::default()
    }
}

fn client_options() -> ClientOptions {
    ClientOptions {
        fetch_interval: Duration::from_millis(50),
        request_timeout: Duration::from_secs(3),
        ..ClientOptions::default()
    }
}

/// The passphrase of the test clients' databases.
fn passphrase() -> Passphrase {
    Passphrase::new("test passphrase")
}

/// Bob (home: mailbox 0, behind the attacker) and Alice (home: mailbox 1),
/// contacts of each other.
async fn pair(
    dir: &std::path::Path,
    devnet: &Devnet,
    token: &CancellationToken,
) -> (Client, Client, Arc<dyn murmur_client::ConsensusSource>) {
    let consensus = follow(devnet.network(), Duration::from_secs(30), token.clone())
        .await
        .unwrap();
    let homes: Vec<NodeId> = devnet.mailboxes().iter().map(|m| m.node_id).collect();
    let alice = Client::create(
        &dir.join("alice"),
        "alice",
        consensus.clone(),
        Some(homes[1]),
        client_options(),
        &passphrase(),
    )
    .await
    .unwrap();
    let bob = Client::create(
        &dir.join("bob"),
        "bob",
        consensus.clone(),
        Some(homes[0]),
        client_options(),
        &passphrase(),
    )
    .await
    .unwrap();
    bob.accept(&alice.invite(None).await.unwrap(), None)
        .await
        .unwrap();
    tokio::time::timeout(WAIT, async {
        while !alice.contacts().unwrap().iter().any(|c| c.established) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap();
    (alice, bob, consensus)
}

fn texts(c: &Client) -> Vec<String> {
    c.inbox(false)
        .unwrap()
        .into_iter()
        .filter_map(|(_, r)| match r.body {
            Body::Text(t) => Some(t),
            _ => None,
        })
        .collect()
}

async fn wait_texts(c: &Client, n: usize) -> Vec<String> {
    tokio::time::timeout(WAIT, async {
        loop {
            let t = texts(c);
            if t.len() >= n {
                return t;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{n} texts did not arrive: {:?}", texts(c)))
}

// ------------------------------------------------------------- tampering

/// A TCP relay that, when `tamper` is set, flips one bit in every chunk the
/// provider sends back once the handshake is through (its records).
async fn tampering_relay(
    listener: TcpListener,
    target: Arc<OnceLock<SocketAddr>>,
    tamper: Arc<AtomicBool>,
) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            return;
        };
        let (target, tamper) = (target.clone(), tamper.clone());
        tokio::spawn(async move {
            let Some(&addr) = target.get() else { return };
            let Ok(server) = TcpStream::connect(addr).await else {
                return;
            };
            let (mut cr, mut cw) = client.into_split();
            let (mut sr, mut sw) = server.into_split();
            let up = async {
                let _ = tokio::io::copy(&mut cr, &mut sw).await;
            };
            let down = async {
                let mut seen = 0usize;
                let mut buf = vec![0u8; 65_536];
                loop {
                    let n = match sr.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    // Past handshake message 2 (with its length prefix).
                    let handshake = 2 + MESSAGE2_SIZE;
                    if tamper.load(Ordering::SeqCst) && seen + n > handshake {
                        let i = handshake.saturating_sub(seen).max(n / 2).min(n - 1);
                        buf[i] ^= 0x01;
                    }
                    seen += n;
                    if cw.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            };
            tokio::select! {
                _ = up => {}
                _ = down => {}
            }
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modified_answers_are_refused_and_nothing_is_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let relay_addr = listener.local_addr().unwrap();
    let target = Arc::new(OnceLock::new());
    let tamper = Arc::new(AtomicBool::new(false));
    tokio::spawn(tampering_relay(listener, target.clone(), tamper.clone()));
    let devnet = Devnet::start(options(dir.path(), relay_addr))
        .await
        .unwrap();
    target.set(devnet.mailboxes()[0].http_addr).unwrap();
    devnet.wait_ready(WAIT).await.unwrap();
    let token = CancellationToken::new();
    let (alice, bob, _) = pair(dir.path(), &devnet, &token).await;
    let provider = devnet.mailboxes()[0].metrics().clone();

    // The attacker starts modifying what the provider says to Bob.
    tamper.store(true, Ordering::SeqCst);
    let fetches_before = provider.fetches();
    let deleted_before = provider.entries_deleted();
    for i in 0..3 {
        alice
            .send_text("bob", &format!("through a hostile path {i}"))
            .await
            .unwrap()
            .delivered()
            .await
            .unwrap();
    }
    // Every message is in Bob's queue, Bob keeps fetching, and every
    // answer is refused: nothing arrives, nothing is deleted.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        provider.fetches() > fetches_before + 5,
        "Bob's fetches did not reach the provider"
    );
    assert_eq!(
        texts(&bob),
        Vec::<String>::new(),
        "a modified answer was used"
    );
    assert_eq!(
        provider.entries_deleted(),
        deleted_before,
        "entries were deleted on modified answers"
    );

    // A clean path again: everything arrives, once.
    tamper.store(false, Ordering::SeqCst);
    let got = wait_texts(&bob, 3).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut got_sorted = texts(&bob);
    got_sorted.sort();
    assert_eq!(got.len(), 3);
    assert_eq!(
        got_sorted,
        (0..3)
            .map(|i| format!("through a hostile path {i}"))
            .collect::<Vec<_>>()
    );
    assert!(provider.entries_deleted() >= deleted_before + 3);

    alice.shutdown().await;
    bob.shutdown().await;
    token.cancel();
    devnet.shutdown().await;
}

// ---------------------------------------------------------- lying provider

/// What the lying provider saw and did.
#[derive(Default)]
struct Lies {
    /// Real entries it passed on: (queue, seq).
    real: BTreeSet<(murmur_wire::QueueId, u64)>,
    /// Forged entries it added.
    forged: BTreeSet<(murmur_wire::QueueId, u64)>,
    /// Deletions the owner asked for.
    deleted: Vec<(murmur_wire::QueueId, u64)>,
}

/// A front end holding the provider's own link key: it terminates the
/// owner's link, passes requests to the real provider, and adds two forged
/// entries to every page that has real deposits.
async fn lying_provider(
    listener: TcpListener,
    key: Arc<LinkSecretKey>,
    upstream: Arc<OnceLock<(SocketAddr, LinkPublicKey)>>,
    lies: Arc<Mutex<Lies>>,
) {
    let client = LinkHttpClient::new(
        Purpose::MailboxApi,
        LinkSettings::default(),
        Duration::from_secs(5),
    );
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            return;
        };
        let (key, upstream, lies, client) =
            (key.clone(), upstream.clone(), lies.clone(), client.clone());
        tokio::spawn(async move {
            let Ok(link) =
                murmur_net::accept(tcp, Purpose::MailboxApi, &key, &LinkSettings::default()).await
            else {
                return;
            };
            let service = service_fn(move |req: Request<Incoming>| {
                let (upstream, lies, client) = (upstream.clone(), lies.clone(), client.clone());
                async move {
                    let path = req.uri().path().to_owned();
                    let body = req.into_body().collect().await?.to_bytes();
                    let Some((addr, real_key)) = upstream.get().cloned() else {
                        return Ok::<_, hyper::Error>(Response::new(Full::new(Bytes::new())));
                    };
                    let (status, answer) = client
                        .post(
                            addr,
                            &real_key,
                            &path,
                            "application/x-postcard",
                            body.clone(),
                            1 << 22,
                        )
                        .await
                        .unwrap();
                    let answer = lie(&path, &body, status, answer, &lies);
                    let mut resp = Response::new(Full::new(answer));
                    *resp.status_mut() = status;
                    Ok(resp)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(link.stream), service)
                .await;
        });
    }
}

/// Records deletions; adds forged entries to fetched pages that hold
/// deposits (the answer stays bound to its request: the provider computes
/// the digest like the real one).
fn lie(
    path: &str,
    request: &Bytes,
    status: StatusCode,
    answer: Bytes,
    lies: &Mutex<Lies>,
) -> Bytes {
    if path != "/v1/queue" || status != StatusCode::OK {
        return answer;
    }
    let Ok(req) = SignedOwnerRequest::from_bytes(request).and_then(|r| r.peek()) else {
        return answer;
    };
    let mut lies = lies.lock().unwrap();
    if let OwnerOp::Delete { seqs } = &req.op {
        lies.deleted.extend(seqs.iter().map(|s| (req.queue, *s)));
        return answer;
    }
    let Ok(mut resp) = OwnerResponse::from_bytes(&answer) else {
        return answer;
    };
    let OwnerReply::Fetched(page) = &mut resp.reply else {
        return answer;
    };
    let deposits = page
        .entries
        .iter()
        .filter(|e| matches!(e.item, QueueItem::Deposit { .. }))
        .count();
    for e in &page.entries {
        lies.real.insert((req.queue, e.seq));
    }
    if deposits == 0 {
        return answer;
    }
    let last = page.entries.last().map_or(0, |e| e.seq);
    for seq in [last + 1000, u64::MAX] {
        page.entries.push(QueueEntry {
            seq,
            item: QueueItem::Deposit {
                id: MessageId::from_bytes([seq as u8; 16]),
                body: vec![0x5a; DEPOSIT_BODY_SIZE],
            },
        });
        lies.forged.insert((req.queue, seq));
    }
    Bytes::from(resp.to_bytes().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lying_provider_cannot_make_the_owner_delete_what_it_did_not_read() {
    let dir = tempfile::tempdir().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let front = listener.local_addr().unwrap();
    let devnet = Devnet::start(options(dir.path(), front)).await.unwrap();
    let key = Arc::new(LinkSecretKey::derive(
        &devnet.mailbox_identity(0).unwrap().to_bytes(),
    ));
    let upstream = Arc::new(OnceLock::new());
    upstream
        .set((devnet.mailboxes()[0].http_addr, key.public().clone()))
        .unwrap();
    let lies = Arc::new(Mutex::new(Lies::default()));
    tokio::spawn(lying_provider(listener, key, upstream, lies.clone()));
    devnet.wait_ready(WAIT).await.unwrap();
    let token = CancellationToken::new();
    let (alice, bob, consensus) = pair(dir.path(), &devnet, &token).await;

    // Bob offline; Alice's messages wait in his queue.
    bob.shutdown().await;
    for i in 0..4 {
        alice
            .send_text("bob", &format!("to be read {i}"))
            .await
            .unwrap()
            .delivered()
            .await
            .unwrap();
    }
    let bob = Client::open(
        &dir.path().join("bob"),
        consensus,
        client_options(),
        &passphrase(),
    )
    .await
    .unwrap();
    let got = wait_texts(&bob, 4).await;
    assert_eq!(got.len(), 4);
    // Let the deletions of what was read reach the provider.
    let inbox = bob.inbox_queue_of("alice").unwrap();
    tokio::time::timeout(WAIT, async {
        loop {
            let done = {
                let l = lies.lock().unwrap();
                let real_deposits_deleted = l.deleted.iter().filter(|(q, _)| *q == inbox).count();
                !l.forged.is_empty() && real_deposits_deleted >= 4
            };
            if done {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the real entries were deleted");
    tokio::time::sleep(Duration::from_secs(1)).await;

    let (forged, deleted) = {
        let l = lies.lock().unwrap();
        assert!(!l.forged.is_empty(), "the provider never lied");
        for d in &l.deleted {
            assert!(
                !l.forged.contains(d),
                "the owner deleted a forged entry {d:?}"
            );
            assert!(
                l.real.contains(d),
                "the owner deleted an entry it was never given {d:?}"
            );
        }
        assert!(
            !l.deleted.iter().any(|(_, s)| *s == u64::MAX),
            "the owner deleted u64::MAX"
        );
        (l.forged.len(), l.deleted.len())
    };
    // Nothing was delivered twice and nothing forged was shown.
    let mut texts = texts(&bob);
    texts.sort();
    assert_eq!(
        texts,
        (0..4)
            .map(|i| format!("to be read {i}"))
            .collect::<Vec<_>>()
    );
    assert!(bob.stats().bad_entries >= 2, "{:?}", bob.stats());
    println!(
        "lying provider: {forged} forged entries offered, {deleted} deletions asked, all of real entries"
    );

    alice.shutdown().await;
    bob.shutdown().await;
    token.cancel();
    devnet.shutdown().await;
}
