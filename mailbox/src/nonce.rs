//! The replay guard of the fetch API: nonces seen within the freshness
//! window, per scope (a queue, or a creating owner key), bounded.
//!
//! A request is accepted only if its timestamp is within the window `W` of
//! the provider's clock, so a nonce needs remembering only until its
//! request's `timestamp + W` has passed: after that the timestamp check
//! refuses a replay on its own. The cache forgets nonces then. If it is full
//! of nonces that must still be remembered, it refuses new requests (503)
//! rather than forget one early, which would let a captured request be
//! replayed.

use std::collections::{BTreeSet, HashSet};
use std::sync::Mutex;

/// The scope of a nonce: a tag byte and 32 bytes (queue id or owner key).
pub(crate) type Scope = [u8; 33];

type Key = (Scope, [u8; 16]);

/// What the cache says about a nonce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum NonceCheck {
    /// Not seen in the window; now remembered.
    Fresh,
    /// Seen in the window: a replay.
    Replayed,
    /// The cache is full of live nonces; the request cannot be checked.
    Full,
}

#[derive(Debug, Default)]
struct Inner {
    seen: HashSet<Key>,
    by_expiry: BTreeSet<(u64, Key)>,
}

/// Bounded set of recently seen nonces.
#[derive(Debug)]
pub(crate) struct NonceCache {
    inner: Mutex<Inner>,
    capacity: usize,
}

impl NonceCache {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            capacity: capacity.max(1),
        }
    }

    /// Checks `nonce` in `scope` and remembers it until `expires` (unix
    /// seconds) has passed. `now` is the provider's clock.
    pub(crate) fn check(
        &self,
        scope: Scope,
        nonce: [u8; 16],
        expires: u64,
        now: u64,
    ) -> NonceCheck {
        // A poisoned lock only means another request panicked while holding
        // it; the sets are still consistent (every mutation is one call).
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(first) = inner.by_expiry.first() {
            if first.0 >= now {
                break;
            }
            if let Some((_, key)) = inner.by_expiry.pop_first() {
                inner.seen.remove(&key);
            }
        }
        let key = (scope, nonce);
        if inner.seen.contains(&key) {
            return NonceCheck::Replayed;
        }
        if inner.seen.len() >= self.capacity {
            return NonceCheck::Full;
        }
        inner.seen.insert(key);
        inner.by_expiry.insert((expires, key));
        NonceCheck::Fresh
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.inner.lock().map(|i| i.seen.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replays_are_caught_until_expiry_and_then_forgotten() {
        let c = NonceCache::new(10);
        let scope = [1u8; 33];
        assert_eq!(c.check(scope, [1; 16], 220, 100), NonceCheck::Fresh);
        assert_eq!(c.check(scope, [1; 16], 220, 150), NonceCheck::Replayed);
        // Another scope does not share nonces.
        assert_eq!(c.check([2u8; 33], [1; 16], 220, 150), NonceCheck::Fresh);
        assert_eq!(c.check(scope, [1; 16], 220, 220), NonceCheck::Replayed);
        // Past its expiry the nonce is forgotten (the timestamp check
        // refuses such a request before it gets here).
        assert_eq!(c.check(scope, [9; 16], 400, 221), NonceCheck::Fresh);
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn a_full_cache_refuses_instead_of_forgetting() {
        let c = NonceCache::new(2);
        let scope = [1u8; 33];
        assert_eq!(c.check(scope, [1; 16], 200, 100), NonceCheck::Fresh);
        assert_eq!(c.check(scope, [2; 16], 200, 100), NonceCheck::Fresh);
        assert_eq!(c.check(scope, [3; 16], 200, 100), NonceCheck::Full);
        assert_eq!(c.check(scope, [1; 16], 200, 100), NonceCheck::Replayed);
        assert_eq!(c.check(scope, [3; 16], 300, 201), NonceCheck::Fresh);
    }
}
