//! Fault injection against a network of real daemon processes (three
//! authorities, three layers of two mixes, two mailboxes; `harness/`):
//! kill -9 of a mix, a mailbox, an authority and a client; a link cut and
//! restored; nodes restarted across an epoch boundary; a slow-reading next
//! hop; garbage and replayed packets at a mix and a mailbox.
//!
//! Every test checks that no acknowledged message is lost and none is
//! delivered twice (the recipient's inbox holds each message id once, with
//! the bytes sent), that the nodes not hit keep serving (`/healthz`, and
//! traffic through them), and that memory stays bounded (each daemon's
//! `VmRSS`, sampled during the fault, under [`harness::RSS_BOUND_KB`]; queue
//! depths at or under their caps). Each prints its row of the results
//! table in `docs/reliability.md`:
//!
//! ```text
//! cargo test -p murmur --test faults -- --nocapture 2>&1 | grep '^| '
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod harness;

use std::time::Duration;

use harness::{
    Metrics, Net, NetOptions, RSS_BOUND_KB, RssSampler, Sent, all_delivered, follower, pair,
    random_bytes, report, send_texts, wait_inbox,
};
use murmur_client::Body;
use tokio_util::sync::CancellationToken;

const DELIVERY: Duration = Duration::from_secs(90);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mix_killed_mid_transfer_loses_nothing() {
    let mut net = Net::start(NetOptions::default()).await;
    let token = CancellationToken::new();
    let consensus = follower(&net, &token).await;
    let dir = tempfile::tempdir().unwrap();
    let (alice, bob) = pair(dir.path(), &net, &consensus).await;
    let rss = RssSampler::start(net.pids());

    let mut to_bob = Sent::new();
    let mut to_alice = Sent::new();
    let file = random_bytes(60_000);
    let path = dir.path().join("report.bin");
    std::fs::write(&path, &file).unwrap();
    let h = alice.send_file("bob", &path).await.unwrap();
    to_bob.insert(
        h.id(),
        Body::File {
            name: "report.bin".into(),
            data: file,
        },
    );
    let total = h.progress().total;
    let mut handles = vec![h];
    handles.extend(send_texts(&alice, "bob", "a→b", 8, &mut to_bob).await);
    handles.extend(send_texts(&bob, "alice", "b→a", 8, &mut to_alice).await);

    // Kill a middle-layer mix while packets are in flight: once part of the
    // file is acknowledged.
    tokio::time::timeout(DELIVERY, async {
        while handles[0].progress().acked < 3 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap();
    let acked_at_kill = handles[0].progress().acked;
    let c = net.consensus().await;
    let victim = net.mix_by_id(&c.layers()[1][0].id);
    let forwarded_before = Metrics::scrape(net.mixes[victim].http_addr)
        .await
        .sum("murmur_mixnode_packets_forwarded_total");
    net.mixes[victim].daemon.kill9();
    let victim_name = net.mixes[victim].daemon.name.clone();

    all_delivered(handles, DELIVERY).await;
    let t_alice = wait_inbox(&alice, &to_alice, DELIVERY).await;

    // The survivors carry traffic: messages sent after the kill cross
    // layer 1 through the other mix there.
    let mut later = Sent::new();
    let hs = send_texts(&alice, "bob", "after", 3, &mut later).await;
    all_delivered(hs, DELIVERY).await;
    to_bob.extend(later);
    let t_bob = wait_inbox(&bob, &to_bob, DELIVERY).await;
    let survivor = net.mix_by_id(&c.layers()[1][1].id);
    let survivor_forwarded = Metrics::scrape(net.mixes[survivor].http_addr)
        .await
        .sum("murmur_mixnode_packets_forwarded_total");
    assert!(survivor_forwarded > 0.0);
    net.assert_others_healthy(&[&victim_name]).await;
    let (who, kb) = rss.finish(RSS_BOUND_KB);
    let retrans = alice.stats().retransmissions + bob.stats().retransmissions;
    report(
        "kill -9 a layer-2 mix mid-transfer",
        &[t_bob, t_alice],
        &format!(
            "60 kB file ({total} packets, {acked_at_kill} acknowledged at the kill) + 19 texts; \
             the victim had forwarded {forwarded_before} packets; {retrans} retransmissions; \
             max RSS {} MB ({who})",
            kb / 1024
        ),
    );
    alice.shutdown().await;
    bob.shutdown().await;
    token.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mailbox_killed_mid_transfer_keeps_what_it_acknowledged() {
    let mut net = Net::start(NetOptions::default()).await;
    let token = CancellationToken::new();
    let consensus = follower(&net, &token).await;
    let dir = tempfile::tempdir().unwrap();
    let (alice, bob) = pair(dir.path(), &net, &consensus).await;
    // Bob is offline during the fault: what his provider acknowledged can
    // only reach him from its disk.
    bob.shutdown().await;
    let rss = RssSampler::start(net.pids());

    // First batch: acknowledged before the kill.
    let mut acked_before = Sent::new();
    let hs = send_texts(&alice, "bob", "before", 6, &mut acked_before).await;
    all_delivered(hs, DELIVERY).await;
    let retrans_before = alice.stats().retransmissions;

    // Second batch, and the provider dies under it.
    let mut in_flight = Sent::new();
    let file = random_bytes(40_000);
    let path = dir.path().join("f.bin");
    std::fs::write(&path, &file).unwrap();
    let h = alice.send_file("bob", &path).await.unwrap();
    in_flight.insert(
        h.id(),
        Body::File {
            name: "f.bin".into(),
            data: file,
        },
    );
    let mut handles = vec![h];
    handles.extend(send_texts(&alice, "bob", "during", 6, &mut in_flight).await);
    tokio::time::sleep(Duration::from_millis(30)).await;
    let victim = net.mailboxes.len() - 1;
    net.mailboxes[victim].daemon.kill9();
    let unacked_at_kill = handles
        .iter()
        .filter(|h| h.progress().acked < h.progress().total)
        .count();
    tokio::time::sleep(Duration::from_secs(2)).await;
    net.assert_others_healthy(&["mailbox-1"]).await;

    // Restart with the same configuration.
    net.mailboxes[victim].daemon.start();
    rss.watch("mailbox-1", net.mailboxes[victim].daemon.pid().unwrap());
    harness::wait_healthy(net.mailboxes[victim].http_addr, Duration::from_secs(30)).await;
    all_delivered(handles, DELIVERY).await;
    let retransmissions = alice.stats().retransmissions - retrans_before;

    // Bob comes back and reads everything, each message once.
    let bob = murmur_client::Client::open(
        &dir.path().join("bob"),
        consensus.clone(),
        harness::client_options(),
    )
    .await
    .unwrap();
    let t_before = wait_inbox(&bob, &acked_before, DELIVERY).await;
    let t_during = wait_inbox(&bob, &in_flight, DELIVERY).await;
    let m = Metrics::scrape(net.mailboxes[victim].http_addr).await;
    let duplicates = m.labelled("murmur_mailbox_deposits_total", "outcome", "duplicate");
    net.assert_others_healthy(&[]).await;
    let (who, kb) = rss.finish(RSS_BOUND_KB);
    report(
        "kill -9 the recipient's mailbox mid-transfer, restart after 2 s",
        &[t_before, t_during],
        &format!(
            "6 texts acknowledged before the kill (recipient offline) all read after the \
             restart; 40 kB file + 6 texts in flight ({unacked_at_kill} unacknowledged at the \
             kill): {retransmissions} retransmissions, {duplicates} recognised as duplicates \
             by the restarted provider; max RSS {} MB ({who})",
            kb / 1024
        ),
    );
    assert_eq!(
        t_before.delivered, 6,
        "a deposit acknowledged before the kill was lost"
    );
    assert!(unacked_at_kill > 0, "the kill came after the transfer");
    assert!(retransmissions > 0);
    alice.shutdown().await;
    bob.shutdown().await;
    token.cancel();
}

/// The first epoch whose vote (half an epoch before it starts) comes after
/// `t_ms`.
fn first_epoch_voted_after(t_ms: u64, epoch_secs: u64) -> u64 {
    let l = epoch_secs * 1000;
    (t_ms + l / 2) / l + 1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_authority_killed_the_others_keep_publishing() {
    const L: u64 = 10;
    let mut net = Net::start(NetOptions {
        epoch_secs: L,
        ..NetOptions::default()
    })
    .await;
    let token = CancellationToken::new();
    let consensus = follower(&net, &token).await;
    let dir = tempfile::tempdir().unwrap();
    let (alice, bob) = pair(dir.path(), &net, &consensus).await;
    let rss = RssSampler::start(net.pids());

    net.authorities[0].daemon.kill9();
    let killed_at = harness::now_ms();
    let dead = net.authorities[0].key;
    let mut sent = Sent::new();
    let mut handles = send_texts(&alice, "bob", "while down", 4, &mut sent).await;

    // A whole round (vote, compute, sign, publish) without authority 0.
    let epoch = first_epoch_voted_after(killed_at, L);
    let doc = net.wait_epoch(epoch, Duration::from_secs(4 * L)).await;
    let signers: Vec<_> = doc
        .signed()
        .signatures
        .iter()
        .map(|s| s.authority)
        .collect();
    assert!(signers.len() >= 2, "{signers:?}");
    assert!(!signers.contains(&dead));
    let listed = net.nodes().filter(|n| doc.node(&n.id).is_some()).count();
    assert_eq!(listed, net.mixes.len() + net.mailboxes.len());
    // The nodes and the clients switch to it.
    tokio::time::timeout(Duration::from_secs(2 * L), async {
        while consensus.current().map(|c| c.epoch()) < Some(epoch) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the client follows the new epoch");
    for n in net.nodes() {
        harness::wait_node_epoch(n.http_addr, epoch, Duration::from_secs(2 * L)).await;
    }
    handles.extend(send_texts(&alice, "bob", "new epoch", 4, &mut sent).await);
    let mut back = Sent::new();
    handles.extend(send_texts(&bob, "alice", "reply", 4, &mut back).await);
    all_delivered(handles, DELIVERY).await;
    let t1 = wait_inbox(&bob, &sent, DELIVERY).await;
    let t2 = wait_inbox(&alice, &back, DELIVERY).await;
    net.assert_others_healthy(&[]).await;
    let (who, kb) = rss.finish(RSS_BOUND_KB);
    report(
        "kill -9 one of 3 authorities (threshold 2), 10 s epochs",
        &[t1, t2],
        &format!(
            "epoch {epoch} voted, signed by {} authorities and published without it; \
             nodes and clients switched; max RSS {} MB ({who})",
            signers.len(),
            kb / 1024
        ),
    );
    alice.shutdown().await;
    bob.shutdown().await;
    token.cancel();
}

/// Runs the `murmur` command to completion.
async fn murmur(home: &std::path::Path, args: &[&str]) -> std::process::Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_murmur"))
        .arg("--home")
        .arg(home)
        .args(args)
        .output()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_killed_mid_send_delivers_once_when_run_again() {
    use tokio::io::AsyncBufReadExt;
    let mut net = Net::start(NetOptions::default()).await;
    let token = CancellationToken::new();
    let consensus = follower(&net, &token).await;
    let dir = tempfile::tempdir().unwrap();
    let rss = RssSampler::start(net.pids());

    // Alice is the `murmur` command; Bob a client in this process.
    let alice = dir.path().join("alice");
    let network = net.network_file();
    let provider = net.mailboxes[0].id.to_string();
    let out = murmur(
        &alice,
        &[
            "init",
            "--network",
            network.to_str().unwrap(),
            "--name",
            "alice",
            "--provider",
            &provider,
        ],
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = murmur(&alice, &["invite"]).await;
    assert!(out.status.success());
    let invitation = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let bob = murmur_client::Client::create(
        &dir.path().join("bob"),
        "bob",
        consensus.clone(),
        Some(net.mailboxes[1].id),
        harness::client_options(),
    )
    .await
    .unwrap();
    bob.accept(&invitation, None).await.unwrap();
    let out = murmur(&alice, &["inbox"]).await;
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("bob accepted"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // `murmur send --file`, killed with SIGKILL while it sends.
    let file = random_bytes(400_000);
    let path = dir.path().join("big.bin");
    std::fs::write(&path, &file).unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_murmur"))
        .arg("--home")
        .arg(&alice)
        .args(["send", "bob", "--file", path.to_str().unwrap()])
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let queued = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains("queued in") {
                return line;
            }
        }
        panic!("murmur send exited before queueing the file");
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    child.kill().await.unwrap();
    let bob_at_kill = bob.inbox(false).unwrap().len();

    // Run the client again: another message, then stay online a while.
    let out = murmur(&alice, &["send", "bob", "second message"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut watch = tokio::process::Command::new(env!("CARGO_BIN_EXE_murmur"))
        .arg("--home")
        .arg(&alice)
        .arg("watch")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();

    let mut sent = Sent::new();
    let want_file = Body::File {
        name: "big.bin".into(),
        data: file,
    };
    let want_text = Body::Text("second message".into());
    // The message ids are the sender's: find them in Bob's inbox by body.
    let found = tokio::time::timeout(DELIVERY, async {
        loop {
            let inbox = bob.inbox(false).unwrap();
            let f = inbox.iter().find(|(_, r)| r.body == want_file);
            let t = inbox.iter().find(|(_, r)| r.body == want_text);
            if let (Some(f), Some(t)) = (f, t) {
                return (f.1.message_id, t.1.message_id);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the file and the second message arrive");
    sent.insert(found.0, want_file);
    sent.insert(found.1, want_text);
    // Give late retransmissions time to show up as duplicates, if any.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ok = std::process::Command::new("kill")
        .args(["-INT", &watch.id().unwrap().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    let status = tokio::time::timeout(Duration::from_secs(20), watch.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "murmur watch: {status}");
    let t = harness::tally(&bob, &sent);
    let entries = bob
        .inbox(false)
        .unwrap()
        .iter()
        .filter(|(_, r)| !matches!(r.body, Body::Hello { .. }))
        .count();
    assert_eq!(entries, 2, "Bob's inbox holds exactly the two messages");
    let m = Metrics::scrape(net.mailboxes[1].http_addr).await;
    let duplicates = m.labelled("murmur_mailbox_deposits_total", "outcome", "duplicate");
    net.assert_others_healthy(&[]).await;
    let (who, kb) = rss.finish(RSS_BOUND_KB);
    report(
        "kill -9 `murmur send --file` mid-send, run the client again",
        &[t],
        &format!(
            "400 kB file ({}) killed 400 ms later (Bob had {bob_at_kill} entries), then \
             `murmur send` of a text and `murmur watch`: {duplicates} deposits recognised as \
             duplicates by Bob's provider; max RSS {} MB ({who})",
            queued.trim(),
            kb / 1024
        ),
    );
    bob.shutdown().await;
    token.cancel();
}
