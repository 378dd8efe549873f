//! Load run (a): one real mix node engine on loopback, driven at increasing
//! offered load.
//!
//! ```text
//! cargo run --release -p murmur-benches --bin mix-load -- [--json] [--packets N]
//!     [--loads 0.25,0.5,0.75,0.9,1.1] [--mean-delay-us US] [--step-secs S] ...
//! ```
//!
//! Packets have two hops: the node under test, then a sink that reads
//! frames. They are built ahead, each unique; half ask the node for no
//! delay, half for a delay drawn from an exponential distribution
//! (`--mean-delay-us`), and the added latency is reported for each half:
//! a delayed packet also waits for the node's delay timer to fire. For each
//! packet the run also computes, ahead, the bytes the node will forward, so
//! the sink recognises every packet it receives without any Sphinx work.
//!
//! 1. **Ceiling**: the in-process Sphinx unwrap rate on one thread
//!    (`KeyRing::process`), times the cores.
//! 2. **Capacity**: a fresh node is kept saturated by closed-loop senders
//!    (at most `--window` packets in flight) and its forwarded packets/s are
//!    measured at the sink between 10% and 90% of the packets.
//! 3. **Offered load steps**: for each fraction of the measured capacity in
//!    `--loads`, a fresh node receives packets at that rate (open loop, in
//!    1 ms bursts) for `--step-secs`; the run reports the forwarded rate,
//!    the drop rate, and the latency each packet gained at the node beyond
//!    its own delay (sink arrival − send − delay: loopback TCP both ways,
//!    queueing, unwrapping, the delay timer).
//!
//! Every link is encrypted as in the network (`docs/protocol.md` §4): the
//! senders are clients of the node, the node a node-authenticated client
//! of the sink. The run also reports the link cost per packet: sealing and
//! opening one frame's record on one thread, in process.
//!
//! The load generator and the sink share the machine's cores with the node;
//! the CPU time of each part is read from `/proc` and reported per packet,
//! with the rate the node's own CPU use would allow were the load generated
//! elsewhere.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Parser;
use futures::{SinkExt, StreamExt};
use murmur_benches::{
    BenchNode, Machine, bench_consensus, bench_link_key, bench_params, cores, cpu_between,
    quantile, sorted, thread_cpu,
};
use murmur_net::{LinkSettings, LinkStream};
use murmur_node::engine::{
    ClientPolicy, Engine, EngineConfig, EngineHandle, EngineLimits, FinalHop, LinkConfig,
    ReplaySettings, StaticTopology,
};
use murmur_node::keys::KeyRingHandle;
use murmur_wire::link::Purpose;
use murmur_wire::policy::sample_delay;
use murmur_wire::{
    Delivery, Destination, Hop, KeyRing, Packet, PacketCodec, Processed, QueueId, Route,
    SphinxSecretKey, build_forward_packet,
};
use prometheus_client::registry::Registry;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha20Rng;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_util::codec::{FramedRead, FramedWrite};
use tokio_util::sync::CancellationToken;

#[derive(Parser, Debug, Clone)]
#[command(about = "Drives one mix node on loopback at increasing offered load")]
struct Args {
    /// Packets built ahead (each step uses at most this many).
    #[arg(long, default_value_t = 40_000)]
    packets: usize,
    /// Mean of the per-hop delay the packets ask the node for, µs.
    #[arg(long, default_value_t = 1000)]
    mean_delay_us: u64,
    /// Offered load steps, as fractions of the measured capacity.
    #[arg(long, value_delimiter = ',', default_value = "0.25,0.5,0.75,0.9,1.1")]
    loads: Vec<f64>,
    /// Length of each load step, seconds (fewer if the packets run out).
    #[arg(long, default_value_t = 3.0)]
    step_secs: f64,
    /// Closed-loop senders in the capacity run.
    #[arg(long, default_value_t = 2)]
    senders: usize,
    /// Packets in flight at most in the capacity run.
    #[arg(long, default_value_t = 256)]
    window: u64,
    /// Unwrap workers of the node (0: one per core plus one, the default).
    #[arg(long, default_value_t = 0)]
    workers: usize,
    /// I/O runtime threads of the node (default: a quarter of the cores, as
    /// the daemon).
    #[arg(long)]
    io_threads: Option<usize>,
    /// Print one JSON object instead of the report.
    #[arg(long)]
    json: bool,
}

