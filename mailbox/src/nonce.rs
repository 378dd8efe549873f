//! The replay guard of the fetch API: the requests seen within the
//! freshness window, per scope (a queue, or a creating owner key), bounded
//! per scope and in total, evicted fairly.
//!
//! A request is accepted only if its timestamp is within the window `W` of
//! the provider's clock, so a request needs remembering only until its
//! `timestamp + W` has passed: after that the timestamp check refuses a
//! replay on its own. Within that time the cache must not simply forget a
//! request, or a captured copy could be replayed. So when it must make room
//! it forgets the *oldest* request of a scope and raises that scope's
//! **floor** to the forgotten request's timestamp: from then on, requests
//! of that scope signed at or before the floor are refused (`Throttled`),
//! which refuses every replay of what was forgotten. A client signing a
//! new request (timestamp now) is above the floor and unaffected unless its
//! scope forgets requests from the current second.
//!
//! Room is made, in this order:
//! 1. a scope holding `per_scope` requests forgets its own oldest — one
//!    owner flooding one queue throttles only that queue;
//! 2. when the cache holds `capacity` entries in all, the scope holding the
//!    most requests forgets its oldest — a flood over many queues is paid
//!    by the flooding queues, not by owners who send a few requests;
//! 3. only when every scope holds at most one request (a flood of distinct
//!    scopes: many queues or creation keys, each used once) does the cache
//!    forget the oldest entry of all and raise a **global** floor (`Busy`);
//!    the cache then holds the newest `capacity` requests, and honest
//!    requests signed just now still pass.
//!
//! A scope whose requests were all forgotten keeps its floor (one entry of
//! the capacity) until the floor is older than the window.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

/// The scope of a nonce: a tag byte and 32 bytes (queue id or owner key).
pub(crate) type Scope = [u8; 33];

type Nonce = [u8; 16];

/// How many of the largest scopes are tried when the cache is full.
const LARGEST_TRIED: usize = 8;

/// What the cache says about a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum NonceCheck {
    /// Not seen in the window; now remembered.
    Fresh,
    /// Seen in the window: a replay.
    Replayed,
    /// Signed at or before its scope's floor: that scope had to forget
    /// requests of that age, so this one cannot be told from a replay.
    Throttled,
    /// Signed at or before the global floor (the cache is full of single
    /// requests of distinct scopes).
    Busy,
}

/// Why the cache forgot a request (the `reason` of
/// `nonce_evictions_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Eviction {
    /// A scope was at `per_scope`.
    ScopeFull,
    /// The cache was at capacity: the largest scope paid.
    CacheFull,
    /// The cache was at capacity with no scope over one request.
    Global,
}

#[derive(Debug, Default)]
struct ScopeState {
    /// (timestamp, nonce), oldest first.
    seen: BTreeSet<(u64, Nonce)>,
    /// Requests signed at or before this are refused (0: none).
    floor: u64,
}

#[derive(Debug, Default)]
struct Inner {
    scopes: HashMap<Scope, ScopeState>,
    /// Every remembered request by timestamp, for expiry and the global
    /// eviction.
    by_time: BTreeSet<(u64, Scope, Nonce)>,
    /// Scopes holding requests, by how many (the largest pays first).
    by_size: BTreeSet<(usize, Scope)>,
    /// Scopes holding no request but a floor, by floor.
    floors: BTreeSet<(u64, Scope)>,
    global_floor: u64,
}

impl Inner {
    fn used(&self) -> usize {
        self.by_time.len() + self.floors.len()
    }

    /// Forgets everything whose timestamp is older than `now - window`.
    fn expire(&mut self, now: u64, window: u64) {
        let horizon = now.saturating_sub(window);
        while let Some(&(ts, scope, nonce)) = self.by_time.first() {
            if ts >= horizon {
                break;
            }
            self.remove(ts, scope, nonce, horizon);
        }
        while let Some(&(floor, scope)) = self.floors.first() {
            if floor >= horizon {
                break;
            }
            self.floors.pop_first();
            self.scopes.remove(&scope);
        }
    }

