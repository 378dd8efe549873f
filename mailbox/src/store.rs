//! Queue storage: the [`Store`] trait, its embedded implementation on redb,
//! [`RedbStore`] (the default), and [`open_store`], which opens the backend
//! the configuration names. The other backend, on PostgreSQL, is
//! [`PostgresStore`]; both pass one
//! conformance suite (`tests/store.rs`).
//!
//! # Layout
//!
//! Five redb tables; every integer in a key is big-endian so that byte order
//! is numeric order:
//!
//! | table | key | value |
//! |---|---|---|
//! | `meta` | `"schema"` | schema version ([`SCHEMA_VERSION`]) |
//! | `queues` | queue id (32) | owner key (32) ‖ created-at (8) ‖ messages (8) ‖ bytes (8) ‖ next seq (8) |
//! | `entries` | queue id (32) ‖ seq (8) | kind (1) ‖ id (16) ‖ bytes (body or sealed reply; none for a loop) |
//! | `dedup` | queue id (32) ‖ kind (1) ‖ id (16) | seq the item was stored under |
//! | `expiry` | stored-at (8) ‖ queue id (32) ‖ seq (8) | kind (1) ‖ id (16) |
//! | `queue_used` | queue id (32) | last used (8): creation or an owner request |
//! | `idle` | last used (8) ‖ queue id (32) | — (the index the reaper expires unused queues by) |
//!
//! The dedup kinds are 1 = deposit (message id), 2 = SURB reply (SURB id),
//! 3 = loop (loop id). A dedup record outlives the owner's acknowledgement of
//! its entry: a sender that retransmits after the owner fetched and deleted
//! the message is still recognised (and acknowledged) until the retention
//! time has passed; the reaper then removes the entry (if still there) and
//! its dedup record together, driven by the `expiry` index.
//!
//! `queue_used` and `idle` were added without a schema change (schema 1): a
//! database without them gets them at open, every existing queue counted as
//! used at that moment (meta key `"idle_index"` marks it done). An older
//! build ignores them.
//!
//! Every write is one redb transaction committed with
//! [`redb::Durability::Immediate`]: when a method returns `Ok`, its effect
//! survives a crash.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use murmur_wire::IdentityKey;
use murmur_wire::mailbox::{FetchResponse, MAX_FETCH_LIMIT, QueueEntry, QueueItem};
use murmur_wire::{MessageId, QueueId, SurbId};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata};
use redb::{TableDefinition, WriteTransaction};

use crate::config::{Backend, Config};
use crate::error::{Error, Result};
use crate::postgres::PostgresStore;

/// The version of the on-disk layout this build reads and writes.
pub const SCHEMA_VERSION: u64 = 1;

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const QUEUES: TableDefinition<&[u8; 32], &[u8; QUEUE_RECORD_LEN]> = TableDefinition::new("queues");
const ENTRIES: TableDefinition<&[u8; 40], &[u8]> = TableDefinition::new("entries");
const DEDUP: TableDefinition<&[u8; 49], u64> = TableDefinition::new("dedup");
const EXPIRY: TableDefinition<&[u8; 48], &[u8; 17]> = TableDefinition::new("expiry");
const QUEUE_USED: TableDefinition<&[u8; 32], u64> = TableDefinition::new("queue_used");
const IDLE: TableDefinition<&[u8; 40], ()> = TableDefinition::new("idle");

/// A queue's last use is written again only once it is this much newer
/// (seconds), so that owners fetching every second do not each cost a write.
pub const TOUCH_GRANULARITY_SECS: u64 = 3600;

const QUEUE_RECORD_LEN: usize = 64;

/// Per-queue limits. A queue at its limit refuses new items; nothing stored
/// is ever evicted to make room.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quota {
    /// Most entries a queue holds.
    pub max_messages: u64,
    /// Most bytes a queue holds (the sum of its stored entries' encoded sizes).
    pub max_bytes: u64,
}

impl Default for Quota {
    fn default() -> Self {
        Self {
            max_messages: 10_000,
            max_bytes: 32 * 1024 * 1024,
        }
    }
}

/// An item to store in a queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewItem {
    /// The destination queue.
    pub queue: QueueId,
    /// What to store.
    pub item: QueueItem,
}

