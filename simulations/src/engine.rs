//! The discrete-event engine: clients, mixes and providers on virtual time,
//! driven by `murmur_wire::policy`.
//!
//! Virtual time is a `u64` of nanoseconds from the start of the run. Events
//! are ordered by (time, sequence number): the sequence number is the order
//! in which they were scheduled, so a run is a pure function of its
//! parameters and seed.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use murmur_wire::policy::{self, ClientSchedule, SendKind, Stream};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::error::{Error, Result};
use crate::params::{LinkDelay, MAX_LAYERS, Params};
use crate::report::{self, Report};

/// "No index" in the slabs' linked lists.
const NONE: u32 = u32::MAX;

/// Targets followed at the same time (one bit each in a mix's mask).
pub const MAX_ACTIVE_TARGETS: usize = 64;

/// Probability mass below this is dropped (and counted as truncated)
/// rather than carried on.
pub const MASS_CUTOFF: f64 = 1e-12;

/// A target (or a per-mix probe) is finished when less than this much of
/// its probability mass is still in the network.
pub const DONE_EPSILON: f64 = 1e-6;

const NS: f64 = 1e9;

fn secs_to_ns(s: f64) -> u64 {
    // Parameters are checked to be finite, non-negative and bounded, so
    // the cast neither saturates nor truncates anything meaningful.
    (s * NS).round() as u64
}

fn duration_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// A client's next event: a send or loop tick of its schedule, or the
    /// creation of a real message, whichever is first (one queue entry per
    /// client keeps the queue small).
    Client,
    /// A packet reaches its next hop (a mix, or its provider).
    Arrive,
    /// A packet leaves the mix it is in.
    Depart,
    /// Record every mix's pool size.
    Sample,
}

/// One scheduled event. Kept small: the heap moves these around.
#[derive(Clone, Copy, Debug)]
struct Event {
    at: u64,
    seq: u64,
    idx: u32,
    kind: Kind,
}

impl crate::heap::Timed for Event {
    /// By time, then by the order in which they were scheduled.
    #[inline]
    fn key(&self) -> (u64, u64) {
        (self.at, self.seq)
    }
}

impl Event {
    /// Whether `self` comes before `other`.
    #[inline]
    fn before(&self, other: &Event) -> bool {
        use crate::heap::Timed as _;
        self.key() < other.key()
    }
}

type Heap = crate::heap::Heap<Event>;

/// The event queue: a heap, plus a FIFO for events that are always
/// scheduled a fixed time ahead (arrivals over fixed-latency links), which
/// are then already in order. Popping takes the earlier of the two heads by
/// (time, sequence), so the order is exactly that of a single heap.
#[derive(Default)]
struct Queue {
    heap: Heap,
    fifo: VecDeque<Event>,
    seq: u64,
}

impl Queue {
    fn push(&mut self, at: u64, kind: Kind, idx: u32) {
        self.seq += 1;
        self.heap.push(Event {
            at,
            seq: self.seq,
            idx,
            kind,
        });
    }

    /// For events scheduled at `now + c` with the same `c` every time.
    fn push_fifo(&mut self, at: u64, kind: Kind, idx: u32) {
        self.seq += 1;
        self.fifo.push_back(Event {
            at,
            seq: self.seq,
            idx,
            kind,
        });
    }

    fn pop(&mut self) -> Option<Event> {
        match (self.heap.peek(), self.fifo.front()) {
            (Some(h), Some(f)) if f.before(h) => self.fifo.pop_front(),
            (Some(_), _) => self.heap.pop(),
            (None, _) => self.fifo.pop_front(),
        }
    }
}

/// What a packet is. The adversary cannot tell these apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    /// A real message created outside the measured window.
    Real,
    /// A real message created inside the measured window.
    Measured,
    /// Drop cover (send stream, nothing was waiting).
    Drop,
    /// Loop cover (back to the sender's own provider).
    Loop,
}

#[derive(Clone, Copy, Debug)]
struct Packet {
    /// When the message was created (real) or the packet sent (cover), ns.
    created: u64,
    /// When the packet left its client, ns.
    sent: u64,
    /// The mix chosen in each layer.
    path: [u16; MAX_LAYERS],
    /// The provider it is delivered to.
    dest: u16,
    /// The next hop: `0..layers` a mix layer, `layers` the provider.
    hop: u8,
    class: Class,
    /// Head of this packet's list of (target, mass) entries.
    mass: u32,
}

