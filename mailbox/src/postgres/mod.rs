//! The [`Store`] on PostgreSQL: [`PostgresStore`], for a provider whose
//! queues live in a database that others operate, replicate and back up, and
//! which several provider processes (front-ends) share.
//!
//! # A synchronous store over an asynchronous client
//!
//! [`Store`] is synchronous: its callers are the group-commit writer thread
//! and `spawn_blocking` tasks of the fetch API and the reaper, which is what
//! redb's blocking `fsync` needs. The PostgreSQL store keeps that interface.
//! It owns a small tokio runtime (one I/O thread, `mailbox-postgres`) that
//! drives a `deadpool-postgres` pool of `tokio-postgres` connections; each
//! method hands its work to that runtime and waits for the answer on a
//! channel. The hand-off costs a few microseconds against a round trip to
//! the server, and is paid once per batch by the writer. Owning the runtime
//! keeps the store independent of its caller's: it works from any thread,
//! never panics for being called inside another runtime, is not stopped by
//! a caller's paused test clock, and lives exactly as long as the store.
//!
//! # Tables
//!
//! Created and upgraded by versioned migrations ([`SCHEMA_VERSION`]; the
//! applied versions are rows of `mailbox_schema`), in the connection's
//! `search_path` (by default the `public` schema):
//!
//! | table | key | columns |
//! |---|---|---|
//! | `mailbox_queues` | `id` (32 bytes) | `owner`, `created_at`, `messages`, `bytes`, `next_seq`, `last_used` (indexed: idle queues expire by it) |
//! | `mailbox_entries` | (`queue`, `seq`) | `item`: kind (1) ‖ id (16) ‖ bytes, as in redb |
//! | `mailbox_dedup` | (`queue`, `kind`, `id`) | `seq`, `stored_at` (indexed: the reaper's order) |
//! | `mailbox_counters` | `name` | `value` (`queues`: how many exist) |
//!
//! # Several processes on one database
//!
//! Every transaction runs at READ COMMITTED and takes row locks in one
//! order, so that processes never deadlock and never number an entry twice:
//!
//! - A batch of deposits first locks the rows of its queues, in queue id
//!   order (`SELECT … ORDER BY id FOR UPDATE`), and only then reads their
//!   counters and looks up the dedup records of its items. Another process
//!   depositing into one of those queues waits for the commit, then sees
//!   its entries (a new statement, a new snapshot): a packet deposited
//!   through two processes at once is stored once, and sequence numbers are
//!   handed out in commit order, so a reader paging with `after` never skips
//!   one. The inserts also carry `ON CONFLICT DO NOTHING` on the primary
//!   keys and the batch checks that every row went in: a writer that did
//!   not follow the protocol makes the batch fail rather than store twice.
//! - Owner deletions lock their queue row first; the reaper locks the rows
//!   of the queues it touches, in id order, before deleting.
//! - Queue creation and deletion lock the `queues` counter first (which
//!   also keeps the queue cap exact across processes), then the queue row.
//!
//! Durability: a method returns `Ok` after PostgreSQL's `COMMIT` returned,
//! which with `synchronous_commit` on means the commit record is flushed
//! to the write-ahead log. [`PostgresStore::open`] refuses a server with
//! `fsync` or `synchronous_commit` off.

mod cluster;
mod schema;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::mpsc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod};
use murmur_wire::mailbox::{FetchResponse, MAX_FETCH_LIMIT, QueueEntry};
use murmur_wire::{IdentityKey, QueueId};
use tokio_postgres::types::ToSql;
use tokio_postgres::{IsolationLevel, NoTls};

use crate::error::{Error, Result};
use crate::store::{
    CreateOutcome, InsertOutcome, NewItem, QueueInfo, Quota, ReapOutcome, Store, decode_item,
    encode_item, item_tag,
};

pub use cluster::TempCluster;
pub use schema::SCHEMA_VERSION;

/// A queue's last use is written again only once it is this much newer
/// (seconds), so that owners fetching every second do not each cost a
/// write. The same as the redb store's.
pub use crate::store::TOUCH_GRANULARITY_SECS;

/// Connections are given up after this long unless the connection string
/// says otherwise (`connect_timeout`).
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How to reach the database, and the pool's bounds.
#[derive(Clone, PartialEq, Eq)]
pub struct PostgresSettings {
    /// The connection string: a URL
    /// (`postgresql://USER:PASSWORD@HOST:PORT/DATABASE?OPTION=VALUE…`) or
    /// `key=value` pairs, with the options tokio-postgres knows (`host`,
    /// `port`, `user`, `password`, `dbname`, `options`, `connect_timeout`,
    /// `application_name`, …). The connection is not encrypted.
    pub url: String,
    /// Connections at most.
    pub pool_size: usize,
    /// How long one operation may take (and, separately, how long it may
    /// wait for a connection).
    pub timeout: Duration,
}

