//! What a run reports: latency distributions, the anonymity estimate, per-mix
//! pools and entropies, counters. Serializable (one JSON object) and
//! printable as a human summary.

use std::fmt;

use serde::Serialize;

use crate::engine::Collected;
use crate::params::Params;

const NS: f64 = 1e9;

/// Levels of the latency quantile tables.
pub const QUANTILES: &[f64] = &[0.01, 0.05, 0.10, 0.25, 0.50, 0.75, 0.90, 0.95, 0.99, 0.999];

/// Bins of the latency histograms (over `[0, p99.9]`).
pub const HISTOGRAM_BINS: usize = 50;

/// The result of one run. Values that have no samples are NaN (`null` in
/// JSON).
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// The parameters the run used.
    pub params: Params,
    /// Quantities derived from the parameters.
    pub model: Model,
    /// End-to-end latency of measured real messages: from creation (the
    /// user's send) to delivery at the provider, so including the wait in
    /// the client's outbox for a send tick. Seconds.
    pub latency: LatencyStats,
    /// Latency from the packet leaving its client to delivery. Seconds.
    pub network_latency: LatencyStats,
    /// The anonymity estimate over target messages (see the crate docs).
    pub anonymity: EntropyStats,
    /// Per layer: averages over its mixes.
    pub layers: Vec<LayerStats>,
    /// Per mix.
    pub mixes: Vec<MixStats>,
    /// Every mix's pool size, sampled over `[0, duration)`.
    pub pool_series: PoolSeries,
    /// Event counts.
    pub counters: Counters,
    /// How fast the run went (wall clock; the only field that differs
    /// between two runs with the same parameters).
    pub perf: Perf,
}

/// Quantities derived from the parameters.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Model {
    /// `L × W`.
    pub mixes: usize,
    /// Mixes the adversary controls.
    pub compromised_mixes: usize,
    /// The per-hop delay clamp in effect, seconds.
    pub max_delay: f64,
    /// The pool sampling interval in effect, seconds.
    pub sample_interval: f64,
    /// Packets per second entering the network.
    pub packet_rate: f64,
    /// Expected pool of one mix by Little's law: packet rate / W × mean
    /// delay.
    pub expected_pool: f64,
    /// Mean latency of the path alone: `L × mean_delay + (L+1) × mean link
    /// latency`, seconds (ignores the clamp and the outbox wait).
    pub expected_network_latency: f64,
}

/// A latency distribution, seconds.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LatencyStats {
    /// Messages measured.
    pub count: usize,
    /// Mean.
    pub mean: f64,
    /// Standard deviation.
    pub std: f64,
    /// Smallest.
    pub min: f64,
    /// Median.
    pub p50: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest.
    pub max: f64,
    /// Quantiles at [`QUANTILES`] (linear interpolation between order
    /// statistics).
    pub quantiles: Vec<Quantile>,
    /// Histogram over `[0, p99.9]`.
    pub histogram: Histogram,
}

/// One quantile.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Quantile {
    /// Level in (0, 1).
    pub q: f64,
    /// Value, seconds.
    pub value: f64,
}

/// Equal-width bins from 0.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Histogram {
    /// Width of each bin, seconds; bin `i` covers `[i·w, (i+1)·w)`.
    pub bin_width: f64,
    /// Samples per bin.
    pub counts: Vec<u64>,
    /// Samples beyond the last bin.
    pub overflow: u64,
}

/// The distribution of the anonymity estimate over targets, bits.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EntropyStats {
    /// Targets followed to the end (the statistics are over these).
    pub targets: usize,
    /// Targets started.
    pub started: usize,
    /// Targets whose mass had not drained when the run stopped.
    pub unfinished: usize,
    /// Mean.
    pub mean: f64,
    /// Standard deviation.
    pub std: f64,
    /// Smallest.
    pub min: f64,
    /// 5th percentile.
    pub p5: f64,
    /// Median.
    pub p50: f64,
    /// Largest.
    pub max: f64,
    /// The most probability mass any finished target lost to truncation
    /// (shares below the cutoff, see the crate docs).
    pub max_truncated: f64,
}

