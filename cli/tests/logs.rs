//! No plaintext, keys, queue ids or message ids in the logs at `info`:
//! a whole network (devnet: authorities, mixes and mailboxes in this
//! process) and two clients exchange texts and a file with cover traffic,
//! a mix dies on the way and a client restarts, while one tracing
//! subscriber at `info` for every crate captures every line. Then every
//! secret and identifier of the run is looked for in the capture, as text,
//! hex and base58, and byte for byte in the two clients' files.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use murmur::devnet::{Devnet, DevnetOptions};
use murmur_client::invite::Invitation;
use murmur_client::network::follow;
use murmur_client::{Body, Client, ClientOptions, Passphrase};
use murmur_wire::MessageId;
use tokio_util::sync::CancellationToken;

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Every form a secret or identifier could take in a log line.
fn forms(what: &str, bytes: &[u8]) -> Vec<(String, String)> {
    let mut out = vec![
        (format!("{what} (hex)"), hex::encode(bytes)),
        (format!("{what} (HEX)"), hex::encode_upper(bytes)),
        (
            format!("{what} (base58)"),
            bs58::encode(bytes).into_string(),
        ),
        // Debug of a byte array: "[12, 34, ...".
        (
            format!("{what} (debug)"),
            format!("{:?}", &bytes[..bytes.len().min(8)])
                .trim_end_matches(']')
                .to_owned(),
        ),
    ];
    // A prefix is enough to identify: the first 12 hex digits.
    out.push((format!("{what} (hex prefix)"), hex::encode(&bytes[..6])));
    out
}

/// The passphrase of the test clients' databases.
fn passphrase() -> Passphrase {
    Passphrase::new("test passphrase")
}

