//! The authority's configuration (TOML). Defaults live here and are
//! documented in [`example_config`], which `murmur-directory init` writes.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use murmur_wire::{AuthoritySet, IdentityKey, NetworkParams, PACKET_SIZE};
use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::pin::AuthorityPin;
use murmur_net::http::ServerLimits;

/// Everything an authority is configured with. Unknown keys are refused.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthorityConfig {
    /// Address the HTTP API listens on (port 0 picks one).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Where accepted descriptors, own votes and published documents are kept.
    pub data_dir: PathBuf,
    /// The authority's Ed25519 key (read by the binary; in-process callers
    /// pass the key to [`crate::start_authority`] and this is unused).
    #[serde(default = "default_key_file")]
    pub key_file: PathBuf,
    /// Epoch length in seconds (all authorities must agree).
    #[serde(default = "default_epoch_secs")]
    pub epoch_secs: u64,
    /// The other authorities.
    #[serde(default)]
    pub peers: Vec<AuthorityPin>,
    /// How many of the n = peers + 1 authorities must sign a document; 0
    /// (the default) means a majority, ⌊n/2⌋ + 1.
    #[serde(default = "default_threshold")]
    pub threshold: usize,
    /// The network parameters this authority votes for.
    #[serde(default)]
    pub params: ParamsConfig,
    /// Protocol timing knobs.
    #[serde(default)]
    pub timing: TimingConfig,
    /// Resource limits.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Which nodes may be listed, and the reachability probe.
    #[serde(default)]
    pub admission: AdmissionConfig,
}

/// How an authority decides which node descriptors it keeps and votes for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AdmissionMode {
    /// Only node identity keys the operator admitted (the signed list file
    /// and `admission.nodes`).
    #[default]
    Allowlist,
    /// Any node, within per-address and per-subnet limits.
    Open,
}

/// The `[admission]` table: who may register, and the reachability probe.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdmissionConfig {
    /// Allow-list (default) or open.
    pub mode: AdmissionMode,
    /// The signed list `murmur-directory admit`/`revoke` write (relative to
    /// the configuration file's directory).
    pub list_file: PathBuf,
    /// Node identity keys (base58) admitted besides those in the list file.
    pub nodes: Vec<String>,
    /// Open mode: live node identities per packet-address host (an IPv4
    /// address, or an IPv6 /64).
    pub max_per_address: usize,
    /// Open mode: live node identities per subnet (IPv4 /24, IPv6 /48).
    pub max_per_subnet: usize,
    /// Open mode: accept packet addresses that are not globally routable
    /// (loopback, private, link-local). Off by default, so that a stranger
    /// cannot point the probe into the authority's own network.
    pub allow_private_addresses: bool,
    /// Probe a node's packet address before voting for it.
    pub probe: bool,
    /// How long a probe may take, ms.
    pub probe_timeout_ms: u64,
    /// A reachable node is probed again after this long, seconds.
    pub reprobe_secs: u64,
    /// An unreachable (or never reached) node is probed again after this
    /// long, seconds.
    pub probe_retry_secs: u64,
    /// Probes running at once.
    pub max_concurrent_probes: usize,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        Self {
            mode: AdmissionMode::Allowlist,
            list_file: PathBuf::from("admitted-nodes.list"),
            nodes: Vec::new(),
            max_per_address: 2,
            max_per_subnet: 8,
            allow_private_addresses: false,
            probe: true,
            probe_timeout_ms: 3000,
            reprobe_secs: 600,
            probe_retry_secs: 30,
            max_concurrent_probes: 32,
        }
    }
}

impl AdmissionConfig {
    /// The keys of `nodes`, parsed.
    pub fn node_keys(&self) -> Result<Vec<IdentityKey>, Error> {
        self.nodes
            .iter()
            .enumerate()
            .map(|(i, k)| {
                IdentityKey::from_base58(k).map_err(|e| Error::Config {
                    reason: format!("admission.nodes[{i}]: {e}"),
                })
            })
            .collect()
    }
}

