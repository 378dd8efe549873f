//! The redb store through the `Store` trait: sequence numbers, dedup,
//! owner acknowledgements, queue deletion, retention and persistence.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::sync::Arc;
use std::time::Duration;

use murmur_directory::clock::{Clock, OffsetClock};
use murmur_mailbox::limits::QueueUsage;
use murmur_mailbox::reaper::{ReaperConfig, run_reaper};
use murmur_mailbox::{CreateOutcome, InsertOutcome, Metrics, NewItem, Quota, RedbStore, Store};
use murmur_wire::mailbox::QueueItem;
use murmur_wire::{IdentityKey, MessageId, QueueId, SurbId};
use tokio_util::sync::CancellationToken;

fn deposit(q: QueueId, id: u8) -> NewItem {
    NewItem {
        queue: q,
        item: QueueItem::Deposit {
            id: MessageId::from_bytes([id; 16]),
            body: vec![id; 2048],
        },
    }
}

fn open(dir: &tempfile::TempDir) -> RedbStore {
    RedbStore::open(&dir.path().join("m.redb"), Quota::default()).unwrap()
}

fn make_queue(store: &RedbStore, seed: u8) -> QueueId {
    let q = QueueId::from_bytes([seed; 32]);
    assert_eq!(
        store
            .create_queue(&q, &IdentityKey([seed; 32]), 1000, 10)
            .unwrap(),
        CreateOutcome::Created
    );
    q
}

#[test]
fn batches_number_entries_and_dedup_per_queue_and_kind() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let a = make_queue(&store, 1);
    let b = make_queue(&store, 2);
    let same_id = MessageId::from_bytes([5; 16]);
    let batch = vec![
        deposit(a, 5),
        deposit(a, 5),
        deposit(b, 5),
        // A loop and a reply with the same 16 bytes are other items.
        NewItem {
            queue: a,
            item: QueueItem::Loop { id: same_id },
        },
        NewItem {
            queue: a,
            item: QueueItem::Reply {
                surb_id: SurbId::from_bytes([5; 16]),
                sealed: vec![1; 2496],
            },
        },
        deposit(QueueId::from_bytes([9; 32]), 1),
    ];
    let outcomes = store.insert_batch(&batch, 2000).unwrap();
    assert_eq!(
        outcomes,
        vec![
            InsertOutcome::Stored { seq: 1 },
            InsertOutcome::Duplicate { seq: 1 },
            InsertOutcome::Stored { seq: 1 },
            InsertOutcome::Stored { seq: 2 },
            InsertOutcome::Stored { seq: 3 },
            InsertOutcome::UnknownQueue,
        ]
    );
    let info = store.queue(&a).unwrap().unwrap();
    assert_eq!(info.messages, 3);
    assert_eq!(info.next_seq, 4);
    assert_eq!(store.fetch(&a, 1, 10).unwrap().unwrap().entries[0].seq, 2);
    assert_eq!(
        store
            .fetch(&a, u64::MAX, 10)
            .unwrap()
            .unwrap()
            .entries
            .len(),
        0
    );
    assert_eq!(
        store.fetch(&QueueId::from_bytes([9; 32]), 0, 1).unwrap(),
        None
    );
}

#[test]
fn deletions_remove_exactly_the_named_entries_and_free_the_quota() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let q = make_queue(&store, 1);
    let batch: Vec<_> = (0..5).map(|i| deposit(q, i)).collect();
    store.insert_batch(&batch, 2000).unwrap();
    let before = store.queue(&q).unwrap().unwrap();
    // Entries 1, 3 and 4, and a number that was never stored.
    assert_eq!(store.delete(&q, &[1, 3, 4, 99]).unwrap(), Some(3));
    let after = store.queue(&q).unwrap().unwrap();
    assert_eq!(after.messages, 2);
    assert!(after.bytes < before.bytes && after.bytes > 0);
    let seqs: Vec<_> = store
        .fetch(&q, 0, 10)
        .unwrap()
        .unwrap()
        .entries
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(seqs, vec![2, 5]);
    // Deleting again deletes nothing more; new entries keep counting up.
    assert_eq!(store.delete(&q, &[1, 3, 4]).unwrap(), Some(0));
    assert_eq!(store.delete(&q, &[u64::MAX]).unwrap(), Some(0));
    let out = store.insert_batch(&[deposit(q, 7)], 2001).unwrap();
    assert_eq!(out, vec![InsertOutcome::Stored { seq: 6 }]);
    assert_eq!(
        store.delete(&QueueId::from_bytes([8; 32]), &[1]).unwrap(),
        None
    );
}

