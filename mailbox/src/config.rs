//! The provider's configuration file (TOML). Every key has a default in
//! code; [`example_config`] documents them all and is what `init` writes.
//! Unknown keys are an error that names the key.
//!
//! The node sections (`listen_addr`, `public_addr`, `identity_key_file`,
//! `[network]`, `[directory]`, `[keys]`, `[engine]`, `[replay]`) are the mix
//! node's, with the same names and meanings (`murmur_node::config`), so
//! that operators of both see one style.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use murmur_directory::AuthorityPin;
use murmur_net::http::ServerLimits;
use murmur_node::config::{
    DirectorySettings, NetworkSettings, NodeSectionsExample, node_sections_example,
};
use murmur_node::engine::{EngineLimits, ReplaySettings};
use murmur_node::keys::KeySettings;
use serde::Deserialize;

use crate::api::ApiConfig;
use crate::error::{Error, Result};
use crate::postgres::PostgresSettings;
use crate::store::Quota;
use crate::writer::WriterConfig;

/// What `init` puts into the example configuration besides the defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExampleOptions {
    /// `listen_addr` (packets).
    pub listen_addr: SocketAddr,
    /// `public_addr` (packets), if given.
    pub public_addr: Option<SocketAddr>,
    /// `http.listen` (the fetch API).
    pub http_listen: SocketAddr,
    /// `http.public_addr`, if given.
    pub http_public_addr: Option<SocketAddr>,
    /// `operator_addr` (`/metrics`, `/healthz`).
    pub operator_addr: SocketAddr,
    /// `[[directory.authorities]]`.
    pub authorities: Vec<AuthorityPin>,
    /// `directory.threshold`.
    pub threshold: usize,
}

impl Default for ExampleOptions {
    fn default() -> Self {
        let c = Config::default();
        Self {
            listen_addr: c.listen_addr,
            public_addr: None,
            http_listen: c.http.listen,
            http_public_addr: None,
            operator_addr: c.operator_addr,
            authorities: Vec::new(),
            threshold: c.directory.threshold,
        }
    }
}

