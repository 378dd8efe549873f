#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
//! The simulator against closed forms: Little's law, the latency
//! distribution of a path, the M/M/1 outbox, the entropy asymptote of one
//! Poisson mix, and determinism.

use murmur_sim::{LinkDelay, Params, simulate, simulate_with_samples};

/// One Poisson mix: `clients × rate` arrivals per second, no cover.
fn single_mix(arrivals_per_s: f64, mean_delay: f64) -> Params {
    Params {
        layers: 1,
        width: 1,
        providers: 1,
        clients: 100,
        rate: arrivals_per_s / 100.0,
        cover_rate: 0.0,
        loop_rate: 0.0,
        mean_delay,
        max_delay: Some(mean_delay * 40.0),
        link_delay: LinkDelay::Fixed(0.0),
        duration: 30.0,
        warmup: 5.0,
        targets: 100,
        ..Params::default()
    }
}

#[test]
fn littles_law_single_mix() {
    let p = single_mix(1000.0, 0.05);
    let r = simulate(&p).unwrap();
    let pool = r.mixes[0].mean_pool;
    let expected = 1000.0 * 0.05;
    assert!(
        (pool - expected).abs() < 0.03 * expected,
        "pool {pool}, expected {expected}"
    );
    // And against the measured arrival rate (Little: L = λW exactly in the limit).
    let little = r.mixes[0].arrival_rate * 0.05;
    assert!(
        (pool - little).abs() < 0.03 * little,
        "pool {pool}, λW {little}"
    );
}

#[test]
fn littles_law_every_mix_of_a_network_with_cover() {
    let p = Params {
        layers: 3,
        width: 3,
        clients: 300,
        rate: 0.5,
        cover_rate: 2.0,
        loop_rate: 1.0,
        mean_delay: 0.05,
        duration: 40.0,
        warmup: 5.0,
        targets: 20,
        ..Params::default()
    };
    let r = simulate(&p).unwrap();
    // 300 × 3 packets/s over 3 mixes per layer, 50 ms each: 15 packets.
    assert!((r.model.expected_pool - 15.0).abs() < 1e-9);
    for m in &r.mixes {
        let rel = (m.mean_pool - 15.0).abs() / 15.0;
        assert!(
            rel < 0.05,
            "mix {}/{}: pool {}",
            m.layer,
            m.index,
            m.mean_pool
        );
    }
}

/// P(X <= x) for a sum of `k` exponentials of mean `mean` (Erlang).
fn erlang_cdf(k: usize, mean: f64, x: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    let z = x / mean;
    let mut term = 1.0;
    let mut sum = 1.0;
    for i in 1..k {
        term *= z / i as f64;
        sum += term;
    }
    1.0 - (-z).exp() * sum
}

#[test]
fn latency_is_a_sum_of_exponentials_plus_links() {
    let (layers, mean, link) = (3, 0.02, 0.001);
    let p = Params {
        layers,
        width: 2,
        providers: 2,
        clients: 200,
        rate: 5.0,
        cover_rate: 0.0,
        loop_rate: 0.0,
        mean_delay: mean,
        max_delay: Some(mean * 40.0),
        link_delay: LinkDelay::Fixed(link),
        duration: 20.0,
        warmup: 2.0,
        targets: 10,
        ..Params::default()
    };
    let (r, s) = simulate_with_samples(&p).unwrap();
    let shift = (layers + 1) as f64 * link;
    let n = s.latencies.len();
    assert!(n > 15_000, "{n} samples");
    // Mean: L·μ + (L+1)·link.
    let expected_mean = layers as f64 * mean + shift;
    assert!(
        (r.latency.mean - expected_mean).abs() < 0.02 * expected_mean,
        "mean {} vs {expected_mean}",
        r.latency.mean
    );
    // No cover: nothing waits in the outbox.
    assert_eq!(r.latency.mean, r.network_latency.mean);
    // The 95th percentile of Erlang(3): 6.2958 μ.
    let p95 = 6.295_794 * mean + shift;
    assert!(
        (r.latency.p95 - p95).abs() < 0.03 * p95,
        "p95 {} vs {p95}",
        r.latency.p95
    );
    // Kolmogorov–Smirnov distance to the shifted Erlang CDF, against the
    // 1% critical value 1.63/√n.
    let mut xs = s.latencies.clone();
    xs.sort_by(f64::total_cmp);
    let d = xs
        .iter()
        .enumerate()
        .map(|(i, &x)| {
            let f = erlang_cdf(layers, mean, x - shift);
            (f - i as f64 / n as f64)
                .abs()
                .max((f - (i + 1) as f64 / n as f64).abs())
        })
        .fold(0.0, f64::max);
    let critical = 1.63 / (n as f64).sqrt();
    assert!(d < critical, "KS distance {d} >= {critical}");
    // A model with one layer fewer is far outside the same bound.
    let d_wrong = xs
        .iter()
        .enumerate()
        .map(|(i, &x)| (erlang_cdf(layers - 1, mean, x - shift) - i as f64 / n as f64).abs())
        .fold(0.0, f64::max);
    assert!(d_wrong > 10.0 * critical, "{d_wrong}");
}

