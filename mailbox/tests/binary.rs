//! The `murmur-mailbox` binary against an in-process directory authority:
//! `init` writes a configuration that `run` accepts; the provider registers,
//! and stops cleanly on SIGTERM; an acknowledged deposit survives SIGKILL
//! and a restart with the same configuration, and its retransmissions are
//! stored once; bad configurations are refused with the key named. On the
//! PostgreSQL backend: two binaries share one database, a message deposited
//! through both is stored once, and SIGKILL of one in the middle of a
//! stream of deposits loses none that was acknowledged.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;
#[path = "../../net/tests/support/init_identity.rs"]
mod init_identity;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use common::net::{Owner, Sender, authority, frame, listed, send_packets, wait_healthy};
use common::owner_key;
use common::postgres::TestDb;
use murmur_directory::AuthorityHandle;
use murmur_mailbox::Config;
use murmur_net::clock::{Clock, SystemClock};
use murmur_wire::mailbox::QueueEntry;
use murmur_wire::mailbox::QueueItem;
use murmur_wire::{Ack, MessageId, SurbId, SurbRecovery};
use tokio_util::sync::CancellationToken;

/// `init --force` keeps the identity key; `--new-identity` replaces it.
#[test]
fn init_force_keeps_the_key_and_new_identity_replaces_it() {
    init_identity::init_force_keeps_the_key_and_new_identity_replaces_it(
        BIN,
        "identity.key",
        "mailbox.toml",
    );
}

const BIN: &str = env!("CARGO_BIN_EXE_murmur-mailbox");
const L: u64 = 3600;