/// The commented configuration `murmur-mailbox init` writes: every key, its
/// default, and what it does.
pub fn example_config(o: &ExampleOptions) -> String {
    let d = Config::default();
    let optional = |key: &str, value: Option<SocketAddr>, example: &str| match value {
        Some(a) => format!("{key} = \"{a}\""),
        None => format!("# {key} = \"{example}\""),
    };
    let node_sections = node_sections_example(&NodeSectionsExample {
        who: "provider",
        authorities: &o.authorities,
        threshold: o.threshold,
        network: &d.network,
        directory: &d.directory,
        keys: &d.keys,
        engine: &d.engine,
        replay: &d.replay,
    });
    let (s, h) = (&d.storage, &d.http);
    format!(
        r#"# murmur-mailbox configuration. Every key is shown with its default;
# unknown keys are an error. Reference: docs/mailbox.md.

# Where the database (mailbox.redb), the Sphinx keys (keys/) and the replay
# cache (replay/) are kept. Relative paths are relative to this file.
data_dir = "{data_dir}"
# The provider's Ed25519 identity key (base58, mode 0600). Its public half
# derives the node id; keep it: a new key is a new provider, and the queues
# it holds are addressed to the old one.
identity_key_file = "{key_file}"
# Where packet links from the mixnet are accepted (TCP). Port 0 picks a
# free port.
listen_addr = "{listen}"
# The packet address other nodes connect to, published in the descriptor.
# Defaults to the bound listen address, which must then be a concrete
# address (not 0.0.0.0 or ::).
{public}
# Where /metrics (Prometheus) and /healthz are served, in plain HTTP, for
# the operator only: keep it on loopback or a private network. Port 0 picks
# a free port.
operator_addr = "{operator}"

{node_sections}[http]
# Address of the fetch API (POST /v1/queues, POST /v1/queue). Every
# connection is an encrypted link (docs/protocol.md §4) that authenticates
# this provider by the link key in its descriptor. Port 0 picks a free port.
listen = "{http_listen}"
# The fetch API address published in the descriptor (where clients fetch).
# Defaults to the bound listen address, which must then be a concrete
# address.
{http_public}
# HTTP connections served at once; more wait in the accept queue.
max_connections = {http_max}
# HTTP connections served at once from one address (an IPv4 address, or an
# IPv6 /64); more are closed as soon as they are accepted, so that one host
# cannot take every slot.
max_connections_per_address = {http_per_address}
# Seconds a client has to complete its link handshake, then to send each
# request's headers (also how long an idle kept-alive connection stays
# open), and then its request body. A client that trickles bytes
# (slowloris) is closed then.
header_timeout_secs = {http_header}
body_timeout_secs = {http_body}
# Seconds one HTTP connection may live.
connection_timeout_secs = {http_conn}

[storage]
# Entries one queue holds at most. A full queue refuses new deposits (which
# are then not acknowledged, so their senders retry later); it never evicts
# what it stores.
queue_max_messages = {qmm}
# Bytes one queue holds at most (encoded entries: about 2.1 KB per deposit,
# 2.5 KB per acknowledgement, 20 bytes per loop packet).
queue_max_bytes = {qmb}
# Seconds an entry is kept, fetched or not; the reaper then deletes it, and
# with it the record that recognises a retransmission of it.
retention_secs = {retention}
# Seconds a queue may go unused by its owner (no creation, fetch,
# acknowledgement or deletion request) before the reaper deletes it with
# everything in it. Keeps abandoned and mass-created queues from holding
# the api.max_queues slots for good. Keep it longer than retention_secs (a
# warning at start otherwise): a client offline this long loses the queue,
# with what it held, and must make a new one.
queue_idle_secs = {queue_idle}
# Seconds between reaper passes.
reap_interval_secs = {reap_interval}
# Expired entries deleted per reaper transaction at most.
reap_batch = {reap_batch}
# Items waiting for the writer at most; when it is full, deposits are dropped
# and counted (their senders retransmit).
write_queue_capacity = {wqc}
# Items committed in one durable transaction at most (group commit).
max_batch = {max_batch}
# Where the queues are kept: "redb" (the file mailbox.redb in data_dir:
# embedded, nothing else to run) or "postgres" (a PostgreSQL database, which
# several provider processes can share; docs/mailbox.md, "PostgreSQL").
backend = "{backend}"
# backend = "postgres": the connection string, a URL
# postgresql://USER:PASSWORD@HOST:PORT/DATABASE or key=value pairs
# ("host=... user=... dbname=..."). The connection is not encrypted: keep
# the database on this host or a private network. The tables are created
# (and upgraded) at start.
# postgres_url = "postgresql://murmur@127.0.0.1:5432/murmur"
# backend = "postgres": connections to the database at most (the writer
# uses one at a time; fetch API requests and the reaper the others).
postgres_pool_size = {pg_pool}
# backend = "postgres": seconds one storage operation may take (and may wait
# for a connection); past that it fails, and deposits are not acknowledged.
postgres_timeout_secs = {pg_timeout}

[api]
# Queues this provider holds at most; creation beyond is refused with 503.
max_queues = {max_queues}
# Signed requests remembered to refuse replays, in all and per queue (or
# creating key), each for the 120 s freshness window. A queue that sends
# more than its share forgets its own oldest requests and has requests
# signed that early refused (429 throttled); when the cache is full, the
# queue holding the most pays. One owner's flood cannot refuse others.
# (nonces_per_queue is at most nonce_cache_capacity.)
nonce_cache_capacity = {nonces}
nonces_per_queue = {nonces_per_queue}
# Queue creation budgets (token buckets): per client address (an IPv4
# address, or an IPv6 /64) a burst, then so many per hour (more: 429); and
# for the whole provider (more: 503).
create_burst_per_address = {cbpa}
create_per_address_per_hour = {cpaph}
create_burst = {cb}
create_per_hour = {cph}
"#,
        data_dir = d.data_dir.display(),
        key_file = d.identity_key_file.display(),
        listen = o.listen_addr,
        public = optional("public_addr", o.public_addr, "203.0.113.7:7481"),
        operator = o.operator_addr,
        http_listen = o.http_listen,
        http_public = optional("public_addr", o.http_public_addr, "203.0.113.7:7480"),
        http_max = h.max_connections,
        http_per_address = h.max_connections_per_address,
        http_header = h.header_timeout_secs,
        http_body = h.body_timeout_secs,
        http_conn = h.connection_timeout_secs,
        qmm = s.queue_max_messages,
        qmb = s.queue_max_bytes,
        retention = s.retention_secs,
        queue_idle = s.queue_idle_secs,
        reap_interval = s.reap_interval_secs,
        reap_batch = s.reap_batch,
        wqc = s.write_queue_capacity,
        max_batch = s.max_batch,
        backend = s.backend.name(),
        pg_pool = s.postgres_pool_size,
        pg_timeout = s.postgres_timeout_secs,
        max_queues = d.api.max_queues,
        nonces = d.api.nonce_cache_capacity,
        nonces_per_queue = d.api.nonces_per_queue,
        cbpa = d.api.create_burst_per_address,
        cpaph = d.api.create_per_address_per_hour,
        cb = d.api.create_burst,
        cph = d.api.create_per_hour,
    )
}

