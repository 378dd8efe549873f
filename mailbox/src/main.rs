//! `murmur-mailbox`: the mailbox provider daemon.
//!
//! * `murmur-mailbox init --dir DIR [--authority ADDR=KEY]...` writes
//!   `DIR/mailbox.toml` (every key commented, with its default) and a new
//!   Ed25519 identity key `DIR/identity.key` (mode 0600), and prints the
//!   node id. `--force` rewrites an existing configuration and keeps the
//!   identity key; `--new-identity` replaces the key and says which one it
//!   replaced.
//! * `murmur-mailbox run --config FILE` runs the provider until SIGINT or
//!   SIGTERM, then shuts down gracefully (last batch committed, replay cache
//!   persisted, database closed).
//! * `murmur-mailbox migrate --config FILE` creates or upgrades the tables
//!   of the PostgreSQL database the configuration names (`run` does it too),
//!   and prints the schema version.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use murmur_mailbox::{
    Backend, Config, ExampleOptions, PostgresStore, init_dir, load_identity, start_mailbox,
};
use murmur_net::clock::SystemClock;
use murmur_node::cli::NodeInitArgs;
use murmur_wire::IdentityKey;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

/// Murmur mailbox provider: holds opaque per-contact queues for people who
/// are offline and serves them to their owners.
#[derive(Parser, Debug)]
#[command(name = "murmur-mailbox", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Writes DIR/mailbox.toml (every option, commented) and a new identity
    /// key DIR/identity.key. An existing configuration is rewritten only
    /// with --force; an existing identity key is kept (see --new-identity).
    Init {
        /// Directory to create the files in (the data directory too).
        #[arg(long)]
        dir: PathBuf,
        /// Packet listen address.
        #[arg(long, default_value = "127.0.0.1:7481")]
        listen: SocketAddr,
        /// Packet address published to the directory (needed when
        /// listening on a wildcard address).
        #[arg(long)]
        public_addr: Option<SocketAddr>,
        /// Address of the fetch API (encrypted links).
        #[arg(long, default_value = "127.0.0.1:7480")]
        http: SocketAddr,
        /// Address of /metrics and /healthz (plain HTTP: keep it private).
        #[arg(long, default_value = "127.0.0.1:7482")]
        operator: SocketAddr,
        /// Fetch API address published to the directory (needed when the
        /// HTTP server listens on a wildcard address).
        #[arg(long)]
        http_public_addr: Option<SocketAddr>,
        #[command(flatten)]
        node: NodeInitArgs,
    },
    /// Runs the provider until SIGINT or SIGTERM.
    Run {
        /// The configuration file.
        #[arg(long)]
        config: PathBuf,
    },
    /// Creates or upgrades the tables of the PostgreSQL database that the
    /// configuration names (storage.backend = "postgres"), prints the
    /// schema version and exits. `run` does the same at start; this lets a
    /// more privileged role migrate before the providers start.
    Migrate {
        /// The configuration file.
        #[arg(long)]
        config: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Init {
            dir,
            listen,
            public_addr,
            http,
            operator,
            http_public_addr,
            node,
        } => {
            let no_authorities = node.authorities.is_empty();
            let options = ExampleOptions {
                listen_addr: listen,
                public_addr,
                http_listen: http,
                http_public_addr,
                operator_addr: operator,
                authorities: node.authorities,
                threshold: node.threshold,
            };
            let (config, identity) = init_dir(&dir, &options, node.force, node.new_identity)
                .with_context(|| format!("initialising {}", dir.display()))?;
            println!("{}", identity.describe(&dir.join("identity.key")));
            let identity = IdentityKey::from(&identity.key().verifying_key());
            println!("wrote {}", config.display());
            println!("identity key: {identity}");
            println!("node id: {}", identity.node_id());
            println!(
                "directory operators list the provider once admitted: murmur-directory admit --config FILE {identity}"
            );
            if no_authorities {
                println!("add the directory authorities to [directory] before `run`");
            }
            Ok(())
        }
        Command::Run { config } => run(config),
        Command::Migrate { config } => migrate(config),
    }
}

fn migrate(path: PathBuf) -> anyhow::Result<()> {
    let config = Config::load(&path)?;
    let settings = config
        .storage
        .postgres()
        .filter(|_| config.storage.backend == Backend::Postgres)
        .context(
            "storage.backend is not \"postgres\": nothing to migrate (run creates and checks mailbox.redb)",
        )?;
    let store = PostgresStore::open(&settings, config.storage.quota())?;
    println!("schema version {}", store.schema_version());
    Ok(())
}

fn run(path: PathBuf) -> anyhow::Result<()> {
    let config = Config::load(&path)?;
    let identity = load_identity(&config.identity_path())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        let handle =
            start_mailbox(config, identity, Arc::new(SystemClock), shutdown.clone()).await?;
        // Tests and scripts read the bound addresses from stdout.
        println!("packet_addr {}", handle.packet_addr);
        println!("http_addr {}", handle.http_addr);
        println!("operator_addr {}", handle.operator_addr);
        wait_for_signal().await?;
        tracing::info!("shutting down");
        shutdown.cancel();
        handle.stopped().await;
        Ok(())
    })
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing a SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing a SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}
