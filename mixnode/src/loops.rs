//! Mix loop cover: a node in layer `k` sends, at the consensus
//! `mix_loop_rate` (a Poisson process), a three-hop loop through one random
//! node of layer `k+1`, one of layer `k+2` (mod 3), and back to itself as
//! the final hop, carrying [`FinalPayload::LoopCover`]. The node's own
//! [`FinalHop`] ([`MixFinalHop`]) recognises loops that come back.
//!
//! Loops are cover traffic (they make a mix's output look busier than its
//! input) and a measurement: a loop that does not return before its
//! deadline (the sum of its hop delays plus `timeout_slack_ms`) is lost, and
//! is counted against both peers it went through. A dead or lossy peer shows
//! a loss ratio (`loops_lost / loops_sent` for its label) near 1; peers that
//! share paths with it show partial loss.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use murmur_wire::policy::{next_poisson_interval, sample_delay, select_loop_mixes};
use murmur_wire::{
    Delivery, Destination, FinalPayload, MessageId, NodeId, Route, VerifiedConsensus,
    build_forward_packet,
};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use murmur_node::engine::{FinalHop, MAX_DELAY_CAP, Outbound, Topology};
use murmur_node::{Error, Result};

/// Loop cover settings (the `[loops]` table of the configuration). The rate
/// itself is the consensus `mix_loop_rate`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoopSettings {
    /// Loops in flight at once; when full, no new loop is sent.
    pub max_outstanding: usize,
    /// Time a loop may take beyond the sum of its delays before it counts
    /// as lost, ms.
    pub timeout_slack_ms: u64,
}

impl Default for LoopSettings {
    fn default() -> Self {
        Self {
            max_outstanding: 10_000,
            timeout_slack_ms: 10_000,
        }
    }
}

impl LoopSettings {
    /// Checks the settings.
    pub fn check(&self) -> Result<()> {
        if self.max_outstanding == 0 || self.max_outstanding > 10_000_000 {
            return Err(Error::Config(
                "loops.max_outstanding must be in 1..=10000000".into(),
            ));
        }
        if self.timeout_slack_ms == 0 || self.timeout_slack_ms > 3_600_000 {
            return Err(Error::Config(
                "loops.timeout_slack_ms must be in 1..=3600000".into(),
            ));
        }
        Ok(())
    }
}

/// Loops in flight, by id, with their deadlines. No I/O, no clock: times
/// are passed in.
#[derive(Debug)]
pub struct LoopTracker {
    outstanding: HashMap<MessageId, (Instant, [NodeId; 2])>,
    max: usize,
}

impl LoopTracker {
    /// A tracker holding at most `max` loops.
    pub fn new(max: usize) -> Self {
        Self {
            outstanding: HashMap::new(),
            max,
        }
    }

    /// Records a loop sent through `peers`, due back by `deadline`. False
    /// (and nothing recorded) if the tracker is full.
    pub fn insert(&mut self, id: MessageId, deadline: Instant, peers: [NodeId; 2]) -> bool {
        if self.outstanding.len() >= self.max {
            return false;
        }
        self.outstanding.insert(id, (deadline, peers));
        true
    }

    /// A loop came back at `now`: its peers if it was in flight and on time.
    /// A late loop was already counted lost and stays so.
    pub fn returned(&mut self, id: &MessageId, now: Instant) -> Option<[NodeId; 2]> {
        match self.outstanding.get(id) {
            Some(&(deadline, peers)) if now <= deadline => {
                self.outstanding.remove(id);
                Some(peers)
            }
            _ => None,
        }
    }

    /// Removes the loops whose deadline passed before `now`; returns their
    /// peers.
    pub fn expire(&mut self, now: Instant) -> Vec<[NodeId; 2]> {
        let mut lost = Vec::new();
        self.outstanding.retain(|_, (deadline, peers)| {
            if *deadline < now {
                lost.push(*peers);
                false
            } else {
                true
            }
        });
        lost
    }

    /// Loops in flight.
    pub fn len(&self) -> usize {
        self.outstanding.len()
    }