/// The whole configuration.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Database, Sphinx key and replay cache directory.
    pub data_dir: PathBuf,
    /// The Ed25519 identity key file, read by the binary (in-process callers
    /// pass the key to [`start_mailbox`](crate::start_mailbox)).
    pub identity_key_file: PathBuf,
    /// Where packet links are accepted.
    pub listen_addr: SocketAddr,
    /// The packet address published in the descriptor; defaults to the
    /// bound `listen_addr`.
    pub public_addr: Option<SocketAddr>,
    /// Where `/metrics` and `/healthz` are served (plain HTTP, operators only).
    pub operator_addr: SocketAddr,
    /// Network-wide settings that must match the authorities'.
    pub network: NetworkSettings,
    /// The directory authorities the provider registers with and follows.
    pub directory: DirectorySettings,
    /// Sphinx key rotation.
    pub keys: KeySettings,
    /// Packet engine limits.
    pub engine: EngineLimits,
    /// Replay cache sizing and persistence.
    pub replay: ReplaySettings,
    /// The fetch API's server.
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
            identity_key_file: PathBuf::from("identity.key"),
            listen_addr: SocketAddr::from(([127, 0, 0, 1], 7481)),
            public_addr: None,
            operator_addr: SocketAddr::from(([127, 0, 0, 1], 7482)),
            network: NetworkSettings::default(),
            directory: DirectorySettings::default(),
            keys: KeySettings::default(),
            engine: EngineLimits::default(),
            replay: ReplaySettings::default(),
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
    /// The fetch API address published in the descriptor; defaults to the
    /// bound `listen` address.
    pub public_addr: Option<SocketAddr>,
    /// Connections at once.
    pub max_connections: usize,
    /// Connections at once from one address (IPv4 address or IPv6 /64).
    pub max_connections_per_address: usize,
    /// Seconds to send request headers.
    pub header_timeout_secs: u64,
    /// Seconds to send a request body once the headers are in.
    pub body_timeout_secs: u64,
    /// Seconds a connection may live.
    pub connection_timeout_secs: u64,
}

impl Default for HttpConfig {
    fn default() -> Self {
        let d = ServerLimits::default();
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7480)),
            public_addr: None,
            max_connections: d.max_connections,
            max_connections_per_address: d.max_connections_per_address,
            header_timeout_secs: d.header_timeout.as_secs(),
            body_timeout_secs: d.body_timeout.as_secs(),
            connection_timeout_secs: d.connection_timeout.as_secs(),
        }
    }
}

