//! The provider as a daemon: everything started from one configuration,
//! in-process ([`start_mailbox`]) or from the `murmur-mailbox` binary.
//!
//! ```text
//!  mixnet ─► packet engine (murmur-mixnode) ─► Mailbox::handle_final ─► writer ─► redb
//!               ▲ Sphinx keys (rotated)                                    │ durable
//!               └──────────── Outbound ◄── acknowledgement (deposit's SURB) ┘
//!  owners ─► fetch API (HTTP) ─► redb
//!  authorities ◄─ descriptor every epoch;  consensus ─► follower ─► engine (next hops)
//! ```
//!
//! The provider is the final hop of deposits, drop cover, client loops and
//! SURB replies addressed to its queues. It is never chosen as an
//! intermediate hop (the consensus lists it as a mailbox, not in a mix
//! layer); a packet that nevertheless asks it to forward is forwarded by
//! the engine like a mix would (delay and next hop checked against the
//! consensus), which tells an attacker nothing a mix would not.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use ed25519_dalek::SigningKey;
use http::StatusCode;
use murmur_directory::{DirectoryClient, spawn_follower};
use murmur_net::LinkSettings;
use murmur_net::clock::Clock;
use murmur_net::http::{ServerLimits, serve_with, spawn_server};
use murmur_net::keyfile::{self, InitIdentity};
use murmur_node::engine::{
    ClientPolicy, Engine, EngineConfig, EngineHandle, EngineStats, LinkConfig, Outbound, Topology,
};
use murmur_node::keys::{KeyManager, spawn_rotation};
use murmur_node::registration::{
    RegistrationMetrics, WatchTopology, node_descriptor, spawn_registration,
};
use murmur_wire::link::Purpose;
use murmur_wire::policy::epoch_at;
use murmur_wire::{IdentityKey, LinkSecretKey, NodeId, Packet, Role, SignedDescriptor};
use prometheus_client::registry::Registry;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::{Api, HealthCheck};
use crate::config::{Config, ExampleOptions, example_config, node_config};
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::provider::{Mailbox, PacketSink, WriterThread};
use crate::reaper::{ReaperConfig, run_reaper};
use crate::store::{Store, open_store};

/// How often the key rotation task reads the clock.
const ROTATION_CHECK: Duration = Duration::from_secs(1);

/// A running provider.
pub struct MailboxHandle {
    /// The bound packet address (where the mixnet delivers).
    pub packet_addr: SocketAddr,
    /// The packet address published in the descriptor.
    pub public_addr: SocketAddr,
    /// The bound address of the fetch API (encrypted links).
    pub http_addr: SocketAddr,
    /// The fetch API address published in the descriptor.
    pub public_http_addr: SocketAddr,
    /// The bound address of `/metrics` and `/healthz` (plain HTTP, for the
    /// operator).
    pub operator_addr: SocketAddr,
    /// The provider's node id (from its identity key).
    pub node_id: NodeId,
    metrics: Arc<Metrics>,
    engine: Arc<EngineHandle>,
    keys: Arc<KeyManager>,
    registration: RegistrationMetrics,
    identity: SigningKey,
    clock: Arc<dyn Clock>,
    done: CancellationToken,
    stopped: JoinHandle<()>,
}

impl std::fmt::Debug for MailboxHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MailboxHandle")
            .field("packet_addr", &self.packet_addr)
            .field("public_addr", &self.public_addr)
            .field("http_addr", &self.http_addr)
            .field("public_http_addr", &self.public_http_addr)
            .field("operator_addr", &self.operator_addr)
            .field("node_id", &self.node_id)
            .finish_non_exhaustive()
    }
}

impl MailboxHandle {
    /// The provider's metrics (the packet engine's are attached to them).
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The packet engine's counters now.
    pub fn stats(&self) -> EngineStats {
        self.engine.stats()
    }

    /// The registration counters (zero for a provider started without the
    /// directory).
    pub fn registration_metrics(&self) -> &RegistrationMetrics {
        &self.registration
    }

    /// The provider's Sphinx key manager.
    pub fn keys(&self) -> &KeyManager {
        &self.keys
    }