    /// True if no loop is in flight.
    pub fn is_empty(&self) -> bool {
        self.outstanding.is_empty()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct PeerLabels {
    peer: String,
}

/// The label for a peer: the first 8 characters of its base58 node id
/// (node ids are public; a prefix keeps the label short).
pub fn peer_label(id: &NodeId) -> String {
    id.to_base58().chars().take(8).collect()
}

/// Loop cover counters.
#[derive(Clone, Debug)]
pub struct LoopMetrics {
    sent: Family<PeerLabels, Counter>,
    lost: Family<PeerLabels, Counter>,
    returned: Counter,
    unmatched: Counter,
    skipped: Counter,
    outstanding: Gauge,
    final_hop_dropped: Counter,
}

impl LoopMetrics {
    /// Registers the counters in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            sent: Family::default(),
            lost: Family::default(),
            returned: Counter::default(),
            unmatched: Counter::default(),
            skipped: Counter::default(),
            outstanding: Gauge::default(),
            final_hop_dropped: Counter::default(),
        };
        registry.register(
            "loops_sent",
            "Loop cover packets sent, by each peer on the loop (a loop counts for both its peers)",
            m.sent.clone(),
        );
        registry.register(
            "loops_lost",
            "Loops that did not return before their deadline, by each peer on the loop",
            m.lost.clone(),
        );
        registry.register(
            "loops_returned",
            "Loops that returned on time",
            m.returned.clone(),
        );
        registry.register(
            "loops_unmatched",
            "Loop packets that returned late or were not sent by this node",
            m.unmatched.clone(),
        );
        registry.register(
            "loops_skipped",
            "Loops not sent: no usable consensus, no route, or too many in flight",
            m.skipped.clone(),
        );
        registry.register(
            "loops_outstanding",
            "Loops in flight",
            m.outstanding.clone(),
        );
        registry.register(
            "final_hop_dropped",
            "Packets whose final hop was this mix that were not its own loops (dropped)",
            m.final_hop_dropped.clone(),
        );
        m
    }

    /// Loops sent through `peer`.
    pub fn sent(&self, peer: &NodeId) -> u64 {
        self.sent
            .get(&PeerLabels {
                peer: peer_label(peer),
            })
            .map_or(0, |c| c.get())
    }

    /// Loops through `peer` that were lost.
    pub fn lost(&self, peer: &NodeId) -> u64 {
        self.lost
            .get(&PeerLabels {
                peer: peer_label(peer),
            })
            .map_or(0, |c| c.get())
    }

    /// Loops that returned on time.
    pub fn returned(&self) -> u64 {
        self.returned.get()
    }

    /// Final-hop packets at this mix that were not its loops.
    pub fn final_hop_dropped(&self) -> u64 {
        self.final_hop_dropped.get()
    }

    fn count(&self, family: &Family<PeerLabels, Counter>, peers: &[NodeId; 2]) {
        for p in peers {
            family
                .get_or_create(&PeerLabels {
                    peer: peer_label(p),
                })
                .inc();
        }
    }

    /// Drops the label sets of peers not in `keep`.
    fn prune(&self, keep: &HashSet<String>, seen: &mut HashSet<String>) {
        seen.retain(|label| {
            if keep.contains(label) {
                return true;
            }
            let l = PeerLabels {
                peer: label.clone(),
            };
            self.sent.remove(&l);
            self.lost.remove(&l);
            false
        });
    }
}

/// The mix node's final hop: its own loops come back here; anything else
/// addressed to a mix as a final hop is dropped and counted.
#[derive(Debug)]
pub struct MixFinalHop {
    node_id: NodeId,
    tracker: Arc<Mutex<LoopTracker>>,
    metrics: LoopMetrics,
}

impl MixFinalHop {
    /// The final hop of the mix `node_id`, matching returns against `tracker`.
    pub fn new(node_id: NodeId, tracker: Arc<Mutex<LoopTracker>>, metrics: LoopMetrics) -> Self {
        Self {
            node_id,
            tracker,
            metrics,
        }
    }
}

