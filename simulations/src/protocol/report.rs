//! What a protocol-model run reports.

use std::collections::HashSet;
use std::fmt;
use std::time::Duration;

use murmur_wire::packet::MIX_LAYERS;
use serde::Serialize;

use super::params::ProtocolParams;
use super::world::World;
use crate::report::{LatencyStats, latency_stats};

/// The result of one protocol-model run. Values without samples are NaN
/// (`null` in JSON).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ProtocolReport {
    /// The parameters the run used.
    pub params: ProtocolParams,
    /// Quantities derived from the parameters.
    pub model: ProtocolModel,
    /// From a message being queued at its sender's core to its recipient's
    /// core reporting it complete, seconds, over completed messages.
    pub message_latency: LatencyStats,
    /// From a message being queued to its sender's core reporting every
    /// fragment acknowledged, seconds, over delivered messages.
    pub delivery_latency: LatencyStats,
    /// What became of the messages.
    pub messages: MessageCounts,
    /// Fragments, tries and retransmissions.
    pub fragments: FragmentCounts,
    /// Packets the clients sent, by kind.
    pub packets: PacketCounts,
    /// What the network did with the packets.
    pub network: NetworkCounts,
    /// Which mixes the cores avoid at the end, against which are dead.
    pub suspicion: SuspicionReport,
    /// Every mix.
    pub mixes: Vec<ProtocolMix>,
    /// Speed of the run (the only part that differs between two runs of
    /// the same parameters).
    pub perf: ProtocolPerf,
}

/// Quantities derived from the parameters.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ProtocolModel {
    /// Mixes (3 × width).
    pub mixes: usize,
    /// Dead mixes per layer.
    pub dead_per_layer: Vec<usize>,
    /// The acknowledgement timeout the cores use (first try), seconds.
    pub ack_timeout: f64,
    /// Mean latencies of a one-fragment message with no loss, in closed
    /// form (NaN for several fragments, or a send stream slower than the
    /// messages).
    pub expected: Expected,
}

/// Closed-form means for one-fragment messages and no loss, seconds.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Expected {
    /// The wait in the sender's outbox for a send tick: messages arrive at
    /// `rate` and ticks at λ, both Poisson, so the outbox is an M/M/1
    /// queue and the mean wait is `1/(λ − rate)` (0 without cover).
    pub outbox_wait: f64,
    /// The mean of one mix's delay: exponential of mean μ clamped at the
    /// maximum, `μ(1 − e^(−max/μ))`.
    pub mix_delay: f64,
    /// The wait for the recipient's fetch and its answer: a deposit lands
    /// at a uniform moment of the fetch cycle (interval + round trip) and
    /// the answer takes half a round trip, `interval/2 + rtt`.
    pub fetch_wait: f64,
    /// Message latency: outbox + 3 mix delays + 4 links + fetch wait.
    pub message_latency: f64,
    /// Delivery latency: outbox + 6 mix delays + 8 links (there and back)
    /// + the sender's fetch wait for its acknowledgement queue.
    pub delivery_latency: f64,
}

/// What became of the messages.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MessageCounts {
    /// Created (in `[0, duration)`).
    pub created: u64,
    /// Every fragment acknowledged, as the sender's core reported.
    pub delivered: u64,
    /// Complete at the recipient, as the recipient's core reported.
    pub completed: u64,
    /// Given up by the sender's core (a fragment ran out of tries).
    pub failed: u64,
    /// Failed at the sender but complete at the recipient (every fragment
    /// arrived; acknowledgements were lost).
    pub failed_but_completed: u64,
    /// Neither failed nor both delivered and complete when the run stopped.
    pub unsettled: u64,
    /// Extra completions of a message already complete (should be 0).
    pub duplicate_completions: u64,
    /// Completions of a message nobody sent (should be 0).
    pub unknown_completions: u64,
}

