//! The one error type of murmur-directory's library.

use std::net::SocketAddr;
use std::path::PathBuf;

/// What can go wrong starting or running an authority, or setting up a
/// directory client.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration is not usable.
    #[error("invalid configuration: {reason}")]
    Config {
        /// What is wrong, naming the setting.
        reason: String,
    },
    /// A configuration file could not be parsed (unknown keys are named here).
    #[error("could not parse configuration {path}")]
    ConfigParse {
        /// The file.
        path: PathBuf,
        /// The TOML error, which names the key and line.
        #[source]
        source: toml::de::Error,
    },
    /// A file or directory could not be read or written.
    #[error("{what} {path}")]
    Io {
        /// What was being done ("could not write", ...).
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP listener could not be bound.
    #[error("could not listen on {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A key or document was refused by murmur-wire.
    #[error("{what}")]
    Wire {
        /// What was being done.
        what: &'static str,
        /// The wire error.
        #[source]
        source: murmur_wire::Error,
    },
    /// The signed admission list does not verify or does not parse.
    #[error("admission list {path}: {reason}")]
    AdmissionList {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The consensus follower task has stopped (shut down).
    #[error("the consensus follower has stopped")]
    FollowerStopped,
}
