//! The event heap both engines use.

/// Something with a place in time: ordered by `key`, smallest first.
pub(crate) trait Timed: Copy {
    /// (time, tie-breaker), compared lexicographically.
    fn key(&self) -> (u64, u64);
}

/// A 4-ary min-heap: half the depth of a binary heap, and a node's
/// children share cache lines, which matters once the heap outgrows the
/// cache (large networks).
#[derive(Debug)]
pub(crate) struct Heap<E> {
    v: Vec<E>,
}

impl<E> Default for Heap<E> {
    fn default() -> Self {
        Self { v: Vec::new() }
    }
}

impl<E: Timed> Heap<E> {
    const D: usize = 4;

    #[inline]
    fn before(a: &E, b: &E) -> bool {
        a.key() < b.key()
    }

    pub(crate) fn push(&mut self, ev: E) {
        let mut i = self.v.len();
        self.v.push(ev);
        while i > 0 {
            let parent = (i - 1) / Self::D;
            if !Self::before(&ev, &self.v[parent]) {
                break;
            }
            self.v[i] = self.v[parent];
            i = parent;
        }
        self.v[i] = ev;
    }

    pub(crate) fn peek(&self) -> Option<&E> {
        self.v.first()
    }

    pub(crate) fn pop(&mut self) -> Option<E> {
        let last = self.v.pop()?;
        if self.v.is_empty() {
            return Some(last);
        }
        let top = self.v[0];
        let n = self.v.len();
        let mut i = 0;
        loop {
            let first = i * Self::D + 1;
            if first >= n {
                break;
            }
            let mut best = first;
            for c in first + 1..(first + Self::D).min(n) {
                if Self::before(&self.v[c], &self.v[best]) {
                    best = c;
                }
            }
            if !Self::before(&self.v[best], &last) {
                break;
            }
            self.v[i] = self.v[best];
            i = best;
        }
        self.v[i] = last;
        Some(top)
    }
}