impl std::fmt::Debug for PostgresSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The connection string may hold a password.
        f.debug_struct("PostgresSettings")
            .field("url", &"<redacted>")
            .field("pool_size", &self.pool_size)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl PostgresSettings {
    /// Settings with the defaults of the configuration file: 16
    /// connections, 30 s per operation.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            pool_size: 16,
            timeout: Duration::from_secs(30),
        }
    }

    /// The connection string parsed, with this store's defaults filled in.
    fn connection_config(&self) -> Result<tokio_postgres::Config> {
        let mut config = tokio_postgres::Config::from_str(&self.url)
            .map_err(|source| Error::PostgresUrl { source })?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(DEFAULT_CONNECT_TIMEOUT.min(self.timeout));
        }
        if config.get_application_name().is_none() {
            config.application_name("murmur-mailbox");
        }
        Ok(config)
    }

    /// Checks that the connection string parses (for configuration
    /// checks; connects to nothing).
    pub fn check(&self) -> Result<()> {
        self.connection_config().map(|_| ())
    }
}

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The [`Store`] on a PostgreSQL database. See the [module](self) for how
/// it works and what it guarantees.
pub struct PostgresStore {
    pool: Pool,
    /// Drives the pool's connections; shut down (in the background) when
    /// the store is dropped. Always `Some` until then.
    runtime: Option<tokio::runtime::Runtime>,
    handle: tokio::runtime::Handle,
    quota: Quota,
    timeout: Duration,
    schema_version: u32,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("quota", &self.quota)
            .field("pool", &self.pool.status())
            .field("schema_version", &self.schema_version)
            .finish_non_exhaustive()
    }
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        // Never blocks (the store may be dropped on an async thread): the
        // I/O thread stops on its own, and the pool's connections close
        // when the pool is dropped right after.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

fn pg(during: &'static str) -> impl FnOnce(tokio_postgres::Error) -> Error {
    move |source| Error::Postgres { during, source }
}

/// A counter or number as PostgreSQL's `bigint` (numbers this large never
/// occur; clamping keeps comparisons right if they did).
fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn to_u64(v: i64, what: &'static str) -> Result<u64> {
    u64::try_from(v).map_err(|_| Error::Corrupt { what })
}

fn array<const N: usize>(bytes: &[u8], what: &'static str) -> Result<[u8; N]> {
    bytes.try_into().map_err(|_| Error::Corrupt { what })
}