    /// The descriptor the provider publishes now (signed, verified).
    pub fn descriptor(&self) -> Result<SignedDescriptor> {
        mailbox_descriptor(
            &self.identity,
            self.public_addr,
            self.public_http_addr,
            &self.keys,
            self.clock.now_secs(),
        )
    }

    /// Resolves once the provider has stopped after its shutdown token was
    /// cancelled: requests in flight answered, the packet listener closed,
    /// every deposit handed to the writer committed (and acknowledged only
    /// then), the replay cache persisted, the database closed (it can be
    /// reopened at once).
    pub async fn wait(&self) {
        self.done.cancelled().await;
    }

    /// Like [`wait`](Self::wait), consuming the handle.
    pub async fn stopped(self) {
        if self.stopped.await.is_err() {
            tracing::error!("the mailbox shutdown task panicked");
        }
    }
}

/// Signs the descriptor of a provider whose packet address is `packet_addr`
/// and whose fetch API is at `http_addr`, published at unix time `now_secs`
/// with the Sphinx keys of the current and upcoming epochs.
pub fn mailbox_descriptor(
    identity: &SigningKey,
    packet_addr: SocketAddr,
    http_addr: SocketAddr,
    keys: &KeyManager,
    now_secs: u64,
) -> Result<SignedDescriptor> {
    node_descriptor(
        identity,
        Role::Mailbox,
        packet_addr,
        Some(http_addr),
        keys,
        now_secs,
    )
    .map_err(|source| Error::Node {
        what: "could not make the descriptor",
        source: Box::new(source),
    })
}

/// Starts a provider: opens (or creates) the database and the Sphinx keys
/// under `config.data_dir`, follows the verified consensus of the configured
/// authorities, registers its descriptor with every authority at start and
/// in every epoch, accepts packets on `config.listen_addr`, serves the fetch
/// API on `config.http.listen`, and runs until `shutdown` is cancelled.
///
/// Port 0 picks a free port for either listener; the handle has the bound
/// addresses. A failed start stops whatever it started without cancelling
/// `shutdown` (it runs on a child token).
pub async fn start_mailbox(
    config: Config,
    identity: SigningKey,
    clock: Arc<dyn Clock>,
    shutdown: CancellationToken,
) -> Result<MailboxHandle> {
    config.validate()?;
    let client = config.directory.client().map_err(node_config)?;
    let shutdown = shutdown.child_token();
    let watch = spawn_follower(client.clone(), clock.clone(), shutdown.clone());
    start(
        config,
        identity,
        clock,
        Arc::new(WatchTopology(watch)),
        Some(client),
        shutdown,
    )
    .await
}

/// Starts a provider that learns the network from `topology` instead of
/// following the directory, and does not register (tests, tools, callers
/// that feed the topology themselves). See [`start_mailbox`].
pub async fn start_mailbox_with_topology(
    config: Config,
    identity: SigningKey,
    clock: Arc<dyn Clock>,
    topology: Arc<dyn Topology>,
    shutdown: CancellationToken,
) -> Result<MailboxHandle> {
    start(
        config,
        identity,
        clock,
        topology,
        None,
        shutdown.child_token(),
    )
    .await
}

/// The engine's [`Outbound`], set once the engine has started. The
/// final-hop handler (and so its packet sink) must exist before the engine
/// does; no acknowledgement can be due before then (no packet arrives
/// before the engine runs), so the empty state is never used in practice
/// and would count the acknowledgement as failed.
#[derive(Default)]
struct LateOutbound(OnceLock<Outbound>);

impl PacketSink for LateOutbound {
    fn send(&self, first_hop: NodeId, packet: Packet) -> bool {
        match self.0.get() {
            Some(outbound) => outbound.send(first_hop, packet),
            None => false,
        }
    }
}

/// `shutdown` is the provider's own token (a child of the caller's).
async fn start(
    config: Config,
    identity: SigningKey,
    clock: Arc<dyn Clock>,
    topology: Arc<dyn Topology>,
    directory: Option<DirectoryClient>,
    shutdown: CancellationToken,
) -> Result<MailboxHandle> {
    let started = start_inner(config, identity, clock, topology, directory, &shutdown).await;
    if started.is_err() {
        // Stops the follower and anything else started on the token.
        shutdown.cancel();
    }
    started
}

