//! What only the PostgreSQL store has (its shared behaviour is in the
//! conformance suite, `tests/store.rs`): versioned migrations applied once
//! even when processes start together, a newer schema refused, a server
//! that would not make commits durable refused, the safety net against a
//! writer that bypasses the queue lock, clear errors for a bad
//! connection string or an unreachable server, and idle-queue expiry
//! (`touch_queues`, `expire_idle`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::time::{Duration, Instant};

use common::postgres::TestDb;
use murmur_mailbox::postgres::SCHEMA_VERSION;
use murmur_mailbox::{
    CreateOutcome, Error, InsertOutcome, NewItem, PostgresSettings, PostgresStore, Quota, Store,
};
use murmur_wire::mailbox::QueueItem;
use murmur_wire::{IdentityKey, MessageId, QueueId};

fn deposit(q: QueueId, id: u8) -> NewItem {
    NewItem {
        queue: q,
        item: QueueItem::Deposit {
            id: MessageId::from_bytes([id; 16]),
            body: vec![id; 2048],
        },
    }
}

/// The applied migrations, as `(version, description)`.
fn applied(db: &TestDb) -> Vec<(i32, String)> {
    let store = PostgresStore::open(&db.settings(), Quota::default()).unwrap();
    drop(store);
    db.query_pairs("SELECT version, description FROM mailbox_schema ORDER BY version")
}

#[test]
fn migrations_run_once_even_when_processes_start_together() {
    let Some(db) = TestDb::new("migrations_run_once_even_when_processes_start_together") else {
        return;
    };
    // Four stores opening an empty schema at once: one creates the tables,
    // the others wait for its advisory lock and find them.
    let openers: Vec<_> = (0..4)
        .map(|_| {
            let settings = db.settings();
            std::thread::spawn(move || PostgresStore::open(&settings, Quota::default()))
        })
        .collect();
    for opener in openers {
        let store = opener.join().unwrap().unwrap();
        assert_eq!(store.schema_version(), SCHEMA_VERSION);
    }
    let rows = applied(&db);
    assert_eq!(rows.len(), SCHEMA_VERSION as usize, "{rows:?}");
    assert_eq!(rows[0].0, 1);
}

#[test]
fn a_newer_schema_is_refused() {
    let Some(db) = TestDb::new("a_newer_schema_is_refused") else {
        return;
    };
    drop(PostgresStore::open(&db.settings(), Quota::default()).unwrap());
    db.execute("INSERT INTO mailbox_schema (version, description) VALUES (99, 'from the future')");
    let err = PostgresStore::open(&db.settings(), Quota::default()).unwrap_err();
    assert!(
        matches!(err, Error::Schema { found: 99, expected } if expected == u64::from(SCHEMA_VERSION)),
        "{err:?}"
    );
}

#[test]
fn a_server_that_would_not_make_commits_durable_is_refused() {
    let Some(db) = TestDb::new("a_server_that_would_not_make_commits_durable_is_refused") else {
        return;
    };
    let mut settings = db.settings();
    settings.url = db.url_with(&["synchronous_commit=off"]);
    let err = PostgresStore::open(&settings, Quota::default()).unwrap_err();
    assert!(
        matches!(&err, Error::NotDurable { setting: "synchronous_commit", value } if value == "off"),
        "{err:?}"
    );
    // Other durable levels are accepted.
    settings.url = db.url_with(&["synchronous_commit=local"]);
    PostgresStore::open(&settings, Quota::default()).unwrap();
}