impl PostgresStore {
    /// Connects to the database, checks that its commits are durable, and
    /// brings its tables to this build's [`SCHEMA_VERSION`] (creating them
    /// in an empty database), under an advisory lock so that processes
    /// starting together migrate once. Refuses a database whose schema is
    /// newer than this build. Blocks; several stores (and processes) may
    /// open one database.
    pub fn open(settings: &PostgresSettings, quota: Quota) -> Result<Self> {
        let config = settings.connection_config()?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("mailbox-postgres")
            .enable_all()
            .build()
            .map_err(|source| Error::Thread {
                what: "PostgreSQL I/O",
                source,
            })?;
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(settings.pool_size.max(1))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(settings.timeout))
            .create_timeout(Some(settings.timeout))
            .recycle_timeout(Some(settings.timeout))
            .build()
            .map_err(|e| Error::ConfigValue(format!("PostgreSQL connection pool: {e}")))?;
        let mut store = Self {
            pool,
            handle: runtime.handle().clone(),
            runtime: Some(runtime),
            quota,
            timeout: settings.timeout,
            schema_version: 0,
        };
        store.schema_version = store.call("preparing the database", |client| {
            Box::pin(async move {
                schema::check_durability(client).await?;
                schema::migrate(client).await
            })
        })?;
        Ok(store)
    }

    /// The quota this store enforces.
    pub fn quota(&self) -> Quota {
        self.quota
    }

    /// The schema version of the database (this build's
    /// [`SCHEMA_VERSION`], once open).
    pub fn schema_version(&self) -> u32 {
        self.schema_version
    }

    /// Records that each queue of `used` was used (by its owner) at the
    /// time given; a time older than, or within [`TOUCH_GRANULARITY_SECS`]
    /// of, the recorded one is not written. Unknown queues are skipped.
    /// Returns how many records were written.
    ///
    /// (With `expire_idle`, what the `Store` trait asks for idle-queue
    /// expiry on the branch that added it; there these two implement the
    /// trait's methods of the same names.)
    fn record_uses(&self, used: &[(QueueId, u64)]) -> Result<u64> {
        const D: &str = "recording queue uses";
        if used.is_empty() {
            return Ok(0);
        }
        // The latest use per queue, in id order (the order rows are locked
        // in everywhere).
        let mut latest: BTreeMap<[u8; 32], u64> = BTreeMap::new();
        for (queue, at) in used {
            let t = latest.entry(*queue.as_bytes()).or_default();
            *t = (*t).max(*at);
        }
        let ids: Vec<[u8; 32]> = latest.keys().copied().collect();
        let ats: Vec<i64> = latest.values().map(|a| to_i64(*a)).collect();
        self.call(D, move |client| {
            Box::pin(async move {
                let txn = client
                    .build_transaction()
                    .isolation_level(IsolationLevel::ReadCommitted)
                    .start()
                    .await
                    .map_err(pg(D))?;
                let lock = txn
                    .prepare_cached(
                        "SELECT id FROM mailbox_queues WHERE id = ANY($1) ORDER BY id FOR UPDATE",
                    )
                    .await
                    .map_err(pg(D))?;
                let touch = txn
                    .prepare_cached(
                        "UPDATE mailbox_queues AS q SET last_used = u.at \
                         FROM unnest($1::bytea[], $2::int8[]) AS u(id, at) \
                         WHERE q.id = u.id AND u.at - q.last_used >= $3",
                    )
                    .await
                    .map_err(pg(D))?;
                let ids: Vec<&[u8]> = ids.iter().map(|q| q.as_slice()).collect();
                let granularity = to_i64(TOUCH_GRANULARITY_SECS);
                let lock_params: [&(dyn ToSql + Sync); 1] = [&ids];
                let touch_params: [&(dyn ToSql + Sync); 3] = [&ids, &ats, &granularity];
                let (_, written) = tokio::try_join!(
                    txn.query(&lock, &lock_params),
                    txn.execute(&touch, &touch_params),
                )
                .map_err(pg(D))?;
                if written == 0 {
                    txn.rollback().await.map_err(pg(D))?;
                } else {
                    txn.commit().await.map_err(pg(D))?;
                }
                Ok(written)
            })
        })
    }

    /// Deletes (as [`Store::delete_queue`]) up to `max_queues` queues not
    /// used since before `unused_since` (unix seconds): neither created nor
    /// touched since, the least recently used first. Returns how many were
    /// deleted.
    fn expire_unused(&self, unused_since: u64, max_queues: usize) -> Result<u64> {
        const D: &str = "expiring idle queues";
        let unused_since = to_i64(unused_since);
        let limit = i64::try_from(max_queues).unwrap_or(i64::MAX);
        self.call(D, move |client| {
            Box::pin(async move {
                let txn = client
                    .build_transaction()
                    .isolation_level(IsolationLevel::ReadCommitted)
                    .start()
                    .await
                    .map_err(pg(D))?;
                let counter = txn
                    .prepare_cached(
                        "SELECT value FROM mailbox_counters WHERE name = 'queues' FOR UPDATE",
                    )
                    .await
                    .map_err(pg(D))?;
                let idle = txn
                    .prepare_cached(
                        "SELECT id FROM mailbox_queues WHERE last_used < $1 \
                         ORDER BY last_used LIMIT $2",
                    )
                    .await
                    .map_err(pg(D))?;
                // Locked in id order; a queue used meanwhile (its row
                // updated) no longer matches and is left alone.
                let lock = txn
                    .prepare_cached(
                        "SELECT id FROM mailbox_queues WHERE id = ANY($1) AND last_used < $2 \
                         ORDER BY id FOR UPDATE",
                    )
                    .await
                    .map_err(pg(D))?;
                txn.query_one(&counter, &[]).await.map_err(pg(D))?;
                let candidates = txn
                    .query(&idle, &[&unused_since, &limit])
                    .await
                    .map_err(pg(D))?;
                let mut ids: Vec<&[u8]> = Vec::with_capacity(candidates.len());
                for row in &candidates {
                    ids.push(row.try_get(0).map_err(pg(D))?);
                }
                ids.sort_unstable();
                let locked = if ids.is_empty() {
                    Vec::new()
                } else {
                    txn.query(&lock, &[&ids, &unused_since])
                        .await
                        .map_err(pg(D))?
                };
                if locked.is_empty() {
                    txn.rollback().await.map_err(pg(D))?;
                    return Ok(0);
                }
                let mut gone: Vec<&[u8]> = Vec::with_capacity(locked.len());
                for row in &locked {
                    gone.push(row.try_get(0).map_err(pg(D))?);
                }
                let count = gone.len() as i64;
                let queues = txn
                    .prepare_cached("DELETE FROM mailbox_queues WHERE id = ANY($1)")
                    .await
                    .map_err(pg(D))?;
                let entries = txn
                    .prepare_cached("DELETE FROM mailbox_entries WHERE queue = ANY($1)")
                    .await
                    .map_err(pg(D))?;
                let dedup = txn
                    .prepare_cached("DELETE FROM mailbox_dedup WHERE queue = ANY($1)")
                    .await
                    .map_err(pg(D))?;
                let counted = txn
                    .prepare_cached(
                        "UPDATE mailbox_counters SET value = value - $1 WHERE name = 'queues'",
                    )
                    .await
                    .map_err(pg(D))?;
                let params: [&(dyn ToSql + Sync); 1] = [&gone];
                let count_params: [&(dyn ToSql + Sync); 1] = [&count];
                tokio::try_join!(
                    txn.execute(&queues, &params),
                    txn.execute(&entries, &params),
                    txn.execute(&dedup, &params),
                    txn.execute(&counted, &count_params),
                )
                .map_err(pg(D))?;
                txn.commit().await.map_err(pg(D))?;
                Ok(count as u64)
            })
        })
    }

    /// Runs `op` with a pooled connection on the store's runtime and waits
    /// for its result. A connection whose operation failed or timed out is
    /// closed rather than reused.
    fn call<T, F>(&self, during: &'static str, op: F) -> Result<T>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c mut Object) -> BoxFuture<'c, Result<T>> + Send + 'static,
    {
        let (tx, rx) = mpsc::sync_channel(1);
        let pool = self.pool.clone();
        let timeout = self.timeout;
        self.handle.spawn(async move {
            let mut client = match pool.get().await {
                Ok(client) => client,
                Err(source) => {
                    let _ = tx.send(Err(Error::PostgresPool { during, source }));
                    return;
                }
            };
            let outcome = match tokio::time::timeout(timeout, op(&mut client)).await {
                Ok(Ok(value)) => Ok(value),
                Ok(Err(e)) => {
                    drop(Object::take(client));
                    Err(e)
                }
                Err(_) => {
                    drop(Object::take(client));
                    Err(Error::PostgresTimeout {
                        during,
                        after: timeout,
                    })
                }
            };
            // The caller waits for this; it is gone only if it panicked.
            let _ = tx.send(outcome);
        });
        rx.recv().map_err(|_| Error::Task { during })?
    }
}