async fn start_inner(
    config: Config,
    identity: SigningKey,
    clock: Arc<dyn Clock>,
    topology: Arc<dyn Topology>,
    directory: Option<DirectoryClient>,
    shutdown: &CancellationToken,
) -> Result<MailboxHandle> {
    config.validate()?;
    if config.storage.queue_idle_secs <= config.storage.retention_secs {
        tracing::warn!(
            queue_idle_secs = config.storage.queue_idle_secs,
            retention_secs = config.storage.retention_secs,
            "storage.queue_idle_secs is not longer than storage.retention_secs: a queue whose owner is away can be deleted with entries still within their retention"
        );
    }
    let node_id = IdentityKey::from(&identity.verifying_key()).node_id();
    let link_key = Arc::new(LinkSecretKey::derive(&identity.to_bytes()));
    private_dir(&config.data_dir)?;
    let store = {
        let config = config.clone();
        tokio::task::spawn_blocking(move || open_store(&config))
            .await
            .map_err(|_| Error::Task {
                during: "opening the database",
            })??
    };
    let metrics = Arc::new(Metrics::new());
    let count = {
        let store = store.clone();
        tokio::task::spawn_blocking(move || store.queue_count())
            .await
            .map_err(|_| Error::Task {
                during: "counting queues",
            })??
    };
    metrics.queues.set(count);

    let keys = {
        let dir = config.data_dir.join("keys");
        let epoch_secs = config.network.epoch_secs;
        let settings = config.keys.clone();
        let now = clock.now_secs();
        tokio::task::spawn_blocking(move || KeyManager::open(dir, epoch_secs, settings, now))
            .await
            .map_err(|_| Error::Task {
                during: "opening the Sphinx keys",
            })?
            .map_err(|source| Error::Node {
                what: "could not open the Sphinx keys",
                source: Box::new(source),
            })?
    };
    let keys = Arc::new(keys);

    // The final hop first (the engine needs it), its packet sink filled in
    // once the engine exists.
    let sink = Arc::new(LateOutbound::default());
    let (mailbox, writer) = Mailbox::start(
        store.clone(),
        sink.clone(),
        clock.clone(),
        config.storage.writer(),
        metrics.clone(),
    )?;
    let mut node_registry = Registry::with_prefix("murmur_mailbox");
    let registration = RegistrationMetrics::register(&mut node_registry);
    let engine = match Engine::start(
        EngineConfig {
            listen_addr: config.listen_addr,
            replay_dir: config.data_dir.join("replay"),
            key_lifetime: config.key_lifetime(),
            limits: config.engine.clone(),
            replay: config.replay.clone(),
            // Only mixes deliver to a provider: no client links here.
            link: LinkConfig {
                key: link_key.clone(),
                node_id,
                clients: ClientPolicy::Never,
                settings: LinkSettings::default(),
            },
        },
        keys.ring(),
        topology.clone(),
        Arc::new(mailbox.clone()),
        &mut node_registry,
        shutdown.clone(),
    ) {
        Ok(engine) => Arc::new(engine),
        Err(source) => {
            abort(shutdown, None, mailbox, writer).await;
            return Err(Error::Node {
                what: "could not start the packet engine",
                source: Box::new(source),
            });
        }
    };
    if sink.0.set(engine.outbound()).is_err() {
        // Unreachable: the sink is new and set only here.
        tracing::error!("the acknowledgement sink was already set");
    }
    metrics.attach_node_registry(node_registry);
    let packet_addr = engine.local_addr;
    let public_addr = config.public_addr.unwrap_or(packet_addr);

    let health = {
        let (topology, keys, clock) = (topology.clone(), keys.clone(), clock.clone());
        HealthCheck::new(move || health(node_id, &*topology, &keys, &*clock))
    };
    let api = Arc::new(
        Api::new(
            store.clone(),
            clock.clone(),
            metrics.clone(),
            config.api.api(),
        )
        .with_health(health),
    );
    // The fetch API: every connection is a link to this provider (the
    // client knows its link key from the consensus), then HTTP inside it.
    let api_listener = match tokio::net::TcpListener::bind(config.http.listen).await {
        Ok(l) => l,
        Err(source) => {
            abort(shutdown, Some(&engine), mailbox, writer).await;
            return Err(Error::Bind {
                addr: config.http.listen,
                source,
            });
        }
    };
    let http_addr = api_listener.local_addr().map_err(|source| Error::Bind {
        addr: config.http.listen,
        source,
    })?;
    let link_settings = LinkSettings {
        handshake_timeout: Duration::from_secs(config.http.header_timeout_secs),
        rekey_interval: Duration::from_secs(config.engine.link_rekey_secs),
    };
    let accept = {
        let (link_key, metrics) = (link_key.clone(), metrics.clone());
        move |tcp: tokio::net::TcpStream| {
            let (link_key, metrics) = (link_key.clone(), metrics.clone());
            async move {
                let _ = tcp.set_nodelay(true);
                match murmur_net::accept(tcp, Purpose::MailboxApi, &link_key, &link_settings).await
                {
                    Ok(link) => Some(link.stream),
                    Err(e) => {
                        metrics.api_handshake_failed(e.label());
                        tracing::debug!(error = %e, "fetch API link handshake failed");
                        None
                    }
                }
            }
        }
    };
    let queue_usage = api.queue_usage();
    let http_task = {
        let api = api.clone();
        tokio::spawn(serve_with(
            api_listener,
            accept,
            move |req| api.clone().handle(req),
            config.http.limits(),
            metrics.http_server().clone(),
            shutdown.clone(),
        ))
    };
    let (operator_addr, operator_task) = match spawn_server(
        config.operator_addr,
        move |req| api.clone().handle_operator(req),
        ServerLimits {
            max_connections: 32,
            ..ServerLimits::default()
        },
        shutdown.clone(),
    )
    .await
    {
        Ok(bound) => bound,
        Err(source) => {
            abort(shutdown, Some(&engine), mailbox, writer).await;
            return Err(Error::Bind {
                addr: config.operator_addr,
                source,
            });
        }
    };
    let public_http_addr = config.http.public_addr.unwrap_or(http_addr);

    // Nothing below can fail: the background tasks.
    let tasks = TaskTracker::new();
    tasks.spawn(run_reaper(
        store.clone(),
        clock.clone(),
        ReaperConfig {
            retention: Duration::from_secs(config.storage.retention_secs),
            interval: Duration::from_secs(config.storage.reap_interval_secs),
            batch: config.storage.reap_batch,
            queue_idle: Duration::from_secs(config.storage.queue_idle_secs),
        },
        queue_usage,
        metrics.clone(),
        shutdown.clone(),
    ));
    spawn_rotation(
        keys.clone(),
        clock.clone(),
        ROTATION_CHECK,
        shutdown.clone(),
        &tasks,
    );
    if let Some(client) = directory {
        let (identity, keys) = (identity.clone(), keys.clone());
        spawn_registration(
            client,
            move |now| {
                node_descriptor(
                    &identity,
                    Role::Mailbox,
                    public_addr,
                    Some(public_http_addr),
                    &keys,
                    now,
                )
            },
            config.network.epoch_secs,
            clock.clone(),
            registration.clone(),
            shutdown.clone(),
            &tasks,
        );
    }
    tasks.close();
    tracing::info!(%node_id, %packet_addr, %http_addr, %operator_addr, "mailbox provider started");

    let done = CancellationToken::new();
    let stopped = tokio::spawn(stop_when_cancelled(
        shutdown.clone(),
        [http_task, operator_task],
        engine.clone(),
        tasks,
        mailbox,
        writer,
        store,
        done.clone(),
    ));
    Ok(MailboxHandle {
        packet_addr,
        public_addr,
        http_addr,
        public_http_addr,
        operator_addr,
        node_id,
        metrics,
        engine,
        keys,
        registration,
        identity,
        clock,
        done,
        stopped,
    })
}

