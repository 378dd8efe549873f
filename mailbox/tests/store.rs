//! The redb store through the `Store` trait: sequence numbers, dedup,
//! owner acknowledgements, queue deletion, retention and persistence.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::sync::Arc;
use std::time::Duration;

use murmur_directory::clock::{Clock, OffsetClock};
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
    let q = make_queue(&store, 1);
    let clock = OffsetClock::new();
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
        },
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
