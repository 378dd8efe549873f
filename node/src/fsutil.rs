//! Small file helpers for node state: private directories, atomic private
//! writes, erasure of secrets.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

use crate::error::{Error, Result};

/// Creates `dir` (and parents) with mode 0700 if missing; tightens an
/// existing directory to 0700.
pub fn private_dir(dir: &Path) -> Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| Error::io("could not create directory", dir, e))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        .map_err(|e| Error::io("could not set permissions on", dir, e))
}

/// Fsyncs a directory, so that a rename or removal in it is durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    murmur_net::fsutil::sync_dir(dir).map_err(|e| Error::io("could not sync directory", dir, e))
}

/// Writes `bytes` to `path` atomically (temporary file, fsync, rename,
/// fsync of the directory), readable by the owner only (0600).
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    write_private_with(path, |f| f.write_all(bytes))
}

/// Like [`write_private`], the contents written by `fill` (streamed, for
/// files too large to build in memory first).
pub fn write_private_with(
    path: &Path,
    fill: impl FnOnce(&mut File) -> std::io::Result<()>,
) -> Result<()> {
    murmur_net::fsutil::write_private_with(path, fill)
        .map_err(|e| Error::io("could not write", path, e))
}

/// Overwrites a file with zeros, syncs it, and removes it. On journaling or
/// copy-on-write file systems and on SSDs the old blocks may survive the
/// overwrite; the overwrite is a best effort on top of the removal.
pub fn erase(path: &Path) -> Result<()> {
    let overwrite = || -> std::io::Result<()> {
        let len = fs::metadata(path)?.len();
        let mut f = OpenOptions::new().write(true).open(path)?;
        let zeros = vec![0u8; usize::try_from(len).unwrap_or(0).min(1 << 20)];
        let mut left = len;
        while left > 0 {
            let n = zeros.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            if n == 0 {
                break;
            }
            f.write_all(&zeros[..n])?;
            left -= n as u64;
        }
        f.sync_all()
    };
    match overwrite() {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io("could not overwrite", path, e)),
    }
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io("could not remove", path, e)),
    }
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// Removes a file; a missing file is fine.
pub fn remove_if_exists(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("could not remove", path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_files_are_0600_and_erasure_removes_them() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("a/b");
        private_dir(&sub).unwrap();
        let mode = fs::metadata(&sub).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        let p = sub.join("k");
        write_private(&p, b"secret").unwrap();
        let mode = fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(fs::read(&p).unwrap(), b"secret");
        write_private(&p, b"other").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"other");
        erase(&p).unwrap();
        assert!(!p.exists());
        erase(&p).unwrap();
    }
}
