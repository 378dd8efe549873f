//! A client home from before post-quantum keys: the client gets an X-Wing
//! key when it is opened, and refuses to write to (or show a safety number
//! for) a contact it has no X-Wing key of, with an error saying what to do.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::sync::Arc;

use murmur_client::identity::IdentityPublic;
use murmur_client::store::{ContactRecord, ContactState, KdfParams, OwnedQueue, Profile, Store};
use murmur_client::{Client, ClientOptions, ConsensusSource, Error, Passphrase};
use murmur_wire::{NodeId, QueueId, VerifiedConsensus};

const CHEAP: KdfParams = KdfParams {
    memory_kib: 256,
    passes: 1,
    lanes: 1,
};

/// No network: nothing here needs one.
struct Offline;

impl ConsensusSource for Offline {
    fn current(&self) -> Option<Arc<VerifiedConsensus>> {
        None
    }
    fn unavailable_reason(&self) -> Option<String> {
        Some("offline test".into())
    }
}

fn owned(n: u8) -> OwnedQueue {
    OwnedQueue {
        provider: NodeId::from_bytes([1; 32]),
        queue: QueueId::from_bytes([n; 32]),
        owner_secret: [n; 32],
    }
}

#[tokio::test]
async fn an_old_home_gets_a_post_quantum_key_and_refuses_its_old_contacts() {
    let dir = tempfile::tempdir().unwrap();
    let pass = Passphrase::new("a long passphrase");
    {
        // As the previous version left it: a profile, no X-Wing seed, and
        // an established contact without an X-Wing key.
        let store = Store::create_with(&dir.path().join("client.redb"), &pass, CHEAP).unwrap();
        store
            .set_profile(&Profile {
                identity_secret: [9; 32],
                name: "alice".into(),
                home_provider: NodeId::from_bytes([1; 32]),
                ack_queue: owned(1),
                loop_queue: owned(2),
            })
            .unwrap();
        store
            .add_contact(&ContactRecord {
                name: "old-friend".into(),
                state: ContactState::Established,
                identity: Some(IdentityPublic([5; 32])),
                address: Some((NodeId::from_bytes([1; 32]), QueueId::from_bytes([4; 32]))),
                secret: [6; 32],
                inbox: owned(3),
                created_ms: 0,
                provisional_name: false,
                pq_identity: None,
                known_to_them: true,
            })
            .unwrap();
    }
    let client = Client::open(
        dir.path(),
        Arc::new(Offline),
        ClientOptions::default(),
        &pass,
    )
    .await
    .unwrap();
    match client.send_text("old-friend", "hello").await {
        Err(e @ Error::LegacyContact { .. }) => {
            assert!(e.to_string().contains("new invitation"), "{e}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(matches!(
        client.safety_number("old-friend"),
        Err(Error::LegacyContact { .. })
    ));
    assert_eq!(client.contacts().unwrap().len(), 1);
    client.shutdown().await;

    // The X-Wing seed it made is stored, and stays.
    let store = Store::open(&dir.path().join("client.redb"), &pass).unwrap();
    let seed = store.pq_seed().unwrap().expect("a seed was stored").0;
    drop(store);
    let client = Client::open(
        dir.path(),
        Arc::new(Offline),
        ClientOptions::default(),
        &pass,
    )
    .await
    .unwrap();
    client.shutdown().await;
    let store = Store::open(&dir.path().join("client.redb"), &pass).unwrap();
    assert_eq!(store.pq_seed().unwrap().unwrap().0, seed);
}