#[test]
fn deleting_a_queue_deletes_everything_in_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let q = make_queue(&store, 1);
    let other = make_queue(&store, 2);
    store
        .insert_batch(&[deposit(q, 1), deposit(other, 1)], 2000)
        .unwrap();
    assert!(store.delete_queue(&q).unwrap());
    assert!(!store.delete_queue(&q).unwrap());
    assert_eq!(store.queue(&q).unwrap(), None);
    assert_eq!(store.queue_count().unwrap(), 1);
    assert_eq!(
        store.insert_batch(&[deposit(q, 1)], 2001).unwrap(),
        vec![InsertOutcome::UnknownQueue]
    );
    // The other queue is untouched, and the reaper copes with the deleted
    // queue's leftover expiry records.
    assert_eq!(
        store.fetch(&other, 0, 10).unwrap().unwrap().entries.len(),
        1
    );
    let reaped = store.reap(3000, 100).unwrap();
    assert_eq!(reaped.entries, 1);
    assert_eq!(reaped.records, 2);
}

#[test]
fn the_reaper_deletes_expired_entries_and_their_dedup_records() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let q = make_queue(&store, 1);
    store
        .insert_batch(&[deposit(q, 1), deposit(q, 2)], 1000)
        .unwrap();
    store.insert_batch(&[deposit(q, 3)], 2000).unwrap();
    // The owner already deleted entry 1; its dedup record lives on.
    store.delete(&q, &[1]).unwrap();
    assert_eq!(
        store.insert_batch(&[deposit(q, 1)], 1500).unwrap(),
        vec![InsertOutcome::Duplicate { seq: 1 }]
    );
    // Nothing is older than 1000.
    assert_eq!(store.reap(1000, 100).unwrap().records, 0);
    // A pass in small transactions.
    let first = store.reap(1500, 1).unwrap();
    assert_eq!(first.records, 1);
    let rest = store.reap(1500, 100).unwrap();
    assert_eq!(first.entries + rest.entries, 1, "entry 1 was already gone");
    assert_eq!(first.records + rest.records, 2);
    let left: Vec<_> = store
        .fetch(&q, 0, 10)
        .unwrap()
        .unwrap()
        .entries
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(left, vec![3]);
    let info = store.queue(&q).unwrap().unwrap();
    assert_eq!(info.messages, 1);
    // With its dedup record gone, message 1 would be stored anew.
    assert_eq!(
        store.insert_batch(&[deposit(q, 1)], 2100).unwrap(),
        vec![InsertOutcome::Stored { seq: 4 }]
    );
}

#[test]
fn everything_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let q = {
        let store = open(&dir);
        let q = make_queue(&store, 1);
        store.insert_batch(&[deposit(q, 1)], 2000).unwrap();
        q
    };
    let store = open(&dir);
    assert_eq!(
        store.queue(&q).unwrap().unwrap().owner,
        IdentityKey([1; 32])
    );
    assert_eq!(store.fetch(&q, 0, 10).unwrap().unwrap().entries.len(), 1);
    assert_eq!(
        store.insert_batch(&[deposit(q, 1)], 2001).unwrap(),
        vec![InsertOutcome::Duplicate { seq: 1 }]
    );
}

#[test]
fn the_queue_cap_holds() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let owner = IdentityKey([1; 32]);
    for i in 0..3u8 {
        let outcome = store
            .create_queue(&QueueId::from_bytes([i; 32]), &owner, 1, 3)
            .unwrap();
        assert_eq!(outcome, CreateOutcome::Created);
    }
    assert_eq!(
        store
            .create_queue(&QueueId::from_bytes([9; 32]), &owner, 1, 3)
            .unwrap(),
        CreateOutcome::AtCapacity
    );
    assert_eq!(
        store
            .create_queue(&QueueId::from_bytes([0; 32]), &owner, 1, 10)
            .unwrap(),
        CreateOutcome::Exists
    );
}

#[tokio::test(start_paused = true)]
async fn the_reaper_task_runs_on_its_interval() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(open(&dir));
    let clock = OffsetClock::new();
    let q = QueueId::from_bytes([1; 32]);
    store
        .create_queue(&q, &IdentityKey([1; 32]), clock.now_secs(), 10)
        .unwrap();
    store
        .insert_batch(&[deposit(q, 1)], clock.now_secs())
        .unwrap();
    let metrics = Arc::new(Metrics::new());
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(run_reaper(
        store.clone(),
        Arc::new(clock.clone()),
        ReaperConfig {
            retention: Duration::from_secs(3600),
            interval: Duration::from_secs(60),
            batch: 10,
            queue_idle: Duration::from_secs(100_000),
        },
        Arc::new(QueueUsage::default()),
        metrics.clone(),
        shutdown.clone(),
    ));
    // The first pass (at once) finds nothing expired.
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(store.fetch(&q, 0, 10).unwrap().unwrap().entries.len(), 1);
    // The wall clock moves past the retention time; the next pass, at the
    // next interval, deletes the entry.
    clock.advance(Duration::from_secs(3601));
    tokio::time::sleep(Duration::from_secs(31)).await;
    assert!(store.fetch(&q, 0, 10).unwrap().unwrap().entries.is_empty());
    shutdown.cancel();
    task.await.unwrap();
}

