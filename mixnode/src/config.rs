//! The mix node's configuration file (TOML): every key, its default, and
//! the commented example `murmur-mixnode init` writes.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use murmur_directory::AuthorityPin;
use murmur_node::config::{
    DirectorySettings, NetworkSettings, NodeSectionsExample, node_sections_example,
};
use murmur_node::engine::{EngineLimits, ReplaySettings};
use murmur_node::keys::KeySettings;
use murmur_node::{Error, Result};
use serde::{Deserialize, Serialize};

use crate::loops::LoopSettings;

/// The whole configuration of a mix node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MixNodeConfig {
    /// Where keys and the replay cache live (relative paths are relative to
    /// the configuration file's directory).
    pub data_dir: PathBuf,
    /// The Ed25519 identity key file (base58 seed, mode 0600), read by the
    /// binary. Relative to the configuration file's directory.
    #[serde(default = "default_identity_key_file")]
    pub identity_key_file: PathBuf,
    /// Where to accept packet links.
    #[serde(default = "default_listen_addr")]
    pub listen_addr: SocketAddr,
    /// The packet address published in the descriptor (what other nodes
    /// connect to). Defaults to the bound listen address, which must then
    /// not be a wildcard address.
    #[serde(default)]
    pub public_addr: Option<SocketAddr>,
    /// Where `/metrics` and `/healthz` are served.
    #[serde(default = "default_http_addr")]
    pub http_addr: SocketAddr,
    /// Network-wide settings that must match the authorities'.
    #[serde(default)]
    pub network: NetworkSettings,
    /// The directory authorities this node registers with and follows.
    #[serde(default)]
    pub directory: DirectorySettings,
    /// Sphinx key rotation.
    #[serde(default)]
    pub keys: KeySettings,
    /// Packet engine limits.
    #[serde(default)]
    pub engine: EngineLimits,
    /// Replay cache sizing and persistence.
    #[serde(default)]
    pub replay: ReplaySettings,
    /// Loop cover bookkeeping.
    #[serde(default)]
    pub loops: LoopSettings,
}

fn default_identity_key_file() -> PathBuf {
    PathBuf::from("identity.key")
}

fn default_listen_addr() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 7300))
}

fn default_http_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7301))
}

impl MixNodeConfig {
    /// A configuration with every default, keeping its files in `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            identity_key_file: default_identity_key_file(),
            listen_addr: default_listen_addr(),
            public_addr: None,
            http_addr: default_http_addr(),
            network: NetworkSettings::default(),
            directory: DirectorySettings::default(),
            keys: KeySettings::default(),
            engine: EngineLimits::default(),
            replay: ReplaySettings::default(),
            loops: LoopSettings::default(),
        }
    }

    /// Parses a configuration; unknown keys are an error naming the key.
    /// Relative paths stay relative (see [`MixNodeConfig::load`]).
    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let cfg: Self = toml::from_str(text).map_err(|source| Error::ConfigParse {
            path: path.to_owned(),
            source,
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads, parses and validates a configuration file; relative paths in
    /// it are resolved against the file's directory.
    pub fn load(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).map_err(|e| Error::io("could not read", path, e))?;
        let mut cfg = Self::parse(&text, path)?;
        let base = path.parent().unwrap_or(Path::new("."));
        if cfg.data_dir.is_relative() {
            cfg.data_dir = base.join(&cfg.data_dir);
        }
        if cfg.identity_key_file.is_relative() {
            cfg.identity_key_file = base.join(&cfg.identity_key_file);
        }
        Ok(cfg)
    }

    /// Checks every section.
    pub fn validate(&self) -> Result<()> {
        self.keys.check(self.network.epoch_secs)?;
        self.engine.check()?;
        self.replay.check(self.key_lifetime())?;
        self.loops.check()?;
        self.directory.check()?;
        if let Some(addr) = self.public_addr
            && (addr.ip().is_unspecified() || addr.port() == 0)
        {
            return Err(Error::Config(
                "public_addr must be a concrete address and port".into(),
            ));
        }
        Ok(())
    }

    /// How long one Sphinx key is in use: an epoch plus the grace period.
    pub fn key_lifetime(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.network.epoch_secs.saturating_add(self.keys.grace_secs))
    }
}

