//! The authority's persistent state: plain files under the data directory,
//! each written atomically (temporary file, fsync, rename).
//!
//! ```text
//! DATA/descriptors/<node id>.desc   latest accepted SignedDescriptor per node
//! DATA/votes/<epoch>.vote           this authority's own SignedVote
//! DATA/consensus/<epoch>.doc        published SignedConsensus (k signatures)
//! ```
//!
//! Everything is re-verified when loaded; a corrupt or stale file is
//! skipped and logged, never trusted.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use murmur_wire::NodeId;

use crate::error::Error;

/// Where the authority keeps its state.
#[derive(Debug, Clone)]
pub(crate) struct Store {
    root: PathBuf,
}

/// The kinds of file kept.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Kind {
    Descriptor,
    Vote,
    Consensus,
}

impl Kind {
    fn dir(self) -> &'static str {
        match self {
            Kind::Descriptor => "descriptors",
            Kind::Vote => "votes",
            Kind::Consensus => "consensus",
        }
    }
    fn ext(self) -> &'static str {
        match self {
            Kind::Descriptor => "desc",
            Kind::Vote => "vote",
            Kind::Consensus => "doc",
        }
    }
}

impl Store {
    /// Opens (creating) the directories under `root`.
    pub(crate) fn open(root: &Path) -> Result<Self, Error> {
        for kind in [Kind::Descriptor, Kind::Vote, Kind::Consensus] {
            let dir = root.join(kind.dir());
            fs::create_dir_all(&dir).map_err(|source| Error::Io {
                what: "could not create data directory",
                path: dir.clone(),
                source,
            })?;
        }
        Ok(Self {
            root: root.to_owned(),
        })
    }

    fn path(&self, kind: Kind, name: &str) -> PathBuf {
        self.root
            .join(kind.dir())
            .join(format!("{name}.{}", kind.ext()))
    }

    pub(crate) fn descriptor_name(id: &NodeId) -> String {
        id.to_base58()
    }

    /// Writes `bytes` atomically.
    pub(crate) fn put(&self, kind: Kind, name: &str, bytes: &[u8]) -> Result<(), Error> {
        let path = self.path(kind, name);
        let tmp = path.with_extension("tmp");
        let io = |source| Error::Io {
            what: "could not write",
            path: path.clone(),
            source,
        };
        let mut f = fs::File::create(&tmp).map_err(io)?;
        f.write_all(bytes).map_err(io)?;
        f.sync_all().map_err(io)?;
        drop(f);
        fs::rename(&tmp, &path).map_err(io)?;
        Ok(())
    }

    /// Removes a file if present.
    pub(crate) fn remove(&self, kind: Kind, name: &str) {
        let path = self.path(kind, name);
        if let Err(e) = fs::remove_file(&path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %path.display(), error = %e, "could not remove a stale file");
        }
    }

    /// Every file of a kind: (name without extension, bytes). Unreadable
    /// files are logged and skipped; files over `limit` bytes are skipped.
    pub(crate) fn load_all(&self, kind: Kind, limit: u64) -> Vec<(String, Vec<u8>)> {
        let dir = self.root.join(kind.dir());
        let mut out = Vec::new();
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "could not list data directory");
                return out;
            }
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some(kind.ext()) {
                continue;
            }
            let Some(name) = path.file_stem().and_then(|s| s.to_str()) else {
                continue;
            };
            match entry.metadata() {
                Ok(m) if m.len() <= limit => {}
                _ => {
                    tracing::warn!(path = %path.display(), "skipping an oversized or unreadable file");
                    continue;
                }
            }
            match fs::read(&path) {
                Ok(bytes) => out.push((name.to_owned(), bytes)),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "could not read a stored file");
                }
            }
        }
        out.sort();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_load_remove() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        s.put(Kind::Vote, "7", b"abc").unwrap();
        s.put(Kind::Vote, "7", b"abcd").unwrap();
        s.put(Kind::Vote, "8", &[0u8; 100]).unwrap();
        assert_eq!(
            s.load_all(Kind::Vote, 10),
            vec![("7".to_owned(), b"abcd".to_vec())]
        );
        s.remove(Kind::Vote, "7");
        s.remove(Kind::Vote, "nope");
        assert_eq!(s.load_all(Kind::Vote, 1000).len(), 1);
    }
}
