//! Messages end to end through a real devnet (authorities, mix nodes and
//! mailboxes in this process, real TCP, real Sphinx, real redb): delivery
//! exactly once despite a dead mix and a restarted client, and what the
//! mailbox stores is opaque.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use murmur::devnet::{Devnet, DevnetOptions};
use murmur_client::network::follow;
use murmur_client::{Body, Client, ClientOptions, ConsensusSource, Passphrase};
use murmur_wire::MessageId;
use rand::Rng;
use tokio_util::sync::CancellationToken;

fn options(dir: &Path) -> DevnetOptions {
    DevnetOptions {
        dir: dir.join("devnet"),
        width: 2,
        mean_delay_ms: 10,
        max_delay_ms: 500,
        // No cover: real packets go out as soon as they are queued.
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

struct Net {
    devnet: Devnet,
    consensus: Arc<dyn ConsensusSource>,
    token: CancellationToken,
}

async fn network(dir: &Path) -> Net {
    let devnet = Devnet::start(options(dir)).await.unwrap();
    devnet.wait_ready(Duration::from_secs(60)).await.unwrap();
    let token = CancellationToken::new();
    let consensus = follow(devnet.network(), Duration::from_secs(30), token.clone())
        .await
        .unwrap();
    Net {
        devnet,
        consensus,
        token,
    }
}

/// Alice and Bob, contacts of each other (Alice invited, Bob accepted, and
/// Alice has his hello).
async fn pair(dir: &Path, net: &Net) -> (Client, Client) {
    let alice = Client::create(
        &dir.join("alice"),
        "alice",
        net.consensus.clone(),
        None,
        client_options(),
        &passphrase(),
    )
    .await
    .unwrap();
    let bob = Client::create(
        &dir.join("bob"),
        "bob",
        net.consensus.clone(),
        None,
        client_options(),
        &passphrase(),
    )
    .await
    .unwrap();
    let invitation = alice.invite(None).await.unwrap();
    assert_eq!(bob.accept(&invitation, None).await.unwrap(), "alice");
    tokio::time::timeout(Duration::from_secs(30), async {
        while !alice
            .contacts()
            .unwrap()
            .iter()
            .any(|c| c.name == "bob" && c.established)
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("alice learns of bob's acceptance");
    (alice, bob)
}

/// Waits until `client` has delivered every id in `want` to its user; returns
/// what arrived, failing on a duplicate.
async fn receive_all(
    client: &Client,
    want: &HashMap<MessageId, Body>,
    limit: Duration,
) -> HashMap<MessageId, Body> {
    let mut got: HashMap<MessageId, Body> = HashMap::new();
    tokio::time::timeout(limit, async {
        loop {
            got.clear();
            for (_, r) in client.inbox(false).unwrap() {
                if matches!(r.body, Body::Hello { .. }) {
                    continue;
                }
                assert!(
                    got.insert(r.message_id, r.body).is_none(),
                    "a message was delivered twice"
                );
            }
            if want.keys().all(|id| got.contains_key(id)) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("only {} of {} messages arrived", got.len(), want.len()));
    got
}

fn random_bytes(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    rand::rng().fill_bytes(&mut v);
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_arrives_once_although_a_mix_dies_mid_transfer() {
    let dir = tempfile::tempdir().unwrap();
    let mut net = network(dir.path()).await;
    let (alice, bob) = pair(dir.path(), &net).await;

    let mut to_bob = HashMap::new();
    let mut to_alice = HashMap::new();
    let file = random_bytes(150_000);
    let path = dir.path().join("report.bin");
    std::fs::write(&path, &file).unwrap();
    let mut handles = Vec::new();
    let h = alice.send_file("bob", &path).await.unwrap();
    to_bob.insert(
        h.id(),
        Body::File {
            name: "report.bin".into(),
            data: file.clone(),
        },
    );
    handles.push(h);
    for i in 0..15 {
        let h = alice.send_text("bob", &format!("a→b {i}")).await.unwrap();
        to_bob.insert(h.id(), Body::Text(format!("a→b {i}")));
        handles.push(h);
        let h = bob.send_text("alice", &format!("b→a {i}")).await.unwrap();
        to_alice.insert(h.id(), Body::Text(format!("b→a {i}")));
        handles.push(h);
    }
    // Kill a middle-layer mix while packets are in flight.
    let victim = net.consensus.current().unwrap().layers()[1][0].id;
    let index = net
        .devnet
        .mix_ids()
        .iter()
        .position(|id| *id == Some(victim))
        .unwrap();
    net.devnet.stop_mix(index).await.unwrap();

    for h in handles {
        tokio::time::timeout(Duration::from_secs(120), h.delivered())
            .await
            .expect("acknowledged in time")
            .expect("delivered");
    }
    let got = receive_all(&bob, &to_bob, Duration::from_secs(60)).await;
    for (id, body) in &to_bob {
        assert!(got.get(id) == Some(body), "message to bob changed");
    }
    let got = receive_all(&alice, &to_alice, Duration::from_secs(60)).await;
    assert_eq!(got, to_alice);
    assert!(
        alice.stats().retransmissions + bob.stats().retransmissions > 0
            || alice.suspected_nodes().is_empty(),
        "the dead mix was on no route at all"
    );

    alice.shutdown().await;
    bob.shutdown().await;
    net.token.cancel();
    net.devnet.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_restarted_mid_transfer_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let net = network(dir.path()).await;
    let (alice, bob) = pair(dir.path(), &net).await;

    let file = random_bytes(400_000);
    let path = dir.path().join("big.bin");
    std::fs::write(&path, &file).unwrap();
    let mut want = HashMap::new();
    let h = alice.send_file("bob", &path).await.unwrap();
    let file_id = h.id();
    want.insert(
        file_id,
        Body::File {
            name: "big.bin".into(),
            data: file,
        },
    );
    for i in 0..5 {
        let h = alice
            .send_text("bob", &format!("before restart {i}"))
            .await
            .unwrap();
        want.insert(h.id(), Body::Text(format!("before restart {i}")));
    }
    // Stop Alice while the file is part-way through.
    let mut progress = h;
    tokio::time::timeout(Duration::from_secs(60), async {
        while progress.progress().acked < 20 {
            progress.changed().await;
        }
    })
    .await
    .expect("some packets acknowledged");
    assert!(
        progress.progress().acked < progress.progress().total,
        "the file went too fast to interrupt"
    );
    alice.shutdown().await;

    // Reopen: what was not acknowledged is sent again.
    let alice = Client::open(
        &dir.path().join("alice"),
        net.consensus.clone(),
        client_options(),
        &passphrase(),
    )
    .await
    .unwrap();
    assert!(alice.outbox_pending().unwrap() >= 1);
    let got = receive_all(&bob, &want, Duration::from_secs(120)).await;
    assert_eq!(got, want);
    tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let p = alice.message_progress(&file_id).unwrap().unwrap();
            if p.acked == p.total {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the restarted client sees every packet acknowledged");

    alice.shutdown().await;
    bob.shutdown().await;
    net.token.cancel();
    net.devnet.shutdown().await;
}

/// Every file under `root`, read whole.
fn files_under(root: &Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(bytes) = std::fs::read(&p) {
                out.push((p, bytes));
            }
        }
    }
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mailboxes_and_mixes_store_neither_plaintext_nor_sender() {
    let dir = tempfile::tempdir().unwrap();
    let net = network(dir.path()).await;
    let (alice, bob) = pair(dir.path(), &net).await;
    let marker = "the-eagle-lands-at-dawn-7f3a9c";
    // Bob stops fetching, so the deposit stays at his mailbox.
    bob.shutdown().await;
    let h = alice.send_text("bob", marker).await.unwrap();
    let id = h.id();
    tokio::time::timeout(Duration::from_secs(60), h.delivered())
        .await
        .unwrap()
        .unwrap();

    let alice_key = alice.identity().0;
    let devnet_dir = dir.path().join("devnet");
    let mut mailbox_bytes = 0;
    for (path, bytes) in files_under(&devnet_dir) {
        let name = path.to_string_lossy();
        if name.contains("mailbox-") {
            mailbox_bytes += bytes.len();
        }
        assert!(
            !contains(&bytes, marker.as_bytes()),
            "plaintext found in {name}"
        );
        assert!(
            !contains(&bytes, &alice_key),
            "the sender's identity key found in {name}"
        );
        assert!(
            !contains(&bytes, b"alice"),
            "the sender's name found in {name}"
        );
    }
    assert!(mailbox_bytes > 0, "no mailbox storage was inspected");

    // And the message is there: Bob, back online, reads it.
    let bob = Client::open(
        &dir.path().join("bob"),
        net.consensus.clone(),
        client_options(),
        &passphrase(),
    )
    .await
    .unwrap();
    let want: HashMap<MessageId, Body> = [(id, Body::Text(marker.into()))].into();
    let got = receive_all(&bob, &want, Duration::from_secs(30)).await;
    assert_eq!(got, want);

    alice.shutdown().await;
    bob.shutdown().await;
    net.token.cancel();
    net.devnet.shutdown().await;
}

/// Dropping a client (without `shutdown`) stops every task it started —
/// the core's driver, fetches, links, the storage worker — and releases
/// its database. The client runs on a runtime of its own, so the count of
/// live tasks there is the client's alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_client_stops_all_its_tasks() {
    let dir = tempfile::tempdir().unwrap();
    let net = network(dir.path()).await;
    let (alice, bob) = pair(dir.path(), &net).await;
    alice.shutdown().await;
    let home = dir.path().join("alice");
    let consensus = net.consensus.clone();
    let (alive_running, alive_after) = tokio::task::spawn_blocking(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let running = rt.block_on(async {
            let alice = Client::open(&home, consensus.clone(), client_options(), &passphrase())
                .await
                .unwrap();
            let h = alice.send_text("bob", "before the drop").await.unwrap();
            tokio::time::timeout(Duration::from_secs(60), h.delivered())
                .await
                .unwrap()
                .unwrap();
            let running = tokio::runtime::Handle::current()
                .metrics()
                .num_alive_tasks();
            drop(alice);
            running
        });
        let metrics = rt.metrics();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while metrics.num_alive_tasks() > 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let after = metrics.num_alive_tasks();
        // The database is free again: every handle on it is gone.
        let reopened = rt.block_on(Client::open(
            &home,
            consensus,
            client_options(),
            &passphrase(),
        ));
        assert!(reopened.is_ok(), "the store is still held: {reopened:?}");
        (running, after)
    })
    .await
    .unwrap();
    assert!(alive_running >= 3, "the client ran tasks: {alive_running}");
    assert_eq!(alive_after, 0, "tasks left running after the drop");

    bob.shutdown().await;
    net.token.cancel();
    net.devnet.shutdown().await;
}

/// The largest message a client sends, 64 MiB, crosses the network and
/// arrives byte-identical (packets leave as fast as acknowledgements come
/// back: the core's in-flight window).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_64_mib_file_arrives_byte_identical() {
    let dir = tempfile::tempdir().unwrap();
    let net = network(dir.path()).await;
    let (alice, bob) = pair(dir.path(), &net).await;
    let started = std::time::Instant::now();
    let size = murmur_client::MAX_MESSAGE_SIZE - 4096;
    let file = random_bytes(size);
    let path = dir.path().join("big.bin");
    std::fs::write(&path, &file).unwrap();
    let h = alice.send_file("bob", &path).await.unwrap();
    let total = h.progress().total;
    assert!(total > 30_000, "{total} packets");
    let want: HashMap<MessageId, Body> = [(
        h.id(),
        Body::File {
            name: "big.bin".into(),
            data: file,
        },
    )]
    .into();
    tokio::time::timeout(Duration::from_secs(900), h.delivered())
        .await
        .expect("acknowledged in time")
        .expect("delivered");
    let got = receive_all(&bob, &want, Duration::from_secs(300)).await;
    assert!(got == want, "the file changed on the way");
    eprintln!(
        "64 MiB: {total} packets, {} retransmissions, {:.1} s",
        alice.stats().retransmissions,
        started.elapsed().as_secs_f64()
    );
    alice.shutdown().await;
    bob.shutdown().await;
    net.token.cancel();
    net.devnet.shutdown().await;
}