/// The orderly stop. Packets first: once the engine's workers are joined no
/// more deposits reach the writer; then the writer commits what it holds
/// and stops (every deposit it acknowledges is durable before its
/// acknowledgement is built); the acknowledgement tasks finish (an
/// acknowledgement the stopped links no longer take is counted as failed,
/// and its sender retransmits); last the database closes.
#[allow(clippy::too_many_arguments)]
async fn stop_when_cancelled(
    shutdown: CancellationToken,
    http_tasks: [JoinHandle<()>; 2],
    engine: Arc<EngineHandle>,
    tasks: TaskTracker,
    mailbox: Mailbox,
    writer: WriterThread,
    store: Arc<dyn Store>,
    done: CancellationToken,
) {
    shutdown.cancelled().await;
    for task in http_tasks {
        if task.await.is_err() {
            tracing::error!("an HTTP server task panicked");
        }
    }
    engine.wait().await;
    tasks.wait().await;
    let acks = mailbox.tasks().clone();
    drop(mailbox);
    join_writer(writer).await;
    acks.close();
    acks.wait().await;
    drop(store);
    tracing::info!("mailbox provider stopped");
    done.cancel();
}

/// Undoes a start that failed after the write path was running.
async fn abort(
    shutdown: &CancellationToken,
    engine: Option<&EngineHandle>,
    mailbox: Mailbox,
    writer: WriterThread,
) {
    shutdown.cancel();
    if let Some(engine) = engine {
        engine.wait().await;
    }
    let acks = mailbox.tasks().clone();
    drop(mailbox);
    join_writer(writer).await;
    acks.close();
    acks.wait().await;
}

