//! Load run (c): durable mailbox deposits per second through the real write
//! path, and owner fetches per second, on each storage backend side by side
//! — redb and PostgreSQL — each next to its engine's raw batched insert
//! rate measured in the same run on the same disk.
//!
//! ```text
//! cargo run --release -p murmur-benches --bin mailbox-load -- [--json]
//!     [--deposits N] [--rounds R] [--dir DIR] [--backends redb,postgres]
//!     [--postgres-url URL] [--fetches N] [--fetch-limit L] [--fetch-threads T]
//! ```
//!
//! The deposit figure covers the whole final hop after Sphinx processing:
//! `Mailbox::handle_final` parses each deposit (random message ids, spread
//! over 1024 queues), the writer stores it (entry, dedup record, expiry
//! record, queue counters) in batched durable transactions, and only then
//! is its acknowledgement built from its SURB and handed to the packet
//! sink. The clock stops when the last acknowledgement is handed over.
//! Default writer settings.
//!
//! The fetch figure is `Store::fetch` as the fetch API calls it (from
//! blocking threads, here `--fetch-threads` at once): pages of up to
//! `--fetch-limit` entries at a random position of a random queue of what
//! the deposit run stored.
//!
//! The raw figures insert values of the same size under sequential keys
//! into one table with no other index, in transactions of the mean batch
//! size the group-commit run reached, with the same durability (redb:
//! `Durability::Immediate`; PostgreSQL: a `COMMIT` with
//! `synchronous_commit` on): the cost of the disk and of the engine alone.
//!
//! PostgreSQL: the server at `--postgres-url` (or
//! `MURMUR_BENCH_POSTGRES_URL`), in which each round creates and drops a
//! schema of its own; without one, a throwaway cluster with the
//! distribution's default settings started on loopback for the run
//! (`murmur_mailbox::postgres::TempCluster`), if PostgreSQL is installed.
//!
//! The backends and the raw runs alternate for several rounds (fresh
//! databases each time) and the medians are compared, so that load from
//! other processes on a shared machine affects all alike.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use murmur_benches::{Machine, Spread};
use murmur_mailbox::postgres::TempCluster;
use murmur_mailbox::{
    CreateOutcome, Mailbox, Metrics, PacketSink, PostgresSettings, PostgresStore, Quota, RedbStore,
    Store, WriterConfig,
};
use murmur_net::clock::SystemClock;
use murmur_wire::{
    DEPOSIT_BODY_SIZE, Delivery, Deposit, Destination, FinalPayload, Hop, IdentityKey, MessageId,
    NodeId, Packet, QueueId, Route, SphinxSecretKey, Surb, SurbId, build_surb,
};
use rand::{RngExt, SeedableRng};
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
    queues: Vec<QueueId>,
}

fn unlimited() -> Quota {
    Quota {
        max_messages: u64::MAX,
        max_bytes: u64::MAX,
    }
}

fn group_commit(
    store: Arc<dyn Store>,
    n: u64,
    rng: &mut ChaCha20Rng,
    surbs: &[Surb],
) -> anyhow::Result<GroupRun> {
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
        queues,
    })
}

struct FetchRun {
    rate: f64,
    entries_per_fetch: f64,
}