/// The network parameters (see `murmur_wire::NetworkParams`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParamsConfig {
    /// Mean per-hop delay senders draw (exponential), milliseconds.
    #[serde(default = "default_mean_delay_ms")]
    pub mean_delay_ms: u64,
    /// Largest per-hop delay nodes accept, milliseconds.
    #[serde(default = "default_max_delay_ms")]
    pub max_delay_ms: u64,
    /// λ: each client's send stream (real or drop cover), packets/s; 0 = no cover.
    #[serde(default = "default_client_rate")]
    pub client_rate: f64,
    /// λ_L: each client's loop cover, packets/s; 0 = off.
    #[serde(default = "default_client_loop_rate")]
    pub client_loop_rate: f64,
    /// Each mix node's loop cover, packets/s; 0 = off.
    #[serde(default = "default_mix_loop_rate")]
    pub mix_loop_rate: f64,
}

impl Default for ParamsConfig {
    fn default() -> Self {
        Self {
            mean_delay_ms: default_mean_delay_ms(),
            max_delay_ms: default_max_delay_ms(),
            client_rate: default_client_rate(),
            client_loop_rate: default_client_loop_rate(),
            mix_loop_rate: default_mix_loop_rate(),
        }
    }
}

/// Protocol timing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimingConfig {
    /// Bootstrap collection window, ms: an authority with no document for
    /// the current epoch votes this long after its first descriptor arrives
    /// (or after start, if it restarted with descriptors on disk); and
    /// computes at the latest this long after voting.
    #[serde(default = "default_window_ms")]
    pub bootstrap_window_ms: u64,
    /// How often the protocol loop runs, ms (0 = epoch/40, between 50 and 1000).
    #[serde(default)]
    pub tick_ms: u64,
    /// Timeout of one request to a peer authority, ms.
    #[serde(default = "default_peer_timeout_ms")]
    pub peer_timeout_ms: u64,
    /// Published documents kept (in memory and on disk), in epochs.
    #[serde(default = "default_keep_epochs")]
    pub keep_epochs: u64,
}

impl Default for TimingConfig {
    fn default() -> Self {
        Self {
            bootstrap_window_ms: default_window_ms(),
            tick_ms: 0,
            peer_timeout_ms: default_peer_timeout_ms(),
            keep_epochs: default_keep_epochs(),
        }
    }
}

/// Resource limits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Most node identities kept; uploads from new identities beyond it are refused.
    #[serde(default = "default_max_descriptors")]
    pub max_descriptors: usize,
    /// HTTP connections served at once.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// HTTP connections served at once from one address (IPv4 address, or
    /// IPv6 /64); more are closed at once.
    #[serde(default = "default_max_connections_per_address")]
    pub max_connections_per_address: usize,
    /// Seconds a client has to send a request's headers.
    #[serde(default = "default_header_timeout_secs")]
    pub header_timeout_secs: u64,
    /// Seconds a client has to send a request's body once its headers are in.
    #[serde(default = "default_body_timeout_secs")]
    pub body_timeout_secs: u64,
    /// Seconds one HTTP connection may live.
    #[serde(default = "default_connection_timeout_secs")]
    pub connection_timeout_secs: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_descriptors: default_max_descriptors(),
            max_connections: default_max_connections(),
            max_connections_per_address: default_max_connections_per_address(),
            header_timeout_secs: default_header_timeout_secs(),
            body_timeout_secs: default_body_timeout_secs(),
            connection_timeout_secs: default_connection_timeout_secs(),
        }
    }
}