    /// Removes one remembered request. A scope left empty is dropped, or
    /// kept for its floor if the floor still matters (at or after
    /// `horizon`).
    fn remove(&mut self, ts: u64, scope: Scope, nonce: Nonce, horizon: u64) {
        self.by_time.remove(&(ts, scope, nonce));
        let Some(s) = self.scopes.get_mut(&scope) else {
            return;
        };
        let before = s.seen.len();
        if !s.seen.remove(&(ts, nonce)) {
            return;
        }
        self.by_size.remove(&(before, scope));
        if before > 1 {
            self.by_size.insert((before - 1, scope));
        } else if s.floor > self.global_floor && s.floor >= horizon {
            self.floors.insert((s.floor, scope));
        } else {
            self.scopes.remove(&scope);
        }
    }

    /// Forgets the oldest request of `scope` and raises its floor. Returns
    /// false (and forgets nothing) if that request is not older than `ts`,
    /// the timestamp of the request that needs the room.
    fn evict_oldest_of(&mut self, scope: Scope, ts: u64, horizon: u64) -> bool {
        let Some(&(old_ts, old_nonce)) = self.scopes.get(&scope).and_then(|s| s.seen.first())
        else {
            return false;
        };
        if old_ts >= ts {
            return false;
        }
        if let Some(s) = self.scopes.get_mut(&scope) {
            s.floor = s.floor.max(old_ts);
        }
        self.remove(old_ts, scope, old_nonce, horizon);
        true
    }

    /// Forgets the oldest entry of all (a request, or a scope's floor) and
    /// raises the global floor. False if it is not older than `ts`.
    fn evict_globally(&mut self, ts: u64) -> bool {
        let request = self.by_time.first().map(|&(t, s, n)| (t, Some((s, n))));
        let floor = self.floors.first().map(|&(f, _)| (f, None));
        let oldest = match (request, floor) {
            (Some(r), Some(f)) => {
                if f.0 < r.0 {
                    f
                } else {
                    r
                }
            }
            (Some(r), None) => r,
            (None, Some(f)) => f,
            (None, None) => return false,
        };
        if oldest.0 >= ts {
            return false;
        }
        self.global_floor = self.global_floor.max(oldest.0);
        match oldest.1 {
            Some((scope, nonce)) => {
                // The global floor now covers this scope's floor too.
                self.remove(oldest.0, scope, nonce, u64::MAX);
            }
            None => {
                if let Some((_, scope)) = self.floors.pop_first() {
                    self.scopes.remove(&scope);
                }
            }
        }
        true
    }
}

/// Bounded, fairly evicted memory of recent requests.
#[derive(Debug)]
pub(crate) struct NonceCache {
    inner: Mutex<Inner>,
    capacity: usize,
    per_scope: usize,
    window: u64,
}