impl HttpConfig {
    /// As the shared server's limits.
    pub fn limits(&self) -> ServerLimits {
        ServerLimits {
            max_connections: self.max_connections,
            max_connections_per_address: self.max_connections_per_address,
            header_timeout: Duration::from_secs(self.header_timeout_secs),
            body_timeout: Duration::from_secs(self.body_timeout_secs),
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
    /// A queue its owner has not used (created, fetched, acknowledged) for
    /// this many seconds is deleted with its entries.
    pub queue_idle_secs: u64,
    /// Seconds between reaper passes.
    pub reap_interval_secs: u64,
    /// Expiry records per reaper transaction.
    pub reap_batch: usize,
    /// Items waiting for the writer at most.
    pub write_queue_capacity: usize,
    /// Items per transaction at most.
    pub max_batch: usize,
    /// Which database holds the queues.
    pub backend: Backend,
    /// The PostgreSQL connection string (`backend = "postgres"`).
    pub postgres_url: Option<String>,
    /// PostgreSQL connections at most.
    pub postgres_pool_size: usize,
    /// Seconds one PostgreSQL operation may take.
    pub postgres_timeout_secs: u64,
}

/// `storage.backend`: where the queues are kept.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// `mailbox.redb` in the data directory ([`RedbStore`](crate::RedbStore)).
    #[default]
    Redb,
    /// A PostgreSQL database ([`PostgresStore`](crate::PostgresStore)).
    Postgres,
}

impl Backend {
    /// The name in the configuration file.
    pub fn name(self) -> &'static str {
        match self {
            Self::Redb => "redb",
            Self::Postgres => "postgres",
        }
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        let quota = Quota::default();
        let writer = WriterConfig::default();
        Self {
            queue_max_messages: quota.max_messages,
            queue_max_bytes: quota.max_bytes,
            retention_secs: 14 * 24 * 3600,
            queue_idle_secs: 60 * 24 * 3600,
            reap_interval_secs: 60,
            reap_batch: 10_000,
            write_queue_capacity: writer.queue_capacity,
            max_batch: writer.max_batch,
            backend: Backend::Redb,
            postgres_url: None,
            postgres_pool_size: 16,
            postgres_timeout_secs: 30,
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

    /// The PostgreSQL settings, if `postgres_url` is set.
    pub fn postgres(&self) -> Option<PostgresSettings> {
        let url = self.postgres_url.clone()?;
        Some(PostgresSettings {
            url,
            pool_size: self.postgres_pool_size,
            timeout: Duration::from_secs(self.postgres_timeout_secs),
        })
    }

    /// The PostgreSQL settings are complete and parse when the backend is
    /// PostgreSQL.
    fn check_backend(&self) -> Result<()> {
        if self.backend != Backend::Postgres {
            return Ok(());
        }
        if self.postgres_pool_size == 0 || self.postgres_timeout_secs == 0 {
            return Err(Error::ConfigValue(
                "storage.postgres_pool_size and storage.postgres_timeout_secs must be at least 1"
                    .to_owned(),
            ));
        }
        match self.postgres() {
            None => Err(Error::ConfigValue(
                "storage.backend = \"postgres\" needs storage.postgres_url".to_owned(),
            )),
            Some(settings) => settings.check(),
        }
    }
}

/// `[api]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiSection {
    /// Queues at most.
    pub max_queues: u64,
    /// Requests remembered at most (replay cache), in all.
    pub nonce_cache_capacity: usize,
    /// Requests remembered per queue (or creating key) at most.
    pub nonces_per_queue: usize,
    /// Queues one client address may create at once.
    pub create_burst_per_address: u32,
    /// Queues one client address may create per hour after its burst.
    pub create_per_address_per_hour: u32,
    /// Queues the provider creates at once, from all addresses.
    pub create_burst: u32,
    /// Queues the provider creates per hour after that burst.
    pub create_per_hour: u32,
}

impl Default for ApiSection {
    fn default() -> Self {
        let api = ApiConfig::default();
        Self {
            max_queues: api.max_queues,
            nonce_cache_capacity: api.nonce_cache_capacity,
            nonces_per_queue: api.nonces_per_queue,
            create_burst_per_address: api.create_burst_per_address,
            create_per_address_per_hour: api.create_per_address_per_hour,
            create_burst: api.create_burst,
            create_per_hour: api.create_per_hour,
        }
    }
}

impl ApiSection {
    /// As the API's settings.
    pub fn api(&self) -> ApiConfig {
        ApiConfig {
            max_queues: self.max_queues,
            nonce_cache_capacity: self.nonce_cache_capacity,
            nonces_per_queue: self.nonces_per_queue,
            create_burst_per_address: self.create_burst_per_address,
            create_per_address_per_hour: self.create_per_address_per_hour,
            create_burst: self.create_burst,
            create_per_hour: self.create_per_hour,
        }
    }
}

impl Config {
    /// A configuration with every default, keeping its files in `data_dir`
    /// (what in-process callers such as devnet start from).
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            ..Self::default()
        }
    }

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
        let base = path.parent().unwrap_or(Path::new("."));
        if config.data_dir.is_relative() {
            config.data_dir = base.join(&config.data_dir);
        }
        if config.identity_key_file.is_relative() {
            config.identity_key_file = base.join(&config.identity_key_file);
        }
        Ok(config)
    }

    /// Refuses values the provider cannot run with.
    pub fn validate(&self) -> Result<()> {
        let s = &self.storage;
        let a = &self.api;
        let checks: [(bool, &str); 10] = [
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
                a.max_queues == 0 || a.nonce_cache_capacity == 0 || a.nonces_per_queue == 0,
                "api.max_queues, api.nonce_cache_capacity and api.nonces_per_queue must be at least 1",
            ),
            (
                a.create_burst_per_address == 0 || a.create_burst == 0,
                "api.create_burst_per_address and api.create_burst must be at least 1",
            ),
            (
                s.queue_idle_secs == 0,
                "storage.queue_idle_secs must be at least 1",
            ),
            (
                self.http.max_connections == 0 || self.http.max_connections_per_address == 0,
                "http.max_connections and http.max_connections_per_address must be at least 1",
            ),
        ];
        for (bad, msg) in checks {
            if bad {
                return Err(Error::ConfigValue(msg.to_owned()));
            }
        }
        self.http
            .limits()
            .check()
            .map_err(|e| Error::ConfigValue(format!("http: {e}")))?;
        self.storage.check_backend()?;
        self.keys
            .check(self.network.epoch_secs)
            .map_err(node_config)?;
        self.engine.check().map_err(node_config)?;
        self.replay
            .check(self.key_lifetime())
            .map_err(node_config)?;
        self.directory.check().map_err(node_config)?;
        for (listen_key, listen, public_key, public) in [
            (
                "listen_addr",
                self.listen_addr,
                "public_addr",
                self.public_addr,
            ),
            (
                "http.listen",
                self.http.listen,
                "http.public_addr",
                self.http.public_addr,
            ),
        ] {
            if public.is_none() && listen.ip().is_unspecified() {
                return Err(Error::ConfigValue(format!(
                    "{listen_key} {listen} is a wildcard address: set {public_key} to the address others reach"
                )));
            }
        }
        for (key, addr) in [
            ("public_addr", self.public_addr),
            ("http.public_addr", self.http.public_addr),
        ] {
            if let Some(addr) = addr
                && (addr.ip().is_unspecified() || addr.port() == 0)
            {
                return Err(Error::ConfigValue(format!(
                    "{key} must be a concrete address and port"
                )));
            }
        }
        Ok(())
    }

    /// How long one Sphinx key is in use: an epoch plus the grace period
    /// (sizes the replay filter).
    pub fn key_lifetime(&self) -> Duration {
        Duration::from_secs(self.network.epoch_secs.saturating_add(self.keys.grace_secs))
    }

    /// The database file.
    pub fn database_path(&self) -> PathBuf {
        self.data_dir.join("mailbox.redb")
    }

    /// The identity key file (`identity_key_file`).
    pub fn identity_path(&self) -> PathBuf {
        self.identity_key_file.clone()
    }
}

