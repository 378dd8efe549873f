//! The delay stage: holds each forward packet until its deadline (arrival
//! plus the delay in its header), in a bounded `DelayQueue`.

use std::sync::Arc;

use murmur_wire::{NodeId, Packet};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::time::DelayQueue;

use super::links::Links;
use super::metrics::{DropReason, EngineMetrics};

/// A processed packet waiting for its deadline.
pub(super) struct Delayed {
    pub(super) deadline: Instant,
    pub(super) next_hop: NodeId,
    pub(super) packet: Packet,
}

pub(super) async fn run(
    mut rx: mpsc::Receiver<Vec<Delayed>>,
    links: Arc<Links>,
    metrics: EngineMetrics,
    max: usize,
    shutdown: CancellationToken,
) {
    let mut queue: DelayQueue<(NodeId, Packet)> = DelayQueue::new();
    let cancelled = shutdown.cancelled();
    tokio::pin!(cancelled);
    loop {
        tokio::select! {
            _ = &mut cancelled => break,
            Some(expired) = std::future::poll_fn(|cx| queue.poll_expired(cx)), if !queue.is_empty() => {
                let (next_hop, packet) = expired.into_inner();
                if let Err(reason) = links.send(next_hop, packet) {
                    metrics.drop(reason);
                }
            }
            msg = rx.recv() => match msg {
                Some(batch) => {
                    for d in batch {
                        if queue.len() >= max {
                            metrics.drop(DropReason::OverloadDelay);
                        } else {
                            queue.insert_at((d.next_hop, d.packet), d.deadline);
                        }
                    }
                }
                None => break,
            },
        }
        metrics.delay_queue.set(queue.len() as i64);
    }
    // Packets still held are lost: sending them early would break mixing.
    metrics.drop_n(DropReason::Shutdown, queue.len() as u64);
    metrics.delay_queue.set(0);
}
