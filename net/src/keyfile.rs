//! Identity key files: the one on-disk format of every daemon's long-term
//! Ed25519 key — the directory authority's `authority.key`, a mix node's and
//! a mailbox provider's `identity.key`, and the keys `murmur devnet` keeps.
//!
//! The format: the base58 text of the 32-byte Ed25519 seed, on one line,
//! in a file only its owner may read or write (mode 0600). Files are created
//! with that mode from the start, written whole and fsynced. Reading also
//! accepts the raw 32 bytes of the seed, which `murmur devnet` wrote before
//! this module existed; nothing writes that form any more.
//!
//! A key file that group or others may access is refused, as is one that is
//! neither form: the error names the file and says what is wrong.
//! [`init_identity`] is what every daemon's `init` does with its key: keep
//! it, make it, or — only when asked — replace it.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use murmur_wire::IdentityKey;
use murmur_wire::ed25519_dalek::SigningKey;
use zeroize::Zeroizing;

use crate::fsutil;

/// The length of a seed, in bytes.
const SEED_LEN: usize = 32;

/// Why a key file could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyFileError {
    /// The file could not be read (missing, unreadable, ...).
    #[error("could not read the key file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// The file may be read or written by other users than its owner.
    #[error(
        "the key file {path} has mode {mode:o}: other users may read or change it; run chmod 600 on it"
    )]
    Permissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The file does not hold a key in either form.
    #[error(
        "the key file {path} is not an identity key (expected the base58 text of a 32-byte Ed25519 seed)"
    )]
    Malformed {
        /// The file.
        path: PathBuf,
    },
    /// A new key file was to be created where one exists.
    #[error("the key file {path} exists; it is not overwritten")]
    Exists {
        /// The file.
        path: PathBuf,
    },
    /// The file could not be written.
    #[error("could not write the key file {path}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
}

impl KeyFileError {
    /// The key file concerned.
    pub fn path(&self) -> &Path {
        match self {
            Self::Read { path, .. }
            | Self::Permissions { path, .. }
            | Self::Malformed { path }
            | Self::Exists { path }
            | Self::Write { path, .. } => path,
        }
    }
}

/// Reads the Ed25519 signing key in `path`: base58 text (what every daemon
/// writes), or the raw 32 bytes older devnets wrote.
pub fn read_signing_key(path: &Path) -> Result<SigningKey, KeyFileError> {
    let read_err = |source| KeyFileError::Read {
        path: path.to_owned(),
        source,
    };
    let mode = fs::metadata(path).map_err(read_err)?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyFileError::Permissions {
            path: path.to_owned(),
            mode,
        });
    }
    let bytes = Zeroizing::new(fs::read(path).map_err(read_err)?);
    parse(&bytes).ok_or_else(|| KeyFileError::Malformed {
        path: path.to_owned(),
    })
}

/// The key in a file's contents, in either form.
fn parse(bytes: &[u8]) -> Option<SigningKey> {
    let mut seed = Zeroizing::new([0u8; SEED_LEN]);
    if let Ok(text) = std::str::from_utf8(bytes)
        && let Ok(SEED_LEN) = bs58::decode(text.trim()).onto(&mut seed[..])
    {
        return Some(SigningKey::from_bytes(&seed));
    }
    // The base58 text of a seed is at least 33 bytes with its newline: a
    // file of exactly 32 bytes that is not base58 is the raw form.
    let raw: &[u8; SEED_LEN] = bytes.try_into().ok()?;
    Some(SigningKey::from_bytes(raw))
}

/// The file's contents for `key`.
fn encode(key: &SigningKey) -> Zeroizing<String> {
    Zeroizing::new(format!("{}\n", bs58::encode(key.to_bytes()).into_string()))
}

/// Writes `key` into a new file `path` (mode 0600 from the start, fsynced,
/// and the directory fsynced). An existing file is never overwritten:
/// [`KeyFileError::Exists`].
pub fn write_new(path: &Path, key: &SigningKey) -> Result<(), KeyFileError> {
    fsutil::create_private(path, |f| f.write_all(encode(key).as_bytes())).map_err(|source| {
        if source.kind() == io::ErrorKind::AlreadyExists {
            KeyFileError::Exists {
                path: path.to_owned(),
            }
        } else {
            KeyFileError::Write {
                path: path.to_owned(),
                source,
            }
        }
    })
}

