//! The `Store` conformance suite: every behaviour test runs against both
//! backends, redb (`redb::…`) and PostgreSQL (`postgres::…`) — sequence
//! numbers, dedup, quotas, fetch paging, exact deletions, queue deletion,
//! retention, the queue cap, persistence, and concurrent writers.
//!
//! The PostgreSQL tests use `MURMUR_TEST_POSTGRES_URL`, or a throwaway
//! cluster the binary starts itself when PostgreSQL is installed
//! (`common/postgres.rs`); without either they say on the terminal that
//! they did not run, or fail with `MURMUR_REQUIRE_POSTGRES=1`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::postgres::TestDb;
use murmur_mailbox::limits::QueueUsage;
use murmur_mailbox::reaper::{ReaperConfig, run_reaper};
use murmur_mailbox::{
    CreateOutcome, InsertOutcome, Metrics, NewItem, PostgresStore, Quota, RedbStore, Store,
};
use murmur_net::clock::{Clock, OffsetClock};
use murmur_wire::mailbox::{MAX_FETCH_LIMIT, QueueItem};
use murmur_wire::{IdentityKey, MessageId, QueueId, SurbId};
use tokio_util::sync::CancellationToken;

/// Where a test's store lives; `open` may be called again after the
/// previous store was dropped (reopening), and `second` gives another
/// handle for concurrent writers.
enum Fixture {
    Redb(tempfile::TempDir),
    Postgres(TestDb),
}

impl Fixture {
    fn redb() -> Self {
        Self::Redb(tempfile::tempdir().unwrap())
    }

    fn postgres(test: &str) -> Option<Self> {
        TestDb::new(test).map(Self::Postgres)
    }

    fn open_with(&self, quota: Quota) -> Arc<dyn Store> {
        match self {
            Self::Redb(dir) => {
                Arc::new(RedbStore::open(&dir.path().join("m.redb"), quota).unwrap())
            }
            Self::Postgres(db) => Arc::new(PostgresStore::open(&db.settings(), quota).unwrap()),
        }
    }

    fn open(&self) -> Arc<dyn Store> {
        self.open_with(Quota::default())
    }

    /// Another writer on the same data: an independent store with its own
    /// connection pool (as a second process would have) for PostgreSQL;
    /// the same store for redb, whose file one process opens once.
    fn second(&self, first: &Arc<dyn Store>) -> Arc<dyn Store> {
        match self {
            Self::Redb(_) => first.clone(),
            Self::Postgres(_) => self.open(),
        }
    }
}

/// Each test once per backend.
macro_rules! conformance {
    ($($test:ident),* $(,)?) => {
        mod redb {
            $(
                #[test]
                fn $test() {
                    super::$test(&super::Fixture::redb());
                }
            )*
        }
        mod postgres {
            $(
                #[test]
                fn $test() {
                    if let Some(f) = super::Fixture::postgres(stringify!($test)) {
                        super::$test(&f);
                    }
                }
            )*
        }
    };
}

conformance!(
    batches_number_entries_and_dedup_per_queue_and_kind,
    items_come_back_as_they_were_stored,
    fetch_pages_in_order_up_to_the_limit,
    quotas_refuse_and_never_evict,
    deletions_remove_exactly_the_named_entries_and_free_the_quota,
    deleting_a_queue_deletes_everything_in_it,
    the_reaper_deletes_expired_entries_and_their_dedup_records,
    everything_survives_reopening,
    the_queue_cap_holds,
    the_reaper_task_runs_on_its_interval,
    concurrent_writers_store_each_item_once_numbered_in_commit_order,
    queues_unused_for_the_idle_time_expire_with_their_contents,
    the_reaper_expires_queues_nobody_uses_and_keeps_those_in_use,
);

fn deposit(q: QueueId, id: u8) -> NewItem {
    NewItem {
        queue: q,
        item: QueueItem::Deposit {
            id: MessageId::from_bytes([id; 16]),
            body: vec![id; 2048],
        },
    }
}

fn make_queue(store: &dyn Store, seed: u8) -> QueueId {
    let q = QueueId::from_bytes([seed; 32]);
    assert_eq!(
        store
            .create_queue(&q, &IdentityKey([seed; 32]), 1000, 10)
            .unwrap(),
        CreateOutcome::Created
    );
    q
}

fn seqs(store: &dyn Store, q: &QueueId) -> Vec<u64> {
    store
        .fetch(q, 0, MAX_FETCH_LIMIT)
        .unwrap()
        .unwrap()
        .entries
        .iter()
        .map(|e| e.seq)
        .collect()
}

