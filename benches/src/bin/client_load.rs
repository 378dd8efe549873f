//! Load run (d): packets a real `murmur_client::Client` builds per second,
//! next to the raw Sphinx build rate measured in the same run.
//!
//! ```text
//! cargo run --release -p murmur-benches --bin client-load -- [--json] [--packets N]
//! ```
//!
//! The client is opened on a home made offline (a profile, one established
//! contact) against a signed consensus in which the first mix layer is a
//! sink on loopback that reads frames; the consensus asks for no cover
//! (λ = 0), so the send loop sends each queued packet as soon as it is
//! built. One message of about `--packets` fragments is sent with
//! `Client::send`; for every fragment the client reads it from its store,
//! picks a route and an acknowledgement route, builds the acknowledgement
//! SURB and the forward packet (the real path, `send_real`), and writes it
//! to its link. The rate is measured at the sink between 10% and 90% of the
//! packets.
//!
//! The ceiling is the raw Sphinx work of one real packet — one 4-hop
//! forward packet plus one 4-hop SURB, built in a tight loop on one thread
//! (the send loop builds one packet at a time) — measured just before and
//! just after the client run and averaged. The forward-only rate (what a
//! cover packet costs) is shown too. Sealed sender (HPKE seal of a message
//! that fills one packet) is timed the same way and set against the cost of
//! one real packet.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use futures::StreamExt;
use murmur_benches::{
    BenchNode, Machine, bench_consensus, bench_params, cores, cpu_between, this_thread_cpu_secs,
    thread_cpu,
};
use murmur_client::identity::Identity;
use murmur_client::seal::{self, Envelope};
use murmur_client::store::{ContactRecord, ContactState, OwnedQueue, PqSeed, Profile, Store};
use murmur_client::{Body, Client, ClientOptions, ConsensusSource, Passphrase};
use murmur_wire::policy::select_route;
use murmur_wire::{
    DEPOSIT_BODY_SIZE, Deposit, Destination, FinalPayload, MessageId, NodeId, PacketCodec, QueueId,
    SphinxSecretKey, SurbId, VerifiedConsensus, build_forward_packet, build_surb,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use serde::Serialize;
use tokio_util::codec::FramedRead;

#[derive(Parser, Debug)]
#[command(about = "Packets a murmur client builds per second, next to the raw Sphinx build rate")]
struct Args {
    /// Fragments (packets) of the message sent.
    #[arg(long, default_value_t = 3000)]
    packets: usize,
    /// Iterations of each raw measurement.
    #[arg(long, default_value_t = 600)]
    raw_iterations: usize,
    /// Print one JSON object instead of the report.
    #[arg(long)]
    json: bool,
}

struct Fixed(Arc<VerifiedConsensus>);

impl ConsensusSource for Fixed {
    fn current(&self) -> Option<Arc<VerifiedConsensus>> {
        Some(self.0.clone())
    }
    fn unavailable_reason(&self) -> Option<String> {
        None
    }
}

/// Raw rates, by the wall clock and by this thread's CPU time (the second
/// does not depend on what else runs on the machine).
#[derive(Serialize, Clone, Copy)]
struct Raw {
    forward_per_s: f64,
    forward_plus_surb_per_s: f64,
    forward_cpu_us: f64,
    forward_plus_surb_cpu_us: f64,
    seal_one_packet_us: f64,
    seal_one_packet_cpu_us: f64,
}

/// Raw Sphinx rates on this thread: forward packets alone, and forward
/// packet + SURB (what one real packet needs); and the sealed-sender cost.
fn raw_rates(consensus: &VerifiedConsensus, provider: NodeId, iters: usize) -> anyhow::Result<Raw> {
    let mut rng = ChaCha20Rng::seed_from_u64(7);
    let dest = Destination::from(QueueId::from_bytes([9; 32]));
    let body = Box::new([7u8; DEPOSIT_BODY_SIZE]);
    // The same route choice as the client, outside the timed loops.
    let routes: Vec<_> = (0..iters)
        .map(|_| select_route(&mut rng, consensus, &provider))
        .collect::<Result<_, _>>()?;
    let cover = FinalPayload::DropCover.encode();
    let start = Instant::now();
    let cpu = this_thread_cpu_secs();
    for r in &routes {
        std::hint::black_box(build_forward_packet(&mut rng, r, dest, &cover)?);
    }
    let forward = iters as f64 / start.elapsed().as_secs_f64();
    let forward_cpu = 1e6 * (this_thread_cpu_secs() - cpu) / iters as f64;
    let start = Instant::now();
    let cpu = this_thread_cpu_secs();
    for r in &routes {
        let id = SurbId::random_nonzero(&mut rng);
        let (surb, _recovery) = build_surb(&mut rng, r, Destination([1; 32]), id)?;
        let payload = FinalPayload::Deposit(Deposit {
            id: MessageId::random(&mut rng),
            ack: surb,
            body: body.clone(),
        })
        .encode();
        std::hint::black_box(build_forward_packet(&mut rng, r, dest, &payload)?);
    }
    let both = iters as f64 / start.elapsed().as_secs_f64();
    let both_cpu = 1e6 * (this_thread_cpu_secs() - cpu) / iters as f64;
    // Sealed sender, once per message: a text that fills one packet.
    let alice = Identity::generate(&mut rng);
    let bob = Identity::generate(&mut rng);
    let q = QueueId::from_bytes([4; 32]);
    let env = Envelope::new(
        MessageId::from_bytes([1; 16]),
        0,
        Body::Text("x".repeat(1800)),
    );
    let n = (iters / 2).max(10);
    let start = Instant::now();
    let cpu = this_thread_cpu_secs();
    for _ in 0..n {
        std::hint::black_box(seal::seal(
            &mut rng,
            &alice,
            (&bob.public(), bob.pq_public()),
            &q,
            &env,
            seal::SealKind::Contact,
        )?);
    }
    let seal_us = 1e6 * start.elapsed().as_secs_f64() / n as f64;
    let seal_cpu = 1e6 * (this_thread_cpu_secs() - cpu) / n as f64;
    Ok(Raw {
        forward_per_s: forward,
        forward_plus_surb_per_s: both,
        forward_cpu_us: forward_cpu,
        forward_plus_surb_cpu_us: both_cpu,
        seal_one_packet_us: seal_us,
        seal_one_packet_cpu_us: seal_cpu,
    })
}

fn owned(rng: &mut ChaCha20Rng, provider: NodeId) -> OwnedQueue {
    let mut secret = [0u8; 32];
    rng.fill_bytes(&mut secret);
    OwnedQueue {
        provider,
        queue: QueueId::random(rng),
        owner_secret: secret,
    }
}

#[derive(Serialize)]
struct Report {
    machine: Machine,
    load_at_end: [f64; 3],
    packets: u64,
    client_packets_per_s: f64,
    client_cpu_per_packet_us: f64,
    send_call_ms: f64,
    raw_before: Raw,
    raw_after: Raw,
    ceiling_forward_plus_surb_per_s: f64,
    raw_forward_only_per_s: f64,
    ratio_to_ceiling: f64,
    /// Raw CPU time of one real packet's Sphinx work, µs (mean of before
    /// and after).
    raw_cpu_per_packet_us: f64,
    /// Raw CPU per packet ÷ the client's CPU per packet: the ratio without
    /// the effect of other load on the machine.
    cpu_ratio: f64,
    seal_one_packet_us: f64,
    seal_one_packet_cpu_us: f64,
    seal_share_of_packet: f64,
    link_drops: u64,
    target_build_met: bool,
    target_seal_met: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.packets < 100 || args.raw_iterations < 10 {
        bail!("--packets must be at least 100, --raw-iterations at least 10");
    }
    let harness = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("harness")
        .enable_all()
        .build()?;
    let result = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores())
        .thread_name("client-rt")
        .enable_all()
        .build()?
        .block_on(run(args, harness.handle().clone()));
    harness.shutdown_background();
    result
}