/// What happened to one [`NewItem`] of a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InsertOutcome {
    /// Stored under this sequence number.
    Stored {
        /// The new entry's sequence number.
        seq: u64,
    },
    /// An item with the same kind and id was stored before (under `seq`,
    /// which the owner may since have deleted); nothing was written.
    Duplicate {
        /// The sequence number of the first copy.
        seq: u64,
    },
    /// The queue is at its quota; nothing was written.
    QueueFull,
    /// No such queue; nothing was written.
    UnknownQueue,
}

/// What happened to a queue creation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CreateOutcome {
    /// The queue exists now.
    Created,
    /// The store holds its maximum number of queues.
    AtCapacity,
    /// A queue with this id already exists (the caller picked a used id).
    Exists,
}

/// A queue's record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueInfo {
    /// The key that signs the owner's requests.
    pub owner: IdentityKey,
    /// Unix seconds.
    pub created_at: u64,
    /// Entries stored.
    pub messages: u64,
    /// Bytes stored.
    pub bytes: u64,
    /// The sequence number the next entry gets.
    pub next_seq: u64,
}

impl QueueInfo {
    fn encode(&self) -> [u8; QUEUE_RECORD_LEN] {
        let mut out = [0u8; QUEUE_RECORD_LEN];
        out[..32].copy_from_slice(&self.owner.0);
        out[32..40].copy_from_slice(&self.created_at.to_be_bytes());
        out[40..48].copy_from_slice(&self.messages.to_be_bytes());
        out[48..56].copy_from_slice(&self.bytes.to_be_bytes());
        out[56..64].copy_from_slice(&self.next_seq.to_be_bytes());
        out
    }

    fn decode(bytes: &[u8; QUEUE_RECORD_LEN]) -> Self {
        let mut owner = [0u8; 32];
        owner.copy_from_slice(&bytes[..32]);
        Self {
            owner: IdentityKey(owner),
            created_at: be_u64(&bytes[32..40]),
            messages: be_u64(&bytes[40..48]),
            bytes: be_u64(&bytes[48..56]),
            next_seq: be_u64(&bytes[56..64]),
        }
    }
}

/// What one reaper pass removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReapOutcome {
    /// Entries deleted because they outlived the retention time.
    pub entries: u64,
    /// Expiry records processed (each also drops its dedup record): what
    /// `max_records` bounds. A pass that processed fewer than `max_records`
    /// left nothing expired behind.
    pub records: u64,
}

/// Where queues live: [`RedbStore`] (embedded, the default) or
/// [`PostgresStore`] (a database several
/// provider processes can share). Tests can stand in for it.
///
/// Every method that writes is durable when it returns `Ok`. Methods block
/// (disk or network I/O): call them from a blocking thread, not an async
/// task.
///
/// Sequence numbers are per queue, start at 1 and only grow; an entry
/// becomes visible to [`fetch`](Store::fetch) only after every entry with a
/// lower number in its queue did, so that an owner paging with `after`
/// never skips one — also when several processes share the store.
pub trait Store: Send + Sync + 'static {
    /// Creates queue `queue` owned by `owner`, unless `max_queues` queues
    /// exist already.
    fn create_queue(
        &self,
        queue: &QueueId,
        owner: &IdentityKey,
        now: u64,
        max_queues: u64,
    ) -> Result<CreateOutcome>;

    /// The queue's record, if it exists.
    fn queue(&self, queue: &QueueId) -> Result<Option<QueueInfo>>;

    /// Stores a batch of items in one durable transaction, once per
    /// (queue, kind, id), within each queue's quota. Returns one outcome per
    /// item, in order. On `Err` the caller must treat every item as not
    /// stored (and acknowledge none): redb wrote nothing; PostgreSQL wrote
    /// nothing either, unless the connection broke while the commit was in
    /// flight, when the batch may have been stored — a retransmission is then
    /// recognised as a duplicate and acknowledged.
    fn insert_batch(&self, batch: &[NewItem], now: u64) -> Result<Vec<InsertOutcome>>;

    /// Up to `limit` (capped at [`MAX_FETCH_LIMIT`]) entries with a sequence
    /// number above `after`, in order; `None` if the queue does not exist.
    fn fetch(&self, queue: &QueueId, after: u64, limit: u32) -> Result<Option<FetchResponse>>;

    /// Deletes exactly the entries numbered `seqs` (numbers with no entry
    /// are ignored); returns how many were deleted, or `None` if the queue
    /// does not exist.
    fn delete(&self, queue: &QueueId, seqs: &[u64]) -> Result<Option<u64>>;

    /// Deletes the queue, its entries and its dedup records; false if it did
    /// not exist.
    fn delete_queue(&self, queue: &QueueId) -> Result<bool>;

    /// Removes entries stored before `older_than` (unix seconds), and their
    /// dedup records, processing at most `max_records` expiry records.
    fn reap(&self, older_than: u64, max_records: usize) -> Result<ReapOutcome>;

    /// Number of queues.
    fn queue_count(&self) -> Result<u64>;

    /// Records that each queue of `used` was used (by its owner) at the
    /// time given; a time older than, or within
    /// [`TOUCH_GRANULARITY_SECS`] of, the recorded one is not written.
    /// Unknown queues are skipped. Returns how many records were written.
    fn touch_queues(&self, used: &[(QueueId, u64)]) -> Result<u64>;

    /// Deletes (as [`Store::delete_queue`]) up to `max_queues` queues not
    /// used since before `unused_since` (unix seconds): neither created nor
    /// touched since. Returns how many were deleted.
    fn expire_idle(&self, unused_since: u64, max_queues: usize) -> Result<u64>;
}