/// One (target, probability mass) on a packet.
#[derive(Clone, Copy, Debug)]
struct Entry {
    mass: f64,
    target: u32,
    next: u32,
}

#[derive(Clone, Debug, Default)]
struct Mix {
    /// Packets in the mix now.
    pool: u32,
    compromised: bool,
    /// Target slots with mass in this mix's pool.
    mask: u64,
    /// Time of the last pool change, ns.
    last: u64,
    /// ∫ pool dt over the measured window, packet·ns.
    area: u128,
    /// Arrivals in the measured window.
    arrivals: u64,
    /// The current per-mix probe's mass still in the pool (0: no probe).
    probe_mass: f64,
    /// The current probe's entropy so far, bits.
    probe_h: f64,
    /// Finished probes: count, Σ H, Σ H², min H.
    probes: u64,
    probe_sum: f64,
    probe_sumsq: f64,
    probe_min: f64,
}

#[derive(Clone, Debug)]
struct Target {
    delivered: f64,
    truncated: f64,
    /// −Σ p log₂ p over deliveries so far, bits.
    h: f64,
    slot: u8,
    active: bool,
}

struct Client {
    schedule: ClientSchedule,
    /// When the next real message is created, ns (`u64::MAX`: never).
    next_message: u64,
    /// Creation times of real messages waiting for a send tick.
    outbox: VecDeque<u64>,
    provider: u16,
}

enum Link {
    Fixed(u64),
    Uniform(u64, u64),
}

/// Everything a run collects, handed to [`report`].
pub(crate) struct Collected {
    pub latencies: Vec<u64>,
    pub network_latencies: Vec<u64>,
    pub entropies: Vec<f64>,
    pub targets_started: usize,
    pub targets_unfinished: usize,
    pub max_truncated: f64,
    pub measured_undelivered: u64,
    pub sample_times: Vec<f64>,
    pub samples: Vec<u32>,
    pub mixes: Vec<report::MixCollected>,
    pub counters: report::Counters,
    pub end_time: f64,
}

/// The simulated world.
struct World {
    layers: usize,
    width: usize,
    providers: usize,
    layer_sizes: Vec<usize>,
    mean_delay: Duration,
    max_delay: Duration,
    link: Link,
    rate: f64,
    warm: u64,
    end: u64,
    hard_end: u64,
    interval: u64,
    targets_wanted: usize,
    target_spacing: u64,
    next_target_at: u64,

    rng: ChaCha8Rng,
    queue: Queue,
    now: u64,
    clients: Vec<Client>,
    mixes: Vec<Mix>,
    /// Pool mass per (mix, target slot): `mix * MAX_ACTIVE_TARGETS + slot`.
    masses: Vec<f64>,
    packets: Vec<Packet>,
    free_packets: Vec<u32>,
    entries: Vec<Entry>,
    free_entry: u32,
    targets: Vec<Target>,
    slot_target: [u32; MAX_ACTIVE_TARGETS],
    free_slots: u64,
    active_targets: usize,
    measured_in_flight: u64,

    out: Collected,
}

/// Runs one simulation.
pub fn simulate(params: &Params) -> Result<Report> {
    Ok(simulate_with_samples(params)?.0)
}

/// Raw per-message results of a run, for tests and custom analyses.
#[derive(Clone, Debug, Default)]
pub struct Samples {
    /// End-to-end latency of each measured real message (creation to
    /// delivery), seconds, in delivery order.
    pub latencies: Vec<f64>,
    /// Entropy of each finished target, bits, in finishing order.
    pub entropies: Vec<f64>,
}

/// Runs one simulation and also returns the raw samples behind the report.
pub fn simulate_with_samples(params: &Params) -> Result<(Report, Samples)> {
    params.check()?;
    let started = Instant::now();
    let mut world = World::new(params)?;
    world.run()?;
    let wall = started.elapsed().as_secs_f64();
    let samples = Samples {
        latencies: world
            .out
            .latencies
            .iter()
            .map(|&ns| ns as f64 / NS)
            .collect(),
        entropies: world.out.entropies.clone(),
    };
    let report = report::build(params, world.out, wall);
    Ok((report, samples))
}

