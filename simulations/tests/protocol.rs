#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
//! The protocol model (client cores on virtual time) against closed forms:
//! the latency of a message without loss, the cover rates of the
//! consensus, the retransmissions a lossy network costs, the dead mixes
//! found, and determinism.

use murmur_sim::LinkDelay;
use murmur_sim::protocol::{ProtocolParams, ProtocolReport, simulate_protocol};

/// A small network with cover, no loss.
fn base() -> ProtocolParams {
    ProtocolParams {
        width: 3,
        providers: 2,
        clients: 50,
        rate: 0.2,
        fragments: 1,
        mean_delay: 0.05,
        max_delay: None,
        link_delay: LinkDelay::Fixed(0.005),
        cover_rate: 2.0,
        loop_rate: 0.5,
        fetch_interval: 1.0,
        fetch_rtt: 0.05,
        duration: 300.0,
        ..ProtocolParams::default()
    }
}

/// Standard error of a sample mean, from the sample's own spread.
fn se(std: f64, n: usize) -> f64 {
    std / (n as f64).sqrt()
}

#[test]
fn without_loss_the_mean_latencies_are_the_closed_forms() {
    let p = base();
    let r = simulate_protocol(&p).unwrap();
    let m = &r.messages;
    assert!(m.created > 2500, "{} messages", m.created);
    assert_eq!((m.delivered, m.completed), (m.created, m.created));
    assert_eq!((m.failed, m.unsettled, m.duplicate_completions), (0, 0, 0));
    // From its send, a try is acknowledged within ~2 s here; the timeout
    // is 3.8 s: nothing is sent twice.
    assert_eq!(r.fragments.retransmissions, 0);
    assert_eq!(r.network.misrouted, 0);

    // Message latency = outbox wait 1/(λ − rate) (M/M/1: messages and send
    // ticks both Poisson) + 3 mix delays + 4 links + interval/2 + rtt (a
    // deposit lands at a uniform moment of the recipient's fetch cycle of
    // interval + rtt, and the answer takes rtt/2).
    let (lambda, rate, mu, link) = (2.0, 0.2, 0.05, 0.005);
    let (interval, rtt) = (1.0, 0.05);
    let outbox = 1.0 / (lambda - rate);
    let expected = outbox + 3.0 * mu + 4.0 * link + interval / 2.0 + rtt;
    let e = &r.model.expected;
    assert!((e.message_latency - expected).abs() < 1e-3, "{e:?}");
    let l = &r.message_latency;
    let tolerance = 4.0 * se(l.std, l.count);
    assert!(
        (l.mean - expected).abs() < tolerance,
        "message latency {} vs {expected} ± {tolerance}",
        l.mean
    );
    // Delivery latency: the acknowledgement goes back through 3 more mixes
    // and 4 more links, then waits for the sender's fetch.
    let expected_delivery = outbox + 6.0 * mu + 8.0 * link + interval / 2.0 + rtt;
    let d = &r.delivery_latency;
    let tolerance_d = 4.0 * se(d.std, d.count);
    assert!(
        (d.mean - expected_delivery).abs() < tolerance_d,
        "delivery latency {} vs {expected_delivery} ± {tolerance_d}",
        d.mean
    );
    // The test can tell: half the outbox wait (as for a fixed-period
    // clock) and no fetch round trip is far outside the bound.
    let wrong = outbox / 2.0 + 3.0 * mu + 4.0 * link + interval / 2.0;
    assert!(
        (l.mean - wrong).abs() > 3.0 * tolerance,
        "{} vs {wrong}: {tolerance}",
        l.mean
    );
}

#[test]
fn cover_rates_per_client_are_the_consensus_rates() {
    let p = ProtocolParams {
        clients: 30,
        rate: 0.1,
        cover_rate: 3.0,
        loop_rate: 1.0,
        duration: 400.0,
        ..base()
    };
    let r = simulate_protocol(&p).unwrap();
    let k = &r.packets;
    let t = k.client_seconds;
    assert!(t > 30.0 * 400.0, "{t}");
    // Counts of Poisson processes over t client-seconds: sd = √(λ t).
    let within =
        |count: u64, lambda: f64| (count as f64 - lambda * t).abs() < 4.0 * (lambda * t).sqrt();
    let send = k.real + k.retry + k.drop;
    assert!(
        within(send, 3.0),
        "send stream {} per client-second",
        k.send_stream_rate
    );
    assert!(
        within(k.loops, 1.0),
        "loops {} per client-second",
        k.loop_rate
    );
    // Real packets replace drop cover in the same stream: the real part is
    // the message rate (messages were created for `duration`, sent by the
    // end), the rest drop cover.
    let created_per_s = r.messages.created as f64 / (p.duration * p.clients as f64);
    assert!((created_per_s - 0.1).abs() < 4.0 * (0.1 / (p.duration * 30.0)).sqrt());
    assert_eq!(k.real, r.messages.created);
    assert_eq!(k.retry, 0);
    // Without loss every loop comes back, but those in flight at the end
    // (sent in the last few seconds).
    assert!(k.loops_returned <= k.loops);
    assert!(
        k.loops - k.loops_returned < 30 * 3,
        "{} of {}",
        k.loops_returned,
        k.loops
    );
}