/// Averages over the mixes of one layer.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LayerStats {
    /// Layer, from 0.
    pub layer: usize,
    /// Mean pool size over the layer's mixes.
    pub mean_pool: f64,
    /// Mean per-mix entropy over the layer's honest mixes, bits.
    pub mean_entropy: f64,
}

/// One mix.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MixStats {
    /// Layer, from 0.
    pub layer: usize,
    /// Index in the layer, from 0.
    pub index: usize,
    /// Whether the adversary controls it.
    pub compromised: bool,
    /// Time-averaged pool size over the measured window.
    pub mean_pool: f64,
    /// Arrivals per second over the measured window.
    pub arrival_rate: f64,
    /// Per-mix entropy (one mix alone, see the crate docs): mean over
    /// probes, bits. NaN for a compromised mix.
    pub entropy_mean: f64,
    /// Standard deviation over probes, bits.
    pub entropy_std: f64,
    /// Smallest over probes, bits.
    pub entropy_min: f64,
    /// Probes finished.
    pub probes: u64,
}

/// Pool sizes over time.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PoolSeries {
    /// Sample times, seconds.
    pub times: Vec<f64>,
    /// `pools[s][m]`: the pool of mix `m` (layer-major: `layer × W +
    /// index`) at `times[s]`.
    pub pools: Vec<Vec<u32>>,
}

/// Event counts.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Counters {
    /// Events processed.
    pub events: u64,
    /// Mix traversals (a packet leaving a mix).
    pub traversals: u64,
    /// Real messages created in the measured window.
    pub messages: u64,
    /// Measured messages not delivered when the run stopped.
    pub measured_undelivered: u64,
    /// Real packets sent.
    pub sent_real: u64,
    /// Drop-cover packets sent.
    pub sent_drop: u64,
    /// Loop-cover packets sent.
    pub sent_loop: u64,
    /// Packets delivered to providers.
    pub delivered: u64,
    /// Packets delivered to each provider.
    pub delivered_per_provider: Vec<u64>,
    /// Virtual time at which the run stopped, seconds (after `duration`
    /// while measured messages and targets drain).
    pub end_time: f64,
}

/// Speed of the run.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Perf {
    /// Wall-clock seconds.
    pub wall_seconds: f64,
    /// Mix traversals per wall-clock second.
    pub traversals_per_second: f64,
}

/// One mix's raw results, from the engine.
pub(crate) struct MixCollected {
    pub layer: usize,
    pub index: usize,
    pub compromised: bool,
    pub area_packet_ns: u128,
    pub arrivals: u64,
    pub probes: u64,
    pub probe_sum: f64,
    pub probe_sumsq: f64,
    pub probe_min: f64,
}

/// The `q` quantile of sorted `xs` (linear interpolation between order
/// statistics; NaN if empty).
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    match sorted.len() {
        0 => f64::NAN,
        n => {
            let pos = q.clamp(0.0, 1.0) * (n - 1) as f64;
            let lo = pos.floor() as usize;
            let hi = pos.ceil() as usize;
            let frac = pos - lo as f64;
            sorted[lo] + (sorted[hi] - sorted[lo]) * frac
        }
    }
}

fn mean_std(xs: &[f64]) -> (f64, f64) {
    if xs.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let var = xs.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n;
    (mean, var.sqrt())
}

pub(crate) fn latency_stats(ns: &[u64]) -> LatencyStats {
    let mut xs: Vec<f64> = ns.iter().map(|&v| v as f64 / NS).collect();
    xs.sort_by(f64::total_cmp);
    let (mean, std) = mean_std(&xs);
    let top = quantile(&xs, 0.999);
    let bin_width = if top > 0.0 {
        top / HISTOGRAM_BINS as f64
    } else {
        f64::NAN
    };
    let mut counts = vec![0u64; HISTOGRAM_BINS];
    let mut overflow = 0;
    if bin_width.is_finite() {
        for &x in &xs {
            match counts.get_mut((x / bin_width) as usize) {
                Some(c) => *c += 1,
                None => overflow += 1,
            }
        }
    }
    LatencyStats {
        count: xs.len(),
        mean,
        std,
        min: xs.first().copied().unwrap_or(f64::NAN),
        p50: quantile(&xs, 0.5),
        p95: quantile(&xs, 0.95),
        p99: quantile(&xs, 0.99),
        max: xs.last().copied().unwrap_or(f64::NAN),
        quantiles: QUANTILES
            .iter()
            .map(|&q| Quantile {
                q,
                value: quantile(&xs, q),
            })
            .collect(),
        histogram: Histogram {
            bin_width,
            counts,
            overflow,
        },
    }
}

