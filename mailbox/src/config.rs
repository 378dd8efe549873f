//! The provider's configuration file (TOML). Every key has a default in
//! code; [`EXAMPLE_CONFIG`] documents them all and is what `init` writes.
//! Unknown keys are an error that names the key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use murmur_directory::http::ServerLimits;
use serde::Deserialize;

use crate::api::ApiConfig;
use crate::error::{Error, Result};
use crate::store::Quota;
use crate::writer::WriterConfig;

/// The example configuration `murmur-mailbox init` writes: every key, its
/// default, and what it does.
pub const EXAMPLE_CONFIG: &str = r#"# murmur-mailbox configuration.
#
# Every key is optional: the value shown is the default. Relative paths are
# relative to the directory of this file. Unknown keys are an error.

# Where the database (mailbox.redb) and the identity key (identity.key) live.
data_dir = "."

[http]
# Address of the fetch API (POST /v1/queues, POST /v1/queue), /metrics and
# /healthz. Port 0 picks a free port.
listen = "127.0.0.1:7480"
# HTTP connections served at once; more wait in the accept queue.
max_connections = 256
# Seconds a client has to send its request headers.
header_timeout_secs = 10
# Seconds one HTTP connection may live.
connection_timeout_secs = 60

[storage]
# Entries one queue holds at most. A full queue refuses new deposits (which
# are then not acknowledged, so their senders retry later); it never evicts
# what it stores.
queue_max_messages = 10000
# Bytes one queue holds at most (encoded entries: about 2.1 KB per deposit,
# 2.5 KB per acknowledgement, 20 bytes per loop packet).
queue_max_bytes = 33554432
# Seconds an entry is kept, fetched or not; the reaper then deletes it, and
# with it the record that recognises a retransmission of it.
retention_secs = 1209600
# Seconds between reaper passes.
reap_interval_secs = 60
# Expired entries deleted per reaper transaction at most.
reap_batch = 10000
# Items waiting for the writer at most; when it is full, deposits are dropped
# and counted (their senders retransmit).
write_queue_capacity = 16384
# Items committed in one durable transaction at most (group commit).
max_batch = 8192

[api]
# Queues this provider holds at most; creation beyond is refused with 503.
max_queues = 1000000
# Request nonces remembered at most to refuse replays; when full of live
# nonces, requests are refused with 503 until some expire.
nonce_cache_capacity = 200000
"#;

/// The whole configuration.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Database and key directory.
    pub data_dir: PathBuf,
    /// The HTTP server.
    pub http: HttpConfig,
    /// Storage limits and the write path.
    pub storage: StorageConfig,
    /// The fetch API.
    pub api: ApiSection,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("."),
            http: HttpConfig::default(),
            storage: StorageConfig::default(),
            api: ApiSection::default(),
        }
    }
}

/// `[http]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Listening address.
    pub listen: SocketAddr,
    /// Connections at once.
    pub max_connections: usize,
    /// Seconds to send request headers.
    pub header_timeout_secs: u64,
    /// Seconds a connection may live.
    pub connection_timeout_secs: u64,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7480)),
            max_connections: 256,
            header_timeout_secs: 10,
            connection_timeout_secs: 60,
        }
    }
}

impl HttpConfig {
    /// As the shared server's limits.
    pub fn limits(&self) -> ServerLimits {
        ServerLimits {
            max_connections: self.max_connections,
            header_timeout: Duration::from_secs(self.header_timeout_secs),
            connection_timeout: Duration::from_secs(self.connection_timeout_secs),
        }
    }
}

/// `[storage]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// Entries per queue at most.
    pub queue_max_messages: u64,
    /// Bytes per queue at most.
    pub queue_max_bytes: u64,
    /// Seconds entries are kept.
    pub retention_secs: u64,
    /// Seconds between reaper passes.
    pub reap_interval_secs: u64,
    /// Expiry records per reaper transaction.
    pub reap_batch: usize,
    /// Items waiting for the writer at most.
    pub write_queue_capacity: usize,
    /// Items per transaction at most.
    pub max_batch: usize,
}

impl Default for StorageConfig {
    fn default() -> Self {
        let quota = Quota::default();
        let writer = WriterConfig::default();
        Self {
            queue_max_messages: quota.max_messages,
            queue_max_bytes: quota.max_bytes,
            retention_secs: 14 * 24 * 3600,
            reap_interval_secs: 60,
            reap_batch: 10_000,
            write_queue_capacity: writer.queue_capacity,
            max_batch: writer.max_batch,
        }
    }
}