/// A queue's counters, as locked by a batch.
#[derive(Clone, Copy)]
struct Counters {
    messages: u64,
    bytes: u64,
    next_seq: u64,
    changed: bool,
}

/// One item of a batch, encoded on the caller's thread.
struct Pending {
    index: usize,
    queue: [u8; 32],
    tag: [u8; 17],
    value: Vec<u8>,
}

impl Store for PostgresStore {
    fn create_queue(
        &self,
        queue: &QueueId,
        owner: &IdentityKey,
        now: u64,
        max_queues: u64,
    ) -> Result<CreateOutcome> {
        const D: &str = "creating a queue";
        let (queue, owner) = (*queue.as_bytes(), owner.0);
        self.call(D, move |client| {
            Box::pin(async move {
                let txn = client
                    .build_transaction()
                    .isolation_level(IsolationLevel::ReadCommitted)
                    .start()
                    .await
                    .map_err(pg(D))?;
                let count = txn
                    .prepare_cached(
                        "SELECT value FROM mailbox_counters WHERE name = 'queues' FOR UPDATE",
                    )
                    .await
                    .map_err(pg(D))?;
                let insert = txn
                    .prepare_cached(
                        "INSERT INTO mailbox_queues \
                         (id, owner, created_at, messages, bytes, next_seq, last_used) \
                         VALUES ($1, $2, $3, 0, 0, 1, $3) ON CONFLICT (id) DO NOTHING",
                    )
                    .await
                    .map_err(pg(D))?;
                let count: i64 = txn.query_one(&count, &[]).await.map_err(pg(D))?.get(0);
                let inserted = txn
                    .execute(
                        &insert,
                        &[&queue.as_slice(), &owner.as_slice(), &to_i64(now)],
                    )
                    .await
                    .map_err(pg(D))?;
                if inserted == 0 {
                    txn.rollback().await.map_err(pg(D))?;
                    return Ok(CreateOutcome::Exists);
                }
                if to_u64(count, "queue counter")? >= max_queues {
                    txn.rollback().await.map_err(pg(D))?;
                    return Ok(CreateOutcome::AtCapacity);
                }
                let counted = txn
                    .prepare_cached(
                        "UPDATE mailbox_counters SET value = value + 1 WHERE name = 'queues'",
                    )
                    .await
                    .map_err(pg(D))?;
                txn.execute(&counted, &[]).await.map_err(pg(D))?;
                txn.commit().await.map_err(pg(D))?;
                Ok(CreateOutcome::Created)
            })
        })
    }

    fn queue(&self, queue: &QueueId) -> Result<Option<QueueInfo>> {
        const D: &str = "reading a queue";
        let queue = *queue.as_bytes();
        self.call(D, move |client| {
            Box::pin(async move {
                let stmt = client
                    .prepare_cached(
                        "SELECT owner, created_at, messages, bytes, next_seq \
                         FROM mailbox_queues WHERE id = $1",
                    )
                    .await
                    .map_err(pg(D))?;
                let Some(row) = client
                    .query_opt(&stmt, &[&queue.as_slice()])
                    .await
                    .map_err(pg(D))?
                else {
                    return Ok(None);
                };
                let owner: &[u8] = row.try_get(0).map_err(pg(D))?;
                Ok(Some(QueueInfo {
                    owner: IdentityKey(array(owner, "queue owner")?),
                    created_at: to_u64(row.try_get(1).map_err(pg(D))?, "queue record")?,
                    messages: to_u64(row.try_get(2).map_err(pg(D))?, "queue record")?,
                    bytes: to_u64(row.try_get(3).map_err(pg(D))?, "queue record")?,
                    next_seq: to_u64(row.try_get(4).map_err(pg(D))?, "queue record")?,
                }))
            })
        })
    }