trait Ctx<T> {
    fn during(self, during: &'static str) -> Result<T>;
}

impl<T, E: Into<redb::Error>> Ctx<T> for std::result::Result<T, E> {
    fn during(self, during: &'static str) -> Result<T> {
        self.map_err(|e| Error::Storage {
            during,
            source: e.into(),
        })
    }
}

fn be_u64(bytes: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(bytes);
    u64::from_be_bytes(b)
}

fn entry_key(queue: &[u8; 32], seq: u64) -> [u8; 40] {
    let mut k = [0u8; 40];
    k[..32].copy_from_slice(queue);
    k[32..].copy_from_slice(&seq.to_be_bytes());
    k
}

/// Kind byte and id of an item, its identity for deduplication.
pub(crate) fn item_tag(item: &QueueItem) -> [u8; 17] {
    let (kind, id) = match item {
        QueueItem::Deposit { id, .. } => (1u8, *id.as_bytes()),
        QueueItem::Reply { surb_id, .. } => (2u8, *surb_id.as_bytes()),
        QueueItem::Loop { id } => (3u8, *id.as_bytes()),
    };
    let mut t = [0u8; 17];
    t[0] = kind;
    t[1..].copy_from_slice(&id);
    t
}

fn dedup_key(queue: &[u8; 32], tag: &[u8; 17]) -> [u8; 49] {
    let mut k = [0u8; 49];
    k[..32].copy_from_slice(queue);
    k[32..].copy_from_slice(tag);
    k
}

fn idle_key(used_at: u64, queue: &[u8; 32]) -> [u8; 40] {
    let mut k = [0u8; 40];
    k[..8].copy_from_slice(&used_at.to_be_bytes());
    k[8..].copy_from_slice(queue);
    k
}

/// Removes a queue's entries and dedup records (inside a transaction that
/// removed its record).
fn delete_queue_contents(txn: &WriteTransaction, q: &[u8; 32]) -> Result<()> {
    let mut entries = txn.open_table(ENTRIES).during("opening tables")?;
    entries
        .retain_in::<&[u8; 40], _>(&entry_key(q, 0)..=&entry_key(q, u64::MAX), |_, _| false)
        .during("deleting entries")?;
    let mut dedup = txn.open_table(DEDUP).during("opening tables")?;
    dedup
        .retain_in::<&[u8; 49], _>(
            &dedup_key(q, &[0u8; 17])..=&dedup_key(q, &[0xff; 17]),
            |_, _| false,
        )
        .during("deleting dedup records")?;
    // Expiry records of this queue stay until the reaper reaches them; they
    // then find nothing to delete.
    let mut used = txn.open_table(QUEUE_USED).during("opening tables")?;
    if let Some(at) = used.remove(q).during("deleting a queue's last use")? {
        let at = at.value();
        let mut idle = txn.open_table(IDLE).during("opening tables")?;
        idle.remove(&idle_key(at, q))
            .during("deleting a queue's idle record")?;
    }
    Ok(())
}

fn expiry_key(stored_at: u64, queue: &[u8; 32], seq: u64) -> [u8; 48] {
    let mut k = [0u8; 48];
    k[..8].copy_from_slice(&stored_at.to_be_bytes());
    k[8..40].copy_from_slice(queue);
    k[40..].copy_from_slice(&seq.to_be_bytes());
    k
}

const ENTRY_HEADER_LEN: usize = 17;

/// An entry's stored form: the dedup tag (kind, id), then the item's bytes.
/// (Not postcard: serde writes a byte vector one byte at a time.)
pub(crate) fn encode_item(item: &QueueItem, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&item_tag(item));
    match item {
        QueueItem::Deposit { body, .. } => out.extend_from_slice(body),
        QueueItem::Reply { sealed, .. } => out.extend_from_slice(sealed),
        QueueItem::Loop { .. } => {}
    }
}