impl NonceCache {
    /// A cache of at most `capacity` entries, `per_scope` per scope, for
    /// requests accepted within `window` seconds of the clock.
    pub(crate) fn new(capacity: usize, per_scope: usize, window: u64) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            capacity: capacity.max(1),
            per_scope: per_scope.clamp(1, capacity.max(1)),
            window,
        }
    }

    /// Checks the request (`nonce`, signed at `timestamp`) in `scope` and
    /// remembers it. `now` is the provider's clock; the caller has checked
    /// that `timestamp` is within the window of it. `evicted` is told of
    /// every request forgotten to make room.
    pub(crate) fn check(
        &self,
        scope: Scope,
        nonce: Nonce,
        timestamp: u64,
        now: u64,
        mut evicted: impl FnMut(Eviction),
    ) -> NonceCheck {
        // A poisoned lock only means another request panicked while holding
        // it; the sets are updated together in each call.
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.expire(now, self.window);
        let horizon = now.saturating_sub(self.window);
        if timestamp <= inner.global_floor {
            return NonceCheck::Busy;
        }
        let (floor, len, seen) = match inner.scopes.get(&scope) {
            Some(s) => (s.floor, s.seen.len(), s.seen.contains(&(timestamp, nonce))),
            None => (0, 0, false),
        };
        if seen {
            return NonceCheck::Replayed;
        }
        if timestamp <= floor {
            return NonceCheck::Throttled;
        }
        if len >= self.per_scope {
            if !inner.evict_oldest_of(scope, timestamp, horizon) {
                return NonceCheck::Throttled;
            }
            evicted(Eviction::ScopeFull);
        }
        // A scope that held only its floor takes no new entry of the
        // capacity by getting a request back.
        let floor_only = inner.floors.contains(&(floor, scope));
        if !floor_only && inner.used() >= self.capacity {
            // The largest scopes first (a few of them: their oldest request
            // must be older than this one); the global floor only if none
            // holds more than one request, or none can give one up.
            let largest: Vec<Scope> = inner
                .by_size
                .iter()
                .rev()
                .take_while(|(n, _)| *n >= 2)
                .take(LARGEST_TRIED)
                .map(|(_, s)| *s)
                .collect();
            if largest
                .into_iter()
                .any(|big| inner.evict_oldest_of(big, timestamp, horizon))
            {
                evicted(Eviction::CacheFull);
            } else if inner.evict_globally(timestamp) {
                evicted(Eviction::Global);
            } else {
                return NonceCheck::Busy;
            }
        }
        // Insert (the scope may have been dropped or re-floored above).
        let s = inner.scopes.entry(scope).or_default();
        let before = s.seen.len();
        let s_floor = s.floor;
        s.seen.insert((timestamp, nonce));
        if before == 0 {
            inner.floors.remove(&(s_floor, scope));
        } else {
            inner.by_size.remove(&(before, scope));
        }
        inner.by_size.insert((before + 1, scope));
        inner.by_time.insert((timestamp, scope, nonce));
        NonceCheck::Fresh
    }

    /// Entries held now (requests, and scopes kept only for their floor).
    pub(crate) fn len(&self) -> usize {
        self.inner.lock().map(|i| i.used()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: u64 = 120;

    fn scope(i: u8) -> Scope {
        [i; 33]
    }

    fn nonce(i: u32) -> Nonce {
        let mut n = [0u8; 16];
        n[..4].copy_from_slice(&i.to_be_bytes());
        n
    }

    fn check(c: &NonceCache, s: u8, n: u32, ts: u64, now: u64) -> NonceCheck {
        c.check(scope(s), nonce(n), ts, now, |_| {})
    }

    #[test]
    fn replays_are_caught_until_expiry_and_then_forgotten() {
        let c = NonceCache::new(10, 10, W);
        assert_eq!(check(&c, 1, 1, 100, 100), NonceCheck::Fresh);
        assert_eq!(check(&c, 1, 1, 100, 150), NonceCheck::Replayed);
        // Another scope does not share nonces.
        assert_eq!(check(&c, 2, 1, 100, 150), NonceCheck::Fresh);
        assert_eq!(check(&c, 1, 1, 100, 220), NonceCheck::Replayed);
        // Past its window the request is forgotten (the timestamp check
        // refuses such a request before it gets here).
        assert_eq!(check(&c, 1, 9, 400, 400), NonceCheck::Fresh);
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn a_flooded_scope_throttles_only_itself_and_refuses_every_replay() {
        let c = NonceCache::new(1000, 4, W);
        // Another owner's requests.
        assert_eq!(check(&c, 2, 1, 100, 100), NonceCheck::Fresh);
        // The flooder: 4 per second, then more in second 101.
        for (i, ts) in [(1, 100), (2, 100), (3, 100), (4, 100)] {
            assert_eq!(check(&c, 1, i, ts, 100), NonceCheck::Fresh);
        }
        // A fifth in the same second would have to forget one of that
        // second: throttled.
        assert_eq!(check(&c, 1, 5, 100, 100), NonceCheck::Throttled);
        // A newer one forgets the oldest and raises the floor to 100...
        assert_eq!(check(&c, 1, 6, 101, 101), NonceCheck::Fresh);
        // ...so that no request of second 100 can be replayed, forgotten
        // (throttled) or not (replayed), nor a new one signed then.
        assert_eq!(check(&c, 1, 1, 100, 101), NonceCheck::Throttled);
        for i in 2..=4 {
            assert_eq!(check(&c, 1, i, 100, 101), NonceCheck::Replayed);
        }
        assert_eq!(check(&c, 1, 7, 100, 101), NonceCheck::Throttled);
        // The other owner is untouched.
        assert_eq!(check(&c, 2, 1, 100, 101), NonceCheck::Replayed);
        assert_eq!(check(&c, 2, 2, 100, 101), NonceCheck::Fresh);
        assert!(c.len() <= 4 + 2);
    }

    #[test]
    fn at_capacity_the_largest_scope_pays() {
        let c = NonceCache::new(10, 100, W);
        let mut why = Vec::new();
        // Three owners with one request each.
        for s in 2..5 {
            assert_eq!(
                c.check(scope(s), nonce(0), 100, 100, |e| why.push(e)),
                NonceCheck::Fresh
            );
        }
        // A flood over two queues fills the rest and keeps going.
        for i in 0..50u32 {
            let ts = 100 + u64::from(i) / 5;
            let s = 10 + (i % 2) as u8;
            assert_eq!(
                c.check(scope(s), nonce(i), ts, ts, |e| why.push(e)),
                NonceCheck::Fresh,
                "{i}"
            );
        }
        assert!(c.len() <= 10);
        assert!(why.iter().all(|e| *e == Eviction::CacheFull), "{why:?}");
        assert!(!why.is_empty());
        // The three owners' requests are all still remembered...
        for s in 2..5 {
            assert_eq!(check(&c, s, 0, 100, 109), NonceCheck::Replayed);
            // ...and they are served.
            assert_eq!(check(&c, s, 1, 109, 109), NonceCheck::Fresh);
        }
    }

    #[test]
    fn a_flood_of_single_requests_raises_a_global_floor_below_now() {
        let c = NonceCache::new(8, 8, W);
        let mut global = 0;
        // 100 distinct scopes (creation keys), one request each, 5 a second.
        for i in 0..100u32 {
            let ts = 100 + u64::from(i) / 5;
            let got = c.check([i as u8; 33], nonce(i), ts, ts, |e| {
                assert_eq!(e, Eviction::Global);
                global += 1;
            });
            assert_eq!(got, NonceCheck::Fresh, "{i}");
        }
        assert_eq!(global, 92);
        assert!(c.len() <= 8);
        // Every forgotten request is refused; a new one signed now passes.
        assert_eq!(check(&c, 0, 0, 100, 119), NonceCheck::Busy);
        assert_eq!(check(&c, 91, 91, 118, 119), NonceCheck::Busy);
        assert_eq!(check(&c, 200, 1, 119, 119), NonceCheck::Fresh);
        // More than the capacity within one second cannot be told apart:
        // refused rather than forgetting requests of this very second.
        for i in 0..8u32 {
            let _ = c.check([201; 33], nonce(1000 + i), 119, 119, |_| {});
        }
        assert_eq!(check(&c, 202, 1, 119, 119), NonceCheck::Busy);
    }

    #[test]
    fn floors_expire_with_the_window() {
        let c = NonceCache::new(100, 1, W);
        assert_eq!(check(&c, 1, 1, 100, 100), NonceCheck::Fresh);
        assert_eq!(check(&c, 1, 2, 101, 101), NonceCheck::Fresh);
        assert_eq!(check(&c, 1, 3, 100, 101), NonceCheck::Throttled);
        // After the window everything is gone, floors included.
        assert_eq!(check(&c, 1, 4, 300, 300), NonceCheck::Fresh);
        assert_eq!(c.len(), 1);
    }
}