fn batches_number_entries_and_dedup_per_queue_and_kind(f: &Fixture) {
    let store = f.open();
    let a = make_queue(&*store, 1);
    let b = make_queue(&*store, 2);
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
    // A later batch recognises all of them.
    let again = store.insert_batch(&batch[..5], 2001).unwrap();
    assert_eq!(
        again,
        vec![
            InsertOutcome::Duplicate { seq: 1 },
            InsertOutcome::Duplicate { seq: 1 },
            InsertOutcome::Duplicate { seq: 1 },
            InsertOutcome::Duplicate { seq: 2 },
            InsertOutcome::Duplicate { seq: 3 },
        ]
    );
    let info = store.queue(&a).unwrap().unwrap();
    assert_eq!(info.messages, 3);
    assert_eq!(info.next_seq, 4);
    assert_eq!(info.owner, IdentityKey([1; 32]));
    assert_eq!(info.created_at, 1000);
    assert_eq!(info.bytes, (17 + 2048) + 17 + (17 + 2496));
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
    assert_eq!(store.queue(&QueueId::from_bytes([9; 32])).unwrap(), None);
    assert_eq!(store.insert_batch(&[], 2002).unwrap(), vec![]);
}

fn items_come_back_as_they_were_stored(f: &Fixture) {
    let store = f.open();
    let q = make_queue(&*store, 1);
    let items = vec![
        QueueItem::Deposit {
            id: MessageId::from_bytes([1; 16]),
            body: (0..2048).map(|i| i as u8).collect(),
        },
        QueueItem::Reply {
            surb_id: SurbId::from_bytes([2; 16]),
            sealed: (0..2496).map(|i| (i * 7) as u8).collect(),
        },
        QueueItem::Loop {
            id: MessageId::from_bytes([3; 16]),
        },
    ];
    let batch: Vec<_> = items
        .iter()
        .map(|item| NewItem {
            queue: q,
            item: item.clone(),
        })
        .collect();
    store.insert_batch(&batch, 2000).unwrap();
    let got = store.fetch(&q, 0, 10).unwrap().unwrap();
    assert!(!got.more);
    let got: Vec<_> = got.entries.into_iter().map(|e| (e.seq, e.item)).collect();
    assert_eq!(
        got,
        items
            .into_iter()
            .zip(1..)
            .map(|(i, s)| (s, i))
            .collect::<Vec<_>>()
    );
}

fn fetch_pages_in_order_up_to_the_limit(f: &Fixture) {
    let store = f.open();
    let q = make_queue(&*store, 1);
    let n = 300u16;
    for chunk in (0..n).collect::<Vec<_>>().chunks(128) {
        let batch: Vec<_> = chunk
            .iter()
            .map(|i| NewItem {
                queue: q,
                item: QueueItem::Loop {
                    id: MessageId::from_bytes([
                        (i >> 8) as u8,
                        *i as u8,
                        0,
                        0,
                        0,
                        0,
                        0,
                        0,
                        0,
                        0,
                        0,
                        0,
                        0,
                        0,
                        0,
                        9,
                    ]),
                },
            })
            .collect();
        store.insert_batch(&batch, 2000).unwrap();
    }
    let page = |after, limit| {
        let r = store.fetch(&q, after, limit).unwrap().unwrap();
        (r.entries.iter().map(|e| e.seq).collect::<Vec<_>>(), r.more)
    };
    // The limit is capped.
    let (first, more) = page(0, 1000);
    assert_eq!(first, (1..=u64::from(MAX_FETCH_LIMIT)).collect::<Vec<_>>());
    assert!(more);
    let (rest, more) = page(256, 1000);
    assert_eq!(rest, (257..=300).collect::<Vec<_>>());
    assert!(!more);
    assert_eq!(page(10, 5), ((11..=15).collect(), true));
    // Exactly `limit` left: no more.
    assert_eq!(page(295, 5), ((296..=300).collect(), false));
    assert_eq!(page(300, 5), (vec![], false));
    // Pages skip deleted entries.
    store.delete(&q, &[11, 12, 14]).unwrap();
    assert_eq!(page(10, 3), (vec![13, 15, 16], true));
}

