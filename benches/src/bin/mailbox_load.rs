//! Load run (c): durable mailbox deposits per second through the real write
//! path, next to redb's raw batched insert rate measured in the same run on
//! the same disk.
//!
//! ```text
//! cargo run --release -p murmur-benches --bin mailbox-load -- [--json]
//!     [--deposits N] [--rounds R] [--dir DIR]
//! ```
//!
//! The group-commit figure covers the whole final hop after Sphinx
//! processing: `Mailbox::handle_final` parses each deposit (random message
//! ids, spread over 1024 queues), the writer stores it (entry, dedup record,
//! expiry record, queue counters) in batched `Durability::Immediate`
//! transactions, and only then is its acknowledgement built from its SURB
//! and handed to the packet sink. The clock stops when the last
//! acknowledgement is handed over. Default writer settings.
//!
//! The raw figure inserts values of the same size under sequential keys
//! into one redb table, in transactions of the mean batch size the
//! group-commit run reached, with the same durability: the cost of the disk
//! and of redb alone.
//!
//! The two alternate for several rounds (fresh databases each time) and the
//! medians are compared, so that load from other processes on a shared
//! machine affects both alike.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use murmur_benches::{Machine, Spread};
use murmur_directory::clock::SystemClock;
use murmur_mailbox::{
    CreateOutcome, Mailbox, Metrics, PacketSink, Quota, RedbStore, Store, WriterConfig,
};
use murmur_wire::{
    DEPOSIT_BODY_SIZE, Delivery, Deposit, Destination, FinalPayload, Hop, IdentityKey, MessageId,
    NodeId, Packet, QueueId, Route, SphinxSecretKey, Surb, SurbId, build_surb,
};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use redb::{Database, Durability, TableDefinition};
use serde::Serialize;

const QUEUES: usize = 1024;
const RAW: TableDefinition<u64, &[u8]> = TableDefinition::new("raw");

#[derive(Default)]
struct CountingSink(AtomicU64);

impl PacketSink for CountingSink {
    fn send(&self, _first_hop: NodeId, _packet: Packet) -> bool {
        self.0.fetch_add(1, Ordering::Relaxed);
        true
    }
}

struct GroupRun {
    rate: f64,
    mean_batch: f64,
    entry_size: usize,
}

fn group_commit(
    dir: &Path,
    n: u64,
    rng: &mut ChaCha20Rng,
    surbs: &[Surb],
) -> anyhow::Result<GroupRun> {
    let store = Arc::new(RedbStore::open(
        &dir.join("mailbox.redb"),
        Quota {
            max_messages: u64::MAX,
            max_bytes: u64::MAX,
        },
    )?);
    let queues: Vec<QueueId> = (0..QUEUES)
        .map(|_| {
            let q = QueueId::random(rng);
            let created = store.create_queue(&q, &IdentityKey([1; 32]), 0, u64::MAX)?;
            assert_eq!(created, CreateOutcome::Created);
            Ok(q)
        })
        .collect::<anyhow::Result<_>>()?;
    // Random message ids, as senders choose them.
    let payloads: Vec<Vec<u8>> = (0..n)
        .map(|i| {
            FinalPayload::Deposit(Deposit {
                id: MessageId::random(rng),
                ack: surbs[i as usize % surbs.len()].clone(),
                body: Box::new([i as u8; DEPOSIT_BODY_SIZE]),
            })
            .encode()
        })
        .collect();

    let sink = Arc::new(CountingSink::default());
    let metrics = Arc::new(Metrics::new());
    let config = WriterConfig::default();
    let (mailbox, writer) = Mailbox::start(
        store.clone(),
        sink.clone(),
        Arc::new(SystemClock),
        config,
        metrics.clone(),
    )?;
    // Never more in flight than the writer's queue holds, so that nothing
    // is dropped as overload.
    let window = config.queue_capacity as u64;
    let start = Instant::now();
    let producer = {
        let mailbox = mailbox.clone();
        let sink = sink.clone();
        std::thread::spawn(move || {
            for (i, plaintext) in payloads.into_iter().enumerate() {
                while i as u64 - sink.0.load(Ordering::Relaxed) >= window {
                    std::thread::sleep(Duration::from_micros(50));
                }
                let q = queues[i % queues.len()];
                mailbox.handle_final(q.into(), Delivery::Forward { plaintext });
            }
            queues
        })
    };
    while sink.0.load(Ordering::Relaxed) < n {
        std::thread::sleep(Duration::from_micros(200));
    }
    let elapsed = start.elapsed();
    let queues = producer
        .join()
        .map_err(|_| anyhow::anyhow!("producer panicked"))?;
    assert_eq!(metrics.deposits("stored"), n, "every deposit stored");
    assert_eq!(metrics.deposits("overloaded"), 0);
    let (batches, items) = metrics.batches();
    drop(mailbox);
    writer.join();
    let q = store.queue(&queues[0])?.expect("queue exists");
    Ok(GroupRun {
        rate: n as f64 / elapsed.as_secs_f64(),
        mean_batch: items as f64 / batches.max(1) as f64,
        entry_size: (q.bytes / q.messages.max(1)) as usize,
    })
}

