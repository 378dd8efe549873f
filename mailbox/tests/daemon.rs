//! The whole provider in-process against a real directory authority on
//! loopback: it registers and is listed; a real Sphinx packet sent to its
//! packet port deposits a message, whose acknowledgement travels back
//! through the provider's own outbound link (the SURB leads to an ack
//! queue at the same provider) and is fetched and opened by the sender;
//! the owner fetches and deletes the deposit; a replayed packet is dropped
//! and counted. Also: two providers in one process (as devnet runs them),
//! and a failed start that leaves the caller's token alone.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::net::{Owner, Sender, WAIT, authority, listed, send_packets, wait_healthy};
use common::owner_key;
use murmur_directory::AuthorityPin;
use murmur_mailbox::{
    Config, MailboxHandle, Quota, RedbStore, start_mailbox, start_mailbox_with_topology,
};
use murmur_net::clock::{Clock, OffsetClock};
use murmur_net::http::HttpClient;
use murmur_node::engine::{CloseReason, DropReason, StaticTopology};
use murmur_wire::ed25519_dalek::SigningKey;
use murmur_wire::mailbox::QueueItem;
use murmur_wire::{Ack, MessageId};
use tokio_util::sync::CancellationToken;

const L: u64 = 3600;

/// A clock in the middle of the current epoch, so no test crosses a boundary.
fn mid_epoch_clock() -> Arc<OffsetClock> {
    let clock = OffsetClock::new();
    let now = clock.now().as_millis() as i64;
    clock.set_offset_ms(L as i64 * 500 - now % (L as i64 * 1000));
    Arc::new(clock)
}

