//! The receiving side's bookkeeping: when each queue is fetched, where its
//! cursor stands, which entries to delete, which fragments of which
//! messages have arrived and when a partial message expires.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use murmur_wire::{MessageId, QueueId};

use crate::{Action, Time};

/// What became of one fetched entry, as the driver reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EntryOutcome {
    /// Opened, and stored durably or used (a fragment, an acknowledgement,
    /// a loop, a duplicate of something stored): delete it at the provider.
    Used,
    /// It could not be opened (garbage, a wrong key, an acknowledgement
    /// nobody waits for): leave it at the provider, where it expires, and
    /// fetch past it.
    Unopened,
    /// It opened but could not be stored (the driver's storage failed):
    /// neither deleted nor passed, so it is fetched again.
    NotStored,
}

/// Where the fetching of one queue stands.
#[derive(Debug)]
struct QueueState {
    /// Entries up to here were seen: deleted, or left unopened.
    cursor: u64,
    /// When it is fetched next; `None` while a fetch is out.
    due: Option<Time>,
}

/// A message some of whose fragments arrived.
#[derive(Debug)]
struct Partial {
    count: u32,
    have: u32,
    /// One bit per fragment index.
    bits: Vec<u64>,
    expires: Time,
}

impl Partial {
    fn new(count: u32, expires: Time) -> Self {
        Self {
            count,
            have: 0,
            bits: vec![0; (count as usize).div_ceil(64)],
            expires,
        }
    }

    /// Marks `index`; false if it was marked already.
    fn mark(&mut self, index: u32) -> bool {
        let (word, bit) = ((index / 64) as usize, index % 64);
        let Some(w) = self.bits.get_mut(word) else {
            return false;
        };
        if *w & (1 << bit) != 0 {
            return false;
        }
        *w |= 1 << bit;
        self.have += 1;
        true
    }
}

/// Why a fragment was not counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FragmentError {
    /// Its index is not below its count, or its count is zero or above the
    /// configured most.
    Malformed,
    /// Its count differs from that of fragments of the same message
    /// that arrived before.
    CountMismatch,
}

#[derive(Debug)]
pub(crate) struct Receiver {
    interval: Duration,
    partial_ttl: Duration,
    max_fragments: u32,
    queues: HashMap<QueueId, QueueState>,
    due: BTreeSet<(Time, QueueId)>,
    partials: HashMap<(QueueId, MessageId), Partial>,
    expiry: BTreeSet<(Time, QueueId, MessageId)>,
}

impl Receiver {
    pub(crate) fn new(interval: Duration, partial_ttl: Duration, max_fragments: u32) -> Self {
        Self {
            interval,
            partial_ttl,
            max_fragments,
            queues: HashMap::new(),
            due: BTreeSet::new(),
            partials: HashMap::new(),
            expiry: BTreeSet::new(),
        }
    }

    /// Fetches `queues` from now on: new ones are due at once, dropped
    /// ones are forgotten.
    pub(crate) fn set_queues(&mut self, queues: &[QueueId], now: Time) {
        self.queues.retain(|q, st| {
            let keep = queues.contains(q);
            if !keep && let Some(at) = st.due {
                self.due.remove(&(at, *q));
            }
            keep
        });
        for q in queues {
            if !self.queues.contains_key(q) {
                self.queues.insert(
                    *q,
                    QueueState {
                        cursor: 0,
                        due: Some(now),
                    },
                );
                self.due.insert((now, *q));
            }
        }
    }

    /// Makes every queue not being fetched due at `now`.
    pub(crate) fn fetch_all(&mut self, now: Time) {
        for (q, st) in &mut self.queues {
            if let Some(at) = st.due
                && at > now
            {
                self.due.remove(&(at, *q));
                self.due.insert((now, *q));
                st.due = Some(now);
            }
        }
    }

    /// Whether a fetch of some queue is out or due by `now`.
    pub(crate) fn busy(&self, now: Time) -> bool {
        self.queues
            .values()
            .any(|s| s.due.is_none_or(|at| at <= now))
    }

    pub(crate) fn next_due(&self) -> Option<Time> {
        let fetch = self.due.first().map(|(t, _)| *t);
        let expiry = self.expiry.first().map(|(t, _, _)| *t);
        fetch.into_iter().chain(expiry).min()
    }

    /// The fetches and expiries due at `now`.
    pub(crate) fn due(&mut self, now: Time) -> Vec<Action> {
        let mut out = Vec::new();
        while let Some(&(at, queue)) = self.due.first() {
            if at > now {
                break;
            }
            self.due.pop_first();
            if let Some(st) = self.queues.get_mut(&queue) {
                st.due = None;
                out.push(Action::Fetch {
                    queue,
                    after: st.cursor,
                });
            }
        }
        while let Some(&(at, queue, message)) = self.expiry.first() {
            if at > now {
                break;
            }
            self.expiry.pop_first();
            self.partials.remove(&(queue, message));
            out.push(Action::DiscardPartial { queue, message });
        }
        out
    }