impl World {
    fn new(params: &Params) -> Result<Self> {
        let mut rng = ChaCha8Rng::seed_from_u64(params.seed);
        let mixes_n = params.mixes();
        let mut mixes = vec![
            Mix {
                probe_min: f64::INFINITY,
                ..Mix::default()
            };
            mixes_n
        ];
        for i in rand::seq::index::sample(&mut rng, mixes_n, params.compromised_mixes()) {
            mixes[i].compromised = true;
        }
        let link = match params.link_delay {
            LinkDelay::Fixed(d) => Link::Fixed(secs_to_ns(d)),
            LinkDelay::Uniform { lo, hi } => Link::Uniform(secs_to_ns(lo), secs_to_ns(hi)),
        };
        let warm = secs_to_ns(params.warmup);
        let end = secs_to_ns(params.duration);
        let path_time = params.layers as f64 * params.mean_delay
            + (params.layers + 1) as f64 * params.link_delay.max();
        let drain = params.duration.max(100.0 * path_time);
        let hard_end = end.saturating_add(secs_to_ns(drain));
        let target_spacing = if params.targets == 0 {
            u64::MAX
        } else {
            (end - warm) / params.targets as u64
        };
        let mut world = World {
            layers: params.layers,
            width: params.width,
            providers: params.providers,
            layer_sizes: vec![params.width; params.layers],
            mean_delay: params.mean_delay_duration(),
            max_delay: params.max_delay_duration(),
            link,
            rate: params.rate,
            warm,
            end,
            hard_end,
            interval: secs_to_ns(params.sample_interval()).max(1),
            targets_wanted: params.targets,
            target_spacing,
            next_target_at: warm,
            rng,
            queue: Queue::default(),
            now: 0,
            clients: Vec::with_capacity(params.clients),
            mixes,
            masses: vec![0.0; mixes_n * MAX_ACTIVE_TARGETS],
            packets: Vec::new(),
            free_packets: Vec::new(),
            entries: Vec::new(),
            free_entry: NONE,
            targets: Vec::with_capacity(params.targets),
            slot_target: [NONE; MAX_ACTIVE_TARGETS],
            free_slots: u64::MAX,
            active_targets: 0,
            measured_in_flight: 0,
            out: Collected {
                latencies: Vec::new(),
                network_latencies: Vec::new(),
                entropies: Vec::with_capacity(params.targets),
                targets_started: 0,
                targets_unfinished: 0,
                max_truncated: 0.0,
                measured_undelivered: 0,
                sample_times: Vec::new(),
                samples: Vec::new(),
                mixes: Vec::new(),
                counters: report::Counters {
                    delivered_per_provider: vec![0; params.providers],
                    ..report::Counters::default()
                },
                end_time: 0.0,
            },
        };
        for c in 0..params.clients {
            let schedule = ClientSchedule::new(
                &mut world.rng,
                params.cover_rate,
                params.loop_rate,
                Duration::ZERO,
            );
            // Parameters are checked: providers <= u16::MAX + 1 fits after `%`.
            let provider = (c % params.providers) as u16;
            let next_message = policy::next_poisson_interval(&mut world.rng, params.rate)
                .map_or(u64::MAX, duration_ns);
            world.clients.push(Client {
                schedule,
                next_message,
                outbox: VecDeque::new(),
                provider,
            });
            world.schedule_client(c as u32);
        }
        world.queue.push(0, Kind::Sample, 0);
        Ok(world)
    }

    fn run(&mut self) -> Result<()> {
        while let Some(ev) = self.queue.pop() {
            if ev.at >= self.hard_end
                || (ev.at >= self.end && self.measured_in_flight == 0 && self.active_targets == 0)
            {
                break;
            }
            self.now = ev.at;
            self.out.counters.events += 1;
            match ev.kind {
                Kind::Client => self.on_client(ev.idx)?,
                Kind::Arrive => self.on_arrive(ev.idx),
                Kind::Depart => self.on_depart(ev.idx),
                Kind::Sample => self.on_sample(),
            }
        }
        let stop = self.now.max(self.end);
        for m in 0..self.mixes.len() {
            self.account(m, stop);
        }
        self.out.end_time = self.now as f64 / NS;
        self.out.targets_started = self.targets.len();
        self.out.targets_unfinished = self.active_targets;
        self.out.measured_undelivered = self.measured_in_flight;
        self.out.mixes = self
            .mixes
            .iter()
            .enumerate()
            .map(|(i, m)| report::MixCollected {
                layer: i / self.width,
                index: i % self.width,
                compromised: m.compromised,
                area_packet_ns: m.area,
                arrivals: m.arrivals,
                probes: m.probes,
                probe_sum: m.probe_sum,
                probe_sumsq: m.probe_sumsq,
                probe_min: m.probe_min,
            })
            .collect();
        Ok(())
    }

