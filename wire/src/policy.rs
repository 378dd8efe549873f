//! The policies nodes, clients and the simulator share, as pure functions:
//! per-hop delays, path selection, the Poisson send schedule with cover
//! traffic (Loopix), acknowledgement timeouts and retransmission backoff,
//! suspicion of mixes that lose packets, and epoch arithmetic.
//!
//! Randomness and time come in as arguments. The daemons call these with a
//! real RNG and the wall clock; the simulator with a seeded RNG and virtual
//! time. That is what makes the simulator study the real thing.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use rand::{Rng, RngExt};
use rand_distr::{Distribution, Exp1};

use crate::directory::{NetworkParams, NodeInfo, VerifiedConsensus};
use crate::error::{Error, Result};
use crate::ids::NodeId;
use crate::packet::{Hop, MIX_LAYERS, Route};

/// Draws one exponential sample with the given mean (a Poisson process's
/// inter-arrival time, or a Loopix per-hop delay). A zero mean gives zero.
pub fn sample_exponential<R: Rng + ?Sized>(rng: &mut R, mean: Duration) -> Duration {
    if mean.is_zero() {
        return Duration::ZERO;
    }
    let x: f64 = Exp1.sample(rng);
    // Saturate rather than panic for a mean near `Duration::MAX`.
    Duration::try_from_secs_f64(x * mean.as_secs_f64()).unwrap_or(Duration::MAX)
}

/// Draws a per-hop delay: exponential with mean `mean`, clamped to `max`
/// (nodes drop packets that ask for more than `max`).
pub fn sample_delay<R: Rng + ?Sized>(rng: &mut R, mean: Duration, max: Duration) -> Duration {
    sample_exponential(rng, mean).min(max)
}

/// Draws `n` per-hop delays (see [`sample_delay`]).
pub fn sample_delays<R: Rng + ?Sized>(
    rng: &mut R,
    n: usize,
    mean: Duration,
    max: Duration,
) -> Vec<Duration> {
    (0..n).map(|_| sample_delay(rng, mean, max)).collect()
}

/// The time to the next event of a Poisson process of `rate` events per
/// second. `None` for a rate of zero (the process never fires), and for an
/// interval too long for a `Duration` (a rate so small that it never fires
/// either).
pub fn next_poisson_interval<R: Rng + ?Sized>(rng: &mut R, rate: f64) -> Option<Duration> {
    if !(rate.is_finite() && rate > 0.0) {
        return None;
    }
    let x: f64 = Exp1.sample(rng);
    Duration::try_from_secs_f64(x / rate).ok()
}

/// The path selection policy, written once: for each layer, one member
/// chosen uniformly among those `avoid` does not reject, into `out`
/// (`out.len() == layer_sizes.len()`). A layer whose every member is
/// rejected is used whole (uniformly): a layer is never avoided whole, so a
/// path always exists. `avoid(layer, index)` is asked about every member of
/// each layer; `None` rejects nothing and costs one draw per layer whatever
/// the layer's size. Fails if a layer is empty.
///
/// Every other path function is this one applied to something:
/// [`choose_per_layer`] (layer sizes, nothing avoided: the simulator's
/// abstract network), [`select_mixes_avoiding`] and [`select_route_avoiding`]
/// (a consensus, the sender's suspects avoided), [`select_mixes`] and
/// [`select_route`] (nothing avoided), [`select_loop_mixes`] (a mix's own
/// loop). The draws are the same whether or not `avoid` is given when it
/// rejects nothing, so each of those makes the same choices from the same
/// random stream.
pub fn choose_path<R: Rng + ?Sized>(
    rng: &mut R,
    layer_sizes: &[usize],
    avoid: Option<&dyn Fn(usize, usize) -> bool>,
    out: &mut [usize],
) -> Result<()> {
    if out.len() != layer_sizes.len() {
        return Err(Error::InvalidRoute("one output slot per layer is required"));
    }
    for (layer, (slot, &size)) in out.iter_mut().zip(layer_sizes).enumerate() {
        if size == 0 {
            return Err(Error::InvalidRoute("a mix layer is empty"));
        }
        let eligible = |i: &usize| avoid.is_none_or(|f| !f(layer, *i));
        let count = match avoid {
            None => size,
            Some(_) => (0..size).filter(eligible).count(),
        };
        *slot = if count == 0 || count == size {
            rng.random_range(0..size)
        } else {
            let k = rng.random_range(0..count);
            // `k < count`, the number of eligible indexes: `nth` finds one.
            (0..size).filter(eligible).nth(k).unwrap_or(0)
        };
    }
    Ok(())
}