#[test]
fn queues_unused_for_the_idle_time_expire_with_their_contents() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    // Created at 1000.
    let (a, b, c) = (
        make_queue(&store, 1),
        make_queue(&store, 2),
        make_queue(&store, 3),
    );
    store.insert_batch(&[deposit(b, 1)], 1000).unwrap();
    // A's owner uses it later; a use within the granularity is not written.
    let later = 1000 + murmur_mailbox::store::TOUCH_GRANULARITY_SECS;
    assert_eq!(store.touch_queues(&[(a, 1001)]).unwrap(), 0);
    let unknown = QueueId::from_bytes([9; 32]);
    assert_eq!(
        store.touch_queues(&[(a, later), (unknown, later)]).unwrap(),
        1
    );
    // C is deleted by its owner: nothing left for the reaper.
    assert!(store.delete_queue(&c).unwrap());
    // Nothing is unused since before 1000.
    assert_eq!(store.expire_idle(1000, 10).unwrap(), 0);
    // B is unused since 1000; A since `later`.
    assert_eq!(store.expire_idle(later, 10).unwrap(), 1);
    assert!(store.queue(&b).unwrap().is_none());
    assert!(store.fetch(&b, 0, 10).unwrap().is_none());
    assert!(store.queue(&a).unwrap().is_some());
    assert_eq!(store.queue_count().unwrap(), 1);
    // Its deposit's dedup record went with it: a re-created queue of the
    // same id starts empty and takes the deposit again.
    store
        .create_queue(&b, &IdentityKey([2; 32]), later + 5, 10)
        .unwrap();
    assert_eq!(
        store.insert_batch(&[deposit(b, 1)], later + 5).unwrap(),
        vec![InsertOutcome::Stored { seq: 1 }]
    );
    // Batches: at most `max_queues` per call.
    assert_eq!(store.expire_idle(u64::MAX, 1).unwrap(), 1);
    assert_eq!(store.expire_idle(u64::MAX, 1).unwrap(), 1);
    assert_eq!(store.expire_idle(u64::MAX, 1).unwrap(), 0);
}

#[test]
fn a_database_from_before_queue_expiry_counts_every_queue_as_used_at_upgrade() {
    use redb::{ReadableDatabase, TableDefinition};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.redb");
    // What an older build wrote: schema 1, a queue created in 1970, no
    // last-use tables.
    {
        let db = redb::Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut meta = txn
                .open_table(TableDefinition::<&str, u64>::new("meta"))
                .unwrap();
            meta.insert("schema", 1).unwrap();
            let mut queues = txn
                .open_table(TableDefinition::<&[u8; 32], &[u8; 64]>::new("queues"))
                .unwrap();
            let mut record = [0u8; 64];
            record[32..40].copy_from_slice(&1000u64.to_be_bytes());
            record[56..64].copy_from_slice(&1u64.to_be_bytes());
            queues.insert(&[7u8; 32], &record).unwrap();
        }
        txn.commit().unwrap();
        let read = db.begin_read().unwrap();
        assert!(
            read.open_table(TableDefinition::<&[u8; 32], u64>::new("queue_used"))
                .is_err()
        );
    }
    let store = open(&dir);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    // Not expired for its age: it counts as used at the upgrade.
    assert_eq!(store.expire_idle(now - 60, 10).unwrap(), 0);
    assert_eq!(store.queue_count().unwrap(), 1);
    drop(store);
    // Reopening does not index again.
    let store = open(&dir);
    assert_eq!(store.expire_idle(now + 3600, 10).unwrap(), 1);
}

#[tokio::test(start_paused = true)]
async fn the_reaper_expires_queues_nobody_uses_and_keeps_those_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(open(&dir));
    let clock = OffsetClock::new();
    let now = clock.now_secs();
    let (used, unused) = (QueueId::from_bytes([1; 32]), QueueId::from_bytes([2; 32]));
    for q in [used, unused] {
        store
            .create_queue(&q, &IdentityKey([1; 32]), now, 10)
            .unwrap();
    }
    let usage = Arc::new(QueueUsage::default());
    let metrics = Arc::new(Metrics::new());
    let shutdown = CancellationToken::new();
    let idle = Duration::from_secs(30 * 24 * 3600);
    let task = tokio::spawn(run_reaper(
        store.clone(),
        Arc::new(clock.clone()),
        ReaperConfig {
            retention: Duration::from_secs(14 * 24 * 3600),
            interval: Duration::from_secs(60),
            batch: 10,
            queue_idle: idle,
        },
        usage.clone(),
        metrics.clone(),
        shutdown.clone(),
    ));
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Twenty days on, the owner of one queue fetches (the fetch API records
    // it); twenty more days on, only the other has been idle for thirty.
    clock.advance(Duration::from_secs(20 * 24 * 3600));
    usage.touch(used, clock.now_secs());
    tokio::time::sleep(Duration::from_secs(60)).await;
    clock.advance(Duration::from_secs(20 * 24 * 3600));
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(store.queue(&unused).unwrap().is_none());
    assert!(store.queue(&used).unwrap().is_some());
    assert_eq!(metrics.queues_expired(), 1);
    shutdown.cancel();
    task.await.unwrap();
}