#[test]
fn uniform_link_latency_adds_its_mean_per_link() {
    let p = Params {
        layers: 2,
        width: 2,
        clients: 200,
        rate: 5.0,
        cover_rate: 0.0,
        loop_rate: 0.0,
        mean_delay: 0.01,
        max_delay: Some(0.4),
        link_delay: "0.002..0.010".parse().unwrap(),
        duration: 12.0,
        warmup: 2.0,
        targets: 10,
        ..Params::default()
    };
    let r = simulate(&p).unwrap();
    let expected = 2.0 * 0.01 + 3.0 * 0.006;
    assert!(
        (r.latency.mean - expected).abs() < 0.02 * expected,
        "{}",
        r.latency.mean
    );
    assert!(r.latency.min >= 3.0 * 0.002);
}

#[test]
fn outbox_wait_is_mm1_sojourn_time() {
    // Real messages (rate r) wait for send ticks (rate λ): an M/M/1 queue,
    // mean sojourn 1/(λ − r).
    let (r, lambda) = (0.5, 2.0);
    let p = Params {
        layers: 3,
        width: 2,
        clients: 500,
        rate: r,
        cover_rate: lambda,
        loop_rate: 0.5,
        duration: 40.0,
        warmup: 5.0,
        targets: 10,
        ..Params::default()
    };
    let rep = simulate(&p).unwrap();
    let wait = rep.latency.mean - rep.network_latency.mean;
    let expected = 1.0 / (lambda - r);
    assert!(
        (wait - expected).abs() < 0.04 * expected,
        "wait {wait} vs {expected}"
    );
    assert_eq!(rep.counters.measured_undelivered, 0);
    assert_eq!(rep.anonymity.unfinished, 0);
    assert!(rep.anonymity.max_truncated < 1e-6);
}

/// Danezis (2004): one exponential mix with Poisson arrivals at rate Λ and
/// mean delay μ has entropy → log₂(e·Λ·μ) bits as Λμ grows.
fn asymptote(arrivals: f64, mean: f64) -> f64 {
    (std::f64::consts::E * arrivals * mean).log2()
}

#[test]
fn single_mix_entropy_approaches_the_large_pool_asymptote() {
    let mut errors = Vec::new();
    for (arrivals, mean) in [(200.0, 0.05), (2000.0, 0.1)] {
        let p = single_mix(arrivals, mean);
        let r = simulate(&p).unwrap();
        let h = asymptote(arrivals, mean);
        let net = r.anonymity.mean;
        let mix = r.mixes[0].entropy_mean;
        assert!(r.anonymity.targets >= 90, "{} targets", r.anonymity.targets);
        assert!(r.mixes[0].probes >= 10, "{} probes", r.mixes[0].probes);
        // With one mix, the network estimate and the per-mix probes measure
        // the same thing: equal within four standard errors.
        let se = (r.anonymity.std.powi(2) / r.anonymity.targets as f64
            + r.mixes[0].entropy_std.powi(2) / r.mixes[0].probes as f64)
            .sqrt();
        assert!(
            (net - mix).abs() < 4.0 * se,
            "targets {net}, probes {mix}, se {se}"
        );
        errors.push((h - net).abs());
        eprintln!(
            "Λμ = {}: simulated {net:.3} bits, asymptote {h:.3}",
            arrivals * mean
        );
    }
    // Λμ = 200: within 0.05 bits (0.6%) of log₂(e·Λ·μ) = 9.087.
    assert!(errors[1] < 0.05, "{errors:?}");
    // Λμ = 10 (4.765 bits): the finite-pool correction is larger but small.
    assert!(errors[0] < 0.2, "{errors:?}");
}

#[test]
fn compromising_every_mix_or_not_delaying_destroys_anonymity() {
    let base = Params {
        layers: 2,
        width: 2,
        clients: 100,
        rate: 1.0,
        cover_rate: 2.0,
        loop_rate: 1.0,
        duration: 10.0,
        warmup: 2.0,
        targets: 30,
        ..Params::default()
    };
    let all = Params {
        compromised: 1.0,
        ..base.clone()
    };
    let r = simulate(&all).unwrap();
    assert_eq!(r.model.compromised_mixes, 4);
    assert_eq!(r.anonymity.targets, 30);
    assert_eq!(r.anonymity.max, 0.0);
    assert!(r.mixes.iter().all(|m| m.entropy_mean.is_nan()));

    let half = Params {
        compromised: 0.5,
        ..base.clone()
    };
    let honest = simulate(&base).unwrap().anonymity.mean;
    let partly = simulate(&half).unwrap().anonymity.mean;
    assert!(partly < honest && partly > 0.0, "{partly} vs {honest}");

    let instant = Params {
        mean_delay: 0.0,
        link_delay: "0.001..0.002".parse().unwrap(),
        ..base
    };
    let r = simulate(&instant).unwrap();
    assert!(r.anonymity.mean < 0.01, "{}", r.anonymity.mean);
}

fn without_perf(r: &murmur_sim::Report) -> serde_json::Value {
    let mut v = serde_json::to_value(r).unwrap();
    v.as_object_mut().unwrap().remove("perf");
    v
}

#[test]
fn same_seed_same_results_different_seed_different_results() {
    let p = Params {
        clients: 100,
        duration: 8.0,
        warmup: 1.0,
        targets: 20,
        link_delay: "0.001..0.003".parse().unwrap(),
        compromised: 0.25,
        ..Params::default()
    };
    let a = simulate(&p).unwrap();
    let b = simulate(&p).unwrap();
    assert_eq!(without_perf(&a), without_perf(&b));
    let c = simulate(&Params { seed: 2, ..p }).unwrap();
    assert_ne!(without_perf(&a), without_perf(&c));
    assert_ne!(a.latency.mean, c.latency.mean);
    assert_ne!(a.anonymity.mean, c.anonymity.mean);
}
