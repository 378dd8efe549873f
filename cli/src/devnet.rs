//! `murmur devnet`: a whole Murmur network on loopback, in one process —
//! directory authorities, mix layers and mailbox providers, each with its
//! own data directory under one folder.
//!
//! The first start picks free ports and records them (and every node's
//! identity key) under the folder, so a later start in the same folder
//! brings back the same network: the same node ids, addresses and mailbox
//! contents, which clients initialised against it keep working with.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use murmur_client::network::{AuthorityEntry, NetworkConfig};
use murmur_directory::{
    AuthorityConfig, AuthorityHandle, AuthorityPin, DirectoryClient, start_authority_on,
};
use murmur_mailbox::MailboxHandle;
use murmur_mixnode::MixNodeHandle;
use murmur_net::clock::{Clock, SystemClock};
use murmur_net::http::HttpClient;
use murmur_wire::ed25519_dalek::SigningKey;
use murmur_wire::{IdentityKey, NodeId, VerifiedConsensus};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The shape and parameters of a devnet.
#[derive(Clone, Debug)]
pub struct DevnetOptions {
    /// Where everything is stored.
    pub dir: PathBuf,
    /// Directory authorities.
    pub authorities: usize,
    /// Signatures a consensus needs.
    pub threshold: usize,
    /// Mix nodes per layer (three layers).
    pub width: usize,
    /// Mailbox providers.
    pub mailboxes: usize,
    /// Epoch length.
    pub epoch_secs: u64,
    /// Mean per-hop delay, ms.
    pub mean_delay_ms: u64,
    /// Largest per-hop delay, ms.
    pub max_delay_ms: u64,
    /// λ, packets/s per client (0: no cover).
    pub client_rate: f64,
    /// λ_L, loop packets/s per client.
    pub client_loop_rate: f64,
    /// Loop packets/s per mix.
    pub mix_loop_rate: f64,
    /// The fetch API address mailbox `i` publishes instead of the one it
    /// binds (as `http.public_addr` in a provider's configuration: a front
    /// end, or a test's proxy); `None` or missing: the bound address.
    pub mailbox_api_public: Vec<Option<SocketAddr>>,
}

impl Default for DevnetOptions {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("murmur-devnet"),
            authorities: 3,
            threshold: 2,
            width: 3,
            mailboxes: 2,
            epoch_secs: 600,
            mean_delay_ms: 50,
            max_delay_ms: 1000,
            client_rate: 20.0,
            client_loop_rate: 1.0,
            mix_loop_rate: 0.5,
            mailbox_api_public: Vec::new(),
        }
    }
}

/// What a devnet remembers between starts.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Layout {
    authorities: Vec<SocketAddr>,
    /// (packet, http) per mix.
    mixes: Vec<(SocketAddr, SocketAddr)>,
    /// (packet, fetch API, operator) per mailbox.
    mailboxes: Vec<(SocketAddr, SocketAddr, SocketAddr)>,
}

const LAYOUT_FILE: &str = "devnet.toml";
const NETWORK_FILE: &str = "client.toml";

/// A running devnet.
pub struct Devnet {
    authorities: Vec<Option<AuthorityHandle>>,
    authority_tokens: Vec<CancellationToken>,
    mixes: Vec<Option<MixNodeHandle>>,
    mix_tokens: Vec<CancellationToken>,
    mailboxes: Vec<MailboxHandle>,
    shutdown: CancellationToken,
    network: NetworkConfig,
    options: DevnetOptions,
}

fn key_file(dir: &Path) -> PathBuf {
    dir.join("identity.key")
}

/// Loads the identity key in `dir`, or makes one (`murmur_net::keyfile`:
/// the daemons' format; keys older devnets wrote as raw bytes still load).
fn identity(dir: &Path) -> Result<SigningKey> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(murmur_net::keyfile::load_or_create(&key_file(dir))?)
}

fn loopback0() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

