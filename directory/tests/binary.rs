//! The real `murmur-directory` binary: init, run, a bootstrap document with
//! one-hour epochs, graceful SIGTERM, and config errors.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;
#[path = "../../net/tests/support/init_identity.rs"]
mod init_identity;

use std::process::Stdio;
use std::time::Duration;

use common::*;
use murmur_directory::{AuthorityPin, DirectoryClient};
use murmur_net::http::HttpClient;
use murmur_wire::IdentityKey;
use murmur_wire::policy::epoch_at;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_murmur-directory");

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_then_run_serves_a_bootstrap_document() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["init", "--dir"])
        .arg(dir.path())
        .args(["--listen", "127.0.0.1:0"])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let key_text = stdout
        .lines()
        .find_map(|l| l.strip_prefix("authority public key: "))
        .unwrap();
    let key = IdentityKey::from_base58(key_text).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("authority.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // A second init does not overwrite the key.
    let again = Command::new(BIN)
        .args(["init", "--dir"])
        .arg(dir.path())
        .output()
        .await
        .unwrap();
    assert!(!again.status.success());

    // Keep the default one-hour epochs; shorten only the bootstrap window.
    let config = dir.path().join("directory.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(text.contains("epoch_secs = 3600"));
    // The test nodes' addresses are made up: no probe.
    assert!(text.contains("mode = \"allowlist\"") && text.contains("probe = true"));
    std::fs::write(
        &config,
        text.replace("bootstrap_window_ms = 2000", "bootstrap_window_ms = 200")
            .replace("probe = true", "probe = false"),
    )
    .unwrap();
    // The operator admits the nodes (and one by mistake, then revokes it).
    let e = epoch_at(now_secs(), 3600);
    let nodes = network_descriptors(e, now_secs());
    let node_keys: Vec<String> = nodes
        .iter()
        .map(|d| d.verify().unwrap().descriptor().identity.to_base58())
        .collect();
    let stranger = ident(&common::key(7)).to_base58();
    let admit = Command::new(BIN)
        .args(["admit", "--note", "test network", "--config"])
        .arg(&config)
        .args(&node_keys)
        .arg(&stranger)
        .output()
        .await
        .unwrap();
    assert!(
        admit.status.success(),
        "{}",
        String::from_utf8_lossy(&admit.stderr)
    );
    let revoke = Command::new(BIN)
        .args(["revoke", "--config"])
        .arg(&config)
        .arg(&stranger)
        .output()
        .await
        .unwrap();
    assert!(revoke.status.success());
    let listed = Command::new(BIN)
        .args(["admitted", "--config"])
        .arg(&config)
        .output()
        .await
        .unwrap();
    let listed = String::from_utf8(listed.stdout).unwrap();
    assert!(listed.contains("11 admitted"), "{listed}");
    assert!(node_keys.iter().all(|k| listed.contains(k.as_str())));
    assert!(!listed.contains(&stranger), "{listed}");
    // A key that is not a key is refused, and the list is left alone.
    let bad = Command::new(BIN)
        .args(["admit", "--config"])
        .arg(&config)
        .arg("not-a-key")
        .output()
        .await
        .unwrap();
    assert!(!bad.status.success());
    let pk = Command::new(BIN)
        .args(["public-key", "--config"])
        .arg(&config)
        .output()
        .await
        .unwrap();
    assert_eq!(String::from_utf8(pk.stdout).unwrap().trim(), key_text);

    let mut child = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&config)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let addr = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(a) = line.strip_prefix("murmur-directory listening on ") {
                return a.parse::<std::net::SocketAddr>().unwrap();
            }
        }
        panic!("no listening line");
    })
    .await
    .unwrap();
    assert_eq!(get(addr, "/healthz").await.0, 200);

    let client = DirectoryClient::new(
        vec![AuthorityPin { addr, key }],
        1,
        HttpClient::new(Duration::from_secs(2)),
    )
    .unwrap();
    for d in &nodes {
        let report = client.upload_descriptor(d).await;
        assert!(report.all_accepted(), "{report}");
    }
    // The revoked stranger is refused.
    let report = client
        .upload_descriptor(&descriptor(
            7,
            murmur_wire::Role::Mix,
            20_500,
            e,
            3,
            now_secs(),
        ))
        .await;
    assert!(!report.all_accepted(), "{report}");
    assert_eq!(
        metric(
            addr,
            "murmur_directory_descriptors_refused_total{reason=\"not_admitted\"}"
        )
        .await,
        1.0
    );
    let doc = eventually(15, "bootstrap document", || async {
        client.fetch(e, now_secs()).await.ok()
    })
    .await;
    assert!(doc.is_routable());
    assert!(metric(addr, "murmur_directory_documents_published_total").await >= 1.0);

    // SIGTERM: a graceful exit.
    let pid = child.id().unwrap();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "{exit:?}");
    // The document survived on disk.
    assert!(
        std::fs::read_dir(dir.path().join("data/consensus"))
            .unwrap()
            .count()
            >= 1
    );
}

#[tokio::test]
async fn unknown_config_keys_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["init", "--dir"])
        .arg(dir.path())
        .output()
        .await
        .unwrap();
    assert!(out.status.success());
    let config = dir.path().join("directory.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace("[timing]", "[timing]\nbogus_knob = 3"),
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&config)
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("bogus_knob"), "{stderr}");
}

/// `init --force` keeps the authority key; `--new-identity` replaces it.
#[test]
fn init_force_keeps_the_key_and_new_identity_replaces_it() {
    init_identity::init_force_keeps_the_key_and_new_identity_replaces_it(
        BIN,
        "authority.key",
        "directory.toml",
    );
}