pub(crate) fn decode_item(bytes: &[u8]) -> Option<QueueItem> {
    let (header, rest) = bytes.split_at_checked(ENTRY_HEADER_LEN)?;
    let mut id = [0u8; 16];
    id.copy_from_slice(&header[1..]);
    match header[0] {
        1 => Some(QueueItem::Deposit {
            id: MessageId::from_bytes(id),
            body: rest.to_vec(),
        }),
        2 => Some(QueueItem::Reply {
            surb_id: SurbId::from_bytes(id),
            sealed: rest.to_vec(),
        }),
        3 if rest.is_empty() => Some(QueueItem::Loop {
            id: MessageId::from_bytes(id),
        }),
        _ => None,
    }
}

/// The [`Store`] on a redb database file.
#[derive(Debug)]
pub struct RedbStore {
    db: Database,
    quota: Quota,
}

impl RedbStore {
    /// Opens (or creates) the database at `path`. A database left by a crash
    /// is repaired by redb on open: every transaction that committed is
    /// there, nothing else is.
    pub fn open(path: &Path, quota: Quota) -> Result<Self> {
        let db = Database::create(path).map_err(|source| Error::OpenDatabase {
            path: path.to_path_buf(),
            source,
        })?;
        let store = Self { db, quota };
        store.init_schema()?;
        Ok(store)
    }

    fn init_schema(&self) -> Result<()> {
        let txn = self.begin()?;
        {
            let mut meta = txn.open_table(META).during("opening tables")?;
            let found = meta
                .get("schema")
                .during("reading the schema version")?
                .map(|v| v.value());
            match found {
                Some(v) if v != SCHEMA_VERSION => {
                    return Err(Error::Schema {
                        found: v,
                        expected: SCHEMA_VERSION,
                    });
                }
                Some(_) => {}
                None => {
                    meta.insert("schema", SCHEMA_VERSION)
                        .during("writing the schema version")?;
                }
            }
            txn.open_table(QUEUES).during("opening tables")?;
            txn.open_table(ENTRIES).during("opening tables")?;
            txn.open_table(DEDUP).during("opening tables")?;
            txn.open_table(EXPIRY).during("opening tables")?;
            txn.open_table(QUEUE_USED).during("opening tables")?;
            txn.open_table(IDLE).during("opening tables")?;
            let indexed = meta
                .get("idle_index")
                .during("reading the idle index marker")?
                .is_some();
            if !indexed {
                // A database from before queue expiry: every queue counts as
                // used now, so none is expired for the time it was not tracked.
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                let queues = txn.open_table(QUEUES).during("opening tables")?;
                let mut used = txn.open_table(QUEUE_USED).during("opening tables")?;
                let mut idle = txn.open_table(IDLE).during("opening tables")?;
                for row in queues.iter().during("reading queues")? {
                    let (k, _) = row.during("reading queues")?;
                    let q = *k.value();
                    used.insert(&q, now).during("indexing a queue's last use")?;
                    idle.insert(&idle_key(now, &q), ())
                        .during("indexing a queue's last use")?;
                }
                meta.insert("idle_index", 1)
                    .during("writing the idle index marker")?;
            }
        }
        txn.commit().during("creating tables")
    }