/// Chooses one index per layer, uniformly and independently, into `out`
/// (`out.len() == layer_sizes.len()`). Fails if a layer is empty.
///
/// [`choose_path`] avoiding nothing: what the simulator's abstract network
/// (layers of indexes, no consensus) uses.
pub fn choose_per_layer<R: Rng + ?Sized>(
    rng: &mut R,
    layer_sizes: &[usize],
    out: &mut [usize],
) -> Result<()> {
    choose_path(rng, layer_sizes, None, out)
}

/// The mixes of one path, one per layer, chosen uniformly among those
/// `avoid` does not reject (a layer whose every mix is rejected is used
/// whole; see [`choose_path`]).
pub fn select_mixes_avoiding<'a, R: Rng + ?Sized, F: Fn(&NodeId) -> bool>(
    rng: &mut R,
    consensus: &'a VerifiedConsensus,
    avoid: F,
) -> Result<[&'a NodeInfo; MIX_LAYERS]> {
    let layers = consensus.layers();
    let sizes: [usize; MIX_LAYERS] = std::array::from_fn(|i| layers.get(i).map_or(0, Vec::len));
    let rejects = |layer: usize, i: usize| {
        layers
            .get(layer)
            .and_then(|l| l.get(i))
            .is_some_and(|n| avoid(&n.id))
    };
    let mut picks = [0usize; MIX_LAYERS];
    choose_path(rng, &sizes, Some(&rejects), &mut picks)?;
    pick_nodes(layers, std::array::from_fn(|i| i), picks)
}

/// The mixes of one path, one per layer, chosen uniformly (the sender draws
/// a fresh path for every packet).
pub fn select_mixes<'a, R: Rng + ?Sized>(
    rng: &mut R,
    consensus: &'a VerifiedConsensus,
) -> Result<[&'a NodeInfo; MIX_LAYERS]> {
    select_mixes_avoiding(rng, consensus, |_| false)
}

/// The two mixes a mix's loop-cover packet crosses before it comes back:
/// one of each of the next two layers after `me`'s (wrapping around),
/// uniformly. Fails if `me` is not a mix of `consensus` or a layer is
/// empty.
pub fn select_loop_mixes<'a, R: Rng + ?Sized>(
    rng: &mut R,
    consensus: &'a VerifiedConsensus,
    me: &NodeId,
) -> Result<[&'a NodeInfo; 2]> {
    let layer = consensus
        .node(me)
        .and_then(|n| n.layer)
        .map(usize::from)
        .ok_or(Error::InvalidRoute("not a mix of the consensus"))?;
    let layers = consensus.layers();
    let n = layers.len().max(1);
    let which = [(layer + 1) % n, (layer + 2) % n];
    let sizes = which.map(|l| layers.get(l).map_or(0, Vec::len));
    let mut picks = [0usize; 2];
    choose_path(rng, &sizes, None, &mut picks)?;
    pick_nodes(layers, which, picks)
}

/// The nodes at `picks` in `layers[which]`.
fn pick_nodes<const N: usize>(
    layers: &[Vec<NodeInfo>],
    which: [usize; N],
    picks: [usize; N],
) -> Result<[&NodeInfo; N]> {
    let nodes: Vec<&NodeInfo> = which
        .into_iter()
        .zip(picks)
        .map(|(layer, pick)| layers.get(layer).and_then(|l| l.get(pick)))
        .collect::<Option<_>>()
        .ok_or(Error::InvalidRoute("a mix layer is empty"))?;
    nodes
        .try_into()
        .map_err(|_| Error::InvalidRoute("a mix layer is empty"))
}