/// A mix-node section's complaint as this crate's error.
pub(crate) fn node_config(e: murmur_node::Error) -> Error {
    match e {
        murmur_node::Error::Config(msg) => Error::ConfigValue(msg),
        murmur_node::Error::Directory { source, .. } => Error::Directory { source },
        other => Error::Node {
            what: "invalid configuration",
            source: Box::new(other),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pin() -> AuthorityPin {
        let k = ed25519_dalek::SigningKey::from_bytes(&[3; 32]);
        AuthorityPin {
            addr: "127.0.0.1:7100".parse().unwrap(),
            key: murmur_wire::IdentityKey::from(&k.verifying_key()),
        }
    }

    #[test]
    fn the_example_parses_to_the_defaults() {
        let text = example_config(&ExampleOptions::default());
        let parsed = Config::parse(&text, Path::new("example.toml")).unwrap();
        assert_eq!(parsed, Config::default());
    }

    #[test]
    fn the_example_carries_what_init_was_given() {
        let options = ExampleOptions {
            listen_addr: "0.0.0.0:7481".parse().unwrap(),
            public_addr: Some("192.0.2.1:7481".parse().unwrap()),
            http_listen: "0.0.0.0:7480".parse().unwrap(),
            http_public_addr: Some("192.0.2.1:7480".parse().unwrap()),
            operator_addr: "127.0.0.1:9482".parse().unwrap(),
            authorities: vec![pin()],
            threshold: 0,
        };
        let text = example_config(&options);
        let parsed = Config::parse(&text, Path::new("example.toml")).unwrap();
        assert_eq!(parsed.operator_addr, options.operator_addr);
        assert_eq!(parsed.listen_addr, options.listen_addr);
        assert_eq!(parsed.public_addr, options.public_addr);
        assert_eq!(parsed.http.listen, options.http_listen);
        assert_eq!(parsed.http.public_addr, options.http_public_addr);
        assert_eq!(parsed.directory.authorities, vec![pin()]);
        // Everything else stays at its default.
        let expected = Config {
            listen_addr: options.listen_addr,
            public_addr: options.public_addr,
            operator_addr: options.operator_addr,
            http: HttpConfig {
                listen: options.http_listen,
                public_addr: options.http_public_addr,
                ..HttpConfig::default()
            },
            directory: DirectorySettings {
                authorities: vec![pin()],
                ..DirectorySettings::default()
            },
            ..Config::default()
        };
        assert_eq!(parsed, expected);
    }

    #[test]
    fn every_default_is_in_the_example() {
        // Each key of each section appears uncommented in the example: a
        // key added in code but not documented fails here.
        let text = example_config(&ExampleOptions::default());
        let value: toml::Table = toml::from_str(&text).unwrap();
        let keys = |t: &toml::Table| t.keys().cloned().collect::<Vec<_>>();
        assert_eq!(
            keys(&value),
            [
                "api",
                "data_dir",
                "directory",
                "engine",
                "http",
                "identity_key_file",
                "keys",
                "listen_addr",
                "network",
                "operator_addr",
                "replay",
                "storage"
            ]
        );
        let engine = value["engine"].as_table().unwrap();
        assert_eq!(engine.len(), 16);
        let replay = value["replay"].as_table().unwrap();
        assert_eq!(replay.len(), 6);
    }

    #[test]
    fn unknown_keys_are_named() {
        for (text, key) in [
            ("[storage]\nretention = 5\n", "retention"),
            ("colour = 1\n", "colour"),
            ("[engine]\nworkerz = 3\n", "workerz"),
            ("[directory]\nthreshhold = 1\n", "threshhold"),
        ] {
            let err = Config::parse(text, Path::new("x.toml")).unwrap_err();
            let chain = format!("{err}: {}", std::error::Error::source(&err).unwrap());
            assert!(chain.contains(key), "{chain}");
        }
    }

    #[test]
    fn nonsense_values_are_refused() {
        for (text, needle) in [
            ("[storage]\nmax_batch = 0\n", "max_batch"),
            ("[keys]\ngrace_secs = 3600\n", "grace_secs"),
            ("[engine]\nunwrap_queue = 0\n", "unwrap_queue"),
            ("[replay]\nfsync_interval_ms = 0\n", "fsync_interval_ms"),
            ("public_addr = \"0.0.0.0:7481\"\n", "public_addr"),
            ("listen_addr = \"0.0.0.0:7481\"\n", "public_addr"),
            ("[http]\nlisten = \"[::]:0\"\n", "http.public_addr"),
            (
                "[http]\npublic_addr = \"192.0.2.1:0\"\n",
                "http.public_addr",
            ),
        ] {
            let err = Config::parse(text, Path::new("x.toml")).unwrap_err();
            assert!(err.to_string().contains(needle), "{text}: {err}");
        }
        // A pinned key that is not one is refused as the file is parsed;
        // the parser's error names it.
        let text = "[[directory.authorities]]\naddr = \"127.0.0.1:1\"\nkey = \"nope\"\n";
        let err = Config::parse(text, Path::new("x.toml")).unwrap_err();
        let chain = format!("{err}: {}", std::error::Error::source(&err).unwrap());
        assert!(chain.contains("nope"), "{chain}");
        let two = format!(
            "[directory]\nthreshold = 2\n[[directory.authorities]]\naddr = \"127.0.0.1:1\"\nkey = \"{}\"\n",
            pin().key
        );
        let err = Config::parse(&two, Path::new("x.toml")).unwrap_err();
        assert!(err.to_string().contains("threshold"), "{err}");
    }

    #[test]
    fn the_postgres_backend_is_chosen_in_storage() {
        let text = example_config(&ExampleOptions::default())
            .replace("backend = \"redb\"", "backend = \"postgres\"")
            .replace("# postgres_url = ", "postgres_url = ");
        let parsed = Config::parse(&text, Path::new("example.toml")).unwrap();
        assert_eq!(parsed.storage.backend, Backend::Postgres);
        let settings = parsed.storage.postgres().unwrap();
        assert_eq!(settings.url, "postgresql://murmur@127.0.0.1:5432/murmur");
        assert_eq!(settings.pool_size, 16);
        assert_eq!(settings.timeout, Duration::from_secs(30));
        // The connection string never shows in debug output.
        assert!(!format!("{settings:?}").contains("murmur@"));

        let chain = |text: &str| {
            let err = Config::parse(text, Path::new("x.toml")).unwrap_err();
            let mut chain = err.to_string();
            let mut source = std::error::Error::source(&err);
            while let Some(s) = source {
                chain = format!("{chain}: {s}");
                source = s.source();
            }
            chain
        };
        let pg = "[storage]\nbackend = \"postgres\"\n";
        for (text, needle) in [
            (pg.to_owned(), "postgres_url"),
            ("[storage]\nbackend = \"sqlite\"\n".to_owned(), "sqlite"),
            (
                format!("{pg}postgres_url = \"postgresql://u:s3cret@h:notaport/db\"\n"),
                "postgres_url",
            ),
            (
                format!("{pg}postgres_url = \"host=h\"\npostgres_pool_size = 0\n"),
                "postgres_pool_size",
            ),
        ] {
            let chain = chain(&text);
            assert!(chain.contains(needle), "{text}: {chain}");
            assert!(!chain.contains("s3cret"), "{chain}");
        }
        // The redb backend ignores the PostgreSQL keys.
        let redb = "[storage]\npostgres_pool_size = 0\n";
        assert!(Config::parse(redb, Path::new("x.toml")).is_ok());
    }

    #[test]
    fn relative_paths_follow_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mailbox.toml");
        std::fs::write(&path, "data_dir = \"data\"\n").unwrap();
        let config = Config::load(&path).unwrap();
        assert_eq!(config.data_dir, dir.path().join("data"));
        assert_eq!(config.identity_path(), dir.path().join("identity.key"));
    }
}
