//! The `murmur` binary as a person uses it, against a devnet: init, invite,
//! accept, send, inbox — and a clear error for every wrong input.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::path::Path;
use std::time::Duration;

use murmur::devnet::{Devnet, DevnetOptions};

struct Out {
    ok: bool,
    stdout: String,
    stderr: String,
}

async fn murmur(home: &Path, args: &[&str]) -> Out {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_murmur"))
        .env("MURMUR_PASSPHRASE", "test passphrase")
        .arg("--home")
        .arg(home)
        .args(args)
        .output()
        .await
        .unwrap();
    Out {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[track_caller]
fn fails_with(out: &Out, needle: &str) {
    assert!(!out.ok, "expected a failure, got success: {}", out.stdout);
    assert!(
        out.stderr.contains(needle),
        "expected {needle:?} in the error, got: {}",
        out.stderr
    );
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_network_is_reported_at_once() {
    let dir = tempfile::tempdir().unwrap();
    // A port nothing listens on.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let network = dir.path().join("network.toml");
    let key = murmur_wire::IdentityKey(
        murmur_wire::ed25519_dalek::SigningKey::from_bytes(&[1; 32])
            .verifying_key()
            .to_bytes(),
    );
    std::fs::write(
        &network,
        format!("threshold = 1\n[[authority]]\naddress = \"{addr}\"\nkey = \"{key}\"\n"),
    )
    .unwrap();
    let home = dir.path().join("home");
    let started = std::time::Instant::now();
    let out = murmur(&home, &["init", "--network", network.to_str().unwrap()]).await;
    fails_with(&out, "unreachable");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(
        !home.join("client.redb").exists(),
        "a failed init left a client behind"
    );

    // A network file that is not one.
    std::fs::write(&network, "threshold = \"two\"\n").unwrap();
    let out = murmur(&home, &["init", "--network", network.to_str().unwrap()]).await;
    fails_with(&out, "network config");
    let out = murmur(&home, &["init", "--network", "/no/such/file.toml"]).await;
    fails_with(&out, "/no/such/file.toml");

    // Commands before init.
    let out = murmur(&home, &["contacts"]).await;
    fails_with(&out, "murmur --home");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_messages_through_the_cli_and_wrong_inputs_get_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let devnet = Devnet::start(DevnetOptions {
        dir: dir.path().join("devnet"),
        width: 2,
        mean_delay_ms: 10,
        client_rate: 0.0,
        client_loop_rate: 0.0,
        mix_loop_rate: 0.0,
        ..DevnetOptions::default()
    })
    .await
    .unwrap();
    devnet.wait_ready(Duration::from_secs(60)).await.unwrap();
    let network = devnet.network_file();
    let network = network.to_str().unwrap();
    let alice = dir.path().join("alice");
    let bob = dir.path().join("bob");

    assert!(
        murmur(&alice, &["init", "--network", network, "--name", "alice"])
            .await
            .ok
    );
    assert!(
        murmur(&bob, &["init", "--network", network, "--name", "bob"])
            .await
            .ok
    );
    fails_with(
        &murmur(&alice, &["init", "--network", network]).await,
        "already exists",
    );

    let invite = murmur(&alice, &["invite"]).await;
    assert!(invite.ok, "{}", invite.stderr);
    let invitation = invite.stdout.trim().to_owned();
    assert!(invitation.starts_with("murmur-invite:"));

    // Wrong invitations.
    fails_with(
        &murmur(&bob, &["accept", "hello"]).await,
        "invalid invitation",
    );
    let mut damaged = invitation.clone();
    damaged.pop();
    fails_with(
        &murmur(&bob, &["accept", &damaged]).await,
        "invalid invitation",
    );
    fails_with(
        &murmur(&alice, &["accept", &invitation]).await,
        "made by this client",
    );

    let accept = murmur(&bob, &["accept", &invitation]).await;
    assert!(accept.ok, "{}", accept.stderr);
    assert!(
        accept.stdout.contains("alice is now a contact"),
        "{}",
        accept.stdout
    );

    // Alice learns of it from bob's hello.
    let inbox = murmur(&alice, &["inbox"]).await;
    assert!(inbox.ok, "{}", inbox.stderr);
    assert!(
        inbox.stdout.contains("bob accepted your invitation"),
        "{}",
        inbox.stdout
    );
    let contacts = murmur(&alice, &["contacts"]).await;
    assert!(
        contacts.stdout.contains("bob\testablished"),
        "{}",
        contacts.stdout
    );

    // Safety numbers agree.
    let a = murmur(&alice, &["safety-number", "bob"]).await;
    let b = murmur(&bob, &["safety-number", "alice"]).await;
    assert!(a.ok && b.ok);
    assert_eq!(a.stdout, b.stdout);

    // A text and a file.
    let sent = murmur(&alice, &["send", "bob", "hello from the cli"]).await;
    assert!(sent.ok, "{}", sent.stderr);
    assert!(sent.stdout.contains("delivered"), "{}", sent.stdout);
    let file = dir.path().join("notes.txt");
    std::fs::write(&file, b"line one\nline two\n").unwrap();
    let sent = murmur(&bob, &["send", "alice", "--file", file.to_str().unwrap()]).await;
    assert!(sent.ok, "{}", sent.stderr);
    let inbox = murmur(&bob, &["inbox"]).await;
    assert!(
        inbox.stdout.contains("alice: hello from the cli"),
        "{}",
        inbox.stdout
    );
    let again = murmur(&bob, &["inbox"]).await;
    assert!(again.stdout.contains("no new messages"), "{}", again.stdout);
    let inbox = murmur(&alice, &["inbox"]).await;
    assert!(
        inbox.stdout.contains("file \"notes.txt\""),
        "{}",
        inbox.stdout
    );
    assert_eq!(
        std::fs::read(alice.join("files").join("bob").join("notes.txt")).unwrap(),
        b"line one\nline two\n"
    );

    // Wrong inputs.
    fails_with(
        &murmur(&alice, &["send", "carol", "hi"]).await,
        "no contact named \"carol\"",
    );
    fails_with(
        &murmur(&alice, &["safety-number", "carol"]).await,
        "no contact named",
    );
    fails_with(
        &murmur(&alice, &["send", "bob", "--file", "/no/such/file"]).await,
        "/no/such/file",
    );
    fails_with(
        &murmur(
            &alice,
            &["send", "bob", "--file", dir.path().to_str().unwrap()],
        )
        .await,
        "not a regular file",
    );
    fails_with(&murmur(&alice, &["send", "bob"]).await, "required");
    fails_with(
        &murmur(&alice, &["invite", "--name", ""]).await,
        "invalid contact name",
    );
    fails_with(
        &murmur(&alice, &["invite", "--name", "bob"]).await,
        "already exists",
    );

    devnet.shutdown().await;
}