fn entropy_stats(c: &Collected) -> EntropyStats {
    let raw = &c.entropies;
    let mut xs = raw.to_vec();
    xs.sort_by(f64::total_cmp);
    let (mean, std) = mean_std(&xs);
    EntropyStats {
        targets: xs.len(),
        started: c.targets_started,
        unfinished: c.targets_unfinished,
        max_truncated: c.max_truncated,
        mean,
        std,
        min: xs.first().copied().unwrap_or(f64::NAN),
        p5: quantile(&xs, 0.05),
        p50: quantile(&xs, 0.5),
        max: xs.last().copied().unwrap_or(f64::NAN),
    }
}

fn nan_mean(xs: impl Iterator<Item = f64>) -> f64 {
    let (sum, n) = xs
        .filter(|x| !x.is_nan())
        .fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    if n == 0 { f64::NAN } else { sum / n as f64 }
}

pub(crate) fn build(params: &Params, c: Collected, wall_seconds: f64) -> Report {
    let window = params.duration - params.warmup;
    let mixes: Vec<MixStats> = c
        .mixes
        .iter()
        .map(|m| {
            let (entropy_mean, entropy_std, entropy_min) = if m.probes == 0 {
                (f64::NAN, f64::NAN, f64::NAN)
            } else {
                let n = m.probes as f64;
                let mean = m.probe_sum / n;
                let var = (m.probe_sumsq / n - mean * mean).max(0.0);
                (mean, var.sqrt(), m.probe_min)
            };
            MixStats {
                layer: m.layer,
                index: m.index,
                compromised: m.compromised,
                mean_pool: m.area_packet_ns as f64 / NS / window,
                arrival_rate: m.arrivals as f64 / window,
                entropy_mean,
                entropy_std,
                entropy_min,
                probes: m.probes,
            }
        })
        .collect();
    let layers = (0..params.layers)
        .map(|l| {
            let of_layer = || mixes.iter().filter(move |m| m.layer == l);
            LayerStats {
                layer: l,
                mean_pool: nan_mean(of_layer().map(|m| m.mean_pool)),
                mean_entropy: nan_mean(of_layer().map(|m| m.entropy_mean)),
            }
        })
        .collect();
    let n_mixes = params.mixes();
    let pools = if n_mixes == 0 {
        Vec::new()
    } else {
        c.samples.chunks(n_mixes).map(<[u32]>::to_vec).collect()
    };
    let packet_rate = params.packet_rate();
    let report_perf = Perf {
        wall_seconds,
        traversals_per_second: if wall_seconds > 0.0 {
            c.counters.traversals as f64 / wall_seconds
        } else {
            f64::NAN
        },
    };
    let anonymity = entropy_stats(&c);
    let mut counters = c.counters;
    counters.measured_undelivered = c.measured_undelivered;
    counters.end_time = c.end_time;
    Report {
        params: params.clone(),
        model: Model {
            mixes: n_mixes,
            compromised_mixes: params.compromised_mixes(),
            max_delay: params.max_delay(),
            sample_interval: params.sample_interval(),
            packet_rate,
            expected_pool: packet_rate / params.width as f64 * params.mean_delay,
            expected_network_latency: params.layers as f64 * params.mean_delay
                + (params.layers + 1) as f64 * params.link_delay.mean(),
        },
        latency: latency_stats(&c.latencies),
        network_latency: latency_stats(&c.network_latencies),
        anonymity,
        layers,
        mixes,
        pool_series: PoolSeries {
            times: c.sample_times,
            pools,
        },
        counters,
        perf: report_perf,
    }
}

fn ms(x: f64) -> String {
    if x.is_nan() {
        "-".to_owned()
    } else {
        format!("{:.1} ms", x * 1e3)
    }
}

