//! The packet engine: the node plumbing shared by mix nodes and mailbox
//! providers.
//!
//! ```text
//!  TCP ──► connection tasks ──► unwrap queue ──► worker threads ──► delay queue ──► links ──► TCP
//!          (PacketCodec,        (bounded,        (KeyRing::unwrap,   (DelayQueue,    (one per
//!           read timeout,        drop when        replay cache,       bounded)        next hop,
//!           connection cap)      full)            finish)                             bounded)
//!                                                     │
//!                                                     └──► FinalHop::deliver (this node is the final hop)
//! ```
//!
//! * **Inbound**: a TCP listener; connections are capped by a semaphore;
//!   each connection first completes a link handshake as the responder
//!   (`murmur_net::accept`: Noise XKpsk3 with ML-KEM, `docs/protocol.md`
//!   §4) within the handshake timeout, and is then a node (its link key is
//!   in the consensus) or an unidentified client, which only an entry-layer
//!   mix accepts ([`ClientPolicy`]). Frames are then read with
//!   [`murmur_wire::PacketCodec`] from the decrypted stream and must
//!   complete within the read timeout. A failed handshake, a record that
//!   does not verify, or a bad frame (garbage header, wrong size, truncated)
//!   is counted by reason and closes that connection only.
//! * **Unwrapping** runs on worker threads (one per core plus one by default), fed by
//!   a bounded channel; when it is full, packets are dropped and counted. A
//!   packet that waited longer than `max_unwrap_dwell_ms` is dropped before
//!   any work is done on it. [`murmur_wire::KeyRing::unwrap`] finds the key
//!   and yields the replay tag; the replay cache is checked before the rest
//!   of the work.
//! * **Delays**: a forward packet is held until its arrival time plus the
//!   delay in its header (the sender's choice); a delay over the consensus
//!   `max_delay_us` is dropped. A tokio `DelayQueue` holds packets until
//!   shortly before their deadline and a release thread until the deadline
//!   itself (tokio's timer alone would add up to a millisecond). Both are
//!   bounded together.
//! * **Links**: one persistent outbound connection per next hop, created on
//!   demand, reconnecting with exponential backoff, with a bounded queue,
//!   closed when idle. A next hop must be listed in the current or the
//!   previous epoch's consensus; the link authenticates it by the link key
//!   listed there, and this node by its own.
//!
//! Every drop is counted by reason (see [`DropReason`]); no per-packet data
//! is logged at info or above.

mod capacity;
mod delay;
mod inbound;
mod links;
mod metrics;
mod replay;
mod topology;
mod worker;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use murmur_net::LinkSettings;
use murmur_wire::{
    Delivery, Destination, LinkPublicKey, LinkSecretKey, NodeId, Packet, VerifiedConsensus,
};
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::error::{Error, Result};
use crate::keys::KeyRingHandle;

pub use capacity::measure_unwrap_rate;
pub use metrics::{CloseReason, DropReason};
pub use replay::{MAX_SEGMENTS, ReplayCache, ReplaySettings, ReplaySizing, ReplayStats, Seen};
pub use topology::StaticTopology;

use links::Links;
use metrics::EngineMetrics;

/// What the engine hands packets for which this node is the final hop to
/// (called off the I/O tasks, on a worker thread: do not block for long).
pub trait FinalHop: Send + Sync + 'static {
    /// One packet addressed to `destination` arrived at its final hop.
    fn deliver(&self, destination: Destination, delivery: Delivery);
}

/// Where the engine learns the network: the consensus for the current epoch
/// and recent ones (next-hop resolution, max delay, loop rate, own layer).
pub trait Topology: Send + Sync + 'static {
    /// The consensus of the current epoch, if one is known.
    fn current(&self) -> Option<Arc<VerifiedConsensus>>;
    /// The consensus of `epoch`, if still held.
    fn for_epoch(&self, epoch: u64) -> Option<Arc<VerifiedConsensus>>;
}