struct NoFinalHop;
impl FinalHop for NoFinalHop {
    fn deliver(&self, _: Destination, _: Delivery) {}
}

/// Packets built ahead, with the delay each asks for and the key under
/// which the sink recognises the packet the node forwards.
struct Pool {
    packets: Vec<Packet>,
    delays_us: Vec<u64>,
    index: HashMap<[u8; 32], u32>,
}

fn out_key(p: &Packet) -> [u8; 32] {
    let mut k = [0u8; 32];
    k.copy_from_slice(&p.as_bytes()[..32]);
    k
}

fn build_pool(
    node: &Hop,
    sink: &Hop,
    node_key: &SphinxSecretKey,
    n: usize,
    mean_delay: Duration,
) -> anyhow::Result<Pool> {
    let threads = cores();
    let per = n.div_ceil(threads);
    let mut parts = Vec::new();
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (node, sink) = (*node, *sink);
                s.spawn(move || -> anyhow::Result<Vec<(Packet, u64, [u8; 32])>> {
                    let mut rng = ChaCha20Rng::seed_from_u64(1000 + t as u64);
                    let mut ring = KeyRing::new();
                    ring.insert(1, node_key.clone());
                    let dest = Destination::from(QueueId::from_bytes([7; 32]));
                    let mut out = Vec::with_capacity(per);
                    for _ in 0..per {
                        // Half the packets ask for no delay (they bypass the
                        // node's delay timer), half for an exponential one.
                        let delay = if rng.random::<bool>() {
                            Duration::ZERO
                        } else {
                            sample_delay(&mut rng, mean_delay, Duration::from_secs(1))
                        };
                        let route = Route::new(vec![node, sink], vec![delay, Duration::ZERO])?;
                        let p = build_forward_packet(&mut rng, &route, dest, b"load")?;
                        let Processed::Forward { packet, .. } = ring.process(&p)?.1 else {
                            bail!("the node's hop forwards");
                        };
                        out.push((p, delay.as_micros() as u64, out_key(&packet)));
                    }
                    Ok(out)
                })
            })
            .collect();
        for h in handles {
            parts.push(h.join().map_err(|_| anyhow::anyhow!("builder panicked")));
        }
    });
    let mut pool = Pool {
        packets: Vec::with_capacity(n),
        delays_us: Vec::with_capacity(n),
        index: HashMap::with_capacity(n),
    };
    for part in parts {
        for (p, d, k) in part?? {
            if pool.packets.len() == n {
                break;
            }
            let i = pool.packets.len() as u32;
            if pool.index.insert(k, i).is_some() {
                bail!("two forwarded packets share their first 32 bytes");
            }
            pool.packets.push(p);
            pool.delays_us.push(d);
        }
    }
    Ok(pool)
}

/// Single-thread in-process unwrap rate (packets/s), and the rate with one
/// thread per core.
fn unwrap_rates(key: &SphinxSecretKey, packets: &[Packet]) -> anyhow::Result<(f64, f64)> {
    let mut ring = KeyRing::new();
    ring.insert(1, key.clone());
    let start = Instant::now();
    for p in packets {
        ring.process(p)?;
    }
    let single = packets.len() as f64 / start.elapsed().as_secs_f64();
    let threads = cores();
    let start = Instant::now();
    std::thread::scope(|s| {
        for chunk in packets.chunks(packets.len().div_ceil(threads)) {
            let ring = &ring;
            s.spawn(move || {
                for p in chunk {
                    let _ = ring.process(p);
                }
            });
        }
    });
    let parallel = packets.len() as f64 / start.elapsed().as_secs_f64();
    Ok((single, parallel))
}

/// What one step shares between the sender, the sink and the report.
struct Track {
    base: Instant,
    /// ns after `base` (+1, so that 0 means "not yet").
    sent: Vec<AtomicU64>,
    arrived: Vec<AtomicU64>,
    received: AtomicU64,
    sent_count: AtomicU64,
    dropped: AtomicU64,
}

impl Track {
    fn new(n: usize) -> Arc<Self> {
        Arc::new(Self {
            base: Instant::now(),
            sent: (0..n).map(|_| AtomicU64::new(0)).collect(),
            arrived: (0..n).map(|_| AtomicU64::new(0)).collect(),
            received: AtomicU64::new(0),
            sent_count: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        })
    }