/// The commented configuration `murmur-mixnode init` writes. Every key is
/// shown with its default.
pub fn example_config(
    data_dir: &str,
    listen_addr: SocketAddr,
    public_addr: Option<SocketAddr>,
    http_addr: SocketAddr,
    authorities: &[AuthorityPin],
    threshold: usize,
) -> String {
    let d = MixNodeConfig::new(data_dir);
    let public = match public_addr {
        Some(a) => format!("public_addr = \"{a}\""),
        None => "# public_addr = \"203.0.113.7:7300\"".to_owned(),
    };
    let node_sections = node_sections_example(&NodeSectionsExample {
        who: "node",
        authorities,
        threshold,
        network: &d.network,
        directory: &d.directory,
        keys: &d.keys,
        engine: &d.engine,
        replay: &d.replay,
    });
    format!(
        r#"# murmur-mixnode configuration. Every key is shown with its default;
# unknown keys are an error. Reference: docs/mixnode.md.

# Where Sphinx keys (keys/) and the replay cache (replay/) are kept.
# Relative paths are relative to this file.
data_dir = "{data_dir}"
# The node's Ed25519 identity key (base58, mode 0600). Its public half
# derives the node id; keep it: a new key is a new node.
identity_key_file = "{key_file}"
# Where packet links are accepted (TCP).
listen_addr = "{listen_addr}"
# The packet address other nodes connect to, published in the descriptor.
# Defaults to the listen address, which must then be a concrete address.
{public}
# Where /metrics (Prometheus) and /healthz are served. Keep it private.
http_addr = "{http_addr}"

{node_sections}[loops]
# Loop cover packets in flight at once (the rate is the consensus
# mix_loop_rate).
max_outstanding = {max_out}
# A loop is lost if it is not back this long after the sum of its delays, ms.
timeout_slack_ms = {slack}
"#,
        key_file = d.identity_key_file.display(),
        max_out = d.loops.max_outstanding,
        slack = d.loops.timeout_slack_ms,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pin() -> AuthorityPin {
        let k = murmur_wire::ed25519_dalek::SigningKey::from_bytes(&[3; 32]);
        AuthorityPin {
            addr: "127.0.0.1:7100".parse().unwrap(),
            key: murmur_wire::IdentityKey::from(&k.verifying_key()),
        }
    }

    #[test]
    fn the_example_parses_to_the_defaults() {
        let text = example_config(
            "data",
            default_listen_addr(),
            None,
            default_http_addr(),
            &[],
            0,
        );
        let cfg = MixNodeConfig::parse(&text, Path::new("x.toml")).unwrap();
        assert_eq!(cfg, MixNodeConfig::new("data"));

        let text = example_config(
            "/var/lib/murmur",
            "127.0.0.1:7300".parse().unwrap(),
            Some("192.0.2.1:7300".parse().unwrap()),
            default_http_addr(),
            &[pin()],
            1,
        );
        let cfg = MixNodeConfig::parse(&text, Path::new("x.toml")).unwrap();
        assert_eq!(cfg.directory.authorities, vec![pin()]);
        assert_eq!(cfg.public_addr, Some("192.0.2.1:7300".parse().unwrap()));
    }

    #[test]
    fn unknown_keys_are_named() {
        let text = "data_dir = \"d\"\n[engine]\nworkerz = 3\n";
        let err = MixNodeConfig::parse(text, Path::new("x.toml")).unwrap_err();
        let msg = format!("{err}: {}", std::error::Error::source(&err).unwrap());
        assert!(msg.contains("workerz"), "{msg}");
    }

    #[test]
    fn bad_values_are_refused() {
        for text in [
            "data_dir = \"d\"\n[keys]\ngrace_secs = 3600\n".to_owned(),
            "data_dir = \"d\"\n[engine]\nunwrap_queue = 0\n".to_owned(),
            "data_dir = \"d\"\n[engine]\nread_timeout_secs = 18446744073709551615\n".to_owned(),
            "data_dir = \"d\"\n[loops]\ntimeout_slack_ms = 18446744073709551615\n".to_owned(),
            "data_dir = \"d\"\n[replay]\nfsync_interval_ms = 0\n".to_owned(),
            "data_dir = \"d\"\n[replay]\nfalse_positive_rate = 0.0\n".to_owned(),
            "data_dir = \"d\"\npublic_addr = \"0.0.0.0:7300\"\n".to_owned(),
            "data_dir = \"d\"\n[[directory.authorities]]\naddr = \"127.0.0.1:1\"\nkey = \"nope\"\n"
                .to_owned(),
            format!(
                "data_dir = \"d\"\n[directory]\nthreshold = 2\n[[directory.authorities]]\naddr = \"127.0.0.1:1\"\nkey = \"{}\"\n",
                pin().key
            ),
        ] {
            assert!(
                MixNodeConfig::parse(&text, Path::new("x.toml")).is_err(),
                "{text}"
            );
        }
    }

    #[test]
    fn relative_paths_follow_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mixnode.toml");
        std::fs::write(&path, "data_dir = \"data\"\n").unwrap();
        let cfg = MixNodeConfig::load(&path).unwrap();
        assert_eq!(cfg.data_dir, dir.path().join("data"));
        assert_eq!(cfg.identity_key_file, dir.path().join("identity.key"));
    }
}