/// Every file under `root`.
fn files_under(root: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

async fn wait_for(client: &Client, want: &HashMap<MessageId, Body>) {
    tokio::time::timeout(Duration::from_secs(120), async {
        loop {
            let got: Vec<MessageId> = client
                .inbox(false)
                .unwrap()
                .into_iter()
                .map(|(_, r)| r.message_id)
                .collect();
            if want.keys().all(|id| got.contains(id)) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("every message arrives");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_or_identifier_is_logged_at_info() {
    let capture = Capture::default();
    let writer = capture.clone();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .init();

    let dir = tempfile::tempdir().unwrap();
    let mut devnet = Devnet::start(DevnetOptions {
        dir: dir.path().join("devnet"),
        width: 2,
        mean_delay_ms: 10,
        max_delay_ms: 500,
        // Low cover, so the cover paths log too.
        client_rate: 10.0,
        client_loop_rate: 2.0,
        mix_loop_rate: 1.0,
        ..DevnetOptions::default()
    })
    .await
    .unwrap();
    devnet.wait_ready(Duration::from_secs(60)).await.unwrap();
    let token = CancellationToken::new();
    let consensus = follow(devnet.network(), Duration::from_secs(30), token.clone())
        .await
        .unwrap();
    let options = ClientOptions {
        fetch_interval: Duration::from_millis(50),
        ..ClientOptions::default()
    };
    let alice = Client::create(
        &dir.path().join("alice"),
        "alice",
        consensus.clone(),
        None,
        options.clone(),
        &passphrase(),
    )
    .await
    .unwrap();
    let bob = Client::create(
        &dir.path().join("bob"),
        "bob",
        consensus.clone(),
        None,
        options.clone(),
        &passphrase(),
    )
    .await
    .unwrap();
    let invitation = alice.invite(None).await.unwrap();
    bob.accept(&invitation, None).await.unwrap();
    tokio::time::timeout(Duration::from_secs(30), async {
        while !alice.contacts().unwrap().iter().any(|c| c.established) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("alice learns of bob's acceptance");

    let texts = [
        "meet me under the old clocktower at nine 4f1c",
        "the password is swordfish-7731",
    ];
    let file_text = "file body: quarterly numbers 91e2a7 are confidential";
    let file = dir.path().join("secret-plan-name.txt");
    std::fs::write(&file, file_text).unwrap();
    let mut to_bob = HashMap::new();
    let mut to_alice = HashMap::new();
    let mut handles = Vec::new();
    for t in texts {
        let h = alice.send_text("bob", t).await.unwrap();
        to_bob.insert(h.id(), Body::Text(t.into()));
        handles.push(h);
    }
    let h = alice.send_file("bob", &file).await.unwrap();
    to_bob.insert(
        h.id(),
        Body::File {
            name: "secret-plan-name.txt".into(),
            data: file_text.into(),
        },
    );
    handles.push(h);
    let reply = "reply from bob: the eagle has landed 0c9d";
    let h = bob.send_text("alice", reply).await.unwrap();
    to_alice.insert(h.id(), Body::Text(reply.into()));
    handles.push(h);
    // A mix dies on the way (failure paths log too), and Alice restarts.
    let victim = devnet.mix_ids().iter().position(Option::is_some).unwrap();
    devnet.stop_mix(victim).await;
    for h in handles {
        tokio::time::timeout(Duration::from_secs(120), h.delivered())
            .await
            .unwrap()
            .unwrap();
    }
    let alice_queues = alice.owned_queues().unwrap();
    let alice_identity = alice.identity();
    alice.shutdown().await;
    let alice = Client::open(
        &dir.path().join("alice"),
        consensus.clone(),
        options,
        &passphrase(),
    )
    .await
    .unwrap();
    wait_for(&bob, &to_bob).await;
    wait_for(&alice, &to_alice).await;

    // Everything that must not be logged.
    let mut secrets: Vec<(String, String)> = Vec::new();
    // And, byte for byte, in the clients' files.
    let mut raw: Vec<(String, Vec<u8>)> = Vec::new();
    for t in texts.iter().chain([&file_text, &reply]) {
        secrets.push(("a message's plaintext".into(), (*t).to_owned()));
        raw.push(("a message's plaintext".into(), t.as_bytes().to_vec()));
    }
    raw.push(("a file's name".into(), b"secret-plan-name".to_vec()));
    secrets.push(("a file's name".into(), "secret-plan-name".into()));
    for (who, id) in [("alice", alice_identity), ("bob", bob.identity())] {
        secrets.extend(forms(&format!("{who}'s identity key"), &id.0));
        raw.push((format!("{who}'s identity key"), id.0.to_vec()));
    }
    for (who, queues) in [
        ("alice", alice_queues),
        ("bob", bob.owned_queues().unwrap()),
    ] {
        for q in queues {
            secrets.extend(forms(&format!("{who}'s queue id"), &q.queue.to_bytes()));
            secrets.extend(forms(&format!("{who}'s queue owner key"), &q.owner_secret));
            raw.push((format!("{who}'s queue id"), q.queue.to_bytes().to_vec()));
            raw.push((format!("{who}'s queue owner key"), q.owner_secret.to_vec()));
        }
    }
    let inv = Invitation::parse(&invitation).unwrap();
    secrets.push(("the invitation".into(), invitation.clone()));
    secrets.extend(forms("the invitation's contact secret", &inv.secret));
    raw.push((
        "the invitation's contact secret".into(),
        inv.secret.to_vec(),
    ));
    secrets.extend(forms("the invitation's queue id", &inv.queue.to_bytes()));
    for id in to_bob.keys().chain(to_alice.keys()) {
        secrets.extend(forms("a message id", &id.to_bytes()));
        raw.push(("a message id".into(), id.to_bytes().to_vec()));
    }
    // Node and authority identity keys (32-byte seeds) and Sphinx secret
    // keys, as the devnet keeps them on disk.
    let mut key_files = 0;
    for path in files_under(&dir.path().join("devnet")) {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name == "identity.key" || (name.starts_with("sphinx-") && name.ends_with(".key")) {
            // Identity keys are base58 text files (murmur_net::keyfile),
            // Sphinx keys the raw 32 bytes.
            let bytes = if name == "identity.key" {
                murmur_net::keyfile::read_signing_key(&path)
                    .unwrap()
                    .to_bytes()
                    .to_vec()
            } else {
                std::fs::read(&path).unwrap()
            };
            assert_eq!(bytes.len(), 32, "{}", path.display());
            secrets.extend(forms(&format!("secret key {}", path.display()), &bytes));
            key_files += 1;
        }
    }
    assert!(key_files >= 14, "found only {key_files} key files");

    alice.shutdown().await;
    bob.shutdown().await;
    token.cancel();
    devnet.shutdown().await;

    let logs = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    let lines = logs.lines().count();
    assert!(
        lines >= 20 && logs.contains(" INFO "),
        "the capture holds too little to mean anything:\n{logs}"
    );
    let mut leaks = Vec::new();
    for (what, needle) in &secrets {
        if let Some(line) = logs.lines().find(|l| l.contains(needle.as_str())) {
            leaks.push(format!("{what}: {line}"));
        }
    }
    assert!(
        leaks.is_empty(),
        "{} leak(s) in {lines} log lines:\n{}",
        leaks.len(),
        leaks.join("\n")
    );
    println!(
        "checked {} forms of {} secrets and identifiers against {lines} log lines at info",
        secrets.len(),
        secrets.len() / 5
    );

    // The clients' files: client.redb is encrypted at rest, so none of the
    // above is in it (received files would be under files/, in plaintext
    // by design; the library writes none there).
    let mut in_files = Vec::new();
    let mut searched = 0;
    for who in ["alice", "bob"] {
        let home = dir.path().join(who);
        for path in files_under(&home) {
            if path.starts_with(home.join("files")) {
                continue;
            }
            let bytes = std::fs::read(&path).unwrap();
            searched += bytes.len();
            for (what, needle) in &raw {
                if bytes.windows(needle.len()).any(|w| w == needle.as_slice()) {
                    in_files.push(format!("{what} in {}", path.display()));
                }
            }
        }
    }
    assert!(searched > 0);
    assert!(
        in_files.is_empty(),
        "readable in the clients' files:\n{}",
        in_files.join("\n")
    );
}