/// `fetches` pages of up to `limit` entries from `threads` threads at once,
/// each at a random position of a random queue.
fn fetch(
    store: &Arc<dyn Store>,
    queues: &[QueueId],
    per_queue: u64,
    fetches: u64,
    limit: u32,
    threads: usize,
) -> anyhow::Result<FetchRun> {
    let threads = threads.max(1);
    let start = Instant::now();
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let store = store.clone();
            let queues = queues.to_vec();
            let count = fetches / threads as u64 + u64::from((t as u64) < fetches % threads as u64);
            std::thread::spawn(move || -> anyhow::Result<u64> {
                let mut rng = ChaCha20Rng::seed_from_u64(100 + t as u64);
                let mut entries = 0u64;
                for _ in 0..count {
                    let q = queues[rng.random_range(0..queues.len())];
                    let after = rng.random_range(0..per_queue.max(1));
                    let page = store.fetch(&q, after, limit)?.expect("queue exists");
                    entries += page.entries.len() as u64;
                }
                Ok(entries)
            })
        })
        .collect();
    let mut entries = 0;
    for w in workers {
        entries += w
            .join()
            .map_err(|_| anyhow::anyhow!("fetcher panicked"))??;
    }
    Ok(FetchRun {
        rate: fetches as f64 / start.elapsed().as_secs_f64(),
        entries_per_fetch: entries as f64 / fetches.max(1) as f64,
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

/// The server's URL with a `search_path` of `schema` in its options.
fn in_schema(base: &str, schema: &str) -> String {
    let options = format!("-c%20search_path%3D{schema}");
    if base.starts_with("postgres://") || base.starts_with("postgresql://") {
        let sep = if base.contains('?') { '&' } else { '?' };
        format!("{base}{sep}options={options}")
    } else {
        format!("{base} options='-c search_path={schema}'")
    }
}

async fn connect(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            eprintln!("PostgreSQL connection: {e}");
        }
    });
    Ok(client)
}