fn raw_redb(dir: &Path, n: u64, batch: u64, value_size: usize) -> anyhow::Result<f64> {
    let db = Database::create(dir.join("raw.redb"))?;
    let value = vec![7u8; value_size];
    let start = Instant::now();
    let mut key = 0u64;
    while key < n {
        let mut txn = db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        {
            let mut table = txn.open_table(RAW)?;
            for _ in 0..batch.min(n - key) {
                table.insert(key, value.as_slice())?;
                key += 1;
            }
        }
        txn.commit()?;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

#[derive(Parser, Debug)]
#[command(about = "Durable mailbox deposits/s next to redb's raw batched insert rate")]
struct Args {
    /// Deposits per round.
    #[arg(long, default_value_t = 200_000)]
    deposits: u64,
    /// Rounds (group commit and raw redb alternate; medians are compared).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Where the databases go (default: the system's temporary directory).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Print one JSON object instead of the report.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Round {
    group_commit_per_s: f64,
    mean_batch: f64,
    raw_redb_per_s: f64,
    raw_batch: u64,
    value_bytes: usize,
    ratio: f64,
}

#[derive(Serialize)]
struct Report {
    machine: Machine,
    load_at_end: [f64; 3],
    deposits_per_round: u64,
    rounds: Vec<Round>,
    group_commit_per_s: Spread,
    raw_redb_per_s: Spread,
    ratio: Spread,
    ratio_of_medians: f64,
    target_met: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let n = args.deposits.max(1000);
    let base = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    let machine = Machine::now();
    if !args.json {
        println!("{}", machine.line());
        println!(
            "{n} deposits per round, {} rounds, databases under {}",
            args.rounds,
            base.display()
        );
    }

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let _guard = runtime.enter();

    let mut rng = ChaCha20Rng::seed_from_u64(1);
    // A few real SURBs, reused: the provider treats each copy the same way.
    let key = SphinxSecretKey::random(&mut rng);
    let route = Route::new(
        vec![Hop {
            id: NodeId::from_bytes([2; 32]),
            key: key.public_key(),
        }],
        vec![Duration::ZERO],
    )?;
    let surbs: Vec<Surb> = (0..16)
        .map(|_| {
            let id = SurbId::random_nonzero(&mut rng);
            build_surb(&mut rng, &route, Destination([3; 32]), id).map(|(s, _)| s)
        })
        .collect::<Result<_, _>>()?;

    let mut rounds = Vec::new();
    for round in 1..=args.rounds.max(1) {
        let dir = tempfile::tempdir_in(&base)?;
        let g = group_commit(dir.path(), n, &mut rng, &surbs)?;
        let batch = (g.mean_batch.round() as u64).max(1);
        let raw = raw_redb(dir.path(), n, batch, g.entry_size)?;
        let r = Round {
            group_commit_per_s: g.rate,
            mean_batch: g.mean_batch,
            raw_redb_per_s: raw,
            raw_batch: batch,
            value_bytes: g.entry_size,
            ratio: g.rate / raw,
        };
        if !args.json {
            println!(
                "round {round}: group commit {:>7.0}/s (mean batch {:.0})   raw redb {:>7.0}/s ({}-byte values, {} per transaction)   {:.0} %",
                r.group_commit_per_s,
                r.mean_batch,
                r.raw_redb_per_s,
                r.value_bytes,
                r.raw_batch,
                100.0 * r.ratio
            );
        }
        rounds.push(r);
    }
    let ours = Spread::of(
        &rounds
            .iter()
            .map(|r| r.group_commit_per_s)
            .collect::<Vec<_>>(),
    );
    let raw = Spread::of(&rounds.iter().map(|r| r.raw_redb_per_s).collect::<Vec<_>>());
    let ratio = Spread::of(&rounds.iter().map(|r| r.ratio).collect::<Vec<_>>());
    let ratio_of_medians = ours.median / raw.median;
    let report = Report {
        machine,
        load_at_end: murmur_benches::loadavg(),
        deposits_per_round: n,
        rounds,
        group_commit_per_s: ours,
        raw_redb_per_s: raw,
        ratio,
        ratio_of_medians,
        target_met: ratio_of_medians >= 0.5,
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "median: group commit {:.0} durable, acknowledged deposits/s (range {:.0}–{:.0}); raw redb batched insert {:.0}/s (range {:.0}–{:.0}); ratio {:.0} % (per round {:.0}–{:.0} %); target ≥ 50 %: {}",
            ours.median,
            ours.min,
            ours.max,
            raw.median,
            raw.min,
            raw.max,
            100.0 * ratio_of_medians,
            100.0 * report.ratio.min,
            100.0 * report.ratio.max,
            if report.target_met { "met" } else { "NOT met" }
        );
        println!("load average at the end: {:?}", report.load_at_end);
    }
    Ok(())
}
