//! Identity key files, as every daemon's `init` writes them: the base58 text
//! of a 32-byte Ed25519 seed on one line, readable by the owner only.

use std::io;
use std::path::Path;

use murmur_wire::ed25519_dalek::SigningKey;
use zeroize::Zeroizing;

/// Reads the Ed25519 signing key in `path`. A malformed file is an
/// `InvalidData` error; a file others may read is used, with a warning.
pub fn read_signing_key(path: &Path) -> io::Result<SigningKey> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if std::fs::metadata(path)?.permissions().mode() & 0o077 != 0 {
            tracing::warn!(path = %path.display(), "a key file is readable by other users; chmod 600 it");
        }
    }
    let text = Zeroizing::new(std::fs::read_to_string(path)?);
    let mut seed = Zeroizing::new([0u8; 32]);
    match bs58::decode(text.trim()).onto(&mut seed[..]) {
        Ok(32) => Ok(SigningKey::from_bytes(&seed)),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not the base58 text of a 32-byte Ed25519 key",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_init_writes_and_refuses_anything_else() {
        let dir = tempfile::tempdir().unwrap();
        let key = SigningKey::from_bytes(&[7; 32]);
        let path = dir.path().join("k");
        std::fs::write(
            &path,
            format!("{}\n", bs58::encode(key.to_bytes()).into_string()),
        )
        .unwrap();
        assert_eq!(read_signing_key(&path).unwrap().to_bytes(), key.to_bytes());
        for bad in [
            "",
            "0OIl",
            &bs58::encode([1u8; 31]).into_string(),
            &bs58::encode([1u8; 33]).into_string(),
        ] {
            std::fs::write(&path, bad).unwrap();
            let err = read_signing_key(&path).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{bad:?}");
        }
        assert_eq!(
            read_signing_key(&dir.path().join("missing"))
                .unwrap_err()
                .kind(),
            io::ErrorKind::NotFound
        );
    }
}
