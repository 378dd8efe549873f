//! The delay stage: holds each forward packet until its deadline (arrival
//! plus the delay in its header), then hands it to its link.
//!
//! Two parts, because tokio's timer has a resolution of one millisecond and
//! rounds deadlines up: a packet released by it alone leaves on average
//! half a millisecond, and up to a whole one, after its deadline.
//!
//! * A tokio task holds packets in a bounded `DelayQueue` until [`LEAD`]
//!   before their deadline (coarse, cheap for many packets and long
//!   delays).
//! * A release thread then holds each one until its exact deadline: a heap
//!   ordered by deadline, waited on with a condition variable (the kernel's
//!   high-resolution timers, tens of microseconds). Deadlines are read on
//!   tokio's clock, re-read at least every millisecond, so a paused clock
//!   in tests holds packets until the test advances it.
//!
//! A packet is never released before its deadline.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use murmur_wire::{NodeId, Packet};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::time::DelayQueue;

use super::links::Links;
use super::metrics::{DropReason, EngineMetrics};

/// How long before its deadline a packet moves from the coarse timer to
/// the release thread: more than the timer's resolution, so the coarse
/// timer's rounding never makes a packet late.
pub(super) const LEAD: Duration = Duration::from_millis(2);

/// Longest the release thread waits without reading the clock again.
const RECHECK: Duration = Duration::from_millis(1);

/// A processed packet waiting for its deadline.
pub(super) struct Delayed {
    pub(super) deadline: Instant,
    pub(super) next_hop: NodeId,
    pub(super) packet: Packet,
}

/// A packet in the release heap; ordered so that the earliest deadline is
/// the greatest (`BinaryHeap` is a max-heap), ties by arrival order.
struct Held {
    deadline: Instant,
    seq: u64,
    next_hop: NodeId,
    packet: Packet,
}

impl PartialEq for Held {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Held {}
impl PartialOrd for Held {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Held {
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .deadline
            .cmp(&self.deadline)
            .then(other.seq.cmp(&self.seq))
    }
}

#[derive(Default)]
struct ReleaseState {
    heap: BinaryHeap<Held>,
    seq: u64,
    stopped: bool,
}

/// The release stage shared by the delay task and the release thread.
#[derive(Default)]
pub(super) struct Release {
    state: Mutex<ReleaseState>,
    wake: Condvar,
}

impl Release {
    fn lock(&self) -> MutexGuard<'_, ReleaseState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Packets held here now.
    fn len(&self) -> usize {
        self.lock().heap.len()
    }

    fn push(&self, d: Delayed) {
        let mut st = self.lock();
        let earliest = st.heap.peek().is_none_or(|top| d.deadline < top.deadline);
        st.seq += 1;
        let seq = st.seq;
        st.heap.push(Held {
            deadline: d.deadline,
            seq,
            next_hop: d.next_hop,
            packet: d.packet,
        });
        drop(st);
        // The thread sleeps until the earliest deadline: wake it only when
        // that changes.
        if earliest {
            self.wake.notify_one();
        }
    }

    fn stop(&self) {
        self.lock().stopped = true;
        self.wake.notify_one();
    }
}

/// The body of the release thread (runs inside the engine's runtime
/// context, so that `Instant::now` follows tokio's clock). Returns when
/// [`Release::stop`] is called; packets still held are dropped and counted.
pub(super) fn release_thread(
    release: Arc<Release>,
    links: Arc<Links>,
    metrics: EngineMetrics,
    runtime: tokio::runtime::Handle,
) {
    let _rt = runtime.enter();
    let mut due: Vec<(NodeId, Packet)> = Vec::new();
    let mut st = release.lock();
    loop {
        if st.stopped {
            // Sending them early would break mixing.
            metrics.drop_n(DropReason::Shutdown, st.heap.len() as u64);
            metrics.delay_queue.dec_by(st.heap.len() as i64);
            st.heap.clear();
            return;
        }
        let now = Instant::now();
        while st.heap.peek().is_some_and(|top| top.deadline <= now) {
            if let Some(h) = st.heap.pop() {
                due.push((h.next_hop, h.packet));
            }
        }
        if !due.is_empty() {
            drop(st);
            metrics.delay_queue.dec_by(due.len() as i64);
            links.send_batch(&mut due);
            st = release.lock();
            continue;
        }
        st = match st.heap.peek().map(|top| top.deadline - now) {
            None => release
                .wake
                .wait(st)
                .unwrap_or_else(PoisonError::into_inner),
            Some(left) => {
                release
                    .wake
                    .wait_timeout(st, left.min(RECHECK))
                    .unwrap_or_else(PoisonError::into_inner)
                    .0
            }
        };
    }
}

/// The coarse stage: holds packets until [`LEAD`] before their deadline,
/// then moves them to `release`. `max` bounds both stages together. The
/// `delay_queue` gauge counts packets in either stage: raised here when one
/// is accepted, lowered by the release thread when it leaves.
pub(super) async fn run(
    mut rx: mpsc::Receiver<Vec<Delayed>>,
    release: Arc<Release>,
    metrics: EngineMetrics,
    max: usize,
    shutdown: CancellationToken,
) {
    let mut queue: DelayQueue<Delayed> = DelayQueue::new();
    let cancelled = shutdown.cancelled();
    tokio::pin!(cancelled);
    loop {
        tokio::select! {
            _ = &mut cancelled => break,
            Some(expired) = std::future::poll_fn(|cx| queue.poll_expired(cx)), if !queue.is_empty() => {
                release.push(expired.into_inner());
            }
            msg = rx.recv() => match msg {
                Some(batch) => {
                    let held = release.len();
                    let now = Instant::now();
                    for d in batch {
                        if queue.len() + held >= max {
                            metrics.drop(DropReason::OverloadDelay);
                            continue;
                        }
                        metrics.delay_queue.inc();
                        match d.deadline.checked_sub(LEAD) {
                            Some(wake) if wake > now => {
                                queue.insert_at(d, wake);
                            }
                            _ => release.push(d),
                        }
                    }
                }
                None => break,
            },
        }
    }
    // Packets still held are lost: sending them early would break mixing.
    metrics.drop_n(DropReason::Shutdown, queue.len() as u64);
    metrics.delay_queue.dec_by(queue.len() as i64);
    release.stop();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(ms: u64, seq: u64, base: Instant) -> Held {
        Held {
            deadline: base + Duration::from_millis(ms),
            seq,
            next_hop: NodeId::from_bytes([0; 32]),
            packet: Packet::from_bytes(tokio_util::bytes::Bytes::from(
                vec![0u8; murmur_wire::PACKET_SIZE],
            ))
            .unwrap_or_else(|_| unreachable!("a packet of the packet size")),
        }
    }

    #[test]
    fn the_heap_pops_the_earliest_deadline_first() {
        let base = Instant::now();
        let mut heap = BinaryHeap::new();
        for (ms, seq) in [(5, 1), (1, 2), (3, 3), (1, 4)] {
            heap.push(held(ms, seq, base));
        }
        let order: Vec<u64> = std::iter::from_fn(|| heap.pop().map(|h| h.seq)).collect();
        assert_eq!(order, vec![2, 4, 3, 1]);
    }
}