/// A full forward route: one mix per layer (uniformly), then `provider`,
/// with fresh exponential delays from the consensus parameters.
pub fn select_route<R: Rng + ?Sized>(
    rng: &mut R,
    consensus: &VerifiedConsensus,
    provider: &NodeId,
) -> Result<Route> {
    select_route_avoiding(rng, consensus, provider, |_| false)
}

/// As [`select_route`], but avoiding the mixes `avoid` returns true for
/// (nodes that look dead), as long as a layer keeps at least one node: a
/// layer whose every node is avoided is used whole. Choice within the
/// remaining nodes is uniform ([`choose_path`]).
pub fn select_route_avoiding<R: Rng + ?Sized, F: Fn(&NodeId) -> bool>(
    rng: &mut R,
    consensus: &VerifiedConsensus,
    provider: &NodeId,
    avoid: F,
) -> Result<Route> {
    let provider = consensus
        .mailboxes()
        .iter()
        .find(|m| m.id == *provider)
        .ok_or(Error::InvalidRoute("the provider is not in the consensus"))?;
    let mixes = select_mixes_avoiding(rng, consensus, avoid)?;
    let mut hops: Vec<Hop> = mixes.iter().map(|n| n.hop()).collect();
    hops.push(provider.hop());
    let params = consensus.params();
    let mut delays = sample_delays(
        rng,
        MIX_LAYERS,
        Duration::from_micros(params.mean_delay_us),
        Duration::from_micros(params.max_delay_us),
    );
    // The provider stores on arrival; its delay is not used.
    delays.push(Duration::ZERO);
    Route::new(hops, delays)
}

/// The `q`-quantile (e.g. 0.999) of the sum of `n` independent exponential
/// delays of mean `mean` (an Erlang distribution): how long a packet that
/// crosses `n` Poisson mixes may take, used to set acknowledgement timeouts.
pub fn erlang_quantile(n: u32, mean: Duration, q: f64) -> Duration {
    if n == 0 || mean.is_zero() || !(0.0..1.0).contains(&q) {
        return Duration::ZERO;
    }
    // P(sum > x) for rate 1 is exp(-x) * sum_{k<n} x^k / k!; bisect on it.
    let tail = |x: f64| {
        let mut term = 1.0;
        let mut sum = 1.0;
        for k in 1..n {
            term *= x / f64::from(k);
            sum += term;
        }
        (-x).exp() * sum
    };
    let (mut lo, mut hi) = (0.0f64, 1.0f64);
    while tail(hi) > 1.0 - q && hi < 1e6 {
        hi *= 2.0;
    }
    for _ in 0..100 {
        let mid = (lo + hi) / 2.0;
        if tail(mid) > 1.0 - q {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Duration::from_secs_f64(hi * mean.as_secs_f64())
}

/// What a client sends at a tick of its send stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendKind {
    /// The next real packet from the outbox.
    Real,
    /// A drop-cover packet (nothing was waiting).
    DropCover,
}

/// Loopix: at a tick of the send stream, send a real packet if one waits,
/// else drop cover.
pub fn on_send_tick(real_waiting: bool) -> SendKind {
    if real_waiting {
        SendKind::Real
    } else {
        SendKind::DropCover
    }
}

/// Which stream an event of a [`ClientSchedule`] belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    /// The send stream (rate λ): real or drop cover, see [`on_send_tick`].
    Send,
    /// The loop-cover stream (rate λ_L).
    Loop,
}

/// A client's two independent Poisson streams, on any clock.
///
/// Times are offsets from an origin the caller chooses (the daemon's start
/// instant, or the simulator's zero).
#[derive(Clone, Debug)]
pub struct ClientSchedule {
    send_rate: f64,
    loop_rate: f64,
    next_send: Option<Duration>,
    next_loop: Option<Duration>,
}