    fn in_window(&self) -> bool {
        self.now >= self.warm && self.now < self.end
    }

    fn link_delay(&mut self) -> u64 {
        match self.link {
            Link::Fixed(d) => d,
            Link::Uniform(lo, hi) => self.rng.random_range(lo..=hi),
        }
    }

    /// Schedules packet `p`'s arrival at its next hop.
    fn schedule_arrival(&mut self, p: u32) {
        let d = self.link_delay();
        let at = self.now.saturating_add(d);
        match self.link {
            Link::Fixed(_) => self.queue.push_fifo(at, Kind::Arrive, p),
            Link::Uniform(..) => self.queue.push(at, Kind::Arrive, p),
        }
    }

    fn next_tick(&self, c: u32) -> u64 {
        self.clients[c as usize]
            .schedule
            .peek()
            .map_or(u64::MAX, |(at, _)| duration_ns(at))
    }

    /// Puts client `c`'s next event (tick or message) on the queue.
    fn schedule_client(&mut self, c: u32) {
        let at = self.next_tick(c).min(self.clients[c as usize].next_message);
        if at != u64::MAX {
            self.queue.push(at, Kind::Client, c);
        }
    }

    fn on_client(&mut self, c: u32) -> Result<()> {
        // A message created at the instant of a tick goes out on that tick.
        let result = if self.clients[c as usize].next_message <= self.next_tick(c) {
            self.on_message(c)
        } else {
            self.on_tick(c)
        };
        self.schedule_client(c);
        result
    }

    fn on_tick(&mut self, c: u32) -> Result<()> {
        let client = &mut self.clients[c as usize];
        let Some((_, stream)) = client.schedule.pop(&mut self.rng) else {
            return Ok(());
        };
        match stream {
            Stream::Send => match policy::on_send_tick(!client.outbox.is_empty()) {
                SendKind::Real => {
                    let created = client.outbox.pop_front().unwrap_or(self.now);
                    let class = self.real_class(created);
                    self.send(c, class, created)
                }
                SendKind::DropCover => self.send(c, Class::Drop, self.now),
            },
            Stream::Loop => self.send(c, Class::Loop, self.now),
        }
    }

    fn real_class(&self, created: u64) -> Class {
        if created >= self.warm && created < self.end {
            Class::Measured
        } else {
            Class::Real
        }
    }

    fn on_message(&mut self, c: u32) -> Result<()> {
        let now = self.now;
        if self.in_window() {
            self.measured_in_flight += 1;
            self.out.counters.messages += 1;
        }
        let client = &mut self.clients[c as usize];
        let immediate = client.schedule.sends_immediately();
        if !immediate {
            client.outbox.push_back(now);
        }
        client.next_message = policy::next_poisson_interval(&mut self.rng, self.rate)
            .map_or(u64::MAX, |d| now.saturating_add(duration_ns(d)));
        if immediate {
            let class = self.real_class(now);
            self.send(c, class, now)?;
        }
        Ok(())
    }

    /// A client puts a packet on its first link.
    fn send(&mut self, c: u32, class: Class, created: u64) -> Result<()> {
        let mut picks = [0usize; MAX_LAYERS];
        let picks = &mut picks[..self.layers];
        policy::choose_per_layer(&mut self.rng, &self.layer_sizes, picks).map_err(Error::Policy)?;
        let mut path = [0u16; MAX_LAYERS];
        for (slot, &pick) in path.iter_mut().zip(picks.iter()) {
            // `pick < width <= u16::MAX + 1` (checked parameters).
            *slot = pick as u16;
        }
        let own = self.clients[c as usize].provider;
        let dest = match class {
            Class::Real | Class::Measured => {
                let n = self.clients.len();
                if n == 1 {
                    own
                } else {
                    let mut r = self.rng.random_range(0..n - 1);
                    if r >= c as usize {
                        r += 1;
                    }
                    self.clients[r].provider
                }
            }
            Class::Drop => self.rng.random_range(0..self.providers) as u16,
            Class::Loop => own,
        };
        let counters = &mut self.out.counters;
        match class {
            Class::Real | Class::Measured => counters.sent_real += 1,
            Class::Drop => counters.sent_drop += 1,
            Class::Loop => counters.sent_loop += 1,
        }
        let packet = Packet {
            created,
            sent: self.now,
            path,
            dest,
            hop: 0,
            class,
            mass: NONE,
        };
        let p = match self.free_packets.pop() {
            Some(p) => {
                self.packets[p as usize] = packet;
                p
            }
            None => {
                self.packets.push(packet);
                (self.packets.len() - 1) as u32
            }
        };
        self.schedule_arrival(p);
        Ok(())
    }

