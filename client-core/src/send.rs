//! The sending side's bookkeeping: which fragments wait to be sent, which
//! tries are in flight and when they time out, which mixes are suspect.
//! Every lookup is by key and every deadline sits in an ordered set, so a
//! timer tick costs what is due, not what is tracked.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::time::Duration;

use murmur_wire::packet::MIX_LAYERS;
use murmur_wire::policy::{
    CongestionWindow, RttEstimator, Suspicion, retry_timeout, select_route_avoiding,
};
use murmur_wire::{MessageId, NodeId, Route, SurbId, VerifiedConsensus};
use rand::CryptoRng;

use crate::{Action, Destination, Fragment, MessageState, Time};

/// An outgoing message.
#[derive(Debug)]
struct Message {
    dest: Destination,
    total: u32,
    acked: u32,
    /// Its fragments still tracked (not acknowledged).
    pending: u32,
}

/// One unacknowledged fragment.
#[derive(Debug, Default)]
struct Track {
    tries: u32,
    /// When the current try times out; `None` while waiting to be sent.
    deadline: Option<Time>,
    /// Every try's SURB: an acknowledgement of any of them counts.
    surbs: Vec<SurbId>,
}

/// One try in flight: what its acknowledgement proves.
#[derive(Debug)]
struct Try {
    fragment: Fragment,
    /// The mixes of the packet's and the acknowledgement's routes.
    mixes: Vec<NodeId>,
    sent_at: Time,
}

/// What an acknowledgement settled.
#[derive(Debug)]
pub(crate) struct Acked {
    pub(crate) fragment: Fragment,
    pub(crate) surbs: Vec<SurbId>,
    pub(crate) progress: Action,
}

/// A message that ran out of tries.
#[derive(Debug)]
pub(crate) struct Failed {
    pub(crate) surbs: Vec<SurbId>,
    pub(crate) progress: Action,
}

#[derive(Debug)]
pub(crate) struct Sender {
    messages: HashMap<MessageId, Message>,
    frags: HashMap<Fragment, Track>,
    /// Fragments whose try timed out: sent before new ones.
    retry: VecDeque<Fragment>,
    /// Fragments never sent, in the order they were queued.
    ready: VecDeque<Fragment>,
    deadlines: BTreeSet<(Time, Fragment)>,
    tries: HashMap<SurbId, Try>,
    suspicion: Suspicion,
    rtt: RttEstimator,
    window: CongestionWindow,
}

impl Sender {
    /// A sender keeping at most `max_in_flight` tries in flight.
    pub(crate) fn new(max_in_flight: usize) -> Self {
        Self {
            messages: HashMap::new(),
            frags: HashMap::new(),
            retry: VecDeque::new(),
            ready: VecDeque::new(),
            deadlines: BTreeSet::new(),
            tries: HashMap::new(),
            suspicion: Suspicion::default(),
            rtt: RttEstimator::default(),
            window: CongestionWindow::new(max_in_flight),
        }
    }

    /// Whether the congestion window lets another try go.
    pub(crate) fn window_open(&self) -> bool {
        self.deadlines.len() < self.window.allowed()
    }

    /// The measured acknowledgement round trip, once there is one.
    pub(crate) fn srtt(&self) -> Option<Duration> {
        self.rtt.srtt()
    }

    pub(crate) fn queue(
        &mut self,
        message: MessageId,
        dest: Destination,
        total: u32,
        pending: &[u32],
    ) {
        if pending.is_empty() || self.messages.contains_key(&message) {
            return;
        }
        let mut count = 0;
        for &index in pending {
            if index >= total {
                continue;
            }
            let f = Fragment { message, index };
            if self.frags.insert(f, Track::default()).is_none() {
                self.ready.push_back(f);
                count += 1;
            }
        }
        self.messages.insert(
            message,
            Message {
                dest,
                total,
                acked: total - count,
                pending: count,
            },
        );
    }

    pub(crate) fn messages(&self) -> usize {
        self.messages.len()
    }

    pub(crate) fn knows_surb(&self, surb: &SurbId) -> bool {
        self.tries.contains_key(surb)
    }

    pub(crate) fn next_deadline(&self) -> Option<Time> {
        self.deadlines.first().map(|(t, _)| *t)
    }

    pub(crate) fn waiting(&self) -> usize {
        self.frags.values().filter(|t| t.deadline.is_none()).count()
    }

    /// The mixes avoided now.
    pub(crate) fn avoided(&self, consensus: &VerifiedConsensus, now: Time) -> HashSet<NodeId> {
        self.suspicion.avoided(consensus, now)
    }

    /// Packets sent at `sent_at` through `mixes` came back.
    pub(crate) fn vouch(&mut self, mixes: &[NodeId], sent_at: Time) {
        self.suspicion.carried(mixes, sent_at);
    }

    pub(crate) fn retain_known(&mut self, consensus: &VerifiedConsensus) {
        self.suspicion.retain(consensus);
    }

    fn pop_ready(&mut self) -> Option<Fragment> {
        while let Some(f) = self.retry.pop_front().or_else(|| self.ready.pop_front()) {
            if self.frags.get(&f).is_some_and(|t| t.deadline.is_none()) {
                return Some(f);
            }
        }
        None
    }

