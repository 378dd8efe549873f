//! Load run: drives a real mix node engine over loopback TCP and compares
//! its forwarded packets/s with the in-process Sphinx unwrap rate × cores
//! measured in the same run.
//!
//! ```text
//! cargo run --release -p murmur-mixnode --example load -- \
//!     [--packets N] [--senders C] [--window W] [--workers K] [--io-threads T]
//! ```
//!
//! The node runs with the default engine and replay settings (unwrap
//! workers: one per core) on a runtime of `--io-threads` threads (default:
//! a quarter of the cores, as the daemon). Packets are built ahead (two
//! hops: the node, then a sink that counts frames), with zero delay, each
//! unique. Senders keep at most `window` packets in flight (sent but not yet
//! at the sink), so the node is kept busy without being pushed into
//! overload drops. The forwarded rate is measured at the sink between 10%
//! and 90% of the packets.
//!
//! The load generator and the sink run on their own one-thread runtime, on
//! the same cores as the node; the CPU time of each part is read from
//! `/proc` and reported per packet, with the rate the node's own CPU use
//! would allow if the load came from elsewhere.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::{SinkExt, StreamExt};
use murmur_mixnode::engine::{
    Engine, EngineConfig, EngineLimits, FinalHop, ReplaySettings, StaticTopology,
};
use murmur_mixnode::keys::KeyRingHandle;
use murmur_wire::ed25519_dalek::SigningKey;
use murmur_wire::{
    AuthoritySet, Consensus, Delivery, Destination, Hop, IdentityKey, KeyRing, MailboxEntry,
    MixEntry, NetworkParams, Packet, PacketCodec, QueueId, Route, SignedConsensus, SphinxSecretKey,
    build_forward_packet,
};
use prometheus_client::registry::Registry;
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::{FramedRead, FramedWrite};
use tokio_util::sync::CancellationToken;

const EPOCH: u64 = 1000;
const L: u64 = 3600;

struct Args {
    packets: usize,
    senders: usize,
    window: u64,
    workers: usize,
    io_threads: usize,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        packets: 40_000,
        senders: 2,
        window: 256,
        workers: 0,
        // As the daemon: a quarter of the cores for I/O.
        io_threads: (cores() / 4).max(1),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().context("every flag takes a value")?;
        match flag.as_str() {
            "--packets" => a.packets = value.parse()?,
            "--senders" => a.senders = value.parse()?,
            "--window" => a.window = value.parse()?,
            "--workers" => a.workers = value.parse()?,
            "--io-threads" => a.io_threads = value.parse()?,
            other => bail!("unknown flag {other}"),
        }
    }
    if a.packets < 1000 || a.senders == 0 || a.window == 0 || a.io_threads == 0 {
        bail!("--packets must be at least 1000, --senders, --window and --io-threads positive");
    }
    Ok(a)
}

struct NoFinalHop;
impl FinalHop for NoFinalHop {
    fn deliver(&self, _: Destination, _: Delivery) {}
}

