//! The configuration sections every node daemon shares — `[network]`,
//! `[directory]` (with the pinned authorities), `[keys]`, `[engine]`,
//! `[replay]` — and their commented example text, so that the mix node's and
//! the mailbox provider's files read alike.

use std::time::Duration;

use murmur_directory::{AuthorityPin, DirectoryClient};
use murmur_net::http::HttpClient;
use serde::{Deserialize, Serialize};

use crate::engine::{EngineLimits, ReplaySettings};
use crate::error::{Error, Result};
use crate::keys::KeySettings;

/// Network-wide settings (the `[network]` table).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NetworkSettings {
    /// Epoch length in seconds; must equal the authorities' `epoch_secs`.
    pub epoch_secs: u64,
}

impl Default for NetworkSettings {
    fn default() -> Self {
        Self { epoch_secs: 3600 }
    }
}

/// The directory (the `[directory]` table).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DirectorySettings {
    /// The pinned authorities.
    pub authorities: Vec<AuthorityPin>,
    /// How many of them must sign a consensus; 0 (the default) means a
    /// majority of them, ⌊n/2⌋ + 1 ([`DirectorySettings::effective_threshold`]).
    pub threshold: usize,
    /// Timeout of one request to an authority, ms.
    pub request_timeout_ms: u64,
}

impl Default for DirectorySettings {
    fn default() -> Self {
        Self {
            authorities: Vec::new(),
            threshold: 0,
            request_timeout_ms: 5_000,
        }
    }
}

impl DirectorySettings {
    /// The threshold in force: `threshold`, or when it is 0 a majority of
    /// the pinned authorities (⌊n/2⌋ + 1), so that no single authority (nor
    /// any minority) can make the node accept a document.
    pub fn effective_threshold(&self) -> usize {
        if self.threshold == 0 {
            self.authorities.len() / 2 + 1
        } else {
            self.threshold
        }
    }

    /// The directory client a node follows the consensus with (and
    /// registers through): the pinned authorities, the threshold and the
    /// request timeout. At least one authority is required.
    pub fn client(&self) -> Result<DirectoryClient> {
        if self.authorities.is_empty() {
            return Err(Error::Config(
                "no directory authorities: add [[directory.authorities]]".into(),
            ));
        }
        DirectoryClient::new(
            self.authorities.clone(),
            self.effective_threshold(),
            HttpClient::new(Duration::from_millis(self.request_timeout_ms)),
        )
        .map_err(|source| Error::Directory {
            what: "could not set up the directory client",
            source: Box::new(source),
        })
    }

    /// Checks the settings (an empty list is allowed here; a node that
    /// registers needs at least one authority).
    pub fn check(&self) -> Result<()> {
        let pins = &self.authorities;
        if self.threshold > pins.len() {
            return Err(Error::Config(format!(
                "directory.threshold must be in 0..={} (0: a majority of the authorities)",
                pins.len()
            )));
        }
        if !pins.is_empty() && self.effective_threshold() <= pins.len() / 2 {
            tracing::warn!(
                threshold = self.threshold,
                authorities = pins.len(),
                "directory.threshold is not a majority of the pinned authorities: a minority of them could make this node accept a document"
            );
        }
        if self.request_timeout_ms == 0 {
            return Err(Error::Config(
                "directory.request_timeout_ms must be positive".into(),
            ));
        }
        Ok(())
    }
}

/// What the node sections of an example configuration show: the values, and
/// who the node is ("node" for a mix, "provider" for a mailbox).
#[derive(Clone, Copy, Debug)]
pub struct NodeSectionsExample<'a> {
    /// "node" or "provider".
    pub who: &'a str,
    /// `[[directory.authorities]]`.
    pub authorities: &'a [AuthorityPin],
    /// `directory.threshold`.
    pub threshold: usize,
    /// `[network]`.
    pub network: &'a NetworkSettings,
    /// `[directory]` (the timeout).
    pub directory: &'a DirectorySettings,
    /// `[keys]`.
    pub keys: &'a KeySettings,
    /// `[engine]`.
    pub engine: &'a EngineLimits,
    /// `[replay]`.
    pub replay: &'a ReplaySettings,
}

