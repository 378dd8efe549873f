//! The crate's error type.

use std::path::PathBuf;

/// What can go wrong setting up or reporting a simulation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A parameter has a value the simulator cannot use.
    #[error("parameter {param}: {reason}")]
    InvalidParam {
        /// The parameter's TOML key.
        param: String,
        /// What is wrong with it.
        reason: String,
    },
    /// No parameter has this name.
    #[error("unknown parameter {0:?}")]
    UnknownParam(String),
    /// A sweep specification is malformed.
    #[error("sweep {spec:?}: {reason}")]
    InvalidSweep {
        /// The specification as given.
        spec: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A study file is not valid TOML or has unknown keys.
    #[error("study file {path}")]
    Study {
        /// The file.
        path: PathBuf,
        /// The parse error (names the offending key).
        #[source]
        source: toml::de::Error,
    },
    /// A policy function refused its input (a bug: parameters are checked
    /// before the run starts).
    #[error("policy")]
    Policy(#[source] murmur_wire::Error),
    /// The protocol model's synthetic network could not be built (its
    /// consensus refused by the code that verifies real ones).
    #[error("building the protocol model's network")]
    Network(#[source] murmur_wire::Error),
    /// The protocol model met something it cannot carry: a client core
    /// asked for what no client should (a bug in the core or the model).
    #[error("protocol model: {reason}")]
    Model {
        /// What happened.
        reason: String,
    },
    /// Reading or writing a file failed.
    #[error("{path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Drawing a plot failed.
    #[error("plot {path}: {reason}")]
    Plot {
        /// The file being drawn.
        path: PathBuf,
        /// The plotting library's message.
        reason: String,
    },
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