fn quotas_refuse_and_never_evict(f: &Fixture) {
    let store = f.open_with(Quota {
        max_messages: 3,
        max_bytes: 3 * 2065 + 17,
    });
    let q = make_queue(&*store, 1);
    let batch: Vec<_> = (1..=5).map(|i| deposit(q, i)).collect();
    assert_eq!(
        store.insert_batch(&batch, 2000).unwrap(),
        vec![
            InsertOutcome::Stored { seq: 1 },
            InsertOutcome::Stored { seq: 2 },
            InsertOutcome::Stored { seq: 3 },
            InsertOutcome::QueueFull,
            InsertOutcome::QueueFull,
        ]
    );
    // A retransmission of a stored item is still recognised when full.
    assert_eq!(
        store.insert_batch(&[deposit(q, 2)], 2001).unwrap(),
        vec![InsertOutcome::Duplicate { seq: 2 }]
    );
    assert_eq!(seqs(&*store, &q), vec![1, 2, 3]);
    // Deleting makes room; a refused item is stored when it comes again.
    store.delete(&q, &[1]).unwrap();
    assert_eq!(
        store
            .insert_batch(&[deposit(q, 4), deposit(q, 5)], 2002)
            .unwrap(),
        vec![InsertOutcome::Stored { seq: 4 }, InsertOutcome::QueueFull]
    );

    // The byte quota, with room for two deposits and a loop packet.
    let store = {
        drop(store);
        f.open_with(Quota {
            max_messages: 100,
            max_bytes: 2 * 2065 + 17,
        })
    };
    let r = make_queue(&*store, 2);
    let lp = |i: u8| NewItem {
        queue: r,
        item: QueueItem::Loop {
            id: MessageId::from_bytes([i; 16]),
        },
    };
    assert_eq!(
        store
            .insert_batch(
                &[deposit(r, 1), deposit(r, 2), deposit(r, 3), lp(1), lp(2)],
                2003
            )
            .unwrap(),
        vec![
            InsertOutcome::Stored { seq: 1 },
            InsertOutcome::Stored { seq: 2 },
            InsertOutcome::QueueFull,
            InsertOutcome::Stored { seq: 3 },
            InsertOutcome::QueueFull,
        ]
    );
    let info = store.queue(&r).unwrap().unwrap();
    assert_eq!((info.messages, info.bytes), (3, 2 * 2065 + 17));
}

fn deletions_remove_exactly_the_named_entries_and_free_the_quota(f: &Fixture) {
    let store = f.open();
    let q = make_queue(&*store, 1);
    let batch: Vec<_> = (0..5).map(|i| deposit(q, i)).collect();
    store.insert_batch(&batch, 2000).unwrap();
    let before = store.queue(&q).unwrap().unwrap();
    // Entries 1, 3 and 4, and a number that was never stored.
    assert_eq!(store.delete(&q, &[1, 3, 4, 99]).unwrap(), Some(3));
    let after = store.queue(&q).unwrap().unwrap();
    assert_eq!(after.messages, 2);
    assert_eq!(after.bytes, before.bytes - 3 * 2065);
    assert_eq!(seqs(&*store, &q), vec![2, 5]);
    // Deleting again deletes nothing more; new entries keep counting up.
    assert_eq!(store.delete(&q, &[1, 3, 4]).unwrap(), Some(0));
    assert_eq!(store.delete(&q, &[u64::MAX]).unwrap(), Some(0));
    assert_eq!(store.delete(&q, &[]).unwrap(), Some(0));
    assert_eq!(store.delete(&q, &[2, 2]).unwrap(), Some(1));
    let out = store.insert_batch(&[deposit(q, 7)], 2001).unwrap();
    assert_eq!(out, vec![InsertOutcome::Stored { seq: 6 }]);
    assert_eq!(
        store.delete(&QueueId::from_bytes([8; 32]), &[1]).unwrap(),
        None
    );
    let info = store.queue(&q).unwrap().unwrap();
    assert_eq!((info.messages, info.bytes), (2, 2 * 2065));
}

fn deleting_a_queue_deletes_everything_in_it(f: &Fixture) {
    let store = f.open();
    let q = make_queue(&*store, 1);
    let other = make_queue(&*store, 2);
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
    // The other queue is untouched, and the reaper copes with whatever the
    // deleted queue left behind.
    assert_eq!(seqs(&*store, &other), vec![1]);
    let reaped = store.reap(3000, 100).unwrap();
    assert_eq!(reaped.entries, 1);
    assert!(reaped.records >= 1);
    assert_eq!(store.reap(3000, 100).unwrap().records, 0);
    // A queue created again under the old id starts afresh: its dedup
    // records went with it.
    make_queue(&*store, 1);
    assert_eq!(
        store.insert_batch(&[deposit(q, 1)], 3001).unwrap(),
        vec![InsertOutcome::Stored { seq: 1 }]
    );
    assert_eq!(store.queue_count().unwrap(), 2);
}

