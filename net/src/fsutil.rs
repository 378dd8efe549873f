//! Private files: written whole, atomically, readable by the owner only.
//! The key files here and the nodes' Sphinx keys and replay cache
//! (`murmur-node`) are written through it.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Fsyncs a directory, so that a rename or removal in it is durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The directory `path` is in (`.` for a bare file name).
fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// Writes `path` atomically with the contents `fill` writes: a temporary
/// file beside it (`PATH.tmp`, mode 0600 even if one was left over) is
/// filled, fsynced and renamed over `path`, and the directory is fsynced.
/// `fill` streams, for files too large to build in memory first.
pub fn write_private_with(
    path: &Path,
    fill: impl FnOnce(&mut File) -> io::Result<()>,
) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    // An existing temporary file keeps its mode: force 0600.
    f.set_permissions(fs::Permissions::from_mode(0o600))?;
    fill(&mut f)?;
    f.sync_all()?;
    fs::rename(&tmp, path)?;
    sync_dir(parent(path))
}

/// Creates `path`, which must not exist, mode 0600 from the start, with
/// the contents `fill` writes; fsyncs it and its directory.
pub fn create_private(
    path: &Path,
    fill: impl FnOnce(&mut File) -> io::Result<()>,
) -> io::Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    fill(&mut f)?;
    f.sync_all()?;
    sync_dir(parent(path))
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn private_files_are_0600_and_replaced_whole() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        create_private(&p, |f| f.write_all(b"one")).unwrap();
        let mode = fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let err = create_private(&p, |f| f.write_all(b"two")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read(&p).unwrap(), b"one");
        // A leftover temporary file with a loose mode does not leak it.
        let tmp = dir.path().join("k.tmp");
        fs::write(&tmp, b"junk").unwrap();
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o644)).unwrap();
        write_private_with(&p, |f| f.write_all(b"three")).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"three");
        let mode = fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(!tmp.exists());
    }
}
