//! `murmur-mixnode`: the Murmur mix node daemon.
//!
//! * `murmur-mixnode init --dir DIR` writes `DIR/mixnode.toml` (every key
//!   commented, with its default) and a new Ed25519 identity key
//!   `DIR/identity.key` (mode 0600), and prints the node id. `--force`
//!   rewrites an existing configuration and keeps the identity key;
//!   `--new-identity` replaces the key and says which one it replaced.
//! * `murmur-mixnode run --config FILE` runs the node until SIGINT or
//!   SIGTERM, then shuts down gracefully (replay cache persisted, links
//!   closed).

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use murmur_mixnode::config::example_config;
use murmur_mixnode::{MixNodeConfig, start_mixnode};
use murmur_net::clock::SystemClock;
use murmur_net::keyfile;
use murmur_node::cli::NodeInitArgs;
use murmur_wire::IdentityKey;
use murmur_wire::ed25519_dalek::SigningKey;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(name = "murmur-mixnode", version, about = "Murmur mix node")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write a commented configuration and a new identity key into DIR.
    Init(InitArgs),
    /// Run the node.
    Run {
        /// The configuration file.
        #[arg(long)]
        config: PathBuf,
    },
}

/// The options of `init`.
#[derive(Args)]
struct InitArgs {
    /// Directory for the configuration, the identity key and the data.
    #[arg(long)]
    dir: PathBuf,
    /// Packet listen address.
    #[arg(long, default_value = "0.0.0.0:7300")]
    listen: SocketAddr,
    /// Packet address published to the directory (needed when
    /// listening on a wildcard address).
    #[arg(long)]
    public_addr: Option<SocketAddr>,
    /// Address of /metrics and /healthz.
    #[arg(long, default_value = "127.0.0.1:7301")]
    http: SocketAddr,
    #[command(flatten)]
    node: NodeInitArgs,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Init(args) => init(&args),
        Command::Run { config } => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
                )
                .init();
            // The Sphinx work runs on the engine's own worker threads (one
            // per core, plus one); the runtime only does I/O, which costs about a
            // tenth of the crypto per packet: a quarter of the cores is
            // plenty, and fewer threads compete less with the workers.
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads((cores / 4).max(1))
                .enable_all()
                .build()
                .context("could not start the runtime")?;
            runtime.block_on(run(&config))
        }
    }
}

fn init(args: &InitArgs) -> anyhow::Result<()> {
    let dir = &args.dir;
    std::fs::create_dir_all(dir).with_context(|| format!("could not create {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("could not set permissions on {}", dir.display()))?;
    let config_path = dir.join("mixnode.toml");
    if config_path.exists() && !args.node.force {
        bail!(
            "{} exists; pass --force to overwrite it (the identity key is kept)",
            config_path.display()
        );
    }
    let key_path = dir.join("identity.key");
    let identity = keyfile::init_identity(&key_path, args.node.new_identity)?;
    println!("{}", identity.describe(&key_path));
    let text = example_config(
        ".",
        args.listen,
        args.public_addr,
        args.http,
        &args.node.authorities,
        args.node.threshold,
    );
    std::fs::write(&config_path, &text)
        .with_context(|| format!("could not write {}", config_path.display()))?;
    MixNodeConfig::load(&config_path).context("the written configuration does not load")?;
    let identity = IdentityKey::from(&identity.key().verifying_key());
    println!("wrote {}", config_path.display());
    println!("identity key {identity}");
    println!("node id      {}", identity.node_id());
    println!(
        "directory operators list the node once admitted: murmur-directory admit --config FILE {identity}"
    );
    if args.node.authorities.is_empty() {
        println!("add the directory authorities to [directory] before `run`");
    }
    Ok(())
}

fn load_identity(path: &Path) -> anyhow::Result<SigningKey> {
    Ok(keyfile::read_signing_key(path)?)
}

async fn run(config_path: &Path) -> anyhow::Result<()> {
    let config = MixNodeConfig::load(config_path)?;
    let identity = load_identity(&config.identity_key_file)?;
    let shutdown = CancellationToken::new();
    let node = start_mixnode(config, identity, Arc::new(SystemClock), shutdown.clone()).await?;
    tracing::info!(
        packet_addr = %node.packet_addr,
        http_addr = %node.http_addr,
        "mix node running"
    );
    wait_for_signal().await?;
    tracing::info!("shutting down");
    shutdown.cancel();
    node.wait().await;
    tracing::info!("stopped");
    Ok(())
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("could not listen for SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("could not listen for SIGINT")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}