async fn run(args: Args, harness: tokio::runtime::Handle) -> anyhow::Result<()> {
    let machine = Machine::now();
    if !args.json {
        println!("{}", machine.line());
    }
    let mut rng = ChaCha20Rng::seed_from_u64(3);

    // The sink: the first mix layer.
    let sink = murmur_benches::loopback_listener(&harness)?;
    let sink_addr = sink.local_addr()?;
    let arrivals: Arc<Vec<AtomicU64>> =
        Arc::new((0..args.packets * 2).map(|_| AtomicU64::new(0)).collect());
    let count = Arc::new(AtomicU64::new(0));
    let base = Instant::now();
    {
        let (arrivals, count) = (arrivals.clone(), count.clone());
        let h = harness.clone();
        harness.spawn(async move {
            while let Ok((stream, _)) = sink.accept().await {
                let (arrivals, count) = (arrivals.clone(), count.clone());
                h.spawn(async move {
                    let mut frames = FramedRead::with_capacity(stream, PacketCodec, 256 * 1024);
                    while let Some(Ok(_)) = frames.next().await {
                        let i = count.fetch_add(1, Ordering::Relaxed) as usize;
                        if let Some(slot) = arrivals.get(i) {
                            slot.store(base.elapsed().as_nanos() as u64 + 1, Ordering::Relaxed);
                        }
                    }
                });
            }
        });
    }

    // A network: one sink mix in layer 0, one mix in each further layer
    // (never contacted by the client), one provider.
    let key = |rng: &mut ChaCha20Rng| SphinxSecretKey::random(rng).public_key();
    // Addresses nothing listens on, distinct as the consensus requires.
    let unused = |port: u16| std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mixes = vec![
        vec![BenchNode::new(11, sink_addr, key(&mut rng))],
        vec![BenchNode::new(12, unused(1), key(&mut rng))],
        vec![BenchNode::new(13, unused(2), key(&mut rng))],
    ];
    let provider = BenchNode::new(20, unused(3), key(&mut rng));
    let provider_id = provider.id();
    let params = bench_params(Duration::from_millis(50), Duration::from_secs(1));
    let consensus = bench_consensus(&mixes, &[provider], params)?;

    // The client's home, made offline.
    let home = tempfile::tempdir()?;
    let passphrase = Passphrase::new("client-load");
    {
        let identity = Identity::generate(&mut rng);
        let store = Store::create(&home.path().join("client.redb"), &passphrase)?;
        store.set_pq_seed(&PqSeed(*identity.pq_seed()))?;
        store.set_profile(&Profile {
            identity_secret: *identity.secret_bytes(),
            name: "alice".into(),
            home_provider: provider_id,
            ack_queue: owned(&mut rng, provider_id),
            loop_queue: owned(&mut rng, provider_id),
        })?;
        let bob = Identity::generate(&mut rng);
        let mut secret = [0u8; 32];
        rng.fill_bytes(&mut secret);
        store.add_contact(&ContactRecord {
            name: "bob".into(),
            state: ContactState::Established,
            identity: Some(bob.public()),
            address: Some((provider_id, QueueId::random(&mut rng))),
            secret,
            inbox: owned(&mut rng, provider_id),
            created_ms: 0,
            provisional_name: false,
            pq_identity: Some(bob.pq_public().clone()),
            known_to_them: true,
        })?;
    }
    let client = Client::open(
        home.path(),
        Arc::new(Fixed(consensus.clone())),
        ClientOptions {
            fetch_interval: Duration::from_secs(3600),
            ack_timeout: Some(Duration::from_secs(3600)),
            ..ClientOptions::default()
        },
        &passphrase,
    )
    .await
    .context("opening the client on its offline home")?;

    let raw_before = {
        let c = consensus.clone();
        let iters = args.raw_iterations;
        tokio::task::spawn_blocking(move || raw_rates(&c, provider_id, iters)).await??
    };

    // Fragments carry a little framing: aim a bit under the body size.
    let data = vec![0x5a_u8; args.packets * (DEPOSIT_BODY_SIZE - 100)];
    let cpu_before = thread_cpu();
    let t0 = Instant::now();
    let handle = client
        .send(
            "bob",
            Body::File {
                name: "load.bin".into(),
                data,
            },
        )
        .await?;
    let send_call = t0.elapsed();
    let total = u64::from(handle.progress().total);
    if total as usize > arrivals.len() {
        bail!("the message made {total} packets, more than the sink tracks");
    }
    let deadline = Instant::now() + Duration::from_secs(600);
    while count.load(Ordering::Relaxed) < total {
        if Instant::now() > deadline {
            bail!(
                "timed out: {} of {total} packets at the sink",
                count.load(Ordering::Relaxed)
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let cpu_after = thread_cpu();
    let stats = client.stats();
    client.shutdown().await;

    let raw_after = {
        let c = consensus.clone();
        let iters = args.raw_iterations;
        tokio::task::spawn_blocking(move || raw_rates(&c, provider_id, iters)).await??
    };

    let n = total as usize;
    let (a, b) = (n / 10, n * 9 / 10);
    let ta = arrivals[a].load(Ordering::Relaxed) as f64;
    let tb = arrivals[b].load(Ordering::Relaxed) as f64;
    let rate = (b - a) as f64 / ((tb - ta) / 1e9);
    // Everything but the sink's runtime: the client's runtime workers and
    // blocking threads, and this (main) thread.
    let client_cpu = cpu_between(&cpu_before, &cpu_after, "client-rt")
        + cpu_between(&cpu_before, &cpu_after, "client-load");
    let per_packet_us = 1e6 * client_cpu / total as f64;
    let ceiling = (raw_before.forward_plus_surb_per_s + raw_after.forward_plus_surb_per_s) / 2.0;
    let forward_only = (raw_before.forward_per_s + raw_after.forward_per_s) / 2.0;
    let seal_us = (raw_before.seal_one_packet_us + raw_after.seal_one_packet_us) / 2.0;
    let packet_us = 1e6 / ceiling;
    let raw_cpu = (raw_before.forward_plus_surb_cpu_us + raw_after.forward_plus_surb_cpu_us) / 2.0;
    let seal_cpu = (raw_before.seal_one_packet_cpu_us + raw_after.seal_one_packet_cpu_us) / 2.0;
    let report = Report {
        machine,
        load_at_end: murmur_benches::loadavg(),
        packets: total,
        client_packets_per_s: rate,
        client_cpu_per_packet_us: per_packet_us,
        send_call_ms: send_call.as_secs_f64() * 1e3,
        raw_before,
        raw_after,
        ceiling_forward_plus_surb_per_s: ceiling,
        raw_forward_only_per_s: forward_only,
        ratio_to_ceiling: rate / ceiling,
        raw_cpu_per_packet_us: raw_cpu,
        cpu_ratio: raw_cpu / per_packet_us,
        seal_one_packet_us: seal_us,
        seal_one_packet_cpu_us: seal_cpu,
        seal_share_of_packet: seal_cpu / raw_cpu,
        link_drops: stats.link_drops,
        target_build_met: rate / ceiling >= 0.9,
        target_seal_met: seal_cpu / raw_cpu < 0.1,
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "client: {} packets (one {:.1} MB message; Client::send took {:.0} ms: seal, fragment, store)",
            report.packets,
            (args.packets * (DEPOSIT_BODY_SIZE - 100)) as f64 / 1e6,
            report.send_call_ms
        );
        println!(
            "raw Sphinx on 1 thread: forward + SURB {:.0}/s before, {:.0}/s after (ceiling {:.0}/s = {:.0} µs per real packet); forward only {:.0}/s",
            report.raw_before.forward_plus_surb_per_s,
            report.raw_after.forward_plus_surb_per_s,
            ceiling,
            packet_us,
            forward_only
        );
        println!(
            "client built and sent {rate:.0} real packets/s = {:.1} % of the ceiling (target ≥ 90 %: {})",
            100.0 * report.ratio_to_ceiling,
            if report.target_build_met {
                "met"
            } else {
                "NOT met"
            }
        );
        println!(
            "CPU per real packet: client {per_packet_us:.0} µs (every client thread), raw Sphinx {raw_cpu:.0} µs: ratio {:.1} % (independent of other load); link drops {}",
            100.0 * report.cpu_ratio,
            report.link_drops
        );
        println!(
            "sealed sender, one-packet message: {seal_cpu:.0} µs CPU ({seal_us:.0} µs wall) = {:.1} % of one real packet's Sphinx CPU (target < 10 %: {})",
            100.0 * report.seal_share_of_packet,
            if report.target_seal_met {
                "met"
            } else {
                "NOT met"
            }
        );
        println!("load average at the end: {:?}", report.load_at_end);
    }
    Ok(())
}
