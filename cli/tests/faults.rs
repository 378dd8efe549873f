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
    Metrics, Net, NetOptions, RSS_BOUND_KB, RssSampler, Sent, all_delivered,
    file_and_texts_in_flight, follower, pair, random_bytes, report, send_texts, wait_inbox,
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

    // Kill a middle-layer mix while packets are in flight: once part of the
    // file is acknowledged.
    let (mut to_bob, to_alice, handles, total) =
        file_and_texts_in_flight(dir.path(), &alice, &bob, 3, DELIVERY).await;
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
    harness::assert_logs_clean(&net, &[&alice, &bob], &[&to_bob, &to_alice]);
    report(
        "kill -9 a middle-layer mix mid-transfer",
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
    tokio::time::sleep(Duration::from_millis(5)).await;
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
        &harness::passphrase(),
    )
    .await
    .unwrap();
    let t_before = wait_inbox(&bob, &acked_before, DELIVERY).await;
    let t_during = wait_inbox(&bob, &in_flight, DELIVERY).await;
    let m = Metrics::scrape(net.mailboxes[victim].http_addr).await;
    let duplicates = m.labelled("murmur_mailbox_deposits_total", "outcome", "duplicate");
    net.assert_others_healthy(&[]).await;
    let (who, kb) = rss.finish(RSS_BOUND_KB);
    harness::assert_logs_clean(&net, &[&alice, &bob], &[&acked_before, &in_flight]);
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
    harness::assert_logs_clean(&net, &[&alice, &bob], &[&sent, &back]);
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
        .env("MURMUR_PASSPHRASE", "test passphrase")
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
        &harness::passphrase(),
    )
    .await
    .unwrap();
    bob.accept(&invitation, None).await.unwrap();
    // Alice learns of it from Bob's hello.
    let mut learnt = false;
    for _ in 0..20 {
        let out = murmur(&alice, &["inbox"]).await;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        if String::from_utf8_lossy(&out.stdout).contains("bob accepted") {
            learnt = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(learnt, "alice never saw bob's hello");

    // `murmur send --file`, killed with SIGKILL while it sends.
    let file = random_bytes(400_000);
    let path = dir.path().join("big.bin");
    std::fs::write(&path, &file).unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_murmur"))
        .env("MURMUR_PASSPHRASE", "test passphrase")
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
        .env("MURMUR_PASSPHRASE", "test passphrase")
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
    harness::assert_logs_clean(&net, &[&bob], &[&sent]);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_cut_and_restored_lose_nothing() {
    // A proxy in front of every mix (the layers are dealt only once the
    // network runs); the consensus lists the proxies' addresses.
    let mut options = NetOptions::default();
    let names = harness::mix_names(options.width);
    let proxies = harness::proxy_nodes(&mut options, &names, 0);
    let mut net = Net::start_proxied(options, &proxies).await;
    let token = CancellationToken::new();
    let consensus = follower(&net, &token).await;
    let dir = tempfile::tempdir().unwrap();
    let (alice, bob) = pair(dir.path(), &net, &consensus).await;
    let rss = RssSampler::start(net.pids());

    // Cut every link into the middle layer while messages are in flight:
    // no route gets through.
    let c = net.consensus().await;
    let middle: Vec<&harness::proxy::Proxy> = c.layers()[1]
        .iter()
        .map(|m| &proxies[&net.mixes[net.mix_by_id(&m.id)].daemon.name])
        .collect();
    let mut to_bob = Sent::new();
    let mut to_alice = Sent::new();
    let mut handles = send_texts(&alice, "bob", "before the cut", 5, &mut to_bob).await;
    handles.extend(send_texts(&bob, "alice", "before the cut", 5, &mut to_alice).await);
    for p in &middle {
        p.cut();
    }
    handles.extend(send_texts(&alice, "bob", "during the cut", 5, &mut to_bob).await);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let forwarded_at_restore: u64 = middle.iter().map(|p| p.forwarded()).sum();
    let refused: u64 = middle.iter().map(|p| p.refused()).sum();
    for p in &middle {
        p.restore();
    }
    handles.extend(send_texts(&alice, "bob", "after", 5, &mut to_bob).await);
    all_delivered(handles, DELIVERY).await;
    let t1 = wait_inbox(&bob, &to_bob, DELIVERY).await;
    let t2 = wait_inbox(&alice, &to_alice, DELIVERY).await;
    // Traffic crosses the restored links again.
    let forwarded_after: u64 = middle.iter().map(|p| p.forwarded()).sum();
    assert!(forwarded_after > forwarded_at_restore);
    assert!(refused > 0, "the cut refused nothing");
    let mut lost_in_links = 0.0;
    for n in &net.mixes {
        lost_in_links += Metrics::scrape(n.http_addr).await.labelled(
            "murmur_mixnode_packets_dropped_total",
            "reason",
            "link_failed",
        );
    }
    net.assert_others_healthy(&[]).await;
    let (who, kb) = rss.finish(RSS_BOUND_KB);
    let retrans = alice.stats().retransmissions + bob.stats().retransmissions;
    harness::assert_logs_clean(&net, &[&alice, &bob], &[&to_bob, &to_alice]);
    report(
        "cut every link into the middle layer for 3 s, then restore",
        &[t1, t2],
        &format!(
            "{refused} connections dropped or refused during the cut, {lost_in_links} packets \
             lost in broken links upstream (link_failed); {retrans} retransmissions; max RSS {} \
             MB ({who})",
            kb / 1024
        ),
    );
    alice.shutdown().await;
    bob.shutdown().await;
    token.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_restarted_across_an_epoch_boundary_lose_nothing() {
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

    // Stop a middle-layer mix and Bob's mailbox 2.5 s before a boundary
    // (at least 3 s away), start them 1 s after it.
    let l_ms = L * 1000;
    let mut boundary = (harness::now_ms() / l_ms + 1) * l_ms;
    if boundary - harness::now_ms() < 3000 {
        boundary += l_ms;
    }
    let c = net.consensus().await;
    let mix = net.mix_by_id(&c.layers()[1][0].id);
    let mut to_bob = Sent::new();
    let mut to_alice = Sent::new();
    let mut handles = Vec::new();
    tokio::time::sleep(Duration::from_millis(
        (boundary - 2500).saturating_sub(harness::now_ms()),
    ))
    .await;
    handles.extend(send_texts(&alice, "bob", "before", 4, &mut to_bob).await);
    handles.extend(send_texts(&bob, "alice", "before", 4, &mut to_alice).await);
    net.mixes[mix].daemon.terminate();
    net.mailboxes[1].daemon.terminate();
    handles.extend(send_texts(&alice, "bob", "while stopped", 4, &mut to_bob).await);
    handles.extend(send_texts(&bob, "alice", "while stopped", 4, &mut to_alice).await);
    tokio::time::sleep(Duration::from_millis(
        (boundary + 1000).saturating_sub(harness::now_ms()),
    ))
    .await;
    let new_epoch = boundary / l_ms;
    net.mixes[mix].daemon.start();
    net.mailboxes[1].daemon.start();
    rss.watch(
        &net.mixes[mix].daemon.name.clone(),
        net.mixes[mix].daemon.pid().unwrap(),
    );
    rss.watch("mailbox-1", net.mailboxes[1].daemon.pid().unwrap());
    for addr in [net.mixes[mix].http_addr, net.mailboxes[1].http_addr] {
        harness::wait_node_epoch(addr, new_epoch, Duration::from_secs(3 * L)).await;
    }
    handles.extend(send_texts(&alice, "bob", "after", 4, &mut to_bob).await);
    handles.extend(send_texts(&bob, "alice", "after", 4, &mut to_alice).await);
    all_delivered(handles, DELIVERY).await;
    let t1 = wait_inbox(&bob, &to_bob, DELIVERY).await;
    let t2 = wait_inbox(&alice, &to_alice, DELIVERY).await;
    net.assert_others_healthy(&[]).await;
    let (who, kb) = rss.finish(RSS_BOUND_KB);
    let retrans = alice.stats().retransmissions + bob.stats().retransmissions;
    harness::assert_logs_clean(&net, &[&alice, &bob], &[&to_bob, &to_alice]);
    report(
        "SIGTERM a mix and a mailbox 2.5 s before an epoch boundary, restart 1 s after",
        &[t1, t2],
        &format!(
            "10 s epochs; messages sent before, during and after the outage both ways; \
             restarted nodes healthy in epoch {new_epoch}; {retrans} retransmissions; \
             max RSS {} MB ({who})",
            kb / 1024
        ),
    );
    alice.shutdown().await;
    bob.shutdown().await;
    token.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reading_next_hop_costs_bounded_drops_only_on_its_link() {
    // The kernel absorbs the first megabytes written to a slow peer (the
    // link's socket send buffer grows up to net.ipv4.tcp_wmem's maximum,
    // 4 MiB by default, about 1500 packets); past that, the link queue
    // fills and drops. Offer twice what the kernel can hold.
    let wmem_max: usize = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_wmem")
        .ok()
        .and_then(|t| t.split_whitespace().last()?.parse().ok())
        .unwrap_or(4 << 20);
    // A multiple of 6: six for the slow link, then one for the other.
    let slow_packets = (2 * wmem_max / murmur_wire::frame::FRAME_SIZE).clamp(1200, 12_000) / 6 * 6;
    const LINK_QUEUE: u64 = 64;
    const MAX_LINK_QUEUED: u64 = 256;
    let mut options = NetOptions::default();
    let names = harness::mix_names(options.width);
    let proxies = harness::proxy_nodes(&mut options, &names, 0);
    for n in &names {
        options.node_edits.insert(
            n.clone(),
            vec![
                ("engine.link_queue", toml::Value::Integer(LINK_QUEUE as i64)),
                (
                    "engine.max_link_queued",
                    toml::Value::Integer(MAX_LINK_QUEUED as i64),
                ),
                ("engine.write_timeout_ms", toml::Value::Integer(3000)),
            ],
        );
    }
    let mut net = Net::start_proxied(options, &proxies).await;
    let token = CancellationToken::new();
    let consensus = follower(&net, &token).await;
    let dir = tempfile::tempdir().unwrap();
    let (alice, bob) = pair(dir.path(), &net, &consensus).await;
    let rss = RssSampler::start(net.pids());

    // U (layer 0) feeds V (layer 1, read through a proxy at 8 kB/s) and
    // V' (the other layer-1 mix, at full speed).
    let c = net.consensus().await;
    let (u, v, v2, w) = (
        c.layers()[0][0].id,
        c.layers()[1][0].id,
        c.layers()[1][1].id,
        c.layers()[2][0].id,
    );
    let (ui, vi, v2i) = (net.mix_by_id(&u), net.mix_by_id(&v), net.mix_by_id(&v2));
    proxies[&net.mixes[vi].daemon.name].throttle(8 * 1024);
    let mailbox = net.mailboxes[0].id;
    let (slow, fast) = {
        let c = c.clone();
        tokio::task::spawn_blocking(move || {
            (
                harness::drop_cover_frames(&c, &[u, v, w], mailbox, slow_packets),
                harness::drop_cover_frames(&c, &[u, v2, w], mailbox, slow_packets / 6),
            )
        })
        .await
        .unwrap()
    };
    let stop = CancellationToken::new();
    let gauges = harness::sample_gauges(
        net.mixes[ui].http_addr,
        &[
            "murmur_mixnode_link_queue_depth",
            "murmur_mixnode_unwrap_queue_depth",
        ],
        stop.clone(),
    );
    let v2_before = Metrics::scrape(net.mixes[v2i].http_addr)
        .await
        .sum("murmur_mixnode_packets_received_total");
    // The two streams interleaved, at about 1200 packets/s (what one
    // unwrap worker keeps up with), with real traffic at the same time.
    let u_addr = net.mixes[ui].listen_addr;
    let u_key = c.node(&u).unwrap().link_key.clone();
    let mixed: Vec<Vec<u8>> = slow
        .chunks(6)
        .zip(fast.iter())
        .flat_map(|(s, f)| s.iter().chain([f]).cloned())
        .collect();
    assert_eq!(mixed.len(), slow.len() + fast.len());
    let load = tokio::spawn(harness::send_frames_paced(u_addr, u_key, mixed, 1200));
    let mut to_bob = Sent::new();
    let mut handles = send_texts(&alice, "bob", "during", 6, &mut to_bob).await;
    load.await.unwrap();
    all_delivered(std::mem::take(&mut handles), DELIVERY).await;
    // Every packet for V' got through, while V's link dropped.
    let arrived = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let got = Metrics::scrape(net.mixes[v2i].http_addr)
                .await
                .sum("murmur_mixnode_packets_received_total");
            if got - v2_before >= fast.len() as f64 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    if arrived.is_err() {
        let m = Metrics::scrape(net.mixes[ui].http_addr).await;
        let drops: Vec<&str> = m.0.lines().filter(|l| l.contains("dropped")).collect();
        panic!("the packets for the other next hop did not all arrive; upstream: {drops:#?}");
    }
    let m = Metrics::scrape(net.mixes[ui].http_addr).await;
    let overload = m.labelled(
        "murmur_mixnode_packets_dropped_total",
        "reason",
        "overload_link",
    );
    let failed = m.labelled(
        "murmur_mixnode_packets_dropped_total",
        "reason",
        "link_failed",
    );
    assert!(
        overload + failed > 0.0,
        "the slow link dropped nothing: {:#?}",
        m.0.lines()
            .filter(|l| l.contains("dropped") || l.contains("depth") || l.contains("forwarded"))
            .collect::<Vec<_>>()
    );
    let t = wait_inbox(&bob, &to_bob, DELIVERY).await;
    stop.cancel();
    let max = gauges.await.unwrap();
    let link_depth = max["murmur_mixnode_link_queue_depth"];
    assert!(
        link_depth <= MAX_LINK_QUEUED as f64,
        "link queues held {link_depth} packets, over the cap of {MAX_LINK_QUEUED}"
    );
    assert!(max["murmur_mixnode_unwrap_queue_depth"] <= 2048.0);
    net.assert_others_healthy(&[]).await;
    let (who, kb) = rss.finish(RSS_BOUND_KB);
    harness::assert_logs_clean(&net, &[&alice, &bob], &[&to_bob]);
    report(
        &format!(
            "a next hop that reads at 8 kB/s ({} packets for it, {} for its neighbour)",
            slow.len(),
            fast.len()
        ),
        &[t],
        &format!(
            "upstream mix dropped {overload} (overload_link) + {failed} (link_failed); all {} \
             for the other next hop arrived; link queues at most {link_depth} of \
             {MAX_LINK_QUEUED}; max RSS {} MB ({who})",
            fast.len(),
            kb / 1024
        ),
    );
    alice.shutdown().await;
    bob.shutdown().await;
    token.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_replays_at_a_mix_and_a_mailbox_change_nothing() {
    let mut options = NetOptions::default();
    let mut names = harness::mix_names(options.width);
    names.push("mailbox-1".into());
    let proxies = harness::proxy_nodes(&mut options, &names, 1 << 20);
    let mut net = Net::start_proxied(options, &proxies).await;
    for p in proxies.values() {
        p.record();
    }
    let token = CancellationToken::new();
    let consensus = follower(&net, &token).await;
    let dir = tempfile::tempdir().unwrap();
    let (alice, bob) = pair(dir.path(), &net, &consensus).await;
    let rss = RssSampler::start(net.pids());

    let mut to_bob = Sent::new();
    let hs = send_texts(&alice, "bob", "first", 6, &mut to_bob).await;
    all_delivered(hs, DELIVERY).await;
    let first = wait_inbox(&bob, &to_bob, DELIVERY).await;
    assert_eq!(first.delivered, 6);

    // What an on-path observer captured: every connection into a layer-0
    // mix and into Bob's mailbox. It holds no packet frame in the clear.
    let c = net.consensus().await;
    let mix = net.mix_by_id(&c.layers()[0][0].id);
    let mix_name = net.mixes[mix].daemon.name.clone();
    // Connections that got as far as a whole handshake (a replay of a
    // shorter one would only wait for the handshake timeout).
    let whole = |s: &Vec<u8>| {
        s.len() >= 4 + murmur_wire::link::MESSAGE1_SIZE + murmur_wire::link::MESSAGE3_SIZE
    };
    let mix_streams: Vec<Vec<u8>> = proxies[&mix_name]
        .recorded_streams()
        .into_iter()
        .filter(whole)
        .collect();
    let box_streams: Vec<Vec<u8>> = proxies["mailbox-1"]
        .recorded_streams()
        .into_iter()
        .filter(whole)
        .collect();
    assert!(!mix_streams.is_empty() && !box_streams.is_empty());
    let header = murmur_wire::PacketCodec::header();
    for s in mix_streams.iter().chain(&box_streams) {
        assert!(
            !s.windows(header.len()).any(|w| w == header),
            "a packet frame crossed a link in the clear"
        );
    }
    let mix_addr = net.mixes[mix].listen_addr;
    let box_addr = net.mailboxes[1].listen_addr;
    let mix_key = c.node(&net.mixes[mix].id).unwrap().link_key.clone();
    let box_key = c.node(&net.mailboxes[1].id).unwrap().link_key.clone();
    let mix_before = Metrics::scrape(net.mixes[mix].http_addr).await;
    let box_before = Metrics::scrape(net.mailboxes[1].http_addr).await;

    // What a corrupt node could replay: packets it handled in the clear.
    // Packets into the layer-0 mix (as a client would send them), and
    // packets straight to the mailbox (as the layer-2 mix would pass them
    // on), each sent twice.
    let (mix_frames, box_frames) = {
        let c = c.clone();
        let (l0, l1, l2) = (
            c.layers()[0][0].id,
            c.layers()[1][0].id,
            c.layers()[2][0].id,
        );
        let mailbox = net.mailboxes[1].id;
        tokio::task::spawn_blocking(move || {
            (
                harness::drop_cover_frames(&c, &[l0, l1, l2], mailbox, 20),
                harness::drop_cover_frames(&c, &[], mailbox, 20),
            )
        })
        .await
        .unwrap()
    };
    let layer2 = net.mix_by_id(&c.layers()[2][0].id);
    let as_layer2 = harness::link_key_of(&net.mixes[layer2]);

    // Flood: garbage connections to both, the captured connections replayed
    // to both, packets replayed by a node to both, and real messages at
    // the same time.
    let flood = tokio::spawn(async move {
        let mut closed = 0;
        for i in 0..40 {
            let addr = if i % 2 == 0 { mix_addr } else { box_addr };
            if harness::garbage_is_refused(addr, 8192, Duration::from_secs(10)).await {
                closed += 1;
            }
        }
        closed
    });
    let mut captured_refused = 0;
    for (addr, streams) in [(mix_addr, &mix_streams), (box_addr, &box_streams)] {
        for s in streams.iter() {
            if harness::replayed_stream_is_refused(addr, s, Duration::from_secs(15)).await {
                captured_refused += 1;
            }
        }
    }
    let captured = mix_streams.len() + box_streams.len();
    assert_eq!(
        captured_refused, captured,
        "a replayed capture was taken as a link"
    );
    for _ in 0..2 {
        harness::send_frames(mix_addr, &mix_key, None, &mix_frames).await;
        harness::send_frames(box_addr, &box_key, Some(&as_layer2), &box_frames).await;
    }
    let hs = send_texts(&alice, "bob", "during", 6, &mut to_bob).await;
    let closed = flood.await.unwrap();
    assert_eq!(closed, 40, "a garbage connection was left open");
    all_delivered(hs, DELIVERY).await;
    let t = wait_inbox(&bob, &to_bob, DELIVERY).await;
    // Give replays time to be processed before counting.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mix_after = Metrics::scrape(net.mixes[mix].http_addr).await;
    let box_after = Metrics::scrape(net.mailboxes[1].http_addr).await;
    let delta = |a: &Metrics, b: &Metrics, s: &str| a.sum(s) - b.sum(s);
    let mix_replays = delta(
        &mix_after,
        &mix_before,
        "murmur_mixnode_packets_dropped_total{reason=\"replay\"}",
    );
    let mix_handshakes = delta(
        &mix_after,
        &mix_before,
        "murmur_mixnode_inbound_closed_total{reason=\"handshake\"}",
    );
    let box_replays = delta(
        &box_after,
        &box_before,
        "murmur_mailbox_packets_dropped_total{reason=\"replay\"}",
    );
    let box_handshakes = delta(
        &box_after,
        &box_before,
        "murmur_mailbox_inbound_closed_total{reason=\"handshake\"}",
    );
    // Each packet's second copy is a replay; garbage and captured
    // connections fail their handshake.
    assert_eq!(
        mix_replays,
        mix_frames.len() as f64,
        "every replay at the mix is dropped and counted"
    );
    assert_eq!(box_replays, box_frames.len() as f64);
    assert_eq!(mix_handshakes, 20.0 + mix_streams.len() as f64);
    assert_eq!(box_handshakes, 20.0 + box_streams.len() as f64);
    let (mix_garbage, box_garbage) = (20, 20);
    net.assert_others_healthy(&[]).await;
    let (who, kb) = rss.finish(RSS_BOUND_KB);
    harness::assert_logs_clean(&net, &[&alice, &bob], &[&to_bob]);
    report(
        "40 garbage connections, every captured connection replayed, and packets replayed by a node, at a mix and a mailbox",
        &[t],
        &format!(
            "{captured} captured connections replayed: all refused at the handshake, no frame \
             in the clear in them; mix: {mix_replays} replays dropped, {mix_garbage} garbage \
             connections closed; mailbox: {box_replays} replays dropped, {box_garbage} garbage \
             connections closed; max RSS {} MB ({who})",
            kb / 1024
        ),
    );
    alice.shutdown().await;
    bob.shutdown().await;
    token.cancel();
}