    fn begin(&self) -> Result<WriteTransaction> {
        let mut txn = self
            .db
            .begin_write()
            .during("starting a write transaction")?;
        txn.set_durability(Durability::Immediate)
            .during("setting durability")?;
        Ok(txn)
    }

    /// The quota this store enforces.
    pub fn quota(&self) -> Quota {
        self.quota
    }
}

impl Store for RedbStore {
    fn create_queue(
        &self,
        queue: &QueueId,
        owner: &IdentityKey,
        now: u64,
        max_queues: u64,
    ) -> Result<CreateOutcome> {
        let txn = self.begin()?;
        let outcome = {
            let mut queues = txn.open_table(QUEUES).during("opening tables")?;
            if queues
                .get(queue.as_bytes())
                .during("reading a queue")?
                .is_some()
            {
                CreateOutcome::Exists
            } else if queues.len().during("counting queues")? >= max_queues {
                CreateOutcome::AtCapacity
            } else {
                let info = QueueInfo {
                    owner: *owner,
                    created_at: now,
                    messages: 0,
                    bytes: 0,
                    next_seq: 1,
                };
                queues
                    .insert(queue.as_bytes(), &info.encode())
                    .during("creating a queue")?;
                let mut used = txn.open_table(QUEUE_USED).during("opening tables")?;
                used.insert(queue.as_bytes(), now)
                    .during("recording a queue's last use")?;
                let mut idle = txn.open_table(IDLE).during("opening tables")?;
                idle.insert(&idle_key(now, queue.as_bytes()), ())
                    .during("recording a queue's last use")?;
                CreateOutcome::Created
            }
        };
        if outcome == CreateOutcome::Created {
            txn.commit().during("committing a queue creation")?;
        } else {
            txn.abort().during("aborting a queue creation")?;
        }
        Ok(outcome)
    }

    fn queue(&self, queue: &QueueId) -> Result<Option<QueueInfo>> {
        let txn = self.db.begin_read().during("starting a read")?;
        let queues = txn.open_table(QUEUES).during("opening tables")?;
        let info = queues
            .get(queue.as_bytes())
            .during("reading a queue")?
            .map(|v| QueueInfo::decode(v.value()));
        Ok(info)
    }

    fn insert_batch(&self, batch: &[NewItem], now: u64) -> Result<Vec<InsertOutcome>> {
        // Work through the batch queue by queue (a stable sort keeps each
        // queue's items in arrival order): each queue record is read and
        // written once, and the inserts into every table go in key order,
        // which touches each B-tree page once.
        let mut order: Vec<usize> = (0..batch.len()).collect();
        order.sort_by_key(|&i| batch[i].queue);
        let mut outcomes = vec![InsertOutcome::UnknownQueue; batch.len()];
        let txn = self.begin()?;
        {
            let mut queues = txn.open_table(QUEUES).during("opening tables")?;
            let mut entries = txn.open_table(ENTRIES).during("opening tables")?;
            let mut dedup = txn.open_table(DEDUP).during("opening tables")?;
            let mut expiry = txn.open_table(EXPIRY).during("opening tables")?;
            let mut value = Vec::with_capacity(ENTRY_HEADER_LEN + 2600);
            let mut run = order.as_slice();
            while let Some(&first) = run.first() {
                let q = batch[first].queue.as_bytes();
                let len = run
                    .iter()
                    .position(|&i| batch[i].queue.as_bytes() != q)
                    .unwrap_or(run.len());
                let (this, rest) = run.split_at(len);
                run = rest;
                let Some(mut info) = queues
                    .get(q)
                    .during("reading a queue")?
                    .map(|v| QueueInfo::decode(v.value()))
                else {
                    // Outcomes start as UnknownQueue.
                    continue;
                };
                let before = info;
                for &i in this {
                    let item = &batch[i].item;
                    let tag = item_tag(item);
                    let dkey = dedup_key(q, &tag);
                    let seq = info.next_seq;
                    // Insert first: one B-tree descent in the common case
                    // (a new item); a duplicate puts the old record back.
                    let old = dedup
                        .insert(&dkey, seq)
                        .during("storing a dedup record")?
                        .map(|v| v.value());
                    if let Some(old) = old {
                        dedup
                            .insert(&dkey, old)
                            .during("restoring a dedup record")?;
                        outcomes[i] = InsertOutcome::Duplicate { seq: old };
                        continue;
                    }
                    encode_item(item, &mut value);
                    let size = value.len() as u64;
                    if info.messages >= self.quota.max_messages
                        || info.bytes.saturating_add(size) > self.quota.max_bytes
                    {
                        dedup.remove(&dkey).during("removing a dedup record")?;
                        outcomes[i] = InsertOutcome::QueueFull;
                        continue;
                    }
                    entries
                        .insert(&entry_key(q, seq), value.as_slice())
                        .during("storing an entry")?;
                    expiry
                        .insert(&expiry_key(now, q, seq), &tag)
                        .during("storing an expiry record")?;
                    info.next_seq = seq.saturating_add(1);
                    info.messages += 1;
                    info.bytes = info.bytes.saturating_add(size);
                    outcomes[i] = InsertOutcome::Stored { seq };
                }
                if info != before {
                    queues
                        .insert(q, &info.encode())
                        .during("updating a queue")?;
                }
            }
        }
        txn.commit().during("committing a batch")?;
        Ok(outcomes)
    }