/// The hard upper bound on any packet delay, whatever the consensus says.
pub const MAX_DELAY_CAP: Duration = Duration::from_secs(24 * 3600);

/// Looks `id` up in the current consensus, then in the previous epoch's:
/// its packet address and link key.
pub fn resolve(topology: &dyn Topology, id: &NodeId) -> Option<(SocketAddr, LinkPublicKey)> {
    let current = topology.current()?;
    if let Some(node) = current.node(id) {
        return Some((node.packet_addr, node.link_key.clone()));
    }
    let previous = topology.for_epoch(current.epoch().checked_sub(1)?)?;
    previous
        .node(id)
        .map(|n| (n.packet_addr, n.link_key.clone()))
}

/// The consensuses a peer is looked up in: the current one, the previous
/// and the next (around an epoch change, peers may be a document ahead or
/// behind).
fn recent(topology: &dyn Topology) -> Vec<Arc<VerifiedConsensus>> {
    let Some(current) = topology.current() else {
        return Vec::new();
    };
    let epoch = current.epoch();
    let mut out = vec![current];
    for e in [epoch.checked_sub(1), epoch.checked_add(1)]
        .into_iter()
        .flatten()
    {
        if let Some(c) = topology.for_epoch(e) {
            out.push(c);
        }
    }
    out
}

/// Who may open a packet link to this node without being a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientPolicy {
    /// Clients only while this node is a first-layer (entry) mix in a recent
    /// consensus; other mixes take packets only from nodes, so a client
    /// cannot enter the network past the first layer.
    EntryLayer,
    /// Never: a mailbox's packet port (only mixes deliver to it).
    Never,
    /// Always (tests and tools that play the client).
    Always,
}

/// How the engine's links authenticate: this node's link key, its id (to
/// find its own layer) and who may call it.
#[derive(Clone)]
pub struct LinkConfig {
    /// This node's secret link key (the one its descriptor publishes).
    pub key: Arc<LinkSecretKey>,
    /// This node's id.
    pub node_id: NodeId,
    /// Who may call without being a node.
    pub clients: ClientPolicy,
    /// Handshake timeout and rekey interval; [`Engine::start`] sets them
    /// from the engine's limits (`handshake_timeout_ms`, `link_rekey_secs`;
    /// outbound links use `connect_timeout_ms` for connect and handshake).
    pub settings: LinkSettings,
}

impl std::fmt::Debug for LinkConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkConfig")
            .field("node_id", &self.node_id)
            .field("clients", &self.clients)
            .finish_non_exhaustive()
    }
}

impl LinkConfig {
    /// The link configuration of the node whose identity secret is
    /// `identity_secret` (the link key derives from it).
    pub fn for_node(identity_secret: &[u8; 32], node_id: NodeId, clients: ClientPolicy) -> Self {
        Self {
            key: Arc::new(LinkSecretKey::derive(identity_secret)),
            node_id,
            clients,
            settings: LinkSettings::default(),
        }
    }

    /// True if an initiator whose static key is `dh` is a node of a recent
    /// consensus.
    fn is_node(&self, topology: &dyn Topology, dh: &[u8; 32]) -> bool {
        recent(topology)
            .iter()
            .any(|c| c.node_by_link_key(dh).is_some())
    }

    /// True if this node takes links from clients now.
    fn takes_clients(&self, topology: &dyn Topology) -> bool {
        match self.clients {
            ClientPolicy::Always => true,
            ClientPolicy::Never => false,
            ClientPolicy::EntryLayer => recent(topology)
                .iter()
                .any(|c| c.node(&self.node_id).and_then(|n| n.layer) == Some(0)),
        }
    }
}

