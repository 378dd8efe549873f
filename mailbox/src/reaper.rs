//! The reaper: deletes entries older than the retention time, whether or not
//! their owner fetched them, together with the records that recognise their
//! retransmissions; and deletes queues their owners have not used for
//! `queue_idle` (after writing down the uses the fetch API saw since the
//! last pass).

use std::sync::Arc;
use std::time::Duration;

use murmur_net::clock::Clock;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::limits::QueueUsage;
use crate::metrics::Metrics;
use crate::store::Store;

/// Settings of the reaper.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReaperConfig {
    /// Entries older than this are deleted.
    pub retention: Duration,
    /// Time between passes.
    pub interval: Duration,
    /// Expiry records handled per transaction at most.
    pub batch: usize,
    /// Queues unused by their owner for this long are deleted.
    pub queue_idle: Duration,
}

/// Queues deleted per transaction at most when expiring unused ones (each
/// may hold up to a queue's quota of entries).
const IDLE_BATCH: usize = 64;

/// Runs passes every `config.interval` (the first at once) until `shutdown`.
/// A pass repeats transactions of at most `config.batch` records until
/// nothing older than the retention time is left.
pub async fn run_reaper(
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    config: ReaperConfig,
    usage: Arc<QueueUsage>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(config.interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let batch = config.batch.max(1);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        expire_idle(&store, clock.as_ref(), &config, &usage, &metrics, &shutdown).await;
        while !shutdown.is_cancelled() {
            let cutoff = clock.now().saturating_sub(config.retention).as_secs();
            let store = store.clone();
            match tokio::task::spawn_blocking(move || store.reap(cutoff, batch)).await {
                Ok(Ok(out)) => {
                    metrics.reaped.inc_by(out.entries);
                    if out.entries > 0 {
                        tracing::debug!(entries = out.entries, "reaped expired entries");
                    }
                    if out.records < batch as u64 {
                        break;
                    }
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "reaper pass failed; retrying at the next interval");
                    break;
                }
                Err(e) => {
                    tracing::error!(error = %e, "reaper pass panicked");
                    break;
                }
            }
        }
    }
}

/// Writes the uses seen since the last pass, then deletes the queues not
/// used for `config.queue_idle`, a few at a time.
async fn expire_idle(
    store: &Arc<dyn Store>,
    clock: &dyn Clock,
    config: &ReaperConfig,
    usage: &QueueUsage,
    metrics: &Metrics,
    shutdown: &CancellationToken,
) {
    let used = usage.drain();
    if !used.is_empty() {
        let s = store.clone();
        match tokio::task::spawn_blocking(move || s.touch_queues(&used)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                // Without them a queue in use could look idle: skip expiry.
                tracing::warn!(error = %e, "could not record queue uses; not expiring queues this pass");
                return;
            }
            Err(e) => {
                tracing::error!(error = %e, "recording queue uses panicked");
                return;
            }
        }
    }
    let unused_since = clock.now().saturating_sub(config.queue_idle).as_secs();
    while !shutdown.is_cancelled() {
        let s = store.clone();
        match tokio::task::spawn_blocking(move || s.expire_idle(unused_since, IDLE_BATCH)).await {
            Ok(Ok(n)) => {
                metrics.queues_expired.inc_by(n);
                for _ in 0..n {
                    metrics.queues.dec();
                }
                if n > 0 {
                    tracing::debug!(queues = n, "deleted unused queues");
                }
                if n < IDLE_BATCH as u64 {
                    break;
                }
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "expiring unused queues failed; retrying at the next interval");
                break;
            }
            Err(e) => {
                tracing::error!(error = %e, "expiring unused queues panicked");
                break;
            }
        }
    }
}
