//! The reaper: deletes entries older than the retention time, whether or not
//! their owner fetched them, together with the records that recognise their
//! retransmissions.

use std::sync::Arc;
use std::time::Duration;

use murmur_directory::clock::Clock;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

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
}

/// Runs passes every `config.interval` (the first at once) until `shutdown`.
/// A pass repeats transactions of at most `config.batch` records until
/// nothing older than the retention time is left.
pub async fn run_reaper(
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    config: ReaperConfig,
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
