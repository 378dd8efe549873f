#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
//! Writes the seed corpora: `cargo test --manifest-path fuzz/Cargo.toml
//! --test seeds -- --ignored`. The files are checked in under
//! `corpus/<target>/seed-<name>`. Existing files are kept (the Sphinx
//! library pads packets with fresh randomness, so a rewrite would change
//! every packet seed for nothing) unless `MURMUR_FUZZ_RESEED=1` is set:
//! do that after a wire format change.

use std::path::Path;

#[test]
#[ignore = "writes the checked-in seed corpora"]
fn write_seed_corpora() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    for (target, name, bytes) in murmur_fuzz::seeds::all() {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("seed-{name}"));
        if path.exists() && std::env::var_os("MURMUR_FUZZ_RESEED").is_none() {
            continue;
        }
        std::fs::write(path, bytes).unwrap();
    }
}