impl ClientSchedule {
    /// Starts both streams at time `now`.
    pub fn new<R: Rng + ?Sized>(
        rng: &mut R,
        send_rate: f64,
        loop_rate: f64,
        now: Duration,
    ) -> Self {
        Self {
            send_rate,
            loop_rate,
            next_send: next_poisson_interval(rng, send_rate).and_then(|d| now.checked_add(d)),
            next_loop: next_poisson_interval(rng, loop_rate).and_then(|d| now.checked_add(d)),
        }
    }

    /// With the consensus rates.
    pub fn from_params<R: Rng + ?Sized>(
        rng: &mut R,
        params: &NetworkParams,
        now: Duration,
    ) -> Self {
        Self::new(rng, params.client_rate, params.client_loop_rate, now)
    }

    /// True if the send stream is off (rate 0): real packets should then be
    /// sent as soon as they are queued, and no drop cover is sent.
    pub fn sends_immediately(&self) -> bool {
        self.next_send.is_none()
    }

    /// The time and stream of the next event, if any stream is on.
    pub fn peek(&self) -> Option<(Duration, Stream)> {
        match (self.next_send, self.next_loop) {
            (Some(s), Some(l)) if l < s => Some((l, Stream::Loop)),
            (Some(s), _) => Some((s, Stream::Send)),
            (None, Some(l)) => Some((l, Stream::Loop)),
            (None, None) => None,
        }
    }

    /// Takes the next event and schedules that stream's following one.
    pub fn pop<R: Rng + ?Sized>(&mut self, rng: &mut R) -> Option<(Duration, Stream)> {
        let (at, stream) = self.peek()?;
        match stream {
            Stream::Send => {
                self.next_send =
                    next_poisson_interval(rng, self.send_rate).and_then(|d| at.checked_add(d));
            }
            Stream::Loop => {
                self.next_loop =
                    next_poisson_interval(rng, self.loop_rate).and_then(|d| at.checked_add(d));
            }
        }
        Some((at, stream))
    }
}

/// How long a sender waits for a packet's acknowledgement before it tries
/// again: the 99.9th percentile of the six exponential mix delays a packet
/// and its acknowledgement cross (capped by the maximum delay), plus two
/// fetch intervals (the acknowledgement waits in the sender's queue until
/// the next fetch) and a second of slack.
pub fn ack_timeout(params: &NetworkParams, fetch_interval: Duration) -> Duration {
    let hops = 2 * MIX_LAYERS as u32;
    let delays = erlang_quantile(hops, Duration::from_micros(params.mean_delay_us), 0.999)
        .min(Duration::from_micros(params.max_delay_us).saturating_mul(hops));
    delays + fetch_interval.saturating_mul(2) + Duration::from_secs(1)
}

/// The timeout of a packet's `tries`-th try (from 1): the base doubled
/// after each timeout of the same packet, up to four times the base, so
/// that a slow network is not flooded with retransmissions and a message
/// survives a longer outage.
pub fn retry_timeout(base: Duration, tries: u32) -> Duration {
    base.saturating_mul(1u32 << tries.saturating_sub(1).min(2))
}

/// A sender's estimate of the acknowledgement round trip as it is, from
/// its own acknowledged tries (RFC 6298's smoothed mean and variation;
/// every try has its own SURB, so each sample belongs to one known try).
/// Under load the mixes' queues and the providers' writes lengthen the
/// round trip beyond what the delays alone predict ([`ack_timeout`]); the
/// timeout follows.
#[derive(Clone, Copy, Debug, Default)]
pub struct RttEstimator {
    srtt: Option<Duration>,
    rttvar: Duration,
}

impl RttEstimator {
    /// A try was acknowledged `rtt` after it was sent.
    pub fn sample(&mut self, rtt: Duration) {
        match self.srtt {
            None => {
                self.srtt = Some(rtt);
                self.rttvar = rtt / 2;
            }
            Some(srtt) => {
                let diff = srtt.abs_diff(rtt);
                self.rttvar = (self.rttvar * 3 + diff) / 4;
                self.srtt = Some((srtt * 7 + rtt) / 8);
            }
        }
    }

    /// The smoothed round trip, once there is a sample.
    pub fn srtt(&self) -> Option<Duration> {
        self.srtt
    }

