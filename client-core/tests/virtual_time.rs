//! The client core in virtual time: two cores (a sender and a receiver) and
//! a toy network of mixes and one provider that keeps queues, acknowledges
//! deposits and loses packets through dead mixes. No sockets, no clock,
//! no crypto: only the core's decisions are under test.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use murmur_client_core::{Action, Config, Core, Destination, EntryOutcome, MessageState};
use murmur_wire::{MessageId, NodeId, QueueId, Route, SurbId, VerifiedConsensus};

mod common;
use common::{consensus, qid};

#[derive(Clone, Debug, PartialEq, Eq)]
enum Entry {
    Fragment {
        message: MessageId,
        index: u32,
        count: u32,
    },
    Ack(SurbId),
    Loop(MessageId),
    Garbage,
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Arrival {
    /// A deposit reaches the provider; its acknowledgement goes back along
    /// `ack_alive` (false: lost on the way).
    Deposit {
        queue: [u8; 32],
        message: [u8; 16],
        index: u32,
        count: u32,
        surb: [u8; 16],
        ack_alive: bool,
    },
    Ack {
        surb: [u8; 16],
    },
    Loop {
        id: [u8; 16],
    },
}

struct Peer {
    core: Core,
    acks: QueueId,
    loops: QueueId,
    /// Fetches answered, per queue.
    fetches: HashMap<QueueId, u64>,
    /// Entries reported unopened.
    unopened: Vec<(QueueId, u64)>,
    /// Entries whose storage "fails" once (NotStored), by queue and seq.
    fail_store_once: HashSet<(QueueId, u64)>,
    completed: Vec<(QueueId, MessageId, Duration)>,
    progress: Vec<(MessageId, u32, u32, MessageState, Duration)>,
    forgotten: usize,
    discarded: Vec<MessageId>,
    sent: Sent,
    log: Vec<String>,
}

#[derive(Default, Debug, Clone, Copy, PartialEq, Eq)]
struct Sent {
    real: u64,
    retries: u64,
    drop: u64,
    loops: u64,
}

struct World {
    now: Duration,
    cons: Arc<VerifiedConsensus>,
    peers: Vec<Peer>,
    queues: HashMap<QueueId, BTreeMap<u64, Entry>>,
    next_seq: u64,
    dead: HashSet<NodeId>,
    /// (when, order, owner of the ack queue / loop queue, what)
    flight: BinaryHeap<Reverse<(Duration, u64, usize, Arrival)>>,
    order: u64,
    hop: Duration,
    page: usize,
}

impl World {
    fn new(cons: Arc<VerifiedConsensus>, peers: usize, tweak: impl Fn(&mut Config)) -> Self {
        let provider = cons.mailboxes()[0].id;
        let mut w = World {
            now: Duration::ZERO,
            cons: cons.clone(),
            peers: Vec::new(),
            queues: HashMap::new(),
            next_seq: 1,
            dead: HashSet::new(),
            flight: BinaryHeap::new(),
            order: 0,
            hop: Duration::from_millis(100),
            page: 8,
        };
        for p in 0..peers {
            let (acks, loops) = (qid(100 + p as u8 * 2), qid(101 + p as u8 * 2));
            let mut cfg = Config::new(provider, acks, loops);
            cfg.fetch_interval = Duration::from_millis(500);
            tweak(&mut cfg);
            let mut core = Core::new(cfg, [p as u8 + 1; 32]);
            core.set_consensus(cons.clone(), Duration::ZERO);
            core.set_inboxes(&[qid(p as u8 + 1)], Duration::ZERO);
            w.queues.insert(acks, BTreeMap::new());
            w.queues.insert(loops, BTreeMap::new());
            w.queues.insert(qid(p as u8 + 1), BTreeMap::new());
            w.peers.push(Peer {
                core,
                acks,
                loops,
                fetches: HashMap::new(),
                unopened: Vec::new(),
                fail_store_once: HashSet::new(),
                completed: Vec::new(),
                progress: Vec::new(),
                forgotten: 0,
                discarded: Vec::new(),
                sent: Sent::default(),
                log: Vec::new(),
            });
        }
        w
    }