fn the_reaper_deletes_expired_entries_and_their_dedup_records(f: &Fixture) {
    let store = f.open();
    let q = make_queue(&*store, 1);
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
    assert_eq!(seqs(&*store, &q), vec![3]);
    let info = store.queue(&q).unwrap().unwrap();
    assert_eq!((info.messages, info.bytes), (1, 2065));
    // With its dedup record gone, message 1 would be stored anew.
    assert_eq!(
        store.insert_batch(&[deposit(q, 1)], 2100).unwrap(),
        vec![InsertOutcome::Stored { seq: 4 }]
    );
}

fn everything_survives_reopening(f: &Fixture) {
    let q = {
        let store = f.open();
        let q = make_queue(&*store, 1);
        store.insert_batch(&[deposit(q, 1)], 2000).unwrap();
        q
    };
    let store = f.open();
    assert_eq!(
        store.queue(&q).unwrap().unwrap().owner,
        IdentityKey([1; 32])
    );
    assert_eq!(seqs(&*store, &q), vec![1]);
    assert_eq!(store.queue_count().unwrap(), 1);
    assert_eq!(
        store
            .insert_batch(&[deposit(q, 1), deposit(q, 2)], 2001)
            .unwrap(),
        vec![
            InsertOutcome::Duplicate { seq: 1 },
            InsertOutcome::Stored { seq: 2 }
        ]
    );
}

fn the_queue_cap_holds(f: &Fixture) {
    let store = f.open();
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
    // Refusals changed nothing; a deletion makes room.
    assert_eq!(store.queue_count().unwrap(), 3);
    assert_eq!(store.queue(&QueueId::from_bytes([9; 32])).unwrap(), None);
    assert!(store.delete_queue(&QueueId::from_bytes([1; 32])).unwrap());
    assert_eq!(
        store
            .create_queue(&QueueId::from_bytes([9; 32]), &owner, 1, 3)
            .unwrap(),
        CreateOutcome::Created
    );
}

fn the_reaper_task_runs_on_its_interval(f: &Fixture) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    runtime.block_on(async {
        let store = f.open();
        let clock = OffsetClock::new();
        // Created now: not idle, so the reaper's expiry leaves it alone.
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
        assert_eq!(seqs(&*store, &q), vec![1]);
        // The wall clock moves past the retention time; the next pass, at
        // the next interval, deletes the entry.
        clock.advance(Duration::from_secs(3601));
        tokio::time::sleep(Duration::from_secs(31)).await;
        assert!(seqs(&*store, &q).is_empty());
        shutdown.cancel();
        task.await.unwrap();
    });
}

