//! Descriptor and consensus signing and verification, through the public API.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use murmur_wire::directory::{
    AuthoritySignature, CONSENSUS_VERSION, DESCRIPTOR_VERSION, Signature,
};
use murmur_wire::ed25519_dalek::SigningKey;
use murmur_wire::{
    AuthoritySet, Consensus, Descriptor, EpochKey, Error, IdentityKey, LinkSecretKey, MailboxEntry,
    MixEntry, NetworkParams, PACKET_SIZE, Role, SignedConsensus, SignedDescriptor, SignedVote,
    SphinxPublicKey, Vote,
};

fn key(n: u8) -> SigningKey {
    SigningKey::from_bytes(&[n; 32])
}

fn ident(k: &SigningKey) -> IdentityKey {
    IdentityKey::from(&k.verifying_key())
}

fn params() -> NetworkParams {
    NetworkParams {
        epoch_secs: 60,
        mean_delay_us: 50_000,
        max_delay_us: 1_000_000,
        client_rate: 10.0,
        client_loop_rate: 1.0,
        mix_loop_rate: 1.0,
        packet_size: PACKET_SIZE as u32,
    }
}

fn descriptor(k: &SigningKey, role: Role, port: u16) -> Descriptor {
    Descriptor {
        version: DESCRIPTOR_VERSION,
        identity: ident(k),
        role,
        packet_addr: format!("127.0.0.1:{port}").parse().unwrap(),
        http_addr: (role == Role::Mailbox)
            .then(|| format!("127.0.0.1:{}", port + 1000).parse().unwrap()),
        link_key: LinkSecretKey::derive(&k.to_bytes()).public().clone(),
        sphinx_keys: vec![
            EpochKey {
                epoch: 5,
                key: SphinxPublicKey([1; 32]),
            },
            EpochKey {
                epoch: 6,
                key: SphinxPublicKey([2; 32]),
            },
        ],
        published_at: 300,
    }
}

fn consensus(epoch: u64) -> Consensus {
    let mixes = (0..3u8)
        .map(|l| MixEntry {
            layer: l,
            identity: ident(&key(10 + l)),
            packet_addr: format!("127.0.0.1:{}", 9000 + u16::from(l))
                .parse()
                .unwrap(),
            link_key: LinkSecretKey::derive(&[10 + l; 32]).public().clone(),
            sphinx_key: SphinxPublicKey([l; 32]),
        })
        .collect();
    Consensus {
        version: CONSENSUS_VERSION,
        epoch,
        valid_after: epoch * 60,
        valid_until: epoch * 60 + 90,
        params: params(),
        mixes,
        mailboxes: vec![MailboxEntry {
            identity: ident(&key(20)),
            packet_addr: "127.0.0.1:9100".parse().unwrap(),
            http_addr: "127.0.0.1:9101".parse().unwrap(),
            link_key: LinkSecretKey::derive(&[20; 32]).public().clone(),
            sphinx_key: SphinxPublicKey([9; 32]),
        }],
    }
}

fn authorities() -> (Vec<SigningKey>, AuthoritySet) {
    let keys: Vec<SigningKey> = (1..=3).map(key).collect();
    let set = AuthoritySet::new(keys.iter().map(ident).collect(), 2).unwrap();
    (keys, set)
}

#[test]
fn a_signed_descriptor_verifies_and_round_trips() {
    let k = key(1);
    let d = descriptor(&k, Role::Mailbox, 5000);
    let signed = SignedDescriptor::sign(&d, &k).unwrap();
    let wire = signed.to_bytes().unwrap();
    let back = SignedDescriptor::from_bytes(&wire).unwrap();
    let v = back.verify().unwrap();
    assert_eq!(v.descriptor(), &d);
    assert_eq!(v.id(), ident(&k).node_id());
    assert_eq!(d.key_for(6), Some(SphinxPublicKey([2; 32])));
    assert_eq!(d.last_epoch(), Some(6));
}

