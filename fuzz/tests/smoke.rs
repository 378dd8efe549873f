#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
//! The fuzz targets on stable, without libFuzzer: every target function
//! over its seeds (from memory), its checked-in corpus, its regressions
//! (crashes found by fuzzing, fixed since) and a few thousand deterministic
//! pseudo-random and mutated inputs. Any panic is a failure.
//!
//! `MURMUR_FUZZ_SMOKE_SCALE=N` multiplies the generated inputs (default 1).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use murmur_fuzz::{TARGETS, keys, pseudo_random, seeds};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha20Rng;

fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<_> = rd
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| (p.display().to_string(), std::fs::read(&p).unwrap()))
        .collect();
    out.sort();
    out
}

/// One deterministic mutation of `base`: flips, overwrites with
/// interesting values, truncation, extension, duplication of a slice.
fn mutate(rng: &mut ChaCha20Rng, base: &[u8]) -> Vec<u8> {
    let mut v = base.to_vec();
    for _ in 0..rng.random_range(1..=4) {
        let len = v.len();
        match rng.random_range(0..7) {
            0 if len > 0 => {
                let i = rng.random_range(0..len);
                v[i] ^= 1 << rng.random_range(0..8);
            }
            1 if len > 0 => {
                let i = rng.random_range(0..len);
                v[i] = [0x00, 0xff, 0x7f, 0x80, 0x01][rng.random_range(0..5)];
            }
            2 if len > 0 => v.truncate(rng.random_range(0..len)),
            3 => {
                let n = rng.random_range(1..64);
                let at = rng.random_range(0..=len);
                let extra: Vec<u8> = (0..n).map(|_| rng.random()).collect();
                v.splice(at..at, extra);
            }
            4 if len > 8 => {
                let a = rng.random_range(0..len - 4);
                let b = rng.random_range(a..len);
                let slice = v[a..b].to_vec();
                let at = rng.random_range(0..=v.len());
                v.splice(at..at, slice);
            }
            5 if len > 4 => {
                // A length-ish field: an extreme varint or u32.
                let i = rng.random_range(0..len - 4);
                v[i..i + 4].copy_from_slice(&[0xff, 0xff, 0xff, 0x0f]);
            }
            _ => v.push(rng.random()),
        }
    }
    v
}

/// Generated inputs per target (before scaling).
fn budget(target: &str) -> usize {
    match target {
        // Base58 of long inputs is quadratic in the (bounded) length.
        "invitation" => 1500,
        // Every input runs one or two whole handshakes (ML-KEM, X25519).
        "link" => 600,
        _ => 2500,
    }
}

