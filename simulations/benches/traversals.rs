//! Simulated mix traversals per second on one core.
//!
//! `cargo bench -p murmur-sim --bench traversals`: criterion's "thrpt" line
//! is mix traversals per second (a traversal is one packet passing one mix:
//! its arrival, its delay draw and its departure, plus its share of the
//! client ticks, link arrivals and deliveries around it).

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use murmur_sim::{Params, simulate};

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("simulate");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(8));
    let cases = [
        (
            "default_model_no_targets",
            Params {
                targets: 0,
                ..Params::default()
            },
        ),
        ("default_model_200_targets", Params::default()),
        (
            "large_model_1000_mixes",
            Params {
                layers: 5,
                width: 200,
                clients: 20_000,
                rate: 0.2,
                cover_rate: 1.0,
                loop_rate: 0.5,
                mean_delay: 0.1,
                duration: 10.0,
                warmup: 2.0,
                ..Params::default()
            },
        ),
    ];
    for (name, params) in cases {
        let traversals = simulate(&params).unwrap().counters.traversals;
        group.throughput(Throughput::Elements(traversals));
        group.bench_function(name, |b| b.iter(|| simulate(black_box(&params)).unwrap()));
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
