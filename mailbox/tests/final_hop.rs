//! The final-hop handler fed with real Sphinx deliveries: storing, dedup,
//! quotas, acknowledgements only once durable, cover and replies.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{CaptureSink, Harness};
use murmur_mailbox::store::ReapOutcome;
use murmur_mailbox::{
    CreateOutcome, InsertOutcome, Mailbox, Metrics, NewItem, QueueInfo, Quota, RedbStore, Store,
    WriterConfig,
};
use murmur_net::clock::{Clock, SystemClock};
use murmur_wire::mailbox::{FetchResponse, QueueItem};
use murmur_wire::{Delivery, FinalPayload, IdentityKey, MessageId, QueueId, SurbId};
use tempfile::TempDir;

struct Setup {
    _dir: TempDir,
    store: Arc<RedbStore>,
    mailbox: Mailbox,
    sink: Arc<CaptureSink>,
    metrics: Arc<Metrics>,
}

fn now() -> u64 {
    SystemClock.now_secs()
}

fn setup_with(quota: Quota) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(RedbStore::open(&dir.path().join("m.redb"), quota).unwrap());
    let sink = Arc::new(CaptureSink::default());
    let metrics = Arc::new(Metrics::new());
    let (mailbox, _writer) = Mailbox::start(
        store.clone(),
        sink.clone(),
        Arc::new(SystemClock),
        WriterConfig::default(),
        metrics.clone(),
    )
    .unwrap();
    Setup {
        _dir: dir,
        store,
        mailbox,
        sink,
        metrics,
    }
}

fn queue(store: &dyn Store, seed: u8) -> QueueId {
    let q = QueueId::from_bytes([seed; 32]);
    let outcome = store
        .create_queue(&q, &IdentityKey([seed; 32]), now(), 1000)
        .unwrap();
    assert_eq!(outcome, CreateOutcome::Created);
    q
}

fn fetch_all(store: &dyn Store, q: QueueId) -> FetchResponse {
    store.fetch(&q, 0, 256).unwrap().unwrap()
}