/// Engine tunables (the `[engine]` table of the configuration).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineLimits {
    /// Unwrap worker threads; 0 = one per core, plus one.
    pub workers: usize,
    /// Inbound connections served at once; more wait in the accept backlog.
    pub max_connections: usize,
    /// An inbound connection must complete a frame within this, seconds
    /// (idle and slow peers are closed).
    pub read_timeout_secs: u64,
    /// An inbound connection must complete its link handshake within
    /// this, ms (outbound links: `connect_timeout_ms` covers both).
    pub handshake_timeout_ms: u64,
    /// Each direction of a link is rekeyed at least this often, seconds.
    pub link_rekey_secs: u64,
    /// Packets waiting for a worker; more are dropped.
    pub unwrap_queue: usize,
    /// A packet that waited longer than this for a worker is dropped, ms.
    pub max_unwrap_dwell_ms: u64,
    /// Packets held for their delay at once; more are dropped.
    pub max_delayed: usize,
    /// Packets queued per outbound link; more are dropped.
    pub link_queue: usize,
    /// Packets queued in all outbound links together; more are dropped.
    pub max_link_queued: usize,
    /// Outbound links open at once.
    pub max_links: usize,
    /// Time to connect an outbound link, ms.
    pub connect_timeout_ms: u64,
    /// Time to write a batch of packets to a link before it is reset, ms.
    pub write_timeout_ms: u64,
    /// An outbound link with nothing to send for this long is closed, seconds.
    pub link_idle_timeout_secs: u64,
    /// First reconnection backoff, ms (doubles up to `reconnect_max_ms`).
    pub reconnect_min_ms: u64,
    /// Largest reconnection backoff, ms.
    pub reconnect_max_ms: u64,
}

impl Default for EngineLimits {
    fn default() -> Self {
        Self {
            workers: 0,
            max_connections: 1024,
            read_timeout_secs: 180,
            handshake_timeout_ms: 10_000,
            link_rekey_secs: 600,
            unwrap_queue: 2048,
            max_unwrap_dwell_ms: 250,
            max_delayed: 50_000,
            link_queue: 2048,
            max_link_queued: 16_384,
            max_links: 1024,
            connect_timeout_ms: 5_000,
            write_timeout_ms: 10_000,
            link_idle_timeout_secs: 120,
            reconnect_min_ms: 100,
            reconnect_max_ms: 30_000,
        }
    }
}

impl EngineLimits {
    /// Checks that every bound is usable.
    pub fn check(&self) -> Result<()> {
        let positive = [
            ("max_connections", self.max_connections as u64),
            ("read_timeout_secs", self.read_timeout_secs),
            ("handshake_timeout_ms", self.handshake_timeout_ms),
            ("link_rekey_secs", self.link_rekey_secs),
            ("unwrap_queue", self.unwrap_queue as u64),
            ("max_unwrap_dwell_ms", self.max_unwrap_dwell_ms),
            ("max_delayed", self.max_delayed as u64),
            ("link_queue", self.link_queue as u64),
            ("max_link_queued", self.max_link_queued as u64),
            ("max_links", self.max_links as u64),
            ("connect_timeout_ms", self.connect_timeout_ms),
            ("write_timeout_ms", self.write_timeout_ms),
            ("link_idle_timeout_secs", self.link_idle_timeout_secs),
            ("reconnect_min_ms", self.reconnect_min_ms),
        ];
        for (name, v) in positive {
            if v == 0 {
                return Err(Error::Config(format!("engine.{name} must be positive")));
            }
        }
        // Durations must stay far from overflowing a clock reading.
        let week_ms = 7 * 24 * 3600 * 1000u64;
        let durations_ms = [
            (
                "read_timeout_secs",
                self.read_timeout_secs.saturating_mul(1000),
            ),
            ("max_unwrap_dwell_ms", self.max_unwrap_dwell_ms),
            ("handshake_timeout_ms", self.handshake_timeout_ms),
            ("link_rekey_secs", self.link_rekey_secs.saturating_mul(1000)),
            ("connect_timeout_ms", self.connect_timeout_ms),
            ("write_timeout_ms", self.write_timeout_ms),
            (
                "link_idle_timeout_secs",
                self.link_idle_timeout_secs.saturating_mul(1000),
            ),
            ("reconnect_max_ms", self.reconnect_max_ms),
        ];
        for (name, ms) in durations_ms {
            if ms > week_ms {
                return Err(Error::Config(format!(
                    "engine.{name} must be at most a week"
                )));
            }
        }
        if self.reconnect_max_ms < self.reconnect_min_ms {
            return Err(Error::Config(
                "engine.reconnect_max_ms must be at least engine.reconnect_min_ms".into(),
            ));
        }
        if self.workers > 1024 || self.max_delayed > 100_000_000 {
            return Err(Error::Config("engine limits are out of range".into()));
        }
        Ok(())
    }