    fn insert_batch(&self, batch: &[NewItem], now: u64) -> Result<Vec<InsertOutcome>> {
        const D: &str = "storing a batch";
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        // Encode on the caller's thread, queue by queue (a stable sort keeps
        // each queue's items in arrival order, which is their numbering
        // order).
        let mut pending: Vec<Pending> = batch
            .iter()
            .enumerate()
            .map(|(index, new)| {
                let mut value = Vec::new();
                encode_item(&new.item, &mut value);
                Pending {
                    index,
                    queue: *new.queue.as_bytes(),
                    tag: item_tag(&new.item),
                    value,
                }
            })
            .collect();
        pending.sort_by_key(|p| p.queue);
        let quota = self.quota;
        let len = batch.len();
        self.call(D, move |client| {
            Box::pin(async move { insert_batch(client, pending, len, to_i64(now), quota).await })
        })
    }

    fn fetch(&self, queue: &QueueId, after: u64, limit: u32) -> Result<Option<FetchResponse>> {
        const D: &str = "fetching entries";
        let queue = *queue.as_bytes();
        let limit = limit.min(MAX_FETCH_LIMIT);
        self.call(D, move |client| {
            Box::pin(async move {
                let exists = client
                    .prepare_cached("SELECT 1 FROM mailbox_queues WHERE id = $1")
                    .await
                    .map_err(pg(D))?;
                let page = client
                    .prepare_cached(
                        "SELECT seq, item FROM mailbox_entries \
                         WHERE queue = $1 AND seq > $2 ORDER BY seq LIMIT $3",
                    )
                    .await
                    .map_err(pg(D))?;
                let q = queue.as_slice();
                // No sequence number is above i64::MAX.
                let after = i64::try_from(after).unwrap_or(i64::MAX);
                let rows_wanted = i64::from(limit) + 1;
                let exists_params: [&(dyn ToSql + Sync); 1] = [&q];
                let page_params: [&(dyn ToSql + Sync); 3] = [&q, &after, &rows_wanted];
                let (found, rows) = tokio::try_join!(
                    client.query_opt(&exists, &exists_params),
                    client.query(&page, &page_params),
                )
                .map_err(pg(D))?;
                if found.is_none() {
                    return Ok(None);
                }
                let more = rows.len() > limit as usize;
                let mut entries = Vec::with_capacity(rows.len().min(limit as usize));
                for row in rows.iter().take(limit as usize) {
                    let seq = to_u64(row.try_get(0).map_err(pg(D))?, "queue entry")?;
                    let item =
                        decode_item(row.try_get(1).map_err(pg(D))?).ok_or(Error::Corrupt {
                            what: "queue entry",
                        })?;
                    entries.push(QueueEntry { seq, item });
                }
                Ok(Some(FetchResponse { entries, more }))
            })
        })
    }

    fn delete(&self, queue: &QueueId, seqs: &[u64]) -> Result<Option<u64>> {
        const D: &str = "deleting entries";
        let queue = *queue.as_bytes();
        // Numbers above i64::MAX name no entry.
        let seqs: Vec<i64> = seqs.iter().filter_map(|s| i64::try_from(*s).ok()).collect();
        self.call(D, move |client| {
            Box::pin(async move {
                let txn = client
                    .build_transaction()
                    .isolation_level(IsolationLevel::ReadCommitted)
                    .start()
                    .await
                    .map_err(pg(D))?;
                let lock = txn
                    .prepare_cached("SELECT 1 FROM mailbox_queues WHERE id = $1 FOR UPDATE")
                    .await
                    .map_err(pg(D))?;
                let delete = txn
                    .prepare_cached(
                        "DELETE FROM mailbox_entries WHERE queue = $1 AND seq = ANY($2) \
                         RETURNING octet_length(item)",
                    )
                    .await
                    .map_err(pg(D))?;
                let q = queue.as_slice();
                if txn.query_opt(&lock, &[&q]).await.map_err(pg(D))?.is_none() {
                    txn.rollback().await.map_err(pg(D))?;
                    return Ok(None);
                }
                let rows = txn.query(&delete, &[&q, &seqs]).await.map_err(pg(D))?;
                let deleted = rows.len() as i64;
                let mut bytes = 0i64;
                for row in &rows {
                    bytes += i64::from(row.try_get::<_, i32>(0).map_err(pg(D))?);
                }
                if deleted > 0 {
                    let update = txn
                        .prepare_cached(
                            "UPDATE mailbox_queues SET messages = GREATEST(messages - $2, 0), \
                             bytes = GREATEST(bytes - $3, 0) WHERE id = $1",
                        )
                        .await
                        .map_err(pg(D))?;
                    txn.execute(&update, &[&q, &deleted, &bytes])
                        .await
                        .map_err(pg(D))?;
                }
                txn.commit().await.map_err(pg(D))?;
                Ok(Some(deleted as u64))
            })
        })
    }

