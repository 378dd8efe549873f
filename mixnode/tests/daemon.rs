//! The full daemon against a real directory authority on loopback: nodes
//! register, follow the consensus, learn their layers, and carry loops; and
//! the binary's `init` and `run` with a graceful SIGTERM.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

// The engine test helpers live with the engine, in murmur-node.
#[path = "../../node/tests/common/mod.rs"]
mod common;
#[path = "../../net/tests/support/init_identity.rs"]
mod init_identity;

use std::sync::Arc;
use std::time::Duration;

use common::{identity, wait_until};
use murmur_directory::AuthorityPin;
use murmur_directory::{AuthorityConfig, AuthorityHandle, start_authority};
use murmur_mixnode::{MixNodeConfig, start_mixnode};
use murmur_net::clock::{Clock, OffsetClock};
use murmur_net::http::HttpClient;
use murmur_node::engine::EngineLimits;
use tokio_util::sync::CancellationToken;

const L: u64 = 3600;
const WAIT: Duration = Duration::from_secs(40);

/// A clock in the middle of the current epoch.
fn mid_epoch_clock() -> OffsetClock {
    let clock = OffsetClock::new();
    let now = clock.now().as_millis() as i64;
    clock.set_offset_ms(L as i64 * 500 - now % (L as i64 * 1000));
    clock
}

async fn authority(
    dir: &std::path::Path,
    clock: &OffsetClock,
    stop: &CancellationToken,
) -> AuthorityHandle {
    let mut cfg = AuthorityConfig::new(dir);
    cfg.listen = "127.0.0.1:0".parse().unwrap();
    cfg.epoch_secs = L;
    cfg.timing.bootstrap_window_ms = 1500;
    cfg.timing.tick_ms = 50;
    cfg.params.mean_delay_ms = 1;
    cfg.params.max_delay_ms = 100;
    cfg.params.mix_loop_rate = 10.0;
    // These tests are about the node: an open authority on loopback (the
    // nodes' keys come from `init`). Admission is tested in murmur-directory.
    cfg.admission.mode = murmur_directory::config::AdmissionMode::Open;
    cfg.admission.allow_private_addresses = true;
    cfg.admission.max_per_address = 64;
    cfg.admission.max_per_subnet = 64;
    start_authority(cfg, identity(100), Arc::new(clock.clone()), stop.clone())
        .await
        .unwrap()
}

fn node_config(dir: &std::path::Path, auth: &AuthorityHandle) -> MixNodeConfig {
    let mut c = MixNodeConfig::new(dir);
    c.listen_addr = "127.0.0.1:0".parse().unwrap();
    c.http_addr = "127.0.0.1:0".parse().unwrap();
    c.engine = EngineLimits {
        workers: 1,
        ..EngineLimits::default()
    };
    c.replay = common::replay_settings();
    c.directory.authorities = vec![AuthorityPin {
        addr: auth.addr,
        key: auth.key,
    }];
    c.directory.request_timeout_ms = 2000;
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_register_follow_the_consensus_and_carry_loops() {
    let dir = tempfile::tempdir().unwrap();
    let clock = mid_epoch_clock();
    let stop = CancellationToken::new();
    let auth = authority(&dir.path().join("auth"), &clock, &stop).await;
    let mut nodes = Vec::new();
    for i in 0..3u8 {
        let node = start_mixnode(
            node_config(&dir.path().join(format!("mix{i}")), &auth),
            identity(i + 1),
            Arc::new(clock.clone()),
            stop.clone(),
        )
        .await
        .unwrap();
        nodes.push(node);
    }
    // Each node is listed, in its own layer, and says so.
    let http = HttpClient::new(Duration::from_secs(5));
    let mut layers = Vec::new();
    for n in &nodes {
        let mut body = String::new();
        let mut ok = false;
        for _ in 0..400 {
            let (status, b) = http.get(n.http_addr, "/healthz", 4096).await.unwrap();
            body = String::from_utf8_lossy(&b).into_owned();
            if status.as_u16() == 200 {
                ok = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(ok, "not healthy: {body}");
        layers.push(body.trim().rsplit(' ').next().unwrap().to_owned());
        assert!(n.registration_metrics().registrations() >= 1);
    }
    layers.sort();
    assert_eq!(layers, vec!["0", "1", "2"]);
    // Loops at the consensus rate go round and come back.
    assert!(
        wait_until(WAIT, || nodes
            .iter()
            .all(|n| n.loop_metrics().returned() >= 3))
        .await
    );
    stop.cancel();
    for n in &nodes {
        n.wait().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_initialises_runs_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let clock = OffsetClock::new();
    let stop = CancellationToken::new();
    let auth = authority(&dir.path().join("auth"), &clock, &stop).await;
    let node_dir = dir.path().join("node");
    let bin = env!("CARGO_BIN_EXE_murmur-mixnode");
    let out = std::process::Command::new(bin)
        .args(["init", "--dir"])
        .arg(&node_dir)
        .args(["--listen", "127.0.0.1:0", "--http", "127.0.0.1:0"])
        .arg("--authority")
        .arg(format!("{}={}", auth.addr, auth.key.to_base58()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(printed.contains("node id"), "{printed}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(node_dir.join("identity.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let config = node_dir.join("mixnode.toml");
    let cfg = MixNodeConfig::load(&config).unwrap();
    assert_eq!(cfg.directory.authorities.len(), 1);

    // A second init does not overwrite.
    let again = std::process::Command::new(bin)
        .args(["init", "--dir"])
        .arg(&node_dir)
        .output()
        .unwrap();
    assert!(!again.status.success());

    let mut child = std::process::Command::new(bin)
        .args(["run", "--config"])
        .arg(&config)
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // It registers: the authority publishes a document listing it.
    let client = HttpClient::new(Duration::from_secs(2));
    let mut listed = false;
    for _ in 0..200 {
        if let Ok((status, _)) = client
            .get(auth.addr, "/v1/consensus/current", 1 << 20)
            .await
            && status.as_u16() == 200
        {
            listed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(listed, "no consensus was published");
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let exit = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(std::time::Instant::now() < deadline, "did not stop");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let output = child.wait_with_output().unwrap();
    let logs = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    assert!(exit.success(), "{logs}");
    assert!(logs.contains("stopped"), "{logs}");
    // The replay cache was persisted, and keys are private.
    assert!(node_dir.join("replay").is_dir());
    for f in std::fs::read_dir(node_dir.join("keys")).unwrap() {
        let mode = f.unwrap().metadata().unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    stop.cancel();
}

/// `init --force` keeps the identity key; `--new-identity` replaces it.
#[test]
fn init_force_keeps_the_key_and_new_identity_replaces_it() {
    init_identity::init_force_keeps_the_key_and_new_identity_replaces_it(
        env!("CARGO_BIN_EXE_murmur-mixnode"),
        "identity.key",
        "mixnode.toml",
    );
}
