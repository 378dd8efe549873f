//! How a client finds and verifies a network: the pinned directory
//! authorities and the threshold, read from a small TOML file (what
//! `murmur devnet` writes as `client.toml`, and what an operator of a real
//! network publishes).
//!
//! ```toml
//! # A consensus is trusted only if `threshold` of these authorities signed it
//! # (without it: a majority of them).
//! threshold = 2
//!
//! [[authority]]
//! address = "127.0.0.1:7001"
//! key = "<base58 Ed25519 public key>"
//! ```

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use murmur_directory::{AuthorityPin, ConsensusWatch, DirectoryClient, spawn_follower};
use murmur_net::clock::{Clock, SystemClock};
use murmur_net::http::HttpClient;
use murmur_wire::{IdentityKey, VerifiedConsensus};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::client::ConsensusSource;
use crate::error::{Error, Result};

/// One pinned authority.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthorityEntry {
    /// Its HTTP address.
    pub address: SocketAddr,
    /// Its Ed25519 public key, base58.
    pub key: String,
}

/// A network as a client sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkConfig {
    /// How many authorities must sign a consensus. A file without it (or
    /// with 0) means a majority of the authorities listed, ⌊n/2⌋ + 1:
    /// [`NetworkConfig::parse`] fills it in.
    #[serde(default)]
    pub threshold: usize,
    /// The authorities.
    #[serde(rename = "authority")]
    pub authorities: Vec<AuthorityEntry>,
}

impl NetworkConfig {
    /// Reads and checks a network file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::File {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text).map_err(|reason| Error::Config {
            path: path.to_owned(),
            reason,
        })
    }

    /// Parses and checks network TOML.
    pub fn parse(text: &str) -> std::result::Result<Self, String> {
        let mut cfg: Self = toml::from_str(text).map_err(|e| e.message().to_owned())?;
        cfg.threshold = cfg.effective_threshold();
        cfg.endpoints()?;
        Ok(cfg)
    }

    /// The file's text, with comments.
    pub fn to_toml(&self) -> String {
        let mut out = String::from(
            "# Murmur network: the directory authorities a client pins.\n\
             # A consensus document is trusted only if `threshold` of them signed it.\n",
        );
        out.push_str(&format!("threshold = {}\n", self.threshold));
        for a in &self.authorities {
            out.push_str(&format!(
                "\n[[authority]]\naddress = \"{}\"\nkey = \"{}\"\n",
                a.address, a.key
            ));
        }
        out
    }

    /// The threshold in force: `threshold`, or a majority of the
    /// authorities when it is 0.
    pub fn effective_threshold(&self) -> usize {
        if self.threshold == 0 {
            self.authorities.len() / 2 + 1
        } else {
            self.threshold
        }
    }

    /// The authorities as endpoints; checks keys and threshold.
    pub fn endpoints(&self) -> std::result::Result<Vec<AuthorityPin>, String> {
        if self.authorities.is_empty() {
            return Err("no [[authority]] is listed".into());
        }
        let eps = self
            .authorities
            .iter()
            .map(|a| {
                IdentityKey::from_base58(&a.key)
                    .map(|key| AuthorityPin {
                        addr: a.address,
                        key,
                    })
                    .map_err(|e| format!("authority {}: {e}", a.address))
            })
            .collect::<std::result::Result<Vec<_>, _>>()?;
        murmur_wire::AuthoritySet::new(
            eps.iter().map(|e| e.key).collect(),
            self.effective_threshold(),
        )
        .map_err(|e| e.to_string())?;
        Ok(eps)
    }
}

/// The verified consensus as a background follower keeps it.
#[derive(Clone, Debug)]
pub struct FollowedConsensus(pub ConsensusWatch);

impl ConsensusSource for FollowedConsensus {
    fn current(&self) -> Option<Arc<VerifiedConsensus>> {
        self.0.current()
    }

    fn unavailable_reason(&self) -> Option<String> {
        self.0.last_error()
    }
}

/// Starts following the network's consensus, and waits up to `wait` for a
/// first verified document. Fails with the authorities' reasons if none
/// comes (network unreachable, documents refused).
pub async fn follow(
    network: &NetworkConfig,
    wait: Duration,
    shutdown: CancellationToken,
) -> Result<Arc<dyn ConsensusSource>> {
    let endpoints = network
        .endpoints()
        .map_err(|reason| Error::Unreachable { reason })?;
    let dir = DirectoryClient::new(
        endpoints,
        network.effective_threshold(),
        HttpClient::new(Duration::from_secs(5)),
    )
    .map_err(|e| Error::Unreachable {
        reason: e.to_string(),
    })?;
    // If no authority can even be connected to, say so now rather than
    // after the whole wait; a network that answers but has no document yet
    // (still bootstrapping) is waited for.
    if let Err(e) = dir.fetch_current(SystemClock.now().as_secs()).await
        && e.attempts
            .iter()
            .all(|a| matches!(a.error, murmur_directory::AttemptError::Unreachable(_)))
    {
        return Err(Error::Unreachable {
            reason: format!("no directory authority answers ({e})"),
        });
    }
    let mut watch = spawn_follower(dir, Arc::new(SystemClock), shutdown);
    let deadline = tokio::time::Instant::now() + wait;
    while watch.current().is_none() {
        if tokio::time::timeout_at(deadline, watch.changed())
            .await
            .is_err()
        {
            return Err(Error::Unreachable {
                reason: watch
                    .last_error()
                    .unwrap_or_else(|| "no consensus document arrived in time".into()),
            });
        }
    }
    Ok(Arc::new(FollowedConsensus(watch)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_bad_files() {
        let key = IdentityKey(
            murmur_wire::ed25519_dalek::SigningKey::from_bytes(&[1; 32])
                .verifying_key()
                .to_bytes(),
        );
        let cfg = NetworkConfig {
            threshold: 1,
            authorities: vec![AuthorityEntry {
                address: "127.0.0.1:1".parse().unwrap(),
                key: key.to_base58(),
            }],
        };
        assert_eq!(NetworkConfig::parse(&cfg.to_toml()).unwrap(), cfg);
        assert!(
            NetworkConfig::parse("threshold = 1\n")
                .unwrap_err()
                .contains("authority")
        );
        let unknown = format!("{}\nextra = 1\n", cfg.to_toml());
        assert!(NetworkConfig::parse(&unknown).is_err());
        let bad_threshold = cfg.to_toml().replace("threshold = 1", "threshold = 2");
        assert!(
            NetworkConfig::parse(&bad_threshold)
                .unwrap_err()
                .contains("threshold")
        );
        // No threshold: a majority of the authorities listed.
        let mut three = cfg.clone();
        three.authorities = (1..=3u8)
            .map(|i| AuthorityEntry {
                address: "127.0.0.1:1".parse().unwrap(),
                key: IdentityKey(
                    murmur_wire::ed25519_dalek::SigningKey::from_bytes(&[i; 32])
                        .verifying_key()
                        .to_bytes(),
                )
                .to_base58(),
            })
            .collect();
        let text = three.to_toml().replace("threshold = 1\n", "");
        assert_eq!(NetworkConfig::parse(&text).unwrap().threshold, 2);
        let zero = three.to_toml().replace("threshold = 1", "threshold = 0");
        assert_eq!(NetworkConfig::parse(&zero).unwrap().threshold, 2);
        let bad_key = cfg.to_toml().replace(&key.to_base58(), "nope");
        assert!(NetworkConfig::parse(&bad_key).is_err());
    }
}