fn bits(x: f64) -> String {
    if x.is_nan() {
        "-".to_owned()
    } else {
        format!("{x:.2}")
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = &self.params;
        writeln!(
            f,
            "network: {} layers × {} mixes ({} compromised), {} providers, {} clients",
            p.layers, p.width, self.model.compromised_mixes, p.providers, p.clients
        )?;
        writeln!(
            f,
            "traffic: {} msg/s per client, send stream λ = {}/s, loop λ_L = {}/s ({:.0} packets/s in all)",
            p.rate, p.cover_rate, p.loop_rate, self.model.packet_rate
        )?;
        writeln!(
            f,
            "delays: mean {} per hop (clamp {}), link {} s; measured [{}, {}) s of virtual time, seed {}",
            ms(p.mean_delay),
            ms(self.model.max_delay),
            p.link_delay,
            p.warmup,
            p.duration,
            p.seed
        )?;
        writeln!(f)?;
        for (name, l) in [
            ("end-to-end latency", &self.latency),
            ("network latency", &self.network_latency),
        ] {
            writeln!(
                f,
                "{name} ({} messages): mean {}, p50 {}, p95 {}, p99 {}, max {}",
                l.count,
                ms(l.mean),
                ms(l.p50),
                ms(l.p95),
                ms(l.p99),
                ms(l.max)
            )?;
        }
        writeln!(
            f,
            "  (path alone, expected: {})",
            ms(self.model.expected_network_latency)
        )?;
        write!(f, "  end-to-end quantiles:")?;
        for q in &self.latency.quantiles {
            write!(f, " p{}={}", q.q * 100.0, ms(q.value))?;
        }
        writeln!(f)?;
        let a = &self.anonymity;
        writeln!(
            f,
            "anonymity ({} targets, {} unfinished): entropy mean {} bits, std {}, min {}, p5 {}, p50 {}",
            a.targets,
            a.unfinished,
            bits(a.mean),
            bits(a.std),
            bits(a.min),
            bits(a.p5),
            bits(a.p50)
        )?;
        for l in &self.layers {
            writeln!(
                f,
                "layer {}: mean pool {:.1} packets (Little's law: {:.1}), per-mix entropy {} bits",
                l.layer,
                l.mean_pool,
                self.model.expected_pool,
                bits(l.mean_entropy)
            )?;
        }
        if self.mixes.len() <= 32 {
            for m in &self.mixes {
                writeln!(
                    f,
                    "  mix {}.{}{}: mean pool {:.1}, {:.0} arrivals/s, entropy {} bits ({} probes)",
                    m.layer,
                    m.index,
                    if m.compromised { " (compromised)" } else { "" },
                    m.mean_pool,
                    m.arrival_rate,
                    bits(m.entropy_mean),
                    m.probes
                )?;
            }
        }
        let c = &self.counters;
        writeln!(
            f,
            "packets: {} real, {} drop, {} loop sent; {} delivered; {} undelivered measured messages",
            c.sent_real, c.sent_drop, c.sent_loop, c.delivered, c.measured_undelivered
        )?;
        write!(
            f,
            "run: {} events, {} mix traversals, {:.0} s virtual in {:.2} s wall ({:.2} M traversals/s)",
            c.events,
            c.traversals,
            c.end_time,
            self.perf.wall_seconds,
            self.perf.traversals_per_second / 1e6
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate() {
        let xs = [1.0, 2.0, 3.0, 4.0, 5.0];
        assert_eq!(quantile(&xs, 0.0), 1.0);
        assert_eq!(quantile(&xs, 0.5), 3.0);
        assert_eq!(quantile(&xs, 1.0), 5.0);
        assert!((quantile(&xs, 0.1) - 1.4).abs() < 1e-12);
        assert!(quantile(&[], 0.5).is_nan());
    }

    #[test]
    fn latency_histogram_counts_everything() {
        let ns: Vec<u64> = (1..=1000).map(|i| i * 1_000_000).collect();
        let s = latency_stats(&ns);
        assert_eq!(s.count, 1000);
        assert_eq!(
            s.histogram.counts.iter().sum::<u64>() + s.histogram.overflow,
            1000
        );
        assert!((s.mean - 0.5005).abs() < 1e-9);
        assert!(s.min == 0.001 && s.max == 1.0);
    }
}