    fn provider(&self) -> NodeId {
        self.cons.mailboxes()[0].id
    }

    fn alive(&self, route: &Route) -> bool {
        route.hops().iter().all(|h| !self.dead.contains(&h.id))
    }

    fn put(&mut self, queue: QueueId, entry: Entry) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.queues.entry(queue).or_default().insert(seq, entry);
        seq
    }

    fn fly(&mut self, at: Duration, owner: usize, what: Arrival) {
        self.order += 1;
        self.flight.push(Reverse((at, self.order, owner, what)));
    }

    /// Runs until `until` (virtual time).
    fn run(&mut self, until: Duration) {
        loop {
            self.drain();
            let next_core = self
                .peers
                .iter()
                .filter_map(|p| p.core.poll_timeout())
                .min();
            let next_flight = self.flight.peek().map(|Reverse((t, ..))| *t);
            let Some(next) = next_core.into_iter().chain(next_flight).min() else {
                self.now = until;
                return;
            };
            if next > until {
                self.now = until;
                return;
            }
            self.now = self.now.max(next);
            while let Some(Reverse((t, ..))) = self.flight.peek() {
                if *t > self.now {
                    break;
                }
                let Some(Reverse((_, _, owner, what))) = self.flight.pop() else {
                    break;
                };
                self.arrive(owner, what);
            }
            for i in 0..self.peers.len() {
                if self.peers[i]
                    .core
                    .poll_timeout()
                    .is_some_and(|t| t <= self.now)
                {
                    let now = self.now;
                    self.peers[i].core.handle_timeout(now);
                }
            }
        }
    }

    fn arrive(&mut self, owner: usize, what: Arrival) {
        match what {
            Arrival::Deposit {
                queue,
                message,
                index,
                count,
                surb,
                ack_alive,
            } => {
                let queue = QueueId::from_bytes(queue);
                let message = MessageId::from_bytes(message);
                let already = self.queues.get(&queue).is_some_and(|q| {
                    q.values().any(|e| {
                        *e == Entry::Fragment {
                            message,
                            index,
                            count,
                        }
                    })
                });
                if !already {
                    self.put(
                        queue,
                        Entry::Fragment {
                            message,
                            index,
                            count,
                        },
                    );
                }
                if ack_alive {
                    let at = self.now + self.hop * 4;
                    self.fly(at, owner, Arrival::Ack { surb });
                }
            }
            Arrival::Ack { surb } => {
                let q = self.peers[owner].acks;
                self.put(q, Entry::Ack(SurbId::from_bytes(surb)));
            }
            Arrival::Loop { id } => {
                let q = self.peers[owner].loops;
                self.put(q, Entry::Loop(MessageId::from_bytes(id)));
            }
        }
    }

    /// Carries out every pending action of every peer.
    fn drain(&mut self) {
        loop {
            let mut any = false;
            for i in 0..self.peers.len() {
                while let Some(a) = self.peers[i].core.poll_action() {
                    any = true;
                    self.peers[i].log.push(format!("{:?} {a:?}", self.now));
                    self.act(i, a);
                }
            }
            if !any {
                return;
            }
        }
    }

