//! Unwrap workers: plain threads that take packets off the bounded unwrap
//! queue and do the Sphinx work, off the I/O tasks.

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
    pub(super) delay_tx: mpsc::Sender<Delayed>,
    pub(super) links: Arc<Links>,
    pub(super) max_dwell: Duration,
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
    while let Ok(job) = rx.recv() {
        shared.metrics.unwrap_queue.dec();
        shared.process(job);
    }
}

impl Shared {
    fn process(&self, job: Job) {
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
            } => self.forward(next_hop, delay, packet, job.received),
            Processed::Final {
                destination,
                delivery,
            } => {
                m.delivered.inc();
                self.final_hop.deliver(destination, delivery);
            }
        }
    }

    fn forward(&self, next_hop: NodeId, delay: Duration, packet: Packet, received: Instant) {
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
        if deadline <= Instant::now() {
            if let Err(reason) = self.links.send(next_hop, packet) {
                m.drop(reason);
            }
            return;
        }
        match self.delay_tx.try_send(Delayed {
            deadline,
            next_hop,
            packet,
        }) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => m.drop(DropReason::OverloadDelay),
            Err(mpsc::error::TrySendError::Closed(_)) => m.drop(DropReason::Shutdown),
        }
    }
}