    fn delete_queue(&self, queue: &QueueId) -> Result<bool> {
        const D: &str = "deleting a queue";
        let queue = *queue.as_bytes();
        self.call(D, move |client| {
            Box::pin(async move {
                let txn = client
                    .build_transaction()
                    .isolation_level(IsolationLevel::ReadCommitted)
                    .start()
                    .await
                    .map_err(pg(D))?;
                let lock = txn
                    .prepare_cached(
                        "SELECT value FROM mailbox_counters WHERE name = 'queues' FOR UPDATE",
                    )
                    .await
                    .map_err(pg(D))?;
                let queue_row = txn
                    .prepare_cached("DELETE FROM mailbox_queues WHERE id = $1")
                    .await
                    .map_err(pg(D))?;
                let entries = txn
                    .prepare_cached("DELETE FROM mailbox_entries WHERE queue = $1")
                    .await
                    .map_err(pg(D))?;
                let dedup = txn
                    .prepare_cached("DELETE FROM mailbox_dedup WHERE queue = $1")
                    .await
                    .map_err(pg(D))?;
                let count = txn
                    .prepare_cached(
                        "UPDATE mailbox_counters SET value = value - 1 WHERE name = 'queues'",
                    )
                    .await
                    .map_err(pg(D))?;
                let q = queue.as_slice();
                let params: [&(dyn ToSql + Sync); 1] = [&q];
                txn.query_one(&lock, &[]).await.map_err(pg(D))?;
                if txn.execute(&queue_row, &params).await.map_err(pg(D))? == 0 {
                    txn.rollback().await.map_err(pg(D))?;
                    return Ok(false);
                }
                // The queue row is gone and locked by this transaction:
                // nothing can be added to it until the commit.
                tokio::try_join!(
                    txn.execute(&entries, &params),
                    txn.execute(&dedup, &params),
                    txn.execute(&count, &[]),
                )
                .map_err(pg(D))?;
                txn.commit().await.map_err(pg(D))?;
                Ok(true)
            })
        })
    }

    fn reap(&self, older_than: u64, max_records: usize) -> Result<ReapOutcome> {
        const D: &str = "reaping expired entries";
        let limit = i64::try_from(max_records).unwrap_or(i64::MAX);
        self.call(D, move |client| {
            Box::pin(async move { reap(client, to_i64(older_than), limit).await })
        })
    }

    fn queue_count(&self) -> Result<u64> {
        const D: &str = "counting queues";
        self.call(D, |client| {
            Box::pin(async move {
                let stmt = client
                    .prepare_cached("SELECT value FROM mailbox_counters WHERE name = 'queues'")
                    .await
                    .map_err(pg(D))?;
                let row = client.query_one(&stmt, &[]).await.map_err(pg(D))?;
                to_u64(row.try_get(0).map_err(pg(D))?, "queue counter")
            })
        })
    }

    fn touch_queues(&self, used: &[(QueueId, u64)]) -> Result<u64> {
        self.record_uses(used)
    }

    fn expire_idle(&self, unused_since: u64, max_queues: usize) -> Result<u64> {
        self.expire_unused(unused_since, max_queues)
    }
}

