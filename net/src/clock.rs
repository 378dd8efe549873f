//! Wall-clock time as the daemons see it, behind a trait so tests can run
//! epochs on a clock they control.
//!
//! Epochs are in unix time (see `murmur_wire::policy::epoch_at`); packet
//! delays use tokio's monotonic clock instead, which tests pause.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A source of unix time.
pub trait Clock: Send + Sync + std::fmt::Debug + 'static {
    /// Time since the unix epoch.
    fn now(&self) -> Duration;

    /// Whole seconds since the unix epoch.
    fn now_secs(&self) -> u64 {
        self.now().as_secs()
    }
}

/// The system's clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Duration {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
    }
}

/// The system clock shifted by an adjustable offset, for tests that need to
/// jump across epoch boundaries or simulate a skewed node.
#[derive(Clone, Debug, Default)]
pub struct OffsetClock {
    offset_ms: Arc<AtomicI64>,
}

impl OffsetClock {
    /// A clock equal to the system clock.
    pub fn new() -> Self {
        Self::default()
    }

    /// Moves this clock (and its clones) forward by `by`.
    pub fn advance(&self, by: Duration) {
        let ms = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
        self.offset_ms.fetch_add(ms, Ordering::SeqCst);
    }

    /// Sets the offset from the system clock, in milliseconds (may be negative).
    pub fn set_offset_ms(&self, ms: i64) {
        self.offset_ms.store(ms, Ordering::SeqCst);
    }
}

impl Clock for OffsetClock {
    fn now(&self) -> Duration {
        let base = SystemClock.now();
        let off = self.offset_ms.load(Ordering::SeqCst);
        if off >= 0 {
            base + Duration::from_millis(off.unsigned_abs())
        } else {
            base.saturating_sub(Duration::from_millis(off.unsigned_abs()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offset_clock_moves() {
        let c = OffsetClock::new();
        let before = c.now_secs();
        c.advance(Duration::from_secs(3600));
        assert!(c.now_secs() >= before + 3600);
        let c2 = c.clone();
        c2.set_offset_ms(-10_000);
        assert!(c.now_secs() < before + 10);
    }
}
