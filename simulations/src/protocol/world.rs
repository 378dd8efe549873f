//! The protocol model's world: client cores, mixes, providers and the links
//! between them, on virtual time.
//!
//! The world decides nothing the protocol decides. Each client is a
//! [`Core`]; the world feeds it events (a message to send, a timer, the
//! result of a fetch) and carries out its actions: a packet crosses each
//! link (the link latency) and each mix of its route (held for the delay
//! the route carries, as a real mix holds it for the delay in its Sphinx
//! header), reaches its provider, which stores a deposit and sends its
//! acknowledgement back along the SURB's route; a fetch takes a round trip.
//! Dead mixes drop whatever reaches them; any packet may be lost.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use murmur_client_core::{Action, Config, Core, Destination, EntryOutcome, MessageState};
use murmur_wire::packet::MIX_LAYERS;
use murmur_wire::{MessageId, QueueId, Route, SurbId};
use rand::{Rng, RngExt};
use rand_chacha::ChaCha8Rng;

use super::network::Network;
use super::params::ProtocolParams;
use crate::error::{Error, Result};
use crate::heap::Heap;
use crate::params::LinkDelay;

/// A client's queues at its home provider, by kind.
const INBOX: usize = 0;
const ACKS: usize = 1;
const LOOPS: usize = 2;
const KINDS: usize = 3;

/// What a provider stores in a queue.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Entry {
    Fragment {
        message: MessageId,
        index: u32,
        count: u32,
    },
    Ack(SurbId),
    Loop(MessageId),
}

/// A route as the world carries it: the world's numbers of its mixes and
/// provider, and the delay each mix holds the packet for.
#[derive(Clone, Copy, Debug)]
struct Path {
    mixes: [u32; MIX_LAYERS],
    delays: [Duration; MIX_LAYERS],
    provider: u32,
}

/// What a packet carries, as far as its provider is concerned.
#[derive(Clone, Debug)]
enum Payload {
    /// A fragment to store in `queue`, acknowledged along `ack` into the
    /// ack queue of `sender`.
    Deposit {
        queue: QueueId,
        message: MessageId,
        index: u32,
        count: u32,
        surb: SurbId,
        sender: u32,
        ack: Path,
    },
    /// Drop cover: discarded by the provider.
    Drop,
    /// Loop cover back to `owner`'s loop queue.
    Loop { owner: u32, id: MessageId },
    /// An acknowledgement (a SURB reply) into `owner`'s ack queue.
    Ack { owner: u32, surb: SurbId },
}

#[derive(Clone, Debug)]
struct Packet {
    path: Path,
    payload: Payload,
}

/// An event. Small and `Copy`: the queue moves these around; what a fetch
/// answer or a delete carries waits in a slab.
#[derive(Clone, Copy, Debug)]
enum Ev {
    /// A client comes online.
    Start(u32),
    /// A client's core asked to be woken now.
    Wake(u32),
    /// A client creates a message.
    Create(u32),
    /// A packet (in the packet slab) reaches its provider.
    Arrive(u32),
    /// A fetch request reaches the provider of queue `queue`.
    FetchAtProvider { queue: u32, after: u64 },
    /// A fetch answer (in the reply slab) reaches the queue's owner.
    FetchReply(u32),
    /// A delete request (in the reply slab) reaches the provider.
    DeleteAtProvider(u32),
}

/// What a fetch answer or a delete request carries.
#[derive(Debug)]
enum Carried {
    Entries {
        queue: u32,
        entries: Vec<(u64, Entry)>,
        more: bool,
    },
    Delete {
        queue: u32,
        seqs: Vec<u64>,
    },
}

/// An event at `at` (nanoseconds of virtual time); events at the same
/// instant run in the order they were scheduled (`seq`), so a run is a
/// function of its parameters.
#[derive(Clone, Copy, Debug)]
struct Scheduled {
    at: u64,
    seq: u64,
    ev: Ev,
}

impl crate::heap::Timed for Scheduled {
    #[inline]
    fn key(&self) -> (u64, u64) {
        (self.at, self.seq)
    }
}

/// Values by `u32` handle, reused through a free list.
#[derive(Debug)]
struct Slab<T> {
    items: Vec<Option<T>>,
    free: Vec<u32>,
}

impl<T> Default for Slab<T> {
    fn default() -> Self {
        Self {
            items: Vec::new(),
            free: Vec::new(),
        }
    }
}