#[test]
fn a_descriptor_with_a_bad_signature_is_refused() {
    let k = key(1);
    let d = descriptor(&k, Role::Mix, 5000);
    let mut signed = SignedDescriptor::sign(&d, &k).unwrap();
    signed.signature.0[0] ^= 1;
    assert!(matches!(signed.verify(), Err(Error::BadSignature { .. })));

    // Signed by another key than the one inside.
    let signed = SignedDescriptor::sign(&d, &key(2)).unwrap();
    assert!(matches!(signed.verify(), Err(Error::BadSignature { .. })));

    // A body changed after signing.
    let mut signed = SignedDescriptor::sign(&d, &k).unwrap();
    let last = signed.body.len() - 1;
    signed.body[last] ^= 1;
    assert!(signed.verify().is_err());
}

#[test]
fn inconsistent_descriptors_are_refused() {
    let k = key(1);
    let mut d = descriptor(&k, Role::Mix, 5000);
    d.http_addr = Some("127.0.0.1:1".parse().unwrap());
    let err = SignedDescriptor::sign(&d, &k)
        .unwrap()
        .verify()
        .unwrap_err();
    assert!(matches!(err, Error::Invalid { .. }), "{err}");

    let mut d = descriptor(&k, Role::Mailbox, 5000);
    d.http_addr = None;
    assert!(SignedDescriptor::sign(&d, &k).unwrap().verify().is_err());

    let mut d = descriptor(&k, Role::Mix, 5000);
    d.sphinx_keys.clear();
    assert!(SignedDescriptor::sign(&d, &k).unwrap().verify().is_err());

    let mut d = descriptor(&k, Role::Mix, 5000);
    d.sphinx_keys[1].epoch = 9;
    assert!(SignedDescriptor::sign(&d, &k).unwrap().verify().is_err());

    let mut d = descriptor(&k, Role::Mix, 5000);
    d.version = 3;
    let err = SignedDescriptor::sign(&d, &k)
        .unwrap()
        .verify()
        .unwrap_err();
    assert!(
        matches!(err, Error::UnsupportedVersion { version: 3, .. }),
        "{err}"
    );
}

#[test]
fn an_unknown_role_does_not_decode() {
    let k = key(1);
    let d = descriptor(&k, Role::Mix, 5000);
    let mut signed = SignedDescriptor::sign(&d, &k).unwrap();
    // Body layout: version (1 byte), identity (32 bytes), role (varint).
    signed.body[33] = 7;
    assert!(matches!(signed.verify(), Err(Error::Decode { .. })));
}

#[test]
fn a_consensus_with_enough_signatures_verifies() {
    let (keys, set) = authorities();
    let doc = consensus(5);
    let mut signed = SignedConsensus::sign(&doc, &keys[0]).unwrap();
    signed.add_signature(&keys[2]);
    let wire = signed.to_bytes().unwrap();
    let v = SignedConsensus::from_bytes(&wire)
        .unwrap()
        .verify(&set, 5 * 60 + 10, Some(5))
        .unwrap();
    assert_eq!(v.epoch(), 5);
    assert!(v.is_routable());
    assert_eq!(v.layers().len(), 3);
    let mb = &v.mailboxes()[0];
    assert_eq!(
        v.node(&mb.id).unwrap().http_addr,
        Some("127.0.0.1:9101".parse().unwrap())
    );
    assert_eq!(v.node(&v.layers()[1][0].id).unwrap().layer, Some(1));
}

#[test]
fn too_few_signatures_are_refused() {
    let (keys, set) = authorities();
    let signed = SignedConsensus::sign(&consensus(5), &keys[0]).unwrap();
    let err = signed.verify(&set, 300, Some(5)).unwrap_err();
    assert!(
        matches!(
            err,
            Error::UnderThreshold {
                valid: 1,
                required: 2,
                invalid: 0
            }
        ),
        "{err}"
    );
    // The same authority twice counts once.
    let mut twice = signed.clone();
    twice.signatures.push(twice.signatures[0].clone());
    assert!(matches!(
        twice.verify(&set, 300, Some(5)),
        Err(Error::UnderThreshold { valid: 1, .. })
    ));
}

