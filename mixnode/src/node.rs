//! A whole mix node in-process: keys and their rotation, the engine, the
//! mix's final hop and loop cover, `/metrics` and `/healthz`.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, StatusCode};
use hyper::body::Incoming;
use murmur_directory::spawn_follower;
use murmur_net::clock::Clock;
use murmur_net::http::{HttpServerMetrics, ServerLimits, metrics, spawn_server_with_metrics, text};
use murmur_wire::ed25519_dalek::SigningKey;
use murmur_wire::policy::epoch_at;
use murmur_wire::{IdentityKey, NodeId, Role, SignedDescriptor};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::MixNodeConfig;
use crate::loops::{LoopMetrics, LoopTracker, MixFinalHop, spawn_loop_cover};
use murmur_node::engine::{
    ClientPolicy, Engine, EngineConfig, EngineHandle, EngineStats, LinkConfig, Topology,
};
use murmur_node::fsutil;
use murmur_node::keys::{KeyManager, spawn_rotation};
use murmur_node::registration::{
    RegistrationMetrics, WatchTopology, node_descriptor, spawn_registration,
};
use murmur_node::{Error, Result};

/// How often the key rotation task reads the clock.
const ROTATION_CHECK: Duration = Duration::from_secs(1);

/// A running mix node.
pub struct MixNodeHandle {
    /// The bound packet address.
    pub packet_addr: SocketAddr,
    /// The bound `/metrics` and `/healthz` address.
    pub http_addr: SocketAddr,
    /// The packet address published in the descriptor.
    pub public_addr: SocketAddr,
    /// The node id.
    pub node_id: NodeId,
    engine: EngineHandle,
    keys: Arc<KeyManager>,
    loops: LoopMetrics,
    registration: RegistrationMetrics,
    identity: SigningKey,
    clock: Arc<dyn Clock>,
    tracker: TaskTracker,
}

impl std::fmt::Debug for MixNodeHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MixNodeHandle")
            .field("packet_addr", &self.packet_addr)
            .field("http_addr", &self.http_addr)
            .field("node_id", &self.node_id)
            .finish_non_exhaustive()
    }
}

impl MixNodeHandle {
    /// The descriptor the node publishes now (signed, verified).
    pub fn descriptor(&self) -> Result<SignedDescriptor> {
        node_descriptor(
            &self.identity,
            Role::Mix,
            self.public_addr,
            None,
            &self.keys,
            self.clock.now_secs(),
        )
    }

    /// The engine's counters.
    pub fn stats(&self) -> EngineStats {
        self.engine.stats()
    }

    /// The loop cover counters.
    pub fn loop_metrics(&self) -> &LoopMetrics {
        &self.loops
    }

    /// The registration counters (zero for a node started without the
    /// directory).
    pub fn registration_metrics(&self) -> &RegistrationMetrics {
        &self.registration
    }

    /// The node's key manager.
    pub fn keys(&self) -> &KeyManager {
        &self.keys
    }

    /// Resolves once the node has stopped after its shutdown token was
    /// cancelled (replay cache persisted, links closed).
    pub async fn wait(&self) {
        self.engine.wait().await;
        self.tracker.wait().await;
    }
}

/// Starts a mix node: follows the verified consensus of the configured
/// authorities (and learns its layer from it), registers its descriptor
/// with every authority at start and in every epoch, and runs until
/// `shutdown` is cancelled. This is what `murmur-mixnode run` does; devnet
/// calls it in-process (port 0 works for both addresses).
pub async fn start_mixnode(
    config: MixNodeConfig,
    identity: SigningKey,
    clock: Arc<dyn Clock>,
    shutdown: CancellationToken,
) -> Result<MixNodeHandle> {
    config.validate()?;
    let client = config.directory.client()?;
    // A token of our own: a failed start stops what it started without
    // cancelling the caller's token (devnet shares one between nodes).
    let shutdown = shutdown.child_token();
    let watch = spawn_follower(client.clone(), clock.clone(), shutdown.clone());
    let epoch_secs = config.network.epoch_secs;
    let node = match start_mixnode_with_topology(
        config,
        identity,
        clock.clone(),
        Arc::new(WatchTopology(watch)),
        shutdown.clone(),
    )
    .await
    {
        Ok(node) => node,
        Err(e) => {
            shutdown.cancel();
            return Err(e);
        }
    };
    let (identity, public_addr, keys) =
        (node.identity.clone(), node.public_addr, node.keys.clone());
    spawn_registration(
        client,
        move |now| node_descriptor(&identity, Role::Mix, public_addr, None, &keys, now),
        epoch_secs,
        clock,
        node.registration.clone(),
        shutdown,
        &node.tracker,
    );
    Ok(node)
}