impl<T> Slab<T> {
    fn insert(&mut self, value: T) -> u32 {
        match self.free.pop() {
            Some(i) => {
                self.items[i as usize] = Some(value);
                i
            }
            None => {
                self.items.push(Some(value));
                (self.items.len() - 1) as u32
            }
        }
    }

    fn take(&mut self, i: u32) -> Option<T> {
        let v = self.items.get_mut(i as usize)?.take()?;
        self.free.push(i);
        Some(v)
    }
}

fn ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Packets a client sent, by kind (counted by the world from the actions).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Sent {
    pub(crate) real: u64,
    pub(crate) retries: u64,
    pub(crate) drop: u64,
    pub(crate) loops: u64,
}

pub(crate) struct Client {
    pub(crate) core: Core,
    pub(crate) home: u32,
    queues: [QueueId; KINDS],
    pub(crate) started: Option<Duration>,
    /// The time of the wake event that counts (later ones are stale).
    wake: Option<Duration>,
    pub(crate) sent: Sent,
}

struct StoredQueue {
    owner: u32,
    kind: usize,
    entries: BTreeMap<u64, Entry>,
    next_seq: u64,
}

/// One message, from its creation to its settlement.
#[derive(Clone, Debug)]
pub(crate) struct Msg {
    pub(crate) created: Duration,
    pub(crate) fragments: u32,
    /// When the sender's core reported it delivered (every fragment
    /// acknowledged).
    pub(crate) delivered: Option<Duration>,
    /// When the recipient's core reported it complete.
    pub(crate) completed: Option<Duration>,
    /// When the sender's core gave up on it.
    pub(crate) failed: Option<Duration>,
    /// How often the recipient's core reported it complete.
    pub(crate) completions: u32,
    settled: bool,
}

/// What the network did with packets.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct NetCounters {
    pub(crate) injected: u64,
    pub(crate) lost: u64,
    pub(crate) dropped_at_dead: u64,
    pub(crate) at_providers: u64,
    pub(crate) deposits: u64,
    pub(crate) duplicate_deposits: u64,
    pub(crate) acks_sent: u64,
    pub(crate) drop_discarded: u64,
    pub(crate) misrouted: u64,
    pub(crate) fetches: u64,
    pub(crate) fragments_acked: u64,
    pub(crate) partials_discarded: u64,
    pub(crate) unknown_completions: u64,
}

enum Link {
    Fixed(Duration),
    Uniform(u64, u64),
}

pub(crate) struct World {
    pub(crate) p: ProtocolParams,
    pub(crate) net: Network,
    rng: ChaCha8Rng,
    pub(crate) now: Duration,
    seq: u64,
    events: Heap<Scheduled>,
    pub(crate) clients: Vec<Client>,
    queues: Vec<StoredQueue>,
    queue_index: HashMap<QueueId, u32>,
    pub(crate) dead: Vec<bool>,
    packets: Slab<Packet>,
    carried: Slab<Carried>,
    /// The providers' dedup records: (queue, message, fragment) stored once.
    deposited: HashSet<(u32, MessageId, u32)>,
    pub(crate) messages: HashMap<MessageId, Msg>,
    /// Message ids in creation order (the report walks them in this order).
    pub(crate) order: Vec<MessageId>,
    /// Messages created and not settled yet.
    open: u64,
    pub(crate) traversals: Vec<u64>,
    pub(crate) dropped: Vec<u64>,
    pub(crate) counters: NetCounters,
    pub(crate) events_run: u64,
    link: Link,
    end: Duration,
    hard_end: Duration,
    fetch_half: Duration,
}

fn model_error(reason: &str) -> Error {
    Error::Model {
        reason: reason.to_owned(),
    }
}

