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
    murmur_as(home, args, Some("test passphrase")).await
}

/// Runs `murmur`, with `$MURMUR_PASSPHRASE` set to `passphrase` or unset.
async fn murmur_as(home: &Path, args: &[&str], passphrase: Option<&str>) -> Out {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_murmur"));
    match passphrase {
        Some(p) => command.env("MURMUR_PASSPHRASE", p),
        None => command.env_remove("MURMUR_PASSPHRASE"),
    };
    let out = command
        .stdin(std::process::Stdio::null())
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

/// `murmur daemon` keeps a client online and serves the other commands over
/// its local socket: they need no passphrase and do not go online
/// themselves; `watch` streams its mail; `stop` ends it. Hostile text from a
/// contact reaches the terminal escaped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_keeps_the_client_online_and_serves_the_other_commands() {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

    let dir = tempfile::tempdir().unwrap();
    let devnet = Devnet::start(DevnetOptions {
        dir: dir.path().join("devnet"),
        width: 2,
        mean_delay_ms: 10,
        client_rate: 20.0,
        client_loop_rate: 2.0,
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
    for (home, name) in [(&alice, "alice"), (&bob, "bob")] {
        let out = murmur(home, &["init", "--network", network, "--name", name]).await;
        assert!(out.ok, "{}", out.stderr);
    }
    let offline = murmur_as(&alice, &["status"], None).await;
    assert!(
        offline.ok && offline.stdout.contains("offline"),
        "{}",
        offline.stdout
    );

    let mut daemon = tokio::process::Command::new(env!("CARGO_BIN_EXE_murmur"))
        .env("MURMUR_PASSPHRASE", "test passphrase")
        .arg("--home")
        .arg(&alice)
        .arg("daemon")
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let socket = alice.join("murmur.sock");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !socket.exists() {
        assert!(tokio::time::Instant::now() < deadline, "no socket");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "socket mode {mode:o}");
    }

    // Without a passphrase, through the daemon.
    let status = murmur_as(&alice, &["status"], None).await;
    assert!(status.ok, "{}", status.stderr);
    assert!(
        status.stdout.contains("online as \"alice\""),
        "{}",
        status.stdout
    );
    fails_with(&murmur_as(&alice, &["daemon"], None).await, "already runs");
    let invite = murmur_as(&alice, &["invite"], None).await;
    assert!(invite.ok, "{}", invite.stderr);
    let accept = murmur(&bob, &["accept", invite.stdout.trim()]).await;
    assert!(accept.ok, "{}", accept.stderr);

    // The daemon fetched bob's hello on its own: the inbox does not have to.
    let contacts_deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let contacts = murmur_as(&alice, &["contacts"], None).await;
        if contacts.stdout.contains("bob\testablished") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < contacts_deadline,
            "{}",
            contacts.stdout
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // `watch` streams the daemon's mail; hostile text arrives escaped.
    let mut watch = tokio::process::Command::new(env!("CARGO_BIN_EXE_murmur"))
        .env_remove("MURMUR_PASSPHRASE")
        .arg("--home")
        .arg(&alice)
        .arg("watch")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(watch.stdout.take().unwrap()).lines();
    let hello = lines.next_line().await.unwrap().unwrap();
    assert!(hello.contains("bob accepted your invitation"), "{hello}");
    let sent = murmur(
        &bob,
        &["send", "alice", "hi\u{1b}[2J\u{1b}]0;pwned\u{7}\rfake"],
    )
    .await;
    assert!(sent.ok, "{}", sent.stderr);
    let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        line.contains("bob: hi\\u{1b}[2J\\u{1b}]0;pwned"),
        "{line:?}"
    );
    assert!(!line.contains('\u{1b}') && !line.contains('\r'), "{line:?}");
    watch.kill().await.unwrap();

    // Sending through the daemon.
    let sent = murmur_as(&alice, &["send", "bob", "from the daemon"], None).await;
    assert!(sent.ok, "{}", sent.stderr);
    assert!(sent.stdout.contains("delivered"), "{}", sent.stdout);
    let inbox = murmur(&bob, &["inbox"]).await;
    assert!(
        inbox.stdout.contains("alice: from the daemon"),
        "{}",
        inbox.stdout
    );

    // A garbage request gets an error; the daemon carries on.
    let mut raw = tokio::net::UnixStream::connect(&socket).await.unwrap();
    raw.write_all(b"{\"cmd\":\"rm -rf\"}\n").await.unwrap();
    let mut answer = String::new();
    raw.read_to_string(&mut answer).await.unwrap();
    assert!(answer.contains("does not understand"), "{answer}");
    let status = murmur_as(&alice, &["status"], None).await;
    assert!(status.ok, "{}", status.stderr);

    fails_with(&murmur(&alice, &["passphrase"]).await, "stop it first");
    let stop = murmur_as(&alice, &["stop"], None).await;
    assert!(stop.ok, "{}", stop.stderr);
    let exit = tokio::time::timeout(Duration::from_secs(30), daemon.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success());
    let mut stderr = String::new();
    daemon
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .await
        .unwrap();
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!socket.exists());
    // Without the daemon, commands open the client themselves again.
    fails_with(&murmur_as(&alice, &["contacts"], None).await, "passphrase");
    let contacts = murmur(&alice, &["contacts"]).await;
    assert!(contacts.ok, "{}", contacts.stderr);

    // A new passphrase: the old one is refused from then on.
    let changed = tokio::process::Command::new(env!("CARGO_BIN_EXE_murmur"))
        .env("MURMUR_PASSPHRASE", "test passphrase")
        .env("MURMUR_NEW_PASSPHRASE", "another passphrase")
        .arg("--home")
        .arg(&alice)
        .arg("passphrase")
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .unwrap();
    assert!(
        changed.status.success(),
        "{}",
        String::from_utf8_lossy(&changed.stderr)
    );
    fails_with(&murmur(&alice, &["contacts"]).await, "wrong passphrase");
    let contacts = murmur_as(&alice, &["contacts"], Some("another passphrase")).await;
    assert!(contacts.ok, "{}", contacts.stderr);
    assert!(
        contacts.stdout.contains("bob\testablished"),
        "{}",
        contacts.stdout
    );

    devnet.shutdown().await;
}