#[test]
fn a_writer_that_bypasses_the_queue_lock_cannot_make_a_batch_store_twice() {
    let Some(db) =
        TestDb::new("a_writer_that_bypasses_the_queue_lock_cannot_make_a_batch_store_twice")
    else {
        return;
    };
    let store = PostgresStore::open(&db.settings(), Quota::default()).unwrap();
    let q = QueueId::from_bytes([4; 32]);
    assert_eq!(
        store
            .create_queue(&q, &IdentityKey([4; 32]), 1, 10)
            .unwrap(),
        CreateOutcome::Created
    );
    // An entry written behind the store's back, under the number the
    // queue's counter hands out next.
    db.execute(&format!(
        "INSERT INTO mailbox_entries (queue, seq, item) VALUES ('\\x{}', 1, '\\x03{}')",
        "04".repeat(32),
        "07".repeat(16)
    ));
    let err = store.insert_batch(&[deposit(q, 1)], 10).unwrap_err();
    assert!(matches!(err, Error::Conflict { .. }), "{err:?}");
    // Nothing of the batch was kept: no dedup record, counters unchanged.
    let info = store.queue(&q).unwrap().unwrap();
    assert_eq!((info.messages, info.next_seq), (0, 1));
    assert_eq!(
        db.query_pairs("SELECT count(*)::int4, '' FROM mailbox_dedup"),
        vec![(0, String::new())]
    );
    // Once the stray row is gone, the same deposit goes in.
    db.execute("DELETE FROM mailbox_entries");
    assert_eq!(
        store.insert_batch(&[deposit(q, 1)], 11).unwrap(),
        vec![InsertOutcome::Stored { seq: 1 }]
    );
}

#[test]
fn bad_connection_strings_and_unreachable_servers_fail_clearly() {
    let err = PostgresStore::open(
        &PostgresSettings::new("postgresql://u:s3cret@localhost:notaport/db"),
        Quota::default(),
    )
    .unwrap_err();
    assert!(matches!(err, Error::PostgresUrl { .. }), "{err:?}");
    assert!(!format!("{err} {err:?}").contains("s3cret"));

    // Nothing listens on this port.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut settings = PostgresSettings::new(format!("postgresql://murmur@127.0.0.1:{port}/x"));
    settings.timeout = Duration::from_secs(5);
    let started = Instant::now();
    let err = PostgresStore::open(&settings, Quota::default()).unwrap_err();
    assert!(matches!(err, Error::PostgresPool { .. }), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
}

/// Idle-queue expiry (the `Store::touch_queues` and `Store::expire_idle`
/// of the queue-expiry work, here the store's own methods): the same
/// behaviour the redb store's test checks.
#[test]
fn queues_unused_for_the_idle_time_expire_with_their_contents() {
    use murmur_mailbox::postgres::TOUCH_GRANULARITY_SECS;
    let Some(db) = TestDb::new("queues_unused_for_the_idle_time_expire_with_their_contents") else {
        return;
    };
    let store = PostgresStore::open(&db.settings(), Quota::default()).unwrap();
    let make = |seed: u8| {
        let q = QueueId::from_bytes([seed; 32]);
        assert_eq!(
            store
                .create_queue(&q, &IdentityKey([seed; 32]), 1000, 10)
                .unwrap(),
            CreateOutcome::Created
        );
        q
    };
    // Created at 1000.
    let (a, b, c) = (make(1), make(2), make(3));
    store.insert_batch(&[deposit(b, 1)], 1000).unwrap();
    // A's owner uses it later; a use within the granularity is not written.
    let later = 1000 + TOUCH_GRANULARITY_SECS;
    assert_eq!(store.touch_queues(&[(a, 1001)]).unwrap(), 0);
    let unknown = QueueId::from_bytes([9; 32]);
    assert_eq!(
        store
            .touch_queues(&[(a, later - 5), (a, later), (unknown, later)])
            .unwrap(),
        1
    );
    assert_eq!(store.touch_queues(&[]).unwrap(), 0);
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
    // Batches: at most `max_queues` per call, least recently used first.
    assert_eq!(store.expire_idle(u64::MAX, 1).unwrap(), 1);
    assert!(store.queue(&a).unwrap().is_none());
    assert_eq!(store.expire_idle(u64::MAX, 1).unwrap(), 1);
    assert_eq!(store.expire_idle(u64::MAX, 1).unwrap(), 0);
    assert_eq!(store.queue_count().unwrap(), 0);
}
