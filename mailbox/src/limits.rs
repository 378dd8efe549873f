//! The fetch API's rate limits on queue creation, and the record of which
//! queues their owners use (for expiring unused ones).
//!
//! Creation is limited twice, by token buckets: per client address (an
//! IPv4 address, an IPv6 /64), checked before the request's signature, and
//! in total, checked after it (so that unsigned junk cannot spend the
//! provider's budget). Both are checked before the request's nonce is
//! remembered, which bounds how many creation nonces the replay cache can
//! be asked to hold.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

use murmur_wire::QueueId;

/// Addresses whose creation budget is tracked at most. Past it, addresses
/// with a full bucket are forgotten (they lose nothing); if none is,
/// creation from new addresses is refused until some refill.
pub const MAX_TRACKED_ADDRESSES: usize = 65_536;

/// Queues whose last use waits in memory for the reaper at most; beyond,
/// uses are not recorded until the next flush (a queue in use is used
/// again long before it could expire).
pub const MAX_PENDING_USES: usize = 1 << 20;

/// A token bucket: `burst` tokens, refilled at `per_hour` an hour. Times in
/// milliseconds.
#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    at_ms: u64,
}

impl Bucket {
    fn full(burst: u32, now_ms: u64) -> Self {
        Self {
            tokens: f64::from(burst),
            at_ms: now_ms,
        }
    }

    fn refill(&mut self, burst: u32, per_hour: u32, now_ms: u64) {
        let elapsed = now_ms.saturating_sub(self.at_ms) as f64;
        self.tokens =
            (self.tokens + elapsed * f64::from(per_hour) / 3_600_000.0).min(f64::from(burst));
        self.at_ms = now_ms.max(self.at_ms);
    }

    fn take(&mut self, burst: u32, per_hour: u32, now_ms: u64) -> bool {
        self.refill(burst, per_hour, now_ms);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn is_full(&mut self, burst: u32, per_hour: u32, now_ms: u64) -> bool {
        self.refill(burst, per_hour, now_ms);
        self.tokens >= f64::from(burst)
    }
}

/// Why a creation was refused by a rate limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Limited {
    /// This address created its share.
    Address,
    /// The provider created its share, or tracks too many addresses.
    Total,
}

/// The creation budgets: one per address, one in total.
#[derive(Debug)]
pub(crate) struct CreationLimiter {
    per_address: Mutex<HashMap<IpAddr, Bucket>>,
    total: Mutex<Option<Bucket>>,
    address_burst: u32,
    address_per_hour: u32,
    total_burst: u32,
    total_per_hour: u32,
}

/// The address an address budget is kept for: IPv4 as is, IPv6 by /64.
fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        },
    }
}

impl CreationLimiter {
    pub(crate) fn new(
        address_burst: u32,
        address_per_hour: u32,
        total_burst: u32,
        total_per_hour: u32,
    ) -> Self {
        Self {
            per_address: Mutex::new(HashMap::new()),
            total: Mutex::new(None),
            address_burst,
            address_per_hour,
            total_burst,
            total_per_hour,
        }
    }

    /// Spends one creation of `ip`'s budget.
    pub(crate) fn check_address(&self, ip: IpAddr, now_ms: u64) -> Result<(), Limited> {
        let (burst, rate) = (self.address_burst, self.address_per_hour);
        // Buckets are replaced whole: a poisoned map is consistent.
        let mut map = self
            .per_address
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let key = address_key(ip);
        if !map.contains_key(&key) && map.len() >= MAX_TRACKED_ADDRESSES {
            map.retain(|_, b| !b.is_full(burst, rate, now_ms));
            if map.len() >= MAX_TRACKED_ADDRESSES {
                return Err(Limited::Total);
            }
        }
        let bucket = map
            .entry(key)
            .or_insert_with(|| Bucket::full(burst, now_ms));
        if bucket.take(burst, rate, now_ms) {
            Ok(())
        } else {
            Err(Limited::Address)
        }
    }

    /// Spends one creation of the provider's total budget.
    pub(crate) fn check_total(&self, now_ms: u64) -> Result<(), Limited> {
        let mut total = self
            .total
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let bucket = total.get_or_insert_with(|| Bucket::full(self.total_burst, now_ms));
        if bucket.take(self.total_burst, self.total_per_hour, now_ms) {
            Ok(())
        } else {
            Err(Limited::Total)
        }
    }
}

/// Owner requests seen since the reaper last looked: queue → when (unix
/// seconds). The reaper writes them to the store
/// ([`crate::Store::touch_queues`]) before it expires unused queues.
#[derive(Debug, Default)]
pub struct QueueUsage(Mutex<HashMap<QueueId, u64>>);

impl QueueUsage {
    /// Records that `queue`'s owner made a request at `now`.
    pub fn touch(&self, queue: QueueId, now: u64) {
        let mut map = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if map.len() < MAX_PENDING_USES || map.contains_key(&queue) {
            let at = map.entry(queue).or_insert(now);
            *at = (*at).max(now);
        }
    }

    /// Takes every use recorded since the last call.
    pub fn drain(&self) -> Vec<(QueueId, u64)> {
        let mut map = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.drain().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_gets_its_burst_then_its_rate_and_others_are_unaffected() {
        // 3 at once, then 60 an hour (one a minute); 100 in total at once.
        let l = CreationLimiter::new(3, 60, 100, 3600);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        for _ in 0..3 {
            assert_eq!(l.check_address(a, 0), Ok(()));
        }
        assert_eq!(l.check_address(a, 1000), Err(Limited::Address));
        assert_eq!(l.check_address(b, 1000), Ok(()));
        // A minute later, one more.
        assert_eq!(l.check_address(a, 61_000), Ok(()));
        assert_eq!(l.check_address(a, 61_000), Err(Limited::Address));
        // One IPv6 host is one /64.
        let v6a: IpAddr = "2001:db8::1".parse().unwrap();
        let v6b: IpAddr = "2001:db8::ffff:2".parse().unwrap();
        for _ in 0..3 {
            assert_eq!(l.check_address(v6a, 0), Ok(()));
        }
        assert_eq!(l.check_address(v6b, 0), Err(Limited::Address));
    }

    #[test]
    fn the_total_budget_refills_at_its_rate() {
        let l = CreationLimiter::new(10, 10, 5, 3600);
        for _ in 0..5 {
            assert_eq!(l.check_total(0), Ok(()));
        }
        assert_eq!(l.check_total(500), Err(Limited::Total));
        assert_eq!(l.check_total(1000), Ok(()));
        assert_eq!(l.check_total(1000), Err(Limited::Total));
    }

    #[test]
    fn uses_keep_the_latest_time_and_drain() {
        let u = QueueUsage::default();
        let q = QueueId::from_bytes([1; 32]);
        u.touch(q, 10);
        u.touch(q, 5);
        u.touch(QueueId::from_bytes([2; 32]), 7);
        let mut d = u.drain();
        d.sort();
        assert_eq!(d, vec![(q, 10), (QueueId::from_bytes([2; 32]), 7)]);
        assert!(u.drain().is_empty());
    }
}