    /// The number of worker threads to start: `workers`, or by default one
    /// more than the cores, so that no core idles while the I/O thread or
    /// the kernel holds one worker's core (measured with `mix-load` on 2
    /// cores: 81 – 83 % of unwrap × cores with 3 workers, 79 – 80 % with 2,
    /// and the node's I/O per packet from 10 to 6 µs: fuller batches).
    pub fn worker_count(&self) -> usize {
        if self.workers > 0 {
            self.workers
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get()) + 1
        }
    }
}

/// Everything [`Engine::start`] needs besides its collaborators.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Where to accept packet links (port 0 picks one).
    pub listen_addr: SocketAddr,
    /// Directory of the replay cache (created 0700).
    pub replay_dir: PathBuf,
    /// How long one Sphinx key is in use: an epoch plus the grace period
    /// (sizes the replay filters).
    pub key_lifetime: Duration,
    /// Tunables.
    pub limits: EngineLimits,
    /// Replay cache settings.
    pub replay: ReplaySettings,
    /// Link authentication.
    pub link: LinkConfig,
}

/// Lets the owner send its own packets (the mailbox's acknowledgements, the
/// mix's loops) through the engine's outbound links.
#[derive(Clone)]
pub struct Outbound {
    links: Arc<Links>,
}

impl std::fmt::Debug for Outbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbound").finish_non_exhaustive()
    }
}

impl Outbound {
    /// Queues `packet` on the link to `next_hop` (which must be in the
    /// current or previous consensus). Returns false if it was dropped
    /// (counted by reason). Never blocks.
    pub fn send(&self, next_hop: NodeId, packet: Packet) -> bool {
        match self.links.send(next_hop, packet) {
            Ok(()) => {
                self.links.metrics.sent_own.inc();
                true
            }
            Err(reason) => {
                self.links.metrics.drop(reason);
                false
            }
        }
    }
}

/// A snapshot of the engine's counters (the same numbers `/metrics` shows).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EngineStats {
    /// Well-formed frames read.
    pub received: u64,
    /// Packets written to a next hop's link.
    pub forwarded: u64,
    /// Packets handed to the final-hop handler.
    pub delivered: u64,
    /// Own packets accepted by [`Outbound::send`].
    pub sent_own: u64,
    /// Drops by reason (label value → count).
    pub dropped: BTreeMap<&'static str, u64>,
    /// Inbound connections closed by reason (label value → count).
    pub closed: BTreeMap<&'static str, u64>,
    /// Packets waiting for a worker.
    pub unwrap_queue: i64,
    /// Packets held for their delay.
    pub delay_queue: i64,
    /// Packets waiting in link queues.
    pub link_queue: i64,
    /// Outbound links connected.
    pub links_up: i64,
    /// Inbound connections open.
    pub connections: i64,
    /// Link handshakes that failed, both sides.
    pub handshake_failures: u64,
    /// Inbound links from nodes (authenticated by the consensus).
    pub peers_node: u64,
    /// Inbound links from unidentified clients (accepted).
    pub peers_client: u64,
}

impl EngineStats {
    /// Drops for one reason.
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.dropped.get(reason.as_str()).copied().unwrap_or(0)
    }

    /// Inbound connections closed for one reason.
    pub fn closed(&self, reason: CloseReason) -> u64 {
        self.closed.get(reason.as_str()).copied().unwrap_or(0)
    }
}

