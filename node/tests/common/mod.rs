//! Shared helpers for the behaviour tests: test nodes on loopback, a
//! consensus signed by a test authority, a recording final hop.
#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::SinkExt;
use murmur_net::{LinkSettings, LinkStream};
use murmur_node::engine::{
    ClientPolicy, Engine, EngineConfig, EngineHandle, EngineLimits, FinalHop, LinkConfig,
    ReplaySettings, Topology,
};
use murmur_node::keys::KeyRingHandle;
use murmur_wire::ed25519_dalek::SigningKey;
use murmur_wire::link::Purpose;
use murmur_wire::{
    AuthoritySet, Consensus, Delivery, Destination, Hop, IdentityKey, KeyRing, LinkPublicKey,
    LinkSecretKey, MailboxEntry, MixEntry, NetworkParams, NodeId, Packet, PacketCodec,
    SignedConsensus, SphinxPublicKey, SphinxSecretKey, VerifiedConsensus,
};
use prometheus_client::registry::Registry;
use tokio::net::TcpStream;
use tokio_util::codec::FramedWrite;
use tokio_util::sync::CancellationToken;

pub const L: u64 = 3600;
/// The epoch the tests pretend it is.
pub const EPOCH: u64 = 500_000;

pub fn identity(n: u8) -> SigningKey {
    SigningKey::from_bytes(&[n; 32])
}

pub fn ident(k: &SigningKey) -> IdentityKey {
    IdentityKey::from(&k.verifying_key())
}

/// The link key of the node whose identity is `k`.
pub fn link_key(k: &SigningKey) -> LinkPublicKey {
    LinkSecretKey::derive(&k.to_bytes()).public().clone()
}

pub fn params(max_delay: Duration) -> NetworkParams {
    NetworkParams {
        epoch_secs: L,
        mean_delay_us: 1_000,
        max_delay_us: max_delay.as_micros() as u64,
        client_rate: 0.0,
        client_loop_rate: 0.0,
        mix_loop_rate: 0.0,
        packet_size: murmur_wire::PACKET_SIZE as u32,
    }
}

/// A node as a consensus lists it.
#[derive(Clone, Debug)]
pub struct Member {
    pub identity: IdentityKey,
    pub addr: SocketAddr,
    pub link: LinkPublicKey,
    pub key: SphinxPublicKey,
    /// `Some(layer)` for a mix, `None` for a mailbox.
    pub layer: Option<u8>,
}

/// Signs and verifies a consensus for `epoch` listing `members`.
pub fn consensus(epoch: u64, params: NetworkParams, members: &[Member]) -> VerifiedConsensus {
    let authority = identity(200);
    let mut mixes: Vec<MixEntry> = members
        .iter()
        .filter_map(|m| {
            m.layer.map(|layer| MixEntry {
                layer,
                identity: m.identity,
                packet_addr: m.addr,
                link_key: m.link.clone(),
                sphinx_key: m.key,
            })
        })
        .collect();
    mixes.sort_by_key(|m| (m.layer, m.identity));
    let mut mailboxes: Vec<MailboxEntry> = members
        .iter()
        .filter(|m| m.layer.is_none())
        .map(|m| MailboxEntry {
            identity: m.identity,
            packet_addr: m.addr,
            http_addr: "127.0.0.1:9".parse().unwrap(),
            link_key: m.link.clone(),
            sphinx_key: m.key,
        })
        .collect();
    mailboxes.sort_by_key(|m| m.identity);
    let doc = Consensus {
        version: murmur_wire::directory::CONSENSUS_VERSION,
        epoch,
        valid_after: epoch * L,
        valid_until: (epoch + 1) * L,
        params,
        mixes,
        mailboxes,
    };
    let signed = SignedConsensus::sign(&doc, &authority).unwrap();
    let set = AuthoritySet::new(vec![ident(&authority)], 1).unwrap();
    signed.verify(&set, epoch * L + 1, Some(epoch)).unwrap()
}

/// Records every final-hop delivery with the tokio time it arrived.
#[derive(Default)]
pub struct Recorder {
    pub got: Mutex<Vec<(Destination, Vec<u8>, tokio::time::Instant)>>,
}

impl Recorder {
    pub fn len(&self) -> usize {
        self.got.lock().unwrap().len()
    }

    pub fn payloads(&self) -> Vec<Vec<u8>> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .map(|(_, p, _)| p.clone())
            .collect()
    }
}

impl FinalHop for Recorder {
    fn deliver(&self, destination: Destination, delivery: Delivery) {
        let bytes = match delivery {
            Delivery::Forward { plaintext } => plaintext,
            Delivery::Reply { sealed, .. } => sealed,
        };
        self.got
            .lock()
            .unwrap()
            .push((destination, bytes, tokio::time::Instant::now()));
    }
}

pub fn limits() -> EngineLimits {
    EngineLimits {
        workers: 1,
        read_timeout_secs: 30,
        ..EngineLimits::default()
    }
}

pub fn replay_settings() -> ReplaySettings {
    ReplaySettings {
        expected_packet_rate: 10.0,
        fsync_interval_ms: 50,
        ..ReplaySettings::default()
    }
}