/// Two writers (for PostgreSQL: two stores with their own pools, as two
/// processes) store the same items at once, in different orders and batch
/// compositions, while a reader pages through each queue with `after`:
/// every item is stored exactly once, each queue is numbered 1, 2, 3, …
/// without a gap, both writers learn the same sequence number for an item,
/// and the reader — which only ever asks for entries above the last one it
/// saw — misses none (entries become visible in sequence order).
fn concurrent_writers_store_each_item_once_numbered_in_commit_order(f: &Fixture) {
    const QUEUES: u8 = 4;
    const ITEMS: u16 = 400;
    let first = f.open();
    let second = f.second(&first);
    let queues: Vec<QueueId> = (1..=QUEUES).map(|i| make_queue(&*first, i)).collect();
    let item = |n: u16| NewItem {
        queue: queues[usize::from(n) % queues.len()],
        item: QueueItem::Deposit {
            id: MessageId::from_bytes([
                (n >> 8) as u8,
                n as u8,
                1,
                2,
                3,
                4,
                5,
                6,
                7,
                8,
                9,
                10,
                11,
                12,
                13,
                14,
            ]),
            body: vec![n as u8; 2048],
        },
    };
    let forward: Vec<NewItem> = (0..ITEMS).map(item).collect();
    // The other writer goes backwards, in batches of other sizes.
    let backward: Vec<NewItem> = (0..ITEMS).rev().map(item).collect();

    let done = Arc::new(AtomicBool::new(false));
    let write = |store: Arc<dyn Store>, items: Vec<NewItem>, sizes: &'static [usize]| {
        std::thread::spawn(move || {
            let mut outcomes: HashMap<MessageId, InsertOutcome> = HashMap::new();
            let mut rest = items.as_slice();
            for size in sizes.iter().cycle() {
                if rest.is_empty() {
                    break;
                }
                let (batch, tail) = rest.split_at((*size).min(rest.len()));
                rest = tail;
                let out = store.insert_batch(batch, 5000).unwrap();
                for (new, outcome) in batch.iter().zip(out) {
                    let QueueItem::Deposit { id, .. } = new.item else {
                        unreachable!()
                    };
                    outcomes.insert(id, outcome);
                }
            }
            outcomes
        })
    };
    let reader = {
        let (store, done, queues) = (first.clone(), done.clone(), queues.clone());
        std::thread::spawn(move || {
            let mut seen: BTreeMap<QueueId, Vec<(u64, MessageId)>> = BTreeMap::new();
            loop {
                // Read the flag first: a pass that starts after the writers
                // finished sees everything.
                let last_pass = done.load(Ordering::SeqCst);
                for q in &queues {
                    let got = seen.entry(*q).or_default();
                    loop {
                        let after = got.last().map_or(0, |(s, _)| *s);
                        let page = store.fetch(q, after, 7).unwrap().unwrap();
                        for e in &page.entries {
                            let QueueItem::Deposit { id, .. } = e.item else {
                                unreachable!()
                            };
                            got.push((e.seq, id));
                        }
                        if !page.more {
                            break;
                        }
                    }
                }
                if last_pass {
                    return seen;
                }
            }
        })
    };
    let a = write(first.clone(), forward, &[1, 13, 64, 5]);
    let b = write(second.clone(), backward, &[7, 2, 31]);
    let (a, b) = (a.join().unwrap(), b.join().unwrap());
    done.store(true, Ordering::SeqCst);
    let seen = reader.join().unwrap();

    // Each item stored by exactly one writer; the other was told it was a
    // duplicate of the same entry.
    let mut stored_at: HashMap<MessageId, u64> = HashMap::new();
    for (id, x) in &a {
        let y = b[id];
        let seq = match (*x, y) {
            (InsertOutcome::Stored { seq }, InsertOutcome::Duplicate { seq: d })
            | (InsertOutcome::Duplicate { seq: d }, InsertOutcome::Stored { seq }) => {
                assert_eq!(seq, d, "both writers name the same entry");
                seq
            }
            other => panic!("{id}: {other:?}"),
        };
        stored_at.insert(*id, seq);
    }
    assert_eq!(stored_at.len(), usize::from(ITEMS));
    let mut total = 0;
    for q in &queues {
        let entries = &seen[q];
        total += entries.len();
        // Numbered 1..=n in the order they became visible, no gap, no
        // repeat: the reader, paging only forwards, missed nothing.
        let numbers: Vec<u64> = entries.iter().map(|(s, _)| *s).collect();
        assert_eq!(numbers, (1..=entries.len() as u64).collect::<Vec<_>>());
        for (seq, id) in entries {
            assert_eq!(stored_at[id], *seq);
        }
        let info = first.queue(q).unwrap().unwrap();
        assert_eq!(info.messages, entries.len() as u64);
        assert_eq!(info.next_seq, entries.len() as u64 + 1);
    }
    assert_eq!(total, usize::from(ITEMS));
}

fn queues_unused_for_the_idle_time_expire_with_their_contents(f: &Fixture) {
    let store = f.open();
    // Created at 1000.
    let (a, b, c) = (
        make_queue(&*store, 1),
        make_queue(&*store, 2),
        make_queue(&*store, 3),
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

fn the_reaper_expires_queues_nobody_uses_and_keeps_those_in_use(f: &Fixture) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    runtime.block_on(async {
        let store = f.open();
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
        // Twenty days on, the owner of one queue fetches (the fetch API
        // records it); twenty more days on, only the other has been idle
        // for thirty.
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
    });
}

/// redb only: a database written before queue expiry existed gets its
/// last-use tables at open, every queue counted as used then.
#[test]
fn a_redb_database_from_before_queue_expiry_counts_every_queue_as_used_at_upgrade() {
    use ::redb::{ReadableDatabase, TableDefinition};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.redb");
    // What an older build wrote: schema 1, a queue created in 1970, no
    // last-use tables.
    {
        let db = ::redb::Database::create(&path).unwrap();
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
    let open = || RedbStore::open(&path, Quota::default()).unwrap();
    let store = open();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    // Not expired for its age: it counts as used at the upgrade.
    assert_eq!(store.expire_idle(now - 60, 10).unwrap(), 0);
    assert_eq!(store.queue_count().unwrap(), 1);
    drop(store);
    // Reopening does not index again.
    let store = open();
    assert_eq!(store.expire_idle(now + 3600, 10).unwrap(), 1);
}
