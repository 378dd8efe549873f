//! Acknowledged means durable: a child process deposits continuously and
//! prints each acknowledgement as it leaves; it is killed with SIGKILL in the
//! middle of writing; every acknowledged deposit is in the database after —
//! on each backend, redb and PostgreSQL.
//!
//! This runs the real write path (final-hop handler, group-commit writer,
//! store) in a child process started from this test binary, under load.
//! `tests/binary.rs` makes the same check through the `murmur-mailbox`
//! binary's packet port (on PostgreSQL with two binaries sharing the
//! database).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use common::Harness;
use common::postgres::TestDb;
use murmur_mailbox::{
    CreateOutcome, Mailbox, Metrics, PacketSink, PostgresSettings, PostgresStore, Quota, RedbStore,
    Store, WriterConfig,
};
use murmur_net::clock::SystemClock;
use murmur_wire::mailbox::QueueItem;
use murmur_wire::{Ack, IdentityKey, MessageId, NodeId, Packet, QueueId};

/// Set in the child: `redb:DIR` or `postgres:URL`.
const CHILD_ENV: &str = "MURMUR_MAILBOX_DURABILITY_CHILD";
const QUEUE: QueueId = QueueId::from_bytes([3; 32]);
/// Acknowledgements to see before the kill.
const ACKS_BEFORE_KILL: usize = 300;

struct ChannelSink(std::sync::Mutex<mpsc::Sender<Packet>>);

impl PacketSink for ChannelSink {
    fn send(&self, _first_hop: NodeId, packet: Packet) -> bool {
        self.0.lock().unwrap().send(packet).is_ok()
    }
}

/// Where the store is, as the child is told.
#[derive(Clone, Debug)]
enum Backend {
    Redb(std::path::PathBuf),
    Postgres(String),
}

impl Backend {
    fn from_env(spec: &str) -> Self {
        match spec.split_once(':') {
            Some(("redb", dir)) => Self::Redb(dir.into()),
            Some(("postgres", url)) => Self::Postgres(url.to_owned()),
            _ => panic!("bad {CHILD_ENV}: {spec}"),
        }
    }

    fn to_env(&self) -> String {
        match self {
            Self::Redb(dir) => format!("redb:{}", dir.display()),
            Self::Postgres(url) => format!("postgres:{url}"),
        }
    }

    fn open(&self, quota: Quota) -> Arc<dyn Store> {
        match self {
            Self::Redb(dir) => Arc::new(RedbStore::open(&dir.join("m.redb"), quota).unwrap()),
            Self::Postgres(url) => {
                Arc::new(PostgresStore::open(&PostgresSettings::new(url.clone()), quota).unwrap())
            }
        }
    }
}

/// The child: deposits until killed, printing `ACKED <id>` per opened ack.
fn child(backend: &Backend) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let _guard = runtime.enter();
    let store = backend.open(Quota {
        max_messages: 1_000_000,
        max_bytes: u64::MAX,
    });
    let (tx, rx) = mpsc::channel();
    let (mailbox, _writer) = Mailbox::start(
        store,
        Arc::new(ChannelSink(std::sync::Mutex::new(tx))),
        Arc::new(SystemClock),
        WriterConfig::default(),
        Arc::new(Metrics::new()),
    )
    .unwrap();
    let mut h = Harness::new(99);
    let mut pending = HashMap::new();
    let mut out = std::io::stdout().lock();
    for n in 0u64.. {
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&n.to_be_bytes());
        let id = MessageId::from_bytes(id);
        let (d, del, recovery) = h.deposit(QUEUE, id, n as u8);
        pending.insert(recovery.id(), recovery);
        mailbox.handle_final(d, del);
        // Keep up to 32 deposits in flight; print acknowledgements as they
        // come back.
        loop {
            let wait = if pending.len() >= 32 {
                Duration::from_secs(10)
            } else {
                Duration::ZERO
            };
            let Ok(packet) = rx.recv_timeout(wait) else {
                break;
            };
            let (surb_id, sealed) = h.receive_ack(&packet);
            let recovery = pending.remove(&surb_id).unwrap();
            let ack = Ack::parse(&recovery.open(&sealed).unwrap()).unwrap();
            writeln!(out, "ACKED {}", ack.id).unwrap();
            out.flush().unwrap();
        }
    }
}

#[test]
fn acknowledged_deposits_survive_sigkill_redb() {
    if let Ok(spec) = std::env::var(CHILD_ENV) {
        child(&Backend::from_env(&spec));
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    kill_mid_write(
        "acknowledged_deposits_survive_sigkill_redb",
        &Backend::Redb(dir.path().to_owned()),
    );
}

#[test]
fn acknowledged_deposits_survive_sigkill_postgres() {
    if let Ok(spec) = std::env::var(CHILD_ENV) {
        child(&Backend::from_env(&spec));
        return;
    }
    let Some(db) = TestDb::new("acknowledged_deposits_survive_sigkill_postgres") else {
        return;
    };
    kill_mid_write(
        "acknowledged_deposits_survive_sigkill_postgres",
        &Backend::Postgres(db.url()),
    );
}

/// Runs `test` (this very test) as the child on `backend`, kills it once
/// it has acknowledged enough, and checks the store.
fn kill_mid_write(test: &str, backend: &Backend) {
    {
        let store = backend.open(Quota::default());
        assert_eq!(
            store
                .create_queue(&QUEUE, &IdentityKey([3; 32]), 1, 10)
                .unwrap(),
            CreateOutcome::Created
        );
    }
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, backend.to_env())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut acked = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut lines = BufReader::new(stdout).lines();
    while acked.len() < ACKS_BEFORE_KILL {
        assert!(Instant::now() < deadline, "child too slow");
        let line = lines
            .next()
            .expect("child ended early")
            .expect("child output");
        if let Some(id) = line.strip_prefix("ACKED ") {
            acked.insert(id.parse::<MessageId>().unwrap());
        }
    }
    // The child is still depositing: kill it mid-write, without warning.
    child.kill().unwrap();
    child.wait().unwrap();
    // Lines it printed before dying are acknowledgements that left too.
    for line in lines.map_while(Result::ok) {
        if let Some(id) = line.strip_prefix("ACKED ") {
            acked.insert(id.parse::<MessageId>().unwrap());
        }
    }

    let store = backend.open(Quota::default());
    let mut stored = HashSet::new();
    let mut after = 0;
    loop {
        let page = store.fetch(&QUEUE, after, 256).unwrap().unwrap();
        for e in &page.entries {
            after = e.seq;
            if let QueueItem::Deposit { id, .. } = e.item {
                stored.insert(id);
            }
        }
        if !page.more {
            break;
        }
    }
    let lost: Vec<_> = acked.difference(&stored).collect();
    assert!(lost.is_empty(), "{} acknowledged deposits lost", lost.len());
    assert!(stored.len() >= acked.len());
    let info = store.queue(&QUEUE).unwrap().unwrap();
    assert_eq!(info.messages, stored.len() as u64, "counters match entries");
}
