//! The one error type of murmur-node.

use std::net::SocketAddr;
use std::path::PathBuf;

/// Everything that can stop a node daemon's plumbing (a mix node's or a
/// mailbox provider's) from starting or from doing a management task.
///
/// Per-packet problems are never errors: hostile input is dropped and
/// counted (see the metrics in `docs/mixnode.md`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A socket could not be bound.
    #[error("could not bind {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },

    /// A file or directory could not be read, written or removed.
    #[error("{action} {path}")]
    Io {
        /// What was being done ("could not write", ...).
        action: &'static str,
        /// The path.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },

    /// A file on disk does not have the expected contents.
    #[error("{path} is corrupt: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },

    /// The configuration is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),

    /// A configuration file could not be parsed.
    #[error("could not parse configuration {path}")]
    ConfigParse {
        /// The file.
        path: PathBuf,
        /// The parser's error (it names the offending key).
        #[source]
        source: toml::de::Error,
    },

    /// Building, signing or verifying a protocol object failed.
    #[error("{what}")]
    Wire {
        /// What was being done.
        what: &'static str,
        /// murmur-wire's error.
        #[source]
        source: murmur_wire::Error,
    },

    /// The directory client could not be set up.
    #[error("{what}")]
    Directory {
        /// What was being done.
        what: &'static str,
        /// murmur-directory's error (boxed: it is large).
        #[source]
        source: Box<murmur_directory::Error>,
    },

    /// A thread could not be started.
    #[error("could not start thread {name}")]
    Thread {
        /// The thread's name.
        name: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },

    /// The node has no Sphinx key for the current epoch.
    #[error("no Sphinx key for epoch {epoch}")]
    NoKey {
        /// The epoch.
        epoch: u64,
    },
}

impl Error {
    /// An [`Error::Io`].
    pub fn io(action: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            action,
            path: path.into(),
            source,
        }
    }
}

/// Result alias for murmur-node.
pub type Result<T, E = Error> = std::result::Result<T, E>;
