//! Packet links from the client to first-layer mix nodes: one persistent
//! encrypted link per node (`murmur_net::connect` as an unidentified client:
//! the mix proves the link key the consensus lists for it, the client uses
//! a fresh key per connection), opened on first use, reconnected with
//! backoff, fed by a bounded queue. A packet that cannot be queued is
//! dropped and counted; the send loop's retransmission covers it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::SinkExt;
use murmur_net::LinkSettings;
use murmur_wire::link::Purpose;
use murmur_wire::{LinkPublicKey, NodeId, Packet, PacketCodec};
use tokio::sync::mpsc;
use tokio_util::codec::FramedWrite;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

const LINK_QUEUE: usize = 1024;

/// Counters of the links.
#[derive(Debug, Default)]
pub(crate) struct LinkStats {
    /// Packets written to a socket.
    pub(crate) sent: AtomicU64,
    /// Packets dropped: queue full, or lost with a broken connection.
    pub(crate) dropped: AtomicU64,
    /// Connections or link handshakes that failed.
    pub(crate) handshake_failures: AtomicU64,
}

/// One link per node: its address and the queue feeding its task.
type LinkMap = HashMap<NodeId, (SocketAddr, [u8; 32], mpsc::Sender<Packet>)>;

/// The client's outbound links.
#[derive(Clone, Debug)]
pub(crate) struct Links {
    inner: Arc<std::sync::Mutex<LinkMap>>,
    stats: Arc<LinkStats>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
}

impl Links {
    /// Links whose tasks stop when `shutdown` is cancelled.
    pub(crate) fn new(tracker: TaskTracker, shutdown: CancellationToken) -> Self {
        Self {
            inner: Arc::default(),
            stats: Arc::default(),
            tracker,
            shutdown,
        }
    }

    /// The counters.
    pub(crate) fn stats(&self) -> &LinkStats {
        &self.stats
    }

    /// Queues `packet` for `node` at `addr`, which must prove `key`.
    /// Returns false if it was dropped.
    pub(crate) fn send(
        &self,
        node: NodeId,
        addr: SocketAddr,
        key: &LinkPublicKey,
        packet: Packet,
    ) -> bool {
        let Ok(mut links) = self.inner.lock() else {
            return false;
        };
        let needs_new = match links.get(&node) {
            Some((a, k, tx)) => *a != addr || *k != key.dh || tx.is_closed(),
            None => true,
        };
        if needs_new {
            let (tx, rx) = mpsc::channel(LINK_QUEUE);
            let stats = self.stats.clone();
            let shutdown = self.shutdown.clone();
            self.tracker
                .spawn(run_link(addr, key.clone(), rx, stats, shutdown));
            links.insert(node, (addr, key.dh, tx));
        }
        let Some((_, _, tx)) = links.get(&node) else {
            return false;
        };
        match tx.try_send(packet) {
            Ok(()) => true,
            Err(_) => {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }
}

async fn run_link(
    addr: SocketAddr,
    key: LinkPublicKey,
    mut rx: mpsc::Receiver<Packet>,
    stats: Arc<LinkStats>,
    shutdown: CancellationToken,
) {
    let mut backoff = Duration::from_millis(50);
    let settings = LinkSettings {
        handshake_timeout: Duration::from_secs(5),
        ..LinkSettings::default()
    };
    loop {
        let stream = tokio::select! {
            _ = shutdown.cancelled() => return,
            s = murmur_net::connect(addr, Purpose::Packets, None, &key, &settings) => s,
        };
        let stream = match stream {
            Ok(s) => s,
            Err(e) => {
                stats.handshake_failures.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(error = %e, "first-hop link: connect failed; retrying");
                // Packets queued meanwhile stay queued (bounded); retry.
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        backoff = Duration::from_millis(50);
        let mut framed = FramedWrite::new(stream, PacketCodec);
        loop {
            let packet = tokio::select! {
                _ = shutdown.cancelled() => return,
                p = rx.recv() => match p {
                    Some(p) => p,
                    None => return,
                },
            };
            if framed.send(packet).await.is_err() {
                stats.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::debug!("first-hop link broke; reconnecting");
                break;
            }
            stats.sent.fetch_add(1, Ordering::Relaxed);
        }
    }
}