    fn act(&mut self, i: usize, action: Action) {
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
                let p = &mut self.peers[i];
                if first_try {
                    p.sent.real += 1;
                } else {
                    p.sent.retries += 1;
                }
                if self.alive(&route) {
                    let count = self.count_of(i, fragment.message);
                    let ack_alive = self.alive(&ack_route);
                    self.fly(
                        now + self.hop * 4,
                        i,
                        Arrival::Deposit {
                            queue: dest.queue.to_bytes(),
                            message: fragment.message.to_bytes(),
                            index: fragment.index,
                            count,
                            surb: surb.to_bytes(),
                            ack_alive,
                        },
                    );
                }
            }
            Action::SendDropCover { .. } => self.peers[i].sent.drop += 1,
            Action::SendLoop { route, id } => {
                self.peers[i].sent.loops += 1;
                if self.alive(&route) {
                    self.fly(now + self.hop * 4, i, Arrival::Loop { id: id.to_bytes() });
                }
            }
            Action::FragmentAcked { .. } => {}
            Action::Progress {
                message,
                acked,
                total,
                state,
            } => self.peers[i]
                .progress
                .push((message, acked, total, state, now)),
            Action::ForgetSurbs { surbs } => self.peers[i].forgotten += surbs.len(),
            Action::Fetch { queue, after } => self.fetch(i, queue, after),
            Action::Delete { queue, seqs } => {
                if let Some(q) = self.queues.get_mut(&queue) {
                    for s in seqs {
                        q.remove(&s);
                    }
                }
            }
            Action::Complete { queue, message } => {
                self.peers[i].completed.push((queue, message, now))
            }
            Action::DiscardPartial { message, .. } => self.peers[i].discarded.push(message),
        }
    }

    /// The fragment count of a message `i` sends (a real driver reads it
    /// from the fragment's stored body).
    fn count_of(&self, i: usize, message: MessageId) -> u32 {
        self.totals(i).get(&message).copied().unwrap_or(1)
    }

    fn totals(&self, i: usize) -> HashMap<MessageId, u32> {
        TOTALS.with(|t| t.borrow().get(&i).cloned().unwrap_or_default())
    }

    fn fetch(&mut self, i: usize, queue: QueueId, after: u64) {
        let now = self.now;
        *self.peers[i].fetches.entry(queue).or_default() += 1;
        let entries: Vec<(u64, Entry)> = self
            .queues
            .get(&queue)
            .map(|q| {
                q.range(after + 1..)
                    .take(self.page + 1)
                    .map(|(s, e)| (*s, e.clone()))
                    .collect()
            })
            .unwrap_or_default();
        let more = entries.len() > self.page;
        let mut outcomes = Vec::new();
        let p = &mut self.peers[i];
        for (seq, entry) in entries.into_iter().take(self.page) {
            if p.fail_store_once.remove(&(queue, seq)) {
                outcomes.push((seq, EntryOutcome::NotStored));
                break;
            }
            let outcome = match entry {
                Entry::Ack(surb) if queue == p.acks && p.core.knows_surb(&surb) => {
                    p.core.on_ack(surb, now);
                    EntryOutcome::Used
                }
                Entry::Loop(id) if queue == p.loops => {
                    p.core.on_loop_returned(id);
                    EntryOutcome::Used
                }
                Entry::Fragment {
                    message,
                    index,
                    count,
                } => match p.core.on_fragment(queue, message, index, count, now) {
                    Ok(()) => EntryOutcome::Used,
                    Err(_) => EntryOutcome::Unopened,
                },
                _ => EntryOutcome::Unopened,
            };
            if outcome == EntryOutcome::Unopened {
                p.unopened.push((queue, seq));
            }
            outcomes.push((seq, outcome));
        }
        p.core.on_fetched(queue, &outcomes, more, now);
    }

    fn send(&mut self, from: usize, to: usize, message: MessageId, total: u32) {
        TOTALS.with(|t| {
            t.borrow_mut()
                .entry(from)
                .or_default()
                .insert(message, total);
        });
        let dest = Destination {
            provider: self.provider(),
            queue: qid(to as u8 + 1),
        };
        let pending: Vec<u32> = (0..total).collect();
        let now = self.now;
        self.peers[from]
            .core
            .queue_message(message, dest, total, &pending, now);
    }
}

thread_local! {
    static TOTALS: std::cell::RefCell<HashMap<usize, HashMap<MessageId, u32>>> =
        std::cell::RefCell::new(HashMap::new());
}

fn mid(n: u8) -> MessageId {
    MessageId::from_bytes([n; 16])
}

fn final_state(p: &Peer, m: MessageId) -> Option<MessageState> {
    p.progress.iter().rev().find(|x| x.0 == m).map(|x| x.3)
}

