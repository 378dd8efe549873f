#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]

mod recv;
mod send;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use murmur_wire::packet::MIX_LAYERS;
use murmur_wire::policy::{ClientSchedule, Stream};
use murmur_wire::{MessageId, NodeId, QueueId, Route, SurbId, VerifiedConsensus};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

pub use recv::{EntryOutcome, FragmentError};

/// The core's clock: time since an origin the driver chooses (a tokio
/// instant for the client, zero for the simulator). The core never reads a
/// clock; every call says what time it is.
pub type Time = Duration;

/// One fragment of an outgoing message: the message and the fragment's
/// index in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fragment {
    /// The message.
    pub message: MessageId,
    /// The fragment's index, `0..total`.
    pub index: u32,
}

/// Where an outgoing message goes: the recipient's provider and queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Destination {
    /// The recipient's mailbox provider.
    pub provider: NodeId,
    /// The queue at that provider.
    pub queue: QueueId,
}

/// Where an outgoing message stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MessageState {
    /// Some fragments are not acknowledged yet.
    Sending,
    /// Every fragment was acknowledged by the recipient's provider.
    Delivered,
    /// A fragment ran out of tries.
    Failed,
}

/// What the driver must do. Actions come out of [`Core::poll_action`] in
/// the order they must be done in.
#[derive(Clone, Debug)]
pub enum Action {
    /// Build and send one try of `fragment`: a forward packet along `route`
    /// depositing the fragment's body into `dest.queue`, carrying an
    /// acknowledgement SURB with id `surb` along `ack_route` into the
    /// client's acknowledgement queue. Keep the SURB's recovery material
    /// under `surb` until told to forget it.
    SendReal {
        /// The fragment.
        fragment: Fragment,
        /// Its destination.
        dest: Destination,
        /// The packet's route (its first hop is where to send it).
        route: Route,
        /// The acknowledgement SURB's route.
        ack_route: Route,
        /// The SURB's id.
        surb: SurbId,
        /// False for a retransmission.
        first_try: bool,
    },
    /// Build and send a drop-cover packet along `route`, to a random
    /// `queue` at the route's provider (which discards it).
    SendDropCover {
        /// The route.
        route: Route,
        /// A random queue id.
        queue: QueueId,
    },
    /// Build and send a loop-cover packet along `route` into the client's
    /// loop queue, carrying `id`.
    SendLoop {
        /// The route (to the client's home provider).
        route: Route,
        /// The loop's id.
        id: MessageId,
    },
    /// Record durably that `fragment` was acknowledged; forget the
    /// recovery material of `surbs`.
    FragmentAcked {
        /// The fragment.
        fragment: Fragment,
        /// Every SURB of its tries.
        surbs: Vec<SurbId>,
    },
    /// A message's progress changed.
    Progress {
        /// The message.
        message: MessageId,
        /// Fragments acknowledged.
        acked: u32,
        /// Fragments in all.
        total: u32,
        /// Where it stands.
        state: MessageState,
    },
    /// Forget the recovery material of `surbs` (their fragment's message
    /// failed).
    ForgetSurbs {
        /// The SURBs.
        surbs: Vec<SurbId>,
    },
    /// Fetch the entries of `queue` after sequence number `after`, then
    /// report with [`Core::on_fetched`] or [`Core::on_fetch_failed`].
    Fetch {
        /// The queue.
        queue: QueueId,
        /// The cursor.
        after: u64,
    },
    /// Delete exactly these entries of `queue` at its provider (each was
    /// stored or used).
    Delete {
        /// The queue.
        queue: QueueId,
        /// The entries.
        seqs: Vec<u64>,
    },
    /// Every fragment of `message` arrived in `queue`: assemble the
    /// message from the stored fragments, open it and deliver it.
    Complete {
        /// The queue (a contact's inbox).
        queue: QueueId,
        /// The message.
        message: MessageId,
    },
    /// A partial message waited too long for its other fragments: discard
    /// what was stored of it.
    DiscardPartial {
        /// The queue.
        queue: QueueId,
        /// The message.
        message: MessageId,
    },
}