/// The commented `[network]`, `[directory]`, `[keys]`, `[engine]` and
/// `[replay]` sections, shared by the mix node's and the mailbox's example
/// configurations (one text for one set of settings).
pub fn node_sections_example(x: &NodeSectionsExample<'_>) -> String {
    let mut auth = String::new();
    if x.authorities.is_empty() {
        auth.push_str(
            "# [[directory.authorities]]\n# addr = \"198.51.100.1:7100\"\n# key = \"<base58 public key printed by murmur-directory init>\"\n",
        );
    }
    for a in x.authorities {
        auth.push_str(&format!(
            "[[directory.authorities]]\naddr = \"{}\"\nkey = \"{}\"\n\n",
            a.addr, a.key
        ));
    }
    let (e, r) = (x.engine, x.replay);
    format!(
        r#"[network]
# Epoch length in seconds: must equal the authorities' epoch_secs.
epoch_secs = {epoch_secs}

[directory]
# How many of the authorities below must sign a consensus. 0 = a majority of
# them (n/2 + 1, rounded down), which is what to use: with fewer, a minority
# of the authorities could make this {who} accept a document.
threshold = {threshold}
# Timeout of one request to an authority, ms.
request_timeout_ms = {req_ms}
# The pinned authorities (address and base58 public key), one table each.
# The {who} registers with every one of them in every epoch.
{auth}
[keys]
# Seconds after an epoch starts during which the previous epoch's Sphinx key
# is still accepted (packets in flight). Shorter than an epoch.
grace_secs = {grace}
# Upcoming epochs whose keys are generated and published ahead (1-3).
ahead_epochs = {ahead}

[engine]
# Unwrap worker threads; 0 = one per core, plus one.
workers = {workers}
# Inbound connections served at once (more wait in the backlog).
max_connections = {max_connections}
# An inbound connection must complete a frame within this many seconds.
read_timeout_secs = {read_timeout}
# An inbound connection must complete its link handshake within this, ms.
handshake_timeout_ms = {handshake}
# Each direction of a link gets a new key at least this often, seconds
# (and every 65536 records).
link_rekey_secs = {rekey}
# Packets waiting for a worker; more are dropped (overload_unwrap).
unwrap_queue = {unwrap_queue}
# A packet that waited longer than this for a worker is dropped, ms.
max_unwrap_dwell_ms = {dwell}
# Packets held for their delay at once; more are dropped (overload_delay).
# (A mailbox provider is the last hop: it holds only packets it is asked to
# forward.)
max_delayed = {max_delayed}
# Packets queued per outbound link (a provider's acknowledgements leave
# through these); more are dropped (overload_link).
link_queue = {link_queue}
# Packets queued in all outbound links together; more are dropped
# (overload_link).
max_link_queued = {max_link_queued}
# Outbound links open at once.
max_links = {max_links}
# Time to connect an outbound link, ms.
connect_timeout_ms = {connect}
# Time to write a batch of packets before the link is reset, ms.
write_timeout_ms = {write}
# An outbound link idle this long is closed, seconds.
link_idle_timeout_secs = {idle}
# Reconnection backoff: first wait and largest wait, ms (with jitter).
reconnect_min_ms = {rmin}
reconnect_max_ms = {rmax}

[replay]
# Packets per second this {who} expects; sizes one replay filter segment
# together with the key lifetime (epoch + grace). Memory: about 3.6 bytes
# per tag at 1e-6. A full segment is followed by a new one, so a flood does
# not saturate the filter (docs/mixnode.md, "Replay filter").
expected_packet_rate = {rate:?}
# Chance that a fresh packet is taken for a replay, per full segment.
false_positive_rate = {fp:e}
# The most packets per second this {who} can process: the chain of segments
# may grow to hold that many for a whole key lifetime, so that no flood can
# fill it within an epoch. 0 = measured at start (one worker's unwrap rate
# times the cores the workers can use).
max_packet_rate = {max_rate:?}
# The most memory one key epoch's filters may take, MiB (one or two epochs
# are held). If the capacity needs more, a flood at full capacity can
# saturate the filter before the key rotates: counted
# (replay_saturated_tags_total) and alarmed (replay_filter_saturated).
max_memory_mib = {max_mib}
# New replay tags are fsynced this often, ms: a crash loses at most this
# much of the cache (those packets could be replayed once after a restart;
# at a provider a replayed deposit is recognised and not stored twice).
fsync_interval_ms = {fsync}
# A full snapshot of each filter is written this often, seconds.
snapshot_interval_secs = {snap}

"#,
        who = x.who,
        threshold = x.threshold,
        epoch_secs = x.network.epoch_secs,
        req_ms = x.directory.request_timeout_ms,
        grace = x.keys.grace_secs,
        ahead = x.keys.ahead_epochs,
        workers = e.workers,
        max_connections = e.max_connections,
        read_timeout = e.read_timeout_secs,
        handshake = e.handshake_timeout_ms,
        rekey = e.link_rekey_secs,
        unwrap_queue = e.unwrap_queue,
        dwell = e.max_unwrap_dwell_ms,
        max_delayed = e.max_delayed,
        link_queue = e.link_queue,
        max_link_queued = e.max_link_queued,
        max_links = e.max_links,
        connect = e.connect_timeout_ms,
        write = e.write_timeout_ms,
        idle = e.link_idle_timeout_secs,
        rmin = e.reconnect_min_ms,
        rmax = e.reconnect_max_ms,
        rate = r.expected_packet_rate,
        fp = r.false_positive_rate,
        max_rate = r.max_packet_rate,
        max_mib = r.max_memory_mib,
        fsync = r.fsync_interval_ms,
        snap = r.snapshot_interval_secs,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` distinct authorities.
    fn pins(n: u8) -> Vec<AuthorityPin> {
        (1..=n)
            .map(|i| {
                let k = murmur_wire::ed25519_dalek::SigningKey::from_bytes(&[i; 32]);
                let key = murmur_wire::IdentityKey::from(&k.verifying_key());
                format!("127.0.0.{i}:7100={key}").parse().unwrap()
            })
            .collect()
    }

    #[test]
    fn the_default_threshold_is_a_majority_of_the_pins() {
        let mut d = DirectorySettings::default();
        assert_eq!(d.threshold, 0);
        for (n, k) in [(1, 1), (2, 2), (3, 2), (4, 3), (5, 3)] {
            d.authorities = pins(n);
            assert_eq!(d.effective_threshold(), k, "n = {n}");
            d.check().unwrap();
        }
        d.threshold = 1;
        assert_eq!(d.effective_threshold(), 1);
        d.check().unwrap();
        d.threshold = 6;
        assert!(d.check().is_err());
    }
}