#[test]
fn every_target_survives_its_corpus_regressions_and_generated_inputs() {
    let scale: usize = std::env::var("MURMUR_FUZZ_SMOKE_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut by_target: BTreeMap<&str, Vec<Vec<u8>>> = BTreeMap::new();
    for (t, _, bytes) in seeds::all() {
        by_target.entry(t).or_default().push(bytes);
    }
    let mut total = 0usize;
    for &(name, f) in TARGETS {
        let start = Instant::now();
        let mut bases = by_target.remove(name).unwrap_or_default();
        assert!(!bases.is_empty(), "{name} has no seeds");
        for (path, bytes) in files(&root.join("regressions").join(name)) {
            eprintln!("replaying {path}");
            f(&bytes);
        }
        let corpus = files(&root.join("corpus").join(name));
        assert!(!corpus.is_empty(), "{name} has no checked-in corpus");
        for (_, bytes) in &corpus {
            f(bytes);
        }
        for b in &bases {
            f(b);
        }
        bases.extend(corpus.into_iter().map(|(_, b)| b).take(64));
        let mut rng = ChaCha20Rng::seed_from_u64(name.len() as u64 * 7919);
        let n = budget(name) * scale;
        for i in 0..n {
            let input = if i % 3 == 0 {
                let len = [0, 1, 2, 7, 16, 33, 100, 300, 1000, 3000][i % 10];
                pseudo_random(i as u64, len)
            } else {
                let base = &bases[rng.random_range(0..bases.len())];
                mutate(&mut rng, base)
            };
            f(&input);
        }
        total += n;
        eprintln!("{name}: {n} generated inputs in {:?}", start.elapsed());
    }
    assert!(
        by_target.is_empty(),
        "seeds for unknown targets: {:?}",
        by_target.keys()
    );
    eprintln!("{total} generated inputs in all");
}

/// The structure-aware sphinx target must get packets through whole routes,
/// not stop at building them.
#[test]
fn structured_sphinx_inputs_reach_delivery() {
    let delivered = (0..1000u64)
        .filter(|i| murmur_fuzz::sphinx_structured_delivers(&pseudo_random(*i, 600)))
        .count();
    assert!(
        delivered >= 10,
        "only {delivered} of 1000 inputs were delivered"
    );
}

/// The structure-aware modes repeat some of the crates' internal steps
/// (signature context, fragment key derivation, sealed-sender suite) with
/// the fixed keys. If a crate changes them, these fail, rather than the
/// modes silently stopping at the signature or tag check.
#[test]
fn structure_aware_helpers_agree_with_the_crates() {
    use murmur_client::fragment;
    use murmur_client::seal::{self, Body, Envelope};
    use murmur_wire::MessageId;

    let body = postcard::to_stdvec(&seeds::consensus_doc()).unwrap();
    let signed = keys::sign_consensus_body(body, 0b011);
    let v = signed
        .verify(&keys::authority_set(), keys::NOW, Some(keys::EPOCH))
        .unwrap();
    assert!(v.is_routable());

    let (key, queue) = keys::fragment_key();
    let mut plain = vec![0u8; murmur_wire::DEPOSIT_BODY_SIZE - 40];
    plain[19] = 0; // index 0
    plain[23] = 1; // count 1
    plain[25] = 3; // len 3
    plain[26..29].copy_from_slice(b"abc");
    let f = fragment::open(&key, &queue, &keys::encrypt_fragment(&plain, 1)).unwrap();
    assert_eq!(f.chunk, b"abc");

    let env = Envelope::new(MessageId::from_bytes([1; 16]), 5, Body::Text("x".into()));
    let sealed = keys::seal_plaintext(&postcard::to_stdvec(&env).unwrap());
    let opened = seal::open(
        &keys::recipient_identity(),
        &keys::sender_identity().public(),
        &queue,
        &sealed,
    )
    .unwrap();
    assert_eq!(opened, env);
}

/// The HTTP target really reaches the API: a seeded create-queue request
/// gets a queue, the same request again is refused as a replay (so the
/// first got past the signature check), and unknown paths are 404s.
#[test]
fn the_http_target_serves_real_requests() {
    let create = seeds::all()
        .into_iter()
        .find(|(t, n, _)| *t == "mailbox_http" && n == "create")
        .unwrap()
        .2;
    let status = |out: Vec<u8>| String::from_utf8_lossy(&out[..12.min(out.len())]).into_owned();
    let first = status(murmur_fuzz::mailbox_http_exchange(&create));
    let again = status(murmur_fuzz::mailbox_http_exchange(&create));
    // Another test may have sent the seed first in this process.
    assert!(
        first == "HTTP/1.1 200" || first == "HTTP/1.1 409",
        "{first}"
    );
    assert_eq!(again, "HTTP/1.1 409");
    let missing = status(murmur_fuzz::mailbox_http_exchange(
        b"GET /nope HTTP/1.1\r\nhost: m\r\n\r\n",
    ));
    assert_eq!(missing, "HTTP/1.1 404");
}

/// `final_payload` reaches the provider's whole final-hop path: a seeded
/// deposit is stored and acknowledged through its SURB, and the seeded
/// owner fetch over HTTP then finds the queue.
#[test]
fn the_final_hop_path_stores_and_acknowledges_deposits() {
    let deposit = seeds::all()
        .into_iter()
        .find(|(t, n, _)| *t == "final_payload" && n == "deposit")
        .unwrap()
        .2;
    murmur_fuzz::final_payload(&deposit);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        // Each exchange drives the runtime the acknowledgement task runs on.
        let _ = murmur_fuzz::mailbox_http_exchange(b"GET /healthz HTTP/1.1\r\nhost: m\r\n\r\n");
        let (stored, acked) = murmur_fuzz::mailbox_counts();
        if stored >= 1 && acked >= 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "deposit not stored and acknowledged: {stored} stored, {acked} acks"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