impl World {
    /// A world for `p`: its network, clients and first events.
    pub(crate) fn new(p: &ProtocolParams, mut rng: ChaCha8Rng, drain: Duration) -> Result<Self> {
        let net = Network::build(p, &mut rng)?;
        let mut dead = vec![false; net.mixes.len()];
        for i in rand::seq::index::sample(&mut rng, net.mixes.len(), p.dead_count()) {
            dead[i] = true;
        }
        let link = match p.link_delay {
            LinkDelay::Fixed(d) => Link::Fixed(Duration::from_secs_f64(d)),
            LinkDelay::Uniform { lo, hi } => Link::Uniform(
                Duration::from_secs_f64(lo).as_nanos() as u64,
                Duration::from_secs_f64(hi).as_nanos() as u64,
            ),
        };
        let end = Duration::from_secs_f64(p.duration);
        let mut world = World {
            p: p.clone(),
            rng,
            now: Duration::ZERO,
            seq: 0,
            events: Heap::default(),
            clients: Vec::with_capacity(p.clients),
            queues: Vec::with_capacity(p.clients * KINDS),
            queue_index: HashMap::with_capacity(p.clients * KINDS),
            dead,
            packets: Slab::default(),
            carried: Slab::default(),
            deposited: HashSet::new(),
            messages: HashMap::new(),
            order: Vec::new(),
            open: 0,
            traversals: vec![0; net.mixes.len()],
            dropped: vec![0; net.mixes.len()],
            counters: NetCounters::default(),
            events_run: 0,
            link,
            end,
            hard_end: end.saturating_add(drain),
            fetch_half: Duration::from_secs_f64(p.fetch_rtt / 2.0),
            net,
        };
        let interval = p.fetch_interval_duration();
        for c in 0..p.clients {
            let home = (c % p.providers) as u32;
            let mut queues = [QueueId::from_bytes([0; 32]); KINDS];
            for (kind, q) in queues.iter_mut().enumerate() {
                *q = QueueId::random(&mut world.rng);
                world.queue_index.insert(*q, world.queues.len() as u32);
                world.queues.push(StoredQueue {
                    owner: c as u32,
                    kind,
                    entries: BTreeMap::new(),
                    next_seq: 1,
                });
            }
            let mut cfg = Config::new(
                world.net.providers[home as usize],
                queues[ACKS],
                queues[LOOPS],
            );
            cfg.max_tries = p.max_tries;
            cfg.fetch_interval = interval;
            cfg.ack_timeout = p.ack_timeout.map(Duration::from_secs_f64);
            let mut seed = [0u8; 32];
            world.rng.fill_bytes(&mut seed);
            world.clients.push(Client {
                core: Core::new(cfg, seed),
                home,
                queues,
                started: None,
                wake: None,
                sent: Sent::default(),
            });
            // Clients come online at random moments of the first fetch
            // interval, so their fetches are not in lockstep.
            let at = Duration::from_secs_f64(world.rng.random::<f64>() * p.fetch_interval);
            world.push(at, Ev::Start(c as u32));
        }
        Ok(world)
    }

    fn push(&mut self, at: Duration, ev: Ev) {
        self.seq += 1;
        self.events.push(Scheduled {
            at: ns(at),
            seq: self.seq,
            ev,
        });
    }

    /// Runs until every message created before `duration` is settled (or
    /// the drain time runs out).
    pub(crate) fn run(&mut self) -> Result<()> {
        let (end, hard_end) = (ns(self.end), ns(self.hard_end));
        while let Some(s) = self.events.pop() {
            if s.at > hard_end || (s.at >= end && self.open == 0) {
                self.now = self.now.max(Duration::from_nanos(end.min(s.at)));
                break;
            }
            self.now = Duration::from_nanos(s.at);
            self.events_run += 1;
            match s.ev {
                Ev::Start(c) => self.start(c)?,
                Ev::Wake(c) => self.wake(c)?,
                Ev::Create(c) => self.create(c)?,
                Ev::Arrive(p) => self.arrive(p)?,
                Ev::FetchAtProvider { queue, after } => self.fetch_at_provider(queue, after),
                Ev::FetchReply(i) => match self.carried.take(i) {
                    Some(Carried::Entries {
                        queue,
                        entries,
                        more,
                    }) => self.fetch_reply(queue, entries, more)?,
                    _ => return Err(model_error("a fetch answer that does not exist")),
                },
                Ev::DeleteAtProvider(i) => match self.carried.take(i) {
                    Some(Carried::Delete { queue, seqs }) => {
                        if let Some(q) = self.queues.get_mut(queue as usize) {
                            for s in seqs {
                                q.entries.remove(&s);
                            }
                        }
                    }
                    _ => return Err(model_error("a delete that does not exist")),
                },
            }
        }
        Ok(())
    }

    /// Messages not settled when the run stopped.
    pub(crate) fn unsettled(&self) -> u64 {
        self.open
    }

    fn client(&mut self, c: u32) -> Result<&mut Client> {
        self.clients
            .get_mut(c as usize)
            .ok_or_else(|| model_error("an event for a client that does not exist"))
    }

