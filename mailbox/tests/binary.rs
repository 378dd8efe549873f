//! The `murmur-mailbox` binary: `init` writes a configuration that `run`
//! accepts; it serves, and stops cleanly on SIGTERM; bad configurations are
//! refused with the key named.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use http::StatusCode;
use murmur_directory::http::HttpClient;

const BIN: &str = env!("CARGO_BIN_EXE_murmur-mailbox");

#[test]
fn init_then_run_then_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["init", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("node id"));
    // init refuses to overwrite.
    let again = Command::new(BIN)
        .args(["init", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!again.status.success());

    // Port 0 so that tests do not collide.
    let config = dir.path().join("mailbox.toml");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("127.0.0.1:7480", "127.0.0.1:0");
    std::fs::write(&config, text).unwrap();

    let mut child = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let addr: SocketAddr = loop {
        let line = lines.next().expect("no address printed").unwrap();
        if let Some(a) = line.strip_prefix("http_addr ") {
            break a.parse().unwrap();
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (status, _) = runtime
        .block_on(HttpClient::new(Duration::from_secs(5)).get(addr, "/healthz", 1024))
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    assert!(dir.path().join("mailbox.redb").exists());

    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = child.wait().unwrap();
    assert!(status.success(), "exit status {status}");
}

#[test]
fn unknown_config_keys_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.toml");
    std::fs::write(&config, "[storage]\nretention_days = 3\n").unwrap();
    let out = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("retention_days"), "{err}");
}