impl LimitsConfig {
    /// The HTTP server's limits.
    pub fn server(&self) -> ServerLimits {
        ServerLimits {
            max_connections: self.max_connections,
            max_connections_per_address: self.max_connections_per_address,
            header_timeout: Duration::from_secs(self.header_timeout_secs),
            body_timeout: Duration::from_secs(self.body_timeout_secs),
            connection_timeout: Duration::from_secs(self.connection_timeout_secs),
        }
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8700))
}
fn default_key_file() -> PathBuf {
    PathBuf::from("authority.key")
}
fn default_epoch_secs() -> u64 {
    3600
}
fn default_threshold() -> usize {
    0
}
fn default_mean_delay_ms() -> u64 {
    50
}
fn default_max_delay_ms() -> u64 {
    1000
}
fn default_client_rate() -> f64 {
    2.0
}
fn default_client_loop_rate() -> f64 {
    0.5
}
fn default_mix_loop_rate() -> f64 {
    0.5
}
fn default_window_ms() -> u64 {
    2000
}
fn default_peer_timeout_ms() -> u64 {
    2000
}
fn default_keep_epochs() -> u64 {
    24
}
fn default_max_descriptors() -> usize {
    1000
}
fn default_max_connections() -> usize {
    256
}
fn default_max_connections_per_address() -> usize {
    ServerLimits::default().max_connections_per_address
}
fn default_header_timeout_secs() -> u64 {
    10
}
fn default_body_timeout_secs() -> u64 {
    10
}
fn default_connection_timeout_secs() -> u64 {
    60
}

impl AuthorityConfig {
    /// A configuration with every default, for in-process use.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            listen: default_listen(),
            data_dir: data_dir.into(),
            key_file: default_key_file(),
            epoch_secs: default_epoch_secs(),
            peers: Vec::new(),
            threshold: default_threshold(),
            params: ParamsConfig::default(),
            timing: TimingConfig::default(),
            limits: LimitsConfig::default(),
            admission: AdmissionConfig::default(),
        }
    }

    /// Parses a TOML configuration (unknown keys are an error naming the key).
    pub fn from_toml(text: &str, path: &Path) -> Result<Self, Error> {
        toml::from_str(text).map_err(|source| Error::ConfigParse {
            path: path.to_owned(),
            source,
        })
    }

    /// Reads and parses a configuration file; relative paths in it are
    /// taken relative to the file's directory.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            what: "could not read configuration",
            path: path.to_owned(),
            source,
        })?;
        let mut cfg = Self::from_toml(&text, path)?;
        let base = path.parent().unwrap_or(Path::new("."));
        if cfg.data_dir.is_relative() {
            cfg.data_dir = base.join(&cfg.data_dir);
        }
        if cfg.key_file.is_relative() {
            cfg.key_file = base.join(&cfg.key_file);
        }
        if cfg.admission.list_file.is_relative() {
            cfg.admission.list_file = base.join(&cfg.admission.list_file);
        }
        Ok(cfg)
    }

    /// The network parameters voted for.
    pub fn network_params(&self) -> NetworkParams {
        NetworkParams {
            epoch_secs: self.epoch_secs,
            mean_delay_us: self.params.mean_delay_ms.saturating_mul(1000),
            max_delay_us: self.params.max_delay_ms.saturating_mul(1000),
            client_rate: self.params.client_rate,
            client_loop_rate: self.params.client_loop_rate,
            mix_loop_rate: self.params.mix_loop_rate,
            packet_size: PACKET_SIZE as u32,
        }
    }

    /// The protocol loop's period.
    pub fn tick(&self) -> Duration {
        let ms = if self.timing.tick_ms > 0 {
            self.timing.tick_ms
        } else {
            (self.epoch_secs.saturating_mul(1000) / 40).clamp(50, 1000)
        };
        Duration::from_millis(ms)
    }

    /// Checks the configuration and resolves the peers and the authority
    /// set (this authority's key `me` plus the peers').
    pub(crate) fn validate(
        &self,
        me: IdentityKey,
    ) -> Result<(Vec<AuthorityPin>, AuthoritySet), Error> {
        let bad = |reason: String| Error::Config { reason };
        if self.epoch_secs < 2 {
            return Err(bad("epoch_secs must be at least 2".into()));
        }
        self.network_params()
            .check()
            .map_err(|e| bad(format!("params: {e}")))?;
        if self.limits.max_descriptors == 0 {
            return Err(bad("limits.max_descriptors must be positive".into()));
        }
        self.limits
            .server()
            .check()
            .map_err(|e| bad(format!("limits: {e}")))?;
        let a = &self.admission;
        self.admission.node_keys()?;
        if a.max_per_address == 0 || a.max_per_subnet == 0 || a.max_concurrent_probes == 0 {
            return Err(bad(
                "admission.max_per_address, max_per_subnet and max_concurrent_probes must be positive"
                    .into(),
            ));
        }
        if a.probe_timeout_ms == 0
            || a.probe_timeout_ms > 60_000
            || a.reprobe_secs == 0
            || a.probe_retry_secs == 0
            || a.reprobe_secs > 7 * 24 * 3600
            || a.probe_retry_secs > 7 * 24 * 3600
        {
            return Err(bad(
                "admission: probe_timeout_ms must be in 1..=60000, reprobe_secs and probe_retry_secs in 1 s..=a week"
                    .into(),
            ));
        }
        let peers = self.peers.clone();
        if let Some(i) = peers.iter().position(|p| p.key == me) {
            return Err(bad(format!(
                "peers[{i}] is this authority's own key; list only the others"
            )));
        }
        let mut keys = vec![me];
        keys.extend(peers.iter().map(|p| p.key));
        let threshold = if self.threshold == 0 {
            keys.len() / 2 + 1
        } else {
            self.threshold
        };
        let set =
            AuthoritySet::new(keys, threshold).map_err(|e| bad(format!("peers/threshold: {e}")))?;
        Ok((peers, set))
    }
}