/// Fragments, tries and retransmissions.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FragmentCounts {
    /// Fragments queued (messages × fragments).
    pub queued: u64,
    /// First tries sent.
    pub first_tries: u64,
    /// Tries sent again after a timeout.
    pub retransmissions: u64,
    /// Retransmissions per queued fragment.
    pub retransmissions_per_fragment: f64,
    /// Fragments acknowledged.
    pub acked: u64,
    /// Fetched entries left unopened (acknowledgements of a try whose
    /// fragment another try's acknowledgement had settled).
    pub unopened_entries: u64,
    /// Partial messages discarded for expiry.
    pub partials_discarded: u64,
}

/// Packets the clients sent, by kind, in all and per client per second
/// (over the time each client was online).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PacketCounts {
    /// Client-seconds online.
    pub client_seconds: f64,
    /// Real packets, first tries.
    pub real: u64,
    /// Real packets, retransmissions.
    pub retry: u64,
    /// Drop cover.
    pub drop: u64,
    /// Loop cover.
    pub loops: u64,
    /// Loop cover that came back.
    pub loops_returned: u64,
    /// Real first tries per client per second.
    pub real_rate: f64,
    /// Retransmissions per client per second.
    pub retry_rate: f64,
    /// Drop cover per client per second.
    pub drop_rate: f64,
    /// Loop cover per client per second.
    pub loop_rate: f64,
    /// Real, retry and drop per client per second: the send stream, λ in
    /// the consensus.
    pub send_stream_rate: f64,
}

/// What the network did with packets.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct NetworkCounts {
    /// Packets put on a first link (client packets and acknowledgements).
    pub injected: u64,
    /// Lost to the per-packet loss probability.
    pub lost: u64,
    /// Dropped by dead mixes.
    pub dropped_at_dead: u64,
    /// Reached their provider.
    pub at_providers: u64,
    /// Deposits stored.
    pub deposits: u64,
    /// Deposits of a fragment already stored (acknowledged again, not
    /// stored again).
    pub duplicate_deposits: u64,
    /// Acknowledgements the providers sent.
    pub acks_sent: u64,
    /// Drop cover discarded by providers.
    pub drop_discarded: u64,
    /// Packets for a queue their provider does not hold (should be 0).
    pub misrouted: u64,
    /// Fetches the cores asked for.
    pub fetches: u64,
}

/// A mix, by layer and index in the consensus's layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct MixRef {
    /// Layer, from 0.
    pub layer: usize,
    /// Index in the layer, from 0.
    pub index: usize,
}

/// Which mixes the cores avoid at the end of the run.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SuspicionReport {
    /// The dead mixes.
    pub dead: Vec<MixRef>,
    /// Clients whose core avoids exactly the dead mixes.
    pub clients_exact: usize,
    /// Clients whose core avoids every dead mix.
    pub clients_all_dead: usize,
    /// Mean over clients of the fraction of dead mixes the core avoids (NaN
    /// with none dead).
    pub dead_avoided_fraction: f64,
    /// Mean over clients of the live mixes the core avoids.
    pub live_avoided_mean: f64,
    /// Live mixes at least one core avoids.
    pub live_avoided_by_any: usize,
    /// Mixes more than half of the cores avoid.
    pub avoided_by_majority: Vec<MixRef>,
}

/// One mix.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ProtocolMix {
    /// Layer, from 0.
    pub layer: usize,
    /// Index in the layer, from 0.
    pub index: usize,
    /// Whether it drops everything.
    pub dead: bool,
    /// Packets it forwarded.
    pub traversals: u64,
    /// Packets it dropped.
    pub dropped: u64,
    /// Cores avoiding it at the end.
    pub avoided_by: usize,
}

/// Speed of the run.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ProtocolPerf {
    /// Events processed.
    pub events: u64,
    /// Virtual time at which the run stopped, seconds.
    pub end_time: f64,
    /// Wall-clock seconds.
    pub wall_seconds: f64,
    /// Virtual seconds per wall-clock second.
    pub speedup: f64,
}

/// The acknowledgement timeout the cores use: the parameter, or the core's
/// default from the consensus the run builds.
pub(crate) fn ack_timeout(p: &ProtocolParams) -> Duration {
    match p.ack_timeout {
        Some(t) => Duration::from_secs_f64(t),
        None => murmur_wire::policy::ack_timeout(&p.network_params(), p.fetch_interval_duration()),
    }
}