/// A running engine.
#[derive(Debug)]
pub struct EngineHandle {
    /// The bound packet address.
    pub local_addr: SocketAddr,
    outbound: Outbound,
    metrics: EngineMetrics,
    tracker: TaskTracker,
}

impl EngineHandle {
    /// A handle for sending the owner's own packets.
    pub fn outbound(&self) -> Outbound {
        self.outbound.clone()
    }

    /// The engine's counters now.
    pub fn stats(&self) -> EngineStats {
        let m = &self.metrics;
        EngineStats {
            received: m.received.get(),
            forwarded: m.forwarded.get(),
            delivered: m.delivered.get(),
            sent_own: m.sent_own.get(),
            dropped: DropReason::ALL
                .iter()
                .map(|r| (r.as_str(), m.dropped(*r)))
                .collect(),
            closed: CloseReason::ALL
                .iter()
                .map(|r| (r.as_str(), m.closed_count(*r)))
                .collect(),
            unwrap_queue: m.unwrap_queue.get(),
            delay_queue: m.delay_queue.get(),
            link_queue: m.link_queue.get(),
            links_up: m.links_up.get(),
            connections: m.connections_open.get(),
            handshake_failures: m.handshake_failures(),
            peers_node: m.peers("node"),
            peers_client: m.peers("client"),
        }
    }

    /// Resolves once the engine has stopped after its shutdown token was
    /// cancelled: connections closed, workers joined, the replay cache
    /// persisted.
    pub async fn wait(&self) {
        self.tracker.wait().await;
    }
}

/// The packet engine. See the module documentation.
#[derive(Debug)]
pub struct Engine;

