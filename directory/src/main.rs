//! `murmur-directory`: the directory authority daemon.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use murmur_directory::clock::SystemClock;
use murmur_directory::config::example_config;
use murmur_directory::{AuthorityConfig, start_authority};
use murmur_wire::IdentityKey;
use murmur_wire::ed25519_dalek::SigningKey;
use tokio_util::sync::CancellationToken;
use zeroize::Zeroizing;

/// Murmur directory authority: collects node descriptors, agrees on a
/// threshold-signed consensus per epoch with its peers, and serves it.
#[derive(Parser)]
#[command(name = "murmur-directory", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write a commented configuration (directory.toml) and a fresh
    /// authority key (authority.key, mode 0600) into DIR, and print the
    /// public key to give to the other authorities and to clients.
    Init {
        /// Directory to write into (created if missing).
        #[arg(long)]
        dir: PathBuf,
        /// HTTP address to put in the configuration.
        #[arg(long, default_value = "127.0.0.1:8700")]
        listen: SocketAddr,
        /// Overwrite an existing configuration and key.
        #[arg(long)]
        force: bool,
    },
    /// Run the authority until SIGINT or SIGTERM.
    Run {
        /// The configuration file.
        #[arg(long)]
        config: PathBuf,
    },
    /// Print the authority's public key (base58) from its configuration.
    PublicKey {
        /// The configuration file.
        #[arg(long)]
        config: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Init { dir, listen, force } => init(&dir, listen, force),
        Command::Run { config } => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
                )
                .with_writer(std::io::stderr)
                .init();
            let rt = tokio::runtime::Runtime::new().context("could not start the runtime")?;
            rt.block_on(run(&config))
        }
        Command::PublicKey { config } => {
            let cfg = AuthorityConfig::load(&config)?;
            let key = load_key(&cfg.key_file)?;
            println!("{}", IdentityKey::from(&key.verifying_key()));
            Ok(())
        }
    }
}

fn init(dir: &Path, listen: SocketAddr, force: bool) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("could not create {}", dir.display()))?;
    let config_path = dir.join("directory.toml");
    let key_path = dir.join("authority.key");
    if !force && (config_path.exists() || key_path.exists()) {
        bail!(
            "{} or {} already exists; pass --force to overwrite",
            config_path.display(),
            key_path.display()
        );
    }
    let key = SigningKey::generate(&mut rand::rng());
    let secret = Zeroizing::new(bs58::encode(key.to_bytes()).into_string());
    write_private(&key_path, format!("{}\n", secret.as_str()).as_bytes())?;
    let text = example_config(listen, "data", "authority.key");
    std::fs::write(&config_path, text)
        .with_context(|| format!("could not write {}", config_path.display()))?;
    let public = IdentityKey::from(&key.verifying_key());
    println!("wrote {} and {}", config_path.display(), key_path.display());
    println!("authority public key: {public}");
    println!("peers list this authority as:");
    println!("  [[peers]]\n  addr = \"{listen}\"\n  key = \"{public}\"");
    Ok(())
}

fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(path)
        .with_context(|| format!("could not create {}", path.display()))?;
    // An existing file keeps its mode on open: tighten it explicitly.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("could not restrict {}", path.display()))?;
    }
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("could not write {}", path.display()))?;
    Ok(())
}

fn load_key(path: &Path) -> anyhow::Result<SigningKey> {
    murmur_directory::keyfile::read_signing_key(path)
        .with_context(|| format!("could not read the key file {}", path.display()))
}

async fn run(config_path: &Path) -> anyhow::Result<()> {
    let cfg = AuthorityConfig::load(config_path)?;
    let key = load_key(&cfg.key_file)?;
    let shutdown = CancellationToken::new();
    let handle = start_authority(cfg, key, Arc::new(SystemClock), shutdown.clone()).await?;
    println!("murmur-directory listening on {}", handle.addr);
    println!("authority public key: {}", handle.key);
    let _ = std::io::stdout().flush();
    wait_for_signal().await;
    tracing::info!("shutting down");
    shutdown.cancel();
    handle.wait().await;
    Ok(())
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