    fn start(&mut self, c: u32) -> Result<()> {
        let now = self.now;
        let consensus = self.net.consensus.clone();
        let cl = self.client(c)?;
        cl.started = Some(now);
        cl.core.set_consensus(consensus, now);
        let inbox = cl.queues[INBOX];
        cl.core.set_inboxes(&[inbox], now);
        self.schedule_create(c, now);
        self.after_core(c, false)
    }

    fn schedule_create(&mut self, c: u32, from: Duration) {
        if let Some(d) = murmur_wire::policy::next_poisson_interval(&mut self.rng, self.p.rate)
            && let Some(at) = from.checked_add(d)
            && at < self.end
        {
            self.push(at, Ev::Create(c));
        }
    }

    fn create(&mut self, c: u32) -> Result<()> {
        let now = self.now;
        let n = self.clients.len();
        let mut to = self.rng.random_range(0..n - 1);
        if to >= c as usize {
            to += 1;
        }
        let dest = Destination {
            provider: self.net.providers[self.clients[to].home as usize],
            queue: self.clients[to].queues[INBOX],
        };
        let message = MessageId::random(&mut self.rng);
        let total = self.p.fragments;
        self.messages.insert(
            message,
            Msg {
                created: now,
                fragments: total,
                delivered: None,
                completed: None,
                failed: None,
                completions: 0,
                settled: false,
            },
        );
        self.order.push(message);
        self.open += 1;
        let pending: Vec<u32> = (0..total).collect();
        self.client(c)?
            .core
            .queue_message(message, dest, total, &pending, now);
        self.schedule_create(c, now);
        self.after_core(c, false)
    }

    fn wake(&mut self, c: u32) -> Result<()> {
        let now = self.now;
        let cl = self.client(c)?;
        if cl.wake != Some(now) {
            return Ok(()); // superseded by an earlier wake
        }
        cl.wake = None;
        cl.core.handle_timeout(now);
        self.after_core(c, true)
    }

    /// Carries out client `c`'s actions, then schedules its next wake.
    /// After `handle_timeout`, a core due again at once would spin the
    /// world forever: that is refused as a bug.
    fn after_core(&mut self, c: u32, handled_timeout: bool) -> Result<()> {
        while let Some(action) = self.client(c)?.core.poll_action() {
            self.act(c, action)?;
        }
        let now = self.now;
        let cl = self.client(c)?;
        let Some(at) = cl.core.poll_timeout() else {
            return Ok(());
        };
        if handled_timeout && at <= now {
            return Err(model_error(
                "a client core was due again at once after handling its timeouts",
            ));
        }
        let at = at.max(now);
        if cl.wake.is_none_or(|w| at < w) {
            cl.wake = Some(at);
            self.push(at, Ev::Wake(c));
        }
        Ok(())
    }

    fn act(&mut self, c: u32, action: Action) -> Result<()> {
        let now = self.now;
        match action {
            Action::SendReal {
                fragment,
                dest,
                route,
                ack_route,
                surb,
                first_try,
            } => {
                let cl = self.client(c)?;
                if first_try {
                    cl.sent.real += 1;
                } else {
                    cl.sent.retries += 1;
                }
                let count = self
                    .messages
                    .get(&fragment.message)
                    .map(|m| m.fragments)
                    .ok_or_else(|| model_error("a try of a message nobody created"))?;
                let packet = Packet {
                    path: self.path(&route)?,
                    payload: Payload::Deposit {
                        queue: dest.queue,
                        message: fragment.message,
                        index: fragment.index,
                        count,
                        surb,
                        sender: c,
                        ack: self.path(&ack_route)?,
                    },
                };
                self.inject(packet);
            }
            Action::SendDropCover { route, .. } => {
                self.client(c)?.sent.drop += 1;
                let path = self.path(&route)?;
                self.inject(Packet {
                    path,
                    payload: Payload::Drop,
                });
            }
            Action::SendLoop { route, id } => {
                self.client(c)?.sent.loops += 1;
                let path = self.path(&route)?;
                self.inject(Packet {
                    path,
                    payload: Payload::Loop { owner: c, id },
                });
            }
            Action::FragmentAcked { .. } => self.counters.fragments_acked += 1,
            Action::Progress { message, state, .. } => {
                if let Some(m) = self.messages.get_mut(&message) {
                    match state {
                        MessageState::Delivered => {
                            m.delivered.get_or_insert(now);
                        }
                        MessageState::Failed => {
                            m.failed.get_or_insert(now);
                        }
                        MessageState::Sending => {}
                    }
                }
                self.settle(&message);
            }
            Action::ForgetSurbs { .. } => {}
            Action::Fetch { queue, after } => {
                let q = self.own_queue(c, &queue)?;
                self.counters.fetches += 1;
                self.push(
                    now + self.fetch_half,
                    Ev::FetchAtProvider { queue: q, after },
                );
            }
            Action::Delete { queue, seqs } => {
                let q = self.own_queue(c, &queue)?;
                let i = self.carried.insert(Carried::Delete { queue: q, seqs });
                self.push(now + self.fetch_half, Ev::DeleteAtProvider(i));
            }
            Action::Complete { message, .. } => {
                match self.messages.get_mut(&message) {
                    Some(m) => {
                        m.completions += 1;
                        m.completed.get_or_insert(now);
                    }
                    None => self.counters.unknown_completions += 1,
                }
                self.settle(&message);
            }
            Action::DiscardPartial { .. } => self.counters.partials_discarded += 1,
        }
        Ok(())
    }

