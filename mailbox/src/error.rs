//! The one error type of murmur-mailbox.

use std::net::SocketAddr;
use std::path::PathBuf;

/// What can go wrong while running a mailbox provider.
///
/// Problems with a single packet or a single HTTP request are not errors of
/// this type: they are counted drops or 4xx answers. These are the failures
/// an operator has to act on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The database file could not be created or opened.
    #[error("could not open the mailbox database {path}")]
    OpenDatabase {
        /// The database file.
        path: PathBuf,
        /// redb's error.
        #[source]
        source: redb::DatabaseError,
    },

    /// A redb storage operation failed (I/O error, corruption detected by
    /// redb).
    #[error("storage failed while {during}")]
    Storage {
        /// What the store was doing.
        during: &'static str,
        /// redb's error.
        #[source]
        source: redb::Error,
    },

    /// A record in the database does not have the layout this version writes.
    #[error("corrupt {what} record in the mailbox database")]
    Corrupt {
        /// Which record.
        what: &'static str,
    },

    /// The database was written by an incompatible version of this crate.
    #[error(
        "mailbox database schema version {found} is not supported (this build uses {expected})"
    )]
    Schema {
        /// The version in the file.
        found: u64,
        /// The version this build reads and writes.
        expected: u64,
    },

    /// A file (configuration, key) could not be read or written.
    #[error("could not {action} {path}")]
    File {
        /// "read", "write", "create".
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },

    /// The configuration file is not valid (syntax, unknown key, bad value).
    #[error("invalid configuration {path}")]
    Config {
        /// The configuration file.
        path: PathBuf,
        /// The TOML parser's error, which names the key.
        #[source]
        source: toml::de::Error,
    },

    /// A configuration value is out of range.
    #[error("invalid configuration: {0}")]
    ConfigValue(String),

    /// The identity key file could not be read or written, does not hold
    /// a key, or others may read it (the cause says which, and names it).
    #[error("identity key file")]
    KeyFile(#[source] murmur_net::keyfile::KeyFileError),

    /// A listening socket could not be bound.
    #[error("could not listen on {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },

    /// A background thread could not be started.
    #[error("could not start the {what} thread")]
    Thread {
        /// Which thread.
        what: &'static str,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },

    /// A blocking task (storage work off the async threads) panicked or was
    /// cancelled.
    #[error("a background task failed while {during}")]
    Task {
        /// What the task was doing.
        during: &'static str,
    },

    /// The node plumbing (Sphinx keys, packet engine) failed, or one of its
    /// configuration sections is invalid.
    #[error("{what}")]
    Node {
        /// What was being done.
        what: &'static str,
        /// murmur-mixnode's error (boxed: it is large).
        #[source]
        source: Box<murmur_node::Error>,
    },

    /// The directory client could not be set up (e.g. an invalid authority
    /// set).
    #[error("could not set up the directory client")]
    Directory {
        /// murmur-directory's error (boxed: it is large).
        #[source]
        source: Box<murmur_directory::Error>,
    },

    /// A descriptor could not be signed, or does not verify.
    #[error("{what}")]
    Wire {
        /// What was being done.
        what: &'static str,
        /// murmur-wire's error.
        #[source]
        source: murmur_wire::Error,
    },

    /// The provider was started outside a tokio runtime.
    #[error("the mailbox provider must be started inside a tokio runtime")]
    NoRuntime,

    /// The PostgreSQL connection string (`storage.postgres_url`) does not
    /// parse. (The message never repeats the string: it may hold a
    /// password.)
    #[error("invalid storage.postgres_url")]
    PostgresUrl {
        /// tokio-postgres's parse error.
        #[source]
        source: tokio_postgres::Error,
    },

    /// A PostgreSQL statement failed, or the connection broke.
    #[error("PostgreSQL failed while {during}")]
    Postgres {
        /// What the store was doing.
        during: &'static str,
        /// tokio-postgres's error (for a database error: the server's
        /// message and SQLSTATE).
        #[source]
        source: tokio_postgres::Error,
    },

    /// No PostgreSQL connection could be had: the server refused or did not
    /// answer in time, or every pooled connection stayed busy.
    #[error("no PostgreSQL connection while {during}")]
    PostgresPool {
        /// What the store was doing.
        during: &'static str,
        /// deadpool's error.
        #[source]
        source: deadpool_postgres::PoolError,
    },

    /// A PostgreSQL operation took longer than `storage.postgres_timeout_secs`;
    /// its transaction was abandoned (and rolled back by the server) and
    /// its connection closed.
    #[error("PostgreSQL did not answer within {after:?} while {during}")]
    PostgresTimeout {
        /// What the store was doing.
        during: &'static str,
        /// The time allowed.
        after: std::time::Duration,
    },

    /// The PostgreSQL server is configured so that a commit may not be on
    /// disk when it returns (`fsync` or `synchronous_commit` is `off`): the
    /// store refuses to run on it, since it acknowledges deposits once
    /// committed.
    #[error("PostgreSQL setting {setting} = {value}: commits would not be durable")]
    NotDurable {
        /// The setting.
        setting: &'static str,
        /// Its value on the server, for this role and database.
        value: String,
    },

    /// A throwaway PostgreSQL cluster
    /// ([`TempCluster`](crate::postgres::TempCluster), for tests and
    /// benchmarks) could not be started.
    #[error("could not start a temporary PostgreSQL cluster: {reason}")]
    TempCluster {
        /// What failed, with the end of the server's or initdb's log.
        reason: String,
    },

    /// Rows this batch had just numbered were already in the database: a
    /// writer that does not lock its queues first (not this store) wrote to
    /// them. Nothing of the batch was kept.
    #[error("concurrent write without the queue lock detected while {during}")]
    Conflict {
        /// What the store was doing.
        during: &'static str,
    },
}

/// Result alias for murmur-mailbox.
pub type Result<T, E = Error> = std::result::Result<T, E>;