#[test]
fn forged_and_divergent_signatures_do_not_count() {
    let (keys, set) = authorities();
    // Signed by keys nobody pinned.
    let mut forged = SignedConsensus::sign(&consensus(5), &key(99)).unwrap();
    forged.add_signature(&key(98));
    assert!(matches!(
        forged.verify(&set, 300, Some(5)),
        Err(Error::UnderThreshold { valid: 0, .. })
    ));

    // A pinned authority's signature over a different document.
    let honest = SignedConsensus::sign(&consensus(5), &keys[0]).unwrap();
    let mut other = consensus(5);
    other.mixes.pop();
    let divergent = SignedConsensus::sign(&other, &keys[1]).unwrap();
    let mut mixed = honest.clone();
    mixed.signatures.push(divergent.signatures[0].clone());
    let err = mixed.verify(&set, 300, Some(5)).unwrap_err();
    assert!(
        matches!(
            err,
            Error::UnderThreshold {
                valid: 1,
                invalid: 1,
                ..
            }
        ),
        "{err}"
    );
    // And merging refuses it.
    let mut merged = honest.clone();
    assert!(!merged.merge_signature(&divergent.signatures[0]));
    // A signature with a flipped bit.
    let mut bad = honest;
    bad.signatures.push(AuthoritySignature {
        authority: ident(&keys[2]),
        signature: Signature([0; 64]),
    });
    assert!(matches!(
        bad.verify(&set, 300, Some(5)),
        Err(Error::UnderThreshold {
            valid: 1,
            invalid: 1,
            ..
        })
    ));
}

#[test]
fn wrong_epoch_expired_and_early_documents_are_refused() {
    let (keys, set) = authorities();
    let mut signed = SignedConsensus::sign(&consensus(5), &keys[0]).unwrap();
    signed.add_signature(&keys[1]);
    assert!(matches!(
        signed.verify(&set, 300, Some(6)),
        Err(Error::WrongEpoch {
            expected: 6,
            actual: 5
        })
    ));
    assert!(matches!(
        signed.verify(&set, 5 * 60 + 90, Some(5)),
        Err(Error::Expired { .. })
    ));
    // Up to one epoch early is fine (the next document is fetched ahead)...
    assert!(signed.verify(&set, 5 * 60 - 60, Some(5)).is_ok());
    // ...earlier is not.
    assert!(matches!(
        signed.verify(&set, 5 * 60 - 61, Some(5)),
        Err(Error::NotYetValid { .. })
    ));
}

#[test]
fn inconsistent_consensus_contents_are_refused_even_when_signed() {
    let (keys, set) = authorities();
    let mut doc = consensus(5);
    doc.mixes[0].layer = 3;
    let mut signed = SignedConsensus::sign(&doc, &keys[0]).unwrap();
    signed.add_signature(&keys[1]);
    assert!(matches!(
        signed.verify(&set, 300, None),
        Err(Error::Invalid { .. })
    ));

    let mut doc = consensus(5);
    doc.mixes.push(doc.mixes[0].clone());
    let mut signed = SignedConsensus::sign(&doc, &keys[0]).unwrap();
    signed.add_signature(&keys[1]);
    assert!(matches!(
        signed.verify(&set, 300, None),
        Err(Error::Invalid { .. })
    ));

    let mut doc = consensus(5);
    doc.params.client_rate = f64::NAN;
    let mut signed = SignedConsensus::sign(&doc, &keys[0]).unwrap();
    signed.add_signature(&keys[1]);
    assert!(matches!(
        signed.verify(&set, 300, None),
        Err(Error::Invalid { .. })
    ));
}

#[test]
fn votes_verify_for_their_authority_and_epoch_only() {
    let k = key(1);
    let vote = Vote {
        version: 1,
        epoch: 6,
        authority: ident(&k),
        params: params(),
        descriptors: vec![
            SignedDescriptor::sign(&descriptor(&key(5), Role::Mix, 1), &key(5)).unwrap(),
        ],
    };
    let signed = SignedVote::sign(&vote, &k).unwrap();
    let back = SignedVote::from_bytes(&signed.to_bytes().unwrap()).unwrap();
    assert_eq!(back.verify(&ident(&k), 6).unwrap(), vote);
    assert!(matches!(
        back.verify(&ident(&k), 7),
        Err(Error::WrongEpoch { .. })
    ));
    assert!(back.verify(&ident(&key(2)), 6).is_err());
    let mut tampered = back;
    tampered.signature.0[5] ^= 1;
    assert!(matches!(
        tampered.verify(&ident(&k), 6),
        Err(Error::BadSignature { .. })
    ));
}