#[test]
fn a_message_is_sent_acknowledged_and_completed_once() {
    TOTALS.with(|t| t.borrow_mut().clear());
    let mut w = World::new(consensus(50, 0.0, 0.0), 2, |_| {});
    w.send(0, 1, mid(1), 5);
    w.run(Duration::from_secs(30));
    let (a, b) = (&w.peers[0], &w.peers[1]);
    assert_eq!(final_state(a, mid(1)), Some(MessageState::Delivered));
    assert_eq!(a.sent.real, 5);
    assert_eq!(a.sent.retries, 0, "no loss, no retransmission");
    assert_eq!(b.completed.len(), 1, "completed exactly once");
    assert_eq!(a.core.sending(), 0);
    // Everything used was deleted: only nothing remains at the provider.
    assert!(w.queues.values().all(|q| q.is_empty()), "{:?}", w.queues);
    // Progress counts up one fragment at a time.
    let acked: Vec<u32> = a.progress.iter().map(|p| p.1).collect();
    assert_eq!(acked, vec![1, 2, 3, 4, 5]);
}

#[test]
fn lost_packets_are_retransmitted_on_fresh_routes_and_the_lossy_mix_is_suspected() {
    TOTALS.with(|t| t.borrow_mut().clear());
    let cons = consensus(50, 0.0, 0.0);
    let dead = cons.layers()[1][0].id;
    let mut w = World::new(cons, 2, |c| c.ack_timeout = Some(Duration::from_secs(3)));
    w.dead.insert(dead);
    w.send(0, 1, mid(2), 40);
    // Within the probation after the last loss (PROBATION, 300 s).
    w.run(Duration::from_secs(150));
    let (a, b) = (&w.peers[0], &w.peers[1]);
    assert_eq!(final_state(a, mid(2)), Some(MessageState::Delivered));
    assert!(a.sent.retries > 0, "some tries crossed the dead mix");
    assert_eq!(b.completed.len(), 1);
    assert!(
        a.core.suspected(w.now).contains(&dead),
        "the dead mix is avoided"
    );
    assert!(a.core.blame_of(&dead) >= murmur_wire::policy::SUSPECT_AFTER);
    let alive = w.cons.layers()[1][1].id;
    assert!(!a.core.suspected(w.now).contains(&alive));
}

#[test]
fn a_message_fails_after_its_tries_and_forgets_its_surbs() {
    TOTALS.with(|t| t.borrow_mut().clear());
    let cons = consensus(50, 0.0, 0.0);
    let layer: Vec<NodeId> = cons.layers()[2].iter().map(|n| n.id).collect();
    let mut w = World::new(cons, 2, |c| {
        c.ack_timeout = Some(Duration::from_secs(2));
        c.max_tries = 3;
    });
    w.dead.extend(layer);
    w.send(0, 1, mid(3), 2);
    w.run(Duration::from_secs(600));
    let a = &w.peers[0];
    assert_eq!(final_state(a, mid(3)), Some(MessageState::Failed));
    assert_eq!(a.sent.real + a.sent.retries, 2 * 3, "three tries of each");
    assert_eq!(a.forgotten, 6, "every try's SURB is forgotten");
    assert_eq!(a.core.sending(), 0);
    // Backoff: 2 s, 4 s, 8 s: the failure comes after 14 s and not before.
    let failed_at = a.progress.last().map(|p| p.4).unwrap_or_default();
    assert!(failed_at >= Duration::from_secs(14), "{failed_at:?}");
    assert!(failed_at < Duration::from_secs(16), "{failed_at:?}");
}

#[test]
fn unopened_entries_are_passed_never_deleted_and_not_refetched() {
    TOTALS.with(|t| t.borrow_mut().clear());
    let mut w = World::new(consensus(50, 0.0, 0.0), 1, |_| {});
    let inbox = qid(1);
    let garbage = w.put(inbox, Entry::Garbage);
    w.run(Duration::from_secs(10));
    let p = &w.peers[0];
    assert_eq!(
        p.unopened,
        vec![(inbox, garbage)],
        "reported once, then passed"
    );
    assert!(w.queues[&inbox].contains_key(&garbage), "never deleted");
    assert!(p.fetches[&inbox] >= 10, "fetched every interval");
}

#[test]
fn an_entry_not_stored_is_fetched_again_and_deleted_once_stored() {
    TOTALS.with(|t| t.borrow_mut().clear());
    let mut w = World::new(consensus(50, 0.0, 0.0), 2, |_| {});
    // The first fragment to reach the receiver fails to store once.
    let first_seq = w.next_seq;
    w.peers[1].fail_store_once.insert((qid(2), first_seq));
    w.send(0, 1, mid(4), 3);
    w.run(Duration::from_secs(30));
    assert_eq!(w.peers[1].completed.len(), 1);
    assert!(
        w.peers[1].fail_store_once.is_empty(),
        "the failure happened"
    );
    assert!(
        w.queues[&qid(2)].is_empty(),
        "then it was stored and deleted"
    );
}