/// [`Store::insert_batch`]: lock the queues, look up the dedup records,
/// number the new items, write them in three statements, commit.
async fn insert_batch(
    client: &mut Object,
    pending: Vec<Pending>,
    len: usize,
    now: i64,
    quota: Quota,
) -> Result<Vec<InsertOutcome>> {
    const D: &str = "storing a batch";
    let mut queues: Vec<&[u8]> = pending.iter().map(|p| p.queue.as_slice()).collect();
    queues.dedup();
    let kinds: Vec<i16> = pending.iter().map(|p| i16::from(p.tag[0])).collect();
    let ids: Vec<&[u8]> = pending.iter().map(|p| &p.tag[1..]).collect();
    let item_queues: Vec<&[u8]> = pending.iter().map(|p| p.queue.as_slice()).collect();

    let txn = client
        .build_transaction()
        .isolation_level(IsolationLevel::ReadCommitted)
        .start()
        .await
        .map_err(pg(D))?;
    let lock = txn
        .prepare_cached(
            "SELECT id, messages, bytes, next_seq FROM mailbox_queues \
             WHERE id = ANY($1) ORDER BY id FOR UPDATE",
        )
        .await
        .map_err(pg(D))?;
    let lookup = txn
        .prepare_cached(
            "SELECT d.queue, d.kind, d.id, d.seq \
             FROM unnest($1::bytea[], $2::int2[], $3::bytea[]) AS t(queue, kind, id) \
             JOIN mailbox_dedup d ON d.queue = t.queue AND d.kind = t.kind AND d.id = t.id",
        )
        .await
        .map_err(pg(D))?;
    // Pipelined: the server runs the lookup after the lock statement has
    // its locks, in a snapshot taken then, so it sees every item committed
    // into these queues before.
    let lock_params: [&(dyn ToSql + Sync); 1] = [&queues];
    let lookup_params: [&(dyn ToSql + Sync); 3] = [&item_queues, &kinds, &ids];
    let (locked, found) = tokio::try_join!(
        txn.query(&lock, &lock_params),
        txn.query(&lookup, &lookup_params),
    )
    .map_err(pg(D))?;

    let mut counters: HashMap<[u8; 32], Counters> = HashMap::with_capacity(locked.len());
    for row in &locked {
        counters.insert(
            array(row.try_get(0).map_err(pg(D))?, "queue id")?,
            Counters {
                messages: to_u64(row.try_get(1).map_err(pg(D))?, "queue record")?,
                bytes: to_u64(row.try_get(2).map_err(pg(D))?, "queue record")?,
                next_seq: to_u64(row.try_get(3).map_err(pg(D))?, "queue record")?,
                changed: false,
            },
        );
    }
    let mut known: HashMap<([u8; 32], [u8; 17]), u64> = HashMap::with_capacity(found.len());
    for row in &found {
        let queue: [u8; 32] = array(row.try_get(0).map_err(pg(D))?, "dedup record")?;
        let kind: i16 = row.try_get(1).map_err(pg(D))?;
        let id: [u8; 16] = array(row.try_get(2).map_err(pg(D))?, "dedup record")?;
        let mut tag = [0u8; 17];
        tag[0] = u8::try_from(kind).map_err(|_| Error::Corrupt {
            what: "dedup record",
        })?;
        tag[1..].copy_from_slice(&id);
        known.insert(
            (queue, tag),
            to_u64(row.try_get(3).map_err(pg(D))?, "dedup record")?,
        );
    }

    // Number the new items, as redb does.
    let mut outcomes = vec![InsertOutcome::UnknownQueue; len];
    let mut new: Vec<(&Pending, i64)> = Vec::with_capacity(pending.len());
    for p in &pending {
        let Some(c) = counters.get_mut(&p.queue) else {
            continue;
        };
        if let Some(&seq) = known.get(&(p.queue, p.tag)) {
            outcomes[p.index] = InsertOutcome::Duplicate { seq };
            continue;
        }
        let size = p.value.len() as u64;
        if c.messages >= quota.max_messages || c.bytes.saturating_add(size) > quota.max_bytes {
            outcomes[p.index] = InsertOutcome::QueueFull;
            continue;
        }
        let seq = c.next_seq;
        c.next_seq = seq.saturating_add(1);
        c.messages += 1;
        c.bytes = c.bytes.saturating_add(size);
        c.changed = true;
        known.insert((p.queue, p.tag), seq);
        new.push((p, to_i64(seq)));
        outcomes[p.index] = InsertOutcome::Stored { seq };
    }
    if new.is_empty() {
        // Nothing to write: duplicates, refusals, unknown queues.
        txn.rollback().await.map_err(pg(D))?;
        return Ok(outcomes);
    }

    let new_queues: Vec<&[u8]> = new.iter().map(|(p, _)| p.queue.as_slice()).collect();
    let new_seqs: Vec<i64> = new.iter().map(|(_, s)| *s).collect();
    let new_kinds: Vec<i16> = new.iter().map(|(p, _)| i16::from(p.tag[0])).collect();
    let new_ids: Vec<&[u8]> = new.iter().map(|(p, _)| &p.tag[1..]).collect();
    let new_items: Vec<&[u8]> = new.iter().map(|(p, _)| p.value.as_slice()).collect();
    let mut upd_ids: Vec<&[u8]> = Vec::new();
    let mut upd_messages: Vec<i64> = Vec::new();
    let mut upd_bytes: Vec<i64> = Vec::new();
    let mut upd_next: Vec<i64> = Vec::new();
    for (id, c) in counters.iter().filter(|(_, c)| c.changed) {
        upd_ids.push(id.as_slice());
        upd_messages.push(to_i64(c.messages));
        upd_bytes.push(to_i64(c.bytes));
        upd_next.push(to_i64(c.next_seq));
    }
    let entries = txn
        .prepare_cached(
            "INSERT INTO mailbox_entries (queue, seq, item) \
             SELECT * FROM unnest($1::bytea[], $2::int8[], $3::bytea[]) \
             ON CONFLICT DO NOTHING",
        )
        .await
        .map_err(pg(D))?;
    let dedup = txn
        .prepare_cached(
            "INSERT INTO mailbox_dedup (queue, kind, id, seq, stored_at) \
             SELECT t.queue, t.kind, t.id, t.seq, $5 \
             FROM unnest($1::bytea[], $2::int2[], $3::bytea[], $4::int8[]) AS t(queue, kind, id, seq) \
             ON CONFLICT DO NOTHING",
        )
        .await
        .map_err(pg(D))?;
    let update = txn
        .prepare_cached(
            "UPDATE mailbox_queues AS q \
             SET messages = u.messages, bytes = u.bytes, next_seq = u.next_seq \
             FROM unnest($1::bytea[], $2::int8[], $3::int8[], $4::int8[]) \
                 AS u(id, messages, bytes, next_seq) \
             WHERE q.id = u.id",
        )
        .await
        .map_err(pg(D))?;
    let entry_params: [&(dyn ToSql + Sync); 3] = [&new_queues, &new_seqs, &new_items];
    let dedup_params: [&(dyn ToSql + Sync); 5] =
        [&new_queues, &new_kinds, &new_ids, &new_seqs, &now];
    let update_params: [&(dyn ToSql + Sync); 4] = [&upd_ids, &upd_messages, &upd_bytes, &upd_next];
    let (stored, recorded, updated) = tokio::try_join!(
        txn.execute(&entries, &entry_params),
        txn.execute(&dedup, &dedup_params),
        txn.execute(&update, &update_params),
    )
    .map_err(pg(D))?;
    let expected = new.len() as u64;
    if stored != expected || recorded != expected || updated != upd_ids.len() as u64 {
        // Dropping the transaction rolls it back.
        return Err(Error::Conflict { during: D });
    }
    txn.commit().await.map_err(pg(D))?;
    Ok(outcomes)
}