    fn stamp(&self, slot: &AtomicU64) {
        slot.store(self.base.elapsed().as_nanos() as u64 + 1, Ordering::Relaxed);
    }
}

struct Node {
    engine: EngineHandle,
    shutdown: CancellationToken,
    _dir: tempfile::TempDir,
}

/// A fresh node (empty replay cache) forwarding to a fresh sink.
async fn start_node(
    args: &Args,
    node_seed: u8,
    node_key: &SphinxSecretKey,
    sink_key: &SphinxSecretKey,
    pool: &Arc<Pool>,
    track: &Arc<Track>,
    harness: &tokio::runtime::Handle,
) -> anyhow::Result<Node> {
    let sink = murmur_benches::loopback_listener(harness)?;
    let sink_addr = sink.local_addr()?;
    spawn_sink(sink, pool.clone(), track.clone(), harness);
    let params = bench_params(
        Duration::from_micros(args.mean_delay_us),
        Duration::from_secs(1),
    );
    let node = BenchNode::new(node_seed, "127.0.0.1:1".parse()?, node_key.public_key());
    let node_id = node.id();
    let sink_node = BenchNode::new(2, sink_addr, sink_key.public_key());
    let consensus = bench_consensus(&[vec![node]], &[sink_node], params)?;
    let mut ring = KeyRing::new();
    ring.insert(consensus.epoch(), node_key.clone());
    let topology = Arc::new(StaticTopology::with_current((*consensus).clone()));
    let dir = tempfile::tempdir()?;
    let shutdown = CancellationToken::new();
    let engine = Engine::start(
        EngineConfig {
            listen_addr: "127.0.0.1:0".parse()?,
            replay_dir: dir.path().join("replay"),
            key_lifetime: Duration::from_secs(murmur_benches::BENCH_EPOCH_SECS + 600),
            limits: EngineLimits {
                workers: args.workers,
                ..EngineLimits::default()
            },
            replay: ReplaySettings::default(),
            link: LinkConfig {
                key: Arc::new(bench_link_key(node_seed)),
                node_id,
                clients: ClientPolicy::Always,
                settings: LinkSettings::default(),
            },
        },
        KeyRingHandle::new(ring),
        topology,
        Arc::new(NoFinalHop),
        &mut Registry::default(),
        shutdown.clone(),
    )?;
    Ok(Node {
        engine,
        shutdown,
        _dir: dir,
    })
}