/// `murmur-mailbox init` into `dir`, registering with `auth`, listening on
/// `listen` (packets) and `http`; then trimmed for a test (one worker, a
/// small replay filter).
fn init(dir: &Path, auth: &AuthorityHandle, listen: SocketAddr, http: SocketAddr) -> PathBuf {
    let out = Command::new(BIN)
        .args(["init", "--dir"])
        .arg(dir)
        .args(["--listen", &listen.to_string(), "--http", &http.to_string()])
        .args(["--operator", "127.0.0.1:0"])
        .arg("--authority")
        .arg(format!("{}={}", auth.addr, auth.key.to_base58()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("node id"));
    let config = dir.join("mailbox.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    let trimmed = text.replace("\nworkers = 0\n", "\nworkers = 1\n").replace(
        "expected_packet_rate = 1000.0",
        "expected_packet_rate = 10.0",
    );
    assert_ne!(trimmed, text);
    std::fs::write(&config, trimmed).unwrap();
    config
}

struct Running {
    child: Child,
    packet_addr: SocketAddr,
    http_addr: SocketAddr,
    operator_addr: SocketAddr,
}

/// `murmur-mailbox run`; returns once it printed its bound addresses.
fn run(config: &Path) -> Running {
    let mut child = Command::new(BIN)
        .args(["run", "--config"])
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut addr = |prefix: &str| -> SocketAddr {
        loop {
            let line = lines
                .next()
                .expect("the provider exited before printing its addresses")
                .unwrap();
            if let Some(a) = line.strip_prefix(prefix) {
                break a.parse().unwrap();
            }
        }
    };
    let packet_addr = addr("packet_addr ");
    let http_addr = addr("http_addr ");
    let operator_addr = addr("operator_addr ");
    Running {
        child,
        packet_addr,
        http_addr,
        operator_addr,
    }
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
}

/// A port nothing listens on right now.
fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn open_ack(item: &QueueItem, recovery: &SurbRecovery) -> MessageId {
    let QueueItem::Reply { surb_id, sealed } = item else {
        panic!("expected a SURB reply, got {item:?}");
    };
    assert_eq!(*surb_id, recovery.id());
    Ack::parse(&recovery.open(sealed).unwrap()).unwrap().id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledged_deposit_survives_sigkill_and_is_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let stop = CancellationToken::new();
    let auth = authority(&dir.path().join("auth"), L, clock.clone(), &stop).await;
    // Fixed ports, so that the restarted provider is where the consensus
    // says it is (as an operator's would be).
    let node = dir.path().join("node");
    let config = init(&node, &auth, free_port(), free_port());
    let me = murmur_mailbox::load_identity(&node.join("identity.key")).unwrap();
    let node_id = murmur_wire::IdentityKey::from(&me.verifying_key()).node_id();

    let first = run(&config);
    wait_healthy(first.operator_addr).await;
    let (hop, packet_addr, http_addr) = listed(&auth, &*clock, node_id).await;
    assert_eq!(
        (packet_addr, http_addr),
        (first.packet_addr, first.http_addr)
    );

    let api = Owner::new(first.http_addr, &me, clock.clone());
    let (recipient, sender) = (owner_key(1), owner_key(2));
    let inbox = api.create(&recipient).await;
    let ack_queue = api.create(&sender).await;
    let mut client = Sender::new(3);
    let id = MessageId::from_bytes([0x77; 16]);

    // A deposit, then a retransmission of the same message (a new packet
    // with a new SURB, as a client sends when no acknowledgement came):
    // each is acknowledged once the message is durable.
    let mut recoveries = Vec::new();
    for n in 1..=2 {
        let (packet, recovery) = client.deposit(hop, inbox, id, 0xA5, hop, ack_queue);
        // The only node of this one-provider network is the provider: the
        // test speaks as it.
        send_packets(first.packet_addr, &me, &me, &[&packet]).await;
        let acks = api.fetch_at_least(&sender, ack_queue, n).await;
        assert_eq!(open_ack(&acks.entries[n - 1].item, &recovery), id);
        recoveries.push(recovery);
    }

    // Acknowledged, so durable: SIGKILL gives it no chance to flush.
    let mut child = first.child;
    signal(&child, "-KILL");
    child.wait().unwrap();

    let second = run(&config);
    assert_eq!(second.packet_addr, first.packet_addr);
    wait_healthy(second.operator_addr).await;
    let api = Owner::new(second.http_addr, &me, clock.clone());
    let got = api.fetch(&recipient, inbox).await;
    assert_eq!(got.entries.len(), 1, "{:?}", got.entries);
    match &got.entries[0].item {
        QueueItem::Deposit { id: got_id, body } => {
            assert_eq!(*got_id, id);
            assert!(body.iter().all(|b| *b == 0xA5));
        }
        other => panic!("expected a deposit, got {other:?}"),
    }
    // The two acknowledgements are still there for the sender.
    assert_eq!(api.fetch(&sender, ack_queue).await.entries.len(), 2);

    // One more retransmission after the restart: recognised, acknowledged
    // again, not stored again.
    let (packet, recovery) = client.deposit(hop, inbox, id, 0xA5, hop, ack_queue);
    send_packets(second.packet_addr, &me, &me, &[&packet]).await;
    let acks = api.fetch_at_least(&sender, ack_queue, 3).await;
    assert_eq!(open_ack(&acks.entries[2].item, &recovery), id);
    assert_eq!(api.fetch(&recipient, inbox).await.entries.len(), 1);

    // SIGTERM: a clean stop.
    let mut child = second.child;
    signal(&child, "-TERM");
    let status = child.wait().unwrap();
    assert!(status.success(), "exit status {status}");
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_then_run_on_port_zero_then_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let stop = CancellationToken::new();
    let auth = authority(&dir.path().join("auth"), L, clock, &stop).await;
    let node = dir.path().join("node");
    let zero: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let config = init(&node, &auth, zero, zero);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(node.join("identity.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // What init wrote loads, with the authority pinned.
    let loaded = Config::load(&config).unwrap();
    assert_eq!(loaded.directory.authorities.len(), 1);
    assert_eq!(loaded.identity_path(), node.join("identity.key"));

    // init refuses to overwrite.
    let again = Command::new(BIN)
        .args(["init", "--dir"])
        .arg(&node)
        .output()
        .unwrap();
    assert!(!again.status.success());

    let running = run(&config);
    assert_ne!(running.packet_addr.port(), 0);
    let body = wait_healthy(running.operator_addr).await;
    assert!(body.contains("listed as a mailbox"), "{body}");
    assert!(node.join("mailbox.redb").exists());
    assert!(node.join("keys").is_dir());

    let mut child = running.child;
    signal(&child, "-TERM");
    let status = child.wait().unwrap();
    assert!(status.success(), "exit status {status}");
    // The replay cache was persisted at the clean stop.
    assert!(node.join("replay").is_dir());
    stop.cancel();
}

#[test]
fn bad_configurations_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.toml");
    for (text, needle) in [
        ("[storage]\nretention_days = 3\n", "retention_days"),
        ("[engine]\nworkerz = 1\n", "workerz"),
        // Valid, but with nobody to register with.
        ("", "no directory authorities"),
    ] {
        std::fs::write(&config, text).unwrap();
        let key = dir.path().join("identity.key");
        std::fs::write(&key, bs58::encode([5u8; 32]).into_string()).unwrap();
        // Key files must be the owner's alone (murmur_net::keyfile).
        std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        let out = Command::new(BIN)
            .args(["run", "--config"])
            .arg(&config)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{text}: {err}");
    }
}

/// Switches a configuration `init` wrote to the PostgreSQL backend at `url`.
fn use_postgres(config: &Path, url: &str) {
    let text = std::fs::read_to_string(config).unwrap();
    let edited = text
        .replace("\nbackend = \"redb\"\n", "\nbackend = \"postgres\"\n")
        .replace(
            "\n# postgres_url = \"postgresql://murmur@127.0.0.1:5432/murmur\"\n",
            &format!("\npostgres_url = \"{url}\"\n"),
        );
    assert!(edited.contains("\nbackend = \"postgres\"\n"));
    assert!(edited.contains(&format!("\npostgres_url = \"{url}\"\n")));
    std::fs::write(config, edited).unwrap();
}

/// The message ids that the acknowledgements among `entries` carry (each
/// opened with the recovery material of its SURB: genuine), in order.
fn acked_ids(
    entries: &[QueueEntry],
    recoveries: &std::sync::Mutex<std::collections::HashMap<SurbId, SurbRecovery>>,
) -> Vec<MessageId> {
    let recoveries = recoveries.lock().unwrap();
    entries
        .iter()
        .map(|e| {
            let QueueItem::Reply { surb_id, .. } = &e.item else {
                panic!("expected an acknowledgement, got {:?}", e.item);
            };
            open_ack(&e.item, &recoveries[surb_id])
        })
        .collect()
}

fn deposit_ids(entries: &[QueueEntry]) -> Vec<MessageId> {
    entries
        .iter()
        .map(|e| match &e.item {
            QueueItem::Deposit { id, .. } => *id,
            other => panic!("expected a deposit, got {other:?}"),
        })
        .collect()
}

fn message(phase: u8, n: u32) -> MessageId {
    let mut id = [phase; 16];
    id[12..].copy_from_slice(&n.to_be_bytes());
    MessageId::from_bytes(id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_binaries_share_a_postgres_database_and_sigkill_loses_no_acknowledged_deposit() {
    use std::collections::{HashMap, HashSet};
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, Ordering};

    let Some(db) = TestDb::new(
        "two_binaries_share_a_postgres_database_and_sigkill_loses_no_acknowledged_deposit",
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let stop = CancellationToken::new();
    let auth = authority(&dir.path().join("auth"), L, clock.clone(), &stop).await;
    // Two providers (front-ends), each with its own identity and keys, on
    // one database.
    let mut configs = Vec::new();
    let mut ids = Vec::new();
    let mut keys = Vec::new();
    for name in ["a", "b"] {
        let node = dir.path().join(name);
        let config = init(&node, &auth, free_port(), free_port());
        use_postgres(&config, &db.url());
        let key = murmur_mailbox::load_identity(&node.join("identity.key")).unwrap();
        ids.push(murmur_wire::IdentityKey::from(&key.verifying_key()).node_id());
        keys.push(key);
        configs.push(config);
    }
    let (key_a, key_b) = (keys[0].clone(), keys[1].clone());
    let a = run(&configs[0]);
    let b = run(&configs[1]);
    wait_healthy(a.operator_addr).await;
    wait_healthy(b.operator_addr).await;
    let (hop_a, _, _) = listed(&auth, &*clock, ids[0]).await;
    let (hop_b, _, _) = listed(&auth, &*clock, ids[1]).await;

    // A queue created through one front-end is there for the other.
    let via_a = Owner::new(a.http_addr, &key_a, clock.clone());
    let via_b = Owner::new(b.http_addr, &key_b, clock.clone());
    let (recipient, sender) = (owner_key(1), owner_key(2));
    let inbox = via_a.create(&recipient).await;
    let ack_queue = via_b.create(&sender).await;
    assert!(via_b.fetch(&recipient, inbox).await.entries.is_empty());

    // The same 20 messages through both front-ends at once (each
    // acknowledged by the front-end it reached, through itself): each
    // stored once, numbered 1..=20, and acknowledged twice.
    let recoveries: Arc<Mutex<HashMap<SurbId, SurbRecovery>>> = Arc::default();
    let mut client = Sender::new(5);
    let (mut to_a, mut to_b) = (Vec::new(), Vec::new());
    for n in 0..20 {
        let id = message(1, n);
        for (hop, packets) in [(&hop_a, &mut to_a), (&hop_b, &mut to_b)] {
            let (packet, recovery) = client.deposit(*hop, inbox, id, n as u8, *hop, ack_queue);
            recoveries.lock().unwrap().insert(recovery.id(), recovery);
            packets.push(packet);
        }
    }
    let (to_a, to_b): (Vec<_>, Vec<_>) = (to_a.iter().collect(), to_b.iter().collect());
    // Each sent by the other front-end: a node of the consensus.
    tokio::join!(
        send_packets(a.packet_addr, &key_b, &key_a, &to_a),
        send_packets(b.packet_addr, &key_a, &key_b, &to_b),
    );
    let acks = via_b.fetch_at_least(&sender, ack_queue, 40).await;
    let mut count: HashMap<MessageId, usize> = HashMap::new();
    for id in acked_ids(&acks.entries, &recoveries) {
        *count.entry(id).or_default() += 1;
    }
    assert_eq!(count.len(), 20);
    assert!(count.values().all(|c| *c == 2), "{count:?}");
    let stored = via_a.fetch_all(&recipient, inbox).await;
    assert_eq!(
        stored.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (1..=20).collect::<Vec<_>>()
    );
    let ids_once: HashSet<MessageId> = deposit_ids(&stored).into_iter().collect();
    assert_eq!(ids_once, (0..20).map(|n| message(1, n)).collect());

    // A stream of new deposits into front-end A, which is killed with
    // SIGKILL while the stream goes on.
    let sending = Arc::new(AtomicBool::new(true));
    let streamer = {
        let (sending, recoveries) = (sending.clone(), recoveries.clone());
        let (hop, addr) = (hop_a, a.packet_addr);
        let (from, to) = (
            common::net::link_of(&key_b),
            common::net::link_of(&key_a).public().clone(),
        );
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let mut client = Sender::new(6);
            let mut link = murmur_net::connect(
                addr,
                murmur_wire::link::Purpose::Packets,
                Some(&from),
                &to,
                &murmur_net::LinkSettings::default(),
            )
            .await
            .unwrap();
            let mut sent = 0u32;
            while sending.load(Ordering::SeqCst) {
                let (packet, recovery) =
                    client.deposit(hop, inbox, message(2, sent), 2, hop, ack_queue);
                recoveries.lock().unwrap().insert(recovery.id(), recovery);
                let written = async {
                    link.write_all(&frame(&packet)).await?;
                    link.flush().await
                };
                if written.await.is_err() {
                    break; // A is gone.
                }
                sent += 1;
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
            sent
        })
    };
    via_b.fetch_at_least(&sender, ack_queue, 40 + 50).await;
    let mut killed = a.child;
    signal(&killed, "-KILL");
    killed.wait().unwrap();
    sending.store(false, Ordering::SeqCst);
    let sent = streamer.await.unwrap();

    // Every acknowledgement that reached the sender's queue is for a
    // deposit that is in the database, once.
    let acks = via_b.fetch_all(&sender, ack_queue).await;
    let acked: HashSet<MessageId> = acked_ids(&acks[40..], &recoveries).into_iter().collect();
    assert!(acked.len() >= 50);
    let stored = via_b.fetch_all(&recipient, inbox).await;
    let seqs: Vec<u64> = stored.iter().map(|e| e.seq).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    let stored_ids = deposit_ids(&stored);
    let unique: HashSet<MessageId> = stored_ids.iter().copied().collect();
    assert_eq!(unique.len(), stored_ids.len(), "a deposit stored twice");
    let lost: Vec<_> = acked.difference(&unique).collect();
    assert!(lost.is_empty(), "{} acknowledged deposits lost", lost.len());
    eprintln!(
        "sent {sent} deposits to A before it died; {} acknowledged, {} stored",
        acked.len(),
        unique.len() - 20
    );

    // A restarted: it serves what B stored meanwhile, and recognises a
    // retransmission of an acknowledged message.
    let a = run(&configs[0]);
    wait_healthy(a.operator_addr).await;
    let via_a = Owner::new(a.http_addr, &key_a, clock.clone());
    let before = via_a.fetch_all(&recipient, inbox).await.len();
    assert_eq!(before, stored.len());
    let (hop_a, _, _) = listed(&auth, &*clock, ids[0]).await;
    let again = *acked.iter().next().unwrap();
    let (packet, recovery) = client.deposit(hop_a, inbox, again, 2, hop_a, ack_queue);
    recoveries.lock().unwrap().insert(recovery.id(), recovery);
    send_packets(a.packet_addr, &key_b, &key_a, &[&packet]).await;
    let acks = via_a
        .fetch_at_least(&sender, ack_queue, acks.len() + 1)
        .await;
    let last = acks.entries.last().unwrap();
    assert_eq!(
        acked_ids(std::slice::from_ref(last), &recoveries),
        vec![again]
    );
    assert_eq!(via_a.fetch_all(&recipient, inbox).await.len(), before);

    for running in [a.child, b.child] {
        let mut child = running;
        signal(&child, "-TERM");
        let status = child.wait().unwrap();
        assert!(status.success(), "exit status {status}");
    }
    stop.cancel();
}

#[test]
fn migrate_brings_a_postgres_database_to_the_schema_version() {
    let Some(db) = TestDb::new("migrate_brings_a_postgres_database_to_the_schema_version") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("mailbox.toml");
    let migrate = || {
        Command::new(BIN)
            .args(["migrate", "--config"])
            .arg(&config)
            .output()
            .unwrap()
    };
    // Nothing to migrate with the redb backend.
    std::fs::write(&config, "").unwrap();
    let out = migrate();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not \"postgres\""));

    std::fs::write(
        &config,
        format!(
            "[storage]\nbackend = \"postgres\"\npostgres_url = \"{}\"\n",
            db.url()
        ),
    )
    .unwrap();
    for _ in 0..2 {
        let out = migrate();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let version = murmur_mailbox::postgres::SCHEMA_VERSION;
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            format!("schema version {version}")
        );
    }
    let applied = db.query_pairs("SELECT version, description FROM mailbox_schema");
    assert_eq!(
        applied.len(),
        murmur_mailbox::postgres::SCHEMA_VERSION as usize
    );
}
