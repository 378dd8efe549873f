//! The provider as a daemon: everything started from one configuration,
//! in-process ([`start_mailbox`]) or from the `murmur-mailbox` binary.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use murmur_directory::clock::Clock;
use murmur_directory::http::spawn_server;
use murmur_wire::NodeId;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use zeroize::Zeroizing;

use crate::api::Api;
use crate::config::{Config, EXAMPLE_CONFIG};
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::reaper::{ReaperConfig, run_reaper};
use crate::store::{RedbStore, Store};

/// A running provider.
#[derive(Debug)]
pub struct MailboxHandle {
    /// Where the fetch API, `/metrics` and `/healthz` are served.
    pub http_addr: SocketAddr,
    /// The provider's node id (from its identity key).
    pub node_id: NodeId,
    metrics: Arc<Metrics>,
    stopped: JoinHandle<()>,
}

impl MailboxHandle {
    /// The provider's metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Waits until the provider has stopped after its shutdown token was
    /// cancelled: requests in flight answered, the last batch committed, the
    /// database closed (it can be reopened at once).
    pub async fn stopped(self) {
        if self.stopped.await.is_err() {
            tracing::error!("the mailbox shutdown task panicked");
        }
    }
}

/// Starts a provider: opens (or creates) the database under
/// `config.data_dir`, starts the reaper and the fetch API, and runs until
/// `shutdown` is cancelled. Port 0 in the configuration picks a free port;
/// the handle has the bound addresses.
pub async fn start_mailbox(
    config: Config,
    identity: SigningKey,
    clock: Arc<dyn Clock>,
    shutdown: CancellationToken,
) -> Result<MailboxHandle> {
    config.validate()?;
    let node_id = NodeId::from_identity(&identity.verifying_key());
    std::fs::create_dir_all(&config.data_dir).map_err(|source| Error::File {
        action: "create",
        path: config.data_dir.clone(),
        source,
    })?;
    let db_path = config.database_path();
    let quota = config.storage.quota();
    let store = tokio::task::spawn_blocking(move || RedbStore::open(&db_path, quota))
        .await
        .map_err(|_| Error::Task {
            during: "opening the database",
        })??;
    let store: Arc<dyn Store> = Arc::new(store);
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

    let tasks = TaskTracker::new();
    tasks.spawn(run_reaper(
        store.clone(),
        clock.clone(),
        ReaperConfig {
            retention: Duration::from_secs(config.storage.retention_secs),
            interval: Duration::from_secs(config.storage.reap_interval_secs),
            batch: config.storage.reap_batch,
        },
        metrics.clone(),
        shutdown.clone(),
    ));

    let api = Arc::new(Api::new(
        store.clone(),
        clock.clone(),
        metrics.clone(),
        config.api.api(),
    ));
    let (http_addr, http_task) = spawn_server(
        config.http.listen,
        move |req| api.clone().handle(req),
        config.http.limits(),
        shutdown.clone(),
    )
    .await
    .map_err(|source| Error::Bind {
        addr: config.http.listen,
        source,
    })?;
    tracing::info!(%http_addr, %node_id, "mailbox provider started");

    let stopped = tokio::spawn(async move {
        shutdown.cancelled().await;
        if http_task.await.is_err() {
            tracing::error!("the HTTP server task panicked");
        }
        tasks.close();
        tasks.wait().await;
        drop(store);
        tracing::info!("mailbox provider stopped");
    });
    Ok(MailboxHandle {
        http_addr,
        node_id,
        metrics,
        stopped,
    })
}

/// Writes `DIR/mailbox.toml` (the commented example configuration) and a new
/// identity key `DIR/identity.key`. Refuses to overwrite either.
pub fn init_dir(dir: &Path) -> Result<(PathBuf, NodeId)> {
    std::fs::create_dir_all(dir).map_err(|source| Error::File {
        action: "create",
        path: dir.to_path_buf(),
        source,
    })?;
    let config_path = dir.join("mailbox.toml");
    let key_path = Config::default().identity_path();
    let key_path = dir.join(key_path.file_name().unwrap_or_default());
    let key = SigningKey::generate(&mut rand::rng());
    let encoded = Zeroizing::new(bs58::encode(key.to_bytes()).into_string());
    write_new(
        &key_path,
        format!("{}\n", encoded.as_str()).as_bytes(),
        true,
    )?;
    write_new(&config_path, EXAMPLE_CONFIG.as_bytes(), false)?;
    Ok((config_path, NodeId::from_identity(&key.verifying_key())))
}

fn write_new(path: &Path, contents: &[u8], secret: bool) -> Result<()> {
    let err = |source| Error::File {
        action: "write",
        path: path.to_path_buf(),
        source,
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = secret;
    let mut file = options.open(path).map_err(err)?;
    file.write_all(contents).map_err(err)?;
    file.sync_all().map_err(err)
}

/// Reads an identity key file written by [`init_dir`] (base58 of the
/// 32-byte Ed25519 secret key).
pub fn load_identity(path: &Path) -> Result<SigningKey> {
    let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|source| Error::File {
        action: "read",
        path: path.to_path_buf(),
        source,
    })?);
    let mut bytes = Zeroizing::new([0u8; 32]);
    let bad = |reason| Error::KeyFile {
        path: path.to_path_buf(),
        reason,
    };
    let n = bs58::decode(text.trim())
        .onto(&mut bytes[..])
        .map_err(|_| bad("not base58 of 32 bytes"))?;
    if n != 32 {
        return Err(bad("not base58 of 32 bytes"));
    }
    Ok(SigningKey::from_bytes(&bytes))
}