/// How the core behaves.
#[derive(Clone, Debug)]
pub struct Config {
    /// The client's home provider (loops and acknowledgements go there).
    pub home: NodeId,
    /// The client's acknowledgement queue at its home provider.
    pub ack_queue: QueueId,
    /// The client's loop queue at its home provider.
    pub loop_queue: QueueId,
    /// Tries per fragment before its message fails.
    pub max_tries: u32,
    /// Acknowledgement timeout; from the consensus
    /// ([`murmur_wire::policy::ack_timeout`]) if `None`.
    pub ack_timeout: Option<Duration>,
    /// How often every queue is fetched.
    pub fetch_interval: Duration,
    /// A partial message is discarded this long after its first fragment
    /// arrived, if it is still incomplete.
    pub partial_ttl: Duration,
    /// The most fragments a message may have (the driver's largest
    /// message over its fragment size); fragments claiming more are
    /// refused.
    pub max_fragments: u32,
    /// The most tries in flight (sent, not yet acknowledged or timed out)
    /// at once: the ceiling of the congestion window
    /// ([`murmur_wire::policy::CongestionWindow`]). The window binds when
    /// the send stream is off (packets leave as soon as they are queued): a
    /// large file then goes out as fast as acknowledgements come back, not
    /// all at once into the links' queues.
    pub max_in_flight: usize,
}

impl Config {
    /// The defaults for a client whose home and queues are given.
    pub fn new(home: NodeId, ack_queue: QueueId, loop_queue: QueueId) -> Self {
        Self {
            home,
            ack_queue,
            loop_queue,
            max_tries: 10,
            ack_timeout: None,
            fetch_interval: Duration::from_secs(1),
            partial_ttl: Duration::from_secs(7 * 24 * 3600),
            max_fragments: 1 << 16,
            max_in_flight: 1024,
        }
    }
}

/// Counters the core keeps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Real packets sent, first tries.
    pub real_sent: u64,
    /// Real packets sent again after a timeout.
    pub retransmissions: u64,
    /// Drop-cover packets sent.
    pub drop_cover_sent: u64,
    /// Loop-cover packets sent.
    pub loop_cover_sent: u64,
    /// Loop-cover packets that came back.
    pub loops_returned: u64,
    /// Acknowledgements for tries being tracked.
    pub acks: u64,
    /// Fetched entries that could not be opened (left at the provider).
    pub unopened_entries: u64,
    /// Partial messages discarded for expiry.
    pub partials_expired: u64,
}

/// Loop ids remembered at most (older loops count as lost).
const MAX_OUTSTANDING_LOOPS: usize = 4096;

