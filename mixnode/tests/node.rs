//! Whole mix nodes in-process (keys on disk, engine, loop cover, HTTP), fed
//! a consensus signed by a test authority.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

// The engine test helpers live with the engine, in murmur-node.
#[path = "../../node/tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use murmur_mixnode::loops::LoopSettings;
use murmur_mixnode::{MixNodeConfig, MixNodeHandle, start_mixnode_with_topology};
use murmur_net::clock::{Clock, OffsetClock};
use murmur_net::http::HttpClient;
use murmur_node::engine::{EngineLimits, StaticTopology};
use murmur_wire::policy::epoch_at;
use murmur_wire::{NetworkParams, SignedDescriptor};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(30);

/// A clock in the middle of the current epoch, so no test crosses a boundary.
fn mid_epoch_clock() -> Arc<OffsetClock> {
    let clock = OffsetClock::new();
    let now = clock.now().as_millis() as i64;
    let into = now % (L as i64 * 1000);
    clock.set_offset_ms(L as i64 * 500 - into);
    Arc::new(clock)
}

fn config(dir: &std::path::Path) -> MixNodeConfig {
    let mut c = MixNodeConfig::new(dir);
    c.listen_addr = "127.0.0.1:0".parse().unwrap();
    c.http_addr = "127.0.0.1:0".parse().unwrap();
    c.engine = EngineLimits {
        workers: 1,
        reconnect_min_ms: 20,
        reconnect_max_ms: 200,
        ..EngineLimits::default()
    };
    c.replay = replay_settings();
    c.loops = LoopSettings {
        max_outstanding: 1000,
        timeout_slack_ms: 1500,
    };
    c
}

struct Node {
    handle: MixNodeHandle,
    shutdown: CancellationToken,
}

fn member(d: &SignedDescriptor, epoch: u64, layer: u8) -> Member {
    let v = d.verify().unwrap();
    let desc = v.descriptor();
    Member {
        identity: desc.identity,
        addr: desc.packet_addr,
        link: desc.link_key.clone(),
        key: desc.key_for(epoch).unwrap(),
        layer: Some(layer),
    }
}

fn loop_params() -> NetworkParams {
    NetworkParams {
        mix_loop_rate: 20.0,
        ..params(Duration::from_millis(100))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loops_return_and_a_dead_peer_shows_in_the_loss_counter() {
    let dir = tempfile::tempdir().unwrap();
    let clock = mid_epoch_clock();
    let epoch = epoch_at(clock.now_secs(), L);
    let topology = Arc::new(StaticTopology::new());
    let layers = [0u8, 1, 2, 2];
    let mut nodes = Vec::new();
    for (i, _) in layers.iter().enumerate() {
        let shutdown = CancellationToken::new();
        let handle = start_mixnode_with_topology(
            config(&dir.path().join(format!("n{i}"))),
            identity(i as u8 + 1),
            clock.clone(),
            topology.clone(),
            shutdown.clone(),
        )
        .await
        .unwrap();
        nodes.push(Node { handle, shutdown });
    }
    let members: Vec<Member> = nodes
        .iter()
        .zip(layers)
        .map(|(n, layer)| member(&n.handle.descriptor().unwrap(), epoch, layer))
        .collect();

    // Before the consensus lists it, a node is not healthy.
    let http = HttpClient::new(Duration::from_secs(5));
    let (status, body) = http
        .get(nodes[0].handle.http_addr, "/healthz", 4096)
        .await
        .unwrap();
    assert_eq!(status.as_u16(), 503, "{body:?}");

    topology.set_current(consensus(epoch, loop_params(), &members));
    let (status, body) = http
        .get(nodes[0].handle.http_addr, "/healthz", 4096)
        .await
        .unwrap();
    assert_eq!(status.as_u16(), 200);
    assert!(String::from_utf8_lossy(&body).contains("layer 0"));

    // Loops go out and come back, at every node.
    assert!(
        wait_until(WAIT, || nodes.iter().all(|n| n
            .handle
            .loop_metrics()
            .returned()
            >= 5))
        .await,
        "returned: {:?}",
        nodes
            .iter()
            .map(|n| n.handle.loop_metrics().returned())
            .collect::<Vec<_>>()
    );
    let l0 = &nodes[0].handle;
    let (n1, n2a, n2b) = (
        nodes[1].handle.node_id,
        nodes[2].handle.node_id,
        nodes[3].handle.node_id,
    );
    assert!(l0.loop_metrics().sent(&n1) > 0);
    assert_eq!(l0.loop_metrics().final_hop_dropped(), 0);

    // One layer-2 node dies: loops through it are lost, the others return.
    nodes[3].shutdown.cancel();
    nodes[3].handle.wait().await;
    let lost_n2a_before = l0.loop_metrics().lost(&n2a);
    assert!(
        wait_until(WAIT, || l0.loop_metrics().lost(&n2b) >= 5).await,
        "lost via the dead peer: {}",
        l0.loop_metrics().lost(&n2b)
    );
    assert_eq!(l0.loop_metrics().lost(&n2a), lost_n2a_before);
    assert!(l0.loop_metrics().lost(&n1) >= 5);
    let returned = l0.loop_metrics().returned();
    assert!(
        wait_until(WAIT, || l0.loop_metrics().returned() > returned + 3).await,
        "loops through the live peer keep returning"
    );

    // The metrics page shows it.
    let (status, body) = http.get(l0.http_addr, "/metrics", 1 << 20).await.unwrap();
    assert_eq!(status.as_u16(), 200);
    let text = String::from_utf8_lossy(&body);
    let dead = murmur_mixnode::loops::peer_label(&n2b);
    assert!(
        text.lines()
            .any(|l| l.starts_with("murmur_mixnode_loops_lost_total") && l.contains(&dead)),
        "{text}"
    );
    for needle in [
        "murmur_mixnode_packets_received_total",
        "murmur_mixnode_packets_forwarded_total",
        "murmur_mixnode_packets_dropped_total{reason=\"replay\"}",
        "murmur_mixnode_processing_seconds_bucket",
        "murmur_mixnode_delay_queue_depth",
        "murmur_mixnode_inbound_connections",
    ] {
        assert!(text.contains(needle), "missing {needle}");
    }

    for n in &nodes[..3] {
        n.shutdown.cancel();
        n.handle.wait().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wildcard_listen_address_needs_a_public_address() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.listen_addr = "0.0.0.0:0".parse().unwrap();
    let shared = CancellationToken::new();
    let err = start_mixnode_with_topology(
        c,
        identity(1),
        mid_epoch_clock(),
        Arc::new(StaticTopology::new()),
        shared.clone(),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("public_addr"), "{err}");
    // A failed start does not stop whatever else shares the caller's token.
    assert!(!shared.is_cancelled());
}