#[test]
fn a_full_page_is_followed_at_once_by_the_next() {
    TOTALS.with(|t| t.borrow_mut().clear());
    let mut w = World::new(consensus(50, 0.0, 0.0), 1, |c| {
        c.fetch_interval = Duration::from_secs(60)
    });
    for _ in 0..20 {
        w.put(qid(1), Entry::Garbage);
    }
    w.run(Duration::from_secs(1));
    // 20 entries in pages of 8: three fetches at time zero, not three minutes.
    assert_eq!(w.peers[0].fetches[&qid(1)], 3);
    assert_eq!(w.peers[0].unopened.len(), 20);
}

#[test]
fn a_partial_message_expires() {
    TOTALS.with(|t| t.borrow_mut().clear());
    let mut w = World::new(consensus(50, 0.0, 0.0), 1, |c| {
        c.partial_ttl = Duration::from_secs(60)
    });
    let m = mid(9);
    w.put(
        qid(1),
        Entry::Fragment {
            message: m,
            index: 0,
            count: 3,
        },
    );
    w.put(
        qid(1),
        Entry::Fragment {
            message: m,
            index: 2,
            count: 3,
        },
    );
    w.run(Duration::from_secs(59));
    assert!(w.peers[0].discarded.is_empty());
    w.run(Duration::from_secs(62));
    assert_eq!(w.peers[0].discarded, vec![m]);
    assert!(w.peers[0].completed.is_empty());
}

#[test]
fn fragments_that_do_not_fit_are_refused() {
    let cons = consensus(50, 0.0, 0.0);
    let mut cfg = Config::new(cons.mailboxes()[0].id, qid(100), qid(101));
    cfg.max_fragments = 100;
    let mut core = Core::new(cfg, [1; 32]);
    let (q, m, t) = (qid(1), mid(1), Duration::ZERO);
    assert!(core.on_fragment(q, m, 3, 3, t).is_err(), "index past count");
    assert!(core.on_fragment(q, m, 0, 0, t).is_err(), "zero count");
    assert!(
        core.on_fragment(q, m, 0, 101, t).is_err(),
        "more than the most"
    );
    assert!(core.on_fragment(q, m, 0, 2, t).is_ok());
    assert!(core.check_fragment(&q, &m, 1, 3).is_err(), "count changed");
    assert!(core.on_fragment(q, m, 1, 3, t).is_err(), "count changed");
    assert!(core.on_fragment(q, m, 0, 2, t).is_ok(), "duplicate: fine");
    assert!(core.poll_action().is_none(), "not complete");
    assert!(core.on_fragment(q, m, 1, 2, t).is_ok());
    assert!(matches!(core.poll_action(), Some(Action::Complete { .. })));
}

#[test]
fn cover_streams_follow_the_consensus_rates() {
    TOTALS.with(|t| t.borrow_mut().clear());
    let (rate, loop_rate, secs) = (5.0, 2.0, 2000.0);
    let mut w = World::new(consensus(50, rate, loop_rate), 1, |_| {});
    w.run(Duration::from_secs_f64(secs));
    let p = &w.peers[0];
    let within = |n: u64, lambda: f64| {
        let mean = lambda * secs;
        (n as f64 - mean).abs() < 5.0 * mean.sqrt()
    };
    assert!(
        within(p.sent.drop, rate),
        "drop cover {} at {rate}/s",
        p.sent.drop
    );
    assert!(
        within(p.sent.loops, loop_rate),
        "loops {} at {loop_rate}/s",
        p.sent.loops
    );
    let returned = p.core.stats().loops_returned;
    assert!(
        returned + 10 >= p.sent.loops,
        "loops come back: {returned} of {}",
        p.sent.loops
    );
}

