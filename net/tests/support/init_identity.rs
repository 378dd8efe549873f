//! What every daemon binary's `init` does with its identity key, checked
//! the same way for each (`murmur-directory`, `murmur-mixnode`,
//! `murmur-mailbox` include this file): `init --force` rewrites the
//! configuration and keeps the key; `init --force --new-identity` replaces
//! the key and names the one it replaced; without `--force` an existing
//! configuration is refused.

use std::path::Path;
use std::process::Command;

use murmur_wire::IdentityKey;

/// Runs the checks against the binary `bin`, whose `init --dir DIR` writes
/// `DIR/key_file` and `DIR/config_file`.
pub(crate) fn init_force_keeps_the_key_and_new_identity_replaces_it(
    bin: &str,
    key_file: &str,
    config_file: &str,
) {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let init = |extra: &[&str]| {
        let out = Command::new(bin)
            .args(["init", "--dir"])
            .arg(&home)
            .args(extra)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    };
    let public = || public_key(&home.join(key_file));
    let config = home.join(config_file);

    let (ok, out) = init(&[]);
    assert!(ok, "{out}");
    let first = public();
    std::fs::write(&config, "# edited\n").unwrap();

    let (ok, out) = init(&[]);
    assert!(!ok, "{out}");
    assert!(out.contains("--force"), "{out}");
    assert_eq!(std::fs::read_to_string(&config).unwrap(), "# edited\n");

    let (ok, out) = init(&["--force"]);
    assert!(ok, "{out}");
    assert!(out.contains("kept the existing identity key"), "{out}");
    assert_eq!(public(), first);
    assert!(
        !std::fs::read_to_string(&config)
            .unwrap()
            .contains("# edited")
    );

    let (ok, out) = init(&["--force", "--new-identity"]);
    assert!(ok, "{out}");
    let second = public();
    assert_ne!(second, first);
    assert!(out.contains("replaced the identity key"), "{out}");
    assert!(out.contains(&first.to_base58()), "{out}");
    assert!(out.contains(&second.to_base58()), "{out}");
}

fn public_key(path: &Path) -> IdentityKey {
    let key = murmur_net::keyfile::read_signing_key(path).unwrap();
    IdentityKey::from(&key.verifying_key())
}