/// One engine on loopback with its keys and a recording final hop.
pub struct TestNode {
    pub identity: SigningKey,
    pub id: NodeId,
    pub key: SphinxSecretKey,
    pub ring: KeyRingHandle,
    pub engine: EngineHandle,
    pub recorder: Arc<Recorder>,
    pub shutdown: CancellationToken,
    pub dir: PathBuf,
    pub registry: Registry,
}

impl TestNode {
    pub fn member(&self, layer: Option<u8>) -> Member {
        Member {
            identity: ident(&self.identity),
            addr: self.engine.local_addr,
            link: link_key(&self.identity),
            key: self.key.public_key(),
            layer,
        }
    }

    pub fn hop(&self) -> Hop {
        Hop {
            id: self.id,
            key: self.key.public_key(),
        }
    }

    pub async fn stop(&self) {
        self.shutdown.cancel();
        self.engine.wait().await;
    }
}

/// Starts an engine whose ring holds `key` for [`EPOCH`], with its replay
/// cache under `dir`.
pub fn start_node(
    n: u8,
    key: SphinxSecretKey,
    dir: &Path,
    topology: Arc<dyn Topology>,
    limits: EngineLimits,
) -> TestNode {
    let mut ring = KeyRing::new();
    ring.insert(EPOCH, key.clone());
    start_node_with_ring(n, key, KeyRingHandle::new(ring), dir, topology, limits)
}

pub fn start_node_with_ring(
    n: u8,
    key: SphinxSecretKey,
    ring: KeyRingHandle,
    dir: &Path,
    topology: Arc<dyn Topology>,
    limits: EngineLimits,
) -> TestNode {
    start_node_with_policy(
        n,
        key,
        ring,
        dir,
        topology,
        limits,
        replay_settings(),
        ClientPolicy::Always,
    )
}

pub fn start_node_with_replay(
    n: u8,
    key: SphinxSecretKey,
    ring: KeyRingHandle,
    dir: &Path,
    topology: Arc<dyn Topology>,
    limits: EngineLimits,
    replay: ReplaySettings,
) -> TestNode {
    start_node_with_policy(
        n,
        key,
        ring,
        dir,
        topology,
        limits,
        replay,
        ClientPolicy::Always,
    )
}

/// [`start_node_with_ring`] with its replay settings, taking links from
/// clients per `clients`.
#[allow(clippy::too_many_arguments)]
pub fn start_node_with_policy(
    n: u8,
    key: SphinxSecretKey,
    ring: KeyRingHandle,
    dir: &Path,
    topology: Arc<dyn Topology>,
    limits: EngineLimits,
    replay: ReplaySettings,
    clients: ClientPolicy,
) -> TestNode {
    let identity = identity(n);
    let id = ident(&identity).node_id();
    let recorder = Arc::new(Recorder::default());
    let shutdown = CancellationToken::new();
    let mut registry = Registry::default();
    let engine = Engine::start(
        EngineConfig {
            listen_addr: "127.0.0.1:0".parse().unwrap(),
            replay_dir: dir.join("replay"),
            key_lifetime: Duration::from_secs(L + 600),
            limits,
            replay,
            link: LinkConfig::for_node(&identity.to_bytes(), id, clients),
        },
        ring.clone(),
        topology,
        recorder.clone(),
        &mut registry,
        shutdown.clone(),
    )
    .unwrap();
    TestNode {
        identity,
        id,
        key,
        ring,
        engine,
        recorder,
        shutdown,
        dir: dir.to_owned(),
        registry,
    }
}

/// A packet link: frames over an encrypted link.
pub type Link = FramedWrite<LinkStream<TcpStream>, PacketCodec>;

/// A packet link to `node`, as a client.
pub async fn connect(node: &TestNode) -> Link {
    connect_to(node.engine.local_addr, &link_key(&node.identity)).await
}

/// A packet link to whoever listens at `addr` with the link key `key`.
pub async fn connect_to(addr: SocketAddr, key: &LinkPublicKey) -> Link {
    let stream = murmur_net::connect(addr, Purpose::Packets, None, key, &LinkSettings::default())
        .await
        .unwrap();
    FramedWrite::new(stream, PacketCodec)
}

pub async fn send(link: &mut Link, packet: &Packet) {
    link.send(packet.clone()).await.unwrap();
}

/// The value of metric sample `sample` (name with labels, as printed) in
/// `registry`.
pub fn metric(registry: &Registry, sample: &str) -> f64 {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(sample).and_then(|v| v.strip_prefix(' ')))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0.0)
}

/// Polls `cond` until it holds or `limit` of real time passes. Works on a
/// paused clock too: it yields to the runtime and sleeps the thread briefly,
/// never a tokio timer.
pub async fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = std::time::Instant::now();
    loop {
        if cond() {
            return true;
        }
        if start.elapsed() > limit {
            return false;
        }
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Gives the nodes `real` time to act (used to check that something does
/// *not* happen), without touching tokio's clock.
pub async fn settle(real: Duration) {
    let _ = wait_until(real, || false).await;
}