/// Starts a mix node that learns the network from `topology` instead of
/// following the directory, and does not register (tests, tools, and
/// callers that feed the topology themselves). See [`start_mixnode`] for
/// the full daemon.
pub async fn start_mixnode_with_topology(
    config: MixNodeConfig,
    identity: SigningKey,
    clock: Arc<dyn Clock>,
    topology: Arc<dyn Topology>,
    shutdown: CancellationToken,
) -> Result<MixNodeHandle> {
    config.validate()?;
    // A token of our own: a failed start stops what it started without
    // cancelling the caller's token (devnet shares one between nodes).
    let shutdown = shutdown.child_token();
    let node_id = IdentityKey::from(&identity.verifying_key()).node_id();
    fsutil::private_dir(&config.data_dir)?;
    let keys = {
        let dir = config.data_dir.join("keys");
        let epoch_secs = config.network.epoch_secs;
        let settings = config.keys.clone();
        let now = clock.now_secs();
        tokio::task::spawn_blocking(move || KeyManager::open(dir, epoch_secs, settings, now))
            .await
            .map_err(|e| Error::Config(format!("key manager task failed: {e}")))??
    };
    let keys = Arc::new(keys);
    let tracker = TaskTracker::new();
    spawn_rotation(
        keys.clone(),
        clock.clone(),
        ROTATION_CHECK,
        shutdown.clone(),
        &tracker,
    );

    let mut registry = Registry::with_prefix("murmur_mixnode");
    let loop_metrics = LoopMetrics::register(&mut registry);
    let registration = RegistrationMetrics::register(&mut registry);
    let loops = Arc::new(Mutex::new(LoopTracker::new(config.loops.max_outstanding)));
    let final_hop = Arc::new(MixFinalHop::new(
        node_id,
        loops.clone(),
        loop_metrics.clone(),
    ));
    let engine = Engine::start(
        EngineConfig {
            listen_addr: config.listen_addr,
            replay_dir: config.data_dir.join("replay"),
            key_lifetime: config.key_lifetime(),
            limits: config.engine.clone(),
            replay: config.replay.clone(),
            link: LinkConfig::for_node(&identity.to_bytes(), node_id, ClientPolicy::EntryLayer),
        },
        keys.ring(),
        topology.clone(),
        final_hop,
        &mut registry,
        shutdown.clone(),
    )
    .inspect_err(|_| shutdown.cancel())?;
    let public_addr = config.public_addr.unwrap_or(engine.local_addr);
    if public_addr.ip().is_unspecified() {
        shutdown.cancel();
        engine.wait().await;
        return Err(Error::Config(format!(
            "listen_addr {} is a wildcard address: set public_addr to the address other nodes reach",
            config.listen_addr
        )));
    }

    spawn_loop_cover(
        node_id,
        engine.outbound(),
        topology.clone(),
        loops,
        loop_metrics.clone(),
        config.loops.clone(),
        shutdown.clone(),
        &tracker,
    );

    let http_metrics = HttpServerMetrics::default();
    http_metrics.register(&mut registry);
    let registry = Arc::new(registry);
    let health = Health {
        node_id,
        topology,
        keys: keys.clone(),
        clock: clock.clone(),
    };
    let handler = move |req: Request<Incoming>| {
        let registry = registry.clone();
        let health = health.clone();
        async move {
            match req.uri().path() {
                "/metrics" => metrics(&registry),
                "/healthz" => {
                    let (status, body) = health.check();
                    text(status, body)
                }
                _ => text(StatusCode::NOT_FOUND, "not found"),
            }
        }
    };
    let limits = ServerLimits {
        max_connections: 32,
        ..ServerLimits::default()
    };
    let (http_addr, server) = match spawn_server_with_metrics(
        config.http_addr,
        handler,
        limits,
        http_metrics,
        shutdown.clone(),
    )
    .await
    {
        Ok(v) => v,
        Err(source) => {
            shutdown.cancel();
            engine.wait().await;
            return Err(Error::Bind {
                addr: config.http_addr,
                source,
            });
        }
    };
    tracker.spawn(async move {
        let _ = server.await;
    });
    tracker.close();
    tracing::info!(node_id = %node_id, "mix node started");
    Ok(MixNodeHandle {
        packet_addr: engine.local_addr,
        http_addr,
        public_addr,
        node_id,
        engine,
        keys,
        loops: loop_metrics,
        registration,
        identity,
        clock,
        tracker,
    })
}

#[derive(Clone)]
struct Health {
    node_id: NodeId,
    topology: Arc<dyn Topology>,
    keys: Arc<KeyManager>,
    clock: Arc<dyn Clock>,
}

impl Health {
    fn check(&self) -> (StatusCode, String) {
        let epoch = epoch_at(self.clock.now_secs(), self.keys.epoch_secs());
        if self.keys.ring().load().get(epoch).is_none() {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("no Sphinx key for the current epoch {epoch}"),
            );
        }
        match self.topology.current() {
            None => (
                StatusCode::SERVICE_UNAVAILABLE,
                "no consensus yet".to_owned(),
            ),
            Some(c) if c.params().epoch_secs != self.keys.epoch_secs() => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "the network's epochs are {} s, network.epoch_secs is {}: fix the configuration",
                    c.params().epoch_secs,
                    self.keys.epoch_secs()
                ),
            ),
            Some(c) => match c.node(&self.node_id).and_then(|n| n.layer) {
                Some(layer) => (
                    StatusCode::OK,
                    format!("ok: epoch {}, layer {layer}", c.epoch()),
                ),
                None => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!(
                        "not listed as a mix in the consensus for epoch {}",
                        c.epoch()
                    ),
                ),
            },
        }
    }
}