/// The client protocol core. See the crate documentation.
pub struct Core {
    cfg: Config,
    rng: ChaCha20Rng,
    consensus: Option<Arc<VerifiedConsensus>>,
    /// The acknowledgement timeout the consensus implies, computed once
    /// per consensus (an Erlang quantile, by bisection: too dear to redo
    /// at every send tick).
    consensus_timeout: Option<Duration>,
    schedule: Option<(ClientSchedule, (u64, u64))>,
    send: send::Sender,
    recv: recv::Receiver,
    /// Loops sent and not returned, oldest first, and what each proves
    /// when it returns: its mixes and when it left.
    loops: VecDeque<MessageId>,
    loop_routes: HashMap<MessageId, (Vec<NodeId>, Time)>,
    actions: VecDeque<Action>,
    stats: Stats,
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core")
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Core {
    /// A core with `cfg`, whose random choices (routes, delays, schedule,
    /// SURB ids) come from `seed`: the same seed and the same calls give
    /// the same actions.
    pub fn new(cfg: Config, seed: [u8; 32]) -> Self {
        Self {
            send: send::Sender::new(cfg.max_in_flight),
            recv: recv::Receiver::new(cfg.fetch_interval, cfg.partial_ttl, cfg.max_fragments),
            cfg,
            rng: ChaCha20Rng::from_seed(seed),
            consensus: None,
            consensus_timeout: None,
            schedule: None,
            loops: VecDeque::new(),
            loop_routes: HashMap::new(),
            actions: VecDeque::new(),
            stats: Stats::default(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The counters.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// The network to route through from now on. The send and loop streams
    /// follow its rates (restarted when they change).
    pub fn set_consensus(&mut self, consensus: Arc<VerifiedConsensus>, now: Time) {
        let p = consensus.params();
        let rates = (p.client_rate.to_bits(), p.client_loop_rate.to_bits());
        if self.schedule.as_ref().map(|(_, r)| *r) != Some(rates) {
            let sched = ClientSchedule::new(&mut self.rng, p.client_rate, p.client_loop_rate, now);
            self.schedule = Some((sched, rates));
        }
        self.send.retain_known(&consensus);
        self.consensus_timeout = Some(murmur_wire::policy::ack_timeout(
            consensus.params(),
            self.cfg.fetch_interval,
        ));
        self.consensus = Some(consensus);
        // With the send stream off, waiting packets go now.
        self.flush_immediate(now);
    }

    /// Queues a message whose fragments the driver has stored: `pending`
    /// are the indexes not acknowledged yet, of `total`.
    pub fn queue_message(
        &mut self,
        message: MessageId,
        dest: Destination,
        total: u32,
        pending: &[u32],
        now: Time,
    ) {
        self.send.queue(message, dest, total, pending);
        let acked = total.saturating_sub(pending.len() as u32);
        if pending.is_empty() {
            self.actions.push_back(Action::Progress {
                message,
                acked,
                total,
                state: MessageState::Delivered,
            });
        }
        self.flush_immediate(now);
    }

    /// The queues to fetch every fetch interval (the acknowledgement and
    /// loop queues are always fetched). Replaces the previous list; new
    /// queues are fetched at once.
    pub fn set_inboxes(&mut self, inboxes: &[QueueId], now: Time) {
        let mut all = vec![self.cfg.ack_queue, self.cfg.loop_queue];
        all.extend_from_slice(inboxes);
        self.recv.set_queues(&all, now);
    }

    /// Fetches every queue now rather than at its next interval (queues
    /// being fetched are left alone).
    pub fn fetch_now(&mut self, now: Time) {
        self.recv.fetch_all(now);
    }

    /// Whether a fetch is out or due now (a driver waiting for a fetch
    /// round to finish waits until this is false).
    pub fn fetching(&self, now: Time) -> bool {
        self.recv.busy(now)
    }

    /// An acknowledgement opened with the recovery material of `surb` (the
    /// driver checked it): its fragment is delivered.
    pub fn on_ack(&mut self, surb: SurbId, now: Time) {
        if let Some(done) = self.send.acked(&surb, now) {
            self.stats.acks += 1;
            self.actions.push_back(Action::FragmentAcked {
                fragment: done.fragment,
                surbs: done.surbs,
            });
            self.actions.push_back(done.progress);
            // A place in the window opened.
            self.flush_immediate(now);
        }
    }

    /// Whether `surb` belongs to a try being tracked (an acknowledgement
    /// for anything else cannot be opened).
    pub fn knows_surb(&self, surb: &SurbId) -> bool {
        self.send.knows_surb(surb)
    }

    /// A loop-cover packet with `id` came back: its mixes work (a mix
    /// suspected for a neighbour's losses is cleared this way).
    pub fn on_loop_returned(&mut self, id: MessageId) {
        if let Some((mixes, sent_at)) = self.loop_routes.remove(&id) {
            self.stats.loops_returned += 1;
            self.send.vouch(&mixes, sent_at);
        }
    }

    /// The try of `surb` was not sent after all (building its packet or
    /// reading its fragment failed): its fragment is tried again after
    /// `after`, counted as a try, without blaming any mix.
    pub fn on_try_unsent(&mut self, surb: SurbId, after: Duration, now: Time) {
        self.send.unsent(&surb, after, now);
    }

    /// A fragment of `message` (index `index` of `count`) that arrived in
    /// `queue` is stored durably. Emits [`Action::Complete`] once all are.
    /// A fragment whose index or count does not fit is refused (the driver
    /// should not have stored it).
    pub fn on_fragment(
        &mut self,
        queue: QueueId,
        message: MessageId,
        index: u32,
        count: u32,
        now: Time,
    ) -> Result<(), FragmentError> {
        if self.recv.fragment(queue, message, index, count, now)? {
            self.actions.push_back(Action::Complete { queue, message });
        }
        Ok(())
    }

    /// Checks a fragment before the driver stores it: `Ok` if
    /// [`Core::on_fragment`] would take it.
    pub fn check_fragment(
        &self,
        queue: &QueueId,
        message: &MessageId,
        index: u32,
        count: u32,
    ) -> Result<(), FragmentError> {
        if count == 0 || count > self.cfg.max_fragments || index >= count {
            return Err(FragmentError::Malformed);
        }
        match self.recv.partial(queue, message) {
            Some((_, c)) if c != count => Err(FragmentError::CountMismatch),
            _ => Ok(()),
        }
    }

    /// A partial message stored before a restart: the fragments `have` of
    /// `count` arrived, the first of them `age` ago (it expires
    /// [`Config::partial_ttl`] after that).
    pub fn restore_partial(
        &mut self,
        queue: QueueId,
        message: MessageId,
        count: u32,
        have: &[u32],
        age: Duration,
        now: Time,
    ) -> Result<(), FragmentError> {
        if self.recv.restore(queue, message, count, have, age, now)? {
            self.actions.push_back(Action::Complete { queue, message });
        }
        Ok(())
    }

    /// The driver dropped a partial message (say it could not be opened
    /// once complete): stop tracking it.
    pub fn forget_partial(&mut self, queue: &QueueId, message: &MessageId) {
        self.recv.forget(queue, message);
    }

    /// The result of a [`Action::Fetch`] of `queue`: what became of each
    /// entry, in order (stop at the first one that could not be stored:
    /// report it as [`EntryOutcome::NotStored`] and leave out the rest),
    /// and whether the provider holds more after the last.
    pub fn on_fetched(
        &mut self,
        queue: QueueId,
        outcomes: &[(u64, EntryOutcome)],
        more: bool,
        now: Time,
    ) {
        let unopened = outcomes
            .iter()
            .filter(|(_, o)| *o == EntryOutcome::Unopened)
            .count() as u64;
        self.stats.unopened_entries += unopened;
        for a in self.recv.fetched(queue, outcomes, more, now) {
            self.actions.push_back(a);
        }
    }

    /// A [`Action::Fetch`] of `queue` failed (the provider was unreachable,
    /// refused, or answered what does not answer the request); it is tried
    /// again at the next interval.
    pub fn on_fetch_failed(&mut self, queue: QueueId, now: Time) {
        self.recv.failed(queue, now);
    }

    /// An [`Action::Delete`] failed: its entries are fetched again (and
    /// then deleted again).
    pub fn on_delete_failed(&mut self, queue: QueueId, seqs: &[u64]) {
        self.recv.delete_failed(queue, seqs);
    }

    /// When [`Core::handle_timeout`] must be called next, if ever.
    pub fn poll_timeout(&self) -> Option<Time> {
        let sched = self
            .schedule
            .as_ref()
            .and_then(|(s, _)| s.peek())
            .map(|(at, _)| at);
        [sched, self.send.next_deadline(), self.recv.next_due()]
            .into_iter()
            .flatten()
            .min()
    }

    /// Does what is due at `now`: schedule ticks (real, drop or loop
    /// packets), timed-out tries (retransmitted or failed), fetches, partial
    /// messages that expired.
    pub fn handle_timeout(&mut self, now: Time) {
        // Tries whose acknowledgement is overdue (queued for the next tick).
        for failed in self.send.expire(now, self.cfg.max_tries) {
            self.actions.push_back(Action::ForgetSurbs {
                surbs: failed.surbs,
            });
            self.actions.push_back(failed.progress);
        }
        // Schedule ticks, in order.
        while let Some((sched, _)) = self.schedule.as_mut() {
            if sched.peek().is_none_or(|(at, _)| at > now) {
                break;
            }
            let Some((at, stream)) = sched.pop(&mut self.rng) else {
                break;
            };
            match stream {
                Stream::Send => {
                    if !self.send_next_real(at) {
                        self.send_drop_cover();
                    }
                }
                Stream::Loop => self.send_loop(at),
            }
        }
        self.flush_immediate(now);
        for a in self.recv.due(now) {
            if matches!(a, Action::DiscardPartial { .. }) {
                self.stats.partials_expired += 1;
            }
            self.actions.push_back(a);
        }
    }

    /// The next action for the driver, if any.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// Outgoing messages being sent.
    pub fn sending(&self) -> usize {
        self.send.messages()
    }

    /// The measured acknowledgement round trip (smoothed), once a try was
    /// acknowledged.
    pub fn srtt(&self) -> Option<Duration> {
        self.send.srtt()
    }

    /// Fragments waiting for their (next) try.
    pub fn waiting(&self) -> usize {
        self.send.waiting()
    }

    /// The mixes avoided at `now` because packets through them were lost.
    pub fn suspected(&self, now: Time) -> std::collections::HashSet<NodeId> {
        match &self.consensus {
            Some(c) => self.send.avoided(c, now),
            None => Default::default(),
        }
    }

    /// Timeouts blamed on `node` since it last carried a packet.
    pub fn blame_of(&self, node: &NodeId) -> u32 {
        self.send.blame_of(node)
    }

    fn base_timeout(&self) -> Duration {
        self.cfg
            .ack_timeout
            .or(self.consensus_timeout)
            .unwrap_or(Duration::from_secs(30))
    }

    /// With the send stream off (rate 0), real packets leave as soon as
    /// they are ready.
    fn flush_immediate(&mut self, now: Time) {
        let off = self
            .schedule
            .as_ref()
            .is_some_and(|(s, _)| s.sends_immediately());
        if !off {
            return;
        }
        while self.send_next_real(now) {}
    }

    /// Sends the next ready fragment's try; false if none is ready (or no
    /// route can be made).
    fn send_next_real(&mut self, now: Time) -> bool {
        if !self.send.window_open() {
            return false;
        }
        let Some(consensus) = self.consensus.clone() else {
            return false;
        };
        let timeout = self.base_timeout();
        let cfg = &self.cfg;
        match self
            .send
            .next_try(&mut self.rng, &consensus, cfg.home, timeout, now)
        {
            Some(action) => {
                if let Action::SendReal { first_try, .. } = &action {
                    if *first_try {
                        self.stats.real_sent += 1;
                    } else {
                        self.stats.retransmissions += 1;
                    }
                }
                self.actions.push_back(action);
                true
            }
            None => false,
        }
    }

    fn send_drop_cover(&mut self) {
        use rand::RngExt;
        let Some(consensus) = self.consensus.clone() else {
            return;
        };
        let boxes = consensus.mailboxes();
        if boxes.is_empty() {
            return;
        }
        let provider = boxes[self.rng.random_range(0..boxes.len())].id;
        let Ok(route) = murmur_wire::policy::select_route(&mut self.rng, &consensus, &provider)
        else {
            return;
        };
        let queue = QueueId::random(&mut self.rng);
        self.stats.drop_cover_sent += 1;
        self.actions
            .push_back(Action::SendDropCover { route, queue });
    }

    fn send_loop(&mut self, at: Time) {
        let Some(consensus) = self.consensus.clone() else {
            return;
        };
        let Ok(route) =
            murmur_wire::policy::select_route(&mut self.rng, &consensus, &self.cfg.home)
        else {
            return;
        };
        let id = MessageId::random(&mut self.rng);
        let mixes = route.hops()[..MIX_LAYERS].iter().map(|h| h.id).collect();
        self.loops.push_back(id);
        self.loop_routes.insert(id, (mixes, at));
        while self.loop_routes.len() > MAX_OUTSTANDING_LOOPS {
            if let Some(old) = self.loops.pop_front() {
                self.loop_routes.remove(&old);
            }
        }
        while self
            .loops
            .front()
            .is_some_and(|l| !self.loop_routes.contains_key(l))
        {
            self.loops.pop_front();
        }
        self.stats.loop_cover_sent += 1;
        self.actions.push_back(Action::SendLoop { route, id });
    }
}