    fn fetch(&self, queue: &QueueId, after: u64, limit: u32) -> Result<Option<FetchResponse>> {
        let txn = self.db.begin_read().during("starting a read")?;
        let queues = txn.open_table(QUEUES).during("opening tables")?;
        if queues
            .get(queue.as_bytes())
            .during("reading a queue")?
            .is_none()
        {
            return Ok(None);
        }
        let entries = txn.open_table(ENTRIES).during("opening tables")?;
        let limit = limit.min(MAX_FETCH_LIMIT) as usize;
        let Some(start) = after.checked_add(1) else {
            return Ok(Some(FetchResponse {
                entries: Vec::new(),
                more: false,
            }));
        };
        let q = queue.as_bytes();
        let mut out = Vec::with_capacity(limit.min(64));
        let mut more = false;
        for row in entries
            .range::<&[u8; 40]>(&entry_key(q, start)..=&entry_key(q, u64::MAX))
            .during("reading entries")?
        {
            let (key, value) = row.during("reading entries")?;
            if out.len() == limit {
                more = true;
                break;
            }
            let seq = be_u64(&key.value()[32..]);
            let item = decode_item(value.value()).ok_or(Error::Corrupt {
                what: "queue entry",
            })?;
            out.push(QueueEntry { seq, item });
        }
        Ok(Some(FetchResponse { entries: out, more }))
    }

    fn delete(&self, queue: &QueueId, seqs: &[u64]) -> Result<Option<u64>> {
        let q = queue.as_bytes();
        let txn = self.begin()?;
        let deleted = {
            let mut queues = txn.open_table(QUEUES).during("opening tables")?;
            let Some(mut info) = queues
                .get(q)
                .during("reading a queue")?
                .map(|v| QueueInfo::decode(v.value()))
            else {
                drop(queues);
                txn.abort().during("aborting a deletion")?;
                return Ok(None);
            };
            let mut entries = txn.open_table(ENTRIES).during("opening tables")?;
            let mut deleted = 0u64;
            let mut bytes = 0u64;
            for seq in seqs {
                if let Some(value) = entries
                    .remove(&entry_key(q, *seq))
                    .during("deleting entries")?
                {
                    deleted += 1;
                    bytes += value.value().len() as u64;
                }
            }
            if deleted > 0 {
                info.messages = info.messages.saturating_sub(deleted);
                info.bytes = info.bytes.saturating_sub(bytes);
                queues
                    .insert(q, &info.encode())
                    .during("updating a queue")?;
            }
            deleted
        };
        txn.commit().during("committing a deletion")?;
        Ok(Some(deleted))
    }