    /// The timeout of a first try: the larger of `base` (what the delays
    /// predict) and the measured round trip plus four times its variation.
    pub fn timeout(&self, base: Duration) -> Duration {
        match self.srtt {
            Some(srtt) => base.max(srtt + self.rttvar * 4),
            None => base,
        }
    }
}

/// How many tries a sender keeps in flight (sent, neither acknowledged nor
/// timed out): additive increase, multiplicative decrease, as TCP's
/// congestion window. It starts small, doubles per round trip up to the
/// slow-start threshold, then grows by one per round trip; a timeout of a
/// try sent after the last cut halves it. It binds when the send stream is
/// off (packets leave as soon as they are queued); at a cover rate the
/// stream is slower than the window.
#[derive(Clone, Copy, Debug)]
pub struct CongestionWindow {
    cwnd: f64,
    ssthresh: f64,
    floor: f64,
    ceiling: f64,
    last_cut: Option<Duration>,
}

impl CongestionWindow {
    /// A window of at most `ceiling` tries (and at least a few).
    pub fn new(ceiling: usize) -> Self {
        let ceiling = (ceiling as f64).max(1.0);
        let floor = ceiling.min(4.0);
        Self {
            cwnd: ceiling.min(32.0),
            ssthresh: ceiling,
            floor,
            ceiling,
            last_cut: None,
        }
    }

    /// Tries allowed in flight now.
    pub fn allowed(&self) -> usize {
        self.cwnd as usize
    }

    /// A try was acknowledged.
    pub fn acked(&mut self) {
        let grow = if self.cwnd < self.ssthresh {
            1.0
        } else {
            1.0 / self.cwnd
        };
        self.cwnd = (self.cwnd + grow).min(self.ceiling);
    }

    /// A try sent at `sent_at` timed out at `now`.
    pub fn timed_out(&mut self, sent_at: Duration, now: Duration) {
        if self.last_cut.is_some_and(|cut| sent_at <= cut) {
            return;
        }
        self.ssthresh = (self.cwnd / 2.0).max(self.floor);
        self.cwnd = self.ssthresh;
        self.last_cut = Some(now);
    }
}

/// A mix is avoided after this many timeouts of packets through it, since
/// it last carried one.
pub const SUSPECT_AFTER: u32 = 2;

/// How long a suspect mix is avoided after the send time of the last try
/// that blamed it. Then it is on probation: used again, its blame kept, so
/// one more timeout through it avoids it again at once — for twice as long
/// each time it fails its probation, up to 16 times this. Without probation
/// a live mix blamed for a dead neighbour's losses would be avoided for
/// good when no loop happens to vouch for it.
pub const PROBATION: Duration = Duration::from_secs(300);

/// Which mixes a sender avoids because packets through them were lost.
///
/// A timed-out try blames every mix of its routes (the packet's and its
/// acknowledgement's) that has not *since* carried a try sent at or after
/// it; an acknowledged try, or a returned loop, clears its mixes. A mix
/// blamed [`SUSPECT_AFTER`] times is avoided until its probation (see
/// [`PROBATION`]) after the last try that blamed it — but a layer is never avoided whole: if every
/// mix of a layer is suspect, only those blamed more than the least-blamed
/// of the layer are. Times are the sender's clock.
#[derive(Clone, Debug, Default)]
pub struct Suspicion {
    blame: HashMap<NodeId, u32>,
    /// Per mix, the send time of the latest try that blamed it.
    blamed_at: HashMap<NodeId, Duration>,
    /// Per mix, probations failed since it last carried a packet.
    strikes: HashMap<NodeId, u32>,
    /// Per mix, the send time of the latest acknowledged try through it.
    proven: HashMap<NodeId, Duration>,
}