/// Replaces the key in `path` with `key`, atomically
/// ([`fsutil::write_private_with`]).
fn replace(path: &Path, key: &SigningKey) -> Result<(), KeyFileError> {
    fsutil::write_private_with(path, |f| f.write_all(encode(key).as_bytes())).map_err(|source| {
        KeyFileError::Write {
            path: path.to_owned(),
            source,
        }
    })
}

/// Loads the key in `path`, or makes a new one there if there is no file:
/// what `murmur devnet` does for each of its daemons.
pub fn load_or_create(path: &Path) -> Result<SigningKey, KeyFileError> {
    match read_signing_key(path) {
        Err(KeyFileError::Read { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
            let key = SigningKey::generate(&mut rand::rng());
            write_new(path, &key)?;
            Ok(key)
        }
        other => other,
    }
}

/// What [`init_identity`] did with the identity key file.
#[derive(Debug)]
#[non_exhaustive]
pub enum InitIdentity {
    /// There was none: a new key was made.
    Created(SigningKey),
    /// The existing key was kept.
    Kept(SigningKey),
    /// The existing file was replaced by a new key, as asked.
    Replaced {
        /// The public half of the key that was replaced (`None`: the file
        /// held no readable key).
        old: Option<IdentityKey>,
        /// The new key.
        new: SigningKey,
    },
}

impl InitIdentity {
    /// The identity key in force now.
    pub fn key(&self) -> &SigningKey {
        match self {
            Self::Created(k) | Self::Kept(k) | Self::Replaced { new: k, .. } => k,
        }
    }

    /// One line for the operator: what happened to the key in `path`.
    pub fn describe(&self, path: &Path) -> String {
        let public = |k: &SigningKey| IdentityKey::from(&k.verifying_key());
        match self {
            Self::Created(k) => format!(
                "wrote a new identity key {} (public key {})",
                path.display(),
                public(k)
            ),
            Self::Kept(k) => format!(
                "kept the existing identity key {} (public key {}); pass --new-identity to replace it",
                path.display(),
                public(k)
            ),
            Self::Replaced {
                old: Some(old),
                new,
            } => format!(
                "replaced the identity key {}: the old public key {old} is no longer this daemon's, the new one is {}",
                path.display(),
                public(new)
            ),
            Self::Replaced { old: None, new } => format!(
                "replaced the identity key {}, which held no readable key, with a new one (public key {})",
                path.display(),
                public(new)
            ),
        }
    }
}

/// What a daemon's `init` does with its identity key file `path`: without
/// `new_identity`, an existing key is kept (and must load: a corrupt or
/// exposed file is an error, not silently replaced) and a missing one is
/// made; with `new_identity`, a new key replaces any existing one, and the
/// result says which public key it replaced.
pub fn init_identity(path: &Path, new_identity: bool) -> Result<InitIdentity, KeyFileError> {
    if !path.exists() {
        let key = SigningKey::generate(&mut rand::rng());
        write_new(path, &key)?;
        return Ok(InitIdentity::Created(key));
    }
    if !new_identity {
        return read_signing_key(path).map(InitIdentity::Kept);
    }
    // The old key is named if it can be read; a file that cannot be read
    // is replaced all the same, since replacing it is what was asked.
    let old = read_signing_key(path)
        .ok()
        .map(|k| IdentityKey::from(&k.verifying_key()));
    let new = SigningKey::generate(&mut rand::rng());
    replace(path, &new)?;
    Ok(InitIdentity::Replaced { old, new })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_mode(path: &Path, bytes: &[u8], mode: u32) {
        fs::write(path, bytes).unwrap();
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn reads_what_it_writes_and_refuses_anything_else() {
        let dir = tempfile::tempdir().unwrap();
        let key = SigningKey::from_bytes(&[7; 32]);
        let path = dir.path().join("k");
        write_new(&path, &key).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(read_signing_key(&path).unwrap().to_bytes(), key.to_bytes());
        assert!(matches!(
            write_new(&path, &key),
            Err(KeyFileError::Exists { .. })
        ));
        for bad in [
            "".as_bytes(),
            b"0OIl",
            bs58::encode([1u8; 31]).into_string().as_bytes(),
            bs58::encode([1u8; 33]).into_string().as_bytes(),
            &[0xffu8; 33],
        ] {
            write_mode(&path, bad, 0o600);
            let err = read_signing_key(&path).unwrap_err();
            assert!(matches!(err, KeyFileError::Malformed { .. }), "{bad:?}");
            assert!(err.to_string().contains("not an identity key"), "{err}");
        }
        let err = read_signing_key(&dir.path().join("missing")).unwrap_err();
        assert!(
            matches!(&err, KeyFileError::Read { source, .. } if source.kind() == io::ErrorKind::NotFound)
        );
    }

    /// The files the daemons wrote before this module (base58 with a
    /// newline: directory, mix node, mailbox; raw bytes: devnet) still load.
    #[test]
    fn files_of_the_earlier_daemons_load() {
        let dir = tempfile::tempdir().unwrap();
        let key = SigningKey::from_bytes(&[9; 32]);
        let path = dir.path().join("k");
        let text = format!("{}\n", bs58::encode(key.to_bytes()).into_string());
        for contents in [text.as_bytes(), text.trim().as_bytes(), &key.to_bytes()[..]] {
            write_mode(&path, contents, 0o600);
            assert_eq!(read_signing_key(&path).unwrap().to_bytes(), key.to_bytes());
        }
    }

    #[test]
    fn a_key_file_others_may_access_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        let text = encode(&SigningKey::from_bytes(&[1; 32]));
        for mode in [0o644, 0o640, 0o604, 0o660, 0o602] {
            write_mode(&path, text.as_bytes(), mode);
            let err = read_signing_key(&path).unwrap_err();
            assert!(
                matches!(err, KeyFileError::Permissions { mode: m, .. } if m == mode),
                "{mode:o}"
            );
            assert!(err.to_string().contains("chmod 600"), "{err}");
        }
        write_mode(&path, text.as_bytes(), 0o400);
        read_signing_key(&path).unwrap();
    }

    #[test]
    fn init_keeps_a_key_unless_asked_to_replace_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("identity.key");
        let first = match init_identity(&path, false).unwrap() {
            InitIdentity::Created(k) => k,
            other => panic!("{other:?}"),
        };
        match init_identity(&path, false).unwrap() {
            InitIdentity::Kept(k) => assert_eq!(k.to_bytes(), first.to_bytes()),
            other => panic!("{other:?}"),
        }
        let replaced = init_identity(&path, true).unwrap();
        let InitIdentity::Replaced { old, new } = &replaced else {
            panic!("{replaced:?}");
        };
        let old = old.unwrap();
        assert_eq!(old, IdentityKey::from(&first.verifying_key()));
        assert_ne!(new.to_bytes(), first.to_bytes());
        assert_eq!(read_signing_key(&path).unwrap().to_bytes(), new.to_bytes());
        let line = replaced.describe(&path);
        assert!(line.contains(&old.to_string()), "{line}");
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(!dir.path().join("identity.key.tmp").exists());
    }

    #[test]
    fn init_does_not_replace_a_corrupt_key_unless_asked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("identity.key");
        write_mode(&path, b"garbage", 0o600);
        assert!(matches!(
            init_identity(&path, false),
            Err(KeyFileError::Malformed { .. })
        ));
        assert_eq!(fs::read(&path).unwrap(), b"garbage");
        let made = init_identity(&path, true).unwrap();
        assert!(matches!(made, InitIdentity::Replaced { old: None, .. }));
        assert!(made.describe(&path).contains("no readable key"));
        read_signing_key(&path).unwrap();
    }

    #[test]
    fn load_or_create_makes_a_key_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("identity.key");
        let a = load_or_create(&path).unwrap();
        let b = load_or_create(&path).unwrap();
        assert_eq!(a.to_bytes(), b.to_bytes());
    }
}