impl FinalHop for MixFinalHop {
    fn deliver(&self, destination: Destination, delivery: Delivery) {
        let id = match (destination == Destination::from(self.node_id), delivery) {
            (true, Delivery::Forward { plaintext }) => match FinalPayload::parse(&plaintext) {
                Ok(FinalPayload::LoopCover { id }) => id,
                _ => {
                    self.metrics.final_hop_dropped.inc();
                    return;
                }
            },
            _ => {
                self.metrics.final_hop_dropped.inc();
                return;
            }
        };
        let now = Instant::now();
        let back = self
            .tracker
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .returned(&id, now);
        match back {
            Some(_) => {
                self.metrics.returned.inc();
                self.metrics.outstanding.dec();
            }
            None => {
                self.metrics.unmatched.inc();
            }
        }
    }
}

/// How often lost loops are looked for.
const EXPIRE_EVERY: Duration = Duration::from_millis(500);
/// The longest single wait between two checks of the loop rate. The Poisson
/// process is memoryless: waiting this long without firing and drawing
/// again does not bias it, and a new rate takes effect within this time.
const RECHECK: Duration = Duration::from_secs(1);

/// Sends loop cover for the mix `node_id` until `shutdown`: at the current
/// consensus's `mix_loop_rate`, from the layer the consensus puts it in.
#[allow(clippy::too_many_arguments)]
pub fn spawn_loop_cover(
    node_id: NodeId,
    outbound: Outbound,
    topology: Arc<dyn Topology>,
    loops: Arc<Mutex<LoopTracker>>,
    metrics: LoopMetrics,
    settings: LoopSettings,
    shutdown: CancellationToken,
    tracker: &TaskTracker,
) {
    tracker.spawn(async move {
        let mut expire = tokio::time::interval(EXPIRE_EVERY);
        expire.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut labels: HashSet<String> = HashSet::new();
        let mut labels_epoch = None;
        let mut next_send: Option<(Instant, bool)> = None;
        loop {
            let rate = topology
                .current()
                .map_or(0.0, |c| c.params().mix_loop_rate);
            let (at, fire) = match next_send {
                Some(v) => v,
                None => {
                    let v = match next_poisson_interval(&mut rand::rng(), rate) {
                        Some(d) if d <= RECHECK => (Instant::now() + d, true),
                        _ => (Instant::now() + RECHECK, false),
                    };
                    next_send = Some(v);
                    v
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = expire.tick() => {
                    let (lost, left) = {
                        let mut l = loops.lock().unwrap_or_else(PoisonError::into_inner);
                        (l.expire(Instant::now()), l.len())
                    };
                    for peers in &lost {
                        metrics.count(&metrics.lost, peers);
                    }
                    metrics.outstanding.set(left as i64);
                    if let Some(c) = topology.current()
                        && labels_epoch != Some(c.epoch())
                    {
                        labels_epoch = Some(c.epoch());
                        let mut keep: HashSet<String> = HashSet::new();
                        for doc in [Some(c.clone()), c.epoch().checked_sub(1).and_then(|e| topology.for_epoch(e))].into_iter().flatten() {
                            for layer in doc.layers() {
                                keep.extend(layer.iter().map(|n| peer_label(&n.id)));
                            }
                        }
                        metrics.prune(&keep, &mut labels);
                    }
                }
                _ = tokio::time::sleep_until(at) => {
                    next_send = None;
                    if fire {
                        let sent = topology
                            .current()
                            .and_then(|c| send_loop(node_id, &c, &outbound, &loops, &settings));
                        match sent {
                            Some(peers) => {
                                metrics.count(&metrics.sent, &peers);
                                for p in &peers {
                                    labels.insert(peer_label(p));
                                }
                            }
                            None => {
                                metrics.skipped.inc();
                            }
                        }
                    }
                }
            }
        }
    });
}

/// Builds and sends one loop; returns its peers, or `None` if none could be
/// sent (not a mix in this consensus, an empty layer, or too many in flight).
fn send_loop(
    node_id: NodeId,
    consensus: &VerifiedConsensus,
    outbound: &Outbound,
    loops: &Mutex<LoopTracker>,
    settings: &LoopSettings,
) -> Option<[NodeId; 2]> {
    let me = consensus.node(&node_id)?;
    let mut rng = rand::rng();
    // The one path-selection rule (murmur_wire::policy::choose_path).
    let [a, b] = select_loop_mixes(&mut rng, consensus, &node_id).ok()?;
    let params = consensus.params();
    let mean = Duration::from_micros(params.mean_delay_us);
    let max = Duration::from_micros(params.max_delay_us).min(MAX_DELAY_CAP);
    let delays = vec![
        sample_delay(&mut rng, mean, max),
        sample_delay(&mut rng, mean, max),
        Duration::ZERO,
    ];
    let total: Duration = delays.iter().sum();
    let route = Route::new(vec![a.hop(), b.hop(), me.hop()], delays).ok()?;
    let id = MessageId::random(&mut rng);
    let payload = FinalPayload::LoopCover { id }.encode();
    let packet =
        build_forward_packet(&mut rng, &route, Destination::from(node_id), &payload).ok()?;
    let deadline = Instant::now() + total + Duration::from_millis(settings.timeout_slack_ms);
    let peers = [a.id, b.id];
    if !loops
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(id, deadline, peers)
    {
        return None;
    }
    // A loop refused by the first link (down or overloaded) stays tracked:
    // it will count as lost, which is what it is.
    let _ = outbound.send(a.id, packet);
    Some(peers)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> MessageId {
        MessageId::from_bytes([n; 16])
    }

    #[test]
    fn the_tracker_matches_returns_and_expires_the_rest() {
        let t0 = Instant::now();
        let a = NodeId::from_bytes([1; 32]);
        let b = NodeId::from_bytes([2; 32]);
        let mut t = LoopTracker::new(2);
        assert!(t.insert(id(1), t0 + Duration::from_secs(1), [a, b]));
        assert!(t.insert(id(2), t0 + Duration::from_secs(2), [b, a]));
        assert!(!t.insert(id(3), t0, [a, b]), "full");
        assert_eq!(t.returned(&id(1), t0), Some([a, b]));
        assert_eq!(t.returned(&id(1), t0), None, "only once");
        assert_eq!(t.returned(&id(9), t0), None, "not ours");
        // Late: not matched, and expired as lost.
        assert_eq!(t.returned(&id(2), t0 + Duration::from_secs(3)), None);
        assert_eq!(t.expire(t0 + Duration::from_secs(3)), vec![[b, a]]);
        assert!(t.is_empty());
    }

    #[test]
    fn non_loop_deliveries_at_a_mix_are_dropped_and_counted() {
        let mut reg = Registry::default();
        let metrics = LoopMetrics::register(&mut reg);
        let me = NodeId::from_bytes([4; 32]);
        let tracker = Arc::new(Mutex::new(LoopTracker::new(8)));
        let hop = MixFinalHop::new(me, tracker.clone(), metrics.clone());
        hop.deliver(
            Destination([9; 32]),
            Delivery::Forward {
                plaintext: FinalPayload::LoopCover { id: id(1) }.encode(),
            },
        );
        hop.deliver(
            Destination::from(me),
            Delivery::Forward {
                plaintext: FinalPayload::DropCover.encode(),
            },
        );
        hop.deliver(
            Destination::from(me),
            Delivery::Reply {
                surb_id: murmur_wire::SurbId::from_bytes([1; 16]),
                sealed: vec![0; 10],
            },
        );
        assert_eq!(metrics.final_hop_dropped(), 3);
        // An unknown loop id to this node is unmatched, not dropped.
        hop.deliver(
            Destination::from(me),
            Delivery::Forward {
                plaintext: FinalPayload::LoopCover { id: id(2) }.encode(),
            },
        );
        assert_eq!(metrics.unmatched.get(), 1);
        tracker
            .lock()
            .unwrap()
            .insert(id(3), Instant::now() + Duration::from_secs(5), [me, me]);
        hop.deliver(
            Destination::from(me),
            Delivery::Forward {
                plaintext: FinalPayload::LoopCover { id: id(3) }.encode(),
            },
        );
        assert_eq!(metrics.returned(), 1);
    }
}