impl Suspicion {
    /// A try sent at `sent_at` through `route` timed out.
    pub fn timed_out(&mut self, route: &[NodeId], sent_at: Duration) {
        for node in route {
            if self.proven.get(node).is_none_or(|p| *p < sent_at) {
                if self.on_probation(node, sent_at) {
                    *self.strikes.entry(*node).or_default() += 1;
                }
                *self.blame.entry(*node).or_default() += 1;
                let at = self.blamed_at.entry(*node).or_insert(sent_at);
                *at = (*at).max(sent_at);
            }
        }
    }

    /// A packet sent at `sent_at` through `route` came back (a try was
    /// acknowledged, or a loop returned).
    pub fn carried(&mut self, route: &[NodeId], sent_at: Duration) {
        for node in route {
            self.blame.remove(node);
            self.blamed_at.remove(node);
            self.strikes.remove(node);
            let proven = self.proven.entry(*node).or_insert(sent_at);
            *proven = (*proven).max(sent_at);
        }
    }

    /// Timeouts blamed on `node` since it last carried a packet.
    pub fn blame_of(&self, node: &NodeId) -> u32 {
        self.blame.get(node).copied().unwrap_or(0)
    }

    /// Whether a suspect `node` is on probation at `now` (its avoidance
    /// ran out, it is used again).
    fn on_probation(&self, node: &NodeId, now: Duration) -> bool {
        let strikes = self.strikes.get(node).copied().unwrap_or(0).min(4);
        self.blamed_at
            .get(node)
            .is_some_and(|at| at.saturating_add(PROBATION.saturating_mul(1 << strikes)) <= now)
    }

    /// The mixes to avoid at `now`.
    pub fn avoided(&self, consensus: &VerifiedConsensus, now: Duration) -> HashSet<NodeId> {
        let mut avoid = HashSet::new();
        for layer in consensus.layers() {
            let least = layer
                .iter()
                .map(|n| self.blame_of(&n.id))
                .min()
                .unwrap_or(0);
            let bar = if least >= SUSPECT_AFTER {
                least + 1
            } else {
                SUSPECT_AFTER
            };
            avoid.extend(
                layer
                    .iter()
                    .filter(|n| self.blame_of(&n.id) >= bar && !self.on_probation(&n.id, now))
                    .map(|n| n.id),
            );
        }
        avoid
    }

    /// Forgets mixes that left the network, so the maps stay small.
    pub fn retain(&mut self, consensus: &VerifiedConsensus) {
        self.blame.retain(|id, _| consensus.node(id).is_some());
        self.blamed_at.retain(|id, _| consensus.node(id).is_some());
        self.strikes.retain(|id, _| consensus.node(id).is_some());
        self.proven.retain(|id, _| consensus.node(id).is_some());
    }
}

/// The epoch containing unix time `now_secs`, for epochs of `epoch_secs`.
pub fn epoch_at(now_secs: u64, epoch_secs: u64) -> u64 {
    now_secs.checked_div(epoch_secs).unwrap_or(0)
}