#[test]
fn loss_costs_the_geometric_number_of_retransmissions() {
    // Each packet is lost with probability p; a try needs its packet and
    // its acknowledgement, so it fails with q = 1 − (1 − p)², and a
    // fragment takes a geometric number of tries: q / (1 − q)
    // retransmissions on average, variance q / (1 − q)².
    let loss = 0.05;
    let p = ProtocolParams {
        loss,
        max_tries: 30,
        duration: 400.0,
        ..base()
    };
    let r = simulate_protocol(&p).unwrap();
    let m = &r.messages;
    assert_eq!((m.failed, m.unsettled), (0, 0), "{m:?}");
    assert_eq!(m.completed, m.created);
    let q: f64 = 1.0 - (1.0 - loss) * (1.0 - loss);
    let expected = q / (1.0 - q);
    let n = r.fragments.queued as f64;
    let sd = (q / ((1.0 - q) * (1.0 - q)) / n).sqrt();
    let got = r.fragments.retransmissions_per_fragment;
    assert!(
        (got - expected).abs() < 4.0 * sd,
        "{got} retransmissions per fragment, expected {expected} ± {}",
        4.0 * sd
    );
    // A try whose acknowledgement was lost stored its fragment: the
    // retransmission is a duplicate, acknowledged and not stored again.
    assert!(r.network.duplicate_deposits > 0);
    assert_eq!(r.network.deposits, r.fragments.queued);
    // Nothing but loss: no mix is dead.
    assert!(r.suspicion.dead.is_empty());
    assert_eq!(r.network.dropped_at_dead, 0);
}

#[test]
fn every_message_arrives_past_dead_mixes_and_every_core_avoids_them() {
    let p = ProtocolParams {
        width: 5,
        clients: 40,
        rate: 0.3,
        dead_mixes: 0.14, // 2 of 15
        duration: 300.0,
        ..base()
    };
    let r = simulate_protocol(&p).unwrap();
    assert_eq!(r.suspicion.dead.len(), 2);
    assert!(
        r.model.dead_per_layer.iter().all(|&d| d <= 1),
        "this seed kills two mixes of different layers: {:?}",
        r.model.dead_per_layer
    );
    let m = &r.messages;
    assert_eq!((m.failed, m.unsettled), (0, 0), "{m:?}");
    assert_eq!((m.delivered, m.completed), (m.created, m.created));
    // Tries through a dead mix were lost and sent again.
    assert!(r.network.dropped_at_dead > 0);
    assert!(r.fragments.retransmissions > 0);
    // Every core avoids every dead mix, and the mixes most cores avoid are
    // exactly the dead ones.
    let s = &r.suspicion;
    assert_eq!(s.clients_all_dead, p.clients);
    assert_eq!(s.avoided_by_majority, s.dead);
    for mix in &r.mixes {
        if mix.dead {
            assert_eq!(mix.avoided_by, p.clients);
        } else {
            assert!(2 * mix.avoided_by <= p.clients, "{mix:?}");
        }
    }
    // And hardly any live one: a timed-out try blames every mix of its two
    // routes, so live mixes that shared routes with a dead one collect
    // blame too, but the client's loops coming back through them clear it
    // (policy::Suspicion), so few stay avoided at the end.
    assert!(s.live_avoided_mean < 0.5, "{}", s.live_avoided_mean);
    for mix in r.mixes.iter().filter(|m| !m.dead) {
        assert!(mix.traversals > 0);
    }
}

fn without_perf(r: &ProtocolReport) -> serde_json::Value {
    let mut v = serde_json::to_value(r).unwrap();
    v.as_object_mut().unwrap().remove("perf");
    v
}

#[test]
fn the_same_seed_gives_the_same_report() {
    let p = ProtocolParams {
        clients: 20,
        fragments: 3,
        dead_mixes: 0.2,
        loss: 0.02,
        link_delay: "0.002..0.008".parse().unwrap(),
        duration: 120.0,
        ..base()
    };
    let a = simulate_protocol(&p).unwrap();
    let b = simulate_protocol(&p).unwrap();
    assert_eq!(without_perf(&a), without_perf(&b));
    assert!(a.messages.created > 100);
    let c = simulate_protocol(&ProtocolParams { seed: 2, ..p }).unwrap();
    assert_ne!(without_perf(&a), without_perf(&c));
}

#[test]
fn fragments_of_a_message_all_arrive_before_it_completes() {
    let p = ProtocolParams {
        clients: 20,
        rate: 0.05,
        fragments: 8,
        duration: 200.0,
        ..base()
    };
    let r = simulate_protocol(&p).unwrap();
    let m = &r.messages;
    assert_eq!((m.completed, m.unsettled), (m.created, 0));
    assert_eq!(r.fragments.queued, 8 * m.created);
    assert_eq!(r.network.deposits, r.fragments.queued);
    // Eight fragments leave on eight send ticks: a message takes longer
    // than a one-fragment message's closed form.
    assert!(r.model.expected.message_latency.is_nan());
    let one = simulate_protocol(&ProtocolParams {
        fragments: 1,
        ..p.clone()
    })
    .unwrap();
    assert!(r.message_latency.mean > one.message_latency.mean + 7.0 / p.cover_rate * 0.5);
}

#[test]
fn bad_parameters_are_refused_with_their_name() {
    for (p, name) in [
        (
            ProtocolParams {
                clients: 1,
                ..base()
            },
            "clients",
        ),
        (
            ProtocolParams {
                fragments: 0,
                ..base()
            },
            "fragments",
        ),
        (
            ProtocolParams {
                dead_mixes: 1.5,
                ..base()
            },
            "dead_mixes",
        ),
        (
            ProtocolParams {
                loss: -0.1,
                ..base()
            },
            "loss",
        ),
        (
            ProtocolParams {
                fetch_interval: 0.0,
                ..base()
            },
            "fetch_interval",
        ),
        (
            ProtocolParams {
                max_tries: 0,
                ..base()
            },
            "max_tries",
        ),
        (
            ProtocolParams {
                max_delay: Some(0.01),
                ..base()
            },
            "max_delay",
        ),
    ] {
        let err = simulate_protocol(&p).unwrap_err().to_string();
        assert!(err.contains(name), "{err}");
    }
}
