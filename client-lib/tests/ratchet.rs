#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
//! The relation's ratchet, through the sealing API the client uses: the
//! hello (X-Wing, post-quantum) seeds it, then every message is ratcheted.
//! Forward secrecy, post-compromise security, loss and reordering, replay.

use murmur_client::identity::Identity;
use murmur_client::ratchet::{MAX_SKIP, Ratchet};
use murmur_client::seal::{self, Body, Envelope};
use murmur_wire::{MessageId, NodeId, QueueId};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

/// Alice accepted Bob's invitation; Bob invited. Alice writes into
/// `to_bob`, Bob into `to_alice`.
struct Pair {
    rng: ChaCha20Rng,
    alice: Identity,
    bob: Identity,
    alice_r: Ratchet,
    bob_r: Ratchet,
    to_bob: QueueId,
    to_alice: QueueId,
    hello: Vec<u8>,
    n: u32,
}

fn text(n: u32) -> Envelope {
    let mut id = [0u8; 16];
    id[..4].copy_from_slice(&n.to_be_bytes());
    Envelope::new(
        MessageId::from_bytes(id),
        u64::from(n),
        Body::Text(format!("message {n}")),
    )
}

impl Pair {
    fn new(seed: u64) -> Self {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let alice = Identity::generate(&mut rng);
        let bob = Identity::generate(&mut rng);
        let to_bob = QueueId::from_bytes([1; 32]);
        let to_alice = QueueId::from_bytes([2; 32]);
        let hello = Envelope::new(
            MessageId::from_bytes([0; 16]),
            0,
            Body::Hello {
                reply_provider: NodeId::from_bytes([3; 32]),
                reply_queue: to_alice,
                name: "alice".into(),
            },
        );
        let (sealed, alice_r) = seal::seal_hello(
            &mut rng,
            &alice,
            (&bob.public(), bob.pq_public()),
            &to_bob,
            &hello,
        )
        .unwrap();
        assert!(!alice_r.can_send());
        let (opened, bob_r) =
            seal::open_hello(&mut rng, &bob, &alice.public(), &to_bob, &sealed).unwrap();
        assert_eq!(opened.body, hello.body);
        let bob_r = bob_r.expect("a hello starts the ratchet");
        Self {
            rng,
            alice,
            bob,
            alice_r,
            bob_r,
            to_bob,
            to_alice,
            hello: sealed,
            n: 0,
        }
    }

    fn next(&mut self) -> Envelope {
        self.n += 1;
        text(self.n)
    }

    fn bob_sends(&mut self) -> (Envelope, Vec<u8>) {
        let e = self.next();
        let sealed = seal::seal_ratcheted(&mut self.bob_r, &self.to_alice, &e).unwrap();
        (e, sealed)
    }

    fn alice_sends(&mut self) -> (Envelope, Vec<u8>) {
        let e = self.next();
        let sealed = seal::seal_ratcheted(&mut self.alice_r, &self.to_bob, &e).unwrap();
        (e, sealed)
    }

    fn alice_opens(&mut self, sealed: &[u8]) -> murmur_client::Result<Envelope> {
        seal::open_ratcheted(&mut self.alice_r, &mut self.rng, &self.to_alice, sealed)
    }

    fn bob_opens(&mut self, sealed: &[u8]) -> murmur_client::Result<Envelope> {
        seal::open_ratcheted(&mut self.bob_r, &mut self.rng, &self.to_bob, sealed)
    }

    /// Bob writes, Alice answers, both open.
    fn round_trip(&mut self) {
        let (e, s) = self.bob_sends();
        assert_eq!(self.alice_opens(&s).unwrap(), e);
        let (e, s) = self.alice_sends();
        assert_eq!(self.bob_opens(&s).unwrap(), e);
    }
}

/// What a device seizure yields: the state as stored.
fn seize(r: &Ratchet) -> Ratchet {
    postcard::from_bytes(&postcard::to_stdvec(r).unwrap()).unwrap()
}

#[test]
fn the_responder_cannot_send_until_the_initiator_wrote() {
    let mut p = Pair::new(1);
    let e = text(9);
    assert!(seal::seal_ratcheted(&mut p.alice_r, &p.to_bob, &e).is_err());
    p.round_trip();
    assert!(p.alice_r.can_send());
}

#[test]
fn a_recorded_message_does_not_open_with_the_long_term_keys_after_the_ratchet_advances() {
    let mut p = Pair::new(2);
    // Recorded by an adversary on the way.
    let (e, recorded) = p.bob_sends();
    assert_eq!(p.alice_opens(&recorded).unwrap(), e);
    p.round_trip();
    p.round_trip();

    // Later both devices are seized: long-term keys and current ratchets.
    let alice = Identity::from_secrets(*p.alice.secret_bytes(), *p.alice.pq_seed());
    let bob = Identity::from_secrets(*p.bob.secret_bytes(), *p.bob.pq_seed());
    let mut rng = ChaCha20Rng::seed_from_u64(99);

    // The recorded message is no X-Wing seal the identity keys open.
    assert!(seal::open(&alice, &bob.public(), &p.to_alice, &recorded).is_err());
    assert!(seal::open(&bob, &alice.public(), &p.to_alice, &recorded).is_err());
    // The seized ratchets no longer hold its key.
    let mut alice_now = seize(&p.alice_r);
    assert!(seal::open_ratcheted(&mut alice_now, &mut rng, &p.to_alice, &recorded).is_err());
    // The recorded hello still opens with Bob's long-term keys (it is the
    // handshake, sealed to them), and yields the handshake secret — but not
    // the ratchet key pairs, which were random and are erased: a ratchet
    // rebuilt from it opens nothing that was recorded.
    let (_, rebuilt) =
        seal::open_hello(&mut rng, &bob, &alice.public(), &p.to_bob, &p.hello).unwrap();
    let mut rebuilt = rebuilt.unwrap();
    assert!(seal::open_ratcheted(&mut rebuilt, &mut rng, &p.to_alice, &recorded).is_err());
    // Nor does a responder that guesses Alice's identity key as her
    // ratchet key.
    let mut guess = Ratchet::responder(&[0; 32], alice.secret_bytes());
    assert!(seal::open_ratcheted(&mut guess, &mut rng, &p.to_alice, &recorded).is_err());
}

