//! Registration with the directory: the node's descriptor (role, packet
//! address, Sphinx keys for the current and upcoming epochs, signed with
//! the Ed25519 identity key), uploaded to every authority at start and in
//! every epoch; and the directory follower as the engine's [`Topology`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use murmur_directory::{ConsensusWatch, DirectoryClient};
use murmur_net::clock::Clock;
use murmur_wire::directory::DESCRIPTOR_VERSION;
use murmur_wire::ed25519_dalek::SigningKey;
use murmur_wire::policy::epoch_at;
use murmur_wire::{
    Descriptor, IdentityKey, LinkSecretKey, Role, SignedDescriptor, VerifiedConsensus,
};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::engine::Topology;
use crate::error::{Error, Result};
use crate::keys::KeyManager;

/// Signs the descriptor of a node with `role` at `packet_addr` (and, for a
/// mailbox provider, its fetch API at `http_addr`), as published at unix
/// time `now_secs`: the Sphinx keys `keys` has for the current and upcoming
/// epochs and the link key derived from `identity`. Checks that it verifies,
/// so that nothing an authority would refuse is uploaded.
pub fn node_descriptor(
    identity: &SigningKey,
    role: Role,
    packet_addr: SocketAddr,
    http_addr: Option<SocketAddr>,
    keys: &KeyManager,
    now_secs: u64,
) -> Result<SignedDescriptor> {
    let descriptor = Descriptor {
        version: DESCRIPTOR_VERSION,
        identity: IdentityKey::from(&identity.verifying_key()),
        role,
        packet_addr,
        http_addr,
        link_key: LinkSecretKey::derive(&identity.to_bytes()).public().clone(),
        sphinx_keys: keys.public_keys(now_secs),
        published_at: now_secs,
    };
    let signed = SignedDescriptor::sign(&descriptor, identity).map_err(|source| Error::Wire {
        what: "could not sign the descriptor",
        source,
    })?;
    // Never publish what an authority would refuse.
    signed.verify().map_err(|source| Error::Wire {
        what: "the descriptor does not verify",
        source,
    })?;
    Ok(signed)
}

/// Registration counters.
#[derive(Clone, Debug, Default)]
pub struct RegistrationMetrics {
    uploads: Counter,
    failures: Counter,
}

impl RegistrationMetrics {
    /// Registers the counters in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "registrations",
            "Descriptor uploads accepted by every authority",
            m.uploads.clone(),
        );
        registry.register(
            "registration_failures",
            "Descriptor uploads refused by, or not delivered to, one authority (retried)",
            m.failures.clone(),
        );
        m
    }

    /// Uploads accepted by every authority.
    pub fn registrations(&self) -> u64 {
        self.uploads.get()
    }
}

/// First and largest wait before retrying a failed upload.
const RETRY_MIN: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(60);
/// How often the task reads the clock while waiting for the next epoch.
const CHECK: Duration = Duration::from_secs(1);

/// Uploads the node's descriptor (made by `make` for the current unix time)
/// to every authority at start and again in every epoch, retrying with
/// backoff until every authority has accepted it. Stops on `shutdown`.
pub fn spawn_registration<F>(
    client: DirectoryClient,
    make: F,
    epoch_secs: u64,
    clock: Arc<dyn Clock>,
    metrics: RegistrationMetrics,
    shutdown: CancellationToken,
    tracker: &TaskTracker,
) where
    F: Fn(u64) -> Result<SignedDescriptor> + Send + 'static,
{
    tracker.spawn(async move {
        let mut done_epoch: Option<u64> = None;
        let mut retry = RETRY_MIN;
        loop {
            let now = clock.now_secs();
            let epoch = epoch_at(now, epoch_secs);
            let wait = if done_epoch == Some(epoch) {
                CHECK
            } else {
                match make(now) {
                    Ok(descriptor) => {
                        let report = client.upload_descriptor(&descriptor).await;
                        metrics.failures.inc_by(report.failed.len() as u64);
                        if report.all_accepted() {
                            metrics.uploads.inc();
                            tracing::info!(epoch, "descriptor registered with every authority");
                            done_epoch = Some(epoch);
                            retry = RETRY_MIN;
                            CHECK
                        } else {
                            tracing::warn!(%report, "descriptor upload incomplete; retrying");
                            let w = retry;
                            retry = (retry * 2).min(RETRY_MAX);
                            w
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "could not make the descriptor; retrying");
                        let w = retry;
                        retry = (retry * 2).min(RETRY_MAX);
                        w
                    }
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    });
}

/// The verified documents a directory follower keeps, as the engine's
/// [`Topology`].
#[derive(Clone, Debug)]
pub struct WatchTopology(pub ConsensusWatch);

impl Topology for WatchTopology {
    fn current(&self) -> Option<Arc<VerifiedConsensus>> {
        self.0.current()
    }

    fn for_epoch(&self, epoch: u64) -> Option<Arc<VerifiedConsensus>> {
        self.0.get(epoch)
    }
}