    fn delete_queue(&self, queue: &QueueId) -> Result<bool> {
        let q = queue.as_bytes();
        let txn = self.begin()?;
        {
            let mut queues = txn.open_table(QUEUES).during("opening tables")?;
            if queues.remove(q).during("deleting a queue")?.is_none() {
                drop(queues);
                txn.abort().during("aborting a queue deletion")?;
                return Ok(false);
            }
        }
        delete_queue_contents(&txn, q)?;
        txn.commit().during("committing a queue deletion")?;
        Ok(true)
    }

    fn reap(&self, older_than: u64, max_records: usize) -> Result<ReapOutcome> {
        let txn = self.begin()?;
        let mut outcome = ReapOutcome::default();
        {
            let mut expiry = txn.open_table(EXPIRY).during("opening tables")?;
            let mut due: Vec<([u8; 48], [u8; 17])> = Vec::new();
            for row in expiry
                .range::<&[u8; 48]>(..&expiry_key(older_than, &[0u8; 32], 0))
                .during("reading the expiry index")?
            {
                if due.len() >= max_records {
                    break;
                }
                let (k, v) = row.during("reading the expiry index")?;
                due.push((*k.value(), *v.value()));
            }
            if due.is_empty() {
                drop(expiry);
                txn.abort().during("aborting a reaper pass")?;
                return Ok(outcome);
            }
            let mut queues = txn.open_table(QUEUES).during("opening tables")?;
            let mut entries = txn.open_table(ENTRIES).during("opening tables")?;
            let mut dedup = txn.open_table(DEDUP).during("opening tables")?;
            let mut freed: HashMap<[u8; 32], (u64, u64)> = HashMap::new();
            for (k, tag) in &due {
                let mut q = [0u8; 32];
                q.copy_from_slice(&k[8..40]);
                let seq = be_u64(&k[40..48]);
                if let Some(v) = entries
                    .remove(&entry_key(&q, seq))
                    .during("deleting an expired entry")?
                {
                    let f = freed.entry(q).or_default();
                    f.0 += 1;
                    f.1 += v.value().len() as u64;
                    outcome.entries += 1;
                }
                let dkey = dedup_key(&q, tag);
                let same = dedup
                    .get(&dkey)
                    .during("reading the dedup index")?
                    .is_some_and(|s| s.value() == seq);
                if same {
                    dedup.remove(&dkey).during("deleting a dedup record")?;
                }
                expiry.remove(k).during("deleting an expiry record")?;
                outcome.records += 1;
            }
            for (q, (messages, bytes)) in freed {
                let info = queues
                    .get(&q)
                    .during("reading a queue")?
                    .map(|v| QueueInfo::decode(v.value()));
                if let Some(mut info) = info {
                    info.messages = info.messages.saturating_sub(messages);
                    info.bytes = info.bytes.saturating_sub(bytes);
                    queues
                        .insert(&q, &info.encode())
                        .during("updating a queue")?;
                }
            }
        }
        txn.commit().during("committing a reaper pass")?;
        Ok(outcome)
    }

    fn queue_count(&self) -> Result<u64> {
        let txn = self.db.begin_read().during("starting a read")?;
        let queues = txn.open_table(QUEUES).during("opening tables")?;
        queues.len().during("counting queues")
    }

    fn touch_queues(&self, used: &[(QueueId, u64)]) -> Result<u64> {
        if used.is_empty() {
            return Ok(0);
        }
        let mut order: Vec<&(QueueId, u64)> = used.iter().collect();
        order.sort_unstable();
        let txn = self.begin()?;
        let mut written = 0;
        {
            let mut last = txn.open_table(QUEUE_USED).during("opening tables")?;
            let mut idle = txn.open_table(IDLE).during("opening tables")?;
            for (queue, at) in order {
                let q = queue.as_bytes();
                let Some(old) = last
                    .get(q)
                    .during("reading a queue's last use")?
                    .map(|v| v.value())
                else {
                    continue;
                };
                if *at < old.saturating_add(TOUCH_GRANULARITY_SECS) {
                    continue;
                }
                last.insert(q, *at).during("recording a queue's last use")?;
                idle.remove(&idle_key(old, q))
                    .during("recording a queue's last use")?;
                idle.insert(&idle_key(*at, q), ())
                    .during("recording a queue's last use")?;
                written += 1;
            }
        }
        if written == 0 {
            txn.abort().during("aborting a touch")?;
        } else {
            txn.commit().during("committing queue uses")?;
        }
        Ok(written)
    }