/// PostgreSQL's own batched insert: one `INSERT … SELECT FROM unnest` of
/// `batch` rows per transaction into a table with only its primary key.
async fn raw_postgres(url: &str, n: u64, batch: u64, value_size: usize) -> anyhow::Result<f64> {
    let client = connect(url).await?;
    client
        .batch_execute(
            "CREATE TABLE raw (k bigint PRIMARY KEY, v bytea NOT NULL) \
             WITH (toast_tuple_target = 8160)",
        )
        .await?;
    let insert = client
        .prepare("INSERT INTO raw SELECT * FROM unnest($1::int8[], $2::bytea[])")
        .await?;
    let value = vec![7u8; value_size];
    let start = Instant::now();
    let mut key = 0i64;
    while (key as u64) < n {
        let take = batch.min(n - key as u64) as i64;
        let keys: Vec<i64> = (key..key + take).collect();
        let values: Vec<&[u8]> = keys.iter().map(|_| value.as_slice()).collect();
        client.batch_execute("BEGIN").await?;
        client.execute(&insert, &[&keys, &values]).await?;
        client.batch_execute("COMMIT").await?;
        key += take;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

#[derive(Parser, Debug)]
#[command(
    about = "Durable mailbox deposits/s and fetches/s on redb and PostgreSQL, next to each engine's raw batched insert rate"
)]
struct Args {
    /// Deposits per round and backend.
    #[arg(long, default_value_t = 200_000)]
    deposits: u64,
    /// Rounds (the backends and the raw runs alternate; medians are compared).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Where the redb databases go (default: the system's temporary directory).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Which backends to run, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "redb,postgres")]
    backends: Vec<String>,
    /// The PostgreSQL server to use (each round creates and drops a schema
    /// in it); default: MURMUR_BENCH_POSTGRES_URL, else a throwaway cluster.
    #[arg(long)]
    postgres_url: Option<String>,
    /// Fetches per round and backend.
    #[arg(long, default_value_t = 20_000)]
    fetches: u64,
    /// Entries asked for per fetch.
    #[arg(long, default_value_t = 16)]
    fetch_limit: u32,
    /// Threads fetching at once.
    #[arg(long, default_value_t = 4)]
    fetch_threads: usize,
    /// Print one JSON object instead of the report.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize, Default)]
struct BackendRound {
    deposits_per_s: f64,
    mean_batch: f64,
    raw_insert_per_s: f64,
    raw_batch: u64,
    value_bytes: usize,
    ratio_to_raw: f64,
    fetches_per_s: f64,
    entries_per_fetch: f64,
}

#[derive(Serialize)]
struct BackendSummary {
    deposits_per_s: Spread,
    raw_insert_per_s: Spread,
    ratio_to_raw: Spread,
    ratio_of_medians: f64,
    fetches_per_s: Spread,
}

impl BackendSummary {
    fn of(rounds: &[&BackendRound]) -> Self {
        let spread = |f: fn(&BackendRound) -> f64| {
            Spread::of(&rounds.iter().map(|r| f(r)).collect::<Vec<_>>())
        };
        let deposits = spread(|r| r.deposits_per_s);
        let raw = spread(|r| r.raw_insert_per_s);
        Self {
            ratio_of_medians: deposits.median / raw.median,
            deposits_per_s: deposits,
            raw_insert_per_s: raw,
            ratio_to_raw: spread(|r| r.ratio_to_raw),
            fetches_per_s: spread(|r| r.fetches_per_s),
        }
    }
}

#[derive(Serialize)]
struct Round {
    redb: Option<BackendRound>,
    postgres: Option<BackendRound>,
}

#[derive(Serialize)]
struct Report {
    machine: Machine,
    load_at_end: [f64; 3],
    deposits_per_round: u64,
    fetches_per_round: u64,
    fetch_limit: u32,
    fetch_threads: usize,
    postgres_server: Option<String>,
    rounds: Vec<Round>,
    redb: Option<BackendSummary>,
    postgres: Option<BackendSummary>,
    /// The redb target: durable deposits ≥ 50 % of raw redb inserts.
    redb_target_met: Option<bool>,
}

/// Where the PostgreSQL rounds run.
enum Server {
    Given(String),
    Temporary(TempCluster),
}

impl Server {
    fn url(&self) -> &str {
        match self {
            Self::Given(url) => url,
            Self::Temporary(cluster) => cluster.url(),
        }
    }
}

fn postgres_server(args: &Args) -> anyhow::Result<Option<Server>> {
    if !args.backends.iter().any(|b| b == "postgres") {
        return Ok(None);
    }
    if let Some(url) = args
        .postgres_url
        .clone()
        .or_else(|| std::env::var("MURMUR_BENCH_POSTGRES_URL").ok())
    {
        return Ok(Some(Server::Given(url)));
    }
    match TempCluster::start()? {
        Some(cluster) => Ok(Some(Server::Temporary(cluster))),
        None => {
            anyhow::ensure!(
                args.backends.iter().any(|b| b == "redb"),
                "no PostgreSQL: give --postgres-url or install PostgreSQL"
            );
            eprintln!("no PostgreSQL (no --postgres-url and no initdb/pg_ctl found): redb only");
            Ok(None)
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn run_backend(
    store: Arc<dyn Store>,
    n: u64,
    rng: &mut ChaCha20Rng,
    surbs: &[Surb],
    args: &Args,
    raw: impl FnOnce(u64, usize) -> anyhow::Result<f64>,
) -> anyhow::Result<BackendRound> {
    let g = group_commit(store.clone(), n, rng, surbs)?;
    // The raw run right after the deposits, as before fetches were
    // measured: it shares the disk with the write-back the deposits left.
    let batch = (g.mean_batch.round() as u64).max(1);
    let raw = raw(batch, g.entry_size)?;
    let f = fetch(
        &store,
        &g.queues,
        n / QUEUES as u64,
        args.fetches.max(1),
        args.fetch_limit,
        args.fetch_threads,
    )?;
    drop(store);
    Ok(BackendRound {
        deposits_per_s: g.rate,
        mean_batch: g.mean_batch,
        raw_insert_per_s: raw,
        raw_batch: batch,
        value_bytes: g.entry_size,
        ratio_to_raw: g.rate / raw,
        fetches_per_s: f.rate,
        entries_per_fetch: f.entries_per_fetch,
    })
}

fn print_round(round: usize, name: &str, r: &BackendRound) {
    println!(
        "round {round} {name:<8}: deposits {:>7.0}/s (mean batch {:>4.0})   raw {name} {:>7.0}/s ({}-byte values, {} per transaction)   {:>3.0} %   fetches {:>7.0}/s ({:.1} entries each)",
        r.deposits_per_s,
        r.mean_batch,
        r.raw_insert_per_s,
        r.value_bytes,
        r.raw_batch,
        100.0 * r.ratio_to_raw,
        r.fetches_per_s,
        r.entries_per_fetch,
    );
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    for b in &args.backends {
        anyhow::ensure!(
            b == "redb" || b == "postgres",
            "unknown backend {b}: redb or postgres"
        );
    }
    let n = args.deposits.max(1000);
    let base = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    let machine = Machine::now();
    let server = postgres_server(&args)?;
    let run_redb = args.backends.iter().any(|b| b == "redb");
    if !args.json {
        println!("{}", machine.line());
        println!(
            "{n} deposits and {} fetches (up to {} entries, {} threads) per round and backend, {} rounds; redb under {}; PostgreSQL: {}",
            args.fetches,
            args.fetch_limit,
            args.fetch_threads,
            args.rounds,
            base.display(),
            match &server {
                None => "not run".to_owned(),
                Some(Server::Given(_)) => "the given server".to_owned(),
                Some(Server::Temporary(_)) =>
                    "a throwaway cluster on loopback (default settings)".to_owned(),
            }
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
        let redb = if run_redb {
            let dir = tempfile::tempdir_in(&base)?;
            let store = Arc::new(RedbStore::open(
                &dir.path().join("mailbox.redb"),
                unlimited(),
            )?);
            let r = run_backend(store, n, &mut rng, &surbs, &args, |batch, size| {
                raw_redb(dir.path(), n, batch, size)
            })?;
            if !args.json {
                print_round(round, "redb", &r);
            }
            Some(r)
        } else {
            None
        };
        let postgres = if let Some(server) = &server {
            let schema = format!("murmur_bench_{}_{round}", std::process::id());
            let admin = runtime.block_on(connect(server.url()))?;
            runtime.block_on(admin.batch_execute(&format!("CREATE SCHEMA {schema}")))?;
            let url = in_schema(server.url(), &schema);
            let store = Arc::new(PostgresStore::open(
                &PostgresSettings::new(url.clone()),
                unlimited(),
            )?);
            let r = run_backend(store, n, &mut rng, &surbs, &args, |batch, size| {
                runtime.block_on(raw_postgres(&url, n, batch, size))
            });
            runtime.block_on(admin.batch_execute(&format!("DROP SCHEMA {schema} CASCADE")))?;
            let r = r?;
            if !args.json {
                print_round(round, "postgres", &r);
            }
            Some(r)
        } else {
            None
        };
        rounds.push(Round { redb, postgres });
    }
    let summary = |pick: fn(&Round) -> Option<&BackendRound>| {
        let picked: Vec<&BackendRound> = rounds.iter().filter_map(pick).collect();
        (!picked.is_empty()).then(|| BackendSummary::of(&picked))
    };
    let redb = summary(|r| r.redb.as_ref());
    let postgres = summary(|r| r.postgres.as_ref());
    let report = Report {
        machine,
        load_at_end: murmur_benches::loadavg(),
        deposits_per_round: n,
        fetches_per_round: args.fetches,
        fetch_limit: args.fetch_limit,
        fetch_threads: args.fetch_threads,
        postgres_server: server.as_ref().map(|s| match s {
            Server::Given(_) => "given".to_owned(),
            Server::Temporary(_) => "throwaway cluster".to_owned(),
        }),
        redb_target_met: redb.as_ref().map(|s| s.ratio_of_medians >= 0.5),
        rounds,
        redb,
        postgres,
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!("medians (range over rounds):");
        for (name, s) in [("redb", &report.redb), ("postgres", &report.postgres)] {
            let Some(s) = s else { continue };
            println!(
                "  {name:<8}: {:.0} durable, acknowledged deposits/s ({:.0}–{:.0}); {:.0} fetches/s ({:.0}–{:.0}); raw {name} batched insert {:.0}/s ({:.0}–{:.0}); deposits/raw {:.0} % (per round {:.0}–{:.0} %)",
                s.deposits_per_s.median,
                s.deposits_per_s.min,
                s.deposits_per_s.max,
                s.fetches_per_s.median,
                s.fetches_per_s.min,
                s.fetches_per_s.max,
                s.raw_insert_per_s.median,
                s.raw_insert_per_s.min,
                s.raw_insert_per_s.max,
                100.0 * s.ratio_of_medians,
                100.0 * s.ratio_to_raw.min,
                100.0 * s.ratio_to_raw.max,
            );
        }
        if let Some(met) = report.redb_target_met {
            println!(
                "redb target, durable deposits ≥ 50 % of raw redb inserts: {}",
                if met { "met" } else { "NOT met" }
            );
        }
        println!("load average at the end: {:?}", report.load_at_end);
    }
    Ok(())
}
