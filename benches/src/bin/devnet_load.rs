//! Load run (b): a whole devnet (`murmur::devnet::Devnet`: 3 authorities,
//! 3 × `--width` mix nodes, `--mailboxes` providers) in this process, with
//! `--clients` in-process `murmur_client::Client`s sending Loopix cover
//! traffic and one-packet messages to each other.
//!
//! ```text
//! cargo run --release -p murmur-benches --bin devnet-load -- [--json] [--clients 20]
//!     [--secs 60] [--rate 10] [--loop-rate 1] [--mean-delay-ms 20] [--fetch-ms 100]
//!     [--messages-per-s 1]
//! ```
//!
//! Clients are paired (contacts made by invitation and hello through the
//! mixnet); each sends its partner short texts as a Poisson process of
//! `--messages-per-s`. Over the `--secs` window the run reports:
//!
//! * **end-to-end latency** of every message sent in the window
//!   (`received_at − sent_at` as the clients record them: from the sender's
//!   `send` call to the recipient storing the opened message), p50/p95/p99,
//!   next to the **configured delays**: the Poisson send queue (with λ and
//!   the message rate m, a one-packet message waits an Exp(λ − m) time, the
//!   M/M/1 sojourn), three exponential mix delays of mean μ, and the
//!   recipient's polling (uniform over one fetch interval). Their sum's
//!   quantiles come from a Monte Carlo draw of the same distributions; the
//!   overhead is measured − configured, at p50 and in the mean (means add,
//!   so the mean overhead is exact up to sampling error);
//! * **packets/s through the network**: packets the clients sent (real,
//!   retransmitted, drop and loop cover) plus the acknowledgements the
//!   providers send back (one per real packet acknowledged), and the
//!   resulting mix and provider hops;
//! * **CPU per packet**: the whole process's CPU time (every node, client
//!   and the load itself) over the window ÷ those packets.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use murmur::devnet::{Devnet, DevnetOptions};
use murmur_benches::{Machine, process_cpu_secs, quantile, sorted};
use murmur_client::network::follow;
use murmur_client::{Body, Client, ClientOptions, ClientStats, ConsensusSource, Passphrase};
use murmur_wire::policy::sample_exponential;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha20Rng;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

