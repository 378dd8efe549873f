#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
//! Writes the seed corpora: `cargo test --manifest-path fuzz/Cargo.toml
//! --test seeds -- --ignored`. Run it after a wire format change; the files
//! are checked in under `corpus/<target>/seed-<name>`.

use std::path::Path;

#[test]
#[ignore = "writes the checked-in seed corpora"]
fn write_seed_corpora() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    for (target, name, bytes) in murmur_fuzz::seeds::all() {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("seed-{name}")), bytes).unwrap();
    }
}