/// Waits until the writer has counted `n` items of any kind.
async fn settle(metrics: &Metrics, check: impl Fn(&Metrics) -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !check(metrics) {
        assert!(std::time::Instant::now() < deadline, "timed out");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test]
async fn a_deposit_is_stored_then_acknowledged_through_its_surb() {
    let s = setup_with(Quota::default());
    let mut h = Harness::new(1);
    let q = queue(&*s.store, 1);
    let id = MessageId::from_bytes([9; 16]);
    let (dest, delivery, recovery) = h.deposit(q, id, 0x42);
    s.mailbox.handle_final(dest, delivery);
    s.sink.wait_for(1).await;
    let (first_hop, packet) = s.sink.take().pop().unwrap();
    assert_eq!(h.open_ack(first_hop, &packet, &recovery), id);
    // The acknowledgement came after the write: the entry is there.
    let page = fetch_all(&*s.store, q);
    assert_eq!(page.entries.len(), 1);
    assert_eq!(page.entries[0].seq, 1);
    match &page.entries[0].item {
        QueueItem::Deposit { id: got, body } => {
            assert_eq!(*got, id);
            assert_eq!(body.len(), murmur_wire::DEPOSIT_BODY_SIZE);
            assert!(body.iter().all(|b| *b == 0x42));
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(s.metrics.deposits("stored"), 1);
    assert_eq!(s.metrics.acks_sent(), 1);
}

#[tokio::test]
async fn a_retransmitted_deposit_is_stored_once_and_acknowledged_each_time() {
    let s = setup_with(Quota::default());
    let mut h = Harness::new(2);
    let q = queue(&*s.store, 2);
    let id = MessageId::from_bytes([5; 16]);
    let mut recoveries = Vec::new();
    for attempt in 0..3 {
        // Each retransmission is a new packet with a new SURB.
        let (dest, delivery, recovery) = h.deposit(q, id, attempt);
        recoveries.push(recovery);
        s.mailbox.handle_final(dest, delivery);
        s.sink.wait_for(attempt as usize + 1).await;
    }
    let acks = s.sink.take();
    for ((hop, packet), recovery) in acks.iter().zip(&recoveries) {
        assert_eq!(h.open_ack(*hop, packet, recovery), id);
    }
    let page = fetch_all(&*s.store, q);
    assert_eq!(page.entries.len(), 1, "stored once");
    assert_eq!(s.metrics.deposits("stored"), 1);
    assert_eq!(s.metrics.deposits("duplicate"), 2);
    // Still recognised after the owner deleted it.
    assert_eq!(s.store.delete(&q, &[1]).unwrap(), Some(1));
    let (dest, delivery, recovery) = h.deposit(q, id, 9);
    s.mailbox.handle_final(dest, delivery);
    s.sink.wait_for(1).await;
    let (hop, packet) = s.sink.take().pop().unwrap();
    assert_eq!(h.open_ack(hop, &packet, &recovery), id);
    assert!(fetch_all(&*s.store, q).entries.is_empty());
}

#[tokio::test]
async fn a_full_queue_refuses_without_acknowledging_or_evicting() {
    let s = setup_with(Quota {
        max_messages: 2,
        max_bytes: 1 << 20,
    });
    let mut h = Harness::new(3);
    let q = queue(&*s.store, 3);
    for i in 0..2u8 {
        let (d, del, _) = h.deposit(q, MessageId::from_bytes([i; 16]), i);
        s.mailbox.handle_final(d, del);
    }
    s.sink.wait_for(2).await;
    let (d, del, _) = h.deposit(q, MessageId::from_bytes([99; 16]), 0);
    s.mailbox.handle_final(d, del);
    settle(&s.metrics, |m| m.deposits("refused_full") == 1).await;
    // The refusal is final for this packet: no acknowledgement follows it.
    let ids: Vec<_> = fetch_all(&*s.store, q)
        .entries
        .into_iter()
        .map(|e| match e.item {
            QueueItem::Deposit { id, .. } => id,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        ids,
        vec![
            MessageId::from_bytes([0; 16]),
            MessageId::from_bytes([1; 16])
        ]
    );
    assert_eq!(s.sink.len(), 2);
    assert_eq!(s.metrics.acks_sent(), 2);
}

#[tokio::test]
async fn the_byte_quota_counts_too() {
    // One deposit's entry is about 2.1 KB: two do not fit in 4 KiB.
    let s = setup_with(Quota {
        max_messages: 100,
        max_bytes: 4096,
    });
    let mut h = Harness::new(4);
    let q = queue(&*s.store, 4);
    for i in 0..2u8 {
        let (d, del, _) = h.deposit(q, MessageId::from_bytes([i; 16]), i);
        s.mailbox.handle_final(d, del);
    }
    settle(&s.metrics, |m| {
        m.deposits("stored") + m.deposits("refused_full") == 2
    })
    .await;
    assert_eq!(s.metrics.deposits("stored"), 1);
    assert_eq!(s.metrics.deposits("refused_full"), 1);
    let info: QueueInfo = s.store.queue(&q).unwrap().unwrap();
    assert_eq!(info.messages, 1);
    assert!(info.bytes > 2048 && info.bytes <= 4096, "{}", info.bytes);
}

#[tokio::test]
async fn a_deposit_to_an_unknown_queue_is_dropped_and_counted() {
    let s = setup_with(Quota::default());
    let mut h = Harness::new(5);
    let (d, del, _) = h.deposit(
        QueueId::from_bytes([77; 32]),
        MessageId::from_bytes([1; 16]),
        0,
    );
    s.mailbox.handle_final(d, del);
    settle(&s.metrics, |m| m.deposits("unknown_queue") == 1).await;
    assert_eq!(s.sink.len(), 0);
    assert_eq!(s.store.queue_count().unwrap(), 0);
}

#[tokio::test]
async fn cover_loops_and_replies() {
    let s = setup_with(Quota::default());
    let mut h = Harness::new(6);
    let q = queue(&*s.store, 6);

    let (d, del) = h.forward(q, &FinalPayload::DropCover.encode());
    s.mailbox.handle_final(d, del);
    let loop_id = MessageId::from_bytes([3; 16]);
    let (d, del) = h.forward(q, &FinalPayload::LoopCover { id: loop_id }.encode());
    s.mailbox.handle_final(d, del);
    let surb_id = SurbId::from_bytes([4; 16]);
    let (d, del) = h.reply(q, surb_id);
    let Delivery::Reply { sealed, .. } = &del else {
        panic!("expected a reply");
    };
    let sealed = sealed.clone();
    s.mailbox.handle_final(d, del);
    // The same reply again (a duplicate SURB use) is stored once.
    let (d, del) = h.reply(q, surb_id);
    s.mailbox.handle_final(d, del);
    // Garbage plaintext is dropped and counted.
    let (d, del) = h.forward(q, b"\x01\x63 not a payload");
    s.mailbox.handle_final(d, del);

    settle(&s.metrics, |m| {
        let text = render(m);
        text.contains("murmur_mailbox_replies_total{outcome=\"duplicate\"} 1")
            && text.contains("murmur_mailbox_loops_total{outcome=\"stored\"} 1")
    })
    .await;
    let text = render(&s.metrics);
    assert!(text.contains("murmur_mailbox_drop_cover_total 1"), "{text}");
    assert!(text.contains("murmur_mailbox_malformed_total 1"), "{text}");
    let page = fetch_all(&*s.store, q);
    assert_eq!(page.entries.len(), 2);
    assert_eq!(page.entries[0].item, QueueItem::Loop { id: loop_id });
    assert_eq!(
        page.entries[1].item,
        QueueItem::Reply {
            surb_id,
            sealed: sealed.clone()
        }
    );
    // None of these is acknowledged.
    assert_eq!(s.sink.len(), 0);
}

fn render(m: &Metrics) -> String {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, m.registry()).unwrap();
    out
}

/// A store whose batch commits wait for the test's permission.
struct GatedStore {
    inner: RedbStore,
    entered: Mutex<std_mpsc::Sender<usize>>,
    release: Mutex<std_mpsc::Receiver<()>>,
}

impl Store for GatedStore {
    fn create_queue(
        &self,
        queue: &QueueId,
        owner: &IdentityKey,
        now: u64,
        max_queues: u64,
    ) -> murmur_mailbox::Result<CreateOutcome> {
        self.inner.create_queue(queue, owner, now, max_queues)
    }
    fn queue(&self, queue: &QueueId) -> murmur_mailbox::Result<Option<QueueInfo>> {
        self.inner.queue(queue)
    }
    fn insert_batch(
        &self,
        batch: &[NewItem],
        now: u64,
    ) -> murmur_mailbox::Result<Vec<InsertOutcome>> {
        self.entered.lock().unwrap().send(batch.len()).unwrap();
        self.release
            .lock()
            .unwrap()
            .recv_timeout(Duration::from_secs(10))
            .unwrap();
        self.inner.insert_batch(batch, now)
    }
    fn fetch(
        &self,
        queue: &QueueId,
        after: u64,
        limit: u32,
    ) -> murmur_mailbox::Result<Option<FetchResponse>> {
        self.inner.fetch(queue, after, limit)
    }
    fn delete(&self, queue: &QueueId, seqs: &[u64]) -> murmur_mailbox::Result<Option<u64>> {
        self.inner.delete(queue, seqs)
    }
    fn delete_queue(&self, queue: &QueueId) -> murmur_mailbox::Result<bool> {
        self.inner.delete_queue(queue)
    }
    fn reap(&self, older_than: u64, max_records: usize) -> murmur_mailbox::Result<ReapOutcome> {
        self.inner.reap(older_than, max_records)
    }
    fn queue_count(&self) -> murmur_mailbox::Result<u64> {
        self.inner.queue_count()
    }
    fn touch_queues(&self, used: &[(QueueId, u64)]) -> murmur_mailbox::Result<u64> {
        self.inner.touch_queues(used)
    }
    fn expire_idle(&self, unused_since: u64, max_queues: usize) -> murmur_mailbox::Result<u64> {
        self.inner.expire_idle(unused_since, max_queues)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_acknowledgement_leaves_before_the_commit_returns() {
    let dir = tempfile::tempdir().unwrap();
    let (entered_tx, entered) = std_mpsc::channel();
    let (release, release_rx) = std_mpsc::channel();
    let store = Arc::new(GatedStore {
        inner: RedbStore::open(&dir.path().join("m.redb"), Quota::default()).unwrap(),
        entered: Mutex::new(entered_tx),
        release: Mutex::new(release_rx),
    });
    let q = queue(&*store, 8);
    let sink = Arc::new(CaptureSink::default());
    let metrics = Arc::new(Metrics::new());
    let (mailbox, writer) = Mailbox::start(
        store.clone(),
        sink.clone(),
        Arc::new(SystemClock),
        WriterConfig {
            queue_capacity: 1,
            max_batch: 16,
        },
        metrics.clone(),
    )
    .unwrap();
    let mut h = Harness::new(8);
    let first = MessageId::from_bytes([1; 16]);
    let (d, del, recovery) = h.deposit(q, first, 1);
    mailbox.handle_final(d, del);
    // The writer is inside the commit of a batch holding the deposit...
    let batch = tokio::task::spawn_blocking(move || {
        let n = entered.recv_timeout(Duration::from_secs(10)).unwrap();
        (n, entered)
    })
    .await
    .unwrap();
    assert_eq!(batch.0, 1);
    let entered = batch.1;
    // ...give the runtime every chance to (wrongly) send an acknowledgement.
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(sink.len(), 0, "acknowledged before the write was durable");
    assert!(store.fetch(&q, 0, 10).unwrap().unwrap().entries.is_empty());

    // While the writer is stuck, one more deposit fills its queue (capacity
    // 1) and the next is dropped as overload, counted.
    let (d, del, _) = h.deposit(q, MessageId::from_bytes([2; 16]), 2);
    mailbox.handle_final(d, del);
    let (d, del, _) = h.deposit(q, MessageId::from_bytes([3; 16]), 3);
    mailbox.handle_final(d, del);
    assert_eq!(metrics.deposits("overloaded"), 1);

    release.send(()).unwrap();
    sink.wait_for(1).await;
    let (hop, packet) = sink.take().pop().unwrap();
    assert_eq!(h.open_ack(hop, &packet, &recovery), first);
    assert_eq!(store.fetch(&q, 0, 10).unwrap().unwrap().entries.len(), 1);

    // The queued deposit is committed in the next batch.
    let n = entered.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(n, 1);
    release.send(()).unwrap();
    sink.wait_for(1).await;
    drop(mailbox);
    tokio::task::spawn_blocking(move || writer.join())
        .await
        .unwrap();
    assert_eq!(store.fetch(&q, 0, 10).unwrap().unwrap().entries.len(), 2);
}