fn expected(p: &ProtocolParams) -> Expected {
    let mu = p.mean_delay_us() as f64 / 1e6;
    let max = p.max_delay_us() as f64 / 1e6;
    let mix_delay = if mu > 0.0 {
        mu * (1.0 - (-max / mu).exp())
    } else {
        0.0
    };
    let outbox_wait = if p.fragments != 1 {
        f64::NAN
    } else if p.cover_rate == 0.0 {
        0.0
    } else if p.cover_rate > p.rate {
        1.0 / (p.cover_rate - p.rate)
    } else {
        f64::NAN
    };
    let link = p.link_delay.mean();
    let fetch_wait = p.fetch_interval / 2.0 + p.fetch_rtt;
    let layers = MIX_LAYERS as f64;
    Expected {
        outbox_wait,
        mix_delay,
        fetch_wait,
        message_latency: outbox_wait + layers * mix_delay + (layers + 1.0) * link + fetch_wait,
        delivery_latency: outbox_wait
            + 2.0 * layers * mix_delay
            + 2.0 * (layers + 1.0) * link
            + fetch_wait,
    }
}

fn ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

pub(crate) fn build(w: &World, ack_timeout: Duration, wall_seconds: f64) -> ProtocolReport {
    let p = &w.p;
    let width = p.width;
    let mix_ref = |i: usize| MixRef {
        layer: i / width,
        index: i % width,
    };

    // Messages, in creation order.
    let mut completed_ns = Vec::new();
    let mut delivered_ns = Vec::new();
    let mut messages = MessageCounts {
        created: w.order.len() as u64,
        delivered: 0,
        completed: 0,
        failed: 0,
        failed_but_completed: 0,
        unsettled: w.unsettled(),
        duplicate_completions: 0,
        unknown_completions: w.counters.unknown_completions,
    };
    for id in &w.order {
        let Some(m) = w.messages.get(id) else {
            continue;
        };
        if let Some(t) = m.completed {
            messages.completed += 1;
            completed_ns.push(ns(t.saturating_sub(m.created)));
        }
        if let Some(t) = m.delivered {
            messages.delivered += 1;
            delivered_ns.push(ns(t.saturating_sub(m.created)));
        }
        if m.failed.is_some() {
            messages.failed += 1;
            if m.completed.is_some() {
                messages.failed_but_completed += 1;
            }
        }
        messages.duplicate_completions += u64::from(m.completions.saturating_sub(1));
    }

    // Packets and fragments.
    let stop = w.now;
    let mut packets = PacketCounts {
        client_seconds: 0.0,
        real: 0,
        retry: 0,
        drop: 0,
        loops: 0,
        loops_returned: 0,
        real_rate: 0.0,
        retry_rate: 0.0,
        drop_rate: 0.0,
        loop_rate: 0.0,
        send_stream_rate: 0.0,
    };
    let mut unopened = 0;
    for c in &w.clients {
        if let Some(s) = c.started {
            packets.client_seconds += stop.saturating_sub(s).as_secs_f64();
        }
        packets.real += c.sent.real;
        packets.retry += c.sent.retries;
        packets.drop += c.sent.drop;
        packets.loops += c.sent.loops;
        let stats = c.core.stats();
        packets.loops_returned += stats.loops_returned;
        unopened += stats.unopened_entries;
    }
    let per = |n: u64| {
        if packets.client_seconds > 0.0 {
            n as f64 / packets.client_seconds
        } else {
            f64::NAN
        }
    };
    packets.real_rate = per(packets.real);
    packets.retry_rate = per(packets.retry);
    packets.drop_rate = per(packets.drop);
    packets.loop_rate = per(packets.loops);
    packets.send_stream_rate = per(packets.real + packets.retry + packets.drop);
    let queued = messages.created * u64::from(p.fragments);
    let fragments = FragmentCounts {
        queued,
        first_tries: packets.real,
        retransmissions: packets.retry,
        retransmissions_per_fragment: if queued > 0 {
            packets.retry as f64 / queued as f64
        } else {
            f64::NAN
        },
        acked: w.counters.fragments_acked,
        unopened_entries: unopened,
        partials_discarded: w.counters.partials_discarded,
    };

    // Suspicion: each core's avoided mixes, as the world numbers them.
    let n_mixes = w.net.mixes.len();
    let dead: Vec<usize> = (0..n_mixes).filter(|&i| w.dead[i]).collect();
    let dead_set: HashSet<usize> = dead.iter().copied().collect();
    let mut avoided_by = vec![0usize; n_mixes];
    let (mut exact, mut all_dead) = (0, 0);
    let (mut dead_frac_sum, mut live_sum) = (0.0, 0usize);
    for c in &w.clients {
        let avoided: HashSet<usize> = c
            .core
            .suspected(w.now)
            .iter()
            .filter_map(|id| w.net.mix(id).map(|m| m as usize))
            .collect();
        for &m in &avoided {
            avoided_by[m] += 1;
        }
        let dead_avoided = avoided.intersection(&dead_set).count();
        let live = avoided.len() - dead_avoided;
        if dead_avoided == dead.len() {
            all_dead += 1;
            if live == 0 {
                exact += 1;
            }
        }
        if !dead.is_empty() {
            dead_frac_sum += dead_avoided as f64 / dead.len() as f64;
        }
        live_sum += live;
    }
    let n_clients = w.clients.len().max(1) as f64;
    let suspicion = SuspicionReport {
        dead: dead.iter().map(|&i| mix_ref(i)).collect(),
        clients_exact: exact,
        clients_all_dead: all_dead,
        dead_avoided_fraction: if dead.is_empty() {
            f64::NAN
        } else {
            dead_frac_sum / n_clients
        },
        live_avoided_mean: live_sum as f64 / n_clients,
        live_avoided_by_any: (0..n_mixes)
            .filter(|&i| !w.dead[i] && avoided_by[i] > 0)
            .count(),
        avoided_by_majority: (0..n_mixes)
            .filter(|&i| 2 * avoided_by[i] > w.clients.len())
            .map(mix_ref)
            .collect(),
    };
    let mixes = (0..n_mixes)
        .map(|i| ProtocolMix {
            layer: i / width,
            index: i % width,
            dead: w.dead[i],
            traversals: w.traversals[i],
            dropped: w.dropped[i],
            avoided_by: avoided_by[i],
        })
        .collect();
    let c = &w.counters;
    let end_time = stop.as_secs_f64();
    ProtocolReport {
        params: p.clone(),
        model: ProtocolModel {
            mixes: n_mixes,
            dead_per_layer: (0..MIX_LAYERS)
                .map(|l| dead.iter().filter(|&&i| i / width == l).count())
                .collect(),
            ack_timeout: ack_timeout.as_secs_f64(),
            expected: expected(p),
        },
        message_latency: latency_stats(&completed_ns),
        delivery_latency: latency_stats(&delivered_ns),
        messages,
        fragments,
        packets,
        network: NetworkCounts {
            injected: c.injected,
            lost: c.lost,
            dropped_at_dead: c.dropped_at_dead,
            at_providers: c.at_providers,
            deposits: c.deposits,
            duplicate_deposits: c.duplicate_deposits,
            acks_sent: c.acks_sent,
            drop_discarded: c.drop_discarded,
            misrouted: c.misrouted,
            fetches: c.fetches,
        },
        suspicion,
        mixes,
        perf: ProtocolPerf {
            events: w.events_run,
            end_time,
            wall_seconds,
            speedup: if wall_seconds > 0.0 {
                end_time / wall_seconds
            } else {
                f64::NAN
            },
        },
    }
}

