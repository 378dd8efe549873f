//! Durable deposits per second through the real write path, next to redb's
//! raw batched insert rate measured in the same run on the same disk.
//!
//! ```text
//! cargo run --release -p murmur-mailbox --example deposit_bench [-- DEPOSITS [ROUNDS [DIR]]]
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

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

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

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let n: u64 = args
        .next()
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(200_000);
    let rounds: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(3);
    let base = args
        .next()
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    println!(
        "{n} deposits per round, {rounds} rounds, databases under {}",
        base.display()
    );

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

    let (mut ours, mut raws) = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        let dir = tempfile::tempdir_in(&base)?;
        let g = group_commit(dir.path(), n, &mut rng, &surbs)?;
        let batch = (g.mean_batch.round() as u64).max(1);
        let raw = raw_redb(dir.path(), n, batch, g.entry_size)?;
        println!(
            "round {round}: group commit {:>7.0}/s (mean batch {:.0})   raw redb {raw:>7.0}/s ({}-byte values, {batch} per transaction)   {:.0} %",
            g.rate,
            g.mean_batch,
            g.entry_size,
            100.0 * g.rate / raw
        );
        ours.push(g.rate);
        raws.push(raw);
    }
    let (ours, raw) = (median(ours), median(raws));
    println!(
        "median: group commit {ours:.0} durable, acknowledged deposits/s; raw redb batched insert {raw:.0}/s; ratio {:.0} %",
        100.0 * ours / raw
    );
    Ok(())
}