    fn expire_idle(&self, unused_since: u64, max_queues: usize) -> Result<u64> {
        let txn = self.begin()?;
        let due: Vec<[u8; 40]> = {
            let idle = txn.open_table(IDLE).during("opening tables")?;
            let mut due = Vec::new();
            for row in idle
                .range::<&[u8; 40]>(..&idle_key(unused_since, &[0u8; 32]))
                .during("reading the idle index")?
            {
                if due.len() >= max_queues {
                    break;
                }
                let (k, _) = row.during("reading the idle index")?;
                due.push(*k.value());
            }
            due
        };
        if due.is_empty() {
            txn.abort().during("aborting an idle pass")?;
            return Ok(0);
        }
        let mut deleted = 0;
        for k in &due {
            let mut q = [0u8; 32];
            q.copy_from_slice(&k[8..]);
            let existed = {
                let mut queues = txn.open_table(QUEUES).during("opening tables")?;
                queues.remove(&q).during("deleting a queue")?.is_some()
            };
            // Removes the idle and last-use records too.
            delete_queue_contents(&txn, &q)?;
            {
                // A stray index record (no last-use record) goes as well.
                let mut idle = txn.open_table(IDLE).during("opening tables")?;
                idle.remove(k).during("deleting an idle record")?;
            }
            deleted += u64::from(existed);
        }
        txn.commit().during("committing an idle pass")?;
        Ok(deleted)
    }
}

/// Opens the store `config.storage.backend` names: `mailbox.redb` in the
/// data directory, or the PostgreSQL database at `storage.postgres_url`
/// (connected, checked, its tables created or upgraded). Blocks: call it
/// from a blocking thread.
pub fn open_store(config: &Config) -> Result<Arc<dyn Store>> {
    let quota = config.storage.quota();
    Ok(match config.storage.backend {
        Backend::Redb => Arc::new(RedbStore::open(&config.database_path(), quota)?),
        Backend::Postgres => {
            let settings = config.storage.postgres().ok_or_else(|| {
                Error::ConfigValue(
                    "storage.backend = \"postgres\" needs storage.postgres_url".to_owned(),
                )
            })?;
            Arc::new(PostgresStore::open(&settings, quota)?)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn stored_bytes_never_panic_the_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..3000)) {
            if let Some(item) = decode_item(&bytes) {
                let mut again = Vec::new();
                encode_item(&item, &mut again);
                prop_assert_eq!(again, bytes);
            }
        }
    }

    #[test]
    fn queue_records_round_trip() {
        let info = QueueInfo {
            owner: IdentityKey([3; 32]),
            created_at: 1_700_000_000,
            messages: 7,
            bytes: 12_345,
            next_seq: 8,
        };
        assert_eq!(QueueInfo::decode(&info.encode()), info);
    }

    #[test]
    fn keys_sort_numerically() {
        let q = [1u8; 32];
        assert!(entry_key(&q, 255) < entry_key(&q, 256));
        assert!(entry_key(&q, u64::MAX) < entry_key(&[2u8; 32], 0));
        assert!(expiry_key(9, &[0xff; 32], u64::MAX) < expiry_key(10, &[0; 32], 0));
    }

    #[test]
    fn items_round_trip_and_garbage_is_refused() {
        let items = [
            QueueItem::Deposit {
                id: MessageId::from_bytes([1; 16]),
                body: vec![2; 2048],
            },
            QueueItem::Reply {
                surb_id: SurbId::from_bytes([3; 16]),
                sealed: vec![4; 2496],
            },
            QueueItem::Loop {
                id: MessageId::from_bytes([5; 16]),
            },
        ];
        let mut buf = Vec::new();
        for item in items {
            encode_item(&item, &mut buf);
            assert_eq!(decode_item(&buf), Some(item));
        }
        assert_eq!(decode_item(&[]), None);
        assert_eq!(decode_item(&[9; 17]), None);
        let mut loop_with_bytes = vec![3u8; 17];
        loop_with_bytes.push(0);
        assert_eq!(decode_item(&loop_with_bytes), None);
    }
}