/// The commented configuration `init` writes. Every setting is shown with
/// its default.
pub fn example_config(listen: SocketAddr, data_dir: &str, key_file: &str) -> String {
    format!(
        r#"# murmur-directory: directory authority configuration.
# Unknown keys are an error. Relative paths are relative to this file.

# HTTP address of the API (descriptors, votes, consensus, /metrics, /healthz).
listen = "{listen}"

# Accepted descriptors, this authority's votes and published documents.
data_dir = "{data_dir}"

# This authority's Ed25519 secret key (written by `init`, mode 0600).
key_file = "{key_file}"

# Epoch length in seconds. Every authority, node and client of the network
# must agree; documents and Sphinx keys are per epoch.
epoch_secs = 3600

# How many of the n authorities (the peers below plus this one) must sign a
# document before this authority publishes it. 0 = a majority (n/2 + 1,
# rounded down), which is what to use: with fewer, two different documents
# could both gather enough signatures.
threshold = 0

# The other authorities: their HTTP address and base58 public key (printed
# by their `init`). Repeat the block for each. Leave none for a single
# authority (n = 1).
# [[peers]]
# addr = "192.0.2.10:8700"
# key = "base58 public key of that authority"

# The network parameters this authority votes for; the consensus uses those
# a majority of authorities agree on, so keep them equal everywhere.
[params]
# Mean per-hop delay (exponential), milliseconds.
mean_delay_ms = 50
# Largest per-hop delay a node accepts, milliseconds.
max_delay_ms = 1000
# Each client's Poisson send rate (real or drop cover), packets/s. 0 = no cover.
client_rate = 2.0
# Each client's loop cover rate, packets/s. 0 = off.
client_loop_rate = 0.5
# Each mix node's loop cover rate, packets/s. 0 = off.
mix_loop_rate = 0.5

[timing]
# When there is no document for the current epoch (first start, or a failed
# round), vote this long after the first descriptor arrives (or after start
# if descriptors were kept on disk), and compute at the latest this long
# after voting. Milliseconds.
bootstrap_window_ms = 2000
# Period of the protocol loop, ms. 0 = epoch length / 40, within 50..1000.
tick_ms = 0
# Timeout of one request to a peer authority, ms.
peer_timeout_ms = 2000
# Epochs of published documents kept in memory and on disk.
keep_epochs = 24

[limits]
# Most node identities kept; uploads from further identities get 503.
max_descriptors = 1000
# HTTP connections served at once; more wait in the kernel's accept queue.
max_connections = 256
# HTTP connections served at once from one address (an IPv4 address, or an
# IPv6 /64); more are closed as soon as they are accepted, so that one host
# cannot take every slot.
max_connections_per_address = 16
# Seconds a client has to send a request's headers (also how long an idle
# kept-alive connection stays open), and then its body. A client that
# trickles bytes (slowloris) is closed then.
header_timeout_secs = 10
body_timeout_secs = 10
# Seconds one HTTP connection may live.
connection_timeout_secs = 60

# Which nodes this authority lists (docs/directory.md, "Admitting nodes").
[admission]
# "allowlist": only node identity keys this authority's operator admitted
# with `murmur-directory admit --config FILE KEY` (and `revoke`), which
# writes list_file signed with the authority key (a file edited by hand is
# refused), or listed in `nodes` below.
# "open": any node, within max_per_address and max_per_subnet.
mode = "allowlist"
list_file = "admitted-nodes.list"
# Node identity keys (base58, as `murmur-mixnode init` prints them) admitted
# here as well as in list_file.
nodes = []
# Open mode: live node identities per packet-address host (an IPv4 address,
# or an IPv6 /64), and per subnet (IPv4 /24, IPv6 /48). More are refused.
max_per_address = 2
max_per_subnet = 8
# Open mode: accept packet addresses that are not globally routable
# (loopback, private, link-local). Off, a stranger cannot point the probe
# into this authority's own network.
allow_private_addresses = false
# Before voting for a node, connect to its packet address (TCP): a node
# that cannot be reached is kept but not listed. Timeout of one probe, ms;
# a reachable node is probed again after reprobe_secs, an unreachable one
# after probe_retry_secs; at most max_concurrent_probes at once.
probe = true
probe_timeout_ms = 3000
reprobe_secs = 600
probe_retry_secs = 30
max_concurrent_probes = 32
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_parses_to_the_defaults() {
        let text = example_config(default_listen(), "data", "authority.key");
        let cfg = AuthorityConfig::from_toml(&text, Path::new("x.toml")).unwrap();
        let mut want = AuthorityConfig::new("data");
        want.listen = default_listen();
        assert_eq!(cfg, want);
        let me = IdentityKey::from(
            &murmur_wire::ed25519_dalek::SigningKey::from_bytes(&[3; 32]).verifying_key(),
        );
        cfg.validate(me).unwrap();
    }

    #[test]
    fn unknown_keys_are_named() {
        let text = "data_dir = \"d\"\nlisten_addr = \"127.0.0.1:1\"\n";
        let err = AuthorityConfig::from_toml(text, Path::new("x.toml")).unwrap_err();
        let Error::ConfigParse { source, .. } = err else {
            panic!("{err}")
        };
        assert!(source.to_string().contains("listen_addr"), "{source}");
        let text = "data_dir = \"d\"\n[params]\nmean_delay = 3\n";
        let err = AuthorityConfig::from_toml(text, Path::new("x.toml")).unwrap_err();
        let Error::ConfigParse { source, .. } = err else {
            panic!("{err}")
        };
        assert!(source.to_string().contains("mean_delay"), "{source}");
    }

    #[test]
    fn bad_thresholds_and_peers_are_refused() {
        let me = IdentityKey::from(
            &murmur_wire::ed25519_dalek::SigningKey::from_bytes(&[3; 32]).verifying_key(),
        );
        let mut cfg = AuthorityConfig::new("d");
        cfg.threshold = 2;
        assert!(cfg.validate(me).is_err());
        // The default, 0: a majority of the n authorities.
        cfg.threshold = 0;
        assert_eq!(cfg.validate(me).unwrap().1.threshold(), 1);
        let peer = |seed: u8| AuthorityPin {
            addr: default_listen(),
            key: IdentityKey::from(
                &murmur_wire::ed25519_dalek::SigningKey::from_bytes(&[seed; 32]).verifying_key(),
            ),
        };
        cfg.peers = vec![peer(4), peer(5)];
        assert_eq!(cfg.validate(me).unwrap().1.threshold(), 2);
        cfg.peers.clear();
        cfg.threshold = 1;
        cfg.peers.push(AuthorityPin {
            addr: default_listen(),
            key: me,
        });
        assert!(cfg.validate(me).is_err());
        let text = format!(
            "data_dir = \"d\"\nkey_file = \"k\"\n[[peers]]\naddr = \"{}\"\nkey = \"garbage!\"\n",
            default_listen()
        );
        assert!(AuthorityConfig::from_toml(&text, Path::new("x.toml")).is_err());
    }
}
