//! A [`Topology`] whose documents the owner sets.

use std::collections::BTreeMap;
use std::sync::{Arc, PoisonError, RwLock};

use murmur_wire::VerifiedConsensus;

use super::Topology;

/// How many epochs a [`StaticTopology`] keeps.
const KEEP: usize = 4;

/// A [`Topology`] fed by its owner: tests, tools, and adapters that receive
/// verified documents from elsewhere. Keeps the last few epochs; the
/// current one is the newest document set with [`StaticTopology::set_current`].
#[derive(Debug, Default)]
pub struct StaticTopology {
    inner: RwLock<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    current: Option<u64>,
    docs: BTreeMap<u64, Arc<VerifiedConsensus>>,
}

impl StaticTopology {
    /// An empty topology (no consensus yet).
    pub fn new() -> Self {
        Self::default()
    }

    /// A topology whose current document is `consensus`.
    pub fn with_current(consensus: VerifiedConsensus) -> Self {
        let t = Self::new();
        t.set_current(consensus);
        t
    }

    /// Makes `consensus` the current document (keeping older epochs for
    /// lookups of the previous epoch).
    pub fn set_current(&self, consensus: VerifiedConsensus) {
        let mut inner = self.inner.write().unwrap_or_else(PoisonError::into_inner);
        let epoch = consensus.epoch();
        inner.docs.insert(epoch, Arc::new(consensus));
        inner.current = Some(epoch);
        while inner.docs.len() > KEEP {
            let Some((&oldest, _)) = inner.docs.iter().next() else {
                break;
            };
            inner.docs.remove(&oldest);
        }
    }

    /// Forgets every document.
    pub fn clear(&self) {
        let mut inner = self.inner.write().unwrap_or_else(PoisonError::into_inner);
        inner.docs.clear();
        inner.current = None;
    }
}

impl Topology for StaticTopology {
    fn current(&self) -> Option<Arc<VerifiedConsensus>> {
        let inner = self.inner.read().unwrap_or_else(PoisonError::into_inner);
        inner.current.and_then(|e| inner.docs.get(&e).cloned())
    }

    fn for_epoch(&self, epoch: u64) -> Option<Arc<VerifiedConsensus>> {
        let inner = self.inner.read().unwrap_or_else(PoisonError::into_inner);
        inner.docs.get(&epoch).cloned()
    }
}