impl Engine {
    /// Binds the packet listener and starts the engine; it runs until
    /// `shutdown` is cancelled. Must be called from within a tokio runtime.
    ///
    /// `keys` is read for every packet, so a rotation takes effect at once;
    /// the replay cache follows the epochs in the ring. Metrics are
    /// registered in `registry` (give a sub-registry with a prefix).
    pub fn start(
        config: EngineConfig,
        keys: KeyRingHandle,
        topology: Arc<dyn Topology>,
        final_hop: Arc<dyn FinalHop>,
        registry: &mut Registry,
        shutdown: CancellationToken,
    ) -> Result<EngineHandle> {
        config.limits.check()?;
        let filter_bytes = config.replay.check(config.key_lifetime)?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            Error::Config("the engine must be started inside a tokio runtime".into())
        })?;

        let std_listener =
            std::net::TcpListener::bind(config.listen_addr).map_err(|source| Error::Bind {
                addr: config.listen_addr,
                source,
            })?;
        let bind_err = |source| Error::Bind {
            addr: config.listen_addr,
            source,
        };
        std_listener.set_nonblocking(true).map_err(bind_err)?;
        let local_addr = std_listener.local_addr().map_err(bind_err)?;
        let listener = tokio::net::TcpListener::from_std(std_listener).map_err(bind_err)?;

        let live = keys.load().epochs();
        let sizing = replay_sizing(&config);
        let replay = Arc::new(replay::ReplayCache::open(
            &config.replay_dir,
            sizing,
            &live,
        )?);
        tracing::debug!(filter_bytes, "replay cache opened");

        let metrics = EngineMetrics::register(registry);
        metrics
            .replay_capacity
            .set(i64::try_from(sizing.capacity()).unwrap_or(i64::MAX));
        let tracker = TaskTracker::new();
        let io_tracker = TaskTracker::new();
        let limits = config.limits.clone();

        let link = Arc::new(LinkConfig {
            settings: LinkSettings {
                handshake_timeout: Duration::from_millis(limits.handshake_timeout_ms),
                rekey_interval: Duration::from_secs(limits.link_rekey_secs),
            },
            ..config.link.clone()
        });
        let links = Arc::new(Links::new(
            topology.clone(),
            link.clone(),
            &limits,
            metrics.clone(),
            runtime.clone(),
            tracker.clone(),
            shutdown.clone(),
        ));

        // Batches of at most 32 packets (see `worker`); the delay stage's
        // own bound is `max_delayed`. The release thread holds each packet
        // for the last moments before its deadline, finer than tokio's
        // timer (see `delay`).
        let release = Arc::new(delay::Release::default());
        let release_thread = {
            let name = "murmur-release".to_owned();
            let (release, links, metrics, rt) = (
                release.clone(),
                links.clone(),
                metrics.clone(),
                runtime.clone(),
            );
            std::thread::Builder::new()
                .name(name.clone())
                .spawn(move || delay::release_thread(release, links, metrics, rt))
                .map_err(|source| Error::Thread { name, source })?
        };
        let (delay_tx, delay_rx) = tokio::sync::mpsc::channel((limits.unwrap_queue / 4).max(16));
        tracker.spawn(delay::run(
            delay_rx,
            release,
            metrics.clone(),
            limits.max_delayed,
            shutdown.clone(),
        ));

        let (unwrap_tx, unwrap_rx) = crossbeam_channel::bounded(limits.unwrap_queue);
        let shared = Arc::new(worker::Shared {
            keys: keys.clone(),
            replay: replay.clone(),
            topology: topology.clone(),
            final_hop,
            metrics: metrics.clone(),
            delay_tx,
            links: links.clone(),
            max_dwell: Duration::from_millis(limits.max_unwrap_dwell_ms),
        });
        let mut workers = Vec::new();
        for i in 0..limits.worker_count() {
            let name = format!("murmur-unwrap-{i}");
            let rx = unwrap_rx.clone();
            let shared = shared.clone();
            let rt = runtime.clone();
            let handle = std::thread::Builder::new()
                .name(name.clone())
                .spawn(move || worker::run(rx, shared, rt))
                .map_err(|source| Error::Thread { name, source })?;
            workers.push(handle);
        }
        drop(unwrap_rx);
        drop(shared);

        io_tracker.spawn(inbound::accept(
            listener,
            unwrap_tx,
            metrics.clone(),
            inbound::Limits {
                max_connections: limits.max_connections,
                read_timeout: Duration::from_secs(limits.read_timeout_secs),
            },
            inbound::Peers { link, topology },
            io_tracker.clone(),
            shutdown.clone(),
        ));

        tracker.spawn(maintenance(
            replay.clone(),
            keys,
            config.replay.clone(),
            metrics.clone(),
            shutdown.clone(),
        ));

        // Orderly stop: inbound first (which closes the unwrap channel),
        // then the workers, then the replay cache is persisted.
        let stop = shutdown.clone();
        tracker.spawn(async move {
            stop.cancelled().await;
            io_tracker.close();
            io_tracker.wait().await;
            let joined = tokio::task::spawn_blocking(move || {
                for w in workers {
                    if w.join().is_err() {
                        tracing::error!("an unwrap worker panicked");
                    }
                }
                // Stopped by the delay task, which stops on the same token.
                if release_thread.join().is_err() {
                    tracing::error!("the delay release thread panicked");
                }
            })
            .await;
            if joined.is_err() {
                tracing::error!("could not join the unwrap workers");
            }
            let r = replay.clone();
            match tokio::task::spawn_blocking(move || r.close()).await {
                Ok(Ok(())) => tracing::debug!("replay cache persisted"),
                Ok(Err(e)) => tracing::error!(error = %e, "could not persist the replay cache"),
                Err(e) => tracing::error!(error = %e, "could not persist the replay cache"),
            }
        });
        tracker.close();

        Ok(EngineHandle {
            local_addr,
            outbound: Outbound {
                links: links.clone(),
            },
            metrics,
            tracker,
        })
    }
}