fn s(x: f64) -> String {
    if x.is_nan() {
        "-".to_owned()
    } else if x < 1.0 {
        format!("{:.0} ms", x * 1e3)
    } else {
        format!("{x:.2} s")
    }
}

fn mixes_list(m: &[MixRef]) -> String {
    if m.is_empty() {
        return "none".to_owned();
    }
    m.iter()
        .map(|r| format!("{}.{}", r.layer, r.index))
        .collect::<Vec<_>>()
        .join(" ")
}

impl fmt::Display for ProtocolReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = &self.params;
        let m = &self.model;
        writeln!(
            f,
            "protocol model: 3 layers × {} mixes ({} dead), {} providers, {} client cores; {} fragment(s) per message",
            p.width,
            self.suspicion.dead.len(),
            p.providers,
            p.clients,
            p.fragments
        )?;
        writeln!(
            f,
            "consensus: λ = {}/s, λ_L = {}/s, mean delay {} (clamp {}); links {} s; fetch every {} s (round trip {}); ack timeout {}, {} tries; loss {}",
            p.cover_rate,
            p.loop_rate,
            s(p.mean_delay),
            s(p.max_delay()),
            p.link_delay,
            p.fetch_interval,
            s(p.fetch_rtt),
            s(m.ack_timeout),
            p.max_tries,
            p.loss
        )?;
        let ms = &self.messages;
        writeln!(
            f,
            "messages: {} created at {}/s per client over {} s; {} delivered, {} complete, {} failed ({} of them complete anyway), {} unsettled",
            ms.created,
            p.rate,
            p.duration,
            ms.delivered,
            ms.completed,
            ms.failed,
            ms.failed_but_completed,
            ms.unsettled
        )?;
        writeln!(f)?;
        for (name, l, e) in [
            (
                "message latency (queued → complete at the recipient)",
                &self.message_latency,
                m.expected.message_latency,
            ),
            (
                "delivery latency (queued → acknowledged at the sender)",
                &self.delivery_latency,
                m.expected.delivery_latency,
            ),
        ] {
            writeln!(
                f,
                "{name}, {} messages: mean {}, p50 {}, p95 {}, p99 {}, max {}",
                l.count,
                s(l.mean),
                s(l.p50),
                s(l.p95),
                s(l.p99),
                s(l.max)
            )?;
            if !e.is_nan() {
                writeln!(
                    f,
                    "  closed form for one fragment and no loss: mean {}",
                    s(e)
                )?;
            }
        }
        let fr = &self.fragments;
        writeln!(
            f,
            "fragments: {} queued, {} retransmissions ({:.3} per fragment), {} acknowledged, {} duplicate deposits",
            fr.queued,
            fr.retransmissions,
            fr.retransmissions_per_fragment,
            fr.acked,
            self.network.duplicate_deposits
        )?;
        let pk = &self.packets;
        writeln!(
            f,
            "packets per client per second: real {:.4}, retry {:.4}, drop {:.4}, loop {:.4}; send stream {:.4} (λ = {}), loops returned {} of {}",
            pk.real_rate,
            pk.retry_rate,
            pk.drop_rate,
            pk.loop_rate,
            pk.send_stream_rate,
            p.cover_rate,
            pk.loops_returned,
            pk.loops
        )?;
        let n = &self.network;
        writeln!(
            f,
            "network: {} packets injected, {} lost, {} dropped by dead mixes, {} reached providers, {} misrouted",
            n.injected, n.lost, n.dropped_at_dead, n.at_providers, n.misrouted
        )?;
        let su = &self.suspicion;
        writeln!(
            f,
            "suspicion: dead {}; avoided by a majority of cores {}; cores avoiding exactly the dead {}/{}, every dead {}/{}; live mixes avoided by some core {} (mean {:.2} per core)",
            mixes_list(&su.dead),
            mixes_list(&su.avoided_by_majority),
            su.clients_exact,
            p.clients,
            su.clients_all_dead,
            p.clients,
            su.live_avoided_by_any,
            su.live_avoided_mean
        )?;
        write!(
            f,
            "run: {} events, {:.0} s virtual in {:.2} s wall ({:.0}× real time)",
            self.perf.events, self.perf.end_time, self.perf.wall_seconds, self.perf.speedup
        )
    }
}