impl StorageConfig {
    /// The per-queue quota.
    pub fn quota(&self) -> Quota {
        Quota {
            max_messages: self.queue_max_messages,
            max_bytes: self.queue_max_bytes,
        }
    }

    /// The write path's settings.
    pub fn writer(&self) -> WriterConfig {
        WriterConfig {
            queue_capacity: self.write_queue_capacity,
            max_batch: self.max_batch,
        }
    }
}

/// `[api]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiSection {
    /// Queues at most.
    pub max_queues: u64,
    /// Nonces remembered at most.
    pub nonce_cache_capacity: usize,
}

impl Default for ApiSection {
    fn default() -> Self {
        let api = ApiConfig::default();
        Self {
            max_queues: api.max_queues,
            nonce_cache_capacity: api.nonce_cache_capacity,
        }
    }
}

impl ApiSection {
    /// As the API's settings.
    pub fn api(&self) -> ApiConfig {
        ApiConfig {
            max_queues: self.max_queues,
            nonce_cache_capacity: self.nonce_cache_capacity,
        }
    }
}

impl Config {
    /// Parses a configuration; `path` names the file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let config: Self = toml::from_str(text).map_err(|source| Error::Config {
            path: path.to_path_buf(),
            source,
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Reads a configuration file and makes its relative paths relative to
    /// the file's directory.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::File {
            action: "read",
            path: path.to_path_buf(),
            source,
        })?;
        let mut config = Self::parse(&text, path)?;
        if config.data_dir.is_relative() {
            let base = path.parent().unwrap_or(Path::new("."));
            config.data_dir = base.join(&config.data_dir);
        }
        Ok(config)
    }

    /// Refuses values the provider cannot run with.
    pub fn validate(&self) -> Result<()> {
        let s = &self.storage;
        let checks: [(bool, &str); 8] = [
            (
                s.queue_max_messages == 0,
                "storage.queue_max_messages must be at least 1",
            ),
            (
                s.queue_max_bytes < 4096,
                "storage.queue_max_bytes must be at least 4096",
            ),
            (
                s.retention_secs == 0,
                "storage.retention_secs must be at least 1",
            ),
            (
                s.reap_interval_secs == 0,
                "storage.reap_interval_secs must be at least 1",
            ),
            (s.reap_batch == 0, "storage.reap_batch must be at least 1"),
            (
                s.write_queue_capacity == 0 || s.max_batch == 0,
                "storage.write_queue_capacity and storage.max_batch must be at least 1",
            ),
            (
                self.api.max_queues == 0 || self.api.nonce_cache_capacity == 0,
                "api.max_queues and api.nonce_cache_capacity must be at least 1",
            ),
            (
                self.http.max_connections == 0,
                "http.max_connections must be at least 1",
            ),
        ];
        for (bad, msg) in checks {
            if bad {
                return Err(Error::ConfigValue(msg.to_owned()));
            }
        }
        Ok(())
    }

    /// The database file.
    pub fn database_path(&self) -> PathBuf {
        self.data_dir.join("mailbox.redb")
    }

    /// The identity key file.
    pub fn identity_path(&self) -> PathBuf {
        self.data_dir.join("identity.key")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_parses_to_the_defaults() {
        let parsed = Config::parse(EXAMPLE_CONFIG, Path::new("example.toml")).unwrap();
        assert_eq!(parsed, Config::default());
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = Config::parse("[storage]\nretention = 5\n", Path::new("x.toml")).unwrap_err();
        let chain = format!("{err}: {}", std::error::Error::source(&err).unwrap());
        assert!(chain.contains("retention"), "{chain}");
        let err = Config::parse("colour = 1\n", Path::new("x.toml")).unwrap_err();
        let chain = format!("{err}: {}", std::error::Error::source(&err).unwrap());
        assert!(chain.contains("colour"), "{chain}");
    }

    #[test]
    fn nonsense_values_are_refused() {
        let err = Config::parse("[storage]\nmax_batch = 0\n", Path::new("x.toml")).unwrap_err();
        assert!(err.to_string().contains("max_batch"), "{err}");
    }
}