/// How the replay filter chains are sized: segments for the expected rate,
/// enough of them (within `replay.max_memory_mib`) for the node's capacity
/// over a key's lifetime — `replay.max_packet_rate`, or measured now: one
/// worker's unwrap rate times the workers that can run at once.
fn replay_sizing(config: &EngineConfig) -> ReplaySizing {
    let r = &config.replay;
    let capacity = if r.max_packet_rate > 0.0 {
        r.max_packet_rate
    } else {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let parallel = config.limits.worker_count().min(cores) as f64;
        capacity::measure_unwrap_rate(20).map_or(0.0, |one| one * parallel)
    };
    let sizing = r.sizing(config.key_lifetime, capacity);
    let needed = (capacity * config.key_lifetime.as_secs_f64()).ceil();
    let mib = (sizing.segment_bytes() as u64 * sizing.max_segments as u64) >> 20;
    if (sizing.capacity() as f64) < needed {
        let lasts = sizing.capacity() as f64 / capacity.max(1.0);
        tracing::warn!(
            capacity_packets_per_sec = capacity.round(),
            segments = sizing.max_segments,
            mib,
            full_capacity_secs = lasts.round(),
            key_lifetime_secs = config.key_lifetime.as_secs(),
            "the replay filters cannot hold a flood at this node's capacity for a whole key lifetime (replay.max_memory_mib): past it they saturate (replay_filter_saturated)"
        );
    } else {
        tracing::info!(
            capacity_packets_per_sec = capacity.round(),
            segment_tags = sizing.segment_items,
            segments = sizing.max_segments,
            mib,
            "replay filters sized for the node's capacity over a key lifetime"
        );
    }
    sizing
}

/// Syncs the tag logs, writes snapshots, and drops the replay filters of
/// epochs that left the key ring.
async fn maintenance(
    replay: Arc<replay::ReplayCache>,
    keys: KeyRingHandle,
    settings: ReplaySettings,
    metrics: EngineMetrics,
    shutdown: CancellationToken,
) {
    use tokio::time::{MissedTickBehavior, interval};
    let mut sync_tick = interval(Duration::from_millis(settings.fsync_interval_ms));
    sync_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut snap_tick = interval(Duration::from_secs(settings.snapshot_interval_secs));
    snap_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    snap_tick.reset();
    let mut live = keys.load().epochs();
    let mut saturated_seen = 0u64;
    loop {
        let snapshot = tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = sync_tick.tick() => false,
            _ = snap_tick.tick() => true,
        };
        let stats = replay.stats();
        metrics
            .replay_segments
            .set(i64::try_from(stats.segments).unwrap_or(i64::MAX));
        metrics
            .replay_tags
            .set(i64::try_from(stats.tags).unwrap_or(i64::MAX));
        metrics
            .replay_bytes
            .set(i64::try_from(stats.bytes).unwrap_or(i64::MAX));
        metrics.replay_fp_bound.set(stats.false_positive_bound);
        if stats.saturated_tags > saturated_seen {
            if saturated_seen == 0 {
                tracing::warn!(
                    "the replay filter chain is past its capacity: fresh packets may be dropped as replays until the key rotates (raise replay.max_memory_mib)"
                );
            }
            metrics
                .replay_saturated_tags
                .inc_by(stats.saturated_tags - saturated_seen);
        }
        // (Drops when a saturated epoch is retired.)
        saturated_seen = stats.saturated_tags;
        metrics
            .replay_saturated
            .set(i64::from(stats.saturated_tags > 0));
        let now_live = keys.load().epochs();
        let retain = snapshot || now_live != live;
        live = now_live.clone();
        let r = replay.clone();
        let result = tokio::task::spawn_blocking(move || -> Result<()> {
            if retain {
                r.retain(&now_live)?;
            }
            if snapshot {
                r.snapshot_all()?;
            }
            r.sync()
                .map_err(|e| Error::io("could not sync", r.dir(), e))
        })
        .await;
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                metrics.replay_persist_errors.inc();
                tracing::warn!(error = %e, "replay cache persistence failed");
            }
            Err(e) => {
                metrics.replay_persist_errors.inc();
                tracing::warn!(error = %e, "replay cache persistence task failed");
            }
        }
    }
}
