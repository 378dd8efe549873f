//! What a stolen client database shows: the files of a client home are
//! searched, byte for byte, for everything the client stored — a contact's
//! name, an outgoing text, a received text, the chunks of a partial
//! message, queue ids, message ids, keys. None is there. A control proves
//! the search finds the same things in a file written in plaintext.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::path::Path;

use murmur_client::store::{
    ContactRecord, ContactState, InFragment, KdfParams, OutFragment, OutMessage, OutState,
    OwnedQueue, Profile, Store,
};
use murmur_client::{Body, Error, Passphrase, Received};
use murmur_wire::{MessageId, NodeId, QueueId};
use rand::Rng;

const CHEAP: KdfParams = KdfParams {
    memory_kib: 256,
    passes: 1,
    lanes: 1,
};

/// Every (what, bytes) the client stores that must not be readable.
struct Secrets(Vec<(String, Vec<u8>)>);

impl Secrets {
    fn add(&mut self, what: &str, bytes: impl AsRef<[u8]>) {
        self.0.push((what.to_owned(), bytes.as_ref().to_vec()));
    }

    /// Which of them are somewhere in the files under `dir`.
    fn found_in(&self, dir: &Path) -> Vec<String> {
        let mut files = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_file() {
                files.push((path.display().to_string(), std::fs::read(&path).unwrap()));
            }
        }
        assert!(!files.is_empty());
        let mut found = Vec::new();
        for (what, needle) in &self.0 {
            for (name, bytes) in &files {
                if bytes.windows(needle.len()).any(|w| w == needle.as_slice()) {
                    found.push(format!("{what} in {name}"));
                }
            }
        }
        found
    }
}

fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    rand::rng().fill_bytes(&mut b);
    b
}

fn owned(queue: QueueId) -> OwnedQueue {
    OwnedQueue {
        provider: NodeId::from_bytes(random()),
        queue,
        owner_secret: random(),
    }
}

#[test]
fn nothing_the_client_stores_can_be_read_from_its_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("client.redb");
    let mut secrets = Secrets(Vec::new());
    let store = Store::create_with(&path, &Passphrase::new("a long passphrase"), CHEAP).unwrap();

    // Who we are.
    let identity_secret: [u8; 32] = random();
    let ack_queue = owned(QueueId::from_bytes(random()));
    let loop_queue = owned(QueueId::from_bytes(random()));
    secrets.add("identity secret", identity_secret);
    secrets.add("profile name", "profile-name-kestrel");
    secrets.add("ack queue id", ack_queue.queue.to_bytes());
    secrets.add("ack queue owner key", ack_queue.owner_secret);
    secrets.add("loop queue id", loop_queue.queue.to_bytes());
    store
        .set_profile(&Profile {
            identity_secret,
            name: "profile-name-kestrel".into(),
            home_provider: NodeId::from_bytes(random()),
            ack_queue,
            loop_queue,
        })
        .unwrap();

    // A contact.
    let their_queue = QueueId::from_bytes(random());
    let inbox_queue = QueueId::from_bytes(random());
    let contact_secret: [u8; 32] = random();
    secrets.add("contact name", "zebra-contact-name");
    secrets.add("contact's queue id", their_queue.to_bytes());
    secrets.add("our inbox queue id for the contact", inbox_queue.to_bytes());
    secrets.add("contact secret", contact_secret);
    store
        .add_contact(&ContactRecord {
            name: "zebra-contact-name".into(),
            state: ContactState::Established,
            identity: None,
            address: Some((NodeId::from_bytes(random()), their_queue)),
            secret: contact_secret,
            inbox: owned(inbox_queue),
            created_ms: 1,
            provisional_name: false,
            pq_identity: None,
            known_to_them: true,
        })
        .unwrap();

    // An outgoing text: the fragments here carry the text itself, to see
    // that whatever a fragment holds is sealed.
    let out_id = MessageId::from_bytes(random());
    let deposit_id = MessageId::from_bytes(random());
    let out_text = "outgoing-text-meet-at-the-old-mill";
    secrets.add("outgoing message id", out_id.to_bytes());
    secrets.add("deposit id", deposit_id.to_bytes());
    secrets.add("outgoing text", out_text);
    store
        .enqueue(
            out_id,
            &OutMessage {
                contact: "zebra-contact-name".into(),
                fragments: 1,
                acked: 0,
                state: OutState::Sending,
                created_ms: 2,
                provider: NodeId::from_bytes(random()),
                queue: their_queue,
            },
            &[OutFragment {
                deposit_id,
                body: out_text.as_bytes().repeat(4),
                acked: false,
            }],
        )
        .unwrap();

    // A received text, delivered.
    let in_id = MessageId::from_bytes(random());
    let in_text = "incoming-text-the-eagle-has-landed";
    secrets.add("received message id", in_id.to_bytes());
    secrets.add("received text", in_text);
    store
        .deliver(
            &inbox_queue,
            &Received {
                from: "zebra-contact-name".into(),
                message_id: in_id,
                sent_at_ms: 3,
                received_at_ms: 4,
                body: Body::Text(in_text.into()),
                read: false,
            },
        )
        .unwrap();

    // A message half received.
    let partial_id = MessageId::from_bytes(random());
    let chunk = b"partial-chunk-plaintext-of-a-file".repeat(20);
    secrets.add("partial message id", partial_id.to_bytes());
    secrets.add("partial chunk", &chunk[..33]);
    store
        .add_fragments(
            &inbox_queue,
            &[
                InFragment {
                    message: partial_id,
                    index: 0,
                    count: 3,
                    chunk: &chunk,
                },
                InFragment {
                    message: partial_id,
                    index: 2,
                    count: 3,
                    chunk: &chunk,
                },
            ],
            5,
        )
        .unwrap();
    // And read back, so the store is known to hold it all.
    assert_eq!(store.contacts().unwrap()[0].name, "zebra-contact-name");
    assert_eq!(store.inbox(false).unwrap().len(), 1);
    assert_eq!(store.unacked().unwrap(), vec![(out_id, 0)]);
    assert_eq!(store.partials().unwrap()[0].have, vec![0, 2]);
    drop(store);

    let found = secrets.found_in(dir.path());
    assert!(
        found.is_empty(),
        "readable in the client's files:\n{}",
        found.join("\n")
    );

    // The control: the same search finds them all in plaintext.
    let control = tempfile::tempdir().unwrap();
    let mut plain = Vec::new();
    for (_, bytes) in &secrets.0 {
        plain.extend_from_slice(b"..");
        plain.extend_from_slice(bytes);
    }
    std::fs::write(control.path().join("plain.bin"), &plain).unwrap();
    assert_eq!(secrets.found_in(control.path()).len(), secrets.0.len());

    // With the passphrase, everything is there.
    let store = Store::open(&path, &Passphrase::new("a long passphrase")).unwrap();
    assert_eq!(
        store.profile().unwrap().unwrap().identity_secret,
        identity_secret
    );
    assert!(store.was_delivered(&in_id).unwrap());
    drop(store);
    assert!(matches!(
        Store::open(&path, &Passphrase::new("a long passphrase.")),
        Err(Error::WrongPassphrase { .. })
    ));
}