    /// A fragment that arrived is stored: true if it completed its message.
    pub(crate) fn fragment(
        &mut self,
        queue: QueueId,
        message: MessageId,
        index: u32,
        count: u32,
        now: Time,
    ) -> Result<bool, FragmentError> {
        if count == 0 || count > self.max_fragments || index >= count {
            return Err(FragmentError::Malformed);
        }
        let key = (queue, message);
        let p = match self.partials.get_mut(&key) {
            Some(p) if p.count != count => return Err(FragmentError::CountMismatch),
            Some(p) => p,
            None => {
                let expires = now + self.partial_ttl;
                self.expiry.insert((expires, queue, message));
                self.partials
                    .entry(key)
                    .or_insert(Partial::new(count, expires))
            }
        };
        if !p.mark(index) || p.have < p.count {
            return Ok(false);
        }
        let expires = p.expires;
        self.partials.remove(&key);
        self.expiry.remove(&(expires, queue, message));
        Ok(true)
    }

    /// Restores a partial message stored before a restart: the fragments
    /// `have` of `count` arrived, the first `age` ago.
    pub(crate) fn restore(
        &mut self,
        queue: QueueId,
        message: MessageId,
        count: u32,
        have: &[u32],
        age: Duration,
        now: Time,
    ) -> Result<bool, FragmentError> {
        let expires = (now + self.partial_ttl).saturating_sub(age);
        let mut done = false;
        for &i in have {
            done = self.fragment(queue, message, i, count, now)?;
        }
        if let Some(p) = self.partials.get_mut(&(queue, message))
            && p.expires != expires
        {
            self.expiry.remove(&(p.expires, queue, message));
            p.expires = expires;
            self.expiry.insert((expires, queue, message));
        }
        Ok(done)
    }

    /// Fragments of `message` that arrived, if it is partial.
    pub(crate) fn partial(&self, queue: &QueueId, message: &MessageId) -> Option<(u32, u32)> {
        self.partials
            .get(&(*queue, *message))
            .map(|p| (p.have, p.count))
    }

    /// Forgets a partial message (the driver dropped it).
    pub(crate) fn forget(&mut self, queue: &QueueId, message: &MessageId) {
        if let Some(p) = self.partials.remove(&(*queue, *message)) {
            self.expiry.remove(&(p.expires, *queue, *message));
        }
    }

    /// The result of a fetch: deletes what was used, moves the cursor past
    /// what was seen, and fetches the next page at once if there is one.
    pub(crate) fn fetched(
        &mut self,
        queue: QueueId,
        outcomes: &[(u64, EntryOutcome)],
        more: bool,
        now: Time,
    ) -> Vec<Action> {
        let Some(st) = self.queues.get_mut(&queue) else {
            return Vec::new();
        };
        let mut delete = Vec::new();
        let mut stopped = false;
        for &(seq, outcome) in outcomes {
            // A provider answers entries in order after the cursor; the
            // driver checked that. Anything else is not trusted to move it.
            if seq <= st.cursor {
                continue;
            }
            match outcome {
                EntryOutcome::Used => {
                    delete.push(seq);
                    st.cursor = seq;
                }
                EntryOutcome::Unopened => st.cursor = seq,
                EntryOutcome::NotStored => {
                    stopped = true;
                    break;
                }
            }
        }
        let mut out = Vec::new();
        if !delete.is_empty() {
            out.push(Action::Delete {
                queue,
                seqs: delete,
            });
        }
        if more && !stopped && st.due.is_none() {
            out.push(Action::Fetch {
                queue,
                after: st.cursor,
            });
        } else {
            let at = now + self.interval;
            if let Some(old) = st.due.replace(at) {
                self.due.remove(&(old, queue));
            }
            self.due.insert((at, queue));
        }
        out
    }

    /// A fetch of `queue` failed: it is tried again in an interval.
    pub(crate) fn failed(&mut self, queue: QueueId, now: Time) {
        let Some(st) = self.queues.get_mut(&queue) else {
            return;
        };
        let at = now + self.interval;
        if let Some(old) = st.due.replace(at) {
            self.due.remove(&(old, queue));
        }
        self.due.insert((at, queue));
    }

    /// Deleting `seqs` of `queue` failed: the cursor goes back before them,
    /// so they are fetched (and deleted) again.
    pub(crate) fn delete_failed(&mut self, queue: QueueId, seqs: &[u64]) {
        if let Some(st) = self.queues.get_mut(&queue)
            && let Some(first) = seqs.iter().min()
        {
            st.cursor = st.cursor.min(first.saturating_sub(1));
        }
    }
}