    /// Brings mix `m`'s occupancy integral up to `now`.
    fn account(&mut self, m: usize, now: u64) {
        let mix = &mut self.mixes[m];
        let a = mix.last.max(self.warm);
        let b = now.min(self.end);
        if b > a {
            mix.area += u128::from(mix.pool) * u128::from(b - a);
        }
        mix.last = now;
    }

    fn on_arrive(&mut self, p: u32) {
        let pk = self.packets[p as usize];
        let hop = pk.hop as usize;
        if hop == self.layers {
            self.deliver(p);
            return;
        }
        let m = hop * self.width + pk.path[hop] as usize;
        self.account(m, self.now);
        let in_window = self.in_window();
        {
            let mix = &mut self.mixes[m];
            mix.pool += 1;
            if in_window {
                mix.arrivals += 1;
            }
        }
        if hop == 0 && pk.class != Class::Drop && pk.class != Class::Loop && in_window {
            self.maybe_start_target(p);
        }
        if !self.mixes[m].compromised {
            self.merge_into_pool(p, m);
            let mix = &mut self.mixes[m];
            if in_window && mix.probe_mass == 0.0 {
                mix.probe_mass = 1.0;
                mix.probe_h = 0.0;
            }
        }
        let delay = policy::sample_delay(&mut self.rng, self.mean_delay, self.max_delay);
        self.queue
            .push(self.now.saturating_add(duration_ns(delay)), Kind::Depart, p);
    }

    fn maybe_start_target(&mut self, p: u32) {
        if self.targets.len() >= self.targets_wanted
            || self.now < self.next_target_at
            || self.free_slots == 0
        {
            return;
        }
        let slot = self.free_slots.trailing_zeros() as usize;
        self.free_slots &= !(1u64 << slot);
        let id = self.targets.len() as u32;
        self.slot_target[slot] = id;
        self.targets.push(Target {
            delivered: 0.0,
            truncated: 0.0,
            h: 0.0,
            slot: slot as u8,
            active: true,
        });
        self.active_targets += 1;
        self.next_target_at = self.next_target_at.saturating_add(self.target_spacing);
        self.attach(p, id, 1.0);
    }

    fn attach(&mut self, p: u32, target: u32, mass: f64) {
        let next = self.packets[p as usize].mass;
        let entry = Entry { mass, target, next };
        let e = if self.free_entry == NONE {
            self.entries.push(entry);
            (self.entries.len() - 1) as u32
        } else {
            let e = self.free_entry;
            self.free_entry = self.entries[e as usize].next;
            self.entries[e as usize] = entry;
            e
        };
        self.packets[p as usize].mass = e;
    }

    /// At an honest mix the packet's mass joins the pool's.
    fn merge_into_pool(&mut self, p: u32, m: usize) {
        let mut e = self.packets[p as usize].mass;
        self.packets[p as usize].mass = NONE;
        while e != NONE {
            let Entry { mass, target, next } = self.entries[e as usize];
            let t = &self.targets[target as usize];
            if t.active {
                let slot = t.slot as usize;
                self.masses[m * MAX_ACTIVE_TARGETS + slot] += mass;
                self.mixes[m].mask |= 1u64 << slot;
            }
            self.entries[e as usize].next = self.free_entry;
            self.free_entry = e;
            e = next;
        }
    }

    fn on_depart(&mut self, p: u32) {
        let pk = self.packets[p as usize];
        let hop = pk.hop as usize;
        let m = hop * self.width + pk.path[hop] as usize;
        self.account(m, self.now);
        if !self.mixes[m].compromised {
            self.take_share(p, m);
        }
        self.mixes[m].pool -= 1;
        self.out.counters.traversals += 1;
        self.packets[p as usize].hop += 1;
        self.schedule_arrival(p);
    }

