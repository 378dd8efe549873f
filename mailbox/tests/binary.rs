//! The `murmur-mailbox` binary against an in-process directory authority:
//! `init` writes a configuration that `run` accepts; the provider registers,
//! and stops cleanly on SIGTERM; an acknowledged deposit survives SIGKILL
//! and a restart with the same configuration, and its retransmissions are
//! stored once; bad configurations are refused with the key named.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use common::net::{Owner, Sender, authority, listed, send_packets, wait_healthy};
use common::owner_key;
use murmur_directory::AuthorityHandle;
use murmur_directory::clock::{Clock, SystemClock};
use murmur_mailbox::Config;
use murmur_wire::mailbox::QueueItem;
use murmur_wire::{Ack, MessageId, SurbRecovery};
use tokio_util::sync::CancellationToken;

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
        std::fs::write(
            dir.path().join("identity.key"),
            bs58::encode([5u8; 32]).into_string(),
        )
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