    /// The next try to send, with a fresh route and acknowledgement route
    /// avoiding suspect mixes, and a fresh SURB id. `None` if nothing waits
    /// or no route can be made (the fragment waits for a better network).
    pub(crate) fn next_try<R: CryptoRng>(
        &mut self,
        rng: &mut R,
        consensus: &VerifiedConsensus,
        home: NodeId,
        timeout: Duration,
        now: Time,
    ) -> Option<Action> {
        let fragment = self.pop_ready()?;
        let Some(dest) = self.messages.get(&fragment.message).map(|m| m.dest) else {
            self.frags.remove(&fragment);
            return None;
        };
        let avoid = self.suspicion.avoided(consensus, now);
        let routes = select_route_avoiding(rng, consensus, &dest.provider, |n| avoid.contains(n))
            .and_then(|r| {
                select_route_avoiding(rng, consensus, &home, |n| avoid.contains(n)).map(|a| (r, a))
            });
        let Ok((route, ack_route)) = routes else {
            // No route to the provider now: the fragment waits at the head.
            self.retry.push_front(fragment);
            return None;
        };
        let surb = loop {
            let s = SurbId::random_nonzero(rng);
            if !self.tries.contains_key(&s) {
                break s;
            }
        };
        let track = self.frags.get_mut(&fragment)?;
        let first_try = track.tries == 0;
        track.tries += 1;
        let deadline = now + retry_timeout(self.rtt.timeout(timeout), track.tries);
        track.deadline = Some(deadline);
        track.surbs.push(surb);
        self.deadlines.insert((deadline, fragment));
        self.tries.insert(
            surb,
            Try {
                fragment,
                mixes: mixes_of(&route, &ack_route),
                sent_at: now,
            },
        );
        Some(Action::SendReal {
            fragment,
            dest,
            route,
            ack_route,
            surb,
            first_try,
        })
    }

    /// The try of `surb` could not be built or sent (the driver's storage
    /// or packet building failed): it proves nothing about the mixes, and
    /// its fragment is tried again after `after`.
    pub(crate) fn unsent(&mut self, surb: &SurbId, after: Duration, now: Time) {
        let Some(t) = self.tries.remove(surb) else {
            return;
        };
        let Some(track) = self.frags.get_mut(&t.fragment) else {
            return;
        };
        track.surbs.retain(|s| s != surb);
        if let Some(old) = track.deadline.take() {
            self.deadlines.remove(&(old, t.fragment));
        }
        let at = now + after;
        track.deadline = Some(at);
        self.deadlines.insert((at, t.fragment));
        // Not a timeout of the mixes: the route is not blamed when it
        // expires.
        self.tries.insert(
            *surb,
            Try {
                fragment: t.fragment,
                mixes: Vec::new(),
                sent_at: t.sent_at,
            },
        );
    }

    /// An acknowledgement of the try of `surb` (verified by the driver),
    /// read at `now`.
    pub(crate) fn acked(&mut self, surb: &SurbId, now: Time) -> Option<Acked> {
        let t = self.tries.remove(surb)?;
        self.suspicion.carried(&t.mixes, t.sent_at);
        if !t.mixes.is_empty() {
            self.rtt.sample(now.saturating_sub(t.sent_at));
            self.window.acked();
        }
        let track = self.frags.remove(&t.fragment)?;
        if let Some(d) = track.deadline {
            self.deadlines.remove(&(d, t.fragment));
        }
        for s in &track.surbs {
            self.tries.remove(s);
        }
        let m = self.messages.get_mut(&t.fragment.message)?;
        m.acked = m.acked.saturating_add(1).min(m.total);
        m.pending = m.pending.saturating_sub(1);
        let progress = Action::Progress {
            message: t.fragment.message,
            acked: m.acked,
            total: m.total,
            state: if m.pending == 0 {
                MessageState::Delivered
            } else {
                MessageState::Sending
            },
        };
        if m.pending == 0 {
            self.messages.remove(&t.fragment.message);
        }
        Some(Acked {
            fragment: t.fragment,
            surbs: track.surbs,
            progress,
        })
    }

    /// Handles the tries overdue at `now`: each blames its mixes; its
    /// fragment is queued again, or its message fails once the fragment
    /// had `max_tries`.
    pub(crate) fn expire(&mut self, now: Time, max_tries: u32) -> Vec<Failed> {
        let mut failed = Vec::new();
        while let Some(&(at, fragment)) = self.deadlines.first() {
            if at > now {
                break;
            }
            self.deadlines.pop_first();
            let Some(track) = self.frags.get_mut(&fragment) else {
                continue;
            };
            track.deadline = None;
            let tries = track.tries;
            if let Some(last) = track.surbs.last()
                && let Some(t) = self.tries.get(last)
                && !t.mixes.is_empty()
            {
                self.suspicion.timed_out(&t.mixes, t.sent_at);
                self.window.timed_out(t.sent_at, now);
            }
            if tries >= max_tries {
                failed.push(self.fail(fragment.message));
            } else {
                self.retry.push_back(fragment);
            }
        }
        failed
    }

    fn fail(&mut self, message: MessageId) -> Failed {
        let m = self.messages.remove(&message);
        let (acked, total) = m.as_ref().map(|m| (m.acked, m.total)).unwrap_or((0, 0));
        let mut surbs = Vec::new();
        for index in 0..total {
            let f = Fragment { message, index };
            if let Some(track) = self.frags.remove(&f) {
                if let Some(d) = track.deadline {
                    self.deadlines.remove(&(d, f));
                }
                for s in track.surbs {
                    self.tries.remove(&s);
                    surbs.push(s);
                }
            }
        }
        Failed {
            surbs,
            progress: Action::Progress {
                message,
                acked,
                total,
                state: MessageState::Failed,
            },
        }
    }

    /// Blame on `node` (for diagnostics).
    pub(crate) fn blame_of(&self, node: &NodeId) -> u32 {
        self.suspicion.blame_of(node)
    }
}

fn mixes_of(route: &Route, ack_route: &Route) -> Vec<NodeId> {
    route.hops()[..MIX_LAYERS]
        .iter()
        .chain(&ack_route.hops()[..MIX_LAYERS])
        .map(|h| h.id)
        .collect()
}
