//! Unwrap workers: plain threads that take packets off the bounded unwrap
//! queue and do the Sphinx work, off the I/O tasks.
//!
//! Under load a worker hands its results on in small batches (one lock and
//! at most one wakeup per batch instead of per packet); a batch is flushed
//! as soon as the unwrap queue is empty, when it holds [`BATCH`] packets,
//! or after [`MAX_HOLD`], so batching never adds more than that to a
//! packet's time in the node.

use std::sync::Arc;
use std::time::Duration;

use murmur_wire::{NodeId, Packet, Processed};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::delay::Delayed;
use super::links::Links;
use super::metrics::{DropReason, EngineMetrics};
use super::replay::{ReplayCache, Seen};
use super::{FinalHop, MAX_DELAY_CAP, Topology};
use crate::keys::KeyRingHandle;

/// Most packets a worker holds before handing them on.
const BATCH: usize = 32;
/// Longest a worker holds a processed packet before handing it on.
const MAX_HOLD: Duration = Duration::from_millis(1);

/// A packet as read from a connection, stamped with its arrival time.
pub(super) struct Job {
    pub(super) packet: Packet,
    pub(super) received: Instant,
}

pub(super) struct Shared {
    pub(super) keys: KeyRingHandle,
    pub(super) replay: Arc<ReplayCache>,
    pub(super) topology: Arc<dyn Topology>,
    pub(super) final_hop: Arc<dyn FinalHop>,
    pub(super) metrics: EngineMetrics,
    pub(super) delay_tx: mpsc::Sender<Vec<Delayed>>,
    pub(super) links: Arc<Links>,
    pub(super) max_dwell: Duration,
}

/// Processed packets waiting to be handed on.
#[derive(Default)]
struct Outbox {
    now: Vec<(NodeId, Packet)>,
    delayed: Vec<Delayed>,
    since: Option<Instant>,
}

impl Outbox {
    fn len(&self) -> usize {
        self.now.len() + self.delayed.len()
    }

    fn is_empty(&self) -> bool {
        self.now.is_empty() && self.delayed.is_empty()
    }

    fn due(&self) -> bool {
        self.len() >= BATCH || self.since.is_some_and(|t| t.elapsed() >= MAX_HOLD)
    }
}

/// The body of one worker thread. Runs until every sender of the unwrap
/// queue is gone.
pub(super) fn run(
    rx: crossbeam_channel::Receiver<Job>,
    shared: Arc<Shared>,
    runtime: tokio::runtime::Handle,
) {
    // Inside the runtime context, `Instant::now` follows tokio's clock
    // (paused in tests) and tasks can be spawned.
    let _rt = runtime.enter();
    let mut outbox = Outbox::default();
    loop {
        let job = if outbox.is_empty() {
            match rx.recv() {
                Ok(job) => job,
                Err(_) => break,
            }
        } else {
            match rx.try_recv() {
                Ok(job) => job,
                Err(crossbeam_channel::TryRecvError::Empty) => {
                    shared.flush(&mut outbox);
                    continue;
                }
                Err(crossbeam_channel::TryRecvError::Disconnected) => break,
            }
        };
        shared.metrics.unwrap_queue.dec();
        shared.process(job, &mut outbox);
        if outbox.due() {
            shared.flush(&mut outbox);
        }
    }
    shared.flush(&mut outbox);
}

impl Shared {
    fn flush(&self, outbox: &mut Outbox) {
        outbox.since = None;
        if !outbox.now.is_empty() {
            self.links.send_batch(&mut outbox.now);
        }
        if !outbox.delayed.is_empty() {
            let batch = std::mem::take(&mut outbox.delayed);
            let n = batch.len() as u64;
            match self.delay_tx.try_send(batch) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    self.metrics.drop_n(DropReason::OverloadDelay, n);
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    self.metrics.drop_n(DropReason::Shutdown, n);
                }
            }
        }
    }

    fn process(&self, job: Job, outbox: &mut Outbox) {
        let m = &self.metrics;
        if Instant::now().saturating_duration_since(job.received) > self.max_dwell {
            m.drop(DropReason::DwellExceeded);
            return;
        }
        let ring = self.keys.load();
        let Ok(unwrapped) = ring.unwrap(&job.packet) else {
            m.drop(DropReason::Malformed);
            return;
        };
        drop(ring);
        let (seen, err) = self
            .replay
            .check_and_insert(unwrapped.key_epoch(), &unwrapped.replay_tag());
        if let Some(e) = err {
            m.replay_persist_errors.inc();
            tracing::debug!(error = %e, "replay tag log write failed");
        }
        if seen == Seen::Replay {
            m.drop(DropReason::Replay);
            return;
        }
        let Ok(processed) = unwrapped.finish() else {
            m.drop(DropReason::Malformed);
            return;
        };
        m.processing.observe(job.received.elapsed().as_secs_f64());
        match processed {
            Processed::Forward {
                next_hop,
                delay,
                packet,
            } => self.forward(next_hop, delay, packet, job.received, outbox),
            Processed::Final {
                destination,
                delivery,
            } => {
                m.delivered.inc();
                self.final_hop.deliver(destination, delivery);
            }
        }
    }

    fn forward(
        &self,
        next_hop: NodeId,
        delay: Duration,
        packet: Packet,
        received: Instant,
        outbox: &mut Outbox,
    ) {
        let m = &self.metrics;
        let Some(current) = self.topology.current() else {
            m.drop(DropReason::UnknownNextHop);
            return;
        };
        let max = Duration::from_micros(current.params().max_delay_us).min(MAX_DELAY_CAP);
        if delay > max {
            m.drop(DropReason::DelayTooLong);
            return;
        }
        let known = current.node(&next_hop).is_some()
            || current
                .epoch()
                .checked_sub(1)
                .and_then(|e| self.topology.for_epoch(e))
                .is_some_and(|prev| prev.node(&next_hop).is_some());
        if !known {
            m.drop(DropReason::UnknownNextHop);
            return;
        }
        // The delay counts from arrival: time spent queueing and unwrapping
        // is part of it.
        let deadline = received + delay;
        let now = Instant::now();
        if deadline <= now {
            outbox.now.push((next_hop, packet));
        } else {
            outbox.delayed.push(Delayed {
                deadline,
                next_hop,
                packet,
            });
        }
        outbox.since.get_or_insert(now);
    }
}