#[test]
fn real_packets_replace_drop_cover_and_keep_the_rate() {
    TOTALS.with(|t| t.borrow_mut().clear());
    let (rate, secs) = (10.0, 300.0);
    let mut w = World::new(consensus(50, rate, 0.0), 2, |_| {});
    w.send(0, 1, mid(5), 200);
    w.run(Duration::from_secs_f64(secs));
    let a = &w.peers[0];
    assert_eq!(final_state(a, mid(5)), Some(MessageState::Delivered));
    let all = a.sent.real + a.sent.retries + a.sent.drop;
    let mean = rate * secs;
    assert!(
        (all as f64 - mean).abs() < 5.0 * mean.sqrt(),
        "{all} packets, expected ~{mean}"
    );
    assert_eq!(a.sent.real, 200);
}

#[test]
fn the_same_seed_and_events_give_the_same_actions() {
    let run = || {
        TOTALS.with(|t| t.borrow_mut().clear());
        let cons = consensus(50, 3.0, 1.0);
        let dead = cons.layers()[0][1].id;
        let mut w = World::new(cons, 2, |c| c.ack_timeout = Some(Duration::from_secs(3)));
        w.dead.insert(dead);
        w.send(0, 1, mid(6), 30);
        w.run(Duration::from_secs(120));
        w.peers.iter().map(|p| p.log.join("\n")).collect::<Vec<_>>()
    };
    let (one, two) = (run(), run());
    assert!(one[0].len() > 1000);
    assert_eq!(one, two);
}

/// A mix avoided for losses is used again, before its probation ends,
/// once one of the client's own loops comes back through it — which is
/// what clears a live mix blamed for a dead neighbour's losses, or a mix
/// that recovered.
#[test]
fn a_returning_loop_clears_a_suspect_mix() {
    TOTALS.with(|t| t.borrow_mut().clear());
    let cons = consensus(50, 0.0, 2.0);
    let flaky = cons.layers()[1][0].id;
    let mut w = World::new(cons, 2, |c| c.ack_timeout = Some(Duration::from_secs(3)));
    w.dead.insert(flaky);
    w.send(0, 1, mid(7), 40);
    w.run(Duration::from_secs(60));
    assert_eq!(
        final_state(&w.peers[0], mid(7)),
        Some(MessageState::Delivered)
    );
    assert!(w.peers[0].core.suspected(w.now).contains(&flaky));
    let returned = w.peers[0].core.stats().loops_returned;
    // It recovers; no try goes through it (it is avoided), but loops do.
    w.dead.remove(&flaky);
    w.run(Duration::from_secs(120));
    let a = &w.peers[0];
    assert!(a.core.stats().loops_returned > returned);
    assert!(
        !a.core.suspected(w.now).contains(&flaky),
        "a loop came back through it, yet it is still avoided"
    );
    assert_eq!(a.core.blame_of(&flaky), 0);
}

/// With the send stream off, a large message goes out as fast as
/// acknowledgements come back: a small window first (slow start), never
/// more than the ceiling.
#[test]
fn a_large_message_is_windowed_when_packets_leave_at_once() {
    TOTALS.with(|t| t.borrow_mut().clear());
    let mut w = World::new(consensus(50, 0.0, 0.0), 2, |c| c.max_in_flight = 100);
    w.send(0, 1, mid(8), 2000);
    w.drain();
    assert_eq!(w.peers[0].sent.real, 32, "slow start");
    // Each acknowledgement lets one more go, and grows the window by one
    // until it reaches the ceiling.
    let mut most = 0;
    while w.now < Duration::from_secs(120) && w.peers[1].completed.is_empty() {
        let t = w.now + Duration::from_millis(100);
        w.run(t);
        let a = &w.peers[0];
        let acked = a.progress.last().map_or(0, |p| p.1) as u64;
        most = most.max(a.sent.real - acked);
    }
    assert_eq!(
        most, 100,
        "the window reaches its ceiling and stays under it"
    );
    w.run(Duration::from_secs(120));
    let a = &w.peers[0];
    assert_eq!(final_state(a, mid(8)), Some(MessageState::Delivered));
    assert_eq!((a.sent.real, a.sent.retries), (2000, 0));
    assert_eq!(w.peers[1].completed.len(), 1);
}