#[test]
fn a_compromised_state_heals_after_a_round_trip() {
    let mut p = Pair::new(3);
    p.round_trip();
    // Alice wrote last and Bob opened it: Bob's state is stolen now.
    let mut eve = seize(&p.bob_r);
    let mut eve_rng = ChaCha20Rng::seed_from_u64(666);

    // Until Bob ratchets with a key Eve does not know, Eve reads along.
    let (e, s) = p.alice_sends();
    assert_eq!(
        seal::open_ratcheted(&mut eve, &mut eve_rng, &p.to_bob, &s).unwrap(),
        e
    );
    assert_eq!(p.bob_opens(&s).unwrap(), e);

    // A round trip: Bob writes, Alice answers (with a new key), Bob writes
    // with a fresh key pair, Alice answers it.
    p.round_trip();
    p.round_trip();

    // From here on Eve's copy is useless, whatever she tries.
    for _ in 0..3 {
        let (e, s) = p.alice_sends();
        assert!(seal::open_ratcheted(&mut eve, &mut eve_rng, &p.to_bob, &s).is_err());
        assert_eq!(p.bob_opens(&s).unwrap(), e);
        p.round_trip();
    }
}

#[test]
fn late_and_lost_messages_within_the_window_still_open() {
    let mut p = Pair::new(4);
    let sent: Vec<(Envelope, Vec<u8>)> = (0..10).map(|_| p.bob_sends()).collect();
    // The mixnet reorders: 3, 1, 10, 2 first; 5 is lost for now.
    for i in [2, 0, 9, 1] {
        assert_eq!(p.alice_opens(&sent[i].1).unwrap(), sent[i].0, "message {i}");
    }
    // A new chain in each direction, and still the older ones open.
    let (e, s) = p.alice_sends();
    assert_eq!(p.bob_opens(&s).unwrap(), e);
    let newer: Vec<(Envelope, Vec<u8>)> = (0..3).map(|_| p.bob_sends()).collect();
    assert_eq!(p.alice_opens(&newer[2].1).unwrap(), newer[2].0);
    for i in [8, 3, 6, 5, 7] {
        assert_eq!(p.alice_opens(&sent[i].1).unwrap(), sent[i].0, "message {i}");
    }
    assert_eq!(p.alice_opens(&newer[0].1).unwrap(), newer[0].0);
    // Message 5 (index 4) and newer[1] never come: their keys stay
    // bounded, and the relation goes on.
    assert_eq!(p.alice_r.skipped_keys(), 2);
    p.round_trip();

    // A gap beyond the bound is refused.
    let mut last = Vec::new();
    for _ in 0..=MAX_SKIP + 1 {
        last = p.bob_sends().1;
    }
    assert!(p.alice_opens(&last).is_err());
}

#[test]
fn a_replayed_ciphertext_is_refused() {
    let mut p = Pair::new(5);
    let (e1, s1) = p.bob_sends();
    let (e2, s2) = p.bob_sends();
    let (e3, s3) = p.bob_sends();
    assert_eq!(p.alice_opens(&s1).unwrap(), e1);
    assert!(p.alice_opens(&s1).is_err(), "replay of an opened message");
    // Out of order: 3 before 2, then each replayed.
    assert_eq!(p.alice_opens(&s3).unwrap(), e3);
    assert_eq!(p.alice_opens(&s2).unwrap(), e2);
    assert!(
        p.alice_opens(&s2).is_err(),
        "replay of a skipped-key message"
    );
    assert!(p.alice_opens(&s3).is_err());
    // A replay changes nothing: the relation goes on.
    p.round_trip();
    assert!(p.alice_opens(&s1).is_err());
    // A ratchet message moved to another queue does not open either.
    let (_, s) = p.bob_sends();
    assert!(seal::open_ratcheted(&mut p.alice_r, &mut p.rng, &p.to_bob, &s).is_err());
    // The hello itself, replayed, opens (it is an X-Wing seal) but the
    // client starts a ratchet only from the hello that establishes the
    // relation (client-lib/src/receive.rs).
}

#[test]
fn ratchet_overhead_is_small() {
    let mut p = Pair::new(6);
    let e = p.next();
    let plain = postcard::to_stdvec(&e).unwrap().len();
    let sealed = seal::seal_ratcheted(&mut p.bob_r, &p.to_alice, &e).unwrap();
    assert_eq!(sealed.len(), plain + seal::RATCHET_SEAL_OVERHEAD);
    assert_eq!(seal::RATCHET_SEAL_OVERHEAD, 2 + 40 + 16);
    // The goal: under 10 % of what one packet carries of a sealed message
    // (1982 bytes of its 2048-byte deposit body); it is 2.9 %.
    assert_eq!(murmur_client::fragment::CHUNK_SIZE, 1982);
    const { assert!(seal::RATCHET_SEAL_OVERHEAD * 100 < 3 * murmur_client::fragment::CHUNK_SIZE) };
    // Before: the version 1 seal, 81 bytes.
    const { assert!(seal::RATCHET_SEAL_OVERHEAD < 81) };
}