fn config(dir: &std::path::Path, auth: &murmur_directory::AuthorityHandle) -> Config {
    let mut c = Config::new(dir);
    c.listen_addr = "127.0.0.1:0".parse().unwrap();
    c.http.listen = "127.0.0.1:0".parse().unwrap();
    c.operator_addr = "127.0.0.1:0".parse().unwrap();
    c.network.epoch_secs = L;
    c.engine.workers = 1;
    c.engine.reconnect_min_ms = 20;
    c.replay.expected_packet_rate = 10.0;
    c.replay.fsync_interval_ms = 50;
    c.directory.authorities = vec![AuthorityPin {
        addr: auth.addr,
        key: auth.key,
    }];
    c.directory.request_timeout_ms = 2000;
    c
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + WAIT;
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposit_is_acknowledged_through_the_mixnet_fetched_and_a_replay_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let clock = mid_epoch_clock();
    // One token for everything, as devnet does.
    let stop = CancellationToken::new();
    let auth = authority(&dir.path().join("auth"), L, clock.clone(), &stop).await;
    let mut boxes: Vec<MailboxHandle> = Vec::new();
    for i in 0..2u8 {
        let handle = start_mailbox(
            config(&dir.path().join(format!("mailbox{i}")), &auth),
            SigningKey::from_bytes(&[10 + i; 32]),
            clock.clone(),
            stop.clone(),
        )
        .await
        .unwrap();
        boxes.push(handle);
    }
    assert_ne!(boxes[0].packet_addr, boxes[1].packet_addr);
    assert_ne!(boxes[0].http_addr, boxes[1].http_addr);

    // Both register and are listed as mailboxes, with the addresses they
    // bound (port 0 was resolved before the descriptor was made).
    for b in &boxes {
        let body = wait_healthy(b.operator_addr).await;
        assert!(body.contains("listed as a mailbox"), "{body}");
        assert!(b.registration_metrics().registrations() >= 1);
        let (hop, packet_addr, http_addr) = listed(&auth, &*clock, b.node_id).await;
        assert_eq!(hop.id, b.node_id);
        assert_eq!((packet_addr, http_addr), (b.packet_addr, b.http_addr));
        assert_eq!(b.public_addr, b.packet_addr);
    }
    let mailbox = &boxes[0];
    let (hop, _, _) = listed(&auth, &*clock, mailbox.node_id).await;
    // The key it is listed with is the one it publishes for this epoch.
    let epoch = clock.now_secs() / L;
    let published = mailbox.descriptor().unwrap().verify().unwrap();
    assert_eq!(published.descriptor().key_for(epoch), Some(hop.key));

    let me = SigningKey::from_bytes(&[10; 32]);
    let other = SigningKey::from_bytes(&[11; 32]);
    let api = Owner::new(mailbox.http_addr, &me, clock.clone());
    let (recipient, sender) = (owner_key(1), owner_key(2));
    let inbox = api.create(&recipient).await;
    let ack_queue = api.create(&sender).await;

    // A deposit through the packet port, its acknowledgement SURB leading
    // back to this provider.
    let mut client = Sender::new(7);
    let id = MessageId::from_bytes([0x42; 16]);
    let (packet, recovery) = client.deposit(hop, inbox, id, 0x5A, hop, ack_queue);
    // From the other provider: a node of the consensus.
    send_packets(mailbox.packet_addr, &other, &me, &[&packet]).await;

    // The acknowledgement went out through the engine's outbound link, came
    // back in through the packet port, and is stored as a SURB reply.
    let acks = api.fetch_at_least(&sender, ack_queue, 1).await;
    assert_eq!(acks.entries.len(), 1);
    let QueueItem::Reply { surb_id, sealed } = &acks.entries[0].item else {
        panic!("expected a SURB reply, got {:?}", acks.entries[0].item);
    };
    assert_eq!(*surb_id, recovery.id());
    assert_eq!(Ack::parse(&recovery.open(sealed).unwrap()).unwrap().id, id);
    let m = mailbox.metrics();
    assert_eq!(m.deposits("stored"), 1);
    assert_eq!(m.acks_sent(), 1);
    let stats = mailbox.stats();
    assert!(stats.sent_own >= 1, "{stats:?}");
    assert!(stats.delivered >= 2, "{stats:?}");

    // The recipient fetches the deposit and deletes it.
    let got = api.fetch(&recipient, inbox).await;
    assert_eq!(got.entries.len(), 1);
    match &got.entries[0].item {
        QueueItem::Deposit { id: got_id, body } => {
            assert_eq!(*got_id, id);
            assert!(body.iter().all(|b| *b == 0x5A));
        }
        other => panic!("expected a deposit, got {other:?}"),
    }
    assert_eq!(
        api.delete(&recipient, inbox, vec![got.entries[0].seq])
            .await,
        1
    );
    assert!(api.fetch(&recipient, inbox).await.entries.is_empty());

    // The very same packet again: the replay cache drops it before the
    // final hop sees it; nothing is stored or acknowledged.
    let delivered = mailbox.stats().delivered;
    send_packets(mailbox.packet_addr, &other, &me, &[&packet]).await;
    wait_for("the replay to be dropped", || {
        mailbox.stats().dropped(DropReason::Replay) == 1
    })
    .await;
    assert_eq!(mailbox.stats().delivered, delivered);
    assert_eq!(m.deposits("stored"), 1);
    assert_eq!(m.deposits("duplicate"), 0);
    assert_eq!(m.acks_sent(), 1);
    assert!(api.fetch(&recipient, inbox).await.entries.is_empty());

    // `/metrics` (on the operator listener) shows the provider's and the
    // engine's counters together.
    let (status, body) = HttpClient::new(Duration::from_secs(5))
        .get(mailbox.operator_addr, "/metrics", 1 << 20)
        .await
        .unwrap();
    assert_eq!(status.as_u16(), 200);
    let text = String::from_utf8_lossy(&body);
    for needle in [
        "murmur_mailbox_deposits_total{outcome=\"stored\"} 1",
        "murmur_mailbox_acks_sent_total 1",
        "murmur_mailbox_packets_dropped_total{reason=\"replay\"} 1",
        "murmur_mailbox_packets_received_total",
        "murmur_mailbox_registrations_total",
    ] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }
    assert_eq!(text.matches("# EOF").count(), 1);
    // The public fetch port serves neither: it speaks only the link
    // protocol, and a plain HTTP request fails its handshake (counted).
    let plain = HttpClient::new(Duration::from_secs(5))
        .get(mailbox.http_addr, "/metrics", 1 << 20)
        .await;
    assert!(plain.is_err(), "{plain:?}");
    wait_for("the failed handshake to be counted", || {
        m.api_handshake_failures("bad_message1") >= 1
    })
    .await;

    // Shutdown: the database is closed when `wait` returns.
    stop.cancel();
    for b in &boxes {
        b.wait().await;
    }
    RedbStore::open(
        &dir.path().join("mailbox0").join("mailbox.redb"),
        Quota::default(),
    )
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_start_cleans_up_and_leaves_the_callers_token_alone() {
    let dir = tempfile::tempdir().unwrap();
    let clock = mid_epoch_clock();
    let stop = CancellationToken::new();
    let auth = authority(&dir.path().join("auth"), L, clock.clone(), &stop).await;
    // The HTTP port is taken: the start fails after the database, the keys
    // and the packet engine are up.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut c = config(&dir.path().join("mailbox"), &auth);
    c.http.listen = taken.local_addr().unwrap();
    let err = start_mailbox(
        c,
        SigningKey::from_bytes(&[9; 32]),
        clock.clone(),
        stop.clone(),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("could not listen"), "{err}");
    assert!(!stop.is_cancelled());
    // Everything it started has stopped: the database can be opened again.
    RedbStore::open(
        &dir.path().join("mailbox").join("mailbox.redb"),
        Quota::default(),
    )
    .unwrap();

    // No authorities: refused before anything starts.
    let mut c = config(&dir.path().join("other"), &auth);
    c.directory.authorities.clear();
    let err = start_mailbox(c, SigningKey::from_bytes(&[9; 32]), clock, stop.clone())
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("no directory authorities"),
        "{err}"
    );
    assert!(!stop.is_cancelled());
    stop.cancel();
}