/// Unix time at which `epoch` starts.
pub fn epoch_start(epoch: u64, epoch_secs: u64) -> u64 {
    epoch.saturating_mul(epoch_secs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn exponential_mean_is_right() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let mean = Duration::from_millis(50);
        let n = 200_000;
        let total: f64 = (0..n)
            .map(|_| sample_exponential(&mut rng, mean).as_secs_f64())
            .sum();
        let got = total / n as f64;
        assert!((got - 0.050).abs() < 0.050 * 0.02, "mean {got}");
    }

    #[test]
    fn delays_are_clamped() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let max = Duration::from_millis(60);
        for _ in 0..10_000 {
            assert!(sample_delay(&mut rng, Duration::from_millis(50), max) <= max);
        }
        assert_eq!(sample_delay(&mut rng, Duration::ZERO, max), Duration::ZERO);
    }

    #[test]
    fn poisson_rate_is_right_and_zero_rate_never_fires() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        assert!(next_poisson_interval(&mut rng, 0.0).is_none());
        assert!(next_poisson_interval(&mut rng, f64::NAN).is_none());
        let n = 100_000;
        let total: f64 = (0..n)
            .map(|_| next_poisson_interval(&mut rng, 20.0).unwrap().as_secs_f64())
            .sum();
        let rate = n as f64 / total;
        assert!((rate - 20.0).abs() < 0.5, "rate {rate}");
    }

    #[test]
    fn path_choice_is_uniform_per_layer() {
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let sizes = [3usize, 5, 2];
        let mut counts = [[0u32; 5]; 3];
        let mut out = [0usize; 3];
        let n = 60_000;
        for _ in 0..n {
            choose_per_layer(&mut rng, &sizes, &mut out).unwrap();
            for (l, &i) in out.iter().enumerate() {
                counts[l][i] += 1;
            }
        }
        for (l, &size) in sizes.iter().enumerate() {
            for &c in counts[l].iter().take(size) {
                let expect = n as f64 / size as f64;
                assert!((c as f64 - expect).abs() < expect * 0.05, "layer {l}: {c}");
            }
        }
        assert!(choose_per_layer(&mut rng, &[1, 0, 1], &mut out).is_err());
        assert!(choose_per_layer(&mut rng, &[1, 1], &mut out).is_err());
    }

    #[test]
    fn avoided_indexes_are_never_chosen_and_the_rest_are_uniform() {
        let mut rng = ChaCha8Rng::seed_from_u64(12);
        let sizes = [4usize, 5, 3];
        // Layer 0: two of four avoided; layer 1: none; layer 2: all three
        // (so the whole layer is used).
        let avoid = |layer: usize, i: usize| match layer {
            0 => i == 1 || i == 2,
            2 => true,
            _ => false,
        };
        let mut counts = [[0u32; 5]; 3];
        let mut out = [0usize; 3];
        let n = 60_000;
        for _ in 0..n {
            choose_path(&mut rng, &sizes, Some(&avoid), &mut out).unwrap();
            for (l, &i) in out.iter().enumerate() {
                counts[l][i] += 1;
            }
        }
        let expect = |c: u32, of: usize| {
            let e = n as f64 / of as f64;
            // Binomial: 5 standard deviations.
            let sd = (e * (1.0 - 1.0 / of as f64)).sqrt();
            (c as f64 - e).abs() < 5.0 * sd
        };
        assert_eq!((counts[0][1], counts[0][2]), (0, 0), "avoided: never");
        assert!(
            expect(counts[0][0], 2) && expect(counts[0][3], 2),
            "{:?}",
            counts[0]
        );
        assert!(counts[1].iter().all(|&c| expect(c, 5)), "{:?}", counts[1]);
        assert!(
            counts[2][..3].iter().all(|&c| expect(c, 3)),
            "{:?}",
            counts[2]
        );
    }

    #[test]
    fn avoiding_nothing_draws_exactly_as_choosing_per_layer() {
        let sizes = [7usize, 1, 300];
        let (mut a, mut b) = (ChaCha8Rng::seed_from_u64(2), ChaCha8Rng::seed_from_u64(2));
        let (mut x, mut y) = ([0usize; 3], [0usize; 3]);
        for _ in 0..1000 {
            choose_per_layer(&mut a, &sizes, &mut x).unwrap();
            choose_path(&mut b, &sizes, Some(&|_, _| false), &mut y).unwrap();
            assert_eq!(x, y);
        }
    }

    #[test]
    fn schedule_interleaves_streams_at_their_rates() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let mut s = ClientSchedule::new(&mut rng, 10.0, 2.0, Duration::ZERO);
        let (mut sends, mut loops) = (0, 0);
        let mut last = Duration::ZERO;
        while let Some((at, stream)) = s.pop(&mut rng) {
            assert!(at >= last);
            last = at;
            if at > Duration::from_secs(1000) {
                break;
            }
            match stream {
                Stream::Send => sends += 1,
                Stream::Loop => loops += 1,
            }
        }
        assert!((sends as f64 / 1000.0 - 10.0).abs() < 0.5, "{sends}");
        assert!((loops as f64 / 1000.0 - 2.0).abs() < 0.2, "{loops}");
        let off = ClientSchedule::new(&mut rng, 0.0, 0.0, Duration::ZERO);
        assert!(off.sends_immediately());
        assert!(off.peek().is_none());
    }

    #[test]
    fn tiny_rates_and_huge_means_do_not_panic() {
        // NetworkParams::check accepts any rate in [0, 1e6], so a consensus
        // may carry 1e-300: the interval overflows a Duration.
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        assert!(next_poisson_interval(&mut rng, 1e-300).is_none());
        let mut s = ClientSchedule::new(&mut rng, 1e-300, 1.0, Duration::MAX);
        while s.pop(&mut rng).is_some() {}
        let huge = sample_exponential(&mut rng, Duration::MAX);
        assert!(huge > Duration::ZERO);
        assert!(
            sample_delay(&mut rng, Duration::MAX, Duration::from_secs(1)) <= Duration::from_secs(1)
        );
    }

    #[test]
    fn send_tick_prefers_real() {
        assert_eq!(on_send_tick(true), SendKind::Real);
        assert_eq!(on_send_tick(false), SendKind::DropCover);
    }

    #[test]
    fn erlang_quantiles_match_known_values() {
        let s = Duration::from_secs(1);
        // One exponential: the q-quantile is -ln(1-q).
        let q1 = erlang_quantile(1, s, 0.99).as_secs_f64();
        assert!((q1 - 4.60517).abs() < 1e-3, "{q1}");
        // Erlang(6): the median is about 5.6704.
        let med = erlang_quantile(6, s, 0.5).as_secs_f64();
        assert!((med - 5.6704).abs() < 1e-3, "{med}");
        // Simulated check of the 0.999 quantile.
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let q = erlang_quantile(6, s, 0.999);
        let n = 200_000;
        let over = (0..n)
            .filter(|_| {
                (0..6)
                    .map(|_| sample_exponential(&mut rng, s))
                    .sum::<Duration>()
                    > q
            })
            .count();
        let frac = over as f64 / n as f64;
        assert!((frac - 0.001).abs() < 0.0005, "{frac}");
        assert_eq!(erlang_quantile(0, s, 0.5), Duration::ZERO);
    }

    #[test]
    fn the_timeout_follows_the_measured_round_trip() {
        let base = Duration::from_secs(2);
        let mut r = RttEstimator::default();
        assert_eq!(r.timeout(base), base, "no sample: the base");
        for _ in 0..50 {
            r.sample(Duration::from_millis(500));
        }
        assert_eq!(r.timeout(base), base, "a short round trip: the base");
        for _ in 0..50 {
            r.sample(Duration::from_secs(6));
        }
        let t = r.timeout(base);
        assert!(
            t > Duration::from_secs(6) && t < Duration::from_secs(8),
            "{t:?}"
        );
    }

    #[test]
    fn the_window_grows_with_acks_and_halves_once_per_loss_burst() {
        let mut w = CongestionWindow::new(1000);
        assert_eq!(w.allowed(), 32);
        for _ in 0..100 {
            w.acked();
        }
        assert_eq!(w.allowed(), 132, "slow start: one per acknowledgement");
        let t = Duration::from_secs(10);
        w.timed_out(t, t + Duration::from_secs(1));
        assert_eq!(w.allowed(), 66);
        // Tries sent before the cut do not cut again.
        w.timed_out(t, t + Duration::from_secs(2));
        assert_eq!(w.allowed(), 66);
        // Past the threshold: about one per window of acknowledgements.
        for _ in 0..70 {
            w.acked();
        }
        assert_eq!(w.allowed(), 67);
        let mut small = CongestionWindow::new(1000);
        for i in 0..20 {
            small.timed_out(Duration::from_secs(100 + i), Duration::from_secs(101 + i));
        }
        assert_eq!(small.allowed(), 4, "never below the floor");
        assert_eq!(CongestionWindow::new(10).allowed(), 10, "the ceiling");
    }

    #[test]
    fn epochs() {
        assert_eq!(epoch_at(3599, 3600), 0);
        assert_eq!(epoch_at(3600, 3600), 1);
        assert_eq!(epoch_start(2, 3600), 7200);
        assert_eq!(epoch_at(5, 0), 0);
    }
}