#[derive(Parser, Debug, Clone)]
#[command(about = "A devnet with many clients: end-to-end latency, packets/s, CPU per packet")]
struct Args {
    /// In-process clients (paired; an odd one out only sends cover).
    #[arg(long, default_value_t = 20)]
    clients: usize,
    /// Length of the measured window, seconds.
    #[arg(long, default_value_t = 60)]
    secs: u64,
    /// λ: each client's Poisson send rate (real or drop cover), packets/s.
    #[arg(long, default_value_t = 10.0)]
    rate: f64,
    /// λ_L: each client's loop cover rate, packets/s.
    #[arg(long, default_value_t = 1.0)]
    loop_rate: f64,
    /// Mix loop cover rate, packets/s per mix.
    #[arg(long, default_value_t = 0.5)]
    mix_loop_rate: f64,
    /// Mean per-hop delay μ, ms.
    #[arg(long, default_value_t = 20)]
    mean_delay_ms: u64,
    /// Clients' polling interval, ms.
    #[arg(long, default_value_t = 100)]
    fetch_ms: u64,
    /// One-packet messages each client sends per second (Poisson).
    #[arg(long, default_value_t = 1.0)]
    messages_per_s: f64,
    /// Mix nodes per layer.
    #[arg(long, default_value_t = 3)]
    width: usize,
    /// Mailbox providers.
    #[arg(long, default_value_t = 2)]
    mailboxes: usize,
    /// Print one JSON object instead of the report.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize, Default, Clone, Copy)]
struct Quantiles {
    count: usize,
    mean: f64,
    p50: f64,
    p95: f64,
    p99: f64,
}

fn quantiles(v: Vec<f64>) -> Quantiles {
    let s = sorted(v);
    Quantiles {
        count: s.len(),
        mean: s.iter().sum::<f64>() / s.len().max(1) as f64,
        p50: quantile(&s, 0.5),
        p95: quantile(&s, 0.95),
        p99: quantile(&s, 0.99),
    }
}

/// The configured delays' distribution for a one-packet message, ms.
fn configured(args: &Args) -> Quantiles {
    let mut rng = ChaCha20Rng::seed_from_u64(11);
    let service = args.rate - args.messages_per_s;
    let mu = Duration::from_millis(args.mean_delay_ms);
    let draws = (0..400_000)
        .map(|_| {
            let queue = sample_exponential(&mut rng, Duration::from_secs_f64(1.0 / service));
            let mixes: Duration = (0..3).map(|_| sample_exponential(&mut rng, mu)).sum();
            let poll = rng.random::<f64>() * args.fetch_ms as f64;
            (queue + mixes).as_secs_f64() * 1e3 + poll
        })
        .collect();
    quantiles(draws)
}

#[derive(Serialize)]
struct Report {
    machine: Machine,
    load_at_end: [f64; 3],
    clients: usize,
    window_secs: f64,
    rate: f64,
    loop_rate: f64,
    mean_delay_ms: u64,
    fetch_ms: u64,
    messages_per_s_per_client: f64,
    latency_ms: Quantiles,
    configured_delays_ms: Quantiles,
    overhead_p50_ms: f64,
    /// 95 % confidence interval of the p50 overhead (from the ranks of the
    /// measured median; the configured median is exact to a fraction of a
    /// millisecond).
    overhead_p50_ci95_ms: (f64, f64),
    overhead_mean_ms: f64,
    overhead_mean_stderr_ms: f64,
    messages_sent: usize,
    messages_received: usize,
    client_packets: u64,
    acknowledgements: u64,
    packets_per_s: f64,
    hops_per_s: f64,
    cpu_seconds: f64,
    cpu_per_packet_us: f64,
    cpu_per_hop_us: f64,
    cpu_busy_fraction_of_all_cores: f64,
    retransmissions: u64,
    target_met: bool,
}

fn sum_stats(clients: &[Client]) -> ClientStats {
    let mut t = ClientStats::default();
    for c in clients {
        let s = c.stats();
        t.real_sent += s.real_sent;
        t.retransmissions += s.retransmissions;
        t.drop_cover_sent += s.drop_cover_sent;
        t.loop_cover_sent += s.loop_cover_sent;
        t.loops_returned += s.loops_returned;
        t.acks += s.acks;
        t.link_drops += s.link_drops;
    }
    t
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.clients < 2 || args.secs == 0 || args.rate <= args.messages_per_s {
        bail!("need at least 2 clients, a window, and --rate above --messages-per-s");
    }
    let machine = Machine::now();
    let say = |s: String| {
        if !args.json {
            eprintln!("{s}");
        }
    };
    say(machine.line());
    let tmp = tempfile::tempdir()?;
    let net = Devnet::start(DevnetOptions {
        dir: tmp.path().join("devnet"),
        width: args.width,
        mailboxes: args.mailboxes,
        mean_delay_ms: args.mean_delay_ms,
        max_delay_ms: (args.mean_delay_ms * 20).max(100),
        client_rate: args.rate,
        client_loop_rate: args.loop_rate,
        mix_loop_rate: args.mix_loop_rate,
        ..DevnetOptions::default()
    })
    .await?;
    say(format!("devnet: {}", net.describe()));
    net.wait_ready(Duration::from_secs(90)).await?;
    let shutdown = CancellationToken::new();
    let result = run(&args, &net, &tmp, &shutdown, machine).await;
    shutdown.cancel();
    net.shutdown().await;
    let report = result?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print(&report);
    }
    Ok(())
}