/// A consensus for the current epoch that lists only a mix whose
/// identity is `mix` (not the provider).
fn consensus_with_only(mix: &SigningKey, clock: &dyn Clock) -> murmur_wire::VerifiedConsensus {
    use murmur_wire::{AuthoritySet, Consensus, IdentityKey, MixEntry, SignedConsensus};
    let epoch = clock.now_secs() / L;
    let authority = SigningKey::from_bytes(&[201; 32]);
    let doc = Consensus {
        version: murmur_wire::directory::CONSENSUS_VERSION,
        epoch,
        valid_after: epoch * L,
        valid_until: (epoch + 1) * L,
        params: murmur_wire::NetworkParams {
            epoch_secs: L,
            mean_delay_us: 1000,
            max_delay_us: 1_000_000,
            client_rate: 0.0,
            client_loop_rate: 0.0,
            mix_loop_rate: 0.0,
            packet_size: murmur_wire::PACKET_SIZE as u32,
        },
        mixes: vec![MixEntry {
            layer: 2,
            identity: IdentityKey::from(&mix.verifying_key()),
            packet_addr: "127.0.0.1:9".parse().unwrap(),
            link_key: common::net::link_of(mix).public().clone(),
            sphinx_key: murmur_wire::SphinxPublicKey([3; 32]),
        }],
        mailboxes: vec![],
    };
    let set = AuthoritySet::new(vec![IdentityKey::from(&authority.verifying_key())], 1).unwrap();
    SignedConsensus::sign(&doc, &authority)
        .unwrap()
        .verify(&set, clock.now_secs(), Some(epoch))
        .unwrap()
}

/// Without a consensus the provider can tell no node from a stranger, so it
/// takes no packet links at all; once it has one, a deposit from a listed
/// mix is stored even when its acknowledgement cannot be routed (the
/// acknowledgement's first hop, here the provider itself, is not listed),
/// and the failed acknowledgement is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_consensus_no_links_and_unroutable_acknowledgements_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let clock = mid_epoch_clock();
    let stop = CancellationToken::new();
    let mut c = Config::new(dir.path());
    c.listen_addr = "127.0.0.1:0".parse().unwrap();
    c.http.listen = "127.0.0.1:0".parse().unwrap();
    c.operator_addr = "127.0.0.1:0".parse().unwrap();
    c.engine.workers = 1;
    c.replay.expected_packet_rate = 10.0;
    // No directory: the topology is what the test sets.
    let topology = Arc::new(StaticTopology::new());
    let me = SigningKey::from_bytes(&[4; 32]);
    let mix = SigningKey::from_bytes(&[5; 32]);
    let mailbox =
        start_mailbox_with_topology(c, me.clone(), clock.clone(), topology.clone(), stop.clone())
            .await
            .unwrap();
    let (status, body) = HttpClient::new(Duration::from_secs(5))
        .get(mailbox.operator_addr, "/healthz", 4096)
        .await
        .unwrap();
    assert_eq!(status.as_u16(), 503);
    assert!(String::from_utf8_lossy(&body).contains("no consensus yet"));

    // The key for this epoch, from the descriptor the provider would publish.
    let descriptor = mailbox.descriptor().unwrap().verify().unwrap();
    let hop = murmur_wire::Hop {
        id: mailbox.node_id,
        key: descriptor
            .descriptor()
            .key_for(clock.now_secs() / L)
            .unwrap(),
    };
    assert_eq!(descriptor.descriptor().http_addr, Some(mailbox.http_addr));
    let api = Owner::new(mailbox.http_addr, &me, clock.clone());
    let inbox = api.create(&owner_key(1)).await;
    let (packet, _) =
        Sender::new(1).deposit(hop, inbox, MessageId::from_bytes([1; 16]), 1, hop, inbox);
    // No consensus: the link is closed after the handshake, unread.
    send_packets(mailbox.packet_addr, &mix, &me, &[&packet]).await;
    wait_for("the link to be refused", || {
        mailbox.stats().closed(CloseReason::ClientRefused) == 1
    })
    .await;
    assert_eq!(mailbox.stats().received, 0);

    // A consensus listing the mix (and not the provider).
    topology.set_current(consensus_with_only(&mix, &*clock));
    send_packets(mailbox.packet_addr, &mix, &me, &[&packet]).await;
    // Stored and durable, but the acknowledgement's first hop is unknown:
    // refused by the links and counted.
    let m = mailbox.metrics().clone();
    wait_for("the acknowledgement to fail", || m.acks_failed() == 1).await;
    assert_eq!(m.deposits("stored"), 1);
    assert_eq!(m.acks_sent(), 0);
    assert_eq!(mailbox.stats().dropped(DropReason::UnknownNextHop), 1);
    assert_eq!(mailbox.stats().peers_node, 1);
    assert_eq!(api.fetch(&owner_key(1), inbox).await.entries.len(), 1);
    assert_eq!(mailbox.registration_metrics().registrations(), 0);
    stop.cancel();
    mailbox.stopped().await;
}