fn spawn_sink(
    sink: TcpListener,
    pool: Arc<Pool>,
    track: Arc<Track>,
    harness: &tokio::runtime::Handle,
) {
    let h = harness.clone();
    let key = Arc::new(bench_link_key(2));
    harness.spawn(async move {
        while let Ok((stream, _)) = sink.accept().await {
            let (pool, track, key) = (pool.clone(), track.clone(), key.clone());
            h.spawn(async move {
                let _ = stream.set_nodelay(true);
                let Ok(link) =
                    murmur_net::accept(stream, Purpose::Packets, &key, &LinkSettings::default())
                        .await
                else {
                    return;
                };
                let mut frames = FramedRead::with_capacity(link.stream, PacketCodec, 256 * 1024);
                while let Some(Ok(p)) = frames.next().await {
                    if let Some(&i) = pool.index.get(&out_key(&p)) {
                        track.stamp(&track.arrived[i as usize]);
                        track.received.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    });
}

/// A sender's link to the node under test (seed 1), as a client.
async fn client_link(addr: SocketAddr) -> anyhow::Result<LinkStream<tokio::net::TcpStream>> {
    let key = bench_link_key(1);
    Ok(murmur_net::connect(
        addr,
        Purpose::Packets,
        None,
        key.public(),
        &LinkSettings::default(),
    )
    .await?)
}

/// The link cost of one packet: sealing and opening the record of one
/// frame, µs each on one thread (each frame its own record — the most a
/// packet pays; under load one record carries many frames).
fn link_cost_us(n: usize) -> anyhow::Result<(f64, f64)> {
    use murmur_wire::link::{Initiator, Record, Responder};
    let mut rng = ChaCha20Rng::seed_from_u64(3);
    let server = bench_link_key(9);
    let (init, m1) = Initiator::start(&mut rng, Purpose::Packets, None, server.public())?;
    let (resp, m2) = Responder::respond(&mut rng, Purpose::Packets, &server, &m1)?;
    let (m3, mut tx) = init.finish(&m2)?;
    let mut rx = resp.finish(&m3)?.transport;
    let frame = vec![0x5a_u8; murmur_wire::frame::FRAME_SIZE];
    let mut records: Vec<Vec<u8>> = (0..n)
        .map(|_| Vec::with_capacity(frame.len() + 64))
        .collect();
    let t = Instant::now();
    for r in &mut records {
        tx.seal(&frame, r)?;
    }
    let seal_us = t.elapsed().as_secs_f64() * 1e6 / n as f64;
    let mut opened = vec![0u8; frame.len() + 64];
    let t = Instant::now();
    for r in &records {
        match rx.open(&r[2..], &mut opened)? {
            Record::Data(len) if len == frame.len() => {}
            _ => bail!("a sealed frame did not open to itself"),
        }
    }
    let open_us = t.elapsed().as_secs_f64() * 1e6 / n as f64;
    Ok((seal_us, open_us))
}

/// Waits until every packet sent reached the sink or was dropped by the
/// node (or `limit` passes); keeps `track.dropped` current.
async fn drain(node: &Node, track: &Track, total: u64, limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        let dropped: u64 = node.engine.stats().dropped.values().sum();
        track.dropped.store(dropped, Ordering::Relaxed);
        let got = track.received.load(Ordering::Relaxed);
        if got + dropped >= total {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "timed out: {got} of {total} arrived, {dropped} dropped; node stats: {:?}",
                node.engine.stats()
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[derive(Serialize, Clone, Copy, Default)]
struct CpuPerPacket {
    unwrap_workers_us: f64,
    node_io_us: f64,
    load_generator_and_sink_us: f64,
}

#[derive(Serialize)]
struct CapacityRun {
    forwarded_per_s: f64,
    ratio_to_ceiling: f64,
    dropped: u64,
    cpu_per_packet: CpuPerPacket,
    /// What the node's own CPU use allows on all cores.
    node_cpu_bound_rate: f64,
    node_cpu_bound_ratio: f64,
}

#[derive(Serialize)]
struct LoadStep {
    fraction_of_capacity: f64,
    offered_per_s: f64,
    sent: u64,
    forwarded_per_s: f64,
    drop_rate: f64,
    dropped_by_reason: Vec<(String, u64)>,
    /// Added latency of every packet, µs.
    added_latency_all_us: Latency,
    /// Added latency of the packets that asked for no delay, µs.
    added_latency_zero_delay_us: Latency,
    /// Added latency of the packets that asked for a delay, µs.
    added_latency_delayed_us: Latency,
    cpu_per_packet: CpuPerPacket,
}

#[derive(Serialize, Clone, Copy, Default)]
struct Latency {
    count: usize,
    p50: f64,
    p99: f64,
    max: f64,
    mean: f64,
}

impl Latency {
    fn of(v: Vec<f64>) -> Self {
        let s = sorted(v);
        Self {
            count: s.len(),
            p50: quantile(&s, 0.5),
            p99: quantile(&s, 0.99),
            max: quantile(&s, 1.0),
            mean: s.iter().sum::<f64>() / s.len().max(1) as f64,
        }
    }
}

#[derive(Serialize)]
struct Report {
    machine: Machine,
    load_at_end: [f64; 3],
    packets: usize,
    mean_delay_us: u64,
    workers: usize,
    io_threads: usize,
    unwrap_1_thread_per_s: f64,
    unwrap_all_threads_per_s: f64,
    /// Sealing one frame's record on the link, µs.
    link_seal_us: f64,
    /// Opening it, µs.
    link_open_us: f64,
    ceiling_unwrap_x_cores_per_s: f64,
    capacity: CapacityRun,
    steps: Vec<LoadStep>,
    half_load_p99_us: Option<f64>,
    target_capacity_met: bool,
    target_latency_met: Option<bool>,
}

fn cpu_per_packet(
    before: &std::collections::BTreeMap<String, f64>,
    after: &std::collections::BTreeMap<String, f64>,
    packets: u64,
) -> CpuPerPacket {
    let per = |prefix| 1e6 * cpu_between(before, after, prefix) / packets.max(1) as f64;
    CpuPerPacket {
        unwrap_workers_us: per("murmur-unwrap"),
        node_io_us: per("node-rt"),
        load_generator_and_sink_us: per("harness"),
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.packets < 1000 || args.senders == 0 || args.window == 0 || args.step_secs <= 0.0 {
        bail!("--packets must be at least 1000; --senders, --window, --step-secs positive");
    }
    let io_threads = args.io_threads.unwrap_or((cores() / 4).max(1));
    // The node runs on its own runtime; the load generator and the sink on
    // another, so each one's CPU time can be told apart.
    let harness = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("harness")
        .enable_all()
        .build()?;
    let result = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(io_threads)
        .thread_name("node-rt")
        .enable_all()
        .build()?
        .block_on(run(args, io_threads, harness.handle().clone()));
    harness.shutdown_background();
    result
}

async fn run(args: Args, io_threads: usize, harness: tokio::runtime::Handle) -> anyhow::Result<()> {
    let machine = Machine::now();
    let say = |s: String| {
        if !args.json {
            println!("{s}");
        }
    };
    say(machine.line());
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let node_key = SphinxSecretKey::random(&mut rng);
    let sink_key = SphinxSecretKey::random(&mut rng);
    let node_hop = Hop {
        id: BenchNode::new(1, "127.0.0.1:1".parse()?, node_key.public_key()).id(),
        key: node_key.public_key(),
    };
    let sink_hop = Hop {
        id: BenchNode::new(2, "127.0.0.1:1".parse()?, sink_key.public_key()).id(),
        key: sink_key.public_key(),
    };
    say(format!(
        "building {} packets on {} cores ...",
        args.packets,
        cores()
    ));
    let t = Instant::now();
    let pool = Arc::new(build_pool(
        &node_hop,
        &sink_hop,
        &node_key,
        args.packets,
        Duration::from_micros(args.mean_delay_us),
    )?);
    say(format!("built in {:.1} s", t.elapsed().as_secs_f64()));

    let sample = &pool.packets[..pool.packets.len().min(4000)];
    let (single, parallel) = unwrap_rates(&node_key, sample)?;
    let ceiling = single * cores() as f64;
    say(format!(
        "ceiling: in-process unwrap {single:.0}/s on 1 thread × {} cores = {ceiling:.0} packets/s (all threads at once: {parallel:.0}/s)",
        cores()
    ));

    let (seal_us, open_us) = link_cost_us(20_000)?;
    let link_us = seal_us + open_us;
    say(format!(
        "link cost per packet (one frame per record, one thread): seal {seal_us:.2} µs + open {open_us:.2} µs = {link_us:.2} µs = {:.1} % of one unwrap ({:.1} µs)",
        100.0 * link_us / (1e6 / single),
        1e6 / single
    ));

    // Capacity: closed loop, saturated.
    let capacity = {
        let track = Track::new(pool.packets.len());
        let node = start_node(&args, 1, &node_key, &sink_key, &pool, &track, &harness).await?;
        let total = pool.packets.len() as u64;
        let cpu_before = thread_cpu();
        let mut tasks = Vec::new();
        for s in 0..args.senders {
            let (pool, track) = (pool.clone(), track.clone());
            let (addr, window, senders) = (node.engine.local_addr, args.window, args.senders);
            tasks.push(harness.spawn(async move {
                let mut link = FramedWrite::new(client_link(addr).await?, PacketCodec);
                link.set_backpressure_boundary(64 * 1024);
                let mut i = s;
                while i < pool.packets.len() {
                    while track.sent_count.load(Ordering::Relaxed)
                        - track.received.load(Ordering::Relaxed)
                        - track.dropped.load(Ordering::Relaxed)
                        >= window
                    {
                        SinkExt::<Packet>::flush(&mut link).await?;
                        tokio::time::sleep(Duration::from_micros(200)).await;
                    }
                    track.stamp(&track.sent[i]);
                    link.feed(pool.packets[i].clone()).await?;
                    track.sent_count.fetch_add(1, Ordering::Relaxed);
                    i += senders;
                }
                SinkExt::<Packet>::flush(&mut link).await?;
                // Keep the link open until the node has read everything.
                tokio::time::sleep(Duration::from_secs(3600)).await;
                anyhow::Ok(())
            }));
        }
        drain(&node, &track, total, Duration::from_secs(300)).await?;
        let cpu_after = thread_cpu();
        for t in &tasks {
            t.abort();
        }
        // Forwarded rate between the 10% and 90% arrivals.
        let arrivals = sorted(
            track
                .arrived
                .iter()
                .map(|a| a.load(Ordering::Relaxed))
                .filter(|&a| a > 0)
                .map(|a| a as f64)
                .collect(),
        );
        let got = arrivals.len();
        if got < 100 {
            bail!("only {got} packets arrived in the capacity run");
        }
        let (a, b) = (got / 10, got * 9 / 10);
        let rate = (b - a) as f64 / ((arrivals[b] - arrivals[a]) / 1e9);
        let cpu = cpu_per_packet(&cpu_before, &cpu_after, got as u64);
        let node_cpu = (cpu.unwrap_workers_us + cpu.node_io_us) / 1e6;
        let node_only = cores() as f64 / node_cpu;
        node.shutdown.cancel();
        node.engine.wait().await;
        CapacityRun {
            forwarded_per_s: rate,
            ratio_to_ceiling: rate / ceiling,
            dropped: track.dropped.load(Ordering::Relaxed),
            cpu_per_packet: cpu,
            node_cpu_bound_rate: node_only,
            node_cpu_bound_ratio: node_only / ceiling,
        }
    };
    say(format!(
        "capacity: forwarded {:.0} packets/s = {:.1} % of the ceiling (target ≥ 85 %); {} dropped\n  \
         CPU per packet: unwrap workers {:.1} µs, node I/O {:.1} µs, load generator + sink {:.1} µs\n  \
         node's own CPU allows {:.0} packets/s on {} cores = {:.1} % of the ceiling",
        capacity.forwarded_per_s,
        100.0 * capacity.ratio_to_ceiling,
        capacity.dropped,
        capacity.cpu_per_packet.unwrap_workers_us,
        capacity.cpu_per_packet.node_io_us,
        capacity.cpu_per_packet.load_generator_and_sink_us,
        capacity.node_cpu_bound_rate,
        cores(),
        100.0 * capacity.node_cpu_bound_ratio
    ));

    // Offered load steps.
    let mut steps = Vec::new();
    for (k, &fraction) in args.loads.iter().enumerate() {
        let rate = fraction * capacity.forwarded_per_s;
        let n = ((rate * args.step_secs) as usize).clamp(100, pool.packets.len());
        let track = Track::new(pool.packets.len());
        let node = start_node(&args, 1, &node_key, &sink_key, &pool, &track, &harness).await?;
        let addr: SocketAddr = node.engine.local_addr;
        let cpu_before = thread_cpu();
        let sender = {
            let (pool, track) = (pool.clone(), track.clone());
            harness.spawn(async move {
                let mut link = FramedWrite::new(client_link(addr).await?, PacketCodec);
                link.set_backpressure_boundary(256 * 1024);
                let start = Instant::now();
                let mut tick = tokio::time::interval(Duration::from_millis(1));
                let mut next = 0usize;
                while next < n {
                    tick.tick().await;
                    let due = ((start.elapsed().as_secs_f64() * rate) as usize).min(n);
                    while next < due {
                        track.stamp(&track.sent[next]);
                        link.feed(pool.packets[next].clone()).await?;
                        next += 1;
                    }
                    SinkExt::<Packet>::flush(&mut link).await?;
                }
                let secs = start.elapsed().as_secs_f64();
                tokio::time::sleep(Duration::from_secs(3600)).await;
                anyhow::Ok(secs)
            })
        };
        let limit = Duration::from_secs_f64(args.step_secs * 3.0 + 10.0);
        drain(&node, &track, n as u64, limit).await?;
        let cpu_after = thread_cpu();
        sender.abort();
        let stats = node.engine.stats();
        node.shutdown.cancel();
        node.engine.wait().await;

        let (mut zero, mut delayed) = (Vec::new(), Vec::new());
        let (mut first_sent, mut last_arrival) = (u64::MAX, 0u64);
        for i in 0..n {
            let s = track.sent[i].load(Ordering::Relaxed);
            let a = track.arrived[i].load(Ordering::Relaxed);
            if s > 0 {
                first_sent = first_sent.min(s);
            }
            if s > 0 && a > 0 {
                last_arrival = last_arrival.max(a);
                let lat_us = (a as f64 - s as f64) / 1e3 - pool.delays_us[i] as f64;
                if pool.delays_us[i] == 0 {
                    zero.push(lat_us);
                } else {
                    delayed.push(lat_us);
                }
            }
        }
        let got = (zero.len() + delayed.len()) as u64;
        let all: Vec<f64> = zero.iter().chain(&delayed).copied().collect();
        let dropped: u64 = stats.dropped.values().sum();
        let window_s = (last_arrival.saturating_sub(first_sent)) as f64 / 1e9;
        let step = LoadStep {
            fraction_of_capacity: fraction,
            offered_per_s: rate,
            sent: n as u64,
            forwarded_per_s: got as f64 / window_s.max(1e-9),
            drop_rate: dropped as f64 / n as f64,
            dropped_by_reason: stats
                .dropped
                .iter()
                .filter(|(_, v)| **v > 0)
                .map(|(k, v)| ((*k).to_owned(), *v))
                .collect(),
            added_latency_all_us: Latency::of(all),
            added_latency_zero_delay_us: Latency::of(zero),
            added_latency_delayed_us: Latency::of(delayed),
            cpu_per_packet: cpu_per_packet(&cpu_before, &cpu_after, n as u64),
        };
        say(format!(
            "step {}: offered {:>6.0}/s ({:>3.0} % of capacity, {:>4.1} % of ceiling): forwarded {:>6.0}/s, drops {:.2} % {:?}\n  \
             added latency per hop: all p50 {:.0} µs, p99 {:.0} µs; no-delay packets p50 {:.0} µs, p99 {:.0} µs, max {:.0} µs; delayed packets p50 {:.0} µs, p99 {:.0} µs, max {:.0} µs",
            k + 1,
            step.offered_per_s,
            100.0 * fraction,
            100.0 * rate / ceiling,
            step.forwarded_per_s,
            100.0 * step.drop_rate,
            step.dropped_by_reason,
            step.added_latency_all_us.p50,
            step.added_latency_all_us.p99,
            step.added_latency_zero_delay_us.p50,
            step.added_latency_zero_delay_us.p99,
            step.added_latency_zero_delay_us.max,
            step.added_latency_delayed_us.p50,
            step.added_latency_delayed_us.p99,
            step.added_latency_delayed_us.max,
        ));
        steps.push(step);
    }
    // The target is read on every packet of the half-load step.
    let half = steps
        .iter()
        .find(|s| (s.fraction_of_capacity - 0.5).abs() < 1e-9)
        .map(|s| s.added_latency_all_us.p99);
    let report = Report {
        machine,
        load_at_end: murmur_benches::loadavg(),
        packets: pool.packets.len(),
        mean_delay_us: args.mean_delay_us,
        workers: EngineLimits {
            workers: args.workers,
            ..EngineLimits::default()
        }
        .worker_count(),
        io_threads,
        unwrap_1_thread_per_s: single,
        unwrap_all_threads_per_s: parallel,
        link_seal_us: seal_us,
        link_open_us: open_us,
        ceiling_unwrap_x_cores_per_s: ceiling,
        target_capacity_met: capacity.ratio_to_ceiling >= 0.85,
        capacity,
        steps,
        half_load_p99_us: half,
        target_latency_met: half.map(|p99| p99 <= 1000.0),
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "targets: forwarded ≥ 85 % of unwrap × cores: {} ({:.1} %); added latency p99 ≤ 1 ms at half capacity: {}",
            if report.target_capacity_met {
                "met"
            } else {
                "NOT met"
            },
            100.0 * report.capacity.ratio_to_ceiling,
            match (report.target_latency_met, half) {
                (Some(true), Some(p)) => format!("met ({p:.0} µs)"),
                (Some(false), Some(p)) => format!("NOT met ({p:.0} µs)"),
                _ => "not measured (no 0.5 step)".to_owned(),
            }
        );
        println!("load average at the end: {:?}", murmur_benches::loadavg());
    }
    Ok(())
}