    /// Marks `message` settled once its sender knows its fate and, if it
    /// was delivered, its recipient has it.
    fn settle(&mut self, message: &MessageId) {
        if let Some(m) = self.messages.get_mut(message)
            && !m.settled
            && (m.failed.is_some() || (m.delivered.is_some() && m.completed.is_some()))
        {
            m.settled = true;
            self.open -= 1;
        }
    }

    /// The world's number of client `c`'s queue `queue`.
    fn own_queue(&self, c: u32, queue: &QueueId) -> Result<u32> {
        self.queue_index
            .get(queue)
            .copied()
            .filter(|q| self.queues[*q as usize].owner == c)
            .ok_or_else(|| model_error("a core named a queue that is not its own"))
    }

    fn path(&self, route: &Route) -> Result<Path> {
        let hops = route.hops();
        let delays = route.delays();
        if hops.len() != MIX_LAYERS + 1 || delays.len() != MIX_LAYERS + 1 {
            return Err(model_error(
                "a route without one mix per layer and a provider",
            ));
        }
        let mut mixes = [0u32; MIX_LAYERS];
        let mut hop_delays = [Duration::ZERO; MIX_LAYERS];
        for i in 0..MIX_LAYERS {
            mixes[i] = self
                .net
                .mix(&hops[i].id)
                .ok_or_else(|| model_error("a route through a node that is not a mix"))?;
            hop_delays[i] = delays[i];
        }
        let provider = self
            .net
            .provider(&hops[MIX_LAYERS].id)
            .ok_or_else(|| model_error("a route that does not end at a provider"))?;
        Ok(Path {
            mixes,
            delays: hop_delays,
            provider,
        })
    }

    fn link(&mut self) -> Duration {
        match self.link {
            Link::Fixed(d) => d,
            Link::Uniform(lo, hi) => Duration::from_nanos(self.rng.random_range(lo..=hi)),
        }
    }

    /// Puts a packet on its first link. A mix holds each packet for the
    /// delay its route carries, independently of every other packet (no
    /// capacity, no batching), so the packet's whole crossing is known
    /// now: it reaches its provider after its links and those delays,
    /// unless it is lost or a dead mix on its route drops it. One event per
    /// packet rather than one per hop: the same times, half the events.
    fn inject(&mut self, packet: Packet) {
        self.counters.injected += 1;
        if self.p.loss > 0.0 && self.rng.random_bool(self.p.loss) {
            self.counters.lost += 1;
            return;
        }
        let mut at = self.now;
        for hop in 0..MIX_LAYERS {
            at += self.link();
            let mix = packet.path.mixes[hop] as usize;
            if self.dead[mix] {
                self.dropped[mix] += 1;
                self.counters.dropped_at_dead += 1;
                return;
            }
            self.traversals[mix] += 1;
            at += packet.path.delays[hop];
        }
        at += self.link();
        let i = self.packets.insert(packet);
        self.push(at, Ev::Arrive(i));
    }

    fn arrive(&mut self, i: u32) -> Result<()> {
        let packet = self
            .packets
            .take(i)
            .ok_or_else(|| model_error("an arrival of a packet that does not exist"))?;
        self.counters.at_providers += 1;
        self.at_provider(packet);
        Ok(())
    }

