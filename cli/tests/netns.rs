//! The multi-host test bed: the fault harness's network of real daemon
//! processes, each on a host of its own — a network namespace with its own
//! address on a bridge (`harness/hosts.rs`) — so that nodes reach each other
//! across interfaces between distinct addresses, as on separate machines.
//! While a file is in flight, a middle-layer mix's host has its link cut
//! and restored, or its daemon killed (kill -9); nothing is lost or
//! delivered twice, and the other hosts keep serving.
//!
//! Needs root and `ip` (network namespaces). Without them the test says so
//! and passes, unless `MURMUR_REQUIRE_NETNS=1`, when it fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod harness;

use std::sync::Arc;
use std::time::Duration;

use harness::hosts::{self, Hosts};
use harness::{
    Net, NetOptions, Sent, all_delivered, file_and_texts_in_flight, follower, pair, report,
    send_texts, wait_inbox,
};
use tokio_util::sync::CancellationToken;

const DELIVERY: Duration = Duration::from_secs(120);

fn hosts_or_skip() -> Option<Arc<Hosts>> {
    match hosts::unavailable() {
        None => Some(Arc::new(Hosts::new())),
        Some(why) if std::env::var_os("MURMUR_REQUIRE_NETNS").is_some() => {
            panic!("MURMUR_REQUIRE_NETNS is set, but network namespaces are unavailable: {why}")
        }
        Some(why) => {
            eprintln!("skipped: network namespaces are unavailable here ({why})");
            None
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Fault {
    /// The host's link down for 3 s, then up.
    CutAndRestore,
    /// The host's mix daemon killed with SIGKILL.
    Kill,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mix_hosts_link_cut_and_restored_loses_nothing() {
    on_separate_hosts(Fault::CutAndRestore).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mix_host_killed_loses_nothing() {
    on_separate_hosts(Fault::Kill).await;
}

async fn on_separate_hosts(fault: Fault) {
    let Some(hosts) = hosts_or_skip() else {
        return;
    };
    let mut net = Net::start(NetOptions {
        hosts: Some(hosts.clone()),
        ..NetOptions::default()
    })
    .await;
    // Every node on its own address, none on loopback.
    let c = net.consensus().await;
    let nodes: Vec<_> = c.layers().iter().flatten().chain(c.mailboxes()).collect();
    let mut addrs: Vec<_> = nodes.iter().map(|n| n.packet_addr.ip()).collect();
    addrs.sort();
    addrs.dedup();
    assert_eq!(addrs.len(), nodes.len(), "{addrs:?}");
    assert!(addrs.iter().all(|a| !a.is_loopback()), "{addrs:?}");

    let token = CancellationToken::new();
    let consensus = follower(&net, &token).await;
    let dir = tempfile::tempdir().unwrap();
    let (alice, bob) = pair(dir.path(), &net, &consensus).await;

    // Cut a middle-layer mix's host once part of the file is acknowledged.
    let (mut to_bob, to_alice, handles, total) =
        file_and_texts_in_flight(dir.path(), &alice, &bob, 3, DELIVERY).await;
    let acked_at_cut = handles[0].progress().acked;
    let victim = net.mix_by_id(&c.layers()[1][0].id);
    // Hosts are added in the harness's order: authorities, mixes, mailboxes.
    let host = net.authorities.len() + victim;
    assert_eq!(
        hosts.ip(host),
        net.mixes[victim].listen_addr.ip(),
        "host numbering"
    );
    let victim_name = net.mixes[victim].daemon.name.clone();
    match fault {
        Fault::CutAndRestore => {
            hosts.cut(host);
            tokio::time::sleep(Duration::from_secs(3)).await;
            hosts.restore(host);
        }
        Fault::Kill => net.mixes[victim].daemon.kill9(),
    }

    all_delivered(handles, DELIVERY).await;
    let t_alice = wait_inbox(&alice, &to_alice, DELIVERY).await;
    let mut later = Sent::new();
    let hs = send_texts(&alice, "bob", "after", 3, &mut later).await;
    all_delivered(hs, DELIVERY).await;
    to_bob.extend(later);
    let t_bob = wait_inbox(&bob, &to_bob, DELIVERY).await;
    // The other hosts serve; a cut host is back and serving too.
    match fault {
        Fault::CutAndRestore => net.assert_others_healthy(&[]).await,
        Fault::Kill => net.assert_others_healthy(&[&victim_name]).await,
    }
    let retrans = alice.stats().retransmissions + bob.stats().retransmissions;
    let what = match fault {
        Fault::CutAndRestore => "link cut for 3 s, then restored",
        Fault::Kill => "daemon killed (kill -9)",
    };
    report(
        &format!("separate hosts (network namespaces): a middle-layer mix's {what}"),
        &[t_bob, t_alice],
        &format!(
            "{} hosts on a bridge, one address each; 60 kB file ({total} packets, \
             {acked_at_cut} acknowledged at the fault) + 19 texts; {retrans} retransmissions",
            net.authorities.len() + net.mixes.len() + net.mailboxes.len()
        ),
    );
    alice.shutdown().await;
    bob.shutdown().await;
    token.cancel();
    drop(net);
    drop(hosts);
}