/// CPU seconds used so far by this process's threads, by thread name
/// (Linux: /proc/self/task/*/stat, in clock ticks of 1/100 s).
fn thread_cpu() -> std::collections::BTreeMap<String, f64> {
    let mut out = std::collections::BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for t in tasks.flatten() {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
        // Fields after the ")" that closes the command name: state is
        // field 3; utime and stime are fields 14 and 15.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
            + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
        let name = comm
            .trim()
            .trim_end_matches(|c: char| c.is_ascii_digit())
            .to_owned();
        *out.entry(name).or_insert(0.0) += ticks / 100.0;
    }
    out
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Builds `n` unique packets for `route`, on every core.
fn build_packets(route: &Route, n: usize) -> Vec<Packet> {
    let threads = cores();
    let per = n.div_ceil(threads);
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let route = route.clone();
            std::thread::spawn(move || {
                let mut rng = ChaCha20Rng::seed_from_u64(1000 + t as u64);
                let dest = Destination::from(QueueId::from_bytes([7; 32]));
                (0..per)
                    .map(|_| build_forward_packet(&mut rng, &route, dest, b"load").unwrap())
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut out: Vec<Packet> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    out.truncate(n);
    out
}

/// Single-thread in-process unwrap rate (packets/s) over `packets`, and the
/// rate with one thread per core.
fn unwrap_rates(ring: &KeyRing, packets: &[Packet]) -> (f64, f64) {
    let start = Instant::now();
    for p in packets {
        ring.process(p).unwrap();
    }
    let single = packets.len() as f64 / start.elapsed().as_secs_f64();
    let threads = cores();
    let start = Instant::now();
    std::thread::scope(|s| {
        for chunk in packets.chunks(packets.len().div_ceil(threads)) {
            s.spawn(move || {
                for p in chunk {
                    ring.process(p).unwrap();
                }
            });
        }
    });
    let parallel = packets.len() as f64 / start.elapsed().as_secs_f64();
    (single, parallel)
}

fn main() -> anyhow::Result<()> {
    let args = args()?;
    let threads = args.io_threads;
    // The node runs on its own runtime; the load generator and the sink on
    // another, so each one's CPU time can be told apart.
    let harness = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("harness")
        .enable_all()
        .build()?;
    let result = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name("node-rt")
        .enable_all()
        .build()?
        .block_on(run(args, harness.handle().clone()));
    harness.shutdown_background();
    result
}

async fn run(args: Args, harness: tokio::runtime::Handle) -> anyhow::Result<()> {
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let node_identity = SigningKey::from_bytes(&[1; 32]);
    let sink_identity = SigningKey::from_bytes(&[2; 32]);
    let node_key = SphinxSecretKey::random(&mut rng);
    let sink_key = SphinxSecretKey::random(&mut rng);
    let node_id = IdentityKey::from(&node_identity.verifying_key()).node_id();
    let sink_id = IdentityKey::from(&sink_identity.verifying_key()).node_id();
    let route = Route::new(
        vec![
            Hop {
                id: node_id,
                key: node_key.public_key(),
            },
            Hop {
                id: sink_id,
                key: sink_key.public_key(),
            },
        ],
        vec![Duration::ZERO; 2],
    )?;

    println!("building {} packets on {} cores ...", args.packets, cores());
    let t = Instant::now();
    let packets = build_packets(&route, args.packets);
    println!("built in {:.1} s", t.elapsed().as_secs_f64());

    let mut ring = KeyRing::new();
    ring.insert(EPOCH, node_key);
    let sample = &packets[..packets.len().min(4000)];
    let (single, parallel) = unwrap_rates(&ring, sample);

    // The sink: counts frames, remembers when the 10% and 90% marks fall.
    let sink = {
        let _in = harness.enter();
        let std = std::net::TcpListener::bind("127.0.0.1:0")?;
        std.set_nonblocking(true)?;
        TcpListener::from_std(std)?
    };
    let sink_addr = sink.local_addr()?;
    let received = Arc::new(AtomicU64::new(0));
    let total = args.packets as u64;
    let marks: Arc<std::sync::Mutex<Option<Instant>>> = Arc::default();
    let marks90: Arc<std::sync::Mutex<Option<Instant>>> = Arc::default();
    {
        let received = received.clone();
        let (marks, marks90) = (marks.clone(), marks90.clone());
        let h = harness.clone();
        harness.spawn(async move {
            loop {
                let Ok((stream, _)) = sink.accept().await else {
                    return;
                };
                let received = received.clone();
                let (marks, marks90) = (marks.clone(), marks90.clone());
                h.spawn(async move {
                    let mut frames = FramedRead::with_capacity(stream, PacketCodec, 256 * 1024);
                    while let Some(Ok(_)) = frames.next().await {
                        let n = received.fetch_add(1, Ordering::Relaxed) + 1;
                        if n == total / 10 {
                            *marks.lock().unwrap() = Some(Instant::now());
                        }
                        if n == total * 9 / 10 {
                            *marks90.lock().unwrap() = Some(Instant::now());
                        }
                    }
                });
            }
        });
    }

    // The node.
    let authority = SigningKey::from_bytes(&[9; 32]);
    let doc = Consensus {
        version: 1,
        epoch: EPOCH,
        valid_after: EPOCH * L,
        valid_until: (EPOCH + 1) * L,
        params: NetworkParams {
            epoch_secs: L,
            mean_delay_us: 0,
            max_delay_us: 1_000_000,
            client_rate: 0.0,
            client_loop_rate: 0.0,
            mix_loop_rate: 0.0,
            packet_size: murmur_wire::PACKET_SIZE as u32,
        },
        mixes: vec![MixEntry {
            layer: 0,
            identity: IdentityKey::from(&node_identity.verifying_key()),
            packet_addr: "127.0.0.1:1".parse()?,
            sphinx_key: ring.get(EPOCH).context("key")?.public_key(),
        }],
        mailboxes: vec![MailboxEntry {
            identity: IdentityKey::from(&sink_identity.verifying_key()),
            packet_addr: sink_addr,
            http_addr: "127.0.0.1:2".parse()?,
            sphinx_key: sink_key.public_key(),
        }],
    };
    let set = AuthoritySet::new(vec![IdentityKey::from(&authority.verifying_key())], 1)?;
    let verified =
        SignedConsensus::sign(&doc, &authority)?.verify(&set, EPOCH * L + 1, Some(EPOCH))?;
    let topology = Arc::new(StaticTopology::with_current(verified));
    let dir = tempfile::tempdir()?;
    let shutdown = CancellationToken::new();
    let mut registry = Registry::default();
    let limits = EngineLimits {
        workers: args.workers,
        ..EngineLimits::default()
    };
    let workers = limits.worker_count();
    let engine = Engine::start(
        EngineConfig {
            listen_addr: "127.0.0.1:0".parse()?,
            replay_dir: dir.path().join("replay"),
            key_lifetime: Duration::from_secs(L + 600),
            limits,
            replay: ReplaySettings::default(),
        },
        KeyRingHandle::new(ring),
        topology,
        Arc::new(NoFinalHop),
        &mut registry,
        shutdown.clone(),
    )?;
    let node_addr = engine.local_addr;
    let dropped_counter = Arc::new(AtomicU64::new(0));

    let cpu_before = thread_cpu();
    // Senders.
    let packets = Arc::new(packets);
    let sent = Arc::new(AtomicU64::new(0));
    let finished = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for s in 0..args.senders {
        let packets = packets.clone();
        let sent = sent.clone();
        let received = received.clone();
        let finished = finished.clone();
        let engine_dropped = dropped_counter.clone();
        let window = args.window;
        let senders = args.senders;
        tasks.push(harness.spawn(async move {
            let stream = TcpStream::connect(node_addr).await?;
            stream.set_nodelay(true)?;
            let mut link = FramedWrite::new(stream, PacketCodec);
            link.set_backpressure_boundary(64 * 1024);
            for p in packets.iter().skip(s).step_by(senders) {
                while sent.load(Ordering::Relaxed)
                    - received.load(Ordering::Relaxed)
                    - engine_dropped.load(Ordering::Relaxed)
                    >= window
                {
                    SinkExt::<Packet>::flush(&mut link).await?;
                    tokio::time::sleep(Duration::from_micros(200)).await;
                }
                link.feed(p.clone()).await?;
                sent.fetch_add(1, Ordering::Relaxed);
            }
            SinkExt::<Packet>::flush(&mut link).await?;
            // Keep the link open until the run is over.
            while !finished.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            anyhow::Ok(())
        }));
    }
    // Done when every packet reached the sink or was dropped by the node.
    let deadline = Instant::now() + Duration::from_secs(300);
    let (mut samples, mut unwrap_sum, mut unwrap_empty, mut link_sum) = (0u64, 0i64, 0u64, 0i64);
    let done = loop {
        let stats = engine.stats();
        samples += 1;
        unwrap_sum += stats.unwrap_queue;
        link_sum += stats.link_queue;
        if stats.unwrap_queue == 0 {
            unwrap_empty += 1;
        }
        let dropped: u64 = stats.dropped.values().sum();
        dropped_counter.store(dropped, Ordering::Relaxed);
        let got = received.load(Ordering::Relaxed);
        if got + dropped >= total {
            break Instant::now();
        }
        if Instant::now() > deadline {
            bail!("timed out: {got} of {total} arrived; node stats: {stats:?}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let cpu_after = thread_cpu();
    let stats = engine.stats();
    let got = received.load(Ordering::Relaxed);
    let (Some(t10), Some(t90)) = (*marks.lock().unwrap(), *marks90.lock().unwrap()) else {
        bail!("only {got} of {total} packets arrived; node stats: {stats:?}");
    };
    finished.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await??;
    }
    let steady = (total * 9 / 10 - total / 10) as f64 / (t90 - t10).as_secs_f64();
    let overall = got as f64 / (done - start).as_secs_f64();
    let ideal = single * cores() as f64;
    println!();
    println!("cores                              {}", cores());
    println!("node unwrap workers                {workers}");
    println!("node I/O runtime threads           {}", args.io_threads);
    println!("in-process unwrap, 1 thread        {single:>9.0} packets/s");
    println!(
        "in-process unwrap, {} threads       {parallel:>9.0} packets/s",
        cores()
    );
    println!("unwrap rate x cores (target base)  {ideal:>9.0} packets/s");
    println!("node forwarded (10%..90%)          {steady:>9.0} packets/s");
    println!("node forwarded (whole run)         {overall:>9.0} packets/s");
    println!(
        "ratio forwarded / (unwrap x cores) {:>9.1} %",
        100.0 * steady / ideal
    );
    println!(
        "ratio forwarded / parallel unwrap  {:>9.1} %",
        100.0 * steady / parallel
    );
    println!(
        "queues (sampled every 5 ms)        unwrap mean {:.1}, empty {:.0}% of samples; link mean {:.1}",
        unwrap_sum as f64 / samples as f64,
        100.0 * unwrap_empty as f64 / samples as f64,
        link_sum as f64 / samples as f64
    );
    let used = |prefix: &str| -> f64 {
        cpu_after
            .iter()
            .filter(|(n, _)| n.starts_with(prefix))
            .map(|(n, a)| a - cpu_before.get(n).copied().unwrap_or(0.0))
            .sum()
    };
    let (unwrap_cpu, node_io_cpu, harness_cpu) =
        (used("murmur-unwrap"), used("node-rt"), used("harness"));
    let per = |cpu: f64| 1e6 * cpu / got as f64;
    println!(
        "CPU per packet: node unwrap workers {:>6.1} us, node I/O tasks {:>5.1} us, load generator + sink {:>5.1} us",
        per(unwrap_cpu),
        per(node_io_cpu),
        per(harness_cpu)
    );
    let node_only = cores() as f64 * got as f64 / (unwrap_cpu + node_io_cpu);
    println!(
        "node CPU-bound rate on {} cores     {node_only:>9.0} packets/s  ({:.1} % of unwrap x cores; what the node would forward with the load generated elsewhere)",
        cores(),
        100.0 * node_only / ideal
    );
    println!(
        "wall time of the run {:.2} s x {} cores = {:.2} CPU-s available",
        (done - start).as_secs_f64(),
        cores(),
        (done - start).as_secs_f64() * cores() as f64
    );
    let dropped: u64 = stats.dropped.values().sum();
    println!(
        "node: received {}, forwarded {}, dropped {dropped} {:?}",
        stats.received,
        stats.forwarded,
        stats
            .dropped
            .iter()
            .filter(|(_, n)| **n > 0)
            .collect::<Vec<_>>()
    );
    shutdown.cancel();
    engine.wait().await;
    Ok(())
}