    /// A packet leaves honest mix `m`: it carries `1/pool` of each target's
    /// pool mass (uniform posterior over the pool, see the crate docs).
    fn take_share(&mut self, p: u32, m: usize) {
        let k = f64::from(self.mixes[m].pool);
        let mut mask = self.mixes[m].mask;
        while mask != 0 {
            let slot = mask.trailing_zeros() as usize;
            mask &= mask - 1;
            let i = m * MAX_ACTIVE_TARGETS + slot;
            let pool_mass = self.masses[i];
            let share = pool_mass / k;
            let rest = pool_mass - share;
            let target = self.slot_target[slot];
            if share >= MASS_CUTOFF {
                self.attach(p, target, share);
            } else {
                self.targets[target as usize].truncated += share;
            }
            if rest < MASS_CUTOFF {
                self.masses[i] = 0.0;
                self.mixes[m].mask &= !(1u64 << slot);
                self.targets[target as usize].truncated += rest;
                self.check_done(target);
            } else {
                self.masses[i] = rest;
            }
        }
        let mix = &mut self.mixes[m];
        if mix.probe_mass > 0.0 {
            let share = mix.probe_mass / k;
            mix.probe_h -= share * share.log2();
            mix.probe_mass -= share;
            if mix.probe_mass < DONE_EPSILON {
                let h = mix.probe_h;
                mix.probe_mass = 0.0;
                mix.probes += 1;
                mix.probe_sum += h;
                mix.probe_sumsq += h * h;
                mix.probe_min = mix.probe_min.min(h);
            }
        }
    }

    fn deliver(&mut self, p: u32) {
        let pk = self.packets[p as usize];
        let mut e = pk.mass;
        while e != NONE {
            let Entry { mass, target, next } = self.entries[e as usize];
            let t = &mut self.targets[target as usize];
            if t.active {
                t.delivered += mass;
                t.h -= mass * mass.log2();
                self.check_done(target);
            }
            self.entries[e as usize].next = self.free_entry;
            self.free_entry = e;
            e = next;
        }
        let counters = &mut self.out.counters;
        counters.delivered += 1;
        if let Some(n) = counters.delivered_per_provider.get_mut(pk.dest as usize) {
            *n += 1;
        }
        if pk.class == Class::Measured {
            self.measured_in_flight -= 1;
            self.out.latencies.push(self.now - pk.created);
            self.out.network_latencies.push(self.now - pk.sent);
        }
        self.free_packets.push(p);
    }

    fn check_done(&mut self, target: u32) {
        let t = &mut self.targets[target as usize];
        if !t.active || 1.0 - t.delivered - t.truncated >= DONE_EPSILON {
            return;
        }
        t.active = false;
        let slot = t.slot as usize;
        self.out.entropies.push(t.h);
        self.out.max_truncated = self.out.max_truncated.max(t.truncated);
        self.active_targets -= 1;
        self.slot_target[slot] = NONE;
        self.free_slots |= 1u64 << slot;
        for (m, mix) in self.mixes.iter_mut().enumerate() {
            mix.mask &= !(1u64 << slot);
            self.masses[m * MAX_ACTIVE_TARGETS + slot] = 0.0;
        }
    }

    fn on_sample(&mut self) {
        self.out.sample_times.push(self.now as f64 / NS);
        self.out.samples.extend(self.mixes.iter().map(|m| m.pool));
        let next = self.now.saturating_add(self.interval);
        if next < self.end {
            self.queue.push(next, Kind::Sample, 0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_pops_in_time_then_schedule_order_across_heap_and_fifo() {
        let mut q = Queue::default();
        q.push(5, Kind::Client, 1);
        q.push_fifo(3, Kind::Arrive, 2);
        q.push(3, Kind::Depart, 3);
        q.push_fifo(5, Kind::Arrive, 4);
        q.push(1, Kind::Client, 5);
        let order: Vec<u32> = std::iter::from_fn(|| q.pop()).map(|e| e.idx).collect();
        assert_eq!(order, vec![5, 2, 3, 1, 4]);
    }

    #[test]
    fn heap_sorts_like_a_sort() {
        use rand::RngExt;
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let mut q = Queue::default();
        let mut want = Vec::new();
        for i in 0..5000u32 {
            let at = rng.random_range(0..500u64);
            q.push(at, Kind::Depart, i);
            want.push((at, i));
        }
        want.sort();
        let got: Vec<(u64, u32)> = std::iter::from_fn(|| q.pop())
            .map(|e| (e.at, e.idx))
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn event_stays_small() {
        assert!(std::mem::size_of::<Event>() <= 24);
    }
}