    /// The provider at the end of `packet`'s path handles it.
    fn at_provider(&mut self, packet: Packet) {
        let provider = packet.path.provider;
        match packet.payload {
            Payload::Deposit {
                queue,
                message,
                index,
                count,
                surb,
                sender,
                ack,
            } => {
                let Some(q) = self.queue_at(&queue, provider, INBOX) else {
                    // Unknown queue: dropped, not acknowledged.
                    self.counters.misrouted += 1;
                    return;
                };
                if self.deposited.insert((q, message, index)) {
                    self.counters.deposits += 1;
                    self.store(
                        q,
                        Entry::Fragment {
                            message,
                            index,
                            count,
                        },
                    );
                } else {
                    self.counters.duplicate_deposits += 1;
                }
                // Durable (or a duplicate): acknowledged along the SURB.
                self.counters.acks_sent += 1;
                self.inject(Packet {
                    path: ack,
                    payload: Payload::Ack {
                        owner: sender,
                        surb,
                    },
                });
            }
            Payload::Drop => self.counters.drop_discarded += 1,
            Payload::Loop { owner, id } => self.store_for(owner, LOOPS, provider, Entry::Loop(id)),
            Payload::Ack { owner, surb } => self.store_for(owner, ACKS, provider, Entry::Ack(surb)),
        }
    }

    /// Queue `queue` if provider `provider` holds it and it is of `kind`.
    fn queue_at(&self, queue: &QueueId, provider: u32, kind: usize) -> Option<u32> {
        let q = *self.queue_index.get(queue)?;
        let sq = self.queues.get(q as usize)?;
        let home = self.clients.get(sq.owner as usize)?.home;
        (sq.kind == kind && home == provider).then_some(q)
    }

    fn store_for(&mut self, owner: u32, kind: usize, provider: u32, entry: Entry) {
        let Some(cl) = self.clients.get(owner as usize) else {
            self.counters.misrouted += 1;
            return;
        };
        let queue = cl.queues[kind];
        match self.queue_at(&queue, provider, kind) {
            Some(q) => self.store(q, entry),
            None => self.counters.misrouted += 1,
        }
    }

    fn store(&mut self, q: u32, entry: Entry) {
        if let Some(sq) = self.queues.get_mut(q as usize) {
            let seq = sq.next_seq;
            sq.next_seq += 1;
            sq.entries.insert(seq, entry);
        }
    }

    fn fetch_at_provider(&mut self, q: u32, after: u64) {
        let page = self.p.page();
        let mut entries: Vec<(u64, Entry)> = self
            .queues
            .get(q as usize)
            .map(|sq| {
                sq.entries
                    .range(after.saturating_add(1)..)
                    .take(page + 1)
                    .map(|(s, e)| (*s, e.clone()))
                    .collect()
            })
            .unwrap_or_default();
        let more = entries.len() > page;
        entries.truncate(page);
        let at = self.now + self.fetch_half;
        let i = self.carried.insert(Carried::Entries {
            queue: q,
            entries,
            more,
        });
        self.push(at, Ev::FetchReply(i));
    }

    /// The owner of queue `q` opens what it fetched and tells its core.
    fn fetch_reply(&mut self, q: u32, entries: Vec<(u64, Entry)>, more: bool) -> Result<()> {
        let now = self.now;
        let (owner, kind) = self
            .queues
            .get(q as usize)
            .map(|sq| (sq.owner, sq.kind))
            .ok_or_else(|| model_error("a fetch of a queue that does not exist"))?;
        let cl = self.client(owner)?;
        let queue = cl.queues[kind];
        let mut outcomes = Vec::with_capacity(entries.len());
        for (seq, entry) in entries {
            let outcome = match (kind, entry) {
                (ACKS, Entry::Ack(surb)) if cl.core.knows_surb(&surb) => {
                    cl.core.on_ack(surb, now);
                    EntryOutcome::Used
                }
                (LOOPS, Entry::Loop(id)) => {
                    cl.core.on_loop_returned(id);
                    EntryOutcome::Used
                }
                (
                    INBOX,
                    Entry::Fragment {
                        message,
                        index,
                        count,
                    },
                ) => match cl.core.on_fragment(queue, message, index, count, now) {
                    Ok(()) => EntryOutcome::Used,
                    Err(_) => EntryOutcome::Unopened,
                },
                // An acknowledgement for a try the core forgot (another
                // try's came first): its recovery material is gone.
                _ => EntryOutcome::Unopened,
            };
            outcomes.push((seq, outcome));
        }
        cl.core.on_fetched(queue, &outcomes, more, now);
        self.after_core(owner, false)
    }
}