/// [`Store::reap`]: the oldest dedup records before `older_than`, their
/// queues locked in id order, then the records, their entries and the
/// queues' counters.
async fn reap(client: &mut Object, older_than: i64, limit: i64) -> Result<ReapOutcome> {
    const D: &str = "reaping expired entries";
    let txn = client
        .build_transaction()
        .isolation_level(IsolationLevel::ReadCommitted)
        .start()
        .await
        .map_err(pg(D))?;
    let due = txn
        .prepare_cached(
            "SELECT queue, kind, id, seq FROM mailbox_dedup \
             WHERE stored_at < $1 ORDER BY stored_at LIMIT $2",
        )
        .await
        .map_err(pg(D))?;
    let rows = txn
        .query(&due, &[&older_than, &limit])
        .await
        .map_err(pg(D))?;
    if rows.is_empty() {
        txn.rollback().await.map_err(pg(D))?;
        return Ok(ReapOutcome::default());
    }
    let mut queues: Vec<&[u8]> = Vec::with_capacity(rows.len());
    let mut kinds: Vec<i16> = Vec::with_capacity(rows.len());
    let mut ids: Vec<&[u8]> = Vec::with_capacity(rows.len());
    let mut seqs: Vec<i64> = Vec::with_capacity(rows.len());
    for row in &rows {
        queues.push(row.try_get(0).map_err(pg(D))?);
        kinds.push(row.try_get(1).map_err(pg(D))?);
        ids.push(row.try_get(2).map_err(pg(D))?);
        seqs.push(row.try_get(3).map_err(pg(D))?);
    }
    let mut lock_ids = queues.clone();
    lock_ids.sort_unstable();
    lock_ids.dedup();

    let lock = txn
        .prepare_cached("SELECT id FROM mailbox_queues WHERE id = ANY($1) ORDER BY id FOR UPDATE")
        .await
        .map_err(pg(D))?;
    let records = txn
        .prepare_cached(
            "DELETE FROM mailbox_dedup d \
             USING unnest($1::bytea[], $2::int2[], $3::bytea[], $4::int8[]) AS t(queue, kind, id, seq) \
             WHERE d.queue = t.queue AND d.kind = t.kind AND d.id = t.id AND d.seq = t.seq",
        )
        .await
        .map_err(pg(D))?;
    let entries = txn
        .prepare_cached(
            "DELETE FROM mailbox_entries e \
             USING unnest($1::bytea[], $2::int8[]) AS t(queue, seq) \
             WHERE e.queue = t.queue AND e.seq = t.seq \
             RETURNING e.queue, octet_length(e.item)",
        )
        .await
        .map_err(pg(D))?;
    let lock_params: [&(dyn ToSql + Sync); 1] = [&lock_ids];
    let record_params: [&(dyn ToSql + Sync); 4] = [&queues, &kinds, &ids, &seqs];
    let entry_params: [&(dyn ToSql + Sync); 2] = [&queues, &seqs];
    let (_, records, deleted) = tokio::try_join!(
        txn.query(&lock, &lock_params),
        txn.execute(&records, &record_params),
        txn.query(&entries, &entry_params),
    )
    .map_err(pg(D))?;

    let mut freed: HashMap<&[u8], (i64, i64)> = HashMap::new();
    for row in &deleted {
        let queue: &[u8] = row.try_get(0).map_err(pg(D))?;
        let size: i32 = row.try_get(1).map_err(pg(D))?;
        let f = freed.entry(queue).or_default();
        f.0 += 1;
        f.1 += i64::from(size);
    }
    if !freed.is_empty() {
        let mut ids: Vec<&[u8]> = Vec::with_capacity(freed.len());
        let mut messages: Vec<i64> = Vec::with_capacity(freed.len());
        let mut bytes: Vec<i64> = Vec::with_capacity(freed.len());
        for (id, (m, b)) in freed {
            ids.push(id);
            messages.push(m);
            bytes.push(b);
        }
        let update = txn
            .prepare_cached(
                "UPDATE mailbox_queues AS q \
                 SET messages = GREATEST(q.messages - u.messages, 0), \
                     bytes = GREATEST(q.bytes - u.bytes, 0) \
                 FROM unnest($1::bytea[], $2::int8[], $3::int8[]) AS u(id, messages, bytes) \
                 WHERE q.id = u.id",
            )
            .await
            .map_err(pg(D))?;
        txn.execute(&update, &[&ids, &messages, &bytes])
            .await
            .map_err(pg(D))?;
    }
    txn.commit().await.map_err(pg(D))?;
    Ok(ReapOutcome {
        entries: deleted.len() as u64,
        records,
    })
}