async fn run(
    args: &Args,
    net: &Devnet,
    tmp: &tempfile::TempDir,
    shutdown: &CancellationToken,
    machine: Machine,
) -> anyhow::Result<Report> {
    let say = |s: String| {
        if !args.json {
            eprintln!("{s}");
        }
    };
    let source: Arc<dyn ConsensusSource> =
        follow(net.network(), Duration::from_secs(30), shutdown.clone()).await?;
    let options = ClientOptions {
        fetch_interval: Duration::from_millis(args.fetch_ms),
        ..ClientOptions::default()
    };
    let mut clients = Vec::new();
    for i in 0..args.clients {
        let c = Client::create(
            &tmp.path().join(format!("client-{i}")),
            &format!("c{i}"),
            source.clone(),
            None,
            options.clone(),
            &Passphrase::new("devnet-load"),
        )
        .await
        .with_context(|| format!("creating client {i}"))?;
        clients.push(c);
    }
    // Pairs: 2k invites, 2k+1 accepts; 2k learns of it by the hello.
    let pairs = args.clients / 2;
    for k in 0..pairs {
        let inv = clients[2 * k]
            .invite(Some(&format!("c{}", 2 * k + 1)))
            .await?;
        clients[2 * k + 1]
            .accept(&inv, Some(&format!("c{}", 2 * k)))
            .await?;
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    for k in 0..pairs {
        loop {
            if clients[2 * k].contacts()?.iter().any(|c| c.established) {
                break;
            }
            if Instant::now() > deadline {
                bail!("pair {k} never established its contact");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    say(format!(
        "{} clients up, {pairs} contact pairs established; measuring for {} s ...",
        args.clients, args.secs
    ));

    let clients = Arc::new(clients);
    // Receivers: every message that arrives, with its timestamps.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(u64, u64)>(65_536);
    let mut receivers = Vec::new();
    for i in 0..pairs * 2 {
        let mut incoming = clients[i].incoming();
        let tx = tx.clone();
        let stop = shutdown.clone();
        receivers.push(tokio::spawn(async move {
            loop {
                let m = tokio::select! {
                    _ = stop.cancelled() => return,
                    m = incoming.next() => m,
                };
                let Some(m) = m else { return };
                if let Body::Text(_) = m.message.body {
                    let _ = tx.try_send((m.message.sent_at_ms, m.message.received_at_ms));
                }
            }
        }));
    }
    drop(tx);

    let stats_before = sum_stats(&clients);
    let cpu_before = process_cpu_secs();
    let start = Instant::now();
    let start_ms = now_ms();
    let window = Duration::from_secs(args.secs);
    // Senders: each paired client sends Poisson texts during the window.
    let mut senders = Vec::new();
    for i in 0..pairs * 2 {
        let clients = clients.clone();
        let rate = args.messages_per_s;
        let partner = format!("c{}", i ^ 1);
        senders.push(tokio::spawn(async move {
            let mut rng = ChaCha20Rng::seed_from_u64(100 + i as u64);
            let mut sent = 0usize;
            loop {
                let gap = sample_exponential(&mut rng, Duration::from_secs_f64(1.0 / rate));
                if start.elapsed() + gap >= window {
                    return sent;
                }
                tokio::time::sleep(gap).await;
                if clients[i].send_text(&partner, "load").await.is_ok() {
                    sent += 1;
                }
            }
        }));
    }
    let mut messages_sent = 0;
    for s in senders {
        messages_sent += s.await?;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let cpu = process_cpu_secs() - cpu_before;
    let stats_after = sum_stats(&clients);
    // Let the last messages of the window arrive.
    let tail = Duration::from_millis(
        4 * (args.mean_delay_ms * 3 + args.fetch_ms) + (4000.0 / args.rate) as u64 + 2000,
    );
    tokio::time::sleep(tail).await;
    shutdown.cancel();
    for r in receivers {
        let _ = r.await;
    }
    let mut latencies = Vec::new();
    while let Ok((sent_at, received_at)) = rx.try_recv() {
        if sent_at >= start_ms {
            latencies.push(received_at.saturating_sub(sent_at) as f64);
        }
    }
    let clients = Arc::try_unwrap(clients).map_err(|_| anyhow::anyhow!("clients still shared"))?;
    for c in clients {
        c.shutdown().await;
    }

    let d = |f: fn(&ClientStats) -> u64| f(&stats_after) - f(&stats_before);
    let client_packets = d(|s| s.real_sent)
        + d(|s| s.retransmissions)
        + d(|s| s.drop_cover_sent)
        + d(|s| s.loop_cover_sent);
    let acks = d(|s| s.acks);
    let packets = client_packets + acks;
    let latency = quantiles(latencies.clone());
    let model = configured(args);
    let var = latencies
        .iter()
        .map(|x| (x - latency.mean).powi(2))
        .sum::<f64>()
        / (latencies.len().max(2) - 1) as f64;
    let overhead_p50 = latency.p50 - model.p50;
    let ci = {
        let s = sorted(latencies.clone());
        let n = s.len() as f64;
        let (lo, hi) = (n / 2.0 - 0.98 * n.sqrt(), n / 2.0 + 0.98 * n.sqrt());
        let at = |r: f64| {
            s.get((r.max(0.0) as usize).min(s.len().saturating_sub(1)))
                .copied()
        };
        (
            at(lo).unwrap_or(0.0) - model.p50,
            at(hi).unwrap_or(0.0) - model.p50,
        )
    };
    Ok(Report {
        machine,
        load_at_end: murmur_benches::loadavg(),
        clients: args.clients,
        window_secs: elapsed,
        rate: args.rate,
        loop_rate: args.loop_rate,
        mean_delay_ms: args.mean_delay_ms,
        fetch_ms: args.fetch_ms,
        messages_per_s_per_client: args.messages_per_s,
        overhead_mean_ms: latency.mean - model.mean,
        overhead_mean_stderr_ms: (var / latencies.len().max(1) as f64).sqrt(),
        latency_ms: latency,
        configured_delays_ms: model,
        overhead_p50_ms: overhead_p50,
        overhead_p50_ci95_ms: ci,
        messages_sent,
        messages_received: latencies.len(),
        client_packets,
        acknowledgements: acks,
        packets_per_s: packets as f64 / elapsed,
        hops_per_s: 4.0 * packets as f64 / elapsed,
        cpu_seconds: cpu,
        cpu_per_packet_us: 1e6 * cpu / packets.max(1) as f64,
        cpu_per_hop_us: 1e6 * cpu / (4 * packets.max(1)) as f64,
        cpu_busy_fraction_of_all_cores: cpu / (elapsed * murmur_benches::cores() as f64),
        retransmissions: d(|s| s.retransmissions),
        target_met: overhead_p50 <= 5.0,
    })
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn print(r: &Report) {
    println!("{}", r.machine.line());
    println!(
        "devnet: {} clients, λ = {}/s, λ_L = {}/s, μ = {} ms, polling every {} ms, {} messages/s per client; window {:.1} s",
        r.clients,
        r.rate,
        r.loop_rate,
        r.mean_delay_ms,
        r.fetch_ms,
        r.messages_per_s_per_client,
        r.window_secs
    );
    println!(
        "end-to-end latency (ms): p50 {:.0}, p95 {:.0}, p99 {:.0}, mean {:.1} over {} messages ({} sent)",
        r.latency_ms.p50,
        r.latency_ms.p95,
        r.latency_ms.p99,
        r.latency_ms.mean,
        r.messages_received,
        r.messages_sent
    );
    println!(
        "configured delays (ms):  p50 {:.0}, p95 {:.0}, p99 {:.0}, mean {:.1} (send queue Exp(λ − m) + 3 × Exp(μ) + U(0, poll))",
        r.configured_delays_ms.p50,
        r.configured_delays_ms.p95,
        r.configured_delays_ms.p99,
        r.configured_delays_ms.mean
    );
    println!(
        "overhead: p50 {:.1} ms (95 % CI {:.1} to {:.1}; target ≤ 5 ms: {}), mean {:.1} ± {:.1} ms",
        r.overhead_p50_ms,
        r.overhead_p50_ci95_ms.0,
        r.overhead_p50_ci95_ms.1,
        if r.target_met { "met" } else { "NOT met" },
        r.overhead_mean_ms,
        r.overhead_mean_stderr_ms
    );
    println!(
        "traffic: {:.0} packets/s ({} from clients + {} acknowledgements; {} retransmissions) = {:.0} node hops/s",
        r.packets_per_s, r.client_packets, r.acknowledgements, r.retransmissions, r.hops_per_s
    );
    println!(
        "CPU: {:.1} s over the window = {:.0} % of all cores; {:.0} µs per packet ({:.0} µs per hop), everything in this process included",
        r.cpu_seconds,
        100.0 * r.cpu_busy_fraction_of_all_cores,
        r.cpu_per_packet_us,
        r.cpu_per_hop_us
    );
    println!("load average at the end: {:?}", r.load_at_end);
}