impl Devnet {
    /// Starts (or restarts) the devnet in `options.dir`.
    pub async fn start(options: DevnetOptions) -> Result<Devnet> {
        if options.threshold == 0 || options.threshold > options.authorities {
            bail!("the threshold must be between 1 and the number of authorities");
        }
        if options.width == 0 || options.mailboxes == 0 {
            bail!("a devnet needs at least one mix per layer and one mailbox");
        }
        std::fs::create_dir_all(&options.dir)
            .with_context(|| format!("creating {}", options.dir.display()))?;
        let layout_path = options.dir.join(LAYOUT_FILE);
        let old: Option<Layout> = match std::fs::read_to_string(&layout_path) {
            Ok(text) => Some(
                toml::from_str(&text)
                    .with_context(|| format!("{} is not a devnet layout", layout_path.display()))?,
            ),
            Err(_) => None,
        };
        if let Some(old) = &old
            && (old.authorities.len() != options.authorities
                || old.mixes.len() != options.width * 3
                || old.mailboxes.len() != options.mailboxes)
        {
            bail!(
                "{} holds a devnet of another shape; use another --dir",
                options.dir.display()
            );
        }
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let shutdown = CancellationToken::new();

        // Authorities: bind every listener first so each knows its peers.
        let mut listeners = Vec::new();
        let mut keys = Vec::new();
        for i in 0..options.authorities {
            let addr = old.as_ref().map_or(loopback0(), |l| l.authorities[i]);
            let listener = TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding authority {i} on {addr}"))?;
            keys.push(identity(&options.dir.join(format!("authority-{i}")))?);
            listeners.push(listener);
        }
        let endpoints: Vec<AuthorityPin> = listeners
            .iter()
            .zip(&keys)
            .map(|(l, k)| -> Result<AuthorityPin> {
                Ok(AuthorityPin {
                    addr: l.local_addr()?,
                    key: IdentityKey::from(&k.verifying_key()),
                })
            })
            .collect::<Result<_>>()?;
        // The nodes' identity keys, so that every authority admits them
        // (its allow-list: `admission.nodes`).
        let mix_keys = (0..options.width * 3)
            .map(|i| identity(&options.dir.join(format!("mix-{i}"))))
            .collect::<Result<Vec<_>>>()?;
        let mailbox_keys = (0..options.mailboxes)
            .map(|i| identity(&options.dir.join(format!("mailbox-{i}"))))
            .collect::<Result<Vec<_>>>()?;
        let admitted: Vec<String> = mix_keys
            .iter()
            .chain(&mailbox_keys)
            .map(|k| IdentityKey::from(&k.verifying_key()).to_base58())
            .collect();
        let mut authorities = Vec::new();
        let mut authority_tokens = Vec::new();
        for (i, (listener, key)) in listeners.into_iter().zip(keys).enumerate() {
            let mut cfg = AuthorityConfig::new(options.dir.join(format!("authority-{i}")));
            cfg.epoch_secs = options.epoch_secs;
            cfg.threshold = options.threshold;
            cfg.peers = endpoints
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, e)| *e)
                .collect();
            cfg.params.mean_delay_ms = options.mean_delay_ms;
            cfg.params.max_delay_ms = options.max_delay_ms;
            cfg.params.client_rate = options.client_rate;
            cfg.params.client_loop_rate = options.client_loop_rate;
            cfg.params.mix_loop_rate = options.mix_loop_rate;
            cfg.admission.nodes = admitted.clone();
            // Every node and client of a devnet connects from 127.0.0.1.
            cfg.limits.max_connections_per_address = cfg.limits.max_connections;
            let token = shutdown.child_token();
            let handle = start_authority_on(listener, cfg, key, clock.clone(), token.clone())
                .await
                .with_context(|| format!("starting authority {i}"))?;
            authorities.push(Some(handle));
            authority_tokens.push(token);
        }
        let pins: Vec<AuthorityPin> = endpoints.clone();

        // Mix nodes.
        let mut mixes = Vec::new();
        let mut mix_tokens = Vec::new();
        for (i, key) in mix_keys.into_iter().enumerate() {
            let dir = options.dir.join(format!("mix-{i}"));
            let mut cfg = murmur_mixnode::MixNodeConfig::new(&dir);
            let (packet, http) = old
                .as_ref()
                .map_or((loopback0(), loopback0()), |l| l.mixes[i]);
            cfg.listen_addr = packet;
            cfg.http_addr = http;
            cfg.network.epoch_secs = options.epoch_secs;
            cfg.keys.grace_secs = cfg.keys.grace_secs.min(options.epoch_secs / 2);
            cfg.directory.authorities = pins.clone();
            cfg.directory.threshold = options.threshold;
            // A devnet carries little traffic: small replay filters.
            cfg.replay.expected_packet_rate = 200.0;
            let token = shutdown.child_token();
            let handle = murmur_mixnode::start_mixnode(cfg, key, clock.clone(), token.clone())
                .await
                .with_context(|| format!("starting mix node {i}"))?;
            mixes.push(Some(handle));
            mix_tokens.push(token);
        }

        // Mailbox providers.
        let mut mailboxes = Vec::new();
        for (i, key) in mailbox_keys.into_iter().enumerate() {
            let dir = options.dir.join(format!("mailbox-{i}"));
            let mut cfg = murmur_mailbox::Config {
                data_dir: dir.clone(),
                ..Default::default()
            };
            let (packet, http, operator) = old
                .as_ref()
                .map_or((loopback0(), loopback0(), loopback0()), |l| l.mailboxes[i]);
            cfg.listen_addr = packet;
            cfg.http.listen = http;
            cfg.http.public_addr = options.mailbox_api_public.get(i).copied().flatten();
            cfg.operator_addr = operator;
            cfg.network.epoch_secs = options.epoch_secs;
            cfg.keys.grace_secs = cfg.keys.grace_secs.min(options.epoch_secs / 2);
            cfg.directory.authorities = pins.clone();
            cfg.directory.threshold = options.threshold;
            cfg.replay.expected_packet_rate = 200.0;
            // Every devnet client is on 127.0.0.1: one address's creation
            // budget and connection share would be everyone's.
            cfg.http.max_connections_per_address = cfg.http.max_connections;
            cfg.api.create_burst_per_address = 100_000;
            cfg.api.create_per_address_per_hour = 1_000_000;
            cfg.api.create_burst = 100_000;
            cfg.api.create_per_hour = 1_000_000;
            let handle =
                murmur_mailbox::start_mailbox(cfg, key, clock.clone(), shutdown.child_token())
                    .await
                    .with_context(|| format!("starting mailbox {i}"))?;
            mailboxes.push(handle);
        }

        let layout = Layout {
            authorities: endpoints.iter().map(|e| e.addr).collect(),
            mixes: mixes
                .iter()
                .flatten()
                .map(|m| (m.packet_addr, m.http_addr))
                .collect(),
            mailboxes: mailboxes
                .iter()
                .map(|m| (m.packet_addr, m.http_addr, m.operator_addr))
                .collect(),
        };
        std::fs::write(&layout_path, toml::to_string(&layout)?)
            .with_context(|| format!("writing {}", layout_path.display()))?;
        let network = NetworkConfig {
            threshold: options.threshold,
            authorities: endpoints
                .iter()
                .map(|e| AuthorityEntry {
                    address: e.addr,
                    key: e.key.to_base58(),
                })
                .collect(),
        };
        std::fs::write(options.dir.join(NETWORK_FILE), network.to_toml())
            .with_context(|| format!("writing {}", options.dir.join(NETWORK_FILE).display()))?;
        Ok(Devnet {
            authorities,
            authority_tokens,
            mixes,
            mix_tokens,
            mailboxes,
            shutdown,
            network,
            options,
        })
    }

    /// The network file clients use.
    pub fn network(&self) -> &NetworkConfig {
        &self.network
    }

    /// Path of the network file.
    pub fn network_file(&self) -> PathBuf {
        self.options.dir.join(NETWORK_FILE)
    }

    /// Waits until the authorities publish a consensus listing every node
    /// that is running, and every node has it (its `/healthz` says so).
    pub async fn wait_ready(&self, limit: Duration) -> Result<Arc<VerifiedConsensus>> {
        let endpoints = self
            .network
            .endpoints()
            .map_err(|e| anyhow!("devnet network file: {e}"))?;
        let dir = DirectoryClient::new(
            endpoints,
            self.network.threshold,
            HttpClient::new(Duration::from_secs(2)),
        )?;
        let http = HttpClient::new(Duration::from_secs(2));
        let want_mixes: Vec<NodeId> = self.mixes.iter().flatten().map(|m| m.node_id).collect();
        let want_boxes: Vec<NodeId> = self.mailboxes.iter().map(|m| m.node_id).collect();
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let now = SystemClock.now_secs();
            let last = match dir.fetch_current(now).await {
                Ok(c) => {
                    let listed = |id: &NodeId| c.node(id).is_some();
                    let missing = want_mixes.iter().filter(|id| !listed(id)).count()
                        + want_boxes.iter().filter(|id| !listed(id)).count();
                    if missing > 0 {
                        format!(
                            "the consensus for epoch {} misses {missing} node(s)",
                            c.epoch()
                        )
                    } else {
                        match self.unhealthy(&http).await {
                            None => return Ok(c),
                            Some(why) => why,
                        }
                    }
                }
                Err(e) => e.to_string(),
            };
            if tokio::time::Instant::now() >= deadline {
                bail!("the devnet did not become ready in {limit:?}: {last}");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The first node whose `/healthz` is not OK, and why.
    async fn unhealthy(&self, http: &HttpClient) -> Option<String> {
        let addrs = self
            .mixes
            .iter()
            .flatten()
            .map(|m| m.http_addr)
            .chain(self.mailboxes.iter().map(|m| m.operator_addr));
        for addr in addrs {
            match http.get(addr, "/healthz", 4096).await {
                Ok((status, _)) if status.is_success() => {}
                Ok((status, body)) => {
                    return Some(format!(
                        "node at {addr} is not ready: {status} {}",
                        String::from_utf8_lossy(&body).trim()
                    ));
                }
                Err(e) => return Some(format!("node at {addr}: {e}")),
            }
        }
        None
    }

    /// Node ids of the mixes, in start order (three layers' worth).
    pub fn mix_ids(&self) -> Vec<Option<NodeId>> {
        self.mixes
            .iter()
            .map(|m| m.as_ref().map(|m| m.node_id))
            .collect()
    }

    /// The running mailbox providers, in start order.
    pub fn mailboxes(&self) -> &[murmur_mailbox::MailboxHandle] {
        &self.mailboxes
    }

    /// The identity key of mailbox `i` (its data directory's
    /// `identity.key`): what a test needs to speak as that provider.
    pub fn mailbox_identity(&self, i: usize) -> Result<murmur_wire::ed25519_dalek::SigningKey> {
        if i >= self.mailboxes.len() {
            bail!("no mailbox {i}");
        }
        identity(&self.options.dir.join(format!("mailbox-{i}")))
    }

    /// Stops mix node `i` (as if it died): its links close, packets it held
    /// are lost.
    pub async fn stop_mix(&mut self, i: usize) -> Option<NodeId> {
        let handle = self.mixes.get_mut(i)?.take()?;
        let id = handle.node_id;
        if let Some(t) = self.mix_tokens.get(i) {
            t.cancel();
        }
        handle.wait().await;
        Some(id)
    }

    /// Stops authority `i`.
    pub async fn stop_authority(&mut self, i: usize) {
        if let Some(Some(handle)) = self.authorities.get_mut(i).map(Option::take) {
            if let Some(t) = self.authority_tokens.get(i) {
                t.cancel();
            }
            handle.wait().await;
        }
    }

    /// A one-paragraph description.
    pub fn describe(&self) -> String {
        format!(
            "{} authorities (threshold {}), 3 layers × {} mix nodes, {} mailbox providers; \
             epoch {} s, mean delay {} ms, λ = {}/s, λ_L = {}/s, mix loops {}/s",
            self.options.authorities,
            self.options.threshold,
            self.options.width,
            self.options.mailboxes,
            self.options.epoch_secs,
            self.options.mean_delay_ms,
            self.options.client_rate,
            self.options.client_loop_rate,
            self.options.mix_loop_rate
        )
    }

    /// Stops everything and waits for it.
    pub async fn shutdown(mut self) {
        self.shutdown.cancel();
        for m in self.mixes.iter_mut().filter_map(Option::take) {
            m.wait().await;
        }
        for m in self.mailboxes.drain(..) {
            m.stopped().await;
        }
        for a in self.authorities.iter_mut().filter_map(Option::take) {
            a.wait().await;
        }
    }
}

/// Runs a devnet until Ctrl-C.
pub async fn run(options: DevnetOptions) -> Result<()> {
    let net = Devnet::start(options).await?;
    eprintln!("starting: {}", net.describe());
    let consensus = net.wait_ready(Duration::from_secs(60)).await?;
    println!(
        "devnet ready (epoch {}): {} mixes, {} mailboxes.\nClient config: {}\n\
         Try: murmur --home /tmp/alice init --network {} --name alice\n\
         Ctrl-C to stop.",
        consensus.epoch(),
        consensus.layers().iter().map(Vec::len).sum::<usize>(),
        consensus.mailboxes().len(),
        net.network_file().display(),
        net.network_file().display(),
    );
    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    eprintln!("stopping...");
    net.shutdown().await;
    Ok(())
}