async fn join_writer(writer: WriterThread) {
    if tokio::task::spawn_blocking(move || writer.join())
        .await
        .is_err()
    {
        tracing::error!("could not join the mailbox writer thread");
    }
}

/// What `/healthz` says: 200 once the provider has a key for the current
/// epoch and the consensus in force lists it as a mailbox.
fn health(
    node_id: NodeId,
    topology: &dyn Topology,
    keys: &KeyManager,
    clock: &dyn Clock,
) -> (StatusCode, String) {
    let epoch = epoch_at(clock.now_secs(), keys.epoch_secs());
    if keys.ring().load().get(epoch).is_none() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("no Sphinx key for the current epoch {epoch}"),
        );
    }
    match topology.current() {
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "no consensus yet".to_owned(),
        ),
        Some(c) if c.params().epoch_secs != keys.epoch_secs() => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "the network's epochs are {} s, network.epoch_secs is {}: fix the configuration",
                c.params().epoch_secs,
                keys.epoch_secs()
            ),
        ),
        Some(c) => match c.node(&node_id) {
            Some(n) if n.role == Role::Mailbox => (
                StatusCode::OK,
                format!("ok: epoch {}, listed as a mailbox", c.epoch()),
            ),
            _ => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "not listed as a mailbox in the consensus for epoch {}",
                    c.epoch()
                ),
            ),
        },
    }
}

/// Creates `dir` (and its parents) readable by the owner only (0700) if it
/// does not exist; an existing directory keeps its mode.
fn private_dir(dir: &Path) -> Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir).map_err(|source| Error::File {
        action: "create",
        path: dir.to_path_buf(),
        source,
    })
}

/// Writes `DIR/mailbox.toml` (the commented example configuration with
/// `options`) and the identity key `DIR/identity.key` (0600). An existing
/// configuration is an error unless `force`, which rewrites it. An existing
/// identity key is kept, unless `new_identity`, which replaces it (the
/// result names the key it replaced); a missing one is made. Returns the
/// configuration's path and what happened to the key, whose public half
/// directory operators admit and whose node id names the provider.
pub fn init_dir(
    dir: &Path,
    options: &ExampleOptions,
    force: bool,
    new_identity: bool,
) -> Result<(PathBuf, InitIdentity)> {
    let config_path = dir.join("mailbox.toml");
    let text = example_config(options);
    // Never write what `run` would refuse.
    Config::parse(&text, &config_path)?;
    private_dir(dir)?;
    if !force && config_path.exists() {
        return Err(Error::File {
            action: "write",
            path: config_path,
            source: std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "the file exists; pass --force to rewrite it (the identity key is kept)",
            ),
        });
    }
    let identity =
        keyfile::init_identity(&dir.join("identity.key"), new_identity).map_err(Error::KeyFile)?;
    std::fs::write(&config_path, text.as_bytes()).map_err(|source| Error::File {
        action: "write",
        path: config_path.clone(),
        source,
    })?;
    Ok((config_path, identity))
}

/// Reads an identity key file (`murmur_net::keyfile`).
pub fn load_identity(path: &Path) -> Result<SigningKey> {
    keyfile::read_signing_key(path).map_err(Error::KeyFile)
}
